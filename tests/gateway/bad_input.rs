//! Bad-input catalogue: every malformed or hostile input gets a clear ERROR frame and/or
//! close code, and the same gateway keeps serving a well-behaved client afterwards.

use crate::support::{Amqp, Client, Closed, body, start_gateway, unique};
use futures::StreamExt;
use lapin::{BasicProperties, ExchangeKind};
use std::time::{Duration, Instant};
use stompgate::gateway::server::Gateway;
use stompgate::stomp::{Command, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A second, well-behaved client on the same gateway still logs in, subscribes and
/// receives a message.
async fn still_serves(gw: &Gateway) {
    let mut c = Client::logged_in_ws(gw).await;
    let dest = format!("/topic/{}", unique("badinput-ok"));
    c.subscribe("ok", &dest, &[]).await;
    c.send_confirmed(&dest, "still serving", &[]).await;
    let m = c.recv().await;
    assert_eq!(m.command, Command::Message, "{m:?}");
    assert_eq!(body(&m), "still serving");
    c.disconnect().await;
}

/// Reads the ERROR the gateway answers with and checks its `message` and body.
async fn expect_error(c: &mut Client, message: &str, detail: &str) {
    let err = c.recv().await;
    assert_eq!(err.command, Command::Error, "{err:?}");
    assert_eq!(err.get("message"), Some(message), "{err:?}");
    assert_eq!(body(&err), detail, "{err:?}");
}

/// CONNECT bytes for a raw send (guest/guest, STOMP 1.2).
const CONNECT: &[u8] = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0";

async fn logged_in_tcp(gw: &Gateway) -> Client {
    let mut c = Client::tcp(gw).await;
    assert_eq!(c.connect("1.2").await.command, Command::Connected);
    c
}

#[tokio::test]
async fn garbage_before_connect_is_an_invalid_frame() {
    let gw = start_gateway(&[]).await;
    // A TLS ClientHello on the plain STOMP port: binary, no EOL within the command limit.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.extend((0u8..=200).map(|b| b.wrapping_mul(7) | 0x80));
    let mut tcp = Client::tcp(&gw).await;
    tcp.send_raw(&hello).await;
    expect_error(
        &mut tcp,
        "Invalid frame",
        "Command exceeds the limit of 64 bytes\n",
    )
    .await;
    assert!(matches!(tcp.wait_closed().await, Closed::Eof));
    // The same over WebSocket, plus the close code for undecodable STOMP.
    let mut ws = Client::ws(&gw).await;
    ws.send_raw(&hello).await;
    expect_error(
        &mut ws,
        "Invalid frame",
        "Command exceeds the limit of 64 bytes\n",
    )
    .await;
    assert_eq!(ws.close_code().await, Some(1002));
    still_serves(&gw).await;
}

#[tokio::test]
async fn frames_before_connect_are_illegal_until_connect() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", "/topic/x"),
    )
    .await;
    expect_error(
        &mut c,
        "Illegal command",
        "You must log in using CONNECT first",
    )
    .await;
    c.send(Frame::new(Command::Send).header("destination", "/topic/x"))
        .await;
    expect_error(
        &mut c,
        "Illegal command",
        "You must log in using CONNECT first",
    )
    .await;
    // Nothing was done for those frames; a CONNECT on the same connection still works.
    assert_eq!(c.connect("1.2").await.command, Command::Connected);
    still_serves(&gw).await;
}

