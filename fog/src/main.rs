//! The `fog` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use fog::service::{forward_stream, send_file, Exposed, Inbox, ServiceError, Services};
use fog::{BoxError, ConnectError, Connection, Event, Identity, Node};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(
    name = "fog",
    version,
    about = "Connect two peers by peer id, through NATs, over an encrypted connection."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the signal server.
    Server {
        /// Address of the WebSocket signal server (path /ws).
        #[arg(long, default_value = "0.0.0.0:7600")]
        signal: SocketAddr,
        /// Address of the STUN server (RFC 5389) [default: 0.0.0.0:3478, skipped with a warning
        /// when taken].
        #[arg(long)]
        stun: Option<SocketAddr>,
        /// A second STUN address, with another IP and port, for RFC 5780 NAT behaviour discovery.
        #[arg(long, requires = "stun")]
        stun_alt: Option<SocketAddr>,
        /// Keep the name table in this directory, so that names stay with their keys across
        /// restarts [default: names are kept in memory only].
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Seconds a name stays with a key that is not registered before another key may take
        /// it.
        #[arg(long, value_name = "SECS", default_value_t = fog::server::names::NAME_TTL.as_secs())]
        name_ttl: u64,
        #[command(flatten)]
        relay: RelayArgs,
    },
    /// Detect the NAT in front of this host with STUN (RFC 5780).
    Nat {
        /// STUN server; give two for servers without RFC 5780 support.
        #[arg(long, required = true)]
        stun: Vec<SocketAddr>,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a node: echo streams back, forward peers' streams to exposed TCP services, take
    /// files into an inbox.
    Serve {
        #[command(flatten)]
        node: NodeArgs,
        /// Let peers reach this TCP service (HOST:PORT) with `fog forward`; repeatable. Nothing
        /// that is not exposed is reachable.
        #[arg(long, value_name = "ADDR")]
        expose: Vec<String>,
        /// Take files that peers send with `fog send` into this directory.
        #[arg(long, value_name = "DIR")]
        inbox: Option<PathBuf>,
    },
    /// Listen on a local TCP address and carry each connection to a service the peer exposes.
    Forward {
        /// The peer: its peer id or its registered name.
        peer: String,
        #[command(flatten)]
        node: NodeArgs,
        /// Local address to listen on (port 0 picks one; the address is printed).
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// The peer's exposed service to reach, as it was exposed [default: its only one].
        #[arg(long, value_name = "ADDR")]
        to: Option<String>,
        /// Give up connecting to the peer after this many seconds.
        #[arg(long, default_value_t = 20.0)]
        timeout: f64,
    },
    /// Send files to a peer's inbox, verified by SHA-256; an interrupted transfer goes on where
    /// it stopped when sent again.
    Send {
        /// The peer: its peer id or its registered name.
        peer: String,
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
        /// Print one JSON line per file (bytes, sha256, seconds, path) instead of a progress bar.
        #[arg(long)]
        json: bool,
        /// Give up connecting to the peer after this many seconds.
        #[arg(long, default_value_t = 20.0)]
        timeout: f64,
    },
    /// Connect to a peer, send a message and wait for the echo.
    Connect {
        /// The peer: its peer id or its registered name.
        peer: String,
        #[command(flatten)]
        node: NodeArgs,
        /// The text to send.
        #[arg(long, default_value = "hello")]
        message: String,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 20.0)]
        timeout: f64,
        /// When the connection starts on a relay, keep it open up to this many seconds for a
        /// direct path to take over (reported as `direct_after_ms`).
        #[arg(long, default_value_t = 0.0, value_name = "SECS")]
        wait_direct: f64,
    },
    /// Print the node's peer id.
    Id {
        /// Key file (created on first use, mode 0600).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The key `fog serve --name NAME` uses when it is given no --key.
        #[arg(long, conflicts_with = "key")]
        name: Option<String>,
    },
    /// Start a signal server and two nodes in this process, connect them by name, and show what
    /// happens.
    Demo,
}

