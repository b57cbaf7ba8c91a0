//! Conversions between the mail model and SQLite rows, and every query the
//! [`MailRead`] trait needs, over any connection.
//!
//! [`ConnRead`] answers `MailRead` from one connection: the committer uses
//! it on its write connection (inside the open transaction, so a batch's
//! mutations see the ones before them) and readers use it on their own
//! connections (which only ever see committed, hence durable, state).
//!
//! Stored values are re-validated on the way out: a row whose bytes no
//! longer fit the model's grammar is reported as corruption, never served.

use bytes::Bytes;
use engine::model::{
    Acl, AnnotationEntry, AnnotationOwner, AnnotationValue, Annotations, Flags, Guid, Keyword,
    Mailbox, MailboxGuid, MailboxName, MailboxOptions, MailboxType, ModSeq, NameChange, Partition,
    PeerMailGuid, QuotaResource, QuotaRoot, Record, Seen, SeqSet, SieveName, SieveScript,
    Subscription, SyncCrcs, SyncLogLine, SystemFlags, Tombstone, Uid, UidValidity, UniqueId,
    UnixTime, UserId,
};
use engine::store::{StoreError, UidRange};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::BTreeMap;

/// An SQLite failure as the trait reports it.
pub(crate) fn db(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => {
            StoreError::Corrupt(format!("index: {e}"))
        }
        _ => StoreError::Io(format!("index: {e}")),
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Blob,
        format!("stored {what} is invalid: {e}").into(),
    )
}

/// Maps a conversion failure inside a row to corruption.
fn conv(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(_, _, inner) => {
            StoreError::Corrupt(format!("index row: {inner}"))
        }
        e => db(e),
    }
}

pub(crate) fn i(v: u64) -> i64 {
    v as i64
}

fn u(v: i64) -> u64 {
    v as u64
}

fn u32_of(v: i64, what: &str) -> rusqlite::Result<u32> {
    u32::try_from(v).map_err(|e| bad(what, e))
}

macro_rules! named {
    ($ty:ty, $row:expr, $idx:expr, $what:literal) => {{
        let b: Vec<u8> = $row.get($idx)?;
        <$ty>::new(&b).map_err(|e| bad($what, e))?
    }};
}

// ---------------------------------------------------------------------
// Encodings of composite values.

/// Annotations as length-prefixed fields: entry, owner, modseq, value.
pub(crate) fn encode_annotations(a: &Annotations) -> Option<Vec<u8>> {
    if a.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for (entry, owner, v) in a.iter() {
        for field in [entry.as_bytes(), owner.as_bytes()] {
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&v.modseq.0.to_le_bytes());
        out.extend_from_slice(&(v.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&v.value);
    }
    Some(out)
}

pub(crate) fn decode_annotations(b: Option<Vec<u8>>) -> rusqlite::Result<Annotations> {
    let mut out = Annotations::new();
    let Some(b) = b else { return Ok(out) };
    let mut rest = &b[..];
    let err = || bad("annotations", "truncated");
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if rest.len() < n {
            return None;
        }
        let (a, b) = rest.split_at(n);
        *rest = b;
        Some(a)
    }
    let len = |rest: &mut &[u8]| -> rusqlite::Result<usize> {
        let l = take(rest, 4).ok_or_else(err)?;
        Ok(u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize)
    };
    while !rest.is_empty() {
        let n = len(&mut rest)?;
        let entry = take(&mut rest, n).ok_or_else(err)?;
        let n = len(&mut rest)?;
        let owner = take(&mut rest, n).ok_or_else(err)?;
        let m = take(&mut rest, 8).ok_or_else(err)?;
        let modseq = u64::from_le_bytes(m.try_into().expect("8 bytes"));
        let n = len(&mut rest)?;
        let value = take(&mut rest, n).ok_or_else(err)?;
        out.set(
            AnnotationEntry::new(entry).map_err(|e| bad("annotation entry", e))?,
            AnnotationOwner::from_bytes(owner).map_err(|e| bad("annotation owner", e))?,
            AnnotationValue {
                modseq: ModSeq(modseq),
                value: Bytes::copy_from_slice(value),
            },
        );
    }
    Ok(out)
}

