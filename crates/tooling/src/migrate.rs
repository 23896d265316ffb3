//! Affinity settings written for someone else, moved onto the sidecar:
//! ingress-nginx's `affinity` and `session-cookie-*` annotations
//! (`stickyd inject --from-ingress`) and Gateway API's `sessionPersistence`
//! (GEP-1619) on HTTPRoute and GRPCRoute rules and BackendLBPolicy
//! (`stickyd inject --from-httproute`).
//!
//! One translation serves both inject, which writes the settings into the
//! sidecar and removes them from the Ingress or route (left there, the
//! controller or Gateway would write a cookie of its own beside stickyd's,
//! with the same name when the name was mapped), and lint, which compares
//! what an Ingress or route still asks for with the sidecar it reaches.

use std::time::Duration;

use crate::inject::{kind_of, name_of, ns_of, same_ns};
use crate::kyaml::Node;
use crate::model::{self, Annotations, NGINX};
use stickyd_sidecar::config::REGEX_CHARS;

/// ingress-nginx's cookie name when `session-cookie-name` is not set.
pub const INGRESS_NGINX_COOKIE: &str = "INGRESSCOOKIE";

/// One sidecar setting asked for, with the field it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub var: &'static str,
    pub value: String,
    pub from: String,
}

/// What a set of affinity settings asks of the sidecar, and what could not
/// be carried over (notes; warnings start with `warning:`).
#[derive(Debug, Default)]
pub struct Translation {
    pub wanted: Vec<Wanted>,
    pub notes: Vec<String>,
}

impl Translation {
    fn want(&mut self, var: &'static str, value: impl Into<String>, from: impl Into<String>) {
        self.wanted.push(Wanted {
            var,
            value: value.into(),
            from: from.into(),
        });
    }

    fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    fn warn(&mut self, n: impl AsRef<str>) {
        self.notes.push(format!("warning: {}", n.as_ref()));
    }
}

/// The cookie name ingress-nginx writes for these annotations.
pub(crate) fn nginx_cookie_name<'a>(ann: &Annotations<'a>) -> &'a str {
    ann.get("session-cookie-name")
        .filter(|n| !n.is_empty())
        .unwrap_or(INGRESS_NGINX_COOKIE)
}

fn seconds(raw: &str) -> Option<u64> {
    raw.trim().parse::<u64>().ok().filter(|s| *s > 0)
}

