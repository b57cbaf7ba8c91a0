//! Message bytes, content-addressed by GUID, in the configured partitions.
//!
//! Layout: a partition `partition-NAME: /path` holds corvid's files under
//! `/path/corvid/`: `tmp/` for messages being received and `ab/<guid>` for
//! stored ones, where `ab` is the GUID's first two hex digits. Only a
//! validated 40-hex GUID ever becomes a file name; mailbox and user names
//! never touch the filesystem, so nothing a peer names can escape these
//! directories.
//!
//! One fan-out level (256 directories, created once when the store is
//! created) rather than two: ext4 and XFS index large directories, and a
//! group commit then fsyncs at most 256 directories instead of creating and
//! fsyncing a fresh `ab/cd` directory for nearly every new message.
//!
//! Writing is streaming: [`MessageWriter`] appends chunks to a temporary
//! file while hashing them, so memory stays bounded whatever the size, and
//! refuses bytes whose SHA-1 is not the GUID they were sent under. A
//! finished [`StagedMessage`] is not yet durable: the committer makes a whole
//! group durable at once ([`make_durable`]): fsync every file (in parallel,
//! so the filesystem folds them into few journal commits), rename each into
//! place, fsync each touched directory. Only then may the index refer to
//! them. A staged message that is dropped uncommitted removes its temporary
//! file; temporaries left by a crash are removed when the store is next
//! opened for writing.
//!
//! This module never deletes a stored message file and never decides what a
//! mailbox contains; the index does that.

use super::error::{Error, Result};
use engine::model::Guid;
use engine::store::StoreError;
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The directory under a partition's path that corvid owns.
const OWN_DIR: &str = "corvid";
/// Where messages are received before they are durable.
const TMP_DIR: &str = "tmp";

/// The configured partitions: name → `/path/corvid`.
#[derive(Debug, Clone)]
pub(crate) struct Partitions {
    roots: BTreeMap<String, PathBuf>,
}

impl Partitions {
    /// Opens (and with `create`, creates) every partition's directories.
    pub(crate) fn open(config: &BTreeMap<String, PathBuf>, create: bool) -> Result<Self> {
        if config.is_empty() {
            return Err(Error::Config("no partition-NAME is configured".into()));
        }
        let mut roots = BTreeMap::new();
        for (name, path) in config {
            let root = path.join(OWN_DIR);
            if create {
                create_layout(&root)?;
            } else if !root.is_dir() {
                return Err(Error::Config(format!(
                    "partition {name}: {} does not exist",
                    root.display()
                )));
            }
            roots.insert(name.clone(), root);
        }
        Ok(Partitions { roots })
    }

    /// The partition names, sorted.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.roots.keys().map(String::as_str)
    }

    fn root(&self, partition: &str) -> Result<&Path> {
        self.roots
            .get(partition)
            .map(PathBuf::as_path)
            .ok_or_else(|| Error::UnknownPartition(partition.to_owned()))
    }

    /// Where the message `guid` lives in `partition`.
    pub(crate) fn message_path(&self, partition: &str, guid: &Guid) -> Result<PathBuf> {
        let hex = guid.to_hex();
        Ok(self.root(partition)?.join(&hex[..2]).join(hex))
    }

    /// Removes temporaries a crashed writer left behind. Only called by the
    /// process holding the store's write lock, so no live writer owns them.
    pub(crate) fn clean_tmp(&self) -> Result<usize> {
        let mut removed = 0;
        for root in self.roots.values() {
            let tmp = root.join(TMP_DIR);
            let entries = fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&tmp, e))?;
                let path = entry.path();
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Starts receiving a message announced as `guid`, `size` bytes, into
    /// `partition`.
    pub(crate) fn writer(&self, partition: &str, guid: Guid, size: u64) -> Result<MessageWriter> {
        let root = self.root(partition)?;
        // pid + a process-wide counter: unique among live writers, and the
        // directory is emptied at open, so no stale name can collide.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp_path = root
            .join(TMP_DIR)
            .join(format!("{}-{n}.part", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|e| Error::io(&tmp_path, e))?;
        let hex = guid.to_hex();
        Ok(MessageWriter {
            file: Some(io::BufWriter::with_capacity(64 * 1024, file)),
            tmp_path,
            partition: partition.to_owned(),
            final_path: root.join(&hex[..2]).join(hex),
            hasher: Sha1::new(),
            len: 0,
            guid,
            size,
        })
    }

    /// Writes small bytes given inline as a staged message (already hashed
    /// by the caller).
    pub(crate) fn stage_bytes(
        &self,
        partition: &str,
        guid: Guid,
        bytes: &[u8],
    ) -> std::result::Result<StagedMessage, StoreError> {
        let mut w = self
            .writer(partition, guid, bytes.len() as u64)
            .map_err(StoreError::from)?;
        w.write(bytes)?;
        w.finish()
    }

    /// Opens a stored message for reading, checking its size against the index.
    pub(crate) fn reader(&self, partition: &str, guid: &Guid, size: u64) -> Result<MessageReader> {
        let path = self.message_path(partition, guid)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::DamagedMessage {
                    guid: guid.to_hex(),
                    problem: format!("file {} is missing", path.display()),
                })
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let on_disk = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if on_disk != size {
            return Err(Error::DamagedMessage {
                guid: guid.to_hex(),
                problem: format!(
                    "file {} has {on_disk} bytes, index says {size}",
                    path.display()
                ),
            });
        }
        Ok(MessageReader {
            file,
            guid: *guid,
            hasher: Sha1::new(),
            remaining: size,
            checked: false,
        })
    }
}

