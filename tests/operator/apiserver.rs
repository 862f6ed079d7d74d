//! The operator against the real API server's behaviour (issue 17): the controller runs
//! in-process against the in-memory API server (tests/kube-emulator), which behaves as
//! kube-apiserver does where the operator once went wrong on a real cluster (managedFields per
//! manager and operation, the Deployment controller's status, terminating namespaces, field
//! managers), and the real RabbitMQ.

use crate::proxy;
use crate::support;

use std::time::Duration;

use serde_json::{Value, json};
use support::operator::cluster::{
    Op, cond, cond_is, deployment_path, gw_path, observed_current, routes,
};
use support::operator::kstatus::{KStatus, compute};
use support::rabbit::{
    broker_addr, declare_queue, delete_exchange, delete_queue, exchange_exists, rabbit,
};
use support::{unique, wait_for};

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
    let q = unique("q");
    declare_queue(&rmq, &q).await;
    let (keep, drop) = (unique("keep"), unique("drop"));
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

/// The StompGateway and its Deployment read together once `ready` holds for them.
async fn both(
    op: &Op,
    ns: &str,
    what: &str,
    ready: impl Fn(&Value, &Value) -> bool,
) -> (Value, Value) {
    wait_for(what, 30, || {
        let g = op.gw(ns, "gw")?;
        let d = op.emu.get(&deployment_path(ns, "gw"))?;
        ready(&g, &d).then_some((g, d))
    })
    .await
}

/// Whether the StompGateway's status was computed from this Deployment status (replicas and
/// ready counts copied from it, generation observed).
fn reflects(g: &Value, d: &Value) -> bool {
    observed_current(g)
        && g["status"]["replicas"] == d["status"]["replicas"].as_i64().unwrap_or(0)
        && g["status"]["readyReplicas"] == d["status"]["readyReplicas"].as_i64().unwrap_or(0)
}

