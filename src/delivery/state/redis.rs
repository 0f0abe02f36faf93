//! The Redis backend: one Redis server (not Cluster: a script touches keys of several campaigns)
//! shared by every node, through `redis::aio::ConnectionManager` (one multiplexed connection,
//! re-established by itself after an outage).
//!
//! Key layout (every key prefixed `rotator:`):
//! - `rotator:budget:{campaign}:day:{day}`: spend granted on that day (micros, integer); expires
//!   [`DAY_KEY_TTL_SECS`] after its last grant.
//! - `rotator:budget:{campaign}:total`: spend granted in total; no expiry.
//! - `rotator:cap:{campaign}:{visitor key, 16 hex digits}`: sorted set of the visitor's views,
//!   member = decision id (12 bytes), score = the Unix second until which the view counts;
//!   expires when its last view stops counting.
//! - `rotator:seen:{kind}:{decision id, 24 hex digits}`: tracking's counted-once mark, `SET NX`
//!   with the expiry of the token.
//!
//! A lease batch and a cap reservation are each one Lua script, so atomic however many nodes
//! call at once. Every call has a strict timeout (`[state.redis] timeout` on the request path,
//! `lease_timeout` for budgets); a call that times out may still have run on the server: a lease
//! granted then counts as spent (under-spend, never over), a view reserved then counts until its
//! window ends (one view fewer for that visitor), a seen-id set then makes a later replay a
//! duplicate. Request-path calls go through a circuit [`Breaker`]: while Redis hangs they fail
//! at once instead of each waiting for its timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::breaker::{Breaker, Change, TRIP_AFTER};
use super::{CapAsk, CapReply, LeaseAsk, StateError};
use crate::campaigns::budget::Micros;
use crate::config::StateRedisConfig;
use crate::metrics::Metrics;
use crate::tracking::{EventKind, Mark};

/// How long a day's budget key outlives its last grant: the day itself plus time zones and a
/// margin for `spent` asked the day after.
pub const DAY_KEY_TTL_SECS: u64 = 4 * 86_400;
/// The most campaigns in one lease script or spend `MGET` from the ticker. Redis runs one
/// command at a time for every node: on the benchmark machine a lease script for 521 campaigns
/// took 3.9 ms, and one for 64 took 0.6 ms (slowlog), which is how long the decisions queued
/// behind it wait.
pub const BATCH: usize = 64;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection attempts in one round (then the next call starts another round).
const RECONNECT_RETRIES: usize = 3;

/// `KEYS`: per ask, its day key then its total key. `ARGV[1]`: the day keys' TTL; then per ask:
/// want, daily (−1: none), total (−1: none). Returns the grants in ask order.
const LEASE: &str = r"
local ttl = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local day_key, total_key = KEYS[2 * i - 1], KEYS[2 * i]
  local grant = tonumber(ARGV[3 * i - 1])
  local daily, total = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  if daily >= 0 then
    local spent = tonumber(redis.call('GET', day_key) or '0')
    grant = math.min(grant, math.max(0, daily - spent))
  end
  if total >= 0 then
    local spent = tonumber(redis.call('GET', total_key) or '0')
    grant = math.min(grant, math.max(0, total - spent))
  end
  if grant > 0 then
    local g = string.format('%.0f', grant)
    redis.call('INCRBY', day_key, g)
    redis.call('EXPIRE', day_key, ttl)
    redis.call('INCRBY', total_key, g)
  end
  out[i] = grant
end
return out
";

/// `KEYS`: the total key, then the day key if any. `ARGV[1]`: the amount. Never below zero; a
/// key that expired stays gone.
const REFUND: &str = r"
local amount = tonumber(ARGV[1])
for i = 1, #KEYS do
  local spent = redis.call('GET', KEYS[i])
  if spent then
    local left = math.max(0, tonumber(spent) - amount)
    redis.call('SET', KEYS[i], string.format('%.0f', left), 'KEEPTTL')
  end
end
return 1
";

