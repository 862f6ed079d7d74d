//! URL dispatch and the HTTP transports (greeting, info, iframe, xhr*, eventsource, htmlfile,
//! jsonp*).

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::frame::{self, HttpFraming};
use super::server::{Server, text, too_many_sessions};
use super::session::{Attach, Attachment, ReceiverId, Session, Take};
use super::{CLOSE_MESSAGE_TOO_BIG, SessionHandler, ws};

const ONE_YEAR_SECS: u64 = 365 * 24 * 60 * 60;
const NO_CACHE: &str = "no-store, no-cache, must-revalidate, max-age=0";

/// Routes for `prefix`, `prefix/` and everything below (dispatched by hand to follow SockJS's URL
/// rules exactly: optional trailing slash, no dots in ids, 404 vs 405).
pub(crate) fn routes<H: SessionHandler, S: Clone + Send + Sync + 'static>(
    server: Arc<Server<H>>,
) -> Router<S> {
    let prefix = server.cfg.prefix.clone();
    let handler = move |req: Request| {
        let server = server.clone();
        async move { dispatch(server, req).await }
    };
    let (root, slash, rest) = if prefix.is_empty() {
        ("/".to_owned(), None, "/{*rest}".to_owned())
    } else {
        (
            prefix.clone(),
            Some(format!("{prefix}/")),
            format!("{prefix}/{{*rest}}"),
        )
    };
    let mut router = Router::new().route(&root, any(handler.clone()));
    if let Some(slash) = slash {
        router = router.route(&slash, any(handler.clone()));
    }
    router.route(&rest, any(handler))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Xhr,
    XhrSend,
    XhrStreaming,
    EventSource,
    HtmlFile,
    Jsonp,
    JsonpSend,
}

impl Transport {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "websocket" => Self::WebSocket,
            "xhr" => Self::Xhr,
            "xhr_send" => Self::XhrSend,
            "xhr_streaming" => Self::XhrStreaming,
            "eventsource" => Self::EventSource,
            "htmlfile" => Self::HtmlFile,
            "jsonp" => Self::Jsonp,
            "jsonp_send" => Self::JsonpSend,
            _ => return None,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Greeting,
    Info,
    Iframe,
    RawWebSocket,
    Session {
        session: &'a str,
        transport: Transport,
    },
}

impl Route<'_> {
    fn methods(&self) -> &'static [Method] {
        const GET: &[Method] = &[Method::GET];
        const GET_OPTIONS: &[Method] = &[Method::GET, Method::OPTIONS];
        const POST: &[Method] = &[Method::POST];
        const POST_OPTIONS: &[Method] = &[Method::POST, Method::OPTIONS];
        match self {
            Route::Greeting | Route::Iframe | Route::RawWebSocket => GET,
            Route::Info => GET_OPTIONS,
            Route::Session { transport, .. } => match transport {
                Transport::Xhr | Transport::XhrSend | Transport::XhrStreaming => POST_OPTIONS,
                Transport::JsonpSend => POST,
                Transport::WebSocket
                | Transport::EventSource
                | Transport::HtmlFile
                | Transport::Jsonp => GET,
            },
        }
    }
}

/// `<server>` and `<session>`: any non-empty segment without dots (sockjs-node `[^/.]+`).
fn valid_id(s: &str) -> bool {
    !s.is_empty() && !s.contains('.')
}

/// `iframe[0-9-.a-z_]*.html`.
fn is_iframe(name: &str) -> bool {
    name.strip_prefix("iframe")
        .and_then(|n| n.strip_suffix(".html"))
        .is_some_and(|mid| {
            mid.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"-._".contains(&b))
        })
}

/// `rest` is the path after the prefix. Every route takes one optional trailing slash.
fn parse_route(rest: &str) -> Option<Route<'_>> {
    if rest.is_empty() || rest == "/" {
        return Some(Route::Greeting);
    }
    let body = rest.strip_prefix('/')?;
    let core = body.strip_suffix('/').unwrap_or(body);
    if core.is_empty() {
        return None;
    }
    let parts: Vec<&str> = core.split('/').collect();
    match parts.as_slice() {
        ["info"] => Some(Route::Info),
        ["websocket"] => Some(Route::RawWebSocket),
        [name] if is_iframe(name) => Some(Route::Iframe),
        [server, session, transport] if valid_id(server) && valid_id(session) => {
            Some(Route::Session {
                session,
                transport: Transport::parse(transport)?,
            })
        }
        _ => None,
    }
}

pub(crate) fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "404 Error: Page not found\n")
}

