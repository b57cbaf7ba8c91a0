//! Store effects, their completions, and the durability proof.
//!
//! [`DurableProof`] has a private constructor. Two paths create one:
//! [`commit`]/[`commit_group`]/[`EffectRunner`] (engine functions that
//! call [`StoreWrite::write`] then [`StoreWrite::sync`] and only on
//! success wrap the batch id), and `MemStore`'s own durability step. A
//! store in another crate therefore never builds a proof: it implements
//! `StoreWrite` and lets these functions attest for it. Machines hold only
//! a [`MailRead`](super::MailRead) handle, never a `StoreWrite`, so they
//! cannot reach these paths; they receive proofs in completions and pass
//! them to the functions that build "stored" replies.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

use super::{BatchId, StageHandle, StoreError, StoreWrite, WriteBatch};
use crate::model::Guid;

/// Evidence that batch [`DurableProof::batch_id`] is durable.
///
/// Not `Clone`: one proof per completion. Build protocol "stored" replies
/// from it (by reference), after checking the id is the batch you meant.
pub struct DurableProof {
    batch: BatchId,
}

impl DurableProof {
    /// Only the completion paths of this crate create proofs.
    pub(crate) fn attest(batch: BatchId) -> DurableProof {
        DurableProof { batch }
    }

    /// The batch this proves durable.
    pub fn batch_id(&self) -> BatchId {
        self.batch
    }
}

impl fmt::Debug for DurableProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableProof({:?})", self.batch)
    }
}

impl PartialEq for DurableProof {
    fn eq(&self, other: &DurableProof) -> bool {
        self.batch == other.batch
    }
}

/// A machine's name for one message staging (machine-chosen, like its
/// effect ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageId(pub u64);

/// A store side effect a machine emits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreEffect {
    /// Start staging `size` bytes announced as `guid`.
    StageBegin {
        /// The machine's name for this staging.
        stage: StageId,
        /// The announced GUID.
        guid: Guid,
        /// The announced size.
        size: u64,
    },
    /// The next chunk of a staging.
    StageChunk {
        /// Which staging.
        stage: StageId,
        /// The bytes.
        bytes: Bytes,
    },
    /// The last chunk has been sent: verify. Completes with
    /// [`Completion::Staged`].
    StageEnd {
        /// Which staging.
        stage: StageId,
    },
    /// Abandon a staging (connection reset, peer error). No completion.
    StageAbort {
        /// Which staging.
        stage: StageId,
    },
    /// Apply a batch and make it durable. Completes with
    /// [`Completion::Durable`] or [`Completion::Failed`].
    Write(WriteBatch),
}

/// What comes back to the machine for a store effect.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum Completion {
    /// The staging was verified (`Ok`) or refused (`Err`: size, GUID,
    /// limit or I/O).
    Staged {
        /// Which staging.
        stage: StageId,
        /// The outcome.
        result: Result<(), StoreError>,
    },
    /// The batch is durable.
    Durable {
        /// Which batch.
        batch_id: BatchId,
        /// The proof.
        proof: DurableProof,
    },
    /// The batch was refused or could not be made durable; nothing of it
    /// is in the store.
    Failed {
        /// Which batch.
        batch_id: BatchId,
        /// Why.
        error: StoreError,
    },
}

impl Completion {
    /// The batch this completes (`None` for a staging).
    pub fn batch_id(&self) -> Option<BatchId> {
        match self {
            Completion::Durable { batch_id, .. } | Completion::Failed { batch_id, .. } => {
                Some(*batch_id)
            }
            Completion::Staged { .. } => None,
        }
    }

    /// For machines: the proof if this is `Durable` for `expected`, the
    /// store's error if it `Failed`. A completion for another batch, or a
    /// staging, is handed back unchanged in `Err(Err(..))` — a machine
    /// that gets one has mixed up its ids.
    pub fn into_proof(
        self,
        expected: BatchId,
    ) -> Result<DurableProof, Result<StoreError, Completion>> {
        match self {
            Completion::Durable { batch_id, proof } if batch_id == expected => Ok(proof),
            Completion::Failed { batch_id, error } if batch_id == expected => Err(Ok(error)),
            other => Err(Err(other)),
        }
    }
}

