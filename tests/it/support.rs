//! Helpers shared by the integration tests.

/// The URL of a test service from `var` (`ROTATOR_TEST_CLICKHOUSE_URL`, `ROTATOR_TEST_MYSQL_URL`,
/// written by `scripts/services start`). When it is missing: panics if
/// `ROTATOR_TEST_REQUIRE_SERVICES=1` (as `scripts/test` sets), otherwise says loudly that the test
/// is skipped and returns `None`.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("ROTATOR_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") => {
            panic!("{var} is not set: it is set by scripts/services; run scripts/test")
        }
        _ => {
            eprintln!(
                "SKIPPED: {var} not set (run scripts/test, or scripts/services start and source its env file)"
            );
            None
        }
    }
}

/// Held by every test that uses or stops a shared service, so that a test stopping ClickHouse
/// (outage tests) never runs while another test writes to it.
pub fn service_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs an async test body on a current-thread runtime while holding [`service_lock`].
pub fn exclusive<F: std::future::Future>(body: F) -> F::Output {
    let _exclusive = service_lock();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(body)
}

/// Runs `scripts/services ACTION NAME` (e.g. `stop redis` in an outage test) and checks it
/// succeeded.
pub fn services(action: &str, name: &str) {
    let status = std::process::Command::new(crate::harness::repo().join("scripts/services"))
        .args([action, name])
        .status()
        .unwrap();
    assert!(status.success(), "scripts/services {action} {name}");
}

/// The path of `program` (on `PATH`, or in the sbin folders where Debian puts daemons), or `None`
/// and a SKIPPED line when it is not installed; panics when `ROTATOR_TEST_REQUIRE_SERVICES=1`
/// (scripts/test installs it).
pub fn tool(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("ROTATOR_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("{program} is not installed: run scripts/services install");
        }
        eprintln!("SKIPPED: {program} is not installed (scripts/services install installs it)");
    }
    found
}

/// A free loopback port (another process may take it before it is bound again: unlikely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
