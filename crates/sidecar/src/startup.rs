//! What stickyd learns about its machine at startup, besides its `STICKYD_*`
//! variables: the hostname, the cgroup limits, the number of cores and the
//! files the variables name. [`Startup::gather`] is the only place that
//! reads them; [`crate::config::Config::parse`] then parses the variables
//! with these facts and reads nothing itself, so the same variables and
//! facts always give the same configuration (which `stickyd lint` relies on).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{self, Env};
use crate::limits::Host;

/// The facts [`crate::config::Config::parse`] needs from the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// HOSTNAME, else /etc/hostname: in Kubernetes, the pod's name
    /// (STICKYD_POD_NAME's default).
    pub hostname: Option<String>,
    /// The cgroup limits of this process (STICKYD_MEMORY_LIMIT's and
    /// STICKYD_WORKER_THREADS' defaults).
    pub host: Host,
    /// The cores this process may run on (the most worker threads).
    pub cores: usize,
    /// The files named by the variables ([`config::files_named`]), each read
    /// once: its text, or why it could not be read.
    pub files: BTreeMap<PathBuf, Result<String, String>>,
}

impl Default for Startup {
    /// A machine nothing is known about: no hostname, no cgroup limit, one
    /// core, no file.
    fn default() -> Startup {
        Startup {
            hostname: None,
            host: Host::default(),
            cores: 1,
            files: BTreeMap::new(),
        }
    }
}

impl Startup {
    /// Reads the facts for the variables in `env`: the one read of the
    /// hostname, the cgroups, the cores and the named files.
    pub fn gather(env: &dyn Env) -> Startup {
        let hostname = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let files = config::files_named(env)
            .into_iter()
            .map(|(_, path)| {
                let text = std::fs::read_to_string(&path).map_err(|e| e.to_string());
                (path, text)
            })
            .collect();
        Startup {
            hostname,
            host: Host::detect(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            files,
        }
    }

    /// A machine with this hostname and these files, nothing else known.
    pub fn with(hostname: Option<&str>, files: &[(&str, &str)]) -> Startup {
        Startup {
            hostname: hostname.map(str::to_string),
            files: files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), Ok(t.to_string())))
                .collect(),
            ..Startup::default()
        }
    }
}
