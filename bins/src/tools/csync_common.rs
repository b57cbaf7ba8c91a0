//! What `sync_server` and `backupd` share: both run `engine::csync::Server`
//! over the embedded store, so the login check, the event log lines and the
//! machine options read from imapd.conf are written once, here.
//!
//! Cyrus uses the SASL service name `csync` for both daemons (research note
//! csync-protocol.md §1.4), so a saslauthd set up for one serves the other.

use std::time::Duration;

use engine::csync::{AuthOk, Completion, Event, Options as MachineOptions};
use io_tokio::auth::{Access, CheckContext, LoginError, PwCheck};
use io_tokio::config::{Config, DurationUnit};
use proto::sasl::{Credentials, Mechanism};
use tracing::{error, info, warn};

/// SASL service name of both csync daemons, as Cyrus's.
pub const SASL_SERVICE: &str = "csync";

/// Checks `creds` (password and admin/proxy policy) and builds the
/// machine's completion. The password never reaches a log line.
pub async fn login(
    pwcheck: &PwCheck,
    access: &Access,
    realm: Option<&str>,
    creds: &Credentials,
) -> Completion {
    let ctx = CheckContext {
        service: SASL_SERVICE,
        realm,
    };
    match access.login(pwcheck, creds, ctx).await {
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
    if let Some(list) = conf.get_str("sasl_mech_list") {
        let mechs = Mechanism::parse_list(list);
        if !mechs.is_empty() {
            m.mechanisms = mechs;
        }
    }
    if let Ok(s) = conf.get_duration_s("sync_timeout", DurationUnit::Seconds) {
        m.idle_timeout = Some(Duration::from_secs(s.max(3) as u64));
    }
    if let Ok(s) = conf.get_duration_s("failedloginpause", DurationUnit::Seconds) {
        m.failed_login_pause = Duration::from_secs(s.max(0) as u64);
    }
    m
}
