//! The integration tests that need nothing beyond cargo: the stickyd binary and
//! the library on loopback addresses (each module owns its own 127.0.x.y, named
//! in its `Addresses:` line), the apiserver double, and the documentation.
//!
//! One binary, so the whole stack is linked once: `cargo test --test plain`,
//! or `cargo test --test plain proxy::` for one module.
#![forbid(unsafe_code)]

#[path = "../apiserver/mod.rs"]
mod apiserver;
#[path = "../common/mod.rs"]
mod common;

mod app_header;
mod demo;
mod docs;
mod drain;
mod endpoint_churn;
mod faults;
mod hostile;
mod injector;
mod kubernetes;
mod limits;
mod limits_config;
mod logs;
mod migrate;
mod placement;
mod proptest_codec;
mod proxy;
mod session;
mod timing;
mod trust;
mod variables;
mod workspace;
