//! With feature `arbitrary`: every generated csync line encodes and decodes
//! back to itself (the oracle fuzz targets rely on).
#![cfg(feature = "arbitrary")]

use bytes::Bytes;
use proptest::prelude::*;
use proto::csync::imap::{
    ImapClientDecoder, ImapClientLine, ImapCommand, ImapResponse, ImapServerDecoder,
};
use proto::csync::{ClientDecoder, ClientLine, Command, Event, Response, ServerDecoder};
use proto::dlist::FileRef;

fn body(f: &FileRef) -> Bytes {
    Bytes::from(vec![b'\n'; f.size as usize])
}

fn decoded<T, E: std::fmt::Debug>(mut poll: impl FnMut() -> Option<Event<T, E>>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(ev) = poll() {
        match ev {
            Event::Decoded(t) => out.push(t),
            Event::Refused(e) => panic!("refused {e:?}"),
            _ => {}
        }
    }
    out
}

proptest! {
    #[test]
    fn csync_lines_round_trip(seed in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut u = arbitrary::Unstructured::new(&seed);
        let cmd: Command = u.arbitrary().unwrap();
        let resp: Response = u.arbitrary().unwrap();
        let mut d = ServerDecoder::new();
        d.handle_input(&cmd.encode().to_wire(body));
        prop_assert_eq!(decoded(|| d.poll_event().unwrap()), vec![ClientLine::Command(cmd)]);
        let mut d = ClientDecoder::new();
        d.handle_input(b"* OK x\r\n");
        d.handle_input(&resp.encode().to_wire(body));
        let got = decoded(|| d.poll_event().unwrap());
        prop_assert_eq!(&got[1..], &[resp][..]);
    }

    #[test]
    fn imap_lines_round_trip(seed in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut u = arbitrary::Unstructured::new(&seed);
        let cmd: ImapCommand = u.arbitrary().unwrap();
        let resp: ImapResponse = u.arbitrary().unwrap();
        let mut d = ImapServerDecoder::new();
        d.handle_input(&cmd.encode().to_wire(body));
        prop_assert_eq!(decoded(|| d.poll_event().unwrap()), vec![ImapClientLine::Command(cmd)]);
        let mut d = ImapClientDecoder::new();
        d.handle_input(&resp.encode().to_wire(body));
        prop_assert_eq!(decoded(|| d.poll_event().unwrap()), vec![resp]);
    }
}
