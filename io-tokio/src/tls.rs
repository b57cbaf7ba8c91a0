//! TLS configurations for the driver, built from the files Cyrus's
//! imapd.conf names.
//!
//! | imapd.conf key        | role here |
//! |-----------------------|-----------|
//! | `tls_server_cert`     | our certificate chain as a server (PEM; a comma-separated list gives one chain per key type, e.g. RSA and EC) |
//! | `tls_server_key`      | its private key(s) (PEM); unset means each cert file holds its key too |
//! | `tls_client_ca_file`, `tls_client_ca_dir` | CAs for verifying *client* certificates (server side) |
//! | `tls_client_certs`    | `off`, `optional` (default) or `require` client certificates (server side; only with a client CA) |
//! | `tls_server_ca_file`, `tls_server_ca_dir` | CAs for verifying the *server* when we are the client (sync_client, mupdate slave) |
//! | `tls_client_cert`, `tls_client_key` | the certificate we present as a client; `disabled` turns it off |
//!
//! This module reads those files once, at startup, and never opens a socket.
//! It uses rustls with the *ring* provider named explicitly, so the result
//! does not depend on which provider another crate enabled process-wide.
//! TLS versions are rustls's safe defaults (1.2 and 1.3); Cyrus's
//! `tls_versions`/`tls_ciphers` have no counterpart because rustls offers
//! nothing older or weaker to turn off.

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Debian's bundle of system CAs: the client's trust anchors when neither
/// `tls_server_ca_file` nor `tls_server_ca_dir` is set, as OpenSSL's default
/// paths would be for Cyrus.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What went wrong building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The operator's configuration: a named file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The operator's configuration: a certificate file holds no certificate.
    #[error("{0}: no PEM certificate found")]
    NoCertificate(PathBuf),
    /// The operator's configuration: a key file holds no private key.
    #[error("{0}: no PEM private key found")]
    NoKey(PathBuf),
    /// The operator's configuration: `tls_server_cert` and `tls_server_key`
    /// list different numbers of files.
    #[error("tls_server_cert lists {certs} file(s) but tls_server_key lists {keys}")]
    CertKeyCount {
        /// Files in `tls_server_cert`.
        certs: usize,
        /// Files in `tls_server_key`.
        keys: usize,
    },
    /// The operator's configuration: only one of `tls_client_cert` /
    /// `tls_client_key` is set.
    #[error("tls_client_cert and tls_client_key must be set together")]
    ClientCertWithoutKey,
    /// The operator's configuration: no CA to verify servers with.
    #[error("no trust anchors: set tls_server_ca_file or tls_server_ca_dir")]
    NoTrustAnchors,
    /// The operator's configuration: an unknown `tls_client_certs` value.
    #[error("tls_client_certs must be off, optional or require, not {0:?}")]
    ClientCertsValue(String),
    /// The operator's configuration, as rustls judged it (a key that does
    /// not match its certificate, an unsupported key type, a bad CA).
    #[error("{context}: {source}")]
    Rustls {
        /// Which file or step.
        context: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The operator's configuration: the client-certificate verifier could
    /// not be built from the client CAs.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Whether a server asks clients for certificates (`tls_client_certs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientCerts {
    /// Never ask.
    Off,
    /// Ask, accept clients without one (Cyrus's default).
    #[default]
    Optional,
    /// Refuse clients without a valid one.
    Require,
}

