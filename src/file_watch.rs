//! Files an operator replaces while the server runs (the campaigns file, the GeoIP database):
//! how they are read, how their changes are noticed, and what a reload leaves behind.
//!
//! **Reading** ([`read_capped`]): only a regular file is read, and never more than a cap. A FIFO
//! would block the reading thread until a writer appears (and the runtime waits for that thread
//! at exit, so SIGTERM would never finish); `/dev/zero` never ends. The file is opened
//! non-blocking and checked again after opening, so swapping it for a FIFO between the check and
//! the open cannot block either.
//!
//! **Watching** ([`watch`](fn@watch)): the file is polled (modification time, size, inode)
//! every interval rather than watched with inotify: polling also sees editors that replace the
//! file by renaming and Kubernetes ConfigMaps that swap a symlink, and it costs one `stat` per
//! interval. A change is loaded only once the file has **settled**: the same fingerprint at
//! [`SETTLE_CHECKS`] checks after the one that saw the change, so a file being written in place
//! (a slow copy, an editor pausing) is not loaded half-written. A writer that pauses for longer
//! than that must write a new file and rename it over the old one (atomic). SIGHUP loads at
//! once: the operator says the file is complete.
//!
//! **Retiring** ([`retire`]): the replaced value is dropped off the runtime threads and the
//! allocator is asked to return the freed memory to the system.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Checks after a change during which the file must stay the same before it is loaded (so it has
/// been still for at least this many watch intervals).
pub const SETTLE_CHECKS: u32 = 2;

/// Why a file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The operating system refused (missing file, permissions, I/O error).
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// A FIFO, device, socket or folder.
    #[error("not a regular file (a {0}); only regular files are read")]
    NotRegular(&'static str),
    /// Larger than the cap.
    #[error("{len} bytes is more than the {max} bytes allowed")]
    TooLarge {
        /// The file's size (or the bytes read before giving up).
        len: u64,
        /// The cap.
        max: u64,
    },
}

fn check_regular(meta: &std::fs::Metadata, max: u64) -> Result<(), ReadError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("folder")
    } else if t.is_fifo() {
        Some("FIFO")
    } else if t.is_char_device() {
        Some("character device")
    } else if t.is_block_device() {
        Some("block device")
    } else if t.is_socket() {
        Some("socket")
    } else {
        Some("special file")
    };
    if let Some(kind) = kind {
        return Err(ReadError::NotRegular(kind));
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge {
            len: meta.len(),
            max,
        });
    }
    Ok(())
}

/// Reads the regular file at `path` (symbolic links followed), at most `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    check_regular(&std::fs::metadata(path)?, max)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    check_regular(&meta, max)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte more than allowed tells a file that grew past the cap from one that is at it.
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            len: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// What identifies one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// The polling state of one file: what was loaded, and the change waiting to settle.
#[derive(Debug)]
pub struct Watcher {
    path: PathBuf,
    /// The version last loaded (or seen at start); `None` while the file is missing.
    loaded: Option<Fingerprint>,
    /// A different version, and how many checks since it was first seen found it unchanged.
    settling: Option<(Option<Fingerprint>, u32)>,
}

impl Watcher {
    /// Watches `path`, taking its current version as loaded.
    pub fn new(path: PathBuf) -> Watcher {
        let loaded = fingerprint(&path);
        Watcher {
            path,
            loaded,
            settling: None,
        }
    }

    /// Takes the current version as loaded (before a reload not decided by [`Watcher::check`]).
    pub fn mark_loaded(&mut self) {
        self.loaded = fingerprint(&self.path);
        self.settling = None;
    }

    /// Whether a change was seen that has not settled yet.
    pub fn settling(&self) -> bool {
        self.settling.is_some()
    }

    /// One check: whether the file changed since it was loaded and has now settled (then it is
    /// taken as loaded). A file that disappeared is not loaded; its return is a change.
    pub fn check(&mut self) -> bool {
        let now = fingerprint(&self.path);
        if now == self.loaded {
            self.settling = None;
            return false;
        }
        match &mut self.settling {
            Some((seen, still)) if *seen == now => {
                *still += 1;
                if *still < SETTLE_CHECKS {
                    return false;
                }
                self.settling = None;
                self.loaded = now;
                self.loaded.is_some()
            }
            _ => {
                self.settling = Some((now, 0));
                false
            }
        }
    }
}

/// Why a file is reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The file changed and settled.
    Changed,
    /// The process received SIGHUP.
    Hangup,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::Changed => "file changed",
            Cause::Hangup => "SIGHUP",
        })
    }
}

