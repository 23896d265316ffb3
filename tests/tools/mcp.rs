//! MCP (Model Context Protocol) sessions from real clients, through real
//! sidecars: the official SDKs' clients, TypeScript (`client.mjs`, Node's
//! fetch, which keeps no cookies) and Python (`client.py`), against three
//! replicas of a stateful server built on the official Python SDK
//! (`server.py`), which keeps each session in its memory only and answers
//! `404 Session not found` for a session it does not hold. Every request
//! goes to a random backend ([`RandomLb`] picks per request, so a client's
//! kept-alive connection spreads its requests as kube-proxy spreads
//! connections). Each sidecar runs `STICKYD_AFFINITY=app-header` with
//! `STICKYD_APP_HEADER=Mcp-Session-Id`.
//!
//! What it shows: through the sidecars every call of every session reaches
//! the replica that holds it (its counter goes 1..M there) and the app sees
//! its own session id, never the prefix; straight to the replicas, most
//! sessions are lost; and a replica drained while sessions and their SSE
//! streams are open serves them to their end, hands new sessions to its
//! peers, and its drain answers `ended` once they have ended.
//!
//! The programs are in tests/tools/mcp/; Python's `mcp` 2.3.0 and the npm
//! packages (`npm ci` there) are external tools: without them the tests
//! print SKIP and pass, unless `STICKYDTEST_REQUIRE_TOOLS=1` (as in CI).
//! Addresses: 127.0.210.x to 127.0.212.x.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::affinity::Sidecars;
use crate::common::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/mcp");
const HEADER: &str = "Mcp-Session-Id";
const DRAIN_TOKEN: &str = "9c1e5a7b3d2f4e6a8b0c1d3e5f7a9b2c4d6e8f0a1b3c5d7e9f2a4b6c8d0e1f3a";
/// A bound on each client run and each event awaited: a hang guard.
const BOUND: Duration = Duration::from_secs(120);

/// Python's `mcp` 2.x (its server and client), Node and the pinned npm
/// packages: true when all are there; otherwise a SKIP line (false), or a
/// panic under STICKYDTEST_REQUIRE_TOOLS=1.
fn tools(test: &str) -> bool {
    let python = Command::new("python3")
        .args(["-c", "import mcp.server.mcpserver, mcp.client.streamable_http"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let sdk = Path::new(DIR)
        .join("node_modules/@modelcontextprotocol/sdk/package.json")
        .is_file();
    let missing = [
        (!python).then_some("python3 cannot import mcp 2.x (python3 -m pip install mcp==2.3.0)"),
        (!node).then_some("node is not on PATH (apt-get install nodejs npm)"),
        (!sdk).then_some("the npm packages are not installed (npm ci in tests/tools/mcp)"),
    ];
    let missing: Vec<&str> = missing.into_iter().flatten().collect();
    if missing.is_empty() {
        return true;
    }
    crate::missing_tool(test, &missing.join("; "));
    false
}

/// A child process that prints JSON lines, killed when dropped: its lines
/// as they come, its stderr in a file (shown when a wait fails).
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: PathBuf,
    /// Every line read so far.
    seen: Vec<Value>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        let stderr = temp_path(&format!("{}.err", name.replace(' ', "-")));
        let mut child = cmd
            .current_dir(DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {cmd:?} could not start: {e}"));
        let lines = line_channel(child.stdout.take().unwrap());
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `done`, and returns it; panics at
    /// the end of the output or after [`BOUND`]. (The lines come from a
    /// thread: a wait here polls, never blocks a runtime thread, which the
    /// load balancer of the same runtime needs.)
    async fn until(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        use std::sync::mpsc::TryRecvError;
        let deadline = Instant::now() + BOUND;
        loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    let v: Value =
                        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.name));
                    self.seen.push(v.clone());
                    if done(&v) {
                        return v;
                    }
                }
                Err(TryRecvError::Disconnected) => self.fail(what, "its output ended"),
                Err(TryRecvError::Empty) if Instant::now() > deadline => {
                    self.fail(what, &format!("not within {BOUND:?}"))
                }
                Err(TryRecvError::Empty) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// The lines available now, without waiting, added to [`Proc::seen`].
    fn catch_up(&mut self) -> &[Value] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(serde_json::from_str(&line).unwrap());
        }
        &self.seen
    }

    fn fail(&self, what: &str, how: &str) -> ! {
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "{}: {what}: {how}; its last lines: {:?}; its stderr ends:\n{}",
            self.name,
            self.seen.iter().rev().take(5).collect::<Vec<_>>(),
            tail.join("\n")
        );
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin.as_mut().unwrap(), "{line}").unwrap();
    }
}

/// One replica of the MCP server (`server.py`) on `ip`, port 0.
struct Replica {
    name: String,
    addr: SocketAddr,
    proc: Proc,
}

