//! The brain: one side of a dsync session as a [`Machine`], master or
//! slave, speaking stream protocol 3.5 through `proto::dsync`.
//!
//! Conversation, as Dovecot 2.3 runs it (verified against the captures in
//! `corpus/traces/dsync/`):
//!
//! ```text
//! both:   VERSION, headers, H  ─ at once
//! master: on peer H: [S* "." if stateful] N* "." D
//! slave:  on peer H [and its S list]: N* "." D
//! both:   on peer tree + D: merge the trees, write our side
//! master: per mailbox: B ─────────────►  slave: B (or B mailbox_lost)
//!         both: A* "."  C* "."   (equal B in "changed" mode: skip)
//!         both, after the peer's C list: R* "."
//!         both, after the peer's R list: (M body)* "."
//!         both, after the peer's M list and our writes are durable: S
//!         master, after both S: next B, or "." when none is left
//! slave:  on ".": (writes durable) F X, close
//! master: on F: done
//! ```
//!
//! Reads are synchronous through [`Pending`] (the store plus our own
//! in-flight batches); every write leaves as a [`StoreEffect::Write`], and
//! the `S` that tells the peer a mailbox is done, like the final `F`, is
//! only sent once every batch is durable.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use proto::dsync::{
    ChangeType, Decoder, EncodeOptions, Encoder, Event as WireEvent, Existence, Finish, Guid128,
    Handshake, Item, Mail, MailChange, MailRequest, Mailbox as WireMailbox, MailboxAttribute,
    MailboxDelete, MailboxState, MailboxTreeNode, SyncType, Tombstone as WireTombstone,
};

use crate::machine::{CloseReason, EffectId, EffectIds, Machine, Output, Time};
use crate::model::{
    Guid, Mailbox, MailboxGuid, MailboxName, ModSeq, PeerMailGuid, Record, Uid, UnixTime,
};
use crate::store::{
    BatchId, Completion, MailRead, Mutation, Pending, StoreEffect, UidRange, WriteBatch,
};

use super::merge::{
    flags_to_wire, guid128, keyword_entries, merge_tree, name_hash, plan_mailbox, wire_guid,
    LocalTree, MailInputs, Node, RemoteTree, Want,
};
use super::{Event, Mode, Options, Outcome, Role, SyncState};

/// One side of a dsync session. See the module doc.
pub struct Brain<S: MailRead> {
    opts: Options,
    store: Pending<S>,
    dec: Decoder,
    enc: Encoder,
    out: VecDeque<Output<StoreEffect, Event>>,
    ids: EffectIds,
    inflight: Vec<BatchId>,
    closed: bool,
    stage: Stage,
    mode: Mode,
    sync_type: SyncType,
    saved: SyncState,
    new_state: SyncState,
    remote_tree: RemoteTree,
    queue: VecDeque<MailboxGuid>,
    cur: Option<Box<MboxSync>>,
    changes_during_sync: bool,
    require_full_resync: bool,
    error: Option<String>,
    /// The tree merge's writes are in flight: mailbox work waits for them,
    /// because a store may re-derive identities from what it stored (a
    /// maildir's uniqueid follows its GUID).
    tree_barrier: bool,
}

/// Where the conversation is.
///
/// ```text
/// Handshake ─► [States] ─► Tree ─► Deletes ─► Mailboxes ◄─► InMailbox
///                                                 │
///                                  slave "." / master F ─► Done
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Handshake,
    States,
    Tree,
    Deletes,
    Mailboxes,
    InMailbox,
    Done,
}

/// What the peer sends next inside a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Recv {
    B,
    Attrs,
    Changes,
    Requests,
    Mails,
    State,
    Finished,
}

struct MboxSync {
    local: Mailbox,
    records: Vec<Record>,
    sent_b: WireMailbox,
    recv: Recv,
    remote_b: Option<WireMailbox>,
    remote_changes: Vec<MailChange>,
    wants: BTreeMap<Bytes, Want>,
    requests: Vec<MailRequest>,
    body: Option<(Option<Bytes>, Mail, BytesMut)>,
    body_skip: bool,
    remote_attrs: Vec<MailboxAttribute>,
    attr_body: Option<(MailboxAttribute, BytesMut)>,
    sent_mails: bool,
    outgoing: VecDeque<Record>,
    mails_end_pending: bool,
    sent_state: bool,
    remote_state: Option<MailboxState>,
    import: Vec<Mutation>,
    import_bytes: usize,
    modseq: ModSeq,
    plan_last_uid: u32,
}

impl<S: MailRead> Brain<S> {
    /// A brain over `store`, with its opening already queued.
    pub fn new(opts: Options, store: S) -> Brain<S> {
        let mode = opts.mode;
        let sync_type = match (&opts.state, opts.full) {
            (Some(_), _) => SyncType::State,
            (None, true) => SyncType::Full,
            // corvid never asks for Dovecot's "changed" (fast) sync: its
            // equal-metadata skip is unsound (module doc, rule 4).
            (None, false) => SyncType::Full,
        };
        let saved = opts.state.clone().unwrap_or_default();
        let mut b = Brain {
            dec: Decoder::new(opts.decoder),
            enc: Encoder::new(EncodeOptions::default()),
            store: Pending::new(store),
            out: VecDeque::new(),
            ids: EffectIds::default(),
            inflight: Vec::new(),
            closed: false,
            stage: Stage::Handshake,
            mode,
            sync_type,
            saved,
            new_state: SyncState::default(),
            remote_tree: RemoteTree::default(),
            queue: VecDeque::new(),
            cur: None,
            changes_during_sync: false,
            require_full_resync: false,
            error: None,
            tree_barrier: false,
            opts,
        };
        let mut buf = BytesMut::new();
        b.enc.encode_preamble(&mut buf).expect("fresh encoder");
        b.out.push_back(Output::Transmit(buf.freeze()));
        let hs = b.handshake();
        b.send(Item::Handshake(hs));
        b
    }

    /// The store view this brain reads (store + its in-flight batches).
    pub fn store(&self) -> &Pending<S> {
        &self.store
    }

