//! Session security on real processes: signed cookies with an idle timeout
//! and an absolute lifetime, refresh only past half the idle window, key
//! rotation through STICKYD_COOKIE_SECRET_FILE without a restart, and the
//! cookie attribute rules (`__Host-`, Partitioned).
//!
//! Addresses: 127.0.140.x.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use stickyd::affinity::{Codec, CookieState, Keys, Lifetimes};

const K1: &str = "session-test-key-one-0123456789ab";
const K2: &str = "session-test-key-two-0123456789ab";

/// `ID.CREATED.REFRESHED.MAC` → (created, refreshed), base 36.
fn times(value: &str) -> (u64, u64) {
    let p: Vec<&str> = value.split('.').collect();
    assert_eq!(p.len(), 5, "{value}");
    (
        u64::from_str_radix(p[2], 36).unwrap(),
        u64::from_str_radix(p[3], 36).unwrap(),
    )
}

async fn with_cookie(s: &Stickyd, value: &str) -> Resp {
    get(
        &format!("http://{}/", s.listen),
        &[("cookie", &format!("stickyd={value}"))],
    )
    .await
    .unwrap()
}

/// Idle timeout of 4 s: no Set-Cookie while the cookie is young, a refresh
/// (same session, same creation time) once past half the window, and a new
/// session once the cookie has been idle for the whole window. A refreshed
/// cookie outlives the one it replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_refreshes_past_half_and_expires_to_a_new_session() {
    let (_app, s) = one_pod(
        "127.0.140.1",
        &[
            ("STICKYD_COOKIE_SECRET", K1.into()),
            ("STICKYD_SESSION_IDLE_TIMEOUT", "4".into()),
        ],
    )
    .await;
    let first = get(&format!("http://{}/", s.listen), &[]).await.unwrap();
    let issued = Instant::now();
    assert_eq!(first.field("session"), "new");
    let c0 = first.sticky_cookie().unwrap();
    let (created0, refreshed0) = times(&c0);
    assert_eq!(created0, refreshed0);

    let mut refreshed: Option<String> = None;
    let expired_at = loop {
        let r = with_cookie(&s, &c0).await;
        let t = issued.elapsed();
        assert_eq!(r.status, 200);
        if r.field("session") == "new" {
            break t;
        }
        assert_eq!(r.field("session"), "pinned", "at {t:?}");
        match r.sticky_cookie() {
            None => assert!(t < Duration::from_secs(3), "no refresh by {t:?}"),
            Some(c) => {
                // Past half the window (2 s, counted in whole seconds).
                assert!(t > Duration::from_secs(1), "refreshed too early, at {t:?}");
                let (created, refreshed_at) = times(&c);
                assert_eq!(created, created0, "a refresh keeps the creation time");
                assert!(refreshed_at > refreshed0);
                assert!(
                    r.headers
                        .get("cache-control")
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .contains("private"),
                    "{r:?}"
                );
                refreshed.get_or_insert(c);
            }
        }
        assert!(t < Duration::from_millis(5500), "never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(expired_at > Duration::from_secs(3), "expired at {expired_at:?}");
    // The expired cookie's replacement is a new session.
    let r = with_cookie(&s, &c0).await;
    let (created, _) = times(&r.sticky_cookie().expect("a new cookie"));
    assert!(created >= created0 + 3);
    // The refreshed cookie is still good.
    let c1 = refreshed.expect("a refresh happened");
    let r = with_cookie(&s, &c1).await;
    assert_eq!(r.field("session"), "pinned", "{r:?}");
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

/// An absolute lifetime of 3 s ends the session even while refreshes keep
/// it from idling out: refreshes never move the creation time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_ends_a_session_that_keeps_refreshing() {
    let (_app, s) = one_pod(
        "127.0.140.21",
        &[
            ("STICKYD_COOKIE_SECRET", K1.into()),
            ("STICKYD_SESSION_MAX_LIFETIME", "3".into()),
            ("STICKYD_SESSION_IDLE_TIMEOUT", "2".into()),
        ],
    )
    .await;
    let first = get(&format!("http://{}/", s.listen), &[]).await.unwrap();
    let issued = Instant::now();
    let mut cookie = first.sticky_cookie().unwrap();
    let (created0, _) = times(&cookie);
    let mut refreshes = 0;
    let ended = loop {
        let r = with_cookie(&s, &cookie).await;
        let t = issued.elapsed();
        if r.field("session") == "new" {
            break t;
        }
        assert_eq!(r.field("session"), "pinned");
        if let Some(c) = r.sticky_cookie() {
            assert_eq!(times(&c).0, created0);
            refreshes += 1;
            cookie = c;
        }
        assert!(t < Duration::from_millis(4500), "the session outlived its lifetime");
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert!(ended > Duration::from_secs(2), "ended early, at {ended:?}");
    assert!(refreshes >= 1, "the idle refresh never happened");
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
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let r = get(&format!("http://{}/", s.listen), &[]).await.unwrap();
        let c = r.sticky_cookie().unwrap();
        if matches!(signer.decode(&c, stickyd::affinity::unix_now()), CookieState::Valid(_)) {
            return;
        }
        assert!(Instant::now() < deadline, "keys not reloaded: {}", s.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(8);
    while !s
        .metrics()
        .await
        .contains("stickyd_key_reloads_total{kind=\"error\"} 1")
    {
        assert!(Instant::now() < deadline, "{}", s.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(with_cookie(&s, &old).await.field("session"), "pinned");
    assert_eq!(with_cookie(&s, &new).await.field("session"), "pinned");

    // Step 2: the old key removed: old cookies are new sessions.
    secret.write(K2);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let r = with_cookie(&s, &old).await;
        if r.field("session") == "new" {
            assert!(matches!(
                codec(K2).decode(&r.sticky_cookie().unwrap(), stickyd::affinity::unix_now()),
                CookieState::Valid(_)
            ));
            break;
        }
        assert!(Instant::now() < deadline, "the old key still verifies");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
