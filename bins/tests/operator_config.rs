//! `corvid config check` and `TOOL --help`, run as an administrator would:
//! the real binary, a config file on disk, exit codes and printed lines.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

fn corvid() -> &'static str {
    env!("CARGO_BIN_EXE_corvid")
}

fn check(conf: &Path, extra: &[&str]) -> Output {
    Command::new(corvid())
        .args(["config", "check", "-C"])
        .arg(conf)
        .args(extra)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_good_config_prints_the_effective_configuration_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("imapd.conf");
    std::fs::write(
        &conf,
        "configdirectory: /var/lib/cyrus\npartition-default: /var/spool/cyrus\nsync_host: replica\nsync_password: hunter2\n",
    )
    .unwrap();
    let out = check(&conf, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let c = conf.display();
    assert!(
        stdout.contains(&format!("configdirectory: /var/lib/cyrus    # {c}:1\n")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("sync_host: replica    # {c}:3\n")));
    assert!(stdout.contains(&format!("sync_password: <hidden>    # {c}:4\n")));
    assert!(stdout.contains("sync_timeout: 30m    # (default)\n"));
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    assert!(stderr.contains(": 0 error(s), 0 warning(s)"), "{stderr}");
}

#[test]
fn a_misspelt_key_fails_with_file_line_and_the_nearest_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("imapd.conf");
    std::fs::write(
        &conf,
        "configdirectory: /var/lib/cyrus\n# replication\nsync_hots: replica\nmy_local_note: x\n",
    )
    .unwrap();
    let out = check(&conf, &["-q"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(out.stdout.is_empty(), "-q prints only findings");
    assert!(
        stderr.contains(&format!(
            "{}:3: error: unknown option 'sync_hots'; did you mean 'sync_host'?",
            conf.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!(
        "{}:4: warning: unknown option 'my_local_note'",
        conf.display()
    )));
    assert!(stderr.contains(": 1 error(s), 1 warning(s)"));
}

#[test]
fn warnings_pass_unless_strict() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("imapd.conf");
    std::fs::write(&conf, "configdirectory: /c\ntls_cert_file: /etc/x.pem\n").unwrap();
    assert_eq!(check(&conf, &["-q"]).status.code(), Some(0));
    let strict = check(&conf, &["-q", "--strict"]);
    assert_eq!(strict.status.code(), Some(78));
    assert!(text(&strict.stderr).contains("deprecated; use 'tls_server_cert'"));
}

#[test]
fn a_file_cyrus_refuses_to_load_fails_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("imapd.conf");
    std::fs::write(&conf, "configdirectory: /c\nsync_log: perhaps\n").unwrap();
    let out = check(&conf, &[]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:2: invalid value \"perhaps\" for option 'sync_log'",
            conf.display()
        )),
        "{stderr}"
    );
    let missing = check(&dir.path().join("nope.conf"), &[]);
    assert_eq!(missing.status.code(), Some(78));
}

#[test]
fn the_ident_selects_service_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("imapd.conf");
    std::fs::write(
        &conf,
        "configdirectory: /c\nsync_timeout: 5m\nreplica_sync_timeout: 1m\n",
    )
    .unwrap();
    let out = check(&conf, &["-n", "replica"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("replica_sync_timeout: 1m"));
}

/// Flags a tool's own parser accepts, from its clap `-h` summary.
fn clap_flags(tool: &str) -> BTreeSet<String> {
    let out = Command::new(corvid()).args([tool, "-h"]).output().unwrap();
    let help = text(&out.stdout);
    help.split_whitespace()
        .map(|w| w.split('=').next().unwrap())
        .map(|w| w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')))
        .filter(|w| {
            (w.starts_with("--") && w.len() > 2 && w != &"--help" && w != &"--version")
                || (w.len() == 2 && w.starts_with('-') && w != &"-h" && w != &"-V")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_replaced_program_has_a_man_style_help_listing_every_flag() {
    for tool in [
        "mupdate",
        "sync_server",
        "sync_client",
        "backupd",
        "dsync",
        "dsync-server",
    ] {
        let out = Command::new(corvid())
            .args([tool, "--help"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{tool}");
        let page = text(&out.stdout);
        for section in [
            "NAME\n",
            "SYNOPSIS\n",
            "DESCRIPTION\n",
            "OPTIONS\n",
            "SEE ALSO\n",
        ] {
            assert!(page.contains(section), "{tool}: no {section}");
        }
        // Linked under its own name, the page is the same.
        assert!(page.contains(&format!("       {tool} ")), "{tool}");
        // Every flag the tool's parser takes is documented (dsync parses by hand).
        if !tool.starts_with("dsync") {
            for flag in clap_flags(tool) {
                assert!(
                    page.contains(&flag),
                    "{tool} --help does not document {flag}"
                );
            }
        }
    }
    // Tools without an original page answer --help with their own summary.
    let out = Command::new(corvid())
        .args(["config", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("check"));
}
