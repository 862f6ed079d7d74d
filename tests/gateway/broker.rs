//! Pooled AMQP connections (src/gateway/broker.rs, src/amqp.rs): one session's broker error
//! must never reach another session, exhaust the pool, or end the shared connection.
//!
//! The first three tests are the reproductions of the security report, as written; the last
//! two run many sessions at once (and random interleavings) and check the same invariants.
//! `?channel_max=N` in the AMQP URL makes RabbitMQ negotiate fewer channel ids, so channel-id
//! wrap-around comes after N channels instead of 2047 (a real setting, not a test hook).

use crate::support::{
    Amqp, Client, amqp_url, body, http_get, metric, start_gateway, unique, wait_until,
};
use futures::future::join_all;
use lapin::ExchangeKind;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeSet;
use std::time::Duration;
use stompgate::gateway::server::Gateway;
use stompgate::stomp::{Command, Frame};

/// `amqp_url()` with a smaller negotiated `channel_max`.
fn url_with_channel_max(channel_max: u16) -> String {
    let url = amqp_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}channel_max={channel_max}")
}

#[derive(Clone, Copy, Debug)]
enum Wire {
    Tcp,
    Ws,
}

async fn open(gw: &Gateway, wire: Wire) -> Client {
    match wire {
        Wire::Tcp => Client::tcp(gw).await,
        Wire::Ws => Client::ws(gw).await,
    }
}

/// CONNECT with this login (guest's password: in service-user mode the gateway ignores it).
async fn login(gw: &Gateway, wire: Wire, user: &str) -> Client {
    login_with(gw, wire, user, "guest").await
}

/// CONNECT with this login and passcode.
async fn login_with(gw: &Gateway, wire: Wire, user: &str, passcode: &str) -> Client {
    let mut c = open(gw, wire).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("login", user),
            ("passcode", passcode),
        ])
        .await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
    c
}

/// SUBSCRIBE to an exchange that does not exist; returns the ERROR's body, checked to name
/// this session's own exchange and no other.
async fn subscribe_to_missing(c: &mut Client, exchange: &str) -> String {
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "b")
            .header("destination", format!("/exchange/{exchange}"))
            .header("receipt", "rb"),
    )
    .await;
    let reply = c.recv_receipt().await;
    assert_eq!(reply.command, Command::Error, "{reply:?}");
    let text = body(&reply);
    assert!(
        text.contains(&format!("no exchange '{exchange}'")),
        "a session that subscribed to '{exchange}' got someone else's error: {text}"
    );
    text
}

/// A healthy session still works: SUBSCRIBE to a queue with a receipt gets the RECEIPT.
async fn healthy_subscribe(gw: &Gateway, wire: Wire) {
    let mut c = login(gw, wire, "guest").await;
    let queue = unique("one-test");
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "h")
            .header("destination", format!("/queue/{queue}"))
            .header("auto-delete", "true")
            .header("receipt", "r1"),
    )
    .await;
    let reply = c.recv_receipt().await;
    assert_eq!(
        reply.command,
        Command::Receipt,
        "a healthy SUBSCRIBE after other sessions' errors: {reply:?} {}",
        body(&reply)
    );
    c.disconnect().await;
}

async fn assert_ready(gw: &Gateway) {
    let (status, text) = http_get(&format!("http://{}/readyz", gw.http_addr))
        .await
        .expect("/readyz answers");
    assert_eq!(status, 200, "/readyz: {text}");
}

/// Reproduction A and B: 2,048 sessions in a row each get their own NOT_FOUND (the 2,048th
/// would reuse channel id 1 on a default RabbitMQ: channel_max 2047), and 2,048 more leave
/// the pool healthy: new sessions work, /readyz and the metrics agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_of_earlier_sessions_are_never_replayed_when_channel_ids_wrap() {
    let gw = start_gateway(&[]).await;
    let prefix = unique("does-not-exist");
    for round in 0..2 {
        for i in 0..2048 {
            let mut c = login(&gw, Wire::Tcp, "guest").await;
            subscribe_to_missing(&mut c, &format!("{prefix}-{round}-{i}")).await;
        }
        // Reproduction A, step 3 (and B: the pool stays usable).
        healthy_subscribe(&gw, Wire::Tcp).await;
        healthy_subscribe(&gw, Wire::Ws).await;
    }
    assert_ready(&gw).await;
    assert_eq!(metric(&gw, "broker_up"), 1.0);
    assert_eq!(metric(&gw, "broker_channel_open_failing"), 0.0);
    assert_eq!(
        metric(&gw, "broker_connection_errors"),
        0.0,
        "no pooled connection was torn down"
    );
    assert!(
        metric(&gw, "broker_connections_retired") >= 1.0,
        "4,096 channels on one credential key retire at least one connection before its ids wrap"
    );
    assert!(metric(&gw, "broker_channel_errors") >= 4096.0);
}