impl Replica {
    async fn start(name: &str, ip: &str) -> Replica {
        let mut cmd = Command::new("python3");
        cmd.args(["server.py", name, ip]);
        let mut proc = Proc::spawn(&format!("replica {name}"), cmd);
        let ready = proc.until("ready", |v| v["event"] == "ready").await;
        let addr = ready["addr"].as_str().unwrap().parse().unwrap();
        Replica {
            name: name.to_string(),
            addr,
            proc,
        }
    }

    /// The session ids of the requests of `method` this replica received.
    fn sessions_of(&mut self, method: &str) -> HashSet<String> {
        self.requests(method).into_iter().collect()
    }

    /// The session id of each request of `method` this replica received,
    /// in order.
    fn requests(&mut self, method: &str) -> Vec<String> {
        self.proc
            .catch_up()
            .iter()
            .filter(|v| v["event"] == "request" && v["method"] == method)
            .filter_map(|v| v["session"].as_str().map(str::to_string))
            .collect()
    }
}

/// Three replicas, `r0`.. on 127.0.`net`.101...
async fn replicas(net: u8) -> Vec<Replica> {
    let mut all = Vec::new();
    for i in 0..3 {
        all.push(Replica::start(&format!("r{i}"), &format!("127.0.{net}.{}", 101 + i)).await);
    }
    all
}

/// The sidecars in front of `replicas`: app-header mode on Mcp-Session-Id,
/// signed tokens, the drain token.
async fn sidecars(net: u8, replicas: &[Replica], affinity: &str) -> Sidecars {
    let apps: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let mut env = vec![
        ("STICKYD_AFFINITY", affinity.to_string()),
        ("STICKYD_DRAIN_TOKEN", DRAIN_TOKEN.to_string()),
    ];
    if affinity == "app-header" {
        env.push(("STICKYD_APP_HEADER", HEADER.to_string()));
    }
    Sidecars::start(net, &apps, &env).await
}

#[derive(Clone, Copy, Debug)]
enum Sdk {
    TypeScript,
    Python,
}

impl Sdk {
    /// A client run against `lb`: `sessions` sessions of `calls` calls,
    /// paused after `pause` rounds if given.
    fn start(self, lb: SocketAddr, sessions: usize, calls: usize, pause: Option<usize>) -> Proc {
        let mut cmd = match self {
            Sdk::TypeScript => {
                let mut c = Command::new("node");
                c.arg("client.mjs");
                c
            }
            Sdk::Python => {
                let mut c = Command::new("python3");
                c.arg("client.py");
                c
            }
        };
        cmd.arg(format!("http://{lb}/mcp"))
            .arg(sessions.to_string())
            .arg(calls.to_string());
        if let Some(k) = pause {
            cmd.arg(k.to_string());
        }
        Proc::spawn(&format!("{self:?} client"), cmd)
    }

    /// A whole run: its lines, to the end.
    async fn run(self, lb: SocketAddr, sessions: usize, calls: usize) -> Vec<Value> {
        let mut c = self.start(lb, sessions, calls, None);
        c.until("done", |v| v["event"] == "done").await;
        std::mem::take(&mut c.seen)
    }
}

/// What became of each session of a client run.
#[derive(Debug, Default)]
struct Outcome {
    /// Opened, every call answered by one replica counting 1..M, closed.
    complete: usize,
    failed_steps: usize,
    /// Each complete session's replica, by the session's index.
    replica: BTreeMap<u64, String>,
    /// Each opened session's id as the client got it, by index.
    ids: BTreeMap<u64, String>,
    /// What failed steps said.
    errors: Vec<String>,
}

fn outcome(lines: &[Value], sessions: usize, calls: usize) -> Outcome {
    let mut o = Outcome::default();
    for i in 0..sessions as u64 {
        let of = |event: &str| -> Vec<&Value> {
            lines
                .iter()
                .filter(|v| v["event"] == event && v["session"] == i)
                .collect()
        };
        let (open, steps, close) = (of("open"), of("call"), of("close"));
        for v in open.iter().chain(&steps).chain(&close) {
            if v["ok"] != true {
                o.failed_steps += 1;
                o.errors.push(v["error"].as_str().unwrap_or("?").to_string());
            }
        }
        if let Some(id) = open.first().and_then(|v| v["id"].as_str()) {
            o.ids.insert(i, id.to_string());
        }
        let ok = |v: &[&Value]| !v.is_empty() && v.iter().all(|v| v["ok"] == true);
        let replicas: HashSet<&str> = steps.iter().filter_map(|v| v["replica"].as_str()).collect();
        let counters: Vec<u64> = steps.iter().filter_map(|v| v["counter"].as_u64()).collect();
        let counted = counters == (1..=calls as u64).collect::<Vec<_>>();
        if ok(&open) && ok(&steps) && ok(&close) && counted && replicas.len() == 1 {
            o.complete += 1;
            o.replica.insert(i, replicas.into_iter().next().unwrap().to_string());
        }
    }
    o
}

