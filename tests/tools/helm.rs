//! The Helm chart (`charts/stickyd`): `helm lint --strict` and `helm template`
//! clean; its values schema refuses what it should; what it renders is the
//! kustomize manifests it stands beside, in substance (`manifests/injector`
//! object by object, the Role and RoleBinding of `manifests/base` per listed
//! namespace); its monitoring objects carry `monitoring/`'s rules and
//! dashboard. `helm` is `target/helm/helm`, built by `tests/helm/build.sh`
//! (which `.ci/run` runs; helm.sh/helm/v4 through the Go module proxy), or
//! the one on PATH; without either, and without Go to build it, the tests say
//! SKIP, unless STICKYDTEST_REQUIRE_TOOLS=1. `helm install --dry-run=server`
//! against a real API server is in `tests/kube/smoke.sh` (`kube::`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The helm binary: STICKYDTEST_HELM, target/helm/helm (built when Go is
/// here), or helm on PATH. Err: why there is none.
pub(crate) fn helm() -> Result<PathBuf, String> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Ok(p) = std::env::var("STICKYDTEST_HELM") {
            return Ok(PathBuf::from(p));
        }
        let have_go = Command::new("go")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if have_go {
            let out = Command::new("bash")
                .arg(Path::new(ROOT).join("tests/helm/build.sh"))
                .output()
                .map_err(|e| format!("tests/helm/build.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "tests/helm/build.sh failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
        if Command::new("helm")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(PathBuf::from("helm"));
        }
        Err("no helm, and no go to build it (tests/helm/build.sh)".into())
    })
    .clone()
}

fn with_helm(test: &str) -> Option<PathBuf> {
    match helm() {
        Ok(h) => Some(h),
        Err(why) => {
            crate::missing_tool(test, &why);
            None
        }
    }
}

/// Runs helm in the repository root: Ok(stdout) or Err(stderr).
fn run(helm: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm)
        .args(args)
        .current_dir(ROOT)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("stickyd-helm-cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("stickyd-helm-config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("stickyd-helm-data"))
        .output()
        .expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// `helm template` of the chart in namespace stickyd-system, with `set`.
fn template(helm: &Path, set: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "stickyd", "charts/stickyd", "--namespace", "stickyd-system"];
    for s in set {
        args.extend(["--set", s]);
    }
    let out = run(helm, &args).unwrap_or_else(|e| panic!("helm {args:?}: {e}"));
    objects(&out)
}

fn objects(yaml: &str) -> Vec<Value> {
    crate::inject::docs(yaml)
        .iter()
        .map(crate::inject::to_json)
        .filter(|v| !v.is_null())
        .collect()
}

