//! dsync in the tier-1 world: two or three replicas of one user, every one
//! taking user edits, synced two-way by pairs of `engine::dsync::Brain`s
//! (master on one node, slave on the other) over cut-able connections.
//!
//! ```text
//!   edits ─▶ n0 ◀══ Brain(master) ═ Conn ═ Brain(slave) ══▶ n1 ◀─ edits
//!                ╲                                       ╱
//!                 ╚══════════════ n2 ◀─ edits ══════════╝   (3 replicas)
//! ```
//!
//! One session runs at a time (as doveadm locks the user), between a
//! seeded pair, stateless (full) or with the `-s` state the previous
//! session of that ordered pair returned. Edits: appends, flag changes,
//! expunges, creates, renames, deletes and subscriptions on every node;
//! each acknowledged when durable. Faults: cuts, partitions (no sessions),
//! node crashes (pending writes lost), slow and failing fsyncs. The INBOX
//! exists on node 0 only, or (seeded) was created independently on every
//! node: the "two INBOXes" case corvid merges (engine::dsync rule 2).
//!
//! Checked after every durable change: [`crate::check::NodeChecker`]. At
//! the end, after healing: full syncs around the ring until every node
//! shows the user the same thing ([`crate::check::user_view`]) and a
//! round changes nothing; every acknowledged append is present on every
//! node (unless an expunge of it, or a delete of its mailbox, was ever
//! attempted — rule 3 may still rescue it, which is allowed); nothing
//! present that nobody wrote (GUIDs, keywords).
//!
//! Fixed in session 3 (engine::dsync rule 5): with three replicas a
//! message held at different UIDs on different nodes was moved "above both
//! UIDNEXTs" by every pairwise session, so around a ring it was renumbered
//! for ever (seed 13 of `dsync_three_replicas`, now a regression test).
//! Every range runs strictly; [`Config::tolerate_uid_chase`] is kept for
//! experiments with other merge rules.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use engine::dsync::{Brain, Event, Options, Role, SyncState};
use engine::machine::Time;
use engine::model::{
    Guid, Keyword, Mailbox, MailboxGuid, MailboxName, ModSeq, Partition, Record, Subscription,
    SystemFlags, Uid, UidValidity, UniqueId, UnixTime, UserId,
};
use engine::store::{
    BatchId, Completion as StoreCompletion, MailRead, Mutation, StoreEffect, UidRange, WriteBatch,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::check::{diff, user_view, NodeChecker};
use crate::world::{Conn, Disk, DiskOptions, NetOptions, Owner, SimMachine, Stepped, Store};
use crate::{Coverage, Trace};

const EPOCH_UNIX: i64 = 1_700_000_000;

impl SimMachine for Brain<Store> {
    fn store_effect(effect: StoreEffect) -> Result<StoreEffect, StoreCompletion> {
        Ok(effect)
    }
    fn store_completion(r: Option<StoreCompletion>) -> Option<StoreCompletion> {
        r
    }
}

/// The knobs of one dsync world, chosen by the seed.
#[derive(Debug, Clone)]
pub struct Config {
    /// Replicas (2 or 3).
    pub nodes: usize,
    /// Every node created its own INBOX before the first sync.
    pub independent_inboxes: bool,
    /// Sessions use the previous `-s` state of their ordered pair.
    pub stateful: bool,
    /// User edits in total.
    pub ops: usize,
    /// Longest pause between edits.
    pub think_ms_max: u64,
    /// Longest pause between sessions.
    pub sync_every_ms_max: u64,
    /// Network.
    pub net: NetOptions,
    /// Disks.
    pub disk: DiskOptions,
    /// Chance of a fault after an edit.
    pub fault_chance: f64,
    /// Serialize the writers of the user on one node (a per-user lock):
    /// no edit while a session on the node runs, no session while the
    /// node has writes pending. Off, the simulator finds lost updates
    /// (see `regression_seed_7_lost_update` in tests/world_dsync.rs).
    pub user_lock: bool,
    /// Tolerate a three-replica UID chase (module doc; none is known
    /// since session 3): when the nodes still differ after the healed
    /// rounds only in the UIDs of messages every node holds, count it
    /// instead of failing.
    pub tolerate_uid_chase: bool,
}

impl Config {
    /// Swarm testing: each seed its own world.
    pub fn from_seed(seed: u64, nodes: usize) -> Config {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6473_796e_6321);
        Config {
            nodes,
            independent_inboxes: rng.gen_bool(0.3),
            stateful: rng.gen_bool(0.5),
            ops: rng.gen_range(6..=30),
            think_ms_max: rng.gen_range(1..=3000),
            sync_every_ms_max: rng.gen_range(1..=3000),
            net: NetOptions {
                latency_max: Duration::from_micros(rng.gen_range(0..=20_000)),
                chunk_bytes_max: [5usize, 97, 1024, 65536][rng.gen_range(0..4)],
            },
            disk: DiskOptions {
                fsync_delay_max: Duration::from_micros(rng.gen_range(0..=30_000)),
                fsync_fail_chance: [0.0, 0.0, 0.02, 0.1][rng.gen_range(0..4)],
            },
            fault_chance: [0.0, 0.05, 0.15, 0.3][rng.gen_range(0..4)],
            user_lock: true,
            tolerate_uid_chase: false,
        }
    }
}

