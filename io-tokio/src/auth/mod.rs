//! Checking credentials the way a Cyrus host is configured to, and deciding
//! who may act as whom.
//!
//! A SASL exchange (`proto::sasl`) ends with [`Credentials`]; this module
//! says whether their password is right ([`Authenticator`]) and what the
//! session may then do ([`Access`]):
//!
//! - `sasl_pwcheck_method: saslauthd` asks saslauthd over its socket at
//!   `sasl_saslauthd_path`, exactly as libsasl2 does ([`Saslauthd`]). This
//!   is the way to share Cyrus's user base (PAM, shadow, LDAP, IMAP…).
//! - `corvid_passwd_file: PATH` reads corvid's own file of argon2 hashes
//!   ([`PasswdFile`], managed with `corvid passwd`). It wins over
//!   `sasl_pwcheck_method`, because that key is shared with the Cyrus
//!   daemons on the host and corvid must not make the admin change it.
//! - `sasl_pwcheck_method: auxprop` (libsasl's default, usually with
//!   Cyrus's sasldb2, a Berkeley DB or LMDB file) is refused with an error
//!   that names the two ways that work: reading sasldb2 would mean a
//!   Berkeley DB reader for one backend of one plugin.
//!
//! Admins and proxying follow Cyrus (`imap/global.c`): an identity is an
//! admin if `admins:` lists it (or lists `anyone`); a client may authorize
//! as someone other than itself (PLAIN's authzid) only if the authenticated
//! identity is an admin or listed in `proxyservers:`.
//!
//! What it never does: log or show a password (every type holding one has
//! a redacting `Debug`), or cache a verdict (saslauthd has its own `-c`
//! cache; the password file is read on every check so that `corvid passwd`
//! takes effect at once).

mod passwd;
mod saslauthd;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;

pub use proto::sasl::{Credentials, Mechanism, Secret};

pub use passwd::{PasswdError, PasswdFile};
pub use saslauthd::{Saslauthd, SaslauthdOptions};

use crate::config::{Admins, Config, ConfigError};

/// The answer to a password check that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The password is right.
    Accepted,
    /// It is not (or the user does not exist, or the backend said no); the
    /// reason is for our log, never for the peer, and never holds the password.
    Rejected(String),
}

/// A check that could not run, or a configuration corvid cannot check with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The config asks for a password check corvid does not do: the administrator's config.
    #[error("sasl_pwcheck_method: {method} is not supported by corvid{detail}; use `sasl_pwcheck_method: saslauthd` (with saslauthd running) or set `corvid_passwd_file: PATH` (managed with `corvid passwd`)")]
    UnsupportedMethod { method: String, detail: String },
    /// The config could not be read as needed: the administrator's config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// saslauthd could not be reached or talked nonsense: the environment (saslauthd not running, wrong path).
    #[error("saslauthd at {}: {reason}", path.display())]
    Saslauthd { path: PathBuf, reason: String },
    /// The password file could not be read or is broken: the administrator's file.
    #[error(transparent)]
    Passwd(#[from] PasswdError),
}

/// What the check needs besides the credentials.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext<'a> {
    /// The SASL service name the protocol registers (Cyrus: `csync` for
    /// sync_server and backupd, `mupdate` for mupdate, `imap` for imapd);
    /// saslauthd passes it on (PAM uses it as the PAM service).
    pub service: &'a str,
    /// The user realm, if any. Cyrus's services pass none (they create
    /// their SASL connection with a NULL user realm); a `user@realm` authcid
    /// sends `realm` anyway, as libsasl does before asking saslauthd.
    pub realm: Option<&'a str>,
}

/// Checks a password. Implemented by the configured backends below; a
/// simulation or test can implement it too.
pub trait Authenticator: Send + Sync {
    /// Whether `password` is `authcid`'s.
    fn check(
        &self,
        authcid: &str,
        password: &Secret,
        ctx: CheckContext<'_>,
    ) -> impl Future<Output = Result<Verdict, AuthError>> + Send;
}

/// The password check an imapd.conf asks for.
#[derive(Debug)]
#[non_exhaustive]
pub enum PwCheck {
    Saslauthd(Saslauthd),
    PasswdFile(PasswdFile),
}

