//! The manifest model that `lint`, `inject`, `migrate` and the injector
//! share: what a pod spec says of its stickyd sidecar (its settings as the
//! manifest proves them), its containers, the app's preStop and the drain it
//! calls, the grace period the shutdown needs, and an Ingress's backends and
//! ingress-nginx annotations. The lint rules are [`crate::lint`]'s.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::kyaml::Node;
use stickyd_sidecar::config::REGEX_CHARS;
use stickyd_sidecar::drain::{self, DrainParams};

pub(crate) const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// The ingress-nginx annotations of an Ingress, by their short name.
pub(crate) struct Annotations<'a> {
    pub(crate) map: BTreeMap<&'a str, (&'a Node, &'a Node)>,
    pub(crate) line: usize,
}

impl<'a> Annotations<'a> {
    pub(crate) fn of(root: &'a Node) -> Self {
        let mut map = BTreeMap::new();
        let ann = root.path(&["metadata", "annotations"]);
        for (k, key, v) in ann.into_iter().flat_map(|a| a.entries()) {
            if let Some(short) = k.strip_prefix(NGINX) {
                map.insert(short, (key, v));
            }
        }
        let line = root
            .path(&["metadata"])
            .and_then(|m| m.key("annotations"))
            .or_else(|| root.key("metadata"))
            .map_or(root.line, |n| n.line);
        Annotations { map, line }
    }

    pub(crate) fn get(&self, short: &str) -> Option<&'a str> {
        self.map.get(short).and_then(|(_, v)| v.as_str()).map(str::trim)
    }

    pub(crate) fn line_of(&self, short: &str) -> usize {
        self.map.get(short).map_or(self.line, |(k, _)| k.line)
    }

    /// Cookie affinity is intended when any affinity or session-cookie
    /// annotation is set (`affinity: cookie` is sometimes left out by mistake).
    pub(crate) fn affinity_intended(&self) -> bool {
        self.map
            .keys()
            .any(|k| k.starts_with("affinity") || k.starts_with("session-cookie-"))
            && !matches!(self.get("affinity"), Some(a) if !a.eq_ignore_ascii_case("cookie"))
    }

    /// Whether paths are regular expressions (`use-regex`, implied by `rewrite-target`).
    pub(crate) fn regex_mode(&self) -> bool {
        self.get("use-regex").is_some_and(|v| v.eq_ignore_ascii_case("true")) || self.get("rewrite-target").is_some()
    }
}

/// One backend of an Ingress.
pub(crate) struct Backend<'a> {
    pub(crate) service: &'a Node,
    pub(crate) path: Option<&'a Node>,
}

pub(crate) fn backend_of<'a>(b: &'a Node, path: Option<&'a Node>, out: &mut Vec<Backend<'a>>) {
    let service = b.path(&["service", "name"]).or_else(|| b.get("serviceName"));
    if let Some(service) = service.filter(|s| s.as_str().is_some()) {
        out.push(Backend { service, path });
    }
}

pub(crate) fn ingress_backends(root: &Node) -> Vec<Backend<'_>> {
    let mut out = Vec::new();
    let spec = root.get("spec");
    for b in [
        spec.and_then(|s| s.get("defaultBackend")),
        spec.and_then(|s| s.get("backend")),
    ]
    .into_iter()
    .flatten()
    {
        backend_of(b, None, &mut out);
    }
    for rule in spec.and_then(|s| s.get("rules")).map(Node::items).unwrap_or(&[]) {
        // `paths` belongs under `http`; accept it beside `http` too, as it is
        // sometimes mis-indented.
        let paths = rule.path(&["http", "paths"]).or_else(|| rule.get("paths"));
        for p in paths.map(Node::items).unwrap_or(&[]) {
            if let Some(b) = p.get("backend") {
                backend_of(b, p.get("path"), &mut out);
            }
        }
    }
    out
}

