//! The staging area: verified message bytes waiting for a batch to link
//! them, shared by the store's owner and by every connection of a
//! [`Committer`](super::Committer), so connections receive and hash their
//! messages on their own threads while the committer makes the previous
//! group durable.
//!
//! The lock is held only to account and to look up: never across file I/O
//! (a writer is taken out of the area while a chunk is written). Limits:
//! how many stagings (open or finished) and how many announced bytes at
//! once. Staged bytes are not durable; a crash drops them (their temporary
//! files are removed at the next open).

use super::blobs::{MessageWriter, Partitions, StagedMessage};
use engine::model::Guid;
use engine::store::StoreError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Inner {
    finished: HashMap<Guid, StagedMessage>,
    open: usize,
    bytes: u64,
}

/// Shared staging area; cheap to clone.
#[derive(Clone)]
pub(crate) struct StagingArea {
    inner: Arc<Mutex<Inner>>,
    partitions: Partitions,
    partition: String,
    message_bytes_max: u64,
    messages_max: usize,
    bytes_max: u64,
    sync_at_end: bool,
}

impl StagingArea {
    pub(crate) fn new(
        partitions: Partitions,
        partition: String,
        message_bytes_max: u64,
        messages_max: usize,
        bytes_max: u64,
        sync_at_end: bool,
    ) -> StagingArea {
        StagingArea {
            inner: Arc::default(),
            partitions,
            partition,
            message_bytes_max,
            messages_max,
            bytes_max,
            sync_at_end,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a staging of `size` bytes announced as `guid`, within limits.
    pub(crate) fn begin(&self, guid: Guid, size: u64) -> Result<MessageWriter, StoreError> {
        if size > self.message_bytes_max {
            return Err(StoreError::LimitExceeded {
                what: "message bytes",
                limit: self.message_bytes_max,
            });
        }
        {
            let mut g = self.lock();
            if g.open + g.finished.len() >= self.messages_max {
                return Err(StoreError::LimitExceeded {
                    what: "staged messages",
                    limit: self.messages_max as u64,
                });
            }
            if g.bytes + size > self.bytes_max {
                return Err(StoreError::LimitExceeded {
                    what: "staged bytes",
                    limit: self.bytes_max,
                });
            }
            g.open += 1;
            g.bytes += size;
        }
        match self.partitions.writer(&self.partition, guid, size) {
            Ok(w) => Ok(w),
            Err(e) => {
                self.abort(size);
                Err(e.into())
            }
        }
    }

    /// Ends a staging: verifies it and, if good, keeps it for linking.
    pub(crate) fn end(&self, w: MessageWriter, size: u64) -> Result<(), StoreError> {
        let mut finished = w.finish();
        if self.sync_at_end {
            // On the staging connection's thread, outside the lock: many
            // connections fsync at once while the committer commits.
            if let Ok(m) = &mut finished {
                if let Err(e) = m.sync_now() {
                    finished = Err(e);
                }
            }
        }
        let mut g = self.lock();
        g.open -= 1;
        match finished {
            Ok(m) => {
                if let Some(old) = g.finished.insert(m.guid, m) {
                    // Same GUID staged twice: same bytes, keep one.
                    g.bytes -= old.size;
                }
                Ok(())
            }
            Err(e) => {
                g.bytes -= size;
                Err(e)
            }
        }
    }

    /// A staging that ended without `end` (failed chunk, abort).
    pub(crate) fn abort(&self, size: u64) {
        let mut g = self.lock();
        g.open -= 1;
        g.bytes -= size;
    }

    /// (size, partition) of finished bytes staged under `guid`.
    pub(crate) fn lookup(&self, guid: &Guid) -> Option<(u64, String)> {
        self.lock()
            .finished
            .get(guid)
            .map(|m| (m.size, m.partition.clone()))
    }

    /// Takes the finished stagings of `guids` out (to be made durable).
    pub(crate) fn take(&self, guids: &[Guid]) -> Vec<StagedMessage> {
        let mut g = self.lock();
        let mut out = Vec::with_capacity(guids.len());
        for guid in guids {
            if let Some(m) = g.finished.remove(guid) {
                g.bytes -= m.size;
                out.push(m);
            }
        }
        out
    }

    /// Adds an already verified staged message (inline bytes of a batch).
    pub(crate) fn put(&self, m: StagedMessage) {
        let mut g = self.lock();
        g.bytes += m.size;
        if let Some(old) = g.finished.insert(m.guid, m) {
            g.bytes -= old.size;
        }
    }

    /// Removes a staged message again (its batch was refused).
    pub(crate) fn remove(&self, guid: &Guid) {
        let mut g = self.lock();
        if let Some(m) = g.finished.remove(guid) {
            g.bytes -= m.size;
        }
    }

    /// Writes inline bytes as a staged file in `partition` (not yet in the area).
    pub(crate) fn stage_bytes(
        &self,
        partition: &str,
        guid: Guid,
        bytes: &[u8],
    ) -> Result<StagedMessage, StoreError> {
        self.partitions.stage_bytes(partition, guid, bytes)
    }

    /// Moves the finished staging of `guid` (if still here and elsewhere)
    /// into `partition`. Bytes are staged in the default partition because
    /// an upload does not say which mailbox it is for; the batch that
    /// links it does.
    pub(crate) fn relocate(&self, guid: &Guid, partition: &str) -> Result<(), StoreError> {
        let Some(mut m) = self.lock().finished.remove(guid) else {
            return Ok(());
        };
        // Outside the lock: a copy across filesystems may take a while.
        let moved = if m.partition == partition {
            Ok(())
        } else {
            m.move_to(&self.partitions, partition)
        };
        self.lock().finished.insert(*guid, m);
        moved
    }
}

/// One staging in progress, as a connection holds it.
pub(crate) enum Stage {
    /// Receiving.
    Open(MessageWriter),
    /// A chunk failed; reported at the end.
    Broken(StoreError),
}

impl Stage {
    /// Appends a chunk; a failure turns the stage broken (and is returned).
    pub(crate) fn chunk(
        &mut self,
        area: &StagingArea,
        size: u64,
        chunk: &[u8],
    ) -> Result<(), StoreError> {
        if let Stage::Open(w) = self {
            if let Err(e) = w.write(chunk) {
                *self = Stage::Broken(e.clone());
                area.abort(size);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Ends the staging.
    pub(crate) fn end(self, area: &StagingArea, size: u64) -> Result<(), StoreError> {
        match self {
            Stage::Open(w) => area.end(w, size),
            Stage::Broken(e) => Err(e),
        }
    }

    /// Abandons the staging.
    pub(crate) fn abort(self, area: &StagingArea, size: u64) {
        if let Stage::Open(_) = self {
            area.abort(size);
        }
    }
}
