//! Message GUIDs and file literal references.

use std::fmt;

use bytes::Bytes;

/// A Cyrus message GUID: the SHA-1 of the message file's exact bytes.
///
/// Grammar: `guid = 40HEXDIG` — exactly 40 hex digits; printed in lower
/// case (Cyrus `message_guid_encode`), parsed in either case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 20]);

/// A GUID that is not 40 hex digits. Peer's fault when it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a GUID must be exactly 40 hex digits")]
pub struct GuidError;

impl Guid {
    /// From the raw 20 SHA-1 bytes.
    pub fn from_bytes(b: [u8; 20]) -> Self {
        Guid(b)
    }

    /// Parses 40 hex digits.
    pub fn parse(s: &[u8]) -> Result<Self, GuidError> {
        if s.len() != 40 {
            return Err(GuidError);
        }
        let mut out = [0u8; 20];
        hex::decode_to_slice(s, &mut out).map_err(|_| GuidError)?;
        Ok(Guid(out))
    }

    /// The raw 20 bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// `true` for the all-zero GUID Cyrus uses for "no content" (e.g. the
    /// active sieve script's `.bc` entry).
    pub fn is_null(&self) -> bool {
        self.0 == [0; 20]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl std::str::FromStr for Guid {
    type Err = GuidError;
    fn from_str(s: &str) -> Result<Self, GuidError> {
        Guid::parse(s.as_bytes())
    }
}

/// A file literal `%{partition guid size}`: names a message file whose
/// `size` bytes follow the announcement on the wire (streamed by the
/// framer as literal chunks, never held in a value).
///
/// Grammar: `"%{" astring SP guid SP number "}" CRLF size*OCTET`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileRef {
    /// Partition name (an astring, usually `default`).
    pub partition: Bytes,
    /// The message GUID; the receiver checks it against the bytes.
    pub guid: Guid,
    /// Byte count (Cyrus: unsigned 32-bit; the framer's
    /// `file_literal_bytes_max` bounds it).
    pub size: u64,
}
