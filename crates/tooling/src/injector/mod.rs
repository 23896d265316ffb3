//! `stickyd injector`: a mutating admission webhook that adds the stickyd
//! sidecar to Pods annotated `stickyd.io/inject: enabled`, with the same code
//! as `stickyd inject` (see docs/injector.md).
//!
//! It serves `POST /inject` (AdmissionReview `admission.k8s.io/v1`) and
//! `GET /healthz` over TLS, and reads its certificate again when the files
//! change.

pub mod review;
pub(crate) mod tls;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use stickyd_sidecar::config::{ConfigError, Env, LogFormat};

pub use stickyd_sidecar::config::INJECTOR_VARIABLES as VARIABLES;

/// The largest AdmissionReview body accepted.
const MAX_BODY: usize = 8 << 20;

/// The injector's settings, from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the certificate files are checked for a change.
    pub reload: Duration,
    /// The sidecar image.
    pub image: String,
    pub log: String,
    pub log_format: LogFormat,
}

fn value(env: &dyn Env, var: &str) -> Option<String> {
    env.get(var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// A variable's value, or its default from [`VARIABLES`].
fn value_or_default(env: &dyn Env, var: &'static str) -> String {
    value(env, var)
        .or_else(|| {
            VARIABLES
                .iter()
                .find(|(k, _)| *k == var)
                .and_then(|(_, d)| d.map(str::to_string))
        })
        .unwrap_or_else(|| panic!("{var} has a default in VARIABLES"))
}

fn invalid(var: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

impl Settings {
    /// Reads the settings; an invalid or missing value names its variable,
    /// and an unknown STICKYD_* variable is refused with the nearest one.
    pub fn from_env(env: &dyn Env) -> Result<Settings, ConfigError> {
        stickyd_sidecar::config::check_names(env)?;
        let listen = value_or_default(env, "STICKYD_INJECTOR_LISTEN");
        let listen = listen.parse().map_err(|_| {
            invalid(
                "STICKYD_INJECTOR_LISTEN",
                &listen,
                "an IP:PORT socket address, e.g. 0.0.0.0:8443 (port 0 picks a free one)",
            )
        })?;
        let file = |var: &'static str, what: &str| {
            value(env, var).map(PathBuf::from).ok_or_else(|| ConfigError::Conflict {
                var,
                message: format!("required: the path of the webhook's {what} (PEM)"),
            })
        };
        let cert = file(
            "STICKYD_INJECTOR_TLS_CERT",
            "certificate chain, e.g. /etc/stickyd/tls/tls.crt",
        )?;
        let key = file("STICKYD_INJECTOR_TLS_KEY", "private key, e.g. /etc/stickyd/tls/tls.key")?;
        let reload = value_or_default(env, "STICKYD_INJECTOR_TLS_RELOAD");
        let reload = stickyd_sidecar::config::parse_duration(&reload)
            .filter(|d| !d.is_zero() && *d <= Duration::from_secs(3600))
            .ok_or_else(|| {
                invalid(
                    "STICKYD_INJECTOR_TLS_RELOAD",
                    &reload,
                    "a duration between 1ms and 1h, e.g. 10s or 500ms",
                )
            })?;
        let image = value_or_default(env, "STICKYD_INJECTOR_IMAGE");
        if image.contains(char::is_whitespace) {
            return Err(invalid(
                "STICKYD_INJECTOR_IMAGE",
                &image,
                "an image reference without spaces",
            ));
        }
        let log = value_or_default(env, "STICKYD_LOG");
        let log_format = match value_or_default(env, "STICKYD_LOG_FORMAT").as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("STICKYD_LOG_FORMAT", other, "text or json")),
        };
        Ok(Settings {
            listen,
            cert,
            key,
            reload,
            image,
            log,
            log_format,
        })
    }

    /// Loads the certificate pair; an error names the variable of the file.
    pub fn certificates(&self) -> Result<tls::Certificates, ConfigError> {
        tls::Certificates::load(&self.cert, &self.key).map_err(|e| {
            let (var, path, message) = match e {
                tls::TlsError::Cert(m) => ("STICKYD_INJECTOR_TLS_CERT", &self.cert, m),
                tls::TlsError::Key(m) => ("STICKYD_INJECTOR_TLS_KEY", &self.key, m),
            };
            ConfigError::File {
                var,
                path: path.display().to_string(),
                message,
            }
        })
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

/// Answers one request.
pub async fn handle(image: Arc<str>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::POST, "/inject") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("cannot read the body (at most {MAX_BODY} bytes): {e}\n"),
                    ))
                }
            };
            match review::answer(&body, &image) {
                Ok((out, _)) => Ok(reply(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec(&out).unwrap_or_default(),
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "not an AdmissionReview");
                    Ok(text(StatusCode::BAD_REQUEST, format!("{e}\n")))
                }
            }
        }
        (_, "/inject" | "/healthz") => Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")),
        _ => Ok(text(StatusCode::NOT_FOUND, "not found: the webhook is POST /inject\n")),
    }
}

