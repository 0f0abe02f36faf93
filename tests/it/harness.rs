//! Starts the real `rotator` binary on ephemeral ports and talks raw HTTP/1.1 to it.
//!
//! A raw client (not a library) because the tests send what real clients should not: oversized
//! headers, non-UTF-8 agents, garbage forwarding headers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh temporary folder.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rotator-it-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The seed campaigns, as shipped.
pub fn seed_campaigns() -> String {
    std::fs::read_to_string(repo().join("campaigns.toml")).unwrap()
}

/// A config for tests: ephemeral ports, the bundled country database; `server_extra` goes into
/// `[server]`, `rest` is appended (its sections must not repeat the ones here).
pub fn config(server_extra: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndefault_url = \"https://default.example\"\nshutdown_grace = \"5s\"\n{server_extra}\n\
         [geoip]\ndatabase = {:?}\n[campaigns]\nfile = \"campaigns.toml\"\nwatch_interval = \"200ms\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n{rest}\n",
        repo().join("data/country.mmdb").display().to_string(),
    )
}

/// A running server.
pub struct Server {
    child: Child,
    /// Ad listener.
    pub addr: SocketAddr,
    /// Metrics listener.
    pub metrics: Option<SocketAddr>,
    /// Admin listener: only when the config has an `[admin]` section (else it is disabled, so
    /// parallel servers never meet on its default port).
    pub admin: Option<SocketAddr>,
    /// Its folder (config, campaigns, data).
    pub dir: PathBuf,
    log: Arc<Mutex<String>>,
}

/// Runs `rotator ARGS` to completion; returns (exit status, stdout, stderr).
pub fn run(args: &[&str], stdin: Option<&str>) -> (ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rotator"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `rotator report --since 1d [--by BY] --format json` with the config in `dir`, parsed.
pub fn report_json(dir: &Path, by: Option<&str>) -> serde_json::Value {
    let cfg = dir.join("rotator.toml");
    let mut args = vec!["report", "--config", cfg.to_str().unwrap(), "--since", "1d"];
    if let Some(by) = by {
        args.extend(["--by", by]);
    }
    args.extend(["--format", "json"]);
    let (status, out, err) = run(&args, None);
    assert!(status.success(), "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

impl Server {
    /// Writes `config` and `campaigns` into `dir` and starts `rotator serve` there; waits until
    /// it listens.
    pub fn start_in(dir: &Path, config: &str, campaigns: &str) -> Server {
        std::fs::write(dir.join("rotator.toml"), config).unwrap();
        std::fs::write(dir.join("campaigns.toml"), campaigns).unwrap();
        Server::spawn(dir)
    }

    /// Starts `rotator serve` on the files already in `dir`.
    pub fn spawn(dir: &Path) -> Server {
        Server::spawn_via(dir, &[])
    }

    /// Starts `rotator serve` on the files already in `dir` through `wrapper` (a command that
    /// runs the rest of its arguments, e.g. `prlimit --nofile=128: --`); none when empty.
    pub fn spawn_via(dir: &Path, wrapper: &[&str]) -> Server {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_rotator"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_rotator")),
        };
        let wants_admin = std::fs::read_to_string(dir.join("rotator.toml"))
            .is_ok_and(|text| text.contains("[admin]"));
        if !wants_admin {
            command.env("ROTATOR_ADMIN_LISTEN", "");
        }
        let mut child = command
            .args(["serve", "--config"])
            .arg(dir.join("rotator.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        // The address ends at the first character that cannot be part of it (JSON logs quote it).
        let find = |log: &str, marker: &str| -> Option<SocketAddr> {
            log.lines().find_map(|l| {
                let (_, rest) = l.split_once(marker)?;
                rest.split(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
                    .next()?
                    .parse()
                    .ok()
            })
        };
        loop {
            let text = log.lock().unwrap().clone();
            let admin = find(&text, "admin listening on ");
            if let (Some(addr), Some(metrics), true) = (
                find(&text, "ads listening on "),
                find(&text, "metrics listening on "),
                admin.is_some() || !wants_admin,
            ) {
                return Server {
                    child,
                    addr,
                    metrics: Some(metrics),
                    admin,
                    dir: dir.to_path_buf(),
                    log,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("rotator exited with {status} before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "rotator did not start in time:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "rotator did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` with extra headers, on the ad listener.
    pub fn get(&self, path: &str, headers: &[(&str, &[u8])]) -> Response {
        request(self.addr, "GET", path, headers)
    }

    /// `POST path` with a JSON body, on the ad listener.
    pub fn post_json(&self, path: &str, body: &str) -> Response {
        post(self.addr, path, "application/json", body.as_bytes())
    }

    /// An ad request from a visitor at `ip` (via a trusted `X-Forwarded-For`) with `ua`.
    pub fn ad(&self, ip: &str, ua: &str) -> Response {
        self.get(
            "/ad",
            &[
                ("X-Forwarded-For", ip.as_bytes()),
                ("User-Agent", ua.as_bytes()),
            ],
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &[u8])]) -> Response {
    parse(&send_raw(addr, &request_bytes(method, path, headers)))
}

/// `method path` with text `headers` and `body` (its `Content-Length` added) and
/// `Connection: close`.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let length = body.len().to_string();
    let mut all: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    all.push(("Content-Length", length.as_bytes()));
    let mut raw = request_bytes(method, path, &all);
    raw.extend_from_slice(body.as_bytes());
    parse(&send_raw(addr, &raw))
}

/// `POST path` with a body of `content_type` and `Connection: close`.
pub fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Response {
    parse(&send_raw(addr, &post_bytes(path, content_type, body)))
}

/// The bytes of a `POST` with a body.
pub fn post_bytes(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let length = body.len().to_string();
    let mut raw = request_bytes(
        "POST",
        path,
        &[
            ("Content-Type", content_type.as_bytes()),
            ("Content-Length", length.as_bytes()),
        ],
    );
    raw.extend_from_slice(body);
    raw
}

/// Like [`request`], from the local address `source` (any 127.x.y.z works on loopback), so a
/// test can be a visitor whose address is not the proxy's.
pub fn request_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Response {
    parse(&send_raw_from(
        source,
        addr,
        &request_bytes(method, path, headers),
    ))
}

/// Like [`send_raw`], from the local address `source`.
pub fn send_raw_from(source: std::net::IpAddr, addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut raw =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n").into_bytes();
    for (name, value) in headers {
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw
}

/// Sends raw bytes and returns everything the server answers until it closes.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may answer (431) and close before reading everything we send.
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// Parses a raw HTTP/1.1 response.
pub fn parse(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}
