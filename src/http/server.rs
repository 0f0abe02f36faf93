//! The connection loop shared by the ad and metrics listeners (hyper, HTTP/1.1, keep-alive; over
//! TLS also HTTP/2, chosen by ALPN: see [`super::tls`]).
//!
//! Limits: at most `max_connections` open per listener (more are closed at once and counted),
//! every socket [`Guarded`] (a send timeout, an answer to HTTP/2 prefaces), and
//! the soft file descriptor limit raised to the hard one at start ([`raise_fd_limit`]), as Go's
//! runtime does, so a few thousand idle connections do not starve `accept`. Over TLS, the
//! handshake must end within [`HEADER_READ_TIMEOUT`]; HTTP/2 connections keep HTTP/1.1's limits
//! ([`h2_builder`]).
//!
//! Shutdown follows mini-redis: when the shutdown value fires, the loop stops accepting, every
//! connection is told to finish its in-flight request and close, and the loop waits until the last
//! connection task has dropped its `drained` sender, or the grace period ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::Body;
use super::guarded::Guarded;
use super::tls::{Secure, Tls};
use crate::metrics::ConnectionMetrics;

/// Largest request head (request line and headers) accepted; larger gets 431. hyper's minimum
/// buffer is 8 KiB; 16 KiB fits real browsers' cookies.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long a client may take to send its request head (slowloris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams one HTTP/2 connection may have open at once (nginx: 128); a page's slots and beacons
/// need a handful.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// How often an HTTP/2 connection with nothing to do is checked: one that started no request
/// and had none in flight for a whole interval is closed (GOAWAY). Between one and two intervals,
/// like HTTP/1.1's [`HEADER_READ_TIMEOUT`] between requests.
pub const H2_IDLE_TIMEOUT: Duration = HEADER_READ_TIMEOUT;

/// How long an idle HTTP/2 connection has to close after its GOAWAY.
const H2_GOAWAY_WAIT: Duration = Duration::from_secs(1);

/// HTTP/2 pings a connection that has been silent this long; no answer within the same time
/// closes it (a peer that vanished with streams open).
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// File descriptors kept free for everything but the ad listener's connections (metrics
/// connections, statistics sink, spool and campaign files, the runtime's own).
pub const FD_RESERVE: u64 = 256;

/// Connections the metrics listener keeps open at most (Prometheus and health checks need few).
pub const METRICS_MAX_CONNECTIONS: usize = 64;

/// At most one `accept failed` warning per this interval; the others are counted in it.
const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// How long `accept` rests after a failure (out of file descriptors): no busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Limits and counters of one listener.
#[derive(Clone)]
pub struct ServeOptions {
    /// How long connections may finish their requests after shutdown.
    pub grace: Duration,
    /// Open connections above which new ones are closed at once.
    pub max_connections: usize,
    /// How long a write may wait for a peer that does not read.
    pub send_timeout: Duration,
    /// The listener's connection series.
    pub metrics: ConnectionMetrics,
    /// HTTPS (HTTP/2 and HTTP/1.1) instead of plain HTTP/1.1.
    pub tls: Option<Arc<Tls>>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (before, after). Every accepted
/// connection is a descriptor, and 1024 (a common default soft limit) is far too few.
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// `configured` connections, lowered when the descriptor limit `fd_limit` cannot hold them
/// beside [`FD_RESERVE`] (at least 1).
pub fn fitting_max_connections(configured: u64, fd_limit: u64) -> u64 {
    configured.min(fd_limit.saturating_sub(FD_RESERVE)).max(1)
}

/// Lets one `accept failed` warning through per `ACCEPT_WARN_INTERVAL`; the next one says how
/// many were held back, so a storm of failures is a few lines, not hundreds.
#[derive(Debug, Default)]
pub struct AcceptWarnings {
    last: Option<Instant>,
    held_back: u64,
}

impl AcceptWarnings {
    /// Records a failure at `now`; returns how many failures were held back since the last
    /// warning when this one should be logged.
    pub fn failed(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < ACCEPT_WARN_INTERVAL => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// One open connection; dropping it frees the slot.
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// A handler's answer: computed at once (the ad redirect, tracking, tags), or later when the
/// request's body must be read first (the decisions API).
pub enum Reply {
    /// The response.
    Now(Response<Body>),
    /// A response that needs the body.
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply;
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

/// The HTTP/2 settings of every TLS connection that chose `h2`: HTTP/1.1's header size limit,
/// bounded streams, and pings for a vanished peer (the idle timeout is [`H2_IDLE_TIMEOUT`]).
/// hyper's own defaults bound the rest: reset floods (`max_pending_accept_reset_streams`,
/// `max_local_error_reset_streams`) and the buffered bytes per stream (`max_send_buf_size`).
pub fn h2_builder() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_INTERVAL);
    builder
}

/// Requests of one HTTP/2 connection: started, and in flight now (for the idle timeout).
#[derive(Default)]
struct Activity {
    started: AtomicUsize,
    in_flight: AtomicUsize,
}

/// One request in flight; dropping it ends it.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `conn` until it ends (`false`) or it has been idle for [`H2_IDLE_TIMEOUT`] (`true`).
async fn until_idle<F: Future>(mut conn: Pin<&mut F>, activity: &Activity) -> bool {
    let mut seen = activity.started.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return false,
            _ = tokio::time::sleep(H2_IDLE_TIMEOUT) => {
                let started = activity.started.load(Ordering::Relaxed);
                if started == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
                    return true;
                }
                seen = started;
            }
        }
    }
}

