//! What every request handler is given: the SDK's [`Ctx`] — the store, the
//! settings, the clock, outgoing HTTP.

pub use evogate_plugin::Ctx;
