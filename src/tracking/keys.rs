//! Signing keys: the key file created at first start, earlier keys kept for verifying, and
//! signing and verifying tokens with them.
//!
//! A key is the whole content of its file (at least [`MIN_KEY_BYTES`]); the one created by
//! rotator is 32 bytes from the OS's random source, mode 0600. Its id, carried in each token, is
//! the first bytes of SHA-256 of the key, so `previous_secret_files` may list keys in any order
//! and a token names the key that checks it.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::TrackingError;
use super::token::{self, Claims, EventKind, KEY_ID_LEN, MAC_LEN, MAX_TOKEN_BYTES, TokenError};
use crate::config::TrackingConfig;

/// Bytes of a new key, and the fewest a key file may hold (HMAC-SHA256's block of security).
pub const MIN_KEY_BYTES: usize = 32;
/// The most a key file may hold: a key is random bytes, not a document.
const MAX_KEY_BYTES: u64 = 1024;

/// One key, with its HMAC state already keyed (cloned per token: cheaper than re-keying).
#[derive(Clone)]
struct Key {
    id: [u8; KEY_ID_LEN],
    mac: Hmac<Sha256>,
}

impl Key {
    fn new(secret: &[u8]) -> Result<Key, TrackingError> {
        let digest = Sha256::digest(secret);
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| TrackingError::Key {
            path: PathBuf::new(),
            reason: "HMAC refused the key".into(),
        })?;
        Ok(Key { id, mac })
    }
}

/// Signs tokens with the current key and verifies them with it or an earlier one.
#[derive(Clone)]
pub struct Signer {
    current: Key,
    previous: Vec<Key>,
}

