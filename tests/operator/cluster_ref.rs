//! `spec.rabbitmq.clusterRef` on the API emulator with the RabbitmqCluster CRD loaded
//! (`tests/support/operator/fixtures/rabbitmqcluster-crd.yaml`) and the real RabbitMQ behind
//! it: the fixture cluster's status names a default-user Secret pointing at 127.0.0.1 with
//! guest/guest. Every way the reference can be unusable is a `BrokerConnected=False` condition
//! that clears once it is fixed.

use std::sync::Arc;
use std::time::Duration;

use crate::support;
use kube_emulator::Emulator;
use serde_json::{Value, json};
use support::operator::cluster::{CRDS, Op, cond, observed_current};
use support::operator::fixture;
use support::rabbit::broker_addr;
use support::wait_for;

const NS: &str = "rmq";

async fn op() -> Op {
    let emu = Arc::new(Emulator::start().await.expect("emulator"));
    // Poll every second while the cluster is missing or not ready, so the tests need not wait.
    let op = Op::start_with(emu, Duration::from_secs(30), |s| {
        s.exposure_poll = Duration::from_secs(1)
    })
    .await;
    op.namespace(NS);
    op
}

fn install_crd(op: &Op) {
    let crd: Value =
        serde_yaml::from_str(&fixture("rabbitmqcluster-crd.yaml")).expect("fixture CRD");
    op.create(CRDS, crd);
}

fn cluster_path(name: &str) -> String {
    format!("/apis/rabbitmq.com/v1beta1/namespaces/{NS}/rabbitmqclusters/{name}")
}

fn create_cluster(op: &Op, name: &str, spec: Value) {
    op.create(
        &format!("/apis/rabbitmq.com/v1beta1/namespaces/{NS}/rabbitmqclusters"),
        json!({"apiVersion": "rabbitmq.com/v1beta1", "kind": "RabbitmqCluster",
               "metadata": {"name": name, "namespace": NS}, "spec": spec}),
    );
}

/// The status the Cluster Operator writes once the cluster serves.
fn set_ready(op: &Op, name: &str) {
    let status = json!({"status": {
        "conditions": [{"type": "AllReplicasReady", "status": "True"},
                       {"type": "ClusterAvailable", "status": "True"}],
        "binding": {"name": format!("{name}-default-user")},
        "defaultUser": {
            "secretReference": {"name": format!("{name}-default-user"), "namespace": NS,
                                "keys": {"username": "username", "password": "password"}},
            "serviceReference": {"name": name, "namespace": NS}}}});
    op.merge_patch(&format!("{}/status", cluster_path(name)), status);
}

fn default_user(op: &Op, name: &str, data: &[(&str, &str)]) {
    op.secret(NS, &format!("{name}-default-user"), data);
}

fn gateway(op: &Op, name: &str, cluster: Value) {
    let spec = json!({"rabbitmq": {"clusterRef": cluster}, "replicas": 1,
                      "auth": {"mode": "ServiceUser"},
                      "topology": {"exchanges": [{"name": format!("{name}-events"), "type": "topic",
                                                  "autoDelete": true}]}});
    op.create(
        &format!("/apis/stompgate.io/v1alpha1/namespaces/{NS}/stompgateways"),
        json!({"apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
               "metadata": {"name": name, "namespace": NS}, "spec": spec}),
    );
}

async fn wait_broker(op: &Op, name: &str, status: &str, reason: &str) -> String {
    wait_for(&format!("BrokerConnected={status} ({reason})"), 20, || {
        let gw = op.gw(NS, name)?;
        let (s, r, m) = cond(&gw, "BrokerConnected")?;
        (s == status && r == reason && observed_current(&gw)).then_some(m)
    })
    .await
}

