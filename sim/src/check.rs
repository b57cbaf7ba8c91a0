//! Invariants of one node's durable mail state, checked after every step
//! that changed it, and the canonical digest replicas are compared by.
//!
//! Per node, across the whole run (a crash never excuses a violation,
//! since a crash only loses what was never durable):
//! - a UID names one message within one UIDVALIDITY of a mailbox, for
//!   ever (even after an expunge);
//! - a mailbox's HIGHESTMODSEQ never goes backwards within a UIDVALIDITY,
//!   no record's modseq exceeds it and no UID exceeds its last UID;
//! - a stored GUID holds exactly the bytes the workload wrote under it.
//!
//! It never reads pending state: what a crash can still take away is not
//! yet a promise.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use engine::memstore::MemState;
use engine::model::{Guid, MailboxGuid, UserId};
use engine::store::{MailRead, UidRange};

/// One node's history, for the invariants above.
#[derive(Default)]
pub struct NodeChecker {
    uids: BTreeMap<(MailboxGuid, u32, u32), Guid>,
    modseqs: BTreeMap<(MailboxGuid, u32), u64>,
    verified: BTreeSet<Guid>,
}

impl NodeChecker {
    /// Checks `d` (node `n`'s durable state) against the history and
    /// records it. `Err` names the first violation.
    pub fn check(
        &mut self,
        n: usize,
        d: &MemState,
        generated: &BTreeMap<Guid, Bytes>,
    ) -> Result<(), String> {
        for mb in d.mailboxes(None, usize::MAX).map_err(|e| e.to_string())? {
            let name = mb.name.to_lossy();
            let key = (mb.guid, mb.uidvalidity.get());
            let hms = mb.highestmodseq.get();
            let before = self.modseqs.insert(key, hms).unwrap_or(0);
            if hms < before {
                return Err(format!(
                    "n{n} {name}: HIGHESTMODSEQ went back from {before} to {hms}"
                ));
            }
            for r in d
                .records(&mb.uniqueid, UidRange::ALL, usize::MAX)
                .map_err(|e| e.to_string())?
            {
                let uid = r.uid.get();
                if r.modseq.get() > hms {
                    return Err(format!(
                        "n{n} {name} uid {uid}: modseq {} above HIGHESTMODSEQ {hms}",
                        r.modseq.get()
                    ));
                }
                if uid > mb.last_uid {
                    return Err(format!(
                        "n{n} {name} uid {uid} above last_uid {}",
                        mb.last_uid
                    ));
                }
                if let Some(g) = self
                    .uids
                    .insert((mb.guid, mb.uidvalidity.get(), uid), r.guid)
                {
                    if g != r.guid {
                        return Err(format!(
                            "n{n} {name} UIDVALIDITY {} uid {uid}: reused for another message",
                            mb.uidvalidity.get()
                        ));
                    }
                }
                if !r.expunged && !self.verified.contains(&r.guid) {
                    let size = d.message_size(&r.guid).map_err(|e| e.to_string())?;
                    let bytes = d
                        .message_bytes(&r.guid, 0, usize::MAX)
                        .map_err(|e| e.to_string())?;
                    match generated.get(&r.guid) {
                        None => return Err(format!("n{n}: a message nobody wrote ({})", r.guid)),
                        Some(b) if *b != bytes || size != Some(b.len() as u64) => {
                            return Err(format!("n{n}: GUID {} holds other bytes", r.guid))
                        }
                        Some(_) => {
                            self.verified.insert(r.guid);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a user of `user` sees on a node, one sorted line per item:
/// mailboxes (name, GUID, UIDVALIDITY), live messages (mailbox, UID, GUID,
/// flags) and subscribed names. Expunged records are left out (not
/// visible, and neither Cyrus's CRCs nor dsync compare them).
pub fn user_view(d: &MemState, user: &UserId) -> Vec<String> {
    let mut out = Vec::new();
    for mb in d.mailboxes_of_user(user).expect("memstore reads") {
        out.push(format!(
            "B {} guid={} uv={}",
            mb.name.to_lossy(),
            mb.guid,
            mb.uidvalidity.get()
        ));
        for r in d
            .records(&mb.uniqueid, UidRange::ALL, usize::MAX)
            .expect("memstore reads")
        {
            if r.expunged {
                continue;
            }
            out.push(format!(
                "M {} {} {} f={:02x} {:?}",
                mb.name.to_lossy(),
                r.uid.get(),
                r.guid,
                r.flags.system.bits(),
                r.flags.folded_keywords()
            ));
        }
    }
    for (name, sub) in d.subscriptions(user).expect("memstore reads") {
        if sub.subscribed {
            out.push(format!("S {}", name.to_lossy()));
        }
    }
    out.sort();
    out
}

/// The lines only in `a` (`-`) and only in `b` (`+`), at most 12 each.
pub fn diff(a: &[String], b: &[String]) -> String {
    let sa: BTreeSet<&String> = a.iter().collect();
    let sb: BTreeSet<&String> = b.iter().collect();
    let mut out = String::new();
    for x in sa.difference(&sb).take(12) {
        out.push_str(&format!("- {x}\n"));
    }
    for x in sb.difference(&sa).take(12) {
        out.push_str(&format!("+ {x}\n"));
    }
    out
}