/// The TURN relay of `fog server`.
#[derive(Args)]
struct RelayArgs {
    /// Run a TURN relay (RFC 8656) with TURN over UDP on this address; the signal server grants
    /// registered nodes short-lived credentials for it.
    #[arg(long = "relay", value_name = "ADDR")]
    addr: Option<SocketAddr>,
    /// Also serve TURN over TCP on this address.
    #[arg(long = "relay-tcp", value_name = "ADDR", requires = "addr")]
    tcp: Option<SocketAddr>,
    /// The IP peers reach the relay on, announced in relayed addresses [default: the --relay
    /// IP; required when that is a wildcard].
    #[arg(long = "relay-ip", value_name = "IP", requires = "addr")]
    ip: Option<std::net::IpAddr>,
    /// File holding the secret shared with other relays or a coturn (static-auth-secret)
    /// [default: a random secret for this run].
    #[arg(long = "relay-secret-file", value_name = "PATH", requires = "addr")]
    secret_file: Option<PathBuf>,
    /// Allocations one node may hold at once.
    #[arg(long = "relay-max-allocations", value_name = "N", default_value_t = 8)]
    max_allocations: usize,
    /// Bytes per second relayed for one node; excess datagrams are dropped (0: no limit).
    #[arg(long = "relay-max-rate", value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    max_rate: u64,
    /// Seconds one allocation may live, refreshes included.
    #[arg(
        long = "relay-max-lifetime",
        value_name = "SECS",
        default_value_t = 600
    )]
    max_lifetime: u64,
    /// Relay to peers on loopback and on the relay's own IP (refused by default, so the relay is
    /// no way into its own host); for tests and labs on one machine.
    #[arg(long = "relay-allow-loopback-peers", requires = "addr")]
    allow_loopback_peers: bool,
}

impl RelayArgs {
    /// Starts the relay, if asked for.
    async fn start(&self) -> Result<Option<fog::server::relay::RelayServer>, BoxError> {
        use fog::server::relay::{QuotaConfig, RelayConfig, RelaySecret, RelayServer};
        let Some(addr) = self.addr else {
            return Ok(None);
        };
        if self.max_lifetime == 0 {
            return Err("--relay-max-lifetime must be at least 1 second".into());
        }
        if addr.ip().is_unspecified() && self.ip.is_none() {
            return Err(format!("--relay {addr} is a wildcard: give --relay-ip").into());
        }
        let secret = match &self.secret_file {
            Some(path) => RelaySecret::from_file(path)?,
            None => RelaySecret::random(),
        };
        let mut config = RelayConfig::new(addr, secret);
        config.tcp = self.tcp;
        config.relay_ip = self.ip;
        config.allow_loopback_peers = self.allow_loopback_peers;
        config.quota = QuotaConfig {
            max_allocations: self.max_allocations,
            max_bytes_per_sec: self.max_rate,
            max_lifetime: Duration::from_secs(self.max_lifetime),
        };
        Ok(Some(RelayServer::bind(config).await?))
    }
}

#[derive(Args, Clone)]
struct NodeArgs {
    /// Signal server URL; repeat it for more servers to fail over to.
    #[arg(long, default_value = "ws://127.0.0.1:7600/ws")]
    signal: Vec<String>,
    /// Key file (created on first use, mode 0600); the node's `known_peers` file goes beside
    /// it. Without it `fog serve` uses the key of its name (or the default key, see `fog id`),
    /// and the other commands a fresh key for the run.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Accept a name that answers with another key than the one in `known_peers` (and record
    /// the new one) instead of refusing it.
    #[arg(long)]
    accept_new_key: bool,
    /// Name to register at the signal server, like 1e:34:a1:44:2c:1c.
    #[arg(long)]
    name: Option<String>,
    /// A TURN server of your own, beside the signal server's relays:
    /// turn:HOST:PORT?transport=udp|tcp (with --turn-username and --turn-password).
    #[arg(long, value_name = "URL", requires_all = ["turn_username", "turn_password"])]
    turn: Option<String>,
    /// Long-term TURN username for --turn.
    #[arg(long, value_name = "NAME", requires = "turn")]
    turn_username: Option<String>,
    /// Long-term TURN password for --turn.
    #[arg(long, value_name = "PASSWORD", requires = "turn")]
    turn_password: Option<String>,
    /// The transport, quic, rtc, kcp, utp, sctp or udp: what a dial asks for, or all a server
    /// accepts [default: a dial asks for QUIC, a server accepts all six].
    #[arg(long, value_name = "PROTOCOL")]
    protocol: Option<fog::Protocol>,
}

