//! The one corvid executable.
//!
//! `corvid TOOL [flags]` runs a tool. Invoked through a link whose name is a
//! tool's own (`mupdate`, `sync_client`, `sync_server`, `backupd`, `dsync`)
//! it behaves as that tool, so it drops into a cyrus.conf in place of the
//! daemon it replaces. This file only picks the tool; each tool's module
//! parses its flags and hands over to a library function.
#![forbid(unsafe_code)]

mod logging;
mod observe;
mod tools;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    // Linked under a tool's own name: act as that tool, argv unchanged.
    if invoked_as != "corvid" && tools::find(&invoked_as).is_some() {
        return tools::run(&invoked_as, args);
    }
    if args.len() < 2 {
        eprintln!("{}", tools::usage());
        return ExitCode::from(2);
    }
    let tool = args.remove(1).to_string_lossy().into_owned();
    match tool.as_str() {
        "-h" | "--help" | "help" => {
            println!("{}", tools::usage());
            ExitCode::SUCCESS
        }
        "-V" | "--version" => {
            println!("corvid {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            // argv[0] becomes the tool name so its usage and errors read as the tool's own.
            args[0] = OsString::from(&tool);
            tools::run(&tool, args)
        }
    }
}
