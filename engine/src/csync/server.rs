//! The csync replica session (Cyrus 3.6.1 `sync_server`), as a [`Machine`].
//!
//! ```text
//!   banner (* SASL …, [* STARTTLS], [* COMPRESS DEFLATE], * SIEVE-MAILBOX, * OK … Cyrus sync server …)
//!     │
//!     ▼
//!   NotAuth ──STARTTLS──▶ TLS, banner again ──▶ NotAuth
//!     │ ──COMPRESS DEFLATE──▶ deflate (allowed before and after auth)
//!     │ AUTHENTICATE ─▶ Sasl (`+ base64` challenges) ─▶ Effect::Authenticate
//!     │     rejected ─▶ failed-login pause ─▶ NO authentication failure
//!     ▼ OK Success (no protection)
//!   Auth { admin } ── non-admin: every command NO Permission denied
//!     │ GET …      ─▶ reads (MailRead) ─▶ * lines, OK success
//!     │ APPLY …    ─▶ checks (reads) ─▶ one WriteBatch ─▶ Completion::Durable ─▶ OK success
//!     │ file literals ─▶ StageBegin/Chunk/End effects as they stream (bounded memory)
//!     ▼ EXIT ─▶ OK Finished, close
//! ```
//!
//! One command at a time: while an effect (auth check, write, the
//! stage-ends of an `APPLY MESSAGE`) or the failed-login pause is pending,
//! the machine reads nothing more ([`Machine::wants_input`] is false).
//! File literal chunks are the exception: they stream out as staging
//! effects while the line that carries them is still arriving, so the
//! driver's bound on effects in flight is what bounds memory.
//!
//! Every `APPLY` is planned from durable state (the previous command's
//! write completed before this one was read, so no overlay is needed),
//! checked whole, and written as one [`WriteBatch`]; `OK success` is built
//! only from the [`DurableProof`] of that batch.
//!
//! Two flavours ([`Flavour`]): the csync service above, and the
//! IMAP-embedded one a `sync_try_imap` client looks for (IMAP greeting,
//! `A01 AUTHENTICATE` answered with `X-REPLICATION` in the capabilities,
//! tagged `SYNCAPPLY`/`SYNCGET`/`SYNCRESTORE`/`SYNCRESTART`). Both share
//! every GET/APPLY handler; only framing, tags and greeting differ. On the
//! csync port, the `C01 CAPABILITY` probe of a try-imap client gets an IMAP
//! answer without X-REPLICATION, so it falls back at once instead of
//! waiting out its 10 s timeout as it does against Cyrus.
//!
//! A `GET FETCH` reply streams: one chunk of at most
//! [`Options::fetch_chunk_bytes`] per step. After each chunk the machine
//! asks to be woken at once ([`Machine::poll_timeout`] = now + 1 ns) and reads
//! nothing meanwhile; the tokio driver fires timers only while its write
//! buffer has room, so a message of any size costs one chunk of memory here
//! and the driver's bounded buffer there, however slowly the peer reads.
//!
//! Commands of two sessions for one user are serialised by [`UserLocks`]
//! when the daemon provides them (Cyrus takes a per-user lock too).
//!
//! Reply texts are 3.6.1's byte for byte (`research/csync-protocol.md` §1,
//! §3; `csync-lab.md` §4.4). Where Cyrus crashes (§9: unknown partition,
//! GUID mismatch, a connection dropped mid-literal) this machine answers a
//! `NO`, emits an [`Event`] for the log, and leaves the store as it was.
//!
//! What it never does: check a password (the driver's auth effect does),
//! touch the store except through [`MailRead`] and effects, or log message
//! bytes or credentials.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::csync::imap::{
    ImapClientLine, ImapCommandBody, ImapCommandError, ImapResponse, ImapServerDecoder,
};
use proto::csync::{
    Capability, ClientLine, Code, Command as Cmd, CommandError, Event as DecEvent, Greeting,
    Response, ServerDecoder, Status, StatusKind,
};
use proto::dlist::{FileRef, Item, KvList, Value};
use proto::frame;
use proto::sasl::{self, Credentials, Mechanism, ServerStep};

use super::apply::{all_records, plan_mailbox, plan_restore, ApplyCtx, MailboxPlan, Refusal};
use super::wire::{
    self, annotation_line, inbox_of, mailbox_kv, quota_kv, quota_of, record_kv, record_of, seen_kv,
    seen_of, WireError,
};
use crate::machine::{CloseReason, EffectId, EffectIds, Layer, Machine, Output, Time};
use crate::model::{
    AnnotationEntry, AnnotationOwner, AnnotationValue, Guid, MailboxKind, MailboxName, ModSeq,
    Partition, SieveName, SieveScript, Subscription, Uid, UniqueId, UnixTime, UserId,
};
use crate::store::{
    BatchId, Completion as StoreCompletion, DurableProof, MailRead, Mutation, StageId, StoreEffect,
    StoreError, WriteBatch,
};

/// Configuration and limits of one session.
#[derive(Debug, Clone)]
pub struct Options {
    /// `servername`, first word of the greeting.
    pub server_name: String,
    /// The version word(s) after `Cyrus sync server`.
    pub version: String,
    /// SASL mechanisms offered in `* SASL` (in that order) and accepted,
    /// while the connection is not under TLS. The daemon computes it as
    /// libsasl would (`io_tokio::auth::offered_mechanisms`): with
    /// `allowplaintext: no` (Cyrus's default) PLAIN and LOGIN are not
    /// offered in the clear, so a real sync_client starts TLS (W6).
    pub mechanisms: Vec<Mechanism>,
    /// The same once STARTTLS has succeeded (or the session began under TLS).
    pub mechanisms_tls: Vec<Mechanism>,
    /// Offer and accept STARTTLS (the driver must have a TLS config).
    pub starttls: bool,
    /// Offer and accept `COMPRESS DEFLATE`.
    pub compress: bool,
    /// The connection is already under TLS.
    pub tls_active: bool,
    /// `sync_server -f`: force mode for every session.
    pub force: bool,
    /// Delay before a failed-login `NO` (Cyrus `failedloginpause`, 3 s).
    pub failed_login_pause: Duration,
    /// A session that completes nothing for this long is closed (Cyrus
    /// `sync_timeout`, 30 min). The clock restarts when a whole command
    /// (or a whole upload line, or `idle_progress_bytes` of a message
    /// literal) has arrived and when an answer is sent, never on a stray
    /// byte: a peer dribbling one byte a minute is cut off (SECURITY.md W4).
    pub idle_timeout: Option<Duration>,
    /// Message literal bytes that count as progress for `idle_timeout`
    /// (a slow but real upload keeps its session; a trickle does not).
    pub idle_progress_bytes: u64,
    /// Framer limits (after login).
    pub frame: frame::Options,
    /// Longest line taken from a peer that has not logged in yet: before
    /// login only short commands (AUTHENTICATE, STARTTLS, COMPRESS,
    /// CAPABILITY, EXIT) make sense, and a stranger must not make the server
    /// buffer `frame.line_bytes_max` (128 MiB) per connection.
    pub preauth_line_bytes_max: usize,
    /// SASL limits.
    pub sasl: sasl::Options,
    /// Partitions this replica has; a file literal or mailbox naming
    /// another is refused. Empty: any.
    pub partitions: Vec<String>,
    /// The Unix time at machine time [`Time::ZERO`] (the driver's epoch):
    /// machines read no clock, so wall-clock stamps (tombstones, renames)
    /// are this plus the `now` they are given.
    pub epoch_unix: UnixTime,
    /// First [`StageId`] this session uses, so sessions sharing one store
    /// runner never collide (the daemon gives each connection its own
    /// range).
    pub stage_id_base: u64,
    /// Largest message body sent in one `GET FETCH` reply chunk read.
    pub fetch_chunk_bytes: usize,
    /// Uploads up to this size are also kept in memory for this session,
    /// so a `#sieve` mailbox apply can turn them into scripts in the same
    /// batch (their bytes are not readable from the store before it).
    pub small_body_bytes_max: u64,
    /// Total of those kept bodies; beyond it the oldest are dropped (a
    /// script whose bytes are gone is then read from the store).
    pub small_bodies_bytes_max: usize,
    /// Which wire flavour this session speaks.
    pub flavour: Flavour,
    /// Per-user locks shared by the sessions of one replica (see
    /// [`UserLocks`]); `None`: no locking (one session per store).
    pub user_locks: Option<Locks>,
    /// This session's name in `user_locks`, unique among live sessions.
    pub session: u64,
    /// How long a command waits before trying a held user lock again.
    pub lock_retry: Duration,
    /// Speak as Cyrus backupd (`corvid backupd`): `Cyrus backup server`
    /// greeting, `OK Success`, no `* SIEVE-MAILBOX`, STARTTLS never
    /// offered (answered `NO command not implemented`). Only the texts
    /// change; what is accepted and stored is the same machine's.
    pub backupd: bool,
}

/// The two ways a Cyrus sync_client reaches a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The dedicated csync service (sync_server's port): untagged lines.
    Csync,
    /// The IMAP-embedded flavour (Cyrus 3.0+, `sync_try_imap`): an IMAP
    /// greeting, tagged `SYNCAPPLY`/`SYNCGET`/`SYNCRESTORE`/`SYNCRESTART`
    /// after an admin AUTHENTICATE, `X-REPLICATION` in the capabilities,
    /// `{n}` literals from the server. Only what sync_client uses is
    /// served (CAPABILITY, AUTHENTICATE, NOOP, LOGOUT, the SYNC commands);
    /// any other IMAP command is refused with `BAD`.
    Imap,
}

/// Mutual exclusion per user across the sessions of one replica.
///
/// Cyrus's sync_server holds a user's lock while it applies a command for
/// that user, so two sync_clients replicating one user at once never plan a
/// change from a state the other is about to change. Here a session takes
/// the locks of every user a GET/APPLY/RESTORE names before it reads
/// anything for it, and releases them once that command is answered (after
/// its write is durable). Locks are taken all at once or not at all, so two
/// sessions can never deadlock; a session that finds one held tries again
/// after [`Options::lock_retry`] (it reads nothing meanwhile).
///
/// Keys are user ids as bytes; the empty key stands for the shared
/// namespace (mailboxes outside `user.*`, server annotations). The daemon
/// implements this; the machine only calls it, never blocks on it.
pub trait UserLocks: Send + Sync {
    /// Takes every key of `users` for `session`, or none. `true` if taken.
    fn try_lock(&self, session: u64, users: &[Bytes]) -> bool;
    /// Releases everything `session` holds.
    fn unlock(&self, session: u64);
}

