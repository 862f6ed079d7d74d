//! `spec.autoscaling` on the API emulator: the HorizontalPodAutoscaler is created, updated and
//! removed with its field; the Deployment's replica count is left to it (kept when autoscaling
//! is switched on, never reverted after the HPA changes it); its status reaches
//! `status.autoscaling` (the `-o wide` columns).

use std::sync::Arc;
use std::time::Duration;

use crate::support;
use kube_emulator::Emulator;
use serde_json::{Value, json};
use support::operator::cluster::{Op, observed_current};
use support::rabbit::broker_addr;
use support::wait_for;

const NS: &str = "scale";

fn hpa_path(name: &str) -> String {
    format!("/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/{name}")
}

fn deploy_path(name: &str) -> String {
    support::operator::cluster::deployment_path(NS, name)
}

fn replicas(op: &Op, name: &str) -> Option<i64> {
    op.emu.get(&deploy_path(name))?["spec"]["replicas"].as_i64()
}

fn owners_of_replicas(d: &Value) -> Vec<String> {
    d["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["fieldsV1"]["f:spec"].get("f:replicas").is_some())
        .filter_map(|e| e["manager"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hpa_owns_the_replica_count_and_goes_with_its_field() {
    let emu = Arc::new(Emulator::start().await.expect("emulator"));
    let op = Op::start_on(emu, Duration::from_secs(30)).await;
    op.namespace(NS);
    op.guest_secret(NS);
    op.gateway_with(
        NS,
        "push",
        broker_addr().port(),
        json!({}),
        json!({"replicas": 3}),
    );
    op.step("spec.replicas sets the Deployment's replicas");
    wait_for("3 replicas", 20, || {
        (replicas(&op, "push")? == 3).then_some(())
    })
    .await;

    op.step("switching to autoscaling keeps the count (no fall back to 1) and creates the HPA");
    op.merge_patch(
        &support::operator::cluster::gw_path(NS, "push"),
        json!({"spec": {"replicas": null, "autoscaling":
            {"minReplicas": 2, "maxReplicas": 6, "targetConnectionsPerPod": 500}}}),
    );
    let hpa = wait_for("HPA", 20, || op.emu.get(&hpa_path("push"))).await;
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "push"})
    );
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 6);
    assert_eq!(
        hpa["spec"]["metrics"],
        json!([{"type": "Pods", "pods": {"metric": {"name": "stompgate_connections"},
                 "target": {"type": "AverageValue", "averageValue": "500"}}}])
    );
    assert_eq!(
        hpa["metadata"]["ownerReferences"][0]["kind"],
        "StompGateway"
    );
    wait_for("status.autoscaling", 20, || {
        let gw = op.gw(NS, "push")?;
        (observed_current(&gw) && gw["status"]["autoscaling"]["name"] == "push").then_some(())
    })
    .await;
    let d = op.emu.get(&deploy_path("push")).expect("deployment");
    assert_eq!(d["spec"]["replicas"], 3, "the count was reset: {d}");
    let owners = owners_of_replicas(&d);
    assert!(
        !owners.iter().any(|m| m == "stompgateway-operator"),
        "the operator still owns replicas: {owners:?}"
    );

    op.step("the HPA scales the Deployment to 5; the operator does not revert it");
    let (code, body) = op.emu.call(
        "PATCH",
        &format!(
            "{}/scale?fieldManager=kube-controller-manager",
            deploy_path("push")
        ),
        Some(&json!({"spec": {"replicas": 5}})),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = op.emu.call(
        "PATCH",
        &format!("{}/status", hpa_path("push")),
        Some(&json!({"status": {"currentReplicas": 3, "desiredReplicas": 5,
            "currentMetrics": [{"type": "Pods", "pods": {"metric": {"name": "stompgate_connections"},
                                "current": {"averageValue": "812"}}}]}})),
    );
    assert_eq!(code, 200, "{body}");
    wait_for("status.autoscaling follows the HPA", 20, || {
        let gw = op.gw(NS, "push")?;
        (gw["status"]["autoscaling"]
            == json!({"name": "push", "currentReplicas": 3, "desiredReplicas": 5,
                      "currentConnectionsPerPod": "812"}))
        .then_some(())
    })
    .await;
    // A spec change that re-applies the Deployment (a new pod template) keeps the HPA's count.
    op.merge_patch(
        &support::operator::cluster::gw_path(NS, "push"),
        json!({"spec": {"drainTimeoutSeconds": 45}}),
    );
    wait_for("the new template is applied", 20, || {
        let d = op.emu.get(&deploy_path("push"))?;
        let gp = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64()?;
        (gp > 45).then_some(())
    })
    .await;
    wait_for("reconciled", 20, || {
        observed_current(&op.gw(NS, "push")?).then_some(())
    })
    .await;
    assert_eq!(replicas(&op, "push"), Some(5));

    op.step("a new target is applied to the HPA");
    op.merge_patch(
        &support::operator::cluster::gw_path(NS, "push"),
        json!({"spec": {"autoscaling": {"maxReplicas": 8, "targetConnectionsPerPod": null,
                                         "targetCPUUtilizationPercentage": 70}}}),
    );
    wait_for("HPA updated", 20, || {
        let h = op.emu.get(&hpa_path("push"))?;
        (h["spec"]["maxReplicas"] == 8
            && h["spec"]["metrics"]
                == json!([{"type": "Resource", "resource": {"name": "cpu",
                           "target": {"type": "Utilization", "averageUtilization": 70}}}]))
        .then_some(())
    })
    .await;
    assert_eq!(replicas(&op, "push"), Some(5));

    op.step("removing spec.autoscaling removes the HPA and status.autoscaling");
    op.merge_patch(
        &support::operator::cluster::gw_path(NS, "push"),
        json!({"spec": {"autoscaling": null}}),
    );
    wait_for("HPA gone", 20, || {
        op.emu.get(&hpa_path("push")).is_none().then_some(())
    })
    .await;
    wait_for("status.autoscaling gone", 20, || {
        let gw = op.gw(NS, "push")?;
        (observed_current(&gw) && gw["status"].get("autoscaling").is_none()).then_some(())
    })
    .await;
    assert_eq!(replicas(&op, "push"), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_server_refuses_min_above_max_and_replicas_with_autoscaling() {
    let emu = Arc::new(Emulator::start().await.expect("emulator"));
    let op = Op::start_on(emu, Duration::from_secs(30)).await;
    op.namespace(NS);
    let post = |name: &str, extra: Value| {
        let mut spec = json!({"rabbitmq": {"host": "127.0.0.1"}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        op.emu.call(
            "POST",
            &format!("/apis/stompgate.io/v1alpha1/namespaces/{NS}/stompgateways"),
            Some(
                &json!({"apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
                         "metadata": {"name": name}, "spec": spec}),
            ),
        )
    };
    let (code, body) = post(
        "a",
        json!({"autoscaling": {"minReplicas": 4, "maxReplicas": 2}}),
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("must not exceed"), "{body}");
    let (code, body) = post(
        "b",
        json!({"replicas": 2, "autoscaling": {"maxReplicas": 2}}),
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("exclude each other"), "{body}");
    let (code, body) = post("c", json!({"autoscaling": {"maxReplicas": 2}}));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["spec"]["autoscaling"]["minReplicas"], 1, "{body}");
}
