//! The Kubernetes endpoint source against the apiserver double: first the
//! library's `spawn` with a real kube client, then the `stickyd` binary
//! pointed at the double through a kubeconfig file.

#[path = "apiserver/mod.rs"]
mod apiserver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::{slice, ApiServer};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, WatchEvent, WatchParams};
use stickyd::endpoints::kubernetes::{self, PortSelector};
use stickyd::endpoints::{EndpointStore, View};
use stickyd::metrics::Metrics;

const NS: &str = "shop";
const SVC: &str = "web";
const PORT: u16 = 8080;
/// Every change must show up within this long.
const FOLLOW: Duration = Duration::from_secs(1);
/// Long enough for the watcher's default backoff (0.8 s doubling, jittered)
/// to retry a few times after an outage.
const RECOVER: Duration = Duration::from_secs(15);

type Ep<'a> = (&'a str, &'a str, bool, bool, bool);
type Peers = Vec<(String, String, &'static str)>;

fn ready<'a>(pod: &'a str, ip: &'a str) -> Ep<'a> {
    (pod, ip, true, true, false)
}

fn draining<'a>(pod: &'a str, ip: &'a str) -> Ep<'a> {
    (pod, ip, false, true, true)
}

fn web(name: &str, endpoints: &[Ep<'_>]) -> serde_json::Value {
    slice(SVC, name, ("http", PORT), endpoints)
}

/// The library source, watching the double; aborted on drop.
struct Source {
    store: EndpointStore,
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn source(api: &ApiServer) -> Source {
    let store = EndpointStore::default();
    let metrics = Arc::new(Metrics::default());
    let task = kubernetes::spawn(
        api.client(),
        NS,
        SVC,
        PortSelector::Number(PORT),
        store.clone(),
        metrics.clone(),
    );
    Source { store, metrics, task }
}

fn peers(view: &View) -> Vec<(String, String, &'static str)> {
    view.peers()
        .iter()
        .map(|p| (p.name.clone(), p.addr.to_string(), p.state.as_str()))
        .collect()
}

fn p(name: &str, ip: &str, state: &'static str) -> (String, String, &'static str) {
    (name.into(), format!("{ip}:{PORT}"), state)
}

/// Polls until `ok` holds, or panics after `within` with what was seen.
async fn until<T: std::fmt::Debug>(within: Duration, what: &str, mut probe: impl FnMut() -> (bool, T)) -> Duration {
    let start = Instant::now();
    loop {
        let (ok, seen) = probe();
        if ok {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!("{what}: not within {within:?}; last seen {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the synced view's peers are `want`; returns how long it took.
async fn view_is(src: &Source, within: Duration, want: &[(String, String, &'static str)]) -> Duration {
    until(within, "endpoint view", || {
        let v = src.store.load();
        (v.synced && peers(&v) == want, (v.synced, v.generation, peers(&v)))
    })
    .await
}

#[tokio::test]
async fn follows_every_change_within_a_second() {
    let api = ApiServer::spawn().await;
    api.set_slice(
        NS,
        web("web-a", &[ready("web-0", "10.0.0.1"), ready("web-1", "10.0.0.2")]),
    );
    let src = source(&api);
    view_is(
        &src,
        FOLLOW * 5,
        &[p("web-0", "10.0.0.1", "ready"), p("web-1", "10.0.0.2", "ready")],
    )
    .await;
    assert_eq!(src.metrics.endpoints_synced.get(), 1);

    let mut slowest = Duration::ZERO;
    let steps: Vec<(Vec<Ep<'_>>, Peers)> = vec![
        // Scale up.
        (
            vec![
                ready("web-0", "10.0.0.1"),
                ready("web-1", "10.0.0.2"),
                ready("web-2", "10.0.0.3"),
            ],
            vec![
                p("web-0", "10.0.0.1", "ready"),
                p("web-1", "10.0.0.2", "ready"),
                p("web-2", "10.0.0.3", "ready"),
            ],
        ),
        // web-1 terminates: it drains.
        (
            vec![
                ready("web-0", "10.0.0.1"),
                draining("web-1", "10.0.0.2"),
                ready("web-2", "10.0.0.3"),
            ],
            vec![
                p("web-0", "10.0.0.1", "ready"),
                p("web-1", "10.0.0.2", "draining"),
                p("web-2", "10.0.0.3", "ready"),
            ],
        ),
        // web-1 stops serving: gone, although still listed.
        (
            vec![
                ready("web-0", "10.0.0.1"),
                ("web-1", "10.0.0.2", false, false, true),
                ready("web-2", "10.0.0.3"),
            ],
            vec![p("web-0", "10.0.0.1", "ready"), p("web-2", "10.0.0.3", "ready")],
        ),
        // Scale down to one.
        (vec![ready("web-2", "10.0.0.3")], vec![p("web-2", "10.0.0.3", "ready")]),
    ];
    for (endpoints, want) in steps {
        let generation = src.store.load().generation;
        api.set_slice(NS, web("web-a", &endpoints));
        slowest = slowest.max(view_is(&src, FOLLOW, &want).await);
        assert_eq!(src.store.load().generation, generation + 1, "one swap per change");
    }
    assert!(api.delete_slice(NS, "web-a"));
    slowest = slowest.max(view_is(&src, FOLLOW, &[]).await);
    assert!(src.store.load().synced);
    let text = metrics_text(&src.metrics);
    assert!(text.contains("stickyd_endpoints{state=\"ready\"} 0"), "{text}");
    assert_eq!(src.metrics.kube_watch_errors.get(), 0);
    eprintln!("slowest change followed in {slowest:?}");
}

fn metrics_text(m: &Metrics) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry()).unwrap();
    out
}

#[tokio::test]
async fn merges_the_services_slices_and_ignores_the_rest() {
    let api = ApiServer::spawn().await;
    api.set_slice(
        NS,
        web("web-a", &[ready("web-0", "10.0.0.1"), draining("web-1", "10.0.0.2")]),
    );
    api.set_slice(NS, web("web-b", &[ready("web-2", "10.0.0.3")]));
    // Another service in the namespace, and the same service name elsewhere.
    api.set_slice(NS, slice("db", "db-a", ("http", PORT), &[ready("db-0", "10.0.9.1")]));
    api.set_slice("other", web("web-x", &[ready("web-x", "10.0.8.1")]));
    let src = source(&api);
    view_is(
        &src,
        FOLLOW * 5,
        &[
            p("web-0", "10.0.0.1", "ready"),
            p("web-1", "10.0.0.2", "draining"),
            p("web-2", "10.0.0.3", "ready"),
        ],
    )
    .await;

    // The controller moves web-1 to slice b as ready before it leaves a.
    api.set_slice(
        NS,
        web("web-b", &[ready("web-2", "10.0.0.3"), ready("web-1", "10.0.0.2")]),
    );
    view_is(
        &src,
        FOLLOW,
        &[
            p("web-0", "10.0.0.1", "ready"),
            p("web-1", "10.0.0.2", "ready"),
            p("web-2", "10.0.0.3", "ready"),
        ],
    )
    .await;
    api.set_slice(NS, web("web-a", &[ready("web-0", "10.0.0.1")]));
    api.set_slice(NS, slice("db", "db-a", ("http", PORT), &[ready("db-1", "10.0.9.2")]));
    // A slice relabelled to another service leaves the view.
    api.set_slice(NS, slice("db", "web-b", ("http", PORT), &[ready("web-2", "10.0.0.3")]));
    view_is(&src, FOLLOW, &[p("web-0", "10.0.0.1", "ready")]).await;
    // Slices of other ports are not the sidecar's.
    api.set_slice(NS, slice(SVC, "web-c", ("grpc", 9000), &[ready("web-5", "10.0.0.5")]));
    api.set_slice(NS, web("web-d", &[ready("web-6", "fd00::6")]));
    view_is(
        &src,
        FOLLOW,
        &[
            p("web-0", "10.0.0.1", "ready"),
            ("web-6".into(), "[fd00::6]:8080".into(), "ready"),
        ],
    )
    .await;
}

#[tokio::test]
async fn api_down_at_start_serves_unsynced_then_syncs() {
    let api = ApiServer::spawn().await;
    api.set_slice(NS, web("web-a", &[ready("web-0", "10.0.0.1")]));
    api.stop();
    let src = source(&api);
    until(RECOVER, "watch errors counted", || {
        let n = src.metrics.kube_watch_errors.get();
        (n >= 2, n)
    })
    .await;
    let v = src.store.load();
    assert!(!v.synced, "no view before a successful list");
    assert!(v.is_empty());
    api.start().await;
    view_is(&src, RECOVER, &[p("web-0", "10.0.0.1", "ready")]).await;
    assert_eq!(src.metrics.endpoints_synced.get(), 1);
    // And it follows changes again at once.
    api.set_slice(
        NS,
        web("web-a", &[ready("web-0", "10.0.0.1"), ready("web-1", "10.0.0.2")]),
    );
    view_is(
        &src,
        FOLLOW,
        &[p("web-0", "10.0.0.1", "ready"), p("web-1", "10.0.0.2", "ready")],
    )
    .await;
}

#[tokio::test]
async fn outages_keep_the_last_good_view() {
    let api = ApiServer::spawn().await;
    api.set_slice(
        NS,
        web("web-a", &[ready("web-0", "10.0.0.1"), ready("web-1", "10.0.0.2")]),
    );
    let src = source(&api);
    let both = [p("web-0", "10.0.0.1", "ready"), p("web-1", "10.0.0.2", "ready")];
    view_is(&src, FOLLOW * 5, &both).await;
    let generation = src.store.load().generation;

    // 5xx for a while, and the open watch breaks. (kube's client retries a
    // 503 itself; a 500 reaches the watcher.)
    api.fail_with(500, Duration::from_secs(2));
    api.drop_watches();
    until(RECOVER, "5xx counted", || {
        let n = src.metrics.kube_watch_errors.get();
        (n >= 1, n)
    })
    .await;
    assert_eq!(peers(&src.store.load()), both);
    assert_eq!(src.store.load().generation, generation, "the view is kept as it is");
    api.set_slice(NS, web("web-a", &[ready("web-1", "10.0.0.2")]));
    view_is(&src, RECOVER, &[p("web-1", "10.0.0.2", "ready")]).await;

    // A 503 window is retried inside the client; the view stays and the
    // change made during it arrives after it.
    api.fail_with(503, Duration::from_secs(1));
    api.drop_watches();
    api.set_slice(
        NS,
        web("web-a", &[ready("web-1", "10.0.0.2"), ready("web-2", "10.0.0.3")]),
    );
    view_is(
        &src,
        RECOVER,
        &[p("web-1", "10.0.0.2", "ready"), p("web-2", "10.0.0.3", "ready")],
    )
    .await;
    api.set_slice(NS, web("web-a", &[ready("web-1", "10.0.0.2")]));
    view_is(&src, FOLLOW, &[p("web-1", "10.0.0.2", "ready")]).await;

    // Down entirely.
    let errors = src.metrics.kube_watch_errors.get();
    let generation = src.store.load().generation;
    api.stop();
    until(RECOVER, "connection failures counted", || {
        let n = src.metrics.kube_watch_errors.get();
        (n > errors, n)
    })
    .await;
    assert!(src.store.load().synced);
    assert_eq!(src.store.load().generation, generation);
    assert_eq!(peers(&src.store.load()), [p("web-1", "10.0.0.2", "ready")]);
    api.start().await;
    api.set_slice(
        NS,
        web("web-a", &[ready("web-1", "10.0.0.2"), ready("web-2", "10.0.0.3")]),
    );
    view_is(
        &src,
        RECOVER,
        &[p("web-1", "10.0.0.2", "ready"), p("web-2", "10.0.0.3", "ready")],
    )
    .await;
    // Back to normal speed.
    api.set_slice(NS, web("web-a", &[ready("web-2", "10.0.0.3")]));
    view_is(&src, FOLLOW, &[p("web-2", "10.0.0.3", "ready")]).await;
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_its_resource_version() {
    let api = ApiServer::spawn().await;
    api.set_slice(NS, web("web-a", &[ready("web-0", "10.0.0.1")]));
    let src = source(&api);
    view_is(&src, FOLLOW * 5, &[p("web-0", "10.0.0.1", "ready")]).await;
    until(FOLLOW, "watch open", || (api.watches() == 1, api.watches())).await;
    let lists = api.lists();
    for i in 2..5u8 {
        api.drop_watches();
        let ip = format!("10.0.0.{i}");
        api.set_slice(NS, web("web-a", &[ready("web-0", "10.0.0.1"), ready("web-n", &ip)]));
        view_is(
            &src,
            FOLLOW,
            &[p("web-0", "10.0.0.1", "ready"), p("web-n", &ip, "ready")],
        )
        .await;
    }
    assert_eq!(api.lists(), lists, "a broken watch resumes, it does not relist");
    assert!(api.watches() >= 4);
    let resumed: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.contains("watch=true"))
        .collect();
    for r in &resumed {
        assert!(r.contains("allowWatchBookmarks=true"), "bookmarks requested: {r}");
        assert!(
            r.contains("labelSelector=kubernetes.io%2Fservice-name%3Dweb"),
            "selector: {r}"
        );
        assert!(
            r.starts_with("GET /apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?"),
            "{r}"
        );
        assert!(
            !r.contains("resourceVersion=0&") && !r.ends_with("resourceVersion=0"),
            "{r}"
        );
    }
}

#[tokio::test]
async fn gone_410_relists_and_replaces_the_view() {
    let api = ApiServer::spawn().await;
    api.set_slice(NS, web("web-a", &[ready("web-0", "10.0.0.1")]));
    api.set_slice(NS, web("web-b", &[ready("web-1", "10.0.0.2")]));
    let src = source(&api);
    view_is(
        &src,
        FOLLOW * 5,
        &[p("web-0", "10.0.0.1", "ready"), p("web-1", "10.0.0.2", "ready")],
    )
    .await;
    let lists = api.lists();

    // While the watch is broken, slice b goes and c comes, and the history
    // the watch would resume from is compacted away.
    api.stop();
    api.delete_slice(NS, "web-b");
    api.set_slice(NS, web("web-c", &[ready("web-2", "10.0.0.3")]));
    api.compact();
    api.start().await;
    view_is(
        &src,
        RECOVER,
        &[p("web-0", "10.0.0.1", "ready"), p("web-2", "10.0.0.3", "ready")],
    )
    .await;
    assert!(api.lists() > lists, "a 410 relists");
    assert!(src.metrics.kube_watch_errors.get() >= 1);

    // The same with the watch open: compacted, then broken.
    api.set_slice(NS, web("web-c", &[ready("web-3", "10.0.0.4")]));
    view_is(
        &src,
        FOLLOW,
        &[p("web-0", "10.0.0.1", "ready"), p("web-3", "10.0.0.4", "ready")],
    )
    .await;
    let lists = api.lists();
    api.compact();
    api.drop_watches();
    until(RECOVER, "relist after 410", || (api.lists() > lists, api.lists())).await;
    api.delete_slice(NS, "web-a");
    view_is(&src, RECOVER, &[p("web-3", "10.0.0.4", "ready")]).await;
}

#[tokio::test]
async fn the_double_follows_the_watch_conventions() {
    let api = ApiServer::spawn().await;
    let first = api.set_slice(NS, web("web-a", &[ready("web-0", "10.0.0.1")]));
    api.set_slice(NS, slice("db", "db-a", ("http", PORT), &[ready("db-0", "10.0.9.1")]));
    let slices: Api<EndpointSlice> = Api::namespaced(api.client(), NS);
    let sel = format!("kubernetes.io/service-name={SVC}");

    // A list has the current resourceVersion, items their own.
    let list = slices
        .list(&kube::api::ListParams::default().labels(&sel))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.metadata.resource_version, Some(api.resource_version().to_string()));
    assert_eq!(list.items[0].metadata.resource_version, Some(first.to_string()));
    let rv = list.metadata.resource_version.unwrap();

    // A watch from the list's version: events after it, bookmarks when asked.
    let wp = WatchParams::default().labels(&sel).timeout(10);
    let mut events = slices.watch(&wp, &rv).await.unwrap().boxed();
    let second = api.set_slice(NS, web("web-a", &[ready("web-1", "10.0.0.2")]));
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Modified(s)) => assert_eq!(s.metadata.resource_version, Some(second.to_string())),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no bookmark");
        if let Some(WatchEvent::Bookmark(b)) = events.try_next().await.unwrap() {
            assert_eq!(b.metadata.resource_version, second.to_string());
            break;
        }
    }
    drop(events);

    // From version 0: the current objects as ADDED.
    let mut events = slices.watch(&wp, "0").await.unwrap().boxed();
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Added(s)) => assert_eq!(s.metadata.name.as_deref(), Some("web-a")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    drop(events);

    // Too old after compaction: an ERROR event with a 410 Expired Status.
    api.compact();
    let mut events = slices.watch(&wp, &rv).await.unwrap().boxed();
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR, got {other:?}"),
    }
    assert!(
        events.try_next().await.unwrap().is_none(),
        "the stream ends after the error"
    );

    // 5xx for a while, as a Status.
    api.fail_with(500, Duration::from_millis(300));
    match slices.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 500),
        other => panic!("expected a 500, got {other:?}"),
    }
    let start = Instant::now();
    loop {
        match slices.list(&Default::default()).await {
            Ok(list) => {
                assert_eq!(list.items.len(), 2, "no label selector: every slice of the namespace");
                assert!(start.elapsed() >= Duration::from_millis(200), "{:?}", start.elapsed());
                break;
            }
            Err(e) if start.elapsed() < Duration::from_secs(2) => {
                assert!(matches!(&e, kube::Error::Api(s) if s.code == 500), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("still failing after the window: {e}"),
        }
    }

    // A dropped watch breaks mid-stream, without the last chunk.
    let mut events = slices
        .watch(&wp, &api.resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    api.drop_watches();
    let end = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap();
    assert!(
        end.is_none(),
        "a broken chunked stream ends the watch for the client: {end:?}"
    );
}
