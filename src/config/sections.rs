//! The sections of `rotator.toml`, each with its defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::visitor::client_ip::ClientIpHeader;

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the ad server listens on; port 0 picks a free port (tests).
    pub listen: String,
    /// Where visitors go when no campaign wins (and where bots go).
    pub default_url: String,
    /// Peers whose `client_ip_header` is believed, as CIDR networks. Loopback only by default:
    /// a Kubernetes Service, Docker's userland proxy or a cloud NAT makes visitors arrive from
    /// private addresses, so trusting private ranges by default would trust every visitor.
    pub trusted_proxies: Vec<String>,
    /// Whether bots may win campaigns. Off by default: advertisers pay for people.
    pub bots_win: bool,
    /// How long in-flight requests may take to finish after a shutdown signal.
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// The one header that carries the visitor's address from a trusted proxy:
    /// `x-forwarded-for`, `forwarded` or `x-real-ip`. The others are ignored.
    pub client_ip_header: ClientIpHeader,
    /// Open connections above which new ones are closed at once (counted in
    /// `rotator_connections_refused_total`); lowered at start to fit the file descriptor limit.
    pub max_connections: u64,
    /// How long a write may wait for a peer that does not read before its connection is
    /// closed (like nginx's `send_timeout`).
    #[serde(with = "duration_str")]
    pub send_timeout: Duration,
    /// PEM certificate chain (leaf first) for native HTTPS with HTTP/2; empty (the default):
    /// plain HTTP/1.1. Set with `tls_key`. Watched and reloaded without a restart.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: PathBuf,
    /// How often `tls_cert` and `tls_key` are checked for changes (SIGHUP reloads at once).
    #[serde(with = "duration_str")]
    pub tls_watch_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            default_url: "https://example.com".into(),
            trusted_proxies: ["127.0.0.0/8", "::1/128"].map(String::from).to_vec(),
            bots_win: false,
            shutdown_grace: Duration::from_secs(10),
            client_ip_header: ClientIpHeader::default(),
            max_connections: 10_000,
            send_timeout: Duration::from_secs(10),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_watch_interval: Duration::from_secs(1),
        }
    }
}

/// `[geoip]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoipConfig {
    /// Any MaxMind-format country or city database.
    pub database: PathBuf,
    /// How often the file is checked for changes (SIGHUP reloads at once).
    #[serde(with = "duration_str")]
    pub watch_interval: Duration,
}

impl Default for GeoipConfig {
    fn default() -> Self {
        Self {
            database: "data/country.mmdb".into(),
            watch_interval: Duration::from_secs(1),
        }
    }
}

/// `[campaigns]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CampaignsConfig {
    /// The campaigns file.
    pub file: PathBuf,
    /// How often the file is checked for changes (SIGHUP reloads at once).
    #[serde(with = "duration_str")]
    pub watch_interval: Duration,
}

impl Default for CampaignsConfig {
    fn default() -> Self {
        Self {
            file: "campaigns.toml".into(),
            watch_interval: Duration::from_secs(1),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics`, `/healthz` and `/readyz` listener; empty disables it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8082".into(),
        }
    }
}

/// Which database receives the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Embedded SQLite file (default).
    Sqlite,
    /// ClickHouse over HTTP.
    Clickhouse,
    /// MySQL or MariaDB.
    Mysql,
    /// Count in memory and metrics only; nothing is stored.
    None,
}

impl SinkKind {
    /// The name used in config, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Sqlite => "sqlite",
            SinkKind::Clickhouse => "clickhouse",
            SinkKind::Mysql => "mysql",
            SinkKind::None => "none",
        }
    }
}

/// `[stats]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// The sink.
    pub sink: SinkKind,
    /// How often aggregated rows are flushed.
    #[serde(with = "duration_str")]
    pub flush_interval: Duration,
    /// Create the sink's tables at start.
    pub auto_migrate: bool,
    /// Folder of the on-disk spool.
    pub spool_dir: PathBuf,
    /// Rows waiting in memory above which batches go to the spool.
    pub max_pending_rows: u64,
    /// How long the sink may fail before batches go to the spool. 0 (the default) spools a
    /// batch as soon as a write fails, so a crash during an outage loses at most the counts of
    /// the current interval; more keeps batches in memory through short outages (fewer disk
    /// writes, but a `kill -9` during the outage loses them).
    #[serde(with = "duration_str")]
    pub spool_after: Duration,
    /// Size of the spool above which new batches are dropped (and counted as lost).
    pub spool_max_bytes: u64,
    /// How long one write to the sink may take before it counts as failed.
    #[serde(with = "duration_str")]
    pub write_timeout: Duration,
    /// `[stats.sqlite]`
    pub sqlite: SqliteConfig,
    /// `[stats.clickhouse]`
    pub clickhouse: ClickhouseConfig,
    /// `[stats.mysql]`
    pub mysql: MysqlConfig,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            sink: SinkKind::Sqlite,
            flush_interval: Duration::from_secs(10),
            auto_migrate: true,
            spool_dir: "data/spool".into(),
            max_pending_rows: 200_000,
            spool_after: Duration::ZERO,
            spool_max_bytes: 1 << 30,
            write_timeout: Duration::from_secs(10),
            sqlite: SqliteConfig::default(),
            clickhouse: ClickhouseConfig::default(),
            mysql: MysqlConfig::default(),
        }
    }
}

/// `[stats.sqlite]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file (created if missing).
    pub path: PathBuf,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            path: "data/stats.db".into(),
        }
    }
}

/// `[stats.clickhouse]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickhouseConfig {
    /// HTTP interface of the server.
    pub url: String,
    /// Database holding the table (created by `migrate`).
    pub database: String,
    /// Statistics table.
    pub table: String,
    /// User name.
    pub user: String,
    /// Password (prefer `ROTATOR_STATS_CLICKHOUSE_PASSWORD`).
    pub password: String,
}

