//! imapd.conf reading: real-looking configs (the shapes the Cyrus and MUPDATE
//! labs ran with), Cyrus's syntax corner cases, and every error.

use std::path::Path;

use io_tokio::config::{
    parse_duration_s, parse_int, parse_switch, Admins, Config, ConfigError, DurationUnit,
    LoadOptions, Partition,
};
use proptest::prelude::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_str(text, "/etc/test-imapd.conf", &LoadOptions::default())
}

fn parse_as(text: &str, ident: &str) -> Result<Config, ConfigError> {
    let opts = LoadOptions {
        ident: Some(ident.into()),
        ..LoadOptions::default()
    };
    Config::parse_str(text, "/etc/test-imapd.conf", &opts)
}

/// The sync master of the Cyrus lab: two channels, the default one and "backup".
const SYNC_MASTER: &str = r#"# generated -- lab instance master
configdirectory: /srv/lab/master/conf
defaultpartition: default
partition-default: /srv/lab/master/spool
sievedir: /srv/lab/master/sieve
sieveusehomedir: false
proc_path: /srv/lab/master/conf/proc
servername: master.lab
syslog_prefix: lab-master
admins: cyrusadmin repl
hashimapspool: true
umask: 077
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: /srv/lab/master/conf/sasldb2
sasl_mech_list: PLAIN LOGIN
# --- replication SOURCE settings ---
sync_log: 1
sync_log_channels: "" backup
sync_host: 127.0.0.1
sync_port: 44106
sync_authname: repl
sync_password: replpass
sync_try_imap: 0
sync_repeat_interval: 1
sync_shutdown_file: /srv/lab/master/conf/sync/shutdown
backup_sync_host: 127.0.0.1
backup_sync_port: 44107
backup_sync_authname: repl
backup_sync_password: backuppass
backup_sync_try_imap: 0
backup_sync_repeat_interval: 1
backup_sync_shutdown_file: /srv/lab/master/conf/sync/backup/shutdown
force_sasl_client_mech: PLAIN
"#;

#[test]
fn sync_master_channels() {
    let c = parse(SYNC_MASTER).unwrap();
    assert_eq!(
        c.configdirectory().unwrap(),
        Path::new("/srv/lab/master/conf")
    );
    assert_eq!(c.servername(), Some("master.lab"));
    assert!(c.get_bool("sync_log").unwrap());
    assert_eq!(c.sync_log_channels(), vec![None, Some("backup".to_owned())]);

    // Default channel reads the generic keys.
    assert_eq!(c.channel_str(None, "sync_host"), Some("127.0.0.1"));
    assert_eq!(c.channel_str(None, "sync_port"), Some("44106"));
    assert_eq!(c.channel_str(None, "sync_password"), Some("replpass"));
    // The backup channel has its own.
    assert_eq!(c.channel_str(Some("backup"), "sync_port"), Some("44107"));
    assert_eq!(
        c.channel_str(Some("backup"), "sync_password"),
        Some("backuppass")
    );
    assert!(!c.channel_bool(Some("backup"), "sync_try_imap").unwrap());
    assert_eq!(
        c.channel_duration_s(
            Some("backup"),
            "sync_repeat_interval",
            DurationUnit::Seconds
        )
        .unwrap(),
        1
    );
    // A channel with nothing of its own falls back to the generic key.
    assert_eq!(c.channel_str(Some("other"), "sync_port"), Some("44106"));
    assert!(!c.channel_bool(Some("other"), "sync_try_imap").unwrap());
    // Unset everywhere: the Cyrus default.
    assert_eq!(c.channel_str(Some("backup"), "sync_realm"), None);
    assert_eq!(
        c.channel_duration_s(Some("backup"), "sync_timeout", DurationUnit::Seconds)
            .unwrap(),
        1800
    );

    assert_eq!(c.admins(), Admins::parse("cyrusadmin repl"));
    assert!(c.admins().contains("repl"));
    assert!(!c.admins().contains("alice"));
    assert_eq!(
        c.partitions(),
        vec![Partition {
            name: "default".into(),
            path: "/srv/lab/master/spool".into()
        }]
    );
    assert_eq!(c.default_partition(), Some("default"));
    assert_eq!(c.get_str("sasl_mech_list"), Some("PLAIN LOGIN"));
    // Unknown to corvid, kept anyway.
    assert_eq!(c.get_str("sieveusehomedir"), Some("false"));
    assert_eq!(c.origin("sync_port").unwrap().line, 22);
}