    fn handshake(&self) -> Handshake {
        let mut h = Handshake {
            hostname: Bytes::from(self.opts.hostname.clone()),
            hashed_headers: vec![
                Bytes::from_static(b"Date"),
                Bytes::from_static(b"Message-ID"),
            ],
            ..Handshake::default()
        };
        if self.opts.role == Role::Master {
            h.sync_type = Some(self.sync_type);
            h.send_mail_requests = true;
            // The flags name what the *slave* is (a `doveadm backup`
            // master, the source, sends `backup_recv`: see the
            // backup-revert capture).
            h.backup_send = self.mode == Mode::BackupRecv;
            h.backup_recv = self.mode == Mode::BackupSend;
            h.import_commit_msgs_interval = 100;
            h.alt_char = Some(b'_');
            h.sync_box = self
                .opts
                .mailbox
                .as_ref()
                .map(|m| Bytes::copy_from_slice(m.as_bytes()));
        }
        h
    }

    // ----- output helpers -----

    fn send_event(&mut self, ev: WireEvent) {
        let mut buf = BytesMut::new();
        if let Err(e) = self.enc.encode(&ev, &mut buf) {
            panic!("dsync brain built an invalid stream: {e}");
        }
        self.out.push_back(Output::Transmit(buf.freeze()));
    }

    fn send(&mut self, item: Item) {
        self.send_event(WireEvent::Item(item));
    }

    fn end_list(&mut self) {
        self.send_event(WireEvent::EndOfList);
    }

    fn note(&mut self, s: String) {
        self.out.push_back(Output::Event(Event::Note(s)));
    }

    fn fail(&mut self, reason: CloseReason) {
        if self.closed {
            return;
        }
        self.error.get_or_insert_with(|| reason.to_string());
        let outcome = self.outcome();
        self.out.push_back(Output::Event(Event::Finished(outcome)));
        self.out.push_back(Output::Close(reason));
        self.closed = true;
        self.stage = Stage::Done;
    }

    fn outcome(&self) -> Outcome {
        let state = if self.require_full_resync || self.error.is_some() {
            None
        } else {
            let mut st = self.saved.clone();
            for (g, s) in &self.new_state.mailboxes {
                st.mailboxes.insert(*g, s.clone());
            }
            // Mailboxes that no longer exist leave the state.
            let user = &self.opts.user;
            if let Ok(mbs) = self.store.mailboxes_of_user(user) {
                let live: Vec<Guid128> = mbs.iter().map(|m| Guid128(*m.guid.as_bytes())).collect();
                st.mailboxes.retain(|g, _| live.contains(g));
            }
            Some(st)
        };
        Outcome {
            state,
            changes_during_sync: self.changes_during_sync || self.require_full_resync,
            error: self.error.clone(),
        }
    }

    fn write(&mut self, mutations: Vec<Mutation>) {
        if mutations.is_empty() {
            return;
        }
        let id = self.ids.next_id();
        let batch = WriteBatch {
            id: BatchId(id.0),
            mutations,
        };
        if let Err(e) = self.store.push(&batch) {
            self.fail(CloseReason::EffectFailed(format!(
                "refused by the store: {e}"
            )));
            return;
        }
        self.inflight.push(batch.id);
        self.out.push_back(Output::Effect {
            id,
            effect: StoreEffect::Write(batch),
        });
    }