#[tokio::test]
async fn unknown_commands_are_bad_commands_and_overlong_ones_invalid_frames() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    c.send_raw(b"FROBNICATE\nreceipt:r-1\n\n\0").await;
    let err = c.recv().await;
    assert_eq!(err.get("message"), Some("Bad command"));
    assert_eq!(body(&err), "Could not interpret command \"FROBNICATE\"\n");
    assert_eq!(err.get("receipt-id"), Some("r-1"));
    // Not fatal: the session still answers.
    c.send(
        Frame::new(Command::Begin)
            .header("transaction", "t")
            .header("receipt", "alive"),
    )
    .await;
    assert_eq!(c.recv().await.get("receipt-id"), Some("alive"));
    // A command longer than 64 bytes cannot be a STOMP command: fatal framing error.
    let mut long = vec![b'X'; 100];
    long.extend_from_slice(b"\n\n\0");
    c.send_raw(&long).await;
    expect_error(
        &mut c,
        "Invalid frame",
        "Command exceeds the limit of 64 bytes\n",
    )
    .await;
    assert_eq!(c.close_code().await, Some(1002));
    still_serves(&gw).await;
}

#[tokio::test]
async fn oversized_frames_are_refused_before_they_are_buffered() {
    let gw = start_gateway(&["--max-frame-bytes", "65536"]).await;
    // A body streamed in WebSocket messages each below the message limit.
    let mut c = Client::logged_in_ws(&gw).await;
    c.send_raw(b"SEND\ndestination:/topic/big\n\n").await;
    let chunk = vec![b'a'; 16 * 1024];
    for _ in 0..5 {
        c.send_raw(&chunk).await;
    }
    expect_error(
        &mut c,
        "Frame too large",
        "Frame exceeds the limit of 65536 bytes\n",
    )
    .await;
    assert_eq!(c.close_code().await, Some(1002));
    // A content-length far beyond the limit is refused from the headers alone.
    let mut c = Client::logged_in_ws(&gw).await;
    c.send_raw(b"SEND\ndestination:/topic/big\ncontent-length:10000000000\n\n")
        .await;
    expect_error(
        &mut c,
        "Frame too large",
        "Frame exceeds the limit of 65536 bytes\n",
    )
    .await;
    assert_eq!(c.close_code().await, Some(1002));
    // One WebSocket message bigger than the frame limit.
    let mut c = Client::logged_in_ws(&gw).await;
    let mut frame = b"SEND\ndestination:/topic/big\n\n".to_vec();
    frame.extend(std::iter::repeat_n(b'b', 200 * 1024));
    frame.push(0);
    c.send_raw(&frame).await;
    expect_error(
        &mut c,
        "Frame too large",
        "WebSocket message over the size limit: Message too long: 204830 > 66560\n",
    )
    .await;
    assert_eq!(c.close_code().await, Some(1009));
    // Plain TCP.
    let mut t = logged_in_tcp(&gw).await;
    t.send_raw(&frame).await;
    expect_error(
        &mut t,
        "Frame too large",
        "Frame exceeds the limit of 65536 bytes\n",
    )
    .await;
    assert!(matches!(t.wait_closed().await, Closed::Eof));
    still_serves(&gw).await;
}

