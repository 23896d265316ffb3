//! The scenarios against a real control plane: kube-apiserver, etcd,
//! kube-controller-manager and kube-scheduler built from k8s.io/kubernetes
//! (tests/kube), with the harness as the node's kubelet and kube-proxy
//! ([`harness::kubenode`]). The objects are the shipped ones: the story's
//! example (`manifests/examples/externalname`, the base's Deployment, Service,
//! ServiceAccount, Role and RoleBinding in `otherns`, the ExternalName Service
//! and the Ingress in `ingress-apps`) through an overlay that sets the drain
//! token and shorter drains, as the docs tell users to. Every change is made
//! through the API (`kubectl scale`, `kubectl rollout restart`, `kubectl
//! delete`); the EndpointSlices are the real controller's.
//!
//! The ingress is HAProxy configured from the Ingress object: its regex
//! path's rewrite, and one upstream server, the ExternalName's DNS name,
//! resolved to the ClusterIP of the Service that name designates (as cluster
//! DNS would).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::ingress::Ingress;
use crate::harness::k6::{self, Load, Outcome, Run};
use crate::harness::kubenode::{Ended, KubeNode};
use crate::harness::plane::kubeplane;
use crate::harness::Clock;

const APP_NS: &str = "otherns";
const INGRESS_NS: &str = "ingress-apps";
const TOKEN: &str = "podnet-drain-token-0123456789abcdef";
/// Bounds a whole scenario, the control plane's start included.
const LIMIT: Duration = Duration::from_secs(240);

/// The story's example through an overlay of the kind docs/kubernetes.md
/// describes: the drain token, and drains sized for a test (idle 2 s, max
/// 30 s) with a grace period to match.
fn overlay(dir: &Path, extra: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let at = dir.join("overlay");
    std::fs::create_dir_all(&at).unwrap();
    // kustomize refuses absolute paths to a base: a relative one from here.
    let up = "../".repeat(at.components().count() - 1);
    let example = format!(
        "{up}{}",
        root.join("manifests/examples/externalname")
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    std::fs::write(
        at.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- {example}
patches:
- target: {{kind: Deployment, name: mysvc}}
  patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: mysvc}}
    spec:
      template:
        spec:
          terminationGracePeriodSeconds: 65
          initContainers:
          - name: stickyd
            env:
            - name: STICKYD_DRAIN_TOKEN
              value: {TOKEN}
            - name: STICKYD_DRAIN_MAX
              value: 30s
            - name: STICKYD_WORKER_THREADS
              value: \"1\"
          containers:
          - name: app
            lifecycle:
              preStop:
                httpGet:
                  path: /drain?idle=2s&max=30s
                  port: 9090
                  httpHeaders:
                  - name: Authorization
                    value: Bearer {TOKEN}
{extra}"
        ),
    )
    .unwrap();
    at
}

/// A running story: the control plane, the node, the objects, 3 ready
/// pods, and the ingress.
struct Story {
    kn: Arc<KubeNode>,
    ingress: Ingress,
    base_url: String,
    dir: PathBuf,
}

/// Why the real control plane cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if let Some(why) = crate::unavailable(true) {
        return Some(why);
    }
    if !crate::on_path("kubectl") || !crate::on_path("openssl") {
        return Some("missing kubectl or openssl".into());
    }
    kubeplane().err()
}

