//! Which Cyrus sync_log lines a write batch deserves.
//!
//! Cyrus's writers (imapd, lmtpd, and sync_server with `sync_log_chain`)
//! append a line to `{configdirectory}/sync/[<channel>/]log` for every
//! change they make, so that a rolling `sync_client -r` knows what to
//! replicate onward (`imap/sync_log.c`, 3.6.1). corvid's stores append the
//! same lines to their own log (the `sync_log` table of the embedded
//! store) inside the batch's transaction. This module decides, from the
//! batch's mutations alone, which lines those are:
//!
//! | mutation | line (as the Cyrus layer that makes the change writes it) |
//! |---|---|
//! | `PutMailbox`, `PutRecord`, `PurgeRecords` | `MAILBOX name` (mailbox_close of a changed mailbox) |
//! | `RenameMailbox` | `RENAME old new` (then `MAILBOX old`, `MAILBOX new` in the file) |
//! | `DeleteMailbox` | `UNMAILBOX name`, and `UNUSER owner` for a user's INBOX (user_deletedata) |
//! | `PutSeen`, `DeleteSeen` | `SEEN user uniqueid` |
//! | `SetSubscription` | `SUB user name` (subscribe and unsubscribe alike) |
//! | `PutQuota`, `DeleteQuota` | `QUOTA root` |
//! | `SetAnnotation` | `ANNOTATION name`, `ANNOTATION ""` for the server |
//! | `PutSieve`, `DeleteSieve`, `ActivateSieve` | `META user` (Cyrus's `sync_log_sieve`) |
//! | `DeleteUser` | `UNUSER user` |
//!
//! Message bytes, tombstone expiry and the log's own mutations log
//! nothing. Each line appears once per batch, in the order of the first
//! mutation that asks for it (a rolling client coalesces anyway, and the
//! order is deterministic).
//!
//! Mailboxes are named by uniqueid in most mutations; the name is taken
//! from the batch itself when an earlier mutation created or renamed the
//! mailbox, else from `before`, the state the batch applies to. A mutation
//! on a mailbox neither knows logs nothing: the store refuses it anyway.
//!
//! This module never writes: the store appends the lines in the batch's
//! transaction, for each channel [`Channels`] selects.

use std::collections::BTreeMap;

use super::{MailRead, Mutation, StoreError};
use crate::model::{MailboxName, SyncLogLine, UniqueId, UserId};

/// The two lookups [`lines_for`] needs from the state a batch applies
/// to. Every [`MailRead`] has them; a store may offer them from inside
/// its open transaction.
pub trait Names {
    /// The current name of the mailbox with this uniqueid.
    fn name_of(&self, id: &UniqueId) -> Result<Option<MailboxName>, StoreError>;
    /// The uniqueids of the user's mailboxes.
    fn mailbox_ids_of_user(&self, user: &UserId) -> Result<Vec<UniqueId>, StoreError>;
}

impl<R: MailRead + ?Sized> Names for R {
    fn name_of(&self, id: &UniqueId) -> Result<Option<MailboxName>, StoreError> {
        Ok(self.mailbox_by_uniqueid(id)?.map(|m| m.name))
    }
    fn mailbox_ids_of_user(&self, user: &UserId) -> Result<Vec<UniqueId>, StoreError> {
        Ok(self
            .mailboxes_of_user(user)?
            .into_iter()
            .map(|m| m.uniqueid)
            .collect())
    }
}

/// The lines `mutations` deserve, given the state `before` they apply to.
pub fn lines_for<R: Names + ?Sized>(
    mutations: &[Mutation],
    before: &R,
) -> Result<Vec<SyncLogLine>, StoreError> {
    let mut names: BTreeMap<UniqueId, Option<MailboxName>> = BTreeMap::new();
    let mut out: Vec<SyncLogLine> = Vec::new();
    let push = |out: &mut Vec<SyncLogLine>, line: SyncLogLine| {
        // Batches are a handful of distinct lines; a linear check keeps
        // the first-seen order without a second structure.
        if !out.contains(&line) {
            out.push(line);
        }
    };
    let name_of = |names: &mut BTreeMap<UniqueId, Option<MailboxName>>,
                   id: &UniqueId|
     -> Result<Option<MailboxName>, StoreError> {
        if let Some(n) = names.get(id) {
            return Ok(n.clone());
        }
        let n = before.name_of(id)?;
        names.insert(id.clone(), n.clone());
        Ok(n)
    };
    for m in mutations {
        match m {
            Mutation::PutMailbox(mb) => {
                names.insert(mb.uniqueid.clone(), Some(mb.name.clone()));
                push(&mut out, SyncLogLine::Mailbox(mb.name.clone()));
            }
            Mutation::PutRecord { mailbox, .. } | Mutation::PurgeRecords { mailbox, .. } => {
                if let Some(n) = name_of(&mut names, mailbox)? {
                    push(&mut out, SyncLogLine::Mailbox(n));
                }
            }
            Mutation::RenameMailbox {
                uniqueid, new_name, ..
            } => {
                if let Some(old) = name_of(&mut names, uniqueid)? {
                    push(&mut out, SyncLogLine::Rename(old, new_name.clone()));
                }
                names.insert(uniqueid.clone(), Some(new_name.clone()));
            }
            Mutation::DeleteMailbox { uniqueid, .. } => {
                if let Some(n) = name_of(&mut names, uniqueid)? {
                    // Deleting a user's INBOX deletes the user: Cyrus's
                    // user_deletedata logs UNUSER (so a chained replica's
                    // APPLY UNUSER travels on as one).
                    let owner = crate::csync::wire::owner_of(&n)
                        .filter(|u| crate::csync::wire::inbox_of(u).as_ref() == Some(&n));
                    push(&mut out, SyncLogLine::Unmailbox(n));
                    if let Some(u) = owner {
                        push(&mut out, SyncLogLine::Unuser(u));
                    }
                }
                names.insert(uniqueid.clone(), None);
            }
            Mutation::PutSeen { user, mailbox, .. } | Mutation::DeleteSeen { user, mailbox } => {
                push(&mut out, SyncLogLine::Seen(user.clone(), mailbox.clone()));
            }
            Mutation::SetSubscription { user, name, .. } => {
                push(&mut out, SyncLogLine::Sub(user.clone(), name.clone()));
            }
            Mutation::PutQuota { root, .. } | Mutation::DeleteQuota { root } => {
                push(&mut out, SyncLogLine::Quota(root.clone()));
            }
            Mutation::SetAnnotation { mailbox: None, .. } => {
                push(&mut out, SyncLogLine::Annotation(None));
            }
            Mutation::SetAnnotation {
                mailbox: Some(id), ..
            } => {
                if let Some(n) = name_of(&mut names, id)? {
                    push(&mut out, SyncLogLine::Annotation(Some(n)));
                }
            }
            Mutation::PutSieve { user, .. }
            | Mutation::DeleteSieve { user, .. }
            | Mutation::ActivateSieve { user, .. } => {
                push(&mut out, SyncLogLine::Meta(user.clone()));
            }
            Mutation::DeleteUser { user, .. } => {
                // The user's mailboxes go with it; later lines about them
                // in this batch would name nothing.
                for id in before.mailbox_ids_of_user(user)? {
                    names.insert(id, None);
                }
                push(&mut out, SyncLogLine::Unuser(user.clone()));
            }
            Mutation::LinkMessage { .. }
            | Mutation::PutMessage { .. }
            | Mutation::ForgetTombstone { .. }
            | Mutation::AppendSyncLog { .. }
            | Mutation::TrimSyncLog { .. } => {}
        }
    }
    Ok(out)
}

