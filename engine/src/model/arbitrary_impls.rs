//! `Arbitrary` for the model (feature `arbitrary`): builds only valid
//! values, through the same constructors peers' bytes go through, so a
//! fuzzer exercises stores and machines rather than validation.

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;

use super::*;

macro_rules! arbitrary_name {
    ($($ty:ident),*) => {$(
        impl<'a> Arbitrary<'a> for $ty {
            fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
                let len = u.int_in_range(1..=24usize)?;
                let mut b = Vec::with_capacity(len);
                for _ in 0..len {
                    let c: u8 = u.arbitrary()?;
                    // Every grammar here is per byte plus a length bound.
                    b.push(if $ty::new([c]).is_ok() { c } else { b'x' });
                }
                Ok($ty::new(b).expect("bytes filtered through the grammar"))
            }
        }
    )*};
}

arbitrary_name!(
    MailboxName,
    UserId,
    UniqueId,
    Partition,
    Keyword,
    AnnotationEntry,
    SieveName,
    PeerMailGuid
);

impl<'a> Arbitrary<'a> for Uid {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Uid::new(u.int_in_range(1..=u32::MAX)?).expect("non-zero"))
    }
}

impl<'a> Arbitrary<'a> for UidValidity {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(UidValidity::new(u.int_in_range(1..=u32::MAX)?).expect("non-zero"))
    }
}

impl<'a> Arbitrary<'a> for ModSeq {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(ModSeq(u.arbitrary()?))
    }
}

impl<'a> Arbitrary<'a> for UnixTime {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        // Non-negative: the wire prints times unsigned.
        Ok(UnixTime(u.int_in_range(0..=i64::MAX)?))
    }
}

impl<'a> Arbitrary<'a> for Guid {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Guid::from_bytes(u.arbitrary()?))
    }
}

impl<'a> Arbitrary<'a> for MailboxGuid {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(MailboxGuid::from_bytes(u.arbitrary()?))
    }
}

impl<'a> Arbitrary<'a> for AnnotationOwner {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(if u.arbitrary()? {
            AnnotationOwner::Shared
        } else {
            AnnotationOwner::User(u.arbitrary()?)
        })
    }
}

impl<'a> Arbitrary<'a> for SystemFlags {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(SystemFlags::from_bits_truncate(u.arbitrary()?))
    }
}

impl<'a> Arbitrary<'a> for Flags {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let n = u.int_in_range(0..=4usize)?;
        let mut kws = Vec::with_capacity(n);
        for _ in 0..n {
            kws.push(u.arbitrary()?);
        }
        Ok(Flags::with(u.arbitrary()?, kws))
    }
}

impl<'a> Arbitrary<'a> for AnnotationValue {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let v: Vec<u8> = u.arbitrary()?;
        Ok(AnnotationValue {
            modseq: u.arbitrary()?,
            value: Bytes::from(v),
        })
    }
}

impl<'a> Arbitrary<'a> for Annotations {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut a = Annotations::new();
        for _ in 0..u.int_in_range(0..=3usize)? {
            a.set(u.arbitrary()?, u.arbitrary()?, u.arbitrary()?);
        }
        Ok(a)
    }
}

impl<'a> Arbitrary<'a> for Record {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Record {
            uid: u.arbitrary()?,
            modseq: u.arbitrary()?,
            last_updated: u.arbitrary()?,
            flags: u.arbitrary()?,
            expunged: u.arbitrary()?,
            internaldate: u.arbitrary()?,
            size: u.int_in_range(0..=u32::MAX as u64)?,
            guid: u.arbitrary()?,
            annotations: u.arbitrary()?,
            thrid: u.arbitrary()?,
            savedate: u.arbitrary()?,
            createdmodseq: u.arbitrary()?,
            peer_guid: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for MailboxType {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let kind = *u.choose(b"enbcaspjf")?;
        let flags = [b'd', b'm', b'r', b'z', b'i'];
        let mut s = vec![kind];
        for f in flags {
            if u.ratio(1, 8)? {
                s.push(f);
            }
        }
        Ok(MailboxType::parse(&s).expect("letters from the grammar"))
    }
}

impl<'a> Arbitrary<'a> for Acl {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut entries = Vec::new();
        for _ in 0..u.int_in_range(0..=3usize)? {
            let id: UserId = u.arbitrary()?;
            let rights = (0..u.int_in_range(0..=8usize)?)
                .map(|_| u.choose(b"lrswipkxtecdan").copied())
                .collect::<Result<Vec<u8>>>()?;
            entries.push(AclEntry {
                identifier: id.as_bytes().to_vec(),
                rights,
            });
        }
        Ok(Acl(entries))
    }
}

