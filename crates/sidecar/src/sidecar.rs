//! One running sidecar: the proxy listener, the admin listener, the endpoint
//! source and the secret-file watcher, with the drain sequence that SIGTERM
//! starts.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::affinity::{Codec, Lifetimes};
use crate::config::{self, Config, EndpointsSource, NewSessions};
use crate::endpoints::{fixed, kubernetes, EndpointStore};
use crate::metrics::{KindLabels, Metrics};
use crate::proxy::listener::{self, Phases};
use crate::proxy::{Clock, Connector, Shared};

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({var}): {source}")]
    Bind {
        var: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("kubernetes endpoint source: {0}")]
    Kubernetes(#[from] kubernetes::KubeSourceError),
}

/// What [`Sidecar::start_with`] serves with: the listeners, bound already,
/// the clock of the session token's times and the upstream connector.
pub struct Parts {
    pub proxy: TcpListener,
    pub admin: TcpListener,
    pub clock: Clock,
    pub connector: Connector,
}

/// A running sidecar.
pub struct Sidecar {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    shared: Arc<Shared>,
    phases: Phases,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

async fn bind(var: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|source| StartError::Bind { var, addr, source })?;
    let _ = socket.set_reuseaddr(true);
    let _ = socket.set_nodelay(true);
    socket
        .bind(addr)
        .map_err(|source| StartError::Bind { var, addr, source })?;
    socket
        .listen(4096)
        .map_err(|source| StartError::Bind { var, addr, source })
}

impl Sidecar {
    /// Binds both listeners and starts serving. Returns once the listeners
    /// accept connections; the endpoint source syncs in the background.
    pub async fn start(cfg: Config) -> Result<Sidecar, StartError> {
        let proxy = bind("STICKYD_LISTEN", cfg.listen).await?;
        let admin = bind("STICKYD_ADMIN_LISTEN", cfg.admin_listen).await?;
        let parts = Parts {
            proxy,
            admin,
            clock: Clock::System,
            connector: Connector::Tcp,
        };
        Sidecar::start_with(cfg, parts).await
    }

    /// Starts serving on listeners bound already (`cfg`'s listen addresses
    /// are not used), with the token's clock and the upstream connector of
    /// `parts`: a sidecar in a test's own process.
    pub async fn start_with(cfg: Config, parts: Parts) -> Result<Sidecar, StartError> {
        let started = Instant::now();
        let Parts {
            proxy: proxy_listener,
            admin: admin_listener,
            clock,
            connector,
        } = parts;
        let listen = proxy_listener.local_addr().unwrap_or(cfg.listen);
        let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin_listen);

        let metrics = Arc::new(Metrics::default());
        metrics.observe_limits(&cfg.limits);
        metrics.set_info(cfg.service.as_deref().unwrap_or(""));
        let registry = metrics.registry();
        let store = EndpointStore::default();
        let mut background = Vec::new();
        match &cfg.endpoints {
            EndpointsSource::Static(list) => {
                fixed::install(&store, list);
                metrics.observe_view(&store.load(), []);
            }
            EndpointsSource::File(path) => {
                background.push(fixed::watch_file(
                    path.clone(),
                    store.clone(),
                    metrics.clone(),
                    Duration::from_millis(250),
                ));
            }
            EndpointsSource::Kubernetes => {
                metrics.observe_view(&store.load(), []);
                background.push(kubernetes::start(&cfg, store.clone(), metrics.clone()).await?);
            }
        }
        let mut shared = Shared::new(cfg, store, metrics);
        shared.clock = clock;
        shared.connector = connector;
        let shared = Arc::new(shared);
        if shared.cfg.new_sessions == NewSessions::LeastSessions {
            background.push(tokio::spawn(crate::placement::refresh(shared.clone())));
        }
        if let Some(path) = shared.cfg.cookie.secret_file.clone() {
            background.push(tokio::spawn(watch_secret_file(shared.clone(), path)));
        }

