//! `stickyd lint`: finds the manifest mistakes that break stickiness.
//!
//! It reads Ingress (both `networking.k8s.io/v1` and the legacy
//! `serviceName`/`servicePort` form), HTTPRoute, GRPCRoute, Service, workload
//! and RBAC objects from any number of files, relates them to each other (an
//! Ingress backend or a route rule's to its Service, a Service to the pods it
//! selects, a stickyd sidecar to its ServiceAccount's bindings) and reports each problem with the line of the
//! offending field, a one-sentence explanation and the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::kyaml::{self, Node};
use crate::migrate::{self, Wanted};
use crate::model::*;
use stickyd_sidecar::config::REGEX_CHARS;
use stickyd_sidecar::config::{Config, ConfigError};
use stickyd_sidecar::drain::DrainParams;
use stickyd_sidecar::startup::Startup;

/// Arguments of `stickyd lint`.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Kubernetes YAML files to check (- for standard input). Give every file
    /// of the application at once: rules relate Ingresses, Services, workloads
    /// and RBAC objects across files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A rule: its stable id, severity and a short title.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub id: &'static str,
    /// The severity of its findings; of its graver case when it also warns.
    pub severity: Severity,
    /// Whether some of its findings are warnings: the milder case of the same
    /// mistake (SD012: a grace period that covers the drain but not stickyd's
    /// own drain after it).
    pub warns_too: bool,
    pub title: &'static str,
}

pub const REGEX_PATH_WITHOUT_COOKIE_PATH: Rule = Rule {
    id: "SD001",
    severity: Severity::Error,
    warns_too: false,
    title: "regex Ingress path with cookie affinity and no literal session-cookie-path",
};
pub const EXTERNALNAME_BACKEND: Rule = Rule {
    id: "SD002",
    severity: Severity::Error,
    warns_too: false,
    title: "cookie affinity on an Ingress whose backend is an ExternalName Service",
};
pub const DOTTED_SERVICE_NAME: Rule = Rule {
    id: "SD003",
    severity: Severity::Error,
    warns_too: false,
    title: "Ingress backend Service name with a dot (crossing namespaces)",
};
pub const SAMESITE_NONE_NOT_SECURE: Rule = Rule {
    id: "SD004",
    severity: Severity::Error,
    warns_too: false,
    title: "session-cookie-samesite: None without session-cookie-secure",
};
pub const BALANCED_AFFINITY: Rule = Rule {
    id: "SD005",
    severity: Severity::Warning,
    warns_too: false,
    title: "affinity-mode balanced moves sessions when the workload scales",
};
pub const CLIENTIP_BEHIND_INGRESS: Rule = Rule {
    id: "SD006",
    severity: Severity::Warning,
    warns_too: false,
    title: "Service with sessionAffinity: ClientIP behind an Ingress",
};
pub const SERVICE_BYPASSES_SIDECAR: Rule = Rule {
    id: "SD007",
    severity: Severity::Error,
    warns_too: false,
    title: "Service sends traffic past the stickyd sidecar",
};
pub const MISSING_RBAC: Rule = Rule {
    id: "SD008",
    severity: Severity::Error,
    warns_too: false,
    title: "stickyd cannot watch EndpointSlices (RBAC)",
};
pub const INVALID_CONFIG: Rule = Rule {
    id: "SD009",
    severity: Severity::Error,
    warns_too: false,
    title: "stickyd's environment would make it refuse to start",
};
pub const UNKNOWN_BACKEND: Rule = Rule {
    id: "SD010",
    severity: Severity::Warning,
    warns_too: false,
    title: "Ingress backend names no Service, but one with a similar name exists",
};
pub const AFFINITY_NOT_ENABLED: Rule = Rule {
    id: "SD011",
    severity: Severity::Warning,
    warns_too: false,
    title: "session-cookie annotations without affinity: cookie",
};
pub const GRACE_SHORTER_THAN_DRAIN: Rule = Rule {
    id: "SD012",
    severity: Severity::Error,
    warns_too: true,
    title: "terminationGracePeriodSeconds shorter than the session-aware drain",
};
pub const DRAIN_NOT_REACHED: Rule = Rule {
    id: "SD013",
    severity: Severity::Error,
    warns_too: true,
    title: "the app's preStop does not reach stickyd's session-aware drain",
};
pub const SAME_COOKIE: Rule = Rule {
    id: "SD014",
    severity: Severity::Error,
    warns_too: false,
    title: "the ingress or Gateway pins sessions with the cookie (or header) of the stickyd sidecar it reaches",
};
pub const AFFINITY_MISMATCH: Rule = Rule {
    id: "SD015",
    severity: Severity::Warning,
    warns_too: false,
    title: "affinity settings of an Ingress or route that the stickyd sidecar it reaches does not have",
};
pub const UNSIGNED: Rule = Rule {
    id: "SD016",
    severity: Severity::Warning,
    warns_too: false,
    title: "stickyd sidecar without a signing key: cookies and hop markers are unsigned",
};
pub const DRAIN_TOKEN: Rule = Rule {
    id: "SD017",
    severity: Severity::Error,
    warns_too: false,
    title: "the drain preStop does not send the sidecar's drain token",
};
pub const DRAIN_ABOVE_MAX: Rule = Rule {
    id: "SD018",
    severity: Severity::Warning,
    warns_too: false,
    title: "the drain preStop asks for more than the sidecar's STICKYD_DRAIN_MAX",
};
pub const ROUTE_CONTRADICTS_SIDECAR: Rule = Rule {
    id: "SD019",
    severity: Severity::Error,
    warns_too: true,
    title: "a route's sessionPersistence says the session travels where the stickyd sidecar behind it does not look",
};

/// Every rule, in id order.
pub const RULES: &[Rule] = &[
    REGEX_PATH_WITHOUT_COOKIE_PATH,
    EXTERNALNAME_BACKEND,
    DOTTED_SERVICE_NAME,
    SAMESITE_NONE_NOT_SECURE,
    BALANCED_AFFINITY,
    CLIENTIP_BEHIND_INGRESS,
    SERVICE_BYPASSES_SIDECAR,
    MISSING_RBAC,
    INVALID_CONFIG,
    UNKNOWN_BACKEND,
    AFFINITY_NOT_ENABLED,
    GRACE_SHORTER_THAN_DRAIN,
    DRAIN_NOT_REACHED,
    SAME_COOKIE,
    AFFINITY_MISMATCH,
    UNSIGNED,
    DRAIN_TOKEN,
    DRAIN_ABOVE_MAX,
    ROUTE_CONTRADICTS_SIDECAR,
];

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub file: String,
    pub line: usize,
    /// `Kind/name` (with `namespace/` when set) of the object at fault.
    pub object: String,
    pub message: String,
    pub fix: String,
}

/// A file that could not be read or parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// The result of linting a set of files.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub input_errors: Vec<InputError>,
    pub objects: usize,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == Severity::Error).count()
    }

    pub fn warnings(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == Severity::Warning).count()
    }

    /// 2 when an input could not be read, 1 when a finding is an error, else 0.
    pub fn exit_code(&self) -> i32 {
        if !self.input_errors.is_empty() {
            2
        } else if self.errors() > 0 {
            1
        } else {
            0
        }
    }
}

/// A Kubernetes object from one of the inputs.
struct Obj<'a> {
    file: &'a str,
    kind: &'a str,
    name: &'a str,
    namespace: Option<&'a str>,
    root: &'a Node,
}

impl Obj<'_> {
    fn id(&self) -> String {
        match self.namespace {
            Some(ns) => format!("{}/{}/{}", self.kind, ns, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }

    fn finding(&self, rule: Rule, severity: Severity, line: usize, message: String, fix: String) -> Finding {
        Finding {
            rule: rule.id,
            severity,
            file: self.file.to_string(),
            line,
            object: self.id(),
            message,
            fix,
        }
    }

    /// Whether two objects may be in the same namespace. An object without a
    /// namespace goes to whatever namespace it is applied to.
    fn same_namespace(&self, other: &Obj) -> bool {
        match (self.namespace, other.namespace) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

fn collect<'a>(file: &'a str, node: &'a Node, out: &mut Vec<Obj<'a>>) {
    let Some(kind) = node.str_at(&["kind"]) else {
        return;
    };
    if kind.ends_with("List") {
        for item in node.get("items").map(Node::items).unwrap_or(&[]) {
            collect(file, item, out);
        }
        return;
    }
    out.push(Obj {
        file,
        kind,
        name: node.str_at(&["metadata", "name"]).unwrap_or(""),
        namespace: node.str_at(&["metadata", "namespace"]),
        root: node,
    });
}

/// The pod template of a workload: its labels and pod spec.
fn pod_template<'a>(obj: &Obj<'a>) -> Option<(Option<&'a Node>, &'a Node)> {
    let root = obj.root;
    let template = match obj.kind {
        "Pod" => Some(root),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            root.path(&["spec", "template"])
        }
        "CronJob" => root.path(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }?;
    let spec = template.get("spec")?;
    Some((template.path(&["metadata", "labels"]), spec))
}

fn selects(service: &Node, labels: Option<&Node>) -> bool {
    let Some(selector) = service
        .path(&["spec", "selector"])
        .filter(|s| s.entries().next().is_some())
    else {
        return false;
    };
    let Some(labels) = labels else {
        return false;
    };
    selector
        .entries()
        .all(|(k, _, v)| labels.get(k).and_then(Node::as_str) == v.as_str())
}

/// A stickyd sidecar found in a workload.
struct Sidecar<'a> {
    container: &'a Node,
    listen_port: i64,
    /// The app port stickyd proxies to.
    upstream_port: i64,
}

fn sidecar<'a>(pod: &'a Node) -> Option<Sidecar<'a>> {
    let container = containers(pod).find(|c| is_stickyd(c))?;
    let port = |var: &str| {
        env_value(container, var)
            .and_then(|e| e.str_at(&["value"]))
            .and_then(port_of_addr)
            .or_else(|| port_of_addr(default_of(var)))
            .unwrap_or_else(|| panic!("{var}'s default has a port"))
    };
    Some(Sidecar {
        container,
        listen_port: port("STICKYD_LISTEN"),
        upstream_port: port("STICKYD_UPSTREAM"),
    })
}

/// Whether a sidecar's value of a setting gives what an Ingress or route
/// asks for, as far as keeping the session goes: an equal lifetime or mode; a
/// Path that covers the one asked for; Secure unless the sidecar turns it off;
/// the same Domain.
fn gives(var: &str, have: &str, want: &str) -> bool {
    let lower = |v: &str| v.trim().trim_start_matches('.').to_ascii_lowercase();
    match var {
        "STICKYD_COOKIE_MAX_AGE" | "STICKYD_SESSION_MAX_LIFETIME" | "STICKYD_SESSION_IDLE_TIMEOUT" => {
            stickyd_sidecar::config::parse_duration(have) == stickyd_sidecar::config::parse_duration(want)
        }
        "STICKYD_COOKIE_PATH" => {
            let have = if have.is_empty() { "/" } else { have };
            // A regex Path is SD009's.
            have.contains(REGEX_CHARS) || want.starts_with(have.trim_end_matches('/')) || have == "/"
        }
        // Not compared: an Ingress's SameSite=None was often for ingress-nginx's own cookie's sake.
        "STICKYD_COOKIE_SAMESITE" => true,
        "STICKYD_COOKIE_SECURE" => !matches!(lower(have).as_str(), "false" | "0" | "no"),
        _ => lower(have) == lower(want),
    }
}

