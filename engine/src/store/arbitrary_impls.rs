//! `Arbitrary` for batches (feature `arbitrary`): every mutation is well
//! formed (valid names, GUIDs), though many are refused by a given store —
//! which is the point: a fuzzer checks refusals change nothing.

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;

use super::{BatchId, Mutation, WriteBatch};
use crate::model::Guid;

impl<'a> Arbitrary<'a> for BatchId {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(BatchId(u.arbitrary()?))
    }
}

impl<'a> Arbitrary<'a> for Mutation {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=21u8)? {
            0 => {
                let b: Vec<u8> = u.arbitrary()?;
                Mutation::LinkMessage {
                    guid: Guid::of(&b),
                    size: b.len() as u64,
                }
            }
            1 => {
                let b: Vec<u8> = u.arbitrary()?;
                // Mostly the right GUID; sometimes a wrong one.
                let guid = if u.ratio(1, 8)? {
                    u.arbitrary()?
                } else {
                    Guid::of(&b)
                };
                Mutation::PutMessage {
                    guid,
                    bytes: Bytes::from(b),
                }
            }
            2 => Mutation::PutMailbox(u.arbitrary()?),
            3 => Mutation::RenameMailbox {
                uniqueid: u.arbitrary()?,
                new_name: u.arbitrary()?,
                at: u.arbitrary()?,
                modseq: u.arbitrary()?,
            },
            4 => Mutation::DeleteMailbox {
                uniqueid: u.arbitrary()?,
                at: u.arbitrary()?,
                modseq: u.arbitrary()?,
            },
            5 => Mutation::PutRecord {
                mailbox: u.arbitrary()?,
                record: u.arbitrary()?,
            },
            6 => Mutation::PurgeRecords {
                mailbox: u.arbitrary()?,
                uids: u.arbitrary()?,
            },
            7 => Mutation::PutSeen {
                user: u.arbitrary()?,
                mailbox: u.arbitrary()?,
                seen: u.arbitrary()?,
            },
            8 => Mutation::DeleteSeen {
                user: u.arbitrary()?,
                mailbox: u.arbitrary()?,
            },
            9 => Mutation::SetSubscription {
                user: u.arbitrary()?,
                name: u.arbitrary()?,
                subscription: u.arbitrary()?,
            },
            10 => Mutation::PutQuota {
                root: u.arbitrary()?,
                quota: u.arbitrary()?,
            },
            11 => Mutation::DeleteQuota {
                root: u.arbitrary()?,
            },
            12 => Mutation::SetAnnotation {
                mailbox: u.arbitrary()?,
                entry: u.arbitrary()?,
                owner: u.arbitrary()?,
                value: u.arbitrary()?,
            },
            13 => Mutation::PutSieve {
                user: u.arbitrary()?,
                script: u.arbitrary()?,
            },
            14 => Mutation::DeleteSieve {
                user: u.arbitrary()?,
                name: u.arbitrary()?,
            },
            15 => Mutation::ActivateSieve {
                user: u.arbitrary()?,
                name: u.arbitrary()?,
            },
            16 => Mutation::DeleteUser {
                user: u.arbitrary()?,
                at: u.arbitrary()?,
                modseq: u.arbitrary()?,
            },
            17 => Mutation::ForgetTombstone {
                uniqueid: u.arbitrary()?,
            },
            18 | 19 => Mutation::AppendSyncLog {
                channel: u.choose(&["", "squatter", "replica"])?.to_string(),
                line: u.arbitrary()?,
            },
            _ => Mutation::TrimSyncLog {
                channel: u.choose(&["", "squatter", "replica"])?.to_string(),
                through: u.int_in_range(0..=64)?,
            },
        })
    }
}

impl<'a> Arbitrary<'a> for WriteBatch {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let n = u.int_in_range(0..=8usize)?;
        let mut mutations = Vec::with_capacity(n);
        for _ in 0..n {
            mutations.push(u.arbitrary()?);
        }
        Ok(WriteBatch {
            id: u.arbitrary()?,
            mutations,
        })
    }
}
