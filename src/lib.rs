//! stickyd: a sidecar proxy that gives Kubernetes services strict cookie
//! session stickiness, even behind an ExternalName Service.
#![forbid(unsafe_code)]

pub mod admin;
pub mod affinity;
pub mod config;
pub mod demo;
pub mod drain;
pub mod endpoints;
pub mod inject;
pub mod injector;
pub mod kyaml;
pub mod limits;
pub mod lint;
pub mod metrics;
pub mod migrate;
pub mod placement;
pub mod proxy;
pub mod route;
pub mod sessions;
pub mod sidecar;
pub mod startup;
