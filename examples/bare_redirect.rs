//! The baseline for `scripts/bench`: a bare hyper 1 HTTP/1.1 server on the same stack and settings
//! as `src/http/server.rs` (tokio multi-thread, http1 builder, TCP_NODELAY) that answers every
//! request with a fixed `303 See Other` to `https://example.com`. No visitor, auction, statistics
//! or metrics: what is left is the cost of HTTP itself.
//!
//! Usage: `cargo run --release --example bare_redirect [ADDR] [--tls CERT KEY]` (default
//! `127.0.0.1:8090`). With `--tls`, HTTPS with HTTP/2 and HTTP/1.1 through rotator's own TLS
//! setup and connection loop (`http::tls`, `server::serve`), so `scripts/bench --tls` compares
//! only what rotator does per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, HeaderValue, LOCATION};

use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rotator::http::server;
use rotator::http::tls::Tls;
use rotator::metrics::Metrics;
use tokio::net::TcpListener;

fn redirect() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(LOCATION, HeaderValue::from_static("https://example.com"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Answers every request with [`redirect`], for `server::serve`.
struct Bare;

impl server::Handler for Bare {
    fn handle(&self, _req: Request<Incoming>, _peer: SocketAddr) -> server::Reply {
        server::Reply::Now(redirect())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = args
        .first()
        .map_or("127.0.0.1:8090", String::as_str)
        .parse()?;
    let tls = match args.get(1..4) {
        Some([flag, cert, key]) if flag == "--tls" => Some(Arc::new(Tls::load(
            Path::new(cert),
            Path::new(key),
            "bare",
            Metrics::new().tls("bare"),
        )?)),
        _ => None,
    };
    // Same worker count as `rotator serve`.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("listening on {}", listener.local_addr()?);
        if let Some(tls) = tls {
            let metrics = Metrics::new();
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let options = server::ServeOptions {
                grace: Duration::from_secs(1),
                max_connections: 100_000,
                send_timeout: Duration::from_secs(10),
                metrics: metrics.connections("bare"),
                tls: Some(tls),
            };
            server::serve(listener, Arc::new(Bare), shutdown, options).await;
            return Ok(());
        }
        let builder = Arc::new(server::connection_builder());
        loop {
            let (stream, _peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service =
                    service_fn(|_req: Request<Incoming>| async { Ok::<_, Infallible>(redirect()) });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
