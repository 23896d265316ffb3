//! The alerts, recording rules and dashboard of `monitoring/`: the rules pass
//! `promtool check rules` and their unit tests (`monitoring/rules.test.yaml`,
//! a series that must fire each alert and one that must not); the
//! PrometheusRule of `manifests/monitoring` and the Helm chart's copies carry
//! the same rules and dashboard; every query of the dashboard and the rules
//! parses, and names only metrics a running stickyd exports (read from its
//! own `/metrics`). promtool comes with Debian's prometheus package; without
//! it the tests that need it say SKIP, unless STICKYDTEST_REQUIRE_TOOLS=1.
//!
//! Addresses: 127.0.214.1.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::common::{addr_on, KillableApp, Stickyd};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// promtool, or None after a SKIP line.
fn promtool(test: &str) -> Option<&'static str> {
    let ok = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        crate::missing_tool(test, "no promtool (apt-get install prometheus)");
        return None;
    }
    Some("promtool")
}

fn promtool_ok(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// A YAML document as JSON.
fn yaml(text: &str) -> serde_json::Value {
    let docs = crate::inject::docs(text);
    assert_eq!(docs.len(), 1, "one YAML document");
    crate::inject::to_json(&docs[0])
}

#[test]
fn rules_pass_promtool_and_their_unit_tests() {
    let test = "monitoring::rules_pass_promtool_and_their_unit_tests";
    if promtool(test).is_none() {
        return;
    }
    let checked = promtool_ok(&["check", "rules", "monitoring/rules.yaml"]);
    assert!(checked.contains("SUCCESS: 13 rules found"), "{checked}");
    let tested = promtool_ok(&["test", "rules", "monitoring/rules.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a unit test that expects it to fire.
    let rules = yaml(&read("monitoring/rules.yaml"));
    let tests = read("monitoring/rules.test.yaml");
    let alerts: Vec<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    assert_eq!(alerts.len(), 7, "{alerts:?}");
    for a in &alerts {
        assert!(tests.contains(&format!("alertname: {a}")), "no unit test for {a}");
        assert!(
            read("docs/operations.md").contains(&format!("### {a}\n")),
            "no runbook section for {a} in docs/operations.md"
        );
    }
}

#[test]
fn the_prometheusrule_and_the_chart_carry_the_same_rules_and_dashboard() {
    let rules = yaml(&read("monitoring/rules.yaml"));
    let crd = yaml(&read("manifests/monitoring/prometheusrule.yaml"));
    assert_eq!(crd["kind"], "PrometheusRule");
    assert_eq!(
        crd["spec"]["groups"], rules["groups"],
        "manifests/monitoring/prometheusrule.yaml"
    );
    assert_eq!(
        read("charts/stickyd/files/rules.yaml"),
        read("monitoring/rules.yaml"),
        "charts/stickyd/files/rules.yaml is a copy of monitoring/rules.yaml"
    );
    assert_eq!(
        read("charts/stickyd/files/dashboard.json"),
        read("monitoring/dashboard.json"),
        "charts/stickyd/files/dashboard.json is a copy of monitoring/dashboard.json"
    );
}

/// Every PromQL expression of the dashboard (panels and variables), with
/// Grafana's variables replaced by values.
fn dashboard_queries() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(&read("monitoring/dashboard.json")).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().expect("a target's expr").to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(SELECTOR, label): the selector is PromQL.
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(sel, _)| sel.to_string())
                .unwrap_or_else(|| panic!("variable query {q}"));
            out.push(inner);
        }
    }
    out.iter()
        .map(|q| {
            q.replace("$__rate_interval", "5m")
                .replace("$namespace", "shop")
                .replace("$service", "shop")
                .replace("$pod", ".*")
        })
        .collect()
}

/// The `stickyd_*` names an expression uses.
fn names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("stickyd_") {
        let start = i + at;
        let before = start.checked_sub(1).map(|b| bytes[b] as char);
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // Not inside another identifier or a recording rule's name.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_parses_and_names_only_metrics_stickyd_exports() {
    let test = "monitoring::every_query_parses_and_names_only_metrics_stickyd_exports";
    // What a running stickyd exports, from its own /metrics: each family's
    // sample names. A family with labels shows once it has a sample: one
    // request the app served, one whose app was gone (an upstream error) and
    // one malformed request (a bad request).
    let ip = "127.0.214.1";
    let mut app = KillableApp::start("pod-0", ip);
    let listen = addr_on(ip);
    let s = Stickyd::start(
        "pod-0",
        listen,
        app.addr,
        &[
            ("STICKYD_ENDPOINTS", format!("static:pod-0={listen}")),
            ("STICKYD_SERVICE", "shop".into()),
        ],
    )
    .await;
    let ok = crate::common::get(&format!("http://{listen}/"), &[])
        .await
        .expect("a request");
    assert_eq!(ok.status, 200);
    app.kill();
    let gone = crate::common::get(&format!("http://{listen}/"), &[])
        .await
        .expect("a request");
    assert_eq!(gone.status, 502, "the app is gone");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    let metrics = crate::common::get(&format!("http://{}/metrics", s.admin), &[])
        .await
        .expect("/metrics");
    let mut exported = BTreeSet::new();
    for line in metrics.body.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let (name, kind) = (it.next().unwrap().to_string(), it.next().unwrap_or(""));
        match kind {
            "counter" => {
                exported.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{s}"));
                }
            }
            "info" => {
                exported.insert(format!("{name}_info"));
            }
            _ => {
                exported.insert(name);
            }
        }
    }
    assert!(exported.contains("stickyd_sessions_active"), "{exported:?}");

    let rules = yaml(&read("monitoring/rules.yaml"));
    let rule_exprs: Vec<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    for q in queries.iter().chain(&rule_exprs) {
        for n in names(q) {
            assert!(
                exported.contains(&n),
                "{n} (in {q}) is not a metric stickyd exports: {exported:?}"
            );
        }
    }

    // Each dashboard query parses: promtool reads them as recording rules.
    if promtool(test).is_none() {
        return;
    }
    let file = crate::common::temp_path("dashboard-rules.yaml");
    let mut text = String::from("groups:\n- name: dashboard\n  rules:\n");
    for (i, q) in queries.iter().enumerate() {
        text.push_str(&format!(
            "  - record: dashboard:query{i}\n    expr: {}\n",
            serde_json::to_string(q).unwrap()
        ));
    }
    std::fs::write(&file, &text).unwrap();
    let out = promtool_ok(&["check", "rules", &file.display().to_string()]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn names_finds_metrics_but_not_recording_rules() {
    let n = names("sum(rate(stickyd_requests_total{a=\"b\"}[5m])) / stickyd:repins:rate5m + x_stickyd_y");
    assert_eq!(n.into_iter().collect::<Vec<_>>(), ["stickyd_requests_total"]);
}
