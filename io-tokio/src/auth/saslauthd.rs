//! A client for saslauthd's socket protocol, as libsasl2 2.1.28 speaks it
//! (`lib/checkpw.c saslauthd_verify_password`).
//!
//! One request per connection to the unix socket (`<run dir>/mux`): four
//! counted strings, each a big-endian u16 length and the bytes — login,
//! password, service, realm (an empty realm is length 0) — then the reply,
//! a u16 length and text beginning `OK` or `NO` (a bare `NO` happens).
//! Success iff the text begins with `OK`. As libsasl does, a login of the
//! form `user@realm` is split at its last `@` and the part after it is sent
//! as the realm; the whole request is at most 8192 bytes; at most 1023
//! bytes of the reply are read.
//!
//! It never logs or keeps the password: it is written to the socket and the
//! request buffer is zeroed after the write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{AuthError, Authenticator, CheckContext, Secret, Verdict};

/// libsasl2's compiled-in socket on Debian (`--with-saslauthd=/var/run/saslauthd`).
pub(crate) const DEFAULT_PATH: &str = "/var/run/saslauthd/mux";

/// libsasl's request buffer: the whole request must fit.
const REQUEST_BYTES_MAX: usize = 8192;
/// libsasl reads at most this much of the reply text.
const REPLY_BYTES_MAX: usize = 1023;

/// Limits on one exchange.
#[derive(Debug, Clone)]
pub struct SaslauthdOptions {
    /// How long connect, write and read may take together. libsasl waits
    /// forever; a stuck saslauthd would then hang logins, so corvid does not.
    pub timeout: Duration,
}

impl Default for SaslauthdOptions {
    fn default() -> Self {
        SaslauthdOptions {
            timeout: Duration::from_secs(30),
        }
    }
}

/// saslauthd at one socket path.
#[derive(Debug, Clone)]
pub struct Saslauthd {
    path: PathBuf,
    opts: SaslauthdOptions,
}

impl Saslauthd {
    /// The daemon whose socket is `path` (`sasl_saslauthd_path`: the socket
    /// file itself, e.g. `/var/run/saslauthd/mux`).
    pub fn new(path: impl Into<PathBuf>, opts: SaslauthdOptions) -> Saslauthd {
        Saslauthd {
            path: path.into(),
            opts,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, reason: impl Into<String>) -> AuthError {
        AuthError::Saslauthd {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The request bytes, or why the credentials cannot be sent.
    fn request(
        login: &str,
        password: &[u8],
        service: &str,
        realm: Option<&str>,
    ) -> Result<Secret, String> {
        // libsasl splits `user@realm` at the last '@'; the realm given is then ignored.
        let (login, realm) = match login.rfind('@') {
            Some(i) => (&login[..i], &login[i + 1..]),
            None => (login, realm.unwrap_or("")),
        };
        let fields: [&[u8]; 4] = [
            login.as_bytes(),
            password,
            service.as_bytes(),
            realm.as_bytes(),
        ];
        // libsasl sends C strings: a NUL would cut a field short there.
        if fields.iter().any(|f| f.contains(&0)) {
            return Err("NUL in login, password, service or realm".into());
        }
        // libsasl counts 30 bytes of overhead against its 8192-byte buffer.
        if 30 + fields.iter().map(|f| f.len()).sum::<usize>() > REQUEST_BYTES_MAX {
            return Err("request too large".into());
        }
        let mut req = Vec::with_capacity(REQUEST_BYTES_MAX);
        for f in fields {
            req.extend_from_slice(&(f.len() as u16).to_be_bytes());
            req.extend_from_slice(f);
        }
        Ok(Secret::new(req))
    }

    async fn exchange(&self, request: &Secret) -> Result<Vec<u8>, AuthError> {
        let mut sock = UnixStream::connect(&self.path)
            .await
            .map_err(|e| self.fail(format!("cannot connect: {e}")))?;
        sock.write_all(request.expose())
            .await
            .map_err(|e| self.fail(format!("write failed: {e}")))?;
        let mut count = [0u8; 2];
        sock.read_exact(&mut count)
            .await
            .map_err(|e| self.fail(format!("size read failed: {e}")))?;
        let count = usize::from(u16::from_be_bytes(count));
        if count < 2 {
            return Err(self.fail("bad response (shorter than OK/NO)"));
        }
        let mut reply = vec![0u8; count.min(REPLY_BYTES_MAX)];
        sock.read_exact(&mut reply)
            .await
            .map_err(|e| self.fail(format!("read failed: {e}")))?;
        Ok(reply)
    }
}

impl Authenticator for Saslauthd {
    async fn check(
        &self,
        authcid: &str,
        password: &Secret,
        ctx: CheckContext<'_>,
    ) -> Result<Verdict, AuthError> {
        let request = match Saslauthd::request(authcid, password.expose(), ctx.service, ctx.realm) {
            Ok(r) => r,
            // Credentials that cannot be put in a request are simply wrong.
            Err(reason) => return Ok(Verdict::Rejected(reason)),
        };
        let reply = tokio::time::timeout(self.opts.timeout, self.exchange(&request))
            .await
            .map_err(|_| self.fail(format!("no answer within {:?}", self.opts.timeout)))??;
        if reply.starts_with(b"OK") {
            Ok(Verdict::Accepted)
        } else {
            // saslauthd's text ("NO", "NO remote server rejected your
            // credentials") never holds the password.
            Ok(Verdict::Rejected(format!(
                "saslauthd: {}",
                String::from_utf8_lossy(&reply).trim_end()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_and_realm_split() {
        let r = Saslauthd::request("alice@example.com", b"pw", "csync", Some("ignored")).unwrap();
        assert_eq!(
            r.expose(),
            b"\0\x05alice\0\x02pw\0\x05csync\0\x0bexample.com"
        );
        let r = Saslauthd::request("bob", b"pw", "mupdate", None).unwrap();
        assert_eq!(r.expose(), b"\0\x03bob\0\x02pw\0\x07mupdate\0\0");
        let r = Saslauthd::request("a@b@c", b"pw", "s", Some("r")).unwrap();
        assert_eq!(r.expose(), b"\0\x03a@b\0\x02pw\0\x01s\0\x01c");
        // 30 bytes of libsasl overhead + "a" + password + "s" may fill 8192 exactly.
        assert!(Saslauthd::request("a", &[b'x'; 8192 - 30 - 2], "s", None).is_ok());
        assert!(Saslauthd::request("a", &[b'x'; 8192 - 30 - 1], "s", None).is_err());
        assert!(Saslauthd::request("a", b"p\0w", "s", None).is_err());
    }
}
