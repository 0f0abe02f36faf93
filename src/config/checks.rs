//! Checks of single values that need more than their type: log filters, proxy networks, URLs.

use std::net::IpAddr;

use hyper::header::HeaderValue;

/// Log levels a `[log] level` directive may end with.
const LOG_LEVELS: &str = "trace, debug, info, warn, error, off";

/// Checks a `[log] level` filter: comma-separated directives, each a level or `target=level`.
/// `tracing` itself reads a bare unknown word as a target name, which turns logging off
/// without a word; here it is refused.
pub fn check_log_level(filter: &str) -> Result<(), String> {
    for directive in filter.split(',').map(str::trim) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        // `tracing` reads an empty level as `error`; here it is a mistake.
        if level.is_empty()
            || level
                .parse::<tracing::level_filters::LevelFilter>()
                .is_err()
        {
            return Err(format!(
                "{directive:?} is not a level ({LOG_LEVELS}) or target=level"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| format!("{filter:?}: {e}"))
}

/// Whether a `trusted_proxies` entry is wider than the widest private network of its family
/// (`10.0.0.0/8`, `fc00::/7`): such an entry trusts a large part of the internet.
pub(super) fn too_wide(entry: &str) -> bool {
    let (addr, len) = entry.split_once('/').unwrap_or((entry, ""));
    let Ok(addr) = addr.trim().parse::<IpAddr>() else {
        return false;
    };
    let Ok(len) = len.trim().parse::<u32>() else {
        return false;
    };
    match addr {
        IpAddr::V4(_) => len < 8,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => len < 96 + 8,
        IpAddr::V6(_) => len < 7,
    }
}

/// Accepts absolute `http` and `https` URLs with a host and a port from 1 to 65535, and returns
/// the `Location` header value for them. A URL with non-ASCII characters is sent encoded
/// (punycode host, percent-encoded path and query: RFC 3986 section 2.1, as browsers do); an
/// ASCII URL is sent exactly as written.
pub fn check_url(url: &str) -> Result<HeaderValue, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url:?}: scheme {:?} is not http or https",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if parsed.port() == Some(0) {
        return Err(format!("{url:?}: port 0 cannot be connected to"));
    }
    if !url.is_ascii() {
        return HeaderValue::from_str(parsed.as_str())
            .map_err(|_| format!("{url:?} cannot be encoded for a Location header"));
    }
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    HeaderValue::from_str(url)
        .map_err(|_| format!("{url:?} has characters not allowed in a Location header"))
}
