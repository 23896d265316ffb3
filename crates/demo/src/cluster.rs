//! The demo cluster: N pods on 127.0.0.x, each a demo app with (or
//! without) a stickyd sidecar in front of it, and the load balancer's
//! backend list. Pods can be killed and added while it runs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use super::app::{self, App};
use super::lb::{Backend, Backends, ControlOp, ControlReply, ControlRequest};
use super::DemoError;
use stickyd_sidecar::config::Config;
use stickyd_sidecar::endpoints::{Peer, PeerState};
use stickyd_sidecar::sidecar::Sidecar;

/// Where and how the pods run.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Pod `i` (from 1) runs on `base_ip + i`.
    pub base_ip: Ipv4Addr,
    /// The sidecar's port (0: any free port).
    pub sidecar_port: u16,
    /// The app's port (0: any free port).
    pub app_port: u16,
    /// The sidecar's admin port (0: any free port).
    pub admin_port: u16,
    /// Put a stickyd sidecar in front of every app.
    pub sidecars: bool,
    /// The sidecars' tracing filter (STICKYD_LOG).
    pub log: String,
}

/// One running pod.
pub struct Pod {
    pub name: String,
    pub index: u32,
    pub app_addr: SocketAddr,
    pub app: Arc<App>,
    app_stop: Option<oneshot::Sender<()>>,
    app_task: JoinHandle<()>,
    sidecar: Option<Sidecar>,
    /// Where the Service (the load balancer) sends requests: the sidecar,
    /// or the app when there is none.
    pub backend: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// Its drain was asked for: its peers see it draining and the load
    /// balancer sends it nothing new.
    pub draining: bool,
}

impl Pod {
    async fn stop(mut self) {
        if let Some(s) = self.sidecar.take() {
            s.stop().await;
        }
        if let Some(tx) = self.app_stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(6), &mut self.app_task).await;
        self.app_task.abort();
    }
}

/// The pods and the load balancer's view of them.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub pods: Vec<Pod>,
    pub killed: Vec<String>,
    next: u32,
    backends: Backends,
    /// The session key every sidecar shares and the drain token of each, as
    /// `stickyd inject` writes them: random, per cluster.
    secrets: Secrets,
}

/// A cluster's random session key and drain token (hex).
struct Secrets {
    key: String,
    drain_token: String,
}

impl Secrets {
    fn random() -> Result<Secrets, DemoError> {
        let hex = || -> Result<String, DemoError> {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| DemoError::Invalid(format!("no random bytes for the session key: {e}")))?;
            Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
        };
        Ok(Secrets {
            key: hex()?,
            drain_token: hex()?,
        })
    }
}

/// A free port on `ip`, or `port` itself when it is not 0. The ports are
/// held together while they are chosen, so that they differ.
fn pick_ports(ip: Ipv4Addr, ports: &[u16]) -> Result<Vec<u16>, DemoError> {
    let mut held = Vec::new();
    let mut out = Vec::new();
    for &p in ports {
        if p != 0 {
            out.push(p);
            continue;
        }
        let addr = SocketAddr::from((ip, 0));
        let l = std::net::TcpListener::bind(addr).map_err(|source| DemoError::Bind {
            what: "a free port",
            addr,
            source,
        })?;
        out.push(l.local_addr().map(|a| a.port()).unwrap_or(0));
        held.push(l);
    }
    Ok(out)
}

impl Cluster {
    /// Starts `n` pods and points `backends` at them.
    pub async fn start(spec: ClusterSpec, n: usize, backends: Backends) -> Result<Cluster, DemoError> {
        let mut c = Cluster {
            spec,
            pods: Vec::new(),
            killed: Vec::new(),
            next: 1,
            backends,
            secrets: Secrets::random()?,
        };
        for _ in 0..n {
            if let Err(e) = c.add_pod().await {
                c.shutdown().await;
                return Err(e);
            }
        }
        c.sync();
        Ok(c)
    }

