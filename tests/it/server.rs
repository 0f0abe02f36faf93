//! The request path over real HTTP: redirects, client IP rules, bad input, metrics, shutdown.

use std::time::Duration;

use crate::harness::{Server, config, repo, request, run, seed_campaigns, send_raw, temp_dir};

pub const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
pub const CHROME_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
pub const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
pub const GOOGLEBOT: &str =
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
/// Addresses with a known country in the bundled database.
pub const RU: &str = "77.88.8.8";
pub const DE: &str = "194.25.2.129";
pub const US: &str = "8.8.8.8";

fn seed_server(tag: &str, server_extra: &str) -> Server {
    let dir = temp_dir(tag);
    Server::start_in(
        &dir,
        &config(server_extra, "[stats]\nsink = \"none\"\n"),
        &seed_campaigns(),
    )
}

#[test]
fn seed_campaigns_redirect_to_the_highest_bidder() {
    let s = seed_server("seed", "");
    let r = s.ad(RU, CHROME);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("https://yandex.ru"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        s.ad(DE, CHROME_ANDROID).header("location"),
        Some("https://google.com")
    );
    assert_eq!(
        s.ad(US, FIREFOX).header("location"),
        Some("https://duckduckgo.com")
    );
    assert_eq!(
        s.ad(US, CHROME).header("location"),
        Some("https://default.example")
    );
    assert_eq!(
        s.ad(RU, GOOGLEBOT).header("location"),
        Some("https://default.example"),
        "bots never win"
    );
    let root = s.get(
        "/",
        &[
            ("X-Forwarded-For", RU.as_bytes()),
            ("User-Agent", CHROME.as_bytes()),
        ],
    );
    assert_eq!(root.header("location"), Some("https://yandex.ru"));
    let head = request(
        s.addr,
        "HEAD",
        "/ad",
        &[
            ("X-Forwarded-For", DE.as_bytes()),
            ("User-Agent", CHROME.as_bytes()),
        ],
    );
    assert_eq!(
        (head.status, head.header("location")),
        (303, Some("https://google.com"))
    );
    // Only the configured header (X-Forwarded-For by default) is read: Forwarded and X-Real-IP
    // from a trusted peer are ignored (tests/it/edge.rs reads them when configured).
    let fwd = s.get(
        "/ad",
        &[
            ("Forwarded", b"for=\"77.88.8.8:1234\";proto=https"),
            ("User-Agent", CHROME.as_bytes()),
        ],
    );
    assert_eq!(fwd.header("location"), Some("https://default.example"));
    let real = s.get(
        "/ad",
        &[
            ("X-Real-IP", DE.as_bytes()),
            ("User-Agent", CHROME.as_bytes()),
        ],
    );
    assert_eq!(real.header("location"), Some("https://default.example"));
}

#[test]
fn forwarded_and_x_real_ip_when_configured() {
    for (header, value) in [
        ("forwarded", &b"for=\"77.88.8.8:1234\";proto=https"[..]),
        ("x-real-ip", RU.as_bytes()),
    ] {
        let s = seed_server(header, &format!("client_ip_header = {header:?}"));
        let r = s.get("/ad", &[(header, value), ("User-Agent", CHROME.as_bytes())]);
        assert_eq!(r.header("location"), Some("https://yandex.ru"), "{header}");
        let r = s.get(
            "/ad",
            &[
                ("X-Forwarded-For", RU.as_bytes()),
                ("User-Agent", CHROME.as_bytes()),
            ],
        );
        assert_eq!(
            r.header("location"),
            Some("https://default.example"),
            "{header}"
        );
    }
}

#[test]
fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let s = seed_server("untrusted", "trusted_proxies = []");
    // The peer is 127.0.0.1 (no country), so the RU claim must not count.
    assert_eq!(
        s.ad(RU, CHROME).header("location"),
        Some("https://default.example")
    );
    assert_eq!(
        s.ad(RU, FIREFOX).header("location"),
        Some("https://duckduckgo.com")
    );
}

