//! Mutation semantics on the write transaction: the SQL twin of the
//! engine's `Delta::apply` (engine/src/store/overlay.rs), which is the
//! reference. Every check reads through the same connection, inside the
//! open transaction, so a mutation sees the ones before it in its batch and
//! in earlier batches of the same group commit.
//!
//! Refusals return before anything of that mutation is written; the caller
//! wraps each batch in a savepoint and rolls it back whole on any refusal.
//! This module never touches message files: it records which staged
//! messages a batch links, and the committer makes them durable before the
//! commit.

use super::rows::{
    self, db, encode_annotations, encode_line, encode_quota_map, i, keywords_text, ConnRead,
};
use engine::model::{
    Annotations, Guid, Mailbox, ModSeq, Record, SyncCrcs, UniqueId, UnixTime, UserId,
};
use engine::store::{Mutation, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

/// What a batch asks of the message files: guids linked from staging, and
/// bytes given inline.
#[derive(Default)]
pub(crate) struct Links {
    /// Staged GUIDs this batch makes part of the store (each once).
    pub(crate) staged: Vec<Guid>,
    /// Inline messages this batch stores (each once).
    pub(crate) inline: Vec<(Guid, bytes::Bytes)>,
    /// New messages of this batch (staged or inline) whose first record
    /// lives in a mailbox on another partition: they go there instead
    /// (Cyrus keeps a message in its mailbox's partition).
    pub(crate) placed: Vec<(Guid, String)>,
    /// New messages of this batch not yet placed by a record.
    unplaced: std::collections::HashMap<Guid, String>,
}

/// Applies mutations on `c`. `staged` says whether (and how big) bytes
/// are staged under a GUID.
pub(crate) struct Apply<'a> {
    pub(crate) c: &'a Connection,
    pub(crate) staged: &'a dyn Fn(&Guid) -> Option<(u64, String)>,
    pub(crate) inline_partition: &'a str,
    /// Whether a partition name is configured (a message is only moved
    /// to a partition the store has).
    pub(crate) has_partition: &'a dyn Fn(&str) -> bool,
    pub(crate) links: Links,
    /// Runs of `PutRecord`s (a whole mailbox's records in one `APPLY
    /// MAILBOX`) look their mailbox up once and write its CRCs once: the
    /// last mailbox's id and its CRCs not yet written. Flushed before any
    /// other mutation and at the end of the batch ([`Apply::finish`]).
    pub(crate) run: Option<RecordRun>,
}

/// See [`Apply::run`].
pub(crate) struct RecordRun {
    mailbox: UniqueId,
    id: i64,
    crcs: SyncCrcs,
}

