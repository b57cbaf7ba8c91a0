//! Staging message bytes: chunks in, SHA-1 and size checked at the end.
//!
//! Every store uses [`StageHasher`] so the GUID check is written once: a
//! store keeps the chunks wherever it likes (memory, a temp file) and asks
//! the hasher whether the whole is what the peer announced.

use sha1::Digest;

use super::StoreError;
use crate::model::Guid;

/// A store's name for one staging in progress (store-assigned; the driver
/// maps the machine's [`StageId`](super::StageId) to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageHandle(pub u64);

/// Hashes a message while it streams in and checks it against the GUID and
/// size it was announced with.
#[derive(Clone)]
pub struct StageHasher {
    guid: Guid,
    size: u64,
    seen: u64,
    sha: sha1::Sha1,
}

impl StageHasher {
    /// Start checking a message announced as `guid`, `size` bytes. Refused
    /// with `LimitExceeded` if `size` is over `max_bytes`, so a store never
    /// starts to take in a message it will not keep.
    pub fn new(guid: Guid, size: u64, max_bytes: u64) -> Result<StageHasher, StoreError> {
        if size > max_bytes {
            return Err(StoreError::LimitExceeded {
                what: "message bytes",
                limit: max_bytes,
            });
        }
        Ok(StageHasher {
            guid,
            size,
            seen: 0,
            sha: sha1::Sha1::new(),
        })
    }

    /// The announced GUID.
    pub fn guid(&self) -> Guid {
        self.guid
    }

    /// The announced size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Take the next chunk; refused as soon as more than the announced size
    /// arrives.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let seen = self.seen + chunk.len() as u64;
        if seen > self.size {
            return Err(StoreError::SizeMismatch {
                guid: self.guid,
                expected: self.size,
                actual: seen,
            });
        }
        self.seen = seen;
        self.sha.update(chunk);
        Ok(())
    }

    /// Check the whole: exactly the announced size, SHA-1 equal to the GUID.
    pub fn finish(self) -> Result<(), StoreError> {
        if self.seen != self.size {
            return Err(StoreError::SizeMismatch {
                guid: self.guid,
                expected: self.size,
                actual: self.seen,
            });
        }
        let actual = Guid::from_bytes(self.sha.finalize().into());
        if actual != self.guid {
            return Err(StoreError::GuidMismatch {
                expected: self.guid,
                actual,
            });
        }
        Ok(())
    }
}
