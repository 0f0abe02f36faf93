//! Issue 12, items 6 and 7: the web console on the admin listener. Over plain HTTP: sign-in,
//! security headers, CSRF (missing or wrong → 403), a viewer's write (403), the creative
//! preview, the placements' tags and the CSV download. In a real browser (headless Chromium over
//! WebDriver): sign in, create a campaign with a creative (after the loader's message for a bad
//! bid), see `GET /ad` serve it within 2 s, pause it and see it stop, edit with a stale page and
//! see the conflict, a viewer without write controls, sign out, pages that fit a phone. The
//! browser also takes the README's screenshots (`UPDATE_SCREENSHOTS=1` writes them to
//! docs/screenshots/).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

use crate::browser::Driver;
use crate::harness::{Response, Server, config, parse, repo, run, send, send_raw_from, temp_dir};
use crate::server::{CHROME, DE};
use crate::support::tool;

const CAMPAIGNS: &str = r#"[[placement]]
id = "top"
sizes = ["728x90"]

[[campaign]]
id = 1
name = "House"
url = "https://house.example/"
bid = 1.0

[[campaign.creative]]
id = 11
kind = "text"
text = "Hello from the house"

# A daily budget below the price of one impression: the delivery engine says it is spent (the
# statistics, with nothing spent, could not).
[[campaign]]
id = 3
name = "Tiny budget"
url = "https://tiny.example/"
bid = 0.5
[campaign.budget]
daily = 0.0001
[[campaign.creative]]
id = 31
kind = "text"
text = "Tiny"

[[campaign]]
id = 4
name = "Next year"
url = "https://later.example/"
bid = 0.5
start = 2099-01-01
[[campaign.creative]]
id = 41
kind = "text"
text = "Later"

[[campaign]]
id = 5
name = "Last year"
url = "https://earlier.example/"
bid = 0.5
end = 2020-01-01
[[campaign.creative]]
id = 51
kind = "text"
text = "Earlier"

[[campaign]]
id = 6
name = "Empty"
url = "https://empty.example/"
bid = 0.5
"#;