/// Finding 2: the conditions follow kstatus over a whole rollout lifecycle on the emulator,
/// whose Deployment controller moves the Deployment's status as the real one does (pods
/// created at once, ready only when a kubelet says so, Progressing False after the deadline).
/// The StompGateway is never Current before its Deployment is, and Failed (Stalled) when the
/// Deployment stops progressing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kstatus_follows_the_rollout_create_scale_image_deadline_recovery() {
    let op = Op::start(Duration::from_secs(30)).await;
    let ns = "rollout";
    op.namespace(ns);
    op.guest_secret(ns);
    op.gateway_with(
        ns,
        "gw",
        broker_addr().port(),
        json!({}),
        json!({"replicas": 2}),
    );
    let deploy = deployment_path(ns, "gw");

    op.step("created: pods exist, none ready");
    let (g, d) = both(
        &op,
        ns,
        "the Deployment's first status reflected",
        |g, d| reflects(g, d) && d["status"]["updatedReplicas"] == 2,
    )
    .await;
    assert_eq!(compute(&d).name(), "InProgress", "{:#}", d["status"]);
    let k = compute(&g);
    assert_eq!(k.name(), "InProgress", "{:#}", g["status"]);
    let reconciling = cond(&g, "Reconciling").expect("Reconciling");
    assert_eq!(reconciling.1, "RolloutInProgress");
    assert!(reconciling.2.contains("Deployment gw"), "{}", reconciling.2);
    assert!(cond_is(&g, "Ready", "False"));
    assert!(cond_is(&g, "Stalled", "False"));

    op.step("a kubelet reports the pods ready");
    let (g, d) = both(&op, ns, "Current", |g, d| {
        op.pods_ready(ns, "gw");
        reflects(g, d) && compute(g) == KStatus::Current
    })
    .await;
    assert_eq!(compute(&d), KStatus::Current, "{:#}", d["status"]);
    assert!(cond_is(&g, "Ready", "True"), "{:#}", g["status"]);
    assert_eq!(g["status"]["readyReplicas"], 2);

    op.step("scale up to 3");
    op.merge_patch(&gw_path(ns, "gw"), json!({"spec": {"replicas": 3}}));
    let (g, d) = both(&op, ns, "the scale-up reflected", |g, d| {
        reflects(g, d) && d["status"]["replicas"] == 3
    })
    .await;
    assert_eq!(compute(&d).name(), "InProgress", "{:#}", d["status"]);
    assert_eq!(compute(&g).name(), "InProgress", "{:#}", g["status"]);
    assert!(cond_is(&g, "Ready", "False"));
    let (g, _) = both(&op, ns, "Current after the scale-up", |g, d| {
        op.pods_ready(ns, "gw");
        reflects(g, d) && compute(g) == KStatus::Current
    })
    .await;
    assert_eq!(g["status"]["readyReplicas"], 3);

    op.step("new image whose pods never get ready");
    // A short progress deadline, set by hand (the operator does not own the field).
    op.merge_patch(&deploy, json!({"spec": {"progressDeadlineSeconds": 3}}));
    op.merge_patch(
        &gw_path(ns, "gw"),
        json!({"spec": {"image": "stompgate/stompgate:broken"}}),
    );
    let (g, d) = both(&op, ns, "the rollout started", |g, d| {
        reflects(g, d) && d["status"]["updatedReplicas"] == 1
    })
    .await;
    // Until the deadline passes (the Deployment is read after the StompGateway: if it has not
    // timed out then, it had not when the operator wrote this status either).
    if compute(&d).name() == "InProgress" {
        assert_eq!(compute(&g).name(), "InProgress", "{:#}", g["status"]);
    }
    let (g, d) = both(&op, ns, "Failed: the progress deadline passed", |g, d| {
        reflects(g, d) && compute(g).name() == "Failed"
    })
    .await;
    assert_eq!(compute(&d).name(), "Failed", "{:#}", d["status"]);
    let stalled = cond(&g, "Stalled").expect("Stalled");
    assert_eq!(
        (stalled.0.as_str(), stalled.1.as_str()),
        ("True", "ProgressDeadlineExceeded")
    );
    assert!(
        stalled
            .2
            .contains("Deployment gw exceeded its progress deadline of 3s"),
        "{}",
        stalled.2
    );
    assert!(cond_is(&g, "Reconciling", "False"), "{:#}", g["status"]);
    assert_eq!(
        cond(&g, "Ready").map(|c| (c.0, c.1)),
        Some(("False".into(), "ProgressDeadlineExceeded".into()))
    );
    assert!(
        cond_is(&g, "GatewayAvailable", "True"),
        "the old pods still serve"
    );
    wait_for("a Warning ProgressDeadlineExceeded event", 10, || {
        op.events(ns, "gw")
            .into_iter()
            .find(|e| e.0 == "Warning" && e.1 == "ProgressDeadlineExceeded")
    })
    .await;

    op.step("the pods get ready after all: recovery");
    let (g, d) = both(&op, ns, "Current again", |g, d| {
        op.pods_ready(ns, "gw");
        reflects(g, d) && compute(g) == KStatus::Current
    })
    .await;
    assert_eq!(compute(&d), KStatus::Current);
    assert!(cond_is(&g, "Stalled", "False"));
    assert!(cond_is(&g, "Ready", "True"));
    assert_eq!(
        g["status"]["gatewayImage"], "stompgate/stompgate:broken",
        "the new image runs"
    );
}

