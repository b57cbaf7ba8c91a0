//! One user's Maildir seen through the engine's read trait
//! ([`engine::store::MailRead`]), so machines that read the mail model can
//! read a Dovecot maildir.
//!
//! The mapping, where the model maps cleanly:
//! * Mailbox: name = the Maildir name (`Work/Sub`, UTF-8, `/`-separated)
//!   as [`MailboxName`] bytes; `guid` = the uidlist `G`; `uniqueid` =
//!   [`UniqueId::from_mailbox_guid`]; `uidvalidity`; `last_uid` = next UID
//!   − 1; `highestmodseq` = corvid's sidecar modseq; `owner` = the user;
//!   partition `default`; `renamed_or_created_at` = the directory's ctime
//!   (a rename changes it; 0 for INBOX, the root).
//! * Record: `uid`, `modseq`, `flags`/keywords from the file name,
//!   `internaldate` = `last_updated` = the file's mtime, `size` = physical
//!   size, `guid` = SHA-1 of the bytes (from the sidecar), `peer_guid` =
//!   Dovecot's message GUID (uidlist `G` or base name). Maildir keeps no
//!   expunged records: expunged messages are simply absent.
//! * Subscriptions: the `subscriptions` file, all subscribed, dated by the
//!   file's mtime (Maildir keeps no per-name dates or unsubscribes).
//!
//! No Maildir form, so always empty: seen databases (Maildir's `\Seen` is
//! a flag), quota roots, Sieve scripts, server and mailbox annotations,
//! tombstones (Dovecot keeps deletes in its binary `dovecot.mailbox.log`,
//! not read here), sync logs. Writes go through [`Maildir`] itself;
//! [`Maildir::refuse`] is the typed refusal for those concepts.
//!
//! Cost: lookups by uniqueid, mailbox GUID or message SHA-1 walk every
//! mailbox (a maildir is one user's mail, not a server's).

use std::os::unix::fs::MetadataExt;

use bytes::Bytes;
use engine::model::{
    Annotations, Guid, Mailbox, MailboxGuid, MailboxName, ModSeq, Partition, PeerMailGuid,
    QuotaRoot, Record, Seen, SieveName, SieveScript, Subscription, SyncLogLine, Tombstone,
    UidValidity, UniqueId, UnixTime, UserId,
};
use engine::store::{MailRead, StoreError, UidRange};

use super::{Error, Maildir, Name};

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
        let st = match self.maildir.status(name) {
            Ok(st) => st,
            Err(Error::NoMailbox(_)) => return Ok(None),
            Err(e) => return Err(store_err(e)),
        };
        let uidvalidity = UidValidity::new(st.uidvalidity)
            .map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))?;
        let created = if name.is_inbox() {
            UnixTime::ZERO
        } else {
            std::fs::metadata(self.maildir.dir_of(name))
                .map(|m| UnixTime(m.ctime()))
                .unwrap_or(UnixTime::ZERO)
        };
        let mut m = Mailbox::new(
            UniqueId::from_mailbox_guid(&st.guid),
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
        let mut out = Vec::new();
        for n in self.maildir.list().map_err(store_err)? {
            if let Some(m) = self.mailbox_of(&n)? {
                out.push(m);
            }
        }
        // By model name bytes, as MailRead promises.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn name_of_uniqueid(&self, id: &UniqueId) -> Result<Option<Name>, StoreError> {
        Ok(self
            .all()?
            .into_iter()
            .find(|m| m.uniqueid == *id)
            .and_then(|m| Name::new(&m.name.to_lossy()).ok()))
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
        Ok(self.all()?.into_iter().find(|m| m.uniqueid == *id))
    }

    fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
        if guid.is_zero() {
            return Ok(None);
        }
        Ok(self.all()?.into_iter().find(|m| m.guid == *guid))
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
        let Some(name) = self.name_of_uniqueid(mailbox)? else {
            return Ok(Vec::new());
        };
        let msgs = match self.maildir.messages(&name) {
            Ok(m) => m,
            Err(Error::NoMailbox(_)) => return Ok(Vec::new()),
            Err(e) => return Err(store_err(e)),
        };
        let mut out = Vec::new();
        for m in msgs {
            let Ok(uid) = engine::model::Uid::new(m.uid) else {
                continue;
            };
            if !range.contains(uid) {
                continue;
            }
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
            r.peer_guid = PeerMailGuid::new(&m.guid).ok();
            out.push(r);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
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
        let changed_at = std::fs::metadata(self.maildir.root().join(super::SUBSCRIPTIONS))
            .map(|m| UnixTime(m.mtime()))
            .unwrap_or(UnixTime::ZERO);
        let mut out: Vec<(MailboxName, Subscription)> = self
            .maildir
            .subscriptions()
            .map_err(store_err)?
            .into_iter()
            .map(|n| {
                (
                    MailboxName::new(n.as_str()).expect("a valid Maildir name is a model name"),
                    Subscription {
                        subscribed: true,
                        changed_at,
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
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

    fn tombstones_named(&self, _name: &MailboxName) -> Result<Vec<Tombstone>, StoreError> {
        Ok(Vec::new())
    }

    fn tombstones_of_user(&self, _user: &UserId) -> Result<Vec<Tombstone>, StoreError> {
        Ok(Vec::new())
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
