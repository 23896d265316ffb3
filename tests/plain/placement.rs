//! Least-sessions placement (STICKYD_NEW_SESSIONS) on real processes: three
//! pods holding about 300 sessions each behind a random load balancer, a
//! fourth pod added, and 300 new sessions. With `least-sessions` most of them
//! land on the new pod; with `local` about a quarter. Established sessions
//! never move in either mode.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::common::*;

/// Sessions established on the first three pods (about 300 each).
const ESTABLISHED: usize = 900;
/// New sessions after the fourth pod joins.
const NEW: usize = 300;
/// Sessions in flight at once.
const PARALLEL: usize = 25;

struct Cluster {
    pods: Vec<(App, Stickyd)>,
    lb: RandomLb,
    file: std::path::PathBuf,
    listens: Vec<(String, SocketAddr)>,
    admin_port: u16,
    mode: &'static str,
    base: &'static str,
    /// Pod i (from 0) is on `base`.(offset + i + 1), the load balancer on
    /// `base`.(offset + 100).
    offset: usize,
    /// More env for every sidecar.
    extra: Vec<(&'static str, String)>,
}

impl Cluster {
    async fn start(base: &'static str, mode: &'static str, pods: usize) -> Cluster {
        Cluster::start_with(base, 0, mode, pods, Vec::new()).await
    }

    async fn start_with(
        base: &'static str,
        offset: usize,
        mode: &'static str,
        pods: usize,
        extra: Vec<(&'static str, String)>,
    ) -> Cluster {
        let admin_port = SHARED_ADMIN_PORT;
        let file = temp_path("placement-peers");
        let listens: Vec<(String, SocketAddr)> = (1..=pods)
            .map(|i| (format!("pod-{i}"), addr_on(&format!("{base}.{}", offset + i))))
            .collect();
        let lb_ip = format!("{base}.{}", offset + 100);
        let mut c = Cluster {
            pods: Vec::new(),
            lb: RandomLb::start_on(&lb_ip, listens.iter().map(|(_, a)| *a).collect()).await,
            file,
            listens,
            admin_port,
            mode,
            base,
            offset,
            extra,
        };
        c.write_peers();
        for i in 0..pods {
            c.start_pod(i).await;
        }
        c
    }

    fn write_peers(&self) {
        let peers: Vec<(&str, SocketAddr)> = self.listens.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        write_peers(&self.file, &peers);
    }

    async fn start_pod(&mut self, i: usize) {
        let (name, listen) = self.listens[i].clone();
        let ip = format!("{}.{}", self.base, self.offset + i + 1);
        let app = App::start(&name, &ip).await;
        let mut env = vec![
            ("STICKYD_ENDPOINTS", format!("file:{}", self.file.display())),
            ("STICKYD_ADMIN_LISTEN", format!("{ip}:{}", self.admin_port)),
            ("STICKYD_NEW_SESSIONS", self.mode.to_string()),
            // As `stickyd inject` writes it: least-sessions needs the key.
            ("STICKYD_COOKIE_SECRET", "placement-test-key-0123456789".to_string()),
        ];
        env.extend(self.extra.iter().cloned());
        let sidecar = Stickyd::start(&name, listen, app.addr, &env).await;
        self.pods.push((app, sidecar));
    }

    /// Adds a pod to the file every sidecar reads, starts it, and puts it
    /// behind the load balancer once every view has it.
    async fn add_pod(&mut self) {
        let i = self.listens.len();
        self.listens.push((
            format!("pod-{}", i + 1),
            addr_on(&format!("{}.{}", self.base, self.offset + i + 1)),
        ));
        self.write_peers();
        self.start_pod(i).await;
        let names: Vec<&str> = self.listens.iter().map(|(n, _)| n.as_str()).collect();
        for (_, s) in &self.pods {
            wait_for_view(s, &names).await;
        }
        self.lb.set_backends(self.listens.iter().map(|(_, a)| *a).collect());
    }

    fn url(&self) -> String {
        format!("http://{}/", self.lb.addr)
    }

    /// `stickyd_new_sessions_total{placed}` summed over the pods.
    async fn placements(&self) -> HashMap<&'static str, u64> {
        let mut out = HashMap::new();
        for (_, s) in &self.pods {
            let text = s.metrics().await;
            for placed in ["local", "peer"] {
                let series = format!("stickyd_new_sessions_total{{placed=\"{placed}\"}} ");
                let n: u64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&series))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{series} in {text}"));
                *out.entry(placed).or_insert(0) += n;
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// `n` new sessions of one request each, through the load balancer. No
/// response lets a session count out to the client.
async fn new_sessions(url: &str, n: usize) -> Vec<Session> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let batch = PARALLEL.min(n - all.len());
        let done = futures_util::future::join_all((0..batch).map(|_| async {
            let mut s = Session::default();
            let r = s.get(url).await.expect("a new session");
            assert_eq!(r.status, 200, "{r:?}");
            assert!(r.headers.get("x-stickyd-sessions").is_none(), "{r:?}");
            assert!(s.cookie.is_some(), "the serving pod issues the cookie: {r:?}");
            assert_eq!(r.field("session"), "new", "{r:?}");
            s
        }))
        .await;
        all.extend(done);
    }
    all
}

/// One more request of every session: each stays on its pod.
async fn assert_never_moved(url: &str, sessions: &mut [Session]) {
    for chunk in sessions.chunks_mut(PARALLEL) {
        futures_util::future::join_all(chunk.iter_mut().map(|s| async {
            let r = s.get(url).await.expect("a session's request");
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.field("session"), "pinned", "{r:?}");
            assert!(r.headers.get("x-stickyd-sessions").is_none(), "{r:?}");
        }))
        .await;
    }
    let moved = sessions.iter().filter(|s| s.moves() > 0).count();
    assert_eq!(moved, 0, "established sessions moved");
}