type Session = Conn<Brain<Store>, Brain<Store>>;

struct World {
    seed: u64,
    cfg: Config,
    rng: ChaCha8Rng,
    now: Time,
    disks: Vec<Disk>,
    up: Vec<bool>,
    down_until: Vec<Time>,
    partitioned_until: Time,
    session: Option<(Session, usize, usize)>,
    states: BTreeMap<(usize, usize), SyncState>,
    next_conn: u64,
    next_sync: Time,
    next_op: Time,
    ops_done: usize,
    op_pending: BTreeMap<u64, (usize, Option<(MailboxGuid, Guid)>)>,
    acked_appends: Vec<(usize, MailboxGuid, Guid)>,
    generated: BTreeMap<Guid, Bytes>,
    expunges_tried: BTreeSet<Guid>,
    deletes_tried: BTreeSet<MailboxGuid>,
    deleted_guids: BTreeSet<Guid>,
    /// Where and when each message was appended.
    append_names: BTreeMap<Guid, (MailboxName, Time)>,
    /// Deletes attempted: name and time.
    deleted_names: Vec<(MailboxName, Time)>,
    keywords_tried: BTreeSet<(Guid, Vec<u8>)>,
    checkers: Vec<NodeChecker>,
    checked_changes: Vec<u64>,
    /// Per node, per GUID: when its flags last changed there.
    flag_changed: Vec<BTreeMap<Guid, Time>>,
    /// When each unordered pair last finished a session.
    pair_synced: BTreeMap<(usize, usize), Time>,
    last_rename_ack: Option<Time>,
    renames: BTreeSet<u64>,
    /// A node with an acknowledged rename no successful session from it
    /// has carried yet, and when it was acknowledged.
    rename_unsynced: Option<(usize, Time)>,
    last_session_ok_started: Time,
    session_started: Time,
    last_outcome: Option<engine::dsync::Outcome>,
    trace: Trace,
    cov: Coverage,
    steps: u64,
}

fn user() -> UserId {
    UserId::new("alice").expect("valid")
}

fn unix(now: Time) -> UnixTime {
    UnixTime(EPOCH_UNIX + now.since_epoch().as_secs() as i64)
}

fn pair(i: usize, j: usize) -> (usize, usize) {
    (i.min(j), i.max(j))
}

