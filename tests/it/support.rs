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
