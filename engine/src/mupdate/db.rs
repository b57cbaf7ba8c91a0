//! The MUPDATE database model: `name → (state, location, ACL)` and the
//! rules by which RESERVE / ACTIVATE / DEACTIVATE / DELETE change it.
//!
//! [`Database::decide`] is the one place those rules live: the daemon calls
//! it under its database lock, so two connections racing for a name get
//! one decision each, in order. It returns the [`Change`] to make durable
//! (and to push to UPDATE subscribers) or the `NO` text for the client.
//!
//! Rules (Cyrus 3.6.1 `mupdate_config: standard`, observed in
//! `mupdate-states.txt`), with the three places where Cyrus crashes
//! answered instead:
//!
//! | command | current | result |
//! |---|---|---|
//! | RESERVE n l | absent | reserved at l |
//! | RESERVE n l | any state at l | reserved at l (an active entry is demoted, ACL dropped: Cyrus's tolerance for replicated backends) |
//! | RESERVE n l | at another location | `NO "mailbox already exists"` |
//! | ACTIVATE n l a | anything | active at l with ACL a (create, move, or ACL change) |
//! | DEACTIVATE n l | active anywhere | reserved at l (ACL dropped) |
//! | DEACTIVATE n l | reserved at another location | `NO "mailbox not currently active"` |
//! | DEACTIVATE n l | reserved at l | unchanged, OK (Cyrus: `abort()`) |
//! | DEACTIVATE n l | absent | `NO "mailbox does not exist"` (Cyrus: segfault) |
//! | DELETE n | present | absent |
//! | DELETE n | absent | `NO "mailbox does not exist"` (Cyrus: segfault) |
//!
//! Other topologies (`mupdate_config`, [`Topology`]): in `unified` and
//! `replicated` murders Cyrus's master skips the three "standard" checks,
//! because replicated backends sharing a servername send each write twice
//! (mupdate.c `cmd_set`). [`Database::decide_in`] follows it:
//!
//! | command | current | standard | unified / replicated |
//! |---|---|---|---|
//! | RESERVE n l | at another location | `NO "mailbox already exists"` | reserved at l |
//! | DEACTIVATE n l | reserved at another location | `NO "mailbox not currently active"` | reserved at l |
//! | DEACTIVATE n l | absent | `NO "mailbox does not exist"` | reserved at l (Cyrus: `abort()`) |
//! | DELETE n | absent | `NO "mailbox does not exist"` | OK, nothing changes |
//!
//! Deliberately *not* copied: Cyrus drops the ACL of a location without
//! `!` when it stores it (a twoskip record quirk); and it truncates names
//! over 490 bytes in LIST/UPDATE. Here what was stored is what is shown.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

/// An entry's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    /// `RESERVE`d: the name is taken, the mailbox is not usable yet.
    Reserved,
    /// Active, with its ACL (opaque, Cyrus's `id\trights\t…` form).
    Active {
        /// ACL string.
        acl: Bytes,
    },
}

/// What the database holds for one name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// Reserved or active.
    pub state: State,
    /// `server!partition`, opaque.
    pub location: Bytes,
}

impl Record {
    /// The server part of the location (before the first `!`; all of it if
    /// there is no `!`), which PARTIAL-UPDATE filters on.
    pub fn server(&self) -> &[u8] {
        server_of(&self.location)
    }
}

/// The server part of a location.
pub fn server_of(location: &[u8]) -> &[u8] {
    match location.iter().position(|&b| b == b'!') {
        Some(i) => &location[..i],
        None => location,
    }
}

/// A named record (LIST and UPDATE output).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Mailbox name.
    pub name: Bytes,
    /// Its record.
    pub record: Record,
}

/// A write command, as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Write {
    /// `RESERVE name location`
    Reserve {
        /// Name.
        name: Bytes,
        /// Location.
        location: Bytes,
    },
    /// `ACTIVATE name location acl`
    Activate {
        /// Name.
        name: Bytes,
        /// Location.
        location: Bytes,
        /// ACL.
        acl: Bytes,
    },
    /// `DEACTIVATE name location`
    Deactivate {
        /// Name.
        name: Bytes,
        /// Location.
        location: Bytes,
    },
    /// `DELETE name`
    Delete {
        /// Name.
        name: Bytes,
    },
}

