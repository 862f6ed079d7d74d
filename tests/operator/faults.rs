//! Operator faults (issue 7, item 6): the controller runs in-process against the in-memory API
//! server (tests/kube-emulator) and the real RabbitMQ; a TCP proxy in front of RabbitMQ plays a
//! broker that goes down and comes back. Each test prints how long convergence took.
//!
//! - broker down: Ready=False / BrokerUnreachable, retried with backoff, converges when it listens;
//! - credentials Secret removed: SecretNotFound and a Warning event; converges when restored;
//! - conflicting exchange: Stalled / ExchangeConflict naming the exchange, the other exchanges
//!   still declared, no retry storm;
//! - deletion (of the object or of its namespace) with `deletionPolicy: Delete`: with the broker
//!   up the owned exchange and binding are removed; with the broker gone the finalizer gives up
//!   at the configured bound and the deletion completes.

use crate::proxy;
use crate::support;

use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use stompgate::operator::controller;
use support::operator::cluster::{Op, cond, cond_is, gw_path, observed_current, routes};
use support::rabbit::{
    broker_addr, declare_queue, delete_exchange, delete_queue, exchange_exists, rabbit,
};
use support::{unique, wait_for};

/// A proxy to RabbitMQ whose port is closed: a broker that is down.
async fn broker_down() -> proxy::Proxy {
    let p = proxy::Proxy::start(broker_addr()).await;
    p.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", p.port()))
            .await
            .is_err(),
        "the stopped proxy port refuses connections"
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_down_is_reported_retried_with_backoff_and_converges_when_it_listens() {
    let op = Op::start(Duration::from_secs(300)).await;
    let ns = "fault-broker";
    op.namespace(ns);
    op.guest_secret(ns);
    let proxy = broker_down().await;
    let exchange = unique("down");
    op.step("StompGateway pointing at a closed port");
    op.gateway(
        ns,
        "gw",
        proxy.port(),
        json!({"exchanges": [{"name": exchange, "type": "topic"}], "deletionPolicy": "Delete"}),
    );
    let t0 = Instant::now();
    let gw = wait_for("BrokerConnected=False", 30, || {
        op.gw(ns, "gw")
            .filter(|g| observed_current(g) && cond_is(g, "BrokerConnected", "False"))
    })
    .await;
    let detected = t0.elapsed();
    let (_, reason, message) = cond(&gw, "BrokerConnected").expect("BrokerConnected");
    assert_eq!(reason, "BrokerUnreachable");
    assert!(
        message.contains(&format!(
            "cannot connect to amqp://127.0.0.1:{}",
            proxy.port()
        )),
        "{message}"
    );
    let ready = cond(&gw, "Ready").expect("Ready");
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", "BrokerUnreachable")
    );
    assert!(cond_is(&gw, "TopologyReady", "False"), "{:#}", gw["status"]);
    // The children are applied even though the broker is down.
    assert!(
        op.emu
            .get(&format!("/apis/apps/v1/namespaces/{ns}/deployments/gw"))
            .is_some()
    );
    // The event follows the status write.
    wait_for("a Warning BrokerUnreachable event", 10, || {
        op.events(ns, "gw")
            .into_iter()
            .find(|e| e.0 == "Warning" && e.1 == "BrokerUnreachable")
    })
    .await;

    // Backoff: 1 s doubling with jitter, so ~5 attempts in 8 s, not a hot loop.
    let before = op.secret_reads(ns);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let attempts = op.secret_reads(ns) - before;
    op.step(&format!(
        "{attempts} retries in 8 s while the broker is down"
    ));
    assert!(
        (1..=6).contains(&attempts),
        "{attempts} reconciles in 8 s: expected exponential backoff"
    );
    let writes_before = op.status_writes(ns, "gw");
    assert!(
        op.task.as_ref().is_some_and(|t| !t.is_finished()),
        "the controller runs"
    );
    let metrics = op.ctx.metrics.encode();
    assert!(
        metrics.contains("stompgw_reconcile_errors_total{reason=\"BrokerUnreachable\"}"),
        "{metrics}"
    );

    // The broker comes back on the same port: the probe notices, every object is reconciled.
    op.deployment_available(ns, "gw").await;
    op.step("broker listens again");
    proxy.resume().await;
    let t1 = Instant::now();
    let gw = wait_for("Ready=True after the broker returns", 30, || {
        op.gw(ns, "gw").filter(|g| {
            cond_is(g, "Ready", "True")
                && cond_is(g, "BrokerConnected", "True")
                && cond_is(g, "TopologyReady", "True")
        })
    })
    .await;
    let converged = t1.elapsed();
    assert!(op.status_writes(ns, "gw") > writes_before);
    let rmq = rabbit().await;
    assert!(exchange_exists(&rmq, &exchange).await);
    assert_eq!(gw["status"]["topology"]["exchanges"][0]["owned"], true);
    eprintln!(
        "MEASURED broker-down: detected in {:.2}s; converged {:.2}s after the broker listened",
        detected.as_secs_f64(),
        converged.as_secs_f64()
    );
    delete_exchange(&rmq, &exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secret_removed_is_reported_with_an_event_and_converges_when_restored() {
    let op = Op::start(Duration::from_secs(300)).await;
    let ns = "fault-secret";
    op.namespace(ns);
    op.guest_secret(ns);
    let exchange = unique("secret");
    op.gateway(
        ns,
        "gw",
        broker_addr().port(),
        json!({"exchanges": [{"name": exchange, "type": "topic"}], "deletionPolicy": "Delete"}),
    );
    op.deployment_available(ns, "gw").await;
    wait_for("Ready=True", 30, || {
        op.gw(ns, "gw").filter(|g| cond_is(g, "Ready", "True"))
    })
    .await;

    op.step("Secret deleted");
    op.delete(&format!("/api/v1/namespaces/{ns}/secrets/rmq-creds"));
    let t0 = Instant::now();
    let gw = wait_for("Ready=False SecretNotFound", 30, || {
        op.gw(ns, "gw")
            .filter(|g| cond(g, "Ready").is_some_and(|c| c.1 == "SecretNotFound"))
    })
    .await;
    let detected = t0.elapsed();
    let msg = cond(&gw, "Ready").expect("Ready").2;
    assert!(
        msg.contains(&format!("Secret {ns}/rmq-creds"))
            && msg.contains("spec.rabbitmq.credentialsSecretRef")
            && msg.contains("not found"),
        "{msg}"
    );
    let ev = wait_for("a Warning SecretNotFound event", 10, || {
        op.events(ns, "gw")
            .into_iter()
            .find(|e| e.0 == "Warning" && e.1 == "SecretNotFound")
    })
    .await;
    assert!(ev.2.contains("rmq-creds"), "{ev:?}");
    // Backoff, not a hot loop, and the controller keeps running.
    let before = op.secret_reads(ns);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = op.secret_reads(ns) - before;
    assert!(attempts <= 4, "{attempts} reconciles in 4 s");
    assert!(op.task.as_ref().is_some_and(|t| !t.is_finished()));

    op.step("Secret restored");
    op.guest_secret(ns);
    let t1 = Instant::now();
    wait_for("Ready=True after the Secret returns", 30, || {
        op.gw(ns, "gw").filter(|g| cond_is(g, "Ready", "True"))
    })
    .await;
    let converged = t1.elapsed();
    eprintln!(
        "MEASURED secret-removed: detected in {:.2}s; converged {:.2}s after it was restored",
        detected.as_secs_f64(),
        converged.as_secs_f64()
    );
    delete_exchange(&rabbit().await, &exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicting_exchange_stalls_naming_it_declares_the_others_without_a_retry_storm() {
    let op = Op::start(Duration::from_secs(300)).await;
    let ns = "fault-conflict";
    op.namespace(ns);
    op.guest_secret(ns);
    let rmq = rabbit().await;
    let taken = unique("taken");
    let free = unique("free");
    // Someone else's exchange: fanout, not durable; the spec wants a durable topic.
    {
        let ch = rmq.create_channel().await.expect("channel");
        ch.exchange_declare(
            taken.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare the conflicting exchange");
    }
    op.gateway(
        ns,
        "gw",
        broker_addr().port(),
        json!({"exchanges": [{"name": taken, "type": "topic", "durable": true},
                             {"name": free, "type": "topic"}],
               "deletionPolicy": "Delete"}),
    );
    let t0 = Instant::now();
    let gw = wait_for("Stalled=True", 30, || {
        op.gw(ns, "gw")
            .filter(|g| observed_current(g) && cond_is(g, "Stalled", "True"))
    })
    .await;
    let detected = t0.elapsed();
    let stalled = cond(&gw, "Stalled").expect("Stalled");
    assert_eq!(stalled.1, "ExchangeConflict");
    assert!(
        stalled.2.contains("PRECONDITION_FAILED")
            && stalled.2.contains(&format!("exchange '{taken}'")),
        "{}",
        stalled.2
    );
    let ready = cond(&gw, "Ready").expect("Ready");
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", "ExchangeConflict")
    );
    let topo = cond(&gw, "TopologyReady").expect("TopologyReady");
    assert_eq!(
        (topo.0.as_str(), topo.1.as_str()),
        ("False", "ExchangeConflict")
    );
    let exchanges = gw["status"]["topology"]["exchanges"].clone();
    let entry = |n: &str| {
        exchanges
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == n).cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(entry(&taken)["state"], "Conflict", "{exchanges}");
    assert_eq!(entry(&taken)["owned"], false, "never ours: never deleted");
    assert_eq!(entry(&free)["state"], "Declared", "{exchanges}");
    assert!(
        exchange_exists(&rmq, &free).await,
        "the other exchange is declared"
    );
    wait_for(
        "a Warning ExchangeConflict event naming the exchange",
        10,
        || {
            op.events(ns, "gw")
                .into_iter()
                .find(|e| e.0 == "Warning" && e.1 == "ExchangeConflict" && e.2.contains(&taken))
        },
    )
    .await;

    // No retry storm: a conflict waits for a spec change or the slow resync. (The status write
    // itself causes one more, idle, reconcile: let it pass first.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = op.events(ns, "gw").len();
    let reads = op.secret_reads(ns);
    let writes = op.status_writes(ns, "gw");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(op.secret_reads(ns) - reads, 0, "no reconcile in 5 s");
    assert_eq!(
        op.status_writes(ns, "gw") - writes,
        0,
        "no status write in 5 s"
    );
    assert_eq!(op.events(ns, "gw").len(), events, "no new event");
    eprintln!(
        "MEASURED conflict: Stalled/ExchangeConflict in {:.2}s; 0 retries in the next 5 s",
        detected.as_secs_f64()
    );

    // Deleting the StompGateway removes only what it created.
    op.delete(&gw_path(ns, "gw"));
    wait_for("the StompGateway is gone", 30, || {
        op.gw(ns, "gw").is_none().then_some(())
    })
    .await;
    assert!(!exchange_exists(&rmq, &free).await, "owned: deleted");
    assert!(exchange_exists(&rmq, &taken).await, "not ours: kept");
    delete_exchange(&rmq, &taken).await;
}

/// A converged StompGateway `gw` in `ns` with an owned exchange bound to queue `q`, through
/// `port`; returns the exchange name.
async fn converged_with_owned_topology(op: &Op, ns: &str, port: u16, q: &str) -> String {
    op.namespace(ns);
    op.guest_secret(ns);
    let exchange = unique("owned");
    op.gateway(
        ns,
        "gw",
        port,
        json!({"exchanges": [{"name": exchange, "type": "topic"}],
               "bindings": [{"source": exchange, "destination": q,
                             "destinationType": "queue", "routingKey": "k"}],
               "deletionPolicy": "Delete"}),
    );
    op.deployment_available(ns, "gw").await;
    let gw = wait_for("Ready=True", 30, || {
        op.gw(ns, "gw").filter(|g| cond_is(g, "Ready", "True"))
    })
    .await;
    assert!(
        gw["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == controller::FINALIZER)),
        "{:#}",
        gw["metadata"]
    );
    exchange
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespace_deleted_with_the_broker_up_removes_the_owned_topology() {
    let op = Op::start(Duration::from_secs(30)).await;
    let ns = "fault-ns-up";
    let rmq = rabbit().await;
    let q = unique("q");
    declare_queue(&rmq, &q).await;
    let exchange = converged_with_owned_topology(&op, ns, broker_addr().port(), &q).await;
    assert!(routes(&rmq, &exchange, "k", &q).await, "binding declared");

    // The namespace goes: its Secret is deleted with everything else, before the finalizer runs.
    op.step("namespace deleted");
    let took = op.delete_namespace(ns).await;
    assert!(
        took < Duration::from_secs(10),
        "cleanup with the broker up is immediate, not the 30 s bound: {took:?}"
    );
    assert!(
        !exchange_exists(&rmq, &exchange).await,
        "the owned exchange is deleted (passive declare: NOT_FOUND)"
    );
    // The exchange's bindings went with it; a new exchange of the same name routes nothing.
    {
        let ch = rmq.create_channel().await.expect("channel");
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("redeclare");
    }
    assert!(!routes(&rmq, &exchange, "k", &q).await, "binding removed");
    eprintln!(
        "MEASURED namespace-deleted, broker up: namespace gone in {:.2}s, topology removed",
        took.as_secs_f64()
    );
    delete_exchange(&rmq, &exchange).await;
    delete_queue(&rmq, &q).await;
}

/// An object first reached after its cleanup deadline (a long queue behind a slow API
/// server: 13 of 300 exchanges were left behind in `stompgate bench operator` when the
/// attempt got 100 ms) still gets one real attempt: its exchange is removed, not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_reached_after_its_deadline_still_cleans_up() {
    let op = Op::start(Duration::ZERO).await;
    let rmq = rabbit().await;
    let q = unique("q");
    declare_queue(&rmq, &q).await;
    let proxy = proxy::Proxy::start(broker_addr()).await;
    let ns = "fault-del-late";
    let exchange = converged_with_owned_topology(&op, ns, proxy.port(), &q).await;
    op.delete(&gw_path(ns, "gw"));
    wait_for("the StompGateway is gone", 30, || {
        op.gw(ns, "gw").is_none().then_some(())
    })
    .await;
    assert!(
        !exchange_exists(&rmq, &exchange).await,
        "the exchange was left behind although RabbitMQ was there"
    );
    let events = op.events(ns, "gw");
    assert!(
        events.iter().any(|e| e.0 == "Normal" && e.1 == "CleanedUp"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_with_the_broker_gone_completes_at_the_cleanup_bound() {
    let bound = Duration::from_secs(6);
    let op = Op::start(bound).await;
    let rmq = rabbit().await;
    let q = unique("q");
    declare_queue(&rmq, &q).await;
    let proxy = proxy::Proxy::start(broker_addr()).await;

    // (1) The StompGateway itself is deleted while the broker is down.
    let ns = "fault-del-down";
    let exchange = converged_with_owned_topology(&op, ns, proxy.port(), &q).await;
    op.step("broker stops; StompGateway deleted");
    proxy.stop();
    let t0 = Instant::now();
    op.delete(&gw_path(ns, "gw"));
    wait_for("the StompGateway is gone", 30, || {
        op.gw(ns, "gw").is_none().then_some(())
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= bound - Duration::from_millis(1100) && took < bound + Duration::from_secs(3),
        "deletion took {took:?}; the bound is {bound:?}"
    );
    let events = op.events(ns, "gw");
    let skipped = events
        .iter()
        .find(|e| e.0 == "Warning" && e.1 == "CleanupSkipped")
        .unwrap_or_else(|| panic!("a CleanupSkipped event: {events:?}"));
    assert!(
        skipped.2.contains("broker objects were left in RabbitMQ"),
        "{skipped:?}"
    );
    assert!(
        exchange_exists(&rmq, &exchange).await,
        "left behind, as reported"
    );
    delete_exchange(&rmq, &exchange).await;
    eprintln!(
        "MEASURED StompGateway deleted, broker gone: deletion completed in {:.2}s (bound {}s)",
        took.as_secs_f64(),
        bound.as_secs()
    );

    // (2) Its namespace is deleted while the broker is down (Secret gone too).
    proxy.resume().await;
    let ns = "fault-ns-down";
    let exchange = converged_with_owned_topology(&op, ns, proxy.port(), &q).await;
    op.step("broker stops; namespace deleted");
    proxy.stop();
    let took = op.delete_namespace(ns).await;
    assert!(
        took >= bound - Duration::from_millis(1100) && took < bound + Duration::from_secs(3),
        "namespace deletion took {took:?}; the bound is {bound:?}"
    );
    assert!(exchange_exists(&rmq, &exchange).await, "left behind");
    eprintln!(
        "MEASURED namespace deleted, broker gone: completed in {:.2}s (bound {}s)",
        took.as_secs_f64(),
        bound.as_secs()
    );
    assert!(op.task.as_ref().is_some_and(|t| !t.is_finished()));
    delete_exchange(&rmq, &exchange).await;
    delete_queue(&rmq, &q).await;
}
