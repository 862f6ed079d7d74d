//! Reconcile scenarios against kube's mock service (an in-memory API behind `tower-test`, the
//! `ApiServerVerifier` pattern of controller-rs) and the real RabbitMQ for the broker side.
//! Each test asserts the exact API calls, so "a steady-state reconcile makes no write" is
//! checked, not assumed.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use stompgate::crd::StompGateway;
use stompgate::operator::controller::{
    self, Context, Error, FINALIZER, Settings, backoff_delay, reconcile,
};
use stompgate::operator::metrics::Metrics;
use stompgate::operator::topology::BrokerPool;
use support::operator::apiserver::{Call, FakeApi};
use support::rabbit::{broker_host_port, delete_exchange, exchange_exists, rabbit};
use support::unique;

const NS: &str = "ns1";
const GW: &str = "/apis/stompgate.io/v1alpha1/namespaces/ns1/stompgateways/gw";
const SECRET: &str = "/api/v1/namespaces/ns1/secrets/rmq-creds";
const CM: &str = "/api/v1/namespaces/ns1/configmaps/gw-config";
const SVC: &str = "/api/v1/namespaces/ns1/services/gw";
const DEPLOY: &str = "/apis/apps/v1/namespaces/ns1/deployments/gw";
const PDB: &str = "/apis/policy/v1/namespaces/ns1/poddisruptionbudgets/gw";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns1/events";
const NAMESPACE: &str = "/api/v1/namespaces/ns1";

fn gateway_json(exchange: &str, extra: Value) -> Value {
    let (host, port) = broker_host_port();
    let mut v = json!({
        "apiVersion": "stompgate.io/v1alpha1",
        "kind": "StompGateway",
        "metadata": {"name": "gw", "namespace": NS, "uid": "uid-gw-1", "generation": 1},
        "spec": {
            "rabbitmq": {"host": host, "port": port, "credentialsSecretRef": {"name": "rmq-creds"}},
            "replicas": 2,
            "topology": {"exchanges": [{"name": exchange, "type": "topic"}]}
        }
    });
    support::operator::apiserver::merge(&mut v, &extra);
    v
}

fn secret_json() -> Value {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "rmq-creds", "namespace": NS},
           "data": {"username": b("guest"), "password": b("guest")}})
}

struct Env {
    api: FakeApi,
    ctx: Arc<Context>,
}

impl Env {
    fn new(gw: Value) -> Self {
        let (client, api) = FakeApi::start();
        api.put(GW, gw);
        api.put(SECRET, secret_json());
        api.put(
            NAMESPACE,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        );
        let (pool, _rx) = BrokerPool::new();
        let settings = Settings {
            default_image: "img:test".into(),
            ..Settings::default()
        };
        let ctx = Arc::new(Context::new(
            client,
            settings,
            pool,
            Arc::new(Metrics::new()),
        ));
        Self { api, ctx }
    }

    fn gw(&self) -> Arc<StompGateway> {
        Arc::new(serde_json::from_value(self.api.get(GW).expect("gw stored")).expect("typed gw"))
    }

    async fn reconcile(&self) -> (Result<kube::runtime::controller::Action, Error>, Vec<Call>) {
        self.api.take_calls();
        let r = reconcile(self.gw(), self.ctx.clone()).await;
        (r, self.api.take_calls())
    }

    fn status(&self) -> Value {
        self.api.get(GW).expect("gw")["status"].clone()
    }

    fn cond(&self, t: &str) -> Value {
        self.status()["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == t).cloned())
            .unwrap_or(Value::Null)
    }

    fn deployment_available(&self) {
        self.api.edit(DEPLOY, |d| {
            d["metadata"]["generation"] = 1.into();
            d["status"] = json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2,
                "updatedReplicas": 2, "availableReplicas": 2,
                "conditions": [{"type": "Available", "status": "True"}]});
        });
    }

    fn edit_spec(&self, f: impl FnOnce(&mut Value)) {
        self.api.edit(GW, |g| {
            f(&mut g["spec"]);
            let generation = g["metadata"]["generation"].as_i64().unwrap_or(1);
            g["metadata"]["generation"] = (generation + 1).into();
        });
    }
}

fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is_write())
        .map(Call::short)
        .collect()
}

#[tokio::test]
async fn create_then_available_then_idle_reconcile_makes_no_write() {
    let ex = unique("create");
    let env = Env::new(gateway_json(&ex, json!({})));
    let (r, calls) = env.reconcile().await;
    let action = r.expect("reconcile");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(300))
    );
    let seq: Vec<String> = calls.iter().map(Call::short).collect();
    assert_eq!(
        seq,
        vec![
            format!("GET {SECRET}"),
            format!("GET {CM}"),
            // A child is created: once per reconcile, not in a namespace being deleted.
            format!("GET {NAMESPACE}"),
            format!("PATCH {CM}"),
            format!("GET {SVC}"),
            format!("PATCH {SVC}"),
            format!("GET {DEPLOY}"),
            format!("PATCH {DEPLOY}"),
            format!("GET {PDB}"),
            format!("PATCH {PDB}"),
            // Write-ahead: the exchange about to be created is recorded as owned first.
            format!("PATCH {GW}/status"),
            format!("PATCH {GW}/status"),
        ],
        "exact call sequence on create (no event: a rollout is not a problem)"
    );
    // Status has one writer, server-side apply, like every other write (a merge patch of the
    // ledger would be a second owner on a real API server: issue 17).
    let intent = &calls[10];
    assert_eq!(
        intent.body.as_ref().expect("body")["status"]["topology"],
        json!({"exchanges": [{"name": ex.as_str(), "state": "Pending", "owned": true}], "bindings": []})
    );
    for c in calls.iter().filter(|c| c.method == "PATCH") {
        assert_eq!(
            c.content_type, "application/apply-patch+yaml",
            "server-side apply for {}",
            c.path
        );
    }
    let dep = env.api.get(DEPLOY).expect("deployment");
    assert_eq!(dep["metadata"]["ownerReferences"][0]["uid"], "uid-gw-1");
    assert_eq!(dep["spec"]["replicas"], 2);
    let st = env.status();
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(
        st["selector"],
        "app.kubernetes.io/instance=gw,app.kubernetes.io/name=stompgate"
    );
    assert_eq!(st["endpoints"]["webSocket"], "ws://gw.ns1.svc:15674/ws");
    assert_eq!(st["gatewayImage"], "img:test");
    assert_eq!(st["topology"]["exchanges"][0]["name"], ex.as_str());
    assert_eq!(st["topology"]["exchanges"][0]["owned"], true);
    assert_eq!(env.cond("BrokerConnected")["status"], "True");
    assert_eq!(env.cond("TopologyReady")["status"], "True");
    assert_eq!(env.cond("GatewayAvailable")["status"], "False");
    assert_eq!(env.cond("Reconciling")["status"], "True");
    assert_eq!(env.cond("Reconciling")["reason"], "RolloutInProgress");
    assert_eq!(env.cond("Stalled")["status"], "False");
    assert_eq!(env.cond("Ready")["status"], "False");
    for c in st["conditions"].as_array().expect("conds") {
        assert_eq!(
            c["observedGeneration"], 1,
            "per-condition observedGeneration"
        );
    }
    let stalled_time = env.cond("Stalled")["lastTransitionTime"].clone();

    // The Deployment controller reports the pods ready.
    env.deployment_available();
    let (r, calls) = env.reconcile().await;
    r.expect("reconcile");
    assert_eq!(
        writes(&calls),
        vec![format!("PATCH {GW}/status"), format!("POST {EVENTS}")]
    );
    let event = calls
        .iter()
        .find(|c| c.method == "POST")
        .and_then(|c| c.body.clone())
        .expect("event");
    assert_eq!(event["reason"], "Ready");
    assert_eq!(event["type"], "Normal");
    assert_eq!(env.cond("Ready")["status"], "True");
    assert_eq!(env.cond("Reconciling")["status"], "False");
    assert_eq!(env.status()["readyReplicas"], 2);
    assert_eq!(
        env.cond("Stalled")["lastTransitionTime"],
        stalled_time,
        "no flip, same time"
    );

    // Steady state: reads only, zero writes, zero events.
    for _ in 0..3 {
        let (r, calls) = env.reconcile().await;
        r.expect("reconcile");
        assert!(
            writes(&calls).is_empty(),
            "idle reconcile wrote: {:?}",
            writes(&calls)
        );
    }
    let rv = env.api.get(DEPLOY).expect("d")["metadata"]["resourceVersion"].clone();
    let (_, _) = env.reconcile().await;
    assert_eq!(
        env.api.get(DEPLOY).expect("d")["metadata"]["resourceVersion"],
        rv
    );
    let m = env.ctx.metrics.encode();
    assert!(m.contains("stompgw_reconcile_total{result=\"ok\"}"), "{m}");
    assert!(m.contains("stompgw_broker_ops_total"), "{m}");
    delete_exchange(&rabbit().await, &ex).await;
}

