//! The Kubernetes endpoint source: EndpointSlices of this pod's Service.
//!
//! A kube-runtime [`watcher`] lists and watches the `discovery.k8s.io/v1`
//! EndpointSlices labelled `kubernetes.io/service-name=$STICKYD_SERVICE` in
//! one namespace, with the watcher's default backoff and watch bookmarks.
//! Every change recomputes the whole view from all the slices of the service
//! ([`view_from_slices`]) and swaps it into the [`EndpointStore`] at once.
//!
//! Never destroy a pin on a guess:
//! - the view stays unsynced until the first list has completed;
//! - a relist (after a 410 Gone, say) replaces the view only once it is
//!   complete, and replaces it: slices that were not listed again are gone;
//! - when the API is unreachable, the last good view stays in place while the
//!   watcher retries. Each failed attempt is counted in
//!   `stickyd_kubernetes_watch_errors_total`; the outage is logged once at
//!   warn, and its end at info.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use super::{EndpointStore, Peer, PeerState};
use crate::config::Config;
use crate::metrics::Metrics;

/// Where the pod's namespace is mounted in a pod with a service account token.
pub const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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
    fn pick(&self, ports: &[EndpointPort]) -> Option<u16> {
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

/// The state an endpoint's conditions give it, `None` when it is gone.
///
/// Per the EndpointSlice API: a nil `ready` means ready, a nil `terminating`
/// means not terminating, and a nil `serving` defers to `ready`. A
/// terminating endpoint drains while it is serving; this also holds for
/// Services with `publishNotReadyAddresses`, whose endpoints stay `ready`
/// while they terminate.
fn endpoint_state(ep: &Endpoint) -> Option<PeerState> {
    let c = ep.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    if terminating {
        serving.then_some(PeerState::Draining)
    } else {
        ready.then_some(PeerState::Ready)
    }
}

/// Merges every slice of a Service into one list of peers, by pod.
///
/// A pod is identified by `targetRef.name`, or by its address when the
/// endpoint has no targetRef. Its address is the endpoint's first address
/// with the slice port chosen by `port`; slices without that port, FQDN
/// slices and unparsable addresses contribute nothing. `ready` endpoints are
/// [`PeerState::Ready`], `serving && terminating` ones [`PeerState::Draining`],
/// any other endpoint is left out. A pod listed twice (while endpoints move
/// between slices) is Ready if any of its entries is. The result is sorted by
/// name.
pub fn view_from_slices<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, port: &PortSelector) -> Vec<Peer> {
    let mut by_name: BTreeMap<String, Peer> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(port) = port.pick(slice.ports.as_deref().unwrap_or(&[])) else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(state) = endpoint_state(ep) else {
                continue;
            };
            let Some(ip) = ep.addresses.iter().find_map(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let name = ep
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| ip.to_string());
            let peer = Peer::new(name, SocketAddr::new(ip, port), state);
            match by_name.get(&peer.name) {
                Some(existing) if existing.state == PeerState::Ready || peer.state == PeerState::Draining => {}
                _ => {
                    by_name.insert(peer.name.clone(), peer);
                }
            }
        }
    }
    by_name.into_values().collect()
}

/// The slices (with endpoints) that have no port matching `port`, each
/// with the ports it does have: their endpoints are left out of the view,
/// which usually means STICKYD_PORT_NAME or STICKYD_LISTEN does not match
/// the Service.
fn slices_without_port<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, port: &PortSelector) -> Vec<String> {
    slices
        .into_iter()
        .filter(|s| matches!(s.address_type.as_str(), "IPv4" | "IPv6") && !s.endpoints.is_empty())
        .filter(|s| port.pick(s.ports.as_deref().unwrap_or(&[])).is_none())
        .map(|s| {
            let ports: Vec<String> = s
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}={}/{}",
                        p.name.as_deref().unwrap_or(""),
                        p.port.map(|n| n.to_string()).unwrap_or_else(|| "*".into()),
                        p.protocol.as_deref().unwrap_or("TCP")
                    )
                })
                .collect();
            format!("{} [{}]", slice_name(s), ports.join(", "))
        })
        .collect()
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
/// or the in-cluster configuration. The returned task runs until aborted.
pub async fn start(
    cfg: &Config,
    store: EndpointStore,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, KubeSourceError> {
    let service = cfg.service.clone().ok_or(KubeSourceError::NoService)?;
    let namespace = namespace(cfg)?;
    let config = kube::Config::infer()
        .await
        .map_err(|e| KubeSourceError::Client(kube::Error::InferConfig(e)))?;
    let client = client(config)?;
    let port = PortSelector::from_config(cfg);
    tracing::info!(%namespace, %service, %port, "watching EndpointSlices");
    Ok(spawn(client, &namespace, &service, port, store, metrics))
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
/// keeps `store` up to date. The task runs until aborted.
pub fn spawn(
    client: Client,
    namespace: &str,
    service: &str,
    port: PortSelector,
    store: EndpointStore,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
    let mut source = Source::new(port, store, metrics);
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => source.on_event(event),
                Err(e) => source.on_error(&e),
            }
        }
    })
}

