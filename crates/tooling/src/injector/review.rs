//! One AdmissionReview (`admission.k8s.io/v1`): which Pods get the sidecar,
//! the `stickyd.io/…` annotations read as `stickyd inject`'s options, and the
//! JSONPatch that adds what `stickyd inject` would add to the pod spec.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::inject::{self, CookieArgs, DrainArgs, InjectArgs, InjectError};
use crate::kyaml::{Node, ScalarType, Style};

/// The annotation prefix the injector reads.
pub const PREFIX: &str = "stickyd.io/";
/// Set by the injector on the Pods it changed: the version that did it.
pub const INJECTED: &str = "stickyd.io/injected";
/// The path where the ServiceAccount admission mounts the API token.
const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The annotations the injector reads (without the prefix), and what each
/// one sets. `inject` and `service` are required for an injection.
pub const ANNOTATIONS: &[(&str, &str)] = &[
    (
        "inject",
        "`enabled` adds the sidecar; `disabled`, or no annotation, leaves the Pod alone",
    ),
    (
        "service",
        "STICKYD_SERVICE: the Service whose EndpointSlices list these pods (required)",
    ),
    (
        "app-port",
        "the app's port, a number or a containerPort name (default: the first containerPort)",
    ),
    ("port", "the sidecar's proxy port (default 8080, or the next free one)"),
    (
        "admin-port",
        "the sidecar's admin port (default 9090, or the next free one)",
    ),
    ("cookie-name", "STICKYD_COOKIE_NAME"),
    (
        "cookie-path",
        "STICKYD_COOKIE_PATH: a literal path prefix, never a regex",
    ),
    ("cookie-domain", "STICKYD_COOKIE_DOMAIN"),
    (
        "cookie-max-age",
        "STICKYD_COOKIE_MAX_AGE, e.g. 48h (default: a session cookie)",
    ),
    ("cookie-secure", "STICKYD_COOKIE_SECURE: true, false or auto"),
    ("cookie-samesite", "STICKYD_COOKIE_SAMESITE: Strict, Lax or None"),
    (
        "affinity",
        "STICKYD_AFFINITY: cookie (default), header, cookie,header, app-cookie or app-header",
    ),
    (
        "affinity-header",
        "STICKYD_AFFINITY_HEADER: the header of affinity header or cookie,header",
    ),
    (
        "app-cookie",
        "STICKYD_APP_COOKIE: the app's own session cookie, its value prefixed (affinity app-cookie)",
    ),
    (
        "app-header",
        "STICKYD_APP_HEADER: the app's own session header, such as Mcp-Session-Id, its value prefixed both ways \
         (affinity app-header)",
    ),
    (
        "secret",
        "the Secret of cookie signing keys, mounted read-only for STICKYD_COOKIE_SECRET_FILE (default \
         stickyd-SERVICE; it must exist: a missing one fails the mount)",
    ),
    (
        "unsigned",
        "`true`: no signing key at all, so any client can pin itself to any pod and hop markers go unverified",
    ),
    (
        "secret-key",
        "the key of that Secret holding the signing keys (default key)",
    ),
    (
        "secret-env",
        "`true`: pass the Secret as STICKYD_COOKIE_SECRET instead of a mounted file",
    ),
    (
        "drain",
        "`disabled` leaves the app's preStop and the grace period alone",
    ),
    (
        "drain-idle",
        "the drain's idle (default 10s): it answers once no pinned request came for this long",
    ),
    (
        "drain-max",
        "the drain's max (default 300s); the grace period is raised to fit it",
    ),
];

/// What the injector answers for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit the Pod, with the JSONPatch operations to apply (none: as it is).
    Allow { patch: Vec<Value>, warnings: Vec<String> },
    /// Refuse the Pod: its `stickyd.io/…` annotations ask for what cannot be done.
    Deny(String),
}

