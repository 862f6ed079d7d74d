//! The project's STOMP-over-WebSocket client, on its own codec: lean enough for load
//! generation (one per connection, a small WebSocket read buffer, optional source-address
//! binding to spread tens of thousands of connections over several loopback addresses), and
//! the WebSocket transport of the integration tests' client (`tests/support`), which adds
//! TCP, TLS and panicking conveniences around [`StompWs::from_websocket`] and
//! [`StompWs::next_event`].

use crate::stomp::{Command, Decoded, Decoder, Frame, Limits, Version, encode};
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

/// Where and how the clients connect; shared by every connection of a run.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    pub source_ips: Arc<Vec<IpAddr>>,
    pub read_buffer: usize,
    pub login: String,
    pub passcode: String,
    pub vhost: String,
    pub timeout: Duration,
}

impl Target {
    /// Resolves the URL's host once (every connection then goes to the same address).
    pub async fn resolve(
        url: &str,
        source_ips: Vec<IpAddr>,
        read_buffer: usize,
        login: &str,
        passcode: &str,
        vhost: &str,
        timeout: Duration,
    ) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow::anyhow!("only ws:// URLs are supported, got {url}"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let host_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&host_port)
            .await?
            .find(|a| source_ips.is_empty() || a.is_ipv4() == source_ips[0].is_ipv4())
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {host_port}"))?;
        Ok(Target {
            url: url.to_string(),
            addr,
            source_ips: Arc::new(source_ips),
            read_buffer,
            login: login.to_string(),
            passcode: passcode.to_string(),
            vhost: vhost.to_string(),
            timeout,
        })
    }
}

/// Why a client failed, in a few stable words (counted per kind in reports).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tcp connect: {0}")]
    Tcp(std::io::Error),
    #[error("websocket handshake: {0}")]
    Handshake(String),
    #[error("websocket: {0}")]
    WebSocket(String),
    #[error("STOMP decode: {0}")]
    Decode(String),
    #[error("server sent ERROR: {0}")]
    StompError(String),
    #[error("unexpected {0} frame")]
    Unexpected(String),
    #[error("connection closed")]
    Closed,
    #[error("timed out during {0}")]
    Timeout(&'static str),
}

impl ClientError {
    /// Short category for counting.
    pub fn kind(&self) -> String {
        match self {
            ClientError::Tcp(e) => format!("tcp: {}", e.kind()),
            ClientError::Handshake(_) => "handshake".into(),
            ClientError::WebSocket(_) => "websocket".into(),
            ClientError::Decode(_) => "decode".into(),
            ClientError::StompError(m) => format!("ERROR: {m}"),
            ClientError::Unexpected(c) => format!("unexpected {c}"),
            ClientError::Closed => "closed".into(),
            ClientError::Timeout(what) => format!("timeout: {what}"),
        }
    }
}

/// What the server sent next.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// A heart-beat (an EOL between frames).
    Heartbeat,
    /// The WebSocket ended: the server's close frame, or None when the stream just ended.
    Closed(Option<CloseFrame>),
}

/// One STOMP session over one WebSocket (plain TCP by default; any stream, e.g. TLS).
pub struct StompWs<S = TcpStream> {
    ws: WebSocketStream<S>,
    decoder: Decoder,
    version: Version,
    out: BytesMut,
}

