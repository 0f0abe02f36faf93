//! The pacing simulation of issue 11 (item 5): `cargo bench --bench pacing`.
//!
//! Runs every case of `rotator::delivery::simulation::cases` over `PACING_SEEDS` seeds (default
//! 20) and prints, per case, the range of the daily spend, the worst overspend and the worst hour
//! against its share; then one day hour by hour, even pacing against asap; then a criterion timing
//! of `Pacer::update`. `cargo bench --bench pacing -- --skip-timing` prints the figures only.

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;

use rotator::campaigns::Pacing;
use rotator::delivery::curve::TrafficCurve;
use rotator::delivery::pacing::Pacer;
use rotator::delivery::simulation::{
    Case, DAILY_TOLERANCE, History, MAX_HOUR_RATIO, MAX_OVERSPEND, Outcome, Scenario, Surprise,
    cases,
};

/// Seeds per case unless `PACING_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 20;

fn main() {
    let seeds = std::env::var("PACING_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    let started = Instant::now();
    figures(seeds);
    println!(
        "\n{} simulated days in {:.1} s",
        days_run(seeds),
        started.elapsed().as_secs_f64()
    );
    hour_by_hour();
    capacity_sweep();
    late_outage();
    if std::env::args().any(|a| a == "--skip-timing") {
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    time_update(&mut criterion);
    criterion.final_summary();
}

/// Days the figures simulate (a learned curve costs a day of its own).
fn days_run(seeds: u64) -> u64 {
    let per_seed: u64 = cases(0)
        .iter()
        .map(|c| if c.history == History::None { 1 } else { 2 })
        .sum();
    per_seed * seeds
}

/// The table: every case over `seeds` seeds.
fn figures(seeds: u64) {
    println!(
        "Targets: daily spend within {:.0} % of the budget, at most {:.0} % over, no hour above {MAX_HOUR_RATIO}x its share.",
        DAILY_TOLERANCE * 100.0,
        MAX_OVERSPEND * 100.0
    );
    println!("Seeds 1..={seeds} per case.\n");
    println!(
        "| case | curve | capacity | daily spend / budget (min – max) | worst overspend | worst hour / share | participation | days meeting all targets |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut met_all = 0;
    let mut total = 0;
    for index in 0..cases(0).len() {
        let outcomes: Vec<(Case, Outcome)> = (1..=seeds)
            .map(|seed| {
                let case = cases(seed).swap_remove(index);
                let outcome = case.run();
                (case, outcome)
            })
            .collect();
        let (first, _) = &outcomes[0];
        let ratios: Vec<f64> = outcomes.iter().map(|(_, o)| o.spend_ratio()).collect();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(0.0, f64::max);
        let over = (high - 1.0).max(0.0);
        let hour = outcomes
            .iter()
            .map(|(_, o)| o.max_hour_ratio())
            .fold(0.0, f64::max);
        let participation =
            outcomes.iter().map(|(_, o)| o.participation).sum::<f64>() / outcomes.len() as f64;
        let met = outcomes
            .iter()
            .filter(|(_, o)| o.missed_targets().is_empty())
            .count();
        met_all += met;
        total += outcomes.len();
        println!(
            "| {} | {} | {:.1}x | {:.2} % – {:.2} % | {:.2} % | {:.2}x | {:.1} % | {met}/{} |",
            first.name,
            match first.history {
                History::None => "flat (no history)",
                History::PreviousDay => "learned from the day before",
            },
            first.scenario.capacity(),
            low * 100.0,
            high * 100.0,
            over * 100.0,
            hour,
            participation * 100.0,
            outcomes.len(),
        );
    }
    println!("\nAll targets met on {met_all} of {total} days.");
}

/// One evening-shaped day (seed 1), hour by hour: the hour's share of the budget and what even
/// pacing (flat curve and learned curve) and asap spent in it, as a multiple of that share.
fn hour_by_hour() {
    let even = cases(1).swap_remove(0);
    let learned = cases(1).swap_remove(1);
    let asap = Case {
        scenario: Scenario {
            pacing: Pacing::Asap,
            ..even.scenario.clone()
        },
        ..even.clone()
    };
    let (even, learned, asap) = (even.run(), learned.run(), asap.run());
    println!(
        "\nOne day hour by hour (evening shape, seed 1): spend / the hour's share of the budget."
    );
    println!(
        "Flat curve: every hour's share is 1/24; learned: the share the curve learned from the day before gives it.\n"
    );
    println!(
        "| hour | even, flat curve | learned share | even, learned curve | asap (flat share) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let (e, l, a) = (
        even.hour_ratios(),
        learned.hour_ratios(),
        asap.hour_ratios(),
    );
    for hour in 0..e.len() {
        println!(
            "| {hour:02} | {:.2}x | {:.2} % | {:.2}x | {:.2}x |",
            e[hour],
            learned.hourly_share[hour] * 100.0,
            l[hour],
            a[hour]
        );
    }
    let exhausted = |o: &Outcome| match o.exhausted_at {
        Some(s) => format!("{:02}:{:02}", s / 3600, s % 3600 / 60),
        None => "never".to_owned(),
    };
    println!(
        "\nDaily spend / budget: even flat {:.2} %, even learned {:.2} %, asap {:.2} % (budget reached at {}; even: {} / {}).",
        even.spend_ratio() * 100.0,
        learned.spend_ratio() * 100.0,
        asap.spend_ratio() * 100.0,
        exhausted(&asap),
        exhausted(&even),
        exhausted(&learned),
    );
}

/// Where the targets stop holding: the evening day with budgets that full participation could
/// spend only `c` times over (seeds 1 to 5).
fn capacity_sweep() {
    println!("\nHow much traffic the targets need (evening shape, seeds 1..=5):\n");
    println!(
        "| capacity | curve | daily spend / budget (min – max) | worst hour / share | days meeting all targets |"
    );
    println!("|---:|---|---:|---:|---:|");
    for capacity in [1.2, 1.5, 2.0, 3.0] {
        for history in [History::None, History::PreviousDay] {
            let outcomes: Vec<Outcome> = (1..=5)
                .map(|seed| {
                    let base = Scenario::new(seed);
                    let daily = base.capacity() * base.daily_budget as f64 / capacity;
                    Case {
                        name: "capacity",
                        scenario: Scenario {
                            daily_budget: daily as u64,
                            ..base
                        },
                        history,
                    }
                    .run()
                })
                .collect();
            let ratios: Vec<f64> = outcomes.iter().map(Outcome::spend_ratio).collect();
            println!(
                "| {capacity:.1}x | {} | {:.2} % – {:.2} % | {:.2}x | {}/{} |",
                match history {
                    History::None => "flat",
                    History::PreviousDay => "learned",
                },
                ratios.iter().copied().fold(f64::INFINITY, f64::min) * 100.0,
                ratios.iter().copied().fold(0.0, f64::max) * 100.0,
                outcomes
                    .iter()
                    .map(Outcome::max_hour_ratio)
                    .fold(0.0, f64::max),
                outcomes
                    .iter()
                    .filter(|o| o.missed_targets().is_empty())
                    .count(),
                outcomes.len()
            );
        }
    }
}

/// A limit: the same dip as in the cases (traffic × 0.05 for two hours) but at the evening
/// peak, 19:00 to 21:00, with the learned curve, which puts about a sixth of the budget there. The
/// three hours left may take at most 1.5× their share, so part of the hole cannot be made up.
fn late_outage() {
    let outcomes: Vec<Outcome> = (1..=20)
        .map(|seed| {
            let mut case = cases(seed)
                .into_iter()
                .find(|c| c.name.starts_with("dip") && c.history == History::PreviousDay)
                .expect("the cases have a dip with history");
            case.scenario.surprise = Some(Surprise {
                start_hour: 19.0,
                hours: 2.0,
                factor: 0.05,
            });
            case.run()
        })
        .collect();
    let ratios: Vec<f64> = outcomes.iter().map(Outcome::spend_ratio).collect();
    println!(
        "\nLimit: the dip at the evening peak (x0.05 19:00-21:00, learned curve, seeds 1..=20): daily spend {:.2} % - {:.2} %, worst hour {:.2}x, all targets met on {}/20 days.",
        ratios.iter().copied().fold(f64::INFINITY, f64::min) * 100.0,
        ratios.iter().copied().fold(0.0, f64::max) * 100.0,
        outcomes
            .iter()
            .map(Outcome::max_hour_ratio)
            .fold(0.0, f64::max),
        outcomes
            .iter()
            .filter(|o| o.missed_targets().is_empty())
            .count()
    );
}

/// The cost of one `Pacer::update` (once a second per paced campaign on the ticker).
fn time_update(c: &mut Criterion) {
    let day_start = 1_796_083_200;
    let day_end = day_start + 86_400;
    let daily = 200_000_000;
    let history: Vec<u64> = (0..1440u64).map(|m| 100 + (m % 720)).collect();
    let curve = TrafficCurve::from_requests(&history);
    let mut pacer = Pacer::new();
    let mut second = 0;
    let mut spent = 0;
    c.bench_function("pacer_update", |b| {
        b.iter(|| {
            second = (second + 1) % 86_400;
            spent = daily * second / 86_400 + second % 7 * 1000;
            black_box(pacer.update(
                black_box(&curve),
                day_start + second as i64,
                day_start,
                day_end,
                daily,
                spent,
            ))
        })
    });
}
