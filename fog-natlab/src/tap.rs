//! Links with delay and loss: a TAP device in each of the two namespaces and a forwarder thread
//! that copies Ethernet frames between them, releasing each frame `delay` after it was read.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::LabError;

/// Opens a TAP device named `name` (IFF_TAP | IFF_NO_PI, non-blocking) in the calling thread's
/// network namespace. The device lives as long as the returned descriptor.
pub(crate) fn open_tap(name: &str) -> io::Result<OwnedFd> {
    // SAFETY: a plain open(2) of a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq, which `req` is, and `fd` is a tun descriptor.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A pipe whose write end the Lab keeps; dropping it wakes every forwarder (POLLHUP) to stop.
pub(crate) fn stop_pipe() -> Result<(OwnedFd, Arc<OwnedFd>), LabError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if rc != 0 {
        return Err(LabError::Io {
            context: "cannot create the forwarders' stop pipe".into(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((write, Arc::new(read)))
}

/// Frames waiting in one direction: (release time, frame).
type Queue = VecDeque<(Instant, Vec<u8>)>;

/// At most this many frames wait in one direction; more are dropped (a tail-drop queue).
const MAX_QUEUED: usize = 10_000;
/// Frames read from one side per wake-up, so that the other side and due frames get their turn.
const READ_BATCH: usize = 64;

/// One link's two TAP descriptors and what to do to frames between them.
pub(crate) struct Forwarder {
    pub(crate) a: OwnedFd,
    pub(crate) b: OwnedFd,
    pub(crate) delay: Duration,
    pub(crate) loss_percent: u8,
    pub(crate) stop: Arc<OwnedFd>,
    pub(crate) seed: u64,
}

impl Forwarder {
    pub(crate) fn spawn(self, name: String) -> Result<JoinHandle<()>, LabError> {
        thread::Builder::new()
            .name(name)
            .spawn(move || self.run())
            .map_err(|source| LabError::Io {
                context: "cannot spawn a link forwarder thread".into(),
                source,
            })
    }

    fn run(self) {
        // Wake up on time: the default timer slack (50 µs) would add to every delayed frame.
        // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        raise_priority();
        let mut rng = XorShift(self.seed | 1);
        let mut to_b: Queue = VecDeque::new();
        let mut to_a: Queue = VecDeque::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            release(&mut to_b, &self.b, now);
            release(&mut to_a, &self.a, now);
            let next = [to_b.front(), to_a.front()]
                .into_iter()
                .flatten()
                .map(|(at, _)| *at)
                .min();
            let timeout = next.map(|at| {
                let left = at.saturating_duration_since(Instant::now());
                libc::timespec {
                    tv_sec: left.as_secs() as libc::time_t,
                    tv_nsec: left.subsec_nanos() as libc::c_long,
                }
            });
            let mut fds = [
                pollfd(self.a.as_raw_fd()),
                pollfd(self.b.as_raw_fd()),
                pollfd(self.stop.as_raw_fd()),
            ];
            let ts_ptr = timeout
                .as_ref()
                .map_or(std::ptr::null(), |ts| ts as *const libc::timespec);
            // SAFETY: `fds` and `ts_ptr` point to live values for the duration of the call.
            let rc = unsafe {
                libc::ppoll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    ts_ptr,
                    std::ptr::null(),
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!(error = %err, "natlab forwarder: ppoll failed, stopping");
                return;
            }
            if fds[2].revents != 0 {
                return; // the Lab is being dropped
            }
            for (index, (from, to, queue)) in
                [(&self.a, &self.b, &mut to_b), (&self.b, &self.a, &mut to_a)]
                    .into_iter()
                    .enumerate()
            {
                let revents = fds[index].revents;
                if revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                    tracing::debug!("natlab forwarder: a TAP device went away, stopping");
                    return;
                }
                if revents & libc::POLLIN == 0 {
                    continue;
                }
                for _ in 0..READ_BATCH {
                    // SAFETY: `buf` is a writable buffer of `buf.len()` bytes.
                    let n =
                        unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n < 0 {
                        let err = io::Error::last_os_error();
                        match err.kind() {
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => break,
                            _ => {
                                tracing::debug!(error = %err, "natlab forwarder: read failed, stopping");
                                return;
                            }
                        }
                    }
                    let frame = &buf[..n as usize];
                    if self.loss_percent > 0
                        && is_ipv4(frame)
                        && rng.below_100() < u64::from(self.loss_percent)
                    {
                        continue;
                    }
                    if self.delay.is_zero() && queue.is_empty() {
                        write_frame(to, frame);
                    } else if queue.len() < MAX_QUEUED {
                        queue.push_back((Instant::now() + self.delay, frame.to_vec()));
                    }
                }
            }
        }
    }
}

/// Gives this forwarder thread the lowest real-time priority (SCHED_FIFO 1), so that a busy
/// machine (tests in parallel on few cores) delays frames as little as possible, as netem's
/// softirq would. A forwarder only works when frames arrive, so it cannot hog a core, and the
/// kernel's real-time throttling bounds it anyway. Best effort: without the right, it stays a
/// normal thread.
fn raise_priority() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: changes only the calling thread's scheduling policy; `param` is valid.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        tracing::debug!(
            error = rc,
            "natlab forwarder: cannot use SCHED_FIFO, staying normal"
        );
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Writes every frame whose time has come, in order.
fn release(queue: &mut Queue, to: &OwnedFd, now: Instant) {
    while queue.front().is_some_and(|(at, _)| *at <= now) {
        let (_, frame) = queue.pop_front().expect("front exists");
        write_frame(to, &frame);
    }
}

fn write_frame(to: &OwnedFd, frame: &[u8]) {
    // SAFETY: `frame` is a readable buffer of `frame.len()` bytes. A failed write drops the
    // frame, as a congested wire would.
    let _ = unsafe { libc::write(to.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
}

/// Loss applies to IPv4 packets only, so that ARP (and IPv6 neighbour discovery) stays reliable.
fn is_ipv4(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x00][..])
}

/// A small xorshift64* generator: loss needs no cryptographic randomness.
struct XorShift(u64);

impl XorShift {
    fn below_100(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % 100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_roughly_uniform() {
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        let hits = (0..100_000).filter(|_| rng.below_100() < 20).count();
        assert!((18_000..22_000).contains(&hits), "{hits}");
    }

    #[test]
    fn recognises_ipv4_frames() {
        let mut frame = vec![0u8; 60];
        frame[12] = 0x08;
        assert!(is_ipv4(&frame));
        frame[13] = 0x06; // ARP
        assert!(!is_ipv4(&frame));
        assert!(!is_ipv4(&[0u8; 10]));
    }
}