    fn user_mailboxes(&self) -> Vec<Mailbox> {
        let mut v = self
            .store
            .mailboxes_of_user(&self.opts.user)
            .unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn all_records(&self, mb: &Mailbox) -> Vec<Record> {
        let mut out = Vec::new();
        let mut range = UidRange::ALL;
        loop {
            let page = self
                .store
                .records(&mb.uniqueid, range, 1024)
                .unwrap_or_default();
            let last = page.last().and_then(|r| r.uid.next());
            let full = page.len() == 1024;
            out.extend(page);
            match last {
                Some(n) if full => range.first = n,
                _ => return out,
            }
        }
    }

    fn split_name(&self, name: &MailboxName) -> Vec<Bytes> {
        name.as_bytes()
            .split(|&c| c == self.opts.hierarchy_sep)
            .map(Bytes::copy_from_slice)
            .collect()
    }

    fn join_name(&self, parts: &[Bytes]) -> Option<MailboxName> {
        let mut v = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                v.push(self.opts.hierarchy_sep);
            }
            v.extend_from_slice(p);
        }
        MailboxName::new(v).ok()
    }

    // ----- sending the tree -----

    fn send_tree(&mut self) {
        let mbs = self.user_mailboxes();
        let subs: BTreeMap<MailboxName, (bool, i64)> = self
            .store
            .subscriptions(&self.opts.user)
            .unwrap_or_default()
            .into_iter()
            .map(|(n, s)| (n, (s.subscribed, s.changed_at.0)))
            .collect();
        let mut nodes: BTreeMap<Vec<Bytes>, MailboxTreeNode> = BTreeMap::new();
        for m in &mbs {
            let parts = self.split_name(&m.name);
            for i in 1..parts.len() {
                nodes
                    .entry(parts[..i].to_vec())
                    .or_insert_with(|| dir_node(parts[..i].to_vec()));
            }
            let (subscribed, sub_at) = subs.get(&m.name).copied().unwrap_or((false, 0));
            nodes.insert(
                parts.clone(),
                MailboxTreeNode {
                    name: parts,
                    existence: Existence::Exists,
                    mailbox_guid: Some(Guid128(*m.guid.as_bytes())),
                    uid_validity: m.uidvalidity.get(),
                    uid_next: m.last_uid + 1,
                    last_renamed_or_created: m.renamed_or_created_at.0,
                    subscribed,
                    last_subscription_change: sub_at,
                    extra: Vec::new(),
                },
            );
        }
        // Subscriptions of names without a mailbox travel as directories;
        // unsubscribes of such names as name-hash tombstones in `D`, as
        // Dovecot sends them.
        let mut unsubscribes = Vec::new();
        for (n, (subscribed, at)) in &subs {
            let parts = self.split_name(n);
            if !*subscribed && !nodes.contains_key(&parts) {
                unsubscribes.push(WireTombstone {
                    guid: Guid128(name_hash(n.as_bytes())),
                    timestamp: *at,
                });
                continue;
            }
            let node = nodes
                .entry(parts.clone())
                .or_insert_with(|| dir_node(parts));
            node.subscribed = *subscribed;
            node.last_subscription_change = *at;
        }
        for (_, n) in nodes {
            self.send(Item::MailboxTreeNode(n));
        }
        self.end_list();
        let tombs = self
            .store
            .tombstones_of_user(&self.opts.user)
            .unwrap_or_default();
        let mut mailboxes: Vec<WireTombstone> = tombs
            .iter()
            .filter(|t| !t.guid.is_zero())
            .map(|t| WireTombstone {
                guid: Guid128(*t.guid.as_bytes()),
                timestamp: t.deleted_at.0,
            })
            .collect();
        mailboxes.sort_by_key(|t| t.guid);
        self.send(Item::MailboxDelete(MailboxDelete {
            hierarchy_sep: self.opts.hierarchy_sep,
            escape_char: Some(b'%'),
            mailboxes,
            dirs: Vec::new(),
            unsubscribes,
            extra: Vec::new(),
        }));
    }

    fn after_handshake(&mut self, peer: Handshake) {
        if self.opts.role == Role::Slave {
            self.sync_type = peer.sync_type.unwrap_or(SyncType::Full);
            self.mode = if peer.backup_recv {
                Mode::BackupRecv
            } else if peer.backup_send {
                Mode::BackupSend
            } else {
                Mode::TwoWay
            };
            if let Some(b) = &peer.sync_box {
                self.opts.mailbox = MailboxName::new(b).ok();
            }
            if self.sync_type == SyncType::State {
                self.stage = Stage::States;
                return;
            }
        } else if self.sync_type == SyncType::State {
            let states: Vec<MailboxState> = self.saved.mailboxes.values().cloned().collect();
            for s in states {
                self.send(Item::MailboxState(s));
            }
            self.end_list();
        }
        self.send_tree();
        self.stage = Stage::Tree;
    }

    fn merge_trees(&mut self) {
        let mbs = self.user_mailboxes();
        let tombs = self
            .store
            .tombstones_of_user(&self.opts.user)
            .unwrap_or_default();
        let subs = self
            .store
            .subscriptions(&self.opts.user)
            .unwrap_or_default();
        let saved = &self.saved;
        // Read only for a mailbox a peer deleted (rule 3), not for every
        // mailbox on every run.
        let unseen = |m: &Mailbox, at: i64| -> Vec<Record> {
            let common = saved
                .mailboxes
                .get(&Guid128(*m.guid.as_bytes()))
                .map(|s| s.last_common_uid);
            self.all_records(m)
                .into_iter()
                .filter(|r| !r.expunged)
                .filter(|r| {
                    let saved_at = if r.savedate.0 != 0 {
                        r.savedate.0
                    } else {
                        r.internaldate.0
                    };
                    saved_at > at || common.is_some_and(|c| r.uid.get() > c)
                })
                .collect()
        };
        let local = LocalTree {
            mailboxes: &mbs,
            tombstones: &tombs,
            subscriptions: &subs,
            sep: self.opts.hierarchy_sep,
            unseen: &unseen,
        };
        let plan = merge_tree(
            &self.opts.user,
            &local,
            &self.remote_tree,
            self.opts.role,
            self.mode,
            self.opts.now.0,
        );
        for n in plan.notes {
            self.note(n);
        }
        self.write(plan.mutations);
        self.stage = Stage::Mailboxes;
        if !self.inflight.is_empty() {
            self.tree_barrier = true;
            return;
        }
        self.start_mailboxes();
    }

    fn start_mailboxes(&mut self) {
        if self.opts.role == Role::Master {
            self.queue = self
                .user_mailboxes()
                .into_iter()
                .filter(|m| self.opts.mailbox.iter().all(|f| *f == m.name))
                .map(|m| m.guid)
                .collect();
            self.next_mailbox();
        }
    }

    // ----- per mailbox -----

    fn wire_b(&self, m: &Mailbox, records: &[Record]) -> WireMailbox {
        let count = records.iter().filter(|r| !r.expunged).count() as u32;
        WireMailbox {
            mailbox_guid: Guid128(*m.guid.as_bytes()),
            uid_validity: m.uidvalidity.get(),
            uid_next: m.last_uid + 1,
            messages_count: count,
            first_recent_uid: m.last_uid + 1,
            highest_modseq: m.highestmodseq.0.max(1),
            highest_pvt_modseq: 0,
            have_guids: true,
            have_save_guids: true,
            ..WireMailbox::default()
        }
    }

    fn start_mailbox(&mut self, local: Mailbox) {
        let records = self.all_records(&local);
        let b = self.wire_b(&local, &records);
        self.send(Item::Mailbox(b.clone()));
        let modseq = ModSeq(local.highestmodseq.0 + 1);
        let last_uid = local.last_uid;
        self.cur = Some(Box::new(MboxSync {
            local,
            records,
            sent_b: b,
            recv: Recv::B,
            remote_b: None,
            remote_changes: Vec::new(),
            wants: BTreeMap::new(),
            requests: Vec::new(),
            body: None,
            body_skip: false,
            remote_attrs: Vec::new(),
            attr_body: None,
            sent_mails: false,
            outgoing: VecDeque::new(),
            mails_end_pending: false,
            sent_state: false,
            remote_state: None,
            import: Vec::new(),
            import_bytes: 0,
            modseq,
            plan_last_uid: last_uid,
        }));
        self.stage = Stage::InMailbox;
    }

    fn next_mailbox(&mut self) {
        while let Some(g) = self.queue.pop_front() {
            if let Ok(Some(m)) = self.store.mailbox_by_guid(&g) {
                self.start_mailbox(m);
                return;
            }
        }
        // No mailbox left.
        self.end_list();
        self.stage = Stage::Mailboxes;
        self.cur = None;
        self.stage_finish_wait();
    }

    fn stage_finish_wait(&mut self) {
        // Master: wait for F in stage Mailboxes with an empty queue.
    }

    fn same_metadata(a: &WireMailbox, b: &WireMailbox) -> bool {
        a.uid_validity == b.uid_validity
            && a.uid_next == b.uid_next
            && a.messages_count == b.messages_count
            && a.first_recent_uid == b.first_recent_uid
            && a.highest_modseq == b.highest_modseq
            && a.highest_pvt_modseq == b.highest_pvt_modseq
    }

    /// Both B records are known: skip, or send attributes and changes.
    fn begin_exchange(&mut self) {
        let cur = self.cur.as_mut().expect("in a mailbox");
        let rb = cur.remote_b.clone().expect("remote B");
        if rb.mailbox_lost || rb.mailbox_ignore {
            self.changes_during_sync |= rb.mailbox_lost;
            self.mailbox_done();
            return;
        }
        if self.sync_type == SyncType::Changed && Self::same_metadata(&cur.sent_b, &rb) {
            self.mailbox_done();
            return;
        }
        // UIDVALIDITY differs for one GUID: the side with more messages
        // keeps its own (tie: the higher value); the other adopts it and
        // all its messages count as new (full merge).
        if rb.uid_validity != cur.sent_b.uid_validity && self.mode != Mode::BackupSend {
            let ours_wins = self.mode != Mode::BackupRecv
                && (cur.sent_b.messages_count, cur.sent_b.uid_validity)
                    > (rb.messages_count, rb.uid_validity);
            if !ours_wins {
                let mut m = cur.local.clone();
                if let Ok(v) = crate::model::UidValidity::new(rb.uid_validity) {
                    m.uidvalidity = v;
                    cur.local = m.clone();
                    let note = format!(
                        "mailbox {}: adopting UIDVALIDITY {}",
                        m.name.to_lossy(),
                        rb.uid_validity
                    );
                    self.note(note);
                    self.write(vec![Mutation::PutMailbox(m)]);
                }
            }
        }
        let cur = self.cur.as_mut().expect("in a mailbox");
        // Backup is one-way on the wire too (backup-revert capture): the
        // source sends attributes, changes and mails and reads only
        // requests; the destination sends only requests.
        match self.mode {
            Mode::BackupRecv => {
                cur.recv = Recv::Attrs;
                return;
            }
            Mode::BackupSend => cur.recv = Recv::Requests,
            Mode::TwoWay => cur.recv = Recv::Attrs,
        }
        let state = self.saved.mailboxes.get(&cur.sent_b.mailbox_guid).cloned();
        let state = state.filter(|s| {
            self.sync_type == SyncType::State && s.last_uidvalidity == cur.local.uidvalidity.get()
        });
        let changes = export_changes(&cur.records, state.as_ref());
        let attrs = super::attrs::export(&cur.local, &self.opts.user);
        for a in attrs {
            self.send(Item::MailboxAttribute(a));
        }
        self.end_list();
        for c in changes {
            self.send(Item::MailChange(c));
        }
        self.end_list();
    }

    /// The peer's `A` list is complete: merge it into our mailbox
    /// ([`super::attrs`]) when the store keeps attributes.
    fn attributes_done(&mut self) {
        if !self.opts.sync_attributes {
            return;
        }
        let lcm = self.usable_state().map_or(0, |s| s.last_common_modseq);
        let mode = self.mode;
        let cur = self.cur.as_mut().expect("in a mailbox");
        let remote = std::mem::take(&mut cur.remote_attrs);
        let uid = cur.local.uniqueid.clone();
        let modseq = cur.modseq;
        let Ok(Some(mb)) = self.store.mailbox_by_uniqueid(&uid) else {
            return;
        };
        let (mut muts, notes) =
            super::attrs::merge(&mb, &self.opts.user, &remote, lcm, mode, modseq);
        let name = mb.name.to_lossy();
        for n in notes {
            self.note(format!("{name}: {n}"));
        }
        if muts.is_empty() {
            return;
        }
        // Changes at `modseq` move HIGHESTMODSEQ with them (as every
        // batch of ours does); applied after the annotations, so the
        // mailbox written carries them.
        let mut raised = mb.clone();
        for m in &muts {
            if let Mutation::SetAnnotation {
                entry,
                owner,
                value,
                ..
            } = m
            {
                raised
                    .annotations
                    .set(entry.clone(), owner.clone(), value.clone());
            }
        }
        raised.highestmodseq = ModSeq(raised.highestmodseq.0.max(modseq.0));
        muts.push(Mutation::PutMailbox(raised));
        self.write(muts);
    }

    fn usable_state(&self) -> Option<MailboxState> {
        let cur = self.cur.as_ref()?;
        if self.sync_type != SyncType::State {
            return None;
        }
        self.saved
            .mailboxes
            .get(&cur.sent_b.mailbox_guid)
            .filter(|s| s.last_uidvalidity == cur.local.uidvalidity.get())
            .cloned()
    }

    fn changes_done(&mut self) {
        let state = self.usable_state();
        let role = self.opts.role;
        let mode = self.mode;
        let cur = self.cur.as_mut().expect("in a mailbox");
        let rb = cur.remote_b.clone().expect("remote B");
        let plan = plan_mailbox(&MailInputs {
            mailbox: &cur.local,
            records: &cur.records,
            remote: &cur.remote_changes,
            remote_uid_next: rb.uid_next,
            state: state.as_ref(),
            role,
            mode,
            modseq: cur.modseq,
        });
        cur.wants = plan.wants.clone();
        cur.plan_last_uid = plan.last_uid;
        if mode == Mode::BackupRecv {
            // A backup destination sends no mails and reads no requests.
            cur.recv = Recv::Mails;
            cur.sent_mails = true;
        } else {
            cur.recv = Recv::Requests;
        }
        let name = cur.local.name.to_lossy();
        let mut reqs: Vec<(u32, Bytes)> = plan
            .wants
            .iter()
            .map(|(g, w)| (w.remote_uid, g.clone()))
            .collect();
        reqs.sort();
        for n in plan.notes {
            self.note(format!("{name}: {n}"));
        }
        let mut muts = plan.mutations;
        if !muts.is_empty() {
            // The same batch moves LAST_UID and HIGHESTMODSEQ over the
            // records it changes (at `cur.modseq`, renumbered up to
            // `plan.last_uid`): if the session ends before the last import
            // batch, no durable record may sit above them (found by the
            // simulator, sim/README.md).
            let cur = self.cur.as_ref().expect("in a mailbox");
            let (uid, modseq) = (cur.local.uniqueid.clone(), cur.modseq);
            if let Ok(Some(mut m)) = self.store.mailbox_by_uniqueid(&uid) {
                m.last_uid = m.last_uid.max(plan.last_uid);
                m.highestmodseq = ModSeq(m.highestmodseq.0.max(modseq.0));
                muts.push(Mutation::PutMailbox(m));
            }
        }
        self.write(muts);
        for (uid, guid) in reqs {
            self.send(Item::MailRequest(MailRequest {
                guid: Some(guid),
                uid,
                extra: Vec::new(),
            }));
        }
        self.end_list();
    }

    fn requests_done(&mut self) {
        let backup_send = self.mode == Mode::BackupSend;
        let cur = self.cur.as_mut().expect("in a mailbox");
        // A backup source gets no mails back: its next input is the state.
        cur.recv = if backup_send {
            Recv::State
        } else {
            Recv::Mails
        };
        let reqs = std::mem::take(&mut cur.requests);
        let mut by_guid: BTreeMap<Bytes, &Record> = BTreeMap::new();
        let mut by_uid: BTreeMap<u32, &Record> = BTreeMap::new();
        for r in cur.records.iter().filter(|r| !r.expunged) {
            by_guid.insert(wire_guid(r), r);
            by_uid.insert(r.uid.get(), r);
        }
        let mut outgoing = VecDeque::new();
        let mut gone = false;
        for q in reqs {
            let rec = match &q.guid {
                Some(g) => by_guid.get(g),
                None => by_uid.get(&q.uid),
            };
            match rec {
                Some(r) => outgoing.push_back((*r).clone()),
                // Gone meanwhile: the peer learns it on the next run.
                None => gone = true,
            }
        }
        cur.outgoing = outgoing;
        cur.mails_end_pending = true;
        self.changes_during_sync |= gone;
        self.feed_mails();
    }

    /// Bodies go out one message at a time, as the driver drains our
    /// output, so memory holds at most one message whatever was asked.
    fn feed_mails(&mut self) {
        while self.out.is_empty() {
            let Some(cur) = self.cur.as_mut() else { return };
            if let Some(r) = cur.outgoing.pop_front() {
                self.send_mail(&r);
            } else if cur.mails_end_pending {
                cur.mails_end_pending = false;
                self.end_list();
                self.cur.as_mut().expect("in a mailbox").sent_mails = true;
                self.try_send_state();
                return;
            } else {
                return;
            }
        }
    }

    fn send_mail(&mut self, r: &Record) {
        self.send(Item::Mail(Mail {
            guid: Some(wire_guid(r)),
            uid: r.uid.get(),
            pop3_uidl: Some(Bytes::new()),
            pop3_order: 0,
            received_date: r.internaldate.0,
            saved_date: r.savedate.0,
            stream: true,
            extra: Vec::new(),
        }));
        let chunk = self.opts.body_chunk_bytes;
        let mut off = 0u64;
        loop {
            match self.store.message_bytes(&r.guid, off, chunk) {
                Ok(b) if b.is_empty() => break,
                Ok(b) => {
                    off += b.len() as u64;
                    self.send_event(WireEvent::BodyChunk(b));
                }
                Err(e) => {
                    self.error
                        .get_or_insert(format!("reading message {}: {e}", r.guid));
                    break;
                }
            }
        }
        self.send_event(WireEvent::BodyEnd);
    }

    fn mail_arrived(&mut self, guid: Option<Bytes>, mail: Mail, body: Bytes) {
        let cur = self.cur.as_mut().expect("in a mailbox");
        let Some(g) = guid else { return };
        let Some(w) = cur.wants.remove(&g) else {
            return;
        };
        let sha = Guid::of(&body);
        // A delivery that took this UID while we were syncing (the store
        // shows a live message of another GUID there, and we never write
        // two imports to one UID): never overwrite it. The import gets the
        // next free UID, the peer learns the renumbering next run (exit 2).
        let mbid = cur.local.uniqueid.clone();
        let mut uid = w.uid;
        let taken = |st: &Pending<S>, u: u32| {
            st.record(&mbid, Uid::new(u).expect("nonzero"))
                .ok()
                .flatten()
                .is_some_and(|r| !r.expunged && r.guid != sha)
        };
        if taken(&self.store, uid) {
            let last = self
                .store
                .mailbox_by_uniqueid(&mbid)
                .ok()
                .flatten()
                .map_or(0, |m| m.last_uid);
            let cur = self.cur.as_mut().expect("in a mailbox");
            uid = last.max(cur.plan_last_uid) + 1;
            while taken(&self.store, uid) {
                uid += 1;
            }
            cur.plan_last_uid = uid;
            self.changes_during_sync = true;
            self.out.push_back(Output::Event(Event::Note(format!(
                "uid {} was taken by a concurrent delivery; importing at {uid}",
                w.uid
            ))));
        }
        let cur = self.cur.as_mut().expect("in a mailbox");
        let mut rec = Record::new(
            Uid::new(uid).expect("nonzero"),
            cur.modseq,
            sha,
            body.len() as u64,
            UnixTime(mail.received_date),
        );
        rec.flags = w.flags;
        rec.savedate = UnixTime(mail.saved_date);
        if g.as_ref() != sha.to_hex().as_bytes() {
            rec.peer_guid = PeerMailGuid::new(&g).ok();
        }
        cur.import_bytes += body.len();
        cur.import.push(Mutation::PutMessage {
            guid: sha,
            bytes: body,
        });
        cur.import.push(Mutation::PutRecord {
            mailbox: cur.local.uniqueid.clone(),
            record: rec,
        });
        if cur.import_bytes >= self.opts.batch_bytes_max {
            self.flush_import(false);
        }
    }

    fn flush_import(&mut self, last: bool) {
        let cur = self.cur.as_mut().expect("in a mailbox");
        let mut muts = std::mem::take(&mut cur.import);
        cur.import_bytes = 0;
        // Every batch, not only the last, moves LAST_UID and HIGHESTMODSEQ
        // over the records it writes: a session cut (or a crash) after an
        // intermediate batch must not leave records above LAST_UID (the
        // next delivery would reuse their UIDs) or above HIGHESTMODSEQ
        // (found by the simulator, sim/README.md).
        let _ = last;
        {
            let uid = cur.local.uniqueid.clone();
            let last_uid = cur.plan_last_uid;
            let modseq = cur.modseq;
            let rb_modseq = cur.remote_b.as_ref().map_or(0, |b| b.highest_modseq);
            if let Ok(Some(mut m)) = self.store.mailbox_by_uniqueid(&uid) {
                // Nothing imported and no UID to raise: write nothing (a
                // no-change sync used to raise HIGHESTMODSEQ on both sides
                // every run, a durable write per mailbox).
                if muts.is_empty() && m.last_uid >= last_uid {
                    return;
                }
                m.last_uid = m.last_uid.max(last_uid);
                m.highestmodseq = ModSeq(m.highestmodseq.0.max(modseq.0).max(rb_modseq));
                muts.push(Mutation::PutMailbox(m));
            }
        }
        self.write(muts);
    }

    fn try_send_state(&mut self) {
        let Some(cur) = self.cur.as_ref() else { return };
        if cur.sent_state || !cur.sent_mails || cur.recv < Recv::State || !self.inflight.is_empty()
        {
            return;
        }
        let uid = cur.local.uniqueid.clone();
        let g = cur.sent_b.mailbox_guid;
        let Ok(Some(m)) = self.store.mailbox_by_uniqueid(&uid) else {
            return;
        };
        // Unchanged since the mailbox was read at its start (no write of
        // ours or anyone's moved its counters): count what was read then.
        let unchanged = m.highestmodseq == cur.local.highestmodseq
            && m.last_uid == cur.local.last_uid
            && m.uidvalidity == cur.local.uidvalidity;
        let count = if unchanged {
            cur.records.iter().filter(|r| !r.expunged).count() as u32
        } else {
            self.all_records(&m).iter().filter(|r| !r.expunged).count() as u32
        };
        let st = MailboxState {
            mailbox_guid: g,
            last_uidvalidity: m.uidvalidity.get(),
            last_common_uid: m.last_uid,
            last_common_modseq: m.highestmodseq.0,
            last_common_pvt_modseq: 0,
            last_messages_count: count,
            changes_during_sync: false,
            extra: Vec::new(),
        };
        self.send(Item::MailboxState(st.clone()));
        let cur = self.cur.as_mut().expect("in a mailbox");
        cur.sent_state = true;
        // Keep ours until the peer's arrives; the saved state is the
        // element-wise minimum (safe for both sides).
        self.new_state.mailboxes.insert(g, st);
        self.maybe_mailbox_done();
    }

    fn maybe_mailbox_done(&mut self) {
        let Some(cur) = self.cur.as_ref() else { return };
        if !(cur.sent_state && cur.recv == Recv::Finished) {
            return;
        }
        if let Some(r) = &cur.remote_state {
            if let Some(ours) = self.new_state.mailboxes.get_mut(&r.mailbox_guid) {
                ours.last_common_uid = ours.last_common_uid.min(r.last_common_uid);
                ours.last_common_modseq = ours.last_common_modseq.min(r.last_common_modseq);
                ours.last_messages_count = ours.last_messages_count.min(r.last_messages_count);
                if r.changes_during_sync {
                    self.changes_during_sync = true;
                }
            }
        }
        self.mailbox_done();
    }

    fn mailbox_done(&mut self) {
        self.cur = None;
        self.stage = Stage::Mailboxes;
        if self.opts.role == Role::Master {
            self.next_mailbox();
        }
    }

    /// Slave: the master sent its end of mailboxes; finish when durable.
    fn try_finish_slave(&mut self) {
        if self.stage != Stage::Done || self.closed || !self.inflight.is_empty() {
            return;
        }
        self.send(Item::Finish(Finish {
            error: self.error.clone().map(Bytes::from),
            mail_error: 0,
            require_full_resync: self.require_full_resync,
            extra: Vec::new(),
        }));
        self.send_event(WireEvent::Done);
        let outcome = self.outcome();
        self.out.push_back(Output::Event(Event::Finished(outcome)));
        self.out.push_back(Output::Close(CloseReason::Done));
        self.closed = true;
    }

    fn try_finish_master(&mut self, f: Option<Finish>) {
        if let Some(f) = f {
            if let Some(e) = f.error {
                self.error
                    .get_or_insert(format!("peer: {}", String::from_utf8_lossy(&e)));
            }
            self.require_full_resync |= f.require_full_resync;
            self.stage = Stage::Done;
        }
        if self.stage != Stage::Done || self.closed || !self.inflight.is_empty() {
            return;
        }
        let outcome = self.outcome();
        self.out.push_back(Output::Event(Event::Finished(outcome)));
        self.out.push_back(Output::Close(CloseReason::Done));
        self.closed = true;
    }

    // ----- input -----

    fn pump(&mut self) {
        while !self.closed && !self.tree_barrier {
            let ev = match self.dec.next() {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(e) => {
                    self.fail(CloseReason::PeerError(format!("dsync stream: {e}")));
                    return;
                }
            };
            if let Err(why) = self.handle_wire(ev) {
                self.fail(CloseReason::PeerError(why));
                return;
            }
        }
    }

    fn handle_wire(&mut self, ev: WireEvent) -> Result<(), String> {
        use WireEvent as W;
        match ev {
            W::Version { .. } | W::Header(_) | W::HeadersEnd => return Ok(()),
            W::Done => {
                if self.opts.role == Role::Master && self.stage == Stage::Done {
                    return Ok(());
                }
                return Err("peer closed the session early".into());
            }
            _ => {}
        }
        // Bodies.
        if let W::BodyChunk(b) = &ev {
            let limit = self.opts.mail_bytes_max;
            let cur = self.cur.as_mut().ok_or("body outside a mailbox")?;
            if cur.body_skip {
                return Ok(());
            }
            if let Some((_, buf)) = cur.attr_body.as_mut() {
                if buf.len() + b.len() > limit {
                    return Err(format!("an attribute value exceeds {limit} bytes"));
                }
                buf.extend_from_slice(b);
                return Ok(());
            }
            let (_, _, buf) = cur.body.as_mut().ok_or("unexpected body")?;
            if buf.len() + b.len() > limit {
                return Err(format!("a message body exceeds {limit} bytes"));
            }
            buf.extend_from_slice(b);
            return Ok(());
        }
        if let W::BodyEnd = ev {
            let cur = self.cur.as_mut().ok_or("body outside a mailbox")?;
            if std::mem::take(&mut cur.body_skip) {
                return Ok(());
            }
            if let Some((mut a, buf)) = cur.attr_body.take() {
                a.value = Some(buf.freeze());
                a.stream = false;
                cur.remote_attrs.push(a);
                return Ok(());
            }
            let (g, mail, buf) = cur.body.take().ok_or("unexpected body end")?;
            self.mail_arrived(g, mail, buf.freeze());
            return Ok(());
        }
        match self.stage {
            Stage::Handshake => match ev {
                W::Item(Item::Handshake(h)) => {
                    self.after_handshake(h);
                    Ok(())
                }
                _ => Err("expected the handshake".into()),
            },
            Stage::States => match ev {
                W::Item(Item::MailboxState(s)) => {
                    self.saved.mailboxes.insert(s.mailbox_guid, s);
                    Ok(())
                }
                W::EndOfList => {
                    self.send_tree();
                    self.stage = Stage::Tree;
                    Ok(())
                }
                _ => Err("expected mailbox states".into()),
            },
            Stage::Tree => match ev {
                W::Item(Item::MailboxTreeNode(n)) => {
                    self.tree_node(n);
                    Ok(())
                }
                W::EndOfList => {
                    self.stage = Stage::Deletes;
                    Ok(())
                }
                _ => Err("expected tree nodes".into()),
            },
            Stage::Deletes => match ev {
                W::Item(Item::MailboxDelete(d)) => {
                    self.remote_tree.sep = Some(d.hierarchy_sep);
                    for t in d.unsubscribes {
                        let at = self.remote_tree.unsubscribes.entry(t.guid.0).or_insert(0);
                        *at = (*at).max(t.timestamp);
                    }
                    // Directory deletes (`d.dirs`) have nothing to act on:
                    // corvid's stores hold no directory without a mailbox.
                    for t in d.mailboxes {
                        self.remote_tree
                            .deleted
                            .insert(MailboxGuid::from_bytes(t.guid.0), t.timestamp);
                    }
                    self.merge_trees();
                    Ok(())
                }
                _ => Err("expected mailbox deletes".into()),
            },
            Stage::Mailboxes => match (self.opts.role, ev) {
                (Role::Slave, W::Item(Item::Mailbox(b))) => {
                    self.slave_mailbox(b);
                    Ok(())
                }
                (Role::Slave, W::EndOfList) => {
                    self.stage = Stage::Done;
                    self.try_finish_slave();
                    Ok(())
                }
                (Role::Master, W::Item(Item::Finish(f))) => {
                    self.try_finish_master(Some(f));
                    Ok(())
                }
                _ => Err("unexpected record between mailboxes".into()),
            },
            Stage::InMailbox => self.in_mailbox(ev),
            Stage::Done => match ev {
                W::Item(Item::Finish(f)) if self.opts.role == Role::Master => {
                    self.try_finish_master(Some(f));
                    Ok(())
                }
                _ => Ok(()),
            },
        }
    }

    fn tree_node(&mut self, n: MailboxTreeNode) {
        let Some(name) = self.join_name(&n.name) else {
            return;
        };
        if n.subscribed || n.last_subscription_change != 0 {
            self.remote_tree
                .subscriptions
                .insert(name.clone(), (n.subscribed, n.last_subscription_change));
        }
        let Some(g) = n.mailbox_guid.filter(|g| g.0 != [0; 16]) else {
            return;
        };
        let guid = MailboxGuid::from_bytes(g.0);
        match n.existence {
            Existence::Exists => {
                self.remote_tree.mailboxes.insert(
                    guid,
                    Node {
                        name,
                        guid,
                        uidvalidity: n.uid_validity,
                        uid_next: n.uid_next,
                        renamed_at: n.last_renamed_or_created,
                    },
                );
            }
            Existence::Deleted => {
                self.remote_tree
                    .deleted
                    .entry(guid)
                    .or_insert(n.last_renamed_or_created);
            }
            Existence::Nonexistent => {}
        }
    }

    fn slave_mailbox(&mut self, b: WireMailbox) {
        let g = MailboxGuid::from_bytes(b.mailbox_guid.0);
        match self.store.mailbox_by_guid(&g) {
            Ok(Some(m)) => {
                self.start_mailbox(m);
                let cur = self.cur.as_mut().expect("started");
                cur.remote_b = Some(b);
                self.begin_exchange();
            }
            _ => {
                self.send(Item::Mailbox(WireMailbox {
                    mailbox_guid: b.mailbox_guid,
                    mailbox_lost: true,
                    ..WireMailbox::default()
                }));
                self.changes_during_sync = true;
            }
        }
    }

    fn in_mailbox(&mut self, ev: WireEvent) -> Result<(), String> {
        use WireEvent as W;
        let recv = self.cur.as_ref().ok_or("no mailbox")?.recv;
        match (recv, ev) {
            (Recv::B, W::Item(Item::Mailbox(b))) if self.opts.role == Role::Master => {
                if b.mailbox_guid != self.cur.as_ref().expect("cur").sent_b.mailbox_guid
                    && !b.mailbox_lost
                {
                    return Err("peer answered for another mailbox".into());
                }
                self.cur.as_mut().expect("cur").remote_b = Some(b);
                self.begin_exchange();
                Ok(())
            }
            // A master that skipped this mailbox (its "changed" rule saw
            // equal metadata where ours did not): nothing was written yet,
            // so drop it and follow.
            (Recv::Attrs, W::Item(Item::Mailbox(b))) if self.opts.role == Role::Slave => {
                self.cur = None;
                self.stage = Stage::Mailboxes;
                self.slave_mailbox(b);
                Ok(())
            }
            (Recv::Attrs, W::Item(Item::MailboxAttribute(a))) => {
                let cur = self.cur.as_mut().expect("cur");
                if cur.remote_attrs.len() >= self.opts.changes_max {
                    return Err(format!(
                        "more than {} attributes in one mailbox",
                        self.opts.changes_max
                    ));
                }
                if a.stream {
                    cur.attr_body = Some((a, BytesMut::new()));
                } else {
                    cur.remote_attrs.push(a);
                }
                Ok(())
            }
            (Recv::Attrs, W::EndOfList) => {
                self.attributes_done();
                self.cur.as_mut().expect("cur").recv = Recv::Changes;
                Ok(())
            }
            (Recv::Changes, W::Item(Item::MailChange(c))) => {
                let cur = self.cur.as_mut().expect("cur");
                if cur.remote_changes.len() >= self.opts.changes_max {
                    return Err(format!(
                        "more than {} changes in one mailbox",
                        self.opts.changes_max
                    ));
                }
                cur.remote_changes.push(c);
                Ok(())
            }
            (Recv::Changes, W::EndOfList) => {
                self.changes_done();
                Ok(())
            }
            (Recv::Requests, W::Item(Item::MailRequest(r))) => {
                let cur = self.cur.as_mut().expect("cur");
                if cur.requests.len() >= self.opts.changes_max {
                    return Err("too many mail requests".into());
                }
                cur.requests.push(r);
                Ok(())
            }
            (Recv::Requests, W::EndOfList) => {
                self.requests_done();
                Ok(())
            }
            (Recv::Mails, W::Item(Item::Mail(m))) => {
                let cur = self.cur.as_mut().expect("cur");
                if m.stream {
                    cur.body = Some((m.guid.clone(), m, BytesMut::new()));
                }
                Ok(())
            }
            (Recv::Mails, W::EndOfList) => {
                let cur = self.cur.as_mut().expect("cur");
                cur.recv = Recv::State;
                if !cur.wants.is_empty() {
                    // Asked for, never sent: the peer lost them meanwhile.
                    self.changes_during_sync = true;
                }
                self.flush_import(true);
                self.try_send_state();
                Ok(())
            }
            (Recv::State, W::Item(Item::MailboxState(s))) => {
                let cur = self.cur.as_mut().expect("cur");
                cur.remote_state = Some(s);
                cur.recv = Recv::Finished;
                self.maybe_mailbox_done();
                Ok(())
            }
            (r, ev) => Err(format!(
                "unexpected {} while expecting {r:?}",
                describe(&ev)
            )),
        }
    }
}