impl World {
    fn new(seed: u64, cfg: Config) -> World {
        let n = cfg.nodes;
        let mut w = World {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Time::ZERO,
            disks: (0..n).map(|_| Disk::new(cfg.disk.clone())).collect(),
            up: vec![true; n],
            down_until: vec![Time::ZERO; n],
            partitioned_until: Time::ZERO,
            session: None,
            states: BTreeMap::new(),
            next_conn: 1,
            next_sync: Time::ZERO,
            next_op: Time::ZERO,
            ops_done: 0,
            op_pending: BTreeMap::new(),
            acked_appends: Vec::new(),
            generated: BTreeMap::new(),
            expunges_tried: BTreeSet::new(),
            deletes_tried: BTreeSet::new(),
            deleted_guids: BTreeSet::new(),
            append_names: BTreeMap::new(),
            deleted_names: Vec::new(),
            keywords_tried: BTreeSet::new(),
            checkers: (0..n).map(|_| NodeChecker::default()).collect(),
            checked_changes: vec![0; n],
            flag_changed: vec![BTreeMap::new(); n],
            pair_synced: BTreeMap::new(),
            last_rename_ack: None,
            renames: BTreeSet::new(),
            rename_unsynced: None,
            last_session_ok_started: Time::ZERO,
            session_started: Time::ZERO,
            last_outcome: None,
            trace: Trace::default(),
            cov: Coverage::default(),
            steps: 0,
            cfg,
        };
        let inboxes = if w.cfg.independent_inboxes { n } else { 1 };
        for node in 0..inboxes {
            let mb = w.new_mailbox("INBOX");
            let b = WriteBatch {
                id: BatchId(0),
                mutations: vec![Mutation::PutMailbox(mb)],
            };
            let mut s = w.disks[node].store.borrow_mut();
            s.apply(&b).expect("empty store");
            s.sync_all();
        }
        w
    }

    fn log(&mut self, line: impl Into<String>) {
        self.trace.record(self.now.since_epoch(), line);
    }

    fn new_mailbox(&mut self, name: &str) -> Mailbox {
        let mut g = [0u8; 16];
        self.rng.fill(&mut g[..]);
        let guid = MailboxGuid::from_bytes(g);
        Mailbox::new(
            UniqueId::from_mailbox_guid(&guid),
            guid,
            MailboxName::new(name).expect("valid"),
            Some(user()),
            UidValidity::new(self.rng.gen_range(1..u32::MAX)).expect("nonzero"),
            Partition::new("default").expect("valid"),
            unix(self.now),
        )
    }

