//! The config reader against Cyrus 3.6.1 itself: `cyr_info -C FILE [-n
//! IDENT] conf-all` prints the configuration exactly as Cyrus's libconfig
//! read it (or dies with libconfig's fatal error). Every config here, fixed
//! corner cases and generated ones, is read by both; both must accept or
//! both refuse, and every key corvid knows must have the same value
//! (defaults included), as must every unknown ("overflow") key.
//!
//! Skips with a printed reason when Cyrus is not installed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use io_tokio::config::{known_keys, Config, KeyKind, LoadOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, TestRng, TestRunner};

const CYR_INFO: &str = "/usr/lib/cyrus/bin/cyr_info";

/// A missing peer skips the test, except under CI (CI=true), where the
/// peers are installed and a skip would hide a failure.
fn skip(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason} (CI=true: this live test must run)");
    }
    eprintln!("skipped: {reason}");
}

fn have_cyrus() -> bool {
    if Path::new(CYR_INFO).exists() {
        return true;
    }
    skip(&format!(
        "{CYR_INFO} not installed (apt-get install cyrus-common)"
    ));
    false
}

/// Runs cyr_info; `Ok(key -> value)` (last one printed wins) or `Err(fatal message)`.
fn cyr_info(file: &Path, ident: Option<&str>, what: &str) -> Result<Vec<(String, String)>, String> {
    let mut cmd = Command::new(CYR_INFO);
    cmd.arg("-C").arg(file);
    if let Some(i) = ident {
        cmd.args(["-n", i]);
    }
    let out = cmd.arg(what).output().expect("cyr_info runs");
    if !out.status.success() {
        return Err(format!(
            "{} {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()))
        .collect())
}

/// Every imapoptions name (from `conf-default`, which needs a config too).
fn cyrus_option_names(dir: &Path) -> BTreeSet<String> {
    let f = dir.join("min.conf");
    std::fs::write(&f, format!("configdirectory: {}\n", dir.display())).unwrap();
    cyr_info(&f, None, "conf-default")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// Our value of known key `name` as cyr_info prints it.
fn ours_as_cyrus(c: &Config, name: &str, kind: KeyKind) -> String {
    match kind {
        KeyKind::Switch => if c.get_bool(name).unwrap() {
            "yes"
        } else {
            "no"
        }
        .to_owned(),
        KeyKind::Int => c.get_int(name).unwrap().to_string(),
        _ => c.get_str(name).unwrap_or("").to_owned(),
    }
}

/// Compares corvid and Cyrus on `text` (configdirectory is prepended);
/// `Ok(true)` if both accepted it, `Ok(false)` if both refused it.
fn compare(
    dir: &Path,
    options: &BTreeSet<String>,
    body: &str,
    ident: Option<&str>,
) -> Result<bool, String> {
    let text = format!("configdirectory: {}\n{body}", dir.display());
    let file = dir.join("imapd.conf");
    std::fs::write(&file, &text).unwrap();
    let theirs = cyr_info(&file, ident, "conf-all");
    let opts = LoadOptions {
        ident: ident.map(Into::into),
        ..LoadOptions::default()
    };
    let ours = Config::load_with(&file, &opts);
    let raw = Config::load(&file);
    let (theirs, ours) = match (theirs, ours) {
        (Err(_), Err(_)) => return Ok(false),
        (Err(t), Ok(_)) => return Err(format!("Cyrus refused, corvid accepted: {t}\n---\n{text}")),
        (Ok(_), Err(o)) => return Err(format!("corvid refused, Cyrus accepted: {o}\n---\n{text}")),
        (Ok(t), Ok(o)) => (t, o),
    };
    let theirs_map: BTreeMap<_, _> = theirs.iter().cloned().collect();
    for (name, kind, _default, replaced_by) in known_keys() {
        if replaced_by.is_some() {
            continue; // Cyrus prints deprecated keys oddly; their replacement is compared.
        }
        let cyrus_knows = options.contains(name);
        let Some(cyrus_value) = theirs_map.get(name) else {
            if cyrus_knows {
                return Err(format!("cyr_info did not print known option {name}"));
            }
            continue; // an overflow key (sasl_*, corvid_*) not set
        };
        if !cyrus_knows {
            // Overflow keys: Cyrus prints them raw, without ident resolution.
            let r = raw.as_ref().unwrap().get_str(name).unwrap_or("");
            if r != cyrus_value {
                return Err(format!(
                    "overflow {name}: corvid {r:?}, Cyrus {cyrus_value:?}\n---\n{text}"
                ));
            }
            continue;
        }
        let mine = ours_as_cyrus(&ours, name, kind);
        if &mine != cyrus_value {
            return Err(format!(
                "{name}: corvid {mine:?}, Cyrus {cyrus_value:?}\n---\n{text}"
            ));
        }
    }
    // Every overflow key Cyrus kept, we kept with the same value.
    for (k, v) in &theirs {
        if options.contains(k) {
            continue;
        }
        let r = raw.as_ref().unwrap().get_str(k);
        if r != Some(v.as_str()) {
            return Err(format!(
                "overflow {k}: corvid {r:?}, Cyrus {v:?}\n---\n{text}"
            ));
        }
    }
    Ok(true)
}

#[test]
fn corvid_table_names_cyrus_options() {
    if !have_cyrus() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = cyrus_option_names(dir.path());
    assert!(options.len() > 300, "{}", options.len());
    for (name, _, _, _) in known_keys() {
        let overflow = name.starts_with("sasl_")
            && !["sasl_minimum_layer", "sasl_maximum_layer"].contains(&name)
            || name.starts_with("corvid_");
        assert_eq!(options.contains(name), !overflow, "{name}");
    }
}

#[test]
fn corner_cases_agree_with_cyrus() {
    if !have_cyrus() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = cyrus_option_names(dir.path());
    let cases: &[(&str, Option<&str>)] = &[
        ("", None),
        ("   # comment\n\t\n\nsync_host: a # b   \n", None),
        ("long_key: part one \\\npart two\n", None),
        ("cont_at_eof: x\\", None),
        ("admins: \\\n", None),
        ("admins: a\\\n\n", None),
        ("admins: \\\n.", None),
        ("crlf: v\r\nsync_log: on\r\n", None),
        ("SYNC_LOG: Yes\n", None),
        ("sync_log: yesterday\nallowplaintext: offset\nhashimapspool: nah\n", None),
        ("sync_log: o\n", None),
        ("mupdate_port: 0x10\nsync_batchsize: 010\nmaxword: -5\n", None),
        ("mupdate_port: 08\n", None),
        ("mupdate_port: 99999999999999999999\n", None),
        ("mupdate_port: 0x\n", None),
        ("sync_timeout: 1h30\nbackup_retention: 90\nfailedloginpause: -1m\n", None),
        ("sync_timeout: 1w\n", None),
        ("sync_timeout: h\n", None),
        ("mupdate_config: 1\n", None),
        ("virtdomains: yes\ndelete_mode: immediate\n", None),
        ("virtdomains: Yes\n", None),
        ("backup_db: twoskip\nmboxlist_db: flat\n", None),
        ("backup_db: on\n", None),
        ("tls_cert_file: /old.pem\n", None),
        ("tls_cert_file: /old.pem\ntls_server_cert: /new.pem\n", None),
        ("tls_server_cert: /new.pem\ntls_cert_file: /old.pem\n", None),
        ("backup_db_path: {configdirectory}/b.db\nproc_path: {CONFIGDIRECTORY}/p\n", None),
        ("defaultpartition: Main\npartition-main: /a\n", None),
        ("defaultpartition: my-part\n", None),
        ("admins: a\nadmins: b\n", None),
        ("partition-x: /a\nPARTITION-X: /b\n", None),
        ("admins: generic\nmupdate_admins: special\n", Some("mupdate")),
        ("mupdate_admins: special\nadmins: generic\n", Some("mupdate")),
        ("mupdate_admins: a\nmupdate_admins: b\n", Some("mupdate")),
        ("mupdate_sync_log: 1\nsync_log: 0\n", Some("mupdate")),
        ("mupdate_sync_log: maybe\n", Some("mupdate")),
        ("MUPDATE_admins: x\n", Some("mupdate")),
        ("mupdate_server: m.example:3905\nmupdate_mupdate_server: other\n", Some("mupdate")),
        ("backup_sync_host: h\nbackup_sync_try_imap: sometimes\nsasl_pwcheck_method: saslauthd\n", None),
        ("key :x\n", None),
        ("bad key: x\n", None),
        ("novalue\n", None),
        ("empty:\n", None),
        ("empty:   \t\n", None),
        (": anonymous\n", None),
        ("@include: /nonexistent/corvid-test.conf\n", None),
        ("@define: x\n", None),
        ("a.b: x\n", None),
        ("x-y_z-9: v\n", None),
    ];
    let mut failures = Vec::new();
    for (body, ident) in cases {
        if let Err(e) = compare(dir.path(), &options, body, *ident) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n=====\n"));
}

/// Mostly values Cyrus accepts, sometimes one it refuses.
fn vals(
    good: Vec<&'static str>,
    bad: Vec<&'static str>,
) -> impl Strategy<Value = &'static str> + Clone {
    prop_oneof![6 => prop::sample::select(good), 1 => prop::sample::select(bad)]
}

fn line() -> impl Strategy<Value = String> {
    let switch_keys = prop::sample::select(vec![
        "sync_log",
        "allowplaintext",
        "sync_try_imap",
        "hashimapspool",
    ]);
    let switch_vals = vals(
        vec![
            "yes",
            "no",
            "on",
            "off",
            "true",
            "false",
            "1",
            "0",
            "t",
            "f",
            "nope",
            "yesterday",
            "oFF",
        ],
        vec!["maybe", "Yes", "o", "x"],
    );
    let int_keys = prop::sample::select(vec![
        "mupdate_port",
        "sync_batchsize",
        "maxword",
        "mupdate_retry_delay",
    ]);
    let int_vals = vals(
        vec!["0", "10", "0x1f", "010", "-3", "+7", "0X10"],
        vec!["08", "5k", "0x", "-", "12 3"],
    );
    let dur_keys =
        prop::sample::select(vec!["sync_timeout", "backup_retention", "failedloginpause"]);
    let dur_vals = vals(
        vec!["1h30m", "90", "7d", "-5m", "1h30", "0", "1d1d"],
        vec!["m", "1w", "5 m"],
    );
    let enum_keys = prop::sample::select(vec![
        "mupdate_config",
        "virtdomains",
        "delete_mode",
        "backup_db",
    ]);
    let enum_vals = vals(
        vec![
            "standard",
            "unified",
            "off",
            "on",
            "yes",
            "1",
            "no",
            "userid",
            "immediate",
            "delayed",
            "twoskip",
            "flat",
        ],
        vec!["nosuch", "Standard"],
    );
    let str_keys = prop::sample::select(vec![
        "admins",
        "servername",
        "sync_host",
        "tls_server_cert",
        "tls_cert_file",
        "backup_db_path",
        "mupdate_admins",
        "mupdate_sync_log",
        "syncserver_sync_host",
        "partition-default",
        "backup_sync_host",
        "backup_sync_try_imap",
        "corvidx_note",
        "sasl_mech_list",
        "Sync_Host",
    ]);
    let str_vals = "[!-~]([ -~]{0,10}[!-\\[\\]-~])?";
    prop_oneof![
        3 => (switch_keys, switch_vals).prop_map(|(k, v)| format!("{k}: {v}")),
        3 => (int_keys, int_vals).prop_map(|(k, v)| format!("{k}: {v}")),
        3 => (dur_keys, dur_vals).prop_map(|(k, v)| format!("{k}: {v}")),
        3 => (enum_keys, enum_vals).prop_map(|(k, v)| format!("{k}: {v}")),
        4 => (str_keys.clone(), str_vals).prop_map(|(k, v)| format!("{k}: {v}")),
        2 => (str_keys, "[a-z]{1,5}", "[a-z]{1,5}").prop_map(|(k, a, b)| format!("{k}: {a} \\\n{b}")),
        2 => prop::sample::select(vec!["# comment", "", "   ", "\t# x", "bad key: 1", "k :1", "@foo: 1", "x"])
            .prop_map(str::to_owned),
        2 => ("[ \t]{0,2}", "[a-z_-]{1,8}", "[ \t]{0,2}", "[!-~]{1,6}", "[ \t\r]{0,2}")
            .prop_map(|(a, k, b, v, c)| format!("{a}{k}:{b}{v}{c}")),
    ]
}

/// Generated configs: corvid and Cyrus agree on every one.
#[test]
fn generated_configs_agree_with_cyrus() {
    if !have_cyrus() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = cyrus_option_names(dir.path());
    let cases = std::env::var("CORVID_CYR_INFO_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    // Deterministic by default; CORVID_CYR_INFO_SEED picks another sequence.
    let seed: u64 = std::env::var("CORVID_CYR_INFO_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3905);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let config = PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let strategy = (
        prop::collection::vec(line(), 0..6),
        prop::option::of(prop::sample::select(vec!["mupdate", "syncserver"])),
    );
    let accepted = std::cell::Cell::new(0u32);
    let result = runner.run(&strategy, |(lines, ident)| {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let both_accepted =
            compare(dir.path(), &options, &body, ident).map_err(TestCaseError::fail)?;
        accepted.set(accepted.get() + u32::from(both_accepted));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nreplay: CORVID_CYR_INFO_SEED={seed} CORVID_CYR_INFO_CASES={cases} cargo test -p io-tokio --test config_cyr_info");
    }
    // The generator must produce accepted configs too, or values were never compared.
    eprintln!(
        "{} of {cases} generated configs accepted by both",
        accepted.get()
    );
    assert!(
        accepted.get() * 5 >= cases,
        "only {} of {cases} accepted",
        accepted.get()
    );
}