impl Signer {
    /// Reads `secret_file` (creating it when missing) and `previous_secret_files`.
    pub fn load(config: &TrackingConfig) -> Result<Signer, TrackingError> {
        let current = read_or_create(&config.secret_file)?;
        let previous = config
            .previous_secret_files
            .iter()
            .map(|p| read_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        let previous: Vec<&[u8]> = previous.iter().map(Vec::as_slice).collect();
        Signer::from_keys(&current, &previous)
    }

    /// Checks the key files without creating any (`rotator check`): an existing `secret_file`
    /// and every `previous_secret_files` must hold a usable key. Returns whether `secret_file`
    /// exists.
    pub fn check(config: &TrackingConfig) -> Result<bool, TrackingError> {
        for p in &config.previous_secret_files {
            read_key(p)?;
        }
        match read_key(&config.secret_file) {
            Ok(_) => Ok(true),
            Err(TrackingError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A signer over keys already in memory (tests, benchmarks).
    pub fn from_keys(current: &[u8], previous: &[&[u8]]) -> Result<Signer, TrackingError> {
        let current = Key::new(current)?;
        let mut keys: Vec<Key> = Vec::with_capacity(previous.len());
        for secret in previous {
            let key = Key::new(secret)?;
            // The same key listed twice (or the current one again) is harmless; two keys with the
            // same id are not (one could never verify).
            if key.id == current.id || keys.iter().any(|k| k.id == key.id) {
                continue;
            }
            keys.push(key);
        }
        Ok(Signer {
            current,
            previous: keys,
        })
    }

    /// A secret for another purpose (`label`), derived from the current key: HMAC(key, label).
    /// Every node sharing the key derives the same one.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut mac = self.current.mac.clone();
        mac.update(label);
        mac.finalize().into_bytes().into()
    }

    /// The token of `claims`, signed with the current key.
    pub fn sign(&self, claims: &Claims) -> String {
        let [token] = self.sign_urls(claims, "", [(claims.kind, claims.expires, "")]);
        token
    }

    /// One URL per `(kind, expires, path)`: `base`, `path` and the token of `claims` with that
    /// kind and expiry. The fields are written once for all (a decision's three tokens differ
    /// only in those two), and each URL is built in one allocation.
    pub fn sign_urls<const N: usize>(
        &self,
        claims: &Claims,
        base: &str,
        urls: [(EventKind, u32, &str); N],
    ) -> [String; N] {
        let mut bytes = Vec::with_capacity(MAX_TOKEN_BYTES);
        token::write_fields(claims, self.current.id, &mut bytes);
        let signed = bytes.len();
        urls.map(|(kind, expires, path)| {
            bytes.truncate(signed);
            bytes[token::KIND_AT] = kind.index();
            bytes[token::EXPIRES_AT..token::EXPIRES_AT + 4].copy_from_slice(&expires.to_be_bytes());
            let mut mac = self.current.mac.clone();
            mac.update(&bytes);
            bytes.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
            let mut url =
                String::with_capacity(base.len() + path.len() + bytes.len().div_ceil(3) * 4);
            url.push_str(base);
            url.push_str(path);
            URL_SAFE_NO_PAD.encode_string(&bytes, &mut url);
            url
        })
    }

    /// The claims of `text` if it is a genuine token of `kind` that has not expired at `now`
    /// (Unix seconds). The MAC is checked, in constant time, before any field is parsed.
    pub fn verify(&self, kind: EventKind, text: &str, now: u32) -> Result<Claims, TokenError> {
        if text.len() > token::MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let mut buf = [0u8; MAX_TOKEN_BYTES + 3];
        let len = URL_SAFE_NO_PAD
            .decode_slice(text, &mut buf)
            .map_err(|_| TokenError::Malformed)?;
        let bytes = &buf[..len];
        let key_id = token::header(bytes)?;
        let key = if self.current.id == key_id {
            &self.current
        } else {
            self.previous
                .iter()
                .find(|k| k.id == key_id)
                .ok_or(TokenError::UnknownKey)?
        };
        let (signed, tag) = bytes.split_at(len - MAC_LEN);
        let mut mac = key.mac.clone();
        mac.update(signed);
        mac.verify_truncated_left(tag)
            .map_err(|_| TokenError::BadSignature)?;
        let claims = token::parse_fields(signed)?;
        if claims.kind != kind {
            return Err(TokenError::WrongKind);
        }
        if claims.expires <= now {
            return Err(TokenError::Expired(claims));
        }
        Ok(claims)
    }
}

/// The key in `path`, creating the file with a new random key (mode 0600) when it is missing.
fn read_or_create(path: &Path) -> Result<Vec<u8>, TrackingError> {
    match create_key(path) {
        Ok(key) => {
            tracing::info!("{}: new tracking key created (mode 0600)", path.display());
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(path),
        Err(source) => Err(TrackingError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a new random key to `path`, failing with `AlreadyExists` if there is a file.
fn create_key(path: &Path) -> std::io::Result<Vec<u8>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut key = vec![0u8; MIN_KEY_BYTES];
    getrandom::fill(&mut key).map_err(std::io::Error::other)?;
    // Written under a temporary name and linked into place, so a crash never leaves a short key
    // file behind (which the next start would refuse).
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = file.write_all(&key).and_then(|()| file.sync_all());
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    linked?;
    Ok(key)
}

/// The key in `path`: the whole file, from [`MIN_KEY_BYTES`] to 1 KiB.
fn read_key(path: &Path) -> Result<Vec<u8>, TrackingError> {
    let io = |source| TrackingError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(key_error(path, "is not a regular file".into()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "{}: the tracking key is readable by other users (mode {:o}); anyone who reads it \
             can forge clicks and impressions: chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let mut key = Vec::new();
    file.take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut key)
        .map_err(io)?;
    if key.len() < MIN_KEY_BYTES {
        return Err(key_error(
            path,
            format!(
                "holds {} bytes, a key needs at least {MIN_KEY_BYTES} random bytes: delete the \
                 file to have a new key created at start, or write one with \
                 `head -c 32 /dev/urandom > FILE`",
                key.len()
            ),
        ));
    }
    if key.len() as u64 > MAX_KEY_BYTES {
        return Err(key_error(
            path,
            format!("is larger than {MAX_KEY_BYTES} bytes: not a key file"),
        ));
    }
    Ok(key)
}

fn key_error(path: &Path, reason: String) -> TrackingError {
    TrackingError::Key {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visitor::geoip::Country;
    use crate::visitor::symbol::Sym;
    use crate::visitor::user_agent::Device;

    const NOW: u32 = 1_800_000_000;

    fn claims(kind: EventKind) -> Claims {
        Claims {
            id: *b"0123456789ab",
            kind,
            campaign_id: 7,
            creative_id: 701,
            placement: Sym::intern("top-banner"),
            issued: NOW,
            expires: NOW + 3600,
            country: Country::parse("DE"),
            os: Sym::intern("Windows"),
            browser: Sym::intern("Chrome"),
            device: Device::Desktop,
        }
    }

    fn signer() -> Signer {
        Signer::from_keys(&[7; 32], &[]).unwrap()
    }

    #[test]
    fn roundtrip() {
        let s = signer();
        for kind in EventKind::ALL {
            let c = claims(kind);
            let t = s.sign(&c);
            assert!(t.len() < 120, "{} chars: {t}", t.len());
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(s.verify(kind, &t, NOW), Ok(c));
        }
        let unknown = Claims {
            country: None,
            device: Device::Bot,
            placement: Sym::EMPTY,
            ..claims(EventKind::Click)
        };
        assert_eq!(
            s.verify(EventKind::Click, &s.sign(&unknown), NOW),
            Ok(unknown)
        );
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let s = signer();
        let t = s.sign(&claims(EventKind::Click));
        let bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let forged = URL_SAFE_NO_PAD.encode(&flipped);
            let err = s.verify(EventKind::Click, &forged, NOW).unwrap_err();
            assert!(
                matches!(
                    err,
                    TokenError::BadSignature | TokenError::UnknownKey | TokenError::Malformed
                ),
                "bit {bit}: {err:?}"
            );
        }
    }

    #[test]
    fn wrong_kind_expired_and_unknown_key() {
        let s = signer();
        let impression = s.sign(&claims(EventKind::Impression));
        assert_eq!(
            s.verify(EventKind::Click, &impression, NOW),
            Err(TokenError::WrongKind)
        );
        let c = claims(EventKind::Click);
        assert_eq!(
            s.verify(EventKind::Click, &s.sign(&c), c.expires),
            Err(TokenError::Expired(c))
        );
        let other = Signer::from_keys(&[8; 32], &[]).unwrap();
        assert_eq!(
            other.verify(EventKind::Click, &s.sign(&c), NOW),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let s = signer();
        let real = URL_SAFE_NO_PAD
            .decode(s.sign(&claims(EventKind::Viewable)))
            .unwrap();
        let mut rng = fastrand::Rng::with_seed(10);
        for round in 0..20_000 {
            let len = rng.usize(..if round % 2 == 0 { 100 } else { 900 });
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if round % 3 == 0 && len > 5 {
                // A real header, so the MAC check (not the header check) is what refuses it.
                bytes[..5].copy_from_slice(&real[..5]);
            }
            let text = URL_SAFE_NO_PAD.encode(&bytes);
            assert!(s.verify(EventKind::Viewable, &text, NOW).is_err());
            let raw = String::from_utf8_lossy(&bytes);
            assert!(s.verify(EventKind::Viewable, &raw, NOW).is_err());
        }
        for cut in 0..real.len() {
            let text = URL_SAFE_NO_PAD.encode(&real[..cut]);
            assert!(s.verify(EventKind::Viewable, &text, NOW).is_err(), "{cut}");
        }
        let huge = "A".repeat(1 << 20);
        assert_eq!(
            s.verify(EventKind::Viewable, &huge, NOW),
            Err(TokenError::Malformed)
        );
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rotator-keys-{tag}-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn config(dir: &Path, previous: &[&str]) -> TrackingConfig {
        TrackingConfig {
            secret_file: dir.join("data/tracking.key"),
            previous_secret_files: previous.iter().map(|p| dir.join(p)).collect(),
            ..TrackingConfig::default()
        }
    }

    #[test]
    fn key_created_0600_reused_and_rotated() {
        let d = dir("rotate");
        let first = Signer::load(&config(&d, &[])).unwrap();
        let path = d.join("data/tracking.key");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let c = claims(EventKind::Impression);
        let old_token = first.sign(&c);
        let again = Signer::load(&config(&d, &[])).unwrap();
        assert_eq!(again.verify(EventKind::Impression, &old_token, NOW), Ok(c));

        // Rotation: the old key moves to previous_secret_files, a new one is created.
        std::fs::rename(&path, d.join("old.key")).unwrap();
        let rotated = Signer::load(&config(&d, &["old.key"])).unwrap();
        assert_eq!(
            rotated.verify(EventKind::Impression, &old_token, NOW),
            Ok(c)
        );
        let new_token = rotated.sign(&c);
        assert_ne!(new_token[..7], old_token[..7], "key id changed");
        assert_eq!(
            first.verify(EventKind::Impression, &new_token, NOW),
            Err(TokenError::UnknownKey)
        );
        // Retired: the old key no longer listed.
        let retired = Signer::load(&config(&d, &[])).unwrap();
        assert_eq!(
            retired.verify(EventKind::Impression, &old_token, NOW),
            Err(TokenError::UnknownKey)
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn short_or_missing_key_files_are_refused_with_the_reason() {
        let d = dir("short");
        std::fs::create_dir_all(d.join("data")).unwrap();
        assert!(
            !Signer::check(&config(&d, &[])).unwrap(),
            "missing: created at start"
        );
        std::fs::write(d.join("data/tracking.key"), b"secret\n").unwrap();
        let err = Signer::check(&config(&d, &[])).unwrap_err().to_string();
        assert!(err.contains("holds 7 bytes"), "{err}");
        let err = Signer::load(&config(&d, &[])).err().unwrap().to_string();
        assert!(
            err.contains("holds 7 bytes") && err.contains("at least 32"),
            "{err}"
        );
        std::fs::write(d.join("data/tracking.key"), [1u8; 32]).unwrap();
        let err = Signer::load(&config(&d, &["gone.key"]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("gone.key"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
