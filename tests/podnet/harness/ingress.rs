//! The ingress: HAProxy in a namespace of its own, routed to the pods
//! through the node (and so through kube-proxy's DNAT), with one upstream
//! server, the ExternalName Service's DNS name, as ingress-nginx sees it.
//!
//! ```text
//! ingress ns: HAProxy 127.0.0.1:8000, eth0 198.18.1.2/30
//!     │  default route via 198.18.1.1
//! node ns: to-ingress 198.18.1.1/30, br0 198.18.0.1/24, nat KUBE-SERVICES
//! ```
//!
//! The name resolves to the ClusterIP through the namespace's own hosts file,
//! `/etc/netns/<ns>/hosts`, which `ip netns exec` mounts over /etc/hosts.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::netns::{etc_dir, Netns};

pub const INGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const NODE_SIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Where HAProxy listens, on the ingress namespace's loopback.
pub const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8000);
/// How long HAProxy waits for a response once a request is sent. ingress-nginx's
/// proxy-read-timeout is 60 s; a shorter one keeps a stalled request from
/// holding the test for a minute, and changes nothing else.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Ingress {
    pub ns: Netns,
    haproxy: Mutex<Child>,
    pub log: PathBuf,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let haproxy = self.haproxy.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = haproxy.kill();
        let _ = haproxy.wait();
    }
}

/// HAProxy's configuration: one frontend (with `frontend`'s extra lines, an
/// Ingress's path rewrite say), one backend with one server.
pub fn haproxy_config_with(upstream: &str, frontend: &str) -> String {
    let read = READ_TIMEOUT.as_secs();
    format!(
        "global
    nbthread 1
    maxconn 4000
    log stderr format raw local0 warning

defaults
    mode http
    log global
    option dontlognull
    # ingress-nginx: proxy-connect-timeout 5s, upstream keepalive timeout 60s.
    timeout connect 5s
    timeout client 60s
    timeout server {read}s
    timeout http-keep-alive 60s
    retries 3

frontend ingress
    bind {LISTEN}
{frontend}    default_backend externalname

backend externalname
    # ingress-nginx's cookie affinity over the Service's endpoints: with an
    # ExternalName there is one, so the cookie pins nothing.
    cookie INGRESSCOOKIE insert indirect nocache
    # ingress-nginx's upstream keepalive pool: idle connections to the one
    # upstream are shared by every client.
    http-reuse always
    # What nginx does for a request that fails on a cached keep-alive
    # connection before any response byte (the upstream closed it): it sends
    # the request again on a new connection.
    retry-on conn-failure empty-response
    server externalname {upstream} cookie externalname
"
    )
}

impl Ingress {
    /// Creates the namespace and its link to the node, the hosts file that
    /// maps `dns_name` to `cluster_ip`, and starts HAProxy towards
    /// `dns_name:port`.
    pub fn start(prefix: &str, node: &Netns, dns_name: &str, cluster_ip: SocketAddrV4, dir: &Path) -> Ingress {
        Ingress::start_with(prefix, node, dns_name, cluster_ip, "", dir)
    }

    /// [`Ingress::start`] with extra frontend lines.
    pub fn start_with(
        prefix: &str,
        node: &Netns,
        dns_name: &str,
        cluster_ip: SocketAddrV4,
        frontend: &str,
        dir: &Path,
    ) -> Ingress {
        let ns = Netns::create(&format!("{prefix}-ingress"));
        node.ip(&[
            "link",
            "add",
            "to-ingress",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        node.ip(&["addr", "add", &format!("{NODE_SIDE_IP}/30"), "dev", "to-ingress"]);
        node.ip(&["link", "set", "to-ingress", "up"]);
        ns.ip(&["addr", "add", &format!("{INGRESS_IP}/30"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &NODE_SIDE_IP.to_string()]);

        let etc = etc_dir(&ns.name);
        std::fs::create_dir_all(&etc).expect("create /etc/netns/<ns>");
        std::fs::write(
            etc.join("hosts"),
            format!("127.0.0.1 localhost\n{} {dns_name}\n", cluster_ip.ip()),
        )
        .expect("write the ingress namespace's hosts file");

        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            haproxy_config_with(&format!("{dns_name}:{}", cluster_ip.port()), frontend),
        )
        .expect("haproxy.cfg");
        let log = dir.join("haproxy.log");
        let haproxy = ns
            .command("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("haproxy log"))
            .spawn()
            .expect("start haproxy");
        Ingress {
            ns,
            haproxy: Mutex::new(haproxy),
            log,
        }
    }

    /// Waits until HAProxy accepts connections.
    pub async fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(socket) = self.ns.socket() {
                if socket.connect(SocketAddr::V4(LISTEN)).await.is_ok() {
                    return;
                }
            }
            let exited = self.haproxy.lock().unwrap_or_else(|e| e.into_inner()).try_wait();
            if let Ok(Some(status)) = exited {
                panic!("haproxy exited ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen within 10 s: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{LISTEN}")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
