//! STOMP over WebSocket (RabbitMQ Web-STOMP's `/ws`): each text or binary message is a
//! chunk of the STOMP byte stream; each outgoing frame is one message.

use crate::gateway::admission::Refusal;
use crate::gateway::connection::{
    self, CloseCode, ConnectionContext, Outbound, TransportViolation,
};
use crate::gateway::state::AppState;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Error as WsError;

/// Subprotocols we accept, in order of preference (Web-STOMP offers the same three).
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// The `--ws-path` handler: admission, then the upgrade with the frame limits, then a session.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let slot = match state.admission.admit(origin) {
        Ok(slot) => slot,
        Err(refusal) => {
            let status = match refusal {
                Refusal::Origin => StatusCode::FORBIDDEN,
                Refusal::Draining | Refusal::Full => StatusCode::SERVICE_UNAVAILABLE,
            };
            return (status, format!("{}\n", refusal.text())).into_response();
        }
    };
    let ctx = state.ctx.clone();
    let tracker = state.tracker.clone();
    let bearer = ctx
        .session
        .jwt
        .as_ref()
        .and_then(|_| bearer_token(&headers));
    let max_message = ctx.limits.max_frame_bytes + 1024;
    upgrade
        .protocols(SUBPROTOCOLS)
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(max_message * 2)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            // Split before the session's future is made: a socket moved into it (and on into
            // `serve`) would take its full size twice in every session's task.
            let (sink, stream) = socket.split();
            tracker.track_future(async move {
                serve(sink, stream, ctx, bearer).await;
                drop(slot);
            })
        })
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Runs a session over an upgraded WebSocket; `bearer` is the upgrade request's
/// `Authorization: Bearer` token (JWT auth mode).
async fn serve(
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    ctx: ConnectionContext,
    bearer: Option<String>,
) {
    // Set when reading failed (protocol or size violation): the rest of the client's bytes
    // can no longer be read and drained.
    let broken = Arc::new(AtomicBool::new(false));
    let broken_in = broken.clone();
    let inbound = stream.filter_map(move |message| {
        let broken = broken_in.clone();
        async move {
            match message {
                Ok(Message::Text(text)) => Some(Ok(Bytes::from(text))),
                Ok(Message::Binary(data)) => Some(Ok(data)),
                // Pings are answered by tungstenite; pongs carry nothing for STOMP.
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => None,
                Ok(Message::Close(_)) => Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "client closed the WebSocket",
                ))),
                Err(e) => {
                    broken.store(true, Ordering::Relaxed);
                    Some(Err(read_error(e)))
                }
            }
        }
    });
    let mut inbound = Box::pin(inbound);
    let outbound = sink.with(|out: Outbound| async move {
        Ok::<_, axum::Error>(match out {
            Outbound::Frame(bytes) => to_message(bytes),
            Outbound::Heartbeat => Message::Text(Utf8Bytes::from_static("\n")),
            Outbound::Close(code, reason) => Message::Close(Some(CloseFrame {
                code: code as u16,
                reason: Utf8Bytes::from_static(reason),
            })),
        })
    });
    connection::run_with_bearer(ctx, "websocket", &mut inbound, Box::pin(outbound), bearer).await;
    // Read on until the client answers our Close (or LINGER passes): closing the socket
    // with unread input makes the kernel reset the connection, and the reset can destroy
    // the ERROR and Close frames before the client reads them.
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(_)) = inbound.next().await {}
    })
    .await;
    if broken.load(Ordering::Relaxed) {
        // Unread input is left and closing will reset the connection: give the client a
        // moment to read our ERROR and Close first.
        tokio::time::sleep(BROKEN_LINGER).await;
    }
}

/// Wait before dropping a connection whose input could not be drained.
const BROKEN_LINGER: Duration = Duration::from_millis(500);

/// Longest wait for the client's Close after ours.
const LINGER: Duration = Duration::from_secs(2);

/// Maps a WebSocket read error; protocol and size violations become a
/// [`TransportViolation`] so the client learns what was wrong (1002 / 1009).
fn read_error(e: axum::Error) -> std::io::Error {
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(c)) => TransportViolation {
            close: CloseCode::MessageTooBig,
            close_text: "message too big",
            summary: "Frame too large",
            detail: format!("WebSocket message over the size limit: {c}"),
        }
        .into(),
        Some(WsError::Protocol(p)) => TransportViolation {
            close: CloseCode::ProtocolError,
            close_text: "WebSocket protocol error",
            summary: "Invalid frame",
            detail: format!("WebSocket protocol error: {p}"),
        }
        .into(),
        _ => std::io::Error::other(inner),
    }
}

/// Text frames like Web-STOMP (what stomp.js 2.x expects); binary only when the frame is
/// not valid UTF-8, which a text frame could not carry.
fn to_message(bytes: Bytes) -> Message {
    // Cloning Bytes only bumps a reference count.
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(bytes),
    }
}