    fn user_edit(&mut self, p: usize) {
        if !self.up[p] {
            return;
        }
        let locked = self
            .session
            .as_ref()
            .is_some_and(|(_, i, j)| *i == p || *j == p);
        if self.cfg.user_lock && locked {
            // The user's lock is held by a session: the edit is refused
            // (a client would retry); nothing is promised.
            self.cov.hit("edit refused: user locked");
            return;
        }
        let op = self.ops_done as u64;
        let at = unix(self.now);
        let store = self.disks[p].store.clone();
        let (mailboxes, records) = {
            let s = store.borrow();
            let v = s.with_pending();
            let mbs = v.mailboxes_of_user(&user()).expect("reads");
            let mut recs = BTreeMap::new();
            for mb in &mbs {
                let r = v
                    .records(&mb.uniqueid, UidRange::ALL, usize::MAX)
                    .expect("reads");
                recs.insert(mb.uniqueid.clone(), r);
            }
            (mbs, recs)
        };
        let roll = self.rng.gen_range(0..100);
        let mut muts = Vec::new();
        let mut append = None;
        let what;
        if mailboxes.is_empty() || (roll >= 80 && roll < 88 && mailboxes.len() < 5) {
            let name = ["Work", "Lists", "Archive", "Archive/2024"][self.rng.gen_range(0..4)];
            let name = if mailboxes.is_empty() { "INBOX" } else { name };
            if mailboxes
                .iter()
                .any(|m| m.name.as_bytes() == name.as_bytes())
            {
                return;
            }
            let mb = self.new_mailbox(name);
            what = format!("create {name}");
            muts.push(Mutation::PutMailbox(mb));
            muts.push(Mutation::SetSubscription {
                user: user(),
                name: MailboxName::new(name).expect("valid"),
                subscription: Subscription {
                    subscribed: true,
                    changed_at: at,
                },
            });
        } else {
            let mut mb = mailboxes[self.rng.gen_range(0..mailboxes.len())].clone();
            let live: Vec<Record> = records[&mb.uniqueid]
                .iter()
                .filter(|r| !r.expunged)
                .cloned()
                .collect();
            if roll < 45 || live.is_empty() && roll < 80 {
                let pad = self.rng.gen_range(0..400);
                let bytes = Bytes::from(format!(
                    "From: a@example.com\r\nMessage-ID: <s{}-o{op}@sim>\r\nSubject: op {op}\r\n\r\n{}\r\n.dot line\r\n",
                    self.seed,
                    "q".repeat(pad)
                ));
                let guid = Guid::of(&bytes);
                self.generated.insert(guid, bytes.clone());
                mb.last_uid += 1;
                mb.highestmodseq = ModSeq(mb.highestmodseq.get() + 1);
                let mut r = Record::new(
                    Uid::new(mb.last_uid).expect("nonzero"),
                    mb.highestmodseq,
                    guid,
                    bytes.len() as u64,
                    at,
                );
                r.savedate = at;
                append = Some((mb.guid, guid));
                self.append_names.insert(guid, (mb.name.clone(), self.now));
                what = format!(
                    "append {} uid {} {}",
                    mb.name.to_lossy(),
                    mb.last_uid,
                    &guid.to_string()[..8]
                );
                muts.push(Mutation::PutMessage { guid, bytes });
                muts.push(Mutation::PutRecord {
                    mailbox: mb.uniqueid.clone(),
                    record: r,
                });
                muts.push(Mutation::PutMailbox(mb));
            } else if roll < 68 && !live.is_empty() {
                let mut r = live[self.rng.gen_range(0..live.len())].clone();
                mb.highestmodseq = ModSeq(mb.highestmodseq.get() + 1);
                r.modseq = mb.highestmodseq;
                let kw = ["work", "home", "$label1"][self.rng.gen_range(0..3)];
                let k = Keyword::new(kw).expect("valid");
                if !r.flags.remove_keyword(&k) {
                    r.flags.insert_keyword(k);
                    self.keywords_tried
                        .insert((r.guid, kw.as_bytes().to_ascii_lowercase()));
                }
                if self.rng.gen_bool(0.5) {
                    let f = SystemFlags::SEEN;
                    if r.flags.system.contains(f) {
                        r.flags.system.remove(f)
                    } else {
                        r.flags.system.insert(f)
                    }
                }
                self.flag_changed[p].insert(r.guid, self.now);
                what = format!("flag {} uid {}", mb.name.to_lossy(), r.uid.get());
                muts.push(Mutation::PutRecord {
                    mailbox: mb.uniqueid.clone(),
                    record: r,
                });
                muts.push(Mutation::PutMailbox(mb));
            } else if roll < 76 && !live.is_empty() {
                let mut r = live[self.rng.gen_range(0..live.len())].clone();
                mb.highestmodseq = ModSeq(mb.highestmodseq.get() + 1);
                r.modseq = mb.highestmodseq;
                r.expunged = true;
                self.expunges_tried.insert(r.guid);
                what = format!("expunge {} uid {}", mb.name.to_lossy(), r.uid.get());
                muts.push(Mutation::PutRecord {
                    mailbox: mb.uniqueid.clone(),
                    record: r,
                });
                muts.push(Mutation::PutMailbox(mb));
            } else if roll < 92 && mb.name.as_bytes() != b"INBOX" {
                let to = ["Projects", "Old", "Archive/old", "Work2"][self.rng.gen_range(0..4)];
                if mailboxes.iter().any(|m| m.name.as_bytes() == to.as_bytes()) {
                    return;
                }
                let to = MailboxName::new(to).expect("valid");
                what = format!("rename {} to {}", mb.name.to_lossy(), to.to_lossy());
                self.renames.insert(op);
                muts.push(Mutation::RenameMailbox {
                    uniqueid: mb.uniqueid.clone(),
                    new_name: to.clone(),
                    at,
                    modseq: mb.highestmodseq,
                });
                muts.push(Mutation::SetSubscription {
                    user: user(),
                    name: to,
                    subscription: Subscription {
                        subscribed: true,
                        changed_at: at,
                    },
                });
            } else if roll < 96 && mb.name.as_bytes() != b"INBOX" {
                self.deletes_tried.insert(mb.guid);
                // The messages the user saw in it go with it (rule 3
                // rescues only those the deleting node never saw); the
                // mailbox's GUID may have changed since an append (rule 2),
                // so the ledger goes by message.
                self.deleted_guids.extend(live.iter().map(|r| r.guid));
                self.deleted_names.push((mb.name.clone(), self.now));
                what = format!("delete {}", mb.name.to_lossy());
                muts.push(Mutation::DeleteMailbox {
                    uniqueid: mb.uniqueid.clone(),
                    at,
                    modseq: ModSeq(mb.highestmodseq.get() + 1),
                });
            } else {
                let subscribed = self.rng.gen_bool(0.5);
                what = format!("subscribe {} {subscribed}", mb.name.to_lossy());
                muts.push(Mutation::SetSubscription {
                    user: user(),
                    name: mb.name.clone(),
                    subscription: Subscription {
                        subscribed,
                        changed_at: at,
                    },
                });
            }
        }
        let batch = WriteBatch {
            id: BatchId(1 << 40 | op),
            mutations: muts,
        };
        let now = self.now;
        match self.disks[p].run(now, &mut self.rng, Owner::Op(op), StoreEffect::Write(batch)) {
            None => {
                self.op_pending.insert(op, (p, append));
                self.log(format!("op {op} n{p} {what}"));
            }
            Some(c) => self.log(format!("op {op} n{p} {what} refused: {c:?}")),
        }
    }