fn describe(ev: &WireEvent) -> String {
    match ev {
        WireEvent::Item(i) => format!("record {}", i.chr() as char),
        WireEvent::EndOfList => "end of list".into(),
        other => format!("{other:?}").chars().take(40).collect(),
    }
}

/// Our `C` list: every message (full) or what changed since the state.
fn export_changes(records: &[Record], state: Option<&MailboxState>) -> Vec<MailChange> {
    let mut out = Vec::new();
    for r in records {
        let g = wire_guid(r);
        if r.expunged {
            if state.is_some_and(|s| r.modseq.0 <= s.last_common_modseq) {
                continue;
            }
            let mut c = blank_change(ChangeType::Expunge, r.uid.get());
            c.guid = Some(Bytes::from(hex::encode(guid128(&g))));
            out.push(c);
            continue;
        }
        let change_type = match state {
            Some(s) if r.uid.get() <= s.last_common_uid => {
                if r.modseq.0 <= s.last_common_modseq {
                    continue;
                }
                ChangeType::FlagChange
            }
            _ => ChangeType::Save,
        };
        let mut c = blank_change(change_type, r.uid.get());
        c.guid = Some(g);
        c.modseq = r.modseq.0.max(1);
        c.final_flags = flags_to_wire(r.flags.system);
        c.keyword_changes = keyword_entries(&r.flags);
        if change_type == ChangeType::Save {
            c.received_timestamp = r.internaldate.0.max(0) as u64;
        }
        out.push(c);
    }
    out
}

