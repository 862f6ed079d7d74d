//! Session behaviour end to end: negotiation, receipts, acks, transactions, heart-beats.

use crate::support::{Amqp, Client, body, start_gateway, unique};
use lapin::BasicProperties;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stompgate::stomp::{Command, Frame};

#[tokio::test]
async fn connected_frame_negotiates_version_and_carries_server_and_session() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    let reply = c.connect("1.0,1.1").await;
    assert_eq!(reply.command, Command::Connected);
    assert_eq!(reply.get("version"), Some("1.1"));
    assert_eq!(reply.get("heart-beat"), Some("0,0"));
    assert!(reply.get("session").unwrap().starts_with("session-"));
    let server = reply.get("server").expect("server header");
    assert!(server.starts_with("RabbitMQ/"), "{server}");
    assert!(server.contains("stompgate/"), "{server}");
    let names: Vec<&str> = reply.headers.iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["server", "session", "heart-beat", "version"]);

    let mut old = Client::ws(&gw).await;
    let reply = old
        .connect_with(&[("login", "guest"), ("passcode", "guest")])
        .await;
    assert_eq!(
        reply.get("version"),
        Some("1.0"),
        "no accept-version means 1.0"
    );
}

/// A TCP proxy to the test broker that holds (accepts, never forwards) every connection
/// made before [`HoldingProxy::pass`]: the gateway's start-up connections (its product
/// probe and the readiness probe) hang, as on a broker slow to answer them, while the
/// logins made afterwards go through.
struct HoldingProxy {
    port: u16,
    held: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
    passing: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl HoldingProxy {
    async fn start() -> HoldingProxy {
        let uri: lapin::uri::AMQPUri = crate::support::amqp_url().parse().expect("test URL");
        let target = format!("{}:{}", uri.authority.host, uri.authority.port);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let held = Arc::new(Mutex::new(Vec::new()));
        let passing = Arc::new(AtomicBool::new(false));
        let (h, p) = (held.clone(), passing.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !p.load(Ordering::Acquire) {
                    h.lock().expect("lock").push(inbound);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        HoldingProxy {
            port,
            held,
            passing,
            accept,
        }
    }

    fn held(&self) -> usize {
        self.held.lock().expect("lock").len()
    }

    fn pass(&self) {
        self.passing.store(true, Ordering::Release);
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test]
async fn connected_names_rabbitmq_for_the_first_client_too() {
    // Issue 18: the product was learned by a probe after start, and a client that logged in
    // before it answered got `server:stompgate/<v>` while later ones got
    // `RabbitMQ/<v> stompgate/<v>`. Here that probe never answers; the login does.
    let proxy = HoldingProxy::start().await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    // A long login timeout: the first CONNECTED may wait for the product for half of it.
    let gw = start_gateway(&["--amqp-url", &url, "--login-timeout-secs", "120"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while proxy.held() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway's start-up connections never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.pass();
    let mut headers = Vec::new();
    for _ in 0..2 {
        let mut c = Client::ws(&gw).await;
        c.send(
            Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("host", "/")
                .header("login", "guest")
                .header("passcode", "guest"),
        )
        .await;
        let reply = c
            .recv_within(Duration::from_secs(60))
            .await
            .expect("CONNECTED");
        assert_eq!(reply.command, Command::Connected, "{reply:?}");
        headers.push(reply.get("server").expect("server header").to_string());
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        headers[0].starts_with("RabbitMQ/")
            && headers[0].ends_with(&format!(" stompgate/{version}")),
        "{headers:?}"
    );
    assert_eq!(headers[0], headers[1]);
}

#[tokio::test]
async fn hide_server_info_omits_server_header() {
    let gw = start_gateway(&["--hide-server-info"]).await;
    let mut c = Client::ws(&gw).await;
    let reply = c.connect("1.2").await;
    assert_eq!(reply.get("server"), None);
}

#[tokio::test]
async fn version_mismatch_is_reported() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    let reply = c.connect("2.0").await;
    assert_eq!(reply.command, Command::Error);
    assert_eq!(reply.get("message"), Some("Version mismatch"));
    assert_eq!(body(&reply), "Supported versions are 1.0,1.1,1.2\n");
}

#[tokio::test]
async fn frames_before_connect_are_illegal() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    c.send(Frame::new(Command::Send).header("destination", "/queue/x"))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply.get("message"), Some("Illegal command"));
    assert_eq!(body(&reply), "You must log in using CONNECT first");
}

#[tokio::test]
async fn client_ack_mode_acks_cumulatively_and_nack_requeues() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("acks");
    let mut c = Client::logged_in_ws(&gw).await;
    for i in 0..3 {
        c.send_confirmed(&format!("/queue/{queue}"), &format!("m{i}"), &[])
            .await;
    }
    c.subscribe("s", &format!("/queue/{queue}"), &[("ack", "client")])
        .await;
    let frames: Vec<Frame> = [c.recv().await, c.recv().await, c.recv().await].into();
    // 1.2: the `ack` header carries the id to acknowledge.
    let ack_id = frames[1].get("ack").expect("ack header").to_string();
    c.send(
        Frame::new(Command::Ack)
            .header("id", ack_id.as_str())
            .header("receipt", "a1"),
    )
    .await;
    assert_eq!(c.recv().await.get("receipt-id"), Some("a1"));
    // m0 and m1 are acked (cumulative); m2 is still unacked.
    let nack_id = frames[2].get("ack").unwrap().to_string();
    c.send(
        Frame::new(Command::Nack)
            .header("id", nack_id.as_str())
            .header("receipt", "n1"),
    )
    .await;
    assert_eq!(c.recv().await.get("receipt-id"), Some("n1"));
    let redelivered = c.recv().await;
    assert_eq!(body(&redelivered), "m2");
    assert_eq!(redelivered.get("redelivered"), Some("true"));
    // Acking an already-settled delivery is an error.
    c.send(Frame::new(Command::Ack).header("id", ack_id.as_str()))
        .await;
    let err = c.recv().await;
    assert_eq!(err.get("message"), Some("Message not found"));
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn client_individual_acks_only_the_named_message() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("indiv");
    let mut c = Client::logged_in_ws(&gw).await;
    for i in 0..2 {
        c.send_confirmed(&format!("/queue/{queue}"), &format!("m{i}"), &[])
            .await;
    }
    c.subscribe(
        "s",
        &format!("/queue/{queue}"),
        &[("ack", "client-individual"), ("prefetch-count", "10")],
    )
    .await;
    let m0 = c.recv().await;
    let m1 = c.recv().await;
    c.send(
        Frame::new(Command::Ack)
            .header("id", m1.get("ack").unwrap())
            .header("receipt", "x"),
    )
    .await;
    assert_eq!(c.recv().await.command, Command::Receipt);
    drop(c);
    // m0 was never acked: it goes back to the queue when the session ends (the acked m1
    // does not).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while amqp.queue_depth(&queue).await != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "m0 not requeued: depth {:?}",
            amqp.queue_depth(&queue).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = m0;
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn version_1_1_acks_by_message_id() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("v11");
    let mut c = Client::ws(&gw).await;
    assert_eq!(c.connect("1.1").await.command, Command::Connected);
    c.send_confirmed(&format!("/queue/{queue}"), "x", &[]).await;
    c.subscribe("s", &format!("/queue/{queue}"), &[("ack", "client")])
        .await;
    let m = c.recv().await;
    assert_eq!(m.get("ack"), None, "1.1 MESSAGE has no ack header");
    c.send(
        Frame::new(Command::Ack)
            .header("message-id", m.get("message-id").unwrap())
            .header("subscription", "s")
            .header("receipt", "ok"),
    )
    .await;
    assert_eq!(c.recv().await.get("receipt-id"), Some("ok"));
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn transaction_commit_publishes_and_abort_discards() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("tx");
    let dest = format!("/queue/{queue}");
    let mut c = Client::logged_in_ws(&gw).await;
    c.subscribe("s", &dest, &[]).await;
    c.send(
        Frame::new(Command::Begin)
            .header("transaction", "t1")
            .header("receipt", "b"),
    )
    .await;
    assert_eq!(c.recv().await.get("receipt-id"), Some("b"));
    for word in ["one", "two"] {
        c.send(
            Frame::new(Command::Send)
                .header("destination", dest.as_str())
                .header("transaction", "t1")
                .with_body(word),
        )
        .await;
    }
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing delivered before COMMIT"
    );
    c.send(
        Frame::new(Command::Commit)
            .header("transaction", "t1")
            .header("receipt", "c"),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let f = c.recv().await;
        seen.push(match f.command {
            Command::Receipt => format!("receipt:{}", f.get("receipt-id").unwrap()),
            _ => body(&f),
        });
    }
    assert!(
        seen.contains(&"one".to_string()) && seen.contains(&"two".to_string()),
        "{seen:?}"
    );
    assert!(seen.contains(&"receipt:c".to_string()), "{seen:?}");

    c.send(Frame::new(Command::Begin).header("transaction", "t2"))
        .await;
    c.send(
        Frame::new(Command::Send)
            .header("destination", dest.as_str())
            .header("transaction", "t2")
            .with_body("never"),
    )
    .await;
    c.send(
        Frame::new(Command::Abort)
            .header("transaction", "t2")
            .header("receipt", "ab"),
    )
    .await;
    assert_eq!(c.recv().await.get("receipt-id"), Some("ab"));
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none());
    // COMMIT of an unknown transaction.
    c.send(Frame::new(Command::Commit).header("transaction", "nope"))
        .await;
    let err = c.recv().await;
    assert_eq!(err.get("message"), Some("Bad transaction"));
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn heartbeats_are_sent_and_missing_client_heartbeats_close_the_session() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "1500,300"),
        ])
        .await;
    assert_eq!(reply.get("heart-beat"), Some("300,1500"));
    // The server sends every 300 ms; we stay silent, so it gives up after 1500 ms + grace
    // (3.25 s): several heart-beats come first, however busy the machine.
    let code = c.close_code().await;
    assert_eq!(code, Some(4000));
    assert!(c.heartbeats >= 2, "got {} heart-beats", c.heartbeats);
}

