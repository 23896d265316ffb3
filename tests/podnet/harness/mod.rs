//! A Kubernetes node made of Linux parts, for whole-system tests of stickyd.
//!
//! ```text
//!  ingress ns                 node ns                                pod ns (one per pod)
//!  k6 ──► HAProxy ──eth0──────to-ingress   br0 198.18.0.1/24 ──vpN── eth0 198.18.0.10+i
//!  127.0.0.1:8000  198.18.1.2  198.18.1.1   nat: ClusterIP 198.19.0.10:80   sidecar 0.0.0.0:8080
//!  (mysvc.apps.svc.cluster.local           apiserver double 198.18.0.1:6443 admin   0.0.0.0:9090
//!   → 198.19.0.10 in its hosts file)                                      app     127.0.0.1:8081
//! ```
//!
//! - [`netns`]: the namespaces, sockets inside them, and their cleanup;
//! - [`kubeproxy`]: the ClusterIP as kube-proxy's iptables mode writes it;
//! - [`ingress`]: HAProxy with one upstream server, the ExternalName's name;
//! - [`kubelet`]: pods, and what the kubelet and the control plane do to
//!   them (readiness, termination in Kubernetes' order, failures);
//! - [`k6`]: the browsers, and what they saw.
//!
//! Nothing is created in the test process's own network namespace.

pub mod ingress;
pub mod k6;
pub mod kubelet;
pub mod kubenode;
pub mod kubeproxy;
pub mod netns;
pub mod plane;
pub mod prometheus;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::apiserver::{slice, ApiServer};
use ingress::Ingress;
use kubelet::{Endpoint, Pod};
use kubeproxy::{KubeProxy, ServicePort};
use netns::Netns;

pub const NAMESPACE: &str = "apps";
pub const SERVICE: &str = "mysvc";
/// The Service's EndpointSlice, named as the EndpointSlice controller does.
const SLICE: &str = "mysvc-x7k2p";
/// The name the ExternalName Service points the ingress at.
pub const DNS_NAME: &str = "mysvc.apps.svc.cluster.local";
pub const CLUSTER_IP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), 80);
/// The node's address on the pod bridge (RFC 2544 test range).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const APISERVER: SocketAddrV4 = SocketAddrV4::new(NODE_IP, 6443);
/// The port the Service targets: the sidecar (or, without one, the app).
pub const POD_PORT: u16 = 8080;
pub const ADMIN_PORT: u16 = 9090;
/// Every sidecar's session key, as `stickyd inject` gives one Secret to the
/// pods of a Service.
pub const SESSION_KEY: &str = "podnet-session-key-0123456789abcdef";
/// Every sidecar's drain token, which the app's preStop sends.
pub const DRAIN_TOKEN: &str = "podnet-drain-token-0123456789abcdef";

/// Pod `i`'s address: 198.18.0.10 + i.
pub fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 10)) + i)
}