/// Three pods with about 300 sessions each, a fourth added, 300 new
/// sessions: how many land on the fourth.
async fn scale_up(base: &'static str, mode: &'static str) -> (usize, Cluster) {
    let mut c = Cluster::start(base, mode, 3).await;
    let mut established = new_sessions(&c.url(), ESTABLISHED).await;
    let spread = tally(&established);
    eprintln!("{mode}: {ESTABLISHED} sessions established: {spread:?}");
    for pod in ["pod-1", "pod-2", "pod-3"] {
        let n = spread.get(pod).copied().unwrap_or(0);
        assert!(
            (200..=400).contains(&n),
            "{mode}: about 300 sessions on {pod}: {spread:?}"
        );
    }
    c.add_pod().await;
    if mode == "least-sessions" {
        // The first three learn the new pod's count from its admin port
        // (the refresher asks once a second).
        for (_, s) in &c.pods[..3] {
            wait_for_endpoints(s, "count of pod-4", |v| v["sessions"]["pod-4"].as_u64() == Some(0)).await;
        }
    }
    let fresh = new_sessions(&c.url(), NEW).await;
    let landed = tally(&fresh);
    let on_new = landed.get("pod-4").copied().unwrap_or(0);
    eprintln!("{mode}: {on_new} of {NEW} new sessions on pod-4: {landed:?}");
    assert_never_moved(&c.url(), &mut established).await;
    let placed = c.placements().await;
    assert_eq!(
        placed["local"] + placed["peer"],
        (ESTABLISHED + NEW) as u64,
        "every new session counted once, where it entered: {placed:?}"
    );
    if mode == "local" {
        assert_eq!(placed["peer"], 0, "{placed:?}");
    } else {
        assert!(placed["peer"] >= on_new as u64 / 2, "{placed:?}, {on_new} on pod-4");
    }
    (on_new, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_sessions_sends_most_new_sessions_to_a_new_pod() {
    let (on_new, c) = scale_up("127.0.170", "least-sessions").await;
    // Expected about 75 %: a new session entering at pod-4 (1 in 4) stays
    // there; one entering at another pod (3 in 4) samples two of its three
    // peers, pod-4 among them 2 times in 3, and pod-4 has the fewest:
    // 1/4 + 3/4 * 2/3 = 3/4.
    assert!(on_new * 100 > NEW * 50, "{on_new} of {NEW} on pod-4");
    // The new pod learned the others' counts: all three known.
    let pod4 = &c.pods[3].1;
    wait_for_endpoints(pod4, "counts of its peers", |v| {
        ["pod-1", "pod-2", "pod-3"]
            .iter()
            .all(|p| v["sessions"][p].as_u64().is_some_and(|n| n >= 200))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_placement_gives_a_new_pod_about_a_quarter() {
    let (on_new, c) = scale_up("127.0.171", "local").await;
    // Expected 25 %: the load balancer's share of the new pod.
    assert!(
        (NEW * 10..=NEW * 45).contains(&(on_new * 100)),
        "{on_new} of {NEW} on pod-4"
    );
    // No counts are kept or shown in this mode.
    let body = admin_get(&c.pods[0].1, "/endpoints").await.unwrap().body;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v.get("sessions").is_none(), "{v}");
}

/// How a mode carries the token: the request header that sends it back,
/// from the response that issued it.
fn token_of(mode: &str, r: &Resp) -> (&'static str, String) {
    let set_cookie = |name: &str| {
        r.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(name)?.strip_prefix('='))
            .map(|v| format!("{name}={}", v.split(';').next().unwrap()))
    };
    match mode {
        "cookie" => ("cookie", set_cookie("stickyd").expect("stickyd's cookie")),
        "header" => (
            "x-stickyd-affinity",
            r.headers
                .get("x-stickyd-affinity")
                .expect("the affinity header")
                .to_str()
                .unwrap()
                .to_string(),
        ),
        "app-cookie" => ("cookie", set_cookie("app").expect("the app's cookie, prefixed")),
        _ => unreachable!(),
    }
}

/// In every affinity mode, the peer a new session is placed on serves it as
/// new and issues the token naming itself: the next request, wherever it
/// lands, goes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placed_peer_issues_the_token_in_every_affinity_mode() {
    for (n, mode) in ["cookie", "header", "app-cookie"].into_iter().enumerate() {
        let mut extra = vec![("STICKYD_AFFINITY", mode.to_string())];
        if mode == "app-cookie" {
            extra.push(("STICKYD_APP_COOKIE", "app".to_string()));
        }
        let c = Cluster::start_with("127.0.171", 10 * (n + 1), "least-sessions", 2, extra).await;
        let (pod1, pod2) = (&c.pods[0].1, &c.pods[1].1);
        let at_pod1 = format!("http://{}/", pod1.listen);
        // One session on pod-1, none on pod-2: once pod-1 knows pod-2's
        // count, its next new session goes to pod-2.
        let first = get(&at_pod1, &[]).await.unwrap();
        assert_eq!(
            (first.pod(), first.field("session")),
            ("pod-1", "new"),
            "{mode}: {first:?}"
        );
        wait_for_endpoints(pod1, "counts", |v| {
            v["sessions"]["pod-1"].as_u64() == Some(1) && v["sessions"]["pod-2"].as_u64() == Some(0)
        })
        .await;
        let placed = get(&at_pod1, &[]).await.unwrap();
        assert_eq!(placed.status, 200, "{mode}: {placed:?}");
        assert_eq!(
            (placed.pod(), placed.field("session")),
            ("pod-2", "new"),
            "{mode}: {placed:?}"
        );
        assert!(placed.headers.get("x-stickyd-sessions").is_none(), "{mode}: {placed:?}");
        let (name, value) = token_of(mode, &placed);
        // Back through pod-1, and through pod-2 directly: pinned to pod-2.
        for s in [pod1, pod2] {
            let r = get(&format!("http://{}/", s.listen), &[(name, value.as_str())])
                .await
                .unwrap();
            assert_eq!(
                (r.pod(), r.field("session")),
                ("pod-2", "pinned"),
                "{mode} via {}: {r:?}",
                s.pod
            );
        }
        // pod-1 learned pod-2's count from the forwarded response.
        wait_for_endpoints(pod1, "pod-2's count", |v| v["sessions"]["pod-2"].as_u64() == Some(1)).await;
    }
}