/// A shared [`UserLocks`], as [`Options`] carries it.
#[derive(Clone)]
pub struct Locks(pub std::sync::Arc<dyn UserLocks>);

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Locks")
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server_name: "localhost".into(),
            version: concat!("3.6.1-corvid-", env!("CARGO_PKG_VERSION")).into(),
            mechanisms: vec![Mechanism::Plain, Mechanism::Login],
            mechanisms_tls: vec![Mechanism::Plain, Mechanism::Login],
            starttls: false,
            compress: true,
            tls_active: false,
            force: false,
            failed_login_pause: Duration::from_secs(3),
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            idle_progress_bytes: 64 * 1024,
            frame: frame::Options::csync(),
            preauth_line_bytes_max: 64 * 1024,
            sasl: sasl::Options::default(),
            partitions: Vec::new(),
            epoch_unix: UnixTime::ZERO,
            stage_id_base: 0,
            fetch_chunk_bytes: 64 * 1024,
            small_body_bytes_max: 64 * 1024,
            small_bodies_bytes_max: 1024 * 1024,
            flavour: Flavour::Csync,
            user_locks: None,
            session: 0,
            lock_retry: Duration::from_millis(5),
            backupd: false,
        }
    }
}

/// What the machine asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Check these credentials; answer [`Completion::Auth`].
    Authenticate(Credentials),
    /// A store effect (staging, or a batch to make durable); answer
    /// [`Completion::Store`].
    Store(StoreEffect),
}

/// A successful password check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOk {
    /// The identity the session acts as.
    pub userid: String,
    /// Whether it is in `admins` (required for every command).
    pub admin: bool,
}

/// The result of an [`Effect`].
#[derive(Debug)]
pub enum Completion {
    /// The password check ran: `None` if rejected.
    Auth(Option<AuthOk>),
    /// The store's answer (`None` for staging effects that have none).
    Store(Option<StoreCompletion>),
}

/// What the daemon tells a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The server is stopping: `BYE shutting down`, close.
    Shutdown,
}

/// What the session tells the application (logs, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client authenticated as this identity.
    Authenticated(String),
    /// A login failed for this authentication identity (never a password).
    AuthFailed(String),
    /// A command was refused with this status line (peer's request,
    /// diverged replica, or a case where Cyrus would have crashed).
    Refused {
        /// `APPLY MAILBOX`, `GET USER`, …
        command: String,
        /// The status line sent (no payload bytes).
        status: String,
        /// Why, for the log.
        detail: String,
    },
    /// A write became durable.
    Applied {
        /// `APPLY MAILBOX`, …
        command: String,
        /// Mutations in its batch.
        mutations: usize,
    },
    /// A command was answered OK without a write (a `GET`, or an `APPLY`
    /// with nothing to change).
    Answered {
        /// `GET MAILBOXES`, …
        command: String,
    },
    /// A store effect failed (I/O, corruption): the command got a `NO`.
    StoreFailed(String),
    /// An uploaded message was refused (size or SHA-1 mismatch, limits).
    MessageRefused(String),
}

/// The decoder of the session's flavour.
enum Decoder {
    Csync(ServerDecoder),
    Imap(ImapServerDecoder),
}

/// A decoded line of either flavour, as the machine dispatches it.
enum Line {
    Csync(ClientLine),
    ImapCapability,
    ImapLogout,
    ImapOther,
}

type Polled = (Option<Bytes>, DecEvent<Line, CommandError>);

fn from_csync(e: DecEvent<ClientLine, CommandError>) -> Polled {
    (
        None,
        match e {
            DecEvent::Decoded(l) => DecEvent::Decoded(Line::Csync(l)),
            DecEvent::Refused(r) => DecEvent::Refused(r),
            DecEvent::FileStart(f) => DecEvent::FileStart(f),
            DecEvent::FileChunk(c) => DecEvent::FileChunk(c),
            DecEvent::FileEnd => DecEvent::FileEnd,
            DecEvent::ContinuationNeeded { len } => DecEvent::ContinuationNeeded { len },
        },
    )
}

fn from_imap(e: DecEvent<ImapClientLine, ImapCommandError>) -> Polled {
    let cmd = |c: Cmd| Line::Csync(ClientLine::Command(c));
    match e {
        DecEvent::FileStart(f) => (None, DecEvent::FileStart(f)),
        DecEvent::FileChunk(c) => (None, DecEvent::FileChunk(c)),
        DecEvent::FileEnd => (None, DecEvent::FileEnd),
        DecEvent::ContinuationNeeded { len } => (None, DecEvent::ContinuationNeeded { len }),
        DecEvent::Refused(ImapCommandError { tag, error }) => (tag, DecEvent::Refused(error)),
        DecEvent::Decoded(ImapClientLine::SaslResponse(d)) => (
            None,
            DecEvent::Decoded(Line::Csync(ClientLine::SaslResponse(d))),
        ),
        DecEvent::Decoded(ImapClientLine::SaslCancel) => {
            (None, DecEvent::Decoded(Line::Csync(ClientLine::SaslCancel)))
        }
        DecEvent::Decoded(ImapClientLine::Command(c)) => {
            let line = match c.body {
                ImapCommandBody::SyncApply(i) => cmd(Cmd::Apply(i)),
                ImapCommandBody::SyncGet(i) => cmd(Cmd::Get(i)),
                ImapCommandBody::SyncRestore(i) => cmd(Cmd::Restore(i)),
                ImapCommandBody::SyncRestart => cmd(Cmd::Restart),
                ImapCommandBody::Authenticate {
                    mechanism,
                    initial_response,
                } => cmd(Cmd::Authenticate {
                    mechanism,
                    initial_response,
                }),
                ImapCommandBody::Noop => cmd(Cmd::Noop),
                ImapCommandBody::Capability => Line::ImapCapability,
                ImapCommandBody::Logout => Line::ImapLogout,
                ImapCommandBody::Other { .. } => Line::ImapOther,
            };
            (Some(c.tag), DecEvent::Decoded(line))
        }
    }
}

impl Decoder {
    fn handle_input(&mut self, b: &[u8]) {
        match self {
            Decoder::Csync(d) => d.handle_input(b),
            Decoder::Imap(d) => d.handle_input(b),
        }
    }
    fn handle_eof(&mut self) {
        let _ = match self {
            Decoder::Csync(d) => d.handle_eof(),
            Decoder::Imap(d) => d.handle_eof(),
        };
    }
    fn set_line_bytes_max(&mut self, line_bytes_max: usize) {
        match self {
            Decoder::Csync(d) => d.set_line_bytes_max(line_bytes_max),
            Decoder::Imap(d) => d.set_line_bytes_max(line_bytes_max),
        }
    }
    fn take_unconsumed(&mut self) -> BytesMut {
        match self {
            Decoder::Csync(d) => d.take_unconsumed(),
            Decoder::Imap(d) => d.take_unconsumed(),
        }
    }
    fn expect_sasl_response(&mut self) {
        match self {
            Decoder::Csync(d) => d.expect_sasl_response(),
            Decoder::Imap(d) => d.expect_sasl_response(),
        }
    }
    /// The next event, with the tag of an IMAP-flavour line.
    fn poll(&mut self) -> Result<Option<Polled>, proto::csync::DecodeError> {
        Ok(match self {
            Decoder::Csync(d) => d.poll_event()?.map(from_csync),
            Decoder::Imap(d) => d.poll_event()?.map(from_imap),
        })
    }
}

enum Phase {
    NotAuth,
    Sasl(sasl::Server),
    Auth { admin: bool },
}

/// What a durable write answers.
struct OnDurable {
    command: String,
    /// Lines to send before the status.
    data: Vec<Item>,
    /// `true`: `OK success`; `false`: `NO IMAP_SYNC_CHECKSUM` (CRC mismatch
    /// after apply, Cyrus commits and then says so).
    crc_ok: bool,
    mutations: usize,
}

enum Wait {
    Idle,
    Auth {
        id: EffectId,
    },
    Pause {
        until: Time,
    },
    Write {
        id: EffectId,
        batch: BatchId,
        then: OnDurable,
    },
    /// A `GET FETCH` reply is streaming; the next chunk goes out at the
    /// next timeout (see the module doc).
    Fetch {
        guid: Guid,
        off: u64,
        size: u64,
    },
    /// A user lock this command needs is held by another session.
    Lock {
        retry_at: Time,
        command: Cmd,
    },
}

/// The csync replica session. See the module documentation.
pub struct Server<R> {
    read: R,
    opts: Options,
    decoder: Decoder,
    phase: Phase,
    /// The tag of the IMAP-flavour command being answered.
    tag: Option<Bytes>,
    wait: Wait,
    ids: EffectIds,
    out: BytesMut,
    outputs: VecDeque<Output<Effect, Event>>,
    tls_active: bool,
    compress_active: bool,
    force: bool,
    sieve_mailbox: bool,
    closed: bool,
    /// When the session last made progress (see `Options::idle_timeout`).
    last_input: Time,
    /// Literal bytes received since `last_input` moved.
    literal_progress: u64,
    now: Time,
    /// GUID → size of bytes staged by this session (Cyrus's reserve list),
    /// dropped at RESTART.
    staged: BTreeMap<Guid, u64>,
    /// The file literal being streamed, if staged.
    current_file: Option<(StageId, FileRef)>,
    /// Stagings ended, not yet verified.
    stage_ends: BTreeMap<StageId, FileRef>,
    next_stage: u64,
    /// Refusals of uploads since the last command (answered on it).
    upload_errors: Vec<String>,
    /// A decoded line held until the stagings before it are verified.
    held: Option<(Option<Bytes>, Line)>,
    /// Small uploads of this session by GUID (see `small_body_bytes_max`),
    /// in arrival order for eviction.
    bodies: VecDeque<(Guid, Bytes)>,
    /// Bytes of `bodies` and `unverified_bodies` together.
    bodies_bytes: usize,
    /// Small uploads whose staging has not completed yet, by staging.
    unverified_bodies: BTreeMap<StageId, (Guid, Bytes)>,
    current_body: Option<BytesMut>,
    /// This session holds user locks (released when its command is answered).
    holding_locks: bool,
}