/// The frame of every test here: it skips where the control plane cannot
/// run (and fails instead under STICKYDTEST_REQUIRE_TOOLS=1), takes the
/// suite's lock, starts a node and its control plane in a folder of its own,
/// and bounds the whole by [`LIMIT`]. On failure, the timeline is printed and
/// the logs are kept; on success, they go.
async fn with_node(test: &str, prefix: &str, body: impl AsyncFnOnce(&Arc<KubeNode>, &Path)) {
    if let Some(why) = unavailable() {
        if crate::required() {
            panic!("{test}: {why}, and STICKYDTEST_REQUIRE_TOOLS=1");
        }
        println!("skipped {test}: {why}");
        return;
    }
    let _serial = crate::SERIAL.lock().await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let run = async {
        for gone in crate::harness::netns::sweep() {
            println!("podnet: removed {gone}, left over by an earlier run");
        }
        let dir = std::env::temp_dir().join(format!("podnet-{}-{prefix}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let kn = KubeNode::start(prefix, &dir, Arc::new(Clock::new()), &kubeplane().expect("kubeplane")).await;
        let _logs = Logs(&kn, dir.clone());
        // The panic comes while the logs' guard is alive, so they are kept.
        if tokio::time::timeout_at(deadline, body(&kn, &dir)).await.is_err() {
            panic!("{test} did not finish within {LIMIT:?}");
        }
    };
    if tokio::time::timeout_at(deadline, run).await.is_err() {
        panic!("{test}: the control plane did not start within {LIMIT:?}");
    }
}

/// The story's example applied to a node: its tests run on it.
async fn scenario(test: &str, prefix: &str, extra: &str, body: impl AsyncFnOnce(&Story)) {
    with_node(test, prefix, async |kn, dir| {
        let story = Story::start(kn.clone(), dir, extra).await;
        body(&story).await;
    })
    .await;
}

impl Story {
    async fn start(kn: Arc<KubeNode>, dir: &Path, extra: &str) -> Story {
        let p = &kn.plane;
        // The signing key's Secret first (docs/kubernetes.md, step 3): the
        // pods never start without it.
        p.k(&["create", "namespace", APP_NS]).await;
        p.k(&[
            "-n",
            APP_NS,
            "create",
            "secret",
            "generic",
            "stickyd-mysvc",
            "--from-literal=key=podnet-session-key-0123456789abcdef0123456789",
        ])
        .await;
        let at = overlay(dir, extra);
        let applied = p.k(&["apply", "-k", &at.display().to_string()]).await;
        kn.clock.event(format!(
            "kubectl apply -k overlay: {}",
            applied.trim().replace('\n', "; ")
        ));
        kn.until("3 pods of mysvc ready", Duration::from_secs(120), || async {
            kn.ready_pods("mysvc-").len() == 3
        })
        .await;
        let ready_endpoints = || async {
            p.kubectl(&[
                "-n",
                APP_NS,
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=mysvc",
                "-o",
                "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{\"\\n\"}{end}",
            ])
            .await
            .is_ok_and(|o| o.lines().filter(|l| !l.is_empty()).count() == 3)
        };
        kn.until(
            "the EndpointSlice controller lists the 3 pods as ready",
            Duration::from_secs(60),
            ready_endpoints,
        )
        .await;
        let (ingress, base_url) = Story::ingress(&kn, dir).await;
        Story {
            kn,
            ingress,
            base_url,
            dir: dir.to_path_buf(),
        }
    }

    /// HAProxy as the Ingress `mysite` asks: its path's rewrite, and its
    /// backend, the ExternalName Service, as one server named by DNS.
    async fn ingress(kn: &KubeNode, dir: &Path) -> (Ingress, String) {
        let p = &kn.plane;
        let get = |args: &'static [&'static str]| async move { p.k(args).await };
        let path = get(&[
            "-n",
            INGRESS_NS,
            "get",
            "ingress",
            "mysite",
            "-o",
            "jsonpath={.spec.rules[0].http.paths[0].path}",
        ])
        .await;
        let rewrite = get(&[
            "-n",
            INGRESS_NS,
            "get",
            "ingress",
            "mysite",
            "-o",
            "jsonpath={.metadata.annotations.nginx\\.ingress\\.kubernetes\\.io/rewrite-target}",
        ])
        .await;
        let backend = get(&[
            "-n",
            INGRESS_NS,
            "get",
            "ingress",
            "mysite",
            "-o",
            "jsonpath={.spec.rules[0].http.paths[0].backend.service.name}",
        ])
        .await;
        assert_eq!(backend, "mysvc-proxy");
        let external = get(&[
            "-n",
            INGRESS_NS,
            "get",
            "service",
            "mysvc-proxy",
            "-o",
            "jsonpath={.spec.externalName}",
        ])
        .await;
        // Cluster DNS: <service>.<namespace>.svc.cluster.local.
        let mut parts = external.split('.');
        let (svc, ns) = (parts.next().unwrap().to_string(), parts.next().unwrap().to_string());
        let cip = p
            .k(&["-n", &ns, "get", "service", &svc, "-o", "jsonpath={.spec.clusterIP}"])
            .await;
        let cluster_ip = std::net::SocketAddrV4::new(cip.parse().expect("a ClusterIP"), 80);
        let prefix = path.split('(').next().unwrap_or("").to_string();
        let frontend = format!(
            "    # The Ingress's path {path}, rewritten to {rewrite}.\n    http-request replace-path ^{path} {}\n",
            rewrite.replace('$', "\\")
        );
        let ingress = Ingress::start_with(&kn.prefix, &kn.node, &external, cluster_ip, &frontend, dir);
        ingress.wait_listening().await;
        kn.clock.event(format!(
            "ingress: HAProxy, {path} → {external} ({cluster_ip}), rewritten to {rewrite}"
        ));
        let url = format!("{}{prefix}", ingress.url());
        (ingress, url)
    }

    fn k6(&self, load: &Load) -> k6::K6 {
        let pods: Vec<String> = self.kn.pods().iter().map(|p| p.name.clone()).collect();
        k6::start(&self.ingress, &self.base_url, &self.dir, &self.kn.clock, load, &pods)
    }

    /// `kubectl scale deployment/mysvc --replicas=2`, after giving `pod` the
    /// least `controller.kubernetes.io/pod-deletion-cost`: the ReplicaSet
    /// controller removes it.
    async fn scale_down_removing(&self, pod: &str) {
        let p = &self.kn.plane;
        let cost = "controller.kubernetes.io/pod-deletion-cost=-100";
        p.k(&["-n", APP_NS, "annotate", "pod", pod, cost]).await;
        p.k(&["-n", APP_NS, "scale", "deployment/mysvc", "--replicas=2"]).await;
        self.kn.clock.event(format!(
            "kubectl scale deployment/mysvc --replicas=2 ({pod} costs least)"
        ));
    }

    /// The Deployment's pods, by name, from the API.
    /// Waits until every sidecar's watch resumed after kube-apiserver was
    /// ready again at `back` (each retries with a growing backoff, as
    /// client-go's reflectors do, so this takes a while).
    async fn watches_resumed(&self, back: u64) {
        self.every_sidecar_logs("every sidecar's watch resumed", "Kubernetes API reachable again")
            .await;
        println!(
            "the sidecars' watches resumed {} ms after kube-apiserver was ready again",
            self.kn.clock.now() - back
        );
    }

    /// Waits until every running sidecar's log has `line`.
    async fn every_sidecar_logs(&self, what: &str, line: &str) {
        self.kn
            .until(what, Duration::from_secs(60), || async {
                self.kn
                    .pods()
                    .iter()
                    .all(|p| p.container("stickyd").proc.log_text().contains(line))
            })
            .await;
    }

    /// `pod` is scaled away: every sidecar sees it draining, its drain ends
    /// on `idle`, and the load `k6` ends with nothing failed or moved.
    async fn scale_down_seen_by_all(&self, test: &str, pod: &str, k6: k6::K6) -> Outcome {
        self.scale_down_removing(pod).await;
        let seen = self.kn.views_show(pod, Some("draining"), Duration::from_secs(20)).await;
        assert!(seen.is_some(), "not every sidecar saw {pod} draining");
        self.kn.clock.event(format!("every sidecar sees {pod} draining"));
        let ended = self.kn.until_ended(1, Duration::from_secs(60)).await;
        let out = k6.finish().await;
        out.report(test, &self.kn.clock);
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0].pod, pod);
        let _ = assert_idle_drain(&ended[0]);
        assert_clean(&out);
        out
    }

    async fn api_pods(&self) -> Vec<String> {
        let out = self
            .kn
            .plane
            .k(&[
                "-n",
                APP_NS,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=mysvc",
                "-o",
                "name",
            ])
            .await;
        out.lines().map(|l| l.trim_start_matches("pod/").to_string()).collect()
    }
}

