//! The demo page in a real browser. Headless Chromium opens the page of
//! `stickyd demo` (on loopback), runs it in virtual time while it asks the
//! demo cluster for `/api` once a second, and prints the resulting DOM, where
//! the page keeps its state as JSON (`<pre id="state">`). With the sidecars
//! the page must show at least 10 updates, one pod, one colour and no lost
//! session, the browser's own requests (its favicon, say) included; with
//! `--no-sidecar` it must show lost sessions.
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
            .arg("demo")
            .args([
                "--no-load",
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
    let mut child = Command::new(browser)
        .args([
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
        // No name resolves and no address but the demo's is reachable.
        .arg(format!("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}"))
        .arg(format!("--user-data-dir={}", profile.display()))
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