/// The TLS-related imapd.conf settings, as paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `tls_server_cert` (comma-separated list allowed).
    pub server_cert: Vec<PathBuf>,
    /// `tls_server_key` (same length as `server_cert`, or empty).
    pub server_key: Vec<PathBuf>,
    /// `tls_client_ca_file`.
    pub client_ca_file: Option<PathBuf>,
    /// `tls_client_ca_dir`.
    pub client_ca_dir: Option<PathBuf>,
    /// `tls_client_certs`.
    pub client_certs: ClientCerts,
    /// `tls_server_ca_file`.
    pub server_ca_file: Option<PathBuf>,
    /// `tls_server_ca_dir`.
    pub server_ca_dir: Option<PathBuf>,
    /// `tls_client_cert` (`None` when unset or `disabled`).
    pub client_cert: Option<PathBuf>,
    /// `tls_client_key` (`None` when unset or `disabled`).
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the keys above through `lookup` (the imapd.conf reader, or a
    /// test's map). Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<TlsFiles, TlsError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let list = |k: &str| {
            get(k)
                .map(|v| v.split(',').map(PathBuf::from).collect())
                .unwrap_or_default()
        };
        let not_disabled = |k: &str| get(k).filter(|v| v != "disabled").map(PathBuf::from);
        let client_certs = match get("tls_client_certs").as_deref() {
            None | Some("optional") => ClientCerts::Optional,
            Some("off") => ClientCerts::Off,
            Some("require") => ClientCerts::Require,
            Some(other) => return Err(TlsError::ClientCertsValue(other.to_owned())),
        };
        Ok(TlsFiles {
            server_cert: list("tls_server_cert"),
            server_key: list("tls_server_key"),
            client_ca_file: get("tls_client_ca_file").map(PathBuf::from),
            client_ca_dir: get("tls_client_ca_dir").map(PathBuf::from),
            client_certs,
            server_ca_file: get("tls_server_ca_file").map(PathBuf::from),
            server_ca_dir: get("tls_server_ca_dir").map(PathBuf::from),
            client_cert: not_disabled("tls_client_cert"),
            client_key: not_disabled("tls_client_key"),
        })
    }
}

/// The configurations a driver may need: one per role. A missing one means
/// the driver refuses that role's `StartLayer` (and a machine should not
/// offer STARTTLS).
#[derive(Clone, Debug, Default)]
pub struct TlsConfigs {
    /// For `Layer::TlsServer`.
    pub server: Option<Arc<ServerConfig>>,
    /// For `Layer::TlsClient`.
    pub client: Option<Arc<ClientConfig>>,
}

impl TlsConfigs {
    /// Builds both roles from `files`: the server role only if
    /// `tls_server_cert` is set; the client role always (it needs trust
    /// anchors; without configured ones, [`SYSTEM_CA_BUNDLE`] if present).
    pub fn from_files(files: &TlsFiles) -> Result<TlsConfigs, TlsError> {
        let server = if files.server_cert.is_empty() {
            None
        } else {
            Some(server_config(files)?)
        };
        let client = match client_config(files) {
            Ok(c) => Some(c),
            // A server-only deployment needs no client trust anchors.
            Err(TlsError::NoTrustAnchors) => None,
            Err(e) => return Err(e),
        };
        Ok(TlsConfigs { server, client })
    }
}

/// The crypto provider every config here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from `tls_server_cert`/`tls_server_key` and the
/// client-certificate settings.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    if !files.server_key.is_empty() && files.server_key.len() != files.server_cert.len() {
        return Err(TlsError::CertKeyCount {
            certs: files.server_cert.len(),
            keys: files.server_key.len(),
        });
    }
    let mut keys = Vec::new();
    for (i, cert_path) in files.server_cert.iter().enumerate() {
        let key_path = files.server_key.get(i).unwrap_or(cert_path);
        let chain = load_certs(cert_path)?;
        let key = load_key(key_path)?;
        let ck =
            CertifiedKey::from_der(chain, key, &provider).map_err(|source| TlsError::Rustls {
                context: format!("{} with {}", cert_path.display(), key_path.display()),
                source,
            })?;
        keys.push(Arc::new(ck));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            context: "protocol versions".into(),
            source,
        })?;
    let mut roots = RootCertStore::empty();
    add_roots(
        &mut roots,
        files.client_ca_file.as_deref(),
        files.client_ca_dir.as_deref(),
    )?;
    let builder = if files.client_certs == ClientCerts::Off || roots.is_empty() {
        builder.with_no_client_auth()
    } else {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = match files.client_certs {
            ClientCerts::Require => verifier.build()?,
            _ => verifier.allow_unauthenticated().build()?,
        };
        builder.with_client_cert_verifier(verifier)
    };
    let config = builder.with_cert_resolver(Arc::new(ByKeyType(keys)));
    Ok(Arc::new(config))
}

