//! The container's limits and what stickyd makes of them, a room each:
//!
//! - [`cgroup`]: the memory limit and the CPU quota of this process's
//!   cgroups ([`Host`]), read once at startup ([`Host::detect`]). This is
//!   the only place that reads cgroup files.
//! - [`sizing`]: the default STICKYD_MAX_CONNECTIONS and the byte budget for
//!   buffers under a memory limit ([`Budget`]), from the cost constants, and
//!   STICKYD_MEMORY_LIMIT's syntax. Pure.
//! - [`budget`]: that byte budget at run time ([`BufferBudget`]), shared by
//!   every connection: a buffer is taken from it ([`BufferBudget::try_take`])
//!   and given back when its [`Lease`] drops.
//! - here, [`Limits`]: the resolved values (limit, source, budget, buffer
//!   budget) that [`crate::config::Config`] carries to the data path.

pub mod budget;
pub mod cgroup;
pub mod sizing;

use std::fmt;
use std::sync::Arc;

pub use budget::{BufferBudget, Lease};
pub use cgroup::{CgroupLimit, CgroupVersion, Host};
pub use sizing::{
    parse_bytes, Budget, Costs, BASE_RSS, BUFFER_RESERVE, CONNECTION_COST, CONNECTION_SHARE_PERCENT, COSTS,
    DEFAULT_MAX_CONNECTIONS, HYPER_CONNECTION_COST, HYPER_STREAM_COST, MAX_CONNECTIONS_CAP, USABLE_PERCENT,
};

/// Where the memory limit in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// STICKYD_MEMORY_LIMIT.
    Env,
    /// The cgroup v2 `memory.max` of this process's cgroup or an ancestor.
    CgroupV2,
    /// The cgroup v1 `memory.limit_in_bytes` of the memory controller's cgroup.
    CgroupV1,
    /// No limit known.
    None,
}

impl LimitSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSource::Env => "STICKYD_MEMORY_LIMIT",
            LimitSource::CgroupV2 => "cgroup v2",
            LimitSource::CgroupV1 => "cgroup v1",
            LimitSource::None => "none",
        }
    }
}

impl fmt::Display for LimitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits stickyd runs with, resolved at startup.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Where `budget.limit` came from.
    pub source: LimitSource,
    /// The cgroup's limit, also when STICKYD_MEMORY_LIMIT overrides it.
    pub cgroup: Option<CgroupLimit>,
    /// The connection limit and the buffer budget's capacity.
    pub budget: Budget,
    /// The buffer budget every connection takes from.
    pub buffers: Arc<BufferBudget>,
}

impl Limits {
    /// The limits from STICKYD_MEMORY_LIMIT (`memory_limit`, which wins),
    /// the cgroup's limit and STICKYD_MAX_CONNECTIONS (`max_connections`).
    pub fn resolve(memory_limit: Option<u64>, max_connections: Option<usize>, cgroup: Option<&CgroupLimit>) -> Limits {
        let (limit, source) = match (memory_limit, cgroup) {
            (Some(b), _) => (Some(b), LimitSource::Env),
            (None, Some(c)) => (
                Some(c.bytes),
                match c.version {
                    CgroupVersion::V1 => LimitSource::CgroupV1,
                    CgroupVersion::V2 => LimitSource::CgroupV2,
                },
            ),
            (None, None) => (None, LimitSource::None),
        };
        let budget = Budget::for_limit(limit, max_connections);
        Limits {
            source,
            cgroup: cgroup.cloned(),
            buffers: Arc::new(BufferBudget::for_budget(&budget)),
            budget,
        }
    }

    /// The memory limit in use; `None`: no limit known.
    pub fn memory_limit(&self) -> Option<u64> {
        self.budget.limit
    }

