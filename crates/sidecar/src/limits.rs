//! The container's limits and what stickyd makes of them.
//!
//! - [`Host`]: the memory limit and the CPU quota of this process's cgroups,
//!   read once at startup ([`Host::detect`]). This is the only place that
//!   reads cgroup files.
//! - [`Budget`]: the default STICKYD_MAX_CONNECTIONS and the byte budget for
//!   buffers under a memory limit, from the cost constants below. Pure.
//! - [`BufferBudget`]: that byte budget at run time, shared by every
//!   connection: a buffer is taken from it ([`BufferBudget::try_take`]) and
//!   given back when its [`Lease`] drops.
//! - [`Limits`]: the resolved values (limit, source, budget, buffer budget)
//!   that [`crate::config::Config`] carries to the data path.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

// ---------------------------------------------------------------------------
// Cost constants
// ---------------------------------------------------------------------------

/// Resident memory of a running stickyd with no connection open: code, the
/// C library, the allocator, the runtime and the endpoint view. Measured idle
/// RSS of the shipped build (jemalloc): 9.9–10.8 MiB, of which 7–8 MiB are
/// pages of the binary itself (BENCHMARKS.md, "Memory under load"), rounded
/// up.
pub const BASE_RSS: u64 = 12 << 20;

/// Memory of one open client connection on the HTTP/1.1 path with a small
/// request in flight, as the cgroup charges it: in the process, its task,
/// the exchange's state and the bytes of its heads, 3.8–4.5 KiB of RSS per
/// active keep-alive connection at 1,000 to 4,000 connections
/// (BENCHMARKS.md, "Memory under load"); in the kernel, which the cgroup
/// charges too, the client socket and the upstream one with their queued
/// bytes. 12 KiB leaves room for a head of [`crate::proxy::h1::READ`] bytes
/// each way besides. What a request needs beyond that (a larger head, body
/// pieces its receiver did not take at once, a hyper connection's buffers)
/// comes from the buffer budget.
pub const CONNECTION_COST: u64 = 12 << 10;

/// What a connection served by hyper (HTTP/2, or any connection to an h2c
/// app) takes from the buffer budget besides [`CONNECTION_COST`]: hyper's
/// read and write buffers, its connection task and the client connection to
/// the app. From the heap profile in BENCHMARKS.md ("Where the memory
/// goes"): about 73 KiB per active connection on that path.
pub const HYPER_CONNECTION_COST: usize = 64 << 10;

/// The largest single lease from the buffer budget: a hyper connection
/// ([`HYPER_CONNECTION_COST`]), or a request head at the default
/// STICKYD_MAX_HEADER_BYTES. The budget always has room for one.
pub const BUFFER_RESERVE: u64 = 64 << 10;

/// The share of the memory limit stickyd plans to use; the rest is headroom
/// for what the constants above do not count (allocator fragmentation, the
/// kernel's socket buffers charged to the cgroup, bursts between
/// measurements).
pub const USABLE_PERCENT: u64 = 80;

/// The share of the usable memory, after [`BASE_RSS`], that goes to open
/// connections; the rest is the buffer budget.
pub const CONNECTION_SHARE_PERCENT: u64 = 75;

/// STICKYD_MAX_CONNECTIONS when no memory limit is known.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The largest STICKYD_MAX_CONNECTIONS, set or derived.
pub const MAX_CONNECTIONS_CAP: usize = 10_000_000;

/// The costs a [`Budget`] is computed from. [`COSTS`] holds the constants
/// above; tests use others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Costs {
    pub base: u64,
    pub per_connection: u64,
    pub per_buffer: u64,
}

/// The costs stickyd runs with.
pub const COSTS: Costs = Costs {
    base: BASE_RSS,
    per_connection: CONNECTION_COST,
    per_buffer: BUFFER_RESERVE,
};

// ---------------------------------------------------------------------------
// Budget
// ---------------------------------------------------------------------------

/// What fits in a memory limit: how many connections, and how many bytes of
/// buffers on top of them.
///
/// Of the limit, [`USABLE_PERCENT`] is usable; of that, after the base RSS,
/// [`CONNECTION_SHARE_PERCENT`] is for connections (the default
/// STICKYD_MAX_CONNECTIONS is as many as fit there with at least one
/// [`BUFFER_RESERVE`] left over, from 1 to [`MAX_CONNECTIONS_CAP`]) and what
/// the connections leave is for buffers. An explicit STICKYD_MAX_CONNECTIONS
/// below the default leaves more for buffers; above it, the buffers keep
/// their share and the budget does not fit ([`Budget::fits`] is false, a
/// startup warning). A limit too small for one connection and one buffer
/// gets both anyway, and does not fit either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The memory limit this budget is for; `None`: no limit known.
    pub limit: Option<u64>,
    /// The connection limit: STICKYD_MAX_CONNECTIONS when set, else the
    /// default for the limit ([`DEFAULT_MAX_CONNECTIONS`] when none is known).
    pub max_connections: usize,
    /// Whether `max_connections` is STICKYD_MAX_CONNECTIONS's.
    pub connections_set: bool,
    /// The capacity of the [`BufferBudget`]; `None`: unbounded (no limit known).
    pub buffer_bytes: Option<u64>,
    /// The costs it was computed from.
    pub costs: Costs,
}

fn percent(v: u64, p: u64) -> u64 {
    (v as u128 * p as u128 / 100) as u64
}

impl Budget {
    /// The budget for a memory limit with stickyd's [`COSTS`].
    /// `max_connections`: STICKYD_MAX_CONNECTIONS when set.
    pub fn for_limit(limit_bytes: Option<u64>, max_connections: Option<usize>) -> Budget {
        Budget::for_limit_with(limit_bytes, max_connections, COSTS)
    }