/// A body that is not an AdmissionReview request.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// Answers an AdmissionReview request body with an AdmissionReview response.
/// `image` is the sidecar image.
pub fn answer(body: &[u8], image: &str) -> Result<(Value, Decision), BadReview> {
    let review: Value = serde_json::from_slice(body).map_err(|e| BadReview(format!("the body is not JSON: {e}")))?;
    let api = review.get("apiVersion").and_then(Value::as_str);
    let kind = review.get("kind").and_then(Value::as_str);
    if (api, kind) != (Some("admission.k8s.io/v1"), Some("AdmissionReview")) {
        return Err(BadReview(format!(
            "expected an admission.k8s.io/v1 AdmissionReview, got apiVersion {api:?}, kind {kind:?}"
        )));
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| BadReview("the AdmissionReview has no request".into()))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| BadReview("the AdmissionReview request has no uid".into()))?;
    let decision = decide(request, image);
    let mut response = Map::new();
    response.insert("uid".into(), json!(uid));
    match &decision {
        Decision::Allow { patch, warnings } => {
            response.insert("allowed".into(), json!(true));
            if !patch.is_empty() {
                let text = serde_json::to_vec(patch).unwrap_or_default();
                response.insert("patchType".into(), json!("JSONPatch"));
                response.insert(
                    "patch".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(text)),
                );
            }
            if !warnings.is_empty() {
                response.insert("warnings".into(), json!(warnings));
            }
        }
        Decision::Deny(message) => {
            response.insert("allowed".into(), json!(false));
            response.insert("status".into(), json!({"code": 400, "message": message}));
        }
    }
    let out = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": Value::Object(response),
    });
    Ok((out, decision))
}

fn allow() -> Decision {
    Decision::Allow {
        patch: Vec::new(),
        warnings: Vec::new(),
    }
}

/// Whether a container runs stickyd (named `stickyd`, or a stickyd image).
fn runs_stickyd(pod_spec: &Value) -> bool {
    ["initContainers", "containers"].iter().any(|k| {
        pod_spec
            .get(*k)
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| crate::model::is_stickyd(&to_node(c))))
    })
}

/// The decision for one AdmissionReview request.
pub fn decide(request: &Value, image: &str) -> Decision {
    let is_pod = request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod")
        && request
            .pointer("/kind/group")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty();
    if !is_pod || request.get("operation").and_then(Value::as_str) != Some("CREATE") {
        return allow();
    }
    let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
        return allow();
    };
    let empty = Map::new();
    let annotations = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let id = pod_id(pod, request);
    let get = |short: &str| {
        annotations
            .get(&format!("{PREFIX}{short}"))
            .and_then(Value::as_str)
            .map(str::trim)
    };
    match get("inject") {
        None | Some("disabled") => return allow(),
        Some("enabled") => {}
        Some(other) => {
            return Decision::Deny(format!(
                "{id}: annotation {PREFIX}inject is {other:?}: use \"enabled\" to add the stickyd sidecar, or \
                 \"disabled\""
            ))
        }
    }
    let spec = pod.get("spec").cloned().unwrap_or_else(|| json!({}));
    if runs_stickyd(&spec) {
        return allow();
    }
    match inject_spec(&spec, annotations, image, &id) {
        Ok((after, mut warnings)) => {
            let mut patch = Vec::new();
            diff("/spec", &spec, &after, &mut patch);
            if patch.is_empty() {
                return allow();
            }
            patch.push(json!({
                "op": "add",
                "path": format!("/metadata/annotations/{}", escape(INJECTED)),
                "value": env!("CARGO_PKG_VERSION"),
            }));
            if spec.get("automountServiceAccountToken") == Some(&Value::Bool(false)) {
                warnings.push(format!(
                    "{id}: automountServiceAccountToken is false, so stickyd cannot watch the EndpointSlices of its \
                     Service"
                ));
            }
            for w in &mut warnings {
                truncate(w, 250);
            }
            tracing::info!(pod = %id, "stickyd sidecar added");
            Decision::Allow { patch, warnings }
        }
        Err(message) => {
            tracing::warn!(pod = %id, %message, "refused");
            Decision::Deny(message)
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// `Pod NAMESPACE/NAME`, or with the generateName prefix when the name is
/// not set yet (pods of a ReplicaSet).
fn pod_id(pod: &Value, request: &Value) -> String {
    let ns = pod
        .pointer("/metadata/namespace")
        .or_else(|| request.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = match pod.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!(
            "{}…",
            pod.pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
    };
    format!("Pod {ns}/{name}")
}

/// The pod spec with the sidecar, and the warnings for the user.
fn inject_spec(
    spec: &Value,
    annotations: &Map<String, Value>,
    image: &str,
    id: &str,
) -> Result<(Value, Vec<String>), String> {
    let opts = Options::read(annotations, spec, id)?;
    let args = InjectArgs {
        file: String::new(),
        workloads: Vec::new(),
        service: Some(opts.service.clone()),
        image: Some(image.to_string()),
        port: opts.port,
        admin_port: opts.admin_port,
        cookie: Box::new(opts.cookie),
        drain: opts.drain,
        migrate: Default::default(),
        diff: false,
    };
    let mut node = to_node(spec);
    let done = inject::inject_pod(&mut node, &args, &opts.service, opts.app_port, id).map_err(|e| {
        // A setting stickyd would refuse names the annotation that sets it, rather than the flag.
        match &e {
            InjectError::InvalidOption(error) => inject::option_of(error.var()).map(|short| {
                format!("{id}: annotation {PREFIX}{short}: the annotations would make stickyd refuse to start: {error}")
            }),
            _ => None,
        }
        .unwrap_or_else(|| format!("{id}: cannot add the stickyd sidecar: {e}"))
    })?;
    let mut after = to_json(&node);
    share_token_mount(&mut after);
    let mut warnings: Vec<String> = done
        .notes
        .iter()
        .filter_map(|n| n.strip_prefix("warning: "))
        .map(str::to_string)
        .collect();
    if args.cookie.unsigned {
        warnings.push(format!(
            "{id}: {PREFIX}unsigned: no signing key, so any client can pin itself to any pod and the hop markers \
             between peers are not verified"
        ));
    }
    for n in done.notes.iter().filter(|n| !n.starts_with("warning: ")) {
        tracing::info!(pod = %id, "{n}");
    }
    Ok((after, warnings))
}

/// The ServiceAccount admission mounts the API token into the containers a
/// Pod has when it runs, which may be before the sidecar was added: give the
/// sidecar the app's token mount, so that it can watch its EndpointSlices.
fn share_token_mount(spec: &mut Value) {
    let mount = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten())
        .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_PATH))
        .cloned();
    let Some(mount) = mount else { return };
    let Some(init) = spec.get_mut("initContainers").and_then(Value::as_array_mut) else {
        return;
    };
    for c in init
        .iter_mut()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some("stickyd"))
    {
        let Some(obj) = c.as_object_mut() else { continue };
        let mounts = obj.entry("volumeMounts").or_insert_with(|| json!([]));
        if let Some(list) = mounts.as_array_mut() {
            if !list
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_PATH))
            {
                list.push(mount.clone());
            }
        }
    }
}