fn blank_change(change_type: ChangeType, uid: u32) -> MailChange {
    MailChange {
        change_type,
        uid,
        guid: None,
        hdr_hash: None,
        modseq: 0,
        pvt_modseq: 0,
        add_flags: 0,
        remove_flags: 0,
        final_flags: 0,
        keywords_reset: false,
        keyword_changes: Vec::new(),
        received_timestamp: 0,
        virtual_size: 0,
        extra: Vec::new(),
    }
}

fn dir_node(name: Vec<Bytes>) -> MailboxTreeNode {
    MailboxTreeNode {
        name,
        existence: Existence::Nonexistent,
        mailbox_guid: None,
        uid_validity: 0,
        uid_next: 0,
        last_renamed_or_created: 0,
        subscribed: false,
        last_subscription_change: 0,
        extra: Vec::new(),
    }
}

impl<S: MailRead> Machine for Brain<S> {
    type Effect = StoreEffect;
    type Completion = Completion;
    type Event = Event;
    type Command = std::convert::Infallible;

    fn handle_input(&mut self, _now: Time, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.dec.feed(bytes);
        self.pump();
    }

    fn handle_eof(&mut self, _now: Time) {
        if self.closed {
            return;
        }
        self.pump();
        if self.closed {
            return;
        }
        if self.opts.role == Role::Master && self.stage == Stage::Done {
            self.try_finish_master(None);
            return;
        }
        self.fail(CloseReason::PeerError(
            "peer closed the stream before the end of the sync".into(),
        ));
    }

