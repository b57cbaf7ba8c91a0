//! A Maildir++ store that reads and writes exactly what Dovecot 2.3 does
//! with `mail_location = maildir:ROOT` (default layout, namespace
//! separator `/`), so corvid and Dovecot can share one maildir.
//!
//! What is on disk (see `research/maildir-format.md`):
//! * INBOX is ROOT itself; a folder `Work/Sub` is `ROOT/.Work.Sub`, names
//!   in modified UTF-7 ([`name`]). Each has `cur/ new/ tmp/`, and folders
//!   get an empty `maildirfolder` when corvid creates them.
//! * Message files `<base>[:2,<flags>]` ([`file_name`]): corvid's bases
//!   are `<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>,W=<vsize>` (the
//!   Maildir `Q` delivery counter keeps them unique in a process); a message with
//!   no flags goes to `new/`, one with flags to `cur/`; flag changes rename
//!   in place (also inside `new/`, as Dovecot does).
//! * `dovecot-uidlist` ([`uidlist`]) per mailbox, changed only under its
//!   `dovecot-uidlist.lock` dot-lock ([`lock`]) and always replaced whole
//!   (temp file, fsync, rename); `dovecot-keywords` ([`keywords`]);
//!   `subscriptions` in ROOT, version 2 ([`subscriptions`]);
//!   `dovecot-uidvalidity` in ROOT for new UIDVALIDITYs.
//! * Every file and directory corvid creates gets the mode, owner and
//!   group of the directory it is in (as far as the process may), so a
//!   corvid running as root leaves a maildir its user's Dovecot can
//!   rewrite. `tmp/` files older than 36 hours are removed, as Dovecot does.
//! * corvid's own sidecars, ignored by Dovecot: `corvid-modseqs`,
//!   `corvid-expunging` (transient) and `corvid-uniqueid` (engine model,
//!   [`model`]).
//!
//! Identity as dsync sees it: the mailbox GUID is the uidlist's `G`; a
//! message's GUID is its uidlist `G` extension if present, else its base
//! name. [`Maildir::append`] with a requested GUID uses it as the base name
//! when it already carries the right `,S=`/`,W=` (what dsync between two
//! maildirs produces), else stores it in `G`.
//!
//! Durability order of a delivery: the message is written to `tmp/`,
//! fsynced, hard-linked into `new/` or `cur/` (never overwriting), the
//! directory fsynced; only then is the uidlist that names it replaced. A
//! crash before that leaves at worst an unlisted file (any reader, corvid
//! or Dovecot, gives it the next UID) or a stray `tmp/` file; never a
//! uidlist line naming a missing file. Expunge writes its intent
//! (`corvid-expunging`, the base names) first, then unlinks, then drops the
//! uidlist lines; the next corvid pass rolls an interrupted expunge
//! forward, so an expunged message never comes back under a new UID and
//! stale lines do not outlive the next pass (Dovecot ignores them meanwhile).
//!
//! Modseqs: Dovecot keeps them only in `dovecot.index*`, which corvid
//! neither reads nor writes (doveadm rebuilds its index from the uidlist
//! and file names, keeping UIDs, UIDVALIDITY, GUIDs and flags; only
//! modseqs restart, which costs a dsync peer one full resync). corvid keeps
//! its own per-mailbox sidecar `corvid-modseqs`: the highest modseq and,
//! per UID, the modseq, the flag letters last seen, the SHA-1 of the
//! bytes (the engine model names bytes by SHA-1) and the file's size,
//! virtual size and mtime (all computed once, in one read, as Dovecot
//! keeps them in its index cache), all for one UIDVALIDITY (a new one
//! voids the per-UID lines). A pass over a mailbox whose files have not
//! changed since the last one is answered from that view
//! (`view_cache.rs`). Every pass that reads afresh compares the file
//! names with the sidecar under the uidlist lock; a new
//! message or changed letters get the next modseq, a vanished message
//! bumps the highest modseq. So changes made by Dovecot are seen too, at
//! the next corvid pass. Dovecot ignores the file.
//!
//! Never done here: renumbering. A uidlist Dovecot would call broken is
//! refused as [`Error::Corrupt`]; an append asking for a UID below the next
//! UID is refused ([`Error::UidTooLow`]), because Dovecot would give such a
//! message a new UID, unless the caller says the UID space restarted
//! ([`Maildir::append_reusing_uid`], after a UIDVALIDITY change): then the
//! mailbox's `dovecot.index*` caches are dropped so Dovecot rebuilds them
//! from the uidlist. Cyrus-only concepts (ACLs, quota roots, annotations,
//! seen databases, Sieve, sync logs) have no Maildir form:
//! [`Maildir::refuse`] names them as [`Error::Unsupported`]. Dovecot's
//! `dovecot.index*` and `dovecot.list.index*` are never written (only
//! dropped, above). `dovecot.mailbox.log` ([`mailbox_log`]) is read and
//! appended to as Dovecot does, so delete, rename and subscription
//! history (with timestamps) is shared with Dovecot and travels in dsync.
//!
//! Two faces: [`Maildir`] is the Maildir-native API (names, UIDs, Dovecot
//! GUIDs, flags as letters); [`model::UserView`] and [`model::UserStore`]
//! show one user's maildir as the engine's mail model (`MailRead`,
//! `StoreWrite`), which is what makes it a dsync location.

pub mod file_name;
pub mod keywords;
pub mod lock;
pub mod mailbox_log;
pub mod model;
pub mod name;
pub mod subscriptions;
pub mod uidlist;
mod view_cache;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::model::{Flags, Guid, Keyword, MailboxGuid, SystemFlags};

use file_name::FileName;
use keywords::Keywords;
use lock::{like_dir, sync_dir, write_atomic, DotLock};
pub use model::{UserStore, UserView};
pub use name::{Name, NameError};
use subscriptions::Subscriptions;
use uidlist::{Entry, Uidlist, UidlistError};

const UIDLIST: &str = "dovecot-uidlist";
const KEYWORDS: &str = "dovecot-keywords";
const SUBSCRIPTIONS: &str = "subscriptions";
const UIDVALIDITY: &str = "dovecot-uidvalidity";
const MODSEQS: &str = "corvid-modseqs";
const EXPUNGING: &str = "corvid-expunging";
const UNIQUEID: &str = "corvid-uniqueid";
const TRASHED: &str = "..DOVECOT-TRASHED";

/// Limits and timeouts of a [`Maildir`].
#[derive(Debug, Clone)]
pub struct Options {
    /// How long to wait for a dot-lock (Dovecot waits about 122 s).
    pub lock_timeout_ms: u64,
    /// Age after which a dot-lock of an unknown holder is stale (Dovecot:
    /// 120 s for the uidlist).
    pub lock_stale_ms: u64,
    /// Largest message accepted by [`Maildir::append`].
    pub message_bytes_max: u64,
    /// Largest control file (uidlist, keywords, subscriptions, modseqs)
    /// read; a bigger one is refused as corrupt.
    pub control_file_bytes_max: u64,
    /// Most mailboxes listed.
    pub mailboxes_max: usize,
    /// For crash tests only: abort the process at the n-th durability step
    /// (0-based) to simulate a crash at exactly that point.
    pub fault_abort_at: Option<u64>,
    /// Most messages [`Maildir::append_many`] links under one lock with
    /// one uidlist write (each holds an open file until its fsync).
    pub batch_messages_max: usize,
    /// Threads that fsync a group's files at once.
    pub fsync_threads: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            lock_timeout_ms: 122_000,
            lock_stale_ms: 120_000,
            message_bytes_max: 64 << 20,
            control_file_bytes_max: 64 << 20,
            mailboxes_max: 100_000,
            fault_abort_at: None,
            batch_messages_max: 512,
            fsync_threads: 16,
        }
    }
}