pub(crate) fn forbidden_origin() -> Response {
    text(StatusCode::FORBIDDEN, "Origin not allowed.\n")
}

fn method_not_allowed(methods: &[Method]) -> Response {
    let allow = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
    if let Ok(v) = HeaderValue::from_str(&allow) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// Which of sockjs-node's header filters apply to a response.
#[derive(Default, Clone, Copy)]
struct Decor {
    cors: bool,
    no_cache: bool,
    cache_for_year: bool,
    cookie: bool,
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

fn decorate(resp: &mut Response, req: &HeaderMap, decor: Decor, jsessionid: bool) {
    let headers = resp.headers_mut();
    if decor.cors {
        // Echo the origin (credentials need it); `null` (file://) must get `*`.
        let origin = req
            .get(header::ORIGIN)
            .filter(|o| !o.is_empty() && o.as_bytes() != b"null")
            .cloned()
            .unwrap_or(HeaderValue::from_static("*"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(h) = req
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .filter(|h| !h.is_empty())
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
        }
    }
    if decor.no_cache {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    }
    if decor.cache_for_year {
        set(
            headers,
            header::CACHE_CONTROL,
            &format!("public, max-age={ONE_YEAR_SECS}"),
        );
        let expires = SystemTime::now() + Duration::from_secs(ONE_YEAR_SECS);
        set(headers, header::EXPIRES, &httpdate::fmt_http_date(expires));
    }
    if decor.cookie && jsessionid {
        // Set on every request so a load balancer can attach its own value.
        let value = jsessionid_cookie(req).unwrap_or_else(|| "dummy".to_owned());
        set(
            headers,
            header::SET_COOKIE,
            &format!("JSESSIONID={value}; path=/"),
        );
    }
}

fn jsessionid_cookie(req: &HeaderMap) -> Option<String> {
    req.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.split_once('='))
        .find(|(name, _)| name.trim() == "JSESSIONID")
        .map(|(_, value)| value.trim().to_owned())
        // Echo only a plain cookie value; anything else could inject attributes.
        .filter(|v| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_graphic() && !b",;\\\"".contains(&b))
        })
}

async fn dispatch<H: SessionHandler>(server: Arc<Server<H>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(server.cfg.prefix.as_str()) else {
        return not_found();
    };
    let Some(route) = parse_route(rest) else {
        return not_found();
    };
    let ws_route = matches!(
        route,
        Route::RawWebSocket
            | Route::Session {
                transport: Transport::WebSocket,
                ..
            }
    );
    if ws_route && !server.cfg.websocket_enabled {
        return not_found();
    }
    let methods = route.methods();
    if !methods.contains(req.method()) {
        return method_not_allowed(methods);
    }
    let req_headers = req.headers().clone();
    if !matches!(route, Route::Greeting | Route::Iframe) && !server.origin_allowed(&req_headers) {
        return forbidden_origin();
    }
    let options = req.method() == Method::OPTIONS;
    let (mut resp, decor) = match route {
        Route::Greeting => (
            text(StatusCode::OK, "Welcome to SockJS!\n"),
            Decor::default(),
        ),
        Route::Iframe => return iframe(&server, &req_headers),
        Route::Info if options => (
            preflight("OPTIONS, GET"),
            Decor {
                cors: true,
                cache_for_year: true,
                ..Decor::default()
            },
        ),
        Route::Info => (
            info(&server),
            Decor {
                cors: true,
                no_cache: true,
                ..Decor::default()
            },
        ),
        Route::RawWebSocket => return ws::upgrade(server, req, true).await,
        Route::Session { session, transport } => {
            let session = session.to_owned();
            // Every transport answers cross-origin requests, as sockjs-node's eventsource and
            // Spring's SockJS service do: the page usually comes from another origin than
            // the gateway's (an EventSource is refused by the browser without it).
            let decor = Decor {
                cors: true,
                no_cache: true,
                cookie: true,
                ..Decor::default()
            };
            match transport {
                Transport::WebSocket => return ws::upgrade(server, req, false).await,
                Transport::Xhr | Transport::XhrSend | Transport::XhrStreaming if options => (
                    preflight("OPTIONS, POST"),
                    Decor {
                        cors: true,
                        cache_for_year: true,
                        cookie: true,
                        ..Decor::default()
                    },
                ),
                Transport::Xhr => (receiver(&server, &session, HttpFraming::XhrPolling), decor),
                Transport::XhrStreaming => (
                    receiver(&server, &session, HttpFraming::XhrStreaming),
                    decor,
                ),
                Transport::XhrSend => (send(&server, &session, req, false).await, decor),
                Transport::JsonpSend => (send(&server, &session, req, true).await, decor),
                Transport::EventSource => {
                    (receiver(&server, &session, HttpFraming::EventSource), decor)
                }
                Transport::HtmlFile | Transport::Jsonp => {
                    let resp = match callback(&req) {
                        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
                        Ok(callback) if transport == Transport::Jsonp => {
                            let mut resp =
                                receiver(&server, &session, HttpFraming::Jsonp { callback });
                            // Script content served as such: no MIME sniffing (SWF JSONP abuse).
                            resp.headers_mut().insert(
                                header::X_CONTENT_TYPE_OPTIONS,
                                HeaderValue::from_static("nosniff"),
                            );
                            resp
                        }
                        Ok(callback) => {
                            receiver(&server, &session, HttpFraming::HtmlFile { callback })
                        }
                    };
                    (resp, decor)
                }
            }
        }
    };
    decorate(&mut resp, &req_headers, decor, server.cfg.jsessionid);
    resp
}