/// Reconcile failures counted so far (each is a WARN `reconcile failed` in the log).
fn reconcile_errors(op: &Op) -> u64 {
    op.ctx
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("stompgw_reconcile_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Finding 5: while its namespace is being deleted, a StompGateway whose children the
/// namespace controller already removed is not "repaired": no create is attempted (each would
/// be a 403 `... is being terminated`), no failure is logged, and the deletion completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_terminating_namespace_is_left_alone() {
    let op = Op::start(Duration::from_secs(30)).await;
    let ns = "terminating";
    op.namespace(ns);
    op.guest_secret(ns);
    op.gateway(ns, "gw", broker_addr().port(), json!({}));
    op.deployment_available(ns, "gw").await;
    wait_for("Ready", 30, || {
        op.gw(ns, "gw").filter(|g| cond_is(g, "Ready", "True"))
    })
    .await;
    // The Ready event is sent just after the status write: let it land before the namespace
    // goes, or its create is (rightly) refused with 403 and counted below.
    wait_for("the Ready event", 30, || {
        op.events(ns, "gw")
            .iter()
            .any(|(_, reason, _)| reason == "Ready")
            .then_some(())
    })
    .await;
    let errors_before = reconcile_errors(&op);

    // The namespace controller deletes a namespace's content kind by kind: hold it between
    // the Deployments and the StompGateways.
    op.step("namespace deleted; its Deployment removed first");
    op.emu.set_controller("namespace-controller", false);
    op.delete(&format!("/api/v1/namespaces/{ns}"));
    let mark = op.emu.audit().len();
    op.delete(&deployment_path(ns, "gw"));
    let deployment = deployment_path(ns, "gw");
    let namespace = format!("/api/v1/namespaces/{ns}");
    // The operator reacts to the deletion: either it checks the namespace, or it tries to
    // put the Deployment back.
    wait_for("the operator's reaction to the deletion", 30, || {
        op.emu.audit()[mark..]
            .iter()
            .any(|a| {
                !a.method.starts_with("IN-PROCESS")
                    && ((a.method == "GET" && a.path == namespace)
                        || (a.method != "GET" && a.path == deployment))
            })
            .then_some(())
    })
    .await;
    // Whatever this reconcile still does, it does within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused: Vec<String> = op.emu.audit()[mark..]
        .iter()
        .filter(|a| !a.method.starts_with("IN-PROCESS") && a.code == 403)
        .map(|a| format!("{} {} -> 403", a.method, a.path))
        .collect();
    assert!(refused.is_empty(), "creates attempted: {refused:?}");
    assert!(op.emu.get(&deployment).is_none(), "not re-created");

    op.step("the namespace controller goes on");
    op.emu.set_controller("namespace-controller", true);
    wait_for("the namespace is gone", 30, || {
        op.emu.get(&namespace).is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = op.emu.audit()[mark..]
        .iter()
        .filter(|a| !a.method.starts_with("IN-PROCESS") && a.code == 403)
        .count();
    assert_eq!(refused, 0);
    assert_eq!(
        reconcile_errors(&op),
        errors_before,
        "no reconcile failed (no WARN) for an object being deleted or already gone"
    );
}

/// Finding 6: every write names its field manager. The API server records owners by manager
/// and derives one from the User-Agent when a write names none (`unknown` without either):
/// the finalizer patch, the Lease and the events must all be the operator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_write_names_its_field_manager() {
    let op = Op::start(Duration::from_secs(30)).await;
    let ns = "managers";
    op.namespace(ns);
    op.guest_secret(ns);
    let exchange = unique("managed");
    op.gateway(
        ns,
        "gw",
        broker_addr().port(),
        json!({"exchanges": [{"name": exchange, "type": "topic"}], "deletionPolicy": "Delete"}),
    );
    op.deployment_available(ns, "gw").await;
    let gw = wait_for("Ready with the cleanup finalizer", 30, || {
        op.gw(ns, "gw").filter(|g| {
            cond_is(g, "Ready", "True") && g["metadata"]["finalizers"].as_array().is_some()
        })
    })
    .await;
    wait_for("the Ready event", 10, || {
        op.events(ns, "gw").into_iter().find(|e| e.1 == "Ready")
    })
    .await;
    // Leader election writes the Lease.
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(op.ctx.client.clone(), ns);
    let settings = stompgate::operator::leader::LeaseSettings {
        name: "stompgate-operator".into(),
        identity: "op-1".into(),
        duration: Duration::from_secs(15),
        renew: Duration::from_secs(5),
    };
    assert!(
        stompgate::operator::leader::try_acquire(&leases, &settings)
            .await
            .expect("lease")
    );
    assert!(
        stompgate::operator::leader::try_acquire(&leases, &settings)
            .await
            .expect("renewal")
    );
    let mut owners: Vec<(String, String)> = Vec::new();
    let mut collect = |what: &str, obj: &Value| {
        for m in obj["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
        {
            owners.push((
                what.to_string(),
                m["manager"].as_str().unwrap_or("").to_string(),
            ));
        }
    };
    collect("StompGateway", &gw);
    for (what, path) in [
        (
            "Lease",
            format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/stompgate-operator"),
        ),
        (
            "ConfigMap",
            format!("/api/v1/namespaces/{ns}/configmaps/gw-config"),
        ),
        ("Service", format!("/api/v1/namespaces/{ns}/services/gw")),
        ("Deployment", deployment_path(ns, "gw")),
    ] {
        collect(what, &op.emu.get(&path).expect(what));
    }
    let (_, events) = op.emu.call(
        "GET",
        &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
        None,
    );
    for e in events["items"].as_array().into_iter().flatten() {
        collect("Event", e);
    }
    // Besides the operator: the test's own writes, the emulator's Deployment controller.
    let others = ["kube-emulator-handle", "kube-controller-manager"];
    let unnamed: Vec<&(String, String)> = owners
        .iter()
        .filter(|(_, m)| m != "stompgateway-operator" && !others.contains(&m.as_str()))
        .collect();
    assert!(
        unnamed.is_empty(),
        "writes without the operator's name: {unnamed:?}"
    );
    for what in ["StompGateway", "Lease", "Event", "Deployment"] {
        assert!(
            owners
                .iter()
                .any(|(w, m)| w == what && m == "stompgateway-operator"),
            "{what}: {owners:?}"
        );
    }
    let agents: Vec<String> = op
        .emu
        .audit()
        .iter()
        .filter(|a| !a.method.starts_with("IN-PROCESS"))
        .map(|a| a.user_agent.clone())
        .filter(|ua| !ua.starts_with("stompgateway-operator/"))
        .collect();
    assert!(
        agents.is_empty(),
        "requests without the operator's User-Agent: {agents:?}"
    );
    // The finalizer is removed by the operator too, and the deletion completes.
    op.delete(&gw_path(ns, "gw"));
    wait_for("deleted", 30, || op.gw(ns, "gw").is_none().then_some(())).await;
    assert!(!exchange_exists(&rabbit().await, &exchange).await);
}

/// Times (seconds since the Unix epoch) of the operator's reads of `ns`'s Secret `rmq-creds`
/// after audit entry `from`: one per reconcile.
fn reconcile_times(op: &Op, ns: &str, from: usize) -> Vec<f64> {
    let path = format!("/api/v1/namespaces/{ns}/secrets/rmq-creds");
    op.emu.audit()[from..]
        .iter()
        .filter(|a| a.method == "GET" && a.path == path)
        .filter_map(|a| a.time.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| t.as_duration().as_secs_f64())
        .collect()
}

/// Finding 7: the backoff holds from the first failure. The watch events of the operator's
/// own writes (here the status write that reports the failure) must not start the next
/// attempt at once: the first retries come after ~1 s, then ~2 s, not within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backoff_holds_from_the_first_failure() {
    let op = Op::start(Duration::from_secs(30)).await;
    let ns = "backoff";
    op.namespace(ns);
    op.guest_secret(ns);
    let proxy = proxy::Proxy::start(broker_addr()).await;
    op.gateway(ns, "gw", proxy.port(), json!({}));
    op.deployment_available(ns, "gw").await;
    wait_for("Ready", 30, || {
        op.gw(ns, "gw").filter(|g| cond_is(g, "Ready", "True"))
    })
    .await;

    op.step("broker down, then a spec change that leaves the children alone");
    proxy.stop();
    let mark = op.emu.audit().len();
    let exchange = unique("backoff");
    op.merge_patch(
        &gw_path(ns, "gw"),
        json!({"spec": {"topology": {"exchanges": [{"name": exchange, "type": "topic"}]}}}),
    );
    let times = wait_for("three attempts", 30, || {
        let t = reconcile_times(&op, ns, mark);
        (t.len() >= 3).then_some(t)
    })
    .await;
    let gw = op.gw(ns, "gw").expect("gw");
    assert!(
        cond_is(&gw, "BrokerConnected", "False"),
        "{:#}",
        gw["status"]
    );
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    op.step(&format!("gaps between the first attempts: {gaps:.2?} s"));
    // 1 s and 2 s, each with jitter down to half: at least 0.5 s and 1 s.
    assert!(
        gaps[0] >= 0.45 && gaps[1] >= 0.9,
        "the first retries came too soon: {gaps:.3?} s apart"
    );
    proxy.resume().await;
    wait_for("Ready again", 30, || {
        op.gw(ns, "gw").filter(|g| cond_is(g, "Ready", "True"))
    })
    .await;
    delete_exchange(&rabbit().await, &exchange).await;
}

/// Finding 8: broker answers that are ordinary states (a passive declare of an exchange that
/// does not exist yet answers NOT_FOUND; a bind to a queue that does not exist yet too) are
/// not logged as errors. The real operator binary, at its default log level, against the
/// emulator and RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expected_broker_answers_are_not_logged_as_errors() {
    let emu = std::sync::Arc::new(kube_emulator::Emulator::start().await.expect("emulator"));
    support::operator::cluster::install_crd(&emu).await;
    let dir = std::env::temp_dir().join(format!("stompgate-logs-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = dir.join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "rmq-creds", "labels": {"stompgate.io/watch": "true"}},
        "stringData": {"username": "guest", "password": "guest"}});
    assert_eq!(
        emu.call("POST", "/api/v1/namespaces/default/secrets", Some(&secret))
            .0,
        201
    );
    let exchange = unique("logs");
    let missing_queue = unique("no-such-queue");
    let gw = json!({"apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
        "metadata": {"name": "gw"},
        "spec": {"rabbitmq": {"host": "127.0.0.1", "port": broker_addr().port(),
                              "credentialsSecretRef": {"name": "rmq-creds"}},
                 "replicas": 1,
                 "topology": {"exchanges": [{"name": exchange, "type": "topic"}],
                              "bindings": [{"source": exchange, "destination": missing_queue,
                                            "destinationType": "queue", "routingKey": "k"}]}}});
    assert_eq!(
        emu.call(
            "POST",
            "/apis/stompgate.io/v1alpha1/namespaces/default/stompgateways",
            Some(&gw)
        )
        .0,
        201
    );
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log_path = dir.join("operator.log");
    let mut op = tokio::process::Command::new(env!("CARGO_BIN_EXE_stompgate"))
        .args([
            "operator",
            "--leader-elect",
            "false",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("operator starts");
    let path = gw_path("default", "gw");
    wait_for("BindingPending", 60, || {
        emu.get(&path)
            .filter(|g| cond(g, "TopologyReady").is_some_and(|c| c.1 == "BindingPending"))
    })
    .await;
    // A second attempt (after the backoff) meets the same answers.
    wait_for("a retry", 30, || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        (log.matches("binding pending, will retry").count() >= 2).then_some(())
    })
    .await;
    let _ = op.start_kill();
    let _ = op.wait().await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "error lines:\n{}", errors.join("\n"));
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("NOT_FOUND") && l.contains(&missing_queue)),
        "the operator says what happened, at its own level:\n{log}"
    );
    delete_exchange(&rabbit().await, &exchange).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rules of the operator's ClusterRole as shipped in deploy/ (rendered from the chart).
