//! The HTTP accept loop of the gateway's listeners (WebSocket upgrades, SockJS, health and
//! metrics). axum's `serve` gives hyper no timer, so a connection that never sent a request,
//! or sat idle between keep-alive requests, was held forever: a descriptor and its buffers
//! each, enough for a client that opens connections and says nothing to use up the process's
//! file limit. Here hyper closes a connection whose request head has not arrived within the
//! header timeout, idle keep-alive connections included (hyper starts the timer when it
//! starts reading a head).

use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `router` on `listener` until `shutdown`; then stops accepting, asks every open
/// connection to finish its request in flight and close (upgraded WebSockets are the
/// sessions' own drain's), and returns when they have.
pub(crate) async fn serve<L>(
    mut listener: L,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    L: Listener,
    L::Addr: std::fmt::Debug,
{
    let connections = TaskTracker::new();
    loop {
        // `Listener::accept` retries failed accepts itself (e.g. out of descriptors).
        let (io, _remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            // HTTP/1 only, as before: hyper-util's auto builder sniffs for an HTTP/2 preface
            // first and would wait for it without the header timer running.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::trace!(%error, "HTTP connection ended with an error");
                    }
                    return;
                }
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(error) = conn.await {
                tracing::trace!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
