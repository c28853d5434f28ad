//! A started gateway's parts, as the listeners use them.

use crate::control::{deploy, jobs};
use crate::http::server::Gateway;
use crate::kv;
use std::sync::Arc;

/// A started gateway's parts: the request path, the deployer, and the store.
pub(crate) struct App {
    /// Serves plugin requests.
    pub(crate) gateway: Arc<Gateway>,
    /// Deploys and rolls back plugin versions.
    pub(crate) deployer: Arc<deploy::Deployer>,
    /// The key-value store.
    pub(crate) backend: Arc<dyn kv::Backend>,
    /// Runs the plugins' scheduled jobs.
    pub(crate) scheduler: Arc<jobs::Scheduler>,
    /// Puts a re-read configuration in force.
    pub(crate) reloader: crate::control::reload::Reloader,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("store", &self.backend.describe()).finish_non_exhaustive()
    }
}
