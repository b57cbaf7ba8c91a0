//! COMPRESS DEFLATE (RFC 4978) as a sans-IO layer any protocol can stack
//! under its framer: raw deflate (RFC 1951: no zlib header, no checksum, as
//! RFC 4978 and Cyrus' `prot_setcompress` use it), sync-flushed at the points
//! the caller chooses.
//!
//! * [`Deflater`] compresses what the caller [`write`](Deflater::write)s and
//!   hands out the compressed bytes at each [`flush`](Deflater::flush), which
//!   ends with a sync flush (an empty stored block, `00 00 ff ff`), so the peer
//!   can decompress everything sent so far without waiting for more.
//! * [`Inflater`] takes compressed bytes with [`feed`](Inflater::feed) and
//!   gives decompressed bytes back with [`pull`](Inflater::pull), at most
//!   [`InflateOptions::output_chunk_bytes_max`] per call. A few bytes of a
//!   decompression bomb therefore never become one huge allocation: the
//!   caller pulls chunk after chunk and applies its own limits in between.
//!
//! This module never reads or writes a socket, and it never holds more of a
//! peer's compressed input than [`InflateOptions::input_buffer_bytes_max`].
//! It does not negotiate COMPRESS (that is the protocol's business): it only
//! transforms bytes once both sides have agreed.

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What went wrong inside the compression layer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompressError {
    /// The peer sent bytes that are not a valid raw deflate stream.
    #[error("corrupt deflate stream from peer: {0}")]
    Corrupt(String),
    /// The peer kept sending after the final deflate block.
    #[error("peer sent {0} bytes after the end of its deflate stream")]
    TrailingData(usize),
    /// The caller fed more compressed input than it pulled out, beyond the
    /// configured buffer limit (our caller's misuse or a peer outrunning us).
    #[error("compressed input buffer over its limit of {limit} bytes")]
    InputBufferFull {
        /// [`InflateOptions::input_buffer_bytes_max`].
        limit: usize,
    },
    /// The compressor failed; this is a bug in the deflate library, never
    /// the peer's fault.
    #[error("deflate failed: {0}")]
    Deflate(String),
}

/// Compressing half: our outgoing bytes.
pub struct Deflater {
    inner: Compress,
    /// Compressed output not yet handed out by [`Deflater::flush`].
    out: Vec<u8>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("total_in", &self.inner.total_in())
            .field("pending_out", &self.out.len())
            .finish()
    }
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    /// A raw deflate compressor at zlib's default level (6), which is what
    /// Cyrus and Dovecot use for COMPRESS.
    pub fn new() -> Self {
        Self::with_level(6)
    }

    /// A raw deflate compressor at `level` (0 = store only … 9 = best),
    /// clamped to 9.
    pub fn with_level(level: u32) -> Self {
        Self {
            inner: Compress::new(Compression::new(level.min(9)), false),
            out: Vec::new(),
        }
    }

    /// Compress `data`. Nothing is guaranteed to reach the output until the
    /// next [`flush`](Self::flush); the compressor may keep input back to
    /// find longer matches.
    pub fn write(&mut self, data: &[u8]) -> Result<(), CompressError> {
        self.run(data, FlushCompress::None)
    }

    /// Sync-flush: return every compressed byte produced since the last
    /// flush, ending on a byte boundary with an empty stored block, so the
    /// peer can decompress all that was written so far.
    pub fn flush(&mut self) -> Result<Bytes, CompressError> {
        self.run(&[], FlushCompress::Sync)?;
        Ok(Bytes::from(std::mem::take(&mut self.out)))
    }

    /// Total bytes given to [`write`](Self::write) so far.
    pub fn total_in(&self) -> u64 {
        self.inner.total_in()
    }

    fn run(&mut self, mut data: &[u8], flush: FlushCompress) -> Result<(), CompressError> {
        loop {
            // compress_vec only writes into spare capacity; keep some so a
            // sync flush (a few bytes) always fits.
            if self.out.capacity() - self.out.len() < 1024 {
                self.out.reserve(data.len() / 2 + 4096);
            }
            let before_in = self.inner.total_in();
            self.inner
                .compress_vec(data, &mut self.out, flush)
                .map_err(|e| CompressError::Deflate(e.to_string()))?;
            let used = (self.inner.total_in() - before_in) as usize;
            data = &data[used..];
            // deflate stops early only when the output is full; with all
            // input taken and room to spare, this write/flush is complete.
            if data.is_empty() && self.out.len() < self.out.capacity() {
                return Ok(());
            }
        }
    }
}

