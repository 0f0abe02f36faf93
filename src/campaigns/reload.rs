//! Hot reload: the campaigns file is watched (polled) and reloaded on SIGHUP.
//!
//! A new file is loaded and validated off the request path; only a valid one is published, by
//! swapping the whole [`Catalogue`] in the [`CatalogueHandle`]. Requests already holding the old
//! catalogue finish with it. An invalid file is refused and logged, and the previous catalogue
//! keeps serving.
//!
//! Polling the file's modification time, size and inode (every `watch_interval`) rather than
//! using inotify is deliberate: it also sees editors that replace the file by renaming and
//! Kubernetes ConfigMaps that swap a symlink, and it costs one `stat` per second.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::{Catalogue, CatalogueHandle};
use crate::metrics::Metrics;

/// What identifies one version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Loads `path` and, if valid, publishes it. Returns whether it was published.
pub async fn reload(path: &Path, handle: &CatalogueHandle, metrics: &Metrics, why: &str) -> bool {
    let owned = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Catalogue::load(&owned)).await;
    match loaded {
        Ok(Ok(catalogue)) => {
            let ids: Vec<u32> = catalogue.campaigns().iter().map(|c| c.id).collect();
            tracing::info!(
                campaigns = catalogue.campaigns().len(),
                active = catalogue.active(),
                "campaigns reloaded ({why}) from {}",
                path.display()
            );
            for warning in catalogue.warnings() {
                tracing::warn!("{warning}");
            }
            metrics.campaigns_active.set(catalogue.active() as i64);
            metrics.set_campaigns(&ids);
            handle.store(Arc::new(catalogue));
            metrics.observe_reload(true);
            true
        }
        Ok(Err(e)) => {
            tracing::error!(
                "campaigns reload ({why}) refused, the previous campaigns keep serving: {e}"
            );
            metrics.observe_reload(false);
            false
        }
        Err(e) => {
            tracing::error!("campaigns reload ({why}) failed: {e}");
            metrics.observe_reload(false);
            false
        }
    }
}

/// Watches `path` until `shutdown`: reloads when it changes and on SIGHUP. SIGHUP is registered
/// when this is called, not when the future first runs, so an early SIGHUP cannot kill the
/// process (the default action).
pub fn watch(
    path: PathBuf,
    handle: CatalogueHandle,
    interval: Duration,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP, only file changes reload campaigns: {e}");
            None
        }
    };
    let mut last = fingerprint(&path);
    async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {
                    let now = fingerprint(&path);
                    if now != last {
                        last = now;
                        if last.is_some() {
                            reload(&path, &handle, &metrics, "file changed").await;
                        }
                    }
                }
                Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    last = fingerprint(&path);
                    reload(&path, &handle, &metrics, "SIGHUP").await;
                }
                _ = crate::shutdown::wait(&mut shutdown) => return,
            }
        }
    }
}
