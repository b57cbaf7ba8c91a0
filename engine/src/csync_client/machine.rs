//! The [`Client`] machine: connection phases, the job queue, one command
//! in flight, and the reply handling of every step (see the module docs
//! of [`super`] for the state diagram).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use proto::csync::imap::{
    Condition, ImapClientDecoder, ImapCommand, ImapCommandBody, ImapResponse,
};
use proto::csync::{
    ClientDecoder, ClientLine, Code, Command as Cmd, Event as DecEvent, Response, SaslData, Status,
    StatusKind,
};
use proto::dlist::{Encoded, FileRef, Item, KvList, Value};
use proto::frame;
use proto::sasl::{self, Credentials, Mechanism};

use super::full::{self, Copyback};
use super::plan::{self, Attempt, PlanCtx, Replica, Step, Update};
use crate::csync::wire::MailboxHeader;
use crate::csync::wire::{self, owner_of};
use crate::machine::{CloseReason, EffectId, EffectIds, Layer, Machine, Output, Time};
use crate::model::{Guid, Mailbox, MailboxName, Partition, UniqueId, UnixTime, UserId};
use crate::store::{
    BatchId, Completion as StoreCompletion, MailRead, Mutation, StageId, StoreEffect, StoreError,
    WriteBatch,
};

/// Which wire a session speaks (§1.1 of `research/csync-protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The dedicated csync port (`sync_server`, untagged commands).
    Csync,
    /// An imapd advertising `X-REPLICATION`: tagged `SYNCGET`/`SYNCAPPLY`
    /// (`sync_try_imap`). A csync banner on the same port switches the
    /// session to [`Flavour::Csync`] in place; an imapd without
    /// `X-REPLICATION` ends it with [`Event::NoReplication`] so the caller
    /// can reconnect to the csync port, as Cyrus's `sync_connect` does.
    Imap,
}

/// Configuration and limits of one client session.
#[derive(Debug, Clone)]
pub struct Options {
    /// The wire to speak first.
    pub flavour: Flavour,
    /// Do `STARTTLS` (csync flavour) when the server offers it, verifying
    /// its certificate for this name; then the banner is read again.
    /// `None`: never (plain TCP, or TLS set up by the caller).
    pub starttls: Option<String>,
    /// Refuse to authenticate without TLS (set when the caller wants TLS
    /// and `starttls` could not give it).
    pub tls_required: bool,
    /// `sync_authname` / `sync_password` (PLAIN's authzid stays empty, as
    /// Cyrus's sync_client sends it).
    pub credentials: Credentials,
    /// Mechanisms we may use, in preference order (intersected with the
    /// server's `* SASL` list).
    pub mechanisms: Vec<Mechanism>,
    /// Turn on COMPRESS DEFLATE when the server offers it (Cyrus always
    /// does).
    pub compress: bool,
    /// `-z`: fail if compression cannot be turned on.
    pub require_compress: bool,
    /// `-O`: never modify the local store; `APPLY FORCE` after login.
    pub no_copyback: bool,
    /// `-L`: `LOCAL_*` commands (no MUPDATE push on a Murder replica).
    pub local_only: bool,
    /// `-p`: the replica partition for every mailbox and upload.
    pub partition: Option<String>,
    /// Send `APPLY CAPABILITIES (SIEVE-MAILBOX)` when offered (on by
    /// default, as Cyrus 3.6 does). Then a user's `#sieve` mailbox (kept
    /// by corvid's sync_server from a 3.6 master) travels as a mailbox;
    /// a user whose scripts have no `#sieve` mailbox here gets them as
    /// `APPLY SIEVE`, which a 3.6 replica files into its own `#sieve`
    /// mailbox. Off: scripts always travel as `APPLY SIEVE` and a local
    /// `#sieve` mailbox is not sent.
    pub sieve_mailbox: bool,
    /// On a failed mailbox/META job, queue a USER job for the owner(s)
    /// (rolling mode's error promotion, §4.5).
    pub promote_errors: bool,
    /// `sync_batchsize`: most new messages in one APPLY MAILBOX; a mailbox
    /// with more is sent as partial states (Cyrus 3.6: LAST_UID at the
    /// batch end, HIGHESTMODSEQ below every later record, SYNC_CRC 0), the
    /// replica read again between batches. `None` (the default):
    /// everything at once, as 3.6.1's shipped client does (its BATCH flag
    /// never takes effect, research/csync-protocol.md §4.3). Not wired to
    /// `sync_batchsize`: the real 3.6.1 sync_server answered these partial
    /// states with IMAP_SYNC_CHECKSUM twice (then a full update) in
    /// `bins/tests/sync_client_live.rs`; corvid's server accepts them.
    pub batch_size: Option<usize>,
    /// Most GUIDs per `APPLY RESERVE` (Cyrus: 8192).
    pub reserve_guids_max: usize,
    /// Most files per `APPLY MESSAGE` (Cyrus: 1024).
    pub upload_files_max: usize,
    /// Most message bytes per `APPLY MESSAGE` (one larger message goes
    /// alone): what the driver may hold unsent.
    pub upload_bytes_max: u64,
    /// Size of each read of a message from the store.
    pub chunk_bytes: usize,
    /// Most upload bytes handed to the driver per turn (the driver's
    /// write buffer bounds how many turns wait unsent).
    pub upload_turn_bytes: usize,
    /// Most untagged lines in one reply (a user's mailboxes, quotas, seen).
    pub reply_items_max: usize,
    /// A reply that does not come within this closes the session
    /// (Cyrus `sync_timeout`).
    pub reply_timeout: Option<Duration>,
    /// Framer limits for what the server sends.
    pub frame: frame::Options,
    /// First staging id (copyback fetches).
    pub stage_id_base: u64,
}

impl Options {
    /// Defaults for these credentials.
    pub fn new(credentials: Credentials) -> Options {
        Options {
            flavour: Flavour::Csync,
            starttls: None,
            tls_required: false,
            credentials,
            mechanisms: vec![Mechanism::Plain, Mechanism::Login],
            compress: true,
            require_compress: false,
            no_copyback: false,
            local_only: false,
            partition: None,
            sieve_mailbox: true,
            promote_errors: false,
            batch_size: None,
            reserve_guids_max: 8192,
            upload_files_max: 1024,
            upload_bytes_max: 16 << 20,
            chunk_bytes: 64 * 1024,
            upload_turn_bytes: 256 * 1024,
            reply_items_max: 100_000,
            reply_timeout: Some(Duration::from_secs(30 * 60)),
            frame: frame::Options::csync(),
            stage_id_base: 0,
        }
    }
}

/// What the application asks for. Jobs run one at a time, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `-u`: replicate a whole user (mailboxes, quotas, subs, Sieve, seen).
    User(UserId),
    /// `-m`: replicate these mailboxes.
    Mailboxes(Vec<MailboxName>),
    /// `-s`: seen, subscriptions and Sieve of a user.
    Meta(UserId),
    /// Delete a user on the replica (if it has no INBOX here any more).
    Unuser(UserId),
    /// Delete a mailbox on the replica (if we hold its tombstone).
    Unmailbox(MailboxName),
    /// Mailbox-level annotations of one mailbox, or (`None`) the server's
    /// (sync log `ANNOTATION ""`): `GET ANNOTATION`, then `APPLY
    /// ANNOTATION` / `UNANNOTATION` for the differences (3.6.1
    /// `sync_do_annotation`).
    Annotation(Option<MailboxName>),
    /// `RESTART`: the replica drops its reserve list.
    Restart,
    /// After the queued jobs: `EXIT` and close.
    Exit,
}

