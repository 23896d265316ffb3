//! `stickyd inject`: adds the stickyd sidecar to Kubernetes manifests.
//!
//! It reads a stream of YAML documents, adds stickyd as a native sidecar to
//! each Deployment and StatefulSet (or those named with `--workload`), moves
//! the matching Service's `targetPort` to the sidecar, makes the session-aware
//! drain the app container's `preStop` with a grace period that fits it, adds
//! the RBAC stickyd needs, and writes the stream back. Everything else passes through as it
//! was. Unless told otherwise, the sidecars sign: a Secret per Service holds a
//! random key, and each workload gets a random drain token for its preStop.
//! Running it on its own output changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::kyaml::{self, Node, ParseError};
use crate::model::{self, is_stickyd, PreStop, ShutdownBudget};
use stickyd_sidecar::affinity::Keys;
use stickyd_sidecar::config::{AffinityMode, Config, ConfigError, DrainToken};
use stickyd_sidecar::drain::DrainParams;

/// Arguments of `stickyd inject`.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// A YAML file, or - for standard input.
    #[arg(default_value = "-")]
    pub file: String,
    /// Only inject into the Deployment or StatefulSet with this name (repeatable).
    #[arg(long = "workload", value_name = "NAME")]
    pub workloads: Vec<String>,
    /// The Service whose EndpointSlices list the peers (STICKYD_SERVICE).
    /// Default: the Service in the input whose selector matches the pod labels.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// The sidecar image [default: the image of a sidecar injected earlier, else stickyd:VERSION].
    #[arg(long)]
    pub image: Option<String>,
    /// The sidecar's proxy port (the next free one is taken if the pod uses it).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The sidecar's admin port, for probes and metrics.
    #[arg(long, default_value_t = 9090)]
    pub admin_port: u16,
    /// Cookie and secret options.
    #[command(flatten)]
    pub cookie: Box<CookieArgs>,
    /// The session-aware drain on the app's preStop.
    #[command(flatten)]
    pub drain: DrainArgs,
    /// Affinity settings already written for ingress-nginx or a Gateway.
    #[command(flatten)]
    pub migrate: MigrateArgs,
    /// Print a unified diff of what would change instead of the manifests.
    #[arg(long, visible_alias = "dry-run")]
    pub diff: bool,
}

/// The cookie and secret options of `stickyd inject`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CookieArgs {
    /// STICKYD_COOKIE_NAME.
    #[arg(long, value_name = "NAME")]
    pub cookie_name: Option<String>,
    /// STICKYD_COOKIE_PATH: a literal path prefix, never a regex.
    #[arg(long, value_name = "PATH")]
    pub cookie_path: Option<String>,
    /// STICKYD_COOKIE_DOMAIN.
    #[arg(long, value_name = "DOMAIN")]
    pub cookie_domain: Option<String>,
    /// STICKYD_COOKIE_MAX_AGE, e.g. 48h (default: a session cookie).
    #[arg(long, value_name = "DURATION")]
    pub cookie_max_age: Option<String>,
    /// STICKYD_COOKIE_SECURE: true, false or auto.
    #[arg(long, value_name = "MODE")]
    pub cookie_secure: Option<String>,
    /// STICKYD_COOKIE_SAMESITE: Strict, Lax or None.
    #[arg(long, value_name = "MODE")]
    pub cookie_samesite: Option<String>,
    /// STICKYD_AFFINITY: where the session token travels: cookie (the default), header, cookie,header,
    /// app-cookie (with --app-cookie) or app-header (with --app-header).
    #[arg(long, value_name = "MODE")]
    pub affinity: Option<String>,
    /// STICKYD_AFFINITY_HEADER: the request and response header of --affinity header or cookie,header.
    #[arg(long, value_name = "NAME")]
    pub affinity_header: Option<String>,
    /// STICKYD_APP_COOKIE: the app's own session cookie, its value prefixed with the token
    /// (--affinity app-cookie; no --cookie-name then).
    #[arg(long, value_name = "NAME")]
    pub app_cookie: Option<String>,
    /// STICKYD_APP_HEADER: the app's own session header, such as Mcp-Session-Id, its value prefixed
    /// with the token both ways (--affinity app-header; no --affinity-header then).
    #[arg(long, value_name = "NAME")]
    pub app_header: Option<String>,
    /// A Secret holding the cookie signing key(s); mounted read-only and read
    /// through STICKYD_COOKIE_SECRET_FILE.
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,
    /// The key of the Secret that holds the signing key(s).
    #[arg(long, value_name = "KEY", default_value = "key")]
    pub secret_key: String,
    /// Pass the Secret as STICKYD_COOKIE_SECRET (secretKeyRef) instead of a
    /// mounted file (a file is re-read on rotation; an env var is not).
    #[arg(long, requires = "secret")]
    pub secret_env: bool,
    /// Write no signing key (without --secret, inject writes a Secret
    /// stickyd-SERVICE with a random one): any client can then pin itself to
    /// any pod, and the hop markers between peers are not verified.
    #[arg(long, conflicts_with = "secret")]
    pub unsigned: bool,
    /// Further sidecar settings (`--from-ingress`, `--from-httproute`).
    #[arg(skip)]
    pub extra_env: Vec<(String, String)>,
    /// A signing key is configured other than by `--secret` (an earlier sidecar's env).
    #[arg(skip)]
    pub keyed: bool,
}

/// The sidecar variables the cookie and affinity options set, in the order
/// they are written, each with its option's name: the flag `--NAME` of
/// `stickyd inject`, the annotation `stickyd.io/NAME` of the injector.
pub const OPTION_VARS: [(&str, &str); 10] = [
    ("STICKYD_COOKIE_NAME", "cookie-name"),
    ("STICKYD_COOKIE_PATH", "cookie-path"),
    ("STICKYD_COOKIE_DOMAIN", "cookie-domain"),
    ("STICKYD_COOKIE_MAX_AGE", "cookie-max-age"),
    ("STICKYD_COOKIE_SECURE", "cookie-secure"),
    ("STICKYD_COOKIE_SAMESITE", "cookie-samesite"),
    ("STICKYD_AFFINITY", "affinity"),
    ("STICKYD_AFFINITY_HEADER", "affinity-header"),
    ("STICKYD_APP_COOKIE", "app-cookie"),
    ("STICKYD_APP_HEADER", "app-header"),
];

/// The name of the option that sets `var` (see [`OPTION_VARS`]).
pub fn option_of(var: &str) -> Option<&'static str> {
    OPTION_VARS.iter().find(|(v, _)| *v == var).map(|(_, o)| *o)
}

/// The options of [`OPTION_VARS`] of a [`CookieArgs`], in its order, each
/// borrowed with `&` or `&mut`.
macro_rules! option_fields {
    ($args:ident, $($borrow:tt)+) => {
        [
            $($borrow)+ $args.cookie_name,
            $($borrow)+ $args.cookie_path,
            $($borrow)+ $args.cookie_domain,
            $($borrow)+ $args.cookie_max_age,
            $($borrow)+ $args.cookie_secure,
            $($borrow)+ $args.cookie_samesite,
            $($borrow)+ $args.affinity,
            $($borrow)+ $args.affinity_header,
            $($borrow)+ $args.app_cookie,
            $($borrow)+ $args.app_header,
        ]
    };
}

impl CookieArgs {
    /// The options of [`OPTION_VARS`], in its order.
    fn values(&self) -> [&Option<String>; OPTION_VARS.len()] {
        option_fields!(self, &)
    }

    /// The option that sets `var` (one of [`OPTION_VARS`]).
    fn slot(&mut self, var: &str) -> Option<&mut Option<String>> {
        let i = OPTION_VARS.iter().position(|(v, _)| *v == var)?;
        option_fields!(self, &mut).into_iter().nth(i)
    }

    /// The value given for `var`, if any.
    fn given(&self, var: &str) -> Option<&str> {
        let i = OPTION_VARS.iter().position(|(v, _)| *v == var)?;
        self.values()[i].as_deref()
    }

    /// The mode of `--affinity`, when given and known.
    fn mode(&self) -> Option<AffinityMode> {
        self.affinity.as_deref().and_then(AffinityMode::parse)
    }
}

/// Where affinity settings may already be written, to move them onto the sidecar.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MigrateArgs {
    /// Map the ingress-nginx affinity and session-cookie-* annotations of the Ingresses that route to the Service
    /// (directly or through an ExternalName Service) onto the sidecar, and remove them from those Ingresses.
    #[arg(long)]
    pub from_ingress: bool,
    /// Map the Gateway API sessionPersistence (GEP-1619) of the HTTPRoute and GRPCRoute rules whose backendRefs
    /// reach the Service (directly or through a Backend), and of the Backends, BackendLBPolicies and
    /// XBackendTrafficPolicies for it, onto the sidecar, and remove it there.
    #[arg(long)]
    pub from_httproute: bool,
}

