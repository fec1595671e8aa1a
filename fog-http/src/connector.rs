//! [`FogConnector`]: a `tower::Service<Uri>` that dials peers by id or name.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use fog::{BiStream, Connection, Node, RecvHalf, SendHalf};
use http::Uri;

use crate::io::{FogIo, PeerInfo};

/// Why a connector could not hand out a stream.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The URI names no peer.
    #[error("{0}: the URI's host must name a peer, as in http://<peer>.fog/")]
    NoPeer(Uri),
    /// Dialling the peer failed.
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        /// The peer, as the URI named it.
        peer: String,
        /// Why.
        source: fog::BoxError,
    },
    /// The connection is up but a stream could not be opened on it.
    #[error("cannot open a stream to {peer}: {source}")]
    Stream {
        /// The peer, as the URI named it.
        peer: String,
        /// Why.
        source: fog::BoxError,
    },
}

/// The peer a URI names: its host, without a trailing `.fog`. A peer id or a registered name
/// (names with `:` cannot be a URI host; use the peer id).
pub fn peer_of(uri: &Uri) -> Result<String, ConnectorError> {
    let host = uri
        .host()
        .ok_or_else(|| ConnectorError::NoPeer(uri.clone()))?;
    let host = host.trim_end_matches('.');
    let peer = match host.len().checked_sub(4) {
        Some(cut) if host[cut..].eq_ignore_ascii_case(".fog") => &host[..cut],
        _ => host,
    };
    if peer.is_empty() {
        return Err(ConnectorError::NoPeer(uri.clone()));
    }
    Ok(peer.to_string())
}

/// One P2P connection per peer, dialled on first use and again when it closed.
type Pool = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Connection>>>>>>;

/// Dials the peer a URI names through a [`Node`] and opens a stream for each HTTP connection.
/// Clones share the node and the connections.
#[derive(Clone)]
pub struct FogConnector {
    node: Node,
    pool: Pool,
}

impl FogConnector {
    /// A connector dialling through `node`.
    pub fn new(node: Node) -> Self {
        FogConnector {
            node,
            pool: Pool::default(),
        }
    }

    /// The connection to `peer` when one is open.
    pub fn connection(&self, peer: &str) -> Option<Connection> {
        let slot = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .cloned()?;
        let conn = slot.try_lock().ok()?.clone();
        conn
    }

    /// A new stream to `peer`, on its open connection or on a new one.
    pub async fn open(&self, peer: &str) -> Result<FogIo, ConnectorError> {
        let slot = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer.to_string())
            .or_default()
            .clone();
        // Held while dialling, so that concurrent requests to one peer share one connection.
        let mut conn = slot.lock().await;
        if let Some(open) = conn.as_ref() {
            match open.open_bi().await {
                Ok((send, recv)) => return Ok(io(open, send, recv)),
                Err(e) => {
                    tracing::debug!(peer, error = %e, "connection gone; dialling again");
                    *conn = None;
                }
            }
        }
        let fresh = self
            .node
            .connect(peer)
            .await
            .map_err(|source| ConnectorError::Connect {
                peer: peer.to_string(),
                source,
            })?;
        let (send, recv) = fresh.open_bi().await.map_err(|e| ConnectorError::Stream {
            peer: peer.to_string(),
            source: e.into(),
        })?;
        let stream = io(&fresh, send, recv);
        *conn = Some(fresh);
        Ok(stream)
    }
}

fn io(conn: &Connection, send: SendHalf, recv: RecvHalf) -> FogIo {
    FogIo::new(BiStream { send, recv }, PeerInfo::of(conn))
}

/// The future of [`FogConnector`]'s `call`.
pub struct Connecting {
    inner: Pin<Box<dyn Future<Output = Result<FogIo, ConnectorError>> + Send>>,
}

impl Future for Connecting {
    type Output = Result<FogIo, ConnectorError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl tower_service::Service<Uri> for FogConnector {
    type Response = FogIo;
    type Error = ConnectorError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Connecting {
            inner: Box::pin(async move {
                let peer = peer_of(&uri)?;
                this.open(&peer).await
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_names_the_peer() {
        let peer = |s: &str| peer_of(&s.parse().unwrap());
        assert_eq!(peer("http://web.fog/").unwrap(), "web");
        assert_eq!(peer("http://WEB.FOG:8080/x").unwrap(), "WEB");
        assert_eq!(peer("http://abcdef/").unwrap(), "abcdef");
        assert_eq!(peer("http://a.b.fog./").unwrap(), "a.b");
        assert!(peer("http://.fog/").is_err());
        assert!(peer("/relative").is_err());
    }
}
