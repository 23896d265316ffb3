//! A real Kubernetes control plane on the node: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, all from
//! `target/kube/kubeplane` (tests/kube, k8s.io/kubernetes v1.37.2), run
//! inside the node's network namespace as a control-plane node runs them.
//!
//! ```text
//!  node ns: etcd 127.0.0.1:2379   kube-apiserver 0.0.0.0:6443 (198.18.0.1 to the pods)
//!           kube-controller-manager, kube-scheduler -> https://127.0.0.1:6443
//!  test process: https://127.0.0.1:<relay> -> a socket made in the node ns -> 127.0.0.1:6443
//! ```
//!
//! The apiserver has RBAC and the Node authorizer, ServiceAccount tokens
//! signed with a key made here, admission webhooks (service references are
//! resolved to endpoint addresses: `--enable-aggregator-routing`), and a
//! Service range of 198.19.0.0/24 whose `kubernetes` Service (198.19.0.1)
//! the apiserver's own endpoint reconciler points at 198.18.0.1:6443. Keys
//! and certificates come from `openssl`, as `tests/kube/smoke.sh` makes them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::kubelet::Container;
use super::netns::{run, socket_in, Netns};
use super::NODE_IP;

/// The apiserver's port in the node namespace.
pub const API_PORT: u16 = 6443;
/// The `kubernetes` Service's ClusterIP: the first of the Service range.
pub const KUBERNETES_SERVICE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const SERVICE_RANGE: &str = "198.19.0.0/24";
/// The one node's name.
pub const NODE_NAME: &str = "node-0";

/// `target/kube/kubeplane`, built by `tests/kube/build.sh` (which `.ci/run`
/// runs before the tests) if it is missing or stale: Ok(path), or why not.
pub fn kubeplane() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("STICKYDTEST_KUBEPLANE") {
            return Ok(PathBuf::from(p));
        }
        let have_go = Command::new("go")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_go {
            return Err("no go (Go 1.26 builds the control plane, tests/kube/build.sh)".into());
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kube/build.sh");
        let out = run(Command::new("bash").arg(script))?;
        Ok(PathBuf::from(out.trim()))
    })
    .clone()
}

/// The control plane's processes and credentials.
pub struct Plane {
    pub dir: PathBuf,
    /// Started in this order; stopped in the reverse.
    procs: Mutex<Vec<Arc<Container>>>,
    relay: tokio::task::JoinHandle<()>,
    /// system:masters, through the relay.
    pub admin: PathBuf,
    /// The node's identity (system:node:node-0), through the relay.
    pub node_identity: PathBuf,
    /// How to start kube-apiserver again: the node namespace, the binary,
    /// and its arguments.
    apiserver: (String, PathBuf, Vec<String>),
}

impl Drop for Plane {
    fn drop(&mut self) {
        let procs = self.procs.get_mut().unwrap_or_else(|e| e.into_inner());
        while let Some(p) = procs.pop() {
            p.signal(nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while p.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            p.kill();
        }
        self.relay.abort();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    if let Err(e) = run(Command::new("openssl").args(args).current_dir(dir)) {
        panic!("openssl {args:?}: {e}");
    }
}

/// A self-signed CA in `dir`: `ca.key` and `ca.crt`, for [`sign`].
pub fn make_ca(dir: &Path, cn: &str) {
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", &subject,
        ],
    );
}

/// A key and a certificate `name.{key,crt}` signed by the CA in `dir`.
pub fn sign(dir: &Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, crt, extf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ],
    );
    std::fs::write(dir.join(&extf), ext).expect("an extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &extf,
        ],
    );
}

const CLIENT_EXT: &str = "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";

/// A kubeconfig for the client certificate `name`.
fn kubeconfig(dir: &Path, file: &str, server: &str, name: &str) -> PathBuf {
    let path = dir.join(file);
    let d = dir.display();
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: plane
  cluster:
    server: {server}
    certificate-authority: {d}/ca.crt
users:
- name: {name}
  user:
    client-certificate: {d}/{name}.crt
    client-key: {d}/{name}.key
contexts:
- name: {name}
  context: {{cluster: plane, user: {name}}}
current-context: {name}
"
        ),
    )
    .expect("a kubeconfig");
    path
}

