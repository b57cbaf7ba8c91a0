//! Properties of the dsync codec: any chunking of a real stream decodes to
//! the same events, strict prefixes only ever say "need more", and
//! encode → decode is the identity for arbitrary valid items and bodies
//! (values full of TAB, LF, CR, `\x01`, `\x02`, NUL; bodies full of dot
//! lines, lone `.` lines and CRLF terminators).

mod dsync_common;

use bytes::{Bytes, BytesMut};
use dsync_common::*;
use proptest::prelude::*;
use proto::dsync::*;

/// Real streams used for the chunking properties (one scenario each).
fn sample_streams() -> Vec<Vec<u8>> {
    [
        "initial/cap1",
        "flag-conflict/cap1",
        "incremental-state/cap1",
        "live-sync/cap1",
    ]
    .iter()
    .flat_map(|c| {
        ["m2s.raw", "s2m.raw"].map(|f| std::fs::read(corpus_dir().join(c).join(f)).unwrap())
    })
    .collect()
}

fn nasty_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(b'\t'),
        Just(b'\n'),
        Just(b'\r'),
        Just(1u8),
        Just(2u8),
        Just(0u8),
        Just(b'.'),
        Just(b' '),
        any::<u8>(),
        b'a'..=b'z',
    ]
}

fn bytes_any(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(nasty_byte(), 0..max).prop_map(Bytes::from)
}

fn bytes_nonempty(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(nasty_byte(), 1..max).prop_map(Bytes::from)
}

/// A tab-list; a list of exactly one empty part is not representable
/// (it encodes like the empty list, in Dovecot too).
fn list(max: usize) -> impl Strategy<Value = Vec<Bytes>> {
    proptest::collection::vec(bytes_any(8), 0..max)
        .prop_filter("single empty part", |l| !(l.len() == 1 && l[0].is_empty()))
}

fn guid() -> impl Strategy<Value = Guid128> {
    any::<[u8; 16]>().prop_map(Guid128)
}

fn tombstones() -> impl Strategy<Value = Vec<Tombstone>> {
    proptest::collection::vec(
        (guid(), any::<i64>()).prop_map(|(guid, timestamp)| Tombstone { guid, timestamp }),
        0..3,
    )
}

fn handshake() -> impl Strategy<Value = Item> {
    (
        (
            bytes_any(10),
            proptest::option::of(bytes_any(6)),
            proptest::option::of(bytes_any(6)),
            proptest::option::of(guid()),
        ),
        (
            proptest::option::of(prop_oneof![
                Just(SyncType::Full),
                Just(SyncType::Changed),
                Just(SyncType::State)
            ]),
            proptest::option::of(list(3)),
            any::<[bool; 10]>(),
        ),
        (
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            proptest::option::of(bytes_any(5)),
            any::<i64>(),
        ),
        (
            proptest::option::of(bytes_any(5)),
            any::<u32>(),
            proptest::collection::vec(bytes_any(8), 0..4),
            proptest::option::of(any::<u8>()),
        ),
    )
        .prop_map(
            |(
                (hostname, ns, sbox, sguid),
                (st, excl, b),
                (lt, since, max, sflags, until),
                (vall, ici, hh, alt),
            )| {
                Item::Handshake(Handshake {
                    hostname,
                    sync_ns_prefix: ns,
                    sync_box: sbox,
                    sync_box_guid: sguid,
                    sync_type: st,
                    debug: b[0],
                    sync_visible_namespaces: b[1],
                    exclude_mailboxes: excl,
                    send_mail_requests: b[2],
                    backup_send: b[3],
                    backup_recv: b[4],
                    lock_timeout: lt,
                    no_mail_sync: b[5],
                    no_backup_overwrite: b[6],
                    purge_remote: b[7],
                    no_notify: b[8],
                    sync_since_timestamp: since,
                    sync_max_size: max,
                    sync_flags: sflags,
                    sync_until_timestamp: until,
                    virtual_all_box: vall,
                    empty_hdr_workaround: b[9],
                    import_commit_msgs_interval: ici,
                    hashed_headers: hh,
                    alt_char: alt,
                    extra: vec![],
                })
            },
        )
}

