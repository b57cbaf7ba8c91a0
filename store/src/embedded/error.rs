//! The embedded store's errors, each saying whose fault it is.
//!
//! A store never "handles" its own bugs: broken invariants are assertions.
//! Everything here is either a caller's or a peer's bad input, a limit, the
//! disk, or damage found on disk.

use std::path::PathBuf;

/// What went wrong in the embedded store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The sender's bytes do not hash to the GUID they were sent under (peer's fault).
    #[error("message bytes hash to {actual}, not to the claimed GUID {expected}")]
    GuidMismatch {
        /// The GUID the caller claimed.
        expected: String,
        /// The SHA-1 of the bytes actually received.
        actual: String,
    },
    /// A message grew beyond `Options::message_bytes_max` (a limit; peer's fault).
    #[error("message larger than the limit of {limit} bytes")]
    MessageTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// A GUID that is not exactly 40 hex digits (caller's or peer's malformed input).
    #[error("not a GUID (40 hex digits): {0:?}")]
    InvalidGuid(String),
    /// A partition name that the configuration does not define (caller's or peer's fault).
    #[error("unknown partition {0:?}")]
    UnknownPartition(String),
    /// A batch refers to a message the store does not hold and the batch does not carry (caller's misuse).
    #[error("message {0} is neither stored nor staged")]
    MissingMessage(String),
    /// A batch is inconsistent with the stored state, e.g. a record for a mailbox that does not exist (caller's misuse).
    #[error("batch refused: {0}")]
    Refused(String),
    /// A read or write on the filesystem failed (the machine's fault: disk, permissions).
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite reported an error (store failure: disk, corruption, or a full disk).
    #[error("index database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The index database is not a corvid store or is damaged (damage found on disk).
    #[error("corrupt index {path}: {problem}")]
    CorruptIndex {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A message file is missing, truncated or does not hash to its GUID (damage found on disk).
    #[error("damaged message {guid}: {problem}")]
    DamagedMessage {
        /// The message's GUID.
        guid: String,
        /// What is wrong with its file.
        problem: String,
    },
    /// Another process has this store open for writing (operator's fault).
    #[error("store is locked by another process (lock file {0})")]
    Locked(PathBuf),
    /// The index was written by a newer corvid (operator: upgrade corvid).
    #[error("index schema version {found} is newer than this build supports ({supported})")]
    UnsupportedSchema {
        /// The version found in the database.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The store was opened read-only and a write was attempted (caller's misuse).
    #[error("store opened read-only")]
    ReadOnly,
    /// The committer stopped after an earlier failure; nothing more is accepted (store failure).
    #[error("store closed after an earlier failure: {0}")]
    Closed(String),
    /// The configuration is unusable, e.g. no partition defined (operator's fault).
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Short for `Result<T, embedded::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for engine::store::StoreError {
    /// Damage found on disk is `Corrupt`; everything else the engine sees
    /// as the store's own I/O failure (the caller-misuse variants of
    /// [`Error`] never reach the trait paths: they have their own
    /// `StoreError` variants there).
    fn from(e: Error) -> Self {
        use engine::store::StoreError;
        match e {
            Error::CorruptIndex { .. } | Error::DamagedMessage { .. } => {
                StoreError::Corrupt(e.to_string())
            }
            e => StoreError::Io(e.to_string()),
        }
    }
}
