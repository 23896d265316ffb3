//! `stickyd lint`: finds the manifest mistakes that break stickiness.

/// Arguments of `stickyd lint`.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Kubernetes YAML files to check.
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
}

/// Runs `stickyd lint`; returns the process exit code.
pub fn run(_args: &LintArgs) -> i32 {
    eprintln!("stickyd lint: under construction");
    2
}