fn load(requests: u32, run_for: Duration) -> Load {
    Load {
        vus: 9,
        requests,
        sleep: Duration::from_millis(100),
        run: Run::For(run_for),
        jitter: true,
    }
}

fn assert_idle_drain(e: &Ended) -> serde_json::Value {
    assert_eq!(e.prestop.len(), 1, "{}: one preStop hook", e.pod);
    let h = &e.prestop[0];
    assert!(h.body.contains("sessions_served"), "{}: {}", e.pod, h.body);
    assert_eq!(
        h.status,
        Some(200),
        "the drain preStop of {}: {:?} {}",
        e.pod,
        h.error,
        h.body
    );
    let v: serde_json::Value = serde_json::from_str(&h.body).unwrap_or_else(|e| panic!("{e}: {}", h.body));
    println!(
        "{} drain answer: {v}; removed {} ms after the kubelet saw its deletion",
        e.pod,
        e.removed - e.seen
    );
    assert_eq!(v["reason"], "idle", "the drain of {} ended on {v}", e.pod);
    assert!(!e.app_killed, "{}: the app was SIGKILLed", e.pod);
    assert!(!e.sidecar_killed, "{}: the sidecar was SIGKILLed", e.pod);
    v
}

fn assert_clean(out: &Outcome) {
    assert_eq!(out.failed().len(), 0, "failed requests");
    assert_eq!(out.moved().len(), 0, "sessions that moved");
    assert_eq!(out.counter_errors(), 0, "counter errors");
}

/// The story end to end with real objects: browsers → HAProxy (the Ingress)
/// → the ExternalName's name → the Service's ClusterIP (kube-proxy's rules
/// from the real EndpointSlice) → any pod's sidecar → the session's pod.
/// Every sidecar watches with the shipped Role through a real, bound
/// ServiceAccount token: 0 broken sessions, spread over the pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_story_externalname() {
    let test = "real_story_externalname";
    scenario(test, "rstory", "", async |s| {
        let out = s
            .k6(&Load {
                vus: 10,
                requests: 10,
                sleep: Duration::from_millis(20),
                run: Run::Sessions(60),
                jitter: false,
            })
            .finish()
            .await;
        out.report(test, &s.kn.clock);
        assert_clean(&out);
        assert_eq!(out.requests(), 600);
        let pods = out.summary["pods"].as_object().expect("per-pod figures");
        let serving = pods
            .values()
            .filter(|v| v["requests"].as_u64().unwrap_or(0) > 0)
            .count();
        // The premise: sessions on more than one pod, so that requests sent
        // at random lose them. Not necessarily on all 3: HAProxy's pool
        // (`http-reuse always`) sends them over a few keep-alive
        // connections, and kube-proxy picks a pod per connection.
        assert!(serving >= 2, "sessions on more than one pod: {pods:?}");
        // The sidecars' view came from the real watch, through the token.
        for p in s.kn.pods() {
            let log = p.container("stickyd").proc.log_text();
            assert!(log.contains("watching EndpointSlices"), "{}:\n{log}", p.name);
            assert!(
                log.contains("endpoint view updated from=\"list\""),
                "{}:\n{log}",
                p.name
            );
            // The token the sidecar read at /var/run/secrets/kubernetes.io/serviceaccount:
            // the apiserver's own, for ServiceAccount stickyd, bound to this Pod.
            let vol = std::fs::read_dir(p.dir.join("vol"))
                .unwrap()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with("kube-api-access-"))
                .expect("the projected ServiceAccount volume");
            let token = std::fs::read_to_string(vol.path().join("token")).unwrap();
            let claims = token.split('.').nth(1).expect("a JWT");
            use base64::Engine as _;
            let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap();
            let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
            assert_eq!(claims["sub"], "system:serviceaccount:otherns:stickyd", "{claims}");
            assert_eq!(claims["kubernetes.io"]["pod"]["name"], p.name.as_str(), "{claims}");
        }
    })
    .await;
}