const QUOTA_NAMES: [&str; 4] = ["STORAGE", "MESSAGE", "ANNOTATION-STORAGE", "MAILBOX"];

pub(crate) fn encode_quota_map(m: &BTreeMap<QuotaResource, u64>) -> String {
    let mut s = String::new();
    for (res, v) in m {
        let i = QuotaResource::ALL
            .iter()
            .position(|r| r == res)
            .expect("every QuotaResource is in ALL");
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&format!("{} {v}", QUOTA_NAMES[i]));
    }
    s
}

fn decode_quota_map(s: &str) -> rusqlite::Result<BTreeMap<QuotaResource, u64>> {
    let mut out = BTreeMap::new();
    let mut words = s.split_ascii_whitespace();
    while let Some(name) = words.next() {
        let i = QUOTA_NAMES
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| bad("quota resource", name))?;
        let v = words
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("quota value", s))?;
        out.insert(QuotaResource::ALL[i], v);
    }
    Ok(out)
}

/// A sync log line as (TYPE, arg1, arg2).
pub(crate) fn encode_line(
    l: &SyncLogLine,
) -> Result<(&'static str, Vec<u8>, Option<Vec<u8>>), StoreError> {
    let one = |t, a: &[u8]| Ok((t, a.to_vec(), None));
    let two = |t, a: &[u8], b: &[u8]| Ok((t, a.to_vec(), Some(b.to_vec())));
    match l {
        SyncLogLine::User(u) => one("USER", u.as_bytes()),
        SyncLogLine::Unuser(u) => one("UNUSER", u.as_bytes()),
        SyncLogLine::Meta(u) => one("META", u.as_bytes()),
        SyncLogLine::Mailbox(m) => one("MAILBOX", m.as_bytes()),
        SyncLogLine::Append(m) => one("APPEND", m.as_bytes()),
        SyncLogLine::DoubleMailbox(a, b) => two("DOUBLEMAILBOX", a.as_bytes(), b.as_bytes()),
        SyncLogLine::Rename(a, b) => two("RENAME", a.as_bytes(), b.as_bytes()),
        SyncLogLine::Unmailbox(m) => one("UNMAILBOX", m.as_bytes()),
        SyncLogLine::Quota(r) => one("QUOTA", r.as_bytes()),
        SyncLogLine::Annotation(m) => {
            one("ANNOTATION", m.as_ref().map_or(&b""[..], |m| m.as_bytes()))
        }
        SyncLogLine::Seen(u, id) => two("SEEN", u.as_bytes(), id.as_bytes()),
        SyncLogLine::Sub(u, m) => two("SUB", u.as_bytes(), m.as_bytes()),
        other => Err(StoreError::Io(format!(
            "sync log line {other:?} is not known to this store"
        ))),
    }
}

pub(crate) fn decode_line(t: &str, a: &[u8], b: Option<&[u8]>) -> rusqlite::Result<SyncLogLine> {
    let user = |x: &[u8]| UserId::new(x).map_err(|e| bad("sync log user", e));
    let name = |x: &[u8]| MailboxName::new(x).map_err(|e| bad("sync log name", e));
    let second = || b.ok_or_else(|| bad("sync log line", "missing second argument"));
    Ok(match t {
        "USER" => SyncLogLine::User(user(a)?),
        "UNUSER" => SyncLogLine::Unuser(user(a)?),
        "META" => SyncLogLine::Meta(user(a)?),
        "MAILBOX" => SyncLogLine::Mailbox(name(a)?),
        "APPEND" => SyncLogLine::Append(name(a)?),
        "DOUBLEMAILBOX" => SyncLogLine::DoubleMailbox(name(a)?, name(second()?)?),
        "RENAME" => SyncLogLine::Rename(name(a)?, name(second()?)?),
        "UNMAILBOX" => SyncLogLine::Unmailbox(name(a)?),
        "QUOTA" => SyncLogLine::Quota(name(a)?),
        "ANNOTATION" if a.is_empty() => SyncLogLine::Annotation(None),
        "ANNOTATION" => SyncLogLine::Annotation(Some(name(a)?)),
        "SEEN" => SyncLogLine::Seen(
            user(a)?,
            UniqueId::new(second()?).map_err(|e| bad("sync log uniqueid", e))?,
        ),
        "SUB" => SyncLogLine::Sub(user(a)?, name(second()?)?),
        other => return Err(bad("sync log type", other)),
    })
}