const CONSOLE_URL: &str = "https://console.example/";

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// Signs in with `token`; returns the `Cookie` header value.
fn sign_in(admin: SocketAddr, token: &str) -> String {
    let r = send(
        admin,
        "POST",
        "/sign-in",
        &[FORM],
        &form(&[("token", token)]),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/campaigns"));
    let cookie = r.header("set-cookie").unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[start..].split('"').next().unwrap().to_string()
}

fn token(cfg: &Path, role: &str) -> String {
    let (status, out, err) = run(
        &[
            "token",
            "create",
            "--role",
            role,
            "--config",
            cfg.to_str().unwrap(),
        ],
        None,
    );
    assert!(status.success(), "{err}");
    out.trim().to_string()
}

fn ad_location(s: &Server) -> String {
    s.ad(DE, CHROME)
        .header("location")
        .unwrap_or_default()
        .to_string()
}

fn check_security_headers(r: &Response) {
    let csp = r.header("content-security-policy").unwrap_or_default();
    for part in [
        "frame-ancestors 'none'",
        "script-src 'self'",
        "default-src 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("same-origin"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(!r.body.contains("<script>"), "no inline script: {}", r.body);
}

/// Everything a browser is not needed for.
fn http_checks(s: &Server, admin: SocketAddr, admin_token: &str, viewer_token: &str) {
    let r = send(admin, "GET", "/campaigns", &[], "");
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/sign-in")),
        "{r:?}"
    );
    let r = send(admin, "GET", "/sign-in", &[], "");
    assert_eq!(r.status, 200);
    check_security_headers(&r);
    assert!(r.body.contains("name=\"viewport\""), "{}", r.body);
    assert!(r.body.contains("<label for=\"token\""), "{}", r.body);
    let r = send(
        admin,
        "POST",
        "/sign-in",
        &[FORM],
        &form(&[("token", "rotator_wrong")]),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("set-cookie").is_none());
    // A form sent from another site is refused, sign-in included (a login CSRF).
    let r = send(
        admin,
        "POST",
        "/sign-in",
        &[FORM, ("Origin", "http://evil.example")],
        &form(&[("token", admin_token)]),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.header("set-cookie").is_none());
    // Failed sign-ins are limited per client, like bearer tokens (another source address, so
    // the sign-ins below are not refused).
    let attempt = form(&[("token", "rotator_guess")]);
    let raw = format!(
        "POST /sign-in HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{attempt}",
        attempt.len()
    );
    let statuses: Vec<u16> = (0..11)
        .map(|_| parse(&send_raw_from([127, 0, 0, 3].into(), admin, raw.as_bytes())).status)
        .collect();
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10], 429, "{statuses:?}");

    let cookie = sign_in(admin, admin_token);
    let with = [("Cookie", cookie.as_str()), FORM];
    let list = send(admin, "GET", "/campaigns", &with, "");
    assert_eq!(list.status, 200, "{list:?}");
    check_security_headers(&list);
    assert!(
        list.body.contains("House") && list.body.contains(">serving<"),
        "{}",
        list.body
    );
    let csrf = csrf_of(&list.body);
    // The stylesheet and script the pages allow.
    let css = send(admin, "GET", "/assets/console.css", &[], "");
    assert!(css.status == 200 && css.header("content-type").unwrap().starts_with("text/css"));

    // CSRF: missing or wrong → 403, nothing changed; right → paused.
    for body in [form(&[]), form(&[("csrf", "not-the-token")])] {
        let r = send(admin, "POST", "/campaigns/1/pause", &with, &body);
        assert_eq!(r.status, 403, "{r:?}");
        check_security_headers(&r);
    }
    let file = || std::fs::read_to_string(s.dir.join("campaigns.toml")).unwrap();
    assert!(!file().contains("active = false"), "{}", file());
    let r = send(
        admin,
        "POST",
        "/campaigns/1/pause",
        &with,
        &form(&[("csrf", &csrf)]),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert!(file().contains("active = false"), "{}", file());
    let r = send(
        admin,
        "POST",
        "/campaigns/1/resume",
        &with,
        &form(&[("csrf", &csrf)]),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert!(!file().contains("active = false"), "{}", file());

    // The edit page: the creative's preview in a sandbox without allow-same-origin.
    let page = send(admin, "GET", "/campaigns/1", &with, "").body;
    // A creative's problem is shown next to its field (an image needs a size).
    let etag = page
        .split("name=\"etag\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap()
        .replace("&quot;", "\"");
    let bad = form(&[
        ("csrf", &csrf),
        ("etag", &etag),
        ("name", "House"),
        ("url", "https://house.example/"),
        ("bid", "1"),
        ("active", "on"),
        ("creatives", "1"),
        ("cr0.id", "11"),
        ("cr0.kind", "image"),
        ("cr0.image_url", "https://house.example/a.png"),
    ]);
    let r = send(admin, "POST", "/campaigns/1", &with, &bad);
    assert_eq!(r.status, 422, "{r:?}");
    let err = r
        .body
        .split("id=\"f-cr0-size-err\">")
        .nth(1)
        .unwrap_or_else(|| panic!("{}", r.body));
    assert!(err.starts_with("required"), "{err}");
    assert!(!file().contains("a.png"), "{}", file());
    assert!(
        page.contains("src=\"/preview/1/11\" sandbox=\"allow-scripts\""),
        "{page}"
    );
    assert!(page.contains("id=\"save\""), "{page}");
    let r = send(admin, "GET", "/preview/1/11", &with, "");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("Hello from the house"), "{}", r.body);
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.starts_with("sandbox allow-scripts;") && csp.contains("frame-ancestors 'self'"),
        "{csp}"
    );
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));

    // Placements: both tags, with the ad listener's real address.
    let page = send(admin, "GET", "/placements", &with, "").body;
    let ads = format!("http://127.0.0.1:{}", s.addr.port());
    assert!(
        page.contains(&format!("src=&quot;{ads}/v1/tag.js&quot;")),
        "{page}"
    );
    assert!(
        page.contains("data-rotator-placement=&quot;top&quot;"),
        "{page}"
    );
    assert!(
        page.contains(&format!(
            "src=&quot;{ads}/v1/frame/top&quot; width=&quot;728&quot; height=&quot;90&quot;"
        )),
        "{page}"
    );

    // The CSV download: what `rotator report --format csv` prints (same header and rows).
    for _ in 0..3 {
        assert_eq!(ad_location(s), "https://house.example/");
    }
    // The statistics are flushed every 200 ms; wait (up to 10 s) until the three are in.
    let t0 = Instant::now();
    let r = loop {
        let r = send(admin, "GET", "/report.csv?by=campaign&since=1h", &with, "");
        if r.body.lines().any(|l| l.starts_with("1,3,")) || t0.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    assert!(
        r.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    let cfg = s.dir.join("rotator.toml");
    let (_, cli, err) = run(
        &[
            "report",
            "--config",
            cfg.to_str().unwrap(),
            "--since",
            "1h",
            "--by",
            "campaign",
            "--format",
            "csv",
        ],
        None,
    );
    let first_lines = |t: &str| t.lines().take(2).map(String::from).collect::<Vec<_>>();
    assert_eq!(first_lines(&r.body), first_lines(&cli), "{err}");
    assert!(
        r.body.lines().nth(1).unwrap().starts_with("1,3,"),
        "{}",
        r.body
    );
    let list = send(admin, "GET", "/campaigns", &with, "").body;
    assert!(
        list.contains("<td class=\"num\">3</td><td class=\"num\">3</td><td class=\"num\">0</td>"),
        "today's requests, impressions, clicks: {list}"
    );
    assert!(list.contains("3 in all, at most 3 in an hour"), "{list}");
    // Statuses (the delivery engine's verdicts: it ticks once a second, so allow a few).
    let statuses = [
        ("House", "serving"),
        ("Tiny budget", "out of budget"),
        ("Next year", "scheduled"),
        ("Last year", "ended"),
        ("Empty", "no creatives"),
    ];
    let wrong = |list: &str| {
        statuses.iter().find_map(|(name, status)| {
            let shown = list
                .split(&format!(">{name}<"))
                .nth(1)
                .and_then(|row| row.split("class=\"status").nth(1));
            match shown {
                Some(shown) if shown.contains(&format!(">{status}<")) => None,
                _ => Some(format!("{name}: not {status}: {shown:?}")),
            }
        })
    };
    let t0 = Instant::now();
    let mut list = list;
    while let Some(w) = wrong(&list) {
        assert!(t0.elapsed() < Duration::from_secs(5), "{w}");
        std::thread::sleep(Duration::from_millis(100));
        list = send(admin, "GET", "/campaigns", &with, "").body;
    }
    let page = send(admin, "GET", "/report?by.campaign=on&since=1h", &with, "").body;
    assert!(
        page.contains("<th scope=\"row\">1</th><td class=\"num\">3</td>"),
        "{page}"
    );

    // A viewer reads but cannot write: no write controls, 403 with a valid CSRF token.
    let viewer = sign_in(admin, viewer_token);
    let vwith = [("Cookie", viewer.as_str()), FORM];
    let page = send(admin, "GET", "/campaigns/1", &vwith, "").body;
    assert!(
        !page.contains("id=\"save\"") && !page.contains("Pause campaign"),
        "{page}"
    );
    let vcsrf = csrf_of(&page);
    let r = send(
        admin,
        "POST",
        "/campaigns/1/pause",
        &vwith,
        &form(&[("csrf", &vcsrf)]),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(!file().contains("active = false"));

    // Sign-out ends the session.
    let r = send(
        admin,
        "POST",
        "/sign-out",
        &vwith,
        &form(&[("csrf", &vcsrf)]),
    );
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/sign-in")),
        "{r:?}"
    );
    let r = send(admin, "GET", "/campaigns", &vwith, "");
    assert_eq!(r.status, 303, "{r:?}");
}

#[test]
fn issue12_console_over_http() {
    let (s, admin, admin_token, viewer_token) = start("console-http");
    http_checks(&s, admin, &admin_token, &viewer_token);
}

fn start(tag: &str) -> (Server, SocketAddr, String, String) {
    let dir = temp_dir(tag);
    let cfg = config(
        "",
        "[admin]\nlisten = \"127.0.0.1:0\"\n[stats]\nsink = \"sqlite\"\nflush_interval = \"200ms\"\n",
    )
    .replace("watch_interval = \"200ms\"", "watch_interval = \"1s\"");
    std::fs::write(dir.join("rotator.toml"), &cfg).unwrap();
    let admin_token = token(&dir.join("rotator.toml"), "admin");
    let viewer_token = token(&dir.join("rotator.toml"), "viewer");
    let s = Server::start_in(&dir, &cfg, CAMPAIGNS);
    let admin = s.admin.expect("the admin listener");
    (s, admin, admin_token, viewer_token)
}

/// A headless Chromium session (as `browser.rs` starts it), 1000 px wide: the screenshots' width.
async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1000,700", "--hide-scrollbars", "--force-device-scale-factor=1",
        ]}),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(driver.url())
        .await
        .unwrap_or_else(|e| panic!("no browser session: {e}"))
}

