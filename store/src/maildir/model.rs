//! One user's Maildir seen through the engine's read trait
//! ([`engine::store::MailRead`]), so machines that read the mail model can
//! read a Dovecot maildir.
//!
//! The mapping, where the model maps cleanly:
//! * Mailbox: name = the Maildir name (`Work/Sub`, UTF-8, `/`-separated)
//!   as [`MailboxName`] bytes; `guid` = the uidlist `G`; `uniqueid` =
//!   [`UniqueId::from_mailbox_guid`], unless corvid keeps another one in
//!   the sidecar `corvid-uniqueid` (written when a batch asks for it); `uidvalidity`; `last_uid` = next UID
//!   − 1; `highestmodseq` = corvid's sidecar modseq; `owner` = the user;
//!   partition `default`; `renamed_or_created_at` from the log (below).
//! * Record: `uid`, `modseq`, `flags`/keywords from the file name,
//!   `internaldate` = `last_updated` = the file's mtime, `size` = physical
//!   size, `guid` = SHA-1 of the bytes (from the sidecar), `peer_guid` =
//!   Dovecot's message GUID (uidlist `G` or base name). Maildir keeps no
//!   expunged records: expunged messages are simply absent.
//! * Subscriptions: the `subscriptions` file, all subscribed; a name
//!   whose mailbox exists and whose last `dovecot.mailbox.log` record is
//!   an unsubscribe shows as unsubscribed. `changed_at` is the newest
//!   subscribe/unsubscribe record for the name's hash, else 0 (as Dovecot's
//!   dsync sends it).
//! * Renames: `renamed_or_created_at` is the newest rename record for the
//!   mailbox's name hash, else 0 (Dovecot logs renames, not creates).
//! * Tombstones: the log's delete-mailbox records whose GUID is not a live
//!   mailbox (newest per GUID). The log keeps no names, so a tombstone's
//!   `name` is its GUID in hex and its uniqueid the one the GUID gives.
//!   Unsubscribes and directory deletes of names no mailbox here has are
//!   only hashes: the model has no form for them, so they are not shown.
//!
//! No Maildir form, so always empty: seen databases (Maildir's `\Seen` is
//! a flag), quota roots, Sieve scripts, server and mailbox annotations,
//! sync logs. Writes go through [`Maildir`] itself (and append the log
//! records Dovecot would: delete, rename, subscribe, unsubscribe, dated by
//! the model's timestamps); [`Maildir::refuse`] is the typed refusal for
//! the concepts above.
//!
//! Cost: lookups by uniqueid, mailbox GUID or message SHA-1 walk every
//! mailbox (a maildir is one user's mail, not a server's).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use engine::model::Record as ModelRecord;
use engine::model::{
    Annotations, Guid, Mailbox, MailboxGuid, MailboxName, ModSeq, Partition, PeerMailGuid,
    QuotaRoot, Record, Seen, SieveName, SieveScript, Subscription, SyncLogLine, Tombstone,
    UidValidity, UniqueId, UnixTime, UserId,
};
use engine::store::{
    Change, MailRead, Plan, StageHandle, StageHasher, StoreError, StoreWrite, UidRange, WriteBatch,
};

use super::mailbox_log::{name_hash, Kind};
use super::{Error, Maildir, Name};

/// What `dovecot.mailbox.log` says, indexed for lookups by GUID or name.
#[derive(Debug, Default)]
struct LogIndex {
    /// Mailbox GUID → newest delete.
    deleted: BTreeMap<[u8; 16], i64>,
    /// Name hash → newest rename to it.
    renamed: BTreeMap<[u8; 16], i64>,
    /// Name hash → newest subscription change (subscribed?, when).
    subscription: BTreeMap<[u8; 16], (bool, i64)>,
}

impl LogIndex {
    fn of(md: &Maildir) -> Result<LogIndex, StoreError> {
        let mut ix = LogIndex::default();
        let recs = md
            .mailbox_log()
            .read()
            .map_err(|e| StoreError::Io(format!("dovecot.mailbox.log: {e}")))?;
        for r in recs {
            let at = r.timestamp as i64;
            // Records are not ordered by time (two writers, peers' dates):
            // the newest wins, a tie goes to the later record.
            let newer = |old: Option<i64>| old.is_none_or(|o| at >= o);
            match r.kind {
                Kind::DeleteMailbox => {
                    if newer(ix.deleted.get(&r.guid).copied()) {
                        ix.deleted.insert(r.guid, at);
                    }
                }
                Kind::Rename => {
                    if newer(ix.renamed.get(&r.guid).copied()) {
                        ix.renamed.insert(r.guid, at);
                    }
                }
                Kind::Subscribe | Kind::Unsubscribe => {
                    if newer(ix.subscription.get(&r.guid).map(|s| s.1)) {
                        ix.subscription
                            .insert(r.guid, (r.kind == Kind::Subscribe, at));
                    }
                }
                Kind::DeleteDir | Kind::CreateDir => {}
            }
        }
        Ok(ix)
    }
}

fn store_err(e: Error) -> StoreError {
    match e {
        Error::Corrupt { path, why } => StoreError::Corrupt(format!("{}: {why}", path.display())),
        other => StoreError::Io(other.to_string()),
    }
}

/// A [`Maildir`] as one user's mail in the engine model; see the module doc.
#[derive(Debug)]
pub struct UserView<'a> {
    maildir: &'a Maildir,
    user: UserId,
}

