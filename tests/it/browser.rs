//! The ad tags in a real browser (issue 10, item 6): headless Chromium driven through chromedriver
//! (WebDriver, fantoccini) loads publisher pages that this test serves itself, on another origin
//! than rotator (`localhost:PAGE` vs `127.0.0.1:ROTATOR`).
//!
//! One test, one rotator, one browser: the script tag with two slots (an image and an html
//! creative), a reload, a click through `click_url` to the test's landing page, and the iframe
//! tag; then `rotator report --by placement,creative` must show exactly what the browser did.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::harness::{Server, config, report_json, temp_dir};
use crate::support::{free_port, tool};

/// The sandbox the tag must put on every ad frame (never `allow-same-origin`).
const SANDBOX: &str = "allow-scripts allow-popups allow-popups-to-escape-sandbox \
                       allow-top-navigation-by-user-activation";

/// A desktop Chrome User-Agent: headless Chromium's own says `HeadlessChrome`, a bot to some.
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                  Chrome/124.0.0.0 Safari/537.36";

/// The image creative's colour and the html creative's (RGB).
const RED: [u8; 3] = [220, 20, 30];
const GREEN: [u8; 3] = [20, 160, 60];

/// A 728×90 PNG of one colour.
fn banner_png(rgb: [u8; 3]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 728, 90);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&rgb.repeat(728 * 90)).unwrap();
    writer.finish().unwrap();
    out
}

/// Stands for rotator's origin in the pages; replaced when a page is served.
const ROTATOR: &str = "ROTATOR_ORIGIN";

/// The publisher: a tiny server (one request per connection) with the pages, the banner image
/// and a landing page whose hits it counts. The pages name rotator, whose campaigns name the
/// publisher: so the publisher starts first and learns rotator's origin in `rotator`.
struct Publisher {
    port: u16,
    landings: Arc<AtomicU64>,
    rotator: Arc<Mutex<String>>,
}

impl Publisher {
    fn start() -> Publisher {
        let rotator = Arc::new(Mutex::new(String::new()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let landings = Arc::new(AtomicU64::new(0));
        let pages: BTreeMap<&str, (&str, Vec<u8>)> = BTreeMap::from([
            (
                "/script.html",
                (
                    "text/html; charset=utf-8",
                    format!(
                        "<!doctype html><html><head><meta charset=utf-8><title>script tag</title>\
                         <script async src=\"{ROTATOR}/v1/tag.js\"></script></head>\
                         <body style=\"margin:0;background:#fff\">\
                         <div id=\"first\" data-rotator-placement=\"top-banner\"></div>\
                         <p style=\"height:20px;margin:0\"></p>\
                         <div data-rotator-placement=\"top-banner\"></div></body></html>"
                    )
                    .into_bytes(),
                ),
            ),
            (
                "/frame.html",
                (
                    "text/html; charset=utf-8",
                    format!(
                        "<!doctype html><html><head><meta charset=utf-8><title>iframe tag</title>\
                         </head><body style=\"margin:0;background:#fff\">\
                         <iframe src=\"{ROTATOR}/v1/frame/top-banner\" width=\"728\" height=\"90\" \
                         frameborder=\"0\" scrolling=\"no\"></iframe></body></html>"
                    )
                    .into_bytes(),
                ),
            ),
            (
                "/landing",
                (
                    "text/html; charset=utf-8",
                    b"<!doctype html><title>landed</title><h1>landed</h1>".to_vec(),
                ),
            ),
            ("/red.png", ("image/png", banner_png(RED))),
        ]);
        let counter = landings.clone();
        let origin = rotator.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let _ = serve_one(stream, &pages, &counter, &origin);
            }
        });
        Publisher {
            port,
            landings,
            rotator,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.port)
    }
}

