//! Pods, and what the kubelet and the control plane do to them.
//!
//! A pod is a namespace on the node's bridge with the demo app on its own
//! 127.0.0.1:8081 and stickyd as a native sidecar in front (0.0.0.0:8080,
//! admin 0.0.0.0:9090), watching the Service's EndpointSlices on the
//! apiserver double over the pod network. Deleting one follows Kubernetes'
//! order for a pod with a native sidecar; see [`Cluster::delete_pod`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::netns::{run, Netns};
use super::{Cluster, ADMIN_PORT, DRAIN_TOKEN, NAMESPACE, NODE_IP, POD_PORT, SERVICE, SESSION_KEY};

/// The app's port inside the pod, behind the sidecar.
pub const APP_LISTEN: &str = "127.0.0.1:8081";
/// The kubelet's readiness probe period (the manifests say 2 s; shorter
/// here so that tests do not wait for it).
const PROBE_PERIOD: Duration = Duration::from_millis(100);
/// How long the control plane takes to notice a pod that died or was cut
/// off (node heartbeats, failed probes).
pub const NOTICE: Duration = Duration::from_secs(2);
/// Between the app container's exit and the endpoint's `serving` following
/// the pod's readiness.
const SERVING_LAG: Duration = Duration::from_secs(1);
/// The least the kubelet gives a sidecar to stop, whatever is left of the
/// grace period.
const SIDECAR_MIN_GRACE: Duration = Duration::from_secs(2);

/// One endpoint of the Service's EndpointSlice.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub pod: String,
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Endpoint {
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, POD_PORT)
    }

    pub fn describe(&self) -> String {
        let state = match (self.ready, self.serving, self.terminating) {
            (true, _, false) => "ready",
            (_, true, true) => "terminating+serving",
            (_, false, true) => "terminating",
            _ => "not ready",
        };
        format!("{} {state}", self.pod)
    }
}

/// The app container's preStop hook.
#[derive(Clone, Debug)]
pub enum PreStop {
    Sleep(Duration),
    /// A GET to the sidecar's admin port, `http://<pod IP>:9090<path>`.
    HttpGet(String),
}

