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

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::SocketAddrV4;

use sha2::{Digest, Sha256};

use super::netns::Netns;

/// `namespace/service:port-name`, as kube-proxy names a service port.
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

/// The Service's rules in the node namespace.
pub struct KubeProxy {
    port: ServicePort,
    /// SEP chains written last time, deleted once their endpoint leaves.
    seps: BTreeSet<String>,
}

impl KubeProxy {
    /// Creates the chains with no endpoint and hooks KUBE-SERVICES into
    /// PREROUTING and OUTPUT (nat) and INPUT, FORWARD and OUTPUT (filter).
    pub fn install(node: &Netns, port: ServicePort) -> KubeProxy {
        let mut kp = KubeProxy {
            port,
            seps: BTreeSet::new(),
        };
        kp.sync(node, &[]);
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

    /// Rewrites the Service's chains for `endpoints` (the pod addresses
    /// kube-proxy uses), atomically.
    pub fn sync(&mut self, node: &Netns, endpoints: &[SocketAddrV4]) {
        let text = self.render(endpoints);
        node.exec_with_input("iptables-restore", &["-w", "--noflush"], &text);
        self.seps = endpoints.iter().map(|e| self.sep_chain(e)).collect();
    }

    fn svc_chain(&self) -> String {
        chain("KUBE-SVC-", &[&self.port.name, "tcp"])
    }

    fn sep_chain(&self, ep: &SocketAddrV4) -> String {
        chain("KUBE-SEP-", &[&self.port.name, "tcp", &ep.to_string()])
    }

    /// The iptables-restore input for `endpoints`.
    pub fn render(&self, endpoints: &[SocketAddrV4]) -> String {
        let name = &self.port.name;
        let cip = self.port.cluster_ip;
        let svc = self.svc_chain();
        let seps: Vec<String> = endpoints.iter().map(|e| self.sep_chain(e)).collect();
        let mut t = String::new();
        let _ = writeln!(t, "*filter");
        let _ = writeln!(t, ":KUBE-SERVICES - [0:0]");
        if endpoints.is_empty() {
            let _ = writeln!(
                t,
                "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} has no endpoints\" -m tcp --dport {} -j REJECT --reject-with icmp-port-unreachable",
                cip.ip(),
                cip.port()
            );
        }
        let _ = writeln!(t, "COMMIT");
        let _ = writeln!(t, "*nat");
        for c in ["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING", svc.as_str()] {
            let _ = writeln!(t, ":{c} - [0:0]");
        }
        let gone: Vec<&String> = self.seps.iter().filter(|s| !seps.contains(s)).collect();
        for c in seps.iter().chain(gone.iter().copied()) {
            let _ = writeln!(t, ":{c} - [0:0]");
        }
        let _ = writeln!(t, "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000");
        let _ = writeln!(t, "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN");
        let _ = writeln!(t, "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000");
        let _ = writeln!(
            t,
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
        );
        if !endpoints.is_empty() {
            let _ = writeln!(
                t,
                "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {} -j {svc}",
                cip.ip(),
                cip.port()
            );
        }
        let n = endpoints.len();
        for (i, (ep, sep)) in endpoints.iter().zip(&seps).enumerate() {
            let stat = if i + 1 < n {
                format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - i) as f64)
            } else {
                String::new()
            };
            let _ = writeln!(t, "-A {svc} -m comment --comment \"{name} -> {ep}\"{stat} -j {sep}");
        }
        for (ep, sep) in endpoints.iter().zip(&seps) {
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
        let kp = KubeProxy {
            port: ServicePort {
                name: "apps/mysvc:http".into(),
                cluster_ip: "198.19.0.10:80".parse().unwrap(),
            },
            seps: BTreeSet::new(),
        };
        let eps: Vec<SocketAddrV4> = ["198.18.0.10:8080", "198.18.0.11:8080", "198.18.0.12:8080"]
            .iter()
            .map(|e| e.parse().unwrap())
            .collect();
        let text = kp.render(&eps);
        let jumps: Vec<&str> = text.lines().filter(|l| l.starts_with("-A KUBE-SVC-")).collect();
        assert_eq!(jumps.len(), 3);
        assert!(jumps[0].contains("--probability 0.3333333333"), "{}", jumps[0]);
        assert!(jumps[1].contains("--probability 0.5000000000"), "{}", jumps[1]);
        assert!(!jumps[2].contains("statistic"), "{}", jumps[2]);
        assert_eq!(text.matches("-j DNAT --to-destination").count(), 3);
        assert!(!text.contains("REJECT"));
        assert!(kp
            .render(&[])
            .contains("has no endpoints\" -m tcp --dport 80 -j REJECT"));
    }
}
