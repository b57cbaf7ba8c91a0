//! The `-s` state string, in Dovecot 2.3's own format, so a state printed
//! by `doveadm sync -s ''` can be handed to `corvid dsync -s` and back.
//!
//! Layout (`dsync-mailbox-state.c`): base64 (standard alphabet, padded) of
//! a 4-byte version header `01 00 00 00`, then per mailbox 44 bytes, all
//! little-endian (Dovecot writes mailboxes in its hash-table order, corvid
//! in GUID order; readers take any order): mailbox GUID (16), last UIDVALIDITY (u32), last common
//! UID (u32), last common modseq (u64), last common private modseq (u64),
//! last message count (u32); then a CRC-32 (IEEE, as zlib) of every byte
//! before it. An empty string means "no state" (a full sync).
//!
//! This module only converts; what a state means for a sync is in
//! [`super::brain`].

use std::collections::BTreeMap;

use proto::dsync::{Guid128, MailboxState};

/// Why a state string was refused: always our caller's (the user's)
/// input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Caller's input: not base64.
    #[error("state is not base64")]
    Base64,
    /// Caller's input: wrong version header or length.
    #[error("state has an unknown layout")]
    Layout,
    /// Caller's input: the checksum does not match (truncated or edited).
    #[error("state checksum mismatch")]
    Checksum,
}

/// Per-mailbox saved states, by mailbox GUID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The saved state of each mailbox.
    pub mailboxes: BTreeMap<Guid128, MailboxState>,
}

const RECORD_BYTES: usize = 44;

impl SyncState {
    /// Parse a state string (`""` is the empty state).
    pub fn parse(s: &str) -> Result<SyncState, StateError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(SyncState::default());
        }
        let raw = base64_decode(s.as_bytes()).ok_or(StateError::Base64)?;
        if raw.len() < 8 || raw[..4] != [1, 0, 0, 0] || (raw.len() - 8) % RECORD_BYTES != 0 {
            return Err(StateError::Layout);
        }
        let (body, crc) = raw.split_at(raw.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(StateError::Checksum);
        }
        let mut mailboxes = BTreeMap::new();
        for rec in body[4..].chunks_exact(RECORD_BYTES) {
            let u32_at = |i: usize| u32::from_le_bytes(rec[i..i + 4].try_into().expect("4 bytes"));
            let u64_at = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().expect("8 bytes"));
            let guid = Guid128(rec[..16].try_into().expect("16 bytes"));
            mailboxes.insert(
                guid,
                MailboxState {
                    mailbox_guid: guid,
                    last_uidvalidity: u32_at(16),
                    last_common_uid: u32_at(20),
                    last_common_modseq: u64_at(24),
                    last_common_pvt_modseq: u64_at(32),
                    last_messages_count: u32_at(40),
                    changes_during_sync: false,
                    extra: Vec::new(),
                },
            );
        }
        Ok(SyncState { mailboxes })
    }

    /// The state string (mailboxes in GUID order).
    pub fn to_state_string(&self) -> String {
        let mut raw = vec![1u8, 0, 0, 0];
        for st in self.mailboxes.values() {
            raw.extend_from_slice(&st.mailbox_guid.0);
            raw.extend_from_slice(&st.last_uidvalidity.to_le_bytes());
            raw.extend_from_slice(&st.last_common_uid.to_le_bytes());
            raw.extend_from_slice(&st.last_common_modseq.to_le_bytes());
            raw.extend_from_slice(&st.last_common_pvt_modseq.to_le_bytes());
            raw.extend_from_slice(&st.last_messages_count.to_le_bytes());
        }
        let crc = crc32fast::hash(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        base64_encode(&raw)
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() & 3 != 0 {
        return None;
    }
    let val = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (ci, chunk) in s.chunks(4).enumerate() {
        let last = ci == s.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state string printed by real `doveadm sync -s ''` (Dovecot
    /// 2.3.19.1, `incremental-state` run #2 of the lab).
    const DOVECOT: &str = "AQAAAJgJzw4oNgJrS3YAAIPsw3UpNgJrAwAAAAQAAAAAAAAAAAAAAAAAAAADAAAAlwnPDig2AmtLdgAAg+zDdSg2AmsBAAAAAwAAAAAAAAAAAAAAAAAAAAEAAACaCc8OKDYCa0t2AACD7MN1KzYCawIAAAAEAAAAAAAAAAAAAAAAAAAAAQAAAJkJzw4oNgJrS3YAAIPsw3UqNgJrBAAAAAoAAAAAAAAAAAAAAAAAAAAEAAAAcPNC/w==";

    #[test]
    fn dovecot_state_round_trips() {
        let st = SyncState::parse(DOVECOT).unwrap();
        assert_eq!(st.mailboxes.len(), 4);
        let inbox = Guid128::parse(b"9909cf0e2836026b4b76000083ecc375").unwrap();
        let s = &st.mailboxes[&inbox];
        assert_eq!(
            (
                s.last_uidvalidity,
                s.last_common_uid,
                s.last_common_modseq,
                s.last_messages_count
            ),
            (1795307050, 4, 10, 4)
        );
        // Dovecot writes in hash-table order, corvid in GUID order: the
        // same records, and Dovecot's checksum rule.
        let ours = st.to_state_string();
        assert_eq!(ours.len(), DOVECOT.len());
        assert_eq!(SyncState::parse(&ours).unwrap(), st);
    }

    #[test]
    fn refuses_damage() {
        assert_eq!(SyncState::parse("").unwrap(), SyncState::default());
        assert_eq!(SyncState::parse("!!!!"), Err(StateError::Base64));
        assert_eq!(SyncState::parse("AAAAAAAA"), Err(StateError::Layout));
        let mut bad = DOVECOT.to_string();
        bad.replace_range(10..11, "B");
        assert!(SyncState::parse(&bad).is_err());
    }
}