/// A run through the sidecars: every session complete, its id `TOKEN~V`
/// where V is the id the app saw (the tool answers it), never the prefix.
fn assert_all_complete(sdk: Sdk, lines: &[Value], sessions: usize, calls: usize) -> Outcome {
    let o = outcome(lines, sessions, calls);
    assert_eq!(
        (o.complete, o.failed_steps),
        (sessions, 0),
        "{sdk:?}: every session complete, no step failed: {o:?}"
    );
    for v in lines.iter().filter(|v| v["event"] == "call") {
        let id = &o.ids[&v["session"].as_u64().unwrap()];
        let (token, own) = id
            .split_once('~')
            .unwrap_or_else(|| panic!("{sdk:?}: no token in {id}"));
        assert_eq!(token.split('.').count(), 5, "{sdk:?}: a signed token: {id}");
        assert_eq!(
            v["app_session"].as_str(),
            Some(own),
            "{sdk:?}: the app saw its own id: {v}"
        );
    }
    o
}

fn assert_no_prefix_reached(replicas: &mut [Replica]) {
    for r in replicas {
        for m in ["POST", "GET", "DELETE"] {
            let seen = r.sessions_of(m);
            assert!(seen.iter().all(|s| !s.contains('~')), "{}: {m} {seen:?}", r.name);
        }
    }
}