async fn fill(c: &Client, id: &str, value: &str) {
    let e = c.find(Locator::Id(id)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Clicks a button that submits a form and waits (up to 5 s) until the browser shows the
/// answer: a new document, fully loaded. (A click returns as soon as the form is sent, and an
/// answer at the same address as the form, a refusal or a conflict, cannot be told by its URL.)
async fn submit(c: &Client, css: &str) {
    c.execute("window.rotatorOldPage = true", vec![])
        .await
        .unwrap();
    click(c, css).await;
    let t0 = Instant::now();
    loop {
        let loaded = c
            .execute(
                "return window.rotatorOldPage === undefined && document.readyState === 'complete'",
                vec![],
            )
            .await
            .unwrap();
        if loaded == true {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no answer to {css} within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 5 s) until the browser is at `path` (a form's answer may still be loading).
async fn at(c: &Client, path: &str) {
    let t0 = Instant::now();
    loop {
        let now = c.current_url().await.unwrap();
        if now.path() == path
            && c.execute("return document.readyState", vec![])
                .await
                .unwrap()
                == "complete"
        {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "at {now}, not {path}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn text(c: &Client) -> String {
    c.find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Takes a screenshot of the whole page (window 1000 px wide, at most 1400 px high) into the
/// test's folder; with `UPDATE_SCREENSHOTS=1`, into docs/screenshots/NAME.png (the README's
/// pictures), so an ordinary test run leaves the repository as it was.
async fn screenshot(c: &Client, s: &Server, name: &str) {
    let height = c
        .execute("return document.documentElement.scrollHeight", vec![])
        .await
        .unwrap()
        .as_f64()
        .unwrap_or(700.0)
        .clamp(400.0, 1400.0);
    c.set_window_size(1000, height as u32 + 90).await.unwrap();
    let png = c.screenshot().await.unwrap();
    // PNG: the width is the big-endian u32 at byte 16 (IHDR).
    assert_eq!(png[16..20], 1000u32.to_be_bytes(), "{name}: 1000 px wide");
    let dir = if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        repo().join("docs/screenshots")
    } else {
        s.dir.join("screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    c.set_window_size(1000, 700).await.unwrap();
}

/// Polls `GET /ad` until `served` says yes; returns how long it took.
async fn until(s: &Server, served: impl Fn(&str) -> bool, what: &str) -> Duration {
    let t0 = Instant::now();
    while !served(&ad_location(s)) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

async fn scenario(
    c: Client,
    s: &Server,
    admin: SocketAddr,
    admin_token: String,
    viewer_token: String,
) {
    let base = format!("http://{admin}");
    c.goto(&format!("{base}/campaigns")).await.unwrap();
    at(&c, "/sign-in").await;
    fill(&c, "token", &admin_token).await;
    submit(&c, "main button[type=submit]").await;
    at(&c, "/campaigns").await;

    // Create: first with a bid the loader refuses (its message next to the field), then right.
    c.goto(&format!("{base}/campaigns/new")).await.unwrap();
    fill(&c, "f-name", "Console launch").await;
    fill(&c, "f-url", CONSOLE_URL).await;
    fill(&c, "f-bid", "0").await;
    fill(&c, "f-budget-daily", "100").await;
    c.find(Locator::Css("#f-cr0-kind option[value=text]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    fill(&c, "f-cr0-text", "Made in the console").await;
    submit(&c, "#save").await;
    let err = c
        .find(Locator::Id("f-bid-err"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(err.contains("more than 0"), "{err}");
    assert_eq!(
        c.find(Locator::Id("f-bid"))
            .await
            .unwrap()
            .attr("aria-invalid")
            .await
            .unwrap()
            .as_deref(),
        Some("true")
    );
    fill(&c, "f-bid", "50").await;
    submit(&c, "#save").await;
    let t0 = Instant::now();
    let url = loop {
        let url = c.current_url().await.unwrap();
        if url.query() == Some("done=saved") || t0.elapsed() > Duration::from_secs(5) {
            break url;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        url.path().starts_with("/campaigns/") && url.query() == Some("done=saved"),
        "{url}"
    );
    let took = until(s, |l| l == CONSOLE_URL, "the new campaign served").await;
    assert!(took < Duration::from_secs(2), "served after {took:?}");
    let edit_url = url.as_str().split('?').next().unwrap().to_string();
    screenshot(&c, s, "form").await;
    // The preview frame shows the creative (sandboxed, from the console's origin).
    let frame = c.find(Locator::Css(".preview iframe")).await.unwrap();
    assert_eq!(
        frame.attr("sandbox").await.unwrap().as_deref(),
        Some("allow-scripts")
    );
    frame.enter_frame().await.unwrap();
    let shown = c
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(shown.trim(), "Made in the console");
    c.enter_parent_frame().await.unwrap();

    // Pause: it stops within 2 s.
    submit(&c, "#pause-resume").await;
    at(&c, "/campaigns").await;
    assert!(text(&c).await.contains("paused"), "{}", text(&c).await);
    let took = until(s, |l| l != CONSOLE_URL, "the paused campaign stopped").await;
    assert!(took < Duration::from_secs(2), "still served after {took:?}");

    // A stale page: someone else saves in between; this save is refused and shows their values.
    c.goto(&edit_url).await.unwrap();
    let id = edit_url.rsplit('/').next().unwrap();
    let api = |method: &str, body: &str, etag: Option<&str>| {
        let auth = format!("Bearer {admin_token}");
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        if let Some(e) = etag {
            headers.push(("If-Match", e));
        }
        send(
            admin,
            method,
            &format!("/api/v1/campaigns/{id}"),
            &headers,
            body,
        )
    };
    let current = api("GET", "", None);
    let mut doc: Value = serde_json::from_str(&current.body).unwrap();
    doc["name"] = "Renamed elsewhere".into();
    let r = api("PUT", &doc.to_string(), current.header("etag"));
    assert_eq!(r.status, 200, "{r:?}");
    fill(&c, "f-name", "My stale edit").await;
    submit(&c, "#save").await;
    let conflict = c
        .find(Locator::Id("conflict"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(conflict.contains("changed this campaign"), "{conflict}");
    let name = c
        .find(Locator::Id("f-name"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("Renamed elsewhere"));
    let file = std::fs::read_to_string(s.dir.join("campaigns.toml")).unwrap();
    assert!(!file.contains("My stale edit"), "{file}");

    // Screenshots of the other pages (some traffic first, so the list and report show figures).
    for _ in 0..5 {
        s.ad(DE, CHROME);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.goto(&format!("{base}/campaigns")).await.unwrap();
    screenshot(&c, s, "list").await;
    c.goto(&format!(
        "{base}/report?by.campaign=on&by.placement=on&since=24h"
    ))
    .await
    .unwrap();
    assert!(text(&c).await.contains("Download CSV"));
    screenshot(&c, s, "report").await;
    c.goto(&format!("{base}/placements")).await.unwrap();
    screenshot(&c, s, "placements").await;

    // On a phone-sized window the pages fit its width (wide tables scroll in their own box).
    c.set_window_size(390, 800).await.unwrap();
    for path in ["/campaigns", "/placements", "/report", edit_url.as_str()] {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{base}{path}")
        };
        c.goto(&url).await.unwrap();
        let fits = c
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            fits,
            Value::Bool(true),
            "{path}: a narrow window, the page no wider"
        );
    }
    c.set_window_size(1000, 700).await.unwrap();

    // Keyboard: the skip link is the first thing Tab reaches, and it is visible when focused.
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("\u{e004}")
        .await
        .unwrap();
    let focused = c
        .execute("return document.activeElement.className", vec![])
        .await
        .unwrap();
    assert_eq!(focused.as_str(), Some("skip"));

    // Sign out; then a viewer: no write controls.
    submit(&c, ".who button").await;
    at(&c, "/sign-in").await;
    c.goto(&format!("{base}/campaigns")).await.unwrap();
    at(&c, "/sign-in").await;
    fill(&c, "token", &viewer_token).await;
    submit(&c, "main button[type=submit]").await;
    at(&c, "/campaigns").await;
    assert!(c.find(Locator::LinkText("New campaign")).await.is_err());
    c.goto(&edit_url).await.unwrap();
    assert!(c.find(Locator::Id("save")).await.is_err());
    assert!(c.find(Locator::Id("pause-resume")).await.is_err());
    submit(&c, ".who button").await;
    at(&c, "/sign-in").await;
}

#[tokio::test(flavor = "current_thread")]
async fn issue12_console_in_a_real_browser() {
    let (Some(_), Some(chromedriver)) = (tool("chromium"), tool("chromedriver")) else {
        return;
    };
    let (s, admin, admin_token, viewer_token) = start("console-browser");
    let driver = Driver::start(&chromedriver);
    let c = browser(&driver).await;
    let s = std::sync::Arc::new(s);
    let scenario = tokio::spawn({
        let (c, s) = (c.clone(), s.clone());
        async move { scenario(c, &s, admin, admin_token, viewer_token).await }
    });
    let outcome = scenario.await;
    let _ = c.close().await;
    drop(driver);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