    fn fsync(&mut self, node: usize) {
        let (failed, done) = self.disks[node].fsync(&mut self.rng);
        if failed {
            self.cov.hit("fsync failure");
            self.log(format!("n{node} fsync FAILED ({} batches)", done.len()));
        }
        let at = self.now;
        for (owner, c) in done {
            match owner {
                Owner::Op(op) => {
                    if let Some((n, append)) = self.op_pending.remove(&op) {
                        if matches!(c, StoreCompletion::Durable { .. }) {
                            if let Some((m, g)) = append {
                                self.acked_appends.push((n, m, g));
                            }
                            if self.renames.remove(&op) {
                                self.last_rename_ack = Some(at);
                                self.rename_unsynced = Some((n, at));
                            }
                            self.log(format!("op {op} acked"));
                        } else {
                            self.log(format!("op {op} failed"));
                        }
                    }
                }
                Owner::Conn(conn, side, id) => {
                    if let Some((s, _, _)) = self.session.as_mut().filter(|s| s.0.id == conn) {
                        s.complete(at, side, id, c);
                    }
                }
            }
        }
    }

    fn cut_session(&mut self, why: &str) {
        if let Some((mut s, i, j)) = self.session.take() {
            if self.rename_unsynced.is_some() {
                self.cov.hit("partition during rename");
            }
            s.cut(&mut self.disks);
            self.log(format!("session {} n{i}<->n{j} CUT ({why})", s.id));
        }
    }

    fn crash(&mut self, node: usize) {
        let in_session = self
            .session
            .as_ref()
            .is_some_and(|(_, i, j)| *i == node || *j == node);
        if in_session && self.disks[node].has_pending() {
            self.cov.hit("crash mid-apply");
        }
        if in_session {
            self.cut_session("node crash");
        }
        let lost = self.disks[node].crash();
        self.op_pending.retain(|_, (n, _)| *n != node);
        let ms = self.rng.gen_range(1..3000);
        self.up[node] = false;
        self.down_until[node] = self.now + Duration::from_millis(ms);
        self.cov.hit("crash");
        self.log(format!("n{node} CRASH lost {lost} batches, down {ms} ms"));
    }

    fn fault(&mut self) {
        let roll = self.rng.gen_range(0..100);
        if roll < 40 {
            if self.session.is_some() {
                self.cov.hit("cut");
                self.cut_session("reset");
            }
        } else if roll < 65 {
            let ms = self.rng.gen_range(1..8000);
            self.partitioned_until = self.now + Duration::from_millis(ms);
            self.cov.hit("partition");
            if self.session.is_none() && self.rename_unsynced.is_some() {
                self.cov.hit("partition during rename");
            }
            self.cut_session("partition");
            self.log(format!("PARTITION for {ms} ms"));
        } else {
            let n = self.rng.gen_range(0..self.cfg.nodes);
            if self.up[n] {
                self.crash(n);
            }
        }
    }