/// The backup host of the Cyrus lab.
#[test]
fn backupd_host() {
    let c = parse(
        "configdirectory: /srv/lab/backup/conf\n\
         partition-default: /srv/lab/backup/spool\n\
         backuppartition-default: /srv/lab/backup/backups\n\
         backuppartition-Second: /srv/lab/backup/b2\n\
         backup_staging_path: /srv/lab/backup/staging\n\
         backup_db: twoskip\n\
         backup_retention: 7d\n\
         restore_authname: repl\n\
         restore_password: replpass\n",
    )
    .unwrap();
    assert_eq!(
        c.backup_partitions(),
        vec![
            Partition {
                name: "default".into(),
                path: "/srv/lab/backup/backups".into()
            },
            Partition {
                name: "second".into(),
                path: "/srv/lab/backup/b2".into()
            },
        ]
    );
    assert_eq!(
        c.get_duration_s("backup_retention", DurationUnit::Days)
            .unwrap(),
        7 * 86400
    );
    assert_eq!(c.get_int("backup_compact_work_threshold").unwrap(), 1);
    assert_eq!(c.get_str("backup_db_path"), None);
}

/// The MUPDATE master and a frontend of the MUPDATE lab.
#[test]
fn mupdate_master_and_frontend() {
    let master = parse(
        "configdirectory: /srv/mup/master/conf\n\
         servername: mupdate-master.lab\n\
         admins: mupdateadmin fe1 sl2 be1 be2\n\
         mupdate_config: standard\n\
         mupdate_workers_start: 5\n\
         mupdate_connections_max: 128\n\
         unixhierarchysep: no\n\
         altnamespace: no\n",
    )
    .unwrap();
    assert_eq!(master.get_str("mupdate_server"), None);
    assert_eq!(master.get_int("mupdate_port").unwrap(), 3905);
    assert_eq!(master.get_str("mupdate_config"), Some("standard"));
    assert!(!master.get_bool("unixhierarchysep").unwrap());
    assert_eq!(master.admins().ids().len(), 5);

    let fe1 = parse(
        "configdirectory: /srv/mup/fe1/conf\n\
         admins: cyrus\n\
         mupdate_server: 127.0.0.1:34040\n\
         mupdate_authname: fe1\n\
         mupdate_username: fe1\n\
         mupdate_password: labpass\n\
         mupdate_retry_delay: 20\n\
         proxy_authname: proxy\n\
         serverlist: be1.lab be2.lab\n",
    )
    .unwrap();
    assert_eq!(fe1.get_str("mupdate_server"), Some("127.0.0.1:34040"));
    assert_eq!(fe1.get_str("mupdate_password"), Some("labpass"));
    assert_eq!(fe1.get_int("mupdate_retry_delay").unwrap(), 20);
    // Defaults of the keys not set.
    assert_eq!(fe1.get_str("mupdate_realm"), None);
    assert_eq!(fe1.get_int("mupdate_workers_max").unwrap(), 50);
    assert!(!fe1.get_bool("allowplaintext").unwrap());
    assert_eq!(fe1.get_str("sasl_pwcheck_method"), Some("auxprop"));
    assert_eq!(
        fe1.get_str("sasl_saslauthd_path"),
        Some("/var/run/saslauthd/mux")
    );
}

