//! Replacing a file whole and atomically, so that a reader (the reloader, another node's sync, a
//! restart after a crash) sees the old version or the new one, never half of one. Used by the
//! admin listener's writes (campaigns and tokens files) and by the journals' compaction
//! (delivery state, tracking's seen-ids).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with what `write` writes: a temporary file in the same folder (same
/// filesystem, so the rename is atomic), written through a buffer and fsynced, given `mode` (or
/// the mode of the file it replaces, else 0644), renamed over `path`, then the folder fsynced so
/// the rename survives a crash. Returns what `write` returned. On an error `path` is untouched
/// and the temporary file removed.
pub fn replace<T>(
    path: &Path,
    mode: Option<u32>,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let mode = mode.unwrap_or_else(|| {
        std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777)
    });
    let temp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let written = (|| -> std::io::Result<T> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        // The umask may have narrowed `mode`; the operator's mode is kept exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        let mut out = BufWriter::new(file);
        let value = write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&temp, path)?;
        Ok(value)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    let value = written?;
    File::open(dir)?.sync_all()?;
    Ok(value)
}

/// Replaces `path` with `bytes` (see [`replace`]).
pub fn write(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    replace(path, mode, |out| out.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rotator-atomic-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn keeps_or_sets_the_mode_and_leaves_no_temporary() {
        let dir = temp_dir();
        let path = dir.join("f.toml");
        write(&path, b"one", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write(&path, b"two", None).unwrap();
        assert_eq!(
            (std::fs::read(&path).unwrap(), mode(&path)),
            (b"two".to_vec(), 0o640)
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = temp_dir();
        let path = dir.join("journal");
        write(&path, b"old", None).unwrap();
        let failed = replace(&path, None, |out| {
            out.write_all(b"half")?;
            Err::<(), _>(std::io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let kept = replace(&path, None, |out| out.write_all(b"new").map(|()| 3)).unwrap();
        assert_eq!((kept, std::fs::read(&path).unwrap()), (3, b"new".to_vec()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