    fn handle_timeout(&mut self, _now: Time) {}

    fn handle_completion(&mut self, _now: Time, id: EffectId, completion: Completion) {
        let expected = BatchId(id.0);
        self.inflight.retain(|b| *b != expected);
        self.store.complete(expected);
        match completion.into_proof(expected) {
            Ok(_proof) => {}
            Err(Ok(e)) => {
                self.fail(CloseReason::EffectFailed(format!(
                    "store write failed: {e}"
                )));
                return;
            }
            Err(Err(other)) => panic!("dsync brain got a completion it never asked for: {other:?}"),
        }
        if self.closed {
            return;
        }
        if self.tree_barrier && self.inflight.is_empty() {
            self.tree_barrier = false;
            self.start_mailboxes();
        }
        self.try_send_state();
        match self.opts.role {
            Role::Slave => self.try_finish_slave(),
            Role::Master => self.try_finish_master(None),
        }
        self.pump();
    }

    fn handle_command(&mut self, _now: Time, command: Self::Command) {
        match command {}
    }

    fn poll_output(&mut self) -> Option<Output<StoreEffect, Event>> {
        if self.out.is_empty() && !self.closed {
            self.feed_mails();
        }
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        None
    }

    fn wants_input(&self) -> bool {
        !self.closed && !self.tree_barrier && self.inflight.len() < self.opts.inflight_batches_max
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

#[allow(dead_code)]
fn _assert_send<S: MailRead + Send>(b: Brain<S>) -> impl Send {
    b.opts
}