// ---------------------------------------------------------------------
// Rows.

pub(crate) const MAILBOX_COLS: &str = "id, uniqueid, guid, name, owner, mbtype, uidvalidity, \
    last_uid, highestmodseq, recentuid, recenttime, last_appenddate, pop3_last_login, \
    pop3_show_after, xconvmodseq, raclmodseq, createdmodseq, foldermodseq, deletedmodseq, \
    partition, acl, options, quotaroot, renamed_or_created_at";

/// A mailbox row without its annotations and history (filled in by [`load_mailbox`]).
fn mailbox_row(r: &Row<'_>) -> rusqlite::Result<(i64, Mailbox)> {
    let id: i64 = r.get(0)?;
    let guid: Vec<u8> = r.get(2)?;
    let guid: [u8; 16] = guid
        .try_into()
        .map_err(|_| bad("mailbox guid", "not 16 bytes"))?;
    let owner: Option<Vec<u8>> = r.get(4)?;
    let mbtype: String = r.get(5)?;
    let quotaroot: Option<Vec<u8>> = r.get(22)?;
    let acl: Vec<u8> = r.get(20)?;
    let options: String = r.get(21)?;
    let mb = Mailbox {
        uniqueid: named!(UniqueId, r, 1, "uniqueid"),
        guid: MailboxGuid::from_bytes(guid),
        name: named!(MailboxName, r, 3, "mailbox name"),
        owner: owner
            .map(|o| UserId::new(o).map_err(|e| bad("owner", e)))
            .transpose()?,
        mbtype: MailboxType::parse(mbtype.as_bytes()).map_err(|e| bad("mbtype", e))?,
        uidvalidity: UidValidity::new(u32_of(r.get(6)?, "uidvalidity")?)
            .map_err(|e| bad("uidvalidity", e))?,
        last_uid: u32_of(r.get(7)?, "last_uid")?,
        highestmodseq: ModSeq(u(r.get(8)?)),
        recentuid: u32_of(r.get(9)?, "recentuid")?,
        recenttime: UnixTime(r.get(10)?),
        last_appenddate: UnixTime(r.get(11)?),
        pop3_last_login: UnixTime(r.get(12)?),
        pop3_show_after: UnixTime(r.get(13)?),
        xconvmodseq: ModSeq(u(r.get(14)?)),
        raclmodseq: ModSeq(u(r.get(15)?)),
        createdmodseq: ModSeq(u(r.get(16)?)),
        foldermodseq: ModSeq(u(r.get(17)?)),
        deletedmodseq: ModSeq(u(r.get(18)?)),
        partition: named!(Partition, r, 19, "partition"),
        acl: Acl::parse_cyrus(&acl),
        options: MailboxOptions::parse(options.as_bytes()),
        quotaroot: quotaroot
            .map(|q| MailboxName::new(q).map_err(|e| bad("quotaroot", e)))
            .transpose()?,
        annotations: Annotations::new(),
        renamed_or_created_at: UnixTime(r.get(23)?),
        name_history: Vec::new(),
    };
    Ok((id, mb))
}

/// Mailbox-level annotations of `mailbox_id` (0: the server's).
pub(crate) fn load_annotations(c: &Connection, mailbox_id: i64) -> rusqlite::Result<Annotations> {
    let mut st = c.prepare_cached(
        "SELECT entry, owner, modseq, value FROM mailbox_annotations \
         WHERE mailbox_id = ?1 ORDER BY entry, owner",
    )?;
    let mut out = Annotations::new();
    let mut rows = st.query([mailbox_id])?;
    while let Some(r) = rows.next()? {
        let owner: Vec<u8> = r.get(1)?;
        let value: Vec<u8> = r.get(3)?;
        out.set(
            named!(AnnotationEntry, r, 0, "annotation entry"),
            AnnotationOwner::from_bytes(&owner).map_err(|e| bad("annotation owner", e))?,
            AnnotationValue {
                modseq: ModSeq(u(r.get(2)?)),
                value: Bytes::from(value),
            },
        );
    }
    Ok(out)
}

