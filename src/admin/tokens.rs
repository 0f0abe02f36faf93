//! API tokens: `rotator token create|list|revoke` and their verification.
//!
//! A token is `rotator_` and 32 random bytes (base64url). It is printed once at creation; the
//! tokens file keeps only its SHA-256 (hex), its name, role and creation time. A plain, fast hash
//! is enough here (unlike for passwords): a token has 256 random bits, so nobody can guess inputs
//! to a stolen hash, however fast the hash is. Verification hashes the presented token and
//! compares digests in constant time ([`subtle`]) against every entry, without stopping at a match.
//!
//! The file (TOML, `[[token]]` entries, mode 0600) is re-read whenever its version (modification
//! time, size, inode) changes, so `rotator token revoke` takes effect on the next request without a
//! restart. A file that cannot be read or parsed lets nobody in (and is logged) until it is fixed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::files::{Version, hex, now_rfc3339};
use crate::atomic_file;

/// The largest tokens file read: far more tokens than anyone needs.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Mode of the tokens file: its hashes are no secret in themselves, but who may read them is
/// the operator's business only.
const FILE_MODE: u32 = 0o600;

/// What a token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads campaigns, placements, reports and status; writes too.
    Admin,
    /// Reads campaigns, placements, reports and status; never writes.
    Viewer,
}

impl Role {
    /// The name in the tokens file and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role may change things.
    pub fn may_write(self) -> bool {
        self == Role::Admin
    }
}

/// One entry of the tokens file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Unique name, shown in the audit log.
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// SHA-256 of the token, lower-case hex.
    pub sha256: String,
    /// When it was created, RFC 3339.
    pub created: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// Who made a request: the name and role of the token (or of the session's token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
}

/// Why a tokens command failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read or written.
    #[error("tokens file {path}: {message}")]
    File {
        /// The tokens file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// `--name` is taken or not a usable name.
    #[error("token name {0}")]
    Name(String),
    /// `revoke` of a name that is not there.
    #[error("no token named {0:?}")]
    NotFound(String),
}

fn file_error(path: &Path, message: impl ToString) -> TokenError {
    TokenError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The SHA-256 of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn read(path: &Path) -> Result<TokenFile, TokenError> {
    let bytes = match crate::file_watch::read_capped(path, MAX_FILE_BYTES) {
        Err(crate::file_watch::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(TokenFile::default());
        }
        other => other.map_err(|e| file_error(path, e))?,
    };
    let text = String::from_utf8(bytes).map_err(|e| file_error(path, e))?;
    toml::from_str(&text).map_err(|e| file_error(path, crate::config::one_line(&e.to_string())))
}

fn write(path: &Path, file: &TokenFile) -> Result<(), TokenError> {
    let body = toml::to_string(file).map_err(|e| file_error(path, e))?;
    let text = format!(
        "# rotator admin tokens (`rotator token create|list|revoke`): only SHA-256 hashes.\n\n{body}"
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| file_error(path, e))?;
    }
    atomic_file::write(path, text.as_bytes(), Some(FILE_MODE)).map_err(|e| file_error(path, e))
}

/// Whether `name` can name a token: 1 to 64 letters, digits, `.`, `_`, `-`, `@`.
fn name_problem(name: &str) -> Option<String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    (!ok).then(|| format!("{name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@'"))
}

/// Creates a token of `role` named `name` (default: the role and a number); returns the token,
/// which is shown once and never stored, and its entry.
pub fn create(
    path: &Path,
    role: Role,
    name: Option<&str>,
) -> Result<(String, TokenEntry), TokenError> {
    let mut file = read(path)?;
    let name = match name {
        Some(n) => n.to_string(),
        None => (1..)
            .map(|n| format!("{}-{n}", role.as_str()))
            .find(|n| file.token.iter().all(|t| &t.name != n))
            .unwrap_or_default(),
    };
    if let Some(problem) = name_problem(&name) {
        return Err(TokenError::Name(problem));
    }
    if file.token.iter().any(|t| t.name == name) {
        return Err(TokenError::Name(format!(
            "{name:?} is taken; revoke it first or choose another"
        )));
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| file_error(path, format!("no randomness: {e}")))?;
    let token = format!(
        "rotator_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    );
    let entry = TokenEntry {
        name,
        role,
        sha256: hex(&digest(&token)),
        created: now_rfc3339(),
    };
    file.token.push(entry.clone());
    write(path, &file)?;
    Ok((token, entry))
}

/// The entries of the tokens file (none when it does not exist).
pub fn list(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    Ok(read(path)?.token)
}

/// Removes the token named `name`; the running server refuses it from its next request on.
pub fn revoke(path: &Path, name: &str) -> Result<TokenEntry, TokenError> {
    let mut file = read(path)?;
    let position = file
        .token
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| TokenError::NotFound(name.to_string()))?;
    let entry = file.token.remove(position);
    write(path, &file)?;
    Ok(entry)
}

