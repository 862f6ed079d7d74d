//! What every HTTP handler and listener of the gateway shares.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::gateway::admission::Admission;
use crate::gateway::connection::ConnectionContext;
use crate::telemetry::SharedRegistry;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub ctx: ConnectionContext,
    /// Origin, draining and connection slots: asked by every transport.
    pub admission: Arc<Admission>,
    pub tracker: TaskTracker,
    pub registry: SharedRegistry,
}
