//! Plain HTTP request and response types: the SDK's.

pub use evogate_plugin::http::*;
