//! Gateway memory per idle session for every client profile of `stompgate bench
//! connections`: the real client libraries (@stomp/stompjs 7 and stomp.js 2.3.3 from Node,
//! Python `websockets`, stomp.js over SockJS websocket and xhr-streaming) and our own client,
//! each against a fresh `stompgate gateway` process, measured as the growth of the process's
//! VmRSS divided by the sessions.
//!
//! A coarse guard, not a benchmark: the bound is far above the goal (8 KB a session, see
//! docs/benchmarks.md) and far below what a per-session buffer mistake costs (a broadcast
//! ring per subscription id was 317 KB a session, tungstenite's default read buffer 150 KB).
//! Needs `scripts/ensure-test-deps.sh` (node_modules in tests/browser, pip packages).

#[path = "support/mod.rs"]
mod support;

use support::repo_root;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Sessions per profile: enough that the first session's one-off costs (the pooled AMQP
/// connection's buffers, allocator start-up) do not dominate.
const SESSIONS: usize = 300;

/// KB of gateway RSS per idle session above which the test fails (a debug build, fixed
/// costs included; release builds measure ~10 KB at 1000 sessions).
const BOUND_KB: f64 = 64.0;

/// A `stompgate gateway` child process on an ephemeral port.
struct GatewayProcess {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl GatewayProcess {
    async fn start() -> GatewayProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stompgate"))
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--amqp-url",
                &support::amqp_url(),
                "--log-json",
            ])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("stompgate gateway starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read gateway log") {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == "gateway listening" {
                    let addr = entry["fields"]["http_addr"].as_str().expect("http_addr");
                    return addr.parse::<SocketAddr>().expect("address");
                }
            }
            panic!("the gateway exited before listening");
        })
        .await
        .expect("the gateway logs its address");
        // Keep reading its log, so a full pipe never blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let gateway = GatewayProcess { child, addr };
        gateway.wait_ready().await;
        gateway
    }

    /// Waits until /readyz answers 200: the readiness connection to RabbitMQ is up, so
    /// its buffers are in the "before" figure.
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if self.readyz().await == Some(200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway not ready (is RabbitMQ up?)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn readyz(&self) -> Option<u16> {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let request = format!(
            "GET /readyz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.split_whitespace().nth(1)?.parse().ok()
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("gateway running")
    }
}

/// Opens SESSIONS idle sessions with `profile` against a fresh gateway and returns the
/// bench report.
async fn idle_sessions(profile: &str) -> serde_json::Value {
    let gateway = GatewayProcess::start().await;
    let destination = format!("/exchange/amq.topic/{}", support::unique("idle"));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stompgate"))
        .args([
            "bench",
            "connections",
            "--json",
            "--url",
            &format!("ws://{}/ws", gateway.addr),
            "--client",
            profile,
            "--count",
            &SESSIONS.to_string(),
            "--connect-concurrency",
            "50",
            "--destination",
            &destination,
            "--pid",
            &gateway.pid().to_string(),
            "--settle",
            "2",
            "--hold",
            "3",
        ])
        .arg("--drivers")
        .arg(repo_root().join("tests"))
        .output()
        .await
        .expect("stompgate bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench connections --client {profile} failed (scripts/ensure-test-deps.sh installs the \
         client libraries):\nstdout: {stdout}\nstderr: {stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bench prints JSON ({e}): {stdout}\n{stderr}"));
    eprintln!(
        "{profile}: {} sessions, RSS {} -> {} KB, {} KB a session",
        report["sessions"],
        report["rss_before_kb"],
        report["rss_after_kb"],
        report["rss_per_session_kb"]
    );
    report
}

async fn assert_small_idle_sessions(profile: &str) {
    let report = idle_sessions(profile).await;
    assert_eq!(report["client"], profile, "{report}");
    assert_eq!(report["sessions"], SESSIONS, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    let per_session = report["rss_per_session_kb"]
        .as_f64()
        .unwrap_or_else(|| panic!("no RSS figure: {report}"));
    assert!(
        per_session < BOUND_KB,
        "{profile}: {per_session} KB of gateway RSS per idle session (bound {BOUND_KB} KB): {report}"
    );
}

#[tokio::test]
async fn stompjs7_defaults_from_node() {
    assert_small_idle_sessions("stompjs7").await;
}

#[tokio::test]
async fn stomp_js_2_the_tutorial_way() {
    assert_small_idle_sessions("stompjs2").await;
}

#[tokio::test]
async fn python_websockets_with_a_subscription_id_per_session() {
    assert_small_idle_sessions("python").await;
}

#[tokio::test]
async fn sockjs_websocket() {
    assert_small_idle_sessions("sockjs-websocket").await;
}

#[tokio::test]
async fn sockjs_xhr_streaming() {
    assert_small_idle_sessions("sockjs-xhr-streaming").await;
}

#[tokio::test]
async fn stompgate_bench_client() {
    assert_small_idle_sessions("native").await;
}