#[test]
fn bad_input_gets_a_clear_answer_and_the_server_keeps_serving() {
    let s = seed_server("bad", "");
    let post = request(s.addr, "POST", "/ad", &[]);
    assert_eq!(
        (post.status, post.header("allow")),
        (405, Some("GET, HEAD"))
    );
    assert_eq!(request(s.addr, "DELETE", "/", &[]).status, 405);
    assert_eq!(s.get("/nope", &[]).status, 404);
    assert_eq!(s.get("/ad/extra", &[]).status, 404);
    let big = vec![b'a'; 64 * 1024];
    assert_eq!(s.get("/ad", &[("X-Big", &big)]).status, 431);
    let many: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("X-H{i}"), b"v".to_vec()))
        .collect();
    let many: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    assert_eq!(s.get("/ad", &many).status, 431);
    // No User-Agent, a non-UTF-8 one, garbage forwarding headers: still a normal decision.
    assert_eq!(s.get("/ad", &[]).status, 303);
    assert_eq!(
        s.get("/ad", &[("User-Agent", b"\xff\xfe\x80 broken")])
            .status,
        303
    );
    for garbage in [
        &b"not-an-ip"[..],
        b"1.2.3.4.5, ,",
        b"[::1",
        b"\xff",
        b"999.1.1.1:80",
    ] {
        let r = s.get(
            "/ad",
            &[
                ("X-Forwarded-For", garbage),
                ("User-Agent", FIREFOX.as_bytes()),
            ],
        );
        assert_eq!(
            (r.status, r.header("location")),
            (303, Some("https://duckduckgo.com")),
            "{garbage:?}"
        );
    }
    let r = s.get(
        "/ad",
        &[("Forwarded", b"for=unknown"), ("X-Real-IP", b"nonsense")],
    );
    assert_eq!(r.status, 303);
    // Not HTTP at all: the server answers 400 or closes, and keeps serving.
    let junk = send_raw(s.addr, b"\x00\x01\x02 garbage\r\n\r\n");
    assert!(
        junk.is_empty() || junk.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&junk)
    );
    assert_eq!(
        s.ad(RU, CHROME).header("location"),
        Some("https://yandex.ru")
    );
}

#[test]
fn metrics_and_health_endpoints() {
    let s = seed_server("metrics", "");
    s.ad(RU, CHROME);
    s.ad(US, CHROME);
    s.ad(RU, GOOGLEBOT);
    s.get("/nope", &[]);
    let m = s.metrics.unwrap();
    let text = request(m, "GET", "/metrics", &[]).body;
    for line in [
        "rotator_decisions_total{outcome=\"won\"} 1",
        "rotator_decisions_total{outcome=\"no_fill\"} 1",
        "rotator_decisions_total{outcome=\"bot\"} 1",
        "rotator_campaign_wins_total{campaign_id=\"1\"} 1",
        "rotator_http_request_duration_seconds_count{route=\"ad\",status=\"3xx\"} 3",
        "rotator_http_request_duration_seconds_count{route=\"other\",status=\"4xx\"} 1",
        "rotator_campaigns_active 3",
        "rotator_build_info{version=",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert_eq!(request(m, "GET", "/healthz", &[]).status, 200);
    assert_eq!(request(m, "GET", "/readyz", &[]).status, 200);
    assert_eq!(request(m, "GET", "/other", &[]).status, 404);
}

#[test]
fn sigterm_stops_cleanly() {
    let s = seed_server("term", "");
    assert_eq!(s.ad(RU, CHROME).status, 303);
    let (status, log) = s.stop();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("SIGTERM"), "{log}");
}

#[test]
fn start_up_failures_name_the_file_in_one_line() {
    let dir = temp_dir("startfail");
    let campaigns = dir.join("campaigns.toml");
    std::fs::write(&campaigns, seed_campaigns()).unwrap();
    let cfg = dir.join("rotator.toml");
    let cases = [
        (
            "[geoip]\ndatabase = \"missing.mmdb\"\n".to_string(),
            "missing.mmdb",
        ),
        (
            format!(
                "[geoip]\ndatabase = {:?}\n",
                repo().join("tests/data/geoip/bad/GeoIP2-City-Test-Invalid-Node-Count.mmdb")
            ),
            "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
        ),
        (
            format!(
                "[geoip]\ndatabase = {:?}\n[campaigns]\nfile = \"broken.toml\"\n",
                repo().join("data/country.mmdb")
            ),
            "broken.toml",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n".to_string(),
            "lisen",
        ),
    ];
    std::fs::write(
        dir.join("broken.toml"),
        "[[campaign]]\nid = 1\nurl = \"https://a.b\"\nbid = -1\n",
    )
    .unwrap();
    for (text, needle) in cases {
        std::fs::write(&cfg, &text).unwrap();
        let (status, _, err) = run(&["serve", "--config", cfg.to_str().unwrap()], None);
        assert_eq!(status.code(), Some(1), "{text}\n{err}");
        assert!(err.contains(needle), "{needle} not in {err}");
        assert_eq!(
            err.trim_end()
                .lines()
                .filter(|l| l.starts_with("rotator: error"))
                .count(),
            1,
            "{err}"
        );
    }
    let (status, _, err) = run(&["check", "--config", cfg.to_str().unwrap()], None);
    assert_eq!(status.code(), Some(1), "{err}");
}