/// `kubectl scale --replicas=2` during sessions: the ReplicaSet controller
/// picks the pod, the EndpointSlice controller marks it terminating, the
/// kubelet runs its drain preStop, and nothing fails or moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_scale_down() {
    let test = "real_scale_down";
    scenario(test, "rscale", "", async |s| {
        let k6 = s.k6(&load(40, Duration::from_secs(12)));
        let busiest = s.kn.busiest_pod(3, Duration::from_secs(60)).await;
        s.scale_down_removing(&busiest).await;
        let ended = s.kn.until_ended(1, Duration::from_secs(60)).await;
        let out = k6.finish().await;
        out.report(test, &s.kn.clock);
        assert_eq!(ended.len(), 1, "{ended:?}");
        let e = &ended[0];
        assert_eq!(e.pod, busiest, "the ReplicaSet controller removed another pod");
        let v = assert_idle_drain(e);
        assert!(
            v["sessions_served"].as_u64() >= Some(3),
            "the drain served no sessions: {v}"
        );
        assert_clean(&out);
        // The drain answered once no request of its sessions had come for 2 s,
        // and so after the last one.
        let last = out.summary["pods"][&busiest]["last_request_ms"]
            .as_u64()
            .expect("the removed pod served requests");
        let answered = e.prestop[0].ended;
        assert!(
            answered + 100 >= last + 2000,
            "the drain answered at {} ms, less than 2 s after its sessions' last request at {} ms",
            s.kn.clock.rel(answered),
            s.kn.clock.rel(last)
        );
        assert_eq!(s.api_pods().await.len(), 2);
    })
    .await;
}

/// `kubectl rollout restart` (maxSurge 1, maxUnavailable 0) during
/// sessions: 3 new pods, 3 drains that end on `idle`, nothing fails or moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_rolling_update() {
    let test = "real_rolling_update";
    scenario(test, "rroll", "", async |s| {
        let before = s.api_pods().await;
        let k6 = s.k6(&load(40, Duration::from_secs(20)));
        s.kn.busiest_pod(3, Duration::from_secs(60)).await;
        s.kn.plane
            .k(&["-n", APP_NS, "rollout", "restart", "deployment/mysvc"])
            .await;
        s.kn.clock.event("kubectl rollout restart deployment/mysvc");
        s.kn.until_ended(3, Duration::from_secs(150)).await;
        s.kn.plane
            .k(&["-n", APP_NS, "rollout", "status", "deployment/mysvc", "--timeout=60s"])
            .await;
        let out = k6.finish().await;
        out.report(test, &s.kn.clock);
        let ended = s.kn.ended();
        let mut gone: Vec<String> = ended.iter().map(|e| e.pod.clone()).collect();
        gone.sort();
        let mut old = before.clone();
        old.sort();
        assert_eq!(gone, old, "the pods the kubelet ended are the old ones");
        for e in &ended {
            let _ = assert_idle_drain(e);
        }
        assert_clean(&out);
        let now = s.api_pods().await;
        assert_eq!(now.len(), 3);
        assert!(now.iter().all(|p| !before.contains(p)), "old pods left: {now:?}");
    })
    .await;
}

/// A pod dies without a word and is deleted through the API (`--force
/// --grace-period=0`, what an operator or the node lifecycle controller
/// does): its sessions are repinned once, the others stay, and the new pod
/// the ReplicaSet makes gets the dead pod's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_dark_death_and_ip_reuse() {
    let test = "real_dark_death_and_ip_reuse";
    scenario(test, "rdark", "", async |s| {
        let k6 = s.k6(&load(30, Duration::from_secs(12)));
        let victim = s.kn.busiest_pod(3, Duration::from_secs(60)).await;
        let ip = s.kn.kill_dark(&victim);
        let died = s.kn.clock.now();
        s.kn.plane
            .k(&["-n", APP_NS, "delete", "pod", &victim, "--force", "--grace-period=0"])
            .await;
        s.kn.clock
            .event(format!("kubectl delete pod {victim} --force --grace-period=0"));
        let reused = || async {
            s.kn.pods().iter().any(|p| p.ip == ip && p.name != victim) && s.kn.ready_pods("mysvc-").len() == 3
        };
        s.kn.until(
            &format!("a new pod ready on {ip}, the dead pod's address"),
            Duration::from_secs(60),
            reused,
        )
        .await;
        let out = k6.finish().await;
        out.report(test, &s.kn.clock);
        let repinned = crate::assert_only_its_sessions_moved(&out, &victim, died);
        assert!(repinned > 0, "no session of {victim} was repinned");
        // Requests on their way to the dead pod fail until the sidecars see it gone.
        for r in out.failed() {
            assert!(r.end >= died, "a request failed before the death: {r:?}");
        }
    })
    .await;
}