impl Default for ClickhouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "rotator".into(),
            table: "stats".into(),
            user: "default".into(),
            password: String::new(),
        }
    }
}

/// `[stats.mysql]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MysqlConfig {
    /// `mysql://user:password@host:port/database`
    pub url: String,
    /// Statistics table.
    pub table: String,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            url: "mysql://rotator:rotator@127.0.0.1:3306/rotator".into(),
            table: "stats".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `rotator=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// `[bots]`: corrections to the built-in bot detection (uap-core and the crawler list).
///
/// Patterns are regular expressions (Rust `regex` syntax, case-sensitive unless `(?i)`) searched
/// anywhere in the User-Agent. An agent matching `deny` is a bot; one matching `allow` (and not
/// `deny`) is never a bot, whatever the built-in lists say.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BotsConfig {
    /// Agents that are never bots, e.g. a monitoring tool you want counted as a visitor.
    pub allow: Vec<String>,
    /// Agents that are always bots, e.g. an in-house crawler the lists do not know.
    pub deny: Vec<String>,
}

/// `[tracking]`: signed impression, viewable and click URLs, and which of them were counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackingConfig {
    /// The signing key: created with 32 random bytes (mode 0600) at first start if missing.
    pub secret_file: PathBuf,
    /// Earlier keys, still accepted for verifying (never for signing), so links already on pages
    /// keep working while keys rotate.
    pub previous_secret_files: Vec<PathBuf>,
    /// How long an impression (and viewable) URL may be counted after the decision.
    #[serde(with = "duration_str")]
    pub impression_ttl: Duration,
    /// How long a click URL may be counted after the decision (it redirects after that too).
    #[serde(with = "duration_str")]
    pub click_ttl: Duration,
    /// Journal of the events already counted, so a replay after a restart is not counted again.
    pub seen_file: PathBuf,
    /// Most events remembered as counted (about 35 bytes of memory each, 24 to 48). Every
    /// impression is remembered for `click_ttl` (its click may come that late), so size it as
    /// (impressions + viewables + clicks per second) × `click_ttl`. When full, new events are not
    /// counted (never double-counted) until older ones expire.
    pub seen_max_entries: u64,
    /// Base URL put into tracking URLs and tags, e.g. `https://ads.example`; empty = derived from
    /// the request's `Host` header, scheme http.
    pub public_url: String,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            secret_file: "data/tracking.key".into(),
            previous_secret_files: Vec::new(),
            impression_ttl: Duration::from_secs(3600),
            click_ttl: Duration::from_secs(86_400),
            seen_file: "data/tracking-seen".into(),
            seen_max_entries: 10_000_000,
            public_url: String::new(),
        }
    }
}

/// Where the delivery counters (budget spend, frequency-cap views) live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// In this process, journalled under `[state] dir`: one node, nothing to install.
    Local,
    /// One Redis server shared by every node.
    Redis,
}

/// What capped campaigns do while their caps cannot be checked (Redis unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOutage {
    /// Keep showing them, uncapped, until Redis answers again.
    Serve,
    /// Do not show them (uncapped campaigns still serve).
    Hold,
}

/// `[state]`: budgets, frequency caps and, with Redis, tracking's counted-once memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// `local` (default) or `redis`.
    pub backend: StateBackend,
    /// Capped campaigns while caps cannot be checked: `hold` (default) or `serve`.
    pub on_outage: OnOutage,
    /// Folder of the local backend's journals.
    pub dir: PathBuf,
    /// A budget lease is about this many seconds of a campaign's spend.
    pub lease_seconds: u32,
    /// Local backend: most visitor × campaign pairs with cap views remembered (about 150
    /// bytes each); when full, new visitors of capped campaigns follow `on_outage`.
    pub max_cap_entries: u64,
    /// `[state.redis]`
    pub redis: StateRedisConfig,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: StateBackend::Local,
            on_outage: OnOutage::Hold,
            dir: "data/state".into(),
            lease_seconds: 5,
            max_cap_entries: 5_000_000,
            redis: StateRedisConfig::default(),
        }
    }
}

/// `[state.redis]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateRedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `unix:///path/to/socket`.
    pub url: String,
    /// How long a call on the request path (caps, tracking) may wait for Redis before it counts
    /// as failed.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// How long a budget call (leases, refunds: once a second, off the request path) may wait.
    #[serde(with = "duration_str")]
    pub lease_timeout: Duration,
}

impl Default for StateRedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            timeout: Duration::from_millis(50),
            lease_timeout: Duration::from_secs(1),
        }
    }
}

/// What identifies a visitor for frequency caps when the request carries no `user.key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityFallback {
    /// A keyed hash of IP address and User-Agent whose key changes every day (UTC): never
    /// stored raw, not linkable across days.
    DailyHash,
    /// No identity: capped campaigns are shown without capping.
    Uncapped,
    /// No identity: capped campaigns are not shown.
    Exclude,
}

/// `[identity]`: recognising a visitor for frequency caps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// The first-party cookie rotator sets (random id, one year, `HttpOnly; Secure;
    /// SameSite=None`); empty = never set or read a cookie.
    pub cookie: String,
    /// For visitors without `user.key` or cookie: a first visit, cookies refused, or `Sec-GPC: 1`
    /// (then no cookie is set or read).
    pub fallback: IdentityFallback,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            cookie: "rid".into(),
            fallback: IdentityFallback::DailyHash,
        }
    }
}

/// Durations as strings such as `"500ms"`, `"10s"`, `"1m"`.
mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration like \"500ms\", \"10s\" or \"1m\": {e}"
            ))
        })
    }
}