fn status_line(s: &Status) -> String {
    let mut b = BytesMut::new();
    s.write(&mut b);
    String::from_utf8_lossy(&b).into_owned()
}

fn no_unknown() -> Status {
    Status::no(proto::csync::texts::UNKNOWN_ERROR)
}

fn refusal_status(r: &Refusal) -> Status {
    match r {
        Refusal::Code(c) => Status::no_code(c.clone()),
        Refusal::BadParameters(_) => Status::no_code(Code::ProtocolBadParameters),
        Refusal::Unknown(_) | Refusal::Store(_) => no_unknown(),
    }
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Refusal {
        Refusal::BadParameters(e.to_string())
    }
}

/// How an APPLY or GET handler ends.
enum Outcome {
    /// Answer now: data lines, then the status.
    Reply(Vec<Item>, Status),
    /// Write this batch; answer when durable.
    Write(Vec<Mutation>, OnDurable),
    /// A reply is streaming ([`Wait::Fetch`]); it ends with its own status.
    Streaming,
}

fn ok(data: Vec<Item>) -> Result<Outcome, Refusal> {
    Ok(Outcome::Reply(data, Status::success()))
}

fn kv_of(v: &Value) -> Result<&KvList, Refusal> {
    v.as_kvlist()
        .ok_or_else(|| Refusal::BadParameters("expected %(…)".into()))
}

fn atom_of(v: &Value) -> Result<&[u8], Refusal> {
    match v {
        Value::Nil => Ok(b""),
        v => v
            .as_bytes()
            .ok_or_else(|| Refusal::BadParameters("expected a string".into())),
    }
}

fn mailbox_name(b: &[u8]) -> Result<MailboxName, Refusal> {
    MailboxName::new(b).map_err(|_| Refusal::BadParameters("mailbox name".into()))
}

fn user_id(b: &[u8]) -> Result<UserId, Refusal> {
    UserId::new(b).map_err(|_| Refusal::BadParameters("userid".into()))
}

impl<R: MailRead> Server<R> {
    /// A new session at `now`; the banner is queued.
    pub fn new(now: Time, read: R, opts: Options) -> Self {
        let decoder = match opts.flavour {
            Flavour::Csync => Decoder::Csync(
                ServerDecoder::with_options(opts.frame.clone())
                    .unwrap_or_else(|_| ServerDecoder::new()),
            ),
            Flavour::Imap => Decoder::Imap(ImapServerDecoder::new()),
        };
        let mut decoder = decoder;
        decoder.set_line_bytes_max(opts.preauth_line_bytes_max.min(opts.frame.line_bytes_max));
        let mut s = Server {
            read,
            decoder,
            tls_active: opts.tls_active,
            force: opts.force,
            next_stage: opts.stage_id_base,
            opts,
            phase: Phase::NotAuth,
            tag: None,
            wait: Wait::Idle,
            ids: EffectIds::default(),
            out: BytesMut::new(),
            outputs: VecDeque::new(),
            compress_active: false,
            sieve_mailbox: false,
            closed: false,
            last_input: now,
            literal_progress: 0,
            now,
            staged: BTreeMap::new(),
            current_file: None,
            stage_ends: BTreeMap::new(),
            upload_errors: Vec::new(),
            held: None,
            bodies: VecDeque::new(),
            bodies_bytes: 0,
            unverified_bodies: BTreeMap::new(),
            current_body: None,
            holding_locks: false,
        };
        s.banner();
        s
    }

    /// The read handle (tests inspect the store through it).
    pub fn reader(&self) -> &R {
        &self.read
    }

    /// The mechanisms offered and accepted now (TLS or not).
    fn mechanisms(&self) -> &[Mechanism] {
        if self.tls_active {
            &self.opts.mechanisms_tls
        } else {
            &self.opts.mechanisms
        }
    }

    /// The IMAP capabilities: before login (mechanisms) or after.
    fn imap_capabilities(&self) -> String {
        let mut c = String::from("IMAP4rev1 LITERAL+ ID ENABLE");
        if matches!(self.phase, Phase::Auth { .. }) {
            c.push_str(" X-REPLICATION X-SIEVE-MAILBOX");
        } else {
            if self.opts.starttls && !self.tls_active {
                c.push_str(" STARTTLS");
            }
            for m in self.mechanisms() {
                c.push_str(" AUTH=");
                c.push_str(m.name());
            }
            c.push_str(" SASL-IR");
        }
        c
    }

    fn banner(&mut self) {
        if self.opts.flavour == Flavour::Imap {
            let host = self.opts.server_name.replace(['\r', '\n', ' '], "");
            let version = self.opts.version.replace(['\r', '\n'], "");
            let line = format!(
                "* OK [CAPABILITY {}] {host} Cyrus IMAP {version} server ready\r\n",
                self.imap_capabilities()
            );
            self.out.extend_from_slice(line.as_bytes());
            return;
        }
        let mut lines = Vec::new();
        let authed = matches!(self.phase, Phase::Auth { .. });
        if !authed && !self.mechanisms().is_empty() {
            lines.push(Response::Capability(Capability::Sasl(
                self.mechanisms()
                    .iter()
                    .map(|m| Bytes::from_static(m.name().as_bytes()))
                    .collect(),
            )));
        }
        if self.opts.starttls && !self.tls_active {
            lines.push(Response::Capability(Capability::StartTls));
        }
        if self.opts.compress && !self.compress_active && !self.tls_active {
            lines.push(Response::Capability(Capability::Compress(vec![
                Bytes::from_static(b"DEFLATE"),
            ])));
        }
        if !authed && !self.opts.backupd {
            lines.push(Response::Capability(Capability::SieveMailbox));
        }
        let host = self.opts.server_name.replace(['\r', '\n', ' '], "");
        let version = self.opts.version.replace(['\r', '\n'], "");
        lines.push(Response::Greeting(if self.opts.backupd {
            Greeting::backup_server(&host, &version)
        } else {
            Greeting::sync_server(&host, &version)
        }));
        for l in lines {
            self.send(&l);
        }
    }

    fn send(&mut self, r: &Response) {
        if self.opts.flavour == Flavour::Imap {
            match r {
                Response::Data(item) => {
                    let e = ImapResponse::Data(item.clone()).encode();
                    self.out.extend_from_slice(&e.into_bytes());
                    return;
                }
                Response::Status(s) => {
                    let tag = self.tag.clone().unwrap_or_else(|| Bytes::from_static(b"*"));
                    let e = ImapResponse::Tagged {
                        tag,
                        status: s.clone(),
                    }
                    .encode();
                    self.out.extend_from_slice(&e.into_bytes());
                    return;
                }
                _ => {}
            }
        }
        self.out.extend_from_slice(&r.encode().into_bytes());
    }

    /// The session completed something: the idle clock starts again.
    fn progress(&mut self) {
        self.last_input = self.now;
        self.literal_progress = 0;
    }

    fn status(&mut self, mut s: Status) {
        // An answer ends a command (which may have waited on the store).
        self.progress();
        // backupd's one different success text (`OK Success`).
        if self.opts.backupd && s == Status::success() {
            s = Status::ok(proto::csync::texts::BACKUPD_SUCCESS);
        }
        self.send(&Response::Status(s));
    }

    fn flush_out(&mut self) {
        if !self.out.is_empty() {
            let b = self.out.split().freeze();
            self.outputs.push_back(Output::Transmit(b));
        }
    }

    fn push(&mut self, o: Output<Effect, Event>) {
        self.flush_out();
        self.outputs.push_back(o);
    }

    fn event(&mut self, e: Event) {
        self.push(Output::Event(e));
    }

    fn close(&mut self, reason: CloseReason) {
        if !self.closed {
            self.closed = true;
            self.release_locks();
            self.abort_staging();
            self.push(Output::Close(reason));
        }
    }

    fn effect(&mut self, effect: Effect) -> EffectId {
        let id = self.ids.next_id();
        self.push(Output::Effect { id, effect });
        id
    }

    fn blocked(&self) -> bool {
        !matches!(self.wait, Wait::Idle) || self.held.is_some()
    }

    fn unix_now(&self) -> UnixTime {
        UnixTime(self.opts.epoch_unix.0 + self.now.since_epoch().as_secs() as i64)
    }

    fn abort_staging(&mut self) {
        if let Some((stage, _)) = self.current_file.take() {
            let id = self.ids.next_id();
            self.outputs.push_back(Output::Effect {
                id,
                effect: Effect::Store(StoreEffect::StageAbort { stage }),
            });
        }
    }

    /// Keeps a small upload's bytes until its staging completes, within
    /// `small_bodies_bytes_max` (the oldest verified ones go first; a body
    /// that still does not fit is not kept).
    fn keep_body(&mut self, stage: StageId, guid: Guid, b: Bytes) {
        while self.bodies_bytes + b.len() > self.opts.small_bodies_bytes_max {
            match self.bodies.pop_front() {
                Some((_, old)) => self.bodies_bytes -= old.len(),
                None => return,
            }
        }
        self.bodies_bytes += b.len();
        self.unverified_bodies.insert(stage, (guid, b));
    }

    fn may_stage(&self) -> bool {
        matches!(self.phase, Phase::Auth { admin: true })
    }

    /// Handles decoder events until blocked, closed or out of input.
    fn pump(&mut self) {
        while !self.closed && !self.blocked() {
            match self.decoder.poll() {
                Ok(None) => break,
                Ok(Some((tag, ev))) => self.on_event(tag, ev),
                Err(e) => {
                    let t = format!("{e}");
                    self.send(&Response::Fatal(Bytes::from(t.clone())));
                    self.close(CloseReason::PeerError(t));
                }
            }
        }
    }