/// Connections served at once. The API server multiplexes its admission
/// calls over a few HTTP/2 connections; one connection past this many is
/// closed at once, before its TLS handshake, and logged.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves the webhook on `listener` until `shutdown` completes, then lets
/// requests in flight finish (at most 10 s).
pub async fn serve(
    listener: TcpListener,
    certs: Arc<tls::Certificates>,
    reload: Duration,
    image: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let watcher = tokio::spawn(certs.clone().watch(reload));
    let image: Arc<str> = image.into();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = MAX_CONNECTIONS, "connection closed: the injector serves this many at once");
            drop(stream);
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.current());
        let builder = builder.clone();
        let image = image.clone();
        let watch = graceful.watcher();
        tokio::spawn(async move {
            let _place = place;
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let svc = service_fn(move |req| handle(image.clone(), req));
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = watch.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    watcher.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// Runs `stickyd injector` until SIGTERM or SIGINT; returns the exit code.
pub async fn run(settings: Settings, certs: tls::Certificates) -> i32 {
    let listener = match TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "stickyd injector: cannot listen on {} (STICKYD_INJECTOR_LISTEN): {e}",
                settings.listen
            );
            return 1;
        }
    };
    let addr = listener.local_addr().unwrap_or(settings.listen);
    tracing::info!(%addr, image = %settings.image, "injector listening");
    // The bound address on standard output, for whoever started us with port 0.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "stickyd injector listening on https://{addr}/inject");
    let _ = out.flush();
    drop(out);
    serve(
        listener,
        Arc::new(certs),
        settings.reload,
        settings.image,
        stickyd_sidecar::sidecar::shutdown_signal(),
    )
    .await;
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn settings_name_the_variable_at_fault() {
        let ok = [
            ("STICKYD_INJECTOR_TLS_CERT", "/tls/tls.crt"),
            ("STICKYD_INJECTOR_TLS_KEY", "/tls/tls.key"),
        ];
        let s = Settings::from_env(&env(&ok)).unwrap();
        assert_eq!(s.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(s.reload, Duration::from_secs(10));
        assert_eq!(s.image, crate::inject::DEFAULT_IMAGE);
        for (var, bad) in [
            ("STICKYD_INJECTOR_LISTEN", "8443"),
            ("STICKYD_INJECTOR_TLS_RELOAD", "0"),
            ("STICKYD_INJECTOR_TLS_RELOAD", "soon"),
            ("STICKYD_INJECTOR_IMAGE", "a b"),
            ("STICKYD_LOG_FORMAT", "xml"),
        ] {
            let mut e = env(&ok);
            e.insert(var.into(), bad.into());
            assert_eq!(Settings::from_env(&e).unwrap_err().var(), var, "{var}={bad}");
        }
        // A misspelt variable is refused first, naming the closest; the
        // injector's own Service's links are not.
        let mut e = env(&ok);
        e.insert("STICKYD_INJECTOR_IMAEG".into(), "stickyd:2".into());
        let err = Settings::from_env(&e).unwrap_err();
        assert_eq!(err.var(), "STICKYD_INJECTOR_IMAEG");
        assert!(
            err.to_string().ends_with("did you mean STICKYD_INJECTOR_IMAGE?"),
            "{err}"
        );
        let mut e = env(&ok);
        e.insert("STICKYD_INJECTOR_SERVICE_HOST".into(), "10.96.0.9".into());
        e.insert("STICKYD_INJECTOR_PORT_443_TCP".into(), "tcp://10.96.0.9:443".into());
        assert!(Settings::from_env(&e).is_ok());
        for var in ["STICKYD_INJECTOR_TLS_CERT", "STICKYD_INJECTOR_TLS_KEY"] {
            let mut e = env(&ok);
            e.remove(var);
            let err = Settings::from_env(&e).unwrap_err();
            assert_eq!(err.var(), var);
            assert!(err.to_string().contains("required"), "{err}");
        }
    }
}
