//! The sessions pinned to this pod: which were seen when, to count the
//! distinct ones active within STICKYD_SESSION_ACTIVE_WINDOW
//! (`stickyd_sessions_active`) and those served since the drain began.
//!
//! A session with a response still streaming (an event stream, a long
//! poll, a WebSocket) is active however long it lasts: each response served
//! here holds its session open ([`Hold`]) until its last byte, and is seen
//! again then. A session the app ended ([`crate::route::told`]) leaves the
//! table at once ([`SessionTracker::end`]).
//!
//! Sessions are told apart by the random SID inside the cookie value. The
//! table is bounded: at [`MAX_TRACKED`] sessions a new one is counted only
//! once an old one expired (the gauge saturates; pins are never affected).
//! A full shard is searched for expired sessions at most once per tick of
//! its clock, and only once its oldest session can have expired: clients
//! without a cookie, each one a new session, cost no pass over the table.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// One session in the table.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// When it was last seen (ticks): a response of it began or ended.
    seen: u32,
    /// Its responses still streaming ([`Hold`]s): while any is, it never
    /// expires.
    open: u32,
}

impl Entry {
    fn active_since(&self, tick: u32) -> bool {
        self.open > 0 || self.seen >= tick
    }
}

/// One lock's part of the table.
#[derive(Default)]
struct Shard {
    /// The sessions, by SID.
    seen: HashMap<u64, Entry, BuildHasherDefault<SidHasher>>,
    /// No session of `seen` can expire before this tick: every one was
    /// seen at or after the last pass's oldest kept, or at that pass's own
    /// tick, whichever is earlier. A full shard is not searched before it.
    none_expire_before: u32,
}

/// The table's unit of time.
pub const TICK: Duration = Duration::from_millis(100);