/// Creates `root`, `root/tmp` and the 256 fan-out directories, and makes
/// their existence durable. Idempotent.
fn create_layout(root: &Path) -> Result<()> {
    let fresh = !root.join("ff").is_dir();
    fs::create_dir_all(root.join(TMP_DIR)).map_err(|e| Error::io(root, e))?;
    if !fresh {
        return Ok(());
    }
    for i in 0..=255u8 {
        let dir = root.join(format!("{i:02x}"));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    sync_dir(root)?;
    if let Some(parent) = root.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsyncs a directory so that entries created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// A message being received: chunks are written to a temporary file and
/// hashed on the way, so memory is bounded by the write buffer.
#[derive(Debug)]
pub struct MessageWriter {
    file: Option<io::BufWriter<File>>,
    tmp_path: PathBuf,
    partition: String,
    final_path: PathBuf,
    hasher: Sha1,
    len: u64,
    guid: Guid,
    size: u64,
}

impl MessageWriter {
    /// Appends a chunk; refused as soon as more than the announced size arrives.
    pub fn write(&mut self, chunk: &[u8]) -> std::result::Result<(), StoreError> {
        let len = self.len + chunk.len() as u64;
        if len > self.size {
            return Err(StoreError::SizeMismatch {
                guid: self.guid,
                expected: self.size,
                actual: len,
            });
        }
        self.hasher.update(chunk);
        let file = self.file.as_mut().expect("writer used after finish");
        file.write_all(chunk)
            .map_err(|e| StoreError::from(Error::io(&self.tmp_path, e)))?;
        self.len = len;
        Ok(())
    }

    /// Ends the message: exactly the announced size, and SHA-1 equal to the
    /// announced GUID, or it is refused (and its file removed). The result
    /// is staged, not durable: a batch that links it makes it durable
    /// before the index refers to it.
    pub fn finish(mut self) -> std::result::Result<StagedMessage, StoreError> {
        let file = self.file.take().expect("writer finished twice");
        let file = file
            .into_inner()
            .map_err(|e| StoreError::from(Error::io(&self.tmp_path, e.into_error())))?;
        if self.len != self.size {
            return Err(StoreError::SizeMismatch {
                guid: self.guid,
                expected: self.size,
                actual: self.len,
            });
        }
        let actual = Guid::from_bytes(self.hasher.clone().finalize().into());
        if actual != self.guid {
            // Drop removes the temporary file.
            return Err(StoreError::GuidMismatch {
                expected: self.guid,
                actual,
            });
        }
        Ok(StagedMessage {
            guid: self.guid,
            size: self.len,
            partition: std::mem::take(&mut self.partition),
            tmp_path: Some(std::mem::take(&mut self.tmp_path)),
            final_path: std::mem::take(&mut self.final_path),
            file: Some(file),
            synced: false,
        })
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        if !self.tmp_path.as_os_str().is_empty() {
            // Best effort: a leftover is also removed at the next open.
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// A received, hash-checked message that is not yet durable. Hand it to the
/// store in a batch; dropping it discards the bytes.
#[derive(Debug)]
pub struct StagedMessage {
    pub(crate) guid: Guid,
    pub(crate) size: u64,
    pub(crate) partition: String,
    tmp_path: Option<PathBuf>,
    final_path: PathBuf,
    file: Option<File>,
    /// Its bytes were already fsynced (at staging).
    synced: bool,
}

impl StagedMessage {
    /// The message's GUID (SHA-1 of its bytes).
    pub fn guid(&self) -> Guid {
        self.guid
    }

    /// The message's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The partition it will be stored in.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// Moves the (not yet published) bytes into `partition`'s staging
    /// directory: a rename on one filesystem, else a copy (whose bytes are
    /// then fsynced at the group commit like any other).
    pub(crate) fn move_to(
        &mut self,
        partitions: &Partitions,
        partition: &str,
    ) -> std::result::Result<(), StoreError> {
        let Some(tmp) = self.tmp_path.clone() else {
            return Ok(());
        };
        let root = partitions.root(partition).map_err(StoreError::from)?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let new_tmp = root
            .join(TMP_DIR)
            .join(format!("{}-m{n}.part", std::process::id()));
        let final_path = partitions
            .message_path(partition, &self.guid)
            .map_err(StoreError::from)?;
        if fs::rename(&tmp, &new_tmp).is_err() {
            // EXDEV (another filesystem): copy, then let go of the old one.
            let copied = fs::copy(&tmp, &new_tmp).and_then(|_| File::open(&new_tmp));
            match copied {
                Ok(f) => {
                    let _ = fs::remove_file(&tmp);
                    self.file = Some(f);
                    self.synced = false;
                }
                Err(e) => {
                    let _ = fs::remove_file(&new_tmp);
                    return Err(Error::io(&new_tmp, e).into());
                }
            }
        }
        self.tmp_path = Some(new_tmp);
        self.final_path = final_path;
        self.partition = partition.to_owned();
        Ok(())
    }

    /// fsyncs the bytes now, on the caller's thread, so the group commit
    /// that links them only has to rename and fsync directories.
    pub(crate) fn sync_now(&mut self) -> std::result::Result<(), StoreError> {
        if let Some(f) = &self.file {
            f.sync_all().map_err(|e| {
                StoreError::from(Error::io(
                    self.tmp_path.as_deref().unwrap_or(&self.final_path),
                    e,
                ))
            })?;
            self.synced = true;
        }
        Ok(())
    }
}

impl Drop for StagedMessage {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp_path.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Runs `f` over `items` on up to `threads` threads. Parallel fsyncs let the
/// filesystem fold many flushes into one journal commit.
fn parallel<T: Sync>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().try_for_each(f);
    }
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return Ok(());
                        };
                        f(item)?;
                    }
                })
            })
            .collect();
        let mut first = Ok(());
        for w in workers {
            let r = w.join().expect("fsync worker panicked");
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// How a group's message files are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSync {
    /// fsync every file (in parallel), rename each into place, fsync every
    /// touched directory (in parallel). Portable; costs one flush per file
    /// unless the filesystem folds concurrent fsyncs together.
    PerFile,
    /// Rename every file into place, then one `syncfs(2)` per partition
    /// filesystem, which writes back all dirty data and metadata of that
    /// filesystem and waits for it. One flush per group, whatever its size;
    /// but it also flushes other processes' dirty data on the same
    /// filesystem, so it suits a filesystem dedicated to mail. Groups with
    /// fewer than `min_files` new files use `PerFile`.
    SyncFs {
        /// Smallest group worth a whole-filesystem flush.
        min_files: usize,
    },
}

