//! The integration tests that drive a tool from outside cargo: kubectl and
//! hadolint (manifests, inject, lint), shellcheck (the kind script), Python's
//! grpcio (gRPC affinity), Chromium (the demo page), the official MCP SDKs
//! (MCP sessions), helm (the chart) and promtool (the alerts and dashboard). Without a tool, its tests say SKIP and why, and pass, unless
//! `STICKYDTEST_REQUIRE_TOOLS=1` (as in CI), where they fail.
//!
//! One binary: `cargo test --test tools`, or `cargo test --test tools lint::`.
#![forbid(unsafe_code)]

#[path = "../common/mod.rs"]
mod common;

mod affinity;
mod browser;
mod helm;
mod inject;
mod kube;
mod lint;
mod manifests;
mod mcp;
mod monitoring;

/// A test's tool is missing (`why`): a SKIP line, or a panic under
/// STICKYDTEST_REQUIRE_TOOLS=1.
pub(crate) fn missing_tool(test: &str, why: &str) {
    if std::env::var("STICKYDTEST_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{test}: {why}, and STICKYDTEST_REQUIRE_TOOLS=1");
    }
    // Straight to stderr, past the test harness's output capture, so the
    // skip shows in a plain `cargo test` run.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: {why} (STICKYDTEST_REQUIRE_TOOLS=1 makes this a failure)"
    );
}
