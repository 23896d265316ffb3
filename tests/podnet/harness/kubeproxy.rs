//! A ClusterIP Service as kube-proxy's iptables mode writes it, in the node
//! namespace's nat table:
//!
//! ```text
//! PREROUTING, OUTPUT -> KUBE-SERVICES -> KUBE-SVC-<hash>   (ClusterIP:port)
//!   -m statistic --mode random --probability 1/n     -> KUBE-SEP-<hash of endpoint 1>
//!   -m statistic --mode random --probability 1/(n-1) -> KUBE-SEP-<hash of endpoint 2>
//!   ...                                               -> KUBE-SEP-<hash of endpoint n>
//! KUBE-SEP-<hash>: DNAT --to-destination podIP:port
//! ```
//!
//! The choice is made once per new connection and kept by conntrack, so a
//! client with pooled keep-alive connections spreads its requests over the
//! pods connection by connection. Every change rewrites the chains in one
//! `iptables-restore --noflush` transaction, as kube-proxy does: the chains
//! it names are flushed and refilled at once, and chains of endpoints that
//! left are deleted in the same transaction. With no endpoint, the filter
//! table rejects connections to the ClusterIP.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::SocketAddrV4;

use sha2::{Digest, Sha256};

use super::netns::Netns;

/// `namespace/service:port-name`, as kube-proxy names a service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub cluster_ip: SocketAddrV4,
}

/// kube-proxy's chain names: a prefix and 16 characters of a hash.
fn chain(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02X}")).collect();
    format!("{prefix}{}", &hex[..16])
}

fn svc_chain(port: &str) -> String {
    chain("KUBE-SVC-", &[port, "tcp"])
}

fn sep_chain(port: &str, ep: &SocketAddrV4) -> String {
    chain("KUBE-SEP-", &[port, "tcp", &ep.to_string()])
}

/// Every Service port's rules in the node namespace, written together (one
/// KUBE-SERVICES chain holds them all).
#[derive(Default)]
pub struct KubeProxy {
    /// Service port name -> its ClusterIP and the endpoints it sends to.
    ports: BTreeMap<String, (SocketAddrV4, Vec<SocketAddrV4>)>,
    /// SVC and SEP chains written last time, deleted once they leave.
    chains: BTreeSet<String>,
}

impl KubeProxy {
    /// Creates the chains with no service and hooks KUBE-SERVICES into
    /// PREROUTING and OUTPUT (nat) and INPUT, FORWARD and OUTPUT (filter).
    pub fn install(node: &Netns) -> KubeProxy {
        let mut kp = KubeProxy::default();
        kp.write(node);
        let jumps: [(&str, &str, &[&str]); 6] = [
            (
                "nat",
                "PREROUTING",
                &["-m", "comment", "--comment", "kubernetes service portals"],
            ),
            (
                "nat",
                "OUTPUT",
                &["-m", "comment", "--comment", "kubernetes service portals"],
            ),
            (
                "nat",
                "POSTROUTING",
                &["-m", "comment", "--comment", "kubernetes postrouting rules"],
            ),
            ("filter", "INPUT", &["-m", "conntrack", "--ctstate", "NEW"]),
            ("filter", "FORWARD", &["-m", "conntrack", "--ctstate", "NEW"]),
            ("filter", "OUTPUT", &["-m", "conntrack", "--ctstate", "NEW"]),
        ];
        for (table, from, matches) in jumps {
            let target = if from == "POSTROUTING" {
                "KUBE-POSTROUTING"
            } else {
                "KUBE-SERVICES"
            };
            let mut args = vec!["-w", "-t", table, "-I", from];
            args.extend_from_slice(matches);
            args.extend_from_slice(&["-j", target]);
            node.exec("iptables", &args);
        }
        kp
    }

    /// Sets one Service port's endpoints (the pod addresses kube-proxy
    /// uses) and rewrites every chain, atomically.
    pub fn sync(&mut self, node: &Netns, port: &ServicePort, endpoints: &[SocketAddrV4]) {
        self.ports
            .insert(port.name.clone(), (port.cluster_ip, endpoints.to_vec()));
        self.write(node);
    }

    /// Replaces every Service port at once; returns whether anything changed.
    pub fn sync_all(&mut self, node: &Netns, ports: BTreeMap<String, (SocketAddrV4, Vec<SocketAddrV4>)>) -> bool {
        if ports == self.ports {
            return false;
        }
        self.ports = ports;
        self.write(node);
        true
    }