    /// The budget for a memory limit with the given costs.
    pub fn for_limit_with(limit_bytes: Option<u64>, max_connections: Option<usize>, costs: Costs) -> Budget {
        let connections_set = max_connections.is_some();
        let Some(limit) = limit_bytes else {
            return Budget {
                limit: None,
                max_connections: max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
                connections_set,
                buffer_bytes: None,
                costs,
            };
        };
        let free = percent(limit, USABLE_PERCENT).saturating_sub(costs.base);
        let connection_share = percent(free, CONNECTION_SHARE_PERCENT);
        let buffer_share = free - connection_share;
        // As many as fit in their share while one buffer reserve stays free.
        let per_connection = costs.per_connection.max(1);
        let fitting = (connection_share / per_connection).min(free.saturating_sub(costs.per_buffer) / per_connection);
        let derived = usize::try_from(fitting)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_CONNECTIONS_CAP);
        let max_connections = max_connections.unwrap_or(derived);
        let connections_bytes = (max_connections as u64).saturating_mul(costs.per_connection);
        let buffer_bytes = free
            .saturating_sub(connections_bytes)
            .max(buffer_share)
            .max(costs.per_buffer);
        Budget {
            limit: Some(limit),
            max_connections,
            connections_set,
            buffer_bytes: Some(buffer_bytes),
            costs,
        }
    }

    /// The memory stickyd plans to use: [`USABLE_PERCENT`] of the limit.
    pub fn usable(&self) -> Option<u64> {
        self.limit.map(|l| percent(l, USABLE_PERCENT))
    }

    /// The memory the budget needs at its fullest: the base, every
    /// connection open and the buffer budget used up.
    pub fn needed(&self) -> u64 {
        self.costs
            .base
            .saturating_add((self.max_connections as u64).saturating_mul(self.costs.per_connection))
            .saturating_add(self.buffer_bytes.unwrap_or(0))
    }

    /// Whether the budget at its fullest stays within the usable memory.
    /// Always true without a limit.
    pub fn fits(&self) -> bool {
        self.usable().is_none_or(|u| self.needed() <= u)
    }

    /// The smallest memory limit in which `connections` connections fit
    /// (their default is at least that many), with these costs.
    pub fn limit_needed(connections: usize, costs: Costs) -> u64 {
        let connections_bytes = connections as u128 * costs.per_connection as u128;
        let free = (connections_bytes * 100)
            .div_ceil(CONNECTION_SHARE_PERCENT as u128)
            .max(connections_bytes + costs.per_buffer as u128);
        let limit = ((free + costs.base as u128) * 100).div_ceil(USABLE_PERCENT as u128);
        u64::try_from(limit).unwrap_or(u64::MAX)
    }

    /// How many full buffer reserves the buffer budget holds at once.
    pub fn buffers(&self) -> Option<u64> {
        self.buffer_bytes.map(|b| b / self.costs.per_buffer.max(1))
    }
}

// ---------------------------------------------------------------------------
// BufferBudget
// ---------------------------------------------------------------------------

/// A byte budget shared by every connection's buffers, lock-free.
///
/// [`BufferBudget::try_take`] reserves bytes and returns a [`Lease`] that
/// gives them back when it drops; it refuses (and counts the refusal) when
/// the bytes would take `used` past `capacity`. `used` never exceeds
/// `capacity`, whatever the interleaving.
#[derive(Debug)]
pub struct BufferBudget {
    capacity: usize,
    used: AtomicUsize,
    refusals: AtomicU64,
}