/// The drain options of `stickyd inject`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DrainArgs {
    #[arg(long, value_name = "DURATION", help = drain_help("idle", stickyd_sidecar::drain::DEFAULT_IDLE,
        "it answers once no request of a session pinned to the pod arrived for this long"))]
    pub drain_idle: Option<String>,
    #[arg(long, value_name = "DURATION", help = drain_help("max", stickyd_sidecar::drain::DEFAULT_MAX,
        "it answers at the latest after this long (the grace period is raised to fit)"))]
    pub drain_max: Option<String>,
    /// Leave the app containers' preStop hooks and the grace period as they are.
    #[arg(long, conflicts_with_all = ["drain_idle", "drain_max"])]
    pub no_drain: bool,
}

fn drain_help(key: &str, default: Duration, what: &str) -> String {
    format!(
        "The drain's {key}: {what} [default: {}, or what the app's drain preStop already says]",
        model::fmt_duration(default)
    )
}

/// Why inject could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot parse the input: {0}")]
    Parse(#[from] ParseError),
    #[error("no Deployment or StatefulSet named {0:?} in the input")]
    UnknownWorkload(String),
    #[error("no Deployment or StatefulSet in the input")]
    NoWorkload,
    #[error(
        "{workload}: no Service in the input selects its pods (labels {labels}); pass --service NAME, the Service \
         whose EndpointSlices list these pods"
    )]
    NoService { workload: String, labels: String },
    #[error("{workload}: several Services select its pods ({candidates}); pass --service NAME to choose")]
    AmbiguousService { workload: String, candidates: String },
    #[error(
        "{workload}: cannot tell which port the app listens on (no Service targets it and no container declares a \
         containerPort); add a containerPort to the app container"
    )]
    NoAppPort { workload: String },
    #[error("the options would make stickyd refuse to start: {error}{hint}", error = .0, hint = set_by(.0))]
    InvalidOption(#[from] ConfigError),
    #[error(
        "{id}: with what its sidecar keeps from an earlier injection ({kept}), the options would make stickyd \
         refuse to start: {error}{}; give --affinity (with --affinity-header, --app-cookie or --app-header) to \
         choose the affinity anew",
        set_by(.error)
    )]
    Earlier {
        id: String,
        kept: String,
        error: ConfigError,
    },
    #[error("--{flag} {value:?}: {why}")]
    DrainOption {
        flag: &'static str,
        value: String,
        why: String,
    },
    #[error("Secret {secret} in the input: {why}")]
    Secret { secret: String, why: String },
    #[error("cannot read random bytes from the operating system for {what}: {why}")]
    Random { what: &'static str, why: String },
}

/// `; --OPTION sets it` for an error about a variable an option sets.
fn set_by(e: &ConfigError) -> String {
    option_of(e.var()).map_or_else(String::new, |o| format!(" (--{o} sets {})", e.var()))
}

const SECRET_DIR: &str = "/etc/stickyd/secret";
const SECRET_VOLUME: &str = "stickyd-secret";
const SIDECAR: &str = "stickyd";
const RBAC_NAME: &str = "stickyd";
/// The variables that give the sidecar a signing key.
const KEY_VARS: [&str; 2] = ["STICKYD_COOKIE_SECRET", "STICKYD_COOKIE_SECRET_FILE"];
const TOKEN_VAR: &str = "STICKYD_DRAIN_TOKEN";
const DRAIN_MAX_VAR: &str = "STICKYD_DRAIN_MAX";
/// How many random bytes a generated signing key or drain token has (written
/// as twice as many hex digits, as `openssl rand -hex 32` writes them).
pub const RANDOM_BYTES: usize = 32;