/// Limits for [`Inflater`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflateOptions {
    /// Largest decompressed chunk one [`Inflater::pull`] returns.
    pub output_chunk_bytes_max: usize,
    /// Most compressed bytes held between [`Inflater::feed`] and
    /// [`Inflater::pull`]; feeding beyond it is an error.
    pub input_buffer_bytes_max: usize,
}

impl Default for InflateOptions {
    fn default() -> Self {
        Self {
            output_chunk_bytes_max: 64 * 1024,
            input_buffer_bytes_max: 1024 * 1024,
        }
    }
}

/// Decompressing half: the peer's incoming bytes.
pub struct Inflater {
    inner: Decompress,
    options: InflateOptions,
    /// Compressed bytes fed but not yet consumed by the decompressor.
    input: BytesMut,
    /// Set once the final deflate block was decoded.
    finished: bool,
    /// The last pull filled its whole chunk, so the decompressor may hold
    /// more output even with no new input.
    output_pending: bool,
    /// A corrupt stream stays corrupt: every later call repeats the error.
    poisoned: Option<CompressError>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("total_out", &self.inner.total_out())
            .field("pending_in", &self.input.len())
            .field("finished", &self.finished)
            .finish()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new(InflateOptions::default())
    }
}

impl Inflater {
    /// A raw deflate decompressor with the given limits.
    pub fn new(options: InflateOptions) -> Self {
        assert!(
            options.output_chunk_bytes_max > 0,
            "output chunk limit must be positive"
        );
        Self {
            inner: Decompress::new(false),
            options,
            input: BytesMut::new(),
            finished: false,
            output_pending: false,
            poisoned: None,
        }
    }

    /// Hand over compressed bytes from the peer. Call [`pull`](Self::pull)
    /// until it returns `None` before feeding again.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), CompressError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        if self.finished && !data.is_empty() {
            return Err(self.poison(CompressError::TrailingData(data.len())));
        }
        if self.input.len() + data.len() > self.options.input_buffer_bytes_max {
            return Err(self.poison(CompressError::InputBufferFull {
                limit: self.options.input_buffer_bytes_max,
            }));
        }
        self.input.extend_from_slice(data);
        Ok(())
    }

    /// The next decompressed chunk (at most `output_chunk_bytes_max` bytes),
    /// or `None` when everything fed so far has been decompressed and more
    /// input is needed.
    pub fn pull(&mut self) -> Result<Option<Bytes>, CompressError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        if self.input.is_empty() && !self.output_pending {
            // nothing to do: spare the chunk allocation
            return Ok(None);
        }
        let mut out = vec![0u8; self.options.output_chunk_bytes_max];
        let mut filled = 0;
        while filled < out.len() {
            if self.finished {
                if !self.input.is_empty() {
                    let n = self.input.len();
                    return Err(self.poison(CompressError::TrailingData(n)));
                }
                break;
            }
            let before_in = self.inner.total_in();
            let before_out = self.inner.total_out();
            let status =
                self.inner
                    .decompress(&self.input, &mut out[filled..], FlushDecompress::None);
            let used = (self.inner.total_in() - before_in) as usize;
            let produced = (self.inner.total_out() - before_out) as usize;
            let _ = self.input.split_to(used);
            filled += produced;
            match status {
                Ok(Status::StreamEnd) => self.finished = true,
                Ok(Status::Ok) | Ok(Status::BufError) => {
                    if used == 0 && produced == 0 {
                        // No progress: all buffered input is consumed into
                        // the decompressor's state; wait for more.
                        break;
                    }
                }
                Err(e) => return Err(self.poison(CompressError::Corrupt(e.to_string()))),
            }
        }
        self.output_pending = filled == out.len();
        if filled == 0 {
            return Ok(None);
        }
        out.truncate(filled);
        Ok(Some(Bytes::from(out)))
    }

    /// Whether the peer ended its deflate stream with a final block
    /// (RFC 4978 peers never do; they sync-flush forever).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Total decompressed bytes handed out so far.
    pub fn total_out(&self) -> u64 {
        self.inner.total_out()
    }

    fn poison(&mut self, e: CompressError) -> CompressError {
        self.poisoned = Some(e.clone());
        e
    }
}
