//! Topology against the real RabbitMQ at 127.0.0.1:5672 (or `STOMPGATE_TEST_AMQP_URL`).
//! These tests fail, never skip, when the broker is absent. Every test uses its own uniquely
//! named exchanges and queues and removes them.

use std::collections::BTreeMap;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ExchangeKind};
use stompgate::crd::{
    BindingSpec, DeletionPolicy, DestinationType, ExchangeSpec, OnConflict, TopologySpec,
    TopologyStatus,
};
use stompgate::operator::topology::{Broker, BrokerPool, BrokerTarget, TopologyError, state};

use crate::support::rabbit::{declare_queue, exchange_exists, rabbit};
use crate::support::{amqp_url, unique};

fn target() -> BrokerTarget {
    BrokerTarget::new(&amqp_url(), None, None)
}

async fn broker() -> Broker {
    Broker::connect(&target())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ must run at {} for these tests: {e}", target()))
}

fn exchange(name: &str, t: &str) -> ExchangeSpec {
    ExchangeSpec {
        name: name.into(),
        type_: t.into(),
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: BTreeMap::new(),
    }
}

fn binding(src: &str, dst: &str, rk: &str) -> BindingSpec {
    BindingSpec {
        source: src.into(),
        destination: dst.into(),
        destination_type: DestinationType::Queue,
        routing_key: rk.into(),
        arguments: BTreeMap::new(),
    }
}

async fn declare_exchange(c: &Connection, name: &str, kind: ExchangeKind) {
    let ch = c.create_channel().await.expect("channel");
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(name.into(), kind, opts, FieldTable::default())
        .await
        .expect("declare");
}