impl NodeArgs {
    /// The node of a long-lived `fog serve`: with no --key, the key of its name or the
    /// default key, so that a restart keeps its peer id and its name.
    async fn bind_serving(&self) -> Result<Node, BoxError> {
        if self.key.is_some() {
            return self.bind().await;
        }
        let mut args = self.clone();
        args.key = Some(serve_key_file(self.name.as_deref()));
        args.bind().await
    }

    async fn bind(&self) -> Result<Node, BoxError> {
        let mut builder = Node::builder();
        for url in &self.signal {
            builder = builder.signal(url);
        }
        if let Some(protocol) = self.protocol {
            builder = builder.protocols([protocol]);
        }
        if let Some(key) = &self.key {
            builder = builder.key(key);
        }
        builder = builder.accept_new_keys(self.accept_new_key);
        if let Some(name) = &self.name {
            builder = builder.name(name);
        }
        if let (Some(url), Some(user), Some(pass)) =
            (&self.turn, &self.turn_username, &self.turn_password)
        {
            builder = builder.turn(url, user, pass)?;
        }
        Ok(builder.bind().await?)
    }
}

/// fog's directory under the user's configuration directory.
fn config_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("fog")
}

fn default_key_file() -> PathBuf {
    config_dir().join("key")
}

/// The key `fog serve` uses without --key: one per name (`keys/NAME.key`, so that several
/// named nodes can run on one box and each keeps its name across restarts), or the default
/// key for a node without a name.
fn serve_key_file(name: Option<&str>) -> PathBuf {
    match name {
        Some(name) => {
            let file: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            config_dir().join("keys").join(format!("{file}.key"))
        }
        None => default_key_file(),
    }
}

