//! Errors as RabbitMQ reports them, but always delivered before the socket closes.

use crate::support::{Amqp, Client, body, ensure_user, start_gateway, unique};
use stompgate::stomp::{Command, Frame};

#[tokio::test]
async fn wrong_password_is_bad_connect() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "wrong"),
        ])
        .await;
    assert_eq!(reply.command, Command::Error);
    assert_eq!(reply.get("message"), Some("Bad CONNECT"));
    assert_eq!(body(&reply), "Access refused for user 'guest'\n");
    c.wait_closed().await;
}

#[tokio::test]
async fn unknown_vhost_is_bad_connect() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("host", "no-such-vhost"),
            ("login", "guest"),
            ("passcode", "guest"),
        ])
        .await;
    assert_eq!(reply.get("message"), Some("Bad CONNECT"));
    assert_eq!(body(&reply), "Virtual host 'no-such-vhost' access denied");
}

#[tokio::test]
async fn missing_login_is_refused_unless_a_default_user_is_configured() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    let reply = c.connect_with(&[("accept-version", "1.2")]).await;
    assert_eq!(reply.get("message"), Some("Bad CONNECT"));

    let gw = start_gateway(&["--default-login", "guest", "--default-passcode", "guest"]).await;
    let mut c = Client::ws(&gw).await;
    let reply = c.connect_with(&[("accept-version", "1.2")]).await;
    assert_eq!(reply.command, Command::Connected);
}

#[tokio::test]
async fn subscribe_to_missing_queue_gets_not_found_before_close() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    let queue = unique("missing");
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", format!("/amq/queue/{queue}")),
    )
    .await;
    let err = c.recv().await;
    assert_eq!(err.command, Command::Error);
    assert_eq!(err.get("message"), Some("not_found"));
    assert_eq!(
        body(&err),
        format!("NOT_FOUND - no queue '{queue}' in vhost '/'")
    );
    assert_eq!(err.get("content-type"), Some("text/plain"));
    assert_eq!(err.get("version"), Some("1.0,1.1,1.2"));
    assert!(c.close_code().await.is_some());
}

#[tokio::test]
async fn subscribe_to_missing_exchange_gets_not_found_before_close() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    let exchange = unique("nox");
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", format!("/exchange/{exchange}/zjj")),
    )
    .await;
    let err = c.recv().await;
    assert_eq!(err.get("message"), Some("not_found"));
    assert!(body(&err).starts_with("NOT_FOUND"), "{}", body(&err));
    c.wait_closed().await;
}

#[tokio::test]
async fn inequivalent_queue_is_precondition_failed() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("durable-q");
    let mut c = Client::logged_in_ws(&gw).await;
    c.subscribe("a", &format!("/queue/{queue}"), &[("x-max-length", "10")])
        .await;
    let mut other = Client::logged_in_ws(&gw).await;
    other
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "b")
                .header("destination", format!("/queue/{queue}"))
                .header("x-max-length", "20"),
        )
        .await;
    let err = other.recv().await;
    assert_eq!(err.get("message"), Some("precondition_failed"));
    assert!(
        body(&err).contains("inequivalent arg 'x-max-length'"),
        "{}",
        body(&err)
    );
    other.wait_closed().await;
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn user_without_permissions_gets_access_refused() {
    ensure_user("stompgate-limited", "limited-pw", "^$", "^$", "^$");
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("login", "stompgate-limited"),
            ("passcode", "limited-pw"),
        ])
        .await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", format!("/queue/{}", unique("forbidden"))),
    )
    .await;
    let err = c.recv().await;
    assert_eq!(err.get("message"), Some("access_refused"));
    assert!(body(&err).starts_with("ACCESS_REFUSED"), "{}", body(&err));
    c.wait_closed().await;
}

/// A SEND with `receipt:lost-1` to a topic no queue is bound to.
async fn send_to_nobody(c: &mut Client) {
    c.send(
        Frame::new(Command::Send)
            .header("destination", format!("/topic/{}", unique("nobody")))
            .header("receipt", "lost-1")
            .with_body("into the void"),
    )
    .await;
}

