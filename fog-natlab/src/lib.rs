//! The NAT test bed of fog: a small internet in Linux network namespaces, with NAT routers of
//! every classic behaviour, and links with real (user-space) delay and loss.
//!
//! Everything here needs root, the `ip` command (iproute2), the `nft` command (nftables) and
//! `/dev/net/tun`. [`Lab::new`] fails with a clear [`LabError`] when one of them is missing; it
//! never skips silently.
//!
//! # Topology
//!
//! ```text
//!  host ns 10.k.0.m/24 ──access link──┐                    ┌── server ns 203.0.113.9/24 (+ .10 …)
//!  host ns 10.k.0.n/24 ──access link──┤                    │
//!                       router ns: LAN bridge 10.k.0.1/24  │
//!                                  WAN w0 203.0.113.x/24 ──wan link── "wan" ns: bridge br0
//! ```
//!
//! * One `wan` namespace per [`Lab`] holds a bridge joining every WAN-side link: the internet,
//!   203.0.113.0/24 (TEST-NET-3, so code that filters private addresses treats it as public).
//! * [`Lab::server`] adds a host on that bridge with one or more public addresses (two for an
//!   RFC 5780 STUN server). Addresses the lab picks itself (routers, hosts behind
//!   [`NatBehaviour::Open`]) come from 203.0.113.100 upwards, so give servers addresses below
//!   .100.
//! * [`Lab::router`] adds a router: WAN interface `w0` on the bridge with the next free public
//!   address, a LAN bridge `lan0` with 10.k.0.1/24 (k = 1, 2, … per router), `ip_forward=1`, the
//!   nftables rules of its [`NatBehaviour`], and a "quiet" input table that drops unsolicited UDP
//!   to the router itself, as home routers do.
//! * [`Lab::host`] adds a host 10.k.0.m/24 (m = 2, 3, …) behind a router, default route via the
//!   router.
//! * Every namespace has `lo` up, and a default route (servers and routers on-link on their WAN
//!   side), so a route lookup for any address succeeds; packets to addresses outside the lab go
//!   nowhere, as the wan bridge has no uplink.
//!
//! ## NAT rules
//!
//! | behaviour | rules on `w0` |
//! | --- | --- |
//! | [`FullCone`](NatBehaviour::FullCone) | `masquerade persistent`, inbound UDP 1024-65535 `dnat` to the **first** host behind the router (with several hosts, only the first one gets the full-cone inbound path) |
//! | [`RestrictedCone`](NatBehaviour::RestrictedCone) | `masquerade persistent`, a dynamic set of (peer address, port) the LAN sent to, inbound UDP from a peer address in it `dnat` to the first host |
//! | [`PortRestrictedCone`](NatBehaviour::PortRestrictedCone) | plain `masquerade` (Linux conntrack's own behaviour) |
//! | [`SymmetricSequential`](NatBehaviour::SymmetricSequential) | UDP: `snat to WAN : numgen inc mod 1000 map { 0 : 20000, 1 : 20001, … }`: each new flow takes the next port, step **1** (a map, because plain `numgen … offset` writes the port in host byte order and steps by 256); other protocols `masquerade` |
//! | [`SymmetricRandom`](NatBehaviour::SymmetricRandom) | `masquerade fully-random` |
//! | [`UdpBlocked`](NatBehaviour::UdpBlocked) | forward: drop UDP out of `w0`; `masquerade` (so TCP works) |
//! | [`Open`](NatBehaviour::Open) | none, see below |
//!
//! ## Open
//!
//! A router with [`NatBehaviour::Open`] is a transparent bridge (a modem in bridge mode): its
//! WAN link and its hosts' access links are joined by a bridge `br0` that also carries the
//! router's own public address ([`Router::wan_addr`]). Hosts behind it get their own public
//! addresses (from the lab's pool) on the internet's /24, so a STUN server sees a host's own
//! address and port, while the router's WAN link and the host's access link still add their delay
//! and loss. An open router has no NAT, no forwarding and no "quiet" table (nothing of it filters).
//!
//! # Delay and loss
//!
//! There is no netem here, so a [`Link`] that has delay or loss is not a veth pair: it is a TAP
//! device in each of its two namespaces and a forwarder thread that copies Ethernet frames both
//! ways, releasing each frame [`Link::delay`] after it was read, in order (so a round trip over a
//! link with 25 ms delay takes 50 ms). [`Link::loss_percent`] drops that share of IPv4 packets in
//! each direction independently (ARP is never dropped, so neighbour resolution stays reliable).
//! A link with neither is a plain veth pair. The forwarders stop when the [`Lab`] drops.
//!
//! # Names and cleanup
//!
//! Namespaces are named `fl<pid>x<counter>-<role>` (e.g. `fl4242x0-wan`, `fl4242x0-r1h2`), so
//! labs in parallel threads and processes never clash. Dropping a [`Lab`] (also while a panic
//! unwinds) stops its forwarders and deletes every namespace it created, and with them every
//! link. [`Lab::new`] deletes namespaces whose pid is no longer alive, left by killed runs (and,
//! before a process's first lab, names that carry its own pid: a dead run's pid given again).
//!
//! # Example
//!
//! A host behind a port-restricted NAT asks a server which address it sees:
//!
//! ```
//! use std::net::Ipv4Addr;
//! use std::time::Duration;
//! use fog_natlab::{Lab, Link, NatBehaviour};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut lab = Lab::new()?; // needs root, `ip` and `nft`
//! let server = lab.server(&[Ipv4Addr::new(203, 0, 113, 9)])?;
//! let router = lab.router(NatBehaviour::PortRestrictedCone, Link::default())?;
//! let access = Link { delay: Duration::from_millis(5), loss_percent: 0 };
//! let host = lab.host(&router, access)?;
//!
//! // The server answers every datagram with the source address it saw, until told to stop.
//! let (ready_tx, ready_rx) = std::sync::mpsc::channel();
//! let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
//! let echo = server.clone();
//! let server_thread = std::thread::spawn(move || {
//!     echo.run(move || async move {
//!         let socket = tokio::net::UdpSocket::bind("203.0.113.9:7000").await.unwrap();
//!         ready_tx.send(()).unwrap();
//!         let mut buf = [0u8; 64];
//!         loop {
//!             tokio::select! {
//!                 _ = &mut stop_rx => break,
//!                 got = socket.recv_from(&mut buf) => {
//!                     let (_, from) = got.unwrap();
//!                     socket.send_to(from.to_string().as_bytes(), from).await.unwrap();
//!                 }
//!             }
//!         }
//!     })
//! });
//! ready_rx.recv_timeout(Duration::from_secs(10))?;
//!
//! // The first datagram may be lost while ARP resolves: retry.
//! let seen = host.run(|| async {
//!     let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
//!     let mut buf = [0u8; 64];
//!     for _ in 0..10 {
//!         socket.send_to(b"who am I?", "203.0.113.9:7000").await.unwrap();
//!         let wait = Duration::from_millis(300);
//!         if let Ok(Ok(n)) = tokio::time::timeout(wait, socket.recv(&mut buf)).await {
//!             return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
//!         }
//!     }
//!     None
//! })?;
//! stop_tx.send(()).unwrap();
//! server_thread.join().unwrap()?;
//!
//! let seen = seen.expect("no answer from the server within 3 s");
//! assert!(seen.starts_with(&format!("{}:", router.wan_addr())), "{seen}");
//! # Ok(())
//! # }
//! ```

