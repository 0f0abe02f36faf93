//! Observability against the real tools: `promtool` checks the exposition and the Prometheus
//! config, a real Prometheus scrapes a real server and answers every Prometheus query of both
//! dashboards (the service dashboard and the business dashboard's spend and pacing panels), and a
//! real ClickHouse answers every SQL query of the business dashboard.
//!
//! Prometheus and promtool are always required (Debian's `prometheus` package, installed by
//! `scripts/services install`); ClickHouse follows `service_url` like the other sink tests.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Response, Server, config, repo, request, seed_campaigns, temp_dir};
use crate::server::{CHROME, CHROME_ANDROID, DE, FIREFOX, GOOGLEBOT, RU, US};
use crate::support::{service_lock, service_url};

/// An address with no country in the bundled database (TEST-NET-1), for the GeoIP panel.
const NOWHERE: &str = "192.0.2.1";

/// A command of the `prometheus` package, or a failure saying how to get it.
fn tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{name} is not installed: run `scripts/services install` (Debian package prometheus)"
    );
    Command::new(name)
}

/// Every kind of traffic the dashboards show: wins of each seed campaign, no fill, a bot, an
/// unknown country, and a 404 on the ad listener.
fn send_mix(s: &Server) {
    assert_eq!(s.ad(RU, CHROME).status, 303);
    assert_eq!(s.ad(DE, CHROME_ANDROID).status, 303);
    assert_eq!(s.ad(US, FIREFOX).status, 303);
    assert_eq!(s.ad(US, CHROME).status, 303);
    assert_eq!(s.ad(RU, GOOGLEBOT).status, 303);
    assert_eq!(s.ad(NOWHERE, CHROME).status, 303);
    assert_eq!(s.get("/no-such-page", &[]).status, 404);
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The body of `r`, with `Transfer-Encoding: chunked` decoded (the raw client keeps it as sent).
fn body(r: &Response) -> String {
    if !r
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        return r.body.clone();
    }
    let mut rest = r.body.as_str();
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|e| panic!("bad chunk size {size:?}: {e}"));
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    out
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child (Prometheus) when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dashboard(name: &str) -> serde_json::Value {
    let path = repo().join("deploy/grafana/dashboards").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (panel title, target field) for every target of every panel, rows' nested panels included.
fn targets(dash: &serde_json::Value, field: &str) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, field: &str, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(q) = t[field].as_str() {
                    out.push((title.clone(), q.to_string()));
                }
            }
            walk(&p["panels"], field, out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], field, &mut out);
    out
}

