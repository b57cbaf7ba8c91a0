//! `corvid mupdate-client`: one MUPDATE command from the shell, against a
//! corvid or Cyrus MUPDATE server, logged in as the daemons log in.
//!
//! ```text
//! corvid mupdate-client [-C imapd.conf] [--server HOST[:PORT]] [--authname A]
//!     [--username U] [--password P | --password-file F] COMMAND ARGS…
//!
//!   find NAME                       list [LOCATION-PREFIX]
//!   reserve NAME LOCATION           activate NAME LOCATION ACL
//!   deactivate NAME LOCATION        delete NAME
//! ```
//!
//! Server and credentials default to the imapd.conf keys a backend or a
//! slave uses: `mupdate_server` (`host[:port][/…]`), `mupdate_port` (3905),
//! `mupdate_authname`, `mupdate_username` (the authorization id; the
//! authname if unset), `mupdate_password`. Login is SASL PLAIN, as Cyrus's
//! clients send it (`AUTHENTICATE "PLAIN" {n+}` with the initial response).
//!
//! Output, one line per entry, fields separated by a tab:
//! `MAILBOX name location acl` or `RESERVE name location`; the ACL is
//! printed with its own tabs as spaces (`alice lrs anyone lr`), so every
//! line has a fixed number of fields. Names are Cyrus internal names
//! (`user.alice`).
//!
//! Exit status: 0 OK; 1 the server said NO (its text on stderr); 2 BAD;
//! 64 usage; 69 the server cannot be reached or refused the login; 78 a
//! configuration error.
//!
//! Protocol: `proto::mupdate` (the codec the daemons use); this file only
//! parses flags, connects and prints.

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use io_tokio::config::{Config, LoadOptions};
use proto::frame::{Event, Framer};
use proto::mupdate::{self, parse_response, Command, Form, Response, Status};

/// One MUPDATE command against a MUPDATE server.
#[derive(Debug, Parser)]
#[command(name = "mupdate-client")]
struct Args {
    /// imapd.conf with mupdate_server and the credentials.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// Server `host[:port]` (default: mupdate_server, mupdate_port).
    #[arg(long)]
    server: Option<String>,
    /// Authentication id (default: mupdate_authname).
    #[arg(long)]
    authname: Option<String>,
    /// Authorization id (default: mupdate_username, else the authname).
    #[arg(long)]
    username: Option<String>,
    /// Password (default: mupdate_password).
    #[arg(long)]
    password: Option<String>,
    /// Read the password from this file's first line.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Seconds to wait for the server at each step.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    op: Op,
}

#[derive(Debug, Subcommand)]
enum Op {
    /// FIND NAME: prints the entry, if any.
    Find { name: String },
    /// LIST [PREFIX]: every entry whose location starts with PREFIX.
    List { prefix: Option<String> },
    /// RESERVE NAME LOCATION.
    Reserve { name: String, location: String },
    /// ACTIVATE NAME LOCATION ACL (ACL in Cyrus's `id<TAB>rights<TAB>` form;
    /// spaces between id and rights are turned into tabs).
    Activate {
        name: String,
        location: String,
        acl: String,
    },
    /// DEACTIVATE NAME LOCATION.
    Deactivate { name: String, location: String },
    /// DELETE NAME.
    Delete { name: String },
}

/// Why the tool stopped, with its exit status.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Config(#[from] io_tokio::config::ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    No(String),
    #[error("{0}")]
    Bad(String),
}

impl Error {
    fn status(&self) -> u8 {
        match self {
            Error::No(_) => 1,
            Error::Bad(_) => 2,
            Error::Usage(_) => 64,
            Error::Unavailable(_) => 69,
            Error::Config(_) => 78,
        }
    }
}

/// Entry point.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mupdate-client: {e}");
            ExitCode::from(e.status())
        }
    }
}

/// The server address and PLAIN credentials.
struct Login {
    addr: String,
    authname: String,
    username: String,
    password: String,
}

fn login_settings(args: &Args) -> Result<Login, Error> {
    // imapd.conf is optional when everything is on the command line.
    let need_conf = args.server.is_none()
        || args.authname.is_none()
        || (args.password.is_none() && args.password_file.is_none());
    let conf = if need_conf {
        Some(Config::load_with(
            &args.config,
            &LoadOptions {
                ident: Some("mupdate".into()),
                ..LoadOptions::default()
            },
        )?)
    } else {
        None
    };
    let get = |k: &str| conf.as_ref().and_then(|c| c.get_str(k)).map(str::to_owned);
    let server = args
        .server
        .clone()
        .or_else(|| get("mupdate_server"))
        .ok_or_else(|| Error::Usage("no --server and no mupdate_server in imapd.conf".into()))?;
    let hostport = server.split('/').next().unwrap_or("").to_owned();
    let addr = if hostport.contains(':') {
        hostport
    } else {
        let port = get("mupdate_port").unwrap_or_else(|| "3905".into());
        format!("{hostport}:{port}")
    };
    let authname = args
        .authname
        .clone()
        .or_else(|| get("mupdate_authname"))
        .ok_or_else(|| {
            Error::Usage("no --authname and no mupdate_authname in imapd.conf".into())
        })?;
    let username = args
        .username
        .clone()
        .or_else(|| get("mupdate_username"))
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| authname.clone());
    let password = match (&args.password, &args.password_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| Error::Usage(format!("{}: {e}", f.display())))?
            .lines()
            .next()
            .unwrap_or("")
            .to_owned(),
        (None, None) => get("mupdate_password").unwrap_or_default(),
    };
    Ok(Login {
        addr,
        authname,
        username,
        password,
    })
}

struct Conn {
    s: TcpStream,
    framer: Framer,
    n: u32,
}

