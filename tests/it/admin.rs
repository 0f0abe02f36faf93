//! Issue 12: the management API on the admin listener, over real HTTP against the real binary:
//! tokens from the CLI, every status, optimistic concurrency (two writers, a hand edit), a pause
//! that stops serving within 2 s, comments kept, the audit log, and responses checked against
//! the OpenAPI document the server publishes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Response, Server, config, request_from, run, send, temp_dir};
use crate::server::{CHROME, DE};

const CAMPAIGNS: &str = r#"# House campaigns: edited by hand and through the API.

[[placement]]
id = "top" # the header slot
sizes = ["728x90"]

# The winner: highest bid, anyone.
[[campaign]]
id = 1
name = "One"   # a comment the API must keep
url = "https://one.example/"
bid = 5.0

[[campaign.creative]]
id = 11
kind = "text"
text = "Hello"

# Second choice.
[[campaign]]
id = 2
name = "Two"
url = "https://two.example/"
bid = 1.0
"#;

/// One request with an optional JSON body and `Connection: close`.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Response {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    send(addr, method, path, headers, &body)
}

fn body(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// An API client with one token.
struct Client {
    addr: SocketAddr,
    auth: String,
}

impl Client {
    fn send(
        &self,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        b: Option<&Value>,
    ) -> Response {
        let mut headers = vec![("Authorization", self.auth.as_str())];
        if let Some(tag) = if_match {
            headers.push(("If-Match", tag));
        }
        call(self.addr, method, &format!("/api/v1{path}"), &headers, b)
    }

    fn get(&self, path: &str) -> Response {
        self.send("GET", path, None, None)
    }

    fn etag(&self, path: &str) -> String {
        let r = self.get(path);
        assert_eq!(r.status, 200, "{r:?}");
        r.header("etag").unwrap().to_string()
    }
}

fn token(cfg: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    all.extend(["--config", cfg.to_str().unwrap()]);
    let (status, out, err) = run(&all, None);
    (status.success(), out, err)
}

/// Where `GET /ad` sends a Chrome visitor from Germany.
fn ad_location(s: &Server) -> String {
    s.ad(DE, CHROME)
        .header("location")
        .unwrap_or_default()
        .to_string()
}

#[test]
fn issue12_management_api() {
    let dir = temp_dir("admin");
    let cfg_path = dir.join("rotator.toml");
    // The default watch interval: a pause must not wait for the watcher (which needs up to
    // three intervals to see a change settle).
    let cfg = config(
        "",
        "[admin]\nlisten = \"127.0.0.1:0\"\n[stats]\nflush_interval = \"500ms\"\n",
    )
    .replace("watch_interval = \"200ms\"", "watch_interval = \"1s\"");
    assert!(cfg.contains("watch_interval = \"1s\""), "{cfg}");
    std::fs::write(&cfg_path, &cfg).unwrap();
    std::fs::write(dir.join("campaigns.toml"), CAMPAIGNS).unwrap();

    // Token CLI: printed once, only hashes stored, mode 0600, listed without the tokens.
    let (ok, admin_token, err) =
        token(&cfg_path, &["create", "--role", "admin", "--name", "alice"]);
    assert!(ok, "{err}");
    let admin_token = admin_token.trim().to_string();
    assert!(
        admin_token.starts_with("rotator_") && err.contains("shown this once"),
        "{err}"
    );
    let (ok, viewer_token, err) = token(&cfg_path, &["create", "--role", "viewer"]);
    assert!(ok, "{err}");
    let viewer_token = viewer_token.trim().to_string();
    let tokens_file = dir.join("data/admin-tokens.toml");
    let stored = std::fs::read_to_string(&tokens_file).unwrap();
    assert!(
        !stored.contains(&admin_token) && !stored.contains(&viewer_token),
        "{stored}"
    );
    assert_eq!(stored.matches("sha256 = ").count(), 2, "{stored}");
    let mode = std::fs::metadata(&tokens_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let (ok, listed, _) = token(&cfg_path, &["list"]);
    assert!(
        ok && listed.contains("alice\tadmin") && listed.contains("viewer-1\tviewer"),
        "{listed}"
    );
    assert!(!listed.contains("rotator_"), "{listed}");
    let (ok, _, err) = token(&cfg_path, &["create", "--role", "admin", "--name", "alice"]);
    assert!(!ok && err.contains("taken"), "{err}");

    let s = Server::spawn(&dir);
    let addr = s.admin.expect("admin listener");
    let admin = Client {
        addr,
        auth: format!("Bearer {admin_token}"),
    };
    let viewer = Client {
        addr,
        auth: format!("Bearer {viewer_token}"),
    };
    let stranger = Client {
        addr,
        auth: "Bearer rotator_not-a-token".into(),
    };

    // 401 without or with a wrong token; the document itself is public.
    let r = call(addr, "GET", "/api/v1/campaigns", &[], None);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate").unwrap().starts_with("Bearer"),
        "{r:?}"
    );
    assert_eq!(stranger.get("/campaigns").status, 401);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let doc = call(addr, "GET", "/api/v1/openapi.json", &[], None);
    assert_eq!(doc.status, 200);
    let doc = body(&doc);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");

    // Reads: 200 with ETag, 404, 405; a viewer reads but does not write (403).
    let status = admin.get("/status");
    assert_eq!(status.status, 200, "{status:?}");
    let status = body(&status);
    assert_eq!(status["campaigns"]["loaded"], 2, "{status}");
    assert_eq!(status["stats"]["sink"], "sqlite");
    assert_eq!(status["state_backend"], "local", "{status}");
    let one = viewer.get("/campaigns/1");
    assert_eq!(one.status, 200, "{one:?}");
    let tag1 = one.header("etag").unwrap().to_string();
    let mut campaign = body(&one);
    assert_eq!(campaign["creatives"][0]["id"], 11, "{campaign}");
    assert_eq!(admin.get("/campaigns/99").status, 404);
    assert_eq!(admin.get("/nowhere").status, 404);
    let r = admin.send("PATCH", "/campaigns/1", None, None);
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, PUT, DELETE"))
    );
    campaign["name"] = json!("One, renamed");
    let r = viewer.send("PUT", "/campaigns/1", Some(&tag1), Some(&campaign));
    assert_eq!(r.status, 403, "{r:?}");

    // 428 without If-Match; 422 in the loader's words; 200 with a new ETag; comments kept.
    assert_eq!(
        admin
            .send("PUT", "/campaigns/1", None, Some(&campaign))
            .status,
        428
    );
    let mut bad = campaign.clone();
    bad["bid"] = json!(0);
    bad["targeting"]["countries"] = json!(["XX"]);
    let r = admin.send("PUT", "/campaigns/1", Some(&tag1), Some(&bad));
    assert_eq!(r.status, 422, "{r:?}");
    let problems = body(&r)["problems"].as_array().unwrap().clone();
    let fields: BTreeSet<&str> = problems
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains("bid") && fields.contains("targeting.countries"),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p["message"] == "0 must be a number more than 0"),
        "{problems:?}"
    );
    let r = admin.send(
        "PUT",
        "/campaigns/1",
        Some(&tag1),
        Some(&json!({"url": "x"})),
    );
    assert_eq!(r.status, 422, "missing bid: {r:?}");
    assert_eq!(body(&r)["problems"][0]["field"], "bid", "{r:?}");
    let r = admin.send("PUT", "/campaigns/1", Some(&tag1), Some(&campaign));
    assert_eq!(r.status, 200, "{r:?}");
    let tag1b = r.header("etag").unwrap().to_string();
    assert_ne!(tag1b, tag1);
    let text = std::fs::read_to_string(dir.join("campaigns.toml")).unwrap();
    for kept in [
        "# House campaigns: edited by hand and through the API.",
        "id = \"top\" # the header slot",
        "# The winner: highest bid, anyone.",
        "name = \"One, renamed\"   # a comment the API must keep",
        "# Second choice.\n[[campaign]]\nid = 2\nname = \"Two\"\n",
    ] {
        assert!(text.contains(kept), "{kept:?} lost:\n{text}");
    }
    // A stale tag: 412 with the current one.
    let r = admin.send("PUT", "/campaigns/1", Some(&tag1), Some(&campaign));
    assert_eq!(
        (r.status, r.header("etag")),
        (412, Some(tag1b.as_str())),
        "{r:?}"
    );

    // Two writers with the same tag at once: one wins, the other gets 412.
    let tag2 = admin.etag("/campaigns/2");
    let writers: Vec<_> = ["A", "B"]
        .into_iter()
        .map(|who| {
            let (auth, tag) = (admin.auth.clone(), tag2.clone());
            std::thread::spawn(move || {
                let c = Client { addr, auth };
                let b = json!({"url": "https://two.example/", "bid": 1.0, "name": format!("Two by {who}")});
                c.send("PUT", "/campaigns/2", Some(&tag), Some(&b)).status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 412]);

    // A hand edit between a read and a write: 412, and the hand edit stays.
    let tag2 = admin.etag("/campaigns/2");
    let path = dir.join("campaigns.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("bid = 1.0\n", "bid = 1.25 # by hand\n");
    assert_ne!(edited, text);
    std::fs::write(&path, &edited).unwrap();
    let b = json!({"url": "https://two.example/", "bid": 1.0, "name": "Overwrite?"});
    let r = admin.send("PUT", "/campaigns/2", Some(&tag2), Some(&b));
    assert_eq!(r.status, 412, "{r:?}");
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("bid = 1.25 # by hand")
    );
    assert_eq!(body(&admin.get("/campaigns/2"))["bid"], 1.25);

    // Pause: campaign 1 stops serving within 2 s; resume brings it back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ad_location(&s) != "https://one.example/" {
        assert!(Instant::now() < deadline, "campaign 1 never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = admin.send("POST", "/campaigns/1/pause", Some(&tag1b), None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(body(&r)["active"], false);
    // Served no more as soon as the answer came (the edit reloads before answering), and
    // certainly within 2 s.
    assert_ne!(ad_location(&s), "https://one.example/");
    let paused = Instant::now();
    while ad_location(&s) == "https://one.example/" {
        assert!(
            paused.elapsed() < Duration::from_secs(2),
            "still served after 2 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("active = false")
    );
    let tag = r.header("etag").unwrap().to_string();
    let r = admin.send("POST", "/campaigns/1/resume", Some(&tag), None);
    assert_eq!(
        (r.status, body(&r)["active"].clone()),
        (200, json!(true)),
        "{r:?}"
    );

    // Create a campaign and a creative (201 + Location), replace and delete them (204).
    let new = json!({"name": "Three", "url": "https://three.example/", "bid": 0.5,
        "placements": ["top"], "start": "2026-01-01", "pricing": "cpc",
        "budget": {"daily": 10.0, "pacing": "asap", "timezone": "Europe/Berlin"},
        "frequency_cap": {"impressions": 3, "per": "24h"}});
    let r = admin.send("POST", "/campaigns", None, Some(&new));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("location"), Some("/api/v1/campaigns/3"));
    let three = body(&r);
    assert_eq!(
        (three["id"].clone(), three["budget"]["daily"].clone()),
        (json!(3), json!(10.0))
    );
    let r = admin.send(
        "POST",
        "/campaigns",
        None,
        Some(&json!({"id": 3, "url": "https://x.example/", "bid": 1})),
    );
    assert_eq!(r.status, 409, "{r:?}");
    let tag3 = admin.etag("/campaigns/3");
    let creative = json!({"kind": "image", "size": "728x90", "image_url": "https://cdn.example/3.png", "alt": "Three"});
    assert_eq!(
        admin
            .send("POST", "/campaigns/3/creatives", None, Some(&creative))
            .status,
        428
    );
    let r = admin.send(
        "POST",
        "/campaigns/3/creatives",
        Some(&tag3),
        Some(&creative),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("/api/v1/campaigns/3/creatives/12")
    );
    let tag3 = r.header("etag").unwrap().to_string();
    let r = admin.get("/campaigns/3/creatives/12");
    assert_eq!((r.status, r.header("etag")), (200, Some(tag3.as_str())));
    let mut c = body(&r);
    c["alt"] = json!("Three, again");
    let r = admin.send("PUT", "/campaigns/3/creatives/12", Some(&tag3), Some(&c));
    assert_eq!(r.status, 200, "{r:?}");
    let tag3 = r.header("etag").unwrap().to_string();
    assert_eq!(admin.get("/campaigns/3/creatives/99").status, 404);
    let r = admin.send("DELETE", "/campaigns/3/creatives/12", Some(&tag3), None);
    assert_eq!(r.status, 204, "{r:?}");
    let tag3 = admin.etag("/campaigns/3");
    // A placement in use cannot go: the loader says why.
    let tag_top = admin.etag("/placements/top");
    let r = admin.send("DELETE", "/placements/top", Some(&tag_top), None);
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("is no [[placement]] of this file"), "{r:?}");
    let r = admin.send(
        "POST",
        "/placements",
        None,
        Some(&json!({"id": "side", "sizes": ["300x250"]})),
    );
    assert_eq!(
        (r.status, r.header("location")),
        (201, Some("/api/v1/placements/side")),
        "{r:?}"
    );
    let tag_side = r.header("etag").unwrap().to_string();
    assert_eq!(
        admin
            .send("DELETE", "/placements/side", Some(&tag_side), None)
            .status,
        204
    );
    assert_eq!(
        admin
            .send("DELETE", "/campaigns/3", Some(&tag3), None)
            .status,
        204
    );
    assert_eq!(admin.get("/campaigns/3").status, 404);
    let r = admin.send(
        "PUT",
        "/campaigns/1",
        Some("*"),
        Some(&json!("not an object")),
    );
    assert_eq!(r.status, 422, "{r:?}");
    let r = call(
        addr,
        "PUT",
        "/api/v1/campaigns/1",
        &[("Authorization", &admin.auth), ("If-Match", "*")],
        None,
    );
    assert_eq!(r.status, 400, "empty body: {r:?}");

    // Reports: the figures of `rotator report`.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let r = admin.get("/reports?by=campaign&since=1d");
        assert_eq!(r.status, 200, "{r:?}");
        let report = body(&r);
        if report["total"]["requests"].as_u64().unwrap_or(0) > 0 {
            break report;
        }
        assert!(Instant::now() < deadline, "no requests counted: {report}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["campaign"] == "1"),
        "{report}"
    );
    assert_eq!(admin.get("/reports?by=planet").status, 400);

    // Every documented path answers; main responses fit their schemas.
    check_against_document(&doc, &admin);

    // The audit log: one JSON object per successful write, in order, with before and after.
    let audit = std::fs::read_to_string(dir.join("data/audit.log")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let writes: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["method"].as_str().unwrap().into(),
                l["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        writes[0],
        ("PUT".into(), "/api/v1/campaigns/1".into()),
        "{audit}"
    );
    assert!(
        writes.contains(&("POST".into(), "/api/v1/campaigns/1/pause".into())),
        "{audit}"
    );
    assert_eq!(lines.len(), 11, "{audit}");
    let first = &lines[0];
    assert_eq!(
        (first["token"].clone(), first["role"].clone()),
        (json!("alice"), json!("admin"))
    );
    assert_eq!(first["campaign"], 1);
    assert_eq!(first["before"]["name"], "One");
    assert_eq!(first["after"]["name"], "One, renamed");
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let deleted = lines
        .iter()
        .find(|l| l["path"] == "/api/v1/campaigns/3" && l["method"] == "DELETE")
        .unwrap();
    assert!(
        deleted["after"].is_null() && deleted["before"]["id"] == 3,
        "{deleted}"
    );

    // Revocation takes effect without a restart.
    let (ok, _, err) = token(&cfg_path, &["revoke", "viewer-1"]);
    assert!(ok, "{err}");
    assert_eq!(viewer.get("/campaigns").status, 401);
    assert_eq!(admin.get("/campaigns").status, 200);

    // Failed attempts are limited per client address: 429 with Retry-After, others unaffected.
    let source = "127.0.0.77".parse().unwrap();
    let attempt = |auth: &str| {
        request_from(
            source,
            addr,
            "GET",
            "/api/v1/status",
            &[("Authorization", auth.as_bytes())],
        )
    };
    for _ in 0..10 {
        assert_eq!(attempt("Bearer rotator_guess").status, 401);
    }
    let r = attempt(&admin.auth);
    assert_eq!(r.status, 429, "even a valid token waits: {r:?}");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        admin.get("/status").status,
        200,
        "another address is not limited"
    );

    let (status, log) = s.stop();
    assert!(status.success(), "{log}");
}

/// Resolves `{"$ref": "#/components/schemas/X"}`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// Checks `value` against an OpenAPI 3.1 schema: types, required properties, items, and
/// `oneOf`/`anyOf` alternatives (a small checker: no validator crate is lean enough).
fn fits(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            return options
                .iter()
                .find(|o| fits(doc, o, value, at).is_ok())
                .map(|_| ())
                .ok_or_else(|| format!("{at}: {value} fits no {key} of {schema}"));
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            fits(doc, s, value, at)?;
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let type_ok = types.is_empty()
        || types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
    if !type_ok {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if let Some(required) = schema["required"].as_array() {
        for name in required.iter().filter_map(Value::as_str) {
            if value.get(name).is_none() {
                return Err(format!("{at}: required {name:?} missing in {value}"));
            }
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for (name, v) in obj {
            let s = props
                .get(name)
                .ok_or_else(|| format!("{at}: {name:?} is not in the schema"))?;
            fits(doc, s, v, &format!("{at}.{name}"))?;
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, v) in list.iter().enumerate() {
            fits(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn check_against_document(doc: &Value, admin: &Client) {
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "{paths:?}");
    let (mut operations, mut checked) = (0, 0);
    for (template, item) in paths {
        let path = template
            .trim_start_matches("/api/v1")
            .replace(
                "{id}",
                if template.contains("placements") {
                    "top"
                } else {
                    "1"
                },
            )
            .replace("{creative_id}", "11");
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            // Every documented operation exists: no 404 for the route, no 405 for the method.
            let r = if method == "get" {
                admin.get(&path)
            } else {
                // A write with a tag that cannot match: answered, changes nothing.
                admin.send(
                    &method.to_uppercase(),
                    &path,
                    Some("\"stale\""),
                    Some(&json!({})),
                )
            };
            assert!(r.status != 404 && r.status != 405, "{method} {path}: {r:?}");
            let status = r.status.to_string();
            let content =
                &item[method]["responses"][&status]["content"]["application/json"]["schema"];
            assert!(
                !content.is_null() || r.status == 204,
                "{method} {path}: {} is not documented: {r:?}",
                r.status
            );
            if !content.is_null() {
                fits(doc, content, &body(&r), &format!("{method} {path}"))
                    .unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
    }
    // Reads answer 200 and writes with a stale tag or an empty body 4xx: all with a JSON body.
    assert_eq!((operations, checked), (19, 19));
}