/// A token that verified: its principal and digest (a session remembers the digest, so revoking
/// the token ends the session too).
#[derive(Debug, Clone)]
pub struct Verified {
    /// Who.
    pub principal: Principal,
    /// SHA-256 of the token.
    pub digest: [u8; 32],
}

struct Loaded {
    version: Option<Version>,
    /// (digest, principal) of every valid entry.
    entries: Vec<([u8; 32], Principal)>,
}

/// The tokens file as the server reads it: re-read when it changes.
pub struct TokenStore {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl TokenStore {
    /// Reads `path` (a missing file is no tokens: nobody gets in until one is created).
    pub fn open(path: PathBuf) -> TokenStore {
        let store = TokenStore {
            path,
            loaded: Mutex::new(Loaded {
                version: None,
                entries: Vec::new(),
            }),
        };
        store.refresh();
        store
    }

    /// The tokens file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many tokens can sign in now.
    pub fn count(&self) -> usize {
        self.refresh();
        self.loaded.lock().map_or(0, |l| l.entries.len())
    }

    /// Re-reads the file when its version changed.
    fn refresh(&self) {
        let version = Version::of(&self.path);
        let Ok(mut loaded) = self.loaded.lock() else {
            return;
        };
        if loaded.version == version && version.is_some() {
            return;
        }
        if let Ok(meta) = std::fs::metadata(&self.path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "tokens file {} can be read by others (mode {:o}); chmod 600 it",
                    self.path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
        }
        loaded.entries = match read(&self.path) {
            Ok(file) => file
                .token
                .into_iter()
                .filter_map(|t| {
                    let digest = decode_hex32(&t.sha256);
                    if digest.is_none() {
                        tracing::warn!(
                            "tokens file {}: token {:?}: sha256 is not 64 hex digits; ignored",
                            self.path.display(),
                            t.name
                        );
                    }
                    Some((
                        digest?,
                        Principal {
                            name: t.name,
                            role: t.role,
                        },
                    ))
                })
                .collect(),
            Err(e) => {
                tracing::error!("{e}; no token is accepted until it is fixed");
                Vec::new()
            }
        };
        loaded.version = version;
    }

    /// The principal of `token`, if it is one of the file's (constant time in the token).
    pub fn verify(&self, token: &str) -> Option<Verified> {
        let digest = digest(token);
        self.principal_of(&digest)
            .map(|principal| Verified { principal, digest })
    }

    /// The principal whose token has `digest`, if it is still in the file.
    pub fn principal_of(&self, digest: &[u8; 32]) -> Option<Principal> {
        self.refresh();
        let loaded = self.loaded.lock().ok()?;
        let mut found = None;
        for (d, principal) in &loaded.entries {
            if bool::from(d.ct_eq(digest)) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_list_verify_revoke() {
        let dir = std::env::temp_dir().join(format!("rotator-tokens-{}", fastrand::u64(..)));
        let path = dir.join("data/admin-tokens.toml");
        let store = TokenStore::open(path.clone());
        assert_eq!(store.count(), 0);
        let (token, entry) = create(&path, Role::Admin, Some("alice")).unwrap();
        assert!(token.starts_with("rotator_") && token.len() > 40, "{token}");
        assert_eq!(entry.name, "alice");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&token) && text.contains(&entry.sha256),
            "{text}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (viewer, v) = create(&path, Role::Viewer, None).unwrap();
        assert_eq!(v.name, "viewer-1");
        assert!(matches!(
            create(&path, Role::Viewer, Some("alice")),
            Err(TokenError::Name(_))
        ));
        assert!(matches!(
            create(&path, Role::Viewer, Some("a b")),
            Err(TokenError::Name(_))
        ));
        assert_eq!(list(&path).unwrap().len(), 2);

        let who = store.verify(&token).unwrap().principal;
        assert_eq!((who.name.as_str(), who.role), ("alice", Role::Admin));
        assert_eq!(store.verify(&viewer).unwrap().principal.role, Role::Viewer);
        assert!(store.verify("rotator_wrong").is_none());
        assert!(store.verify(&token[..token.len() - 1]).is_none());

        revoke(&path, "alice").unwrap();
        assert!(
            store.verify(&token).is_none(),
            "revocation is seen without a restart"
        );
        assert!(matches!(
            revoke(&path, "alice"),
            Err(TokenError::NotFound(_))
        ));
        std::fs::write(&path, "not toml [").unwrap();
        assert!(
            store.verify(&viewer).is_none(),
            "a broken file lets nobody in"
        );
        assert!(list(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