    /// What to warn about at startup: a STICKYD_MAX_CONNECTIONS that does not
    /// fit in the limit, a limit too small for stickyd, a STICKYD_MEMORY_LIMIT
    /// above the cgroup's.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let b = &self.budget;
        if let (Some(limit), false) = (b.limit, b.fits()) {
            let default = Budget::for_limit_with(b.limit, None, b.costs);
            if b.connections_set {
                out.push(format!(
                    "STICKYD_MAX_CONNECTIONS={} does not fit in the memory limit of {} ({}): at {} per connection, \
                     with {} of base memory and {} of buffers, they need {}, over the {USABLE_PERCENT}% of the limit \
                     stickyd plans to use ({}); a burst of connections could get stickyd OOM-killed. \
                     The default for this limit is {}; a limit of at least {} fits {} connections",
                    b.max_connections,
                    Bytes(limit),
                    self.source,
                    Bytes(b.costs.per_connection),
                    Bytes(b.costs.base),
                    Bytes(b.buffer_bytes.unwrap_or(0)),
                    Bytes(b.needed()),
                    Bytes(b.usable().unwrap_or(0)),
                    default.max_connections,
                    Bytes(Budget::limit_needed(b.max_connections, b.costs)),
                    b.max_connections,
                ));
            } else {
                out.push(format!(
                    "the memory limit of {} ({}) is too small for stickyd: one connection and one buffer need a \
                     limit of at least {}",
                    Bytes(limit),
                    self.source,
                    Bytes(Budget::limit_needed(1, b.costs)),
                ));
            }
        }
        if let (LimitSource::Env, Some(limit), Some(c)) = (self.source, b.limit, &self.cgroup) {
            if limit > c.bytes {
                out.push(format!(
                    "STICKYD_MEMORY_LIMIT={} is above the cgroup's limit of {} ({}), which the kernel enforces",
                    Bytes(limit),
                    Bytes(c.bytes),
                    c.file.display(),
                ));
            }
        }
        out
    }

    /// Logs the limit, where it came from and the budget (info), and what
    /// [`Limits::warnings`] and the cgroup reading found wrong (warn).
    pub fn log(&self, host: &Host) {
        let b = &self.budget;
        let limit = b.limit.map_or_else(|| "none".to_string(), |l| Bytes(l).to_string());
        let buffers = b
            .buffer_bytes
            .map_or_else(|| "unbounded".to_string(), |l| Bytes(l).to_string());
        let cgroup_file = self.cgroup.as_ref().map(|c| c.file.display().to_string());
        let max_connections_from = match (b.connections_set, b.limit) {
            (true, _) => "STICKYD_MAX_CONNECTIONS",
            (false, Some(_)) => "memory limit",
            (false, None) => "default",
        };
        tracing::info!(
            memory_limit = %limit,
            memory_limit_bytes = b.limit.unwrap_or(0),
            source = %self.source,
            cgroup_limit_bytes = self.cgroup.as_ref().map(|c| c.bytes),
            cgroup_file = cgroup_file.as_deref(),
            max_connections = b.max_connections,
            max_connections_from,
            buffer_budget = %buffers,
            buffer_budget_bytes = b.buffer_bytes.unwrap_or(0),
            "memory limit"
        );
        for p in &host.problems {
            tracing::warn!(problem = %p, "cgroup limits not fully read");
        }
        for w in self.warnings() {
            tracing::warn!("{w}");
        }
    }
}

/// A byte count for messages: `128 MiB`, `1.5 GiB`, `900 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut v = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        if v.fract() == 0.0 {
            write!(f, "{v} {}", UNITS[unit])
        } else {
            write!(f, "{v:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cgroup(bytes: u64, version: CgroupVersion) -> CgroupLimit {
        CgroupLimit {
            bytes,
            version,
            file: PathBuf::from("/sys/fs/cgroup/memory.max"),
        }
    }

    #[test]
    fn sources() {
        let v2 = cgroup(128 << 20, CgroupVersion::V2);
        let v1 = cgroup(64 << 20, CgroupVersion::V1);
        let l = Limits::resolve(None, None, Some(&v2));
        assert_eq!((l.source, l.memory_limit()), (LimitSource::CgroupV2, Some(128 << 20)));
        assert_eq!(l.buffers.capacity() as u64, l.budget.buffer_bytes.unwrap());
        let l = Limits::resolve(None, None, Some(&v1));
        assert_eq!((l.source, l.memory_limit()), (LimitSource::CgroupV1, Some(64 << 20)));
        let l = Limits::resolve(Some(96 << 20), None, Some(&v2));
        assert_eq!((l.source, l.memory_limit()), (LimitSource::Env, Some(96 << 20)));
        assert_eq!(l.cgroup, Some(v2.clone()));
        let l = Limits::resolve(None, None, None);
        assert_eq!((l.source, l.memory_limit()), (LimitSource::None, None));
        assert!(l.buffers.is_unbounded());
        assert_eq!(l.budget.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(l.warnings().is_empty());
        assert_eq!(LimitSource::CgroupV1.to_string(), "cgroup v1");
        assert_eq!(LimitSource::Env.to_string(), "STICKYD_MEMORY_LIMIT");
    }

    #[test]
    fn warnings() {
        let v2 = cgroup(128 << 20, CgroupVersion::V2);
        assert!(Limits::resolve(None, None, Some(&v2)).warnings().is_empty());
        assert!(Limits::resolve(None, Some(100), Some(&v2)).warnings().is_empty());

        let w = Limits::resolve(None, Some(100_000), Some(&v2)).warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        let default = Budget::for_limit(Some(128 << 20), None).max_connections;
        for part in [
            "STICKYD_MAX_CONNECTIONS=100000".to_string(),
            "128 MiB (cgroup v2)".into(),
            format!("default for this limit is {default}"),
            format!("at least {}", Bytes(Budget::limit_needed(100_000, COSTS))),
        ] {
            assert!(w[0].contains(&part), "{part:?} in {w:?}");
        }

        let w = Limits::resolve(Some(9 << 20), None, None).warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("too small"), "{w:?}");

        let w = Limits::resolve(Some(1 << 30), None, Some(&v2)).warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("above the cgroup's limit of 128 MiB"), "{w:?}");
        assert!(Limits::resolve(Some(64 << 20), None, Some(&v2)).warnings().is_empty());
    }

    #[test]
    fn byte_display() {
        assert_eq!(Bytes(900).to_string(), "900 B");
        assert_eq!(Bytes(12 << 10).to_string(), "12 KiB");
        assert_eq!(Bytes(128 << 20).to_string(), "128 MiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
    }

    // --- BufferBudget --------------------------------------------------------
}