mod nat;
pub mod process;
mod sys;
mod tap;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub use nat::{NatBehaviour, ParseNatBehaviourError};

use sys::Tools;

/// What can go wrong while building or using a [`Lab`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The lab needs root (network namespaces, TAP devices, nftables).
    #[error(
        "fog-natlab needs root (to create network namespaces, TAP devices and nftables rules), \
         but runs with effective uid {euid}; run it as root"
    )]
    NotRoot {
        /// The effective uid we run with.
        euid: u32,
    },
    /// A command the lab drives is not installed.
    #[error(
        "fog-natlab needs the `{tool}` command, which is not on PATH nor in /usr/sbin, /sbin, \
         /usr/bin or /bin; install it with `apt-get install -y {package}`"
    )]
    MissingTool {
        /// The command, `ip` or `nft`.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// A command (`ip`, `nft`) exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A system call or I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the lab was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An address outside 203.0.113.1–203.0.113.254 was asked for.
    #[error("{0} is not an address of the lab's internet (203.0.113.1 to 203.0.113.254)")]
    InvalidAddress(Ipv4Addr),
    /// An address is already taken in this lab.
    #[error("{0} is already used in this lab")]
    AddressInUse(Ipv4Addr),
    /// [`Lab::server`] was called with no address.
    #[error("a server needs at least one address")]
    NoAddress,
    /// A [`Link`] with impossible values.
    #[error("invalid link: {0}")]
    InvalidLink(String),
    /// The lab ran out of addresses, routers or host numbers.
    #[error("the lab has no room left: {0}")]
    Exhausted(&'static str),
    /// [`Lab::host`] was given a router of another lab.
    #[error("router {0} does not belong to this Lab")]
    ForeignRouter(String),
    /// The thread that ran a closure in a namespace ended without an answer.
    #[error("the thread running in namespace {0} ended without an answer")]
    ThreadLost(String),
}

/// One direction-symmetric link: what every frame crossing it suffers, in each direction.
///
/// `Link::default()` is an ideal link (no delay, no loss), built as a plain veth pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// One-way delay: a round trip over this link takes twice this.
    pub delay: Duration,
    /// Share of IPv4 packets dropped, in percent (0–100), in each direction independently.
    pub loss_percent: u8,
}

