//! Broker failures and rolling-update drain (issue 7, items 3 and 4).
//!
//! The restart tests start their own RabbitMQ node (scripts/rabbit-private-node.sh, ports
//! 27400-27499, one node per test so they may run in parallel) and stop it under load: a
//! publisher SENDs persistent messages with receipts to a durable queue, an `ack:client`
//! subscriber acknowledges each message 20 messages late (so some are always delivered but
//! unacknowledged). The drain test runs the gateway binary as a child process and sends it
//! SIGTERM. Figures are printed with `--nocapture`.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stompgate::stomp::{Command, Frame};
use support::private_node::PrivateNode;
use support::{Client, Closed, amqp_url, http_status, start_gateway, unique, wait_until};

// ---------------------------------------------------------------------------------------
// Helpers

/// CONNECT without panicking; the reply frame, or None when the server went away.
async fn try_connect(client: &mut Client) -> Option<Frame> {
    let frame = Frame::new(Command::Connect)
        .header("accept-version", "1.2")
        .header("host", "/")
        .header("login", "guest")
        .header("passcode", "guest");
    if !client.try_send(frame).await {
        return None;
    }
    client.recv_within(Duration::from_secs(10)).await
}

/// The close code after the server ended the connection (waits up to 5 s).
async fn close_code_of(client: &mut Client) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.closed.is_none() && Instant::now() < deadline {
        let _ = client.recv_within(Duration::from_millis(100)).await;
    }
    match &client.closed {
        Some(Closed::WebSocket(Some(f))) => Some(f.code.into()),
        _ => None,
    }
}

/// An ERROR a client saw, and how its connection was then closed.
#[derive(Debug, Clone)]
struct Seen {
    who: &'static str,
    message: Option<String>,
    reconnect: Option<String>,
    close: Option<u16>,
    at: Instant,
}

impl Seen {
    async fn of(who: &'static str, frame: &Frame, client: &mut Client) -> Seen {
        let at = Instant::now();
        Seen {
            at,
            who,
            message: frame.get("message").map(str::to_string),
            reconnect: frame.get("reconnect").map(str::to_string),
            close: close_code_of(client).await,
        }
    }
}

#[derive(Default)]
struct Log {
    /// Message ids the gateway confirmed with a RECEIPT (persistent, durable queue).
    confirmed: BTreeSet<u64>,
    received: HashSet<u64>,
    /// How often each id was delivered.
    deliveries: HashMap<u64, u32>,
    /// Ids that came with `redelivered:true`.
    redelivered: HashSet<u64>,
    /// The subscriber's delivered-but-unacknowledged ids when its session ended.
    unacked_at_loss: Vec<u64>,
    errors: Vec<Seen>,
    /// Times the subscriber (re)subscribed.
    subscribed: usize,
}

impl Log {
    /// The unacknowledged ids at the outage that RabbitMQ had confirmed. RabbitMQ delivers a
    /// persistent message to consumers before it is on disk (the confirm comes after), so one
    /// a crash catches before its confirm may be gone for good: the publisher got no RECEIPT
    /// and must resend it. Only confirmed ones must come again.
    fn unacked_confirmed(&self) -> impl Iterator<Item = u64> + '_ {
        self.unacked_at_loss
            .iter()
            .copied()
            .filter(|id| self.confirmed.contains(id))
    }
}

type SharedLog = Arc<Mutex<Log>>;

fn log(l: &SharedLog) -> std::sync::MutexGuard<'_, Log> {
    l.lock().expect("log lock")
}

/// SENDs sequence numbers with receipts, one at a time, reconnecting (every 250 ms) after
/// an ERROR or a refused CONNECT, as a client following `reconnect:true` would.
async fn publisher(url: String, destination: String, l: SharedLog, stop: Arc<AtomicBool>) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        let Some(mut c) = Client::try_ws_url(&url).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        match try_connect(&mut c).await {
            Some(f) if f.command == Command::Connected => {}
            _ => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        }
        while !stop.load(Ordering::Acquire) {
            seq += 1;
            let frame = Frame::new(Command::Send)
                .header("destination", destination.as_str())
                .header("persistent", "true")
                .header("receipt", seq.to_string())
                .with_body(seq.to_string());
            if !c.try_send(frame).await {
                break;
            }
            match c.recv_within(Duration::from_secs(10)).await {
                Some(f) if f.command == Command::Receipt => {
                    log(&l).confirmed.insert(seq);
                }
                Some(f) if f.command == Command::Error => {
                    let seen = Seen::of("publisher", &f, &mut c).await;
                    log(&l).errors.push(seen);
                    break;
                }
                _ => break,
            }
        }
    }
}