#[tokio::test]
async fn spec_change_applies_only_what_changed_and_bumps_observed_generation() {
    let ex = unique("change");
    let env = Env::new(gateway_json(&ex, json!({})));
    env.reconcile().await.0.expect("first");
    env.deployment_available();
    env.reconcile().await.0.expect("settle");
    env.edit_spec(|s| s["limits"] = json!({"maxFrameBytes": 65536}));
    let (r, calls) = env.reconcile().await;
    r.expect("reconcile");
    assert_eq!(
        writes(&calls),
        vec![
            format!("PATCH {CM}"),
            format!("PATCH {DEPLOY}"),
            format!("PATCH {GW}/status")
        ],
        "Service and PDB unchanged, so not applied"
    );
    let cm = env.api.get(CM).expect("cm");
    assert!(
        cm["data"]["gateway.yaml"]
            .as_str()
            .expect("cfg")
            .contains("max-frame-bytes: 65536")
    );
    assert_eq!(env.status()["observedGeneration"], 2);
    assert_eq!(env.cond("Ready")["observedGeneration"], 2);
    delete_exchange(&rabbit().await, &ex).await;
}

#[tokio::test]
async fn secret_rotation_changes_the_pod_template_hash() {
    let ex = unique("rotate");
    let env = Env::new(gateway_json(&ex, json!({})));
    env.reconcile().await.0.expect("first");
    let hash = |env: &Env| {
        env.api.get(DEPLOY).expect("d")["spec"]["template"]["metadata"]["annotations"]["stompgate.io/config-hash"].clone()
    };
    let before = hash(&env);
    // A new password must still log in for the test to pass, so rotate another key.
    env.api
        .edit(SECRET, |s| s["data"]["rotated-at"] = json!("MjAyNg=="));
    let (r, calls) = env.reconcile().await;
    r.expect("reconcile");
    assert!(writes(&calls).contains(&format!("PATCH {DEPLOY}")));
    assert_ne!(hash(&env), before, "rotation rolls the pods");
    delete_exchange(&rabbit().await, &ex).await;
}