#[test]
fn syntax_as_cyrus_has_it() {
    let c = parse(
        "   # indented comment\n\
         \t\n\
         \n\
         ConfigDirectory: /var/lib/cyrus\n\
         \x20  servername:    host.example   \n\
         sync_host: a # not a comment\n\
         corvid_note:with:colons\n\
         long_key: part one \\\n\
         part two\n\
         crlf_key: value\r\n\
         sasl_Mech_List: PLAIN\n\
         TLS_SERVER_CERT: /etc/ssl/x.pem",
    )
    .unwrap();
    assert_eq!(c.get_str("configdirectory"), Some("/var/lib/cyrus"));
    assert_eq!(c.get_str("CONFIGDIRECTORY"), Some("/var/lib/cyrus"));
    assert_eq!(c.get_str("servername"), Some("host.example"));
    assert_eq!(c.get_str("sync_host"), Some("a # not a comment"));
    assert_eq!(c.get_str("corvid_note"), Some("with:colons"));
    assert_eq!(c.get_str("long_key"), Some("part one part two"));
    assert_eq!(c.origin("long_key").unwrap().line, 8);
    assert_eq!(c.origin("crlf_key").unwrap().line, 10);
    assert_eq!(c.get_str("crlf_key"), Some("value"));
    assert_eq!(c.get_str("sasl_mech_list"), Some("PLAIN"));
    assert_eq!(c.get_str("tls_server_cert"), Some("/etc/ssl/x.pem"));

    // A continuation on the last line: Cyrus drops the pending line silently.
    let c = parse("servername: x\nadmins: a \\\n").unwrap();
    assert_eq!(c.get_str("admins"), Some(""));
    assert!(!c.is_set("admins"));
}

#[test]
fn switches_as_cyrus_accepts_them() {
    for (v, b) in [
        ("yes", true),
        ("no", false),
        ("on", true),
        ("off", false),
        ("true", true),
        ("false", false),
        ("1", true),
        ("0", false),
        ("t", true),
        ("f", false),
    ] {
        assert_eq!(parse_switch(v), Some(b), "{v}");
        let c = parse(&format!("sync_log: {v}\n")).unwrap();
        assert_eq!(c.get_bool("sync_log").unwrap(), b, "{v}");
    }
    // Cyrus compares the first character case-sensitively.
    assert_eq!(parse_switch("Yes"), None);
    // Only the first character(s) count, as in Cyrus.
    assert_eq!(parse_switch("nope"), Some(false));
    assert_eq!(parse_switch("yesterday"), Some(true));
    assert_eq!(parse_switch("o"), None);
    assert_eq!(parse_switch("maybe"), None);
}

#[test]
fn ints_as_strtol_base_0() {
    assert_eq!(parse_int("3905"), Some(3905));
    assert_eq!(parse_int("0x10"), Some(16));
    assert_eq!(parse_int("010"), Some(8));
    assert_eq!(parse_int("0"), Some(0));
    assert_eq!(parse_int("-5"), Some(-5));
    assert_eq!(parse_int("+5"), Some(5));
    assert_eq!(parse_int("5k"), None);
    assert_eq!(parse_int("08"), None);
    assert_eq!(parse_int(""), None);
    // strtol clamps, and Cyrus accepts the clamped value.
    assert_eq!(parse_int("99999999999999999999"), Some(i64::MAX));
    assert_eq!(parse_int("-0x8000000000000001"), Some(i64::MIN));
}

#[test]
fn durations_as_cyrus_parses_them() {
    let s = DurationUnit::Seconds;
    assert_eq!(parse_duration_s("90", s), Some(90));
    assert_eq!(parse_duration_s("90", DurationUnit::Minutes), Some(5400));
    assert_eq!(parse_duration_s("7", DurationUnit::Days), Some(7 * 86400));
    assert_eq!(parse_duration_s("1h30m", s), Some(5400));
    assert_eq!(parse_duration_s("1h30", DurationUnit::Minutes), Some(5400));
    assert_eq!(
        parse_duration_s("1d2h3m4s", s),
        Some(86400 + 7200 + 180 + 4)
    );
    assert_eq!(parse_duration_s("-1m", s), Some(-60));
    assert_eq!(parse_duration_s("", s), Some(0));
    assert_eq!(parse_duration_s("m", s), None);
    assert_eq!(parse_duration_s("1w", s), None);
    assert_eq!(parse_duration_s("1hh", s), None);
    assert_eq!(parse_duration_s("1 h", s), None);
}