impl StompWs<TcpStream> {
    /// TCP connect (from source address `index % source_ips`), WebSocket handshake,
    /// STOMP CONNECT with heart-beat 0,0; returns once CONNECTED arrived.
    pub async fn connect(target: &Target, index: usize) -> Result<StompWs, ClientError> {
        let tcp = tokio::time::timeout(target.timeout, tcp_connect(target, index))
            .await
            .map_err(|_| ClientError::Timeout("tcp connect"))?
            .map_err(ClientError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let mut request = target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Handshake(e.to_string()))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "v12.stomp, v11.stomp, v10.stomp".parse().expect("header"),
        );
        let config = WebSocketConfig::default()
            .read_buffer_size(target.read_buffer)
            .write_buffer_size(0);
        let handshake = tokio_tungstenite::client_async_with_config(request, tcp, Some(config));
        let (ws, _) = tokio::time::timeout(target.timeout, handshake)
            .await
            .map_err(|_| ClientError::Timeout("websocket handshake"))?
            .map_err(|e| ClientError::Handshake(e.to_string()))?;
        let mut client = StompWs::from_websocket(ws);
        let connect = Frame::new(Command::Connect)
            .header("accept-version", "1.2,1.1,1.0")
            .header("host", target.vhost.as_str())
            .header("login", target.login.as_str())
            .header("passcode", target.passcode.as_str())
            .header("heart-beat", "0,0");
        client.send(&connect).await?;
        let reply = client.expect_frame(target.timeout, "CONNECT").await?;
        match reply.command {
            Command::Connected => {
                let version = reply
                    .get("version")
                    .and_then(Version::parse)
                    .unwrap_or(Version::V1_0);
                client.set_version(version);
                Ok(client)
            }
            Command::Error => Err(error_of(&reply)),
            other => Err(ClientError::Unexpected(other.to_string())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> StompWs<S> {
    /// A session over a WebSocket that is already open; nothing is sent (the caller sends
    /// CONNECT, and calls [`StompWs::set_version`] with the version CONNECTED names).
    pub fn from_websocket(ws: WebSocketStream<S>) -> StompWs<S> {
        let mut decoder = Decoder::new(Limits {
            max_frame_bytes: 64 * 1024 * 1024,
            ..Limits::default()
        });
        decoder.set_authenticated(true);
        StompWs {
            ws,
            decoder,
            version: Version::V1_2,
            out: BytesMut::with_capacity(256),
        }
    }

    /// The STOMP version frames are encoded and decoded with from now on.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
        self.decoder.set_version(version);
    }

    /// SUBSCRIBE (ack auto) with a receipt, and waits for the RECEIPT.
    pub async fn subscribe(
        &mut self,
        id: &str,
        destination: &str,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let receipt = format!("sub-{id}");
        let frame = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", destination)
            .header("ack", "auto")
            .header("receipt", receipt.as_str());
        self.send(&frame).await?;
        loop {
            let reply = self.expect_frame(timeout, "SUBSCRIBE").await?;
            match reply.command {
                Command::Receipt if reply.get("receipt-id") == Some(receipt.as_str()) => {
                    return Ok(());
                }
                Command::Error => return Err(error_of(&reply)),
                // A MESSAGE may overtake the RECEIPT; benchmark publishers start after it.
                _ => continue,
            }
        }
    }

    /// Sends one frame as a WebSocket text message (as browsers' stomp.js does).
    pub async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.out.clear();
        encode(frame, self.version, &mut self.out);
        let bytes = self.out.split().freeze();
        let text = tokio_tungstenite::tungstenite::Utf8Bytes::try_from(bytes)
            .map_err(|_| ClientError::WebSocket("frame is not UTF-8".into()))?;
        self.send_message(Message::Text(text)).await
    }

    /// Sends any WebSocket message (raw or malformed bytes, for tests).
    pub async fn send_message(&mut self, message: Message) -> Result<(), ClientError> {
        self.ws
            .send(message)
            .await
            .map_err(|e| ClientError::WebSocket(e.to_string()))
    }

    /// Next frame, heart-beat or close. Cancel-safe: bytes already read stay decoded.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            match self.decoder.decode() {
                Ok(Some(Decoded::Frame(f))) => return Ok(Event::Frame(f)),
                Ok(Some(Decoded::Heartbeat)) => return Ok(Event::Heartbeat),
                Ok(None) => {}
                Err(e) => return Err(ClientError::Decode(e.to_string())),
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => self.decoder.feed(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => self.decoder.feed(&b),
                Some(Ok(Message::Close(frame))) => return Ok(Event::Closed(frame)),
                None => return Ok(Event::Closed(None)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ClientError::WebSocket(e.to_string())),
            }
        }
    }

    /// Next frame, heart-beats skipped; None when the server closed the connection.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            match self.next_event().await? {
                Event::Frame(f) => return Ok(Some(f)),
                Event::Heartbeat => continue,
                Event::Closed(_) => return Ok(None),
            }
        }
    }

    /// Next frame within `timeout`; a close is an error here.
    pub async fn expect_frame(
        &mut self,
        timeout: Duration,
        during: &'static str,
    ) -> Result<Frame, ClientError> {
        match tokio::time::timeout(timeout, self.next_frame()).await {
            Err(_) => Err(ClientError::Timeout(during)),
            Ok(Ok(Some(f))) => Ok(f),
            Ok(Ok(None)) => Err(ClientError::Closed),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Closes the WebSocket (close frame, then waits briefly for the server's close).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

fn error_of(frame: &Frame) -> ClientError {
    ClientError::StompError(frame.get("message").unwrap_or("(no message)").to_string())
}

async fn tcp_connect(target: &Target, index: usize) -> std::io::Result<TcpStream> {
    if target.source_ips.is_empty() {
        return TcpStream::connect(target.addr).await;
    }
    let ip = target.source_ips[index % target.source_ips.len()];
    let socket = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(target.addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    /// A client and the server end of one WebSocket, in memory.
    async fn pair() -> (
        StompWs<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        (StompWs::from_websocket(client), server)
    }

    #[tokio::test]
    async fn frames_heartbeats_split_frames_and_the_close_frame_arrive_as_events() {
        let (mut client, mut server) = pair().await;
        server
            .send(Message::Text("CONNECTED\nversion:1.2\n\n\0\n".into()))
            .await
            .expect("send");
        // A frame split over two messages is one frame.
        server
            .send(Message::Binary(
                b"MESSAGE\ndestination:/q/a\n\nhel".to_vec().into(),
            ))
            .await
            .expect("send");
        server
            .send(Message::Binary(b"lo\0".to_vec().into()))
            .await
            .expect("send");
        server
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            })))
            .await
            .expect("send");

        let Event::Frame(f) = client.next_event().await.expect("event") else {
            panic!("CONNECTED first");
        };
        assert_eq!(f.command, Command::Connected);
        assert!(matches!(client.next_event().await, Ok(Event::Heartbeat)));
        let Ok(Event::Frame(f)) = client.next_event().await else {
            panic!("MESSAGE next");
        };
        assert_eq!((f.command, &f.body[..]), (Command::Message, &b"hello"[..]));
        match client.next_event().await {
            Ok(Event::Closed(Some(frame))) => {
                assert_eq!(
                    (u16::from(frame.code), frame.reason.as_str()),
                    (1001, "bye")
                );
            }
            other => panic!("expected the close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn undecodable_server_output_is_a_decode_error_and_a_dropped_stream_a_close() {
        let (mut client, mut server) = pair().await;
        server
            .send(Message::Text("MESSAGE\nno colon here\n\n\0".into()))
            .await
            .expect("send");
        assert!(matches!(
            client.next_event().await,
            Err(ClientError::Decode(_))
        ));

        let (mut client, server) = pair().await;
        drop(server);
        match client.next_frame().await {
            Ok(None) | Err(ClientError::WebSocket(_)) => {}
            other => panic!("expected the end of the stream, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_go_out_as_text_messages() {
        let (mut client, mut server) = pair().await;
        client
            .send(&Frame::new(Command::Send).header("destination", "/q/a"))
            .await
            .expect("send");
        match server.next().await {
            Some(Ok(Message::Text(t))) => {
                assert!(
                    t.as_str().starts_with("SEND\ndestination:/q/a\n\n\0"),
                    "{t}"
                );
            }
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}
