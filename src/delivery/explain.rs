//! The delivery engine as `rotator explain` sees it: the state backend opened without changing
//! anything, one [`Delivery::look`] so spent budgets and flights are known, and one visitor's
//! views against each cap.
//!
//! Redis is read directly (explain never leases, refunds or reserves). The local backend's
//! folder is locked by a running server, and opening it would rewrite its journals, so explain
//! reads a copy of the journals instead, taken in a temporary folder: both are only appended
//! to (a torn last record is ignored) and compacted by an atomic rename, so a copy is always a
//! consistent moment of the server's state (for budgets: what was granted, which includes
//! leases a running node holds but has not spent yet; for caps: the views journalled, which a
//! running node writes once a second).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::identity::{Identifier, Keys};
use super::state::{State, StateError, StateWriter};
use super::{Delivery, Options};
use crate::campaigns::CatalogueHandle;
use crate::config::{Config, StateBackend};
use crate::metrics::Metrics;
use crate::tracking::{Seen, Signer};

/// Journals of the local backend that explain copies.
const JOURNALS: [&str; 2] = ["budget", "caps"];

/// An engine opened for explaining; [`Explaining::close`] removes the copy it read.
pub struct Explaining {
    /// The engine (state read, one look taken).
    pub delivery: Arc<Delivery>,
    /// Lines for stderr: what explain could not know.
    pub notes: Vec<String>,
    writer: StateWriter,
    copy: Option<PathBuf>,
}

/// Opens `config`'s state backend for reading and looks at it at `now`.
pub async fn open(
    config: &Config,
    catalogue: CatalogueHandle,
    now: i64,
) -> Result<Explaining, StateError> {
    let mut state_config = config.state.clone();
    let mut copy = None;
    if state_config.backend == StateBackend::Local {
        let dir = std::env::temp_dir().join(format!(
            "rotator-explain-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        copy = Some(dir.clone());
        for name in JOURNALS {
            let from = config.state.dir.join(name);
            match std::fs::copy(&from, dir.join(name)) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(StateError::Io { path: from, source });
                }
            }
        }
        state_config.dir = dir;
    }
    let metrics = Metrics::new();
    let opened = State::open(&state_config, Arc::new(Seen::new(16)), metrics.clone(), now).await;
    let (state, writer) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            if let Some(dir) = &copy {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(e);
        }
    };
    // Without a tracking key no view was ever counted under any identity: a throwaway key
    // then finds none, which is the truth.
    let signer = match Signer::check(&config.tracking) {
        Ok(true) => Signer::load(&config.tracking).ok(),
        _ => None,
    };
    let signer = match signer {
        Some(s) => s,
        None => Signer::from_keys(&crate::tracking::new_id().repeat(3), &[]).map_err(|e| {
            StateError::Io {
                path: config.tracking.secret_file.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?,
    };
    let delivery = Arc::new(Delivery::new(
        Arc::new(state),
        Identifier::new(&config.identity, &signer),
        catalogue,
        metrics,
        Options::from_config(&config.state, &config.tracking),
    ));
    let mut notes = Vec::new();
    if let Err(e) = delivery.look(now).await {
        notes.push(format!(
            "state backend ({}) did not answer ({e}): spent budgets are not shown",
            delivery_backend(config.state.backend)
        ));
    }
    Ok(Explaining {
        delivery,
        notes,
        writer,
        copy,
    })
}

fn delivery_backend(backend: StateBackend) -> &'static str {
    match backend {
        StateBackend::Local => "local",
        StateBackend::Redis => "redis",
    }
}

impl Explaining {
    /// The views of the visitor known by `keys` counting at `now`, by capped campaign id.
    pub async fn views(&mut self, keys: &Keys, now: i64) -> HashMap<u32, u32> {
        let mut views = HashMap::new();
        if keys.is_empty() {
            return views;
        }
        let gate = self.delivery.gate();
        let capped: Vec<u32> = gate
            .limited_campaigns()
            .filter(|(_, c, _)| c.delivery().frequency_cap.is_some())
            .map(|(_, c, _)| c.id)
            .collect();
        for id in capped {
            match self.delivery.state().views(&keys.0, id, now).await {
                Ok(n) => {
                    views.insert(id, n);
                }
                Err(e) => {
                    self.notes
                        .push(format!("views of campaign {id} not read ({e})"));
                }
            }
        }
        views
    }

    /// Closes the state and removes the copy explain read.
    pub fn close(self) {
        self.writer.stop();
        if let Some(dir) = self.copy {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
