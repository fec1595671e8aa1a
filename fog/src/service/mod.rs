//! What a node offers on the streams its peers open: echo, port forwarding to the TCP services
//! it exposes, and an inbox for files.
//!
//! A stream that asks for a service starts with a short preamble: [`MAGIC`], then a
//! length-prefixed JSON [`Request`]; the node answers with a length-prefixed JSON [`Reply`]
//! before anything else. A stream without the preamble is echoed, so plain echo clients keep
//! working.
//!
//! ```no_run
//! # async fn run(node: fog::Node) -> Result<(), fog::BoxError> {
//! use fog::service::{Exposed, Services};
//! use futures_util::StreamExt;
//!
//! // Serve: peers may reach the local web server on port 8000, and nothing else.
//! let services = Services::new()
//!     .expose(Exposed::resolve(&["127.0.0.1:8000".to_string()]).await?)
//!     .inbox(fog::service::Inbox::open("inbox")?);
//! let mut incoming = node.incoming();
//! while let Some(conn) = incoming.next().await {
//!     tokio::spawn(services.clone().serve_connection(conn));
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fog_core::{BiStream, Connection, ConnectionError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod forward;
mod inbox;
mod send;

pub use forward::{forward_stream, serve_forward, Exposed};
pub use inbox::{safe_file_name, Inbox};
pub use send::{hash_file, send_file, SendReport};

/// First bytes of a stream that asks for a service.
pub const MAGIC: &[u8; 8] = b"\0fogsvc1";
/// Longest request or reply; more is a protocol error.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// How long a node waits for a request's preamble.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a stream asks the serving node for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "service", rename_all = "snake_case")]
pub enum Request {
    /// Carry this stream to an exposed TCP service: `to` as given to `--expose`, or `None`
    /// when the node exposes exactly one.
    Forward {
        /// The service, `HOST:PORT`.
        to: Option<String>,
    },
    /// Store a file in the inbox. The node answers with the offset to go on from (the bytes
    /// of an earlier, interrupted transfer of the same content), then takes the rest.
    Send {
        /// The file's own name, without any directory.
        name: String,
        /// Its size in bytes.
        size: u64,
        /// Its SHA-256, lowercase hex.
        sha256: String,
    },
}

/// The serving node's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// Accepted; for a file, from which byte the sender goes on.
    Ok {
        /// Bytes of the file the node already holds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// A file arrived whole and verified.
    Saved {
        /// Its name in the inbox.
        path: String,
        /// Its size.
        bytes: u64,
        /// Its SHA-256, lowercase hex.
        sha256: String,
    },
    /// Refused or failed.
    Error {
        /// Short cause: `not_exposed`, `no_inbox`, `bad_name`, `hash_mismatch`, `io`, ….
        kind: String,
        /// What went wrong.
        message: String,
    },
}

impl Reply {
    fn error(kind: &str, message: impl Into<String>) -> Reply {
        Reply::Error {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

/// Why a service request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The stream or the connection broke.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// Opening a stream failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The other side spoke something else.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The serving node refused or failed.
    #[error("{kind}: {message}")]
    Refused {
        /// Short cause, as in [`Reply::Error`].
        kind: String,
        /// What the node said.
        message: String,
    },
}

/// Writes one length-prefixed JSON message.
pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    message: &T,
) -> Result<(), ServiceError> {
    let body = serde_json::to_vec(message).map_err(|e| ServiceError::Protocol(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(ServiceError::Protocol(format!(
            "message of {} bytes, more than {MAX_MESSAGE}",
            body.len()
        )));
    }
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Sends the reply that ends a service stream, and closes our side of it.
async fn close_with(stream: &mut BiStream, reply: &Reply) -> Result<(), ServiceError> {
    write_message(stream, reply).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Reads one length-prefixed JSON message.
pub async fn read_message<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<T, ServiceError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(ServiceError::Protocol(format!(
            "message of {len} bytes, more than {MAX_MESSAGE}"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| ServiceError::Protocol(e.to_string()))
}

/// Opens a stream to the peer and asks for `request`; the stream once the node said yes, with
/// the node's [`Reply::Ok`] offset.
pub async fn open_service(
    conn: &Connection,
    request: &Request,
) -> Result<(BiStream, Option<u64>), ServiceError> {
    let (send, recv) = conn.open_bi().await?;
    let mut stream = BiStream { send, recv };
    stream.write_all(MAGIC).await?;
    write_message(&mut stream, request).await?;
    match read_message(&mut stream).await? {
        Reply::Ok { offset } => Ok((stream, offset)),
        Reply::Error { kind, message } => Err(ServiceError::Refused { kind, message }),
        other => Err(ServiceError::Protocol(format!(
            "unexpected reply {other:?}"
        ))),
    }
}

/// How a stream opens.
#[derive(Debug, PartialEq, Eq)]
enum Opening {
    /// A service request.
    Request(Request),
    /// No preamble: these first bytes are data.
    Plain(Vec<u8>),
}

/// Reads the preamble, if the stream has one.
async fn read_opening<R: AsyncRead + Unpin>(r: &mut R) -> Result<Opening, ServiceError> {
    let mut head = Vec::with_capacity(MAGIC.len());
    let mut byte = [0u8; 1];
    // Byte by byte, so that a short plain stream is not held up waiting for eight bytes.
    while head.len() < MAGIC.len() {
        if r.read(&mut byte).await? == 0 {
            return Ok(Opening::Plain(head));
        }
        head.push(byte[0]);
        if head[..] != MAGIC[..head.len()] {
            return Ok(Opening::Plain(head));
        }
    }
    Ok(Opening::Request(read_message(r).await?))
}

/// What a node offers its peers' streams. Cheap to clone.
#[derive(Clone, Default)]
pub struct Services {
    exposed: Arc<Exposed>,
    inbox: Option<Arc<Inbox>>,
    refuse_plain: bool,
}

impl Services {
    /// Echo only.
    pub fn new() -> Self {
        Services::default()
    }

    /// Lets peers forward streams to these TCP services.
    pub fn expose(mut self, exposed: Exposed) -> Self {
        self.exposed = Arc::new(exposed);
        self
    }

    /// Takes files into `inbox`.
    pub fn inbox(mut self, inbox: Inbox) -> Self {
        self.inbox = Some(Arc::new(inbox));
        self
    }

    /// Closes streams without a service preamble instead of echoing them.
    pub fn without_echo(mut self) -> Self {
        self.refuse_plain = true;
        self
    }

    /// Serves every stream of `conn` until it closes.
    pub async fn serve_connection(self, conn: Connection) {
        let peer = conn.peer_id();
        let streams = async {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let services = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = services.serve_stream(BiStream { send, recv }).await {
                        tracing::debug!(%peer, error = %e, "stream ended with an error");
                    }
                });
            }
        };
        // Datagrams, where the transport has them, are echoed as they come (same size, to
        // the authenticated peer only, so nothing is amplified).
        let datagrams = async {
            if conn.max_datagram_size().is_some() {
                while let Ok(datagram) = conn.recv_datagram().await {
                    let _ = conn.send_datagram(&datagram);
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = streams => {}
            _ = datagrams => {}
        }
    }

    /// Serves one stream.
    pub async fn serve_stream(&self, mut stream: BiStream) -> Result<(), ServiceError> {
        let opening = tokio::time::timeout(REQUEST_TIMEOUT, read_opening(&mut stream))
            .await
            .map_err(|_| ServiceError::Protocol("no request within 10 s".into()))??;
        match opening {
            Opening::Plain(_) if self.refuse_plain => {
                stream.shutdown().await?;
                Ok(())
            }
            Opening::Plain(head) => {
                stream.write_all(&head).await?;
                let BiStream { mut send, mut recv } = stream;
                tokio::io::copy(&mut recv, &mut send).await?;
                send.shutdown().await?;
                Ok(())
            }
            Opening::Request(Request::Forward { to }) => {
                serve_forward(&self.exposed, to.as_deref(), stream).await
            }
            Opening::Request(Request::Send { name, size, sha256 }) => match &self.inbox {
                Some(inbox) => inbox.receive(&name, size, &sha256, stream).await,
                None => {
                    let reply = Reply::error("no_inbox", "this node takes no files (no --inbox)");
                    close_with(&mut stream, &reply).await
                }
            },
        }
    }
}

/// The address a stream asked for, in log lines.
fn describe_target(to: Option<&str>, addr: Option<SocketAddr>) -> String {
    match (to, addr) {
        (_, Some(addr)) => addr.to_string(),
        (Some(to), None) => to.to_string(),
        (None, None) => "the default service".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_round_trips_through_the_preamble() {
        let request = Request::Send {
            name: "a.bin".into(),
            size: 3,
            sha256: "ab".into(),
        };
        let mut wire = MAGIC.to_vec();
        write_message(&mut wire, &request).await.unwrap();
        let mut reader = &wire[..];
        assert_eq!(
            read_opening(&mut reader).await.unwrap(),
            Opening::Request(request)
        );
    }

    #[tokio::test]
    async fn plain_data_is_not_taken_for_a_request() {
        for data in [&b"hello"[..], b"", b"\0fog", b"\0fogsvX and more"] {
            let mut reader = data;
            match read_opening(&mut reader).await.unwrap() {
                Opening::Plain(head) => {
                    assert!(data.starts_with(&head), "{data:?} {head:?}");
                    // What was read plus what is left is the whole stream.
                    assert_eq!([&head[..], reader].concat(), data);
                }
                other => panic!("{data:?} read as {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_oversized_or_broken_message_is_a_protocol_error() {
        let mut wire = ((MAX_MESSAGE + 1) as u32).to_be_bytes().to_vec();
        wire.extend(vec![b' '; MAX_MESSAGE + 1]);
        let err = read_message::<_, Request>(&mut &wire[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::Protocol(_)), "{err}");
        let mut wire = 5u32.to_be_bytes().to_vec();
        wire.extend(b"{nope");
        let err = read_message::<_, Request>(&mut &wire[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::Protocol(_)), "{err}");
    }
}