/// The default log filter: warnings, except from libraries that warn about routine events
/// (yamux about closed streams; WebRTC's about link-local addresses it cannot bind and
/// candidates it closes at the end).
const QUIET_LOG: &str =
    "warn,yamux=error,webrtc=error,webrtc_ice=error,webrtc_sctp=error,webrtc_data=error,dtls=error";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FOG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(QUIET_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = matches!(
        cli.command,
        Command::Connect { json: true, .. } | Command::Send { json: true, .. }
    );
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (kind, message) = describe(&*e);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": kind, "message": message })
                );
            }
            eprintln!("error: {kind}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The cause's short name and the whole message, for the one-line error.
fn describe(e: &(dyn std::error::Error + 'static)) -> (&'static str, String) {
    let kind = ConnectError::find(e).map(|c| c.kind()).unwrap_or("failed");
    (kind, e.to_string())
}

async fn run(command: Command) -> Result<(), BoxError> {
    match command {
        Command::Server {
            signal,
            stun,
            stun_alt,
            state,
            name_ttl,
            relay,
        } => {
            let relay_server = relay.start().await?;
            let stun_config = fog::server::stun::StunConfig {
                primary: stun.unwrap_or(fog::server::stun::StunConfig::default().primary),
                alternate: stun_alt,
            };
            let stun_server = match fog::server::stun::StunServer::bind(stun_config).await {
                Ok(server) => Some(server),
                // Only the default may be skipped; an address the user asked for must work.
                Err(e) if stun.is_none() => {
                    eprintln!("warning: no STUN server: {e}");
                    None
                }
                Err(e) => return Err(e.into()),
            };
            let announced = stun_server
                .as_ref()
                .map(|s| vec![s.primary().to_string()])
                .unwrap_or_default();
            let mut config = fog::server::SignalConfig {
                listen: signal,
                stun: announced,
                state_dir: state,
                name_ttl: Duration::from_secs(name_ttl),
                ..Default::default()
            };
            if let Some(relay) = &relay_server {
                config.relays = relay.urls();
                config.relay_secret = Some(relay.secret().clone());
                // Credentials must outlive one whole allocation: it is refreshed with them.
                config.relay_credential_ttl = config
                    .relay_credential_ttl
                    .max(relay.quota().max_lifetime + Duration::from_secs(60));
            }
            let server = fog::server::SignalServer::bind(config)
                .await
                .map_err(|e| format!("signal server on {signal}: {e}"))?;
            if let Some(stun) = &stun_server {
                let addrs: Vec<String> = stun.local_addrs().iter().map(|a| a.to_string()).collect();
                println!("fog stun server on {}", addrs.join(" "));
            }
            if let Some(relay) = &relay_server {
                let urls = relay.urls();
                let listeners = std::iter::once(relay.udp_addr()).chain(relay.tcp_addr());
                for (addr, url) in listeners.zip(urls) {
                    println!("fog relay on {addr} ({url})");
                }
            }
            println!("fog signal server on ws://{}/ws", server.local_addr());
            tokio::select! {
                _ = server.serve_forever() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            drop(stun_server);
            if let Some(relay) = relay_server {
                relay.close().await;
            }
            Ok(())
        }
        Command::Nat { stun, json } => {
            let report =
                fog::layers::nat_probe::probe_nat(&fog::layers::nat_probe::ProbeConfig::new(stun))
                    .await?;
            let p = &report.profile;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "nat_type": p.nat_type,
                        "mapping": p.mapping,
                        "filtering": p.filtering,
                        "port_allocation": p.port_allocation,
                        "port_delta": p.port_delta,
                        "public": p.public.map(|a| a.to_string()),
                        "hairpinning": p.hairpinning,
                        "elapsed_ms": report.elapsed.as_millis() as u64,
                    })
                );
            } else {
                let show = |v: serde_json::Value| match v {
                    serde_json::Value::Null => "unknown".to_string(),
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                println!("NAT type:        {}", show(serde_json::json!(p.nat_type)));
                println!("mapping:         {}", show(serde_json::json!(p.mapping)));
                println!("filtering:       {}", show(serde_json::json!(p.filtering)));
                println!(
                    "port allocation: {}",
                    show(serde_json::json!(p.port_allocation))
                );
                if let Some(delta) = p.port_delta {
                    println!("port delta:      {delta}");
                }
                println!(
                    "public address:  {}",
                    show(serde_json::json!(p.public.map(|a| a.to_string())))
                );
                println!(
                    "hairpinning:     {}",
                    show(serde_json::json!(p.hairpinning))
                );
                println!("probe time:      {} ms", report.elapsed.as_millis());
            }
            Ok(())
        }
        Command::Serve {
            node,
            expose,
            inbox,
        } => {
            let mut services = Services::new();
            if !expose.is_empty() {
                services = services.expose(Exposed::resolve(&expose).await?);
            }
            if let Some(dir) = &inbox {
                let inbox =
                    Inbox::open(dir).map_err(|e| format!("--inbox {}: {e}", dir.display()))?;
                services = services.inbox(inbox);
            }
            let node = node.bind_serving().await?;
            println!("peer id: {}", node.peer_id());
            if let Some(name) = node.name() {
                println!("name: {name}");
            }
            let mut events = node.events();
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match events.recv().await {
                        Ok(Event::SignalLost { error }) => {
                            eprintln!("signal lost: {error}; connecting again")
                        }
                        Ok(Event::SignalRestored { url }) => eprintln!("signal restored: {url}"),
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    }
                }
            });
            for spec in &expose {
                println!("exposed: {spec}");
            }
            if let Some(dir) = &inbox {
                println!("inbox: {}", dir.display());
            }
            let prober = node.clone();
            tokio::spawn(async move {
                let verdict = match prober.nat_profile().await {
                    Some(report) => report
                        .profile
                        .nat_type
                        .map_or("unknown".to_string(), |t| t.to_string()),
                    None => "unknown (no STUN server)".to_string(),
                };
                println!("nat: {verdict}");
            });
            let mut incoming = node.incoming();
            loop {
                tokio::select! {
                    conn = incoming.next() => match conn {
                        Some(conn) => {
                            eprintln!("connected: {} from {}", conn.peer_id(), conn.remote_addr());
                            tokio::spawn(services.clone().serve_connection(conn));
                        }
                        // Never because something went away: a supervisor must see a failure.
                        None => return Err("the node stopped taking connections".into()),
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
            node.shutdown().await;
            Ok(())
        }
        Command::Connect {
            peer,
            node,
            message,
            json,
            timeout,
            wait_direct,
        } => {
            let limit = seconds(timeout)?;
            if !(wait_direct.is_finite() && (0.0..1e9).contains(&wait_direct)) {
                return Err("--wait-direct must be a number of seconds, 0 or more".into());
            }
            let work = async {
                let node = node.bind().await?;
                let started = Instant::now();
                let conn = node.connect(&peer).await?;
                let connect_ms = started.elapsed().as_secs_f64() * 1e3;
                let path_at_connect = conn.path_kind();
                let direct_after = conn
                    .wait_direct(Duration::from_secs_f64(wait_direct))
                    .await
                    .then(|| started.elapsed());
                let started = Instant::now();
                let reply = echo_once(&conn, message.as_bytes()).await?;
                let rtt_ms = started.elapsed().as_secs_f64() * 1e3;
                let reply = String::from_utf8_lossy(&reply).into_owned();
                let datagram = datagram_echo(&conn, message.as_bytes()).await;
                let report = serde_json::json!({
                    "peer": conn.peer_id().to_string(),
                    "name": conn.peer_name(),
                    "protocol": conn.protocol().as_str(),
                    "path": conn.path_kind().to_string(),
                    "path_at_connect": path_at_connect.to_string(),
                    "direct_after_ms": direct_after.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0),
                    "relay": conn.relay_addr().map(|a| a.to_string()),
                    "local": conn.local_addr().to_string(),
                    "remote": conn.remote_addr().to_string(),
                    "connect_ms": (connect_ms * 10.0).round() / 10.0,
                    "rtt_ms": (rtt_ms * 100.0).round() / 100.0,
                    "reply": reply,
                    "datagram_reply": datagram
                        .as_ref()
                        .map(|(reply, _)| String::from_utf8_lossy(reply).into_owned()),
                    "datagram_rtt_ms": datagram
                        .as_ref()
                        .map(|(_, rtt)| (rtt.as_secs_f64() * 1e5).round() / 100.0),
                    "strategy": conn.info().strategy.map(|s| s.as_str()),
                    "candidate": conn.info().candidate.to_string(),
                    "probes": conn.info().probes,
                });
                conn.close("done");
                node.shutdown().await;
                Ok::<_, BoxError>((report, reply))
            };
            let (report, reply) = tokio::time::timeout(limit, work)
                .await
                .map_err(|_| ConnectError::Timeout(format!("no echo within {timeout} s")))??;
            if json {
                println!("{report}");
            } else {
                println!(
                    "connected to {} over {} ({} path {} -> {}) in {} ms; echo {:?} in {} ms",
                    report["peer"].as_str().unwrap_or_default(),
                    report["protocol"].as_str().unwrap_or_default(),
                    report["path"].as_str().unwrap_or_default(),
                    report["local"].as_str().unwrap_or_default(),
                    report["remote"].as_str().unwrap_or_default(),
                    report["connect_ms"],
                    reply,
                    report["rtt_ms"],
                );
            }
            if reply != message {
                return Err(
                    format!("the echo {reply:?} differs from the message {message:?}").into(),
                );
            }
            Ok(())
        }
        Command::Forward {
            peer,
            node,
            listen,
            to,
            timeout,
        } => forward(peer, node, listen, to, seconds(timeout)?).await,
        Command::Send {
            peer,
            files,
            node,
            json,
            timeout,
        } => send(peer, files, node, json, seconds(timeout)?).await,
        Command::Id { key, name } => {
            let path = key.unwrap_or_else(|| serve_key_file(name.as_deref()));
            let identity = Identity::load_or_generate(&path)?;
            println!("{}", identity.peer_id());
            Ok(())
        }
        Command::Demo => demo().await,
    }
}