/// `RANDOM_BYTES` bytes from the operating system's CSPRNG, as lowercase hex.
pub fn random_hex(what: &'static str) -> Result<String, InjectError> {
    let mut bytes = [0u8; RANDOM_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| InjectError::Random {
        what,
        why: e.to_string(),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The Secret inject writes for the sidecars behind `service` when no
/// `--secret` names one: all of them share it, since each verifies the hop
/// markers and cookies the others sign.
pub fn default_secret_name(service: &str) -> String {
    format!("stickyd-{service}")
}

/// What was done, for the summary on standard error.
#[derive(Debug, Default)]
pub struct Outcome {
    pub notes: Vec<String>,
}

pub(crate) fn kind_of(n: &Node) -> &str {
    n.str_at(&["kind"]).unwrap_or("")
}

pub(crate) fn name_of(n: &Node) -> &str {
    n.str_at(&["metadata", "name"]).unwrap_or("")
}

pub(crate) fn ns_of(n: &Node) -> Option<String> {
    n.str_at(&["metadata", "namespace"]).map(str::to_string)
}

/// Objects without a namespace go to whatever namespace they are applied to.
pub(crate) fn same_ns(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

fn selects(service: &Node, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = service.path(&["spec", "selector"]) else {
        return false;
    };
    let mut any = false;
    for (k, _, v) in sel.entries() {
        any = true;
        if labels.get(k).map(String::as_str) != v.as_str() {
            return false;
        }
    }
    any
}

/// A container port: name and number.
#[derive(Debug, Clone)]
struct Port {
    name: Option<String>,
    number: i64,
}

fn ports_of(container: &Node) -> Vec<Port> {
    container
        .get("ports")
        .map(Node::items)
        .unwrap_or(&[])
        .iter()
        .filter_map(|p| {
            Some(Port {
                name: p.str_at(&["name"]).map(str::to_string),
                number: p.get("containerPort")?.as_i64()?,
            })
        })
        .collect()
}

/// The number a Service port sends traffic to, resolved against the app's ports.
fn target_number(service_port: &Node, app_ports: &[Port]) -> Option<i64> {
    let target = service_port.get("targetPort").or_else(|| service_port.get("port"))?;
    if let Some(n) = target.as_i64() {
        return Some(n);
    }
    let name = target.as_str()?;
    app_ports
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.number)
}

fn env(name: &str, value: impl Into<String>) -> Node {
    Node::map(vec![("name", Node::str(name)), ("value", Node::str(value))])
}

fn env_field(name: &str, field: &str) -> Node {
    Node::map(vec![
        ("name", Node::str(name)),
        (
            "valueFrom",
            Node::map(vec![("fieldRef", Node::map(vec![("fieldPath", Node::str(field))]))]),
        ),
    ])
}

fn strs(items: &[&str]) -> Node {
    Node::seq(items.iter().map(|s| Node::str(*s)).collect())
}

/// The cookie and affinity env from the options, in the order of
/// [`OPTION_VARS`], then the further settings.
fn cookie_env(args: &InjectArgs) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for ((var, _), v) in OPTION_VARS.iter().zip(args.cookie.values()) {
        if let Some(v) = v {
            out.push((var.to_string(), v.clone()));
        }
    }
    out.extend(args.cookie.extra_env.iter().cloned());
    out
}

/// Checks the options with stickyd's own parser, so that a bad cookie option
/// is refused now rather than by the pod at start.
pub fn validate(args: &InjectArgs) -> Result<(), ConfigError> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    m.insert("STICKYD_POD_NAME".into(), "pod-0".into());
    m.insert(
        "STICKYD_SERVICE".into(),
        args.service.clone().unwrap_or_else(|| "svc".into()),
    );
    m.insert("STICKYD_LISTEN".into(), format!("0.0.0.0:{}", args.port));
    m.insert(
        "STICKYD_ADMIN_LISTEN".into(),
        format!("0.0.0.0:{}", args.admin_port.max(1)),
    );
    m.insert("STICKYD_UPSTREAM".into(), "http://127.0.0.1:1".into());
    for (k, v) in cookie_env(args) {
        m.insert(k, v);
    }
    if args.cookie.secret.is_some() || args.cookie.keyed || !args.cookie.unsigned {
        m.insert(
            "STICKYD_COOKIE_SECRET".into(),
            "0123456789abcdef0123456789abcdef".into(),
        );
    }
    Config::from_env(&m).map(|_| ())
}

pub use stickyd_sidecar::config::DEFAULT_IMAGE;

struct Plan {
    image: String,
    service: String,
    upstream: i64,
    port: (String, i64),
    admin: (String, i64),
    /// The drain token as a literal; None when the sidecar takes it from elsewhere.
    token: Option<String>,
}

fn sidecar(args: &InjectArgs, plan: &Plan) -> Node {
    let mut envs = vec![
        env_field("STICKYD_POD_NAME", "metadata.name"),
        env_field("STICKYD_NAMESPACE", "metadata.namespace"),
        env("STICKYD_SERVICE", &plan.service),
        env("STICKYD_LISTEN", format!("0.0.0.0:{}", plan.port.1)),
        env("STICKYD_ADMIN_LISTEN", format!("0.0.0.0:{}", plan.admin.1)),
        env("STICKYD_UPSTREAM", format!("http://127.0.0.1:{}", plan.upstream)),
    ];
    for (k, v) in cookie_env(args) {
        envs.push(env(&k, v));
    }
    let mut c = vec![
        ("name", Node::str(SIDECAR)),
        ("image", Node::str(&plan.image)),
        ("restartPolicy", Node::str("Always")),
        ("args", strs(&["run"])),
        (
            "ports",
            Node::seq(vec![
                Node::map(vec![
                    ("name", Node::str(&plan.port.0)),
                    ("containerPort", Node::int(plan.port.1)),
                ]),
                Node::map(vec![
                    ("name", Node::str(&plan.admin.0)),
                    ("containerPort", Node::int(plan.admin.1)),
                ]),
            ]),
        ),
    ];
    if let Some(secret) = &args.cookie.secret {
        if args.cookie.secret_env {
            envs.push(Node::map(vec![
                ("name", Node::str("STICKYD_COOKIE_SECRET")),
                (
                    "valueFrom",
                    Node::map(vec![(
                        "secretKeyRef",
                        Node::map(vec![
                            ("name", Node::str(secret)),
                            ("key", Node::str(&args.cookie.secret_key)),
                        ]),
                    )]),
                ),
            ]));
        } else {
            envs.push(env("STICKYD_COOKIE_SECRET_FILE", format!("{SECRET_DIR}/key")));
        }
    }
    if let Some(token) = &plan.token {
        envs.push(env(TOKEN_VAR, token));
    }
    c.push(("env", Node::seq(envs)));
    if args.cookie.secret.is_some() && !args.cookie.secret_env {
        c.push((
            "volumeMounts",
            Node::seq(vec![Node::map(vec![
                ("name", Node::str(SECRET_VOLUME)),
                ("mountPath", Node::str(SECRET_DIR)),
                ("readOnly", Node::bool(true)),
            ])]),
        ));
    }
    let probe = |path: &str, period: i64| {
        Node::map(vec![
            (
                "httpGet",
                Node::map(vec![("path", Node::str(path)), ("port", Node::str(&plan.admin.0))]),
            ),
            ("periodSeconds", Node::int(period)),
        ])
    };
    c.push(("readinessProbe", probe("/readyz", 2)));
    c.push(("livenessProbe", probe("/healthz", 10)));
    c.push((
        "resources",
        Node::map(vec![
            (
                "requests",
                Node::map(vec![("cpu", Node::str("50m")), ("memory", Node::str("32Mi"))]),
            ),
            (
                "limits",
                Node::map(vec![("cpu", Node::str("1")), ("memory", Node::str("128Mi"))]),
            ),
        ]),
    ));
    c.push((
        "securityContext",
        Node::map(vec![
            ("runAsNonRoot", Node::bool(true)),
            ("runAsUser", Node::int(65532)),
            ("runAsGroup", Node::int(65532)),
            ("readOnlyRootFilesystem", Node::bool(true)),
            ("allowPrivilegeEscalation", Node::bool(false)),
            ("capabilities", Node::map(vec![("drop", strs(&["ALL"]))])),
        ]),
    ));
    Node::map(c)
}

fn metadata(name: &str, ns: &Option<String>) -> Node {
    let mut m = vec![("name", Node::str(name))];
    if let Some(ns) = ns {
        m.push(("namespace", Node::str(ns)));
    }
    Node::map(m)
}

fn subject(sa: &str, ns: &Option<String>) -> Node {
    let mut s = vec![("kind", Node::str("ServiceAccount")), ("name", Node::str(sa))];
    if let Some(ns) = ns {
        s.push(("namespace", Node::str(ns)));
    }
    Node::map(s)
}

/// Carries over from a sidecar injected (or written) earlier what inject does
/// not set itself: other env variables (cookie options given then, say),
/// other volume mounts, the resources, and any other field.
fn keep_customisations(new: &mut Node, old: &Node) {
    for (key, k, v) in old.entries() {
        match key {
            "env" | "volumeMounts" => {
                let Some(list) = new.entry_seq(key) else { continue };
                for item in v.items() {
                    let name = item.str_at(&["name"]);
                    if !list.iter().any(|n| n.str_at(&["name"]) == name) {
                        list.push(item.clone());
                    }
                }
            }
            "resources" => new.set(key, v.clone()),
            _ => {
                if new.get(key).is_none() {
                    if let Some(m) = new.as_map_mut() {
                        m.push((k.clone(), v.clone()));
                    }
                }
            }
        }
    }
}

/// Makes a regenerated node look like the one it replaces wherever they agree:
/// mapping keys in the old order, list items with a `name` in the old order,
/// and equal scalars written as before. Re-injecting then changes only what
/// changed, whatever tool wrote the manifests.
fn align(new: &mut Node, old: &Node) {
    use crate::kyaml::Value;
    if new.same_scalar(old) {
        *new = old.clone();
        return;
    }
    match (&mut new.value, &old.value) {
        (Value::Map(entries), Value::Map(old_entries)) => {
            let pos = |k: &Node| old_entries.iter().position(|(ok, _)| ok.as_str() == k.as_str());
            entries.sort_by_key(|(k, _)| pos(k).unwrap_or(usize::MAX));
            for (k, v) in entries.iter_mut() {
                if let Some(i) = pos(k) {
                    k.line = old_entries[i].0.line;
                    align(v, &old_entries[i].1);
                }
            }
        }
        (Value::Seq(items), Value::Seq(old_items)) => {
            let named = |n: &Node| n.str_at(&["name"]).map(str::to_string);
            if items.iter().all(|n| named(n).is_some()) {
                let pos = |n: &Node| old_items.iter().position(|o| named(o) == named(n));
                items.sort_by_key(|n| pos(n).unwrap_or(usize::MAX));
                for n in items.iter_mut() {
                    if let Some(i) = pos(n) {
                        align(n, &old_items[i]);
                    }
                }
            } else if items.len() == old_items.len() {
                for (n, o) in items.iter_mut().zip(old_items) {
                    align(n, o);
                }
            }
        }
        _ => {}
    }
}

/// Adds the ServiceAccount (when stickyd's own), Role and RoleBinding that
/// stickyd needs, or the subject to an existing RoleBinding.
fn ensure_rbac(docs: &mut Vec<Node>, sa: &str, ns: &Option<String>) {
    let find = |docs: &[Node], kind: &str, name: &str| {
        docs.iter()
            .position(|d| kind_of(d) == kind && name_of(d) == name && same_ns(&ns_of(d), ns))
    };
    if sa == RBAC_NAME && find(docs, "ServiceAccount", sa).is_none() {
        docs.push(Node::map(vec![
            ("apiVersion", Node::str("v1")),
            ("kind", Node::str("ServiceAccount")),
            ("metadata", metadata(sa, ns)),
        ]));
    }
    if find(docs, "Role", RBAC_NAME).is_none() {
        docs.push(Node::map(vec![
            ("apiVersion", Node::str("rbac.authorization.k8s.io/v1")),
            ("kind", Node::str("Role")),
            ("metadata", metadata(RBAC_NAME, ns)),
            (
                "rules",
                Node::seq(vec![Node::map(vec![
                    ("apiGroups", strs(&["discovery.k8s.io"])),
                    ("resources", strs(&["endpointslices"])),
                    ("verbs", strs(&["get", "list", "watch"])),
                ])]),
            ),
        ]));
    }
    match find(docs, "RoleBinding", RBAC_NAME) {
        Some(i) => {
            let has = docs[i]
                .get("subjects")
                .map(Node::items)
                .unwrap_or(&[])
                .iter()
                .any(|s| s.str_at(&["kind"]) == Some("ServiceAccount") && s.str_at(&["name"]) == Some(sa));
            if !has {
                if let Some(subjects) = docs[i].entry_seq("subjects") {
                    subjects.push(subject(sa, ns));
                }
            }
        }
        None => docs.push(Node::map(vec![
            ("apiVersion", Node::str("rbac.authorization.k8s.io/v1")),
            ("kind", Node::str("RoleBinding")),
            ("metadata", metadata(RBAC_NAME, ns)),
            (
                "roleRef",
                Node::map(vec![
                    ("apiGroup", Node::str("rbac.authorization.k8s.io")),
                    ("kind", Node::str("Role")),
                    ("name", Node::str(RBAC_NAME)),
                ]),
            ),
            ("subjects", Node::seq(vec![subject(sa, ns)])),
        ])),
    }
}

/// Picks a free port number and name, starting from the wanted ones.
fn free_port(want: i64, names: &[&str], used: &[Port], taken: &[i64]) -> (String, i64) {
    let mut n = want;
    while used.iter().any(|p| p.number == n) || taken.contains(&n) {
        n += 1;
    }
    let name = names
        .iter()
        .find(|c| !used.iter().any(|p| p.name.as_deref() == Some(**c)))
        .map_or_else(|| format!("sd-{n}"), |s| s.to_string());
    (name, n)
}

/// How likely a Service port is the app's HTTP port: lower is likelier.
fn http_rank(port: &Node) -> u8 {
    let name = port.str_at(&["name"]).unwrap_or("");
    if name == "web" || name.starts_with("http") {
        0
    } else if matches!(port.get("port").and_then(Node::as_i64), Some(80 | 8080 | 443)) {
        1
    } else {
        2
    }
}

/// The env entry of a container that sets `name`.
fn env_entry<'a>(container: &'a Node, name: &str) -> Option<&'a Node> {
    container
        .get("env")
        .map(Node::items)
        .unwrap_or(&[])
        .iter()
        .find(|e| e.str_at(&["name"]) == Some(name))
}