/// The injection options a Pod's annotations give.
struct Options {
    service: String,
    app_port: Option<i64>,
    port: u16,
    admin_port: u16,
    cookie: CookieArgs,
    drain: DrainArgs,
}

impl Options {
    fn read(annotations: &Map<String, Value>, spec: &Value, id: &str) -> Result<Options, String> {
        let mut got: std::collections::BTreeMap<&str, String> = std::collections::BTreeMap::new();
        for (key, value) in annotations {
            let Some(short) = key.strip_prefix(PREFIX) else {
                continue;
            };
            if key == INJECTED {
                continue;
            }
            let Some((known, _)) = ANNOTATIONS.iter().find(|(k, _)| *k == short) else {
                let names: Vec<String> = ANNOTATIONS.iter().map(|(k, _)| format!("{PREFIX}{k}")).collect();
                return Err(format!(
                    "{id}: unknown annotation {key}; the injector reads {}",
                    names.join(", ")
                ));
            };
            let text = value.as_str().unwrap_or_default().trim().to_string();
            got.insert(known, text);
        }
        let bad = |short: &str, value: &str, why: &str| format!("{id}: annotation {PREFIX}{short}: {value:?} {why}");
        let service = got.get("service").filter(|s| !s.is_empty()).cloned().ok_or_else(|| {
            format!(
                "{id}: annotation {PREFIX}service is required with {PREFIX}inject: enabled: the name of the \
                     Service whose EndpointSlices list these pods"
            )
        })?;
        let number = |short: &str, default: u16| -> Result<u16, String> {
            match got.get(short) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u16>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(short, v, "is not a port number (1-65535)")),
            }
        };
        let port = number("port", 8080)?;
        let admin_port = number("admin-port", 9090)?;
        let app_port = match got.get("app-port") {
            None => None,
            Some(v) => Some(match v.parse::<i64>() {
                Ok(n) if (1..=65535).contains(&n) => n,
                Ok(_) => return Err(bad("app-port", v, "is not a port number (1-65535)")),
                Err(_) => named_port(spec, v)
                    .ok_or_else(|| bad("app-port", v, "names no containerPort of the pod's containers"))?,
            }),
        };
        let opt = |short: &str| got.get(short).cloned().filter(|v| !v.is_empty());
        let flag = |short: &str, yes: &str, no: &str| -> Result<bool, String> {
            match got.get(short).map(String::as_str) {
                None => Ok(false),
                Some(v) if v == yes => Ok(true),
                Some(v) if v == no => Ok(false),
                Some(v) => Err(bad(short, v, &format!("is neither {yes:?} nor {no:?}"))),
            }
        };
        let secret_env = flag("secret-env", "true", "false")?;
        let unsigned = flag("unsigned", "true", "false")?;
        let secret = opt("secret");
        if secret_env && secret.is_none() {
            return Err(format!("{id}: annotation {PREFIX}secret-env needs {PREFIX}secret"));
        }
        let secret = match secret {
            Some(_) if unsigned => {
                return Err(format!(
                    "{id}: annotations {PREFIX}unsigned and {PREFIX}secret contradict each other: drop one"
                ))
            }
            Some(s) => Some(s),
            None if unsigned => None,
            None => Some(inject::default_secret_name(&service)),
        };
        let no_drain = flag("drain", "disabled", "enabled")?;
        let drain = DrainArgs {
            drain_idle: opt("drain-idle"),
            drain_max: opt("drain-max"),
            no_drain,
        };
        if no_drain && (drain.drain_idle.is_some() || drain.drain_max.is_some()) {
            return Err(format!(
                "{id}: annotation {PREFIX}drain is disabled, so {PREFIX}drain-idle and {PREFIX}drain-max would do \
                 nothing"
            ));
        }
        Ok(Options {
            service,
            app_port,
            port,
            admin_port,
            cookie: CookieArgs {
                cookie_name: opt("cookie-name"),
                cookie_path: opt("cookie-path"),
                cookie_domain: opt("cookie-domain"),
                cookie_max_age: opt("cookie-max-age"),
                cookie_secure: opt("cookie-secure"),
                cookie_samesite: opt("cookie-samesite"),
                affinity: opt("affinity"),
                affinity_header: opt("affinity-header"),
                app_cookie: opt("app-cookie"),
                app_header: opt("app-header"),
                secret,
                secret_key: opt("secret-key").unwrap_or_else(|| "key".into()),
                secret_env,
                unsigned,
                ..CookieArgs::default()
            },
            drain,
        })
    }
}

