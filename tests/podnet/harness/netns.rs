//! Network namespaces and their cleanup.
//!
//! Every namespace is named `sdt<pid>-…` after the test process that made
//! it, and registered while it exists. It goes away with everything in it
//! when its [`Netns`] is dropped (also when a test fails), when the process
//! gets SIGINT or SIGTERM (a signal-hook thread cleans every registered
//! namespace, then exits), and at the next run's start ([`sweep`]) if the
//! process that made it died without either.
//!
//! The test process itself never leaves its own namespace: sockets that must
//! live in another one are made on a short-lived thread that enters it
//! ([`Netns::bind`], [`Netns::socket`]); a socket keeps the namespace it was
//! created in.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The start of every namespace name the harness makes.
pub const PREFIX: &str = "sdt";

static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn live() -> MutexGuard<'static, BTreeSet<String>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a command, returning its stdout or why it failed.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    if let Err(e) = run(Command::new("ip").args(args)) {
        panic!("{e}");
    }
}

/// The directory whose files `ip netns exec NAME` bind-mounts over /etc.
pub fn etc_dir(name: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(name)
}

/// Runs `f` on a thread that has entered the namespace `name`.
fn inside_named<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = PathBuf::from("/run/netns").join(name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
}

/// A TCP socket of the namespace `name` (which some [`Netns`] owns), not yet
/// connected.
pub fn socket_in(name: &str) -> std::io::Result<tokio::net::TcpSocket> {
    inside_named(name, tokio::net::TcpSocket::new_v4)
}

/// A network namespace of the harness; removed, with every process in it,
/// on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `sdt<pid>-<suffix>` with its loopback up.
    pub fn create(suffix: &str) -> Netns {
        cleanup_on_signals();
        let name = format!("{PREFIX}{}-{suffix}", std::process::id());
        // Registered first: a signal during the rest still cleans it.
        live().insert(name.clone());
        let ns = Netns { name };
        ip(&["netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program ARGS` inside the namespace; it must succeed.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        match run(self.command(program).args(args)) {
            Ok(out) => out,
            Err(e) => panic!("{e}"),
        }
    }

    /// Feeds `input` to `program ARGS` inside the namespace (for
    /// iptables-restore); it must succeed.
    pub fn exec_with_input(&self, program: &str, args: &[&str], input: &str) {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} in {}: {e}", self.name));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write to the child's stdin");
        let out = child.wait_with_output().expect("wait for the child");
        assert!(
            out.status.success(),
            "{program} {args:?} in {}: {}: {}\ninput:\n{input}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
        inside_named(&self.name, f)
    }

    /// A listener bound to `addr` inside the namespace.
    pub fn bind(&self, addr: SocketAddr) -> std::net::TcpListener {
        self.inside(move || std::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", self.name))
    }

    /// A TCP socket of this namespace, not yet connected.
    pub fn socket(&self) -> std::io::Result<tokio::net::TcpSocket> {
        self.inside(tokio::net::TcpSocket::new_v4)
    }

    /// One HTTP/1.1 GET from this namespace on a connection of its own (as a
    /// kubelet probe does), bounded by `limit` in all.
    pub async fn get(&self, addr: SocketAddr, path: &str, limit: Duration) -> Result<Reply, String> {
        self.get_with(addr, path, &[], limit).await
    }

    /// [`Netns::get`] with extra header lines (as a hook's `httpHeaders`).
    pub async fn get_with(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        limit: Duration,
    ) -> Result<Reply, String> {
        self.request("GET", addr, path, headers, "", limit).await
    }

    /// One HTTP/1.1 POST of a JSON body from this namespace (as etcd's JSON
    /// gateway takes), bounded by `limit` in all.
    pub async fn post_json(&self, addr: SocketAddr, path: &str, body: &str, limit: Duration) -> Result<Reply, String> {
        let headers = [("Content-Type", "application/json")];
        self.request("POST", addr, path, &headers, body, limit).await
    }

    async fn request(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        limit: Duration,
    ) -> Result<Reply, String> {
        let socket = self.socket().map_err(|e| format!("socket: {e}"))?;
        let mut extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        if method != "GET" {
            extra.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        let exchange = async {
            let mut stream = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kubelet\r\n{extra}Connection: close\r\n\r\n{body}"
            );
            stream
                .write_all(head.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
            Reply::parse(&raw)
        };
        tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
    }

    /// Kills every process in the namespace, then removes it.
    fn remove(name: &str) {
        for _ in 0..3 {
            let pids = run(Command::new("ip").args(["netns", "pids", name])).unwrap_or_default();
            let pids: Vec<i32> = pids.split_whitespace().filter_map(|p| p.parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = run(Command::new("ip").args(["netns", "del", name]));
        let _ = std::fs::remove_dir_all(etc_dir(name));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Netns::remove(&self.name);
        live().remove(&self.name);
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    fn parse(raw: &[u8]) -> Result<Reply, String> {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no complete HTTP head in {} bytes", raw.len()))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        let chunked = head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
        let body = if chunked { dechunk(body) } else { body.to_string() };
        Ok(Reply { status, body })
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Removes the namespaces of earlier runs whose process no longer exists
/// (killed before it could clean up). Returns their names.
pub fn sweep() -> Vec<String> {
    let list = run(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    let mut removed = Vec::new();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        Netns::remove(name);
        removed.push(name.to_string());
    }
    removed
}

/// On SIGINT or SIGTERM: remove every registered namespace (killing what
/// runs in it), then exit.
fn cleanup_on_signals() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).expect("signal handlers");
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let names: Vec<String> = live().iter().cloned().collect();
                eprintln!("podnet: signal {sig}: removing {} network namespaces", names.len());
                for name in names {
                    Netns::remove(&name);
                }
                std::process::exit(128 + sig);
            }
        });
    });
}
