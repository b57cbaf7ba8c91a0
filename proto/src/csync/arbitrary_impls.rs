//! `Arbitrary` for csync lines (feature `arbitrary`): only values that
//! encode and decode back to themselves, so encode→decode is an oracle.

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;

use super::imap::{Condition, ImapCommand, ImapCommandBody, ImapResponse};
use super::{
    Capability, ClientLine, Code, Command, Greeting, Response, SaslData, Status, StatusKind,
};
use crate::dlist::Item;

fn word(u: &mut Unstructured<'_>, chars: &[u8], min: usize, max: usize) -> Result<Bytes> {
    let n = u.int_in_range(min..=max)?;
    let mut w = Vec::with_capacity(n);
    for _ in 0..n {
        w.push(*u.choose(chars)?);
    }
    Ok(Bytes::from(w))
}

const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-";
const TEXT: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ().,:-";

/// Text that does not start with a space or an `IMAP_` word.
fn text(u: &mut Unstructured<'_>) -> Result<Bytes> {
    let t = word(u, TEXT, 0, 40)?;
    Ok(if t.first() == Some(&b' ') {
        Bytes::from([&b"x"[..], &t[..]].concat())
    } else {
        t
    })
}

fn sasl(u: &mut Unstructured<'_>, equals: bool) -> Result<SaslData> {
    let raw: Vec<u8> = u.arbitrary()?;
    Ok(SaslData::encode(&raw, equals))
}

impl<'a> Arbitrary<'a> for Code {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(u.choose(&[
            Code::InvalidUser,
            Code::MailboxNonexistent,
            Code::MailboxLocked,
            Code::MailboxMoved,
            Code::MailboxNotSupported,
            Code::SyncChecksum,
            Code::SyncChanged,
            Code::SyncBadSieve,
            Code::ProtocolError,
            Code::ProtocolBadParameters,
            Code::PermissionDenied,
            Code::MailboxCrc,
        ])?
        .clone())
    }
}

impl<'a> Arbitrary<'a> for Status {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let kind = *u.choose(&[StatusKind::Ok, StatusKind::No, StatusKind::Bad])?;
        Ok(if u.arbitrary()? {
            let mut s = Status::no_code(u.arbitrary()?);
            s.kind = kind;
            s
        } else {
            Status::new(kind, text(u)?)
        })
    }
}

impl<'a> Arbitrary<'a> for Command {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=8)? {
            0 => Command::Authenticate {
                mechanism: word(u, UPPER, 1, 12)?,
                initial_response: if u.arbitrary()? {
                    Some(sasl(u, true)?)
                } else {
                    None
                },
            },
            1 => Command::StartTls,
            2 => Command::Compress {
                algorithm: word(u, UPPER, 1, 10)?,
            },
            3 => Command::Noop,
            4 => Command::Exit,
            5 => Command::Restart,
            6 => Command::Apply(u.arbitrary()?),
            7 => Command::Get(u.arbitrary()?),
            _ => Command::Restore(u.arbitrary()?),
        })
    }
}

impl<'a> Arbitrary<'a> for ClientLine {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(ClientLine::Command(u.arbitrary()?))
    }
}

impl<'a> Arbitrary<'a> for Response {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        // Session-phase lines (a decoder past the banner reads them back).
        Ok(match u.int_in_range(0..=4)? {
            0 => Response::Data(u.arbitrary()?),
            1 => Response::Status(u.arbitrary()?),
            2 => Response::Challenge(sasl(u, false)?),
            3 => Response::Bye(text(u)?),
            _ => Response::Fatal(text(u)?),
        })
    }
}

impl<'a> Arbitrary<'a> for Capability {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=4)? {
            0 => Capability::Sasl(
                (0..u.int_in_range(1..=4)?)
                    .map(|_| word(u, UPPER, 1, 10))
                    .collect::<Result<_>>()?,
            ),
            1 => Capability::StartTls,
            2 => Capability::Compress(vec![Bytes::from_static(b"DEFLATE")]),
            3 => Capability::SieveMailbox,
            _ => Capability::ReplicationArchive,
        })
    }
}

impl<'a> Arbitrary<'a> for Greeting {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let host = String::from_utf8(word(u, b"abcdefghijklmnopqrstuvwxyz.", 1, 20)?.to_vec())
            .expect("ascii");
        Ok(Greeting::sync_server(&host, "3.6.1"))
    }
}

impl<'a> Arbitrary<'a> for ImapCommand {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let tag = word(u, UPPER, 1, 6)?;
        let body = match u.int_in_range(0..=7)? {
            0 => ImapCommandBody::SyncApply(u.arbitrary::<Item>()?),
            1 => ImapCommandBody::SyncGet(u.arbitrary()?),
            2 => ImapCommandBody::SyncRestore(u.arbitrary()?),
            3 => ImapCommandBody::SyncRestart,
            4 => ImapCommandBody::Authenticate {
                mechanism: word(u, UPPER, 1, 12)?,
                initial_response: if u.arbitrary()? {
                    Some(sasl(u, true)?)
                } else {
                    None
                },
            },
            5 => ImapCommandBody::Capability,
            6 => ImapCommandBody::Noop,
            _ => ImapCommandBody::Logout,
        };
        Ok(ImapCommand { tag, body })
    }
}

impl<'a> Arbitrary<'a> for ImapResponse {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=3)? {
            0 => {
                // Keys that are IMAP words would read back as those lines.
                let mut item: Item = u.arbitrary()?;
                if [&b"OK"[..], b"NO", b"BAD", b"BYE", b"PREAUTH", b"CAPABILITY"]
                    .contains(&&item.key[..])
                {
                    item.key = Bytes::from_static(b"MAILBOX");
                }
                ImapResponse::Data(item)
            }
            1 => ImapResponse::Tagged {
                tag: word(u, UPPER, 1, 6)?,
                status: u.arbitrary()?,
            },
            2 => ImapResponse::Condition {
                condition: *u.choose(&[
                    Condition::Ok,
                    Condition::No,
                    Condition::Bad,
                    Condition::Bye,
                ])?,
                text: text(u)?,
            },
            _ => ImapResponse::Capability(
                (0..u.int_in_range(1..=6)?)
                    .map(|_| word(u, UPPER, 1, 12))
                    .collect::<Result<_>>()?,
            ),
        })
    }
}