/// Requests were sent while kube-apiserver was down (from `gone` to
/// `back`): the scenario's premise.
fn assert_sent_while_down(out: &Outcome, gone: u64, back: u64) {
    let during = out
        .sessions
        .iter()
        .flat_map(|s| &s.requests)
        .filter(|r| r.start >= gone && r.start <= back)
        .count();
    println!("requests sent while kube-apiserver was down: {during}");
    assert!(during > 0, "no request was sent while kube-apiserver was down");
}

/// The shipped Role without `watch`: the sidecars cannot follow the
/// EndpointSlices, say so in a clear log line, and never turn ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_role_without_watch_is_refused_clearly() {
    let test = "real_role_without_watch_is_refused_clearly";
    with_node(test, "rrbac", async |kn, dir| {
        let p = &kn.plane;
        p.k(&["create", "namespace", APP_NS]).await;
        p.k(&[
            "-n",
            APP_NS,
            "create",
            "secret",
            "generic",
            "stickyd-mysvc",
            "--from-literal=key=0123456789abcdef0123456789abcdef",
        ])
        .await;
        let extra = "- target: {kind: Role, name: stickyd}
  patch: |-
    - op: replace
      path: /rules/0/verbs
      value: [get, list]
";
        let at = overlay(dir, extra);
        p.k(&["apply", "-k", &at.display().to_string()]).await;
        let who = "system:serviceaccount:otherns:stickyd";
        let can = p
            .kubectl(&[
                "-n",
                APP_NS,
                "auth",
                "can-i",
                "watch",
                "endpointslices.discovery.k8s.io",
                "--as",
                who,
            ])
            .await;
        assert!(can.is_err(), "the Role without watch still grants it: {can:?}");
        let line = "forbidden";
        kn.until(
            "every sidecar logs the refused watch",
            Duration::from_secs(90),
            || async {
                let pods = kn.pods();
                pods.len() == 3
                    && pods
                        .iter()
                        .all(|p| p.container("stickyd").proc.log_text().to_lowercase().contains(line))
            },
        )
        .await;
        for p in kn.pods() {
            let log = p.container("stickyd").proc.log_text();
            println!("{}:\n{log}", p.name);
            assert!(
                log.contains("watch") && log.contains("endpointslices"),
                "{}: the log does not say which permission is missing:\n{log}",
                p.name
            );
        }
        assert!(
            kn.ready_pods("mysvc-").is_empty(),
            "a pod turned ready without its view"
        );
    })
    .await;
}

