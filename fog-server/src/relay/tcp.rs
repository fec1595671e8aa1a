//! TURN over TCP (RFC 8656 §3.1 and §12.5): STUN messages and ChannelData framed on TCP streams
//! between client and relay; the relayed side stays UDP.
//!
//! The `turn` crate serves only datagram `Conn`s, so [`TcpConn`] is one: it accepts TCP
//! connections, cuts each stream into messages (a STUN header carries the length; ChannelData
//! carries its length and is padded to four bytes on a stream), and hands them to the engine as
//! datagrams from the connection's remote address. Answers to that address are written back on
//! its stream, ChannelData padded. When a connection closes, its allocation is revoked, as
//! RFC 8656 §3.1 wants.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use webrtc_util::Conn;

pub use fog_core::turn::{frame, frame_len, read_frame, Frame, FrameError, MAX_MESSAGE};
/// Client connections served at once; further ones are closed at accept.
const MAX_CONNECTIONS: usize = 4096;
/// Messages queued towards one client before further ones are dropped (datagram semantics).
const WRITE_QUEUE: usize = 256;
/// Messages queued from all clients towards the engine; a full queue slows the readers.
const READ_QUEUE: usize = 1024;
/// A connection that sends nothing for this long is closed. TURN clients refresh permissions
/// every 5 minutes and allocations before their lifetime ends, so a live client is never this
/// quiet.
const IDLE: Duration = Duration::from_secs(11 * 60);

type Writers = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// A TCP listener as a datagram `Conn`, see the module documentation.
pub(crate) struct TcpConn {
    local: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    writers: Writers,
    accept: tokio::task::JoinHandle<()>,
    /// Dropped with the listener, which closes every client connection.
    _stop: watch::Sender<()>,
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock(
    writers: &Writers,
) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
    writers.lock().unwrap_or_else(|e| e.into_inner())
}

impl TcpConn {
    /// Serves `listener`; `closed` is called with a client's address when its connection ends.
    pub fn new(
        listener: TcpListener,
        closed: Arc<dyn Fn(SocketAddr) + Send + Sync>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(READ_QUEUE);
        let writers: Writers = Arc::default();
        let (stop, stopped) = watch::channel(());
        let accept = tokio::spawn(accept_loop(listener, tx, writers.clone(), closed, stopped));
        Ok(TcpConn {
            local,
            incoming: tokio::sync::Mutex::new(rx),
            writers,
            accept,
            _stop: stop,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    writers: Writers,
    closed: Arc<dyn Fn(SocketAddr) + Send + Sync>,
    stopped: watch::Receiver<()>,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                tracing::warn!(error = %e, "relay tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (write_tx, write_rx) = mpsc::channel(WRITE_QUEUE);
        {
            let mut writers = lock(&writers);
            if writers.len() >= MAX_CONNECTIONS {
                continue;
            }
            writers.insert(from, write_tx);
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(
            stream,
            from,
            tx.clone(),
            write_rx,
            writers.clone(),
            closed.clone(),
            stopped.clone(),
        ));
    }
}

async fn serve(
    stream: TcpStream,
    from: SocketAddr,
    tx: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    mut write_rx: mpsc::Receiver<Vec<u8>>,
    writers: Writers,
    closed: Arc<dyn Fn(SocketAddr) + Send + Sync>,
    mut stopped: watch::Receiver<()>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        while let Some(message) = write_rx.recv().await {
            if writer.write_all(&message).await.is_err() {
                break;
            }
        }
    });
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout(IDLE, read_frame(&mut reader)) => read,
            // The relay stopped (the sender is gone).
            _ = stopped.changed() => break,
        };
        match read {
            Ok(Ok(message)) => {
                if tx.send((message, from)).await.is_err() {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(%from, error = %e, "relay tcp connection ended");
                break;
            }
            Err(_) => {
                tracing::debug!(%from, "relay tcp connection idle");
                break;
            }
        }
    }
    lock(&writers).remove(&from);
    writing.abort();
    closed(from);
}

#[async_trait]
impl Conn for TcpConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other(
            "the relay listener does not connect".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let (message, from) = self.incoming.lock().await.recv().await.ok_or_else(|| {
            webrtc_util::Error::Io(std::io::Error::from(std::io::ErrorKind::NotConnected).into())
        })?;
        let len = message.len().min(buf.len());
        buf[..len].copy_from_slice(&message[..len]);
        Ok((len, from))
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other(
            "the relay listener sends to an address".into(),
        ))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let writer = lock(&self.writers).get(&target).cloned();
        match writer {
            // A full queue drops the message, as a congested UDP path would.
            Some(writer) => {
                let _ = writer.try_send(frame(buf));
                Ok(buf.len())
            }
            None => Err(webrtc_util::Error::Io(
                std::io::Error::from(std::io::ErrorKind::NotConnected).into(),
            )),
        }
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_frames_are_header_plus_length() {
        assert_eq!(
            frame_len([0x00, 0x03, 0x00, 0x08]),
            Ok(Frame {
                message: 28,
                total: 28
            })
        );
        assert_eq!(
            frame_len([0x01, 0x01, 0x00, 0x06]),
            Err(FrameError::Misaligned(6))
        );
    }

    #[test]
    fn channel_data_is_padded_on_the_stream() {
        assert_eq!(
            frame_len([0x40, 0x00, 0x00, 0x05]),
            Ok(Frame {
                message: 9,
                total: 12
            })
        );
        assert_eq!(
            frame_len([0x7f, 0xff, 0x00, 0x00]),
            Ok(Frame {
                message: 4,
                total: 4
            })
        );
        assert_eq!(frame(&[0x40, 0, 0, 1, 9]), vec![0x40, 0, 0, 1, 9, 0, 0, 0]);
        assert_eq!(frame(&[0x40, 0, 0, 0]), vec![0x40, 0, 0, 0]);
        // STUN is never padded by the framer (it is aligned already).
        assert_eq!(frame(&[0x00, 1, 0, 0]), vec![0x00, 1, 0, 0]);
    }

    #[test]
    fn other_and_oversized_frames_are_refused() {
        assert_eq!(frame_len([0x80, 0, 0, 0]), Err(FrameError::Unknown(0x80)));
        assert_eq!(frame_len([0xc0, 0, 0, 0]), Err(FrameError::Unknown(0xc0)));
        assert_eq!(
            frame_len([0x40, 0x00, 0xff, 0xff]),
            Err(FrameError::TooLarge(65539))
        );
        assert!(frame_len([0x00, 0x01, 0x05, 0xdc]).is_err());
    }

    #[tokio::test]
    async fn read_frame_cuts_a_stream_and_drops_padding() {
        let mut stream: &[u8] = &[
            0x40, 0x00, 0x00, 0x01, 0xaa, 0, 0, 0, // ChannelData, 1 byte, padded
            0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
            12, // STUN header only
            0x80, 0, 0, 0,
        ];
        assert_eq!(
            read_frame(&mut stream).await.unwrap(),
            vec![0x40, 0, 0, 1, 0xaa]
        );
        assert_eq!(read_frame(&mut stream).await.unwrap().len(), 20);
        assert!(read_frame(&mut stream).await.is_err());
        assert!(read_frame(&mut stream).await.is_err(), "end of stream");
    }
}
