//! Which address is the visitor's: the peer, or what a trusted proxy says it forwarded.
//!
//! Forwarding headers are believed only when the peer itself is a trusted proxy; otherwise anyone
//! could claim any address (the Go server trusted `X-Forwarded-For` from everybody). Behind a
//! chain of proxies the visitor is the right-most address that is not itself a trusted proxy:
//! entries to its left were written by the visitor and cannot be believed. A header that cannot
//! be parsed falls back to the peer address. Written by hand (not a crate) because these rules
//! need exact control; no allocation is made.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hyper::HeaderMap;
use hyper::header::{FORWARDED, HeaderName};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// An IP network in CIDR notation. IPv4 networks are kept as IPv4-mapped IPv6 so one comparison
/// serves both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    mask: u128,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address (a single host).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u32 = match len {
            Some(l) => l.trim().parse().ok().filter(|l| *l <= max).ok_or_else(|| {
                format!("{text:?}: prefix length must be a number from 0 to {max}")
            })?,
            None => max,
        };
        let bits = u128::from(to_v6(addr));
        let len = if addr.is_ipv4() { len + 96 } else { len };
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        Ok(Cidr {
            network: bits & mask,
            mask,
        })
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        u128::from(to_v6(ip)) & self.mask == self.network
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Turns an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as dual-stack sockets report IPv4
/// peers) into plain IPv4, so lookups and logs see the address the visitor has.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The configured `trusted_proxies`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<Cidr>,
}

impl TrustedProxies {
    /// Parses a list of CIDR networks; the error names the bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        let networks = entries
            .iter()
            .map(|e| Cidr::parse(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { networks })
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        // Converted once, not once per network: this runs at least twice per request.
        let bits = u128::from(to_v6(ip));
        self.networks.iter().any(|n| bits & n.mask == n.network)
    }

    /// The visitor's address for a request from `peer` with `headers`.
    ///
    /// `Forwarded` (RFC 7239) is preferred, then `X-Forwarded-For`, then `X-Real-IP`: the first
    /// one present is used, and only when `peer` is trusted.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let found = if headers.contains_key(FORWARDED) {
            self.right_most_untrusted(headers, &FORWARDED, forwarded_for)
        } else if headers.contains_key(&X_FORWARDED_FOR) {
            self.right_most_untrusted(headers, &X_FORWARDED_FOR, parse_node)
        } else if headers.contains_key(&X_REAL_IP) {
            self.right_most_untrusted(headers, &X_REAL_IP, parse_node)
        } else {
            None
        };
        found.unwrap_or(peer)
    }

    /// Walks the comma-separated list of all `name` headers from the right. Returns the first
    /// untrusted address, the left-most one when all are trusted, or `None` when an entry on
    /// the way cannot be parsed.
    fn right_most_untrusted(
        &self,
        headers: &HeaderMap,
        name: &HeaderName,
        parse: fn(&str) -> Option<IpAddr>,
    ) -> Option<IpAddr> {
        let mut last = None;
        for value in headers.get_all(name).iter().rev() {
            let text = value.to_str().ok()?;
            for entry in text.rsplit(',') {
                let ip = canonical(parse(entry.trim())?);
                if !self.contains(ip) {
                    return Some(ip);
                }
                last = Some(ip);
            }
        }
        last
    }
}