proptest! {
    #[test]
    fn duration_groups_sum(d in 0i64..1000, h in 0i64..1000, m in 0i64..1000, s in 0i64..1000, bare in any::<bool>()) {
        let text = if bare { format!("{d}d{h}h{m}m{s}") } else { format!("{d}d{h}h{m}m{s}s") };
        prop_assert_eq!(parse_duration_s(&text, DurationUnit::Seconds), Some(d * 86400 + h * 3600 + m * 60 + s));
    }

    #[test]
    fn any_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn values_round_trip(key in "[a-z][a-z0-9_-]{0,20}", value in "[!-~]([ -~]{0,40}[!-~])?") {
        // A value with no leading/trailing blanks reads back exactly (a
        // trailing backslash would continue the line, as in Cyrus).
        prop_assume!(!value.ends_with('\\'));
        let c = parse(&format!("corvidx_{key}: {value}\n")).unwrap();
        let got = c.get_str(&format!("corvidx_{key}"));
        prop_assert_eq!(got, Some(value.as_str()));
    }
}

#[test]
fn ident_overrides_generic_in_either_order() {
    let text = "admins: cyrus\nmupdate_admins: mupdateadmin\nsync_host: generic\n";
    let c = parse_as(text, "mupdate").unwrap();
    assert_eq!(c.get_str("admins"), Some("mupdateadmin"));
    assert!(c.admins().contains("mupdateadmin"));
    assert!(!c.admins().contains("cyrus"));
    assert_eq!(c.get_str("sync_host"), Some("generic"));

    let c = parse_as("syncserver_admins: repl\nadmins: cyrus\n", "SyncServer").unwrap();
    assert_eq!(c.get_str("admins"), Some("repl"));
    assert_eq!(c.ident(), Some("syncserver"));

    // Without the ident, the override is just another key.
    let c = parse(text).unwrap();
    assert_eq!(c.get_str("admins"), Some("cyrus"));

    // The override of a known key is type-checked at load too.
    let e = parse_as("mupdate_sync_log: perhaps\n", "mupdate").unwrap_err();
    assert!(
        matches!(e, ConfigError::InvalidValue { ref key, .. } if key == "mupdate_sync_log"),
        "{e}"
    );
}

#[test]
fn ident_applies_to_partitions_and_channels() {
    let c = parse_as(
        "partition-default: /a\npartition-other: /b\nimap_partition-default: /c\n\
         backup_sync_host: h1\nsyncclient_backup_sync_host: h2\n",
        "syncclient",
    )
    .unwrap();
    assert_eq!(c.partition_path("default"), Some(Path::new("/a")));
    assert_eq!(c.channel_str(Some("backup"), "sync_host"), Some("h2"));
    let c = parse_as(
        "partition-default: /a\nimap_partition-default: /c\nimap_partition-x: /x\n",
        "imap",
    )
    .unwrap();
    assert_eq!(
        c.partitions(),
        vec![
            Partition {
                name: "default".into(),
                path: "/c".into()
            },
            Partition {
                name: "x".into(),
                path: "/x".into()
            },
        ]
    );
}

#[test]
fn deprecated_key_stands_in_for_its_replacement() {
    let c = parse("tls_cert_file: /old.pem\ntls_key_file: /old.key\n").unwrap();
    assert_eq!(c.get_str("tls_server_cert"), Some("/old.pem"));
    assert_eq!(c.get_str("tls_server_key"), Some("/old.key"));
    let c = parse("tls_cert_file: /old.pem\ntls_server_cert: /new.pem\n").unwrap();
    assert_eq!(c.get_str("tls_server_cert"), Some("/new.pem"));
}

#[test]
fn configdirectory_placeholder_expanded_in_known_keys() {
    let c = parse(
        "configdirectory: /var/lib/cyrus\nbackup_db_path: {configdirectory}/backups.db\n\
         corvid_unknown: {configdirectory}/x\n",
    )
    .unwrap();
    assert_eq!(
        c.get_str("backup_db_path"),
        Some("/var/lib/cyrus/backups.db")
    );
    // Cyrus leaves overflow keys alone.
    assert_eq!(c.get_str("corvid_unknown"), Some("{configdirectory}/x"));
}