impl Apply<'_> {
    fn read(&self) -> ConnRead<'_> {
        ConnRead(self.c)
    }

    fn require_mailbox(&self, id: &UniqueId) -> Result<(i64, Mailbox), StoreError> {
        self.read()
            .mailbox_full(id)?
            .ok_or_else(|| StoreError::UnknownMailbox(id.clone()))
    }

    /// Writes what a run of `PutRecord`s left pending. Call after the
    /// last mutation of a batch.
    pub(crate) fn finish(&mut self) -> Result<(), StoreError> {
        if let Some(run) = self.run.take() {
            set_crcs(self.c, run.id, run.crcs)?;
        }
        Ok(())
    }

    pub(crate) fn apply(&mut self, m: &Mutation) -> Result<(), StoreError> {
        let c = self.c;
        if !matches!(m, Mutation::PutRecord { .. }) {
            // Every other mutation may read or change what a run caches.
            self.finish()?;
        }
        match m {
            Mutation::LinkMessage { guid, size } => {
                if self.read().message_size(guid)?.is_some() {
                    return Ok(());
                }
                let (staged_size, partition) =
                    (self.staged)(guid).ok_or(StoreError::MissingMessage(*guid))?;
                if staged_size != *size {
                    return Err(StoreError::SizeMismatch {
                        guid: *guid,
                        expected: *size,
                        actual: staged_size,
                    });
                }
                insert_message(c, guid, &partition, *size)?;
                self.links.staged.push(*guid);
                self.links.unplaced.insert(*guid, partition);
            }
            Mutation::PutMessage { guid, bytes } => {
                let actual = Guid::of(bytes);
                if actual != *guid {
                    return Err(StoreError::GuidMismatch {
                        expected: *guid,
                        actual,
                    });
                }
                if self.read().message_size(guid)?.is_none() {
                    insert_message(c, guid, self.inline_partition, bytes.len() as u64)?;
                    self.links.inline.push((*guid, bytes.clone()));
                    self.links
                        .unplaced
                        .insert(*guid, self.inline_partition.to_owned());
                }
            }
            Mutation::PutMailbox(mb) => self.put_mailbox(mb)?,
            Mutation::RenameMailbox {
                uniqueid,
                new_name,
                at,
                modseq,
            } => {
                let (id, mb) = self.require_mailbox(uniqueid)?;
                if mb.name == *new_name {
                    return Ok(());
                }
                if let Some(holder) = self.read().mailbox(new_name)? {
                    return Err(StoreError::NameTaken {
                        name: new_name.clone(),
                        holder: holder.uniqueid,
                    });
                }
                exec(
                    c,
                    "UPDATE mailboxes SET name = ?2, renamed_or_created_at = ?3 WHERE id = ?1",
                    params![id, new_name.as_bytes(), at.0],
                )?;
                exec(
                    c,
                    "INSERT INTO name_history (mailbox_id, seq, old_name, at, modseq) \
                     VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM name_history \
                     WHERE mailbox_id = ?1), ?2, ?3, ?4)",
                    params![id, mb.name.as_bytes(), at.0, i(modseq.0)],
                )?;
            }
            Mutation::DeleteMailbox {
                uniqueid,
                at,
                modseq,
            } => self.delete_mailbox(uniqueid, *at, *modseq)?,
            Mutation::PutRecord { mailbox, record } => {
                if self.run.as_ref().is_some_and(|r| r.mailbox != *mailbox) {
                    self.finish()?;
                }
                let id = match &self.run {
                    Some(r) => r.id,
                    None => self
                        .read()
                        .mailbox_id(mailbox)?
                        .ok_or_else(|| StoreError::UnknownMailbox(mailbox.clone()))?,
                };
                let new_here = self.links.unplaced.contains_key(&record.guid);
                if !record.expunged
                    && !new_here
                    && self.read().message_size(&record.guid)?.is_none()
                {
                    return Err(StoreError::MissingMessage(record.guid));
                }
                let mut crcs = match self.run.take() {
                    Some(r) => r.crcs,
                    None => rows::stored_crcs(c, id).map_err(db)?,
                };
                let old = self.read().record_of(id, record.uid)?;
                put_record(c, id, record)?;
                if let Some(old) = old {
                    crcs.toggle(&old);
                }
                crcs.toggle(record);
                self.run = Some(RecordRun {
                    mailbox: mailbox.clone(),
                    id,
                    crcs,
                });
                if let Some(from) = self.links.unplaced.remove(&record.guid) {
                    self.place(id, &record.guid, &from)?;
                }
            }
            Mutation::PurgeRecords { mailbox, uids } => {
                let id = self
                    .read()
                    .mailbox_id(mailbox)?
                    .ok_or_else(|| StoreError::UnknownMailbox(mailbox.clone()))?;
                let mut crcs = rows::stored_crcs(c, id).map_err(db)?;
                for uid in uids {
                    if let Some(old) = self.read().record_of(id, *uid)? {
                        crcs.toggle(&old);
                        exec(
                            c,
                            "DELETE FROM records WHERE mailbox_id = ?1 AND uid = ?2",
                            params![id, uid.get() as i64],
                        )?;
                    }
                }
                set_crcs(c, id, crcs)?;
            }
            Mutation::PutSeen {
                user,
                mailbox,
                seen,
            } => {
                exec(c,
                    "INSERT OR REPLACE INTO seen (userid, uniqueid, lastread, lastuid, lastchange, \
                     seenuids) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        user.as_bytes(),
                        mailbox.as_bytes(),
                        seen.lastread.0,
                        seen.lastuid as i64,
                        seen.lastchange.0,
                        seen.seenuids.as_str()
                    ],
                )?;
            }
            Mutation::DeleteSeen { user, mailbox } => {
                exec(
                    c,
                    "DELETE FROM seen WHERE userid = ?1 AND uniqueid = ?2",
                    params![user.as_bytes(), mailbox.as_bytes()],
                )?;
            }
            Mutation::SetSubscription {
                user,
                name,
                subscription,
            } => {
                exec(
                    c,
                    "INSERT OR REPLACE INTO subs (userid, name, subscribed, changed_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        user.as_bytes(),
                        name.as_bytes(),
                        subscription.subscribed as i64,
                        subscription.changed_at.0
                    ],
                )?;
            }
            Mutation::PutQuota { root, quota } => {
                exec(c,
                    "INSERT OR REPLACE INTO quota (root, limits, usage, modseq) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        root.as_bytes(),
                        encode_quota_map(&quota.limits),
                        encode_quota_map(&quota.usage),
                        i(quota.modseq.0)
                    ],
                )?;
            }
            Mutation::DeleteQuota { root } => {
                exec(c, "DELETE FROM quota WHERE root = ?1", [root.as_bytes()])?;
            }
            Mutation::SetAnnotation {
                mailbox,
                entry,
                owner,
                value,
            } => {
                let id = match mailbox {
                    None => 0,
                    Some(u) => self
                        .read()
                        .mailbox_id(u)?
                        .ok_or_else(|| StoreError::UnknownMailbox(u.clone()))?,
                };
                if value.value.is_empty() {
                    exec(
                        c,
                        "DELETE FROM mailbox_annotations WHERE mailbox_id = ?1 AND entry = ?2 \
                         AND owner = ?3",
                        params![id, entry.as_bytes(), owner.as_bytes()],
                    )?;
                } else {
                    exec(
                        c,
                        "INSERT OR REPLACE INTO mailbox_annotations (mailbox_id, entry, owner, \
                         modseq, value) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            id,
                            entry.as_bytes(),
                            owner.as_bytes(),
                            i(value.modseq.0),
                            &value.value[..]
                        ],
                    )?;
                }
            }
            Mutation::PutSieve { user, script } => {
                exec(
                    c,
                    "INSERT OR REPLACE INTO sieve (userid, name, last_update, content) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        user.as_bytes(),
                        script.name.as_bytes(),
                        script.last_update.0,
                        &script.content[..]
                    ],
                )?;
            }
            Mutation::DeleteSieve { user, name } => {
                exec(
                    c,
                    "DELETE FROM sieve WHERE userid = ?1 AND name = ?2",
                    params![user.as_bytes(), name.as_bytes()],
                )?;
                exec(
                    c,
                    "DELETE FROM sieve_active WHERE userid = ?1 AND name = ?2",
                    params![user.as_bytes(), name.as_bytes()],
                )?;
            }
            Mutation::ActivateSieve { user, name } => match name {
                Some(n) => {
                    let exists = self
                        .read()
                        .sieve_scripts(user)?
                        .iter()
                        .any(|s| s.name == *n);
                    if !exists {
                        return Err(StoreError::UnknownSieve {
                            user: user.clone(),
                            name: n.clone(),
                        });
                    }
                    exec(
                        c,
                        "INSERT OR REPLACE INTO sieve_active (userid, name) VALUES (?1, ?2)",
                        params![user.as_bytes(), n.as_bytes()],
                    )?;
                }
                None => {
                    exec(
                        c,
                        "DELETE FROM sieve_active WHERE userid = ?1",
                        [user.as_bytes()],
                    )?;
                }
            },
            Mutation::DeleteUser { user, at, modseq } => self.delete_user(user, *at, *modseq)?,
            Mutation::ForgetTombstone { uniqueid } => {
                exec(
                    c,
                    "DELETE FROM tombstones WHERE uniqueid = ?1",
                    [uniqueid.as_bytes()],
                )?;
            }
            Mutation::AppendSyncLog { channel, line } => {
                let (ty, a, b) = encode_line(line)?;
                let seq = self.read().sync_log_last(channel)? + 1;
                exec(
                    c,
                    "INSERT INTO sync_log_channels (channel, last_seq, exported_seq) \
                     VALUES (?1, ?2, 0) ON CONFLICT (channel) DO UPDATE SET last_seq = ?2",
                    params![channel, i(seq)],
                )?;
                exec(c,
                    "INSERT INTO sync_log (channel, seq, type, arg1, arg2) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![channel, i(seq), ty, a, b],
                )?;
            }
            Mutation::TrimSyncLog { channel, through } => {
                // Only lines that exist now: later appends get higher numbers.
                exec(
                    c,
                    "DELETE FROM sync_log WHERE channel = ?1 AND seq <= ?2",
                    params![channel, i(*through)],
                )?;
            }
            other => {
                return Err(StoreError::Io(format!(
                    "mutation {other:?} is not known to this store"
                )))
            }
        }
        Ok(())
    }

    /// A new message's first record is in mailbox `id`: store its bytes
    /// in that mailbox's partition if it is another configured one.
    fn place(&mut self, id: i64, guid: &Guid, from: &str) -> Result<(), StoreError> {
        let to: Vec<u8> = self
            .c
            .prepare_cached("SELECT partition FROM mailboxes WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)))
            .map_err(db)?;
        // Partition names are validated atoms; one that is not UTF-8 is
        // not a configured one either.
        let Ok(to) = String::from_utf8(to) else {
            return Ok(());
        };
        if to != from && (self.has_partition)(&to) {
            exec(
                self.c,
                "UPDATE messages SET partition = ?2 WHERE guid = ?1",
                params![&guid.as_bytes()[..], to],
            )?;
            self.links.placed.push((*guid, to));
        }
        Ok(())
    }

    fn put_mailbox(&mut self, mb: &Mailbox) -> Result<(), StoreError> {
        let c = self.c;
        let old: Option<(i64, Vec<u8>)> = c
            .prepare_cached("SELECT id, name FROM mailboxes WHERE uniqueid = ?1")
            .and_then(|mut st| {
                st.query_row([mb.uniqueid.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(db)?;
        if let Some((_, old_name)) = &old {
            if old_name.as_slice() != mb.name.as_bytes() {
                return Err(StoreError::NameChanged(mb.uniqueid.clone()));
            }
        }
        // Only the holder's uniqueid matters here: no need to load it whole.
        let holder_of = |cond: &str, key: &[u8]| -> Result<Option<UniqueId>, StoreError> {
            let sql = format!("SELECT uniqueid FROM mailboxes WHERE {cond} LIMIT 1");
            let got: Option<Vec<u8>> = c
                .prepare_cached(&sql)
                .and_then(|mut st| st.query_row([key], |r| r.get(0)).optional())
                .map_err(db)?;
            got.map(|u| {
                UniqueId::new(u).map_err(|e| StoreError::Corrupt(format!("stored uniqueid: {e}")))
            })
            .transpose()
        };
        if let Some(holder) = holder_of("name = ?1", mb.name.as_bytes())? {
            if holder != mb.uniqueid {
                return Err(StoreError::NameTaken {
                    name: mb.name.clone(),
                    holder,
                });
            }
        }
        if !mb.guid.is_zero() {
            if let Some(holder) = holder_of("guid = ?1", &mb.guid.as_bytes()[..])? {
                if holder != mb.uniqueid {
                    return Err(StoreError::GuidTaken {
                        guid: mb.guid,
                        holder,
                    });
                }
            }
        }
        let values = params![
            mb.uniqueid.as_bytes(),
            &mb.guid.as_bytes()[..],
            mb.name.as_bytes(),
            mb.owner.as_ref().map(|o| o.as_bytes()),
            mb.mbtype.to_cyrus(),
            mb.uidvalidity.get() as i64,
            mb.last_uid as i64,
            i(mb.highestmodseq.0),
            mb.recentuid as i64,
            mb.recenttime.0,
            mb.last_appenddate.0,
            mb.pop3_last_login.0,
            mb.pop3_show_after.0,
            i(mb.xconvmodseq.0),
            i(mb.raclmodseq.0),
            i(mb.createdmodseq.0),
            i(mb.foldermodseq.0),
            i(mb.deletedmodseq.0),
            mb.partition.as_bytes(),
            mb.acl.to_cyrus(),
            mb.options.to_cyrus(),
            mb.quotaroot.as_ref().map(|q| q.as_bytes()),
            mb.renamed_or_created_at.0,
        ];
        let id = match &old {
            Some((id, _)) => {
                exec(
                    c,
                    "UPDATE mailboxes SET uniqueid = ?1, guid = ?2, name = ?3, owner = ?4, \
                     mbtype = ?5, uidvalidity = ?6, last_uid = ?7, highestmodseq = ?8, \
                     recentuid = ?9, recenttime = ?10, last_appenddate = ?11, \
                     pop3_last_login = ?12, pop3_show_after = ?13, xconvmodseq = ?14, \
                     raclmodseq = ?15, createdmodseq = ?16, foldermodseq = ?17, \
                     deletedmodseq = ?18, partition = ?19, acl = ?20, options = ?21, \
                     quotaroot = ?22, renamed_or_created_at = ?23 WHERE id = ?24",
                    rusqlite::params_from_iter(
                        values.iter().copied().chain([id as &dyn rusqlite::ToSql]),
                    ),
                )?;
                *id
            }
            None => {
                let empty = SyncCrcs::EMPTY;
                exec(
                    c,
                    "INSERT INTO mailboxes (uniqueid, guid, name, owner, mbtype, uidvalidity, \
                     last_uid, highestmodseq, recentuid, recenttime, last_appenddate, \
                     pop3_last_login, pop3_show_after, xconvmodseq, raclmodseq, createdmodseq, \
                     foldermodseq, deletedmodseq, partition, acl, options, quotaroot, \
                     renamed_or_created_at, sync_crc, sync_crc_annot) VALUES (?1, ?2, ?3, ?4, \
                     ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
                     ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
                    rusqlite::params_from_iter(values.iter().copied().chain([
                        &(empty.basic as i64) as &dyn rusqlite::ToSql,
                        &(empty.annot as i64),
                    ])),
                )?;
                c.last_insert_rowid()
            }
        };
        replace_annotations(c, id, &mb.annotations)?;
        exec(c, "DELETE FROM name_history WHERE mailbox_id = ?1", [id])?;
        for (seq, h) in mb.name_history.iter().enumerate() {
            exec(
                c,
                "INSERT INTO name_history (mailbox_id, seq, old_name, at, modseq) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    seq as i64 + 1,
                    h.old_name.as_bytes(),
                    h.at.0,
                    i(h.modseq.0)
                ],
            )?;
        }
        Ok(())
    }

    fn delete_mailbox(
        &mut self,
        uniqueid: &UniqueId,
        at: UnixTime,
        modseq: ModSeq,
    ) -> Result<(), StoreError> {
        let c = self.c;
        let (id, mb) = self.require_mailbox(uniqueid)?;
        for sql in [
            "DELETE FROM records WHERE mailbox_id = ?1",
            "DELETE FROM mailbox_annotations WHERE mailbox_id = ?1",
            "DELETE FROM name_history WHERE mailbox_id = ?1",
            "DELETE FROM mailboxes WHERE id = ?1",
        ] {
            exec(c, sql, [id])?;
        }
        exec(
            c,
            "DELETE FROM seen WHERE uniqueid = ?1",
            [uniqueid.as_bytes()],
        )?;
        exec(
            c,
            "INSERT OR REPLACE INTO tombstones (uniqueid, name, guid, owner, deleted_at, modseq) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                uniqueid.as_bytes(),
                mb.name.as_bytes(),
                &mb.guid.as_bytes()[..],
                mb.owner.as_ref().map(|o| o.as_bytes()),
                at.0,
                i(modseq.0)
            ],
        )?;
        Ok(())
    }

    fn delete_user(
        &mut self,
        user: &UserId,
        at: UnixTime,
        modseq: ModSeq,
    ) -> Result<(), StoreError> {
        let c = self.c;
        let mut mbs = self.read().mailboxes_of_user(user)?;
        // Deepest first: a child's name sorts after its parent's.
        mbs.sort_by(|a, b| b.name.cmp(&a.name));
        for mb in &mbs {
            self.delete_mailbox(&mb.uniqueid, at, modseq)?;
            exec(c, "DELETE FROM quota WHERE root = ?1", [mb.name.as_bytes()])?;
        }
        for sql in [
            "DELETE FROM seen WHERE userid = ?1",
            "DELETE FROM subs WHERE userid = ?1",
            "DELETE FROM sieve WHERE userid = ?1",
            "DELETE FROM sieve_active WHERE userid = ?1",
        ] {
            exec(c, sql, [user.as_bytes()])?;
        }
        Ok(())
    }
}

/// Runs one statement through the connection's statement cache (the same
/// few statements run for every batch).
fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<usize, StoreError> {
    c.prepare_cached(sql)
        .and_then(|mut st| st.execute(p))
        .map_err(db)
}

fn insert_message(
    c: &Connection,
    guid: &Guid,
    partition: &str,
    size: u64,
) -> Result<(), StoreError> {
    c.prepare_cached("INSERT INTO messages (guid, partition, size) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![&guid.as_bytes()[..], partition, i(size)]))
        .map_err(db)?;
    Ok(())
}

fn set_crcs(c: &Connection, id: i64, crcs: SyncCrcs) -> Result<(), StoreError> {
    c.prepare_cached("UPDATE mailboxes SET sync_crc = ?2, sync_crc_annot = ?3 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id, crcs.basic as i64, crcs.annot as i64]))
        .map_err(db)?;
    Ok(())
}

fn put_record(c: &Connection, id: i64, r: &Record) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO records (mailbox_id, uid, modseq, last_updated, internaldate, \
         size, guid, system_flags, keywords, expunged, thrid, savedate, createdmodseq, \
         annotations, peer_guid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
         ?13, ?14, ?15)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            r.uid.get() as i64,
            i(r.modseq.0),
            r.last_updated.0,
            r.internaldate.0,
            i(r.size),
            &r.guid.as_bytes()[..],
            r.flags.system.bits() as i64,
            keywords_text(&r.flags),
            r.expunged as i64,
            i(r.thrid),
            r.savedate.0,
            i(r.createdmodseq.0),
            encode_annotations(&r.annotations),
            r.peer_guid.as_ref().map(|p| p.as_bytes()),
        ])
    })
    .map_err(db)?;
    Ok(())
}

fn replace_annotations(c: &Connection, id: i64, a: &Annotations) -> Result<(), StoreError> {
    exec(
        c,
        "DELETE FROM mailbox_annotations WHERE mailbox_id = ?1",
        [id],
    )?;
    for (entry, owner, v) in a.iter() {
        exec(
            c,
            "INSERT INTO mailbox_annotations (mailbox_id, entry, owner, modseq, value) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                id,
                entry.as_bytes(),
                owner.as_bytes(),
                i(v.modseq.0),
                &v.value[..]
            ],
        )?;
    }
    Ok(())
}
