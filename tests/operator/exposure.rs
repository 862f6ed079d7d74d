//! Reaching and securing a gateway from the StompGateway, on the API emulator: the Ingress,
//! HTTPRoute, NetworkPolicy and cert-manager Certificate are created, updated and removed with
//! their fields; kinds the cluster does not serve and missing IngressClasses are conditions
//! that clear by themselves when the CRD or class appears; bad listener Secrets are conditions
//! and never reach the pods.

use std::sync::Arc;
use std::time::Duration;

use crate::support;
use base64::Engine;
use kube_emulator::Emulator;
use serde_json::{Value, json};
use support::operator::cluster::{CRDS, Op, cond};
use support::rabbit::broker_addr;
use support::wait_for;

const NS: &str = "web";

async fn op() -> Op {
    let emu = Arc::new(Emulator::start().await.expect("emulator"));
    // Poll every second while a kind or class is missing, so the tests need not wait 30 s.
    let op = Op::start_with(emu, Duration::from_secs(30), |s| {
        s.exposure_poll = Duration::from_secs(1)
    })
    .await;
    op.namespace(NS);
    op.guest_secret(NS);
    op
}

fn path(kind: &str, name: &str) -> String {
    match kind {
        "ingress" => format!("/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses/{name}"),
        "netpol" => format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{name}"),
        "route" => format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/{name}"),
        "cert" => format!("/apis/cert-manager.io/v1/namespaces/{NS}/certificates/{name}"),
        "deploy" => format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}"),
        "gw" => support::operator::cluster::gw_path(NS, name),
        other => panic!("{other}"),
    }
}

fn gateway(op: &Op, name: &str, extra: Value) {
    op.gateway_with(NS, name, broker_addr().port(), json!({}), extra);
}

fn ingress_class(op: &Op, name: &str) {
    op.create(
        "/apis/networking.k8s.io/v1/ingressclasses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
               "metadata": {"name": name}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
    );
}

/// A minimal CRD for a third-party kind (the real ones are large; the operator needs only
/// that the kind is served and stores what it applies).
fn install_kind(op: &Op, group: &str, kind: &str, plural: &str) {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(),
                           "listKind": format!("{kind}List")},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": true}}}]}
    });
    op.create(CRDS, crd);
}

fn tls_secret(op: &Op, name: &str, type_: &str, data: &[(&str, &str)]) {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(b(v))))
        .collect();
    op.create(
        &format!("/api/v1/namespaces/{NS}/secrets"),
        json!({"apiVersion": "v1", "kind": "Secret", "type": type_,
               "metadata": {"name": name, "namespace": NS,
                            "labels": {"stompgate.io/watch": "true"}},
               "data": data}),
    );
}

fn cert_pem() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["push.web.svc".into()]).expect("rcgen");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

async fn wait_cond(op: &Op, name: &str, ty: &str, status: &str, reason: &str) -> String {
    wait_for(&format!("{ty}={status} ({reason})"), 20, || {
        let gw = op.gw(NS, name)?;
        let (s, r, m) = cond(&gw, ty)?;
        (s == status && r == reason && support::operator::cluster::observed_current(&gw))
            .then_some(m)
    })
    .await
}

