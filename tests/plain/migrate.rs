//! `stickyd inject --from-ingress` and `--from-httproute` as a user runs
//! them, and GEP-1619's conformance plan (the first response sets the
//! cookie, at least 50 requests stay on one pod, a Session cookie has no
//! Expires or Max-Age) on real stickyd processes configured by what
//! `--from-httproute` wrote from an HTTPRoute, behind a random load balancer.
//! Addresses: 127.0.160.0/24 and 127.0.161.0/24.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use stickyd::kyaml::{self, Node};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/migrate")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("stickyd runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// `stickyd inject FILE ARGS`: asserts success; returns stdout and stderr.
fn inject(file: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["inject", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

/// Writes `content` to a fresh temporary file.
fn temp_file(name: &str, content: &str) -> PathBuf {
    let p = temp_path(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// The objects of a YAML stream by `Kind/name`.
fn objects(yaml: &str) -> BTreeMap<String, Node> {
    let parsed = kyaml::parse_stream(yaml).unwrap();
    parsed
        .into_iter()
        .map(|d| {
            let key = format!(
                "{}/{}",
                d.root.str_at(&["kind"]).unwrap_or(""),
                d.root.str_at(&["metadata", "name"]).unwrap_or("")
            );
            (key, d.root)
        })
        .collect()
}

/// Injects into a fixture; returns the objects, the sidecar env of `workload` and stderr.
fn injected(file: &Path, extra: &[&str], workload: &str) -> (BTreeMap<String, Node>, BTreeMap<String, String>, String) {
    let (out, err) = inject(file, extra);
    let objs = objects(&out);
    let env = sidecar_env(&objs[&format!("Deployment/{workload}")]);
    (objs, env, err)
}

fn var<'a>(env: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(String::as_str)
}

/// The literal env of the stickyd sidecar of a workload.
fn sidecar_env(workload: &Node) -> BTreeMap<String, String> {
    let init = workload.path(&["spec", "template", "spec", "initContainers"]).unwrap();
    let side = init
        .items()
        .iter()
        .find(|c| c.str_at(&["name"]) == Some("stickyd"))
        .expect("the sidecar");
    side.get("env")
        .unwrap()
        .items()
        .iter()
        .filter_map(|e| Some((e.str_at(&["name"])?.to_string(), e.str_at(&["value"])?.to_string())))
        .collect()
}

fn annotations(obj: &Node) -> Vec<String> {
    obj.path(&["metadata", "annotations"])
        .into_iter()
        .flat_map(|a| a.entries())
        .map(|(k, _, _)| k.to_string())
        .collect()
}

#[test]
fn the_storys_ingress_becomes_the_sidecars_cookie_and_loses_its_affinity_annotations() {
    let (d, env, err) = injected(&fixture("story.yaml"), &["--from-ingress"], "mysvc");
    assert_eq!(var(&env, "STICKYD_COOKIE_NAME"), Some("lbsticky"));
    assert_eq!(var(&env, "STICKYD_COOKIE_MAX_AGE"), Some("172800"));
    // The regex path becomes /, with a note.
    assert_eq!(var(&env, "STICKYD_COOKIE_PATH"), Some("/"));
    // Both Ingresses, the direct one and the one through the ExternalName
    // Service, keep only what is not affinity.
    for name in ["mysite", "shared-proxy"] {
        assert_eq!(
            annotations(&d[&format!("Ingress/{name}")]),
            vec!["kubernetes.io/ingress.class"],
            "Ingress {name}"
        );
    }
    for want in [
        "Deployment/mysvc: Ingress/otherns/mysite: session-cookie-name -> STICKYD_COOKIE_NAME=lbsticky",
        "Deployment/mysvc: Ingress/otherns/mysite: session-cookie-max-age -> STICKYD_COOKIE_MAX_AGE=172800",
        "Ingress/mismo-namespace-que-el-ingress/shared-proxy (through ExternalName Service mysvc-proxy)",
        "is a regular expression and no session-cookie-path is set",
        "pass --cookie-path /mysite",
        "removed nginx.ingress.kubernetes.io/affinity-mode, nginx.ingress.kubernetes.io/session-cookie-expires, \
         nginx.ingress.kubernetes.io/session-cookie-max-age, nginx.ingress.kubernetes.io/session-cookie-name",
        "affinity-mode persistent",
    ] {
        assert!(err.contains(want), "stderr lacks {want:?}:\n{err}");
    }
    // stickyd accepts the environment, with the key file of the Secret inject
    // wrote as the pod mounts it, and lint the whole.
    let mut cfg_env = env.clone();
    cfg_env.insert("STICKYD_POD_NAME".into(), "mysvc-0".into());
    let key_file = var(&env, "STICKYD_COOKIE_SECRET_FILE").expect("signed by default");
    let key = d["Secret/stickyd-mysvc"]
        .str_at(&["stringData", "key"])
        .expect("the Secret inject wrote");
    let mounted = stickyd::startup::Startup::with(None, &[(key_file, key)]);
    let cfg = stickyd::config::Config::parse(&cfg_env, &mounted).expect("stickyd accepts the env");
    assert_eq!(cfg.cookie.keys.len(), 1);
    assert_eq!(cfg.cookie.name, "lbsticky");
    assert_eq!(cfg.cookie.max_age, Some(std::time::Duration::from_secs(172800)));
    let (out, _) = inject(&fixture("story.yaml"), &["--from-ingress"]);
    let first = temp_file("story-injected.yaml", &out);
    let lint = run(&["lint", first.to_str().unwrap()]);
    assert_eq!(lint.status.code(), Some(0), "{}", text(&lint.stdout));
    assert!(
        text(&lint.stdout).starts_with("no problems found"),
        "{}",
        text(&lint.stdout)
    );
    // Injecting again changes nothing.
    let (again, _) = inject(&first, &["--from-ingress"]);
    assert_eq!(again, out);
    let _ = std::fs::remove_file(first);
}

#[test]
fn balanced_is_a_warning_and_a_flag_wins_over_an_annotation() {
    let story = std::fs::read_to_string(fixture("story.yaml")).unwrap();
    let balanced = temp_file(
        "balanced.yaml",
        &story.replace("affinity-mode: persistent", "affinity-mode: balanced"),
    );
    let (_, env, err) = injected(&balanced, &["--from-ingress", "--cookie-name", "mine"], "mysvc");
    let _ = std::fs::remove_file(&balanced);
    assert!(
        err.contains(
            "warning: Deployment/mysvc: Ingress/otherns/mysite: affinity-mode balanced: stickyd is always \
                      persistent"
        ),
        "{err}"
    );
    assert!(
        err.contains("--cookie-name mine given: kept over STICKYD_COOKIE_NAME=lbsticky"),
        "{err}"
    );
    assert_eq!(var(&env, "STICKYD_COOKIE_NAME"), Some("mine"));
}

#[test]
fn without_the_flag_the_annotations_stay_and_lint_explains_the_mismatch() {
    let (out, _) = inject(&fixture("story.yaml"), &[]);
    assert!(annotations(&objects(&out)["Ingress/mysite"]).len() > 1);
    let injected = temp_file("story-plain.yaml", &out);
    let lint = run(&["lint", "--format", "json", injected.to_str().unwrap()]);
    let _ = std::fs::remove_file(injected);
    let v: serde_json::Value = serde_json::from_slice(&lint.stdout).unwrap();
    let sd015: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "SD015")
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert_eq!(sd015.len(), 2, "{v:#}");
    for m in sd015 {
        assert!(
            m.contains("session-cookie-max-age asks for STICKYD_COOKIE_MAX_AGE=172800 (the sidecar has unset)"),
            "{m}"
        );
    }
}

#[test]
fn an_httproute_rule_maps_onto_the_sidecar_and_the_lifetimes_need_a_key() {
    // Without a key the lifetimes cannot be enforced: warnings, and none set.
    let (d, env, err) = injected(&fixture("httproute.yaml"), &["--from-httproute", "--unsigned"], "gep");
    assert_eq!(var(&env, "STICKYD_COOKIE_NAME"), Some("gep-session"));
    assert!(!env.contains_key("STICKYD_SESSION_MAX_LIFETIME"), "{env:?}");
    assert!(!env.contains_key("STICKYD_COOKIE_MAX_AGE"), "a Session cookie: {env:?}");
    assert!(
        err.contains("warning: Deployment/gep: HTTPRoute/gep/gep rule 0: absoluteTimeout 5400s is not enforced"),
        "{err}"
    );
    assert!(err.contains("pass --secret SECRET"), "{err}");
    let rules = d["HTTPRoute/gep"].path(&["spec", "rules"]).unwrap().items();
    assert!(rules[0].get("sessionPersistence").is_none(), "removed from the rule");
    assert_eq!(
        rules[1].path(&["backendRefs"]).unwrap().items().len(),
        1,
        "the other rule is kept"
    );
    assert!(err.contains("removed sessionPersistence"), "{err}");

    // With a key, the Secret's of --secret or the one inject writes, they are.
    for extra in [&["--secret", "gep-cookie"][..], &[]] {
        let mut args = vec!["--from-httproute"];
        args.extend_from_slice(extra);
        let (_, env, err) = injected(&fixture("httproute.yaml"), &args, "gep");
        assert_eq!(var(&env, "STICKYD_SESSION_MAX_LIFETIME"), Some("5400s"), "{extra:?}");
        assert_eq!(var(&env, "STICKYD_SESSION_IDLE_TIMEOUT"), Some("1800s"), "{extra:?}");
        assert!(!err.contains("warning"), "{err}");
    }
}

/// Three pods configured by the env `inject --from-httproute --secret` wrote
/// for `route_yaml`, on 127.0.`net`.x, behind a random load balancer.
async fn gep_cluster(net: u8, route_yaml: &str) -> (Vec<Pod>, RandomLb, PathBuf, PathBuf) {
    let input = temp_file("route.yaml", route_yaml);
    let (_, env, _) = injected(&input, &["--from-httproute", "--secret", "gep-cookie"], "gep");
    let _ = std::fs::remove_file(&input);
    let key = temp_file("key", "0123456789abcdef0123456789abcdef\n");
    let peers = temp_path("peers");
    let names: Vec<(String, std::net::SocketAddr)> = (0..3)
        .map(|i| (format!("gep-{i}"), addr_on(&format!("127.0.{net}.{}", i + 1))))
        .collect();
    let list: Vec<(&str, std::net::SocketAddr)> = names.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    write_peers(&peers, &list);
    // What the test sets itself: the addresses, and the key file's path here.
    let own = [
        "STICKYD_LISTEN",
        "STICKYD_ADMIN_LISTEN",
        "STICKYD_UPSTREAM",
        "STICKYD_COOKIE_SECRET_FILE",
    ];
    let mut extra: Vec<(&str, String)> = env
        .iter()
        .filter(|(k, _)| !own.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    extra.push(("STICKYD_COOKIE_SECRET_FILE", key.display().to_string()));
    extra.push(("STICKYD_ENDPOINTS", format!("file:{}", peers.display())));
    let mut pods = Vec::new();
    for (i, (name, addr)) in names.iter().enumerate() {
        let app = App::start(name, &format!("127.0.{net}.{}", i + 101)).await;
        let sidecar = Stickyd::start(name, *addr, app.addr, &extra).await;
        pods.push(Pod {
            name: name.clone(),
            app,
            sidecar,
        });
    }
    let all: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    for p in &pods {
        wait_for_view(&p.sidecar, &all).await;
    }
    let lb = RandomLb::start_on(
        &format!("127.0.{net}.200"),
        pods.iter().map(|p| p.sidecar.listen).collect(),
    )
    .await;
    (pods, lb, key, peers)
}

/// The `gep-session` Set-Cookie of a response, if any.
fn gep_cookie(r: &Resp) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gep-session="))
        .map(str::to_string)
}

/// GEP-1619's plan for `sessions` sessions: the first response sets the
/// cookie, then 50 requests with it stay on the pod that answered first.
/// Returns the first Set-Cookie of each session.
async fn conformance_plan(lb: &RandomLb, sessions: usize) -> Vec<String> {
    let url = format!("http://{}/", lb.addr);
    let mut first_cookies = Vec::new();
    for s in 0..sessions {
        let first = get(&url, &[]).await.expect("first request");
        assert_eq!(first.status, 200, "{first:?}");
        let set = gep_cookie(&first).unwrap_or_else(|| panic!("session {s}: the first response sets the cookie"));
        let mut value = set["gep-session=".len()..].split(';').next().unwrap().to_string();
        let pod = first.pod().to_string();
        for n in 0..50 {
            let cookie = format!("gep-session={value}");
            let r = get(&url, &[("cookie", &cookie)]).await.expect("request");
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.pod(), pod, "session {s}, request {n}: the session stays on its pod");
            if let Some(again) = gep_cookie(&r) {
                value = again["gep-session=".len()..].split(';').next().unwrap().to_string();
            }
        }
        first_cookies.push(set);
    }
    first_cookies
}

async fn forwarded(pods: &[Pod]) -> u64 {
    let mut n = 0;
    for p in pods {
        n += p
            .sidecar
            .metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("stickyd_requests_total{decision=\"forwarded\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gep_1619_plan_passes_through_a_random_lb_with_a_session_cookie() {
    let route = std::fs::read_to_string(fixture("httproute.yaml")).unwrap();
    let (pods, lb, key, peers) = gep_cluster(160, &route).await;
    let cookies = conformance_plan(&lb, 6).await;
    for c in &cookies {
        let lower = c.to_ascii_lowercase();
        assert!(
            !lower.contains("max-age") && !lower.contains("expires"),
            "a Session cookie has no Expires or Max-Age: {c}"
        );
        // Signed: the lifetimes (absoluteTimeout, idleTimeout) are inside the value.
        let value = c["gep-session=".len()..].split(';').next().unwrap();
        assert_eq!(value.split('.').count(), 5, "ID.SID.CREATED.REFRESHED.MAC: {value}");
    }
    // The load balancer spread the requests: most were forwarded by a sidecar.
    let f = forwarded(&pods).await;
    assert!(f > 100, "forwarded {f} of {}", 6 * 51);
    let _ = std::fs::remove_file(key);
    let _ = std::fs::remove_file(peers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_cookie_has_the_absolute_timeout_as_max_age() {
    let route = std::fs::read_to_string(fixture("httproute.yaml"))
        .unwrap()
        .replace("lifetimeType: Session", "lifetimeType: Permanent")
        .replace("absoluteTimeout: 1h30m", "absoluteTimeout: 5m");
    let (_pods, lb, key, peers) = gep_cluster(161, &route).await;
    for c in conformance_plan(&lb, 2).await {
        assert!(c.contains("Max-Age=300"), "{c}");
        assert!(c.contains("Expires="), "{c}");
    }
    let _ = std::fs::remove_file(key);
    let _ = std::fs::remove_file(peers);
}

#[test]
fn todays_schema_maps_the_cookie_path_and_reaches_the_service_through_a_backend() {
    let (d, env, err) = injected(&fixture("httproute-backend.yaml"), &["--from-httproute"], "shop");
    assert_eq!(var(&env, "STICKYD_COOKIE_NAME"), Some("shop-session"), "{err}");
    assert_eq!(var(&env, "STICKYD_COOKIE_PATH"), Some("/shop"), "{err}");
    assert_eq!(var(&env, "STICKYD_COOKIE_MAX_AGE"), Some("7200s"), "{err}");
    assert_eq!(var(&env, "STICKYD_SESSION_MAX_LIFETIME"), Some("7200s"), "{err}");
    // The route rule's sessionPersistence wins over the Backend's, with a warning naming both.
    assert!(
        err.contains(
            "warning: Deployment/shop: XBackend/shop/shop: cookie.name asks for STICKYD_COOKIE_NAME=shop-backend, \
             but HTTPRoute/shop/shop rule 0 cookie.name already set it to shop-session"
        ),
        "{err}"
    );
    assert!(d["HTTPRoute/shop"].path(&["spec", "rules"]).unwrap().items()[0]
        .get("sessionPersistence")
        .is_none());
    assert!(d["XBackend/shop"].path(&["spec", "sessionPersistence"]).is_none());
    assert!(d["XBackend/shop"].path(&["spec", "endpointSelector"]).is_some());

    // What inject wrote, the route and the sidecar agree: lint finds nothing of the route.
    let (out, _) = inject(&fixture("httproute-backend.yaml"), &["--from-httproute"]);
    let file = temp_file("httproute-backend-injected.yaml", &out);
    let lint = run(&["lint", "--format", "json", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(file);
    let v: serde_json::Value = serde_json::from_slice(&lint.stdout).unwrap();
    assert_eq!(v["findings"], serde_json::json!([]), "{v:#}");
}

#[test]
fn a_header_route_of_todays_schema_becomes_header_affinity() {
    let route = std::fs::read_to_string(fixture("httproute-backend.yaml"))
        .unwrap()
        .replace(
            "      type: Cookie\n      absoluteTimeout: 2h\n      cookie:\n        name: shop-session\n        \
             path: /shop\n        lifetimeType: Permanent\n",
            "      type: Header\n      header:\n        name: X-Shop-Session\n",
        )
        // The Backend's cookie aside: the rule's header alone.
        .replace(
            "  sessionPersistence:\n    type: Cookie\n    cookie:\n      name: shop-backend\n",
            "",
        );
    assert!(route.contains("X-Shop-Session"));
    let input = temp_file("httproute-header.yaml", &route);
    let (_, env, err) = injected(&input, &["--from-httproute"], "shop");
    let _ = std::fs::remove_file(input);
    assert_eq!(var(&env, "STICKYD_AFFINITY"), Some("header"), "{err}");
    assert_eq!(var(&env, "STICKYD_AFFINITY_HEADER"), Some("x-shop-session"), "{err}");
    assert!(!env.contains_key("STICKYD_COOKIE_NAME"), "{env:?}");

    // The flags win over the route's settings, each with a note; the route's header, which
    // app-header refuses, is left out, and the route's sessionPersistence still goes.
    let input = temp_file("httproute-header-flags.yaml", &route);
    let (objs, env, err) = injected(
        &input,
        &[
            "--from-httproute",
            "--affinity",
            "app-header",
            "--app-header",
            "Mcp-Session-Id",
        ],
        "shop",
    );
    let _ = std::fs::remove_file(input);
    assert_eq!(var(&env, "STICKYD_AFFINITY"), Some("app-header"), "{err}");
    assert_eq!(var(&env, "STICKYD_APP_HEADER"), Some("Mcp-Session-Id"), "{err}");
    assert!(!env.contains_key("STICKYD_AFFINITY_HEADER"), "{env:?}");
    assert!(
        err.contains("--affinity app-header given: kept over STICKYD_AFFINITY=header from "),
        "{err}"
    );
    assert!(
        err.contains("--affinity app-header given: STICKYD_AFFINITY_HEADER=x-shop-session from ")
            && err.contains(" left out, since stickyd refuses it in that mode"),
        "{err}"
    );
    assert!(objs["HTTPRoute/shop"].path(&["spec", "rules"]).unwrap().items()[0]
        .get("sessionPersistence")
        .is_none());
}
