//! The WebSocket transports: `/<server>/<session>/websocket` (SockJS framing) and `/websocket`
//! (raw: one text message per message). A WebSocket session is not in the session map: it lives
//! exactly as long as its connection (sockjs-node does the same, so session ids may repeat).
//!
//! The handler runs in the connection's own task and reads and writes the socket itself, through
//! [`Inbound`] and [`Outbound`]: no queue and no second task between them (the HTTP transports
//! need both, since their requests come and go). The socket is the backpressure: a handler's
//! write waits while the client does not read, for as long as the handler lets it (the gateway's
//! `--write-timeout-secs`, as on its plain WebSocket path). A rule of "no progress for
//! `disconnect_delay`" would need the bytes the socket takes, which the WebSocket layer does not
//! expose; "a frame not written within `disconnect_delay`" drops clients that read steadily but
//! slower than a large frame. The connection's [`KeepAlive`] sends `h` (a ping on the raw
//! transport) when nothing else was sent for `heartbeat`.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use super::frame;
use super::server::{Server, too_many_sessions};
use super::session::Permit;
use super::{
    CLOSE_INTERNAL_ERROR, CLOSE_INTERRUPTED, CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL, SessionHandler,
    SockJsError, SockJsSend,
};
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
            // Into the shared link before the session's future is made: a socket moved into it
            // would take its full size in every session's task.
            let link = Link::new(socket, raw, server.cfg.max_incoming_message_bytes);
            run(server, link, permit)
        })
}

/// Runs the session on the connection, in this task, then closes the connection the way its end
/// asks for.
async fn run<H: SessionHandler>(server: Arc<Server<H>>, link: SharedLink, permit: Permit) {
    let raw = lock(&link).raw;
    if !raw && !send(&link, Message::text(frame::OPEN)).await {
        return;
    }
    let handler = server.handler.start(
        Box::pin(Inbound(link.clone())),
        Box::pin(Outbound(link.clone())),
    );
    // A panicking handler still gets its session closed with a code.
    let session = std::panic::AssertUnwindSafe(handler).catch_unwind();
    let keep_alive = KeepAlive::new(link.clone(), server.cfg.heartbeat);
    let panicked = tokio::select! {
        biased;
        ended = session => ended.is_err(),
        () = keep_alive => false,
    };
    if panicked {
        tracing::warn!("SockJS session handler panicked");
    }
    let end = lock(&link).end.clone();
    let violated = matches!(end, End::Violation(..));
    let close = match end {
        _ if panicked => Some((CLOSE_INTERNAL_ERROR, "Internal error".to_owned())),
        End::Open => Some((CLOSE_NORMAL, "Normal closure".to_owned())),
        End::Violation(code, reason) => Some((code, reason.to_owned())),
        // The handler's close is written (finished here if its flush did not complete); the
        // client's answer is awaited below.
        End::Closed => {
            let flushed = tokio::time::timeout(CLOSE_GRACE, finish_close(&link)).await;
            if !matches!(flushed, Ok(Ok(()))) {
                return;
            }
            None
        }
        End::ClientLeft => {
            let _ = tokio::time::timeout(CLOSE_GRACE, close_socket(&link)).await;
            return;
        }
        // The client broke the framing: drop the connection.
        End::Broken => return,
    };
    if let Some((code, reason)) = close {
        let written = tokio::time::timeout(CLOSE_GRACE, async {
            for message in close_messages(raw, code, &reason) {
                if !send(&link, message).await {
                    return false;
                }
            }
            true
        })
        .await;
        if !matches!(written, Ok(true)) {
            return;
        }
    }
    // Let the client answer our close frame. After a violation its input cannot be read on (the
    // WebSocket layer ended it): wait the grace out, as dropping a socket with unread input
    // resets it and the reset can destroy the close frames before the client reads them.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = std::future::poll_fn(|cx| lock(&link).ws.poll_next_unpin(cx)).await
        {
        }
        if violated {
            std::future::pending::<()>().await;
        }
    })
    .await;
    drop(permit);
}

/// How the session's end closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Nothing ended yet (or the handler returned on its own).
    Open,
    /// The client closed or the connection ended.
    ClientLeft,
    /// Broken JSON or a read error: drop the connection, as sockjs-protocol asks.
    Broken,
    /// The client sent what the protocol or a limit refuses: close with this code.
    Violation(u16, &'static str),
    /// The handler's close went out.
    Closed,
}