/// The literal value of an env variable of a container.
fn env_of<'a>(container: &'a Node, name: &str) -> Option<&'a str> {
    env_entry(container, name)?.str_at(&["value"])
}

/// Sets a literal env variable of a container: a literal already there takes
/// the new value, one set from elsewhere (valueFrom) is the user's and stays.
fn set_env(container: &mut Node, name: &str, value: &str) {
    let Some(list) = container.entry_seq("env") else { return };
    match list.iter_mut().find(|e| e.str_at(&["name"]) == Some(name)) {
        Some(e) if e.get("valueFrom").is_some() => {}
        Some(e) => {
            if e.str_at(&["value"]) != Some(value) {
                e.set("value", Node::str(value));
            }
        }
        None => list.push(env(name, value)),
    }
}

fn upstream_of(sidecar: &Node) -> Option<i64> {
    env_of(sidecar, "STICKYD_UPSTREAM")?
        .trim_end_matches('/')
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

/// The drain options as given, checked with the drain's own parser.
#[derive(Debug, Clone, Copy, Default)]
struct DrainFlags {
    idle: Option<Duration>,
    max: Option<Duration>,
}

impl DrainFlags {
    fn parse(args: &DrainArgs) -> Result<DrainFlags, InjectError> {
        let one = |flag: &'static str, key: &str, raw: &Option<String>| {
            let Some(raw) = raw else { return Ok(None) };
            // What the drain itself says of this value in its query; a value
            // with `&` would read as more than one parameter there.
            let query = match stickyd_sidecar::config::parse_duration(raw) {
                Some(d) => format!("{key}={}", model::fmt_duration(d)),
                None => format!("{key}={}", raw.replace('&', "%26")),
            };
            DrainParams::parse_query(Some(&query))
                .map(|p| Some(if key == "idle" { p.idle } else { p.max }))
                .map_err(|why| InjectError::DrainOption {
                    flag,
                    value: raw.clone(),
                    why,
                })
        };
        Ok(DrainFlags {
            idle: one("drain-idle", "idle", &args.drain_idle)?,
            max: one("drain-max", "max", &args.drain_max)?,
        })
    }

    fn given(&self) -> bool {
        self.idle.is_some() || self.max.is_some()
    }

    /// `earlier` with the options given applied.
    fn apply(&self, earlier: DrainParams) -> DrainParams {
        DrainParams {
            idle: self.idle.unwrap_or(earlier.idle),
            max: self.max.unwrap_or(earlier.max),
        }
    }
}

/// What the drain changes in one pod.
#[derive(Debug, Default)]
struct DrainEdits {
    /// New preStop hooks, by index in `containers`.
    hooks: Vec<(usize, Node)>,
    /// The containers whose preStop calls the drain.
    wired: Vec<String>,
    /// The longest drain among them.
    max: Option<Duration>,
    /// A raised terminationGracePeriodSeconds, with how it is made up.
    grace: Option<(i64, String)>,
    notes: Vec<String>,
}

/// Whether an `httpHeaders` item is the `Authorization` header.
fn is_authorization(header: &Node) -> bool {
    header
        .str_at(&["name"])
        .is_some_and(|n| n.trim().eq_ignore_ascii_case("authorization"))
}

/// The drain's preStop hook: an httpGet on the admin port by number, since
/// the kubelet resolves a named port only among the app container's own ports
/// and sends the call to the pod IP over plain HTTP. `authorization` is the
/// header value that carries the sidecar's drain token (None: the token is
/// not known here, and the hook's own header, if any, stays).
fn drain_hook(path: &str, admin: i64, old_get: Option<&Node>, authorization: Option<&str>) -> Node {
    let mut get = vec![
        (Node::str("path"), Node::str(path)),
        (Node::str("port"), Node::int(admin)),
    ];
    // Headers, say, are the user's; host and scheme would miss the admin port.
    for (key, k, v) in old_get.into_iter().flat_map(Node::entries) {
        if !matches!(key, "path" | "port" | "host" | "scheme" | "httpHeaders") {
            get.push((k.clone(), v.clone()));
        }
    }
    let mut headers: Vec<Node> = old_get
        .and_then(|g| g.get("httpHeaders"))
        .map(|h| h.items().to_vec())
        .unwrap_or_default();
    if let Some(value) = authorization {
        let header = Node::map(vec![("name", Node::str("Authorization")), ("value", Node::str(value))]);
        match headers.iter().position(is_authorization) {
            Some(i) => headers[i] = header,
            None => headers.push(header),
        }
    }
    if !headers.is_empty() {
        get.push((Node::str("httpHeaders"), Node::seq(headers)));
    }
    Node::map(vec![(
        "httpGet",
        Node {
            line: 0,
            value: kyaml::Value::Map(get),
        },
    )])
}

/// Wires the drain into the preStop of the app containers of `pod` (those
/// that declare the port stickyd proxies to) and sizes the grace period.
/// `authorization` is the header value a drain `httpGet` sends (None: the
/// sidecar's token is not known here).
fn plan_drain(
    pod: &Node,
    sidecar: &Node,
    (upstream, admin): (i64, i64),
    flags: DrainFlags,
    authorization: Option<&str>,
    id: &str,
) -> DrainEdits {
    let mut e = DrainEdits::default();
    let containers = pod.get("containers").map(Node::items).unwrap_or(&[]);
    let (mut apps, sure) = model::app_containers(pod, sidecar, upstream);
    let default_path = model::drain_path(&flags.apply(DrainParams::default()));
    let call = |path: &str| format!("GET http://127.0.0.1:{admin}{path}");
    if !sure {
        apps.retain(|&i| model::pre_stop(&containers[i]).calls_drain());
        if apps.is_empty() {
            e.notes.push(format!(
                "warning: {id}: several containers and none declares port {upstream}, so the drain is not wired: add \
                 lifecycle.preStop.httpGet {{path: {default_path:?}, port: {admin}}} to the one that serves it"
            ));
        }
    }
    for i in apps {
        let c = &containers[i];
        let name = c.str_at(&["name"]).unwrap_or("?");
        let old = c.path(&["lifecycle", "preStop"]);
        let hook = model::pre_stop(c);
        let (path, old_get) = match &hook {
            PreStop::Missing => (default_path.clone(), None),
            PreStop::Sleep { .. } => {
                e.notes.push(format!(
                    "{id}: container {name}: its preStop sleep is replaced by the session-aware drain ({}): \
                     sessions still active when a sleep ends would be moved to other pods",
                    call(&default_path)
                ));
                (default_path.clone(), None)
            }
            PreStop::DrainGet { get, path, params } => {
                let path = match params {
                    Ok(_) if !flags.given() => path.as_str().unwrap_or_default().to_string(),
                    Ok(p) => model::drain_path(&flags.apply(*p)),
                    Err(why) => {
                        e.notes.push(format!(
                            "{id}: container {name}: its drain path {:?} is refused by the drain ({why}); replaced \
                             by {default_path:?}",
                            path.as_str().unwrap_or_default()
                        ));
                        default_path.clone()
                    }
                };
                (path, Some(*get))
            }
            PreStop::DrainExec { params, .. } => {
                if flags.given() {
                    e.notes.push(format!(
                        "warning: {id}: container {name} calls the drain from its own exec preStop, which is kept \
                         as it is: set idle and max in its command"
                    ));
                }
                e.wired.push(name.to_string());
                let max = params.as_ref().map_or(DrainParams::default().max, |p| p.max);
                e.max = e.max.max(Some(max));
                continue;
            }
            PreStop::Own { action, .. } => {
                e.notes.push(format!(
                    "warning: {id}: container {name} keeps its own preStop ({action}), so the session-aware drain is \
                     not wired: call {} at the end of that hook (e.g. curl -fsS), or by hand before the pod is \
                     deleted (kubectl port-forward pod/NAME {admin}, then the same call on 127.0.0.1)",
                    call(&default_path)
                ));
                continue;
            }
        };
        let mut new = drain_hook(&path, admin, old_get, authorization);
        if authorization.is_none()
            && !new
                .path(&["httpGet", "httpHeaders"])
                .map(Node::items)
                .unwrap_or(&[])
                .iter()
                .any(is_authorization)
        {
            e.notes.push(format!(
                "warning: {id}: the sidecar's {TOKEN_VAR} comes from valueFrom, which inject cannot read: add \
                 httpHeaders [{{name: Authorization, value: \"Bearer TOKEN\"}}] with that token to the drain \
                 preStop of container {name}, or the kubelet's call gets 403 and the pod stops without its \
                 session drain"
            ));
        }
        if let Some(old) = old {
            align(&mut new, old);
            if matches!(hook, PreStop::DrainGet { .. }) && kyaml::emit(&new) != kyaml::emit(old) {
                e.notes.push(format!(
                    "{id}: container {name}: its drain preStop is now {}",
                    call(&path)
                ));
            }
        }
        if let Some(Ok(p)) = DrainParams::parse_path(&path) {
            e.max = e.max.max(Some(p.max));
        }
        e.wired.push(name.to_string());
        e.hooks.push((i, new));
    }
    if let Some(max) = e.max {
        let budget = ShutdownBudget::of(sidecar, max);
        let grace = pod
            .get("terminationGracePeriodSeconds")
            .and_then(Node::as_i64)
            .unwrap_or(model::DEFAULT_GRACE_SECONDS);
        if grace < budget.seconds() {
            e.grace = Some((budget.seconds(), budget.explain()));
        }
    }
    e
}