/// The literal prefix of a regex path, as a cookie Path: `/mysite(/|$)(.*)` → `/mysite`.
pub(crate) fn literal_prefix(path: &str) -> String {
    let cut = path.find(REGEX_CHARS).unwrap_or(path.len());
    let p = path[..cut].trim_end_matches('.').trim_end_matches('/');
    if p.is_empty() || !p.starts_with('/') {
        "/".into()
    } else {
        p.to_string()
    }
}

/// Whether a container is a stickyd sidecar: named `stickyd`, or running an
/// image whose repository ends in `stickyd`.
pub fn is_stickyd(container: &Node) -> bool {
    if container.str_at(&["name"]) == Some("stickyd") {
        return true;
    }
    let Some(image) = container.str_at(&["image"]) else {
        return false;
    };
    let image = image.split('@').next().unwrap_or(image);
    let repo = match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    };
    repo == "stickyd" || repo.ends_with("/stickyd")
}

pub(crate) fn containers(pod: &Node) -> impl Iterator<Item = &Node> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |k| pod.get(k).map(Node::items).unwrap_or(&[]))
}

/// The value of an env entry of a container, when it is a literal.
pub(crate) fn env_value<'a>(container: &'a Node, name: &str) -> Option<&'a Node> {
    container
        .get("env")
        .map(Node::items)
        .unwrap_or(&[])
        .iter()
        .find(|e| e.str_at(&["name"]) == Some(name))
}

pub(crate) fn port_of_addr(addr: &str) -> Option<i64> {
    addr.trim().trim_end_matches('/').rsplit(':').next()?.parse().ok()
}

/// The default of a stickyd setting, from the configuration's own table.
pub(crate) fn default_of(var: &str) -> &'static str {
    stickyd_sidecar::config::VARIABLES
        .iter()
        .find(|(k, _)| *k == var)
        .and_then(|(_, d)| *d)
        .unwrap_or("")
}

/// Whether a container's env sets a variable (a literal or from elsewhere).
pub fn is_set(container: &Node, var: &str) -> bool {
    env_value(container, var).is_some()
}

/// The literal value of a sidecar setting, or its default.
pub(crate) fn setting<'a>(sidecar: &'a Node, var: &str) -> &'a str {
    env_value(sidecar, var)
        .and_then(|e| e.str_at(&["value"]))
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default_of(var))
}

/// A sidecar setting as the manifest proves it: its literal value, its
/// default ("" when it has none), or `None` when it is set from elsewhere
/// (a ConfigMap, or possibly `envFrom`).
pub(crate) fn literal<'a>(sidecar: &'a Node, var: &str) -> Option<&'a str> {
    match env_value(sidecar, var) {
        Some(e) => e.get("value").map(|v| v.as_str().unwrap_or("").trim()),
        None if sidecar.get("envFrom").is_some_and(|e| !e.items().is_empty()) => None,
        None => Some(default_of(var)),
    }
}

/// The address of a sidecar's admin listener (STICKYD_ADMIN_LISTEN, or its default).
pub fn admin_listen(sidecar: &Node) -> &str {
    setting(sidecar, "STICKYD_ADMIN_LISTEN").trim()
}

/// Kubernetes' `terminationGracePeriodSeconds` when a pod does not set it.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// A duration as stickyd's settings write it: `10s`, `500ms`, or seconds such as `0.0005`.
pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        d.as_secs_f64().to_string()
    }
}

/// The drain call with its query, as a `preStop: httpGet: path:`.
pub fn drain_path(p: &DrainParams) -> String {
    format!(
        "{}?idle={}&max={}",
        drain::PATH,
        fmt_duration(p.idle),
        fmt_duration(p.max)
    )
}

/// What a pod's shutdown takes once the app's preStop calls the drain: the
/// drain's `max`, then the sidecar's own drain (STICKYD_DRAIN_SECONDS) and its
/// wait for in-flight requests (STICKYD_DRAIN_TIMEOUT), all within
/// `terminationGracePeriodSeconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownBudget {
    pub max: Duration,
    pub drain: Duration,
    pub drain_timeout: Duration,
}

