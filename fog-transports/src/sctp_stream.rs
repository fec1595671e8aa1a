//! SCTP over the node's socket, as a reliable byte stream.
//!
//! `sctp-proto` is SCTP without I/O; this module feeds an association the datagrams the
//! socket tags for SCTP and sends what it outputs along the peer's route, so SCTP rides the
//! same paths as QUIC (direct, relayed, moved by the punch layer's path watch). The fog stream
//! is SCTP stream 0, ordered and reliable; back-pressure comes from SCTP's windows.
//!
//! Each attempt is its own association, told apart on the socket by SCTP's port pair, which
//! both peers derive from the attempt's session id ([`SctpPorts`]). `sctp-proto` answers
//! heartbeats but sends none, so a 4-byte datagram (the port pair alone, shorter than any
//! SCTP packet) says "still here" on a quiet association.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sctp_proto::{
    Association, AssociationHandle, ClientConfig, DatagramEvent, Endpoint, EndpointConfig, Event,
    Payload, PayloadProtocolIdentifier, ServerConfig, StreamEvent, TransportConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use crate::sessions::Sessions;
use crate::socket::FogSocket;

/// The protocol byte of SCTP datagrams on the socket.
pub const SCTP_PROTOCOL: u8 = 3;
/// An association that heard nothing for this long is dead.
pub const SCTP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an otherwise quiet association says it is still there.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Bytes the application may have in flight (the duplex buffer).
const DUPLEX_BUFFER: usize = 256 * 1024;
/// Bytes SCTP may hold unsent or unacknowledged before the application's writes wait.
const SEND_BUFFER: usize = 1024 * 1024;
/// The largest message one application write becomes.
const MESSAGE: usize = 16 * 1024;
/// Datagrams queued for an association before new ones are dropped.
const INBOUND_QUEUE: usize = 1024;
/// The fog stream's SCTP stream id.
const STREAM: u16 = 0;
/// SCTP's shortest packet: the common header.
const COMMON_HEADER: usize = 12;

/// The SCTP ports of an attempt, both non-zero and different, the same on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SctpPorts {
    /// The dialer's port.
    pub dialer: u16,
    /// The responder's port.
    pub responder: u16,
}

impl SctpPorts {
    /// The ports both peers derive from the attempt's session id.
    pub fn from_session(id: &[u8; 16]) -> Self {
        let dialer = u16::from_be_bytes([id[4], id[5]]).max(1);
        let mut responder = u16::from_be_bytes([id[6], id[7]]).max(1);
        if responder == dialer {
            responder = dialer ^ 0x8000;
        }
        SctpPorts { dialer, responder }
    }

    /// `(ours, theirs)` for one side.
    fn local_remote(&self, dialer: bool) -> (u16, u16) {
        if dialer {
            (self.dialer, self.responder)
        } else {
            (self.responder, self.dialer)
        }
    }
}

/// The session key of a datagram as its receiver sees it: (our port, their port).
fn key(ours: u16, theirs: u16) -> u32 {
    (u32::from(ours) << 16) | u32::from(theirs)
}

enum Inbound {
    Packet(Bytes),
    KeepAlive,
}

/// The SCTP associations on one socket.
#[derive(Clone)]
pub struct SctpMux {
    socket: Arc<FogSocket>,
    sessions: Sessions<Inbound>,
}

impl SctpMux {
    /// Takes the socket's SCTP datagrams. Call once per socket: a second mux replaces the first.
    pub fn new(socket: Arc<FogSocket>) -> Self {
        let sessions = Sessions::route(&socket, SCTP_PROTOCOL, |datagram| {
            if datagram.len() != 4 && datagram.len() < COMMON_HEADER {
                return None;
            }
            // The sender's port, then ours, as in SCTP's common header.
            let theirs = u16::from_be_bytes([datagram[0], datagram[1]]);
            let ours = u16::from_be_bytes([datagram[2], datagram[3]]);
            Some(if datagram.len() == 4 {
                (key(ours, theirs), Inbound::KeepAlive, false)
            } else {
                (
                    key(ours, theirs),
                    Inbound::Packet(Bytes::from(datagram)),
                    true,
                )
            })
        });
        SctpMux { socket, sessions }
    }