/// The number of a containerPort named `name` in the pod's app containers.
fn named_port(spec: &Value, name: &str) -> Option<i64> {
    spec.get("containers")?
        .as_array()?
        .iter()
        .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
        .get("containerPort")?
        .as_i64()
}

/// A JSON value as a YAML node: strings stay strings, numbers and booleans
/// are plain scalars.
pub fn to_node(v: &Value) -> Node {
    match v {
        Value::Null => Node::null(),
        Value::Bool(b) => Node::bool(*b),
        Value::Number(n) => Node::plain(n.to_string()),
        Value::String(s) => Node::str(s.clone()),
        Value::Array(items) => Node::seq(items.iter().map(to_node).collect()),
        Value::Object(m) => Node::map(m.iter().map(|(k, v)| (k.clone(), to_node(v))).collect()),
    }
}

/// A YAML node as JSON, each scalar as the type it reads as.
pub fn to_json(n: &Node) -> Value {
    use crate::kyaml::Value as Y;
    match &n.value {
        Y::Scalar { text, style, .. } => {
            if *style == Style::Str {
                return Value::String(text.clone());
            }
            match n.scalar_type() {
                Some(ScalarType::Null) => Value::Null,
                Some(ScalarType::Bool) => Value::Bool(n.is_true()),
                Some(ScalarType::Int) => text
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(text.clone())),
                Some(ScalarType::Float) => text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| Value::String(text.clone()), Value::Number),
                _ => Value::String(text.clone()),
            }
        }
        Y::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Y::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), to_json(v)))
                .collect(),
        ),
    }
}