/// Subscribes with `ack:client` and acknowledges each message 20 messages late;
/// resubscribes after an ERROR.
async fn subscriber(url: String, destination: String, l: SharedLog, stop: Arc<AtomicBool>) {
    const WINDOW: usize = 20;
    while !stop.load(Ordering::Acquire) {
        let Some(mut c) = Client::try_ws_url(&url).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        match try_connect(&mut c).await {
            Some(f) if f.command == Command::Connected => {}
            _ => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        }
        let sub = Frame::new(Command::Subscribe)
            .header("id", "s")
            .header("destination", destination.as_str())
            .header("ack", "client")
            .header("prefetch-count", "100")
            .header("receipt", "sub");
        if !c.try_send(sub).await {
            continue;
        }
        match c.recv_within(Duration::from_secs(10)).await {
            Some(f) if f.command == Command::Receipt => log(&l).subscribed += 1,
            _ => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        }
        let mut window: VecDeque<(u64, String)> = VecDeque::new();
        while !stop.load(Ordering::Acquire) {
            match c.recv_within(Duration::from_millis(200)).await {
                None if c.closed.is_none() => continue,
                None => break,
                Some(f) if f.command == Command::Message => {
                    let id: u64 = support::body(&f).parse().expect("numeric body");
                    {
                        let mut g = log(&l);
                        g.received.insert(id);
                        *g.deliveries.entry(id).or_default() += 1;
                        if f.get("redelivered") == Some("true") {
                            g.redelivered.insert(id);
                        }
                    }
                    window.push_back((id, f.get("ack").expect("ack header").to_string()));
                    if window.len() > WINDOW {
                        let (_, ack) = window.pop_front().expect("non-empty");
                        if !c.try_send(Frame::new(Command::Ack).header("id", ack)).await {
                            break;
                        }
                    }
                }
                Some(f) if f.command == Command::Error => {
                    let seen = Seen::of("subscriber", &f, &mut c).await;
                    let mut g = log(&l);
                    g.unacked_at_loss = window.iter().map(|(id, _)| *id).collect();
                    g.errors.push(seen);
                    break;
                }
                Some(_) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Broker stopped and started under load

async fn broker_restart_under_load(name: &str, amqp_port: u16, dist_port: u16, crash: bool) {
    let node = PrivateNode::start(name, amqp_port, dist_port).await;
    let gw = start_gateway(&["--amqp-url", &node.url()]).await;
    let ws = format!("ws://{}/ws", gw.http_addr);
    let readyz = format!("http://{}/readyz", gw.http_addr);
    wait_until("ready", Duration::from_secs(20), || async {
        http_status(&readyz).await == 200
    })
    .await;

    let queue = format!("/queue/{}", unique(&format!("{name}-q")));
    let topic = format!("/topic/{}", unique(&format!("{name}-t")));
    // A transient subscription, served by a shared fan-out queue.
    let mut fan = Client::logged_in_ws(&gw).await;
    fan.subscribe("f", &topic, &[]).await;

    let l: SharedLog = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = [
        tokio::spawn(publisher(
            ws.clone(),
            queue.clone(),
            l.clone(),
            stop.clone(),
        )),
        tokio::spawn(subscriber(
            ws.clone(),
            queue.clone(),
            l.clone(),
            stop.clone(),
        )),
    ];
    wait_until("load running", Duration::from_secs(60), || async {
        let g = log(&l);
        g.confirmed.len() >= 300 && g.received.len() >= 200
    })
    .await;
    let confirmed_before = log(&l).confirmed.len();

    // Stop (or crash) RabbitMQ.
    let t_stop = Instant::now();
    node.down(crash).await;
    let stopped = t_stop.elapsed();

    // Affected sessions get ERROR (reconnect:true) and close 1013.
    wait_until("subscriber ERROR", Duration::from_secs(20), || async {
        log(&l).errors.iter().any(|e| e.who == "subscriber")
    })
    .await;
    let fan_error = fan
        .recv_within(Duration::from_secs(10))
        .await
        .expect("the fan-out subscriber gets an ERROR");
    assert_eq!(fan_error.command, Command::Error, "{fan_error:?}");
    let fan_seen = Seen::of("fanout", &fan_error, &mut fan).await;
    let readyz_503_after = wait_until("/readyz 503", Duration::from_secs(20), || async {
        http_status(&readyz).await == 503
    })
    .await
        + stopped;

    // A new session during the outage: a clear ERROR, quickly.
    let t = Instant::now();
    let mut late = Client::ws(&gw).await;
    let reply = try_connect(&mut late).await.expect("a reply to CONNECT");
    let refused_in = t.elapsed();
    assert_eq!(reply.command, Command::Error, "{reply:?}");
    assert_eq!(reply.get("reconnect"), Some("true"), "{reply:?}");
    assert!(
        support::body(&reply).contains("RabbitMQ is unreachable"),
        "{reply:?}"
    );
    assert!(refused_in < Duration::from_secs(3), "{refused_in:?}");

    // Some downtime with clients retrying, then RabbitMQ comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t_start = Instant::now();
    node.up().await;
    let node_listening = t_start.elapsed();
    let ready_after_listen = wait_until("/readyz 200", Duration::from_secs(30), || async {
        http_status(&readyz).await == 200
    })
    .await;
    let resubscribed_after = wait_until("resubscribed", Duration::from_secs(30), || async {
        log(&l).subscribed >= 2
    })
    .await
        + ready_after_listen;

    // Fan-out: a new subscription after recovery gets a new shared queue and messages.
    let mut fan = Client::logged_in_ws(&gw).await;
    fan.subscribe("f", &topic, &[]).await;
    let mut sender = Client::logged_in_ws(&gw).await;
    sender.send_confirmed(&topic, "after", &[]).await;
    let m = fan.recv().await;
    assert_eq!(m.command, Command::Message, "{m:?}");
    assert_eq!(support::body(&m), "after");

    // Load goes on, then stops; every confirmed message must arrive.
    wait_until("load after recovery", Duration::from_secs(60), || async {
        log(&l).confirmed.len() >= confirmed_before + 300
    })
    .await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.expect("client task");
    }
    let stop2 = Arc::new(AtomicBool::new(false));
    let drain = tokio::spawn(subscriber(
        ws.clone(),
        queue.clone(),
        l.clone(),
        stop2.clone(),
    ));
    // Every confirmed message, and a second delivery of each one unacked at the outage
    // (received once already, so the first condition alone may hold before it comes).
    let all_in = wait_until(
        "every confirmed message, the unacked ones again",
        Duration::from_secs(60),
        || async {
            let g = log(&l);
            g.confirmed.iter().all(|id| g.received.contains(id))
                && g.unacked_confirmed()
                    .all(|id| g.deliveries.get(&id).copied().unwrap_or(0) >= 2)
        },
    )
    .await;
    stop2.store(true, Ordering::Release);
    drain.await.expect("drain task");

    let g = log(&l);
    let lost = g
        .confirmed
        .iter()
        .filter(|id| !g.received.contains(id))
        .count();
    assert_eq!(lost, 0, "confirmed messages lost");
    let sub_seen = g
        .errors
        .iter()
        .find(|e| e.who == "subscriber")
        .expect("subscriber error")
        .clone();
    let error_after = sub_seen.at.duration_since(t_stop);
    let fan_error_after = fan_seen.at.duration_since(t_stop);
    for seen in [&sub_seen, &fan_seen] {
        assert_eq!(
            seen.message.as_deref(),
            Some("Connection to RabbitMQ lost"),
            "{seen:?}"
        );
        assert_eq!(seen.reconnect.as_deref(), Some("true"), "{seen:?}");
        assert_eq!(seen.close, Some(1013), "{seen:?}");
    }
    assert!(
        g.unacked_confirmed().next().is_some(),
        "some messages were unacked"
    );
    let not_again: Vec<u64> = g
        .unacked_confirmed()
        .filter(|id| g.deliveries.get(id).copied().unwrap_or(0) < 2)
        .collect();
    assert!(
        not_again.is_empty(),
        "unacked at the outage but not delivered again: {not_again:?}"
    );
    let not_flagged: Vec<u64> = g
        .unacked_confirmed()
        .filter(|id| !g.redelivered.contains(id))
        .collect();
    assert!(
        not_flagged.is_empty(),
        "unacked at the outage but not redelivered:true: {not_flagged:?}"
    );
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains("stompgate_broker_reconnects_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("stompgate_broker_up 1"), "{metrics}");

    eprintln!(
        "FIGURES {name} (crash={crash}): confirmed={} received={} lost={lost} redelivered={} \
         unacked_at_outage={} | node down in {stopped:?}; subscriber ERROR after {error_after:?}, \
         fan-out ERROR after {fan_error_after:?}; \
         /readyz 503 after {readyz_503_after:?}; CONNECT during outage refused in {refused_in:?}; \
         node listening {node_listening:?} after start; /readyz 200 {ready_after_listen:?} after \
         that; subscriber resubscribed {resubscribed_after:?} after listening; backlog drained in {all_in:?}; \
         errors seen: {:?}",
        g.confirmed.len(),
        g.received.len(),
        g.redelivered.len(),
        g.unacked_at_loss.len(),
        g.errors
    );
    drop(g);
    drop(gw);
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_broker_restart_under_load_loses_nothing() {
    broker_restart_under_load("failnode-stop", 27411, 27412, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_crash_under_load_loses_nothing() {
    broker_restart_under_load("failnode-kill", 27421, 27422, true).await;
}

// ---------------------------------------------------------------------------------------
// SIGTERM drain

/// A gateway binary as a child process (what a pod runs).
struct ChildGateway {
    child: tokio::process::Child,
    port: u16,
}

impl ChildGateway {
    async fn start(drain_secs: u64) -> ChildGateway {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stompgate"))
            .args([
                "gateway",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--amqp-url",
                &amqp_url(),
                "--drain-timeout-secs",
                &drain_secs.to_string(),
            ])
            .kill_on_drop(true)
            .spawn()
            .expect("gateway binary starts");
        let gw = ChildGateway { child, port };
        let health = format!("http://127.0.0.1:{port}/readyz");
        wait_until("child gateway ready", Duration::from_secs(20), || async {
            http_status(&health).await == 200
        })
        .await;
        gw
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

async fn logged_in(url: &str) -> Client {
    let mut c = Client::try_ws_url(url).await.expect("connects");
    let reply = try_connect(&mut c).await.expect("reply");
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_receipts_first_and_loses_no_client_ack_message() {
    let mut a = ChildGateway::start(10).await;
    let queue = unique("failures-drain");
    let dest = format!("/queue/{queue}");

    // 50 persistent messages; a client-ack consumer on gateway A takes all, acks 20.
    let mut publisher = logged_in(&a.ws()).await;
    for i in 0..50u64 {
        publisher
            .send_confirmed(&dest, &i.to_string(), &[("persistent", "true")])
            .await;
    }
    let mut consumer = logged_in(&a.ws()).await;
    consumer
        .subscribe("c", &dest, &[("ack", "client"), ("prefetch-count", "100")])
        .await;
    let mut acks = Vec::new();
    for _ in 0..50 {
        let m = consumer.recv().await;
        assert_eq!(m.command, Command::Message, "{m:?}");
        acks.push((
            support::body(&m).parse::<u64>().expect("id"),
            m.get("ack").expect("ack").to_string(),
        ));
    }
    acks.sort();
    for (i, (_, ack)) in acks.iter().take(20).enumerate() {
        let mut frame = Frame::new(Command::Ack).header("id", ack.as_str());
        if i == 19 {
            frame.headers.push("receipt", "acked");
        }
        consumer.send(frame).await;
    }
    assert_eq!(
        consumer.recv_receipt().await.get("receipt-id"),
        Some("acked")
    );

    // The replacement pod is up (rolling update: surge first).
    let b = start_gateway(&[]).await;

    // SENDs in flight, then SIGTERM.
    let in_flight: Vec<u64> = (1000..1300).collect();
    for id in &in_flight {
        let frame = Frame::new(Command::Send)
            .header("destination", dest.as_str())
            .header("persistent", "true")
            .header("receipt", id.to_string())
            .with_body(id.to_string());
        assert!(publisher.try_send(frame).await);
    }
    let t = Instant::now();
    a.sigterm();

    // The publisher: RECEIPTs for what was in flight, then ERROR reconnect:true, close 1001.
    let mut receipted = Vec::new();
    let error = loop {
        let Some(f) = publisher.recv_within(Duration::from_secs(15)).await else {
            panic!(
                "closed ({:?}) before an ERROR; {} receipts",
                publisher.closed,
                receipted.len()
            );
        };
        match f.command {
            Command::Receipt => receipted.push(
                f.get("receipt-id")
                    .and_then(|r| r.parse::<u64>().ok())
                    .expect("receipt id"),
            ),
            Command::Error => break f,
            other => panic!("unexpected {other:?}"),
        }
    };
    let error_in = t.elapsed();
    assert_eq!(error.get("message"), Some("Server shutting down"));
    assert_eq!(error.get("reconnect"), Some("true"));
    assert_eq!(close_code_of(&mut publisher).await, Some(1001));
    assert!(
        publisher
            .recv_within(Duration::from_millis(200))
            .await
            .is_none(),
        "nothing after the ERROR"
    );
    // The consumer: ERROR reconnect:true, close 1001.
    let error = loop {
        let f = consumer
            .recv_within(Duration::from_secs(15))
            .await
            .expect("consumer ERROR");
        if f.command == Command::Error {
            break f;
        }
    };
    assert_eq!(error.get("reconnect"), Some("true"));
    assert_eq!(close_code_of(&mut consumer).await, Some(1001));
    let status = tokio::time::timeout(Duration::from_secs(15), a.child.wait())
        .await
        .expect("gateway exits within the drain timeout")
        .expect("exit status");
    let exited_in = t.elapsed();
    assert!(status.success(), "{status:?}");

    // The clients reconnect to gateway B: every unacked message is redelivered (flagged),
    // every receipted SEND is there.
    let mut expected: BTreeSet<u64> = acks.iter().skip(20).map(|(id, _)| *id).collect();
    let unacked = expected.clone();
    expected.extend(receipted.iter().copied());
    let mut consumer = support::Client::logged_in_ws(&b).await;
    consumer
        .subscribe("c", &dest, &[("ack", "client"), ("prefetch-count", "500")])
        .await;
    let mut got = HashSet::new();
    let mut flagged = HashSet::new();
    while !expected.iter().all(|id| got.contains(id)) {
        let m = consumer
            .recv_within(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| {
                let missing: Vec<_> = expected.iter().filter(|i| !got.contains(*i)).collect();
                panic!("missing after drain: {missing:?}")
            });
        assert_eq!(m.command, Command::Message, "{m:?}");
        let id: u64 = support::body(&m).parse().expect("id");
        if m.get("redelivered") == Some("true") {
            flagged.insert(id);
        }
        got.insert(id);
        consumer
            .send(Frame::new(Command::Ack).header("id", m.get("ack").expect("ack")))
            .await;
    }
    let unflagged: Vec<_> = unacked.iter().filter(|id| !flagged.contains(id)).collect();
    assert!(unflagged.is_empty(), "not redelivered:true: {unflagged:?}");
    assert!(
        !(0..20).any(|i| got.contains(&acks[i].0)),
        "acked messages came back"
    );
    eprintln!(
        "FIGURES drain: {} SENDs written before SIGTERM, {} RECEIPTs before the ERROR, \
         ERROR {error_in:?} after SIGTERM, {} unacked redelivered (redelivered:true), gateway \
         exited {exited_in:?} after SIGTERM, 0 lost",
        in_flight.len(),
        receipted.len(),
        unacked.len()
    );
    support::Amqp::connect().await.delete_queue(&queue).await;
}