    fn ip(&self, index: u32) -> Result<Ipv4Addr, DemoError> {
        let ip = u32::from(self.spec.base_ip)
            .checked_add(index)
            .map(Ipv4Addr::from)
            .filter(|ip| ip.is_loopback() && ip.octets()[3] != 255)
            .ok_or_else(|| {
                DemoError::Invalid(format!(
                    "pod {index} would be outside 127.0.0.0/8 (--base-ip {})",
                    self.spec.base_ip
                ))
            })?;
        Ok(ip)
    }

    /// The peers every sidecar should see: all pods with a sidecar.
    pub fn peers(&self) -> Vec<Peer> {
        self.pods
            .iter()
            .filter(|p| p.sidecar.is_some())
            .map(|p| {
                let state = if p.draining {
                    PeerState::Draining
                } else {
                    PeerState::Ready
                };
                Peer::new(p.name.clone(), p.backend, state)
            })
            .collect()
    }

    /// Gives every sidecar the current peer list and the load balancer the
    /// current backends.
    fn sync(&self) {
        let peers = self.peers();
        for p in &self.pods {
            if let Some(s) = &p.sidecar {
                s.store().replace(peers.clone(), true);
            }
        }
        // Keep the entries (and their counters) of pods that stay.
        let current = self.backends.load();
        // A draining pod gets no new connections, as kube-proxy leaves a
        // terminating endpoint out once a ready one exists.
        let list = self
            .pods
            .iter()
            .filter(|p| !p.draining)
            .map(|p| {
                current
                    .iter()
                    .find(|b| b.name == p.name && b.addr == p.backend)
                    .cloned()
                    .unwrap_or_else(|| Backend::new(p.name.clone(), p.backend))
            })
            .collect();
        self.backends.set(list);
    }

