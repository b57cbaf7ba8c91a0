//! The model ↔ dlist edge of csync: how a [`Mailbox`], a [`Record`], a
//! quota root, a seen state are printed in the untagged replies of Cyrus
//! 3.6.1's sync_server (key order and value forms as it prints them), and
//! how the client's `APPLY MAILBOX` / RECORD kvlists are read back into the
//! model.
//!
//! Reading is strict where Cyrus is strict (a required key missing is
//! [`WireError::Missing`], answered `NO IMAP_PROTOCOL_BAD_PARAMETERS`) and
//! tolerant where it is tolerant (unknown keys ignored, annotation MODSEQ
//! and USERID NIL defaulted as 3.0 peers need). It never decides anything:
//! the checks of §5.3 live in [`super::apply`].

use bytes::Bytes;
use proto::dlist::{KvList, Value};

use crate::model::crc::{VIRTUAL_CREATEDMODSEQ, VIRTUAL_SAVEDATE, VIRTUAL_THRID};
use crate::model::{
    Acl, AnnotationEntry, AnnotationOwner, AnnotationValue, Annotations, Flags, Guid, Keyword,
    Mailbox, MailboxName, MailboxOptions, MailboxType, ModSeq, QuotaResource, QuotaRoot, Record,
    Seen, SeqSet, SyncCrcs, SystemFlags, Uid, UidValidity, UniqueId, UnixTime, UserId,
};