#[test]
fn check_and_explain() {
    let dir = temp_dir("explain");
    std::fs::write(dir.join("campaigns.toml"), seed_campaigns()).unwrap();
    std::fs::write(dir.join("rotator.toml"), config("", "")).unwrap();
    let cfg = dir.join("rotator.toml");
    let cfg = cfg.to_str().unwrap();
    let (status, out, err) = run(&["check", "--config", cfg], None);
    assert!(status.success(), "{err}");
    assert!(
        out.contains("3 campaigns, 3 active") && out.trim_end().ends_with("ok"),
        "{out}"
    );

    let (status, out, err) = run(
        &["explain", "--config", cfg, "--ip", RU, "--ua", CHROME],
        None,
    );
    assert!(status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ip"], RU);
    assert_eq!(v["country"], "RU");
    assert_eq!(v["browser"], "Chrome");
    assert_eq!(v["os"], "Windows");
    assert_eq!(v["device"], "desktop");
    assert_eq!(v["bot"], false);
    assert_eq!(v["eligible"], serde_json::json!([1]));
    assert_eq!(v["winner"], 1);
    assert_eq!(v["url"], "https://yandex.ru");
    assert_eq!(v["excluded"][0]["id"], 2);
    assert!(
        v["excluded"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("country")
    );

    let input = format!("{DE}\t{CHROME}\n127.0.0.1\t{GOOGLEBOT}\nnot-an-ip\tx\n");
    let (status, out, err) = run(&["explain", "--config", cfg, "-"], Some(&input));
    assert!(status.success(), "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["winner"], 2);
    assert_eq!(lines[1]["country"], serde_json::Value::Null);
    assert_eq!(lines[1]["device"], "bot");
    assert_eq!(lines[1]["url"], "https://default.example");
    assert!(lines[2]["error"].is_string());
}

#[test]
fn hot_reload_on_change_refuses_bad_files_and_reloads_on_sighup() {
    let s = seed_server("reload", "");
    assert_eq!(
        s.ad(US, FIREFOX).header("location"),
        Some("https://duckduckgo.com")
    );
    let file = s.dir.join("campaigns.toml");
    let changed = seed_campaigns().replace("https://duckduckgo.com", "https://changed.example");
    std::fs::write(&file, &changed).unwrap();
    s.wait_for_log("campaigns reloaded (file changed)", Duration::from_secs(10));
    assert_eq!(
        s.ad(US, FIREFOX).header("location"),
        Some("https://changed.example")
    );

    // Written aside and renamed over: an in-place write is a truncation (an empty file, valid)
    // and then the text, and on a loaded machine the watcher may settle on the empty file.
    let aside = s.dir.join("campaigns.toml.new");
    std::fs::write(
        &aside,
        "[[campaign]]\nid = 1\nurl = \"ftp://nope\"\nbid = 1\n",
    )
    .unwrap();
    std::fs::rename(&aside, &file).unwrap();
    s.wait_for_log(
        "refused, the previous campaigns keep serving",
        Duration::from_secs(10),
    );
    assert_eq!(
        s.ad(US, FIREFOX).header("location"),
        Some("https://changed.example"),
        "{}",
        s.log()
    );

    // A new valid file, then SIGHUP: reloads at once (the log names the cause).
    std::fs::write(&file, seed_campaigns()).unwrap();
    s.signal("HUP");
    s.wait_for_log("campaigns reloaded (SIGHUP)", Duration::from_secs(10));
    assert_eq!(
        s.ad(US, FIREFOX).header("location"),
        Some("https://duckduckgo.com")
    );
}

#[test]
fn json_logs_and_no_line_per_request() {
    let dir = temp_dir("jsonlog");
    let cfg = config("", "[stats]\nsink = \"none\"\n[log]\nformat = \"json\"\n");
    let s = Server::start_in(&dir, &cfg, &seed_campaigns());
    for _ in 0..50 {
        s.ad(RU, CHROME);
        s.get("/nope", &[]);
    }
    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| {
        l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ads listening on"))
    }));
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    // Start-up, listeners, the signal and "stopped": a handful of lines for 100 requests.
    assert!(lines.len() < 10, "{log}");
}
