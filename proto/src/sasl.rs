//! SASL PLAIN (RFC 4616) and LOGIN, server and client side, sans-IO, as
//! Cyrus SASL 2.1.28's `plain` and `login` plugins speak them.
//!
//! Both protocols corvid serves carry SASL the same way at this level: an
//! optional base64 initial response on the AUTHENTICATE line, then server
//! challenges and client responses, each base64. Only the framing differs
//! (csync sends `+ <base64>` challenges and takes `=` for an empty initial
//! response; MUPDATE sends the challenge as a bare line and takes the initial
//! response as a string), and that framing lives with each protocol's codec.
//! This module holds what they share: the mechanisms as state machines over
//! raw bytes ([`Server`], [`Client`]), and the base64 step codec
//! ([`decode_response`], [`decode_initial`], [`encode`], [`encode_initial`])
//! including the `*` cancel line.
//!
//! What it never does: check a password (the [`Server`] ends with
//! [`Credentials`] that the caller hands to an authenticator: checking may
//! need a socket, which this crate never touches), negotiate a security
//! layer (PLAIN and LOGIN have none, so nothing after the OK is wrapped), or
//! show a password in `Debug` output ([`Secret`] redacts itself).
//!
//! Why not a crate: rsasl, the maintained Rust SASL framework, validates
//! credentials inside the exchange through a synchronous callback, while
//! corvid's check is asynchronous (saslauthd is a socket) and belongs to the
//! I/O layer; it also brings a mechanism registry and feature matrix for
//! two mechanisms that are each a few dozen lines. Written by hand instead,
//! with Cyrus's plugins as the reference for what is accepted.
//!
//! Wire details kept from Cyrus:
//! - PLAIN: `[authzid] NUL authcid NUL passwd`; exactly two NULs (a NUL in
//!   the password is refused, Cyrus: "Got more data than we were
//!   expecting"); an empty authzid means "same as authcid".
//! - PLAIN without an initial response: the server sends an empty challenge.
//! - LOGIN: challenges are exactly `Username:` and `Password:`; a non-empty
//!   initial response is taken as the user name (the `Username:` step is
//!   then skipped); user name and password are each at most 1024 bytes.

use std::fmt;

use base64::Engine as _;

/// The challenge Cyrus's LOGIN plugin sends for the user name.
pub const LOGIN_USERNAME_CHALLENGE: &[u8] = b"Username:";
/// The challenge Cyrus's LOGIN plugin sends for the password.
pub const LOGIN_PASSWORD_CHALLENGE: &[u8] = b"Password:";

/// A mechanism corvid speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// Every mechanism, in the order a server offers them.
    pub const ALL: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

    /// The mechanism named `name` (SASL names compare case-insensitively).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }

    /// The registered name, upper case.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }

    /// The mechanisms corvid knows in a space-separated list (a banner's
    /// `* SASL PLAIN LOGIN`, or `sasl_mech_list`), in the list's order,
    /// without repeats; names corvid does not speak are skipped.
    pub fn parse_list(list: &str) -> Vec<Mechanism> {
        let mut out = Vec::new();
        for m in list
            .split_ascii_whitespace()
            .filter_map(Mechanism::from_name)
        {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes that must never be shown: a password, or a client response that
/// carries one. `Debug` prints only the length.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The secret bytes, for the one place that needs them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: do not leave the password in freed memory.
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

/// What a client proved it knows, as the mechanism received it; not yet checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The identity to act as; `None` when the client named none (PLAIN's
    /// empty authzid, and always for LOGIN): act as `authcid`.
    pub authzid: Option<String>,
    /// The identity whose password this is. Never empty.
    pub authcid: String,
    pub password: Secret,
}

impl Credentials {
    /// The identity the session acts as: `authzid`, else `authcid`.
    pub fn effective_id(&self) -> &str {
        self.authzid.as_deref().unwrap_or(&self.authcid)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &self.password)
            .finish()
    }
}