/// Reproduction A with `--auth-mode service-user`: every session shares the gateway's
/// connection whatever its login, so a replayed error would leak one user's destination
/// names to another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_destination_names_never_reach_another_user() {
    let url = url_with_channel_max(32);
    let gw = start_gateway(&["--auth-mode", "service-user", "--amqp-url", &url]).await;
    for i in 0..200 {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        let wire = if i % 3 == 0 { Wire::Ws } else { Wire::Tcp };
        let mut c = login(&gw, wire, user).await;
        subscribe_to_missing(&mut c, &unique(&format!("{user}-secret"))).await;
    }
    healthy_subscribe(&gw, Wire::Tcp).await;
    assert_eq!(metric(&gw, "broker_connection_errors"), 0.0);
    assert!(metric(&gw, "broker_connections_retired") >= 5.0);
}

/// Reproduction C: a client that SENDs to a missing exchange (no receipt) and drops its
/// socket at once, again and again, beside a healthy session: the healthy session is never
/// disconnected and the shared AMQP connection is never torn down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropping_after_a_failed_send_cannot_disconnect_others() {
    let gw = start_gateway(&[]).await;
    let amqp = Amqp::connect().await;
    let exchange = unique("healthy");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let mut healthy = login(&gw, Wire::Ws, "guest").await;
    healthy
        .subscribe("h", &format!("/exchange/{exchange}/k"), &[])
        .await;
    for i in 0..400 {
        let wire = if i % 2 == 0 { Wire::Tcp } else { Wire::Ws };
        let mut c = login(&gw, wire, "guest").await;
        c.send(
            Frame::new(Command::Send)
                .header("destination", format!("/exchange/{}/k", unique("missing")))
                .with_body("x"),
        )
        .await;
        drop(c);
    }
    // The healthy session is still connected and still served.
    for n in 0..3 {
        let text = format!("still here {n}");
        healthy
            .send_confirmed(&format!("/exchange/{exchange}/k"), &text, &[])
            .await;
        let message = healthy.recv().await;
        assert_eq!(message.command, Command::Message, "{message:?}");
        assert_eq!(body(&message), text);
    }
    assert!(healthy.closed.is_none(), "{:?}", healthy.closed);
    assert_eq!(
        metric(&gw, "broker_connection_errors"),
        0.0,
        "the shared AMQP connection was torn down"
    );
    healthy.disconnect().await;
    amqp.delete_exchange(&exchange).await;
}