/// `--timeout` as a duration.
fn seconds(timeout: f64) -> Result<Duration, BoxError> {
    if !(timeout.is_finite() && timeout > 0.0 && timeout < 1e9) {
        return Err("--timeout must be a positive number of seconds".into());
    }
    Ok(Duration::from_secs_f64(timeout))
}

/// Connects to `peer` within `limit`.
async fn connect_within(node: &Node, peer: &str, limit: Duration) -> Result<Connection, BoxError> {
    tokio::time::timeout(limit, node.connect(peer))
        .await
        .map_err(|_| ConnectError::Timeout(format!("no connection to {peer} within {limit:?}")))?
}

/// `fog forward`: one connection to the peer (made again when it closes), one stream per
/// local TCP connection.
async fn forward(
    peer: String,
    node: NodeArgs,
    listen: SocketAddr,
    to: Option<String>,
    limit: Duration,
) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let node = node.bind().await?;
    let conn = connect_within(&node, &peer, limit).await?;
    println!(
        "forwarding {} -> {peer} ({})",
        listener.local_addr()?,
        to.as_deref().unwrap_or("its exposed service")
    );
    let conn = std::sync::Arc::new(tokio::sync::Mutex::new(conn));
    loop {
        let (mut tcp, from) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let _ = tcp.set_nodelay(true);
        let conn = conn.clone();
        let node = node.clone();
        let (peer, to) = (peer.clone(), to.clone());
        tokio::spawn(async move {
            let stream = {
                let mut conn = conn.lock().await;
                match forward_stream(&conn, to.as_deref()).await {
                    Err(ServiceError::Connection(_)) => {
                        // The connection is gone: one new one, then the stream again.
                        match connect_within(&node, &peer, limit).await {
                            Ok(fresh) => {
                                *conn = fresh;
                                forward_stream(&conn, to.as_deref()).await
                            }
                            Err(e) => {
                                eprintln!("forward from {from}: {e}");
                                return;
                            }
                        }
                    }
                    other => other,
                }
            };
            match stream {
                Ok(mut stream) => {
                    if let Err(e) = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await {
                        tracing::debug!(%from, error = %e, "forwarded connection ended");
                    }
                }
                Err(e) => eprintln!("forward from {from}: {e}"),
            }
        });
    }
    node.shutdown().await;
    Ok(())
}