impl Plane {
    /// Starts etcd and kube-apiserver in `node` and waits for `/readyz`,
    /// then kube-controller-manager and kube-scheduler.
    pub async fn start(node: &Netns, dir: &Path, bin: &Path) -> Plane {
        let dir = dir.join("plane");
        std::fs::create_dir_all(&dir).expect("the control plane's folder");
        make_ca(&dir, "podnet-ca");
        sign(
            &dir,
            "apiserver",
            "/CN=kube-apiserver",
            &format!(
                "subjectAltName=IP:127.0.0.1,IP:{NODE_IP},IP:{KUBERNETES_SERVICE},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        );
        sign(&dir, "admin", "/O=system:masters/CN=podnet-admin", CLIENT_EXT);
        sign(&dir, "kcm", "/CN=system:kube-controller-manager", CLIENT_EXT);
        sign(&dir, "scheduler", "/CN=system:kube-scheduler", CLIENT_EXT);
        sign(
            &dir,
            "node",
            &format!("/O=system:nodes/CN=system:node:{NODE_NAME}"),
            CLIENT_EXT,
        );
        openssl(&dir, &["genrsa", "-out", "sa.key", "2048"]);
        openssl(&dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);

        // Inside the node namespace.
        let inside = format!("https://127.0.0.1:{API_PORT}");
        let kcm = kubeconfig(&dir, "kcm.kubeconfig", &inside, "kcm");
        let sched = kubeconfig(&dir, "scheduler.kubeconfig", &inside, "scheduler");

        // The relay: the test process's way in.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the relay's listener");
        let relay_addr = listener.local_addr().expect("the relay's address");
        let ns = node.name.clone();
        let relay = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(socket) = socket_in(&ns) else { continue };
                tokio::spawn(async move {
                    let target = SocketAddr::from(([127, 0, 0, 1], API_PORT));
                    if let Ok(mut upstream) = socket.connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        let server = format!("https://{relay_addr}");
        let admin = kubeconfig(&dir, "admin.kubeconfig", &server, "admin");
        let node_identity = kubeconfig(&dir, "node.kubeconfig", &server, "node");

        let mut plane = Plane {
            apiserver: (node.name.clone(), bin.to_path_buf(), Vec::new()),
            dir: dir.clone(),
            procs: Mutex::default(),
            relay,
            admin,
            node_identity,
        };
        let d = |f: &str| dir.join(f).display().to_string();
        let start = |what: &str, args: Vec<String>| {
            let mut cmd = node.command(&bin.display().to_string());
            cmd.args(&args).current_dir(&dir);
            Container::spawn(cmd, what.to_string(), dir.join(format!("{what}.log")))
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();

        let etcd = start(
            "etcd",
            s(&[
                "etcd",
                "--data-dir",
                &d("etcd"),
                "--unsafe-no-fsync",
                "--listen-client-url",
                "http://127.0.0.1:2379",
                "--listen-peer-url",
                "http://127.0.0.1:2380",
            ]),
        );
        plane.push(etcd);
        plane.wait_log("etcd", "etcd: ready", Duration::from_secs(60)).await;

        let apiserver_args = s(&[
            "apiserver",
            "--etcd-servers",
            "http://127.0.0.1:2379",
            "--bind-address",
            "0.0.0.0",
            "--secure-port",
            &API_PORT.to_string(),
            "--advertise-address",
            &NODE_IP.to_string(),
            "--tls-cert-file",
            &d("apiserver.crt"),
            "--tls-private-key-file",
            &d("apiserver.key"),
            "--client-ca-file",
            &d("ca.crt"),
            "--authorization-mode",
            "Node,RBAC",
            "--enable-admission-plugins",
            "NodeRestriction",
            "--service-account-issuer",
            "https://kubernetes.default.svc",
            "--service-account-key-file",
            &d("sa.pub"),
            "--service-account-signing-key-file",
            &d("sa.key"),
            "--service-cluster-ip-range",
            SERVICE_RANGE,
            "--enable-aggregator-routing=true",
            "--cert-dir",
            &d("apiserver-certs"),
            "--profiling=false",
        ]);
        plane.apiserver.2 = apiserver_args.clone();
        plane.push(start("kube-apiserver", apiserver_args));
        plane.wait_ready().await;

        let kcm = start(
            "kube-controller-manager",
            s(&[
                "controller-manager",
                "--kubeconfig",
                &kcm.display().to_string(),
                "--authentication-kubeconfig",
                &kcm.display().to_string(),
                "--authorization-kubeconfig",
                &kcm.display().to_string(),
                "--bind-address",
                "127.0.0.1",
                "--leader-elect=false",
                "--use-service-account-credentials",
                "--service-account-private-key-file",
                &d("sa.key"),
                "--root-ca-file",
                &d("ca.crt"),
                "--cluster-signing-cert-file",
                &d("ca.crt"),
                "--cluster-signing-key-file",
                &d("ca.key"),
                "--controllers",
                "*",
                "--profiling=false",
            ]),
        );
        plane.push(kcm);
        let scheduler = start(
            "kube-scheduler",
            s(&[
                "scheduler",
                "--kubeconfig",
                &sched.display().to_string(),
                "--authentication-kubeconfig",
                &sched.display().to_string(),
                "--authorization-kubeconfig",
                &sched.display().to_string(),
                "--bind-address",
                "127.0.0.1",
                "--leader-elect=false",
            ]),
        );
        plane.push(scheduler);
        plane
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if self.kubectl(&["get", "--raw", "/readyz"]).await.is_ok() {
                return;
            }
            self.check_running();
            assert!(Instant::now() < deadline, "kube-apiserver not ready within 180 s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops kube-apiserver (SIGTERM, as a rollout of a control-plane node
    /// does; SIGKILL if it is not gone 5 s later), keeps it down for `down`,
    /// starts it again with the same arguments and waits for `/readyz`.
    /// Returns when it was down and back up (ms since the epoch, by `now`).
    pub async fn restart_apiserver(&self, down: Duration, now: impl Fn() -> u64) -> (u64, u64) {
        self.stop_apiserver().await;
        let gone = now();
        tokio::time::sleep(down).await;
        self.start_apiserver(&[]).await;
        (gone, now())
    }

    /// Stops kube-apiserver: SIGTERM, and SIGKILL 5 s later (one that holds
    /// long watches can take the whole of its request timeout to exit).
    pub async fn stop_apiserver(&self) {
        let old = self.process("kube-apiserver");
        old.terminate(Instant::now() + Duration::from_secs(5)).await;
    }

    /// Starts kube-apiserver again, with its first arguments and `extra`,
    /// and waits for `/readyz`.
    pub async fn start_apiserver(&self, extra: &[&str]) {
        let (ns, bin, args) = self.apiserver.clone();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(&bin)
            .args(&args)
            .args(extra)
            .current_dir(&self.dir);
        let log = self.dir.join("kube-apiserver-2.log");
        let new = Arc::new(Container::spawn(cmd, "kube-apiserver".into(), log));
        {
            let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            for p in procs.iter_mut().filter(|p| p.what == "kube-apiserver") {
                *p = new.clone();
            }
        }
        self.wait_ready().await;
    }

    /// Compacts etcd (inside `node`, through its JSON gateway) at its
    /// current revision, as the apiserver's periodic compaction does: a
    /// watch from any older resourceVersion is refused from then on.
    /// Returns that revision.
    pub async fn compact_etcd(&self, node: &Netns) -> u64 {
        let etcd = SocketAddr::from(([127, 0, 0, 1], 2379));
        let limit = Duration::from_secs(5);
        // A range over the key "\0": no keys, and the header's revision.
        let r = node
            .post_json(etcd, "/v3/kv/range", r#"{"key":"AA=="}"#, limit)
            .await
            .expect("etcd's revision");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let revision: u64 = v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in etcd's answer: {} {}", r.status, r.body));
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        let r = node
            .post_json(etcd, "/v3/kv/compaction", &body, limit)
            .await
            .expect("etcd's compaction");
        assert_eq!(r.status, 200, "etcd refused the compaction at {revision}: {}", r.body);
        revision
    }

    fn push(&mut self, c: Container) {
        self.procs
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(c));
    }

    /// Panics, with its log, if a process of the control plane exited.
    pub fn check_running(&self) {
        let procs: Vec<Arc<Container>> = self.procs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for p in &procs {
            if let Some(status) = p.exited() {
                let log = p.log_text();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!("{} exited ({status}):\n{}", p.what, tail.join("\n"));
            }
        }
    }

    async fn wait_log(&self, what: &str, line: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let p = self.process(what);
        while !p.log_text().contains(line) {
            self.check_running();
            assert!(Instant::now() < deadline, "{what}: no {line:?} within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process named `what` (`kube-apiserver`, `etcd`, ...).
    pub fn process(&self, what: &str) -> Arc<Container> {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs
            .iter()
            .find(|p| p.what == what)
            .cloned()
            .expect("a process of the plane")
    }

    /// `kubectl` as system:masters: its stdout, or its stderr.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_input(args, None).await
    }

    /// `kubectl` with `input` on its stdin.
    pub async fn kubectl_input(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.admin)
            .args(["--request-timeout", "30s"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("kubectl: {e}"))?;
        let mut stdin = child.stdin.take().expect("kubectl's stdin");
        if let Some(text) = input {
            let _ = stdin.write_all(text.as_bytes()).await;
        }
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| format!("kubectl {args:?}: no answer within 60 s"))?
            .map_err(|e| format!("kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {args:?}: {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// [`Plane::kubectl`], which must succeed.
    pub async fn k(&self, args: &[&str]) -> String {
        self.kubectl(args).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client of the apiserver with the identity of `kubeconfig`.
    pub async fn client(&self, kubeconfig: &Path) -> kube::Client {
        let file = kube::config::Kubeconfig::read_from(kubeconfig).expect("read a kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .expect("a client configuration");
        kube::Client::try_from(config).expect("a client")
    }
}
