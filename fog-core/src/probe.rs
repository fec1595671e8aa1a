//! The connectivity-check interface a punch layer drives; the shared UDP socket implements it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::attempt::SessionKeys;

/// A valid reply to one of our checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckReply {
    /// Who answered (the address our check went to).
    pub remote: SocketAddr,
    /// Time from our check to its reply.
    pub rtt: Duration,
}

/// Sends authenticated connectivity checks and answers the peer's.
pub trait Prober: Send + Sync + 'static {
    /// The local socket address checks leave from (and the connection will use).
    fn local_addr(&self) -> SocketAddr;

    /// Starts answering checks of `session` for a while and returns the replies to our own checks
    /// in this session. Dropping the receiver stops the delivery, not the answering.
    fn watch(&self, session: &SessionKeys) -> mpsc::UnboundedReceiver<CheckReply>;

    /// Sends one check of `session` to `remote`.
    fn send_check(&self, session: &SessionKeys, remote: SocketAddr) -> std::io::Result<()>;
}