/// ingress-nginx's affinity annotations as stickyd settings. `paths` are the
/// Ingress paths that reach the Service (the cookie Path ingress-nginx used
/// when `session-cookie-path` is not set).
pub(crate) fn from_annotations(ann: &Annotations, paths: &[&str]) -> Translation {
    let mut t = Translation::default();
    if !ann.affinity_intended() {
        return t;
    }
    let a = |k: &str| format!("{NGINX}{k}");
    if ann.get("affinity").is_none() {
        t.note(format!(
            "{} is not set, so ingress-nginx ignored these annotations; mapped as they were meant",
            a("affinity")
        ));
    }
    if let Some(name) = ann.get("session-cookie-name").filter(|n| !n.is_empty()) {
        t.want("STICKYD_COOKIE_NAME", name, "session-cookie-name");
    }
    let max_age = ann.get("session-cookie-max-age");
    let expires = ann.get("session-cookie-expires");
    match (max_age.map(|m| (m, seconds(m))), expires.map(|e| (e, seconds(e)))) {
        (Some((_, Some(m))), e) => {
            t.want("STICKYD_COOKIE_MAX_AGE", m.to_string(), "session-cookie-max-age");
            if e.is_some_and(|(_, s)| s == Some(m)) {
                t.note("session-cookie-expires: the same as session-cookie-max-age; stickyd sets Max-Age and Expires");
            }
            if let Some((raw, _)) = e.filter(|(_, s)| *s != Some(m)) {
                t.note(format!(
                    "session-cookie-expires {raw:?} differs from session-cookie-max-age {m}: browsers obey Max-Age, \
                     so {m} is kept (stickyd sets Max-Age and Expires from the one value)"
                ));
            }
        }
        (Some((raw, None)), _) => t.warn(format!(
            "session-cookie-max-age {raw:?} is not a number of seconds; dropped (a session cookie)"
        )),
        (None, Some((_, Some(e)))) => t.want("STICKYD_COOKIE_MAX_AGE", e.to_string(), "session-cookie-expires"),
        (None, Some((raw, None))) => t.warn(format!(
            "session-cookie-expires {raw:?} is not a number of seconds; dropped (a session cookie)"
        )),
        (None, None) => {}
    }
    match ann.get("session-cookie-path") {
        Some(p) if p.contains(REGEX_CHARS) || !p.starts_with('/') => {
            t.want("STICKYD_COOKIE_PATH", "/", "session-cookie-path");
            t.note(format!(
                "session-cookie-path {p:?} is a regular expression, and a cookie Path is matched literally: \
                 stickyd's cookie gets Path=/ (pass --cookie-path {} to narrow it to the literal prefix)",
                model::literal_prefix(p)
            ));
        }
        Some(p) => t.want("STICKYD_COOKIE_PATH", p, "session-cookie-path"),
        None => {
            if let Some(p) = paths.iter().find(|p| p.contains(REGEX_CHARS)) {
                t.want("STICKYD_COOKIE_PATH", "/", format!("path {p}"));
                t.note(format!(
                    "the Ingress path {p:?} is a regular expression and no session-cookie-path is set, so \
                     ingress-nginx sent its cookie with that regex as Path, which browsers never match: stickyd's \
                     cookie gets Path=/ (pass --cookie-path {} to narrow it to the literal prefix)",
                    model::literal_prefix(p)
                ));
            }
        }
    }
    let samesite = ann.get("session-cookie-samesite");
    match samesite.map(str::to_ascii_lowercase).as_deref() {
        None => {}
        Some("none") => t.want("STICKYD_COOKIE_SAMESITE", "None", "session-cookie-samesite"),
        Some("lax") => t.want("STICKYD_COOKIE_SAMESITE", "Lax", "session-cookie-samesite"),
        Some("strict") => t.want("STICKYD_COOKIE_SAMESITE", "Strict", "session-cookie-samesite"),
        Some(_) => t.warn(format!(
            "session-cookie-samesite {:?} is not None, Lax or Strict; dropped (stickyd's default Lax)",
            samesite.unwrap_or_default()
        )),
    }
    if let Some(c) = ann.get("session-cookie-conditional-samesite-none") {
        if !c.eq_ignore_ascii_case("true") {
            // "false" is ingress-nginx's default: SameSite=None to every browser, as stickyd does.
        } else if samesite.is_some_and(|s| s.eq_ignore_ascii_case("none")) {
            t.note(
                "session-cookie-conditional-samesite-none: stickyd has no per-browser exception, it sends \
                 SameSite=None (with Secure) to every browser; the old browsers that reject SameSite=None, which \
                 ingress-nginx spared, then drop the cookie",
            );
        } else {
            t.note("session-cookie-conditional-samesite-none has no effect without session-cookie-samesite: None");
        }
    }
    match ann.get("session-cookie-secure").map(str::to_ascii_lowercase).as_deref() {
        Some("true") => t.want("STICKYD_COOKIE_SECURE", "true", "session-cookie-secure"),
        Some(other) => t.note(format!(
            "session-cookie-secure {other:?}: kept stickyd's default auto, Secure when the request arrived over \
             HTTPS (X-Forwarded-Proto), as ingress-nginx marks its cookie without this annotation"
        )),
        None => {}
    }
    if let Some(d) = ann.get("session-cookie-domain").filter(|d| !d.is_empty()) {
        t.want("STICKYD_COOKIE_DOMAIN", d, "session-cookie-domain");
    }
    match ann
        .get("session-cookie-change-on-failure")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("true") => t.want("STICKYD_ON_MISSING", "repin", "session-cookie-change-on-failure"),
        Some(_) => t.note(
            "session-cookie-change-on-failure false: kept STICKYD_ON_MISSING=repin. ingress-nginx retried a \
             failed attempt on the same pod but moved a session whose pod had left the endpoints; stickyd repins \
             in both cases (STICKYD_ON_MISSING=reject would answer 503 in both)",
        ),
        None => {}
    }
    match ann.get("affinity-mode").map(str::to_ascii_lowercase).as_deref() {
        Some("persistent") => t.note("affinity-mode persistent: what stickyd always does"),
        None => {}
        Some(mode) => t.warn(format!(
            "affinity-mode {mode}: stickyd is always persistent, a session stays on its pod while that pod exists \
             and scaling up moves none"
        )),
    }
    for dropped in ["session-cookie-hash", "affinity-canary-behavior"] {
        if let Some(v) = ann.get(dropped) {
            t.note(format!("{dropped} {v:?} has no stickyd counterpart; dropped"));
        }
    }
    t
}

/// The affinity annotations that `--from-ingress` removes.
pub fn is_affinity_annotation(short: &str) -> bool {
    short.starts_with("affinity") || short.starts_with("session-cookie-")
}

/// Parses a Gateway API Duration (GEP-2257: `1h30m`, `10s`, `500ms`).
pub fn parse_gateway_duration(raw: &str) -> Option<Duration> {
    let mut rest = raw.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return None;
        };
        total += unit * u32::try_from(n).ok()?;
        rest = &rest[len..];
    }
    Some(total)
}

/// A GEP-1619 duration field as a stickyd duration, or why it is dropped.
fn gateway_duration(t: &mut Translation, sp: &Node, field: &str) -> Option<String> {
    let raw = sp.str_at(&[field])?;
    match parse_gateway_duration(raw) {
        Some(d) if d.as_secs() >= 1 => Some(model::fmt_duration(Duration::from_secs(d.as_secs()))),
        Some(_) => {
            t.warn(format!(
                "{field} {raw:?} is under a second, which stickyd cannot enforce; dropped"
            ));
            None
        }
        None => {
            t.warn(format!(
                "{field} {raw:?} is not a Gateway API duration (GEP-2257, e.g. 1h30m); dropped"
            ));
            None
        }
    }
}