#[test]
fn include_reads_the_other_file_and_refuses_twice() {
    let dir = tempfile::tempdir().unwrap();
    let inc = dir.path().join("sasl.conf");
    std::fs::write(
        &inc,
        "sasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: /tmp/x/mux\n",
    )
    .unwrap();
    let main = dir.path().join("imapd.conf");
    std::fs::write(
        &main,
        format!(
            "configdirectory: /c\n@include: {}\nadmins: a\n",
            inc.display()
        ),
    )
    .unwrap();
    let c = Config::load(&main).unwrap();
    assert_eq!(c.get_str("sasl_pwcheck_method"), Some("saslauthd"));
    assert_eq!(
        c.origin("sasl_saslauthd_path").unwrap().file.as_ref(),
        inc.as_path()
    );
    assert_eq!(c.origin("sasl_saslauthd_path").unwrap().line, 2);
    assert_eq!(c.origin("admins").unwrap().line, 3);

    // Included twice.
    std::fs::write(
        &main,
        format!("@include: {0}\n@INCLUDE: {0}\n", inc.display()),
    )
    .unwrap();
    let e = Config::load(&main).unwrap_err();
    assert!(
        matches!(e, ConfigError::IncludedTwice { ref origin, .. } if origin.line == 2),
        "{e}"
    );
    // Including itself (a loop).
    std::fs::write(&main, format!("@include: {}\n", main.display())).unwrap();
    assert!(matches!(
        Config::load(&main).unwrap_err(),
        ConfigError::IncludedTwice { .. }
    ));
    // A duplicate across files names both places.
    std::fs::write(
        &main,
        format!(
            "sasl_pwcheck_method: auxprop\n@include: {}\n",
            inc.display()
        ),
    )
    .unwrap();
    let e = Config::load(&main).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("sasl.conf:1")
            && msg.contains("imapd.conf:1")
            && msg.contains("sasl_pwcheck_method"),
        "{msg}"
    );
    // A missing include.
    std::fs::write(&main, "@include: /nonexistent/corvid.conf\n").unwrap();
    let e = Config::load(&main).unwrap_err();
    assert!(
        matches!(e, ConfigError::Read { .. }) && e.to_string().contains("/nonexistent/corvid.conf"),
        "{e}"
    );
}

#[test]
fn prefix_is_prepended_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/imapd.conf"), "servername: prefixed\n").unwrap();
    let opts = LoadOptions {
        prefix: Some(dir.path().to_owned()),
        ..LoadOptions::default()
    };
    let c = Config::load_with("/etc/imapd.conf", &opts).unwrap();
    assert_eq!(c.servername(), Some("prefixed"));
}

#[test]
fn every_error_names_file_line_and_key() {
    let cases: &[(&str, &str)] = &[
        ("configdirectory: /c\nsync_host : x\n", "test-imapd.conf:2: invalid option name"),
        ("novalue\n", "test-imapd.conf:1: invalid option name"),
        ("bad key: x\n", "test-imapd.conf:1: invalid option name"),
        ("key.dot: x\n", "test-imapd.conf:1: invalid option name"),
        (": anonymous\n", "test-imapd.conf:1: invalid option name"),
        ("@: x\n", "test-imapd.conf:1: invalid option name"),
        ("\n\nadmins:   \n", "test-imapd.conf:3: empty value for option 'admins'"),
        ("admins:\n", "test-imapd.conf:1: empty value for option 'admins'"),
        ("@define: x\n", "test-imapd.conf:1: invalid directive '@define'"),
        ("admins: a\nADMINS: b\n", "test-imapd.conf:2: option 'admins' was specified twice (first at /etc/test-imapd.conf:1)"),
        ("partition-x: /a\npartition-X: /b\n", "option 'partition-x' was specified twice"),
        ("sync_log: maybe\n", "test-imapd.conf:1: invalid value \"maybe\" for option 'sync_log': expected a switch"),
        ("mupdate_port: 39O5\n", "invalid value \"39O5\" for option 'mupdate_port': expected an integer"),
        ("sync_timeout: 30 minutes\n", "option 'sync_timeout': expected a duration"),
        ("mupdate_config: mixed\n", "expected one of standard, unified, replicated"),
        ("backup_db: berkeley\n", "expected one of skiplist, sql, twoskip, zeroskip"),
        ("defaultpartition: my-part\n", "option 'defaultpartition'"),
    ];
    for (text, want) in cases {
        let e = parse(text).unwrap_err();
        assert!(
            e.to_string().contains(want),
            "{text:?}: got {e}, want {want}"
        );
    }
}