/// Where stickyd already runs in a pod spec: the index of its own init
/// container (named `stickyd` and running stickyd), and whether any other
/// container runs stickyd.
fn sidecars_in(pod: &Node) -> (Option<usize>, bool) {
    let init = pod.get("initContainers").map(Node::items).unwrap_or(&[]);
    let mine = init
        .iter()
        .position(|c| c.str_at(&["name"]) == Some(SIDECAR) && is_stickyd(c));
    let elsewhere = others(pod, mine).any(is_stickyd);
    (mine, elsewhere)
}

/// The containers of a pod spec but stickyd's own init container.
fn others(pod: &Node, mine: Option<usize>) -> impl Iterator<Item = &Node> {
    let init = pod.get("initContainers").map(Node::items).unwrap_or(&[]);
    pod.get("containers").map(Node::items).unwrap_or(&[]).iter().chain(
        init.iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != mine)
            .map(|(_, c)| c),
    )
}

/// What was added to one pod spec.
#[derive(Debug)]
pub struct PodInjection {
    /// The app's port on 127.0.0.1 (STICKYD_UPSTREAM).
    pub upstream: i64,
    /// The sidecar's proxy port: its name and number.
    pub port: (String, i64),
    /// The sidecar's admin port: its name and number.
    pub admin: (String, i64),
    /// The pod's ServiceAccount: its own, or stickyd's when it named none.
    pub service_account: String,
    /// The app containers whose preStop now calls the drain.
    pub drain_wired: Vec<String>,
    /// A raised terminationGracePeriodSeconds, with how it is made up.
    pub grace: Option<(i64, String)>,
    /// STICKYD_DRAIN_MAX as set: what the grace period leaves after
    /// STICKYD_DRAIN_SECONDS and STICKYD_DRAIN_TIMEOUT (None: nothing).
    pub drain_max: Option<Duration>,
    /// What the user should know (warnings start with `warning:`).
    pub notes: Vec<String>,
}

/// Adds stickyd to one pod spec as `stickyd inject` adds it to a workload's
/// pod template: the native sidecar, the secret volume, the drain preStop
/// and the grace period, and `serviceAccountName: stickyd` when the pod names
/// none. `service` names the Service whose EndpointSlices list the pods (it
/// takes the place of `args.service`); `app_port` is the app's port, else the
/// first containerPort is. A sidecar injected earlier is regenerated in
/// place. `id` names the pod in messages.
pub fn inject_pod(
    pod: &mut Node,
    args: &InjectArgs,
    service: &str,
    app_port: Option<i64>,
    id: &str,
) -> Result<PodInjection, InjectError> {
    let mut checked = args.clone();
    checked.service = Some(service.to_string());
    validate(&checked)?;
    let drain_flags = DrainFlags::parse(&args.drain)?;
    let (mine, _) = sidecars_in(pod);
    let targets: Vec<Node> = app_port
        .map(|n| Node::map(vec![("port", Node::int(n)), ("targetPort", Node::int(n))]))
        .into_iter()
        .collect();
    inject_into(pod, &checked, drain_flags, service, &targets, mine, id)
}

/// The pod spec half of [`inject`]: `targets` are the ports of the Services
/// in front of the pods (the app's port is the HTTP one they reach), and
/// `mine` the index of a sidecar injected earlier.
fn inject_into(
    pod: &mut Node,
    args: &InjectArgs,
    drain_flags: DrainFlags,
    service: &str,
    targets: &[Node],
    mine: Option<usize>,
    id: &str,
) -> Result<PodInjection, InjectError> {
    let app_ports: Vec<Port> = others(pod, mine).flat_map(ports_of).collect();
    let init = pod.get("initContainers").map(Node::items).unwrap_or(&[]);

    // The app's port: kept from an earlier injection, else what the Service targets, else the first declared.
    let upstream = mine
        .and_then(|i| upstream_of(&init[i]))
        .or_else(|| {
            // The HTTP port of the Services, when they have several (metrics, say).
            targets
                .iter()
                .filter_map(|p| Some((http_rank(p), target_number(p, &app_ports)?)))
                .min_by_key(|(rank, _)| *rank)
                .map(|(_, n)| n)
        })
        .or_else(|| {
            pod.get("containers")
                .map(Node::items)
                .unwrap_or(&[])
                .iter()
                .flat_map(ports_of)
                .next()
                .map(|p| p.number)
        })
        .ok_or_else(|| InjectError::NoAppPort {
            workload: id.to_string(),
        })?;

    let port = free_port(
        i64::from(args.port),
        &["stickyd", "stickyd-proxy"],
        &app_ports,
        &[upstream],
    );
    let admin = free_port(
        i64::from(args.admin_port),
        &["stickyd-admin", "stickyd-adm"],
        &app_ports,
        &[upstream, port.1],
    );
    let image = args
        .image
        .clone()
        .or_else(|| mine.and_then(|i| init[i].str_at(&["image"])).map(str::to_string))
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    let mut notes = Vec::new();
    let mut generated = false;
    // The drain token: the earlier sidecar's, else a new random one.
    let token = match mine.and_then(|i| env_entry(&init[i], TOKEN_VAR)) {
        Some(e) if e.get("value").is_none() => None,
        Some(e) => {
            let old = e.str_at(&["value"]).unwrap_or_default();
            match DrainToken::parse(old) {
                Ok(_) => Some(old.trim().to_string()),
                Err(why) => {
                    notes.push(format!(
                        "{id}: the sidecar's {TOKEN_VAR} is refused by stickyd ({why}): replaced by a random token, \
                         here and in the drain preStop's Authorization header"
                    ));
                    Some(random_hex("the drain token")?)
                }
            }
        }
        None => {
            generated = true;
            Some(random_hex("the drain token")?)
        }
    };
    let authorization = token.as_deref().map(|t| format!("Bearer {t}"));
    let plan = Plan {
        image,
        service: service.to_string(),
        upstream,
        port,
        admin,
        token,
    };
    let mut container = sidecar(args, &plan);
    if let Some(i) = mine {
        keep_customisations(&mut container, &init[i]);
        notes.extend(settle_earlier(&mut container, args, id)?);
    }
    let mut drain = if args.drain.no_drain {
        DrainEdits::default()
    } else {
        plan_drain(
            pod,
            &container,
            (upstream, plan.admin.1),
            drain_flags,
            authorization.as_deref(),
            id,
        )
    };
    if generated {
        notes.push(if drain.hooks.is_empty() {
            format!(
                "{id}: a random drain token ({TOKEN_VAR}) for the sidecar: a preStop httpGet that calls its drain \
                 sends it as Authorization: Bearer TOKEN"
            )
        } else {
            format!(
                "{id}: a random drain token ({TOKEN_VAR}) for the sidecar and the drain preStop's Authorization header"
            )
        });
    }
    drain.notes.splice(0..0, notes);
    // STICKYD_DRAIN_MAX: what the grace period leaves after stickyd's own drain.
    let grace = drain
        .grace
        .as_ref()
        .map(|(g, _)| *g)
        .or_else(|| pod.get("terminationGracePeriodSeconds").and_then(Node::as_i64))
        .unwrap_or(model::DEFAULT_GRACE_SECONDS);
    let drain_max = ShutdownBudget::max_within(&container, grace);
    if let Some(max) = drain_max {
        set_env(&mut container, DRAIN_MAX_VAR, &model::fmt_duration(max));
    }
    if let Some(i) = mine {
        align(&mut container, &init[i]);
    }
    let existing_sa = pod
        .str_at(&["serviceAccountName"])
        .or_else(|| pod.str_at(&["serviceAccount"]))
        .map(str::to_string);

    // Edit the pod spec.
    if let Some(init) = pod.entry_seq("initContainers") {
        match mine {
            Some(i) => init[i] = container,
            None => init.push(container),
        }
    }
    if let Some(apps) = pod.get_mut("containers").and_then(Node::as_seq_mut) {
        for (i, hook) in drain.hooks {
            if let Some(lifecycle) = apps.get_mut(i).and_then(|c| c.entry_map("lifecycle")) {
                lifecycle.set("preStop", hook);
            }
        }
    }
    let service_account = match existing_sa {
        Some(sa) => sa,
        None => {
            pod.set("serviceAccountName", Node::str(RBAC_NAME));
            RBAC_NAME.to_string()
        }
    };
    if let Some((grace, _)) = &drain.grace {
        pod.set("terminationGracePeriodSeconds", Node::int(*grace));
    }
    if let Some(secret) = args.cookie.secret.as_ref().filter(|_| !args.cookie.secret_env) {
        let volume = Node::map(vec![
            ("name", Node::str(SECRET_VOLUME)),
            (
                "secret",
                Node::map(vec![
                    ("secretName", Node::str(secret)),
                    (
                        "items",
                        Node::seq(vec![Node::map(vec![
                            ("key", Node::str(&args.cookie.secret_key)),
                            ("path", Node::str("key")),
                        ])]),
                    ),
                    // A missing Secret is a FailedMount, never an unsigned pod.
                    ("optional", Node::bool(false)),
                ]),
            ),
        ]);
        if let Some(vols) = pod.entry_seq("volumes") {
            match vols.iter().position(|v| v.str_at(&["name"]) == Some(SECRET_VOLUME)) {
                Some(i) => vols[i] = volume,
                None => vols.push(volume),
            }
        }
    }
    Ok(PodInjection {
        upstream,
        port: plan.port,
        admin: plan.admin,
        service_account,
        drain_wired: drain.wired,
        grace: drain.grace,
        drain_max,
        notes: drain.notes,
    })
}