fn id(o: &Value) -> (String, String) {
    (
        o["kind"].as_str().unwrap_or_default().to_string(),
        o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// An object without what only one of the two sides sets: the labels (the
/// chart adds Helm's, kustomize only `app.kubernetes.io/name`), and an
/// `imagePullPolicy` that kustomize leaves to its default.
fn substance(o: &Value) -> Value {
    let mut o = o.clone();
    for at in ["/metadata", "/spec/template/metadata"] {
        if let Some(m) = o.pointer_mut(at).and_then(Value::as_object_mut) {
            m.remove("labels");
        }
    }
    let containers = o
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut);
    for c in containers.into_iter().flatten() {
        if let Some(c) = c.as_object_mut() {
            c.remove("imagePullPolicy");
        }
    }
    o
}

#[test]
fn chart_lints_clean() {
    let Some(helm) = with_helm("helm::chart_lints_clean") else {
        return;
    };
    for set in [
        vec![],
        vec![
            "injector.tls.mode=provided",
            "injector.tls.caBundle=Y2E=",
            "namespaces[0].namespace=shop",
            "namespaces[0].service=shop",
            "monitoring.podMonitor.enabled=true",
            "monitoring.prometheusRule.enabled=true",
            "monitoring.dashboard.enabled=true",
        ],
    ] {
        let mut args = vec!["lint", "--strict", "charts/stickyd"];
        for s in &set {
            args.extend(["--set", s]);
        }
        let out = run(&helm, &args).unwrap_or_else(|e| panic!("helm {args:?}: {e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn chart_renders_the_injector_of_the_kustomize_manifests() {
    let Some(helm) = with_helm("helm::chart_renders_the_injector_of_the_kustomize_manifests") else {
        return;
    };
    let chart = template(&helm, &[]);
    let kustomized = Command::new("kubectl")
        .args(["kustomize", "manifests/injector"])
        .current_dir(ROOT)
        .output()
        .expect("kubectl kustomize");
    assert!(
        kustomized.status.success(),
        "{}",
        String::from_utf8_lossy(&kustomized.stderr)
    );
    let kustomized = objects(&String::from_utf8_lossy(&kustomized.stdout));
    // The release's namespace is Helm's (--create-namespace): no Namespace
    // object; the webhook excludes it by name, as it does stickyd-system.
    let wanted: Vec<&Value> = kustomized.iter().filter(|o| o["kind"] != "Namespace").collect();
    let mut want_ids: Vec<_> = wanted.iter().map(|o| id(o)).collect();
    let mut got_ids: Vec<_> = chart.iter().map(id).collect();
    want_ids.sort();
    got_ids.sort();
    assert_eq!(
        got_ids, want_ids,
        "the chart's objects are the kustomize manifests' objects"
    );
    for k in wanted {
        let c = chart.iter().find(|c| id(c) == id(k)).unwrap();
        assert_eq!(
            substance(c),
            substance(k),
            "{:?}: the chart's (left) and kustomize's (right) differ",
            id(k)
        );
        assert_eq!(
            c["metadata"]["labels"]["app.kubernetes.io/name"],
            k["metadata"]["labels"]["app.kubernetes.io/name"],
            "{:?}",
            id(k)
        );
    }
}

#[test]
fn chart_renders_the_base_rbac_and_a_kept_key_per_namespace() {
    let Some(helm) = with_helm("helm::chart_renders_the_base_rbac_and_a_kept_key_per_namespace") else {
        return;
    };
    let chart = template(
        &helm,
        &[
            "injector.enabled=false",
            "namespaces[0].namespace=shop",
            "namespaces[0].service=mysvc",
            "namespaces[0].serviceAccount=stickyd",
            "namespaces[1].namespace=web",
            "namespaces[1].service=front",
            "namespaces[1].createKey=false",
        ],
    );
    let base = |f: &str| {
        let text = std::fs::read_to_string(Path::new(ROOT).join("manifests/base").join(f)).unwrap();
        objects(&text).remove(0)
    };
    let (role, binding) = (base("role.yaml"), base("rolebinding.yaml"));
    let find = |kind: &str, name: &str, ns: &str| {
        chart
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name && o["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no {kind} {ns}/{name} in {chart:#?}"))
    };
    let r = find("Role", "stickyd-mysvc", "shop");
    assert_eq!(r["rules"], role["rules"], "the Role's rules are the base's");
    let b = find("RoleBinding", "stickyd-mysvc", "shop");
    assert_eq!(b["roleRef"]["kind"], binding["roleRef"]["kind"]);
    assert_eq!(b["roleRef"]["name"], "stickyd-mysvc");
    assert_eq!(b["subjects"][0]["kind"], binding["subjects"][0]["kind"]);
    assert_eq!(b["subjects"][0]["name"], binding["subjects"][0]["name"]);
    assert_eq!(b["subjects"][0]["namespace"], "shop");
    let secret = find("Secret", "stickyd-mysvc", "shop");
    assert_eq!(secret["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["key"].as_str().unwrap())
        .unwrap();
    assert!(key.len() >= 32, "a key of {} bytes", key.len());
    assert_eq!(
        find("RoleBinding", "stickyd-front", "web")["subjects"][0]["name"],
        "default"
    );
    assert!(
        !chart
            .iter()
            .any(|o| o["kind"] == "Secret" && o["metadata"]["namespace"] == "web"),
        "createKey=false leaves the Secret to the user"
    );
    assert!(
        !chart.iter().any(|o| o["kind"] == "Deployment"),
        "injector.enabled=false"
    );
}

#[test]
fn chart_schema_refuses_mistakes() {
    let Some(helm) = with_helm("helm::chart_schema_refuses_mistakes") else {
        return;
    };
    for (set, says) in [
        ("injector.tls.mode=provided", "caBundle"),
        ("injector.replica=3", "replica"),
        ("injector.failurePolicy=Sometimes", "failurePolicy"),
        ("namespaces[0].namespace=shop", "service"),
    ] {
        let args = ["template", "stickyd", "charts/stickyd", "--set", set];
        let err = run(&helm, &args).expect_err(set);
        assert!(err.contains(says), "--set {set}: {err}");
    }
}

#[test]
fn chart_monitoring_carries_the_rules_and_the_dashboard() {
    let Some(helm) = with_helm("helm::chart_monitoring_carries_the_rules_and_the_dashboard") else {
        return;
    };
    let chart = template(
        &helm,
        &[
            "injector.enabled=false",
            "monitoring.podMonitor.enabled=true",
            "monitoring.prometheusRule.enabled=true",
            "monitoring.prometheusRule.labels.release=kps",
            "monitoring.dashboard.enabled=true",
        ],
    );
    let rules = objects(&std::fs::read_to_string(Path::new(ROOT).join("monitoring/rules.yaml")).unwrap()).remove(0);
    let pr = chart
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(pr["spec"]["groups"], rules["groups"]);
    assert_eq!(pr["metadata"]["labels"]["release"], "kps");
    let cm = chart
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("the dashboard's ConfigMap");
    let shipped: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(ROOT).join("monitoring/dashboard.json")).unwrap())
            .unwrap();
    let rendered: Value = serde_json::from_str(cm["data"]["stickyd.json"].as_str().unwrap()).unwrap();
    assert_eq!(rendered, shipped);
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let pm = chart.iter().find(|o| o["kind"] == "PodMonitor").expect("a PodMonitor");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "stickyd-admin");
    assert_eq!(pm["spec"]["namespaceSelector"]["any"], true);
}