    /// An SCTP association with `peer` (an address the socket sends to: a peer's route
    /// stand-in, a relay-path stand-in or a real address) on `ports`, as the dialer or the
    /// responder. Resolves to the fog stream once the association is up and the stream can
    /// carry bytes; fails when the handshake fails or `timeout` passes. The stream ends when
    /// the peer closes, the association fails or it is idle for [`SCTP_IDLE_TIMEOUT`];
    /// dropping it shuts the association down (after what was written is delivered).
    pub async fn open(
        &self,
        ports: SctpPorts,
        peer: SocketAddr,
        dialer: bool,
    ) -> Result<DuplexStream, String> {
        let (ours, theirs) = ports.local_remote(dialer);
        let session = key(ours, theirs);
        let (app, mine) = tokio::io::duplex(DUPLEX_BUFFER);
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        self.sessions.lock().open(session, tx);
        let (up_tx, up) = oneshot::channel();
        let socket = self.socket.clone();
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            let mut driver = Driver {
                socket,
                peer,
                ports: (ours, theirs),
                up: Some(up_tx),
            };
            let reason = driver.run(dialer, rx, mine).await;
            tracing::debug!(%peer, ours, theirs, reason, "SCTP association ended");
            if let Some(up) = driver.up.take() {
                let _ = up.send(Err(reason.to_string()));
            }
            sessions.lock().close(session);
        });
        match up.await {
            Ok(Ok(())) => Ok(app),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err("the SCTP association ended".to_string()),
        }
    }
}

/// The transport settings of both sides: fog's paths are UDP paths with modern round trips,
/// so SCTP's timers start lower than RFC 4960's (3 s initial and 1 s minimal RTO).
fn transport_config(ours: u16, theirs: u16) -> TransportConfig {
    TransportConfig::default()
        .with_local_port(ours)
        .with_remote_port(theirs)
        .with_rto_initial_ms(500)
        .with_rto_min_ms(200)
        .with_rto_max_ms(10_000)
        .with_max_init_retransmits(Some(8))
}

/// One association's I/O.
struct Driver {
    socket: Arc<FogSocket>,
    peer: SocketAddr,
    ports: (u16, u16),
    /// Told once the stream can carry bytes.
    up: Option<oneshot::Sender<Result<(), String>>>,
}

impl Driver {
    /// Sends what the association has to send.
    fn transmit(&self, association: &mut Association, now: Instant) {
        while let Some(transmit) = association.poll_transmit(now) {
            if let Payload::RawEncode(packets) = transmit.payload {
                for packet in packets {
                    let _ = self
                        .socket
                        .send_transport_datagram(self.peer, SCTP_PROTOCOL, &packet);
                }
            }
        }
    }