impl<'a> UserView<'a> {
    /// View `maildir` as the mail of `user`.
    pub fn new(maildir: &'a Maildir, user: UserId) -> UserView<'a> {
        UserView { maildir, user }
    }

    fn mailbox_of(&self, name: &Name) -> Result<Option<Mailbox>, StoreError> {
        let ix = LogIndex::of(self.maildir)?;
        self.mailbox_in(name, &ix)
    }

    fn mailbox_in(&self, name: &Name, ix: &LogIndex) -> Result<Option<Mailbox>, StoreError> {
        let st = match self.maildir.status(name) {
            Ok(st) => st,
            Err(Error::NoMailbox(_)) => return Ok(None),
            Err(e) => return Err(store_err(e)),
        };
        let uidvalidity = UidValidity::new(st.uidvalidity)
            .map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))?;
        let created = UnixTime(
            ix.renamed
                .get(&name_hash(name.as_str()))
                .copied()
                .unwrap_or(0),
        );
        let uniqueid = match self.maildir.stored_uniqueid(name).map_err(store_err)? {
            Some(id) => UniqueId::new(&id)
                .map_err(|e| StoreError::Corrupt(format!("{name}: uniqueid {id:?}: {e}")))?,
            None => UniqueId::from_mailbox_guid(&st.guid),
        };
        let mut m = Mailbox::new(
            uniqueid,
            st.guid,
            MailboxName::new(name.as_str()).expect("a valid Maildir name is a model name"),
            Some(self.user.clone()),
            uidvalidity,
            Partition::new("default").expect("valid partition"),
            created,
        );
        m.last_uid = st.uidnext.saturating_sub(1);
        m.highestmodseq = ModSeq(st.highest_modseq);
        Ok(Some(m))
    }

    fn all(&self) -> Result<Vec<Mailbox>, StoreError> {
        let ix = LogIndex::of(self.maildir)?;
        let mut out = Vec::new();
        for n in self.maildir.list().map_err(store_err)? {
            if let Some(m) = self.mailbox_in(&n, &ix)? {
                out.push(m);
            }
        }
        // By model name bytes, as MailRead promises.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A mailbox's identity (GUID, uniqueid) from the uidlist header and
    /// the uniqueid sidecar only: no directory scan. `None` when the
    /// uidlist has no GUID yet (a full read creates one).
    fn identity(&self, name: &Name) -> Result<Option<(MailboxGuid, UniqueId)>, StoreError> {
        let dir = self.maildir.dir_of(name);
        let Some(header) = self
            .maildir
            .read_control_header(&dir.join(super::UIDLIST))
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        let Ok(l) = super::uidlist::Uidlist::parse(&format!("{header}\n")) else {
            return Ok(None);
        };
        let Some(guid) = l.guid else { return Ok(None) };
        let uniqueid = match self.maildir.stored_uniqueid(name).map_err(store_err)? {
            Some(id) => match UniqueId::new(&id) {
                Ok(u) => u,
                Err(_) => return Ok(None),
            },
            None => UniqueId::from_mailbox_guid(&guid),
        };
        Ok(Some((guid, uniqueid)))
    }

    /// A mailbox's identity, remembered as a hint for the next lookup.
    fn identity_hinted(&self, name: &Name) -> Result<Option<(MailboxGuid, UniqueId)>, StoreError> {
        let id = self.identity(name)?;
        if let Some((g, u)) = &id {
            self.maildir.remember_name(hint_key_guid(g), name);
            self.maildir.remember_name(hint_key_uniqueid(u), name);
        }
        Ok(id)
    }

    /// The mailbox whose identity matches: the name it had at the last
    /// lookup first (checked by one identity read), then by cheap identity
    /// reads of every mailbox (the common case), else by full reads.
    fn find_mailbox(
        &self,
        hint: &str,
        matches: &dyn Fn(&MailboxGuid, &UniqueId) -> bool,
    ) -> Result<Option<Mailbox>, StoreError> {
        if let Some(n) = self.maildir.hinted_name(hint) {
            if self.identity(&n)?.is_some_and(|(g, u)| matches(&g, &u)) {
                if let Some(m) = self.mailbox_of(&n)? {
                    if matches(&m.guid, &m.uniqueid) {
                        return Ok(Some(m));
                    }
                }
            }
        }
        let mut unknown = Vec::new();
        for n in self.maildir.list().map_err(store_err)? {
            match self.identity_hinted(&n)? {
                Some((g, u)) if matches(&g, &u) => {
                    if let Some(m) = self.mailbox_of(&n)? {
                        if matches(&m.guid, &m.uniqueid) {
                            return Ok(Some(m));
                        }
                    }
                }
                Some(_) => {}
                None => unknown.push(n),
            }
        }
        for n in unknown {
            if let Some(m) = self.mailbox_of(&n)? {
                if matches(&m.guid, &m.uniqueid) {
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }

    fn name_of_uniqueid(&self, id: &UniqueId) -> Result<Option<Name>, StoreError> {
        if let Some(n) = self.maildir.hinted_name(&hint_key_uniqueid(id)) {
            if self.identity(&n)?.is_some_and(|(_, u)| u == *id) {
                return Ok(Some(n));
            }
        }
        let mut unknown = Vec::new();
        for n in self.maildir.list().map_err(store_err)? {
            match self.identity_hinted(&n)? {
                Some((_, u)) if u == *id => return Ok(Some(n)),
                Some(_) => {}
                None => unknown.push(n),
            }
        }
        for n in unknown {
            if self.mailbox_of(&n)?.is_some_and(|m| m.uniqueid == *id) {
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    /// [`MailRead::records`], with the messages read and their directory
    /// (for [`UserStore`]'s location map).
    #[allow(clippy::type_complexity)]
    fn records_of(
        &self,
        mailbox: &UniqueId,
        range: UidRange,
        limit: usize,
    ) -> Result<(Vec<Record>, Option<(PathBuf, Vec<super::Message>)>), StoreError> {
        let Some(name) = self.name_of_uniqueid(mailbox)? else {
            return Ok((Vec::new(), None));
        };
        let mut out = Vec::new();
        let mut msgs = Vec::new();
        let mut first = range.first.get();
        // Pages of the limit's size (plus a few: a record without a
        // SHA-1 is skipped) until the limit is met or the range read.
        let want = limit.saturating_add(16);
        loop {
            let page = match self
                .maildir
                .messages_in(&name, first..=range.last.get(), want)
            {
                Ok(m) => m,
                Err(Error::NoMailbox(_)) => return Ok((Vec::new(), None)),
                Err(e) => return Err(store_err(e)),
            };
            let more = page.len() == want;
            for m in &page {
                if out.len() >= limit {
                    break;
                }
                let Ok(uid) = engine::model::Uid::new(m.uid) else {
                    continue;
                };
                // A file that vanished while being hashed has no SHA-1 yet.
                let Some(sha1) = m.sha1 else { continue };
                let mut r = Record::new(
                    uid,
                    ModSeq(m.modseq),
                    sha1,
                    m.size,
                    UnixTime(m.internaldate),
                );
                r.flags = m.model_flags();
                // A GUID that is the SHA-1 hex is the model's own identity.
                if m.guid != sha1.to_hex() {
                    r.peer_guid = PeerMailGuid::new(&m.guid).ok();
                }
                out.push(r);
            }
            let next = page.last().and_then(|m| m.uid.checked_add(1));
            msgs.extend(page);
            match next {
                Some(n) if more && out.len() < limit && n <= range.last.get() => first = n,
                _ => break,
            }
        }
        Ok((out, Some((self.maildir.dir_of(&name), msgs))))
    }

    /// Where every message's bytes are: SHA-1 → (file, size). One pass
    /// over every mailbox.
    fn locate_all(&self) -> Result<Located, StoreError> {
        let mut out = Located::default();
        for n in self.maildir.list().map_err(store_err)? {
            let msgs = match self.maildir.messages(&n) {
                Ok(m) => m,
                Err(Error::NoMailbox(_)) => continue,
                Err(e) => return Err(store_err(e)),
            };
            out.note(&self.maildir.dir_of(&n), &msgs, true);
        }
        out.complete = true;
        Ok(out)
    }

    /// The mailbox and UID holding bytes with this SHA-1.
    fn find_bytes(&self, guid: &Guid) -> Result<Option<(Name, u32, u64)>, StoreError> {
        for n in self.maildir.list().map_err(store_err)? {
            let msgs = match self.maildir.messages(&n) {
                Ok(m) => m,
                Err(Error::NoMailbox(_)) => continue,
                Err(e) => return Err(store_err(e)),
            };
            if let Some(m) = msgs.iter().find(|m| m.sha1.as_ref() == Some(guid)) {
                return Ok(Some((n, m.uid, m.size)));
            }
        }
        Ok(None)
    }
}

impl MailRead for UserView<'_> {
    fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
        let Ok(text) = std::str::from_utf8(name.as_bytes()) else {
            return Ok(None);
        };
        match Name::new(text) {
            // INBOX in any case is INBOX; other names must match exactly.
            Ok(n) if n.as_str() == text || n.is_inbox() => self.mailbox_of(&n),
            _ => Ok(None),
        }
    }

    fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
        self.find_mailbox(&hint_key_uniqueid(id), &|_, u| u == id)
    }

    fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
        if guid.is_zero() {
            return Ok(None);
        }
        self.find_mailbox(&hint_key_guid(guid), &|g, _| g == guid)
    }

    fn mailboxes_of_user(&self, user: &UserId) -> Result<Vec<Mailbox>, StoreError> {
        if *user == self.user {
            self.all()
        } else {
            Ok(Vec::new())
        }
    }

    fn mailboxes(
        &self,
        after: Option<&MailboxName>,
        limit: usize,
    ) -> Result<Vec<Mailbox>, StoreError> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|m| match after {
                Some(a) => m.name > *a,
                None => true,
            })
            .take(limit)
            .collect())
    }

    fn users(&self) -> Result<Vec<UserId>, StoreError> {
        Ok(vec![self.user.clone()])
    }

    fn records(
        &self,
        mailbox: &UniqueId,
        range: UidRange,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        Ok(self.records_of(mailbox, range, limit)?.0)
    }

    fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError> {
        Ok(self.find_bytes(guid)?.map(|(_, _, size)| size))
    }

    fn message_bytes(&self, guid: &Guid, offset: u64, max_len: usize) -> Result<Bytes, StoreError> {
        let (name, uid, _) = self
            .find_bytes(guid)?
            .ok_or(StoreError::MissingMessage(*guid))?;
        self.maildir
            .read(&name, uid, offset, max_len)
            .map(Bytes::from)
            .map_err(store_err)
    }

    fn seen(&self, _user: &UserId, _mailbox: &UniqueId) -> Result<Option<Seen>, StoreError> {
        Ok(None)
    }

    fn seen_of_user(&self, _user: &UserId) -> Result<Vec<(UniqueId, Seen)>, StoreError> {
        Ok(Vec::new())
    }

    fn subscriptions(&self, user: &UserId) -> Result<Vec<(MailboxName, Subscription)>, StoreError> {
        if *user != self.user {
            return Ok(Vec::new());
        }
        let ix = LogIndex::of(self.maildir)?;
        let model =
            |n: &Name| MailboxName::new(n.as_str()).expect("a valid Maildir name is a model name");
        let mut out: BTreeMap<MailboxName, Subscription> = BTreeMap::new();
        for n in self.maildir.subscriptions().map_err(store_err)? {
            let at = ix
                .subscription
                .get(&name_hash(n.as_str()))
                .map_or(0, |s| s.1);
            out.insert(
                model(&n),
                Subscription {
                    subscribed: true,
                    changed_at: UnixTime(at),
                },
            );
        }
        // Unsubscribed names we can name: those of existing mailboxes.
        for n in self.maildir.list().map_err(store_err)? {
            let m = model(&n);
            if out.contains_key(&m) {
                continue;
            }
            if let Some(&(false, at)) = ix.subscription.get(&name_hash(n.as_str())) {
                out.insert(
                    m,
                    Subscription {
                        subscribed: false,
                        changed_at: UnixTime(at),
                    },
                );
            }
        }
        Ok(out.into_iter().collect())
    }

    fn quota(&self, _root: &MailboxName) -> Result<Option<QuotaRoot>, StoreError> {
        Ok(None)
    }

    fn sieve_scripts(&self, _user: &UserId) -> Result<Vec<SieveScript>, StoreError> {
        Ok(Vec::new())
    }

    fn sieve_active(&self, _user: &UserId) -> Result<Option<SieveName>, StoreError> {
        Ok(None)
    }

    fn server_annotations(&self) -> Result<Annotations, StoreError> {
        Ok(Annotations::new())
    }

    fn tombstones_named(&self, name: &MailboxName) -> Result<Vec<Tombstone>, StoreError> {
        Ok(self
            .tombstones_of_user(&self.user)?
            .into_iter()
            .filter(|t| t.name == *name)
            .collect())
    }

    fn tombstones_of_user(&self, user: &UserId) -> Result<Vec<Tombstone>, StoreError> {
        if *user != self.user {
            return Ok(Vec::new());
        }
        let ix = LogIndex::of(self.maildir)?;
        if ix.deleted.is_empty() {
            return Ok(Vec::new());
        }
        let live: Vec<MailboxGuid> = self.all()?.into_iter().map(|m| m.guid).collect();
        let mut out = Vec::new();
        for (g, at) in &ix.deleted {
            let guid = MailboxGuid::from_bytes(*g);
            // A deleted GUID that lives again (restored) is no tombstone,
            // as in Dovecot's dsync.
            if guid.is_zero() || live.contains(&guid) {
                continue;
            }
            out.push(Tombstone {
                name: MailboxName::new(guid.to_hex()).expect("hex is a valid name"),
                uniqueid: UniqueId::from_mailbox_guid(&guid),
                guid,
                owner: Some(self.user.clone()),
                deleted_at: UnixTime(*at),
                modseq: ModSeq(0),
            });
        }
        Ok(out)
    }

    fn sync_log(
        &self,
        _channel: &str,
        _after: u64,
        _limit: usize,
    ) -> Result<Vec<(u64, SyncLogLine)>, StoreError> {
        Ok(Vec::new())
    }

    fn sync_log_last(&self, _channel: &str) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// A [`Maildir`] as one user's writable mail store: [`MailRead`] as