impl PwCheck {
    /// The backend `conf` configures: `corvid_passwd_file` if set, else
    /// saslauthd if `sasl_pwcheck_method` lists it; libsasl's default
    /// `auxprop` and everything else is refused with an error saying what
    /// to set instead. Of a list such as `auxprop saslauthd` only saslauthd
    /// is used, where libsasl would try each method in turn: a user that
    /// only sasldb2 knows is rejected by corvid.
    pub fn from_config(conf: &Config) -> Result<PwCheck, AuthError> {
        if let Some(path) = conf.get_str("corvid_passwd_file") {
            return Ok(PwCheck::PasswdFile(PasswdFile::new(path)));
        }
        let methods = conf.get_str("sasl_pwcheck_method").unwrap_or("auxprop");
        if methods.split_ascii_whitespace().any(|m| m == "saslauthd") {
            let path = conf
                .get_str("sasl_saslauthd_path")
                .unwrap_or(saslauthd::DEFAULT_PATH);
            return Ok(PwCheck::Saslauthd(Saslauthd::new(
                path,
                SaslauthdOptions::default(),
            )));
        }
        let method = methods
            .split_ascii_whitespace()
            .next()
            .unwrap_or("")
            .to_owned();
        let detail = match method.as_str() {
            "auxprop" => format!(
                " (the auxprop plugin {} keeps its users in {}, a Berkeley DB/LMDB file corvid does not read)",
                conf.get_str("sasl_auxprop_plugin").unwrap_or("sasldb"),
                conf.get_str("sasl_sasldb_path").unwrap_or("/etc/sasldb2"),
            ),
            "alwaystrue" => " (it accepts every password)".to_owned(),
            _ => String::new(),
        };
        Err(AuthError::UnsupportedMethod { method, detail })
    }
}

impl Authenticator for PwCheck {
    async fn check(
        &self,
        authcid: &str,
        password: &Secret,
        ctx: CheckContext<'_>,
    ) -> Result<Verdict, AuthError> {
        match self {
            PwCheck::Saslauthd(s) => s.check(authcid, password, ctx).await,
            PwCheck::PasswdFile(f) => f.check(authcid, password, ctx).await,
        }
    }
}

/// The password check of the running configuration: the daemon builds it
/// from the file it started with, and each login asks [`LivePwCheck::get`],
/// which follows a SIGHUP (`config::live`) that changed
/// `corvid_passwd_file`, `sasl_pwcheck_method` or `sasl_saslauthd_path`.
/// A new setting that cannot be used (e.g. `auxprop`) is logged and the
/// backend in use kept, as a config that fails to load keeps the old one.
#[derive(Debug)]
pub struct LivePwCheck {
    current: std::sync::RwLock<(String, std::sync::Arc<PwCheck>)>,
    /// The last key that could not be used, so that it is logged once.
    refused: std::sync::Mutex<Option<String>>,
}

/// What decides the backend, as one comparable string.
fn pwcheck_key(conf: &Config) -> String {
    let get = |k| conf.get_str(k).unwrap_or("");
    format!(
        "{}\0{}\0{}",
        get("corvid_passwd_file"),
        get("sasl_pwcheck_method"),
        get("sasl_saslauthd_path")
    )
}

impl LivePwCheck {
    /// The backend `conf` configures ([`PwCheck::from_config`]).
    pub fn from_config(conf: &Config) -> Result<LivePwCheck, AuthError> {
        let check = PwCheck::from_config(conf)?;
        Ok(LivePwCheck {
            current: std::sync::RwLock::new((pwcheck_key(conf), std::sync::Arc::new(check))),
            refused: std::sync::Mutex::default(),
        })
    }

    /// The backend for a login starting now.
    pub fn get(&self) -> std::sync::Arc<PwCheck> {
        let running = crate::config::live::current();
        let read = || self.current.read().unwrap_or_else(|p| p.into_inner());
        let Some(conf) = running else {
            return read().1.clone();
        };
        let key = pwcheck_key(&conf);
        {
            let cur = read();
            if cur.0 == key {
                return cur.1.clone();
            }
        }
        match PwCheck::from_config(&conf) {
            Ok(check) => {
                let check = std::sync::Arc::new(check);
                let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
                if cur.0 != key {
                    tracing::info!(backend = ?check, "password check changed by the reloaded configuration");
                    *cur = (key, check);
                }
                cur.1.clone()
            }
            Err(e) => {
                let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
                if refused.as_deref() != Some(key.as_str()) {
                    tracing::warn!(error = %e, "reloaded password check unusable; keeping the running one");
                    *refused = Some(key);
                }
                read().1.clone()
            }
        }
    }
}

