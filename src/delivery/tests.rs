//! The engine over the local backend, with time driven by the tests.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;

use super::identity::{Identity, LazyIdentity};
use super::*;
use crate::campaigns::{Catalogue, file};
use crate::config::{IdentityConfig, OnOutage};
use crate::tracking::{EventKind, Seen, Signer};
use crate::visitor::Visitor;
use crate::visitor::user_agent::UserAgentParser;

static UA: LazyLock<Arc<UserAgentParser>> = LazyLock::new(|| UserAgentParser::new().unwrap());

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

/// 2026-12-01T00:00:00Z.
const DAY: i64 = 1_796_083_200;

struct Engine {
    delivery: Arc<Delivery>,
    seen: Arc<Seen>,
    _writer: state::StateWriter,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn engine(campaigns: &str) -> Engine {
    engine_with(campaigns, 1_000_000, OnOutage::Hold)
}

/// An engine whose caps memory holds `max_cap_entries` pairs, with `on_outage`.
fn engine_with(campaigns: &str, max_cap_entries: u64, on_outage: OnOutage) -> Engine {
    let dir = std::env::temp_dir().join(format!(
        "rotator-delivery-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let catalogue = Catalogue::new(file::parse(campaigns).unwrap(), "test.toml".into());
    let handle = Arc::new(ArcSwap::from_pointee(catalogue));
    let metrics = Metrics::new();
    let seen = Arc::new(Seen::new(1_000_000));
    let (state, writer) =
        state::LocalState::open(&dir, max_cap_entries, seen.clone(), metrics.clone(), DAY).unwrap();
    let signer = Signer::from_keys(&[9; 32], &[]).unwrap();
    let delivery = Delivery::new(
        Arc::new(State::Local(state)),
        Identifier::new(&IdentityConfig::default(), &signer),
        handle,
        metrics,
        Options {
            lease_seconds: 5,
            on_outage,
            impression_ttl: 60,
        },
    );
    Engine {
        delivery: Arc::new(delivery),
        seen,
        _writer: writer,
        _dir: TempDir(dir),
    }
}

fn visitor() -> Visitor {
    Visitor {
        ip: IpAddr::from([192, 0, 2, 1]),
        country: None,
        agent: UA.parse(CHROME),
    }
}

/// One `GET /ad` decision: the winner's id (0 for none).
fn decide(delivery: &Arc<Delivery>, keys: &Keys, now: i64) -> u32 {
    let gate = delivery.gate();
    let make = || Identity {
        keys: keys.clone(),
        set_cookie: None,
    };
    let lazy = LazyIdentity::new(&make);
    let id = crate::tracking::new_id();
    let candidates = gate.candidates(
        &visitor(),
        None,
        &[],
        Some(&lazy),
        &delivery.caps(id, now),
        |_| {},
    );
    let won = match delivery.settle(&gate, candidates, keys, id, now) {
        Settle::Done(won) => won,
        Settle::Pending(_) => panic!("the local backend answers at once"),
    };
    won.and_then(|w| gate.catalogue.get(w.position))
        .map_or(0, |c| c.id)
}

const BUDGETED: &str = r#"
[[campaign]]
id = 1
url = "https://a.example"
bid = 5.0
[campaign.budget]
daily = 1.0
pacing = "asap"

[[campaign]]
id = 2
url = "https://b.example"
bid = 1.0
"#;

#[tokio::test]
async fn issue11_daily_budget_is_spent_exactly_then_the_next_bid_wins() {
    let e = engine(BUDGETED);
    let keys = Keys::default();
    let (mut first, mut second) = (0u32, 0u32);
    // 5.00 CPM = 5,000 micros an impression: 1.00 buys exactly 200.
    for tick in 0..200 {
        let now = DAY + 3_600 + tick;
        e.delivery.tick(now).await;
        for _ in 0..50 {
            match decide(&e.delivery, &keys, now) {
                1 => first += 1,
                2 => second += 1,
                other => panic!("campaign {other}"),
            }
        }
    }
    assert_eq!(
        first, 200,
        "the whole daily budget and not one impression more"
    );
    assert!(second > 0);
    let (spent_day, _) = e.delivery.state().spent(1, 20_788).await.unwrap();
    assert_eq!(spent_day, 1_000_000);
    let gate = e.delivery.gate();
    let campaign = gate
        .catalogue
        .campaigns()
        .iter()
        .find(|c| c.id == 1)
        .unwrap();
    assert_eq!(
        e.delivery.reason(campaign, DAY + 3_800, None).as_deref(),
        Some("budget: daily 1.00 of 1.00 spent")
    );
    // The next day the budget is there again.
    e.delivery.tick(DAY + 86_400 + 10).await;
    e.delivery.tick(DAY + 86_400 + 11).await;
    assert_eq!(decide(&e.delivery, &keys, DAY + 86_400 + 11), 1);
}

/// A reload that removes a budgeted campaign gives its unspent lease back at the next tick.
#[tokio::test]
async fn issue11_a_removed_campaign_gives_its_lease_back() {
    let e = engine(&BUDGETED.replace("daily = 1.0", "daily = 100.0"));
    let keys = Keys::default();
    let now = DAY + 3_600;
    e.delivery.tick(now).await;
    for _ in 0..3 {
        assert_eq!(decide(&e.delivery, &keys, now), 1);
    }
    let day = day_bounds(&budget(&e, 1), now).0;
    let (leased, _) = e.delivery.state().spent(1, day).await.unwrap();
    assert!(
        leased > 15_000,
        "a lease beyond the three impressions: {leased}"
    );
    let without = BUDGETED.split("\n[[campaign]]\nid = 2").nth(1).unwrap();
    let catalogue = Catalogue::new(
        file::parse(&format!("[[campaign]]\nid = 2{without}")).unwrap(),
        "test.toml".into(),
    );
    e.delivery.catalogue.store(Arc::new(catalogue));
    assert_eq!(decide(&e.delivery, &keys, now), 2);
    e.delivery.tick(now + 1).await;
    let (spent, _) = e.delivery.state().spent(1, day).await.unwrap();
    assert_eq!(
        spent, 15_000,
        "the three impressions shown stay spent, the rest came back"
    );
}

fn budget(e: &Engine, id: u32) -> crate::campaigns::budget::Budget {
    let gate = e.delivery.gate();
    let campaign = gate.catalogue.campaigns().iter().find(|c| c.id == id);
    campaign
        .and_then(|c| c.delivery().budget.clone())
        .expect("a budgeted campaign")
}

/// Leases are whole impressions: a remainder could never be spent, and several nodes would
/// each keep one when a budget runs out.
#[tokio::test]
async fn issue11_leases_are_whole_units_of_spend() {
    let e = engine(&BUDGETED.replace("daily = 1.0", "daily = 100.0"));
    let keys = Keys::default();
    for tick in 0..40 {
        let now = DAY + 3_600 + tick;
        e.delivery.tick(now).await;
        let gate = e.delivery.gate();
        let (_, _, runtime) = gate.limited_campaigns().next().unwrap();
        let balance = runtime.balance.load(Ordering::Acquire);
        assert_eq!(
            balance % 5_000,
            0,
            "tick {tick}: a lease of {balance} micros"
        );
        // Irregular traffic: the spend rate that sizes leases is no multiple of the cost.
        for _ in 0..(tick * 7 % 13) {
            decide(&e.delivery, &keys, now);
        }
    }
}

const CAPPED: &str = r#"
[[campaign]]
id = 1
url = "https://a.example"
bid = 5.0
[campaign.frequency_cap]
impressions = 3
per = "1h"

[[campaign]]
id = 2
url = "https://b.example"
bid = 1.0
"#;

const CAPPED_BUDGETED: &str = r#"
[[campaign]]
id = 1
url = "https://a.example"
bid = 5.0
[campaign.budget]
daily = 1.0
pacing = "asap"
[campaign.frequency_cap]
impressions = 1
per = "1h"

[[campaign]]
id = 2
url = "https://b.example"
bid = 1.0
"#;

/// On the local backend the gate reserves a capped candidate's view as it meets it: a visitor
/// at the cap is refused there, the lease charged for the refused candidate comes back, and the
/// next bid wins.
#[tokio::test]
async fn issue11_a_view_refused_by_the_local_cap_gives_its_charge_back() {
    let e = engine(CAPPED_BUDGETED);
    let keys = Keys(smallvec::smallvec![44]);
    e.delivery.tick(DAY).await;
    let gate = e.delivery.gate();
    let (_, _, runtime) = gate.limited_campaigns().next().unwrap();
    let balance = || runtime.balance.load(Ordering::Acquire);
    let leased = balance();
    assert!(
        leased >= 5_000,
        "a lease of at least one impression: {leased}"
    );
    assert_eq!(decide(&e.delivery, &keys, DAY), 1);
    assert_eq!(balance(), leased - 5_000, "the shown view is charged");
    assert_eq!(
        decide(&e.delivery, &keys, DAY + 1),
        2,
        "capped: the next bid"
    );
    assert_eq!(
        balance(),
        leased - 5_000,
        "the refused candidate's charge came back"
    );
    let other = Keys(smallvec::smallvec![45]);
    assert_eq!(decide(&e.delivery, &other, DAY + 1), 1, "another visitor");
}

/// When the local caps memory is full, a capped campaign follows `on_outage`: `hold` leaves it
/// out for the next bid, `serve` shows it without counting a view.
#[tokio::test]
async fn issue11_a_full_local_caps_memory_follows_on_outage() {
    // 64 shards of one pair each, all taken by visitors `shard << 58`.
    let fill = |e: &Engine| {
        for shard in 0..64u64 {
            assert_eq!(
                decide(&e.delivery, &Keys(smallvec::smallvec![shard << 58]), DAY),
                1
            );
        }
    };
    let newcomer = Keys(smallvec::smallvec![(7 << 58) | 1]);
    let held = engine_with(CAPPED, 64, OnOutage::Hold);
    held.delivery.tick(DAY).await;
    fill(&held);
    assert_eq!(
        decide(&held.delivery, &newcomer, DAY),
        2,
        "hold: the next bid"
    );
    let served = engine_with(CAPPED, 64, OnOutage::Serve);
    served.delivery.tick(DAY).await;
    fill(&served);
    for _ in 0..5 {
        assert_eq!(decide(&served.delivery, &newcomer, DAY), 1, "serve: shown");
    }
    let state = served.delivery.state();
    assert_eq!(
        state.views(&newcomer.0, 1, DAY).await.unwrap(),
        0,
        "no view counted"
    );
}

#[tokio::test]
async fn issue11_frequency_cap_holds_per_visitor_in_a_sliding_window() {
    let e = engine(CAPPED);
    let (a, b) = (Keys(smallvec::smallvec![11]), Keys(smallvec::smallvec![22]));
    e.delivery.tick(DAY).await;
    let wins = |keys: &Keys, now: i64, n: usize| {
        (0..n)
            .map(|_| decide(&e.delivery, keys, now))
            .filter(|id| *id == 1)
            .count()
    };
    assert_eq!(wins(&a, DAY, 10), 3, "3 of 10 for visitor a");
    assert_eq!(
        wins(&b, DAY + 1_800, 10),
        3,
        "another visitor has their own cap"
    );
    assert_eq!(wins(&a, DAY + 3_599, 5), 0, "still inside a's window");
    // A view counts for exactly one hour after it: the window slides.
    assert_eq!(wins(&a, DAY + 3_600, 5), 3);
    let gate = e.delivery.gate();
    let campaign = gate
        .catalogue
        .campaigns()
        .iter()
        .find(|c| c.id == 1)
        .unwrap();
    assert_eq!(
        e.delivery.reason(campaign, DAY, Some(3)).as_deref(),
        Some("frequency cap: 3 of 3 in 1h")
    );
}

const SLOT: &str = r#"
[[placement]]
id = "top"
sizes = ["728x90"]

[[campaign]]
id = 1
url = "https://a.example"
bid = 5.0
[campaign.budget]
total = 100.0
pacing = "asap"
[campaign.frequency_cap]
impressions = 1
per = "24h"
[[campaign.creative]]
id = 10
kind = "image"
size = "728x90"
image_url = "https://cdn.example/a.png"
"#;

#[tokio::test]
async fn issue11_a_slot_reservation_is_given_back_when_its_impression_never_comes() {
    let e = engine(SLOT);
    let keys = Keys(smallvec::smallvec![33]);
    e.delivery.tick(DAY).await;
    let gate = e.delivery.gate();
    let make = || Identity {
        keys: keys.clone(),
        set_cookie: None,
    };
    let decide_slot = |now| {
        let lazy = LazyIdentity::new(&make);
        let id = crate::tracking::new_id();
        let candidates = gate.candidates(
            &visitor(),
            Some(0),
            &[],
            Some(&lazy),
            &e.delivery.caps(id, now),
            |_| {},
        );
        let Settle::Done(won) = e.delivery.settle(&gate, candidates, &keys, id, now) else {
            panic!("local answers at once");
        };
        if let Some(w) = &won {
            e.delivery.hold(&gate, w, &keys, id, now);
        }
        won.map(|_| id)
    };
    let shown = decide_slot(DAY).expect("the first view");
    assert!(decide_slot(DAY + 1).is_none(), "capped at 1 while reserved");
    let kept = decide_slot(DAY + 86_400).expect("a day later");
    // The second decision's impression is counted; the first one's never is.
    e.seen.first(&kept, EventKind::Impression, u32::MAX, 0);
    let state = e.delivery.state();
    let views = |now| async move { state.views(&[33], 1, now).await.unwrap() };
    assert_eq!(views(DAY + 86_400).await, 1);
    // After the impression URLs expired (60 s here), the unconfirmed decision's charge and view
    // are given back; the confirmed one keeps both.
    e.delivery.tick(DAY + 86_400 + 61).await;
    assert_eq!(views(DAY + 86_400 + 61).await, 1);
    let _ = shown;
    let total_spent = e.delivery.state().spent(1, 0).await.unwrap().1;
    let remaining_lease = e
        .delivery
        .gate()
        .runtime(0)
        .map(|r| r.balance.load(Ordering::Acquire))
        .unwrap();
    // Granted = held in this node's lease + one impression (5,000) confirmed.
    assert_eq!(total_spent, remaining_lease as u64 + 5_000);
}

#[tokio::test]
async fn issue11_flight_outside_is_left_out_with_its_reason() {
    let e = engine(
        r#"
[[campaign]]
id = 1
url = "https://a.example"
bid = 5.0
start = 2026-12-05T00:00:00Z
end = 2026-12-06

[[campaign]]
id = 2
url = "https://b.example"
bid = 1.0
"#,
    );
    let keys = Keys::default();
    e.delivery.tick(DAY).await;
    assert_eq!(decide(&e.delivery, &keys, DAY), 2);
    let gate = e.delivery.gate();
    let campaign = gate
        .catalogue
        .campaigns()
        .iter()
        .find(|c| c.id == 1)
        .unwrap();
    assert_eq!(
        e.delivery.reason(campaign, DAY, None).as_deref(),
        Some("flight: starts 2026-12-05 00:00:00 UTC")
    );
    e.delivery.tick(DAY + 4 * 86_400).await;
    assert_eq!(decide(&e.delivery, &keys, DAY + 4 * 86_400), 1);
    e.delivery.tick(DAY + 6 * 86_400).await;
    assert_eq!(decide(&e.delivery, &keys, DAY + 6 * 86_400), 2);
    assert_eq!(
        e.delivery
            .reason(campaign, DAY + 6 * 86_400, None)
            .as_deref(),
        Some("flight: ended 2026-12-06 23:59:59 UTC")
    );
}

/// A flight that has not started never wins, not even before the first tick or in the moment
/// between a reload that adds (or moves) it and the next tick.
#[tokio::test]
async fn issue11_flight_not_started_never_wins_before_a_tick() {
    let later = r#"
[[campaign]]
id = 1
url = "https://a.example"
bid = 5.0
start = 2026-12-05T00:00:00Z

[[campaign]]
id = 2
url = "https://b.example"
bid = 1.0
"#;
    let e = engine(later);
    let keys = Keys::default();
    assert_eq!(decide(&e.delivery, &keys, DAY), 2, "before the first tick");
    e.delivery.tick(DAY).await;
    assert_eq!(decide(&e.delivery, &keys, DAY), 2);
    // Reloaded: campaign 3 is new and starts later; campaign 1 now started long ago, and
    // keeps its state.
    let reloaded = later.replace("id = 2", "id = 3\nstart = 2026-12-09T00:00:00Z")
        + "\n[[campaign]]\nid = 4\nurl = \"https://d.example\"\nbid = 0.5\n";
    let reloaded = reloaded.replace(
        "start = 2026-12-05T00:00:00Z",
        "start = 2026-11-01T00:00:00Z",
    );
    let catalogue = Catalogue::new(file::parse(&reloaded).unwrap(), "test.toml".into());
    e.delivery.catalogue.store(Arc::new(catalogue));
    assert_eq!(decide(&e.delivery, &keys, DAY), 1, "started by the reload");
    let reloaded = reloaded.replace("bid = 5.0", "bid = 0.1");
    let catalogue = Catalogue::new(file::parse(&reloaded).unwrap(), "test.toml".into());
    e.delivery.catalogue.store(Arc::new(catalogue));
    for _ in 0..20 {
        assert_ne!(
            decide(&e.delivery, &keys, DAY),
            3,
            "a new campaign not started won"
        );
    }
}