#[tokio::test]
async fn ten_thousand_headers_are_too_many() {
    let gw = start_gateway(&[]).await;
    let mut frame = b"SEND\ndestination:/topic/h\n".to_vec();
    for i in 0..10_000 {
        frame.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    frame.extend_from_slice(b"\n\0");
    let mut c = Client::logged_in_ws(&gw).await;
    c.send_raw(&frame).await;
    expect_error(
        &mut c,
        "Too many headers",
        "Frame has more than 100 headers\n",
    )
    .await;
    assert_eq!(c.close_code().await, Some(1002));
    // Before CONNECT too (where the frame limit is 64 KiB).
    let mut c = Client::ws(&gw).await;
    let mut connect = b"CONNECT\naccept-version:1.2\n".to_vec();
    connect.extend_from_slice(&frame[b"SEND\ndestination:/topic/h\n".len()..]);
    c.send_raw(&connect).await;
    expect_error(
        &mut c,
        "Too many headers",
        "Frame has more than 100 headers\n",
    )
    .await;
    assert_eq!(c.close_code().await, Some(1002));
    still_serves(&gw).await;
}

#[tokio::test]
async fn a_one_mib_header_line_is_too_long() {
    let gw = start_gateway(&[]).await;
    let mut frame = b"SEND\ndestination:/topic/h\nx-long:".to_vec();
    frame.extend(std::iter::repeat_n(b'z', 1024 * 1024));
    frame.extend_from_slice(b"\n\n\0");
    let mut c = Client::logged_in_ws(&gw).await;
    c.send_raw(&frame).await;
    expect_error(
        &mut c,
        "Header too long",
        "Header line exceeds the limit of 102400 bytes\n",
    )
    .await;
    assert_eq!(c.close_code().await, Some(1002));
    let mut t = logged_in_tcp(&gw).await;
    t.send_raw(&frame).await;
    expect_error(
        &mut t,
        "Header too long",
        "Header line exceeds the limit of 102400 bytes\n",
    )
    .await;
    still_serves(&gw).await;
}

#[tokio::test]
async fn content_length_longer_than_the_body_swallows_the_next_frame_then_fails() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    // The body is 5 bytes, the header says 100: the gateway waits for 100 bytes...
    c.send_raw(b"SEND\ndestination:/topic/cl\ncontent-length:100\n\nshort\0")
        .await;
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing is decided until 100 bytes arrived"
    );
    // ...so the next frame becomes part of the body, and byte 101 is not the NUL.
    c.send(
        Frame::new(Command::Send)
            .header("destination", "/topic/cl")
            .header("receipt", "r")
            .with_body("x".repeat(200)),
    )
    .await;
    expect_error(
        &mut c,
        "Invalid frame",
        "Missing NUL after the body of the length given by content-length\n",
    )
    .await;
    assert_eq!(c.close_code().await, Some(1002));
    still_serves(&gw).await;
}

#[tokio::test]
async fn invalid_utf8_in_headers_is_an_invalid_frame() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    c.send_raw(b"SEND\ndestination:/topic/\xff\xfe\xc3\x28\n\nx\0")
        .await;
    expect_error(&mut c, "Invalid frame", "Header is not valid UTF-8\n").await;
    assert_eq!(c.close_code().await, Some(1002));
    // In CONNECT as well.
    let mut c = Client::ws(&gw).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nlogin:gu\xffest\npasscode:guest\n\n\0")
        .await;
    expect_error(&mut c, "Invalid frame", "Header is not valid UTF-8\n").await;
    assert_eq!(c.close_code().await, Some(1002));
    still_serves(&gw).await;
}

#[tokio::test]
async fn nul_in_header_names_is_an_invalid_frame() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    c.send_raw(b"SEND\ndesti\0nation:/topic/x\n\nbody\0").await;
    expect_error(
        &mut c,
        "Invalid frame",
        "NUL octet in the command or headers\n",
    )
    .await;
    assert_eq!(c.close_code().await, Some(1002));
    let mut t = Client::tcp(&gw).await;
    t.send_raw(b"CONNECT\naccept-version:1.2\nlog\0in:guest\n\n\0")
        .await;
    expect_error(
        &mut t,
        "Invalid frame",
        "NUL octet in the command or headers\n",
    )
    .await;
    assert!(matches!(t.wait_closed().await, Closed::Eof));
    still_serves(&gw).await;
}

#[tokio::test]
async fn heart_beat_values_out_of_range_are_refused() {
    let gw = start_gateway(&[]).await;
    for (value, detail) in [
        (
            "99999999999,0",
            "Invalid heart-beat header \"99999999999,0\": 99999999999 ms exceeds the maximum of 86400000 ms (one day)\n",
        ),
        (
            "0,18446744073709551616",
            "Invalid heart-beat header \"0,18446744073709551616\": 18446744073709551616 ms exceeds the maximum of 86400000 ms (one day)\n",
        ),
        (
            "-1,1000",
            "Invalid heart-beat header \"-1,1000\": expected two comma-separated non-negative integers (milliseconds), e.g. 10000,10000\n",
        ),
        (
            "1000",
            "Invalid heart-beat header \"1000\": expected two comma-separated non-negative integers (milliseconds), e.g. 10000,10000\n",
        ),
    ] {
        let mut c = Client::ws(&gw).await;
        let reply = c
            .connect_with(&[
                ("accept-version", "1.2"),
                ("login", "guest"),
                ("passcode", "guest"),
                ("heart-beat", value),
            ])
            .await;
        assert_eq!(reply.command, Command::Error, "{value}: {reply:?}");
        assert_eq!(reply.get("message"), Some("Invalid heart-beat"));
        assert_eq!(body(&reply), detail);
        assert_eq!(c.close_code().await, Some(1000), "{value}");
    }
    // The largest accepted value works (timers far in the future must not overflow).
    let mut c = Client::ws(&gw).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "86400000,86400000"),
        ])
        .await;
    assert_eq!(reply.get("heart-beat"), Some("86400000,86400000"));
    still_serves(&gw).await;
}