    fn write(&mut self, node: &Netns) {
        let text = self.render();
        node.exec_with_input("iptables-restore", &["-w", "--noflush"], &text);
        self.chains = self.wanted();
    }

    /// The SVC and SEP chains of the current ports.
    fn wanted(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (name, (_, eps)) in &self.ports {
            if !eps.is_empty() {
                out.insert(svc_chain(name));
            }
            out.extend(eps.iter().map(|e| sep_chain(name, e)));
        }
        out
    }

    /// The iptables-restore input for the current ports.
    pub fn render(&self) -> String {
        let wanted = self.wanted();
        let mut t = String::new();
        let _ = writeln!(t, "*filter");
        let _ = writeln!(t, ":KUBE-SERVICES - [0:0]");
        for (name, (cip, eps)) in &self.ports {
            if eps.is_empty() {
                let _ = writeln!(
                    t,
                    "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} has no endpoints\" -m tcp --dport {} -j REJECT --reject-with icmp-port-unreachable",
                    cip.ip(),
                    cip.port()
                );
            }
        }
        let _ = writeln!(t, "COMMIT");
        let _ = writeln!(t, "*nat");
        for c in ["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"] {
            let _ = writeln!(t, ":{c} - [0:0]");
        }
        let gone: Vec<&String> = self.chains.iter().filter(|c| !wanted.contains(*c)).collect();
        for c in wanted.iter().chain(gone.iter().copied()) {
            let _ = writeln!(t, ":{c} - [0:0]");
        }
        let _ = writeln!(t, "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000");
        let _ = writeln!(t, "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN");
        let _ = writeln!(t, "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000");
        let _ = writeln!(
            t,
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
        );
        for (name, (cip, endpoints)) in &self.ports {
            if endpoints.is_empty() {
                continue;
            }
            let svc = svc_chain(name);
            let _ = writeln!(
                t,
                "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {} -j {svc}",
                cip.ip(),
                cip.port()
            );
            let n = endpoints.len();
            for (i, ep) in endpoints.iter().enumerate() {
                let stat = if i + 1 < n {
                    format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - i) as f64)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    t,
                    "-A {svc} -m comment --comment \"{name} -> {ep}\"{stat} -j {}",
                    sep_chain(name, ep)
                );
            }
            for ep in endpoints {
                let sep = sep_chain(name, ep);
                // Hairpin: a pod reaching itself through the Service is masqueraded.
                let _ = writeln!(
                    t,
                    "-A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ",
                    ep.ip()
                );
                let _ = writeln!(
                    t,
                    "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ep}"
                );
            }
        }
        for c in gone {
            let _ = writeln!(t, "-X {c}");
        }
        let _ = writeln!(t, "COMMIT");
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_endpoint_with_falling_probabilities() {
        let cip: SocketAddrV4 = "198.19.0.10:80".parse().unwrap();
        let eps: Vec<SocketAddrV4> = ["198.18.0.10:8080", "198.18.0.11:8080", "198.18.0.12:8080"]
            .iter()
            .map(|e| e.parse().unwrap())
            .collect();
        let mut kp = KubeProxy::default();
        kp.ports.insert("apps/mysvc:http".into(), (cip, eps));
        kp.ports.insert(
            "default/kubernetes:https".into(),
            ("198.19.0.1:443".parse().unwrap(), vec![]),
        );
        let text = kp.render();
        let jumps: Vec<&str> = text.lines().filter(|l| l.starts_with("-A KUBE-SVC-")).collect();
        assert_eq!(jumps.len(), 3);
        assert!(jumps[0].contains("--probability 0.3333333333"), "{}", jumps[0]);
        assert!(jumps[1].contains("--probability 0.5000000000"), "{}", jumps[1]);
        assert!(!jumps[2].contains("statistic"), "{}", jumps[2]);
        assert_eq!(text.matches("-j DNAT --to-destination").count(), 3);
        assert_eq!(text.matches("REJECT").count(), 1, "{text}");
        assert!(text.contains("default/kubernetes:https has no endpoints\" -m tcp --dport 443 -j REJECT"));
        assert!(!text.contains("apps/mysvc:http has no endpoints"));
    }
}