#[tokio::test]
async fn missing_secret_is_a_clear_condition_with_backoff_not_a_hot_loop() {
    let ex = unique("nosecret");
    let env = Env::new(gateway_json(&ex, json!({})));
    env.api.remove(SECRET);
    let (r, calls) = env.reconcile().await;
    let err = r.expect_err("retryable error");
    assert_eq!(err.reason(), "SecretNotFound");
    assert_eq!(
        writes(&calls),
        vec![format!("PATCH {GW}/status"), format!("POST {EVENTS}")]
    );
    let c = env.cond("BrokerConnected");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "SecretNotFound");
    assert!(
        c["message"]
            .as_str()
            .expect("msg")
            .contains("Secret ns1/rmq-creds"),
        "{c}"
    );
    assert_eq!(env.cond("Ready")["reason"], "SecretNotFound");
    assert_eq!(env.cond("Reconciling")["status"], "True");
    assert_eq!(
        env.cond("Stalled")["status"],
        "False",
        "retryable, not stalled"
    );
    assert!(
        env.api.get(DEPLOY).is_none(),
        "nothing applied without the Secret"
    );
    // Retrying with nothing changed writes nothing; the error policy backs off.
    let (r, calls) = env.reconcile().await;
    assert!(r.is_err());
    assert!(writes(&calls).is_empty(), "{:?}", writes(&calls));
    let gw = env.gw();
    let a1 = controller::error_policy(gw.clone(), &err, env.ctx.clone());
    let a2 = controller::error_policy(gw.clone(), &err, env.ctx.clone());
    let a3 = controller::error_policy(gw, &err, env.ctx.clone());
    let secs = |a: &kube::runtime::controller::Action| format!("{a:?}");
    assert_ne!(secs(&a1), secs(&a3), "backoff grows");
    let _ = a2;
    assert!(
        env.ctx
            .metrics
            .encode()
            .contains("reason=\"SecretNotFound\"")
    );
    // The Secret appears: the next reconcile recovers.
    env.api.put(SECRET, secret_json());
    env.reconcile().await.0.expect("recovered");
    assert_eq!(env.cond("BrokerConnected")["status"], "True");
    delete_exchange(&rabbit().await, &ex).await;
}

#[tokio::test]
async fn broker_down_reports_broker_unreachable_and_still_applies_children() {
    let env = Env::new(gateway_json(
        &unique("down"),
        json!({"spec": {"rabbitmq": {"host": "127.0.0.1", "port": 1}}}),
    ));
    let (r, calls) = env.reconcile().await;
    assert_eq!(r.expect_err("retry").reason(), "BrokerUnreachable");
    assert!(
        writes(&calls).contains(&format!("PATCH {DEPLOY}")),
        "the gateway does not wait for the broker"
    );
    let c = env.cond("BrokerConnected");
    assert_eq!(c["reason"], "BrokerUnreachable");
    assert!(
        !c["message"].as_str().expect("m").contains("guest"),
        "no credentials: {c}"
    );
    assert_eq!(env.cond("TopologyReady")["status"], "False");
    assert_eq!(env.cond("Ready")["reason"], "BrokerUnreachable");
    let ev = calls
        .iter()
        .find(|c| c.method == "POST")
        .and_then(|c| c.body.clone())
        .expect("warning event");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "BrokerUnreachable");
}

#[tokio::test]
async fn exchange_conflict_stalls_with_the_broker_text_and_no_retry_storm() {
    let ex = unique("conflict");
    let c = rabbit().await;
    let ch = c.create_channel().await.expect("ch");
    let o = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        ex.as_str().into(),
        ExchangeKind::Direct,
        o,
        FieldTable::default(),
    )
    .await
    .expect("pre-declare");
    let env = Env::new(gateway_json(&ex, json!({})));
    let (r, calls) = env.reconcile().await;
    let action = r.expect("conflict is not a retryable error");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(300))
    );
    let stalled = env.cond("Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "ExchangeConflict");
    assert_eq!(
        stalled["message"],
        format!(
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{ex}' in vhost '/': received 'topic' but current is 'direct'"
        )
    );
    assert_eq!(env.cond("TopologyReady")["reason"], "ExchangeConflict");
    assert_eq!(
        env.cond("Reconciling")["status"],
        "False",
        "kstatus: stalled, not reconciling"
    );
    assert_eq!(
        env.status()["topology"]["exchanges"][0]["state"],
        "Conflict"
    );
    let ev = calls
        .iter()
        .find(|c| c.method == "POST")
        .and_then(|c| c.body.clone())
        .expect("event");
    assert_eq!(ev["reason"], "ExchangeConflict");
    assert_eq!(ev["type"], "Warning");
    // Same conflict again: no status write, no event.
    let (_, calls) = env.reconcile().await;
    assert!(writes(&calls).is_empty(), "{:?}", writes(&calls));
    assert!(
        env.ctx
            .metrics
            .encode()
            .contains("stompgw_broker_conflicts_total 2")
    );
    // Adopt resolves it.
    env.edit_spec(|s| s["topology"]["onConflict"] = json!("Adopt"));
    env.reconcile().await.0.expect("adopt");
    assert_eq!(env.cond("Stalled")["status"], "False");
    assert_eq!(env.status()["topology"]["exchanges"][0]["state"], "Adopted");
    delete_exchange(&c, &ex).await;
}

