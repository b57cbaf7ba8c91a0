//! What `sync_server` and `backupd` share: both run `engine::csync::Server`
//! over the embedded store, so the login check, the event log lines and the
//! machine options read from imapd.conf are written once, here.
//!
//! Cyrus uses the SASL service name `csync` for both daemons (research note
//! csync-protocol.md §1.4), so a saslauthd set up for one serves the other.
//!
//! # The login cache
//!
//! A Cyrus master's `sync_client -u`/`-m` opens a new connection per run, and
//! every connection logs in. corvid's own password file holds argon2id
//! hashes, which cost tens of milliseconds of CPU by design — more than all
//! the rest of an unchanged user's sync (measured: about 60 % of the server
//! CPU of a `GET USER` session). So a daemon remembers, per identity, a keyed
//! SHA-1 of the last password that was accepted ([`LoginCache`]) for a short
//! time, the way Dovecot's `auth_cache` does: a login with the same password
//! skips the backend. What is kept is never the password: the digest's key
//! is 32 random bytes of this process. An entry is dropped when its time is
//! up, when the password file changes (size, mtime or inode), and a wrong
//! password always goes to the backend (and its failed-login pause). Only
//! accepted checks are cached, so a cache can never let in a password the
//! backend did not accept within the last [`LoginCache::TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engine::csync::{AuthOk, Completion, Event, Options as MachineOptions};
use engine::model::Guid;
use io_tokio::auth::{
    Access, AuthError, Authenticator, CheckContext, LoginError, PwCheck, Verdict,
};
use io_tokio::config::{Config, DurationUnit};
use proto::sasl::Credentials;
use tracing::{error, info, warn};

/// SASL service name of both csync daemons, as Cyrus's.
pub const SASL_SERVICE: &str = "csync";

/// The security strength a TLS session counts as for offering mechanisms
/// (Cyrus passes the cipher's bits; every suite rustls offers has more
/// than the 1 bit that lifts the plaintext ban).
pub const TLS_SSF: u32 = 256;

/// Recently accepted logins of one daemon; see the module doc.
pub struct LoginCache {
    /// Random per process; `None` (no randomness available): no caching.
    key: Option<[u8; 32]>,
    entries: Mutex<HashMap<(String, Option<String>), Entry>>,
}

struct Entry {
    digest: Guid,
    at: Instant,
    file: Option<FileStamp>,
}

/// What says the password file is still the one a check read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    mtime: Option<std::time::SystemTime>,
    ino: u64,
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        len: m.len(),
        mtime: m.modified().ok(),
        ino: m.ino(),
    })
}

impl LoginCache {
    /// How long an accepted password is remembered.
    pub const TTL: Duration = Duration::from_secs(300);
    /// Most identities remembered (a full cache is emptied: logins of a
    /// replication daemon come from a handful of identities).
    pub const ENTRIES_MAX: usize = 256;

    /// An empty cache. Each check names its backend, which may change
    /// while the daemon runs (SIGHUP: `io_tokio::auth::LivePwCheck`): an
    /// entry counts only for the password file (its inode, size and mtime)
    /// or the absence of one it was accepted under.
    pub fn new() -> LoginCache {
        let mut key = [0u8; 32];
        let key = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .ok()
            .map(|()| key);
        LoginCache {
            key,
            entries: Mutex::default(),
        }
    }

    fn digest(key: &[u8; 32], authcid: &str, password: &[u8]) -> Guid {
        let mut b = Vec::with_capacity(64 + authcid.len() + password.len() + 1);
        b.extend_from_slice(key);
        b.extend_from_slice(authcid.as_bytes());
        b.push(0);
        b.extend_from_slice(password);
        b.extend_from_slice(key);
        let g = Guid::of(&b);
        // The buffer held the password: clear it before it is freed.
        b.iter_mut().for_each(|x| *x = 0);
        std::hint::black_box(&b);
        g
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Option<String>), Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks with `backend` unless this password was accepted recently.
    async fn check(
        &self,
        backend: &PwCheck,
        authcid: &str,
        password: &proto::sasl::Secret,
        ctx: CheckContext<'_>,
    ) -> Result<Verdict, AuthError> {
        let Some(key) = &self.key else {
            return backend.check(authcid, password, ctx).await;
        };
        let id = (authcid.to_owned(), ctx.realm.map(str::to_owned));
        let digest = Self::digest(key, authcid, password.expose());
        // The password file whose changes drop every entry, if that is the
        // backend.
        let backend_file = match backend {
            PwCheck::PasswdFile(f) => Some(f.path()),
            _ => None,
        };
        let file = backend_file.and_then(stamp);
        {
            let mut entries = self.lock();
            if let Some(e) = entries.get(&id) {
                let fresh = e.at.elapsed() < Self::TTL && e.file == file;
                if fresh && e.digest == digest {
                    return Ok(Verdict::Accepted);
                }
                if !fresh {
                    entries.remove(&id);
                }
            }
        }
        let verdict = backend.check(authcid, password, ctx).await?;
        if verdict == Verdict::Accepted && (backend_file.is_none() || file.is_some()) {
            let mut entries = self.lock();
            if entries.len() >= Self::ENTRIES_MAX {
                entries.clear();
            }
            entries.insert(
                id,
                Entry {
                    digest,
                    at: Instant::now(),
                    file,
                },
            );
        }
        Ok(verdict)
    }
}