/// The settings that say where a session's token travels: SD019 compares
/// them between a route and its sidecar.
const WHERE_THE_TOKEN_TRAVELS: [&str; 4] = [
    "STICKYD_AFFINITY",
    "STICKYD_AFFINITY_HEADER",
    "STICKYD_COOKIE_NAME",
    "STICKYD_COOKIE_PATH",
];

/// Where a sidecar reads a session's token, as its env (set in the manifest,
/// or the defaults) says: `None` when the env does not prove it.
struct Travels<'a> {
    /// The cookie it reads, and the variable that names it.
    cookie: Option<(&'a str, &'static str)>,
    /// The cookie's Path (stickyd's own cookie only).
    path: Option<&'a str>,
    /// The header it reads, and the variable that names it.
    header: Option<(&'a str, &'static str)>,
}

/// Where a sidecar reads the token. `app-cookie` and `app-header` read the
/// app's own cookie (STICKYD_APP_COOKIE) or header (STICKYD_APP_HEADER).
fn travels(side: &Node) -> Option<Travels<'_>> {
    let mode = literal(side, "STICKYD_AFFINITY")?.to_ascii_lowercase();
    let named = |var: &'static str| literal(side, var).map(|v| (v, var));
    let mut t = Travels {
        cookie: None,
        path: None,
        header: None,
    };
    for m in mode.split(',').map(str::trim) {
        match m {
            "cookie" => {
                t.cookie = named("STICKYD_COOKIE_NAME");
                t.path = literal(side, "STICKYD_COOKIE_PATH");
            }
            "header" => t.header = named("STICKYD_AFFINITY_HEADER"),
            "app-cookie" => t.cookie = named("STICKYD_APP_COOKIE"),
            "app-header" => t.header = named("STICKYD_APP_HEADER"),
            // A mode stickyd refuses is SD009's.
            _ => return None,
        }
    }
    Some(t)
}

/// SD019: what a route's sessionPersistence (as `wanted`, the translation
/// `inject --from-httproute` makes) says of where the token travels, against
/// the sidecar of workload `who`: an error when a client that follows the
/// route never brings the sidecar its token (the wrong transport, header or
/// Path), a warning when only the cookie's name differs (stickyd's cookie
/// still keeps the session, under another name than the route promises).
fn contradiction(wanted: &[Wanted], side: &Node, who: &str) -> Option<(Severity, String)> {
    let value = |var: &str| wanted.iter().find(|w| w.var == var);
    let t = travels(side)?;
    let mode = literal(side, "STICKYD_AFFINITY").unwrap_or("cookie");
    let sidecar = format!("the stickyd sidecar of {who} behind it");
    if value("STICKYD_AFFINITY").is_some_and(|w| w.value == "header") {
        let Some((have, var)) = t.header else {
            return Some((
                Severity::Error,
                format!(
                    "this route's sessionPersistence is type: Header, so its clients send the session's token in a \
                     header, but {sidecar} reads none (STICKYD_AFFINITY={mode}): a client without cookies, which is \
                     what a header is for, starts a new session on every request."
                ),
            ));
        };
        let w = value("STICKYD_AFFINITY_HEADER")?;
        return (!have.eq_ignore_ascii_case(&w.value)).then(|| {
            (
                Severity::Error,
                format!(
                    "this route's sessionPersistence {} says clients send the session's token in the header {:?}, \
                     but {sidecar} reads {have:?} ({var}): such a client starts a new session on every request.",
                    w.from, w.value
                ),
            )
        });
    }
    let Some((have, var)) = t.cookie else {
        return Some((
            Severity::Error,
            format!(
                "this route's sessionPersistence is type: Cookie, so browsers keep the session in a cookie, but \
                 {sidecar} sets and reads none (STICKYD_AFFINITY={mode}): it sends its token in a response header, \
                 which browsers never send back, so every request of a browser starts a new session."
            ),
        ));
    };
    if let (Some(w), Some(path)) = (value("STICKYD_COOKIE_PATH"), t.path) {
        let path = if path.is_empty() { "/" } else { path };
        // A regex Path is SD009's.
        if !(path == "/" || path.contains(REGEX_CHARS) || within(&w.value, path)) {
            return Some((
                Severity::Error,
                format!(
                    "this route's sessionPersistence {} keeps the session's cookie on {:?}, but {sidecar} sends its \
                     cookie with Path={path} (STICKYD_COOKIE_PATH), which browsers do not send on the rest of {:?}: \
                     those requests start new sessions.",
                    w.from, w.value, w.value
                ),
            ));
        }
    }
    // Cookie names are case-sensitive (RFC 6265), header names are not.
    let w = value("STICKYD_COOKIE_NAME")?;
    (have != w.value).then(|| {
        (
            Severity::Warning,
            format!(
                "this route's sessionPersistence {} names the session's cookie {:?}, but the cookie that keeps the \
                 session on its pod is {have:?}, the {var} of {sidecar}: a client or rule that relies on {:?} (a \
                 logout that clears it, a cache or firewall rule that spares it) misses the real one.",
                w.from, w.value, w.value
            ),
        )
    })
}

/// Whether the cookie Path `path` covers every request under `prefix`
/// (RFC 6265 path-match: the same, or `path` followed by `/`).
fn within(prefix: &str, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    prefix == path || prefix.strip_prefix(path).is_some_and(|rest| rest.starts_with('/'))
}

struct Linter<'a> {
    objs: Vec<Obj<'a>>,
    findings: Vec<Finding>,
}

