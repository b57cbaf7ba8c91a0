//! corvid's password file (`corvid_passwd_file`): one `user:hash` line per
//! user, the hash an argon2id PHC string
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`); blank lines and lines
//! starting with `#` are comments, kept as they are when the file is
//! rewritten.
//!
//! Reading: the whole file is parsed on every check, strictly (a broken
//! line or a user listed twice is an error naming the line, not a silent
//! "no such user"), and the argon2 verification runs on tokio's blocking
//! pool because it is deliberately slow. An unknown user costs a
//! verification too, so timing does not tell which users exist.
//!
//! Writing ([`PasswdFile::set_password`], [`PasswdFile::delete_user`], for
//! `corvid passwd`): under an exclusive `<file>.lock` (created with
//! O_EXCL, removed afterwards), the new content goes to a temporary file
//! in the same directory, is fsynced, renamed over the file, and the
//! directory is fsynced: a reader sees the old file or the new one, never
//! a mix, and a crash loses at most the change being made. A new file is
//! mode 0600; an existing file keeps its mode, owner and group.
//!
//! User names are the authentication identities exactly as clients send
//! them (`alice`, `alice@example.com`); the realm of a check is not used.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use super::{AuthError, Authenticator, CheckContext, Secret, Verdict};

/// Files larger than this are refused (a password file of 100 000 users is
/// about 12 MB).
const FILE_BYTES_MAX: u64 = 64 << 20;

/// A password file that cannot be used or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswdError {
    /// The file could not be read: the environment (missing file, permissions).
    #[error("can't read password file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file could not be written: the environment (permissions, full disk).
    #[error("can't write password file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line is not `user:argon2-hash`, or repeats a user: the administrator's file.
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// The file is larger than corvid reads: the administrator's file.
    #[error("password file {} is larger than {FILE_BYTES_MAX} bytes", path.display())]
    TooLarge { path: PathBuf },
    /// Another `corvid passwd` holds the lock (or one crashed): the administrator's concurrent change.
    #[error("password file is locked by {} (another `corvid passwd` running? if not, remove the lock file)", lock.display())]
    Locked { lock: PathBuf },
    /// A user name that cannot be stored: our caller's input.
    #[error("invalid user name {user:?}: {reason}")]
    BadUser { user: String, reason: &'static str },
    /// `delete_user` of a user not in the file: our caller's input.
    #[error("no user {user:?} in password file {}", path.display())]
    NoSuchUser { path: PathBuf, user: String },
    /// argon2 refused to hash (never expected with default parameters): a library failure.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// corvid's password file at one path.
#[derive(Debug, Clone)]
pub struct PasswdFile {
    path: PathBuf,
}

enum Line {
    /// A comment or blank line, kept verbatim.
    Other(String),
    User {
        user: String,
        hash: String,
    },
}

/// Why `user` cannot be a user name in the file.
fn check_user(user: &str) -> Result<(), &'static str> {
    if user.is_empty() {
        return Err("empty");
    }
    if user.starts_with('#') {
        return Err("starts with '#', which marks a comment");
    }
    if user.contains(':') {
        return Err("contains ':'");
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character");
    }
    Ok(())
}