/// The name a `sessionPersistence` gives its cookie or header, and the field
/// it is read from. The schema since gateway-api #4873 (August 2026) has
/// `cookie.name` and `header.name`; the one before it a single `sessionName`
/// for both ("reflected in the cookie or the header").
fn session_name(sp: &Node, header: bool) -> Option<(&str, &'static str)> {
    let current: &[(&[&str], &'static str)] = if header {
        &[(&["header", "name"], "header.name")]
    } else {
        &[(&["cookie", "name"], "cookie.name")]
    };
    current
        .iter()
        .chain([(&["sessionName"][..], "sessionName"), (&["name"][..], "name")].iter())
        .find_map(|(path, field)| sp.str_at(path).map(|n| (n.trim(), *field)))
        .filter(|(n, _)| !n.is_empty())
}

/// A `sessionPersistence` (GEP-1619) as stickyd settings, in the schema of
/// today (`type`, `cookie.name`, `cookie.path`, `cookie.lifetimeType`,
/// `header.name`, `absoluteTimeout`) or the one before gateway-api #4873
/// (`sessionName`, `cookieConfig.lifetimeType`) and #4771 (`idleTimeout`).
/// `has_key`: the sidecar signs its cookie, which session lifetimes need
/// (the lifetime is enforced inside the signed value).
pub fn from_session_persistence(sp: &Node, has_key: bool) -> Translation {
    let mut t = Translation::default();
    let header = match sp.str_at(&["type"]).unwrap_or("Cookie") {
        "Header" => true,
        "Cookie" => false,
        other => {
            t.warn(format!("type {other:?} is neither Cookie nor Header; read as Cookie"));
            false
        }
    };
    let name = session_name(sp, header);
    let absolute = gateway_duration(&mut t, sp, "absoluteTimeout");
    let idle = gateway_duration(&mut t, sp, "idleTimeout");
    if sp.get("idleTimeout").is_some() {
        t.note(
            "idleTimeout was removed from Gateway API (gateway-api #4771: no Gateway implemented it), so a Gateway \
             of today ignores it; stickyd enforces it as STICKYD_SESSION_IDLE_TIMEOUT, inside its signed cookie",
        );
    }
    let (lifetime, cookie_field) = ["cookie", "cookieConfig"]
        .into_iter()
        .find_map(|f| Some((sp.str_at(&[f, "lifetimeType"])?, f)))
        .unwrap_or(("Session", "cookie"));
    if header {
        t.want("STICKYD_AFFINITY", "header", "type: Header");
        if let Some((n, field)) = name {
            t.want("STICKYD_AFFINITY_HEADER", n.to_ascii_lowercase(), field);
        }
        if let Some(field) = ["cookie", "cookieConfig"].into_iter().find(|f| sp.get(f).is_some()) {
            t.note(format!("{field} applies to cookies only; ignored with type: Header"));
        }
    } else {
        if let Some((n, field)) = name {
            t.want("STICKYD_COOKIE_NAME", n, field);
        }
        if sp.get("header").is_some() {
            t.note("header applies to type: Header only; ignored with type: Cookie");
        }
        match sp.str_at(&["cookie", "path"]).map(str::trim) {
            Some(p) if p.contains(REGEX_CHARS) || !p.starts_with('/') => {
                t.want("STICKYD_COOKIE_PATH", "/", "cookie.path");
                t.warn(format!(
                    "cookie.path {p:?} is not a literal path (a cookie Path is matched literally, and stickyd \
                     refuses regex syntax): stickyd's cookie gets Path=/ (pass --cookie-path {} to narrow it)",
                    model::literal_prefix(p)
                ));
            }
            Some(p) => t.want("STICKYD_COOKIE_PATH", p, "cookie.path"),
            None => {}
        }
        match lifetime {
            "Permanent" => match &absolute {
                Some(a) => t.want(
                    "STICKYD_COOKIE_MAX_AGE",
                    a.clone(),
                    format!("{cookie_field}.lifetimeType: Permanent, absoluteTimeout"),
                ),
                None => t.warn(
                    "lifetimeType Permanent without absoluteTimeout (the API refuses it): a session cookie instead",
                ),
            },
            "Session" => {}
            other => t.warn(format!(
                "lifetimeType {other:?} is neither Permanent nor Session; read as Session"
            )),
        }
    }
    let permanent = !header && lifetime == "Permanent";
    for (value, field, var) in [
        (absolute, "absoluteTimeout", "STICKYD_SESSION_MAX_LIFETIME"),
        (idle, "idleTimeout", "STICKYD_SESSION_IDLE_TIMEOUT"),
    ] {
        let Some(value) = value else { continue };
        if has_key {
            t.want(var, value, field);
        } else if permanent && field == "absoluteTimeout" {
            t.note(format!(
                "absoluteTimeout {value}: enforced by the browser through Max-Age only; with a signing key \
                 (without --unsigned) stickyd enforces it too (STICKYD_SESSION_MAX_LIFETIME)"
            ));
        } else {
            t.warn(format!(
                "{field} {value} is not enforced: stickyd keeps session lifetimes inside the signed cookie value, \
                 and no signing key is configured (--unsigned): drop --unsigned, or pass --secret SECRET, to set {var}"
            ));
        }
    }
    t
}

/// The Service an ExternalName Service points to: its name and, when the
/// DNS name says, its namespace (`svc.ns.svc.cluster.local`, `svc.ns`).
pub fn external_name_target(service: &Node) -> Option<(&str, Option<&str>)> {
    if service.str_at(&["spec", "type"]) != Some("ExternalName") {
        return None;
    }
    let target = service.str_at(&["spec", "externalName"])?.trim_end_matches('.');
    let mut labels = target.split('.');
    let name = labels.next()?;
    let ns = labels.next();
    // Beyond `svc.ns`, only the cluster's own suffix names a Service.
    let rest: Vec<&str> = labels.collect();
    if !(rest.is_empty() || rest.first() == Some(&"svc")) {
        return None;
    }
    Some((name, ns))
}

/// Which of the injected Services a backend Service name reaches, from an
/// object in namespace `from`: directly, or through an ExternalName Service
/// of `from`'s namespace. Returns the Service name and the ExternalName
/// Service crossed, if any.
fn reached<'a>(
    docs: &'a [Node],
    backend: &str,
    from: &Option<String>,
    services: &[String],
    ns: &Option<String>,
) -> Option<(String, Option<&'a str>)> {
    if same_ns(from, ns) && services.iter().any(|s| s == backend) {
        let alias = docs
            .iter()
            .find(|d| kind_of(d) == "Service" && name_of(d) == backend && same_ns(&ns_of(d), from))
            .filter(|d| external_name_target(d).is_some());
        if alias.is_none() {
            return Some((backend.to_string(), None));
        }
    }
    let alias = docs
        .iter()
        .find(|d| kind_of(d) == "Service" && name_of(d) == backend && same_ns(&ns_of(d), from))?;
    let (target, target_ns) = external_name_target(alias)?;
    let target_ns = target_ns.map(str::to_string).or_else(|| from.clone());
    (services.iter().any(|s| s == target) && same_ns(&target_ns, ns))
        .then(|| (target.to_string(), Some(name_of(alias))))
}