impl<'a> Linter<'a> {
    fn services_named(&self, near: &Obj, name: &str) -> Option<&Obj<'a>> {
        self.objs
            .iter()
            .find(|o| o.kind == "Service" && o.name == name && o.same_namespace(near))
    }

    /// Whether the pods of Service `name` (in namespace `ns`, if known) run the stickyd sidecar.
    fn stickyd_behind(&self, name: &str, ns: Option<&str>) -> bool {
        !self.sidecars_behind(name, ns).is_empty()
    }

    /// The workloads behind Service `name` (in namespace `ns`, if known) and their stickyd sidecars.
    fn sidecars_behind(&self, name: &str, ns: Option<&str>) -> Vec<(&Obj<'a>, &'a Node)> {
        let Some(svc) = self.objs.iter().find(|o| {
            o.kind == "Service" && o.name == name && (ns.is_none() || o.namespace.is_none() || o.namespace == ns)
        }) else {
            return Vec::new();
        };
        self.objs
            .iter()
            .filter(|w| w.same_namespace(svc))
            .filter_map(|w| {
                let (labels, pod) = pod_template(w)?;
                Some((w, sidecar(pod).filter(|_| selects(svc.root, labels))?.container))
            })
            .collect()
    }

    /// The sidecars behind Service `name` seen from namespace `ns`: its
    /// pods', or those of the Service an ExternalName Service `name` points to.
    fn sidecars_reached(&self, name: &str, ns: Option<&str>) -> Vec<(&Obj<'a>, &'a Node)> {
        let alias = self.objs.iter().find(|o| {
            o.kind == "Service" && o.name == name && (ns.is_none() || o.namespace.is_none() || o.namespace == ns)
        });
        match alias.and_then(|a| Some((a, migrate::external_name_target(a.root)?))) {
            Some((a, (real, real_ns))) => self.sidecars_behind(real, real_ns.or(a.namespace)),
            None => self.sidecars_behind(name, ns),
        }
    }

    /// SD014 and SD015 for one Ingress or route rule and the sidecars it
    /// reaches: `names` the cookie (or header) names it pins with and the
    /// variable of the sidecar's that names its own, `wanted` what it asks of
    /// the sidecar, `fix` how to move it there.
    fn affinity_against(
        &self,
        obj: &Obj,
        at: (usize, usize),
        names: &[(&str, &str)],
        wanted: &[Wanted],
        fix: &str,
        sidecars: &[(&Obj, &Node)],
    ) -> Vec<Finding> {
        let mut out = Vec::new();
        for (w, side) in sidecars {
            for (name, var) in names {
                if literal(side, var).is_some_and(|v| v.eq_ignore_ascii_case(name)) {
                    out.push(obj.finding(
                        SAME_COOKIE,
                        SAME_COOKIE.severity,
                        at.0,
                        format!(
                            "this {} pins sessions with {name:?}, which is also the {var} of the stickyd sidecar of \
                             {} behind it: the two write the same name with values the other cannot read, so each \
                             replaces the other's and sessions keep being placed anew.",
                            obj.kind,
                            w.id()
                        ),
                        fix.to_string(),
                    ));
                }
            }
            let differ: Vec<String> = wanted
                .iter()
                .filter(|x| x.var != "STICKYD_COOKIE_NAME")
                .filter_map(|x| {
                    let have = literal(side, x.var)?;
                    (!gives(x.var, have, &x.value)).then(|| {
                        let have = if have.is_empty() {
                            "unset".to_string()
                        } else {
                            have.to_string()
                        };
                        format!("{} asks for {}={} (the sidecar has {have})", x.from, x.var, x.value)
                    })
                })
                .collect();
            if !differ.is_empty() {
                out.push(obj.finding(
                    AFFINITY_MISMATCH,
                    AFFINITY_MISMATCH.severity,
                    at.1,
                    format!(
                        "the cookie that keeps a session on its pod is the one of the stickyd sidecar of {}, but: {}.",
                        w.id(),
                        differ.join("; ")
                    ),
                    fix.to_string(),
                ));
            }
        }
        out
    }

    fn lint(&mut self) {
        for i in 0..self.objs.len() {
            match self.objs[i].kind {
                "Ingress" => self.ingress(i),
                "HTTPRoute" | "GRPCRoute" => self.route(i),
                _ => {
                    if pod_template(&self.objs[i]).is_some() {
                        self.workload(i);
                    }
                }
            }
        }
        self.findings
            .sort_by(|a, b| (&a.file, a.line, a.rule).cmp(&(&b.file, b.line, b.rule)));
        self.findings.dedup();
    }

    fn ingress(&mut self, i: usize) {
        let obj = &self.objs[i];
        let ann = Annotations::of(obj.root);
        let backends = ingress_backends(obj.root);
        let affinity = ann.affinity_intended();
        let mut out: Vec<(Rule, usize, String, String)> = Vec::new();
        let mut extra: Vec<Finding> = Vec::new();

        if affinity && ann.get("affinity").is_none() {
            out.push((
                AFFINITY_NOT_ENABLED,
                ann.line,
                "session-cookie and affinity annotations are set but nginx.ingress.kubernetes.io/affinity is not, \
                 and ingress-nginx ignores them unless affinity is cookie."
                    .into(),
                "add nginx.ingress.kubernetes.io/affinity: cookie".into(),
            ));
        }

        if affinity {
            let cookie_path = ann.get("session-cookie-path");
            let regex_path = backends
                .iter()
                .filter_map(|b| b.path)
                .find(|p| p.as_str().is_some_and(|s| s.contains(REGEX_CHARS)));
            match (cookie_path, regex_path) {
                (Some(cp), _) if cp.contains(REGEX_CHARS) => out.push((
                    REGEX_PATH_WITHOUT_COOKIE_PATH,
                    ann.line_of("session-cookie-path"),
                    format!(
                        "session-cookie-path {cp:?} is a regular expression, but browsers match a cookie's Path \
                         literally, so they never send the affinity cookie back and every request may land on \
                         another pod."
                    ),
                    format!(
                        "set nginx.ingress.kubernetes.io/session-cookie-path to a literal prefix such as {:?}",
                        literal_prefix(cp)
                    ),
                )),
                (None, Some(p)) => {
                    let path = p.as_str().unwrap_or_default();
                    // Without use-regex or rewrite-target, ingress-nginx still
                    // defaults the cookie Path to the path as written.
                    let why = if ann.regex_mode() {
                        "is a regular expression (use-regex)"
                    } else {
                        "has regular expression syntax"
                    };
                    out.push((
                        REGEX_PATH_WITHOUT_COOKIE_PATH,
                        p.line,
                        format!(
                            "path {path:?} {why} and no session-cookie-path is set: ingress-nginx then sends the \
                             affinity cookie with Path={path}, a path browsers never match, so the cookie never \
                             comes back and stickiness is lost."
                        ),
                        format!(
                            "add the annotation nginx.ingress.kubernetes.io/session-cookie-path: {:?}",
                            literal_prefix(path)
                        ),
                    ));
                }
                _ => {}
            }

            if ann
                .get("session-cookie-samesite")
                .is_some_and(|s| s.eq_ignore_ascii_case("none"))
                && !ann
                    .get("session-cookie-secure")
                    .is_some_and(|s| s.eq_ignore_ascii_case("true"))
                // With TLS on the Ingress, ingress-nginx marks the cookie Secure by itself.
                && obj.root.path(&["spec", "tls"]).is_none_or(|t| t.items().is_empty())
            {
                out.push((
                    SAMESITE_NONE_NOT_SECURE,
                    ann.line_of("session-cookie-samesite"),
                    "session-cookie-samesite is None, but without session-cookie-secure or a tls section the \
                     cookie is sent without Secure, and browsers reject SameSite=None cookies that are not Secure, \
                     so the affinity cookie is never stored."
                        .into(),
                    "add nginx.ingress.kubernetes.io/session-cookie-secure: \"true\" (and serve the host over HTTPS)"
                        .into(),
                ));
            }

            match ann.get("affinity-mode") {
                Some(m) if m.eq_ignore_ascii_case("balanced") => out.push((
                    BALANCED_AFFINITY,
                    ann.line_of("affinity-mode"),
                    "affinity-mode balanced redistributes existing sessions to new pods when the workload scales \
                     up, so those users lose their session."
                        .into(),
                    "set nginx.ingress.kubernetes.io/affinity-mode: persistent, or run stickyd as a sidecar \
                     (stickyd inject), which keeps each session on its pod while that pod exists"
                        .into(),
                )),
                None => out.push((
                    BALANCED_AFFINITY,
                    ann.line,
                    "affinity-mode is not set, so ingress-nginx uses balanced, which redistributes existing sessions \
                     to new pods when the workload scales up, and those users lose their session."
                        .into(),
                    "add nginx.ingress.kubernetes.io/affinity-mode: persistent if sessions must survive scaling".into(),
                )),
                _ => {}
            }
        }

        for b in &backends {
            let name = b.service.as_str().unwrap_or_default();
            if name.contains('.') {
                let mut parts = name.split('.');
                let (svc, ns) = (parts.next().unwrap_or(name), parts.next().unwrap_or("its namespace"));
                out.push((
                    DOTTED_SERVICE_NAME,
                    b.service.line,
                    format!(
                        "backend Service {name:?} contains a dot, but an Ingress can only route to a Service in its \
                         own namespace by plain name, so the API server rejects it (and an ExternalName Service as \
                         a workaround loses cookie affinity)."
                    ),
                    format!(
                        "create this Ingress in namespace {ns:?} next to the app and name the backend {svc:?}: an \
                         Ingress belongs with the application, only the controller is shared"
                    ),
                ));
                continue;
            }
            let svc = match self.services_named(obj, name) {
                Some(s) => Some(s),
                None => {
                    let similar = self
                        .objs
                        .iter()
                        .filter(|o| o.kind == "Service" && o.same_namespace(obj) && !o.name.is_empty())
                        .map(|o| (strsim::levenshtein(o.name, name), o))
                        .filter(|(d, _)| *d <= 2)
                        .min_by_key(|(d, _)| *d);
                    if let Some((_, s)) = similar {
                        out.push((
                            UNKNOWN_BACKEND,
                            b.service.line,
                            format!(
                                "backend Service {name:?} is not among the Services checked, but {:?} is, so this \
                                 backend probably has a typo and the controller answers 503 for it.",
                                s.name
                            ),
                            format!("name the backend {:?} (the other checks assume it)", s.name),
                        ));
                    }
                    similar.map(|(_, s)| s)
                }
            };
            let Some(svc) = svc else { continue };
            let spec = svc.root.get("spec");
            let ty = spec.and_then(|s| s.str_at(&["type"]));
            let target = spec.and_then(|s| s.str_at(&["externalName"])).unwrap_or("?");
            let mut parts = target.split('.');
            let (real, ns) = (parts.next().unwrap_or(target), parts.next());
            // Behind the ExternalName, pods that run stickyd keep sessions sticky themselves.
            if affinity && ty == Some("ExternalName") && !self.stickyd_behind(real, ns) {
                let fix = match ns {
                    Some(ns) => format!(
                        "move this Ingress into namespace {ns:?} and point it at Service {real:?} directly, or add \
                         stickyd to the pods behind {real:?} (stickyd inject) so stickiness no longer depends on \
                         the ingress"
                    ),
                    None => format!(
                        "point the Ingress at the real Service {real:?} in its own namespace, or add stickyd to the \
                         pods behind it (stickyd inject)"
                    ),
                };
                out.push((
                    EXTERNALNAME_BACKEND,
                    b.service.line,
                    format!(
                        "backend Service {:?} is an ExternalName Service (-> {target}), which has no endpoints: \
                         ingress-nginx sees a single upstream, so its affinity cookie pins nothing and the real \
                         Service spreads requests over all pods, silently losing stickiness.",
                        svc.name
                    ),
                    fix,
                ));
            }
            if let Some(aff) = spec.and_then(|s| s.get("sessionAffinity")) {
                if aff.as_str() == Some("ClientIP") {
                    let (file, line, id) = (svc.file.to_string(), aff.line, svc.id());
                    extra.push(Finding {
                        rule: CLIENTIP_BEHIND_INGRESS.id,
                        severity: CLIENTIP_BEHIND_INGRESS.severity,
                        file,
                        line,
                        object: id,
                        message: format!(
                            "Service {:?} is behind Ingress {:?}, so every request comes from the ingress \
                             controller's IP and ClientIP affinity pins all users of a controller pod to one pod \
                             (or is bypassed when the controller routes to endpoints directly).",
                            svc.name, obj.name
                        ),
                        fix: "remove sessionAffinity: ClientIP and use cookie affinity on the Ingress, or stickyd"
                            .into(),
                    });
                }
            }
        }
        let obj = &self.objs[i];
        let found: Vec<Finding> = out
            .into_iter()
            .map(|(rule, line, message, fix)| obj.finding(rule, rule.severity, line, message, fix))
            .collect();
        self.findings.extend(found);
        self.findings.extend(extra);

        // SD014, SD015: the affinity annotations against the sidecars they reach.
        if !affinity {
            return;
        }
        let mut sidecars: Vec<(&Obj, &Node)> = Vec::new();
        let mut paths = Vec::new();
        for b in &backends {
            let name = b.service.as_str().unwrap_or_default();
            let behind = self.sidecars_reached(name, obj.namespace);
            if !behind.is_empty() {
                paths.extend(b.path.and_then(Node::as_str));
            }
            for s in behind {
                if !sidecars.iter().any(|(w, _)| std::ptr::eq(*w, s.0)) {
                    sidecars.push(s);
                }
            }
        }
        let wanted = migrate::from_annotations(&ann, &paths).wanted;
        let cookie = migrate::nginx_cookie_name(&ann);
        // ingress-nginx writes its cookie only with affinity: cookie.
        let names: Vec<(&str, &str)> = ann
            .get("affinity")
            .filter(|a| a.eq_ignore_ascii_case("cookie"))
            .map(|_| (cookie, "STICKYD_COOKIE_NAME"))
            .into_iter()
            .collect();
        let fix = "stickyd inject --from-ingress moves these annotations onto the sidecar and removes them from the \
                   Ingress; or remove the affinity and session-cookie-* annotations and set the sidecar's env";
        let at = (ann.line_of("session-cookie-name"), ann.line);
        let found = self.affinity_against(obj, at, &names, &wanted, fix, &sidecars);
        self.findings.extend(found);
    }

    /// SD014, SD015 for the sessionPersistence of a route's rules.
    fn route(&mut self, i: usize) {
        let obj = &self.objs[i];
        let rules = obj.root.path(&["spec", "rules"]).map(Node::items).unwrap_or(&[]);
        let mut found = Vec::new();
        for rule in rules {
            let Some(sp) = rule.get("sessionPersistence").filter(|s| !s.is_null()) else {
                continue;
            };
            let mut sidecars: Vec<(&Obj, &Node)> = Vec::new();
            for b in rule.get("backendRefs").map(Node::items).unwrap_or(&[]) {
                let core = b.str_at(&["group"]).unwrap_or("").is_empty()
                    && b.str_at(&["kind"]).unwrap_or("Service") == "Service";
                let Some(name) = b.str_at(&["name"]).filter(|_| core) else {
                    continue;
                };
                let ns = b.str_at(&["namespace"]).or(obj.namespace);
                for s in self.sidecars_reached(name, ns) {
                    if !sidecars.iter().any(|(w, _)| std::ptr::eq(*w, s.0)) {
                        sidecars.push(s);
                    }
                }
            }
            // Lifetimes are asked for whether or not the sidecar signs: one it cannot enforce is a mismatch.
            let wanted = migrate::from_session_persistence(sp, true).wanted;
            let names: Vec<(&str, &str)> = wanted
                .iter()
                .filter(|w| matches!(w.var, "STICKYD_COOKIE_NAME" | "STICKYD_AFFINITY_HEADER"))
                .map(|w| (w.value.as_str(), w.var))
                .collect();
            let fix = "stickyd inject --from-httproute moves sessionPersistence onto the sidecar and removes it from \
                       the route; or remove it and set the sidecar's env (session lifetimes need a signing key)";
            let line = rule.key("sessionPersistence").map_or(rule.line, |k| k.line);
            // Where the token travels is SD019's; SD015 compares the rest (the lifetimes).
            let rest: Vec<Wanted> = wanted
                .iter()
                .filter(|w| !WHERE_THE_TOKEN_TRAVELS.contains(&w.var))
                .cloned()
                .collect();
            found.extend(self.affinity_against(obj, (line, line), &names, &rest, fix, &sidecars));
            for (w, side) in &sidecars {
                if let Some((severity, message)) = contradiction(&wanted, side, &w.id()) {
                    let fix = format!(
                        "make the route's sessionPersistence and the env of the sidecar of {} say the same: stickyd \
                         inject --from-httproute sets that env from the route and removes sessionPersistence from it",
                        w.id()
                    );
                    found.push(obj.finding(ROUTE_CONTRADICTS_SIDECAR, severity, line, message, fix));
                }
            }
        }
        self.findings.extend(found);
    }

    fn workload(&mut self, i: usize) {
        let obj = &self.objs[i];
        let Some((labels, pod)) = pod_template(obj) else { return };
        let Some(side) = sidecar(pod) else { return };
        let mut out: Vec<(Rule, usize, String, String)> = Vec::new();
        let sidecar_port_name = side
            .container
            .get("ports")
            .map(Node::items)
            .unwrap_or(&[])
            .iter()
            .find(|p| p.get("containerPort").and_then(Node::as_i64) == Some(side.listen_port))
            .and_then(|p| p.str_at(&["name"]))
            .map(str::to_string);

        // SD007: traffic for the app's port must go through the sidecar, and
        // the Service stickyd watches must list the sidecar's port.
        let fix_target = sidecar_port_name
            .clone()
            .unwrap_or_else(|| side.listen_port.to_string());
        let watched = env_value(side.container, "STICKYD_SERVICE").and_then(|e| e.str_at(&["value"]));
        for svc in self.objs.iter().filter(|o| {
            o.kind == "Service" && o.same_namespace(obj) && (selects(o.root, labels) || Some(o.name) == watched)
        }) {
            let ports = svc.root.path(&["spec", "ports"]).map(Node::items).unwrap_or(&[]);
            let mut reaches_sidecar = false;
            let mut bypassed = false;
            for port in ports {
                let Some((target, line)) = resolve_target(port, pod) else {
                    continue;
                };
                reaches_sidecar |= target == side.listen_port;
                if target != side.upstream_port {
                    continue;
                }
                bypassed = true;
                self.findings.push(Finding {
                    rule: SERVICE_BYPASSES_SIDECAR.id,
                    severity: SERVICE_BYPASSES_SIDECAR.severity,
                    file: svc.file.to_string(),
                    line: if line == 0 { port.line } else { line },
                    object: svc.id(),
                    message: format!(
                        "Service {:?} sends port {} straight to the app's port {target} in the pods of {}, past the \
                         stickyd sidecar (port {}), so those requests are never routed by the cookie.",
                        svc.name,
                        port.get("port").and_then(Node::as_str).unwrap_or("?"),
                        obj.id(),
                        side.listen_port
                    ),
                    fix: format!("set targetPort: {fix_target} on this Service port"),
                });
            }
            if Some(svc.name) == watched && !reaches_sidecar && !bypassed && selects(svc.root, labels) {
                let line = svc
                    .root
                    .path(&["spec"])
                    .and_then(|s| s.key("ports"))
                    .map_or(svc.root.line, |k| k.line);
                self.findings.push(Finding {
                    rule: SERVICE_BYPASSES_SIDECAR.id,
                    severity: SERVICE_BYPASSES_SIDECAR.severity,
                    file: svc.file.to_string(),
                    line,
                    object: svc.id(),
                    message: format!(
                        "Service {:?} is the one stickyd watches (STICKYD_SERVICE) but none of its ports targets the \
                         sidecar's port {}, so its EndpointSlices never list the peers and stickyd cannot route to \
                         them.",
                        svc.name, side.listen_port
                    ),
                    fix: format!("set targetPort: {fix_target} on the Service port that serves the app"),
                });
            }
        }

        // SD009: the sidecar's own configuration.
        let env = sidecar_env(side.container, obj.namespace);
        if let Some((var, line, msg)) = env.file_problem.clone() {
            out.push((
                INVALID_CONFIG,
                line,
                msg,
                format!("mount the Secret holding the key at the directory of {var}, or fix the path"),
            ));
        }
        if let Some(e) = config_error(&env) {
            let line = env_value(side.container, e.var()).map_or(side.container.line, |n| n.line);
            out.push((
                INVALID_CONFIG,
                line,
                format!("stickyd would exit at start: {e}."),
                config_fix(&e, obj.name),
            ));
        }

        // SD016: a signing key, from a literal, a Secret or a file (envFrom may hold one).
        let keyed = ["STICKYD_COOKIE_SECRET", "STICKYD_COOKIE_SECRET_FILE"]
            .iter()
            .any(|v| is_set(side.container, v));
        if !keyed && !env.has_env_from {
            let service = literal(side.container, "STICKYD_SERVICE")
                .filter(|s| !s.is_empty())
                .unwrap_or("SERVICE");
            out.push((
                UNSIGNED,
                side.container.line,
                "the stickyd sidecar has no signing key (neither STICKYD_COOKIE_SECRET nor \
                 STICKYD_COOKIE_SECRET_FILE), so its cookies and the hop markers between its peers are unsigned: any \
                 client can pin itself to any pod by naming it, and a hop marker it sends is believed."
                    .into(),
                format!(
                    "create a Secret with a random key (kubectl create secret generic stickyd-{service} \
                     --from-literal=key=$(openssl rand -hex 32)), mount it read-only in the stickyd container and set \
                     STICKYD_COOKIE_SECRET_FILE to its file, the same Secret for every sidecar behind the Service \
                     (stickyd inject writes all of it)"
                ),
            ));
        }

        // SD008: RBAC to watch EndpointSlices.
        let kubernetes = env
            .vars
            .get("STICKYD_ENDPOINTS")
            .is_none_or(|v| v.trim() == "kubernetes");
        if kubernetes {
            let sa_node = pod.get("serviceAccountName").or_else(|| pod.get("serviceAccount"));
            let sa = sa_node.and_then(Node::as_str).unwrap_or("default");
            let line = sa_node.map_or(side.container.line, |n| n.line);
            if let Some(problem) = self.rbac_problem(obj, pod, sa) {
                out.push((
                    MISSING_RBAC,
                    line,
                    format!("{problem}, so stickyd cannot watch its peers and never becomes ready."),
                    format!(
                        "add a Role granting get, list and watch on endpointslices (apiGroup discovery.k8s.io) and \
                         a RoleBinding of it to ServiceAccount {sa:?} (stickyd inject adds both), or pass the file \
                         that has them"
                    ),
                ));
            }
        }
        let found: Vec<Finding> = out
            .into_iter()
            .map(|(rule, line, message, fix)| obj.finding(rule, rule.severity, line, message, fix))
            .collect();
        self.findings.extend(found);

        // SD012, SD013, SD017, SD018: the app's preStop, the drain and the grace period.
        let found: Vec<Finding> = drain_findings(pod, &side)
            .into_iter()
            .map(|(rule, severity, line, message, fix)| obj.finding(rule, severity, line, message, fix))
            .collect();
        self.findings.extend(found);
    }

    /// What is missing for ServiceAccount `sa` to watch EndpointSlices, if anything.
    fn rbac_problem(&self, obj: &Obj, pod: &Node, sa: &str) -> Option<String> {
        if pod
            .get("automountServiceAccountToken")
            .is_some_and(|n| n.as_str() == Some("false"))
        {
            return Some("the pod sets automountServiceAccountToken: false".into());
        }
        let bindings: Vec<&Obj> = self
            .objs
            .iter()
            .filter(|b| (b.kind == "RoleBinding" && b.same_namespace(obj)) || b.kind == "ClusterRoleBinding")
            .filter(|b| {
                b.root.get("subjects").map(Node::items).unwrap_or(&[]).iter().any(|s| {
                    s.str_at(&["kind"]) == Some("ServiceAccount")
                        && s.str_at(&["name"]) == Some(sa)
                        && match (s.str_at(&["namespace"]), obj.namespace) {
                            (Some(a), Some(b)) => a == b,
                            (Some(_), None) | (None, _) => b.kind == "RoleBinding" || obj.namespace.is_none(),
                        }
                })
            })
            .collect();
        if bindings.is_empty() {
            return Some(format!(
                "no RoleBinding or ClusterRoleBinding in the files checked binds ServiceAccount {sa:?}"
            ));
        }
        let mut missing: Vec<&str> = vec!["get", "list", "watch"];
        let mut roles_seen = Vec::new();
        for b in bindings {
            let kind = b.root.str_at(&["roleRef", "kind"]).unwrap_or("Role");
            let name = b.root.str_at(&["roleRef", "name"]).unwrap_or("");
            roles_seen.push(format!("{kind} {name:?}"));
            let role = self
                .objs
                .iter()
                .find(|r| r.kind == kind && r.name == name && (kind == "ClusterRole" || r.same_namespace(b)));
            for rule in role.and_then(|r| r.root.get("rules")).map(Node::items).unwrap_or(&[]) {
                let has = |field: &str, want: &str| {
                    rule.get(field)
                        .map(Node::items)
                        .unwrap_or(&[])
                        .iter()
                        .any(|v| matches!(v.as_str(), Some(s) if s == want || s == "*"))
                };
                if has("apiGroups", "discovery.k8s.io") && has("resources", "endpointslices") {
                    missing.retain(|v| !has("verbs", v));
                }
            }
        }
        if missing.is_empty() {
            None
        } else {
            Some(format!(
                "ServiceAccount {sa:?} is bound to {} but is not granted {} on endpointslices.discovery.k8s.io",
                roles_seen.join(", "),
                missing.join(", ")
            ))
        }
    }
}

