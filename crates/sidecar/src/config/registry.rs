//! The registry of variables: every variable the sidecar and the injector
//! read, with its default written once, the lookups the parsers go through,
//! and the refusal of a misspelt `STICKYD_*` name.

use std::cmp::Ordering;

use super::service_links::is_service_link;
use super::{ConfigError, Env};

/// Every variable `stickyd run` reads, with its default (`None`: unset).
pub const VARIABLES: &[(&str, Option<&str>)] = &[
    ("STICKYD_LISTEN", Some("0.0.0.0:8080")),
    ("STICKYD_UPSTREAM", Some("http://127.0.0.1:8081")),
    ("STICKYD_UPSTREAM_PROTOCOL", Some("http1")),
    ("STICKYD_ADMIN_LISTEN", Some("0.0.0.0:9090")),
    ("STICKYD_POD_NAME", None),
    ("STICKYD_ENDPOINTS", Some("kubernetes")),
    ("STICKYD_NAMESPACE", None),
    ("STICKYD_SERVICE", None),
    ("STICKYD_PORT_NAME", None),
    ("STICKYD_SYNC_TIMEOUT", Some("10")),
    ("STICKYD_AFFINITY", Some("cookie")),
    ("STICKYD_AFFINITY_HEADER", Some("x-stickyd-affinity")),
    ("STICKYD_APP_COOKIE", None),
    ("STICKYD_APP_HEADER", None),
    ("STICKYD_COOKIE_NAME", Some("stickyd")),
    ("STICKYD_COOKIE_PATH", Some("/")),
    ("STICKYD_COOKIE_DOMAIN", None),
    ("STICKYD_COOKIE_MAX_AGE", None),
    ("STICKYD_COOKIE_SECURE", Some("auto")),
    ("STICKYD_COOKIE_HTTPONLY", Some("true")),
    ("STICKYD_COOKIE_SAMESITE", Some("Lax")),
    ("STICKYD_COOKIE_PARTITIONED", Some("false")),
    ("STICKYD_COOKIE_SECRET", None),
    ("STICKYD_COOKIE_SECRET_FILE", None),
    ("STICKYD_SESSION_MAX_LIFETIME", None),
    ("STICKYD_SESSION_IDLE_TIMEOUT", None),
    ("STICKYD_SESSION_ACTIVE_WINDOW", Some("5m")),
    ("STICKYD_ON_MISSING", Some("repin")),
    ("STICKYD_NEW_SESSIONS", Some("local")),
    ("STICKYD_DRAIN_TOKEN", None),
    ("STICKYD_DRAIN_MAX", Some("300")),
    ("STICKYD_DRAIN_SECONDS", Some("5")),
    ("STICKYD_DRAIN_TIMEOUT", Some("30")),
    ("STICKYD_CONNECT_TIMEOUT", Some("1")),
    ("STICKYD_RESPONSE_TIMEOUT", Some("60")),
    ("STICKYD_HEADER_READ_TIMEOUT", Some("10")),
    ("STICKYD_BODY_READ_TIMEOUT", Some("60")),
    ("STICKYD_MAX_HEADER_BYTES", Some("65536")),
    ("STICKYD_MAX_HEADERS", Some("100")),
    ("STICKYD_MAX_CONNECTIONS", None),
    ("STICKYD_MEMORY_LIMIT", None),
    ("STICKYD_POOL_IDLE_TIMEOUT", Some("60")),
    ("STICKYD_UPSTREAM_MAX_CONNECTIONS", Some("256")),
    ("STICKYD_QUEUE_TIMEOUT", Some("5")),
    ("STICKYD_LOG", Some("info")),
    ("STICKYD_LOG_FORMAT", Some("text")),
    ("STICKYD_WORKER_THREADS", None),
];

