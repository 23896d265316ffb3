//! `stickyd inject`: adds the stickyd sidecar to Kubernetes manifests.

/// Arguments of `stickyd inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// A YAML file, or - for standard input.
    #[arg(default_value = "-")]
    pub file: String,
}

/// Runs `stickyd inject`; returns the process exit code.
pub fn run(_args: &InjectArgs) -> i32 {
    eprintln!("stickyd inject: under construction");
    2
}
