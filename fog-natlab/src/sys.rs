//! The system side: finding `ip` and `nft`, running them, entering namespaces, stale cleanup.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;

use crate::LabError;

/// Where `ip netns` keeps its namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// The resolved paths of the tools the lab drives.
#[derive(Debug)]
pub(crate) struct Tools {
    pub(crate) ip: PathBuf,
    pub(crate) nft: PathBuf,
}

/// Finds `name` on `PATH`, then in the usual sbin/bin folders (a non-login root shell may lack
/// `/usr/sbin` on its `PATH`).
fn find_tool(name: &str) -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let fallback = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    from_path
        .into_iter()
        .chain(fallback)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Checks that we are root and that `ip` and `nft` exist; never skips silently.
pub(crate) fn preflight() -> Result<Tools, LabError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    check_environment(euid, find_tool)
}

pub(crate) fn check_environment(
    euid: u32,
    find: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Tools, LabError> {
    if euid != 0 {
        return Err(LabError::NotRoot { euid });
    }
    let ip = find("ip").ok_or(LabError::MissingTool {
        tool: "ip",
        package: "iproute2",
    })?;
    let nft = find("nft").ok_or(LabError::MissingTool {
        tool: "nft",
        package: "nftables",
    })?;
    if !Path::new("/dev/net/tun").exists() {
        return Err(LabError::Io {
            context:
                "/dev/net/tun does not exist (the TUN/TAP driver is needed for delay and loss)"
                    .into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    Ok(Tools { ip, nft })
}

/// Runs `cmd` (optionally feeding `stdin`), returning its stdout; a non-zero exit is an error
/// that carries the command line and its stderr.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String, LabError> {
    let line = describe(cmd);
    tracing::debug!(command = %line, "natlab");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| LabError::Io {
        context: format!("cannot start `{line}`"),
        source,
    })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes())
            .map_err(|source| LabError::Io {
                context: format!("cannot write the input of `{line}`"),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| LabError::Io {
        context: format!("cannot wait for `{line}`"),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Tools {
    /// `ip ARGS…`
    pub(crate) fn ip<I, S>(&self, args: I) -> Result<String, LabError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(Command::new(&self.ip).args(args), None)
    }

    /// `ip -n NS -batch -` fed with `lines`.
    pub(crate) fn ip_batch(&self, ns: &str, lines: &[String]) -> Result<(), LabError> {
        let input = lines.join("\n") + "\n";
        run(
            Command::new(&self.ip).args(["-n", ns, "-batch", "-"]),
            Some(&input),
        )
        .map(drop)
        .map_err(|e| match e {
            LabError::Command {
                command,
                status,
                stderr,
            } => LabError::Command {
                command: format!("{command} <<< {input:?}"),
                status,
                stderr,
            },
            other => other,
        })
    }

    /// `ip netns exec NS nft -f -` fed with `ruleset`.
    pub(crate) fn nft(&self, ns: &str, ruleset: &str) -> Result<(), LabError> {
        run(
            Command::new(&self.ip)
                .args(["netns", "exec", ns])
                .arg(&self.nft)
                .args(["-f", "-"]),
            Some(ruleset),
        )
        .map(drop)
    }

    /// `ip netns add NAME`, serialised within the process (the first `ip netns add` of a boot
    /// sets up `/run/netns` as a shared mount, which concurrent calls could stack).
    pub(crate) fn netns_add(&self, name: &str) -> Result<(), LabError> {
        static LOCK: Mutex<()> = Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        self.ip(["netns", "add", name]).map(drop)
    }

    /// Deletes the named namespaces in one `ip -force -batch` call (errors are logged, never
    /// raised: this runs from `Drop`).
    pub(crate) fn netns_delete_all(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let input: String = names
            .iter()
            .map(|n| format!("netns delete {n}\n"))
            .collect();
        if let Err(e) = run(
            Command::new(&self.ip).args(["-force", "-batch", "-"]),
            Some(&input),
        ) {
            tracing::warn!(error = %e, "natlab: deleting namespaces reported an error");
        }
        for name in names {
            if Path::new(NETNS_DIR).join(name).exists() {
                if let Err(e) = self.ip(["netns", "delete", name.as_str()]) {
                    tracing::warn!(namespace = %name, error = %e, "natlab: namespace left behind");
                }
            }
        }
    }
}

/// Moves the calling thread into the network namespace `ns` (by `setns(2)`); only this thread
/// changes namespace, and threads it spawns afterwards inherit it.
pub(crate) fn enter_netns(ns: &str) -> Result<(), LabError> {
    let path = Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path).map_err(|source| LabError::Io {
        context: format!(
            "cannot open {} (was the namespace's Lab dropped?)",
            path.display()
        ),
        source,
    })?;
    // SAFETY: `file` is an open namespace file descriptor for the duration of the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(LabError::Io {
            context: format!("setns into network namespace {ns}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `f` on a fresh thread that entered namespace `ns`; a panic in `f` is resumed here.
pub(crate) fn in_netns<T, F>(ns: &str, f: F) -> Result<T, LabError>
where
    F: FnOnce() -> Result<T, LabError> + Send + 'static,
    T: Send + 'static,
{
    let ns = ns.to_string();
    let handle = thread::Builder::new()
        .name("natlab-ns".into())
        .spawn(move || {
            enter_netns(&ns)?;
            f()
        })
        .map_err(|source| LabError::Io {
            context: "cannot spawn a thread".into(),
            source,
        })?;
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Writes `value` to the sysctl file `path` (under `/proc/sys/net`, which shows the writing
/// thread's namespace) from inside namespace `ns`.
pub(crate) fn sysctl(ns: &str, settings: &[(&'static str, &'static str)]) -> Result<(), LabError> {
    let settings = settings.to_vec();
    let ns_name = ns.to_string();
    in_netns(ns, move || {
        for (path, value) in settings {
            std::fs::write(path, value).map_err(|source| LabError::Io {
                context: format!("cannot write {value} to {path} in namespace {ns_name}"),
                source,
            })?;
        }
        Ok(())
    })
}

/// `true` while a process with this pid exists.
fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Parses a lab namespace name `fl<pid>x<counter>-<rest>`, returning the pid.
pub(crate) fn lab_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("fl")?;
    let (pid, rest) = rest.split_once('x')?;
    let (counter, _) = rest.split_once('-')?;
    if pid.is_empty() || counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether namespace `name` is a leftover: a lab name whose pid is dead, or, before this
/// process made its first lab (`include_own`), one that carries our own pid (a dead run's pid
/// that the kernel gave to us again).
pub(crate) fn is_stale(
    name: &str,
    own_pid: u32,
    include_own: bool,
    alive: impl Fn(u32) -> bool,
) -> bool {
    match lab_pid(name) {
        Some(pid) if pid == own_pid => include_own,
        Some(pid) => !alive(pid),
        None => false,
    }
}

/// Deletes the namespaces left by earlier runs whose process is gone (see [`is_stale`]).
pub(crate) fn remove_stale(tools: &Tools, include_own: bool) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let own = std::process::id();
    let stale: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| is_stale(name, own, include_own, pid_alive))
        .collect();
    if !stale.is_empty() {
        tracing::info!(
            count = stale.len(),
            "natlab: removing namespaces of dead runs"
        );
        // Another Lab may be deleting the same ones right now; errors are only logged.
        tools.netns_delete_all(&stale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lab_names() {
        assert_eq!(lab_pid("fl1234x0-wan"), Some(1234));
        assert_eq!(lab_pid("fl7x12-r1h2"), Some(7));
        assert_eq!(lab_pid("fl7x-wan"), None);
        assert_eq!(lab_pid("flx1-wan"), None);
        assert_eq!(lab_pid("fl12x3"), None);
        assert_eq!(lab_pid("foo"), None);
        assert_eq!(lab_pid("fl1a2x3-wan"), None);
    }

    #[test]
    fn finds_stale_names() {
        let alive = |pid: u32| pid == 10 || pid == 20;
        assert!(is_stale("fl30x0-wan", 20, false, alive), "dead pid");
        assert!(!is_stale("fl10x0-wan", 20, false, alive), "live pid");
        assert!(
            !is_stale("fl20x0-wan", 20, false, alive),
            "ours, after our first lab"
        );
        assert!(
            is_stale("fl20x0-wan", 20, true, alive),
            "ours, before our first lab"
        );
        assert!(!is_stale("other", 20, true, alive), "not a lab name");
    }

    #[test]
    fn refuses_non_root_and_missing_tools() {
        let all = |name: &str| Some(PathBuf::from(format!("/usr/sbin/{name}")));
        let err = check_environment(1000, all).unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        let no_nft = |name: &str| (name != "nft").then(|| PathBuf::from("/usr/sbin/ip"));
        let err = check_environment(0, no_nft).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nft") && msg.contains("nftables"), "{msg}");
        let no_ip = |name: &str| (name != "ip").then(|| PathBuf::from("/usr/sbin/nft"));
        let msg = check_environment(0, no_ip).unwrap_err().to_string();
        assert!(msg.contains("`ip`") && msg.contains("iproute2"), "{msg}");
    }
}
