//! The control plane: which deployment serves each route (`registry`),
//! deploying and rolling back plugin versions and following other nodes
//! (`deploy`), and the plugins' scheduled jobs (`jobs`).

pub(crate) mod deploy;
pub(crate) mod jobs;
pub(crate) mod registry;
