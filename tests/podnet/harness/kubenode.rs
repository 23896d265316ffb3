//! The node of a real control plane ([`super::plane`]): its kubelet and its
//! kube-proxy, on the pod network of [`super::netns`].
//!
//! The kubelet registers Node `node-0` (and renews its Lease), watches the
//! Pods bound to it, and for each:
//! - gives it a namespace on the bridge and the lowest free address of
//!   198.18.0.10+ (so a dead pod's address goes to the next pod, as a CNI's
//!   host-local IPAM may do);
//! - writes its volumes (Secrets, the projected ServiceAccount token with a
//!   real TokenRequest bound to the Pod, `kube-root-ca.crt`, the namespace)
//!   into the pod's folder, and starts each container in a mount namespace of
//!   its own in which the pod's `/etc`, `/run` and `/root` are folders of the
//!   pod and every `volumeMount` is a bind mount at its `mountPath`: the
//!   sidecar reads its in-cluster configuration from
//!   `/var/run/secrets/kubernetes.io/serviceaccount` as in a cluster;
//! - starts native sidecars (restartable init containers) first, then the
//!   containers, with their env resolved (values, `fieldRef`, `secretKeyRef`)
//!   and `KUBERNETES_SERVICE_HOST`/`PORT`;
//! - runs the readiness probes from the node and writes the Pod's status
//!   (podIP, phase, conditions, container statuses) through the API;
//! - once the Pod has a deletionTimestamp: the regular containers' preStop
//!   hooks (`httpGet` to the pod IP with the hook's headers, or `sleep`),
//!   SIGTERM to them (SIGKILL at the end of the grace period), the Pod not
//!   ready, then SIGTERM to the sidecars in reverse order, and the Pod's
//!   removal (a delete with grace 0 and the Pod's UID as precondition).
//!
//! Every container's image must be `stickyd` (any registry and tag), which
//! runs as this build's `stickyd` binary with the container's `args`, or
//! `demo-app`, an app of another image (the injector adds its sidecar only
//! to pods that do not run stickyd yet), which runs `stickyd demo --app-only`
//! with them. Probes run
//! every 250 ms, not at `periodSeconds`, so that tests do not wait for them.
//!
//! kube-proxy watches every Service and EndpointSlice and writes the
//! ClusterIPs' iptables rules ([`super::kubeproxy`]) from the endpoints the
//! real EndpointSlice controller wrote: ready ones, or while none is ready
//! the serving terminating ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container as Spec, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{json, Value};

use super::kubelet::{busiest, views_show, Container, HookOutcome};
use super::kubeproxy::KubeProxy;
use super::netns::{run, Netns};
use super::plane::{Plane, API_PORT, KUBERNETES_SERVICE, NODE_NAME};
use super::{pod_ip, Clock, NODE_IP};

const PROBE_PERIOD: Duration = Duration::from_millis(250);
/// The least the kubelet gives a sidecar to stop, whatever is left of the
/// grace period.
const SIDECAR_MIN_GRACE: Duration = Duration::from_secs(2);

fn now_time() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn now_micro() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// One container of a pod.
pub struct Box_ {
    pub name: String,
    /// A native sidecar (an init container with restartPolicy: Always).
    pub sidecar: bool,
    pub proc: Container,
    /// The readiness probe's port, path and whether over HTTPS (None: ready
    /// once running).
    probe: Option<(u16, String, bool)>,
    ready: AtomicBool,
}

/// What the kubelet did to end a pod.
#[derive(Clone, Debug, Default)]
pub struct Ended {
    pub pod: String,
    /// When the kubelet saw the deletionTimestamp (ms since the epoch).
    pub seen: u64,
    pub prestop: Vec<HookOutcome>,
    pub app_killed: bool,
    pub sidecar_killed: bool,
    /// When the Pod was removed from the API.
    pub removed: u64,
}

/// A pod the kubelet runs.
pub struct RunPod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    index: u32,
    pub veth: String,
    pub dir: PathBuf,
    // Dropped in this order: the processes, then the namespace.
    pub boxes: Vec<Box_>,
    pub ns: Netns,
    terminating: AtomicBool,
    /// Killed by the test ([`KubeNode::kill_dark`]).
    dead: AtomicBool,
}

impl RunPod {
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 9090))
    }

    pub fn container(&self, name: &str) -> &Box_ {
        self.boxes
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("{} has no container {name}", self.name))
    }

    fn ready(&self) -> bool {
        self.boxes.iter().all(|b| b.ready.load(Ordering::SeqCst))
    }
}

