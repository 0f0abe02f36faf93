//! Zero heap allocations per decision in the steady state, counted by a global allocator; and
//! how much memory loading campaigns takes at its peak.
//!
//! The allocator (in `main.rs`) counts allocations and live bytes per thread, so tests running in
//! parallel do not disturb the count. "Steady state": User-Agents already cached, statistics keys
//! already present for this minute. The HTTP stack (hyper's request and response maps) is outside
//! this count.

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
    /// Bytes allocated minus bytes freed by this thread (negative when it frees what another
    /// thread allocated), and the highest value since [`reset_peak`].
    static LIVE: Cell<(i64, i64)> = const { Cell::new((0, 0)) };
}

fn add_live(bytes: i64) {
    LIVE.with(|l| {
        let (live, peak) = l.get();
        l.set((live + bytes, peak.max(live + bytes)));
    });
}

/// The system allocator, counting allocations and live bytes of the current thread.
pub struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        add_live(layout.size() as i64);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add_live(-(layout.size() as i64));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        add_live(new_size as i64 - layout.size() as i64);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// This thread's live bytes now.
fn live_bytes() -> i64 {
    LIVE.with(|l| l.get().0)
}

/// Starts a new peak at the current live bytes; returns them.
fn reset_peak() -> i64 {
    LIVE.with(|l| {
        let (live, _) = l.get();
        l.set((live, live));
        live
    })
}

/// The highest live bytes since [`reset_peak`].
fn peak_bytes() -> i64 {
    LIVE.with(|l| l.get().1)
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
    let decider = std::sync::Arc::new(
        Decider::new(
            &config,
            geoip,
            agents,
            catalogue,
            Some(stats),
            Metrics::new(),
        )
        .unwrap(),
    );

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

/// `n` campaigns in the shape `scripts/gen-campaigns` writes: names, targeting tables with one to
/// three values per list or none, 5 % inactive.
fn generated_campaigns(n: usize) -> String {
    const COUNTRIES: &[&str] = &["US", "DE", "RU", "GB", "FR", "JP", "BR", "IN"];
    const BROWSERS: &[&str] = &["Chrome", "Firefox", "Safari", "Chrome Mobile", "Edge"];
    const OSES: &[&str] = &["Windows", "Android", "iOS", "Mac OS X", "Linux"];
    const DEVICES: &[&str] = &["desktop", "mobile", "tablet", "other"];
    let mut rng = fastrand::Rng::with_seed(42);
    let mut text = String::from("# generated\n");
    for id in 1..=n {
        text.push_str(&format!(
            "\n[[campaign]]\nid = {id}\nname = \"generated {id}\"\n\
             url = \"https://ads.example.com/c/{id}\"\nbid = {:.2}\n",
            0.05 + rng.f64() * 4.95
        ));
        if rng.u8(..100) < 5 {
            text.push_str("active = false\n");
        }
        text.push_str("[campaign.targeting]\n");
        for (key, values) in [
            ("countries", COUNTRIES),
            ("browsers", BROWSERS),
            ("os", OSES),
            ("devices", DEVICES),
        ] {
            if rng.u8(..100) < 35 {
                continue;
            }
            let start = rng.usize(..values.len());
            let chosen: Vec<String> = (0..rng.usize(1..=3))
                .map(|i| format!("{:?}", values[(start + i) % values.len()]))
                .collect();
            text.push_str(&format!("{key} = [{}]\n", chosen.join(", ")));
        }
    }
    text
}

/// Issue 8, item 6: `toml` turns a whole document into tokens and a tree of spanned values before
/// deserialising it, some 35 bytes per byte of text (over 700 MB for 100,000 campaigns). Loading
/// now parses one campaign at a time, so its peak is what the catalogue keeps plus a little.
#[test]
fn loading_campaigns_peaks_near_what_the_catalogue_keeps() {
    let text = generated_campaigns(20_000);
    let start = reset_peak();
    let campaigns = rotator::campaigns::file::parse(&text).unwrap();
    assert_eq!(campaigns.campaigns.len(), 20_000);
    let catalogue = Catalogue::new(campaigns, "generated.toml".into());
    let kept = live_bytes() - start;
    let peak = peak_bytes() - start;
    assert_eq!(catalogue.campaigns().len(), 20_000);
    let mb = |b: i64| b as f64 / 1e6;
    assert!(
        peak < 2 * kept,
        "{} MB of text: the catalogue keeps {:.1} MB, loading peaked at {:.1} MB",
        mb(text.len() as i64),
        mb(kept),
        mb(peak)
    );
}