#[test]
fn errors_at_use_name_where_the_value_was_set() {
    // Channel keys are not typed at load (Cyrus parses them at use).
    let c = parse(
        "configdirectory: /c\n\nbackup_sync_try_imap: sometimes\nbackup_sync_repeat_interval: 1x\n",
    )
    .unwrap();
    let e = c.channel_bool(Some("backup"), "sync_try_imap").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/test-imapd.conf:3: invalid value \"sometimes\" for option 'backup_sync_try_imap': expected a switch (yes/no, on/off, true/false, 1/0, t/f)"
    );
    let e = c
        .channel_duration_s(
            Some("backup"),
            "sync_repeat_interval",
            DurationUnit::Seconds,
        )
        .unwrap_err();
    assert!(e.to_string().starts_with("/etc/test-imapd.conf:4:"), "{e}");

    // configdirectory has no default.
    let c = parse("servername: x\n").unwrap();
    let e = c.configdirectory().unwrap_err();
    assert_eq!(
        e.to_string(),
        "option 'configdirectory' is not set in configuration file /etc/test-imapd.conf"
    );
    let e = c.require_str("sync_host").unwrap_err();
    assert!(matches!(e, ConfigError::Missing { .. }));
    // A typed read of a key nobody knows and nobody set.
    assert!(matches!(
        c.get_bool("corvid_nonesuch").unwrap_err(),
        ConfigError::NoDefault { .. }
    ));
    assert!(c.get_bool_or("corvid_nonesuch", true).unwrap());
    // A missing main file.
    let e = Config::load("/nonexistent/imapd.conf").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("can't read configuration file /nonexistent/imapd.conf"),
        "{e}"
    );
}

#[test]
fn oversized_file_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.conf");
    std::fs::write(&p, "a: b\n".repeat(100)).unwrap();
    let opts = LoadOptions {
        file_bytes_max: 100,
        ..LoadOptions::default()
    };
    assert!(matches!(
        Config::load_with(&p, &opts).unwrap_err(),
        ConfigError::TooLarge { .. }
    ));
}

#[test]
fn non_utf8_line_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("latin1.conf");
    std::fs::write(&p, b"a: b\nservername: caf\xe9\n").unwrap();
    let e = Config::load(&p).unwrap_err();
    assert!(
        matches!(e, ConfigError::NotUtf8 { ref origin } if origin.line == 2),
        "{e}"
    );
}

#[test]
fn secrets_never_shown() {
    let c = parse(SYNC_MASTER).unwrap();
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("replpass") && !dbg.contains("backuppass"),
        "{dbg}"
    );
    assert!(dbg.contains("<redacted>") && dbg.contains("master.lab"));
    // A secret-named key with a bad value does not echo it.
    let c = parse("backup_sync_password: hunter2\n").unwrap();
    let e = c.get_int("backup_sync_password").unwrap_err();
    assert!(
        !e.to_string().contains("hunter2") && !format!("{e:?}").contains("hunter2"),
        "{e}"
    );
}

/// A missing peer skips the test, except under CI (CI=true), where the
/// peers are installed and a skip would hide a failure.
fn skip(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason} (CI=true: this live test must run)");
    }
    eprintln!("skipped: {reason}");
}

/// The imapd.conf Debian's cyrus-imapd package ships.
#[test]
fn debian_shipped_imapd_conf() {
    let path = Path::new("/etc/imapd.conf");
    if !path.exists() {
        skip("/etc/imapd.conf not present (apt-get install cyrus-common)");
        return;
    }
    let c = Config::load(path).unwrap();
    assert_eq!(c.configdirectory().unwrap(), Path::new("/var/lib/cyrus"));
    assert_eq!(c.default_partition(), Some("default"));
    assert_eq!(
        c.partition_path("default"),
        Some(Path::new("/var/spool/cyrus/mail"))
    );
    assert!(c.partitions().iter().any(|p| p.name == "news"));
    assert_eq!(c.get_str("sasl_pwcheck_method"), Some("auxprop"));
    assert!(c.get_bool("hashimapspool").unwrap());
    assert!(c.admins().ids().is_empty());
}