    fn open_session(&mut self, i: usize, j: usize, stateful: bool) {
        let id = self.next_conn;
        self.next_conn += 1;
        let mut mo = Options::new(Role::Master, user());
        mo.now = unix(self.now);
        mo.hostname = format!("n{i}");
        mo.body_chunk_bytes = 512;
        mo.batch_bytes_max = 4096;
        if stateful {
            mo.state = Some(self.states.get(&(i, j)).cloned().unwrap_or_default());
        }
        let mut so = Options::new(Role::Slave, user());
        so.now = unix(self.now);
        so.hostname = format!("n{j}");
        so.body_chunk_bytes = 512;
        so.batch_bytes_max = 4096;
        // Concurrent flag changes on both sides since this pair last met.
        let since = self
            .pair_synced
            .get(&pair(i, j))
            .copied()
            .unwrap_or(Time::ZERO);
        if self.flag_changed[i]
            .iter()
            .any(|(g, t)| *t >= since && self.flag_changed[j].get(g).is_some_and(|u| *u >= since))
        {
            self.cov.hit("concurrent flag conflict");
        }
        let a = Brain::new(mo, self.disks[i].store.clone());
        let b = Brain::new(so, self.disks[j].store.clone());
        let s = Conn::open(
            id,
            self.now,
            (a, i),
            (b, j),
            self.cfg.net.clone(),
            &mut self.disks,
            &mut self.rng,
        );
        self.session_started = self.now;
        self.log(format!(
            "session {id} n{i} -> n{j}{}",
            if stateful { " -s" } else { "" }
        ));
        self.session = Some((s, i, j));
    }

    /// Looks at a finished session; returns the master's outcome.
    fn session_done(&mut self, s: Session, i: usize, j: usize) -> Option<engine::dsync::Outcome> {
        let out = s.a.events.iter().find_map(|(_, e)| match e {
            Event::Finished(o) => Some(o.clone()),
            _ => None,
        });
        match &out {
            Some(o) if o.error.is_none() => {
                if let Some(st) = &o.state {
                    self.states.insert((i, j), st.clone());
                }
                if self
                    .rename_unsynced
                    .is_some_and(|(k, t)| (k == i || k == j) && self.session_started >= t)
                {
                    self.rename_unsynced = None;
                }
                if !o.changes_during_sync {
                    self.pair_synced.insert(pair(i, j), self.session_started);
                    self.last_session_ok_started = self.session_started;
                }
                self.cov.hit("sync ok");
                self.log(format!(
                    "session {} done changes_during_sync={}",
                    s.id, o.changes_during_sync
                ));
            }
            Some(o) => {
                self.cov.hit("sync error");
                self.states.remove(&(i, j));
                self.log(format!("session {} error {:?}", s.id, o.error));
            }
            None => {
                self.log(format!(
                    "session {} closed without outcome: {:?} / {:?}",
                    s.id, s.a.closed, s.b.closed
                ));
            }
        }
        let mut s = s;
        s.cut(&mut self.disks);
        out
    }

    fn step(&mut self, faults: bool) -> bool {
        self.steps += 1;
        let mut next: Option<(Time, usize)> = None;
        let mut cand = |t: Option<Time>, k: usize| {
            if let Some(t) = t {
                if next.is_none_or(|(n, _)| t < n) {
                    next = Some((t, k));
                }
            }
        };
        let n = self.cfg.nodes;
        cand(self.session.as_ref().and_then(|s| s.0.next_due()), 0);
        if faults && self.ops_done < self.cfg.ops {
            cand(Some(self.next_op), 1);
        }
        if faults && self.session.is_none() {
            cand(Some(self.next_sync.max(self.partitioned_until)), 2);
        }
        for node in 0..n {
            cand(self.disks[node].fsync_at(), 10 + node);
            if !self.up[node] {
                cand(Some(self.down_until[node]), 20 + node);
            }
        }
        let Some((t, k)) = next else { return false };
        self.now = t.max(self.now);
        match k {
            0 => {
                let (s, _, _) = self.session.as_mut().expect("due");
                let st = s.step(self.now, &mut self.disks, &mut self.rng);
                if st != Stepped::Quiet && s.finished() {
                    let (s, i, j) = self.session.take().expect("here");
                    self.last_outcome = self.session_done(s, i, j);
                    let ms = self.rng.gen_range(0..=self.cfg.sync_every_ms_max);
                    self.next_sync = self.now + Duration::from_millis(ms);
                }
            }
            1 => {
                let p = self.rng.gen_range(0..n);
                self.user_edit(p);
                self.ops_done += 1;
                let ms = self.rng.gen_range(0..=self.cfg.think_ms_max);
                self.next_op = self.now + Duration::from_millis(ms);
                if self.rng.gen_bool(self.cfg.fault_chance) {
                    self.fault();
                }
            }
            2 => {
                let i = self.rng.gen_range(0..n);
                let j = (i + self.rng.gen_range(1..n)) % n;
                let free = !self.cfg.user_lock
                    || (!self.disks[i].has_pending() && !self.disks[j].has_pending());
                if self.up[i] && self.up[j] && free {
                    let stateful = self.cfg.stateful;
                    self.open_session(i, j, stateful);
                } else {
                    self.next_sync = self.now + Duration::from_millis(100);
                }
            }
            k if (10..20).contains(&k) => self.fsync(k - 10),
            k => {
                let node = k - 20;
                self.up[node] = true;
                self.log(format!("n{node} restarted"));
            }
        }
        self.check_invariants();
        true
    }