fn port() -> String {
    broker_addr().port().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ready_cluster_gives_the_address_and_default_user() {
    let op = op().await;
    install_crd(&op);
    create_cluster(&op, "rabbit", json!({"replicas": 1}));
    set_ready(&op, "rabbit");
    default_user(
        &op,
        "rabbit",
        &[
            ("username", "guest"),
            ("password", "guest"),
            ("host", "127.0.0.1"),
            ("port", &port()),
        ],
    );
    gateway(&op, "push", json!({"name": "rabbit"}));
    let msg = wait_broker(&op, "push", "True", "Connected").await;
    assert!(msg.contains("logged in"), "{msg}");
    wait_for("TopologyReady", 20, || {
        let gw = op.gw(NS, "push")?;
        (cond(&gw, "TopologyReady")?.0 == "True").then_some(())
    })
    .await;
    op.step("the pods get the cluster's address and its default-user Secret");
    let cm = op
        .emu
        .get(&format!("/api/v1/namespaces/{NS}/configmaps/push-config"))
        .expect("config map");
    let config = cm["data"]["gateway.yaml"].as_str().unwrap_or_default();
    assert!(
        config.contains(&format!("amqp://127.0.0.1:{}/%2f", port())),
        "{config}"
    );
    let d = op
        .emu
        .get(&support::operator::cluster::deployment_path(NS, "push"))
        .expect("deployment");
    let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
    let user = env
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "STOMPGATE_AMQP_USERNAME")
        .expect("username env");
    assert_eq!(
        user["valueFrom"]["secretKeyRef"],
        json!({"name": "rabbit-default-user", "key": "username", "optional": false})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unusable_cluster_ref_is_a_condition_until_it_is_fixed() {
    let op = op().await;
    gateway(&op, "push", json!({"name": "rabbit"}));
    op.step("the RabbitmqCluster kind is not served");
    let msg = wait_broker(&op, "push", "False", "RabbitmqClusterNotFound").await;
    assert!(msg.contains("does not serve"), "{msg}");
    assert!(msg.contains("RabbitMQ Cluster Operator"), "{msg}");
    let gw = op.gw(NS, "push").expect("gw");
    assert_eq!(cond(&gw, "Ready").expect("Ready").0, "False");

    op.step("served, but no such cluster");
    install_crd(&op);
    let msg = wait_for("not found", 20, || {
        let gw = op.gw(NS, "push")?;
        let (_, r, m) = cond(&gw, "BrokerConnected")?;
        (r == "RabbitmqClusterNotFound" && m.contains("not found")).then_some(m)
    })
    .await;
    assert!(msg.contains("RabbitmqCluster rmq/rabbit"), "{msg}");

    op.step("the cluster exists but is not ready");
    create_cluster(&op, "rabbit", json!({}));
    let msg = wait_broker(&op, "push", "False", "RabbitmqClusterNotReady").await;
    assert!(msg.contains("ClusterAvailable"), "{msg}");

    op.step("ready, but its default-user Secret is missing");
    set_ready(&op, "rabbit");
    let msg = wait_broker(&op, "push", "False", "SecretNotFound").await;
    assert!(msg.contains("rabbit-default-user"), "{msg}");

    op.step("the Secret lacks the password");
    default_user(
        &op,
        "rabbit",
        &[
            ("username", "guest"),
            ("host", "127.0.0.1"),
            ("port", &port()),
        ],
    );
    let msg = wait_broker(&op, "push", "False", "SecretKeyMissing").await;
    assert!(msg.contains("\"password\""), "{msg}");
    // Nothing was rolled out with a broker the operator could not resolve.
    assert!(
        op.emu
            .get(&support::operator::cluster::deployment_path(NS, "push"))
            .is_none()
    );

    op.step("fixed: connected");
    op.merge_patch(
        &format!("/api/v1/namespaces/{NS}/secrets/rabbit-default-user"),
        json!({"stringData": {"password": "guest"}}),
    );
    wait_broker(&op, "push", "True", "Connected").await;

    op.step("a cluster in another namespace is refused with the reason");
    gateway(
        &op,
        "far",
        json!({"name": "rabbit", "namespace": "elsewhere"}),
    );
    let msg = wait_broker(&op, "far", "False", "InvalidSpec").await;
    assert!(msg.contains("not the StompGateway's namespace"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_server_refuses_a_cluster_ref_with_a_host_or_credentials() {
    let op = op().await;
    for (name, rabbitmq) in [
        (
            "host",
            json!({"clusterRef": {"name": "r"}, "host": "rabbitmq"}),
        ),
        (
            "creds",
            json!({"clusterRef": {"name": "r"}, "credentialsSecretRef": {"name": "c"}}),
        ),
        (
            "tls",
            json!({"clusterRef": {"name": "r"}, "tls": {"enabled": true}}),
        ),
    ] {
        let (code, body) = op.emu.call(
            "POST",
            &format!("/apis/stompgate.io/v1alpha1/namespaces/{NS}/stompgateways"),
            Some(
                &json!({"apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
                         "metadata": {"name": name}, "spec": {"rabbitmq": rabbitmq}}),
            ),
        );
        assert_eq!(code, 422, "{name}: {body}");
        assert!(
            body.to_string().contains("clusterRef takes the address"),
            "{name}: {body}"
        );
    }
}
