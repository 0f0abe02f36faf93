//! The one integration-test binary: the real server over HTTP, and the real databases.

mod admin;
mod allocations;
mod browser;
mod cli;
mod console;
mod decisions;
mod delivery;
mod edge;
mod full_disk;
mod harness;
mod nodes;
mod observability;
mod reload;
mod server;
mod sinks;
mod state;
mod stats;
mod support;
mod tls;
mod tracking;
mod upgrade;
mod user_agents;

/// Counts allocations per thread, for `allocations`; otherwise the system allocator.
#[global_allocator]
static ALLOCATOR: allocations::Counting = allocations::Counting;