#[tokio::test]
async fn slowloris_connect_is_closed_at_the_login_timeout() {
    let gw = start_gateway(&["--login-timeout-secs", "2"]).await;
    // Taken before the connection exists: the gateway's clock starts later.
    let started = Instant::now();
    let mut c = Client::ws(&gw).await;
    // One byte every 250 ms (the CONNECT would need ~15 s): trickling bytes does not
    // extend the login timeout, the ERROR interrupts the trickle.
    let mut answer = None;
    for &b in CONNECT {
        if !c.try_send_raw(&[b]).await {
            break;
        }
        answer = c.recv_within(Duration::from_millis(250)).await;
        if answer.is_some() {
            break;
        }
    }
    let err = match answer {
        Some(frame) => frame,
        None => c.recv().await,
    };
    assert_eq!(err.command, Command::Error, "{err:?}");
    assert_eq!(err.get("message"), Some("Login timeout"), "{err:?}");
    assert_eq!(
        body(&err),
        "No CONNECT frame within 2 s of opening the connection.\n"
    );
    let elapsed = started.elapsed();
    assert_eq!(c.close_code().await, Some(4001));
    // Not before the timeout, and long before the trickle would have ended.
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(12),
        "{elapsed:?}"
    );
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains("stompgate_session_closes_total{reason=\"login_timeout\"} 1"),
        "{metrics}"
    );
    // Plain TCP: the same ERROR, then the socket closes.
    let mut t = Client::tcp(&gw).await;
    t.send_raw(b"CONN").await;
    expect_error(
        &mut t,
        "Login timeout",
        "No CONNECT frame within 2 s of opening the connection.\n",
    )
    .await;
    assert!(matches!(t.wait_closed().await, Closed::Eof));
    still_serves(&gw).await;
}

// ---- raw WebSocket frames ----

/// Opens a WebSocket to `/ws` by hand and returns the socket after the 101.
async fn raw_websocket(gw: &Gateway) -> TcpStream {
    raw_websocket_at(gw, "/ws").await
}

async fn raw_websocket_at(gw: &Gateway, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: v12.stomp\r\n\r\n",
        gw.http_addr
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("handshake response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// A client frame (FIN set) with the given opcode, masked with `mask` if any.
fn ws_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads server frames until a Close; returns its code (None: EOF without a Close) and
/// the text of the data frames read before it.
async fn read_until_close(s: &mut TcpStream) -> (Option<u16>, String) {
    let mut buf = Vec::new();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Parse what we have.
        while buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            let (len, start) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < start + len {
                break;
            }
            let payload = buf[start..start + len].to_vec();
            buf.drain(..start + len);
            match opcode {
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return (code, text);
                }
                0x0..=0x2 => text.push_str(&String::from_utf8_lossy(&payload)),
                _ => {}
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (None, text),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no close within 10 s; read so far: {text:?}"),
        }
    }
}

