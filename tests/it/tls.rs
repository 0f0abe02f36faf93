//! Native HTTPS (issue 13): every surface over HTTP/2 and HTTP/1.1 with curl, certificates
//! replaced while connections stay open, a real browser on an HTTPS publisher page, and the
//! README's nginx TLS terminator.
//!
//! Certificates are made by Debian's `openssl` (self-signed, per test, in its folder); curl and
//! `openssl s_client` are the clients, so nothing here shares code with the server's TLS stack.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fantoccini::Locator;
use serde_json::Value;

use crate::harness::{Server, config, request, run, temp_dir};
use crate::server::CHROME;
use crate::support::tool;

/// One placement, one campaign with an html creative that every person wins.
const CAMPAIGNS: &str = r##"[[placement]]
id = "top-banner"
sizes = ["728x90"]
kinds = ["html"]

[[campaign]]
id = 1
name = "green"
url = "https://landing.example/"
bid = 1.0
[[campaign.creative]]
id = 101
kind = "html"
size = "728x90"
html = "<a href='{{click_url}}' style='display:block;width:728px;height:90px;background:#0a0'>Green</a>"

[[campaign]]
id = 2
name = "Russia only"
url = "https://yandex.ru/"
bid = 2.0
[campaign.targeting]
countries = ["RU"]
"##;

/// The tools these tests need, or `None` (skipped, or a failure under
/// `ROTATOR_TEST_REQUIRE_SERVICES=1`).
fn tools() -> Option<(PathBuf, PathBuf)> {
    Some((tool("openssl")?, tool("curl")?))
}

/// A self-signed P-256 certificate for `localhost` and 127.0.0.1 with common name `name`, valid
/// for `days`, written over `cert` and `key` (in place: the files keep their inodes).
fn make_pair(openssl: &Path, dir: &Path, name: &str, days: u32, cert: &Path, key: &Path) {
    let (new_cert, new_key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            &days.to_string(),
            "-subj",
            &format!("/CN={name}"),
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&new_key)
        .arg("-out")
        .arg(&new_cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(key, std::fs::read(&new_key).unwrap()).unwrap();
    std::fs::write(cert, std::fs::read(&new_cert).unwrap()).unwrap();
}

/// The common name of the certificate a new handshake with `addr` gets.
fn served_name(openssl: &Path, addr: SocketAddr) -> String {
    let out = Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("subject=CN = "))
        .unwrap_or_else(|| panic!("no subject in s_client's output:\n{text}"))
        .trim()
        .to_string()
}

