//! Target `dlist`: the dlist parser and printer.
//!
//! Two checks on one input:
//! * parse: the input is framed with csync options and every message is
//!   parsed as an item and as a value — no panic, a typed error or a
//!   value; a parsed item printed by [`Encoder`] and parsed again is the
//!   same item (decode→encode→decode);
//! * oracle: the input as [`arbitrary::Unstructured`] builds a valid
//!   [`Item`] (the `arbitrary` impls build only valid ones), which must
//!   encode, frame and parse back to itself in both literal styles.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use proto::dlist::{self, Encoder, FileRef, Item, KvList, LiteralStyle, Value};
use proto::frame::{Event, Framer, Message, Options};

fn file_body(f: &FileRef) -> Bytes {
    // Looks like commands, so a framer that read it as text would fail.
    let pattern = b"EXIT\r\n)%{";
    Bytes::from(
        (0..f.size as usize)
            .map(|i| pattern[i % pattern.len()])
            .collect::<Vec<u8>>(),
    )
}

fn opts() -> Options {
    Options {
        chunk_bytes_max: 7,
        line_bytes_max: 1 << 20,
        ..Options::csync()
    }
}

/// Frames `wire`; returns the messages (streamed literals are dropped).
fn frame_all(wire: &[u8]) -> (Vec<Message>, bool) {
    let mut f = Framer::new(opts());
    f.handle_input(wire);
    let mut msgs = Vec::new();
    loop {
        match f.poll_event() {
            Ok(Some(Event::Message(m))) => msgs.push(m),
            Ok(Some(_)) => {}
            Ok(None) => return (msgs, f.handle_eof().is_ok()),
            Err(_) => return (msgs, false),
        }
    }
}

fn encode(item: &Item, style: LiteralStyle) -> Vec<u8> {
    let mut e = Encoder::new(style);
    e.item(item).crlf();
    e.finish().to_wire(file_body)
}

fn reparse(item: &Item, style: LiteralStyle) -> Item {
    let wire = encode(item, style);
    let (msgs, clean) = frame_all(&wire);
    assert!(clean, "encoded item does not frame cleanly");
    assert_eq!(msgs.len(), 1, "encoded item is not one message");
    dlist::parse_item(&msgs[0], 0).unwrap_or_else(|e| panic!("printed item does not parse: {e:?}"))
}

/// The value with every string form (atom, quoted, literal) made one, so
/// values compare by content.
fn norm(v: &Value) -> Value {
    match v {
        Value::Atom(b) | Value::Quoted(b) | Value::Literal(b) => Value::Literal(b.clone()),
        Value::List(l) => Value::List(l.iter().map(norm).collect()),
        Value::KvList(kv) => Value::KvList(KvList(
            kv.iter().map(|(k, v)| (k.clone(), norm(v))).collect(),
        )),
        other => other.clone(),
    }
}

/// The target body.
pub fn body(data: &[u8]) {
    let (msgs, _) = frame_all(data);
    for m in &msgs {
        if let Ok(item) = dlist::parse_item(m, 0) {
            // A peer's form may not survive (a quoted string holding NUL is
            // printed as a literal, as Cyrus would): the content must, and
            // the printed form must then be a fixed point.
            let again = reparse(&item, LiteralStyle::NonSync);
            assert_eq!(
                norm(&again.value),
                norm(&item.value),
                "decode→encode→decode changed the content"
            );
            assert_eq!(again.key, item.key);
            assert_eq!(
                reparse(&again, LiteralStyle::NonSync),
                again,
                "printed form is not a fixed point"
            );
        }
        let _ = dlist::parse_value(m, 0);
    }
    let mut u = Unstructured::new(data);
    if let Ok(item) = Item::arbitrary(&mut u) {
        for style in [LiteralStyle::NonSync, LiteralStyle::Sync] {
            assert_eq!(
                reparse(&item, style),
                item,
                "valid item does not round-trip ({style:?})"
            );
        }
    }
}
