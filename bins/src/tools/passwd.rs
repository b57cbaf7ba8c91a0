//! `corvid passwd`: add, change or delete a user in corvid's password file
//! (the file `corvid_passwd_file:` names in imapd.conf). The file format,
//! hashing and the atomic rewrite are `io_tokio::auth::PasswdFile`; this
//! only parses flags and reads the password.
//!
//! `corvid passwd FILE USER` reads the new password as one line from
//! standard input (so scripts can pipe it in; on a terminal it prompts on
//! standard error — the line is echoed, as with any plain read).
//! `corvid passwd -d FILE USER` deletes the user.

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use io_tokio::auth::{PasswdError, PasswdFile, Secret};

/// Add, change (password read from stdin) or delete a user of corvid's password file.
#[derive(Debug, Parser)]
#[command(name = "passwd")]
struct Args {
    /// Delete USER instead of setting a password.
    #[arg(short = 'd', long = "delete")]
    delete: bool,
    /// The password file (created mode 0600 if missing).
    file: PathBuf,
    /// The user, exactly as clients authenticate (e.g. repl or alice@example.com).
    user: String,
}

/// Why the tool failed, for its one error line.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Passwd(#[from] PasswdError),
    #[error("can't read the password from standard input: {0}")]
    Stdin(std::io::Error),
    #[error("no password given on standard input")]
    EmptyPassword,
}

/// Reads one line, without its line ending, as the password.
fn read_password(input: &mut impl BufRead) -> Result<Secret, Error> {
    let mut line = Vec::new();
    input.read_until(b'\n', &mut line).map_err(Error::Stdin)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    let password = Secret::new(line);
    if password.is_empty() {
        return Err(Error::EmptyPassword);
    }
    Ok(password)
}

fn run(args: &Args, input: &mut impl BufRead) -> Result<&'static str, Error> {
    let file = PasswdFile::new(&args.file);
    if args.delete {
        file.delete_user(&args.user)?;
        return Ok("deleted");
    }
    let password = read_password(input)?;
    let existed = file.users()?.contains(&args.user);
    file.set_password(&args.user, &password)?;
    Ok(if existed { "password changed" } else { "added" })
}

pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let stdin = std::io::stdin();
    if !args.delete && stdin.is_terminal() {
        eprint!("Password for {} (will be echoed): ", args.user);
        let _ = std::io::stderr().flush();
    }
    match run(&args, &mut stdin.lock()) {
        Ok(what) => {
            eprintln!("passwd: {}: {what} in {}", args.user, args.file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("passwd: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("passwd").chain(v.iter().copied())).unwrap()
    }

    #[test]
    fn add_change_delete() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        let fs = f.to_str().unwrap();
        assert_eq!(
            run(&args(&[fs, "repl"]), &mut &b"secret\n"[..]).unwrap(),
            "added"
        );
        assert_eq!(
            run(&args(&[fs, "repl"]), &mut &b"other\r\n"[..]).unwrap(),
            "password changed"
        );
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("repl:$argon2id$") && !text.contains("other"));
        assert_eq!(
            run(&args(&["-d", fs, "repl"]), &mut &b""[..]).unwrap(),
            "deleted"
        );
        let e = run(&args(&["-d", fs, "repl"]), &mut &b""[..]).unwrap_err();
        assert!(e.to_string().contains("no user \"repl\""), "{e}");
        assert!(matches!(
            run(&args(&[fs, "x"]), &mut &b"\n"[..]),
            Err(Error::EmptyPassword)
        ));
        assert!(matches!(
            run(&args(&[fs, "x"]), &mut &b""[..]),
            Err(Error::EmptyPassword)
        ));
        // No trailing newline: the whole input is the password.
        assert_eq!(run(&args(&[fs, "y"]), &mut &b"pw"[..]).unwrap(), "added");
    }

    #[test]
    fn password_line_endings() {
        assert_eq!(
            read_password(&mut &b"a b\nrest"[..]).unwrap().expose(),
            b"a b"
        );
        assert_eq!(read_password(&mut &b"ab\r\n"[..]).unwrap().expose(), b"ab");
        assert_eq!(read_password(&mut &b"ab\r"[..]).unwrap().expose(), b"ab\r");
    }
}
