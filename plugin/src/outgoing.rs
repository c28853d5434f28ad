//! Outgoing HTTP as protocol code sees it: the SDK's client trait (the
//! sync's way to the Evotor cloud).

pub use evogate_plugin::outgoing::*;
