//! `stickyd demo`: a cluster in a box on loopback.
//!
//! N pods on 127.0.0.11, .12, …: each a demo [`app`] with a stickyd sidecar
//! in front of it, and a random load balancer ([`lb`]) in front of all of
//! them, standing in for kube-proxy behind an ExternalName Service. A
//! synthetic client ([`load`]) runs browser-like sessions through it and a
//! live line shows how many stayed on their pod. `--no-sidecar` wires the
//! load balancer straight to the apps: the story's failure.
#![forbid(unsafe_code)]

pub mod app;
pub mod cluster;
pub mod lb;
pub mod load;
mod serve;

use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

use cluster::{Cluster, ClusterSpec};
use lb::{Backends, LbStats};
use load::{LoadSpec, LoadStats, Snapshot};

/// Arguments of `stickyd demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of demo app pods.
    #[arg(long, default_value_t = 3)]
    pub pods: usize,
    /// Wire the random load balancer straight to the apps (the story's failure).
    #[arg(long)]
    pub no_sidecar: bool,
    /// The load balancer's address (with --app-only: the app's address,
    /// default 127.0.0.1:8081).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Pod i (from 1) runs on this address + i.
    #[arg(long, default_value = "127.0.0.10")]
    pub base_ip: Ipv4Addr,
    /// The sidecars' port on each pod's address (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The apps' port on each pod's address (0: any free port).
    #[arg(long, default_value_t = 8081)]
    pub app_port: u16,
    /// The sidecars' admin port on each pod's address (0: any free port).
    #[arg(long, default_value_t = 9090)]
    pub admin_port: u16,
    /// Exit by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Do not run the built-in synthetic client (e.g. to drive the demo with k6).
    #[arg(long)]
    pub no_load: bool,
    /// Concurrent sessions of the synthetic client.
    #[arg(long, default_value_t = 30)]
    pub sessions: usize,
    /// Requests per session of the synthetic client.
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
    /// Milliseconds between two requests of a session.
    #[arg(long, default_value_t = 100)]
    pub think_ms: u64,
    /// Serve only the demo app (the example app container): pod name from
    /// STICKYD_POD_NAME, else HOSTNAME.
    #[arg(long)]
    pub app_only: bool,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the sidecar of {pod} has an invalid configuration: {source}")]
    Config {
        pod: String,
        source: stickyd_sidecar::config::ConfigError,
    },
    #[error("the sidecar of {pod} did not start: {source}")]
    Sidecar {
        pod: String,
        source: stickyd_sidecar::sidecar::StartError,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

fn init_tracing() -> String {
    let filter = std::env::var("STICKYD_LOG").unwrap_or_else(|_| "warn".into());
    let filter = if tracing_subscriber::EnvFilter::try_new(&filter).is_ok() {
        filter
    } else {
        "warn".to_string()
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&filter))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    filter
}

/// Runs `stickyd demo`; returns the process exit code.
pub fn run(args: &DemoArgs) -> i32 {
    let log = init_tracing();
    // The app alone (a container beside a sidecar) needs one thread; the
    // whole demo a few, however many cores the machine has.
    let rt = if args.app_only {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores.clamp(2, 4))
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stickyd demo: {}", DemoError::Runtime(e));
            return 1;
        }
    };
    let result = if args.app_only {
        rt.block_on(app_only(args))
    } else {
        rt.block_on(demo(args, log))
    };
    match result {
        Ok(()) => 0,
        Err(DemoError::Invalid(msg)) => {
            eprintln!("stickyd demo: {msg}");
            2
        }
        Err(e) => {
            eprintln!("stickyd demo: {e}");
            1
        }
    }
}

/// Completes on SIGTERM/SIGINT, or after `duration` seconds.
async fn until_done(duration: Option<f64>) {
    match duration {
        Some(s) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))) => {}
                _ = stickyd_sidecar::sidecar::shutdown_signal() => {}
            }
        }
        None => stickyd_sidecar::sidecar::shutdown_signal().await,
    }
}

