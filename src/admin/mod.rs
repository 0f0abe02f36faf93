//! The admin listener: an authenticated REST API (`/api/v1`, [`api`]) over the campaigns file,
//! and the web console (`console`) on the same listener.
//!
//! The parts, each reusable by the console:
//! - [`tokens`]: the tokens file and `rotator token`; [`auth::Gate`]: bearer check and the
//!   per-client failure limit; [`session::SessionStore`]: console sign-in, cookie, CSRF.
//! - [`edit::CampaignsFile`]: the one writer of the campaigns file (merge with `toml_edit`,
//!   per-entry ETags, loader validation, atomic write, immediate reload).
//! - [`Admin::write`]: an edit plus its audit line ([`audit`]); every write goes through it.
//! - [`reports`]: `rotator report`'s query and figures, typed.
//!
//! Every response of the listener gets [`secure_headers`].

pub mod api;
pub mod audit;
pub mod auth;
mod console;
pub mod edit;
mod entries;
pub mod files;
pub mod model;
pub mod openapi;
pub mod reports;
pub mod session;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, HeaderName, HeaderValue};
use hyper::{Request, Response};

use crate::campaigns::CatalogueHandle;
use crate::config::Config;
use crate::http::Body;
use crate::http::server::{Handler, Reply};
use crate::metrics::Metrics;
use crate::stats::sinks::Sink;
use audit::{AuditLog, Record, Target};
use auth::Gate;
use edit::{CampaignsFile, EditError, Edited, Snapshot};
use session::SessionStore;
use tokens::{Principal, TokenStore};

/// Connections the admin listener keeps open at most (a few people and scripts).
pub const MAX_CONNECTIONS: usize = 256;

/// Everything the admin listener serves from.
pub struct Admin {
    /// Tokens and the failure limiter.
    pub gate: Gate,
    /// Console sessions.
    pub sessions: SessionStore,
    /// The campaigns file.
    pub campaigns: CampaignsFile,
    /// The audit log.
    pub audit: AuditLog,
    /// The statistics sink (reports, status).
    pub sink: Sink,
    /// The server's metrics (the statistics sink's readiness).
    pub metrics: Arc<Metrics>,
    /// The delivery state backend's name (`local`, `redis`), when the server has one.
    pub state_backend: Option<&'static str>,
    /// Where browsers reach the ad listener (the console's tags): `[tracking] public_url`, else
    /// `http://` and `[server] listen` (main.rs puts the bound address there).
    pub ads_url: String,
    /// The delivery engine (budgets, pacing), when the server runs one: the console's "out of
    /// budget" status asks it (main.rs sets it).
    pub delivery: Option<Arc<crate::delivery::Delivery>>,
}

impl Admin {
    /// Builds the admin side of a server from its checked config. `tls` says whether the
    /// listener serves TLS (session cookies then carry `Secure`).
    pub fn new(
        config: &Config,
        catalogue: CatalogueHandle,
        metrics: Arc<Metrics>,
        tls: bool,
    ) -> Result<Admin, crate::stats::sinks::SinkError> {
        let tokens = TokenStore::open(config.admin.tokens_file.clone());
        if tokens.count() == 0 {
            tracing::warn!(
                "no admin tokens in {}: nobody can use the admin listener until \
                 `rotator token create --role admin` makes one",
                config.admin.tokens_file.display()
            );
        }
        Ok(Admin {
            gate: Gate::new(tokens),
            sessions: SessionStore::new(tls),
            campaigns: CampaignsFile::new(
                config.campaigns.file.clone(),
                catalogue,
                metrics.clone(),
            ),
            audit: AuditLog::new(config.admin.audit_log.clone()),
            sink: Sink::open(&config.stats)?,
            metrics,
            state_backend: None,
            ads_url: if config.tracking.public_url.is_empty() {
                format!("http://{}", config.server.listen)
            } else {
                config.tracking.public_url.clone()
            },
            delivery: None,
        })
    }

    /// Applies `change` to the campaigns file for `who` (who must be allowed to write: the
    /// caller checks the role) and appends the audit line (`method` and `path` name the request
    /// or the console's action).
    pub async fn write<F>(
        &self,
        who: &Principal,
        method: &str,
        path: &str,
        target: Target,
        change: F,
    ) -> Result<Edited, EditError>
    where
        F: FnOnce(&mut Snapshot) -> Result<Edited, EditError> + Send + 'static,
    {
        let (edited, _writer) = self.campaigns.edit(change).await?;
        let record = Record::new(who, method, path, &target, &edited.before, &edited.after);
        if let Err(e) = self.audit.append(&record) {
            tracing::error!(
                "audit log {}: cannot append ({e}); the write itself was made: {}",
                self.audit.path().display(),
                serde_json::to_string(&record).unwrap_or_default()
            );
        }
        Ok(edited)
    }
}

/// The listener's handler: `/api/v1/...` to the API; everything else to the web console.
pub struct AdminListener(pub Arc<Admin>);

impl Handler for AdminListener {
    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let admin = self.0.clone();
        Reply::Later(Box::pin(async move {
            let mut response = if console::owns(req.uri().path()) {
                console::answer(&admin, req, peer).await
            } else {
                api::answer(&admin, req, peer).await
            };
            secure_headers(&mut response);
            response
        }))
    }
}

/// Headers every admin response carries: nothing cached, nothing sniffed, never framed, no
/// referrer leaked. (The console sets its own `Content-Security-Policy` and `Referrer-Policy:
/// same-origin` for its pages, and the creative preview its own `X-Frame-Options: SAMEORIGIN`.)
pub fn secure_headers(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        headers
            .entry(HeaderName::from_static(name))
            .or_insert(HeaderValue::from_static(value));
    }
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(HeaderName::from_static("content-security-policy"))
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
}