fn load_mailbox(c: &Connection, (id, mut mb): (i64, Mailbox)) -> rusqlite::Result<(i64, Mailbox)> {
    mb.annotations = load_annotations(c, id)?;
    let mut st = c.prepare_cached(
        "SELECT old_name, at, modseq FROM name_history WHERE mailbox_id = ?1 ORDER BY seq",
    )?;
    let mut rows = st.query([id])?;
    while let Some(r) = rows.next()? {
        mb.name_history.push(NameChange {
            old_name: named!(MailboxName, r, 0, "old name"),
            at: UnixTime(r.get(1)?),
            modseq: ModSeq(u(r.get(2)?)),
        });
    }
    Ok((id, mb))
}

/// The mailbox matching `cond` (an SQL condition on one parameter).
pub(crate) fn mailbox_where(
    c: &Connection,
    cond: &str,
    key: &dyn rusqlite::ToSql,
) -> rusqlite::Result<Option<(i64, Mailbox)>> {
    let sql = format!("SELECT {MAILBOX_COLS} FROM mailboxes WHERE {cond} LIMIT 1");
    let row = c
        .prepare_cached(&sql)?
        .query_row([key], mailbox_row)
        .optional()?;
    row.map(|r| load_mailbox(c, r)).transpose()
}

fn mailboxes_where(
    c: &Connection,
    sql_tail: &str,
    p: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<Mailbox>> {
    let sql = format!("SELECT {MAILBOX_COLS} FROM mailboxes {sql_tail}");
    let mut st = c.prepare_cached(&sql)?;
    let rows: Vec<(i64, Mailbox)> = st
        .query_map(p, mailbox_row)?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(|r| load_mailbox(c, r).map(|(_, m)| m))
        .collect()
}

pub(crate) const RECORD_COLS: &str = "uid, modseq, last_updated, internaldate, size, guid, \
    system_flags, keywords, expunged, thrid, savedate, createdmodseq, annotations, peer_guid";

pub(crate) fn record_row(r: &Row<'_>) -> rusqlite::Result<Record> {
    let guid: Vec<u8> = r.get(5)?;
    let guid: [u8; 20] = guid.try_into().map_err(|_| bad("guid", "not 20 bytes"))?;
    let keywords: Vec<u8> = r.get(7)?;
    let mut flags = Flags::with(
        SystemFlags::from_bits_truncate(r.get::<_, i64>(6)? as u8),
        [],
    );
    for k in keywords.split(|&c| c == b' ').filter(|k| !k.is_empty()) {
        flags.insert_keyword(Keyword::new(k).map_err(|e| bad("keyword", e))?);
    }
    Ok(Record {
        uid: Uid::new(u32_of(r.get(0)?, "uid")?).map_err(|e| bad("uid", e))?,
        modseq: ModSeq(u(r.get(1)?)),
        last_updated: UnixTime(r.get(2)?),
        internaldate: UnixTime(r.get(3)?),
        size: u(r.get(4)?),
        guid: Guid::from_bytes(guid),
        flags,
        expunged: r.get::<_, i64>(8)? != 0,
        thrid: u(r.get(9)?),
        savedate: UnixTime(r.get(10)?),
        createdmodseq: ModSeq(u(r.get(11)?)),
        annotations: decode_annotations(r.get(12)?)?,
        peer_guid: r
            .get::<_, Option<Vec<u8>>>(13)?
            .map(|p| PeerMailGuid::new(p).map_err(|e| bad("peer guid", e)))
            .transpose()?,
    })
}

pub(crate) fn keywords_text(f: &Flags) -> Vec<u8> {
    let mut out = Vec::new();
    for k in f.keywords() {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(k.as_bytes());
    }
    out
}

fn tombstone_row(r: &Row<'_>) -> rusqlite::Result<Tombstone> {
    let guid: Vec<u8> = r.get(2)?;
    let guid: [u8; 16] = guid
        .try_into()
        .map_err(|_| bad("mailbox guid", "not 16 bytes"))?;
    let owner: Option<Vec<u8>> = r.get(3)?;
    Ok(Tombstone {
        uniqueid: named!(UniqueId, r, 0, "uniqueid"),
        name: named!(MailboxName, r, 1, "name"),
        guid: MailboxGuid::from_bytes(guid),
        owner: owner
            .map(|o| UserId::new(o).map_err(|e| bad("owner", e)))
            .transpose()?,
        deleted_at: UnixTime(r.get(4)?),
        modseq: ModSeq(u(r.get(5)?)),
    })
}

const TOMBSTONE_COLS: &str = "uniqueid, name, guid, owner, deleted_at, modseq";

/// The stored (partition, size) of a message.
pub(crate) fn message_row(c: &Connection, guid: &Guid) -> rusqlite::Result<Option<(String, u64)>> {
    c.prepare_cached("SELECT partition, size FROM messages WHERE guid = ?1")?
        .query_row([&guid.as_bytes()[..]], |r| Ok((r.get(0)?, u(r.get(1)?))))
        .optional()
}

/// The stored SYNC_CRC pair of a mailbox id.
pub(crate) fn stored_crcs(c: &Connection, mailbox_id: i64) -> rusqlite::Result<SyncCrcs> {
    c.prepare_cached("SELECT sync_crc, sync_crc_annot FROM mailboxes WHERE id = ?1")?
        .query_row([mailbox_id], |r| {
            Ok(SyncCrcs {
                basic: r.get::<_, i64>(0)? as u32,
                annot: r.get::<_, i64>(1)? as u32,
            })
        })
}

/// `MailRead` over one connection. Everything but message bytes (which
/// need the partitions: see `Reader`).
pub(crate) struct ConnRead<'a>(pub(crate) &'a Connection);