/// Parses one `X-Forwarded-For` node: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]`
/// or `[2001:db8::1]:5678`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']')?;
        if !(tail.is_empty() || tail.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    let (addr, port) = node.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Extracts the address of the `for=` parameter of one `Forwarded` element
/// (`for=192.0.2.60;proto=http`, `for="[2001:db8:cafe::17]:4711"`). `unknown` and obfuscated
/// identifiers (`_hidden`) carry no address and count as unparseable.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    parse_node(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies() -> TrustedProxies {
        TrustedProxies::parse(&["127.0.0.0/8", "::1/128", "10.0.0.0/8", "fc00::/7"]).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(peer: &str, headers: &[(&str, &[u8])]) -> IpAddr {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                hyper::header::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        proxies().client_ip(ip(peer), &map)
    }

    #[test]
    fn cidr_matching() {
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains(ip("10.255.1.2")));
        assert!(n.contains(ip("::ffff:10.1.1.1")));
        assert!(!n.contains(ip("11.0.0.1")));
        let v6 = Cidr::parse("fc00::/7").unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            !Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("2001:db8::1"))
        );
        assert!(Cidr::parse("::/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("1.2.3.4").unwrap().contains(ip("1.2.3.4")));
        for bad in ["10.0.0.0/33", "::/129", "nope/8", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        assert_eq!(
            client("8.8.8.8", &[("x-forwarded-for", b"1.2.3.4")]),
            ip("8.8.8.8")
        );
        assert_eq!(
            client("8.8.8.8", &[("x-real-ip", b"1.2.3.4")]),
            ip("8.8.8.8")
        );
        assert_eq!(
            client("8.8.8.8", &[("forwarded", b"for=1.2.3.4")]),
            ip("8.8.8.8")
        );
    }

    #[test]
    fn right_most_untrusted_wins() {
        let h: &[(&str, &[u8])] = &[("x-forwarded-for", b"6.6.6.6, 1.2.3.4, 10.0.0.1")];
        assert_eq!(client("127.0.0.1", h), ip("1.2.3.4"));
        let h: &[(&str, &[u8])] = &[
            ("x-forwarded-for", b"6.6.6.6"),
            ("x-forwarded-for", b"1.2.3.4, 10.0.0.2"),
        ];
        assert_eq!(client("127.0.0.1", h), ip("1.2.3.4"));
        // All trusted: the farthest one.
        assert_eq!(
            client("127.0.0.1", &[("x-forwarded-for", b"10.0.0.9, 10.0.0.1")]),
            ip("10.0.0.9")
        );
        // A spoofed left part does not matter when the right part is good.
        assert_eq!(
            client("127.0.0.1", &[("x-forwarded-for", b"garbage, 1.2.3.4")]),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn header_forms() {
        assert_eq!(
            client("::1", &[("x-forwarded-for", b"1.2.3.4:5678")]),
            ip("1.2.3.4")
        );
        assert_eq!(
            client("::1", &[("x-forwarded-for", b"[2001:db8::1]:80")]),
            ip("2001:db8::1")
        );
        assert_eq!(
            client("::1", &[("x-forwarded-for", b"2001:db8::1")]),
            ip("2001:db8::1")
        );
        assert_eq!(
            client("::1", &[("x-forwarded-for", b"::ffff:1.2.3.4")]),
            ip("1.2.3.4")
        );
        assert_eq!(client("::1", &[("x-real-ip", b" 5.6.7.8 ")]), ip("5.6.7.8"));
        assert_eq!(
            client(
                "::ffff:127.0.0.1",
                &[("forwarded", b"for=192.0.2.60;proto=http;by=203.0.113.43")]
            ),
            ip("192.0.2.60")
        );
        assert_eq!(
            client(
                "127.0.0.1",
                &[(
                    "forwarded",
                    b"for=1.1.1.1, For=\"[2001:db8:cafe::17]:4711\""
                )]
            ),
            ip("2001:db8:cafe::17")
        );
        // Forwarded is preferred over X-Forwarded-For.
        assert_eq!(
            client(
                "127.0.0.1",
                &[
                    ("x-forwarded-for", b"9.9.9.9"),
                    ("forwarded", b"for=1.1.1.1")
                ]
            ),
            ip("1.1.1.1")
        );
    }

    #[test]
    fn malformed_falls_back_to_peer() {
        for bad in [
            &b"not-an-ip"[..],
            b"1.2.3.4.5",
            b"",
            b"1.2.3.4:port",
            b"[::1",
            b"\xff\xfe",
        ] {
            assert_eq!(
                client("10.0.0.7", &[("x-forwarded-for", bad)]),
                ip("10.0.0.7"),
                "{bad:?}"
            );
        }
        assert_eq!(
            client("10.0.0.7", &[("forwarded", b"for=unknown")]),
            ip("10.0.0.7")
        );
        assert_eq!(
            client("10.0.0.7", &[("forwarded", b"proto=https")]),
            ip("10.0.0.7")
        );
        assert_eq!(
            client("10.0.0.7", &[("x-real-ip", b"1.2.3.4, 5.6.7.8 x")]),
            ip("10.0.0.7")
        );
    }

    #[test]
    fn mapped_peer_is_canonical() {
        assert_eq!(client("::ffff:8.8.8.8", &[]), ip("8.8.8.8"));
    }
}
