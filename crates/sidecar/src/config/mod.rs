//! Environment → typed configuration, a pure parse.
//!
//! Every setting comes from an environment variable. Parsing goes through the
//! small [`Env`] trait so that tests (and `stickyd lint`, which checks the env
//! of a manifest) can drive it from a plain map, and reads nothing else but
//! the [`Startup`] facts gathered once at startup. Each default is written
//! once, in [`VARIABLES`], which the parser reads. The rooms:
//!
//! - [`env`]: where values come from;
//! - [`registry`]: every variable and its default, and the refusal of a
//!   misspelt name ([`service_links`]: the kubelet's own variables, which
//!   are not misspellings);
//! - [`values`]: the parsers of addresses, durations, counts, names, the
//!   endpoint source, the drain token;
//! - [`cookie`]: the session token's carriers, attributes and keys;
//! - here: the typed [`Config`] and the parse that makes it.

pub mod cookie;
pub mod env;
pub mod registry;
pub mod service_links;
pub mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::{self, Limits};
use crate::startup::Startup;

pub use cookie::{has_prefix, read_secret_file, AffinityMode, CookieConfig, SameSite, SecureMode, REGEX_CHARS};
pub use env::{Env, ProcessEnv};
pub use registry::{
    check_names, closest_variable, known_variables, unknown_variable, DEFAULT_IMAGE, INJECTOR_VARIABLES, VARIABLES,
};
pub use service_links::is_service_link;
pub use values::{
    files_named, parse_duration, parse_peer_list, valid_pod_name, DrainToken, EXAMPLE_DRAIN_TOKEN, MAX_DRAIN_TOKEN_LEN,
    MIN_DRAIN_TOKEN_LEN,
};

use cookie::{parse_affinity, parse_cookie};
use registry::{value, var};
use values::{
    nonzero, parse_addr, parse_drain_token, parse_endpoints, parse_positive, parse_upstream, positive, req_secs,
    valid_dns_label,
};

/// A configuration error. Each one names the variable, the value and what
/// would be valid, so that the startup message alone is enough to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}={value:?} is invalid: {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: String,
    },
    #[error("{var}: {message}")]
    Conflict { var: &'static str, message: String },
    #[error("{var}={path:?} could not be read: {message}")]
    File {
        var: &'static str,
        path: String,
        message: String,
    },
    /// A `STICKYD_*` variable that no part of stickyd reads: most likely a
    /// misspelt one, which would otherwise leave its setting at the default.
    #[error("{var} is not a stickyd variable; did you mean {closest}?")]
    Unknown { var: String, closest: &'static str },
}

impl ConfigError {
    /// The variable this error is about.
    pub fn var(&self) -> &str {
        match self {
            ConfigError::Invalid { var, .. } | ConfigError::Conflict { var, .. } | ConfigError::File { var, .. } => var,
            ConfigError::Unknown { var, .. } => var,
        }
    }

    fn invalid(var: &'static str, value: &str, expected: impl Into<String>) -> Self {
        ConfigError::Invalid {
            var,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// Where the endpoint view comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointsSource {
    /// A static list of `(pod name, sidecar address)`, this pod included.
    Static(Vec<(String, SocketAddr)>),
    /// A file of `NAME=IP:PORT` lines, re-read when it changes.
    File(PathBuf),
    /// EndpointSlices watched through the Kubernetes API.
    Kubernetes,
}

/// What happens when the cookie names a pod that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    /// Serve here and pin the session to this pod.
    Repin,
    /// Answer 503 (Envoy's "strict" mode).
    Reject,
}

/// Where a new session goes (STICKYD_NEW_SESSIONS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewSessions {
    /// On the pod whose sidecar the request reached.
    Local,
    /// On the pod with the fewest active sessions among this pod and two
    /// random ready peers (the power of two choices).
    LeastSessions,
}

impl NewSessions {
    pub fn as_str(self) -> &'static str {
        match self {
            NewSessions::Local => "local",
            NewSessions::LeastSessions => "least-sessions",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The protocol spoken to the app in this pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), for gRPC apps.
    H2c,
}

/// The whole typed configuration of `stickyd run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub upstream_authority: String,
    pub upstream_protocol: UpstreamProtocol,
    pub admin_listen: SocketAddr,
    pub pod_name: String,
    pub endpoints: EndpointsSource,
    pub namespace: Option<String>,
    pub service: Option<String>,
    pub port_name: Option<String>,
    pub sync_timeout: Duration,
    pub cookie: CookieConfig,
    /// Where the session token travels.
    pub affinity: AffinityMode,
    /// The header that carries the token in header modes (lowercase).
    pub affinity_header: http::HeaderName,
    pub on_missing: OnMissing,
    /// Where a new session goes.
    pub new_sessions: NewSessions,
    /// The bearer token a `/drain` caller from outside this pod must send
    /// (the preStop's `Authorization` header). None: only this pod itself
    /// may drain it.
    pub drain_token: Option<DrainToken>,
    /// The longest `idle` and `max` a drain call may ask for.
    pub drain_max: Duration,
    pub drain: Duration,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub header_read_timeout: Duration,
    /// The longest a request or response body may go without a byte
    /// (streams exempt: SSE, gRPC, upgraded connections).
    pub body_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// The connection limit: STICKYD_MAX_CONNECTIONS, or the default the
    /// memory limit allows (the same as `limits.budget.max_connections`).
    pub max_connections: usize,
    pub pool_idle_timeout: Duration,
    /// The most connections the shared pools hold to one upstream (the app,
    /// or one peer), as HAProxy's server `maxconn`: a request that finds
    /// them all busy waits in a queue, first come first served.
    pub upstream_max_connections: usize,
    /// The longest a request waits in that queue; then 503, shed.
    pub queue_timeout: Duration,
    /// A session pinned here counts as active (`stickyd_sessions_active`)
    /// this long after its last request.
    pub session_active_window: Duration,
    pub log: String,
    pub log_format: LogFormat,
    pub worker_threads: usize,
    /// The memory limit (STICKYD_MEMORY_LIMIT or the cgroup's), the budget
    /// derived from it and the buffer budget shared by every connection.
    pub limits: Limits,
}

/// One runtime thread per CPU the cgroup quota allows, at most one per core.
fn default_worker_threads(quota_cpus: Option<usize>, cores: usize) -> usize {
    let cores = cores.max(1);
    quota_cpus.unwrap_or(cores).min(cores).max(1)
}

