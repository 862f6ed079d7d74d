//! STOMP over SockJS (RabbitMQ Web-STOMP's `/stomp` before 3.7): the SockJS server in
//! [`crate::sockjs`] carries the messages, this adapter runs one STOMP session per SockJS
//! session. SockJS carries text, so frames travel as UTF-8 strings (binary bodies are not
//! representable over SockJS, as with every SockJS server).

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Sink, SinkExt};
use std::pin::Pin;

use crate::gateway::admission::Refusal;
use crate::gateway::connection::{self, CloseCode, Outbound};
use crate::gateway::state::AppState;
use crate::sockjs::{self, SockJsConfig, SockJsError, SockJsSend};

/// The SockJS routes under `config.prefix`, and the vendored sockjs-client at
/// [`sockjs::CLIENT_PATH`].
pub(crate) fn router(
    state: &AppState,
    config: SockJsConfig,
) -> Result<Router<AppState>, SockJsError> {
    let handler = StompOverSockJs {
        state: state.clone(),
    };
    Ok(sockjs::try_router(config, handler)?.route(sockjs::CLIENT_PATH, get(client_js)))
}

async fn client_js() -> Response {
    (
        [(header::CONTENT_TYPE, "application/javascript")],
        sockjs::CLIENT_JS,
    )
        .into_response()
}

/// Runs a STOMP session over each SockJS session. The SockJS server already checked the
/// origin (its own CORS rules); admission checks draining and the connection limit.
#[derive(Clone)]
struct StompOverSockJs {
    state: AppState,
}

impl sockjs::SessionHandler for StompOverSockJs {
    fn start(
        &self,
        inbound: BoxStream<'static, std::io::Result<bytes::Bytes>>,
        outbound: Pin<Box<dyn Sink<SockJsSend, Error = std::io::Error> + Send>>,
    ) -> BoxFuture<'static, ()> {
        let state = self.state.clone();
        let admitted = state.admission.admit(None);
        let session = async move {
            let mut outbound = outbound;
            let slot = match admitted {
                Ok(slot) => slot,
                Err(refusal) => {
                    let code = match refusal {
                        Refusal::Draining => CloseCode::GoingAway,
                        Refusal::Origin | Refusal::Full => CloseCode::TryAgainLater,
                    };
                    let close = SockJsSend::Close(code as u16, refusal.text().to_string());
                    let _ = outbound.send(close).await;
                    return;
                }
            };
            let outbound = outbound.with(|out: Outbound| async move {
                Ok::<_, std::io::Error>(match out {
                    Outbound::Frame(bytes) => {
                        SockJsSend::Message(String::from_utf8_lossy(&bytes).into_owned())
                    }
                    Outbound::Heartbeat => SockJsSend::Message("\n".to_string()),
                    Outbound::Close(code, reason) => {
                        SockJsSend::Close(code as u16, reason.to_string())
                    }
                })
            });
            connection::run(state.ctx.clone(), "sockjs", inbound, Box::pin(outbound)).await;
            drop(slot);
        };
        self.state.tracker.track_future(session).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::admission::Admission;
    use crate::sockjs::SessionHandler;
    use futures::StreamExt;
    use tokio_util::task::TaskTracker;

    /// Runs one SockJS session start against `admission`; what the handler sent.
    async fn start_with(admission: std::sync::Arc<Admission>) -> Vec<SockJsSend> {
        let state = AppState {
            ctx: std::sync::Arc::new(connection::unreachable_broker_settings()),
            admission,
            tracker: TaskTracker::new(),
            registry: Default::default(),
        };
        let handler = StompOverSockJs { state };
        let (tx, rx) = futures::channel::mpsc::unbounded::<SockJsSend>();
        let outbound = tx.sink_map_err(|_| std::io::Error::other("closed"));
        // The client sends nothing and goes away at once.
        let inbound = futures::stream::empty().boxed();
        handler.start(inbound, Box::pin(outbound)).await;
        rx.collect().await
    }

    #[tokio::test]
    async fn a_draining_gateway_refuses_new_sockjs_sessions() {
        let metrics = crate::telemetry::GatewayMetrics::default();
        let admission = Admission::new(Vec::new(), 10, metrics);
        admission.begin_drain();
        let sent = start_with(admission.clone()).await;
        assert!(
            matches!(sent.as_slice(), [SockJsSend::Close(1001, reason)] if reason == "gateway is shutting down"),
            "{sent:?}"
        );
        assert_eq!(admission.open(), 0);
    }

    #[tokio::test]
    async fn a_full_gateway_refuses_new_sockjs_sessions() {
        let metrics = crate::telemetry::GatewayMetrics::default();
        let admission = Admission::new(Vec::new(), 0, metrics);
        let sent = start_with(admission).await;
        assert!(
            matches!(sent.as_slice(), [SockJsSend::Close(1013, reason)] if reason == "too many connections to this gateway"),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn an_admitted_sockjs_session_releases_its_slot() {
        let metrics = crate::telemetry::GatewayMetrics::default();
        let admission = Admission::new(Vec::new(), 1, metrics);
        // No CONNECT ever comes: the session ends when the client goes away.
        let sent = start_with(admission.clone()).await;
        assert!(
            !sent
                .iter()
                .any(|s| matches!(s, SockJsSend::Close(1001 | 1013, _))),
            "{sent:?}"
        );
        assert_eq!(admission.open(), 0);
    }
}
