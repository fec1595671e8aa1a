//! A real WebRTC peer: `fog-web/echo.html` in headless Chromium registers at a fog signal
//! server with its own Ed25519 key, offers a data channel to a `fog serve` node, checks the
//! node's signed answer, and echoes a message over the channel. A page that names a peer the
//! server does not know reports a clear error. The test serves the page itself and takes the
//! page's outcome as a POST, so nothing is read from the browser's screen.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fog_natlab::process::{spawn_until_line, ChildGuard};

const FOG: &str = env!("CARGO_BIN_EXE_fog");

fn start(args: &[&str], prefix: &str) -> (ChildGuard, String) {
    spawn_until_line(
        Command::new(FOG).args(args),
        prefix,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn web_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fog-web")
}

/// Serves `fog-web` and passes each POSTed body to the returned receiver.
fn page_server() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, &tx);
            });
        }
    });
    (origin, rx)
}

/// One HTTP/1.1 request: a file of `fog-web` for GET, the body to `tx` for POST.
fn answer(stream: TcpStream, tx: &mpsc::Sender<String>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mut out = stream;
    if method == "POST" {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        return out.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    }
    let path = target
        .split('?')
        .next()
        .unwrap_or("/")
        .trim_start_matches('/');
    let file = match path {
        "echo.html" | "fog-rtc.js" => std::fs::read(web_root().join(path)).ok(),
        _ => None,
    };
    match file {
        Some(body) => {
            let kind = if path.ends_with(".js") {
                "text/javascript"
            } else {
                "text/html"
            };
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            out.write_all(&body)
        }
        None => out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}

/// Headless Chromium on `url`, with a profile of its own; killed when dropped.
fn chromium(url: &str, profile: &Path) -> ChildGuard {
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Host candidates as addresses, not mDNS names the node would have to resolve.
            "--disable-features=WebRtcHideLocalIpsWithMdns",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium runs (scripts/test.sh installs Debian's chromium)");
    ChildGuard(child)
}

/// Opens the echo page for `peer` and waits (at most 60 s) for the outcome it reports.
fn browser_echo(signal: &str, peer: &str, message: &str) -> serde_json::Value {
    let (origin, outcomes) = page_server();
    let profile = tempfile::tempdir().unwrap();
    let url = format!(
        "{origin}/echo.html?signal={signal}&peer={peer}&message={message}&report={origin}/result"
    );
    let _browser = chromium(&url, profile.path());
    let outcome = outcomes
        .recv_timeout(Duration::from_secs(60))
        .expect("the page reported within 60 s");
    serde_json::from_str(&outcome).unwrap_or_else(|_| panic!("not JSON: {outcome}"))
}

#[test]
fn a_browser_echoes_over_a_data_channel_with_a_fog_node() {
    let (_server, signal) = start(
        &["server", "--signal", "127.0.0.1:0", "--stun", "127.0.0.1:0"],
        "fog signal server on",
    );
    let (_serve, peer) = start(
        &["serve", "--signal", &signal, "--name", "browser-echo"],
        "peer id:",
    );

    let by_name = browser_echo(&signal, "browser-echo", "hello-from-chromium");
    assert_eq!(by_name["ok"], true, "{by_name}");
    assert_eq!(by_name["reply"], "hello-from-chromium", "{by_name}");
    assert_eq!(
        by_name["peer"],
        peer.as_str(),
        "the page checked the node's key"
    );

    let unknown = browser_echo(&signal, "nobody-here", "x");
    assert_eq!(unknown["ok"], false, "{unknown}");
    let error = unknown["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("peer_unknown") || error.contains("unknown"),
        "{unknown}"
    );
}