#[tokio::test]
async fn disconnect_receipt_arrives_before_close() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    c.disconnect().await;
    assert_eq!(c.close_code().await, Some(1000));
}

#[tokio::test]
async fn ten_thousand_sends_then_disconnect_lose_nothing() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("bulk");
    let mut c = Client::logged_in_ws(&gw).await;
    c.send_confirmed(&format!("/queue/{queue}"), "first", &[])
        .await;
    for i in 0..10_000 {
        c.send(
            Frame::new(Command::Send)
                .header("destination", format!("/queue/{queue}"))
                .with_body(format!("{i}")),
        )
        .await;
    }
    c.disconnect().await;
    assert_eq!(amqp.queue_depth(&queue).await, Some(10_001));
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn one_mebibyte_message_split_across_websocket_frames() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("large");
    let mut c = Client::logged_in_ws(&gw).await;
    c.subscribe("s", &format!("/queue/{queue}"), &[]).await;
    let payload: String = (0..1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let mut encoded = bytes::BytesMut::new();
    stompgate::stomp::encode(
        &Frame::new(Command::Send)
            .header("destination", format!("/queue/{queue}"))
            .header("receipt", "big")
            .with_body(payload.clone()),
        stompgate::stomp::Version::V1_2,
        &mut encoded,
    );
    // Like stomp.js 2.x: 16 KiB WebSocket messages.
    for chunk in encoded.chunks(16 * 1024) {
        c.send_raw(chunk).await;
    }
    let mut got_receipt = false;
    let mut got_message = None;
    while !(got_receipt && got_message.is_some()) {
        let f = c.recv().await;
        match f.command {
            Command::Receipt => got_receipt = true,
            Command::Message => got_message = Some(f),
            other => panic!("unexpected {other:?}"),
        }
    }
    let msg = got_message.unwrap();
    assert_eq!(msg.body.len(), payload.len());
    assert_eq!(msg.body, payload.as_bytes());
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn pooled_connection_is_shared_by_sessions_with_the_same_credentials() {
    let gw = start_gateway(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Client::logged_in_ws(&gw).await);
    }
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains("stompgate_broker_connections 1"),
        "{metrics}"
    );
    // Idle sessions hold no channel: it is opened on first use.
    assert!(metrics.contains("stompgate_broker_channels 0"), "{metrics}");
    clients[0]
        .send_confirmed(
            &format!("/queue/{}", unique("x")),
            "hi",
            &[("x-expires", "5000")],
        )
        .await;
    let metrics = gw.metrics_text();
    assert!(metrics.contains("stompgate_broker_channels 1"), "{metrics}");
}

#[tokio::test]
async fn publish_from_amqp_with_properties_round_trips_through_send() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("roundtrip");
    let mut c = Client::logged_in_ws(&gw).await;
    c.subscribe("s", &format!("/queue/{queue}"), &[]).await;
    c.send_confirmed(
        &format!("/queue/{queue}"),
        "payload",
        &[
            ("content-type", "text/plain"),
            ("correlation-id", "abc"),
            ("priority", "5"),
            ("persistent", "true"),
            ("amqp-message-id", "m-1"),
            ("custom", "value"),
        ],
    )
    .await;
    let m = c.recv().await;
    for (k, v) in [
        ("content-type", "text/plain"),
        ("correlation-id", "abc"),
        ("priority", "5"),
        ("persistent", "true"),
        ("amqp-message-id", "m-1"),
        ("custom", "value"),
    ] {
        assert_eq!(m.get(k), Some(v), "header {k} in {m:?}");
    }
    let _ = BasicProperties::default();
    amqp.delete_queue(&queue).await;
}
