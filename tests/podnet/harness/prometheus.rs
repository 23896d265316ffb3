//! A real Prometheus (Debian's package) in the node namespace, scraping
//! every sidecar's admin port through file-based service discovery that the
//! harness writes as pods come and go (each target labelled with its
//! `namespace` and `pod`, as the scrape configuration of docs/operations.md
//! does), and evaluating `monitoring/rules.yaml`, every second.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::kubelet::Container;
use super::netns::Netns;

/// Where Prometheus listens, on the node namespace's loopback.
pub const LISTEN: &str = "127.0.0.1:9099";

pub struct Prometheus {
    proc: Container,
    targets: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `node`, its data and configuration in `dir`, and
    /// waits until it is ready.
    pub async fn start(node: &Netns, dir: &Path) -> Prometheus {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let targets = dir.join("targets.json");
        std::fs::write(&targets, "[]").unwrap();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/rules.yaml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 900ms}}
rule_files: [{}]
scrape_configs:
- job_name: stickyd
  file_sd_configs: [{{files: [{}], refresh_interval: 1s}}]
",
                rules.display(),
                targets.display()
            ),
        )
        .unwrap();
        let mut cmd = node.command("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={LISTEN}"))
            .arg("--log.level=warn");
        let proc = Container::spawn(cmd, "prometheus".into(), dir.join("prometheus.log"));
        let p = Prometheus { proc, targets };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if p.get(node, "/-/ready").await.is_ok_and(|r| r.contains("Ready")) {
                break;
            }
            if let Some(status) = p.proc.exited() {
                panic!("prometheus exited ({status}):\n{}", p.proc.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                p.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    /// Writes the targets: (namespace, pod, admin address) of every sidecar.
    pub fn set_targets(&self, targets: &[(String, String, SocketAddr)]) {
        let list: Vec<Value> = targets
            .iter()
            .map(|(ns, pod, addr)| {
                serde_json::json!({"targets": [addr.to_string()], "labels": {"namespace": ns, "pod": pod}})
            })
            .collect();
        // Written whole, then renamed: Prometheus never reads half a file.
        let tmp = self.targets.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string(&list).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.targets).unwrap();
    }

    async fn get(&self, node: &Netns, path: &str) -> Result<String, String> {
        let addr: SocketAddr = LISTEN.parse().unwrap();
        let r = node.get(addr, path, Duration::from_secs(5)).await?;
        if r.status == 200 {
            Ok(r.body)
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    }

    /// An instant query: each series' labels and value.
    pub async fn query(&self, node: &Netns, promql: &str) -> Vec<(Value, f64)> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let body = self.get(node, &path).await.unwrap_or_else(|e| panic!("{promql}: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["status"], "success", "{promql}: {body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// The alerts firing now: each one's labels.
    pub async fn firing(&self, node: &Netns) -> Vec<Value> {
        let body = self
            .get(node, "/api/v1/alerts")
            .await
            .unwrap_or_else(|e| panic!("alerts: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["labels"].clone())
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