type Found = (Rule, Severity, usize, String, String);

/// SD012 and SD013: whether the app's preStop reaches stickyd's drain, and
/// whether the grace period lets the drain and then the sidecar finish.
fn drain_findings(pod: &Node, side: &Sidecar) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    let admin = admin_listen(side.container);
    let admin_entry = env_value(side.container, "STICKYD_ADMIN_LISTEN");
    let admin_line = admin_entry.map_or(side.container.line, |n| n.line);
    // From a ConfigMap (or possibly envFrom) the admin address is not known
    // offline, and an invalid one is SD009's: no port to compare then.
    let known = match admin_entry {
        Some(e) => e.get("value").is_some(),
        None => side.container.get("envFrom").is_none_or(|e| e.items().is_empty()),
    };
    let admin_port = port_of_addr(admin).filter(|_| known);
    let loopback = known && admin.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
    let other_port = |n: i64| admin_port.is_some_and(|a| a != n);
    let good = drain_path(&DrainParams::default());
    let good_get = |port: &str| format!("httpGet: {{path: {good:?}, port: {port}}}");
    let admin_text = admin_port.map_or_else(|| "the admin port".to_string(), |p| p.to_string());
    let containers = pod.get("containers").map(Node::items).unwrap_or(&[]);
    let unreachable =
        |line: usize, message: String, fix: String| (DRAIN_NOT_REACHED, Severity::Error, line, message, fix);
    // The token a drain call from outside the pod must carry (SD017): "" when
    // the sidecar has none, None when it comes from elsewhere.
    let token = literal(side.container, "STICKYD_DRAIN_TOKEN");
    // The longest idle and max a drain call may ask for (SD018); None when not known here.
    let drain_max = literal(side.container, "STICKYD_DRAIN_MAX")
        .map(|v| {
            if v.is_empty() {
                default_of("STICKYD_DRAIN_MAX")
            } else {
                v
            }
        })
        .and_then(stickyd_sidecar::config::parse_duration);
    // The largest valid drain `max` among the hooks, with the line of its path.
    let mut longest: Option<(Duration, usize, &str)> = None;
    for c in containers.iter().filter(|c| !std::ptr::eq(*c, side.container)) {
        let name = c.str_at(&["name"]).unwrap_or("?");
        let hook = pre_stop(c);
        let (params, line) = match &hook {
            PreStop::DrainGet { get, path, params } => {
                match get.get("port") {
                    None => out.push(unreachable(
                        get.line,
                        format!(
                            "the preStop httpGet of container {name:?} calls the drain without a port, so the kubelet \
                             cannot reach stickyd's admin listener."
                        ),
                        format!("add port: {admin_text} (STICKYD_ADMIN_LISTEN's port, as a number)"),
                    )),
                    Some(port) => match hook_port(port, c) {
                        None => out.push(unreachable(
                            port.line,
                            format!(
                                "the preStop of container {name:?} calls the drain on port {:?}, a name the kubelet \
                                 looks up only among the ports of container {name:?} itself, where it is not \
                                 declared, so the hook fails, the app is stopped at once and the sessions pinned to \
                                 this pod are moved.",
                                port.as_str().unwrap_or("?")
                            ),
                            format!("give the port as a number: port: {admin_text}"),
                        )),
                        Some(n) if other_port(n) => out.push(unreachable(
                            port.line,
                            format!(
                                "the preStop of container {name:?} calls the drain on port {n}, but stickyd's admin \
                                 listener is on port {admin_text} (STICKYD_ADMIN_LISTEN), so the hook fails, the app \
                                 is stopped at once and the sessions pinned to this pod are moved."
                            ),
                            format!("set the preStop httpGet port to {admin_text}"),
                        )),
                        Some(_) => {}
                    },
                }
                if let Some(host) = get.get("host").and_then(Node::as_str).filter(|h| !h.trim().is_empty()) {
                    out.push(unreachable(
                        get.key("host").map_or(get.line, |k| k.line),
                        format!(
                            "the preStop of container {name:?} sets host {host:?}, so the kubelet calls that host \
                             instead of the pod IP where stickyd's admin listener is, and the drain is never reached."
                        ),
                        "remove host: without it the kubelet calls the pod IP".into(),
                    ));
                }
                if let Some(scheme) = get
                    .get("scheme")
                    .filter(|s| s.as_str().is_some_and(|s| s.trim().eq_ignore_ascii_case("https")))
                {
                    out.push(unreachable(
                        scheme.line,
                        format!(
                            "the preStop of container {name:?} calls the drain with scheme HTTPS, but stickyd's admin \
                             listener speaks plain HTTP, so the hook fails and the drain never runs."
                        ),
                        "remove scheme (HTTP is the default)".into(),
                    ));
                }
                if let Some(found) = token_finding(get, name, token) {
                    out.push(found);
                }
                if loopback {
                    out.push(unreachable(
                        admin_line,
                        format!(
                            "stickyd's admin listener is bound to the loopback address {admin}, but the kubelet \
                             sends the preStop call of container {name:?} to the pod IP, so the drain is never \
                             reached."
                        ),
                        format!("set STICKYD_ADMIN_LISTEN to 0.0.0.0:{admin_text} (or [::]:{admin_text})"),
                    ));
                }
                (params, path.line)
            }
            PreStop::DrainExec { exec, port, params } => {
                if let Some(n) = port.filter(|n| other_port(*n)) {
                    out.push(unreachable(
                        exec.line,
                        format!(
                            "the preStop command of container {name:?} calls the drain on port {n}, but stickyd's \
                             admin listener is on port {admin_text} (STICKYD_ADMIN_LISTEN), so the call fails and the \
                             sessions pinned to this pod are moved."
                        ),
                        format!("call the drain on port {admin_text}"),
                    ));
                }
                (params, exec.line)
            }
            _ => continue,
        };
        match params {
            Err(e) => out.push(unreachable(
                line,
                format!(
                    "the drain call in the preStop of container {name:?} is not one stickyd accepts ({e}), so the \
                     hook fails, the app is stopped at once and the sessions pinned to this pod are moved."
                ),
                format!("call the drain as {good} (durations like 10s, 500ms, 5m)"),
            )),
            Ok(p) => {
                if longest.is_none_or(|(m, _, _)| p.max > m) {
                    longest = Some((p.max, line, name));
                }
                if let Some(bound) = drain_max {
                    out.extend(above_max_finding(p, bound, side.container, line, name));
                }
            }
        }
    }

    // SD013, the warnings: no drain at all on the app.
    let (apps, _) = app_containers(pod, side.container, side.upstream_port);
    let hooks: Vec<(&Node, PreStop)> = apps
        .iter()
        .map(|&i| (&containers[i], pre_stop(&containers[i])))
        .collect();
    if !hooks.is_empty() && !hooks.iter().any(|(_, h)| h.calls_drain()) {
        let get = good_get(&admin_text);
        let grace = ShutdownBudget::of(side.container, DrainParams::default().max).seconds();
        let grace = format!("terminationGracePeriodSeconds of at least {grace}");
        let sleep = hooks.iter().find_map(|(c, h)| match h {
            PreStop::Sleep { key } => Some((c, key.line)),
            _ => None,
        });
        let own = hooks.iter().find_map(|(c, h)| match h {
            PreStop::Own { action, key } => Some((c, *action, key.line)),
            _ => None,
        });
        let name = |c: &Node| c.str_at(&["name"]).unwrap_or("?").to_string();
        let found = if let Some((c, line)) = sleep {
            (
                line,
                format!(
                    "the preStop of container {:?} sleeps instead of calling stickyd's drain, so the sessions pinned \
                     to this pod that are still active when the sleep ends are moved to other pods.",
                    name(c)
                ),
                format!("replace the sleep with {get} (stickyd inject does), with {grace}"),
            )
        } else if let Some((c, action, line)) = own {
            (
                line,
                format!(
                    "the preStop of container {:?} is a hook of its own ({action}) that does not call stickyd's \
                     drain, so the sessions pinned to this pod that are still active when it ends are moved to \
                     other pods.",
                    name(c)
                ),
                format!(
                    "call GET http://127.0.0.1:{admin_text}{good} when that hook has done its work (curl -fsS at \
                     the end of an exec hook), or replace it with {get}; with {grace}"
                ),
            )
        } else {
            let c = hooks[0].0;
            (
                c.line,
                format!(
                    "container {:?} has no preStop hook calling stickyd's drain, so on deletion it is stopped at \
                     once and the sessions pinned to this pod that are still active are moved to other pods.",
                    name(c)
                ),
                format!(
                    "add lifecycle: {{preStop: {{{get}}}}} to container {:?} (stickyd inject adds it), with {grace}",
                    name(c)
                ),
            )
        };
        out.push((DRAIN_NOT_REACHED, Severity::Warning, found.0, found.1, found.2));
    }

    // SD012: the grace period against the drain's max and the sidecar's own drain.
    if let Some((max, path_line, name)) = longest {
        let budget = ShutdownBudget::of(side.container, max);
        let grace_node = pod.get("terminationGracePeriodSeconds");
        let grace = grace_node.and_then(Node::as_i64).unwrap_or(DEFAULT_GRACE_SECONDS);
        let line = pod.key("terminationGracePeriodSeconds").map_or(path_line, |k| k.line);
        let what = match grace_node {
            Some(_) => format!("terminationGracePeriodSeconds is {grace}s,"),
            None => format!("terminationGracePeriodSeconds is not set, so Kubernetes allows {grace}s,"),
        };
        let fix = format!(
            "set terminationGracePeriodSeconds to at least {} ({})",
            budget.seconds(),
            budget.explain()
        );
        let grace_time = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        if grace_time < max {
            out.push((
                GRACE_SHORTER_THAN_DRAIN,
                Severity::Error,
                line,
                format!(
                    "{what} shorter than the drain's max={} in the preStop of container {name:?}: the kubelet kills \
                     the pod while the drain still waits for its sessions, and stickyd without its own drain.",
                    fmt_duration(max)
                ),
                fix,
            ));
        } else if grace < budget.seconds() {
            out.push((
                GRACE_SHORTER_THAN_DRAIN,
                Severity::Warning,
                line,
                format!(
                    "{what} enough for the drain's max={} in the preStop of container {name:?} but not for stickyd's \
                     drain after it (STICKYD_DRAIN_SECONDS {} + STICKYD_DRAIN_TIMEOUT {}): when the drain runs to \
                     max, stickyd is killed mid-drain and requests in flight are cut.",
                    fmt_duration(max),
                    fmt_duration(budget.drain),
                    fmt_duration(budget.drain_timeout)
                ),
                fix,
            ));
        }
    }
    out
}