impl BufferBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: usize) -> BufferBudget {
        BufferBudget {
            capacity,
            used: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
        }
    }

    /// A budget that never refuses (no memory limit known); it still counts
    /// the bytes in use.
    pub fn unbounded() -> BufferBudget {
        BufferBudget::new(usize::MAX)
    }

    /// The budget a [`Budget`] sets.
    pub fn for_budget(budget: &Budget) -> BufferBudget {
        match budget.buffer_bytes {
            Some(b) => BufferBudget::new(usize::try_from(b).unwrap_or(usize::MAX)),
            None => BufferBudget::unbounded(),
        }
    }

    /// Reserves `bytes` if they fit; `None` (counted in
    /// [`BufferBudget::refusals`]) if they do not.
    pub fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Lease> {
        if self.reserve(bytes) {
            Some(Lease {
                budget: self.clone(),
                bytes,
            })
        } else {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Adds `bytes` to `used` unless that would pass `capacity`.
    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.capacity)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held by live leases.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes that can be held at once (`usize::MAX`: unbounded).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether this budget never refuses.
    pub fn is_unbounded(&self) -> bool {
        self.capacity == usize::MAX
    }

    /// How many takes (and grows) were refused.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

/// Bytes held from a [`BufferBudget`]; given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

impl Lease {
    /// The bytes this lease holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `more` bytes besides, if they fit; on refusal the lease keeps
    /// what it had and the refusal is counted.
    pub fn try_grow(&mut self, more: usize) -> bool {
        if self.budget.reserve(more) {
            self.bytes += more;
            true
        } else {
            self.budget.refusals.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Gives back all but `bytes` (a buffer that shrank); no-op if the lease
    /// holds no more than that.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

// ---------------------------------------------------------------------------
// Limits: the resolved values
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// STICKYD_MEMORY_LIMIT's syntax
// ---------------------------------------------------------------------------

/// Parses a byte count as Kubernetes writes memory quantities: a whole or
/// decimal number, with no suffix (bytes), a binary suffix `Ki`, `Mi`, `Gi`,
/// `Ti` (powers of 1024) or a decimal one `k`, `M`, `G`, `T` (powers of 1000;
/// `K` is taken for `k`). Exponents (`128e6`) are not taken, nor `m`, which in
/// a Kubernetes quantity means thousandths. Fractions of a byte are dropped.
pub fn parse_bytes(raw: &str) -> Result<u64, String> {
    let s = raw.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if !number.bytes().any(|c| c.is_ascii_digit()) {
        return Err(format!("{s:?} does not start with a number"));
    }
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "m" => {
            return Err(format!(
                "{number}m would be thousandths of a byte (a Kubernetes quantity's m); write {number}Mi or {number}M"
            ))
        }
        other => return Err(format!("{other:?} is not a unit; use Ki, Mi, Gi, Ti, k, M, G or T")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.contains('.') || fraction.len() > 18 {
        return Err(format!("{number:?} is not a number"));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| format!("{whole:?} is too large"))?
    };
    let fraction_bytes = if fraction.is_empty() {
        0
    } else {
        let digits: u128 = fraction.parse().map_err(|_| format!("{number:?} is not a number"))?;
        digits * unit as u128 / 10u128.pow(fraction.len() as u32)
    };
    whole
        .checked_mul(unit as u128)
        .and_then(|w| w.checked_add(fraction_bytes))
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

// ---------------------------------------------------------------------------
// Host: reading the cgroups
// ---------------------------------------------------------------------------

/// The cgroup hierarchy a limit was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A memory limit found in the cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimit {
    pub bytes: u64,
    pub version: CgroupVersion,
    /// The file that holds it: the smallest limit of the process's cgroup and
    /// its ancestors.
    pub file: PathBuf,
}

/// What the kernel limits this process to, from its cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// The memory limit the kernel enforces on this process, if any.
    pub memory: Option<CgroupLimit>,
    /// The CPUs its CPU quota allows, rounded up, if a quota is set.
    pub cpus: Option<usize>,
    /// Files that exist but could not be read or understood (the limit is
    /// then read from the others).
    pub problems: Vec<String>,
}

/// cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit
/// value (`9223372036854771712` with 4 KiB pages; older kernels the largest
/// unsigned one); any value from here up is no limit.
const V1_UNLIMITED: u64 = i64::MAX as u64 - (1 << 24);

impl Host {
    /// Reads this process's cgroups.
    pub fn detect() -> Host {
        Host::read(Path::new("/"))
    }

    /// Reads the cgroups of the process whose `/proc/self` and cgroup mounts
    /// are under `root` (`/` for this process; a fake tree in tests).
    pub fn read(root: &Path) -> Host {
        let mut problems = Vec::new();
        let tree = Tree::read(root, &mut problems);
        let memory = tree.memory(&mut problems);
        let cpus = tree.cpus(&mut problems);
        Host { memory, cpus, problems }
    }
}

/// A cgroup filesystem mount, from /proc/self/mountinfo.
#[derive(Debug)]
struct Mount {
    /// The hierarchy's path that is mounted (`/` unless a container runtime
    /// mounted only its own part).
    root: String,
    /// Where it is mounted, under the tree's root.
    point: PathBuf,
    v2: bool,
    /// The v1 controllers of the mount (its super options).
    options: Vec<String>,
}

/// The cgroup directories of this process, its own first, up to each
/// mount's top.
#[derive(Debug, Default)]
struct Tree {
    v2: Option<Vec<PathBuf>>,
    memory_v1: Option<Vec<PathBuf>>,
    cpu_v1: Option<Vec<PathBuf>>,
}

/// Reads a file; `None` without a note when it does not exist, `None` with a
/// note when it exists and cannot be read.
fn read_file(path: &Path, problems: &mut Vec<String>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => {
            problems.push(format!("{}: {e}", path.display()));
            None
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str, root: &Path) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next();
            let options = right.next().unwrap_or("");
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let point = unescape(left.get(4)?);
            Some(Mount {
                root: unescape(left.get(3)?),
                point: root.join(point.trim_start_matches('/')),
                v2,
                options: options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// The components of `path` below `root`, or `None` when it is not below it
/// (a cgroup outside this cgroup namespace, shown with `..`).
fn below<'a>(root: &str, path: &'a str) -> Option<Vec<&'a str>> {
    let root: Vec<&str> = root.split('/').filter(|c| !c.is_empty()).collect();
    let path: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if path.contains(&"..") || !path.starts_with(&root) {
        return None;
    }
    Some(path[root.len()..].to_vec())
}

/// The directories of the cgroup at `path` and of its ancestors up to the
/// top of the first of `mounts` that holds it, its own first.
fn levels<'m>(mounts: impl Iterator<Item = &'m Mount>, path: &str, problems: &mut Vec<String>) -> Option<Vec<PathBuf>> {
    let mut first = None;
    for m in mounts {
        first.get_or_insert(m);
        if let Some(rest) = below(&m.root, path) {
            let mut dirs: Vec<PathBuf> = (0..=rest.len())
                .map(|n| rest[..n].iter().fold(m.point.clone(), |d, c| d.join(c)))
                .collect();
            dirs.reverse();
            return Some(dirs);
        }
    }
    if let Some(m) = first {
        problems.push(format!(
            "the cgroup {path:?} is not under the cgroup mount at {} (root {:?})",
            m.point.display(),
            m.root
        ));
    }
    None
}

impl Tree {
    fn read(root: &Path, problems: &mut Vec<String>) -> Tree {
        let proc_self = root.join("proc/self");
        let (Some(cgroup), Some(mountinfo)) = (
            read_file(&proc_self.join("cgroup"), problems),
            read_file(&proc_self.join("mountinfo"), problems),
        ) else {
            return Tree::default();
        };
        let mounts = parse_mountinfo(&mountinfo, root);
        let mut tree = Tree::default();
        for line in cgroup.lines() {
            let mut it = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                tree.v2 = levels(mounts.iter().filter(|m| m.v2), path, problems);
                continue;
            }
            for (name, slot) in [("memory", &mut tree.memory_v1), ("cpu", &mut tree.cpu_v1)] {
                if controllers.split(',').any(|c| c == name) {
                    let with = mounts.iter().filter(|m| !m.v2 && m.options.iter().any(|o| o == name));
                    *slot = levels(with, path, problems);
                }
            }
        }
        tree
    }

    /// The smallest memory limit: v2 when the memory controller is there (a
    /// `memory.max` in the cgroup or an ancestor), else v1.
    fn memory(&self, problems: &mut Vec<String>) -> Option<CgroupLimit> {
        if let Some(dirs) = &self.v2 {
            let mut present = false;
            let mut best: Option<CgroupLimit> = None;
            for dir in dirs {
                let file = dir.join("memory.max");
                if file.exists() {
                    present = true;
                }
                let Some(text) = read_file(&file, problems) else {
                    continue;
                };
                match parse_v2_memory(&text) {
                    Some(Some(bytes)) => keep_smallest(&mut best, bytes, CgroupVersion::V2, file),
                    Some(None) => {}
                    None => problems.push(format!(
                        "{}: {:?} is not a byte count or max",
                        file.display(),
                        text.trim()
                    )),
                }
            }
            if present {
                return best;
            }
        }
        let dirs = self.memory_v1.as_ref()?;
        let mut best: Option<CgroupLimit> = None;
        for (i, dir) in dirs.iter().enumerate() {
            let file = dir.join("memory.limit_in_bytes");
            if let Some(text) = read_file(&file, problems) {
                match parse_v1_memory(&text) {
                    Some(Some(bytes)) => keep_smallest(&mut best, bytes, CgroupVersion::V1, file),
                    Some(None) => {}
                    None => problems.push(format!("{}: {:?} is not a byte count", file.display(), text.trim())),
                }
            }
            if i == 0 {
                // The kernel's own reckoning of the ancestors' limits, those
                // above the mount included.
                let stat = dir.join("memory.stat");
                if let Some(bytes) = read_file(&stat, problems).as_deref().and_then(hierarchical_limit) {
                    keep_smallest(&mut best, bytes, CgroupVersion::V1, stat);
                }
            }
            // A parent's limit covers this cgroup only in hierarchical mode.
            let parent_flat = dirs
                .get(i + 1)
                .is_some_and(|p| read_file(&p.join("memory.use_hierarchy"), problems).is_some_and(|s| s.trim() == "0"));
            if parent_flat {
                break;
            }
        }
        best
    }

    /// The smallest CPU quota of the cgroup and its ancestors, in CPUs
    /// rounded up: v2 `cpu.max` when present, else v1's CFS quota and period.
    fn cpus(&self, problems: &mut Vec<String>) -> Option<usize> {
        let mut best: Option<(i64, i64)> = None;
        let mut keep = |q: Option<(i64, i64)>| {
            if let Some((quota, period)) = q {
                if best.is_none_or(|(bq, bp)| (quota as i128) * (bp as i128) < (bq as i128) * (period as i128)) {
                    best = Some((quota, period));
                }
            }
        };
        let mut v2_present = false;
        for dir in self.v2.iter().flatten() {
            let file = dir.join("cpu.max");
            v2_present |= file.exists();
            if let Some(text) = read_file(&file, problems) {
                match parse_v2_cpu(&text) {
                    Some(q) => keep(q),
                    None => problems.push(format!(
                        "{}: {:?} is not a quota and period",
                        file.display(),
                        text.trim()
                    )),
                }
            }
        }
        if !v2_present {
            for dir in self.cpu_v1.iter().flatten() {
                let quota = read_file(&dir.join("cpu.cfs_quota_us"), problems);
                let period = read_file(&dir.join("cpu.cfs_period_us"), problems);
                let (Some(quota), Some(period)) = (quota, period) else {
                    continue;
                };
                match (quota.trim().parse::<i64>(), period.trim().parse::<i64>()) {
                    (Ok(q), Ok(p)) => keep(quota_of(q, p)),
                    _ => problems.push(format!(
                        "{}: {:?} / {:?} is not a quota and period",
                        dir.display(),
                        quota.trim(),
                        period.trim()
                    )),
                }
            }
        }
        best.map(|(q, p)| cpus_of(q, p))
    }
}

fn keep_smallest(best: &mut Option<CgroupLimit>, bytes: u64, version: CgroupVersion, file: PathBuf) {
    if best.as_ref().is_none_or(|b| bytes < b.bytes) {
        *best = Some(CgroupLimit { bytes, version, file });
    }
}

/// cgroup v2 `memory.max`: `max`, or bytes. `Some(None)`: no limit; `None`:
/// not understood.
fn parse_v2_memory(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        n => n.parse().ok().map(Some),
    }
}

/// cgroup v1 `memory.limit_in_bytes`: bytes, near `i64::MAX` (or `-1`) for no
/// limit.
fn parse_v1_memory(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "-1" => Some(None),
        n => n.parse::<u64>().ok().map(|b| (b < V1_UNLIMITED).then_some(b)),
    }
}