/// `/readyz` fails while the pool cannot open channels (here: RabbitMQ's per-user channel
/// limit at 0 for the service user), and comes back when it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_channels_cannot_be_opened() {
    use crate::support::{ensure_user, rabbitmqctl};
    let user = "stompgate-test-nochannels";
    ensure_user(user, "nochannels", ".*", ".*", ".*");
    rabbitmqctl(&["set_user_limits", user, r#"{"max-channels": 0}"#]);
    let url = format!("amqp://{user}:nochannels@127.0.0.1:5672/%2f");
    let gw = start_gateway(&["--auth-mode", "service-user", "--amqp-url", &url]).await;
    let readyz = format!("http://{}/readyz", gw.http_addr);

    let mut c = login(&gw, Wire::Tcp, "anyone").await;
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "s")
            .header("destination", format!("/queue/{}", unique("q")))
            .header("receipt", "r"),
    )
    .await;
    let reply = c.recv_receipt().await;
    assert_eq!(reply.command, Command::Error, "{reply:?}");
    let (status, text) = http_get(&readyz).await.expect("/readyz answers");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("cannot open AMQP channels"), "{text}");
    assert_eq!(metric(&gw, "broker_channel_open_failing"), 1.0);

    rabbitmqctl(&["clear_user_limits", user, "max-channels"]);
    // The readiness monitor re-checks on its own connection every few seconds.
    wait_until("/readyz 200", Duration::from_secs(60), || async {
        http_get(&readyz).await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert_eq!(metric(&gw, "broker_channel_open_failing"), 0.0);
    healthy_subscribe(&gw, Wire::Tcp).await;
}

/// What a healthy session must always manage: subscribe, publish with a receipt, receive
/// its own message, disconnect, with nothing else on the way.
async fn healthy_round_trip(gw: &Gateway, wire: Wire, user: &str, exchange: &str, tag: &str) {
    let mut c = login(gw, wire, user).await;
    let destination = format!("/exchange/{exchange}/{tag}");
    c.subscribe("h", &destination, &[]).await;
    c.send_confirmed(&destination, tag, &[]).await;
    let message = c.recv().await;
    assert_eq!(
        message.command,
        Command::Message,
        "healthy session {tag}: {message:?} {}",
        body(&message)
    );
    assert_eq!(body(&message), tag);
    c.disconnect().await;
}

/// Sends `frames` and returns every ERROR body received until the server closes (or ten
/// seconds pass), checking each names only `own` destinations.
async fn errors_until_closed(c: &mut Client, own: &BTreeSet<String>) {
    while let Some(frame) = c.recv_within(Duration::from_secs(10)).await {
        if frame.command == Command::Error {
            assert_names_only_own(&body(&frame), own);
        }
    }
}

/// Every quoted name in an error text (`'name'`) must be one this session used.
fn assert_names_only_own(text: &str, own: &BTreeSet<String>) {
    for (i, part) in text.split('\'').enumerate() {
        if i % 2 == 1 && part != "/" && !own.contains(part) {
            panic!("an ERROR names '{part}', which its session never used: {text}");
        }
    }
}

/// A client that pipelines SENDs to a missing exchange. RabbitMQ closes the channel after
/// the first publish; lapin answers with close-ok at once, ahead of publishes of the same
/// channel still queued behind it, and RabbitMQ takes a publish on a channel it has
/// forgotten as a connection error (`CHANNEL_ERROR - expected 'channel.open'`) that ends every
/// other session on the pooled connection. The gateway must wait for the first publish to a
/// new destination to be confirmed before it queues another on the same channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_to_a_missing_exchange_never_end_the_shared_connection() {
    let amqp = Amqp::connect().await;
    let exchange = unique("pipelined-ok");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let gw = start_gateway(&[]).await;
    // Eight such clients at once on one pooled connection keep lapin's write queue busy,
    // which is when a publish waits in it long enough to be overtaken.
    let clients = (0..8usize).map(|worker| {
        let gw = &gw;
        let exchange = exchange.as_str();
        async move {
            for round in 0..6 {
                let wire = if (worker + round) % 2 == 0 {
                    Wire::Tcp
                } else {
                    Wire::Ws
                };
                let name = unique("pipelined-missing");
                let own: BTreeSet<String> = [name.clone()].into();
                let mut c = login(gw, wire, "guest").await;
                let body_of_64k = "x".repeat(64 * 1024);
                for i in 0..100 {
                    c.send(
                        Frame::new(Command::Send)
                            .header("destination", format!("/exchange/{name}/k{}", i % 3))
                            .with_body(body_of_64k.clone()),
                    )
                    .await;
                }
                errors_until_closed(&mut c, &own).await;
                let tag = format!("after-{worker}-{round}");
                healthy_round_trip(gw, Wire::Tcp, "guest", exchange, &tag).await;
            }
        }
    });
    join_all(clients).await;
    assert_eq!(
        metric(&gw, "broker_connection_errors"),
        0.0,
        "a pipelined SEND to a missing exchange tore down the pooled connection"
    );
}

