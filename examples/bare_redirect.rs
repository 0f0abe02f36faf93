//! The baseline for `scripts/bench`: a bare hyper 1 HTTP/1.1 server on the same stack and settings
//! as `src/http/server.rs` (tokio multi-thread, http1 builder, TCP_NODELAY) that answers every
//! request with a fixed `303 See Other` to `https://example.com`. No visitor, auction, statistics
//! or metrics: what is left is the cost of HTTP itself.
//!
//! Usage: `cargo run --release --example bare_redirect [ADDR]` (default `127.0.0.1:8090`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, HeaderValue, LOCATION};

use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rotator::http::server;
use tokio::net::TcpListener;

fn redirect() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(LOCATION, HeaderValue::from_static("https://example.com"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into())
        .parse()?;
    // Same worker count as `rotator serve`.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("listening on {}", listener.local_addr()?);
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