/// Which channels a writer logs to: Cyrus's `sync_log`,
/// `sync_log_channels`, `sync_log_chain` and
/// `sync_log_unsuppressable_channels`, resolved once at start.
///
/// * `sync_log: 0` (the default): no channel at all.
/// * `sync_log_channels` unset: the default channel `""` alone; set: the
///   listed ones (`""` names the default channel; listing any named
///   channel drops the default one unless `""` is listed too, as Cyrus).
/// * A suppressed writer (sync_server without `sync_log_chain`) logs only
///   to the listed channels that are also unsuppressable (Cyrus default
///   `squatter`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Channels {
    keys: Vec<String>,
}

impl Channels {
    /// No logging.
    pub fn none() -> Channels {
        Channels::default()
    }

    /// Resolves the options. `listed` is the channel list already split
    /// (`""` for the default channel), `None` when the option is unset.
    pub fn resolve(
        sync_log: bool,
        listed: Option<&[String]>,
        suppressed: bool,
        unsuppressable: &[String],
    ) -> Channels {
        if !sync_log {
            return Channels::none();
        }
        let all: Vec<String> = match listed {
            None => vec![String::new()],
            Some(l) => l.to_vec(),
        };
        let mut keys = Vec::new();
        for k in all {
            if suppressed && !unsuppressable.contains(&k) {
                continue;
            }
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        Channels { keys }
    }

    /// The channel keys, in the configured order (`""` = default channel).
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Whether nothing is logged.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `AppendSyncLog` mutations for `lines` on every channel.
    pub fn appends(&self, lines: &[SyncLogLine]) -> Vec<Mutation> {
        let mut out = Vec::with_capacity(lines.len() * self.keys.len());
        for ch in &self.keys {
            for l in lines {
                out.push(Mutation::AppendSyncLog {
                    channel: ch.clone(),
                    line: l.clone(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memstore::MemStore;
    use crate::model::Subscription;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn channel_resolution_as_cyrus() {
        let squatter = s(&["squatter"]);
        assert!(Channels::resolve(false, None, false, &squatter).is_empty());
        assert_eq!(
            Channels::resolve(true, None, false, &squatter).keys(),
            &s(&[""])[..]
        );
        let listed = s(&["", "replica", "squatter"]);
        assert_eq!(
            Channels::resolve(true, Some(&listed), false, &squatter).keys(),
            &listed[..]
        );
        // A replica without sync_log_chain logs only unsuppressable channels.
        assert_eq!(
            Channels::resolve(true, Some(&listed), true, &squatter).keys(),
            &s(&["squatter"])[..]
        );
        assert!(Channels::resolve(true, None, true, &squatter).is_empty());
    }

    #[test]
    fn subscriptions_and_unknown_mailboxes() {
        let store = MemStore::default();
        let alice = UserId::new("alice").unwrap();
        let name = MailboxName::new("user.alice.x").unwrap();
        let muts = vec![
            Mutation::SetSubscription {
                user: alice.clone(),
                name: name.clone(),
                subscription: Subscription {
                    subscribed: true,
                    changed_at: crate::model::UnixTime(0),
                },
            },
            Mutation::SetSubscription {
                user: alice.clone(),
                name: name.clone(),
                subscription: Subscription {
                    subscribed: true,
                    changed_at: crate::model::UnixTime(0),
                },
            },
            Mutation::PurgeRecords {
                mailbox: UniqueId::new("nope").unwrap(),
                uids: vec![],
            },
            Mutation::DeleteUser {
                user: alice.clone(),
                at: crate::model::UnixTime(0),
                modseq: crate::model::ModSeq(1),
            },
        ];
        assert_eq!(
            lines_for(&muts, &store).unwrap(),
            vec![
                SyncLogLine::Sub(alice.clone(), name),
                SyncLogLine::Unuser(alice)
            ]
        );
    }
}
