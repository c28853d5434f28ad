//! No code: this crate's dependencies unify features across the workspace's
//! builds (see its `Cargo.toml`).