/// Makes a group of staged messages durable under their final names (see
/// [`GroupSync`]). When this returns Ok, a crash can no longer lose any of
/// them. A crash before that may leave final-named files whose bytes are
/// incomplete; the index never refers to them (it commits only after this
/// returns), `verify` counts them as stray, and a later staging of the
/// same GUID renames over them.
pub(crate) fn make_durable(
    staged: &mut [StagedMessage],
    threads: usize,
    mode: GroupSync,
) -> Result<()> {
    if staged.is_empty() {
        return Ok(());
    }
    let syncfs =
        matches!(mode, GroupSync::SyncFs { min_files } if staged.len() >= min_files.max(1));
    if !syncfs {
        let unsynced: Vec<&StagedMessage> = staged.iter().filter(|m| !m.synced).collect();
        parallel(&unsynced, threads, |m| {
            let file = m.file.as_ref().expect("staged message already published");
            file.sync_all()
                .map_err(|e| Error::io(m.tmp_path.as_deref().unwrap_or(&m.final_path), e))
        })?;
    }
    let mut dirs = BTreeSet::new();
    for m in staged.iter_mut() {
        let tmp = m.tmp_path.take().expect("staged message already published");
        // Replacing an existing file is fine: same GUID, same bytes, or
        // the leftover of a group that crashed before its commit.
        fs::rename(&tmp, &m.final_path).map_err(|e| Error::io(&tmp, e))?;
        if let Some(dir) = m.final_path.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    if syncfs {
        // One flush per filesystem: the partition roots (grandparents of
        // the files) that share a device need only one syncfs.
        let mut devices = std::collections::BTreeMap::new();
        for d in &dirs {
            let root = d.parent().unwrap_or(d);
            let meta = fs::metadata(root).map_err(|e| Error::io(root, e))?;
            use std::os::unix::fs::MetadataExt;
            devices
                .entry(meta.dev())
                .or_insert_with(|| root.to_path_buf());
        }
        for root in devices.values() {
            let dir = File::open(root).map_err(|e| Error::io(root, e))?;
            rustix::fs::syncfs(&dir).map_err(|e| Error::io(root, e.into()))?;
        }
    } else {
        let dirs: Vec<PathBuf> = dirs.into_iter().collect();
        parallel(&dirs, threads, |d| sync_dir(d))?;
    }
    for m in staged.iter_mut() {
        m.file = None;
    }
    Ok(())
}

/// Reads a stored message, checking on the way that it still hashes to its
/// GUID. Damage is reported as an `InvalidData` error at the end of the
/// bytes, before `read` ever returns 0, so a caller that streams the message
/// out must treat that error as "abort the transfer", never as end of mail.
#[derive(Debug)]
pub struct MessageReader {
    file: File,
    guid: Guid,
    hasher: Sha1,
    remaining: u64,
    checked: bool,
}

impl MessageReader {
    /// Bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    fn damaged(&self, problem: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("damaged message {}: {problem}", self.guid),
        )
    }
}

