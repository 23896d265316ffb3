//! The Kubernetes endpoint source: EndpointSlices of this pod's Service.
//!
//! A kube-runtime [`watcher`] lists and watches the `discovery.k8s.io/v1`
//! EndpointSlices labelled `kubernetes.io/service-name=$STICKYD_SERVICE` in
//! one namespace, with the watcher's default backoff and watch bookmarks.
//! The slices go, without their `managedFields`, into kube's reflector store
//! ([`reflector::store::Writer`]), which also holds a relist back until it is
//! complete.
//!
//! The work an event costs is proportional to the slice it carries, not to
//! the Service: a [`SliceIndex`] keeps what each slice contributed, compares
//! a changed slice with it, and rebuilds only the peers of the pods whose
//! address or state changed; the new view is the previous one's peers with
//! those patched in (see [`super::PeerSet`]), so the `Peer`s, and the hashed
//! `SessionId`s, of all other pods are shared rather than rebuilt. A relist
//! applies again only the slices whose resourceVersion changed.
//!
//! The source runs on a thread of its own, on a current-thread Tokio runtime
//! ([`spawn`]): the watch connection, the decoding of every event's JSON and
//! the building of views never run on the runtime that serves requests,
//! which with STICKYD_WORKER_THREADS=1 is a single thread. Handing only the
//! build to `spawn_blocking` would leave the decoding, which costs more than
//! the build for a slice of 100 endpoints, on that thread, holding up every
//! request queued behind an event; a thread of its own is preempted by the
//! kernel instead, and costs one idle thread and its stack. The view store
//! is `Send + Sync` and read lock-free, so the data path only ever sees a
//! new `Arc<View>` appear, announced on `EndpointStore::changes`.
//!
//! Never destroy a pin on a guess:
//! - the view stays unsynced until the first list has completed;
//! - a relist (after a 410 Gone, say) replaces the view only once it is
//!   complete, and replaces it: slices that were not listed again are gone;
//! - when the API is unreachable, the last good view stays in place while the
//!   watcher retries. Each failed attempt is counted in
//!   `stickyd_kubernetes_watch_errors_total`; the outage is logged once at
//!   warn, and its end at info.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::slices::{slice_name, Change, SliceIndex};
use super::{EndpointStore, Peer, PeerState};
use crate::config::Config;
use crate::metrics::Metrics;

/// Where the pod's namespace is mounted in a pod with a service account token.
pub const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The name of the source's thread.
pub const THREAD_NAME: &str = "stickyd-watch";

/// Why the Kubernetes endpoint source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error(
        "STICKYD_NAMESPACE is not set and the service account namespace file {path} could not be read ({message}); \
         set STICKYD_NAMESPACE, e.g. from the downward API (fieldRef: metadata.namespace)"
    )]
    Namespace { path: String, message: String },
    #[error("STICKYD_SERVICE must name the Service whose EndpointSlices are watched (STICKYD_ENDPOINTS=kubernetes)")]
    NoService,
    #[error("no Kubernetes client configuration: {0}; run in a pod with a service account, or set KUBECONFIG")]
    Client(#[source] kube::Error),
    #[error("cannot start the endpoint source's thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Which port of a slice is the sidecar's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSelector {
    /// The slice port with this name (`STICKYD_PORT_NAME`).
    Name(String),
    /// The slice port with this number (STICKYD_LISTEN's port).
    Number(u16),
}

impl PortSelector {
    /// `STICKYD_PORT_NAME` when set, else the port of `STICKYD_LISTEN`.
    pub fn from_config(cfg: &Config) -> PortSelector {
        match &cfg.port_name {
            Some(name) => PortSelector::Name(name.clone()),
            None => PortSelector::Number(cfg.listen.port()),
        }
    }

    /// The port number this selector picks among a slice's ports. UDP and
    /// SCTP ports are never picked. A port with no number means "all ports":
    /// it matches a number selector with that number.
    pub(super) fn pick(&self, ports: &[EndpointPort]) -> Option<u16> {
        ports
            .iter()
            .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
            .find_map(|p| match self {
                PortSelector::Name(name) => {
                    if p.name.as_deref().unwrap_or("") == name {
                        p.port.and_then(|n| u16::try_from(n).ok())
                    } else {
                        None
                    }
                }
                PortSelector::Number(want) => match p.port {
                    Some(n) if i64::from(n) == i64::from(*want) => Some(*want),
                    None => Some(*want),
                    Some(_) => None,
                },
            })
    }
}