impl Link {
    /// A link with this one-way delay and no loss.
    pub fn with_delay(delay: Duration) -> Link {
        Link {
            delay,
            loss_percent: 0,
        }
    }

    /// A link with this loss (percent, each direction) and no delay.
    pub fn with_loss(loss_percent: u8) -> Link {
        Link {
            delay: Duration::ZERO,
            loss_percent,
        }
    }

    fn is_ideal(&self) -> bool {
        self.delay.is_zero() && self.loss_percent == 0
    }

    fn validate(&self) -> Result<(), LabError> {
        if self.loss_percent > 100 {
            return Err(LabError::InvalidLink(format!(
                "loss_percent is {}, more than 100",
                self.loss_percent
            )));
        }
        if self.delay > Duration::from_secs(60) {
            return Err(LabError::InvalidLink(format!(
                "a delay of {:?} is more than a minute",
                self.delay
            )));
        }
        Ok(())
    }
}

/// A host in the lab: a network namespace with one or more addresses.
///
/// Cloning is cheap; a clone refers to the same namespace. Once its [`Lab`] is dropped the
/// namespace is gone and [`Host::run`] fails.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    addrs: Vec<Ipv4Addr>,
    tools: Arc<Tools>,
}

impl Host {
    /// The network namespace's name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its (first) address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addrs[0]
    }

    /// All its addresses, the first one first.
    pub fn addrs(&self) -> &[Ipv4Addr] {
        &self.addrs
    }

    /// Drops every packet in and out of the host's access link (a dead Wi-Fi, a cable pulled
    /// upstream) until the returned guard is dropped: the host keeps its address and routes,
    /// and nothing gets through.
    pub fn go_dark(&self) -> Result<Dark, LabError> {
        self.tools.nft(
            &self.name,
            &format!(
                "table inet {DARK_TABLE} {{\n chain in {{ type filter hook input priority -300; iifname \"eth0\" drop; }}\n \
                 chain out {{ type filter hook output priority -300; oifname \"eth0\" drop; }}\n}}\n"
            ),
        )?;
        Ok(Dark { host: self.clone() })
    }

    /// `ip netns exec NS program`: a command that runs `program` inside this host's namespace,
    /// e.g. the `fog` binary; add arguments and run it as any [`Command`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs the async closure `f` on a fresh thread that entered this host's network namespace
    /// (by `setns(2)`), on its own tokio current-thread runtime with I/O and time enabled, and
    /// returns its output. Sockets it opens live in the namespace; threads it spawns (also
    /// tokio's blocking pool) inherit the namespace.
    ///
    /// This blocks the calling thread until `f`'s future completes; from async code use
    /// [`Host::run_async`]. A panic inside `f` is resumed in the caller.
    pub fn run<F, Fut, T>(&self, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let name = self.name.clone();
        let handle = thread::Builder::new()
            .name(thread_name(&self.name))
            .spawn(move || run_in_namespace(&name, f))
            .map_err(|source| LabError::Io {
                context: "cannot spawn a namespace thread".into(),
                source,
            })?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The same as [`Host::run`], awaited from async code without blocking the caller's
    /// runtime: `f` runs on its own thread, and the answer comes back over a oneshot channel.
    /// A panic inside `f` is resumed in the caller.
    pub async fn run_async<F, Fut, T>(&self, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let name = self.name.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        thread::Builder::new()
            .name(thread_name(&self.name))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_in_namespace(&name, f)
                }));
                let _ = tx.send(outcome);
            })
            .map_err(|source| LabError::Io {
                context: "cannot spawn a namespace thread".into(),
                source,
            })?;
        match rx.await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(LabError::ThreadLost(self.name.clone())),
        }
    }
}

