//! Files an operator replaces while the server runs (the GeoIP database, the campaigns file) never
//! crash, stall or mislead it: replaced in place, truncated, garbage, half-written, a FIFO.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Server, repo, request, seed_campaigns, temp_dir};
use crate::server::{CHROME, DE, FIREFOX, RU, US};

/// Watch interval of both files in these tests.
const INTERVAL_MS: u64 = 200;

/// Long enough for any reload here (a settled change is loaded within three intervals).
const WAIT: Duration = Duration::from_secs(15);

fn reload_config(geoip: &Path, interval_ms: u64) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndefault_url = \"https://default.example\"\n\
         shutdown_grace = \"5s\"\n\
         [geoip]\ndatabase = {:?}\nwatch_interval = \"{interval_ms}ms\"\n\
         [campaigns]\nfile = \"campaigns.toml\"\nwatch_interval = \"{interval_ms}ms\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[stats]\nsink = \"none\"\n",
        geoip.display().to_string()
    )
}

/// Waits until the log holds `needle` at least `n` times; returns the log.
fn wait_for_count(s: &Server, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = s.log();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "log never said {needle:?} {n} times:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the series `series` (name with labels, as exposed) on the metrics listener.
fn metric(s: &Server, series: &str) -> Option<f64> {
    let body = request(s.metrics.unwrap(), "GET", "/metrics", &[]).body;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn location(s: &Server, ip: &str, ua: &str) -> String {
    let r = s.ad(ip, ua);
    assert_eq!(r.status, 303, "{r:?}");
    r.header("location").unwrap_or_default().to_string()
}

/// Requests from a Russian Chrome visitor, sent without pause until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(u16, String)>>,
}

impl Traffic {
    fn start(s: &Server) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, flag) = (s.addr, stop.clone());
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let r = request(
                    addr,
                    "GET",
                    "/ad",
                    &[
                        ("X-Forwarded-For", RU.as_bytes()),
                        ("User-Agent", CHROME.as_bytes()),
                    ],
                );
                seen.push((r.status, r.header("location").unwrap_or("").to_string()));
            }
            seen
        });
        Traffic { stop, thread }
    }

    /// Stops and returns (status, location) of every answer.
    fn finish(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("the server stopped answering during the reloads")
    }
}

