//! Mailbox attributes (IMAP METADATA) in a dsync session: the `A` records
//! each side sends after a mailbox's `B`, and the pure merge of the
//! peer's list into ours.
//!
//! corvid keeps a mailbox's attributes as its mailbox annotations
//! ([`Mailbox::annotations`]), keyed the way Cyrus and IMAP METADATA name
//! them: Dovecot's private attribute `comment` is our entry `/comment`
//! owned by the syncing user (`/private/comment` in METADATA), its shared
//! attribute `comment` is `/comment` owned by nobody (`/shared/comment`).
//! Private values of other owners never travel: a dsync session is one
//! user's.
//!
//! The merge follows Dovecot 2.3's importer
//! (`dsync_mailbox_import_attribute_real`), so a corvid brain and a real
//! Dovecot decide the same way from the same inputs:
//!
//! 1. a delete of something neither side has: nothing;
//! 2. we have nothing under the key: take the peer's;
//! 3. with a saved state, the side whose modseq moved past the last common
//!    modseq since the last sync wins ("changed remotely"/"changed locally");
//! 4. else the newer `last_change` timestamp wins;
//! 5. equal timestamps: equal values change nothing; else the higher
//!    modseq wins; else a value beats no value, and between two values the
//!    bytewise greater one wins (both sides pick the same).
//!
//! A backup destination takes the source's list as it is and drops what
//! the source lacks; a backup source is never written.
//!
//! What this never does: I/O, or invent a change time. corvid's stores
//! keep no change timestamp per annotation and no tombstone for a deleted
//! one, so corvid sends `last_change` as "not sent" (0) and never sends a
//! delete: between two full syncs a value set on Dovecot's side (which
//! has a timestamp) beats a different value set on ours; with a `-s` state
//! rule 3 decides by modseq and both directions work. A store that keeps
//! both (timestamp and tombstone per entry) would close that gap.

use bytes::Bytes;
use proto::dsync::{AttributeType, MailboxAttribute};

use crate::model::{AnnotationEntry, AnnotationOwner, AnnotationValue, Mailbox, ModSeq, UserId};
use crate::store::Mutation;

use super::Mode;

/// Our annotation (entry, owner) for a Dovecot attribute, if it maps.
pub fn to_entry(
    attr_type: AttributeType,
    key: &[u8],
    user: &UserId,
) -> Option<(AnnotationEntry, AnnotationOwner)> {
    if key.is_empty() {
        return None;
    }
    let mut name = Vec::with_capacity(key.len() + 1);
    name.push(b'/');
    name.extend_from_slice(key);
    let entry = AnnotationEntry::new(name).ok()?;
    let owner = match attr_type {
        AttributeType::Private => AnnotationOwner::User(user.clone()),
        AttributeType::Shared => AnnotationOwner::Shared,
    };
    Some((entry, owner))
}

/// The Dovecot attribute (type, key) for one of our annotations, if it is
/// the syncing user's or shared.
pub fn to_attribute(
    entry: &AnnotationEntry,
    owner: &AnnotationOwner,
    user: &UserId,
) -> Option<(AttributeType, Bytes)> {
    let key = entry.as_bytes().strip_prefix(b"/")?;
    if key.is_empty() {
        return None;
    }
    let t = match owner {
        AnnotationOwner::Shared => AttributeType::Shared,
        AnnotationOwner::User(u) if u == user => AttributeType::Private,
        AnnotationOwner::User(_) => return None,
    };
    Some((t, Bytes::copy_from_slice(key)))
}

/// Our `A` list for a mailbox, in (entry, owner) order.
pub fn export(mb: &Mailbox, user: &UserId) -> Vec<MailboxAttribute> {
    mb.annotations
        .iter()
        .filter_map(|(e, o, v)| {
            let (attr_type, key) = to_attribute(e, o, user)?;
            Some(MailboxAttribute {
                attr_type,
                key,
                value: Some(v.value.clone()),
                stream: false,
                deleted: false,
                last_change: 0,
                modseq: v.modseq.0,
                extra: Vec::new(),
            })
        })
        .collect()
}

