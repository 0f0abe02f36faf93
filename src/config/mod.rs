//! `rotator.toml`: every key has a default, environment variables override the file.
//!
//! Loading is the first of two stages (see DEVELOPERS.md): this module only reads, parses and
//! checks values; the runtime objects (listeners, GeoIP reader, catalogue, sink) are built from a
//! checked [`Config`] by `serve`, off the request path.
//!
//! Precedence, lowest first: built-in defaults, the file, `ROTATOR_<SECTION>_<KEY>` variables
//! (`ROTATOR_STATS_CLICKHOUSE_URL` sets `[stats.clickhouse] url`). Relative paths resolve against
//! the folder of the config file, or the working folder when there is no file.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::visitor::client_ip::{ClientIpRule, TrustedProxies};

mod admin;
mod checks;
mod env;
mod sections;

pub use admin::AdminConfig;

use checks::too_wide;
pub use checks::{check_log_level, check_url};
use env::{apply_env, rotator_env};
pub use sections::*;

/// The config file read when `--config` is not given; its absence is not an error.
pub const DEFAULT_CONFIG_FILE: &str = "rotator.toml";

/// Accepted `watch_interval`, `flush_interval` and `write_timeout`: shorter spins a core (or, for
/// writes, fails every batch); longer is a mistake (and an hour already loses a lot on a crash).
const INTERVAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// Accepted `shutdown_grace`: a deployment waits no longer than this for a stop anyway, and
/// larger values overflow the clock arithmetic of the shutdown deadline.
const GRACE_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);

/// Accepted `spool_after`: up to a day of outage held in memory.
const SPOOL_AFTER_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(86_400);

/// Accepted `impression_ttl` and `click_ttl`: a token lives at least a minute (a slow page) and
/// at most 30 days (the counted-once memory must hold every live token).
const TTL_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(30 * 86_400);

/// Accepted `[state] lease_seconds`: a lease of at least a second (one tick), and at most five
/// minutes of spend outstanding per node.
const LEASE_SECONDS_RANGE: RangeInclusive<u32> = 1..=300;

