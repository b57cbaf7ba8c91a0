//! The MUPDATE database as a Cyrus 3.6 `mailboxes.db`: the file a Murder
//! frontend's imapd/lmtpd read to route, kept by the frontend's MUPDATE
//! slave.
//!
//! Entries are written exactly as the real 3.6.1 slave writes them for
//! remote mailboxes (observed: real `mupdate` slave following the real
//! master, its file dumped with `cyr_dbtool … show`):
//!
//! ```text
//! Nuser^_alice          %(T er P default S be1.peers M 1795316789 A %(alice lrswipkxtecdan))
//! Nuser^_bob            %(T erz P default S be2.peers M 1795316789 A %())       (RESERVEd)
//! Nexample.com^]user^_carol  %(T er P default S be1.peers M … A %(carol lrs))
//! Nshared^_x y          %(T er S nobang M … A %())                            (location without !)
//! Nuser^_dave           %(T er P "" S be1.peers M … A %())                    (location be1.peers!)
//! ```
//!
//! * Key: `N` + the "dbname": the internal name with `.` → 0x1F and the
//!   virtual-domain `!` → 0x1D. No `I<uniqueid>` key (remote entries have
//!   no uniqueid).
//! * Value: a dlist kvlist: `T` type (`e` email, `r` remote, `z` reserved),
//!   `P` partition and `S` server (the location split at its first `!`),
//!   `M` the time written, `A` the ACL as `%(id rights …)` from MUPDATE's
//!   `id\trights\t…` form.
//!
//! Only remote entries (type with `r`) are the slave's: [`decode`] reports
//! anything else as not ours, and the slave never loads, changes or
//! deletes it (a unified-mode frontend may host mailboxes of its own).
//!
//! What it never does: touch the file (that is [`crate::cyrusdb::twoskip`])
//! or decide MUPDATE writes.

use bytes::Bytes;
use engine::mupdate::{Record, State};
use proto::dlist::{parse_value, Encoder, KvList, LiteralStyle, Value};
use proto::frame::{Event, Framer};

/// Hierarchy separator in a dbname (US).
const HIERSEP: u8 = 0x1f;
/// Domain separator in a dbname (GS).
const DOMSEP: u8 = 0x1d;

/// The mailboxes.db key of an internal mailbox name (`user.alice`,
/// `example.com!user.carol`).
pub fn key_of(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(b'N');
    let (domain, rest) = match name.iter().position(|&b| b == b'!') {
        Some(i) => (Some(&name[..i]), &name[i + 1..]),
        None => (None, name),
    };
    if let Some(d) = domain {
        k.extend_from_slice(d);
        k.push(DOMSEP);
    }
    k.extend(rest.iter().map(|&b| if b == b'.' { HIERSEP } else { b }));
    k
}

/// The internal mailbox name of a mailboxes.db key, if it is a name key
/// (`N…`).
pub fn name_of(key: &[u8]) -> Option<Bytes> {
    let db = key.strip_prefix(b"N")?;
    let mut n = Vec::with_capacity(db.len());
    let (domain, rest) = match db.iter().position(|&b| b == DOMSEP) {
        Some(i) => (Some(&db[..i]), &db[i + 1..]),
        None => (None, db),
    };
    if let Some(d) = domain {
        n.extend_from_slice(d);
        n.push(b'!');
    }
    n.extend(rest.iter().map(|&b| if b == HIERSEP { b'.' } else { b }));
    Some(Bytes::from(n))
}

/// The value the real slave writes for `record`, stamped `mtime` (Unix
/// seconds).
pub fn encode(record: &Record, mtime: u64) -> Vec<u8> {
    let mut kv = KvList::new();
    let reserved = matches!(record.state, State::Reserved);
    kv.push(
        "T",
        Value::Atom(Bytes::from_static(if reserved { b"erz" } else { b"er" })),
    );
    let loc = &record.location;
    let (server, partition) = match loc.iter().position(|&b| b == b'!') {
        Some(i) => (loc.slice(..i), Some(loc.slice(i + 1..))),
        None => (loc.clone(), None),
    };
    if let Some(p) = partition {
        kv.push("P", Value::string(p));
    }
    kv.push("S", Value::string(server));
    kv.push("M", Value::num(mtime));
    let mut acl = KvList::new();
    if let State::Active { acl: text } = &record.state {
        // `id\trights\t` pairs; an unfinished pair is dropped, as Cyrus does.
        let mut parts = text.split(|&b| b == b'\t');
        while let (Some(id), Some(rights)) = (parts.next(), parts.next()) {
            if id.is_empty() {
                break;
            }
            acl.push(
                Bytes::copy_from_slice(id),
                Value::string(Bytes::copy_from_slice(rights)),
            );
        }
    }
    kv.push("A", Value::KvList(acl));
    let mut e = Encoder::new(LiteralStyle::NonSync);
    e.value(&Value::KvList(kv));
    e.finish().text().to_vec()
}

/// What a mailboxes.db value holds, for the slave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A remote entry: the slave's, as a MUPDATE record.
    Remote(Record),
    /// A local (or otherwise not remote) mailbox: not the slave's.
    NotOurs,
}

