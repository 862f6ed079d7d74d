//! The operator against the real API server's behaviour (issue 17): the controller runs
//! in-process against the in-memory API server (tests/kube-emulator), which behaves as
//! kube-apiserver does where the operator once went wrong on a real cluster (managedFields per
//! manager and operation, the Deployment controller's status, terminating namespaces, field
//! managers), and the real RabbitMQ.

#[path = "support/operator/mod.rs"]
#[allow(clippy::duplicate_mod)]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{
    Op, broker_addr, cond_is, declare_queue, delete_exchange, delete_queue, exchange_exists,
    gw_path, observed_current, rabbit, routes, uniq, wait_for,
};

fn ledger_names(gw: &Value, list: &str, key: &str) -> Vec<String> {
    gw.pointer(&format!("/status/topology/{list}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e[key].as_str().map(str::to_string))
        .collect()
}

/// Finding 1: an owned exchange and a binding removed from the spec, then the spec edited
/// again. Each generation must be observed: a status write that the API server refuses
/// (the write-ahead ledger once went through a merge patch, which the server records as a
/// second owner of the ledger's items) would leave observedGeneration behind for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_an_exchange_and_a_binding_keeps_status_current() {
    let op = Op::start(Duration::from_secs(30)).await;
    let ns = "remove-exchange";
    op.namespace(ns);
    op.guest_secret(ns);
    let rmq = rabbit().await;
    let q = uniq("q");
    declare_queue(&rmq, &q).await;
    let (keep, drop) = (uniq("keep"), uniq("drop"));
    let binding = |source: &str| json!({"source": source, "destination": q, "destinationType": "queue", "routingKey": "k"});
    op.gateway(
        ns,
        "gw",
        broker_addr().port(),
        json!({"exchanges": [{"name": keep, "type": "topic"}, {"name": drop, "type": "topic"}],
               "bindings": [binding(&keep), binding(&drop)],
               "deletionPolicy": "Delete"}),
    );
    let gw = wait_for("both exchanges declared and owned", 30, || {
        op.gw(ns, "gw").filter(|g| {
            observed_current(g)
                && cond_is(g, "TopologyReady", "True")
                && ledger_names(g, "exchanges", "name").len() == 2
        })
    })
    .await;
    assert_eq!(
        gw["status"]["topology"]["exchanges"][1]["owned"], true,
        "{:#}",
        gw["status"]
    );
    assert!(routes(&rmq, &drop, "k", &q).await);

    op.step("exchange and binding removed from the spec");
    op.merge_patch(
        &gw_path(ns, "gw"),
        json!({"spec": {"topology": {
            "exchanges": [{"name": keep, "type": "topic"}],
            "bindings": [binding(&keep)]}}}),
    );
    let gw = wait_for("the removal observed", 30, || {
        op.gw(ns, "gw").filter(|g| {
            observed_current(g)
                && cond_is(g, "TopologyReady", "True")
                && ledger_names(g, "exchanges", "name") == [keep.clone()]
        })
    })
    .await;
    assert_eq!(ledger_names(&gw, "bindings", "source"), [keep.as_str()]);
    assert!(
        !exchange_exists(&rmq, &drop).await,
        "owned and deletionPolicy Delete: deleted"
    );

    op.step("spec edited again");
    op.merge_patch(&gw_path(ns, "gw"), json!({"spec": {"replicas": 2}}));
    let gw = wait_for("the next generation observed", 30, || {
        op.gw(ns, "gw")
            .filter(|g| observed_current(g) && g["status"]["observedGeneration"] == 3)
    })
    .await;
    assert_eq!(ledger_names(&gw, "exchanges", "name"), [keep.as_str()]);
    // Status has one writer: the operator's apply (no Update entry of its own on status).
    let owners: Vec<(String, String)> = gw["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["subresource"] == "status")
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap_or_default().to_string();
            (s("manager"), s("operation"))
        })
        .collect();
    assert_eq!(
        owners,
        [("stompgateway-operator".to_string(), "Apply".to_string())]
    );
    delete_exchange(&rmq, &keep).await;
    delete_queue(&rmq, &q).await;
}
