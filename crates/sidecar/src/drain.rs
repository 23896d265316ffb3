//! The session-aware drain: `GET /drain?idle=DURATION&max=DURATION` on the
//! admin port, meant as the app container's `preStop` hook.
//!
//! From the first call on, this pod takes no new sessions (they go to ready
//! peers), keeps serving the sessions pinned to it and stays ready, so that
//! its endpoint stays `serving` and peers keep forwarding those sessions. The
//! call answers once no request of a session pinned here has arrived for
//! `idle` (and none is in flight or streaming): `idle`; as soon as every
//! session pinned here has ended (the app said so, [`crate::route::told`])
//! or gone idle, one of them having ended during the drain: `ended`; or once
//! `max` has passed: `max`. Kubernetes then stops the app, and the sidecar
//! after it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::sessions::SessionTracker;

/// `idle` when the query does not say.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(10);
/// `max` when the query does not say.
pub const DEFAULT_MAX: Duration = Duration::from_secs(300);
/// The admin path of the drain.
pub const PATH: &str = "/drain";

/// The parameters of a drain call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainParams {
    /// Answer once no request of a pinned session arrived for this long.
    pub idle: Duration,
    /// Answer at the latest after this long.
    pub max: Duration,
}

impl Default for DrainParams {
    fn default() -> Self {
        DrainParams {
            idle: DEFAULT_IDLE,
            max: DEFAULT_MAX,
        }
    }
}

impl DrainParams {
    /// Parses the query string of a drain call (`idle=10s&max=5m`, either
    /// or both may be left out). Durations as everywhere in stickyd: `5`,
    /// `0.5`, `500ms`, `10s`, `5m`, `2h`.
    pub fn parse_query(query: Option<&str>) -> Result<DrainParams, String> {
        let mut p = DrainParams::default();
        for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "idle" => &mut p.idle,
                "max" => &mut p.max,
                _ => {
                    return Err(format!(
                        "unknown drain parameter {key:?}: use idle=DURATION and max=DURATION"
                    ))
                }
            };
            *slot = crate::config::parse_duration(value).ok_or_else(|| {
                format!("{key}={value:?} is not a duration (e.g. 10s, 500ms, 5m, or seconds like 2.5)")
            })?;
        }
        if p.max.is_zero() {
            return Err("max=0: the drain needs a bound above zero".into());
        }
        Ok(p)
    }

    /// These parameters within `bound` (STICKYD_DRAIN_MAX): a longer `idle`
    /// or `max` is cut to it.
    pub fn bounded(self, bound: Duration) -> DrainParams {
        DrainParams {
            idle: self.idle.min(bound),
            max: self.max.min(bound),
        }
    }

    /// Parses a whole drain path with its query (`/drain?idle=10s`), as it
    /// stands in a `preStop: httpGet: path:`. None: not the drain path.
    pub fn parse_path(path: &str) -> Option<Result<DrainParams, String>> {
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        (p == PATH).then(|| DrainParams::parse_query(q))
    }
}

/// What ended a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// No request of a session pinned here arrived for `idle`.
    Idle,
    /// `max` passed first.
    Max,
    /// Every session pinned here ended or went idle, one of them ended by
    /// the app during the drain.
    Ended,
}

/// The answer of a drain call.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Outcome {
    pub reason: Reason,
    /// From the first drain call to its end.
    pub waited_seconds: f64,
    /// Distinct sessions pinned here that were served during the drain.
    pub sessions_served: usize,
    /// Sessions pinned here that the app ended during the drain.
    pub sessions_ended: u64,
    /// The drain's `idle`, as the first call set it (within STICKYD_DRAIN_MAX).
    pub idle_seconds: f64,
    /// The drain's `max`, as the first call set it (within STICKYD_DRAIN_MAX).
    pub max_seconds: f64,
}

/// The drain's state: asked for or not, and when the last request of a
/// session pinned here arrived or finished.
pub struct Drain {
    requested: AtomicBool,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last pinned request's arrival or end.
    last: AtomicU64,
    in_flight: AtomicUsize,
    started: OnceLock<(Instant, DrainParams)>,
    outcome: watch::Sender<Option<Outcome>>,
    /// Rung when a session ends or the last pinned request finishes: the
    /// drain looks again at once.
    wake: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            requested: AtomicBool::new(false),
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: OnceLock::new(),
            outcome: watch::channel(None).0,
            wake: Notify::new(),
        }
    }
}