/// One container's process, started with `ip netns exec` (which execs it:
/// the child is the process itself).
pub struct Container {
    pub what: String,
    child: Mutex<Child>,
    pid: i32,
    pub log: PathBuf,
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Container {
    pub fn spawn(mut cmd: Command, what: String, log: PathBuf) -> Container {
        let file = std::fs::File::create(&log).expect("a container log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a container log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Container {
            what,
            pid: child.id() as i32,
            child: Mutex::new(child),
            log,
        }
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn signal(&self, sig: Signal) {
        if self.exited().is_none() {
            let _ = kill(Pid::from_raw(self.pid), sig);
        }
    }

    pub fn exited(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Waits until the process exits or `deadline` passes.
    pub async fn wait_exit(&self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM; SIGKILL at `deadline` if it has not exited by then.
    /// Returns whether it had to be killed.
    pub async fn terminate(&self, deadline: Instant) -> bool {
        self.signal(Signal::SIGTERM);
        if self.wait_exit(deadline).await.is_some() {
            return false;
        }
        self.kill();
        true
    }

    pub fn kill(&self) {
        let mut child = self.child();
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A pod: its namespace, its link to the node's bridge and its containers.
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The node's end of its veth pair.
    pub veth: String,
    // Dropped in this order: the processes, then the namespace.
    pub sidecar: Option<Container>,
    pub app: Container,
    pub ns: Netns,
}

impl Pod {
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.ip, ADMIN_PORT))
    }

    fn containers(&self) -> impl Iterator<Item = &Container> {
        self.sidecar.iter().chain(std::iter::once(&self.app))
    }
}

/// How the sidecar in `ns` sees `peer` in its `/endpoints` (asked from
/// inside the pod, as `kubectl port-forward` asks): its state, or None if it
/// is not listed; None outside if the sidecar did not answer.
pub async fn view_of(ns: &Netns, peer: &str) -> Option<Option<String>> {
    let inside = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
    let r = ns.get(inside, "/endpoints", Duration::from_secs(1)).await.ok()?;
    serde_json::from_str::<serde_json::Value>(&r.body).ok().map(|v| {
        v["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|e| e["name"] == peer))
            .and_then(|e| e["state"].as_str().map(str::to_string))
    })
}

/// Polls the sidecars in the pods `running` lists (asked again each round)
/// until each shows `pod` in `state` (None: absent) in its `/endpoints`.
/// Returns when (ms since the epoch), or None if not within `limit`.
pub async fn views_show<P>(
    clock: &super::Clock,
    running: impl Fn() -> Vec<P>,
    ns: impl Fn(&P) -> &Netns,
    pod: &str,
    state: Option<&str>,
    limit: Duration,
) -> Option<u64> {
    let want = Some(state.map(str::to_string));
    let deadline = Instant::now() + limit;
    loop {
        let mut all = true;
        for p in running() {
            if view_of(ns(&p), pod).await != want {
                all = false;
                break;
            }
        }
        if all {
            return Some(clock.now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `stickyd_sessions_active` of the sidecar whose admin port is `admin`,
/// asked from `node` (0 if it did not answer).
pub async fn active_sessions(node: &Netns, admin: SocketAddr) -> f64 {
    let Ok(r) = node.get(admin, "/metrics", Duration::from_secs(2)).await else {
        return 0.0;
    };
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("stickyd_sessions_active ")?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Polls the sidecars `list` names (pod name, admin address) until one holds
/// at least `min` active sessions; returns the one that holds the most.
/// `limit` is a hang guard.
pub async fn busiest(
    node: &Netns,
    clock: &super::Clock,
    list: impl Fn() -> Vec<(String, SocketAddr)>,
    min: u32,
    limit: Duration,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let mut best = (0.0, String::new());
        for (name, admin) in list() {
            let active = active_sessions(node, admin).await;
            if active > best.0 {
                best = (active, name);
            }
        }
        if best.0 >= f64::from(min) {
            clock.event(format!("{} holds the most sessions: {}", best.1, best.0));
            return best.1;
        }
        assert!(
            Instant::now() < deadline,
            "no pod held {min} active sessions within {limit:?} (the most: {best:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the preStop hook did.
#[derive(Clone, Debug, Default)]
pub struct HookOutcome {
    pub started: u64,
    pub ended: u64,
    pub status: Option<u16>,
    pub body: String,
    pub error: Option<String>,
}

/// When each step of a pod's deletion happened (ms since the epoch).
#[derive(Clone, Debug, Default)]
pub struct Termination {
    pub pod: String,
    /// (1) The endpoint turned terminating and kube-proxy dropped it.
    pub deleted: u64,
    /// Every sidecar's view showed the pod draining (None: not within 3 s).
    pub seen_draining: Option<u64>,
    /// (2) The app container's preStop hook.
    pub prestop: HookOutcome,
    /// (3) SIGTERM to the app, and its exit.
    pub app_sigterm: u64,
    pub app_exit: u64,
    pub app_killed: bool,
    /// (4) The endpoint stopped serving.
    pub not_serving: u64,
    /// (5) SIGTERM to the sidecar, and its exit.
    pub sidecar_sigterm: Option<u64>,
    pub sidecar_exit: Option<u64>,
    pub sidecar_killed: bool,
    /// (6) The endpoint was removed and the namespace deleted.
    pub removed: u64,
}

impl Cluster {
    /// Starts a pod on `ip`: its namespace and link, the sidecar, then the
    /// app (a native sidecar starts before the app). The endpoint is listed
    /// not ready, and turns ready once the kubelet's probe gets a 200.
    pub async fn add_pod(&self, name: &str, ip: Ipv4Addr) -> Arc<Pod> {
        let started = Instant::now();
        let ns = Netns::create(&format!("{}-{name}", self.prefix));
        let veth = self.next_veth();
        self.node.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.node.ip(&["link", "set", &veth, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &NODE_IP.to_string()]);
        self.forget_neighbour(ip);
        self.set_endpoint(name, ip, Some((false, false, false)));

        let sidecar = self.spec.sidecars.then(|| self.start_sidecar(&ns, name));
        let app = self.start_app(&ns, name);
        let pod = Arc::new(Pod {
            name: name.to_string(),
            ip,
            veth,
            sidecar,
            app,
            ns,
        });
        self.insert_pod(pod.clone());
        self.wait_ready(&pod).await;
        self.set_endpoint(name, ip, Some((true, true, false)));
        self.clock.event(format!(
            "kubelet: {name} ({ip}) ready after {} ms",
            started.elapsed().as_millis()
        ));
        pod
    }

    /// A new pod that takes the address of a dead one while cookies naming
    /// the dead one are still out.
    pub async fn reuse_ip(&self, new_name: &str, ip: Ipv4Addr) -> Arc<Pod> {
        self.clock
            .event(format!("{new_name} gets {ip}, the address of a dead pod"));
        self.add_pod(new_name, ip).await
    }

    /// What the CNI's gratuitous ARP does for a new pod: every neighbour
    /// forgets the old owner of its address.
    fn forget_neighbour(&self, ip: Ipv4Addr) {
        let ip = ip.to_string();
        let _ = run(Command::new("ip").args(["-n", &self.node.name, "neigh", "flush", "to", &ip]));
        for pod in self.pods() {
            let _ = run(Command::new("ip").args(["-n", &pod.ns.name, "neigh", "flush", "to", &ip]));
        }
    }

    fn start_sidecar(&self, ns: &Netns, name: &str) -> Container {
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_stickyd"));
        cmd.arg("run")
            .env_clear()
            .env("STICKYD_POD_NAME", name)
            .env("STICKYD_LISTEN", format!("0.0.0.0:{POD_PORT}"))
            .env("STICKYD_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}"))
            .env("STICKYD_UPSTREAM", format!("http://{APP_LISTEN}"))
            .env("STICKYD_ENDPOINTS", "kubernetes")
            .env("STICKYD_SERVICE", SERVICE)
            .env("STICKYD_NAMESPACE", NAMESPACE)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("STICKYD_COOKIE_SECRET", SESSION_KEY)
            .env("STICKYD_DRAIN_TOKEN", DRAIN_TOKEN)
            .env("STICKYD_WORKER_THREADS", "1")
            .env("STICKYD_LOG", "info");
        for (k, v) in &self.spec.sidecar_env {
            cmd.env(k, v);
        }
        Container::spawn(
            cmd,
            format!("{name}/stickyd"),
            self.dir.join(format!("{name}-stickyd.log")),
        )
    }

    fn start_app(&self, ns: &Netns, name: &str) -> Container {
        // Without a sidecar the Service targets the app itself.
        let listen = if self.spec.sidecars {
            APP_LISTEN.to_string()
        } else {
            format!("0.0.0.0:{POD_PORT}")
        };
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_stickyd"));
        cmd.args(["demo", "--app-only", "--listen", &listen])
            .env_clear()
            .env("STICKYD_POD_NAME", name)
            .env("STICKYD_LOG", "warn");
        Container::spawn(cmd, format!("{name}/app"), self.dir.join(format!("{name}-app.log")))
    }

    /// The kubelet's readiness probe, from the node, a new connection each
    /// time: the sidecar's `/readyz`, or without one the app's `/healthz`.
    async fn wait_ready(&self, pod: &Pod) {
        let (addr, path) = if pod.sidecar.is_some() {
            (pod.admin(), "/readyz")
        } else {
            (SocketAddr::from((pod.ip, POD_PORT)), "/healthz")
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last: String;
        loop {
            match self.node.get(addr, path, Duration::from_secs(1)).await {
                Ok(r) if r.status == 200 => return,
                Ok(r) => last = format!("{} {}", r.status, r.body.trim()),
                Err(e) => last = e,
            }
            for c in pod.containers() {
                if let Some(status) = c.exited() {
                    panic!("{} exited ({status}) before it was ready:\n{}", c.what, c.log_text());
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within 20 s; last probe: {last}",
                pod.name
            );
            tokio::time::sleep(PROBE_PERIOD).await;
        }
    }

    /// Polls every running sidecar's `/endpoints` until each shows `pod` in
    /// `state` (`ready`, `draining`; None: absent). Returns when (ms since
    /// the epoch), or None if not within `limit`.
    pub async fn views_show(&self, pod: &str, state: Option<&str>, limit: Duration) -> Option<u64> {
        let running = || {
            self.pods()
                .into_iter()
                .filter(|p| p.sidecar.as_ref().is_some_and(|s| s.exited().is_none()))
                .collect()
        };
        views_show(&self.clock, running, |p: &Arc<Pod>| &p.ns, pod, state, limit).await
    }

    /// Waits until one pod holds at least `min` active sessions
    /// (`stickyd_sessions_active` in each sidecar's `/metrics`) and returns
    /// the pod that holds the most: the one with the most sessions to lose.
    /// This is a scenario's premise, however slow the load is to start;
    /// `limit` is a hang guard.
    pub async fn busiest_pod(&self, min: u32, limit: Duration) -> String {
        let sidecars = || {
            self.pods()
                .iter()
                .filter(|p| p.sidecar.is_some())
                .map(|p| (p.name.clone(), p.admin()))
                .collect()
        };
        busiest(&self.node, &self.clock, sidecars, min, limit).await
    }

    /// Deletes a pod in Kubernetes' order for a native sidecar:
    /// 1. the endpoint turns `ready=false, serving=true, terminating=true`
    ///    and kube-proxy's rules are rewritten without it;
    /// 2. the app container's preStop hook runs;
    /// 3. the app gets SIGTERM (SIGKILL at the end of the grace period);
    /// 4. about a second after it exits, `serving` follows the pod's
    ///    readiness: false;
    /// 5. the sidecar gets SIGTERM (SIGKILL at the end of the grace period);
    /// 6. the endpoint is removed and the namespace deleted.
    pub async fn delete_pod(&self, name: &str, prestop: PreStop) -> Termination {
        let pod = self.pod(name);
        let deadline = Instant::now() + self.spec.grace;
        let mut t = Termination {
            pod: name.to_string(),
            deleted: self.clock.now(),
            ..Termination::default()
        };
        self.clock.event(format!(
            "delete {name}: grace {} s, preStop {prestop:?}",
            self.spec.grace.as_secs()
        ));
        self.set_endpoint(name, pod.ip, Some((false, true, true)));
        t.seen_draining = self.views_show(name, Some("draining"), Duration::from_secs(3)).await;
        match t.seen_draining {
            Some(at) => self.clock.event(format!(
                "every sidecar sees {name} draining, {} ms after the delete",
                at - t.deleted
            )),
            None => self
                .clock
                .event(format!("not every sidecar saw {name} draining within 3 s")),
        }

        t.prestop = self.prestop(&pod, &prestop, deadline).await;

        t.app_sigterm = self.clock.now();
        self.clock.event(format!("kubelet: SIGTERM {name}/app"));
        t.app_killed = pod.app.terminate(deadline).await;
        t.app_exit = self.clock.now();
        self.clock.event(format!(
            "kubelet: {name}/app {} after {} ms",
            if t.app_killed { "SIGKILLed" } else { "exited" },
            t.app_exit - t.app_sigterm
        ));

        tokio::time::sleep(SERVING_LAG).await;
        self.set_endpoint(name, pod.ip, Some((false, false, true)));
        t.not_serving = self.clock.now();

        if let Some(sidecar) = &pod.sidecar {
            let at = self.clock.now();
            t.sidecar_sigterm = Some(at);
            self.clock.event(format!("kubelet: SIGTERM {name}/stickyd"));
            t.sidecar_killed = sidecar
                .terminate(deadline.max(Instant::now() + SIDECAR_MIN_GRACE))
                .await;
            let exit = self.clock.now();
            t.sidecar_exit = Some(exit);
            self.clock.event(format!(
                "kubelet: {name}/stickyd {} after {} ms",
                if t.sidecar_killed { "SIGKILLed" } else { "exited" },
                exit - at
            ));
        }

        self.set_endpoint(name, pod.ip, None);
        drop(pod);
        drop(self.remove_pod(name));
        t.removed = self.clock.now();
        self.clock.event(format!("{name} removed"));
        t
    }

    async fn prestop(&self, pod: &Pod, hook: &PreStop, deadline: Instant) -> HookOutcome {
        let mut out = HookOutcome {
            started: self.clock.now(),
            ..HookOutcome::default()
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match hook {
            PreStop::Sleep(d) => tokio::time::sleep((*d).min(left)).await,
            // The kubelet's lifecycle HTTP client has no timeout of its own:
            // the grace period bounds the hook.
            // From the node, with the hook's header, as the kubelet calls it.
            PreStop::HttpGet(path) => match self
                .node
                .get_with(
                    pod.admin(),
                    path,
                    &[("Authorization", &format!("Bearer {DRAIN_TOKEN}"))],
                    left,
                )
                .await
            {
                Ok(r) => {
                    out.status = Some(r.status);
                    out.body = r.body;
                }
                Err(e) => out.error = Some(e),
            },
        }
        out.ended = self.clock.now();
        self.clock.event(format!(
            "kubelet: preStop of {}/app done after {} ms: {}",
            pod.name,
            out.ended - out.started,
            match (&out.status, &out.error) {
                (Some(s), _) => format!("{s} {}", out.body.trim()),
                (None, Some(e)) => format!("failed: {e}"),
                (None, None) => "slept".to_string(),
            }
        ));
        out
    }

    /// The pod dies without a word: its link is cut first (so that not even
    /// the FIN or RST of its killed sockets leaves), its processes are
    /// SIGKILLed and its namespace deleted. Packets to its address get no
    /// answer. The control plane notices [`NOTICE`] later: the endpoint is
    /// removed. Returns when it died (ms since the epoch).
    pub async fn kill_pod_dark(&self, name: &str) -> u64 {
        let pod = self.remove_pod(name).unwrap_or_else(|| panic!("no pod {name}"));
        self.node.ip(&["link", "del", &pod.veth]);
        for c in pod.containers() {
            c.kill();
        }
        let died = self.clock.now();
        self.clock
            .event(format!("{name} ({}) died dark: link cut, processes SIGKILLed", pod.ip));
        let ip = pod.ip;
        drop(pod);
        tokio::time::sleep(NOTICE).await;
        self.set_endpoint(name, ip, None);
        died
    }

    /// Every packet on the pod's eth0 is dropped, both ways (loopback keeps
    /// working, and so do its processes). [`NOTICE`] later the endpoint is
    /// not ready. Returns when it was cut off (ms since the epoch).
    pub async fn cut_off(&self, name: &str) -> u64 {
        let pod = self.pod(name);
        pod.ns.exec_with_input(
            "iptables-restore",
            &["-w", "--noflush"],
            "*filter\n-A INPUT -i eth0 -j DROP\n-A OUTPUT -o eth0 -j DROP\nCOMMIT\n",
        );
        let at = self.clock.now();
        self.clock
            .event(format!("{name} ({}) cut off: every packet on eth0 dropped", pod.ip));
        tokio::time::sleep(NOTICE).await;
        self.set_endpoint(name, pod.ip, Some((false, false, false)));
        at
    }

    /// A rolling update with maxSurge 1 and maxUnavailable 0: for each old
    /// pod, a new pod, and once it is ready the old pod's deletion. The next
    /// surge does not wait for that deletion to finish (a terminating pod no
    /// longer counts against the surge). Returns every deletion.
    pub async fn rollout(self: &Arc<Self>, prestop: PreStop) -> Vec<Termination> {
        let old = self.pod_names();
        self.clock
            .event(format!("rollout of {} pods: maxSurge 1, maxUnavailable 0", old.len()));
        let mut deletions = Vec::new();
        for (i, name) in old.into_iter().enumerate() {
            let ip = self.next_ip();
            self.add_pod(&format!("{SERVICE}-v2-{i}"), ip).await;
            let cluster = self.clone();
            let hook = prestop.clone();
            deletions.push(tokio::spawn(async move { cluster.delete_pod(&name, hook).await }));
        }
        let mut done = Vec::new();
        for d in deletions {
            done.push(d.await.expect("a deletion of the rollout panicked"));
        }
        self.clock.event("rollout done");
        done
    }
}