/// One misbehaving session: a broker error of one of several kinds.
async fn misbehave(gw: &Gateway, wire: Wire, user: &str, kind: u8, name: &str) {
    let own: BTreeSet<String> = [name.to_string()].into();
    let mut c = login(gw, wire, user).await;
    match kind {
        // SUBSCRIBE to a missing exchange: NOT_FOUND on a synchronous method.
        0 => {
            subscribe_to_missing(&mut c, name).await;
        }
        // SEND to a missing exchange without a receipt, then drop at once (RabbitMQ's
        // asynchronous channel close races the session's end).
        1 => {
            c.send(
                Frame::new(Command::Send)
                    .header("destination", format!("/exchange/{name}/k"))
                    .with_body("x"),
            )
            .await;
        }
        // The same, then keep talking until the channel error arrives.
        2 => {
            for _ in 0..3 {
                c.send(
                    Frame::new(Command::Send)
                        .header("destination", format!("/exchange/{name}/k"))
                        .with_body("x"),
                )
                .await;
            }
            c.send(
                Frame::new(Command::Send)
                    .header("destination", format!("/exchange/{name}/k"))
                    .header("receipt", "late")
                    .with_body("x"),
            )
            .await;
            errors_until_closed(&mut c, &own).await;
        }
        // A queue that must exist (`/amq/queue`) and does not.
        3 => {
            c.send(
                Frame::new(Command::Subscribe)
                    .header("id", "q")
                    .header("destination", format!("/amq/queue/{name}"))
                    .header("receipt", "rq"),
            )
            .await;
            let reply = c.recv_receipt().await;
            assert_eq!(reply.command, Command::Error, "{reply:?}");
            assert_names_only_own(&body(&reply), &own);
        }
        // SUBSCRIBE sent, socket dropped before the answer.
        _ => {
            c.send(
                Frame::new(Command::Subscribe)
                    .header("id", "b")
                    .header("destination", format!("/exchange/{name}"))
                    .header("receipt", "rb"),
            )
            .await;
        }
    }
}

/// Many erroring and many healthy sessions at once, over TCP and WebSocket, with fan-out on
/// and off, in passthrough and service-user mode, on connections whose channel ids wrap
/// quickly: no healthy session ever gets an ERROR or a close, no ERROR names a destination
/// its session never used, and no pooled connection is torn down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_errors_stay_with_their_own_sessions() {
    let amqp = Amqp::connect().await;
    let exchange = unique("concurrent");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let url = url_with_channel_max(32);
    for fanout in ["true", "false"] {
        for service_user in [false, true] {
            let mut flags = vec![
                "--amqp-url",
                url.as_str(),
                "--amqp-max-channels-per-connection",
                "12",
                "--fanout",
                fanout,
            ];
            if service_user {
                flags.extend(["--auth-mode", "service-user"]);
            }
            let gw = start_gateway(&flags).await;
            let erroring = (0..16usize).map(|worker| {
                let gw = &gw;
                async move {
                    for i in 0..12usize {
                        let wire = if (worker + i) % 2 == 0 {
                            Wire::Tcp
                        } else {
                            Wire::Ws
                        };
                        // Passthrough logs in as RabbitMQ users; service-user ignores the login.
                        let user = match (service_user, worker % 2) {
                            (false, _) => "guest",
                            (true, 0) => "alice",
                            (true, _) => "bob",
                        };
                        let name = unique(&format!("{user}-missing"));
                        misbehave(gw, wire, user, ((worker + i) % 5) as u8, &name).await;
                    }
                }
            });
            let healthy = (0..8usize).map(|worker| {
                let gw = &gw;
                let exchange = exchange.as_str();
                async move {
                    for i in 0..12usize {
                        let wire = if (worker + i) % 2 == 0 {
                            Wire::Ws
                        } else {
                            Wire::Tcp
                        };
                        let tag = format!("h{worker}-{i}");
                        healthy_round_trip(gw, wire, "guest", exchange, &tag).await;
                    }
                }
            });
            futures::join!(join_all(erroring), join_all(healthy));
            assert_eq!(
                metric(&gw, "broker_connection_errors"),
                0.0,
                "fanout={fanout} service_user={service_user}: a pooled connection was torn down"
            );
            assert!(
                metric(&gw, "broker_connections_retired") >= 1.0,
                "fanout={fanout} service_user={service_user}: ids never ran out (test too weak)"
            );
        }
    }
    amqp.delete_exchange(&exchange).await;
}