/// One reference token of a JSON Pointer (RFC 6901): `~` as `~0`, `/` as `~1`.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The JSONPatch operations that turn `before` into `after` at `path`:
/// `add` for new keys and for items appended to an array, `remove` for keys
/// gone, `replace` for the rest.
pub fn diff(path: &str, before: &Value, after: &Value, out: &mut Vec<Value>) {
    if before == after {
        return;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, av) in a {
                let p = format!("{path}/{}", escape(k));
                match b.get(k) {
                    Some(bv) => diff(&p, bv, av, out),
                    None => out.push(json!({"op": "add", "path": p, "value": av})),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(json!({"op": "remove", "path": format!("{path}/{}", escape(k))}));
            }
        }
        (Value::Array(b), Value::Array(a)) if a.len() >= b.len() && a[..b.len()] == b[..] => {
            for item in &a[b.len()..] {
                out.push(json!({"op": "add", "path": format!("{path}/-"), "value": item}));
            }
        }
        (Value::Array(b), Value::Array(a)) if a.len() == b.len() => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                diff(&format!("{path}/{i}"), bv, av, out);
            }
        }
        _ => out.push(json!({"op": "replace", "path": path, "value": after})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_tokens_escape_tilde_and_slash() {
        assert_eq!(escape("stickyd.io/injected"), "stickyd.io~1injected");
        assert_eq!(escape("a~b/c"), "a~0b~1c");
        assert_eq!(escape("~1"), "~01");
    }

    #[test]
    fn diff_adds_appends_replaces_and_removes() {
        let before = json!({"a": 1, "list": [1], "gone": true, "m": {"x": "y"}, "k/e~y": 1});
        let after = json!({"a": 2, "list": [1, 2], "m": {"x": "y", "z": 0}, "k/e~y": 2, "new": []});
        let mut ops = Vec::new();
        diff("", &before, &after, &mut ops);
        let mut doc = before.clone();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, after, "{ops:?}");
        assert!(ops.iter().any(|o| o["path"] == "/k~1e~0y"), "{ops:?}");
        assert!(
            ops.iter().any(|o| o["path"] == "/list/-" && o["op"] == "add"),
            "{ops:?}"
        );
    }

    #[test]
    fn json_survives_the_node_round_trip() {
        let v = json!({"s": "0644", "n": 5, "f": 1.5, "b": false, "z": null, "l": ["true", 1], "e": {}});
        assert_eq!(to_json(&to_node(&v)), v);
    }

    fn pod_review(annotations: Value) -> Value {
        json!({
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "shop",
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "shop-5d9c-", "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "shop:1", "ports": [{"name": "http", "containerPort": 3000}]}]}
            }
        })
    }

    #[test]
    fn annotations_are_checked() {
        let deny = |a: Value| match decide(&pod_review(a), "stickyd:test") {
            Decision::Deny(m) => m,
            other => panic!("expected a denial, got {other:?}"),
        };
        let with = |short: &str, value: &str| {
            let mut a = json!({"stickyd.io/inject": "enabled", "stickyd.io/service": "shop"});
            a[format!("{PREFIX}{short}")] = json!(value);
            a
        };
        let cases = [
            (
                json!({"stickyd.io/inject": "enabled"}),
                "stickyd.io/service is required",
            ),
            (with("inject", "yes"), "stickyd.io/inject"),
            (with("cookie-nmae", "x"), "unknown annotation stickyd.io/cookie-nmae"),
            (with("cookie-path", "/a(.*)"), "STICKYD_COOKIE_PATH"),
            (with("app-port", "web"), "names no containerPort"),
            (with("drain-max", "0"), "--drain-max"),
            (with("port", "http"), "is not a port number"),
            (with("secret-env", "true"), "needs stickyd.io/secret"),
            (
                with("unsigned", "yes"),
                "stickyd.io/unsigned: \"yes\" is neither \"true\" nor \"false\"",
            ),
        ];
        for (annotations, want) in cases {
            let message = deny(annotations.clone());
            assert!(message.contains(want), "{annotations}: {message}");
        }
        // Affinity settings stickyd would refuse: the annotation that sets the variable.
        let affinity = |more: Value| {
            let mut a = with("affinity", "app-header");
            for (k, v) in more.as_object().unwrap() {
                a[k] = v.clone();
            }
            a
        };
        let cases = [
            (affinity(json!({})), "annotation stickyd.io/app-header: "),
            (
                affinity(json!({"stickyd.io/app-header": "Mcp-Session-Id", "stickyd.io/affinity-header": "x-s"})),
                "annotation stickyd.io/affinity-header: ",
            ),
            (with("affinity", "sticky"), "annotation stickyd.io/affinity: "),
            (with("app-cookie", "JSESSIONID"), "annotation stickyd.io/app-cookie: "),
            (
                affinity(
                    json!({"stickyd.io/affinity": "app-cookie", "stickyd.io/app-cookie": "JSESSIONID",
                    "stickyd.io/cookie-name": "sid"}),
                ),
                "annotation stickyd.io/cookie-name: ",
            ),
        ];
        for (annotations, want) in cases {
            let message = deny(annotations.clone());
            assert!(
                message.contains(want) && message.contains("would make stickyd refuse to start"),
                "{annotations}: {message}"
            );
        }
        match decide(&pod_review(json!({"stickyd.io/inject": "disabled"})), "stickyd:test") {
            Decision::Allow { patch, .. } => assert!(patch.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_kinds_and_operations_pass() {
        let mut r = pod_review(json!({"stickyd.io/inject": "enabled", "stickyd.io/service": "shop"}));
        r["operation"] = json!("UPDATE");
        assert_eq!(decide(&r, "i"), allow());
        r["operation"] = json!("CREATE");
        r["kind"]["kind"] = json!("Deployment");
        assert_eq!(decide(&r, "i"), allow());
    }
}
