//! What every request handler is given: the store, the settings, the clock.

use crate::{clock, config, kv};

/// What a request handler may use.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The store.
    pub kv: &'a dyn kv::Kv,
    /// The operator's settings.
    pub config: &'a dyn config::Config,
    /// Wall-clock time.
    pub clock: &'a dyn clock::Clock,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").finish_non_exhaustive()
    }
}
