//! The sessions pinned to this pod: which were seen when, to count the
//! distinct ones active within STICKYD_SESSION_ACTIVE_WINDOW
//! (`stickyd_sessions_active`) and those served since the drain began.
//!
//! Sessions are told apart by the random SID inside the cookie value. The
//! table is bounded: at [`MAX_TRACKED`] sessions a new one is counted only
//! once an old one expired (the gauge saturates; pins are never affected).
//! A full shard is searched for expired sessions at most once per tick of
//! its clock, and only once its oldest session can have expired: clients
//! without a cookie, each one a new session, cost no pass over the table.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::affinity::Sid;

/// Sessions tracked at most (about 16 bytes each).
pub const MAX_TRACKED: usize = 1 << 18;
const SHARDS: usize = 16;

/// SIDs are random: their bits are the hash.
#[derive(Default)]
struct SidHasher(u64);

impl Hasher for SidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One lock's part of the table.
#[derive(Default)]
struct Shard {
    /// When each session was last seen (ticks).
    seen: HashMap<u64, u32, BuildHasherDefault<SidHasher>>,
    /// No session of `seen` can expire before this tick: every one was
    /// seen at or after the last pass's oldest kept, or at that pass's own
    /// tick, whichever is earlier. A full shard is not searched before it.
    none_expire_before: u32,
}

fn to_ticks(d: Duration) -> u32 {
    (d.as_millis() / 100).min(u32::MAX as u128) as u32
}

/// When each session pinned here was last seen, in tenths of a second since
/// the tracker started (a u32 lasts 13 years).
pub struct SessionTracker {
    shards: Vec<Mutex<Shard>>,
    window: Duration,
    epoch: Instant,
    /// The sessions in the table: [`SessionTracker::count`], without a pass
    /// over it.
    tracked: AtomicUsize,
    /// Passes over a shard, for the tests that bound them.
    #[cfg(test)]
    passes: AtomicUsize,
}

impl SessionTracker {
    pub fn new(window: Duration) -> SessionTracker {
        SessionTracker {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            window,
            epoch: Instant::now(),
            tracked: AtomicUsize::new(0),
            #[cfg(test)]
            passes: AtomicUsize::new(0),
        }
    }

    fn ticks(&self, t: Instant) -> u32 {
        to_ticks(t.saturating_duration_since(self.epoch))
    }

