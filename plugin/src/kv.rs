//! The store as protocol code sees it: the SDK's `Kv` trait over the WIT
//! `kv` semantics, its batching reads and the per-request prefetching view.

pub use evogate_plugin::kv::*;