    fn violation(&self, what: String) -> ! {
        panic!("invariant violated: {what}")
    }

    fn check_invariants(&mut self) {
        for n in 0..self.cfg.nodes {
            if self.disks[n].durable_changes == self.checked_changes[n] {
                continue;
            }
            self.checked_changes[n] = self.disks[n].durable_changes;
            let store = self.disks[n].store.clone();
            let s = store.borrow();
            if let Err(e) = self.checkers[n].check(n, s.durable(), &self.generated) {
                self.violation(e);
            }
        }
    }

    fn view(&self, n: usize) -> Vec<String> {
        user_view(self.disks[n].store.borrow().durable(), &user())
    }

    /// Runs one session to its end with no faults; the master's outcome.
    fn run_session(&mut self, i: usize, j: usize, stateful: bool) -> engine::dsync::Outcome {
        while self.disks.iter().any(|d| d.has_pending()) && self.step(false) {}
        self.open_session(i, j, stateful);
        let mut guard = 0u64;
        while self.session.is_some() {
            guard += 1;
            if guard > 1_000_000 || !self.step(false) {
                let (s, _, _) = self.session.as_ref().expect("here");
                self.violation(format!(
                    "a healed session never ended (liveness): {}",
                    s.describe()
                ));
            }
        }
        while self.disks.iter().any(|d| d.has_pending()) && self.step(false) {}
        self.last_outcome.take().unwrap_or(engine::dsync::Outcome {
            state: None,
            changes_during_sync: false,
            error: Some("session closed without an outcome".into()),
        })
    }

    fn heal_and_converge(&mut self) {
        self.log("HEAL");
        for d in &mut self.disks {
            d.options.fsync_fail_chance = 0.0;
        }
        self.partitioned_until = self.now;
        for n in 0..self.cfg.nodes {
            if !self.up[n] {
                self.down_until[n] = self.now;
            }
        }
        // Let a running session finish (or end) and nodes come back.
        let mut guard = 0u64;
        while self.session.is_some() || self.up.iter().any(|u| !u) {
            guard += 1;
            if guard > 1_000_000 || !self.step(false) {
                break;
            }
        }
        if let Some((s, _, _)) = self.session.as_ref() {
            self.violation(format!(
                "a session never ended (liveness): {}",
                s.describe()
            ));
        }
        let n = self.cfg.nodes;
        let mut rounds = 0;
        loop {
            let before: Vec<Vec<String>> = (0..n).map(|k| self.view(k)).collect();
            let mut errors = Vec::new();
            // One round: each node with the next, then back (a chain in
            // both directions reaches everyone from everyone).
            let mut order: Vec<(usize, usize)> = (0..n - 1).map(|k| (k, k + 1)).collect();
            order.extend((0..n - 1).rev().map(|k| (k + 1, k)));
            for (i, j) in order {
                let o = self.run_session(i, j, false);
                if let Some(e) = o.error {
                    errors.push(e);
                }
            }
            let after: Vec<Vec<String>> = (0..n).map(|k| self.view(k)).collect();
            let equal = after.windows(2).all(|w| w[0] == w[1]);
            if equal && after == before {
                break;
            }
            rounds += 1;
            if rounds >= 2 && self.cfg.tolerate_uid_chase && only_uids_differ(&after) {
                self.cov.hit("three-way UID chase (known)");
                self.log("UID chase: nodes differ only in UIDs");
                return;
            }
            if rounds > 5 {
                let d = (1..n)
                    .map(|k| format!("n0 vs n{k}:\n{}", diff(&after[0], &after[k])))
                    .collect::<String>();
                self.violation(format!(
                    "no convergence after {rounds} healed rounds (errors {errors:?}):\n{d}"
                ));
            }
        }
        self.cov.hit("converged");
    }