#[tokio::test]
async fn unmasked_client_frame_is_a_protocol_error() {
    let gw = start_gateway(&[]).await;
    let mut s = raw_websocket(&gw).await;
    // A valid masked CONNECT first, so a session is running.
    s.write_all(&ws_frame(0x1, CONNECT, Some([1, 2, 3, 4])))
        .await
        .unwrap();
    s.write_all(&ws_frame(0x1, b"SEND\ndestination:/topic/x\n\nhi\0", None))
        .await
        .unwrap();
    let (code, text) = read_until_close(&mut s).await;
    assert!(text.starts_with("CONNECTED\n"), "{text}");
    assert_eq!(code, Some(1002), "{text}");
    still_serves(&gw).await;
}

#[tokio::test]
async fn a_declared_length_of_2_pow_62_is_refused_without_allocating() {
    let gw = start_gateway(&[]).await;
    let mut s = raw_websocket(&gw).await;
    // Header only: binary, masked, 64-bit length 2^62, then the mask and a few bytes.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 62).to_be_bytes());
    frame.extend_from_slice(&[9, 9, 9, 9]);
    frame.extend_from_slice(b"CONNECT\n");
    let rss_before = rss_bytes();
    s.write_all(&frame).await.unwrap();
    let (code, _) = read_until_close(&mut s).await;
    assert_eq!(code, Some(1009));
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "RSS grew by {grown} bytes");
    // A control frame may not exceed 125 bytes either.
    let mut s = raw_websocket(&gw).await;
    s.write_all(&ws_frame(0x9, &[0u8; 200], Some([1, 2, 3, 4])))
        .await
        .unwrap();
    let (code, _) = read_until_close(&mut s).await;
    assert_eq!(code, Some(1002));
    still_serves(&gw).await;
}

#[tokio::test]
async fn sockjs_websocket_violations_get_close_codes() {
    let gw = start_gateway(&[]).await;
    // Raw: the WebSocket close code says it. Framed: SockJS's close frame `c[code,...]`
    // says it, then the WebSocket closes normally.
    let framed = format!("/stomp/1/{}/websocket", unique("s"));
    for (path, raw) in [("/stomp/websocket", true), (framed.as_str(), false)] {
        for (frame, code) in [
            // Unmasked client frame.
            (ws_frame(0x1, b"CONNECT\n\n\0", None), 1002),
            // A declared length of 2^62: SockJS's "message too big".
            (
                [
                    &[0x81, 0x80 | 127][..],
                    &(1u64 << 62).to_be_bytes(),
                    &[9, 9, 9, 9],
                ]
                .concat(),
                4413,
            ),
        ] {
            let mut s = raw_websocket_at(&gw, path).await;
            s.write_all(&frame).await.unwrap();
            let (ws_code, text) = read_until_close(&mut s).await;
            if raw {
                assert_eq!(ws_code, Some(code), "{path}");
            } else {
                assert!(text.contains(&format!("c[{code},")), "{path}: {text}");
                assert_eq!(ws_code, Some(1000), "{path}");
            }
        }
    }
    still_serves(&gw).await;
}

/// Resident set size of this process (the in-process gateway's), from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

// ---- slow consumers ----

/// Publishes `count` 4 KiB messages to `exchange`/`key`.
async fn flood(amqp: &Amqp, exchange: &str, key: &str, count: usize) {
    let payload = vec![b'm'; 4096];
    for _ in 0..count {
        amqp.publish(exchange, key, &payload, BasicProperties::default())
            .await;
    }
}