/// Random interleavings of channel errors, socket drops and normal traffic on one pooled
/// connection (all sessions share it until its channel ids run out). The seed is printed;
/// `STOMPGATE_TEST_SEED` replays one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_never_end_the_shared_connection() {
    let seed: u64 = std::env::var("STOMPGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("random_interleavings seed: {seed} (STOMPGATE_TEST_SEED={seed} replays it)");
    let amqp = Amqp::connect().await;
    let exchange = unique("interleave");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic).await;
    let url = url_with_channel_max(48);
    let gw = start_gateway(&[
        "--amqp-url",
        &url,
        "--amqp-max-channels-per-connection",
        "1000",
    ])
    .await;
    let workers = (0..12u64).map(|worker| {
        let gw = &gw;
        let exchange = exchange.as_str();
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (worker << 32));
            for step in 0..25u32 {
                let wire = if rng.random_bool(0.5) {
                    Wire::Tcp
                } else {
                    Wire::Ws
                };
                match rng.random_range(0..8u8) {
                    kind @ 0..5 => {
                        let name = unique(&format!("w{worker}-missing"));
                        misbehave(gw, wire, "guest", kind, &name).await;
                    }
                    5 | 6 => {
                        let tag = format!("w{worker}-{step}");
                        healthy_round_trip(gw, wire, "guest", exchange, &tag).await;
                    }
                    _ => {
                        // A healthy subscription dropped mid-stream.
                        let mut c = login(gw, wire, "guest").await;
                        c.subscribe("s", &format!("/exchange/{exchange}/drop"), &[])
                            .await;
                        drop(c);
                    }
                }
            }
        }
    });
    join_all(workers).await;
    healthy_round_trip(&gw, Wire::Tcp, "guest", &exchange, "final").await;
    assert_eq!(
        metric(&gw, "broker_connection_errors"),
        0.0,
        "seed {seed}: the shared AMQP connection was torn down"
    );
    assert!(metric(&gw, "broker_channel_errors") > 0.0, "seed {seed}");
    amqp.delete_exchange(&exchange).await;
}

/// Subscribes to a fresh auto-deleted queue with a receipt: the session's first use of a
/// channel of its own.
async fn subscribe_to_own_queue(c: &mut Client, name: &str) {
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "s")
            .header("destination", format!("/queue/{}", unique(name)))
            .header("auto-delete", "true")
            .header("receipt", "r"),
    )
    .await;
    let reply = c.recv().await;
    assert_eq!(reply.command, Command::Receipt, "{name}: {reply:?}");
}

/// The pool opens a key's next connection while its last free places are taken, so a burst
/// of sessions never waits behind the slot for an AMQP handshake. Sessions take their place
/// with their first channel, not at CONNECT: 10 logged-in sessions use the one connection they
/// logged in on. With 8 places a connection the threshold is 2: the 6th session to open a
/// channel starts a second connection in the background, before any session has found the
/// first one full; 10 channels then fit on the two without a third.
#[tokio::test]
async fn the_next_pooled_connection_opens_ahead_of_need() {
    let gw = start_gateway(&["--amqp-max-channels-per-connection", "8"]).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(Client::logged_in_ws(&gw).await);
    }
    assert_eq!(
        metric(&gw, "broker_connections"),
        1.0,
        "logged-in sessions without a channel take no place"
    );
    for (i, c) in clients.iter_mut().take(5).enumerate() {
        subscribe_to_own_queue(c, &format!("ahead{i}")).await;
    }
    assert_eq!(
        metric(&gw, "broker_connections"),
        1.0,
        "3 places left: nothing opened ahead yet"
    );
    subscribe_to_own_queue(&mut clients[5], "ahead5").await;
    wait_until(
        "a second connection opened ahead",
        Duration::from_secs(20),
        || async { metric(&gw, "broker_connections") >= 2.0 },
    )
    .await;
    for (i, c) in clients.iter_mut().enumerate().skip(6) {
        subscribe_to_own_queue(c, &format!("ahead{i}")).await;
    }
    assert_eq!(
        metric(&gw, "broker_connections"),
        2.0,
        "16 places for 10 channels"
    );
    assert_eq!(metric(&gw, "broker_channels"), 10.0);
}

