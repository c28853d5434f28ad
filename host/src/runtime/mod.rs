//! The runtime: the wasmtime engine, per-request instances and plugin
//! versions (`sandbox`), the generated bindings of the guest worlds
//! (`bindings`), and the host side of each interface a guest imports:
//! evogate's `kv` (`kv`), `wasi:keyvalue` (`keyvalue`), outgoing HTTP
//! (`outgoing`), in which calls to other plugins (`calls`), and plugin
//! logs (`plugin_log`).

pub(crate) mod bindings;
pub mod calls;
mod evogate;
mod evogate_0_1;
pub(crate) mod keyvalue;
pub(crate) mod kv;
pub(crate) mod outgoing;
pub(crate) mod plugin_log;
pub mod sandbox;
mod wasi_http;