/// What the sync log derivation needs, read inside the writer's open
/// transaction (earlier batches of the group included).
impl engine::store::synclog::Names for ConnRead<'_> {
    fn name_of(&self, id: &UniqueId) -> Result<Option<MailboxName>, StoreError> {
        Ok(self.mailbox_full(id)?.map(|(_, m)| m.name))
    }
    fn mailbox_ids_of_user(&self, user: &UserId) -> Result<Vec<UniqueId>, StoreError> {
        Ok(self
            .mailboxes_of_user(user)?
            .into_iter()
            .map(|m| m.uniqueid)
            .collect())
    }
}

impl ConnRead<'_> {
    pub(crate) fn mailbox_id(&self, id: &UniqueId) -> Result<Option<i64>, StoreError> {
        self.0
            .prepare_cached("SELECT id FROM mailboxes WHERE uniqueid = ?1")
            .and_then(|mut s| s.query_row([id.as_bytes()], |r| r.get(0)).optional())
            .map_err(db)
    }

    pub(crate) fn mailbox_full(&self, id: &UniqueId) -> Result<Option<(i64, Mailbox)>, StoreError> {
        mailbox_where(self.0, "uniqueid = ?1", &id.as_bytes()).map_err(conv)
    }

    pub(crate) fn mailbox_by_name_full(
        &self,
        name: &MailboxName,
    ) -> Result<Option<(i64, Mailbox)>, StoreError> {
        mailbox_where(self.0, "name = ?1", &name.as_bytes()).map_err(conv)
    }

    pub(crate) fn records_of(
        &self,
        mailbox_id: i64,
        range: UidRange,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let sql = format!(
            "SELECT {RECORD_COLS} FROM records WHERE mailbox_id = ?1 AND uid BETWEEN ?2 AND ?3 \
             ORDER BY uid LIMIT ?4"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut st = self.0.prepare_cached(&sql).map_err(db)?;
        let rows = st
            .query_map(
                params![
                    mailbox_id,
                    range.first.get() as i64,
                    range.last.get() as i64,
                    limit
                ],
                record_row,
            )
            .map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(conv)
    }

    pub(crate) fn record_of(
        &self,
        mailbox_id: i64,
        uid: Uid,
    ) -> Result<Option<Record>, StoreError> {
        let sql = format!("SELECT {RECORD_COLS} FROM records WHERE mailbox_id = ?1 AND uid = ?2");
        self.0
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row(params![mailbox_id, uid.get() as i64], record_row)
                    .optional()
            })
            .map_err(conv)
    }

    pub(crate) fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError> {
        Ok(message_row(self.0, guid).map_err(db)?.map(|(_, s)| s))
    }

    pub(crate) fn users(&self) -> Result<Vec<UserId>, StoreError> {
        let mut st = self
            .0
            .prepare_cached("SELECT userid FROM users ORDER BY userid")
            .map_err(db)?;
        let rows = st
            .query_map([], |r| Ok(named!(UserId, r, 0, "user id")))
            .map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(conv)
    }

    pub(crate) fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
        Ok(self.mailbox_by_name_full(name)?.map(|(_, m)| m))
    }

    pub(crate) fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
        Ok(self.mailbox_full(id)?.map(|(_, m)| m))
    }

    pub(crate) fn mailbox_by_guid(
        &self,
        guid: &MailboxGuid,
    ) -> Result<Option<Mailbox>, StoreError> {
        Ok(mailbox_where(self.0, "guid = ?1", &&guid.as_bytes()[..])
            .map_err(conv)?
            .map(|(_, m)| m))
    }

    pub(crate) fn mailboxes_of_user(&self, user: &UserId) -> Result<Vec<Mailbox>, StoreError> {
        mailboxes_where(
            self.0,
            "WHERE owner = ?1 ORDER BY name",
            &[&user.as_bytes()],
        )
        .map_err(conv)
    }

    pub(crate) fn mailboxes(
        &self,
        after: Option<&MailboxName>,
        limit: usize,
    ) -> Result<Vec<Mailbox>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match after {
            Some(a) => mailboxes_where(
                self.0,
                "WHERE name > ?1 ORDER BY name LIMIT ?2",
                &[&a.as_bytes(), &limit],
            ),
            None => mailboxes_where(self.0, "ORDER BY name LIMIT ?1", &[&limit]),
        }
        .map_err(conv)
    }

    pub(crate) fn records(
        &self,
        mailbox: &UniqueId,
        range: UidRange,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        match self.mailbox_id(mailbox)? {
            Some(id) => self.records_of(id, range, limit),
            None => Ok(Vec::new()),
        }
    }

    pub(crate) fn record(
        &self,
        mailbox: &UniqueId,
        uid: Uid,
    ) -> Result<Option<Record>, StoreError> {
        match self.mailbox_id(mailbox)? {
            Some(id) => self.record_of(id, uid),
            None => Ok(None),
        }
    }

    pub(crate) fn sync_crcs(&self, mailbox: &UniqueId) -> Result<SyncCrcs, StoreError> {
        match self.mailbox_id(mailbox)? {
            Some(id) => stored_crcs(self.0, id).map_err(db),
            None => Ok(SyncCrcs::EMPTY),
        }
    }

    pub(crate) fn seen(
        &self,
        user: &UserId,
        mailbox: &UniqueId,
    ) -> Result<Option<Seen>, StoreError> {
        self.0
            .prepare_cached(
                "SELECT lastread, lastuid, lastchange, seenuids FROM seen \
                 WHERE userid = ?1 AND uniqueid = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![user.as_bytes(), mailbox.as_bytes()], |r| {
                    seen_row(r, 0)
                })
                .optional()
            })
            .map_err(conv)
    }

    pub(crate) fn seen_of_user(&self, user: &UserId) -> Result<Vec<(UniqueId, Seen)>, StoreError> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT uniqueid, lastread, lastuid, lastchange, seenuids FROM seen \
                 WHERE userid = ?1 ORDER BY uniqueid",
            )
            .map_err(db)?;
        let rows = st
            .query_map([user.as_bytes()], |r| {
                Ok((named!(UniqueId, r, 0, "uniqueid"), seen_row(r, 1)?))
            })
            .map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(conv)
    }

    pub(crate) fn subscriptions(
        &self,
        user: &UserId,
    ) -> Result<Vec<(MailboxName, Subscription)>, StoreError> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT name, subscribed, changed_at FROM subs WHERE userid = ?1 ORDER BY name",
            )
            .map_err(db)?;
        let rows = st
            .query_map([user.as_bytes()], |r| {
                Ok((
                    named!(MailboxName, r, 0, "subscription name"),
                    Subscription {
                        subscribed: r.get::<_, i64>(1)? != 0,
                        changed_at: UnixTime(r.get(2)?),
                    },
                ))
            })
            .map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(conv)
    }

    pub(crate) fn quota(&self, root: &MailboxName) -> Result<Option<QuotaRoot>, StoreError> {
        self.0
            .prepare_cached("SELECT limits, usage, modseq FROM quota WHERE root = ?1")
            .and_then(|mut s| {
                s.query_row([root.as_bytes()], |r| {
                    Ok(QuotaRoot {
                        limits: decode_quota_map(&r.get::<_, String>(0)?)?,
                        usage: decode_quota_map(&r.get::<_, String>(1)?)?,
                        modseq: ModSeq(u(r.get(2)?)),
                    })
                })
                .optional()
            })
            .map_err(conv)
    }

    pub(crate) fn sieve_scripts(&self, user: &UserId) -> Result<Vec<SieveScript>, StoreError> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT name, last_update, content FROM sieve WHERE userid = ?1 ORDER BY name",
            )
            .map_err(db)?;
        let rows = st
            .query_map([user.as_bytes()], |r| {
                Ok(SieveScript {
                    name: named!(SieveName, r, 0, "sieve name"),
                    last_update: UnixTime(r.get(1)?),
                    content: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                })
            })
            .map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(conv)
    }

    pub(crate) fn sieve_active(&self, user: &UserId) -> Result<Option<SieveName>, StoreError> {
        self.0
            .prepare_cached("SELECT name FROM sieve_active WHERE userid = ?1")
            .and_then(|mut s| {
                s.query_row([user.as_bytes()], |r| {
                    Ok(named!(SieveName, r, 0, "sieve name"))
                })
                .optional()
            })
            .map_err(conv)
    }

    pub(crate) fn server_annotations(&self) -> Result<Annotations, StoreError> {
        load_annotations(self.0, 0).map_err(conv)
    }

    pub(crate) fn tombstones_named(
        &self,
        name: &MailboxName,
    ) -> Result<Vec<Tombstone>, StoreError> {
        let sql = format!(
            "SELECT {TOMBSTONE_COLS} FROM tombstones WHERE name = ?1 ORDER BY deleted_at, uniqueid"
        );
        let mut st = self.0.prepare_cached(&sql).map_err(db)?;
        let rows = st.query_map([name.as_bytes()], tombstone_row).map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(conv)
    }

    pub(crate) fn tombstones_of_user(&self, user: &UserId) -> Result<Vec<Tombstone>, StoreError> {
        let sql =
            format!("SELECT {TOMBSTONE_COLS} FROM tombstones WHERE owner = ?1 ORDER BY uniqueid");
        let mut st = self.0.prepare_cached(&sql).map_err(db)?;
        let rows = st.query_map([user.as_bytes()], tombstone_row).map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(conv)
    }

    pub(crate) fn sync_log(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SyncLogLine)>, StoreError> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT seq, type, arg1, arg2 FROM sync_log WHERE channel = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3",
            )
            .map_err(db)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st
            .query_map(params![channel, i(after), limit], |r| {
                let t: String = r.get(1)?;
                let a: Vec<u8> = r.get(2)?;
                let b: Option<Vec<u8>> = r.get(3)?;
                Ok((u(r.get(0)?), decode_line(&t, &a, b.as_deref())?))
            })
            .map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(conv)
    }

    pub(crate) fn sync_log_last(&self, channel: &str) -> Result<u64, StoreError> {
        self.0
            .prepare_cached("SELECT last_seq FROM sync_log_channels WHERE channel = ?1")
            .and_then(|mut s| s.query_row([channel], |r| r.get::<_, i64>(0)).optional())
            .map(|v| v.map_or(0, u))
            .map_err(db)
    }
}

