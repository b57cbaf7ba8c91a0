//! `corvid config check [-C FILE] [-n IDENT] [--strict]`: reads imapd.conf
//! exactly as the daemons do, prints the effective configuration on
//! standard output (every key set, with the file and line it came from,
//! then the defaults of keys corvid reads, marked `(default)`), and prints
//! what `io_tokio::config::lint` finds on standard error: unknown and
//! misspelt keys with the nearest known key, values Cyrus would refuse,
//! deprecated options.
//!
//! Exit status: 0 when nothing is an error (warnings allowed unless
//! `--strict`), 78 (EX_CONFIG) when the file cannot be loaded or a finding
//! is an error, 64 on bad flags. It never prints a secret's value and never
//! writes anything.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use io_tokio::config::lint::{self, Severity, Source};
use io_tokio::config::{Config, LoadOptions};

/// Check an imapd.conf and print the effective configuration.
#[derive(Debug, Parser)]
#[command(name = "config")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load FILE as the daemons would, print the effective configuration,
    /// report unknown/misspelt keys and bad values with file:line.
    Check {
        /// The configuration file.
        #[arg(short = 'C', default_value = "/etc/imapd.conf")]
        config: PathBuf,
        /// Read as the service (ident) NAME: `NAME_key` overrides `key`, as
        /// under Cyrus master(8) for the SERVICES entry NAME.
        #[arg(short = 'n')]
        ident: Option<String>,
        /// Warnings (unknown keys, deprecated options) fail too.
        #[arg(long)]
        strict: bool,
        /// Print only the findings, not the effective configuration.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
}

pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let Command::Check {
        config,
        ident,
        strict,
        quiet,
    } = args.command;
    let opts = LoadOptions {
        ident,
        ..LoadOptions::default()
    };
    let conf = match Config::load_with(&config, &opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config: error: {e}");
            return ExitCode::from(78);
        }
    };
    if !quiet {
        for line in lint::effective(&conf) {
            match line.source {
                Source::Set(origin) => println!("{}: {}    # {origin}", line.key, line.value),
                Source::Default => println!("{}: {}    # (default)", line.key, line.value),
            }
        }
    }
    let findings = lint::check(&conf);
    for f in &findings {
        eprintln!("config: {f}");
    }
    let errors = lint::errors(&findings);
    let warnings = findings.len() - errors;
    eprintln!(
        "config: {}: {errors} error(s), {warnings} warning(s)",
        config.display()
    );
    let failed = errors > 0 || (strict && findings.iter().any(|f| f.severity == Severity::Warning));
    if failed {
        ExitCode::from(78)
    } else {
        ExitCode::SUCCESS
    }
}