    fn on_event(&mut self, tag: Option<Bytes>, ev: DecEvent<Line, CommandError>) {
        match &ev {
            DecEvent::FileChunk(bytes) => {
                self.literal_progress += bytes.len() as u64;
                if self.literal_progress >= self.opts.idle_progress_bytes {
                    self.progress();
                }
            }
            DecEvent::ContinuationNeeded { .. } => {}
            _ => self.progress(),
        }
        match ev {
            DecEvent::FileStart(f) => {
                self.abort_staging();
                let known = self.opts.partitions.is_empty()
                    || self
                        .opts
                        .partitions
                        .iter()
                        .any(|p| p.as_bytes() == &f.partition[..]);
                if !self.may_stage() {
                    // Not an admin session: the bytes are dropped.
                } else if !known {
                    self.upload_errors.push(format!(
                        "unknown partition {}",
                        String::from_utf8_lossy(&f.partition)
                    ));
                } else {
                    let stage = StageId(self.next_stage);
                    self.next_stage += 1;
                    let guid: Guid = f.guid.into();
                    self.effect(Effect::Store(StoreEffect::StageBegin {
                        stage,
                        guid,
                        size: f.size,
                    }));
                    self.current_body =
                        (f.size <= self.opts.small_body_bytes_max).then(BytesMut::new);
                    self.current_file = Some((stage, f));
                }
            }
            DecEvent::FileChunk(bytes) => {
                if let Some((stage, _)) = &self.current_file {
                    let stage = *stage;
                    if let Some(b) = &mut self.current_body {
                        b.extend_from_slice(&bytes);
                    }
                    self.effect(Effect::Store(StoreEffect::StageChunk { stage, bytes }));
                }
            }
            DecEvent::FileEnd => {
                if let Some((stage, f)) = self.current_file.take() {
                    if let Some(b) = self.current_body.take() {
                        // Kept only once the store says it is what it
                        // claims to be (its Staged completion hashed it;
                        // hashing here too cost a second SHA-1 of every
                        // small upload).
                        self.keep_body(stage, f.guid.into(), b.freeze());
                    }
                    self.effect(Effect::Store(StoreEffect::StageEnd { stage }));
                    self.stage_ends.insert(stage, f);
                }
            }
            DecEvent::ContinuationNeeded { .. } => {
                // csync framing accepts `{n}` without a continuation; an
                // IMAP-flavour client waits for one.
                if self.opts.flavour == Flavour::Imap {
                    self.out.extend_from_slice(b"+ go ahead\r\n");
                }
            }
            DecEvent::Decoded(line) => {
                if !self.stage_ends.is_empty() {
                    self.held = Some((tag, line));
                } else {
                    self.dispatch(tag, line);
                }
            }
            DecEvent::Refused(e) => {
                self.tag = tag;
                self.on_refused(e)
            }
        }
    }

    fn on_refused(&mut self, e: CommandError) {
        self.upload_errors.clear();
        if let Phase::Sasl(_) = self.phase {
            self.phase = Phase::NotAuth;
            self.status(Status::no(proto::csync::texts::ERROR_AUTHENTICATING));
            return;
        }
        if let (CommandError::Unrecognized { word }, Phase::NotAuth, Flavour::Csync) =
            (&e, &self.phase, self.opts.flavour)
        {
            if word.as_ref() == b"C01" {
                // A 3.x sync_client with `sync_try_imap` on probes for an
                // imapd with X-REPLICATION (`C01 CAPABILITY`, a fixed tag).
                // Cyrus's csync port answers untagged BAD and the client
                // waits out its 10 s timeout; an IMAP answer without
                // X-REPLICATION or AUTH= makes it fall back to csync at once.
                self.out
                    .extend_from_slice(b"* CAPABILITY IMAP4rev1\r\nC01 OK Completed\r\n");
                self.event(Event::Refused {
                    command: "C01 CAPABILITY".into(),
                    status: "C01 OK Completed".into(),
                    detail: "IMAP probe of a try-imap sync_client answered".into(),
                });
                return;
            }
        }
        let verb = e.verb();
        let status = match &self.phase {
            Phase::NotAuth if verb.is_some_and(|v| !v.allowed_before_auth()) => {
                Status::no(proto::csync::texts::AUTHENTICATE_FIRST)
            }
            Phase::Auth { admin: false } => Status::no(proto::csync::texts::PERMISSION_DENIED),
            _ => e.response(),
        };
        self.event(Event::Refused {
            command: verb.map_or("?", |v| v.wire()).to_string(),
            status: status_line(&status),
            detail: e.to_string(),
        });
        self.status(status);
    }

    fn dispatch(&mut self, tag: Option<Bytes>, line: Line) {
        if tag.is_some() {
            self.tag = tag;
        }
        match line {
            Line::Csync(l) => self.on_line(l),
            Line::ImapCapability => {
                let c = format!("* CAPABILITY {}\r\n", self.imap_capabilities());
                self.out.extend_from_slice(c.as_bytes());
                self.status(Status::ok("Completed"));
            }
            Line::ImapLogout => {
                self.out.extend_from_slice(b"* BYE LOGOUT received\r\n");
                self.status(Status::ok("Completed"));
                self.close(CloseReason::Done);
            }
            Line::ImapOther => self.status(Status::bad("Unrecognized command")),
        }
    }

    fn on_line(&mut self, line: ClientLine) {
        match line {
            ClientLine::SaslResponse(d) => self.on_sasl_response(d.decode().ok()),
            ClientLine::SaslCancel => {
                self.phase = Phase::NotAuth;
                self.status(Status::bad(proto::csync::texts::CLIENT_CANCELED));
            }
            ClientLine::Command(c) => self.on_command(c),
        }
    }

    fn on_command(&mut self, c: Cmd) {
        let verb = c.verb();
        match &self.phase {
            Phase::Auth { admin: false } => {
                return self.status(Status::no(proto::csync::texts::PERMISSION_DENIED))
            }
            Phase::NotAuth | Phase::Sasl(_) if !verb.allowed_before_auth() => {
                return self.status(Status::no(proto::csync::texts::AUTHENTICATE_FIRST))
            }
            _ => {}
        }
        match c {
            Cmd::Noop if self.opts.flavour == Flavour::Imap => self.status(Status::ok("Completed")),
            Cmd::Noop => self.status(Status::ok(proto::csync::texts::NOOP_COMPLETED)),
            Cmd::Exit => {
                self.status(Status::ok(proto::csync::texts::FINISHED));
                self.close(CloseReason::Done);
            }
            Cmd::Restart => {
                // Cyrus drops the reserve list (its staged files).
                self.staged.clear();
                self.bodies.clear();
                self.bodies_bytes = self.unverified_bodies.values().map(|(_, b)| b.len()).sum();
                self.status(Status::ok(proto::csync::texts::RESTARTING));
            }
            Cmd::Compress { algorithm } => {
                if self.compress_active {
                    self.status(Status::no("Compression already active: DEFLATE"));
                } else if !self.opts.compress || !algorithm.eq_ignore_ascii_case(b"DEFLATE") {
                    let mut t = b"Unknown compression algorithm: ".to_vec();
                    t.extend(
                        algorithm
                            .iter()
                            .map(|&b| if b < 0x20 || b == 0x7f { b'?' } else { b }),
                    );
                    self.status(Status::no(Bytes::from(t)));
                } else {
                    self.status(Status::ok(proto::csync::texts::DEFLATE_ACTIVE));
                    self.compress_active = true;
                    let rest = self.decoder.take_unconsumed().freeze();
                    self.push(Output::StartLayer {
                        layer: Layer::Deflate,
                        input_after_switch: rest,
                    });
                }
            }
            Cmd::StartTls => {
                if matches!(self.phase, Phase::Auth { .. }) {
                    self.status(Status::bad("Can't Starttls after authentication"));
                } else if self.tls_active {
                    self.status(Status::bad("Already did a successful Starttls"));
                } else if self.opts.backupd {
                    self.status(Status::no("command not implemented"));
                } else if !self.opts.starttls {
                    self.status(Status::no("Error initializing TLS"));
                } else {
                    self.status(Status::ok(proto::csync::texts::BEGIN_TLS));
                    self.tls_active = true;
                    // Cyrus discards input pipelined after STARTTLS.
                    let _ = self.decoder.take_unconsumed();
                    self.push(Output::StartLayer {
                        layer: Layer::TlsServer,
                        input_after_switch: Bytes::new(),
                    });
                    self.banner();
                }
            }
            Cmd::Authenticate {
                mechanism,
                initial_response,
            } => self.authenticate(&mechanism, initial_response.map(|d| d.decode())),
            Cmd::Apply(_) | Cmd::Get(_) | Cmd::Restore(_) => {
                if !self.take_locks(&c) {
                    let retry_at = self
                        .now
                        .checked_add(self.opts.lock_retry)
                        .unwrap_or(self.now);
                    self.wait = Wait::Lock {
                        retry_at,
                        command: c,
                    };
                    return;
                }
                match c {
                    Cmd::Apply(item) => self.run("APPLY", item, Self::apply),
                    Cmd::Get(item) => self.run("GET", item, Self::get),
                    Cmd::Restore(item) => self.run("RESTORE", item, Self::restore),
                    _ => unreachable!("matched above"),
                }
                if !matches!(self.wait, Wait::Write { .. }) {
                    self.release_locks();
                }
            }
        }
    }

    /// Takes the user locks command `c` needs; `false` if one is held by
    /// another session (nothing is taken then).
    fn take_locks(&mut self, c: &Cmd) -> bool {
        let Some(locks) = &self.opts.user_locks else {
            return true;
        };
        let (verb, item) = match c {
            Cmd::Apply(i) => ("APPLY", i),
            Cmd::Get(i) => ("GET", i),
            Cmd::Restore(i) => ("RESTORE", i),
            _ => return true,
        };
        let users = lock_keys(verb, item);
        if users.is_empty() {
            return true;
        }
        if locks.0.try_lock(self.opts.session, &users) {
            self.holding_locks = true;
            true
        } else {
            false
        }
    }

    fn release_locks(&mut self) {
        if std::mem::take(&mut self.holding_locks) {
            if let Some(locks) = &self.opts.user_locks {
                locks.0.unlock(self.opts.session);
            }
        }
    }

    fn authenticate(
        &mut self,
        mechanism: &[u8],
        initial: Option<Result<Vec<u8>, proto::csync::SaslDataError>>,
    ) {
        if matches!(self.phase, Phase::Auth { .. }) {
            return self.status(Status::bad(proto::csync::texts::ALREADY_AUTHENTICATED));
        }
        let mech = std::str::from_utf8(mechanism)
            .ok()
            .and_then(Mechanism::from_name)
            .filter(|m| self.mechanisms().contains(m));
        let Some(mech) = mech else {
            return self.start_pause();
        };
        let initial = match initial.transpose() {
            Ok(i) => i,
            Err(_) => return self.start_pause(),
        };
        match sasl::Server::start(mech, initial.as_deref(), self.opts.sasl.clone()) {
            Ok((server, step)) => self.sasl_step(server, step),
            Err(_) => self.start_pause(),
        }
    }

