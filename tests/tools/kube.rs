//! The real Kubernetes control plane of the tests (`tests/kube/`): one binary,
//! `kubeplane`, of etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, built from `k8s.io/kubernetes` v1.37.2 through the Go
//! module proxy (`tests/kube/build.sh`, reused while its stamp matches; `.ci/run`
//! builds it before the tests), and its smoke run (`tests/kube/smoke.sh`):
//! RBAC with the shipped Role, a real ServiceAccount token, server-side
//! validation (`kubectl apply --dry-run=server --validate=strict`) of every
//! kustomization under `manifests/` and of what `stickyd inject` writes for
//! the story's manifests and the inject fixtures (this test passes the
//! binary in `STICKYD_BIN`), and the real controllers writing the
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
        // What `stickyd inject` writes goes through the API server too.
        .env("STICKYD_BIN", env!("CARGO_BIN_EXE_stickyd"))
        // And the Helm chart's install, as a server-side dry run.
        .env("HELM_BIN", crate::helm::helm().unwrap_or_default())
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
    // The chart's 9 objects: the injector's 5 (no cert-manager ones in
    // `provided` mode), the dashboard's ConfigMap, and the listed
    // namespace's Role, RoleBinding and Secret.
    if crate::helm::helm().is_ok() {
        assert!(
            text.contains("ok: helm install --dry-run=server charts/stickyd (9 objects)"),
            "no helm install line in:\n{text}"
        );
    } else {
        crate::missing_tool("kube::helm install --dry-run=server", "no helm");
    }
    // One line per set that the API server accepted, every object of it: a
    // refused object fails the script, and a set that goes missing (or is
    // skipped) fails here.
    for set in [
        "manifests",
        "manifests/base",
        "manifests/injector",
        "manifests/examples/externalname",
        "manifests/examples/networkpolicy",
        "manifests/examples/same-namespace",
        "stickyd inject tests/fixtures/migrate/story.yaml",
        "stickyd inject --from-ingress tests/fixtures/migrate/story.yaml",
        "stickyd inject tests/fixtures/inject/plain.yaml",
        "stickyd inject tests/fixtures/inject/statefulset.yaml",
    ] {
        let line = format!("ok: dry-run=server {set} (");
        let objects = text
            .lines()
            .find_map(|l| l.split_once(&line).map(|(_, rest)| rest))
            .and_then(|rest| rest.split(' ').next()?.parse::<usize>().ok());
        assert!(
            objects.is_some_and(|n| n > 0),
            "no \"{line}N objects)\" line in:\n{text}"
        );
    }
    // The injector's cert-manager objects (Issuers, Certificates) are skipped
    // while no CRD serves them, and the output says so.
    let skip = text
        .lines()
        .find(|l| l.contains("skip: manifests/injector: "))
        .unwrap_or_else(|| panic!("no skip line for the injector's cert-manager objects in:\n{text}"));
    assert!(
        skip.contains(" objects of cert-manager.io (")
            && skip.contains("Certificate/stickyd-injector")
            && skip.contains("Issuer/stickyd-injector-ca")
            && skip.contains("their CRDs are not installed in this API server"),
        "{skip}"
    );
    assert!(
        text.contains("of cert-manager.io skipped, see above)"),
        "the injector's ok line tells the skip: {text}"
    );
    for seen in [
        "ok: kube-apiserver /readyz",
        "deployment.apps/mysvc created (server dry run)",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/stickyd-injector created (server dry run)",
        "can system:serviceaccount:stickyd-smoke:stickyd watch endpointslices? yes",
        "ok: EndpointSlice of mysvc lists the 3 pods as ready",
        "smoke: PASSED",
    ] {
        assert!(text.contains(seen), "no {seen:?} in:\n{text}");
    }
}