impl ShutdownBudget {
    /// The budget of a drain of at most `max` in front of this sidecar, with
    /// its settings from its env (their defaults when not literal there).
    pub fn of(sidecar: &Node, max: Duration) -> ShutdownBudget {
        let secs = |var: &str| {
            stickyd_sidecar::config::parse_duration(setting(sidecar, var))
                .or_else(|| stickyd_sidecar::config::parse_duration(default_of(var)))
                .unwrap_or_default()
        };
        ShutdownBudget {
            max,
            drain: secs("STICKYD_DRAIN_SECONDS"),
            drain_timeout: secs("STICKYD_DRAIN_TIMEOUT"),
        }
    }

    /// The longest drain `max` that a grace period of `grace` seconds leaves
    /// room for in front of this sidecar: the grace period less its
    /// STICKYD_DRAIN_SECONDS and STICKYD_DRAIN_TIMEOUT. None when nothing is left.
    pub fn max_within(sidecar: &Node, grace: i64) -> Option<Duration> {
        let own = ShutdownBudget::of(sidecar, Duration::ZERO);
        Duration::from_secs(u64::try_from(grace).ok()?)
            .checked_sub(own.drain + own.drain_timeout)
            .filter(|d| !d.is_zero())
    }

    /// The grace period it needs, in whole seconds (rounded up).
    pub fn seconds(&self) -> i64 {
        let total = self.max + self.drain + self.drain_timeout;
        i64::try_from(total.as_secs()).unwrap_or(i64::MAX) + i64::from(total.subsec_nanos() > 0)
    }

    /// The sum, spelled out: `max 300s + STICKYD_DRAIN_SECONDS 5s + STICKYD_DRAIN_TIMEOUT 30s`.
    pub fn explain(&self) -> String {
        format!(
            "max {} + STICKYD_DRAIN_SECONDS {} + STICKYD_DRAIN_TIMEOUT {}",
            fmt_duration(self.max),
            fmt_duration(self.drain),
            fmt_duration(self.drain_timeout)
        )
    }
}

/// What a container's `preStop` hook does about stickyd's drain.
#[derive(Debug)]
pub enum PreStop<'a> {
    /// No preStop hook.
    Missing,
    /// A `sleep` action; `key` is its `sleep` field.
    Sleep { key: &'a Node },
    /// An `httpGet` to the drain path, with the path's parameters.
    DrainGet {
        get: &'a Node,
        path: &'a Node,
        params: Result<DrainParams, String>,
    },
    /// An `exec` hook whose command calls the drain (`…:PORT/drain?…`), with
    /// that port and the path's parameters.
    DrainExec {
        exec: &'a Node,
        port: Option<i64>,
        params: Result<DrainParams, String>,
    },
    /// A hook of its own that does not call the drain: its action (`exec`,
    /// `httpGet`, …) and the `preStop` field.
    Own { action: &'a str, key: &'a Node },
}

impl PreStop<'_> {
    /// Whether the hook calls the drain (well or badly).
    pub fn calls_drain(&self) -> bool {
        matches!(self, PreStop::DrainGet { .. } | PreStop::DrainExec { .. })
    }

    /// The drain's parameters when the hook calls it with a valid path.
    pub fn drain_params(&self) -> Option<DrainParams> {
        match self {
            PreStop::DrainGet { params: Ok(p), .. } | PreStop::DrainExec { params: Ok(p), .. } => Some(*p),
            _ => None,
        }
    }
}