/// The connection and what its users share: the handler's [`Inbound`] and [`Outbound`] and the
/// [`KeepAlive`] all run in the connection's task, each holding the lock for one poll.
struct Link {
    ws: WebSocket,
    raw: bool,
    max_message: usize,
    /// Messages of a frame already read, not yet handed to the handler.
    pending: VecDeque<String>,
    end: End,
    /// When the socket last took a message (heart-beats are due this long after).
    last_sent: Instant,
    /// The handler's close, written after its frame (SockJS framing: `c[...]`, then the
    /// WebSocket close).
    close_after: Option<Message>,
}

type SharedLink = Arc<Mutex<Link>>;

impl Link {
    fn new(ws: WebSocket, raw: bool, max_message: usize) -> SharedLink {
        Arc::new(Mutex::new(Link {
            ws,
            raw,
            max_message,
            pending: VecDeque::new(),
            end: End::Open,
            last_sent: Instant::now(),
            close_after: None,
        }))
    }

    /// Whether the socket has room for a message.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_ready_unpin(cx).map_err(io::Error::other)
    }

    fn start_send(&mut self, message: Message) -> io::Result<()> {
        self.last_sent = Instant::now();
        self.ws.start_send_unpin(message).map_err(io::Error::other)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_flush_unpin(cx).map_err(io::Error::other)
    }

    /// Queues the close `code` and `reason` ask for; the session is closed from now on.
    fn start_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut messages = close_messages(self.raw, code, reason).into_iter();
        let first = messages.next();
        self.close_after = messages.next();
        self.end = End::Closed;
        match first {
            Some(message) => self.start_send(message),
            None => Ok(()),
        }
    }

    /// Flushes, first writing the handler's close frame if it is still to go.
    fn poll_flush_with_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.close_after.is_some() {
            ready!(self.poll_room(cx))?;
            if let Some(close) = self.close_after.take() {
                self.start_send(close)?;
            }
        }
        self.poll_flush(cx)
    }

    /// One client WebSocket message as SockJS messages, or the end it asks for.
    fn decode(&mut self, message: Message) -> Result<(), End> {
        let text = match message {
            Message::Text(t) => t.as_str().to_owned(),
            Message::Binary(b) => String::from_utf8(b.to_vec()).map_err(|_| End::Broken)?,
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
            Message::Close(_) => return Err(End::ClientLeft),
        };
        let messages = if self.raw {
            vec![text]
        } else if text.is_empty() {
            // Empty frames are ignored (sockjs-protocol).
            return Ok(());
        } else {
            frame::decode_messages(&text, true).map_err(|_| End::Broken)?
        };
        if messages.iter().any(|m| m.len() > self.max_message) {
            return Err(End::Violation(CLOSE_MESSAGE_TOO_BIG, "Message too big"));
        }
        self.pending.extend(messages);
        Ok(())
    }
}

fn lock(link: &SharedLink) -> MutexGuard<'_, Link> {
    // Nothing panics while holding it; a poisoned lock still guards a consistent link.
    link.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes one message and flushes it; false when the connection failed.
async fn send(link: &SharedLink, message: Message) -> bool {
    let mut message = Some(message);
    std::future::poll_fn(|cx| {
        let mut link = lock(link);
        if let Some(m) = message.take() {
            if let Err(e) = ready!(link.ws.poll_ready_unpin(cx)) {
                return Poll::Ready(Err(e));
            }
            if let Err(e) = link.ws.start_send_unpin(m) {
                return Poll::Ready(Err(e));
            }
        }
        link.ws.poll_flush_unpin(cx)
    })
    .await
    .is_ok()
}

/// Writes what is left of the handler's close and flushes it.
async fn finish_close(link: &SharedLink) -> io::Result<()> {
    std::future::poll_fn(|cx| lock(link).poll_flush_with_close(cx)).await
}

/// Completes the closing handshake the client started.
async fn close_socket(link: &SharedLink) {
    let _ = std::future::poll_fn(|cx| lock(link).ws.poll_close_unpin(cx)).await;
}

/// The close as the transport writes it: SockJS framing says why in `c[code,"reason"]` and
/// closes the WebSocket normally; the raw transport puts both in the close frame.
fn close_messages(raw: bool, code: u16, reason: &str) -> Vec<Message> {
    if raw {
        vec![Message::Close(Some(CloseFrame {
            code: ws_close_code(code),
            reason: truncate_reason(reason).into(),
        }))]
    } else {
        vec![
            Message::text(frame::close_frame(code, reason)),
            Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "Normal closure".into(),
            })),
        ]
    }
}