fn serve_one(
    mut stream: TcpStream,
    pages: &BTreeMap<&str, (&str, Vec<u8>)>,
    landings: &AtomicU64,
    rotator: &Mutex<String>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    if path == "/landing" {
        landings.fetch_add(1, Ordering::SeqCst);
    }
    let (status, content_type, body) = match pages.get(path) {
        Some((t, b)) if t.starts_with("text/html") => {
            let origin = rotator.lock().unwrap().clone();
            let page = String::from_utf8_lossy(b).replace(ROTATOR, &origin);
            ("200 OK", *t, page.into_bytes())
        }
        Some((t, b)) => ("200 OK", *t, b.clone()),
        None => ("404 Not Found", "text/plain", b"not found".to_vec()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    let _ = reader.read(&mut [0; 1]);
    Ok(())
}

/// Campaigns: 1 (bid 2) shows the red PNG, 2 (bid 1) an html creative in green; both fit
/// `top-banner`, so a page with two slots gets one of each (a campaign wins one slot of a
/// request while another eligible one exists), and the iframe tag gets campaign 1.
fn campaigns(publisher: &Publisher) -> String {
    format!(
        r##"[[placement]]
id = "top-banner"
sizes = ["728x90"]
kinds = ["image", "html"]

[[campaign]]
id = 1
name = "red image"
url = "{landing}?c=1"
bid = 2.0
[[campaign.creative]]
id = 101
kind = "image"
size = "728x90"
image_url = "{image}"
alt = "Red sale"

[[campaign]]
id = 2
name = "green html"
url = "{landing}?c=2"
bid = 1.0
[[campaign.creative]]
id = 201
kind = "html"
size = "728x90"
html = "<a id='green' href='{{{{click_url}}}}' style='display:block;width:728px;height:90px;background:rgb({g0},{g1},{g2})'>Green</a>"
"##,
        landing = publisher.url("/landing"),
        image = publisher.url("/red.png"),
        g0 = GREEN[0],
        g1 = GREEN[1],
        g2 = GREEN[2],
    )
}

/// chromedriver on a free loopback port, killed (by its PID) when dropped.
pub(crate) struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    pub(crate) fn start(program: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    browser_with(driver, &[]).await
}

/// A browser session with `extra` command-line switches (`tls.rs`: `--ignore-certificate-errors`).
pub(crate) async fn browser_with(driver: &Driver, extra: &[&str]) -> Client {
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1000,700".into(),
        "--hide-scrollbars".into(),
        "--force-device-scale-factor=1".into(),
        format!("--user-agent={UA}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("no browser session: {e}"))
}

/// Polls the JavaScript expression `expr` until it is true.
pub(crate) async fn wait_js(c: &Client, expr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = c.execute(&format!("return !!({expr});"), vec![]).await;
        if matches!(v, Ok(Value::Bool(true))) {
            return;
        }
        if Instant::now() > deadline {
            let state = c
                .execute(
                    "return [...document.querySelectorAll('[data-rotator-placement]')]\
                     .map(e => e.getAttribute('data-rotator-state') + ' ' + e.innerHTML);",
                    vec![],
                )
                .await;
            panic!("timed out waiting for {what} ({expr}); slots: {state:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The RGB pixel at CSS position (x, y) of a PNG screenshot.
fn pixel(png_bytes: &[u8], x: u32, y: u32) -> [u8; 3] {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(
        x < info.width && y < info.height,
        "({x}, {y}) outside the screenshot"
    );
    let at = (y as usize * info.width as usize + x as usize) * channels;
    [buf[at], buf[at + 1], buf[at + 2]]
}

fn close_to(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 8)
}

/// Checks the two slots of the script-tag page: frames of 728×90 with the sandbox, the red image
/// in the first, the html creative in the second, and both visible in a screenshot.
async fn check_script_page(c: &Client) {
    wait_js(
        c,
        "document.querySelectorAll('[data-rotator-state=rendered]').length == 2",
        "both slots rendered",
    )
    .await;
    let frames = c
        .find_all(Locator::Css("div[data-rotator-placement] > iframe"))
        .await
        .unwrap();
    assert_eq!(frames.len(), 2);
    let mut centres = Vec::new();
    for f in &frames {
        assert_eq!(f.attr("sandbox").await.unwrap().as_deref(), Some(SANDBOX));
        let (x, y, w, h) = f.rectangle().await.unwrap();
        assert_eq!((w, h), (728.0, 90.0), "frame size");
        centres.push(((x + w / 2.0) as u32, (y + h / 2.0) as u32));
    }
    // Inside the frames: the image has loaded (its natural size), the html creative is there.
    frames[0].clone().enter_frame().await.unwrap();
    let img = c.find(Locator::Css("a[target=_top] > img")).await.unwrap();
    assert_eq!(img.attr("alt").await.unwrap().as_deref(), Some("Red sale"));
    let natural = c
        .execute("return document.querySelector('img').naturalWidth;", vec![])
        .await
        .unwrap();
    assert_eq!(natural, json!(728), "the image loaded");
    c.enter_parent_frame().await.unwrap();
    frames[1].clone().enter_frame().await.unwrap();
    c.find(Locator::Css("a#green")).await.unwrap();
    c.enter_parent_frame().await.unwrap();

    let shot = c.screenshot().await.unwrap();
    let (red, green) = (
        pixel(&shot, centres[0].0, centres[0].1),
        pixel(&shot, centres[1].0, centres[1].1),
    );
    assert!(
        close_to(red, RED),
        "first slot's pixel {red:?}, expected {RED:?}"
    );
    assert!(
        close_to(green, GREEN),
        "second slot's pixel {green:?}, expected {GREEN:?}"
    );
}

/// `GET /v1/frame/{placement}` over plain HTTP: a never-stored HTML document that sandboxes
/// itself and may be framed anywhere, with the creative and its impression pixel; `404` for an
/// unknown placement; `HEAD` decides nothing. Counts one request (and no impression: nobody loads
/// the pixel) for creative 101.
fn check_frame_http(server: &Server) {
    let r = server.get("/v1/frame/top-banner", &[("User-Agent", UA.as_bytes())]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("content-security-policy"),
        Some(format!("sandbox {SANDBOX}").as_str())
    );
    assert_eq!(
        r.header("x-frame-options"),
        None,
        "an ad may be framed anywhere"
    );
    assert!(r.body.contains("alt=\"Red sale\""), "{}", r.body);
    assert!(
        r.body.contains("/v1/i/") && r.body.contains("/v1/c/"),
        "{}",
        r.body
    );
    let head = crate::harness::request(server.addr, "HEAD", "/v1/frame/top-banner", &[]);
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    let unknown = server.get("/v1/frame/no-such-slot", &[]);
    assert_eq!(unknown.status, 404);
}

/// (placement, creative) → (requests, impressions, viewables, clicks) from the report.
fn counts(dir: &Path) -> BTreeMap<(String, String), [u64; 4]> {
    let v = report_json(dir, Some("placement,creative"));
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = BTreeMap::new();
    for row in v["rows"].as_array().unwrap() {
        let key = (text(&row["placement"]), text(&row["creative"]));
        let n = |k: &str| row[k].as_u64().unwrap_or_else(|| panic!("{k} in {row}"));
        let entry: &mut [u64; 4] = out.entry(key).or_default();
        for (i, k) in ["requests", "impressions", "viewables", "clicks"]
            .iter()
            .enumerate()
        {
            entry[i] += n(k);
        }
    }
    out
}

/// What the visitor does: the script-tag page, a reload, a click, the iframe-tag page.
async fn scenario(c: Client, publisher: Publisher) {
    // The script tag: two slots, one decision call, two frames.
    c.goto(&publisher.url("/script.html")).await.unwrap();
    check_script_page(&c).await;
    // Both ads are fully in view: after 1 s each fires its viewable beacon.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A reload: new decisions, new impressions.
    c.refresh().await.unwrap();
    check_script_page(&c).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A click on the image goes through rotator's click URL to the landing page.
    let frame = c.find(Locator::Css("#first > iframe")).await.unwrap();
    frame.enter_frame().await.unwrap();
    c.find(Locator::Css("a > img"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.enter_parent_frame().await.unwrap();
    wait_js(&c, "location.pathname == '/landing'", "the landing page").await;
    let landed = c.current_url().await.unwrap();
    assert_eq!(landed.query(), Some("c=1"), "{landed}");
    assert_eq!(publisher.landings.load(Ordering::SeqCst), 1);

    // The iframe tag: campaign 1's image in a 728×90 document from rotator.
    c.goto(&publisher.url("/frame.html")).await.unwrap();
    let frame = c.find(Locator::Css("iframe")).await.unwrap();
    let (x, y, w, h) = frame.rectangle().await.unwrap();
    assert_eq!((w, h), (728.0, 90.0));
    frame.enter_frame().await.unwrap();
    c.wait()
        .for_element(Locator::Css("a[target=_top] > img"))
        .await
        .unwrap();
    wait_js(
        &c,
        "document.querySelector('a > img').naturalWidth == 728",
        "the iframe tag's image",
    )
    .await;
    c.enter_parent_frame().await.unwrap();
    let shot = c.screenshot().await.unwrap();
    let p = pixel(&shot, (x + w / 2.0) as u32, (y + h / 2.0) as u32);
    assert!(close_to(p, RED), "iframe tag's pixel {p:?}");
    // Its impression pixel loads with the document; give it a moment to reach rotator.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn ad_tags_render_and_count_in_a_real_browser() {
    let (Some(_), Some(chromedriver)) = (tool("chromium"), tool("chromedriver")) else {
        return;
    };
    let dir = temp_dir("browser");
    let publisher = Publisher::start();
    let server = Server::start_in(
        &dir,
        &config(
            "",
            "[stats]\nsink = \"sqlite\"\nflush_interval = \"200ms\"\n",
        ),
        &campaigns(&publisher),
    );
    *publisher.rotator.lock().unwrap() = format!("http://127.0.0.1:{}", server.addr.port());

    check_frame_http(&server);

    let driver = Driver::start(&chromedriver);
    let c = browser(&driver).await;
    // The scenario runs as a task so that a failed assertion still closes the browser.
    let scenario = tokio::spawn(scenario(c.clone(), publisher));
    let outcome = scenario.await;
    let _ = c.close().await;
    drop(driver);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }

    // Each beacon counted once: nothing arrived twice.
    let metrics = crate::harness::request(server.metrics.unwrap(), "GET", "/metrics", &[]).body;
    let events = |kind: &str, outcome: &str| {
        let series =
            format!("rotator_tracking_events_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    let counted = ["impression", "viewable", "click"].map(|k| events(k, "counted"));
    let duplicates = ["impression", "viewable", "click"].map(|k| events(k, "duplicate"));
    assert_eq!(counted, [5, 4, 1], "counted impressions, viewables, clicks");
    assert_eq!(
        duplicates,
        [0, 0, 0],
        "duplicate impressions, viewables, clicks"
    );

    // SIGTERM flushes the last statistics.
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let got = counts(&dir);
    let top = |creative: &str| {
        got.get(&("top-banner".to_string(), creative.to_string()))
            .copied()
            .unwrap_or_else(|| panic!("no row for top-banner/{creative}: {got:?}"))
    };
    // Creative 101: two script-tag loads, one iframe tag in the browser and one over plain HTTP
    // (a request, no impression); two viewables; one click.
    assert_eq!(
        top("101"),
        [4, 3, 2, 1],
        "requests, impressions, viewables, clicks: {got:?}"
    );
    // Creative 201: two script-tag loads, no click.
    assert_eq!(
        top("201"),
        [2, 2, 2, 0],
        "requests, impressions, viewables, clicks: {got:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET /v1/tag.js` from the real server: the script with its type, a short public cache, a
/// strong validator that revalidates to `304`, and `nosniff`.
#[test]
fn tag_script_is_served_cacheable_with_a_validator() {
    let dir = temp_dir("tagjs");
    let server = Server::start_in(
        &dir,
        &config("", "[stats]\nsink = \"none\"\n"),
        &crate::harness::seed_campaigns(),
    );
    let r = server.get("/v1/tag.js", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(r.body.contains("data-rotator-placement"), "{}", r.body);
    assert!(r.body.len() < 8 * 1024, "a few KiB: {} bytes", r.body.len());
    let etag = r.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let again = server.get("/v1/tag.js", &[("If-None-Match", etag.as_bytes())]);
    assert_eq!(again.status, 304);
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(again.body, "");
    let other = server.get("/v1/tag.js", &[("If-None-Match", b"\"stale\"")]);
    assert_eq!(other.status, 200);

    let head = crate::harness::request(server.addr, "HEAD", "/v1/tag.js", &[]);
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    let post = crate::harness::request(server.addr, "POST", "/v1/tag.js", &[]);
    assert_eq!(post.status, 405);
    let _ = std::fs::remove_dir_all(&dir);
}

impl Driver {
    /// Where WebDriver sessions are asked for (`console.rs` makes its own).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}
