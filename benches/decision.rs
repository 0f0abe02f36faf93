//! Micro-benchmarks of the request path without HTTP: User-Agent parsing, GeoIP, the auction,
//! the statistics counter and the whole decision. `cargo bench --bench decision`.
//!
//! Visitors come from the synthetic traffic file (`$BENCH_TRAFFIC`, default
//! `tests/data/traffic/synthetic-requests.tsv`); campaigns are generated with a fixed seed.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue, USER_AGENT};

use rotator::auction;
use rotator::campaigns::{Catalogue, file};
use rotator::config::{Config, TrackingConfig};
use rotator::decision::{Decider, View};
use rotator::delivery::identity::Who;
use rotator::delivery::poll_once;
use rotator::metrics::Metrics;
use rotator::stats::aggregator::{Aggregator, RowKey, current_minute};
use rotator::tracking::{Claims, EventKind, Seen, Signer, Tracker};
use rotator::visitor::Visitor;
use rotator::visitor::geoip::{GeoIp, GeoIpHandle};
use rotator::visitor::user_agent::UserAgentParser;

const DEFAULT_TRAFFIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/traffic/synthetic-requests.tsv"
);
const GEOIP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/country.mmdb");

/// One row of the traffic file.
struct Row {
    ip: IpAddr,
    ua: String,
}

fn traffic() -> Vec<Row> {
    let path = std::env::var("BENCH_TRAFFIC").unwrap_or_else(|_| DEFAULT_TRAFFIC.into());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rows: Vec<Row> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let mut fields = l.split('\t');
            let ip = fields.next()?.parse().ok()?;
            let ua = fields.next().unwrap_or("").to_string();
            Some(Row { ip, ua })
        })
        .collect();
    assert!(!rows.is_empty(), "{path}: no rows");
    rows
}

