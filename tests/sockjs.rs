//! SockJS server tests: the router on 127.0.0.1:0 with an echo handler, spoken to over raw HTTP/1.1
//! (a small client below, so streaming chunks and exact headers are visible) and over WebSocket
//! (tokio-tungstenite). Modelled on sockjs-protocol-0.3.3.py.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Sink, SinkExt, StreamExt};
use stompgate::sockjs::{self, SessionHandler, SockJsConfig, SockJsSend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Handlers and server
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Started,
    Ended,
}

type Outbound = std::pin::Pin<Box<dyn Sink<SockJsSend, Error = std::io::Error> + Send>>;

/// Echoes every message; "close" closes the session with 3000 "Go away!".
#[derive(Clone)]
struct Echo {
    events: mpsc::UnboundedSender<Event>,
}

impl SessionHandler for Echo {
    fn start(
        &self,
        mut inbound: BoxStream<'static, std::io::Result<bytes::Bytes>>,
        mut outbound: Outbound,
    ) -> BoxFuture<'static, ()> {
        let events = self.events.clone();
        async move {
            let _ = events.send(Event::Started);
            while let Some(Ok(m)) = inbound.next().await {
                let text = String::from_utf8_lossy(&m).into_owned();
                if text == "close" {
                    let _ = outbound
                        .send(SockJsSend::Close(3000, "Go away!".into()))
                        .await;
                    break;
                }
                if outbound.send(SockJsSend::Message(text)).await.is_err() {
                    break;
                }
            }
            let _ = events.send(Event::Ended);
        }
        .boxed()
    }
}

/// Sends `size`-byte messages as fast as the sink accepts them.
#[derive(Clone)]
struct Flood {
    size: usize,
    accepted: Arc<AtomicUsize>,
    events: mpsc::UnboundedSender<Event>,
}

impl SessionHandler for Flood {
    fn start(
        &self,
        mut inbound: BoxStream<'static, std::io::Result<bytes::Bytes>>,
        mut outbound: Outbound,
    ) -> BoxFuture<'static, ()> {
        let this = self.clone();
        async move {
            let _ = this.events.send(Event::Started);
            let mut n = 0usize;
            loop {
                // A 10-digit sequence number, padded to `size` bytes.
                let msg = format!("{n:010}{}", "x".repeat(this.size.saturating_sub(10)));
                if outbound.send(SockJsSend::Message(msg)).await.is_err() {
                    break;
                }
                n += 1;
                this.accepted.fetch_add(1, Ordering::SeqCst);
            }
            // The sink failed because the session closed: inbound must have ended too.
            assert!(inbound.next().await.is_none());
            let _ = this.events.send(Event::Ended);
        }
        .boxed()
    }
}

type Inbound = BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// A handler made of a function of the session's inbound and outbound.
#[derive(Clone)]
struct FromFn<F>(F);

impl<F> SessionHandler for FromFn<F>
where
    F: Fn(Inbound, Outbound) -> BoxFuture<'static, ()> + Clone + Send + Sync + 'static,
{
    fn start(&self, inbound: Inbound, outbound: Outbound) -> BoxFuture<'static, ()> {
        (self.0)(inbound, outbound)
    }
}

fn config() -> SockJsConfig {
    SockJsConfig {
        sockjs_client_url: "http://localhost/sockjs.js".into(),
        ..SockJsConfig::default()
    }
}