/// @stomp/stompjs's own suite (`Should confirm send using receipt`) sends to
/// /topic/chat.general, which nobody watches: RabbitMQ answers RECEIPT (and drops the
/// message); so does the gateway, and counts it.
#[tokio::test]
async fn unroutable_send_with_receipt_gets_its_receipt_as_with_rabbitmq() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    send_to_nobody(&mut c).await;
    let receipt = c.recv().await;
    assert_eq!(receipt.command, Command::Receipt, "{receipt:?}");
    assert_eq!(receipt.get("receipt-id"), Some("lost-1"));
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains("stompgate_unroutable_messages_total 1\n"),
        "{metrics}"
    );
    // The session goes on.
    c.send(
        Frame::new(Command::Begin)
            .header("transaction", "t")
            .header("receipt", "still-here"),
    )
    .await;
    assert_eq!(c.recv().await.get("receipt-id"), Some("still-here"));
}

/// The stricter answer, opt-in: ERROR with the receipt-id, then the connection closes, as
/// STOMP requires after an ERROR.
#[tokio::test]
async fn error_on_unroutable_reports_the_send_then_closes() {
    let gw = start_gateway(&["--error-on-unroutable"]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    send_to_nobody(&mut c).await;
    let err = c.recv().await;
    assert_eq!(err.command, Command::Error, "{err:?}");
    assert_eq!(err.get("receipt-id"), Some("lost-1"));
    assert_eq!(err.get("message"), Some("Message not routed"));
    assert_eq!(c.close_code().await, Some(1000));
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains("stompgate_unroutable_messages_total 1\n")
            && metrics.contains("stompgate_session_closes_total{reason=\"publish_failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn destination_errors_use_rabbitmq_messages() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    c.send(Frame::new(Command::Send).with_body("x")).await;
    let err = c.recv().await;
    assert_eq!(err.get("message"), Some("Missing destination"));
    c.send(Frame::new(Command::Send).header("destination", "/bogus/x"))
        .await;
    let err = c.recv().await;
    assert_eq!(err.get("message"), Some("Unknown destination"));
    c.send(
        Frame::new(Command::Send)
            .header("destination", "/queue/x")
            .header("message-id", "1"),
    )
    .await;
    let err = c.recv().await;
    assert_eq!(err.get("message"), Some("Invalid header"));
    assert_eq!(body(&err), "'message-id' is not allowed on 'SEND'.\n");
    c.send(Frame::new(Command::Unknown("WRONGCOMMAND".into())))
        .await;
    let err = c.recv().await;
    assert_eq!(err.get("message"), Some("Bad command"));
    assert_eq!(body(&err), "Could not interpret command \"WRONGCOMMAND\"\n");
}

#[tokio::test]
async fn duplicate_subscription_id_is_fatal() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::logged_in_ws(&gw).await;
    let dest = format!("/topic/{}", unique("dup"));
    c.subscribe("1", &dest, &[]).await;
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", dest.as_str()),
    )
    .await;
    let err = c.recv().await;
    assert_eq!(
        err.get("message"),
        Some("Duplicated subscription identifier")
    );
    assert_eq!(
        body(&err),
        "A subscription identified by 'T_1' already exists."
    );
    c.wait_closed().await;
}

#[tokio::test]
async fn durable_subscription_without_id_is_missing_header() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    assert_eq!(c.connect("1.0").await.command, Command::Connected);
    c.send(
        Frame::new(Command::Subscribe)
            .header("destination", "/topic/x")
            .header("durable", "true"),
    )
    .await;
    let err = c.recv().await;
    assert_eq!(err.get("message"), Some("Missing Header"));
}

#[tokio::test]
async fn malformed_frame_gets_error_then_close() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nbad header line without colon\n\n\0")
        .await;
    let err = c.recv().await;
    assert_eq!(err.command, Command::Error);
    assert!(c.close_code().await.is_some());
}

#[tokio::test]
async fn oversized_frame_before_connect_is_refused() {
    let gw = start_gateway(&[]).await;
    let mut c = Client::ws(&gw).await;
    let mut frame = b"CONNECT\nx:".to_vec();
    frame.extend(std::iter::repeat_n(b'a', 70 * 1024));
    frame.extend_from_slice(b"\n\n\0");
    c.send_raw(&frame).await;
    let err = c.recv().await;
    assert_eq!(err.command, Command::Error);
    c.wait_closed().await;
}
