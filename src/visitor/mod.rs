//! What we know about who is asking: address, User-Agent, country.
//!
//! Each part is a separate module with no knowledge of HTTP beyond header values, so `explain`
//! and the benchmarks can build a [`Visitor`] from plain strings.

pub mod bots;
pub mod client_ip;
pub mod device;
pub mod families;
pub mod geoip;
pub mod symbol;
pub mod user_agent;

use std::net::IpAddr;

use geoip::Country;
use user_agent::UserAgent;

/// One visitor, as the auction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visitor {
    /// The client address (after trusted-proxy rules).
    pub ip: IpAddr,
    /// Country, when the database knows it.
    pub country: Option<Country>,
    /// What the User-Agent says.
    pub agent: UserAgent,
}