impl std::fmt::Display for PortSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortSelector::Name(n) => write!(f, "port named {n:?}"),
            PortSelector::Number(n) => write!(f, "port {n}"),
        }
    }
}

/// Merges every slice of a Service into one list of peers, by pod, sorted
/// by name; slices are told apart by name.
///
/// A pod is identified by `targetRef.name`, or by its address when the
/// endpoint has no targetRef. Its address is the endpoint's first address
/// with the slice port chosen by `port`; slices without that port, FQDN
/// slices and unparsable addresses contribute nothing. `ready` endpoints are
/// [`PeerState::Ready`], `serving && terminating` ones [`PeerState::Draining`],
/// any other endpoint is left out. A pod listed twice (while endpoints move
/// between slices, or in the IPv4 and IPv6 slices of a dual-stack Service)
/// takes a Ready entry over a Draining one, then the entry of the slice whose
/// name sorts first.
pub fn view_from_slices<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, port: &PortSelector) -> Vec<Peer> {
    let mut index = SliceIndex::default();
    for slice in slices {
        index.apply(slice, port);
    }
    index.peers().iter().cloned().collect()
}

/// The namespace to watch: `STICKYD_NAMESPACE`, else the service account's.
pub fn namespace(cfg: &Config) -> Result<String, KubeSourceError> {
    namespace_from(cfg.namespace.as_deref(), Path::new(NAMESPACE_FILE))
}

fn namespace_from(configured: Option<&str>, file: &Path) -> Result<String, KubeSourceError> {
    if let Some(ns) = configured {
        return Ok(ns.to_string());
    }
    let err = |message: String| KubeSourceError::Namespace {
        path: file.display().to_string(),
        message,
    };
    let ns = std::fs::read_to_string(file).map_err(|e| err(e.to_string()))?;
    let ns = ns.trim();
    if ns.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(ns.to_string())
}

/// Starts the source from the configuration: the namespace from
/// `STICKYD_NAMESPACE` or the service account, the client from `KUBECONFIG`
/// or the in-cluster configuration. The client is built on the source's own
/// thread, so that all of its connections live there. The returned task
/// runs until aborted; aborting it stops the thread.
pub async fn start(
    cfg: &Config,
    store: EndpointStore,
    metrics: Arc<Metrics>,
) -> Result<JoinHandle<()>, KubeSourceError> {
    let service = cfg.service.clone().ok_or(KubeSourceError::NoService)?;
    let namespace = namespace(cfg)?;
    let config = kube::Config::infer()
        .await
        .map_err(|e| KubeSourceError::Client(kube::Error::InferConfig(e)))?;
    let port = PortSelector::from_config(cfg);
    tracing::info!(%namespace, %service, %port, "watching EndpointSlices");
    let (built, client_built) = oneshot::channel();
    let task = on_own_thread(move || async move {
        match client(config) {
            Ok(client) => {
                let _ = built.send(Ok(()));
                follow(client, &namespace, &service, Source::new(port, store, metrics)).await;
            }
            Err(e) => {
                let _ = built.send(Err(e));
            }
        }
    })
    .map_err(KubeSourceError::Thread)?;
    // A thread that ended without a word has ended the task with it.
    client_built.await.unwrap_or(Ok(()))?;
    Ok(task)
}

/// A client for the source. kube's own retry of 429/503/504 responses is
/// turned off: it would retry a failing request for minutes without the
/// watcher knowing, so the outage would go unlogged and uncounted. The
/// watcher's default backoff is the one retry policy, and every failed
/// attempt shows in `stickyd_kubernetes_watch_errors_total`.
pub fn client(mut config: kube::Config) -> Result<Client, KubeSourceError> {
    config.default_retry = false;
    Client::try_from(config).map_err(KubeSourceError::Client)
}

/// Watches the EndpointSlices of `service` in `namespace` with `client` and
/// keeps `store` up to date, on a thread of its own (the client's requests
/// are made from there). Call within a Tokio runtime: the returned task runs
/// until aborted, and aborting it, or dropping its runtime, stops the thread.
pub fn spawn(
    client: Client,
    namespace: &str,
    service: &str,
    port: PortSelector,
    store: EndpointStore,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    let (namespace, service) = (namespace.to_string(), service.to_string());
    let source = Source::new(port, store, metrics);
    on_own_thread(move || async move { follow(client, &namespace, &service, source).await })
        .expect("start the endpoint source's thread")
}