/// Reads a container's `lifecycle.preStop`.
pub fn pre_stop(container: &Node) -> PreStop<'_> {
    let lifecycle = container.get("lifecycle");
    let (Some(key), Some(hook)) = (
        lifecycle.and_then(|l| l.key("preStop")),
        lifecycle.and_then(|l| l.get("preStop")).filter(|h| !h.is_null()),
    ) else {
        return PreStop::Missing;
    };
    if let Some(key) = hook.key("sleep") {
        return PreStop::Sleep { key };
    }
    if let Some(get) = hook.get("httpGet") {
        if let Some(path) = get.get("path") {
            if let Some(params) = path.as_str().and_then(DrainParams::parse_path) {
                return PreStop::DrainGet { get, path, params };
            }
        }
    }
    if let Some(exec) = hook.get("exec") {
        if let Some((port, params)) = exec_drain_call(exec) {
            return PreStop::DrainExec { exec, port, params };
        }
    }
    let action = hook.entries().next().map_or("preStop", |(k, _, _)| k);
    PreStop::Own { action, key }
}

/// The drain call in an exec hook's command: a URL `…:PORT/drain[?query]`.
pub(crate) fn exec_drain_call(exec: &Node) -> Option<(Option<i64>, Result<DrainParams, String>)> {
    let words = exec.get("command").map(Node::items).unwrap_or(&[]);
    for word in words.iter().filter_map(Node::as_str) {
        for (i, _) in word.match_indices(drain::PATH) {
            let before = &word[..i];
            let port = &before[before.trim_end_matches(|c: char| c.is_ascii_digit()).len()..];
            if port.is_empty() || !before[..before.len() - port.len()].ends_with(':') {
                continue;
            }
            let rest = &word[i..];
            let end = rest
                .find(|c: char| c.is_whitespace() || "'\"`;|)".contains(c))
                .unwrap_or(rest.len());
            if let Some(params) = DrainParams::parse_path(&rest[..end]) {
                return Some((port.parse().ok(), params));
            }
        }
    }
    None
}

/// The app containers of a pod, by index in `containers`: those (the
/// `sidecar` aside) that declare the port stickyd proxies to, else the only
/// one. The flag is false when they cannot be told apart (several containers
/// and none declares that port); all of them are returned then. An app may
/// run in the stickyd image (the demo app does), so only the sidecar itself is
/// left out.
pub fn app_containers(pod: &Node, sidecar: &Node, upstream_port: i64) -> (Vec<usize>, bool) {
    let regular: Vec<(usize, &Node)> = pod
        .get("containers")
        .map(Node::items)
        .unwrap_or(&[])
        .iter()
        .enumerate()
        .filter(|(_, c)| !std::ptr::eq(*c, sidecar))
        .collect();
    let declaring: Vec<usize> = regular
        .iter()
        .filter(|(_, c)| {
            c.get("ports")
                .map(Node::items)
                .unwrap_or(&[])
                .iter()
                .any(|p| p.get("containerPort").and_then(Node::as_i64) == Some(upstream_port))
        })
        .map(|(i, _)| *i)
        .collect();
    if !declaring.is_empty() {
        (declaring, true)
    } else {
        (regular.iter().map(|(i, _)| *i).collect(), regular.len() <= 1)
    }
}

/// The port number a hook's `port` reaches: a number, or a name the kubelet
/// looks up among the ports of the container that owns the hook.
pub(crate) fn hook_port(port: &Node, owner: &Node) -> Option<i64> {
    port.as_i64().or_else(|| {
        let name = port.as_str()?;
        owner
            .get("ports")
            .map(Node::items)
            .unwrap_or(&[])
            .iter()
            .find(|p| p.str_at(&["name"]) == Some(name))?
            .get("containerPort")?
            .as_i64()
    })
}

/// Resolves a Service port's target to a container port number of the pod.
pub(crate) fn resolve_target(service_port: &Node, pod: &Node) -> Option<(i64, usize)> {
    let target = service_port.get("targetPort").or_else(|| service_port.get("port"))?;
    let line = target.line;
    if let Some(n) = target.as_i64() {
        return Some((n, line));
    }
    let name = target.as_str()?;
    containers(pod)
        .flat_map(|c| c.get("ports").map(Node::items).unwrap_or(&[]))
        .find(|p| p.str_at(&["name"]) == Some(name))
        .and_then(|p| p.get("containerPort")?.as_i64())
        .map(|n| (n, line))
}