fn shipped_operator_rules() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/operator.yaml"))
            .expect("deploy/operator.yaml");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("yaml");
        if v["kind"] == "ClusterRole" && v["metadata"]["name"] == "stompgate" {
            return v["rules"].clone();
        }
    }
    panic!("no ClusterRole stompgate in deploy/operator.yaml");
}

/// Finding 3: with the `OwnerReferencesPermissionEnforcement` admission plugin (on in
/// OpenShift) and exactly the shipped RBAC, the operator creates its children and adopts a
/// Service that existed before: setting an ownerReference needs `delete` on the child (and
/// `update` on stompgateways/finalizers for blockOwnerDeletion).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adoption_works_under_owner_reference_permission_enforcement() {
    let emu = std::sync::Arc::new(kube_emulator::Emulator::start().await.expect("emulator"));
    emu.enforce_owner_references(shipped_operator_rules());
    let op = Op::start_on(emu, Duration::from_secs(30)).await;
    let ns = "ownerrefs";
    op.namespace(ns);
    op.guest_secret(ns);
    // Someone's Service of the same name, created before the StompGateway.
    op.create(
        &format!("/api/v1/namespaces/{ns}/services"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"},
               "spec": {"ports": [{"name": "ws", "port": 15674}]}}),
    );
    op.gateway(ns, "gw", broker_addr().port(), json!({}));
    op.deployment_available(ns, "gw").await;
    let gw = wait_for("Ready", 30, || {
        op.gw(ns, "gw").filter(|g| cond_is(g, "Ready", "True"))
    })
    .await;
    let svc = op
        .emu
        .get(&format!("/api/v1/namespaces/{ns}/services/gw"))
        .expect("service");
    assert_eq!(
        svc["metadata"]["ownerReferences"][0]["uid"], gw["metadata"]["uid"],
        "adopted: {:#}",
        svc["metadata"]
    );
    let refused: Vec<String> = op
        .emu
        .audit()
        .iter()
        .filter(|a| !a.method.starts_with("IN-PROCESS") && a.code == 403)
        .map(|a| format!("{} {}", a.method, a.path))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}

