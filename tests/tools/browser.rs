//! The demo page in a real browser. Headless Chromium opens the page of
//! `stickyd demo` (on loopback), runs it in virtual time while it asks the
//! demo cluster for `/api` once a second, and prints the resulting DOM, where
//! the page keeps its state as JSON (`<pre id="state">`). With the sidecars
//! the page must show at least 10 updates, one pod, one colour and no lost
//! session, the browser's own requests (its favicon, say) included; with
//! `--no-sidecar` it must show lost sessions.
//!
//! A third test drives the page's cluster view over the DevTools protocol,
//! clicking its Drain, Kill and Add buttons under the demo's load, and
//! checks what the page shows against the sidecars' own `/metrics`.
//!
//! Chromium (`chromium` from Debian) is an external tool: without it the
//! tests print a SKIP line and pass, unless `STICKYDTEST_REQUIRE_TOOLS=1` (as in
//! CI), where a missing browser fails them.

use crate::common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn chromium(test: &str) -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        if std::env::var("STICKYDTEST_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{test}: chromium is not on PATH and STICKYDTEST_REQUIRE_TOOLS=1 (apt-get install chromium)");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {test}: chromium is not on PATH (apt-get install chromium; STICKYDTEST_REQUIRE_TOOLS=1 makes this a failure)"
        );
    }
    found
}

/// A running `stickyd demo`, killed when dropped.
struct Demo {
    child: Child,
    lb: SocketAddr,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        Demo::start_with(&["--no-load"], args)
    }

    fn start_with(load: &[&str], args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
            .arg("demo")
            .args(load)
            .args([
                "--duration",
                "300",
                "--port",
                "0",
                "--app-port",
                "0",
                "--admin-port",
                "0",
            ])
            .args(args)
            .env_remove("STICKYD_POD_NAME")
            .env("STICKYD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("stickyd demo starts");
        let stdout = child.stdout.take().unwrap();
        let rx = common::line_channel(stdout);
        let deadline = Instant::now() + Duration::from_secs(20);
        let lb = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("the demo prints its load balancer");
            if let Some(rest) = line.split("load balancer http://").nth(1) {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining the live lines.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Demo { child, lb }
    }
}

/// Headless Chromium with the fresh profile `profile`, able to reach only
/// `host` (no name resolves).
fn headless(browser: &PathBuf, host: std::net::IpAddr, profile: &std::path::Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-first-run",
        "--no-default-browser-check",
        "--no-proxy-server",
        "--mute-audio",
    ])
    .arg(format!("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}"))
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Opens `url` in headless Chromium with a fresh profile, lets the page run
/// for `virtual_ms` of virtual time, and returns the page's state.
fn page_state(browser: &PathBuf, lb: SocketAddr, virtual_ms: u64) -> Value {
    use std::os::unix::process::CommandExt;
    let host = lb.ip();
    let url = format!("http://{lb}/");
    let profile = std::env::temp_dir().join(format!(
        "stickyd-browser-{}-{}",
        std::process::id(),
        url.replace([':', '/', '.'], "_")
    ));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).unwrap();
    let mut child = headless(browser, host, &profile)
        .arg(format!("--virtual-time-budget={virtual_ms}"))
        .arg("--dump-dom")
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group: the renderer and the other helpers it starts
        // are stopped with it.
        .process_group(0)
        .spawn()
        .expect("chromium starts");
    let pgid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The group by the system call itself: procps-ng 4.0.2's kill(1) reads
    // `-KILL -12345` as kill(-1, SIGKILL), every process there is.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    let dom = reader.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.is_some(), "chromium did not finish within 120 s");
    let state = dom
        .split("<pre id=\"state\" hidden=\"\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .unwrap_or_else(|| panic!("no state in the page's DOM ({status:?}):\n{dom}"));
    let state = state.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    serde_json::from_str(&state).unwrap_or_else(|e| panic!("the page's state is not JSON ({e}): {state}"))
}

fn count(state: &Value, key: &str) -> u64 {
    state[key].as_u64().unwrap_or_else(|| panic!("{key} in {state}"))
}

#[test]
fn with_sidecars_the_page_stays_on_one_pod_and_loses_no_session() {
    let Some(browser) = chromium("with_sidecars_the_page_stays_on_one_pod_and_loses_no_session") else {
        return;
    };
    let demo = Demo::start(&["--listen", "127.0.45.1:0", "--base-ip", "127.0.45.10"]);
    let state = page_state(&browser, demo.lb, 15_000);
    assert!(count(&state, "updates") >= 10, "at least 10 updates: {state}");
    assert_eq!(count(&state, "failed"), 0, "{state}");
    assert_eq!(count(&state, "lost"), 0, "no session lost: {state}");
    assert_eq!(count(&state, "moves"), 0, "{state}");
    assert_eq!(state["pods"].as_array().map(Vec::len), Some(1), "one pod: {state}");
    assert_eq!(
        state["colours"].as_array().map(Vec::len),
        Some(1),
        "one colour: {state}"
    );
}

