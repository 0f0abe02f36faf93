//! A closed-loop HTTP/1.1 load generator that counts exactly what it received.
//!
//! wrk stops mid-request when its time is up, so the server can have answered a few dozen
//! requests that wrk never read; to prove "every response the client received is counted once",
//! this tool lets each connection finish its last request before stopping.
//!
//! Usage: `loadgen ADDR CONNECTIONS SECONDS [REQUESTS.tsv]`. Each request sends the IP and
//! User-Agent of the next row of the TSV (`ip<TAB>user-agent…`, `#` lines skipped) as
//! `X-Forwarded-For` and `User-Agent`. Prints `responses=N status_303=N errors=N seconds=S`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn requests(path: Option<&str>) -> Vec<Vec<u8>> {
    let rows: Vec<(String, String)> = match path.map(std::fs::read_to_string) {
        Some(Ok(text)) => text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((f.next()?.to_string(), f.next()?.to_string()))
            })
            .collect(),
        Some(Err(e)) => panic!("cannot read the requests file: {e}"),
        None => vec![("127.0.0.1".into(), "loadgen".into())],
    };
    rows.iter()
        .map(|(ip, ua)| {
            format!("GET /ad HTTP/1.1\r\nHost: rotator\r\nX-Forwarded-For: {ip}\r\nUser-Agent: {ua}\r\n\r\n").into_bytes()
        })
        .collect()
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

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: loadgen ADDR CONNECTIONS SECONDS [REQUESTS.tsv]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR like 127.0.0.1:8080");
    let connections: usize = args[2].parse().expect("CONNECTIONS");
    let seconds: u64 = args[3].parse().expect("SECONDS");
    let requests = Arc::new(requests(args.get(4).map(String::as_str)));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (responses, see_other, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (requests, responses, see_other, errors) = (
                requests.clone(),
                responses.clone(),
                see_other.clone(),
                errors.clone(),
            );
            tokio::spawn(async move {
                let mut next = c * 997;
                let mut stream = None;
                let mut buf = Vec::with_capacity(8192);
                while Instant::now() < deadline {
                    if stream.is_none() {
                        match TcpStream::connect(addr).await {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                stream = Some(s);
                                buf.clear();
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
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
                    match result {
                        Ok(status) => {
                            responses.fetch_add(1, Ordering::Relaxed);
                            if status == 303 {
                                see_other.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            stream = None;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "responses={} status_303={} errors={} seconds={:.1}",
        responses.load(Ordering::Relaxed),
        see_other.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}