/// For drivers: write one batch and sync, returning its completion.
pub fn commit<S: StoreWrite + ?Sized>(store: &mut S, batch: &WriteBatch) -> Completion {
    let r = store.write(batch).and_then(|()| store.sync());
    match r {
        Ok(()) => Completion::Durable {
            batch_id: batch.id,
            proof: DurableProof::attest(batch.id),
        },
        Err(error) => Completion::Failed {
            batch_id: batch.id,
            error,
        },
    }
}

/// For drivers: write several batches and sync once (group commit). A
/// batch refused by `write` fails alone; if the sync fails, every batch
/// written fails with its error. Completions come back in batch order.
pub fn commit_group<S: StoreWrite + ?Sized>(
    store: &mut S,
    batches: &[WriteBatch],
) -> Vec<Completion> {
    let mut written = Vec::new();
    let mut out: Vec<Option<Completion>> = Vec::with_capacity(batches.len());
    for (i, b) in batches.iter().enumerate() {
        match store.write(b) {
            Ok(()) => {
                written.push(i);
                out.push(None);
            }
            Err(error) => out.push(Some(Completion::Failed {
                batch_id: b.id,
                error,
            })),
        }
    }
    if !written.is_empty() {
        let synced = store.sync();
        for i in written {
            let id = batches[i].id;
            out[i] = Some(match &synced {
                Ok(()) => Completion::Durable {
                    batch_id: id,
                    proof: DurableProof::attest(id),
                },
                Err(e) => Completion::Failed {
                    batch_id: id,
                    error: e.clone(),
                },
            });
        }
    }
    out.into_iter().flatten().collect()
}

enum StageSlot {
    Open(StageHandle),
    Broken(StoreError),
}

/// For drivers: performs one connection's [`StoreEffect`]s against a store,
/// keeping the map from the machine's [`StageId`]s to the store's
/// [`StageHandle`]s. One runner per machine; effects in emission order.
#[derive(Default)]
pub struct EffectRunner {
    stages: BTreeMap<StageId, StageSlot>,
}

impl EffectRunner {
    /// A runner with no staging in progress.
    pub fn new() -> EffectRunner {
        EffectRunner::default()
    }

    /// Perform one effect; `Some` when it completes now (`StageEnd` and
    /// `Write` always do). A failing chunk is remembered and reported at
    /// `StageEnd`, so a machine needs no completion per chunk.
    pub fn run<S: StoreWrite + ?Sized>(
        &mut self,
        store: &mut S,
        effect: StoreEffect,
    ) -> Option<Completion> {
        match effect {
            StoreEffect::StageBegin { stage, guid, size } => {
                let slot = match store.stage_begin(guid, size) {
                    Ok(h) => StageSlot::Open(h),
                    Err(e) => StageSlot::Broken(e),
                };
                if let Some(StageSlot::Open(old)) = self.stages.insert(stage, slot) {
                    // The machine reused an id without ending it: drop the
                    // old staging rather than leak it.
                    store.stage_abort(old);
                }
                None
            }
            StoreEffect::StageChunk { stage, bytes } => {
                if let Some(StageSlot::Open(h)) = self.stages.get(&stage) {
                    let h = *h;
                    if let Err(e) = store.stage_chunk(h, &bytes) {
                        store.stage_abort(h);
                        self.stages.insert(stage, StageSlot::Broken(e));
                    }
                }
                None
            }
            StoreEffect::StageEnd { stage } => {
                let result = match self.stages.remove(&stage) {
                    Some(StageSlot::Open(h)) => store.stage_end(h),
                    Some(StageSlot::Broken(e)) => Err(e),
                    None => Err(StoreError::UnknownStage(StageHandle(u64::MAX))),
                };
                Some(Completion::Staged { stage, result })
            }
            StoreEffect::StageAbort { stage } => {
                if let Some(StageSlot::Open(h)) = self.stages.remove(&stage) {
                    store.stage_abort(h);
                }
                None
            }
            StoreEffect::Write(batch) => Some(commit(store, &batch)),
        }
    }

    /// Abort every staging in progress (connection closed).
    pub fn abort_all<S: StoreWrite + ?Sized>(&mut self, store: &mut S) {
        for (_, slot) in std::mem::take(&mut self.stages) {
            if let StageSlot::Open(h) = slot {
                store.stage_abort(h);
            }
        }
    }
}
