//! corvid's password file (checks, atomic rewrites, broken files), the
//! choice of backend from imapd.conf, Cyrus's admin/proxy policy, and the
//! mechanisms offered and chosen.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use io_tokio::auth::{
    client_mechanism, offered_mechanisms, Access, AuthError, Authenticated, Authenticator,
    CheckContext, LoginError, Mechanism, PasswdError, PasswdFile, PwCheck, Secret, Verdict,
};
use io_tokio::config::{Config, LoadOptions};

const CTX: CheckContext<'static> = CheckContext {
    service: "csync",
    realm: None,
};

fn pw(s: &str) -> Secret {
    Secret::new(s.as_bytes())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn set_check_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corvid.passwd");
    let f = PasswdFile::new(&path);

    f.set_password("repl", &pw("replpass")).unwrap();
    assert_eq!(mode(&path), 0o600);
    f.set_password("alice@example.com", &pw("wonder land"))
        .unwrap();
    assert_eq!(f.users().unwrap(), vec!["repl", "alice@example.com"]);

    assert_eq!(
        f.check("repl", &pw("replpass"), CTX).await.unwrap(),
        Verdict::Accepted
    );
    assert_eq!(
        f.check("alice@example.com", &pw("wonder land"), CTX)
            .await
            .unwrap(),
        Verdict::Accepted
    );
    assert_eq!(
        f.check("repl", &pw("replpas"), CTX).await.unwrap(),
        Verdict::Rejected("wrong password".into())
    );
    assert_eq!(
        f.check("mallory", &pw("replpass"), CTX).await.unwrap(),
        Verdict::Rejected("no such user".into())
    );

    // The file holds salted argon2id hashes, never the password.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("replpass"));
    let line = text.lines().find(|l| l.starts_with("repl:")).unwrap();
    assert!(line.starts_with("repl:$argon2id$v=19$"), "{line}");

    // Replacing keeps the position and the other users; the old password stops working.
    f.set_password("repl", &pw("newpass")).unwrap();
    assert_eq!(f.users().unwrap(), vec!["repl", "alice@example.com"]);
    assert!(matches!(
        f.check("repl", &pw("replpass"), CTX).await.unwrap(),
        Verdict::Rejected(_)
    ));
    assert_eq!(
        f.check("repl", &pw("newpass"), CTX).await.unwrap(),
        Verdict::Accepted
    );
    // Same password twice gives different hashes (fresh salt).
    let before = std::fs::read_to_string(&path).unwrap();
    f.set_password("repl", &pw("newpass")).unwrap();
    assert_ne!(before, std::fs::read_to_string(&path).unwrap());

    f.delete_user("repl").unwrap();
    assert_eq!(f.users().unwrap(), vec!["alice@example.com"]);
    assert!(matches!(
        f.check("repl", &pw("newpass"), CTX).await.unwrap(),
        Verdict::Rejected(_)
    ));
    let e = f.delete_user("repl").unwrap_err();
    assert!(matches!(e, PasswdError::NoSuchUser { .. }), "{e}");

    // Nothing left behind but the file itself.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("corvid.passwd")]);
}

#[test]
fn comments_kept_and_mode_preserved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    let f = PasswdFile::new(&path);
    f.set_password("a", &pw("x")).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("# site accounts\n\n{text}# end\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    f.set_password("b", &pw("y")).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# site accounts\n\n"), "{text}");
    assert!(text.contains("# end\n"));
    assert_eq!(mode(&path), 0o640);
}

#[tokio::test]
async fn broken_files_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    let f = PasswdFile::new(&path);
    f.set_password("good", &pw("x")).unwrap();
    let good = std::fs::read_to_string(&path).unwrap();
    let hash = good
        .lines()
        .find_map(|l| l.strip_prefix("good:"))
        .unwrap()
        .to_owned();
    let cases = [
        (format!("{good}nocolon\n"), "expected user:hash"),
        (format!("{good}bad:notahash\n"), "invalid hash for bad"),
        (
            format!("{good}good:{hash}\n"),
            "user good listed twice (first on line 2)",
        ),
        (format!("{good}:{hash}\n"), "user name empty"),
        (format!("{good}sp ace:{hash}\n"), "whitespace"),
        (format!("{good}md5:$1$abc$def\n"), "md5"),
    ];
    for (text, want) in cases {
        std::fs::write(&path, &text).unwrap();
        let e = f.check("good", &pw("x"), CTX).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("{}:3: ", path.display())) && msg.contains(want),
            "{text:?}: {msg}"
        );
        // Writing refuses a broken file too rather than dropping its lines.
        assert!(f.set_password("other", &pw("y")).is_err());
    }
    let other_alg = "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    std::fs::write(&path, format!("{good}p:{other_alg}\n")).unwrap();
    let e = f.check("good", &pw("x"), CTX).await.unwrap_err();
    assert!(e.to_string().contains("expected argon2id"), "{e}");

    // A missing file is an error for a check (the config names it), not "no such user".
    let e = PasswdFile::new(dir.path().join("missing"))
        .check("a", &pw("b"), CTX)
        .await
        .unwrap_err();
    assert!(
        matches!(e, AuthError::Passwd(PasswdError::Read { .. })),
        "{e}"
    );
}