/// Runs the future `make` returns on a new thread, on a current-thread
/// runtime of its own. The returned task, on the caller's runtime, ends when
/// the future does; aborting it (or dropping it with its runtime) stops the
/// future and the thread.
fn on_own_thread<F, Fut>(make: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let (done, finished) = oneshot::channel::<()>();
    std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
        runtime.block_on(async move {
            tokio::select! {
                () = make() => {}
                _ = stopped => {}
            }
        });
        drop(runtime);
        drop(done);
    })?;
    Ok(tokio::spawn(async move {
        let _stop = stop;
        let _ = finished.await;
    }))
}

/// Lists and watches, feeding `source`, until the stream ends (it does not).
async fn follow(client: Client, namespace: &str, service: &str, mut source: Source) {
    let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => source.on_event(event),
            Err(e) => source.on_error(&e),
        }
    }
}

/// The watch state: the slices as listed and watched, what they make of the
/// view, and the outage in progress.
struct Source {
    port: PortSelector,
    store: EndpointStore,
    metrics: Arc<Metrics>,
    /// kube's reflector store of the slices, which holds a relist until it
    /// is complete; `slices` reads it.
    writer: Writer<EndpointSlice>,
    slices: reflector::Store<EndpointSlice>,
    index: SliceIndex,
    /// A list has completed: until then nothing is published.
    listed: bool,
    /// Consecutive failed attempts; non-zero during an outage.
    failures: u64,
}

impl Source {
    fn new(port: PortSelector, store: EndpointStore, metrics: Arc<Metrics>) -> Source {
        let writer = Writer::default();
        let slices = writer.as_reader();
        Source {
            port,
            store,
            metrics,
            writer,
            slices,
            index: SliceIndex::default(),
            listed: false,
            failures: 0,
        }
    }

    fn on_event(&mut self, event: Event<EndpointSlice>) {
        // What kube's docs advise for a reflector's memory: managedFields
        // are most of a slice's metadata, and nothing here reads them.
        let event = event.modify(|slice| slice.metadata.managed_fields = None);
        self.writer.apply_watcher_event(&event);
        match event {
            Event::Init => tracing::debug!("listing EndpointSlices"),
            Event::InitApply(_) => {}
            Event::InitDone => {
                self.index.relist(&self.slices.state(), &self.port);
                self.listed = true;
                self.recovered();
                self.publish("list");
            }
            Event::Apply(slice) => {
                self.recovered();
                self.index.apply(&slice, &self.port);
                self.publish("watch");
            }
            Event::Delete(slice) => {
                self.recovered();
                self.index.remove(slice_name(&slice));
                self.publish("watch");
            }
        }
    }