/// The nftables table of [`Host::go_dark`].
const DARK_TABLE: &str = "natlab_dark";

/// A host's access link gone dark, from [`Host::go_dark`]; dropping it brings the link back.
#[derive(Debug)]
pub struct Dark {
    host: Host,
}

impl Drop for Dark {
    fn drop(&mut self) {
        if let Err(e) = self.host.tools.nft(
            &self.host.name,
            &format!("delete table inet {DARK_TABLE}\n"),
        ) {
            tracing::warn!(host = %self.host.name, error = %e, "the dark link was not lifted");
        }
    }
}

fn thread_name(ns: &str) -> String {
    // Linux keeps 15 bytes of a thread name; the role part of the namespace name is the
    // interesting one.
    let role = ns.rsplit('-').next().unwrap_or(ns);
    format!("natlab-{role}")
}

fn run_in_namespace<F, Fut, T>(ns: &str, f: F) -> Result<T, LabError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    sys::enter_netns(ns)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| LabError::Io {
            context: format!("cannot build a tokio runtime in namespace {ns}"),
            source,
        })?;
    Ok(runtime.block_on(f()))
}

/// A router of the lab, made by [`Lab::router`].
#[derive(Debug, Clone)]
pub struct Router {
    name: String,
    wan_addr: Ipv4Addr,
    nat: NatBehaviour,
    lab: String,
    index: u8,
}

impl Router {
    /// Its public address on the internet (the address a NAT maps to; for
    /// [`NatBehaviour::Open`], the bridge's own address).
    pub fn wan_addr(&self) -> Ipv4Addr {
        self.wan_addr
    }

    /// Its NAT behaviour.
    pub fn nat(&self) -> NatBehaviour {
        self.nat
    }

    /// Its network namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The router's LAN address 10.k.0.1, the default gateway of its hosts; `None` for
    /// [`NatBehaviour::Open`], whose hosts sit on the internet's /24 themselves.
    pub fn lan_addr(&self) -> Option<Ipv4Addr> {
        self.nat
            .translates()
            .then(|| Ipv4Addr::new(10, self.index, 0, 1))
    }
}

struct RouterState {
    name: String,
    nat: NatBehaviour,
    next_host: u16,
}

/// Counts labs within this process, for unique names.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// First host number of automatically given public addresses (203.0.113.100 upwards).
const AUTO_WAN_FIRST: u8 = 100;

