//! Which address is the visitor's: the peer, or what a trusted proxy says it forwarded.
//!
//! A forwarding header is believed only when the peer itself is a trusted proxy; otherwise anyone
//! could claim any address (the Go server trusted `X-Forwarded-For` from everybody). Exactly one
//! header is read, the one the operator names: a proxy sets or appends its own header and passes
//! the others through from the visitor untouched. Behind a chain of proxies the visitor is the
//! right-most address in that header that is not itself a trusted proxy: entries to its left were
//! written by the visitor and cannot be believed. A header that cannot be parsed falls back to the
//! peer address. The header walk is written by hand because these rules need exact control (no
//! allocation is made); networks are `ipnet`'s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hyper::HeaderMap;
use hyper::header::{self, HeaderName};
use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Serialize};

static FORWARDED: HeaderName = header::FORWARDED;
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// An IP network in CIDR notation (parsed and normalised by [`ipnet`]). IPv4 networks are kept as
/// IPv4-mapped IPv6 (`10.0.0.0/8` is `::ffff:10.0.0.0/104`) so one comparison serves both
/// families, and a dual-stack socket's mapped peer matches its IPv4 network.
///
/// Matching is one mask and compare on the address's bits, precomputed here: `ipnet`'s own
/// `contains` derives the mask and broadcast address per call, 2.5 times slower in
/// `benches/decision.rs` (`client_ip/untrusted_peer`, 14 ns against 35 to 50 ns).
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
        let max = IpNet::from(addr).max_prefix_len();
        let bad_len = || format!("{text:?}: prefix length must be a number from 0 to {max}");
        let len: u8 = match len {
            Some(l) => l.trim().parse().map_err(|_| bad_len())?,
            None => max,
        };
        let net = IpNet::new(addr, len).map_err(|_| bad_len())?.trunc();
        let net = match net {
            IpNet::V4(v4) => Ipv6Net::new(v4.network().to_ipv6_mapped(), v4.prefix_len() + 96)
                .map_err(|_| bad_len())?,
            IpNet::V6(v6) => v6,
        };
        Ok(Cidr {
            network: u128::from(net.network()),
            mask: u128::from(net.netmask()),
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
}

/// The one forwarding header believed (`[server] client_ip_header`). Only one is read: a proxy
/// rewrites or appends the header it is configured for and passes every other one through as the
/// visitor sent it, so reading a second header would let visitors choose their address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: visitor, proxy1` (nginx `$proxy_add_x_forwarded_for`, HAProxy
    /// `option forwardfor`, most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=visitor` (RFC 7239).
    Forwarded,
    /// `X-Real-IP: visitor` (nginx `proxy_set_header X-Real-IP $remote_addr`).
    XRealIp,
}

impl ClientIpHeader {
    /// The header's name, lower case, as in the config.
    pub fn as_str(self) -> &'static str {
        self.name().as_str()
    }

    fn name(self) -> &'static HeaderName {
        match self {
            ClientIpHeader::XForwardedFor => &X_FORWARDED_FOR,
            ClientIpHeader::Forwarded => &FORWARDED,
            ClientIpHeader::XRealIp => &X_REAL_IP,
        }
    }

    fn parser(self) -> fn(&str) -> Option<IpAddr> {
        match self {
            ClientIpHeader::Forwarded => forwarded_for,
            ClientIpHeader::XForwardedFor | ClientIpHeader::XRealIp => parse_node,
        }
    }
}

/// Where the visitor's address came from (what `rotator explain` reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSource {
    /// The configured header, sent by a trusted peer.
    Header(ClientIpHeader),
    /// The peer: it is not a trusted proxy, so no header is read.
    PeerUntrusted,
    /// The peer: it is trusted but sent no configured header.
    PeerNoHeader(ClientIpHeader),
    /// The peer: the configured header has an entry that is not an address.
    PeerUnparseable(ClientIpHeader),
}

impl std::fmt::Display for IpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpSource::Header(h) => write!(f, "{}", h.as_str()),
            IpSource::PeerUntrusted => write!(
                f,
                "peer (not in trusted_proxies, so forwarding headers are ignored)"
            ),
            IpSource::PeerNoHeader(h) => {
                write!(f, "peer (trusted, but sent no {} header)", h.as_str())
            }
            IpSource::PeerUnparseable(h) => write!(
                f,
                "peer (trusted, but its {} header has an entry that is not an address)",
                h.as_str()
            ),
        }
    }
}

