//! The `rotator` command line: serve, check, explain, migrate, report.
//!
//! This is the edge: errors become one line on stderr and exit code 1.

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use arc_swap::ArcSwap;
use clap::{Args, Parser, Subcommand};

use rotator::campaigns::{Catalogue, CatalogueHandle, reload};
use rotator::config::{Config, LogFormat};
use rotator::decision::Decider;
use rotator::http::routes::{AdRoutes, AdminRoutes};
use rotator::http::server;
use rotator::metrics::Metrics;
use rotator::shutdown;
use rotator::stats::Stats;
use rotator::stats::aggregator::Aggregator;
use rotator::stats::report::{self, Format, ReportQuery};
use rotator::stats::sinks::Sink;
use rotator::visitor::geoip::GeoIp;
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
        /// Visitor address.
        #[arg(long, required_unless_present = "stdin")]
        ip: Option<IpAddr>,
        /// Visitor User-Agent.
        #[arg(long, default_value = "")]
        ua: String,
        /// Read `ip<TAB>user-agent` lines from stdin.
        #[arg(value_name = "-", value_parser = clap::builder::PossibleValuesParser::new(["-"]))]
        stdin: Option<String>,
    },
    /// Create the statistics sink's tables (idempotent).
    Migrate,
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
        /// Group by, comma-separated: campaign, country, browser, os, device.
        #[arg(long, value_delimiter = ',')]
        by: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

fn main() {
    let cli = Cli::parse();
    let config_path = cli.common.config.clone();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config_path.as_deref()),
        Command::Check => check(config_path.as_deref()),
        Command::Explain { ip, ua, stdin } => {
            explain(config_path.as_deref(), ip, &ua, stdin.is_some())
        }
        Command::Migrate => migrate(config_path.as_deref()),
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    for var in &config.unknown_env {
        tracing::warn!("environment variable {var} matches no setting and is ignored");
    }
}

/// The parts every command that decides needs, built from a checked config.
struct Core {
    config: Config,
    geoip: Arc<GeoIp>,
    catalogue: CatalogueHandle,
    agents: Arc<UserAgentParser>,
}

fn load_core(config: Config) -> Result<Core> {
    let geoip = Arc::new(GeoIp::open(&config.geoip.database)?);
    let catalogue = Catalogue::load(&config.campaigns.file)?;
    let agents = UserAgentParser::with_bots(&config.bots)?;
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
    let stats = Stats::start(&config.stats, workers * 2, metrics.clone(), stats_rx, grace)?;
    let decider = Arc::new(decider(
        &core,
        metrics.clone(),
        Some(stats.aggregator.clone()),
    )?);
    {
        let catalogue = core.catalogue.load();
        metrics.campaigns_active.set(catalogue.active() as i64);
        tracing::info!(
            campaigns = catalogue.campaigns().len(),
            active = catalogue.active(),
            geoip = %core.geoip.path().display(),
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
        let ad_listener = tokio::net::TcpListener::bind(config.server_listen()?)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        tracing::info!("ads listening on {}", ad_listener.local_addr()?);
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
                grace,
            )));
        }

        let ads = tokio::spawn(server::serve(
            ad_listener,
            Arc::new(AdRoutes { decider }),
            listeners_rx,
            grace,
        ));
        let signal = signals.await;
        tracing::info!("{signal}: stopping; in-flight requests have {grace:?} to finish");
        listeners_stop.fire();
        let _ = ads.await;
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })?;
    stats_stop.fire();
    stats.join();
    tracing::info!("stopped");
    Ok(())
}

fn check(path: Option<&Path>) -> Result<()> {
    let core = load_core(Config::load(path)?)?;
    let c = &core.config;
    let catalogue = core.catalogue.load();
    let mut out = std::io::stdout().lock();
    writeln!(out, "config:    {}", c.source_name)?;
    writeln!(
        out,
        "listen:    ads {}, metrics {}",
        c.server.listen,
        if c.metrics.listen.is_empty() {
            "off"
        } else {
            &c.metrics.listen
        }
    )?;
    writeln!(
        out,
        "geoip:     {} ({}, built {})",
        core.geoip.path().display(),
        core.geoip.database_type(),
        humantime::format_rfc3339_seconds(
            UNIX_EPOCH + Duration::from_secs(core.geoip.build_epoch())
        )
    )?;
    writeln!(
        out,
        "campaigns: {} ({} campaigns, {} active)",
        catalogue.source().display(),
        catalogue.campaigns().len(),
        catalogue.active()
    )?;
    writeln!(
        out,
        "stats:     sink {}, flush every {}",
        c.stats.sink.as_str(),
        humantime::format_duration(c.stats.flush_interval)
    )?;
    writeln!(out, "ok")?;
    Ok(())
}

fn explain(path: Option<&Path>, ip: Option<IpAddr>, ua: &str, stdin: bool) -> Result<()> {
    let core = load_core(Config::load(path)?)?;
    let decider = decider(&core, Metrics::new(), None)?;
    let mut out = std::io::stdout().lock();
    if !stdin {
        let ip = ip.ok_or_else(|| anyhow!("--ip is required"))?;
        serde_json::to_writer(&mut out, &decider.explain(ip, ua))?;
        writeln!(out)?;
        return Ok(());
    }
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.with_context(|| format!("stdin line {}", n + 1))?;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (ip_text, ua) = line.split_once('\t').unwrap_or((line.as_str(), ""));
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