/// Limits on what a peer can make us hold.
#[derive(Debug, Clone)]
pub struct Options {
    /// The largest decoded response (or initial response) accepted. The
    /// default, 8192, is the size of libsasl's whole saslauthd request.
    pub response_bytes_max: usize,
    /// LOGIN's user name and password limit (Cyrus: 1024 each).
    pub login_field_bytes_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            response_bytes_max: 8192,
            login_field_bytes_max: 1024,
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslError {
    /// The peer asked for a mechanism corvid does not speak: the peer's choice.
    #[error("unknown SASL mechanism {0:?}")]
    UnknownMechanism(String),
    /// A step was not valid base64: the peer's malformed bytes.
    #[error("invalid base64 in SASL exchange")]
    BadBase64,
    /// A step was longer than the limit in [`Options`]: a peer over our limit.
    #[error("SASL response longer than {bytes_max} bytes")]
    TooLong { bytes_max: usize },
    /// The PLAIN message or LOGIN field broke the mechanism's grammar: the peer's malformed bytes.
    #[error("malformed {mechanism} message: {reason}")]
    Malformed {
        mechanism: Mechanism,
        reason: &'static str,
    },
    /// The client canceled with `*`: the peer's choice.
    #[error("client canceled authentication")]
    Canceled,
    /// The server sent a challenge the mechanism has no answer for: a peer that broke the protocol.
    #[error("unexpected {mechanism} challenge from the server")]
    UnexpectedChallenge { mechanism: Mechanism },
    /// A step after the exchange ended: our caller's misuse.
    #[error("SASL exchange already finished")]
    Finished,
}

/// A server's answer to one step.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerStep {
    /// Send this challenge (raw bytes; [`encode`] it) and feed the client's
    /// answer to [`Server::step`].
    Challenge(Vec<u8>),
    /// The exchange is complete: check these credentials.
    Done(Credentials),
}

#[derive(Debug)]
enum ServerState {
    /// PLAIN, empty challenge sent, waiting for the message.
    PlainWait,
    /// LOGIN, `Username:` sent.
    LoginUser,
    /// LOGIN, `Password:` sent for this user.
    LoginPassword {
        authcid: String,
    },
    Finished,
}

/// The server side of one exchange.
///
/// Call order: [`Server::start`] with the decoded initial response (if the
/// client sent one), then [`Server::step`] with each decoded response while
/// the answer is [`ServerStep::Challenge`]. An `Err` ends the exchange.
#[derive(Debug)]
pub struct Server {
    mechanism: Mechanism,
    opts: Options,
    state: ServerState,
}

impl Server {
    /// Starts `mechanism`; `initial` is the decoded initial response, if the
    /// client sent one (an empty one, `=`, is `Some(&[])`).
    pub fn start(
        mechanism: Mechanism,
        initial: Option<&[u8]>,
        opts: Options,
    ) -> Result<(Server, ServerStep), SaslError> {
        let mut server = Server {
            mechanism,
            opts,
            state: ServerState::Finished,
        };
        let step = match (mechanism, initial) {
            (Mechanism::Plain, None) => {
                server.state = ServerState::PlainWait;
                ServerStep::Challenge(Vec::new())
            }
            (Mechanism::Plain, Some(msg)) => ServerStep::Done(server.plain(msg)?),
            (Mechanism::Login, None | Some(&[])) => {
                server.state = ServerState::LoginUser;
                ServerStep::Challenge(LOGIN_USERNAME_CHALLENGE.to_vec())
            }
            (Mechanism::Login, Some(user)) => server.login_user(user)?,
        };
        Ok((server, step))
    }

