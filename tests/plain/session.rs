//! Session security on real processes: no Set-Cookie on every request, key
//! rotation through STICKYD_COOKIE_SECRET_FILE without a restart, and the
//! cookie attribute rules (`__Host-`, Partitioned). (The idle timeout, the
//! refresh past half its window and the absolute lifetime are durations:
//! `timing.rs`, on tokio's paused clock and a token clock that follows it.)
//!
//! Addresses: 127.0.140.x.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::*;
use stickyd::affinity::{Codec, CookieState, Keys, Lifetimes};

const K1: &str = "session-test-key-one-0123456789ab";
const K2: &str = "session-test-key-two-0123456789ab";

async fn with_cookie(s: &Stickyd, value: &str) -> Resp {
    get(
        &format!("http://{}/", s.listen),
        &[("cookie", &format!("stickyd={value}"))],
    )
    .await
    .unwrap()
}

/// With a long idle window, a session's requests carry no Set-Cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_set_cookie_on_every_request() {
    let (_app, s) = one_pod(
        "127.0.140.11",
        &[
            ("STICKYD_COOKIE_SECRET", K1.into()),
            ("STICKYD_SESSION_IDLE_TIMEOUT", "1h".into()),
            ("STICKYD_SESSION_MAX_LIFETIME", "1d".into()),
        ],
    )
    .await;
    let mut session = Session::default();
    let url = format!("http://{}/", s.listen);
    let first = session.get(&url).await.unwrap();
    assert!(first.sticky_cookie().is_some());
    for _ in 0..30 {
        let r = session.get(&url).await.unwrap();
        assert_eq!(r.field("session"), "pinned");
        assert!(r.sticky_cookie().is_none(), "{r:?}");
        assert!(r.headers.get("cache-control").is_none(), "{r:?}");
    }
}

/// A Secret volume as kubelet writes it: `keys` → `..data/keys`, with
/// `..data` a symlink swapped atomically to a new timestamped directory.
struct SecretVolume {
    dir: PathBuf,
    n: usize,
}

impl SecretVolume {
    fn new(text: &str) -> SecretVolume {
        let dir = temp_path("secret");
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = SecretVolume { dir, n: 0 };
        v.write(text);
        std::os::unix::fs::symlink("..data/keys", v.dir.join("keys")).unwrap();
        v
    }

    fn path(&self) -> PathBuf {
        self.dir.join("keys")
    }