async fn wait_gone(op: &Op, p: &str) {
    wait_for(&format!("{p} deleted"), 20, || {
        op.emu.get(p).is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingress_and_network_policy_follow_the_spec_and_go_with_their_fields() {
    let op = op().await;
    ingress_class(&op, "nginx");
    gateway(
        &op,
        "push",
        json!({"ingress": {"className": "nginx", "host": "push.example.org",
                           "tls": {"secretName": "edge-tls"},
                           "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "600"}},
               "networkPolicy": {"from": [{"namespaceSelector": {"matchLabels":
                   {"kubernetes.io/metadata.name": "ingress-nginx"}}}]}}),
    );
    op.step("the Ingress and NetworkPolicy are created");
    let ing = wait_for("Ingress", 20, || op.emu.get(&path("ingress", "push"))).await;
    assert_eq!(ing["spec"]["rules"][0]["host"], "push.example.org");
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"][1]["path"],
        "/stomp"
    );
    assert_eq!(
        ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "600"
    );
    assert_eq!(
        ing["metadata"]["ownerReferences"][0]["kind"],
        "StompGateway"
    );
    let np = wait_for("NetworkPolicy", 20, || op.emu.get(&path("netpol", "push"))).await;
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    wait_cond(&op, "push", "IngressReady", "True", "Applied").await;
    let gw = op.gw(NS, "push").expect("gw");
    assert_eq!(
        gw["status"]["endpoints"]["external"],
        json!({"webSocket": "wss://push.example.org/ws", "sockJs": "https://push.example.org/stomp"})
    );

    op.step("an idle reconcile writes nothing");
    let writes = |op: &Op| {
        op.emu
            .audit()
            .iter()
            .filter(|a| {
                a.method == "PATCH"
                    && (a.path.contains("/ingresses/")
                        || a.path.contains("/networkpolicies/")
                        || a.path.ends_with("/status"))
            })
            .count()
    };
    // Settled first: the Deployment controller has made the pod (a status change of its own).
    wait_for("the pod is counted", 20, || {
        let gw = op.gw(NS, "push")?;
        (gw["status"]["replicas"] == 1 && support::operator::cluster::observed_current(&gw))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = writes(&op);
    let reads = op.secret_reads(NS);
    // A label change starts a reconcile (and changes nothing the operator applies).
    op.merge_patch(
        &path("gw", "push"),
        json!({"metadata": {"labels": {"team": "web"}}}),
    );
    wait_for("the reconcile ran", 20, || {
        (op.secret_reads(NS) > reads).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(writes(&op), before, "an idle reconcile wrote");

    op.step("a new host is applied");
    op.merge_patch(
        &path("gw", "push"),
        json!({"spec": {"ingress": {"host": "live.example.org"}}}),
    );
    wait_for("the Ingress has the new host", 20, || {
        let i = op.emu.get(&path("ingress", "push"))?;
        (i["spec"]["rules"][0]["host"] == "live.example.org").then_some(())
    })
    .await;

    op.step("a hand edit of the Ingress is put back");
    op.merge_patch(
        &path("ingress", "push"),
        json!({"spec": {"rules": [{"host": "evil.example.org", "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "other", "port": {"number": 80}}}}]}}]}}),
    );
    wait_for("the Ingress is repaired", 20, || {
        let i = op.emu.get(&path("ingress", "push"))?;
        (i["spec"]["rules"][0]["host"] == "live.example.org").then_some(())
    })
    .await;

    op.step("removing the fields removes the objects and the condition");
    op.merge_patch(
        &path("gw", "push"),
        json!({"spec": {"ingress": null, "networkPolicy": null}}),
    );
    wait_gone(&op, &path("ingress", "push")).await;
    wait_gone(&op, &path("netpol", "push")).await;
    wait_for("IngressReady gone, no external endpoint", 20, || {
        let gw = op.gw(NS, "push")?;
        (support::operator::cluster::observed_current(&gw)
            && cond(&gw, "IngressReady").is_none()
            && gw["status"]["endpoints"].get("external").is_none())
        .then_some(())
    })
    .await;

    op.step("enabled: false removes the NetworkPolicy too");
    op.merge_patch(
        &path("gw", "push"),
        json!({"spec": {"networkPolicy": {"from": []}}}),
    );
    let np = wait_for("NetworkPolicy again", 20, || {
        op.emu.get(&path("netpol", "push"))
    })
    .await;
    assert!(np["spec"]["ingress"][0].get("from").is_none(), "{np}");
    op.merge_patch(
        &path("gw", "push"),
        json!({"spec": {"networkPolicy": {"enabled": false}}}),
    );
    wait_gone(&op, &path("netpol", "push")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ingress_class_that_does_not_exist_is_a_condition_until_it_does() {
    let op = op().await;
    gateway(
        &op,
        "push",
        json!({"ingress": {"className": "traefik", "host": "push.example.org"}}),
    );
    let msg = wait_cond(&op, "push", "IngressReady", "False", "IngressClassNotFound").await;
    assert!(msg.contains("IngressClass \"traefik\""), "{msg}");
    let gw = op.gw(NS, "push").expect("gw");
    let stalled = cond(&gw, "Stalled").expect("Stalled");
    assert_eq!(
        (stalled.0.as_str(), stalled.1.as_str()),
        ("True", "IngressClassNotFound")
    );
    assert_eq!(cond(&gw, "Ready").expect("Ready").0, "False");
    // The Ingress exists all the same: it works once the controller's class is installed.
    assert!(op.emu.get(&path("ingress", "push")).is_some());
    assert_eq!(
        gw["status"]["endpoints"]["external"]["webSocket"],
        "ws://push.example.org/ws"
    );
    ingress_class(&op, "traefik");
    wait_cond(&op, "push", "IngressReady", "True", "Applied").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_waits_quietly_for_its_kind_and_is_created_when_the_crd_appears() {
    let op = op().await;
    gateway(
        &op,
        "push",
        json!({"route": {"parentRefs": [{"name": "public", "namespace": "gateways"}],
                         "hostnames": ["push.example.org"]}}),
    );
    let msg = wait_cond(&op, "push", "RouteReady", "False", "KindNotServed").await;
    assert!(
        msg.contains("HTTPRoute (gateway.networking.k8s.io/v1)"),
        "{msg}"
    );
    let gw = op.gw(NS, "push").expect("gw");
    assert_eq!(cond(&gw, "Stalled").expect("Stalled").1, "KindNotServed");
    assert_eq!(cond(&gw, "Reconciling").expect("Reconciling").0, "False");
    // The rest of the gateway is there.
    assert!(op.emu.get(&path("deploy", "push")).is_some());

    op.step("no retry storm: a few polls, no write");
    // Once the Deployment controller has made the pod (status.replicas 1), nothing changes.
    wait_for("the pod is counted", 20, || {
        (op.gw(NS, "push")?["status"]["replicas"] == 1).then_some(())
    })
    .await;
    let writes = op.status_writes(NS, "push");
    let reads = op.secret_reads(NS);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        op.status_writes(NS, "push"),
        writes,
        "status rewritten while waiting"
    );
    let polls = op.secret_reads(NS) - reads;
    assert!(polls <= 5, "{polls} reconciles in 3 s with a 1 s poll");

    op.step("the Gateway API CRD appears");
    install_kind(&op, "gateway.networking.k8s.io", "HTTPRoute", "httproutes");
    let route = wait_for("HTTPRoute", 20, || op.emu.get(&path("route", "push"))).await;
    assert_eq!(route["spec"]["parentRefs"][0]["name"], "public");
    assert_eq!(route["spec"]["hostnames"], json!(["push.example.org"]));
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["name"], "push");
    wait_cond(&op, "push", "RouteReady", "True", "Applied").await;

    op.step("removing spec.route removes the HTTPRoute");
    op.merge_patch(&path("gw", "push"), json!({"spec": {"route": null}}));
    wait_gone(&op, &path("route", "push")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_listener_secrets_are_conditions_and_never_reach_the_pods() {
    let op = op().await;
    gateway(&op, "push", json!({"tls": {"secretName": "push-tls"}}));
    let msg = wait_cond(&op, "push", "Reconciling", "True", "SecretNotFound").await;
    assert!(msg.contains("push-tls"), "{msg}");
    assert!(op.emu.get(&path("deploy", "push")).is_none());

    op.step("an Opaque Secret is the wrong type");
    let (crt, key) = cert_pem();
    tls_secret(&op, "push-tls", "Opaque", &[("tls.crt", &crt)]);
    let msg = wait_cond(&op, "push", "Reconciling", "True", "SecretWrongType").await;
    assert!(msg.contains("kubernetes.io/tls"), "{msg}");
    let gw = op.gw(NS, "push").expect("gw");
    assert_eq!(cond(&gw, "Ready").expect("Ready").1, "SecretWrongType");
    assert!(op.emu.get(&path("deploy", "push")).is_none());

    op.step("a kubernetes.io/tls Secret without a PEM key is unusable");
    op.delete(&format!("/api/v1/namespaces/{NS}/secrets/push-tls"));
    tls_secret(
        &op,
        "push-tls",
        "kubernetes.io/tls",
        &[("tls.crt", &crt), ("tls.key", "not a key")],
    );
    let msg = wait_cond(&op, "push", "Reconciling", "True", "SecretInvalid").await;
    assert!(msg.contains("tls.key"), "{msg}");

    op.step("a good Secret: the pods get it, over https probes");
    op.delete(&format!("/api/v1/namespaces/{NS}/secrets/push-tls"));
    tls_secret(
        &op,
        "push-tls",
        "kubernetes.io/tls",
        &[("tls.crt", &crt), ("tls.key", &key)],
    );
    let d = wait_for("Deployment", 20, || op.emu.get(&path("deploy", "push"))).await;
    let pod = &d["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["secret"]["secretName"] == "push-tls")),
        "{pod}"
    );
    assert_eq!(
        pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"],
        "HTTPS"
    );
    wait_for("wss endpoint", 20, || {
        let gw = op.gw(NS, "push")?;
        (gw["status"]["endpoints"]["webSocket"] == "wss://push.web.svc:15674/ws").then_some(())
    })
    .await;

    op.step("a rotated certificate is the gateway's reload, not a rollout");
    let generation = d["metadata"]["generation"].clone();
    let template = d["spec"]["template"].clone();
    let (crt2, key2) = cert_pem();
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    op.merge_patch(
        &format!("/api/v1/namespaces/{NS}/secrets/push-tls"),
        json!({"data": {"tls.crt": b(&crt2), "tls.key": b(&key2)}}),
    );
    let reads = op.secret_reads(NS);
    wait_for("a reconcile after the rotation", 20, || {
        (op.secret_reads(NS) > reads).then_some(())
    })
    .await;
    let d = op.emu.get(&path("deploy", "push")).expect("deployment");
    assert_eq!(d["metadata"]["generation"], generation);
    assert_eq!(d["spec"]["template"], template);

    op.step("a JWT Secret with no usable key");
    op.create(
        &format!("/api/v1/namespaces/{NS}/secrets"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "idp-keys", "namespace": NS,
                            "labels": {"stompgate.io/watch": "true"}},
               "data": {"jwks.json": b(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#)}}),
    );
    op.merge_patch(
        &path("gw", "push"),
        json!({"spec": {"auth": {"mode": "JWT", "jwt": {"jwksSecretRef": {"name": "idp-keys"}}}}}),
    );
    let msg = wait_cond(&op, "push", "Reconciling", "True", "SecretInvalid").await;
    assert!(msg.contains("no usable key"), "{msg}");
    // The pods keep what they ran: no JWT mount was rolled out.
    let d = op.emu.get(&path("deploy", "push")).expect("deployment");
    assert!(!d.to_string().contains("jwt-keys"), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_issuer_ref_makes_a_certificate_once_cert_manager_is_served() {
    let op = op().await;
    gateway(
        &op,
        "push",
        json!({"tls": {"secretName": "push-tls", "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}},
               "ingress": {"host": "push.example.org", "tls": {"secretName": "push-tls"}}}),
    );
    wait_for("CertificateReady False, KindNotServed", 20, || {
        let gw = op.gw(NS, "push")?;
        let c = cond(&gw, "CertificateReady")?;
        (c.0 == "False" && c.1 == "KindNotServed").then_some(())
    })
    .await;
    let gw = op.gw(NS, "push").expect("gw");
    let r = cond(&gw, "Reconciling").expect("Reconciling");
    assert_eq!(r.1, "SecretNotFound");
    assert!(r.2.contains("cert-manager writes it"), "{r:?}");

    op.step("cert-manager is installed");
    install_kind(&op, "cert-manager.io", "Certificate", "certificates");
    let cert = wait_for("Certificate", 30, || op.emu.get(&path("cert", "push"))).await;
    assert_eq!(cert["spec"]["secretName"], "push-tls");
    assert_eq!(cert["spec"]["dnsNames"], json!(["push.example.org"]));
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");

    op.step("cert-manager writes the Secret (with the watch label of secretTemplate)");
    let (crt, key) = cert_pem();
    tls_secret(
        &op,
        "push-tls",
        "kubernetes.io/tls",
        &[("tls.crt", &crt), ("tls.key", &key)],
    );
    wait_for("Deployment", 20, || op.emu.get(&path("deploy", "push"))).await;
    wait_cond(&op, "push", "CertificateReady", "True", "Applied").await;

    op.step("removing issuerRef removes the Certificate");
    op.merge_patch(
        &path("gw", "push"),
        json!({"spec": {"tls": {"issuerRef": null}}}),
    );
    wait_gone(&op, &path("cert", "push")).await;
}