fn cache_field() -> impl Strategy<Value = CacheField> {
    (
        bytes_any(10),
        prop_oneof![
            Just(CacheDecisionKind::No),
            Just(CacheDecisionKind::Temp),
            Just(CacheDecisionKind::Yes)
        ],
        any::<bool>(),
        any::<i64>(),
    )
        .prop_map(|(name, kind, forced, last_used)| CacheField {
            name,
            decision: CacheDecision { kind, forced },
            last_used,
            extra: vec![],
        })
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        handshake(),
        (guid(), any::<(u32, u32, u64, u64, u32, bool)>()).prop_map(|(g, (a, b, c, d, e, f))| {
            Item::MailboxState(MailboxState {
                mailbox_guid: g,
                last_uidvalidity: a,
                last_common_uid: b,
                last_common_modseq: c,
                last_common_pvt_modseq: d,
                last_messages_count: e,
                changes_during_sync: f,
                extra: vec![],
            })
        }),
        (
            list(4).prop_filter("name needs a part", |l| !l.is_empty()),
            prop_oneof![
                Just(Existence::Nonexistent),
                Just(Existence::Exists),
                Just(Existence::Deleted)
            ],
            proptest::option::of(guid()),
            any::<(u32, u32, i64, bool, i64)>()
        )
            .prop_map(|(name, existence, g, (uv, un, lr, sub, ls))| {
                Item::MailboxTreeNode(MailboxTreeNode {
                    name,
                    existence,
                    mailbox_guid: g,
                    uid_validity: uv,
                    uid_next: un,
                    last_renamed_or_created: lr,
                    subscribed: sub,
                    last_subscription_change: ls,
                    extra: vec![],
                })
            }),
        (
            any::<u8>(),
            proptest::option::of(any::<u8>()),
            tombstones(),
            tombstones(),
            tombstones()
        )
            .prop_map(
                |(hierarchy_sep, escape_char, mailboxes, dirs, unsubscribes)| {
                    Item::MailboxDelete(MailboxDelete {
                        hierarchy_sep,
                        escape_char,
                        mailboxes,
                        dirs,
                        unsubscribes,
                        extra: vec![],
                    })
                }
            ),
        (
            guid(),
            any::<(u32, u32, u32, u32, u64, u64)>(),
            any::<[bool; 5]>(),
            proptest::collection::vec(cache_field(), 0..4)
        )
            .prop_map(|(g, (uv, un, mc, fr, hm, hp), b, cache_fields)| {
                Item::Mailbox(Mailbox {
                    mailbox_guid: g,
                    uid_validity: uv,
                    uid_next: un,
                    messages_count: mc,
                    first_recent_uid: fr,
                    highest_modseq: hm,
                    highest_pvt_modseq: hp,
                    mailbox_lost: b[0],
                    mailbox_ignore: b[1],
                    cache_fields,
                    have_guids: b[2],
                    have_save_guids: b[3],
                    have_only_guid128: b[4],
                    extra: vec![],
                })
            }),
        (
            prop_oneof![Just(AttributeType::Private), Just(AttributeType::Shared)],
            bytes_any(10),
            proptest::option::of(bytes_any(10)),
            any::<(bool, bool, i64, u64)>()
        )
            .prop_map(
                |(attr_type, key, value, (stream, deleted, last_change, modseq))| {
                    Item::MailboxAttribute(MailboxAttribute {
                        attr_type,
                        key,
                        value,
                        stream,
                        deleted,
                        last_change,
                        modseq,
                        extra: vec![],
                    })
                }
            ),
        (
            prop_oneof![
                Just(ChangeType::Save),
                Just(ChangeType::Expunge),
                Just(ChangeType::FlagChange)
            ],
            any::<u32>(),
            proptest::option::of(bytes_any(12)),
            proptest::option::of(bytes_any(12)),
            any::<(u64, u64, u8, u8, u8, bool)>(),
            proptest::collection::vec(bytes_nonempty(8), 0..4),
            any::<(u64, u64)>()
        )
            .prop_map(
                |(
                    change_type,
                    uid,
                    guid,
                    hdr_hash,
                    (m, pm, af, rf, ff, kr),
                    keyword_changes,
                    (rt, vs),
                )| {
                    Item::MailChange(MailChange {
                        change_type,
                        uid,
                        guid,
                        hdr_hash,
                        modseq: m,
                        pvt_modseq: pm,
                        add_flags: af,
                        remove_flags: rf,
                        final_flags: ff,
                        keywords_reset: kr,
                        keyword_changes,
                        received_timestamp: rt,
                        virtual_size: vs,
                        extra: vec![],
                    })
                }
            ),
        // An empty first value alone encodes as a bare type byte, which
        // reads back as NULL (Dovecot's format cannot tell them apart).
        (proptest::option::of(bytes_nonempty(12)), any::<u32>()).prop_map(|(guid, uid)| {
            Item::MailRequest(MailRequest {
                guid,
                uid,
                extra: vec![],
            })
        }),
        (
            proptest::option::of(bytes_nonempty(12)),
            any::<u32>(),
            proptest::option::of(bytes_any(6)),
            any::<u32>(),
            0i64..=i64::MAX,
            any::<i64>(),
            any::<bool>()
        )
            .prop_map(
                |(guid, uid, pop3_uidl, pop3_order, received_date, saved_date, stream)| {
                    Item::Mail(Mail {
                        guid,
                        uid,
                        pop3_uidl,
                        pop3_order,
                        received_date,
                        saved_date,
                        stream,
                        extra: vec![],
                    })
                }
            ),
        (
            proptest::option::of(bytes_nonempty(12)),
            any::<i32>(),
            any::<bool>()
        )
            .prop_map(|(error, mail_error, r)| {
                Item::Finish(Finish {
                    error,
                    mail_error,
                    require_full_resync: r,
                    extra: vec![],
                })
            }),
    ]
}