/// Why a value could not be read (the file's fault: damaged, or written
/// by something that is not Cyrus).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The file's: the value is not a dlist kvlist.
    #[error("not a dlist kvlist")]
    NotKvList,
    /// The file's: a remote entry without a server.
    #[error("remote entry without a server (S)")]
    NoServer,
}

/// Reads a value written by [`encode`] or by Cyrus.
pub fn decode(value: &[u8]) -> Result<Decoded, DecodeError> {
    // Legacy (pre-dlist) values are local-only in practice; not ours.
    if !value.starts_with(b"%(") {
        return Ok(Decoded::NotOurs);
    }
    let mut framer = Framer::new(proto::frame::Options {
        line_bytes_max: value.len() + 16,
        literal_bytes_max: value.len() as u64,
        inline_literal_bytes_max: value.len(),
        ..proto::mupdate::client_frame_options()
    });
    framer.handle_input(value);
    framer.handle_input(b"\r\n");
    let msg = match framer.poll_event() {
        Ok(Some(Event::Message(m))) => m,
        _ => return Err(DecodeError::NotKvList),
    };
    let v = parse_value(&msg, 0).map_err(|_| DecodeError::NotKvList)?;
    let kv = v.as_kvlist().ok_or(DecodeError::NotKvList)?;
    let kind = kv.get("T").and_then(Value::as_bytes).unwrap_or(b"e");
    if !kind.contains(&b'r') {
        return Ok(Decoded::NotOurs);
    }
    let server = kv
        .get("S")
        .and_then(Value::as_bytes)
        .ok_or(DecodeError::NoServer)?;
    let mut location = server.to_vec();
    if let Some(p) = kv.get("P").and_then(Value::as_bytes) {
        location.push(b'!');
        location.extend_from_slice(p);
    }
    let state = if kind.contains(&b'z') {
        State::Reserved
    } else {
        let mut acl = Vec::new();
        if let Some(a) = kv.get("A").and_then(Value::as_kvlist) {
            for (id, rights) in a.iter() {
                acl.extend_from_slice(id);
                acl.push(b'\t');
                acl.extend_from_slice(rights.as_bytes().unwrap_or(b""));
                acl.push(b'\t');
            }
        }
        State::Active {
            acl: Bytes::from(acl),
        }
    };
    Ok(Decoded::Remote(Record {
        state,
        location: Bytes::from(location),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(loc: &'static str, acl: &'static str) -> Record {
        Record {
            state: State::Active {
                acl: Bytes::from_static(acl.as_bytes()),
            },
            location: Bytes::from_static(loc.as_bytes()),
        }
    }

    /// The exact values the real 3.6.1 slave wrote (module doc).
    #[test]
    fn values_as_the_real_slave_writes_them() {
        let t = 1795316789;
        assert_eq!(
            encode(&active("be1.peers!default", "alice\tlrswipkxtecdan\t"), t),
            b"%(T er P default S be1.peers M 1795316789 A %(alice lrswipkxtecdan))"
        );
        assert_eq!(
            encode(
                &active("be1.peers!p2", "alice\tlrswipkxtecdan\tanyone\tlrs\t"),
                t
            ),
            b"%(T er P p2 S be1.peers M 1795316789 A %(alice lrswipkxtecdan anyone lrs))"
        );
        let reserved = Record {
            state: State::Reserved,
            location: Bytes::from_static(b"be2.peers!default"),
        };
        assert_eq!(
            encode(&reserved, t),
            b"%(T erz P default S be2.peers M 1795316789 A %())"
        );
        assert_eq!(
            encode(&active("nobang", ""), t),
            b"%(T er S nobang M 1795316789 A %())"
        );
        assert_eq!(
            encode(&active("be1.peers!", ""), t),
            b"%(T er P \"\" S be1.peers M 1795316789 A %())"
        );
        for r in [
            active("be1.peers!default", "alice\tlrswipkxtecdan\t"),
            active("be1.peers!p2", "alice\tlrswipkxtecdan\tanyone\tlrs\t"),
            reserved,
            active("nobang", ""),
            active("be1.peers!", ""),
        ] {
            assert_eq!(decode(&encode(&r, t)), Ok(Decoded::Remote(r)));
        }
    }

    #[test]
    fn names_and_keys() {
        assert_eq!(key_of(b"user.alice.Sent"), b"Nuser\x1falice\x1fSent");
        assert_eq!(
            key_of(b"example.com!user.carol"),
            b"Nexample.com\x1duser\x1fcarol"
        );
        for n in [
            "user.alice.Sent",
            "example.com!user.carol",
            "shared.x y",
            "user.a^b",
        ] {
            assert_eq!(&name_of(&key_of(n.as_bytes())).unwrap()[..], n.as_bytes());
        }
        assert_eq!(name_of(b"Iabc"), None);
    }

    #[test]
    fn local_entries_are_not_ours() {
        assert_eq!(
            decode(b"%(T e I 4b2a P default V 1700000000 M 1700000001 A %(alice lrs))"),
            Ok(Decoded::NotOurs)
        );
        assert_eq!(decode(b"%(T er P x"), Err(DecodeError::NotKvList));
    }
}