/// The injector as the shipped manifests deploy it (`manifests/injector`),
/// with a test CA in place of cert-manager's (its Issuers and Certificates
/// deleted by the overlay, the serving Secret and the webhook's caBundle
/// written as cert-manager and its CA injector would). The real apiserver
/// calls it through the shipped MutatingWebhookConfiguration for a
/// Deployment's Pods annotated `stickyd.io/inject: enabled`, validates what
/// comes back, and the kubelet runs the injected pods until they are ready
/// and listed by the EndpointSlice controller on the sidecar's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_injector_through_the_shipped_webhook() {
    use crate::harness::plane::{make_ca, sign};
    let test = "real_injector_through_the_shipped_webhook";
    with_node(test, "rinject", async |kn, dir| {
        let p = &kn.plane;
        // What cert-manager would issue: a CA, and the serving certificate
        // for the names the apiserver dials.
        let certs = dir.join("webhook");
        std::fs::create_dir_all(&certs).unwrap();
        make_ca(&certs, "stickyd-injector-ca");
        sign(
            &certs,
            "tls",
            "/CN=stickyd-injector.stickyd-system.svc",
            "subjectAltName=DNS:stickyd-injector.stickyd-system.svc,DNS:stickyd-injector.stickyd-system.svc.cluster.local\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        );
        p.k(&["create", "namespace", "stickyd-system"]).await;
        let (crt, key) = (certs.join("tls.crt"), certs.join("tls.key"));
        p.k(&[
            "-n",
            "stickyd-system",
            "create",
            "secret",
            "tls",
            "stickyd-injector-tls",
            &format!("--cert={}", crt.display()),
            &format!("--key={}", key.display()),
        ])
        .await;
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(certs.join("ca.crt")).unwrap());
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let at = dir.join("injector-overlay");
        std::fs::create_dir_all(&at).unwrap();
        let up = "../".repeat(at.components().count() - 1);
        let injector = format!(
            "{up}{}",
            root.join("manifests/injector")
                .display()
                .to_string()
                .trim_start_matches('/')
        );
        let delete = |kind: &str, name: &str| {
            format!(
                "- patch: |-\n    apiVersion: cert-manager.io/v1\n    kind: {kind}\n    metadata:\n      name: {name}\n      namespace: stickyd-system\n    $patch: delete\n"
            )
        };
        std::fs::write(
            at.join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- {injector}
patches:
{}{}{}{}- target: {{kind: MutatingWebhookConfiguration, name: stickyd-injector}}
  patch: |-
    - op: add
      path: /webhooks/0/clientConfig/caBundle
      value: {ca}
",
                delete("Issuer", "stickyd-injector-selfsigned"),
                delete("Certificate", "stickyd-injector-ca"),
                delete("Issuer", "stickyd-injector-ca"),
                delete("Certificate", "stickyd-injector"),
            ),
        )
        .unwrap();
        let applied = p.k(&["apply", "-k", &at.display().to_string()]).await;
        kn.clock.event(format!(
            "kubectl apply -k injector overlay: {}",
            applied.trim().replace('\n', "; ")
        ));
        kn.until("the 2 injector pods ready", Duration::from_secs(90), || async {
            kn.ready_pods("stickyd-injector-").len() == 2
        })
        .await;
        kn.until(
            "the injector's EndpointSlice lists it ready",
            Duration::from_secs(60),
            || async {
                p.kubectl(&[
                    "-n",
                    "stickyd-system",
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=stickyd-injector",
                    "-o",
                    "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}",
                ])
                .await
                .is_ok_and(|o| !o.trim().is_empty())
            },
        )
        .await;

        // A workload that asks for the sidecar (docs/injector.md's four steps).
        p.k(&["create", "namespace", "shop"]).await;
        p.k(&[
            "-n",
            "shop",
            "create",
            "secret",
            "generic",
            "stickyd-shop",
            "--from-literal=key=0123456789abcdef0123456789abcdef",
        ])
        .await;
        let role = std::fs::read_to_string(root.join("manifests/base/role.yaml")).unwrap();
        p.kubectl_input(&["-n", "shop", "apply", "-f", "-"], Some(&role))
            .await
            .unwrap();
        p.k(&[
            "-n",
            "shop",
            "create",
            "rolebinding",
            "stickyd",
            "--role=stickyd",
            "--serviceaccount=shop:default",
        ])
        .await;
        let workload = "apiVersion: v1
kind: Service
metadata: {name: shop, namespace: shop}
spec:
  selector: {app: shop}
  ports:
  - {name: http, port: 80, targetPort: stickyd}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop, namespace: shop}
spec:
  replicas: 2
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
      annotations:
        stickyd.io/inject: enabled
        stickyd.io/service: shop
        stickyd.io/cookie-path: /shop
        stickyd.io/drain-idle: 2s
        stickyd.io/drain-max: 30s
    spec:
      containers:
      - name: shop
        image: podnet/demo-app:1
        args: [--listen, 127.0.0.1:8080]
        ports:
        - {name: http, containerPort: 8080}
";
        // One Pod first, created through the API as a user would: it comes
        // back with the sidecar, after the apiserver's own validation.
        let pod = "apiVersion: v1
kind: Pod
metadata:
  name: one
  namespace: shop
  labels: {app: one}
  annotations:
    stickyd.io/inject: enabled
    stickyd.io/service: shop
spec:
  containers:
  - name: app
    image: podnet/demo-app:1
    args: [--listen, 127.0.0.1:8080]
    ports:
    - {name: http, containerPort: 8080}
";
        let created = p
            .kubectl_input(&["create", "--dry-run=server", "-o", "json", "-f", "-"], Some(pod))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let created: serde_json::Value = serde_json::from_str(&created).unwrap();
        assert_injected(&created);
        let (out, warnings) = match p.kubectl_input(&["apply", "-f", "-"], Some(workload)).await {
            Ok(o) => (o, String::new()),
            Err(e) => panic!("{e}"),
        };
        kn.clock
            .event(format!("kubectl apply: {}{warnings}", out.trim().replace('\n', "; ")));
        kn.until("2 injected pods of shop ready", Duration::from_secs(90), || async {
            kn.ready_pods("shop-").len() == 2
        })
        .await;
        let pods = p
            .k(&["-n", "shop", "get", "pods", "-l", "app=shop", "-o", "json"])
            .await;
        let pods: serde_json::Value = serde_json::from_str(&pods).unwrap();
        let items = pods["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        for pod in items {
            assert_injected(pod);
        }
        kn.until(
            "shop's EndpointSlice lists both pods ready on the sidecar's port",
            Duration::from_secs(60),
            || async {
                p.kubectl(&[
                    "-n",
                    "shop",
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=shop",
                    "-o",
                    "jsonpath={.items[0].ports[0].port} {.items[0].endpoints[?(@.conditions.ready==true)].addresses[0]}",
                ])
                .await
                .is_ok_and(|o| o.split_whitespace().count() == 3 && !o.starts_with("8080 "))
            },
        )
        .await;
        let added: usize = kn
            .pods()
            .iter()
            .filter(|p| p.name.starts_with("stickyd-injector-"))
            .map(|p| {
                p.container("injector")
                    .proc
                    .log_text()
                    .matches("stickyd sidecar added")
                    .count()
            })
            .sum();
        // The Pod `one` (a dry run: the webhook is still called) and the 2 of the Deployment.
        assert_eq!(added, 3, "the injectors' logs name 3 pods");
    })
    .await;
}