/// One small internet in network namespaces. Dropping it tears everything down.
pub struct Lab {
    id: String,
    prefix: String,
    tools: Arc<Tools>,
    wan: String,
    namespaces: Vec<String>,
    used_wan: BTreeSet<Ipv4Addr>,
    next_port: u32,
    servers: u32,
    routers: Vec<RouterState>,
    forwarders: Vec<JoinHandle<()>>,
    stop_tx: Option<OwnedFd>,
    stop_rx: Arc<OwnedFd>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("id", &self.id)
            .field("namespaces", &self.namespaces)
            .field("forwarders", &self.forwarders.len())
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Builds an empty internet (the `wan` namespace and its bridge).
    ///
    /// Fails with [`LabError::NotRoot`] or [`LabError::MissingTool`] when the machine cannot host
    /// a lab. Deletes namespaces left by killed earlier runs (a lab name whose pid is no longer
    /// alive).
    pub fn new() -> Result<Lab, LabError> {
        let tools = Arc::new(sys::preflight()?);
        // Before this process's first lab, names with our own pid are leftovers of a dead run
        // whose pid we were given again; Once makes every other Lab::new wait for this.
        static FIRST_LAB: std::sync::Once = std::sync::Once::new();
        let mut first = false;
        FIRST_LAB.call_once(|| {
            first = true;
            sys::remove_stale(&tools, true);
        });
        if !first {
            sys::remove_stale(&tools, false);
        }
        let id = format!(
            "fl{}x{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let (stop_tx, stop_rx) = tap::stop_pipe()?;
        let wan = format!("{id}-wan");
        let mut lab = Lab {
            prefix: format!("{id}-"),
            id,
            tools,
            wan: wan.clone(),
            namespaces: Vec::new(),
            used_wan: BTreeSet::new(),
            next_port: 0,
            servers: 0,
            routers: Vec::new(),
            forwarders: Vec::new(),
            stop_tx: Some(stop_tx),
            stop_rx,
        };
        lab.add_namespace(&wan)?;
        lab.tools.ip_batch(
            &wan,
            &[
                "link set dev lo up".into(),
                "link add name br0 type bridge".into(),
                "link set dev br0 up".into(),
            ],
        )?;
        Ok(lab)
    }

    /// The prefix of every namespace name of this lab, e.g. `fl4242x0-`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The names of every namespace this lab created so far (all start with [`Lab::prefix`]).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Adds a host on the internet with these public addresses (in 203.0.113.0/24; e.g.
    /// 203.0.113.9 and .10 for an RFC 5780 STUN server). Its interface `eth0` is an ideal link
    /// to the wan bridge.
    pub fn server(&mut self, addrs: &[Ipv4Addr]) -> Result<Host, LabError> {
        if addrs.is_empty() {
            return Err(LabError::NoAddress);
        }
        let mut seen = BTreeSet::new();
        for &addr in addrs {
            if !is_wan_host(addr) {
                return Err(LabError::InvalidAddress(addr));
            }
            if self.used_wan.contains(&addr) || !seen.insert(addr) {
                return Err(LabError::AddressInUse(addr));
            }
        }
        self.servers += 1;
        let name = format!("{}-s{}", self.id, self.servers);
        self.add_namespace(&name)?;
        self.used_wan.extend(addrs.iter().copied());
        let port = self.wan_port(&name, "eth0", Link::default())?;
        let mut lines = vec!["link set dev lo up".to_string()];
        lines.extend(addrs.iter().map(|a| format!("addr add {a}/24 dev eth0")));
        lines.push("link set dev eth0 up".into());
        lines.push("route add default dev eth0".into());
        self.tools.ip_batch(&name, &lines)?;
        self.attach_wan_port(&port)?;
        Ok(Host {
            name,
            addrs: addrs.to_vec(),
            tools: self.tools.clone(),
        })
    }

    /// Adds a router with this NAT behaviour, its WAN side on the internet through `wan_link`
    /// (its public address is the next free one from 203.0.113.100 upwards), its LAN
    /// 10.k.0.1/24 for the k-th router. See the crate docs for the rules of each behaviour and
    /// for [`NatBehaviour::Open`].
    pub fn router(&mut self, nat: NatBehaviour, wan_link: Link) -> Result<Router, LabError> {
        wan_link.validate()?;
        let index = u8::try_from(self.routers.len() + 1)
            .map_err(|_| LabError::Exhausted("at most 255 routers per lab"))?;
        let wan_addr = self.alloc_wan()?;
        let name = format!("{}-r{index}", self.id);
        self.add_namespace(&name)?;
        let port = self.wan_port(&name, nat::WAN_IF, wan_link)?;
        let w = nat::WAN_IF;
        let mut lines = vec!["link set dev lo up".to_string()];
        if nat.translates() {
            lines.extend([
                format!("addr add {wan_addr}/24 dev {w}"),
                format!("link set dev {w} up"),
                format!("route add default dev {w}"),
                format!("link add name lan0 address 02:00:0a:{index:02x}:00:01 type bridge"),
                format!("addr add 10.{index}.0.1/24 dev lan0"),
                "link set dev lan0 up".into(),
            ]);
        } else {
            lines.extend([
                format!("link add name br0 address 02:00:cb:00:71:{index:02x} type bridge"),
                format!("link set dev {w} master br0"),
                format!("link set dev {w} up"),
                format!("addr add {wan_addr}/24 dev br0"),
                "link set dev br0 up".into(),
                "route add default dev br0".into(),
            ]);
        }
        self.tools.ip_batch(&name, &lines)?;
        if let Some(rules) = nat::ruleset(nat, wan_addr, Ipv4Addr::new(10, index, 0, 2)) {
            sys::sysctl(&name, &[("/proc/sys/net/ipv4/ip_forward", "1")])?;
            self.tools.nft(&name, &rules)?;
        }
        self.attach_wan_port(&port)?;
        self.routers.push(RouterState {
            name: name.clone(),
            nat,
            next_host: 2,
        });
        Ok(Router {
            name,
            wan_addr,
            nat,
            lab: self.id.clone(),
            index,
        })
    }

    /// Adds a host behind `router` through `access_link`: 10.k.0.m/24 (m = 2, 3, …) with a
    /// default route via the router, or for an [`NatBehaviour::Open`] router a public address
    /// of its own (the next free one from 203.0.113.100 upwards). Several hosts per router are
    /// fine (but a full-cone or restricted-cone router forwards unsolicited inbound UDP to its
    /// first host only).
    pub fn host(&mut self, router: &Router, access_link: Link) -> Result<Host, LabError> {
        access_link.validate()?;
        if router.lab != self.id {
            return Err(LabError::ForeignRouter(router.name.clone()));
        }
        let k = router.index;
        let state = &self.routers[usize::from(k) - 1];
        let (router_ns, nat, m) = (state.name.clone(), state.nat, state.next_host);
        if m > 254 {
            return Err(LabError::Exhausted("at most 253 hosts per router"));
        }
        let addr = if nat.translates() {
            Ipv4Addr::new(10, k, 0, m as u8)
        } else {
            self.alloc_wan()?
        };
        self.routers[usize::from(k) - 1].next_host += 1;
        let name = format!("{}-r{k}h{m}", self.id);
        self.add_namespace(&name)?;
        let port = format!("l{m}");
        self.connect(&router_ns, &port, &name, "eth0", access_link)?;
        let bridge = if nat.translates() { "lan0" } else { "br0" };
        let gateway = if nat.translates() {
            format!("route add default via 10.{k}.0.1")
        } else {
            "route add default dev eth0".into()
        };
        self.tools.ip_batch(
            &name,
            &[
                "link set dev lo up".into(),
                format!("addr add {addr}/24 dev eth0"),
                "link set dev eth0 up".into(),
                gateway,
            ],
        )?;
        self.tools.ip_batch(
            &router_ns,
            &[
                format!("link set dev {port} master {bridge}"),
                format!("link set dev {port} up"),
            ],
        )?;
        Ok(Host {
            name,
            addrs: vec![addr],
            tools: self.tools.clone(),
        })
    }

    /// Creates namespace `name` (recorded first, so that Drop deletes it even if a later step
    /// fails) and turns off bridge netfilter in it (with br_netfilter loaded, bridged frames
    /// would otherwise cross the namespace's IP hooks).
    fn add_namespace(&mut self, name: &str) -> Result<(), LabError> {
        self.namespaces.push(name.to_string());
        self.tools.netns_add(name)?;
        let ns = name.to_string();
        sys::in_netns(name, move || {
            for file in [
                "bridge-nf-call-iptables",
                "bridge-nf-call-ip6tables",
                "bridge-nf-call-arptables",
            ] {
                let path = format!("/proc/sys/net/bridge/{file}");
                if std::path::Path::new(&path).exists() {
                    std::fs::write(&path, "0").map_err(|source| LabError::Io {
                        context: format!("cannot write 0 to {path} in namespace {ns}"),
                        source,
                    })?;
                }
            }
            Ok(())
        })
    }

    /// Links interface `ifname` of namespace `ns` to a new port of the wan bridge; returns the
    /// port's name (attach it with [`Lab::attach_wan_port`] once the other side is set up).
    fn wan_port(&mut self, ns: &str, ifname: &str, link: Link) -> Result<String, LabError> {
        let port = format!("p{}", self.next_port);
        self.next_port += 1;
        let wan = self.wan.clone();
        self.connect(&wan, &port, ns, ifname, link)?;
        Ok(port)
    }

    fn attach_wan_port(&self, port: &str) -> Result<(), LabError> {
        self.tools.ip_batch(
            &self.wan,
            &[
                format!("link set dev {port} master br0"),
                format!("link set dev {port} up"),
            ],
        )
    }

    /// Joins `if_a` in `ns_a` and `if_b` in `ns_b`: a veth pair for an ideal link, else two TAP
    /// devices and a forwarder thread that adds the delay and loss.
    fn connect(
        &mut self,
        ns_a: &str,
        if_a: &str,
        ns_b: &str,
        if_b: &str,
        link: Link,
    ) -> Result<(), LabError> {
        if link.is_ideal() {
            self.tools.ip([
                "link", "add", "name", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
                "netns", ns_b,
            ])?;
            return Ok(());
        }
        let a = open_tap_in(ns_a, if_a)?;
        let b = open_tap_in(ns_b, if_b)?;
        let forwarder = tap::Forwarder {
            a,
            b,
            delay: link.delay,
            loss_percent: link.loss_percent,
            stop: self.stop_rx.clone(),
            seed: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        };
        let handle = forwarder.spawn(format!("natlab-{if_a}-{if_b}"))?;
        self.forwarders.push(handle);
        Ok(())
    }

    /// The next free automatic public address (203.0.113.100 upwards).
    fn alloc_wan(&mut self) -> Result<Ipv4Addr, LabError> {
        let addr = (AUTO_WAN_FIRST..=254)
            .map(|h| Ipv4Addr::new(203, 0, 113, h))
            .find(|a| !self.used_wan.contains(a))
            .ok_or(LabError::Exhausted(
                "no free public address left in 203.0.113.100-254",
            ))?;
        self.used_wan.insert(addr);
        Ok(addr)
    }
}

fn open_tap_in(ns: &str, ifname: &str) -> Result<OwnedFd, LabError> {
    let (ns_name, if_name) = (ns.to_string(), ifname.to_string());
    sys::in_netns(ns, move || {
        tap::open_tap(&if_name).map_err(|source| LabError::Io {
            context: format!("cannot create TAP device {if_name} in namespace {ns_name}"),
            source,
        })
    })
}

fn is_wan_host(addr: Ipv4Addr) -> bool {
    let [a, b, c, d] = addr.octets();
    (a, b, c) == (203, 0, 113) && (1..=254).contains(&d)
}

impl Drop for Lab {
    /// Stops the forwarders and deletes every namespace of the lab; never panics (errors are
    /// logged with `tracing`).
    fn drop(&mut self) {
        // Closing the write end wakes every forwarder with POLLHUP.
        self.stop_tx.take();
        for handle in self.forwarders.drain(..) {
            if handle.join().is_err() {
                tracing::warn!(lab = %self.id, "natlab: a link forwarder had panicked");
            }
        }
        self.tools.netns_delete_all(&self.namespaces);
        tracing::debug!(lab = %self.id, "natlab: torn down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_hosts() {
        assert!(is_wan_host(Ipv4Addr::new(203, 0, 113, 9)));
        assert!(!is_wan_host(Ipv4Addr::new(203, 0, 113, 0)));
        assert!(!is_wan_host(Ipv4Addr::new(203, 0, 113, 255)));
        assert!(!is_wan_host(Ipv4Addr::new(10, 0, 113, 9)));
    }

    #[test]
    fn link_validation() {
        assert!(Link::default().is_ideal());
        assert!(!Link::with_loss(1).is_ideal());
        assert!(!Link::with_delay(Duration::from_millis(1)).is_ideal());
        assert!(Link::with_loss(101).validate().is_err());
        assert!(Link::with_loss(100).validate().is_ok());
    }

    #[test]
    fn thread_names_fit() {
        assert_eq!(thread_name("fl1234567x89-r12h200"), "natlab-r12h200");
        assert!(thread_name("fl1234567x89-r255h254").len() <= 15);
    }
}