/// Publishes to `ex` with `rk` and reports whether `queue` received it.
async fn routed(c: &Connection, ex: &str, rk: &str, queue: &str) -> bool {
    let ch = c.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirm");
    ch.basic_publish(
        ex.into(),
        rk.into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .is_some()
}

async fn cleanup(c: &Connection, exchanges: &[&str], queues: &[&str]) {
    let ch = c.create_channel().await.expect("channel");
    for e in exchanges {
        let _ = ch
            .exchange_delete((*e).into(), ExchangeDeleteOptions::default())
            .await;
    }
    for q in queues {
        let _ = ch
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
}

fn spec(exchanges: Vec<ExchangeSpec>, bindings: Vec<BindingSpec>) -> TopologySpec {
    TopologySpec {
        exchanges,
        bindings,
        ..TopologySpec::default()
    }
}

#[tokio::test]
async fn declare_creates_owned_exchange_and_binding() {
    let c = rabbit().await;
    let (ex, q) = (unique("rabbitmq"), unique("audit"));
    declare_queue(&c, &q).await;
    let b = broker().await;
    let out = b
        .apply(
            &spec(vec![exchange(&ex, "topic")], vec![binding(&ex, &q, "zjj")]),
            None,
        )
        .await
        .expect("apply");
    assert!(out.ready(), "{out:?}");
    assert_eq!(out.status.exchanges[0].state, state::DECLARED);
    assert!(out.status.exchanges[0].owned, "we created it");
    assert_eq!(out.status.bindings[0].state, state::DECLARED);
    assert!(exchange_exists(&c, &ex).await);
    assert!(
        routed(&c, &ex, "zjj", &q).await,
        "binding routes zjj to the queue"
    );
    // A second pass is a no-op that keeps ownership.
    let again = b
        .apply(
            &spec(vec![exchange(&ex, "topic")], vec![binding(&ex, &q, "zjj")]),
            Some(&out.status),
        )
        .await
        .expect("again");
    assert_eq!(again.status, out.status);
    assert!(again.recreated.is_empty());
    cleanup(&c, &[&ex], &[&q]).await;
}

#[tokio::test]
async fn existing_equivalent_exchange_is_found_not_owned() {
    let c = rabbit().await;
    let ex = unique("found");
    declare_exchange(&c, &ex, ExchangeKind::Topic).await;
    let out = broker()
        .await
        .apply(&spec(vec![exchange(&ex, "topic")], vec![]), None)
        .await
        .expect("apply");
    assert!(out.ready());
    assert_eq!(out.status.exchanges[0].state, state::DECLARED);
    assert!(!out.status.exchanges[0].owned, "found, not created");
    cleanup(&c, &[&ex], &[]).await;
}

#[tokio::test]
async fn conflict_reports_rabbitmq_reply_text_exactly() {
    let c = rabbit().await;
    let ex = unique("conflict");
    declare_exchange(&c, &ex, ExchangeKind::Direct).await;
    let b = broker().await;
    let out = b
        .apply(&spec(vec![exchange(&ex, "topic")], vec![]), None)
        .await
        .expect("apply");
    assert_eq!(out.status.exchanges[0].state, state::CONFLICT);
    assert!(!out.status.exchanges[0].owned);
    assert_eq!(
        out.conflicts,
        vec![format!(
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{ex}' in vhost '/': received 'topic' but current is 'direct'"
        )]
    );
    assert!(
        !out.conflicts[0].contains("guest"),
        "no credentials in the message"
    );
    // The 406 closed only its own channel: the connection still works.
    assert!(b.is_connected());
    let ok = unique("after");
    let out2 = b
        .apply(&spec(vec![exchange(&ok, "fanout")], vec![]), None)
        .await
        .expect("apply");
    assert!(out2.ready());
    assert!(
        exchange_exists(&c, &ex).await,
        "the conflicting exchange is left alone"
    );
    cleanup(&c, &[&ex, &ok], &[]).await;
}

#[tokio::test]
async fn adopt_uses_the_existing_exchange_as_is_and_never_deletes_it() {
    let c = rabbit().await;
    let (ex, q) = (unique("adopt"), unique("q"));
    declare_exchange(&c, &ex, ExchangeKind::Direct).await;
    declare_queue(&c, &q).await;
    let mut s = spec(vec![exchange(&ex, "topic")], vec![binding(&ex, &q, "k")]);
    s.on_conflict = OnConflict::Adopt;
    s.deletion_policy = DeletionPolicy::Delete;
    let b = broker().await;
    let out = b.apply(&s, None).await.expect("apply");
    assert!(out.conflicts.is_empty());
    assert_eq!(out.status.exchanges[0].state, state::ADOPTED);
    assert!(!out.status.exchanges[0].owned);
    assert!(
        routed(&c, &ex, "k", &q).await,
        "bindings on an adopted exchange work"
    );
    let removed = b.cleanup(&out.status).await.expect("cleanup");
    assert!(
        exchange_exists(&c, &ex).await,
        "adopted exchange survives cleanup: {removed:?}"
    );
    assert!(!routed(&c, &ex, "k", &q).await, "our binding was removed");
    cleanup(&c, &[&ex], &[&q]).await;
}

#[tokio::test]
async fn changed_binding_is_bound_new_then_unbound_old() {
    let c = rabbit().await;
    let (ex, q) = (unique("bind"), unique("q"));
    declare_queue(&c, &q).await;
    let b = broker().await;
    let first = b
        .apply(
            &spec(vec![exchange(&ex, "topic")], vec![binding(&ex, &q, "zjj")]),
            None,
        )
        .await
        .expect("apply");
    let second = b
        .apply(
            &spec(vec![exchange(&ex, "topic")], vec![binding(&ex, &q, "zjk")]),
            Some(&first.status),
        )
        .await
        .expect("apply");
    let ops: Vec<&str> = second.ops.iter().map(|(o, _)| *o).collect();
    let bind_at = ops.iter().position(|o| *o == "bind").expect("bind");
    let unbind_at = ops.iter().position(|o| *o == "unbind").expect("unbind");
    assert!(bind_at < unbind_at, "bind before unbind: {ops:?}");
    assert_eq!(second.status.bindings.len(), 1);
    assert_eq!(second.status.bindings[0].routing_key, "zjk");
    assert!(routed(&c, &ex, "zjk", &q).await);
    assert!(!routed(&c, &ex, "zjj", &q).await, "the old binding is gone");
    cleanup(&c, &[&ex], &[&q]).await;
}

#[tokio::test]
async fn unbind_uses_the_exact_arguments_of_the_bind() {
    let c = rabbit().await;
    let (ex, q) = (unique("headers"), unique("q"));
    declare_queue(&c, &q).await;
    let mut bnd = binding(&ex, &q, "");
    bnd.arguments.insert(
        "x-match".into(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("all".into()),
    );
    bnd.arguments.insert(
        "region".into(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("eu".into()),
    );
    let b = broker().await;
    let first = b
        .apply(&spec(vec![exchange(&ex, "headers")], vec![bnd]), None)
        .await
        .expect("apply");
    assert!(first.ready(), "{first:?}");
    let second = b
        .apply(
            &spec(vec![exchange(&ex, "headers")], vec![]),
            Some(&first.status),
        )
        .await
        .expect("apply");
    assert!(second.ops.contains(&("unbind", "ok")));
    // Publishing with the header no longer routes.
    let ch = c.create_channel().await.expect("ch");
    let mut headers = FieldTable::default();
    headers.insert(
        "region".into(),
        lapin::types::AMQPValue::LongString("eu".into()),
    );
    ch.basic_publish(
        ex.as_str().into(),
        "".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("publish");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .is_none()
    );
    cleanup(&c, &[&ex], &[&q]).await;
}

#[tokio::test]
async fn drift_is_repaired_and_reported() {
    let c = rabbit().await;
    let (ex, q) = (unique("drift"), unique("q"));
    declare_queue(&c, &q).await;
    let b = broker().await;
    let s = spec(vec![exchange(&ex, "topic")], vec![binding(&ex, &q, "zjj")]);
    let first = b.apply(&s, None).await.expect("apply");
    cleanup(&c, &[&ex], &[]).await;
    assert!(!exchange_exists(&c, &ex).await);
    let second = b.apply(&s, Some(&first.status)).await.expect("repair");
    assert_eq!(second.recreated, vec![ex.clone()]);
    assert!(second.status.exchanges[0].owned);
    assert!(exchange_exists(&c, &ex).await);
    assert!(
        routed(&c, &ex, "zjj", &q).await,
        "binding restored with the exchange"
    );
    cleanup(&c, &[&ex], &[&q]).await;
}

#[tokio::test]
async fn cleanup_deletes_only_owned_objects() {
    let c = rabbit().await;
    let (mine, theirs, q) = (unique("mine"), unique("theirs"), unique("q"));
    declare_exchange(&c, &theirs, ExchangeKind::Topic).await;
    declare_queue(&c, &q).await;
    let b = broker().await;
    let s = spec(
        vec![exchange(&mine, "topic"), exchange(&theirs, "topic")],
        vec![binding(&mine, &q, "a")],
    );
    let out = b.apply(&s, None).await.expect("apply");
    let owned: Vec<(&str, bool)> = out
        .status
        .exchanges
        .iter()
        .map(|e| (e.name.as_str(), e.owned))
        .collect();
    assert_eq!(owned, vec![(mine.as_str(), true), (theirs.as_str(), false)]);
    let removed = b.cleanup(&out.status).await.expect("cleanup");
    assert!(
        removed.names.iter().any(|r| r.contains(&mine)),
        "{removed:?}"
    );
    assert!(!exchange_exists(&c, &mine).await);
    assert!(exchange_exists(&c, &theirs).await, "found exchange kept");
    // Cleanup is idempotent: a second run (e.g. after a retry) succeeds and keeps theirs.
    b.cleanup(&out.status).await.expect("again");
    assert!(exchange_exists(&c, &theirs).await);
    cleanup(&c, &[&theirs], &[&q]).await;
}

#[tokio::test]
async fn exchanges_removed_from_spec_are_deleted_only_with_delete_policy() {
    let c = rabbit().await;
    let (a, bx) = (unique("a"), unique("b"));
    let b = broker().await;
    let mut s = spec(vec![exchange(&a, "topic"), exchange(&bx, "topic")], vec![]);
    let first = b.apply(&s, None).await.expect("apply");
    s.exchanges.truncate(1);
    let retained = b.apply(&s, Some(&first.status)).await.expect("retain");
    assert!(exchange_exists(&c, &bx).await, "Retain keeps it");
    assert_eq!(retained.status.exchanges.len(), 1);
    s.deletion_policy = DeletionPolicy::Delete;
    let _ = b.apply(&s, Some(&first.status)).await.expect("delete");
    assert!(
        !exchange_exists(&c, &bx).await,
        "Delete removes the owned exchange"
    );
    cleanup(&c, &[&a, &bx], &[]).await;
}

#[tokio::test]
async fn missing_destination_queue_leaves_binding_pending() {
    let c = rabbit().await;
    let ex = unique("pending");
    let out = broker()
        .await
        .apply(
            &spec(
                vec![exchange(&ex, "topic")],
                vec![binding(&ex, &unique("nope"), "k")],
            ),
            None,
        )
        .await
        .expect("apply");
    assert!(!out.ready());
    assert_eq!(out.status.bindings[0].state, state::PENDING);
    assert!(
        out.pending[0].starts_with("NOT_FOUND - no queue"),
        "{:?}",
        out.pending
    );
    cleanup(&c, &[&ex], &[]).await;
}

#[tokio::test]
async fn unreachable_and_bad_credentials_are_classified_without_secrets() {
    let down = BrokerTarget::new("amqp://127.0.0.1:1/%2f", Some("u"), Some("s3cret"));
    match Broker::connect(&down).await {
        Err(e @ TopologyError::Unreachable { .. }) => {
            assert!(!e.to_string().contains("s3cret"), "{e}")
        }
        Err(e) => panic!("wanted Unreachable, got {e}"),
        Ok(_) => panic!("port 1 answered"),
    }
    let base = amqp_url();
    let hostpart = base
        .rsplit_once('@')
        .map(|(_, h)| h.to_string())
        .unwrap_or(base.clone());
    let bad = BrokerTarget::new(
        &format!("amqp://{hostpart}"),
        Some("guest"),
        Some("wrong-pw-s3cret"),
    );
    match Broker::connect(&bad).await {
        Err(e @ TopologyError::AuthFailed { .. }) => {
            assert!(!e.to_string().contains("s3cret"), "{e}")
        }
        Err(e) => panic!("wanted AuthFailed, got {e}"),
        Ok(_) => panic!("wrong password accepted"),
    }
    assert_eq!(format!("{bad}"), format!("amqp://{hostpart}"));
}

#[tokio::test]
async fn pool_reuses_connections_and_signals_a_reconnect() {
    let (pool, mut reconnected) = BrokerPool::new();
    let t = target();
    let a = pool.get(&t).await.expect("connect");
    let b = pool.get(&t).await.expect("again");
    assert!(std::sync::Arc::ptr_eq(&a, &b), "one connection per broker");
    assert!(
        reconnected.try_recv().is_err(),
        "first connect is no reconnect"
    );
    a.close().await;
    let c = pool.get(&t).await.expect("reconnect");
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    assert!(
        reconnected.try_recv().is_ok(),
        "reconnect signalled so every gateway resyncs"
    );
    let empty = TopologyStatus::default();
    assert!(c.cleanup(&empty).await.expect("usable").names.is_empty());
}

/// A burst of reconciles (an operator restart with a thousand objects) asks the pool for the
/// same broker at once: they must share one connection (each costs buffers and a thread),
/// and the connection asks for a small frame_max (lapin's buffers are 32 frames each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_gets_shares_one_small_connection() {
    let (pool, _reconnected) = BrokerPool::new();
    let t = target();
    let gets = (0..32).map(|_| {
        let pool = pool.clone();
        let t = t.clone();
        tokio::spawn(async move { pool.get(&t).await.expect("connect") })
    });
    let brokers = futures::future::join_all(gets).await;
    let first = brokers[0].as_ref().expect("task").clone();
    for b in &brokers {
        let b = b.as_ref().expect("task");
        assert!(
            std::sync::Arc::ptr_eq(&first, b),
            "one connection per broker"
        );
    }
    assert_eq!(
        first.frame_max(),
        stompgate::operator::topology::OPERATOR_FRAME_MAX
    );
    first.close().await;
}

/// While the broker is unreachable, tasks that waited for a failing connect share its answer
/// instead of each waiting out a connect of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_gets_to_a_dead_broker_shares_the_failure() {
    let (pool, _reconnected) = BrokerPool::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let dead = BrokerTarget::new(&format!("amqp://127.0.0.1:{port}/%2f"), None, None);
    let gets = (0..8).map(|_| {
        let pool = pool.clone();
        let dead = dead.clone();
        tokio::spawn(async move { pool.get(&dead).await.map(|_| ()) })
    });
    for r in futures::future::join_all(gets).await {
        match r.expect("task") {
            Err(TopologyError::Unreachable { .. }) => {}
            other => panic!("wanted Unreachable, got {other:?}"),
        }
    }
}

/// Many objects' broker operations at once on one connection, some failing on purpose (a
/// conflicting exchange, a binding to a missing queue), on a connection whose channel ids run
/// out every 16 channels (`?channel_max=16`, negotiated by RabbitMQ): every error lands on its
/// own object, every exchange an object created is recorded as owned, and cleanup removes
/// exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_objects_get_their_own_errors_and_ownership() {
    let c = rabbit().await;
    let sep = if amqp_url().contains('?') { '&' } else { '?' };
    let small = BrokerTarget::new(&format!("{}{sep}channel_max=16", amqp_url()), None, None);
    let broker = Broker::connect(&small).await.expect("connect");
    let objects: Vec<(String, String, Option<String>)> = (0..40)
        .map(|i| {
            let conflict = (i % 5 == 0).then(|| unique(&format!("conflict{i}")));
            (
                unique(&format!("own{i}")),
                unique(&format!("queue{i}")),
                conflict,
            )
        })
        .collect();
    for (i, (_, queue, conflict)) in objects.iter().enumerate() {
        if i % 2 == 0 {
            declare_queue(&c, queue).await;
        }
        if let Some(name) = conflict {
            declare_exchange(&c, name, ExchangeKind::Direct).await;
        }
    }
    let specs: Vec<TopologySpec> = objects
        .iter()
        .map(|(own, queue, conflict)| {
            let mut exchanges = vec![exchange(own, "topic")];
            if let Some(name) = conflict {
                exchanges.push(exchange(name, "topic"));
            }
            TopologySpec {
                deletion_policy: DeletionPolicy::Delete,
                ..spec(exchanges, vec![binding(own, queue, "k")])
            }
        })
        .collect();
    // Two passes: creation, then the steady-state re-check with each object's own ledger.
    let mut ledgers: Vec<Option<TopologyStatus>> = vec![None; objects.len()];
    for pass in 0..2 {
        let outcomes = futures::future::join_all(
            specs
                .iter()
                .zip(&ledgers)
                .map(|(s, ledger)| broker.apply(s, ledger.as_ref())),
        )
        .await;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let (own, queue, conflict) = &objects[i];
            let outcome = outcome.unwrap_or_else(|e| panic!("pass {pass} object {i}: {e}"));
            let others = |text: &str| {
                objects.iter().enumerate().any(|(j, (o, q, cf))| {
                    j != i
                        && (text.contains(o.as_str())
                            || text.contains(q.as_str())
                            || cf.as_ref().is_some_and(|cf| text.contains(cf.as_str())))
                })
            };
            for text in outcome.pending.iter().chain(&outcome.conflicts) {
                assert!(
                    !others(text),
                    "object {i} got another object's error: {text}"
                );
            }
            match conflict {
                Some(name) => {
                    assert_eq!(outcome.conflicts.len(), 1, "object {i}: {outcome:?}");
                    assert!(outcome.conflicts[0].contains(name.as_str()));
                }
                None => assert!(outcome.conflicts.is_empty(), "object {i}: {outcome:?}"),
            }
            if i % 2 == 0 {
                assert!(outcome.pending.is_empty(), "object {i}: {outcome:?}");
            } else {
                assert_eq!(outcome.pending.len(), 1, "object {i}: {outcome:?}");
                assert!(outcome.pending[0].contains(queue.as_str()));
            }
            let mine = outcome
                .status
                .exchanges
                .iter()
                .find(|e| &e.name == own)
                .expect("own exchange in the ledger");
            assert!(
                mine.owned,
                "pass {pass} object {i}: created but not owned: {mine:?}"
            );
            ledgers[i] = Some(outcome.status);
        }
    }
    let removed = futures::future::join_all(
        ledgers
            .iter()
            .map(|l| broker.cleanup(l.as_ref().expect("ledger"))),
    )
    .await;
    for (i, r) in removed.into_iter().enumerate() {
        let r = r.unwrap_or_else(|e| panic!("cleanup {i}: {e}"));
        assert!(
            r.names.contains(&format!("exchange {}", objects[i].0)),
            "{r:?}"
        );
    }
    for (own, queue, conflict) in &objects {
        assert!(!exchange_exists(&c, own).await, "{own} leaked");
        let conflict: Vec<&str> = conflict.iter().map(String::as_str).collect();
        cleanup(&c, &conflict, &[queue]).await;
    }
}