    fn sasl_step(&mut self, server: sasl::Server, step: ServerStep) {
        match step {
            ServerStep::Challenge(c) => {
                self.send(&Response::Challenge(proto::csync::SaslData::encode(
                    &c, false,
                )));
                self.decoder.expect_sasl_response();
                self.phase = Phase::Sasl(server);
            }
            ServerStep::Done(creds) => {
                self.phase = Phase::NotAuth;
                let id = self.effect(Effect::Authenticate(creds));
                self.wait = Wait::Auth { id };
            }
        }
    }

    fn on_sasl_response(&mut self, data: Option<Vec<u8>>) {
        let Phase::Sasl(mut server) = std::mem::replace(&mut self.phase, Phase::NotAuth) else {
            // A SASL line is only decoded after a challenge.
            return self.status(Status::bad_protocol("Unrecognized command"));
        };
        let Some(data) = data else {
            return self.start_pause();
        };
        match server.step(&data) {
            Ok(step) => self.sasl_step(server, step),
            Err(_) => self.start_pause(),
        }
    }

    fn start_pause(&mut self) {
        self.phase = Phase::NotAuth;
        let until = self
            .now
            .checked_add(self.opts.failed_login_pause)
            .unwrap_or(self.now);
        self.wait = Wait::Pause { until };
    }

    /// Runs an APPLY/GET/RESTORE handler and answers or starts its write.
    fn run(
        &mut self,
        verb: &'static str,
        item: Item,
        handler: fn(&mut Self, &str, &Value) -> Result<Outcome, Refusal>,
    ) {
        let key = String::from_utf8_lossy(&item.key).to_ascii_uppercase();
        let command = format!("{verb} {key}");
        let upload_errors = std::mem::take(&mut self.upload_errors);
        let result = if !upload_errors.is_empty() {
            // An upload on this line was refused: Cyrus would have died
            // (unknown partition) or failed the line (bad GUID).
            // One APPLY MESSAGE carries up to 1024 files: name the first
            // few refusals and count the rest, so one line cannot flood the log.
            const NAMED: usize = 3;
            let mut summary = upload_errors[..upload_errors.len().min(NAMED)].join("; ");
            if upload_errors.len() > NAMED {
                summary.push_str(&format!("; and {} more", upload_errors.len() - NAMED));
            }
            self.event(Event::MessageRefused(summary));
            Err(Refusal::Code(Code::ProtocolError))
        } else {
            handler(self, &key, &item.value)
        };
        match result {
            Ok(Outcome::Streaming) => {}
            Ok(Outcome::Reply(data, status)) => {
                for d in data {
                    self.send(&Response::Data(d));
                }
                if status.kind != StatusKind::Ok {
                    self.event(Event::Refused {
                        command,
                        status: status_line(&status),
                        detail: String::new(),
                    });
                } else {
                    self.event(Event::Answered { command });
                }
                self.status(status);
            }
            Ok(Outcome::Write(mutations, mut then)) => {
                if mutations.is_empty() {
                    for d in std::mem::take(&mut then.data) {
                        self.send(&Response::Data(d));
                    }
                    return self.status(if then.crc_ok {
                        Status::success()
                    } else {
                        Status::no_code(Code::SyncChecksum)
                    });
                }
                then.command = command;
                then.mutations = mutations.len();
                let id = self.ids.next_id();
                let batch = BatchId(id.0);
                self.push(Output::Effect {
                    id,
                    effect: Effect::Store(StoreEffect::Write(WriteBatch {
                        id: batch,
                        mutations,
                    })),
                });
                self.wait = Wait::Write { id, batch, then };
            }
            Err(r) => {
                let status = refusal_status(&r);
                if let Refusal::Store(e) = &r {
                    self.event(Event::StoreFailed(e.to_string()));
                }
                self.event(Event::Refused {
                    command,
                    status: status_line(&status),
                    detail: r.to_string(),
                });
                self.status(status);
            }
        }
    }

    /// The reply to a durable write: built from its proof.
    fn durable(&mut self, proof: &DurableProof, batch: BatchId, then: OnDurable) {
        assert_eq!(
            proof.batch_id(),
            batch,
            "durable proof for another batch: driver bug"
        );
        for d in then.data {
            self.send(&Response::Data(d));
        }
        self.event(Event::Applied {
            command: then.command.clone(),
            mutations: then.mutations,
        });
        if then.crc_ok {
            self.status(Status::success());
        } else {
            let s = Status::no_code(Code::SyncChecksum);
            self.event(Event::Refused {
                command: then.command,
                status: status_line(&s),
                detail: "CRC differs after apply (applied, as Cyrus does)".into(),
            });
            self.status(s);
        }
    }