/// A request of a session pinned here, in flight while a drain runs.
pub struct Pinned<'a>(&'a Drain);

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake.notify_one();
        }
    }
}

impl Drain {
    /// Has a drain been asked for? From then on this pod takes no new sessions.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// A session pinned here ended: a running drain looks again now.
    pub fn wake(&self) {
        if self.requested() {
            self.wake.notify_one();
        }
    }

    /// How long the drain has run (its whole length once it answered) and
    /// its `max`; None before a drain call.
    pub fn progress(&self) -> Option<(Duration, Duration)> {
        let (started, params) = self.started.get()?;
        let elapsed = match *self.outcome.borrow() {
            Some(o) => Duration::from_secs_f64(o.waited_seconds),
            None => started.elapsed(),
        };
        Some((elapsed, params.max))
    }

    fn touch(&self) {
        let ms = Instant::now().saturating_duration_since(self.epoch).as_millis() as u64;
        self.last.fetch_max(ms, Ordering::AcqRel);
    }

    /// A request of a session pinned here arrives; it counts as in flight
    /// until the guard drops. Nothing to do (None) while no drain runs.
    pub fn pinned_request(&self) -> Option<Pinned<'_>> {
        if !self.requested() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Some(Pinned(self))
    }

    /// Starts the drain on the first call (later calls join it, whatever
    /// their parameters) and waits for its end.
    pub async fn run(self: &Arc<Self>, params: DrainParams, sessions: Arc<SessionTracker>) -> Outcome {
        let mut rx = self.outcome.subscribe();
        let mut first = false;
        let (started, params) = *self.started.get_or_init(|| {
            first = true;
            (Instant::now(), params)
        });
        if first {
            self.requested.store(true, Ordering::Relaxed);
            self.touch();
            tracing::info!(idle = ?params.idle, max = ?params.max, "drain: taking no new sessions, serving the pinned ones until they go idle");
            let me = self.clone();
            let ended_before = sessions.ended();
            tokio::spawn(async move {
                let reason = me.wait(started, params, &sessions, ended_before).await;
                let outcome = Outcome {
                    reason,
                    waited_seconds: started.elapsed().as_secs_f64(),
                    sessions_served: sessions.seen_since(started),
                    sessions_ended: sessions.ended() - ended_before,
                    idle_seconds: params.idle.as_secs_f64(),
                    max_seconds: params.max.as_secs_f64(),
                };
                tracing::info!(
                    ?reason,
                    waited_seconds = outcome.waited_seconds,
                    sessions_served = outcome.sessions_served,
                    "drain finished"
                );
                me.outcome.send_replace(Some(outcome));
            });
        }
        loop {
            if let Some(o) = *rx.borrow_and_update() {
                return o;
            }
            if rx.changed().await.is_err() {
                // The sender lives in self, which we hold: not reached.
                return Outcome {
                    reason: Reason::Max,
                    waited_seconds: started.elapsed().as_secs_f64(),
                    sessions_served: 0,
                    sessions_ended: 0,
                    idle_seconds: params.idle.as_secs_f64(),
                    max_seconds: params.max.as_secs_f64(),
                };
            }
        }
    }

    /// Waits until no pinned request arrived, ran or streamed for `idle`
    /// (`Idle`), until every session pinned here ended or went idle and one
    /// ended since the drain began (`Ended`: `ended_before` is the count of
    /// ended sessions then), or `max`.
    async fn wait(&self, started: Instant, p: DrainParams, sessions: &SessionTracker, ended_before: u64) -> Reason {
        let max_at = started + p.max;
        // While requests are in flight or sessions seen lately, look again
        // this often.
        let poll = p.idle.clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let now = Instant::now();
            if now >= max_at {
                return Reason::Max;
            }
            let last = self.epoch + Duration::from_millis(self.last.load(Ordering::Acquire));
            let idle_at = last.max(started) + p.idle;
            let busy = self.in_flight.load(Ordering::Acquire) > 0 || sessions.open() > 0;
            // No session pinned here was seen within `idle` (a response that
            // streamed until lately counts as seen at its end): none seen
            // after the tick of `now - idle` (the table counts in ticks).
            let since = now.checked_sub(p.idle).unwrap_or(self.epoch) + crate::sessions::TICK;
            let quiet = !busy && sessions.seen_since(since) == 0;
            if quiet && sessions.ended() > ended_before {
                return Reason::Ended;
            }
            if quiet && now >= idle_at {
                return Reason::Idle;
            }
            let next = if quiet { idle_at } else { now + poll };
            tokio::select! {
                () = tokio::time::sleep_until(next.min(max_at)) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(DrainParams::parse_query(None), Ok(DrainParams::default()));
        assert_eq!(DrainParams::parse_query(Some("")), Ok(DrainParams::default()));
        let p = DrainParams::parse_query(Some("idle=2s&max=1m")).unwrap();
        assert_eq!(p.idle, Duration::from_secs(2));
        assert_eq!(p.max, Duration::from_secs(60));
        let p = DrainParams::parse_query(Some("max=90")).unwrap();
        assert_eq!((p.idle, p.max), (DEFAULT_IDLE, Duration::from_secs(90)));
        let p = DrainParams::parse_query(Some("idle=0")).unwrap();
        assert_eq!(p.idle, Duration::ZERO);
    }

    #[test]
    fn bad_queries_are_errors_naming_the_parameter() {
        for (q, word) in [
            ("idle=soon", "idle"),
            ("max=-1", "max"),
            ("max=0", "max=0"),
            ("wait=3s", "wait"),
            ("idle", "idle"),
        ] {
            let e = DrainParams::parse_query(Some(q)).unwrap_err();
            assert!(e.contains(word), "{q}: {e}");
        }
    }

    #[test]
    fn a_drain_asks_for_at_most_the_bound() {
        let p = DrainParams::parse_query(Some("idle=1e10&max=1e10")).unwrap();
        let b = p.bounded(Duration::from_secs(120));
        assert_eq!((b.idle, b.max), (Duration::from_secs(120), Duration::from_secs(120)));
        let p = DrainParams::parse_query(Some("idle=10s&max=60s")).unwrap();
        assert_eq!(p.bounded(Duration::from_secs(60)), p);
        assert_eq!(p.bounded(Duration::from_secs(300)), p);
        let b = p.bounded(Duration::from_secs(5));
        assert_eq!((b.idle, b.max), (Duration::from_secs(5), Duration::from_secs(5)));
    }

    #[test]
    fn paths() {
        assert_eq!(DrainParams::parse_path("/drain"), Some(Ok(DrainParams::default())));
        assert_eq!(
            DrainParams::parse_path("/drain?idle=1s").map(|r| r.map(|p| p.idle)),
            Some(Ok(Duration::from_secs(1)))
        );
        assert_eq!(DrainParams::parse_path("/drainage"), None);
        assert_eq!(DrainParams::parse_path("/readyz"), None);
        assert!(matches!(DrainParams::parse_path("/drain?max=x"), Some(Err(_))));
    }
}