/// Browsers that only subscribe through a shared fan-out queue never need a channel of their
/// own, so they take no place on a pooled connection: 40 of them, with 8 places a connection,
/// need one AMQP connection and one channel (the shared queue's; the authorisation probe's
/// channel is closed after the probe), not five connections; a 41st session that publishes
/// takes its place there too, and every subscriber gets its message.
#[tokio::test]
async fn sessions_that_only_share_a_queue_take_no_place_on_a_connection() {
    let gw = start_gateway(&[
        "--amqp-max-channels-per-connection",
        "8",
        "--fanout",
        "true",
    ])
    .await;
    let destination = format!("/exchange/amq.topic/{}", unique("placeless"));
    let mut subscribers = Vec::new();
    for i in 0..40 {
        let mut c = Client::logged_in_ws(&gw).await;
        c.send(
            Frame::new(Command::Subscribe)
                .header("id", format!("s{i}"))
                .header("destination", destination.as_str())
                .header("receipt", "r"),
        )
        .await;
        let reply = c.recv().await;
        assert_eq!(reply.command, Command::Receipt, "subscriber {i}: {reply:?}");
        subscribers.push(c);
    }
    assert_eq!(metric(&gw, "broker_connections"), 1.0);
    assert_eq!(
        metric(&gw, "broker_channels"),
        1.0,
        "the shared queue's channel (the probe's is closed)"
    );
    let mut publisher = Client::logged_in_ws(&gw).await;
    publisher
        .send(
            Frame::new(Command::Send)
                .header("destination", destination.as_str())
                .header("receipt", "sent")
                .with_body("to all"),
        )
        .await;
    let reply = publisher.recv().await;
    assert_eq!(reply.command, Command::Receipt, "{reply:?}");
    for (i, c) in subscribers.iter_mut().enumerate() {
        let message = c.recv().await;
        assert_eq!(message.command, Command::Message, "subscriber {i}");
        assert_eq!(body(&message), "to all");
    }
    assert_eq!(metric(&gw, "broker_connections"), 1.0);
    assert_eq!(metric(&gw, "broker_channels"), 2.0, "and the publisher's");
}

/// A session logs in on a connection its key already has; when it first needs a channel and
/// every connection of the key is full, the pool opens another with the key's password. If
/// RabbitMQ no longer accepts that password (changed since the login), the session gets an
/// `access_refused` ERROR, and sessions already placed carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_channel_after_the_password_changed_is_refused_cleanly() {
    use crate::support::{ensure_user, rabbitmqctl};
    let user = "stompgate-test-changed-password";
    ensure_user(user, "before", ".*", ".*", ".*");
    let gw = start_gateway(&["--amqp-max-channels-per-connection", "1"]).await;
    let mut first = login_with(&gw, Wire::Ws, user, "before").await;
    let mut second = login_with(&gw, Wire::Ws, user, "before").await;
    rabbitmqctl(&["change_password", user, "after"]);
    // The first takes the one place of the connection both logged in on.
    subscribe_to_own_queue(&mut first, "changed-first").await;
    second
        .send(
            Frame::new(Command::Subscribe)
                .header("id", "s")
                .header(
                    "destination",
                    format!("/queue/{}", unique("changed-second")),
                )
                .header("auto-delete", "true")
                .header("receipt", "r"),
        )
        .await;
    let reply = second.recv().await;
    assert_eq!(reply.command, Command::Error, "{reply:?}");
    assert!(
        format!("{reply:?} {}", body(&reply)).contains("access_refused"),
        "{reply:?} {}",
        body(&reply)
    );
    // The first session is unaffected.
    first
        .send(
            Frame::new(Command::Send)
                .header("destination", "/exchange/amq.topic/stompgate-test-changed")
                .header("receipt", "sent")
                .with_body("still here"),
        )
        .await;
    let reply = first.recv().await;
    assert_eq!(reply.command, Command::Receipt, "{reply:?}");
}