/// [`UserView`], plus [`StoreWrite`] where the model maps onto Maildir.
///
/// A batch is as atomic as Maildir allows. It is validated whole by
/// [`Plan::build`] (and [`UserStore::check`]) against the maildir before
/// anything is touched, so a refused batch changes nothing. It is then
/// applied change by change; every change is itself atomic and
/// crash-safe (see [`Maildir`]) and durable when `write` returns, so
/// `sync` has nothing left to do. Maildir has no transactions, so a crash
/// (or an I/O failure, or a concurrent Dovecot) between two changes leaves
/// a prefix applied — always a maildir doveadm reads, because each step
/// is one it could have made itself. The one thing a prefix could lose is
/// a message the batch moves (dsync renumbering: expunge + append, or a
/// record rescued out of a mailbox being deleted). Those bytes are pinned
/// first (hard links in `tmp/`) and named in an intent file
/// `corvid-batch.<pid>` made durable before the first change and removed
/// after the last; [`UserStore::recover`] (run on every open, and at once
/// after a failed batch) delivers any pinned message that is no longer in
/// a mailbox back where it came from, with a new UID. The rest is what a
/// dsync peer repairs on the next run: counters are raised after the
/// records, so an interrupted batch only makes the next sync look
/// further back, never skip.
/// Everything the model cannot express in Maildir is refused before any
/// change is applied, with [`StoreError::Io`] naming the concept (the
/// engine's error has no "unsupported" variant):
/// ACLs, quota roots, annotations, seen databases, Sieve, sync logs,
/// deleting a user or INBOX.
/// A uniqueid that is not [`UniqueId::from_mailbox_guid`] of the mailbox's
/// GUID is kept in `corvid-uniqueid` in the mailbox directory.
/// A mailbox's UIDVALIDITY is set as given, LAST_UID and HIGHESTMODSEQ are
/// only raised ([`Maildir::update`]); other mailbox counters, record
/// modseqs and tombstones are derived or absent in Maildir and ignored.
///
/// Staged bytes live in `ROOT/tmp/` until a record links them.
pub struct UserStore {
    maildir: Maildir,
    user: UserId,
    staging: BTreeMap<StageHandle, (StageHasher, File, PathBuf)>,
    staged: BTreeMap<Guid, (PathBuf, u64)>,
    next_handle: u64,
    /// Where message bytes were last seen (see [`Located`]).
    located: std::sync::Mutex<Located>,
}

