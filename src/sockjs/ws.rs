//! The WebSocket transports: `/<server>/<session>/websocket` (SockJS framing) and `/websocket`
//! (raw: one text message per message). A WebSocket session is not in the session map: it lives
//! exactly as long as its connection (sockjs-node does the same, so session ids may repeat).
//!
//! The handler runs in the connection's own task and reads and writes the socket itself, through
//! [`Inbound`] and [`Outbound`]: no queue and no second task between them (the HTTP transports
//! need both, since their requests come and go). The socket is the backpressure: a handler's
//! write waits while the client does not read, and fails once the socket took nothing for
//! `disconnect_delay`. The connection's [`KeepAlive`] sends `h` (a ping on the raw transport) when
//! nothing else was sent for `heartbeat`.

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
    SockJsSend,
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
    let keep_alive = KeepAlive::new(
        link.clone(),
        server.cfg.heartbeat,
        server.limits.disconnect_delay,
    );
    let panicked = tokio::select! {
        biased;
        ended = session => ended.is_err(),
        () = keep_alive => false,
    };
    if panicked {
        tracing::warn!("SockJS session handler panicked");
    }
    let end = lock(&link).end.clone();
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
        // Nothing more can be written, or the client broke the framing: drop the connection.
        End::Stalled | End::Broken => return,
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
    // Let the client answer our close frame.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = std::future::poll_fn(|cx| lock(&link).ws.poll_next_unpin(cx)).await
        {
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
    /// The socket took nothing for `disconnect_delay`.
    Stalled,
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
    /// Since when a write has waited for room on the socket.
    stalled_since: Option<Instant>,
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
            stalled_since: None,
            close_after: None,
        }))
    }

    /// Whether the socket has room for a message; notes a stall when it has none.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.ws.poll_ready_unpin(cx) {
            Poll::Ready(result) => {
                self.stalled_since = None;
                Poll::Ready(result.map_err(io::Error::other))
            }
            Poll::Pending => {
                self.stalled_since.get_or_insert_with(Instant::now);
                Poll::Pending
            }
        }
    }

    fn start_send(&mut self, message: Message) -> io::Result<()> {
        self.last_sent = Instant::now();
        self.ws.start_send_unpin(message).map_err(io::Error::other)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.ws.poll_flush_unpin(cx) {
            Poll::Ready(result) => {
                self.stalled_since = None;
                Poll::Ready(result.map_err(io::Error::other))
            }
            Poll::Pending => {
                self.stalled_since.get_or_insert_with(Instant::now);
                Poll::Pending
            }
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
/// violation, or a stall.
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
    fn check_open(link: &Link) -> io::Result<()> {
        match link.end {
            End::Stalled => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
            End::Closed => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the session is closed",
            )),
            _ => Ok(()),
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
            SockJsSend::Close(code, reason) => {
                let mut messages = close_messages(link.raw, code, &reason).into_iter();
                let first = messages.next();
                link.close_after = messages.next();
                link.end = End::Closed;
                match first {
                    Some(message) => link.start_send(message),
                    None => Ok(()),
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut link = lock(&self.0);
        if link.end == End::Stalled {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            )));
        }
        link.poll_flush_with_close(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection closes when the session ends (`run`), with the code its end asks for.
        self.poll_flush(cx)
    }
}

/// Sends `h` (a ping on the raw transport) when nothing was sent for `heartbeat`, and ends a
/// session whose socket took nothing for `stall_limit`. One timer, set for whichever comes
/// first; never completes.
struct KeepAlive {
    link: SharedLink,
    heartbeat: Duration,
    stall_limit: Duration,
    timer: Pin<Box<Sleep>>,
    /// A heart-beat was written and is not flushed yet.
    flushing: bool,
}

impl KeepAlive {
    fn new(link: SharedLink, heartbeat: Duration, stall_limit: Duration) -> Self {
        let first = lock(&link).last_sent + heartbeat;
        KeepAlive {
            link,
            heartbeat,
            stall_limit,
            timer: Box::pin(tokio::time::sleep_until(first)),
            flushing: false,
        }
    }
}

impl Future for KeepAlive {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut link = lock(&this.link);
        loop {
            if !matches!(link.end, End::Open | End::Closed) {
                // The handler learns of the end at its next read or write; nothing to keep.
                return Poll::Pending;
            }
            if this.flushing {
                match link.poll_flush(cx) {
                    Poll::Ready(_) => this.flushing = false,
                    Poll::Pending => {}
                }
            }
            let deadline = match link.stalled_since {
                Some(since) => since + this.stall_limit,
                None => link.last_sent + this.heartbeat,
            };
            if this.timer.deadline() != deadline {
                this.timer.as_mut().reset(deadline);
            }
            ready!(this.timer.as_mut().poll(cx));
            if link.stalled_since.is_some() && link.poll_room(cx).is_pending() {
                link.end = End::Stalled;
                // The handler's pending write fails when it is polled next: now.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if link.end == End::Closed {
                // No heart-beat after the handler's close; it is flushed or stalls.
                link.last_sent = Instant::now();
                continue;
            }
            // Due. When the socket has no room the handler is writing: its write counts.
            if let Poll::Ready(Ok(())) = link.poll_room(cx) {
                let beat = if link.raw {
                    Message::Ping(Default::default())
                } else {
                    Message::text(frame::HEARTBEAT)
                };
                if link.start_send(beat).is_ok() {
                    this.flushing = true;
                }
            } else {
                link.last_sent = Instant::now();
            }
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
