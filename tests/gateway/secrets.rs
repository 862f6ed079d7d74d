//! Credentials never reach logs or metrics, even at the most verbose log level.

use crate::support::{Client, body, ensure_user, unique};
use std::process::Stdio;
use std::time::{Duration, Instant};
use stompgate::stomp::{Command, Frame};
use tokio::io::AsyncReadExt;

/// Ports from this suite's range (27200-27299), so the binary's address is known.
const HTTP_PORT: u16 = 27231;
const STOMP_PORT: u16 = 27232;

#[tokio::test]
async fn credentials_never_appear_in_trace_logs_or_metrics() {
    let tag: u64 = rand::random();
    let passcode = format!("S3cr3t-Passc0de-{tag:016x}");
    let wrong = format!("Wr0ng-Passc0de-{tag:016x}");
    let service_password = format!("Svc-Amqp-Passw0rd-{tag:016x}");
    let default_passcode = format!("D3fault-Passc0de-{tag:016x}");
    ensure_user("stompgate-badinput-user", &passcode, ".*", ".*", ".*");
    ensure_user(
        "stompgate-badinput-svc",
        &service_password,
        ".*",
        ".*",
        ".*",
    );
    ensure_user(
        "stompgate-badinput-anon",
        &default_passcode,
        ".*",
        ".*",
        ".*",
    );

    // The binary as deployed: secrets from the environment, JSON logs at trace level
    // for every crate (lapin and amq-protocol included).
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stompgate"))
        .args([
            "gateway",
            "--listen",
            &format!("127.0.0.1:{HTTP_PORT}"),
            "--stomp-listen",
            &format!("127.0.0.1:{STOMP_PORT}"),
            "--log-json",
            "--default-login",
            "stompgate-badinput-anon",
        ])
        .env(
            "STOMPGATE_AMQP_URL",
            format!("amqp://stompgate-badinput-svc:{service_password}@127.0.0.1:5672/%2f"),
        )
        .env("STOMPGATE_DEFAULT_PASSCODE", &default_passcode)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("gateway binary starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_task = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v).await;
        v
    });
    let err_task = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v).await;
        v
    });
    let base = format!("http://127.0.0.1:{HTTP_PORT}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = tokio::net::TcpStream::connect(("127.0.0.1", HTTP_PORT))
            .await
            .is_ok();
        if up
            && crate::transport::http_get(&format!("{base}/readyz"))
                .await
                .0
                == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "gateway binary not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ws_url = format!("ws://127.0.0.1:{HTTP_PORT}/ws");

    // A full session with the distinctive passcode.
    let mut c = Client::ws_url(&ws_url, Some("v12.stomp")).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("login", "stompgate-badinput-user"),
            ("passcode", &passcode),
        ])
        .await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
    let dest = format!("/topic/{}", unique("badinput-secret"));
    c.subscribe("s", &dest, &[]).await;
    c.send_confirmed(&dest, "hello", &[]).await;
    assert_eq!(body(&c.recv().await), "hello");
    // A broker-side error (channel closed by RabbitMQ).
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "missing")
            .header(
                "destination",
                format!("/amq/queue/{}", unique("badinput-missing")),
            ),
    )
    .await;
    assert_eq!(c.recv().await.get("message"), Some("not_found"));
    c.wait_closed().await;
    // A wrong password.
    let mut c = Client::ws_url(&ws_url, Some("v12.stomp")).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("login", "stompgate-badinput-user"),
            ("passcode", &wrong),
        ])
        .await;
    assert_eq!(reply.get("message"), Some("Bad CONNECT"));
    // The default user (no login in CONNECT), over plain TCP.
    let mut t = Client::tcp_addr(([127, 0, 0, 1], STOMP_PORT).into()).await;
    let reply = t.connect_with(&[("accept-version", "1.2")]).await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
    t.disconnect().await;
    let (status, metrics) = crate::transport::http_get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);

    // Stop it the way Kubernetes does, and collect everything it wrote.
    let pid = child.id().expect("pid") as i32;
    // SAFETY: kill(2) on our own child's pid with SIGTERM.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out_task.await.unwrap()),
        String::from_utf8_lossy(&err_task.await.unwrap())
    );
    // The logs are really at trace level and cover the session (the test can fail).
    assert!(logs.contains("\"level\":\"TRACE\""), "no trace lines");
    assert!(
        logs.contains("stompgate-badinput-user"),
        "session not logged at all"
    );
    assert!(metrics.contains("stompgate_errors_total"), "{metrics}");
    for (what, secret) in [
        ("session passcode", passcode.as_str()),
        ("wrong passcode", wrong.as_str()),
        ("service user's AMQP password", service_password.as_str()),
        ("default passcode", default_passcode.as_str()),
    ] {
        // Also the tail alone: an escaped or truncated rendering still carries it.
        let tail = &secret[secret.len() - 16..];
        for (place, text) in [("logs", &logs), ("metrics", &metrics)] {
            if let Some(at) = text.find(tail) {
                let start = text[..at]
                    .char_indices()
                    .rev()
                    .nth(200)
                    .map_or(0, |(i, _)| i);
                let end = (at + 100).min(text.len());
                panic!(
                    "{what} found in {place}: ...{}...",
                    text.get(start..end).unwrap_or("?")
                );
            }
        }
    }
    eprintln!(
        "secret scan: {} bytes of trace logs, {} bytes of metrics, no credentials",
        logs.len(),
        metrics.len()
    );
}