/// `fog send`: each file in turn, with a progress bar on a terminal or a JSON line each.
async fn send(
    peer: String,
    files: Vec<PathBuf>,
    node: NodeArgs,
    json: bool,
    limit: Duration,
) -> Result<(), BoxError> {
    for file in &files {
        let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a file", file.display()).into());
        }
    }
    let node = node.bind().await?;
    let conn = connect_within(&node, &peer, limit).await?;
    for file in &files {
        let bar = if json {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta} left",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message(file.display().to_string());
            bar
        };
        let report = send_file(&conn, file, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?;
        bar.finish_and_clear();
        if json {
            let mut line = serde_json::to_value(&report)?;
            line["protocol"] = conn.protocol().as_str().into();
            line["path_kind"] = conn.path_kind().to_string().into();
            println!("{line}");
        } else {
            let rate = report.bytes.saturating_sub(report.resumed_from) as f64
                / report.seconds.max(1e-9)
                / (1024.0 * 1024.0);
            println!(
                "{} -> {peer}:{} ({} bytes, sha256 {}) in {:.1} s, {rate:.1} MiB/s{}",
                file.display(),
                report.path,
                report.bytes,
                report.sha256,
                report.seconds,
                if report.resumed_from > 0 {
                    format!(", resumed at byte {}", report.resumed_from)
                } else {
                    String::new()
                }
            );
        }
    }
    conn.close("done");
    node.shutdown().await;
    Ok(())
}

async fn echo_streams(conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut recv, &mut send).await;
            let _ = send.shutdown().await;
        });
    }
}

/// A datagram round trip to the peer's echo, where the transport has datagrams: the reply
/// and its round trip, or `None` (no datagrams, or nothing came back within 3 s). Datagrams
/// may be lost, so it sends again every 200 ms until one comes back.
async fn datagram_echo(conn: &Connection, message: &[u8]) -> Option<(Vec<u8>, Duration)> {
    let max = conn.max_datagram_size()?;
    let message = &message[..message.len().min(max)];
    let started = Instant::now();
    let mut resend = tokio::time::interval(Duration::from_millis(200));
    let wait = async {
        loop {
            tokio::select! {
                _ = resend.tick() => conn.send_datagram(message).ok()?,
                reply = conn.recv_datagram() => return reply.ok(),
            }
        }
    };
    let reply = tokio::time::timeout(Duration::from_secs(3), wait)
        .await
        .ok()??;
    Some((reply, started.elapsed()))
}