/// `KEYS`: per ask, its cap key under each visitor key (`ARGV[3]` keys per ask). `ARGV`: now,
/// decision, keys per ask, then per ask: limit, per_secs. Returns {granted ask (1-based, 0 =
/// none), then per ask: the second it frees up when found full, −1 otherwise}.
const RESERVE: &str = r"
local now = tonumber(ARGV[1])
local member = ARGV[2]
local nk = tonumber(ARGV[3])
local asks = #KEYS / nk
local out = {0}
for i = 1, asks do out[i + 1] = -1 end
for i = 1, asks do
  local limit, per = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  local full, frees = false, -1
  for j = 1, nk do
    local key = KEYS[(i - 1) * nk + j]
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local count = redis.call('ZCARD', key)
    if count >= limit then
      full = true
      if limit > 0 then
        local at = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
        frees = math.max(frees, tonumber(at[2]))
      end
    end
  end
  if full then
    out[i + 1] = frees
  else
    for j = 1, nk do
      local key = KEYS[(i - 1) * nk + j]
      redis.call('ZADD', key, now + per, member)
      if redis.call('TTL', key) < per + 1 then
        redis.call('EXPIRE', key, per + 1)
      end
    end
    out[1] = i
    return out
  end
end
return out
";

/// The Redis backend.
pub struct RedisState {
    pub(super) metrics: Arc<Metrics>,
    connection: ConnectionManager,
    /// For caps and seen-ids (the request path).
    timeout: Duration,
    /// For budgets (the ticker).
    lease_timeout: Duration,
    lease: Script,
    refund: Script,
    reserve: Script,
    /// Holds request-path calls back while Redis cannot be reached.
    breaker: Breaker,
}

fn day_key(campaign: u32, day: i32) -> String {
    format!("rotator:budget:{campaign}:day:{day}")
}

fn total_key(campaign: u32) -> String {
    format!("rotator:budget:{campaign}:total")
}

fn cap_key(campaign: u32, key: u64) -> String {
    format!("rotator:cap:{campaign}:{key:016x}")
}

fn seen_key(id: &[u8; 12], kind: EventKind) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = format!("rotator:seen:{}:", kind.as_str());
    for b in id {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// Whether `e` says Redis could not be reached (not that it answered with an error).
fn unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout()
}

/// A Redis integer as micros (never negative: the scripts floor at zero).
fn micros(v: &Value) -> Result<Micros, StateError> {
    match v {
        Value::Int(i) => Ok((*i).max(0).unsigned_abs()),
        Value::Nil => Ok(0),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .map(|i| i.max(0).unsigned_abs())
            .ok_or_else(|| StateError::Reply(format!("{v:?}"))),
        other => Err(StateError::Reply(format!("{other:?}"))),
    }
}