impl std::fmt::Debug for UserStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserStore")
            .field("root", &self.maildir.root())
            .field("user", &self.user)
            .field("staging", &self.staging.len())
            .field("staged", &self.staged.len())
            .finish()
    }
}

/// Where message bytes are (SHA-1 → file, size). A dsync source reads
/// every body by SHA-1, and a dsync destination asks for every incoming
/// message whether it already has its bytes; answering either by reading
/// every mailbox made a sync quadratic. Maildir files never change
/// content, so an entry is right as long as its file exists; a missing
/// file (expunged, or renamed by someone else's flag change) refreshes the
/// whole map. Once `complete` (built by a full pass), the map is kept
/// current with everything this process writes and every record it reads,
/// so a miss is answered "absent" without another pass: the only thing a
/// miss can then overlook is a message another process delivered that
/// this process never read, and the cost of that is one redundant copy
/// (the peer sends the bytes), never a wrong answer about a record.
#[derive(Debug, Default)]
struct Located {
    /// SHA-1 → (index in `dirs`, file relative to it, size).
    map: std::collections::HashMap<Guid, (usize, String, u64)>,
    /// The mailbox directories named by `map` (a handful; interned so an
    /// entry costs one short string, and a re-read message none).
    dirs: Vec<PathBuf>,
    complete: bool,
}

impl Located {
    fn dir_index(&mut self, dir: &std::path::Path) -> usize {
        match self.dirs.iter().position(|d| d == dir) {
            Some(i) => i,
            None => {
                self.dirs.push(dir.to_path_buf());
                self.dirs.len() - 1
            }
        }
    }

    /// Remember `msgs` of mailbox directory `dir`; with `keep_first`, a
    /// GUID already known keeps its place.
    fn note(&mut self, dir: &std::path::Path, msgs: &[super::Message], keep_first: bool) {
        let d = self.dir_index(dir);
        for m in msgs {
            let Some(g) = m.sha1 else { continue };
            match self.map.get(&g) {
                Some(_) if keep_first => {}
                Some((i, f, _)) if *i == d && *f == m.file => {}
                _ => {
                    self.map.insert(g, (d, m.file.clone(), m.size));
                }
            }
        }
    }

    fn path(&self, guid: &Guid) -> Option<(PathBuf, u64)> {
        let (d, f, size) = self.map.get(guid)?;
        Some((self.dirs[*d].join(f), *size))
    }
}

/// What one batch has read, kept current while it applies.
struct BatchCache {
    names: BTreeMap<UniqueId, Option<Name>>,
    msgs: BTreeMap<Name, BTreeMap<u32, super::Message>>,
}

/// One record change of a mailbox's group (see `apply_records`).
#[derive(Debug, Clone, Copy)]
enum GroupItem<'a> {
    Put(&'a ModelRecord),
    Remove(u32),
}

impl GroupItem<'_> {
    fn uid(&self) -> u32 {
        match self {
            GroupItem::Put(r) => r.uid.get(),
            GroupItem::Remove(uid) => *uid,
        }
    }
}

/// Intent files of batches in progress: `ROOT/corvid-batch.<pid>`.
const BATCH_PREFIX: &str = "corvid-batch.";
/// Pinned bytes: `ROOT/tmp/corvid-pin.<pid>.<sha1 hex>`.
const PIN_PREFIX: &str = "corvid-pin.";

/// A message's bytes held by a hard link while a batch may move them, and
/// what it takes to deliver them again.
#[derive(Debug, Clone)]
struct Pin {
    path: PathBuf,
    mailbox: Name,
    dovecot_guid: String,
    flags: engine::model::SystemFlags,
    keywords: Vec<engine::model::Keyword>,
    internaldate: i64,
}

/// One intent line: `sha1 \t internaldate \t flag bits \t hex(keywords)
/// \t hex(dovecot guid) \t hex(mailbox name)`.
fn parse_pin_line(line: &str) -> Option<(Guid, Pin)> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 6 {
        return None;
    }
    let unhex = |s: &str| hex::decode(s).ok().and_then(|b| String::from_utf8(b).ok());
    let sha1 = Guid::parse(f[0].as_bytes()).ok()?;
    let keywords = unhex(f[3])?
        .split(' ')
        .filter(|k| !k.is_empty())
        .filter_map(|k| engine::model::Keyword::new(k).ok())
        .collect();
    Some((
        sha1,
        Pin {
            path: PathBuf::new(),
            mailbox: Name::new(&unhex(f[5])?).ok()?,
            dovecot_guid: unhex(f[4])?,
            flags: engine::model::SystemFlags::from_bits_truncate(f[2].parse().ok()?),
            keywords,
            internaldate: f[1].parse().ok()?,
        },
    ))
}

/// Wall-clock seconds, for log records whose change carries no date.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hint_key_uniqueid(u: &UniqueId) -> String {
    format!("u:{u}")
}

fn hint_key_guid(g: &MailboxGuid) -> String {
    format!("g:{g}")
}

fn unsupported(what: &str) -> StoreError {
    StoreError::Io(format!("{what} has no Maildir form"))
}

impl UserStore {
    /// `maildir` as the store of `user`'s mail.
    pub fn new(maildir: Maildir, user: UserId) -> UserStore {
        let st = UserStore {
            maildir,
            user,
            staging: BTreeMap::new(),
            staged: BTreeMap::new(),
            next_handle: 1,
            located: std::sync::Mutex::new(Located::default()),
        };
        if let Err(e) = st.recover() {
            tracing::warn!(root = %st.maildir.root().display(), error = %e, "maildir batch recovery failed; retried at the next open");
        }
        st
    }

    /// The maildir.
    pub fn maildir(&self) -> &Maildir {
        &self.maildir
    }