fn seen_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Seen> {
    let seenuids: String = r.get(at + 3)?;
    Ok(Seen {
        lastread: UnixTime(r.get(at)?),
        lastuid: u32_of(r.get(at + 1)?, "lastuid")?,
        lastchange: UnixTime(r.get(at + 2)?),
        seenuids: SeqSet::parse(seenuids.as_bytes()).map_err(|e| bad("seenuids", e))?,
    })
}

/// Forwards every `MailRead` method but the message-bytes ones to `ConnRead`.
macro_rules! forward_to_conn {
    () => {
        fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
            self.with(|c| c.mailbox(name))
        }
        fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
            self.with(|c| c.mailbox_by_uniqueid(id))
        }
        fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
            self.with(|c| c.mailbox_by_guid(guid))
        }
        fn mailboxes_of_user(&self, user: &UserId) -> Result<Vec<Mailbox>, StoreError> {
            self.with(|c| c.mailboxes_of_user(user))
        }
        fn mailboxes(
            &self,
            after: Option<&MailboxName>,
            limit: usize,
        ) -> Result<Vec<Mailbox>, StoreError> {
            self.with(|c| c.mailboxes(after, limit))
        }
        fn users(&self) -> Result<Vec<UserId>, StoreError> {
            self.with(|c| c.users())
        }
        fn records(
            &self,
            mailbox: &UniqueId,
            range: UidRange,
            limit: usize,
        ) -> Result<Vec<Record>, StoreError> {
            self.with(|c| c.records(mailbox, range, limit))
        }
        fn record(&self, mailbox: &UniqueId, uid: Uid) -> Result<Option<Record>, StoreError> {
            self.with(|c| c.record(mailbox, uid))
        }
        fn sync_crcs(&self, mailbox: &UniqueId) -> Result<SyncCrcs, StoreError> {
            self.with(|c| c.sync_crcs(mailbox))
        }
        fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError> {
            self.with(|c| c.message_size(guid))
        }
        fn seen(&self, user: &UserId, mailbox: &UniqueId) -> Result<Option<Seen>, StoreError> {
            self.with(|c| c.seen(user, mailbox))
        }
        fn seen_of_user(&self, user: &UserId) -> Result<Vec<(UniqueId, Seen)>, StoreError> {
            self.with(|c| c.seen_of_user(user))
        }
        fn subscriptions(
            &self,
            user: &UserId,
        ) -> Result<Vec<(MailboxName, Subscription)>, StoreError> {
            self.with(|c| c.subscriptions(user))
        }
        fn quota(&self, root: &MailboxName) -> Result<Option<QuotaRoot>, StoreError> {
            self.with(|c| c.quota(root))
        }
        fn sieve_scripts(&self, user: &UserId) -> Result<Vec<SieveScript>, StoreError> {
            self.with(|c| c.sieve_scripts(user))
        }
        fn sieve_active(&self, user: &UserId) -> Result<Option<SieveName>, StoreError> {
            self.with(|c| c.sieve_active(user))
        }
        fn server_annotations(&self) -> Result<Annotations, StoreError> {
            self.with(|c| c.server_annotations())
        }
        fn tombstones_named(&self, name: &MailboxName) -> Result<Vec<Tombstone>, StoreError> {
            self.with(|c| c.tombstones_named(name))
        }
        fn tombstones_of_user(&self, user: &UserId) -> Result<Vec<Tombstone>, StoreError> {
            self.with(|c| c.tombstones_of_user(user))
        }
        fn sync_log(
            &self,
            channel: &str,
            after: u64,
            limit: usize,
        ) -> Result<Vec<(u64, SyncLogLine)>, StoreError> {
            self.with(|c| c.sync_log(channel, after, limit))
        }
        fn sync_log_last(&self, channel: &str) -> Result<u64, StoreError> {
            self.with(|c| c.sync_log_last(channel))
        }
    };
}
pub(crate) use forward_to_conn;
