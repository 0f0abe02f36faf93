//! The delivery state's contract (issue 11, items 2 and 6), one suite run against both backends:
//! the local one and a real Redis (`scripts/services`, `ROTATOR_TEST_REDIS_URL`). Then what only
//! one backend has: the local journals across a reopen, Redis's timeouts and reconnection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rotator::campaigns::{Catalogue, file};
use rotator::config::{IdentityConfig, OnOutage, StateBackend, StateConfig, TrackingConfig};
use rotator::delivery::identity::Identifier;
use rotator::delivery::state::breaker::OPEN_FOR;
use rotator::delivery::state::redis::BATCH;
use rotator::delivery::state::{CapAsk, LeaseAsk, State, StateWriter};
use rotator::delivery::{Delivery, Options};
use rotator::metrics::Metrics;
use rotator::tracking::{Claims, EventKind, Mark, Outcome, Seen, Signer, Tracker, new_id, now};
use rotator::visitor::geoip::Country;
use rotator::visitor::symbol::Sym;
use rotator::visitor::user_agent::Device;

use crate::harness::{Server, config, request, seed_campaigns, temp_dir};
use crate::support::{exclusive, service_url, services};

const NOW: i64 = 1_800_000_000;
const DAY: i32 = 20_833;
/// Concurrent callers, and calls each.
const TASKS: usize = 8;
const CALLS: usize = 150;

async fn open(config: &StateConfig) -> (Arc<State>, StateWriter, Arc<Metrics>) {
    let metrics = Metrics::new();
    let seen = Arc::new(Seen::new(100_000));
    let (state, writer) = State::open(config, seen, metrics.clone(), NOW)
        .await
        .unwrap();
    (Arc::new(state), writer, metrics)
}

fn local_config(tag: &str) -> StateConfig {
    StateConfig {
        dir: temp_dir(tag).join("state"),
        ..StateConfig::default()
    }
}

fn redis_config(url: String) -> StateConfig {
    let mut config = StateConfig {
        backend: StateBackend::Redis,
        ..StateConfig::default()
    };
    config.redis.url = url;
    // The contract under load on a shared machine; the strict default is tested below.
    config.redis.timeout = Duration::from_secs(2);
    config
}

/// A decision id unique to this run.
fn decision(n: u64) -> [u8; 12] {
    let mut id = [0; 12];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id[8..].copy_from_slice(&fastrand::u32(..).to_le_bytes());
    id
}

/// Campaign ids and visitor keys nobody else uses (Redis keeps them across runs).
fn fresh() -> (u32, u64) {
    (fastrand::u32(1_000_000..u32::MAX / 2), fastrand::u64(..))
}

