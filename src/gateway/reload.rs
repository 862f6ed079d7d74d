//! Reloading configuration files (TLS certificates, JWT keys) when their bytes change.
//!
//! Kubernetes swaps a Secret volume's files through a symlink, so content, not mtime, is
//! what counts. A reload that fails (a half-written rotation, a bad file) keeps what is in
//! force and is retried on the next tick.

use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Polls `paths` every `interval` until `stop`; calls `reload` when their bytes differ from
/// the last successful load. `what` names the files in log lines.
pub(crate) fn spawn_watch<F, E>(
    what: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    stop: CancellationToken,
    reload: F,
) where
    F: Fn() -> Result<(), E> + Send + 'static,
    E: std::fmt::Display,
{
    let contents =
        move || -> Vec<Option<Vec<u8>>> { paths.iter().map(|p| std::fs::read(p).ok()).collect() };
    tokio::spawn(async move {
        let mut seen = contents();
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = contents();
            if now == seen {
                continue;
            }
            match reload() {
                Ok(()) => {
                    tracing::info!("{what} reloaded");
                    seen = now;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what} not reloaded; keeping the current ones")
                }
            }
        }
    });
}
