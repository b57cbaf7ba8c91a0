//! dsync: two-way mailbox synchronisation with Dovecot's own protocol
//! (stream 3.5), so a corvid brain can face a real `doveadm dsync-server`
//! and a real `doveadm sync` can face a corvid `dsync-server`.
//!
//! [`Brain`] is one side of a session (master or slave) as a
//! [`Machine`](crate::machine::Machine): bytes in, bytes and store writes
//! out. [`merge`] holds its two pure decisions (tree merge, message merge)
//! and [`SyncState`] the `-s` state string in Dovecot's format.
//!
//! What this module never does: I/O, clocks (the session's wall-clock time
//! is [`Options::now`]), randomness, or Dovecot's "changed" (fast) sync as
//! its own choice.
//!
//! # corvid's rules
//!
//! Identity is the mailbox GUID for mailboxes and the message GUID for
//! messages (our SHA-1, or the peer's GUID kept in `Record::peer_guid`);
//! names and UIDs are attributes reconciled after identity. Every tie
//! breaks the same way on both brains (timestamp, then GUID, then the
//! master), so two corvid brains compute mirror-image plans.
//!
//! 1. **Tree.** Mailboxes on one side only are created on the other with
//!    the same GUID and UIDVALIDITY. A rename keeps the newer name (tie:
//!    the master's). A name wanted by a mailbox the peer does not know
//!    makes that mailbox step aside to `<name>-<8 hex of its GUID>`.
//!    Subscriptions: newer change wins, a tie subscribes.
//! 2. **Two independently created INBOXes**: Dovecot 2.3 with maildir
//!    swaps the two GUIDs on every run and never merges (`initial-merge`,
//!    exit 2 forever). corvid makes them one mailbox: the side with the
//!    smaller GUID adopts the bigger GUID in place, keeping its messages;
//!    the message merge then runs as for any UIDVALIDITY conflict (the side
//!    with more messages keeps its UIDVALIDITY, tie: the higher; the other
//!    side's messages are all new and get fresh UIDs above both UIDNEXTs).
//!    Converges in two runs. Only INBOX merges: its name is its identity on
//!    every replica (it cannot be renamed or deleted away). Two
//!    independently created mailboxes with any other name are kept apart:
//!    the one with the smaller GUID steps aside to `<name>-<8 hex of its
//!    GUID>` on both sides. Merging them would retire a GUID that a third
//!    replica may hold under another name (a concurrent rename there), and
//!    that GUID would come back as a second identity for the same mail and
//!    never converge (simulator, three replicas: seeds 3758, 4589, 8146,
//!    9777 and 3696). A mailbox created here for a peer's GUID never takes
//!    a uniqueid a local mailbox already holds (an INBOX that adopted a
//!    GUID keeps the uniqueid of its old one).
//! 3. **Mailbox deleted on one side while mail arrives on the other**:
//!    Dovecot applies the GUID tombstone unconditionally and the new mail
//!    is lost (`delete-newmail`). corvid honours the delete but first
//!    rescues every message the deleting side cannot have seen (saved
//!    after the delete's timestamp, or above the saved last common UID)
//!    into a new mailbox of the same name whose GUID is derived from the
//!    deleted one ([`merge::rescue_guid`]), with UIDVALIDITY+1. The peer
//!    learns it as a new mailbox on the next run: nothing is lost.
//! 4. **Fast-sync blind spot**: Dovecot's default "changed" sync skips a
//!    mailbox whose UIDVALIDITY/UIDNEXT/count/HIGHESTMODSEQ are equal on
//!    both sides, and exits 0 with the sides different when both made
//!    equally many changes (`fast-vs-full`). A corvid master never asks
//!    for it: without `-s` it runs a full sync; with `-s` it skips nothing
//!    and exports what changed after the saved modseq, which only ever
//!    grows with changes. A corvid slave under a Dovecot master that asks
//!    for "changed" must follow its skips (the protocol leaves no choice).
//! 5. **Messages.** Same GUID = same message. A UID is kept when it is
//!    free on the other side (≥ its UIDNEXT). A message both sides hold at
//!    different UIDs takes the higher of the two when that one is free on
//!    the side with the lower (so with three or more replicas the UID
//!    only ever settles on the highest any replica gave it; "new UID above
//!    both UIDNEXTs" for every such pair chased the UID round a ring of
//!    replicas for ever: simulator seed 13). Otherwise both sides give the
//!    message a new UID above both UIDNEXTs, in GUID order. An expunge
//!    (sent with Dovecot's 128-bit GUID hash) beats a concurrent flag
//!    change. Flags: with a state, the side that changed since it wins; if
//!    both did, or without a state, the higher modseq wins, tie: master.
//!    Per flag, as Dovecot's importer merges: flags the losing peer
//!    explicitly added or removed since the last sync (its `add_flags`,
//!    `remove_flags`, `+kw`/`-kw` deltas) stay changed
//!    ([`merge::change_deltas`]); corvid keeps no per-flag history, so it
//!    sends final flags, and Dovecot's merge keeps its own deltas the same
//!    way: both sides end equal in one run.
//!    Bodies travel only on request (`R`), in bounded chunks.
//! 6. **Backup** (`-R` reverses direction): the source is never written.
//!    The destination ends identical to the source: mailboxes and messages
//!    the source lacks are deleted, a UID that names a different message is
//!    rewritten in place with the source's message. Dovecot instead deletes
//!    and recreates the mailbox, which for a maildir INBOX fails after
//!    expunging everything and then fails forever (`backup-revert`, exit
//!    75). corvid never deletes a mailbox to fix UIDs, INBOX included.
//!    Destination-only mail is discarded — that is what backup means.
//!    On the wire backup is one-way too, as Dovecot does it: the
//!    destination sends only mail requests, the source reads only those.
//!    The `H` flags `backup_send`/`backup_recv` name the *slave's* role.
//! 7. **Concurrent delivery** (`concurrent-delivery`): an import never
//!    overwrites a message delivered to its UID during the sync; it takes
//!    the next free UID and the run reports changes during sync (exit 2);
//!    the next run converges.
//! 8. **Durability.** Store writes leave as effects; the per-mailbox `S`
//!    and the final `F` (or, for the master, the reported outcome) are
//!    only produced after every batch is durable, and mailbox work starts
//!    only after the tree merge is durable (a store may re-derive
//!    identities from what it stored: a maildir's uniqueid follows its
//!    GUID).
//!
//! 9. **Concurrent writers.** A brain's batches carry absolute mailbox
//!    state (a `PutMailbox` with the LAST_UID and HIGHESTMODSEQ it read
//!    when it built the batch). Another writer of the same user landing
//!    between that read and the batch is overwritten: the simulator's seed
//!    7 without a lock loses an update and later reuses UIDs. Dovecot
//!    serializes one user's dsync runs with an fcntl lock on
//!    `~/.dovecot-sync.lock` (`doveadm sync -l SECS`; the replicator
//!    always locks), and its deliveries apply relative changes in index
//!    transactions. corvid's rule: a dsync session (the tool and
//!    `dsync-server`) holds the user's lock for its whole run, and every
//!    other writer of that user's store either takes the same lock or
//!    raises LAST_UID/HIGHESTMODSEQ as max(current, new) under the store's
//!    own lock (for store::maildir, under the uidlist lock). The
//!    simulator models the lock in every range
//!    (`sim::dsync::Config::user_lock`); seed 7 replays the unlocked case
//!    as an ignored test.
//!
//! Where Dovecot 2.3 fails in the recorded lab scenarios and which rule
//! decides instead (each proven in `engine/tests/dsync_pair.rs`):
//!
//! | lab scenario | Dovecot 2.3 | corvid | test |
//! |---|---|---|---|
//! | `initial-merge`: two independently created INBOXes | swaps GUIDs every run, exit 2 forever | rule 2: one INBOX, the bigger GUID, messages merged, two runs | `independently_created_inboxes_merge_in_two_runs` |
//! | `delete-newmail`: delete on one side, new mail on the other | the new mail is lost | rule 3: the unseen mail is rescued into a derived mailbox of the same name | `delete_on_one_side_new_mail_on_the_other_keeps_the_mail` |
//! | `backup-revert`: backup over a diverged maildir INBOX | empties INBOX, then fails every run (exit 75) | rule 6: UIDs rewritten in place, never delete-and-recreate | `backup_over_a_diverged_destination_makes_it_identical` |
//! | `fast-vs-full`: equally many changes on both sides | "changed" sync skips the mailbox, exit 0, sides differ | rule 4: a corvid master never asks for the fast sync | `equal_numbers_of_changes_on_both_sides_still_converge` |
//!
//! Memory: bodies go out one message at a time as the driver drains
//! output; one incoming body is held up to [`Options::mail_bytes_max`]
//! (then written inline with its record); `C`/`R` lists are bounded by
//! [`Options::changes_max`]; imports are batched by
//! [`Options::batch_bytes_max`]. A mailbox's own records are read into
//! memory while it is synced (bounded by the store, not the peer).
//!
//! Tombstones beyond mailbox deletes: an unsubscribe of a name that has
//! no mailbox on our side travels as Dovecot sends it, a name-hash
//! ([`merge::name_hash`], SHA-1 prefix of the name in the sender's
//! separator) in `D` `unsubscribes`; a peer's such tombstone unsubscribes
//! our name when it is newer than our last subscription change (rule 1's
//! "newer change wins"). Directory deletes (`D` `dirs`) are read and have
//! nothing to act on: corvid's stores hold no directory without a
//! mailbox, and none are sent.
//!
//! Mailbox attributes (METADATA, `A` records): ours are sent from the
//! mailbox annotations, the peer's merged by Dovecot's rules when
//! [`Options::sync_attributes`] is on ([`attrs`], which also says what
//! corvid's stores lack for timestamps and deletes).
//!
//! Known gaps: header-hash matching
//! (`hdr_hash`, for GUID-less backends) is not implemented; the state's
//! `last_common_modseq` is the minimum of both sides' (safe: exports a
//! superset); corvid sends no flag deltas of its own (it keeps no per-flag
//! history), so between two corvid brains concurrent changes of different
//! flags of one message still resolve to the winning side's whole set.