/// Marks a request that came over TLS, and gives an HTTP/2 request the `Host` header its
/// `:authority` stands for (RFC 9113, section 8.3.1), so handlers read one header either way.
fn mark_secure(req: &mut Request<Incoming>) {
    req.extensions_mut().insert(Secure);
    if !req.headers().contains_key(HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(HOST, host);
    }
}

/// Drives a connection until it ends or `shutdown` fires; then lets it finish its requests.
macro_rules! drive {
    ($conn:expr, $shutdown:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        if crate::shutdown::unless_stopped(conn.as_mut(), $shutdown)
            .await
            .is_none()
        {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }};
}

/// Serves `listener` with `handler` until `shutdown`, then drains connections for up to
/// `options.grace`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
    options: ServeOptions,
) {
    let ServeOptions {
        grace,
        max_connections,
        send_timeout,
        metrics,
        tls,
    } = options;
    let (drained_tx, mut drained_rx) = mpsc::channel::<()>(1);
    let builder = Arc::new(connection_builder());
    let h2 = Arc::new(h2_builder());
    let open = Arc::new(AtomicUsize::new(0));
    let mut warnings = AcceptWarnings::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    metrics.accept_errors.inc();
                    if let Some(held_back) = warnings.failed(Instant::now()) {
                        tracing::warn!(
                            "accept failed: {e} ({held_back} more failures since the last \
                             warning; at most one warning per {ACCEPT_WARN_INTERVAL:?})"
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = crate::shutdown::wait(&mut shutdown) => break,
        };
        if open.load(Ordering::Relaxed) >= max_connections {
            metrics.refused.inc();
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        metrics.open.inc();
        let slot = Slot {
            open: open.clone(),
            gauge: metrics.open.clone(),
        };
        let _ = stream.set_nodelay(true);
        let io = Guarded::new(stream, send_timeout, metrics.send_timeouts.clone());
        let handler = handler.clone();
        let builder = builder.clone();
        let conn_shutdown = shutdown.clone();
        let drained = drained_tx.clone();
        let Some(tls) = tls.clone() else {
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let reply = handler.handle(req, peer);
                    async move {
                        Ok::<_, std::convert::Infallible>(match reply {
                            Reply::Now(response) => response,
                            Reply::Later(response) => response.await,
                        })
                    }
                });
                drive!(
                    builder.serve_connection(TokioIo::new(io), service),
                    &conn_shutdown
                );
                drop(slot);
                drop(drained);
            });
            continue;
        };
        let h2 = h2.clone();
        tokio::spawn(async move {
            serve_tls(io, &tls, handler, peer, &builder, &h2, &conn_shutdown).await;
            drop(slot);
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

/// One TLS connection: the handshake (within [`HEADER_READ_TIMEOUT`]), then HTTP/2 or HTTP/1.1
/// as the client chose in ALPN (HTTP/1.1 when it chose nothing).
async fn serve_tls<H: Handler>(
    io: Guarded,
    tls: &Tls,
    handler: Arc<H>,
    peer: SocketAddr,
    h1: &http1::Builder,
    h2: &http2::Builder<TokioExecutor>,
    shutdown: &watch::Receiver<bool>,
) {
    let stream = match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.acceptor().accept(io)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {peer} failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let is_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    if !is_h2 {
        let service = service_fn(move |mut req: Request<Incoming>| {
            mark_secure(&mut req);
            let reply = handler.handle(req, peer);
            async move {
                Ok::<_, std::convert::Infallible>(match reply {
                    Reply::Now(response) => response,
                    Reply::Later(response) => response.await,
                })
            }
        });
        drive!(h1.serve_connection(io, service), shutdown);
        return;
    }
    let activity = Arc::new(Activity::default());
    let counted = activity.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let in_flight = InFlight::start(&counted);
        mark_secure(&mut req);
        let reply = handler.handle(req, peer);
        async move {
            let response = match reply {
                Reply::Now(response) => response,
                Reply::Later(response) => response.await,
            };
            drop(in_flight);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let conn = h2.serve_connection(io, service);
    tokio::pin!(conn);
    let idle = {
        let work = std::pin::pin!(until_idle(conn.as_mut(), &activity));
        crate::shutdown::unless_stopped(work, shutdown).await
    };
    match idle {
        Some(false) => {}
        // Idle: GOAWAY, briefly (a peer that never sent its preface does not answer).
        Some(true) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(H2_GOAWAY_WAIT, conn.as_mut()).await;
        }
        // Stopped: GOAWAY, the open streams finish (within the listener's grace period).
        None => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9, item 4: 581 `accept failed` lines in 30 s became one per interval.
    #[test]
    fn issue9_accept_warnings_are_rate_limited() {
        let mut w = AcceptWarnings::default();
        let start = Instant::now();
        assert_eq!(w.failed(start), Some(0));
        let logged = (1..600)
            .map(|i| start + Duration::from_millis(50 * i))
            .filter_map(|t| w.failed(t))
            .collect::<Vec<_>>();
        // 30 s of failures every 50 ms: a warning at 10 s, 20 s (and none before each).
        assert_eq!(logged, [199, 199]);
    }

    #[test]
    fn max_connections_fit_the_descriptor_limit() {
        assert_eq!(fitting_max_connections(10_000, 1_048_576), 10_000);
        assert_eq!(fitting_max_connections(10_000, 1024), 1024 - FD_RESERVE);
        assert_eq!(fitting_max_connections(10_000, 100), 1);
    }
}