impl Write {
    /// The name written.
    pub fn name(&self) -> &Bytes {
        match self {
            Write::Reserve { name, .. }
            | Write::Activate { name, .. }
            | Write::Deactivate { name, .. }
            | Write::Delete { name } => name,
        }
    }
}

/// One decided change of one name: what it was and what it becomes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    /// The name.
    pub name: Bytes,
    /// The record before (`None`: absent).
    pub before: Option<Record>,
    /// The record after (`None`: deleted).
    pub after: Option<Record>,
}

impl Change {
    /// `true` if a PARTIAL-UPDATE subscriber for `hosts` should hear of
    /// this change: the old or the new server is one of them (Cyrus's rule;
    /// an empty list means every change).
    pub fn concerns(&self, hosts: &[Bytes]) -> bool {
        if hosts.is_empty() {
            return true;
        }
        let hit = |r: &Option<Record>| {
            r.as_ref()
                .is_some_and(|r| hosts.iter().any(|h| h[..] == *r.server()))
        };
        hit(&self.before) || hit(&self.after)
    }
}

/// Why a write was refused: the client's `NO` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Client's: RESERVE of a name held at another location.
    #[error("mailbox already exists")]
    Exists,
    /// Client's: DEACTIVATE of a name reserved at another location.
    #[error("mailbox not currently active")]
    NotActive,
    /// Client's: DEACTIVATE or DELETE of a name that is not there.
    #[error("mailbox does not exist")]
    Missing,
}

/// A Murder's topology, Cyrus's `mupdate_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// `standard`: frontends and backends are separate machines.
    #[default]
    Standard,
    /// `unified`: every server is frontend and backend at once; a slave
    /// keeps the server's own mailboxes local (Cyrus's master refuses to
    /// run in this mode).
    Unified,
    /// `replicated`: backends share a spool and each keeps its own
    /// mailboxes.db; locations are partitions only.
    Replicated,
}

impl Topology {
    /// Cyrus's option value (`standard`, `unified`, `replicated`).
    pub fn from_config(value: &str) -> Option<Topology> {
        match value {
            "standard" => Some(Topology::Standard),
            "unified" => Some(Topology::Unified),
            "replicated" => Some(Topology::Replicated),
            _ => None,
        }
    }
}

/// The whole MUPDATE database in memory, ordered by name (LIST order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Database {
    map: BTreeMap<Bytes, Record>,
}

impl Database {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// `true` if empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The record of `name`.
    pub fn find(&self, name: &[u8]) -> Option<&Record> {
        self.map.get(name)
    }

    /// Every entry whose location starts with `prefix` (all for `None`), in
    /// name order.
    pub fn list(&self, prefix: Option<&[u8]>) -> Vec<Entry> {
        self.map
            .iter()
            .filter(|(_, r)| match prefix {
                Some(p) => r.location.starts_with(p),
                None => true,
            })
            .map(|(n, r)| Entry {
                name: n.clone(),
                record: r.clone(),
            })
            .collect()
    }

    /// Up to `limit` entries with names after `after`, in name order (for
    /// paging through a large database without holding it twice).
    pub fn page(&self, after: Option<&[u8]>, limit: usize) -> Vec<Entry> {
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        self.map
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take(limit)
            .map(|(n, r)| Entry {
                name: n.clone(),
                record: r.clone(),
            })
            .collect()
    }

    /// The UPDATE dump for a subscriber watching `hosts` (all if empty):
    /// entries whose server is one of them.
    pub fn dump(&self, hosts: &[Bytes]) -> Vec<Entry> {
        self.map
            .iter()
            .filter(|(_, r)| hosts.is_empty() || hosts.iter().any(|h| h[..] == *r.server()))
            .map(|(n, r)| Entry {
                name: n.clone(),
                record: r.clone(),
            })
            .collect()
    }

    /// Decides `write` against the current contents with the `standard`
    /// rules (see the module table).
    pub fn decide(&self, write: &Write) -> Result<Change, Refusal> {
        self.decide_in(write, Topology::Standard)
    }