/// SD017 for a drain `httpGet` of container `name`: the kubelet calls it from
/// outside the pod, so it must send `Authorization: Bearer` and the sidecar's
/// STICKYD_DRAIN_TOKEN (`token`: "" when the sidecar has none, None when its
/// value is not in the manifest). The token itself is never printed.
fn token_finding(get: &Node, name: &str, token: Option<&str>) -> Option<Found> {
    let header = get.get("httpHeaders").map(Node::items).unwrap_or(&[]).iter().find(|h| {
        h.str_at(&["name"])
            .is_some_and(|n| n.trim().eq_ignore_ascii_case("authorization"))
    });
    let outcome = "so stickyd answers the kubelet's call 403, the app is stopped at once and the sessions pinned \
                   to this pod are moved.";
    let send = "httpHeaders: [{name: Authorization, value: \"Bearer TOKEN\"}]";
    let found = |line: usize, message: String, fix: String| Some((DRAIN_TOKEN, Severity::Error, line, message, fix));
    match (token, header) {
        (Some(""), _) => found(
            get.line,
            format!(
                "the preStop httpGet of container {name:?} calls the drain from the kubelet, outside the pod, but the \
                 stickyd sidecar has no STICKYD_DRAIN_TOKEN, which such a call must carry, {outcome}"
            ),
            format!(
                "set STICKYD_DRAIN_TOKEN on the stickyd container to a random token (openssl rand -hex 32) and send \
                 it from this hook: {send} (stickyd inject writes both)"
            ),
        ),
        (_, None) => found(
            get.line,
            format!(
                "the preStop httpGet of container {name:?} sends no Authorization header, but a drain call from \
                 outside the pod (the kubelet's) must carry the sidecar's STICKYD_DRAIN_TOKEN, {outcome}"
            ),
            format!("add {send} to this httpGet, with the stickyd container's STICKYD_DRAIN_TOKEN as TOKEN"),
        ),
        (Some(token), Some(h)) => {
            // A token stickyd refuses is SD009's.
            let token = stickyd_sidecar::config::DrainToken::parse(token).ok()?;
            let value = h.str_at(&["value"]).unwrap_or_default();
            if token.authorizes(value.as_bytes()) {
                return None;
            }
            found(
                h.get("value").map_or(h.line, |v| v.line),
                format!(
                    "the Authorization header of the preStop httpGet of container {name:?} does not carry the \
                     sidecar's STICKYD_DRAIN_TOKEN (\"Bearer TOKEN\"), {outcome}"
                ),
                "set the header's value to \"Bearer \" followed by the STICKYD_DRAIN_TOKEN of the stickyd container"
                    .into(),
            )
        }
        // The token comes from a Secret or a ConfigMap: a Bearer header may carry it.
        (None, Some(_)) => None,
    }
}