/// The mechanisms a corvid server offers in its banner, as libsasl2 would
/// under the security properties Cyrus sets (`imap/global.c
/// mysasl_secprops`, libsasl `server.c mech_permitted`): PLAIN and LOGIN
/// send the password in the clear, so they are offered only with
/// `allowplaintext: yes` or under a layer of more than 1 bit of strength
/// (`external_ssf`, e.g. TLS) that also meets `sasl_minimum_layer`; within
/// that, `sasl_mech_list` (if set) picks and orders them.
pub fn offered_mechanisms(conf: &Config, external_ssf: u32) -> Result<Vec<Mechanism>, ConfigError> {
    let min_ssf = conf.get_int("sasl_minimum_layer")?;
    let external = i64::from(external_ssf);
    // PLAIN and LOGIN have no layer of their own (strength 0).
    if min_ssf > external {
        return Ok(Vec::new());
    }
    let protected = external > 1;
    if !protected && !conf.get_bool("allowplaintext")? {
        return Ok(Vec::new());
    }
    Ok(match conf.get_str("sasl_mech_list") {
        Some(list) => Mechanism::parse_list(list),
        None => Mechanism::ALL.to_vec(),
    })
}

/// The mechanism a corvid client (sync_client, MUPDATE slave) uses with a
/// server that offers `offered` (its banner's list, names as sent), as
/// Cyrus's client side picks it: `force_sasl_client_mech` if set (and
/// offered), else PLAIN, else LOGIN. `None`: nothing both sides speak.
pub fn client_mechanism<'a>(
    conf: &Config,
    offered: impl IntoIterator<Item = &'a str>,
) -> Option<Mechanism> {
    let offered: Vec<Mechanism> = offered
        .into_iter()
        .filter_map(Mechanism::from_name)
        .collect();
    match conf.get_str("force_sasl_client_mech") {
        Some(forced) => Mechanism::from_name(forced).filter(|m| offered.contains(m)),
        None => Mechanism::ALL.into_iter().find(|m| offered.contains(m)),
    }
}

/// Who may do what once the password is right: `admins:` and
/// `proxyservers:` of the config.
#[derive(Debug, Clone, Default)]
pub struct Access {
    admins: Admins,
    proxyservers: Admins,
}

/// An identity that passed the password check and the authorization rule.
#[derive(Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Whose password was checked.
    pub authcid: String,
    /// Who the session acts as (the authzid, else `authcid`).
    pub userid: String,
    /// Whether `userid` is listed in `admins:`.
    pub is_admin: bool,
}

impl fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticated")
            .field("authcid", &self.authcid)
            .field("userid", &self.userid)
            .field("is_admin", &self.is_admin)
            .finish()
    }
}

/// Why a login was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// Wrong password, unknown user, or the backend said no: the peer's credentials.
    #[error("authentication failed for {authcid}: {reason}")]
    Rejected { authcid: String, reason: String },
    /// The password was right but `authcid` may not act as `authzid`: the peer asked for more than it may.
    #[error("{authcid} may not authorize as {authzid} (only admins and proxyservers may)")]
    ProxyDenied { authcid: String, authzid: String },
    /// The check could not run: the environment or the config.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl Access {
    pub fn new(admins: Admins, proxyservers: Admins) -> Access {
        Access {
            admins,
            proxyservers,
        }
    }

    /// `admins:` and `proxyservers:` of `conf` (with its ident overrides).
    pub fn from_config(conf: &Config) -> Access {
        Access {
            admins: conf.admins(),
            proxyservers: Admins::parse(conf.get_str("proxyservers").unwrap_or("")),
        }
    }

    /// Whether `id` is an admin.
    pub fn is_admin(&self, id: &str) -> bool {
        self.admins.contains(id)
    }

    /// Cyrus's proxy policy: anyone may act as themselves; only admins and
    /// `proxyservers` may act as someone else.
    pub fn authorize(
        &self,
        authcid: &str,
        authzid: Option<&str>,
    ) -> Result<Authenticated, LoginError> {
        let userid = match authzid {
            Some(z) if z != authcid => {
                if !(self.admins.contains(authcid) || self.proxyservers.contains(authcid)) {
                    return Err(LoginError::ProxyDenied {
                        authcid: authcid.to_owned(),
                        authzid: z.to_owned(),
                    });
                }
                z
            }
            _ => authcid,
        };
        Ok(Authenticated {
            authcid: authcid.to_owned(),
            userid: userid.to_owned(),
            is_admin: self.admins.contains(userid),
        })
    }

    /// Checks `creds` with `auth`, then applies [`Access::authorize`].
    pub async fn login(
        &self,
        auth: &impl Authenticator,
        creds: &Credentials,
        ctx: CheckContext<'_>,
    ) -> Result<Authenticated, LoginError> {
        match auth.check(&creds.authcid, &creds.password, ctx).await? {
            Verdict::Accepted => self.authorize(&creds.authcid, creds.authzid.as_deref()),
            Verdict::Rejected(reason) => Err(LoginError::Rejected {
                authcid: creds.authcid.clone(),
                reason,
            }),
        }
    }
}