fn to_ticks(d: Duration) -> u32 {
    (d.as_millis() / TICK.as_millis()).min(u32::MAX as u128) as u32
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
    /// Responses holding their session open ([`Hold`]s alive).
    open: AtomicUsize,
    /// Sessions the app ended ([`SessionTracker::end`]), since start.
    ended: AtomicU64,
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
            open: AtomicUsize::new(0),
            ended: AtomicU64::new(0),
            #[cfg(test)]
            passes: AtomicUsize::new(0),
        }
    }

    fn ticks(&self, t: Instant) -> u32 {
        to_ticks(t.saturating_duration_since(self.epoch))
    }

    fn shard(&self, key: u64) -> Option<std::sync::MutexGuard<'_, Shard>> {
        self.shards[key as usize % SHARDS].lock().ok()
    }

    /// A request of session `sid` was served here now.
    pub fn note(&self, sid: Sid, now: Instant) {
        self.see(sid.as_u64(), now, 0);
    }

    /// A response of session `sid` served here begins now: the session is
    /// seen, and stays active until the hold drops (the response's last
    /// byte, or its connection gone), when it is seen again.
    pub fn hold(self: &Arc<Self>, sid: Sid, now: Instant) -> Hold {
        let key = sid.as_u64();
        self.see(key, now, 1);
        self.open.fetch_add(1, Ordering::Relaxed);
        Hold {
            tracker: self.clone(),
            key,
        }
    }

    /// [`SessionTracker::hold`], for a session already in the table only
    /// (the app does not know it: it is not added).
    pub fn hold_known(self: &Arc<Self>, sid: Sid, now: Instant) -> Option<Hold> {
        let key = sid.as_u64();
        let t = self.ticks(now);
        let mut shard = self.shard(key)?;
        let e = shard.seen.get_mut(&key)?;
        e.seen = t;
        e.open += 1;
        drop(shard);
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Hold {
            tracker: self.clone(),
            key,
        })
    }

    /// Sees session `key` at `now`, with `open` more responses streaming.
    fn see(&self, key: u64, now: Instant, open: u32) {
        let t = self.ticks(now);
        let Some(mut shard) = self.shard(key) else {
            return;
        };
        if let Some(e) = shard.seen.get_mut(&key) {
            e.seen = t;
            e.open += open;
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
        shard.seen.insert(key, Entry { seen: t, open });
        self.tracked.fetch_add(1, Ordering::Relaxed);
    }

    /// The app ended session `sid`: it leaves the table now, whatever still
    /// streams of it. False: it was not in the table.
    pub fn end(&self, sid: Sid) -> bool {
        let key = sid.as_u64();
        let Some(mut shard) = self.shard(key) else {
            return false;
        };
        if shard.seen.remove(&key).is_none() {
            return false;
        }
        self.tracked.fetch_sub(1, Ordering::Relaxed);
        self.ended.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Responses holding their session open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Sessions the app ended since start.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    /// Forgets the sessions of `shard` not seen within the window before `t`.
    fn forget_older(&self, shard: &mut Shard, t: u32) {
        let window = to_ticks(self.window);
        let oldest_kept = t.saturating_sub(window);
        let before = shard.seen.len();
        // Sessions seen later than this pass are seen at `t` or after, and
        // so is a session held open now, when its hold drops.
        let mut oldest = t;
        shard.seen.retain(|_, e| {
            if e.open > 0 {
                return true;
            }
            let keep = e.seen >= oldest_kept;
            if keep {
                oldest = oldest.min(e.seen);
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

    /// Distinct sessions seen at or after `since` (within the window), or
    /// held open now.
    pub fn seen_since(&self, since: Instant) -> usize {
        let from = self.ticks(since);
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .map(|s| s.seen.values().filter(|e| e.active_since(from)).count())
            .sum()
    }
}

/// A response of a session, holding it active while it streams
/// ([`SessionTracker::hold`]).
pub struct Hold {
    tracker: Arc<SessionTracker>,
    key: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let t = self.tracker.ticks(Instant::now());
        if let Some(mut shard) = self.tracker.shard(self.key) {
            if let Some(e) = shard.seen.get_mut(&self.key) {
                e.open = e.open.saturating_sub(1);
                e.seen = e.seen.max(t);
            }
        }
        self.tracker.open.fetch_sub(1, Ordering::Relaxed);
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
    async fn a_session_held_open_stays_active_and_is_seen_at_its_end() {
        let t = Arc::new(SessionTracker::new(Duration::from_secs(300)));
        let held = t.hold(sid(1), Instant::now());
        let other = t.hold(sid(1), Instant::now());
        assert_eq!(t.open(), 2);
        drop(other);
        assert_eq!(t.open(), 1);
        // An hour of streaming: still active, though never seen since.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(t.active(Instant::now()), 1);
        assert_eq!(t.seen_since(Instant::now()), 1);
        drop(held);
        assert_eq!(t.open(), 0);
        // Seen at its end: active for the window after it.
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(t.active(Instant::now()), 1);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(t.active(Instant::now()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_the_app_ended_leaves_at_once() {
        let t = Arc::new(SessionTracker::new(Duration::from_secs(300)));
        t.note(sid(1), Instant::now());
        t.note(sid(2), Instant::now());
        let stream = t.hold(sid(2), Instant::now());
        assert_eq!(t.count(), 2);
        assert!(t.end(sid(1)));
        assert!(t.end(sid(2)), "ended while a response of it still streams");
        assert!(!t.end(sid(1)), "not in the table any more");
        assert_eq!((t.count(), t.ended()), (0, 2));
        assert_eq!(t.active(Instant::now()), 0);
        // Its stream closing does not bring it back.
        drop(stream);
        assert_eq!((t.active(Instant::now()), t.open()), (0, 0));
        // One the app does not know is not added, only seen if counted.
        assert!(t.hold_known(sid(1), Instant::now()).is_none());
        assert_eq!((t.active(Instant::now()), t.open()), (0, 0));
        // A later request of it is a session again.
        t.note(sid(1), Instant::now());
        assert_eq!(t.active(Instant::now()), 1);
        tokio::time::advance(Duration::from_secs(200)).await;
        let known = t.hold_known(sid(1), Instant::now()).unwrap();
        assert_eq!(t.open(), 1);
        // Held open: active however long it streams.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(t.active(Instant::now()), 1);
        drop(known);
        tokio::time::advance(Duration::from_secs(200)).await;
        assert_eq!(t.active(Instant::now()), 1, "seen again at its stream's end");
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