pub mod attrs;
pub mod brain;
pub mod merge;
pub mod state;

pub use brain::Brain;
pub use state::{StateError, SyncState};

use crate::model::{MailboxName, UnixTime, UserId};

/// Master (started the sync, decides order and ties) or slave
/// (`dsync-server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `corvid dsync …`.
    Master,
    /// `corvid dsync-server`.
    Slave,
}

/// Direction of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Both sides exchange changes (`mirror`, `doveadm sync`).
    TwoWay,
    /// This side is a backup source: it is never written.
    BackupSend,
    /// This side is a backup destination: it becomes the source's copy.
    BackupRecv,
}

/// How a brain runs; every limit bounds what a peer can make it hold.
#[derive(Debug, Clone)]
pub struct Options {
    /// Master or slave.
    pub role: Role,
    /// Direction (a slave takes it from the master's handshake).
    pub mode: Mode,
    /// Whose mailboxes.
    pub user: UserId,
    /// Sent in the handshake.
    pub hostname: String,
    /// Only this mailbox (`-m`).
    pub mailbox: Option<MailboxName>,
    /// Full sync even with a state (`-f`); without a state corvid always
    /// syncs fully.
    pub full: bool,
    /// The saved state (`-s`); `Some(empty)` means stateful from scratch.
    pub state: Option<SyncState>,
    /// Our hierarchy separator (dsync names travel as parts).
    pub hierarchy_sep: u8,
    /// Wall-clock time of the session (timestamps of our tree changes).
    pub now: UnixTime,
    /// Largest message body accepted from the peer.
    pub mail_bytes_max: usize,
    /// Most `C`/`R` records accepted for one mailbox.
    pub changes_max: usize,
    /// Imported bytes gathered before a batch is written.
    pub batch_bytes_max: usize,
    /// Batches in flight before we stop reading.
    pub inflight_batches_max: usize,
    /// Size of body chunks we send.
    pub body_chunk_bytes: usize,
    /// Import the peer's mailbox attributes (`A` records) into our
    /// mailboxes' annotations ([`attrs`]). Off for a store that cannot
    /// hold mailbox annotations (`store::maildir` refuses them, and a
    /// refused batch ends the session); ours are sent either way.
    pub sync_attributes: bool,
    /// Wire decoder limits.
    pub decoder: proto::dsync::Options,
}

impl Options {
    /// Defaults for `user` in `role`.
    pub fn new(role: Role, user: UserId) -> Options {
        Options {
            role,
            mode: Mode::TwoWay,
            user,
            hostname: "corvid".into(),
            mailbox: None,
            full: false,
            state: None,
            hierarchy_sep: b'/',
            now: UnixTime(0),
            mail_bytes_max: 64 << 20,
            changes_max: 1 << 20,
            batch_bytes_max: 8 << 20,
            inflight_batches_max: 8,
            body_chunk_bytes: 64 << 10,
            sync_attributes: false,
            decoder: proto::dsync::Options::default(),
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The new state (master; `None` after an error or when the peer
    /// requires a full resync).
    pub state: Option<SyncState>,
    /// Synced, but something changed meanwhile: run again (exit 2).
    pub changes_during_sync: bool,
    /// What failed (exit 1), if anything.
    pub error: Option<String>,
}

/// What a brain tells its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A decision worth printing with `-v`.
    Note(String),
    /// The session is over.
    Finished(Outcome),
}