/// A Pod as the apiserver returned it after the injector's patch.
fn assert_injected(pod: &serde_json::Value) {
    let name = &pod["metadata"]["name"];
    assert!(
        pod["metadata"]["annotations"]["stickyd.io/injected"].is_string(),
        "{name}: no stickyd.io/injected: {pod}"
    );
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "stickyd", "{name}: {pod}");
    assert_eq!(
        sidecar["restartPolicy"], "Always",
        "{name}: a native sidecar: {sidecar}"
    );
    assert!(sidecar["readinessProbe"]["httpGet"].is_object(), "{name}: {sidecar}");
    let hook = &pod["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"];
    assert!(
        hook["path"].as_str().unwrap_or("").starts_with("/drain?"),
        "{name}: {hook}"
    );
    assert_eq!(hook["httpHeaders"][0]["name"], "Authorization", "{name}: {hook}");
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"].as_u64() >= Some(30),
        "{name}"
    );
}

/// Prints the timeline and keeps the logs if the test fails; removes them
/// if it passes.
struct Logs<'a>(&'a KubeNode, PathBuf);

impl Drop for Logs<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!("podnet (real control plane): logs kept in {}", self.1.display());
            for line in self.0.clock.timeline() {
                println!("  {line}");
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
}

/// kube-apiserver restarts during sessions (SIGTERM, 3 s down, started
/// again on the same etcd): the sidecars keep serving from their last view,
/// nothing fails or moves, and their watches resume: a scale-down right
/// after is seen by every sidecar and drains on `idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_apiserver_restart_during_traffic() {
    let test = "real_apiserver_restart_during_traffic";
    scenario(test, "rrestart", "", async |s| {
        let k6 = s.k6(&load(40, Duration::from_secs(45)));
        let busiest = s.kn.busiest_pod(3, Duration::from_secs(60)).await;
        let clock = s.kn.clock.clone();
        let (gone, back) =
            s.kn.plane
                .restart_apiserver(Duration::from_secs(3), || clock.now())
                .await;
        s.kn.clock.event(format!(
            "kube-apiserver stopped, and ready again {} ms later",
            back - gone
        ));
        s.watches_resumed(back).await;
        let out = s.scale_down_seen_by_all(test, &busiest, k6).await;
        assert_sent_while_down(&out, gone, back);
    })
    .await;
}

/// etcd compacted past the revision the sidecars' watches resume from,
/// while kube-apiserver is down; it comes back serving watches from etcd
/// itself (`--watch-cache=false`, so the 410 can only be the compaction's).
/// Every sidecar's watch gets its 410 Gone, lists again and follows the
/// EndpointSlices from there, serving from its last view meanwhile: nothing
/// fails or moves, and a scale-down right after is seen by every sidecar and
/// drains on `idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_compaction_expires_the_watches_and_they_list_again() {
    let test = "real_compaction_expires_the_watches_and_they_list_again";
    scenario(test, "rcompact", "", async |s| {
        let k6 = s.k6(&load(40, Duration::from_secs(45)));
        let busiest = s.kn.busiest_pod(3, Duration::from_secs(60)).await;
        let p = &s.kn.plane;
        // A write after the last EndpointSlice event the sidecars saw, so
        // the compaction passes the revision they resume from.
        p.k(&["-n", APP_NS, "create", "configmap", "written-after-the-watches"])
            .await;
        p.stop_apiserver().await;
        let gone = s.kn.clock.now();
        let revision = p.compact_etcd(&s.kn.node).await;
        s.kn.clock
            .event(format!("kube-apiserver stopped; etcd compacted at revision {revision}"));
        p.start_apiserver(&["--watch-cache=false"]).await;
        let back = s.kn.clock.now();
        s.kn.clock.event("kube-apiserver ready again, without its watch cache");
        let expired = "resourceVersion expired (410 Gone)";
        s.every_sidecar_logs("every sidecar's watch expired (410)", expired)
            .await;
        for pod in s.kn.pods() {
            let log = pod.container("stickyd").proc.log_text();
            let line = log.lines().find(|l| l.contains(expired)).unwrap_or_default();
            // etcd's refusal, as the apiserver words it (its watch cache says
            // "too old resource version" instead).
            assert!(
                line.contains("The resourceVersion for the provided watch is too old"),
                "{}: {line}",
                pod.name
            );
        }
        s.watches_resumed(back).await;
        let out = s.scale_down_seen_by_all(test, &busiest, k6).await;
        assert_sent_while_down(&out, gone, back);
    })
    .await;
}

