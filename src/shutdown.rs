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