impl Command {
    fn describe(&self) -> String {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self {
            Command::User(u) => format!("USER {}", s(u.as_bytes())),
            Command::Mailboxes(n) => format!(
                "MAILBOXES {}",
                n.iter()
                    .map(|n| s(n.as_bytes()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Command::Meta(u) => format!("META {}", s(u.as_bytes())),
            Command::Unuser(u) => format!("UNUSER {}", s(u.as_bytes())),
            Command::Unmailbox(n) => format!("UNMAILBOX {}", s(n.as_bytes())),
            Command::Annotation(n) => format!(
                "ANNOTATION \"{}\"",
                n.as_ref().map_or(String::new(), |n| s(n.as_bytes()))
            ),
            Command::Restart => "RESTART".into(),
            Command::Exit => "EXIT".into(),
        }
    }
}

/// The driver's work for the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Stage a copied-back message, or write the copyback batch.
    Store(StoreEffect),
}

/// An effect's result.
#[derive(Debug)]
pub enum Completion {
    /// For [`Effect::Store`].
    Store(StoreCompletion),
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The replica refused a command (its status line; no payload).
    #[error("{command} refused: {status}")]
    Refused {
        /// The command.
        command: String,
        /// The replica's status line.
        status: String,
    },
    /// The replica's answer made no sense for the command.
    #[error("bad answer to {command}: {detail}")]
    BadAnswer {
        /// The command.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// Our store failed to read or write.
    #[error("local store: {0}")]
    Store(StoreError),
    /// The job cannot go on for a reason of ours (renames that never
    /// settle, a copyback refused by `-O`).
    #[error("{0}")]
    Local(String),
}

/// What the application learns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The banner's greeting (server name and version text).
    Greeting(Bytes),
    /// Logged in with this mechanism.
    Authenticated(&'static str),
    /// TLS is on (STARTTLS answered OK; the handshake is the driver's).
    Tls,
    /// Logged in and set up: jobs run from here, over this flavour.
    Ready(Flavour),
    /// The IMAP server has no `X-REPLICATION`: the session closes; use
    /// the csync port.
    NoReplication,
    /// COMPRESS DEFLATE is on.
    Compressed,
    /// A mailbox was sent (`uploaded` files, `records` in the RECORD list).
    MailboxSynced {
        /// Its name.
        name: MailboxName,
        /// Files uploaded for it.
        uploaded: usize,
        /// Records sent.
        records: usize,
    },
    /// A mailbox equal on both sides: nothing sent.
    MailboxUnchanged(MailboxName),
    /// A full update (copyback) of this mailbox is starting.
    FullUpdate(MailboxName),
    /// A full update wrote locally: `fetched` replica messages copied back,
    /// `renumbered` of ours moved to new UIDs.
    Copyback {
        /// The mailbox.
        name: MailboxName,
        /// Messages fetched from the replica.
        fetched: usize,
        /// Our records moved.
        renumbered: usize,
    },
    /// A job ended.
    JobDone {
        /// What it was (`USER alice`, …).
        job: String,
        /// How.
        result: Result<(), JobError>,
    },
    /// Every queued job is done; the machine waits for commands.
    Idle,
}

#[derive(Debug, Default)]
struct Caps {
    sasl: Vec<Bytes>,
    compress: bool,
    sieve_mailbox: bool,
    starttls: bool,
}

/// What remains of an `APPLY MESSAGE` being streamed.
#[derive(Debug)]
enum UpPiece {
    Bytes(Bytes),
    File { guid: Guid, size: u64, off: u64 },
}

/// A file literal's pieces, from either flavour's decoder.
enum FileEv {
    Start(FileRef),
    Chunk(Bytes),
    End,
}

/// The capabilities a tagged OK lists in a `[CAPABILITY …]` code.
fn status_caps(status: &Status) -> Option<Vec<Bytes>> {
    let r = ImapResponse::Tagged {
        tag: Bytes::from_static(b"A01"),
        status: status.clone(),
    };
    r.capabilities()
        .map(|c| c.into_iter().map(Bytes::copy_from_slice).collect())
}

/// The decoder of the flavour spoken now.
enum Dec {
    Csync(ClientDecoder),
    Imap(ImapClientDecoder),
}

impl Dec {
    fn handle_input(&mut self, b: &[u8]) {
        match self {
            Dec::Csync(d) => d.handle_input(b),
            Dec::Imap(d) => d.handle_input(b),
        }
    }

    fn take_unconsumed(&mut self) -> bytes::BytesMut {
        match self {
            Dec::Csync(d) => d.take_unconsumed(),
            Dec::Imap(d) => d.take_unconsumed(),
        }
    }
}

/// What the command in flight was.
#[derive(Debug)]
enum Inflight {
    Banner,
    /// IMAP `CAPABILITY` (before or after login).
    ImapCapability {
        after_auth: bool,
    },
    StartTls,
    Auth,
    Compress,
    Force,
    Capabilities,
    Step(Step),
    Restart,
    Exit,
}

#[derive(Debug)]
struct Job {
    command: Command,
    user: Option<UserId>,
    replica: Replica,
    tries: u8,
    steps: VecDeque<Step>,
    failed: Option<JobError>,
}

/// A Cyrus 3.6.1 `sync_client` session over a local store `R`.
pub struct Client<R> {
    read: R,
    opts: Options,
    dec: Dec,
    flavour: Flavour,
    /// IMAP flavour: the tag of the command in flight, and the counter
    /// of `S<n>` tags (Cyrus: one counter from `S0`).
    imap_tag: Option<Bytes>,
    imap_next: u32,
    /// IMAP flavour: the capability words seen last.
    imap_caps: Vec<Bytes>,
    tls_on: bool,
    /// The rest of the `APPLY MESSAGE` being sent (empty: none).
    upload: VecDeque<UpPiece>,
    /// The latest time any input brought (for an immediate timeout).
    clock: Time,
    out: VecDeque<Output<Effect, Event>>,
    caps: Caps,
    sasl: Option<sasl::Client>,
    ready: bool,
    sieve_mailbox_enabled: bool,
    inflight: Option<Inflight>,
    data: Vec<Item>,
    jobs: VecDeque<Command>,
    job: Option<Job>,
    /// GUIDs the replica has in its reserve list (found by RESERVE or
    /// uploaded) since the last RESTART.
    available: BTreeSet<Guid>,
    effects: EffectIds,
    /// Store effects in flight: the batch or staging each one is.
    pending: BTreeMap<EffectId, Pending>,
    next_stage: u64,
    /// The staging a GET FETCH body streams into.
    fetching: Option<StageId>,
    deadline: Option<Time>,
    idle_reported: bool,
    /// Files uploaded since the last APPLY MAILBOX (for the event).
    uploaded: usize,
    closed: bool,
}

#[derive(Debug)]
enum Pending {
    Stage,
    Write,
    Other,
}

impl<R: MailRead> Client<R> {
    /// A session over a fresh connection: it waits for the banner.
    pub fn new(now: Time, read: R, opts: Options) -> Self {
        let dec = match opts.flavour {
            Flavour::Csync => Dec::Csync(
                ClientDecoder::with_options(opts.frame.clone())
                    .unwrap_or_else(|_| ClientDecoder::new()),
            ),
            Flavour::Imap => Dec::Imap(
                ImapClientDecoder::with_options(opts.frame.clone())
                    .unwrap_or_else(|_| ImapClientDecoder::new()),
            ),
        };
        let mut c = Client {
            read,
            next_stage: opts.stage_id_base,
            flavour: opts.flavour,
            opts,
            dec,
            imap_tag: None,
            imap_next: 0,
            imap_caps: Vec::new(),
            tls_on: false,
            upload: VecDeque::new(),
            clock: now,
            out: VecDeque::new(),
            caps: Caps::default(),
            sasl: None,
            ready: false,
            sieve_mailbox_enabled: false,
            inflight: Some(Inflight::Banner),
            data: Vec::new(),
            jobs: VecDeque::new(),
            job: None,
            available: BTreeSet::new(),
            effects: EffectIds::default(),
            pending: BTreeMap::new(),
            fetching: None,
            deadline: None,
            idle_reported: true,
            uploaded: 0,
            closed: false,
        };
        c.arm(now);
        c
    }

    /// The local store reader.
    pub fn reader(&self) -> &R {
        &self.read
    }

    fn arm(&mut self, now: Time) {
        self.deadline = self.opts.reply_timeout.and_then(|d| now.checked_add(d));
    }

    fn close(&mut self, reason: CloseReason) {
        if !self.closed {
            self.closed = true;
            self.deadline = None;
            if let Some(job) = self.job.take() {
                self.out.push_back(Output::Event(Event::JobDone {
                    job: job.command.describe(),
                    result: Err(job.failed.unwrap_or_else(|| {
                        JobError::Local(format!("connection closed: {reason}"))
                    })),
                }));
            }
            self.out.push_back(Output::Close(reason));
        }
    }

    fn send(&mut self, now: Time, line: Bytes, what: Inflight) {
        self.out.push_back(Output::Transmit(line));
        self.inflight = Some(what);
        self.arm(now);
    }

    fn send_cmd(&mut self, now: Time, cmd: Cmd, what: Inflight) {
        let line = self.encode_cmd(cmd).into_bytes();
        self.send(now, line, what);
    }

    /// A command as this flavour writes it: csync's untagged line, or the
    /// tagged IMAP command Cyrus's sync_client sends (`A01 AUTHENTICATE`,
    /// `C01 COMPRESS`, `S<n> SYNCAPPLY …`, `Q01 LOGOUT`).
    fn encode_cmd(&mut self, cmd: Cmd) -> Encoded {
        if self.flavour == Flavour::Csync {
            return cmd.encode();
        }
        let mut sync_tag = || {
            let t = Bytes::from(format!("S{}", self.imap_next));
            self.imap_next += 1;
            t
        };
        let (tag, body) = match cmd {
            Cmd::Authenticate {
                mechanism,
                initial_response,
            } => (
                Bytes::from_static(b"A01"),
                ImapCommandBody::Authenticate {
                    mechanism,
                    initial_response,
                },
            ),
            Cmd::Compress { algorithm } => (
                Bytes::from_static(b"C01"),
                ImapCommandBody::Other {
                    name: Bytes::from_static(b"COMPRESS"),
                    args: algorithm,
                },
            ),
            Cmd::StartTls => (
                Bytes::from_static(b"T01"),
                ImapCommandBody::Other {
                    name: Bytes::from_static(b"STARTTLS"),
                    args: Bytes::new(),
                },
            ),
            Cmd::Noop => (Bytes::from_static(b"N01"), ImapCommandBody::Noop),
            Cmd::Exit => (Bytes::from_static(b"Q01"), ImapCommandBody::Logout),
            Cmd::Restart => (sync_tag(), ImapCommandBody::SyncRestart),
            Cmd::Apply(i) => (sync_tag(), ImapCommandBody::SyncApply(i)),
            Cmd::Get(i) => (sync_tag(), ImapCommandBody::SyncGet(i)),
            Cmd::Restore(i) => (sync_tag(), ImapCommandBody::SyncRestore(i)),
        };
        self.imap_tag = Some(tag.clone());
        ImapCommand { tag, body }.encode()
    }

    fn send_imap_capability(&mut self, now: Time, after_auth: bool) {
        self.imap_tag = Some(Bytes::from_static(b"C01"));
        self.send(
            now,
            Bytes::from_static(b"C01 CAPABILITY\r\n"),
            Inflight::ImapCapability { after_auth },
        );
    }

    fn ctx(&self) -> PlanCtx<'_> {
        PlanCtx {
            local_only: self.opts.local_only,
            partition: self.opts.partition.as_deref(),
            sieve_mailbox: self.sieve_mailbox_enabled,
            reserve_guids_max: self.opts.reserve_guids_max,
            copyback: !self.opts.no_copyback,
            batch_size: self.opts.batch_size,
        }
    }

    // ---- connection phases -------------------------------------------

    fn on_banner(&mut self, now: Time, r: Response) {
        match r {
            Response::Capability(c) => match c {
                proto::csync::Capability::Sasl(m) => self.caps.sasl = m,
                proto::csync::Capability::Compress(a) => {
                    self.caps.compress = a.iter().any(|a| a.eq_ignore_ascii_case(b"DEFLATE"))
                }
                proto::csync::Capability::SieveMailbox => self.caps.sieve_mailbox = true,
                proto::csync::Capability::StartTls => self.caps.starttls = true,
                _ => {}
            },
            Response::Greeting(g) => {
                if !self.tls_on {
                    self.out.push_back(Output::Event(Event::Greeting(g.text)));
                }
                if self.caps.starttls && !self.tls_on {
                    if self.opts.starttls.is_some() {
                        self.send_cmd(now, Cmd::StartTls, Inflight::StartTls);
                        return;
                    }
                }
                self.start_auth(now);
            }
            _ => self.close(CloseReason::PeerError("unexpected line in banner".into())),
        }
    }

    /// `AUTHENTICATE` with the first of our mechanisms the server offers.
    fn start_auth(&mut self, now: Time) {
        if self.opts.tls_required && !self.tls_on {
            return self.close(CloseReason::PeerError(
                "TLS required but the server offers no STARTTLS".into(),
            ));
        }
        {
            {
                let mech = self.opts.mechanisms.iter().copied().find(|m| {
                    self.caps
                        .sasl
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(m.name().as_bytes()))
                });
                let Some(mech) = mech else {
                    return self.close(CloseReason::PeerError(
                        "no usable SASL mechanism offered".into(),
                    ));
                };
                let mut client = sasl::Client::new(mech, self.opts.credentials.clone());
                let ir = client
                    .initial_response()
                    .map(|s| SaslData::encode(s.expose(), true));
                self.sasl = Some(client);
                self.send_cmd(
                    now,
                    Cmd::Authenticate {
                        mechanism: Bytes::from_static(mech.name().as_bytes()),
                        initial_response: ir,
                    },
                    Inflight::Auth,
                );
            }
        }
    }

    /// The first lines of an IMAP-flavour session: an imapd greeting
    /// (`* OK [CAPABILITY … AUTH=PLAIN …]`), or a csync banner on the same
    /// port (`* SASL …`, `… Cyrus sync server …`), which switches this
    /// session to csync without a reconnect.
    fn on_imap_banner(&mut self, now: Time, r: ImapResponse) {
        let caps: Option<Vec<Bytes>> = r
            .capabilities()
            .map(|c| c.into_iter().map(Bytes::copy_from_slice).collect());
        match r {
            ImapResponse::Condition {
                condition: Condition::Ok,
                text,
            } => {
                if let Some(caps) = caps {
                    self.out.push_back(Output::Event(Event::Greeting(text)));
                    self.set_imap_caps(caps);
                    self.start_auth(now);
                } else if text.windows(11).any(|w| w == b"sync server") {
                    let line = ImapResponse::Condition {
                        condition: Condition::Ok,
                        text,
                    }
                    .encode()
                    .into_bytes();
                    self.switch_to_csync(line);
                } else {
                    self.out.push_back(Output::Event(Event::Greeting(text)));
                    self.send_imap_capability(now, false);
                }
            }
            r @ ImapResponse::Other(_) => {
                let line = r.encode().into_bytes();
                self.switch_to_csync(line);
            }
            _ => self.close(CloseReason::PeerError("unexpected line in banner".into())),
        }
    }

    fn switch_to_csync(&mut self, first_line: Bytes) {
        let rest = self.dec.take_unconsumed();
        let mut d = ClientDecoder::with_options(self.opts.frame.clone())
            .unwrap_or_else(|_| ClientDecoder::new());
        d.handle_input(&first_line);
        d.handle_input(&rest);
        self.dec = Dec::Csync(d);
        self.flavour = Flavour::Csync;
        self.imap_tag = None;
    }

    fn set_imap_caps(&mut self, caps: Vec<Bytes>) {
        self.caps.sasl = caps
            .iter()
            .filter_map(|w| {
                (w.len() > 5 && w[..5].eq_ignore_ascii_case(b"AUTH=")).then(|| w.slice(5..))
            })
            .collect();
        let has = |n: &str| caps.iter().any(|w| w.eq_ignore_ascii_case(n.as_bytes()));
        self.caps.sieve_mailbox = has("X-SIEVE-MAILBOX");
        self.caps.starttls = has("STARTTLS");
        // Cyrus's sync_client compresses an IMAP session only when the
        // greeting offers it (3.6.1 imapd offers it after login only, so
        // never in practice); -z asks for it after login.
        self.caps.compress = has("COMPRESS=DEFLATE") && self.opts.require_compress;
        self.imap_caps = caps;
    }

    /// After the IMAP login: the session carries replication only if the
    /// imapd says `X-REPLICATION`.
    fn imap_logged_in(&mut self, now: Time) {
        let has = |n: &str| {
            self.imap_caps
                .iter()
                .any(|w| w.eq_ignore_ascii_case(n.as_bytes()))
        };
        if !has("X-REPLICATION") {
            self.out.push_back(Output::Event(Event::NoReplication));
            return self.close(CloseReason::PeerError(
                "IMAP server without X-REPLICATION".into(),
            ));
        }
        let caps = std::mem::take(&mut self.imap_caps);
        let sasl = std::mem::take(&mut self.caps.sasl);
        self.set_imap_caps(caps);
        self.caps.sasl = sasl;
        self.after_auth(now);
    }

    fn after_auth(&mut self, now: Time) {
        if self.caps.compress && self.opts.compress {
            self.send_cmd(
                now,
                Cmd::Compress {
                    algorithm: Bytes::from_static(b"DEFLATE"),
                },
                Inflight::Compress,
            );
            return;
        }
        if self.opts.require_compress {
            return self.close(CloseReason::PeerError(
                "compression required (-z) but not offered".into(),
            ));
        }
        self.after_compress(now);
    }

    fn after_compress(&mut self, now: Time) {
        if self.opts.no_copyback {
            if !self.caps.sieve_mailbox {
                // A pre-3.6 replica answers FORCE with NO; Cyrus exits.
                return self.close(CloseReason::PeerError(
                    "-O needs APPLY FORCE, which this replica predates".into(),
                ));
            }
            let item = Item::new("FORCE", Value::KvList(KvList::new()));
            self.send_cmd(now, Cmd::Apply(item), Inflight::Force);
            return;
        }
        self.after_force(now);
    }

    fn after_force(&mut self, now: Time) {
        if self.opts.sieve_mailbox && self.caps.sieve_mailbox {
            let item = Item::new(
                "CAPABILITIES",
                Value::List(vec![Value::Atom(Bytes::from_static(b"SIEVE-MAILBOX"))]),
            );
            self.send_cmd(now, Cmd::Apply(item), Inflight::Capabilities);
            return;
        }
        self.setup_done(now);
    }

    fn setup_done(&mut self, now: Time) {
        self.ready = true;
        self.out
            .push_back(Output::Event(Event::Ready(self.flavour)));
        self.advance(now);
    }

    // ---- jobs ----------------------------------------------------------

    fn start_job(&mut self, command: Command) -> Job {
        let (user, steps) = match &command {
            Command::User(u) => (Some(u.clone()), vec![Step::GetUser]),
            Command::Meta(u) => (Some(u.clone()), vec![Step::GetMeta]),
            Command::Mailboxes(names) => (
                None,
                vec![Step::GetMailboxes {
                    names: names.clone(),
                    repeat: None,
                }],
            ),
            Command::Unuser(u) => {
                let has_inbox = wire::inbox_of(u)
                    .map(|i| self.read.mailbox(&i).map(|m| m.is_some()))
                    .transpose();
                let steps = match has_inbox {
                    Ok(Some(false)) | Ok(None) => vec![Step::Simple {
                        item: Item::new(self.ctx().verb("UNUSER"), plan::text(u.as_bytes())),
                        nonexistent_ok: true,
                    }],
                    _ => Vec::new(),
                };
                (Some(u.clone()), steps)
            }
            Command::Unmailbox(n) => {
                let live = self.read.mailbox(n).map(|m| m.is_some()).unwrap_or(true);
                let tomb = self
                    .read
                    .tombstones_named(n)
                    .map(|t| !t.is_empty())
                    .unwrap_or(false);
                let steps = if !live && tomb {
                    vec![plan::unmailbox(&self.ctx(), n)]
                } else {
                    Vec::new()
                };
                (None, steps)
            }
            Command::Annotation(n) => (
                None,
                vec![Step::GetAnnotation {
                    name: n
                        .as_ref()
                        .map_or(Bytes::new(), |n| Bytes::copy_from_slice(n.as_bytes())),
                }],
            ),
            Command::Restart | Command::Exit => unreachable!("not jobs"),
        };
        Job {
            command,
            user,
            replica: Replica::default(),
            tries: 0,
            steps: steps.into(),
            failed: None,
        }
    }

    fn fail(&mut self, err: JobError) {
        if let Some(job) = self.job.as_mut() {
            job.steps.clear();
            if job.failed.is_none() {
                job.failed = Some(err);
            }
        }
    }

    fn finish_job(&mut self) {
        let Some(job) = self.job.take() else { return };
        let result = match job.failed {
            None => Ok(()),
            Some(e) => {
                if self.opts.promote_errors {
                    let owners: BTreeSet<UserId> = match &job.command {
                        Command::Mailboxes(n) => n.iter().filter_map(owner_of).collect(),
                        Command::Meta(u) => [u.clone()].into(),
                        _ => BTreeSet::new(),
                    };
                    for u in owners.into_iter().rev() {
                        self.jobs.push_front(Command::User(u));
                    }
                }
                Err(e)
            }
        };
        self.out.push_back(Output::Event(Event::JobDone {
            job: job.command.describe(),
            result,
        }));
    }

    /// Runs local steps and sends the next command while nothing is in
    /// flight.
    fn advance(&mut self, now: Time) {
        while self.ready && !self.closed && self.inflight.is_none() {
            if !self.pending.is_empty() {
                // Staged fetches or a local write are not durable yet: the
                // next step may depend on them.
                return;
            }
            if self.job.is_none() {
                match self.jobs.pop_front() {
                    None => {
                        if !self.idle_reported {
                            self.idle_reported = true;
                            self.out.push_back(Output::Event(Event::Idle));
                        }
                        self.deadline = None;
                        return;
                    }
                    Some(Command::Exit) => {
                        return self.send_cmd(now, Cmd::Exit, Inflight::Exit);
                    }
                    Some(Command::Restart) => {
                        return self.send_cmd(now, Cmd::Restart, Inflight::Restart);
                    }
                    Some(c) => {
                        self.idle_reported = false;
                        let job = self.start_job(c);
                        self.job = Some(job);
                    }
                }
            }
            let job = self.job.as_mut().expect("set above");
            let Some(step) = job.steps.pop_front() else {
                self.finish_job();
                continue;
            };
            if let Err(e) = self.run_step(now, step) {
                self.fail(JobError::Store(e));
            }
        }
    }

    fn job(&mut self) -> &mut Job {
        self.job.as_mut().expect("a job runs")
    }

    fn push_front(&mut self, steps: Vec<Step>) {
        let job = self.job();
        for s in steps.into_iter().rev() {
            job.steps.push_front(s);
        }
    }

    fn run_step(&mut self, now: Time, step: Step) -> Result<(), StoreError> {
        let item = match &step {
            Step::GetUser => {
                let u = self.job().user.clone().expect("user job");
                self.job().replica = Replica::default();
                Cmd::Get(Item::new("USER", plan::text(u.as_bytes())))
            }
            Step::GetMeta => {
                let u = self.job().user.clone().expect("user job");
                Cmd::Get(Item::new("META", plan::text(u.as_bytes())))
            }
            Step::GetMailboxes { names, .. } => Cmd::Get(Item::new(
                "MAILBOXES",
                Value::List(names.iter().map(|n| plan::text(n.as_bytes())).collect()),
            )),
            Step::GetFull { uniqueid, adopt } => {
                let name = match (self.read.mailbox_by_uniqueid(uniqueid)?, adopt) {
                    (Some(mb), _) => mb.name,
                    (None, Some(name)) => name.clone(),
                    (None, None) => return Ok(()),
                };
                Cmd::Get(Item::new("FULLMAILBOX", plan::text(name.as_bytes())))
            }
            Step::Fetch { kv } => Cmd::Get(Item::new("FETCH", Value::KvList(kv.clone()))),
            Step::GetAnnotation { name } => {
                Cmd::Get(Item::new("ANNOTATION", Value::string(name.clone())))
            }
            Step::CheckSieve { kv, .. } => {
                Cmd::Get(Item::new("FETCH_SIEVE", Value::KvList(kv.clone())))
            }
            Step::Reserve {
                partition,
                names,
                guids,
            } => Cmd::Apply(Item::new(
                "RESERVE",
                Value::KvList(
                    KvList::new()
                        .with("PARTITION", Value::string(partition.clone()))
                        .with(
                            "MBOXNAME",
                            Value::List(names.iter().map(|n| plan::text(n.as_bytes())).collect()),
                        )
                        .with(
                            "GUID",
                            Value::List(
                                guids
                                    .iter()
                                    .map(|g| Value::Atom(Bytes::from(g.to_hex())))
                                    .collect(),
                            ),
                        ),
                ),
            )),
            Step::ApplyMailbox { kv, .. } => Cmd::Apply(Item::new(
                self.ctx().verb("MAILBOX"),
                Value::KvList(kv.clone()),
            )),
            Step::Simple { item, .. } => Cmd::Apply(item.clone()),
            Step::Upload { files } => {
                self.send_upload(now, files.clone(), step.clone())?;
                return Ok(());
            }
            Step::PlanUser => {
                let job = self.job.as_ref().expect("job");
                let user = job.user.clone().expect("user job");
                let planned = plan::plan_user(
                    &self.read,
                    &self.ctx(),
                    &user,
                    &job.replica,
                    &self.available,
                    job.tries,
                )?;
                match planned {
                    Ok(steps) => {
                        self.job().tries += 1;
                        self.push_front(steps);
                    }
                    Err(why) => self.fail(JobError::Local(why.into())),
                }
                return Ok(());
            }
            Step::PlanMeta => {
                let job = self.job.as_ref().expect("job");
                let user = job.user.clone().expect("user job");
                let steps = plan::plan_meta(&self.read, &self.ctx(), &user, &job.replica)?;
                self.push_front(steps);
                return Ok(());
            }
            Step::PlanMailboxes { names } => {
                let mut local = Vec::new();
                let mut steps = Vec::new();
                for n in names {
                    match self.read.mailbox(n)? {
                        Some(mb) => local.extend(plan::sendable(&self.ctx(), vec![mb])),
                        None => {
                            // Gone here: delete there only if we hold its
                            // tombstone (3.4+ rule).
                            let there = self
                                .job
                                .as_ref()
                                .expect("job")
                                .replica
                                .mailboxes
                                .values()
                                .any(|m| &m.name == n);
                            if there && !self.read.tombstones_named(n)?.is_empty() {
                                steps.push(plan::unmailbox(&self.ctx(), n));
                            }
                        }
                    }
                }
                let job = self.job.as_ref().expect("job");
                let mut all = plan::reserve_steps(
                    &self.read,
                    &self.ctx(),
                    &local,
                    &job.replica,
                    &self.available,
                )?;
                all.extend(steps);
                for mb in local {
                    all.push(Step::Update {
                        uniqueid: mb.uniqueid,
                        attempt: Attempt::First,
                    });
                }
                self.push_front(all);
                return Ok(());
            }
            Step::Update { uniqueid, attempt } => {
                return self.update(uniqueid.clone(), *attempt);
            }
            Step::LocalWrite {
                uniqueid,
                replica,
                theirs,
                staged,
                adopt,
            } => {
                if self.opts.no_copyback {
                    self.fail(JobError::Local("copyback needed but -O given".into()));
                    return Ok(());
                }
                let (mb, create) = match (self.read.mailbox_by_uniqueid(uniqueid)?, adopt) {
                    (Some(mb), _) => (mb, false),
                    // Still free here (no mailbox, name or tombstone)?
                    (None, Some(new)) if self.adoptee(replica)?.is_some() => {
                        ((**new).clone(), true)
                    }
                    // Deleted here meanwhile: the tombstone decides later.
                    _ => return Ok(()),
                };
                let ours = plan::all_records(&self.read, uniqueid)?;
                let dest = self.ctx().dest_partition(&mb);
                let plan = full::plan(&mb, &ours, replica, theirs, &dest);
                // A local change since the first plan can turn a replica
                // record we meant to keep at its UID into one that moves:
                // still the same file, but fetch whatever is not staged.
                let missing: Vec<&full::Fetch> = plan
                    .fetches
                    .iter()
                    .filter(|f| !staged.contains(&f.record.guid))
                    .collect();
                if !missing.is_empty() {
                    let mut staged = staged.clone();
                    let mut steps: Vec<Step> = Vec::new();
                    for f in missing {
                        if staged.insert(f.record.guid) {
                            steps.push(Step::Fetch { kv: f.kv.clone() });
                        }
                    }
                    steps.push(Step::LocalWrite {
                        uniqueid: uniqueid.clone(),
                        replica: replica.clone(),
                        theirs: theirs.clone(),
                        staged,
                        adopt: adopt.clone(),
                    });
                    self.push_front(steps);
                    return Ok(());
                }
                self.out.push_back(Output::Event(Event::Copyback {
                    name: mb.name.clone(),
                    fetched: plan.fetches.len(),
                    renumbered: plan.renumbered,
                }));
                if !plan.expunge.is_empty() {
                    // After the local write is durable (advance waits).
                    self.push_front(vec![expunge_step(replica, &plan.expunge)]);
                }
                if plan.mutations.is_empty() && plan.fetches.is_empty() && !create {
                    return Ok(());
                }
                let id = self.effects.next_id();
                let mut batch = WriteBatch::new(BatchId(id.0));
                if create {
                    // The records below need their mailbox; the plan's own
                    // PutMailbox (last) sets LAST_UID and HIGHESTMODSEQ.
                    batch.push(Mutation::PutMailbox(mb.clone()));
                }
                for f in &plan.fetches {
                    batch.push(Mutation::LinkMessage {
                        guid: f.record.guid,
                        size: f.record.size,
                    });
                    batch.push(Mutation::PutRecord {
                        mailbox: uniqueid.clone(),
                        record: f.record.clone(),
                    });
                }
                for m in plan.mutations {
                    batch.push(m);
                }
                self.pending.insert(id, Pending::Write);
                self.out.push_back(Output::Effect {
                    id,
                    effect: Effect::Store(StoreEffect::Write(batch)),
                });
                return Ok(());
            }
        };
        self.send_cmd(now, item, Inflight::Step(step));
        Ok(())
    }

    fn update(&mut self, uniqueid: UniqueId, attempt: Attempt) -> Result<(), StoreError> {
        let Some(mb) = self.read.mailbox_by_uniqueid(&uniqueid)? else {
            return Ok(());
        };
        let job = self.job.as_ref().expect("job");
        let rm = job.replica.mailboxes.get(&uniqueid).cloned();
        let upd = plan::plan_update(
            &self.read,
            &self.ctx(),
            &mb,
            rm.as_ref(),
            attempt,
            &self.available,
        )?;
        match upd {
            Update::Unchanged => {
                self.out
                    .push_back(Output::Event(Event::MailboxUnchanged(mb.name.clone())));
            }
            Update::NeedsFull => self.start_full(&mb.name, uniqueid),
            Update::Apply {
                uploads,
                kv,
                partial,
            } => {
                let mut steps = Vec::new();
                let mut batch: Vec<FileRef> = Vec::new();
                let mut bytes = 0u64;
                for f in uploads {
                    if !batch.is_empty()
                        && (batch.len() >= self.opts.upload_files_max
                            || bytes + f.size > self.opts.upload_bytes_max)
                    {
                        steps.push(Step::Upload {
                            files: std::mem::take(&mut batch),
                        });
                        bytes = 0;
                    }
                    bytes += f.size;
                    batch.push(f);
                }
                if !batch.is_empty() {
                    steps.push(Step::Upload { files: batch });
                }
                steps.push(Step::ApplyMailbox {
                    uniqueid,
                    attempt,
                    kv,
                    partial,
                });
                self.push_front(steps);
            }
        }
        Ok(())
    }

    /// The empty local mailbox a replica-only mailbox is copied into (its
    /// ids, name, UIDVALIDITY, type, ACL and options; records come from
    /// the full update), or `None` when its id, name or a tombstone of it
    /// is taken here.
    fn adoptee(&self, rm: &MailboxHeader) -> Result<Option<Mailbox>, StoreError> {
        if self.read.mailbox_by_uniqueid(&rm.uniqueid)?.is_some()
            || self.read.mailbox(&rm.name)?.is_some()
            || !self.read.tombstones_named(&rm.name)?.is_empty()
        {
            return Ok(None);
        }
        let owner = owner_of(&rm.name);
        if let Some(user) = &owner {
            if self
                .read
                .tombstones_of_user(user)?
                .iter()
                .any(|t| t.uniqueid == rm.uniqueid)
            {
                return Ok(None);
            }
        }
        // The partition of the owner's INBOX here, else the replica's.
        let inbox = match owner.as_ref().and_then(wire::inbox_of) {
            Some(n) => self.read.mailbox(&n)?,
            None => None,
        };
        let partition = match (&inbox, &rm.partition) {
            (Some(i), _) => i.partition.clone(),
            (None, Some(p)) => match Partition::new(&p[..]) {
                Ok(p) => p,
                Err(_) => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        let mut mb = Mailbox::new(
            rm.uniqueid.clone(),
            crate::csync::apply::mailbox_guid_of(&rm.uniqueid),
            rm.name.clone(),
            owner,
            wire::uidvalidity(rm.uidvalidity),
            partition,
            UnixTime(0),
        );
        mb.mbtype = rm.mbtype;
        mb.acl = rm.acl.clone();
        mb.options = rm.options;
        mb.annotations = rm.annotations.clone();
        mb.createdmodseq = rm.createdmodseq;
        mb.quotaroot = inbox.and_then(|i| i.quotaroot);
        Ok(Some(mb))
    }

    fn start_full(&mut self, name: &MailboxName, uniqueid: UniqueId) {
        if self.opts.no_copyback {
            return self.fail(JobError::Local(format!(
                "{} needs a full update (copyback), refused by -O",
                String::from_utf8_lossy(name.as_bytes())
            )));
        }
        self.out
            .push_back(Output::Event(Event::FullUpdate(name.clone())));
        self.push_front(vec![Step::GetFull {
            uniqueid,
            adopt: None,
        }]);
    }

    /// `APPLY MESSAGE (%{…} …)` with each body read from the store in
    /// chunks.
    fn send_upload(
        &mut self,
        now: Time,
        files: Vec<FileRef>,
        step: Step,
    ) -> Result<(), StoreError> {
        let item = Item::new(
            "MESSAGE",
            Value::List(files.iter().cloned().map(Value::File).collect()),
        );
        // Every file must be there at its size before the first byte
        // goes out: once streaming, a failure can only cut the session.
        for f in &files {
            let guid: Guid = f.guid.into();
            match self.read.message_size(&guid)? {
                Some(n) if n == f.size => {}
                other => {
                    return Err(StoreError::SizeMismatch {
                        guid,
                        expected: f.size,
                        actual: other.unwrap_or(0),
                    })
                }
            }
        }
        let enc = self.encode_cmd(Cmd::Apply(item));
        let mut pieces = VecDeque::new();
        for piece in enc.pieces() {
            match piece {
                proto::dlist::Piece::Bytes(b) => {
                    pieces.push_back(UpPiece::Bytes(Bytes::copy_from_slice(b)))
                }
                proto::dlist::Piece::File(f) => pieces.push_back(UpPiece::File {
                    guid: f.guid.into(),
                    size: f.size,
                    off: 0,
                }),
            }
        }
        self.upload = pieces;
        self.inflight = Some(Inflight::Step(step));
        self.arm(now);
        self.pump_upload();
        Ok(())
    }

    /// Next part of the `APPLY MESSAGE` being sent: at most
    /// [`Options::upload_turn_bytes`] per turn, read from the store in
    /// [`Options::chunk_bytes`] pieces. The machine then asks for an
    /// immediate timeout; the driver grants it only when its write buffer
    /// has room, so no more than that buffer plus one turn is in memory
    /// however large the batch.
    fn pump_upload(&mut self) {
        let mut budget = self.opts.upload_turn_bytes.max(1);
        while budget > 0 {
            let Some(front) = self.upload.front_mut() else {
                return;
            };
            match front {
                UpPiece::Bytes(b) => {
                    let b = std::mem::take(b);
                    budget = budget.saturating_sub(b.len());
                    self.out.push_back(Output::Transmit(b));
                    self.upload.pop_front();
                }
                UpPiece::File { guid, size, off } => {
                    let want = (*size - *off).min(self.opts.chunk_bytes as u64) as usize;
                    let guid = *guid;
                    let at = *off;
                    match self.read.message_bytes(&guid, at, want) {
                        Ok(b) if !b.is_empty() => {
                            *off += b.len() as u64;
                            let done = *off >= *size;
                            budget = budget.saturating_sub(b.len());
                            self.out.push_back(Output::Transmit(b));
                            if done {
                                self.upload.pop_front();
                            }
                        }
                        // Half a command is on the wire: only closing
                        // keeps the replica from reading garbage.
                        _ => {
                            self.upload.clear();
                            return self.close(CloseReason::Local(
                                "local store failed while uploading a message".into(),
                            ));
                        }
                    }
                }
            }
        }
    }

    // ---- replies --------------------------------------------------------

    fn on_status(&mut self, now: Time, status: Status) {
        let Some(what) = self.inflight.take() else {
            return self.close(CloseReason::PeerError("status line with no command".into()));
        };
        let data = std::mem::take(&mut self.data);
        let ok = status.kind == StatusKind::Ok;
        match what {
            Inflight::Banner => {
                return self.close(CloseReason::PeerError("status line in banner".into()))
            }
            Inflight::ImapCapability { after_auth } => {
                if !ok {
                    return self.close(CloseReason::PeerError("CAPABILITY refused".into()));
                }
                if after_auth {
                    self.imap_logged_in(now);
                } else {
                    let caps = std::mem::take(&mut self.imap_caps);
                    self.set_imap_caps(caps);
                    self.start_auth(now);
                }
            }
            Inflight::StartTls => {
                if !ok {
                    return self.close(CloseReason::PeerError("STARTTLS refused".into()));
                }
                let server_name = self.opts.starttls.clone().unwrap_or_default();
                let rest = self.dec.take_unconsumed().freeze();
                self.out.push_back(Output::StartLayer {
                    layer: Layer::TlsClient { server_name },
                    input_after_switch: rest,
                });
                self.out.push_back(Output::Event(Event::Tls));
                // The server sends its banner again over TLS: a fresh
                // decoder reads it as a banner.
                self.dec = Dec::Csync(
                    ClientDecoder::with_options(self.opts.frame.clone())
                        .unwrap_or_else(|_| ClientDecoder::new()),
                );
                self.tls_on = true;
                self.caps = Caps::default();
                self.inflight = Some(Inflight::Banner);
                self.arm(now);
                return;
            }
            Inflight::Auth => {
                let mech = self.sasl.take().map_or("PLAIN", |c| c.mechanism().name());
                if !ok {
                    return self.close(CloseReason::PeerError("authentication refused".into()));
                }
                self.out
                    .push_back(Output::Event(Event::Authenticated(mech)));
                if self.flavour == Flavour::Imap {
                    // The tagged OK usually lists the capabilities; if
                    // not, ask (Cyrus does the same).
                    match status_caps(&status) {
                        Some(c) => {
                            self.imap_caps = c;
                            self.imap_logged_in(now);
                        }
                        None => self.send_imap_capability(now, true),
                    }
                } else {
                    self.after_auth(now);
                }
            }
            Inflight::Compress => {
                if ok {
                    let rest = self.dec.take_unconsumed().freeze();
                    self.out.push_back(Output::StartLayer {
                        layer: Layer::Deflate,
                        input_after_switch: rest,
                    });
                    self.out.push_back(Output::Event(Event::Compressed));
                } else if self.opts.require_compress {
                    return self.close(CloseReason::PeerError("COMPRESS refused (-z)".into()));
                }
                self.after_compress(now);
            }
            Inflight::Force => {
                if !ok {
                    return self.close(CloseReason::PeerError("APPLY FORCE refused".into()));
                }
                self.after_force(now);
            }
            Inflight::Capabilities => {
                self.sieve_mailbox_enabled = data.iter().any(|i| {
                    i.key_is("ENABLED")
                        && i.value.as_list().is_some_and(|l| {
                            l.iter().any(|v| {
                                v.as_bytes()
                                    .is_some_and(|b| b.eq_ignore_ascii_case(b"SIEVE-MAILBOX"))
                            })
                        })
                });
                self.setup_done(now);
            }
            Inflight::Restart => {
                self.available.clear();
            }
            Inflight::Exit => return self.close(CloseReason::Done),
            Inflight::Step(step) => self.on_step_reply(step, data, status),
        }
        self.advance(now);
    }

    fn refused(step: &Step, status: &Status) -> JobError {
        let mut s = Vec::new();
        let mut b = bytes::BytesMut::new();
        status.write(&mut b);
        s.extend_from_slice(&b);
        JobError::Refused {
            command: step.describe(),
            status: String::from_utf8_lossy(&s).into_owned(),
        }
    }

    fn bad(step: &Step, detail: impl std::fmt::Display) -> JobError {
        JobError::BadAnswer {
            command: step.describe(),
            detail: detail.to_string(),
        }
    }

    fn on_step_reply(&mut self, step: Step, data: Vec<Item>, status: Status) {
        let ok = status.kind == StatusKind::Ok;
        let nonexistent = status.code == Some(Code::MailboxNonexistent);
        match &step {
            Step::GetUser | Step::GetMeta | Step::GetMailboxes { .. } => {
                if !ok && !nonexistent {
                    return self.fail(Self::refused(&step, &status));
                }
                let job = self.job();
                if let Step::GetMailboxes { names, .. } = &step {
                    job.replica
                        .mailboxes
                        .retain(|_, m| !names.contains(&m.name));
                }
                if let Err(e) = plan::absorb(&mut job.replica, &data) {
                    return self.fail(Self::bad(&step, e));
                }
                let next = match step {
                    Step::GetUser => Step::PlanUser,
                    Step::GetMeta => Step::PlanMeta,
                    Step::GetMailboxes {
                        repeat: Some((u, attempt)),
                        ..
                    } => Step::Update {
                        uniqueid: u,
                        attempt,
                    },
                    Step::GetMailboxes { names, .. } => Step::PlanMailboxes { names },
                    _ => unreachable!(),
                };
                self.push_front(vec![next]);
            }
            Step::Reserve { guids, .. } => {
                if !ok {
                    return self.fail(Self::refused(&step, &status));
                }
                let mut missing = BTreeSet::new();
                for i in data.iter().filter(|i| i.key_is("MISSING")) {
                    for v in i.value.as_list().unwrap_or_default() {
                        if let Some(g) = v.as_bytes().and_then(|b| Guid::parse(b).ok()) {
                            missing.insert(g);
                        }
                    }
                }
                for g in guids {
                    if !missing.contains(g) {
                        self.available.insert(*g);
                    }
                }
            }
            Step::Upload { files } => {
                if !ok {
                    return self.fail(Self::refused(&step, &status));
                }
                for f in files {
                    self.available.insert(f.guid.into());
                }
                self.uploaded += files.len();
            }
            Step::ApplyMailbox {
                uniqueid,
                attempt,
                kv,
                partial,
            } => {
                let name = wire::name(kv, "MBOXNAME").ok();
                if ok {
                    let records = kv
                        .get("RECORD")
                        .and_then(|r| r.as_list())
                        .map_or(0, |l| l.len());
                    if let Ok(h) = wire::mailbox_header(kv, false) {
                        self.job().replica.mailboxes.insert(uniqueid.clone(), h);
                    }
                    if let Some(name) = name {
                        if *partial {
                            // The next batch, from the replica's real state
                            // (its CRCs are unknown after a partial one).
                            self.push_front(vec![Step::GetMailboxes {
                                names: vec![name.clone()],
                                repeat: Some((uniqueid.clone(), *attempt)),
                            }]);
                        }
                        // Uploads of this mailbox came right before it.
                        self.out.push_back(Output::Event(Event::MailboxSynced {
                            name,
                            uploaded: std::mem::take(&mut self.uploaded),
                            records,
                        }));
                    }
                    return;
                }
                let checksum = matches!(
                    status.code,
                    Some(Code::SyncChecksum) | Some(Code::MailboxCrc)
                );
                match (checksum, attempt) {
                    (true, Attempt::First) => {
                        let names = name.into_iter().collect();
                        self.push_front(vec![Step::GetMailboxes {
                            names,
                            repeat: Some((uniqueid.clone(), Attempt::Repeat)),
                        }]);
                    }
                    (true, Attempt::Repeat) => {
                        let name = name.unwrap_or_else(|| MailboxName::new("?").expect("valid"));
                        self.start_full(&name, uniqueid.clone());
                    }
                    _ => self.fail(Self::refused(&step, &status)),
                }
            }
            Step::GetFull { uniqueid, adopt } => {
                if !ok {
                    return self.fail(Self::refused(&step, &status));
                }
                let Some(kv) = data
                    .iter()
                    .find(|i| i.key_is("MAILBOX"))
                    .and_then(|i| i.value.as_kvlist())
                else {
                    return self.fail(Self::bad(&step, "no MAILBOX in the answer"));
                };
                let (rm, theirs) = match full::read_full(kv) {
                    Ok(x) => x,
                    Err(e) => return self.fail(Self::bad(&step, e)),
                };
                let res = (|| -> Result<Option<(Copyback, Option<Box<Mailbox>>)>, StoreError> {
                    let (mb, adopting) = match self.read.mailbox_by_uniqueid(uniqueid)? {
                        Some(mb) => (mb, None),
                        None if adopt.is_some() && rm.uniqueid == *uniqueid => {
                            let Some(mb) = self.adoptee(&rm)? else {
                                return Ok(None);
                            };
                            (mb.clone(), Some(Box::new(mb)))
                        }
                        None => return Ok(None),
                    };
                    let ours = plan::all_records(&self.read, uniqueid)?;
                    let dest = self.ctx().dest_partition(&mb);
                    Ok(Some((
                        full::plan(&mb, &ours, &rm, &theirs, &dest),
                        adopting,
                    )))
                })();
                let (cb, adopting) = match res {
                    Ok(Some(x)) => x,
                    Ok(None) => return,
                    Err(e) => return self.fail(JobError::Store(e)),
                };
                self.job()
                    .replica
                    .mailboxes
                    .insert(uniqueid.clone(), rm.clone());
                // Fetch what this plan needs; the write re-plans against
                // the store as it is then (Step::LocalWrite).
                let mut steps: Vec<Step> = cb
                    .fetches
                    .iter()
                    .map(|f| Step::Fetch { kv: f.kv.clone() })
                    .collect();
                if !cb.is_empty() || adopting.is_some() {
                    steps.push(Step::LocalWrite {
                        uniqueid: uniqueid.clone(),
                        replica: Box::new(rm.clone()),
                        theirs,
                        staged: cb.fetches.iter().map(|f| f.record.guid).collect(),
                        adopt: adopting,
                    });
                }
                // The replica changed under EXPUNGE: read it again, then a
                // last normal update.
                steps.push(Step::GetMailboxes {
                    names: vec![rm.name.clone()],
                    repeat: Some((uniqueid.clone(), Attempt::AfterFull)),
                });
                self.push_front(steps);
            }
            Step::Fetch { .. } => {
                if let Some(stage) = self.fetching.take() {
                    self.emit_store(StoreEffect::StageAbort { stage }, false);
                }
                if !ok {
                    self.fail(Self::refused(&step, &status));
                }
            }
            Step::GetAnnotation { name } => {
                if !ok && !nonexistent {
                    return self.fail(Self::refused(&step, &status));
                }
                match plan::plan_annotations(&self.read, name, &data) {
                    Ok(Ok(steps)) => self.push_front(steps),
                    Ok(Err(e)) => self.fail(Self::bad(&step, e)),
                    Err(e) => self.fail(JobError::Store(e)),
                }
            }
            Step::CheckSieve { content, then, .. } => {
                // Any answer but the same bytes (missing, other bytes, a
                // server that does not know FETCH_SIEVE) sends the script.
                let same = ok
                    && data.iter().any(|i| {
                        i.key_is("SIEVE")
                            && i.value
                                .as_kvlist()
                                .and_then(|kv| kv.get("CONTENT"))
                                .and_then(|c| c.as_bytes())
                                .is_some_and(|c| c == &content[..])
                    });
                if !same {
                    self.push_front(then.clone());
                }
            }
            Step::Simple { nonexistent_ok, .. } if !(ok || nonexistent && *nonexistent_ok) => {
                self.fail(Self::refused(&step, &status));
            }
            _ => {}
        }
    }

    fn on_csync_event(&mut self, now: Time, ev: DecEvent<Response, proto::csync::ResponseError>) {
        match ev {
            DecEvent::Decoded(r) => match r {
                Response::Capability(_) | Response::Greeting(_)
                    if matches!(self.inflight, Some(Inflight::Banner)) =>
                {
                    self.on_banner(now, r)
                }
                Response::Challenge(c) => self.on_challenge(c),
                Response::Data(item) => self.on_data(item),
                Response::Status(s) => self.on_status(now, s),
                Response::Bye(_) => return self.close(CloseReason::PeerClosed),
                Response::Fatal(_) => {
                    return self.close(CloseReason::PeerError("server fatal error".into()))
                }
                _ => return self.close(CloseReason::PeerError("unexpected line".into())),
            },
            DecEvent::Refused(e) => {
                return self.close(CloseReason::PeerError(format!("undecodable reply: {e}")))
            }
            DecEvent::FileStart(f) => self.on_file(FileEv::Start(f)),
            DecEvent::FileChunk(b) => self.on_file(FileEv::Chunk(b)),
            DecEvent::FileEnd => self.on_file(FileEv::End),
            DecEvent::ContinuationNeeded { .. } => {
                self.close(CloseReason::PeerError("continuation request".into()))
            }
        }
    }

    fn on_challenge(&mut self, c: SaslData) {
        let Some(client) = self.sasl.as_mut() else {
            return self.close(CloseReason::PeerError("unexpected challenge".into()));
        };
        let resp = c.decode().ok().and_then(|raw| client.step(&raw).ok());
        let line = match resp {
            Some(secret) => ClientLine::SaslResponse(SaslData::encode(secret.expose(), false)),
            None => ClientLine::SaslCancel,
        };
        self.out
            .push_back(Output::Transmit(line.encode().into_bytes()));
    }

    fn on_data(&mut self, item: Item) {
        if self.data.len() >= self.opts.reply_items_max {
            return self.close(CloseReason::LimitExceeded("reply_items_max".into()));
        }
        self.data.push(item);
    }

    fn on_imap_event(
        &mut self,
        now: Time,
        ev: DecEvent<ImapResponse, proto::csync::ResponseError>,
    ) {
        match ev {
            DecEvent::Decoded(r) => self.on_imap_response(now, r),
            DecEvent::Refused(e) => {
                self.close(CloseReason::PeerError(format!("undecodable reply: {e}")))
            }
            DecEvent::FileStart(f) => self.on_file(FileEv::Start(f)),
            DecEvent::FileChunk(b) => self.on_file(FileEv::Chunk(b)),
            DecEvent::FileEnd => self.on_file(FileEv::End),
            DecEvent::ContinuationNeeded { .. } => {
                self.close(CloseReason::PeerError("continuation request".into()))
            }
        }
    }

    fn on_imap_response(&mut self, now: Time, r: ImapResponse) {
        if matches!(self.inflight, Some(Inflight::Banner)) {
            return self.on_imap_banner(now, r);
        }
        match r {
            ImapResponse::Tagged { tag, status } => {
                if self.imap_tag.as_ref() != Some(&tag) {
                    return self.close(CloseReason::PeerError(
                        "tagged reply for no command in flight".into(),
                    ));
                }
                self.imap_tag = None;
                self.on_status(now, status);
            }
            ImapResponse::Data(item) => self.on_data(item),
            ImapResponse::Continuation(text) => self.on_challenge(SaslData::from_wire(text)),
            ImapResponse::Capability(words) => {
                if matches!(self.inflight, Some(Inflight::ImapCapability { .. })) {
                    self.imap_caps = words;
                }
            }
            ImapResponse::Condition {
                condition: Condition::Bye,
                ..
            } if !matches!(self.inflight, Some(Inflight::Exit)) => {
                self.close(CloseReason::PeerClosed)
            }
            // Untagged OK/NO/BYE-on-LOGOUT and other lines carry nothing
            // replication needs.
            _ => {}
        }
    }

    fn emit_store(&mut self, e: StoreEffect, completes: bool) -> EffectId {
        let id = self.effects.next_id();
        if completes {
            let p = match &e {
                StoreEffect::StageEnd { .. } => Pending::Stage,
                StoreEffect::Write(_) => Pending::Write,
                _ => Pending::Other,
            };
            self.pending.insert(id, p);
        }
        self.out.push_back(Output::Effect {
            id,
            effect: Effect::Store(e),
        });
        id
    }

    fn on_file(&mut self, ev: FileEv) {
        let fetching = matches!(self.inflight, Some(Inflight::Step(Step::Fetch { .. })));
        if !fetching {
            return self.close(CloseReason::PeerError(
                "file literal outside GET FETCH".into(),
            ));
        }
        match ev {
            FileEv::Start(f) => {
                let stage = StageId(self.next_stage);
                self.next_stage += 1;
                self.fetching = Some(stage);
                self.emit_store(
                    StoreEffect::StageBegin {
                        stage,
                        guid: f.guid.into(),
                        size: f.size,
                    },
                    false,
                );
            }
            FileEv::Chunk(bytes) => {
                if let Some(stage) = self.fetching {
                    self.emit_store(StoreEffect::StageChunk { stage, bytes }, false);
                }
            }
            FileEv::End => {
                if let Some(stage) = self.fetching.take() {
                    self.emit_store(StoreEffect::StageEnd { stage }, true);
                }
            }
        }
    }
}

impl<R: MailRead> Machine for Client<R> {
    type Effect = Effect;
    type Completion = Completion;
    type Event = Event;
    type Command = Command;

    fn handle_input(&mut self, now: Time, bytes: &[u8]) {
        self.clock = self.clock.max(now);
        if self.closed {
            return;
        }
        self.dec.handle_input(bytes);
        loop {
            if self.closed || matches!(self.out.back(), Some(Output::StartLayer { .. })) {
                return;
            }
            match &mut self.dec {
                Dec::Csync(d) => match d.poll_event() {
                    Ok(Some(ev)) => self.on_csync_event(now, ev),
                    Ok(None) => return,
                    Err(e) => return self.close(CloseReason::PeerError(e.to_string())),
                },
                Dec::Imap(d) => match d.poll_event() {
                    Ok(Some(ev)) => self.on_imap_event(now, ev),
                    Ok(None) => return,
                    Err(e) => return self.close(CloseReason::PeerError(e.to_string())),
                },
            }
        }
    }

    fn handle_eof(&mut self, _now: Time) {
        let reason = if matches!(self.inflight, Some(Inflight::Exit)) {
            CloseReason::Done
        } else {
            CloseReason::PeerClosed
        };
        self.close(reason);
    }

    fn handle_timeout(&mut self, now: Time) {
        self.clock = self.clock.max(now);
        if !self.upload.is_empty() {
            return self.pump_upload();
        }
        if let Some(d) = self.deadline {
            if now >= d && self.inflight.is_some() {
                self.close(CloseReason::Timeout("no reply from the replica".into()));
            }
        }
    }

    fn handle_completion(&mut self, now: Time, id: EffectId, completion: Self::Completion) {
        self.clock = self.clock.max(now);
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let Completion::Store(c) = completion;
        match (p, c) {
            (Pending::Stage, StoreCompletion::Staged { result: Err(e), .. }) => {
                self.fail(JobError::Store(e))
            }
            (Pending::Write, StoreCompletion::Durable { .. }) => {}
            (Pending::Write, StoreCompletion::Failed { error, .. }) => {
                self.fail(JobError::Store(error))
            }
            _ => {}
        }
        if self.pending.is_empty() {
            self.advance(now);
        }
    }

    fn handle_command(&mut self, now: Time, command: Self::Command) {
        self.clock = self.clock.max(now);
        if self.closed {
            return;
        }
        self.jobs.push_back(command);
        if self.pending.is_empty() {
            self.advance(now);
        }
    }

    fn poll_output(&mut self) -> Option<Output<Effect, Event>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        if !self.upload.is_empty() && !self.closed {
            return Some(self.clock);
        }
        if self.inflight.is_some() {
            self.deadline
        } else {
            None
        }
    }

    fn wants_input(&self) -> bool {
        !self.closed
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

/// `APPLY EXPUNGE` of replica UIDs after a full update.
fn expunge_step(rm: &MailboxHeader, uids: &[u32]) -> Step {
    Step::Simple {
        item: Item::new(
            "EXPUNGE",
            Value::KvList(
                KvList::new()
                    .with("MBOXNAME", plan::text(rm.name.as_bytes()))
                    .with("UNIQUEID", plan::text(rm.uniqueid.as_bytes()))
                    .with(
                        "UID",
                        Value::List(uids.iter().map(|u| Value::num((*u).into())).collect()),
                    ),
            ),
        ),
        nonexistent_ok: false,
    }
}