/// A value of a client's dlist we cannot use. Always the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Peer's fault: a key Cyrus requires is absent.
    #[error("missing required key {0}")]
    Missing(&'static str),
    /// Peer's fault: a key's value has the wrong type or grammar.
    #[error("bad value for {0}")]
    Bad(&'static str),
}

type R<T> = Result<T, WireError>;

pub(crate) fn get<'a>(kv: &'a KvList, key: &'static str) -> R<&'a Value> {
    match kv.get(key) {
        Some(v) => Ok(v),
        None => Err(WireError::Missing(key)),
    }
}

pub(crate) fn num(kv: &KvList, key: &'static str) -> R<u64> {
    get(kv, key)?.as_u64().ok_or(WireError::Bad(key))
}

pub(crate) fn num_opt(kv: &KvList, key: &'static str) -> R<Option<u64>> {
    match kv.get(key) {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(WireError::Bad(key)),
    }
}

pub(crate) fn bytes<'a>(kv: &'a KvList, key: &'static str) -> R<&'a [u8]> {
    match get(kv, key)? {
        // NIL reads as the empty string, as Cyrus's dlist_getatom does.
        Value::Nil => Ok(b""),
        v => v.as_bytes().ok_or(WireError::Bad(key)),
    }
}

pub(crate) fn bytes_opt<'a>(kv: &'a KvList, key: &'static str) -> R<Option<&'a [u8]>> {
    match kv.get(key) {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => v.as_bytes().map(Some).ok_or(WireError::Bad(key)),
    }
}

pub(crate) fn name(kv: &KvList, key: &'static str) -> R<MailboxName> {
    MailboxName::new(bytes(kv, key)?).map_err(|_| WireError::Bad(key))
}

pub(crate) fn user(kv: &KvList, key: &'static str) -> R<UserId> {
    UserId::new(bytes(kv, key)?).map_err(|_| WireError::Bad(key))
}

pub(crate) fn uniqueid(kv: &KvList, key: &'static str) -> R<UniqueId> {
    UniqueId::new(bytes(kv, key)?).map_err(|_| WireError::Bad(key))
}

fn time(n: u64) -> UnixTime {
    UnixTime(n.min(i64::MAX as u64) as i64)
}

fn time_num(t: UnixTime) -> Value {
    // Cyrus prints time_t with %llu: a negative one would wrap; we never
    // store one, so clamp.
    Value::num(t.0.max(0) as u64)
}

/// The owner of an internal mailbox name: `user.alice.X` → `alice`,
/// `example.com!user.jane.Sent` → `jane@example.com`,
/// `DELETED.user.alice.X.5F00AA` → `alice`; shared mailboxes have none.
pub fn owner_of(name: &MailboxName) -> Option<UserId> {
    let b = name.as_bytes();
    let (domain, rest) = match b.iter().position(|&c| c == b'!') {
        Some(i) => (Some(&b[..i]), &b[i + 1..]),
        None => (None, b),
    };
    let rest = rest.strip_prefix(b"DELETED.").unwrap_or(rest);
    let rest = rest.strip_prefix(b"user.")?;
    let local = rest.split(|&c| c == b'.').next()?;
    if local.is_empty() {
        return None;
    }
    // Cyrus keeps a '.' of a userid as '^' inside names.
    let mut id: Vec<u8> = local
        .iter()
        .map(|&c| if c == b'^' { b'.' } else { c })
        .collect();
    if let Some(d) = domain {
        id.push(b'@');
        id.extend_from_slice(d);
    }
    UserId::new(id).ok()
}

/// The INBOX name of a userid: `alice` → `user.alice`,
/// `jane.doe@example.com` → `example.com!user.jane^doe`.
pub fn inbox_of(user: &UserId) -> Option<MailboxName> {
    let b = user.as_bytes();
    let (local, domain) = match b.iter().rposition(|&c| c == b'@') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    let mut n = Vec::new();
    if let Some(d) = domain {
        n.extend_from_slice(d);
        n.push(b'!');
    }
    n.extend_from_slice(b"user.");
    n.extend(local.iter().map(|&c| if c == b'.' { b'^' } else { c }));
    MailboxName::new(n).ok()
}

/// `* MAILBOX %(…)` as sync_server 3.6.1 prints it (key order of
/// `sync_mailbox_dlist`/GET replies), RECORD only when given.
pub fn mailbox_kv(mb: &Mailbox, crcs: SyncCrcs, records: Option<Vec<Value>>) -> KvList {
    let mut kv = KvList::new();
    kv.push(
        "UNIQUEID",
        Value::string(Bytes::copy_from_slice(mb.uniqueid.as_bytes())),
    );
    kv.push(
        "MBOXNAME",
        Value::string(Bytes::copy_from_slice(mb.name.as_bytes())),
    );
    let t = mb.mbtype.to_cyrus();
    if !t.is_empty() {
        kv.push("MBOXTYPE", Value::string(t));
    }
    kv.push("SYNC_CRC", Value::num(crcs.basic.into()));
    kv.push("SYNC_CRC_ANNOT", Value::num(crcs.annot.into()));
    kv.push("LAST_UID", Value::num(mb.last_uid.into()));
    kv.push("HIGHESTMODSEQ", Value::num(mb.highestmodseq.get()));
    kv.push("RECENTUID", Value::num(mb.recentuid.into()));
    kv.push("RECENTTIME", time_num(mb.recenttime));
    kv.push("LAST_APPENDDATE", time_num(mb.last_appenddate));
    kv.push("POP3_LAST_LOGIN", time_num(mb.pop3_last_login));
    kv.push("POP3_SHOW_AFTER", time_num(mb.pop3_show_after));
    if mb.xconvmodseq.get() != 0 {
        kv.push("XCONVMODSEQ", Value::num(mb.xconvmodseq.get()));
    }
    if mb.raclmodseq.get() != 0 {
        kv.push("RACLMODSEQ", Value::num(mb.raclmodseq.get()));
    }
    kv.push("UIDVALIDITY", Value::num(mb.uidvalidity.get().into()));
    kv.push(
        "PARTITION",
        Value::string(Bytes::copy_from_slice(mb.partition.as_bytes())),
    );
    kv.push("ACL", Value::string(mb.acl.to_cyrus()));
    kv.push("OPTIONS", Value::string(mb.options.to_cyrus()));
    if let Some(q) = &mb.quotaroot {
        kv.push(
            "QUOTAROOT",
            Value::string(Bytes::copy_from_slice(q.as_bytes())),
        );
    }
    kv.push("CREATEDMODSEQ", Value::num(mb.createdmodseq.get()));
    kv.push("FOLDERMODSEQ", Value::num(mb.foldermodseq.get()));
    if !mb.annotations.is_empty() {
        kv.push("ANNOTATIONS", annotations_list(&mb.annotations, None));
    }
    if let Some(r) = records {
        kv.push("RECORD", Value::List(r));
    }
    kv
}

fn annotation_kv(entry: &[u8], owner: &[u8], modseq: u64, value: Value) -> Value {
    Value::KvList(
        KvList::new()
            .with("ENTRY", Value::string(Bytes::copy_from_slice(entry)))
            .with("USERID", Value::string(Bytes::copy_from_slice(owner)))
            .with("MODSEQ", Value::num(modseq))
            .with("VALUE", value),
    )
}

/// An ANNOTATIONS list; with `record`, the virtual entries Cyrus derives
/// from the record follow the stored ones (thrid, savedate, createdmodseq).
fn annotations_list(a: &Annotations, record: Option<&Record>) -> Value {
    let mut out: Vec<Value> = a
        .iter()
        .map(|(entry, owner, v)| {
            annotation_kv(
                entry.as_bytes(),
                owner.as_bytes(),
                v.modseq.get(),
                Value::string(v.value.clone()),
            )
        })
        .collect();
    if let Some(r) = record {
        if r.thrid != 0 {
            out.push(annotation_kv(
                VIRTUAL_THRID.as_bytes(),
                b"",
                0,
                Value::hex(r.thrid),
            ));
        }
        if r.savedate.0 != 0 {
            out.push(annotation_kv(
                VIRTUAL_SAVEDATE.as_bytes(),
                b"",
                0,
                time_num(r.savedate),
            ));
        }
        if r.createdmodseq.get() != 0 {
            out.push(annotation_kv(
                VIRTUAL_CREATEDMODSEQ.as_bytes(),
                b"",
                0,
                Value::num(r.createdmodseq.get()),
            ));
        }
    }
    Value::List(out)
}

/// One RECORD member as sync_server prints it.
pub fn record_kv(r: &Record) -> Value {
    let mut flags = Vec::new();
    for f in SystemFlags::CYRUS_ORDER {
        if f == SystemFlags::SEEN && r.expunged {
            flags.push(Value::flag(Bytes::from_static(b"\\Expunged")));
        }
        if r.flags.system.contains(f) {
            flags.push(Value::flag(Bytes::from_static(
                f.name().expect("single flag").as_bytes(),
            )));
        }
    }
    for k in r.flags.keywords() {
        flags.push(Value::flag(Bytes::copy_from_slice(k.as_bytes())));
    }
    let mut kv = KvList::new()
        .with("UID", Value::num(r.uid.get().into()))
        .with("MODSEQ", Value::num(r.modseq.get()))
        .with("LAST_UPDATED", time_num(r.last_updated))
        .with("FLAGS", Value::List(flags))
        .with("INTERNALDATE", time_num(r.internaldate))
        .with("SIZE", Value::num(r.size))
        .with("GUID", Value::Atom(Bytes::from(r.guid.to_hex())));
    let anns = annotations_list(&r.annotations, Some(r));
    if anns.as_list().is_some_and(|l| !l.is_empty()) {
        kv.push("ANNOTATIONS", anns);
    }
    Value::KvList(kv)
}

/// `* QUOTA %(ROOT … LIMIT n [STORAGE n] [MESSAGE n] [X-ANNOTATION-STORAGE n]
/// [X-NUM-FOLDERS n] MODSEQ n)` (LIMIT repeats STORAGE for 2.4 peers;
/// 4294967295 when storage is unlimited).
pub fn quota_kv(root: &MailboxName, q: &QuotaRoot) -> KvList {
    let mut kv = KvList::new();
    kv.push(
        "ROOT",
        Value::string(Bytes::copy_from_slice(root.as_bytes())),
    );
    let storage = q.limits.get(&QuotaResource::Storage).copied();
    kv.push("LIMIT", Value::num(storage.unwrap_or(u32::MAX.into())));
    for (res, key) in [
        (QuotaResource::Storage, "STORAGE"),
        (QuotaResource::Message, "MESSAGE"),
        (QuotaResource::AnnotationStorage, "X-ANNOTATION-STORAGE"),
        (QuotaResource::Mailbox, "X-NUM-FOLDERS"),
    ] {
        if let Some(l) = q.limits.get(&res) {
            kv.push(key, Value::num(*l));
        }
    }
    kv.push("MODSEQ", Value::num(q.modseq.get()));
    kv
}

/// An `APPLY QUOTA` argument as a quota root (RFC 9208 names first, then
/// the legacy `X-` ones; LIMIT alone, as 2.4 sends it, is STORAGE).
pub fn quota_of(kv: &KvList) -> R<(MailboxName, QuotaRoot)> {
    let root = name(kv, "ROOT")?;
    let mut q = QuotaRoot::default();
    let storage = match num_opt(kv, "STORAGE")? {
        Some(s) => Some(s),
        None => num_opt(kv, "LIMIT")?,
    };
    // Cyrus sends -1 ("unlimited") through a 32-bit field.
    let limited = |v: Option<u64>| v.filter(|&n| n != u64::from(u32::MAX) && n != u64::MAX);
    if let Some(s) = limited(storage) {
        q.limits.insert(QuotaResource::Storage, s);
    }
    if let Some(m) = limited(num_opt(kv, "MESSAGE")?) {
        q.limits.insert(QuotaResource::Message, m);
    }
    let ann = match num_opt(kv, "ANNOTATION-STORAGE")? {
        Some(v) => Some(v),
        None => num_opt(kv, "X-ANNOTATION-STORAGE")?,
    };
    if let Some(a) = limited(ann) {
        q.limits.insert(QuotaResource::AnnotationStorage, a);
    }
    let folders = match num_opt(kv, "MAILBOX")? {
        Some(v) => Some(v),
        None => num_opt(kv, "X-NUM-FOLDERS")?,
    };
    if let Some(f) = limited(folders) {
        q.limits.insert(QuotaResource::Mailbox, f);
    }
    q.modseq = ModSeq(num_opt(kv, "MODSEQ")?.unwrap_or(0));
    Ok((root, q))
}

/// `* SEEN %(UNIQUEID … LASTREAD n LASTUID n LASTCHANGE n SEENUIDS …)`.
pub fn seen_kv(mailbox: &UniqueId, s: &Seen) -> KvList {
    KvList::new()
        .with(
            "UNIQUEID",
            Value::string(Bytes::copy_from_slice(mailbox.as_bytes())),
        )
        .with("LASTREAD", time_num(s.lastread))
        .with("LASTUID", Value::num(s.lastuid.into()))
        .with("LASTCHANGE", time_num(s.lastchange))
        .with(
            "SEENUIDS",
            Value::string(Bytes::copy_from_slice(s.seenuids.as_str().as_bytes())),
        )
}

/// An `APPLY SEEN` argument.
pub fn seen_of(kv: &KvList) -> R<(UserId, UniqueId, Seen)> {
    Ok((
        user(kv, "USERID")?,
        uniqueid(kv, "UNIQUEID")?,
        Seen {
            lastread: time(num(kv, "LASTREAD")?),
            lastuid: num(kv, "LASTUID")? as u32,
            lastchange: time(num(kv, "LASTCHANGE")?),
            seenuids: SeqSet::parse(bytes(kv, "SEENUIDS")?)
                .map_err(|_| WireError::Bad("SEENUIDS"))?,
        },
    ))
}

/// Reads an ANNOTATIONS list into `out` (record virtual entries go to the
/// record fields when `record` is given). Tolerates MODSEQ missing and
/// USERID NIL (3.0 peers).
fn read_annotations(v: &Value, out: &mut Annotations, mut record: Option<&mut Record>) -> R<()> {
    let list = v.as_list().ok_or(WireError::Bad("ANNOTATIONS"))?;
    for a in list {
        let kv = a.as_kvlist().ok_or(WireError::Bad("ANNOTATIONS"))?;
        let entry = bytes(kv, "ENTRY")?;
        let userid = bytes(kv, "USERID")?;
        let value = match get(kv, "VALUE")? {
            Value::Nil => Bytes::new(),
            v => v.as_shared_bytes().ok_or(WireError::Bad("VALUE"))?.clone(),
        };
        let modseq = ModSeq(num_opt(kv, "MODSEQ")?.unwrap_or(0));
        if let Some(r) = record.as_deref_mut() {
            let text = std::str::from_utf8(&value).unwrap_or("");
            if entry == VIRTUAL_THRID.as_bytes() {
                r.thrid = u64::from_str_radix(text, 16).map_err(|_| WireError::Bad("thrid"))?;
                continue;
            } else if entry == VIRTUAL_SAVEDATE.as_bytes() {
                r.savedate = UnixTime(text.parse().map_err(|_| WireError::Bad("savedate"))?);
                continue;
            } else if entry == VIRTUAL_CREATEDMODSEQ.as_bytes() {
                r.createdmodseq =
                    ModSeq(text.parse().map_err(|_| WireError::Bad("createdmodseq"))?);
                continue;
            } else if entry == b"/vendor/cmu/cyrus-imapd/basethrid" {
                // A conversations-only field we do not keep.
                continue;
            }
        }
        if value.is_empty() {
            continue;
        }
        out.set(
            AnnotationEntry::new(entry).map_err(|_| WireError::Bad("ENTRY"))?,
            AnnotationOwner::from_bytes(userid).map_err(|_| WireError::Bad("USERID"))?,
            AnnotationValue { modseq, value },
        );
    }
    Ok(())
}

/// A RECORD member.
pub fn record_of(v: &Value) -> R<Record> {
    let kv = v.as_kvlist().ok_or(WireError::Bad("RECORD"))?;
    let uid = Uid::new(num(kv, "UID")? as u32).map_err(|_| WireError::Bad("UID"))?;
    let guid = get(kv, "GUID")?
        .as_bytes()
        .and_then(|b| Guid::parse(b).ok())
        .ok_or(WireError::Bad("GUID"))?;
    let mut r = Record::new(
        uid,
        ModSeq(num(kv, "MODSEQ")?),
        guid,
        num(kv, "SIZE")?,
        time(num(kv, "INTERNALDATE")?),
    );
    r.last_updated = time(num(kv, "LAST_UPDATED")?);
    let mut flags = Flags::new();
    for f in get(kv, "FLAGS")?.as_list().ok_or(WireError::Bad("FLAGS"))? {
        let f = f.as_bytes().ok_or(WireError::Bad("FLAGS"))?;
        if f.eq_ignore_ascii_case(b"\\Expunged") {
            r.expunged = true;
        } else if let Some(sf) = SystemFlags::from_name(f) {
            flags.system.insert(sf);
        } else if f.first() == Some(&b'\\') {
            // An unknown system flag (\Recent, \Unchanged…): Cyrus drops it.
        } else {
            flags.insert_keyword(Keyword::new(f).map_err(|_| WireError::Bad("FLAGS"))?);
        }
    }
    r.flags = flags;
    if let Some(a) = kv.get("ANNOTATIONS") {
        let mut anns = Annotations::new();
        read_annotations(a, &mut anns, Some(&mut r))?;
        r.annotations = anns;
    }
    Ok(r)
}

/// The header fields of an `APPLY MAILBOX` (everything but RECORD).
#[derive(Debug, Clone)]
pub struct MailboxHeader {
    /// UNIQUEID.
    pub uniqueid: UniqueId,
    /// MBOXNAME.
    pub name: MailboxName,
    /// MBOXTYPE (plain email when absent).
    pub mbtype: MailboxType,
    /// SYNC_CRC / SYNC_CRC_ANNOT (0 = unknown, don't check).
    pub crcs: SyncCrcs,
    /// HIGHESTMODSEQ.
    pub highestmodseq: ModSeq,
    /// LAST_UID.
    pub last_uid: u32,
    /// RECENTUID.
    pub recentuid: u32,
    /// RECENTTIME.
    pub recenttime: UnixTime,
    /// LAST_APPENDDATE.
    pub last_appenddate: UnixTime,
    /// POP3_LAST_LOGIN.
    pub pop3_last_login: UnixTime,
    /// POP3_SHOW_AFTER.
    pub pop3_show_after: UnixTime,
    /// XCONVMODSEQ.
    pub xconvmodseq: ModSeq,
    /// RACLMODSEQ.
    pub raclmodseq: ModSeq,
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// PARTITION.
    pub partition: Option<Bytes>,
    /// ACL.
    pub acl: Acl,
    /// OPTIONS.
    pub options: MailboxOptions,
    /// QUOTAROOT (sent, ignored by Cyrus's apply; kept for GET replies).
    pub quotaroot: Option<MailboxName>,
    /// CREATEDMODSEQ.
    pub createdmodseq: ModSeq,
    /// FOLDERMODSEQ (absent: HIGHESTMODSEQ).
    pub foldermodseq: Option<ModSeq>,
    /// Mailbox-level ANNOTATIONS (absent = none).
    pub annotations: Annotations,
    /// SINCE_MODSEQ / SINCE_CRC / SINCE_CRC_ANNOT.
    pub since: Option<(ModSeq, SyncCrcs)>,
}

/// Reads an `APPLY MAILBOX` / `RESTORE MAILBOX` header with Cyrus's
/// required keys (intermediate and tombstone types need only the ids).
/// `restore` relaxes the requirements as `RESTORE` does.
pub fn mailbox_header(kv: &KvList, restore: bool) -> R<MailboxHeader> {
    let mbtype = match bytes_opt(kv, "MBOXTYPE")? {
        Some(t) => MailboxType::parse(t).map_err(|_| WireError::Bad("MBOXTYPE"))?,
        None => MailboxType::default(),
    };
    let minimal = mbtype.intermediate || mbtype.deleted || restore;
    let uniqueid = match (restore, bytes_opt(kv, "UNIQUEID")?) {
        (true, None) => None,
        (_, v) => Some(
            UniqueId::new(v.ok_or(WireError::Missing("UNIQUEID"))?)
                .map_err(|_| WireError::Bad("UNIQUEID"))?,
        ),
    };
    let req = |key: &'static str| -> R<u64> {
        if minimal {
            Ok(num_opt(kv, key)?.unwrap_or(0))
        } else {
            num(kv, key)
        }
    };
    let hms = if restore {
        num_opt(kv, "HIGHESTMODSEQ")?.unwrap_or(0)
    } else {
        num(kv, "HIGHESTMODSEQ")?
    };
    let acl = match (minimal, bytes_opt(kv, "ACL")?) {
        (_, Some(a)) => Acl::parse_cyrus(a),
        (true, None) => Acl::default(),
        (false, None) => return Err(WireError::Missing("ACL")),
    };
    let options = match (minimal, bytes_opt(kv, "OPTIONS")?) {
        (_, Some(o)) => MailboxOptions::parse(o),
        (true, None) => MailboxOptions::default(),
        (false, None) => return Err(WireError::Missing("OPTIONS")),
    };
    let partition = bytes_opt(kv, "PARTITION")?.map(Bytes::copy_from_slice);
    if partition.is_none() && !minimal {
        return Err(WireError::Missing("PARTITION"));
    }
    let mut annotations = Annotations::new();
    if let Some(a) = kv.get("ANNOTATIONS") {
        read_annotations(a, &mut annotations, None)?;
    }
    let since = match num_opt(kv, "SINCE_MODSEQ")? {
        Some(m) => Some((
            ModSeq(m),
            SyncCrcs {
                basic: num_opt(kv, "SINCE_CRC")?.unwrap_or(0) as u32,
                annot: num_opt(kv, "SINCE_CRC_ANNOT")?.unwrap_or(0) as u32,
            },
        )),
        None => None,
    };
    let quotaroot = match bytes_opt(kv, "QUOTAROOT")? {
        Some(q) if !q.is_empty() => {
            Some(MailboxName::new(q).map_err(|_| WireError::Bad("QUOTAROOT"))?)
        }
        _ => None,
    };
    Ok(MailboxHeader {
        uniqueid: match uniqueid {
            Some(u) => u,
            // RESTORE without a uniqueid: the machine picks one.
            None => UniqueId::new("-").expect("valid"),
        },
        name: name(kv, "MBOXNAME")?,
        mbtype,
        crcs: SyncCrcs {
            basic: num_opt(kv, "SYNC_CRC")?.unwrap_or(0) as u32,
            annot: num_opt(kv, "SYNC_CRC_ANNOT")?.unwrap_or(0) as u32,
        },
        highestmodseq: ModSeq(hms),
        last_uid: req("LAST_UID")? as u32,
        recentuid: req("RECENTUID")? as u32,
        recenttime: time(req("RECENTTIME")?),
        last_appenddate: time(req("LAST_APPENDDATE")?),
        pop3_last_login: time(req("POP3_LAST_LOGIN")?),
        pop3_show_after: time(num_opt(kv, "POP3_SHOW_AFTER")?.unwrap_or(0)),
        xconvmodseq: ModSeq(num_opt(kv, "XCONVMODSEQ")?.unwrap_or(0)),
        raclmodseq: ModSeq(num_opt(kv, "RACLMODSEQ")?.unwrap_or(0)),
        uidvalidity: req("UIDVALIDITY")? as u32,
        partition,
        acl,
        options,
        quotaroot,
        createdmodseq: ModSeq(num_opt(kv, "CREATEDMODSEQ")?.unwrap_or(0)),
        foldermodseq: num_opt(kv, "FOLDERMODSEQ")?.map(ModSeq),
        annotations,
        since,
    })
}

/// A mailbox-level annotation list as `* ANNOTATION` lines carry them
/// (`MBOXNAME ENTRY USERID VALUE`, no MODSEQ in 3.6.1).
pub fn annotation_line(
    mboxname: &[u8],
    entry: &AnnotationEntry,
    owner: &AnnotationOwner,
    value: &Bytes,
) -> KvList {
    KvList::new()
        .with("MBOXNAME", Value::string(Bytes::copy_from_slice(mboxname)))
        .with(
            "ENTRY",
            Value::string(Bytes::copy_from_slice(entry.as_bytes())),
        )
        .with(
            "USERID",
            Value::string(Bytes::copy_from_slice(owner.as_bytes())),
        )
        .with("VALUE", Value::string(value.clone()))
}

/// A UIDVALIDITY from the wire (0 is not valid in the model: use 1).
pub fn uidvalidity(n: u32) -> UidValidity {
    UidValidity::new(n.max(1)).expect("non-zero")
}
