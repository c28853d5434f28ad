//! The runtime: the wasmtime engine, per-request instances and plugin
//! versions (`sandbox`), the generated bindings of the guest worlds
//! (`bindings`), and the host side of each interface a guest imports:
//! evogate's `kv` (`evogate_kv`), `wasi:keyvalue` (`wasi_keyvalue`), both
//! on the store of `crate::kv`; outgoing HTTP (`outgoing`), in which calls to
//! other plugins (`calls`); and plugin logs (`plugin_log`). Each guest world
//! has its file: `evogate` (0.2.x), `evogate_0_1`, `wasi_http`.

pub(crate) mod bindings;
pub mod calls;
#[cfg(feature = "fault-injection")]
pub mod clock;
mod evogate;
mod evogate_0_1;
pub(crate) mod evogate_kv;
pub(crate) mod laps;
pub(crate) mod outgoing;
pub(crate) mod plugin_log;
pub mod sandbox;
mod wasi_http;
pub(crate) mod wasi_keyvalue;