/// The Gateway API groups a Backend (GEP-4894) is served in: the experimental
/// `XBackend` of `gateway.networking.x-k8s.io`, and `Backend` as the GEP names it.
const BACKEND_GROUPS: [&str; 2] = ["gateway.networking.k8s.io", "gateway.networking.x-k8s.io"];

/// Whether an object is a Gateway API Backend (GEP-4894).
pub(crate) fn is_backend(d: &Node) -> bool {
    let group = d
        .str_at(&["apiVersion"])
        .and_then(|v| v.split_once('/'))
        .map(|(g, _)| g);
    matches!(kind_of(d), "Backend" | "XBackend") && group.is_some_and(|g| BACKEND_GROUPS.contains(&g))
}

/// The Service a Backend (GEP-4894) of type `EndpointSelector` stands for,
/// and its namespace: the name of its `endpointSelector.selectorRef` (an
/// EndpointSelector of the Service's name, as GEP-4894 draws it, or the
/// Service itself), in the ref's namespace or the Backend's. A Backend that
/// selects pods by labels (`endpointSelector.matchLabels`) is not related to
/// a Service.
pub(crate) fn backend_service(d: &Node) -> Option<(&str, Option<String>)> {
    let spec = d.get("spec")?;
    if spec.str_at(&["type"]).is_some_and(|t| t != "EndpointSelector") {
        return None;
    }
    let by = spec.path(&["endpointSelector", "selectorRef"])?;
    if !matches!(by.str_at(&["kind"]), None | Some("Service" | "EndpointSelector")) {
        return None;
    }
    let ns = by.str_at(&["namespace"]).map(str::to_string).or_else(|| ns_of(d));
    Some((by.str_at(&["name"])?, ns))
}

/// Whether a Backend stands for one of `services` in namespace `ns`.
fn backend_is(d: &Node, services: &[String], ns: &Option<String>) -> bool {
    backend_service(d).is_some_and(|(s, sns)| same_ns(&sns, ns) && services.iter().any(|x| x == s))
}

