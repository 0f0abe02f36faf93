//! `rotator.toml`: every key has a default, environment variables override the file.
//!
//! Loading is the first of two stages (see DEVELOPERS.md): this module only reads, parses and
//! checks values; the runtime objects (listeners, GeoIP reader, catalogue, sink) are built from a
//! checked [`Config`] by `serve`, off the request path.
//!
//! Precedence, lowest first: built-in defaults, the file, `ROTATOR_<SECTION>_<KEY>` variables
//! (`ROTATOR_STATS_CLICKHOUSE_URL` sets `[stats.clickhouse] url`). Relative paths resolve against
//! the folder of the config file, or the working folder when there is no file.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::visitor::client_ip::{ClientIpHeader, ClientIpRule, TrustedProxies};

/// The config file read when `--config` is not given; its absence is not an error.
pub const DEFAULT_CONFIG_FILE: &str = "rotator.toml";

/// Prefix of the environment variables that override config keys.
const ENV_PREFIX: &str = "ROTATOR_";

/// Environment variables with this prefix belong to the test harness, not to the config.
const ENV_TEST_PREFIX: &str = "ROTATOR_TEST_";

/// Accepted `watch_interval`, `flush_interval` and `write_timeout`: shorter spins a core (or, for
/// writes, fails every batch); longer is a mistake (and an hour already loses a lot on a crash).
const INTERVAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// Accepted `shutdown_grace`: a deployment waits no longer than this for a stop anyway, and
/// larger values overflow the clock arithmetic of the shutdown deadline.
const GRACE_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);

/// Accepted `spool_after`: up to a day of outage held in memory.
const SPOOL_AFTER_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(86_400);

