//! Hot reload: the campaigns file is watched ([`crate::file_watch`]) and reloaded on SIGHUP.
//!
//! A new file is loaded and validated off the request path; only a valid one is published, by
//! swapping the whole [`Catalogue`] in the [`CatalogueHandle`]. Requests already holding the old
//! catalogue finish with it. An invalid file is refused and logged, and the previous catalogue
//! keeps serving. A reload that removes most of the active campaigns is published but logged as
//! a warning: it is more often a mistake (a truncated file) than a plan.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Catalogue, CatalogueHandle};
use crate::file_watch::{self, Cause};
use crate::metrics::Metrics;

/// Loads `path` and, if valid, publishes it. Returns whether it was published.
pub async fn reload(path: &Path, handle: &CatalogueHandle, metrics: &Metrics, why: Cause) -> bool {
    let owned = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Catalogue::load(&owned)).await;
    match loaded {
        Ok(Ok(catalogue)) => {
            let ids: Vec<u32> = catalogue.campaigns().iter().map(|c| c.id).collect();
            let (campaigns, active) = (catalogue.campaigns().len(), catalogue.active());
            metrics.campaigns_active.set(active as i64);
            metrics.set_campaigns(&ids);
            let warnings = catalogue.warnings();
            let old = handle.swap(Arc::new(catalogue));
            metrics.observe_reload(true);
            let before = old.active();
            // "Most": more than half of the active campaigns are gone.
            if active * 2 < before {
                tracing::warn!(
                    campaigns,
                    active,
                    active_before = before,
                    "campaigns reloaded ({why}) from {}: {active} active campaigns instead of \
                     {before}; check the file is complete",
                    path.display()
                );
            } else {
                tracing::info!(
                    campaigns,
                    active,
                    "campaigns reloaded ({why}) from {}",
                    path.display()
                );
            }
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            file_watch::retire(old).await;
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

/// Watches `path` until `shutdown`: reloads when it changed and settled, and on SIGHUP (which is
/// registered when this is called).
pub fn watch(
    path: PathBuf,
    handle: CatalogueHandle,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    let file = path.clone();
    file_watch::watch(path, "campaigns", interval, shutdown, move |why| {
        let (file, handle, metrics) = (file.clone(), handle.clone(), metrics.clone());
        async move {
            reload(&file, &handle, &metrics, why).await;
        }
    })
}