/// A real Prometheus (Debian's package) scrapes every sidecar through
/// file-based discovery and evaluates `monitoring/rules.yaml`. During a
/// scale-down whose drain is forced to its `max` (idle 20 s, max 10 s), the
/// query for sessions per pod shows the drained pod going to 0 while its
/// peers take the new sessions, and StickydDrainNearMax fires for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_sees_the_drained_pod_empty_and_its_drain_alert() {
    let test = "real_prometheus_sees_the_drained_pod_empty_and_its_drain_alert";
    if crate::unavailable(true).is_none() && !crate::on_path("prometheus") {
        if crate::required() {
            panic!("{test}: no prometheus (apt-get install prometheus), and STICKYDTEST_REQUIRE_TOOLS=1");
        }
        println!("skipped {test}: no prometheus (apt-get install prometheus)");
        return;
    }
    // Sessions count as active for 3 s after their last request (not 5 min),
    // and the drain waits for 20 s of idleness, which max (10 s) cuts short.
    let extra = "- target: {kind: Deployment, name: mysvc}
  patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: mysvc}
    spec:
      template:
        spec:
          initContainers:
          - name: stickyd
            env:
            - name: STICKYD_SESSION_ACTIVE_WINDOW
              value: 3s
          containers:
          - name: app
            lifecycle:
              preStop:
                httpGet:
                  path: /drain?idle=20s&max=10s
";
    scenario(test, "rprom", extra, async |s| {
        use crate::harness::prometheus::Prometheus;
        let kn = &s.kn;
        let prom = Prometheus::start(&kn.node, &s.dir).await;
        kn.clock.event("prometheus: scraping every sidecar each second, rules of monitoring/rules.yaml");
        let write = || {
            let t: Vec<_> = kn
                .pods()
                .iter()
                .filter(|p| p.name.starts_with("mysvc-"))
                .map(|p| (p.namespace.clone(), p.name.clone(), p.admin()))
                .collect();
            prom.set_targets(&t);
        };
        write();
        let k6 = s.k6(&load(40, Duration::from_secs(30)));
        let busiest = kn.busiest_pod(3, Duration::from_secs(60)).await;
        let q = |promql: String| {
            let prom = &prom;
            async move { prom.query(&kn.node, &promql).await }
        };
        let value = |r: Vec<(serde_json::Value, f64)>| r.first().map(|(_, v)| *v);
        kn.until("prometheus has the busiest pod's sessions", Duration::from_secs(30), || async {
            write();
            value(q(format!("stickyd_sessions_active{{pod=\"{busiest}\"}}")).await).is_some_and(|v| v >= 1.0)
        })
        .await;
        s.scale_down_removing(&busiest).await;
        let alerted = std::cell::Cell::new(None);
        let emptied = std::cell::Cell::new(None);
        kn.until(
            "prometheus: the drained pod at 0 sessions while its peers take new ones, and StickydDrainNearMax firing",
            Duration::from_secs(60),
            || async {
                write();
                let own = value(q(format!("stickyd_sessions_active{{pod=\"{busiest}\"}}")).await);
                let peers = value(q(format!("sum(stickyd_sessions_active{{pod!=\"{busiest}\"}})")).await);
                let new_there = value(
                    q(format!(
                        "sum(increase(stickyd_requests_total{{session=\"new\",target_pod=\"{busiest}\"}}[5s]))"
                    ))
                    .await,
                );
                let new_peers = value(
                    q(format!(
                        "sum(increase(stickyd_requests_total{{session=\"new\",target_pod!=\"{busiest}\"}}[5s]))"
                    ))
                    .await,
                );
                if emptied.get().is_none()
                    && own == Some(0.0)
                    && peers.is_some_and(|p| p > 0.0)
                    && new_there.is_none_or(|n| n == 0.0)
                    && new_peers.is_some_and(|n| n > 0.0)
                {
                    kn.clock.event(format!(
                        "prometheus: {busiest} at 0 sessions, its peers at {peers:?}, new sessions on the peers {new_peers:?}"
                    ));
                    emptied.set(Some(kn.clock.now()));
                }
                if alerted.get().is_none() {
                    let firing = prom.firing(&kn.node).await;
                    if firing.iter().any(|a| a["alertname"] == "StickydDrainNearMax" && a["pod"] == busiest.as_str())
                    {
                        kn.clock.event(format!("prometheus: StickydDrainNearMax firing for {busiest}: {firing:?}"));
                        alerted.set(Some(kn.clock.now()));
                    }
                }
                emptied.get().is_some() && alerted.get().is_some()
            },
        )
        .await;
        let ended = kn.until_ended(1, Duration::from_secs(60)).await;
        let out = k6.finish().await;
        out.report(test, &kn.clock);
        let e = &ended[0];
        assert_eq!(e.pod, busiest);
        let v: serde_json::Value = serde_json::from_str(&e.prestop[0].body).unwrap();
        assert_eq!(v["reason"], "max", "the drain was forced to its max: {v}");
        assert_eq!(out.failed().len(), 0, "failed requests");
        // No false alarm: the other alerts stayed quiet.
        let others: Vec<_> = prom
            .firing(&kn.node)
            .await
            .into_iter()
            .filter(|a| a["alertname"] != "StickydDrainNearMax")
            .collect();
        assert!(others.is_empty(), "other alerts fired: {others:?}\n{}", prom.log_text());
    })
    .await;
}
