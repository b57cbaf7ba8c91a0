//! The live captures in `corpus/traces/` (written by
//! `scripts/peers/capture-all.sh` through `corvid capture`) are
//! self-consistent: every `.txt` decodes to exactly its `.c2s.bin` and
//! `.s2c.bin`, names the real peer and its version, and each csync or
//! MUPDATE session has the shape the real daemons gave it. Needs no running
//! peers: it checks the committed files.

use std::path::{Path, PathBuf};

use io_tokio::capture::decode_transcript;

fn traces() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/traces")
}

/// Every capture `.txt` in `dir` whose name starts with `prefix`.
fn captures(dir: &str, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(traces().join(dir))
        .unwrap_or_else(|e| panic!("corpus/traces/{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(prefix)
                && name.ends_with(".txt")
                && p.with_extension("c2s.bin").exists()
        })
        .collect();
    v.sort();
    v
}

/// Decodes `txt`, compares with its `.bin` files, returns (c2s, s2c, header).
fn check(txt: &Path) -> (Vec<u8>, Vec<u8>, String) {
    let text = std::fs::read_to_string(txt).unwrap_or_else(|e| panic!("{}: {e}", txt.display()));
    let (c2s, s2c) = decode_transcript(&text).unwrap_or_else(|e| panic!("{}: {e}", txt.display()));
    let stem = txt.with_extension("");
    let bin = |ext: &str| std::fs::read(stem.with_extension(ext)).expect("bin file");
    assert!(
        c2s == bin("c2s.bin"),
        "{}: C records differ from .c2s.bin",
        txt.display()
    );
    assert!(
        s2c == bin("s2c.bin"),
        "{}: S records differ from .s2c.bin",
        txt.display()
    );
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        header.contains("# peer: Cyrus IMAP 3.6.1 (Debian "),
        "{}: header must name the peer and version",
        txt.display()
    );
    assert!(
        header.contains("# date: ") && header.contains("# command: "),
        "{}",
        txt.display()
    );
    (c2s, s2c, header)
}

fn has(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn csync_live_captures_are_exact_and_complete() {
    let files = captures("csync", "live-");
    let expected = [
        "initial-user",
        "all-users",
        "mailbox-mode",
        "new-message",
        "flag-change",
        "expunge",
        "rename",
        "delete-mailbox",
        "subscriptions",
        "seen",
        "quota",
        "annotations",
        "sieve",
        "rolling",
        "diverged-replica",
        "unuser",
        "imap-embedded",
    ];
    for name in expected {
        let path = traces().join(format!("csync/live-{name}.txt"));
        assert!(
            files.contains(&path),
            "missing capture csync/live-{name}.txt"
        );
    }
    for txt in &files {
        let (c2s, s2c, _) = check(txt);
        let what = txt.display();
        if has(&s2c, "X-REPLICATION") || has(&s2c, "[CAPABILITY") {
            // IMAP-embedded flavour: tagged SYNCGET/SYNCAPPLY through imapd
            assert!(
                has(&c2s, " SYNCGET USER ") && has(&c2s, " SYNCAPPLY "),
                "{what}"
            );
        } else {
            assert!(s2c.starts_with(b"* SASL "), "{what}: csync banner");
            assert!(has(&s2c, "Cyrus sync server 3.6.1"), "{what}");
            assert!(
                has(&c2s, "COMPRESS DEFLATE\r\n") && has(&s2c, "OK DEFLATE active\r\n"),
                "{what}"
            );
            assert!(
                c2s.ends_with(b"EXIT\r\n") && s2c.ends_with(b"OK Finished\r\n"),
                "{what}: clean end"
            );
        }
    }
    let c2s = |name: &str| check(&traces().join(format!("csync/live-{name}.txt"))).0;
    assert!(
        has(&c2s("new-message"), "APPLY RESERVE %(")
            && has(&c2s("new-message"), "APPLY MESSAGE (%{default ")
    );
    assert!(has(
        &c2s("rename"),
        "APPLY RENAME %(OLDMBOXNAME user.alice.Travel NEWMBOXNAME user.alice.Trips "
    ));
    assert!(has(&c2s("quota"), "APPLY QUOTA %(ROOT user.alice "));
    assert!(has(&c2s("seen"), "APPLY SEEN %(USERID bob "));
    assert!(has(&c2s("unuser"), "APPLY UNUSER bob\r\n"));
    assert!(has(&c2s("diverged-replica"), "GET FULLMAILBOX "));
    assert!(has(
        &c2s("subscriptions"),
        "APPLY SUB %(USERID alice MBOXNAME user.alice.Archive)"
    ));
}

#[test]
fn mupdate_captures_are_exact_and_cover_every_command() {
    let files = captures("mupdate", "");
    assert!(
        files.len() >= 17,
        "expected the capture-all.sh MUPDATE set, found {}",
        files.len()
    );
    let mut all_c2s = Vec::new();
    for txt in &files {
        let (c2s, s2c, header) = check(txt);
        assert!(
            s2c.starts_with(b"* AUTH "),
            "{}: MUPDATE banner",
            txt.display()
        );
        assert!(has(&s2c, "* OK MUPDATE \""), "{}", txt.display());
        assert!(header.contains("mupdate -m"), "{}", txt.display());
        all_c2s.extend_from_slice(&c2s);
    }
    for command in [
        " AUTHENTICATE \"PLAIN\" ",
        " NOOP\r\n",
        " RESERVE \"",
        " ACTIVATE \"",
        " DEACTIVATE \"",
        " DELETE \"",
        " FIND \"",
        " LIST\r\n",
        " LIST \"",
        " UPDATE\r\n",
        " UPDATE \"",
        " LOGOUT\r\n",
        " COMPRESS \"DEFLATE\"\r\n",
    ] {
        assert!(
            has(&all_c2s, command),
            "no MUPDATE capture sends{command:?}"
        );
    }
    // the real Cyrus slave: logs in, asks for the whole list with UPDATE, streams
    let (c2s, s2c, _) = check(&traces().join("mupdate/slave-boot.txt"));
    assert!(has(&c2s, "U01 UPDATE\r\n") && has(&s2c, "U01 OK \"streaming starts\"\r\n"));
    assert!(has(&s2c, "U01 DELETE {"), "the stream carries the deletion");
    let compress = check(&traces().join("mupdate/compress.txt"));
    assert!(has(&compress.1, "Z1 OK DEFLATE active\r\n") && has(&compress.1, "F01 MAILBOX {"));
}
