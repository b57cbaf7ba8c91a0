//! Dovecot-compatible dot-locks, the dsync user lock, and atomic file
//! replacement.
//!
//! The dsync user lock ([`SyncLock`]) is Dovecot 2.3's
//! `<home>/.dovecot-sync.lock`: a file created `0600` and held with an
//! fcntl write lock on the whole file for a sync's whole run; the holder
//! unlinks it before unlocking. A waiter checks after locking that the
//! path still names the file it locked (else the holder just removed it
//! and it retries on the new one). fcntl locks are per process, so two
//! runs in one process do not exclude each other; two processes (corvid or
//! a real `doveadm sync -l`) do.
//!
//! A dot-lock on `F` is the file `F.lock`, created exclusively; its content
//! is `<pid>:<hostname>` so a locker on the same host can tell a dead
//! holder. A lock is stale when its holder on this host is gone, or when
//! it is older than the stale timeout and its holder is not known alive
//! (Dovecot: 120 s for `dovecot-uidlist.lock`). Readers never lock.
//!
//! Atomic replacement: write `<name>.tmp`-style temp file, fsync it,
//! `rename()` over the target, fsync the directory, so a crash leaves
//! either the old or the new file, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// A held dot-lock; released (file removed) on drop.
#[derive(Debug)]
pub struct DotLock {
    path: PathBuf,
}

impl DotLock {
    /// Lock `target` (creating `target.lock`), waiting up to `timeout`.
    pub fn acquire(
        target: &Path,
        host: &str,
        timeout: Duration,
        stale: Duration,
    ) -> io::Result<DotLock> {
        let mut name = target.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let started = Instant::now();
        let mut wait_ms = 5u64;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(format!("{}:{}", std::process::id(), host).as_bytes())?;
                    return Ok(DotLock { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if is_stale(&path, host, stale) {
                        // Another locker may remove it at the same time;
                        // NotFound is fine, the next create decides.
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                }
                Err(e) => return Err(e),
            }
            if started.elapsed() >= timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out waiting for {}", path.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(wait_ms));
            wait_ms = (wait_ms * 2).min(100);
        }
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn is_stale(path: &Path, host: &str, stale: Duration) -> bool {
    let content = fs::read_to_string(path).unwrap_or_default();
    let holder_alive = content
        .split_once(':')
        .filter(|(_, h)| *h == host)
        .and_then(|(pid, _)| pid.parse::<u32>().ok())
        .map(|pid| Path::new(&format!("/proc/{pid}")).exists());
    match holder_alive {
        Some(alive) => !alive,
        None => fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > stale),
    }
}

/// The file name of Dovecot's dsync user lock (`DSYNC_LOCK_FILENAME`).
pub const SYNC_LOCK_NAME: &str = ".dovecot-sync.lock";

/// A held dsync user lock: unlinked, then unlocked, on drop.
#[derive(Debug)]
pub struct SyncLock {
    path: PathBuf,
    file: File,
}

impl SyncLock {
    /// Locks `home/.dovecot-sync.lock`, waiting up to `timeout` for a
    /// holder to finish. An error of kind `TimedOut` means someone held it
    /// all that time.
    pub fn acquire(home: &Path, timeout: Duration) -> io::Result<SyncLock> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let path = home.join(SYNC_LOCK_NAME);
        let started = Instant::now();
        let mut wait_ms = 5u64;
        loop {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)?;
            match rustix::fs::fcntl_lock(
                &file,
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
            ) {
                Ok(()) => {
                    // Still the file the path names? The last holder may
                    // have unlinked it between our open and our lock.
                    let same = fs::metadata(&path)
                        .ok()
                        .zip(file.metadata().ok())
                        .is_some_and(|(p, f)| p.ino() == f.ino() && p.dev() == f.dev());
                    if same {
                        return Ok(SyncLock { path, file });
                    }
                    continue;
                }
                Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => {}
                Err(e) => return Err(e.into()),
            }
            if started.elapsed() >= timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "Couldn't lock {}: Timed out after {} seconds",
                        path.display(),
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(wait_ms));
            wait_ms = (wait_ms * 2).min(100);
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SyncLock {
    fn drop(&mut self) {
        // As Dovecot: unlink before the lock goes (closing the file drops
        // it), so a waiter that wins the lock on the old file notices.
        let _ = fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// fsync a directory so renames and new entries in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Give `path` the permissions Dovecot gives files of a mailbox: the
/// mode of the directory `like` (without execute bits for a file) and, as
/// far as we may, its owner and group. So a corvid running as root on a
/// user's maildir leaves files that user's Dovecot can rewrite (Dovecot
/// opens `dovecot-uidlist` read-write and panics on a read-only one it
/// must rewrite during a save).
pub fn like_dir(path: &Path, like: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = fs::metadata(like)?;
    let mode = if fs::metadata(path)?.is_dir() {
        d.mode() & 0o7777
    } else {
        d.mode() & 0o666
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    let m = fs::metadata(path)?;
    if (m.uid(), m.gid()) != (d.uid(), d.gid()) {
        // Only root may give a file away; anyone else keeps their own.
        match std::os::unix::fs::chown(path, Some(d.uid()), Some(d.gid())) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
            other => other?,
        }
    }
    Ok(())
}

/// Replace `dir/name` atomically with `bytes` (temp `dir/tmp_name`), with
/// the directory's permissions ([`like_dir`]).
pub fn write_atomic(dir: &Path, name: &str, tmp_name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        like_dir(&tmp, dir)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}