/// STICKYD_MEMORY_LIMIT: bytes, or a Kubernetes memory quantity.
fn parse_memory_limit(env: &dyn Env) -> Result<Option<u64>, ConfigError> {
    let Some(raw) = var(env, "STICKYD_MEMORY_LIMIT") else {
        return Ok(None);
    };
    let forms = "bytes, or a quantity as Kubernetes writes it: 128Mi, 1Gi, 512Ki (powers of 1024) or 128M, 1G, 500k (powers of 1000)";
    let bytes = limits::parse_bytes(&raw)
        .map_err(|why| ConfigError::invalid("STICKYD_MEMORY_LIMIT", &raw, format!("{forms}; {why}")))?;
    if bytes < limits::BASE_RSS {
        return Err(ConfigError::invalid(
            "STICKYD_MEMORY_LIMIT",
            &raw,
            format!(
                "{forms}; at least {} (stickyd's own memory with no connection); a number without a unit is bytes",
                limits::Bytes(limits::BASE_RSS)
            ),
        ));
    }
    Ok(Some(bytes))
}

impl Config {
    /// Parses the configuration from any [`Env`], e.g. a map in tests, on a
    /// machine nothing is known about ([`Startup::default`]): no hostname,
    /// no cgroup limit, no file.
    pub fn from_env(env: &dyn Env) -> Result<Config, ConfigError> {
        Config::parse(env, &Startup::default())
    }