    async fn start_pod(&self, index: u32) -> Result<Pod, DemoError> {
        let ip = self.ip(index)?;
        let name = format!("pod-{index}");
        let app_addr = SocketAddr::from((ip, self.spec.app_port));
        let listener = TcpListener::bind(app_addr).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrNotAvailable {
                // Linux routes all of 127.0.0.0/8 to loopback; macOS only 127.0.0.1.
                DemoError::Invalid(format!(
                    "{ip} is not a local address; each pod needs its own loopback address \
                     (on macOS: sudo ifconfig lo0 alias {ip} up)"
                ))
            } else {
                DemoError::Bind {
                    what: "the demo app",
                    addr: app_addr,
                    source,
                }
            }
        })?;
        let app_addr = listener.local_addr().unwrap_or(app_addr);
        let app = Arc::new(App::new(name.clone()));
        let (app_stop, stopped) = oneshot::channel::<()>();
        let app_task = tokio::spawn(app::serve_app(listener, app.clone(), async move {
            let _ = stopped.await;
        }));
        let mut pod = Pod {
            name: name.clone(),
            index,
            app_addr,
            app,
            app_stop: Some(app_stop),
            app_task,
            sidecar: None,
            backend: app_addr,
            admin: None,
            draining: false,
        };
        if !self.spec.sidecars {
            return Ok(pod);
        }
        let ports = pick_ports(ip, &[self.spec.sidecar_port, self.spec.admin_port])?;
        let listen = SocketAddr::from((ip, ports[0]));
        let admin = SocketAddr::from((ip, ports[1]));
        let mut peers: Vec<String> = self.peers().iter().map(|p| format!("{}={}", p.name, p.addr)).collect();
        peers.push(format!("{name}={listen}"));
        let env: BTreeMap<String, String> = [
            ("STICKYD_LISTEN", listen.to_string()),
            ("STICKYD_ADMIN_LISTEN", admin.to_string()),
            ("STICKYD_UPSTREAM", format!("http://{app_addr}")),
            ("STICKYD_POD_NAME", name.clone()),
            ("STICKYD_ENDPOINTS", format!("static:{}", peers.join(","))),
            ("STICKYD_DRAIN_SECONDS", "0".into()),
            ("STICKYD_DRAIN_TIMEOUT", "5".into()),
            ("STICKYD_LOG", self.spec.log.clone()),
            ("STICKYD_COOKIE_SECRET", self.secrets.key.clone()),
            ("STICKYD_DRAIN_TOKEN", self.secrets.drain_token.clone()),
            // A session counts as active for 3 s after its last request, so
            // that the page shows a drained pod empty out in seconds.
            ("STICKYD_SESSION_ACTIVE_WINDOW", "3s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let cfg = match Config::from_env(&env) {
            Ok(c) => c,
            Err(source) => {
                pod.stop().await;
                return Err(DemoError::Config { pod: name, source });
            }
        };
        match Sidecar::start(cfg).await {
            Ok(s) => {
                pod.backend = s.listen;
                pod.admin = Some(s.admin);
                pod.sidecar = Some(s);
                Ok(pod)
            }
            Err(source) => {
                pod.stop().await;
                Err(DemoError::Sidecar { pod: name, source })
            }
        }
    }

    async fn add_pod(&mut self) -> Result<String, DemoError> {
        let index = self.next;
        let pod = self.start_pod(index).await?;
        self.next += 1;
        let name = pod.name.clone();
        self.pods.push(pod);
        Ok(name)
    }

    /// Starts a new pod and adds it to every sidecar's view, then to the
    /// load balancer.
    pub async fn add(&mut self) -> Result<String, DemoError> {
        let name = self.add_pod().await?;
        self.sync();
        Ok(name)
    }

    /// Takes a pod (the oldest when `name` is None) out of the load
    /// balancer and of every view, lets requests in flight to it finish,
    /// then stops its sidecar and its app.
    pub async fn kill(&mut self, name: Option<&str>) -> Result<String, DemoError> {
        let i = match name {
            Some(n) => self
                .pods
                .iter()
                .position(|p| p.name == n)
                .ok_or_else(|| DemoError::Invalid(format!("no pod named {n:?}")))?,
            None if self.pods.is_empty() => return Err(DemoError::Invalid("there are no pods".into())),
            None => 0,
        };
        if self.pods.len() == 1 {
            return Err(DemoError::Invalid("the last pod cannot be killed".into()));
        }
        let pod = self.pods.remove(i);
        self.sync();
        // Requests already routed to it finish; nothing new is sent there.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let name = pod.name.clone();
        pod.stop().await;
        self.killed.push(name.clone());
        Ok(name)
    }

    /// Marks pod `name` draining (its peers see it so, the load balancer
    /// drops it) and returns its admin address and the drain token, for the
    /// preStop call.
    pub fn begin_drain(&mut self, name: &str) -> Result<(SocketAddr, String), DemoError> {
        let serving = self.pods.iter().filter(|p| !p.draining).count();
        let pod = self
            .pods
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| DemoError::Invalid(format!("no pod named {name:?}")))?;
        let Some(admin) = pod.admin else {
            return Err(DemoError::Invalid(format!("{name} has no sidecar to drain")));
        };
        if pod.draining {
            return Err(DemoError::Invalid(format!("{name} is draining already")));
        }
        if serving <= 1 {
            return Err(DemoError::Invalid("the last serving pod cannot be drained".into()));
        }
        pod.draining = true;
        self.sync();
        Ok((admin, self.secrets.drain_token.clone()))
    }

    /// Each pod's admin address, for [`live`].
    pub fn admins(&self) -> Vec<(String, SocketAddr)> {
        self.pods
            .iter()
            .filter_map(|p| p.admin.map(|a| (p.name.clone(), a)))
            .collect()
    }

    /// The pods as JSON, for `GET /_demo/pods`.
    pub fn to_json(&self) -> serde_json::Value {
        let pods: Vec<serde_json::Value> = self
            .pods
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "app": p.app_addr.to_string(),
                    "sidecar": p.sidecar.as_ref().map(|s| s.listen.to_string()),
                    "admin": p.admin.map(|a| a.to_string()),
                    "backend": p.backend.to_string(),
                    "requests": p.app.requests(),
                    "sessions": p.app.sessions(),
                    "colour": app::pod_colour(&p.name),
                    "draining": p.draining,
                })
            })
            .collect();
        json!({
            "sidecars": self.spec.sidecars,
            "pods": pods,
            "killed": self.killed,
        })
    }

    /// Stops every pod.
    pub async fn shutdown(&mut self) {
        self.backends.set(Vec::new());
        let pods = std::mem::take(&mut self.pods);
        futures_util::future::join_all(pods.into_iter().map(Pod::stop)).await;
    }
}

