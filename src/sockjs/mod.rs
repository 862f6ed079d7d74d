//! SockJS 0.3 server (the protocol of sockjs-client 0.3.x and 1.x), as RabbitMQ Web-STOMP served
//! it at `/stomp` before 3.7. This module knows nothing about STOMP: it turns SockJS transports
//! into one message stream and one message sink per session and hands both to a
//! [`SessionHandler`].
//!
//! Served under `config.prefix` (e.g. `/stomp`):
//!
//! | path | methods | what |
//! | --- | --- | --- |
//! | (nothing) and `/` | GET | `Welcome to SockJS!\n` |
//! | `/info` | GET, OPTIONS | capabilities, entropy, CORS |
//! | `/iframe*.html` | GET | iframe bootstrap page (ETag, 304) |
//! | `/websocket` | GET | raw WebSocket, one text message per message, no SockJS framing |
//! | `/<server>/<session>/websocket` | GET | WebSocket with SockJS framing |
//! | `/<server>/<session>/xhr`, `xhr_streaming`, `xhr_send` | POST, OPTIONS | XHR transports |
//! | `/<server>/<session>/eventsource`, `htmlfile`, `jsonp` | GET | streaming and polling |
//! | `/<server>/<session>/jsonp_send` | POST | form (`d=`) or raw body |
//!
//! Sessions live in this process only (a map behind a mutex). With several gateway replicas the
//! load balancer must keep every request of one session on one replica (sticky sessions, e.g. on
//! the `<server>` path segment or on the `JSESSIONID` cookie enabled by
//! [`SockJsConfig::jsessionid`]) — as with every SockJS server. The WebSocket transports need no
//! stickiness: one connection is the whole session.
//!
//! # Close codes sent in `c[code,"reason"]`
//!
//! | code | reason | when |
//! | --- | --- | --- |
//! | any | handler's | the handler sent [`SockJsSend::Close`] |
//! | 1000 | `Normal closure` | the handler returned or closed its sink without a code |
//! | 1002 | `Connection interrupted` | a receiving request broke off (network error), or no request polled for `disconnect_delay` |
//! | 1002 | `WebSocket protocol error` | the client broke the WebSocket protocol |
//! | 1011 | `Internal error` | the handler panicked |
//! | 2010 | `Another connection still open` | a second receiving request on a session (that request only) |
//! | [`CLOSE_QUEUE_FULL`] 4429 | `Outbound queue full` | HTTP transports: the outbound queue stayed at `max_queued_bytes` for `disconnect_delay` (client stopped reading) |
//! | [`CLOSE_MESSAGE_TOO_BIG`] 4413 | `Message too big` | the client sent a message over `max_incoming_message_bytes` |
//!
//! A closed session keeps answering its close frame to later requests until no request came for
//! `disconnect_delay` (so a client that comes back learns why), then it is forgotten.
//!
//! On the WebSocket transports the handler writes straight to the socket, which is the
//! backpressure: a write waits while the client does not read, for as long as the handler
//! lets it (see [`SessionHandler`]).
//!
//! # Deviations from sockjs-protocol 0.3.3 (see the test suite `sockjs-protocol-0.3.3.py`)
//!
//! - WebSocket: RFC 6455 (version 13) only; hixie-76 and hybi-07/08 handshakes get 400.
//! - Inbound JSON with lone surrogate escapes (`"\ud800"`) is "Broken JSON encoding.": messages are
//!   UTF-8 here. Outbound astral characters are escaped as surrogate pairs, as sockjs-node does.
//! - `xhr_send`/`jsonp_send` accept any `Content-Type` (sockjs-node answers "Payload expected."
//!   for types it does not know).
//! - `jsonp`/`htmlfile` callbacks must match `[A-Za-z0-9_.-]{1,32}` (sockjs-node >= 0.3.10 does the
//!   same), jsonp sends `X-Content-Type-Options: nosniff`, htmlfile escapes `<` in its script
//!   payload so a message cannot close the `<script>` element.
//! - Limits the protocol does not have: `max_sessions` (503), `max_incoming_message_bytes` (413 /
//!   4413), `max_queued_bytes` (backpressure, then 4429), `allowed_origins` (403).

mod frame;
mod http;
mod server;
mod session;
mod ws;