/// The watch state: the slices by name, and the relist in progress.
struct Source {
    port: PortSelector,
    store: EndpointStore,
    metrics: Arc<Metrics>,
    slices: HashMap<String, EndpointSlice>,
    /// Slices of a relist, until it is complete.
    relist: Option<HashMap<String, EndpointSlice>>,
    /// Consecutive failed attempts; non-zero during an outage.
    failures: u64,
}

fn slice_name(s: &EndpointSlice) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

impl Source {
    fn new(port: PortSelector, store: EndpointStore, metrics: Arc<Metrics>) -> Source {
        Source {
            port,
            store,
            metrics,
            slices: HashMap::new(),
            relist: None,
            failures: 0,
        }
    }

    fn on_event(&mut self, event: Event<EndpointSlice>) {
        match event {
            Event::Init => {
                tracing::debug!("listing EndpointSlices");
                self.relist = Some(HashMap::new());
            }
            Event::InitApply(slice) => {
                self.relist
                    .get_or_insert_with(HashMap::new)
                    .insert(slice_name(&slice), slice);
            }
            Event::InitDone => {
                self.slices = self.relist.take().unwrap_or_default();
                self.recovered();
                self.publish("list");
            }
            Event::Apply(slice) => {
                self.recovered();
                self.slices.insert(slice_name(&slice), slice);
                self.publish("watch");
            }
            Event::Delete(slice) => {
                self.recovered();
                self.slices.remove(&slice_name(&slice));
                self.publish("watch");
            }
        }
    }

    fn on_error(&mut self, error: &watcher::Error) {
        self.metrics.kube_watch_errors.inc();
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

    /// Recomputes the view from every slice and swaps it in if it changed
    /// (or is the first synced one).
    fn publish(&self, from: &'static str) {
        let peers = view_from_slices(self.slices.values(), &self.port);
        let current = self.store.load();
        if current.synced && current.peers() == peers.as_slice() {
            tracing::debug!(from, slices = self.slices.len(), "endpoint view unchanged");
            return;
        }
        let unmatched = slices_without_port(self.slices.values(), &self.port);
        if !unmatched.is_empty() {
            tracing::warn!(
                port = %self.port,
                slices = ?unmatched,
                "EndpointSlices without the sidecar's port: their endpoints are left out of the view; \
                 check STICKYD_PORT_NAME (or STICKYD_LISTEN's port) against the Service's ports"
            );
        }
        let ready = peers.iter().filter(|p| p.state == PeerState::Ready).count();
        let draining = peers.len() - ready;
        let names: Vec<String> = peers
            .iter()
            .map(|p| format!("{}={}({})", p.name, p.addr, p.state.as_str()))
            .collect();
        drop(current);
        self.store.replace(peers, true);
        let view = self.store.load();
        self.metrics.observe_view(&view);
        tracing::info!(
            from,
            generation = view.generation,
            slices = self.slices.len(),
            ready,
            draining,
            "endpoint view updated"
        );
        tracing::debug!(from, generation = view.generation, peers = ?names, "endpoint view peers");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::EndpointConditions;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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

    fn summary(peers: &[Peer]) -> Vec<(String, String, &'static str)> {
        peers
            .iter()
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
    fn slices_without_the_port_are_named() {
        let good = slice(
            "web-a",
            "IPv4",
            vec![port("http", 8080)],
            vec![ready("web-0", "10.0.0.1")],
        );
        let bad = slice(
            "web-b",
            "IPv4",
            vec![port("metrics", 9090), port("web", 80)],
            vec![ready("web-1", "10.0.0.2")],
        );
        let empty = slice("web-c", "IPv4", vec![port("web", 80)], vec![]);
        let sel = PortSelector::Name("http".into());
        assert_eq!(
            slices_without_port([&good, &bad, &empty], &sel),
            vec!["web-b [metrics=9090/TCP, web=80/TCP]".to_string()]
        );
        assert!(slices_without_port([&good], &PortSelector::Number(8080)).is_empty());
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
}
