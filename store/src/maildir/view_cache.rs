//! Reuse of a mailbox's last read view while nothing it was read from has
//! changed, as Dovecot's maildir sync skips a rescan when the `cur/` and
//! `new/` mtimes say nothing moved.
//!
//! A view is keyed by its mailbox directory and stamped with the inode,
//! size and nanosecond mtime of every path it was read from (`new/`,
//! `cur/`, the uidlist and corvid's sidecars). A later read stats those
//! paths again (a handful of `statx` calls instead of two `readdir`s and
//! three file reads) and reuses the view when every stamp is the same.
//!
//! Why a stamp can be trusted: any create, rename or unlink in a
//! directory sets its mtime, and every control file is replaced by
//! rename (a new inode). The one blind spot is a filesystem whose
//! timestamps are coarser than the gap between two changes (ext4 stamps
//! with the kernel's coarse clock, a few milliseconds): a change in the
//! same tick as the one the stamp saw would leave it equal. So a view is
//! only kept when every stamped mtime is at least [`SETTLED`] older than
//! the moment its stamps were taken, and only when the stamps taken
//! before and after reading are equal: any later change then lands on a
//! later tick and shows. Until a mailbox has been quiet that long, it is
//! read afresh every time, as before.
//!
//! What a stale stamp could cost is bounded anyway: a reused view is a
//! view from the past, which is what any reader racing a concurrent
//! writer may get; writers never use it (they re-read under the uidlist
//! lock).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long every stamped path must have been unchanged before a view is
/// kept (well above any filesystem's timestamp granularity that corvid
/// runs on, below anything a person notices).
pub const SETTLED: Duration = Duration::from_millis(100);

/// The stamps of the paths a view was read from; `None` for a path that
/// does not exist (its appearance changes the stamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    taken_at_ns: i128,
    paths: Vec<Option<(u64, u64, u64, i128)>>,
}