    fn check_ledger(&self) {
        for n in 0..self.cfg.nodes {
            let s = self.disks[n].store.borrow();
            let d = s.durable();
            let mut present: BTreeSet<Guid> = BTreeSet::new();
            for mb in d.mailboxes_of_user(&user()).expect("reads") {
                for r in d
                    .records(&mb.uniqueid, UidRange::ALL, usize::MAX)
                    .expect("reads")
                {
                    if !self.generated.contains_key(&r.guid) {
                        self.violation(format!("n{n}: message {} nobody wrote", r.guid));
                    }
                    for k in r.flags.folded_keywords() {
                        if !self.keywords_tried.contains(&(r.guid, k.clone())) {
                            self.violation(format!(
                                "n{n}: keyword {} on {} nobody set",
                                String::from_utf8_lossy(&k),
                                r.guid
                            ));
                        }
                    }
                    if !r.expunged {
                        present.insert(r.guid);
                    }
                }
            }
            for (at, m, g) in &self.acked_appends {
                if self.expunges_tried.contains(g)
                    || self.deletes_tried.contains(m)
                    || self.deleted_guids.contains(g)
                {
                    continue;
                }
                // corvid's rule 3: a delete beats mail saved before it
                // that the deleting node had not seen (only newer mail is
                // rescued); a stateless sync cannot tell unseen from seen.
                let beaten = self.append_names.get(g).is_some_and(|(name, at)| {
                    self.deleted_names.iter().any(|(d, t)| d == name && t >= at)
                });
                if !present.contains(g) && !beaten {
                    self.violation(format!("n{n}: acknowledged append {g} (on n{at}) is lost"));
                }
            }
        }
    }
}

/// Whether the views differ only in the UIDs of messages (same mailbox,
/// same GUID, same flags on every node).
fn only_uids_differ(views: &[Vec<String>]) -> bool {
    let strip = |v: &Vec<String>| {
        let mut out: Vec<String> = v
            .iter()
            .map(|l| {
                if let Some(rest) = l.strip_prefix("M ") {
                    // "M <mailbox> <uid> <guid> f=.. {..}": drop the UID.
                    let mut parts: Vec<&str> = rest.splitn(3, ' ').collect();
                    if parts.len() == 3 {
                        parts.remove(1);
                    }
                    format!("M {}", parts.join(" "))
                } else {
                    l.clone()
                }
            })
            .collect();
        out.sort();
        out
    };
    let first = strip(&views[0]);
    views.iter().all(|v| strip(v) == first)
}

/// Runs one seed with `nodes` replicas.
pub fn run(seed: u64, nodes: usize, trace: &mut Trace, cov: &mut Coverage) {
    run_with(seed, Config::from_seed(seed, nodes), trace, cov)
}

/// [`run`] with a given configuration.
pub fn run_with(seed: u64, cfg: Config, trace: &mut Trace, cov: &mut Coverage) {
    let mut w = World::new(seed, cfg);
    w.trace = trace.clone();
    w.log(format!("config {:?}", w.cfg));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        while w.ops_done < w.cfg.ops {
            if !w.step(true) {
                break;
            }
            if w.steps > 5_000_000 {
                w.violation("phase 1 never ended".into());
            }
        }
        w.heal_and_converge();
        w.check_invariants();
        w.check_ledger();
    }));
    cov.merge(&w.cov);
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}