        let phases = Phases::default();
        let proxy_task = tokio::spawn(listener::serve(proxy_listener, shared.clone(), phases.clone()));
        let admin = Arc::new(Admin::new(shared.clone(), registry, started));
        let admin_task = tokio::spawn(crate::admin::serve(admin_listener, admin));
        tracing::info!(
            %listen,
            admin = %admin_addr,
            pod = %shared.cfg.pod_name,
            upstream = %shared.cfg.upstream,
            max_connections = shared.cfg.max_connections,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stickyd listening"
        );
        if shared.cfg.cookie.keys.is_empty() {
            tracing::warn!(
                "running unsigned: no STICKYD_COOKIE_SECRET or STICKYD_COOKIE_SECRET_FILE is set, so any client can \
                 pin itself to any pod by name, and hop markers and peers cannot be verified (see SECURITY.md)"
            );
        }
        if shared.cfg.drain_token.is_none() {
            tracing::warn!(
                "STICKYD_DRAIN_TOKEN is not set: /drain answers this pod itself only, so a preStop httpGet from the \
                 kubelet gets 403 and the pod stops without its session drain (stickyd inject writes a token)"
            );
        }
        Ok(Sidecar {
            listen,
            admin: admin_addr,
            shared,
            phases,
            proxy_task,
            admin_task,
            background,
        })
    }

    pub fn store(&self) -> &EndpointStore {
        &self.shared.store
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The drain sequence: for STICKYD_DRAIN_SECONDS keep serving (new
    /// sessions go to ready peers, keep-alive responses carry
    /// `Connection: close`, `/readyz` fails), then stop accepting and finish
    /// in-flight requests within STICKYD_DRAIN_TIMEOUT. The admin listener
    /// serves throughout.
    pub async fn drain_and_stop(self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.shared.metrics.draining.set(1);
        self.phases.stopping.cancel();
        let drain = self.shared.cfg.drain;
        tracing::info!(?drain, "draining: still serving, new sessions go to ready peers");
        tokio::time::sleep(drain).await;
        self.stop().await;
    }

    /// Stops accepting at once and finishes in-flight requests; the admin
    /// listener goes last.
    pub async fn stop(self) {
        self.phases.closing.cancel();
        let _ = self.proxy_task.await;
        self.admin_task.abort();
        for t in self.background {
            t.abort();
        }
        tracing::info!("stopped");
    }
}

/// Re-reads STICKYD_COOKIE_SECRET_FILE when it changes (a rotated Secret),
/// without a restart. A file that fails to parse keeps the old keys.
async fn watch_secret_file(shared: Arc<Shared>, path: std::path::PathBuf) {
    let stamp = |p: &std::path::Path| -> Option<(SystemTime, u64)> {
        // Kubernetes swaps Secret volumes through a symlink: follow it.
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let mut last = stamp(&path);
    let mut last_text = std::fs::read_to_string(&path).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        let text = std::fs::read_to_string(&path).ok();
        if text == last_text {
            continue;
        }
        last_text = text;
        match config::read_secret_file(&path) {
            Ok(keys) => {
                let n = keys.len();
                shared.codec.store(Arc::new(Codec::new(
                    keys,
                    Lifetimes {
                        max_lifetime: shared.cfg.cookie.max_lifetime,
                        idle_timeout: shared.cfg.cookie.idle_timeout,
                    },
                )));
                shared
                    .metrics
                    .key_reloads
                    .get_or_create(&KindLabels { kind: "ok" })
                    .inc();
                tracing::info!(keys = n, path = %path.display(), "cookie keys reloaded");
            }
            Err(e) => {
                shared
                    .metrics
                    .key_reloads
                    .get_or_create(&KindLabels { kind: "error" })
                    .inc();
                tracing::error!(error = %e, "cookie keys not reloaded; keeping the previous keys");
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `stickyd run`: start, serve until SIGTERM/SIGINT, drain, stop.
pub async fn run(cfg: Config) -> Result<(), StartError> {
    let sidecar = Sidecar::start(cfg).await?;
    shutdown_signal().await;
    sidecar.drain_and_stop().await;
    Ok(())
}
