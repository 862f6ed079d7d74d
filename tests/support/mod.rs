//! Shared helpers for every integration test suite (each binary includes this one module):
//! the test broker's URL and unique names, polling, an in-process gateway, STOMP clients over
//! WebSocket and TCP (using the project's own codec), an AMQP publisher, RabbitMQ checks
//! (`rabbit`), private broker nodes (`private_node`), and the operator's harness and fixtures
//! (`operator`).
#![allow(dead_code)]

pub mod operator;
pub mod private_node;
pub mod rabbit;

use bytes::{Bytes, BytesMut};
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;
use stompgate::bench::client::{ClientError, Event, StompWs};
use stompgate::gateway::config::parse_gateway_args;
use stompgate::gateway::server::{self, Gateway};
use stompgate::stomp::{Command, Decoded, Decoder, Frame, Limits, Version, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// AMQP URL of the test broker (STOMPGATE_TEST_AMQP_URL overrides).
pub fn amqp_url() -> String {
    std::env::var("STOMPGATE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}-{n:016x}")
}

/// Starts a gateway on ephemeral ports (WebSocket + TCP) with extra flags.
pub async fn start_gateway(extra: &[&str]) -> Gateway {
    start_gateway_with(extra, axum::Router::new()).await
}

pub async fn start_gateway_with(extra: &[&str], router: axum::Router<server::AppState>) -> Gateway {
    stompgate::runtime::init_logging(false);
    let mut argv: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--stomp-listen".into(),
        "127.0.0.1:0".into(),
    ];
    if !extra.contains(&"--amqp-url") {
        argv.extend(["--amqp-url".to_string(), amqp_url()]);
    }
    // STOMPGATE_TEST_FANOUT=false runs the suites with every subscription on its own queue.
    if !extra.contains(&"--fanout")
        && let Ok(value) = std::env::var("STOMPGATE_TEST_FANOUT")
    {
        argv.extend(["--fanout".to_string(), value]);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = parse_gateway_args(&argv).expect("gateway args");
    server::start(args, router).await.expect("gateway starts")
}

enum Transport {
    /// The library's STOMP-over-WebSocket client (it decodes what it reads).
    Ws(Box<StompWs<tokio_tungstenite::MaybeTlsStream<TcpStream>>>),
    /// Plain, or TLS (`stomp+ssl`); decoded by [`Client`]'s own decoder.
    Tcp(Box<tokio_tungstenite::MaybeTlsStream<TcpStream>>),
}

fn ws_transport(
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> Transport {
    Transport::Ws(Box::new(StompWs::from_websocket(ws)))
}

/// What a client observed when the server ended the connection.
#[derive(Debug)]
pub enum Closed {
    WebSocket(Option<CloseFrame>),
    Eof,
}

/// A STOMP client for tests.
pub struct Client {
    transport: Transport,
    decoder: Decoder,
    /// Frames read while waiting for something else (e.g. a MESSAGE before a RECEIPT).
    pending: std::collections::VecDeque<Frame>,
    pub version: Version,
    pub heartbeats: usize,
    pub closed: Option<Closed>,
}

impl Client {
    pub async fn ws(gateway: &Gateway) -> Client {
        Self::ws_url(&format!("ws://{}/ws", gateway.http_addr), Some("v12.stomp")).await
    }

    pub async fn ws_url(url: &str, protocol: Option<&str>) -> Client {
        let mut request = url.into_client_request().expect("request");
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        Client::new(ws_transport(ws))
    }

    pub async fn tcp(gateway: &Gateway) -> Client {
        Self::tcp_addr(gateway.stomp_addr.expect("tcp listener")).await
    }

    pub async fn tcp_addr(addr: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("tcp connects");
        Client::tcp_stream(stream)
    }

    /// Plain STOMP over a connection the test opened itself (e.g. with small socket buffers).
    pub fn tcp_stream(stream: TcpStream) -> Client {
        Client::new(Transport::Tcp(Box::new(
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )))
    }

    /// WebSocket over TLS (`wss://`) with this client configuration.
    pub async fn ws_tls(
        url: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
        bearer: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "v12.stomp".parse().expect("header"),
        );
        if let Some(token) = bearer {
            request.headers_mut().insert(
                "Authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        let connector = tokio_tungstenite::Connector::Rustls(tls);
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
                .await?;
        Ok(Client::new(ws_transport(ws)))
    }

    /// STOMP over TLS on the TCP listener, checking the server name `localhost`.
    pub async fn tcp_tls(
        gateway: &Gateway,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Client> {
        let addr = gateway.stomp_addr.expect("tcp listener");
        let stream = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await?;
        Ok(Client::new(Transport::Tcp(Box::new(
            tokio_tungstenite::MaybeTlsStream::Rustls(stream),
        ))))
    }

    /// A WebSocket client with an `Authorization: Bearer` upgrade header.
    pub async fn ws_bearer(gateway: &Gateway, token: &str) -> Client {
        let url = format!("ws://{}/ws", gateway.http_addr);
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "v12.stomp".parse().expect("header"),
        );
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        Client::new(ws_transport(ws))
    }

    fn new(transport: Transport) -> Client {
        let mut decoder = Decoder::new(Limits {
            max_frame_bytes: 64 * 1024 * 1024,
            ..Limits::default()
        });
        decoder.set_authenticated(true);
        Client {
            transport,
            decoder,
            pending: Default::default(),
            version: Version::V1_2,
            heartbeats: 0,
            closed: None,
        }
    }

    /// CONNECT as guest with the given version list; returns CONNECTED (or ERROR).
    pub async fn connect(&mut self, accept_version: &str) -> Frame {
        self.connect_with(&[
            ("accept-version", accept_version),
            ("host", "/"),
            ("login", "guest"),
            ("passcode", "guest"),
        ])
        .await
    }

    pub async fn connect_with(&mut self, headers: &[(&str, &str)]) -> Frame {
        let mut frame = Frame::new(Command::Connect);
        for (k, v) in headers {
            frame.headers.push(*k, *v);
        }
        self.send(frame).await;
        let reply = self.recv().await;
        if reply.command == Command::Connected
            && let Some(v) = reply.get("version").and_then(Version::parse)
        {
            self.version = v;
            self.decoder.set_version(v);
            if let Transport::Ws(ws) = &mut self.transport {
                ws.set_version(v);
            }
        }
        reply
    }

    /// A logged-in 1.2 client.
    pub async fn logged_in_ws(gateway: &Gateway) -> Client {
        let mut c = Client::ws(gateway).await;
        let reply = c.connect("1.2").await;
        assert_eq!(reply.command, Command::Connected, "{reply:?}");
        c
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&frame, self.version, &mut buf);
        self.send_raw(&buf).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.transport {
            Transport::Ws(ws) => ws
                .send_message(Message::Binary(Bytes::copy_from_slice(bytes)))
                .await
                .expect("ws send"),
            Transport::Tcp(s) => s.write_all(bytes).await.expect("tcp send"),
        }
    }

    /// Like [`Client::send`], but reports a failed write (server gone) instead of panicking.
    pub async fn try_send(&mut self, frame: Frame) -> bool {
        let mut buf = BytesMut::new();
        encode(&frame, self.version, &mut buf);
        self.try_send_raw(&buf).await
    }

    /// Like [`Client::send_raw`], but reports a failed write (server gone) instead of panicking.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        match &mut self.transport {
            Transport::Ws(ws) => ws
                .send_message(Message::Binary(Bytes::copy_from_slice(bytes)))
                .await
                .is_ok(),
            Transport::Tcp(s) => s.write_all(bytes).await.is_ok(),
        }
    }

    /// Connects over WebSocket to `url`, or None when the connection is refused.
    pub async fn try_ws_url(url: &str) -> Option<Client> {
        let mut request = url.into_client_request().ok()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "v12.stomp".parse().ok()?);
        let (ws, _) = tokio_tungstenite::connect_async(request).await.ok()?;
        Some(Client::new(ws_transport(ws)))
    }

    /// Sends raw bytes as one WebSocket text message.
    pub async fn send_text(&mut self, text: &str) {
        if let Transport::Ws(ws) = &mut self.transport {
            ws.send_message(Message::Text(text.into()))
                .await
                .expect("ws send");
        } else {
            self.send_raw(text.as_bytes()).await;
        }
    }

    /// Next frame; panics after the default timeout.
    pub async fn recv(&mut self) -> Frame {
        match self.recv_within(DEFAULT_TIMEOUT).await {
            Some(f) => f,
            None => panic!(
                "no frame within {DEFAULT_TIMEOUT:?} (closed: {:?})",
                self.closed
            ),
        }
    }

    /// Next frame within `d`, or None on timeout or close.
    pub async fn recv_within(&mut self, d: Duration) -> Option<Frame> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        self.recv_wire(d).await
    }

    /// Waits for a RECEIPT (or ERROR), keeping other frames for later `recv` calls.
    pub async fn recv_receipt(&mut self) -> Frame {
        let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.recv_wire(left).await else {
                panic!(
                    "no RECEIPT within {DEFAULT_TIMEOUT:?} (closed: {:?})",
                    self.closed
                );
            };
            if matches!(frame.command, Command::Receipt | Command::Error) {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    async fn recv_wire(&mut self, d: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + d;
        if let Transport::Ws(ws) = &mut self.transport {
            loop {
                // The client decodes each message as it reads it: after a close nothing
                // complete is left.
                if self.closed.is_some() {
                    return None;
                }
                match tokio::time::timeout_at(deadline, ws.next_event()).await {
                    Err(_) => return None,
                    Ok(Ok(Event::Frame(f))) => return Some(f),
                    Ok(Ok(Event::Heartbeat)) => self.heartbeats += 1,
                    Ok(Ok(Event::Closed(frame))) => self.closed = Some(Closed::WebSocket(frame)),
                    Ok(Err(ClientError::Decode(e))) => {
                        panic!("client could not decode server output: {e}")
                    }
                    Ok(Err(_)) => self.closed = Some(Closed::WebSocket(None)),
                }
            }
        }
        loop {
            match self.decoder.decode() {
                Ok(Some(Decoded::Frame(f))) => return Some(f),
                Ok(Some(Decoded::Heartbeat)) => {
                    self.heartbeats += 1;
                    continue;
                }
                Ok(None) => {}
                Err(e) => panic!("client could not decode server output: {e}"),
            }
            if self.closed.is_some() {
                return None;
            }
            let chunk = tokio::time::timeout_at(deadline, self.read_tcp()).await;
            match chunk {
                Err(_) => return None,
                Ok(Some(bytes)) => self.decoder.feed(&bytes),
                Ok(None) => {}
            }
        }
    }

    async fn read_tcp(&mut self) -> Option<Vec<u8>> {
        let Transport::Tcp(s) = &mut self.transport else {
            return None;
        };
        let mut buf = vec![0u8; 65536];
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => {
                self.closed = Some(Closed::Eof);
                None
            }
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
        }
    }

    /// Waits until the server closes the connection; returns what was observed.
    pub async fn wait_closed(&mut self) -> &Closed {
        let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
        while self.closed.is_none() {
            if tokio::time::Instant::now() >= deadline {
                panic!("connection not closed within {DEFAULT_TIMEOUT:?}");
            }
            let _ = self.recv_within(Duration::from_millis(200)).await;
        }
        self.closed.as_ref().expect("closed")
    }

    /// WebSocket close code, if the server sent one.
    pub async fn close_code(&mut self) -> Option<u16> {
        match self.wait_closed().await {
            Closed::WebSocket(Some(f)) => Some(f.code.into()),
            _ => None,
        }
    }

    pub async fn subscribe(&mut self, id: &str, destination: &str, extra: &[(&str, &str)]) {
        let receipt = format!("sub-{id}");
        let mut frame = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", destination)
            .header("receipt", receipt.as_str());
        for (k, v) in extra {
            frame.headers.push(*k, *v);
        }
        self.send(frame).await;
        let reply = self.recv_receipt().await;
        assert_eq!(
            reply.command,
            Command::Receipt,
            "subscribe {destination}: {reply:?}"
        );
        assert_eq!(reply.get("receipt-id"), Some(receipt.as_str()));
    }

    /// SEND with a receipt and wait for it.
    pub async fn send_confirmed(&mut self, destination: &str, body: &str, extra: &[(&str, &str)]) {
        let receipt = unique("r");
        let mut frame = Frame::new(Command::Send)
            .header("destination", destination)
            .header("receipt", receipt.as_str());
        for (k, v) in extra {
            frame.headers.push(*k, *v);
        }
        self.send(frame.with_body(body.to_string())).await;
        let reply = self.recv_receipt().await;
        assert_eq!(
            reply.command,
            Command::Receipt,
            "send to {destination}: {reply:?}"
        );
        assert_eq!(reply.get("receipt-id"), Some(receipt.as_str()));
    }

    pub async fn disconnect(&mut self) {
        let frame = Frame::new(Command::Disconnect).header("receipt", "bye");
        self.send(frame).await;
        let reply = self.recv_receipt().await;
        assert_eq!(reply.command, Command::Receipt, "{reply:?}");
        assert_eq!(reply.get("receipt-id"), Some("bye"));
    }
}

