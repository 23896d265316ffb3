//! The stickyd sidecar: a proxy that gives Kubernetes services strict cookie
//! session stickiness, even behind an ExternalName Service. Configuration
//! (`config`, `startup`, `limits`), the routing decision (`route`), the
//! session cookie (`affinity`), the endpoint view and its sources
//! (`endpoints`), the proxy (`proxy`) and what peers assert to each other
//! (`peer`), the session-aware drain (`drain`,
//! `sessions`), the admin listener and metrics (`admin`, `metrics`), and one
//! running sidecar made of them (`sidecar`).
//!
//! It depends on none of stickyd's manifest tooling or demo.
#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod affinity;
pub mod config;
pub mod drain;
pub mod endpoints;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod peer;
pub(crate) mod placement;
pub mod proxy;
pub mod route;
pub(crate) mod sessions;
pub mod sidecar;
pub mod startup;