/// Bodies built from line-ish pieces that stress the dot codec.
fn body() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(b".".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n.\n".to_vec()),
            Just(b"\r\n.\r\n".to_vec()),
            Just(b"..".to_vec()),
            proptest::collection::vec(nasty_byte(), 0..6),
        ],
        0..30,
    )
    .prop_map(|v| v.concat())
}

/// Items; the ones announcing a body get one (split into encoder chunks).
/// An item and, when it announces one, its body and how many pieces to
/// write it in.
type StreamItem = (Item, Option<(Vec<u8>, usize)>);

fn stream_items() -> impl Strategy<Value = Vec<StreamItem>> {
    proptest::collection::vec((item(), body(), 1usize..7), 0..12).prop_map(|v| {
        v.into_iter()
            .map(|(it, b, split)| {
                let body = it.has_body().then_some((b, split));
                (it, body)
            })
            .collect()
    })
}

fn encode_stream(items: &[StreamItem]) -> (Vec<u8>, Vec<Event>) {
    let mut enc = Encoder::new(EncodeOptions::default());
    let mut out = BytesMut::new();
    enc.encode_preamble(&mut out).unwrap();
    let mut expect = vec![Event::Version { major: 3, minor: 5 }];
    expect.extend(
        Schema::dovecot_3_5()
            .headers()
            .iter()
            .cloned()
            .map(Event::Header),
    );
    expect.push(Event::HeadersEnd);
    for (i, (item, body)) in items.iter().enumerate() {
        enc.encode(&Event::Item(item.clone()), &mut out).unwrap();
        expect.push(Event::Item(item.clone()));
        if let Some((b, split)) = body {
            for piece in b.chunks((b.len() / split).max(1)) {
                enc.encode(&Event::BodyChunk(Bytes::copy_from_slice(piece)), &mut out)
                    .unwrap();
            }
            enc.encode(&Event::BodyEnd, &mut out).unwrap();
            if !b.is_empty() {
                expect.push(Event::BodyChunk(Bytes::copy_from_slice(b)));
            }
            expect.push(Event::BodyEnd);
        }
        if i % 3 == 2 {
            enc.encode(&Event::EndOfList, &mut out).unwrap();
            expect.push(Event::EndOfList);
        }
    }
    enc.encode(&Event::Done, &mut out).unwrap();
    expect.push(Event::Done);
    (out.to_vec(), expect)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_round_trip(items in stream_items(), feed in 1usize..200, chunk_max in 4usize..100) {
        let (wire, expect) = encode_stream(&items);
        let opts = Options { body_chunk_bytes_max: chunk_max, ..Options::default() };
        let (got, err) = decode_chunked(&wire, feed, opts);
        prop_assert!(err.is_none(), "{err:?}");
        for ev in &got {
            if let Event::BodyChunk(b) = ev {
                prop_assert!(b.len() <= chunk_max);
            }
        }
        prop_assert_eq!(merge_bodies(got), expect);
    }

    #[test]
    fn decoded_items_reencode_to_the_same_bytes(items in stream_items()) {
        let (wire, _) = encode_stream(&items);
        let events = decode_all(&wire);
        // our own output stuffs leading dots; re-encode the same way
        let mut enc = Encoder::new(EncodeOptions::default());
        let mut out = BytesMut::new();
        for ev in &events {
            enc.encode(ev, &mut out).unwrap();
        }
        prop_assert!(out.as_ref() == wire.as_slice());
    }

    #[test]
    fn any_chunking_of_real_streams_decodes_identically(which in 0usize..8, feed in 1usize..300, chunk_max in 4usize..5000) {
        let stream = &sample_streams()[which];
        let whole = merge_bodies(decode_all(stream));
        let opts = Options { body_chunk_bytes_max: chunk_max, ..Options::default() };
        let (got, err) = decode_chunked(stream, feed, opts);
        prop_assert!(err.is_none(), "{err:?}");
        prop_assert_eq!(merge_bodies(got), whole);
    }

    #[test]
    fn strict_prefixes_only_need_more(which in 0usize..8, cut in any::<prop::sample::Index>(), feed in 1usize..64) {
        let stream = &sample_streams()[which];
        let cut = cut.index(stream.len());
        let whole = merge_bodies(decode_all(stream));
        let (got, err) = decode_chunked(&stream[..cut], feed, Options::default());
        prop_assert!(err.is_none(), "prefix of {cut} bytes: {err:?}");
        // what came out is a prefix of the full decoding (the last body may
        // be cut short)
        let got = merge_bodies(got);
        prop_assert!(got.len() <= whole.len());
        for (i, (a, b)) in got.iter().zip(&whole).enumerate() {
            match (a, b) {
                (Event::BodyChunk(x), Event::BodyChunk(y)) if i + 1 == got.len() => prop_assert!(y.starts_with(x)),
                _ => prop_assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(nasty_byte(), 0..400), feed in 1usize..50) {
        let mut prefixed = b"VERSION\tdsync\t3\t5\n".to_vec();
        prefixed.extend_from_slice(&data);
        let _ = decode_chunked(&prefixed, feed, Options { line_bytes_max: 64, ..Options::default() });
        let _ = decode_chunked(&data, feed, Options::default());
    }
}
