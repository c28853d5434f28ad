//! What every request handler is given: the store, the settings, the clock, outgoing HTTP.

use crate::{clock, config, kv, outgoing};

/// What a request handler may use.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The store.
    pub kv: &'a dyn kv::Kv,
    /// The operator's settings.
    pub config: &'a dyn config::Config,
    /// Wall-clock time.
    pub clock: &'a dyn clock::Clock,
    /// Outgoing HTTP.
    pub http: &'a dyn outgoing::Http,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").finish_non_exhaustive()
    }
}
