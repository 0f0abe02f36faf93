//! The network edge: rotator behind a real nginx (and HAProxy), connection and descriptor limits,
//! clients that never read, methods without a route, HTTP/2 prefaces, `explain --header`.
//!
//! Proxies run as the test's own background processes on 127.0.0.1 with a temporary prefix and
//! are stopped by PID. Visitors connect from 127.0.0.2 and a trusted "CDN" from 127.0.0.3, so the
//! proxy (127.0.0.1) is the only other trusted peer.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Server, config, repo, request, request_from, run, seed_campaigns, temp_dir};
use crate::server::{CHROME, GOOGLEBOT, RU};
use crate::support::{free_port, tool};

const VISITOR: &str = "127.0.0.2";
const CDN: &str = "127.0.0.3";
const YANDEX: Option<&str> = Some("https://yandex.ru");
const DEFAULT: Option<&str> = Some("https://default.example");

/// The first fenced block of `lang` in README.md: the snippets the README shows are the ones
/// tested.
pub(crate) fn readme_snippet(lang: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("README.md has no ```{lang} block"));
    let body = &readme[start + lang.len() + 4..];
    body[..body.find("```").unwrap()].to_string()
}

/// A reverse proxy process, killed by PID when dropped.
struct Proxy {
    child: Child,
    dir: PathBuf,
    log: &'static str,
}

