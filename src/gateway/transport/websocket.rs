//! STOMP over WebSocket (RabbitMQ Web-STOMP's `/ws`): each text or binary message is a
//! chunk of the STOMP byte stream; each outgoing frame is one message.

use crate::gateway::connection::{self, ConnectionContext, Outbound};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};

/// Subprotocols we accept, in order of preference (Web-STOMP offers the same three).
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// Runs a session over an upgraded WebSocket; `bearer` is the upgrade request's
/// `Authorization: Bearer` token (JWT auth mode).
pub async fn serve(socket: WebSocket, ctx: ConnectionContext, bearer: Option<String>) {
    let (sink, stream) = socket.split();
    let inbound = stream.filter_map(|message| async move {
        match message {
            Ok(Message::Text(text)) => Some(Ok(Bytes::from(text))),
            Ok(Message::Binary(data)) => Some(Ok(data)),
            // Pings are answered by tungstenite; pongs carry nothing for STOMP.
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => None,
            Ok(Message::Close(_)) => Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "client closed the WebSocket",
            ))),
            Err(e) => Some(Err(std::io::Error::other(e))),
        }
    });
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
    let mut inbound = Box::pin(inbound);
    connection::run_with_bearer(ctx, "websocket", &mut inbound, Box::pin(outbound), bearer).await;
    // Read on until the client answers our close (or briefly): closing a socket with
    // unread input (e.g. pipelined SENDs during a drain) makes the kernel send a reset,
    // which can destroy the ERROR and close frame before the client reads them.
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while inbound.next().await.is_some() {}
    })
    .await;
}

/// Longest wait for the client's side of the closing handshake.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Text frames like Web-STOMP (what stomp.js 2.x expects); binary only when the frame is
/// not valid UTF-8, which a text frame could not carry.
fn to_message(bytes: Bytes) -> Message {
    // Cloning Bytes only bumps a reference count.
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(bytes),
    }
}