/// `curl -sk ARGS`, returns stdout; `-w` formats print after the body.
fn curl(curl: &Path, args: &[&str]) -> String {
    let out = Command::new(curl)
        .args(["-sk", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A series' value in a `/metrics` text (0 when absent).
fn metric(server: &Server, series: &str) -> i64 {
    let text = request(server.metrics.unwrap(), "GET", "/metrics", &[]).body;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The expiry gauge is `days` from now (the certificate was made a moment ago).
fn assert_expiry_in(server: &Server, days: i64) {
    let expiry = metric(
        server,
        "rotator_tls_certificate_expiry_timestamp_seconds{listener=\"ads\"}",
    );
    let expected = now() + days * 86_400;
    assert!(
        (expiry - expected).abs() < 600,
        "expiry {expiry}, expected about {expected}"
    );
}

fn start(dir: &Path, openssl: &Path) -> Server {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    make_pair(openssl, dir, "first", 30, &cert, &key);
    Server::start_in(
        dir,
        &config(
            "tls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\ntls_watch_interval = \"100ms\"",
            "[stats]\nsink = \"none\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\n",
        ),
        CAMPAIGNS,
    )
}

/// An HTTP/2 client in Python (standard library only): the SETTINGS rotator sends after the
/// preface, and how long a connection that completed the handshake but sends nothing stays open.
const H2_PROBE: &str = r#"import json, socket, ssl, struct, sys, time
port = int(sys.argv[1])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
def connect():
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
silent = connect()
talker = connect()
talker.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + b"\x04\x00" + b"\x00\x00\x00\x00")
buf = b""
while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
    buf += talker.recv(4096)
length, kind = int.from_bytes(buf[:3], "big"), buf[3]
settings = {}
for i in range(9, 9 + length, 6):
    ident, value = struct.unpack(">HI", buf[i:i + 6])
    settings[ident] = value
start = time.time()
silent.settimeout(60)
try:
    while silent.recv(4096):
        pass
except OSError:
    pass
print(json.dumps({"alpn": silent.selected_alpn_protocol(), "frame": kind, "settings": settings, "silent_closed_after": time.time() - start}))
"#;

/// Every surface answers the same over HTTP/2 and HTTP/1.1 with TLS; tracking URLs are
/// `https://`; TLS 1.1 is refused; `/metrics` stays plain HTTP on its own listener; HTTP/2 keeps
/// HTTP/1.1's limits (header size, bounded streams, an idle connection is closed).
#[test]
fn https_serves_every_surface_over_h2_and_h1() {
    let Some((openssl, curl_bin)) = tools() else {
        return;
    };
    let Some(python) = tool("python3") else {
        return;
    };
    let dir = temp_dir("tls-surfaces");
    let server = start(&dir, &openssl);
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let curl = |args: &[&str]| curl(&curl_bin, args);
    // Runs beside the rest: its silent connection must be closed by the idle timeout.
    let port = server.addr.port().to_string();
    let probe = std::thread::spawn(move || {
        Command::new(python)
            .args(["-c", H2_PROBE, &port])
            .output()
            .unwrap()
    });
    let admin = format!("https://127.0.0.1:{}", server.admin.unwrap().port());
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        // The management listener over TLS too: the API document and the console's sign-in.
        for path in ["/api/v1/openapi.json", "/sign-in"] {
            let answer = curl(&[
                flag,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                &format!("{admin}{path}"),
            ]);
            assert_eq!(answer, format!("{version} 200"), "{flag} {path}");
        }
        let ad = curl(&[
            flag,
            "-A",
            CHROME,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code} %{redirect_url}",
            &format!("{base}/ad"),
        ]);
        assert_eq!(
            ad,
            format!("{version} 303 https://landing.example/"),
            "{flag}"
        );

        let tag = curl(&[
            flag,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code} %{content_type}",
            &format!("{base}/v1/tag.js"),
        ]);
        assert_eq!(
            tag,
            format!("{version} 200 text/javascript; charset=utf-8"),
            "{flag}"
        );

        let body = r#"{"placements":[{"div":"top","placement":"top-banner"}]}"#;
        let answer = curl(&[
            flag,
            "-A",
            CHROME,
            "-H",
            "content-type: application/json",
            "-d",
            body,
            "-w",
            "\n%{http_version} %{http_code}",
            &format!("{base}/v1/decisions"),
        ]);
        let (json, status) = answer.rsplit_once('\n').unwrap();
        assert_eq!(status, format!("{version} 200"), "{flag}: {answer}");
        let decisions: Value = serde_json::from_str(json).unwrap();
        let top = &decisions["decisions"]["top"];
        assert_eq!(top["creative_id"], 101, "{decisions}");
        // Native TLS: the tracking URLs are https, on the authority the client used (HTTP/2's
        // `:authority` stands for Host).
        let impression = top["impression_url"].as_str().unwrap();
        assert!(
            impression.starts_with(&format!("{base}/v1/i/")),
            "{impression}"
        );
        let pixel = curl(&[
            flag,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            impression,
        ]);
        assert_eq!(pixel, format!("{version} 204"), "{flag}");
    }
    assert_eq!(
        metric(
            &server,
            "rotator_tracking_events_total{kind=\"impression\",outcome=\"counted\"}"
        ),
        2
    );
    // TLS 1.2 and 1.3 only. The client is allowed TLS 1.1 (security level 0), so a refusal is
    // the server's alert, not the client's own policy.
    let handshake = |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(["s_client", "-connect", &server.addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let old = handshake(&["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    assert!(
        old.contains("alert handshake failure") && !old.contains("New, TLSv1.1"),
        "TLS 1.1 must be refused by the server:\n{old}"
    );
    assert!(handshake(&["-tls1_2"]).contains("New, TLSv1.2, Cipher is ECDHE-ECDSA"));
    assert!(handshake(&["-tls1_3"]).contains("New, TLSv1.3"));
    // Plain HTTP to the TLS port gets no answer; metrics stay plain on their own listener.
    let plain = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/ad", server.addr),
    ]);
    assert_eq!(plain, "000");
    let metrics = curl(&[
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/metrics", server.metrics.unwrap()),
    ]);
    assert_eq!(metrics, "200");
    assert_expiry_in(&server, 30);
    // HTTP/1.1's header limit holds over HTTP/2.
    let big = format!("X-Big: {}", "a".repeat(20_000));
    let out = Command::new(&curl_bin)
        .args([
            "-vsk",
            "--http2",
            "-o",
            "/dev/null",
            "-H",
            &big,
            &format!("{base}/ad"),
        ])
        .output()
        .unwrap();
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(verbose.contains("< HTTP/2 431"), "{verbose}");

    // The limits rotator announces, and a connection that sends nothing is closed after 10 to
    // 20 s (H2_IDLE_TIMEOUT).
    let out = probe.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probed["alpn"], "h2");
    assert_eq!(probed["frame"], 4, "SETTINGS first: {probed}");
    assert_eq!(
        probed["settings"]["3"], 100,
        "max concurrent streams: {probed}"
    );
    assert_eq!(
        probed["settings"]["6"], 16384,
        "max header list size: {probed}"
    );
    let closed = probed["silent_closed_after"].as_f64().unwrap();
    assert!(
        (9.0..22.0).contains(&closed),
        "silent connection closed after {closed} s"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HTTP/1.1 connection kept open through `openssl s_client`: requests written one at a time,
/// status lines read back.
struct OpenConnection {
    child: Child,
    stdin: ChildStdin,
    statuses: mpsc::Receiver<String>,
}

impl OpenConnection {
    fn open(openssl: &Path, addr: SocketAddr) -> OpenConnection {
        let mut child = Command::new(openssl)
            .args(["s_client", "-quiet", "-ign_eof", "-alpn", "http/1.1"])
            .args(["-connect", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, statuses) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("HTTP/") && tx.send(line).is_err() {
                    return;
                }
            }
        });
        OpenConnection {
            child,
            stdin,
            statuses,
        }
    }

    /// Sends `GET /ad` on the connection; the status line of its answer.
    fn ad(&mut self) -> String {
        write!(
            self.stdin,
            "GET /ad HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {CHROME}\r\n\r\n"
        )
        .unwrap();
        self.stdin.flush().unwrap();
        self.statuses
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("no answer on the open connection"))
            .trim()
            .to_string()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Certificate and key replaced in place: the new pair is served within the watch interval (and
/// its settling), an open connection keeps working, a broken or mismatched pair is refused with a
/// log line and the previous one keeps serving; SIGHUP reloads at once.
#[test]
fn certificates_reload_without_dropping_connections() {
    let Some((openssl, _)) = tools() else {
        return;
    };
    let dir = temp_dir("tls-reload");
    let server = start(&dir, &openssl);
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    assert_eq!(served_name(&openssl, server.addr), "first");
    let mut open = OpenConnection::open(&openssl, server.addr);
    assert_eq!(open.ad(), "HTTP/1.1 303 See Other");

    let ok = "rotator_tls_reloads_total{listener=\"ads\",result=\"ok\"}";
    let error = "rotator_tls_reloads_total{listener=\"ads\",result=\"error\"}";
    let changed = Instant::now();
    make_pair(&openssl, &dir, "second", 60, &cert, &key);
    // Both listeners serve the same files and reload them independently: wait for the ads one.
    server.wait_for_log(
        "TLS certificate of the ads listener reloaded (file changed)",
        Duration::from_secs(10),
    );
    assert!(
        changed.elapsed() < Duration::from_secs(3),
        "{:?}",
        changed.elapsed()
    );
    assert_eq!(served_name(&openssl, server.addr), "second");
    assert_eq!(
        open.ad(),
        "HTTP/1.1 303 See Other",
        "the open connection survives"
    );
    assert_eq!((metric(&server, ok), metric(&server, error)), (1, 0));
    assert_expiry_in(&server, 60);

    let config = dir.join("rotator.toml");
    let (status, stdout, stderr) = run(&["check", "--config", config.to_str().unwrap()], None);
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("tls:       ") && stdout.contains("(expires 20"),
        "{stdout}"
    );

    // Not a certificate: refused, the second one keeps serving; `check` says why.
    let good_cert = std::fs::read(&cert).unwrap();
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    server.wait_for_log(
        "reload of the ads listener (file changed) refused, the previous certificate keeps serving",
        Duration::from_secs(10),
    );
    assert_eq!(served_name(&openssl, server.addr), "second");
    assert_eq!(metric(&server, error), 1);
    let (status, _, stderr) = run(&["check", "--config", config.to_str().unwrap()], None);
    assert!(
        !status.success() && stderr.contains("tls.crt: not an X.509 certificate"),
        "{stderr}"
    );

    // A valid certificate with another key: refused too.
    std::fs::write(&cert, &good_cert).unwrap();
    make_pair(
        &openssl,
        &dir,
        "other",
        1,
        &dir.join("other-copy.crt"),
        &dir.join("tls.key"),
    );
    server.wait_for_log(
        &format!(
            "reload of the ads listener (file changed) refused, the previous certificate keeps \
             serving: the key in {} is not the key of the certificate",
            key.display()
        ),
        Duration::from_secs(10),
    );
    assert_eq!(served_name(&openssl, server.addr), "second");
    assert_eq!(metric(&server, error), 2);
    assert_expiry_in(&server, 60);

    // SIGHUP: a complete new pair, loaded at once.
    make_pair(&openssl, &dir, "third", 90, &cert, &key);
    server.signal("HUP");
    server.wait_for_log(
        "TLS certificate of the ads listener reloaded (SIGHUP)",
        Duration::from_secs(5),
    );
    server.wait_for_log(
        "TLS certificate of the admin listener reloaded (SIGHUP)",
        Duration::from_secs(5),
    );
    assert_eq!(served_name(&openssl, server.addr), "third");
    assert_eq!(
        open.ad(),
        "HTTP/1.1 303 See Other",
        "still the same connection"
    );
    assert_expiry_in(&server, 90);
    drop(open);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The publisher's HTTPS site: every request gets `page` (a thread per connection; rustls with
/// the test's certificate).
fn https_publisher(cert: &Path, key: &Path, page: String) -> u16 {
    use tokio_rustls::rustls::crypto::ring;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ServerConfig, ServerConnection, StreamOwned};
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = Arc::new(
        ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            let (config, page) = (config.clone(), page.clone());
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
                let mut head = Vec::new();
                let mut byte = [0; 1];
                while !head.ends_with(b"\r\n\r\n") && matches!(tls.read(&mut byte), Ok(1)) {
                    head.push(byte[0]);
                }
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

/// A real browser on an HTTPS publisher page with both tags: the script tag (its decision and
/// impression) and the iframe tag, whose document comes from rotator over HTTP/2 (Resource Timing
/// hides a cross-origin script's protocol; a frame's own navigation entry shows it). Both
/// impressions are counted: an `http://` tracking URL would be blocked as mixed content.
#[tokio::test(flavor = "current_thread")]
async fn browser_on_an_https_page_counts_impressions_over_h2() {
    let (Some((openssl, _)), Some(_), Some(chromedriver)) =
        (tools(), tool("chromium"), tool("chromedriver"))
    else {
        return;
    };
    let dir = temp_dir("tls-browser");
    let server = start(&dir, &openssl);
    let rotator = format!("https://127.0.0.1:{}", server.addr.port());
    let page = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>https publisher</title>\
         <script async src=\"{rotator}/v1/tag.js\"></script></head><body>\
         <div id=\"top\" data-rotator-placement=\"top-banner\"></div>\
         <iframe id=\"tag\" src=\"{rotator}/v1/frame/top-banner\" width=\"728\" height=\"90\">\
         </iframe></body></html>"
    );
    let port = https_publisher(&dir.join("tls.crt"), &dir.join("tls.key"), page);
    let driver = crate::browser::Driver::start(&chromedriver);
    let c = crate::browser::browser_with(&driver, &["--ignore-certificate-errors"]).await;
    // A task, so that a failed step still closes the browser.
    let page = c.clone();
    let run = tokio::spawn(async move {
        let c = page;
        c.goto(&format!("https://localhost:{port}/")).await.unwrap();
        crate::browser::wait_js(
            &c,
            "document.querySelector('#top > iframe')",
            "the ad frame",
        )
        .await;
        c.find(Locator::Id("tag"))
            .await
            .unwrap()
            .enter_frame()
            .await
            .unwrap();
        let protocol = c
            .execute(
                "return [location.origin, performance.getEntriesByType('navigation')[0].nextHopProtocol];",
                vec![],
            )
            .await
            .unwrap();
        c.enter_parent_frame().await.unwrap();
        protocol
    });
    let outcome = run.await;
    let _ = c.close().await;
    drop(driver);
    let protocol = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert_eq!(protocol, serde_json::json!([rotator, "h2"]));
    let counted = "rotator_tracking_events_total{kind=\"impression\",outcome=\"counted\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, counted) < 2 {
        assert!(
            Instant::now() < deadline,
            "impressions not counted:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&server, counted), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's nginx TLS terminator in front of plain rotator: HTTPS with HTTP/2 at nginx; a
/// visitor's own `X-Forwarded-For` does not choose its address (nginx appends the peer it saw),
/// a trusted CDN's does; tracking URLs are `https://` (`X-Forwarded-Proto`).
#[test]
fn readme_nginx_terminates_tls() {
    let (Some((openssl, curl_bin)), Some(nginx)) = (tools(), tool("nginx")) else {
        return;
    };
    let dir = temp_dir("tls-nginx");
    // nginx connects from 127.0.0.1; 127.0.0.3 plays a CDN in front of it; visitors: 127.0.0.2.
    let trusted = "trusted_proxies = [\"127.0.0.1/32\", \"127.0.0.3/32\"]";
    let server = Server::start_in(
        &dir,
        &config(trusted, "[stats]\nsink = \"none\"\n"),
        CAMPAIGNS,
    );
    make_pair(
        &openssl,
        &dir,
        "edge",
        30,
        &dir.join("edge.crt"),
        &dir.join("edge.key"),
    );
    let port = crate::support::free_port();
    let d = dir.display();
    let snippet = crate::edge::readme_snippet("nginx https");
    let tested = snippet
        .replace(
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{port} ssl http2;"),
        )
        .replace("/etc/ssl/ads.example.crt", &format!("{d}/edge.crt"))
        .replace("/etc/ssl/ads.example.key", &format!("{d}/edge.key"))
        .replace("127.0.0.1:8080", &server.addr.to_string());
    for placeholder in ["listen 443 ssl http2;", "/etc/ssl/", "127.0.0.1:8080"] {
        assert!(
            snippet.contains(placeholder),
            "{placeholder} not in {snippet}"
        );
    }
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         {tested}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), &conf).unwrap();
    let mut nginx = Command::new(nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let base = format!("https://127.0.0.1:{port}");
    let ad_from = |source: &str| {
        curl(
            &curl_bin,
            &[
                "--http2",
                "--interface",
                source,
                "-A",
                CHROME,
                "-H",
                "X-Forwarded-For: 77.88.8.8",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code} %{redirect_url}",
                &format!("{base}/ad"),
            ],
        )
    };
    let visitor = ad_from("127.0.0.2");
    let cdn = ad_from("127.0.0.3");
    let body = r#"{"placements":[{"div":"top","placement":"top-banner"}]}"#;
    let answer = curl(
        &curl_bin,
        &[
            "--http2",
            "--interface",
            "127.0.0.2",
            "-A",
            CHROME,
            "-H",
            "content-type: application/json",
            "-d",
            body,
            &format!("{base}/v1/decisions"),
        ],
    );
    let _ = nginx.kill();
    let _ = nginx.wait();
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    assert_eq!(visitor, "2 303 https://landing.example/", "{log}");
    assert_eq!(cdn, "2 303 https://yandex.ru/", "{log}");
    let decisions: Value =
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}\n{log}"));
    let impression = decisions["decisions"]["top"]["impression_url"]
        .as_str()
        .unwrap();
    // nginx's `$host` has no port: rotator's URLs name the standard HTTPS port.
    assert!(
        impression.starts_with("https://127.0.0.1/v1/i/"),
        "{impression}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
