//! STUN server: RFC 5389 Binding, and RFC 5780 NAT behaviour discovery when a second address is
//! configured.
//!
//! With an alternate address the server listens on four sockets, every pair of (primary IP,
//! alternate IP) × (primary port, alternate port). A request's CHANGE-REQUEST flags pick the
//! socket the answer leaves from; the answer carries XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and
//! OTHER-ADDRESS. Without one, CHANGE-REQUEST is ignored and OTHER-ADDRESS is left out, which tells
//! an RFC 5780 client that filtering cannot be tested here.
//!
//! Only well-formed Binding requests are answered; everything else is dropped. An answer is at
//! most 68 bytes, so the server cannot be used to amplify traffic by more than a few dozen bytes
//! per request.

use std::net::SocketAddr;
use std::sync::Arc;

use stun_rs::attributes::discovery::{
    ChangeRequest, ChangeRequestFlags, OtherAddress, ResponseOrigin,
};
use stun_rs::attributes::stun::{MappedAddress, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder};
use tokio::net::UdpSocket;

/// Where the STUN server listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StunConfig {
    /// The primary address (default `0.0.0.0:3478`).
    pub primary: SocketAddr,
    /// A second address, with another IP and another port, for RFC 5780.
    pub alternate: Option<SocketAddr>,
}

impl Default for StunConfig {
    fn default() -> Self {
        StunConfig {
            primary: SocketAddr::from(([0, 0, 0, 0], 3478)),
            alternate: None,
        }
    }
}

/// Why the STUN server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StunError {
    /// A socket could not be bound.
    #[error("cannot bind STUN socket {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The two addresses do not allow RFC 5780.
    #[error("--stun-alt needs a specific IP and port that both differ from --stun ({0})")]
    Alternate(String),
}

/// A running STUN server; stops when dropped.
pub struct StunServer {
    addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for StunServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One of the four sockets: which IP (0 primary, 1 alternate) and which port.
struct Sockets {
    /// Indexed `[ip][port]`; only `[0][0]` exists without an alternate address.
    grid: [[Option<Arc<UdpSocket>>; 2]; 2],
    /// The advertised address of each socket (the configured IPs, even when bound to a wildcard).
    addr: [[SocketAddr; 2]; 2],
}

impl StunServer {
    /// Binds the sockets and starts answering.
    pub async fn bind(config: StunConfig) -> Result<Self, StunError> {
        let bind = |addr: SocketAddr| async move {
            UdpSocket::bind(addr)
                .await
                .map(Arc::new)
                .map_err(|source| StunError::Bind { addr, source })
        };
        let primary_socket = bind(config.primary).await?;
        let primary = primary_socket
            .local_addr()
            .map_err(|source| StunError::Bind {
                addr: config.primary,
                source,
            })?;
        let mut sockets = Sockets {
            grid: [[Some(primary_socket), None], [None, None]],
            addr: [[primary; 2]; 2],
        };
        if let Some(alternate) = config.alternate {
            if primary.ip().is_unspecified()
                || alternate.ip().is_unspecified()
                || alternate.ip() == primary.ip()
                || alternate.port() == primary.port()
                || alternate.port() == 0
            {
                return Err(StunError::Alternate(format!("{primary} and {alternate}")));
            }
            let ips = [primary.ip(), alternate.ip()];
            let ports = [primary.port(), alternate.port()];
            for (i, ip) in ips.iter().enumerate() {
                for (p, port) in ports.iter().enumerate() {
                    let addr = SocketAddr::new(*ip, *port);
                    sockets.addr[i][p] = addr;
                    if (i, p) != (0, 0) {
                        sockets.grid[i][p] = Some(bind(addr).await?);
                    }
                }
            }
        }
        let sockets = Arc::new(sockets);
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..2 {
            for p in 0..2 {
                if sockets.grid[i][p].is_some() {
                    addrs.push(sockets.addr[i][p]);
                    tasks.push(tokio::spawn(serve(sockets.clone(), i, p)));
                }
            }
        }
        tracing::info!(?addrs, "stun server listening");
        Ok(StunServer { addrs, tasks })
    }

    /// The addresses it answers on, primary first.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The primary address.
    pub fn primary(&self) -> SocketAddr {
        self.addrs[0]
    }
}

async fn serve(sockets: Arc<Sockets>, ip: usize, port: usize) {
    let socket = sockets.grid[ip][port]
        .clone()
        .expect("spawned for existing sockets");
    let mut buf = [0u8; 1500];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // ICMP errors for earlier answers: nothing to do with the next request.
            Err(_) => continue,
        };
        if let Some((reply, via)) = answer(&sockets, ip, port, &buf[..len], from) {
            let _ = via.send_to(&reply, from).await;
        }
    }
}

/// The answer to `request` received on socket `[ip][port]` from `from`, and the socket to send it
/// from; `None` for anything that is not a well-formed Binding request.
fn answer(
    sockets: &Sockets,
    ip: usize,
    port: usize,
    request: &[u8],
    from: SocketAddr,
) -> Option<(Vec<u8>, Arc<UdpSocket>)> {
    let (message, _) = MessageDecoderBuilder::default()
        .build()
        .decode(request)
        .ok()?;
    if message.method() != BINDING || message.class() != MessageClass::Request {
        return None;
    }
    let has_alternate = sockets.grid[1][1].is_some();
    let (mut out_ip, mut out_port) = (ip, port);
    if has_alternate {
        if let Some(change) = message
            .get::<ChangeRequest>()
            .and_then(|a| a.as_change_request().ok())
        {
            if change.flags().contains(ChangeRequestFlags::ChangeIp) {
                out_ip = 1 - ip;
            }
            if change.flags().contains(ChangeRequestFlags::ChangePort) {
                out_port = 1 - port;
            }
        }
    }
    let via = sockets.grid[out_ip][out_port].clone()?;
    let mut builder = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(*message.transaction_id())
        .with_attribute(XorMappedAddress::from(from));
    if has_alternate {
        builder = builder
            .with_attribute(MappedAddress::from(from))
            .with_attribute(ResponseOrigin::from(sockets.addr[out_ip][out_port]))
            .with_attribute(OtherAddress::from(sockets.addr[1 - ip][1 - port]));
    }
    let mut reply = vec![0u8; 128];
    let len = MessageEncoderBuilder::default()
        .build()
        .encode(&mut reply, &builder.build())
        .ok()?;
    reply.truncate(len);
    Some((reply, via))
}