/// The backend behind a [`LoginCache`], as one [`Authenticator`].
struct Cached<'a> {
    cache: &'a LoginCache,
    backend: &'a PwCheck,
}

impl Authenticator for Cached<'_> {
    async fn check(
        &self,
        authcid: &str,
        password: &proto::sasl::Secret,
        ctx: CheckContext<'_>,
    ) -> Result<Verdict, AuthError> {
        self.cache.check(self.backend, authcid, password, ctx).await
    }
}

/// Checks `creds` (password and admin/proxy policy) and builds the
/// machine's completion. The password never reaches a log line.
pub async fn login(
    pwcheck: &PwCheck,
    access: &Access,
    realm: Option<&str>,
    creds: &Credentials,
) -> Completion {
    login_with(pwcheck, access, realm, creds).await
}

/// [`login`], with the password checked through `cache`.
pub async fn login_cached(
    cache: &LoginCache,
    pwcheck: &PwCheck,
    access: &Access,
    realm: Option<&str>,
    creds: &Credentials,
) -> Completion {
    let auth = Cached {
        cache,
        backend: pwcheck,
    };
    login_with(&auth, access, realm, creds).await
}

async fn login_with(
    auth: &impl Authenticator,
    access: &Access,
    realm: Option<&str>,
    creds: &Credentials,
) -> Completion {
    let ctx = CheckContext {
        service: SASL_SERVICE,
        realm,
    };
    match access.login(auth, creds, ctx).await {
        Ok(a) => Completion::Auth(Some(AuthOk {
            userid: a.userid,
            admin: a.is_admin,
        })),
        Err(LoginError::Auth(e)) => {
            error!(error = %e, "password check could not run");
            Completion::Auth(None)
        }
        Err(e) => {
            info!(reason = %e, "authentication failed");
            Completion::Auth(None)
        }
    }
}

/// Spawns the task that logs one session's machine events and counts them
/// in the metrics (`service`: "sync_server" or "backupd"), inside the
/// connection's span. The driver sends on the returned channel; await the
/// handle after the driver ends so the last events are logged.
pub fn spawn_event_logger(
    service: &'static str,
    span: &tracing::Span,
) -> (
    tokio::sync::mpsc::Sender<Event>,
    tokio::task::JoinHandle<()>,
) {
    use tracing::Instrument;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(256);
    let logger_span = span.clone();
    let handle = tokio::spawn(
        async move {
            while let Some(e) = rx.recv().await {
                crate::observe::csync_event(service, &logger_span, &e);
                log_event(e);
            }
        }
        .instrument(span.clone()),
    );
    (tx, handle)
}

/// One log line per machine event.
pub fn log_event(e: Event) {
    match e {
        Event::Authenticated(u) => info!(user = %u, "authenticated"),
        Event::AuthFailed(u) => info!(user = %u, "authentication failed"),
        Event::Refused {
            command,
            status,
            detail,
        } => info!(%command, %status, %detail, "refused"),
        Event::Applied { command, mutations } => {
            tracing::debug!(%command, mutations, "applied")
        }
        Event::Answered { command } => tracing::debug!(%command, "answered"),
        Event::StoreFailed(e) => error!(error = %e, "store failure"),
        Event::MessageRefused(e) => warn!(detail = %e, "upload refused"),
    }
}