/// 10 sessions of 10 calls from each SDK, through the sidecars: all of them
/// complete, each on one replica, spread over the replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sessions_of_both_sdks_keep_their_replica_through_stickyd() {
    if !tools("mcp_sessions_of_both_sdks_keep_their_replica_through_stickyd") {
        return;
    }
    let mut replicas = replicas(210).await;
    let s = sidecars(210, &replicas, "app-header").await;
    let lb = RandomLb::start_on("127.0.210.200", s.list.iter().map(|s| s.listen).collect()).await;
    let started = Instant::now();
    for sdk in [Sdk::TypeScript, Sdk::Python] {
        let lines = sdk.run(lb.addr, 10, 10).await;
        let o = assert_all_complete(sdk, &lines, 10, 10);
        let spread: HashSet<&String> = o.replica.values().collect();
        assert!(spread.len() >= 2, "{sdk:?}: new sessions spread: {:?}", o.replica);
        eprintln!(
            "{sdk:?} through stickyd: {} of 10 sessions complete, {} steps failed",
            o.complete, o.failed_steps
        );
    }
    eprintln!("both clients: {:?}", started.elapsed());
    assert_no_prefix_reached(&mut replicas);
    // Most requests came to a sidecar that does not hold the session.
    let mut forwarded = 0.0;
    for sc in &s.list {
        let m = sc.metrics().await;
        forwarded += m
            .lines()
            .filter(|l| l.starts_with("stickyd_requests_total{decision=\"forwarded\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(forwarded >= 100.0, "forwarded {forwarded}");
}

/// The same clients straight to the replicas: a session's requests land on
/// replicas that do not hold it, which answer 404, and most sessions are
/// lost (the "before").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sessions_straight_to_the_replicas_are_lost() {
    if !tools("mcp_sessions_straight_to_the_replicas_are_lost") {
        return;
    }
    let replicas = replicas(211).await;
    let lb = RandomLb::start_on("127.0.211.200", replicas.iter().map(|r| r.addr).collect()).await;
    for sdk in [Sdk::TypeScript, Sdk::Python] {
        let lines = sdk.run(lb.addr, 10, 10).await;
        let o = outcome(&lines, 10, 10);
        eprintln!(
            "{sdk:?} without stickyd: {} of 10 sessions complete, {} steps failed",
            o.complete, o.failed_steps
        );
        assert!(o.complete <= 5, "{sdk:?}: most sessions lost: {o:?}");
        assert!(
            o.errors
                .iter()
                .any(|e| e.contains("404") || e.contains("Session not found")),
            "{sdk:?}: lost to replicas that do not hold them: {:?}",
            o.errors
        );
    }
}

/// The drain's answer, on a connection of its own (it comes when the drain
/// ends): status and body.
async fn drain(admin: SocketAddr, query: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "GET /drain?{query} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {DRAIN_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut out))
        .await
        .expect("the drain answers in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let v = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

/// A scale-down while MCP sessions and their SSE streams are open: the
/// replica with the most sessions is drained (idle 60 s, max 90 s); its
/// sessions keep reaching it and run to their end (the DELETE), new
/// sessions go to the other replicas, and the drain answers `ended` as soon
/// as its sessions have ended, long before `idle` would have ended it. Then
/// it leaves the peers and stops, and a fresh session works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_replica_serves_its_mcp_sessions_to_their_end() {
    if !tools("a_drained_replica_serves_its_mcp_sessions_to_their_end") {
        return;
    }
    let (sessions, calls, pause) = (6, 8, 3);
    let mut replicas = replicas(212).await;
    let mut s = sidecars(212, &replicas, "app-header").await;
    let lb = RandomLb::start_on("127.0.212.200", s.list.iter().map(|s| s.listen).collect()).await;
    // Sessions open, some calls made, then the client waits.
    let mut a = Sdk::TypeScript.start(lb.addr, sessions, calls, Some(pause));
    a.until("paused", |v| v["event"] == "paused").await;
    let early = outcome(&a.seen, sessions, pause);
    assert_eq!(early.failed_steps, 0, "{early:?}");
    // The replica with the most sessions is drained.
    let mut by_replica: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for v in a.seen.iter().filter(|v| v["event"] == "call" && v["call"] == 1) {
        let at = v["replica"].as_str().unwrap().to_string();
        by_replica.entry(at).or_default().push(v["session"].as_u64().unwrap());
    }
    let (name, pinned) = by_replica.into_iter().max_by_key(|(_, v)| v.len()).unwrap();
    let d = replicas.iter().position(|r| r.name == name).unwrap();
    let own: HashSet<String> = pinned
        .iter()
        .map(|i| early.ids[i].split_once('~').unwrap().1.to_string())
        .collect();
    // Premises: their SSE streams are open on it (the TypeScript client
    // opens the GET stream once initialized), and its sidecar counts them.
    let replica = &mut replicas[d];
    eventually(Duration::from_secs(10), "the GET streams of its sessions", || {
        let open = replica.sessions_of("GET");
        std::future::ready((own.is_subset(&open), (own.clone(), open)))
    })
    .await;
    let sidecar = &s.list[d];
    eventually(Duration::from_secs(10), "its sessions counted", || async {
        let active = sample(&sidecar.metrics().await, "stickyd_sessions_active");
        (active == Some(own.len() as f64), active)
    })
    .await;
    let admin = sidecar.admin;
    let drained = tokio::spawn(async move { drain(admin, "idle=60s&max=90s").await });
    eventually(Duration::from_secs(10), "draining", || async {
        let m = sample(&sidecar.metrics().await, "stickyd_draining");
        (m == Some(1.0), m)
    })
    .await;
    // New sessions while it drains: none on it.
    let b = Sdk::TypeScript.run(lb.addr, 6, 3).await;
    let new = assert_all_complete(Sdk::TypeScript, &b, 6, 3);
    assert!(
        new.replica.values().all(|r| *r != name),
        "no new session on {name}: {:?}",
        new.replica
    );
    assert!(!drained.is_finished(), "the drain waits for {name}'s open sessions");
    // The first sessions go on, and end.
    let went_on = Instant::now();
    a.say("go");
    a.until("done", |v| v["event"] == "done").await;
    let closed = went_on.elapsed();
    let o = assert_all_complete(Sdk::TypeScript, &a.seen, sessions, calls);
    for i in &pinned {
        assert_eq!(o.replica[i], name, "session {i} stayed on the drained replica");
    }
    let transport_errors: Vec<&Value> = a.seen.iter().filter(|v| v["event"] == "transport_error").collect();
    assert!(transport_errors.is_empty(), "{transport_errors:?}");
    // Their SSE streams stayed open through the drain: the client reopens
    // a stream that breaks, and the replica saw one GET a session.
    let gets: Vec<String> = replicas[d]
        .requests("GET")
        .into_iter()
        .filter(|g| own.contains(g))
        .collect();
    assert_eq!(gets.len(), own.len(), "{gets:?}");
    let (status, outcome) = tokio::time::timeout(BOUND, drained).await.unwrap().unwrap();
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["reason"], "ended", "{outcome}");
    let waited = outcome["waited_seconds"].as_f64().unwrap();
    assert!(waited < 30.0, "ended long before idle (60 s) would have: {outcome}");
    eprintln!("drain: {outcome}; the sessions closed {closed:?} after the first ones went on");
    // Scale-down: it leaves the peers, stops, and a fresh session works.
    let keep: Vec<usize> = (0..3).filter(|&i| i != d).collect();
    s.only(&keep).await;
    lb.set_backends(keep.iter().map(|&i| s.list[i].listen).collect());
    drop(s.list.remove(d));
    drop(replicas.remove(d));
    let fresh = Sdk::Python.run(lb.addr, 3, 3).await;
    let c = assert_all_complete(Sdk::Python, &fresh, 3, 3);
    assert!(c.replica.values().all(|r| *r != name), "{:?}", c.replica);
    assert_no_prefix_reached(&mut replicas);
}
