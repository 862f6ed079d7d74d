//! `stompgate demo`: the founding scenario on one machine. The gateway on :15674 serves the
//! classic Web-STOMP page at /demo/, and a publisher sends a status message to exchange
//! `rabbitmq` with routing key `zjj` every few seconds, as the tutorial's backend does. The
//! exchange is declared as the tutorial declares it, so the tutorial's own publisher works
//! before, during and after the demo.

use crate::gateway::config::GatewayConfig;
use crate::gateway::server;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;

/// The seed page and the client libraries it loads, embedded so the binary is self-contained.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../examples/demo/index.html"),
    ),
    (
        "stompjs7.html",
        "text/html; charset=utf-8",
        include_bytes!("../examples/demo/stompjs7.html"),
    ),
    (
        "stomp.min.js",
        "application/javascript",
        include_bytes!("../examples/demo/stomp.min.js"),
    ),
    (
        "sockjs.min.js",
        "application/javascript",
        crate::sockjs::CLIENT_JS,
    ),
    (
        "stomp.umd.min.js",
        "application/javascript",
        include_bytes!("../examples/demo/stomp.umd.min.js"),
    ),
];

/// Exchange and routing key of the founding tutorial.
pub const DEMO_EXCHANGE: &str = "rabbitmq";
pub const DEMO_ROUTING_KEY: &str = "zjj";

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Seconds between status messages.
    #[arg(long, default_value_t = 3)]
    pub interval_secs: u64,
    /// Gateway flags after `--` (e.g. `-- --listen 127.0.0.1:8080 --amqp-url ...`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
}

/// Routes serving the embedded demo files under /demo/.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|| async { serve_file("index.html") }))
        .route(
            "/demo/{file}",
            get(
                |axum::extract::Path(file): axum::extract::Path<String>| async move {
                    serve_file(&file)
                },
            ),
        )
}

fn serve_file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

/// Runs gateway + page + publisher until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // The demo listens on loopback unless the gateway flags say otherwise.
    let mut argv = Vec::new();
    if !args
        .gateway_args
        .iter()
        .any(|a| a == "--listen" || a.starts_with("--listen="))
    {
        argv.extend(["--listen".to_string(), "127.0.0.1:15674".to_string()]);
    }
    argv.extend(args.gateway_args.iter().cloned());
    let gateway_args: GatewayConfig = crate::gateway::config::parse_gateway_args(&argv)?;
    let amqp_url = gateway_args.amqp_url.clone();
    // The page subscribes to /exchange/rabbitmq/zjj, which needs the exchange to exist.
    declare_exchange(&amqp_url).await?;
    let gateway = server::start(gateway_args, routes()).await?;
    let url = format!("http://{}/demo/", gateway.http_addr);
    println!("stompgate demo: open {url}");
    println!(
        "publishing to exchange '{DEMO_EXCHANGE}' routing key '{DEMO_ROUTING_KEY}' every {}s; Ctrl-C stops",
        args.interval_secs
    );
    let publisher = tokio::spawn(publish_forever(
        amqp_url,
        Duration::from_secs(args.interval_secs.max(1)),
    ));
    crate::runtime::shutdown_signal().await;
    publisher.abort();
    gateway.shutdown();
    gateway.wait().await;
    Ok(())
}

/// Makes sure the tutorial's exchange exists, with a clear error when RabbitMQ is down.
async fn declare_exchange(amqp_url: &str) -> anyhow::Result<()> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to RabbitMQ ({e}); is it running? scripts/ensure-rabbitmq.sh starts it"))?;
    let result = ensure_tutorial_exchange(&conn).await;
    let _ = conn.close(200, "declared".into()).await;
    if let (_, Some(mismatch)) = result? {
        eprintln!(
            "stompgate demo: exchange '{DEMO_EXCHANGE}' already exists with other properties than \
             the tutorial's (topic, not durable); the demo uses it as it is, but the tutorial's \
             send.py will fail against it ({mismatch}) until it is deleted"
        );
    }
    Ok(())
}

/// Declares the exchange exactly as the tutorial's `send.py` does
/// (`exchange_declare(exchange='rabbitmq', exchange_type='topic')`: a topic exchange, not
/// durable, not auto-delete), so that the tutorial's own publisher can declare it again
/// before or after the demo. One declared otherwise (by an operator, another application or
/// an older demo) is reused as it is: the page only needs it to exist. Returns a channel to
/// publish on, and RabbitMQ's answer when the exchange differs from the tutorial's.
async fn ensure_tutorial_exchange(
    conn: &Connection,
) -> Result<(lapin::Channel, Option<String>), lapin::Error> {
    let channel = conn.create_channel().await?;
    let declared = channel
        .exchange_declare(
            DEMO_EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(()) => Ok((channel, None)),
        // 406 PRECONDITION_FAILED: it exists with other properties (the failure closed
        // that channel). Reuse it, after a passive check that it is there.
        Err(e) if is_precondition_failed(&e) => {
            let channel = conn.create_channel().await?;
            channel
                .exchange_declare(
                    DEMO_EXCHANGE.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok((channel, Some(e.to_string())))
        }
        Err(e) => Err(e),
    }
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// The tutorial's backend: publish a status line to `rabbitmq`/`zjj`, reconnecting when
/// RabbitMQ restarts.
async fn publish_forever(amqp_url: String, interval: Duration) {
    let mut n: u64 = 0;
    loop {
        match Connection::connect(&amqp_url, ConnectionProperties::default()).await {
            Ok(conn) => {
                let result = async {
                    // Again on every (re)connect: a restarted broker lost the transient
                    // exchange.
                    let (channel, _) = ensure_tutorial_exchange(&conn).await?;
                    loop {
                        n += 1;
                        let body = format!(
                            "task {n} finished at {} (published by stompgate demo)",
                            clock()
                        );
                        channel
                            .basic_publish(
                                DEMO_EXCHANGE.into(),
                                DEMO_ROUTING_KEY.into(),
                                BasicPublishOptions::default(),
                                body.as_bytes(),
                                BasicProperties::default().with_content_type("text/plain".into()),
                            )
                            .await?;
                        println!("published: {body}");
                        tokio::time::sleep(interval).await;
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), lapin::Error>(())
                }
                .await;
                if let Err(e) = result {
                    eprintln!("demo publisher: {e}; reconnecting");
                }
            }
            Err(e) => eprintln!("demo publisher: cannot connect to RabbitMQ ({e}); retrying"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// UTC wall-clock time as HH:MM:SS (no date crate needed for a demo label).
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02} UTC",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}