/// Injects stickyd into the documents in place.
pub fn inject(docs: &mut Vec<Node>, args: &InjectArgs) -> Result<Outcome, InjectError> {
    validate(args)?;
    let drain_flags = DrainFlags::parse(&args.drain)?;
    let mut outcome = Outcome::default();
    let targets: Vec<usize> = (0..docs.len())
        .filter(|&i| matches!(kind_of(&docs[i]), "Deployment" | "StatefulSet"))
        .filter(|&i| args.workloads.is_empty() || args.workloads.iter().any(|w| w == name_of(&docs[i])))
        .collect();
    for w in &args.workloads {
        if !targets.iter().any(|&i| name_of(&docs[i]) == w) {
            return Err(InjectError::UnknownWorkload(w.clone()));
        }
    }
    if targets.is_empty() {
        return Err(InjectError::NoWorkload);
    }
    for t in targets {
        let id = format!("{}/{}", kind_of(&docs[t]), name_of(&docs[t]));
        let ns = ns_of(&docs[t]);
        let labels: BTreeMap<String, String> = docs[t]
            .path(&["spec", "template", "metadata", "labels"])
            .into_iter()
            .flat_map(|l| l.entries())
            .filter_map(|(k, _, v)| Some((k.to_string(), v.as_str()?.to_string())))
            .collect();
        let Some(pod) = docs[t].path(&["spec", "template", "spec"]) else {
            outcome.notes.push(format!("{id}: no pod template; left as is"));
            continue;
        };
        let (mine, elsewhere) = sidecars_in(pod);
        // A stickyd init container of our own is regenerated; any other is left alone.
        if elsewhere && mine.is_none() {
            outcome
                .notes
                .push(format!("{id}: already has a stickyd container of its own; left as is"));
            continue;
        }
        let app_ports: Vec<Port> = others(pod, mine).flat_map(ports_of).collect();

        // The Services that select these pods, and the one stickyd watches.
        let matching: Vec<usize> = (0..docs.len())
            .filter(|&i| kind_of(&docs[i]) == "Service" && same_ns(&ns_of(&docs[i]), &ns) && selects(&docs[i], &labels))
            .collect();
        let init = pod.get("initContainers").map(Node::items).unwrap_or(&[]);
        let earlier = mine
            .and_then(|i| env_of(&init[i], "STICKYD_SERVICE"))
            .map(str::to_string);
        let service = match &args.service {
            Some(s) => s.clone(),
            None => {
                let mut c: Vec<usize> = matching.clone();
                if c.len() > 1 {
                    c.retain(|&i| docs[i].str_at(&["spec", "clusterIP"]) != Some("None"));
                }
                match c.as_slice() {
                    [one] => name_of(&docs[*one]).to_string(),
                    // What an earlier injection was told or found.
                    _ if earlier.is_some() => earlier.clone().unwrap_or_default(),
                    [] if matching.is_empty() => {
                        return Err(InjectError::NoService {
                            workload: id,
                            labels: labels
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        })
                    }
                    _ => {
                        return Err(InjectError::AmbiguousService {
                            workload: id,
                            candidates: matching
                                .iter()
                                .map(|&i| name_of(&docs[i]))
                                .collect::<Vec<_>>()
                                .join(", "),
                        })
                    }
                }
            }
        };
        let mut services = matching.clone();
        if let Some(named) = (0..docs.len())
            .find(|&i| kind_of(&docs[i]) == "Service" && name_of(&docs[i]) == service && same_ns(&ns_of(&docs[i]), &ns))
        {
            if !services.contains(&named) {
                services.push(named);
            }
        }
        let service_ports: Vec<Node> = services
            .iter()
            .flat_map(|&s| docs[s].path(&["spec", "ports"]).map(Node::items).unwrap_or(&[]))
            .cloned()
            .collect();

        // A signing key the sidecar already has (an earlier injection's, or its own) is kept.
        let keyed = mine.is_some_and(|i| KEY_VARS.iter().any(|v| model::is_set(&init[i], v)));

        // --from-ingress, --from-httproute: the settings written for the controller or the Gateway.
        let migrating = args.migrate.from_ingress || args.migrate.from_httproute;
        let mut mapped = None;
        if migrating {
            let mut names: Vec<String> = services.iter().map(|&s| name_of(&docs[s]).to_string()).collect();
            if !names.contains(&service) {
                names.push(service.clone());
            }
            let plan = crate::migrate::plan(
                docs,
                &names,
                &ns,
                args.migrate.from_ingress,
                args.migrate.from_httproute,
                keyed || args.cookie.secret.is_some() || !args.cookie.unsigned,
            );
            let mut a = args.clone();
            a.cookie.keyed = keyed;
            let notes = take_settings(&mut a, &plan);
            validate(&a)?;
            outcome.notes.extend(plan.notes.iter().map(|n| prefixed(&id, n)));
            outcome.notes.extend(notes.iter().map(|n| prefixed(&id, n)));
            mapped = Some((a, plan));
        }
        let mut wargs = mapped.as_ref().map_or_else(|| args.clone(), |(a, _)| a.clone());

        // The signing key: --secret's, the sidecar's own, or the Service's Secret.
        let mut secret_note = None;
        if args.cookie.secret.is_none() && !keyed {
            if args.cookie.unsigned {
                secret_note = Some(format!(
                    "warning: {id}: --unsigned: no signing key, so any client can pin itself to any pod by naming \
                     it in the cookie, and the hop markers between peers are not verified"
                ));
            } else {
                let name = default_secret_name(&service);
                let note = service_secret(docs, &name, &ns, &wargs.cookie.secret_key, &service)?;
                secret_note = Some(format!("{id}: {note}"));
                wargs.cookie.secret = Some(name);
            }
        }

        let pod = docs[t]
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|s| s.get_mut("spec"))
            .expect("checked above");
        let done = inject_into(pod, &wargs, drain_flags, &service, &service_ports, mine, &id)?;
        if let Some((_, plan)) = &mapped {
            crate::migrate::apply(docs, plan);
        }

        // Move the Services' ports that reach the app's port to the sidecar.
        let mut moved = Vec::new();
        for &s in &services {
            let name = name_of(&docs[s]).to_string();
            if let Some(ports) = docs[s]
                .get_mut("spec")
                .and_then(|sp| sp.get_mut("ports"))
                .and_then(Node::as_seq_mut)
            {
                for p in ports.iter_mut() {
                    if target_number(p, &app_ports) == Some(done.upstream) {
                        p.set("targetPort", Node::str(&done.port.0));
                        moved.push(format!(
                            "{name}:{}",
                            p.get("port").and_then(Node::as_str).unwrap_or("?")
                        ));
                    }
                }
            }
        }
        let sa = &done.service_account;
        ensure_rbac(docs, sa, &ns);
        outcome.notes.push(format!(
            "{id}: stickyd on port {} ({}), upstream 127.0.0.1:{}, STICKYD_SERVICE={service}, \
             ServiceAccount {sa}{}{}{}{}",
            done.port.1,
            done.port.0,
            done.upstream,
            if moved.is_empty() {
                String::new()
            } else {
                format!(", targetPort {} for {}", done.port.0, moved.join(" "))
            },
            if done.drain_wired.is_empty() {
                String::new()
            } else {
                format!(", drain preStop on container {}", done.drain_wired.join(" "))
            },
            match &done.grace {
                Some((grace, sum)) => format!(", terminationGracePeriodSeconds {grace} ({sum})"),
                None => String::new(),
            },
            match done.drain_max {
                Some(max) => format!(", {DRAIN_MAX_VAR} {}", model::fmt_duration(max)),
                None => String::new(),
            }
        ));
        outcome.notes.extend(secret_note);
        outcome.notes.extend(done.notes);
    }
    Ok(outcome)
}