    fn write(&mut self, text: &str) {
        self.n += 1;
        let ts = format!("..ts{}", self.n);
        std::fs::create_dir_all(self.dir.join(&ts)).unwrap();
        std::fs::write(self.dir.join(&ts).join("keys"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

fn codec(keys: &str) -> Codec {
    Codec::new(Keys::parse(keys).unwrap(), Lifetimes::default())
}

/// Polls until a fresh session's cookie verifies with `signer` alone.
async fn wait_signed_by(s: &Stickyd, signer: &Codec) {
    eventually(Duration::from_secs(8), "keys reloaded", || async {
        let r = get(&format!("http://{}/", s.listen), &[]).await.unwrap();
        let c = r.sticky_cookie().unwrap();
        let ok = matches!(signer.decode(&c, stickyd::affinity::unix_now()), CookieState::Valid(_));
        (ok, if ok { String::new() } else { s.log_text() })
    })
    .await;
}

/// Rotation through STICKYD_COOKIE_SECRET_FILE, without a restart: the new
/// key first and the old one second keeps old cookies valid while new ones
/// are signed with the new key; removing the old key makes old cookies new
/// sessions; a broken file keeps the previous keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_file_rotation_without_a_restart() {
    let mut secret = SecretVolume::new(K1);
    let (_app, s) = one_pod(
        "127.0.140.31",
        &[("STICKYD_COOKIE_SECRET_FILE", secret.path().display().to_string())],
    )
    .await;
    let pid = s.child.id();
    let old = get(&format!("http://{}/", s.listen), &[])
        .await
        .unwrap()
        .sticky_cookie()
        .unwrap();
    assert!(matches!(
        codec(K1).decode(&old, stickyd::affinity::unix_now()),
        CookieState::Valid(_)
    ));

    // Step 1: the new key first, the old one second.
    secret.write(&format!("{K2},{K1}"));
    wait_signed_by(&s, &codec(K2)).await;
    let r = with_cookie(&s, &old).await;
    assert_eq!(r.field("session"), "pinned", "the old key still verifies: {r:?}");
    assert!(r.sticky_cookie().is_none());
    let new = get(&format!("http://{}/", s.listen), &[])
        .await
        .unwrap()
        .sticky_cookie()
        .unwrap();

    // A broken file (a key too short) keeps the previous keys.
    secret.write("short");
    eventually(Duration::from_secs(8), "the failed reload counted", || async {
        let m = s.metrics().await;
        (m.contains("stickyd_key_reloads_total{kind=\"error\"} 1"), m)
    })
    .await;
    assert_eq!(with_cookie(&s, &old).await.field("session"), "pinned");
    assert_eq!(with_cookie(&s, &new).await.field("session"), "pinned");

    // Step 2: the old key removed: old cookies are new sessions.
    secret.write(K2);
    let r = eventually(Duration::from_secs(8), "the old key no longer verifying", || async {
        let r = with_cookie(&s, &old).await;
        (r.field("session") == "new", r)
    })
    .await;
    assert!(matches!(
        codec(K2).decode(&r.sticky_cookie().unwrap(), stickyd::affinity::unix_now()),
        CookieState::Valid(_)
    ));
    assert_eq!(with_cookie(&s, &new).await.field("session"), "pinned");
    assert_eq!(s.child.id(), pid);
    let m = s.metrics().await;
    assert!(m.contains("stickyd_key_reloads_total{kind=\"ok\"} 2"), "{m}");
}

fn run_with(env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("run")
        .env_clear()
        .env("STICKYD_POD_NAME", "pod-0")
        .env("STICKYD_ENDPOINTS", "static:pod-0=127.0.140.99:1")
        .env("STICKYD_LISTEN", "127.0.140.99:1")
        .env("STICKYD_ADMIN_LISTEN", "127.0.140.99:2");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A valid config would start serving: never wait on it for long.
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `__Host-` and `__Secure-` cookie names with conflicting settings are
/// refused at start with exit 2 and a message naming the variable.
#[test]
fn conflicting_cookie_prefix_config_exits_2() {
    for (env, var) in [
        (
            vec![("STICKYD_COOKIE_NAME", "__Host-s"), ("STICKYD_COOKIE_SECURE", "false")],
            "STICKYD_COOKIE_SECURE",
        ),
        (
            vec![("STICKYD_COOKIE_NAME", "__Host-s"), ("STICKYD_COOKIE_PATH", "/app")],
            "STICKYD_COOKIE_PATH",
        ),
        (
            vec![
                ("STICKYD_COOKIE_NAME", "__Host-s"),
                ("STICKYD_COOKIE_DOMAIN", "example.com"),
            ],
            "STICKYD_COOKIE_DOMAIN",
        ),
        (
            vec![
                ("STICKYD_COOKIE_NAME", "__Secure-s"),
                ("STICKYD_COOKIE_SECURE", "false"),
            ],
            "STICKYD_COOKIE_SECURE",
        ),
        (
            vec![("STICKYD_COOKIE_SAMESITE", "None"), ("STICKYD_COOKIE_SECURE", "false")],
            "STICKYD_COOKIE_SECURE",
        ),
        (
            vec![("STICKYD_SESSION_IDLE_TIMEOUT", "soon")],
            "STICKYD_SESSION_IDLE_TIMEOUT",
        ),
        (vec![("STICKYD_COOKIE_SECRET", "too-short")], "STICKYD_COOKIE_SECRET"),
        // Unsigned cookies carry no time: lifetimes need a key.
        (
            vec![("STICKYD_SESSION_MAX_LIFETIME", "3")],
            "STICKYD_SESSION_MAX_LIFETIME",
        ),
        (
            vec![("STICKYD_SESSION_IDLE_TIMEOUT", "3")],
            "STICKYD_SESSION_IDLE_TIMEOUT",
        ),
    ] {
        let out = run_with(&env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert!(err.contains(var), "{env:?}: {err}");
    }
}

fn set_cookie_of(r: &Resp, name: &str) -> String {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {r:?}"))
        .to_string()
}

/// A valid `__Host-` cookie is Secure (even over plain HTTP, where `auto`
/// would leave it out), `Path=/` and has no Domain; Partitioned adds the
/// attribute and Secure; the cookie is read back under its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_prefix_and_partitioned_attributes() {
    let (_app, s) = one_pod("127.0.140.41", &[("STICKYD_COOKIE_NAME", "__Host-sticky".into())]).await;
    let r = get(&format!("http://{}/", s.listen), &[]).await.unwrap();
    let c = set_cookie_of(&r, "__Host-sticky");
    let attrs: Vec<String> = c.split(';').map(|a| a.trim().to_ascii_lowercase()).collect();
    assert!(attrs.contains(&"secure".into()), "{c}");
    assert!(attrs.contains(&"path=/".into()), "{c}");
    assert!(!attrs.iter().any(|a| a.starts_with("domain")), "{c}");
    assert!(!attrs.contains(&"partitioned".into()), "{c}");
    let value = c.split(';').next().unwrap().split_once('=').unwrap().1;
    let r = get(
        &format!("http://{}/", s.listen),
        &[("cookie", &format!("__Host-sticky={value}"))],
    )
    .await
    .unwrap();
    assert_eq!(r.field("session"), "pinned");
    // A `stickyd` cookie means nothing under another name.
    let r = get(
        &format!("http://{}/", s.listen),
        &[("cookie", &format!("stickyd={value}"))],
    )
    .await
    .unwrap();
    assert_eq!(r.field("session"), "new");

    let (_app2, s2) = one_pod(
        "127.0.140.42",
        &[
            ("STICKYD_COOKIE_PARTITIONED", "true".into()),
            ("STICKYD_COOKIE_SAMESITE", "None".into()),
        ],
    )
    .await;
    let r = get(&format!("http://{}/", s2.listen), &[]).await.unwrap();
    let c = set_cookie_of(&r, "stickyd");
    let attrs: Vec<String> = c.split(';').map(|a| a.trim().to_ascii_lowercase()).collect();
    for want in ["partitioned", "secure", "samesite=none", "httponly", "path=/"] {
        assert!(attrs.contains(&want.to_string()), "{want} missing: {c}");
    }
    // Off by default.
    let (_app3, s3) = one_pod("127.0.140.43", &[]).await;
    let r = get(&format!("http://{}/", s3.listen), &[]).await.unwrap();
    let c = set_cookie_of(&r, "stickyd");
    assert!(!c.to_ascii_lowercase().contains("partitioned"), "{c}");
    assert!(!c.to_ascii_lowercase().contains("secure"), "{c}");
}

/// Config parsing never panics: a STICKYD_LOG value the tracing filter
/// parser chokes on is a configuration error (exit 2), not a crash.
#[test]
fn a_log_filter_that_trips_the_filter_parser_is_a_config_error() {
    let env = [
        ("STICKYD_POD_NAME", "p"),
        ("STICKYD_SERVICE", "s"),
        ("STICKYD_LOG", "\u{b}ti\u{fffd}S\u{fffd}=T9EI"),
    ];
    let r = std::panic::catch_unwind(|| stickyd::config::Config::from_env(&env).is_err());
    assert_eq!(r.ok(), Some(true), "panicked or accepted");
    let out = run_with(&[("STICKYD_LOG", "\u{b}ti\u{fffd}S\u{fffd}=T9EI")]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Browsers match cookie prefixes case-insensitively (RFC 6265bis): a name
/// like `__HOST-s` gets the `__Host-` rules, so a conflicting config for it
/// must be refused too.
#[test]
fn cookie_prefixes_are_matched_case_insensitively() {
    for (env, var) in [
        (
            vec![("STICKYD_COOKIE_NAME", "__HOST-s"), ("STICKYD_COOKIE_PATH", "/app")],
            "STICKYD_COOKIE_PATH",
        ),
        (
            vec![
                ("STICKYD_COOKIE_NAME", "__host-s"),
                ("STICKYD_COOKIE_DOMAIN", "example.com"),
            ],
            "STICKYD_COOKIE_DOMAIN",
        ),
        (
            vec![
                ("STICKYD_COOKIE_NAME", "__SECURE-s"),
                ("STICKYD_COOKIE_SECURE", "false"),
            ],
            "STICKYD_COOKIE_SECURE",
        ),
        // Partitioned needs Secure: refused like SameSite=None without it.
        (
            vec![
                ("STICKYD_COOKIE_PARTITIONED", "true"),
                ("STICKYD_COOKIE_SECURE", "false"),
            ],
            "STICKYD_COOKIE_SECURE",
        ),
    ] {
        let out = run_with(&env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert!(err.contains(var), "{env:?}: {err}");
    }
}