#[test]
fn promtool_accepts_the_metrics_and_the_prometheus_config() {
    let dir = temp_dir("promtool");
    let s = Server::start_in(
        &dir,
        &config("", "[stats]\nsink = \"none\"\n"),
        &seed_campaigns(),
    );
    for _ in 0..3 {
        send_mix(&s);
    }
    let metrics = request(s.metrics.unwrap(), "GET", "/metrics", &[]);
    assert_eq!(metrics.status, 200);
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &metrics.body).unwrap();
    let out = tool("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        metrics.body
    );
    let out = tool("promtool")
        .args(["check", "config"])
        .arg(repo().join("deploy/prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check config deploy/prometheus.yml failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts Prometheus scraping `target` (job `rotator`, as in deploy/prometheus.yml) every second.
fn start_prometheus(dir: &Path, target: SocketAddr) -> (KillOnDrop, SocketAddr) {
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: rotator\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = tool("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = std::net::TcpStream::connect(addr).is_ok()
            && request(addr, "GET", "/-/ready", &[]).status == 200;
        if ready {
            break;
        }
        if let Ok(Some(status)) = guard.0.try_wait() {
            panic!(
                "prometheus exited with {status}:\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    (guard, addr)
}

/// Grafana variables in the dashboards' Prometheus queries and what the test puts in their place. `$__rate_interval`
/// is the only one used; 30 s covers many 1 s scrapes.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[("$__rate_interval", "30s")];

/// The seed campaigns and one with an even-paced daily budget and the highest bid: it wins
/// until pacing holds it back, so the spend, budget and hold-back series have data.
fn campaigns_with_a_budget() -> String {
    format!(
        "{}\n[[campaign]]\nid = 9001\nname = \"paced\"\nurl = \"https://paced.example\"\nbid = 100.0\n\
         [campaign.budget]\ndaily = 10.0\npacing = \"even\"\n",
        seed_campaigns()
    )
}

#[test]
fn every_service_dashboard_query_returns_data_from_real_prometheus() {
    let dir = temp_dir("prometheus");
    // SQLite with a short interval: flushes (and their durations) happen during the test.
    let s = Server::start_in(
        &dir,
        &config(
            "",
            "[stats]\nsink = \"sqlite\"\nflush_interval = \"200ms\"\n",
        ),
        &campaigns_with_a_budget(),
    );
    let (_prometheus, prom) = start_prometheus(&dir, s.metrics.unwrap());

    let start = Instant::now();
    let mut step = 0;
    while start.elapsed() < Duration::from_secs(9) {
        send_mix(&s);
        // Reloads of both results, early enough for several scrapes to see them.
        if step == 10 {
            s.signal("HUP");
            s.wait_for_log("campaigns reloaded (SIGHUP)", Duration::from_secs(10));
        }
        if step == 20 {
            std::fs::write(
                dir.join("campaigns.toml"),
                "[[campaign]]\nid = \"broken\"\n",
            )
            .unwrap();
            s.wait_for_log("campaigns reload (file changed)", Duration::from_secs(10));
            std::fs::write(dir.join("campaigns.toml"), campaigns_with_a_budget()).unwrap();
        }
        step += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    // The last scrapes.
    std::thread::sleep(Duration::from_secs(2));

    let mut exprs = targets(&dashboard("service.json"), "expr");
    assert!(exprs.len() >= 20, "few targets found: {exprs:?}");
    let business = targets(&dashboard("business.json"), "expr");
    assert!(
        business.len() >= 3,
        "few Prometheus targets in business.json: {business:?}"
    );
    exprs.extend(business);
    let mut failures = Vec::new();
    for (title, expr) in &exprs {
        let mut q = expr.clone();
        for (var, value) in GRAFANA_VARIABLES {
            q = q.replace(var, value);
        }
        assert!(!q.contains('$'), "{title}: unknown Grafana variable in {q}");
        let r = request(
            prom,
            "GET",
            &format!("/api/v1/query?query={}", encode(&q)),
            &[],
        );
        let text = body(&r);
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{title}: {e}: {} {text}", r.status));
        if v["status"] != "success" {
            failures.push(format!("{title}: {q}\n  -> {text}"));
            continue;
        }
        let empty = v["data"]["result"].as_array().is_none_or(|a| a.is_empty());
        if empty {
            failures.push(format!("{title}: {q}\n  -> empty result: {text}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} Prometheus dashboard queries failed:\n{}\n--- /metrics ---\n{}",
        failures.len(),
        exprs.len(),
        failures.join("\n"),
        request(s.metrics.unwrap(), "GET", "/metrics", &[]).body
    );
}

/// The plugin macros of business.json and what the tests put in their place
/// (deploy/grafana/README.md, "SQL and ClickHouse 18.16").
fn substitute_macros(sql: &str, now: u64) -> String {
    sql.replace(
        "$__timeFilter(ts)",
        &format!(
            "ts >= toDateTime({}) AND ts <= toDateTime({})",
            now - 86_400,
            now + 3_600
        ),
    )
    .replace(
        "$__timeInterval(ts)",
        "toDateTime(intDiv(toUInt32(ts), 60) * 60)",
    )
}

/// Runs `sql` on ClickHouse's HTTP interface; the HTTP status and the body.
fn clickhouse(url: &str, sql: &str) -> (u16, String) {
    let rest = url
        .strip_prefix("http://")
        .expect("an http:// ClickHouse URL");
    let host = rest.split('/').next().unwrap();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .unwrap()
        .next()
        .unwrap();
    let r = request(
        addr,
        "POST",
        &format!("/?query={}", encode(sql)),
        &[("Content-Length", b"0")],
    );
    (r.status, body(&r))
}

/// Drops the test database when the test ends, passed or not.
struct DropDatabase<'a>(&'a str, &'a str);

impl Drop for DropDatabase<'_> {
    fn drop(&mut self) {
        let _ = clickhouse(self.0, &format!("DROP DATABASE IF EXISTS {}", self.1));
    }
}

#[test]
fn every_business_dashboard_query_returns_rows_from_real_clickhouse() {
    let Some(url) = service_url("ROTATOR_TEST_CLICKHOUSE_URL") else {
        return;
    };
    let _exclusive = service_lock();
    let db = format!("rotator_dash_{}", fastrand::u32(..));
    let _drop = DropDatabase(&url, &db);
    let dir = temp_dir("dash-clickhouse");
    let s = Server::start_in(
        &dir,
        &config(
            "",
            &format!(
                "[stats]\nsink = \"clickhouse\"\nflush_interval = \"200ms\"\n\
                 [stats.clickhouse]\nurl = {url:?}\ndatabase = {db:?}\n"
            ),
        ),
        &seed_campaigns(),
    );
    for _ in 0..5 {
        send_mix(&s);
    }
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let dash = dashboard("business.json");
    let queries = targets(&dash, "rawSql");
    assert!(queries.len() >= 9, "few targets found: {queries:?}");
    let mut failures = Vec::new();
    for (title, sql) in &queries {
        let mut q = substitute_macros(sql, now).replace("rotator.", &format!("{db}."));
        assert!(!q.contains('$'), "{title}: unknown macro in {q}");
        if !q.to_ascii_uppercase().contains("FORMAT ") {
            q.push_str("\nFORMAT JSON");
        }
        let (status, body) = clickhouse(&url, &q);
        if status != 200 {
            failures.push(format!("{title}: HTTP {status}\n{q}\n  -> {body}"));
            continue;
        }
        let rows = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["rows"].as_u64());
        if rows.is_none_or(|n| n == 0) {
            failures.push(format!("{title}: no rows\n{q}\n  -> {body}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} business dashboard queries failed:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n\n")
    );
}
