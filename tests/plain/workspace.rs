//! The workspace's rooms: the sidecar crate builds on none of the manifest
//! tooling or the demo, nor on the crates only they need, and the tooling and
//! the demo do not build on each other. Read from `cargo metadata`, so a
//! dependency that arrives through another crate counts too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The resolved workspace: each package's name, and the names of the packages
/// it builds on (normal and build dependencies; dev-dependencies do not end up
/// in the crate).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO"))
        // Not --offline: the resolve covers every platform's packages, and a
        // fresh machine has not downloaded the Windows-only ones.
        .args(["metadata", "--format-version", "1", "--locked"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let deps: Vec<String> = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"] != "dev"))
            .map(|d| names[d["pkg"].as_str().unwrap()].to_string())
            .collect();
        graph
            .entry(names[node["id"].as_str().unwrap()].to_string())
            .or_default()
            .extend(deps);
    }
    graph
}

/// Every package `name` builds on, directly or not.
fn closure(graph: &BTreeMap<String, BTreeSet<String>>, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        for d in graph
            .get(&n)
            .unwrap_or_else(|| panic!("{n} is not in the workspace's graph"))
        {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

fn refused(graph: &BTreeMap<String, BTreeSet<String>>, name: &str, forbidden: &[&str]) -> Vec<String> {
    let deps = closure(graph, name);
    forbidden
        .iter()
        .filter(|f| deps.contains(**f))
        .map(|f| f.to_string())
        .collect()
}

#[test]
fn the_sidecar_builds_on_no_tooling_and_the_rooms_stay_apart() {
    let g = graph();
    // The one binary brings the three rooms together.
    let all = closure(&g, "stickyd");
    for c in ["stickyd-sidecar", "stickyd-tooling", "stickyd-demo"] {
        assert!(all.contains(c), "stickyd does not build on {c}");
    }
    // What only the tooling (the YAML model, inject --diff, the command line)
    // and the demo need: the sidecar is configured by its environment. (Not
    // json-patch, or rustls: kube brings them to the sidecar too.)
    let tooling_only = ["yaml-rust2", "similar", "clap"];
    // The check sees them where they are.
    assert_eq!(refused(&g, "stickyd-tooling", &tooling_only), tooling_only);
    let sidecar = ["stickyd", "stickyd-tooling", "stickyd-demo"]
        .iter()
        .chain(&tooling_only);
    let sidecar: Vec<&str> = sidecar.copied().collect();
    assert_eq!(refused(&g, "stickyd-sidecar", &sidecar), Vec::<String>::new());
    assert_eq!(
        refused(&g, "stickyd-tooling", &["stickyd", "stickyd-demo"]),
        Vec::<String>::new()
    );
    assert_eq!(
        refused(
            &g,
            "stickyd-demo",
            &["stickyd", "stickyd-tooling", "yaml-rust2", "similar"]
        ),
        Vec::<String>::new()
    );
}
