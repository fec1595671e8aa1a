//! [`FogListener`]: the streams peers open, for hyper, tonic and axum servers.

use std::io;

use fog::{Connection, Node};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::io::{FogIo, PeerInfo};

/// Streams waiting to be accepted before peers' new streams wait.
const BACKLOG: usize = 64;

/// Every stream every peer opens to a [`Node`], one at a time. Dropping it stops accepting.
pub struct FogListener {
    streams: mpsc::Receiver<FogIo>,
    local: PeerInfo,
    task: JoinHandle<()>,
}

impl FogListener {
    /// Takes over `node`'s incoming connections.
    pub fn new(node: &Node) -> Self {
        let (tx, streams) = mpsc::channel(BACKLOG);
        let mut incoming = node.incoming();
        let task = tokio::spawn(async move {
            while let Some(conn) = incoming.next().await {
                tokio::spawn(accept_streams(conn, tx.clone()));
            }
        });
        FogListener {
            streams,
            local: PeerInfo {
                peer: node.peer_id(),
                name: node.name().map(str::to_string),
                remote: node.local_addr(),
            },
            task,
        }
    }

    /// The next stream; `None` once the node shut down.
    pub async fn accept(&mut self) -> Option<FogIo> {
        self.streams.recv().await
    }

    /// The streams as tonic's `serve_with_incoming` wants them.
    pub fn into_stream(self) -> impl Stream<Item = Result<FogIo, io::Error>> + Send + 'static {
        futures_util::stream::unfold(self, |mut listener| async move {
            let io = listener.accept().await?;
            Some((Ok(io), listener))
        })
    }
}

impl Drop for FogListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_streams(conn: Connection, tx: mpsc::Sender<FogIo>) {
    let info = PeerInfo::of(&conn);
    while let Ok((send, recv)) = conn.accept_bi().await {
        let io = FogIo::new(fog::BiStream { send, recv }, info.clone());
        if tx.send(io).await.is_err() {
            return;
        }
    }
}

impl axum::serve::Listener for FogListener {
    type Io = FogIo;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (FogIo, PeerInfo) {
        match FogListener::accept(self).await {
            Some(io) => {
                let info = io.peer().clone();
                (io, info)
            }
            // axum's listeners never end; a node that shut down has nothing more to give.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Ok(self.local.clone())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, FogListener>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, FogListener>) -> Self {
        stream.remote_addr().clone()
    }
}
