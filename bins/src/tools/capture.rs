//! `corvid capture`: a logging TCP relay between a real client and a real
//! server, writing byte-exact transcripts of their traffic (inflating
//! COMPRESS DEFLATE). The relay itself is `io_tokio::capture`; this only
//! parses flags, names the files and prints a line per connection.
//!
//! Files per connection, in `--out`: connection 1 is `NAME.txt`,
//! `NAME.c2s.bin`, `NAME.s2c.bin`; connection k > 1 is `NAME-k.*`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use io_tokio::capture::{
    self, CaptureError, Options, TranscriptOptions, TranscriptPaths, TranscriptWriter,
};

/// Relay TCP from --listen to --target and write a transcript per connection.
#[derive(Debug, Parser)]
#[command(name = "capture")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:25030.
    #[arg(long)]
    listen: String,
    /// The real server, HOST:PORT.
    #[arg(long)]
    target: String,
    /// Directory for the transcript files (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Base name of the files.
    #[arg(long)]
    name: String,
    /// Exit after this many connections have finished (default: run until killed).
    #[arg(long)]
    connections: Option<u64>,
    /// Same as --connections 1.
    #[arg(long)]
    once: bool,
    /// Header: who the server is, e.g. "Cyrus IMAP 3.6.1 (Debian 3.6.1-4+deb12u5) sync_server".
    #[arg(long)]
    peer: Option<String>,
    /// Header: the client command line that produced the traffic.
    #[arg(long)]
    command: Option<String>,
    /// Header: a free-form note (repeatable), e.g. what the scenario does.
    #[arg(long)]
    note: Vec<String>,
    /// Write our pid here once listening.
    #[arg(long)]
    pidfile: Option<PathBuf>,
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
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capture: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capture: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("creating {}: {e}", args.out.display()))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    if let Some(p) = &args.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("capture: listening on {local}, relaying to {}", args.target);
    let connections = if args.once { Some(1) } else { args.connections };
    let Args {
        out,
        name,
        target,
        peer,
        command,
        note,
        ..
    } = args;
    let target_for_header = target.clone();
    let make_tap = move |n: u64, client: std::net::SocketAddr| {
        let file = if n == 1 {
            name.clone()
        } else {
            format!("{name}-{n}")
        };
        let mut header = vec![format!("corvid capture: {file}")];
        if let Some(p) = &peer {
            header.push(format!("peer: {p} at {target_for_header}"));
        } else {
            header.push(format!("peer: {target_for_header}"));
        }
        header.push(format!("date: {}", utc_now()));
        if let Some(c) = &command {
            header.push(format!("command: {c}"));
        }
        header.push(format!("connection {n} from {client}"));
        header.extend(note.iter().cloned());
        TranscriptWriter::create(
            TranscriptPaths::new(&out, &file),
            &header,
            TranscriptOptions::default(),
        )
    };
    let on_done = |n: u64, result: Result<(capture::Summary, TranscriptWriter), CaptureError>| {
        match result {
        Ok((s, writer)) => match writer.finish() {
            Ok(paths) => println!(
                "capture: connection {n} done: c2s {} wire / {} plain bytes, s2c {} / {}, compressed {} -> {}",
                s.c2s_wire_bytes,
                s.c2s_plain_bytes,
                s.s2c_wire_bytes,
                s.s2c_plain_bytes,
                s.compressed,
                paths.txt.display()
            ),
            Err(e) => eprintln!("capture: connection {n}: {e}"),
        },
        Err(e) => eprintln!("capture: connection {n}: {e}"),
    }
    };
    capture::serve(
        listener,
        target,
        Options::default(),
        connections,
        make_tap,
        on_done,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
