//! The real peers (`scripts/peers/start.sh`) as the live tests see them:
//! the env file, commands run against the peers' instances, and mail users.
//! Shared by the live test files through `#[path = "support/peers.rs"] mod peers;`
//! (a file under `tests/support/` is not a test crate of its own). Never
//! starts anything: without an env file a test SKIPs, or fails under CI=true.
#![allow(dead_code)] // each test file uses some of it

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub struct Peers {
    env: HashMap<String, String>,
    env_path: PathBuf,
}

impl Peers {
    pub fn get(&self, k: &str) -> &str {
        self.env
            .get(k)
            .unwrap_or_else(|| panic!("peers env has no {k} (restart scripts/peers/start.sh)"))
    }

    pub fn port(&self, k: &str) -> u16 {
        self.get(k).parse().unwrap()
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(repo())
            .env("CORVID_PEERS_ENV", &self.env_path)
            .env("CORVID_PEERS_RUN", self.get("CORVID_PEERS_RUN"));
        for (k, v) in &self.env {
            if k.ends_with("_PORT") {
                c.env(k, v);
            }
        }
        c
    }

    pub fn mail(&self, args: &[&str]) {
        let out = self
            .cmd("python3")
            .arg(repo().join("scripts/peers/mail.py"))
            .args(args)
            .output()
            .expect("run mail.py");
        assert!(
            out.status.success(),
            "mail.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The master's real sync_client into `port`, whatever its exit.
    pub fn sync(&self, port: u16, args: &[&str]) -> Output {
        self.cmd("bash")
            .arg(repo().join("scripts/peers/sync-client.sh"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--")
            .args(args)
            .output()
            .expect("run sync-client.sh")
    }

    /// The master's real sync_client into `port`, which must succeed.
    pub fn real_sync(&self, port: u16, args: &[&str]) -> Output {
        let out = self.sync(port, args);
        assert!(
            out.status.success(),
            "real sync_client {args:?} into {port}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A mail user that can log in (sasldb) with USER_PASS, in the master's,
    /// the replica's and replica2's realms.
    pub fn add_user(&self, user: &str) {
        let db = Path::new(self.get("CORVID_PEERS_RUN")).join("sasldb2");
        for realm in [
            self.get("MASTER_NAME"),
            self.get("REPLICA_NAME"),
            self.get("REPLICA2_NAME"),
        ] {
            let mut c = Command::new("saslpasswd2")
                .args(["-p", "-c", "-f"])
                .arg(&db)
                .args(["-u", realm, user])
                .stdin(Stdio::piped())
                .spawn()
                .expect("saslpasswd2");
            c.stdin
                .take()
                .unwrap()
                .write_all(self.get("USER_PASS").as_bytes())
                .unwrap();
            assert!(c.wait().unwrap().success(), "saslpasswd2 {user}");
        }
        let _ = Command::new("chown").arg("cyrus:mail").arg(&db).status();
    }
}

/// The peers' env, or `None` (SKIP, named after `test`) without one.
pub fn peers(test: &str) -> Option<Peers> {
    let path = std::env::var_os("CORVID_PEERS_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/corvid-peers/env"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but no peers env file at {}", path.display());
        }
        eprintln!(
            "SKIP {test}: no peers env file at {} (run scripts/peers/start.sh)",
            path.display()
        );
        return None;
    };
    let env = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Peers {
        env,
        env_path: path,
    })
}
