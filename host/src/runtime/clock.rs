//! The wall clock plugins read (`wasi:clocks/wall-clock`). The test build
//! (`fault-injection`) can move it ahead for every plugin of the process
//! ([`advance_plugin_clock`]), so a bench shows in minutes what days of
//! deliveries do to a store (`retention_days`); the gateway's own clocks
//! stay the system's, and a release build has no such switch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// How far ahead of the system's clock plugins' wall clock runs.
static AHEAD_SECS: AtomicU64 = AtomicU64::new(0);

/// Moves every plugin's wall clock `secs` further ahead, from their next
/// call on.
pub fn advance_plugin_clock(secs: u64) {
    AHEAD_SECS.fetch_add(secs, Ordering::Relaxed);
}

/// The time plugins see now, since the Unix epoch.
pub fn plugin_now() -> Duration {
    let system = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    system + Duration::from_secs(AHEAD_SECS.load(Ordering::Relaxed))
}

/// The system's wall clock, [`advance_plugin_clock`]'s seconds ahead.
pub(crate) struct Ahead;

impl wasmtime_wasi::HostWallClock for Ahead {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        plugin_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugins_clock_moves_ahead_by_what_is_asked_and_the_systems_does_not() {
        let system = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970");
        let before = plugin_now();
        advance_plugin_clock(86_400);
        let after = plugin_now();
        assert!(after >= before + Duration::from_secs(86_400), "{before:?} → {after:?}");
        assert!(after >= system + Duration::from_secs(86_400), "{system:?} → {after:?}");
        AHEAD_SECS.fetch_sub(86_400, Ordering::Relaxed);
    }
}
