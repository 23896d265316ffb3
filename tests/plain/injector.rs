//! `stickyd injector` as the API server uses it: the real binary on
//! 127.0.0.1, AdmissionReview requests over real TLS with a throwaway CA,
//! the returned JSONPatch applied with the json-patch crate, and the patched
//! Pod held to the checks the rendered manifests pass (tests/tools/manifests.rs).

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "stickyd-injector.stickyd-system.svc";
const SIDECAR_IMAGE: &str = "registry.example.com/stickyd:9.9.9";

/// A throwaway certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stickyd test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A serving certificate for the webhook's Service name: (cert PEM, key PEM, cert DER).
    fn leaf(&self) -> (String, String, CertificateDer<'static>) {
        let params = rcgen::CertificateParams::new(vec![HOST.to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stickyd-injector-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a file whole, as the kubelet swaps a Secret's files: a rename.
fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A running `stickyd injector`, killed when dropped.
struct Injector {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Injector {
    /// Starts the binary on 127.0.0.1:0 with the given certificate, and reads
    /// the address it bound from its first line.
    fn start(test: &str, cert: &str, key: &str) -> Injector {
        let dir = scratch(test);
        put(&dir.join("tls.crt"), cert);
        put(&dir.join("tls.key"), key);
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
            .arg("injector")
            .env("STICKYD_INJECTOR_LISTEN", "127.0.0.1:0")
            .env("STICKYD_INJECTOR_TLS_CERT", dir.join("tls.crt"))
            .env("STICKYD_INJECTOR_TLS_KEY", dir.join("tls.key"))
            .env("STICKYD_INJECTOR_TLS_RELOAD", "100ms")
            .env("STICKYD_INJECTOR_IMAGE", SIDECAR_IMAGE)
            .env("STICKYD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("stickyd injector starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let addr = line
            .split("https://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse().ok());
        let mut me = Injector {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            dir,
        };
        match addr {
            Some(a) => me.addr = a,
            None => panic!("no listening address in {line:?}; stderr:\n{}", me.stderr()),
        }
        me
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Waits (at most 15 s) until standard error holds `needle`.
    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One HTTP/1.1 exchange over a new TLS connection: the status, the body, and
/// the certificate the server presented.
async fn exchange(
    ca: &Ca,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<u8>, CertificateDer<'static>) {
    let run = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = ca
            .connector()
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .expect("TLS handshake with the injector");
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(body).await.unwrap();
        tls.flush().await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A peer that closes without close_notify, after the whole response.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("reading the response: {e}"),
            }
            if complete(&raw) {
                break;
            }
        }
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, _) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head: {text:?}"));
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (status, raw[at..].to_vec(), peer)
    };
    tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("the injector answered in time")
}

/// Whether a response with Content-Length has arrived whole.
fn complete(raw: &[u8]) -> bool {
    let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    len.is_some_and(|n| raw.len() >= at + 4 + n)
}

/// A Pod as the API server hands it to a mutating webhook: created by a
/// ReplicaSet (generateName), after the ServiceAccount admission mounted the
/// API token.
fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "shop-7d9c8b6f5-",
            "namespace": "shop",
            "labels": {"app": "shop"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "default",
            "containers": [{
                "name": "shop",
                "image": "example/shop:1.4",
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
                ],
                "env": [{"name": "SESSION_STORE", "value": "memory"}],
                "resources": {},
                "volumeMounts": [{
                    "name": "kube-api-access-x2k4q",
                    "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
                }],
                "terminationMessagePath": "/dev/termination-log",
                "imagePullPolicy": "IfNotPresent"
            }],
            "volumes": [{
                "name": "kube-api-access-x2k4q",
                "projected": {
                    "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}],
                    "defaultMode": 420
                }
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst"
        }
    })
}

fn annotated() -> Value {
    json!({
        "stickyd.io/inject": "enabled",
        "stickyd.io/service": "shop",
        "stickyd.io/cookie-path": "/shop",
        "stickyd.io/cookie-samesite": "Strict",
        "stickyd.io/cookie-max-age": "48h",
        "stickyd.io/drain-idle": "20s",
        "stickyd.io/drain-max": "60s",
        "example.com/owner": "team-shop"
    })
}

fn review(uid: &str, object: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

/// Sends a review of `object`; returns the response and the patch, if any.
async fn admit(ca: &Ca, inj: &Injector, uid: &str, object: &Value) -> (Value, Option<json_patch::Patch>) {
    let (status, body, _) = exchange(ca, inj.addr, "POST", "/inject", &review(uid, object)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let out: Value = serde_json::from_slice(&body).expect("an AdmissionReview in JSON");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    let resp = &out["response"];
    assert_eq!(resp["uid"], uid, "the response echoes the request's uid");
    let patch = resp["patch"].as_str().map(|b64| {
        assert_eq!(resp["patchType"], "JSONPatch");
        let text = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64 patch");
        serde_json::from_slice::<json_patch::Patch>(&text).expect("a JSONPatch")
    });
    if patch.is_none() {
        assert!(resp.get("patchType").is_none(), "no patchType without a patch: {resp}");
    }
    (resp.clone(), patch)
}

fn named<'a>(items: &'a Value, name: &str) -> Option<&'a Value> {
    items.as_array()?.iter().find(|i| i["name"] == name)
}

fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    named(&container["env"], var)?["value"].as_str()
}

fn port_named(container: &Value, name: &str) -> Option<i64> {
    named(&container["ports"], name)?["containerPort"].as_i64()
}

fn port_of(addr: &str) -> i64 {
    addr.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

/// The checks tests/tools/manifests.rs makes of the rendered manifests' sidecar,
/// made of a patched Pod; returns the parsed configuration.
fn assert_sidecar(pod: &Value) -> stickyd::config::Config {
    let spec = &pod["spec"];
    let init: Vec<&Value> = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "stickyd")
        .collect();
    assert_eq!(init.len(), 1, "one stickyd init container: {spec:#}");
    let side = init[0];
    assert!(
        named(&spec["containers"], "stickyd").is_none(),
        "a native sidecar, not a container"
    );
    assert_eq!(side["restartPolicy"], "Always", "native sidecar");
    assert_eq!(side["args"], json!(["run"]));
    assert!(side.get("command").is_none(), "the image's ENTRYPOINT runs");
    assert_eq!(side["image"], SIDECAR_IMAGE, "STICKYD_INJECTOR_IMAGE");

    let proxy = port_named(side, "stickyd").expect("port stickyd");
    let admin = port_named(side, "stickyd-admin").expect("port stickyd-admin");
    assert_eq!(port_of(env_value(side, "STICKYD_LISTEN").unwrap()), proxy);
    assert_eq!(port_of(env_value(side, "STICKYD_ADMIN_LISTEN").unwrap()), admin);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &side[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == "stickyd-admin" || get["port"].as_i64() == Some(admin),
            "{probe} on the admin port: {get}"
        );
        assert!(side[probe]["periodSeconds"].as_i64().is_some(), "{probe} period");
    }
    for (var, field) in [
        ("STICKYD_POD_NAME", "metadata.name"),
        ("STICKYD_NAMESPACE", "metadata.namespace"),
    ] {
        let e = named(&side["env"], var).unwrap_or_else(|| panic!("{var}"));
        assert_eq!(
            e["valueFrom"]["fieldRef"]["fieldPath"], field,
            "{var} from the downward API"
        );
    }
    let sc = &side["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    for bound in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(side["resources"][bound][res].is_string(), "resources.{bound}.{res}");
        }
    }

    // The signing key: a Secret mounted read-only where STICKYD_COOKIE_SECRET_FILE
    // points, not optional (a missing Secret is a FailedMount, not an unsigned pod).
    let key_file = env_value(side, "STICKYD_COOKIE_SECRET_FILE").expect("a signing key");
    let mount = side["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| key_file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .expect("the key file is under a volumeMount");
    assert_eq!(mount["readOnly"], true);
    let volume = named(&spec["volumes"], mount["name"].as_str().unwrap()).expect("the mounted volume");
    assert!(volume["secret"]["secretName"].is_string(), "{volume}");
    assert_eq!(volume["secret"]["optional"], false, "{volume}");

    // Every variable is one stickyd reads, and together they parse.
    let known: BTreeSet<&str> = stickyd::config::VARIABLES.iter().map(|(k, _)| *k).collect();
    let mut env: HashMap<String, String> = HashMap::new();
    for e in side["env"].as_array().unwrap() {
        let var = e["name"].as_str().unwrap();
        assert!(known.contains(var), "{var} is not a stickyd setting");
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => "shop-7d9c8b6f5-x2k4q".to_string(),
            Some("metadata.namespace") => "shop".to_string(),
            _ => e["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{var} has a value"))
                .to_string(),
        };
        assert!(env.insert(var.to_string(), value).is_none(), "{var} set twice");
    }
    let mounted = stickyd::startup::Startup::with(None, &[(key_file, "0123456789abcdef0123456789abcdef\n")]);
    let cfg = stickyd::config::Config::parse(&env, &mounted).unwrap_or_else(|e| panic!("stickyd would refuse: {e}"));
    assert_eq!(cfg.cookie.keys.len(), 1, "signed");
    assert_eq!(i64::from(cfg.listen.port()), proxy);
    assert_eq!(i64::from(cfg.admin_listen.port()), admin);
    assert!(cfg.upstream.ip().is_loopback());
    assert!(
        !cfg.admin_listen.ip().is_loopback(),
        "the kubelet reaches the admin port"
    );

    // The app's preStop is the drain, on the admin port by number; the grace
    // period covers it.
    let app = named(&spec["containers"], "shop").unwrap();
    let get = &app["lifecycle"]["preStop"]["httpGet"];
    let path = get["path"].as_str().expect("the app's preStop is an httpGet");
    let params = stickyd::drain::DrainParams::parse_path(path)
        .expect("the drain")
        .expect("a valid drain");
    assert_eq!(get["port"].as_i64(), Some(admin), "by number: {get}");
    assert!(get.get("host").is_none() && get.get("scheme").is_none(), "{get}");
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        Duration::from_secs(grace) >= params.max + cfg.drain + cfg.drain_timeout,
        "grace {grace}"
    );
    // The kubelet calls the hook from outside the pod: it sends the sidecar's
    // drain token, and the drain may ask for what the grace period leaves.
    let token = cfg.drain_token.as_ref().expect("a drain token");
    let auth = named(&get["httpHeaders"], "Authorization").expect("an Authorization header");
    assert!(token.authorizes(auth["value"].as_str().unwrap().as_bytes()), "{get}");
    assert_eq!(
        cfg.drain_max + cfg.drain + cfg.drain_timeout,
        Duration::from_secs(grace),
        "STICKYD_DRAIN_MAX is what the grace period leaves"
    );
    cfg
}

