//! `stompgate demo`, the real binary: it serves the seed page and its publisher's status
//! messages reach a subscriber of `/exchange/rabbitmq/zjj` through the gateway.

#[path = "support/mod.rs"]
mod support;

use stompgate::stomp::Command;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn demo_serves_the_page_and_publishes_to_rabbitmq_zjj() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stompgate"))
        .args([
            "demo",
            "--interval-secs",
            "1",
            "--",
            "--listen",
            "127.0.0.1:0",
            "--amqp-url",
            &support::amqp_url(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("stompgate demo starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(url) = line.strip_prefix("stompgate demo: open ") {
                return url.to_string();
            }
        }
        panic!("demo exited without printing its URL");
    })
    .await
    .expect("demo prints its URL");
    let host = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/demo/"))
        .expect("url shape")
        .to_string();

    let page = reqwest_like_get(&host, "/demo/").await;
    assert!(page.contains("/exchange/rabbitmq/zjj"), "{page}");
    assert!(page.contains("stomp.min.js"), "{page}");

    let mut client = support::Client::ws_url(&format!("ws://{host}/ws"), Some("v11.stomp")).await;
    assert_eq!(client.connect("1.1,1.0").await.command, Command::Connected);
    client.subscribe("0", "/exchange/rabbitmq/zjj", &[]).await;
    // `rabbitmq`/`zjj` is shared with the other tests running in parallel (browser pages,
    // the e2e test): skip their messages until the demo's own publisher's arrives.
    let mut seen = Vec::new();
    loop {
        let message = client.recv().await;
        assert_eq!(message.command, Command::Message);
        let body = support::body(&message);
        if body.contains("published by stompgate demo") {
            break;
        }
        seen.push(body);
        assert!(seen.len() < 200, "no message from the demo among {seen:?}");
    }
    child.kill().await.ok();
}

async fn reqwest_like_get(host: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}
