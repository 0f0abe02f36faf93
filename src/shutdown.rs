//! Shutdown as a value passed down: a `watch` channel that turns `true` once.
//!
//! `serve` owns two: one for the listeners (stop accepting, drain connections within the grace
//! period) and, after they have drained, one for the statistics flusher, so that the counts of
//! the last in-flight requests are in the final flush.

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

/// Waits for SIGTERM or SIGINT.
pub async fn signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