    /// A request of session `sid` was served here now.
    pub fn note(&self, sid: Sid, now: Instant) {
        let key = sid.as_u64();
        let t = self.ticks(now);
        let Ok(mut shard) = self.shards[key as usize % SHARDS].lock() else {
            return;
        };
        if let Some(seen) = shard.seen.get_mut(&key) {
            *seen = t;
            return;
        }
        if shard.seen.len() >= MAX_TRACKED / SHARDS {
            if t < shard.none_expire_before {
                return;
            }
            self.forget_older(&mut shard, t);
            if shard.seen.len() >= MAX_TRACKED / SHARDS {
                return;
            }
        }
        shard.seen.insert(key, t);
        self.tracked.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the sessions of `shard` not seen within the window before `t`.
    fn forget_older(&self, shard: &mut Shard, t: u32) {
        let window = to_ticks(self.window);
        let oldest_kept = t.saturating_sub(window);
        let before = shard.seen.len();
        // Sessions seen later than this pass are seen at `t` or after.
        let mut oldest = t;
        shard.seen.retain(|_, seen| {
            let keep = *seen >= oldest_kept;
            if keep {
                oldest = oldest.min(*seen);
            }
            keep
        });
        // A session seen at tick s is kept while s >= now - window.
        shard.none_expire_before = oldest.saturating_add(window).saturating_add(1);
        self.tracked.fetch_sub(before - shard.seen.len(), Ordering::Relaxed);
        #[cfg(test)]
        self.passes.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the sessions not seen within the window, and counts the rest.
    pub fn active(&self, now: Instant) -> usize {
        let t = self.ticks(now);
        let mut n = 0;
        for shard in &self.shards {
            if let Ok(mut s) = shard.lock() {
                self.forget_older(&mut s, t);
                n += s.seen.len();
            }
        }
        n
    }

    /// The active sessions as of the last [`SessionTracker::active`]: one
    /// atomic load, which also counts the sessions that expired since
    /// then. What placement compares (`STICKYD_NEW_SESSIONS`), many times a
    /// second; the placement refresher calls `active` every second.
    pub fn count(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Distinct sessions seen at or after `since` (within the window).
    pub fn seen_since(&self, since: Instant) -> usize {
        let from = self.ticks(since);
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .map(|s| s.seen.values().filter(|seen| **seen >= from).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(n: u8) -> Sid {
        Sid::from_bytes([n, n.wrapping_mul(7), 3, 4, 5, n])
    }

    #[tokio::test(start_paused = true)]
    async fn counts_distinct_sessions_within_the_window() {
        let t = SessionTracker::new(Duration::from_secs(300));
        let start = Instant::now();
        for _ in 0..3 {
            t.note(sid(1), Instant::now());
        }
        t.note(sid(2), Instant::now());
        assert_eq!(t.active(Instant::now()), 2);
        assert_eq!(t.count(), 2);
        tokio::time::advance(Duration::from_secs(200)).await;
        t.note(sid(3), Instant::now());
        let mid = Instant::now();
        assert_eq!(t.active(Instant::now()), 3);
        assert_eq!(t.seen_since(start), 3);
        assert_eq!(t.seen_since(mid), 1);
        // 301 s after the first two were seen: only the third is active.
        // The cheap count still has them until a pass forgets them.
        tokio::time::advance(Duration::from_secs(101)).await;
        assert_eq!(t.count(), 3);
        assert_eq!(t.active(Instant::now()), 1);
        assert_eq!(t.count(), 1);
        // Seen again: active again.
        t.note(sid(1), Instant::now());
        assert_eq!(t.count(), 2);
        assert_eq!(t.active(Instant::now()), 2);
        assert_eq!(t.seen_since(mid), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_and_makes_room_from_expired_sessions() {
        let t = SessionTracker::new(Duration::from_secs(10));
        let key = |i: u64| Sid::from_bytes(i.to_le_bytes()[..6].try_into().unwrap());
        for i in 0..(MAX_TRACKED as u64 + 1000) {
            t.note(key(i), Instant::now());
        }
        let full = t.active(Instant::now());
        assert!(full <= MAX_TRACKED, "{full}");
        assert!(full > MAX_TRACKED / 2, "{full}");
        assert_eq!(t.count(), full);
        tokio::time::advance(Duration::from_secs(11)).await;
        t.note(key(u64::MAX >> 20), Instant::now());
        assert_eq!(t.active(Instant::now()), 1);
        assert_eq!(t.count(), 1);
    }

    /// The clock runs for years: a session still expires after a month of
    /// uptime (ticks of 100 ms in a u32).
    #[tokio::test(start_paused = true)]
    async fn sessions_expire_after_long_uptime() {
        let t = SessionTracker::new(Duration::from_secs(300));
        tokio::time::advance(Duration::from_secs(30 * 24 * 3600)).await;
        t.note(sid(1), Instant::now());
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(t.active(Instant::now()), 1);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(t.active(Instant::now()), 0);
    }

    /// Clients without a cookie are a new session each: at the bound, each
    /// would otherwise pay a pass over its shard.
    #[tokio::test(start_paused = true)]
    async fn a_full_table_is_searched_only_once_its_oldest_session_can_have_expired() {
        let tick = Duration::from_millis(100);
        // A window of 100 ticks.
        let t = SessionTracker::new(Duration::from_secs(10));
        // Consecutive keys fall into the shards in turn: this fills each one
        // exactly, half at tick 0 and half at tick 50.
        let key = |i: u64| Sid::from_bytes(i.to_le_bytes()[..6].try_into().unwrap());
        let all = MAX_TRACKED as u64;
        for i in 0..all / 2 {
            t.note(key(i), Instant::now());
        }
        tokio::time::advance(tick * 50).await;
        for i in all / 2..all {
            t.note(key(i), Instant::now());
        }
        let passes = || t.passes.load(Ordering::Relaxed);
        assert_eq!((t.count(), passes()), (MAX_TRACKED, 0));
        // A thousand new sessions while all are live: one pass per shard.
        for i in all..all + 1000 {
            t.note(key(i), Instant::now());
        }
        assert_eq!((t.count(), passes()), (MAX_TRACKED, SHARDS));
        // Tick 100: those seen at tick 0 are still within the window.
        tokio::time::advance(tick * 50).await;
        t.note(key(all + 1000), Instant::now());
        assert_eq!((t.count(), passes()), (MAX_TRACKED, SHARDS));
        // Tick 101: they have expired; one pass of the shard makes room.
        tokio::time::advance(tick).await;
        t.note(key(all + 1001), Instant::now());
        assert_eq!(passes(), SHARDS + 1);
        assert_eq!(t.count(), MAX_TRACKED - MAX_TRACKED / SHARDS / 2 + 1);
        // The shard now holds the tick-50 half and the newcomer, and is not
        // full: new sessions get in with no pass.
        t.note(key(all + 1001 + SHARDS as u64), Instant::now());
        assert_eq!(passes(), SHARDS + 1);
        assert_eq!(t.count(), MAX_TRACKED - MAX_TRACKED / SHARDS / 2 + 2);
    }
}