    fn view(&self) -> UserView<'_> {
        UserView::new(&self.maildir, self.user.clone())
    }

    fn name_of(m: &MailboxName) -> Result<Name, StoreError> {
        let text = std::str::from_utf8(m.as_bytes())
            .map_err(|_| StoreError::Io(format!("mailbox name {m} is not UTF-8")))?;
        Name::new(text).map_err(|e| StoreError::Io(format!("mailbox name {m}: {e}")))
    }

    /// Refuse what Maildir cannot hold, before anything is applied.
    fn check(&self, changes: &[Change<'_>]) -> Result<(), StoreError> {
        for c in changes {
            match c {
                Change::PutMailbox(m) => {
                    if !m.acl.0.is_empty() {
                        return Err(unsupported("an ACL"));
                    }
                    if !m.annotations.is_empty() {
                        return Err(unsupported("a mailbox annotation"));
                    }
                    if m.quotaroot.is_some() {
                        return Err(unsupported("a quota root"));
                    }
                    if m.owner.as_ref() != Some(&self.user) {
                        return Err(unsupported("another user's mailbox"));
                    }
                    UserStore::name_of(&m.name)?;
                }
                Change::PutRecord(_, r) if !r.annotations.is_empty() => {
                    return Err(unsupported("a message annotation"))
                }
                Change::PutSubscription(u, n, _) => {
                    if *u != &self.user {
                        return Err(unsupported("another user's subscription"));
                    }
                    UserStore::name_of(n)?;
                }
                Change::ClearSeenOfUser(_) | Change::PutSeen(..) | Change::RemoveSeen(..) => {
                    return Err(unsupported("a seen database"))
                }
                Change::ClearSubscriptionsOfUser(_) => return Err(unsupported("deleting a user")),
                Change::PutQuota(..) | Change::RemoveQuota(_) => {
                    return Err(unsupported("a quota root"))
                }
                Change::SetServerAnnotations(_) => return Err(unsupported("a server annotation")),
                Change::ClearSieveOfUser(_)
                | Change::PutSieve(..)
                | Change::RemoveSieve(..)
                | Change::SetSieveActive(..) => return Err(unsupported("a Sieve script")),
                Change::AppendSyncLog(..) | Change::TrimSyncLog(..) => {
                    return Err(unsupported("a sync log"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn apply(&mut self, plan: &Plan) -> Result<(), StoreError> {
        let changes = plan.changes();
        self.check(&changes)?;
        let inline: BTreeMap<Guid, &Bytes> = changes
            .iter()
            .filter_map(|c| match c {
                Change::StoreInline(g, b) => Some((**g, *b)),
                _ => None,
            })
            .collect();
        // Bytes a new record takes from a message already in the maildir
        // are pinned first (hard link into tmp/): the same batch may
        // expunge or delete their current copy (dsync moves a message to a
        // new UID as expunge + append). With pins, the batch's intent
        // names them durably before any change, so a crash in between is
        // repaired by `recover` (see the type doc).
        let mut pins: BTreeMap<Guid, Pin> = BTreeMap::new();
        let intent = self
            .pin_existing(&changes, &inline, &mut pins)
            .and_then(|()| self.write_intent(&pins));
        let result = intent.and_then(|path| {
            let r = self.apply_changes(plan, &changes, &inline, &pins);
            if r.is_ok() {
                // Done: the pins are no longer needed.
                self.drop_intent(path.as_deref(), &pins);
            }
            r
        });
        if result.is_err() {
            // Not applied whole: leave intent and pins for `recover`,
            // which this process runs right away (the batch failed, the
            // store goes on).
            if let Err(e) = self.recover() {
                tracing::warn!(error = %e, "maildir batch recovery failed");
            }
        }
        result
    }

    fn apply_changes(
        &mut self,
        plan: &Plan,
        changes: &[Change<'_>],
        inline: &BTreeMap<Guid, &Bytes>,
        pins: &BTreeMap<Guid, Pin>,
    ) -> Result<(), StoreError> {
        let md = &self.maildir;
        // Mailboxes: a uniqueid removed and put again is a rename (or an
        // update of fields Maildir derives); removed only is a delete; put
        // only is a create.
        let mut removed = Vec::new();
        let mut put = BTreeMap::new();
        for c in changes {
            match c {
                Change::RemoveMailbox(id) => removed.push((*id).clone()),
                Change::PutMailbox(m) => {
                    put.insert(m.uniqueid.clone(), *m);
                }
                _ => {}
            }
        }
        let deleted_at: BTreeMap<&UniqueId, i64> = changes
            .iter()
            .filter_map(|c| match c {
                Change::PutTombstone(t) => Some((&t.uniqueid, t.deleted_at.0)),
                _ => None,
            })
            .collect();
        let mut names: BTreeMap<UniqueId, Name> = BTreeMap::new();
        for id in &removed {
            let before = self.view().mailbox_by_uniqueid(id)?;
            match (before, put.get(id)) {
                (Some(old), Some(new)) => {
                    let (from, to) = (
                        UserStore::name_of(&old.name)?,
                        UserStore::name_of(&new.name)?,
                    );
                    if from != to {
                        md.rename_one(&from, &to).map_err(store_err)?;
                        md.log_change(
                            Kind::Rename,
                            name_hash(to.as_str()),
                            new.renamed_or_created_at.0,
                        )
                        .map_err(store_err)?;
                    }
                    if old.guid != new.guid {
                        md.set_guid(&to, new.guid).map_err(store_err)?;
                    }
                }
                (Some(old), None) => {
                    let n = UserStore::name_of(&old.name)?;
                    if n.is_inbox() {
                        return Err(unsupported("deleting INBOX"));
                    }
                    md.delete(&n).map_err(store_err)?;
                    let at = deleted_at.get(id).copied().unwrap_or_else(now);
                    md.log_change(Kind::DeleteMailbox, *old.guid.as_bytes(), at)
                        .map_err(store_err)?;
                    // Dovecot also logs the name's directory as deleted.
                    md.log_change(Kind::DeleteDir, name_hash(n.as_str()), at)
                        .map_err(store_err)?;
                }
                (None, _) => {}
            }
        }
        for (id, m) in &put {
            let n = UserStore::name_of(&m.name)?;
            if !md.exists(&n) {
                md.create(
                    &n,
                    super::Create {
                        guid: Some(m.guid),
                        uidvalidity: Some(m.uidvalidity.get()),
                    },
                )
                .map_err(store_err)?;
            }
            // The uniqueid is kept beside the mailbox only when it is not
            // the one its GUID gives (a Cyrus mailbox, or dsync's GUID
            // adoption, which keeps the uniqueid and changes the GUID).
            let derived = UniqueId::from_mailbox_guid(&m.guid) == m.uniqueid;
            let stored = md.stored_uniqueid(&n).map_err(store_err)?;
            if derived && stored.is_some() {
                md.store_uniqueid(&n, None).map_err(store_err)?;
            } else if !derived && stored.as_deref() != Some(&m.uniqueid.to_lossy()) {
                md.store_uniqueid(&n, Some(&m.uniqueid.to_lossy()))
                    .map_err(store_err)?;
            }
            names.insert(id.clone(), n);
        }
        self.apply_records(changes, &names, inline, pins)?;
        // Counters Maildir derives can only be raised, as Dovecot's
        // mailbox_update does for dsync; after the records, whose UIDs may
        // lie below the mailbox's new LAST_UID. A crash before this point
        // leaves them low, which only makes the next sync look further.
        for (id, m) in &put {
            md.update(
                &names[id],
                Some(m.uidvalidity.get()),
                m.last_uid.saturating_add(1),
                m.highestmodseq.0,
            )
            .map_err(store_err)?;
        }
        // Linked bytes are now in message files.
        for (g, _) in plan.linked() {
            if let Some((p, _)) = self.staged.remove(g) {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(())
    }

    fn pin_existing(
        &self,
        changes: &[Change<'_>],
        inline: &BTreeMap<Guid, &Bytes>,
        pins: &mut BTreeMap<Guid, Pin>,
    ) -> Result<(), StoreError> {
        let wanted: Vec<(&UniqueId, &ModelRecord)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::PutRecord(id, r)
                    if !r.expunged
                        && !inline.contains_key(&r.guid)
                        && !self.staged.contains_key(&r.guid) =>
                {
                    Some((*id, *r))
                }
                _ => None,
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        // One pass over the maildir for the whole batch: where each
        // message's bytes are now.
        let mut at: BTreeMap<Guid, Vec<(Name, super::Message)>> = BTreeMap::new();
        for n in self.maildir.list().map_err(store_err)? {
            let msgs = match self.maildir.messages(&n) {
                Ok(m) => m,
                Err(Error::NoMailbox(_)) => continue,
                Err(e) => return Err(store_err(e)),
            };
            for m in msgs {
                if let Some(g) = m.sha1 {
                    at.entry(g).or_default().push((n.clone(), m));
                }
            }
        }
        let mut names: BTreeMap<&UniqueId, Option<Name>> = BTreeMap::new();
        for (id, r) in wanted {
            if pins.contains_key(&r.guid) {
                continue;
            }
            let Some(places) = at.get(&r.guid) else {
                continue; // apply_group reports it if it is really needed
            };
            if !names.contains_key(id) {
                names.insert(id, self.view().name_of_uniqueid(id)?);
            }
            // A record already where it is (a flag change) moves nothing.
            let here = names[id].as_ref();
            if places
                .iter()
                .any(|(n, m)| Some(n) == here && m.uid == r.uid.get())
            {
                continue;
            }
            let (src, m) = &places[0];
            let from = self.maildir.dir_of(src).join(&m.file);
            let to = self.maildir.root().join("tmp").join(format!(
                "{PIN_PREFIX}{}.{}",
                std::process::id(),
                r.guid.to_hex()
            ));
            let _ = std::fs::remove_file(&to);
            std::fs::hard_link(&from, &to).map_err(|e| StoreError::Io(e.to_string()))?;
            pins.insert(
                r.guid,
                Pin {
                    path: to,
                    mailbox: src.clone(),
                    dovecot_guid: m.guid.clone(),
                    flags: m.flags,
                    keywords: m.keywords.clone(),
                    internaldate: m.internaldate,
                },
            );
        }
        Ok(())
    }

    /// Make the pins and the batch intent durable before any change:
    /// `ROOT/corvid-batch.<pid>`, one line per pin. `None` when nothing is
    /// pinned (then no change of the batch can lose a message).
    fn write_intent(&self, pins: &BTreeMap<Guid, Pin>) -> Result<Option<PathBuf>, StoreError> {
        if pins.is_empty() {
            return Ok(None);
        }
        let root = self.maildir.root();
        let io = |e: std::io::Error| StoreError::Io(e.to_string());
        super::lock::sync_dir(&root.join("tmp")).map_err(io)?;
        let mut text = String::from("corvid-batch 1\n");
        for (sha1, p) in pins {
            let kws: Vec<String> = p.keywords.iter().map(|k| k.to_lossy()).collect();
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\n",
                sha1.to_hex(),
                p.internaldate,
                p.flags.bits(),
                hex::encode(kws.join(" ")),
                hex::encode(&p.dovecot_guid),
                hex::encode(p.mailbox.as_str()),
            ));
        }
        let name = format!("{BATCH_PREFIX}{}", std::process::id());
        super::lock::write_atomic(root, &name, &format!("{name}.tmp"), text.as_bytes())
            .map_err(io)?;
        self.maildir.fault_point();
        Ok(Some(root.join(name)))
    }

    fn drop_intent(&self, intent: Option<&std::path::Path>, pins: &BTreeMap<Guid, Pin>) {
        // The intent goes first: pins without an intent are only tmp/
        // litter (removed after 36 hours like any tmp/ file).
        if let Some(p) = intent {
            let _ = std::fs::remove_file(p);
            let _ = super::lock::sync_dir(self.maildir.root());
        }
        for p in pins.values() {
            let _ = std::fs::remove_file(&p.path);
        }
    }

    /// Finish what an interrupted batch left: for every intent file of a
    /// process that no longer runs (or of this process, after a failed
    /// batch), each pinned message whose bytes are no longer in any
    /// mailbox is delivered again to the mailbox it came from (INBOX if
    /// that is gone) with its flags, a new UID and its dsync GUID, so
    /// nothing a batch moved is lost; the next sync sees it as a message
    /// the peer may already have and matches it by GUID. Returns how many
    /// messages were restored. Run by [`UserStore::new`].
    pub fn recover(&self) -> Result<usize, StoreError> {
        let root = self.maildir.root().to_path_buf();
        let io = |e: std::io::Error| StoreError::Io(e.to_string());
        let mut restored = 0;
        for ent in std::fs::read_dir(&root).map_err(io)? {
            let ent = ent.map_err(io)?;
            let fname = ent.file_name().to_string_lossy().into_owned();
            let Some(pid) = fname
                .strip_prefix(BATCH_PREFIX)
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue; // another live writer's batch in progress
            }
            let path = ent.path();
            let text = self
                .maildir
                .read_control(&path)
                .map_err(store_err)?
                .unwrap_or_default();
            let mut pin_files = Vec::new();
            for line in text.lines().skip(1) {
                let Some(p) = parse_pin_line(line) else {
                    tracing::warn!(intent = %path.display(), "skipping a damaged intent line");
                    continue;
                };
                let file = root
                    .join("tmp")
                    .join(format!("{PIN_PREFIX}{pid}.{}", p.0.to_hex()));
                if file.exists() && self.view().find_bytes(&p.0)?.is_none() {
                    let (sha1, pin) = (p.0, p.1);
                    let target = if self.maildir.exists(&pin.mailbox) {
                        pin.mailbox.clone()
                    } else {
                        Name::inbox()
                    };
                    let how = super::Append {
                        uid: None,
                        guid: Some(pin.dovecot_guid.clone()),
                        flags: pin.flags,
                        keywords: pin.keywords.clone(),
                        internaldate: Some(pin.internaldate),
                    };
                    let mut f = File::open(&file).map_err(io)?;
                    self.maildir
                        .append(&target, &mut f, &how)
                        .map_err(store_err)?;
                    tracing::warn!(mailbox = %target, sha1 = %sha1, "restored a message an interrupted batch had moved");
                    restored += 1;
                }
                pin_files.push(file);
            }
            std::fs::remove_file(&path).map_err(io)?;
            super::lock::sync_dir(&root).map_err(io)?;
            for f in pin_files {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(restored)
    }

    fn apply_records(
        &self,
        changes: &[Change<'_>],
        names: &BTreeMap<UniqueId, Name>,
        inline: &BTreeMap<Guid, &Bytes>,
        pinned: &BTreeMap<Guid, Pin>,
    ) -> Result<(), StoreError> {
        let md = &self.maildir;
        // Per batch: each uniqueid is resolved once and each mailbox's
        // messages are read once, then kept up to date as records are
        // applied (a batch holds thousands of records of one mailbox).
        let mut cache = BatchCache {
            names: names
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            msgs: BTreeMap::new(),
        };
        // A run of record changes for one mailbox is applied as one group
        // (one expunge, one flag round, one append round: one lock and one
        // uidlist write each), not one durable step per record: that is
        // what makes a dsync import cost a few fsyncs per batch instead of
        // several per message.
        let mut group: Option<(Name, Vec<GroupItem<'_>>)> = None;
        for c in changes {
            let item = match c {
                Change::PutRecord(id, r) => Some((
                    self.name_for(id, &mut cache)?
                        .ok_or_else(|| StoreError::UnknownMailbox((*id).clone()))?,
                    GroupItem::Put(r),
                )),
                Change::RemoveRecord(id, uid) => self
                    .name_for(id, &mut cache)?
                    .map(|n| (n, GroupItem::Remove(uid.get()))),
                _ => None,
            };
            if let Some((n, item)) = item {
                let same = group.as_ref().is_some_and(|(g, items)| {
                    *g == n && !items.iter().any(|i| i.uid() == item.uid())
                });
                if !same {
                    if let Some((g, items)) = group.take() {
                        self.apply_group(&g, &items, inline, pinned, &mut cache)?;
                    }
                    group = Some((n, Vec::new()));
                }
                group.as_mut().expect("just set").1.push(item);
                continue;
            }
            if let Some((g, items)) = group.take() {
                self.apply_group(&g, &items, inline, pinned, &mut cache)?;
            }
            match c {
                Change::ClearRecords(id) => {
                    if let Some(n) = self.name_for(id, &mut cache)? {
                        cache.msgs.remove(&n);
                        if md.exists(&n) {
                            let uids: Vec<u32> = md
                                .messages(&n)
                                .map_err(store_err)?
                                .iter()
                                .map(|m| m.uid)
                                .collect();
                            md.expunge(&n, &uids).map_err(store_err)?;
                        }
                    }
                }
                Change::PutSubscription(_, n, s) => {
                    let n = UserStore::name_of(n)?;
                    let was = md.subscriptions().map_err(store_err)?.contains(&n);
                    md.set_subscribed(&n, s.subscribed).map_err(store_err)?;
                    // Logged when the state changes, or when a peer's
                    // change brings a date (dsync keeps the newer one).
                    if was != s.subscribed || s.changed_at.0 != 0 {
                        let kind = if s.subscribed {
                            Kind::Subscribe
                        } else {
                            Kind::Unsubscribe
                        };
                        md.log_change(kind, name_hash(n.as_str()), s.changed_at.0)
                            .map_err(store_err)?;
                    }
                }
                _ => {}
            }
        }
        if let Some((g, items)) = group.take() {
            self.apply_group(&g, &items, inline, pinned, &mut cache)?;
        }
        Ok(())
    }

    fn name_for(&self, id: &UniqueId, cache: &mut BatchCache) -> Result<Option<Name>, StoreError> {
        if let Some(n) = cache.names.get(id) {
            return Ok(n.clone());
        }
        let n = self.view().name_of_uniqueid(id)?;
        cache.names.insert(id.clone(), n.clone());
        Ok(n)
    }

    /// Apply one mailbox's run of record changes: expunges, then flag
    /// changes, then new messages, each as one [`Maildir`] call.
    fn apply_group(
        &self,
        n: &Name,
        items: &[GroupItem<'_>],
        inline: &BTreeMap<Guid, &Bytes>,
        pinned: &BTreeMap<Guid, Pin>,
        cache: &mut BatchCache,
    ) -> Result<(), StoreError> {
        let md = &self.maildir;
        if !cache.msgs.contains_key(n) {
            let have = match md.messages(n) {
                Ok(v) => v,
                Err(Error::NoMailbox(_)) => Vec::new(),
                Err(e) => return Err(store_err(e)),
            };
            cache
                .msgs
                .insert(n.clone(), have.into_iter().map(|m| (m.uid, m)).collect());
        }
        let msgs = cache.msgs.get_mut(n).expect("just loaded");
        let mut expunge = Vec::new();
        let mut flags = Vec::new();
        let mut appends = Vec::new();
        for item in items {
            match (item, msgs.get(&item.uid())) {
                (GroupItem::Remove(uid), Some(_)) => expunge.push(*uid),
                (GroupItem::Put(r), Some(_)) if r.expunged => expunge.push(r.uid.get()),
                (GroupItem::Put(r), Some(have)) if have.model_flags() != r.flags => {
                    flags.push((r.uid.get(), r.flags.clone()))
                }
                // Maildir keeps no expunged records.
                (GroupItem::Put(r), None) if !r.expunged => appends.push(*r),
                _ => {}
            }
        }
        if !expunge.is_empty() {
            md.expunge(n, &expunge).map_err(store_err)?;
            for uid in &expunge {
                msgs.remove(uid);
            }
        }
        if !flags.is_empty() {
            let now = md.set_flags_many(n, &flags).map_err(store_err)?;
            self.note_located(&md.dir_of(n), &now);
            for m in now {
                msgs.insert(m.uid, m);
            }
        }
        if appends.is_empty() {
            return Ok(());
        }
        // Bytes already in the maildir that no pin holds (another
        // mailbox): copied from where they are now.
        let mut copies: BTreeMap<Guid, PathBuf> = BTreeMap::new();
        for r in &appends {
            if inline.contains_key(&r.guid)
                || self.staged.contains_key(&r.guid)
                || pinned.contains_key(&r.guid)
                || copies.contains_key(&r.guid)
            {
                continue;
            }
            let (src, uid, _) = self
                .view()
                .find_bytes(&r.guid)?
                .ok_or(StoreError::MissingMessage(r.guid))?;
            let m = md.message(&src, uid).map_err(store_err)?;
            copies.insert(r.guid, md.dir_of(&src).join(&m.file));
        }
        let batch: Vec<super::NewMessage<'_>> = appends
            .iter()
            .map(|r| {
                let body = if let Some(b) = inline.get(&r.guid) {
                    super::Body::Bytes(&b[..])
                } else if let Some((p, _)) = self.staged.get(&r.guid) {
                    super::Body::File(p)
                } else if let Some(p) = pinned.get(&r.guid) {
                    super::Body::File(&p.path)
                } else {
                    super::Body::File(&copies[&r.guid])
                };
                super::NewMessage {
                    body,
                    how: super::Append {
                        uid: Some(r.uid.get()),
                        // Without a peer GUID the message's dsync identity
                        // is its SHA-1 hex: keep exactly that (uidlist
                        // `G`), or a later sync would see a different
                        // message.
                        guid: Some(
                            r.peer_guid
                                .as_ref()
                                .map_or_else(|| r.guid.to_hex(), |g| g.to_lossy()),
                        ),
                        flags: r.flags.system,
                        keywords: r.flags.keywords().to_vec(),
                        internaldate: Some(r.internaldate.0),
                    },
                }
            })
            .collect();
        // The model may reuse UIDs after a UIDVALIDITY change.
        let stored = md.append_many_reusing_uids(n, batch).map_err(store_err)?;
        self.note_located(&md.dir_of(n), &stored);
        for m in stored {
            msgs.insert(m.uid, m);
        }
        Ok(())
    }
}

macro_rules! view_reads {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> Result<$ret, StoreError> {
            self.view().$name($($arg),*)
        })*
    };
}

impl MailRead for UserStore {
    fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError> {
        Ok(self.read_located(guid, 0, 0, false)?.map(|(_, size)| size))
    }

    fn message_bytes(&self, guid: &Guid, offset: u64, max_len: usize) -> Result<Bytes, StoreError> {
        self.read_located(guid, offset, max_len, true)?
            .map(|(b, _)| b)
            .ok_or(StoreError::MissingMessage(*guid))
    }

    fn records(
        &self,
        mailbox: &UniqueId,
        range: UidRange,
        limit: usize,
    ) -> Result<Vec<ModelRecord>, StoreError> {
        let (records, msgs) = self.view().records_of(mailbox, range, limit)?;
        if let Some((dir, msgs)) = msgs {
            self.note_located(&dir, &msgs);
        }
        Ok(records)
    }

    view_reads! {
        mailbox(name: &MailboxName) -> Option<Mailbox>;
        mailbox_by_uniqueid(id: &UniqueId) -> Option<Mailbox>;
        mailbox_by_guid(guid: &MailboxGuid) -> Option<Mailbox>;
        mailboxes_of_user(user: &UserId) -> Vec<Mailbox>;
        mailboxes(after: Option<&MailboxName>, limit: usize) -> Vec<Mailbox>;
        users() -> Vec<UserId>;
        seen(user: &UserId, mailbox: &UniqueId) -> Option<Seen>;
        seen_of_user(user: &UserId) -> Vec<(UniqueId, Seen)>;
        subscriptions(user: &UserId) -> Vec<(MailboxName, Subscription)>;
        quota(root: &MailboxName) -> Option<QuotaRoot>;
        sieve_scripts(user: &UserId) -> Vec<SieveScript>;
        sieve_active(user: &UserId) -> Option<SieveName>;
        server_annotations() -> Annotations;
        tombstones_named(name: &MailboxName) -> Vec<Tombstone>;
        tombstones_of_user(user: &UserId) -> Vec<Tombstone>;
        sync_log(channel: &str, after: u64, limit: usize) -> Vec<(u64, SyncLogLine)>;
        sync_log_last(channel: &str) -> u64;
    }
}

impl UserStore {
    /// Bytes of a message by SHA-1 through the location map (see
    /// `located`); `None` when no mailbox holds them.
    fn read_located(
        &self,
        guid: &Guid,
        offset: u64,
        max_len: usize,
        miss_rescans: bool,
    ) -> Result<Option<(Bytes, u64)>, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let io = |e: std::io::Error| StoreError::Io(e.to_string());
        let mut located = self.located.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            let miss = !located.map.contains_key(guid);
            if attempt == 1 || (miss && (miss_rescans || !located.complete)) {
                *located = self.view().locate_all()?;
            }
            let Some((path, size)) = located.path(guid) else {
                return Ok(None);
            };
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            if max_len == 0 {
                return Ok(Some((Bytes::new(), size)));
            }
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut buf = Vec::new();
            f.take(max_len as u64).read_to_end(&mut buf).map_err(io)?;
            return Ok(Some((Bytes::from(buf), size)));
        }
        Ok(None)
    }

    /// Remember where these messages are (see [`Located`]).
    fn note_located(&self, dir: &std::path::Path, msgs: &[super::Message]) {
        let mut located = self.located.lock().unwrap_or_else(|p| p.into_inner());
        located.note(dir, msgs, false);
    }
}

impl StoreWrite for UserStore {
    fn stage_begin(&mut self, guid: Guid, size: u64) -> Result<StageHandle, StoreError> {
        let hasher = StageHasher::new(guid, size, self.maildir.options.message_bytes_max)?;
        let h = StageHandle(self.next_handle);
        self.next_handle += 1;
        let path = self.maildir.root().join("tmp").join(format!(
            "corvid-stage.{}.{}",
            std::process::id(),
            h.0
        ));
        let f = File::create(&path).map_err(|e| StoreError::Io(e.to_string()))?;
        self.staging.insert(h, (hasher, f, path));
        Ok(h)
    }

    fn stage_chunk(&mut self, handle: StageHandle, chunk: &[u8]) -> Result<(), StoreError> {
        let (hasher, f, _) = self
            .staging
            .get_mut(&handle)
            .ok_or(StoreError::UnknownStage(handle))?;
        let r = hasher.update(chunk).and_then(|()| {
            f.write_all(chunk)
                .map_err(|e| StoreError::Io(e.to_string()))
        });
        if r.is_err() {
            self.stage_abort(handle);
        }
        r
    }

    fn stage_end(&mut self, handle: StageHandle) -> Result<(), StoreError> {
        let (hasher, f, path) = self
            .staging
            .remove(&handle)
            .ok_or(StoreError::UnknownStage(handle))?;
        drop(f);
        let (guid, size) = (hasher.guid(), hasher.size());
        if let Err(e) = hasher.finish() {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        if let Some((old, _)) = self.staged.insert(guid, (path, size)) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    fn stage_abort(&mut self, handle: StageHandle) {
        if let Some((_, _, path)) = self.staging.remove(&handle) {
            let _ = std::fs::remove_file(path);
        }
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        let staged = &self.staged;
        let lookup = |g: &Guid| staged.get(g).map(|(_, s)| *s);
        // Validated against this store itself, not a bare view: its
        // location map answers "have these bytes?" without a pass over
        // every mailbox per record.
        let plan = Plan::build(&*self, batch, &lookup)?;
        self.apply(&plan)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        // Every change was made durable (fsync, rename, directory fsync)
        // before `write` returned.
        Ok(())
    }
}

impl Drop for UserStore {
    fn drop(&mut self) {
        for (_, (_, _, p)) in std::mem::take(&mut self.staging) {
            let _ = std::fs::remove_file(p);
        }
        for (_, (p, _)) in std::mem::take(&mut self.staged) {
            let _ = std::fs::remove_file(p);
        }
    }
}
