//! Every destination kind, as RabbitMQ's Web-STOMP plugin serves it.

use crate::support::{Amqp, Client, body, start_gateway, unique};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use std::time::Duration;
use stompgate::stomp::{Command, Frame};

#[tokio::test]
async fn exchange_with_pattern_delivers_amqp_publishes_like_the_founding_tutorial() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("tutorial");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut client = Client::logged_in_ws(&gw).await;
    client
        .subscribe("sub-0", &format!("/exchange/{exchange}/zjj"), &[])
        .await;
    amqp.publish(&exchange, "zjj", b"task done", BasicProperties::default())
        .await;
    amqp.publish(
        &exchange,
        "other",
        b"not for us",
        BasicProperties::default(),
    )
    .await;
    let msg = client.recv().await;
    assert_eq!(msg.command, Command::Message);
    assert_eq!(body(&msg), "task done");
    assert_eq!(msg.get("subscription"), Some("sub-0"));
    assert_eq!(
        msg.get("destination"),
        Some(format!("/exchange/{exchange}/zjj").as_str())
    );
    assert_eq!(msg.get("redelivered"), Some("false"));
    let id = msg.get("message-id").expect("message-id");
    assert!(id.starts_with("T_sub-0@@session-"), "{id}");
    // The non-matching key was not delivered.
    assert!(
        client
            .recv_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    amqp.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn exchange_without_pattern_binds_with_empty_key() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("fan");
    amqp.declare_exchange(&exchange, ExchangeKind::Fanout).await;
    let mut client = Client::logged_in_ws(&gw).await;
    client
        .subscribe("s", &format!("/exchange/{exchange}"), &[])
        .await;
    amqp.publish(&exchange, "anything", b"fanned", BasicProperties::default())
        .await;
    let msg = client.recv().await;
    assert_eq!(body(&msg), "fanned");
    assert_eq!(
        msg.get("destination"),
        Some(format!("/exchange/{exchange}/anything").as_str())
    );
    amqp.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn send_to_exchange_reaches_other_stomp_subscriber() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("chat");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut sub = Client::logged_in_ws(&gw).await;
    sub.subscribe("a", &format!("/exchange/{exchange}/room.*"), &[])
        .await;
    let mut publ = Client::logged_in_ws(&gw).await;
    publ.send_confirmed(
        &format!("/exchange/{exchange}/room.1"),
        "hello",
        &[("content-type", "text/plain"), ("x-custom", "v:1")],
    )
    .await;
    let msg = sub.recv().await;
    assert_eq!(body(&msg), "hello");
    assert_eq!(msg.get("content-type"), Some("text/plain"));
    assert_eq!(msg.get("x-custom"), Some("v:1"));
    assert_eq!(
        msg.get("destination"),
        Some(format!("/exchange/{exchange}/room.1").as_str())
    );
    amqp.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn queue_destination_declares_a_durable_shared_queue() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("work");
    let mut producer = Client::logged_in_ws(&gw).await;
    producer
        .send_confirmed(
            &format!("/queue/{queue}"),
            "job-1",
            &[("persistent", "true")],
        )
        .await;
    assert_eq!(amqp.queue_depth(&queue).await, Some(1));
    let mut consumer = Client::logged_in_ws(&gw).await;
    consumer
        .subscribe("q", &format!("/queue/{queue}"), &[])
        .await;
    let msg = consumer.recv().await;
    assert_eq!(body(&msg), "job-1");
    assert_eq!(
        msg.get("destination"),
        Some(format!("/queue/{queue}").as_str())
    );
    assert_eq!(msg.get("persistent"), Some("true"));
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn bare_name_means_queue() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("bare");
    let mut client = Client::logged_in_ws(&gw).await;
    client.subscribe("b", &queue, &[]).await;
    client.send_confirmed(&queue, "via bare name", &[]).await;
    let msg = client.recv().await;
    assert_eq!(body(&msg), "via bare name");
    assert_eq!(
        msg.get("destination"),
        Some(format!("/queue/{queue}").as_str())
    );
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn amq_queue_uses_an_existing_queue_without_declaring() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("existing");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(100));
    amqp.channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            args,
        )
        .await
        .expect("declare");
    let mut client = Client::logged_in_ws(&gw).await;
    client
        .subscribe("aq", &format!("/amq/queue/{queue}"), &[])
        .await;
    amqp.publish("", &queue, b"direct", BasicProperties::default())
        .await;
    let msg = client.recv().await;
    assert_eq!(body(&msg), "direct");
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn topic_destination_uses_amq_topic() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let key = unique("news");
    let mut client = Client::logged_in_ws(&gw).await;
    client.subscribe("t", &format!("/topic/{key}.#"), &[]).await;
    amqp.publish(
        "amq.topic",
        &format!("{key}.sport"),
        b"goal",
        BasicProperties::default(),
    )
    .await;
    let msg = client.recv().await;
    assert_eq!(body(&msg), "goal");
    assert_eq!(
        msg.get("destination"),
        Some(format!("/topic/{key}.sport").as_str())
    );
    // A STOMP SEND to /exchange/amq.topic/k is delivered as /topic/k.
    client
        .send_confirmed(&format!("/exchange/amq.topic/{key}.x"), "via exchange", &[])
        .await;
    let msg = client.recv().await;
    assert_eq!(
        msg.get("destination"),
        Some(format!("/topic/{key}.x").as_str())
    );
}

