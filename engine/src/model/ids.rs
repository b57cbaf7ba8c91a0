//! Validated identifiers and scalars of the mail model.
//!
//! Every type here checks its grammar once, at construction, so code that
//! holds one never re-validates. None of them is ever turned into a file
//! path: names are opaque bytes a peer sent us and are stored as keys only.

use std::fmt;

/// Why a value was refused by one of the model's constructors.
///
/// Whose fault: whoever supplied the bytes (usually a peer); the caller maps
/// it to the protocol's own "bad parameters" answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidValue {
    /// A UID was 0; UIDs start at 1.
    #[error("UID 0 is not a valid UID")]
    ZeroUid,
    /// A UIDVALIDITY was 0 (RFC 3501 requires a non-zero value).
    #[error("UIDVALIDITY 0 is not valid")]
    ZeroUidValidity,
    /// A message GUID was not exactly 40 hex digits.
    #[error("message GUID is not 40 hex digits")]
    BadGuid,
    /// A mailbox GUID was not exactly 32 hex digits.
    #[error("mailbox GUID is not 32 hex digits")]
    BadMailboxGuid,
    /// A name or identifier was empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A name or identifier was longer than the model allows.
    #[error("{what} is {len} bytes, more than {max}")]
    TooLong {
        /// Which kind of value.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name or identifier contained a byte its grammar forbids.
    #[error("{what} contains the forbidden byte 0x{byte:02x}")]
    ForbiddenByte {
        /// Which kind of value.
        what: &'static str,
        /// The first offending byte.
        byte: u8,
    },
    /// A sequence set (SEENUIDS) did not follow its grammar.
    #[error("malformed sequence set")]
    BadSeqSet,
    /// A mailbox type string (MBOXTYPE) had an unknown kind letter.
    #[error("unknown mailbox type {0:?}")]
    BadMailboxType(String),
}

/// A message UID: `nz-number` of RFC 3501, 1 ..= 4294967295.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid(u32);

impl Uid {
    /// The smallest UID.
    pub const MIN: Uid = Uid(1);
    /// The largest UID.
    pub const MAX: Uid = Uid(u32::MAX);

