//! Errors of connection attempts, with the cause a user needs to act on.

/// The error type at every service boundary of the stack.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an attempt to connect failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The signal server could not be reached or dropped the connection.
    #[error("signal server unreachable: {0}")]
    SignalUnreachable(String),
    /// The signal server does not know this peer id or name.
    #[error("peer unknown: {0}")]
    PeerUnknown(String),
    /// The peer is known to the signal server but not connected to it now.
    #[error("peer offline: {0}")]
    PeerOffline(String),
    /// The signal server refused a request.
    #[error("signal server refused: {0}")]
    SignalRefused(String),
    /// The peer refused the offer.
    #[error("peer refused the connection: {0}")]
    Refused(String),
    /// No candidate pair answered a connectivity check.
    #[error("no path to the peer: {0}")]
    NoPath(String),
    /// The two sides share no transport protocol.
    #[error("no common protocol: we offer {ours}, the peer accepts {theirs}")]
    NoCommonProtocol {
        /// Ours, comma separated.
        ours: String,
        /// Theirs, comma separated.
        theirs: String,
    },
    /// A name answered with another key than the one this node knew it by (its known
    /// peers), and the node was not told to accept a new one.
    #[error("{0}")]
    NameKeyChanged(String),
    /// The transport handshake failed: wrong key, bad certificate, or refused.
    #[error("handshake refused: {0}")]
    HandshakeRefused(String),
    /// A stage did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A layer needs something that no earlier layer in the stack provided.
    #[error("{layer} needs {needs}; add the layer that provides it before {layer}")]
    MissingInput {
        /// The layer that failed.
        layer: &'static str,
        /// What it needed.
        needs: &'static str,
    },
    /// The node is shutting down.
    #[error("node is shut down")]
    Shutdown,
}

impl ConnectError {
    /// A short name of the cause, for command-line output and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::SignalUnreachable(_) => "signal unreachable",
            ConnectError::PeerUnknown(_) => "peer unknown",
            ConnectError::PeerOffline(_) => "peer offline",
            ConnectError::SignalRefused(_) => "signal refused",
            ConnectError::Refused(_) => "handshake refused",
            ConnectError::NoPath(_) => "no path",
            ConnectError::NoCommonProtocol { .. } => "no common protocol",
            ConnectError::HandshakeRefused(_) => "handshake refused",
            ConnectError::NameKeyChanged(_) => "name key changed",
            ConnectError::Timeout(_) => "timeout",
            ConnectError::MissingInput { .. } => "misconfigured stack",
            ConnectError::Shutdown => "shut down",
        }
    }

    /// Finds a `ConnectError` in `error` or its sources; tower's `Elapsed` counts as a timeout.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<ConnectError> {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<ConnectError>() {
                return Some(found.clone());
            }
            if e.is::<tower::timeout::error::Elapsed>() {
                return Some(ConnectError::Timeout("the connect stack".into()));
            }
            current = e.source();
        }
        None
    }
}