impl<'a> Arbitrary<'a> for MailboxOptions {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(MailboxOptions {
            pop3_new_uidl: u.arbitrary()?,
            shared_seen: u.arbitrary()?,
            duplicate_deliver: u.arbitrary()?,
            has_alarms: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for Mailbox {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut m = Mailbox::new(
            u.arbitrary()?,
            u.arbitrary()?,
            u.arbitrary()?,
            u.arbitrary()?,
            u.arbitrary()?,
            u.arbitrary()?,
            u.arbitrary()?,
        );
        m.mbtype = u.arbitrary()?;
        m.last_uid = u.arbitrary()?;
        m.highestmodseq = u.arbitrary()?;
        m.recentuid = u.arbitrary()?;
        m.recenttime = u.arbitrary()?;
        m.last_appenddate = u.arbitrary()?;
        m.pop3_last_login = u.arbitrary()?;
        m.pop3_show_after = u.arbitrary()?;
        m.xconvmodseq = u.arbitrary()?;
        m.raclmodseq = u.arbitrary()?;
        m.createdmodseq = u.arbitrary()?;
        m.foldermodseq = u.arbitrary()?;
        m.deletedmodseq = u.arbitrary()?;
        m.acl = u.arbitrary()?;
        m.options = u.arbitrary()?;
        m.quotaroot = u.arbitrary()?;
        m.annotations = u.arbitrary()?;
        Ok(m)
    }
}

impl<'a> Arbitrary<'a> for SeqSet {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut parts = Vec::new();
        for _ in 0..u.int_in_range(0..=4usize)? {
            let a = u.int_in_range(1..=u32::MAX)?;
            parts.push(if u.arbitrary()? {
                a.to_string()
            } else {
                format!("{a}:{}", u.int_in_range(1..=u32::MAX)?)
            });
        }
        Ok(SeqSet::parse(parts.join(",").as_bytes()).expect("built from the grammar"))
    }
}

impl<'a> Arbitrary<'a> for Seen {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Seen {
            lastread: u.arbitrary()?,
            lastuid: u.arbitrary()?,
            lastchange: u.arbitrary()?,
            seenuids: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for Subscription {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Subscription {
            subscribed: u.arbitrary()?,
            changed_at: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for QuotaResource {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(*u.choose(&QuotaResource::ALL)?)
    }
}

impl<'a> Arbitrary<'a> for QuotaRoot {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(QuotaRoot {
            limits: u.arbitrary()?,
            usage: u.arbitrary()?,
            modseq: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for SieveScript {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let content: Vec<u8> = u.arbitrary()?;
        Ok(SieveScript {
            name: u.arbitrary()?,
            last_update: u.arbitrary()?,
            content: Bytes::from(content),
        })
    }
}

impl<'a> Arbitrary<'a> for SyncLogLine {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=11u8)? {
            0 => SyncLogLine::User(u.arbitrary()?),
            1 => SyncLogLine::Unuser(u.arbitrary()?),
            2 => SyncLogLine::Meta(u.arbitrary()?),
            3 => SyncLogLine::Mailbox(u.arbitrary()?),
            4 => SyncLogLine::Append(u.arbitrary()?),
            5 => SyncLogLine::DoubleMailbox(u.arbitrary()?, u.arbitrary()?),
            6 => SyncLogLine::Rename(u.arbitrary()?, u.arbitrary()?),
            7 => SyncLogLine::Unmailbox(u.arbitrary()?),
            8 => SyncLogLine::Quota(u.arbitrary()?),
            9 => SyncLogLine::Annotation(u.arbitrary()?),
            10 => SyncLogLine::Seen(u.arbitrary()?, u.arbitrary()?),
            _ => SyncLogLine::Sub(u.arbitrary()?, u.arbitrary()?),
        })
    }
}