/// Log levels a `[log] level` directive may end with.
const LOG_LEVELS: &str = "trace, debug, info, warn, error, off";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists (or was asked for) but cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file (or `<defaults>`).
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An environment override cannot be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{source_name}: [{section}] {key}: {message}")]
    Invalid {
        /// Where the configuration came from.
        source_name: String,
        /// The section, e.g. `server`.
        section: &'static str,
        /// The key, e.g. `listen`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole configuration, after defaults, file and environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The ad-serving listener and request-path policy.
    pub server: ServerConfig,
    /// The country database.
    pub geoip: GeoipConfig,
    /// The campaigns file and its reloading.
    pub campaigns: CampaignsConfig,
    /// The metrics and health listener.
    pub metrics: MetricsConfig,
    /// Statistics aggregation, flushing, spool and sink.
    pub stats: StatsConfig,
    /// Log format and level.
    pub log: LogConfig,
    /// Operator corrections to bot detection.
    pub bots: BotsConfig,
    /// Where this configuration came from: the file, or `<defaults>`. Not a key.
    #[serde(skip)]
    pub source_name: String,
    /// `ROTATOR_*` environment variables that match no key; `serve` warns about them. Not a key.
    #[serde(skip)]
    pub unknown_env: Vec<String>,
    /// Values that work but are probably a mistake; `check` prints them, `serve` logs them.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

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

impl Config {
    /// Loads the configuration: `path` if given (it must exist), else `rotator.toml` in the
    /// working folder if present, else the defaults; then applies `ROTATOR_*` variables from
    /// the process environment, resolves relative paths and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, rotator_env()?)
    }

    /// [`Config::load`] with an explicit environment, so tests need not touch the process's.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (file, text) = match path {
            Some(p) => (Some(p.to_path_buf()), Some(read(p)?)),
            None => {
                let p = Path::new(DEFAULT_CONFIG_FILE);
                if p.exists() {
                    (Some(p.to_path_buf()), Some(read(p)?))
                } else {
                    (None, None)
                }
            }
        };
        let source_name = file
            .as_ref()
            .map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
        let mut table: toml::Table = match &text {
            Some(t) => toml::from_str(t).map_err(|e| ConfigError::Parse {
                path: source_name.clone(),
                message: one_line(&e.to_string()),
            })?,
            None => toml::Table::new(),
        };
        // Check the file alone first, so an unknown key is reported against the file.
        if let Some(t) = &text {
            toml::from_str::<Config>(t).map_err(|e| ConfigError::Parse {
                path: source_name.clone(),
                message: one_line(&e.to_string()),
            })?;
        }
        let unknown_env = apply_env(&mut table, env)?;
        let mut config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                path: source_name.clone(),
                message: e.to_string(),
            })?;
        config.source_name = source_name;
        config.unknown_env = unknown_env;
        let base = match file.as_deref().and_then(Path::parent) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        config.resolve_paths(&base);
        config.clickhouse_credentials()?;
        config.validate()?;
        config.warnings = config.doubts();
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.geoip.database,
            &mut self.campaigns.file,
            &mut self.stats.spool_dir,
            &mut self.stats.sqlite.path,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Moves a `user:password@` of `[stats.clickhouse] url` into `user` and `password`. The
    /// ClickHouse client ignores credentials in the URL (they would not log in), and its HTTP
    /// pool prints the URL's authority at trace level (they would leak into logs).
    fn clickhouse_credentials(&mut self) -> Result<(), ConfigError> {
        let ch = &mut self.stats.clickhouse;
        let Some((scheme, rest)) = ch.url.split_once("://") else {
            return Ok(());
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let Some((userinfo, host)) = rest[..authority_end].rsplit_once('@') else {
            return Ok(());
        };
        if !ch.password.is_empty() {
            return Err(self.invalid(
                "stats.clickhouse",
                "url",
                "has a password and so has [stats.clickhouse] password; keep only one".into(),
            ));
        }
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8_lossy()
                .into_owned()
        };
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        if !user.is_empty() {
            ch.user = decode(user);
        }
        ch.password = decode(password);
        ch.url = format!("{scheme}://{host}{}", &rest[authority_end..]);
        Ok(())
    }

    fn invalid(&self, section: &'static str, key: &'static str, message: String) -> ConfigError {
        ConfigError::Invalid {
            source_name: self.source_name.clone(),
            section,
            key,
            message,
        }
    }

    /// Checks values that parse but cannot work.
    fn validate(&self) -> Result<(), ConfigError> {
        self.server_listen()?;
        self.metrics_listen()?;
        check_url(&self.server.default_url)
            .map_err(|m| self.invalid("server", "default_url", m))?;
        TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(|m| self.invalid("server", "trusted_proxies", m))?;
        if self.server.max_connections == 0 {
            return Err(self.invalid("server", "max_connections", "must be more than zero".into()));
        }
        self.listeners_apart()?;
        for (section, key, value, range) in [
            (
                "server",
                "shutdown_grace",
                self.server.shutdown_grace,
                GRACE_RANGE,
            ),
            (
                "server",
                "send_timeout",
                self.server.send_timeout,
                INTERVAL_RANGE,
            ),
            (
                "campaigns",
                "watch_interval",
                self.campaigns.watch_interval,
                INTERVAL_RANGE,
            ),
            (
                "geoip",
                "watch_interval",
                self.geoip.watch_interval,
                INTERVAL_RANGE,
            ),
            (
                "stats",
                "flush_interval",
                self.stats.flush_interval,
                INTERVAL_RANGE,
            ),
            (
                "stats",
                "spool_after",
                self.stats.spool_after,
                SPOOL_AFTER_RANGE,
            ),
            (
                "stats",
                "write_timeout",
                self.stats.write_timeout,
                INTERVAL_RANGE,
            ),
        ] {
            if !range.contains(&value) {
                return Err(self.invalid(
                    section,
                    key,
                    format!(
                        "{} is out of range: must be from {} to {}",
                        humantime::format_duration(value),
                        humantime::format_duration(*range.start()),
                        humantime::format_duration(*range.end())
                    ),
                ));
            }
        }
        if self.stats.max_pending_rows == 0 {
            return Err(self.invalid("stats", "max_pending_rows", "must be more than zero".into()));
        }
        check_log_level(&self.log.level).map_err(|m| self.invalid("log", "level", m))?;
        for (key, patterns) in [("allow", &self.bots.allow), ("deny", &self.bots.deny)] {
            regex::RegexSet::new(patterns).map_err(|e| self.invalid("bots", key, e.to_string()))?;
        }
        Ok(())
    }

    /// Refuses an ad and a metrics listener on the same port of overlapping addresses: the
    /// second bind would fail only at start, after `check` said the file was fine.
    fn listeners_apart(&self) -> Result<(), ConfigError> {
        let (ads, Some(metrics)) = (self.server_listen()?, self.metrics_listen()?) else {
            return Ok(());
        };
        let overlap =
            ads.ip() == metrics.ip() || ads.ip().is_unspecified() || metrics.ip().is_unspecified();
        if ads.port() != 0 && ads.port() == metrics.port() && overlap {
            return Err(self.invalid(
                "metrics",
                "listen",
                format!(
                    "{} uses the port of [server] listen = {:?}; give each listener its own port",
                    self.metrics.listen, self.server.listen
                ),
            ));
        }
        Ok(())
    }

    /// Values that work but are probably a mistake.
    fn doubts(&self) -> Vec<String> {
        self.server
            .trusted_proxies
            .iter()
            .filter(|entry| too_wide(entry))
            .map(|entry| {
                format!(
                    "{}: [server] trusted_proxies: {entry:?} is wider than any private network: \
                     every client in it can claim any address in forwarding headers; list only \
                     your proxies' networks",
                    self.source_name
                )
            })
            .collect()
    }

    /// The ad-serving listener address.
    pub fn server_listen(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            self.invalid(
                "server",
                "listen",
                format!(
                    "{:?} is not an address like 0.0.0.0:8080",
                    self.server.listen
                ),
            )
        })
    }

    /// The metrics listener address, or `None` when disabled.
    pub fn metrics_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.metrics.listen.is_empty() {
            return Ok(None);
        }
        self.metrics.listen.parse().map(Some).map_err(|_| {
            self.invalid(
                "metrics",
                "listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8082",
                    self.metrics.listen
                ),
            )
        })
    }

    /// The client-IP rule: trusted proxy networks and the header read from them (validated at
    /// load, so this cannot fail afterwards).
    pub fn client_ip_rule(&self) -> Result<ClientIpRule, ConfigError> {
        let proxies = TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(|m| self.invalid("server", "trusted_proxies", m))?;
        Ok(ClientIpRule {
            proxies,
            header: self.server.client_ip_header,
        })
    }
}

