//! `Arbitrary` for dlist values (feature `arbitrary`): builds only values
//! that encode and decode back to themselves, so encode→decode is an
//! oracle for fuzzing.

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;

use super::{is_cyrus_atom, is_cyrus_quotable, FileRef, Guid, Item, KvList, Value};

const DEPTH: usize = 4;

impl<'a> Arbitrary<'a> for Guid {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Guid::from_bytes(u.arbitrary()?))
    }
}

impl<'a> Arbitrary<'a> for FileRef {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        // The announcement's partition must be an atom or a quoted string.
        let mut partition: Vec<u8> = u.arbitrary()?;
        if !(is_cyrus_atom(&partition) || is_cyrus_quotable(&partition)) {
            partition = b"default".to_vec();
        }
        Ok(FileRef {
            partition: Bytes::from(partition),
            guid: u.arbitrary()?,
            size: u.int_in_range(0..=4096)?,
        })
    }
}

fn flag(u: &mut Unstructured<'_>) -> Result<Value> {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$_-.";
    let n = u.int_in_range(0..=12)?;
    let mut f = vec![b'\\'];
    for _ in 0..n {
        f.push(*u.choose(CHARS)?);
    }
    Ok(Value::Flag(Bytes::from(f)))
}

fn value(u: &mut Unstructured<'_>, depth: usize) -> Result<Value> {
    let pick = if depth >= DEPTH {
        u.int_in_range(0..=4)?
    } else {
        u.int_in_range(0..=6)?
    };
    Ok(match pick {
        0 => Value::Nil,
        1 => Value::string(Bytes::from(u.arbitrary::<Vec<u8>>()?)),
        2 => flag(u)?,
        3 => Value::num(u.arbitrary()?),
        4 => Value::File(u.arbitrary()?),
        5 => {
            let n = u.int_in_range(0..=5)?;
            Value::List((0..n).map(|_| value(u, depth + 1)).collect::<Result<_>>()?)
        }
        _ => {
            let n = u.int_in_range(0..=5)?;
            let mut kv = KvList::new();
            for _ in 0..n {
                let k: Vec<u8> = u.arbitrary()?;
                kv.push(Bytes::from(k), value(u, depth + 1)?);
            }
            Value::KvList(kv)
        }
    })
}

impl<'a> Arbitrary<'a> for Value {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        value(u, 0)
    }
}

impl<'a> Arbitrary<'a> for Item {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let k: Vec<u8> = u.arbitrary()?;
        Ok(Item {
            key: Bytes::from(k),
            value: value(u, 0)?,
        })
    }
}
