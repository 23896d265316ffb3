#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

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
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::Run => 0,
        Command::Demo(a) => stickyd::demo::run(&a),
        Command::Inject(a) => stickyd::inject::run(&a),
        Command::Lint(a) => stickyd::lint::run(&a),
    };
    std::process::exit(code);
}