    fn on_error(&mut self, error: &watcher::Error) {
        self.metrics.kube_watch_errors.inc();
        if let watcher::Error::WatchError(status) = error {
            if status.code == 410 {
                // Not an outage: etcd compacted past the revision the watch
                // resumed from (or the apiserver's watch cache no longer
                // holds it). The watcher lists again, after its backoff.
                tracing::info!(
                    message = %status.message,
                    "the watch's resourceVersion expired (410 Gone); listing EndpointSlices again, \
                     keeping the view meanwhile"
                );
                return;
            }
        }
        self.failures += 1;
        let view = self.store.load();
        if self.failures == 1 && view.synced {
            tracing::warn!(
                error = %error,
                peers = view.len(),
                "Kubernetes API list/watch failed; keeping the last good endpoint view and retrying with backoff"
            );
        } else if self.failures == 1 {
            tracing::warn!(
                error = %error,
                "Kubernetes API list/watch failed before the first list; serving locally without rewriting \
                 cookies that name other pods, and retrying with backoff"
            );
        } else {
            tracing::debug!(error = %error, failures = self.failures, "Kubernetes API list/watch failed again");
        }
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                failed_attempts = self.failures,
                "Kubernetes API reachable again; following EndpointSlices"
            );
            self.failures = 0;
        }
    }

    /// Swaps in the index's peers if they changed (or for the first synced
    /// view). The cost is that of the changes, not of the view.
    fn publish(&mut self, from: &'static str) {
        if !self.listed {
            return;
        }
        if let Some(unmatched) = self.index.unmatched_if_changed().filter(|u| !u.is_empty()) {
            tracing::warn!(
                port = %self.port,
                slices = ?unmatched,
                "EndpointSlices without the sidecar's port: their endpoints are left out of the view; \
                 check STICKYD_PORT_NAME (or STICKYD_LISTEN's port) against the Service's ports"
            );
        }
        let changes = self.index.take_changes();
        if changes.is_empty() && self.store.load().synced {
            tracing::debug!(from, slices = self.index.slices(), "endpoint view unchanged");
            return;
        }
        let view = self.store.publish(self.index.peers().clone(), true);
        let left = changes.iter().filter_map(|c| match c {
            Change::Gone(p) => Some(p.name.as_str()),
            Change::Set(_) => None,
        });
        self.metrics.observe_view(&view, left);
        tracing::info!(
            from,
            generation = view.generation,
            slices = self.index.slices(),
            ready = view.count(PeerState::Ready),
            draining = view.count(PeerState::Draining),
            changed = changes.len(),
            "endpoint view updated"
        );
        if tracing::enabled!(tracing::Level::DEBUG) {
            let changes: Vec<String> = changes
                .iter()
                .map(|c| match c {
                    Change::Set(p) => format!("{}={}({})", p.name, p.addr, p.state.as_str()),
                    Change::Gone(p) => format!("-{}", p.name),
                })
                .collect();
            tracing::debug!(from, generation = view.generation, ?changes, "endpoint view changes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    use crate::endpoints::View;

    fn port(name: &str, n: i32) -> EndpointPort {
        EndpointPort {
            name: Some(name.into()),
            port: Some(n),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn ep(pod: Option<&str>, addr: &str, ready: Option<bool>, serving: Option<bool>, term: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![addr.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating: term,
            }),
            target_ref: pod.map(|p| ObjectReference {
                kind: Some("Pod".into()),
                name: Some(p.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ready(pod: &str, addr: &str) -> Endpoint {
        ep(Some(pod), addr, Some(true), Some(true), Some(false))
    }

    fn slice(name: &str, family: &str, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            address_type: family.into(),
            endpoints,
            ports: Some(ports),
        }
    }

    fn summary<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Vec<(String, String, &'static str)> {
        peers
            .into_iter()
            .map(|p| (p.name.clone(), p.addr.to_string(), p.state.as_str()))
            .collect()
    }

    fn s(name: &str, addr: &str, state: &'static str) -> (String, String, &'static str) {
        (name.into(), addr.into(), state)
    }

    #[test]
    fn conditions_map_to_states() {
        let sl = slice(
            "web-abc",
            "IPv4",
            vec![port("http", 8080)],
            vec![
                ready("web-0", "10.0.0.1"),
                // nil conditions: ready.
                Endpoint {
                    addresses: vec!["10.0.0.2".into()],
                    target_ref: Some(ObjectReference {
                        name: Some("web-1".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ep(Some("web-2"), "10.0.0.3", Some(false), Some(true), Some(true)),
                ep(Some("web-3"), "10.0.0.4", Some(false), Some(false), Some(true)),
                ep(Some("web-4"), "10.0.0.5", Some(false), Some(false), Some(false)),
                ep(Some("web-5"), "10.0.0.6", None, None, None),
                // publishNotReadyAddresses: ready stays true while terminating.
                ep(Some("web-6"), "10.0.0.7", Some(true), Some(true), Some(true)),
                ep(Some("web-7"), "10.0.0.8", Some(true), Some(false), Some(true)),
                // serving nil defers to ready.
                ep(Some("web-8"), "10.0.0.9", Some(false), None, Some(true)),
            ],
        );
        let peers = view_from_slices([&sl], &PortSelector::Name("http".into()));
        assert_eq!(
            summary(&peers),
            vec![
                s("web-0", "10.0.0.1:8080", "ready"),
                s("web-1", "10.0.0.2:8080", "ready"),
                s("web-2", "10.0.0.3:8080", "draining"),
                s("web-5", "10.0.0.6:8080", "ready"),
                s("web-6", "10.0.0.7:8080", "draining"),
            ]
        );
        assert_eq!(peers[0].id, crate::affinity::SessionId::for_pod("web-0"));
    }

    #[test]
    fn port_by_name_or_listen_port() {
        let sl = slice(
            "web-abc",
            "IPv4",
            vec![port("metrics", 9090), port("http", 8080), port("alt", 8443)],
            vec![ready("web-0", "10.0.0.1")],
        );
        let by_name = view_from_slices([&sl], &PortSelector::Name("alt".into()));
        assert_eq!(by_name[0].addr, "10.0.0.1:8443".parse().unwrap());
        let by_number = view_from_slices([&sl], &PortSelector::Number(8080));
        assert_eq!(by_number[0].addr, "10.0.0.1:8080".parse().unwrap());
        assert!(view_from_slices([&sl], &PortSelector::Name("nope".into())).is_empty());
        assert!(view_from_slices([&sl], &PortSelector::Number(1234)).is_empty());

        // A single unnamed port has the name "".
        let unnamed = slice("u", "IPv4", vec![port("", 8080)], vec![ready("web-0", "10.0.0.1")]);
        assert_eq!(view_from_slices([&unnamed], &PortSelector::Number(8080)).len(), 1);
        assert_eq!(
            view_from_slices([&unnamed], &PortSelector::Name(String::new())).len(),
            1
        );

        // UDP is never the sidecar's port.
        let mut udp = port("http", 8080);
        udp.protocol = Some("UDP".into());
        let udp = slice("udp", "IPv4", vec![udp], vec![ready("web-0", "10.0.0.1")]);
        assert!(view_from_slices([&udp], &PortSelector::Number(8080)).is_empty());

        // No ports at all: nothing to reach.
        let mut none = slice("none", "IPv4", vec![], vec![ready("web-0", "10.0.0.1")]);
        assert!(view_from_slices([&none], &PortSelector::Number(8080)).is_empty());
        none.ports = None;
        assert!(view_from_slices([&none], &PortSelector::Number(8080)).is_empty());
    }

    #[test]
    fn ipv6_and_fqdn() {
        let v6 = slice("v6", "IPv6", vec![port("http", 8080)], vec![ready("web-0", "fd00::1")]);
        let fqdn = slice(
            "f",
            "FQDN",
            vec![port("http", 8080)],
            vec![ready("web-9", "web.example.com")],
        );
        let peers = view_from_slices([&v6, &fqdn], &PortSelector::Number(8080));
        assert_eq!(summary(&peers), vec![s("web-0", "[fd00::1]:8080", "ready")]);
    }

    #[test]
    fn address_is_the_identity_without_target_ref() {
        let sl = slice(
            "manual",
            "IPv4",
            vec![port("http", 8080)],
            vec![
                ep(None, "10.0.0.7", Some(true), None, None),
                ep(None, "not-an-ip", Some(true), None, None),
            ],
        );
        let v6 = slice(
            "manual6",
            "IPv6",
            vec![port("http", 8080)],
            vec![ep(None, "fd00::7", None, None, None)],
        );
        let peers = view_from_slices([&sl, &v6], &PortSelector::Number(8080));
        assert_eq!(
            summary(&peers),
            vec![
                s("10.0.0.7", "10.0.0.7:8080", "ready"),
                s("fd00::7", "[fd00::7]:8080", "ready"),
            ]
        );
    }

    #[test]
    fn slices_merge_by_pod_and_ready_wins() {
        let a = slice(
            "web-a",
            "IPv4",
            vec![port("http", 8080)],
            vec![
                ready("web-0", "10.0.0.1"),
                ep(Some("web-1"), "10.0.0.2", Some(false), Some(true), Some(true)),
            ],
        );
        let b = slice(
            "web-b",
            "IPv4",
            vec![port("http", 8080)],
            vec![
                ready("web-1", "10.0.0.2"),
                ready("web-2", "10.0.0.3"),
                ep(Some("web-0"), "10.0.0.1", Some(false), Some(true), Some(true)),
            ],
        );
        let expected = vec![
            s("web-0", "10.0.0.1:8080", "ready"),
            s("web-1", "10.0.0.2:8080", "ready"),
            s("web-2", "10.0.0.3:8080", "ready"),
        ];
        assert_eq!(
            summary(&view_from_slices([&a, &b], &PortSelector::Number(8080))),
            expected
        );
        assert_eq!(
            summary(&view_from_slices([&b, &a], &PortSelector::Number(8080))),
            expected
        );
        // A dual-stack service: the same pod in an IPv4 and an IPv6 slice is one peer.
        let v6 = slice(
            "web-6",
            "IPv6",
            vec![port("http", 8080)],
            vec![ready("web-0", "fd00::1")],
        );
        assert_eq!(view_from_slices([&a, &v6], &PortSelector::Number(8080)).len(), 2);
    }

    #[test]
    fn namespace_from_config_or_file() {
        let dir = std::env::temp_dir().join(format!("stickyd-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("namespace");
        assert_eq!(namespace_from(Some("shop"), &file).unwrap(), "shop");
        let err = namespace_from(None, &file).unwrap_err().to_string();
        assert!(err.contains("STICKYD_NAMESPACE"), "{err}");
        std::fs::write(&file, "otherns\n").unwrap();
        assert_eq!(namespace_from(None, &file).unwrap(), "otherns");
        std::fs::write(&file, " ").unwrap();
        assert!(namespace_from(None, &file).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn applied(src: &mut Source, ev: Event<EndpointSlice>) -> Vec<(String, String, &'static str)> {
        src.on_event(ev);
        summary(src.store.load().peers())
    }

    #[test]
    fn relist_replaces_and_errors_keep_the_view() {
        let store = EndpointStore::default();
        let metrics = Arc::new(Metrics::default());
        let mut src = Source::new(PortSelector::Number(8080), store.clone(), metrics.clone());
        let a = slice(
            "web-a",
            "IPv4",
            vec![port("http", 8080)],
            vec![ready("web-0", "10.0.0.1")],
        );
        let b = slice(
            "web-b",
            "IPv4",
            vec![port("http", 8080)],
            vec![ready("web-1", "10.0.0.2")],
        );

        src.on_event(Event::Init);
        src.on_event(Event::InitApply(a.clone()));
        assert!(!store.load().synced, "no view before the list is complete");
        assert_eq!(
            applied(&mut src, Event::InitDone),
            vec![s("web-0", "10.0.0.1:8080", "ready")]
        );
        assert!(store.load().synced);
        assert_eq!(metrics.endpoints_synced.get(), 1);

        assert_eq!(applied(&mut src, Event::Apply(b.clone())).len(), 2);
        let generation = store.load().generation;

        // An outage: the view stays.
        let err = watcher::Error::NoResourceVersion;
        src.on_error(&err);
        src.on_error(&err);
        assert_eq!(metrics.kube_watch_errors.get(), 2);
        assert_eq!(store.load().generation, generation);
        assert_eq!(store.load().len(), 2);

        // A 410 is counted, and is no failure: nothing says it recovered.
        let gone = watcher::Error::WatchError(
            kube::core::Status {
                code: 410,
                message: "The resourceVersion for the provided watch is too old.".into(),
                ..Default::default()
            }
            .boxed(),
        );
        src.on_error(&gone);
        assert_eq!(metrics.kube_watch_errors.get(), 3);
        assert_eq!(src.failures, 2);

        // A relist that is interrupted leaves the view alone; a complete one
        // replaces it, without the slices that were not listed again.
        src.on_event(Event::Init);
        src.on_event(Event::InitApply(b.clone()));
        src.on_error(&err);
        assert_eq!(store.load().len(), 2);
        src.on_event(Event::Init);
        src.on_event(Event::InitApply(b.clone()));
        assert_eq!(
            applied(&mut src, Event::InitDone),
            vec![s("web-1", "10.0.0.2:8080", "ready")]
        );
        assert_eq!(src.failures, 0);

        // An unchanged view is not swapped again.
        let generation = store.load().generation;
        src.on_event(Event::Apply(b.clone()));
        assert_eq!(store.load().generation, generation);
        assert!(applied(&mut src, Event::Delete(b)).is_empty());
        assert!(store.load().synced, "an empty service is still a synced view");
    }

    /// Slice `s` of a fleet of 100-endpoint slices: pod-NNNNN, ready but for
    /// the endpoints `not_ready` (gone from the view) and `draining`, with
    /// managedFields as the EndpointSlice controller writes them.
    fn fleet_slice(s: usize, version: u64, not_ready: &[usize], draining: &[usize]) -> EndpointSlice {
        let endpoints = (0..100)
            .map(|j| {
                let i = s * 100 + j;
                let (pod, addr) = (format!("pod-{i:05}"), format!("10.1.{}.{}", i / 200, i % 200 + 1));
                if draining.contains(&j) {
                    ep(Some(&pod), &addr, Some(false), Some(true), Some(true))
                } else {
                    ep(
                        Some(&pod),
                        &addr,
                        Some(!not_ready.contains(&j)),
                        Some(true),
                        Some(false),
                    )
                }
            })
            .collect();
        let mut sl = slice(&format!("web-{s:02}"), "IPv4", vec![port("http", 8080)], endpoints);
        sl.metadata.resource_version = Some(version.to_string());
        sl.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("endpointslice-controller.k8s.io".into()),
            operation: Some("Update".into()),
            ..Default::default()
        }]);
        sl
    }

    fn hashes() -> u64 {
        crate::affinity::POD_HASHES.with(|n| n.get())
    }

    /// Every peer of `a` but those named in `except` is the very same
    /// allocation in `b`.
    #[track_caller]
    fn shared(a: &View, b: &View, except: &[&str]) {
        for p in a.peers().iter().filter(|p| !except.contains(&p.name.as_str())) {
            let q = b
                .peers()
                .by_name(&p.name)
                .unwrap_or_else(|| panic!("{} is gone", p.name));
            assert!(std::ptr::eq(p, &**q), "{} was rebuilt", p.name);
        }
    }

    /// What an event costs: 5,000 pods in 50 slices of 100, one slice
    /// changing. The pods of the other slices, and the unchanged pods of the
    /// changed one, keep their `Peer` (the same allocation) and are not
    /// hashed again; a relist of unchanged slices changes nothing.
    #[test]
    fn an_event_rebuilds_only_the_pods_it_changes() {
        let store = EndpointStore::default();
        let metrics = Arc::new(Metrics::default());
        let mut src = Source::new(PortSelector::Number(8080), store.clone(), metrics.clone());
        src.on_event(Event::Init);
        for s in 0..50 {
            src.on_event(Event::InitApply(fleet_slice(s, 1, &[], &[])));
        }
        let t = hashes();
        src.on_event(Event::InitDone);
        assert_eq!(hashes() - t, 5000, "each name hashed once");
        let listed = store.load_full();
        assert_eq!((listed.len(), listed.generation), (5000, 1));

        // pod-00703 fails its readiness probe and leaves: nothing is hashed,
        // nothing rebuilt.
        let t = hashes();
        src.on_event(Event::Apply(fleet_slice(7, 2, &[3], &[])));
        assert_eq!(hashes() - t, 0);
        let flipped = store.load_full();
        assert_eq!((flipped.len(), flipped.generation), (4999, 2));
        shared(&flipped, &listed, &[]);
        assert_eq!(
            metrics
                .endpoints
                .get_or_create(&crate::metrics::StateLabels { state: "ready" })
                .get(),
            4999
        );

        // It comes back: its name alone is hashed.
        let t = hashes();
        src.on_event(Event::Apply(fleet_slice(7, 3, &[], &[])));
        assert_eq!(hashes() - t, 1);
        let back = store.load_full();
        assert_eq!(back.len(), 5000);
        shared(&listed, &back, &["pod-00703"]);

        // A pod of the view that starts draining keeps its id.
        let t = hashes();
        src.on_event(Event::Apply(fleet_slice(12, 2, &[], &[40])));
        assert_eq!(hashes() - t, 0);
        let drain = store.load_full();
        assert_eq!(drain.count(PeerState::Draining), 1);
        let p = drain.peers().by_name("pod-01240").unwrap();
        assert_eq!(
            (p.state, p.id),
            (PeerState::Draining, listed.peers().by_name("pod-01240").unwrap().id)
        );
        shared(&back, &drain, &["pod-01240"]);

        // A relist of the same versions: no swap, nothing hashed or rebuilt.
        let t = hashes();
        src.on_event(Event::Init);
        for s in 0..50 {
            let version = match s {
                7 => 3,
                12 => 2,
                _ => 1,
            };
            src.on_event(Event::InitApply(fleet_slice(
                s,
                version,
                &[],
                if s == 12 { &[40] } else { &[] },
            )));
        }
        src.on_event(Event::InitDone);
        assert_eq!(hashes() - t, 0);
        assert_eq!(store.load().generation, drain.generation);

        // The reflector store holds the slices without their managedFields.
        let stored = src.slices.state();
        assert_eq!(stored.len(), 50);
        assert!(stored.iter().all(|s| s.metadata.managed_fields.is_none()));
    }
}