#[test]
fn without_sidecars_the_page_shows_lost_sessions() {
    let Some(browser) = chromium("without_sidecars_the_page_shows_lost_sessions") else {
        return;
    };
    let demo = Demo::start(&["--no-sidecar", "--listen", "127.0.46.1:0", "--base-ip", "127.0.46.10"]);
    let state = page_state(&browser, demo.lb, 15_000);
    assert!(count(&state, "updates") >= 10, "at least 10 updates: {state}");
    assert!(count(&state, "lost") >= 1, "sessions are lost without stickyd: {state}");
    assert!(state["pods"].as_array().map_or(0, Vec::len) > 1, "{state}");
}

/// Headless Chromium driven over the DevTools protocol: the page's own
/// buttons clicked as a user clicks them, its state read back.
struct Browser {
    child: Child,
    profile: PathBuf,
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    async fn open(browser: &PathBuf, lb: SocketAddr) -> Browser {
        use std::os::unix::process::CommandExt;
        let url = format!("http://{lb}/");
        let profile = std::env::temp_dir().join(format!("stickyd-cdp-{}-{}", std::process::id(), lb.port()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = headless(browser, lb.ip(), &profile)
            .args(["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"])
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        let rx = common::line_channel(child.stderr.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("chromium prints its DevTools address");
            if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                break rest.split(['/', ':']).nth(1).unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || while rx.recv().is_ok() {});
        // The page's own target.
        let ws_url = common::eventually(Duration::from_secs(20), "the page's DevTools target", || async {
            let list = common::get(&format!("http://127.0.0.1:{port}/json/list"), &[]).await;
            let found = list.ok().and_then(|r| {
                let v: Value = serde_json::from_str(&r.body).ok()?;
                v.as_array()?
                    .iter()
                    .find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(&url)))
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            (found.is_some(), found)
        })
        .await
        .unwrap();
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("the DevTools socket");
        Browser {
            child,
            profile,
            ws,
            id: 0,
        }
    }

    /// Evaluates `expr` in the page; its value.
    async fn eval(&mut self, expr: &str) -> Value {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        self.id += 1;
        let id = self.id;
        let msg = serde_json::json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": expr, "returnByValue": true}});
        self.ws.send(Message::Text(msg.to_string().into())).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("an answer from the page")
                .expect("the DevTools socket open")
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v["result"]["exceptionDetails"].is_null(), "{expr}: {v}");
                    return v["result"]["result"]["value"].clone();
                }
            }
        }
    }

    /// The cluster view's state (`<pre id="cluster">`).
    async fn cluster(&mut self) -> Value {
        let text = self
            .eval("(document.getElementById('cluster') || {}).textContent || 'null'")
            .await;
        serde_json::from_str(text.as_str().unwrap_or("null")).unwrap_or(Value::Null)
    }

    /// Clicks the button `id`, as a user does.
    async fn click(&mut self, id: &str) {
        let done = self
            .eval(&format!(
                "(function(){{var b=document.getElementById('{id}'); if(!b) return false; b.click(); return true;}})()"
            ))
            .await;
        assert_eq!(done, Value::Bool(true), "no button #{id} on the page");
    }
}

/// A pod's entry in the cluster view.
fn row<'a>(state: &'a Value, pod: &str) -> Option<&'a Value> {
    state["pods"].as_array()?.iter().find(|p| p["name"] == pod)
}

