//! The tool table: every name corvid answers to, and what runs for it.
//!
//! A tool is a function from its argv (argv[0] is the tool's name) to an exit
//! code. Tools that corvid does not provide yet are listed as such, so that
//! an administrator who links one in gets a clear refusal and a non-zero exit,
//! never a silent no-op.

mod backup_tools;
mod backupd;
mod capture;
mod config;
mod csync_common;
mod dsync;
mod help;
mod mupdate;
mod mupdate_client;
mod passwd;
mod store;
mod sync_client;
mod sync_server;

use std::ffi::OsString;
use std::process::ExitCode;

/// What a name in the table does.
pub enum Tool {
    /// Runs: the tool's entry point.
    Ready(fn(Vec<OsString>) -> ExitCode),
    /// Named by the mission but not built yet: refuse clearly.
    NotYet,
}

/// Every tool name, with a one-line description, in the order `corvid help` lists them.
const TABLE: &[(&str, &str)] = &[
    (
        "mupdate",
        "MUPDATE server of a Cyrus Murder (master, slave)",
    ),
    (
        "mupdate-load",
        "benchmark MUPDATE masters side by side (load, LIST, FIND, push latency)",
    ),
    (
        "mupdate-client",
        "script MUPDATE: FIND, LIST, RESERVE, ACTIVATE, DELETE",
    ),
    ("sync_server", "Cyrus replication replica (csync)"),
    ("sync_client", "Cyrus replication client"),
    ("backupd", "csync target that keeps restorable backups"),
    (
        "backup",
        "corvid backups: list, show, verify, restore, compact",
    ),
    ("ctl_backups", "list and verify corvid backupd backups"),
    (
        "cyr_backup",
        "inspect one user's corvid backup (mailboxes, messages)",
    ),
    (
        "restore",
        "restore mailboxes from a corvid backup into a sync_server",
    ),
    ("dsync", "Dovecot-style mirror and backup"),
    ("dsync-server", "the remote side of dsync"),
    ("store", "inspect and verify a corvid store"),
    (
        "config",
        "check imapd.conf: print the effective configuration, report mistakes",
    ),
    ("passwd", "manage corvid's password file"),
    (
        "capture",
        "logging relay: byte-exact transcripts of real peers' traffic",
    ),
];

/// The entry point for `name`, or `None` if corvid does not know the name at all.
pub fn find(name: &str) -> Option<Tool> {
    if !TABLE.iter().any(|(n, _)| *n == name) {
        return None;
    }
    Some(match name {
        "backupd" => Tool::Ready(backupd::main),
        "backup" => Tool::Ready(backup_tools::main),
        "ctl_backups" => Tool::Ready(backup_tools::ctl_backups_main),
        "cyr_backup" => Tool::Ready(backup_tools::cyr_backup_main),
        "restore" => Tool::Ready(backup_tools::restore_main),
        "capture" => Tool::Ready(capture::main),
        "config" => Tool::Ready(config::main),
        "dsync" => Tool::Ready(dsync::main),
        "dsync-server" => Tool::Ready(dsync::server_main),
        "mupdate" => Tool::Ready(mupdate::main),
        "mupdate-load" => Tool::Ready(mupdate::load_main),
        "mupdate-client" => Tool::Ready(mupdate_client::main),
        "passwd" => Tool::Ready(passwd::main),
        "sync_server" => Tool::Ready(sync_server::main),
        "sync_client" => Tool::Ready(sync_client::main),
        "store" => Tool::Ready(store::main),
        _ => Tool::NotYet,
    })
}

/// Runs tool `name` with `args` (args[0] is the tool's name).
pub fn run(name: &str, args: Vec<OsString>) -> ExitCode {
    if args.get(1).is_some_and(|a| a == "--help") {
        if let Some(page) = help::page(name) {
            print!("{page}");
            return ExitCode::SUCCESS;
        }
    }
    match find(name) {
        Some(Tool::Ready(entry)) => entry(args),
        Some(Tool::NotYet) => {
            eprintln!("corvid: {name}: not implemented yet in this build of corvid");
            ExitCode::from(69) // EX_UNAVAILABLE
        }
        None => {
            eprintln!("corvid: unknown tool '{name}'\n\n{}", usage());
            ExitCode::from(2)
        }
    }
}

/// The text `corvid help` prints.
pub fn usage() -> String {
    let mut s = String::from(
        "usage: corvid TOOL [flags]   (or link corvid under a tool's name)\n\ntools:\n",
    );
    for (name, what) in TABLE {
        s.push_str(&format!("  {name:<15} {what}\n"));
    }
    s
}