/// A client configuration: trust anchors from `tls_server_ca_file`/`_dir`
/// (else [`SYSTEM_CA_BUNDLE`]), and our certificate from
/// `tls_client_cert`/`tls_client_key` if set.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    add_roots(
        &mut roots,
        files.server_ca_file.as_deref(),
        files.server_ca_dir.as_deref(),
    )?;
    if roots.is_empty()
        && files.server_ca_file.is_none()
        && files.server_ca_dir.is_none()
        && Path::new(SYSTEM_CA_BUNDLE).exists()
    {
        add_roots(&mut roots, Some(Path::new(SYSTEM_CA_BUNDLE)), None)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            context: "protocol versions".into(),
            source,
        })?
        .with_root_certificates(roots);
    let config = match (&files.client_cert, &files.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::Rustls {
                context: format!("{} with {}", cert.display(), key.display()),
                source,
            })?,
        _ => return Err(TlsError::ClientCertWithoutKey),
    };
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file, in order (end entity first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(read_err)?
        .ok_or_else(|| TlsError::NoKey(path.to_owned()))
}

/// Adds the certificates of `file` and of every regular file in `dir`
/// (OpenSSL hash links and bundles alike; files without certificates are
/// skipped, in name order so the result does not depend on readdir order).
fn add_roots(
    roots: &mut RootCertStore,
    file: Option<&Path>,
    dir: Option<&Path>,
) -> Result<(), TlsError> {
    let mut add = |path: &Path, required: bool| -> Result<(), TlsError> {
        match load_certs(path) {
            Ok(certs) => {
                for cert in certs {
                    roots.add(cert).map_err(|source| TlsError::Rustls {
                        context: format!("CA in {}", path.display()),
                        source,
                    })?;
                }
                Ok(())
            }
            Err(TlsError::NoCertificate(_)) if !required => Ok(()),
            Err(e) => Err(e),
        }
    };
    if let Some(file) = file {
        add(file, true)?;
    }
    if let Some(dir) = dir {
        let entries = fs::read_dir(dir).map_err(|source| TlsError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for p in paths {
            add(&p, false)?;
        }
    }
    Ok(())
}

/// Picks, among the configured chains, the first whose key can sign with a
/// scheme the client offers (Cyrus's "two certificates, e.g. RSA and EC").
#[derive(Debug)]
struct ByKeyType(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for ByKeyType {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        self.0
            .iter()
            .find(|ck| ck.key.choose_scheme(schemes).is_some())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn reads_cyrus_keys() {
        let conf: BTreeMap<&str, &str> = [
            ("tls_server_cert", "/a/rsa.pem,/a/ec.pem"),
            ("tls_server_key", "/a/rsa.key,/a/ec.key"),
            ("tls_client_certs", "require"),
            ("tls_client_cert", "disabled"),
            ("tls_server_ca_file", "/a/ca.pem"),
        ]
        .into();
        let files = TlsFiles::from_lookup(|k| conf.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(
            files.server_cert,
            [PathBuf::from("/a/rsa.pem"), PathBuf::from("/a/ec.pem")]
        );
        assert_eq!(files.server_key.len(), 2);
        assert_eq!(files.client_certs, ClientCerts::Require);
        assert_eq!(files.client_cert, None);
        assert_eq!(files.server_ca_file, Some(PathBuf::from("/a/ca.pem")));
        assert!(
            TlsFiles::from_lookup(|k| (k == "tls_client_certs").then(|| "maybe".into())).is_err()
        );
    }

    #[test]
    fn missing_files_name_the_path() {
        let files = TlsFiles {
            server_cert: vec!["/nonexistent/cert.pem".into()],
            ..TlsFiles::default()
        };
        let err = server_config(&files).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }
}