/// Why a Maildir operation failed, and whose fault it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Caller's (or peer's) mailbox name cannot be stored in Maildir++.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Caller's misuse: no such mailbox.
    #[error("no mailbox {0}")]
    NoMailbox(Name),
    /// Caller's misuse: the mailbox already exists.
    #[error("mailbox {0} exists")]
    MailboxExists(Name),
    /// Caller's misuse: INBOX cannot be deleted or renamed in Maildir++.
    #[error("INBOX cannot be deleted or renamed")]
    Inbox,
    /// Caller's misuse: no message with this UID.
    #[error("no message with UID {uid} in {mailbox}")]
    NoMessage {
        /// The mailbox.
        mailbox: Name,
        /// The UID.
        uid: u32,
    },
    /// Caller asked for a UID Dovecot would renumber (below the next UID).
    #[error("UID {wanted} is below the next UID {next}")]
    UidTooLow {
        /// The requested UID.
        wanted: u32,
        /// The mailbox's next UID.
        next: u32,
    },
    /// Caller's (peer's) message GUID cannot be kept in a uidlist (empty,
    /// space, CR, LF, NUL).
    #[error("message GUID {0:?} cannot be stored in dovecot-uidlist")]
    BadGuid(String),
    /// A mailbox already uses all 26 keyword letters.
    #[error("mailbox {0} already has 26 keywords")]
    KeywordsFull(Name),
    /// A limit of [`Options`] was hit.
    #[error("{what} exceeds {limit}")]
    TooLarge {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// A Cyrus-only concept with no Maildir form was asked for.
    #[error("{0} has no Maildir form")]
    Unsupported(&'static str),
    /// A control file written by someone else is broken (Dovecot would
    /// rebuild it, renumbering; corvid refuses).
    #[error("{path}: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The file system failed (or a lock timed out).
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A mailbox's counters, as `doveadm mailbox status` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Name.
    pub name: Name,
    /// Mailbox GUID (uidlist `G`).
    pub guid: MailboxGuid,
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// Next UID: `max(N, last UID + 1)`.
    pub uidnext: u32,
    /// Messages whose file exists.
    pub messages: u32,
    /// corvid's highest modseq (see the module doc), at least 1.
    pub highest_modseq: u64,
}

/// One message as corvid (and dsync) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// UID.
    pub uid: u32,
    /// Message GUID: uidlist `G`, else the base name.
    pub guid: String,
    /// System flags from the file name.
    pub flags: SystemFlags,
    /// Keywords from the file name via `dovecot-keywords` (a letter with no
    /// entry reads as `unknown-<n>`, as Dovecot names it).
    pub keywords: Vec<Keyword>,
    /// Flag letters corvid does not interpret (`P`), kept on renames.
    pub other_letters: String,
    /// Physical size (`,S=`, uidlist `S`, or the file's size).
    pub size: u64,
    /// Virtual size, LF counted as CRLF (`,W=`, uidlist `W`, or counted).
    pub vsize: u64,
    /// INTERNALDATE: the file's mtime, Unix seconds.
    pub internaldate: i64,
    /// corvid modseq of the last change.
    pub modseq: u64,
    /// SHA-1 of the file's bytes (the engine model's message GUID); `None`
    /// only for a file that vanished while it was being hashed.
    pub sha1: Option<Guid>,
    /// The file, relative to the mailbox directory (`new/…`, `cur/…`).
    pub file: String,
}

impl Message {
    /// Flags and keywords as the engine model holds them.
    pub fn model_flags(&self) -> Flags {
        Flags::with(self.flags, self.keywords.iter().cloned())
    }
}

/// What to append.
#[derive(Debug, Clone, Default)]
pub struct Append {
    /// The UID to give it (must be ≥ the next UID); `None`: the next UID.
    pub uid: Option<u32>,
    /// The GUID to give it (dsync); `None`: its base name.
    pub guid: Option<String>,
    /// System flags.
    pub flags: SystemFlags,
    /// Keywords.
    pub keywords: Vec<Keyword>,
    /// INTERNALDATE (file mtime); `None`: now.
    pub internaldate: Option<i64>,
}

/// Where the bytes of a message given to [`Maildir::append_many`] come
/// from.
pub enum Body<'a> {
    /// In memory.
    Bytes(&'a [u8]),
    /// A file, opened only while it is copied, so a group of thousands
    /// holds no descriptor per message.
    File(&'a Path),
    /// Any reader.
    Reader(&'a mut dyn Read),
}

impl std::fmt::Debug for Body<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Body::File(p) => write!(f, "File({})", p.display()),
            Body::Reader(_) => f.write_str("Reader"),
        }
    }
}

/// One message of [`Maildir::append_many`].
#[derive(Debug)]
pub struct NewMessage<'a> {
    /// Its bytes.
    pub body: Body<'a>,
    /// Its UID, GUID, flags and date.
    pub how: Append,
}

/// A message written to `tmp/` and not yet linked.
struct Written {
    path: PathBuf,
    prefix: String,
    size: u64,
    vsize: u64,
    sha1: Guid,
    /// Open until the group's fsync.
    file: Option<File>,
}

/// What to give a new mailbox.
#[derive(Debug, Clone, Copy, Default)]
pub struct Create {
    /// Its GUID (dsync keeps GUIDs across peers); `None`: a fresh one.
    pub guid: Option<MailboxGuid>,
    /// Its UIDVALIDITY; `None`: the next from `dovecot-uidvalidity`.
    pub uidvalidity: Option<u32>,
}

/// A Maildir++ root; see the module doc. Safe to share between threads;
/// every write takes Dovecot's locks, so other processes (Dovecot, another
/// corvid) may work on the same root at once.
#[derive(Debug)]
pub struct Maildir {
    root: PathBuf,
    options: Options,
    host: String,
    uniq: AtomicU64,
    fault_steps: AtomicU64,
    /// Mailbox views reused while their files are unchanged.
    views: view_cache::ViewCache<Snapshot>,
    /// Where an identity (GUID, uniqueid) was last seen: a hint, always
    /// checked against the mailbox before it is believed.
    name_hints: std::sync::Mutex<std::collections::HashMap<String, Name>>,
}

/// How many messages the reusable views of one [`Maildir`] may hold in
/// all (about 200 bytes each).
const VIEW_CACHE_MESSAGES: usize = 250_000;

/// A visible message file.
#[derive(Debug, Clone)]
struct Found {
    sub: &'static str,
    name: FileName,
}

/// One consistent view of a mailbox.
struct Snapshot {
    dir: PathBuf,
    uidlist: Uidlist,
    files: BTreeMap<String, Found>,
    keywords: Keywords,
    modseqs: Modseqs,
    /// What this process just wrote (base → SHA-1 and sizes), so their
    /// modseq lines need no second read.
    fresh: BTreeMap<String, Facts>,
    /// How many listed messages have a file, counted once per view (asked
    /// only of finished views, which are shared and never changed).
    live: std::sync::OnceLock<u32>,
}

impl Snapshot {
    fn live_count(&self) -> u32 {
        *self.live.get_or_init(|| {
            self.uidlist
                .entries
                .iter()
                .filter(|e| self.files.contains_key(&e.base))
                .count() as u32
        })
    }
}

/// What a message file's bytes and inode say, computed once per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Facts {
    sha1: Guid,
    size: u64,
    vsize: u64,
}

/// The `corvid-modseqs` sidecar: `1 H<highest>` then per live UID
/// `<uid> <modseq> <sha1-hex> [S<size> W<vsize> T<mtime>] :<flag letters>`.
/// The SHA-1 of the file's bytes is what the engine model names message
/// bytes by; it and the sizes and date are computed once, when the
/// message first shows up, so a later pass over an unchanged mailbox
/// reads no message file and stats none (Dovecot keeps the same facts in
/// its `dovecot.index.cache`). Lines without the `S W T` fields (written
/// before they existed) are filled in by the next locked pass; readers
/// that predate them ignore the extra fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Modseqs {
    highest: u64,
    /// The UIDVALIDITY the per-UID lines belong to; a different one in
    /// the uidlist (rebuilt by Dovecot) voids them.
    uidvalidity: u32,
    per_uid: BTreeMap<u32, Seen>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    modseq: u64,
    sha1: Guid,
    letters: String,
    /// Physical size, virtual size, mtime (INTERNALDATE) of the file.
    cached: Option<(u64, u64, i64)>,
}

impl Modseqs {
    fn parse(text: &str) -> Option<Modseqs> {
        let mut lines = text.lines();
        let (h, v) = lines.next()?.strip_prefix("1 H")?.split_once(" V")?;
        let (highest, uidvalidity) = (h.parse().ok()?, v.parse().ok()?);
        let mut per_uid = BTreeMap::new();
        for l in lines {
            let (head, letters) = l.split_once(" :")?;
            let mut f = head.split(' ');
            let uid = f.next()?.parse().ok()?;
            let modseq = f.next()?.parse().ok()?;
            let sha1 = Guid::parse(f.next()?.as_bytes()).ok()?;
            let cached = match (f.next(), f.next(), f.next()) {
                (Some(sz), Some(w), Some(t)) => Some((
                    sz.strip_prefix('S')?.parse().ok()?,
                    w.strip_prefix('W')?.parse().ok()?,
                    t.strip_prefix('T')?.parse().ok()?,
                )),
                _ => None,
            };
            per_uid.insert(
                uid,
                Seen {
                    modseq,
                    sha1,
                    letters: letters.to_string(),
                    cached,
                },
            );
        }
        Some(Modseqs {
            highest,
            uidvalidity,
            per_uid,
        })
    }

