//! `stickyd demo`: a cluster in a box on loopback.

/// Arguments of `stickyd demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of demo app pods.
    #[arg(long, default_value_t = 3)]
    pub pods: usize,
    /// Wire the random load balancer straight to the apps (the story's failure).
    #[arg(long)]
    pub no_sidecar: bool,
}

/// Runs `stickyd demo`; returns the process exit code.
pub fn run(_args: &DemoArgs) -> i32 {
    eprintln!("stickyd demo: under construction");
    2
}
