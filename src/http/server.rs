//! The connection loop shared by the ad and metrics listeners (hyper, HTTP/1.1, keep-alive).
//!
//! Shutdown follows mini-redis: when the shutdown value fires, the loop stops accepting, every
//! connection is told to finish its in-flight request and close, and the loop waits until the last
//! connection task has dropped its `drained` sender, or the grace period ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::Body;

/// Largest request head (request line and headers) accepted; larger gets 431. hyper's minimum
/// buffer is 8 KiB; 16 KiB fits real browsers' cookies.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long a client may take to send its request head (slowloris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Something that answers requests synchronously (every answer here is computed, not awaited).
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn handle(&self, req: &Request<Incoming>, peer: SocketAddr) -> Response<Body>;
}

/// The HTTP/1.1 settings of every connection (also used by `examples/bare_redirect.rs`, so the
/// benchmark's bare server runs the same stack).
pub fn connection_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(MAX_HEADER_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
}

/// Serves `listener` with `handler` until `shutdown`, then drains connections for up to `grace`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let (drained_tx, mut drained_rx) = mpsc::channel::<()>(1);
    let builder = Arc::new(connection_builder());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::shutdown::wait(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let conn_shutdown = shutdown.clone();
        let drained = drained_tx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = handler.handle(&req, peer);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            if crate::shutdown::unless_stopped(conn.as_mut(), &conn_shutdown)
                .await
                .is_none()
            {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
            }
            drop(drained);
        });
    }
    drop(listener);
    drop(drained_tx);
    if tokio::time::timeout(grace, drained_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the {grace:?} grace period; closing them");
    }
}