    fn to_text(&self) -> String {
        let mut s = format!("1 H{} V{}\n", self.highest, self.uidvalidity);
        for (uid, x) in &self.per_uid {
            match x.cached {
                Some((size, vsize, date)) => s.push_str(&format!(
                    "{uid} {} {} S{size} W{vsize} T{date} :{}\n",
                    x.modseq, x.sha1, x.letters
                )),
                None => s.push_str(&format!("{uid} {} {} :{}\n", x.modseq, x.sha1, x.letters)),
            }
        }
        s
    }
}

impl Maildir {
    /// Open (creating if needed) the Maildir++ root `root`, with INBOX's
    /// `cur/ new/ tmp/` in it.
    pub fn open(root: impl Into<PathBuf>, options: Options) -> Result<Maildir> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        for sub in ["cur", "new", "tmp"] {
            let p = root.join(sub);
            if !p.is_dir() {
                fs::create_dir_all(&p).map_err(io_err(&p))?;
                like_dir(&p, &root).map_err(io_err(&p))?;
            }
        }
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        Ok(Maildir {
            root,
            options,
            host: file_name::escape_host(&host),
            uniq: AtomicU64::new(0),
            fault_steps: AtomicU64::new(0),
            views: view_cache::ViewCache::new(VIEW_CACHE_MESSAGES),
            name_hints: Default::default(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The root's `dovecot.mailbox.log` ([`mailbox_log`]).
    pub fn mailbox_log(&self) -> mailbox_log::MailboxLog {
        mailbox_log::MailboxLog::at(&self.root)
    }

    /// Append a record to `dovecot.mailbox.log`, as Dovecot does after a
    /// delete, rename or subscription change (dsync passes the peer's
    /// timestamp when it applies the peer's change).
    pub fn log_change(&self, kind: mailbox_log::Kind, guid: [u8; 16], at: i64) -> Result<()> {
        let log = self.mailbox_log();
        log.append(&mailbox_log::Record {
            kind,
            guid,
            timestamp: mailbox_log::timestamp_of(at),
        })
        .map_err(io_err(&self.root.join(mailbox_log::FILE_NAME)))?;
        self.fault_point();
        Ok(())
    }

    /// Refuse a Cyrus-only concept (`"ACL"`, `"quota root"`,
    /// `"annotation"`, …) with [`Error::Unsupported`].
    pub fn refuse<T>(&self, what: &'static str) -> Result<T> {
        Err(Error::Unsupported(what))
    }

    fn fault_point(&self) {
        if let Some(at) = self.options.fault_abort_at {
            if self.fault_steps.fetch_add(1, Ordering::SeqCst) == at {
                std::process::abort();
            }
        }
    }

    fn dir_of(&self, name: &Name) -> PathBuf {
        match name.dir_name() {
            None => self.root.clone(),
            Some(d) => self.root.join(d),
        }
    }

    fn existing_dir(&self, name: &Name) -> Result<PathBuf> {
        let d = self.dir_of(name);
        if name.is_inbox() || d.is_dir() {
            // Dovecot creates missing cur/new/tmp on open for Maildir++.
            for sub in ["cur", "new", "tmp"] {
                let p = d.join(sub);
                if !p.is_dir() {
                    fs::create_dir_all(&p).map_err(io_err(&p))?;
                    like_dir(&p, &d).map_err(io_err(&p))?;
                }
            }
            Ok(d)
        } else {
            Err(Error::NoMailbox(name.clone()))
        }
    }

    fn lock(&self, target: &Path) -> Result<DotLock> {
        DotLock::acquire(
            target,
            &self.host,
            Duration::from_millis(self.options.lock_timeout_ms),
            Duration::from_millis(self.options.lock_stale_ms),
        )
        .map_err(io_err(target))
    }

    fn read_control(&self, path: &Path) -> Result<Option<String>> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        let mut s = String::new();
        let max = self.options.control_file_bytes_max;
        (&mut f)
            .take(max + 1)
            .read_to_string(&mut s)
            .map_err(io_err(path))?;
        if s.len() as u64 > max {
            return Err(Error::TooLarge {
                what: "control file",
                limit: max,
            });
        }
        Ok(Some(s))
    }

    /// The first line of a control file (without its newline), read
    /// without the rest: a uidlist's header names the mailbox's identity.
    pub(crate) fn read_control_header(&self, path: &Path) -> Result<Option<String>> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        let mut line = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::with_capacity(4096, f.take(self.options.control_file_bytes_max)),
            &mut line,
        )
        .map_err(io_err(path))?;
        Ok(Some(line.trim_end_matches('\n').to_string()))
    }

    /// The name last seen with identity `key` (a hint to check).
    pub(crate) fn hinted_name(&self, key: &str) -> Option<Name> {
        self.name_hints.lock().ok()?.get(key).cloned()
    }

    /// Remember that identity `key` was seen at `name`.
    pub(crate) fn remember_name(&self, key: String, name: &Name) {
        if let Ok(mut h) = self.name_hints.lock() {
            // Bounded by the mailboxes that exist, unless names churn.
            if h.len() > 4 * self.options.mailboxes_max {
                h.clear();
            }
            h.insert(key, name.clone());
        }
    }

