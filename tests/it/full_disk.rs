//! Statistics on full disks (issue 9 item 3), with real full filesystems: the spool and the SQLite
//! database each get a small tmpfs of their own, both are filled, then the database's is freed.
//!
//! tmpfs because it is a real filesystem whose `ENOSPC` comes from the kernel exactly as on a
//! full disk, needs no image file or loop device, and vanishes with its mount. Mounting needs
//! root: without it the test says so and skips, and fails under `ROTATOR_TEST_REQUIRE_SERVICES=1`
//! (CI), where a skipped check must not pass.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Server, config, report_json, request, seed_campaigns, temp_dir};
use crate::server::{CHROME, RU};
use crate::stats::metric;

/// A tmpfs mounted for the test, unmounted when dropped (also when the test panics).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`) on `path` (created).
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Writes zeros until the filesystem refuses (`ENOSPC`).
    fn fill(&self) {
        let mut file = std::fs::File::create(self.filler()).expect("create the filler");
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let free = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .expect("df");
        let avail = String::from_utf8_lossy(&free.stdout);
        assert_eq!(
            avail.lines().nth(1).map(str::trim),
            Some("0"),
            "{} is not full",
            self.path.display()
        );
    }

    /// Deletes the filler.
    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("delete the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.path).status().is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("cannot unmount {}", self.path.display());
        }
    }
}

/// Mounts a tmpfs, or returns `None` (skip) when that is impossible outside CI.
fn tmpfs(path: &Path, size: &str) -> Option<Tmpfs> {
    let required = std::env::var("ROTATOR_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    let mounted = if root {
        Tmpfs::mount(path, size)
    } else {
        Err("not running as root".into())
    };
    match mounted {
        Ok(fs) => Some(fs),
        Err(e) if required => panic!("the full-disk test needs to mount a tmpfs: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: the full-disk test needs to mount a tmpfs: {e}");
            None
        }
    }
}

/// Total requests in the sink, from `rotator report` without `--by`.
fn stored_requests(dir: &Path) -> u64 {
    report_json(dir, None)["total"]["requests"]
        .as_u64()
        .unwrap()
}

/// Rows and requests of every `statistics LOST` line in a JSON log.
fn lost(log: &str) -> (u64, u64) {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("statistics LOST"))
        })
        .fold((0, 0), |(rows, requests), v| {
            let field = |name: &str| {
                v["fields"][name]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no {name} in {v}"))
            };
            (rows + field("rows"), requests + field("requests"))
        })
}

fn send(s: &Server, n: u64) {
    for _ in 0..n {
        assert_eq!(s.ad(RU, CHROME).status, 303);
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 9 item 3: after a write failure with an unwritable spool the sink was never tried again
/// (every later batch `statistics LOST`, 0 rows in the database, `/readyz` 503 until the spool
/// was writable). Now the sink is retried on its own schedule whatever the spool does, rows are
/// lost only when both refuse (and memory already holds `max_pending_rows`), and readiness
/// follows the sink. Every request ends up either in the database or in a `LOST` line.
#[test]
fn issue9_sink_is_retried_while_the_spool_is_full() {
    let dir = temp_dir("full-disk");
    // Declared before the server, so they are unmounted after it has stopped.
    let Some(db) = tmpfs(&dir.join("db"), "4m") else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let Some(spool) = tmpfs(&dir.join("spool"), "1m") else {
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let cfg = config(
        "",
        "[log]\nformat = \"json\"\n\
         [stats]\nsink = \"sqlite\"\nflush_interval = \"100ms\"\nwrite_timeout = \"2s\"\n\
         max_pending_rows = 2\nspool_dir = \"spool\"\n[stats.sqlite]\npath = \"db/stats.db\"\n",
    );
    let s = Server::start_in(&dir, &cfg, &seed_campaigns());
    let metrics = s.metrics.unwrap();
    send(&s, 10);
    wait_until(
        "the first requests in SQLite",
        Duration::from_secs(10),
        || stored_requests(&dir) == 10,
    );

    db.fill();
    spool.fill();
    let full = 6000;
    let started = Instant::now();
    send(&s, full);
    eprintln!("{full} requests in {:?}", started.elapsed());
    s.wait_for_log("failed, retrying", Duration::from_secs(10));
    s.wait_for_log("rows stay in memory", Duration::from_secs(10));
    s.wait_for_log("statistics LOST", Duration::from_secs(10));
    assert_eq!(request(metrics, "GET", "/readyz", &[]).status, 503);

    // The database's disk is freed; the spool's stays full.
    db.free();
    s.wait_for_log("answers again", Duration::from_secs(60));
    wait_until(
        "/readyz to follow the sink",
        Duration::from_secs(10),
        || request(metrics, "GET", "/readyz", &[]).status == 200,
    );
    let after = 100;
    send(&s, after);
    let stored_before_stop = || stored_requests(&dir);
    wait_until(
        "the requests after the disk was freed",
        Duration::from_secs(10),
        || stored_before_stop() >= 10 + after,
    );
    let lost_rows = metric(&s, "rotator_stats_rows_lost_total");
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");

    let (rows, requests) = lost(&log);
    assert!(rows > 0, "nothing was lost with both disks full?\n{log}");
    assert_eq!(lost_rows, rows as f64, "metric vs LOST lines");
    let stored = stored_requests(&dir);
    assert_eq!(
        stored + requests,
        10 + full + after,
        "every request is stored or logged as lost"
    );
    // The newest batches waited in memory through the outage and reached the database.
    assert!(
        stored > 10 + after,
        "nothing from the full-disk period was kept: {stored}"
    );
    assert!(
        std::fs::read_dir(&spool.path)
            .unwrap()
            .all(|e| e.unwrap().file_name() == "filler"),
        "the full spool holds nothing but the filler"
    );
    drop(spool);
    drop(db);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("cannot delete {}: {e}", dir.display());
    }
}