    /// Decides `write` with the rules of `topology` (see the module
    /// tables). A write that changes nothing (a repeated DELETE in a
    /// replicated murder) still comes back as a [`Change`], `before` equal
    /// to `after`: its OK must wait for the commit of whatever identical
    /// change may still be pending, and Cyrus pushes it too.
    pub fn decide_in(&self, write: &Write, topology: Topology) -> Result<Change, Refusal> {
        let strict = topology == Topology::Standard;
        let name = write.name().clone();
        let before = self.map.get(&name[..]).cloned();
        let after = match (write, &before) {
            (Write::Reserve { location, .. }, None) => Some(Record {
                state: State::Reserved,
                location: location.clone(),
            }),
            (Write::Reserve { location, .. }, Some(cur)) => {
                if strict && cur.location != *location {
                    return Err(Refusal::Exists);
                }
                Some(Record {
                    state: State::Reserved,
                    location: location.clone(),
                })
            }
            (Write::Activate { location, acl, .. }, _) => Some(Record {
                state: State::Active { acl: acl.clone() },
                location: location.clone(),
            }),
            (Write::Deactivate { .. }, None) if strict => return Err(Refusal::Missing),
            (Write::Deactivate { location, .. }, cur) => match cur {
                Some(Record {
                    state: State::Reserved,
                    location: at,
                }) if strict && at != location => return Err(Refusal::NotActive),
                _ => Some(Record {
                    state: State::Reserved,
                    location: location.clone(),
                }),
            },
            (Write::Delete { .. }, None) if strict => return Err(Refusal::Missing),
            (Write::Delete { .. }, None) => None,
            (Write::Delete { .. }, Some(_)) => None,
        };
        Ok(Change {
            name,
            before,
            after,
        })
    }

    /// Applies a decided change.
    pub fn apply(&mut self, change: &Change) {
        match &change.after {
            Some(r) => {
                self.map.insert(change.name.clone(), r.clone());
            }
            None => {
                self.map.remove(&change.name[..]);
            }
        }
    }

    /// Inserts a record as loaded from durable storage.
    pub fn load(&mut self, name: Bytes, record: Record) {
        self.map.insert(name, record);
    }

    /// Iterates in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Record)> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn with(name: &str, record: Record) -> Database {
        let mut db = Database::new();
        db.load(b(name), record);
        db
    }

    fn reserved(loc: &str) -> Record {
        Record {
            state: State::Reserved,
            location: b(loc),
        }
    }

    /// The second table of the module doc, row by row, in both modes.
    #[test]
    fn replicated_and_unified_skip_the_standard_checks() {
        let reserve = Write::Reserve {
            name: b("m"),
            location: b("be2!p"),
        };
        let deactivate = Write::Deactivate {
            name: b("m"),
            location: b("be2!p"),
        };
        let delete = Write::Delete { name: b("m") };
        let held = with("m", reserved("be1!p"));
        let empty = Database::new();
        for t in [Topology::Unified, Topology::Replicated] {
            assert_eq!(
                held.decide_in(&reserve, Topology::Standard),
                Err(Refusal::Exists)
            );
            assert_eq!(
                held.decide_in(&reserve, t).unwrap().after,
                Some(reserved("be2!p"))
            );
            assert_eq!(
                held.decide_in(&deactivate, Topology::Standard),
                Err(Refusal::NotActive)
            );
            assert_eq!(
                held.decide_in(&deactivate, t).unwrap().after,
                Some(reserved("be2!p"))
            );
            assert_eq!(
                empty.decide_in(&deactivate, Topology::Standard),
                Err(Refusal::Missing)
            );
            assert_eq!(
                empty.decide_in(&deactivate, t).unwrap().after,
                Some(reserved("be2!p"))
            );
            assert_eq!(
                empty.decide_in(&delete, Topology::Standard),
                Err(Refusal::Missing)
            );
            let c = empty.decide_in(&delete, t).unwrap();
            assert_eq!((c.before, c.after), (None, None));
        }
        assert_eq!(
            Topology::from_config("replicated"),
            Some(Topology::Replicated)
        );
        assert_eq!(Topology::from_config("Unified"), None);
    }
}
