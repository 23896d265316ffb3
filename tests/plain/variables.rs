//! The names of the `STICKYD_*` variables, on the real binary: a misspelt one
//! exits 2 with the closest valid name, and the variables Kubernetes' service
//! links inject for a Service named `stickyd` do not stop the sidecar.
//!
//! Addresses: 127.0.172.x.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Runs `cmd` for at most 10 s (a configuration it accepts would serve
/// forever); returns its exit code (`None`: still running, then killed) and
/// its stderr.
fn exit_of(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stickyd runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (code, err)
}

/// `stickyd run` with a valid configuration on 127.0.172.1 plus `extra`.
fn sidecar(extra: &[(&str, &str)]) -> Command {
    let listen = addr_on("127.0.172.1");
    let mut cmd = Command::new(bin());
    cmd.arg("run")
        .env_clear()
        .env("STICKYD_POD_NAME", "pod-0")
        .env("STICKYD_LISTEN", listen.to_string())
        .env("STICKYD_ADMIN_LISTEN", SocketAddr::new(listen.ip(), 0).to_string())
        .env("STICKYD_ENDPOINTS", format!("static:pod-0={listen}"))
        .env("STICKYD_UPSTREAM", "http://127.0.172.1:1");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn a_misspelt_variable_exits_2_naming_the_closest_one() {
    for (typo, value, closest) in [
        (
            "STICKYD_COOKIE_SECERT",
            "0123456789abcdef0123456789abcdef",
            "STICKYD_COOKIE_SECRET",
        ),
        ("STICKYD_PORT_NAM", "http", "STICKYD_PORT_NAME"),
        // STICKYD_PORT is a service link only with a link's value.
        ("STICKYD_PORT", "8080", "STICKYD_PORT_NAME"),
        ("STICKYD_DRAIN_SECOND", "5", "STICKYD_DRAIN_SECONDS"),
    ] {
        let (code, err) = exit_of(&mut sidecar(&[(typo, value)]));
        assert_eq!(code, Some(2), "{typo}: {err}");
        assert_eq!(
            err.trim_end(),
            format!("stickyd: configuration error: {typo} is not a stickyd variable; did you mean {closest}?"),
            "{typo}"
        );
    }
}

#[test]
fn the_injector_refuses_a_misspelt_variable_too() {
    let (code, err) = exit_of(
        Command::new(bin())
            .arg("injector")
            .env_clear()
            .env("STICKYD_INJECTOR_TLS_CERT", "/no/such/tls.crt")
            .env("STICKYD_INJECTOR_TLS_KYE", "/no/such/tls.key"),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("STICKYD_INJECTOR_TLS_KYE is not a stickyd variable; did you mean STICKYD_INJECTOR_TLS_KEY?"),
        "{err}"
    );
}

/// What the kubelet sets in every pod of a namespace with `Service stickyd`
/// (ports http 80/TCP and dns 53/UDP) and `Service stickyd-injector`
/// (443/TCP), unless the pod turns service links off.
const SERVICE_LINKS: &[(&str, &str)] = &[
    ("STICKYD_SERVICE_HOST", "10.96.14.7"),
    ("STICKYD_SERVICE_PORT", "80"),
    ("STICKYD_SERVICE_PORT_HTTP", "80"),
    ("STICKYD_SERVICE_PORT_DNS", "53"),
    ("STICKYD_PORT", "tcp://10.96.14.7:80"),
    ("STICKYD_PORT_80_TCP", "tcp://10.96.14.7:80"),
    ("STICKYD_PORT_80_TCP_PROTO", "tcp"),
    ("STICKYD_PORT_80_TCP_PORT", "80"),
    ("STICKYD_PORT_80_TCP_ADDR", "10.96.14.7"),
    ("STICKYD_PORT_53_UDP", "udp://10.96.14.7:53"),
    ("STICKYD_PORT_53_UDP_PROTO", "udp"),
    ("STICKYD_PORT_53_UDP_PORT", "53"),
    ("STICKYD_PORT_53_UDP_ADDR", "10.96.14.7"),
    ("STICKYD_INJECTOR_SERVICE_HOST", "10.96.3.3"),
    ("STICKYD_INJECTOR_SERVICE_PORT", "443"),
    ("STICKYD_INJECTOR_PORT", "tcp://10.96.3.3:443"),
    ("STICKYD_INJECTOR_PORT_443_TCP", "tcp://10.96.3.3:443"),
    ("STICKYD_INJECTOR_PORT_443_TCP_PROTO", "tcp"),
    ("STICKYD_INJECTOR_PORT_443_TCP_PORT", "443"),
    ("STICKYD_INJECTOR_PORT_443_TCP_ADDR", "10.96.3.3"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_link_variables_do_not_stop_the_sidecar() {
    let mut extra: Vec<(&str, String)> = SERVICE_LINKS.iter().map(|(k, v)| (*k, v.to_string())).collect();
    // The real variables beside them are still read.
    extra.push(("STICKYD_SERVICE", "shop".into()));
    extra.push(("STICKYD_PORT_NAME", "http".into()));
    extra.push(("STICKYD_COOKIE_NAME", "pin".into()));
    let (app, s) = one_pod("127.0.172.2", &extra).await;
    let (status, text) = fresh_get(s.listen, "/hello")
        .await
        .expect("a fresh connection is served");
    assert_eq!(status, 200, "{text}");
    assert!(text.to_ascii_lowercase().contains("set-cookie: pin="), "{text}");
    assert!(text.contains("pod=pod-0"), "the app answered: {text}");
    assert_eq!(app.seen().len(), 1, "the request reached the app");
    assert!(!s.log_text().contains("configuration error"), "{}", s.log_text());
}
