//! Hot reload of the GeoIP database, the same way as the campaigns file
//! ([`crate::file_watch`]): on a settled change of the file and on SIGHUP.
//!
//! The new file is read and verified off the request path ([`GeoIp::open`]: a regular file under
//! the size cap, a MaxMind database that answers test lookups); only then is it swapped into the
//! [`GeoIpHandle`]. A lookup in flight finishes with the database it started with. A broken file
//! is refused with a log line, and the previous database keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{GeoIp, GeoIpHandle};
use crate::file_watch::{self, Cause};
use crate::metrics::Metrics;

/// Reads and verifies `path` and, if usable, publishes it. Returns whether it was published.
pub async fn reload(path: &Path, handle: &GeoIpHandle, metrics: &Metrics, why: Cause) -> bool {
    let owned = path.to_path_buf();
    match tokio::task::spawn_blocking(move || GeoIp::open(&owned)).await {
        Ok(Ok(geoip)) => {
            tracing::info!(
                database_type = geoip.database_type(),
                build_epoch = geoip.build_epoch(),
                bytes = geoip.size(),
                "GeoIP database reloaded ({why}) from {}",
                path.display()
            );
            metrics.set_geoip_build_epoch(geoip.build_epoch());
            let old = handle.swap(Arc::new(geoip));
            metrics.observe_geoip_reload(true);
            file_watch::retire(old).await;
            true
        }
        Ok(Err(e)) => {
            tracing::error!(
                "GeoIP reload ({why}) refused, the previous database keeps serving: {e}"
            );
            metrics.observe_geoip_reload(false);
            false
        }
        Err(e) => {
            tracing::error!("GeoIP reload ({why}) failed: {e}");
            metrics.observe_geoip_reload(false);
            false
        }
    }
}

/// Watches `path` until `shutdown`: reloads when it changed and settled, and on SIGHUP (which is
/// registered when this is called).
pub fn watch(
    path: PathBuf,
    handle: GeoIpHandle,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    let file = path.clone();
    file_watch::watch(path, "GeoIP database", interval, shutdown, move |why| {
        let (file, handle, metrics) = (file.clone(), handle.clone(), metrics.clone());
        async move {
            reload(&file, &handle, &metrics, why).await;
        }
    })
}
