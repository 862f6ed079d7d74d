//! `stompgate demo`, the real binary, on a RabbitMQ node of its own (exchange `rabbitmq` on
//! vhost `/`, where the tutorial's page looks for it, without touching the shared test
//! broker): it serves the seed page, its publisher's status messages reach a subscriber of
//! `/exchange/rabbitmq/zjj`, and the tutorial's own publisher (`send.py`, pika) works before
//! and after the demo, its messages shown by the page in Chromium.

#[path = "support/mod.rs"]
mod support;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;
use stompgate::stomp::Command;
use support::private_node::PrivateNode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// `stompgate demo` against `amqp_url`; killed when dropped.
struct Demo {
    child: tokio::process::Child,
    host: String,
    stderr: tokio::task::JoinHandle<String>,
}

impl Demo {
    async fn start(amqp_url: &str) -> Demo {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stompgate"))
            .args([
                "demo",
                "--interval-secs",
                "1",
                "--",
                "--listen",
                "127.0.0.1:0",
                "--amqp-url",
                amqp_url,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("stompgate demo starts");
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text).await;
            text
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("stompgate demo: open ") {
                    return Some(url.to_string());
                }
            }
            None
        })
        .await
        .expect("demo prints its URL within 60 s");
        let Some(url) = url else {
            let status = child.wait().await;
            let stderr = stderr.await.unwrap_or_default();
            panic!("demo exited ({status:?}) without printing its URL: {stderr}");
        };
        // Keep reading its "published: ..." lines so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let host = url
            .strip_prefix("http://")
            .and_then(|u| u.strip_suffix("/demo/"))
            .expect("url shape")
            .to_string();
        Demo {
            child,
            host,
            stderr,
        }
    }

    fn page(&self) -> String {
        format!("http://{}/demo/", self.host)
    }

    /// Stops the demo; returns what it printed on stderr.
    async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        self.stderr.await.unwrap_or_default()
    }
}

/// Runs the tutorial's publisher once; returns its exit status and stderr.
async fn tutorial_send(amqp_url: &str, message: &str) -> (bool, String) {
    let python = std::env::var("STOMPGATE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = tokio::process::Command::new(python)
        .args(["tests/python/tutorial_send.py", message])
        .env("AMQP_URL", amqp_url)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .expect("python runs (scripts/ensure-test-deps.sh installs pika)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The seed page in Chromium shows a message the tutorial's publisher sent.
async fn page_shows_the_tutorial_publishers_message(demo: &Demo, amqp_url: &str) {
    let result = support::browser(
        "seed",
        amqp_url,
        &["--page-url", &demo.page(), "--publisher", "tutorial"],
    )
    .await;
    assert_eq!(result["transport"], "websocket", "{result}");
}

async fn http_get(host: &str, path: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test]
async fn demo_and_the_tutorials_own_publisher_work_together_in_either_order() {
    let node = PrivateNode::start("demo", 27431, 27432).await;
    let url = node.url();

    // Before the demo: the tutorial's publisher declares the exchange its way (its message
    // has no queue yet and is dropped). The demo then starts on that exchange...
    let (ok, stderr) = tutorial_send(&url, "sent before the demo").await;
    assert!(ok, "the tutorial's send.py on a fresh broker: {stderr}");
    let demo = Demo::start(&url).await;
    // ...serves the page...
    let page = http_get(&demo.host, "/demo/").await;
    assert!(page.contains("/exchange/rabbitmq/zjj"), "{page}");
    assert!(page.contains("stomp.min.js"), "{page}");
    // ...publishes its own status lines to rabbitmq/zjj...
    let mut client =
        support::Client::ws_url(&format!("ws://{}/ws", demo.host), Some("v11.stomp")).await;
    assert_eq!(client.connect("1.1,1.0").await.command, Command::Connected);
    client.subscribe("0", "/exchange/rabbitmq/zjj", &[]).await;
    let message = client.recv().await;
    assert_eq!(message.command, Command::Message, "{message:?}");
    assert!(
        support::body(&message).contains("published by stompgate demo"),
        "{message:?}"
    );
    // ...and its page shows what the tutorial's publisher sends.
    page_shows_the_tutorial_publishers_message(&demo, &url).await;
    let demo_stderr = demo.stop().await;
    assert!(
        !demo_stderr.contains("other properties"),
        "the tutorial's exchange is the demo's: {demo_stderr}"
    );

    // After the demo: on a broker where the demo declared the exchange, the tutorial's
    // publisher declares it again without PRECONDITION_FAILED, while the demo runs and after.
    let amqp = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("AMQP to the private node");
    let channel = amqp.create_channel().await.expect("channel");
    channel
        .exchange_delete("rabbitmq".into(), Default::default())
        .await
        .expect("delete the exchange");
    let demo = Demo::start(&url).await;
    let (ok, stderr) = tutorial_send(&url, "sent after the demo started").await;
    assert!(ok, "the tutorial's send.py after the demo: {stderr}");
    page_shows_the_tutorial_publishers_message(&demo, &url).await;
    demo.stop().await;
    let (ok, stderr) = tutorial_send(&url, "sent after the demo stopped").await;
    assert!(
        ok,
        "the tutorial's send.py after the demo stopped: {stderr}"
    );

    // An exchange declared otherwise (here durable) is used as it is, with a warning.
    channel
        .exchange_delete("rabbitmq".into(), Default::default())
        .await
        .expect("delete the exchange");
    channel
        .exchange_declare(
            "rabbitmq".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("durable exchange");
    let demo = Demo::start(&url).await;
    let mut client =
        support::Client::ws_url(&format!("ws://{}/ws", demo.host), Some("v12.stomp")).await;
    assert_eq!(client.connect("1.2").await.command, Command::Connected);
    client.subscribe("0", "/exchange/rabbitmq/zjj", &[]).await;
    let message = client.recv().await;
    assert!(
        support::body(&message).contains("published by stompgate demo"),
        "{message:?}"
    );
    let demo_stderr = demo.stop().await;
    assert!(
        demo_stderr.contains("already exists with other properties"),
        "{demo_stderr}"
    );
    let _ = amqp.close(200, "done".into()).await;
}