/// A resync of a settled topology looks for drift and changes nothing: one passive check
/// per exchange and one (idempotent) bind per binding, no declare; what RabbitMQ answered is
/// what the ops say (a check that finds nothing is `not_found`, not `ok`).
#[tokio::test]
async fn a_settled_topology_costs_one_check_per_exchange_on_resync() {
    let c = rabbit().await;
    let (ex, q) = (unique("settled"), unique("settledq"));
    declare_queue(&c, &q).await;
    let b = broker().await;
    let s = spec(vec![exchange(&ex, "topic")], vec![binding(&ex, &q, "k")]);
    let first = b.apply(&s, None).await.expect("apply");
    assert_eq!(
        first.ops,
        vec![
            ("exchange.check", "not_found"),
            ("exchange.declare", "ok"),
            ("bind", "ok")
        ]
    );
    let second = b.apply(&s, Some(&first.status)).await.expect("resync");
    assert_eq!(second.ops, vec![("exchange.check", "ok"), ("bind", "ok")]);
    assert_eq!(second.status, first.status);
    // Drift: the exchange deleted behind our back is declared again and reported.
    cleanup(&c, &[&ex], &[]).await;
    let third = b.apply(&s, Some(&second.status)).await.expect("repair");
    assert_eq!(third.recreated, vec![ex.clone()]);
    assert!(
        routed(&c, &ex, "k", &q).await,
        "binding restored with the exchange"
    );
    cleanup(&c, &[&ex], &[&q]).await;
}