#[cfg(test)]
mod drain_tests {
    use super::*;
    use crate::affinity::Sid;

    fn params(idle: u64, max: u64) -> DrainParams {
        DrainParams {
            idle: Duration::from_secs(idle),
            max: Duration::from_secs(max),
        }
    }

    fn tracker() -> Arc<SessionTracker> {
        Arc::new(SessionTracker::new(Duration::from_secs(300)))
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_pinned_ends_after_idle() {
        let d = Arc::new(Drain::default());
        assert!(!d.requested());
        assert!(d.pinned_request().is_none(), "no drain: nothing tracked");
        let o = d.run(params(10, 300), tracker()).await;
        assert!(d.requested());
        assert_eq!(o.reason, Reason::Idle);
        assert_eq!(o.waited_seconds.round() as u64, 10);
        assert_eq!(o.sessions_served, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_counts_from_the_first_call_and_stops_at_the_answer() {
        let d = Arc::new(Drain::default());
        assert_eq!(d.progress(), None, "no drain yet");
        let sessions = tracker();
        let run = tokio::spawn({
            let (d, s) = (d.clone(), sessions.clone());
            async move { d.run(params(10, 300), s).await }
        });
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(4)).await;
        sessions.note(Sid::from_bytes([1; 6]), Instant::now());
        drop(d.pinned_request());
        assert_eq!(
            d.progress(),
            Some((Duration::from_secs(4), Duration::from_secs(300))),
            "4 s into a drain of max 300 s"
        );
        let o = run.await.unwrap();
        assert_eq!(o.waited_seconds.round() as u64, 14);
        tokio::time::advance(Duration::from_secs(60)).await;
        let (elapsed, max) = d.progress().unwrap();
        assert_eq!(elapsed.as_secs_f64().round() as u64, 14, "frozen at its answer");
        assert_eq!(max, Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn each_pinned_request_moves_the_end_and_in_flight_ones_hold_it() {
        let d = Arc::new(Drain::default());
        let sessions = tracker();
        let run = tokio::spawn({
            let (d, s) = (d.clone(), sessions.clone());
            async move { d.run(params(10, 300), s).await }
        });
        tokio::task::yield_now().await;
        assert!(d.requested());
        // A request at 8 s, one more at 15 s that runs for 20 s.
        tokio::time::advance(Duration::from_secs(8)).await;
        sessions.note(Sid::from_bytes([1; 6]), Instant::now());
        drop(d.pinned_request());
        tokio::time::advance(Duration::from_secs(7)).await;
        sessions.note(Sid::from_bytes([2; 6]), Instant::now());
        let long = d.pinned_request().unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!run.is_finished(), "a request in flight holds the drain");
        drop(long);
        // It ended at 35 s: the drain ends at 45 s.
        tokio::time::advance(Duration::from_secs(9)).await;
        tokio::task::yield_now().await;
        assert!(!run.is_finished());
        let o = run.await.unwrap();
        assert_eq!(o.reason, Reason::Idle);
        assert_eq!(o.waited_seconds.round() as u64, 45);
        assert_eq!(o.sessions_served, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ended_as_soon_as_every_session_has_ended_or_gone_idle() {
        let d = Arc::new(Drain::default());
        let sessions = tracker();
        let (a, b, c) = (
            Sid::from_bytes([1; 6]),
            Sid::from_bytes([2; 6]),
            Sid::from_bytes([3; 6]),
        );
        // c was last seen long before the drain: idle. a and b are active.
        sessions.note(c, Instant::now());
        tokio::time::advance(Duration::from_secs(100)).await;
        sessions.note(a, Instant::now());
        sessions.note(b, Instant::now());
        let run = tokio::spawn({
            let (d, s) = (d.clone(), sessions.clone());
            async move { d.run(params(60, 300), s).await }
        });
        tokio::task::yield_now().await;
        // a streams (an event stream held open), b ends at 5 s.
        let stream = sessions.hold(a, Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(sessions.end(b));
        d.wake();
        tokio::task::yield_now().await;
        assert!(!run.is_finished(), "a is still streaming");
        // a's stream closes at 70 s, past `idle` since it was first seen:
        // still active at its end, so the drain waits on.
        tokio::time::advance(Duration::from_secs(65)).await;
        drop(stream);
        tokio::time::advance(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(!run.is_finished(), "a was seen at its stream's end");
        // a ends at 80 s: nothing pinned here is active, the drain ends now.
        tokio::time::advance(Duration::from_secs(8)).await;
        let pinned = d.pinned_request().unwrap();
        assert!(sessions.end(a));
        d.wake();
        tokio::task::yield_now().await;
        assert!(!run.is_finished(), "the DELETE that ended it is still in flight");
        drop(pinned);
        let o = run.await.unwrap();
        assert_eq!(o.reason, Reason::Ended);
        assert_eq!(o.waited_seconds.round() as u64, 80);
        assert_eq!(o.sessions_ended, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_a_session_wakes_the_drain() {
        let d = Arc::new(Drain::default());
        let sessions = tracker();
        // Idle already: the drain sleeps until `idle` has passed since it
        // began, unless something wakes it.
        sessions.note(Sid::from_bytes([1; 6]), Instant::now());
        tokio::time::advance(Duration::from_secs(100)).await;
        let run = tokio::spawn({
            let (d, s) = (d.clone(), sessions.clone());
            async move { d.run(params(60, 300), s).await }
        });
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(sessions.end(Sid::from_bytes([1; 6])));
        d.wake();
        let o = run.await.unwrap();
        assert_eq!((o.reason, o.waited_seconds.round() as u64), (Reason::Ended, 5));
    }

    /// An MCP client's DELETE ends its session while the session's event
    /// stream is still open (the server closes it after): the drain waits
    /// for the stream.
    #[tokio::test(start_paused = true)]
    async fn a_session_ended_with_its_stream_open_holds_the_drain_until_the_stream_closes() {
        let d = Arc::new(Drain::default());
        let sessions = tracker();
        let a = Sid::from_bytes([1; 6]);
        let stream = sessions.hold(a, Instant::now());
        let run = tokio::spawn({
            let (d, s) = (d.clone(), sessions.clone());
            async move { d.run(params(60, 300), s).await }
        });
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(sessions.end(a));
        d.wake();
        tokio::time::advance(Duration::from_secs(3)).await;
        tokio::task::yield_now().await;
        assert!(!run.is_finished(), "its stream is still open");
        drop(stream);
        let o = run.await.unwrap();
        assert_eq!(o.reason, Reason::Ended);
        assert_eq!(o.waited_seconds.round() as u64, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_that_only_go_idle_end_it_on_idle_not_ended() {
        let d = Arc::new(Drain::default());
        let sessions = tracker();
        // Ended before the drain began: not this drain's.
        sessions.note(Sid::from_bytes([9; 6]), Instant::now());
        assert!(sessions.end(Sid::from_bytes([9; 6])));
        sessions.note(Sid::from_bytes([1; 6]), Instant::now());
        let o = d.run(params(10, 300), sessions).await;
        assert_eq!(o.reason, Reason::Idle);
        assert_eq!(o.waited_seconds.round() as u64, 10);
        assert_eq!(o.sessions_ended, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_held_open_holds_the_drain_until_max() {
        let d = Arc::new(Drain::default());
        let sessions = tracker();
        let _stream = sessions.hold(Sid::from_bytes([1; 6]), Instant::now());
        let o = d.run(params(10, 120), sessions).await;
        assert_eq!(o.reason, Reason::Max);
        assert_eq!(o.waited_seconds.round() as u64, 120);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ends_it_and_later_callers_join_the_first() {
        let d = Arc::new(Drain::default());
        let sessions = tracker();
        let first = tokio::spawn({
            let (d, s) = (d.clone(), sessions.clone());
            async move { d.run(params(10, 30), s).await }
        });
        tokio::task::yield_now().await;
        let _busy = d.pinned_request().unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        // A second caller with other parameters waits with the first.
        let second = tokio::spawn({
            let (d, s) = (d.clone(), sessions.clone());
            async move { d.run(params(1, 1), s).await }
        });
        let a = first.await.unwrap();
        let b = second.await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.reason, Reason::Max);
        assert_eq!(a.waited_seconds.round() as u64, 30);
        // Once ended, a call answers at once with the same outcome.
        let c = d.run(params(10, 300), sessions).await;
        assert_eq!(c, a);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_caller_going_away_does_not_stop_the_drain() {
        let d = Arc::new(Drain::default());
        let first = tokio::spawn({
            let d = d.clone();
            async move { d.run(params(10, 300), tracker()).await }
        });
        tokio::task::yield_now().await;
        first.abort();
        let o = d.run(params(10, 300), tracker()).await;
        assert_eq!(o.reason, Reason::Idle);
        assert_eq!(o.waited_seconds.round() as u64, 10);
    }

    #[test]
    fn outcome_json() {
        let o = Outcome {
            reason: Reason::Ended,
            waited_seconds: 12.5,
            sessions_served: 3,
            sessions_ended: 2,
            idle_seconds: 10.0,
            max_seconds: 300.0,
        };
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"reason":"ended","waited_seconds":12.5,"sessions_served":3,"sessions_ended":2,"idle_seconds":10.0,"max_seconds":300.0}"#
        );
    }
}