async fn app_only(args: &DemoArgs) -> Result<(), DemoError> {
    let addr = args.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8081)));
    let pod = std::env::var("STICKYD_POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DemoError::Invalid("--app-only needs the pod name in STICKYD_POD_NAME or HOSTNAME".into()))?;
    let listener = TcpListener::bind(addr).await.map_err(|source| DemoError::Bind {
        what: "the demo app",
        addr,
        source,
    })?;
    let addr = listener.local_addr().unwrap_or(addr);
    println!("stickyd demo app {pod} listening on http://{addr}/");
    app::serve(listener, pod, until_done(args.duration)).await;
    Ok(())
}

fn validate(args: &DemoArgs) -> Result<SocketAddr, DemoError> {
    let listen = args.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000)));
    if !listen.ip().is_loopback() {
        return Err(DemoError::Invalid(format!(
            "--listen {listen}: the demo only listens on loopback addresses (127.0.0.0/8, ::1)"
        )));
    }
    if !args.base_ip.is_loopback() {
        return Err(DemoError::Invalid(format!(
            "--base-ip {}: the pods run on loopback addresses (127.0.0.0/8)",
            args.base_ip
        )));
    }
    if args.pods == 0 || args.pods > 200 {
        return Err(DemoError::Invalid(format!("--pods {}: between 1 and 200", args.pods)));
    }
    if args.sessions == 0 || args.sessions > 10_000 {
        return Err(DemoError::Invalid(format!(
            "--sessions {}: between 1 and 10000",
            args.sessions
        )));
    }
    if args.requests < 2 {
        return Err(DemoError::Invalid(format!(
            "--requests {}: at least 2, or no request carries a session",
            args.requests
        )));
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(DemoError::Invalid(format!("--duration {d}: a number of seconds > 0")));
        }
    }
    if !args.no_sidecar && args.port != 0 && (args.port == args.app_port || args.port == args.admin_port) {
        return Err(DemoError::Invalid(format!(
            "--port {}: the sidecar needs its own port, not the app's or the admin's",
            args.port
        )));
    }
    if !args.no_sidecar && args.admin_port != 0 && args.admin_port == args.app_port {
        return Err(DemoError::Invalid(format!(
            "--admin-port {}: the same as --app-port",
            args.admin_port
        )));
    }
    Ok(listen)
}

fn fmt_pct(p: Option<f64>) -> String {
    p.map(|p| format!("{p:.1}%")).unwrap_or_else(|| "-".into())
}

fn live_line(elapsed: Duration, load: Option<&Snapshot>, lb: &LbStats, backends: &Backends) -> String {
    let t = elapsed.as_secs();
    match load {
        Some(s) => format!(
            "[{t:>4}s] stickiness {} of {} session requests on their pod | sessions kept {} of {} | {} errors, {} repins",
            fmt_pct(s.stickiness()),
            s.followups,
            fmt_pct(s.kept_pct()),
            s.sessions,
            s.errors,
            s.repins
        ),
        None => {
            let per: Vec<String> = lb::picks(backends).iter().map(|(n, p)| format!("{n} {p}")).collect();
            format!(
                "[{t:>4}s] load balancer: {} requests ({}), {} errors",
                lb.requests.load(std::sync::atomic::Ordering::Relaxed),
                per.join(" · "),
                lb.errors.load(std::sync::atomic::Ordering::Relaxed)
            )
        }
    }
}