/// Runs `TASKS` tasks that each call `f(task, call)` `CALLS` times; returns every result.
async fn concurrently<T, F, Fut>(f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let f = Arc::new(f);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(CALLS);
                for c in 0..CALLS {
                    out.push(f(t, c).await);
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The contract every backend keeps.
async fn contract(state: Arc<State>, metrics: &Metrics) {
    let backend = state.backend();
    leases_never_exceed_budgets(&state).await;
    refunds_and_batches(&state).await;
    caps_exact_under_concurrency(&state).await;
    caps_slide(&state).await;
    caps_window_changed(&state).await;
    caps_under_two_keys_and_in_order(&state).await;
    seen_first_once(&state).await;
    let text = metrics.render();
    for op in [
        "lease",
        "refund",
        "spent",
        "reserve",
        "release",
        "views",
        "seen_first",
    ] {
        let series = format!("rotator_state_seconds_count{{backend=\"{backend}\",op=\"{op}\"}}");
        assert!(text.contains(&series), "{series} missing:\n{text}");
    }
}

async fn leases_never_exceed_budgets(state: &Arc<State>) {
    let (campaign, _) = fresh();
    let (daily, total) = (1_000_000, 2_500_000);
    for (day, expected) in [(DAY, daily), (DAY + 1, daily), (DAY + 2, total - 2 * daily)] {
        let s = state.clone();
        let grants = concurrently(move |_, _| {
            let s = s.clone();
            async move {
                let ask = LeaseAsk {
                    campaign,
                    day,
                    want: fastrand::u64(1..3_000),
                    daily: Some(daily),
                    total: Some(total),
                };
                s.lease(&[ask]).await.unwrap()[0]
            }
        })
        .await;
        let granted: u64 = grants.iter().sum();
        assert_eq!(granted, expected, "{}: day {day}", state.backend());
        let (on_day, _) = state.spent(campaign, day).await.unwrap();
        assert_eq!(on_day, expected, "{}: day {day}", state.backend());
    }
    assert_eq!(
        state.spent(campaign, DAY).await.unwrap(),
        (daily, total),
        "{}",
        state.backend()
    );
    let ask = LeaseAsk {
        campaign,
        day: DAY + 3,
        want: 10,
        daily: Some(daily),
        total: Some(total),
    };
    assert_eq!(state.lease(&[ask]).await.unwrap(), [0], "total exhausted");
}

async fn refunds_and_batches(state: &State) {
    let (a, _) = fresh();
    let b = a + 1;
    let ask = |campaign, want, daily, total| LeaseAsk {
        campaign,
        day: DAY,
        want,
        daily,
        total,
    };
    let grants = state
        .lease(&[
            ask(a, 500, Some(1_000), None),
            ask(b, 7_000, None, None),
            ask(a, 800, Some(1_000), None),
        ])
        .await
        .unwrap();
    assert_eq!(grants, [500, 7_000, 500], "{}", state.backend());
    state.refund(a, Some(DAY), 200).await.unwrap();
    assert_eq!(state.spent(a, DAY).await.unwrap(), (800, 800));
    state.refund(a, None, 100).await.unwrap();
    assert_eq!(state.spent(a, DAY).await.unwrap(), (800, 700));
    let grants = state
        .lease(&[ask(a, 5_000, Some(1_000), Some(1_000))])
        .await
        .unwrap();
    assert_eq!(grants, [200], "the refund is spendable again");
    state.refund(a, Some(DAY), 1_000_000).await.unwrap();
    assert_eq!(
        state.spent(a, DAY).await.unwrap(),
        (0, 0),
        "never below zero"
    );
    assert_eq!(state.spent(b, DAY + 1).await.unwrap(), (0, 7_000));
    assert_eq!(
        state
            .spent_many(&[(b, DAY), (a, DAY), (b + 1, DAY), (b, DAY + 1)])
            .await
            .unwrap(),
        [(7_000, 7_000), (0, 0), (0, 0), (0, 7_000)],
        "{}: several in one call, in order",
        state.backend()
    );
    assert!(state.spent_many(&[]).await.unwrap().is_empty());
}

async fn caps_exact_under_concurrency(state: &Arc<State>) {
    let (campaign, key) = fresh();
    let cap = CapAsk {
        campaign,
        limit: 3,
        per_secs: 3_600,
    };
    let s = state.clone();
    let replies = concurrently(move |t, c| {
        let s = s.clone();
        async move {
            let id = decision((t * CALLS + c) as u64);
            s.reserve(&[key], &[cap], id, NOW + (c % 3) as i64)
                .await
                .unwrap()
        }
    })
    .await;
    let granted = replies.iter().filter(|r| r.granted == Some(0)).count();
    assert_eq!(granted, 3, "{}", state.backend());
    for r in replies.iter().filter(|r| r.granted.is_none()) {
        let frees = r.full_until[0].unwrap();
        assert!((NOW + 3_600..=NOW + 3_602).contains(&frees), "{r:?}");
    }
    assert_eq!(state.views(&[key], campaign, NOW + 10).await.unwrap(), 3);
    assert_eq!(state.views(&[key], campaign, NOW + 3_610).await.unwrap(), 0);
}

async fn caps_slide(state: &State) {
    let (campaign, key) = fresh();
    let cap = [CapAsk {
        campaign,
        limit: 2,
        per_secs: 100,
    }];
    let keys = [key];
    let at = |t: i64, n: u64| state.reserve(&keys, &cap, decision(n), NOW + t);
    assert_eq!(at(0, 1).await.unwrap().granted, Some(0));
    assert_eq!(at(50, 2).await.unwrap().granted, Some(0));
    let full = at(60, 3).await.unwrap();
    assert_eq!(
        (full.granted, &full.full_until[..]),
        (None, &[Some(NOW + 100)][..])
    );
    assert_eq!(
        at(99, 4).await.unwrap().granted,
        None,
        "still in the window"
    );
    assert_eq!(
        at(100, 5).await.unwrap().granted,
        Some(0),
        "{}: a view counts for exactly `per`",
        state.backend()
    );
    let full = at(149, 6).await.unwrap();
    assert_eq!(
        (full.granted, &full.full_until[..]),
        (None, &[Some(NOW + 150)][..])
    );
    assert_eq!(at(150, 7).await.unwrap().granted, Some(0));
    assert_eq!(state.views(&[key], campaign, NOW + 150).await.unwrap(), 2);
}

/// A reload shortens a cap's window: views of both windows count, each until its own end.
async fn caps_window_changed(state: &State) {
    let (campaign, key) = fresh();
    let at = |t: i64, per_secs: u32, n: u64| async move {
        let cap = [CapAsk {
            campaign,
            limit: 2,
            per_secs,
        }];
        state.reserve(&[key], &cap, decision(n), NOW + t).await
    };
    assert_eq!(at(0, 600, 1).await.unwrap().granted, Some(0));
    assert_eq!(at(10, 100, 2).await.unwrap().granted, Some(0));
    let full = at(20, 100, 3).await.unwrap();
    assert_eq!(
        (full.granted, &full.full_until[..]),
        (None, &[Some(NOW + 110)][..]),
        "{}: room again when the shorter view ends",
        state.backend()
    );
    assert_eq!(at(110, 100, 4).await.unwrap().granted, Some(0));
    assert_eq!(state.views(&[key], campaign, NOW + 111).await.unwrap(), 2);
    assert_eq!(state.views(&[key], campaign, NOW + 599).await.unwrap(), 1);
}

async fn caps_under_two_keys_and_in_order(state: &State) {
    let (c1, k1) = fresh();
    let (c2, k2) = (c1 + 1, k1.wrapping_add(1));
    let k3 = k1.wrapping_add(2);
    let once = |campaign| CapAsk {
        campaign,
        limit: 1,
        per_secs: 600,
    };
    let first = decision(1);
    let r = state
        .reserve(&[k1, k2], &[once(c1)], first, NOW)
        .await
        .unwrap();
    assert_eq!(r.granted, Some(0));
    for keys in [&[k1][..], &[k2], &[k3, k2], &[k1, k3]] {
        let r = state
            .reserve(keys, &[once(c1)], decision(2), NOW + 1)
            .await
            .unwrap();
        assert_eq!(r.granted, None, "{}: {keys:?}", state.backend());
    }
    assert_eq!(
        state.views(&[k3], c1, NOW + 1).await.unwrap(),
        0,
        "{}: under every key or none",
        state.backend()
    );
    // The first ask with room wins; the full one says when it frees up.
    let r = state
        .reserve(&[k1], &[once(c1), once(c2), once(c1)], decision(3), NOW + 2)
        .await
        .unwrap();
    assert_eq!(r.granted, Some(1));
    assert_eq!(r.full_until[..], [Some(NOW + 600), None, None]);
    // Released (the impression never came): room again, under both keys.
    state.release(&[k1, k2], c1, decision(9)).await.unwrap();
    assert_eq!(
        state.views(&[k2], c1, NOW + 3).await.unwrap(),
        1,
        "another view"
    );
    state.release(&[k1, k2], c1, first).await.unwrap();
    assert_eq!(state.views(&[k2, k1], c1, NOW + 3).await.unwrap(), 0);
    let r = state
        .reserve(&[k2], &[once(c1)], decision(4), NOW + 3)
        .await
        .unwrap();
    assert_eq!(r.granted, Some(0), "{}", state.backend());
}

async fn seen_first_once(state: &Arc<State>) {
    let base = fastrand::u64(..) >> 8;
    let expires = NOW as u32 + 3_600;
    let s = state.clone();
    let marks = concurrently(move |_, c| {
        let s = s.clone();
        async move {
            let id = decision_fixed(base + (c % 50) as u64);
            s.seen_first(&id, EventKind::Impression, expires, NOW as u32)
                .await
                .unwrap()
        }
    })
    .await;
    let first = marks.iter().filter(|m| **m == Mark::First).count();
    assert_eq!(first, 50, "{}", state.backend());
    assert!(marks.iter().all(|m| *m != Mark::Full));
    let id = decision_fixed(base);
    assert!(state.seen_has(&id, EventKind::Impression).await.unwrap());
    assert!(!state.seen_has(&id, EventKind::Click).await.unwrap());
}

fn decision_fixed(n: u64) -> [u8; 12] {
    let mut id = [7; 12];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn issue11_state_contract_local() {
    runtime().block_on(async {
        let (state, _writer, metrics) = open(&local_config("state-local")).await;
        contract(state, &metrics).await;
    });
}

#[test]
fn issue11_state_contract_redis() {
    let Some(url) = service_url("ROTATOR_TEST_REDIS_URL") else {
        return;
    };
    let _exclusive = crate::support::service_lock();
    runtime().block_on(async {
        let (state, _writer, metrics) = open(&redis_config(url)).await;
        contract(state, &metrics).await;
    });
}

/// The local journals: grants are on disk when returned (a second process opening the folder
/// sees them without any shutdown), views after one write interval; a clean stop loses nothing;
/// a torn last record is ignored; a file that is not a budget journal refuses to start.
#[test]
fn issue11_local_state_survives_reopen() {
    runtime().block_on(async {
        let config = local_config("state-reopen");
        let (state, writer, _) = open(&config).await;
        let (campaign, key) = (7, 42);
        let ask = LeaseAsk {
            campaign,
            day: DAY,
            want: 1_234,
            daily: Some(10_000),
            total: Some(20_000),
        };
        assert_eq!(state.lease(&[ask]).await.unwrap(), [1_234]);
        state.refund(campaign, Some(DAY), 34).await.unwrap();
        let cap = [CapAsk {
            campaign,
            limit: 2,
            per_secs: 600,
        }];
        let (d1, d2) = (decision(1), decision(2));
        for d in [d1, d2] {
            let r = state.reserve(&[key], &cap, d, NOW).await.unwrap();
            assert_eq!(r.granted, Some(0));
        }
        state.release(&[key], campaign, d2).await.unwrap();

        let metrics = Metrics::new();
        let err = State::open(&config, Arc::new(Seen::new(10)), metrics, NOW)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("in use by another rotator process"), "{err}");

        // What a kill -9 would leave on disk now (a copy: the first instance goes on).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let crash = StateConfig {
            dir: temp_dir("state-crash").join("state"),
            ..config.clone()
        };
        std::fs::create_dir_all(&crash.dir).unwrap();
        for file in ["budget", "caps"] {
            std::fs::copy(config.dir.join(file), crash.dir.join(file)).unwrap();
        }
        let (crashed, crashed_writer, _) = open(&crash).await;
        assert_eq!(crashed.spent(campaign, DAY).await.unwrap(), (1_200, 1_200));
        assert_eq!(crashed.views(&[key], campaign, NOW + 1).await.unwrap(), 1);
        crashed_writer.stop();
        drop(crashed);

        // A clean stop writes the views of the last interval too.
        let r = state
            .reserve(&[key], &cap, decision(3), NOW + 2)
            .await
            .unwrap();
        assert_eq!(r.granted, Some(0));
        assert_eq!(state.lease(&[ask]).await.unwrap(), [1_234]);
        writer.stop();
        drop(state);
        let budget = config.dir.join("budget");
        let mut bytes = std::fs::read(&budget).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&budget, &bytes).unwrap();
        let (state, writer, _) = open(&config).await;
        assert_eq!(state.spent(campaign, DAY).await.unwrap(), (2_434, 2_434));
        assert_eq!(state.views(&[key], campaign, NOW + 3).await.unwrap(), 2);
        assert_eq!(
            state.views(&[key], campaign, NOW + 601).await.unwrap(),
            1,
            "each view ends `per` after it"
        );
        writer.stop();
        drop(state);

        std::fs::write(&budget, b"something else").unwrap();
        let metrics = Metrics::new();
        let err = State::open(&config, Arc::new(Seen::new(10)), metrics, NOW)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a budget journal"), "{err}");
    });
}