/// Issue 8 item 2: a GeoIP database replaced in place (copied over, truncated, random bytes)
/// killed the server with SIGBUS, and a new database needed a restart.
#[test]
fn issue8_geoip_database_replaced_any_way_while_requests_flow() {
    let dir = temp_dir("geoip-reload");
    let real = repo().join("data/country.mmdb");
    let test_db = repo().join("tests/data/geoip/GeoIP2-Country-Test.mmdb");
    let db = dir.join("country.mmdb");
    std::fs::copy(&real, &db).unwrap();
    let s = Server::start_in(&dir, &reload_config(&db, INTERVAL_MS), &seed_campaigns());
    // The bundled database places 77.88.8.8 in Russia; MaxMind's test database does not know it.
    let (russia, unknown) = ("https://yandex.ru", "https://default.example");
    assert_eq!(location(&s, RU, CHROME), russia);
    let traffic = Traffic::start(&s);
    let reloaded = "GeoIP database reloaded (file changed)";
    let refused = "GeoIP reload (file changed) refused, the previous database keeps serving";

    // Copied over in place (same inode; a memory map would see the file shrink under it).
    std::fs::copy(&test_db, &db).unwrap();
    wait_for_count(&s, reloaded, 1);
    assert_eq!(location(&s, RU, CHROME), unknown);
    std::fs::copy(&real, &db).unwrap();
    wait_for_count(&s, reloaded, 2);
    assert_eq!(location(&s, RU, CHROME), russia);

    // Truncated in place: refused, the database in memory keeps answering.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(100_000)
        .unwrap();
    wait_for_count(&s, refused, 1);
    assert_eq!(location(&s, RU, CHROME), russia);

    // Random bytes in place: refused too.
    let noise: Vec<u8> = (0..100_000).map(|_| fastrand::u8(..)).collect();
    std::fs::write(&db, noise).unwrap();
    let log = wait_for_count(&s, refused, 2);
    assert_eq!(location(&s, RU, CHROME), russia);
    assert_eq!(log.matches(reloaded).count(), 2, "{log}");

    // Renamed over the old file (geoipupdate's way).
    let next = dir.join("next.mmdb");
    std::fs::copy(&test_db, &next).unwrap();
    std::fs::rename(&next, &db).unwrap();
    wait_for_count(&s, reloaded, 3);
    assert_eq!(location(&s, RU, CHROME), unknown);

    // SIGHUP reloads at once.
    std::fs::copy(&real, &next).unwrap();
    std::fs::rename(&next, &db).unwrap();
    s.signal("HUP");
    wait_for_count(&s, "GeoIP database reloaded (SIGHUP)", 1);
    assert_eq!(location(&s, RU, CHROME), russia);

    let answers = traffic.finish();
    assert!(answers.len() > 10, "{} answers", answers.len());
    for (status, to) in &answers {
        assert!(
            *status == 303 && (to == russia || to == unknown),
            "{status} {to}"
        );
    }
    assert_eq!(
        metric(&s, "rotator_geoip_reloads_total{result=\"ok\"}"),
        Some(4.0)
    );
    assert_eq!(
        metric(&s, "rotator_geoip_reloads_total{result=\"error\"}"),
        Some(2.0)
    );
    let built = rotator::visitor::geoip::GeoIp::open(&real)
        .unwrap()
        .build_epoch();
    assert_eq!(
        metric(&s, "rotator_geoip_build_timestamp_seconds"),
        Some(built as f64)
    );
    let (status, log) = s.stop();
    assert!(status.success(), "{status}\n{log}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Issue 9 item 6: a campaigns file rewritten in place with a pause was loaded half-written (a
/// DE-only campaign, its targeting not yet written, won for Russian visitors), and a truncated
/// file emptied the catalogue with an INFO line.
#[test]
fn issue9_half_written_campaigns_file_is_not_served_and_emptying_warns() {
    let dir = temp_dir("half-written");
    let interval_ms = 400;
    let s = Server::start_in(
        &dir,
        &reload_config(&repo().join("data/country.mmdb"), interval_ms),
        &seed_campaigns(),
    );
    let file = dir.join("campaigns.toml");
    let prefix = format!(
        "{}\n[[campaign]]\nid = 9\nname = \"Germany only\"\nurl = \"https://de-only.example\"\n\
         bid = 100\n",
        seed_campaigns()
    );
    let mut writer = std::fs::File::create(&file).unwrap();
    writer.write_all(prefix.as_bytes()).unwrap();
    // A pause longer than one watch interval, well short of the settle time (two intervals).
    let pause = Duration::from_millis(interval_ms * 5 / 4);
    let start = Instant::now();
    while start.elapsed() < pause {
        assert_eq!(location(&s, RU, CHROME), "https://yandex.ru");
        std::thread::sleep(Duration::from_millis(20));
    }
    writer
        .write_all(b"[campaign.targeting]\ncountries = [\"DE\"]\n")
        .unwrap();
    drop(writer);
    let log = wait_for_count(&s, "campaigns reloaded (file changed)", 1);
    assert_eq!(location(&s, RU, CHROME), "https://yandex.ru");
    assert_eq!(location(&s, DE, CHROME), "https://de-only.example");
    assert_eq!(
        log.matches("campaigns reloaded").count(),
        1,
        "the half-written file was loaded:\n{log}"
    );

    // Emptied: loaded (an empty file is valid), but logged as a warning.
    std::fs::File::create(&file).unwrap();
    let log = wait_for_count(&s, "0 active campaigns instead of 4", 1);
    let line = log
        .lines()
        .find(|l| l.contains("0 active campaigns instead of 4"))
        .unwrap_or_default();
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(location(&s, RU, CHROME), "https://default.example");
    drop(s);
    std::fs::remove_dir_all(dir).unwrap();
}

fn replace(path: &Path, with: impl FnOnce(&Path)) {
    let _ = std::fs::remove_file(path);
    with(path);
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn sparse(len: u64) -> impl FnOnce(&Path) {
    move |path| std::fs::File::create(path).unwrap().set_len(len).unwrap()
}

/// Issue 9 item 9: a campaigns file that is a FIFO blocked the reload thread, so SIGTERM never
/// finished; `/dev/zero` was read without limit. The GeoIP file is read the same way.
#[test]
fn issue9_fifo_device_and_oversized_files_are_refused_and_sigterm_exits() {
    let dir = temp_dir("special-files");
    let db = dir.join("country.mmdb");
    std::fs::copy(
        repo().join("tests/data/geoip/GeoIP2-Country-Test.mmdb"),
        &db,
    )
    .unwrap();
    let s = Server::start_in(&dir, &reload_config(&db, INTERVAL_MS), &seed_campaigns());
    let campaigns = dir.join("campaigns.toml");
    let refused = "campaigns reload (file changed) refused";
    let geo_refused = "GeoIP reload (file changed) refused";

    replace(&campaigns, mkfifo);
    let log = wait_for_count(&s, refused, 1);
    assert!(log.contains("not a regular file (a FIFO)"), "{log}");
    replace(&db, mkfifo);
    wait_for_count(&s, geo_refused, 1);

    replace(&campaigns, |p| {
        std::os::unix::fs::symlink("/dev/zero", p).unwrap()
    });
    let log = wait_for_count(&s, refused, 2);
    assert!(
        log.contains("not a regular file (a character device)"),
        "{log}"
    );

    replace(&campaigns, sparse(rotator::campaigns::MAX_FILE_BYTES + 1));
    wait_for_count(&s, refused, 3);
    replace(&db, sparse(rotator::visitor::geoip::MAX_FILE_BYTES + 1));
    let log = wait_for_count(&s, geo_refused, 2);
    assert_eq!(log.matches("bytes is more than the").count(), 2, "{log}");

    // Still serving the files it had.
    assert_eq!(location(&s, US, FIREFOX), "https://duckduckgo.com");
    let asked = Instant::now();
    let (status, log) = s.stop();
    assert!(status.success(), "{status}\n{log}");
    assert!(asked.elapsed() < Duration::from_secs(10), "{log}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// VmRSS, read from /proc (not /metrics: rendering every win counter costs memory too).
fn resident_bytes(s: &Server) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024.0
}

/// Issue 9 item 9: after reloading from 100,000 campaigns back to 250, the process kept the
/// memory of the large catalogue (freed, but kept by the allocator). Here: 20,000 campaigns, and
/// a server started with the small file as the yardstick.
#[test]
fn issue9_memory_of_a_replaced_large_catalogue_is_returned() {
    let generate = |n: &str| {
        let out = std::process::Command::new("python3")
            .arg(repo().join("scripts/gen-campaigns"))
            .arg(n)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let (large, small) = (generate("20000"), generate("250"));
    let config = reload_config(&repo().join("data/country.mmdb"), INTERVAL_MS);
    let (dir, fresh_dir) = (temp_dir("memory"), temp_dir("memory-fresh"));
    let s = Server::start_in(&dir, &config, &large);
    let fresh = Server::start_in(&fresh_dir, &config, &small);
    let loaded = resident_bytes(&s);
    std::fs::write(dir.join("campaigns.toml"), &small).unwrap();
    wait_for_count(&s, "campaigns reloaded (file changed)", 1);
    // The old catalogue is dropped and the memory returned just after the reload is logged.
    let deadline = Instant::now() + Duration::from_secs(5);
    let baseline = resident_bytes(&fresh);
    let mut after = resident_bytes(&s);
    while after - baseline > (loaded - baseline) / 4.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = resident_bytes(&s);
    }
    let mb = |b: f64| (b / 1e6).round();
    assert!(
        after - baseline <= (loaded - baseline) / 4.0,
        "resident: {} MB with 20,000 campaigns, {} MB after reloading 250; a server started \
         with 250 holds {} MB",
        mb(loaded),
        mb(after),
        mb(baseline)
    );
    drop((s, fresh));
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(fresh_dir).unwrap();
}
