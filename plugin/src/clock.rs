//! Wall-clock time, injectable for tests: the SDK's.

pub use evogate_plugin::clock::*;
