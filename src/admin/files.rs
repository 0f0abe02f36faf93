//! What the admin listener needs around the files it changes (the campaigns file, the tokens
//! file): which version of a file it read, and small formatting helpers. The writes themselves
//! are whole and atomic ([`crate::atomic_file`]).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

/// What identifies one version of a file (modification time, size, inode): a change of any
/// means the file was written or replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Version {
    /// The current version of `path`, `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<Version> {
        let m = std::fs::metadata(path).ok()?;
        Some(Version {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        })
    }
}

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_zero_padded() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