    fn ctx(&self) -> ApplyCtx<'_> {
        ApplyCtx {
            force: self.force,
            sieve_mailbox: self.sieve_mailbox,
            staged: &self.staged,
            now: self.unix_now(),
            partitions: &self.opts.partitions,
        }
    }

    fn write(mutations: Vec<Mutation>) -> Result<Outcome, Refusal> {
        Ok(Outcome::Write(
            mutations,
            OnDurable {
                command: String::new(),
                data: Vec::new(),
                crc_ok: true,
                mutations: 0,
            },
        ))
    }

    fn plan_outcome(plan: MailboxPlan) -> Result<Outcome, Refusal> {
        Ok(Outcome::Write(
            plan.mutations,
            OnDurable {
                command: String::new(),
                data: Vec::new(),
                crc_ok: plan.crc_ok,
                mutations: 0,
            },
        ))
    }

    // ---- GET ----------------------------------------------------------

    /// The quota root governing `name`, as Cyrus's `quota_findroot`: the
    /// name itself or its nearest ancestor that is a root. (The master's
    /// QUOTAROOT is ignored, as Cyrus ignores it.)
    fn quota_root_of(&self, name: &MailboxName) -> Result<Option<MailboxName>, Refusal> {
        let mut b = name.as_bytes();
        loop {
            if let Ok(n) = MailboxName::new(b) {
                if self.read.quota(&n)?.is_some() {
                    return Ok(Some(n));
                }
            }
            match b.iter().rposition(|&c| c == b'.') {
                Some(i) => b = &b[..i],
                None => return Ok(None),
            }
        }
    }

    fn mailbox_item(&self, mb: &crate::model::Mailbox, full: bool) -> Result<Item, Refusal> {
        let crcs = self.read.sync_crcs(&mb.uniqueid)?;
        let mut shown;
        let mb = if mb.quotaroot.is_some() || self.quota_root_of(&mb.name)?.is_some() {
            shown = mb.clone();
            shown.quotaroot = self.quota_root_of(&mb.name)?;
            &shown
        } else {
            mb
        };
        let records = if full {
            Some(
                all_records(&self.read, &mb.uniqueid)?
                    .iter()
                    .map(record_kv)
                    .collect(),
            )
        } else {
            None
        };
        Ok(Item::new(
            "MAILBOX",
            Value::KvList(mailbox_kv(mb, crcs, records)),
        ))
    }

    fn visible(&self, mb: &crate::model::Mailbox) -> bool {
        !mb.mbtype.deleted && (self.sieve_mailbox || mb.mbtype.kind != MailboxKind::Sieve)
    }

    fn meta_items(&self, user: &UserId, out: &mut Vec<Item>) -> Result<(), Refusal> {
        for (mbox, seen) in self.read.seen_of_user(user)? {
            out.push(Item::new("SEEN", Value::KvList(seen_kv(&mbox, &seen))));
        }
        let subs: Vec<Value> = self
            .read
            .subscriptions(user)?
            .into_iter()
            .filter(|(_, s)| s.subscribed)
            .map(|(n, _)| Value::string(Bytes::copy_from_slice(n.as_bytes())))
            .collect();
        if !subs.is_empty() {
            out.push(Item::new("LSUB", Value::List(subs)));
        }
        if !self.sieve_mailbox {
            let active = self.read.sieve_active(user)?;
            for s in self.read.sieve_scripts(user)? {
                out.push(Item::new(
                    "SIEVE",
                    Value::KvList(
                        KvList::new()
                            .with("FILENAME", Value::string(format!("{}.script", s.name)))
                            .with("LAST_UPDATE", Value::num(s.last_update.0.max(0) as u64))
                            .with("GUID", Value::Atom(Bytes::from(s.guid().to_hex())))
                            .with("ISACTIVE", Value::num(0)),
                    ),
                ));
                if active.as_ref() == Some(&s.name) {
                    out.push(Item::new(
                        "SIEVE",
                        Value::KvList(
                            KvList::new()
                                .with("FILENAME", Value::string(format!("{}.bc", s.name)))
                                .with("LAST_UPDATE", Value::num(0))
                                .with("GUID", Value::Atom(Bytes::from(Guid::NULL.to_hex())))
                                .with("ISACTIVE", Value::num(1)),
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn get(&mut self, key: &str, v: &Value) -> Result<Outcome, Refusal> {
        let mut data = Vec::new();
        match key {
            "USER" => {
                let user = user_id(atom_of(v)?)?;
                let mut roots: Vec<MailboxName> = Vec::new();
                let mut mbs = self.read.mailboxes_of_user(&user)?;
                // Cyrus's order: the user's tree, then its DELETED tree,
                // each in mailboxes.db order (the separator sorts first).
                mbs.sort_by_cached_key(|m| cyrus_order(&m.name));
                for mb in mbs {
                    if !self.visible(&mb) {
                        continue;
                    }
                    if let Some(q) = self.quota_root_of(&mb.name)? {
                        if !roots.contains(&q) {
                            roots.push(q);
                        }
                    }
                    data.push(self.mailbox_item(&mb, false)?);
                }
                if let Some(inbox) = inbox_of(&user) {
                    if !roots.contains(&inbox) {
                        roots.push(inbox);
                    }
                }
                for root in roots {
                    if let Some(q) = self.read.quota(&root)? {
                        data.push(Item::new("QUOTA", Value::KvList(quota_kv(&root, &q))));
                    }
                }
                self.meta_items(&user, &mut data)?;
                ok(data)
            }
            "META" => {
                let user = user_id(atom_of(v)?)?;
                self.meta_items(&user, &mut data)?;
                ok(data)
            }
            "MAILBOXES" | "UNIQUEIDS" => {
                let list = v
                    .as_list()
                    .ok_or_else(|| Refusal::BadParameters("expected a list".into()))?;
                for n in list {
                    let b = atom_of(n)?;
                    let mb = if key == "MAILBOXES" {
                        match MailboxName::new(b) {
                            Ok(n) => self.read.mailbox(&n)?,
                            Err(_) => None,
                        }
                    } else {
                        match UniqueId::new(b) {
                            Ok(u) => self.read.mailbox_by_uniqueid(&u)?,
                            Err(_) => None,
                        }
                    };
                    if let Some(mb) = mb.filter(|m| self.visible(m)) {
                        data.push(self.mailbox_item(&mb, false)?);
                    }
                }
                ok(data)
            }
            "FULLMAILBOX" => {
                let name = mailbox_name(atom_of(v)?)?;
                match self.read.mailbox(&name)? {
                    Some(mb) => {
                        data.push(self.mailbox_item(&mb, true)?);
                        ok(data)
                    }
                    None => Err(Refusal::Code(Code::MailboxNonexistent)),
                }
            }
            "QUOTA" => {
                let root = mailbox_name(atom_of(v)?)?;
                if let Some(q) = self.read.quota(&root)? {
                    data.push(Item::new("QUOTA", Value::KvList(quota_kv(&root, &q))));
                }
                ok(data)
            }
            "ANNOTATION" => {
                let name = atom_of(v)?;
                let anns = if name.is_empty() {
                    Some(self.read.server_annotations()?)
                } else {
                    self.read
                        .mailbox(&mailbox_name(name)?)?
                        .map(|m| m.annotations)
                };
                for (entry, owner, val) in anns.iter().flat_map(|a| a.iter()) {
                    data.push(Item::new(
                        "ANNOTATION",
                        Value::KvList(annotation_line(name, entry, owner, &val.value)),
                    ));
                }
                ok(data)
            }
            "FETCH" => self.get_fetch(kv_of(v)?),
            "FETCH_SIEVE" => {
                let kv = kv_of(v)?;
                let user = wire::user(kv, "USERID")?;
                let file = wire::bytes(kv, "FILENAME")?;
                let name = file.strip_suffix(b".script").unwrap_or(file);
                let script = self
                    .read
                    .sieve_scripts(&user)?
                    .into_iter()
                    .find(|s| s.name.as_bytes() == name);
                match script {
                    Some(s) => {
                        data.push(Item::new(
                            "SIEVE",
                            Value::KvList(
                                KvList::new()
                                    .with(
                                        "USERID",
                                        Value::string(Bytes::copy_from_slice(user.as_bytes())),
                                    )
                                    .with("FILENAME", Value::string(Bytes::copy_from_slice(file)))
                                    .with("CONTENT", Value::string(s.content)),
                            ),
                        ));
                        ok(data)
                    }
                    None => Err(Refusal::Code(Code::MailboxNonexistent)),
                }
            }
            _ => Err(Refusal::Code(Code::ProtocolError)),
        }
    }

    /// `GET FETCH`: `* MESSAGE %{part guid size}` CRLF bytes CRLF, streamed
    /// from the store in chunks.
    fn get_fetch(&mut self, kv: &KvList) -> Result<Outcome, Refusal> {
        let guid = wire::get(kv, "GUID")?
            .as_bytes()
            .and_then(|b| Guid::parse(b).ok())
            .ok_or_else(|| Refusal::BadParameters("GUID".into()))?;
        let partition = match wire::bytes_opt(kv, "PARTITION")? {
            Some(p) => Bytes::copy_from_slice(p),
            None => Bytes::from_static(b"default"),
        };
        let Some(size) = self.read.message_size(&guid)? else {
            return Err(Refusal::Code(Code::MailboxNonexistent));
        };
        // The announcement, then the body straight from the store.
        let mut head = Vec::new();
        head.extend_from_slice(b"* MESSAGE %{");
        let p = Value::string(partition);
        let mut e = proto::dlist::Encoder::new(proto::dlist::LiteralStyle::NonSync);
        e.value(&p);
        head.extend_from_slice(e.finish().text());
        head.extend_from_slice(format!(" {} {}}}\r\n", guid.to_hex(), size).as_bytes());
        self.out.extend_from_slice(&head);
        self.wait = Wait::Fetch { guid, off: 0, size };
        self.fetch_step();
        Ok(Outcome::Streaming)
    }

    /// Sends the next chunk of the streaming `GET FETCH` reply, or its end.
    fn fetch_step(&mut self) {
        let Wait::Fetch { guid, off, size } = self.wait else {
            return;
        };
        if off < size {
            let want = self.opts.fetch_chunk_bytes.max(1);
            let chunk = match self.read.message_bytes(&guid, off, want) {
                Ok(c) if !c.is_empty() => c,
                failed => {
                    // The store lost or refused bytes it listed: the
                    // literal cannot be completed; end the session rather
                    // than desynchronise.
                    let why = match failed {
                        Err(e) => e.to_string(),
                        Ok(_) => "short".into(),
                    };
                    self.wait = Wait::Idle;
                    self.event(Event::StoreFailed(format!("message {guid}: {why}")));
                    self.close(CloseReason::EffectFailed(format!("message {guid}: {why}")));
                    return;
                }
            };
            let off = off + chunk.len() as u64;
            self.flush_out();
            self.outputs.push_back(Output::Transmit(chunk));
            self.wait = Wait::Fetch { guid, off, size };
            if off < size {
                return;
            }
        }
        self.wait = Wait::Idle;
        self.out.extend_from_slice(b"\r\n");
        self.status(Status::success());
    }

    // ---- APPLY --------------------------------------------------------

    fn apply(&mut self, key: &str, v: &Value) -> Result<Outcome, Refusal> {
        let key = key.strip_prefix("LOCAL_").unwrap_or(key);
        let now = self.unix_now();
        match key {
            "RESERVE" => {
                let kv = kv_of(v)?;
                let guids = wire::get(kv, "GUID")?
                    .as_list()
                    .ok_or_else(|| Refusal::BadParameters("GUID".into()))?;
                let mut missing = Vec::new();
                for g in guids {
                    let Some(guid) = g.as_bytes().and_then(|b| Guid::parse(b).ok()) else {
                        return Err(Refusal::BadParameters("GUID".into()));
                    };
                    if !self.staged.contains_key(&guid) && !self.read.has_message(&guid)? {
                        missing.push(Value::Atom(Bytes::from(guid.to_hex())));
                    }
                }
                let data = if missing.is_empty() {
                    Vec::new()
                } else {
                    vec![Item::new("MISSING", Value::List(missing))]
                };
                ok(data)
            }
            "MESSAGE" => {
                // The bytes were staged while the line streamed; each was
                // verified (Staged completion) before this line was read.
                ok(Vec::new())
            }
            "MAILBOX" => {
                let kv = kv_of(v)?;
                let hdr = wire::mailbox_header(kv, false)?;
                let records = match kv.get("RECORD") {
                    Some(r) => r
                        .as_list()
                        .ok_or_else(|| Refusal::BadParameters("RECORD".into()))?
                        .iter()
                        .map(record_of)
                        .collect::<Result<Vec<_>, _>>()?,
                    None if hdr.mbtype.intermediate || hdr.mbtype.deleted => Vec::new(),
                    None => return Err(Refusal::BadParameters("RECORD missing".into())),
                };
                let mut plan = plan_mailbox(&self.read, &hdr, &records, &self.ctx())?;
                if plan.mailbox.mbtype.kind == MailboxKind::Sieve {
                    self.add_sieve_scripts(&mut plan)?;
                }
                Self::plan_outcome(plan)
            }
            "EXPUNGE" => {
                let kv = kv_of(v)?;
                let name = wire::name(kv, "MBOXNAME")?;
                let id = wire::uniqueid(kv, "UNIQUEID")?;
                let mb = self
                    .read
                    .mailbox(&name)?
                    .ok_or(Refusal::Code(Code::MailboxNonexistent))?;
                if mb.uniqueid != id {
                    return Err(Refusal::Code(Code::MailboxMoved));
                }
                let mut m = Vec::new();
                for u in wire::get(kv, "UID")?
                    .as_list()
                    .ok_or_else(|| Refusal::BadParameters("UID".into()))?
                {
                    let uid = u
                        .as_u64()
                        .and_then(|n| Uid::new(n as u32).ok())
                        .ok_or_else(|| Refusal::BadParameters("UID".into()))?;
                    if let Some(mut r) = self.read.record(&mb.uniqueid, uid)? {
                        if !r.expunged {
                            // Silently, as Cyrus: no modseq bump.
                            r.expunged = true;
                            m.push(Mutation::PutRecord {
                                mailbox: mb.uniqueid.clone(),
                                record: r,
                            });
                        }
                    }
                }
                Self::write(m)
            }
            "UNMAILBOX" => {
                let name = mailbox_name(atom_of(v)?)?;
                let mb = self
                    .read
                    .mailbox(&name)?
                    .ok_or(Refusal::Code(Code::MailboxNonexistent))?;
                Self::write(vec![Mutation::DeleteMailbox {
                    uniqueid: mb.uniqueid,
                    at: now,
                    modseq: mb.highestmodseq,
                }])
            }
            "RENAME" => {
                let kv = kv_of(v)?;
                let old = wire::name(kv, "OLDMBOXNAME")?;
                let new = wire::name(kv, "NEWMBOXNAME")?;
                let part = wire::bytes_opt(kv, "PARTITION")?;
                let uidv = wire::num_opt(kv, "UIDVALIDITY")?;
                let mut mb = self
                    .read
                    .mailbox(&old)?
                    .ok_or(Refusal::Code(Code::MailboxNonexistent))?;
                if old == new && !matches!(part, Some(p) if p != mb.partition.as_bytes()) {
                    return ok(Vec::new());
                }
                let mut m = Vec::new();
                if old != new {
                    super::apply::policy_check(&new)?;
                    if self.read.mailbox(&new)?.is_some() {
                        return Err(Refusal::Unknown("target name exists".into()));
                    }
                    m.push(Mutation::RenameMailbox {
                        uniqueid: mb.uniqueid.clone(),
                        new_name: new.clone(),
                        at: now,
                        modseq: mb.highestmodseq,
                    });
                    mb.name_history.push(crate::model::NameChange {
                        old_name: old.clone(),
                        at: now,
                        modseq: mb.highestmodseq,
                    });
                    mb.name = new.clone();
                    mb.renamed_or_created_at = now;
                    mb.owner = wire::owner_of(&new);
                }
                if let Some(p) = part {
                    if !self.opts.partitions.is_empty()
                        && !self.opts.partitions.iter().any(|x| x.as_bytes() == p)
                    {
                        return Err(Refusal::Unknown("unknown partition".into()));
                    }
                    mb.partition = Partition::new(p)
                        .map_err(|_| Refusal::BadParameters("PARTITION".into()))?;
                }
                if let Some(u) = uidv {
                    if u as u32 > mb.uidvalidity.get() {
                        mb.uidvalidity = wire::uidvalidity(u as u32);
                    }
                }
                m.push(Mutation::PutMailbox(mb));
                Self::write(m)
            }
            "QUOTA" => {
                let (root, q) = quota_of(kv_of(v)?)?;
                Self::write(vec![Mutation::PutQuota { root, quota: q }])
            }
            "UNQUOTA" => {
                let root = mailbox_name(atom_of(v)?)?;
                Self::write(vec![Mutation::DeleteQuota { root }])
            }
            "ANNOTATION" | "UNANNOTATION" => {
                let kv = kv_of(v)?;
                let name = wire::bytes(kv, "MBOXNAME")?;
                let entry = AnnotationEntry::new(wire::bytes(kv, "ENTRY")?)
                    .map_err(|_| Refusal::BadParameters("ENTRY".into()))?;
                let owner = AnnotationOwner::from_bytes(wire::bytes(kv, "USERID")?)
                    .map_err(|_| Refusal::BadParameters("USERID".into()))?;
                let value = if key == "ANNOTATION" {
                    match wire::get(kv, "VALUE")? {
                        Value::Nil => Bytes::new(),
                        v => v
                            .as_shared_bytes()
                            .ok_or_else(|| Refusal::BadParameters("VALUE".into()))?
                            .clone(),
                    }
                } else {
                    Bytes::new()
                };
                let modseq = ModSeq(wire::num_opt(kv, "MODSEQ")?.unwrap_or(0));
                let mailbox = if name.is_empty() {
                    None
                } else {
                    let mb = self
                        .read
                        .mailbox(&mailbox_name(name)?)?
                        .ok_or(Refusal::Code(Code::MailboxNonexistent))?;
                    Some(mb.uniqueid)
                };
                Self::write(vec![Mutation::SetAnnotation {
                    mailbox,
                    entry,
                    owner,
                    value: AnnotationValue { modseq, value },
                }])
            }
            "SEEN" => {
                let (user, mailbox, seen) = seen_of(kv_of(v)?)?;
                Self::write(vec![Mutation::PutSeen {
                    user,
                    mailbox,
                    seen,
                }])
            }
            "SUB" | "UNSUB" => {
                let kv = kv_of(v)?;
                Self::write(vec![Mutation::SetSubscription {
                    user: wire::user(kv, "USERID")?,
                    name: wire::name(kv, "MBOXNAME")?,
                    subscription: Subscription {
                        subscribed: key == "SUB",
                        changed_at: now,
                    },
                }])
            }
            "SIEVE" => {
                let kv = kv_of(v)?;
                let user = wire::user(kv, "USERID")?;
                let file = wire::bytes(kv, "FILENAME")?;
                let Some(name) = file.strip_suffix(b".script") else {
                    // Cyrus ignores compiled (.bc) and other uploads.
                    return ok(Vec::new());
                };
                let content = match wire::get(kv, "CONTENT")? {
                    Value::Nil => Bytes::new(),
                    v => v
                        .as_shared_bytes()
                        .ok_or_else(|| Refusal::BadParameters("CONTENT".into()))?
                        .clone(),
                };
                let last_update = UnixTime(wire::num(kv, "LAST_UPDATE")? as i64);
                let name =
                    SieveName::new(name).map_err(|_| Refusal::BadParameters("FILENAME".into()))?;
                Self::write(vec![Mutation::PutSieve {
                    user,
                    script: SieveScript {
                        name,
                        last_update,
                        content,
                    },
                }])
            }
            "UNSIEVE" => {
                let kv = kv_of(v)?;
                let user = wire::user(kv, "USERID")?;
                let file = wire::bytes(kv, "FILENAME")?;
                let Some(name) = file.strip_suffix(b".script") else {
                    return ok(Vec::new());
                };
                let name =
                    SieveName::new(name).map_err(|_| Refusal::BadParameters("FILENAME".into()))?;
                Self::write(vec![Mutation::DeleteSieve { user, name }])
            }
            "ACTIVATE_SIEVE" => {
                let kv = kv_of(v)?;
                let user = wire::user(kv, "USERID")?;
                let file = wire::bytes(kv, "FILENAME")?;
                // `<name>.bc`: Cyrus strips the last three bytes.
                let name = &file[..file.len().saturating_sub(3)];
                let name =
                    SieveName::new(name).map_err(|_| Refusal::BadParameters("FILENAME".into()))?;
                if !self
                    .read
                    .sieve_scripts(&user)?
                    .iter()
                    .any(|s| s.name == name)
                {
                    return Err(Refusal::Unknown("no such script".into()));
                }
                Self::write(vec![Mutation::ActivateSieve {
                    user,
                    name: Some(name),
                }])
            }
            "UNACTIVATE_SIEVE" => {
                let kv = kv_of(v)?;
                let user = wire::user(kv, "USERID")?;
                Self::write(vec![Mutation::ActivateSieve { user, name: None }])
            }
            "UNUSER" => {
                let u = atom_of(v)?;
                if u.is_empty() {
                    return ok(Vec::new());
                }
                let user = user_id(u)?;
                // As Cyrus 3.6 (observed): the user's live mailboxes go,
                // deepest first; its DELETED.* mailboxes and the seen state
                // it keeps on others' mailboxes stay; subscriptions, Sieve
                // scripts and the user's quota root go.
                let mut mbs: Vec<_> = self
                    .read
                    .mailboxes_of_user(&user)?
                    .into_iter()
                    .filter(|m| !cyrus_order(&m.name).0)
                    .collect();
                mbs.sort_by_cached_key(|m| std::cmp::Reverse(cyrus_order(&m.name)));
                let mut m = Vec::new();
                for mb in mbs {
                    m.push(Mutation::DeleteMailbox {
                        uniqueid: mb.uniqueid,
                        at: now,
                        modseq: mb.highestmodseq,
                    });
                }
                for (name, sub) in self.read.subscriptions(&user)? {
                    if sub.subscribed {
                        m.push(Mutation::SetSubscription {
                            user: user.clone(),
                            name,
                            subscription: Subscription {
                                subscribed: false,
                                changed_at: now,
                            },
                        });
                    }
                }
                if self.read.sieve_active(&user)?.is_some() {
                    m.push(Mutation::ActivateSieve {
                        user: user.clone(),
                        name: None,
                    });
                }
                for s in self.read.sieve_scripts(&user)? {
                    m.push(Mutation::DeleteSieve {
                        user: user.clone(),
                        name: s.name,
                    });
                }
                if let Some(root) = inbox_of(&user) {
                    if self.read.quota(&root)?.is_some() {
                        m.push(Mutation::DeleteQuota { root });
                    }
                }
                Self::write(m)
            }
            "FORCE" => {
                self.force = true;
                ok(Vec::new())
            }
            "CAPABILITIES" => {
                let list = v
                    .as_list()
                    .ok_or_else(|| Refusal::BadParameters("expected a list".into()))?;
                let mut enabled = Vec::new();
                for c in list {
                    if c.as_bytes()
                        .is_some_and(|b| b.eq_ignore_ascii_case(b"SIEVE-MAILBOX"))
                    {
                        self.sieve_mailbox = true;
                        enabled.push(Value::Atom(Bytes::from_static(b"SIEVE-MAILBOX")));
                    }
                }
                ok(vec![Item::new("ENABLED", Value::List(enabled))])
            }
            _ => Err(Refusal::Code(Code::ProtocolError)),
        }
    }

    /// A `#sieve` mailbox apply also keeps its messages as the owner's
    /// Sieve scripts, in the same batch.
    fn add_sieve_scripts(&self, plan: &mut MailboxPlan) -> Result<(), Refusal> {
        let Some(owner) = plan.mailbox.owner.clone() else {
            return Ok(());
        };
        let mut recs: BTreeMap<Uid, crate::model::Record> =
            all_records(&self.read, &plan.mailbox.uniqueid)?
                .into_iter()
                .map(|r| (r.uid, r))
                .collect();
        for m in &plan.mutations {
            match m {
                Mutation::DeleteMailbox { uniqueid, .. } if *uniqueid == plan.mailbox.uniqueid => {
                    recs.clear()
                }
                Mutation::PutRecord { mailbox, record } if *mailbox == plan.mailbox.uniqueid => {
                    recs.insert(record.uid, record.clone());
                }
                _ => {}
            }
        }
        let recs: Vec<_> = recs.into_values().collect();
        let body_of = |g: &Guid| -> Option<Bytes> {
            if let Some((_, b)) = self.bodies.iter().find(|(x, _)| x == g) {
                return Some(b.clone());
            }
            let size = self.read.message_size(g).ok()??;
            if size > self.opts.small_body_bytes_max {
                return None;
            }
            self.read.message_bytes(g, 0, size as usize).ok()
        };
        let extra = super::apply::sieve_mutations(&self.read, &owner, &recs, &body_of)?;
        plan.mutations.extend(extra);
        Ok(())
    }

    fn restore(&mut self, key: &str, v: &Value) -> Result<Outcome, Refusal> {
        let key = key.strip_prefix("LOCAL_").unwrap_or(key);
        if key != "MAILBOX" {
            return Err(Refusal::Code(Code::ProtocolError));
        }
        let kv = kv_of(v)?;
        let hdr = wire::mailbox_header(kv, true)?;
        let given = kv.get("UNIQUEID").is_some_and(|u| !u.is_nil());
        let records = match kv.get("RECORD") {
            Some(r) => r
                .as_list()
                .ok_or_else(|| Refusal::BadParameters("RECORD".into()))?
                .iter()
                .map(record_of)
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let plan = plan_restore(&self.read, &hdr, given, &records, &self.ctx())?;
        Self::plan_outcome(plan)
    }

    fn store_completion(&mut self, id: EffectId, c: Option<StoreCompletion>) {
        match c {
            None => {}
            Some(StoreCompletion::Staged { stage, result }) => {
                let Some(f) = self.stage_ends.remove(&stage) else {
                    panic!("staging completion for unknown {stage:?}: driver bug");
                };
                let body = self.unverified_bodies.remove(&stage);
                match result {
                    Ok(()) => {
                        self.staged.insert(f.guid.into(), f.size);
                        if let Some(b) = body {
                            self.bodies.push_back(b);
                        }
                    }
                    Err(e) => {
                        if let Some((_, b)) = body {
                            self.bodies_bytes -= b.len();
                        }
                        // A GUID or size mismatch, or a store limit.
                        self.upload_errors.push(format!("{}: {e}", f.guid));
                    }
                }
                if self.stage_ends.is_empty() {
                    if let Some((tag, line)) = self.held.take() {
                        self.dispatch(tag, line);
                    }
                }
            }
            Some(StoreCompletion::Durable { batch_id, proof }) => {
                let wait = std::mem::replace(&mut self.wait, Wait::Idle);
                let Wait::Write { id: w, batch, then } = wait else {
                    panic!("durable completion without a write in flight: driver bug");
                };
                assert!(
                    w == id && batch == batch_id,
                    "completion for another write: driver bug"
                );
                self.durable(&proof, batch, then);
                self.release_locks();
            }
            Some(StoreCompletion::Failed { batch_id, error }) => {
                let wait = std::mem::replace(&mut self.wait, Wait::Idle);
                let Wait::Write { batch, then, .. } = wait else {
                    panic!("failed completion without a write in flight: driver bug");
                };
                assert_eq!(batch, batch_id, "completion for another write: driver bug");
                let status = match &error {
                    // Staged bytes the store let go of: the client's retry
                    // re-reserves and re-uploads.
                    StoreError::MissingMessage(_)
                    | StoreError::SizeMismatch { .. }
                    | StoreError::GuidMismatch { .. } => Status::no_code(Code::SyncChecksum),
                    StoreError::UnknownMailbox(_) => Status::no_code(Code::MailboxNonexistent),
                    _ => no_unknown(),
                };
                if matches!(error, StoreError::Io(_) | StoreError::Corrupt(_)) {
                    self.event(Event::StoreFailed(error.to_string()));
                }
                self.event(Event::Refused {
                    command: then.command,
                    status: status_line(&status),
                    detail: error.to_string(),
                });
                self.status(status);
                self.release_locks();
            }
        }
    }
}

impl<R: MailRead> Machine for Server<R> {
    type Effect = Effect;
    type Completion = Completion;
    type Event = Event;
    type Command = Command;

    fn handle_input(&mut self, now: Time, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.now = now;
        // Bytes alone are not progress (W4): `on_event` moves the clock
        // when they complete something.
        self.decoder.handle_input(bytes);
        self.pump();
    }

    fn handle_eof(&mut self, now: Time) {
        self.now = now;
        if self.closed {
            return;
        }
        if self.current_file.is_some() {
            // Cyrus crashes here (a half-written staging file); we drop the
            // partial upload and keep the store as it was.
            self.event(Event::MessageRefused(
                "connection closed mid-literal".into(),
            ));
        }
        self.decoder.handle_eof();
        self.close(CloseReason::PeerClosed);
    }

    fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        if self.closed {
            return;
        }
        if let Wait::Pause { until } = self.wait {
            if now >= until {
                self.wait = Wait::Idle;
                self.event(Event::AuthFailed(String::new()));
                self.status(Status::no("authentication failure"));
                self.pump();
            }
            return;
        }
        if let Wait::Fetch { .. } = self.wait {
            self.fetch_step();
            self.pump();
            return;
        }
        if let Wait::Lock { retry_at, .. } = &self.wait {
            if now >= *retry_at {
                let Wait::Lock { command, .. } = std::mem::replace(&mut self.wait, Wait::Idle)
                else {
                    unreachable!("matched above")
                };
                self.on_command(command);
                self.pump();
            }
            return;
        }
        if let Some(idle) = self.opts.idle_timeout {
            if !self.blocked() && now.saturating_since(self.last_input) >= idle {
                self.send(&Response::Fatal(Bytes::from_static(b"Timed out")));
                self.close(CloseReason::Timeout("sync_timeout".into()));
            }
        }
    }

    fn handle_completion(&mut self, now: Time, id: EffectId, completion: Completion) {
        self.now = now;
        match completion {
            Completion::Auth(result) => {
                if self.closed {
                    return;
                }
                let Wait::Auth { id: w } = self.wait else {
                    panic!("auth completion without an auth check in flight: driver bug");
                };
                assert_eq!(w, id, "auth completion for another effect: driver bug");
                self.wait = Wait::Idle;
                match result {
                    Some(ok) => {
                        self.phase = Phase::Auth { admin: ok.admin };
                        self.decoder
                            .set_line_bytes_max(self.opts.frame.line_bytes_max);
                        let ssf = if self.tls_active {
                            "tls protection"
                        } else {
                            "no protection"
                        };
                        if self.opts.flavour == Flavour::Imap {
                            let text = format!(
                                "[CAPABILITY {}] Success ({ssf})",
                                self.imap_capabilities()
                            );
                            self.status(Status::ok(Bytes::from(text)));
                        } else {
                            self.status(Status::auth_success(ssf));
                        }
                        self.event(Event::Authenticated(ok.userid));
                    }
                    None => {
                        self.start_pause();
                        return;
                    }
                }
            }
            Completion::Store(c) => {
                if self.closed {
                    return;
                }
                self.store_completion(id, c);
            }
        }
        self.pump();
    }

    fn handle_command(&mut self, now: Time, command: Command) {
        self.now = now;
        if self.closed {
            return;
        }
        match command {
            Command::Shutdown => {
                self.send(&Response::Bye(Bytes::from_static(
                    proto::csync::texts::SHUTTING_DOWN.as_bytes(),
                )));
                self.close(CloseReason::Local("shutdown".into()));
            }
        }
    }

    fn poll_output(&mut self) -> Option<Output<Effect, Event>> {
        self.flush_out();
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        if self.closed {
            return None;
        }
        if let Wait::Pause { until } = self.wait {
            return Some(until);
        }
        if let Wait::Lock { retry_at, .. } = &self.wait {
            return Some(*retry_at);
        }
        if let Wait::Fetch { .. } = self.wait {
            // "As soon as the driver can take more": the earliest time
            // after now (a harness on virtual time fires only timeouts
            // later than its clock).
            return self.now.checked_add(Duration::from_nanos(1));
        }
        if self.blocked() {
            return None;
        }
        self.opts
            .idle_timeout
            .and_then(|d| self.last_input.checked_add(d))
    }

    fn wants_input(&self) -> bool {
        // While stagings stream, bytes keep coming (the driver bounds the
        // effects in flight); a held or in-flight command stops reading.
        !self.closed && !self.blocked()
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

/// The order Cyrus walks a user's mailboxes in (`mboxlist_usermboxtree`):
/// live names first, then `DELETED.` ones; within each, mailboxes.db order,
/// where the hierarchy separator sorts before every other byte.
fn cyrus_order(name: &MailboxName) -> (bool, Vec<u8>) {
    let b = name.as_bytes();
    let local = match b.iter().position(|&c| c == b'!') {
        Some(i) => &b[i + 1..],
        None => b,
    };
    (
        local.starts_with(b"DELETED."),
        b.iter()
            .map(|&c| if c == b'.' { 0x1f } else { c })
            .collect(),
    )
}

#[allow(dead_code)]
fn _assert_send<R: MailRead + Send>(s: Server<R>) -> impl Send {
    s
}

/// The users a GET/APPLY/RESTORE needs locked (see [`UserLocks`]): the
/// owners of the mailboxes it names and the users it names, sorted and
/// deduplicated; the empty key for shared mailboxes and server
/// annotations. Uploads and lookups by GUID or uniqueid (`RESERVE`,
/// `MESSAGE`, `FETCH`, `UNIQUEIDS`) need none.
fn lock_keys(verb: &str, item: &Item) -> Vec<Bytes> {
    let key = String::from_utf8_lossy(&item.key).to_ascii_uppercase();
    let key = key.strip_prefix("LOCAL_").unwrap_or(&key);
    let owner = |name: &[u8]| -> Bytes {
        match MailboxName::new(name)
            .ok()
            .as_ref()
            .and_then(wire::owner_of)
        {
            Some(u) => Bytes::copy_from_slice(u.as_bytes()),
            None => Bytes::new(),
        }
    };
    let mut keys = Vec::new();
    match (verb, key) {
        ("APPLY", "RESERVE" | "MESSAGE" | "CAPABILITIES" | "FORCE")
        | ("GET", "FETCH" | "UNIQUEIDS" | "QUOTA") => {}
        ("GET", "USER" | "META") | ("APPLY", "UNUSER") => {
            if let Some(u) = item.value.as_bytes().filter(|u| !u.is_empty()) {
                keys.push(Bytes::copy_from_slice(u));
            }
        }
        ("GET", "FULLMAILBOX" | "ANNOTATION") | ("APPLY", "UNMAILBOX" | "UNQUOTA") => {
            if let Some(n) = item.value.as_bytes() {
                keys.push(owner(n));
            }
        }
        ("GET", "MAILBOXES") => {
            for n in item.value.as_list().into_iter().flatten() {
                if let Some(n) = n.as_bytes() {
                    keys.push(owner(n));
                }
            }
        }
        _ => {
            if let Some(kv) = item.value.as_kvlist() {
                for k in ["MBOXNAME", "OLDMBOXNAME", "NEWMBOXNAME", "ROOT"] {
                    if let Some(n) = kv.get(k).and_then(Value::as_bytes) {
                        keys.push(owner(n));
                    }
                }
                if let Some(u) = kv.get("USERID").and_then(Value::as_bytes) {
                    keys.push(Bytes::copy_from_slice(u));
                }
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}
