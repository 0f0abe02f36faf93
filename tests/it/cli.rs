//! Bad configuration and input at the command line: clear errors and warnings, never a panic
//! (issue 9 items 8, 10 and 12; issue 8 item 4).

use std::ffi::OsStr;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{Server, config, repo, temp_dir};
use crate::server::{CHROME, FIREFOX, RU, US};

/// Environment variables: names and values of any bytes.
type Env<'a> = &'a [(&'a str, &'a [u8])];

/// Runs `rotator ARGS` with extra environment variables and `stdin` (any bytes).
fn rotator(args: &[&str], env: Env<'_>, stdin: &[u8]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rotator"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, OsStr::from_bytes(value));
    }
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A campaigns file with one campaign.
fn campaign(url: &str, targeting: &str) -> String {
    format!("[[campaign]]\nid = 1\nurl = {url:?}\nbid = 1\n[campaign.targeting]\n{targeting}\n")
}

fn write(dir: &Path, config: &str, campaigns: &str) -> String {
    std::fs::write(dir.join("rotator.toml"), config).unwrap();
    std::fs::write(dir.join("campaigns.toml"), campaigns).unwrap();
    dir.join("rotator.toml").to_str().unwrap().to_string()
}

/// Values that used to pass `check` and then failed at run time (a panic at SIGTERM, a spinning
/// core, a second bind that fails, no logs) are refused with one line naming file, section, key.
#[test]
fn issue9_check_refuses_values_that_cannot_work() {
    let dir = temp_dir("cli-refuse");
    let cases: [(&str, Env<'_>, &str); 9] = [
        (
            "[server]\nshutdown_grace = \"500000000000y\"\n",
            &[],
            "[server] shutdown_grace",
        ),
        (
            "[stats]\nflush_interval = \"1ns\"\n",
            &[],
            "[stats] flush_interval",
        ),
        (
            "[campaigns]\nwatch_interval = \"1ns\"\n",
            &[],
            "[campaigns] watch_interval",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:18080\"\n[metrics]\nlisten = \"0.0.0.0:18080\"\n",
            &[],
            "[metrics] listen",
        ),
        ("[log]\nlevel = \"verbose\"\n", &[], "[log] level"),
        ("[log]\nlevel = \"rotator=loud\"\n", &[], "[log] level"),
        (
            "[stats.clickhouse]\nurl = \"http://u:p@ch:8123\"\npassword = \"q\"\n",
            &[],
            "[stats.clickhouse] url",
        ),
        (
            "",
            &[("ROTATOR_SERVER_LISTEN", b"127.0.0.1:\xff")],
            "ROTATOR_SERVER_LISTEN",
        ),
        ("[server]\nshutdown_grace = \"2h\"\n", &[], "from 0s to 1h"),
    ];
    for (config, env, needle) in cases {
        let cfg = write(&dir, config, "");
        let out = rotator(&["check", "--config", &cfg], env, b"");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{config}\n{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(err.starts_with("rotator: error: "), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        if env.is_empty() {
            assert!(err.contains(&cfg), "{err}");
        }
    }
}

/// Campaign URLs a browser cannot follow are refused; each message names line, campaign, field.
#[test]
fn issue9_campaign_urls_with_impossible_ports_are_refused() {
    let dir = temp_dir("cli-ports");
    let base = config("", "");
    for url in ["https://a.example:99999/", "https://a.example:0/x"] {
        let cfg = write(&dir, &base, &campaign(url, ""));
        let out = rotator(&["check", "--config", &cfg], &[], b"");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}\n{err}");
        assert!(err.contains("line 3: campaign 1 (entry 1): url:"), "{err}");
    }
}

/// One `check` run: a non-UTF-8 variable elsewhere in the environment is no reason to panic;
/// a trusted proxy network covering the internet and targeting names no User-Agent rule gives
/// are warned about (with the closest known names), and the file still passes.
#[test]
fn issue9_check_warns_and_ignores_foreign_environment() {
    let dir = temp_dir("cli-warn");
    let cfg = write(
        &dir,
        &config("trusted_proxies = [\"10.0.0.0/8\", \"0.0.0.0/0\"]", ""),
        &campaign(
            "https://a.example",
            "browsers = [\"Chrmoe\", \"Firefox\"]\nos = [\"Windos\"]",
        ),
    );
    let out = rotator(
        &["check", "--config", &cfg],
        &[
            ("ROTATOR_TEST_ODD_BYTES", b"\xff\xfe"),
            ("ODD_BYTES", b"\xc3"),
        ],
        b"",
    );
    let (stdout, err) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{}\n{stdout}{err}", out.status);
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 3, "{stdout}");
    assert!(
        warnings[0].contains("[server] trusted_proxies: \"0.0.0.0/0\""),
        "{stdout}"
    );
    assert!(
        warnings[1].contains("campaign 1: targeting.browsers: \"Chrmoe\"")
            && warnings[1].contains("closest known: \"Chrome\""),
        "{stdout}"
    );
    assert!(
        warnings[2].contains("targeting.os: \"Windos\"")
            && warnings[2].contains("closest known: \"Windows\""),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
}

/// `explain -` reads a line with a byte that is not UTF-8 lossily and goes on with the batch.
#[test]
fn issue8_explain_goes_on_after_a_line_that_is_not_utf8() {
    let dir = temp_dir("cli-explain");
    let cfg = write(&dir, &config("", ""), &crate::harness::seed_campaigns());
    let mut input = format!("{RU}\t{CHROME}\n").into_bytes();
    input.extend_from_slice(format!("{US}\t{}", &FIREFOX[..20]).as_bytes());
    input.push(0xff);
    input.extend_from_slice(format!("{}\r\n", &FIREFOX[20..]).as_bytes());
    input.extend_from_slice(b"\xff\xfe\tx\n127.0.0.1\tx\n");
    let out = rotator(&["explain", "--config", &cfg, "-"], &[], &input);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0]["winner"], 1);
    assert_eq!(lines[1]["browser"], "Firefox");
    assert_eq!(lines[1]["url"], "https://duckduckgo.com");
    assert_eq!(lines[2]["line"], 3);
    assert!(lines[2]["error"].is_string());
    assert_eq!(lines[3]["ip"], "127.0.0.1");
}

