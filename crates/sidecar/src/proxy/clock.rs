//! The wall time the session token's times are read in: the system clock,
//! or one that follows tokio's clock from a given Unix time, so that a test
//! on tokio's paused clock moves the token's time with every other timer.

use crate::affinity;

/// Where the data path reads Unix seconds for the token's times.
#[derive(Clone, Copy, Debug, Default)]
pub enum Clock {
    /// The system's wall clock, as every pod of a Service reads it.
    #[default]
    System,
    /// `unix` at tokio's instant `at`, and from there as tokio's clock goes:
    /// paused, it moves only when tokio's time is advanced.
    Tokio { unix: u64, at: tokio::time::Instant },
}

impl Clock {
    /// A clock reading `unix` now and following tokio's clock from here.
    pub fn following_tokio(unix: u64) -> Clock {
        Clock::Tokio {
            unix,
            at: tokio::time::Instant::now(),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn unix_now(&self) -> u64 {
        match self {
            Clock::System => affinity::unix_now(),
            Clock::Tokio { unix, at } => unix + at.elapsed().as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_tokio_time_only() {
        let c = Clock::following_tokio(1_000);
        assert_eq!(c.unix_now(), 1_000);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(c.unix_now(), 1_000);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(c.unix_now(), 1_001);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(c.unix_now(), 4_601);
    }

    #[test]
    fn the_system_clock_reads_the_wall_time() {
        let before = affinity::unix_now();
        let now = Clock::System.unix_now();
        assert!(now >= before && now <= affinity::unix_now());
        assert!(now > 1_700_000_000, "{now}");
    }
}