#[tokio::test]
async fn invalid_spec_stalls_without_applying_anything() {
    let env = Env::new(gateway_json(
        &unique("bad"),
        json!({"spec": {"topology": {"exchanges": [{"name": "e", "type": "error"}]}}}),
    ));
    let (r, calls) = env.reconcile().await;
    r.expect("not retried");
    assert_eq!(
        writes(&calls),
        vec![format!("PATCH {GW}/status"), format!("POST {EVENTS}")]
    );
    let s = env.cond("Stalled");
    assert_eq!(s["reason"], "InvalidSpec");
    assert!(
        s["message"]
            .as_str()
            .expect("m")
            .contains("spec.topology.exchanges[0].type"),
        "{s}"
    );
}

#[tokio::test]
async fn paused_refreshes_status_but_changes_nothing() {
    let env = Env::new(gateway_json(
        &unique("paused"),
        json!({"spec": {"paused": true}}),
    ));
    let (r, calls) = env.reconcile().await;
    r.expect("ok");
    assert_eq!(writes(&calls), vec![format!("PATCH {GW}/status")]);
    assert_eq!(env.cond("Paused")["status"], "True");
    assert!(env.api.get(DEPLOY).is_none());
}

#[tokio::test]
async fn deletion_with_retain_policy_needs_no_finalizer() {
    let ex = unique("retain");
    let env = Env::new(gateway_json(&ex, json!({})));
    env.reconcile().await.0.expect("create");
    assert!(
        env.api.get(GW).expect("gw")["metadata"]["finalizers"].is_null(),
        "no finalizer for Retain"
    );
    env.api.edit(GW, |g| {
        g["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z")
    });
    let (r, calls) = env.reconcile().await;
    r.expect("ok");
    // Someone else changed the object since the operator's last write: it is read afresh
    // (see Context::fresh), and nothing is written.
    assert!(writes(&calls).is_empty(), "{calls:?}");
    let c = rabbit().await;
    assert!(
        exchange_exists(&c, &ex).await,
        "Retain keeps broker objects"
    );
    delete_exchange(&c, &ex).await;
}