/// An argon2id hash of `password` with a fresh random salt.
pub(crate) fn hash_password(password: &[u8]) -> Result<String, PasswdError> {
    let mut salt = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| PasswdError::Hash(format!("no random salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswdError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswdError::Hash(e.to_string()))
}

/// Checks `password` against a PHC argon2 string, as
/// `PasswordVerifier::verify_password` does, but in block memory taken from
/// [`BLOCK_POOL`]: argon2id needs 19 MiB per check, and allocating and
/// freeing that on every login left it resident (glibc raises its mmap
/// threshold after the first free, then keeps the freed chunk in each
/// thread's arena: RSS grew ~19.5 MiB per login up to ~330 MiB, ~1 GB for
/// a burst of concurrent logins; bins/tests/hostile_daemons.rs). With the
/// pool and [`VERIFY_SLOTS`] the memory is at most
/// `VERIFY_CONCURRENT_MAX` buffers, allocated once.
fn verify(password: &[u8], hash: &str) -> bool {
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&h) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(h.algorithm) else {
        return false;
    };
    let version = match h.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let n = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut blocks = pool_take(n);
    let computed = Output::init_with(expected.len(), |out| {
        argon
            .hash_password_into_with_memory(password, salt, out, &mut blocks[..n])
            .map_err(|_| argon2::password_hash::Error::Password)
    });
    pool_give(blocks);
    // `Output`'s equality is constant-time.
    computed.is_ok_and(|c| c == expected)
}

/// Password checks that may run at once, process-wide: bounds argon2's
/// memory to this many 19 MiB buffers whatever peers send.
pub const VERIFY_CONCURRENT_MAX: usize = 2;

/// Queue for [`verify`] (never closed, so acquiring cannot fail).
static VERIFY_SLOTS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(VERIFY_CONCURRENT_MAX);

/// argon2 block memory kept between checks (at most
/// [`VERIFY_CONCURRENT_MAX`] buffers).
static BLOCK_POOL: std::sync::Mutex<Vec<Vec<Block>>> = std::sync::Mutex::new(Vec::new());

fn pool_take(n: usize) -> Vec<Block> {
    let mut pool = BLOCK_POOL.lock().unwrap_or_else(|p| p.into_inner());
    match pool.iter().position(|b| b.len() >= n) {
        Some(i) => pool.swap_remove(i),
        None => vec![Block::default(); n],
    }
}

fn pool_give(mut blocks: Vec<Block>) {
    // The blocks hold state derived from a password: wipe before keeping.
    blocks.fill(Block::default());
    let mut pool = BLOCK_POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < VERIFY_CONCURRENT_MAX {
        pool.push(blocks);
    }
}

/// A hash no password matches in practice, verified against for unknown
/// users so that they take as long as known ones.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(b"corvid: no such user")
            .unwrap_or_else(|_| "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into())
    })
}

struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl PasswdFile {
    pub fn new(path: impl Into<PathBuf>) -> PasswdFile {
        PasswdFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self, text: &[u8]) -> Result<Vec<Line>, PasswdError> {
        let text = std::str::from_utf8(text).map_err(|e| {
            let line = text[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            PasswdError::Malformed {
                path: self.path.clone(),
                line,
                reason: "not UTF-8".into(),
            }
        })?;
        let mut lines = Vec::new();
        let mut seen = std::collections::BTreeMap::new();
        for (i, l) in text.lines().enumerate() {
            let malformed = |reason: String| PasswdError::Malformed {
                path: self.path.clone(),
                line: i + 1,
                reason,
            };
            if l.trim().is_empty() || l.starts_with('#') {
                lines.push(Line::Other(l.to_owned()));
                continue;
            }
            let Some((user, hash)) = l.split_once(':') else {
                return Err(malformed("expected user:hash".into()));
            };
            check_user(user).map_err(|r| malformed(format!("user name {r}")))?;
            let parsed = PasswordHash::new(hash)
                .map_err(|e| malformed(format!("invalid hash for {user}: {e}")))?;
            if parsed.algorithm.as_str() != "argon2id" {
                return Err(malformed(format!(
                    "hash for {user} is {}, expected argon2id",
                    parsed.algorithm
                )));
            }
            if let Some(first) = seen.insert(user.to_owned(), i + 1) {
                return Err(malformed(format!(
                    "user {user} listed twice (first on line {first})"
                )));
            }
            lines.push(Line::User {
                user: user.to_owned(),
                hash: hash.to_owned(),
            });
        }
        Ok(lines)
    }

    fn read_sync(&self) -> Result<Option<Vec<u8>>, PasswdError> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PasswdError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut buf = Vec::new();
        f.take(FILE_BYTES_MAX + 1)
            .read_to_end(&mut buf)
            .map_err(|source| PasswdError::Read {
                path: self.path.clone(),
                source,
            })?;
        if buf.len() as u64 > FILE_BYTES_MAX {
            return Err(PasswdError::TooLarge {
                path: self.path.clone(),
            });
        }
        Ok(Some(buf))
    }

    /// The hash stored for `user`, if any (blocking).
    fn lookup_sync(&self, user: &str) -> Result<Option<String>, PasswdError> {
        let text = self.read_sync()?.ok_or_else(|| PasswdError::Read {
            path: self.path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        Ok(self.parse(&text)?.into_iter().find_map(|l| match l {
            Line::User { user: u, hash } if u == user => Some(hash),
            _ => None,
        }))
    }

    /// The users in the file, in file order.
    pub fn users(&self) -> Result<Vec<String>, PasswdError> {
        let Some(text) = self.read_sync()? else {
            return Ok(Vec::new());
        };
        Ok(self
            .parse(&text)?
            .into_iter()
            .filter_map(|l| match l {
                Line::User { user, .. } => Some(user),
                Line::Other(_) => None,
            })
            .collect())
    }

    /// Sets `user`'s password (adding the user if new), creating the file
    /// mode 0600 if it does not exist. Blocking.
    pub fn set_password(&self, user: &str, password: &Secret) -> Result<(), PasswdError> {
        check_user(user).map_err(|reason| PasswdError::BadUser {
            user: user.to_owned(),
            reason,
        })?;
        let hash = hash_password(password.expose())?;
        self.rewrite(|lines| {
            let mut found = false;
            for l in lines.iter_mut() {
                if let Line::User { user: u, hash: h } = l {
                    if u == user {
                        *h = hash.clone();
                        found = true;
                    }
                }
            }
            if !found {
                lines.push(Line::User {
                    user: user.to_owned(),
                    hash: hash.clone(),
                });
            }
            Ok(())
        })
    }

    /// Removes `user`'s line. Blocking.
    pub fn delete_user(&self, user: &str) -> Result<(), PasswdError> {
        self.rewrite(|lines| {
            let before = lines.len();
            lines.retain(|l| !matches!(l, Line::User { user: u, .. } if u == user));
            if lines.len() == before {
                return Err(PasswdError::NoSuchUser {
                    path: self.path.clone(),
                    user: user.to_owned(),
                });
            }
            Ok(())
        })
    }

    fn rewrite(
        &self,
        change: impl FnOnce(&mut Vec<Line>) -> Result<(), PasswdError>,
    ) -> Result<(), PasswdError> {
        let write_err = |source| PasswdError::Write {
            path: self.path.clone(),
            source,
        };
        let lock = with_suffix(&self.path, ".lock");
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&lock)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(PasswdError::Locked { lock })
            }
            Err(source) => return Err(write_err(source)),
        }
        let _guard = LockGuard(lock);

        let old = self.read_sync()?;
        let mut lines = match &old {
            Some(text) => self.parse(text)?,
            None => vec![Line::Other(
                "# corvid password file: user:argon2id-hash (managed with `corvid passwd`)".into(),
            )],
        };
        change(&mut lines)?;
        let mut out = String::new();
        for l in &lines {
            match l {
                Line::Other(s) => writeln!(out, "{s}"),
                Line::User { user, hash } => writeln!(out, "{user}:{hash}"),
            }
            .expect("writing to a String");
        }

        let tmp = with_suffix(&self.path, &format!(".tmp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            if let Ok(meta) = std::fs::metadata(&self.path) {
                // Keep the existing file's owner, group and mode (e.g. root:cyrus 0640).
                let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
                f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            }
            f.write_all(out.as_bytes())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            let dir = self
                .path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl Authenticator for PasswdFile {
    async fn check(
        &self,
        authcid: &str,
        password: &Secret,
        _ctx: CheckContext<'_>,
    ) -> Result<Verdict, AuthError> {
        let this = self.clone();
        let user = authcid.to_owned();
        let password = password.clone();
        // One of VERIFY_CONCURRENT_MAX checks at a time (see `verify`).
        let _slot = VERIFY_SLOTS.acquire().await.ok();
        let verdict = tokio::task::spawn_blocking(move || -> Result<Verdict, PasswdError> {
            match this.lookup_sync(&user)? {
                Some(hash) if verify(password.expose(), &hash) => Ok(Verdict::Accepted),
                Some(_) => Ok(Verdict::Rejected("wrong password".into())),
                None => {
                    let _ = verify(password.expose(), dummy_hash());
                    Ok(Verdict::Rejected("no such user".into()))
                }
            }
        })
        .await
        .map_err(|e| PasswdError::Hash(format!("verification task failed: {e}")))??;
        Ok(verdict)
    }
}