/// SD018 for the drain call `p` of container `name` (at `line`): stickyd
/// cuts an `idle` or `max` above STICKYD_DRAIN_MAX (`bound`) to it.
fn above_max_finding(p: &DrainParams, bound: Duration, sidecar: &Node, line: usize, name: &str) -> Option<Found> {
    let over: Vec<String> = [("idle", p.idle), ("max", p.max)]
        .iter()
        .filter(|(_, d)| *d > bound)
        .map(|(k, d)| format!("{k}={}", fmt_duration(*d)))
        .collect();
    if over.is_empty() {
        return None;
    }
    let want = p.max.max(p.idle);
    let budget = ShutdownBudget::of(sidecar, want);
    Some((
        DRAIN_ABOVE_MAX,
        Severity::Warning,
        line,
        format!(
            "the drain's {} in the preStop of container {name:?} {} above the sidecar's STICKYD_DRAIN_MAX ({}), so \
             stickyd cuts it to that, and the sessions still active then are moved to other pods.",
            over.join(" and "),
            if over.len() > 1 { "are" } else { "is" },
            fmt_duration(bound)
        ),
        format!(
            "set STICKYD_DRAIN_MAX on the stickyd container to {} with terminationGracePeriodSeconds of at least {} \
             ({}; stickyd inject sets both), or ask for at most {} in this hook",
            fmt_duration(want),
            budget.seconds(),
            budget.explain(),
            fmt_duration(bound)
        ),
    ))
}

/// The first configuration error stickyd would stop at that the manifest
/// proves, on any machine. A misspelt variable comes first, as in stickyd.
/// An error about a variable whose value is not in the manifest
/// (configMapKeyRef, envFrom) proves nothing: such a variable has been given
/// a plausible value ([`SidecarEnv::vars`]) where one is needed, and an
/// error that is still about it is not reported.
fn config_error(env: &SidecarEnv) -> Option<ConfigError> {
    if let Some(e) =
        stickyd_sidecar::config::unknown_variable(env.names.iter().map(|(n, v)| (n.as_str(), v.as_deref())))
    {
        return Some(e);
    }
    let knowable = |var: &str| !env.unknown.contains(var) && (env.literal.contains(var) || !env.has_env_from);
    let e = Config::parse(&env.vars, &in_a_pod(&env.vars)).err()?;
    knowable(e.var()).then_some(e)
}

/// What stickyd finds at startup in a pod, as far as a manifest tells:
/// Kubernetes sets HOSTNAME to the pod's name, and the files the variables
/// name hold something valid (their contents are not in the manifest; a
/// secret file outside every volume mount is reported on its own). Nothing
/// is read from the machine lint runs on, so its results do not depend on it.
fn in_a_pod(vars: &BTreeMap<String, String>) -> Startup {
    let files: Vec<(String, &str)> = stickyd_sidecar::config::files_named(vars)
        .into_iter()
        .map(|(var, path)| {
            let placeholder = match var {
                "STICKYD_COOKIE_SECRET_FILE" => PLACEHOLDER_KEY,
                _ => PLACEHOLDER_PEERS,
            };
            (path.display().to_string(), placeholder)
        })
        .collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    Startup::with(Some("pod-0"), &files)
}

fn config_fix(e: &ConfigError, workload: &str) -> String {
    if let ConfigError::Unknown { var, closest } = e {
        return format!("rename {var} to {closest}, or remove it: stickyd reads no variable of that name");
    }
    match e.var() {
        "STICKYD_SERVICE" => format!(
            "set STICKYD_SERVICE to the name of the Service in this namespace that selects the pods of {workload:?}"
        ),
        "STICKYD_COOKIE_PATH" => {
            "set STICKYD_COOKIE_PATH to a literal prefix such as /mysite (or leave it unset for /)".into()
        }
        "STICKYD_DRAIN_TOKEN" => {
            "set STICKYD_DRAIN_TOKEN to a random token of your own (openssl rand -hex 32), and the \
                                  app's drain preStop header to \"Bearer \" and the same token (with kustomize, a \
                                  replacement copies it: docs/kubernetes.md, step 3)"
                .into()
        }
        var => format!("correct {var} in the env of the stickyd container (the message says what is valid)"),
    }
}

/// The env of a sidecar as stickyd would see it at start, with values that
/// cannot be known offline replaced by plausible ones.
struct SidecarEnv {
    /// Every variable the manifest sets, with its literal value if it has one.
    names: Vec<(String, Option<String>)>,
    /// The values stickyd would parse: the literals, the downward API's
    /// fields as a pod would have them, and plausible values for the
    /// required settings that come from elsewhere.
    vars: BTreeMap<String, String>,
    /// The variables whose value is in the manifest.
    literal: BTreeSet<String>,
    /// Variables whose value cannot be known offline (configMapKeyRef, or
    /// anything when the container has envFrom).
    unknown: BTreeSet<String>,
    has_env_from: bool,
    /// A STICKYD_COOKIE_SECRET_FILE outside any volume mount.
    file_problem: Option<(String, usize, String)>,
}

/// A syntactically valid key standing for a Secret's value.
const PLACEHOLDER_KEY: &str = "0123456789abcdef0123456789abcdef";

/// A valid peer list standing for the contents of an endpoints file.
const PLACEHOLDER_PEERS: &str = "pod-0=10.0.0.1:8080";

fn sidecar_env(container: &Node, namespace: Option<&str>) -> SidecarEnv {
    let mut names = Vec::new();
    let mut vars = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for e in container.get("env").map(Node::items).unwrap_or(&[]) {
        let Some(name) = e.str_at(&["name"]) else { continue };
        let literal = e.get("value").map(|v| v.as_str().unwrap_or("").to_string());
        names.push((name.to_string(), literal.clone()));
        let value = if let Some(v) = literal {
            v
        } else if let Some(field) = e.str_at(&["valueFrom", "fieldRef", "fieldPath"]) {
            match field {
                "metadata.name" | "spec.nodeName" => "pod-0".into(),
                "metadata.namespace" => namespace.unwrap_or("default").into(),
                f if f.starts_with("status.") => "10.0.0.1".into(),
                _ => continue,
            }
        } else if e.path(&["valueFrom", "secretKeyRef"]).is_some() && name == "STICKYD_COOKIE_SECRET" {
            PLACEHOLDER_KEY.into()
        } else {
            // configMapKeyRef, resourceFieldRef...: unknown offline.
            unknown.insert(name.to_string());
            continue;
        };
        vars.insert(name.to_string(), value);
    }
    let literal: BTreeSet<String> = vars.keys().cloned().collect();
    let has_env_from = container.get("envFrom").is_some_and(|e| !e.items().is_empty());
    // Required settings whose value comes from elsewhere get a plausible one,
    // so that the settings the manifest does show are checked.
    if unknown.contains("STICKYD_SERVICE") || (has_env_from && !vars.contains_key("STICKYD_SERVICE")) {
        vars.insert("STICKYD_SERVICE".into(), "svc".into());
    }
    if unknown.contains("STICKYD_COOKIE_SECRET") && !vars.contains_key("STICKYD_COOKIE_SECRET_FILE") {
        vars.insert("STICKYD_COOKIE_SECRET".into(), PLACEHOLDER_KEY.into());
    }
    let mut file_problem = None;
    if let Some(path) = vars.get("STICKYD_COOKIE_SECRET_FILE") {
        let mounted = container
            .get("volumeMounts")
            .map(Node::items)
            .unwrap_or(&[])
            .iter()
            .filter_map(|m| m.str_at(&["mountPath"]))
            .any(|mp| path.starts_with(&format!("{}/", mp.trim_end_matches('/'))));
        if !mounted {
            let line = env_value(container, "STICKYD_COOKIE_SECRET_FILE").map_or(container.line, |n| n.line);
            file_problem = Some((
                "STICKYD_COOKIE_SECRET_FILE".to_string(),
                line,
                format!(
                    "STICKYD_COOKIE_SECRET_FILE={path:?} is not under any volumeMount of the stickyd container, so \
                     stickyd cannot read its key and exits at start."
                ),
            ));
        }
    }
    SidecarEnv {
        names,
        vars,
        literal,
        unknown,
        has_env_from,
        file_problem,
    }
}

/// Lints files given as `(name, contents)`; parse errors are reported in the report.
pub fn lint_sources(sources: &[(String, String)]) -> Report {
    let mut report = Report::default();
    let mut parsed: Vec<(&str, Vec<kyaml::Doc>)> = Vec::new();
    for (name, text) in sources {
        match kyaml::parse_stream(text) {
            Ok(docs) => parsed.push((name, docs)),
            Err(e) => report.input_errors.push(InputError {
                file: name.clone(),
                line: Some(e.line),
                message: format!("cannot parse YAML: {e}"),
            }),
        }
    }
    let mut objs = Vec::new();
    for (name, docs) in &parsed {
        for d in docs {
            collect(name, &d.root, &mut objs);
        }
    }
    report.objects = objs.len();
    let mut linter = Linter {
        objs,
        findings: Vec::new(),
    };
    linter.lint();
    report.findings = linter.findings;
    report
}