/// `n` campaigns with mixed targeting: each list is empty ("anyone") about a third of the time,
/// otherwise one to three values; random bids; 5 % inactive.
fn campaigns_toml(n: usize) -> String {
    const COUNTRIES: &[&str] = &[
        "US", "DE", "RU", "GB", "FR", "JP", "BR", "IN", "CN", "CA", "AU", "NL", "ES", "IT", "PL",
        "UA", "TR", "KR", "MX", "AE", "SE", "SG", "ID", "VN",
    ];
    const BROWSERS: &[&str] = &[
        "Chrome",
        "Firefox",
        "Safari",
        "Chrome Mobile",
        "Edge",
        "Opera",
        "Samsung Internet",
        "Mobile Safari",
        "Chrome Mobile iOS",
        "Yandex Browser",
    ];
    const OSES: &[&str] = &[
        "Windows",
        "Android",
        "iOS",
        "Mac OS X",
        "Linux",
        "Chrome OS",
        "Ubuntu",
    ];
    const DEVICES: &[&str] = &["desktop", "mobile", "tablet", "other"];
    let mut rng = fastrand::Rng::with_seed(42);
    let mut pick = |list: &[&str]| -> String {
        if rng.u8(..100) < 35 {
            return "[]".into();
        }
        let k = rng.usize(1..=3);
        let mut chosen: Vec<&str> = Vec::with_capacity(k);
        while chosen.len() < k {
            let v = list[rng.usize(..list.len())];
            if !chosen.contains(&v) {
                chosen.push(v);
            }
        }
        let quoted: Vec<String> = chosen.iter().map(|v| format!("{v:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut text = String::new();
    let mut bids = fastrand::Rng::with_seed(7);
    for id in 1..=n {
        let countries = pick(COUNTRIES);
        let browsers = pick(BROWSERS);
        let os = pick(OSES);
        let devices = pick(DEVICES);
        text.push_str(&format!(
            "[[campaign]]\nid = {id}\nurl = \"https://ads.example.com/c/{id}\"\nbid = {:.2}\nactive = {}\n\
             targeting = {{ countries = {countries}, browsers = {browsers}, os = {os}, devices = {devices} }}\n",
            0.05 + bids.f64() * 4.95,
            bids.u8(..100) >= 5,
        ));
    }
    text
}

fn catalogue(n: usize) -> Catalogue {
    let campaigns = file::parse(&campaigns_toml(n)).unwrap_or_else(|e| panic!("{e:?}"));
    Catalogue::new(campaigns, format!("generated-{n}.toml").into())
}

/// The placements of `scripts/gen-campaigns --creatives`.
const PLACEMENTS: &str = "[[placement]]\nid = \"top-banner\"\nsizes = [\"728x90\"]\n\
    [[placement]]\nid = \"sidebar\"\nsizes = [\"300x250\"]\n\
    [[placement]]\nid = \"text-link\"\nkinds = [\"text\"]\n";

/// `n` campaigns as [`campaigns_toml`], each with one creative: a 728x90 or 300x250 image or a
/// text link, in turn; plus three placements.
fn catalogue_with_creatives(n: usize) -> Catalogue {
    let mut text = String::from(PLACEMENTS);
    for (i, section) in campaigns_toml(n)
        .split("[[campaign]]\n")
        .skip(1)
        .enumerate()
    {
        let id = i + 1;
        let creative = match id % 3 {
            0 => format!(
                "kind = \"image\"\nsize = \"728x90\"\nimage_url = \"https://cdn.example/{id}.png\""
            ),
            1 => format!(
                "kind = \"image\"\nsize = \"300x250\"\nimage_url = \"https://cdn.example/{id}.png\""
            ),
            _ => format!("kind = \"text\"\ntext = \"creative {id}\""),
        };
        text.push_str(&format!(
            "[[campaign]]\n{section}[[campaign.creative]]\nid = {id}\n{creative}\n"
        ));
    }
    let parsed = file::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    Catalogue::new(parsed, format!("generated-{n}-creatives.toml").into())
}

struct Fixture {
    rows: Vec<Row>,
    geoip: GeoIpHandle,
    agents: Arc<UserAgentParser>,
}

fn fixture() -> Fixture {
    Fixture {
        rows: traffic(),
        geoip: Arc::new(ArcSwap::from_pointee(
            GeoIp::open(Path::new(GEOIP)).expect("data/country.mmdb"),
        )),
        agents: UserAgentParser::new().expect("user-agent rules"),
    }
}

fn decider(f: &Fixture, campaigns: usize, stats: Option<Arc<Aggregator>>) -> Arc<Decider> {
    let handle = Arc::new(ArcSwap::from_pointee(catalogue(campaigns)));
    // The serving defaults: trusted proxies include 127.0.0.0/8, so X-Forwarded-For counts.
    let decider = Decider::new(
        &Config::default(),
        f.geoip.clone(),
        f.agents.clone(),
        handle,
        stats,
        Metrics::new(),
    )
    .expect("default config");
    Arc::new(decider)
}

/// Cycles through `items`, one per iteration.
fn cycle<'a, T>(items: &'a [T]) -> impl FnMut() -> &'a T {
    let mut i = 0;
    move || {
        i = if i + 1 == items.len() { 0 } else { i + 1 };
        &items[i]
    }
}

fn bench_user_agent(c: &mut Criterion, f: &Fixture) {
    let mut uas: Vec<&str> = f.rows.iter().map(|r| r.ua.as_str()).collect();
    uas.sort_unstable();
    uas.dedup();
    uas.retain(|u| !u.is_empty());
    let mut g = c.benchmark_group("user_agent");
    {
        let mut next = cycle(&uas);
        g.bench_function("parse_cold", |b| {
            b.iter(|| f.agents.parse(black_box(next())))
        });
    }
    for ua in &uas {
        f.agents.lookup(Some(ua));
    }
    {
        let mut next = cycle(&uas);
        g.bench_function("lookup_cached", |b| {
            b.iter(|| f.agents.lookup(Some(black_box(next()))))
        });
    }
    // A flood of unique agents (issue 9 item 2): each differs in its first bytes, so neither the
    // cache nor the parsed prefix helps; the rest is random text (letters, digits, spaces and
    // punctuation keep more regexes busy than repeated text); an ordinary length, then 16 KB
    // (the header limit).
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ;/()._-";
    let mut rng = fastrand::Rng::with_seed(9);
    for (name, len) in [
        ("lookup_unseen_120b", 120),
        ("lookup_unseen_16kb", 16 * 1024),
    ] {
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let mut ua = format!("Mozilla/5.0 (X11; flood {n}) ");
                    while ua.len() < len {
                        ua.push(CHARS[rng.usize(..CHARS.len())] as char);
                    }
                    ua
                },
                |ua| f.agents.lookup(Some(&ua)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_geoip(c: &mut Criterion, f: &Fixture) {
    let v4: Vec<IpAddr> = f
        .rows
        .iter()
        .map(|r| r.ip)
        .filter(|i| i.is_ipv4())
        .collect();
    let v6: Vec<IpAddr> = f
        .rows
        .iter()
        .map(|r| r.ip)
        .filter(|i| i.is_ipv6())
        .collect();
    let mut g = c.benchmark_group("geoip");
    for (name, ips) in [("ipv4", &v4), ("ipv6", &v6)] {
        if ips.is_empty() {
            continue;
        }
        let mut next = cycle(ips);
        g.bench_function(name, |b| {
            b.iter(|| f.geoip.load().country(black_box(*next())))
        });
    }
    g.finish();
}

fn visitors(f: &Fixture) -> Vec<Visitor> {
    let d = decider(f, 1, None);
    f.rows
        .iter()
        .map(|r| d.visitor(r.ip, Some(&r.ua)).0)
        .collect()
}

fn bench_auction(c: &mut Criterion, f: &Fixture) {
    let visitors = visitors(f);
    let mut g = c.benchmark_group("auction");
    for n in [3, 1_000, 10_000] {
        let cat = catalogue(n);
        let mut next = cycle(&visitors);
        g.bench_function(format!("campaigns_{n}"), |b| {
            b.iter(|| {
                matches!(
                    auction::run(&cat, black_box(next()), false),
                    auction::Outcome::Won(_)
                )
            })
        });
    }
    g.finish();
}

/// Three slots (`POST /v1/decisions`' auctions, without HTTP and tokens) against one `GET /ad`
/// auction, over the same campaigns.
fn bench_slots(c: &mut Criterion, f: &Fixture) {
    let visitors = visitors(f);
    let d = decider(f, 1, None);
    let mut g = c.benchmark_group("slots");
    for n in [1_000, 10_000] {
        let cat = Arc::new(catalogue_with_creatives(n));
        let view = View::plain(cat.clone());
        let slots: Vec<usize> = ["top-banner", "sidebar", "text-link"]
            .iter()
            .map(|p| cat.placement(p).expect("placement"))
            .collect();
        let mut next = cycle(&visitors);
        g.bench_function(format!("campaigns_{n}_one_ad"), |b| {
            b.iter(|| {
                matches!(
                    auction::run(&cat, black_box(next()), false),
                    auction::Outcome::Won(_)
                )
            })
        });
        let mut next = cycle(&visitors);
        g.bench_function(format!("campaigns_{n}_three_slots"), |b| {
            b.iter(|| {
                let deciding = d.decide_slots(&view, black_box(next()), &slots, Who::default());
                // Without delivery limits nothing waits: ready at the first poll.
                match poll_once(std::pin::pin!(deciding)) {
                    Poll::Ready(s) => s.wins.iter().filter(|w| w.is_some()).count(),
                    Poll::Pending => unreachable!("no state backend is asked"),
                }
            })
        });
    }
    g.finish();
}

/// Tracking: signing a decision's three URLs, and answering an impression URL the first time
/// (counted) and again (a duplicate), without HTTP.
fn bench_tracking(c: &mut Criterion, f: &Fixture) {
    let visitor = visitors(f).swap_remove(0);
    let tracker = Tracker::new(
        Signer::from_keys(&[7; 32], &[]).expect("key"),
        Arc::new(Seen::new(100_000_000)),
        &TrackingConfig::default(),
        Some(Arc::new(Aggregator::new(4))),
        Metrics::new(),
    );
    let placement = rotator::visitor::symbol::Sym::intern("top-banner");
    let now = rotator::tracking::now();
    let decision = || Claims::for_decision(&visitor, 7, 701, placement, now);
    let mut g = c.benchmark_group("tracking");
    g.bench_function("sign_three_urls", |b| {
        b.iter(|| tracker.urls_of(black_box("http://ads.example"), &decision()))
    });
    g.bench_function("impression_counted", |b| {
        b.iter_batched(
            || tracker.tokens(&decision()).impression,
            |token| tracker.event(EventKind::Impression, &token, false, now),
            criterion::BatchSize::SmallInput,
        )
    });
    let token = tracker.tokens(&decision()).impression;
    tracker.event(EventKind::Impression, &token, false, now);
    g.bench_function("impression_duplicate", |b| {
        b.iter(|| tracker.event(EventKind::Impression, black_box(&token), false, now))
    });
    g.finish();
}

fn bench_stats(c: &mut Criterion, f: &Fixture) {
    let minute = current_minute();
    let keys: Arc<Vec<RowKey>> = Arc::new(
        visitors(f)
            .iter()
            .enumerate()
            .map(|(i, v)| RowKey {
                minute,
                country: v.country,
                os: v.agent.os,
                browser: v.agent.browser,
                device: v.agent.device,
                campaign_id: (i % 50) as u32,
                placement: rotator::visitor::symbol::Sym::EMPTY,
                creative_id: 0,
            })
            .collect(),
    );
    let mut g = c.benchmark_group("stats_increment");
    {
        let agg = Aggregator::new(4);
        let mut next = cycle(&keys);
        g.bench_function("threads_1", |b| b.iter(|| agg.record(black_box(*next()))));
    }
    {
        // Two threads each record `iters` rows at once; the time is the wall time of the pair,
        // divided by `iters` by criterion: the time per increment seen by either thread.
        let agg = Arc::new(Aggregator::new(4));
        g.bench_function("threads_2", |b| {
            b.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(3));
                let workers: Vec<_> = (0..2)
                    .map(|t| {
                        let (agg, keys, barrier) = (agg.clone(), keys.clone(), barrier.clone());
                        std::thread::spawn(move || {
                            let mut i = t * keys.len() / 2;
                            barrier.wait();
                            for _ in 0..iters {
                                i = if i + 1 == keys.len() { 0 } else { i + 1 };
                                agg.record(black_box(keys[i]));
                            }
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                for w in workers {
                    w.join().unwrap();
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// The synthetic rows as request headers; `distinct_agents` limits how many different
/// User-Agents appear (the rest of each row's agent is replaced by one of them), so the cost can be
/// read against the variety of visitors.
fn requests(f: &Fixture, distinct_agents: Option<usize>) -> Vec<HeaderMap> {
    let xff = HeaderName::from_static("x-forwarded-for");
    f.rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut h = HeaderMap::new();
            h.insert(
                xff.clone(),
                HeaderValue::from_str(&r.ip.to_string()).unwrap(),
            );
            let ua = match distinct_agents {
                Some(n) => &f.rows[i % n].ua,
                None => &r.ua,
            };
            if let Ok(v) = HeaderValue::from_str(ua) {
                h.insert(USER_AGENT, v);
            }
            h.insert(
                hyper::header::HOST,
                HeaderValue::from_static("127.0.0.1:8080"),
            );
            h
        })
        .collect()
}

fn bench_decision(c: &mut Criterion, f: &Fixture) {
    let peer = IpAddr::from([127, 0, 0, 1]);
    let mut g = c.benchmark_group("decision");
    // How the whole decision grows with the number of campaigns (all 10,000 rows, warm cache).
    for campaigns in [3, 1_000, 10_000] {
        let d = decider(f, campaigns, Some(Arc::new(Aggregator::new(4))));
        let requests = requests(f, None);
        for h in &requests {
            d.decide(peer, h);
        }
        let mut next = cycle(&requests);
        g.bench_function(format!("campaigns_{campaigns}_stats_metrics"), |b| {
            b.iter(|| d.decide(peer, black_box(next())))
        });
    }
    // How it grows with the variety of visitors (1,000 campaigns): 10 agents, the file's 2,063,
    // and agents never seen before (every request a cache miss: the cost of a full parse).
    let d = decider(f, 1_000, Some(Arc::new(Aggregator::new(4))));
    let few = requests(f, Some(10));
    for h in &few {
        d.decide(peer, h);
    }
    let mut next = cycle(&few);
    g.bench_function("agents_10", |b| {
        b.iter(|| d.decide(peer, black_box(next())))
    });
    let mut fresh = 0u64;
    let base = requests(f, None);
    g.bench_function("agents_unseen", |b| {
        b.iter_batched(
            || {
                fresh += 1;
                let mut h = base[fresh as usize % base.len()].clone();
                let ua = format!(
                    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/{fresh}.0 Safari/537.36"
                );
                h.insert(USER_AGENT, HeaderValue::from_str(&ua).unwrap());
                h
            },
            |h| d.decide(peer, &h),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Issue 13: the trusted-proxy check (CIDR matching) and the X-Forwarded-For walk, with the
/// serving default networks plus a few more (what an operator names).
fn bench_client_ip(c: &mut Criterion) {
    use rotator::visitor::client_ip::{ClientIpHeader, ClientIpRule, TrustedProxies};
    let proxies = TrustedProxies::parse(&[
        "127.0.0.0/8",
        "::1/128",
        "10.1.2.3/32",
        "192.168.0.0/16",
        "2001:db8::/32",
    ])
    .expect("networks");
    let rule = ClientIpRule {
        proxies,
        header: ClientIpHeader::XForwardedFor,
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_static("203.0.113.9, 77.88.8.8, 10.1.2.3"),
    );
    let peer: IpAddr = "127.0.0.1".parse().expect("address");
    let outside: IpAddr = "8.8.8.8".parse().expect("address");
    let mut g = c.benchmark_group("client_ip");
    g.bench_function("trusted_xff_chain", |b| {
        b.iter(|| rule.client_ip(black_box(peer), black_box(&headers)))
    });
    g.bench_function("untrusted_peer", |b| {
        b.iter(|| rule.proxies.contains(black_box(outside)))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_client_ip(c);
    let f = fixture();
    bench_user_agent(c, &f);
    bench_geoip(c, &f);
    bench_auction(c, &f);
    bench_slots(c, &f);
    bench_tracking(c, &f);
    bench_stats(c, &f);
    bench_decision(c, &f);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = decision;
    config = config();
    targets = benches
}
criterion_main!(decision);