/// Runs the browser runner (`tests/browser/run.mjs`: Chromium, the page, a publisher) and
/// returns its JSON result line; panics with its output when the scenario fails.
pub async fn browser(scenario: &str, amqp_url: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "tests/browser/run.mjs".to_string(),
        scenario.to_string(),
        "--amqp-url".to_string(),
        amqp_url.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = tokio::process::Command::new("node")
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .expect("node runs (scripts/ensure-test-deps.sh installs the browser test deps)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{scenario} {extra:?} failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(last).expect("runner prints JSON");
    assert_eq!(result["ok"], true, "{result}");
    eprintln!("{scenario} {extra:?}: {result}");
    result
}

/// Body of a frame as text.
pub fn body(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.body).into_owned()
}

/// An AMQP 0-9-1 peer for publishing and inspecting the broker.
pub struct Amqp {
    pub connection: Connection,
    pub channel: lapin::Channel,
}

impl Amqp {
    pub async fn connect() -> Amqp {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("AMQP connects to the test broker");
        let channel = connection.create_channel().await.expect("channel");
        Amqp {
            connection,
            channel,
        }
    }

    pub async fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        self.channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    auto_delete: false,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("exchange declare");
    }

    pub async fn delete_exchange(&self, name: &str) {
        let _ = self
            .channel
            .exchange_delete(name.into(), Default::default())
            .await;
    }

    pub async fn delete_queue(&self, name: &str) {
        let _ = self
            .channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }

    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish");
    }

    /// Publishes every 50 ms until the returned guard is dropped (for subscribers that
    /// race their binding against the first publish).
    pub fn publish_repeatedly(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &str,
    ) -> tokio::task::JoinHandle<()> {
        let channel = self.channel.clone();
        let (exchange, routing_key, body) = (
            exchange.to_string(),
            routing_key.to_string(),
            body.to_string(),
        );
        tokio::spawn(async move {
            loop {
                let _ = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Number of messages in a queue (passive declare), None if it does not exist.
    pub async fn queue_depth(&self, queue: &str) -> Option<u32> {
        let channel = self.connection.create_channel().await.ok()?;
        channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| q.message_count())
    }
}

/// Queues bound to `exchange` (from `rabbitmqctl list_bindings`).
pub fn queues_bound_to(exchange: &str) -> usize {
    let out = rabbitmqctl(&[
        "list_bindings",
        "--quiet",
        "--no-table-headers",
        "source_name",
        "destination_name",
        "destination_kind",
    ]);
    let mut queues: Vec<&str> = out
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.len() == 3 && cols[0] == exchange && cols[2] == "queue").then_some(cols[1])
        })
        .collect();
    queues.sort_unstable();
    queues.dedup();
    queues.len()
}