#[tokio::test]
async fn temp_queue_reply_to_round_trip() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let service_queue = unique("rpc");
    let mut server = Client::logged_in_ws(&gw).await;
    server
        .subscribe("rpc", &format!("/queue/{service_queue}"), &[])
        .await;
    let mut requester = Client::logged_in_ws(&gw).await;
    requester
        .send_confirmed(
            &format!("/queue/{service_queue}"),
            "ping",
            &[("reply-to", "/temp-queue/answers")],
        )
        .await;
    let request = server.recv().await;
    assert_eq!(body(&request), "ping");
    let reply_to = request.get("reply-to").expect("reply-to").to_string();
    assert!(reply_to.starts_with("/reply-queue/"), "{reply_to}");
    server.send_confirmed(&reply_to, "pong", &[]).await;
    let reply = requester.recv().await;
    assert_eq!(body(&reply), "pong");
    assert_eq!(reply.get("subscription"), Some("/temp-queue/answers"));
    // The same temp-queue id reuses the same reply queue.
    requester
        .send_confirmed(
            &format!("/queue/{service_queue}"),
            "again",
            &[("reply-to", "/temp-queue/answers")],
        )
        .await;
    let second = server.recv().await;
    assert_eq!(second.get("reply-to"), Some(reply_to.as_str()));
    amqp.delete_queue(&service_queue).await;
}

#[tokio::test]
async fn durable_topic_subscription_survives_reconnect() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let key = unique("durable");
    let dest = format!("/topic/{key}");
    let mut first = Client::logged_in_ws(&gw).await;
    first
        .subscribe(
            "keep",
            &dest,
            &[("durable", "true"), ("auto-delete", "false")],
        )
        .await;
    first.disconnect().await;
    // Published while nobody is connected: kept in the durable subscription queue.
    amqp.publish("amq.topic", &key, b"while away", BasicProperties::default())
        .await;
    let mut second = Client::logged_in_ws(&gw).await;
    second
        .subscribe(
            "keep",
            &dest,
            &[("durable", "true"), ("auto-delete", "false")],
        )
        .await;
    let msg = second.recv().await;
    assert_eq!(body(&msg), "while away");
    // Unsubscribing with durable:true deletes the queue.
    second
        .send(
            Frame::new(Command::Unsubscribe)
                .header("id", "keep")
                .header("durable", "true")
                .header("receipt", "u"),
        )
        .await;
    assert_eq!(second.recv().await.command, Command::Receipt);
}

#[tokio::test]
async fn amqp_properties_and_headers_become_message_headers() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("props");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut client = Client::logged_in_ws(&gw).await;
    client
        .subscribe("p", &format!("/exchange/{exchange}/k"), &[])
        .await;
    let mut table = FieldTable::default();
    table.insert("text".into(), AMQPValue::LongString("hi".into()));
    table.insert("count".into(), AMQPValue::LongInt(42));
    table.insert("flag".into(), AMQPValue::Boolean(true));
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id("c-1".into())
        .with_priority(3)
        .with_headers(table);
    amqp.publish(&exchange, "k", b"{}", props).await;
    let msg = client.recv().await;
    assert_eq!(msg.get("content-type"), Some("application/json"));
    assert_eq!(msg.get("correlation-id"), Some("c-1"));
    assert_eq!(msg.get("priority"), Some("3"));
    assert_eq!(msg.get("text"), Some("hi"));
    assert_eq!(msg.get("count"), Some("42"));
    // RabbitMQ drops booleans; we keep them.
    assert_eq!(msg.get("flag"), Some("true"));
    amqp.delete_exchange(&exchange).await;
}