/// Finding 1, for objects written before the fix: an operator version that merge-patched the
/// write-ahead ledger left an Update entry owning ledger items. The operator folds that entry
/// into its apply first, so removing such an exchange later does not wedge the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ownership_left_by_an_older_version_is_repaired() {
    let op = Op::start(Duration::from_secs(30)).await;
    let ns = "legacy-owner";
    op.namespace(ns);
    op.guest_secret(ns);
    let (keep, legacy) = (unique("keep"), unique("legacy"));
    let exchange = |name: &str| json!({"name": name, "type": "topic"});
    op.gateway(
        ns,
        "gw",
        broker_addr().port(),
        json!({"exchanges": [exchange(&keep)], "deletionPolicy": "Delete"}),
    );
    wait_for("keep declared", 30, || {
        op.gw(ns, "gw")
            .filter(|g| observed_current(g) && ledger_names(g, "exchanges", "name").len() == 1)
    })
    .await;
    // What the older version did before declaring a new exchange: a merge patch of the ledger.
    let ledger = json!({"status": {"topology": {"bindings": [], "exchanges": [
        {"name": keep, "state": "Declared", "owned": true},
        {"name": legacy, "state": "Pending", "owned": true}]}}});
    let (code, body) = op.emu.call(
        "PATCH",
        &format!(
            "{}/status?fieldManager=stompgateway-operator",
            gw_path(ns, "gw")
        ),
        Some(&ledger),
    );
    assert_eq!(code, 200, "{body}");
    op.merge_patch(
        &gw_path(ns, "gw"),
        json!({"spec": {"topology": {"exchanges": [exchange(&keep), exchange(&legacy)]}}}),
    );
    wait_for("legacy declared", 30, || {
        op.gw(ns, "gw").filter(|g| {
            observed_current(g) && g["status"]["topology"]["exchanges"][1]["state"] == "Declared"
        })
    })
    .await;
    op.step("the exchange the older version recorded is removed from the spec");
    op.merge_patch(
        &gw_path(ns, "gw"),
        json!({"spec": {"topology": {"exchanges": [exchange(&keep)]}}}),
    );
    let gw = wait_for("the removal observed", 30, || {
        op.gw(ns, "gw").filter(|g| {
            observed_current(g) && ledger_names(g, "exchanges", "name") == [keep.as_str()]
        })
    })
    .await;
    let operations: Vec<&str> = gw["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["subresource"] == "status" && m["manager"] == "stompgateway-operator")
        .filter_map(|m| m["operation"].as_str())
        .collect();
    assert_eq!(operations, ["Apply"]);
    let rmq = rabbit().await;
    assert!(!exchange_exists(&rmq, &legacy).await, "owned: deleted");
    delete_exchange(&rmq, &keep).await;
}