async fn serve<H: SessionHandler>(config: SockJsConfig, handler: H) -> SocketAddr {
    let app: axum::Router = sockjs::router(config, handler);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn start(config: SockJsConfig) -> (SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (serve(config, Echo { events: tx }).await, rx)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    timeout(WAIT, events.recv())
        .await
        .expect("event in time")
        .expect("event channel open")
}

fn session_url() -> String {
    format!("/stomp/000/{}", uuid::Uuid::new_v4())
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: exact headers, incremental body (chunked or sized), no pooling.
// ---------------------------------------------------------------------------------------------

enum Mode {
    Length(usize),
    Chunked,
    UntilClose,
}

struct Conn {
    stream: TcpStream,
    raw: Vec<u8>,
    status: u16,
    headers: Vec<(String, String)>,
    mode: Mode,
    body: Vec<u8>,
    done: bool,
    eof: bool,
}

impl Conn {
    async fn open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Conn {
        let mut stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if method == "POST" || !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        stream.write_all(&bytes).await.expect("write request");
        let mut conn = Conn {
            stream,
            raw: Vec::new(),
            status: 0,
            headers: Vec::new(),
            mode: Mode::UntilClose,
            body: Vec::new(),
            done: false,
            eof: false,
        };
        let end = loop {
            if let Some(i) = conn.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(conn.fill().await, "connection closed before response head");
        };
        let head = String::from_utf8(conn.raw[..end].to_vec()).expect("utf-8 head");
        conn.raw.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        conn.status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                conn.headers
                    .push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        conn.mode = if conn.header("transfer-encoding").is_some() {
            Mode::Chunked
        } else if let Some(n) = conn.header("content-length") {
            Mode::Length(n.parse().expect("content-length"))
        } else {
            Mode::UntilClose
        };
        if matches!(conn.status, 204 | 304) || method == "HEAD" {
            conn.done = true;
        }
        conn.decode();
        conn
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k == name).count()
    }

    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let n = timeout(WAIT, self.stream.read(&mut buf))
            .await
            .expect("read in time")
            .unwrap_or(0);
        if n == 0 {
            self.eof = true;
            return false;
        }
        self.raw.extend_from_slice(&buf[..n]);
        true
    }

    /// Moves decoded body bytes from `raw` to `body`.
    fn decode(&mut self) {
        if self.done {
            return;
        }
        match &mut self.mode {
            Mode::Length(left) => {
                let n = (*left).min(self.raw.len());
                self.body.extend(self.raw.drain(..n));
                *left -= n;
                if *left == 0 {
                    self.done = true;
                }
            }
            Mode::UntilClose => {
                self.body.append(&mut self.raw);
                if self.eof {
                    self.done = true;
                }
            }
            Mode::Chunked => loop {
                let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                    return;
                };
                let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .expect("chunk size");
                if size == 0 {
                    self.done = true;
                    return;
                }
                if self.raw.len() < line_end + 2 + size + 2 {
                    return;
                }
                let start = line_end + 2;
                self.body.extend_from_slice(&self.raw[start..start + size]);
                self.raw.drain(..start + size + 2);
            },
        }
    }

    /// Reads until at least `n` body bytes are buffered or the body ends.
    async fn want(&mut self, n: usize) {
        while self.body.len() < n && !self.done {
            let more = self.fill().await;
            self.decode();
            if !more {
                self.done = true;
            }
        }
    }

    /// The next body bytes must be `expected`.
    async fn expect(&mut self, expected: &str) {
        self.want(expected.len()).await;
        let got =
            String::from_utf8_lossy(&self.body[..self.body.len().min(expected.len())]).into_owned();
        assert_eq!(got, expected);
        self.body.drain(..expected.len());
    }

    /// Reads up to and including the next `delim`.
    async fn read_until(&mut self, delim: &str) -> String {
        loop {
            if let Some(i) = self
                .body
                .windows(delim.len())
                .position(|w| w == delim.as_bytes())
            {
                let out: Vec<u8> = self.body.drain(..i + delim.len()).collect();
                return String::from_utf8(out).expect("utf-8 body");
            }
            assert!(!self.done, "body ended before {delim:?}");
            let more = self.fill().await;
            self.decode();
            if !more {
                self.done = true;
            }
        }
    }

    /// The body must end here.
    async fn expect_end(&mut self) {
        self.want(usize::MAX).await;
        assert!(
            self.body.is_empty(),
            "unexpected body: {:?}",
            String::from_utf8_lossy(&self.body)
        );
    }

    async fn text(mut self) -> String {
        self.want(usize::MAX).await;
        String::from_utf8(std::mem::take(&mut self.body)).expect("utf-8 body")
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn content_type(&self) -> String {
        self.header("content-type").unwrap_or("").replace(' ', "")
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let conn = Conn::open(addr, method, path, headers, body.as_bytes()).await;
    let (status, headers) = (conn.status, conn.headers.clone());
    Resp {
        status,
        headers,
        body: conn.text().await,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], "").await
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> Resp {
    request(addr, "POST", path, &[], body).await
}

fn verify_cors(r: &Resp, origin: Option<&str>) {
    let expected = match origin {
        Some(o) if o != "null" => o,
        _ => "*",
    };
    assert_eq!(r.header("access-control-allow-origin"), Some(expected));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
}

fn verify_not_cached(r: &Resp) {
    assert_eq!(
        r.header("cache-control"),
        Some("no-store, no-cache, must-revalidate, max-age=0")
    );
    assert!(r.header("expires").is_none());
    assert!(r.header("last-modified").is_none());
}

fn verify_405(r: &Resp) {
    assert_eq!(r.status, 405);
    assert!(r.header("content-type").is_none());
    assert!(r.header("allow").is_some_and(|a| !a.is_empty()));
    assert!(r.body.is_empty());
}

async fn open_session(addr: SocketAddr) -> String {
    let url = session_url();
    let r = post(addr, &format!("{url}/xhr"), "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "o\n"));
    url
}

async fn ws_connect(
    addr: SocketAddr,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (ws, _) = timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .expect("ws connect in time")
    .expect("ws connect");
    ws
}

async fn ws_recv<S>(ws: &mut S) -> Option<WsMessage>
where
    S: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match timeout(WAIT, ws.next()).await.expect("ws message in time") {
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

async fn ws_text<S>(ws: &mut S) -> String
where
    S: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    match ws_recv(ws).await {
        Some(WsMessage::Text(t)) => t.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The connection must end (close frame or EOF) without further data frames.
async fn ws_expect_closed<S>(ws: &mut S)
where
    S: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    match ws_recv(ws).await {
        None | Some(WsMessage::Close(_)) => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Static URLs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn greeting() {
    let (addr, _) = start(config()).await;
    for url in ["/stomp", "/stomp/"] {
        let r = get(addr, url).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type(), "text/plain;charset=UTF-8");
        assert_eq!(r.body, "Welcome to SockJS!\n");
        assert!(r.header("set-cookie").is_none());
    }
    verify_405(&post(addr, "/stomp", "").await);
}

#[tokio::test]
async fn unknown_paths_and_bad_ids_are_404() {
    let (addr, _) = start(config()).await;
    for suffix in [
        "/a",
        "/a.html",
        "//",
        "///",
        "/a/a",
        "/a/a/",
        "/a/",
        "/000/abc/bogus",
    ] {
        assert_eq!(
            get(addr, &format!("/stomp{suffix}")).await.status,
            404,
            "{suffix}"
        );
    }
    for ids in ["//", "/a./a", "/a/a.", "/./.", "/", "///"] {
        let url = format!("/stomp{ids}/xhr");
        assert_eq!(get(addr, &url).await.status, 404, "GET {url}");
        assert_eq!(post(addr, &url, "").await.status, 404, "POST {url}");
    }
    // Anything else in the ids is fine.
    for ids in ["/a/a", "/_/_", "/1/1", "/abcdefgh_i-j%20/abcdefg_i-j%20"] {
        let r = post(addr, &format!("/stomp{ids}/xhr"), "").await;
        assert_eq!((r.status, r.body.as_str()), (200, "o\n"), "{ids}");
    }
    // Known path, wrong method.
    let r = get(addr, "/stomp/000/abc/xhr").await;
    verify_405(&r);
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    verify_405(&post(addr, "/stomp/000/abc/websocket", "").await);
    verify_405(&post(addr, "/stomp/info", "").await);
}

#[tokio::test]
async fn info_cors_and_entropy() {
    let (addr, _) = start(config()).await;
    let r = get(addr, "/stomp/info").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "application/json;charset=UTF-8");
    assert!(r.header("set-cookie").is_none());
    verify_not_cached(&r);
    verify_cors(&r, None);
    let info: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(info["websocket"], true);
    assert_eq!(info["cookie_needed"], false);
    assert_eq!(info["origins"], serde_json::json!(["*:*"]));
    let e1 = info["entropy"].as_u64().expect("entropy");
    let r2 = get(addr, "/stomp/info").await;
    let info2: serde_json::Value = serde_json::from_str(&r2.body).expect("json");
    assert_ne!(Some(e1), info2["entropy"].as_u64());

    let r = request(
        addr,
        "GET",
        "/stomp/info",
        &[("Origin", "http://example.com")],
        "",
    )
    .await;
    verify_cors(&r, Some("http://example.com"));
    let r = request(addr, "GET", "/stomp/info", &[("Origin", "null")], "").await;
    verify_cors(&r, None);

    let (addr, _) = start(SockJsConfig {
        websocket_enabled: false,
        ..config()
    })
    .await;
    let info: serde_json::Value =
        serde_json::from_str(&get(addr, "/stomp/info").await.body).expect("json");
    assert_eq!(info["websocket"], false);
    assert_eq!(get(addr, "/stomp/websocket").await.status, 404);
    assert_eq!(get(addr, "/stomp/000/abc/websocket").await.status, 404);
}

#[tokio::test]
async fn preflight_options() {
    let (addr, _) = start(config()).await;
    let cases = [
        ("/stomp/info", "OPTIONS, GET"),
        ("/stomp/abc/abc/xhr", "OPTIONS, POST"),
        ("/stomp/abc/abc/xhr_send", "OPTIONS, POST"),
        ("/stomp/abc/abc/xhr_streaming", "OPTIONS, POST"),
    ];
    for (url, methods) in cases {
        for origin in [None, Some("test"), Some("null")] {
            let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
            let r = request(addr, "OPTIONS", url, &headers, "").await;
            assert_eq!(r.status, 204, "{url}");
            let cc = r.header("cache-control").unwrap_or_default();
            assert!(
                cc.contains("public") && cc.contains("max-age=31536000"),
                "{cc}"
            );
            assert!(r.header("expires").is_some());
            let max_age: u64 = r
                .header("access-control-max-age")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!(max_age > 1_000_000);
            assert_eq!(r.header("access-control-allow-methods"), Some(methods));
            assert!(r.body.is_empty());
            verify_cors(&r, origin);
        }
    }
    // CORS request headers are echoed, empty ones are not.
    let r = request(
        addr,
        "OPTIONS",
        "/stomp/abc/abc/xhr",
        &[("Access-Control-Request-Headers", "a, b, c")],
        "",
    )
    .await;
    assert_eq!(r.header("access-control-allow-headers"), Some("a, b, c"));
    let r = request(
        addr,
        "POST",
        &format!("{}/xhr", session_url()),
        &[("Access-Control-Request-Headers", "")],
        "",
    )
    .await;
    assert!(r.header("access-control-allow-headers").is_none());
}

#[tokio::test]
async fn iframe_page_etag_and_304() {
    let (addr, _) = start(config()).await;
    let expected = r#"<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script>
    document.domain = document.domain;
    _sockjs_onload = function(){SockJS.bootstrap_iframe();};
  </script>
  <script src="http://localhost/sockjs.js"></script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"#;
    let mut etag = None;
    for suffix in [
        "/iframe.html",
        "/iframe-a.html",
        "/iframe-.html",
        "/iframe-0.1.2.html",
        "/iframe-0.1.2abc-dirty.2144.html",
        "/iframe-a.html?t=1234",
        "/iframe-0.1.2.html?t=123414",
    ] {
        let r = get(addr, &format!("/stomp{suffix}")).await;
        assert_eq!(r.status, 200, "{suffix}");
        assert_eq!(r.content_type(), "text/html;charset=UTF-8");
        let cc = r.header("cache-control").unwrap_or_default();
        assert!(cc.contains("public") && cc.contains("max-age=31536000"));
        assert!(r.header("expires").is_some());
        assert!(r.header("last-modified").is_none());
        assert!(r.header("set-cookie").is_none());
        assert_eq!(r.body.trim(), expected);
        let tag = r.header("etag").expect("etag").to_owned();
        assert_eq!(*etag.get_or_insert_with(|| tag.clone()), tag);
    }
    for suffix in [
        "/iframe.htm",
        "/iframe",
        "/IFRAME.HTML",
        "/IFRAME",
        "/iframe.HTML",
        "/iframe.xml",
        "/iframe-/.html",
    ] {
        assert_eq!(
            get(addr, &format!("/stomp{suffix}")).await.status,
            404,
            "{suffix}"
        );
    }
    let tag = etag.expect("etag seen");
    let r = request(
        addr,
        "GET",
        "/stomp/iframe.html",
        &[("If-None-Match", &tag)],
        "",
    )
    .await;
    assert_eq!(r.status, 304);
    assert!(r.header("content-type").is_none());
    assert!(r.body.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn xhr_polling_framing() {
    let (addr, _) = start(config()).await;
    let url = session_url();
    let r = post(addr, &format!("{url}/xhr"), "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "o\n"));
    assert_eq!(r.content_type(), "application/javascript;charset=UTF-8");
    verify_cors(&r, None);
    verify_not_cached(&r);
    assert!(r.header("set-cookie").is_none());

    let r = post(addr, &format!("{url}/xhr_send"), r#"["x"]"#).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.content_type(), "text/plain;charset=UTF-8");
    verify_cors(&r, None);
    verify_not_cached(&r);

    let r = post(addr, &format!("{url}/xhr"), "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "a[\"x\"]\n"));

    // Any content type is accepted.
    let types = [
        "text/plain",
        "T",
        "application/json",
        "application/xml",
        "",
        "application/json; charset=utf-8",
        "text/xml; charset=utf-8",
        "text/xml",
    ];
    for ct in types {
        let r = request(
            addr,
            "POST",
            &format!("{url}/xhr_send"),
            &[("Content-Type", ct)],
            r#"["a"]"#,
        )
        .await;
        assert_eq!(r.status, 204, "{ct}");
    }
    let r = post(addr, &format!("{url}/xhr"), "").await;
    let expected = format!("a[{}]\n", vec!["\"a\""; types.len()].join(","));
    assert_eq!(r.body, expected);

    // Closing: the close frame is served to every later poll.
    post(addr, &format!("{url}/xhr_send"), r#"["close"]"#).await;
    for _ in 0..2 {
        let r = post(addr, &format!("{url}/xhr"), "").await;
        assert_eq!(r.body, "c[3000,\"Go away!\"]\n");
    }
}

#[tokio::test]
async fn xhr_send_errors() {
    let (addr, _) = start(config()).await;
    // Unknown session.
    let r = post(addr, &format!("{}/xhr_send", session_url()), r#"["x"]"#).await;
    assert_eq!(r.status, 404);
    let r = post(addr, "/stomp/000/bad_session/xhr_send", r#"["x"]"#).await;
    assert_eq!(r.status, 404);

    let url = open_session(addr).await;
    let send = format!("{url}/xhr_send");
    let r = post(addr, &send, r#"["x"#).await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("Broken JSON encoding."));
    verify_cors(&r, None);
    for body in ["", r#""x""#, "{}", "[1]"] {
        let r = post(addr, &send, body).await;
        assert_eq!(r.status, 500, "{body}");
        assert!(r.body.contains("Payload expected."), "{body}");
    }
    let r = post(addr, &send, r#"["a"]"#).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = post(addr, &format!("{url}/xhr"), "").await;
    assert_eq!(r.body, "a[\"a\"]\n");
}

#[tokio::test]
async fn session_is_reused_across_polls_and_server_ids() {
    let (addr, mut events) = start(config()).await;
    let id = uuid::Uuid::new_v4();
    let r = post(addr, &format!("/stomp/000/{id}/xhr"), "").await;
    assert_eq!(r.body, "o\n");
    assert_eq!(next_event(&mut events).await, Event::Started);
    for i in 0..3 {
        let msg = format!("m{i}");
        let r = post(
            addr,
            &format!("/stomp/{i}{i}{i}/{id}/xhr_send"),
            &format!("[\"{msg}\"]"),
        )
        .await;
        assert_eq!(r.status, 204);
        let r = post(addr, &format!("/stomp/999/{id}/xhr"), "").await;
        assert_eq!(r.body, format!("a[\"{msg}\"]\n"));
    }
    // Still one session: no second handler started.
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn second_receiver_gets_2010() {
    let (addr, _) = start(config()).await;
    let url = open_session(addr).await;
    // A long poll is waiting...
    let mut first = Conn::open(addr, "POST", &format!("{url}/xhr"), &[], b"").await;
    assert_eq!(first.status, 200);
    // ...so a second one is refused, without disturbing the session.
    let r = post(addr, &format!("{url}/xhr"), "").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "c[2010,\"Another connection still open\"]\n")
    );
    post(addr, &format!("{url}/xhr_send"), r#"["x"]"#).await;
    first.expect("a[\"x\"]\n").await;
    first.expect_end().await;

    // Same for streaming: prelude, the close frame, end of response.
    let mut stream = Conn::open(addr, "POST", &format!("{url}/xhr_streaming"), &[], b"").await;
    stream.read_until("\n").await;
    let mut second = Conn::open(addr, "POST", &format!("{url}/xhr_streaming"), &[], b"").await;
    second.expect(&format!("{}\n", "h".repeat(2048))).await;
    second
        .expect("c[2010,\"Another connection still open\"]\n")
        .await;
    second.expect_end().await;
    post(addr, &format!("{url}/xhr_send"), r#"["y"]"#).await;
    stream.expect("a[\"y\"]\n").await;
}

#[tokio::test]
async fn jsonp_polling() {
    let (addr, _) = start(config()).await;
    let url = session_url();
    let r = get(addr, &format!("{url}/jsonp?c=%63allback")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "callback(\"o\");\r\n"));
    assert_eq!(r.content_type(), "application/javascript;charset=UTF-8");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    verify_not_cached(&r);

    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = request(
        addr,
        "POST",
        &format!("{url}/jsonp_send"),
        &form,
        "d=%5B%22x%22%5D",
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(r.content_type(), "text/plain;charset=UTF-8");
    verify_not_cached(&r);
    let r = get(addr, &format!("{url}/jsonp?c=%63allback")).await;
    assert_eq!(r.body, "callback(\"a[\\\"x\\\"]\");\r\n");

    // Errors.
    let r = request(
        addr,
        "POST",
        &format!("{url}/jsonp_send"),
        &form,
        "d=%5B%22x",
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("Broken JSON encoding."));
    for body in ["", "d=", "p=p"] {
        let r = request(addr, "POST", &format!("{url}/jsonp_send"), &form, body).await;
        assert_eq!(r.status, 500, "{body}");
        assert!(r.body.contains("Payload expected."), "{body}");
    }
    for path in ["jsonp", "htmlfile"] {
        let r = get(addr, &format!("/stomp/a/a/{path}")).await;
        assert_eq!(r.status, 500);
        assert!(r.body.contains("\"callback\" parameter required"));
        let r = get(addr, &format!("/stomp/a/a/{path}?c=alert(1)")).await;
        assert_eq!(r.status, 500);
        assert!(r.body.contains("invalid \"callback\" parameter"));
    }

    // Form and raw bodies.
    let r = request(
        addr,
        "POST",
        &format!("{url}/jsonp_send"),
        &form,
        "d=%5B%22abc%22%5D",
    )
    .await;
    assert_eq!(r.body, "ok");
    let plain = [("Content-Type", "text/plain")];
    let r = request(
        addr,
        "POST",
        &format!("{url}/jsonp_send"),
        &plain,
        r#"["%61bc"]"#,
    )
    .await;
    assert_eq!(r.body, "ok");
    let r = get(addr, &format!("{url}/jsonp?c=x")).await;
    assert_eq!(r.body, "x(\"a[\\\"abc\\\",\\\"%61bc\\\"]\");\r\n");

    // Close.
    request(
        addr,
        "POST",
        &format!("{url}/jsonp_send"),
        &plain,
        r#"["close"]"#,
    )
    .await;
    for _ in 0..2 {
        let r = get(addr, &format!("{url}/jsonp?c=x")).await;
        assert_eq!(r.body, "x(\"c[3000,\\\"Go away!\\\"]\");\r\n");
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn xhr_streaming_framing() {
    let (addr, _) = start(config()).await;
    let url = session_url();
    let mut r = Conn::open(addr, "POST", &format!("{url}/xhr_streaming"), &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type")
            .unwrap_or_default()
            .replace(' ', ""),
        "application/javascript;charset=UTF-8"
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("cache-control"),
        Some("no-store, no-cache, must-revalidate, max-age=0")
    );
    assert!(r.header("content-length").is_none());
    r.expect(&format!("{}\n", "h".repeat(2048))).await;
    r.expect("o\n").await;
    let s = post(addr, &format!("{url}/xhr_send"), r#"["x"]"#).await;
    assert_eq!(s.status, 204);
    r.expect("a[\"x\"]\n").await;

    // Close: the open stream gets the close frame and ends; a new one gets it too.
    post(addr, &format!("{url}/xhr_send"), r#"["close"]"#).await;
    r.expect("c[3000,\"Go away!\"]\n").await;
    r.expect_end().await;
    let mut again = Conn::open(addr, "POST", &format!("{url}/xhr_streaming"), &[], b"").await;
    again.read_until("\n").await;
    again.expect("c[3000,\"Go away!\"]\n").await;
    again.expect_end().await;
}

#[tokio::test]
async fn eventsource_framing() {
    let (addr, _) = start(config()).await;
    let url = session_url();
    let mut r = Conn::open(addr, "GET", &format!("{url}/eventsource"), &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type")
            .unwrap_or_default()
            .replace(' ', ""),
        "text/event-stream;charset=UTF-8"
    );
    assert_eq!(
        r.header("cache-control"),
        Some("no-store, no-cache, must-revalidate, max-age=0")
    );
    r.expect("\r\n").await;
    r.expect("data: o\r\n\r\n").await;
    post(addr, &format!("{url}/xhr_send"), r#"["x"]"#).await;
    r.expect("data: a[\"x\"]\r\n\r\n").await;
    post(addr, &format!("{url}/xhr_send"), r#"["  \u0000\n\r "]"#).await;
    r.expect("data: a[\"  \\u0000\\n\\r \"]\r\n\r\n").await;
    // `%` is escaped because clients unescape the data line.
    post(addr, &format!("{url}/xhr_send"), r#"["100%"]"#).await;
    r.expect("data: a[\"100%25\"]\r\n\r\n").await;
    post(addr, &format!("{url}/xhr_send"), r#"["close"]"#).await;
    r.expect("data: c[3000,\"Go away!\"]\r\n\r\n").await;
    r.expect_end().await;
}

/// Issue 18: a page from another origin than the gateway's (the tutorial's case) must be able
/// to use every transport; the browser refused `eventsource` without these headers.
#[tokio::test]
async fn every_transport_answers_a_page_from_another_origin() {
    let (addr, _) = start(config()).await;
    let page = "http://app.example:8080";
    let origin = [("Origin", page)];
    let url = session_url();
    let cases: Vec<(&str, String, &str)> = vec![
        ("GET", "/stomp/info".to_owned(), ""),
        ("POST", format!("{url}/xhr"), ""),
        ("POST", format!("{url}/xhr_send"), r#"["x"]"#),
        ("POST", format!("{url}/jsonp_send"), r#"["y"]"#),
        ("GET", format!("{url}/jsonp?c=cb"), ""),
    ];
    for (method, path, body) in &cases {
        let r = request(addr, method, path, &origin, body).await;
        assert!(r.status < 300, "{method} {path}: {}", r.status);
        verify_cors(&r, Some(page));
        assert_eq!(r.header("vary"), Some("Origin"), "{method} {path}");
    }
    // The streaming receivers, read as far as their first frame.
    for (method, transport) in [
        ("POST", "xhr_streaming"),
        ("GET", "eventsource"),
        ("GET", "htmlfile?c=cb"),
    ] {
        let path = format!("{}/{transport}", session_url());
        let r = Conn::open(addr, method, &path, &origin, b"").await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(page),
            "{path}"
        );
        assert_eq!(
            r.header("access-control-allow-credentials"),
            Some("true"),
            "{path}"
        );
    }
    // Without an Origin (same-origin GET, curl): `*`, as sockjs-node answers.
    let r = Conn::open(
        addr,
        "GET",
        &format!("{}/eventsource", session_url()),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

/// `--allowed-origins` still decides: an allowed page gets the CORS headers on every
/// transport, another one a 403 before any session exists.
#[tokio::test]
async fn allowed_origins_apply_to_every_transport() {
    let (addr, mut events) = start(SockJsConfig {
        allowed_origins: vec!["http://good.example".into()],
        ..config()
    })
    .await;
    for (method, transport) in [
        ("GET", "eventsource"),
        ("GET", "htmlfile?c=cb"),
        ("GET", "jsonp?c=cb"),
        ("POST", "xhr_streaming"),
        ("POST", "xhr"),
    ] {
        let path = format!("{}/{transport}", session_url());
        let evil = Conn::open(
            addr,
            method,
            &path,
            &[("Origin", "http://evil.example")],
            b"",
        )
        .await;
        assert_eq!(evil.status, 403, "{path}");
        let good = Conn::open(
            addr,
            method,
            &path,
            &[("Origin", "http://good.example")],
            b"",
        )
        .await;
        assert_eq!(good.status, 200, "{path}");
        assert_eq!(
            good.header("access-control-allow-origin"),
            Some("http://good.example"),
            "{path}"
        );
        // The allowed page's session started (the previous one ends as its receiver goes).
        let mut event = next_event(&mut events).await;
        if event == Event::Ended {
            event = next_event(&mut events).await;
        }
        assert_eq!(event, Event::Started, "{path}");
    }
}

#[tokio::test]
async fn htmlfile_framing() {
    let (addr, _) = start(config()).await;
    let url = session_url();
    let mut r = Conn::open(
        addr,
        "GET",
        &format!("{url}/htmlfile?c=%63allback"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type")
            .unwrap_or_default()
            .replace(' ', ""),
        "text/html;charset=UTF-8"
    );
    let head = r#"<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.callback;
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>"#;
    let prelude = r.read_until("\r\n\r\n").await;
    assert!(prelude.len() > 1024);
    assert_eq!(prelude.trim(), head);
    r.expect("<script>\np(\"o\");\n</script>\r\n").await;
    post(addr, &format!("{url}/xhr_send"), r#"["x"]"#).await;
    r.expect("<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n")
        .await;
    // A message cannot end the script element early.
    post(addr, &format!("{url}/xhr_send"), r#"["</script>"]"#).await;
    r.expect("<script>\np(\"a[\\\"\\u003c/script>\\\"]\");\n</script>\r\n")
        .await;
    post(addr, &format!("{url}/xhr_send"), r#"["close"]"#).await;
    r.expect("<script>\np(\"c[3000,\\\"Go away!\\\"]\");\n</script>\r\n")
        .await;
    r.expect_end().await;
}

#[tokio::test]
async fn streaming_responses_end_at_response_limit() {
    let (addr, _) = start(SockJsConfig {
        response_limit: 4096,
        ..config()
    })
    .await;
    // xhr_streaming: 2 + 31 * 133 bytes of frames >= 4096.
    let url = session_url();
    let mut r = Conn::open(addr, "POST", &format!("{url}/xhr_streaming"), &[], b"").await;
    r.read_until("\n").await;
    r.expect("o\n").await;
    let msg = format!("\"{}\"", "x".repeat(128));
    for _ in 0..31 {
        let s = post(addr, &format!("{url}/xhr_send"), &format!("[{msg}]")).await;
        assert_eq!(s.status, 204);
        r.expect(&format!("a[{msg}]\n")).await;
    }
    r.expect_end().await;

    // eventsource and htmlfile: one big frame, then the response ends.
    let big = "x".repeat(4096);
    let url = session_url();
    let mut r = Conn::open(addr, "GET", &format!("{url}/eventsource"), &[], b"").await;
    r.expect("\r\n").await;
    r.expect("data: o\r\n\r\n").await;
    post(addr, &format!("{url}/xhr_send"), &format!("[\"{big}\"]")).await;
    r.expect(&format!("data: a[\"{big}\"]\r\n\r\n")).await;
    r.expect_end().await;

    let url = session_url();
    let mut r = Conn::open(addr, "GET", &format!("{url}/htmlfile?c=cb"), &[], b"").await;
    r.read_until("\r\n\r\n").await;
    r.expect("<script>\np(\"o\");\n</script>\r\n").await;
    post(addr, &format!("{url}/xhr_send"), &format!("[\"{big}\"]")).await;
    r.expect(&format!(
        "<script>\np(\"a[\\\"{big}\\\"]\");\n</script>\r\n"
    ))
    .await;
    r.expect_end().await;
}

/// Messages larger than the 128 KiB response limit, mixed with small ones, come out over several
/// streaming responses: each exactly once, in order.
#[tokio::test]
async fn large_messages_span_streaming_responses_without_loss() {
    let (addr, _) = start(config()).await;
    let url = session_url();
    let mut r = Conn::open(addr, "POST", &format!("{url}/xhr_streaming"), &[], b"").await;
    r.read_until("\n").await;
    r.expect("o\n").await;

    let mut sent = Vec::new();
    for i in 0..4 {
        let big = format!("{i}{}", "y".repeat(200 * 1024 + i));
        let small = format!("small-{i}");
        let body = serde_json::to_string(&[&big, &small]).expect("json");
        let s = post(addr, &format!("{url}/xhr_send"), &body).await;
        assert_eq!(s.status, 204);
        sent.push(big);
        sent.push(small);
    }

    let mut received: Vec<String> = Vec::new();
    let mut responses = 1;
    while received.len() < sent.len() {
        if r.done && r.body.is_empty() {
            // Response limit reached: the client reconnects, as sockjs-client does.
            r = Conn::open(addr, "POST", &format!("{url}/xhr_streaming"), &[], b"").await;
            r.expect(&format!("{}\n", "h".repeat(2048))).await;
            responses += 1;
            continue;
        }
        r.want(1).await;
        if r.body.is_empty() {
            continue;
        }
        let frame = r.read_until("\n").await;
        let frame = frame.trim_end();
        let payload = frame.strip_prefix('a').expect("array frame");
        let messages: Vec<String> = serde_json::from_str(payload).expect("frame json");
        received.extend(messages);
    }
    assert_eq!(received, sent);
    assert!(responses >= 4, "only {responses} responses");
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn websocket_framing() {
    let (addr, _) = start(config()).await;
    let path = format!("{}/websocket", session_url());
    let mut ws = ws_connect(addr, &path).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    ws.send(WsMessage::text("")).await.expect("send");
    ws.send(WsMessage::text(r#"["a"]"#)).await.expect("send");
    assert_eq!(ws_text(&mut ws).await, r#"a["a"]"#);
    ws.send(WsMessage::text(r#""b""#)).await.expect("send");
    assert_eq!(ws_text(&mut ws).await, r#"a["b"]"#);

    // The same session id may be used by another WebSocket at the same time.
    let mut ws2 = ws_connect(addr, &path).await;
    assert_eq!(ws_text(&mut ws2).await, "o");
    ws2.send(WsMessage::text(r#"["c"]"#)).await.expect("send");
    assert_eq!(ws_text(&mut ws2).await, r#"a["c"]"#);

    ws.send(WsMessage::text(r#"["close"]"#))
        .await
        .expect("send");
    assert_eq!(ws_text(&mut ws).await, r#"c[3000,"Go away!"]"#);
    ws_expect_closed(&mut ws).await;

    // Broken JSON ends the connection.
    ws2.send(WsMessage::text(r#"["a"#)).await.expect("send");
    ws_expect_closed(&mut ws2).await;

    // Not an upgrade.
    let r = get(addr, &path).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Can \"Upgrade\" only to \"WebSocket\"."));
    let r = request(
        addr,
        "GET",
        &path,
        &[("Upgrade", "WebSocket"), ("Connection", "close")],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("\"Connection\" must be \"Upgrade\"."));
    verify_405(
        &request(
            addr,
            "POST",
            &path,
            &[("Upgrade", "WebSocket"), ("Connection", "Upgrade")],
            "",
        )
        .await,
    );
}

/// A handler that panics ends its session with 1011, on every transport; the server goes on.
#[tokio::test]
async fn a_panicking_handler_closes_its_session_with_1011() {
    // Panics at its first message.
    let panicky = FromFn(|mut inbound: Inbound, _outbound: Outbound| {
        async move {
            if let Some(Ok(m)) = inbound.next().await {
                panic!("the handler failed on {m:?} (this test's panic)");
            }
        }
        .boxed()
    });
    let addr = serve(config(), panicky).await;
    let mut ws = ws_connect(addr, &format!("{}/websocket", session_url())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    ws.send(WsMessage::text(r#"["boom"]"#)).await.expect("send");
    assert_eq!(ws_text(&mut ws).await, r#"c[1011,"Internal error"]"#);
    ws_expect_closed(&mut ws).await;

    let mut raw = ws_connect(addr, "/stomp/websocket").await;
    raw.send(WsMessage::text("boom")).await.expect("send");
    match ws_recv(&mut raw).await {
        Some(WsMessage::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1011);
            assert_eq!(frame.reason.as_str(), "Internal error");
        }
        other => panic!("expected close 1011, got {other:?}"),
    }

    let url = open_session(addr).await;
    post(addr, &format!("{url}/xhr_send"), r#"["boom"]"#).await;
    assert_eq!(
        post(addr, &format!("{url}/xhr"), "").await.body,
        "c[1011,\"Internal error\"]\n"
    );
}

#[tokio::test]
async fn raw_websocket() {
    let (addr, mut events) = start(config()).await;
    let mut ws = ws_connect(addr, "/stomp/websocket").await;
    ws.send(WsMessage::text("Hello world!\u{ffff}"))
        .await
        .expect("send");
    assert_eq!(ws_text(&mut ws).await, "Hello world!\u{ffff}");
    ws.send(WsMessage::text("close")).await.expect("send");
    match ws_recv(&mut ws).await {
        Some(WsMessage::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 3000);
            assert_eq!(frame.reason.as_str(), "Go away!");
        }
        other => panic!("expected close 3000, got {other:?}"),
    }
    assert_eq!(next_event(&mut events).await, Event::Started);
    assert_eq!(next_event(&mut events).await, Event::Ended);

    // A client that just leaves ends the session.
    let mut ws = ws_connect(addr, "/stomp/websocket").await;
    assert_eq!(next_event(&mut events).await, Event::Started);
    ws.close(None).await.expect("close");
    assert_eq!(next_event(&mut events).await, Event::Ended);
}

// ---------------------------------------------------------------------------------------------
// Heartbeats and escaping
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn heartbeats_on_every_transport() {
    let (addr, _) = start(SockJsConfig {
        heartbeat: Duration::from_millis(100),
        ..config()
    })
    .await;
    // Polling: an idle poll ends with `h`.
    let url = open_session(addr).await;
    let r = post(addr, &format!("{url}/xhr"), "").await;
    assert_eq!(r.body, "h\n");
    let r = get(addr, &format!("{url}/jsonp?c=x")).await;
    assert_eq!(r.body, "x(\"h\");\r\n");

    // Streaming: `h` frames keep coming, and data still flows.
    let mut r = Conn::open(addr, "POST", &format!("{url}/xhr_streaming"), &[], b"").await;
    r.read_until("\n").await;
    r.expect("h\n").await;
    r.expect("h\n").await;
    let mut es = Conn::open(
        addr,
        "GET",
        &format!("{}/eventsource", session_url()),
        &[],
        b"",
    )
    .await;
    es.expect("\r\n").await;
    es.expect("data: o\r\n\r\n").await;
    es.expect("data: h\r\n\r\n").await;

    let mut ws = ws_connect(addr, &format!("{}/websocket", session_url())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    assert_eq!(ws_text(&mut ws).await, "h");
    assert_eq!(ws_text(&mut ws).await, "h");
}

fn server_escapable(c: char) -> bool {
    matches!(c as u32, 0x200c..=0x200f | 0x2028..=0x202f | 0x2060..=0x206f | 0xfff0..=0xffff)
}

#[tokio::test]
async fn escaping_of_sockjs_unicode_ranges() {
    let (addr, _) = start(config()).await;
    // The server escapes what the protocol requires (sockjs-protocol JSONEncoding).
    let url = open_session(addr).await;
    let chars: String = (0x100u32..=0xffff)
        .filter_map(char::from_u32)
        .filter(|c| server_escapable(*c))
        .collect();
    let expected: String = chars
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let payload = format!("[\"{chars}\"]");
    assert_eq!(
        post(addr, &format!("{url}/xhr_send"), &payload)
            .await
            .status,
        204
    );
    let r = post(addr, &format!("{url}/xhr"), "").await;
    let recv = &r.body.trim()[2..r.body.trim().len() - 1];
    assert_eq!(recv, format!("\"{expected}\""));

    // Controls, quotes, astral characters (as surrogate pairs, like sockjs-node), plain text.
    let payload = serde_json::to_string(&["\u{0}\u{1}\u{1f}\"\\\n é\u{1f600}"]).expect("json");
    post(addr, &format!("{url}/xhr_send"), &payload).await;
    let r = post(addr, &format!("{url}/xhr"), "").await;
    assert_eq!(
        r.body,
        "a[\"\\u0000\\u0001\\u001f\\\"\\\\\\n é\\ud83d\\ude00\"]\n"
    );

    // The server decodes what clients escape.
    let client_escaped: Vec<u32> = (0x00..=0x1f)
        .chain(0x7f..=0x9f)
        .chain([0xad, 0x70f, 0x17b4, 0x17b5, 0xfeff, 0x2126, 0xfa10])
        .chain(0x300..=0x333)
        .chain(0x600..=0x604)
        .chain(0x2000..=0x20ff)
        .chain(0xfff0..=0xffff)
        .collect();
    let escaped: String = client_escaped
        .iter()
        .map(|c| format!("\\u{c:04x}"))
        .collect();
    let original: String = client_escaped
        .iter()
        .filter_map(|c| char::from_u32(*c))
        .collect();
    post(
        addr,
        &format!("{url}/xhr_send"),
        &format!("[\"{escaped}\"]"),
    )
    .await;
    let r = post(addr, &format!("{url}/xhr"), "").await;
    let frame = r.body.trim();
    let messages: Vec<String> = serde_json::from_str(&frame[1..]).expect("json");
    assert_eq!(messages, vec![original]);

    // Same escaping on WebSocket.
    let mut ws = ws_connect(addr, &format!("{}/websocket", session_url())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    ws.send(WsMessage::text("[\"\u{2028}\u{ffff}\"]"))
        .await
        .expect("send");
    assert_eq!(ws_text(&mut ws).await, "a[\"\\u2028\\uffff\"]");
}

// ---------------------------------------------------------------------------------------------
// Session lifetime and limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn idle_sessions_are_reaped_after_disconnect_delay() {
    // Long enough that a busy machine answers every step well inside it.
    let delay = Duration::from_secs(2);
    let (addr, mut events) = start(SockJsConfig {
        disconnect_delay: delay,
        ..config()
    })
    .await;
    // Before the poll that opens the session: its delay starts after this.
    let t0 = tokio::time::Instant::now();
    let url = open_session(addr).await;
    assert_eq!(next_event(&mut events).await, Event::Started);
    // Nobody polls: the handler's inbound ends after the delay.
    assert_eq!(next_event(&mut events).await, Event::Ended);
    assert!(t0.elapsed() >= delay, "{:?}", t0.elapsed());
    // A client coming back soon learns why...
    let r = post(addr, &format!("{url}/xhr"), "").await;
    assert_eq!(r.body, "c[1002,\"Connection interrupted\"]\n");
    // ...later the session is forgotten.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while post(addr, &format!("{url}/xhr_send"), r#"["x"]"#)
        .await
        .status
        != 404
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed session never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post(addr, &format!("{url}/xhr"), "").await.body, "o\n");
    assert_eq!(next_event(&mut events).await, Event::Started);

    // A session whose polls keep coming within the delay outlives it.
    let url = open_session(addr).await;
    for _ in 0..4 {
        tokio::time::sleep(delay / 4).await;
        post(addr, &format!("{url}/xhr_send"), r#"["k"]"#).await;
        assert_eq!(
            post(addr, &format!("{url}/xhr"), "").await.body,
            "a[\"k\"]\n"
        );
    }
}

#[tokio::test]
async fn aborted_receiver_interrupts_session() {
    let (addr, mut events) = start(config()).await;
    let url = session_url();
    let mut r = Conn::open(addr, "POST", &format!("{url}/xhr_streaming"), &[], b"").await;
    r.read_until("\n").await;
    r.expect("o\n").await;
    assert_eq!(next_event(&mut events).await, Event::Started);
    drop(r);
    assert_eq!(next_event(&mut events).await, Event::Ended);
    let mut again = Conn::open(addr, "POST", &format!("{url}/xhr_streaming"), &[], b"").await;
    again.read_until("\n").await;
    again.expect("c[1002,\"Connection interrupted\"]\n").await;
    again.expect_end().await;
}

#[tokio::test]
async fn max_sessions_gives_503() {
    let (addr, mut events) = start(SockJsConfig {
        max_sessions: 2,
        // Long enough that session `a` is still there when it is used below.
        disconnect_delay: Duration::from_secs(2),
        ..config()
    })
    .await;
    let a = open_session(addr).await;
    let _b = open_session(addr).await;
    let r = post(addr, &format!("{}/xhr", session_url()), "").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        get(addr, &format!("{}/eventsource", session_url()))
            .await
            .status,
        503
    );
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/stomp/websocket")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    // Existing sessions still work.
    post(addr, &format!("{a}/xhr_send"), r#"["x"]"#).await;
    assert_eq!(post(addr, &format!("{a}/xhr"), "").await.body, "a[\"x\"]\n");
    // Once they are reaped and forgotten, there is room again.
    for _ in 0..4 {
        next_event(&mut events).await;
    }
    let mut ok = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = post(addr, &format!("{}/xhr", session_url()), "").await;
        if r.status == 200 {
            assert_eq!(r.body, "o\n");
            ok = true;
            break;
        }
    }
    assert!(ok, "sessions were never released");
}

/// A client that stops polling: the handler's sink pushes back at `max_queued_bytes`, then the
/// session closes with 4429 and the handler sees its inbound end.
#[tokio::test]
async fn outbound_queue_is_bounded_when_client_stops_polling() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let flood = Flood {
        size: 1000,
        accepted: accepted.clone(),
        events: tx,
    };
    let addr = serve(
        SockJsConfig {
            max_queued_bytes: 10_000,
            // Long enough for the three polls below to come within it on a busy machine.
            disconnect_delay: Duration::from_secs(2),
            ..config()
        },
        flood,
    )
    .await;

    // A client that polls keeps the flood going, never more than the limit per poll.
    let url = open_session(addr).await;
    assert_eq!(next_event(&mut events).await, Event::Started);
    let mut seen = 0;
    for _ in 0..3 {
        let r = post(addr, &format!("{url}/xhr"), "").await;
        let messages: Vec<String> = serde_json::from_str(&r.body.trim()[1..]).expect("json");
        assert!(!messages.is_empty() && messages.len() <= 11);
        for m in messages {
            assert_eq!(m.len(), 1000);
            assert_eq!(m[..10].parse::<usize>().expect("number"), seen);
            seen += 1;
        }
    }
    // Then it stops polling: the handler is held at the limit...
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = accepted.load(Ordering::SeqCst);
    assert!(
        held - seen <= 10,
        "queued {} messages past the limit",
        held - seen
    );
    // ...and the session is closed after the disconnect delay.
    assert_eq!(next_event(&mut events).await, Event::Ended);
    assert!(accepted.load(Ordering::SeqCst) - seen <= 10);
    let r = post(addr, &format!("{url}/xhr"), "").await;
    assert_eq!(r.body, "c[4429,\"Outbound queue full\"]\n");
}

/// A WebSocket client that stops reading holds the handler's writes back: the socket buffers
/// fill, then the handler's send waits (no queue grows in between). When the client goes away
/// the send fails and the handler's inbound ends.
#[tokio::test]
async fn stalled_websocket_reader_holds_the_handler_back() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let flood = Flood {
        size: 64 * 1024,
        accepted: accepted.clone(),
        events: tx,
    };
    let addr = serve(config(), flood).await;
    let ws = ws_connect(addr, &format!("{}/websocket", session_url())).await;
    assert_eq!(next_event(&mut events).await, Event::Started);
    // Never read from `ws`: the count stops moving once the socket is full.
    let mut last = usize::MAX;
    let mut steady = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while steady < 5 {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = accepted.load(Ordering::SeqCst);
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
    }
    assert!(last > 0, "the socket took some");
    // Socket buffers are a few MiB; a queue would have taken everything.
    assert!(last * 64 * 1024 < 64 << 20, "{last} messages taken");
    drop(ws);
    assert_eq!(next_event(&mut events).await, Event::Ended);
}

/// Closing the sink ends a WebSocket session with 1000, as on the HTTP transports.
#[tokio::test]
async fn closing_the_sink_ends_a_websocket_session() {
    // Closes its sink at the first message, then reads on until inbound ends.
    let close_sink = FromFn(|mut inbound: Inbound, mut outbound: Outbound| {
        async move {
            if let Some(Ok(_)) = inbound.next().await {
                let _ = outbound.close().await;
            }
            while inbound.next().await.is_some() {}
        }
        .boxed()
    });
    let addr = serve(config(), close_sink).await;
    let mut ws = ws_connect(addr, &format!("{}/websocket", session_url())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    ws.send(WsMessage::text(r#"["x"]"#)).await.expect("send");
    assert_eq!(ws_text(&mut ws).await, r#"c[1000,"Normal closure"]"#);
    ws_expect_closed(&mut ws).await;
}

/// A client that reads steadily but slower than one large frame per `disconnect_delay` is
/// not dropped: on WebSocket the handler decides how long a write may wait.
#[tokio::test]
async fn a_steady_slow_reader_of_a_large_frame_gets_all_of_it() {
    let size = 4 * 1024 * 1024;
    let (tx, mut sent) = mpsc::unbounded_channel();
    // Sends one large message, reports how that went, then reads on until inbound ends.
    let big_once = FromFn(move |mut inbound: Inbound, mut outbound: Outbound| {
        let result = tx.clone();
        async move {
            let sent = outbound
                .send(SockJsSend::Message("x".repeat(size)))
                .await
                .map_err(|e| e.to_string());
            let _ = result.send(sent);
            while inbound.next().await.is_some() {}
        }
        .boxed()
    });
    let addr = serve(
        SockJsConfig {
            disconnect_delay: Duration::from_millis(300),
            ..config()
        },
        big_once,
    )
    .await;
    // A small receive buffer and a pause after every read: the frame takes seconds to arrive.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("buffer size");
    let mut s = socket.connect(addr).await.expect("connect");
    s.write_all(
        b"GET /stomp/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // The frame: a 10-byte header (64-bit length) and the payload.
    let want = size + 10;
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while total < want {
        let n = timeout(WAIT, s.read(&mut buf))
            .await
            .expect("bytes in time")
            .expect("read");
        assert!(n > 0, "dropped after {total} of {want} bytes");
        total += n;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(total, want);
    assert_eq!(sent.recv().await, Some(Ok(())));
}

#[tokio::test]
async fn too_big_incoming_message_closes_session() {
    let (addr, _) = start(SockJsConfig {
        max_incoming_message_bytes: 1000,
        ..config()
    })
    .await;
    let url = open_session(addr).await;
    let ok = "x".repeat(1000);
    assert_eq!(
        post(addr, &format!("{url}/xhr_send"), &format!("[\"{ok}\"]"))
            .await
            .status,
        204
    );
    assert_eq!(
        post(addr, &format!("{url}/xhr"), "").await.body,
        format!("a[\"{ok}\"]\n")
    );
    let big = "x".repeat(1001);
    let r = post(addr, &format!("{url}/xhr_send"), &format!("[\"{big}\"]")).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        post(addr, &format!("{url}/xhr"), "").await.body,
        "c[4413,\"Message too big\"]\n"
    );
    // A body far over the limit is refused before decoding.
    let url = open_session(addr).await;
    let huge = "y".repeat(100 * 1024);
    assert_eq!(
        post(addr, &format!("{url}/xhr_send"), &format!("[\"{huge}\"]"))
            .await
            .status,
        413
    );

    let mut ws = ws_connect(addr, &format!("{}/websocket", session_url())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    ws.send(WsMessage::text(format!("[\"{big}\"]")))
        .await
        .expect("send");
    assert_eq!(ws_text(&mut ws).await, "c[4413,\"Message too big\"]");
    ws_expect_closed(&mut ws).await;
}

#[tokio::test]
async fn jsessionid_cookie_only_when_configured() {
    let (addr, _) = start(config()).await;
    let r = post(addr, &format!("{}/xhr", session_url()), "").await;
    assert!(r.header("set-cookie").is_none());

    let (addr, _) = start(SockJsConfig {
        jsessionid: true,
        ..config()
    })
    .await;
    let r = get(addr, "/stomp/info").await;
    assert!(r.header("set-cookie").is_none());
    let info: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(info["cookie_needed"], true);
    let r = post(addr, &format!("{}/xhr", session_url()), "").await;
    assert_eq!(r.header("set-cookie"), Some("JSESSIONID=dummy; path=/"));
    let r = request(
        addr,
        "POST",
        &format!("{}/xhr", session_url()),
        &[("Cookie", "a=b; JSESSIONID=abcdef")],
        "",
    )
    .await;
    assert_eq!(r.header("set-cookie"), Some("JSESSIONID=abcdef; path=/"));
    let c = Conn::open(
        addr,
        "GET",
        &format!("{}/eventsource", session_url()),
        &[],
        b"",
    )
    .await;
    assert_eq!(c.header("set-cookie"), Some("JSESSIONID=dummy; path=/"));
    assert_eq!(c.header_count("set-cookie"), 1);
}

#[tokio::test]
async fn allowed_origins_are_enforced() {
    let (addr, _) = start(SockJsConfig {
        allowed_origins: vec!["http://good.example".into()],
        ..config()
    })
    .await;
    let r = request(
        addr,
        "GET",
        "/stomp/info",
        &[("Origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = request(
        addr,
        "GET",
        "/stomp/info",
        &[("Origin", "http://good.example")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    verify_cors(&r, Some("http://good.example"));
    assert_eq!(get(addr, "/stomp/info").await.status, 200);
    let url = format!("{}/xhr", session_url());
    let r = request(addr, "POST", &url, &[("Origin", "http://evil.example")], "").await;
    assert_eq!(r.status, 403);

    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/stomp/websocket"),
    )
    .expect("request");
    req.headers_mut().insert(
        "Origin",
        "http://evil.example".parse().expect("header value"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}