    /// Every mailbox, by name: INBOX and each `.`-directory that decodes
    /// to a valid name. Entries that do not are skipped (and logged).
    pub fn list(&self) -> Result<Vec<Name>> {
        let mut out = vec![Name::inbox()];
        let rd = fs::read_dir(&self.root).map_err(io_err(&self.root))?;
        for ent in rd {
            let ent = ent.map_err(io_err(&self.root))?;
            let fname = ent.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            if fname.starts_with(TRASHED) || !ent.path().is_dir() {
                continue;
            }
            match Name::from_dir_name(fname) {
                Some(Ok(n)) if !n.is_inbox() => out.push(n),
                Some(Ok(_)) | None => {}
                Some(Err(e)) => tracing::warn!(entry = fname, error = %e, "skipping maildir entry"),
            }
            if out.len() > self.options.mailboxes_max {
                return Err(Error::TooLarge {
                    what: "mailboxes",
                    limit: self.options.mailboxes_max as u64,
                });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether a mailbox exists.
    pub fn exists(&self, name: &Name) -> bool {
        name.is_inbox() || self.dir_of(name).is_dir()
    }

    /// Create a mailbox (not INBOX, which always exists).
    pub fn create(&self, name: &Name, how: Create) -> Result<Status> {
        if name.is_inbox() {
            return Err(Error::MailboxExists(name.clone()));
        }
        let dir = self.dir_of(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::MailboxExists(name.clone()))
            }
            Err(e) => return Err(io_err(&dir)(e)),
        }
        like_dir(&dir, &self.root).map_err(io_err(&dir))?;
        for sub in ["cur", "new", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir(&p).map_err(io_err(&p))?;
            like_dir(&p, &dir).map_err(io_err(&p))?;
        }
        let mf = dir.join("maildirfolder");
        File::create(&mf).map_err(io_err(&mf))?;
        like_dir(&mf, &dir).map_err(io_err(&mf))?;
        let uidvalidity = match how.uidvalidity {
            Some(v) if v != 0 => v,
            _ => self.next_uidvalidity()?,
        };
        let guid = how.guid.unwrap_or_else(|| self.new_guid(&dir));
        {
            let _l = self.lock(&dir.join(UIDLIST))?;
            self.write_uidlist(&dir, &Uidlist::new(uidvalidity, guid))?;
        }
        sync_dir(&self.root).map_err(io_err(&self.root))?;
        self.status(name)
    }

    /// Rename a mailbox and every mailbox below it. Each directory moves
    /// with one `rename()`; a crash in the middle leaves some children
    /// renamed, each of them whole.
    pub fn rename(&self, from: &Name, to: &Name) -> Result<()> {
        if from.is_inbox() || to.is_inbox() {
            return Err(Error::Inbox);
        }
        if self.exists(to) {
            return Err(Error::MailboxExists(to.clone()));
        }
        let moving: Vec<Name> = self
            .list()?
            .into_iter()
            .filter(|n| n.is_at_or_below(from))
            .collect();
        if moving.is_empty() {
            return Err(Error::NoMailbox(from.clone()));
        }
        let mut plan = Vec::new();
        for n in moving {
            let tail = &n.as_str()[from.as_str().len()..];
            let target = Name::new(&format!("{}{}", to.as_str(), tail))?;
            if self.exists(&target) {
                return Err(Error::MailboxExists(target));
            }
            plan.push((self.dir_of(&n), self.dir_of(&target)));
        }
        for (a, b) in plan {
            fs::rename(&a, &b).map_err(io_err(&a))?;
        }
        sync_dir(&self.root).map_err(io_err(&self.root))
    }

    /// Dovecot's `mailbox_update` for dsync: set a new UIDVALIDITY (UIDs
    /// stay; corvid's per-UID modseqs restart), and raise the next UID and
    /// the highest modseq to at least the given values. Never lowers.
    pub fn update(
        &self,
        name: &Name,
        uidvalidity: Option<u32>,
        min_next_uid: u32,
        min_highest_modseq: u64,
    ) -> Result<Status> {
        let dir = self.existing_dir(name)?;
        {
            let _l = self.lock(&dir.join(UIDLIST))?;
            let mut s = self.snapshot_locked(name, &dir)?;
            let mut l = s.uidlist.clone();
            if let Some(v) = uidvalidity.filter(|&v| v != 0) {
                l.uidvalidity = v;
            }
            l.header_next_uid = l.next_uid().max(min_next_uid);
            if l != s.uidlist {
                self.write_uidlist(&dir, &l)?;
                s.uidlist = l;
            }
            self.update_modseqs(&mut s)?;
            if s.modseqs.highest < min_highest_modseq {
                let mut m = s.modseqs.clone();
                m.highest = min_highest_modseq;
                write_atomic(
                    &dir,
                    MODSEQS,
                    &self.temp_name(MODSEQS),
                    m.to_text().as_bytes(),
                )
                .map_err(io_err(&dir))?;
                self.fault_point();
            }
        }
        self.status(name)
    }

    /// Give a mailbox another GUID (dsync: two independently created
    /// mailboxes of one name become one, the smaller GUID adopting the
    /// bigger); Dovecot does the same by rewriting the uidlist header.
    pub fn set_guid(&self, name: &Name, guid: MailboxGuid) -> Result<()> {
        let dir = self.existing_dir(name)?;
        let _l = self.lock(&dir.join(UIDLIST))?;
        let s = self.snapshot_locked(name, &dir)?;
        if s.uidlist.guid != Some(guid) {
            let mut l = s.uidlist.clone();
            l.guid = Some(guid);
            self.write_uidlist(&dir, &l)?;
        }
        Ok(())
    }

    /// The engine-model uniqueid kept for a mailbox whose uniqueid is not
    /// derived from its GUID (`corvid-uniqueid` in its directory).
    fn stored_uniqueid(&self, name: &Name) -> Result<Option<String>> {
        Ok(self
            .read_control(&self.dir_of(name).join(UNIQUEID))?
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }

    /// Keep (`Some`) or forget (`None`) a mailbox's own uniqueid.
    fn store_uniqueid(&self, name: &Name, id: Option<&str>) -> Result<()> {
        let dir = self.existing_dir(name)?;
        match id {
            Some(id) => write_atomic(
                &dir,
                UNIQUEID,
                &self.temp_name(UNIQUEID),
                format!("{id}\n").as_bytes(),
            )
            .map_err(io_err(&dir)),
            None => match fs::remove_file(dir.join(UNIQUEID)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&dir)(e)),
                _ => Ok(()),
            },
        }
    }

    /// Rename one mailbox's directory, leaving mailboxes below it where
    /// they are (in Maildir++ every mailbox is its own directory; this is
    /// the engine model's rename).
    pub fn rename_one(&self, from: &Name, to: &Name) -> Result<()> {
        if from.is_inbox() || to.is_inbox() {
            return Err(Error::Inbox);
        }
        let a = self.existing_dir(from)?;
        if self.exists(to) {
            return Err(Error::MailboxExists(to.clone()));
        }
        let b = self.dir_of(to);
        fs::rename(&a, &b).map_err(io_err(&a))?;
        sync_dir(&self.root).map_err(io_err(&self.root))
    }

    /// Delete a mailbox with its messages (children stay, as Dovecot
    /// does): renamed to `..DOVECOT-TRASHED` first, so a crash leaves
    /// either the mailbox or a leftover Dovecot and corvid both ignore.
    pub fn delete(&self, name: &Name) -> Result<()> {
        if name.is_inbox() {
            return Err(Error::Inbox);
        }
        let dir = self.existing_dir(name)?;
        let trash = self.root.join(TRASHED);
        if trash.exists() {
            fs::remove_dir_all(&trash).map_err(io_err(&trash))?;
        }
        fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        sync_dir(&self.root).map_err(io_err(&self.root))?;
        fs::remove_dir_all(&trash).map_err(io_err(&trash))
    }

    /// A mailbox's counters (assigning UIDs to new files first, as Dovecot
    /// does on every sync).
    pub fn status(&self, name: &Name) -> Result<Status> {
        let s = self.snapshot(name)?;
        Ok(Status {
            name: name.clone(),
            guid: s.uidlist.guid.unwrap_or_default(),
            uidvalidity: s.uidlist.uidvalidity,
            uidnext: s.uidlist.next_uid(),
            messages: s.live_count(),
            highest_modseq: s.modseqs.highest.max(1),
        })
    }

    /// Every message of a mailbox, by UID.
    pub fn messages(&self, name: &Name) -> Result<Vec<Message>> {
        self.messages_in(name, 1..=u32::MAX, usize::MAX)
    }

    /// The first `limit` messages of a mailbox with UIDs in `uids`, by UID
    /// (only those are built: a one-UID lookup costs one entry, not the
    /// mailbox).
    pub fn messages_in(
        &self,
        name: &Name,
        uids: std::ops::RangeInclusive<u32>,
        limit: usize,
    ) -> Result<Vec<Message>> {
        retry_renamed(|| {
            let s = self.snapshot(name)?;
            let entries = &s.uidlist.entries;
            let from = entries.partition_point(|e| e.uid < *uids.start());
            let mut out = Vec::new();
            for e in entries[from..].iter().take_while(|e| e.uid <= *uids.end()) {
                if out.len() >= limit {
                    break;
                }
                if let Some(f) = s.files.get(&e.base) {
                    out.push(self.message_of(&s, e, f)?);
                }
            }
            Ok(out)
        })
    }

    /// One message.
    pub fn message(&self, name: &Name, uid: u32) -> Result<Message> {
        retry_renamed(|| {
            let s = self.snapshot(name)?;
            self.find(&s, name, uid)
                .and_then(|(e, f)| self.message_of(&s, e, f))
        })
    }

