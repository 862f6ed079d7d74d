//! Transports and server wiring: WebSocket paths and subprotocols, TCP, health, limits.

use crate::support::{Amqp, Client, body, start_gateway, unique};
use stompgate::stomp::{Command, Frame};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn websocket_accepts_stomp_subprotocols_and_trailing_slash() {
    let gw = start_gateway(&[]).await;
    let url = format!("ws://{}/ws/", gw.http_addr);
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v10.stomp, v11.stomp, v12.stomp".parse().unwrap(),
    );
    let (_ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "v12.stomp"
    );
    // No subprotocol at all also works (some clients send none).
    let mut c = Client::ws_url(&format!("ws://{}/ws", gw.http_addr), None).await;
    assert_eq!(c.connect("1.2").await.command, Command::Connected);
}

#[tokio::test]
async fn text_frames_and_several_frames_per_message_are_accepted() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("text");
    let mut c = Client::ws(&gw).await;
    c.send_text(&format!(
        "CONNECT\r\naccept-version:1.2\r\nlogin:guest\r\npasscode:guest\r\n\r\n\0\n\nSUBSCRIBE\nid:1\ndestination:/queue/{queue}\nreceipt:r1\n\n\0"
    ))
    .await;
    assert_eq!(c.recv().await.command, Command::Connected);
    assert_eq!(c.recv().await.get("receipt-id"), Some("r1"));
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn plain_tcp_listener_speaks_stomp() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("tcp");
    let mut c = Client::tcp(&gw).await;
    assert_eq!(c.connect("1.2").await.command, Command::Connected);
    c.subscribe("t", &format!("/queue/{queue}"), &[]).await;
    c.send_confirmed(&format!("/queue/{queue}"), "over tcp", &[])
        .await;
    assert_eq!(body(&c.recv().await), "over tcp");
    c.disconnect().await;
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn health_ready_and_metrics_endpoints() {
    let gw = start_gateway(&[]).await;
    let base = format!("http://{}", gw.http_addr);
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move { http_get(&url).await }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    let mut c = Client::logged_in_ws(&gw).await;
    c.subscribe("m", &format!("/topic/{}", unique("metrics")), &[])
        .await;
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("stompgate_sessions{version=\"1.2\",transport=\"websocket\"} 1"),
        "{text}"
    );
    assert!(text.contains("stompgate_subscriptions 1"), "{text}");
    assert!(
        text.contains("stompgate_frames_received_total{command=\"SUBSCRIBE\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn readyz_fails_when_the_broker_is_unreachable() {
    let gw = start_gateway(&["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"]).await;
    let (status, _) = http_get(&format!("http://{}/readyz", gw.http_addr)).await;
    assert_eq!(status, 503);
    // And sessions get a clear error.
    let mut c = Client::ws(&gw).await;
    let reply = c.connect("1.2").await;
    assert_eq!(reply.get("message"), Some("Bad CONNECT"));
    assert!(
        body(&reply).contains("RabbitMQ is unreachable"),
        "{}",
        body(&reply)
    );
}

#[tokio::test]
async fn foreign_origin_is_forbidden_when_origins_are_restricted() {
    let gw = start_gateway(&["--allowed-origins", "https://app.example"]).await;
    let url = format!("ws://{}/ws", gw.http_addr);
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://app.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}

#[tokio::test]
async fn connection_limit_refuses_with_503_and_tcp_error() {
    let gw = start_gateway(&["--max-connections", "1"]).await;
    let _first = Client::logged_in_ws(&gw).await;
    let url = format!("ws://{}/ws", gw.http_addr);
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    let mut tcp = Client::tcp(&gw).await;
    let reply = tcp.recv().await;
    assert_eq!(reply.get("message"), Some("Connection refused"));
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    gw.shutdown();
    let err = c.recv().await;
    assert_eq!(err.command, Command::Error);
    assert_eq!(err.get("message"), Some("Server shutting down"));
    assert_eq!(c.close_code().await, Some(1001));
    gw.wait().await;
    let _ = Frame::new(Command::Disconnect);
}

/// Minimal HTTP/1.0 GET (no chunked bodies) (status, body) without another client dependency.
pub async fn http_get(url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Minimal HTTP/1.0 POST (status, body).
pub async fn http_post(url: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn stomp_over_sockjs_raw_websocket() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws_url(&format!("ws://{}/stomp/websocket", gw.http_addr), None).await;
    c.send_text("CONNECT\naccept-version:1.2\nlogin:guest\npasscode:guest\n\n\0")
        .await;
    assert_eq!(c.recv().await.command, Command::Connected);
}

/// The SockJS WebSocket transport as sockjs-client uses it, end to end: `o`, STOMP frames in
/// `a[...]`, a message from RabbitMQ, DISCONNECT's receipt, then `c[1000,...]` and the close.
/// The session runs on the connection itself (no SockJS queue).
#[tokio::test]
async fn stomp_over_sockjs_framed_websocket_end_to_end() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let url = format!("ws://{}/stomp/000/{}/websocket", gw.http_addr, unique("s"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // The next SockJS text frame, heart-beats (`h`) skipped.
    async fn next_text(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> String {
        loop {
            let message = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .expect("a frame in time")
                .expect("the connection open")
                .expect("a valid frame");
            match message {
                Message::Text(t) if t.as_str() != "h" => return t.as_str().to_owned(),
                Message::Close(frame) => return format!("close {frame:?}"),
                _ => {}
            }
        }
    }
    let send = |frame: &str| Message::text(serde_json::to_string(&[frame]).unwrap());
    assert_eq!(next_text(&mut ws).await, "o");
    ws.send(send(
        "CONNECT\naccept-version:1.1,1.2\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0",
    ))
    .await
    .unwrap();
    assert!(next_text(&mut ws).await.starts_with("a[\"CONNECTED\\n"));
    ws.send(send(
        "SUBSCRIBE\nid:0\ndestination:/topic/sockjs.ws\nreceipt:sub\n\n\0",
    ))
    .await
    .unwrap();
    assert!(next_text(&mut ws).await.contains("receipt-id:sub"));
    amqp.publish(
        "amq.topic",
        "sockjs.ws",
        b"over the framed websocket",
        Default::default(),
    )
    .await;
    let message = next_text(&mut ws).await;
    assert!(message.starts_with("a[\"MESSAGE\\n"), "{message}");
    assert!(message.contains("over the framed websocket"), "{message}");
    ws.send(send("DISCONNECT\nreceipt:bye\n\n\0"))
        .await
        .unwrap();
    assert!(next_text(&mut ws).await.contains("receipt-id:bye"));
    assert_eq!(next_text(&mut ws).await, r#"c[1000,"DISCONNECT"]"#);
    assert!(next_text(&mut ws).await.starts_with("close Some"));
}

#[tokio::test]
async fn stomp_heartbeats_keep_flowing_over_sockjs_xhr_polling() {
    let gw = start_gateway(&[]).await;
    let base = format!("http://{}/stomp/123/{}", gw.http_addr, unique("s"));
    let (status, open) = http_post(&format!("{base}/xhr"), "").await;
    assert_eq!((status, open.as_str()), (200, "o\n"));
    let connect = serde_json::to_string(&[
        "CONNECT\naccept-version:1.2\nlogin:guest\npasscode:guest\nheart-beat:0,300\n\n\0",
    ])
    .unwrap();
    let (status, _) = http_post(&format!("{base}/xhr_send"), &connect).await;
    assert_eq!(status, 204);
    let (_, connected) = http_post(&format!("{base}/xhr"), "").await;
    assert!(connected.starts_with("a[\"CONNECTED"), "{connected}");
    assert!(connected.contains("heart-beat:300,0"), "{connected}");
    // The next poll is answered by a STOMP heart-beat (a SockJS message "\n"), well before
    // SockJS's own 25 s `h` frame.
    let started = std::time::Instant::now();
    let (_, beat) = http_post(&format!("{base}/xhr"), "").await;
    assert_eq!(beat, "a[\"\\n\"]\n");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn sockjs_info_and_client_script_are_served() {
    let gw = start_gateway(&[]).await;
    let (status, info) = http_get(&format!("http://{}/stomp/info", gw.http_addr)).await;
    assert_eq!(status, 200);
    assert!(info.contains("\"websocket\":true"), "{info}");
    let (status, script) = http_get(&format!(
        "http://{}{}",
        gw.http_addr,
        stompgate::sockjs::CLIENT_PATH
    ))
    .await;
    assert_eq!(status, 200);
    assert!(script.contains("SockJS"), "served the vendored client");
    let gw = start_gateway(&["--sockjs-enabled", "false"]).await;
    let (status, _) = http_get(&format!("http://{}/stomp/info", gw.http_addr)).await;
    assert_eq!(status, 404);
}

/// A request with an `Origin` header; returns the status code.
async fn status_with_origin(method: &str, url: &str, origin: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let request = format!(
        "{method} /{path} HTTP/1.0\r\nHost: {host}\r\nOrigin: {origin}\r\nConnection: close\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn foreign_origin_is_forbidden_on_sockjs_xhr_and_websocket() {
    let gw = start_gateway(&["--allowed-origins", "https://app.example"]).await;
    let session = format!("http://{}/stomp/123/{}", gw.http_addr, unique("s"));
    // xhr: the session cannot even be opened from a foreign page, nor fed.
    assert_eq!(
        status_with_origin(
            "POST",
            &format!("{session}/xhr"),
            "https://evil.example",
            ""
        )
        .await,
        403
    );
    assert_eq!(
        status_with_origin(
            "POST",
            &format!("{session}/xhr_send"),
            "https://evil.example",
            "[\"CONNECT\\nlogin:guest\\npasscode:guest\\n\\n\\u0000\"]"
        )
        .await,
        403
    );
    assert_eq!(
        status_with_origin("POST", &format!("{session}/xhr"), "https://app.example", "").await,
        200
    );
    // websocket transport (framed and raw).
    for path in [
        format!("/stomp/123/{}/websocket", unique("s")),
        "/stomp/websocket".to_string(),
    ] {
        let url = format!("ws://{}{path}", gw.http_addr);
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", "https://evil.example".parse().unwrap());
        let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
        assert!(err.to_string().contains("403"), "{path}: {err}");
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", "https://app.example".parse().unwrap());
        assert!(
            tokio_tungstenite::connect_async(request).await.is_ok(),
            "{path}"
        );
    }
}