/// Makes sure the Secret `name` holds the signing keys of the sidecars behind
/// `service`: one in the input is kept (after checking that its `key` entry
/// holds keys stickyd accepts), else one is added with a random key. Returns
/// what was done, for standard error (never the key).
fn service_secret(
    docs: &mut Vec<Node>,
    name: &str,
    ns: &Option<String>,
    key: &str,
    service: &str,
) -> Result<String, InjectError> {
    let found = docs
        .iter()
        .find(|d| kind_of(d) == "Secret" && name_of(d) == name && same_ns(&ns_of(d), ns));
    if let Some(secret) = found {
        check_secret(secret, key).map_err(|why| InjectError::Secret {
            secret: name.to_string(),
            why,
        })?;
        return Ok(format!(
            "signing keys from Secret {name} (in the input, kept), mounted read-only at {SECRET_DIR} \
             (STICKYD_COOKIE_SECRET_FILE)"
        ));
    }
    docs.push(Node::map(vec![
        ("apiVersion", Node::str("v1")),
        ("kind", Node::str("Secret")),
        ("metadata", metadata(name, ns)),
        ("type", Node::str("Opaque")),
        (
            "stringData",
            Node::map(vec![(key, Node::str(random_hex("the signing key")?))]),
        ),
    ]));
    Ok(format!(
        "Secret {name} written with a random signing key ({RANDOM_BYTES} bytes, hex, in stringData.{key}) for every \
         sidecar behind Service {service}, mounted read-only at {SECRET_DIR} (STICKYD_COOKIE_SECRET_FILE, re-read \
         on rotation)"
    ))
}

/// Whether a Secret's `key` entry, in `stringData` or `data` (base64), holds
/// signing keys stickyd accepts; the error says what is wrong, never the value.
fn check_secret(secret: &Node, key: &str) -> Result<(), String> {
    use base64::Engine;
    let text = if let Some(v) = secret.path(&["stringData", key]) {
        v.as_str().unwrap_or_default().to_string()
    } else if let Some(v) = secret.path(&["data", key]) {
        let raw: String = v.as_str().unwrap_or_default().split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| format!("data.{key} is not base64 ({e})"))?;
        String::from_utf8(bytes).map_err(|_| format!("data.{key} is not text"))?
    } else {
        return Err(format!(
            "it has no {key:?} in stringData or data, where the sidecar reads its signing keys; add one (e.g. \
             openssl rand -hex 32), or pass --secret-key with the entry that holds them"
        ));
    };
    Keys::parse(&text)
        .map(|_| ())
        .map_err(|why| format!("its entry {key:?}: {why}"))
}

/// `id: note`, keeping a `warning:` first.
fn prefixed(id: &str, note: &str) -> String {
    match note.strip_prefix("warning: ") {
        Some(w) => format!("warning: {id}: {w}"),
        None => format!("{id}: {note}"),
    }
}

/// Puts the settings a migration plan asks for into the options: the cookie
/// and affinity options unless given on the command line (which wins, with a
/// note), or refused by the mode `--affinity` gives (left out, with a note),
/// the rest as further env. Returns the notes.
fn take_settings(args: &mut InjectArgs, plan: &crate::migrate::Plan) -> Vec<String> {
    let mut notes = Vec::new();
    let mode = args.cookie.mode();
    for w in &plan.wanted {
        let Some(option) = option_of(w.var) else {
            if !args.cookie.extra_env.iter().any(|(k, _)| k == w.var) {
                args.cookie.extra_env.push((w.var.to_string(), w.value.clone()));
            }
            continue;
        };
        match args.cookie.given(w.var) {
            Some(given) if given != w.value => notes.push(format!(
                "--{option} {given} given: kept over {}={} from {}",
                w.var, w.value, w.from
            )),
            Some(_) => {}
            None if mode.is_some_and(|m| m.refuses(w.var)) => notes.push(format!(
                "--affinity {} given: {}={} from {} left out, since stickyd refuses it in that mode",
                args.cookie.affinity.as_deref().unwrap_or_default(),
                w.var,
                w.value,
                w.from
            )),
            None => {
                if let Some(slot) = args.cookie.slot(w.var) {
                    *slot = Some(w.value.clone());
                }
            }
        }
    }
    notes
}

/// On a sidecar regenerated with what the earlier one had: with `--affinity`
/// given, removes the settings kept from before that its mode refuses (the
/// carrier of another mode), and checks the cookie and affinity settings as
/// they now are with stickyd's parser. Returns the notes.
fn settle_earlier(container: &mut Node, args: &InjectArgs, id: &str) -> Result<Vec<String>, InjectError> {
    let mut notes = Vec::new();
    let ours = |var: &str| args.cookie.given(var).is_some() || args.cookie.extra_env.iter().any(|(k, _)| k == var);
    if let Some(mode) = args.cookie.mode() {
        if let Some(list) = container.entry_seq("env") {
            list.retain(|e| {
                let Some(var) = e.str_at(&["name"]) else { return true };
                if !mode.refuses(var) || ours(var) {
                    return true;
                }
                notes.push(format!(
                    "{id}: --affinity {} given: the sidecar's {var}{} from an earlier injection removed, since \
                     stickyd refuses it in that mode",
                    mode.as_str(),
                    e.str_at(&["value"]).map_or_else(String::new, |v| format!("={v}"))
                ));
                false
            });
        }
    }
    let mut merged = args.clone();
    let mut kept = Vec::new();
    for (var, _) in OPTION_VARS {
        if let Some(v) = env_of(container, var).filter(|_| !ours(var)) {
            kept.push(format!("{var}={v}"));
            if let Some(slot) = merged.cookie.slot(var) {
                *slot = Some(v.to_string());
            }
        }
    }
    if !kept.is_empty() {
        validate(&merged).map_err(|error| InjectError::Earlier {
            id: id.to_string(),
            kept: kept.join(", "),
            error,
        })?;
    }
    Ok(notes)
}

/// Parses, injects and renders: the new manifests, or with `diff` a unified
/// diff against the input (both rendered the same way).
pub fn inject_text(text: &str, name: &str, args: &InjectArgs) -> Result<(String, Outcome), InjectError> {
    let (parsed, comments) = kyaml::parse_stream_with_comments(text)?;
    let mut docs: Vec<Node> = parsed.into_iter().map(|d| d.root).collect();
    let before = kyaml::emit_stream_with_comments(&docs, &comments);
    let outcome = inject(&mut docs, args)?;
    let after = kyaml::emit_stream_with_comments(&docs, &comments);
    if args.diff {
        let diff = similar::TextDiff::from_lines(&before, &after)
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{name}"), &format!("b/{name}"))
            .to_string();
        Ok((diff, outcome))
    } else {
        Ok((after, outcome))
    }
}

