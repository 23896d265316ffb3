//! The value parsers: addresses, durations, counts, pod names, the peer
//! list, the endpoint source, the files the variables name, and the drain
//! token. Each error names the variable and what would be valid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::registry::{value, var, var_or_default};
use super::{ConfigError, EndpointsSource, Env};
use crate::startup::Startup;

pub(crate) fn parse_addr(env: &dyn Env, name: &'static str) -> Result<SocketAddr, ConfigError> {
    let raw = value(env, name);
    raw.trim()
        .parse()
        .map_err(|_| ConfigError::invalid(name, &raw, "an IP:PORT socket address, e.g. 0.0.0.0:8080 or [::]:8080"))
}

pub(crate) fn parse_bool(env: &dyn Env, name: &'static str) -> Result<bool, ConfigError> {
    let v = value(env, name);
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::invalid(name, &v, "true or false")),
    }
}

/// Parses a duration in seconds: `5`, `0.5`, or with a unit `500ms`, `10s`,
/// `5m`, `2h`, `1d`.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let s = raw.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = s.strip_suffix('d') {
        (n, 86400.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    if !v.is_finite() || v < 0.0 || v * mult > 1e10 {
        return None;
    }
    Some(Duration::from_secs_f64(v * mult))
}

/// A duration, or its default (`None` when it has none and is unset).
pub(crate) fn parse_secs(env: &dyn Env, name: &'static str) -> Result<Option<Duration>, ConfigError> {
    let Some(raw) = var_or_default(env, name) else {
        return Ok(None);
    };
    parse_duration(&raw).map(Some).ok_or_else(|| {
        ConfigError::invalid(
            name,
            &raw,
            "a number of seconds (e.g. 5, 0.5) or a duration like 500ms, 10s, 5m, 2h, 1d",
        )
    })
}

pub(crate) fn req_secs(env: &dyn Env, name: &'static str) -> Result<Duration, ConfigError> {
    parse_secs(env, name).map(|d| d.unwrap_or_else(|| panic!("{name} has a default in VARIABLES")))
}

/// A whole number from 1 to `max`, or its default (`None` when it has none
/// and is unset).
pub(crate) fn parse_positive(env: &dyn Env, name: &'static str, max: usize) -> Result<Option<usize>, ConfigError> {
    let Some(v) = var_or_default(env, name) else {
        return Ok(None);
    };
    match v.trim().parse::<usize>() {
        Ok(n) if n >= 1 && n <= max => Ok(Some(n)),
        _ => Err(ConfigError::invalid(
            name,
            &v,
            format!("a whole number from 1 to {max}"),
        )),
    }
}

/// Parses `http://HOST:PORT` (or `HOST:PORT`) for the app in this pod.
pub(crate) fn parse_upstream(raw: &str) -> Result<(SocketAddr, String), ConfigError> {
    let bad = || {
        ConfigError::invalid(
            "STICKYD_UPSTREAM",
            raw,
            "http://IP:PORT of the app in this pod, e.g. http://127.0.0.1:8081 (https and host names are not supported: the app is on localhost)",
        )
    };
    let s = raw.trim();
    let rest = if let Some(r) = s.strip_prefix("http://") {
        r
    } else if s.contains("://") {
        return Err(bad());
    } else {
        s
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(bad());
    }
    let addr: SocketAddr = if let Some(port) = rest.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad())?;
        SocketAddr::from(([127, 0, 0, 1], port))
    } else {
        rest.parse().map_err(|_| bad())?
    };
    Ok((addr, rest.to_string()))
}

/// A pod name as Kubernetes allows it (an RFC 1123 subdomain).
pub fn valid_pod_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// Parses a peer list: `NAME=IP:PORT` items separated by commas or newlines
/// (`#` starts a comment in files). The error says what is wrong.
pub fn parse_peer_list(list: &str) -> Result<Vec<(String, SocketAddr)>, String> {
    let mut out: Vec<(String, SocketAddr)> = Vec::new();
    let items = list
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty());
    for item in items {
        let (name, addr) = item.split_once('=').ok_or_else(|| format!("{item:?} has no '='"))?;
        let name = name.trim();
        if !valid_pod_name(name) {
            return Err(format!("{name:?} is not a valid pod name"));
        }
        let addr: SocketAddr = addr.trim().parse().map_err(|_| format!("{addr:?} is not an IP:PORT"))?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("{name:?} is listed twice"));
        }
        out.push((name.to_string(), addr));
    }
    if out.is_empty() {
        return Err("the list is empty".into());
    }
    Ok(out)
}

pub(crate) const ENDPOINTS_FORMS: &str = "kubernetes, static:NAME=IP:PORT,NAME=IP:PORT,..., or file:PATH (a file of NAME=IP:PORT lines, re-read when it changes)";