impl RedisState {
    /// A lazily connecting client of `config.url` (checked by the config).
    pub fn connect(
        config: &StateRedisConfig,
        metrics: Arc<Metrics>,
    ) -> Result<RedisState, StateError> {
        let client = redis::Client::open(config.url.as_str())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(config.timeout.max(config.lease_timeout)))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisState {
            metrics,
            connection: client.get_connection_manager_lazy(manager)?,
            timeout: config.timeout,
            lease_timeout: config.lease_timeout,
            lease: Script::new(LEASE),
            refund: Script::new(REFUND),
            reserve: Script::new(RESERVE),
            breaker: Breaker::new(Instant::now()),
        })
    }

    /// Runs `call` with at most `limit` to answer, and tells the breaker whether Redis was
    /// reached.
    async fn within<T>(
        &self,
        limit: Duration,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StateError> {
        let result = match tokio::time::timeout(limit, call).await {
            Ok(result) => result.map_err(StateError::from),
            Err(_) => Err(StateError::Timeout(limit)),
        };
        let change = match &result {
            Err(StateError::Timeout(_)) => self.breaker.failure(Instant::now()),
            Err(StateError::Redis(e)) if unreachable(e) => self.breaker.failure(Instant::now()),
            _ => self.breaker.success(),
        };
        match change {
            Change::None => {}
            Change::Opened => {
                self.metrics.set_state_circuit_open(true);
                tracing::warn!(
                    "[state] redis: {TRIP_AFTER} calls in a row could not reach it; capped \
                     decisions and tracking stop waiting for it (circuit open) and probe it \
                     again every {:?}",
                    super::breaker::OPEN_FOR
                );
            }
            Change::Closed => {
                self.metrics.set_state_circuit_open(false);
                tracing::info!("[state] redis answers again (circuit closed)");
            }
        }
        result
    }

    /// Lets a request-path call go to Redis, or fails it at once while the breaker is open.
    fn admit(&self) -> Result<(), StateError> {
        if self.breaker.admit(Instant::now()) {
            Ok(())
        } else {
            Err(StateError::CircuitOpen)
        }
    }

    /// `PING`, within the budget calls' timeout.
    pub async fn ping(&self) -> Result<(), StateError> {
        let mut c = self.connection.clone();
        self.within(self.lease_timeout, async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(drop)
    }

    /// See [`super::State::lease`].
    pub async fn lease(&self, asks: &[LeaseAsk]) -> Result<Vec<Micros>, StateError> {
        if asks.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.lease.prepare_invoke();
        invocation.arg(DAY_KEY_TTL_SECS);
        let bound = |b: Option<Micros>| b.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
        for ask in asks {
            invocation
                .key(day_key(ask.campaign, ask.day))
                .key(total_key(ask.campaign))
                .arg(ask.want)
                .arg(bound(ask.daily))
                .arg(bound(ask.total));
        }
        let mut c = self.connection.clone();
        let reply: Vec<Value> = self
            .within(self.lease_timeout, async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        if reply.len() != asks.len() {
            return Err(StateError::Reply(format!(
                "{} grants for {} asks",
                reply.len(),
                asks.len()
            )));
        }
        reply.iter().map(micros).collect()
    }

    /// See [`super::State::refund`].
    pub async fn refund(
        &self,
        campaign: u32,
        day: Option<i32>,
        amount: Micros,
    ) -> Result<(), StateError> {
        let mut invocation = self.refund.prepare_invoke();
        invocation.key(total_key(campaign)).arg(amount);
        if let Some(day) = day {
            invocation.key(day_key(campaign, day));
        }
        let mut c = self.connection.clone();
        self.within(self.lease_timeout, async move {
            invocation.invoke_async::<Value>(&mut c).await
        })
        .await
        .map(drop)
    }

    /// See [`super::State::spent`].
    pub async fn spent(&self, campaign: u32, day: i32) -> Result<(Micros, Micros), StateError> {
        let mut c = self.connection.clone();
        let keys = [day_key(campaign, day), total_key(campaign)];
        let reply: Vec<Value> = self
            .within(self.lease_timeout, async move {
                redis::cmd("MGET").arg(&keys).query_async(&mut c).await
            })
            .await?;
        match reply.as_slice() {
            [day, total] => Ok((micros(day)?, micros(total)?)),
            other => Err(StateError::Reply(format!("{other:?}"))),
        }
    }

    /// See [`super::State::spent_many`]: one `MGET` (the caller keeps batches to [`BATCH`]).
    pub async fn spent_many(
        &self,
        days: &[(u32, i32)],
    ) -> Result<Vec<(Micros, Micros)>, StateError> {
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for &(campaign, day) in days {
            cmd.arg(day_key(campaign, day)).arg(total_key(campaign));
        }
        let mut c = self.connection.clone();
        let reply: Vec<Value> = self
            .within(
                self.lease_timeout,
                async move { cmd.query_async(&mut c).await },
            )
            .await?;
        if reply.len() != 2 * days.len() {
            return Err(StateError::Reply(format!(
                "{} values for {} keys",
                reply.len(),
                2 * days.len()
            )));
        }
        reply
            .chunks_exact(2)
            .map(|pair| Ok((micros(&pair[0])?, micros(&pair[1])?)))
            .collect()
    }

    /// See [`super::State::reserve`]; `keys` holds 1 or 2 keys (checked by the caller).
    pub async fn reserve(
        &self,
        keys: &[u64],
        asks: &[CapAsk],
        decision: [u8; 12],
        now: i64,
    ) -> Result<CapReply, StateError> {
        if asks.is_empty() {
            return Ok(CapReply::default());
        }
        self.admit()?;
        let keys = match keys {
            [a, b] if a == b => &keys[..1],
            _ => keys,
        };
        let mut invocation = self.reserve.prepare_invoke();
        invocation.arg(now).arg(&decision[..]).arg(keys.len());
        for ask in asks {
            for &key in keys {
                invocation.key(cap_key(ask.campaign, key));
            }
            invocation.arg(ask.limit).arg(ask.per_secs);
        }
        let mut c = self.connection.clone();
        let reply: Vec<i64> = self
            .within(self.timeout, async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        let Some((&granted, frees)) = reply.split_first().filter(|(_, f)| f.len() == asks.len())
        else {
            return Err(StateError::Reply(format!("{reply:?}")));
        };
        Ok(CapReply {
            granted: usize::try_from(granted).ok().and_then(|g| g.checked_sub(1)),
            full_until: frees.iter().map(|&t| (t >= 0).then_some(t)).collect(),
        })
    }

    /// See [`super::State::release`].
    pub async fn release(
        &self,
        keys: &[u64],
        campaign: u32,
        decision: [u8; 12],
    ) -> Result<(), StateError> {
        self.admit()?;
        let mut pipe = redis::pipe();
        for &key in keys {
            pipe.cmd("ZREM")
                .arg(cap_key(campaign, key))
                .arg(&decision[..])
                .ignore();
        }
        let mut c = self.connection.clone();
        self.within(
            self.timeout,
            async move { pipe.query_async::<()>(&mut c).await },
        )
        .await
    }

    /// See [`super::State::views`].
    pub async fn views(&self, keys: &[u64], campaign: u32, now: i64) -> Result<u32, StateError> {
        self.admit()?;
        let mut pipe = redis::pipe();
        for &key in keys {
            pipe.cmd("ZCOUNT")
                .arg(cap_key(campaign, key))
                .arg(format!("({now}"))
                .arg("+inf");
        }
        let mut c = self.connection.clone();
        let counts: Vec<u32> = self
            .within(self.timeout, async move { pipe.query_async(&mut c).await })
            .await?;
        Ok(counts.into_iter().max().unwrap_or(0))
    }

    /// See [`super::State::seen_first`]: `SET NX` with the remaining lifetime.
    pub async fn seen_first(
        &self,
        id: &[u8; 12],
        kind: EventKind,
        expires: u32,
        now: u32,
    ) -> Result<Mark, StateError> {
        self.admit()?;
        let key = seen_key(id, kind);
        let ttl = expires.saturating_sub(now).max(1);
        let mut c = self.connection.clone();
        let set: Option<String> = self
            .within(self.timeout, async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(if set.is_some() {
            Mark::First
        } else {
            Mark::Duplicate
        })
    }

    /// See [`super::State::seen_has`].
    pub async fn seen_has(&self, id: &[u8; 12], kind: EventKind) -> Result<bool, StateError> {
        self.admit()?;
        let key = seen_key(id, kind);
        let mut c = self.connection.clone();
        self.within(self.timeout, async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<bool>(&mut c)
                .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_readable() {
        assert_eq!(day_key(7, 20_000), "rotator:budget:7:day:20000");
        assert_eq!(total_key(7), "rotator:budget:7:total");
        assert_eq!(cap_key(7, 0xab), "rotator:cap:7:00000000000000ab");
        let mut id = [0; 12];
        id[0] = 0xf0;
        id[11] = 0x0e;
        assert_eq!(
            seen_key(&id, EventKind::Click),
            "rotator:seen:click:f0000000000000000000000e"
        );
    }
}