/// Runs `stickyd inject`; returns the process exit code.
pub fn run(args: &InjectArgs) -> i32 {
    let text = if args.file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    } else {
        std::fs::read_to_string(&args.file)
    };
    let name = if args.file == "-" { "stdin" } else { args.file.as_str() };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("stickyd inject: cannot read {name}: {e}");
            return 2;
        }
    };
    match inject_text(&text, name, args) {
        Ok((out, outcome)) => {
            print!("{out}");
            for n in outcome.notes {
                eprintln!("stickyd inject: {n}");
            }
            0
        }
        Err(InjectError::Parse(e)) => {
            eprintln!("stickyd inject: {name}: cannot parse YAML: {e}");
            2
        }
        Err(e) => {
            eprintln!("stickyd inject: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, number: i64) -> Port {
        Port {
            name: Some(name.into()),
            number,
        }
    }

    #[test]
    fn free_port_skips_numbers_and_names_in_use() {
        let used = [port("http", 8080), port("stickyd", 8081)];
        assert_eq!(
            free_port(8080, &["stickyd", "stickyd-proxy"], &used, &[8082]),
            ("stickyd-proxy".to_string(), 8083)
        );
        assert_eq!(
            free_port(9090, &["stickyd-admin"], &[], &[]),
            ("stickyd-admin".to_string(), 9090)
        );
        let all = [port("a", 1), port("b", 2)];
        assert_eq!(free_port(5, &["a", "b"], &all, &[]), ("sd-5".to_string(), 5));
    }

    #[test]
    fn service_ports_resolve_through_names() {
        let app = [port("http", 3000)];
        let doc = |y: &str| kyaml::parse_stream(y).unwrap().remove(0).root;
        assert_eq!(target_number(&doc("port: 80\ntargetPort: http\n"), &app), Some(3000));
        assert_eq!(target_number(&doc("port: 80\ntargetPort: 8080\n"), &app), Some(8080));
        assert_eq!(target_number(&doc("port: 80\n"), &app), Some(80));
        assert_eq!(target_number(&doc("port: 80\ntargetPort: grpc\n"), &app), None);
    }

    #[test]
    fn the_http_port_is_preferred_over_metrics() {
        let doc = |y: &str| kyaml::parse_stream(y).unwrap().remove(0).root;
        assert!(http_rank(&doc("{name: metrics, port: 9100}")) > http_rank(&doc("{name: http, port: 8000}")));
        assert!(http_rank(&doc("{name: metrics, port: 9100}")) > http_rank(&doc("{port: 80}")));
        assert_eq!(http_rank(&doc("{name: web, port: 1}")), 0);
    }

    #[test]
    fn options_are_checked_with_the_config_parser() {
        let mut args = InjectArgs {
            file: "-".into(),
            workloads: vec![],
            service: None,
            image: None,
            port: 8080,
            admin_port: 9090,
            cookie: Box::default(),
            drain: DrainArgs::default(),
            migrate: MigrateArgs::default(),
            diff: false,
        };
        assert!(validate(&args).is_ok());
        args.cookie.cookie_samesite = Some("None".into());
        args.cookie.cookie_secure = Some("false".into());
        assert_eq!(validate(&args).unwrap_err().var(), "STICKYD_COOKIE_SECURE");
        args.cookie.cookie_secure = None;
        args.admin_port = 8080;
        assert_eq!(validate(&args).unwrap_err().var(), "STICKYD_ADMIN_LISTEN");
    }

    fn plain_args() -> InjectArgs {
        InjectArgs {
            file: "-".into(),
            workloads: vec![],
            service: None,
            image: None,
            port: 8080,
            admin_port: 9090,
            cookie: Box::default(),
            drain: DrainArgs::default(),
            migrate: MigrateArgs::default(),
            diff: false,
        }
    }

    #[test]
    fn affinity_options_are_written_after_the_cookie_ones_and_checked_together() {
        let mut args = plain_args();
        args.cookie.app_header = Some("Mcp-Session-Id".into());
        args.cookie.affinity = Some("app-header".into());
        args.cookie.cookie_path = Some("/mcp".into());
        args.cookie.extra_env = vec![("STICKYD_LOG".into(), "debug".into())];
        let vars: Vec<String> = cookie_env(&args).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            vars,
            [
                "STICKYD_COOKIE_PATH",
                "STICKYD_AFFINITY",
                "STICKYD_APP_HEADER",
                "STICKYD_LOG"
            ]
        );
        assert!(validate(&args).is_ok());
        // app-header without its header: the parser's message, and the flag that sets it.
        args.cookie.app_header = None;
        let e = InjectError::from(validate(&args).unwrap_err());
        assert!(
            e.to_string().contains("required with STICKYD_AFFINITY=app-header")
                && e.to_string().ends_with("(--app-header sets STICKYD_APP_HEADER)"),
            "{e}"
        );
        // A carrier of another mode.
        args.cookie.affinity = Some("header".into());
        args.cookie.app_cookie = Some("JSESSIONID".into());
        assert_eq!(validate(&args).unwrap_err().var(), "STICKYD_APP_COOKIE");
        args.cookie.affinity = Some("app-cookie".into());
        assert!(validate(&args).is_ok());
        args.cookie.cookie_name = Some("sid".into());
        assert_eq!(validate(&args).unwrap_err().var(), "STICKYD_COOKIE_NAME");
        args.cookie.affinity = Some("sticky".into());
        assert_eq!(validate(&args).unwrap_err().var(), "STICKYD_AFFINITY");
    }

    #[test]
    fn a_migrations_affinity_gives_way_to_the_flags() {
        let want = |var: &'static str, value: &str| crate::migrate::Wanted {
            var,
            value: value.into(),
            from: "HTTPRoute/mcp rule 0".into(),
        };
        let mut plan = crate::migrate::Plan::default();
        plan.wanted = vec![
            want("STICKYD_AFFINITY", "header"),
            want("STICKYD_AFFINITY_HEADER", "mcp-session-id"),
        ];
        // No flags: the plan's settings become the options, not further env.
        let mut args = plain_args();
        assert!(take_settings(&mut args, &plan).is_empty());
        assert_eq!(args.cookie.affinity.as_deref(), Some("header"));
        assert_eq!(args.cookie.affinity_header.as_deref(), Some("mcp-session-id"));
        assert!(args.cookie.extra_env.is_empty());
        // --affinity app-header: kept over the plan's mode, and the plan's header, which
        // that mode refuses, left out.
        let mut args = plain_args();
        args.cookie.affinity = Some("app-header".into());
        args.cookie.app_header = Some("Mcp-Session-Id".into());
        let notes = take_settings(&mut args, &plan);
        assert_eq!(
            notes,
            [
                "--affinity app-header given: kept over STICKYD_AFFINITY=header from HTTPRoute/mcp rule 0",
                "--affinity app-header given: STICKYD_AFFINITY_HEADER=mcp-session-id from HTTPRoute/mcp rule 0 left \
                 out, since stickyd refuses it in that mode",
            ]
        );
        assert_eq!(args.cookie.affinity_header, None);
        assert!(validate(&args).is_ok());
        // --affinity-header alone: the plan's mode, the flag's header.
        let mut args = plain_args();
        args.cookie.affinity_header = Some("x-session".into());
        let notes = take_settings(&mut args, &plan);
        assert_eq!(
            notes,
            ["--affinity-header x-session given: kept over STICKYD_AFFINITY_HEADER=mcp-session-id from HTTPRoute/mcp \
              rule 0"]
        );
        assert_eq!(args.cookie.affinity.as_deref(), Some("header"));
    }

    #[test]
    fn customisations_survive_regeneration() {
        let doc = |y: &str| kyaml::parse_stream(y).unwrap().remove(0).root;
        let mut new = doc(
            "name: stickyd\nenv:\n- {name: STICKYD_LISTEN, value: '0.0.0.0:8080'}\nresources: {limits: {cpu: '1'}}\n",
        );
        let old = doc(concat!(
            "name: stickyd\nenv:\n- {name: STICKYD_LISTEN, value: '0.0.0.0:1'}\n- {name: STICKYD_LOG, value: debug}\n",
            "resources: {limits: {cpu: '2'}}\nlifecycle: {preStop: {sleep: {seconds: 5}}}\n",
        ));
        keep_customisations(&mut new, &old);
        let env: Vec<(&str, &str)> = new
            .get("env")
            .unwrap()
            .items()
            .iter()
            .map(|e| (e.str_at(&["name"]).unwrap(), e.str_at(&["value"]).unwrap()))
            .collect();
        assert_eq!(env, vec![("STICKYD_LISTEN", "0.0.0.0:8080"), ("STICKYD_LOG", "debug")]);
        assert_eq!(new.str_at(&["resources", "limits", "cpu"]), Some("2"));
        assert_eq!(
            new.path(&["lifecycle", "preStop", "sleep", "seconds"])
                .unwrap()
                .as_i64(),
            Some(5)
        );
    }
}