impl Read for MessageReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            if !self.checked {
                let actual: [u8; 20] = self.hasher.clone().finalize().into();
                if &actual != self.guid.as_bytes() {
                    return Err(self.damaged("bytes no longer hash to the GUID"));
                }
                self.checked = true;
            }
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(self.damaged("file shorter than its recorded size"));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        if self.remaining == 0 {
            let actual: [u8; 20] = self.hasher.clone().finalize().into();
            if &actual != self.guid.as_bytes() {
                return Err(self.damaged("bytes no longer hash to the GUID"));
            }
            self.checked = true;
        }
        Ok(n)
    }
}

/// Hashes a file: its SHA-1 and length, reading in bounded chunks.
pub(crate) fn hash_file(path: &Path) -> io::Result<([u8; 20], u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hasher.finalize().into(), len))
}

impl Partitions {
    /// Up to `max_len` bytes of a stored message from `offset`. With
    /// `verify`, the read that reaches the end of the message first rehashes
    /// the whole file, so the last bytes of a damaged message are never
    /// handed out: a peer can never receive it complete.
    pub(crate) fn read_range(
        &self,
        partition: &str,
        guid: &Guid,
        size: u64,
        offset: u64,
        max_len: usize,
        verify: bool,
    ) -> std::result::Result<bytes::Bytes, StoreError> {
        use std::io::{Seek, SeekFrom};
        let path = self.message_path(partition, guid)?;
        let damaged = |problem: String| {
            StoreError::from(Error::DamagedMessage {
                guid: guid.to_hex(),
                problem,
            })
        };
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(damaged(format!("file {} is missing", path.display())))
            }
            Err(e) => return Err(Error::io(&path, e).into()),
        };
        let on_disk = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if on_disk != size {
            return Err(damaged(format!(
                "file {} has {on_disk} bytes, index says {size}",
                path.display()
            )));
        }
        if offset >= size || max_len == 0 {
            return Ok(bytes::Bytes::new());
        }
        let want = (size - offset).min(max_len as u64) as usize;
        let reaches_end = offset + want as u64 == size;
        if verify && reaches_end {
            if offset == 0 {
                // The whole message in one read: hash what we return.
                let mut buf = vec![0u8; want];
                file.read_exact(&mut buf).map_err(|e| Error::io(&path, e))?;
                if Guid::of(&buf) != *guid {
                    return Err(damaged("bytes no longer hash to the GUID".into()));
                }
                return Ok(buf.into());
            }
            let (actual, len) = hash_file(&path).map_err(|e| Error::io(&path, e))?;
            if &actual != guid.as_bytes() || len != size {
                return Err(damaged("bytes no longer hash to the GUID".into()));
            }
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(&path, e))?;
        let mut buf = vec![0u8; want];
        file.read_exact(&mut buf).map_err(|e| Error::io(&path, e))?;
        Ok(buf.into())
    }
}
