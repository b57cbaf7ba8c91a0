//! Message bytes of every backed-up user, once per GUID, zstd-compressed:
//! `<dir>/<first two hex digits>/<40 hex digits>.zst`.
//!
//! A message is written to a temporary file, its SHA-1 checked against
//! the GUID while it streams, made durable, then renamed into place and
//! the directory made durable: a name in the pack always holds complete,
//! verified bytes, and two users with the same message share one file.
//! The zstd frame carries its own content checksum as well.
//!
//! Many messages at once ([`Pack::writer`] then [`Pack::commit`]): each
//! is streamed into `<dir>/tmp/` (compressed and hashed as its bytes
//! arrive, so `backupd` writes the pack while the peer uploads), and one
//! commit makes the whole set durable — every file fsynced by a few
//! threads at once, then renamed, then each directory fsynced once —
//! instead of two serial fsyncs per message. A name still only ever holds
//! durable, verified bytes: files are durable before they are renamed.
//!
//! What it never does: keep a message in memory whole while writing, or
//! delete a file younger than the grace period given to [`Pack::gc`]
//! (a writer may have stored it for a chunk not yet appended).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::model::Guid;
use sha1::{Digest, Sha1};

/// Why the pack failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The disk's fault.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The bytes offered for a GUID do not hash to it (the source store's
    /// fault), or a stored file no longer does (damage).
    #[error("{0}: bytes do not hash to the GUID")]
    GuidMismatch(String),
    /// The pack has no file for the GUID.
    #[error("message {0} is not in the backup")]
    Missing(String),
    /// The source could not give the bytes.
    #[error("reading message {guid}: {what}")]
    Source {
        /// Which.
        guid: String,
        /// Why.
        what: String,
    },
}

static TMP: AtomicU64 = AtomicU64::new(0);

