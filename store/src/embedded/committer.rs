//! Group commit: one thread owns the [`Embedded`] store and applies the
//! store effects that many connections submit, committing every batch that
//! arrived while the previous commit was being made durable in one
//! transaction and one round of fsyncs.
//!
//! Each batch is still acknowledged alone and only after that commit: the
//! completion (and its [`DurableProof`](engine::store::DurableProof)) comes
//! from the engine's `commit_group`, which calls `sync` first. A batch that
//! is refused fails alone; a failed sync fails every batch of its group.
//!
//! Staging effects run at once on the submitting thread, against the
//! staging area the store shares: each connection receives and hashes its
//! messages on its own thread while the committer thread makes the
//! previous group durable (each connection's `StageId`s stay its own).
//! Only `Write` effects go through the queue.
//!
//! The queue is bounded ([`CommitterOptions::queue_max`]): `submit` blocks
//! when it is full, which pushes back on the connections that produce work
//! fastest. Nothing here decides protocol outcomes.

use super::staging::{Stage, StagingArea};
use super::{Embedded, Reader};
use engine::store::{commit_group, Completion, StageId, StoreEffect, StoreError, WriteBatch};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Mutex;
use std::thread::JoinHandle;

/// Called once with an effect's completion (only `StageEnd` and `Write`
/// effects have one), on the committer thread: keep it short (send it
/// somewhere).
pub type Done = Box<dyn FnOnce(Completion) + Send + 'static>;

/// Limits of a [`Committer`].
#[derive(Debug, Clone)]
pub struct CommitterOptions {
    /// Batches queued before `submit` blocks.
    pub queue_max: usize,
    /// Most batches committed in one group.
    pub group_batches_max: usize,
}

impl Default for CommitterOptions {
    fn default() -> Self {
        CommitterOptions {
            queue_max: 4096,
            group_batches_max: 1024,
        }
    }
}

struct Job {
    batch: WriteBatch,
    done: Done,
}

/// A store running on its own thread; see the module doc.
pub struct Committer {
    tx: Option<SyncSender<Job>>,
    reader: Reader,
    area: StagingArea,
    /// Stagings in progress: (connection, its StageId) → (announced size, stage).
    stages: Mutex<HashMap<(u64, StageId), (u64, Stage)>>,
    next_conn: AtomicU64,
    thread: Option<JoinHandle<Embedded>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "embedded::Committer({:?})", self.reader)
    }
}

/// A connection's name at the committer: its stagings are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

impl ConnId {
    /// The id as a number (unique among this committer's connections).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl Committer {
    /// Moves `store` onto a new thread.
    pub fn spawn(store: Embedded, options: CommitterOptions) -> Committer {
        let (tx, rx) = sync_channel(options.queue_max.max(1));
        let reader = store.reader();
        let area = store.staging_area();
        let thread = std::thread::Builder::new()
            .name("corvid-store-commit".into())
            .spawn(move || run(store, rx, options.group_batches_max.max(1)))
            .expect("spawning the committer thread");
        Committer {
            tx: Some(tx),
            reader,
            area,
            stages: Mutex::default(),
            next_conn: AtomicU64::new(0),
            thread: Some(thread),
        }
    }

    /// A read handle of the durable state.
    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }

    /// A fresh connection id.
    pub fn connection(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Performs or queues an effect of connection `conn`. `done` gets its
    /// completion if it has one (`StageEnd`, `Write`); for the others it is
    /// dropped uncalled. Staging effects run now, on this thread; a `Write`
    /// is queued (blocking while the queue is full) and `done` is called on
    /// the committer thread once it is durable or refused. If the committer
    /// has stopped, a `Write` fails at once.
    pub fn submit(
        &self,
        conn: ConnId,
        effect: StoreEffect,
        done: impl FnOnce(Completion) + Send + 'static,
    ) {
        match effect {
            StoreEffect::Write(batch) => {
                let job = Job {
                    batch,
                    done: Box::new(done),
                };
                let tx = self.tx.as_ref().expect("committer running");
                if let Err(std::sync::mpsc::SendError(job)) = tx.send(job) {
                    (job.done)(Completion::Failed {
                        batch_id: job.batch.id,
                        error: StoreError::Io("store committer stopped".into()),
                    });
                }
            }
            StoreEffect::StageBegin { stage, guid, size } => {
                // A refusal here is remembered and reported at StageEnd, so
                // a machine needs no completion per chunk.
                let s = match self.area.begin(guid, size) {
                    Ok(w) => Stage::Open(w),
                    Err(e) => Stage::Broken(e),
                };
                let old = self.lock().insert((conn.0, stage), (size, s));
                if let Some((size, old)) = old {
                    // An id reused without ending it: drop the old staging.
                    old.abort(&self.area, size);
                }
            }
            StoreEffect::StageChunk { stage, bytes } => {
                // Out of the map while writing: other connections go on.
                let taken = self.lock().remove(&(conn.0, stage));
                if let Some((size, mut s)) = taken {
                    let _ = s.chunk(&self.area, size, &bytes);
                    self.lock().insert((conn.0, stage), (size, s));
                }
            }
            StoreEffect::StageEnd { stage } => {
                let taken = self.lock().remove(&(conn.0, stage));
                let result = match taken {
                    Some((size, s)) => s.end(&self.area, size),
                    None => Err(StoreError::Io(format!("no staging {stage:?} in progress"))),
                };
                done(Completion::Staged { stage, result });
            }
            StoreEffect::StageAbort { stage } => {
                if let Some((size, s)) = self.lock().remove(&(conn.0, stage)) {
                    s.abort(&self.area, size);
                }
            }
            other => {
                tracing::warn!(?other, "store effect unknown to the committer; dropped");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, StageId), (u64, Stage)>> {
        self.stages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection is gone: abort its stagings in progress.
    pub fn close(&self, conn: ConnId) {
        let mut stages = self.lock();
        let mine: Vec<(u64, StageId)> = stages.keys().filter(|k| k.0 == conn.0).copied().collect();
        for k in mine {
            if let Some((size, s)) = stages.remove(&k) {
                s.abort(&self.area, size);
            }
        }
    }

    /// Lets queued effects finish, stops the thread and returns the store.
    pub fn shutdown(mut self) -> Embedded {
        drop(self.tx.take());
        self.thread
            .take()
            .expect("committer running")
            .join()
            .expect("committer thread panicked")
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(mut store: Embedded, rx: Receiver<Job>, group_max: usize) -> Embedded {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < group_max {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        let (batches, dones): (Vec<WriteBatch>, Vec<Done>) =
            jobs.into_iter().map(|j| (j.batch, j.done)).unzip();
        let completions = commit_group(&mut store, &batches);
        debug_assert_eq!(completions.len(), dones.len());
        for (c, done) in completions.into_iter().zip(dones) {
            done(c);
        }
    }
    store
}