/// The machine options both daemons read from imapd.conf: `servername`
/// (else the host name), `sasl_mech_list`, `sync_timeout` (Cyrus: minimum
/// 3 s) and `failedloginpause`. Each daemon adds its own on top.
pub fn machine_options(conf: &Config) -> MachineOptions {
    let mut m = MachineOptions::default();
    m.server_name = conf
        .servername()
        .map(str::to_owned)
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_else(|| "localhost".into())
        .trim()
        .to_owned();
    // As libsasl under Cyrus's security properties: PLAIN/LOGIN in the
    // clear only with `allowplaintext: yes`; under TLS always (W6). A
    // value that does not parse offers nothing (`corvid config check`
    // names it).
    let offered = |ssf| {
        io_tokio::auth::offered_mechanisms(conf, ssf).unwrap_or_else(|e| {
            warn!(error = %e, "SASL options unreadable: no mechanism offered");
            Vec::new()
        })
    };
    m.mechanisms = offered(0);
    m.mechanisms_tls = offered(TLS_SSF);
    if let Ok(s) = conf.get_duration_s("sync_timeout", DurationUnit::Seconds) {
        m.idle_timeout = Some(Duration::from_secs(s.max(3) as u64));
    }
    if let Ok(s) = conf.get_duration_s("failedloginpause", DurationUnit::Seconds) {
        m.failed_login_pause = Duration::from_secs(s.max(0) as u64);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_tokio::auth::PasswdFile;
    use proto::sasl::Secret;

    fn ctx() -> CheckContext<'static> {
        CheckContext {
            service: SASL_SERVICE,
            realm: None,
        }
    }

    /// W6: PLAIN/LOGIN in the clear only with `allowplaintext: yes`
    /// (Cyrus's default is no); under TLS always.
    #[test]
    fn plaintext_mechanisms_follow_allowplaintext() {
        use proto::sasl::Mechanism::{Login, Plain};
        let conf = |t: &str| {
            Config::parse_str(t, "imapd.conf", &io_tokio::config::LoadOptions::default()).unwrap()
        };
        let m = machine_options(&conf("sasl_mech_list: PLAIN LOGIN\n"));
        assert!(m.mechanisms.is_empty(), "{:?}", m.mechanisms);
        assert_eq!(m.mechanisms_tls, vec![Plain, Login]);
        let m = machine_options(&conf("sasl_mech_list: PLAIN LOGIN\nallowplaintext: yes\n"));
        assert_eq!(m.mechanisms, vec![Plain, Login]);
        let c = conf("sync_log: 1\nsync_log_channels: \"\" squatter r\n");
        assert_eq!(
            sync_log_channels(&c, false).unwrap().keys(),
            ["", "squatter", "r"]
        );
        assert_eq!(sync_log_channels(&c, true).unwrap().keys(), ["squatter"]);
        let c = conf("sync_log: 1\nsync_log_chain: 1\n");
        assert_eq!(sync_log_channels(&c, true).unwrap().keys(), [""]);
        assert!(sync_log_channels(&conf(""), true).unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_login_cache_never_accepts_what_the_file_would_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let file = PasswdFile::new(&path);
        file.set_password("repl", &Secret::new(b"one".to_vec()))
            .unwrap();
        let backend = PwCheck::PasswdFile(PasswdFile::new(&path));
        let cache = LoginCache::new();
        let check = |pw: &'static [u8]| {
            let (cache, backend) = (&cache, &backend);
            async move {
                cache
                    .check(backend, "repl", &Secret::new(pw.to_vec()), ctx())
                    .await
                    .unwrap()
            }
        };
        assert_eq!(check(b"one").await, Verdict::Accepted);
        assert_eq!(cache.lock().len(), 1, "an accepted check is remembered");
        // Remembered, but a wrong password still goes to the file.
        assert!(matches!(check(b"two").await, Verdict::Rejected(_)));
        assert_eq!(check(b"one").await, Verdict::Accepted);
        // The file changes: the old password is checked again, and fails.
        file.set_password("repl", &Secret::new(b"two".to_vec()))
            .unwrap();
        assert!(matches!(check(b"one").await, Verdict::Rejected(_)));
        assert_eq!(check(b"two").await, Verdict::Accepted);
        // The cache keeps a keyed digest, never the password.
        let entries = cache.lock();
        let e = entries.get(&("repl".to_owned(), None)).unwrap();
        assert_ne!(e.digest, Guid::of(b"two"));
    }
}

/// The sync log channels a writer of the embedded store logs to, from
/// imapd.conf as Cyrus reads it: `sync_log` (off by default),
/// `sync_log_channels` (unset: the default channel), and, for a replica
/// (`replica: true`, i.e. sync_server), `sync_log_chain` — without it a
/// replica logs only to the listed channels named in
/// `sync_log_unsuppressable_channels` (default `squatter`), as Cyrus's
/// sync_server suppresses its own logging.
pub fn sync_log_channels(
    conf: &Config,
    replica: bool,
) -> Result<engine::store::synclog::Channels, String> {
    use store::embedded::synclog::Channel;
    let on = conf
        .get_bool_or("sync_log", false)
        .map_err(|e| e.to_string())?;
    let keys = |v: Option<&str>| -> Result<Vec<String>, String> {
        Ok(Channel::parse_list(v)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|c| c.key().to_owned())
            .collect())
    };
    let listed = match conf.get_str("sync_log_channels") {
        Some(v) => Some(keys(Some(v))?),
        None => None,
    };
    let chain = conf
        .get_bool_or("sync_log_chain", false)
        .map_err(|e| e.to_string())?;
    let unsuppressable = keys(Some(
        conf.get_str("sync_log_unsuppressable_channels")
            .unwrap_or("squatter"),
    ))?;
    Ok(engine::store::synclog::Channels::resolve(
        on,
        listed.as_deref(),
        replica && !chain,
        &unsuppressable,
    ))
}
