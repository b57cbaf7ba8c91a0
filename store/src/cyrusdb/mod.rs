//! Cyrus's own key/value database files (`cyrusdb`), written and read the
//! way Cyrus 3.6 does, so that a real Cyrus process can share a file with
//! corvid.
//!
//! Only [`twoskip`] is here: it is Cyrus's default backend for
//! `mailboxes.db` (and most other databases). A MUPDATE slave on a Murder
//! frontend keeps the frontend's `mailboxes.db` in it, and the frontend's
//! unmodified imapd/lmtpd read it to route.
//!
//! What it never does: interpret keys or values (that is the user's job:
//! `store::mupdate::mailboxes_db` knows what a mailboxes.db entry is), or
//! speak a protocol.

pub mod twoskip;
