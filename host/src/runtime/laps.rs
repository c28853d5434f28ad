//! Timing a fresh instance's steps: the benchmarks' breakdown of an
//! instance, and a traced request's spans of its instance.

use std::time::{Duration, Instant};

/// A step of a fresh instance's life, as [`Laps`] times it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Making the store: the WASI context and the per-request host state.
    Store,
    /// Instantiating the component from its pre-instantiated form.
    Instantiate,
    /// The call into the plugin until its answer is back on the host.
    Call,
    /// Resetting the instance's memory and tables for the next request.
    Reset,
}

/// Where fresh instances' time goes, summed over the requests timed: the
/// benchmarks' breakdown of an instance ([`PluginVersion::answer_timed`],
/// [`Spent::reset`]). Off ([`Laps::off`]) it reads no clock.
#[derive(Debug, Clone)]
pub struct Laps {
    on: bool,
    since: Option<Instant>,
    /// Total time per [`Phase`], in the enum's order.
    totals: [Duration; 4],
}

impl Default for Laps {
    fn default() -> Self {
        Self::new()
    }
}

impl Laps {
    /// Laps that time each phase.
    pub fn new() -> Self {
        Self { on: true, ..Self::off() }
    }

    /// Laps that time nothing: the serving path's.
    pub fn off() -> Self {
        Self { on: false, since: None, totals: [Duration::ZERO; 4] }
    }

    pub(crate) fn start(&mut self) {
        if self.on {
            self.since = Some(Instant::now());
        }
    }

    pub(super) fn lap(&mut self, phase: Phase) {
        if let Some(since) = self.since {
            let now = Instant::now();
            self.totals[phase as usize] += now - since;
            self.since = Some(now);
        }
    }

    /// Total time spent in `phase`.
    pub fn total(&self, phase: Phase) -> Duration {
        self.totals[phase as usize]
    }
}