/// A TOML error (multi-line, with a source excerpt) as one line.
pub fn one_line(message: &str) -> String {
    let mut lines = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|'));
    let head = lines.next().unwrap_or_default().to_string();
    let rest: Vec<&str> = lines
        .filter(|l| !l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .collect();
    if rest.is_empty() {
        head
    } else {
        format!("{head} {}", rest.join(" "))
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The `ROTATOR_*` variables of the process environment (but the test harness's
/// `ROTATOR_TEST_*`). Other variables are not read, so one that is not UTF-8 (a locale's file
/// name, say) cannot stop the program.
fn rotator_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name
            .to_str()
            .filter(|n| n.starts_with(ENV_PREFIX) && !n.starts_with(ENV_TEST_PREFIX))
        else {
            continue;
        };
        let value = value.into_string().map_err(|raw| ConfigError::Env {
            var: name.to_string(),
            message: format!("{raw:?} is not valid UTF-8"),
        })?;
        vars.push((name.to_string(), value));
    }
    Ok(vars)
}

/// Checks a `[log] level` filter: comma-separated directives, each a level or `target=level`.
/// `tracing` itself reads a bare unknown word as a target name, which turns logging off
/// without a word; here it is refused.
pub fn check_log_level(filter: &str) -> Result<(), String> {
    for directive in filter.split(',').map(str::trim) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        // `tracing` reads an empty level as `error`; here it is a mistake.
        if level.is_empty()
            || level
                .parse::<tracing::level_filters::LevelFilter>()
                .is_err()
        {
            return Err(format!(
                "{directive:?} is not a level ({LOG_LEVELS}) or target=level"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| format!("{filter:?}: {e}"))
}

/// Whether a `trusted_proxies` entry is wider than the widest private network of its family
/// (`10.0.0.0/8`, `fc00::/7`): such an entry trusts a large part of the internet.
fn too_wide(entry: &str) -> bool {
    let (addr, len) = entry.split_once('/').unwrap_or((entry, ""));
    let Ok(addr) = addr.trim().parse::<IpAddr>() else {
        return false;
    };
    let Ok(len) = len.trim().parse::<u32>() else {
        return false;
    };
    match addr {
        IpAddr::V4(_) => len < 8,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => len < 96 + 8,
        IpAddr::V6(_) => len < 7,
    }
}

/// Accepts absolute `http` and `https` URLs with a host and a port from 1 to 65535, and returns
/// the `Location` header value for them. A URL with non-ASCII characters is sent encoded
/// (punycode host, percent-encoded path and query: RFC 3986 section 2.1, as browsers do); an
/// ASCII URL is sent exactly as written.
pub fn check_url(url: &str) -> Result<HeaderValue, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url:?}: scheme {:?} is not http or https",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if parsed.port() == Some(0) {
        return Err(format!("{url:?}: port 0 cannot be connected to"));
    }
    if !url.is_ascii() {
        return HeaderValue::from_str(parsed.as_str())
            .map_err(|_| format!("{url:?} cannot be encoded for a Location header"));
    }
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    HeaderValue::from_str(url)
        .map_err(|_| format!("{url:?} has characters not allowed in a Location header"))
}

/// Applies `ROTATOR_<SECTION>_<KEY>` variables. The set of keys is read off the defaults, so every
/// key (and only a key) can be overridden; the default's type says how to parse the value.
/// Returns the `ROTATOR_*` variables that match no key (scripts use a few of their own), so the
/// caller can warn about likely typos.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
        path: "<defaults>".into(),
        message: e.to_string(),
    })?;
    let mut leaves = Vec::new();
    collect_leaves(&defaults, &mut Vec::new(), &mut leaves);
    let mut unknown = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if var.starts_with(ENV_TEST_PREFIX) {
            continue;
        }
        let Some((path, default)) = leaves
            .iter()
            .find(|(p, _)| p.join("_").to_uppercase() == rest)
        else {
            unknown.push(var);
            continue;
        };
        let value = env_value(default, &raw).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        insert_path(table, path, value).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    Ok(unknown)
}