/// Reads the files (- for standard input) and lints them.
pub fn lint_files(files: &[PathBuf]) -> Report {
    let mut sources = Vec::new();
    let mut unreadable = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let text = if name == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
        } else {
            std::fs::read_to_string(f)
        };
        match text {
            Ok(t) => sources.push((name, t)),
            Err(e) => unreadable.push(InputError {
                file: name,
                line: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let mut report = lint_sources(&sources);
    unreadable.extend(report.input_errors);
    report.input_errors = unreadable;
    report
}

/// The human-readable report.
pub fn render_human(report: &Report) -> String {
    let mut out = String::new();
    for e in &report.input_errors {
        match e.line {
            Some(l) => out.push_str(&format!("{}:{l}: {}\n", e.file, e.message)),
            None => out.push_str(&format!("{}: {}\n", e.file, e.message)),
        }
    }
    for f in &report.findings {
        out.push_str(&format!(
            "{}:{}: {}[{}] {}: {}\n    fix: {}\n",
            f.file, f.line, f.severity, f.rule, f.object, f.message, f.fix
        ));
    }
    let (e, w) = (report.errors(), report.warnings());
    if e + w == 0 && report.input_errors.is_empty() {
        out.push_str(&format!("no problems found in {} objects\n", report.objects));
    } else {
        out.push_str(&format!(
            "{e} error{}, {w} warning{} in {} objects\n",
            if e == 1 { "" } else { "s" },
            if w == 1 { "" } else { "s" },
            report.objects
        ));
    }
    out
}

/// Runs `stickyd lint`; returns the process exit code.
pub fn run(args: &LintArgs) -> i32 {
    let report = lint_files(&args.files);
    match args.format {
        Format::Human => print!("{}", render_human(&report)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "findings": report.findings,
                "input_errors": report.input_errors,
                "objects": report.objects,
                "errors": report.errors(),
                "warnings": report.warnings(),
            }))
            .expect("the report serialises")
        ),
    }
    report.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(yaml: &str) -> Report {
        lint_sources(&[("t.yaml".to_string(), yaml.to_string())])
    }

    fn rules(r: &Report) -> Vec<&'static str> {
        r.findings.iter().map(|f| f.rule).collect()
    }

    const SIDECAR_STACK: &str = concat!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: n}\nspec:\n  template:\n",
        "    metadata: {labels: {app: web}}\n    spec:\n      serviceAccountName: web\n      containers:\n",
        "      - name: stickyd\n        image: stickyd:1\n        env:\n        - {name: STICKYD_SERVICE, value: web}\n",
        "        - {name: STICKYD_POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n",
    );

    /// A signing key for SIDECAR_STACK's sidecar.
    const KEYED: &str = "        - {name: STICKYD_COOKIE_SECRET, value: 0123456789abcdef0123456789abcdef}\n";

    #[test]
    fn a_misspelt_variable_is_named_with_the_closest_one() {
        let static_ep = "        - {name: STICKYD_ENDPOINTS, value: 'static:pod-0=10.0.0.1:8080'}\n";
        let typo = format!("{SIDECAR_STACK}{KEYED}{static_ep}        - {{name: STICKYD_COOKIE_SECERT, value: x}}\n");
        let r = lint(&typo);
        assert_eq!(rules(&r), vec!["SD009"]);
        let f = &r.findings[0];
        let line = typo.lines().position(|l| l.contains("SECERT")).unwrap() + 1;
        assert_eq!(f.line, line, "the line of the misspelt variable");
        assert!(
            f.message
                .contains("STICKYD_COOKIE_SECERT is not a stickyd variable; did you mean STICKYD_COOKIE_SECRET?"),
            "{}",
            f.message
        );
        assert!(
            f.fix.contains("rename STICKYD_COOKIE_SECERT to STICKYD_COOKIE_SECRET"),
            "{}",
            f.fix
        );
        // Its value from a ConfigMap: the name alone is wrong all the same.
        let from_cm = format!(
            "{SIDECAR_STACK}{KEYED}{static_ep}        - {{name: STICKYD_PORT_NAM, valueFrom: {{configMapKeyRef: {{name: c, key: k}}}}}}\n"
        );
        let r = lint(&from_cm);
        assert_eq!(rules(&r), vec!["SD009"]);
        assert!(
            r.findings[0].message.contains("did you mean STICKYD_PORT_NAME?"),
            "{}",
            r.findings[0].message
        );
        // The real variables near the service links' names, and the links themselves, are fine.
        let fine = format!(
            "{SIDECAR_STACK}{KEYED}{static_ep}        - {{name: STICKYD_PORT_NAME, value: http}}\n\
             \x20       - {{name: STICKYD_SERVICE_HOST, value: 10.0.0.9}}\n\
             \x20       - {{name: STICKYD_PORT_80_TCP, valueFrom: {{configMapKeyRef: {{name: c, key: k}}}}}}\n"
        );
        assert_eq!(rules(&lint(&fine)), Vec::<&str>::new());
    }

    #[test]
    fn files_and_values_lint_cannot_see_are_assumed_valid() {
        // An endpoints file on the pod's disk, not this machine's.
        let file_ep = SIDECAR_STACK.to_string()
            + KEYED
            + "        - {name: STICKYD_ENDPOINTS, value: 'file:/no/such/dir/peers'}\n";
        assert_eq!(rules(&lint(&file_ep)), Vec::<&str>::new());
        // A key from a ConfigMap still signs cookies, so session lifetimes are allowed.
        let static_ep = "        - {name: STICKYD_ENDPOINTS, value: 'static:pod-0=10.0.0.1:8080'}\n";
        let keyed = SIDECAR_STACK.to_string()
            + static_ep
            + "        - {name: STICKYD_COOKIE_SECRET, valueFrom: {configMapKeyRef: {name: c, key: k}}}\n\
               \x20       - {name: STICKYD_SESSION_MAX_LIFETIME, value: 1h}\n";
        assert_eq!(rules(&lint(&keyed)), Vec::<&str>::new());
        // Set in the manifest, the same mistake is reported, and the sidecar has no key.
        let unkeyed =
            SIDECAR_STACK.to_string() + static_ep + "        - {name: STICKYD_SESSION_MAX_LIFETIME, value: 1h}\n";
        assert_eq!(rules(&lint(&unkeyed)), vec!["SD016", "SD009"]);
    }

    #[test]
    fn rbac_through_a_cluster_role_with_wildcards() {
        let ok = format!(
            "{SIDECAR_STACK}{KEYED}---\nkind: ClusterRole\nmetadata: {{name: reader}}\nrules:\n- apiGroups: ['*']\n  \
             resources: ['*']\n  verbs: ['*']\n---\nkind: ClusterRoleBinding\nmetadata: {{name: b}}\n\
             roleRef: {{kind: ClusterRole, name: reader}}\nsubjects:\n- {{kind: ServiceAccount, name: web, namespace: n}}\n"
        );
        assert_eq!(rules(&lint(&ok)), Vec::<&str>::new());
        // Bound in another namespace: not this ServiceAccount.
        let other = ok.replace(
            "ServiceAccount, name: web, namespace: n}",
            "ServiceAccount, name: web, namespace: x}",
        );
        assert_ne!(other, ok);
        assert_eq!(rules(&lint(&other)), vec!["SD008"]);
        // No token, no watch.
        let no_token = ok.replace(
            "serviceAccountName: web\n",
            "serviceAccountName: web\n      automountServiceAccountToken: false\n",
        );
        let r = lint(&no_token);
        assert_eq!(rules(&r), vec!["SD008"]);
        assert!(r.findings[0].message.contains("automountServiceAccountToken: false"));
        // Static endpoints need no RBAC.
        let static_ep = SIDECAR_STACK.to_string()
            + KEYED
            + "        - {name: STICKYD_ENDPOINTS, value: 'static:web-0=10.0.0.1:8080'}\n";
        assert_eq!(rules(&lint(&static_ep)), Vec::<&str>::new());
    }

    #[test]
    fn default_affinity_mode_is_balanced() {
        let r = lint(concat!(
            "kind: Ingress\nmetadata:\n  name: a\n  annotations:\n",
            "    nginx.ingress.kubernetes.io/affinity: cookie\n",
            "spec:\n  defaultBackend: {service: {name: web, port: {number: 80}}}\n",
        ));
        assert_eq!(rules(&r), vec!["SD005"]);
        assert_eq!(r.findings[0].line, 4);
        assert!(r.findings[0].message.contains("not set"));
        assert_eq!(r.exit_code(), 0, "warnings only");
        // No affinity annotation at all: nothing about cookies to check.
        // use-regex with a literal path: the cookie Path is that literal path, which works.
        let r = lint(concat!(
            "kind: Ingress\nmetadata:\n  name: a\n  annotations:\n",
            "    nginx.ingress.kubernetes.io/use-regex: \"true\"\n",
            "    nginx.ingress.kubernetes.io/affinity: cookie\n",
            "    nginx.ingress.kubernetes.io/affinity-mode: persistent\n",
            "spec:\n  rules:\n  - http:\n      paths:\n      - path: /shop\n",
            "        backend: {serviceName: web, servicePort: 80}\n",
        ));
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        let r = lint("kind: Ingress\nmetadata: {name: a}\nspec:\n  rules:\n  - http:\n      paths:\n      - path: /a(.*)\n        backend: {serviceName: web, servicePort: 80}\n");
        assert!(r.findings.is_empty());
    }

    #[test]
    fn samesite_none_is_fine_with_tls_on_the_ingress() {
        let base = concat!(
            "kind: Ingress\nmetadata:\n  name: a\n  annotations:\n",
            "    nginx.ingress.kubernetes.io/affinity: cookie\n",
            "    nginx.ingress.kubernetes.io/affinity-mode: persistent\n",
            "    nginx.ingress.kubernetes.io/session-cookie-samesite: None\n",
            "spec:\n  defaultBackend: {service: {name: web, port: {number: 80}}}\n",
        );
        assert_eq!(rules(&lint(base)), vec!["SD004"]);
        let tls = format!("{base}  tls:\n  - hosts: [a.example.com]\n    secretName: a-tls\n");
        assert!(lint(&tls).findings.is_empty());
    }

    #[test]
    fn list_items_are_checked() {
        let r = lint(concat!(
            "apiVersion: v1\nkind: List\nitems:\n",
            "- kind: Ingress\n  metadata: {name: a}\n  spec: {backend: {serviceName: x.y, servicePort: 80}}\n",
        ));
        assert_eq!(rules(&r), vec!["SD003"]);
        assert_eq!(r.findings[0].line, 6);
    }

    #[test]
    fn literal_prefix_of_regex_paths() {
        assert_eq!(literal_prefix("/mysite(/|$)(.*)"), "/mysite");
        assert_eq!(literal_prefix("/api/v1/.*"), "/api/v1");
        assert_eq!(literal_prefix("(.*)"), "/");
        assert_eq!(literal_prefix("/"), "/");
    }

    #[test]
    fn image_recognition() {
        let c = |img: &str| {
            let docs = kyaml::parse_stream(&format!("name: app\nimage: {img}\n")).unwrap();
            is_stickyd(&docs[0].root)
        };
        assert!(c("stickyd:0.1.0"));
        assert!(c("ghcr.io/acme/stickyd:0.1.0"));
        assert!(c("localhost:5000/stickyd"));
        assert!(c("ghcr.io/acme/stickyd@sha256:abcd"));
        assert!(!c("ghcr.io/acme/notstickyd:1"));
        assert!(!c("stickyd-demo:1"));
        assert!(!c("localhost:5000/app"));
    }

    #[test]
    fn levenshtein_distance() {
        assert_eq!(strsim::levenshtein("msvc-proxy", "mysvc-proxy"), 1);
    }

    #[test]
    fn v1_backend_and_legacy_backend_are_both_read() {
        let r = lint(concat!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: a\nspec:\n  rules:\n",
            "  - http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend:\n",
            "          service:\n            name: web.other\n            port:\n              number: 80\n",
        ));
        assert_eq!(rules(&r), vec!["SD003"]);
        assert_eq!(r.findings[0].line, 13);
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn parse_errors_exit_2() {
        let r = lint("kind: Ingress\n  bad: [\n");
        assert_eq!(r.exit_code(), 2);
        assert_eq!(r.input_errors[0].file, "t.yaml");
    }

    #[test]
    fn new_sessions_placement_is_checked_with_the_configuration() {
        let with = |v: &str| {
            SIDECAR_STACK.replace(
                "        - {name: STICKYD_SERVICE, value: web}\n",
                &format!("        - {{name: STICKYD_SERVICE, value: web}}\n        - {{name: STICKYD_NEW_SESSIONS, value: {v}}}\n"),
            )
        };
        assert_ne!(with("local"), SIDECAR_STACK);
        assert!(!rules(&lint(&with("local"))).contains(&"SD009"));
        // least-sessions needs a key: its counts travel signed.
        let unkeyed = lint(&with("least-sessions"));
        let sd009: Vec<_> = unkeyed.findings.iter().filter(|f| f.rule == "SD009").collect();
        assert_eq!(sd009.len(), 1, "{:?}", unkeyed.findings);
        assert!(sd009[0].message.contains("STICKYD_COOKIE_SECRET"), "{sd009:?}");
        let keyed = with("least-sessions").replace(
            "        - {name: STICKYD_SERVICE, value: web}\n",
            "        - {name: STICKYD_SERVICE, value: web}\n        - {name: STICKYD_COOKIE_SECRET, value: 0123456789abcdef0123}\n",
        );
        assert!(!rules(&lint(&keyed)).contains(&"SD009"), "{:?}", lint(&keyed).findings);
        let r = lint(&with("fewest"));
        let sd009: Vec<_> = r.findings.iter().filter(|f| f.rule == "SD009").collect();
        assert_eq!(sd009.len(), 1, "{:?}", r.findings);
        assert!(
            sd009[0].message.contains("STICKYD_NEW_SESSIONS=\"fewest\""),
            "{sd009:?}"
        );
        assert!(sd009[0].message.contains("least-sessions"), "{sd009:?}");
    }

    #[test]
    fn env_from_elsewhere_is_not_reported_missing() {
        let from_cm = SIDECAR_STACK.replace(
            "        - {name: STICKYD_SERVICE, value: web}\n",
            "        - {name: STICKYD_SERVICE, valueFrom: {configMapKeyRef: {name: c, key: k}}}\n",
        );
        assert_ne!(from_cm, SIDECAR_STACK);
        assert!(!rules(&lint(&from_cm)).contains(&"SD009"));
        let env_from = SIDECAR_STACK.replace("        - {name: STICKYD_SERVICE, value: web}\n", "")
            + "        envFrom: [{configMapRef: {name: stickyd}}]\n";
        assert!(!rules(&lint(&env_from)).contains(&"SD009"));
        // A value in the manifest is still checked with envFrom present.
        let bad = env_from.clone() + "        - {name: STICKYD_LOG_FORMAT, value: xml}\n";
        let bad = bad.replace(
            "        envFrom: [{configMapRef: {name: stickyd}}]\n        - {name: STICKYD_LOG_FORMAT",
            "        - {name: STICKYD_LOG_FORMAT",
        );
        let bad = bad + "        envFrom: [{configMapRef: {name: stickyd}}]\n";
        let r = lint(&bad);
        assert_eq!(
            rules(&r).iter().filter(|r| **r == "SD009").count(),
            1,
            "{:?}",
            r.findings
        );
        assert!(r.findings.iter().any(|f| f.message.contains("STICKYD_LOG_FORMAT")));
    }

    fn node(yaml: &str) -> Node {
        kyaml::parse_stream(yaml).unwrap().remove(0).root
    }

    #[test]
    fn drain_paths_and_durations() {
        assert_eq!(drain_path(&DrainParams::default()), "/drain?idle=10s&max=300s");
        assert_eq!(
            DrainParams::parse_path(&drain_path(&DrainParams::default())),
            Some(Ok(DrainParams::default()))
        );
        for (d, text) in [
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::ZERO, "0s"),
            (Duration::from_micros(1500), "0.0015"),
        ] {
            assert_eq!(fmt_duration(d), text);
            assert_eq!(
                stickyd_sidecar::config::parse_duration(text),
                Some(d),
                "{text} reads back"
            );
        }
    }

    #[test]
    fn the_shutdown_budget_takes_the_sidecars_settings_and_rounds_up() {
        let sidecar = node("name: stickyd\nenv:\n- {name: STICKYD_DRAIN_SECONDS, value: '2.5'}\n");
        let b = ShutdownBudget::of(&sidecar, Duration::from_secs(60));
        assert_eq!(b.drain, Duration::from_millis(2500));
        assert_eq!(b.drain_timeout, Duration::from_secs(30), "the default");
        assert_eq!(b.seconds(), 93);
        assert_eq!(
            b.explain(),
            "max 60s + STICKYD_DRAIN_SECONDS 2500ms + STICKYD_DRAIN_TIMEOUT 30s"
        );
        // A value stickyd would refuse (SD009 reports it) counts as the default.
        let bad = node("name: stickyd\nenv:\n- {name: STICKYD_DRAIN_TIMEOUT, value: soon}\n");
        assert_eq!(ShutdownBudget::of(&bad, DrainParams::default().max).seconds(), 335);
    }

    #[test]
    fn pre_stop_hooks_are_told_apart() {
        let hook = |h: &str| node(&format!("name: app\nlifecycle:\n  preStop:\n    {h}\n"));
        let c = hook("httpGet: {path: '/drain?max=1m', port: 9090}");
        assert_eq!(
            pre_stop(&c).drain_params().map(|p| p.max),
            Some(Duration::from_secs(60))
        );
        let c = hook("httpGet: {path: /drainage, port: 9090}");
        assert!(matches!(pre_stop(&c), PreStop::Own { action: "httpGet", .. }));
        let c = hook("sleep: {seconds: 5}");
        assert!(matches!(pre_stop(&c), PreStop::Sleep { .. }));
        assert!(matches!(pre_stop(&node("name: app\n")), PreStop::Missing));
        assert!(matches!(
            pre_stop(&node("name: app\nlifecycle: {preStop: }\n")),
            PreStop::Missing
        ));
        for (command, port) in [
            ("[curl, -fsS, 'http://127.0.0.1:9090/drain?idle=1s']", Some(9090)),
            (
                "[sh, -c, \"stop; wget -qO- 'localhost:9191/drain' && true\"]",
                Some(9191),
            ),
        ] {
            let c = hook(&format!("exec: {{command: {command}}}"));
            match pre_stop(&c) {
                PreStop::DrainExec { port: p, params, .. } => {
                    assert_eq!(p, port, "{command}");
                    assert!(params.is_ok(), "{command}");
                }
                other => panic!("{command}: {other:?}"),
            }
        }
        // A script named drain, or a drain path on no port, is not a call.
        for command in [
            "[/opt/drain]",
            "[sh, -c, '/usr/bin/drain --all']",
            "[curl, 'http://x/drain']",
        ] {
            let c = hook(&format!("exec: {{command: {command}}}"));
            assert!(matches!(pre_stop(&c), PreStop::Own { action: "exec", .. }), "{command}");
        }
    }

    #[test]
    fn a_hook_port_name_resolves_among_the_owners_ports_only() {
        let app = node("name: app\nports:\n- {name: admin, containerPort: 9090}\n");
        assert_eq!(hook_port(&node("admin"), &app), Some(9090));
        assert_eq!(hook_port(&node("'9090'"), &app), Some(9090));
        assert_eq!(hook_port(&node("stickyd-admin"), &app), None);
        // Through the whole rule: a name on the app itself reaches the admin port.
        let yaml = concat!(
            "kind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n",
            "      terminationGracePeriodSeconds: 335\n      initContainers:\n",
            "      - name: stickyd\n        image: stickyd:1\n        env:\n",
            "        - {name: STICKYD_SERVICE, value: web}\n        - {name: STICKYD_ENDPOINTS, value: 'static:a=10.0.0.1:8080'}\n",
            "        - {name: STICKYD_POD_NAME, value: a}\n",
            "        - {name: STICKYD_COOKIE_SECRET, value: 0123456789abcdef0123456789abcdef}\n",
            "        - {name: STICKYD_DRAIN_TOKEN, value: 0123456789abcdef}\n",
            "      containers:\n      - name: app\n        ports: [{name: admin, containerPort: 9090}]\n",
            "        lifecycle: {preStop: {httpGet: {path: /drain, port: admin, httpHeaders: [{name: Authorization, value: Bearer 0123456789abcdef}]}}}\n",
        );
        assert_eq!(rules(&lint(yaml)), Vec::<&str>::new());
        assert_eq!(
            rules(&lint(&yaml.replace("port: admin,", "port: other,"))),
            vec!["SD013"]
        );
    }

    #[test]
    fn an_admin_address_from_a_config_map_is_not_second_guessed() {
        let yaml = |admin: &str| {
            format!(
                "kind: Deployment\nmetadata: {{name: web}}\nspec:\n  template:\n    spec:\n\
                 \x20     terminationGracePeriodSeconds: 335\n      initContainers:\n\
                 \x20     - name: stickyd\n        image: stickyd:1\n        env:\n\
                 \x20       - {{name: STICKYD_SERVICE, value: web}}\n\
                 \x20       - {{name: STICKYD_ENDPOINTS, value: 'static:a=10.0.0.1:8080'}}\n\
                 \x20       - {{name: STICKYD_POD_NAME, value: a}}\n\
                 \x20       - {{name: STICKYD_COOKIE_SECRET, value: 0123456789abcdef0123456789abcdef}}\n\
                 \x20       - {{name: STICKYD_DRAIN_TOKEN, value: 0123456789abcdef}}\n{admin}\
                 \x20     containers:\n      - name: app\n\
                 \x20       lifecycle: {{preStop: {{httpGet: {{path: /drain, port: 9191, \
                 httpHeaders: [{{name: Authorization, value: Bearer 0123456789abcdef}}]}}}}}}\n"
            )
        };
        let clean = |admin: &str| {
            let r = lint(&yaml(admin));
            assert_eq!((r.objects, r.input_errors.len()), (1, 0), "{admin}");
            assert_eq!(rules(&r), Vec::<&str>::new(), "{admin}");
        };
        clean("        - {name: STICKYD_ADMIN_LISTEN, valueFrom: {configMapKeyRef: {name: c, key: admin}}}\n");
        clean("        envFrom: [{configMapRef: {name: stickyd}}]\n");
        // Known, and another port: reported.
        assert_eq!(rules(&lint(&yaml(""))), vec!["SD013"]);
        clean("        - {name: STICKYD_ADMIN_LISTEN, value: '0.0.0.0:9191'}\n");
    }

    #[test]
    fn app_containers_are_those_with_the_upstream_port() {
        let pod = node(concat!(
            "containers:\n- {name: log, image: x}\n- {name: app, image: stickyd:1, ports: [{containerPort: 8081}]}\n",
            "initContainers:\n- {name: stickyd, image: stickyd:1}\n",
        ));
        let side = &pod.get("initContainers").unwrap().items()[0];
        assert_eq!(app_containers(&pod, side, 8081), (vec![1], true));
        assert_eq!(app_containers(&pod, side, 3000), (vec![0, 1], false));
        let one = node("containers:\n- {name: app, image: x}\n");
        assert_eq!(app_containers(&one, side, 3000), (vec![0], true));
        // A sidecar among the regular containers is not an app.
        let regular = node("containers:\n- {name: stickyd, image: stickyd:1}\n- {name: app, image: x}\n");
        let side = &regular.get("containers").unwrap().items()[0];
        assert_eq!(app_containers(&regular, side, 3000), (vec![1], true));
    }

    #[test]
    fn unknown_env_sources_fall_back_to_defaults() {
        let docs = kyaml::parse_stream(concat!(
            "name: stickyd\nenv:\n- name: STICKYD_POD_NAME\n  valueFrom: {fieldRef: {fieldPath: metadata.name}}\n",
            "- name: STICKYD_LOG\n  valueFrom: {configMapKeyRef: {name: x, key: y}}\n",
            "- name: STICKYD_COOKIE_SECRET_FILE\n  value: /etc/stickyd/secret/key\n",
            "volumeMounts:\n- {name: s, mountPath: /etc/stickyd/secret}\n",
        ))
        .unwrap();
        let env = sidecar_env(&docs[0].root, Some("shop"));
        assert_eq!(env.vars.get("STICKYD_POD_NAME").map(String::as_str), Some("pod-0"));
        assert!(!env.vars.contains_key("STICKYD_LOG"));
        assert!(env.file_problem.is_none());
        // The key file's contents are not in the manifest: a valid key stands for them.
        let mut vars = env.vars.clone();
        vars.insert("STICKYD_SERVICE".into(), "web".into());
        let cfg = Config::parse(&vars, &in_a_pod(&vars)).unwrap();
        assert_eq!(cfg.cookie.keys.len(), 1);
        assert_eq!(cfg.pod_name, "pod-0");
    }
}