/// The message pack.
#[derive(Debug, Clone)]
pub struct Pack {
    dir: PathBuf,
    level: i32,
    syncfs_min_files: Option<usize>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Pack {
    /// The pack under `dir`, compressing at zstd `level`.
    pub fn new(dir: PathBuf, level: i32) -> Pack {
        Pack {
            dir,
            level,
            syncfs_min_files: None,
        }
    }

    /// Commits of at least `min` new files are made durable with two
    /// `syncfs(2)` calls (contents, then names) instead of an fsync per
    /// file and directory. `syncfs` also writes back every other dirty
    /// file of the filesystem, so it suits a filesystem dedicated to
    /// backups; `None` (the default) never uses it.
    pub fn with_syncfs(mut self, min: Option<usize>) -> Pack {
        self.syncfs_min_files = min;
        self
    }

    /// Where `guid` lives.
    pub fn path(&self, guid: &Guid) -> PathBuf {
        let hex = guid.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.zst"))
    }

    /// Whether the pack holds `guid`.
    pub fn has(&self, guid: &Guid) -> bool {
        self.path(guid).exists()
    }

    /// Stores `guid` (`size` bytes) unless present, reading it in pieces
    /// with `read(offset, max_len)`; durable on return.
    pub fn put_from(
        &self,
        guid: &Guid,
        size: u64,
        mut read: impl FnMut(u64, usize) -> Result<bytes::Bytes, String>,
    ) -> Result<bool, PackError> {
        let path = self.path(guid);
        if path.exists() {
            return Ok(false);
        }
        let dir = path.parent().expect("pack file has a parent").to_owned();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{}",
            guid.to_hex(),
            std::process::id(),
            TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let f = File::create(&tmp).map_err(io(&tmp))?;
            let mut enc = zstd::Encoder::new(f, self.level).map_err(io(&tmp))?;
            enc.include_checksum(true).map_err(io(&tmp))?;
            enc.set_pledged_src_size(Some(size)).map_err(io(&tmp))?;
            let mut h = Sha1::new();
            let mut off = 0u64;
            while off < size {
                let want = (size - off).min(1 << 20) as usize;
                let b = read(off, want).map_err(|what| PackError::Source {
                    guid: guid.to_hex(),
                    what,
                })?;
                if b.is_empty() {
                    return Err(PackError::Source {
                        guid: guid.to_hex(),
                        what: format!("ended at {off} of {size} bytes"),
                    });
                }
                h.update(&b);
                enc.write_all(&b).map_err(io(&tmp))?;
                off += b.len() as u64;
            }
            if h.finalize()[..] != guid.as_bytes()[..] {
                return Err(PackError::GuidMismatch(guid.to_hex()));
            }
            let f = enc.finish().map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&dir))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| true)
    }

    /// Starts writing `guid` (`size` bytes announced) to a temporary file
    /// of the pack; nothing is named or durable until [`Pack::commit`].
    pub fn writer(&self, guid: Guid, size: u64) -> Result<PackWriter, PackError> {
        let dir = self.dir.join("tmp");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!(
            "{}.{}.{}.part",
            guid.to_hex(),
            std::process::id(),
            TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let f = File::create(&tmp).map_err(io(&tmp))?;
        let staged = Staged { guid, tmp };
        let mut enc = zstd::Encoder::new(f, self.level).map_err(io(&staged.tmp))?;
        enc.include_checksum(true).map_err(io(&staged.tmp))?;
        enc.set_pledged_src_size(Some(size))
            .map_err(io(&staged.tmp))?;
        Ok(PackWriter {
            staged,
            size,
            written: 0,
            hash: Sha1::new(),
            enc: Some(enc),
        })
    }

    /// Makes every staged message durable and names it, with one round
    /// of parallel fsyncs for all of them (see the module doc). A GUID
    /// already in the pack keeps its file. Returns how many were added.
    pub fn commit(&self, staged: Vec<Staged>) -> Result<usize, PackError> {
        let todo: Vec<Staged> = staged.into_iter().filter(|s| !self.has(&s.guid)).collect();
        if todo.is_empty() {
            return Ok(0);
        }
        let syncfs = self
            .syncfs_min_files
            .is_some_and(|m| todo.len() >= m.max(1));
        let tmp_dir = self.dir.join("tmp");
        let flush_fs = || {
            let d = File::open(&tmp_dir).map_err(io(&tmp_dir))?;
            rustix::fs::syncfs(&d).map_err(|e| io(&tmp_dir)(e.into()))
        };
        // 1. file contents durable: one filesystem flush, or several
        //    fsyncs at once (the disk merges concurrent flushes into one
        //    journal commit).
        if syncfs {
            flush_fs()?;
        } else {
            parallel(&todo, |s| {
                File::open(&s.tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&s.tmp))
            })?;
        }
        // 2. names; 3. the directories holding them durable, once each.
        let mut dirs = BTreeSet::new();
        let mut new_dirs = false;
        for s in &todo {
            let path = self.path(&s.guid);
            let dir = path.parent().expect("pack file has a parent").to_owned();
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                new_dirs = true;
            }
            std::fs::rename(&s.tmp, &path).map_err(io(&path))?;
            dirs.insert(dir);
        }
        if syncfs {
            flush_fs()?;
            return Ok(todo.len());
        }
        if new_dirs {
            dirs.insert(self.dir.clone());
        }
        let dirs: Vec<PathBuf> = dirs.into_iter().collect();
        parallel(&dirs, |d| {
            File::open(d).and_then(|f| f.sync_all()).map_err(io(d))
        })?;
        Ok(todo.len())
    }

    /// Removes temporary files older than `age` (left by a writer that
    /// died; a live one's are younger).
    pub fn clean_tmp(&self, age: Duration) -> usize {
        let now = std::time::SystemTime::now();
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(self.dir.join("tmp")) {
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| now.duration_since(t).unwrap_or_default() >= age)
                    .unwrap_or(false);
                if old && std::fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Stores bytes given whole (tests, small messages).
    pub fn put(&self, guid: &Guid, bytes: &[u8]) -> Result<bool, PackError> {
        self.put_from(guid, bytes.len() as u64, |off, n| {
            let s = off as usize;
            Ok(bytes::Bytes::copy_from_slice(
                &bytes[s..(s + n).min(bytes.len())],
            ))
        })
    }

    /// A streaming reader of the inflated bytes of `guid`.
    pub fn open(&self, guid: &Guid) -> Result<impl Read, PackError> {
        let path = self.path(guid);
        let f = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PackError::Missing(guid.to_hex()),
            _ => PackError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        zstd::Decoder::new(f).map_err(io(&path))
    }

    /// Reads `guid` whole, refusing more than `max` bytes.
    pub fn read(&self, guid: &Guid, max: u64) -> Result<Vec<u8>, PackError> {
        let path = self.path(guid);
        let mut out = Vec::new();
        self.open(guid)?
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(io(&path))?;
        if out.len() as u64 > max {
            return Err(PackError::Source {
                guid: guid.to_hex(),
                what: format!("over {max} bytes"),
            });
        }
        Ok(out)
    }

    /// Inflates `guid` and checks it hashes to its name; its size.
    pub fn verify(&self, guid: &Guid) -> Result<u64, PackError> {
        let path = self.path(guid);
        let mut r = self.open(guid)?;
        let mut h = Sha1::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            let k = r.read(&mut buf).map_err(io(&path))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
        if h.finalize()[..] != guid.as_bytes()[..] {
            return Err(PackError::GuidMismatch(guid.to_hex()));
        }
        Ok(n)
    }

    /// Every GUID in the pack, with its file's size on disk and age.
    pub fn list(&self) -> Result<Vec<(Guid, u64, std::time::SystemTime)>, PackError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        for sub in rd.flatten() {
            let Ok(files) = std::fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let Some(hex) = name.strip_suffix(".zst") else {
                    continue;
                };
                let Ok(g) = Guid::parse(hex.as_bytes()) else {
                    continue;
                };
                let md = f.metadata().map_err(io(&f.path()))?;
                out.push((g, md.len(), md.modified().unwrap_or(std::time::UNIX_EPOCH)));
            }
        }
        out.sort_by_key(|a| a.0);
        Ok(out)
    }

    /// Deletes every message not in `keep` whose file is older than
    /// `grace`; how many and how many bytes on disk.
    pub fn gc(
        &self,
        keep: &BTreeSet<Guid>,
        grace: std::time::Duration,
    ) -> Result<(usize, u64), PackError> {
        let now = std::time::SystemTime::now();
        let mut n = 0;
        let mut bytes = 0;
        for (g, size, mtime) in self.list()? {
            if keep.contains(&g) {
                continue;
            }
            if now.duration_since(mtime).unwrap_or_default() < grace {
                continue;
            }
            let p = self.path(&g);
            std::fs::remove_file(&p).map_err(io(&p))?;
            n += 1;
            bytes += size;
        }
        Ok((n, bytes))
    }
}