#[test]
fn bad_user_names_and_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    let f = PasswdFile::new(&path);
    for user in ["", "a:b", "#a", "a b", "a\nb", "a\tb"] {
        assert!(
            matches!(
                f.set_password(user, &pw("x")).unwrap_err(),
                PasswdError::BadUser { .. }
            ),
            "{user:?}"
        );
    }
    assert!(!path.exists());
    let lock = dir.path().join("pw.lock");
    std::fs::write(&lock, "").unwrap();
    let e = f.set_password("a", &pw("x")).unwrap_err();
    assert!(
        matches!(e, PasswdError::Locked { .. }) && e.to_string().contains("pw.lock"),
        "{e}"
    );
    // The lock is someone else's: it stays.
    assert!(lock.exists());
    std::fs::remove_file(&lock).unwrap();
    f.set_password("a", &pw("x")).unwrap();
    assert!(!lock.exists());
}

fn conf(text: &str) -> Config {
    Config::parse_str(text, "/etc/imapd.conf", &LoadOptions::default()).unwrap()
}

#[test]
fn backend_chosen_from_config() {
    // Debian's default (and the labs'): auxprop with sasldb2, refused with what to do.
    let e = PwCheck::from_config(&conf(
        "sasl_pwcheck_method: auxprop\nsasl_sasldb_path: /srv/conf/sasldb2\n",
    ))
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("sasl_pwcheck_method: auxprop is not supported by corvid")
            && msg.contains("/srv/conf/sasldb2")
            && msg.contains("sasl_pwcheck_method: saslauthd")
            && msg.contains("corvid_passwd_file"),
        "{msg}"
    );
    // Unset means libsasl's default, auxprop.
    assert!(
        matches!(PwCheck::from_config(&conf("admins: a\n")), Err(AuthError::UnsupportedMethod { ref method, .. }) if method == "auxprop")
    );
    assert!(matches!(
        PwCheck::from_config(&conf("sasl_pwcheck_method: alwaystrue\n")),
        Err(AuthError::UnsupportedMethod { .. })
    ));

    // saslauthd with libsasl's default socket, or the configured one.
    let PwCheck::Saslauthd(s) =
        PwCheck::from_config(&conf("sasl_pwcheck_method: saslauthd\n")).unwrap()
    else {
        panic!()
    };
    assert_eq!(s.path(), Path::new("/var/run/saslauthd/mux"));
    let PwCheck::Saslauthd(s) = PwCheck::from_config(&conf(
        "sasl_pwcheck_method: auxprop saslauthd\nsasl_saslauthd_path: /run/sa/mux\n",
    ))
    .unwrap() else {
        panic!()
    };
    assert_eq!(s.path(), Path::new("/run/sa/mux"));

    // corvid's own file wins over the method the Cyrus daemons use.
    let PwCheck::PasswdFile(f) = PwCheck::from_config(&conf(
        "sasl_pwcheck_method: auxprop\ncorvid_passwd_file: /etc/corvid/passwd\n",
    ))
    .unwrap() else {
        panic!()
    };
    assert_eq!(f.path(), Path::new("/etc/corvid/passwd"));
    // ...and can be set for one service only.
    let c = Config::parse_str(
        "sasl_pwcheck_method: auxprop\nsyncserver_corvid_passwd_file: /etc/corvid/passwd\n",
        "/etc/imapd.conf",
        &LoadOptions {
            ident: Some("syncserver".into()),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert!(matches!(
        PwCheck::from_config(&c).unwrap(),
        PwCheck::PasswdFile(_)
    ));
}

#[test]
fn admins_and_proxying_as_cyrus() {
    let a = Access::from_config(&conf("admins: cyrus repl\nproxyservers: frontend\n"));
    let who = |authcid, authzid| a.authorize(authcid, authzid);
    assert_eq!(
        who("repl", None).unwrap(),
        Authenticated {
            authcid: "repl".into(),
            userid: "repl".into(),
            is_admin: true
        }
    );
    assert_eq!(who("alice", Some("alice")).unwrap().userid, "alice");
    assert!(!who("alice", None).unwrap().is_admin);
    // Admins and proxyservers may act as others; the result is the other's rights.
    assert_eq!(
        who("cyrus", Some("alice")).unwrap(),
        Authenticated {
            authcid: "cyrus".into(),
            userid: "alice".into(),
            is_admin: false
        }
    );
    assert_eq!(who("frontend", Some("alice")).unwrap().userid, "alice");
    assert!(who("frontend", Some("repl")).unwrap().is_admin);
    assert!(matches!(
        who("alice", Some("bob")),
        Err(LoginError::ProxyDenied { .. })
    ));
    // Exact, case-sensitive match, as Cyrus's unix auth.
    assert!(!a.is_admin("Repl"));
    // "anyone" in admins makes everyone an admin (Cyrus auth_unix).
    assert!(Access::from_config(&conf("admins: anyone\n")).is_admin("whoever"));
    // Nobody is an admin by default.
    assert!(!Access::from_config(&conf("servername: x\n")).is_admin("cyrus"));
}

#[tokio::test]
async fn login_with_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    PasswdFile::new(&path)
        .set_password("repl", &pw("replpass"))
        .unwrap();
    let c = conf(&format!(
        "admins: repl\ncorvid_passwd_file: {}\n",
        path.display()
    ));
    let auth = PwCheck::from_config(&c).unwrap();
    let access = Access::from_config(&c);
    let creds = proto::sasl::Credentials {
        authzid: None,
        authcid: "repl".into(),
        password: pw("replpass"),
    };
    assert!(access.login(&auth, &creds, CTX).await.unwrap().is_admin);
    let wrong = proto::sasl::Credentials {
        password: pw("nope"),
        ..creds
    };
    let e = access.login(&auth, &wrong, CTX).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "authentication failed for repl: wrong password"
    );
}