struct State {
    /// By UID.
    pods: BTreeMap<String, Arc<RunPod>>,
    /// UIDs being started or ended.
    busy: BTreeSet<String>,
    /// Pod address indexes in use.
    ips: BTreeSet<u32>,
    ended: Vec<Ended>,
}

/// The node: its kubelet, its kube-proxy, and the control plane it belongs to.
pub struct KubeNode {
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    state: Mutex<State>,
    veths: AtomicU32,
    kube_proxy: Mutex<KubeProxy>,
    pub clock: Arc<Clock>,
    pub dir: PathBuf,
    pub prefix: String,
    /// The kubelet's identity (system:node:node-0).
    pub client: kube::Client,
    /// system:masters.
    pub admin: kube::Client,
    pub plane: Plane,
    pub node: Netns,
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
        // The pods' processes and namespaces go before the control plane.
        let pods: Vec<Arc<RunPod>> = self.state().pods.values().cloned().collect();
        self.state().pods.clear();
        drop(pods);
    }
}

impl KubeNode {
    /// Builds the node namespace and its bridge, starts the control plane in
    /// it, registers the Node and starts the kubelet and kube-proxy.
    pub async fn start(prefix: &str, dir: &Path, clock: Arc<Clock>, bin: &Path) -> Arc<KubeNode> {
        let node = Netns::create(&format!("{prefix}-node"));
        node.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"]);
        node.ip(&["link", "set", "br0", "up"]);
        node.exec("sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        let kube_proxy = KubeProxy::install(&node);
        let plane = Plane::start(&node, dir, bin).await;
        clock.event(format!(
            "control plane: etcd, kube-apiserver ({NODE_IP}:{API_PORT}), kube-controller-manager, kube-scheduler"
        ));
        let client = plane.client(&plane.node_identity).await;
        let admin = plane.client(&plane.admin).await;
        let kn = Arc::new(KubeNode {
            tasks: Mutex::default(),
            state: Mutex::new(State {
                pods: BTreeMap::new(),
                busy: BTreeSet::new(),
                ips: BTreeSet::new(),
                ended: Vec::new(),
            }),
            veths: AtomicU32::new(0),
            kube_proxy: Mutex::new(kube_proxy),
            clock,
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            client,
            admin,
            plane,
            node,
        });
        kn.register().await;
        let weak = Arc::downgrade(&kn);
        let lease = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let Some(kn) = weak.upgrade() else { return };
                kn.heartbeat().await;
            }
        });
        let kubelet = tokio::spawn(Self::kubelet(Arc::downgrade(&kn), kn.client.clone()));
        let proxy = tokio::spawn(Self::proxy(Arc::downgrade(&kn), kn.admin.clone()));
        kn.tasks.lock().unwrap().extend([lease, kubelet, proxy]);
        kn
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Node, Ready, and its Lease.
    async fn register(&self) {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {
                "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        });
        nodes
            .create(&PostParams::default(), &serde_json::from_value(node).unwrap())
            .await
            .expect("the kubelet registers its Node");
        self.heartbeat().await;
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": NODE_NAME},
            "spec": {"holderIdentity": NODE_NAME, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        });
        // kube-node-lease is made by the apiserver at start; it may lag.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match leases
                .create(&PostParams::default(), &serde_json::from_value(lease.clone()).unwrap())
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("the node's Lease: {e}"),
            }
        }
        self.clock.event(format!("kubelet: Node {NODE_NAME} registered, Ready"));
    }

    /// The Node's status (Ready now) and its Lease's renewTime.
    async fn heartbeat(&self) {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let now = now_time();
        let status = json!({"status": {
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": NODE_IP.to_string()},
                          {"type": "Hostname", "address": NODE_NAME}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "podnet",
                "containerRuntimeVersion": "podnet://0", "kubeletVersion": "v1.37.2", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64"},
        }});
        let _ = nodes
            .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(status))
            .await;
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "kube-node-lease");
        let _ = leases
            .patch(
                NODE_NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"renewTime": now_micro()}})),
            )
            .await;
    }

    /// The kubelet's loop: every Pod bound to this node.
    async fn kubelet(me: std::sync::Weak<KubeNode>, client: kube::Client) {
        use kube::runtime::WatchStreamExt;
        let pods: Api<Pod> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={NODE_NAME}"));
        let mut stream = watcher(pods, cfg).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            let Some(kn) = me.upgrade() else { return };
            match ev {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => kn.saw(pod),
                Ok(watcher::Event::Delete(pod)) => kn.gone(&pod),
                Ok(_) => {}
                Err(e) => kn.clock.event(format!("kubelet: watch error: {e}")),
            }
        }
    }

    fn saw(self: &Arc<Self>, pod: Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut st = self.state();
        if st.busy.contains(&uid) {
            return;
        }
        let running = st.pods.get(&uid).cloned();
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match running {
            None if !deleting => {
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                if phase == "Succeeded" || phase == "Failed" {
                    return;
                }
                st.busy.insert(uid.clone());
                drop(st);
                let kn = self.clone();
                let task = tokio::spawn(async move {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let ns = pod.metadata.namespace.clone().unwrap_or_default();
                    if let Err(e) = kn.clone().start_pod(pod).await {
                        kn.clock.event(format!("kubelet: {name} failed to start: {e}"));
                    }
                    kn.state().busy.remove(&uid);
                    // A deletion seen while it started: look again.
                    if let Ok(Some(pod)) = Api::<Pod>::namespaced(kn.client.clone(), &ns).get_opt(&name).await {
                        if pod.metadata.uid.as_deref() == Some(uid.as_str()) {
                            kn.saw(pod);
                        }
                    }
                });
                self.tasks.lock().unwrap().push(task);
            }
            Some(rp) if deleting && !rp.terminating.swap(true, Ordering::SeqCst) => {
                st.busy.insert(uid.clone());
                drop(st);
                let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0) as u64;
                let kn = self.clone();
                let task = tokio::spawn(async move {
                    kn.end_pod(rp, pod, Duration::from_secs(grace)).await;
                    kn.state().busy.remove(&uid);
                });
                self.tasks.lock().unwrap().push(task);
            }
            _ => {}
        }
    }

    /// The Pod left the API (a forced delete, or our own final delete).
    fn gone(&self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut st = self.state();
        if st.busy.contains(&uid) {
            return;
        }
        if let Some(rp) = st.pods.remove(&uid) {
            if !rp.dead.load(Ordering::SeqCst) {
                st.ips.remove(&rp.index);
            }
            drop(st);
            self.clock.event(format!(
                "kubelet: {} deleted from the API; its processes killed",
                rp.name
            ));
        }
    }

    /// The lowest free pod address.
    fn alloc_ip(&self) -> u32 {
        let mut st = self.state();
        let i = (0..).find(|i| !st.ips.contains(i)).unwrap();
        st.ips.insert(i);
        i
    }

    async fn start_pod(self: Arc<Self>, pod: Pod) -> Result<(), String> {
        let started = Instant::now();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().ok_or("no spec")?;
        let index = self.alloc_ip();
        let ip = pod_ip(index);
        let veth = format!("vk{}", self.veths.fetch_add(1, Ordering::SeqCst) + 1);
        let ns = Netns::create(&format!("{}-p{}", self.prefix, veth));
        self.node.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.node.ip(&["link", "set", &veth, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &NODE_IP.to_string()]);
        // What the CNI's gratuitous ARP does: neighbours forget the address's old owner.
        let _ = run(Command::new("ip").args(["-n", &self.node.name, "neigh", "flush", "to", &ip.to_string()]));

        let dir = self.dir.join("pods").join(&name);
        for sub in ["etc", "run", "root", "vol"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
        }
        for f in [
            "ld.so.cache",
            "ld.so.conf",
            "nsswitch.conf",
            "passwd",
            "group",
            "resolv.conf",
        ] {
            let _ = std::fs::copy(Path::new("/etc").join(f), dir.join("etc").join(f));
        }
        std::fs::write(dir.join("etc/hosts"), format!("127.0.0.1 localhost\n{ip} {name}\n"))
            .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("etc/hostname"), format!("{name}\n")).map_err(|e| e.to_string())?;
        self.write_volumes(&pod, &dir).await?;

        let mut order: Vec<(Spec, bool)> = Vec::new();
        for c in spec.init_containers.clone().unwrap_or_default() {
            if c.restart_policy.as_deref() != Some("Always") {
                return Err(format!(
                    "init container {} is not a sidecar: not supported here",
                    c.name
                ));
            }
            order.push((c, true));
        }
        for c in spec.containers.clone() {
            order.push((c, false));
        }
        let mut boxes = Vec::new();
        for (c, sidecar) in order {
            let env = self.env(&pod, &c, ip).await?;
            let proc = self.spawn(&ns, &dir, &name, &c, &env, &spec)?;
            let probe = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| {
                let port = match &h.port {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n as u16,
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => c
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(s))
                        .map(|p| p.container_port as u16)
                        .unwrap_or_else(|| panic!("{name}/{}: no port named {s}", c.name)),
                };
                let https = h.scheme.as_deref() == Some("HTTPS");
                (port, h.path.clone().unwrap_or_else(|| "/".into()), https)
            });
            boxes.push(Box_ {
                name: c.name.clone(),
                sidecar,
                proc,
                ready: AtomicBool::new(probe.is_none()),
                probe,
            });
        }
        let rp = Arc::new(RunPod {
            name: name.clone(),
            namespace: namespace.clone(),
            uid: uid.clone(),
            ip,
            index,
            veth,
            dir,
            boxes,
            ns,
            terminating: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        });
        self.state().pods.insert(uid.clone(), rp.clone());
        self.write_status(&rp).await;
        self.clock.event(format!("kubelet: {name} ({ip}) started"));
        // The probe loop lives as long as the pod does.
        let kn = Arc::downgrade(&self);
        let weak = Arc::downgrade(&rp);
        let t = tokio::spawn(async move {
            let mut was_ready = false;
            let mut first = true;
            loop {
                tokio::time::sleep(PROBE_PERIOD).await;
                let (Some(kn), Some(rp)) = (kn.upgrade(), weak.upgrade()) else {
                    return;
                };
                if rp.dead.load(Ordering::SeqCst) {
                    return;
                }
                let mut changed = false;
                for b in &rp.boxes {
                    let ok = b.proc.exited().is_none()
                        && match &b.probe {
                            None => true,
                            Some((port, path, false)) => kn
                                .node
                                .get(SocketAddr::from((rp.ip, *port)), path, Duration::from_secs(1))
                                .await
                                .is_ok_and(|r| (200..400).contains(&r.status)),
                            // As the kubelet: TLS without verifying the certificate.
                            Some((port, path, true)) => {
                                let url = format!("https://{}:{port}{path}", rp.ip);
                                let out = tokio::process::Command::from(kn.node.command("curl"))
                                    .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", &url])
                                    .output()
                                    .await;
                                out.ok()
                                    .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u16>().ok())
                                    .is_some_and(|c| (200..400).contains(&c))
                            }
                        };
                    if b.ready.swap(ok, Ordering::SeqCst) != ok {
                        changed = true;
                    }
                }
                let ready = rp.ready();
                if changed || first {
                    kn.write_status(&rp).await;
                }
                if ready != was_ready {
                    kn.clock.event(format!(
                        "kubelet: {} {}{}",
                        rp.name,
                        if ready { "ready" } else { "not ready" },
                        if ready && first {
                            format!(" after {} ms", started.elapsed().as_millis())
                        } else {
                            String::new()
                        }
                    ));
                    was_ready = ready;
                    first = false;
                }
            }
        });
        self.tasks.lock().unwrap().push(t);
        Ok(())
    }

    /// The pod's volumes, in `dir/vol/<name>`.
    async fn write_volumes(&self, pod: &Pod, dir: &Path) -> Result<(), String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let spec = pod.spec.as_ref().ok_or("no spec")?;
        for v in spec.volumes.iter().flatten() {
            let at = dir.join("vol").join(&v.name);
            std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
            if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                let secret: Secret = {
                    let api = Api::<Secret>::namespaced(self.client.clone(), &ns);
                    self.retry(|| {
                        let (api, name) = (api.clone(), name.clone());
                        async move { api.get(&name).await }
                    })
                    .await?
                };
                let data = secret.data.unwrap_or_default();
                let items: Vec<(String, String)> = match &s.items {
                    Some(items) => items.iter().map(|i| (i.key.clone(), i.path.clone())).collect(),
                    None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
                };
                for (key, path) in items {
                    let v = data
                        .get(&key)
                        .ok_or_else(|| format!("Secret {name} has no key {key}"))?;
                    std::fs::write(at.join(path), &v.0).map_err(|e| e.to_string())?;
                }
            } else if let Some(p) = &v.projected {
                for src in p.sources.iter().flatten() {
                    if let Some(t) = &src.service_account_token {
                        let sa = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
                        let req = json!({
                            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                            "spec": {
                                "audiences": t.audience.iter().cloned().collect::<Vec<_>>(),
                                "expirationSeconds": t.expiration_seconds.unwrap_or(3607),
                                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                    "name": pod.metadata.name, "uid": pod.metadata.uid},
                            },
                        });
                        let req: k8s_openapi::api::authentication::v1::TokenRequest =
                            serde_json::from_value(req).unwrap();
                        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), &ns);
                        let out = self
                            .retry(|| {
                                let (api, sa, req) = (api.clone(), sa.clone(), req.clone());
                                async move { api.create_token_request(&sa, &PostParams::default(), &req).await }
                            })
                            .await?;
                        let token = out.status.map(|s| s.token).unwrap_or_default();
                        std::fs::write(at.join(&t.path), token).map_err(|e| e.to_string())?;
                    }
                    if let Some(c) = &src.config_map {
                        let name = c.name.clone();
                        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &ns);
                        let cm: ConfigMap = self
                            .retry(|| {
                                let (api, name) = (api.clone(), name.clone());
                                async move { api.get(&name).await }
                            })
                            .await?;
                        let data = cm.data.unwrap_or_default();
                        for i in c.items.iter().flatten() {
                            let v = data
                                .get(&i.key)
                                .ok_or_else(|| format!("ConfigMap {name} has no key {}", i.key))?;
                            std::fs::write(at.join(&i.path), v).map_err(|e| e.to_string())?;
                        }
                    }
                    if let Some(d) = &src.downward_api {
                        for i in d.items.iter().flatten() {
                            let field = i.field_ref.as_ref().map(|f| f.field_path.as_str());
                            let v = match field {
                                Some("metadata.namespace") => ns.clone(),
                                Some("metadata.name") => pod.metadata.name.clone().unwrap_or_default(),
                                other => return Err(format!("downwardAPI {other:?}: not supported here")),
                            };
                            std::fs::write(at.join(&i.path), v).map_err(|e| e.to_string())?;
                        }
                    }
                }
            } else if v.empty_dir.is_none() {
                return Err(format!(
                    "volume {}: only secret, projected and emptyDir are supported here",
                    v.name
                ));
            }
        }
        Ok(())
    }

    /// `f` until it succeeds (the Node authorizer learns a new Pod's
    /// Secrets and ServiceAccount a moment after the Pod is bound), for 20 s.
    async fn retry<T, F: std::future::Future<Output = kube::Result<T>>>(&self, f: impl Fn() -> F) -> Result<T, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The container's environment, as the kubelet resolves it.
    async fn env(&self, pod: &Pod, c: &Spec, ip: Ipv4Addr) -> Result<Vec<(String, String)>, String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let mut out = vec![
            ("KUBERNETES_SERVICE_HOST".to_string(), KUBERNETES_SERVICE.to_string()),
            ("KUBERNETES_SERVICE_PORT".to_string(), "443".to_string()),
            ("HOSTNAME".to_string(), pod.metadata.name.clone().unwrap_or_default()),
        ];
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    if let Some(f) = &from.field_ref {
                        match f.field_path.as_str() {
                            "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                            "metadata.namespace" => ns.clone(),
                            "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                            "status.podIP" => ip.to_string(),
                            "spec.nodeName" => NODE_NAME.to_string(),
                            other => return Err(format!("fieldRef {other}: not supported here")),
                        }
                    } else if let Some(s) = &from.secret_key_ref {
                        let api = Api::<Secret>::namespaced(self.client.clone(), &ns);
                        let secret: Secret = self
                            .retry(|| {
                                let (api, name) = (api.clone(), s.name.clone());
                                async move { api.get(&name).await }
                            })
                            .await?;
                        let v = secret.data.unwrap_or_default().remove(&s.key).ok_or("no such key")?;
                        String::from_utf8_lossy(&v.0).into_owned()
                    } else {
                        return Err(format!(
                            "env {}: only fieldRef and secretKeyRef are supported here",
                            e.name
                        ));
                    }
                }
                (None, None) => String::new(),
            };
            out.push((e.name.clone(), value));
        }
        Ok(out)
    }

    /// Starts one container in the pod's namespace, in a mount namespace of
    /// its own (see the module's doc).
    fn spawn(
        &self,
        ns: &Netns,
        dir: &Path,
        pod: &str,
        c: &Spec,
        env: &[(String, String)],
        spec: &k8s_openapi::api::core::v1::PodSpec,
    ) -> Result<Container, String> {
        let image = c.image.clone().unwrap_or_default();
        let repo = image.split(['@', ':']).next().unwrap_or_default();
        let first: &[&str] = match repo.rsplit('/').next() {
            Some("stickyd") => &[],
            Some("demo-app") => &["demo", "--app-only"],
            _ => {
                return Err(format!(
                    "{pod}/{}: image {image}: only stickyd and demo-app images run here",
                    c.name
                ))
            }
        };
        if c.command.is_some() {
            return Err(format!("{pod}/{}: `command` is not supported here", c.name));
        }
        let q = |p: &Path| format!("'{}'", p.display());
        let mut script = String::from("set -e\nPATH=/usr/sbin:/usr/bin:/sbin:/bin\n");
        for (from, to) in [("etc", "/etc"), ("run", "/run"), ("root", "/root")] {
            script.push_str(&format!("mount --bind {} {to}\n", q(&dir.join(from))));
        }
        for m in c.volume_mounts.iter().flatten() {
            let vol = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .ok_or_else(|| format!("{pod}/{}: no volume {}", c.name, m.name))?;
            let src = dir.join("vol").join(&vol.name);
            let ro = if m.read_only == Some(true) { ",ro" } else { "" };
            script.push_str(&format!(
                "mkdir -p '{to}' && mount --bind {src} '{to}' && mount -o remount,bind{ro} '{to}'\n",
                to = m.mount_path,
                src = q(&src)
            ));
        }
        script.push_str("exec \"$@\"\n");
        let vars: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<String> = c
            .args
            .iter()
            .flatten()
            .map(|a| {
                let mut a = a.clone();
                for (k, v) in &vars {
                    a = a.replace(&format!("$({k})"), v);
                }
                a
            })
            .collect();
        let mut cmd = ns.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c", &script, "sh"])
            .arg(env!("CARGO_BIN_EXE_stickyd"))
            .args(first)
            .args(&args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)));
        Ok(Container::spawn(
            cmd,
            format!("{pod}/{}", c.name),
            self.dir.join(format!("{pod}-{}.log", c.name)),
        ))
    }

    /// The Pod's status as the kubelet writes it.
    async fn write_status(&self, rp: &RunPod) {
        let now = now_time();
        let ready = rp.ready();
        let t = |b: bool| if b { "True" } else { "False" };
        let status = |b: &Box_| {
            let state = match b.proc.exited() {
                None => json!({"running": {"startedAt": now}}),
                Some(s) => {
                    json!({"terminated": {"exitCode": s.code().unwrap_or(137), "finishedAt": now, "startedAt": now}})
                }
            };
            json!({"name": b.name, "image": "stickyd:podnet", "imageID": "", "ready": b.ready.load(Ordering::SeqCst),
                   "restartCount": 0, "started": b.proc.exited().is_none(), "state": state})
        };
        let body = json!({"status": {
            "phase": "Running",
            "hostIP": NODE_IP.to_string(), "hostIPs": [{"ip": NODE_IP.to_string()}],
            "podIP": rp.ip.to_string(), "podIPs": [{"ip": rp.ip.to_string()}],
            "startTime": now,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": t(ready), "lastTransitionTime": now},
                {"type": "ContainersReady", "status": t(ready), "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "initContainerStatuses": rp.boxes.iter().filter(|b| b.sidecar).map(status).collect::<Vec<Value>>(),
            "containerStatuses": rp.boxes.iter().filter(|b| !b.sidecar).map(status).collect::<Vec<Value>>(),
        }});
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &rp.namespace);
        if let Err(e) = pods
            .patch_status(&rp.name, &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            self.clock.event(format!("kubelet: status of {}: {e}", rp.name));
        }
    }

    /// Kubernetes' order for ending a pod with native sidecars.
    async fn end_pod(&self, rp: Arc<RunPod>, pod: Pod, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut ended = Ended {
            pod: rp.name.clone(),
            seen: self.clock.now(),
            ..Ended::default()
        };
        self.clock
            .event(format!("kubelet: {} deleted, grace {} s", rp.name, grace.as_secs()));
        if rp.dead.load(Ordering::SeqCst) {
            // Its processes and link are gone already: nothing to run.
            self.state().pods.remove(&rp.uid);
            ended.removed = self.clock.now();
            self.clock.event(format!("kubelet: {} (dead) removed", rp.name));
            self.state().ended.push(ended);
            return;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        // 1. The regular containers' preStop hooks, at once.
        let hooks = spec.containers.iter().filter_map(|c| {
            let hook = c.lifecycle.as_ref()?.pre_stop.clone()?;
            let rp = rp.clone();
            let clock = &self.clock;
            let node = &self.node;
            Some(async move {
                let mut out = HookOutcome {
                    started: clock.now(),
                    ..HookOutcome::default()
                };
                let left = deadline.saturating_duration_since(Instant::now());
                if let Some(h) = hook.http_get {
                    let port = match h.port {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n as u16,
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => c
                            .ports
                            .iter()
                            .flatten()
                            .find(|p| p.name.as_deref() == Some(&s))
                            .map(|p| p.container_port as u16)
                            .unwrap_or(0),
                    };
                    let headers: Vec<(String, String)> = h
                        .http_headers
                        .iter()
                        .flatten()
                        .map(|h| (h.name.clone(), h.value.clone()))
                        .collect();
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let path = h.path.unwrap_or_else(|| "/".into());
                    match node
                        .get_with(SocketAddr::from((rp.ip, port)), &path, &headers, left)
                        .await
                    {
                        Ok(r) => {
                            out.status = Some(r.status);
                            out.body = r.body;
                        }
                        Err(e) => out.error = Some(e),
                    }
                } else if let Some(s) = hook.sleep {
                    tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(left)).await;
                }
                out.ended = clock.now();
                clock.event(format!(
                    "kubelet: preStop of {}/{} done after {} ms: {}",
                    rp.name,
                    c.name,
                    out.ended - out.started,
                    match (&out.status, &out.error) {
                        (Some(s), _) => format!("{s} {}", out.body.trim()),
                        (None, Some(e)) => format!("failed: {e}"),
                        (None, None) => "slept".into(),
                    }
                ));
                out
            })
        });
        ended.prestop = futures_util::future::join_all(hooks).await;
        // 2. SIGTERM to the regular containers.
        for b in rp.boxes.iter().filter(|b| !b.sidecar) {
            self.clock.event(format!("kubelet: SIGTERM {}", b.proc.what));
            ended.app_killed |= b.proc.terminate(deadline).await;
            b.ready.store(false, Ordering::SeqCst);
            self.clock.event(format!(
                "kubelet: {} {}",
                b.proc.what,
                if ended.app_killed { "SIGKILLed" } else { "exited" }
            ));
        }
        self.write_status(&rp).await;
        // 3. The sidecars, in reverse order.
        for b in rp.boxes.iter().rev().filter(|b| b.sidecar) {
            self.clock.event(format!("kubelet: SIGTERM {}", b.proc.what));
            ended.sidecar_killed |= b.proc.terminate(deadline.max(Instant::now() + SIDECAR_MIN_GRACE)).await;
            b.ready.store(false, Ordering::SeqCst);
            self.clock.event(format!(
                "kubelet: {} {}",
                b.proc.what,
                if ended.sidecar_killed { "SIGKILLed" } else { "exited" }
            ));
        }
        // 4. The Pod's removal.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &rp.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(rp.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(e) = pods.delete(&rp.name, &dp).await {
            self.clock.event(format!("kubelet: delete {}: {e}", rp.name));
        }
        {
            let mut st = self.state();
            st.pods.remove(&rp.uid);
            if !rp.dead.load(Ordering::SeqCst) {
                st.ips.remove(&rp.index);
            }
        }
        ended.removed = self.clock.now();
        self.clock.event(format!("kubelet: {} removed", rp.name));
        self.state().ended.push(ended);
    }

    /// What the kubelet did to end each pod so far.
    pub fn ended(&self) -> Vec<Ended> {
        self.state().ended.clone()
    }

    /// The pods running now (not yet removed).
    pub fn pods(&self) -> Vec<Arc<RunPod>> {
        self.state().pods.values().cloned().collect()
    }

    pub fn pod(&self, name: &str) -> Arc<RunPod> {
        self.pods()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} runs"))
    }

    /// The pod dies without a word: its link is cut first, its processes
    /// SIGKILLed. The Pod object stays until the test deletes it. Returns
    /// its address.
    pub fn kill_dark(&self, name: &str) -> Ipv4Addr {
        let rp = self.pod(name);
        rp.dead.store(true, Ordering::SeqCst);
        self.node.ip(&["link", "del", &rp.veth]);
        // Its sandbox is gone: the address is free for the next pod.
        self.state().ips.remove(&rp.index);
        for b in &rp.boxes {
            b.proc.kill();
        }
        self.clock
            .event(format!("{name} ({}) died dark: link cut, processes SIGKILLed", rp.ip));
        rp.ip
    }

    /// kube-proxy: Services and EndpointSlices to iptables rules.
    async fn proxy(me: std::sync::Weak<KubeNode>, client: kube::Client) {
        use kube::runtime::{reflector, WatchStreamExt};
        let (svcs, svc_writer) = reflector::store::<Service>();
        let (slices, slice_writer) = reflector::store::<EndpointSlice>();
        let a = watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(svc_writer)
            .map(|_| ());
        let b = watcher(Api::<EndpointSlice>::all(client), watcher::Config::default())
            .default_backoff()
            .reflect(slice_writer)
            .map(|_| ());
        let mut events = futures_util::stream::select(a.boxed(), b.boxed());
        while events.next().await.is_some() {
            let Some(kn) = me.upgrade() else { return };
            let mut ports = BTreeMap::new();
            for svc in svcs.state() {
                let Some(spec) = &svc.spec else { continue };
                let Some(cip) = spec.cluster_ip.as_deref().and_then(|c| c.parse::<Ipv4Addr>().ok()) else {
                    continue;
                };
                let ns = svc.metadata.namespace.clone().unwrap_or_default();
                let name = svc.metadata.name.clone().unwrap_or_default();
                for p in spec.ports.iter().flatten() {
                    let mut ready = Vec::new();
                    let mut serving = Vec::new();
                    for s in slices.state().iter().filter(|s| {
                        s.metadata.namespace.as_deref() == Some(&ns)
                            && s.metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get("kubernetes.io/service-name"))
                                == Some(&name)
                    }) {
                        let Some(port) = s
                            .ports
                            .iter()
                            .flatten()
                            .find(|sp| sp.name.as_deref().unwrap_or("") == p.name.as_deref().unwrap_or(""))
                            .and_then(|sp| sp.port)
                        else {
                            continue;
                        };
                        for e in &s.endpoints {
                            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                                continue;
                            };
                            let c = e.conditions.clone().unwrap_or_default();
                            let r = c.ready.unwrap_or(true);
                            let addr = SocketAddrV4::new(ip, port as u16);
                            if r {
                                ready.push(addr);
                            } else if c.serving.unwrap_or(r) && c.terminating.unwrap_or(false) {
                                serving.push(addr);
                            }
                        }
                    }
                    let mut eps = if ready.is_empty() { serving } else { ready };
                    eps.sort();
                    let key = format!("{ns}/{name}:{}", p.name.clone().unwrap_or_default());
                    ports.insert(key, (SocketAddrV4::new(cip, p.port as u16), eps));
                }
            }
            let shown: Vec<String> = ports
                .iter()
                .filter(|(k, _)| !k.starts_with("default/kubernetes"))
                .map(|(k, (_, eps))| {
                    format!(
                        "{k} → [{}]",
                        eps.iter().map(|e| e.ip().to_string()).collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            let changed = {
                let mut kp = kn.kube_proxy.lock().unwrap_or_else(|e| e.into_inner());
                kp.sync_all(&kn.node, ports)
            };
            if changed {
                kn.clock.event(format!("kube-proxy: {}", shown.join("; ")));
            }
        }
    }

    /// Polls until `f` holds, at most `limit`; panics with `what` if not.
    pub async fn until<F: std::future::Future<Output = bool>>(&self, what: &str, limit: Duration, f: impl Fn() -> F) {
        let deadline = Instant::now() + limit;
        while !f().await {
            self.plane.check_running();
            assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.clock.event(format!("ok: {what}"));
    }

    /// Waits until the kubelet has ended `n` pods: those it ended.
    pub async fn until_ended(&self, n: usize, limit: Duration) -> Vec<Ended> {
        let what = match n {
            1 => "one pod ended by the kubelet".to_string(),
            n => format!("{n} pods ended by the kubelet"),
        };
        self.until(&what, limit, || async { self.ended().len() >= n }).await;
        self.ended()
    }

    /// The names of the running pods whose name starts with `prefix` and
    /// which are ready.
    pub fn ready_pods(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .pods()
            .iter()
            .filter(|p| p.name.starts_with(prefix) && p.ready() && !p.terminating.load(Ordering::SeqCst))
            .map(|p| p.name.clone())
            .collect();
        v.sort();
        v
    }

    /// Every running sidecar's `/endpoints` (from inside its pod) shows
    /// `pod` in `state` (None: absent). Returns when, or None after `limit`.
    pub async fn views_show(&self, pod: &str, state: Option<&str>, limit: Duration) -> Option<u64> {
        let running = || {
            self.pods()
                .into_iter()
                .filter(|p| !p.dead.load(Ordering::SeqCst))
                .filter(|p| !p.boxes.iter().any(|b| b.sidecar && b.proc.exited().is_some()))
                .collect()
        };
        views_show(&self.clock, running, |p: &Arc<RunPod>| &p.ns, pod, state, limit).await
    }

    /// The pod holding the most active sessions, once one holds `min`.
    pub async fn busiest_pod(&self, min: u32, limit: Duration) -> String {
        let list = || self.pods().iter().map(|p| (p.name.clone(), p.admin())).collect();
        busiest(&self.node, &self.clock, list, min, limit).await
    }
}