/// The pure SockJS framing functions, exposed only for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::frame::{self, HttpFraming};

    /// A client payload (`xhr_send`, WebSocket) as messages; the error is the reply text.
    pub fn decode_messages(payload: &str, allow_single: bool) -> Result<Vec<String>, &'static str> {
        frame::decode_messages(payload, allow_single).map_err(|e| e.message())
    }

    /// `a[...]`.
    pub fn array_frame(messages: &[String]) -> String {
        frame::array_frame(messages)
    }

    /// `c[code,"reason"]`.
    pub fn close_frame(code: u16, reason: &str) -> String {
        frame::close_frame(code, reason)
    }

    pub fn valid_callback(callback: &str) -> bool {
        frame::valid_callback(callback)
    }

    /// `frame` as xhr, xhr_streaming, eventsource, htmlfile and jsonp send it.
    pub fn wrap_all(frame: &str, callback: &str) -> [String; 5] {
        [
            HttpFraming::XhrPolling,
            HttpFraming::XhrStreaming,
            HttpFraming::EventSource,
            HttpFraming::HtmlFile {
                callback: callback.to_owned(),
            },
            HttpFraming::Jsonp {
                callback: callback.to_owned(),
            },
        ]
        .map(|framing| framing.wrap(frame))
    }
}

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Sink;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// sockjs-client 1.6.1, vendored: pages load it from [`CLIENT_PATH`] and so do SockJS's iframe
/// transports (which must load the same client version as the page, and must work offline).
pub const CLIENT_JS: &[u8] = include_bytes!("../../examples/demo/sockjs.min.js");

/// Where the gateway serves [`CLIENT_JS`].
pub const CLIENT_PATH: &str = "/sockjs-client/1.6.1/sockjs.min.js";

/// Close code when the outbound queue stayed full (client not reading) for `disconnect_delay`.
pub const CLOSE_QUEUE_FULL: u16 = 4429;
/// Close code when the client sent a message larger than `max_incoming_message_bytes`.
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 4413;
/// Close code when a receiving connection broke off or the client stopped polling.
pub const CLOSE_INTERRUPTED: u16 = 1002;
/// Close code when the handler ended without choosing one.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code when the handler panicked.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// Settings of one SockJS endpoint.
#[derive(Debug, Clone)]
pub struct SockJsConfig {
    /// URL prefix, e.g. `/stomp` (a trailing `/` is ignored).
    pub prefix: String,
    /// Offer the WebSocket transports (`info.websocket`); when false they answer 404.
    pub websocket_enabled: bool,
    /// Send `h` when nothing else was sent for this long (SockJS default 25 s).
    pub heartbeat: Duration,
    /// A session of an HTTP transport with no receiving request for this long is closed; a closed
    /// session is forgotten this long after its last request (SockJS default 5 s). WebSocket
    /// sessions live exactly as long as their connection.
    pub disconnect_delay: Duration,
    /// Bytes of frames after which a streaming response is ended and the client reconnects
    /// (SockJS default 128 KiB). Also the largest `a[...]` batch taken from the queue at once.
    pub response_limit: usize,
    /// Concurrent sessions (all transports, closed ones until forgotten); more get 503.
    pub max_sessions: usize,
    /// Outbound bytes queued per session of an HTTP transport before the handler's sink applies
    /// backpressure; if the queue stays full for `disconnect_delay` the session is closed with
    /// [`CLOSE_QUEUE_FULL`]. (WebSocket sessions have no queue: the socket pushes back.)
    pub max_queued_bytes: usize,
    /// Largest message the client may send (decoded); larger ones close the session with
    /// [`CLOSE_MESSAGE_TOO_BIG`] (HTTP senders get 413).
    pub max_incoming_message_bytes: usize,
    /// Origins allowed to use the endpoint (`https://host:port`, or `*`); empty = any. Requests
    /// without an `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// sockjs-client script loaded by `iframe.html`; sockjs-client 1.x refuses an iframe whose
    /// client version differs from the page's, so point this at the page's version.
    pub sockjs_client_url: String,
    /// Set `JSESSIONID` on session requests and report `cookie_needed: true`, for load balancers
    /// that only do stickiness on that cookie.
    pub jsessionid: bool,
}