/// The local caps memory is bounded: a full shard refuses new visitors (the caller then
/// follows `on_outage`) until their views expire.
#[test]
fn issue11_local_caps_memory_is_bounded() {
    runtime().block_on(async {
        let config = StateConfig {
            max_cap_entries: 64,
            ..local_config("state-bounded")
        };
        let (state, _writer, _) = open(&config).await;
        let cap = [CapAsk {
            campaign: 1,
            limit: 5,
            per_secs: 600,
        }];
        // One visitor per shard (keys are sharded by their top bits), then a second one.
        for shard in 0..64u64 {
            let r = state
                .reserve(&[shard << 58], &cap, decision(shard), NOW)
                .await;
            assert_eq!(r.unwrap().granted, Some(0));
        }
        let r = state.reserve(&[1 << 58], &cap, decision(0), NOW).await;
        assert_eq!(r.unwrap().granted, Some(0), "a known visitor still fits");
        let err = state
            .reserve(&[(7 << 58) | 1], &cap, decision(0), NOW + 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_cap_entries"), "{err}");
        let r = state
            .reserve(&[(7 << 58) | 1], &cap, decision(0), NOW + 600)
            .await;
        assert_eq!(r.unwrap().granted, Some(0), "room again once views expired");
    });
}

/// A Redis backend with the strict `timeout` of the outage tests (and 200 ms for budgets).
fn strict_redis_config(url: String, timeout: Duration) -> StateConfig {
    let mut config = redis_config(url);
    config.redis.timeout = timeout;
    config.redis.lease_timeout = Duration::from_millis(200);
    config
}

/// Redis down: every call fails within the timeout (no panic, no hang); Redis back: the same
/// client works again by itself, with the spend and views kept.
#[test]
fn issue11_redis_outage_fails_fast_and_recovers() {
    let Some(url) = service_url("ROTATOR_TEST_REDIS_URL") else {
        return;
    };
    exclusive(async {
        let config = strict_redis_config(url, Duration::from_millis(50));
        let (state, _writer, metrics) = open(&config).await;
        let (campaign, key) = fresh();
        let ask = LeaseAsk {
            campaign,
            day: DAY,
            want: 500,
            daily: Some(800),
            total: None,
        };
        let cap = [CapAsk {
            campaign,
            limit: 1,
            per_secs: 600,
        }];
        assert_eq!(state.lease(&[ask]).await.unwrap(), [500]);
        let d = decision(1);
        assert_eq!(
            state.reserve(&[key], &cap, d, NOW).await.unwrap().granted,
            Some(0)
        );

        services("stop", "redis");
        for round in 0..3 {
            let started = Instant::now();
            assert!(state.lease(&[ask]).await.is_err(), "round {round}");
            assert!(state.reserve(&[key], &cap, decision(2), NOW).await.is_err());
            assert!(
                state
                    .seen_first(&d, EventKind::Click, NOW as u32 + 60, NOW as u32)
                    .await
                    .is_err()
            );
            let took = started.elapsed();
            assert!(took < Duration::from_secs(2), "round {round}: {took:?}");
        }
        let errors = "rotator_state_errors_total{backend=\"redis\",op=\"reserve\"}";
        assert!(metrics.render().contains(errors), "{}", metrics.render());

        services("start", "redis");
        let deadline = Instant::now() + Duration::from_secs(15);
        let grants = loop {
            match state.lease(&[ask]).await {
                Ok(g) => break g,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("waiting for Redis: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no reconnection: {e}"),
            }
        };
        assert_eq!(grants, [300], "the spend before the outage is kept");
        let r = state
            .reserve(&[key], &cap, decision(3), NOW + 1)
            .await
            .unwrap();
        assert_eq!(
            r.full_until[..],
            [Some(NOW + 600)],
            "the view before the outage is kept"
        );
    });
}

/// The value of `series` (a whole series name with its labels) in `metrics`, 0 when absent.
fn series(metrics: &Metrics, series: &str) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// With Redis the ticker reads spend and asks for leases in batches of `BATCH` campaigns (a
/// long script would hold up every node's decisions queued behind it): 150 budgeted campaigns,
/// one tick, three spend reads and three lease scripts, and every campaign got its lease.
#[test]
fn issue11_the_ticker_batches_many_campaigns_through_redis() {
    let Some(url) = service_url("ROTATOR_TEST_REDIS_URL") else {
        return;
    };
    exclusive(async {
        let (state, _writer, metrics) = open(&redis_config(url)).await;
        let (first, _) = fresh();
        let ids: Vec<u32> = (first..).take(2 * BATCH + 22).collect();
        let campaigns: String = ids
            .iter()
            .map(|id| {
                format!(
                    "[[campaign]]\nid = {id}\nurl = \"https://c{id}.example\"\nbid = 2.0\n\
                     [campaign.budget]\ndaily = 10.0\npacing = \"asap\"\n\n"
                )
            })
            .collect();
        let catalogue = Catalogue::new(file::parse(&campaigns).unwrap(), "test.toml".into());
        let signer = Signer::from_keys(&[9; 32], &[]).unwrap();
        let delivery = Delivery::new(
            state.clone(),
            Identifier::new(&IdentityConfig::default(), &signer),
            Arc::new(ArcSwap::from_pointee(catalogue)),
            metrics.clone(),
            Options {
                lease_seconds: 5,
                on_outage: OnOutage::Hold,
                impression_ttl: 60,
            },
        );
        delivery.tick(NOW).await;
        let calls = |op: &str| {
            series(
                &metrics,
                &format!("rotator_state_seconds_count{{backend=\"redis\",op=\"{op}\"}}"),
            )
        };
        assert_eq!((calls("spent"), calls("lease")), (3, 3));
        let day = NOW.div_euclid(86_400) as i32;
        let days: Vec<(u32, i32)> = ids.iter().map(|&id| (id, day)).collect();
        let spent = state.spent_many(&days).await.unwrap();
        // At least ten impressions' worth (2.00 CPM: 2,000 micros each) for every campaign.
        assert!(
            spent.iter().all(|&(d, t)| d >= 20_000 && d == t),
            "{spent:?}"
        );
    });
}

/// Resumes the paused Redis when dropped, also when the test fails (the other tests need it).
struct ResumeRedis;

impl Drop for ResumeRedis {
    fn drop(&mut self) {
        let _ = std::process::Command::new(crate::harness::repo().join("scripts/services"))
            .args(["resume", "redis"])
            .status();
    }
}

/// Redis hangs (the process frozen: connections open, no answers): after three calls waited
/// their whole timeout, the next ones fail at once without being sent (the circuit breaker),
/// one probe per open period goes through, and when Redis answers again the calls work by
/// themselves.
#[test]
fn issue11_a_hanging_redis_is_not_waited_for_call_after_call() {
    let Some(url) = service_url("ROTATOR_TEST_REDIS_URL") else {
        return;
    };
    exclusive(async {
        let config = strict_redis_config(url, Duration::from_millis(100));
        let (state, _writer, metrics) = open(&config).await;
        let (campaign, key) = fresh();
        let cap = [CapAsk {
            campaign,
            limit: 1_000,
            per_secs: 600,
        }];
        let sent = "rotator_state_seconds_count{backend=\"redis\",op=\"reserve\"}";
        let errors = "rotator_state_errors_total{backend=\"redis\",op=\"reserve\"}";
        let open_gauge = "rotator_state_circuit_open";
        assert!(state.reserve(&[key], &cap, decision(1), NOW).await.is_ok());
        assert_eq!(
            (series(&metrics, sent), series(&metrics, open_gauge)),
            (1, 0)
        );

        services("pause", "redis");
        let _resume = ResumeRedis;
        let frozen = Instant::now();
        for n in 0..20 {
            let r = state.reserve(&[key], &cap, decision(2 + n), NOW).await;
            assert!(r.is_err(), "call {n}: {r:?}");
        }
        let took = frozen.elapsed();
        // Three sent calls time out (0.3 s); the other calls fail at once, within the open period.
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert_eq!(series(&metrics, sent), 1 + 3, "only three calls were sent");
        assert_eq!(series(&metrics, errors), 20);
        assert_eq!(series(&metrics, open_gauge), 1);

        tokio::time::sleep(OPEN_FOR + Duration::from_millis(50)).await;
        let probe = state.reserve(&[key], &cap, decision(30), NOW).await;
        assert!(probe.is_err(), "{probe:?}");
        assert_eq!(series(&metrics, sent), 5, "one probe after the open period");
        assert!(
            state
                .reserve(&[key], &cap, decision(31), NOW)
                .await
                .is_err()
        );
        assert_eq!(series(&metrics, sent), 5, "no second probe meanwhile");

        services("resume", "redis");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match state.reserve(&[key], &cap, decision(40), NOW).await {
                Ok(r) => {
                    assert!(r.granted.is_some(), "{r:?}");
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("waiting for Redis: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no recovery: {e}"),
            }
        }
        assert_eq!(series(&metrics, open_gauge), 0, "closed again");
        assert!(state.reserve(&[key], &cap, decision(41), NOW).await.is_ok());
    });
}

/// The value of `rotator_tracking_events_total{kind, outcome}` on `s`.
fn tracking_events(s: &Server, kind: &str, outcome: &str) -> u64 {
    let text = request(s.metrics.unwrap(), "GET", "/metrics", &[]).body;
    let series = format!("rotator_tracking_events_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no series {series}in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Issue 11, item 6: with Redis, tracking's counted-once memory is shared, so a beacon replayed
/// to another node is a duplicate there, and a click on one node finds its impression counted
/// on another.
#[test]
fn issue11_tracking_counts_once_across_nodes_through_redis() {
    let Some(url) = service_url("ROTATOR_TEST_REDIS_URL") else {
        return;
    };
    let _exclusive = crate::support::service_lock();
    let cfg = config(
        "",
        &format!(
            "[state]\nbackend = \"redis\"\n[state.redis]\nurl = \"{url}\"\ntimeout = \"2s\"\n"
        ),
    );
    let (dir_a, dir_b) = (temp_dir("nodes-a"), temp_dir("nodes-b"));
    let a = Server::start_in(&dir_a, &cfg, &seed_campaigns());
    // Both nodes sign with one key, as a deployment behind a load balancer must.
    std::fs::create_dir_all(dir_b.join("data")).unwrap();
    std::fs::copy(
        dir_a.join("data/tracking.key"),
        dir_b.join("data/tracking.key"),
    )
    .unwrap();
    let b = Server::start_in(&dir_b, &cfg, &seed_campaigns());
    let signer = Signer::load(&TrackingConfig {
        secret_file: dir_a.join("data/tracking.key"),
        ..TrackingConfig::default()
    })
    .unwrap();
    let now = now();
    let claims = |kind, expires| Claims {
        id: new_id(),
        kind,
        campaign_id: 2,
        creative_id: 201,
        placement: Sym::intern("top-banner"),
        issued: now,
        expires,
        country: Country::parse("DE"),
        os: Sym::intern("Windows"),
        browser: Sym::intern("Chrome"),
        device: Device::Desktop,
    };
    let impression = claims(EventKind::Impression, now + 3_600);
    let click = Claims {
        kind: EventKind::Click,
        expires: now + 86_400,
        ..impression
    };
    let (impression, click) = (signer.sign(&impression), signer.sign(&click));
    let total =
        |kind, outcome| tracking_events(&a, kind, outcome) + tracking_events(&b, kind, outcome);
    for node in [&a, &b, &a, &b] {
        let r = request(node.addr, "GET", &format!("/v1/i/{impression}"), &[]);
        assert_eq!(r.status, 204, "{r:?}");
    }
    assert_eq!(total("impression", "counted"), 1);
    assert_eq!(total("impression", "duplicate"), 3);
    let r = request(b.addr, "GET", &format!("/v1/c/{click}"), &[]);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(
        tracking_events(&b, "click", "counted"),
        1,
        "the impression was on a"
    );
    let r = request(a.addr, "GET", &format!("/v1/c/{click}"), &[]);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(total("click", "counted"), 1);
    assert_eq!(total("click", "duplicate"), 1);
    let r = request(a.addr, "GET", "/v1/i/not-a-token", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(request(a.addr, "GET", "/v1/x/y", &[]).status, 404);
    for s in [a, b] {
        let (status, log) = s.stop();
        assert!(status.success(), "{log}");
    }
}

/// Tracking while Redis cannot answer: each node's own memory counts an event once, a click is
/// counted although its impression cannot be checked, and nothing waits longer than the timeout.
#[test]
fn issue11_tracking_falls_back_to_the_node_while_redis_is_away() {
    runtime().block_on(async {
        let port = crate::support::free_port();
        let mut config = redis_config(format!("redis://127.0.0.1:{port}"));
        config.redis.timeout = Duration::from_millis(50);
        config.redis.lease_timeout = Duration::from_millis(50);
        let (state, _writer, metrics) = open(&config).await;
        let signer = || Signer::from_keys(&[9; 32], &[]).unwrap();
        let tracker = Tracker::new(
            signer(),
            Arc::new(Seen::new(1_000)),
            &TrackingConfig::default(),
            None,
            metrics.clone(),
        )
        .sharing(state);
        assert!(tracker.is_shared());
        let now = now();
        let impression = Claims {
            id: new_id(),
            kind: EventKind::Impression,
            campaign_id: 2,
            creative_id: 201,
            placement: Sym::intern("top-banner"),
            issued: now,
            expires: now + 3_600,
            country: Country::parse("DE"),
            os: Sym::intern("Windows"),
            browser: Sym::intern("Chrome"),
            device: Device::Desktop,
        };
        let click = Claims {
            kind: EventKind::Click,
            ..impression
        };
        let (i, c) = (signer().sign(&impression), signer().sign(&click));
        let started = Instant::now();
        let outcomes = [
            tracker.event_shared(EventKind::Click, &c, false, now).await,
            tracker
                .event_shared(EventKind::Impression, &i, false, now)
                .await,
            tracker
                .event_shared(EventKind::Impression, &i, false, now)
                .await,
            tracker.event_shared(EventKind::Click, &c, false, now).await,
        ]
        .map(|e| e.outcome);
        use Outcome::{Counted, Duplicate};
        assert_eq!(outcomes, [Counted, Counted, Duplicate, Duplicate]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let text = metrics.render();
        assert!(
            text.contains("rotator_state_errors_total{backend=\"redis\",op=\"seen_first\"} 2"),
            "{text}"
        );
    });
}
