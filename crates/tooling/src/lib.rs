//! stickyd's manifest tooling: the YAML document model (`kyaml`), the
//! manifest checks (`lint`), adding the sidecar to manifests (`inject`, with
//! `migrate` for ingress-nginx and Gateway API settings), and the mutating
//! admission webhook that does the same to Pods (`injector`). It uses the
//! sidecar's configuration parser, so that what it writes is what the
//! sidecar reads.
#![forbid(unsafe_code)]

pub mod inject;
pub mod injector;
pub mod kyaml;
pub mod lint;
pub(crate) mod migrate;
pub mod model;