/// The running server: log lines without colour codes when stderr is not a terminal, the
/// warnings at start and at reload, and a `Location` that is ASCII for a non-ASCII URL.
#[test]
fn issue9_server_logs_plain_warnings_and_sends_encoded_locations() {
    let dir = temp_dir("cli-serve");
    let url = "https://a.example/путь?q=ä";
    let s = Server::start_in(
        &dir,
        &config("trusted_proxies = [\"::/0\"]", "[stats]\nsink = \"none\"\n"),
        &campaign(url, "browsers = [\"Firefox\", \"Chrmoe\"]"),
    );
    let encoded = "https://a.example/%D0%BF%D1%83%D1%82%D1%8C?q=%C3%A4";
    assert_eq!(s.ad(US, FIREFOX).header("location"), Some(encoded));
    let log = s.log();
    assert!(log.contains("trusted_proxies: \"::/0\""), "{log}");
    assert!(log.contains("\"Chrmoe\" is no name"), "{log}");

    std::fs::write(
        dir.join("campaigns.toml"),
        campaign("https://a.example", "os = [\"Andriod\"]"),
    )
    .unwrap();
    s.wait_for_log("closest known: \"Android\"", Duration::from_secs(10));
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a piped log:\n{log}");
    let reloaded = log.find("campaigns reloaded").unwrap();
    assert!(log[reloaded..].contains("\"Andriod\""), "{log}");
}

/// `RUST_LOG=trace` shows the HTTP client's pool lines, but not the credentials of a ClickHouse
/// URL: they are sent as the client's user and password instead.
#[test]
fn issue9_trace_logs_hide_clickhouse_credentials() {
    let dir = temp_dir("cli-trace");
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Holding the ad port makes `serve` stop right after the statistics sink first connects.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = write(
        &dir,
        &format!(
            "[server]\nlisten = \"{}\"\n[geoip]\ndatabase = {:?}\n[metrics]\nlisten = \"\"\n\
             [stats]\nsink = \"clickhouse\"\nspool_dir = \"spool\"\n\
             [stats.clickhouse]\nurl = \"http://alice:s3cr%65t@{closed}\"\n",
            taken.local_addr().unwrap(),
            repo().join("data/country.mmdb").display().to_string(),
        ),
        "",
    );
    let out = rotator(&["serve", "--config", &cfg], &[("RUST_LOG", b"trace")], b"");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen"), "{err}");
    assert!(err.contains("hyper_util::client::legacy::pool"), "{err}");
    assert!(!err.contains("s3cr"), "{err}");
    assert!(!err.contains("alice"), "{err}");
}