/// Threads that fsync pack files at once in [`Pack::commit`].
const FSYNC_THREADS: usize = 16;

fn parallel<T: Sync>(
    items: &[T],
    f: impl Fn(&T) -> Result<(), PackError> + Sync,
) -> Result<(), PackError> {
    if items.len() <= 2 {
        return items.iter().try_for_each(&f);
    }
    let per = items.len().div_ceil(FSYNC_THREADS);
    std::thread::scope(|sc| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|part| {
                let f = &f;
                sc.spawn(move || part.iter().try_for_each(f))
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("fsync thread panicked"))
    })
}

/// A message written to a temporary file of the pack and verified, not
/// yet durable nor named: hand it to [`Pack::commit`]. Dropped, its file
/// is removed.
#[derive(Debug)]
pub struct Staged {
    guid: Guid,
    tmp: PathBuf,
}

impl Staged {
    /// The message.
    pub fn guid(&self) -> Guid {
        self.guid
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // After a commit renamed it this fails harmlessly.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// One message being streamed into the pack ([`Pack::writer`]).
pub struct PackWriter {
    staged: Staged,
    size: u64,
    written: u64,
    hash: Sha1,
    enc: Option<zstd::Encoder<'static, File>>,
}

impl std::fmt::Debug for PackWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackWriter")
            .field("guid", &self.staged.guid)
            .field("size", &self.size)
            .field("written", &self.written)
            .finish()
    }
}

impl PackWriter {
    /// The next bytes. More than announced is refused.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.written += bytes.len() as u64;
        if self.written > self.size {
            return Err(PackError::Source {
                guid: self.staged.guid.to_hex(),
                what: format!("more than the {} bytes announced", self.size),
            });
        }
        self.hash.update(bytes);
        let enc = self.enc.as_mut().expect("encoder until finish");
        enc.write_all(bytes).map_err(io(&self.staged.tmp))
    }

    /// Checks size and SHA-1 and closes the file (not yet durable).
    pub fn finish(mut self) -> Result<Staged, PackError> {
        if self.written != self.size {
            return Err(PackError::Source {
                guid: self.staged.guid.to_hex(),
                what: format!("{} bytes, announced {}", self.written, self.size),
            });
        }
        if self.hash.clone().finalize()[..] != self.staged.guid.as_bytes()[..] {
            return Err(PackError::GuidMismatch(self.staged.guid.to_hex()));
        }
        let enc = self.enc.take().expect("encoder until finish");
        enc.finish().map_err(io(&self.staged.tmp))?;
        let guid = self.staged.guid;
        let tmp = std::mem::take(&mut self.staged.tmp);
        Ok(Staged { guid, tmp })
    }
}