/// One attribute as it stands on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side<'a> {
    /// The value; `None` when deleted or never set.
    pub value: Option<&'a [u8]>,
    /// Unix time of the last change; 0 unknown.
    pub last_change: i64,
    /// Modseq of the last change; 0 unknown.
    pub modseq: u64,
}

/// Whether the peer's attribute replaces ours (Dovecot 2.3's rules, module
/// doc). `local` is `None` when we know nothing of the key;
/// `last_common_modseq` is the saved state's (0 without one).
pub fn remote_wins(remote: &Side<'_>, local: Option<&Side<'_>>, last_common_modseq: u64) -> bool {
    let Some(local) = local.filter(|l| l.value.is_some()) else {
        // Rules 1 and 2: nothing here, so a value is taken and a delete
        // has nothing to do.
        return remote.value.is_some();
    };
    let lcm = last_common_modseq;
    if lcm > 0 {
        if local.modseq <= lcm && remote.modseq > lcm {
            return true;
        }
        if local.modseq > lcm && remote.modseq <= lcm {
            return false;
        }
    }
    if remote.last_change != local.last_change {
        return remote.last_change > local.last_change;
    }
    match (remote.value, local.value) {
        (Some(r), Some(l)) if r == l => false,
        _ if remote.modseq != local.modseq => remote.modseq > local.modseq,
        (Some(r), Some(l)) => r > l,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The store writes that merge the peer's `A` list into mailbox `mb`
/// (values already read from their streams), each change at `modseq`.
pub fn merge(
    mb: &Mailbox,
    user: &UserId,
    remote: &[MailboxAttribute],
    last_common_modseq: u64,
    mode: Mode,
    modseq: ModSeq,
) -> (Vec<Mutation>, Vec<String>) {
    let mut muts = Vec::new();
    let mut notes = Vec::new();
    if mode == Mode::BackupSend {
        return (muts, notes);
    }
    let mut seen = std::collections::BTreeSet::new();
    for a in remote {
        let Some((entry, owner)) = to_entry(a.attr_type, &a.key, user) else {
            continue;
        };
        seen.insert((entry.clone(), owner.clone()));
        let value = if a.deleted { None } else { a.value.as_deref() };
        let theirs = Side {
            value,
            last_change: a.last_change,
            modseq: a.modseq,
        };
        let ours = mb.annotations.get(&entry, &owner);
        let ours_side = ours.map(|v| Side {
            value: Some(&v.value[..]),
            last_change: 0,
            modseq: v.modseq.0,
        });
        let take = match mode {
            Mode::BackupRecv => ours.map(|v| &v.value[..]) != value,
            _ => remote_wins(&theirs, ours_side.as_ref(), last_common_modseq),
        };
        if !take {
            continue;
        }
        let new = value.map(Bytes::copy_from_slice).unwrap_or_default();
        notes.push(format!(
            "attribute {} {} from peer",
            String::from_utf8_lossy(&a.key),
            if new.is_empty() { "deleted" } else { "set" }
        ));
        muts.push(Mutation::SetAnnotation {
            mailbox: Some(mb.uniqueid.clone()),
            entry,
            owner,
            value: AnnotationValue { modseq, value: new },
        });
    }
    if mode == Mode::BackupRecv {
        // The destination becomes the source's copy: what the source
        // lacks goes (only what would travel: this user's and shared).
        for (e, o, _) in mb.annotations.iter() {
            if to_attribute(e, o, user).is_none() || seen.contains(&(e.clone(), o.clone())) {
                continue;
            }
            notes.push(format!(
                "attribute {} deleted (not on source)",
                String::from_utf8_lossy(e.as_bytes())
            ));
            muts.push(Mutation::SetAnnotation {
                mailbox: Some(mb.uniqueid.clone()),
                entry: e.clone(),
                owner: o.clone(),
                value: AnnotationValue {
                    modseq,
                    value: Bytes::new(),
                },
            });
        }
    }
    (muts, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(v: Option<&[u8]>, t: i64, m: u64) -> Side<'_> {
        Side {
            value: v,
            last_change: t,
            modseq: m,
        }
    }

    #[test]
    fn rules_match_dovecots_importer() {
        // Nothing here: a value is taken, a delete ignored.
        assert!(remote_wins(&side(Some(b"a"), 5, 1), None, 0));
        assert!(!remote_wins(&side(None, 5, 1), None, 0));
        // State: changed only remotely / only locally.
        assert!(remote_wins(
            &side(Some(b"a"), 1, 9),
            Some(&side(Some(b"b"), 7, 3)),
            5
        ));
        assert!(!remote_wins(
            &side(Some(b"a"), 9, 3),
            Some(&side(Some(b"b"), 1, 9)),
            5
        ));
        // Timestamps.
        assert!(remote_wins(
            &side(Some(b"a"), 9, 1),
            Some(&side(Some(b"b"), 7, 1)),
            0
        ));
        assert!(!remote_wins(
            &side(Some(b"a"), 6, 1),
            Some(&side(Some(b"b"), 7, 1)),
            0
        ));
        // Equal time: equal values, then modseq, then the greater value.
        assert!(!remote_wins(
            &side(Some(b"a"), 7, 9),
            Some(&side(Some(b"a"), 7, 1)),
            0
        ));
        assert!(remote_wins(
            &side(Some(b"a"), 7, 9),
            Some(&side(Some(b"b"), 7, 1)),
            0
        ));
        assert!(remote_wins(
            &side(Some(b"b"), 7, 1),
            Some(&side(Some(b"a"), 7, 1)),
            0
        ));
        assert!(!remote_wins(
            &side(Some(b"a"), 7, 1),
            Some(&side(Some(b"b"), 7, 1)),
            0
        ));
        // A newer delete wins over an older value.
        assert!(remote_wins(
            &side(None, 9, 1),
            Some(&side(Some(b"b"), 7, 1)),
            0
        ));
    }

    #[test]
    fn both_sides_pick_the_same() {
        // For any two distinct states with equal knowledge, exactly one
        // side takes the other's value (or neither when equal).
        let vals: [Option<&[u8]>; 3] = [None, Some(b"a"), Some(b"b")];
        for a in vals {
            for b in vals {
                for (ta, tb) in [(0, 0), (1, 2), (2, 1)] {
                    for (ma, mb) in [(1, 1), (1, 2), (2, 1)] {
                        let (x, y) = (side(a, ta, ma), side(b, tb, mb));
                        if a.is_none() || b.is_none() {
                            continue;
                        }
                        let x_takes = remote_wins(&y, Some(&x), 0);
                        let y_takes = remote_wins(&x, Some(&y), 0);
                        if a == b {
                            // Taking an equal value changes nothing.
                            assert!(!(x_takes && y_takes));
                            assert!(ta != tb || (!x_takes && !y_takes));
                        } else {
                            assert!(x_takes != y_takes, "{a:?}/{b:?} {ta}/{tb} {ma}/{mb}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn keys_map_to_annotation_entries_and_back() {
        let u = UserId::new("alice").expect("valid");
        let (e, o) = to_entry(AttributeType::Private, b"comment", &u).expect("maps");
        assert_eq!(e.as_bytes(), b"/comment");
        assert_eq!(o, AnnotationOwner::User(u.clone()));
        let (t, k) = to_attribute(&e, &o, &u).expect("maps");
        assert_eq!((t, &k[..]), (AttributeType::Private, &b"comment"[..]));
        let other = AnnotationOwner::User(UserId::new("bob").expect("valid"));
        assert!(to_attribute(&e, &other, &u).is_none());
        assert!(to_entry(AttributeType::Shared, b"", &u).is_none());
    }
}