async fn demo(args: &DemoArgs, log: String) -> Result<(), DemoError> {
    let listen = validate(args)?;
    let started = Instant::now();
    let spec = ClusterSpec {
        base_ip: args.base_ip,
        sidecar_port: args.port,
        app_port: args.app_port,
        admin_port: args.admin_port,
        sidecars: !args.no_sidecar,
        log,
    };
    let lb_listener = TcpListener::bind(listen).await.map_err(|source| DemoError::Bind {
        what: "the load balancer (--listen)",
        addr: listen,
        source,
    })?;
    let listen = lb_listener.local_addr().unwrap_or(listen);
    let backends = Backends::default();
    let cluster = Cluster::start(spec, args.pods, backends.clone()).await?;

    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let sidecars = !args.no_sidecar;
    let _ = writeln!(
        out,
        "stickyd demo: {} pods, {} a random load balancer (kube-proxy behind an ExternalName)",
        args.pods,
        if sidecars {
            "each a demo app behind a stickyd sidecar, behind"
        } else {
            "demo apps WITHOUT stickyd (--no-sidecar), straight behind"
        }
    );
    for p in &cluster.pods {
        match p.admin {
            Some(admin) => {
                let _ = writeln!(
                    out,
                    "  {:<7} app {:<21} sidecar {:<21} admin http://{admin}/metrics",
                    p.name,
                    p.app_addr.to_string(),
                    p.backend.to_string()
                );
            }
            None => {
                let _ = writeln!(out, "  {:<7} app {}", p.name, p.app_addr);
            }
        }
    }
    let _ = writeln!(
        out,
        "  load balancer http://{listen}/ (ready in {} ms)",
        started.elapsed().as_millis()
    );
    let _ = writeln!(
        out,
        "Open http://{listen}/ in a browser, or: curl -b jar -c jar http://{listen}/api"
    );
    let _ = writeln!(
        out,
        "Churn: curl http://{listen}/_demo/pods · curl -X POST 'http://{listen}/_demo/kill?pod=pod-1' · curl -X POST 'http://{listen}/_demo/drain?pod=pod-2' · curl -X POST http://{listen}/_demo/add"
    );
    if !args.no_load {
        let _ = writeln!(
            out,
            "Synthetic client: {} concurrent sessions of {} requests, {} ms apart (--no-load turns it off)",
            args.sessions, args.requests, args.think_ms
        );
    }
    let _ = out.flush();
    drop(out);

    let cluster = Arc::new(Mutex::new(cluster));
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    let control = tokio::spawn(cluster::control_loop(cluster.clone(), ctl_rx));
    let lb_stats = Arc::new(LbStats::default());
    let (lb_stop, lb_stopped) = oneshot::channel::<()>();
    let lb_task = tokio::spawn(lb::serve(
        lb_listener,
        backends.clone(),
        Some(ctl_tx),
        lb_stats.clone(),
        async move {
            let _ = lb_stopped.await;
        },
    ));

    let load_stats = Arc::new(LoadStats::default());
    let (load_stop, load_stop_rx) = watch::channel(false);
    let load_task = (!args.no_load).then(|| {
        tokio::spawn(load::run(
            LoadSpec {
                url: format!("http://{listen}/api"),
                sessions: args.sessions,
                requests: args.requests,
                think: Duration::from_millis(args.think_ms),
            },
            load_stats.clone(),
            load_stop_rx,
        ))
    });

    let run_started = Instant::now();
    let done = until_done(args.duration);
    tokio::pin!(done);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut done => break,
            _ = tick.tick() => {
                let snap = load_task.as_ref().map(|_| load_stats.snapshot());
                let line = live_line(run_started.elapsed(), snap.as_ref(), &lb_stats, &backends);
                let mut out = std::io::stdout().lock();
                if tty {
                    let _ = write!(out, "\r\x1b[2K{line}");
                } else {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
            }
        }
    }
    if tty {
        println!();
    }

    // Stop the client, then the load balancer, then the pods.
    let _ = load_stop.send(true);
    if let Some(t) = load_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = lb_stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(6), lb_task).await;
    control.abort();
    cluster.lock().await.shutdown().await;

    let secs = run_started.elapsed().as_secs_f64();
    if args.no_load {
        println!(
            "result: requests={} errors={} seconds={secs:.1}",
            lb_stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            lb_stats.errors.load(std::sync::atomic::Ordering::Relaxed)
        );
    } else {
        let s = load_stats.snapshot();
        println!(
            "stickyd demo ({}): {} of {} session requests reached their session's pod ({}); {} of {} sessions stayed on one pod with an unbroken counter ({})",
            if sidecars { "with stickyd" } else { "without stickyd" },
            s.on_pod,
            s.followups,
            fmt_pct(s.stickiness()),
            s.kept,
            s.sessions,
            fmt_pct(s.kept_pct()),
        );
        println!(
            "result: stickiness={} sessions_kept={} sessions={} kept={} followups={} on_pod={} requests={} errors={} repins={} moves={} seconds={secs:.1}",
            fmt_pct(s.stickiness()),
            fmt_pct(s.kept_pct()),
            s.sessions,
            s.kept,
            s.followups,
            s.on_pod,
            s.requests,
            s.errors,
            s.repins,
            s.moves,
        );
    }
    Ok(())
}