#[test]
fn nothing_shows_a_password() {
    let creds = proto::sasl::Credentials {
        authzid: None,
        authcid: "repl".into(),
        password: pw("hunter2"),
    };
    let c =
        conf("sync_password: hunter2\nmupdate_password: hunter2\nbackup_sync_password: hunter2\n");
    let auth = PwCheck::from_config(&conf("sasl_pwcheck_method: saslauthd\n")).unwrap();
    let shown = format!("{creds:?} {c:?} {auth:?} {:?}", Access::from_config(&c));
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn offered_mechanisms_follow_cyrus_security_properties() {
    use Mechanism::{Login, Plain};
    // Cyrus's default allowplaintext: no; PLAIN/LOGIN only under TLS.
    let c = conf("servername: x\n");
    assert_eq!(offered_mechanisms(&c, 0).unwrap(), vec![]);
    assert_eq!(offered_mechanisms(&c, 256).unwrap(), vec![Plain, Login]);
    // A 1-bit layer (integrity only) does not count as protection.
    assert_eq!(offered_mechanisms(&c, 1).unwrap(), vec![]);
    // The labs' configuration: plaintext allowed, sasl_mech_list orders.
    let c = conf("allowplaintext: yes\nsasl_mech_list: LOGIN CRAM-MD5 plain\n");
    assert_eq!(offered_mechanisms(&c, 0).unwrap(), vec![Login, Plain]);
    let c = conf("allowplaintext: yes\nsasl_mech_list: DIGEST-MD5\n");
    assert_eq!(offered_mechanisms(&c, 0).unwrap(), vec![]);
    // sasl_minimum_layer above what the connection has: nothing fits.
    let c = conf("allowplaintext: yes\nsasl_minimum_layer: 56\n");
    assert_eq!(offered_mechanisms(&c, 0).unwrap(), vec![]);
    assert_eq!(offered_mechanisms(&c, 256).unwrap(), vec![Plain, Login]);
}

#[test]
fn client_picks_like_cyrus() {
    let plain = conf("servername: x\n");
    // The csync banner "* SASL PLAIN LOGIN" and MUPDATE's "* AUTH \"PLAIN\"".
    assert_eq!(
        client_mechanism(&plain, ["PLAIN", "LOGIN"]),
        Some(Mechanism::Plain)
    );
    assert_eq!(
        client_mechanism(&plain, ["login", "SCRAM-SHA-1"]),
        Some(Mechanism::Login)
    );
    assert_eq!(client_mechanism(&plain, ["GSSAPI"]), None);
    let forced = conf("force_sasl_client_mech: LOGIN\n");
    assert_eq!(
        client_mechanism(&forced, ["PLAIN", "LOGIN"]),
        Some(Mechanism::Login)
    );
    assert_eq!(client_mechanism(&forced, ["PLAIN"]), None);
}
