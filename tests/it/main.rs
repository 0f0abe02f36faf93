//! The one integration-test binary: the real server over HTTP, and the real databases.

mod harness;
mod server;
mod sinks;
mod stats;
mod support;