    /// A UID from its number; 0 is refused.
    pub fn new(n: u32) -> Result<Uid, InvalidValue> {
        if n == 0 {
            Err(InvalidValue::ZeroUid)
        } else {
            Ok(Uid(n))
        }
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The next UID, or `None` at the top of the range.
    pub fn next(self) -> Option<Uid> {
        self.0.checked_add(1).map(Uid)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A modification sequence: unsigned 64-bit, 0 meaning "none / unknown"
/// (Cyrus sends 0 for fields it does not track). Grammar: decimal digits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModSeq(pub u64);

impl ModSeq {
    /// The "none" value.
    pub const ZERO: ModSeq = ModSeq(0);

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ModSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// UIDVALIDITY of a mailbox: 1 ..= 4294967295.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UidValidity(u32);

impl UidValidity {
    /// From its number; 0 is refused.
    pub fn new(n: u32) -> Result<UidValidity, InvalidValue> {
        if n == 0 {
            Err(InvalidValue::ZeroUidValidity)
        } else {
            Ok(UidValidity(n))
        }
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for UidValidity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A wall-clock time as Unix seconds, as Cyrus puts it on the wire
/// (INTERNALDATE, LAST_UPDATED, RECENTTIME, LASTREAD, …). 0 means "never".
///
/// It is data that arrives in inputs; nothing in the engine reads a clock.
/// Signed because Cyrus keeps `time_t`; the wire prints it unsigned, so a
/// negative value never comes from a real peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub i64);

impl UnixTime {
    /// "Never".
    pub const ZERO: UnixTime = UnixTime(0);
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn hex_nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_nibble(pair[0])? << 4 | hex_nibble(pair[1])?;
    }
    Some(out)
}

/// A message GUID: the SHA-1 of the message's bytes exactly as stored.
///
/// Grammar: `40HEXDIG` (upper- or lower-case accepted, printed lower-case),
/// as Cyrus's `message_guid_decode` accepts it. The all-zero GUID is
/// representable because Cyrus uses it as "no GUID" in SIEVE lines.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guid([u8; 20]);

impl Guid {
    /// The all-zero GUID Cyrus prints for "unknown".
    pub const NULL: Guid = Guid([0; 20]);

    /// From the 20 raw digest bytes.
    pub fn from_bytes(b: [u8; 20]) -> Guid {
        Guid(b)
    }

    /// The SHA-1 of `bytes`.
    pub fn of(bytes: &[u8]) -> Guid {
        use sha1::Digest;
        Guid(sha1::Sha1::digest(bytes).into())
    }

    /// Parse the 40-hex-digit form.
    pub fn parse(s: &[u8]) -> Result<Guid, InvalidValue> {
        parse_hex::<20>(s).map(Guid).ok_or(InvalidValue::BadGuid)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Whether this is the all-zero "no GUID" value.
    pub fn is_null(&self) -> bool {
        self.0 == [0; 20]
    }

    /// The 40 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({})", self.to_hex())
    }
}

impl std::str::FromStr for Guid {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Guid, InvalidValue> {
        Guid::parse(s.as_bytes())
    }
}

// The wire codec has its own GUID type (`proto::dlist::Guid`, committed
// after this one); both hold the same 20 bytes and convert freely, so a
// machine moves between wire and model without re-parsing.
impl From<proto::dlist::Guid> for Guid {
    fn from(g: proto::dlist::Guid) -> Guid {
        Guid(*g.as_bytes())
    }
}

impl From<Guid> for proto::dlist::Guid {
    fn from(g: Guid) -> proto::dlist::Guid {
        proto::dlist::Guid::from_bytes(g.0)
    }
}

/// A mailbox GUID as dsync uses it: 128 bits, grammar `32HEXDIG`.
///
/// It is the identity of a folder across dsync peers (the name is only an
/// attribute). Cyrus mailboxes have a UNIQUEID instead; a store keeps both.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MailboxGuid([u8; 16]);

impl MailboxGuid {
    /// From the 16 raw bytes.
    pub fn from_bytes(b: [u8; 16]) -> MailboxGuid {
        MailboxGuid(b)
    }

    /// Parse the 32-hex-digit form.
    pub fn parse(s: &[u8]) -> Result<MailboxGuid, InvalidValue> {
        parse_hex::<16>(s)
            .map(MailboxGuid)
            .ok_or(InvalidValue::BadMailboxGuid)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether all bits are zero (dsync: "directory, no mailbox").
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The 32 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The dsync GUID of a mailbox that has only a Cyrus UNIQUEID: the
    /// first 128 bits of SHA-1("corvid-mailbox-guid\0" + uniqueid). Master
    /// and replica share the UNIQUEID, so both derive the same GUID and a
    /// folder keeps one identity across csync and dsync. Never zero.
    pub fn derive_from_uniqueid(id: &UniqueId) -> MailboxGuid {
        use sha1::Digest;
        let mut h = sha1::Sha1::new();
        h.update(b"corvid-mailbox-guid\0");
        h.update(id.as_bytes());
        let d: [u8; 20] = h.finalize().into();
        let mut g = [0u8; 16];
        g.copy_from_slice(&d[..16]);
        if g == [0; 16] {
            g[15] = 1;
        }
        MailboxGuid(g)
    }
}

impl fmt::Display for MailboxGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for MailboxGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MailboxGuid({})", self.to_hex())
    }
}

fn check_bytes(
    what: &'static str,
    b: &[u8],
    max: usize,
    forbidden: impl Fn(u8) -> bool,
) -> Result<(), InvalidValue> {
    if b.is_empty() {
        return Err(InvalidValue::Empty(what));
    }
    if b.len() > max {
        return Err(InvalidValue::TooLong {
            what,
            len: b.len(),
            max,
        });
    }
    if let Some(&byte) = b.iter().find(|&&c| forbidden(c)) {
        return Err(InvalidValue::ForbiddenByte { what, byte });
    }
    Ok(())
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

macro_rules! byte_name {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $forbidden:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Box<[u8]>);

        impl $name {
            /// The longest value accepted, in bytes.
            pub const MAX_BYTES: usize = $max;

            /// Validate and wrap.
            pub fn new(b: impl AsRef<[u8]>) -> Result<$name, InvalidValue> {
                let b = b.as_ref();
                check_bytes($what, b, $max, $forbidden)?;
                Ok($name(b.into()))
            }

            /// The bytes, exactly as received.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// The bytes as text, invalid UTF-8 replaced (for logs and tests).
            pub fn to_lossy(&self) -> String {
                lossy(&self.0).into_owned()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), lossy(&self.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&lossy(&self.0))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidValue;
            fn try_from(s: &str) -> Result<$name, InvalidValue> {
                $name::new(s)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
    };
}

byte_name!(
    /// A mailbox name in the server's internal form, e.g.
    /// `example.com!user.jane^doe.Sent` or `shared.lists`.
    ///
    /// Grammar: 1 ..= 1024 bytes, any byte except NUL, CR and LF. The bytes
    /// are opaque (Cyrus internal names are modified UTF-7 with `.`
    /// separators; dsync names are sent as hierarchy parts): the model never
    /// interprets them beyond [`MailboxName::parent`]-style helpers offered by
    /// protocol code, and never makes a file path of one.
    MailboxName,
    "mailbox name",
    1024,
    |c| c == 0 || c == b'\r' || c == b'\n'
);

byte_name!(
    /// A user identifier as the master names it (`alice`,
    /// `alice@example.com`).
    ///
    /// Grammar: 1 ..= 255 bytes, no NUL, CR, LF, SP or TAB.
    UserId,
    "user id",
    255,
    |c| c == 0 || c == b'\r' || c == b'\n' || c == b' ' || c == b'\t'
);

byte_name!(
    /// A Cyrus mailbox UNIQUEID: the permanent identity of a mailbox across
    /// master and replica (16 hex digits in old mailboxes, a UUID or a
    /// 24-character base32 id in 3.6).
    ///
    /// Grammar: 1 ..= 255 bytes of printable ASCII (0x21 ..= 0x7E) except
    /// `( ) { } " % * \`, i.e. anything Cyrus would print as a bare atom.
    UniqueId,
    "uniqueid",
    255,
    |c| !(0x21..=0x7e).contains(&c) || b"(){}\"%*\\".contains(&c)
);

byte_name!(
    /// A Cyrus partition name (`default`).
    ///
    /// Grammar: 1 ..= 255 bytes of printable ASCII except SP and
    /// `( ) { } " % * \`.
    Partition,
    "partition",
    255,
    |c| !(0x21..=0x7e).contains(&c) || b"(){}\"%*\\".contains(&c)
);

byte_name!(
    /// A user-defined flag (IMAP keyword) such as `$Forwarded`, case kept as
    /// first seen. IMAP compares keywords case-insensitively; so does the
    /// sync CRC (it lower-cases them), so [`Flags`](super::Flags) folds
    /// case when it stores one.
    ///
    /// Grammar: 1 ..= 255 bytes, no NUL, CR, LF, SP, TAB, `(`, `)` or `\`
    /// (a word starting with `\` is a system flag, never a keyword).
    Keyword,
    "keyword",
    255,
    |c| c == 0 || c == b'\r' || c == b'\n' || c == b' ' || c == b'\t' || b"()\\".contains(&c)
);

byte_name!(
    /// An annotation entry name such as `/comment` or
    /// `/vendor/cmu/cyrus-imapd/savedate`.
    ///
    /// Grammar: 1 ..= 1024 bytes, no NUL, CR or LF.
    AnnotationEntry,
    "annotation entry",
    1024,
    |c| c == 0 || c == b'\r' || c == b'\n'
);

byte_name!(
    /// A Sieve script name without the `.script` suffix (`vacation`).
    ///
    /// Grammar: 1 ..= 255 bytes, no NUL, CR, LF or `/` (Cyrus keeps scripts
    /// as files named after this; we never do, but a peer relies on it).
    SieveName,
    "sieve script name",
    255,
    |c| c == 0 || c == b'\r' || c == b'\n' || c == b'/'
);

byte_name!(
    /// The message GUID a dsync peer knows a message by, when it is not our
    /// SHA-1 hex: Dovecot's GUIDs are strings (a maildir file's base name,
    /// a dbox 128-bit id). Kept so a later `C e` expunge or `R` request for
    /// that string finds the message.
    ///
    /// Grammar: 1 ..= 255 bytes, no NUL, CR, LF or TAB.
    PeerMailGuid,
    "peer mail GUID",
    255,
    |c| c == 0 || c == b'\r' || c == b'\n' || c == b'\t'
);

impl UniqueId {
    /// The UNIQUEID of a mailbox that has only a dsync GUID: its 32 hex
    /// digits (a valid Cyrus uniqueid atom).
    pub fn from_mailbox_guid(g: &MailboxGuid) -> UniqueId {
        UniqueId::new(g.to_hex()).expect("hex digits are atom characters")
    }
}

impl Keyword {
    /// The ASCII-lower-cased form (what IMAP comparison and the sync CRC use).
    pub fn folded(&self) -> Vec<u8> {
        self.0.to_ascii_lowercase()
    }
}

/// Cyrus 3.6's `mboxname_policycheck` printable set: every other byte
/// (`! " % & / ; < > \\ ` { | }`, controls, 8-bit) is refused, `&` only
/// opening a modified UTF-7 sequence.
const CYRUS_NAME_CHARS: &[u8] =
    b" #$'()*+,-.0123456789:=?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_abcdefghijklmnopqrstuvwxyz~";

/// Cyrus's longest mailbox name (`MAX_MAILBOX_NAME`).
const CYRUS_NAME_BYTES_MAX: usize = 490;

impl MailboxName {
    /// Whether Cyrus 3.6 would accept this internal name for a new or
    /// renamed mailbox (`mboxname_policycheck`, `imap/mboxname.c`): at
    /// most 490 bytes; not starting with `$`, `.` or `~`; no empty
    /// hierarchy level (`..`, a leading or trailing `.`); not `user`,
    /// `user.anyone`, `user.anonymous` or `user.%…`; only the printable
    /// characters of Cyrus's list, and `&` only as well-formed modified
    /// UTF-7 (`&-`, or base64 of non-ASCII UTF-16, zero padding bits,
    /// never two sequences back to back). A `domain!` prefix is allowed
    /// when `virtdomains` is on. Names under `DELETED.` (Cyrus's delayed
    /// delete namespace) skip the check, as in Cyrus.
    ///
    /// The model itself keeps names opaque; protocol code asks this where
    /// Cyrus would (creating and renaming), so a corvid replica never holds
    /// a name a real Cyrus could not take over.
    pub fn cyrus_policy_ok(&self, virtdomains: bool) -> bool {
        let full = self.as_bytes();
        if full.first() == Some(&b'$') {
            return false;
        }
        let (domain, local) = match full.iter().position(|&c| c == b'!') {
            Some(i) if virtdomains => (true, &full[i + 1..]),
            Some(_) => return false,
            None => (false, full),
        };
        if local.starts_with(b"DELETED.") {
            return true;
        }
        if full.len() > CYRUS_NAME_BYTES_MAX {
            return false;
        }
        let name = local;
        if name.is_empty()
            || name[0] == b'.'
            || name[0] == b'~'
            || name[name.len() - 1] == b'.'
            || name.windows(2).any(|w| w == b"..")
            || name == b"user"
            || name == b"user.anyone"
            || name == b"user.anonymous"
            || name.starts_with(b"user.%")
        {
            return false;
        }
        let mut i = 0;
        let mut saw_utf7 = false;
        while i < name.len() {
            if name[i] != b'&' {
                if !(CYRUS_NAME_CHARS.contains(&name[i]) || (domain && name[i] == b'!')) {
                    return false;
                }
                i += 1;
                saw_utf7 = false;
                continue;
            }
            // Modified UTF-7: `&` base64 `-`, or `&-` for a literal `&`.
            let end = match name[i + 1..].iter().position(|&c| c == b'-') {
                Some(n) => i + 1 + n,
                None => return false,
            };
            let b64 = &name[i + 1..end];
            if !b64.is_empty() {
                if saw_utf7 || !utf7_run_ok(b64) {
                    return false;
                }
                saw_utf7 = true;
            } else {
                saw_utf7 = false;
            }
            i = end + 1;
        }
        true
    }

    /// Whether `self` is `other` or below it in a hierarchy that uses `sep`.
    pub fn is_at_or_below(&self, other: &MailboxName, sep: u8) -> bool {
        let (a, b) = (self.as_bytes(), other.as_bytes());
        a == b || (a.len() > b.len() && a.starts_with(b) && a[b.len()] == sep)
    }
}

/// Who an annotation value belongs to: shared (Cyrus `USERID ""`,
/// `value.shared`) or one user's private value (`value.priv`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnnotationOwner {
    /// The shared value.
    Shared,
    /// A user's private value.
    User(UserId),
}

impl AnnotationOwner {
    /// The form Cyrus writes in USERID and in the CRC text (`""` = shared).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            AnnotationOwner::Shared => b"",
            AnnotationOwner::User(u) => u.as_bytes(),
        }
    }

    /// From the USERID field: empty means shared.
    pub fn from_bytes(b: &[u8]) -> Result<AnnotationOwner, InvalidValue> {
        if b.is_empty() {
            Ok(AnnotationOwner::Shared)
        } else {
            UserId::new(b).map(AnnotationOwner::User)
        }
    }
}

/// One modified-UTF-7 base64 run (between `&` and `-`): whole UTF-16 units
/// of 16 bits in groups as Cyrus decodes them, none of them ASCII, and
/// the bits after the last unit zero.
fn utf7_run_ok(b64: &[u8]) -> bool {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a') as u32 + 26),
            b'0'..=b'9' => Some((c - b'0') as u32 + 52),
            b'+' => Some(62),
            b',' => Some(63),
            _ => None,
        }
    }
    // Cyrus reads 3, 3 and 2 sextets per 16-bit unit in a cycle of three
    // units (8 sextets = 48 bits); a run may end after any unit.
    let mut bits: u32 = 0;
    let mut nbits = 0u32;
    let mut units = 0usize;
    let mut it = b64.iter();
    loop {
        let need = match units % 3 {
            0 | 1 => 3,
            _ => 2,
        };
        // Sextets needed to complete the next unit, given leftover bits.
        let take = (16u32.saturating_sub(nbits)).div_ceil(6).min(need);
        let mut got = 0;
        for _ in 0..take {
            match it.next() {
                Some(&c) => match val(c) {
                    Some(v) => {
                        bits = (bits << 6) | v;
                        nbits += 6;
                        got += 1;
                    }
                    None => return false,
                },
                None => break,
            }
        }
        if got == 0 {
            // The run ended on a unit boundary: leftover bits must be zero.
            return units > 0 && nbits < 6 && bits & ((1 << nbits) - 1) == 0;
        }
        if nbits < 16 {
            return false;
        }
        let unit = (bits >> (nbits - 16)) & 0xffff;
        nbits -= 16;
        bits &= (1 << nbits) - 1;
        units += 1;
        if unit & 0xff80 == 0 {
            return false;
        }
    }
}

