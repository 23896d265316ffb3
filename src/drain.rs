//! The session-aware drain: `GET /drain?idle=DURATION&max=DURATION` on the
//! admin port, meant as the app container's `preStop` hook.
//!
//! From the first call on, this pod takes no new sessions (they go to ready
//! peers), keeps serving the sessions pinned to it and stays ready, so that
//! its endpoint stays `serving` and peers keep forwarding those sessions. The
//! call answers once no request of a session pinned here has arrived for
//! `idle` (and none is in flight), or once `max` has passed. Kubernetes then
//! stops the app, and the sidecar after it.

use std::time::Duration;

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
                _ => return Err(format!("unknown drain parameter {key:?}: use idle=DURATION and max=DURATION")),
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
