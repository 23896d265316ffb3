//! The integration tests that drive a tool from outside cargo: kubectl and
//! hadolint (manifests, inject, lint), shellcheck (the kind script), Python's
//! grpcio (gRPC affinity) and Chromium (the demo page). Without a tool, its
//! tests say SKIP and why, and pass, unless `STICKYDTEST_REQUIRE_TOOLS=1` (as
//! in CI), where they fail.
//!
//! One binary: `cargo test --test tools`, or `cargo test --test tools lint::`.
#![forbid(unsafe_code)]

#[path = "../common/mod.rs"]
mod common;

mod affinity;
mod browser;
mod inject;
mod lint;
mod manifests;
