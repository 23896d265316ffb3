//! The real Kubernetes control plane of the tests (`tests/kube/`): one binary,
//! `kubeplane`, of etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, built from `k8s.io/kubernetes` v1.37.2 through the Go
//! module proxy (`tests/kube/build.sh`, reused while its stamp matches; `.ci/run`
//! builds it before the tests), and its smoke run (`tests/kube/smoke.sh`):
//! RBAC with the shipped Role, a real ServiceAccount token, server-side
//! validation of the shipped base, and the real controllers writing the
//! ReplicaSet, the Pods and the EndpointSlice. Without Go, kubectl, openssl or
//! curl the test says SKIP and why, and passes, unless
//! `STICKYDTEST_REQUIRE_TOOLS=1` (as in CI), where it fails.
//!
//! Addresses: 127.0.0.1, on ports the smoke script finds free.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kube");

fn have(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_real_control_plane_serves_the_shipped_base_and_its_controllers_write_the_endpoints() {
    let test = "kube::a_real_control_plane_serves_the_shipped_base";
    let missing: Vec<&str> = [
        (!have("go", &["version"])).then_some("go (Go 1.26, to build tests/kube)"),
        (!have("kubectl", &["version", "--client"])).then_some("kubectl"),
        (!have("openssl", &["version"])).then_some("openssl"),
        (!have("curl", &["--version"])).then_some("curl"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        crate::missing_tool(test, &format!("missing {}", missing.join(", ")));
        return;
    }
    // The build (minutes, the first time) and the run, bounded as a whole.
    let bound = Duration::from_secs(20 * 60);
    let out = std::env::temp_dir().join(format!("stickyd-kube-smoke-{}.log", std::process::id()));
    let mut child = Command::new("bash")
        .arg(Path::new(DIR).join("smoke.sh"))
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::options().append(true).open(&out).unwrap())
        .spawn()
        .expect("run tests/kube/smoke.sh");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > bound {
            // SIGTERM first: the script stops its processes and removes its folder.
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            std::thread::sleep(Duration::from_secs(20));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "smoke.sh ran past {bound:?}: {}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    assert!(status.success(), "smoke.sh: {status}\n{text}");
    for seen in [
        "ok: kube-apiserver /readyz",
        "deployment.apps/mysvc created (server dry run)",
        "can system:serviceaccount:stickyd-smoke:stickyd watch endpointslices? yes",
        "ok: EndpointSlice of mysvc lists the 3 pods as ready",
        "smoke: PASSED",
    ] {
        assert!(text.contains(seen), "no {seen:?} in:\n{text}");
    }
}