/// Runs `rabbitmqctl` (tests that need a second user); panics with its output on failure.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (RabbitMQ's CLI must be installed for the tests)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {text}"
    );
    text
}

/// A user with no permissions on vhost `/` except what `configure/write/read` allow.
pub fn ensure_user(name: &str, password: &str, configure: &str, write: &str, read: &str) {
    let existing = rabbitmqctl(&["list_users", "--quiet"]);
    if !existing
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
    {
        rabbitmqctl(&["add_user", name, password]);
    } else {
        rabbitmqctl(&["change_password", name, password]);
    }
    rabbitmqctl(&["set_permissions", "-p", "/", name, configure, write, read]);
}

/// HTTP status of a GET, 0 when the request fails.
pub async fn http_status(url: &str) -> u16 {
    http_get(url).await.map(|(status, _)| status).unwrap_or(0)
}

/// Status and body of a GET (HTTP/1.0, no keep-alive), None when the request fails.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let attempt = async {
        let mut stream = TcpStream::connect(host).await.ok()?;
        stream
            .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// The repository root (where Cargo.toml, scripts/ and examples/ are).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `f` every 50 ms until it returns Some, or panics after `secs`.
pub async fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 50 ms until it holds; returns how long that took, panics at `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled metric (`stompgate_<name>`, counters with `_total`) in the
/// gateway's own registry; 0 when absent.
pub fn metric(gateway: &Gateway, name: &str) -> f64 {
    let text = gateway.state.registry.encode();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == format!("stompgate_{name}") || key == format!("stompgate_{name}_total"))
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}