    /// Runs the association until it ends; why it ended.
    async fn run(
        &mut self,
        dialer: bool,
        mut inbound: mpsc::Receiver<Inbound>,
        app: DuplexStream,
    ) -> &'static str {
        let (ours, theirs) = self.ports;
        let config = Arc::new(transport_config(ours, theirs));
        let mut endpoint;
        let mut association: Option<(AssociationHandle, Association)> = None;
        if dialer {
            endpoint = Endpoint::new(Arc::new(EndpointConfig::new()), None);
            let mut client = ClientConfig::new();
            client.transport = config;
            match endpoint.connect(client, self.peer) {
                Ok(pair) => association = Some(pair),
                Err(_) => return "the association could not start",
            }
        } else {
            let mut server = ServerConfig::new();
            server.transport = config;
            endpoint = Endpoint::new(Arc::new(EndpointConfig::new()), Some(Arc::new(server)));
        }
        let (mut app_read, mut app_write) = tokio::io::split(app);
        let mut stream_ready = false;
        let mut app_done = false;
        let mut to_app: Vec<u8> = Vec::new();
        let mut to_app_at = 0;
        let mut buf = vec![0u8; MESSAGE];
        let mut last_heard = Instant::now();
        let mut last_sent = Instant::now();
        let keep_alive = {
            let mut message = ours.to_be_bytes().to_vec();
            message.extend_from_slice(&theirs.to_be_bytes());
            message
        };
        loop {
            let now = Instant::now();
            if let Some((handle, a)) = association.as_mut() {
                if a.poll_timeout().is_some_and(|at| at <= now) {
                    a.handle_timeout(now);
                }
                while let Some(event) = a.poll() {
                    match event {
                        Event::Connected if dialer => {
                            if a.open_stream(STREAM, PayloadProtocolIdentifier::Binary)
                                .is_err()
                            {
                                return "the stream could not open";
                            }
                            stream_ready = true;
                        }
                        Event::HandshakeFailed { .. } => return "the handshake failed",
                        Event::AssociationLost { .. } => return "the association was lost",
                        Event::Stream(StreamEvent::Opened { .. }) if !dialer => {}
                        _ => {}
                    }
                }
                if !dialer && !stream_ready {
                    if let Some(mut stream) = a.accept_stream() {
                        if stream.stream_identifier() != STREAM {
                            return "the peer opened an unknown stream";
                        }
                        let _ = stream.set_default_payload_type(PayloadProtocolIdentifier::Binary);
                        stream_ready = true;
                    }
                }
                if stream_ready {
                    if let Some(up) = self.up.take() {
                        let _ = up.send(Ok(()));
                    }
                }
                while let Some(event) = a.poll_endpoint_event() {
                    if let Some(event) = endpoint.handle_event(*handle, event) {
                        a.handle_event(event);
                    }
                }
                // Received bytes, one batch at a time: while the application has not taken
                // them, SCTP's receive window fills and the peer slows down.
                if stream_ready && to_app_at == to_app.len() {
                    to_app.clear();
                    to_app_at = 0;
                    if let Ok(mut stream) = a.stream(STREAM) {
                        while to_app.len() < 64 * 1024 {
                            match stream.read() {
                                Ok(Some(chunks)) => {
                                    let start = to_app.len();
                                    to_app.resize(start + chunks.len(), 0);
                                    if chunks.read(&mut to_app[start..]).is_err() {
                                        return "a message did not fit";
                                    }
                                }
                                Ok(None) => break,
                                Err(_) => return "the stream was reset",
                            }
                        }
                    }
                }
                if app_done {
                    let drained = a
                        .stream(STREAM)
                        .ok()
                        .and_then(|s| s.buffered_amount().ok())
                        .is_none_or(|n| n == 0);
                    if drained {
                        let _ = a.shutdown();
                        self.transmit(a, now);
                        return "closed by this side";
                    }
                }
                self.transmit(a, now);
            }
            if last_heard.elapsed() > SCTP_IDLE_TIMEOUT {
                return "idle";
            }
            if last_sent.elapsed() > KEEP_ALIVE && stream_ready {
                let _ = self
                    .socket
                    .send_transport_datagram(self.peer, SCTP_PROTOCOL, &keep_alive);
                last_sent = Instant::now();
            }
            let room = stream_ready
                && !app_done
                && association.as_mut().is_some_and(|(_, a)| {
                    a.stream(STREAM)
                        .ok()
                        .and_then(|s| s.buffered_amount().ok())
                        .is_some_and(|n| n < SEND_BUFFER)
                });
            let wake_at = association
                .as_ref()
                .and_then(|(_, a)| a.poll_timeout())
                .unwrap_or(now + KEEP_ALIVE)
                .min(now + KEEP_ALIVE);
            tokio::select! {
                message = inbound.recv() => {
                    let Some(message) = message else { return "the socket is gone" };
                    last_heard = Instant::now();
                    let mut next = Some(message);
                    // Take what else is queued before the next round.
                    while let Some(message) = next.take() {
                        if let Inbound::Packet(packet) = message {
                            self.handle(&mut endpoint, &mut association, packet);
                        }
                        next = inbound.try_recv().ok();
                    }
                },
                read = app_read.read(&mut buf), if room => match read {
                    Ok(0) | Err(_) => app_done = true,
                    Ok(n) => {
                        let Some((_, a)) = association.as_mut() else {
                            return "no association";
                        };
                        match a.stream(STREAM).and_then(|mut s| s.write(&buf[..n])) {
                            Ok(_) => last_sent = Instant::now(),
                            Err(_) => return "the stream refused the application's data",
                        }
                    }
                },
                written = app_write.write(&to_app[to_app_at..]), if to_app_at < to_app.len() => match written {
                    Ok(n) if n > 0 => to_app_at += n,
                    // The application end is gone: nothing more to deliver.
                    _ => return "the application closed",
                },
                _ = tokio::time::sleep_until(wake_at.into()) => {}
            }
        }
    }

    /// One packet from the peer into the endpoint and its association.
    fn handle(
        &self,
        endpoint: &mut Endpoint,
        association: &mut Option<(AssociationHandle, Association)>,
        packet: Bytes,
    ) {
        let now = Instant::now();
        match endpoint.handle(now, self.peer, None, None, packet) {
            // A responder takes the first association; a second INIT on the same ports (a
            // peer that restarted its attempt) is not this attempt's.
            Some((handle, DatagramEvent::NewAssociation(new))) if association.is_none() => {
                *association = Some((handle, new));
            }
            Some((handle, DatagramEvent::AssociationEvent(event))) => {
                if let Some((ours, a)) = association.as_mut() {
                    if *ours == handle {
                        a.handle_event(event);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_mirrored_ports() {
        let id = [9u8; 16];
        let ports = SctpPorts::from_session(&id);
        assert_ne!(ports.dialer, ports.responder);
        assert_ne!(ports.dialer, 0);
        let (d_ours, d_theirs) = ports.local_remote(true);
        let (r_ours, r_theirs) = ports.local_remote(false);
        assert_eq!((d_ours, d_theirs), (r_theirs, r_ours));
        // What one side sends is keyed, at the other side, as that side's session.
        assert_eq!(key(r_ours, r_theirs), key(d_theirs, d_ours));
        let zero = SctpPorts::from_session(&[0u8; 16]);
        assert!(zero.dialer != 0 && zero.responder != 0 && zero.dialer != zero.responder);
    }
}