/// Whether the ledger records `exchange` as owned.
fn owns(gw: &Value, exchange: &str) -> bool {
    gw.pointer("/status/topology/exchanges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|e| e["name"] == exchange && e["owned"] == true)
}

/// Issue 18, item 4: the controller's cache can lag behind the operator's own status writes (a
/// child's event starts the next reconcile before the StompGateway's status event arrives).
/// A reconcile handed such a stale copy - here, the object as first created, without the
/// status that records the exchange the operator created - must not record that exchange as
/// not owned (it would then be left behind on deletion).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_cached_copy_never_disowns_a_created_exchange() {
    let op = Op::start(Duration::from_secs(30)).await;
    let ns = "stale";
    op.namespace(ns);
    op.guest_secret(ns);
    let exchange = unique("stale");
    op.gateway(
        ns,
        "gw",
        broker_addr().port(),
        json!({"exchanges": [{"name": exchange, "type": "topic"}], "deletionPolicy": "Delete"}),
    );
    let created = wait_for("the exchange recorded as owned", 60, || {
        op.gw(ns, "gw").filter(|g| owns(g, &exchange))
    })
    .await;
    let mut stale = created.clone();
    stale.as_object_mut().expect("object").remove("status");
    stale["metadata"]["resourceVersion"] = json!("1");
    let stale: stompgate::crd::StompGateway = serde_json::from_value(stale).expect("typed");
    stompgate::operator::controller::reconcile(std::sync::Arc::new(stale), op.ctx.clone())
        .await
        .expect("reconcile of the stale copy");
    let after = op.gw(ns, "gw").expect("still there");
    assert!(
        owns(&after, &exchange),
        "disowned: {}",
        after["status"]["topology"]
    );

    op.delete(&gw_path(ns, "gw"));
    wait_for("the StompGateway gone", 60, || {
        op.gw(ns, "gw").is_none().then_some(())
    })
    .await;
    let c = rabbit().await;
    assert!(!exchange_exists(&c, &exchange).await, "{exchange} leaked");
}