/// The sidecar's drain token in a patched Pod.
fn drain_token(pod: &Value) -> String {
    env_value(
        named(&pod["spec"]["initContainers"], "stickyd").unwrap(),
        "STICKYD_DRAIN_TOKEN",
    )
    .expect("STICKYD_DRAIN_TOKEN")
    .to_string()
}

/// A container without its drain token: the env entry and the hook's header.
fn without_token(container: &Value) -> Value {
    let mut c = container.clone();
    if let Some(env) = c["env"].as_array_mut() {
        env.retain(|e| e["name"] != "STICKYD_DRAIN_TOKEN");
    }
    if let Some(h) = c["lifecycle"]["preStop"]["httpGet"]["httpHeaders"].as_array_mut() {
        h.retain(|h| h["name"] != "Authorization");
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_pod_gets_the_sidecar_stickyd_inject_would_add() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let inj = Injector::start("annotated", &cert, &key);
    let original = pod(annotated());
    let (resp, patch) = admit(&ca, &inj, "7a1c-annotated", &original).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let patch = patch.unwrap_or_else(|| panic!("a patch: {resp}"));
    let mut patched = original.clone();
    json_patch::patch(&mut patched, &patch).unwrap_or_else(|e| panic!("the patch applies ({e}): {patch:?}"));

    let cfg = assert_sidecar(&patched);
    assert_eq!(cfg.upstream.port(), 8080, "the first containerPort is the app's");
    assert_eq!(cfg.service.as_deref(), Some("shop"));
    assert_eq!(cfg.cookie.path, "/shop");
    assert_eq!(cfg.cookie.same_site, stickyd::config::SameSite::Strict);
    assert_eq!(cfg.cookie.max_age, Some(Duration::from_secs(48 * 3600)));
    let spec = &patched["spec"];
    let side = named(&spec["initContainers"], "stickyd").unwrap();
    // The app holds 8080 and 9090: the next free ports.
    assert_eq!(port_named(side, "stickyd"), Some(8081));
    assert_eq!(port_named(side, "stickyd-admin"), Some(9091));
    let app = named(&spec["containers"], "shop").unwrap();
    assert_eq!(
        app["lifecycle"]["preStop"]["httpGet"]["path"], "/drain?idle=20s&max=60s",
        "the drain annotations"
    );
    assert_eq!(spec["terminationGracePeriodSeconds"], 95, "60 + 5 + 30");
    assert_eq!(
        spec["serviceAccountName"], "default",
        "the pod's own ServiceAccount is kept"
    );
    assert_eq!(
        side["volumeMounts"][1], app["volumeMounts"][0],
        "the sidecar reads the ServiceAccount token the app has, after its key"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["stickyd.io/injected"],
        env!("CARGO_PKG_VERSION"),
        "marked, through an escaped JSON pointer: {patch:?}"
    );
    assert_eq!(patched["metadata"]["annotations"]["example.com/owner"], "team-shop");
    // Nothing else of the Pod changed: the key's volume is added after the pod's own.
    assert_eq!(spec["volumes"][0], original["spec"]["volumes"][0]);
    assert_eq!(spec["volumes"].as_array().unwrap().len(), 2);
    for key in ["restartPolicy", "dnsPolicy"] {
        assert_eq!(spec[key], original["spec"][key], "{key}");
    }
    assert_eq!(app["ports"], original["spec"]["containers"][0]["ports"]);

    // The same sidecar, drain and grace period as `stickyd inject` gives the
    // same pod template, with the same options.
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {"metadata": {"labels": {"app": "shop"}}, "spec": original["spec"].clone()}
        }
    });
    let out = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(["inject", "-", "--service", "shop", "--image", SIDECAR_IMAGE])
        .args([
            "--cookie-path",
            "/shop",
            "--cookie-samesite",
            "Strict",
            "--cookie-max-age",
            "48h",
        ])
        .args(["--drain-idle", "20s", "--drain-max", "60s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(deployment.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs = stickyd::kyaml::parse_stream(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let injected = docs
        .iter()
        .map(|d| stickyd::injector::review::to_json(&d.root))
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let by_inject = &injected["spec"]["template"]["spec"];
    let mut side_by_inject = without_token(named(&by_inject["initContainers"], "stickyd").unwrap());
    let mut side_by_webhook = without_token(side);
    // The webhook's sidecar also has the app's API token mount, after the key's.
    let webhook_mounts = side_by_webhook.as_object_mut().unwrap().remove("volumeMounts").unwrap();
    let inject_mounts = side_by_inject.as_object_mut().unwrap().remove("volumeMounts").unwrap();
    assert_eq!(webhook_mounts[0], inject_mounts[0], "the key's mount");
    assert_eq!(
        side_by_webhook, side_by_inject,
        "the webhook's sidecar and stickyd inject's, but for their drain tokens"
    );
    assert_eq!(
        without_token(app)["lifecycle"],
        without_token(named(&by_inject["containers"], "shop").unwrap())["lifecycle"],
        "the drain preStop"
    );
    // The same Secret: stickyd-SERVICE, which inject writes and the injector expects.
    assert_eq!(
        named(&spec["volumes"], "stickyd-secret").unwrap(),
        named(&by_inject["volumes"], "stickyd-secret").unwrap()
    );
    assert_eq!(
        named(&spec["volumes"], "stickyd-secret").unwrap()["secret"]["secretName"],
        "stickyd-shop"
    );
    assert!(docs
        .iter()
        .any(|d| d.root.str_at(&["kind"]) == Some("Secret")
            && d.root.str_at(&["metadata", "name"]) == Some("stickyd-shop")));
    // Each pod its own drain token.
    let (_, again) = admit(&ca, &inj, "7a1c-annotated-again", &original).await;
    let mut second = original.clone();
    json_patch::patch(&mut second, &again.expect("a patch")).unwrap();
    assert_sidecar(&second);
    assert_ne!(drain_token(&patched), drain_token(&second), "a token per pod");
    assert_ne!(drain_token(&patched), side_by_inject_token(&injected));
    assert!(
        !inj.stderr().contains(&drain_token(&patched)),
        "the token is not logged"
    );
    assert_eq!(
        spec["terminationGracePeriodSeconds"],
        by_inject["terminationGracePeriodSeconds"]
    );
    assert!(
        !inj.stderr().contains('\u{1b}'),
        "no colour codes in a log file:\n{}",
        inj.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_without_the_annotation_or_with_a_sidecar_get_no_patch() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let inj = Injector::start("nopatch", &cert, &key);

    let plain = pod(json!({"example.com/owner": "team-shop"}));
    let (resp, patch) = admit(&ca, &inj, "u-plain", &plain).await;
    assert_eq!(resp["allowed"], true);
    assert!(patch.is_none(), "no annotation, no patch: {resp}");

    let disabled = pod(json!({"stickyd.io/inject": "disabled", "stickyd.io/service": "shop"}));
    let (resp, patch) = admit(&ca, &inj, "u-disabled", &disabled).await;
    assert_eq!(resp["allowed"], true);
    assert!(patch.is_none(), "disabled, no patch: {resp}");

    // Injected once, then seen again (reinvocation, or a Pod copied from an
    // injected one): left as it is.
    let original = pod(annotated());
    let (_, patch) = admit(&ca, &inj, "u-first", &original).await;
    let mut injected = original.clone();
    json_patch::patch(&mut injected, &patch.expect("a first patch")).unwrap();
    let (resp, patch) = admit(&ca, &inj, "u-again", &injected).await;
    assert_eq!(resp["allowed"], true);
    assert!(patch.is_none(), "a sidecar already there, no patch: {resp}");

    // A sidecar of the user's own, as a regular container.
    let mut own = pod(annotated());
    own["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "proxy", "image": "registry.example.com/stickyd:0.1.0"}));
    let (resp, patch) = admit(&ca, &inj, "u-own", &own).await;
    assert_eq!(resp["allowed"], true);
    assert!(patch.is_none(), "stickyd already runs: {resp}");

    // An annotation the injector cannot honour refuses the Pod, saying why.
    let mut bad = annotated();
    bad["stickyd.io/cookie-path"] = json!("/shop(/|$)(.*)");
    let (resp, patch) = admit(&ca, &inj, "u-bad", &pod(bad)).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(patch.is_none());
    assert_eq!(resp["status"]["code"], 400);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("STICKYD_COOKIE_PATH") && msg.contains("Pod shop/shop-7d9c8b6f5-"),
        "{msg}"
    );
}

/// The webhook serves at most MAX_CONNECTIONS connections at once: one
/// more is closed at once, and once they go, the webhook answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once() {
    use tokio::io::AsyncReadExt;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let inj = Injector::start("cap", &cert, &key);
    // Connections that never begin their TLS handshake hold a place each
    // (for the handshake's 10 s).
    let mut held = Vec::new();
    for _ in 0..stickyd::injector::MAX_CONNECTIONS {
        held.push(tokio::net::TcpStream::connect(inj.addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(inj.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the connection past the cap is closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    inj.wait_log("the injector serves this many at once");
    drop(held);
    // The places come back as the injector sees each held connection end:
    // a TLS handshake completes again.
    crate::common::eventually(Duration::from_secs(15), "a handshake after the cap", || async {
        let tcp = tokio::net::TcpStream::connect(inj.addr).await.unwrap();
        let tls = ca.connector().connect(ServerName::try_from(HOST).unwrap(), tcp).await;
        (tls.is_ok(), tls.err().map(|e| e.to_string()))
    })
    .await;
    let (resp, patch) = admit(&ca, &inj, "u-after-cap", &pod(annotated())).await;
    assert_eq!(resp["allowed"], true);
    assert!(patch.is_some(), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_an_admission_review_gets_a_4xx_and_serving_goes_on() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let inj = Injector::start("garbage", &cert, &key);
    let garbage: [&[u8]; 5] = [
        b"not json at all",
        b"{}",
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"kind":"Pod"}}}"#,
        &[0xff, 0xfe, 0x00, 0x01],
    ];
    for body in garbage {
        let (status, text, _) = exchange(&ca, inj.addr, "POST", "/inject", body).await;
        assert!(
            (400..500).contains(&status),
            "{status} for {:?}: {}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&text)
        );
    }
    let (status, _, _) = exchange(&ca, inj.addr, "GET", "/inject", b"").await;
    assert_eq!(status, 405);
    let (status, _, _) = exchange(&ca, inj.addr, "POST", "/elsewhere", b"{}").await;
    assert_eq!(status, 404);
    let (status, body, _) = exchange(&ca, inj.addr, "GET", "/healthz", b"").await;
    assert_eq!((status, String::from_utf8_lossy(&body).trim()), (200, "ok"));
    let (resp, patch) = admit(&ca, &inj, "u-after", &pod(annotated())).await;
    assert_eq!(resp["allowed"], true);
    assert!(patch.is_some(), "the next review is answered: {resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_connections_and_a_bad_one_is_not() {
    let ca = Ca::new();
    let (cert_a, key_a, der_a) = ca.leaf();
    let inj = Injector::start("rotate", &cert_a, &key_a);
    let (status, _, seen) = exchange(&ca, inj.addr, "GET", "/healthz", b"").await;
    assert_eq!(status, 200);
    assert_eq!(seen, der_a, "the first certificate");

    // A new certificate with the old key: not a pair. The old one stays.
    let (cert_b, key_b, der_b) = ca.leaf();
    put(&inj.dir.join("tls.crt"), &cert_b);
    inj.wait_log("does not load");
    let (status, _, seen) = exchange(&ca, inj.addr, "GET", "/healthz", b"").await;
    assert_eq!(status, 200);
    assert_eq!(seen, der_a, "a bad pair keeps the certificate in use");

    // The key arrives: the new pair is served on new connections.
    put(&inj.dir.join("tls.key"), &key_b);
    inj.wait_log("TLS certificate reloaded");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, seen) = exchange(&ca, inj.addr, "GET", "/healthz", b"").await;
        assert_eq!(status, 200);
        if seen == der_b {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate is never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (resp, patch) = admit(&ca, &inj, "u-rotated", &pod(annotated())).await;
    assert_eq!(resp["allowed"], true);
    assert!(patch.is_some());
}

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let dir = scratch("settings");
    put(&dir.join("tls.crt"), &cert);
    put(&dir.join("tls.key"), &key);
    put(&dir.join("junk.pem"), "-----BEGIN NOTHING-----\n");
    let crt = dir.join("tls.crt").display().to_string();
    let k = dir.join("tls.key").display().to_string();
    let junk = dir.join("junk.pem").display().to_string();
    let missing = dir.join("missing.pem").display().to_string();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("STICKYD_INJECTOR_TLS_KEY", &k)], "STICKYD_INJECTOR_TLS_CERT"),
        (vec![("STICKYD_INJECTOR_TLS_CERT", &crt)], "STICKYD_INJECTOR_TLS_KEY"),
        (
            vec![
                ("STICKYD_INJECTOR_TLS_CERT", &crt),
                ("STICKYD_INJECTOR_TLS_KEY", &k),
                ("STICKYD_INJECTOR_LISTEN", "localhost"),
            ],
            "STICKYD_INJECTOR_LISTEN",
        ),
        (
            vec![
                ("STICKYD_INJECTOR_TLS_CERT", &missing),
                ("STICKYD_INJECTOR_TLS_KEY", &k),
            ],
            "STICKYD_INJECTOR_TLS_CERT",
        ),
        (
            vec![("STICKYD_INJECTOR_TLS_CERT", &junk), ("STICKYD_INJECTOR_TLS_KEY", &k)],
            "STICKYD_INJECTOR_TLS_CERT",
        ),
        (
            vec![("STICKYD_INJECTOR_TLS_CERT", &crt), ("STICKYD_INJECTOR_TLS_KEY", &crt)],
            "STICKYD_INJECTOR_TLS_KEY",
        ),
    ];
    for (env, var) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stickyd"));
        cmd.arg("injector")
            .env_remove("STICKYD_INJECTOR_TLS_CERT")
            .env_remove("STICKYD_INJECTOR_TLS_KEY")
            .env_remove("STICKYD_INJECTOR_LISTEN")
            .stdin(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(var), "{env:?}: the message names {var}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn side_by_inject_token(deployment: &Value) -> String {
    env_value(
        named(&deployment["spec"]["template"]["spec"]["initContainers"], "stickyd").unwrap(),
        "STICKYD_DRAIN_TOKEN",
    )
    .unwrap()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_is_the_secret_the_annotations_name_or_none_when_asked() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let inj = Injector::start("secret", &cert, &key);
    // A pod annotated as `annotated()` and `extra`: the response and the patched pod.
    let admitted = |uid: &'static str, extra: Value| {
        let (ca, inj) = (&ca, &inj);
        async move {
            let mut a = annotated();
            for (k, v) in extra.as_object().unwrap() {
                a[k] = v.clone();
            }
            let original = pod(a);
            let (resp, patch) = admit(ca, inj, uid, &original).await;
            assert_eq!(resp["allowed"], true, "{resp}");
            let mut p = original.clone();
            json_patch::patch(&mut p, &patch.expect("a patch")).unwrap();
            (resp, p)
        }
    };
    // stickyd.io/secret names it.
    let (_, p) = admitted("u-named", json!({"stickyd.io/secret": "shop-keys"})).await;
    assert_sidecar(&p);
    assert_eq!(
        named(&p["spec"]["volumes"], "stickyd-secret").unwrap()["secret"]["secretName"],
        "shop-keys"
    );
    // stickyd.io/unsigned: no key, and a warning that says what that allows.
    let (resp, p) = admitted("u-unsigned", json!({"stickyd.io/unsigned": "true"})).await;
    let side = named(&p["spec"]["initContainers"], "stickyd").unwrap();
    assert!(env_value(side, "STICKYD_COOKIE_SECRET_FILE").is_none());
    assert!(named(&p["spec"]["volumes"], "stickyd-secret").is_none());
    let warnings = resp["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("stickyd.io/unsigned: no signing key, so any client can pin itself to any pod")),
        "{warnings:?}"
    );
    // Still a drain token: the kubelet's call needs it whether or not cookies are signed.
    assert!(drain_token(&p).len() == 64);
    // Both at once contradict each other.
    let mut a = annotated();
    a["stickyd.io/unsigned"] = json!("true");
    a["stickyd.io/secret"] = json!("shop-keys");
    let (resp, patch) = admit(&ca, &inj, "u-both", &pod(a)).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(patch.is_none());
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains("stickyd.io/unsigned and stickyd.io/secret"), "{msg}");
    let mut a = annotated();
    a["stickyd.io/unsigned"] = json!("yes");
    let (resp, _) = admit(&ca, &inj, "u-bad-flag", &pod(a)).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("stickyd.io/unsigned"),
        "{resp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_affinity_annotations_set_the_sidecars_affinity() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let inj = Injector::start("affinity", &cert, &key);
    let mut a = annotated();
    a["stickyd.io/affinity"] = json!("app-header");
    a["stickyd.io/app-header"] = json!("Mcp-Session-Id");
    let original = pod(a);
    let (resp, patch) = admit(&ca, &inj, "u-app-header", &original).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let mut p = original.clone();
    json_patch::patch(&mut p, &patch.expect("a patch")).unwrap();
    let cfg = assert_sidecar(&p);
    assert_eq!(cfg.affinity, stickyd::config::AffinityMode::AppHeader);
    assert_eq!(cfg.affinity_header.as_str(), "mcp-session-id");
    let side = named(&p["spec"]["initContainers"], "stickyd").unwrap();
    assert_eq!(env_value(side, "STICKYD_AFFINITY"), Some("app-header"));
    assert_eq!(env_value(side, "STICKYD_APP_HEADER"), Some("Mcp-Session-Id"));

    // app-header without the header: refused, naming the annotation to add.
    let mut a = annotated();
    a["stickyd.io/affinity"] = json!("app-header");
    let (resp, patch) = admit(&ca, &inj, "u-app-header-alone", &pod(a)).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(patch.is_none());
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("annotation stickyd.io/app-header: the annotations would make stickyd refuse to start: ")
            && msg.contains("required with STICKYD_AFFINITY=app-header"),
        "{msg}"
    );
}

/// The annotations the injector reads are each documented in docs/injector.md.
#[test]
fn every_annotation_is_documented() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/injector.md"))
        .expect("docs/injector.md");
    for (name, _) in stickyd::injector::review::ANNOTATIONS {
        assert!(
            doc.contains(&format!("`stickyd.io/{name}`")),
            "docs/injector.md documents stickyd.io/{name}"
        );
    }
    for (var, _) in stickyd::injector::VARIABLES {
        assert!(doc.contains(var), "docs/injector.md documents {var}");
    }
}