async fn never_reading_subscriber_is_cut_off(fanout: bool) {
    let gw = start_gateway(&[
        "--fanout",
        if fanout { "true" } else { "false" },
        "--max-queued-messages",
        "256",
        // Own queue: the default, as the cut-off must come from the queue bound. Shared
        // queue: its ring bounds memory, the write timeout ends the session.
        "--write-timeout-secs",
        if fanout { "3" } else { "30" },
    ])
    .await;
    let amqp = Amqp::connect().await;
    let exchange = unique("badinput-slow");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    // The slow client: subscribes over raw TCP, then never reads again.
    let mut slow = TcpStream::connect(gw.stomp_addr.expect("tcp"))
        .await
        .unwrap();
    slow.write_all(CONNECT).await.unwrap();
    let sub = format!("SUBSCRIBE\nid:s\ndestination:/exchange/{exchange}/k\nreceipt:ok\n\n\0");
    slow.write_all(sub.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("receipt-id:ok") {
        let mut chunk = [0u8; 1024];
        let n = slow.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the RECEIPT");
        seen.extend_from_slice(&chunk[..n]);
    }
    let rss_before = rss_bytes();
    let mut peak = rss_before;
    // Up to 200 MiB of 4 KiB messages; a gateway buffering them all would grow by that much.
    let started = Instant::now();
    let mut closed_after = None;
    for round in 0..100 {
        flood(&amqp, &exchange, "k", 500).await;
        peak = peak.max(rss_bytes());
        let metrics = gw.metrics_text();
        if metrics.contains("stompgate_slow_consumers_total 1") {
            closed_after = Some((round + 1) * 500);
            break;
        }
    }
    // Own queue: the bound on deliveries waiting behind the blocked write cuts it during the
    // flood. Shared queue: the ring holds what waits, and the write timeout cuts it (below).
    if !fanout && closed_after.is_none() {
        panic!(
            "slow consumer not cut off after 50000 messages (RSS grew {} MiB); {}",
            peak.saturating_sub(rss_before) >> 20,
            gw.metrics_text()
        );
    }
    let grown = peak.saturating_sub(rss_before);
    eprintln!(
        "fanout={fanout}: cut off during the flood after {closed_after:?} messages in {:?}, RSS grew {} MiB",
        started.elapsed(),
        grown >> 20
    );
    assert!(grown < 96 << 20, "RSS grew by {} MiB", grown >> 20);
    // Closed at once, or once the blocked write gives up (the write timeout).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = gw.metrics_text();
        if metrics.contains("stompgate_session_closes_total{reason=\"slow_consumer\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Counted once.
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains("stompgate_slow_consumers_total 1\n"),
        "{metrics}"
    );
    // When the client finally reads, it finds the end of the stream (no hang).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "socket closed by the gateway");
    still_serves(&gw).await;
    amqp.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn never_reading_subscriber_on_a_shared_queue_is_cut_off_with_bounded_memory() {
    never_reading_subscriber_is_cut_off(true).await;
}

#[tokio::test]
async fn never_reading_subscriber_on_its_own_queue_is_cut_off_with_bounded_memory() {
    never_reading_subscriber_is_cut_off(false).await;
}

/// A WebSocket subscriber that falls behind on a shared queue, but whose socket still
/// takes bytes within the write timeout, gets the ERROR and close code 4002.
#[tokio::test]
async fn lagging_websocket_subscriber_gets_slow_consumer_and_4002() {
    let gw = start_gateway(&[
        "--fanout",
        "true",
        "--max-queued-messages",
        "8",
        "--write-timeout-secs",
        "20",
    ])
    .await;
    let amqp = Amqp::connect().await;
    let exchange = unique("badinput-lag");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut c = Client::logged_in_ws(&gw).await;
    c.subscribe("s", &format!("/exchange/{exchange}/k"), &[])
        .await;
    // Not reading while 16 MiB arrive: socket buffers fill, the session falls behind.
    flood(&amqp, &exchange, "k", 4000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut messages = 0;
    let err = loop {
        let f = c.recv().await;
        if f.command != Command::Message {
            break f;
        }
        messages += 1;
    };
    assert_eq!(err.command, Command::Error, "{err:?}");
    assert_eq!(err.get("message"), Some("Slow consumer"));
    assert!(messages < 4000, "{messages}");
    assert_eq!(c.close_code().await, Some(4002));
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains("stompgate_slow_consumers_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stompgate_session_closes_total{reason=\"slow_consumer\"} 1"),
        "{metrics}"
    );
    still_serves(&gw).await;
    amqp.delete_exchange(&exchange).await;
}

// ---- connection storms ----

/// Raises this process's descriptor limit to the hard limit; returns the soft limit.
fn raise_fd_limit() -> u64 {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    rlimit::Resource::NOFILE
        .get()
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_connects_from_one_client() {
    // The gateway runs in this process: each accepted connection costs two descriptors,
    // each refused one two for a moment.
    let limit = raise_fd_limit();
    let max_connections = 4000usize;
    let wanted = 10_000usize;
    let budget = (limit as usize).saturating_sub(max_connections + 500);
    let total = wanted.min(budget);
    if total < wanted {
        eprintln!("RLIMIT_NOFILE is {limit}: opening {total} connections instead of {wanted}");
    }
    assert!(
        total > max_connections,
        "fd limit {limit} too low for this test"
    );
    let gw = start_gateway(&[
        "--max-connections",
        &max_connections.to_string(),
        "--login-timeout-secs",
        "120",
    ])
    .await;
    let stomp = gw.stomp_addr.expect("tcp");
    let http = gw.http_addr;
    let started = Instant::now();
    // Half raw TCP, half WebSocket, 200 handshakes in flight at a time, all held open.
    let results: Vec<Result<Held, String>> = futures::stream::iter(0..total)
        .map(|i| async move {
            if i % 2 == 0 {
                open_tcp(stomp).await
            } else {
                open_ws(http).await
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let opened = started.elapsed();
    let mut held = Vec::new();
    let (mut refused_tcp, mut refused_ws, mut failed) = (0, 0, Vec::new());
    let mut quiet_tcp = Vec::new();
    for r in results {
        match r {
            Ok(Held::Tcp(s)) => quiet_tcp.push(s),
            Ok(h @ Held::Ws(_)) => held.push(h),
            Ok(Held::RefusedTcp) => refused_tcp += 1,
            Ok(Held::RefusedWs) => refused_ws += 1,
            Err(e) => failed.push(e),
        }
    }
    // On a loaded machine a refusal may come after open_tcp stopped waiting: look at the
    // quiet sockets again until every connection over the limit has had its refusal.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut still_quiet = Vec::new();
        for s in quiet_tcp {
            let mut buf = [0u8; 512];
            match s.try_read(&mut buf) {
                Ok(n) if n > 0 && buf[..n].starts_with(b"ERROR\n") => refused_tcp += 1,
                Ok(n) if n > 0 => failed.push(format!(
                    "unexpected answer: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                )),
                _ => still_quiet.push(s),
            }
        }
        quiet_tcp = still_quiet;
        if refused_tcp + refused_ws >= total - max_connections || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held.extend(quiet_tcp.into_iter().map(Held::Tcp));
    eprintln!(
        "{total} connects in {opened:?}: {} held, {refused_tcp} TCP refused with ERROR, {refused_ws} WebSocket refused with 503, {} failed",
        held.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // TCP connections are accepted before they are checked; the gauge is exact.
    let metrics = gw.metrics_text();
    let refused = refused_tcp + refused_ws;
    assert_eq!(refused, total - max_connections, "{metrics}");
    assert_eq!(held.len(), max_connections);
    assert!(
        metrics.contains(&format!(
            "stompgate_rejected_connections_total{{reason=\"max_connections\"}} {refused}"
        )),
        "{metrics}"
    );
    // Still alive and answering while full.
    let (status, _) = crate::transport::http_get(&format!("http://{http}/healthz")).await;
    assert_eq!(status, 200);
    // Release everything; a well-behaved client is served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.state.admission.open() > 0 {
        assert!(Instant::now() < deadline, "slots not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    still_serves(&gw).await;
}

/// The sockets are only held open, never read.
#[allow(dead_code)]
enum Held {
    Tcp(TcpStream),
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>),
    RefusedTcp,
    RefusedWs,
}

/// A TCP connection is accepted, then either left waiting for CONNECT (held) or answered
/// with an ERROR and closed (refused).
async fn open_tcp(addr: std::net::SocketAddr) -> Result<Held, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
        Err(_) => Ok(Held::Tcp(s)),
        Ok(Ok(n)) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.starts_with("ERROR\n") && text.contains("message:Connection refused") {
                Ok(Held::RefusedTcp)
            } else {
                Err(format!("unexpected answer: {text:?}"))
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
    }
}

async fn open_ws(addr: std::net::SocketAddr) -> Result<Held, String> {
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
        Ok((ws, _)) => Ok(Held::Ws(Box::new(ws))),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503 => {
            Ok(Held::RefusedWs)
        }
        Err(e) => Err(e.to_string()),
    }
}

// ---- HTTP before the WebSocket upgrade ----

/// Writes `request` to the HTTP listener and returns the status line of the answer ("" if
/// the connection was closed without one).
async fn raw_http(gw: &Gateway, request: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.http_addr).await.expect("connect");
    // The server may answer and close before everything is written.
    let _ = s.write_all(request).await;
    let mut response = Vec::new();
    let read_status_line = async {
        let mut chunk = [0u8; 1024];
        while !response.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read_status_line).await;
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn garbage_and_oversized_http_before_the_upgrade_get_4xx() {
    let gw = start_gateway(&[]).await;
    let status = raw_http(
        &gw,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status:?}");
    // 10,000 request headers.
    let mut request = b"GET /ws HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..10_000 {
        request.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let status = raw_http(&gw, &request).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status:?}");
    // One 1 MiB header line.
    let mut request = b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Long: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let status = raw_http(&gw, &request).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status:?}");
    // An upgrade without the WebSocket key.
    let status = raw_http(
        &gw,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status:?}");
    still_serves(&gw).await;
}

#[tokio::test]
async fn one_millisecond_heart_beats_are_honoured_without_harm() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "1,1"),
        ])
        .await;
    // Honoured as asked (--heartbeat-server-ms / --heartbeat-client-ms set floors).
    assert_eq!(reply.get("heart-beat"), Some("1,1"));
    // The client sends none: closed at 1 ms + grace (about 1 s) with 4000, after many
    // heart-beats (all read, however late this test gets to them).
    assert_eq!(c.close_code().await, Some(4000));
    let beats = c.heartbeats;
    eprintln!("1 ms heart-beats: {beats} received before the close");
    assert!(beats > 10, "{beats}");
    still_serves(&gw).await;
    // A floor set by the operator wins.
    let gw = start_gateway(&[
        "--heartbeat-server-ms",
        "1000",
        "--heartbeat-client-ms",
        "1000",
    ])
    .await;
    let mut c = Client::ws(&gw).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "1,1"),
        ])
        .await;
    assert_eq!(reply.get("heart-beat"), Some("1000,1000"));
}

/// Reads until the peer closes; the time it took, or None if it was still open at `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// An HTTP connection that sends nothing, and an idle keep-alive connection after its
/// response, are closed at `--http-header-timeout-secs`: axum's accept loop held both
/// forever, so a client that opened connections and said nothing could use up the process's
/// descriptors (and with them every browser's session).
#[tokio::test]
async fn http_connections_without_a_request_are_closed_at_the_header_timeout() {
    let gw = start_gateway(&["--http-header-timeout-secs", "1"]).await;
    let mut silent = TcpStream::connect(gw.http_addr).await.expect("connect");
    let waited = closed_within(&mut silent, Duration::from_secs(20))
        .await
        .expect("a connection that sent nothing was still open after 20 s");
    assert!(
        waited >= Duration::from_millis(900),
        "closed early: {waited:?}"
    );

    let mut idle = TcpStream::connect(gw.http_addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.ends_with(b"ok\n") {
        let n = idle.read(&mut buf).await.expect("response");
        assert!(n > 0, "closed before the response: {response:?}");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    closed_within(&mut idle, Duration::from_secs(20))
        .await
        .expect("an idle keep-alive connection was still open after 20 s");
    still_serves(&gw).await;
}
