//! Zero heap allocations per decision in the steady state, counted by a global allocator.
//!
//! The allocator (in `main.rs`) counts allocations per thread, so tests running in parallel do not
//! disturb the count. "Steady state": User-Agents already cached, statistics keys already present
//! for this minute. The HTTP stack (hyper's request and response maps) is outside this count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue, USER_AGENT};
use rotator::campaigns::Catalogue;
use rotator::config::Config;
use rotator::decision::Decider;
use rotator::metrics::Metrics;
use rotator::stats::aggregator::{Aggregator, current_minute};
use rotator::visitor::geoip::GeoIp;
use rotator::visitor::user_agent::UserAgentParser;

use crate::harness::repo;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting allocations of the current thread.
pub struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn a_decision_allocates_nothing_in_the_steady_state() {
    let config = Config::default();
    let geoip = Arc::new(ArcSwap::from_pointee(
        GeoIp::open(&repo().join("data/country.mmdb")).unwrap(),
    ));
    let agents = UserAgentParser::new().unwrap();
    let catalogue = Arc::new(ArcSwap::from_pointee(
        Catalogue::load(&repo().join("campaigns.toml")).unwrap(),
    ));
    let stats = Arc::new(Aggregator::new(4));
    let decider = Decider::new(
        &config,
        geoip,
        agents,
        catalogue,
        Some(stats),
        Metrics::new(),
    )
    .unwrap();

    let tsv = std::fs::read_to_string(
        Path::new(&repo()).join("tests/data/traffic/synthetic-requests.tsv"),
    )
    .unwrap();
    let forwarded = HeaderName::from_static("x-forwarded-for");
    let requests: Vec<HeaderMap> = tsv
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (ip, ua) = (f.next()?, f.next()?);
            let mut h = HeaderMap::new();
            h.insert(forwarded.clone(), HeaderValue::from_str(ip).ok()?);
            h.insert(USER_AGENT, HeaderValue::from_str(ua).ok()?);
            Some(h)
        })
        .collect();
    assert!(requests.len() > 9_000);
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    // The counter counts: one allocation is seen.
    let before = allocations();
    std::hint::black_box(Vec::<u8>::with_capacity(64));
    assert_eq!(allocations() - before, 1);
    // A minute boundary creates new statistics keys (and may grow the map): retry once.
    for _ in 0..2 {
        let minute = current_minute();
        for h in &requests {
            decider.decide(peer, h);
        }
        let before = allocations();
        for h in &requests {
            std::hint::black_box(decider.decide(peer, h));
        }
        let allocated = allocations() - before;
        if current_minute() == minute {
            assert_eq!(
                allocated,
                0,
                "{allocated} allocations in {} warm decisions",
                requests.len()
            );
            return;
        }
    }
    panic!("two minute boundaries in a row?");
}