#[tokio::test]
async fn deletion_with_delete_policy_removes_owned_exchange_then_finalizer() {
    let ex = unique("delete");
    let env = Env::new(gateway_json(
        &ex,
        json!({"spec": {"topology": {"deletionPolicy": "Delete"}}}),
    ));
    let (r, calls) = env.reconcile().await;
    r.expect("create");
    assert_eq!(writes(&calls)[0], format!("PATCH {GW}"), "finalizer first");
    assert_eq!(
        env.api.get(GW).expect("gw")["metadata"]["finalizers"],
        json!([FINALIZER])
    );
    let c = rabbit().await;
    assert!(exchange_exists(&c, &ex).await);
    env.api.edit(GW, |g| {
        g["metadata"]["deletionTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now().to_string())
    });
    let (r, calls) = env.reconcile().await;
    r.expect("cleanup");
    assert!(!exchange_exists(&c, &ex).await, "owned exchange deleted");
    assert!(env.api.get(GW).is_none(), "finalizer removed, object gone");
    let ev = calls
        .iter()
        .find(|c| c.method == "POST")
        .and_then(|c| c.body.clone())
        .expect("event");
    assert_eq!(ev["reason"], "CleanedUp");
}

#[tokio::test]
async fn an_exchange_created_just_before_a_crash_stays_owned() {
    // Found by the end-to-end test: an operator killed after declaring an exchange and before
    // writing the status forgot it had created it, so `deletionPolicy: Delete` leaked it. The
    // exchange is now recorded (owned, Pending) before it is declared.
    let ex = unique("crash");
    let env = Env::new(gateway_json(
        &ex,
        json!({"spec": {"topology": {"deletionPolicy": "Delete"}}}),
    ));
    env.reconcile().await.0.expect("create");
    // What a crash right after the declare leaves: the write-ahead ledger only.
    env.api.edit(GW, |g| {
        g["status"] = json!({"topology": {"exchanges": [{"name": ex.as_str(), "state": "Pending", "owned": true}], "bindings": []}});
    });
    let c = rabbit().await;
    assert!(exchange_exists(&c, &ex).await);
    let (r, calls) = env.reconcile().await;
    r.expect("restart reconcile");
    assert_eq!(env.status()["topology"]["exchanges"][0]["owned"], true);
    assert_eq!(
        env.status()["topology"]["exchanges"][0]["state"],
        "Declared"
    );
    assert!(
        !calls.iter().any(|c| c.method == "POST"),
        "a write-ahead entry is not a drift (no Recreated event)"
    );
    env.api.edit(GW, |g| {
        g["metadata"]["deletionTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now().to_string())
    });
    env.reconcile().await.0.expect("cleanup");
    assert!(!exchange_exists(&c, &ex).await, "owned exchange deleted");
}

#[tokio::test]
async fn deletion_cleanup_gives_up_instead_of_wedging() {
    // The Secret is gone (e.g. the namespace is being deleted) but this operator read it
    // before: it cleans up with the credentials it last read.
    let ex = unique("wedge");
    let env = Env::new(gateway_json(
        &ex,
        json!({"spec": {"topology": {"deletionPolicy": "Delete"}}}),
    ));
    env.reconcile().await.0.expect("create");
    env.api.remove(SECRET);
    env.api.edit(GW, |g| {
        g["metadata"]["deletionTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now().to_string())
    });
    let (r, calls) = env.reconcile().await;
    r.expect("cleaned up");
    assert!(env.api.get(GW).is_none());
    let ev = calls
        .iter()
        .find(|c| c.method == "POST")
        .and_then(|c| c.body.clone())
        .expect("event");
    assert_eq!(ev["reason"], "CleanedUp");
    let c = rabbit().await;
    assert!(!exchange_exists(&c, &ex).await, "removed");

    // Same, but the operator never read the Secret (restarted meanwhile): skip at once with a
    // Warning.
    let ex = unique("wedge1");
    let env = Env::new(gateway_json(
        &ex,
        json!({"spec": {"topology": {"deletionPolicy": "Delete"}}}),
    ));
    env.reconcile().await.0.expect("create");
    let state = env.api.get(GW).expect("gw");
    let env = Env::new(state);
    env.api.remove(SECRET);
    env.api.edit(GW, |g| {
        g["metadata"]["deletionTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now().to_string())
    });
    let (r, calls) = env.reconcile().await;
    r.expect("gave up");
    assert!(env.api.get(GW).is_none());
    let ev = calls
        .iter()
        .find(|c| c.method == "POST")
        .and_then(|c| c.body.clone())
        .expect("event");
    assert_eq!(ev["reason"], "CleanupSkipped");
    assert_eq!(ev["type"], "Warning");
    assert!(
        exchange_exists(&c, &ex).await,
        "left in RabbitMQ, as the event says"
    );
    delete_exchange(&c, &ex).await;

    // The broker is down: retry with backoff until the timeout, then give up.
    let env = Env::new(gateway_json(
        &unique("wedge2"),
        json!({"spec": {"topology": {"deletionPolicy": "Delete"}}}),
    ));
    env.api.edit(GW, |g| {
        g["metadata"]["finalizers"] = json!([FINALIZER]);
        g["spec"]["rabbitmq"]["port"] = json!(1);
        g["status"] = json!({"topology": {"exchanges": [{"name": "x", "state": "Declared", "owned": true}], "bindings": []}});
        g["metadata"]["deletionTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
    });
    let (r, _) = env.reconcile().await;
    assert_eq!(
        r.expect_err("retry within the timeout").reason(),
        "BrokerUnreachable"
    );
    assert!(env.api.get(GW).is_some());
    env.api.edit(GW, |g| {
        g["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z")
    });
    let (r, calls) = env.reconcile().await;
    r.expect("timed out: gave up");
    assert!(
        env.api.get(GW).is_none(),
        "finalizer removed after the timeout"
    );
    assert!(calls.iter().any(|c| {
        c.method == "POST"
            && c.body
                .as_ref()
                .is_some_and(|b| b["reason"] == "CleanupSkipped")
    }));
}

#[tokio::test]
async fn switching_to_retain_drops_the_finalizer() {
    let ex = unique("switch");
    let env = Env::new(gateway_json(
        &ex,
        json!({"spec": {"topology": {"deletionPolicy": "Delete"}}}),
    ));
    env.reconcile().await.0.expect("create");
    env.edit_spec(|s| s["topology"]["deletionPolicy"] = json!("Retain"));
    env.reconcile().await.0.expect("retain");
    let fins = env.api.get(GW).expect("gw")["metadata"]["finalizers"].clone();
    assert!(fins.as_array().is_none_or(|f| f.is_empty()), "{fins}");
    delete_exchange(&rabbit().await, &ex).await;
}

#[tokio::test]
async fn drift_is_repaired_on_the_next_reconcile_with_an_event() {
    let ex = unique("drift");
    let env = Env::new(gateway_json(&ex, json!({})));
    env.reconcile().await.0.expect("create");
    let c = rabbit().await;
    delete_exchange(&c, &ex).await;
    let (r, calls) = env.reconcile().await;
    r.expect("repair");
    assert!(exchange_exists(&c, &ex).await);
    assert!(
        calls
            .iter()
            .any(|c| c.method == "POST"
                && c.body.as_ref().is_some_and(|b| b["reason"] == "Recreated"))
    );
    delete_exchange(&c, &ex).await;
}

#[test]
fn backoff_is_exponential_with_jitter_and_capped() {
    for attempt in 1..=20 {
        let d = backoff_delay(attempt).as_secs_f64();
        let base = 2f64.powi(attempt as i32 - 1).min(300.0);
        assert!(
            d >= (base * 0.5).max(0.5) - 1e-9 && d <= base + 1e-9,
            "attempt {attempt}: {d}"
        );
    }
    assert!(backoff_delay(30) <= Duration::from_secs(300));
}

/// The delay of `Action::requeue` (kube keeps the field private; its Debug shows it).
fn requeue_secs(a: &kube::runtime::controller::Action) -> f64 {
    let s = format!("{a:?}");
    let d = s
        .split("Some(")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no requeue in {s}"));
    let (num, unit) = d
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| d.split_at(i))
        .unwrap_or_else(|| panic!("{d}"));
    let v: f64 = num.parse().unwrap_or_else(|_| panic!("{d}"));
    v * match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" => 1e-6,
        "ns" => 1e-9,
        u => panic!("unit {u} in {d}"),
    }
}

#[tokio::test]
async fn deletion_retries_never_wait_past_the_cleanup_deadline() {
    let env = Env::new(gateway_json(
        &unique("deadline"),
        json!({"spec": {"topology": {"deletionPolicy": "Delete"}}}),
    ));
    let err = || Error::Retry {
        reason: stompgate::operator::status::Reason::BrokerUnreachable,
        message: "down".into(),
    };
    // Not being deleted: plain exponential backoff, up to 5 minutes.
    let mut last = 0.0;
    for _ in 0..12 {
        last = requeue_secs(&controller::error_policy(env.gw(), &err(), env.ctx.clone()));
    }
    assert!(last >= 150.0, "{last}");
    // Deleted 290 s ago with the default 300 s bound: the next try is at the deadline, not
    // minutes after it.
    env.api.edit(GW, |g| {
        let t =
            k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(290);
        g["metadata"]["deletionTimestamp"] = json!(t.to_string());
    });
    let d = requeue_secs(&controller::error_policy(env.gw(), &err(), env.ctx.clone()));
    assert!((8.5..=10.2).contains(&d), "{d}");
}

#[tokio::test]
async fn a_failing_apply_is_reported_and_retried() {
    let ex = unique("applyfail");
    let env = Env::new(gateway_json(&ex, json!({})));
    env.api.fail_next("PATCH", DEPLOY, 500);
    let (r, calls) = env.reconcile().await;
    assert_eq!(r.expect_err("retry").reason(), "KubeApi");
    assert!(writes(&calls).contains(&format!("PATCH {GW}/status")));
    assert_eq!(env.cond("Ready")["reason"], "ApplyFailed");
    assert_eq!(env.cond("Reconciling")["status"], "True");
    // A sentence a person reads: the HTTP status and the server's message, no debug dump.
    assert_eq!(
        env.cond("Reconciling")["message"],
        "applying the gateway objects failed: HTTP 500 Internal Server Error: injected failure"
    );
    env.reconcile().await.0.expect("recovers");
    assert!(env.api.get(DEPLOY).is_some());
    delete_exchange(&rabbit().await, &ex).await;
}

#[tokio::test]
async fn an_unreadable_object_is_stalled_not_a_dead_watch() {
    let env = Env::new(json!({
        "apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
        "metadata": {"name": "gw", "namespace": NS, "uid": "u", "generation": 4},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 3,
                   "topology": {"exchanges": [{"name": "x", "state": "Declared", "owned": true}],
                                "bindings": []}}
    }));
    let guarded: controller::Guarded =
        serde_json::from_value(env.api.get(GW).expect("gw")).expect("the guard always reads");
    assert!(guarded.0.is_err());
    env.api.take_calls();
    let action = controller::reconcile_guarded(Arc::new(guarded), env.ctx.clone())
        .await
        .expect("handled");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert_eq!(
        writes(&env.api.take_calls()),
        vec![format!("PATCH {GW}/status")]
    );
    let s = env.cond("Stalled");
    assert_eq!(s["reason"], "InvalidSpec");
    assert!(
        s["message"].as_str().expect("m").contains("rabbitmq"),
        "{s}"
    );
    assert_eq!(env.status()["observedGeneration"], 4);
    // The rest of the status stays: an apply without the ownership ledger would remove it,
    // and a later deletion could no longer clean up what the operator created.
    assert_eq!(
        env.status()["topology"]["exchanges"][0]["name"],
        "x",
        "{:#}",
        env.status()
    );
}

#[tokio::test]
async fn a_hand_edited_child_is_put_back() {
    let ex = unique("handedit");
    let env = Env::new(gateway_json(&ex, json!({})));
    env.reconcile().await.0.expect("create");
    env.api.edit(DEPLOY, |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:latest")
    });
    // Server-added fields alone are no drift.
    env.api
        .edit(SVC, |s| s["spec"]["clusterIP"] = json!("10.0.0.7"));
    let (r, calls) = env.reconcile().await;
    r.expect("repair");
    assert_eq!(writes(&calls), vec![format!("PATCH {DEPLOY}")]);
    assert_eq!(
        env.api.get(DEPLOY).expect("d")["spec"]["template"]["spec"]["containers"][0]["image"],
        "img:test"
    );
    delete_exchange(&rabbit().await, &ex).await;
}
