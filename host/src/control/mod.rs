//! The control plane: which deployment serves each route (`registry`),
//! deploying and rolling back plugin versions and following other nodes
//! (`deploy`), the plugins' scheduled jobs (`jobs`), and reloading the
//! configuration (`reload`).

pub(crate) mod deploy;
pub(crate) mod jobs;
pub(crate) mod registry;
pub(crate) mod reload;
