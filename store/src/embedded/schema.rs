//! The index's SQLite schema, its version table and migrations.
//!
//! Every table is keyed by identities (UNIQUEID, GUID, user id), never by
//! something that becomes a path. Names are BLOBs: mailbox names and user
//! ids are opaque bytes (modified UTF-7 in Cyrus, anything but NUL/CR/LF).
//!
//! Migrations are numbered SQL scripts run in order inside one transaction;
//! `schema_version` holds the number of the last one applied. A database
//! from a newer corvid is refused rather than guessed at.
//!
//! This module never reads or writes mail state; it only shapes the tables.

use super::error::{Error, Result};
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the whole model.
    r#"
    CREATE TABLE schema_version (version INTEGER NOT NULL);
    INSERT INTO schema_version VALUES (0);

    -- One row per distinct message: its bytes live in
    -- <partition>/corvid/<ab>/<guid>, written durably before this row.
    CREATE TABLE messages (
        guid      BLOB PRIMARY KEY,     -- 20 bytes, SHA-1 of the bytes
        partition TEXT NOT NULL,
        size      INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE mailboxes (
        id            INTEGER PRIMARY KEY,
        uniqueid      BLOB NOT NULL UNIQUE,
        guid          BLOB NOT NULL,    -- dsync mailbox GUID, 16 bytes (zero = none)
        name          BLOB NOT NULL UNIQUE,
        owner         BLOB,             -- NULL: shared mailbox
        mbtype        TEXT NOT NULL,
        uidvalidity   INTEGER NOT NULL,
        last_uid      INTEGER NOT NULL,
        highestmodseq INTEGER NOT NULL,
        recentuid     INTEGER NOT NULL,
        recenttime    INTEGER NOT NULL,
        last_appenddate INTEGER NOT NULL,
        pop3_last_login INTEGER NOT NULL,
        pop3_show_after INTEGER NOT NULL,
        xconvmodseq   INTEGER NOT NULL,
        raclmodseq    INTEGER NOT NULL,
        createdmodseq INTEGER NOT NULL,
        foldermodseq  INTEGER NOT NULL,
        deletedmodseq INTEGER NOT NULL,
        partition     TEXT NOT NULL,
        acl           BLOB NOT NULL,    -- Cyrus TAB form
        options       TEXT NOT NULL,
        quotaroot     BLOB,
        renamed_or_created_at INTEGER NOT NULL,
        -- Kept incrementally by every record change (XOR out, XOR in);
        -- verify recomputes and compares.
        sync_crc      INTEGER NOT NULL,
        sync_crc_annot INTEGER NOT NULL
    );
    CREATE INDEX mailboxes_owner ON mailboxes (owner, name);
    CREATE INDEX mailboxes_guid ON mailboxes (guid);

    -- Mailbox-level annotations; mailbox_id 0 holds the server's.
    CREATE TABLE mailbox_annotations (
        mailbox_id INTEGER NOT NULL,
        entry      BLOB NOT NULL,
        owner      BLOB NOT NULL,       -- '' = shared
        modseq     INTEGER NOT NULL,
        value      BLOB NOT NULL,
        PRIMARY KEY (mailbox_id, entry, owner)
    ) WITHOUT ROWID;

    -- Earlier names of a mailbox (Cyrus name history / dsync renames).
    CREATE TABLE name_history (
        mailbox_id INTEGER NOT NULL,
        seq        INTEGER NOT NULL,
        old_name   BLOB NOT NULL,
        at         INTEGER NOT NULL,
        modseq     INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, seq)
    ) WITHOUT ROWID;

    CREATE TABLE records (
        mailbox_id    INTEGER NOT NULL,
        uid           INTEGER NOT NULL,
        modseq        INTEGER NOT NULL,
        last_updated  INTEGER NOT NULL,
        internaldate  INTEGER NOT NULL,
        size          INTEGER NOT NULL,
        guid          BLOB NOT NULL,
        system_flags  INTEGER NOT NULL,
        keywords      BLOB NOT NULL,    -- SP-separated, first-added order
        expunged      INTEGER NOT NULL,
        thrid         INTEGER NOT NULL,
        savedate      INTEGER NOT NULL,
        createdmodseq INTEGER NOT NULL,
        annotations   BLOB,             -- NULL: none; see rows::encode_annotations
        peer_guid     BLOB,             -- dsync peer's GUID when not our SHA-1
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE INDEX records_guid ON records (guid);

    CREATE TABLE seen (
        userid     BLOB NOT NULL,
        uniqueid   BLOB NOT NULL,
        lastread   INTEGER NOT NULL,
        lastuid    INTEGER NOT NULL,
        lastchange INTEGER NOT NULL,
        seenuids   TEXT NOT NULL,
        PRIMARY KEY (userid, uniqueid)
    ) WITHOUT ROWID;
    CREATE INDEX seen_mailbox ON seen (uniqueid);

    CREATE TABLE subs (
        userid     BLOB NOT NULL,
        name       BLOB NOT NULL,
        subscribed INTEGER NOT NULL,
        changed_at INTEGER NOT NULL,
        PRIMARY KEY (userid, name)
    ) WITHOUT ROWID;

    CREATE TABLE quota (
        root   BLOB PRIMARY KEY,
        limits TEXT NOT NULL,           -- "STORAGE 100 MESSAGE 5"
        usage  TEXT NOT NULL,
        modseq INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE sieve (
        userid      BLOB NOT NULL,
        name        BLOB NOT NULL,
        last_update INTEGER NOT NULL,
        content     BLOB NOT NULL,
        PRIMARY KEY (userid, name)
    ) WITHOUT ROWID;
    CREATE TABLE sieve_active (
        userid BLOB PRIMARY KEY,
        name   BLOB NOT NULL
    ) WITHOUT ROWID;

    -- Deleted mailboxes (Cyrus 'd' entries; dsync mailbox deletes).
    CREATE TABLE tombstones (
        uniqueid   BLOB PRIMARY KEY,
        name       BLOB NOT NULL,
        guid       BLOB NOT NULL,
        owner      BLOB,
        deleted_at INTEGER NOT NULL,
        modseq     INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX tombstones_name ON tombstones (name);
    CREATE INDEX tombstones_owner ON tombstones (owner);

    -- The rolling replication log, per channel ('' = default channel).
    CREATE TABLE sync_log (
        channel TEXT NOT NULL,
        seq     INTEGER NOT NULL,
        type    TEXT NOT NULL,
        arg1    BLOB NOT NULL,
        arg2    BLOB,
        PRIMARY KEY (channel, seq)
    ) WITHOUT ROWID;
    -- last_seq never goes down, even when lines are trimmed (numbers never
    -- repeat); exported_seq is how far the Cyrus-format file mirror wrote.
    CREATE TABLE sync_log_channels (
        channel      TEXT PRIMARY KEY,
        last_seq     INTEGER NOT NULL,
        exported_seq INTEGER NOT NULL
    ) WITHOUT ROWID;

    -- Everyone with state in the store, derived so it can never disagree.
    CREATE VIEW users AS
        SELECT owner AS userid FROM mailboxes WHERE owner IS NOT NULL
        UNION SELECT userid FROM seen
        UNION SELECT userid FROM subs
        UNION SELECT userid FROM sieve;
    "#,
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Reads the schema version: 0 for an empty database.
fn version(conn: &Connection, path: &Path) -> Result<i64> {
    let has_table: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| corrupt(path, e))?;
    if has_table.is_none() {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| corrupt(path, e))?;
        if tables != 0 {
            return Err(Error::CorruptIndex {
                path: path.to_path_buf(),
                problem: "database has tables but no schema_version: not a corvid store".into(),
            });
        }
        return Ok(0);
    }
    conn.query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .map_err(|e| corrupt(path, e))
}

/// Brings the schema up to [`VERSION`] (writable connections only).
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let found = version(conn, path)?;
    if found > VERSION {
        return Err(Error::UnsupportedSchema {
            found,
            supported: VERSION,
        });
    }
    if found == VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.execute("UPDATE schema_version SET version = ?1", [i as i64 + 1])?;
    }
    tx.commit()?;
    Ok(())
}

/// Checks a read-only connection's schema is the one this build knows.
pub(crate) fn check(conn: &Connection, path: &Path) -> Result<()> {
    match version(conn, path)? {
        v if v == VERSION => Ok(()),
        0 => Err(Error::CorruptIndex {
            path: path.to_path_buf(),
            problem: "empty database: no corvid store here".into(),
        }),
        v if v > VERSION => Err(Error::UnsupportedSchema {
            found: v,
            supported: VERSION,
        }),
        v => Err(Error::CorruptIndex {
            path: path.to_path_buf(),
            problem: format!("schema version {v} needs migrating; open the store writable once"),
        }),
    }
}

/// Maps an SQLite error met while opening to "corrupt index" when SQLite
/// says the file is not a database or is malformed.
pub(crate) fn corrupt(path: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => Error::CorruptIndex {
            path: path.to_path_buf(),
            problem: e.to_string(),
        },
        _ => Error::Sqlite(e),
    }
}
