//! Shutdown as a value passed down: a `watch` channel that turns `true` once.
//!
//! `serve` owns two: one for the listeners (stop accepting, drain connections within the grace
//! period) and, after they have drained, one for the statistics flusher, so that the counts of
//! the last in-flight requests are in the final flush.

use std::pin::Pin;
use std::task::{Poll, Waker};

use tokio::sync::watch;

/// The sending side: call [`Trigger::fire`] once.
pub struct Trigger(watch::Sender<bool>);

/// A new trigger and its receiver; clone the receiver for each task that must stop.
pub fn channel() -> (Trigger, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), rx)
}

impl Trigger {
    /// Tells every receiver to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

/// Waits until `rx` says stop (or its sender is gone).
pub async fn wait(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Runs `work` until it is done (`Some` of its output) or `rx` says stop (`None`).
///
/// Like `tokio::select!` over `work` and [`wait`], except that the stop signal is polled only
/// when the channel has changed (or the task's waker has), not every time `work` wakes. A
/// connection's task wakes for every request, and polling a waiting `watch` receiver takes the
/// channel's waiter lock, which every connection shares.
pub async fn unless_stopped<F: Future>(
    mut work: Pin<&mut F>,
    rx: &watch::Receiver<bool>,
) -> Option<F::Output> {
    let probe = rx.clone();
    let mut rx = rx.clone();
    let mut stop = std::pin::pin!(wait(&mut rx));
    // The waker `stop` last registered; polling again is needed only for another one.
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        let same_waker = registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !same_waker || !matches!(probe.has_changed(), Ok(false)) {
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            registered = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}

/// Registers for SIGTERM and SIGINT now (so a signal that arrives before anyone waits is not
/// lost to the default action), and returns the future that waits for the first of them.
pub fn signals() -> std::io::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// A thread that writes a journal until told to stop; stopping it (or dropping it) lets it
/// write what is left and waits for it. Shared by tracking's counted-once journal and the local
/// state's caps journal.
pub struct WriterThread {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterThread {
    /// The handle of `thread`, which ends when `stop` is dropped (its receiver disconnects).
    pub fn new(stop: std::sync::mpsc::Sender<()>, thread: std::thread::JoinHandle<()>) -> Self {
        WriterThread {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// A handle with no thread (nothing to write).
    pub fn none() -> Self {
        WriterThread {
            stop: None,
            thread: None,
        }
    }

    /// Writes what is left and stops the thread.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn work_runs_until_done_or_stopped() {
        let (trigger, rx) = channel();
        let done = std::pin::pin!(async { 7 });
        assert_eq!(unless_stopped(done, &rx).await, Some(7));

        // Work that wakes often (a busy connection) and never ends: stopped when fired.
        let stopped = tokio::spawn({
            let rx = rx.clone();
            async move {
                let busy = std::pin::pin!(async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
                unless_stopped(busy, &rx).await.is_none()
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!stopped.is_finished());
        trigger.fire();
        assert!(stopped.await.unwrap());

        // Already fired: stops at once; a dropped trigger stops too.
        let never = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(unless_stopped(never, &rx).await, None);
        let (trigger, rx) = channel();
        drop(trigger);
        let never = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(unless_stopped(never, &rx).await, None);
    }
}
