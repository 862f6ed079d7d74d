//! Pod-local fan-out: transient subscriptions share one queue, nothing else changes.

use crate::support::{
    Amqp, Client, body, ensure_user, queues_bound_to, rabbitmqctl, start_gateway, unique,
};
use lapin::{BasicProperties, ExchangeKind};
use std::time::Duration;
use stompgate::stomp::{Command, Frame};

#[tokio::test]
async fn same_pattern_subscribers_share_one_queue_and_all_receive() {
    let gw = start_gateway(&["--fanout", "true"]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("shared");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = Client::logged_in_ws(&gw).await;
        // stomp.js numbers subscriptions per page: most pages use "sub-0".
        let id = if i % 2 == 0 { "sub-0" } else { "other" };
        c.subscribe(id, &format!("/exchange/{exchange}/zjj"), &[])
            .await;
        clients.push((id, c));
    }
    assert_eq!(queues_bound_to(&exchange), 1, "one shared queue");
    amqp.publish(&exchange, "zjj", b"to everyone", BasicProperties::default())
        .await;
    for (id, c) in clients.iter_mut() {
        let m = c.recv().await;
        assert_eq!(body(&m), "to everyone");
        assert_eq!(m.get("subscription"), Some(*id));
        assert_eq!(
            m.get("destination"),
            Some(format!("/exchange/{exchange}/zjj").as_str())
        );
        let message_id = m.get("message-id").unwrap();
        assert!(
            message_id.starts_with(&format!("T_{id}@@session-")),
            "{message_id}"
        );
    }
    let metrics = gw.metrics_text();
    assert!(metrics.contains("stompgate_fanout_queues 1"), "{metrics}");
    assert!(
        metrics.contains("stompgate_fanout_listeners 20"),
        "{metrics}"
    );
    // Everyone leaves: the shared queue goes away.
    for (_, c) in clients.iter_mut() {
        c.disconnect().await;
    }
    drop(clients);
    let mut gone = false;
    for _ in 0..50 {
        if queues_bound_to(&exchange) == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "shared queue deleted after the last listener left");
    amqp.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn without_fanout_every_subscriber_has_its_own_queue() {
    let gw = start_gateway(&["--fanout", "false"]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("own");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::logged_in_ws(&gw).await;
        c.subscribe("sub-0", &format!("/exchange/{exchange}/k"), &[])
            .await;
        clients.push(c);
    }
    assert_eq!(queues_bound_to(&exchange), 3);
    amqp.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn unsubscribe_from_a_shared_queue_stops_deliveries_to_that_session_only() {
    let gw = start_gateway(&["--fanout", "true"]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("leave");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut a = Client::logged_in_ws(&gw).await;
    let mut b = Client::logged_in_ws(&gw).await;
    a.subscribe("s", &format!("/exchange/{exchange}/k"), &[])
        .await;
    b.subscribe("s", &format!("/exchange/{exchange}/k"), &[])
        .await;
    a.send(
        Frame::new(Command::Unsubscribe)
            .header("id", "s")
            .header("receipt", "u"),
    )
    .await;
    assert_eq!(a.recv().await.get("receipt-id"), Some("u"));
    amqp.publish(&exchange, "k", b"only b", BasicProperties::default())
        .await;
    assert_eq!(body(&b.recv().await), "only b");
    assert!(a.recv_within(Duration::from_millis(300)).await.is_none());
    amqp.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn a_user_without_permission_cannot_join_an_existing_shared_queue() {
    // Read access to nothing: may connect, may not bind to any exchange.
    ensure_user("stompgate-noread", "noread-pw", ".*", ".*", "^$");
    let gw = start_gateway(&["--fanout", "true"]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("guarded");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut guest = Client::logged_in_ws(&gw).await;
    guest
        .subscribe("s", &format!("/exchange/{exchange}/k"), &[])
        .await;
    let mut intruder = Client::ws(&gw).await;
    let reply = intruder
        .connect_with(&[
            ("accept-version", "1.2"),
            ("login", "stompgate-noread"),
            ("passcode", "noread-pw"),
        ])
        .await;
    assert_eq!(reply.command, Command::Connected);
    intruder
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "s")
                .header("destination", format!("/exchange/{exchange}/k")),
        )
        .await;
    let err = intruder.recv().await;
    assert_eq!(err.get("message"), Some("access_refused"), "{err:?}");
    intruder.wait_closed().await;
    amqp.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn durable_and_client_ack_subscriptions_keep_their_own_queues() {
    let gw = start_gateway(&["--fanout", "true"]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("mixed");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut c = Client::logged_in_ws(&gw).await;
    c.subscribe("auto", &format!("/exchange/{exchange}/k"), &[])
        .await;
    c.subscribe(
        "acked",
        &format!("/exchange/{exchange}/k"),
        &[("ack", "client")],
    )
    .await;
    c.subscribe(
        "args",
        &format!("/exchange/{exchange}/k"),
        &[("x-max-length", "5")],
    )
    .await;
    assert_eq!(queues_bound_to(&exchange), 3, "one shared + two own");
    amqp.publish(&exchange, "k", b"x", BasicProperties::default())
        .await;
    let mut subs: Vec<String> = Vec::new();
    for _ in 0..3 {
        subs.push(c.recv().await.get("subscription").unwrap().to_string());
    }
    subs.sort();
    assert_eq!(subs, ["acked", "args", "auto"]);
    amqp.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_disconnected_with_bounded_memory() {
    let gw = start_gateway(&["--fanout", "true", "--write-timeout-secs", "2"]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("slow");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    // A TCP client that subscribes and then never reads.
    let mut slow = Client::tcp(&gw).await;
    assert_eq!(slow.connect("1.2").await.command, Command::Connected);
    slow.subscribe("s", &format!("/exchange/{exchange}/k"), &[])
        .await;
    let mut healthy = Client::logged_in_ws(&gw).await;
    healthy
        .subscribe("s", &format!("/exchange/{exchange}/k"), &[])
        .await;
    let big = vec![b'x'; 64 * 1024];
    for _ in 0..200 {
        amqp.publish(&exchange, "k", &big, BasicProperties::default())
            .await;
    }
    // The healthy subscriber gets everything.
    for _ in 0..200 {
        let m = healthy.recv().await;
        assert_eq!(m.body.len(), big.len(), "{m:?}");
    }
    let mut closed = false;
    // Up to 30 s: detection waits on socket buffers filling, slow on a busy machine.
    for _ in 0..300 {
        let metrics = gw.metrics_text();
        if metrics.contains("stompgate_slow_consumers_total 1") {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "slow consumer detected: {}", gw.metrics_text());
    assert!(
        gw.metrics_text()
            .contains("stompgate_session_closes_total{reason=\"slow_consumer\"} 1"),
        "{}",
        gw.metrics_text()
    );
    amqp.delete_exchange(&exchange).await;
    drop(slow);
}

#[tokio::test]
async fn every_subscription_id_gets_its_own_frames_and_a_freed_slot_is_reused_correctly() {
    let gw = start_gateway(&["--fanout", "true"]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("ids");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let destination = format!("/exchange/{exchange}/zjj");
    // Pages that name their subscriptions themselves (one id per browser).
    let mut clients = Vec::new();
    for id in ["a", "b", "c"] {
        let mut c = Client::logged_in_ws(&gw).await;
        c.subscribe(id, &destination, &[]).await;
        clients.push((id, c));
    }
    // "b" leaves; "d" joins and takes its place in the shared queue's frame table.
    let (_, mut b) = clients.remove(1);
    b.disconnect().await;
    let mut d = Client::logged_in_ws(&gw).await;
    d.subscribe("d", &destination, &[]).await;
    clients.push(("d", d));
    assert_eq!(queues_bound_to(&exchange), 1, "one shared queue");
    for n in 0..3 {
        let text = format!("message {n}");
        amqp.publish(
            &exchange,
            "zjj",
            text.as_bytes(),
            BasicProperties::default(),
        )
        .await;
        for (id, c) in clients.iter_mut() {
            let m = c.recv().await;
            assert_eq!(body(&m), text);
            assert_eq!(m.get("subscription"), Some(*id), "{m:?}");
            let message_id = m.get("message-id").unwrap();
            assert!(
                message_id.starts_with(&format!("T_{id}@@session-")),
                "{message_id}"
            );
        }
    }
    amqp.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn a_burst_of_subscribers_is_authorised_by_one_probe_not_one_channel_each() {
    // A user of its own, so its pooled AMQP connection is this gateway's and nobody else's.
    let user = "stompgate-burst";
    ensure_user(user, "burst", ".*", ".*", ".*");
    let gw = start_gateway(&["--fanout", "true"]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("burst");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut clients = Vec::new();
    for _ in 0..30 {
        let mut c = Client::ws(&gw).await;
        let reply = c
            .connect_with(&[
                ("accept-version", "1.2"),
                ("host", "/"),
                ("login", user),
                ("passcode", "burst"),
            ])
            .await;
        assert_eq!(reply.command, Command::Connected, "{reply:?}");
        clients.push(c);
    }
    // Every SUBSCRIBE is out before the first RECEIPT: the joins overlap, as when a page
    // is reloaded by many browsers at once.
    for (i, c) in clients.iter_mut().enumerate() {
        let frame = Frame::new(Command::Subscribe)
            .header("id", "sub-0")
            .header("destination", format!("/exchange/{exchange}/news").as_str())
            .header("receipt", format!("r{i}").as_str());
        c.send(frame).await;
    }
    for c in clients.iter_mut() {
        let reply = c.recv_receipt().await;
        assert_eq!(reply.command, Command::Receipt, "{reply:?}");
    }
    // One channel for the shared queue, and the probe's, closed after the probe (perhaps not
    // yet when RabbitMQ is asked); a probe per subscriber would open a channel per session.
    let listing = rabbitmqctl(&["list_connections", "user", "channels", "--quiet"]);
    let channels: Vec<u32> = listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(u, _)| *u == user)
        .filter_map(|(_, c)| c.trim().parse().ok())
        .collect();
    assert_eq!(channels.len(), 1, "one pooled connection: {listing}");
    assert!(channels[0] <= 2, "{} channels: {listing}", channels[0]);
    amqp.publish(&exchange, "news", b"all", BasicProperties::default())
        .await;
    for c in clients.iter_mut() {
        assert_eq!(body(&c.recv().await), "all");
    }
    amqp.delete_exchange(&exchange).await;
}