/// `stickyd_sessions_active`, and the requests of new sessions this pod
/// served, from its sidecar's own /metrics.
async fn sidecar_counts(admin: &str, pod: &str) -> Option<(f64, f64)> {
    let r = common::get(&format!("http://{admin}/metrics"), &[]).await.ok()?;
    let active = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("stickyd_sessions_active ")?.trim().parse::<f64>().ok())?;
    let new = r
        .body
        .lines()
        .filter(|l| {
            l.starts_with("stickyd_requests_total{")
                && l.contains("session=\"new\"")
                && l.contains(&format!("target_pod=\"{pod}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some((active, new))
}

/// The cluster view driven by its buttons, under the demo's load: a drained
/// pod takes no new session, empties out (0 active sessions on the page and
/// in its sidecar's /metrics) and goes; a killed pod goes at once and its
/// sessions are repinned; an added pod takes new sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_drains_kills_and_adds_pods() {
    let test = "the_cluster_view_drains_kills_and_adds_pods";
    let Some(path) = chromium(test) else { return };
    let demo = Demo::start_with(
        &["--sessions", "12", "--requests", "30", "--think-ms", "100"],
        &["--listen", "127.0.47.1:0", "--base-ip", "127.0.47.10"],
    );
    let mut b = Browser::open(&path, demo.lb).await;
    let pods_json = common::get(&format!("http://{}/_demo/pods", demo.lb), &[])
        .await
        .unwrap();
    let pods_json: Value = serde_json::from_str(&pods_json.body).unwrap();
    let admin = |pod: &str| -> String {
        pods_json["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .and_then(|p| p["admin"].as_str())
            .unwrap()
            .to_string()
    };
    let limit = Duration::from_secs(60);
    // Premise: the page shows three serving pods, each holding sessions.
    let deadline = Instant::now() + limit;
    loop {
        let s = b.cluster().await;
        let busy = ["pod-1", "pod-2", "pod-3"]
            .iter()
            .all(|p| row(&s, p).is_some_and(|r| r["state"] == "serving" && r["active"].as_f64() > Some(0.0)));
        if busy {
            break;
        }
        assert!(Instant::now() < deadline, "the page never showed 3 busy pods: {s}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The page's own session is pinned too, and ticks every second: a drain
    // of its pod serves it to the drain's max. So the drained and the killed
    // pods are the two the page's session is not on.
    let mine = b.eval("document.getElementById('pod').textContent").await;
    let mine = mine.as_str().unwrap_or_default().to_string();
    let others: Vec<&str> = ["pod-1", "pod-2", "pod-3"].into_iter().filter(|p| *p != mine).collect();
    assert_eq!(
        others.len(),
        2,
        "the page's session is on {mine:?}, not on one of the 3 pods"
    );
    let (drained, killed) = (others[0], others[1]);
    let left = mine.as_str();

    // Drain one.
    b.click(&format!("drain-{drained}")).await;
    let mut saw_empty = false;
    // The drained pod's sidecar's count of new sessions it served: the first and the
    // last read while the page shows it draining.
    let mut new_while_draining: Option<(f64, f64)> = None;
    // What the page showed of the drained pod, for the failure message.
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        let s = b.cluster().await;
        let r = row(&s, drained).cloned().unwrap_or(Value::Null);
        let shown = format!("{} {}", r["state"], r["active"]);
        if seen.last() != Some(&shown) {
            seen.push(shown);
        }
        if r["state"] == "draining" {
            if let Some((active, new)) = sidecar_counts(&admin(drained), drained).await {
                new_while_draining = Some((new_while_draining.map_or(new, |(first, _)| first), new));
                if r["active"] == 0.0 {
                    // What the page shows, its sidecar says too.
                    assert_eq!(active, 0.0, "the page shows {drained} empty, its sidecar says {active}");
                    saw_empty = true;
                }
            }
        }
        if r["state"] == "gone" {
            break;
        }
        assert!(Instant::now() < deadline, "{drained} never went: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        saw_empty,
        "the page never showed the draining {drained} empty: {seen:?}"
    );
    let (first, last) =
        new_while_draining.unwrap_or_else(|| panic!("{drained}'s sidecar never answered while draining"));
    assert_eq!(first, last, "{drained} served new sessions while draining");
    let actions = b.cluster().await["actions"].clone();
    assert_eq!(actions[0]["what"], "drain", "{actions}");
    assert_eq!(actions[0]["status"], 200, "{actions}");

    // Kill another: it goes at once.
    let repinned_before = repinned(&admin(left)).await;
    b.click(&format!("kill-{killed}")).await;
    let deadline = Instant::now() + limit;
    loop {
        let s = b.cluster().await;
        if row(&s, killed).is_some_and(|r| r["state"] == "gone") {
            break;
        }
        assert!(Instant::now() < deadline, "{killed} never went: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its sessions still running are repinned to the pod left (that pod's
    // own counter says so).
    common::eventually(limit, "the pod left repins the killed pod's sessions", || async {
        let now = repinned(&admin(left)).await;
        (now > repinned_before, now)
    })
    .await;

    // Add a pod: it shows up serving, and takes new sessions.
    b.click("add").await;
    let deadline = Instant::now() + limit;
    loop {
        let s = b.cluster().await;
        if row(&s, "pod-4").is_some_and(|r| r["state"] == "serving" && r["active"].as_f64() > Some(0.0)) {
            break;
        }
        assert!(Instant::now() < deadline, "pod-4 never took sessions: {s}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The page's own session stayed on its pod through all of it.
    let own = b.eval("document.getElementById('state').textContent").await;
    let own: Value = serde_json::from_str(own.as_str().unwrap_or("null")).unwrap_or(Value::Null);
    assert_eq!(own["moves"], 0, "the page's own session moved off {left}: {own}");
    let s = b.cluster().await;
    println!("the cluster view at the end: {s}");
}

/// `stickyd_requests_total{session="repinned"}` of one sidecar.
async fn repinned(admin: &str) -> f64 {
    let Ok(r) = common::get(&format!("http://{admin}/metrics"), &[]).await else {
        return 0.0;
    };
    r.body
        .lines()
        .filter(|l| l.starts_with("stickyd_requests_total{") && l.contains("session=\"repinned\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