fn collect_leaves(
    table: &toml::Table,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, toml::Value)>,
) {
    for (key, value) in table {
        prefix.push(key.clone());
        match value {
            toml::Value::Table(t) => collect_leaves(t, prefix, out),
            other => out.push((prefix.clone(), other.clone())),
        }
        prefix.pop();
    }
}

fn env_value(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match default {
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not an integer"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not true or false"))?,
        ),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, sections) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("[{section}] in the file is not a table"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("rotator-config-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rotator.toml");
        std::fs::write(&path, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let result = Config::load_with_env(Some(&path), env);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn empty_file_gives_defaults_with_paths_beside_the_file() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:8080");
        assert_eq!(c.stats.flush_interval, Duration::from_secs(10));
        assert!(c.geoip.database.ends_with("data/country.mmdb"));
        assert!(
            c.geoip
                .database
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .ends_with(c.campaigns.file.parent().unwrap().file_name().unwrap())
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let c = load(
            "[stats]\nflush_interval = \"1m\"\n",
            &[
                ("ROTATOR_STATS_FLUSH_INTERVAL", "500ms"),
                ("ROTATOR_STATS_CLICKHOUSE_URL", "http://ch:8123"),
                ("ROTATOR_SERVER_TRUSTED_PROXIES", "10.0.0.0/8, ::1/128"),
                ("ROTATOR_STATS_AUTO_MIGRATE", "false"),
                ("ROTATOR_TEST_ANYTHING", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.stats.flush_interval, Duration::from_millis(500));
        assert_eq!(c.stats.clickhouse.url, "http://ch:8123");
        assert_eq!(c.server.trusted_proxies, ["10.0.0.0/8", "::1/128"]);
        assert!(!c.stats.auto_migrate);
    }

    #[test]
    fn bad_env_is_named() {
        let err = load("", &[("ROTATOR_STATS_MAX_PENDING_ROWS", "many")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ROTATOR_STATS_MAX_PENDING_ROWS"), "{err}");
        let c = load("", &[("ROTATOR_SERVER_LISTN", "x")]).unwrap();
        assert_eq!(c.unknown_env, ["ROTATOR_SERVER_LISTN"]);
    }

    #[test]
    fn invalid_values_are_named() {
        let err = load("[server]\ndefault_url = \"ftp://x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_url"), "{err}");
        let err = load("[server]\nlisten = \"nowhere\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
        let err = load("[stats]\nflush_interval = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
        let err = load("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("trusted_proxies"), "{err}");
        let err = load("[server]\nclient_ip_header = \"x-client-ip\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("x-forwarded-for"), "{err}");
        let err = load("[server]\nmax_connections = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_connections"), "{err}");
    }

    /// Issue 9, item 1: loopback only by default, one header, named by the operator.
    #[test]
    fn r9_client_ip_defaults_and_overrides() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.trusted_proxies, ["127.0.0.0/8", "::1/128"]);
        let rule = c.client_ip_rule().unwrap();
        assert_eq!(rule.header, ClientIpHeader::XForwardedFor);
        assert!(!rule.proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(!rule.proxies.contains("172.17.0.1".parse().unwrap()));
        assert!(rule.proxies.contains("::1".parse().unwrap()));
        let c = load(
            "[server]\nclient_ip_header = \"forwarded\"\nmax_connections = 5\n",
            &[("ROTATOR_SERVER_CLIENT_IP_HEADER", "x-real-ip")],
        )
        .unwrap();
        assert_eq!(c.server.client_ip_header, ClientIpHeader::XRealIp);
        assert_eq!(c.server.max_connections, 5);
    }

    #[test]
    fn urls() {
        assert_eq!(check_url("https://yandex.ru").unwrap(), "https://yandex.ru");
        assert!(check_url("http://a.b/c?d=e").is_ok());
        assert!(check_url("javascript:alert(1)").is_err());
        assert!(check_url("/relative").is_err());
        assert!(check_url("https://").is_err());
        assert!(check_url("https://a.b:99999/").is_err());
        assert!(check_url("https://a.b:0/").is_err());
        assert_eq!(check_url("https://a.b:65535").unwrap(), "https://a.b:65535");
        assert_eq!(
            check_url("https://пример.рф/ä?q=ü#é").unwrap(),
            "https://xn--e1afmkfd.xn--p1ai/%C3%A4?q=%C3%BC#%C3%A9"
        );
    }

    #[test]
    fn ranges_listeners_and_levels() {
        let err = |text: &str| load(text, &[]).unwrap_err().to_string();
        assert!(err("[server]\nshutdown_grace = \"61m\"\n").contains("[server] shutdown_grace"));
        assert!(err("[stats]\nflush_interval = \"99ms\"\n").contains("[stats] flush_interval"));
        assert!(err("[stats]\nspool_after = \"2d\"\n").contains("[stats] spool_after"));
        assert!(
            load(
                "[stats]\nflush_interval = \"100ms\"\nspool_after = \"1d\"\n",
                &[]
            )
            .is_ok()
        );
        let same = "[server]\nlisten = \"0.0.0.0:9000\"\n[metrics]\nlisten = \"127.0.0.1:9000\"\n";
        assert!(err(same).contains("[metrics] listen"));
        let apart =
            "[server]\nlisten = \"127.0.0.1:9000\"\n[metrics]\nlisten = \"127.0.0.2:9000\"\n";
        assert!(load(apart, &[]).is_ok());
        let ephemeral = "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
        assert!(load(ephemeral, &[]).is_ok());
        for bad in ["verbose", "", "info,", "rotator=loud", "rotator"] {
            assert!(check_log_level(bad).is_err(), "{bad:?}");
        }
        for good in ["info", "WARN", "rotator=debug,info", "hyper_util=off,trace"] {
            assert!(check_log_level(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn wide_trusted_proxies_are_doubted() {
        for wide in [
            "0.0.0.0/0",
            "1.0.0.0/7",
            "::/0",
            "2000::/3",
            "::ffff:0.0.0.0/96",
        ] {
            assert!(too_wide(wide), "{wide}");
        }
        for fine in [
            "10.0.0.0/8",
            "fc00::/7",
            "203.0.113.7",
            "::ffff:10.0.0.0/104",
        ] {
            assert!(!too_wide(fine), "{fine}");
        }
        let c = load("[server]\ntrusted_proxies = [\"0.0.0.0/0\"]\n", &[]).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("\"0.0.0.0/0\""), "{:?}", c.warnings);
    }

    #[test]
    fn clickhouse_credentials_leave_the_url() {
        let c = load(
            "[stats.clickhouse]\nurl = \"https://al%69ce:p%40ss:w@ch.example:8443/?x=1\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.stats.clickhouse.url, "https://ch.example:8443/?x=1");
        assert_eq!(c.stats.clickhouse.user, "alice");
        assert_eq!(c.stats.clickhouse.password, "p@ss:w");
        let c = load("", &[]).unwrap();
        assert_eq!(c.stats.clickhouse.url, "http://127.0.0.1:8123");
        assert_eq!(c.stats.clickhouse.user, "default");
    }

    #[test]
    fn bots_patterns_load_and_a_bad_one_is_named() {
        let c = load(
            "[bots]\nallow = [\"^MyProbe/\"]\n",
            &[("ROTATOR_BOTS_DENY", "InHouse,Fetcher/\\d")],
        )
        .unwrap();
        assert_eq!(c.bots.allow, ["^MyProbe/"]);
        assert_eq!(c.bots.deny, ["InHouse", "Fetcher/\\d"]);
        let err = load("[bots]\ndeny = [\"(unclosed\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[bots] deny"), "{err}");
    }
}
