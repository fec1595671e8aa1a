//! Child processes for tests and benches: killed when dropped, waited for with bounds.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A child process that is killed and reaped when dropped, so a failing test leaves nothing
/// running.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `command` with stdout piped (stderr discarded) and waits at most `timeout` for a
/// stdout line that starts with `prefix`; returns the guard and the rest of that line. The rest
/// of stdout keeps being read, so the child never writes into a closed pipe.
pub fn spawn_until_line(
    command: &mut Command,
    prefix: &str,
    timeout: Duration,
) -> Result<(ChildGuard, String), String> {
    spawn_until_line_with_stderr(command, prefix, timeout, Stdio::null())
}

/// [`spawn_until_line`] with the child's stderr going to `stderr` (a log file, say).
pub fn spawn_until_line_with_stderr(
    command: &mut Command,
    prefix: &str,
    timeout: Duration,
    stderr: Stdio,
) -> Result<(ChildGuard, String), String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = prefix.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(&wanted) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let line = rx.recv_timeout(timeout).map_err(|_| {
        format!("{command:?} printed no line starting with {prefix:?} within {timeout:?}")
    })?;
    Ok((guard, line))
}

/// What a watched child printed, line by line, stdout and stderr together.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    /// Waits at most `timeout` for a line that starts with `prefix`, skipping the others;
    /// returns the rest of it, or (when the time ran out or the child closed its output) the
    /// lines it skipped.
    pub fn expect(&self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let until = std::time::Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(prefix) {
                    Some(rest) => return Ok(rest.trim().to_string()),
                    None => skipped.push(line),
                },
                Err(e) => {
                    let why = match e {
                        std::sync::mpsc::RecvTimeoutError::Timeout => "within",
                        std::sync::mpsc::RecvTimeoutError::Disconnected => {
                            "before it ended, within"
                        }
                    };
                    return Err(format!(
                        "no line starting with {prefix:?} {why} {timeout:?}; it printed:\n{}",
                        skipped.join("\n")
                    ));
                }
            }
        }
    }
}

/// Spawns `command` with stdout and stderr piped into one stream of [`Lines`], read on
/// threads of their own, so the child never blocks on a full pipe.
pub fn spawn_watched(command: &mut Command) -> Result<(ChildGuard, Lines), String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok((ChildGuard(child), Lines { rx }))
}

/// Runs `command` to completion with stdout and stderr captured; kills it when it runs over
/// `timeout`.
pub fn output_within(command: &mut Command, timeout: Duration) -> Result<Output, String> {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.map_err(|e| format!("waiting for {command:?}: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet
            // (wait_with_output has not returned).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            Err(format!("{command:?} ran over {timeout:?}"))
        }
    }
}
