//! The memory limit and the CPU quota of this process's cgroups ([`Host`]),
//! read once at startup ([`Host::detect`]): v2 `memory.max` and `cpu.max`,
//! v1 `memory.limit_in_bytes` (hierarchical, from `memory.stat`) and
//! `cpu.cfs_quota_us`, through `/proc/self/cgroup` and `mountinfo`. This is
//! the only place that reads cgroup files.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

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
    use std::sync::atomic::{AtomicUsize, Ordering};

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
}
