//! The Kubernetes endpoint source against the apiserver double: first the
//! library's `spawn` with a real kube client, then the `stickyd` binary
//! pointed at the double through a kubeconfig file.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{eventually, sample};

use crate::apiserver::{slice, ApiServer};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, WatchEvent, WatchParams};
use stickyd::endpoints::kubernetes::{self, PortSelector};
use stickyd::endpoints::{EndpointStore, View};
use stickyd::metrics::Metrics;

const NS: &str = "shop";
const SVC: &str = "web";
const PORT: u16 = 8080;
/// A hang guard for a change to show up: changes come by the open watch,
/// without a relist (the tests count the lists), never by waiting.
const FOLLOW: Duration = Duration::from_secs(10);
/// Long enough for the watcher's default backoff (0.8 s doubling, jittered)
/// to retry a few times after an outage.
const RECOVER: Duration = Duration::from_secs(10);
/// No test runs longer than this.
const TEST_LIMIT: Duration = Duration::from_secs(30);

/// Runs a test body, failing it if it has not finished within [`TEST_LIMIT`].
async fn bounded(body: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("the test did not finish within {TEST_LIMIT:?}");
    }
}

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

/// Waits until the synced view's peers are `want`.
async fn view_is(src: &Source, within: Duration, want: &[(String, String, &'static str)]) {
    eventually(within, "endpoint view", || {
        let v = src.store.load();
        std::future::ready((v.synced && peers(&v) == want, (v.synced, v.generation, peers(&v))))
    })
    .await;
}

#[tokio::test]
async fn follows_every_change_by_the_watch() {
    bounded(async {
        let api = ApiServer::spawn().await;
        api.set_slice(
            NS,
            web("web-a", &[ready("web-0", "10.0.0.1"), ready("web-1", "10.0.0.2")]),
        );
        let src = source(&api);
        view_is(
            &src,
            FOLLOW,
            &[p("web-0", "10.0.0.1", "ready"), p("web-1", "10.0.0.2", "ready")],
        )
        .await;
        assert_eq!(src.metrics.endpoints_synced.get(), 1);

        let lists = api.lists();
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
            view_is(&src, FOLLOW, &want).await;
            assert_eq!(src.store.load().generation, generation + 1, "one swap per change");
            assert_eq!(api.lists(), lists, "followed by the watch, not by a relist");
        }
        assert!(api.delete_slice(NS, "web-a"));
        view_is(&src, FOLLOW, &[]).await;
        assert_eq!(api.lists(), lists, "followed by the watch, not by a relist");
        assert!(src.store.load().synced);
        let text = metrics_text(&src.metrics);
        assert!(text.contains("stickyd_endpoints{state=\"ready\"} 0"), "{text}");
        assert_eq!(src.metrics.kube_watch_errors.get(), 0);
    })
    .await
}

fn metrics_text(m: &Metrics) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry()).unwrap();
    out
}

#[tokio::test]
async fn merges_the_services_slices_and_ignores_the_rest() {
    bounded(async {
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
            FOLLOW,
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
    })
    .await
}