/// `hierarchical_memory_limit` of a v1 `memory.stat`, when it is a limit.
fn hierarchical_limit(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("hierarchical_memory_limit "))
        .and_then(|v| parse_v1_memory(v).flatten())
}

/// cgroup v2 `cpu.max`: `max 100000` or `200000 100000`. `Some(None)`: no
/// quota; `None`: not understood.
fn parse_v2_cpu(text: &str) -> Option<Option<(i64, i64)>> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: i64 = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    if quota == "max" {
        return Some(None);
    }
    Some(quota_of(quota.parse().ok()?, period))
}

/// A quota and period, if they set a limit (v1 writes -1 for none).
fn quota_of(quota: i64, period: i64) -> Option<(i64, i64)> {
    (quota > 0 && period > 0).then_some((quota, period))
}

/// CPUs a quota allows, rounded up, at least 1.
fn cpus_of(quota: i64, period: i64) -> usize {
    let cpus = quota / period + i64::from(quota % period != 0);
    usize::try_from(cpus).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- fake cgroup trees ---------------------------------------------

    /// A directory standing in for `/`: `proc/self/{cgroup,mountinfo}` and
    /// cgroup files, removed on drop.
    struct Fake(PathBuf);

    impl Fake {
        fn new(name: &str) -> Fake {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "stickyd-limits-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Fake(dir)
        }

        fn file(&self, path: &str, text: &str) -> &Fake {
            let p = self.0.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
            self
        }

        fn path(&self, path: &str) -> PathBuf {
            self.0.join(path.trim_start_matches('/'))
        }

        fn host(&self) -> Host {
            Host::read(&self.0)
        }

        /// A cgroup v2 system (the unified hierarchy at /sys/fs/cgroup)
        /// with the process in `cgroup`.
        fn v2(name: &str, mount_root: &str, cgroup: &str) -> Fake {
            let f = Fake::new(name);
            f.file("proc/self/cgroup", &format!("0::{cgroup}\n")).file(
                "proc/self/mountinfo",
                &format!(
                    "22 1 0:21 / / rw - overlay overlay rw\n\
                     30 22 0:26 {mount_root} /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate\n"
                ),
            );
            f
        }

        /// A cgroup v1 system: memory and cpu,cpuacct hierarchies, and a v2
        /// hierarchy without controllers at /sys/fs/cgroup/unified (hybrid).
        fn v1(name: &str, mount_root: &str, cgroup: &str) -> Fake {
            let f = Fake::new(name);
            f.file(
                "proc/self/cgroup",
                &format!("12:pids:{cgroup}\n5:cpu,cpuacct:{cgroup}\n4:memory:{cgroup}\n1:name=systemd:{cgroup}\n0::{cgroup}\n"),
            )
            .file(
                "proc/self/mountinfo",
                &format!(
                    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                     32 31 0:29 {mount_root} /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
                     34 31 0:31 {mount_root} /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n\
                     35 31 0:32 {mount_root} /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                     41 31 0:38 {mount_root} /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
                ),
            );
            f
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn limit(bytes: u64, version: CgroupVersion, file: PathBuf) -> Option<CgroupLimit> {
        Some(CgroupLimit { bytes, version, file })
    }

    const POD: &str = "/kubepods.slice/kubepods-burstable.slice/pod1.slice/cri-containerd-c1.scope";
    const V1_NO_LIMIT: &str = "9223372036854771712\n";

    #[test]
    fn v2_limit_of_the_own_cgroup_in_a_cgroup_namespace() {
        let f = Fake::v2("v2ns", "/", "/");
        f.file("sys/fs/cgroup/memory.max", "134217728\n")
            .file("sys/fs/cgroup/cpu.max", "150000 100000\n");
        let h = f.host();
        assert_eq!(
            h.memory,
            limit(128 << 20, CgroupVersion::V2, f.path("sys/fs/cgroup/memory.max"))
        );
        assert_eq!(h.cpus, Some(2));
        assert!(h.problems.is_empty(), "{:?}", h.problems);
    }

    #[test]
    fn v2_takes_the_smallest_limit_of_the_cgroup_and_its_ancestors() {
        let f = Fake::v2("v2nested", "/", POD);
        let pod = "sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/pod1.slice";
        // The root cgroup has no memory.max; the pod's is smaller than the
        // container's own (a pod limit, or a container without one).
        f.file(&format!("{pod}/memory.max"), "100663296\n")
            .file(&format!("{pod}/cri-containerd-c1.scope/memory.max"), "max\n")
            .file("sys/fs/cgroup/kubepods.slice/memory.max", "8589934592\n")
            .file(&format!("{pod}/cpu.max"), "max 100000\n")
            .file(&format!("{pod}/cri-containerd-c1.scope/cpu.max"), "250000 100000\n")
            .file("sys/fs/cgroup/kubepods.slice/cpu.max", "50000 100000\n");
        let h = f.host();
        assert_eq!(
            h.memory,
            limit(96 << 20, CgroupVersion::V2, f.path(&format!("{pod}/memory.max")))
        );
        assert_eq!(h.cpus, Some(1), "the ancestor's half CPU is the smallest, rounded up");
        // A smaller limit on the container itself wins in turn.
        f.file(&format!("{pod}/cri-containerd-c1.scope/memory.max"), "67108864\n");
        assert_eq!(f.host().memory.unwrap().bytes, 64 << 20);
    }

    #[test]
    fn v2_mounted_from_a_subtree_is_read_below_the_mount_root() {
        // A runtime that bind-mounts only the container's part of the tree.
        let f = Fake::v2("v2sub", "/kubepods.slice", "/kubepods.slice/pod1/c1");
        f.file("sys/fs/cgroup/pod1/c1/memory.max", "268435456\n")
            .file("sys/fs/cgroup/memory.max", "1073741824\n");
        assert_eq!(
            f.host().memory,
            limit(256 << 20, CgroupVersion::V2, f.path("sys/fs/cgroup/pod1/c1/memory.max"))
        );
    }

    #[test]
    fn v2_without_a_limit() {
        let f = Fake::v2("v2max", "/", "/app");
        f.file("sys/fs/cgroup/app/memory.max", "max\n")
            .file("sys/fs/cgroup/app/cpu.max", "max 100000\n");
        let h = f.host();
        assert_eq!(h.memory, None);
        assert_eq!(h.cpus, None);
        assert!(h.problems.is_empty(), "{:?}", h.problems);
    }

    #[test]
    fn v1_memory_controller() {
        let f = Fake::v1("v1", "/", "/docker/abc");
        f.file("sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "134217728\n")
            .file("sys/fs/cgroup/memory/docker/memory.limit_in_bytes", V1_NO_LIMIT)
            .file("sys/fs/cgroup/memory/memory.limit_in_bytes", V1_NO_LIMIT)
            .file("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "200000\n")
            .file("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        let h = f.host();
        assert_eq!(
            h.memory,
            limit(
                128 << 20,
                CgroupVersion::V1,
                f.path("sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes")
            )
        );
        assert_eq!(h.cpus, Some(2));
        assert!(h.problems.is_empty(), "{:?}", h.problems);
    }

    #[test]
    fn v1_no_limit_is_near_i64_max_for_any_page_size() {
        let f = Fake::v1("v1max", "/", "/");
        for unlimited in [
            V1_NO_LIMIT,
            "9223372036854710272\n",  // 64 KiB pages
            "18446744073709551615\n", // older kernels
            "-1\n",
        ] {
            f.file("sys/fs/cgroup/memory/memory.limit_in_bytes", unlimited);
            let h = f.host();
            assert_eq!(h.memory, None, "{unlimited:?}");
            assert!(h.problems.is_empty(), "{:?}", h.problems);
        }
        assert_eq!(f.host().cpus, None);
    }

    #[test]
    fn v1_ancestors_count_in_hierarchical_mode_only() {
        let f = Fake::v1("v1tree", "/", "/kubepods/pod1/c1");
        let m = "sys/fs/cgroup/memory/kubepods";
        f.file(&format!("{m}/pod1/c1/memory.limit_in_bytes"), V1_NO_LIMIT)
            .file(&format!("{m}/pod1/memory.limit_in_bytes"), "209715200\n")
            .file(&format!("{m}/memory.limit_in_bytes"), "104857600\n")
            .file(&format!("{m}/pod1/memory.use_hierarchy"), "1\n")
            .file(&format!("{m}/memory.use_hierarchy"), "1\n");
        assert_eq!(f.host().memory.unwrap().bytes, 100 << 20);
        // kubepods not hierarchical: its limit does not reach c1.
        f.file(&format!("{m}/memory.use_hierarchy"), "0\n");
        assert_eq!(f.host().memory.unwrap().bytes, 200 << 20);
        // pod1 not hierarchical either: c1 has no limit.
        f.file(&format!("{m}/pod1/memory.use_hierarchy"), "0\n");
        assert_eq!(f.host().memory, None);
    }

    #[test]
    fn v1_hierarchical_limit_from_memory_stat_covers_ancestors_above_the_mount() {
        // Docker without a cgroup namespace: only the container's cgroup is
        // mounted; memory.stat tells the limit of the ancestors above it.
        let f = Fake::v1("v1stat", "/docker/abc", "/docker/abc");
        f.file("sys/fs/cgroup/memory/memory.limit_in_bytes", V1_NO_LIMIT).file(
            "sys/fs/cgroup/memory/memory.stat",
            "cache 0\nrss 4096\nhierarchical_memory_limit 536870912\nhierarchical_memsw_limit 9223372036854771712\n",
        );
        assert_eq!(
            f.host().memory,
            limit(512 << 20, CgroupVersion::V1, f.path("sys/fs/cgroup/memory/memory.stat"))
        );
    }

    #[test]
    fn hybrid_reads_v1_memory_when_the_unified_hierarchy_has_no_memory_controller() {
        let f = Fake::v1("hybrid", "/", "/user.slice");
        // The unified hierarchy exists, without memory.max or cpu.max.
        f.file("sys/fs/cgroup/unified/user.slice/cgroup.procs", "1\n")
            .file("sys/fs/cgroup/memory/user.slice/memory.limit_in_bytes", "1073741824\n")
            .file("sys/fs/cgroup/cpu,cpuacct/user.slice/cpu.cfs_quota_us", "50000\n")
            .file("sys/fs/cgroup/cpu,cpuacct/user.slice/cpu.cfs_period_us", "100000\n");
        let h = f.host();
        assert_eq!(
            h.memory.as_ref().map(|m| (m.bytes, m.version)),
            Some((1 << 30, CgroupVersion::V1))
        );
        assert_eq!(h.cpus, Some(1));
    }

    #[test]
    fn v2_memory_controller_present_without_a_limit_does_not_fall_back_to_v1() {
        let f = Fake::v1("v2wins", "/", "/app");
        f.file("sys/fs/cgroup/unified/app/memory.max", "max\n")
            .file("sys/fs/cgroup/memory/app/memory.limit_in_bytes", "1073741824\n");
        assert_eq!(f.host().memory, None);
    }

    #[test]
    fn no_cgroups_at_all() {
        let f = Fake::new("none");
        assert_eq!(f.host(), Host::default());
        // /proc present, no cgroup mount.
        f.file("proc/self/cgroup", "0::/\n")
            .file("proc/self/mountinfo", "22 1 0:21 / / rw - ext4 /dev/root rw\n");
        assert_eq!(f.host(), Host::default());
    }

    #[test]
    fn garbage_is_a_problem_and_the_other_levels_still_count() {
        let f = Fake::v2("garbage", "/", "/a/b");
        f.file("sys/fs/cgroup/a/b/memory.max", "lots\n")
            .file("sys/fs/cgroup/a/memory.max", "314572800\n")
            .file("sys/fs/cgroup/a/b/cpu.max", "200000\n")
            .file("sys/fs/cgroup/a/cpu.max", "x 100000\n");
        let h = f.host();
        assert_eq!(h.memory.unwrap().bytes, 300 << 20);
        assert_eq!(h.cpus, None);
        assert_eq!(h.problems.len(), 3, "{:?}", h.problems);
        assert!(h.problems[0].contains("a/b/memory.max") && h.problems[0].contains("lots"));

        let f = Fake::v1("garbage1", "/", "/");
        f.file("sys/fs/cgroup/memory/memory.limit_in_bytes", "12O\n")
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "1e5\n")
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        let h = f.host();
        assert_eq!((h.memory, h.cpus), (None, None));
        assert_eq!(h.problems.len(), 2, "{:?}", h.problems);

        // Garbage in /proc/self itself: nothing found, no panic.
        let f = Fake::new("garbage-proc");
        f.file("proc/self/cgroup", "\u{0}::\nno colons\n0::\n")
            .file("proc/self/mountinfo", "- - -\n1 2 3\n -  cgroup2\n");
        assert_eq!(f.host().memory, None);
    }

    #[test]
    fn unreadable_files_are_problems() {
        // A directory where a file should be cannot be read whoever runs
        // the test (root reads any file regardless of its mode).
        let f = Fake::v2("unreadable", "/", "/a");
        f.file("sys/fs/cgroup/a/memory.max/x", "")
            .file("sys/fs/cgroup/memory.max", "209715200\n");
        let h = f.host();
        assert_eq!(h.memory.unwrap().bytes, 200 << 20);
        assert_eq!(h.problems.len(), 1, "{:?}", h.problems);
        assert!(h.problems[0].contains("a/memory.max"), "{:?}", h.problems);

        let f = Fake::new("unreadable-proc");
        f.file("proc/self/cgroup/x", "").file("proc/self/mountinfo", "");
        let h = f.host();
        assert_eq!(h.memory, None);
        assert_eq!(h.problems.len(), 1, "{:?}", h.problems);
    }

    #[test]
    fn a_cgroup_outside_the_mount_is_a_problem_not_a_wrong_limit() {
        let f = Fake::v2("outside", "/kubepods", "/../other");
        f.file("sys/fs/cgroup/memory.max", "1048576\n");
        let h = f.host();
        assert_eq!(h.memory, None);
        assert_eq!(h.problems.len(), 1, "{:?}", h.problems);
    }

    #[test]
    fn mount_points_with_escaped_spaces() {
        let f = Fake::new("escaped");
        f.file("proc/self/cgroup", "0::/a\n").file(
            "proc/self/mountinfo",
            "30 22 0:26 / /cg\\040root rw - cgroup2 cgroup2 rw\n",
        );
        f.file("cg root/a/memory.max", "4194304\n");
        assert_eq!(f.host().memory.unwrap().bytes, 4 << 20);
        assert_eq!(unescape("a\\040b\\134c\\0"), "a b\\c\\0");
    }

    #[test]
    fn cpu_quota_forms() {
        assert_eq!(parse_v2_cpu("max 100000\n"), Some(None));
        assert_eq!(parse_v2_cpu("200000 100000\n"), Some(Some((200000, 100000))));
        assert_eq!(parse_v2_cpu("200000"), None);
        assert_eq!(parse_v2_cpu("1 2 3"), None);
        assert_eq!(quota_of(-1, 100000), None);
        assert_eq!(quota_of(100000, 0), None);
        assert_eq!(cpus_of(50000, 100000), 1);
        assert_eq!(cpus_of(150000, 100000), 2);
        assert_eq!(cpus_of(200000, 100000), 2);
    }

    #[test]
    fn this_machine_reads_without_panic() {
        let h = Host::detect();
        if let Some(m) = &h.memory {
            assert!(m.bytes > 0 && m.bytes < V1_UNLIMITED);
        }
        assert!(h.cpus.is_none_or(|c| c >= 1));
    }

    // --- STICKYD_MEMORY_LIMIT's syntax -----------------------------------

    #[test]
    fn byte_quantities() {
        for (raw, bytes) in [
            ("134217728", 134217728),
            ("128Mi", 128 << 20),
            (" 1Gi ", 1 << 30),
            ("512Ki", 512 << 10),
            ("2Ti", 2 << 40),
            ("1.5Gi", 3 << 29),
            ("0.5Mi", 512 << 10),
            (".5Mi", 512 << 10),
            ("128M", 128_000_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("64k", 64_000),
            ("64K", 64_000),
            ("1.5k", 1500),
            ("100.9", 100),
        ] {
            assert_eq!(parse_bytes(raw), Ok(bytes), "{raw}");
        }
        for bad in [
            "", "Mi", "1.2.3Mi", "1 Mi", "128MB", "128mi", "128e6", "-1", "1Pi", "0x10", ".",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse_bytes("128m").unwrap_err().contains("128Mi"));
        assert!(parse_bytes("16384Pi").is_err());
        assert!(parse_bytes("18446744073709551616").is_err());
        assert_eq!(parse_bytes("18446744073709551615"), Ok(u64::MAX));
    }

    // --- Budget ----------------------------------------------------------

    const TEST_COSTS: Costs = Costs {
        base: 10 << 20,
        per_connection: 20 << 10,
        per_buffer: 64 << 10,
    };

    #[test]
    fn no_limit_keeps_the_old_default() {
        let b = Budget::for_limit(None, None);
        assert_eq!(b.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(b.max_connections, 4096);
        assert_eq!(b.buffer_bytes, None);
        assert!(b.fits());
        assert_eq!(Budget::for_limit(None, Some(7)).max_connections, 7);
    }

    #[test]
    fn budget_for_a_limit_with_known_costs() {
        // 100 MiB: usable 80 MiB, 70 MiB after the base; 52.5 MiB for
        // connections at 20 KiB = 2688, the rest (17.5 MiB) for buffers.
        let b = Budget::for_limit_with(Some(100 << 20), None, TEST_COSTS);
        assert_eq!(b.usable(), Some(80 << 20));
        assert_eq!(b.max_connections, 2688);
        assert_eq!(b.buffer_bytes, Some(70 * (1 << 20) - 2688 * (20 << 10)));
        assert_eq!(b.buffers(), Some(280));
        assert!(b.fits());
        assert_eq!(b.needed(), 80 << 20);
    }

    #[test]
    fn the_manifests_128mi_with_stickyds_costs() {
        let b = Budget::for_limit(Some(128 << 20), None);
        let free = percent(128 << 20, USABLE_PERCENT) - BASE_RSS;
        assert_eq!(
            b.max_connections as u64,
            percent(free, CONNECTION_SHARE_PERCENT) / CONNECTION_COST
        );
        assert!(b.fits());
        assert!(b.buffer_bytes.unwrap() >= free - percent(free, CONNECTION_SHARE_PERCENT));
    }

    /// The table of "Memory limit and shedding" in docs/operations.md, row
    /// for row: the documented rows are these, and each is what the budget
    /// computes.
    #[test]
    fn the_documented_sizing_table() {
        let rows = [(64, 2508, 98), (128, 5785, 226), (256, 12339, 482), (512, 25446, 994)];
        let doc = include_str!("../../../docs/operations.md");
        let table: Vec<(u64, usize, u64)> = doc
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                let mib = cells.first()?.strip_suffix("Mi")?.parse().ok()?;
                let mib_text = cells.get(2)?.strip_suffix(" MiB")?;
                let tenths = mib_text.replace('.', "").parse().ok()?;
                Some((mib, cells.get(1)?.parse().ok()?, tenths))
            })
            .collect();
        assert_eq!(table, rows, "docs/operations.md's sizing table");
        for (mib, connections, buffer_tenths_mib) in rows {
            let b = Budget::for_limit(Some(mib << 20), None);
            assert_eq!(b.max_connections, connections, "{mib}Mi");
            let tenths = (b.buffer_bytes.unwrap() * 10 + (1 << 19)) >> 20;
            assert_eq!(tenths, buffer_tenths_mib, "{mib}Mi");
            assert!(b.fits(), "{mib}Mi");
        }
    }

    #[test]
    fn explicit_connections_fit_up_to_the_default_and_no_further() {
        let limit = Some(256 << 20);
        let d = Budget::for_limit_with(limit, None, TEST_COSTS);
        let fewer = Budget::for_limit_with(limit, Some(100), TEST_COSTS);
        assert!(fewer.fits() && fewer.connections_set);
        assert!(
            fewer.buffer_bytes > d.buffer_bytes,
            "fewer connections leave more for buffers"
        );
        assert_eq!(fewer.needed(), fewer.usable().unwrap());
        let same = Budget::for_limit_with(limit, Some(d.max_connections), TEST_COSTS);
        assert!(same.fits());
        let more = Budget::for_limit_with(limit, Some(d.max_connections + 1), TEST_COSTS);
        assert!(!more.fits());
        assert!(
            more.buffer_bytes <= d.buffer_bytes,
            "more connections leave no more for buffers"
        );
    }

    #[test]
    fn a_tiny_limit_keeps_one_connection_and_one_buffer_and_does_not_fit() {
        for limit in [0, 1, 8 << 20, 10 << 20] {
            let b = Budget::for_limit_with(Some(limit), None, TEST_COSTS);
            assert_eq!(b.max_connections, 1, "{limit}");
            assert_eq!(b.buffer_bytes, Some(TEST_COSTS.per_buffer), "{limit}");
            assert!(!b.fits(), "{limit}");
        }
    }

    #[test]
    fn a_huge_limit_is_capped() {
        let b = Budget::for_limit(Some(u64::MAX), None);
        assert_eq!(b.max_connections, MAX_CONNECTIONS_CAP);
        assert!(b.fits());
        assert!(Budget::for_limit(Some(u64::MAX), Some(MAX_CONNECTIONS_CAP)).fits());
    }

    #[test]
    fn limit_needed_is_the_smallest_limit_that_fits() {
        for n in [1, 2, 100, 4096, 6000, 123_457] {
            for costs in [TEST_COSTS, COSTS] {
                let l = Budget::limit_needed(n, costs);
                assert!(Budget::for_limit_with(Some(l), None, costs).max_connections >= n, "{n}");
                assert!(Budget::for_limit_with(Some(l), Some(n), costs).fits(), "{n}");
                let below = Budget::for_limit_with(Some(l - 1), None, costs);
                assert!(below.max_connections < n || n == 1 && !below.fits(), "{n}");
                assert!(!Budget::for_limit_with(Some(l - 1), Some(n), costs).fits(), "{n}");
            }
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn costs() -> impl Strategy<Value = Costs> {
            (0u64..64 << 20, 1u64..1 << 20, 1u64..1 << 20).prop_map(|(base, per_connection, per_buffer)| Costs {
                base,
                per_connection,
                per_buffer,
            })
        }

        proptest! {
            #[test]
            fn derived_budgets_fit_and_grow_with_the_limit(
                a in 0u64..1 << 44,
                b in 0u64..1 << 44,
                costs in costs(),
            ) {
                let (lo, hi) = (a.min(b), a.max(b));
                let small = Budget::for_limit_with(Some(lo), None, costs);
                let big = Budget::for_limit_with(Some(hi), None, costs);
                prop_assert!(small.max_connections <= big.max_connections);
                prop_assert!((1..=MAX_CONNECTIONS_CAP).contains(&small.max_connections));
                prop_assert!(small.buffer_bytes.unwrap() >= costs.per_buffer);
                // The default fits exactly when one connection does.
                prop_assert_eq!(small.fits(), lo >= Budget::limit_needed(1, costs), "{:?}", small);
            }

            #[test]
            fn explicit_connections_fit_exactly_when_within_the_default(
                limit in 0u64..1 << 40,
                n in 1usize..MAX_CONNECTIONS_CAP,
                costs in costs(),
            ) {
                let d = Budget::for_limit_with(Some(limit), None, costs);
                let e = Budget::for_limit_with(Some(limit), Some(n), costs);
                prop_assert_eq!(e.max_connections, n);
                if d.fits() {
                    prop_assert_eq!(e.fits(), n <= d.max_connections, "{:?} {:?}", d, e);
                }
                if e.fits() {
                    prop_assert!(e.buffer_bytes >= d.buffer_bytes);
                    prop_assert!(e.needed() <= e.usable().unwrap());
                }
            }
        }
    }

    // --- Limits ------------------------------------------------------------

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

    #[test]
    fn leases_take_and_give_back() {
        let b = Arc::new(BufferBudget::new(100));
        let l1 = b.try_take(60).unwrap();
        assert_eq!((b.used(), b.capacity()), (60, 100));
        assert!(b.try_take(41).is_none());
        assert_eq!(b.refusals(), 1);
        let mut l2 = b.try_take(40).unwrap();
        assert_eq!(b.used(), 100);
        assert!(b.try_take(1).is_none());
        assert!(b.try_take(0).is_some(), "nothing always fits");
        drop(l1);
        assert_eq!(b.used(), 40);
        assert!(l2.try_grow(60));
        assert_eq!((l2.bytes(), b.used()), (100, 100));
        assert!(!l2.try_grow(1));
        assert_eq!((l2.bytes(), b.used(), b.refusals()), (100, 100, 3));
        l2.shrink_to(30);
        assert_eq!((l2.bytes(), b.used()), (30, 30));
        l2.shrink_to(50);
        assert_eq!((l2.bytes(), b.used()), (30, 30));
        drop(l2);
        assert_eq!(b.used(), 0);
        assert!(b.try_take(usize::MAX).is_none(), "no overflow");
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn unbounded_counts_without_refusing() {
        let b = Arc::new(BufferBudget::unbounded());
        let l = b.try_take(1 << 40).unwrap();
        assert_eq!(b.used(), 1 << 40);
        assert!(b.try_take(usize::MAX).is_none(), "the sum still cannot overflow");
        drop(l);
        assert_eq!(b.used(), 0);
        assert!(b.is_unbounded());
    }

    #[test]
    fn concurrent_leases_never_pass_the_capacity() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 20_000;
        let b = Arc::new(BufferBudget::new(1000));
        let granted = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let b = b.clone();
                let granted = granted.clone();
                std::thread::spawn(move || {
                    let mut held: Vec<Lease> = Vec::new();
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    for _ in 0..ROUNDS {
                        if rng.bool() || held.len() > 4 {
                            if !held.is_empty() {
                                held.swap_remove(rng.usize(..held.len()));
                            }
                        } else if let Some(mut l) = b.try_take(rng.usize(1..300)) {
                            granted.fetch_add(1, Ordering::Relaxed);
                            if rng.bool() {
                                l.try_grow(rng.usize(1..200));
                            }
                            held.push(l);
                        }
                        let used = b.used();
                        assert!(used <= b.capacity(), "used {used}");
                    }
                    held.iter().map(Lease::bytes).sum::<usize>()
                })
            })
            .collect();
        let still_held: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // Every thread dropped its leases on return.
        assert_eq!(b.used(), 0, "{still_held} bytes were held at the end");
        assert!(granted.load(Ordering::Relaxed) > 0);
        assert!(b.refusals() > 0, "the capacity was reached");
    }

    proptest::proptest! {
        #[test]
        fn any_sequence_keeps_used_equal_to_the_live_leases(
            capacity in 0usize..10_000,
            ops in proptest::collection::vec((0u8..4, 0usize..4_000), 0..200),
        ) {
            let b = Arc::new(BufferBudget::new(capacity));
            let mut held: Vec<Lease> = Vec::new();
            let mut refusals = 0;
            for (op, n) in ops {
                match op {
                    0 => match b.try_take(n) {
                        Some(l) => held.push(l),
                        None => refusals += 1,
                    },
                    1 if !held.is_empty() => {
                        held.swap_remove(n % held.len());
                    }
                    2 if !held.is_empty() => {
                        let i = n % held.len();
                        if !held[i].try_grow(n) {
                            refusals += 1;
                        }
                    }
                    3 if !held.is_empty() => {
                        let i = n % held.len();
                        held[i].shrink_to(n / 2);
                    }
                    _ => {}
                }
                let live: usize = held.iter().map(Lease::bytes).sum();
                proptest::prop_assert_eq!(b.used(), live);
                proptest::prop_assert!(b.used() <= capacity);
                proptest::prop_assert_eq!(b.refusals(), refusals);
            }
            drop(held);
            proptest::prop_assert_eq!(b.used(), 0);
        }
    }
}