pub(crate) fn parse_endpoints(raw: &str, startup: &Startup) -> Result<EndpointsSource, ConfigError> {
    let bad = |why: String| ConfigError::invalid("STICKYD_ENDPOINTS", raw, format!("{ENDPOINTS_FORMS} ({why})"));
    let s = raw.trim();
    if s == "kubernetes" {
        Ok(EndpointsSource::Kubernetes)
    } else if let Some(list) = s.strip_prefix("static:") {
        Ok(EndpointsSource::Static(parse_peer_list(list).map_err(bad)?))
    } else if let Some(path) = s.strip_prefix("file:") {
        let path = PathBuf::from(path.trim());
        let text = file_text(startup, &path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        parse_peer_list(text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        Ok(EndpointsSource::File(path))
    } else {
        Err(ConfigError::invalid("STICKYD_ENDPOINTS", raw, ENDPOINTS_FORMS))
    }
}

/// The files the variables in `env` name, which [`Startup::gather`] reads
/// at startup: STICKYD_COOKIE_SECRET_FILE, and STICKYD_ENDPOINTS=file:PATH.
pub fn files_named(env: &dyn Env) -> Vec<(&'static str, PathBuf)> {
    let mut files = Vec::new();
    if let Some(path) = var(env, "STICKYD_COOKIE_SECRET_FILE") {
        files.push(("STICKYD_COOKIE_SECRET_FILE", PathBuf::from(path)));
    }
    if let Some(path) = var(env, "STICKYD_ENDPOINTS").and_then(|v| v.trim().strip_prefix("file:").map(str::to_string)) {
        files.push(("STICKYD_ENDPOINTS", PathBuf::from(path.trim())));
    }
    files
}

/// The text of a file named by a variable, as read at startup.
pub(crate) fn file_text<'a>(startup: &'a Startup, path: &std::path::Path) -> Result<&'a str, String> {
    match startup.files.get(path) {
        Some(Ok(text)) => Ok(text),
        Some(Err(e)) => Err(e.clone()),
        None => Err("not read at startup".into()),
    }
}

/// The drain token (STICKYD_DRAIN_TOKEN): a bearer secret that the app's
/// preStop sends as `Authorization: Bearer TOKEN`. Its Debug form never
/// shows it, and it is compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct DrainToken(String);

/// The shortest drain token accepted, in characters.
pub const MIN_DRAIN_TOKEN_LEN: usize = 16;
/// The longest drain token accepted, in characters.
pub const MAX_DRAIN_TOKEN_LEN: usize = 512;
/// The drain token of the kustomize base, to be replaced: published, so no
/// secret, and refused at startup.
pub const EXAMPLE_DRAIN_TOKEN: &str = "replace-me-with-openssl-rand-hex-32";

impl std::fmt::Debug for DrainToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DrainToken(redacted)")
    }
}

impl DrainToken {
    /// A token as STICKYD_DRAIN_TOKEN gives it: 16 to 512 visible ASCII
    /// characters (it travels in a header value, and a short one could be
    /// guessed). The error says what is wrong, never the value.
    pub fn parse(raw: &str) -> Result<DrainToken, String> {
        let t = raw.trim();
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("only visible ASCII characters: letters, digits and punctuation, no spaces".into());
        }
        if t == EXAMPLE_DRAIN_TOKEN {
            return Err(format!(
                "{EXAMPLE_DRAIN_TOKEN} is the example's placeholder, which anyone can read; set a token of your \
                 own (openssl rand -hex 32) here and in the app's preStop header (Authorization: Bearer TOKEN)"
            ));
        }
        if t.len() < MIN_DRAIN_TOKEN_LEN || t.len() > MAX_DRAIN_TOKEN_LEN {
            return Err(format!(
                "{} characters; a token has {MIN_DRAIN_TOKEN_LEN} to {MAX_DRAIN_TOKEN_LEN} (e.g. openssl rand -hex 32)",
                t.len()
            ));
        }
        Ok(DrainToken(t.to_string()))
    }

    /// Does an `Authorization` header value carry this token (`Bearer
    /// TOKEN`, the scheme in any case)? Constant time in the token.
    pub fn authorizes(&self, authorization: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let Some(given) = authorization
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| authorization[7..].trim_ascii())
        else {
            return false;
        };
        given.len() == self.0.len() && bool::from(given.ct_eq(self.0.as_bytes()))
    }

    /// The header value that carries it.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

pub(crate) fn parse_drain_token(env: &dyn Env) -> Result<Option<DrainToken>, ConfigError> {
    var(env, "STICKYD_DRAIN_TOKEN")
        .map(|raw| {
            DrainToken::parse(&raw).map_err(|why| ConfigError::invalid("STICKYD_DRAIN_TOKEN", "<redacted>", why))
        })
        .transpose()
}

/// [`parse_positive`] for a variable that has a default.
pub(crate) fn positive(env: &dyn Env, name: &'static str, max: usize) -> Result<usize, ConfigError> {
    parse_positive(env, name, max).map(|n| n.unwrap_or_else(|| panic!("{name} has a default in VARIABLES")))
}

pub(crate) fn nonzero(env: &dyn Env, name: &'static str) -> Result<Duration, ConfigError> {
    let d = req_secs(env, name)?;
    if d.is_zero() {
        return Err(ConfigError::invalid(name, "0", "a duration greater than zero"));
    }
    Ok(d)
}

pub(crate) fn valid_dns_label(s: &str) -> bool {
    valid_pod_name(s) && s.len() <= 63 && !s.contains('.')
}
