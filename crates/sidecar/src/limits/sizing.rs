//! How much stickyd plans for under a memory limit: the cost constants
//! (measured), the default STICKYD_MAX_CONNECTIONS and the buffer budget
//! ([`Budget`]), and STICKYD_MEMORY_LIMIT's syntax ([`parse_bytes`]). Pure.

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
/// What each request on hyper's codec takes from the buffer budget while it
/// runs: the body a stream may hold before it is read, as the HTTP/1.1
/// path's body copies take 16 KiB. At the budget, the request is shed (503,
/// or RESOURCE_EXHAUSTED for gRPC).
pub const HYPER_STREAM_COST: usize = 16 << 10;

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

/// The most streams an HTTP/2 client may have open on one connection, as
/// HAProxy's `tune.h2.max-concurrent-streams`; less when the buffer budget
/// is small ([`Budget::h2`]).
pub const H2_MAX_STREAMS: u32 = 100;

/// The flow-control window of each HTTP/2 stream, and of a whole connection:
/// RFC 9113's initial 65,535 bytes (HAProxy's `tune.h2.initial-window-size`).
/// A connection holds at most this much of its clients' request bodies
/// unread, within [`HYPER_CONNECTION_COST`]; hyper's own default (1 MiB
/// per stream and per connection) would let 1,000 connections hold 1 GiB.
pub const H2_WINDOW: u32 = 65_535;

/// What HTTP/2 clients' connections are allowed, from the buffer budget:
/// the windows ([`H2_WINDOW`]), the response bytes each stream may queue for
/// a slow client ([`HYPER_STREAM_COST`], which each stream leases), and the
/// concurrent streams of one connection: [`H2_MAX_STREAMS`], or as many as
/// take an eighth of the buffer budget, so that a few connections cannot
/// take all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    pub max_concurrent_streams: u32,
    pub stream_window: u32,
    pub connection_window: u32,
    pub send_buffer: usize,
}

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

    /// The HTTP/2 settings this budget allows ([`H2Settings`]).
    pub fn h2(&self) -> H2Settings {
        let streams = match self.buffer_bytes {
            None => H2_MAX_STREAMS,
            Some(b) => (b / 8 / HYPER_STREAM_COST as u64).clamp(1, H2_MAX_STREAMS as u64) as u32,
        };
        H2Settings {
            max_concurrent_streams: streams,
            stream_window: H2_WINDOW,
            connection_window: H2_WINDOW,
            send_buffer: HYPER_STREAM_COST,
        }
    }

    /// How many full buffer reserves the buffer budget holds at once.
    pub fn buffers(&self) -> Option<u64> {
        self.buffer_bytes.map(|b| b / self.costs.per_buffer.max(1))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
        let doc = include_str!("../../../../docs/operations.md");
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

    /// HTTP/2's limits come from the budget: HAProxy's 100 streams and the
    /// RFC's windows when there is room, fewer streams when an eighth of the
    /// buffer budget holds fewer, never none.
    #[test]
    fn h2_settings_from_the_budget() {
        let none = Budget::for_limit(None, None).h2();
        assert_eq!(none.max_concurrent_streams, H2_MAX_STREAMS);
        assert_eq!((none.stream_window, none.connection_window), (65_535, 65_535));
        assert_eq!(none.send_buffer, HYPER_STREAM_COST);
        assert_eq!(
            Budget::for_limit(Some(128 << 20), None).h2().max_concurrent_streams,
            100
        );
        // 32Mi: (32 × 0.8 − 12) Mi × 0.25 = 3.4 MiB of buffers, 27 streams
        // of 16 KiB in an eighth of it.
        let b = Budget::for_limit(Some(32 << 20), None);
        assert_eq!(b.buffer_bytes, Some(3_570_073));
        assert_eq!(b.h2().max_concurrent_streams, 27);
        assert_eq!(Budget::for_limit(Some(1 << 20), None).h2().max_concurrent_streams, 1);
    }
}
