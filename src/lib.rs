//! rotator: a fast, self-hosted ad server.
//!
//! For each visitor's request rotator works out who is asking ([`visitor`]: client IP behind trusted
//! proxies, User-Agent, country), runs an auction over the campaigns that target this visitor
//! ([`auction`] over the immutable [`campaigns::Catalogue`]), redirects the visitor to the winner
//! ([`http`]) and counts the decision ([`stats`], [`metrics`]).
//!
//! The request path only reads immutable snapshots (the catalogue and the GeoIP database are
//! swapped whole on reload) and writes to per-thread counters; everything slow (file loading,
//! database writes) happens off it.
//! [`decision::Decider`] is the one place where a request becomes a decision, and
//! [`decision::Decider::record`] the one seam where each decision is counted.

pub mod admin;
pub mod atomic_file;
pub mod auction;
pub mod campaigns;
pub mod config;
pub mod decision;
pub mod delivery;
pub mod file_watch;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod stats;
pub mod tracking;
pub mod visitor;
