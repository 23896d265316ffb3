//! stickyd: a sidecar proxy that gives Kubernetes services strict cookie
//! session stickiness, even behind an ExternalName Service.
//!
//! The workspace has three crates: the sidecar (`stickyd-sidecar`), the
//! manifest tooling (`stickyd-tooling`) and the demo (`stickyd-demo`). This
//! package is the one `stickyd` binary, and re-exports their modules under
//! the paths they had in the single crate (`stickyd::config`,
//! `stickyd::lint`, …) for the integration tests, examples and fuzz targets.
#![forbid(unsafe_code)]

pub use stickyd_demo as demo;
pub use stickyd_sidecar::{affinity, config, drain, endpoints, limits, metrics, peer, proxy, sidecar, startup};
pub use stickyd_tooling::{inject, injector, kyaml, lint};
