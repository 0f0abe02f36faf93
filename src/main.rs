//! The `rotator` command line: serve, check, explain, migrate, report.
//!
//! This is the edge: errors become one line on stderr and exit code 1.

use std::io::{BufRead, IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use arc_swap::ArcSwap;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use rotator::admin::tokens::{self, Role};
use rotator::admin::{self, Admin, AdminListener};
use rotator::campaigns::{Catalogue, CatalogueHandle, reload};
use rotator::config::{Config, LogFormat};
use rotator::decision::Decider;
use rotator::delivery::identity::Identifier;
use rotator::delivery::state::State;
use rotator::delivery::{self, Delivery};
use rotator::http::routes::{AdRoutes, AdminRoutes};
use rotator::http::server::{self, ServeOptions};
use rotator::http::tls::{self, Tls};
use rotator::metrics::Metrics;
use rotator::shutdown;
use rotator::stats::Stats;
use rotator::stats::aggregator::Aggregator;
use rotator::stats::report::{self, Format, ReportQuery};
use rotator::stats::sinks::Sink;
use rotator::tracking::{Signer, Tracker};
use rotator::visitor::geoip::{self, GeoIp, GeoIpHandle};
use rotator::visitor::user_agent::UserAgentParser;

#[derive(Parser)]
#[command(name = "rotator", version, about = "A fast, self-hosted ad server.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
struct Common {
    /// Config file (default: rotator.toml in the working folder, if present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ads (the default command).
    Serve,
    /// Validate config, campaigns and GeoIP database; print a summary.
    Check,
    /// Explain the decision for one visitor, or for `ip<TAB>user-agent` lines on stdin (`-`).
    Explain {
        /// The connection's peer: the visitor, or the proxy when --header passes a forwarding
        /// header (the output's `ip` and `ip_source` say which address was used).
        #[arg(long, required_unless_present = "stdin")]
        ip: Option<IpAddr>,
        /// Visitor User-Agent.
        #[arg(long, default_value = "")]
        ua: String,
        /// A request header, `Name: value` (repeatable), e.g. `X-Forwarded-For: 77.88.8.8`.
        #[arg(long = "header", value_name = "NAME: VALUE", conflicts_with = "stdin")]
        headers: Vec<String>,
        /// Read `ip<TAB>user-agent` lines from stdin.
        #[arg(value_name = "-", value_parser = clap::builder::PossibleValuesParser::new(["-"]))]
        stdin: Option<String>,
        /// The visitor's `user.key` (decisions API), to count their views against frequency
        /// caps (otherwise their cookie from --header, or the fallback, identifies them).
        #[arg(long, value_name = "KEY")]
        user: Option<String>,
    },
    /// Create the statistics sink's tables (idempotent).
    Migrate,
    /// Manage the admin API's tokens (`[admin] tokens_file`).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Print requests, impressions and fill rate from the statistics sink.
    Report {
        /// How far back, e.g. 1h, 30m, 7d (default 1h unless --from is given).
        #[arg(long, conflicts_with_all = ["from", "to"])]
        since: Option<String>,
        /// Start, RFC 3339 (e.g. 2026-11-24T00:00:00Z) or Unix seconds.
        #[arg(long)]
        from: Option<String>,
        /// End (exclusive), RFC 3339 or Unix seconds (default now).
        #[arg(long)]
        to: Option<String>,
        /// Group by, comma-separated: campaign, country, browser, os, device, placement, creative.
        #[arg(long, value_delimiter = ',')]
        by: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token; it is printed once, only its hash is stored.
    Create {
        /// What it may do.
        #[arg(long, value_enum)]
        role: Role,
        /// Its name (default: the role and a number).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the tokens (names, roles, creation times; never the tokens).
    List,
    /// Revoke a token by name; a running server refuses it from its next request on.
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let config_path = cli.common.config.clone();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config_path.as_deref()),
        Command::Check => check(config_path.as_deref()),
        Command::Explain {
            ip,
            ua,
            headers,
            stdin,
            user,
        } => explain(
            config_path.as_deref(),
            ip,
            &ua,
            &headers,
            stdin.is_some(),
            user.as_deref(),
        ),
        Command::Migrate => migrate(config_path.as_deref()),
        Command::Token { action } => token(config_path.as_deref(), action),
        Command::Report {
            since,
            from,
            to,
            by,
            format,
        } => report(
            config_path.as_deref(),
            since.as_deref(),
            from.as_deref(),
            to.as_deref(),
            &by,
            format,
        ),
    };
    if let Err(e) = result {
        eprintln!("rotator: error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

fn init_logging(config: &Config) {
    // `[log] level` was checked at load; a bad RUST_LOG is warned about below, not fatal.
    let from_env = std::env::var_os("RUST_LOG").map(|raw| {
        raw.to_str()
            .ok_or_else(|| "not valid UTF-8".to_string())
            .and_then(|text| EnvFilter::try_new(text).map_err(|e| e.to_string()))
    });
    let filter = match &from_env {
        Some(Ok(filter)) => filter.clone(),
        _ => EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if let Some(Err(e)) = from_env {
        tracing::warn!("RUST_LOG is not a log filter ({e}); using [log] level instead");
    }
    for var in &config.unknown_env {
        tracing::warn!("environment variable {var} matches no setting and is ignored");
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
}

/// The parts every command that decides needs, built from a checked config.
struct Core {
    config: Config,
    geoip: GeoIpHandle,
    catalogue: CatalogueHandle,
    agents: Arc<UserAgentParser>,
}

fn load_core(config: Config) -> Result<Core> {
    let geoip = Arc::new(ArcSwap::from_pointee(GeoIp::open(&config.geoip.database)?));
    // The parser first: its long-lived allocations then sit below the catalogue's and the
    // campaigns parser's temporaries in the heap instead of filling the holes those leave, which
    // would keep the pages of a large first catalogue resident after a reload replaces it.
    let agents = UserAgentParser::with_bots(&config.bots)?;
    let catalogue = Catalogue::load(&config.campaigns.file)?;
    Ok(Core {
        config,
        geoip,
        catalogue: Arc::new(ArcSwap::from_pointee(catalogue)),
        agents,
    })
}

fn decider(core: &Core, metrics: Arc<Metrics>, stats: Option<Arc<Aggregator>>) -> Result<Decider> {
    let (geoip, agents, catalogue) = (
        core.geoip.clone(),
        core.agents.clone(),
        core.catalogue.clone(),
    );
    Ok(Decider::new(
        &core.config,
        geoip,
        agents,
        catalogue,
        stats,
        metrics,
    )?)
}

fn serve(path: Option<&Path>) -> Result<()> {
    let config = Config::load(path)?;
    init_logging(&config);
    let core = load_core(config)?;
    let config = &core.config;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    let metrics = Metrics::new();
    let (listeners_stop, listeners_rx) = shutdown::channel();
    let (stats_stop, stats_rx) = shutdown::channel();
    let grace = config.server.shutdown_grace;
    let max_connections = connection_limit(config.server.max_connections);
    let options = |listener: &str, max_connections: usize| ServeOptions {
        grace,
        max_connections,
        send_timeout: config.server.send_timeout,
        metrics: metrics.connections(listener),
        tls: None,
    };
    let load_tls = |cert: &std::path::Path, key: &std::path::Path, listener: &'static str| {
        if cert.as_os_str().is_empty() {
            return Ok(None);
        }
        let tls = Tls::load(cert, key, listener, metrics.tls(listener))
            .with_context(|| format!("[{listener}] tls_cert and tls_key"))?;
        anyhow::Ok(Some(Arc::new(tls)))
    };
    let tls = load_tls(&config.server.tls_cert, &config.server.tls_key, "ads")?;
    let admin_tls = load_tls(&config.admin.tls_cert, &config.admin.tls_key, "admin")?;
    let stats = Stats::start(&config.stats, workers * 2, metrics.clone(), stats_rx, grace)?;
    let decider = decider(&core, metrics.clone(), Some(stats.aggregator.clone()))?;
    let (tracker, seen_writer) = Tracker::start(
        &config.tracking,
        Some(stats.aggregator.clone()),
        metrics.clone(),
    )?;
    let (state, state_writer) = runtime.block_on(State::open(
        &config.state,
        tracker.seen(),
        metrics.clone(),
        i64::from(rotator::tracking::now()),
    ))?;
    let state = Arc::new(state);
    let delivery = Arc::new(Delivery::new(
        state.clone(),
        Identifier::new(&config.identity, tracker.signer()),
        core.catalogue.clone(),
        metrics.clone(),
        delivery::Options::from_config(&config.state, &config.tracking),
    ));
    let decider = Arc::new(decider.with_delivery(delivery.clone()));
    let tracker = Arc::new(
        tracker
            .sharing(state.clone())
            .costing(core.catalogue.clone(), Some(delivery.clone())),
    );
    // A second handle on the sink, for pacing's traffic history (the flusher owns the first).
    let history = rotator::stats::sinks::Sink::open(&config.stats)?;
    {
        let catalogue = core.catalogue.load();
        for warning in catalogue.warnings() {
            tracing::warn!("{warning}");
        }
        metrics.campaigns_active.set(catalogue.active() as i64);
        metrics.set_geoip_build_epoch(core.geoip.load().build_epoch());
        tracing::info!(
            campaigns = catalogue.campaigns().len(),
            active = catalogue.active(),
            geoip = %core.geoip.load().path().display(),
            sink = config.stats.sink.as_str(),
            "rotator {} starting",
            env!("CARGO_PKG_VERSION")
        );
    }
    runtime.block_on(async {
        // Signal handlers first: a signal must never meet the default action once we serve.
        let signals = shutdown::signals()?;
        let reloader = reload::watch(
            config.campaigns.file.clone(),
            core.catalogue.clone(),
            config.campaigns.watch_interval,
            metrics.clone(),
            listeners_rx.clone(),
        );
        tokio::spawn(reloader);
        tokio::spawn(delivery::learn::learn(
            history,
            delivery.clone(),
            listeners_rx.clone(),
        ));
        let mut ticker_stop = listeners_rx.clone();
        let ticker = tokio::spawn(delivery.clone().run(async move {
            shutdown::wait(&mut ticker_stop).await;
        }));
        tokio::spawn(geoip::reload::watch(
            config.geoip.database.clone(),
            core.geoip.clone(),
            config.geoip.watch_interval,
            metrics.clone(),
            listeners_rx.clone(),
        ));
        for tls in tls.iter().chain(&admin_tls) {
            tokio::spawn(
                tls.clone()
                    .watch(config.server.tls_watch_interval, listeners_rx.clone()),
            );
        }
        let ad_listener = tokio::net::TcpListener::bind(config.server_listen()?)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!("ads listening on {} ({scheme})", ad_listener.local_addr()?);
        let mut tasks = Vec::new();
        if let Some(addr) = config.metrics_listen()? {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {} (metrics)", config.metrics.listen))?;
            tracing::info!("metrics listening on {}", listener.local_addr()?);
            let admin = Arc::new(AdminRoutes {
                metrics: metrics.clone(),
                catalogue: core.catalogue.clone(),
            });
            tasks.push(tokio::spawn(server::serve(
                listener,
                admin,
                listeners_rx.clone(),
                options("metrics", server::METRICS_MAX_CONNECTIONS),
            )));
        }

        // After the ad listener: a server that cannot take ads stops before anything else binds.
        if let Some(addr) = config.admin_listen()? {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {} (admin)", config.admin.listen))?;
            let admin_scheme = if admin_tls.is_some() { "https" } else { "http" };
            tracing::info!(
                "admin listening on {} ({admin_scheme})",
                listener.local_addr()?
            );
            // Over TLS the session cookie is `Secure`.
            let mut admin = Admin::new(
                config,
                core.catalogue.clone(),
                metrics.clone(),
                admin_tls.is_some(),
            )?;
            if config.tracking.public_url.is_empty() {
                admin.ads_url = format!("{scheme}://{}", ad_listener.local_addr()?);
            }
            admin.delivery = Some(delivery.clone());
            admin.state_backend = Some(delivery.state().backend());
            tasks.push(tokio::spawn(server::serve(
                listener,
                Arc::new(AdminListener(Arc::new(admin))),
                listeners_rx.clone(),
                ServeOptions {
                    tls: admin_tls.clone(),
                    ..options("admin", admin::MAX_CONNECTIONS)
                },
            )));
        }

        let ads = tokio::spawn(server::serve(
            ad_listener,
            Arc::new(AdRoutes { decider, tracker }),
            listeners_rx,
            ServeOptions {
                tls,
                ..options("ads", max_connections)
            },
        ));
        let signal = signals.await;
        tracing::info!("{signal}: stopping; in-flight requests have {grace:?} to finish");
        listeners_stop.fire();
        let _ = ads.await;
        for t in tasks {
            let _ = t.await;
        }
        // Unused budget leases go back before the state's journals close.
        let _ = ticker.await;
        anyhow::Ok(())
    })?;
    // After the listeners: the events of the last requests are journalled too.
    seen_writer.stop();
    state_writer.stop();
    stats_stop.fire();
    stats.join();
    tracing::info!("stopped");
    Ok(())
}

/// Raises the file descriptor limit and fits `configured` connections into it (logged).
fn connection_limit(configured: u64) -> usize {
    let fd_limit = match server::raise_fd_limit() {
        Ok((before, after)) => {
            if after > before {
                tracing::info!("file descriptor limit raised from {before} to {after}");
            }
            after
        }
        Err(e) => {
            tracing::warn!("cannot read or raise the file descriptor limit: {e}");
            return usize::try_from(configured).unwrap_or(usize::MAX);
        }
    };
    let fitted = server::fitting_max_connections(configured, fd_limit);
    if fitted < configured {
        tracing::warn!(
            "[server] max_connections {configured} lowered to {fitted}: the file descriptor \
             limit is {fd_limit} and {} are kept for everything else",
            server::FD_RESERVE
        );
    }
    usize::try_from(fitted).unwrap_or(usize::MAX)
}

fn check(path: Option<&Path>) -> Result<()> {
    let core = load_core(Config::load(path)?)?;
    let c = &core.config;
    let catalogue = core.catalogue.load();
    let geoip = core.geoip.load();
    let mut out = std::io::stdout().lock();
    writeln!(out, "config:    {}", c.source_name)?;
    let or_off = |listen: &str| {
        if listen.is_empty() {
            "off".to_string()
        } else {
            listen.to_string()
        }
    };
    writeln!(
        out,
        "listen:    ads {}, metrics {}, admin {}",
        c.server.listen,
        or_off(&c.metrics.listen),
        or_off(&c.admin.listen)
    )?;
    for (section, label, cert, key) in [
        (
            "server",
            "tls:      ",
            &c.server.tls_cert,
            &c.server.tls_key,
        ),
        ("admin", "admin tls:", &c.admin.tls_cert, &c.admin.tls_key),
    ] {
        if cert.as_os_str().is_empty() {
            continue;
        }
        let pair = tls::load_pair(cert, key)
            .with_context(|| format!("[{section}] tls_cert and tls_key"))?;
        writeln!(
            out,
            "{label} {} (expires {})",
            cert.display(),
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(pair.not_after))
        )?;
    }
    writeln!(
        out,
        "geoip:     {} ({}, built {})",
        geoip.path().display(),
        geoip.database_type(),
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(geoip.build_epoch()))
    )?;
    writeln!(
        out,
        "campaigns: {} ({} campaigns, {} active; {} creatives; {} placements: {})",
        catalogue.source().display(),
        catalogue.campaigns().len(),
        catalogue.active(),
        catalogue
            .campaigns()
            .iter()
            .map(|c| c.creatives.len())
            .sum::<usize>(),
        catalogue.placements().len(),
        catalogue
            .placements()
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    let count = |f: fn(&rotator::campaigns::Delivery) -> bool| {
        catalogue
            .campaigns()
            .iter()
            .filter(|c| f(c.delivery()))
            .count()
    };
    writeln!(
        out,
        "delivery:  {} with a flight, {} with a budget, {} with a frequency cap",
        count(|d| d.flight != Default::default()),
        count(|d| d.budget.is_some()),
        count(|d| d.frequency_cap.is_some()),
    )?;
    writeln!(
        out,
        "stats:     sink {}, flush every {}",
        c.stats.sink.as_str(),
        humantime::format_duration(c.stats.flush_interval)
    )?;
    let key_exists = Signer::check(&c.tracking)?;
    writeln!(
        out,
        "tracking:  key {}{}",
        c.tracking.secret_file.display(),
        if key_exists {
            ""
        } else {
            " (created at first start)"
        }
    )?;
    for warning in c.warnings.iter().chain(&catalogue.warnings()) {
        writeln!(out, "warning:   {warning}")?;
    }
    writeln!(out, "ok")?;
    Ok(())
}

fn explain(
    path: Option<&Path>,
    ip: Option<IpAddr>,
    ua: &str,
    headers: &[String],
    stdin: bool,
    user: Option<&str>,
) -> Result<()> {
    let headers = header_map(headers, ua)?;
    let core = load_core(Config::load(path)?)?;
    let decider = decider(&core, Metrics::new(), None)?;
    let decider = explain_delivery(&core, decider, ip.filter(|_| !stdin), &headers, user)?;
    let mut out = std::io::stdout().lock();
    if !stdin {
        let ip = ip.ok_or_else(|| anyhow!("--ip is required"))?;
        serde_json::to_writer(&mut out, &decider.explain_request(ip, &headers))?;
        writeln!(out)?;
        return Ok(());
    }
    // Lines are read as bytes: a log line with a byte that is not UTF-8 is read lossily (the
    // User-Agent gets U+FFFD) instead of ending the batch.
    for (n, line) in std::io::stdin().lock().split(b'\n').enumerate() {
        let line = line.with_context(|| format!("stdin line {}", n + 1))?;
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line));
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (ip_text, ua) = line.split_once('\t').unwrap_or((&line, ""));
        match ip_text.trim().parse::<IpAddr>() {
            Ok(ip) => serde_json::to_writer(&mut out, &decider.explain(ip, ua))?,
            Err(_) => serde_json::to_writer(
                &mut out,
                &serde_json::json!({ "line": n + 1, "error": format!("{ip_text:?} is not an IP address") }),
            )?,
        }
        writeln!(out)?;
    }
    Ok(())
}

/// `decider` with the delivery state (flights, spent budgets, and the views of the visitor at
/// `peer` with `headers` or `user`) when a campaign has delivery limits; notes what it could not
/// read on stderr.
fn explain_delivery(
    core: &Core,
    decider: Decider,
    peer: Option<IpAddr>,
    headers: &hyper::HeaderMap,
    user: Option<&str>,
) -> Result<Decider> {
    let limited = core
        .catalogue
        .load()
        .campaigns()
        .iter()
        .any(|c| !c.delivery().is_unlimited());
    if !limited {
        return Ok(decider);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let now = i64::from(rotator::tracking::now());
    let views = runtime.block_on(async {
        let mut explaining =
            delivery::explain::open(&core.config, core.catalogue.clone(), now).await?;
        let ua = headers
            .get(hyper::header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let ip = peer.map(|p| decider.client_ip.resolve(p, headers).0);
        let who = delivery::identity::Who {
            user_key: user,
            headers: peer.map(|_| headers),
            ip,
            ua,
        };
        let identity = explaining.delivery.identifier().identify(&who, now);
        let views = if user.is_some() || peer.is_some() {
            explaining.views(&identity.keys, now).await
        } else {
            Default::default()
        };
        let delivery = explaining.delivery.clone();
        for note in &explaining.notes {
            eprintln!("rotator: explain: {note}");
        }
        explaining.close();
        anyhow::Ok((delivery, views))
    })?;
    let (delivery, views) = views;
    let mut decider = decider.with_delivery(delivery);
    decider.explain_views = views;
    Ok(decider)
}

/// `--header 'Name: value'` arguments (and `--ua`, unless a User-Agent header is given) as the
/// headers of one request.
fn header_map(headers: &[String], ua: &str) -> Result<hyper::HeaderMap> {
    use hyper::header::{HeaderName, HeaderValue, USER_AGENT};
    let mut map = hyper::HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("--header {h:?}: expected `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| anyhow!("--header {h:?}: {:?} is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| anyhow!("--header {h:?}: the value has characters a header cannot"))?;
        map.append(name, value);
    }
    if !ua.is_empty() && !map.contains_key(USER_AGENT) {
        map.insert(
            USER_AGENT,
            HeaderValue::from_str(ua)
                .map_err(|_| anyhow!("--ua {ua:?}: has characters a header cannot"))?,
        );
    }
    Ok(map)
}

fn migrate(path: Option<&Path>) -> Result<()> {
    let config = Config::load(path)?;
    let sink = Sink::open(&config.stats)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(sink.migrate())?;
    println!("{}: schema is in place", sink.name());
    Ok(())
}

fn token(path: Option<&Path>, action: TokenAction) -> Result<()> {
    let config = Config::load(path)?;
    let file = &config.admin.tokens_file;
    match action {
        TokenAction::Create { role, name } => {
            let (token, entry) = tokens::create(file, role, name.as_deref())?;
            eprintln!(
                "token {:?} ({}) stored as a hash in {}; shown this once:",
                entry.name,
                entry.role.as_str(),
                file.display()
            );
            println!("{token}");
        }
        TokenAction::List => {
            let mut out = std::io::stdout().lock();
            for t in tokens::list(file)? {
                writeln!(out, "{}\t{}\t{}", t.name, t.role.as_str(), t.created)?;
            }
        }
        TokenAction::Revoke { name } => {
            let entry = tokens::revoke(file, &name)?;
            println!("revoked {:?} ({})", entry.name, entry.role.as_str());
        }
    }
    Ok(())
}

fn parse_time(text: &str) -> Result<u32> {
    if let Ok(secs) = text.parse::<u32>() {
        return Ok(secs);
    }
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| anyhow!("{text:?} is not a time like 2026-11-24T10:00:00Z: {e}"))?;
    Ok(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as u32)
}

fn report(
    path: Option<&Path>,
    since: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    by: &[String],
    format: Format,
) -> Result<()> {
    let config = Config::load(path)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as u32;
    let to = to.map(parse_time).transpose()?.unwrap_or(now + 60);
    let from = match (since, from) {
        (_, Some(f)) => parse_time(f)?,
        (s, None) => {
            let span = humantime::parse_duration(s.unwrap_or("1h"))
                .map_err(|e| anyhow!("--since: {e}"))?;
            now.saturating_sub(span.as_secs() as u32)
        }
    };
    if from >= to {
        bail!("the range is empty: --from must be before --to");
    }
    let by = by
        .iter()
        .map(|g| {
            report::column(g.trim()).ok_or_else(|| {
                anyhow!(
                    "--by {g:?}: choose from {}",
                    report::GROUP_COLUMNS.join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let query = ReportQuery { from, to, by };
    let sink = Sink::open(&config.stats)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(sink.report(&query))?;
    print!("{}", report::render(&query, rows, format));
    Ok(())
}