impl Conn {
    fn next(&mut self) -> Result<Response, Error> {
        loop {
            match self.framer.poll_event() {
                Ok(Some(Event::Message(m))) => {
                    return parse_response(&m)
                        .map_err(|e| Error::Unavailable(format!("bad response: {e}")))
                }
                Ok(Some(other)) => return Err(Error::Unavailable(format!("unexpected {other:?}"))),
                Ok(None) => {}
                Err(e) => return Err(Error::Unavailable(format!("bad response: {e}"))),
            }
            let mut buf = [0u8; 65536];
            let n = self
                .s
                .read(&mut buf)
                .map_err(|e| Error::Unavailable(format!("reading from the server: {e}")))?;
            if n == 0 {
                return Err(Error::Unavailable(
                    "the server closed the connection".into(),
                ));
            }
            self.framer.handle_input(&buf[..n]);
        }
    }

    /// Sends `cmd`; returns the data responses and the tagged reply.
    fn run(&mut self, cmd: &Command) -> Result<(Vec<Response>, Status, String), Error> {
        self.n += 1;
        let tag = format!("C{}", self.n);
        self.s
            .write_all(&cmd.encode(tag.as_bytes(), Form::NonSync))
            .map_err(|e| Error::Unavailable(format!("writing to the server: {e}")))?;
        let mut data = Vec::new();
        loop {
            match self.next()? {
                Response::Reply(r) if r.tag[..] == *tag.as_bytes() => {
                    let text = r
                        .text
                        .as_ref()
                        .map(|t| String::from_utf8_lossy(t.value()).into_owned())
                        .unwrap_or_default();
                    return Ok((data, r.status, text));
                }
                Response::Reply(r) if r.status == Status::Bye => {
                    return Err(Error::Unavailable(format!(
                        "server said BYE {}",
                        reply_text(&r)
                    )))
                }
                other => data.push(other),
            }
        }
    }
}

fn reply_text(r: &mupdate::Reply) -> String {
    r.text
        .as_ref()
        .map(|t| String::from_utf8_lossy(t.value()).into_owned())
        .unwrap_or_default()
}

fn connect(login: &Login, timeout: Duration) -> Result<Conn, Error> {
    let s = TcpStream::connect(&login.addr)
        .map_err(|e| Error::Unavailable(format!("{}: {e}", login.addr)))?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(timeout));
    let mut c = Conn {
        s,
        framer: Framer::new(mupdate::client_frame_options()),
        n: 0,
    };
    loop {
        match c.next()? {
            Response::Ready { .. } => break,
            Response::Reply(r) if r.status == Status::Bye => {
                return Err(Error::Unavailable(format!(
                    "{}: server said BYE {}",
                    login.addr,
                    reply_text(&r)
                )))
            }
            _ => {}
        }
    }
    let mut ir = Vec::new();
    ir.extend_from_slice(login.username.as_bytes());
    ir.push(0);
    ir.extend_from_slice(login.authname.as_bytes());
    ir.push(0);
    ir.extend_from_slice(login.password.as_bytes());
    let (_, st, text) = c.run(&Command::Authenticate {
        mechanism: "PLAIN".into(),
        initial: Some(proto::sasl::encode(&ir).into()),
    })?;
    if st != Status::Ok {
        return Err(Error::Unavailable(format!(
            "{}: login as {} refused: {text}",
            login.addr, login.authname
        )));
    }
    Ok(c)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Cyrus's ACL form from a shell-friendly one: `alice lrs anyone lr` (or
/// already tab-separated) → `alice\tlrs\tanyone\tlr\t`.
fn acl_arg(s: &str) -> Bytes {
    if s.contains('\t') || s.is_empty() {
        return b(s);
    }
    let mut out = String::new();
    for w in s.split_whitespace() {
        out.push_str(w);
        out.push('\t');
    }
    b(&out)
}

fn print_entry(r: &Response) {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match r {
        Response::Mailbox {
            name,
            location,
            acl,
            ..
        } => {
            let acl = lossy(acl.value());
            let acl = acl.trim_end_matches('\t').replace('\t', " ");
            println!(
                "MAILBOX\t{}\t{}\t{}",
                lossy(name.value()),
                lossy(location.value()),
                acl
            );
        }
        Response::Reserve { name, location, .. } => {
            println!(
                "RESERVE\t{}\t{}",
                lossy(name.value()),
                lossy(location.value())
            );
        }
        Response::Delete { name, .. } => println!("DELETE\t{}", lossy(name.value())),
        _ => {}
    }
}

fn run(args: Args) -> Result<(), Error> {
    let login = login_settings(&args)?;
    let mut c = connect(&login, Duration::from_secs(args.timeout.max(1)))?;
    let cmd = match &args.op {
        Op::Find { name } => Command::Find { name: b(name) },
        Op::List { prefix } => Command::List {
            prefix: prefix.as_deref().map(b),
        },
        Op::Reserve { name, location } => Command::Reserve {
            name: b(name),
            location: b(location),
        },
        Op::Activate {
            name,
            location,
            acl,
        } => Command::Activate {
            name: b(name),
            location: b(location),
            acl: acl_arg(acl),
        },
        Op::Deactivate { name, location } => Command::Deactivate {
            name: b(name),
            location: b(location),
        },
        Op::Delete { name } => Command::Delete { name: b(name) },
    };
    let (data, st, text) = c.run(&cmd)?;
    for r in &data {
        print_entry(r);
    }
    let _ = c.run(&Command::Logout);
    match st {
        Status::Ok => Ok(()),
        Status::No => Err(Error::No(format!("NO {text}"))),
        _ => Err(Error::Bad(format!("BAD {text}"))),
    }
}
