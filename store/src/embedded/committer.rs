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
//! Staging effects run in submission order before the group's writes, on
//! the same thread, through one `EffectRunner` per connection (so each
//! connection's `StageId`s stay its own).
//!
//! The queue is bounded ([`CommitterOptions::queue_max`]): `submit` blocks
//! when it is full, which pushes back on the connections that produce work
//! fastest. Nothing here decides protocol outcomes.

use super::{Embedded, Reader};
use engine::store::{commit_group, Completion, EffectRunner, StoreEffect, WriteBatch};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

/// Called once with an effect's completion (only `StageEnd` and `Write`
/// effects have one), on the committer thread: keep it short (send it
/// somewhere).
pub type Done = Box<dyn FnOnce(Completion) + Send + 'static>;

/// Limits of a [`Committer`].
#[derive(Debug, Clone)]
pub struct CommitterOptions {
    /// Effects queued before `submit` blocks.
    pub queue_max: usize,
    /// Most effects taken into one group.
    pub group_effects_max: usize,
}

impl Default for CommitterOptions {
    fn default() -> Self {
        CommitterOptions {
            queue_max: 4096,
            group_effects_max: 1024,
        }
    }
}

enum Job {
    Effect {
        conn: u64,
        effect: StoreEffect,
        done: Option<Done>,
    },
    Close {
        conn: u64,
    },
}

/// A store running on its own thread; see the module doc.
pub struct Committer {
    tx: Option<SyncSender<Job>>,
    reader: Reader,
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

impl Committer {
    /// Moves `store` onto a new thread.
    pub fn spawn(store: Embedded, options: CommitterOptions) -> Committer {
        let (tx, rx) = sync_channel(options.queue_max.max(1));
        let reader = store.reader();
        let thread = std::thread::Builder::new()
            .name("corvid-store-commit".into())
            .spawn(move || run(store, rx, options.group_effects_max.max(1)))
            .expect("spawning the committer thread");
        Committer {
            tx: Some(tx),
            reader,
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

    /// Queues an effect of connection `conn`. `done` gets its completion
    /// if it has one (`StageEnd`, `Write`); for the others it is dropped
    /// uncalled. Blocks while the queue is full. If the committer has
    /// stopped, `done` gets a `Failed`/`Staged` error completion at once.
    pub fn submit(
        &self,
        conn: ConnId,
        effect: StoreEffect,
        done: impl FnOnce(Completion) + Send + 'static,
    ) {
        let job = Job::Effect {
            conn: conn.0,
            effect,
            done: Some(Box::new(done)),
        };
        if let Err(std::sync::mpsc::SendError(job)) =
            self.tx.as_ref().expect("committer running").send(job)
        {
            if let Job::Effect {
                effect,
                done: Some(done),
                ..
            } = job
            {
                fail_stopped(effect, done);
            }
        }
    }

    /// The connection is gone: abort its stagings in progress.
    pub fn close(&self, conn: ConnId) {
        let _ = self
            .tx
            .as_ref()
            .expect("committer running")
            .send(Job::Close { conn: conn.0 });
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

fn fail_stopped(effect: StoreEffect, done: Done) {
    let error = engine::store::StoreError::Io("store committer stopped".into());
    match effect {
        StoreEffect::Write(b) => done(Completion::Failed {
            batch_id: b.id,
            error,
        }),
        StoreEffect::StageEnd { stage } => done(Completion::Staged {
            stage,
            result: Err(error),
        }),
        _ => {}
    }
}

fn run(mut store: Embedded, rx: Receiver<Job>, group_max: usize) -> Embedded {
    let mut runners: HashMap<u64, EffectRunner> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < group_max {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        let mut batches: Vec<WriteBatch> = Vec::new();
        let mut dones: Vec<Option<Done>> = Vec::new();
        for job in jobs {
            match job {
                Job::Effect {
                    effect: StoreEffect::Write(b),
                    done,
                    ..
                } => {
                    batches.push(b);
                    dones.push(done);
                }
                Job::Effect { conn, effect, done } => {
                    let runner = runners.entry(conn).or_default();
                    if let Some(c) = runner.run(&mut store, effect) {
                        if let Some(done) = done {
                            done(c);
                        }
                    }
                }
                Job::Close { conn } => {
                    if let Some(mut r) = runners.remove(&conn) {
                        r.abort_all(&mut store);
                    }
                }
            }
        }
        if !batches.is_empty() {
            let completions = commit_group(&mut store, &batches);
            debug_assert_eq!(completions.len(), dones.len());
            for (c, done) in completions.into_iter().zip(dones) {
                if let Some(done) = done {
                    done(c);
                }
            }
        }
    }
    store
}
