//! The WebSocket transports: `/<server>/<session>/websocket` (SockJS framing) and `/websocket`
//! (raw: one text message per message). A WebSocket session is not in the session map: it lives
//! exactly as long as its connection (sockjs-node does the same, so session ids may repeat).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};

use super::frame;
use super::server::{Server, too_many_sessions};
use super::session::{Attach, Attachment, Permit, ReceiverId, Session, Take};
use super::{CLOSE_INTERRUPTED, CLOSE_MESSAGE_TOO_BIG, SessionHandler};
use tokio_tungstenite::tungstenite::Error as WsError;

/// Initial read buffer per connection; tungstenite grows it for a larger frame.
const READ_BUFFER_BYTES: usize = 1024;

/// How long to wait for the client's close reply after our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn bad_request(body: &'static str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body,
    )
        .into_response()
}

pub(crate) async fn upgrade<H: SessionHandler>(
    server: Arc<Server<H>>,
    req: Request,
    raw: bool,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
        return bad_request("Can \"Upgrade\" only to \"WebSocket\".");
    }
    // Some proxies rewrite `Connection`; Firefox 6 sent `keep-alive, Upgrade`.
    if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
        return bad_request("\"Connection\" must be \"Upgrade\".");
    }
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(permit) = server.registry.reserve() else {
        return too_many_sessions();
    };
    let limit = server.raw_limit;
    // tungstenite's default 128 KiB read buffer would cost more than everything else an idle
    // session holds; it grows for a larger frame. Frames are written at once, unbuffered.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            // Split before the session's future is made: a socket moved into it would take
            // its full size in every session's task.
            let (sink, stream) = socket.split();
            run(server, sink, stream, permit, raw)
        })
}

async fn run<H: SessionHandler>(
    server: Arc<Server<H>>,
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    permit: Permit,
    raw: bool,
) {
    let (session, unstarted) = Session::new(None, permit, server.limits);
    unstarted.start(&server.handler, &server.registry);
    let Attach::Attached { rid, .. } = session.attach() else {
        return;
    };
    let mut attachment = Attachment::new(session.clone(), rid.id);
    let wrote_close = {
        let reader = read_loop(
            &session,
            &mut stream,
            raw,
            server.cfg.max_incoming_message_bytes,
        );
        let writer = write_loop(
            &session,
            &rid,
            &mut sink,
            raw,
            server.cfg.heartbeat,
            server.cfg.response_limit,
        );
        tokio::pin!(reader, writer);
        let wrote_close = tokio::select! {
            () = &mut reader => false,
            closed = &mut writer => closed,
        };
        if wrote_close {
            attachment.finish();
            // Let the client answer our close frame.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
        }
        wrote_close
    };
    if !wrote_close {
        // The client left, broke the framing, or this receiver was kicked: interrupt the session
        // now, then complete (or start) the closing handshake.
        drop(attachment);
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    }
}

/// Reads client messages until the connection ends or the framing is broken.
async fn read_loop(
    session: &Session,
    stream: &mut SplitStream<WebSocket>,
    raw: bool,
    max_message: usize,
) {
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t.as_str().to_owned(),
            Ok(Message::Binary(b)) => match String::from_utf8(b.to_vec()) {
                Ok(s) => s,
                Err(_) => return,
            },
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) => return,
            Err(e) => {
                // A WebSocket protocol violation or an over-size frame: tell the client
                // with a close code (the writer sends it) rather than vanishing.
                let inner = e.into_inner();
                let (code, reason) = match inner.downcast_ref::<WsError>() {
                    Some(WsError::Capacity(_)) => (CLOSE_MESSAGE_TOO_BIG, "Message too big"),
                    Some(WsError::Protocol(_)) => (CLOSE_INTERRUPTED, "WebSocket protocol error"),
                    _ => return,
                };
                session.close(code, reason, false);
                std::future::pending::<()>().await;
                return;
            }
        };
        let messages = if raw {
            vec![text]
        } else if text.is_empty() {
            // Empty frames are ignored (sockjs-protocol).
            continue;
        } else {
            match frame::decode_messages(&text, true) {
                Ok(m) => m,
                // Broken JSON: drop the connection abruptly, as the protocol asks.
                Err(_) => return,
            }
        };
        if messages.iter().any(|m| m.len() > max_message) {
            // The writer delivers the close frame; keep reading to notice the client leaving.
            session.close(CLOSE_MESSAGE_TOO_BIG, "Message too big", false);
            continue;
        }
        session.deliver(messages).await;
    }
}

fn ws_close_code(code: u16) -> u16 {
    // Codes a WebSocket close frame may carry (RFC 6455 7.4); others become 1000.
    match code {
        1000..=1003 | 1007..=1011 | 3000..=4999 => code,
        _ => 1000,
    }
}

fn truncate_reason(reason: &str) -> String {
    // A close frame's reason is at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Writes session frames until the session closes (returns true after sending the close) or this
/// receiver is kicked / the connection fails (false).
async fn write_loop(
    session: &Session,
    rid: &ReceiverId,
    sink: &mut SplitSink<WebSocket, Message>,
    raw: bool,
    heartbeat: Duration,
    batch_bytes: usize,
) -> bool {
    async fn send(
        sink: &mut SplitSink<WebSocket, Message>,
        rid: &ReceiverId,
        msg: Message,
    ) -> bool {
        tokio::select! {
            biased;
            _ = rid.kick.cancelled() => false,
            sent = sink.send(msg) => sent.is_ok(),
        }
    }
    if !raw && !send(sink, rid, Message::text(frame::OPEN)).await {
        return false;
    }
    loop {
        match session.take(rid.id, batch_bytes) {
            Take::Messages(messages) => {
                if raw {
                    for m in messages {
                        if !send(sink, rid, Message::text(m)).await {
                            return false;
                        }
                    }
                } else if !send(sink, rid, Message::text(frame::array_frame(&messages))).await {
                    return false;
                }
            }
            Take::Closed { code, reason } => {
                let close = if raw {
                    CloseFrame {
                        code: ws_close_code(code),
                        reason: truncate_reason(&reason).into(),
                    }
                } else {
                    if !send(sink, rid, Message::text(frame::close_frame(code, &reason))).await {
                        return false;
                    }
                    CloseFrame {
                        code: 1000,
                        reason: "Normal closure".into(),
                    }
                };
                return send(sink, rid, Message::Close(Some(close))).await;
            }
            Take::Gone => return false,
            Take::Empty => {
                tokio::select! {
                    _ = session.changed() => {}
                    _ = tokio::time::sleep(heartbeat) => {
                        // Raw WebSocket has no SockJS framing; a ping keeps proxies from idling out.
                        let beat = if raw {
                            Message::Ping(Default::default())
                        } else {
                            Message::text(frame::HEARTBEAT)
                        };
                        if !send(sink, rid, beat).await {
                            return false;
                        }
                    }
                    _ = rid.kick.cancelled() => return false,
                }
            }
        }
    }
}