/// Whether a route's backendRef (or a Backend's) reaches one of `services`
/// in namespace `ns`: a core Service directly or through an ExternalName
/// Service, or a Backend (GEP-4894, of the route's namespace) standing for it.
pub(crate) fn backend_ref_reaches(
    docs: &[Node],
    b: &Node,
    from: &Option<String>,
    services: &[String],
    ns: &Option<String>,
) -> bool {
    let group = b.str_at(&["group"]).unwrap_or("");
    let kind = b.str_at(&["kind"]).unwrap_or("Service");
    let name = b.str_at(&["name"]).unwrap_or("");
    if group.is_empty() && kind == "Service" {
        let bns = b.str_at(&["namespace"]).map(str::to_string).or_else(|| from.clone());
        return reached(docs, name, &bns, services, ns).is_some();
    }
    BACKEND_GROUPS.contains(&group)
        && matches!(kind, "Backend" | "XBackend")
        && docs.iter().any(|d| {
            is_backend(d)
                && kind_of(d) == kind
                && name_of(d) == name
                && same_ns(&ns_of(d), from)
                && backend_is(d, services, ns)
        })
}

/// What `--from-ingress` and `--from-httproute` found for one workload.
#[derive(Debug, Default)]
pub struct Plan {
    pub wanted: Vec<Wanted>,
    pub notes: Vec<String>,
    /// Ingresses whose affinity annotations are removed.
    ingresses: Vec<usize>,
    /// Routes (by document) and the indexes of their rules whose sessionPersistence is removed.
    routes: Vec<(usize, Vec<usize>)>,
    /// Backends and BackendLBPolicies (or XBackendTrafficPolicies) whose sessionPersistence is removed.
    policies: Vec<usize>,
}

fn id_of(d: &Node) -> String {
    match ns_of(d) {
        Some(ns) => format!("{}/{ns}/{}", kind_of(d), name_of(d)),
        None => format!("{}/{}", kind_of(d), name_of(d)),
    }
}

impl Plan {
    /// Adds the settings of one source; a setting already asked for by an
    /// earlier source keeps its value, with a warning when they differ.
    fn take(&mut self, source: &str, t: Translation) {
        for n in t.notes {
            match n.strip_prefix("warning: ") {
                Some(w) => self.notes.push(format!("warning: {source}: {w}")),
                None => self.notes.push(format!("{source}: {n}")),
            }
        }
        for w in t.wanted {
            match self.wanted.iter().find(|o| o.var == w.var) {
                Some(o) if o.value != w.value => self.notes.push(format!(
                    "warning: {source}: {} asks for {}={}, but {} already set it to {}: one sidecar has one \
                     setting, the first is kept",
                    w.from, w.var, w.value, o.from, o.value
                )),
                Some(_) => {}
                None => {
                    self.notes
                        .push(format!("{source}: {} -> {}={}", w.from, w.var, w.value));
                    self.wanted.push(Wanted {
                        from: format!("{source} {}", w.from),
                        ..w
                    });
                }
            }
        }
    }
}