    /// Starts the mechanism named `name` (as a client wrote it).
    pub fn start_named(
        name: &str,
        initial: Option<&[u8]>,
        opts: Options,
    ) -> Result<(Server, ServerStep), SaslError> {
        let m = Mechanism::from_name(name)
            .ok_or_else(|| SaslError::UnknownMechanism(name.to_owned()))?;
        Server::start(m, initial, opts)
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Feeds the client's decoded response to the last challenge.
    pub fn step(&mut self, response: &[u8]) -> Result<ServerStep, SaslError> {
        let state = std::mem::replace(&mut self.state, ServerState::Finished);
        if response.len() > self.opts.response_bytes_max {
            return Err(SaslError::TooLong {
                bytes_max: self.opts.response_bytes_max,
            });
        }
        match state {
            ServerState::PlainWait => Ok(ServerStep::Done(self.plain(response)?)),
            ServerState::LoginUser => self.login_user(response),
            ServerState::LoginPassword { authcid } => {
                self.login_field(response)?;
                Ok(ServerStep::Done(Credentials {
                    authzid: None,
                    authcid,
                    password: Secret::new(response),
                }))
            }
            ServerState::Finished => Err(SaslError::Finished),
        }
    }

    fn malformed(&self, reason: &'static str) -> SaslError {
        SaslError::Malformed {
            mechanism: self.mechanism,
            reason,
        }
    }

    fn plain(&self, msg: &[u8]) -> Result<Credentials, SaslError> {
        if msg.len() > self.opts.response_bytes_max {
            return Err(SaslError::TooLong {
                bytes_max: self.opts.response_bytes_max,
            });
        }
        let mut parts = msg.splitn(3, |&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(self.malformed("expected authzid NUL authcid NUL password"));
        };
        if password.contains(&0) {
            return Err(self.malformed("more than two NUL separators"));
        }
        if authcid.is_empty() {
            return Err(self.malformed("empty authentication identity"));
        }
        if password.is_empty() {
            return Err(self.malformed("empty password"));
        }
        let authcid = std::str::from_utf8(authcid)
            .map_err(|_| self.malformed("authentication identity is not UTF-8"))?;
        let authzid = std::str::from_utf8(authzid)
            .map_err(|_| self.malformed("authorization identity is not UTF-8"))?;
        Ok(Credentials {
            authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
            authcid: authcid.to_owned(),
            password: Secret::new(password),
        })
    }

    fn login_field(&self, field: &[u8]) -> Result<(), SaslError> {
        if field.len() > self.opts.login_field_bytes_max {
            return Err(self.malformed("field longer than 1024 bytes"));
        }
        if field.contains(&0) {
            return Err(self.malformed("NUL in field"));
        }
        Ok(())
    }

    fn login_user(&mut self, user: &[u8]) -> Result<ServerStep, SaslError> {
        self.login_field(user)?;
        if user.is_empty() {
            return Err(self.malformed("empty user name"));
        }
        let authcid =
            std::str::from_utf8(user).map_err(|_| self.malformed("user name is not UTF-8"))?;
        self.state = ServerState::LoginPassword {
            authcid: authcid.to_owned(),
        };
        Ok(ServerStep::Challenge(LOGIN_PASSWORD_CHALLENGE.to_vec()))
    }
}

#[derive(Debug)]
enum ClientState {
    /// Nothing sent yet.
    Start,
    /// PLAIN message sent.
    PlainSent,
    /// LOGIN user name sent.
    LoginUserSent,
    /// LOGIN password sent.
    LoginPasswordSent,
}

/// The client side of one exchange (corvid's sync_client and MUPDATE slave
/// logging in to a Cyrus server).
///
/// Call order: [`Client::initial_response`] once, if the protocol lets the
/// client send one (send it with [`encode_initial`]); then [`Client::step`]
/// with each decoded challenge until the server says OK or NO.
#[derive(Debug)]
pub struct Client {
    mechanism: Mechanism,
    credentials: Credentials,
    state: ClientState,
}

impl Client {
    pub fn new(mechanism: Mechanism, credentials: Credentials) -> Client {
        Client {
            mechanism,
            credentials,
            state: ClientState::Start,
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The initial response to put on the AUTHENTICATE line: PLAIN's whole
    /// message; `None` for LOGIN (Cyrus's LOGIN client sends none). Calling
    /// this commits to sending it: a later empty challenge is then refused.
    /// To go without one, do not call it; [`Client::step`] answers the
    /// server's empty challenge instead.
    pub fn initial_response(&mut self) -> Option<Secret> {
        match (self.mechanism, &self.state) {
            (Mechanism::Plain, ClientState::Start) => {
                self.state = ClientState::PlainSent;
                Some(self.plain_message())
            }
            _ => None,
        }
    }

    fn plain_message(&self) -> Secret {
        let c = &self.credentials;
        let mut m = Vec::with_capacity(c.authcid.len() * 2 + c.password.len() + 2);
        m.extend_from_slice(c.authzid.as_deref().unwrap_or("").as_bytes());
        m.push(0);
        m.extend_from_slice(c.authcid.as_bytes());
        m.push(0);
        m.extend_from_slice(c.password.expose());
        Secret(m)
    }

    /// The response to the server's decoded `challenge`.
    pub fn step(&mut self, challenge: &[u8]) -> Result<Secret, SaslError> {
        let unexpected = SaslError::UnexpectedChallenge {
            mechanism: self.mechanism,
        };
        match (self.mechanism, &self.state) {
            // No initial response was sent: the server's empty challenge asks for it.
            (Mechanism::Plain, ClientState::Start) if challenge.is_empty() => {
                self.state = ClientState::PlainSent;
                Ok(self.plain_message())
            }
            // Cyrus's LOGIN client answers the first two challenges in
            // order without reading their text; so do we.
            (Mechanism::Login, ClientState::Start) => {
                self.state = ClientState::LoginUserSent;
                Ok(Secret::new(self.credentials.authcid.as_bytes()))
            }
            (Mechanism::Login, ClientState::LoginUserSent) => {
                self.state = ClientState::LoginPasswordSent;
                Ok(self.credentials.password.clone())
            }
            _ => Err(unexpected),
        }
    }
}

/// What a client sent in answer to a challenge.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// The `*` line: stop, answer "canceled".
    Cancel,
    /// The decoded response.
    Data(Secret),
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn decode_bounded(text: &[u8], bytes_max: usize) -> Result<Vec<u8>, SaslError> {
    // Refuse before decoding so an enormous line costs nothing more.
    if text.len() / 4 * 3 > bytes_max + 2 {
        return Err(SaslError::TooLong { bytes_max });
    }
    let out = b64().decode(text).map_err(|_| SaslError::BadBase64)?;
    if out.len() > bytes_max {
        return Err(SaslError::TooLong { bytes_max });
    }
    Ok(out)
}

/// Decodes a client's response line (without its CRLF): `*` cancels,
/// anything else is base64 (an empty line is an empty response).
pub fn decode_response(line: &[u8], opts: &Options) -> Result<Response, SaslError> {
    if line == b"*" {
        return Ok(Response::Cancel);
    }
    decode_bounded(line, opts.response_bytes_max).map(|d| Response::Data(Secret(d)))
}

/// Decodes an initial response as it appears on an AUTHENTICATE line: `=`
/// is the empty response (RFC 4959), anything else is base64.
pub fn decode_initial(text: &[u8], opts: &Options) -> Result<Secret, SaslError> {
    if text == b"=" {
        return Ok(Secret::default());
    }
    decode_bounded(text, opts.response_bytes_max).map(Secret)
}

/// Base64 of a challenge or response step (empty for empty).
pub fn encode(bytes: &[u8]) -> String {
    b64().encode(bytes)
}

/// Base64 of an initial response, `=` for an empty one.
pub fn encode_initial(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "=".to_owned()
    } else {
        b64().encode(bytes)
    }
}