    /// Parses the configuration from `env` with the facts `startup` has
    /// about the machine (gathered once by [`Startup::gather`]). Reads
    /// nothing else: the same `env` and `startup` give the same result.
    pub fn parse(env: &dyn Env, startup: &Startup) -> Result<Config, ConfigError> {
        check_names(env)?;
        let host = &startup.host;
        let listen = parse_addr(env, "STICKYD_LISTEN")?;
        let admin_listen = parse_addr(env, "STICKYD_ADMIN_LISTEN")?;
        let upstream_raw = value(env, "STICKYD_UPSTREAM");
        let (upstream, upstream_authority) = parse_upstream(&upstream_raw)?;
        let upstream_protocol = match value(env, "STICKYD_UPSTREAM_PROTOCOL").trim() {
            "http1" => UpstreamProtocol::Http1,
            "h2c" | "http2" | "h2" => UpstreamProtocol::H2c,
            other => {
                return Err(ConfigError::invalid(
                    "STICKYD_UPSTREAM_PROTOCOL",
                    other,
                    "http1, or h2c (HTTP/2 with prior knowledge, for gRPC apps)",
                ))
            }
        };
        if listen == admin_listen {
            return Err(ConfigError::Conflict {
                var: "STICKYD_ADMIN_LISTEN",
                message: format!("{admin_listen} is also STICKYD_LISTEN; the admin listener needs its own port"),
            });
        }
        if upstream == listen {
            return Err(ConfigError::Conflict {
                var: "STICKYD_UPSTREAM",
                message: format!("{upstream} is stickyd's own STICKYD_LISTEN; it must name the app's port"),
            });
        }

        let pod_name = match var(env, "STICKYD_POD_NAME").or_else(|| startup.hostname.clone()) {
            Some(n) => n.trim().to_string(),
            None => {
                return Err(ConfigError::invalid(
                    "STICKYD_POD_NAME",
                    "",
                    "this pod's name; set it from the downward API (fieldRef: metadata.name)",
                ))
            }
        };
        if !valid_pod_name(&pod_name) {
            return Err(ConfigError::invalid(
                "STICKYD_POD_NAME",
                &pod_name,
                "a Kubernetes pod name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
            ));
        }

        let endpoints = parse_endpoints(&value(env, "STICKYD_ENDPOINTS"), startup)?;
        let namespace = var(env, "STICKYD_NAMESPACE").map(|s| s.trim().to_string());
        let service = var(env, "STICKYD_SERVICE").map(|s| s.trim().to_string());
        let port_name = var(env, "STICKYD_PORT_NAME").map(|s| s.trim().to_string());
        if let Some(ns) = &namespace {
            if !valid_dns_label(ns) {
                return Err(ConfigError::invalid(
                    "STICKYD_NAMESPACE",
                    ns,
                    "a Kubernetes namespace name (RFC 1123 label)",
                ));
            }
        }
        if let Some(svc) = &service {
            if !valid_dns_label(svc) {
                return Err(ConfigError::invalid(
                    "STICKYD_SERVICE",
                    svc,
                    "the name of the Service in this namespace (an RFC 1123 label, no dots: stickyd only watches its own namespace)",
                ));
            }
        }
        if endpoints == EndpointsSource::Kubernetes && service.is_none() {
            return Err(ConfigError::invalid(
                "STICKYD_SERVICE",
                "",
                "the name of the Service whose EndpointSlices list the peers (required with STICKYD_ENDPOINTS=kubernetes)",
            ));
        }
        let sync_timeout = req_secs(env, "STICKYD_SYNC_TIMEOUT")?;

        let (affinity, affinity_header) = parse_affinity(env)?;
        let cookie = parse_cookie(env, affinity, startup)?;

        let on_missing =
            match value(env, "STICKYD_ON_MISSING").trim() {
                "repin" => OnMissing::Repin,
                "reject" => OnMissing::Reject,
                other => return Err(ConfigError::invalid(
                    "STICKYD_ON_MISSING",
                    other,
                    "repin (serve here and pin the session to this pod) or reject (503 while the pinned pod is gone)",
                )),
            };

        let new_sessions = match value(env, "STICKYD_NEW_SESSIONS").trim() {
            "local" => NewSessions::Local,
            "least-sessions" => NewSessions::LeastSessions,
            other => {
                return Err(ConfigError::invalid(
                    "STICKYD_NEW_SESSIONS",
                    other,
                    "local (a new session stays on the pod its first request reached) or least-sessions (on the pod with the fewest active sessions of this pod and two random ready peers)",
                ))
            }
        };

        if new_sessions == NewSessions::LeastSessions && cookie.keys.is_empty() {
            // Without keys no hop marker verifies, so no count would travel
            // back on the responses to forwarded requests; with the admin
            // port's once-a-second counts alone, every new session of a
            // second goes to the one peer last seen lowest.
            return Err(ConfigError::Conflict {
                var: "STICKYD_NEW_SESSIONS",
                message: "least-sessions needs a session key (STICKYD_COOKIE_SECRET or STICKYD_COOKIE_SECRET_FILE): \
                          the peers' session counts travel back only in answer to a signed hop marker"
                    .into(),
            });
        }

        let log = value(env, "STICKYD_LOG");
        // tracing-subscriber's filter parser can panic on control characters.
        let printable = log.bytes().all(|b| (0x20..0x7f).contains(&b));
        if !printable || tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(ConfigError::invalid(
                "STICKYD_LOG",
                &log,
                "a tracing filter such as info, debug, or stickyd=debug,hyper=info",
            ));
        }
        let log_format = match value(env, "STICKYD_LOG_FORMAT").trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(ConfigError::invalid("STICKYD_LOG_FORMAT", other, "text or json")),
        };
        // Unset: from the CPU quota and the cores.
        let worker_threads = parse_positive(env, "STICKYD_WORKER_THREADS", 1024)?
            .unwrap_or_else(|| default_worker_threads(host.cpus, startup.cores));
        let memory_limit = parse_memory_limit(env)?;
        // Unset: derived from the memory limit.
        let max_connections = parse_positive(env, "STICKYD_MAX_CONNECTIONS", limits::MAX_CONNECTIONS_CAP)?;
        let limits = Limits::resolve(memory_limit, max_connections, host.memory.as_ref());
        let max_header_bytes = positive(env, "STICKYD_MAX_HEADER_BYTES", 1 << 24)?;
        if max_header_bytes < 8192 {
            return Err(ConfigError::invalid(
                "STICKYD_MAX_HEADER_BYTES",
                &max_header_bytes.to_string(),
                "at least 8192 bytes",
            ));
        }

        Ok(Config {
            listen,
            upstream,
            upstream_authority,
            upstream_protocol,
            admin_listen,
            pod_name,
            endpoints,
            namespace,
            service,
            port_name,
            sync_timeout,
            cookie,
            affinity,
            affinity_header,
            on_missing,
            new_sessions,
            drain_token: parse_drain_token(env)?,
            drain_max: nonzero(env, "STICKYD_DRAIN_MAX")?,
            drain: req_secs(env, "STICKYD_DRAIN_SECONDS")?,
            drain_timeout: req_secs(env, "STICKYD_DRAIN_TIMEOUT")?,
            connect_timeout: nonzero(env, "STICKYD_CONNECT_TIMEOUT")?,
            response_timeout: nonzero(env, "STICKYD_RESPONSE_TIMEOUT")?,
            header_read_timeout: nonzero(env, "STICKYD_HEADER_READ_TIMEOUT")?,
            body_read_timeout: nonzero(env, "STICKYD_BODY_READ_TIMEOUT")?,
            max_header_bytes,
            max_headers: positive(env, "STICKYD_MAX_HEADERS", 10_000)?,
            max_connections: limits.budget.max_connections,
            pool_idle_timeout: nonzero(env, "STICKYD_POOL_IDLE_TIMEOUT")?,
            upstream_max_connections: positive(env, "STICKYD_UPSTREAM_MAX_CONNECTIONS", 100_000)?,
            queue_timeout: nonzero(env, "STICKYD_QUEUE_TIMEOUT")?,
            session_active_window: nonzero(env, "STICKYD_SESSION_ACTIVE_WINDOW")?,
            log,
            log_format,
            worker_threads,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::registry::default_of;
    use super::*;
    use std::collections::BTreeMap;

    fn base() -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("STICKYD_POD_NAME".into(), "web-0".into());
        m.insert("STICKYD_SERVICE".into(), "web".into());
        m
    }

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut m = base();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.to_string());
        }
        Config::from_env(&m)
    }

    fn err_var(pairs: &[(&str, &str)]) -> String {
        with(pairs).expect_err("must be refused").var().to_string()
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.upstream, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(c.admin_listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(c.endpoints, EndpointsSource::Kubernetes);
        assert_eq!(c.cookie.name, "stickyd");
        assert_eq!(c.cookie.path, "/");
        assert_eq!(c.cookie.secure, SecureMode::Auto);
        assert!(c.cookie.http_only);
        assert_eq!(c.cookie.same_site, SameSite::Lax);
        assert!(c.cookie.keys.is_empty());
        assert_eq!(c.on_missing, OnMissing::Repin);
        assert_eq!(c.new_sessions, NewSessions::Local);
        assert_eq!(c.drain, Duration::from_secs(5));
        assert!(c.worker_threads >= 1);
    }

    #[test]
    fn the_drain_token_and_bound() {
        let c = with(&[]).unwrap();
        assert!(c.drain_token.is_none());
        assert_eq!(c.drain_max, Duration::from_secs(300));
        assert_eq!(c.body_read_timeout, Duration::from_secs(60));
        let token = "0123456789abcdef";
        let c = with(&[
            ("STICKYD_DRAIN_TOKEN", &format!(" {token} ")),
            ("STICKYD_DRAIN_MAX", "2m"),
        ])
        .unwrap();
        let t = c.drain_token.unwrap();
        assert_eq!(c.drain_max, Duration::from_secs(120));
        assert_eq!(format!("{t:?}"), "DrainToken(redacted)");
        assert_eq!(t.header_value(), format!("Bearer {token}"));
        for ok in [
            format!("Bearer {token}"),
            format!("bearer {token}"),
            format!("BEARER  {token} "),
        ] {
            assert!(t.authorizes(ok.as_bytes()), "{ok}");
        }
        for bad in [
            token.to_string(),
            format!("Basic {token}"),
            format!("Bearer {}", &token[..15]),
            format!("Bearer {token}0"),
            format!("Bearer 1{}", &token[1..]),
            format!("Bearer{token}"),
            "Bearer ".to_string(),
            String::new(),
        ] {
            assert!(!t.authorizes(bad.as_bytes()), "{bad}");
        }
        // 16 to 512 visible characters; the placeholder of the examples is refused.
        assert!(with(&[("STICKYD_DRAIN_TOKEN", &"x".repeat(512))]).is_ok());
        for bad in [
            "x".repeat(15),
            "x".repeat(513),
            "0123456789 abcdef".to_string(),
            "0123456789abcdé0".to_string(),
            EXAMPLE_DRAIN_TOKEN.to_string(),
        ] {
            let e = with(&[("STICKYD_DRAIN_TOKEN", &bad)]).unwrap_err();
            assert_eq!(e.var(), "STICKYD_DRAIN_TOKEN", "{bad}");
            assert!(
                bad == EXAMPLE_DRAIN_TOKEN || !e.to_string().contains(&bad),
                "the error shows no token: {e}"
            );
        }
        for bad in ["0", "soon", "-1"] {
            assert_eq!(err_var(&[("STICKYD_DRAIN_MAX", bad)]), "STICKYD_DRAIN_MAX", "{bad}");
            assert_eq!(
                err_var(&[("STICKYD_BODY_READ_TIMEOUT", bad)]),
                "STICKYD_BODY_READ_TIMEOUT",
                "{bad}"
            );
        }
    }

    #[test]
    fn static_endpoints() {
        let c = with(&[("STICKYD_ENDPOINTS", "static:a=127.0.0.1:1,b-1=[::1]:2")]).unwrap();
        assert_eq!(
            c.endpoints,
            EndpointsSource::Static(vec![
                ("a".into(), "127.0.0.1:1".parse().unwrap()),
                ("b-1".into(), "[::1]:2".parse().unwrap())
            ])
        );
        for bad in [
            "static:",
            "static:a",
            "static:a=x",
            "static:A=127.0.0.1:1",
            "static:a=127.0.0.1:1,a=127.0.0.1:2",
            "dns",
        ] {
            assert_eq!(err_var(&[("STICKYD_ENDPOINTS", bad)]), "STICKYD_ENDPOINTS", "{bad}");
        }
    }

    #[test]
    fn regex_cookie_path_is_refused_with_the_story() {
        let e = with(&[("STICKYD_COOKIE_PATH", "/mysite(/|$)(.*)")]).unwrap_err();
        assert_eq!(e.var(), "STICKYD_COOKIE_PATH");
        let msg = e.to_string();
        assert!(msg.contains("/mysite(/|$)(.*)"), "{msg}");
        assert!(msg.contains("regex"), "{msg}");
        assert!(msg.contains("never send the cookie back"), "{msg}");
        for bad in ["/a|b", "/a$", "/a*", "/a?", "/[a]", "/a\\b", "mysite"] {
            assert_eq!(err_var(&[("STICKYD_COOKIE_PATH", bad)]), "STICKYD_COOKIE_PATH", "{bad}");
        }
        assert_eq!(
            with(&[("STICKYD_COOKIE_PATH", "/mysite")]).unwrap().cookie.path,
            "/mysite"
        );
    }

    #[test]
    fn every_invalid_value_names_its_variable() {
        let cases: &[(&str, &str)] = &[
            ("STICKYD_LISTEN", "8080"),
            ("STICKYD_LISTEN", "localhost:80"),
            ("STICKYD_UPSTREAM", "https://127.0.0.1:8081"),
            ("STICKYD_UPSTREAM", "http://127.0.0.1:8081/app"),
            ("STICKYD_UPSTREAM", "http://app:80"),
            ("STICKYD_ADMIN_LISTEN", "nope"),
            ("STICKYD_POD_NAME", "Web_0"),
            ("STICKYD_COOKIE_NAME", "a b"),
            ("STICKYD_COOKIE_NAME", "a;b"),
            ("STICKYD_COOKIE_DOMAIN", "exa mple.com"),
            ("STICKYD_COOKIE_MAX_AGE", "-1"),
            ("STICKYD_COOKIE_MAX_AGE", "soon"),
            ("STICKYD_COOKIE_MAX_AGE", "0"),
            ("STICKYD_COOKIE_SECURE", "maybe"),
            ("STICKYD_COOKIE_HTTPONLY", "2"),
            ("STICKYD_COOKIE_SAMESITE", "lenient"),
            ("STICKYD_COOKIE_SECRET", "short"),
            ("STICKYD_ON_MISSING", "retry"),
            ("STICKYD_NEW_SESSIONS", "least"),
            ("STICKYD_NEW_SESSIONS", "random"),
            ("STICKYD_DRAIN_SECONDS", "x"),
            ("STICKYD_LOG_FORMAT", "xml"),
            ("STICKYD_LOG", "[[["),
            ("STICKYD_WORKER_THREADS", "0"),
            ("STICKYD_WORKER_THREADS", "many"),
            ("STICKYD_CONNECT_TIMEOUT", "0"),
            ("STICKYD_MAX_HEADER_BYTES", "100"),
            ("STICKYD_NAMESPACE", "a.b"),
            ("STICKYD_SERVICE", "mysvc.otherns.svc.cluster.local"),
            ("STICKYD_UPSTREAM_PROTOCOL", "spdy"),
            ("STICKYD_AFFINITY", "url"),
            ("STICKYD_AFFINITY", "cookie,app-cookie"),
            ("STICKYD_APP_COOKIE", "a b"),
            ("STICKYD_MAX_CONNECTIONS", "0"),
            ("STICKYD_MAX_CONNECTIONS", "10000001"),
            ("STICKYD_MEMORY_LIMIT", "lots"),
            ("STICKYD_MEMORY_LIMIT", "128m"),
            ("STICKYD_MEMORY_LIMIT", "128MB"),
            ("STICKYD_MEMORY_LIMIT", "128"),
            ("STICKYD_MEMORY_LIMIT", "-1"),
            ("STICKYD_MEMORY_LIMIT", "99999999999999999999"),
        ];
        for (k, v) in cases {
            let e = with(&[(k, v)]).expect_err(&format!("{k}={v} must be refused"));
            assert_eq!(e.var(), *k, "{k}={v}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(k), "message names the variable: {msg}");
        }
    }

    #[test]
    fn secret_never_appears_in_errors() {
        let e = with(&[("STICKYD_COOKIE_SECRET", "tooshort")]).unwrap_err();
        assert!(!e.to_string().contains("tooshort"), "{e}");
    }

    #[test]
    fn conflicts() {
        assert_eq!(
            err_var(&[("STICKYD_ADMIN_LISTEN", "0.0.0.0:8080")]),
            "STICKYD_ADMIN_LISTEN"
        );
        assert_eq!(
            err_var(&[
                ("STICKYD_UPSTREAM", "127.0.0.1:8080"),
                ("STICKYD_LISTEN", "127.0.0.1:8080")
            ]),
            "STICKYD_UPSTREAM"
        );
        assert_eq!(
            err_var(&[("STICKYD_COOKIE_SAMESITE", "None"), ("STICKYD_COOKIE_SECURE", "false")]),
            "STICKYD_COOKIE_SECURE"
        );
        assert_eq!(
            err_var(&[("STICKYD_COOKIE_NAME", "__Host-s"), ("STICKYD_COOKIE_PATH", "/a")]),
            "STICKYD_COOKIE_PATH"
        );
        assert_eq!(
            err_var(&[
                ("STICKYD_COOKIE_NAME", "__Host-s"),
                ("STICKYD_COOKIE_DOMAIN", "example.com")
            ]),
            "STICKYD_COOKIE_DOMAIN"
        );
        assert_eq!(
            err_var(&[("STICKYD_COOKIE_NAME", "__Host-s"), ("STICKYD_COOKIE_SECURE", "false")]),
            "STICKYD_COOKIE_SECURE"
        );
        assert_eq!(
            err_var(&[("STICKYD_SESSION_IDLE_TIMEOUT", "60")]),
            "STICKYD_SESSION_IDLE_TIMEOUT"
        );
        assert_eq!(
            err_var(&[
                ("STICKYD_COOKIE_SECRET", "0123456789abcdef0123456789abcdef"),
                ("STICKYD_COOKIE_SECRET_FILE", "/x")
            ]),
            "STICKYD_COOKIE_SECRET_FILE"
        );
        // Prefixes are case-insensitive, as browsers match them.
        assert_eq!(
            err_var(&[("STICKYD_COOKIE_NAME", "__HOST-s"), ("STICKYD_COOKIE_PATH", "/a")]),
            "STICKYD_COOKIE_PATH"
        );
        assert_eq!(
            err_var(&[
                ("STICKYD_COOKIE_PARTITIONED", "true"),
                ("STICKYD_COOKIE_SECURE", "false")
            ]),
            "STICKYD_COOKIE_PARTITIONED"
        );
        // Control characters in the log filter are refused, not a panic.
        assert_eq!(
            err_var(&[("STICKYD_LOG", "\u{b}ti\u{fffd}S\u{fffd}=T9EI")]),
            "STICKYD_LOG"
        );
        let mut m = base();
        m.remove("STICKYD_SERVICE");
        assert_eq!(Config::from_env(&m).unwrap_err().var(), "STICKYD_SERVICE");
        m.insert("STICKYD_ENDPOINTS".into(), "static:web-0=127.0.0.1:8080".into());
        assert!(Config::from_env(&m).is_ok());
    }

    #[test]
    fn affinity_modes() {
        let c = with(&[]).unwrap();
        assert_eq!(c.affinity, AffinityMode::Cookie);
        assert_eq!(c.affinity_header, "x-stickyd-affinity");
        assert!(c.affinity.cookie() && !c.affinity.header());
        for (raw, mode, cookie, header) in [
            ("cookie", AffinityMode::Cookie, true, false),
            ("header", AffinityMode::Header, false, true),
            ("cookie,header", AffinityMode::CookieAndHeader, true, true),
            (" Header , Cookie ", AffinityMode::CookieAndHeader, true, true),
        ] {
            let c = with(&[("STICKYD_AFFINITY", raw)]).unwrap();
            assert_eq!(c.affinity, mode, "{raw}");
            assert_eq!((c.affinity.cookie(), c.affinity.header()), (cookie, header), "{raw}");
            assert_eq!(c.cookie.name, "stickyd");
        }
        let c = with(&[
            ("STICKYD_AFFINITY", "header"),
            ("STICKYD_AFFINITY_HEADER", "X-Session-Pin"),
        ])
        .unwrap();
        assert_eq!(c.affinity_header, "x-session-pin");
        for bad in [
            "x stickyd",
            "cookie",
            "x-stickyd-hop",
            "grpc-timeout",
            "x-token-bin",
            "Connection",
            "",
        ] {
            let pairs = [("STICKYD_AFFINITY", "header"), ("STICKYD_AFFINITY_HEADER", bad)];
            if bad.is_empty() {
                // Empty is unset: the default.
                assert_eq!(with(&pairs).unwrap().affinity_header, "x-stickyd-affinity");
                continue;
            }
            assert_eq!(err_var(&pairs), "STICKYD_AFFINITY_HEADER", "{bad}");
        }
        // A header set while the mode carries none is a mistake, named.
        assert_eq!(
            err_var(&[("STICKYD_AFFINITY_HEADER", "x-pin")]),
            "STICKYD_AFFINITY_HEADER"
        );
        // The app's cookie carries the token; its name is checked as a cookie name.
        let c = with(&[("STICKYD_AFFINITY", "app-cookie"), ("STICKYD_APP_COOKIE", "JSESSIONID")]).unwrap();
        assert_eq!(c.affinity, AffinityMode::AppCookie);
        assert!(!c.affinity.cookie() && !c.affinity.header());
        assert_eq!(c.cookie.name, "JSESSIONID");
        assert_eq!(AffinityMode::AppCookie.as_str(), "app-cookie");
        let e = with(&[("STICKYD_AFFINITY", "app-cookie")]).unwrap_err();
        assert_eq!(e.var(), "STICKYD_APP_COOKIE");
        assert!(
            e.to_string().contains("required with STICKYD_AFFINITY=app-cookie"),
            "{e}"
        );
        assert_eq!(err_var(&[("STICKYD_APP_COOKIE", "sid")]), "STICKYD_APP_COOKIE");
        assert_eq!(
            err_var(&[("STICKYD_AFFINITY", "header"), ("STICKYD_APP_COOKIE", "sid")]),
            "STICKYD_APP_COOKIE"
        );
        assert_eq!(
            err_var(&[
                ("STICKYD_AFFINITY", "app-cookie"),
                ("STICKYD_APP_COOKIE", "sid"),
                ("STICKYD_COOKIE_NAME", "other")
            ]),
            "STICKYD_COOKIE_NAME"
        );
        // The __Host- rules bind the app cookie's re-issue too.
        assert_eq!(
            err_var(&[
                ("STICKYD_AFFINITY", "app-cookie"),
                ("STICKYD_APP_COOKIE", "__Host-sid"),
                ("STICKYD_COOKIE_PATH", "/a")
            ]),
            "STICKYD_COOKIE_PATH"
        );
    }

    #[test]
    fn app_header_names_the_apps_session_header() {
        let c = with(&[
            ("STICKYD_AFFINITY", "app-header"),
            ("STICKYD_APP_HEADER", " Mcp-Session-Id "),
        ])
        .unwrap();
        assert_eq!(c.affinity, AffinityMode::AppHeader);
        assert_eq!(c.affinity_header, "mcp-session-id");
        assert!(!c.affinity.cookie() && !c.affinity.header() && c.affinity.app_carried());
        assert!(AffinityMode::AppCookie.app_carried() && !AffinityMode::CookieAndHeader.app_carried());
        assert_eq!(AffinityMode::AppHeader.as_str(), "app-header");
        let e = with(&[("STICKYD_AFFINITY", "app-header")]).unwrap_err();
        assert_eq!(e.var(), "STICKYD_APP_HEADER");
        assert!(
            e.to_string().contains("required with STICKYD_AFFINITY=app-header"),
            "{e}"
        );
        // Read with app-header only.
        for mode in ["cookie", "header", "app-cookie"] {
            let mut pairs = vec![("STICKYD_AFFINITY", mode), ("STICKYD_APP_HEADER", "x-session-token")];
            if mode == "app-cookie" {
                pairs.push(("STICKYD_APP_COOKIE", "sid"));
            }
            assert_eq!(err_var(&pairs), "STICKYD_APP_HEADER", "{mode}");
        }
        // stickyd adds no header of its own beside it.
        assert_eq!(
            err_var(&[
                ("STICKYD_AFFINITY", "app-header"),
                ("STICKYD_APP_HEADER", "x-session-token"),
                ("STICKYD_AFFINITY_HEADER", "x-pin")
            ]),
            "STICKYD_AFFINITY_HEADER"
        );
        // Checked as the affinity header is: a name, not HTTP's own or stickyd's.
        for bad in [
            "cookie",
            "x-stickyd-hop",
            "a b",
            "grpc-status",
            "x-bin",
            "content-length",
        ] {
            let e = with(&[("STICKYD_AFFINITY", "app-header"), ("STICKYD_APP_HEADER", bad)]).unwrap_err();
            assert_eq!(e.var(), "STICKYD_APP_HEADER", "{bad}");
        }
        assert_eq!(default_of("STICKYD_APP_HEADER"), None);
    }

    #[test]
    fn the_defaults_table_is_what_parsing_uses() {
        let mut m = base();
        // STICKYD_AFFINITY_HEADER, set at all, asks for a mode that carries a header.
        m.insert("STICKYD_AFFINITY".into(), "header".into());
        for (k, d) in VARIABLES {
            if let Some(d) = d.filter(|_| *k != "STICKYD_AFFINITY") {
                m.insert(k.to_string(), d.to_string());
            }
        }
        let table = Config::from_env(&m).unwrap();
        let unset = with(&[("STICKYD_AFFINITY", "header")]).unwrap();
        assert_eq!(format!("{table:?}"), format!("{unset:?}"));
        assert_eq!(default_of("STICKYD_AFFINITY"), Some("cookie"));
        assert_eq!(
            with(&[("STICKYD_AFFINITY", "cookie")]).unwrap().affinity,
            AffinityMode::Cookie
        );
        assert_eq!(default_of("STICKYD_APP_COOKIE"), None);
        assert_eq!(default_of("STICKYD_NOPE"), None);
    }

    #[test]
    fn new_sessions_placement() {
        let key = ("STICKYD_COOKIE_SECRET", "0123456789abcdef0123");
        for (raw, want) in [
            ("local", NewSessions::Local),
            ("least-sessions", NewSessions::LeastSessions),
            (" least-sessions ", NewSessions::LeastSessions),
            ("", NewSessions::Local),
        ] {
            let c = with(&[("STICKYD_NEW_SESSIONS", raw), key]).unwrap();
            assert_eq!(c.new_sessions, want, "{raw:?}");
            assert_eq!(c.new_sessions.as_str(), want.as_str());
        }
        assert_eq!(default_of("STICKYD_NEW_SESSIONS"), Some(NewSessions::Local.as_str()));
        let e = with(&[("STICKYD_NEW_SESSIONS", "Least-Sessions")]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("STICKYD_NEW_SESSIONS") && msg.contains("least-sessions"),
            "{msg}"
        );
        // Least-sessions needs a key; local does not.
        let e = with(&[("STICKYD_NEW_SESSIONS", "least-sessions")]).unwrap_err();
        assert_eq!(e.var(), "STICKYD_NEW_SESSIONS");
        assert!(e.to_string().contains("STICKYD_COOKIE_SECRET"), "{e}");
        assert!(with(&[("STICKYD_NEW_SESSIONS", "local")]).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("NaN"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn memory_limit_sets_the_default_connection_limit() {
        use crate::limits::{Budget, CgroupLimit, CgroupVersion, Host, LimitSource};

        // No limit known: the fixed default, an unbounded buffer budget.
        let c = with(&[]).unwrap();
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.limits.source, LimitSource::None);
        assert!(c.limits.buffers.is_unbounded());

        let c = with(&[("STICKYD_MEMORY_LIMIT", "128Mi")]).unwrap();
        let budget = Budget::for_limit(Some(128 << 20), None);
        assert_eq!(c.limits.source, LimitSource::Env);
        assert_eq!(c.limits.memory_limit(), Some(128 << 20));
        assert_eq!(c.max_connections, budget.max_connections);
        assert_eq!(c.limits.budget, budget);
        assert_eq!(Some(c.limits.buffers.capacity() as u64), budget.buffer_bytes);
        assert!(c.limits.warnings().is_empty());
        for (raw, bytes) in [("1Gi", 1u64 << 30), ("1G", 1_000_000_000), ("134217728", 128 << 20)] {
            let c = with(&[("STICKYD_MEMORY_LIMIT", raw)]).unwrap();
            assert_eq!(c.limits.memory_limit(), Some(bytes), "{raw}");
        }

        // STICKYD_MAX_CONNECTIONS wins, with a warning when it does not fit.
        let c = with(&[("STICKYD_MEMORY_LIMIT", "128Mi"), ("STICKYD_MAX_CONNECTIONS", "100")]).unwrap();
        assert_eq!(c.max_connections, 100);
        assert!(c.limits.warnings().is_empty());
        let c = with(&[("STICKYD_MEMORY_LIMIT", "128Mi"), ("STICKYD_MAX_CONNECTIONS", "100000")]).unwrap();
        assert_eq!(c.max_connections, 100_000);
        assert_eq!(c.limits.budget.max_connections, 100_000);
        assert_eq!(c.limits.warnings().len(), 1);
        assert!(c.limits.warnings()[0].contains("STICKYD_MAX_CONNECTIONS=100000"));
        assert_eq!(with(&[("STICKYD_MAX_CONNECTIONS", "7")]).unwrap().max_connections, 7);

        // The cgroup's limit, unless STICKYD_MEMORY_LIMIT overrides it.
        let host = Host {
            memory: Some(CgroupLimit {
                bytes: 256 << 20,
                version: CgroupVersion::V2,
                file: "/sys/fs/cgroup/memory.max".into(),
            }),
            cpus: Some(1),
            problems: Vec::new(),
        };
        let on = |host: &Host| Startup {
            host: host.clone(),
            cores: 8,
            ..Startup::default()
        };
        let c = Config::parse(&base(), &on(&host)).unwrap();
        assert_eq!(c.limits.source, LimitSource::CgroupV2);
        assert_eq!(
            c.max_connections,
            Budget::for_limit(Some(256 << 20), None).max_connections
        );
        assert_eq!(c.worker_threads, 1, "the CPU quota sets the worker threads");
        let mut env = base();
        env.insert("STICKYD_MEMORY_LIMIT".into(), "64Mi".into());
        let c = Config::parse(&env, &on(&host)).unwrap();
        assert_eq!(
            (c.limits.source, c.limits.memory_limit()),
            (LimitSource::Env, Some(64 << 20))
        );
        assert_eq!(c.limits.cgroup.as_ref().map(|l| l.bytes), Some(256 << 20));
        // Config::from_env ignores the host's cgroups.
        assert_eq!(Config::from_env(&base()).unwrap().limits.source, LimitSource::None);
    }

    #[test]
    fn memory_limit_errors_say_what_is_valid() {
        let msg = with(&[("STICKYD_MEMORY_LIMIT", "128m")]).unwrap_err().to_string();
        assert!(msg.contains("STICKYD_MEMORY_LIMIT=\"128m\""), "{msg}");
        assert!(msg.contains("128Mi"), "{msg}");
        let msg = with(&[("STICKYD_MEMORY_LIMIT", "128")]).unwrap_err().to_string();
        let least = format!("at least {}", crate::limits::Bytes(crate::limits::BASE_RSS));
        assert!(msg.contains(&least), "{msg}");
        assert!(msg.contains("without a unit is bytes"), "{msg}");
    }

    #[test]
    fn every_variable_is_listed() {
        let names: Vec<&str> = VARIABLES.iter().map(|(k, _)| *k).collect();
        for v in ["STICKYD_MEMORY_LIMIT", "STICKYD_MAX_CONNECTIONS"] {
            assert!(names.contains(&v), "{v}");
        }
        // Its default depends on the memory limit.
        assert!(VARIABLES.contains(&("STICKYD_MAX_CONNECTIONS", None)));
    }

    #[test]
    fn a_misspelt_variable_names_the_closest_one() {
        let e = with(&[("STICKYD_COOKIE_SECERT", "0123456789abcdef0123456789abcdef")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "STICKYD_COOKIE_SECERT is not a stickyd variable; did you mean STICKYD_COOKIE_SECRET?"
        );
        assert_eq!(e.var(), "STICKYD_COOKIE_SECERT");
        for (typo, closest) in [
            ("STICKYD_PORT_NAM", "STICKYD_PORT_NAME"),
            ("STICKYD_SERVCE", "STICKYD_SERVICE"),
            ("STICKYD_LISTENN", "STICKYD_LISTEN"),
            ("STICKYD_DRAIN_SECOND", "STICKYD_DRAIN_SECONDS"),
            ("STICKYD_INJECTOR_IMAGES", "STICKYD_INJECTOR_IMAGE"),
            // Shaped like a service link, but not with a link's value.
            ("STICKYD_PORT", "STICKYD_PORT_NAME"),
            ("STICKYD_SERVICE_HOST", "STICKYD_SERVICE"),
        ] {
            let value = if typo.ends_with("HOST") { "web" } else { "http" };
            match with(&[(typo, value)]).unwrap_err() {
                ConfigError::Unknown { var, closest: c } => assert_eq!((var.as_str(), c), (typo, closest)),
                other => panic!("{typo}: {other}"),
            }
        }
        // Every variable, with its last letter dropped or two letters of it
        // swapped, is found again.
        for k in known_variables() {
            let dropped = &k[..k.len() - 1];
            let mut swapped: Vec<char> = k.chars().collect();
            let mid = swapped.len() / 2 + 4;
            swapped.swap(mid - 1, mid);
            let swapped: String = swapped.into_iter().collect();
            for typo in [dropped, swapped.as_str()] {
                if typo != k {
                    assert_eq!(closest_variable(typo), k, "{typo}");
                }
            }
        }
        // Other names are not stickyd's to judge; the injector's are known.
        assert!(with(&[
            ("STICKYDX", "1"),
            ("HOSTNAME", "x"),
            ("KUBERNETES_PORT", "tcp://10.0.0.1:443")
        ])
        .is_ok());
        assert!(with(&[("STICKYD_INJECTOR_IMAGE", "stickyd:2")]).is_ok());
    }

    #[test]
    fn service_link_variables_are_ignored_and_real_ones_still_parsed() {
        // What the kubelet sets for `Service stickyd` with ports http 80/TCP
        // and metrics 9090/UDP, and for `Service stickyd-injector` (443/TCP).
        let links = [
            ("STICKYD_SERVICE_HOST", "10.96.0.12"),
            ("STICKYD_SERVICE_PORT", "80"),
            ("STICKYD_SERVICE_PORT_HTTP", "80"),
            ("STICKYD_SERVICE_PORT_METRICS", "9090"),
            ("STICKYD_PORT", "tcp://10.96.0.12:80"),
            ("STICKYD_PORT_80_TCP", "tcp://10.96.0.12:80"),
            ("STICKYD_PORT_80_TCP_PROTO", "tcp"),
            ("STICKYD_PORT_80_TCP_PORT", "80"),
            ("STICKYD_PORT_80_TCP_ADDR", "10.96.0.12"),
            ("STICKYD_PORT_9090_UDP", "udp://10.96.0.12:9090"),
            ("STICKYD_PORT_9090_UDP_PROTO", "udp"),
            ("STICKYD_PORT_9090_UDP_PORT", "9090"),
            ("STICKYD_PORT_9090_UDP_ADDR", "10.96.0.12"),
            ("STICKYD_PORT_7_SCTP", "sctp://[fd00::c]:7"),
            ("STICKYD_INJECTOR_SERVICE_HOST", "fd00::c"),
            ("STICKYD_INJECTOR_SERVICE_PORT", "443"),
            ("STICKYD_INJECTOR_PORT", "tcp://[fd00::c]:443"),
            ("STICKYD_INJECTOR_PORT_443_TCP_ADDR", "fd00::c"),
        ];
        for (k, v) in links {
            assert!(is_service_link(k, Some(v)), "{k}={v}");
        }
        let mut pairs = links.to_vec();
        pairs.extend([("STICKYD_SERVICE", "shop"), ("STICKYD_PORT_NAME", "web")]);
        let c = with(&pairs).unwrap();
        assert_eq!(c.service.as_deref(), Some("shop"));
        assert_eq!(c.port_name.as_deref(), Some("web"));
        assert_eq!(format!("{c:?}"), format!("{:?}", with(&pairs[links.len()..]).unwrap()));

        // Near the shapes, but not them: refused, with the closest name.
        for (k, v) in [
            ("STICKYD_PORT_NAM", "web"),
            ("STICKYD_PORT_X_TCP", "tcp://10.96.0.12:80"),
            ("STICKYD_PORT_80", "tcp://10.96.0.12:80"),
            ("STICKYD_PORT_80_HTTP", "tcp://10.96.0.12:80"),
            ("STICKYD_PORT_80_TCP_HOST", "10.96.0.12"),
            ("STICKYD_PORT_80_TCP_PORT", "81"),
            ("STICKYD_PORT_80_TCP_PROTO", "udp"),
            ("STICKYD_PORT_80_TCP", "http://10.96.0.12:80"),
            ("STICKYD_PORT_80_TCP", "tcp://10.96.0.12:81"),
            ("STICKYD_PORT_80_TCP", "udp://10.96.0.12:80"),
            ("STICKYD_PORT_080_TCP_PORT", "80"),
            ("STICKYD_PORT", "8080"),
            ("STICKYD_SERVICE_HOST", "shop"),
            ("STICKYD_SERVICE_PORT", "http"),
            ("STICKYD_SERVICE_PORT_", "80"),
            ("STICKYD_SERVICE_PORT_http", "80"),
            ("STICKYD__PORT", "tcp://10.96.0.12:80"),
            ("STICKYD_SERVICE_NAME", "shop"),
        ] {
            assert!(!is_service_link(k, Some(v)), "{k}={v}");
            let e = with(&[(k, v)]).expect_err(k);
            assert!(matches!(e, ConfigError::Unknown { .. }), "{k}={v}: {e}");
        }
        assert_eq!(closest_variable("STICKYD_PORT_NAM"), "STICKYD_PORT_NAME");
        // A name alone (lint with a value from a ConfigMap) is judged by its shape.
        assert!(is_service_link("STICKYD_PORT_80_TCP", None));
        assert!(!is_service_link("STICKYD_PORT_NAM", None));
    }

    #[test]
    fn parsing_reads_only_the_variables_and_the_startup_facts() {
        let mut env = base();
        env.remove("STICKYD_POD_NAME");
        // The hostname is the pod name's default, from the facts alone.
        assert_eq!(Config::from_env(&env).unwrap_err().var(), "STICKYD_POD_NAME");
        let c = Config::parse(&env, &Startup::with(Some("web-7"), &[])).unwrap();
        assert_eq!(c.pod_name, "web-7");
        assert_eq!(
            Config::parse(&env, &Startup::with(Some("Web_7"), &[]))
                .unwrap_err()
                .var(),
            "STICKYD_POD_NAME"
        );
        // Files named by the variables come from the facts.
        let key = "0123456789abcdef0123456789abcdef";
        env.insert("STICKYD_COOKIE_SECRET_FILE".into(), "/no/such/dir/key".into());
        env.insert("STICKYD_ENDPOINTS".into(), "file:/no/such/dir/peers".into());
        assert_eq!(
            files_named(&env),
            vec![
                ("STICKYD_COOKIE_SECRET_FILE", PathBuf::from("/no/such/dir/key")),
                ("STICKYD_ENDPOINTS", PathBuf::from("/no/such/dir/peers")),
            ]
        );
        let facts = Startup::with(
            Some("web-7"),
            &[("/no/such/dir/key", key), ("/no/such/dir/peers", "web-7=127.0.0.1:1\n")],
        );
        let c = Config::parse(&env, &facts).unwrap();
        assert_eq!(c.cookie.keys.len(), 1);
        assert_eq!(c.endpoints, EndpointsSource::File("/no/such/dir/peers".into()));
        let e = Config::parse(&env, &Startup::with(Some("web-7"), &[("/no/such/dir/key", key)])).unwrap_err();
        assert_eq!(e.var(), "STICKYD_ENDPOINTS");
        let e = Config::parse(
            &env,
            &Startup::with(Some("web-7"), &[("/no/such/dir/peers", "web-7=127.0.0.1:1")]),
        )
        .unwrap_err();
        assert_eq!(e.var(), "STICKYD_COOKIE_SECRET_FILE");
        let mut unreadable = facts.clone();
        unreadable
            .files
            .insert("/no/such/dir/key".into(), Err("permission denied".into()));
        let e = Config::parse(&env, &unreadable).unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{e}");
        // Worker threads: the CPU quota, at most the cores the facts give.
        let on = |cpus: Option<usize>, cores: usize| {
            let mut f = facts.clone();
            f.host.cpus = cpus;
            f.cores = cores;
            Config::parse(&env, &f).unwrap().worker_threads
        };
        assert_eq!(
            (on(None, 6), on(Some(2), 6), on(Some(16), 6), on(None, 0)),
            (6, 2, 6, 1)
        );
    }

    #[test]
    fn upstream_forms() {
        for (raw, addr) in [
            ("http://127.0.0.1:8081", "127.0.0.1:8081"),
            ("127.0.0.1:9000", "127.0.0.1:9000"),
            ("http://localhost:3000/", "127.0.0.1:3000"),
            ("http://[::1]:3000", "[::1]:3000"),
        ] {
            assert_eq!(parse_upstream(raw).unwrap().0, addr.parse().unwrap(), "{raw}");
        }
    }
}
