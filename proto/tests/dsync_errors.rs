//! Edge cases of the dsync codec: unknown keys and item types survive a
//! round trip, every peer mistake gets its typed error and closes the
//! stream, and encoder misuse is refused without writing anything.

mod dsync_common;

use bytes::{Bytes, BytesMut};
use dsync_common::*;
use proto::dsync::*;

const PREAMBLE: &[u8] = b"VERSION\tdsync\t3\t5\n\
Hhostname\tsync_ns_prefix\tsync_box\tsync_box_guid\tsync_type\tdebug\tsync_visible_namespaces\texclude_mailboxes\tsend_mail_requests\tbackup_send\tbackup_recv\tlock_timeout\tno_mail_sync\tno_backup_overwrite\tpurge_remote\tno_notify\tsync_since_timestamp\tsync_max_size\tsync_flags\tsync_until_timestamp\tvirtual_all_box\tempty_hdr_workaround\timport_commit_msgs_interval\thashed_headers\talt_char\n\
Smailbox_guid\tlast_uidvalidity\tlast_common_uid\tlast_common_modseq\tlast_common_pvt_modseq\tlast_messages_count\tchanges_during_sync\n\
Nname\texistence\tmailbox_guid\tuid_validity\tuid_next\tlast_renamed_or_created\tsubscribed\tlast_subscription_change\n\
Dhierarchy_sep\tescape_char\tmailboxes\tdirs\tunsubscribes\n\
Bmailbox_guid\tuid_validity\tuid_next\tmessages_count\tfirst_recent_uid\thighest_modseq\thighest_pvt_modseq\tmailbox_lost\tmailbox_ignore\tcache_fields\thave_guids\thave_save_guids\thave_only_guid128\n\
Atype\tkey\tvalue\tstream\tdeleted\tlast_change\tmodseq\n\
Ctype\tuid\tguid\thdr_hash\tmodseq\tpvt_modseq\tadd_flags\tremove_flags\tfinal_flags\tkeywords_reset\tkeyword_changes\treceived_timestamp\tvirtual_size\n\
Rguid\tuid\n\
Mguid\tuid\tpop3_uidl\tpop3_order\treceived_date\tsaved_date\tstream\n\
Ferror\tmail_error\trequire_full_resync\n\
cname\tdecision\tlast_used\n\
.\n";

fn first_error(data: &[u8]) -> DecodeError {
    let (_, err) = decode_chunked(data, data.len().max(1), Options::default());
    err.expect("an error")
}

fn with_preamble(rest: &[u8]) -> Vec<u8> {
    [PREAMBLE, rest].concat()
}

#[test]
fn our_preamble_is_dovecots() {
    let mut enc = Encoder::new(EncodeOptions::default());
    let mut out = BytesMut::new();
    enc.encode_preamble(&mut out).unwrap();
    assert_eq!(out.as_ref(), PREAMBLE);
    // and it is what the real capture starts with
    let real = std::fs::read(corpus_dir().join("initial/cap1/m2s.raw")).unwrap();
    assert!(real.starts_with(PREAMBLE));
}

#[test]
fn real_master_handshake_fields() {
    let events = decode_all(&std::fs::read(corpus_dir().join("initial/cap1/m2s.raw")).unwrap());
    let Event::Item(Item::Handshake(h)) = &events[13] else {
        panic!("{:?}", events[13])
    };
    assert_eq!(h.sync_type, Some(SyncType::Changed));
    assert!(h.send_mail_requests && h.debug && !h.backup_send);
    assert_eq!(h.import_commit_msgs_interval, 100);
    assert_eq!(
        h.hashed_headers,
        vec![Bytes::from("Date"), Bytes::from("Message-ID")]
    );
    assert_eq!(h.alt_char, Some(b'_'));
}