#[cfg(test)]
mod policy_tests {
    use super::MailboxName;

    fn ok(n: &[u8]) -> bool {
        MailboxName::new(n).unwrap().cyrus_policy_ok(false)
    }

    /// Each case as Cyrus 3.6.1's `mboxname_policycheck` answers it.
    #[test]
    fn cyrus_mailbox_name_policy() {
        for good in [
            &b"user.alice"[..],
            b"user.alice.Sent Items",
            b"shared.lists",
            b"user.alice.a&AOk-t&AOk-", // été, two sequences apart
            b"user.alice.&-amp",        // a literal &
            b"user.alice.&ZeVnLIqe-",   // 日本語
            b"user.jane^doe.x",
            b"DELETED.user.alice.x..y", // delayed-delete namespace: not checked
        ] {
            assert!(ok(good), "{:?} refused", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"user/../../etc"[..],
            b"user.carol..",
            b"user.carol..x",
            b".user",
            b"user.carol.",
            b"~user",
            b"$RACL",
            b"user",
            b"user.anyone",
            b"user.anonymous",
            b"user.%shared",
            b"user.\xff\xfe",
            b"user.a\tb",
            b"user.a\"b",
            b"user.a;b",
            b"user.a&AOk-&AOk-", // adjacent sequences
            b"user.a&AGE-",      // ASCII 'a' in UTF-7
            b"user.a&AOk",       // unterminated
            b"user.a&AOl-",      // non-zero padding bits
            b"dom.com!user.a",   // a domain without virtdomains
        ] {
            assert!(!ok(bad), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        let long = format!("user.a.{}", "x".repeat(490));
        assert!(!ok(long.as_bytes()));
        assert!(MailboxName::new("dom.com!user.a")
            .unwrap()
            .cyrus_policy_ok(true));
    }
}
