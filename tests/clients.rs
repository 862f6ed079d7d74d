//! Real client libraries against the gateway: the founding page (stomp.js 2.3.3) and an
//! @stomp/stompjs 7 page in headless Chromium (served by the gateway, and from another
//! origin over every transport), and Python's stomp.py over plain TCP.
//! Needs `scripts/ensure-test-deps.sh` (node_modules, Chromium, pip packages), which the
//! README's test command runs first.

#[path = "support/mod.rs"]
mod support;

use support::repo_root;

fn python() -> String {
    std::env::var("STOMPGATE_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

async fn browser(scenario: &str, page_url: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--page-url", page_url];
    args.extend_from_slice(extra);
    support::browser(scenario, &support::amqp_url(), &args).await
}

#[tokio::test]
async fn seed_page_with_stomp_js_2_shows_the_published_message() {
    let gw = support::start_gateway_with(&[], stompgate::demo::routes()).await;
    let result = browser("seed", &format!("http://{}/demo/", gw.http_addr), &[]).await;
    assert_eq!(result["transport"], "websocket");
}

#[tokio::test]
async fn stompjs_7_page_shows_the_published_message() {
    let gw = support::start_gateway_with(&[], stompgate::demo::routes()).await;
    browser(
        "stompjs7",
        &format!("http://{}/demo/stompjs7.html", gw.http_addr),
        &[],
    )
    .await;
}

#[tokio::test]
async fn stomp_py_over_tcp_connects_subscribes_sends_and_receives() {
    let gw = support::start_gateway(&[]).await;
    let port = gw.stomp_addr.expect("tcp listener").port().to_string();
    let output = tokio::process::Command::new(python())
        .args([
            "tests/python/stomp_tcp_check.py",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
        ])
        .current_dir(repo_root())
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "stomp.py check failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// @stomp/stompjs's own "Stomp Receipts" specs in Chromium: a SEND with `receipt` to a topic
/// nobody is subscribed to gets its RECEIPT, as from RabbitMQ (issue 18: it got ERROR
/// `Message not routed`, and the connection stayed open after it), then a receipted SUBSCRIBE
/// on the same connection.
#[tokio::test]
async fn stompjs_7_receipt_specs_pass_for_a_send_nobody_receives() {
    let gw = support::start_gateway(&[]).await;
    let destination = format!("/topic/{}", support::unique("chat.general"));
    let result = support::browser(
        "receipt",
        &support::amqp_url(),
        &[
            "--broker-url",
            &format!("ws://{}/ws", gw.http_addr),
            "--destination",
            &destination,
        ],
    )
    .await;
    assert_eq!(
        result["receipts"].as_array().map(Vec::len),
        Some(2),
        "{result}"
    );
    assert_eq!(result["message"], "Is anybody out there?", "{result}");
}

/// The runner served the page itself: its origin is not the gateway's.
fn assert_page_from_another_origin(
    result: &serde_json::Value,
    gw: &stompgate::gateway::server::Gateway,
) {
    assert_ne!(
        result["pageUrl"].as_str().and_then(|u| u.split('/').nth(2)),
        Some(gw.http_addr.to_string().as_str()),
        "{result}"
    );
}

/// The tutorial's setup: the page comes from the application's own web server (here the
/// runner's, on another port: another origin), the gateway listens on its own host and port.
#[tokio::test]
async fn seed_page_from_another_origin_over_websocket() {
    let gw = support::start_gateway(&[]).await;
    let result = support::browser(
        "seed",
        &support::amqp_url(),
        &["--ws-override", &format!("ws://{}/ws", gw.http_addr)],
    )
    .await;
    assert_eq!(result["transport"], "websocket", "{result}");
    assert_page_from_another_origin(&result, &gw);
}

/// The page's SockJS branch (`WebSocket` removed before its script runs), one transport at a
/// time, with sockjs-client 1.6 against the gateway's SockJS endpoint; the page is served
/// from another origin than the gateway's, as in the tutorial.
async fn seed_over_sockjs(transport: &str) {
    let gw = support::start_gateway(&[]).await;
    let result = support::browser(
        "seed",
        &support::amqp_url(),
        &[
            "--sockjs-override",
            &format!("http://{}/stomp", gw.http_addr),
            "--sockjs-transport",
            transport,
        ],
    )
    .await;
    assert_eq!(
        result["transport"],
        format!("sockjs:{transport}"),
        "{result}"
    );
    assert_page_from_another_origin(&result, &gw);
}

#[tokio::test]
async fn seed_page_over_sockjs_xhr_streaming() {
    seed_over_sockjs("xhr-streaming").await;
}

#[tokio::test]
async fn seed_page_over_sockjs_xhr_polling() {
    seed_over_sockjs("xhr-polling").await;
}

#[tokio::test]
async fn seed_page_over_sockjs_eventsource() {
    seed_over_sockjs("eventsource").await;
}

#[tokio::test]
async fn seed_page_over_sockjs_iframe_htmlfile() {
    seed_over_sockjs("iframe-htmlfile").await;
}

#[tokio::test]
async fn seed_page_over_sockjs_jsonp_polling() {
    seed_over_sockjs("jsonp-polling").await;
}

#[tokio::test]
async fn seed_page_without_websocket_takes_the_sockjs_branch() {
    let gw = support::start_gateway_with(&[], stompgate::demo::routes()).await;
    let result = browser(
        "seed",
        &format!("http://{}/demo/", gw.http_addr),
        &["--no-websocket"],
    )
    .await;
    assert!(
        result["transport"]
            .as_str()
            .unwrap_or("")
            .starts_with("sockjs"),
        "{result}"
    );
}
