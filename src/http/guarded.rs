//! The socket under every connection, with the limits hyper does not enforce.
//!
//! - **Send timeout** (like nginx's `send_timeout`): when a write has waited longer than the
//!   timeout for a peer that does not read, the connection fails with `TimedOut` and is closed.
//!   Without it a client that pipelines requests and never reads holds its connection forever.
//!   (The answers queued for it are already bounded: hyper's HTTP/1 dispatcher reads the next
//!   pipelined request only once the previous answer has been flushed to the socket.)
//! - **HTTP/2 preface** (`PRI * HTTP/2.0`, prior-knowledge h2c): hyper closes such a connection
//!   without a word; here the client gets `505 HTTP Version Not Supported`, then the end of the
//!   stream, and what it sends after the preface is read and dropped until it closes (closing
//!   with unread bytes would reset the connection and could destroy the answer).
//!
//! The timer is polled from `poll_write`/`poll_flush`, which hyper calls again whenever the task
//! wakes while it has bytes to send, so the timer's wake-up is never lost.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The first bytes of an HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// What an HTTP/2 prior-knowledge client is told before the connection closes.
const H2_ANSWER: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 44\r\nconnection: close\r\n\r\n\
HTTP/2 is not supported here: use HTTP/1.1.\n";

/// What the first bytes of the connection were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preface {
    /// Nothing read yet.
    Unchecked,
    /// Not an HTTP/2 preface: bytes go to hyper.
    Http1,
    /// An HTTP/2 preface, answered: bytes are dropped until the peer closes.
    Http2Answered,
}

/// Reads at most this many times per poll while dropping an HTTP/2 client's bytes, so a client
/// that floods cannot hold the worker thread.
const DISCARD_READS_PER_POLL: usize = 16;

/// A TCP stream with a send timeout and an answer to HTTP/2 prefaces.
pub struct Guarded {
    stream: TcpStream,
    send_timeout: Duration,
    /// Armed while a write waits for the peer; its deadline is when the connection gives up.
    timer: Pin<Box<Sleep>>,
    write_blocked: bool,
    preface: Preface,
    /// Counts connections closed by the send timeout.
    timeouts: IntCounter,
}

impl Guarded {
    /// Wraps `stream`; a write blocked for longer than `send_timeout` fails the connection and
    /// increments `timeouts`.
    pub fn new(stream: TcpStream, send_timeout: Duration, timeouts: IntCounter) -> Guarded {
        Guarded {
            stream,
            send_timeout,
            timer: Box::pin(tokio::time::sleep(send_timeout)),
            write_blocked: false,
            preface: Preface::Unchecked,
            timeouts,
        }
    }

    /// Bookkeeping after a write or flush: starts the clock when it blocks, stops it when it
    /// makes progress, and fails the write once the peer has not read for `send_timeout`.
    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => {
                if !self.write_blocked {
                    self.write_blocked = true;
                    let deadline = Instant::now() + self.send_timeout;
                    self.timer.as_mut().reset(deadline);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    self.timeouts.inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer did not read for the send timeout",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.write_blocked = false;
                ready
            }
        }
    }

    /// Reads and drops what an answered HTTP/2 client still sends; end of stream once it closes.
    fn discard(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        for _ in 0..DISCARD_READS_PER_POLL {
            let result = Pin::new(&mut self.stream).poll_read(cx, buf);
            let read = buf.filled().len() - before;
            buf.set_filled(before);
            match result {
                Poll::Ready(Ok(())) if read > 0 => continue,
                other => return other,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.preface {
            Preface::Http1 => return Pin::new(&mut this.stream).poll_read(cx, buf),
            Preface::Http2Answered => return this.discard(cx, buf),
            Preface::Unchecked => {}
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if result.is_ready() {
            this.preface = Preface::Http1;
            if buf.filled()[before..].starts_with(H2_PREFACE_START) {
                buf.set_filled(before);
                this.preface = Preface::Http2Answered;
                // Best effort: a fresh socket's send buffer takes these few bytes at once. A
                // TCP stream's shutdown is immediate (it never returns Pending).
                let _ = this.stream.try_write(H2_ANSWER);
                let _ = Pin::new(&mut this.stream).poll_shutdown(cx);
                return this.discard(cx, buf);
            }
        }
        result
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.on_write(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.on_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_flush(cx);
        this.on_write(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http2_answer_is_well_formed() {
        let text = std::str::from_utf8(H2_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), body.len());
        assert!(head.starts_with("HTTP/1.1 505 "));
    }
}
