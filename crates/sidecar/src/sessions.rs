//! The sessions pinned to this pod: which were seen when, to count the
//! distinct ones active within STICKYD_SESSION_ACTIVE_WINDOW
//! (`stickyd_sessions_active`) and those served since the drain began.
//!
//! Sessions are told apart by the random SID inside the cookie value. The
//! table is bounded: at [`MAX_TRACKED`] sessions a new one is counted only
//! once an old one expired (the gauge saturates; pins are never affected).

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

type Shard = HashMap<u64, u32, BuildHasherDefault<SidHasher>>;

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
}

impl SessionTracker {
    pub fn new(window: Duration) -> SessionTracker {
        SessionTracker {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            window,
            epoch: Instant::now(),
            tracked: AtomicUsize::new(0),
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
        if let Some(seen) = shard.get_mut(&key) {
            *seen = t;
            return;
        }
        if shard.len() >= MAX_TRACKED / SHARDS {
            self.forget_older(&mut shard, t);
            if shard.len() >= MAX_TRACKED / SHARDS {
                return;
            }
        }
        shard.insert(key, t);
        self.tracked.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the sessions of `shard` not seen within the window before `t`.
    fn forget_older(&self, shard: &mut Shard, t: u32) {
        let oldest_kept = t.saturating_sub(to_ticks(self.window));
        let before = shard.len();
        shard.retain(|_, seen| *seen >= oldest_kept);
        self.tracked.fetch_sub(before - shard.len(), Ordering::Relaxed);
    }

    /// Forgets the sessions not seen within the window, and counts the rest.
    pub fn active(&self, now: Instant) -> usize {
        let t = self.ticks(now);
        let mut n = 0;
        for shard in &self.shards {
            if let Ok(mut s) = shard.lock() {
                self.forget_older(&mut s, t);
                n += s.len();
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
            .map(|s| s.values().filter(|seen| **seen >= from).count())
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
}