fn preflight(methods: &'static str) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    headers.insert(header::ALLOW, HeaderValue::from_static(methods));
    set(
        headers,
        header::ACCESS_CONTROL_MAX_AGE,
        &ONE_YEAR_SECS.to_string(),
    );
    resp
}

fn info<H>(server: &Server<H>) -> Response {
    let body = serde_json::json!({
        "websocket": server.cfg.websocket_enabled,
        "origins": ["*:*"],
        "cookie_needed": server.cfg.jsessionid,
        "entropy": rand::random::<u32>(),
    });
    (
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn iframe<H>(server: &Server<H>, req: &HeaderMap) -> Response {
    let (page, etag) = &server.iframe;
    let decor = Decor {
        cache_for_year: true,
        ..Decor::default()
    };
    let mut resp = if req
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
            page.clone(),
        )
            .into_response()
    };
    set(resp.headers_mut(), header::ETAG, etag);
    decorate(&mut resp, req, decor, false);
    resp
}

/// The `c` (or `callback`) query parameter of jsonp/htmlfile, or the error to answer with 500.
fn callback(req: &Request) -> Result<String, &'static str> {
    let query = req.uri().query().unwrap_or_default();
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let value = pairs
        .iter()
        .find(|(k, _)| k == "c")
        .or_else(|| pairs.iter().find(|(k, _)| k == "callback"))
        .map(|(_, v)| v.clone());
    match value {
        None => Err("\"callback\" parameter required"),
        Some(v) if !frame::valid_callback(&v) => Err("invalid \"callback\" parameter"),
        Some(v) => Ok(v),
    }
}

fn full_response(framing: &HttpFraming, frames: &[String]) -> Response {
    let mut body = framing.prelude().unwrap_or_default();
    for f in frames {
        body.push_str(&framing.wrap(f));
    }
    ([(header::CONTENT_TYPE, framing.content_type())], body).into_response()
}

/// A receiving request: polls or streams the session's frames.
fn receiver<H: SessionHandler>(server: &Server<H>, key: &str, framing: HttpFraming) -> Response {
    let Ok(session) = server.session(key) else {
        return too_many_sessions();
    };
    match session.attach() {
        Attach::Busy => full_response(
            &framing,
            &[frame::close_frame(2010, "Another connection still open")],
        ),
        Attach::Closed { data, code, reason } => {
            let mut frames = Vec::new();
            if !data.is_empty() {
                frames.push(frame::array_frame(&data));
            }
            // A polling response carries one frame; the close frame comes with the next poll.
            if frames.is_empty() || !framing.polling() {
                frames.push(frame::close_frame(code, &reason));
            }
            full_response(&framing, &frames)
        }
        Attach::Attached { rid, open } => {
            // Capacity 1: frames leave the session queue only as fast as the client reads.
            let (tx, rx) = mpsc::channel(1);
            let content_type = framing.content_type();
            tokio::spawn(pump(
                session,
                rid,
                open,
                framing,
                tx,
                server.cfg.heartbeat,
                server.cfg.response_limit,
            ));
            let mut resp = Response::new(Body::from_stream(ReceiverStream::new(rx)));
            let headers = resp.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            // Reverse proxies (nginx ingress) must not buffer a streaming response.
            headers.insert(
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            );
            resp
        }
    }
}