/// What a cluster is made of.
#[derive(Clone)]
pub struct Spec {
    /// Short, unique per scenario: part of every namespace name.
    pub scenario: &'static str,
    pub pods: u32,
    /// A stickyd sidecar in every pod; without, the Service targets the apps.
    pub sidecars: bool,
    /// HAProxy in front (not needed by tests that only talk to pods).
    pub ingress: bool,
    /// Extra environment of every sidecar.
    pub sidecar_env: Vec<(&'static str, String)>,
    /// terminationGracePeriodSeconds: the drain's `max` (60 s in these
    /// tests) + STICKYD_DRAIN_SECONDS (5) + STICKYD_DRAIN_TIMEOUT (30), as
    /// the manifests size it.
    pub grace: Duration,
}

impl Spec {
    pub fn new(scenario: &'static str, pods: u32) -> Spec {
        Spec {
            scenario,
            pods,
            sidecars: true,
            ingress: true,
            sidecar_env: Vec::new(),
            grace: Duration::from_secs(95),
        }
    }
}

/// Wall-clock milliseconds since the epoch, the unit k6 reports in.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The cluster's clock and timeline.
pub struct Clock {
    t0: Instant,
    epoch0: u64,
    lines: Mutex<Vec<String>>,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            t0: Instant::now(),
            epoch0: epoch_ms(),
            lines: Mutex::default(),
        }
    }

    /// Now, in ms since the epoch (monotonic from the cluster's start).
    pub fn now(&self) -> u64 {
        self.epoch0 + self.t0.elapsed().as_millis() as u64
    }

    /// `t` (ms since the epoch) as ms since the cluster started.
    pub fn rel(&self, t: u64) -> i64 {
        t as i64 - self.epoch0 as i64
    }

    /// Records one timeline line.
    pub fn event(&self, what: impl AsRef<str>) {
        let line = format!("[{:>7} ms] {}", self.t0.elapsed().as_millis(), what.as_ref());
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    pub fn timeline(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the control plane knows and has written.
struct State {
    pods: BTreeMap<String, Arc<Pod>>,
    endpoints: Vec<Endpoint>,
    kube_proxy: KubeProxy,
    /// The next pod index handed out (its address and its veth's name).
    next_pod: u32,
    next_veth: u32,
}

/// One node, its Service, its pods and (optionally) the ingress in front.
/// Dropping it removes every namespace and process.
pub struct Cluster {
    pub spec: Spec,
    pub prefix: String,
    pub clock: Clock,
    /// Logs, configuration files and k6's output.
    pub dir: PathBuf,
    // Dropped in this order: the ingress, the pods, the apiserver, the node.
    pub ingress: Option<Ingress>,
    state: Mutex<State>,
    pub api: ApiServer,
    kubeconfig: PathBuf,
    pub node: Netns,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!("podnet {}: logs kept in {}", self.prefix, self.dir.display());
            for line in self.clock.timeline() {
                println!("  {line}");
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Cluster {
    /// Builds the node, the Service with `spec.pods` ready pods, and the
    /// ingress.
    pub async fn start(spec: Spec) -> Arc<Cluster> {
        for gone in netns::sweep() {
            println!("podnet: removed {gone}, left over by an earlier run");
        }
        let prefix = spec.scenario.to_string();
        let clock = Clock::new();
        let dir = std::env::temp_dir().join(format!("podnet-{}-{prefix}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the cluster's directory");

        let node = Netns::create(&format!("{prefix}-node"));
        node.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"]);
        node.ip(&["link", "set", "br0", "up"]);
        node.exec("sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);

        let api = ApiServer::on_listener(node.bind(SocketAddr::V4(APISERVER)), Duration::from_secs(1));
        let kubeconfig = api.write_kubeconfig(&dir);
        let mut kube_proxy = KubeProxy::install(&node);
        kube_proxy.sync(&node, &service_port(), &[]);
        let ingress = spec
            .ingress
            .then(|| Ingress::start(&prefix, &node, DNS_NAME, CLUSTER_IP, &dir));
        let cluster = Arc::new(Cluster {
            spec,
            prefix,
            clock,
            dir,
            ingress,
            state: Mutex::new(State {
                pods: BTreeMap::new(),
                endpoints: Vec::new(),
                kube_proxy,
                next_pod: 0,
                next_veth: 0,
            }),
            api,
            kubeconfig,
            node,
        });
        cluster.publish(&cluster.state());
        cluster.clock.event(format!(
            "cluster {}: node, apiserver {APISERVER}, ClusterIP {CLUSTER_IP}{}",
            cluster.prefix,
            if cluster.ingress.is_some() { ", ingress" } else { "" }
        ));
        for i in 0..cluster.spec.pods {
            let ip = cluster.next_ip();
            cluster.add_pod(&format!("{SERVICE}-{i}"), ip).await;
        }
        if let Some(ingress) = &cluster.ingress {
            ingress.wait_listening().await;
            cluster
                .clock
                .event(format!("ingress: HAProxy on {} → {DNS_NAME}", ingress::LISTEN));
        }
        cluster
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next unused pod address.
    pub fn next_ip(&self) -> Ipv4Addr {
        let mut st = self.state();
        let ip = pod_ip(st.next_pod);
        st.next_pod += 1;
        ip
    }

    pub fn pod(&self, name: &str) -> Arc<Pod> {
        self.state()
            .pods
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The pods that exist now, by name.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.state().pods.values().cloned().collect()
    }

    pub fn pod_names(&self) -> Vec<String> {
        self.state().pods.keys().cloned().collect()
    }

    /// Changes one endpoint's conditions (None: removes it), then writes the
    /// EndpointSlice and kube-proxy's rules.
    pub fn set_endpoint(&self, pod: &str, ip: Ipv4Addr, conditions: Option<(bool, bool, bool)>) {
        let mut st = self.state();
        st.endpoints.retain(|e| e.pod != pod);
        if let Some((ready, serving, terminating)) = conditions {
            st.endpoints.push(Endpoint {
                pod: pod.to_string(),
                ip,
                ready,
                serving,
                terminating,
            });
        }
        self.publish(&st);
        let ks = kube_proxy_endpoints(&st.endpoints);
        st.kube_proxy.sync(&self.node, &service_port(), &ks);
        let shown: Vec<String> = st.endpoints.iter().map(Endpoint::describe).collect();
        let routed: Vec<String> = st
            .endpoints
            .iter()
            .filter(|e| ks.contains(&e.addr()))
            .map(|e| e.pod.clone())
            .collect();
        drop(st);
        self.clock.event(format!(
            "control plane: endpoints [{}]; kube-proxy → [{}]",
            shown.join(", "),
            routed.join(", ")
        ));
    }

    /// Writes the Service's one EndpointSlice.
    fn publish(&self, st: &State) {
        let ips: Vec<String> = st.endpoints.iter().map(|e| e.ip.to_string()).collect();
        let eps: Vec<(&str, &str, bool, bool, bool)> = st
            .endpoints
            .iter()
            .zip(&ips)
            .map(|(e, ip)| (e.pod.as_str(), ip.as_str(), e.ready, e.serving, e.terminating))
            .collect();
        self.api
            .set_slice(NAMESPACE, slice(SERVICE, SLICE, ("http", POD_PORT), &eps));
    }

    fn insert_pod(&self, pod: Arc<Pod>) {
        self.state().pods.insert(pod.name.clone(), pod);
    }

    fn remove_pod(&self, name: &str) -> Option<Arc<Pod>> {
        self.state().pods.remove(name)
    }

    fn next_veth(&self) -> String {
        let mut st = self.state();
        st.next_veth += 1;
        format!("vp{}", st.next_veth)
    }
}

/// The Service's one port, as kube-proxy names it.
fn service_port() -> ServicePort {
    ServicePort {
        name: format!("{NAMESPACE}/{SERVICE}:http"),
        cluster_ip: CLUSTER_IP,
    }
}

/// The endpoints kube-proxy sends new connections to: the ready ones, or,
/// while none is ready, the serving terminating ones (KEP-1669).
fn kube_proxy_endpoints(endpoints: &[Endpoint]) -> Vec<SocketAddrV4> {
    let ready: Vec<SocketAddrV4> = endpoints.iter().filter(|e| e.ready).map(Endpoint::addr).collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .map(Endpoint::addr)
        .collect()
}