    /// Up to `max_len` bytes of a message's file from `offset` (fewer only
    /// at the end). Read in chunks to keep memory bounded.
    pub fn read(&self, name: &Name, uid: u32, offset: u64, max_len: usize) -> Result<Vec<u8>> {
        for _ in 0..3 {
            let m = self.message(name, uid)?;
            let path = self.dir_of(name).join(&m.file);
            let mut f = match File::open(&path) {
                Ok(f) => f,
                // Renamed by a flag change meanwhile: look it up again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            f.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
            let mut buf = Vec::new();
            f.take(max_len as u64)
                .read_to_end(&mut buf)
                .map_err(io_err(&path))?;
            return Ok(buf);
        }
        Err(Error::NoMessage {
            mailbox: name.clone(),
            uid,
        })
    }

    /// Deliver a message the Maildir way (see the module doc for the
    /// durability order). Returns it as now stored.
    pub fn append(&self, name: &Name, body: &mut dyn Read, how: &Append) -> Result<Message> {
        self.append_one(name, body, how, false)
    }

    /// [`Maildir::append`] that may also take a `uid` below the next UID
    /// if no message has it: after a UIDVALIDITY change the UID space
    /// starts over, as dsync does. Dovecot would renumber such a message
    /// when its index already knows a higher next UID, so the mailbox's
    /// `dovecot.index*` files are deleted; Dovecot rebuilds them from the
    /// uidlist (research note 3.4.1, 3.7), losing only its modseqs.
    pub fn append_reusing_uid(
        &self,
        name: &Name,
        body: &mut dyn Read,
        how: &Append,
    ) -> Result<Message> {
        self.append_one(name, body, how, true)
    }

    fn append_one(
        &self,
        name: &Name,
        body: &mut dyn Read,
        how: &Append,
        below_next_uid: bool,
    ) -> Result<Message> {
        let mut v = self.append_many_inner(
            name,
            vec![NewMessage {
                body: Body::Reader(body),
                how: how.clone(),
            }],
            below_next_uid,
        )?;
        Ok(v.pop().expect("one message appended"))
    }

    /// Deliver many messages to one mailbox at once, in order, with the
    /// durability order of [`Maildir::append`] kept for the whole group:
    /// every file is written to `tmp/` and fsynced (in parallel), then
    /// under ONE uidlist lock they are linked into `new/`/`cur/`, each of
    /// those directories is fsynced once, and the uidlist and the modseq
    /// sidecar are each replaced once. Groups larger than
    /// [`Options::batch_messages_max`] are cut into several such rounds.
    ///
    /// A round is checked whole before any link (UIDs, GUIDs, keyword
    /// room), so a refused round links nothing; a crash within a round
    /// leaves at worst linked but unlisted files, which any reader gives
    /// the next UIDs, never a uidlist line without its file. Returns the
    /// messages as stored, in the order given.
    pub fn append_many(&self, name: &Name, msgs: Vec<NewMessage<'_>>) -> Result<Vec<Message>> {
        self.append_many_inner(name, msgs, false)
    }

    /// [`Maildir::append_many`] with the UID rule of
    /// [`Maildir::append_reusing_uid`].
    pub fn append_many_reusing_uids(
        &self,
        name: &Name,
        msgs: Vec<NewMessage<'_>>,
    ) -> Result<Vec<Message>> {
        self.append_many_inner(name, msgs, true)
    }

    fn append_many_inner(
        &self,
        name: &Name,
        msgs: Vec<NewMessage<'_>>,
        below_next_uid: bool,
    ) -> Result<Vec<Message>> {
        let dir = self.existing_dir(name)?;
        for m in &msgs {
            if let Some(g) = &m.how.guid {
                if g.is_empty() || g.contains([' ', '\r', '\n', '\0', '\t']) {
                    return Err(Error::BadGuid(g.clone()));
                }
            }
        }
        let round = self.options.batch_messages_max.max(1);
        let mut out = Vec::with_capacity(msgs.len());
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let chunk: Vec<NewMessage<'_>> = msgs.by_ref().take(round).collect();
            let mut written: Vec<Written> = Vec::with_capacity(chunk.len());
            let mut hows = Vec::with_capacity(chunk.len());
            let mut r = Ok(());
            for m in chunk {
                let prefix = self.new_base_prefix();
                let path = dir.join("tmp").join(&prefix);
                match self.write_tmp(&path, m.body, m.how.internaldate) {
                    Ok(w) => written.push(Written { prefix, ..w }),
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
                hows.push(m.how);
            }
            let r = r
                .and_then(|()| self.sync_written(&mut written))
                .and_then(|()| self.link_written(name, &dir, &written, &hows, below_next_uid));
            // Linked or failed, the tmp names go.
            for w in &written {
                let _ = fs::remove_file(&w.path);
            }
            out.extend(r?);
        }
        Ok(out)
    }

    /// fsync the group's tmp files, several at once: the filesystem folds
    /// concurrent flushes into fewer journal commits.
    fn sync_written(&self, written: &mut [Written]) -> Result<()> {
        let files: Vec<(&Path, File)> = written
            .iter_mut()
            .filter_map(|w| w.file.take().map(|f| (w.path.as_path(), f)))
            .collect();
        let threads = self.options.fsync_threads.clamp(1, files.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((p, f)) = files.get(i) else { return };
            if let Err(e) = f.sync_all() {
                failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(io_err(p)(e));
                return;
            }
        };
        if threads == 1 {
            work();
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(work);
                }
            });
        }
        if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        self.fault_point();
        Ok(())
    }

    /// Under the uidlist lock: check the whole round, write new keywords,
    /// link every file, fsync the directories, then one uidlist and one
    /// modseq write.
    fn link_written(
        &self,
        name: &Name,
        dir: &Path,
        written: &[Written],
        hows: &[Append],
        below_next_uid: bool,
    ) -> Result<Vec<Message>> {
        let _l = self.lock(&dir.join(UIDLIST))?;
        let mut s = self.snapshot_locked(name, dir)?;
        let next_before = s.uidlist.next_uid();
        let mut any_below = false;
        let kw_before = s.keywords.clone();
        let mut links: Vec<(&Path, PathBuf)> = Vec::with_capacity(written.len());
        let mut bases = Vec::with_capacity(written.len());
        // Bases and UIDs already listed, kept current as the round adds
        // lines: one lookup each instead of a scan of the uidlist.
        let mut listed: std::collections::HashSet<String> =
            s.uidlist.entries.iter().map(|e| e.base.clone()).collect();
        let mut listed_uids: std::collections::HashSet<u32> =
            s.uidlist.entries.iter().map(|e| e.uid).collect();
        for (w, how) in written.iter().zip(hows) {
            let next = s.uidlist.next_uid();
            let uid = how.uid.unwrap_or(next);
            let below = uid < next;
            if below && (!below_next_uid || listed_uids.contains(&uid)) {
                return Err(Error::UidTooLow { wanted: uid, next });
            }
            any_below |= below;
            let generated = format!("{},S={},W={}", w.prefix, w.size, w.vsize);
            let mut ext = Vec::new();
            let base = match &how.guid {
                Some(g)
                    if usable_as_base(g, w.size, w.vsize)
                        && !listed.contains(g.as_str())
                        && !s.files.contains_key(g) =>
                {
                    g.clone()
                }
                Some(g) => {
                    ext.push(('G', g.clone()));
                    generated
                }
                None => generated,
            };
            let mut kw_idx = Vec::new();
            for k in &how.keywords {
                kw_idx.push(
                    s.keywords
                        .intern(k)
                        .ok_or_else(|| Error::KeywordsFull(name.clone()))?,
                );
            }
            let fname = FileName {
                base: base.clone(),
                info: String::new(),
            }
            .with_flags(how.flags, &kw_idx);
            let sub = if fname.info.is_empty() { "new" } else { "cur" };
            links.push((&w.path, dir.join(sub).join(fname.to_entry())));
            let at = s.uidlist.entries.partition_point(|e| e.uid < uid);
            s.uidlist.entries.insert(
                at,
                Entry {
                    uid,
                    ext,
                    base: base.clone(),
                },
            );
            listed.insert(base.clone());
            listed_uids.insert(uid);
            s.files.insert(base.clone(), Found { sub, name: fname });
            s.fresh.insert(
                base.clone(),
                Facts {
                    sha1: w.sha1,
                    size: w.size,
                    vsize: w.vsize,
                },
            );
            bases.push(base);
        }
        // Checked whole: from here on the round is applied.
        if s.keywords != kw_before {
            self.write_keywords(dir, &s.keywords)?;
        }
        let mut subs = std::collections::BTreeSet::new();
        for (from, to) in &links {
            fs::hard_link(from, to).map_err(io_err(to))?;
            subs.insert(to.parent().expect("in new/ or cur/").to_path_buf());
        }
        for d in &subs {
            sync_dir(d).map_err(io_err(dir))?;
        }
        self.fault_point();
        if any_below {
            s.uidlist.header_next_uid = next_before;
            for f in [
                "dovecot.index",
                "dovecot.index.log",
                "dovecot.index.log.2",
                "dovecot.index.cache",
            ] {
                match fs::remove_file(dir.join(f)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err(dir)(e));
                    }
                    _ => {}
                }
            }
        }
        self.write_uidlist(dir, &s.uidlist)?;
        self.update_modseqs(&mut s)?;
        let entry_of: std::collections::HashMap<&str, &Entry> = s
            .uidlist
            .entries
            .iter()
            .map(|e| (e.base.as_str(), e))
            .collect();
        bases
            .iter()
            .map(|base| {
                let e = entry_of[base.as_str()];
                let f = s.files.get(base).expect("just added");
                self.message_of(&s, e, f)
            })
            .collect()
    }

    /// Replace a message's flags and keywords (a rename in place).
    pub fn set_flags(&self, name: &Name, uid: u32, flags: &Flags) -> Result<Message> {
        let mut v = self.set_flags_many(name, &[(uid, flags.clone())])?;
        Ok(v.pop().expect("one message changed"))
    }

    /// Replace the flags and keywords of many messages of one mailbox
    /// under one uidlist lock: every rename, then one fsync per directory
    /// and one modseq write. Every UID must exist (checked before any
    /// rename, [`Error::NoMessage`]), and the keywords must fit. Returns
    /// the messages as they now are, in the order given.
    pub fn set_flags_many(&self, name: &Name, changes: &[(u32, Flags)]) -> Result<Vec<Message>> {
        let dir = self.existing_dir(name)?;
        let _l = self.lock(&dir.join(UIDLIST))?;
        for _ in 0..5 {
            let mut s = self.snapshot_locked(name, &dir)?;
            let kw_before = s.keywords.clone();
            let mut renames = Vec::new();
            for (uid, flags) in changes {
                let (e, f) = self.find(&s, name, *uid)?;
                let (base, f) = (e.base.clone(), f.clone());
                let mut idx = Vec::new();
                for k in flags.keywords() {
                    idx.push(
                        s.keywords
                            .intern(k)
                            .ok_or_else(|| Error::KeywordsFull(name.clone()))?,
                    );
                }
                let new = f.name.with_flags(flags.system, &idx);
                if new != f.name {
                    renames.push((base, f, new));
                }
            }
            if s.keywords != kw_before {
                self.write_keywords(&dir, &s.keywords)?;
            }
            let mut moved_away = false;
            let mut subs = std::collections::BTreeSet::new();
            for (base, f, new) in renames {
                let from = dir.join(f.sub).join(f.name.to_entry());
                let to = dir.join(f.sub).join(new.to_entry());
                match fs::rename(&from, &to) {
                    Ok(()) => {}
                    // Dovecot renamed it meanwhile (flags, new→cur): rescan.
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        moved_away = true;
                        continue;
                    }
                    Err(err) => return Err(io_err(&from)(err)),
                }
                subs.insert(f.sub);
                s.files.insert(
                    base,
                    Found {
                        sub: f.sub,
                        name: new,
                    },
                );
            }
            for sub in &subs {
                sync_dir(&dir.join(sub)).map_err(io_err(&dir))?;
            }
            if !subs.is_empty() {
                self.fault_point();
            }
            self.update_modseqs(&mut s)?;
            if moved_away {
                // Already renamed ones are no-ops on the next round.
                continue;
            }
            return changes
                .iter()
                .map(|(uid, _)| {
                    let (e, f) = self.find(&s, name, *uid)?;
                    self.message_of(&s, e, f)
                })
                .collect();
        }
        Err(Error::Io {
            path: dir,
            source: io::Error::other("message files keep moving during a flag change"),
        })
    }

    /// Expunge messages (unknown UIDs are skipped): unlink, then drop the
    /// uidlist lines.
    pub fn expunge(&self, name: &Name, uids: &[u32]) -> Result<()> {
        let dir = self.existing_dir(name)?;
        let _l = self.lock(&dir.join(UIDLIST))?;
        let mut s = self.snapshot_locked(name, &dir)?;
        let gone: Vec<String> = s
            .uidlist
            .entries
            .iter()
            .filter(|e| uids.contains(&e.uid))
            .map(|e| e.base.clone())
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        // The intent first: a crash after some unlinks is rolled forward
        // by the next pass, which drops exactly these uidlist lines.
        let mut intent = gone.join("\n");
        intent.push('\n');
        write_atomic(
            &dir,
            EXPUNGING,
            &self.temp_name(EXPUNGING),
            intent.as_bytes(),
        )
        .map_err(io_err(&dir))?;
        self.fault_point();
        self.unlink_bases(&dir, &gone, &mut s.files)?;
        for sub in ["new", "cur"] {
            sync_dir(&dir.join(sub)).map_err(io_err(&dir))?;
        }
        self.fault_point();
        // The header keeps the next UID: expunged UIDs are never reused.
        s.uidlist.header_next_uid = s.uidlist.next_uid();
        s.uidlist.entries.retain(|e| !gone.contains(&e.base));
        for b in &gone {
            s.files.remove(b);
        }
        self.write_uidlist(&dir, &s.uidlist)?;
        let _ = fs::remove_file(dir.join(EXPUNGING));
        self.update_modseqs(&mut s)
    }

    /// Subscribed names, in file order (entries that are not valid names
    /// are skipped and logged).
    pub fn subscriptions(&self) -> Result<Vec<Name>> {
        let path = self.root.join(SUBSCRIPTIONS);
        let text = self.read_control(&path)?.unwrap_or_default();
        let mut out = Vec::new();
        for n in Subscriptions::parse(&text).names() {
            match n {
                Ok(n) => out.push(n),
                Err(e) => tracing::warn!(error = %e, "skipping subscription"),
            }
        }
        Ok(out)
    }

    /// Subscribe or unsubscribe a name (it need not exist).
    pub fn set_subscribed(&self, name: &Name, subscribed: bool) -> Result<()> {
        let path = self.root.join(SUBSCRIPTIONS);
        let _l = self.lock(&path)?;
        let text = self.read_control(&path)?.unwrap_or_default();
        let mut subs = Subscriptions::parse(&text);
        if subs.set(name, subscribed) {
            write_atomic(
                &self.root,
                SUBSCRIPTIONS,
                &self.temp_name(SUBSCRIPTIONS),
                subs.to_text().as_bytes(),
            )
            .map_err(io_err(&path))?;
            self.fault_point();
        }
        Ok(())
    }

    // ---- internals ----

    /// Remove `tmp/` files changed more than 36 hours ago, as Dovecot does: leftovers
    /// of deliveries that crashed before their link into `new/`/`cur/`.
    fn clean_tmp(&self, dir: &Path) {
        let Ok(rd) = fs::read_dir(dir.join("tmp")) else {
            return;
        };
        // ctime, not mtime: a delivery sets the mtime of its tmp file to
        // the message's INTERNALDATE, which may be years ago.
        use std::os::unix::fs::MetadataExt;
        let old = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
            - 36 * 3600;
        for ent in rd.flatten() {
            let stale = ent.metadata().is_ok_and(|m| m.ctime() < old);
            if stale {
                let _ = fs::remove_file(ent.path());
            }
        }
    }

    /// Unlink the files of these base names, wherever they are now: a file
    /// Dovecot renamed (flags, new/ → cur/) after our scan is found by a
    /// rescan, so no expunged file survives to get a new UID.
    fn unlink_bases(
        &self,
        dir: &Path,
        bases: &[String],
        files: &mut BTreeMap<String, Found>,
    ) -> Result<()> {
        for _ in 0..5 {
            let mut missed = false;
            for base in bases {
                if let Some(f) = files.remove(base) {
                    let p = dir.join(f.sub).join(f.name.to_entry());
                    match fs::remove_file(&p) {
                        Ok(()) => {}
                        Err(err) if err.kind() == io::ErrorKind::NotFound => missed = true,
                        Err(err) => return Err(io_err(&p)(err)),
                    }
                }
            }
            if !missed {
                return Ok(());
            }
            *files = self.scan(dir)?;
        }
        Err(Error::Io {
            path: dir.to_path_buf(),
            source: io::Error::other("message files keep moving during expunge"),
        })
    }

    fn find<'s>(&self, s: &'s Snapshot, name: &Name, uid: u32) -> Result<(&'s Entry, &'s Found)> {
        s.uidlist
            .entries
            .iter()
            .find(|e| e.uid == uid)
            .and_then(|e| s.files.get(&e.base).map(|f| (e, f)))
            .ok_or_else(|| Error::NoMessage {
                mailbox: name.clone(),
                uid,
            })
    }

    fn message_of(&self, s: &Snapshot, e: &Entry, f: &Found) -> Result<Message> {
        let named = |field: char| {
            file_name::size_field(&e.base, field)
                .or_else(|| e.ext(field).and_then(|v| v.parse().ok()))
        };
        let seen = s.modseqs.per_uid.get(&e.uid);
        let (size, vsize, internaldate) = match seen.and_then(|x| x.cached) {
            // Computed when the message first showed up: no stat, no read.
            Some((size, vsize, date)) => (
                named('S').unwrap_or(size),
                named('W').unwrap_or(vsize),
                date,
            ),
            None => {
                let path = s.dir.join(f.sub).join(f.name.to_entry());
                let md = fs::metadata(&path).map_err(io_err(&path))?;
                let vsize = match named('W') {
                    Some(w) => w,
                    None => {
                        let mut r = File::open(&path).map_err(io_err(&path))?;
                        vsize_of(&mut r).map_err(io_err(&path))?.1
                    }
                };
                (named('S').unwrap_or(md.len()), vsize, mtime_secs(&md))
            }
        };
        let keywords = f
            .name
            .keyword_indexes()
            .into_iter()
            .map(|i| match s.keywords.get(i) {
                Some(k) => k.clone(),
                None => Keyword::new(format!("unknown-{i}")).expect("valid keyword"),
            })
            .collect();
        Ok(Message {
            uid: e.uid,
            guid: e
                .ext('G')
                .filter(|g| !g.is_empty())
                .unwrap_or(&e.base)
                .to_string(),
            flags: f.name.system_flags(),
            keywords,
            other_letters: f.name.other_letters(),
            size,
            vsize,
            internaldate,
            modseq: seen.map_or(1, |x| x.modseq),
            sha1: seen.map(|x| x.sha1),
            file: format!("{}/{}", f.sub, f.name.to_entry()),
        })
    }

    /// A consistent view; takes the uidlist lock only when something must
    /// be written (new files, no uidlist or GUID, modseqs behind). Reuses
    /// the last view while the files it was read from are unchanged
    /// ([`view_cache`]).
    fn snapshot(&self, name: &Name) -> Result<std::sync::Arc<Snapshot>> {
        let dir = self.existing_dir(name)?;
        let stamp = || view_cache::Stamp::take(&Self::view_paths(&dir)).map_err(io_err(&dir));
        let before = stamp()?;
        if let Some(s) = self.views.get(&dir, &before) {
            return Ok(s);
        }
        let s = match self.read_view(&dir)? {
            Some(s)
                if s.uidlist.guid.is_some()
                    && !dir.join(EXPUNGING).exists()
                    && s.uidlist.lists_all(s.files.keys())
                    && self.modseqs_current(&s) =>
            {
                s
            }
            _ => {
                let _l = self.lock(&dir.join(UIDLIST))?;
                self.snapshot_locked(name, &dir)?
            }
        };
        let s = std::sync::Arc::new(s);
        self.views
            .offer(&dir, &before, &stamp()?, s.uidlist.entries.len(), &s);
        Ok(s)
    }

    /// Everything a mailbox's view is read from.
    fn view_paths(dir: &Path) -> [PathBuf; 6] {
        [
            dir.join("new"),
            dir.join("cur"),
            dir.join(UIDLIST),
            dir.join(MODSEQS),
            dir.join(KEYWORDS),
            dir.join(EXPUNGING),
        ]
    }

    fn read_view(&self, dir: &Path) -> Result<Option<Snapshot>> {
        let upath = dir.join(UIDLIST);
        let Some(text) = self.read_control(&upath)? else {
            return Ok(None);
        };
        let uidlist = Uidlist::parse(&text).map_err(|e: UidlistError| Error::Corrupt {
            path: upath.clone(),
            why: e.to_string(),
        })?;
        let files = self.scan(dir)?;
        let keywords =
            Keywords::parse(&self.read_control(&dir.join(KEYWORDS))?.unwrap_or_default());
        let modseqs = self
            .read_control(&dir.join(MODSEQS))?
            .and_then(|t| Modseqs::parse(&t))
            .unwrap_or_default();
        Ok(Some(Snapshot {
            dir: dir.to_path_buf(),
            uidlist,
            files,
            keywords,
            modseqs,
            fresh: BTreeMap::new(),
            live: Default::default(),
        }))
    }

    /// Under the uidlist lock: read, create the uidlist if missing, give
    /// unlisted files UIDs in Dovecot's order, bring modseqs up to date.
    fn snapshot_locked(&self, _name: &Name, dir: &Path) -> Result<Snapshot> {
        // What follows may change the mailbox: no reader reuses the old view.
        self.views.forget(dir);
        let (mut s, mut dirty) = match self.read_view(dir)? {
            Some(s) => (s, false),
            None => {
                let uidlist = Uidlist::new(self.next_uidvalidity()?, self.new_guid(dir));
                let files = self.scan(dir)?;
                (
                    Snapshot {
                        dir: dir.to_path_buf(),
                        uidlist,
                        files,
                        keywords: Keywords::parse(
                            &self.read_control(&dir.join(KEYWORDS))?.unwrap_or_default(),
                        ),
                        modseqs: self
                            .read_control(&dir.join(MODSEQS))?
                            .and_then(|t| Modseqs::parse(&t))
                            .unwrap_or_default(),
                        fresh: BTreeMap::new(),
                        live: Default::default(),
                    },
                    true,
                )
            }
        };
        if s.uidlist.guid.is_none() {
            s.uidlist.guid = Some(self.new_guid(dir));
            dirty = true;
        }
        self.clean_tmp(dir);
        let intent = self.read_control(&dir.join(EXPUNGING))?;
        if let Some(intent) = &intent {
            // Roll an interrupted expunge forward.
            let bases: Vec<String> = intent
                .lines()
                .filter(|b| !b.is_empty())
                .map(str::to_string)
                .collect();
            self.unlink_bases(dir, &bases, &mut s.files)?;
            for sub in ["new", "cur"] {
                sync_dir(&dir.join(sub)).map_err(io_err(dir))?;
            }
            s.uidlist.header_next_uid = s.uidlist.next_uid();
            let bases: std::collections::HashSet<&str> = intent.lines().collect();
            s.uidlist
                .entries
                .retain(|e| !bases.contains(&e.base.as_str()));
            dirty = true;
        }
        let listed = s.uidlist.bases();
        let mut unlisted: Vec<&String> = s
            .files
            .keys()
            .filter(|b| !listed.contains(b.as_str()))
            .collect();
        unlisted.sort_by_key(|b| file_name::new_file_order(b));
        let unlisted: Vec<String> = unlisted.into_iter().cloned().collect();
        for base in unlisted {
            let uid = s.uidlist.next_uid();
            s.uidlist.entries.push(Entry {
                uid,
                ext: Vec::new(),
                base,
            });
            dirty = true;
        }
        if dirty {
            self.write_uidlist(dir, &s.uidlist)?;
        }
        if intent.is_some() {
            let _ = fs::remove_file(dir.join(EXPUNGING));
        }
        self.update_modseqs(&mut s)?;
        Ok(s)
    }

    fn scan(&self, dir: &Path) -> Result<BTreeMap<String, Found>> {
        let mut files = BTreeMap::new();
        // new/ before cur/: a file Dovecot moves from new/ to cur/ during
        // the scan is then seen at least once; cur/ wins a duplicate.
        for sub in ["new", "cur"] {
            let d = dir.join(sub);
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&d)(e)),
            };
            for ent in rd {
                let ent = ent.map_err(io_err(&d))?;
                let Some(n) = ent.file_name().to_str().and_then(FileName::parse) else {
                    continue;
                };
                files.insert(n.base.clone(), Found { sub, name: n });
            }
        }
        Ok(files)
    }

    fn modseqs_current(&self, s: &Snapshot) -> bool {
        let live: Vec<(u32, &str)> = s
            .uidlist
            .entries
            .iter()
            .filter_map(|e| s.files.get(&e.base).map(|f| (e.uid, f.name.flag_letters())))
            .collect();
        s.modseqs.uidvalidity == s.uidlist.uidvalidity
            && live.len() == s.modseqs.per_uid.len()
            && live.iter().all(|(uid, l)| {
                s.modseqs
                    .per_uid
                    .get(uid)
                    .is_some_and(|x| x.letters == *l && x.cached.is_some())
            })
    }

    /// Under the lock: give new and changed messages the next modseqs,
    /// bump for vanished ones, write the sidecar if anything changed.
    fn update_modseqs(&self, s: &mut Snapshot) -> Result<()> {
        let mut m = s.modseqs.clone();
        if m.uidvalidity != s.uidlist.uidvalidity {
            m.uidvalidity = s.uidlist.uidvalidity;
            m.per_uid.clear();
            m.highest += 1;
        }
        let live: BTreeMap<u32, &Found> = s
            .uidlist
            .entries
            .iter()
            .filter_map(|e| s.files.get(&e.base).map(|f| (e.uid, f)))
            .collect();
        let before = m.per_uid.len();
        m.per_uid.retain(|uid, _| live.contains_key(uid));
        if m.per_uid.len() != before {
            m.highest += 1;
        }
        for (uid, f) in live {
            let letters = f.name.flag_letters();
            let path = s.dir.join(f.sub).join(f.name.to_entry());
            let known = m.per_uid.get(&uid).map(|x| (x.sha1, x.cached));
            let (sha1, cached) = match known {
                Some((sha1, Some(c))) => (sha1, c),
                // A line from before the sizes were kept: fill them in.
                Some((sha1, None)) => match facts_of(&path, None) {
                    Ok((_, c)) => (sha1, c),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                },
                None => match facts_of(&path, s.fresh.get(&f.name.base)) {
                    Ok(x) => x,
                    // Renamed or expunged by Dovecot since the scan:
                    // the next pass sees it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                },
            };
            let x = m.per_uid.get_mut(&uid);
            match x {
                Some(x) if x.letters == letters => {
                    // Same flags: only the cached facts may be new.
                    x.cached = Some(cached);
                    continue;
                }
                _ => {}
            }
            m.highest += 1;
            m.per_uid.insert(
                uid,
                Seen {
                    modseq: m.highest,
                    sha1,
                    letters: letters.to_string(),
                    cached: Some(cached),
                },
            );
        }
        if m != s.modseqs {
            write_atomic(
                &s.dir,
                MODSEQS,
                &self.temp_name(MODSEQS),
                m.to_text().as_bytes(),
            )
            .map_err(io_err(&s.dir))?;
            self.fault_point();
            s.modseqs = m;
        }
        Ok(())
    }

    fn write_uidlist(&self, dir: &Path, l: &Uidlist) -> Result<()> {
        write_atomic(
            dir,
            UIDLIST,
            &self.temp_name(UIDLIST),
            l.to_text().as_bytes(),
        )
        .map_err(io_err(&dir.join(UIDLIST)))?;
        self.fault_point();
        Ok(())
    }

    fn write_keywords(&self, dir: &Path, k: &Keywords) -> Result<()> {
        let path = dir.join(KEYWORDS);
        let _l = self.lock(&path)?;
        let old_mtime = fs::metadata(&path).and_then(|m| m.modified()).ok();
        write_atomic(
            dir,
            KEYWORDS,
            &self.temp_name(KEYWORDS),
            k.to_text().as_bytes(),
        )
        .map_err(io_err(&path))?;
        // Dovecot re-reads the file when its mtime changes: make sure it
        // does even within the same second.
        if let Some(old) = old_mtime {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let now = SystemTime::now();
            if now <= old + Duration::from_secs(1) {
                f.set_modified(old + Duration::from_secs(1))
                    .map_err(io_err(&path))?;
            }
        }
        self.fault_point();
        Ok(())
    }

    fn temp_name(&self, of: &str) -> String {
        format!(
            "{of}.{}.{}.{}.tmp",
            self.host,
            std::process::id(),
            self.uniq.fetch_add(1, Ordering::SeqCst)
        )
    }

    fn new_base_prefix(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Dovecot bumps the microseconds for uniqueness within a process;
        // a counter does the same without reading the clock twice.
        let n = self.uniq.fetch_add(1, Ordering::SeqCst);
        let usecs = (now.subsec_micros() as u64 + n) % 1_000_000;
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            usecs,
            std::process::id(),
            n,
            self.host
        )
    }

    fn new_guid(&self, dir: &Path) -> MailboxGuid {
        use sha1::Digest;
        let mut h = sha1::Sha1::new();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        h.update(now.as_nanos().to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(self.uniq.fetch_add(1, Ordering::SeqCst).to_le_bytes());
        h.update(self.host.as_bytes());
        h.update(dir.as_os_str().as_encoded_bytes());
        let d: [u8; 20] = h.finalize().into();
        let mut g = [0u8; 16];
        g.copy_from_slice(&d[..16]);
        MailboxGuid::from_bytes(g)
    }

    /// The next UIDVALIDITY from `ROOT/dovecot-uidvalidity` (hex of the
    /// last value; starts at the current time, then +1 per mailbox), with
    /// Dovecot's empty marker file `dovecot-uidvalidity.<hex>`.
    fn next_uidvalidity(&self) -> Result<u32> {
        let path = self.root.join(UIDVALIDITY);
        let _l = self.lock(&path)?;
        let last = self
            .read_control(&path)?
            .and_then(|t| u32::from_str_radix(t.trim(), 16).ok())
            .unwrap_or(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let next = if last < now {
            now
        } else {
            last.wrapping_add(1).max(1)
        };
        write_atomic(
            &self.root,
            UIDVALIDITY,
            &self.temp_name(UIDVALIDITY),
            format!("{next:08x}").as_bytes(),
        )
        .map_err(io_err(&path))?;
        let _ = fs::remove_file(self.root.join(format!("{UIDVALIDITY}.{last:08x}")));
        let marker = self.root.join(format!("{UIDVALIDITY}.{next:08x}"));
        if File::create(&marker).is_ok() {
            let _ = like_dir(&marker, &self.root);
        }
        Ok(next)
    }

    /// Write one message to `tmp/` (not yet fsynced: the caller syncs a
    /// group at once), hashing it on the way so its modseq line needs no
    /// second read.
    fn write_tmp(&self, path: &Path, body: Body<'_>, internaldate: Option<i64>) -> Result<Written> {
        let mut opened;
        let mut slice;
        let body: &mut dyn Read = match body {
            Body::Bytes(b) => {
                slice = b;
                &mut slice
            }
            Body::File(p) => {
                opened = File::open(p).map_err(io_err(p))?;
                &mut opened
            }
            Body::Reader(r) => r,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_err(path))?;
        let max = self.options.message_bytes_max;
        let mut buf = vec![0u8; 64 * 1024];
        let (mut size, mut vsize, mut prev_cr) = (0u64, 0u64, false);
        let mut hash = <sha1::Sha1 as sha1::Digest>::new();
        let r: Result<()> = (|| {
            loop {
                let n = body.read(&mut buf).map_err(io_err(path))?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > max {
                    return Err(Error::TooLarge {
                        what: "message bytes",
                        limit: max,
                    });
                }
                for &b in &buf[..n] {
                    vsize += if b == b'\n' && !prev_cr { 2 } else { 1 };
                    prev_cr = b == b'\r';
                }
                sha1::Digest::update(&mut hash, &buf[..n]);
                f.write_all(&buf[..n]).map_err(io_err(path))?;
            }
            let mailbox_dir = path.parent().and_then(Path::parent).unwrap_or(path);
            like_dir(path, mailbox_dir).map_err(io_err(path))?;
            if let Some(t) = internaldate {
                let when = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
                f.set_times(fs::FileTimes::new().set_accessed(when).set_modified(when))
                    .map_err(io_err(path))?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(path);
            return Err(e);
        }
        Ok(Written {
            path: path.to_path_buf(),
            prefix: String::new(),
            size,
            vsize,
            sha1: Guid::from_bytes(sha1::Digest::finalize(hash).into()),
            file: Some(f),
        })
    }
}

/// Run `f` again (a few times) when it failed because a file vanished
/// between a directory scan and its use: Dovecot renames files for flag
/// changes and new/ → cur/ moves without any lock corvid could take.
fn retry_renamed<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        match f() {
            Err(Error::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound && tries < 4 =>
            {
                tries += 1
            }
            other => return other,
        }
    }
}

/// A requested GUID can be the file's base name (what Dovecot does) if it
/// is a plain file name carrying the right `,S=` and `,W=`.
fn usable_as_base(g: &str, size: u64, vsize: u64) -> bool {
    !g.starts_with('.')
        && !g.contains(['/', ':'])
        && file_name::size_field(g, 'S') == Some(size)
        && file_name::size_field(g, 'W') == Some(vsize)
}

/// SHA-1 of a file's bytes, read in chunks.
/// A file's mtime as Unix seconds (0 before the epoch or unknown).
fn mtime_secs(md: &fs::Metadata) -> i64 {
    md.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// SHA-1, size, vsize and mtime of a message file, reading its bytes only
/// when `fresh` (what this process wrote) does not already say them.
fn facts_of(path: &Path, fresh: Option<&Facts>) -> io::Result<(Guid, (u64, u64, i64))> {
    use sha1::Digest;
    let mut f = File::open(path)?;
    let date = mtime_secs(&f.metadata()?);
    if let Some(x) = fresh {
        return Ok((x.sha1, (x.size, x.vsize, date)));
    }
    let mut h = sha1::Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut size, mut vsize, mut prev_cr) = (0u64, 0u64, false);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((Guid::from_bytes(h.finalize().into()), (size, vsize, date)));
        }
        h.update(&buf[..n]);
        size += n as u64;
        for &b in &buf[..n] {
            vsize += if b == b'\n' && !prev_cr { 2 } else { 1 };
            prev_cr = b == b'\r';
        }
    }
}

/// Physical and virtual size (LF not preceded by CR counted as two).
fn vsize_of(r: &mut dyn Read) -> io::Result<(u64, u64)> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut size, mut vsize, mut prev_cr) = (0u64, 0u64, false);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((size, vsize));
        }
        size += n as u64;
        for &b in &buf[..n] {
            vsize += if b == b'\n' && !prev_cr { 2 } else { 1 };
            prev_cr = b == b'\r';
        }
    }
}