/// One GET to a sidecar's admin port, bounded by `limit`: the status and
/// the body.
async fn http_get(addr: SocketAddr, path: &str, auth: Option<&str>, limit: Duration) -> Result<(u16, String), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(token) = auth {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// Each sidecar's `stickyd_sessions_active`, from its own `/metrics`.
pub async fn live(admins: Vec<(String, SocketAddr)>) -> BTreeMap<String, f64> {
    let asks = admins.into_iter().map(|(name, admin)| async move {
        let (_, body) = http_get(admin, "/metrics", None, Duration::from_secs(1)).await.ok()?;
        let active = body
            .lines()
            .find_map(|l| l.strip_prefix("stickyd_sessions_active ")?.trim().parse::<f64>().ok())?;
        Some((name, active))
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The pods as JSON with each one's active sessions (`active`), as its
/// sidecar counts them.
async fn pods_live(c: tokio::sync::MutexGuard<'_, Cluster>) -> serde_json::Value {
    let (mut body, admins) = (c.to_json(), c.admins());
    drop(c);
    let active = live(admins).await;
    for p in body["pods"].as_array_mut().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        p["active"] = active.get(&name).map_or(serde_json::Value::Null, |a| json!(a));
    }
    body
}

/// The kubelet's part of a scale-down: the drain preStop to `admin` with the
/// token, then the pod goes (out of the load balancer and every view,
/// stopped).
async fn drain_then_stop(cluster: Arc<Mutex<Cluster>>, name: String, admin: SocketAddr, token: String) {
    let answer = http_get(admin, "/drain?idle=10s&max=60s", Some(&token), Duration::from_secs(90)).await;
    tracing::info!(pod = %name, ?answer, "demo: pod drained");
    match cluster.lock().await.kill(Some(&name)).await {
        Ok(_) => tracing::info!(pod = %name, "demo: drained pod stopped"),
        Err(e) => tracing::warn!(pod = %name, error = %e, "demo: drained pod not stopped"),
    }
}

/// Answers the load balancer's `/_demo/` requests until the channel closes.
pub async fn control_loop(cluster: Arc<Mutex<Cluster>>, mut rx: mpsc::Receiver<ControlRequest>) {
    while let Some(req) = rx.recv().await {
        let mut c = cluster.lock().await;
        let reply = match &req.op {
            ControlOp::Pods => Ok(pods_live(c).await),
            ControlOp::Drain(name) => match c.begin_drain(name) {
                Ok((admin, token)) => {
                    tracing::info!(pod = %name, "demo: pod draining");
                    tokio::spawn(drain_then_stop(cluster.clone(), name.clone(), admin, token));
                    Ok(json!({"draining": name, "cluster": c.to_json()}))
                }
                Err(e) => Err(e),
            },
            ControlOp::Add => c.add().await.map(|name| {
                tracing::info!(pod = %name, "demo: pod added");
                json!({"added": name, "cluster": c.to_json()})
            }),
            ControlOp::Kill(name) => c.kill(name.as_deref()).await.map(|name| {
                tracing::info!(pod = %name, "demo: pod killed");
                json!({"killed": name, "cluster": c.to_json()})
            }),
        };
        let reply = match reply {
            Ok(body) => ControlReply {
                status: StatusCode::OK,
                body,
            },
            Err(e) => ControlReply {
                status: match e {
                    DemoError::Invalid(_) => StatusCode::CONFLICT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                },
                body: json!({"error": e.to_string()}),
            },
        };
        let _ = req.reply.send(reply);
    }
}