impl Default for SockJsConfig {
    fn default() -> Self {
        Self {
            prefix: "/stomp".to_owned(),
            websocket_enabled: true,
            heartbeat: Duration::from_secs(25),
            disconnect_delay: Duration::from_secs(5),
            response_limit: 128 * 1024,
            max_sessions: 10_000,
            max_queued_bytes: 1024 * 1024,
            max_incoming_message_bytes: 4 * 1024 * 1024,
            allowed_origins: Vec::new(),
            sockjs_client_url:
                "https://cdn.jsdelivr.net/npm/sockjs-client@1.6.1/dist/sockjs.min.js".to_owned(),
            jsessionid: false,
        }
    }
}

impl SockJsConfig {
    /// Checks the settings [`router`] relies on.
    pub fn validate(&self) -> Result<(), SockJsError> {
        let prefix = self.prefix.trim_end_matches('/');
        if !(prefix.is_empty() || prefix.starts_with('/'))
            || prefix.contains(['{', '}', '*', '?', '#'])
            || prefix.contains("//")
        {
            return Err(SockJsError::InvalidPrefix(self.prefix.clone()));
        }
        for (name, zero) in [
            ("heartbeat", self.heartbeat.is_zero()),
            ("disconnect_delay", self.disconnect_delay.is_zero()),
            ("response_limit", self.response_limit == 0),
            ("max_sessions", self.max_sessions == 0),
            ("max_queued_bytes", self.max_queued_bytes == 0),
            (
                "max_incoming_message_bytes",
                self.max_incoming_message_bytes == 0,
            ),
        ] {
            if zero {
                return Err(SockJsError::ZeroSetting(name));
            }
        }
        Ok(())
    }
}

/// What a handler sends to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockJsSend {
    /// One message (delivered in an `a[...]` frame, or as one text frame on the raw WebSocket).
    Message(String),
    /// Ends the session with `c[code,"reason"]` after the messages already queued.
    Close(u16, String),
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SockJsError {
    #[error(
        "invalid SockJS prefix {0:?}: must be empty or start with '/', without '{{', '}}', '*', '?', '#' or '//'"
    )]
    InvalidPrefix(String),
    #[error("SockJS setting {0} must be greater than zero")]
    ZeroSetting(&'static str),
    /// Returned by the outbound sink once the session is closed.
    #[error("SockJS session closed")]
    SessionClosed,
}

/// Called once per new SockJS session (any transport). `inbound` yields each message the client
/// sent (already JSON-decoded, as bytes of the UTF-8 string), never an `Err`; it ends when the
/// session closes (messages received before the close are yielded first). `outbound` accepts
/// messages to deliver; it fails with [`SockJsError::SessionClosed`] (inside `io::Error`) once
/// the session is closed, and [`SockJsSend::Close`] (or closing the sink) ends the session. The
/// returned future runs for the life of the session and should return soon after `inbound`
/// ends; when it returns, the session is closed with 1000 if it is still open.
///
/// Backpressure: on the HTTP transports `outbound` waits while `max_queued_bytes` are queued
/// (and the session closes with 4429 if that lasts `disconnect_delay`). On the WebSocket
/// transports there is no queue: the future runs in the connection's task, `outbound` writes to
/// the socket and waits while the client does not read, for as long as the handler lets it
/// (bound its writes with a timeout). Poll `inbound` and `outbound` from that future, not from
/// a task of their own: the connection's heart-beats share the socket's wake-up.
pub trait SessionHandler: Clone + Send + Sync + 'static {
    fn start(
        &self,
        inbound: BoxStream<'static, std::io::Result<bytes::Bytes>>,
        outbound: Pin<Box<dyn Sink<SockJsSend, Error = std::io::Error> + Send>>,
    ) -> BoxFuture<'static, ()>;
}

/// All SockJS routes under `config.prefix`, ready to merge into the gateway's router.
///
/// # Panics
/// If `config` is invalid; call [`SockJsConfig::validate`] (or use [`try_router`]) first.
pub fn router<H: SessionHandler, S: Clone + Send + Sync + 'static>(
    config: SockJsConfig,
    handler: H,
) -> axum::Router<S> {
    match try_router(config, handler) {
        Ok(router) => router,
        Err(e) => panic!("{e}"),
    }
}

/// [`router`] that reports an invalid configuration instead of panicking.
pub fn try_router<H: SessionHandler, S: Clone + Send + Sync + 'static>(
    config: SockJsConfig,
    handler: H,
) -> Result<axum::Router<S>, SockJsError> {
    config.validate()?;
    let server = Arc::new(server::Server::new(config, handler));
    Ok(http::routes(server))
}