#[test]
fn unknown_keys_and_types_survive_a_round_trip() {
    // A future peer: an extra column in M (between known ones), a new item
    // type Z, and an extra column in c nested inside B.
    let wire = b"VERSION\tdsync\t3\t7\n\
Hhostname\n\
Smailbox_guid\tlast_uidvalidity\tlast_common_uid\tlast_common_modseq\tlast_common_pvt_modseq\n\
Nname\texistence\n\
Dhierarchy_sep\n\
Bmailbox_guid\tuid_validity\tuid_next\tmessages_count\tfirst_recent_uid\thighest_modseq\thighest_pvt_modseq\tcache_fields\n\
Atype\tkey\n\
Ctype\tuid\n\
Rguid\tuid\n\
Mguid\tx_future\tuid\tstream\n\
Ferror\n\
cname\tdecision\tlast_used\tx_hint\n\
Zalpha\tbeta\tgamma\n\
.\n\
Hpeer\n\
Bc2af6f342335026b0e45000083ecc375\t1\t2\t1\t1\t2\t0\tflags\x01tt\x01t\x02\x01tsome\x01nhdr.date\x01tyF\n\
Zone\t\x02\ttwo\n\
Mg1\tfuture\x01tvalue\t7\t\n\
body\r\n.\r\n\
.\n\
X\n"
    .to_vec();
    let events = decode_all(&wire);
    let mail = events
        .iter()
        .find_map(|e| match e {
            Event::Item(Item::Mail(m)) => Some(m.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(mail.uid, 7);
    assert_eq!(
        mail.extra,
        vec![(Bytes::from("x_future"), Bytes::from("future\tvalue"))]
    );
    let unknown = events
        .iter()
        .find_map(|e| match e {
            Event::Item(Item::Unknown(u)) => Some(u.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(unknown.chr, b'Z');
    assert_eq!(
        unknown.values,
        vec![Some(Bytes::from("one")), None, Some(Bytes::from("two"))]
    );
    let mailbox = events
        .iter()
        .find_map(|e| match e {
            Event::Item(Item::Mailbox(b)) => Some(b.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(mailbox.cache_fields.len(), 2);
    assert_eq!(
        mailbox.cache_fields[0].extra,
        vec![(Bytes::from("x_hint"), Bytes::from("some"))]
    );
    assert_eq!(
        mailbox.cache_fields[1].decision,
        CacheDecision {
            kind: CacheDecisionKind::Yes,
            forced: true
        }
    );
    assert_eq!(encode_all(&events), wire);
}

#[test]
fn peer_errors_are_typed() {
    use DecodeError::*;
    assert_eq!(first_error(b"HELLO\n"), BadVersionLine);
    assert_eq!(
        first_error(b"VERSION\tdsync\t4\t0\n"),
        UnsupportedVersion { major: 4, minor: 0 }
    );
    assert_eq!(
        first_error(b"VERSION\tdsync\t3\t5\nBmailbox_guid\n"),
        HeaderMissingKey {
            item: "mailbox",
            key: "uid_validity"
        }
    );
    // minor 5 must announce F; minor 2 need not
    let no_f: Vec<u8> = String::from_utf8_lossy(PREAMBLE)
        .lines()
        .filter(|l| !l.starts_with('F'))
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect();
    assert_eq!(first_error(&no_f), MissingHeader { item: "finish" });
    let minor2 = [
        b"VERSION\tdsync\t3\t2".as_slice(),
        &no_f[b"VERSION\tdsync\t3\t5".len()..],
    ]
    .concat();
    let (_, err) = decode_chunked(&minor2, 7, Options::default());
    assert_eq!(err, None);

    assert_eq!(
        first_error(&with_preamble(b"Qx\n")),
        UndeclaredItem { chr: b'Q' }
    );
    assert_eq!(
        first_error(&with_preamble(b"cflags\tt\n")),
        UnexpectedItem { chr: b'c' }
    );
    assert_eq!(first_error(&with_preamble(b"\n")), EmptyLine);
    assert_eq!(
        first_error(&with_preamble(b"Rg\t1\textra\n")),
        TooManyValues {
            chr: b'R',
            declared: 2,
            got: 3
        }
    );
    assert_eq!(
        first_error(&with_preamble(b"Cs\t\x02\n")),
        MissingField {
            item: "mail_change",
            key: "uid"
        }
    );
    assert_eq!(
        first_error(&with_preamble(b"Cs\t-1\n")),
        InvalidField {
            item: "mail_change",
            key: "uid"
        }
    );
    assert_eq!(
        first_error(&with_preamble(b"Cs\t1\t\x02\t\x02\t\x02\t\x02\t100\n")),
        InvalidField {
            item: "mail_change",
            key: "add_flags"
        }
    );
    assert_eq!(
        first_error(&with_preamble(b"Cx\t1\n")),
        InvalidField {
            item: "mail_change",
            key: "type"
        }
    );
    assert_eq!(
        first_error(&with_preamble(b"Sabc\t1\t1\t1\t1\n")),
        InvalidField {
            item: "mailbox_state",
            key: "mailbox_guid"
        }
    );
    assert_eq!(
        first_error(&with_preamble(b"N\ty\n")),
        InvalidField {
            item: "mailbox_tree_node",
            key: "name"
        }
    );
    assert_eq!(
        first_error(&with_preamble(b"D//\n")),
        InvalidField {
            item: "mailbox_delete",
            key: "hierarchy_sep"
        }
    );
    assert_eq!(
        first_error(&with_preamble(b"D/\t%\tc2af6f342335026b0e45000083ecc375\n")),
        InvalidField {
            item: "mailbox_delete",
            key: "mailboxes"
        }
    );
    assert_eq!(
        first_error(&with_preamble(
            b"Hh\t\x02\t\x02\t\x02\t\x02\t\x02\t\x02\t\x02\t\x02\t\x02\t\x02\t0\n"
        )),
        InvalidField {
            item: "handshake",
            key: "lock_timeout"
        }
    );
    assert_eq!(first_error(&with_preamble(b"X\nmore")), DataAfterDone);

    let long = with_preamble(&[b'R'; 100]);
    let (_, err) = decode_chunked(
        &long,
        10,
        Options {
            line_bytes_max: 50,
            ..Options::default()
        },
    );
    assert_eq!(err, Some(LineTooLong { limit: 50 }));
}

#[test]
fn errors_stick_and_eof_is_checked() {
    let mut d = Decoder::new(Options::default());
    d.feed(b"NOPE\n");
    assert!(d.next().is_err());
    d.feed(PREAMBLE);
    assert_eq!(d.next(), Err(DecodeError::BadVersionLine));

    // EOF inside a body
    let mut d = Decoder::new(Options::default());
    d.feed(&with_preamble(
        b"Mg\t1\t\x02\t\x02\t\x02\t\x02\t\npartial body",
    ));
    while let Ok(Some(_)) = d.next() {}
    assert_eq!(
        d.handle_eof(),
        Err(DecodeError::UnexpectedEof {
            during: "a message body"
        })
    );

    // EOF inside a line
    let mut d = Decoder::new(Options::default());
    d.feed(&with_preamble(b"Rg"));
    while let Ok(Some(_)) = d.next() {}
    assert_eq!(
        d.handle_eof(),
        Err(DecodeError::UnexpectedEof { during: "a line" })
    );

    // EOF between records is fine
    let mut d = Decoder::new(Options::default());
    d.feed(&with_preamble(b"Rg\t1\n.\n"));
    while let Ok(Some(_)) = d.next() {}
    assert_eq!(d.handle_eof(), Ok(()));
}

#[test]
fn leading_dot_quirk() {
    let mail = Item::Mail(Mail {
        guid: Some("g".into()),
        stream: true,
        ..Mail::default()
    });
    for (stuff, wire_body, read_back) in [
        (true, b"..x\r\n.\r\n".as_slice(), b".x".as_slice()),
        (false, b".x\r\n.\r\n".as_slice(), b"x".as_slice()),
    ] {
        let mut enc = Encoder::new(EncodeOptions {
            stuff_leading_dot: stuff,
        });
        let mut out = BytesMut::new();
        enc.encode_preamble(&mut out).unwrap();
        enc.encode(&Event::Item(mail.clone()), &mut out).unwrap();
        enc.encode(&Event::BodyChunk(Bytes::from_static(b".x")), &mut out)
            .unwrap();
        enc.encode(&Event::BodyEnd, &mut out).unwrap();
        assert!(out.ends_with(wire_body), "{out:?}");
        let events = merge_bodies(decode_all(&out));
        // Dovecot's reader drops an unstuffed leading dot; so do we.
        assert_eq!(
            events[events.len() - 2],
            Event::BodyChunk(Bytes::copy_from_slice(read_back))
        );
    }
}

#[test]
fn encoder_misuse_is_refused() {
    let mut enc = Encoder::new(EncodeOptions::default());
    let mut out = BytesMut::new();
    let req = Event::Item(Item::MailRequest(MailRequest {
        guid: Some("g".into()),
        uid: 1,
        extra: vec![],
    }));
    assert!(matches!(
        enc.encode(&req, &mut out),
        Err(EncodeError::OutOfOrder { .. })
    ));
    assert!(out.is_empty());
    enc.encode(&Event::Version { major: 3, minor: 5 }, &mut out)
        .unwrap();
    enc.encode(
        &Event::Header(ItemHeader::dovecot(ItemKind::MailRequest)),
        &mut out,
    )
    .unwrap();
    enc.encode(
        &Event::Header(ItemHeader::dovecot(ItemKind::Mail)),
        &mut out,
    )
    .unwrap();
    enc.encode(&Event::HeadersEnd, &mut out).unwrap();
    let len = out.len();
    let state = Event::Item(Item::MailboxState(MailboxState::default()));
    assert_eq!(
        enc.encode(&state, &mut out),
        Err(EncodeError::NoHeader { chr: b'S' })
    );
    let extra = Event::Item(Item::MailRequest(MailRequest {
        extra: vec![("nope".into(), "v".into())],
        ..Default::default()
    }));
    assert_eq!(
        enc.encode(&extra, &mut out),
        Err(EncodeError::NotInSchema {
            chr: b'R',
            key: "nope".into()
        })
    );
    assert!(matches!(
        enc.encode(&Event::BodyChunk("x".into()), &mut out),
        Err(EncodeError::OutOfOrder { .. })
    ));
    assert_eq!(out.len(), len);
    enc.encode(
        &Event::Item(Item::Mail(Mail {
            stream: true,
            ..Mail::default()
        })),
        &mut out,
    )
    .unwrap();
    assert!(matches!(
        enc.encode(&req, &mut out),
        Err(EncodeError::OutOfOrder { .. })
    ));
    enc.encode(&Event::BodyEnd, &mut out).unwrap();
    enc.encode(&req, &mut out).unwrap();
    enc.encode(&Event::Done, &mut out).unwrap();
    assert!(matches!(
        enc.encode(&req, &mut out),
        Err(EncodeError::OutOfOrder { .. })
    ));
}

#[test]
fn keyword_change_entries() {
    assert_eq!(
        KeywordChangeKind::parse(b"&$Important"),
        Some((KeywordChangeKind::AddAndFinal, b"$Important".as_slice()))
    );
    assert_eq!(
        KeywordChangeKind::parse(b"-work"),
        Some((KeywordChangeKind::Remove, b"work".as_slice()))
    );
    assert_eq!(KeywordChangeKind::parse(b"?x"), None);
    assert_eq!(KeywordChangeKind::parse(b""), None);
    assert_eq!(KeywordChangeKind::Final.entry(b"kw"), Bytes::from("=kw"));
    // every keyword change in the real captures has a known prefix
    let mut seen = 0;
    for cap in captures() {
        for f in ["m2s.raw", "s2m.raw"] {
            for ev in decode_all(&std::fs::read(cap.join(f)).unwrap()) {
                if let Event::Item(Item::MailChange(c)) = ev {
                    for k in &c.keyword_changes {
                        let (kind, kw) = KeywordChangeKind::parse(k).unwrap();
                        assert_eq!(kind.entry(kw), *k);
                        seen += 1;
                    }
                }
            }
        }
    }
    assert!(seen > 5, "only {seen} keyword changes in the corpus");
}

#[test]
fn duplicate_header_keys_read_the_first_column() {
    let wire = with_preamble(b"");
    let wire = String::from_utf8(wire)
        .unwrap()
        .replace("Rguid\tuid\n", "Rguid\tuid\tuid\tx\tx\n");
    let events = decode_all(&[wire.as_bytes(), b"Rg\t1\t2\ta\tb\n"].concat());
    let Some(Event::Item(Item::MailRequest(r))) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(r.uid, 1);
    assert_eq!(r.extra, vec![(Bytes::from("x"), Bytes::from("a"))]);
}
