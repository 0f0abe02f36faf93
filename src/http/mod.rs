//! HTTP: the connection loop ([`server`]) and what each path answers ([`routes`]; the decisions
//! API in [`decisions`], tracking URLs in [`tracking`]).

pub mod decisions;
pub mod guarded;
pub mod routes;
pub mod server;
pub mod tags;
pub mod tls;
pub mod tracking;

/// The body type of every response: small and complete.
pub type Body = http_body_util::Full<bytes::Bytes>;

/// The value of cookie `name` in `headers`' `Cookie` lines (the first one so named), as sent.
/// Read as bytes (this runs for every returning visitor): a pair is `name=value` between `;`s,
/// ASCII whitespace around it ignored; another cookie's bytes do not hide ours.
pub fn cookie<'h>(headers: &'h hyper::HeaderMap, name: &str) -> Option<&'h str> {
    let name = name.as_bytes();
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .find_map(|line| {
            line.as_bytes().split(|&b| b == b';').find_map(|pair| {
                let value = pair.trim_ascii().strip_prefix(name)?.strip_prefix(b"=")?;
                std::str::from_utf8(value).ok()
            })
        })
}

#[cfg(test)]
mod tests {
    use hyper::HeaderMap;
    use hyper::header::{COOKIE, HeaderValue};

    fn headers(lines: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(COOKIE, HeaderValue::from_bytes(line).unwrap());
        }
        h
    }

    #[test]
    fn cookie_finds_the_first_pair_so_named() {
        let h = headers(&[b"a=1; rid=abc ;rid=second", b"rid=third"]);
        assert_eq!(super::cookie(&h, "rid"), Some("abc"));
        assert_eq!(super::cookie(&h, "a"), Some("1"));
        assert_eq!(
            super::cookie(&headers(&[b"x=1", b" rid=z"]), "rid"),
            Some("z")
        );
    }

    #[test]
    fn cookie_needs_the_whole_name_and_an_equals_sign() {
        let h = headers(&[b"xrid=1; ridx=2; rid; rid =3; r=4"]);
        assert_eq!(super::cookie(&h, "rid"), None);
        assert_eq!(super::cookie(&HeaderMap::new(), "rid"), None);
        assert_eq!(super::cookie(&headers(&[b"rid="]), "rid"), Some(""));
    }

    #[test]
    fn another_cookies_bytes_do_not_hide_ours() {
        let h = headers(&[b"name=caf\xc3\xa9\xff; rid=ok"]);
        assert_eq!(super::cookie(&h, "rid"), Some("ok"));
        assert_eq!(super::cookie(&h, "name"), None);
    }
}