/// Reads the Ingresses (`from_ingress`) and the HTTPRoutes, GRPCRoutes,
/// Backends, BackendLBPolicies and XBackendTrafficPolicies (`from_route`) of
/// `docs` that reach `services` in namespace `ns`, and what they ask of the
/// sidecar.
pub fn plan(
    docs: &[Node],
    services: &[String],
    ns: &Option<String>,
    from_ingress: bool,
    from_route: bool,
    has_key: bool,
) -> Plan {
    let mut plan = Plan::default();
    for (i, d) in docs.iter().enumerate() {
        let from = ns_of(d);
        match kind_of(d) {
            "Ingress" if from_ingress => {
                let backends = model::ingress_backends(d);
                let mut via = None;
                let mut paths = Vec::new();
                let mut reaches = false;
                for b in &backends {
                    if let Some((_, alias)) = reached(docs, b.service.as_str().unwrap_or(""), &from, services, ns) {
                        reaches = true;
                        via = via.or(alias);
                        paths.extend(b.path.and_then(Node::as_str));
                    }
                }
                let ann = Annotations::of(d);
                if !reaches || !ann.map.keys().any(|k| is_affinity_annotation(k)) {
                    continue;
                }
                let mut source = id_of(d);
                if let Some(alias) = via {
                    source = format!("{source} (through ExternalName Service {alias})");
                }
                plan.take(&source, from_annotations(&ann, &paths));
                let removed: Vec<&str> = ann.map.keys().copied().filter(|k| is_affinity_annotation(k)).collect();
                plan.notes.push(format!(
                    "{source}: removed {}: left there, ingress-nginx would write an affinity cookie of its own \
                     beside stickyd's",
                    removed
                        .iter()
                        .map(|k| format!("{NGINX}{k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                plan.ingresses.push(i);
            }
            "HTTPRoute" | "GRPCRoute" if from_route => {
                let rules = d.path(&["spec", "rules"]).map(Node::items).unwrap_or(&[]);
                let mut taken = Vec::new();
                for (r, rule) in rules.iter().enumerate() {
                    let Some(sp) = rule.get("sessionPersistence").filter(|s| !s.is_null()) else {
                        continue;
                    };
                    let reaches = rule
                        .get("backendRefs")
                        .map(Node::items)
                        .unwrap_or(&[])
                        .iter()
                        .any(|b| backend_ref_reaches(docs, b, &from, services, ns));
                    if !reaches {
                        continue;
                    }
                    let source = format!("{} rule {r}", id_of(d));
                    plan.take(&source, from_session_persistence(sp, has_key));
                    plan.notes.push(format!(
                        "{source}: removed sessionPersistence: left there, the Gateway would pin sessions with a \
                         cookie or header of its own beside stickyd's{}",
                        if session_name(sp, sp.str_at(&["type"]) == Some("Header")).is_some() {
                            ", of the same name"
                        } else {
                            ""
                        }
                    ));
                    taken.push(r);
                }
                if taken.len() > 1 {
                    plan.notes.push(format!(
                        "warning: {}: {} rules reach this Service with sessionPersistence; GEP-1619 gives each rule \
                         a session of its own, but stickyd has one cookie per pod, so the rules share it",
                        id_of(d),
                        taken.len()
                    ));
                }
                if !taken.is_empty() {
                    plan.routes.push((i, taken));
                }
            }
            _ => {}
        }
    }
    // A route rule's sessionPersistence overrides a policy's (GEP-1619): the
    // BackendLBPolicy of v1.1 to v1.2, its successor XBackendTrafficPolicy
    // (gateway-api #3705), and the Backend (GEP-4894) that gateway-api #4876
    // makes the attachment point. That PR only states the direction (a
    // `spec.sessionPersistence` of the same shape on the Backend, the route
    // rule's and the policy's deprecated); the field is not in the API yet,
    // so this reads what the PR proposes.
    for (i, d) in docs.iter().enumerate() {
        if !from_route {
            break;
        }
        let Some(sp) = d.path(&["spec", "sessionPersistence"]).filter(|s| !s.is_null()) else {
            continue;
        };
        let from = ns_of(d);
        let targets = if is_backend(d) {
            backend_is(d, services, ns)
        } else if matches!(
            kind_of(d),
            "BackendLBPolicy" | "XBackendTrafficPolicy" | "BackendTrafficPolicy"
        ) && d
            .str_at(&["apiVersion"])
            .is_some_and(|v| v.starts_with("gateway.networking."))
        {
            let spec = d.get("spec");
            let mut refs: Vec<&Node> = spec
                .and_then(|s| s.get("targetRefs"))
                .map(Node::items)
                .unwrap_or(&[])
                .iter()
                .collect();
            refs.extend(spec.and_then(|s| s.get("targetRef")));
            refs.iter().any(|r| {
                r.str_at(&["group"]).unwrap_or("").is_empty()
                    && r.str_at(&["kind"]) == Some("Service")
                    && same_ns(&from, ns)
                    && services.iter().any(|s| Some(s.as_str()) == r.str_at(&["name"]))
            })
        } else {
            false
        };
        if !targets {
            continue;
        }
        let source = id_of(d);
        plan.take(&source, from_session_persistence(sp, has_key));
        plan.notes.push(format!(
            "{source}: removed spec.sessionPersistence: left there, the Gateway would pin sessions beside stickyd"
        ));
        plan.policies.push(i);
    }
    plan
}

/// Removes what the plan took over from the documents.
pub fn apply(docs: &mut [Node], plan: &Plan) {
    for &i in &plan.ingresses {
        if let Some(ann) = docs[i]
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
            .and_then(Node::as_map_mut)
        {
            ann.retain(|(k, _)| {
                !k.as_str()
                    .and_then(|k| k.strip_prefix(NGINX))
                    .is_some_and(is_affinity_annotation)
            });
        }
    }
    for (i, rules) in &plan.routes {
        if let Some(list) = docs[*i]
            .get_mut("spec")
            .and_then(|s| s.get_mut("rules"))
            .and_then(Node::as_seq_mut)
        {
            for &r in rules {
                if let Some(m) = list.get_mut(r).and_then(Node::as_map_mut) {
                    m.retain(|(k, _)| k.as_str() != Some("sessionPersistence"));
                }
            }
        }
    }
    for &i in &plan.policies {
        if let Some(m) = docs[i].get_mut("spec").and_then(Node::as_map_mut) {
            m.retain(|(k, _)| k.as_str() != Some("sessionPersistence"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kyaml;

    fn node(y: &str) -> Node {
        kyaml::parse_stream(y).unwrap().remove(0).root
    }

    fn vars(t: &Translation) -> Vec<(&str, &str)> {
        t.wanted.iter().map(|w| (w.var, w.value.as_str())).collect()
    }

    #[test]
    fn gateway_durations() {
        assert_eq!(parse_gateway_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_gateway_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_gateway_duration("1s500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_gateway_duration("2h0m30s"), Some(Duration::from_secs(7230)));
        for bad in ["", "1d", "h", "1.5h", "-1s", "123456s", "10"] {
            assert_eq!(parse_gateway_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_story_annotations() {
        let ing = node(concat!(
            "metadata:\n  annotations:\n",
            "    nginx.ingress.kubernetes.io/affinity-mode: persistent\n",
            "    nginx.ingress.kubernetes.io/session-cookie-name: lbsticky\n",
            "    nginx.ingress.kubernetes.io/session-cookie-expires: \"172800\"\n",
            "    nginx.ingress.kubernetes.io/session-cookie-max-age: \"172800\"\n",
        ));
        let t = from_annotations(&Annotations::of(&ing), &["/mysite(/|$)(.*)"]);
        assert_eq!(
            vars(&t),
            vec![
                ("STICKYD_COOKIE_NAME", "lbsticky"),
                ("STICKYD_COOKIE_MAX_AGE", "172800"),
                ("STICKYD_COOKIE_PATH", "/")
            ]
        );
        assert!(
            t.notes.iter().any(|n| n.contains("regular expression")),
            "{:?}",
            t.notes
        );
    }

    #[test]
    fn every_annotation_of_the_table() {
        let ing = node(concat!(
            "metadata:\n  annotations:\n",
            "    nginx.ingress.kubernetes.io/affinity: cookie\n",
            "    nginx.ingress.kubernetes.io/affinity-mode: balanced\n",
            "    nginx.ingress.kubernetes.io/session-cookie-expires: \"3600\"\n",
            "    nginx.ingress.kubernetes.io/session-cookie-path: /shop(/|$)(.*)\n",
            "    nginx.ingress.kubernetes.io/session-cookie-samesite: none\n",
            "    nginx.ingress.kubernetes.io/session-cookie-conditional-samesite-none: \"true\"\n",
            "    nginx.ingress.kubernetes.io/session-cookie-secure: \"true\"\n",
            "    nginx.ingress.kubernetes.io/session-cookie-domain: example.com\n",
            "    nginx.ingress.kubernetes.io/session-cookie-change-on-failure: \"true\"\n",
        ));
        let t = from_annotations(&Annotations::of(&ing), &[]);
        assert_eq!(
            vars(&t),
            vec![
                ("STICKYD_COOKIE_MAX_AGE", "3600"),
                ("STICKYD_COOKIE_PATH", "/"),
                ("STICKYD_COOKIE_SAMESITE", "None"),
                ("STICKYD_COOKIE_SECURE", "true"),
                ("STICKYD_COOKIE_DOMAIN", "example.com"),
                ("STICKYD_ON_MISSING", "repin"),
            ]
        );
        assert!(t.notes.iter().any(|n| n.starts_with("warning: affinity-mode balanced")));
        assert!(t.notes.iter().any(|n| n.contains("/shop")));
        assert!(t.notes.iter().any(|n| n.contains("per-browser")));
        let off = node("metadata:\n  annotations:\n    nginx.ingress.kubernetes.io/affinity: none\n");
        assert!(from_annotations(&Annotations::of(&off), &[]).wanted.is_empty());
    }

    #[test]
    fn session_persistence_shapes() {
        let sp = node("sessionName: gep\nabsoluteTimeout: 1h30m\nidleTimeout: 10m\n");
        let t = from_session_persistence(&sp, true);
        assert_eq!(
            vars(&t),
            vec![
                ("STICKYD_COOKIE_NAME", "gep"),
                ("STICKYD_SESSION_MAX_LIFETIME", "5400s"),
                ("STICKYD_SESSION_IDLE_TIMEOUT", "600s"),
            ]
        );
        // Without a key the lifetimes cannot be enforced: dropped, with a warning.
        let t = from_session_persistence(&sp, false);
        assert_eq!(vars(&t), vec![("STICKYD_COOKIE_NAME", "gep")]);
        assert_eq!(t.notes.iter().filter(|n| n.starts_with("warning:")).count(), 2);
        let permanent = node("cookie: {name: c}\nabsoluteTimeout: 5m\ncookieConfig: {lifetimeType: Permanent}\n");
        assert_eq!(
            vars(&from_session_persistence(&permanent, false)),
            vec![("STICKYD_COOKIE_NAME", "c"), ("STICKYD_COOKIE_MAX_AGE", "300s")]
        );
        let header = node("type: Header\nsessionName: X-Session\n");
        assert_eq!(
            vars(&from_session_persistence(&header, false)),
            vec![("STICKYD_AFFINITY", "header"), ("STICKYD_AFFINITY_HEADER", "x-session")]
        );
    }

    #[test]
    fn the_schema_of_today_and_the_one_before() {
        // gateway-api #4873, #5046: cookie.name, cookie.path, cookie.lifetimeType.
        let today = node(concat!(
            "type: Cookie\nabsoluteTimeout: 10m\n",
            "cookie: {name: shop, path: /shop, lifetimeType: Permanent}\n",
        ));
        let t = from_session_persistence(&today, true);
        assert_eq!(
            vars(&t),
            vec![
                ("STICKYD_COOKIE_NAME", "shop"),
                ("STICKYD_COOKIE_PATH", "/shop"),
                ("STICKYD_COOKIE_MAX_AGE", "600s"),
                ("STICKYD_SESSION_MAX_LIFETIME", "600s"),
            ]
        );
        assert!(t.notes.is_empty(), "{:?}", t.notes);
        // The same, as written before #4873.
        let before = node("sessionName: shop\nabsoluteTimeout: 10m\ncookieConfig: {lifetimeType: Permanent}\n");
        let b = from_session_persistence(&before, true);
        assert_eq!(vars(&b)[0], ("STICKYD_COOKIE_NAME", "shop"));
        assert_eq!(vars(&b)[1], ("STICKYD_COOKIE_MAX_AGE", "600s"));
        // header.name, not the cookie's name, with type: Header.
        let header = node("type: Header\nheader: {name: Mcp-Session-Id}\n");
        assert_eq!(
            vars(&from_session_persistence(&header, false)),
            vec![
                ("STICKYD_AFFINITY", "header"),
                ("STICKYD_AFFINITY_HEADER", "mcp-session-id")
            ]
        );
        // A Path with regex syntax is no Path a browser matches.
        let regex = from_session_persistence(&node("cookie: {path: \"/app(/|$)\"}\n"), false);
        assert_eq!(vars(&regex), vec![("STICKYD_COOKIE_PATH", "/")]);
        assert!(regex.notes[0].starts_with("warning: cookie.path"), "{:?}", regex.notes);
        assert!(regex.notes[0].contains("--cookie-path /app"), "{:?}", regex.notes);
    }

    #[test]
    fn idle_timeout_is_mapped_with_a_note_that_upstream_removed_it() {
        let t = from_session_persistence(&node("idleTimeout: 30m\n"), true);
        assert_eq!(vars(&t), vec![("STICKYD_SESSION_IDLE_TIMEOUT", "1800s")]);
        assert_eq!(t.notes.len(), 1, "{:?}", t.notes);
        assert!(t.notes[0].contains("#4771"), "{:?}", t.notes);
        assert!(
            !t.notes[0].starts_with("warning:"),
            "stickyd enforces it: {:?}",
            t.notes
        );
    }

    #[test]
    fn backends_reach_the_service_they_select() {
        let docs: Vec<Node> = kyaml::parse_stream(concat!(
            "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\n",
            "metadata: {name: shop-backend, namespace: shop}\n",
            "spec: {type: EndpointSelector, endpointSelector: {selectorRef: {name: shop}},\n",
            "  sessionPersistence: {type: Cookie, cookie: {name: from-backend}}}\n",
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n",
            "metadata: {name: shop, namespace: shop}\n",
            "spec:\n  rules:\n  - backendRefs: [{kind: XBackend, group: gateway.networking.x-k8s.io, name: shop-backend}]\n",
            "    sessionPersistence: {type: Cookie, cookie: {name: from-route}}\n",
            "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\n",
            "metadata: {name: other, namespace: shop}\n",
            "spec: {type: EndpointSelector, endpointSelector: {selectorRef: {name: other}},\n",
            "  sessionPersistence: {type: Cookie, cookie: {name: other}}}\n",
        ))
        .unwrap()
        .into_iter()
        .map(|d| d.root)
        .collect();
        let ns = Some("shop".to_string());
        let plan = plan(&docs, &["shop".to_string()], &ns, false, true, true);
        // The route rule's name wins over the Backend's, which is a warning.
        assert_eq!(
            plan.wanted
                .iter()
                .map(|w| (w.var, w.value.as_str()))
                .collect::<Vec<_>>(),
            vec![("STICKYD_COOKIE_NAME", "from-route")]
        );
        assert!(
            plan.notes
                .iter()
                .any(|n| n.starts_with("warning: XBackend/shop/shop-backend: cookie.name asks for")),
            "{:?}",
            plan.notes
        );
        assert_eq!(plan.routes, vec![(1, vec![0])]);
        assert_eq!(plan.policies, vec![0], "the other Backend is not the Service's");
        let mut docs = docs;
        apply(&mut docs, &plan);
        assert!(docs[0].path(&["spec", "sessionPersistence"]).is_none());
        assert!(docs[2].path(&["spec", "sessionPersistence"]).is_some());
    }

    #[test]
    fn external_names() {
        let svc = |t: &str| node(&format!("spec: {{type: ExternalName, externalName: {t}}}"));
        assert_eq!(
            external_name_target(&svc("mysvc.otherns.svc.cluster.local")),
            Some(("mysvc", Some("otherns")))
        );
        assert_eq!(
            external_name_target(&svc("mysvc.otherns.")),
            Some(("mysvc", Some("otherns")))
        );
        assert_eq!(external_name_target(&svc("mysvc")), Some(("mysvc", None)));
        assert_eq!(external_name_target(&svc("www.example.com")), None);
        assert_eq!(external_name_target(&node("spec: {type: ClusterIP}")), None);
    }
}