#[tokio::test]
async fn api_down_at_start_serves_unsynced_then_syncs() {
    bounded(async {
        let api = ApiServer::spawn().await;
        api.set_slice(NS, web("web-a", &[ready("web-0", "10.0.0.1")]));
        api.stop();
        let src = source(&api);
        eventually(RECOVER, "watch errors counted", || {
            let n = src.metrics.kube_watch_errors.get();
            std::future::ready((n >= 2, n))
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
    })
    .await
}

#[tokio::test]
async fn outages_keep_the_last_good_view() {
    bounded(async {
        let api = ApiServer::spawn().await;
        api.set_slice(
            NS,
            web("web-a", &[ready("web-0", "10.0.0.1"), ready("web-1", "10.0.0.2")]),
        );
        let src = source(&api);
        let both = [p("web-0", "10.0.0.1", "ready"), p("web-1", "10.0.0.2", "ready")];
        view_is(&src, FOLLOW, &both).await;
        let generation = src.store.load().generation;

        // 5xx for a while, and the open watch breaks.
        api.fail_with(500, Duration::from_secs(2));
        api.drop_watches();
        eventually(RECOVER, "5xx counted", || {
            let n = src.metrics.kube_watch_errors.get();
            std::future::ready((n >= 1, n))
        })
        .await;
        assert_eq!(peers(&src.store.load()), both);
        assert_eq!(src.store.load().generation, generation, "the view is kept as it is");
        api.set_slice(NS, web("web-a", &[ready("web-1", "10.0.0.2")]));
        view_is(&src, RECOVER, &[p("web-1", "10.0.0.2", "ready")]).await;

        // 503 (kube's client would retry it for minutes on its own; the source
        // turns that off): counted like any failed attempt, the view kept, and
        // the change made meanwhile arrives after it.
        let errors = src.metrics.kube_watch_errors.get();
        api.fail_with(503, Duration::from_secs(1));
        api.drop_watches();
        eventually(RECOVER, "503 counted", || {
            let n = src.metrics.kube_watch_errors.get();
            std::future::ready((n > errors, n))
        })
        .await;
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
        eventually(RECOVER, "connection failures counted", || {
            let n = src.metrics.kube_watch_errors.get();
            std::future::ready((n > errors, n))
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
    })
    .await
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_its_resource_version() {
    bounded(async {
        let api = ApiServer::spawn().await;
        api.set_slice(NS, web("web-a", &[ready("web-0", "10.0.0.1")]));
        let src = source(&api);
        view_is(&src, FOLLOW, &[p("web-0", "10.0.0.1", "ready")]).await;
        eventually(FOLLOW, "watch open", || {
            std::future::ready((api.watches() == 1, api.watches()))
        })
        .await;
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
    })
    .await
}

#[tokio::test]
async fn gone_410_relists_and_replaces_the_view() {
    bounded(async {
        let api = ApiServer::spawn().await;
        api.set_slice(NS, web("web-a", &[ready("web-0", "10.0.0.1")]));
        api.set_slice(NS, web("web-b", &[ready("web-1", "10.0.0.2")]));
        let src = source(&api);
        view_is(
            &src,
            FOLLOW,
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
        eventually(RECOVER, "relist after 410", || {
            std::future::ready((api.lists() > lists, api.lists()))
        })
        .await;
        api.delete_slice(NS, "web-a");
        view_is(&src, RECOVER, &[p("web-3", "10.0.0.4", "ready")]).await;
    })
    .await
}

#[tokio::test]
async fn the_double_follows_the_watch_conventions() {
    bounded(async {
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

        // 5xx for a while, as a Status, then served again.
        api.fail_with(500, Duration::from_millis(300));
        match slices.list(&Default::default()).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 500),
            other => panic!("expected a 500, got {other:?}"),
        }
        let list = eventually(RECOVER, "served after the failure", || async {
            match slices.list(&Default::default()).await {
                Ok(list) => (true, Some(list)),
                Err(e) => {
                    assert!(matches!(&e, kube::Error::Api(s) if s.code == 500), "{e}");
                    (false, None)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(list.items.len(), 2, "no label selector: every slice of the namespace");

        // A watch ends cleanly after its timeoutSeconds, not before: a change
        // made while it is open still comes on it.
        let short = WatchParams::default().labels(&sel).timeout(1);
        let mut events = slices
            .watch(&short, &api.resource_version().to_string())
            .await
            .unwrap()
            .boxed();
        let changed = api.set_slice(NS, web("web-a", &[ready("web-2", "10.0.0.3")]));
        let mut modified = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events.try_next()).await {
                Ok(Ok(Some(WatchEvent::Bookmark(_)))) => continue,
                Ok(Ok(Some(WatchEvent::Modified(s)))) => {
                    assert_eq!(s.metadata.resource_version, Some(changed.to_string()));
                    modified = true;
                }
                Ok(Ok(None)) => break,
                other => panic!("expected the watch to end, got {other:?}"),
            }
        }
        assert!(modified, "the watch ended before the change came");

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
    })
    .await
}

// ---------------------------------------------------------------------------
// The stickyd binary, pointed at the double through a kubeconfig file.
//
// Each test gets its own loopback /24 (127.0.T.0): the sidecar of pod web-0
// at .10, its app at .10 on another port, and the other pods at .11, .12, …
// All sidecars share one port, as pods of a Deployment do, so that the
// slices' port is STICKYD_LISTEN's port. The other pods are echo servers
// standing in for their sidecars: they answer with their own name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use stickyd::affinity::{Codec, SessionId, Sid};
use tokio::net::TcpListener;

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, host))
}

/// An HTTP server that answers every request with its name, and reports
/// the stickyd headers it received.
struct Echo {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_on(listener: TcpListener, name: &str) -> Echo {
    let name: Arc<str> = name.into();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let name = name.clone();
                    async move {
                        let h = |k: &str| {
                            req.headers()
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let resp = hyper::Response::builder()
                            .header("x-served-by", &*name)
                            .header("x-seen-session", h("x-stickyd-session"))
                            .header("x-seen-hop", h("x-stickyd-hop"))
                            .body(http_body_util::Full::new(Bytes::from(name.to_string())))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Echo { task }
}

/// A stickyd process; killed on drop.
struct Stickyd {
    pod: String,
    child: Child,
    dir: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Stickyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} stickyd log ---\n{}", self.pod, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Stickyd {
    /// Starts `stickyd run` for `pod`, watching the double, and waits until
    /// its admin listener (port 0 on `listen`'s address, read back from the
    /// startup log line) answers.
    async fn spawn(
        api: &ApiServer,
        pod: &str,
        listen: SocketAddr,
        upstream: SocketAddr,
        sync_timeout: &str,
        extra_env: &[(&str, &str)],
    ) -> Stickyd {
        let dir = std::env::temp_dir()
            .join(format!("stickyd-kube-{}-{}-{pod}", std::process::id(), listen.ip()).replace(':', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = api.write_kubeconfig(&dir);
        let log = std::fs::File::create(dir.join("stickyd.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stickyd"));
        for (k, _) in std::env::vars() {
            if k.starts_with("STICKYD_") || k.starts_with("KUBERNETES_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("run")
            .env("STICKYD_ENDPOINTS", "kubernetes")
            .env("KUBECONFIG", &kubeconfig)
            .env("STICKYD_NAMESPACE", NS)
            .env("STICKYD_SERVICE", SVC)
            .env("STICKYD_POD_NAME", pod)
            .env("STICKYD_LISTEN", listen.to_string())
            .env("STICKYD_ADMIN_LISTEN", SocketAddr::new(listen.ip(), 0).to_string())
            .env("STICKYD_UPSTREAM", format!("http://{upstream}"))
            .env("STICKYD_SYNC_TIMEOUT", sync_timeout)
            .env("STICKYD_WORKER_THREADS", "2")
            .env("STICKYD_LOG", "info,stickyd=debug")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("start stickyd");
        let mut sidecar = Stickyd {
            pod: pod.to_string(),
            child,
            dir,
            listen,
            admin: listen,
        };
        sidecar.admin = eventually(Duration::from_secs(10), "stickyd listening", || {
            if let Some(status) = sidecar.child.try_wait().unwrap() {
                panic!("stickyd exited with {status}: {}", sidecar.log());
            }
            let admin = common::logged_admin(&sidecar.log());
            std::future::ready((admin.is_some(), admin))
        })
        .await
        .unwrap();
        eventually(Duration::from_secs(10), "stickyd answering /healthz", || {
            if let Some(status) = sidecar.child.try_wait().unwrap() {
                panic!("stickyd exited with {status}: {}", sidecar.log());
            }
            let admin = sidecar.admin;
            async move {
                let r = get(admin, "/healthz", None).await;
                (r.as_ref().is_some_and(|r| r.status == 200), r)
            }
        })
        .await;
        sidecar
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stickyd.log")).unwrap_or_default()
    }

    /// What `/endpoints` says: (synced, [(name, addr, state)]).
    async fn endpoints(&self) -> Option<(bool, Vec<(String, String, String)>)> {
        let r = get(self.admin, "/endpoints", None).await?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        assert_eq!(v["this_pod"].as_str(), Some(self.pod.as_str()));
        assert!(v["generation"].is_u64());
        let peers = v["peers"]
            .as_array()?
            .iter()
            .map(|p| {
                let name = p["name"].as_str().unwrap_or_default().to_string();
                assert_eq!(p["id"].as_str(), Some(SessionId::for_pod(&name).encode().as_str()));
                (
                    name,
                    p["addr"].as_str().unwrap_or_default().to_string(),
                    p["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Some((v["synced"].as_bool()?, peers))
    }

    async fn metrics(&self) -> String {
        get(self.admin, "/metrics", None)
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// A request with a session pinned to `pod` (or none).
    async fn request(&self, pod: Option<&str>) -> Resp {
        // A current unsigned value: `ID.SID`.
        let cookie = pod.map(|p| {
            let value = Codec::unsigned().encode(SessionId::for_pod(p), Sid::from_bytes(*b"k8s-ok"), 0, 0);
            format!("stickyd={value}")
        });
        get(self.listen, "/cart", cookie.as_deref())
            .await
            .expect("the sidecar answers")
    }
}

/// One test's pods web-0, web-1, …: the first `real` run a real sidecar in
/// front of their app; the others are echo servers in place of a sidecar.
struct Pods {
    net: u8,
    port: u16,
    sidecars: Vec<Stickyd>,
    _echoes: Vec<Echo>,
}

impl Pods {
    /// web-0 with a real sidecar and `others` echo pods.
    async fn start(api: &ApiServer, net: u8, others: u8, sync_timeout: &str) -> Pods {
        Pods::start_with(api, net, 1, others, sync_timeout).await
    }

    async fn start_with(api: &ApiServer, net: u8, real: u8, others: u8, sync_timeout: &str) -> Pods {
        // Each test owns its /24: one constant port for every pod there.
        let port = common::SIDECAR_PORT;
        let mut echoes = Vec::new();
        let mut sidecars = Vec::new();
        for i in 0..real {
            let me = ip(net, 10 + i);
            let app = TcpListener::bind((me, 0)).await.unwrap();
            let upstream = app.local_addr().unwrap();
            let name = format!("web-{i}");
            echoes.push(echo_on(app, &name).await);
            let listen = SocketAddr::new(me, port);
            sidecars.push(Stickyd::spawn(api, &name, listen, upstream, sync_timeout, &[]).await);
        }
        for i in real..real + others {
            let l = TcpListener::bind((ip(net, 10 + i), port)).await.unwrap();
            echoes.push(echo_on(l, &format!("web-{i}")).await);
        }
        Pods {
            net,
            port,
            sidecars,
            _echoes: echoes,
        }
    }

    /// web-0's sidecar.
    fn sidecar(&self) -> &Stickyd {
        &self.sidecars[0]
    }

    /// Pod `i`'s address.
    fn ip(&self, i: u8) -> String {
        ip(self.net, 10 + i).to_string()
    }

    /// A slice entry for pod web-`i`.
    fn ep(&self, i: u8, state: &str) -> (String, String, bool, bool, bool) {
        let (r, s, t) = match state {
            "ready" => (true, true, false),
            "draining" => (false, true, true),
            "terminated" => (false, false, true),
            other => panic!("state {other}"),
        };
        (format!("web-{i}"), self.ip(i), r, s, t)
    }

    fn slice(&self, name: &str, eps: &[(String, String, bool, bool, bool)]) -> serde_json::Value {
        let eps: Vec<Ep<'_>> = eps
            .iter()
            .map(|(n, a, r, s, t)| (n.as_str(), a.as_str(), *r, *s, *t))
            .collect();
        slice(SVC, name, ("http", self.port), &eps)
    }

    async fn endpoints(&self) -> Option<(bool, Vec<(String, String, String)>)> {
        self.sidecar().endpoints().await
    }

    /// Waits until every real sidecar's `/endpoints` is synced with exactly
    /// `want` (pod index, state).
    async fn endpoints_are(&self, within: Duration, want: &[(u8, &str)]) {
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(i, s)| {
                (
                    format!("web-{i}"),
                    format!("{}:{}", self.ip(*i), self.port),
                    s.to_string(),
                )
            })
            .collect();
        for sidecar in &self.sidecars {
            eventually(within, &format!("{} /endpoints", sidecar.pod), || async {
                let seen = sidecar.endpoints().await;
                (seen.as_ref().is_some_and(|(synced, p)| *synced && *p == want), seen)
            })
            .await;
        }
    }

    async fn metrics(&self) -> String {
        self.sidecar().metrics().await
    }

    /// A request through web-0's sidecar with a session pinned to `pod` (or none).
    async fn request(&self, pod: Option<&str>) -> Resp {
        self.sidecar().request(pod).await
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Resp {
    fn header(&self, k: &str) -> &str {
        self.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The pod the response's Set-Cookie pins the session to, if any.
    fn pinned_to(&self) -> Option<String> {
        let sc = self.headers.get("set-cookie")?.to_str().ok()?;
        let value = sc.strip_prefix("stickyd=")?.split(';').next()?.split('.').next()?;
        ["web-0", "web-1", "web-2", "web-3"]
            .into_iter()
            .find(|p| SessionId::for_pod(p).encode() == value)
            .map(str::to_string)
    }
}

/// A GET on a fresh connection from `addr`'s own address: for an admin
/// path, a request from inside the pod.
async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Option<Resp> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .ok()?;
    socket.bind(SocketAddr::new(addr.ip(), 0)).ok()?;
    let stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .ok()?
        .ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", "shop.example");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let fut = async {
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.ok()?
}

/// Checks the session outcome of one request.
#[track_caller]
fn served(r: &Resp, by: &str, session: &str, pinned_to: Option<&str>) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, by, "served by: {r:?}");
    if by == "web-0" {
        assert_eq!(r.header("x-seen-session"), session, "{r:?}");
    } else {
        assert_eq!(r.header("x-seen-hop"), "web-0", "forwarded with the hop marker: {r:?}");
    }
    assert_eq!(r.pinned_to().as_deref(), pinned_to, "Set-Cookie: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_follows_scaling_and_the_drain_of_a_pod() {
    bounded(async {
        let api = ApiServer::spawn().await;
        let pods = Pods::start(&api, 41, 3, "10").await;
        let step = |eps: Vec<(String, String, bool, bool, bool)>| {
            api.set_slice(NS, pods.slice("web-a", &eps));
        };

        step(vec![pods.ep(0, "ready"), pods.ep(1, "ready")]);
        pods.endpoints_are(Duration::from_secs(5), &[(0, "ready"), (1, "ready")])
            .await;
        let m = pods.metrics().await;
        assert_eq!(sample(&m, "stickyd_endpoints{state=\"ready\"}"), Some(2.0), "{m}");
        assert_eq!(sample(&m, "stickyd_endpoints_synced"), Some(1.0), "{m}");
        assert_eq!(sample(&m, "stickyd_kubernetes_watch_errors_total"), Some(0.0), "{m}");
        served(&pods.request(Some("web-1")).await, "web-1", "", None);
        served(&pods.request(Some("web-0")).await, "web-0", "pinned", None);
        served(&pods.request(None).await, "web-0", "new", Some("web-0"));

        // Scale up.
        step(vec![pods.ep(0, "ready"), pods.ep(1, "ready"), pods.ep(2, "ready")]);
        pods.endpoints_are(FOLLOW, &[(0, "ready"), (1, "ready"), (2, "ready")])
            .await;
        served(&pods.request(Some("web-2")).await, "web-2", "", None);
        let m = pods.metrics().await;
        assert_eq!(sample(&m, "stickyd_endpoints{state=\"ready\"}"), Some(3.0), "{m}");

        // web-1 terminates: its sessions stay with it, new ones go elsewhere.
        step(vec![pods.ep(0, "ready"), pods.ep(1, "draining"), pods.ep(2, "ready")]);
        pods.endpoints_are(FOLLOW, &[(0, "ready"), (1, "draining"), (2, "ready")])
            .await;
        served(&pods.request(Some("web-1")).await, "web-1", "", None);
        served(&pods.request(None).await, "web-0", "new", Some("web-0"));
        let m = pods.metrics().await;
        assert_eq!(sample(&m, "stickyd_endpoints{state=\"ready\"}"), Some(2.0), "{m}");
        assert_eq!(sample(&m, "stickyd_endpoints{state=\"draining\"}"), Some(1.0), "{m}");

        // web-1 stops serving: its sessions repin here.
        step(vec![pods.ep(0, "ready"), pods.ep(1, "terminated"), pods.ep(2, "ready")]);
        pods.endpoints_are(FOLLOW, &[(0, "ready"), (2, "ready")]).await;
        served(&pods.request(Some("web-1")).await, "web-0", "repinned", Some("web-0"));
        served(&pods.request(Some("web-2")).await, "web-2", "", None);

        // Scale down: web-1 and web-2 leave the slice.
        step(vec![pods.ep(0, "ready"), pods.ep(3, "ready")]);
        pods.endpoints_are(FOLLOW, &[(0, "ready"), (3, "ready")]).await;
        served(&pods.request(Some("web-2")).await, "web-0", "repinned", Some("web-0"));
        served(&pods.request(Some("web-3")).await, "web-3", "", None);
        let m = pods.metrics().await;
        assert_eq!(sample(&m, "stickyd_endpoints{state=\"ready\"}"), Some(2.0), "{m}");
        assert_eq!(sample(&m, "stickyd_endpoints{state=\"draining\"}"), Some(0.0), "{m}");
        assert_eq!(sample(&m, "stickyd_kubernetes_watch_errors_total"), Some(0.0), "{m}");
        assert!(pods.sidecar().log().contains("endpoint view updated"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_two_real_sidecars_through_a_drain() {
    bounded(async {
        let api = ApiServer::spawn().await;
        let pods = Pods::start_with(&api, 45, 2, 0, "10").await;
        let (web0, web1) = (&pods.sidecars[0], &pods.sidecars[1]);
        let app_saw = |r: &Resp, app: &str, session: &str, pinned_to: Option<&str>| {
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.body, app, "{r:?}");
            assert_eq!(r.header("x-seen-session"), session, "{r:?}");
            assert_eq!(
                r.header("x-seen-hop"),
                "",
                "the hop marker never reaches the app: {r:?}"
            );
            assert_eq!(r.pinned_to().as_deref(), pinned_to, "Set-Cookie: {r:?}");
        };

        api.set_slice(NS, pods.slice("web-a", &[pods.ep(0, "ready"), pods.ep(1, "ready")]));
        pods.endpoints_are(Duration::from_secs(5), &[(0, "ready"), (1, "ready")])
            .await;
        // Ready: a session of web-1 that lands on web-0 reaches web-1's app.
        app_saw(&web0.request(Some("web-1")).await, "web-1", "pinned", None);
        app_saw(&web1.request(Some("web-0")).await, "web-0", "pinned", None);
        app_saw(&web1.request(None).await, "web-1", "new", Some("web-1"));

        // Serving and terminating: web-1 keeps its sessions, and hands new ones
        // to web-0.
        api.set_slice(NS, pods.slice("web-a", &[pods.ep(0, "ready"), pods.ep(1, "draining")]));
        pods.endpoints_are(FOLLOW, &[(0, "ready"), (1, "draining")]).await;
        app_saw(&web0.request(Some("web-1")).await, "web-1", "pinned", None);
        app_saw(&web1.request(Some("web-1")).await, "web-1", "pinned", None);
        app_saw(&web1.request(None).await, "web-0", "new", Some("web-0"));
        let m = web1.metrics().await;
        assert_eq!(sample(&m, "stickyd_endpoints{state=\"draining\"}"), Some(1.0), "{m}");

        // Gone: its sessions repin where they land.
        api.set_slice(
            NS,
            pods.slice("web-a", &[pods.ep(0, "ready"), pods.ep(1, "terminated")]),
        );
        pods.endpoints_are(FOLLOW, &[(0, "ready")]).await;
        app_saw(&web0.request(Some("web-1")).await, "web-0", "repinned", Some("web-0"));
        app_saw(&web0.request(Some("web-0")).await, "web-0", "pinned", None);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_ipv6_slices_with_a_named_port() {
    bounded(async {
        // Every pod on ::1, so each has its own port: one slice per pod, the
        // sidecar's port found by name among the slice's ports.
        let api = ApiServer::spawn().await;
        let lo = IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
        let app = TcpListener::bind((lo, 0)).await.unwrap();
        let upstream = app.local_addr().unwrap();
        let _app = echo_on(app, "web-0").await;
        let peer = TcpListener::bind((lo, 0)).await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let _peer = echo_on(peer, "web-1").await;
        // ::1 is this test's alone.
        let listen = SocketAddr::new(lo, common::SIDECAR_PORT);
        let sidecar = Stickyd::spawn(&api, "web-0", listen, upstream, "10", &[("STICKYD_PORT_NAME", "proxy")]).await;

        let pod_slice = |name: &str, pod: &str, port: u16, state: (bool, bool, bool)| {
            let mut v = slice(SVC, name, ("proxy", port), &[(pod, "::1", state.0, state.1, state.2)]);
            v["ports"]
                .as_array_mut()
                .unwrap()
                .insert(0, serde_json::json!({"name": "app", "port": 1, "protocol": "TCP"}));
            assert_eq!(v["addressType"], "IPv6");
            v
        };
        let want = |entries: &[(&str, SocketAddr, &str)]| -> Vec<(String, String, String)> {
            entries
                .iter()
                .map(|(n, a, s)| (n.to_string(), a.to_string(), s.to_string()))
                .collect()
        };
        let endpoints_are = |w: Vec<(String, String, String)>| {
            let sidecar = &sidecar;
            async move {
                eventually(FOLLOW, "/endpoints", || async {
                    let seen = sidecar.endpoints().await;
                    (seen.as_ref().is_some_and(|(synced, p)| *synced && *p == w), seen)
                })
                .await
            }
        };

        api.set_slice(NS, pod_slice("web-x1", "web-0", listen.port(), (true, true, false)));
        api.set_slice(NS, pod_slice("web-x2", "web-1", peer_addr.port(), (true, true, false)));
        endpoints_are(want(&[("web-0", listen, "ready"), ("web-1", peer_addr, "ready")])).await;
        served(&sidecar.request(Some("web-1")).await, "web-1", "", None);

        api.set_slice(NS, pod_slice("web-x2", "web-1", peer_addr.port(), (false, true, true)));
        endpoints_are(want(&[("web-0", listen, "ready"), ("web-1", peer_addr, "draining")])).await;
        served(&sidecar.request(Some("web-1")).await, "web-1", "", None);

        assert!(api.delete_slice(NS, "web-x2"));
        endpoints_are(want(&[("web-0", listen, "ready")])).await;
        served(
            &sidecar.request(Some("web-1")).await,
            "web-0",
            "repinned",
            Some("web-0"),
        );
    })
    .await
}

/// Before its first sync, a sidecar can already be reached: by a connection
/// the ingress retries to an address a new pod has just taken, or by a
/// client that ignores readiness. A session pinned to another pod then
/// waits for the view (within STICKYD_SYNC_TIMEOUT) and goes to its pod,
/// rather than be answered by an app that does not know it. A request
/// without a cookie does not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_a_session_pinned_elsewhere_waits_for_the_first_sync() {
    bounded(async {
        let api = ApiServer::spawn().await;
        api.stop();
        let pods = Pods::start(&api, 43, 1, "20").await;
        api.set_slice(NS, pods.slice("web-a", &[pods.ep(0, "ready"), pods.ep(1, "ready")]));
        eventually(Duration::from_secs(10), "watch errors counted", || async {
            let n = sample(&pods.metrics().await, "stickyd_kubernetes_watch_errors_total");
            (n.is_some_and(|n| n >= 1.0), n)
        })
        .await;
        // No cookie: served at once, unsynced or not.
        served(&pods.request(None).await, "web-0", "new", Some("web-0"));
        // Pinned to web-1: it waits while the API is down...
        let pinned = tokio::spawn({
            let sidecar = pods.sidecar().listen;
            async move {
                let value = Codec::unsigned().encode(SessionId::for_pod("web-1"), Sid::from_bytes(*b"waits!"), 0, 0);
                get(sidecar, "/cart", Some(&format!("stickyd={value}"))).await
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!pinned.is_finished(), "answered before the first sync");
        // ...and goes to its pod once the view is there.
        api.start().await;
        let r = pinned.await.unwrap().expect("answered after the sync");
        served(&r, "web-1", "", None);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keeps_every_pin_while_the_api_is_down() {
    bounded(async {
        let api = ApiServer::spawn().await;
        api.stop();
        let pods = Pods::start(&api, 42, 2, "1").await;
        api.set_slice(NS, pods.slice("web-a", &[pods.ep(0, "ready"), pods.ep(1, "ready")]));

        // Down at start: unsynced, served here, the cookie left alone.
        eventually(Duration::from_secs(10), "watch errors counted", || async {
            let n = sample(&pods.metrics().await, "stickyd_kubernetes_watch_errors_total");
            (n.is_some_and(|n| n >= 1.0), n)
        })
        .await;
        let (synced, peers) = pods.endpoints().await.unwrap();
        assert!(!synced && peers.is_empty());
        assert_eq!(sample(&pods.metrics().await, "stickyd_endpoints_synced"), Some(0.0));
        served(&pods.request(Some("web-1")).await, "web-0", "unsynced", None);
        // Ready in degraded mode after STICKYD_SYNC_TIMEOUT: a dead API never
        // takes the service down.
        eventually(Duration::from_secs(5), "/readyz degraded", || async {
            let r = get(pods.sidecar().admin, "/readyz", None).await;
            (r.as_ref().is_some_and(|r| r.status == 200), r)
        })
        .await;

        api.start().await;
        pods.endpoints_are(RECOVER, &[(0, "ready"), (1, "ready")]).await;
        served(&pods.request(Some("web-1")).await, "web-1", "", None);

        // Down mid-run: the view stays, the pin holds.
        let errors = sample(&pods.metrics().await, "stickyd_kubernetes_watch_errors_total").unwrap();
        api.stop();
        eventually(RECOVER, "outage counted", || async {
            let n = sample(&pods.metrics().await, "stickyd_kubernetes_watch_errors_total");
            (n.is_some_and(|n| n > errors), n)
        })
        .await;
        pods.endpoints_are(FOLLOW, &[(0, "ready"), (1, "ready")]).await;
        for _ in 0..3 {
            served(&pods.request(Some("web-1")).await, "web-1", "", None);
        }
        assert_eq!(sample(&pods.metrics().await, "stickyd_endpoints_synced"), Some(1.0));

        // 5xx instead of silence: the same. A 503 is not retried inside the
        // client, where it would go unnoticed: it counts.
        api.start().await;
        api.fail_with(503, Duration::from_secs(2));
        let errors = sample(&pods.metrics().await, "stickyd_kubernetes_watch_errors_total").unwrap();
        api.drop_watches();
        eventually(RECOVER, "5xx counted", || async {
            let n = sample(&pods.metrics().await, "stickyd_kubernetes_watch_errors_total");
            (n.is_some_and(|n| n > errors), n)
        })
        .await;
        served(&pods.request(Some("web-1")).await, "web-1", "", None);

        // Back: changes flow again.
        api.set_slice(
            NS,
            pods.slice(
                "web-a",
                &[pods.ep(0, "ready"), pods.ep(1, "ready"), pods.ep(2, "ready")],
            ),
        );
        pods.endpoints_are(RECOVER, &[(0, "ready"), (1, "ready"), (2, "ready")])
            .await;
        served(&pods.request(Some("web-2")).await, "web-2", "", None);
        let log = pods.sidecar().log();
        assert!(log.contains("keeping the last good endpoint view"), "{log}");
        assert!(log.contains("Kubernetes API reachable again"), "{log}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_merges_two_slices_and_relists_after_410() {
    bounded(async {
        let api = ApiServer::spawn().await;
        let pods = Pods::start(&api, 43, 3, "10").await;
        api.set_slice(NS, pods.slice("web-a", &[pods.ep(0, "ready"), pods.ep(1, "ready")]));
        api.set_slice(NS, pods.slice("web-b", &[pods.ep(2, "ready")]));
        pods.endpoints_are(Duration::from_secs(5), &[(0, "ready"), (1, "ready"), (2, "ready")])
            .await;
        served(&pods.request(Some("web-1")).await, "web-1", "", None);
        served(&pods.request(Some("web-2")).await, "web-2", "", None);

        // web-1 moves from slice a to slice b: listed in both for a moment.
        api.set_slice(NS, pods.slice("web-b", &[pods.ep(2, "ready"), pods.ep(1, "ready")]));
        api.set_slice(NS, pods.slice("web-a", &[pods.ep(0, "ready"), pods.ep(1, "draining")]));
        pods.endpoints_are(FOLLOW, &[(0, "ready"), (1, "ready"), (2, "ready")])
            .await;
        api.set_slice(NS, pods.slice("web-a", &[pods.ep(0, "ready")]));
        served(&pods.request(Some("web-1")).await, "web-1", "", None);

        // While the watch is down, slice b is replaced by c and the history is
        // compacted: the watch resumes into a 410 and relists.
        let lists = api.lists();
        api.stop();
        api.delete_slice(NS, "web-b");
        api.set_slice(NS, pods.slice("web-c", &[pods.ep(1, "ready"), pods.ep(3, "ready")]));
        api.compact();
        // The last good view holds meanwhile.
        served(&pods.request(Some("web-2")).await, "web-2", "", None);
        api.start().await;
        pods.endpoints_are(RECOVER, &[(0, "ready"), (1, "ready"), (3, "ready")])
            .await;
        assert!(api.lists() > lists, "relisted");
        served(&pods.request(Some("web-1")).await, "web-1", "", None);
        served(&pods.request(Some("web-3")).await, "web-3", "", None);
        served(&pods.request(Some("web-2")).await, "web-0", "repinned", Some("web-0"));
        let m = pods.metrics().await;
        assert_eq!(sample(&m, "stickyd_endpoints{state=\"ready\"}"), Some(3.0), "{m}");
        assert!(
            sample(&m, "stickyd_kubernetes_watch_errors_total").is_some_and(|n| n >= 1.0),
            "{m}"
        );
    })
    .await
}

/// Runs `stickyd run` with `env` until it exits (at most 10 s); returns its
/// exit code and output.
fn run_to_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("stickyd-kube-exit-{}-{}", std::process::id(), env.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("out.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stickyd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("STICKYD_") || k.starts_with("KUBERNETES_") || k == "KUBECONFIG" {
            cmd.env_remove(k);
        }
    }
    cmd.arg("run")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = cmd.spawn().expect("start stickyd");
    let mut guard = Stickyd {
        pod: "web-0".into(),
        child,
        dir,
        listen: "127.0.0.1:1".parse().unwrap(),
        admin: "127.0.0.1:1".parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = guard.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "stickyd did not exit: {}", guard.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&log_path).unwrap_or_default();
    drop(guard);
    (code, out)
}

#[test]
fn binary_explains_a_missing_namespace_or_client_configuration() {
    let base = [
        ("STICKYD_ENDPOINTS", "kubernetes"),
        ("STICKYD_SERVICE", SVC),
        ("STICKYD_POD_NAME", "web-0"),
        ("STICKYD_LISTEN", "127.0.44.10:0"),
        ("STICKYD_ADMIN_LISTEN", "127.0.44.11:0"),
        ("STICKYD_UPSTREAM", "http://127.0.44.12:8081"),
    ];
    let mut env = base.to_vec();
    env.push(("STICKYD_NAMESPACE", NS));
    env.push(("KUBECONFIG", "/nonexistent/stickyd-kubeconfig"));
    env.push(("HOME", "/nonexistent"));
    let (code, out) = run_to_exit(&env);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no Kubernetes client configuration"), "{out}");
    assert!(out.contains("KUBECONFIG"), "{out}");

    // No STICKYD_NAMESPACE: the service account's namespace file, which only
    // exists in a pod.
    if !std::path::Path::new(kubernetes::NAMESPACE_FILE).exists() {
        let mut env = base.to_vec();
        env.push(("KUBECONFIG", "/nonexistent/stickyd-kubeconfig"));
        let (code, out) = run_to_exit(&env);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("STICKYD_NAMESPACE"), "{out}");
        assert!(out.contains(kubernetes::NAMESPACE_FILE), "{out}");
    }
}
