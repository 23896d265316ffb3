#![forbid(unsafe_code)]

use std::io::IsTerminal;

// The allocator: jemalloc (the default feature), mimalloc when that feature
// is on, or the system's with --no-default-features.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand};
use stickyd::config::{Config, LogFormat, ProcessEnv};
use stickyd::startup::Startup;

/// stickyd: strict cookie session stickiness for Kubernetes services, as a sidecar.
#[derive(Parser)]
#[command(name = "stickyd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default). Configured by STICKYD_* environment variables.
    Run,
    /// A cluster in a box on loopback: demo apps, sidecars and a random load balancer.
    Demo(stickyd::demo::DemoArgs),
    /// Add the stickyd sidecar to Kubernetes manifests.
    Inject(stickyd::inject::InjectArgs),
    /// Check Kubernetes manifests for mistakes that break session stickiness.
    Lint(stickyd::lint::LintArgs),
    /// A mutating admission webhook that adds the sidecar to Pods annotated
    /// stickyd.io/inject: enabled. Configured by STICKYD_INJECTOR_* environment variables.
    Injector,
}

fn init_tracing(filter: &str, format: LogFormat) {
    // kube logs every failed attempt at error level during an API outage;
    // stickyd logs the outage once and counts it, so mute that unless asked.
    let filter = if filter.contains("kube_client") {
        filter.to_string()
    } else {
        format!("{filter},kube_client::client::builder=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    // Colour only for a person at a terminal: a file or a log collector gets plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text => b.init(),
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn run() -> anyhow::Result<i32> {
    // The only read of the hostname, the cgroups and the files the variables
    // name: the configuration is parsed from the environment and these.
    let startup = Startup::gather(&ProcessEnv);
    let cfg = match Config::parse(&ProcessEnv, &startup) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stickyd: configuration error: {e}");
            return Ok(2);
        }
    };
    init_tracing(&cfg.log, cfg.log_format);
    tracing::info!(worker_threads = cfg.worker_threads, "starting");
    cfg.limits.log(&startup.host);
    let rt = runtime(cfg.worker_threads)?;
    match rt.block_on(stickyd::sidecar::run(cfg)) {
        Ok(()) => Ok(0),
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("stickyd: {e}");
            Ok(1)
        }
    }
}

fn injector() -> anyhow::Result<i32> {
    let settings = match stickyd::injector::Settings::from_env(&stickyd::config::ProcessEnv) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stickyd injector: configuration error: {e}");
            return Ok(2);
        }
    };
    let certs = match settings.certificates() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stickyd injector: configuration error: {e}");
            return Ok(2);
        }
    };
    init_tracing(&settings.log, settings.log_format);
    let rt = runtime(2)?;
    Ok(rt.block_on(stickyd::injector::run(settings, certs)))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run()?,
        Command::Demo(a) => stickyd::demo::run(&a),
        Command::Inject(a) => stickyd::inject::run(&a),
        Command::Lint(a) => stickyd::lint::run(&a),
        Command::Injector => injector()?,
    };
    std::process::exit(code);
}