async fn echo_once(conn: &Connection, message: &[u8]) -> Result<Vec<u8>, BoxError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(message).await?;
    send.shutdown().await?;
    let mut reply = Vec::new();
    recv.read_to_end(&mut reply).await?;
    Ok(reply)
}

async fn demo() -> Result<(), BoxError> {
    let t0 = Instant::now();
    let ms = move || t0.elapsed().as_secs_f64() * 1e3;
    let server = fog::server::SignalServer::bind(fog::server::SignalConfig {
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?;
    println!("[{:7.1} ms] signal server on {}", ms(), server.url());

    let echo_name = "1e:34:a1:44:2c:1c";
    let server_node = Node::builder()
        .signal(server.url())
        .name(echo_name)
        .bind()
        .await?;
    println!(
        "[{:7.1} ms] echo node {} registered as {echo_name}",
        ms(),
        server_node.peer_id()
    );
    let mut incoming = server_node.incoming();
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            tokio::spawn(echo_streams(conn));
        }
    });

    let client = Node::builder()
        .signal(server.url())
        .name("1e:34:a1:44:2c:2c")
        .bind()
        .await?;
    println!(
        "[{:7.1} ms] client node {} registered",
        ms(),
        client.peer_id()
    );
    let mut events = client.events();
    let printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            println!("[{:7.1} ms]   event: {}", ms(), describe_event(&event));
        }
    });

    println!("[{:7.1} ms] connecting to {echo_name} ...", ms());
    let conn = client.connect(echo_name).await?;
    let connect_time = conn.connect_time();
    let sent = Instant::now();
    let reply = echo_once(&conn, b"hello").await?;
    let rtt = sent.elapsed();
    tokio::task::yield_now().await;
    printer.abort();
    println!(
        "[{:7.1} ms] connected in {:.1} ms over {} ({} -> {}); echo {:?} in {:.2} ms",
        ms(),
        connect_time.as_secs_f64() * 1e3,
        conn.protocol(),
        conn.local_addr(),
        conn.remote_addr(),
        String::from_utf8_lossy(&reply),
        rtt.as_secs_f64() * 1e3
    );
    if reply != b"hello" {
        return Err("the echo differs from the message".into());
    }
    conn.close("demo done");
    client.shutdown().await;
    server_node.shutdown().await;
    server.shutdown().await;
    Ok(())
}

fn describe_event(event: &Event) -> String {
    match event {
        Event::Registered { peer, name } => format!("registered {} {:?}", peer.short(), name),
        Event::CandidateGathered { candidate } => {
            format!("candidate {} {}", candidate.kind, candidate.addr)
        }
        Event::OfferSent { target } => format!("offer sent to {target}"),
        Event::AnswerReceived { peer, candidates } => {
            format!("answer from {} with {candidates} candidates", peer.short())
        }
        Event::CheckSent { remote } => format!("check sent to {remote}"),
        Event::CheckSucceeded { remote, rtt } => {
            format!(
                "check answered by {remote} in {:.2} ms",
                rtt.as_secs_f64() * 1e3
            )
        }
        Event::PathSelected { remote, kind } => format!("path {kind} to {remote}"),
        Event::PathChanged {
            from,
            to,
            kind,
            rtt,
        } => format!(
            "path moved from {from} to {to} ({kind}, check rtt {:.2} ms)",
            rtt.as_secs_f64() * 1e3
        ),
        Event::ProtocolSelected { protocol } => format!("protocol {protocol}"),
        Event::Connected { peer, remote, .. } => {
            format!("connected to {} at {remote}", peer.short())
        }
        Event::StreamOpened { peer } => format!("stream opened to {}", peer.short()),
        other => format!("{other:?}"),
    }
}