/// Every variable `stickyd injector` reads, with its default (`None`: required
/// or unset). Listed here, beside the sidecar's, because both run from the one
/// binary and either refuses a `STICKYD_*` name that neither reads.
pub const INJECTOR_VARIABLES: &[(&str, Option<&str>)] = &[
    ("STICKYD_INJECTOR_LISTEN", Some("0.0.0.0:8443")),
    ("STICKYD_INJECTOR_TLS_CERT", None),
    ("STICKYD_INJECTOR_TLS_KEY", None),
    ("STICKYD_INJECTOR_TLS_RELOAD", Some("10s")),
    ("STICKYD_INJECTOR_IMAGE", Some(DEFAULT_IMAGE)),
    ("STICKYD_LOG", Some("info")),
    ("STICKYD_LOG_FORMAT", Some("text")),
];

/// The image of a sidecar when none is given: this build's.
pub const DEFAULT_IMAGE: &str = concat!("stickyd:", env!("CARGO_PKG_VERSION"));

/// Every variable any part of stickyd reads: the sidecar's ([`VARIABLES`])
/// and `stickyd injector`'s ([`INJECTOR_VARIABLES`]).
pub fn known_variables() -> impl Iterator<Item = &'static str> {
    VARIABLES.iter().chain(INJECTOR_VARIABLES).map(|(name, _)| *name)
}

/// The first `STICKYD_*` name among `names` that stickyd does not read, as
/// an error naming the closest variable it does read. The variables that
/// Kubernetes' service links inject for a Service named `stickyd` or
/// `stickyd-…` (`STICKYD_SERVICE_HOST`, `STICKYD_PORT`, …) are not stickyd's,
/// and are left alone when their values have the shape Kubernetes gives them.
pub fn unknown_variable<'a>(vars: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Option<ConfigError> {
    vars.into_iter()
        .filter(|(name, _)| name.starts_with("STICKYD_"))
        .filter(|(name, _)| !known_variables().any(|k| k == *name))
        .find(|(name, value)| !is_service_link(name, *value))
        .map(|(name, _)| ConfigError::Unknown {
            var: name.to_string(),
            closest: closest_variable(name),
        })
}

/// The variable stickyd reads whose name is nearest to `name`, after the
/// common `STICKYD_`: the fewest edits for the length (a swap of two letters
/// counting as one, so `STICKYD_PORT` is nearer `STICKYD_PORT_NAME` than
/// `STICKYD_LOG`); between equals, one the name begins (a name cut short).
pub fn closest_variable(name: &str) -> &'static str {
    let typed = name.strip_prefix("STICKYD_").unwrap_or(name);
    let rank = |k: &'static str| {
        let tail = k.strip_prefix("STICKYD_").unwrap_or(k);
        (
            strsim::normalized_damerau_levenshtein(tail, typed),
            tail.starts_with(typed),
        )
    };
    known_variables()
        .max_by(|a, b| {
            let (ra, rb) = (rank(a), rank(b));
            ra.0.total_cmp(&rb.0).then(ra.1.cmp(&rb.1)).then(Ordering::Greater)
        })
        .expect("stickyd reads variables")
}

/// Refuses an unknown `STICKYD_*` variable in `env`.
pub fn check_names(env: &dyn Env) -> Result<(), ConfigError> {
    let vars: Vec<(Option<String>, String)> = env.names().into_iter().map(|n| (env.get(&n), n)).collect();
    unknown_variable(vars.iter().map(|(v, n)| (n.as_str(), v.as_deref()))).map_or(Ok(()), Err)
}

pub(crate) fn var(env: &dyn Env, name: &'static str) -> Option<String> {
    env.get(name).filter(|v| !v.trim().is_empty())
}

/// The default of a variable, from [`VARIABLES`].
pub(crate) fn default_of(name: &str) -> Option<&'static str> {
    VARIABLES.iter().find(|(n, _)| *n == name).and_then(|(_, d)| *d)
}

/// A variable's value, or its default from [`VARIABLES`].
pub(crate) fn var_or_default(env: &dyn Env, name: &'static str) -> Option<String> {
    var(env, name).or_else(|| default_of(name).map(str::to_string))
}

/// A variable's value, or its default from [`VARIABLES`], for a variable
/// that has one.
pub(crate) fn value(env: &dyn Env, name: &'static str) -> String {
    var_or_default(env, name).unwrap_or_else(|| panic!("{name} has a default in VARIABLES"))
}
