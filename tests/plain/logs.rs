//! Logs written to a file (as a container runtime or a log collector takes
//! them) are plain text: no ANSI colour codes, which only a terminal shows.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let path = std::env::temp_dir().join(format!("stickyd-logs-{}.log", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .arg("run")
        .env("STICKYD_LOG", "info")
        .env("STICKYD_LOG_FORMAT", "text")
        .env("STICKYD_POD_NAME", "pod-0")
        .env("STICKYD_LISTEN", "127.0.0.1:0")
        .env("STICKYD_ADMIN_LISTEN", "127.0.0.2:0")
        .env("STICKYD_UPSTREAM", "http://127.0.0.1:1")
        .env("STICKYD_ENDPOINTS", "static:pod-0=127.0.0.1:1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("stickyd runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("starting") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
    assert!(text.contains("starting"), "stickyd logged its start: {text:?}");
    assert!(
        !text.contains('\u{1b}'),
        "no escape codes in a log file: {:?}",
        text.lines().next()
    );
}