/// What the right-to-left walk over the header found.
enum Walk {
    Found(IpAddr),
    Absent,
    Unparseable,
}

/// The client-IP rule: which peers are believed and which header is read from them.
#[derive(Debug, Clone, Default)]
pub struct ClientIpRule {
    /// Peers whose header is believed.
    pub proxies: TrustedProxies,
    /// The header read from them.
    pub header: ClientIpHeader,
}

impl ClientIpRule {
    /// The visitor's address for a request from `peer` with `headers`.
    #[inline]
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.resolve(peer, headers).0
    }

    /// The visitor's address and where it came from. Only the configured header is read, and
    /// only when `peer` is trusted.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> (IpAddr, IpSource) {
        let peer = canonical(peer);
        if !self.proxies.contains(peer) {
            return (peer, IpSource::PeerUntrusted);
        }
        match self.right_most_untrusted(headers) {
            Walk::Found(ip) => (ip, IpSource::Header(self.header)),
            Walk::Absent => (peer, IpSource::PeerNoHeader(self.header)),
            Walk::Unparseable => (peer, IpSource::PeerUnparseable(self.header)),
        }
    }

    /// Walks the comma-separated list of all configured headers from the right. Finds the first
    /// untrusted address, or the left-most one when all are trusted; stops at an entry on the
    /// way that cannot be parsed.
    fn right_most_untrusted(&self, headers: &HeaderMap) -> Walk {
        let parse = self.header.parser();
        let mut last = None;
        for value in headers.get_all(self.header.name()).iter().rev() {
            let Ok(text) = value.to_str() else {
                return Walk::Unparseable;
            };
            for entry in text.rsplit(',') {
                let Some(ip) = parse(entry.trim()) else {
                    return Walk::Unparseable;
                };
                let ip = canonical(ip);
                if !self.proxies.contains(ip) {
                    return Walk::Found(ip);
                }
                last = Some(ip);
            }
        }
        last.map_or(Walk::Absent, Walk::Found)
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

    fn rule(header: ClientIpHeader) -> ClientIpRule {
        ClientIpRule {
            proxies: TrustedProxies::parse(&["127.0.0.0/8", "::1/128", "10.0.0.0/8", "fc00::/7"])
                .unwrap(),
            header,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn map(headers: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                hyper::header::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        map
    }

    /// The client address with `header` configured.
    fn via(header: ClientIpHeader, peer: &str, headers: &[(&str, &[u8])]) -> IpAddr {
        rule(header).client_ip(ip(peer), &map(headers))
    }

    /// The client address with the default header, `X-Forwarded-For`.
    fn client(peer: &str, headers: &[(&str, &[u8])]) -> IpAddr {
        via(ClientIpHeader::XForwardedFor, peer, headers)
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
        for header in [
            ClientIpHeader::XForwardedFor,
            ClientIpHeader::Forwarded,
            ClientIpHeader::XRealIp,
        ] {
            let all: &[(&str, &[u8])] = &[
                ("x-forwarded-for", b"1.2.3.4"),
                ("x-real-ip", b"1.2.3.4"),
                ("forwarded", b"for=1.2.3.4"),
            ];
            assert_eq!(via(header, "8.8.8.8", all), ip("8.8.8.8"));
            assert_eq!(
                rule(header).resolve(ip("8.8.8.8"), &map(all)).1,
                IpSource::PeerUntrusted
            );
        }
    }

    /// Issue 9, item 1: a header other than the configured one is never read, whatever the
    /// order the old code preferred (`Forwarded`, then `X-Forwarded-For`, then `X-Real-IP`).
    #[test]
    fn issue9_only_the_configured_header_is_read() {
        // nginx appended the visitor (5.6.7.8) to X-Forwarded-For and passed the visitor's own
        // Forwarded and X-Real-IP through.
        let behind_nginx: &[(&str, &[u8])] = &[
            ("forwarded", b"for=77.88.8.8"),
            ("x-real-ip", b"77.88.8.8"),
            ("x-forwarded-for", b"5.6.7.8"),
        ];
        assert_eq!(client("127.0.0.1", behind_nginx), ip("5.6.7.8"));
        // A proxy that sets only X-Real-IP; the visitor's X-Forwarded-For is passed through.
        let real_ip_proxy: &[(&str, &[u8])] =
            &[("x-forwarded-for", b"77.88.8.8"), ("x-real-ip", b"5.6.7.8")];
        assert_eq!(
            via(ClientIpHeader::XRealIp, "127.0.0.1", real_ip_proxy),
            ip("5.6.7.8")
        );
        // A proxy that appends Forwarded.
        let forwarded_proxy: &[(&str, &[u8])] = &[
            ("x-forwarded-for", b"77.88.8.8"),
            ("forwarded", b"for=77.88.8.8, for=5.6.7.8"),
        ];
        assert_eq!(
            via(ClientIpHeader::Forwarded, "127.0.0.1", forwarded_proxy),
            ip("5.6.7.8")
        );
        // The configured header missing: the peer, even if others are present.
        let (addr, source) = rule(ClientIpHeader::XForwardedFor).resolve(
            ip("127.0.0.1"),
            &map(&[("forwarded", b"for=77.88.8.8"), ("x-real-ip", b"77.88.8.8")]),
        );
        assert_eq!(
            (addr, source),
            (
                ip("127.0.0.1"),
                IpSource::PeerNoHeader(ClientIpHeader::XForwardedFor)
            )
        );
    }

    #[test]
    fn header_names_round_trip_through_the_config_spelling() {
        for (text, header) in [
            ("x-forwarded-for", ClientIpHeader::XForwardedFor),
            ("forwarded", ClientIpHeader::Forwarded),
            ("x-real-ip", ClientIpHeader::XRealIp),
        ] {
            assert_eq!(header.as_str(), text);
            let parsed: ClientIpHeader =
                serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<
                    serde::de::value::Error,
                >::new(text))
                .unwrap();
            assert_eq!(parsed, header);
        }
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
        // The same rule inside Forwarded and X-Real-IP.
        assert_eq!(
            via(
                ClientIpHeader::Forwarded,
                "127.0.0.1",
                &[(
                    "forwarded",
                    b"for=6.6.6.6, for=1.2.3.4;proto=https, for=10.0.0.1"
                )]
            ),
            ip("1.2.3.4")
        );
        assert_eq!(
            via(
                ClientIpHeader::XRealIp,
                "127.0.0.1",
                &[("x-real-ip", b"6.6.6.6, 1.2.3.4")]
            ),
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
        assert_eq!(
            via(
                ClientIpHeader::XRealIp,
                "::1",
                &[("x-real-ip", b" 5.6.7.8 ")]
            ),
            ip("5.6.7.8")
        );
        assert_eq!(
            via(
                ClientIpHeader::Forwarded,
                "::ffff:127.0.0.1",
                &[("forwarded", b"for=192.0.2.60;proto=http;by=203.0.113.43")]
            ),
            ip("192.0.2.60")
        );
        assert_eq!(
            via(
                ClientIpHeader::Forwarded,
                "127.0.0.1",
                &[(
                    "forwarded",
                    b"for=1.1.1.1, For=\"[2001:db8:cafe::17]:4711\""
                )]
            ),
            ip("2001:db8:cafe::17")
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
            let (addr, source) = rule(ClientIpHeader::XForwardedFor)
                .resolve(ip("10.0.0.7"), &map(&[("x-forwarded-for", bad)]));
            assert_eq!(addr, ip("10.0.0.7"), "{bad:?}");
            assert_eq!(
                source,
                IpSource::PeerUnparseable(ClientIpHeader::XForwardedFor)
            );
        }
        for bad in [&b"for=unknown"[..], b"proto=https"] {
            assert_eq!(
                via(ClientIpHeader::Forwarded, "10.0.0.7", &[("forwarded", bad)]),
                ip("10.0.0.7")
            );
        }
        assert_eq!(
            via(
                ClientIpHeader::XRealIp,
                "10.0.0.7",
                &[("x-real-ip", b"1.2.3.4, 5.6.7.8 x")]
            ),
            ip("10.0.0.7")
        );
    }

    #[test]
    fn mapped_peer_is_canonical() {
        assert_eq!(client("::ffff:8.8.8.8", &[]), ip("8.8.8.8"));
    }
}
