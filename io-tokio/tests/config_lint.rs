//! `config::lint`: misspelt keys get the nearest known key and their file
//! and line, Cyrus-typed values are checked as Cyrus checks them, and the
//! option table matches the installed Cyrus (`cyr_info conf-default`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use io_tokio::config::lint::{self, Problem, Severity, Source};
use io_tokio::config::{known_keys, Config, LoadOptions};

fn findings(text: &str) -> Vec<lint::Finding> {
    let conf = Config::parse_str(text, "imapd.conf", &LoadOptions::default()).expect("loads");
    lint::check(&conf)
}

fn one(text: &str) -> lint::Finding {
    let f = findings(text);
    assert_eq!(f.len(), 1, "{f:#?}");
    f.into_iter().next().unwrap()
}

#[test]
fn a_clean_cyrus_config_has_no_findings() {
    let f = findings(
        "configdirectory: /var/lib/cyrus\n\
         partition-default: /var/spool/cyrus/mail\n\
         backuppartition-b1: /var/spool/cyrus/backup\n\
         sync_log: yes\n\
         replica_sync_host: replica.example.com\n\
         sync_server_sasl_mech_list: PLAIN\n\
         sasl_pwcheck_method: saslauthd\n\
         sasl_sql_engine: mysql\n\
         event_extra_params: timestamp service\n\
         delete_mode: delayed\n\
         corvid_metrics_listen: 127.0.0.1:9105\n",
    );
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn a_misspelt_key_names_file_line_and_the_nearest_key() {
    let f = one("configdirectory: /var/lib/cyrus\n# a comment\nsync_hots: replica\n");
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(f.key, "sync_hots");
    assert_eq!(
        f.problem,
        Problem::Misspelt {
            nearest: "sync_host"
        }
    );
    let o = f.origin.clone().unwrap();
    assert_eq!(o.line, 3);
    assert_eq!(
        f.to_string(),
        "imapd.conf:3: error: unknown option 'sync_hots'; did you mean 'sync_host'? \
         (Cyrus ignores unknown options silently)"
    );
}

#[test]
fn misspellings_of_each_kind_of_key_are_caught() {
    for (typo, nearest) in [
        ("defaultpartiton", "defaultpartition"),
        ("sasl_pwcheck_methd", "sasl_pwcheck_method"),
        ("corvid_metrics_lsten", "corvid_metrics_listen"),
        ("admnis", "admins"),
        ("replica_sync_prot", "sync_port"),
    ] {
        let f = one(&format!("configdirectory: /c\n{typo}: x\n"));
        assert_eq!(f.problem, Problem::Misspelt { nearest }, "{typo}");
        assert_eq!(f.severity, Severity::Error);
    }
}

#[test]
fn an_unknown_key_far_from_any_option_is_a_warning() {
    let f = one("configdirectory: /c\nmy_site_local_thing: 1\n");
    assert_eq!(f.severity, Severity::Warning);
    assert_eq!(f.problem, Problem::Unknown);
}

#[test]
fn values_cyrus_refuses_are_errors_with_the_expected_form() {
    for (line, expected) in [
        ("allowanonymouslogin: maybe", "a switch"),
        ("maxmessagesize: 10MB", "an integer"),
        ("imapidlepoll: soon", "a duration"),
        ("caldav_allowscheduling: sometimes", "one of off, on, apple"),
        (
            "event_extra_params: timestamp nonsense",
            "any of bodyStructure",
        ),
        ("corvid_metrics_listen: localhost", "HOST:PORT"),
        ("corvid_metrics_listen: 127.0.0.1:0", "HOST:PORT"),
        ("replica_sync_log: perhaps", "a switch"),
    ] {
        let f = one(&format!("configdirectory: /c\n{line}\n"));
        assert_eq!(f.severity, Severity::Error, "{line}");
        match &f.problem {
            Problem::BadValue { expected: e, .. } => {
                assert!(e.starts_with(expected), "{line}: {e}")
            }
            p => panic!("{line}: {p:?}"),
        }
        assert_eq!(f.origin.unwrap().line, 2);
    }
}

#[test]
fn secrets_are_never_shown_in_findings() {
    let f = one("configdirectory: /c\nreplica_sync_password: hunter2\nsync_passwrd: hunter2\n");
    assert!(!f.to_string().contains("hunter2"));
    assert_eq!(
        f.problem,
        Problem::Misspelt {
            nearest: "sync_password"
        }
    );
}

#[test]
fn deprecated_options_and_relative_paths_are_warnings() {
    let f = findings("configdirectory: var/lib/cyrus\ntls_cert_file: /etc/c.pem\n");
    assert_eq!(f.len(), 2, "{f:#?}");
    assert!(f.iter().all(|f| f.severity == Severity::Warning));
    assert!(f.iter().any(|f| f.problem
        == Problem::Deprecated {
            use_instead: "tls_server_cert"
        }));
}

#[test]
fn a_missing_configdirectory_is_an_error() {
    let f = one("admins: cyrus\n");
    assert_eq!(f.problem, Problem::Missing);
    assert_eq!(f.severity, Severity::Error);
    assert!(f.origin.is_none());
}

#[test]
fn the_effective_configuration_marks_defaults_and_hides_secrets() {
    let conf = Config::parse_str(
        "configdirectory: /c\nsync_password: hunter2\nsync_host: r\n",
        "imapd.conf",
        &LoadOptions::default(),
    )
    .unwrap();
    let eff = lint::effective(&conf);
    let get = |k: &str| eff.iter().find(|e| e.key == k).unwrap().clone();
    assert_eq!(get("sync_password").value, "<hidden>");
    assert!(matches!(get("sync_host").source, Source::Set(ref o) if o.line == 3));
    let d = get("sync_timeout");
    assert_eq!((d.value.as_str(), d.source), ("30m", Source::Default));
    let keys: Vec<_> = eff.iter().map(|e| e.key.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

#[test]
fn distance_is_symmetric_and_zero_only_on_equal() {
    for (a, b) in [("sync_host", "sync_port"), ("ab", "ba"), ("", "x")] {
        assert_eq!(lint::distance(a, b), lint::distance(b, a));
        assert!(lint::distance(a, b) > 0);
    }
}

const CYR_INFO: &str = "/usr/lib/cyrus/bin/cyr_info";

/// Every option the installed Cyrus prints is one lint knows (no false
/// "unknown"), and every one it knows is one Cyrus prints (no stale names).
#[test]
fn the_option_table_is_the_installed_cyrus_option_set() {
    if !Path::new(CYR_INFO).exists() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{CYR_INFO} missing (CI=true: this live test must run)");
        }
        eprintln!("skipped: {CYR_INFO} not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("min.conf");
    std::fs::write(&f, format!("configdirectory: {}\n", dir.path().display())).unwrap();
    let out = Command::new(CYR_INFO)
        .arg("-C")
        .arg(&f)
        .arg("conf-default")
        .output()
        .unwrap();
    assert!(out.status.success());
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.to_owned()))
        .collect();
    assert!(names.len() > 500, "{}", names.len());
    // Set each one (with its own default printed value where it has one)
    // and check that none is reported unknown or misspelt.
    // corvid's own keys are type-checked at load; the rest is lint's job.
    let corvid: BTreeSet<&str> = known_keys().map(|k| k.0).collect();
    let mut text = format!("configdirectory: {}\n", dir.path().display());
    for n in &names {
        if !corvid.contains(n.as_str()) {
            text.push_str(&format!("{n}: 1\n"));
        }
    }
    let conf = Config::parse_str(&text, "all.conf", &LoadOptions::default()).unwrap();
    for f in lint::check(&conf) {
        assert!(
            !matches!(f.problem, Problem::Unknown | Problem::Misspelt { .. }),
            "{f}"
        );
    }
    assert_eq!(lint::known_cyrus_option_count(), names.len());
}