/// Moves frames from the session into one HTTP response until the response is done: after one
/// frame when polling, after `response_limit` bytes of frames when streaming, or at close.
async fn pump(
    session: Arc<Session>,
    rid: ReceiverId,
    open: bool,
    framing: HttpFraming,
    tx: mpsc::Sender<io::Result<Bytes>>,
    heartbeat: Duration,
    response_limit: usize,
) {
    let mut attachment = Attachment::new(session.clone(), rid.id);
    let send = |chunk: String| {
        let (tx, kick) = (&tx, &rid.kick);
        async move {
            tokio::select! {
                biased;
                _ = kick.cancelled() => false,
                sent = tx.send(Ok(Bytes::from(chunk))) => sent.is_ok(),
            }
        }
    };
    if let Some(prelude) = framing.prelude()
        && !send(prelude).await
    {
        return;
    }
    let mut written = 0usize;
    let mut next = open.then(|| frame::OPEN.to_owned());
    loop {
        let frame = match next.take() {
            Some(frame) => frame,
            None => match session.take(rid.id, response_limit) {
                Take::Messages(messages) => frame::array_frame(&messages),
                Take::Closed { code, reason } => {
                    attachment.finish();
                    send(framing.wrap(&frame::close_frame(code, &reason))).await;
                    return;
                }
                Take::Gone => return,
                Take::Empty => {
                    tokio::select! {
                        _ = session.changed() => continue,
                        _ = tokio::time::sleep(heartbeat) => frame::HEARTBEAT.to_owned(),
                        // The client went away: the attachment's drop interrupts the session.
                        _ = tx.closed() => return,
                        _ = rid.kick.cancelled() => return,
                    }
                }
            },
        };
        let chunk = framing.wrap(&frame);
        written += chunk.len();
        if framing.polling() || written >= response_limit {
            attachment.finish();
            send(chunk).await;
            return;
        }
        if !send(chunk).await {
            return;
        }
    }
}

/// `xhr_send` and `jsonp_send`.
async fn send<H: SessionHandler>(
    server: &Server<H>,
    key: &str,
    req: Request,
    jsonp: bool,
) -> Response {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let Ok(body) = axum::body::to_bytes(req.into_body(), server.raw_limit).await else {
        if let Some(session) = server.registry.get(key) {
            session.close(CLOSE_MESSAGE_TOO_BIG, "Message too big", false);
        }
        return text(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large.");
    };
    let payload = if jsonp && content_type == "application/x-www-form-urlencoded" {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == "d")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(s) => s,
            Err(_) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    frame::BadPayload::BrokenJson.message(),
                );
            }
        }
    };
    let messages = match frame::decode_messages(&payload, false) {
        Ok(m) => m,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
    };
    let Some(session) = server.registry.get(key) else {
        return not_found();
    };
    if messages
        .iter()
        .any(|m| m.len() > server.cfg.max_incoming_message_bytes)
    {
        session.close(CLOSE_MESSAGE_TOO_BIG, "Message too big", false);
        return text(StatusCode::PAYLOAD_TOO_LARGE, "Message too big.");
    }
    session.deliver(messages).await;
    if jsonp {
        // Konqueror mishandles 204, hence a body.
        text(StatusCode::OK, "ok")
    } else {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        // Firefox assumes XML without a content type and logs a parse error.
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=UTF-8"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_sockjs_url_rules() {
        assert_eq!(parse_route(""), Some(Route::Greeting));
        assert_eq!(parse_route("/"), Some(Route::Greeting));
        assert_eq!(parse_route("/info"), Some(Route::Info));
        assert_eq!(parse_route("/info/"), Some(Route::Info));
        assert_eq!(parse_route("/websocket"), Some(Route::RawWebSocket));
        for ok in [
            "/iframe.html",
            "/iframe-0.1.2abc-dirty.2144.html",
            "/iframe-.html",
        ] {
            assert_eq!(parse_route(ok), Some(Route::Iframe), "{ok}");
        }
        for bad in [
            "/iframe.htm",
            "/iframe",
            "/IFRAME.HTML",
            "/iframe.HTML",
            "/iframe-/.html",
            "//",
            "///",
            "/a",
            "/a/a",
            "/a/a/",
            "//xhr",
            "/a./a/xhr",
            "/a/a./xhr",
            "/./././xhr",
            "///xhr",
            "/a/a/bogus",
            "/a/a/xhr//",
        ] {
            assert_eq!(parse_route(bad), None, "{bad}");
        }
        assert_eq!(
            parse_route("/000/abc/xhr_send/"),
            Some(Route::Session {
                session: "abc",
                transport: Transport::XhrSend
            })
        );
    }
}