/// Accepted `[state.redis] timeout` and `lease_timeout`.
const REDIS_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(10);

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
    /// Tracking URLs: signing keys, lifetimes, counted-once state.
    pub tracking: TrackingConfig,
    /// Delivery counters: local or shared through Redis.
    pub state: StateConfig,
    /// How a visitor is recognised for frequency caps.
    pub identity: IdentityConfig,
    /// The management listener, its tokens and audit log.
    pub admin: AdminConfig,
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
            &mut self.tracking.secret_file,
            &mut self.tracking.seen_file,
            &mut self.state.dir,
            &mut self.admin.tokens_file,
            &mut self.admin.audit_log,
        ]
        .into_iter()
        .chain(&mut self.tracking.previous_secret_files)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        // Empty means "no TLS", not the config's folder.
        for p in [
            &mut self.server.tls_cert,
            &mut self.server.tls_key,
            &mut self.admin.tls_cert,
            &mut self.admin.tls_key,
        ] {
            if !p.as_os_str().is_empty() && p.is_relative() {
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
        self.admin_listen()?;
        for (section, cert, key) in [
            ("server", &self.server.tls_cert, &self.server.tls_key),
            ("admin", &self.admin.tls_cert, &self.admin.tls_key),
        ] {
            if cert.as_os_str().is_empty() != key.as_os_str().is_empty() {
                let (missing, other) = if key.as_os_str().is_empty() {
                    ("tls_key", "tls_cert")
                } else {
                    ("tls_cert", "tls_key")
                };
                return Err(self.invalid(section, missing, format!("must be set with {other}")));
            }
        }
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
                "server",
                "tls_watch_interval",
                self.server.tls_watch_interval,
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
        self.validate_tracking()?;
        self.validate_state()?;
        for (key, patterns) in [("allow", &self.bots.allow), ("deny", &self.bots.deny)] {
            regex::RegexSet::new(patterns).map_err(|e| self.invalid("bots", key, e.to_string()))?;
        }
        Ok(())
    }

    /// `[tracking]`: lifetimes a token can carry, a memory bound, a usable public URL.
    fn validate_tracking(&self) -> Result<(), ConfigError> {
        let t = &self.tracking;
        for (key, value) in [
            ("impression_ttl", t.impression_ttl),
            ("click_ttl", t.click_ttl),
        ] {
            if !TTL_RANGE.contains(&value) {
                return Err(self.invalid(
                    "tracking",
                    key,
                    format!(
                        "{} is out of range: must be from {} to {}",
                        humantime::format_duration(value),
                        humantime::format_duration(*TTL_RANGE.start()),
                        humantime::format_duration(*TTL_RANGE.end())
                    ),
                ));
            }
        }
        if t.seen_max_entries == 0 {
            return Err(self.invalid(
                "tracking",
                "seen_max_entries",
                "must be more than zero".into(),
            ));
        }
        if !t.public_url.is_empty() {
            check_url(&t.public_url).map_err(|m| self.invalid("tracking", "public_url", m))?;
        }
        let cookie = &self.identity.cookie;
        if !cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            return Err(self.invalid(
                "identity",
                "cookie",
                format!("{cookie:?} is not a cookie name (letters, digits, _ and -)"),
            ));
        }
        Ok(())
    }

    /// `[state]`: a lease length and Redis timeouts that can work, a Redis URL the client takes.
    fn validate_state(&self) -> Result<(), ConfigError> {
        let s = &self.state;
        if !LEASE_SECONDS_RANGE.contains(&s.lease_seconds) {
            return Err(self.invalid(
                "state",
                "lease_seconds",
                format!(
                    "{} is out of range: must be from {} to {}",
                    s.lease_seconds,
                    LEASE_SECONDS_RANGE.start(),
                    LEASE_SECONDS_RANGE.end()
                ),
            ));
        }
        if s.max_cap_entries == 0 {
            return Err(self.invalid("state", "max_cap_entries", "must be more than zero".into()));
        }
        for (key, value) in [
            ("timeout", s.redis.timeout),
            ("lease_timeout", s.redis.lease_timeout),
        ] {
            if !REDIS_TIMEOUT_RANGE.contains(&value) {
                return Err(self.invalid(
                    "state.redis",
                    key,
                    format!(
                        "{} is out of range: must be from {} to {}",
                        humantime::format_duration(value),
                        humantime::format_duration(*REDIS_TIMEOUT_RANGE.start()),
                        humantime::format_duration(*REDIS_TIMEOUT_RANGE.end())
                    ),
                ));
            }
        }
        redis::Client::open(s.redis.url.as_str()).map_err(|e| {
            self.invalid(
                "state.redis",
                "url",
                // Not the URL itself: it may carry a password.
                format!("not a Redis URL like redis://127.0.0.1:6379: {e}"),
            )
        })?;
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

    /// The management listener address, or `None` when disabled. A port it shares with another
    /// listener is left to the bind to refuse (port 0 in tests is never shared).
    pub fn admin_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.admin
            .listen_addr()
            .map_err(|m| self.invalid("admin", "listen", m))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visitor::client_ip::ClientIpHeader;

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
    fn env_lists_may_be_toml_arrays_for_items_with_commas() {
        let c = load("", &[("ROTATOR_BOTS_ALLOW", r"['^Foo/\d{1,3}', 'Bar']")]).unwrap();
        assert_eq!(c.bots.allow, [r"^Foo/\d{1,3}", "Bar"]);
        let err = load("", &[("ROTATOR_BOTS_DENY", "[\"unclosed")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ROTATOR_BOTS_DENY") && err.contains("TOML array"),
            "{err}"
        );
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

    /// Issue 13: TLS is off by default; a certificate needs its key (and the other way round);
    /// relative paths resolve against the config file's folder.
    #[test]
    fn issue13_tls_files_come_in_pairs() {
        let c = load("", &[]).unwrap();
        assert!(
            c.server.tls_cert.as_os_str().is_empty() && c.server.tls_key.as_os_str().is_empty()
        );
        for (text, expected) in [
            (
                "[server]\ntls_cert = \"a.pem\"\n",
                "[server] tls_key: must be set with tls_cert",
            ),
            (
                "[server]\ntls_key = \"a.key\"\n",
                "[server] tls_cert: must be set with tls_key",
            ),
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        let c = load("[server]\ntls_cert = \"a.pem\"\ntls_key = \"a.key\"\n", &[]).unwrap();
        assert!(c.server.tls_cert.is_absolute() && c.server.tls_cert.ends_with("a.pem"));
        assert!(c.server.tls_key.is_absolute() && c.server.tls_key.ends_with("a.key"));
    }

    /// Issue 9, item 1: loopback only by default, one header, named by the operator.
    #[test]
    fn issue9_client_ip_defaults_and_overrides() {
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

    /// Issue 10, item 4: `[tracking]` defaults, paths beside the file, checked lifetimes.
    #[test]
    fn issue10_tracking_section() {
        let c = load("", &[]).unwrap();
        assert!(c.tracking.secret_file.ends_with("data/tracking.key"));
        assert!(c.tracking.secret_file.is_absolute());
        assert_eq!(c.tracking.impression_ttl, Duration::from_secs(3600));
        assert_eq!(c.tracking.click_ttl, Duration::from_secs(86_400));
        let c = load(
            "[tracking]\nclick_ttl = \"2d\"\n",
            &[(
                "ROTATOR_TRACKING_PREVIOUS_SECRET_FILES",
                "old.key,/keys/older.key",
            )],
        )
        .unwrap();
        assert_eq!(c.tracking.click_ttl, Duration::from_secs(2 * 86_400));
        assert!(c.tracking.previous_secret_files[0].ends_with("old.key"));
        assert!(c.tracking.previous_secret_files[0].is_absolute());
        assert_eq!(
            c.tracking.previous_secret_files[1],
            Path::new("/keys/older.key")
        );
        let err = |text: &str| load(text, &[]).unwrap_err().to_string();
        assert!(
            err("[tracking]\nimpression_ttl = \"30s\"\n").contains("[tracking] impression_ttl")
        );
        assert!(err("[tracking]\nclick_ttl = \"31d\"\n").contains("[tracking] click_ttl"));
        assert!(err("[tracking]\nseen_max_entries = 0\n").contains("seen_max_entries"));
        assert!(err("[tracking]\npublic_url = \"ads.example\"\n").contains("public_url"));
    }

    /// Issue 11, item 6: `[state]` defaults, environment overrides, checked values.
    #[test]
    fn issue11_state_section() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.state.backend, StateBackend::Local);
        assert_eq!(c.state.on_outage, OnOutage::Hold);
        assert_eq!(c.state.lease_seconds, 5);
        assert!(c.state.dir.ends_with("data/state") && c.state.dir.is_absolute());
        assert_eq!(c.state.redis.timeout, Duration::from_millis(50));
        let c = load(
            "[state]\nbackend = \"redis\"\non_outage = \"serve\"\n[state.redis]\ntimeout = \"20ms\"\n",
            &[("ROTATOR_STATE_REDIS_URL", "redis://:pw@10.0.0.9:6380/2")],
        )
        .unwrap();
        assert_eq!(c.state.backend, StateBackend::Redis);
        assert_eq!(c.state.on_outage, OnOutage::Serve);
        assert_eq!(c.state.redis.url, "redis://:pw@10.0.0.9:6380/2");
        assert_eq!(c.state.redis.timeout, Duration::from_millis(20));
        let err = |text: &str| load(text, &[]).unwrap_err().to_string();
        assert!(err("[state]\nbackend = \"etcd\"\n").contains("etcd"));
        assert!(err("[state]\nlease_seconds = 0\n").contains("[state] lease_seconds"));
        assert!(err("[state]\nmax_cap_entries = 0\n").contains("[state] max_cap_entries"));
        assert!(err("[state.redis]\ntimeout = \"0s\"\n").contains("[state.redis] timeout"));
        let bad_url = err("[state.redis]\nurl = \"http://user:secret@host\"\n");
        assert!(bad_url.contains("[state.redis] url"), "{bad_url}");
        assert!(
            !bad_url.contains("secret"),
            "no password in messages: {bad_url}"
        );
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