/// Watches `path` until `shutdown`: calls `reload` when the file changed and settled, and on
/// SIGHUP. SIGHUP is registered when this is called, not when the future first runs, so an early
/// SIGHUP cannot kill the process (the default action). `what` names the file in logs.
pub fn watch<F, Fut>(
    path: PathBuf,
    what: &'static str,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
    reload: F,
) -> impl Future<Output = ()>
where
    F: FnMut(Cause) -> Fut,
    Fut: Future<Output = ()>,
{
    watch_all(vec![path], what, interval, shutdown, reload)
}

/// [`watch`](fn@watch) for files that are loaded together (a certificate and its key): one
/// `reload` when any of them changed and settled, and one on SIGHUP.
pub fn watch_all<F, Fut>(
    paths: Vec<PathBuf>,
    what: &'static str,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut reload: F,
) -> impl Future<Output = ()>
where
    F: FnMut(Cause) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP, only file changes reload the {what}: {e}");
            None
        }
    };
    let mut watchers: Vec<Watcher> = paths.into_iter().map(Watcher::new).collect();
    let mut changed = false;
    async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {
                    // Every file is checked (no short-circuit): each keeps its own settling.
                    changed = watchers.iter_mut().fold(changed, |any, w| w.check() | any);
                    // Once none is still settling: a certificate and its key replaced one after
                    // the other are loaded once, together.
                    if changed && !watchers.iter().any(Watcher::settling) {
                        changed = false;
                        reload(Cause::Changed).await;
                    }
                }
                Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    watchers.iter_mut().for_each(Watcher::mark_loaded);
                    changed = false;
                    reload(Cause::Hangup).await;
                }
                _ = crate::shutdown::wait(&mut shutdown) => return,
            }
        }
    }
}

/// Drops a replaced value off the runtime threads, then returns freed memory to the system.
pub async fn retire<T: Send + Sync + 'static>(old: Arc<T>) {
    let _ = tokio::task::spawn_blocking(move || {
        drop(old);
        release_freed_memory();
    })
    .await;
}

/// [`retire`] from synchronous code: on a blocking thread of the current runtime, or here when
/// there is none (tests, the CLI).
pub fn retire_soon<T: Send + Sync + 'static>(old: Arc<T>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || {
                drop(old);
                release_freed_memory();
            });
        }
        Err(_) => {
            drop(old);
            release_freed_memory();
        }
    }
}

/// Asks the allocator to give free memory back to the system. glibc keeps the memory of freed
/// small allocations in its heaps (per-thread arenas) and returns it only when the top of a heap
/// is free; after a large catalogue is replaced by a small one most of it stays resident.
/// `malloc_trim` releases every free page of every arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks; it has no
    // preconditions and does not touch memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own schedule.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rotator-fw-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_change_is_loaded_only_after_it_settles() {
        let dir = temp("settle");
        let path = dir.join("f");
        std::fs::write(&path, "a").unwrap();
        let mut w = Watcher::new(path.clone());
        assert!(!w.check(), "unchanged");
        std::fs::write(&path, "ab").unwrap();
        assert!(!w.check(), "first seen");
        std::fs::write(&path, "abc").unwrap();
        assert!(!w.check(), "still changing");
        for _ in 1..SETTLE_CHECKS {
            assert!(!w.check(), "settling");
        }
        assert!(w.check(), "settled");
        assert!(!w.check(), "loaded once");
        std::fs::remove_file(&path).unwrap();
        for _ in 0..=SETTLE_CHECKS {
            assert!(!w.check(), "a missing file is not loaded");
        }
        std::fs::write(&path, "back").unwrap();
        let loads = (0..=SETTLE_CHECKS).filter(|_| w.check()).count();
        assert_eq!(loads, 1, "its return is a change");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_regular_files_up_to_the_cap_are_read() {
        let dir = temp("read");
        let path = dir.join("f");
        std::fs::write(&path, "12345").unwrap();
        assert_eq!(read_capped(&path, 5).unwrap(), b"12345");
        assert!(matches!(
            read_capped(&path, 4),
            Err(ReadError::TooLarge { len: 5, max: 4 })
        ));
        let e = read_capped(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(
            matches!(e, ReadError::NotRegular("character device")),
            "{e}"
        );
        assert!(matches!(
            read_capped(&dir, 5),
            Err(ReadError::NotRegular("folder"))
        ));
        assert!(matches!(
            read_capped(&dir.join("missing"), 5),
            Err(ReadError::Io(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