impl Stamp {
    /// Stat every path now.
    pub fn take(paths: &[PathBuf]) -> io::Result<Stamp> {
        let taken_at_ns = now_ns();
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            match fs::metadata(p) {
                Ok(md) => out.push(Some((
                    md.dev(),
                    md.ino(),
                    md.size(),
                    i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
                ))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => out.push(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Stamp {
            taken_at_ns,
            paths: out,
        })
    }

    /// Whether the same paths look the same (the time they were stamped
    /// aside).
    pub fn same_files(&self, other: &Stamp) -> bool {
        self.paths == other.paths
    }

    /// Whether every path was last changed at least [`SETTLED`] before the
    /// stamp was taken.
    fn settled(&self) -> bool {
        let limit = self.taken_at_ns - SETTLED.as_nanos() as i128;
        self.paths
            .iter()
            .flatten()
            .all(|&(_, _, _, mtime)| mtime < limit)
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Views by mailbox directory, at most `max_items` items (a view's weight
/// is its message count) in all, so memory stays bounded however big the
/// maildir is.
pub struct ViewCache<T> {
    inner: Mutex<Inner<T>>,
    max_items: usize,
}

struct Inner<T> {
    views: HashMap<PathBuf, (Stamp, usize, Arc<T>)>,
    items: usize,
}

impl<T> std::fmt::Debug for ViewCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.lock().map_or(0, |i| i.views.len());
        f.debug_struct("ViewCache")
            .field("views", &n)
            .field("max_items", &self.max_items)
            .finish()
    }
}

impl<T> ViewCache<T> {
    /// An empty cache holding up to `max_items` items over all views.
    pub fn new(max_items: usize) -> ViewCache<T> {
        ViewCache {
            inner: Mutex::new(Inner {
                views: HashMap::new(),
                items: 0,
            }),
            max_items,
        }
    }

    /// The view of `dir` if it was stamped with files that look as `now`.
    pub fn get(&self, dir: &Path, now: &Stamp) -> Option<Arc<T>> {
        let inner = self.inner.lock().ok()?;
        let (stamp, _, view) = inner.views.get(dir)?;
        stamp.same_files(now).then(|| Arc::clone(view))
    }

    /// Keep `view` of `dir`, read between stamps `before` and `after`,
    /// when they agree and the files had settled; else forget any older
    /// view of `dir`.
    pub fn offer(&self, dir: &Path, before: &Stamp, after: &Stamp, items: usize, view: &Arc<T>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some((_, n, _)) = inner.views.remove(dir) {
            inner.items -= n;
        }
        if !before.same_files(after) || !before.settled() || items > self.max_items {
            return;
        }
        if inner.items + items > self.max_items {
            inner.views.clear();
            inner.items = 0;
        }
        inner.items += items;
        inner
            .views
            .insert(dir.to_path_buf(), (before.clone(), items, Arc::clone(view)));
    }

    /// Forget the view of `dir` (after this process changed it).
    pub fn forget(&self, dir: &Path) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some((_, n, _)) = inner.views.remove(dir) {
                inner.items -= n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp_of(dir: &Path) -> Stamp {
        Stamp::take(&[dir.join("cur"), dir.join("uidlist")]).unwrap()
    }

    fn settled_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("cur")).unwrap();
        fs::write(d.path().join("uidlist"), "3 V1 N1\n").unwrap();
        std::thread::sleep(SETTLED + Duration::from_millis(20));
        d
    }

    #[test]
    fn a_settled_view_is_reused_until_a_file_in_it_changes() {
        let d = settled_dir();
        let cache = ViewCache::new(100);
        let s = stamp_of(d.path());
        cache.offer(d.path(), &s, &stamp_of(d.path()), 1, &Arc::new("v1"));
        assert_eq!(
            cache.get(d.path(), &stamp_of(d.path())).as_deref(),
            Some(&"v1")
        );
        // A rename inside cur/ (a flag change) moves cur's mtime.
        fs::write(d.path().join("cur").join("a:2,"), "x").unwrap();
        assert!(cache.get(d.path(), &stamp_of(d.path())).is_none());
    }

    #[test]
    fn a_control_file_replaced_by_rename_changes_the_stamp() {
        let d = settled_dir();
        let cache = ViewCache::new(100);
        let s = stamp_of(d.path());
        cache.offer(d.path(), &s, &s, 1, &Arc::new(1));
        let tmp = d.path().join("uidlist.tmp");
        fs::write(&tmp, "3 V1 N1\n").unwrap(); // same size, same content
        fs::rename(&tmp, d.path().join("uidlist")).unwrap();
        assert!(cache.get(d.path(), &stamp_of(d.path())).is_none());
    }

    #[test]
    fn a_view_of_recently_changed_files_is_not_kept() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("cur")).unwrap();
        let cache = ViewCache::new(100);
        let s = stamp_of(d.path());
        cache.offer(d.path(), &s, &s, 1, &Arc::new(1));
        assert!(cache.get(d.path(), &stamp_of(d.path())).is_none());
    }

    #[test]
    fn a_view_read_while_something_changed_is_not_kept() {
        let d = settled_dir();
        let cache = ViewCache::new(100);
        let before = stamp_of(d.path());
        fs::write(d.path().join("cur").join("b"), "x").unwrap();
        cache.offer(d.path(), &before, &stamp_of(d.path()), 1, &Arc::new(1));
        assert!(cache.get(d.path(), &before).is_none());
    }

    #[test]
    fn the_cache_stays_within_its_item_budget() {
        let (a, b) = (settled_dir(), settled_dir());
        let cache = ViewCache::new(10);
        let (sa, sb) = (stamp_of(a.path()), stamp_of(b.path()));
        cache.offer(a.path(), &sa, &sa, 6, &Arc::new(1));
        cache.offer(b.path(), &sb, &sb, 6, &Arc::new(2));
        assert!(cache.get(a.path(), &sa).is_none(), "a was dropped for b");
        assert_eq!(cache.get(b.path(), &sb).as_deref(), Some(&2));
        cache.offer(a.path(), &sa, &sa, 11, &Arc::new(3));
        assert!(cache.get(a.path(), &sa).is_none(), "too big to keep at all");
    }
}