/// The handler's inbound: the client's messages, one at a time; ends with the connection, a
/// violation, or the handler's close.
struct Inbound(SharedLink);

impl Stream for Inbound {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut link = lock(&self.0);
        loop {
            if let Some(message) = link.pending.pop_front() {
                return Poll::Ready(Some(Ok(Bytes::from(message))));
            }
            if link.end != End::Open {
                return Poll::Ready(None);
            }
            let ended = match ready!(link.ws.poll_next_unpin(cx)) {
                None => End::ClientLeft,
                Some(Ok(message)) => match link.decode(message) {
                    Ok(()) => continue,
                    Err(end) => end,
                },
                // A WebSocket protocol violation or an over-size frame: tell the client with a
                // close code rather than vanishing.
                Some(Err(e)) => match e.into_inner().downcast_ref::<WsError>() {
                    Some(WsError::Capacity(_)) => {
                        End::Violation(CLOSE_MESSAGE_TOO_BIG, "Message too big")
                    }
                    Some(WsError::Protocol(_)) => {
                        End::Violation(CLOSE_INTERRUPTED, "WebSocket protocol error")
                    }
                    _ => End::Broken,
                },
            };
            link.end = ended;
        }
    }
}

/// The handler's sink: each message straight onto the socket (`a[...]` framed, or as is on the
/// raw transport).
struct Outbound(SharedLink);

impl Outbound {
    /// Writes are for an open session: after the handler's close, the client's, or a violation
    /// (which `run` closes with its code) they fail at once.
    fn check_open(link: &Link) -> io::Result<()> {
        if link.end == End::Open {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                SockJsError::SessionClosed,
            ))
        }
    }
}

impl Sink<SockJsSend> for Outbound {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut link = lock(&self.0);
        Self::check_open(&link)?;
        link.poll_room(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: SockJsSend) -> io::Result<()> {
        let mut link = lock(&self.0);
        Self::check_open(&link)?;
        match item {
            SockJsSend::Message(m) => {
                let message = if link.raw {
                    Message::text(m)
                } else {
                    Message::text(frame::array_frame(&[m]))
                };
                link.start_send(message)
            }
            SockJsSend::Close(code, reason) => link.start_close(code, &reason),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.0).poll_flush_with_close(cx)
    }

    /// Closing the sink ends the session (`Normal closure`), as on the HTTP transports; after
    /// another end it only flushes (`run` closes the connection as that end asks).
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut link = lock(&self.0);
        if link.end == End::Open {
            ready!(link.poll_room(cx))?;
            link.start_close(CLOSE_NORMAL, "Normal closure")?;
        }
        link.poll_flush_with_close(cx)
    }
}

/// Sends `h` (a ping on the raw transport) when nothing was sent for `heartbeat`. Its timer is
/// armed for the last write's deadline and re-armed when it fires early, not moved on every
/// write. It writes only when the socket has room at once and never waits on the socket: a
/// write the handler has in flight counts as traffic, and a heart-beat that does not fit is not
/// needed. It polls the socket's write side with the connection task's waker, which is why the
/// handler must write from that task (its own future), as [`SessionHandler`] says. Never
/// completes.
struct KeepAlive {
    link: SharedLink,
    heartbeat: Duration,
    timer: Pin<Box<Sleep>>,
}

impl KeepAlive {
    fn new(link: SharedLink, heartbeat: Duration) -> Self {
        let first = lock(&link).last_sent + heartbeat;
        KeepAlive {
            link,
            heartbeat,
            timer: Box::pin(tokio::time::sleep_until(first)),
        }
    }
}

impl Future for KeepAlive {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let mut link = lock(&this.link);
            if link.end != End::Open {
                // No heart-beat after the session's end; `run` closes the connection.
                return Poll::Pending;
            }
            if link.last_sent + this.heartbeat <= Instant::now() {
                if let Poll::Ready(Ok(())) = link.poll_room(cx) {
                    let beat = if link.raw {
                        Message::Ping(Default::default())
                    } else {
                        Message::text(frame::HEARTBEAT)
                    };
                    // A failed write shows at the handler's next write or read.
                    let _ = link.start_send(beat);
                }
                // Sent, or the socket is full (the client is not reading): next period.
                link.last_sent = Instant::now();
            }
            let next = link.last_sent + this.heartbeat;
            drop(link);
            this.timer.as_mut().reset(next);
        }
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
