//! The native fakes of a [`Ctx`] in one place, for a plugin's unit tests
//! (the `testing` feature).

use crate::Ctx;
use crate::clock::ManualClock;
use crate::config::MapConfig;
use crate::kv::MemKv;
use crate::outgoing::Scripted;

/// A store, settings, a clock and an HTTP client for tests: the reference
/// store answering as little as the contract allows, no settings, the
/// clock at 2023-11-14 (1,700,000,000), no HTTP answers scripted.
#[derive(Debug)]
pub struct Fakes {
    /// The store.
    pub kv: MemKv,
    /// The settings.
    pub config: MapConfig,
    /// The clock; move it with [`ManualClock::advance`].
    pub clock: ManualClock,
    /// The HTTP client; script it with [`Scripted::new`].
    pub http: Scripted,
}

impl Default for Fakes {
    fn default() -> Self {
        Self {
            kv: MemKv::default(),
            config: MapConfig::default(),
            clock: ManualClock::at(1_700_000_000),
            http: Scripted::default(),
        }
    }
}

impl Fakes {
    /// [`Fakes::default`] with these settings.
    pub fn with_config<const N: usize>(settings: [(&str, &str); N]) -> Self {
        Self { config: MapConfig::from(settings), ..Self::default() }
    }

    /// The context a handler gets, over these fakes.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx { kv: &self.kv, config: &self.config, clock: &self.clock, http: &self.http }
    }
}
