//! An HTTP/1.1 load generator that counts exactly what it received, closed-loop or at a fixed rate.
//!
//! wrk stops mid-request when its time is up, so the server can have answered a few dozen
//! requests that wrk never read; to prove "every response the client received is counted once",
//! this tool lets each connection finish its last request before stopping.
//!
//! Usage: `loadgen [--rate R] [--cookie NAME] ADDR CONNECTIONS SECONDS [REQUESTS.tsv]`. Each
//! request sends the IP and User-Agent of the next row of the TSV (`ip<TAB>user-agent…`, `#` lines
//! skipped) as `X-Forwarded-For` and `User-Agent`.
//!
//! - Without `--rate` (closed loop), each connection sends its next request as soon as the last
//!   answer arrived; latency is measured from the send.
//! - `--rate R`: R requests/s in all, spread over the connections: each connection sends on its
//!   own schedule, one request every CONNECTIONS / R seconds, the connections staggered by 1 / R.
//!   Latency is measured from the *scheduled* send time, so a server stall that delays the next
//!   sends counts in their latency too (no coordinated omission, as in wrk2). A request sent late
//!   only because the timer woke late (tokio's timer has 1 ms ticks) while its connection was idle
//!   is measured from its actual send: that lateness is the tool's, not the server's.
//! - `--cookie NAME`: every traffic row is one returning visitor that sends back a stable cookie,
//!   `Cookie: NAME=r` followed by its row index (from 0) in 21 zero-padded digits: 22 URL-safe
//!   base64 characters, the shape of rotator's `rid` cookie. Without it, no cookie (first visits).
//!
//! Prints one line: `responses=N status_303=N errors=N seconds=S rate=R p50_ms=… p90_ms=…
//! p99_ms=… p99_9_ms=… max_ms=…` (rate: responses per second achieved; percentiles of the
//! responses' latencies, ±1.6 %).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USAGE: &str =
    "usage: loadgen [--rate R] [--cookie NAME] ADDR CONNECTIONS SECONDS [REQUESTS.tsv]";

fn requests(path: Option<&str>, cookie: Option<&str>) -> Vec<Vec<u8>> {
    let rows: Vec<(String, String)> = match path.map(std::fs::read_to_string) {
        Some(Ok(text)) => text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((f.next()?.to_string(), f.next()?.to_string()))
            })
            .collect(),
        Some(Err(e)) => fail(&format!("cannot read the requests file: {e}")),
        None => vec![("127.0.0.1".into(), "loadgen".into())],
    };
    if rows.is_empty() {
        fail("the requests file has no rows (ip<TAB>user-agent)");
    }
    rows.iter()
        .enumerate()
        .map(|(row, (ip, ua))| {
            let cookie = cookie
                .map(|name| format!("Cookie: {name}=r{row:021}\r\n"))
                .unwrap_or_default();
            format!("GET /ad HTTP/1.1\r\nHost: rotator\r\nX-Forwarded-For: {ip}\r\nUser-Agent: {ua}\r\n{cookie}\r\n").into_bytes()
        })
        .collect()
}

fn fail(message: &str) -> ! {
    eprintln!("loadgen: {message}\n{USAGE}");
    std::process::exit(2);
}

/// Reads one response head (the server's answers have no body or a `Content-Length` one) and
/// returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            buf.drain(..total);
            return Ok(status);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Latencies in microseconds, log-linear: exact below 128 µs, then 64 buckets per power of two
/// (each at most 1/64 = 1.6 % wide).
struct Histogram {
    counts: Vec<u64>,
    max_us: u64,
}

impl Histogram {
    /// Buckets up to 2^40 µs (12 days): longer latencies go to the last one.
    const BUCKETS: usize = 64 * (40 - 5);

    fn new() -> Self {
        Histogram {
            counts: vec![0; Self::BUCKETS],
            max_us: 0,
        }
    }

    fn index(us: u64) -> usize {
        if us < 128 {
            return us as usize;
        }
        // 2^exp ≤ us < 2^(exp+1), exp ≥ 7: the top 7 bits of us pick one of 64 buckets.
        let exp = 63 - u64::from(us.leading_zeros());
        let index = 64 * (exp - 6) + (us >> (exp - 6));
        (index as usize).min(Self::BUCKETS - 1)
    }

    /// The highest latency that falls in bucket `index`.
    fn upper_us(index: usize) -> u64 {
        if index < 128 {
            return index as u64;
        }
        let (exp, top) = (index as u64 / 64 + 5, index as u64 % 64 + 64);
        ((top + 1) << (exp - 6)) - 1
    }

    fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::index(us)] += 1;
        self.max_us = self.max_us.max(us);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The latency (ms) at or below which `quantile` of the recorded ones fall (0 when empty).
    fn quantile_ms(&self, quantile: f64) -> f64 {
        let total: u64 = self.counts.iter().sum();
        let rank = ((quantile * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::upper_us(index).min(self.max_us) as f64 / 1000.0;
            }
        }
        0.0
    }
}

#[derive(Default)]
struct Counters {
    responses: AtomicU64,
    see_other: AtomicU64,
    errors: AtomicU64,
}

/// One connection's requests until `deadline`: closed-loop when `interval` is `None`, else one
/// request every `interval` from `first`. Returns the latencies of its responses.
async fn connection(
    addr: SocketAddr,
    mut stream: Option<TcpStream>,
    requests: Arc<Vec<Vec<u8>>>,
    mut next: usize,
    schedule: Option<(Instant, Duration)>,
    deadline: Instant,
    counters: Arc<Counters>,
) -> Histogram {
    let mut latencies = Histogram::new();
    let mut buf = Vec::with_capacity(8192);
    let mut scheduled = schedule.map(|(first, _)| first);
    // When the last response ended: a send after its scheduled time is the server's doing if
    // the connection was still busy then, the timer's if it was idle.
    let mut idle_since = Instant::now();
    loop {
        let start = match scheduled {
            None if Instant::now() >= deadline => break,
            None => Instant::now(),
            Some(at) if at >= deadline => break,
            Some(at) => {
                tokio::time::sleep_until(at.into()).await;
                let now = Instant::now();
                if idle_since <= at { now } else { at }
            }
        };
        if let (Some(at), Some((_, interval))) = (scheduled.as_mut(), schedule) {
            *at += interval;
        }
        if stream.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                    buf.clear();
                }
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let request = &requests[next % requests.len()];
        next += 1;
        let result = async {
            s.write_all(request).await?;
            read_response(s, &mut buf).await
        }
        .await;
        idle_since = Instant::now();
        match result {
            Ok(status) => {
                latencies.record(idle_since - start);
                counters.responses.fetch_add(1, Ordering::Relaxed);
                if status == 303 {
                    counters.see_other.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                stream = None;
            }
        }
    }
    latencies
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut rate, mut cookie, mut positional) = (None, None, Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rate" => {
                let r: f64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
                if !(r.is_finite() && r > 0.0) {
                    fail("--rate takes a number of requests per second above 0");
                }
                rate = Some(r);
            }
            "--cookie" => cookie = Some(args.next().unwrap_or_else(|| fail("--cookie NAME"))),
            _ => positional.push(arg),
        }
    }
    if !(3..=4).contains(&positional.len()) {
        fail("ADDR, CONNECTIONS and SECONDS are required");
    }
    let addr: SocketAddr = positional[0]
        .parse()
        .unwrap_or_else(|_| fail("ADDR is like 127.0.0.1:8080"));
    let connections: usize = match positional[1].parse() {
        Ok(n) if n > 0 => n,
        _ => fail("CONNECTIONS is a number above 0"),
    };
    let seconds: u64 = positional[2]
        .parse()
        .unwrap_or_else(|_| fail("SECONDS is a whole number"));
    let requests = Arc::new(requests(
        positional.get(3).map(String::as_str),
        cookie.as_deref(),
    ));
    // Connect first, so that the schedule does not start with the connections' set-up.
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = TcpStream::connect(addr).await.ok();
        if let Some(s) = &stream {
            let _ = s.set_nodelay(true);
        }
        streams.push(stream);
    }
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(c, stream)| {
            let schedule = rate.map(|r| {
                let first = started + Duration::from_secs_f64(c as f64 / r);
                (first, Duration::from_secs_f64(connections as f64 / r))
            });
            tokio::spawn(connection(
                addr,
                stream,
                requests.clone(),
                c * 997,
                schedule,
                deadline,
                counters.clone(),
            ))
        })
        .collect();
    let mut latencies = Histogram::new();
    for t in tasks {
        match t.await {
            Ok(h) => latencies.merge(&h),
            Err(e) => eprintln!("loadgen: a connection's task failed: {e}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let responses = counters.responses.load(Ordering::Relaxed);
    println!(
        "responses={responses} status_303={} errors={} seconds={elapsed:.1} rate={:.0} \
         p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p99_9_ms={:.3} max_ms={:.3}",
        counters.see_other.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed),
        responses as f64 / elapsed,
        latencies.quantile_ms(0.5),
        latencies.quantile_ms(0.9),
        latencies.quantile_ms(0.99),
        latencies.quantile_ms(0.999),
        latencies.max_us as f64 / 1000.0,
    );
}
