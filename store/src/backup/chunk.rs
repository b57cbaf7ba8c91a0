//! The journal file: a header line, then chunks appended one per durable
//! batch, each compressed and checksummed on its own.
//!
//! ```text
//! file   = "corvid-backup 2\n" chunk*
//! chunk  = "CVBC" at:i64le raw_len:u32le comp_len:u32le sum:8 payload
//! sum    = the first 8 bytes of SHA-1(the 20 header bytes before it ‖ payload)
//! payload= zstd(ops::encode(ops)), comp_len bytes, raw_len when inflated
//! ```
//!
//! A chunk is written with one `write` and made durable (`fdatasync`)
//! before the caller answers the peer, so a crash can only leave a torn
//! *last* chunk: too short for its header, shorter than its announced
//! payload, or (on a file system that extends the size before the data)
//! ending at end of file with a bad sum. [`read`] reports that as
//! [`Tail::Torn`] and [`repair`] cuts it; damage anywhere else is
//! [`ChunkError::Corrupt`] and is never cut automatically.
//!
//! What it never does: interpret the operations (that is [`super::ops`]),
//! or inflate a payload beyond its announced (and limited) size.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

/// The first bytes of every journal of this format.
pub const FILE_MAGIC: &[u8; 16] = b"corvid-backup 2\n";
const CHUNK_MAGIC: &[u8; 4] = b"CVBC";
/// Bytes of a chunk header.
pub const HEADER_BYTES: usize = 28;

/// Why a journal could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The disk's fault (or permissions).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is damaged before its last chunk, or is not a journal.
    #[error("{path}: byte {offset}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad chunk starts.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A journal of corvid's first backup format (session 1: one framed
    /// `APPLY MAILBOX` text entry per change); this version does not read
    /// it. Not the file's fault: it is from an older corvid.
    #[error("{0}: a format-1 journal from an earlier corvid; this version reads format 2 only (start a fresh backup: sync_client -A into a new backuppartition)")]
    OldFormat(PathBuf),
    /// A chunk announces more bytes than the configured limit.
    #[error("{path}: byte {offset}: chunk of {raw_len} bytes is over the {max} limit")]
    Limit {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// Announced inflated size.
        raw_len: u64,
        /// The limit.
        max: u64,
    },
}

/// One chunk as read.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Byte offset of its header in the file.
    pub offset: u64,
    /// When it was recorded (Unix seconds).
    pub at: i64,
    /// The inflated payload.
    pub payload: Vec<u8>,
}

/// How a journal ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// At a chunk boundary.
    Clean,
    /// A torn last chunk starts at this offset (a crash mid-append).
    Torn(u64),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ChunkError + '_ {
    move |source| ChunkError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sum(header: &[u8], payload: &[u8]) -> [u8; 8] {
    let mut h = Sha1::new();
    h.update(header);
    h.update(payload);
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// The bytes of one chunk holding `raw` (already encoded operations).
pub fn frame(at: i64, raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    let comp = zstd::bulk::compress(raw, level)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + comp.len());
    out.extend_from_slice(CHUNK_MAGIC);
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&(comp.len() as u32).to_le_bytes());
    let s = sum(&out, &comp);
    out.extend_from_slice(&s);
    out.extend_from_slice(&comp);
    Ok(out)
}

/// Appends one chunk and makes it durable. A new file gets the format
/// header first, and its directory entry is made durable too.
pub fn append(path: &Path, chunk: &[u8]) -> Result<(), ChunkError> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    if len == 0 {
        let mut all = FILE_MAGIC.to_vec();
        all.extend_from_slice(chunk);
        f.write_all(&all).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(path))?;
        }
        return Ok(());
    }
    f.write_all(chunk).map_err(io(path))?;
    f.sync_data().map_err(io(path))
}

/// Reads every chunk of a journal (inflating at most `raw_max` bytes per
/// chunk), and how the file ends. `headers_only` skips inflating and
/// checking payloads (for listing).
pub fn read(
    path: &Path,
    raw_max: u64,
    headers_only: bool,
) -> Result<(Vec<Chunk>, Tail), ChunkError> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let mut magic = [0u8; 16];
    if len < 16 {
        if len == 0 {
            return Ok((Vec::new(), Tail::Clean));
        }
        return Err(ChunkError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            what: "shorter than the file header".into(),
        });
    }
    f.read_exact(&mut magic).map_err(io(path))?;
    if &magic != FILE_MAGIC {
        if magic.first().is_some_and(|b| b.is_ascii_digit()) {
            return Err(ChunkError::OldFormat(path.to_owned()));
        }
        return Err(ChunkError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            what: "not a corvid backup journal".into(),
        });
    }
    let mut out = Vec::new();
    let mut pos = 16u64;
    while pos < len {
        let corrupt = |what: String| ChunkError::Corrupt {
            path: path.to_owned(),
            offset: pos,
            what,
        };
        if len - pos < HEADER_BYTES as u64 {
            return Ok((out, Tail::Torn(pos)));
        }
        let mut h = [0u8; HEADER_BYTES];
        f.seek(SeekFrom::Start(pos)).map_err(io(path))?;
        f.read_exact(&mut h).map_err(io(path))?;
        if &h[..4] != CHUNK_MAGIC {
            // Zeros at the very end: a size extended before its data.
            if h.iter().all(|&b| b == 0) {
                return Ok((out, Tail::Torn(pos)));
            }
            return Err(corrupt("no chunk magic".into()));
        }
        let at = i64::from_le_bytes(h[4..12].try_into().expect("8 bytes"));
        let raw_len = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes")) as u64;
        let comp_len = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")) as u64;
        let end = pos + HEADER_BYTES as u64 + comp_len;
        if end > len {
            return Ok((out, Tail::Torn(pos)));
        }
        if raw_len > raw_max {
            return Err(ChunkError::Limit {
                path: path.to_owned(),
                offset: pos,
                raw_len,
                max: raw_max,
            });
        }
        if headers_only {
            out.push(Chunk {
                offset: pos,
                at,
                payload: Vec::new(),
            });
            pos = end;
            continue;
        }
        let mut comp = vec![0u8; comp_len as usize];
        f.read_exact(&mut comp).map_err(io(path))?;
        if sum(&h[..20], &comp) != h[20..28] {
            if end == len {
                return Ok((out, Tail::Torn(pos)));
            }
            return Err(corrupt("checksum mismatch".into()));
        }
        let payload = zstd::bulk::decompress(&comp, raw_len as usize)
            .map_err(|e| corrupt(format!("zstd: {e}")))?;
        if payload.len() as u64 != raw_len {
            return Err(corrupt("inflated size differs from the header".into()));
        }
        out.push(Chunk {
            offset: pos,
            at,
            payload,
        });
        pos = end;
    }
    Ok((out, Tail::Clean))
}

/// Cuts a torn last chunk off (the only damage cut automatically).
pub fn cut(path: &Path, at: u64) -> Result<(), ChunkError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.set_len(at).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}