impl Proxy {
    /// Starts `command` and waits until every port in `ports` accepts connections.
    fn start(mut command: Command, dir: &Path, log: &'static str, ports: &[u16]) -> Proxy {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut proxy = Proxy {
            child,
            dir: dir.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in ports {
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                if let Ok(Some(status)) = proxy.child.try_wait() {
                    panic!("proxy exited with {status}:\n{}", proxy.logs());
                }
                assert!(
                    Instant::now() < deadline,
                    "proxy not ready:\n{}",
                    proxy.logs()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        proxy
    }

    fn logs(&self) -> String {
        [self.log, "stderr.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ad request through the proxy at `port`, from `source`, with one extra header.
fn via(source: &str, port: u16, header: (&str, &str)) -> Option<String> {
    let r = request_from(
        source.parse().unwrap(),
        SocketAddr::from(([127, 0, 0, 1], port)),
        "GET",
        "/ad",
        &[
            (header.0, header.1.as_bytes()),
            ("User-Agent", CHROME.as_bytes()),
        ],
    );
    assert_eq!(r.status, 303, "{r:?}");
    r.header("location").map(str::to_string)
}

fn start_rotator(tag: &str, server_extra: &str) -> Server {
    let extra = format!("trusted_proxies = [\"127.0.0.1/32\", \"{CDN}/32\"]\n{server_extra}");
    Server::start_in(
        &temp_dir(tag),
        &config(&extra, "[stats]\nsink = \"none\"\n"),
        &seed_campaigns(),
    )
}

/// Issue 9, item 1: behind nginx with the standard `X-Forwarded-For` line (README's snippet),
/// a visitor's own `Forwarded` or `X-Forwarded-For` does not choose the campaign; behind a proxy
/// that sets only `X-Real-IP`, the visitor's `X-Forwarded-For` does not either.
#[test]
fn issue9_visitors_cannot_choose_their_ip_behind_nginx() {
    let Some(nginx) = tool("nginx") else { return };
    let xff = start_rotator("nginx-xff", "");
    let real_ip = start_rotator("nginx-realip", "client_ip_header = \"x-real-ip\"");
    let dir = temp_dir("nginx");
    let (port, real_ip_port) = (free_port(), free_port());
    let d = dir.display();
    let tested = readme_snippet("nginx")
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("127.0.0.1:8080", &xff.addr.to_string());
    assert!(tested.contains("$proxy_add_x_forwarded_for"), "{tested}");
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         {tested}\n\
         server {{\n  listen 127.0.0.1:{real_ip_port};\n  location / {{\n\
           proxy_pass http://{};\n   proxy_set_header X-Real-IP $remote_addr;\n  }}\n }}\n}}\n",
        real_ip.addr
    );
    std::fs::write(dir.join("nginx.conf"), &conf).unwrap();
    let mut command = Command::new(nginx);
    command
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"));
    let proxy = Proxy::start(command, &dir, "error.log", &[port, real_ip_port]);

    // The old code read Forwarded first, which nginx passes through untouched.
    assert_eq!(
        via(VISITOR, port, ("Forwarded", "for=77.88.8.8")).as_deref(),
        DEFAULT,
        "{}",
        proxy.logs()
    );
    assert_eq!(via(VISITOR, port, ("X-Real-IP", RU)).as_deref(), DEFAULT);
    // nginx appends the visitor's address: the right-most untrusted entry is the visitor's.
    assert_eq!(
        via(VISITOR, port, ("X-Forwarded-For", RU)).as_deref(),
        DEFAULT
    );
    // A trusted CDN in front of nginx vouches for the visitor it saw.
    assert_eq!(via(CDN, port, ("X-Forwarded-For", RU)).as_deref(), YANDEX);
    // A proxy that sets only X-Real-IP: the old code believed the visitor's X-Forwarded-For.
    assert_eq!(
        via(VISITOR, real_ip_port, ("X-Forwarded-For", RU)).as_deref(),
        DEFAULT
    );
    assert_eq!(
        via(VISITOR, real_ip_port, ("Forwarded", "for=77.88.8.8")).as_deref(),
        DEFAULT
    );
    assert_eq!(
        via(CDN, port, ("Forwarded", "for=77.88.8.8")).as_deref(),
        DEFAULT
    );
}

/// README's HAProxy snippet (`option forwardfor` appends its own `X-Forwarded-For` line).
#[test]
fn issue9_visitors_cannot_choose_their_ip_behind_haproxy() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let rotator = start_rotator("haproxy", "");
    let dir = temp_dir("haproxy");
    let port = free_port();
    let tested = readme_snippet("haproxy")
        .replace("bind :80", &format!("bind 127.0.0.1:{port}"))
        .replace("127.0.0.1:8080", &rotator.addr.to_string());
    assert!(tested.contains("option forwardfor"), "{tested}");
    let conf = format!(
        "global\n    maxconn 64\ndefaults\n    mode http\n    timeout connect 5s\n\
         timeout client 30s\n    timeout server 30s\n{tested}"
    );
    std::fs::write(dir.join("haproxy.cfg"), &conf).unwrap();
    let mut command = Command::new(haproxy);
    command.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
    let proxy = Proxy::start(command, &dir, "stderr.log", &[port]);
    assert_eq!(
        via(VISITOR, port, ("Forwarded", "for=77.88.8.8")).as_deref(),
        DEFAULT,
        "{}",
        proxy.logs()
    );
    assert_eq!(
        via(VISITOR, port, ("X-Forwarded-For", RU)).as_deref(),
        DEFAULT
    );
    assert_eq!(via(CDN, port, ("X-Forwarded-For", RU)).as_deref(), YANDEX);
}

/// The value of a metric line starting with `series` (`name{labels}`), from the metrics listener.
fn metric(s: &Server, series: &str) -> Option<f64> {
    let text = request(s.metrics.unwrap(), "GET", "/metrics", &[]).body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn wait_for_metric(s: &Server, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = metric(s, series);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {got:?}, not {want}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The soft and hard "Max open files" of process `pid`.
fn fd_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// Issue 9, item 4: with a soft limit of 128 descriptors the server still takes 150 idle
/// connections (soft limit raised to the hard one) and keeps answering; beyond
/// `max_connections` new connections are closed at once and counted.
#[test]
fn issue9_descriptor_limit_is_raised_and_max_connections_holds() {
    let Some(prlimit) = tool("prlimit") else {
        return;
    };
    let (_, hard) = fd_limits(std::process::id());
    if hard < 1024 {
        assert!(
            !std::env::var("ROTATOR_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1"),
            "the hard descriptor limit ({hard}) is too low for this test"
        );
        eprintln!("SKIPPED: the hard descriptor limit ({hard}) is too low for this test");
        return;
    }
    let dir = temp_dir("fds");
    std::fs::write(
        dir.join("rotator.toml"),
        config("max_connections = 180", "[stats]\nsink = \"none\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("campaigns.toml"), seed_campaigns()).unwrap();
    let s = Server::spawn_via(&dir, &[prlimit.to_str().unwrap(), "--nofile=128:", "--"]);
    assert_eq!(fd_limits(s.pid()), (hard, hard), "{}", s.log());
    assert!(
        s.log().contains("file descriptor limit raised from 128 to"),
        "{}",
        s.log()
    );
    let open = "rotator_connections_open{listener=\"ads\"}";
    // hyper closes idle connections after its 10 s header timeout: everything below that counts
    // them must happen well within it.
    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    wait_for_metric(&s, open, 150.0);
    let started = Instant::now();
    assert_eq!(s.ad(RU, CHROME).header("location"), YANDEX);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Its slot is freed just after the answer's end reaches us.
    wait_for_metric(&s, open, 150.0);

    // 30 more fill the 180; the 10 after them are closed at once.
    let more: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    wait_for_metric(
        &s,
        "rotator_connections_refused_total{listener=\"ads\"}",
        10.0,
    );
    wait_for_metric(&s, open, 180.0);
    let closed = more
        .iter()
        .filter(|c| {
            c.set_nonblocking(true).unwrap();
            // End of stream or a reset: closed (the refusal was counted before this, so its close
            // has arrived on loopback); nothing to read: open.
            match (&mut &**c).read(&mut [0; 1]) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != ErrorKind::WouldBlock,
            }
        })
        .count();
    assert_eq!(closed, 10);
    let counted_in = opened.elapsed();
    eprintln!("connections opened and counted in {counted_in:?}");
    assert!(
        counted_in < Duration::from_secs(8),
        "too slow to be sure: {counted_in:?}"
    );
    drop(idle);
    drop(more);
    wait_for_metric(&s, open, 0.0);
    assert_eq!(s.ad(RU, CHROME).header("location"), YANDEX);
}

/// Issue 9, item 4: a client that pipelines 2 MB of requests and never reads is closed after
/// `send_timeout` (it stayed open for good before), and the answers queued for it stay bounded.
#[test]
fn issue9_a_client_that_never_reads_is_closed() {
    let dir = temp_dir("noread");
    let s = Server::start_in(
        &dir,
        &config("send_timeout = \"1s\"", "[stats]\nsink = \"none\"\n"),
        &seed_campaigns(),
    );
    let request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let total = 2 << 20;
    let batch = request.repeat(1024);
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let (mut sent, mut closed_after) = (0usize, None);
    while started.elapsed() < Duration::from_secs(30) {
        let chunk = if sent < total {
            &batch[..]
        } else {
            &request[..]
        };
        match stream.write(chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
        if sent >= total {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let closed_after = closed_after.expect("the connection is still open after 30 s");
    assert!(closed_after < Duration::from_secs(10), "{closed_after:?}");
    wait_for_metric(&s, "rotator_send_timeouts_total{listener=\"ads\"}", 1.0);
    let answered = metric(
        &s,
        "rotator_http_request_duration_seconds_count{route=\"ad\",status=\"3xx\"}",
    )
    .unwrap();
    let requests = (sent / request.len()) as f64;
    eprintln!("closed after {closed_after:?}; answered {answered} of {requests} requests sent");
    assert!(
        answered < requests,
        "all {requests} pipelined requests were answered: nothing bounded the queue"
    );
    assert_eq!(s.ad(RU, CHROME).header("location"), YANDEX);
}

/// Issue 11: methods no route takes get 405 whatever their target; an HTTP/2 preface gets 505.
#[test]
fn issue9_methods_without_a_route_and_http2_prefaces_get_an_answer() {
    let s = Server::start_in(
        &temp_dir("methods"),
        &config("", "[stats]\nsink = \"none\"\n"),
        &seed_campaigns(),
    );
    for (method, target) in [
        ("CONNECT", "example.com:443"),
        ("OPTIONS", "*"),
        ("TRACE", "/x"),
        ("POST", "/nope"),
    ] {
        for addr in [s.addr, s.metrics.unwrap()] {
            let r = request(addr, method, target, &[]);
            assert_eq!(
                (r.status, r.header("allow")),
                (405, Some("GET, HEAD")),
                "{method} {target}"
            );
        }
    }
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let answer = crate::harness::send_raw(s.addr, preface);
    let r = crate::harness::parse(&answer);
    assert_eq!(r.status, 505, "{:?}", String::from_utf8_lossy(&answer));
    assert!(r.body.contains("HTTP/1.1"), "{}", r.body);
    assert_eq!(s.ad(RU, CHROME).header("location"), YANDEX);
}

/// Issue 12: `explain --header` resolves the client address as the server would, from the
/// peer `--ip`, and says which address it used.
#[test]
fn issue9_explain_takes_request_headers() {
    let dir = temp_dir("explain-headers");
    std::fs::write(dir.join("campaigns.toml"), seed_campaigns()).unwrap();
    std::fs::write(dir.join("rotator.toml"), config("", "")).unwrap();
    let cfg = dir.join("rotator.toml");
    let cfg = cfg.to_str().unwrap();
    let explain = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["explain", "--config", cfg];
        all.extend_from_slice(args);
        let (status, out, err) = run(&all, None);
        assert!(status.success(), "{args:?}: {err}");
        serde_json::from_str(&out).unwrap()
    };
    // Repeatable, and a User-Agent header counts like --ua.
    let v = explain(&[
        "--ip",
        "127.0.0.1",
        "--header",
        "X-Forwarded-For: 10.1.1.1, 77.88.8.8",
        "--header",
        &format!("User-Agent: {CHROME}"),
    ]);
    assert_eq!(
        (&v["ip"], &v["peer"], &v["ip_source"], &v["winner"]),
        (
            &serde_json::json!(RU),
            &serde_json::json!("127.0.0.1"),
            &serde_json::json!("x-forwarded-for"),
            &serde_json::json!(1)
        )
    );
    // Not the configured header: the peer, and why.
    let v = explain(&[
        "--ip",
        "::1",
        "--ua",
        GOOGLEBOT,
        "--header",
        "Forwarded: for=77.88.8.8",
    ]);
    assert_eq!(
        (&v["ip"], &v["device"]),
        (&serde_json::json!("::1"), &serde_json::json!("bot"))
    );
    assert!(
        v["ip_source"]
            .as_str()
            .unwrap()
            .contains("no x-forwarded-for header"),
        "{v}"
    );
    // An untrusted peer's headers are not read.
    let v = explain(&["--ip", "8.8.8.8", "--header", "x-forwarded-for: 77.88.8.8"]);
    assert_eq!(v["ip"], "8.8.8.8");
    assert!(
        v["ip_source"]
            .as_str()
            .unwrap()
            .contains("not in trusted_proxies"),
        "{v}"
    );
    for bad in ["no colon", "bad name: x", "X-Ok: \u{7f}"] {
        let (status, _, err) = run(
            &[
                "explain",
                "--config",
                cfg,
                "--ip",
                "127.0.0.1",
                "--header",
                bad,
            ],
            None,
        );
        assert_eq!(status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains("--header"), "{err}");
    }
}
