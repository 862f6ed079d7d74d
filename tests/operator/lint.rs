//! Validation (`stompgate lint` and the controller's validate step): the CRD schema, its CEL
//! rules and the podTemplate guards, with messages that name the field and the fix.

use crate::support;

use std::path::PathBuf;

use stompgate::operator::cli::{Doc, lint_docs, read_docs};
use stompgate::operator::validate::validate_value;
use support::operator::fixture;

fn docs(yaml: &str) -> Vec<Doc> {
    let dir = std::env::temp_dir().join(format!("stompgate-lint-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("f.yaml");
    std::fs::write(&p, yaml).expect("write");
    let d = read_docs(&[p]).expect("read");
    let _ = std::fs::remove_dir_all(dir);
    d
}

#[test]
fn examples_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let files: Vec<PathBuf> = [
        "examples/stompgateway.yaml",
        "examples/stompgateway-full.yaml",
        "examples/stompgateway-local.yaml",
        "examples/stompgateway-public.yaml",
    ]
    .iter()
    .map(|f| PathBuf::from(root).join(f))
    .collect();
    let d = read_docs(&files).expect("read");
    assert!(
        d.iter()
            .filter(|d| d.value["kind"] == "StompGateway")
            .count()
            >= 2
    );
    let problems = lint_docs(&d, &[]);
    assert!(problems.is_empty(), "{problems:?}");
    // The seed scenario is among the examples.
    let seed = d
        .iter()
        .find(|d| d.value["metadata"]["name"] == "chat")
        .expect("chat");
    assert_eq!(
        seed.value["spec"]["topology"]["exchanges"][0]["name"],
        "rabbitmq"
    );
    assert_eq!(
        seed.value["spec"]["topology"]["bindings"][0]["routingKey"],
        "zjj"
    );
}

#[test]
fn every_invariant_is_enforced_with_a_field_and_a_fix() {
    let d = docs(&fixture("invalid.yaml"));
    let results = lint_docs(&d, &[]);
    let expect = [
        (
            "bad-type",
            "spec.topology.exchanges[0].type",
            "must be direct, fanout, topic, headers",
        ),
        (
            "both-hosts",
            "spec.rabbitmq",
            "exactly one of host or uriSecretRef",
        ),
        (
            "no-host",
            "spec.rabbitmq",
            "exactly one of host or uriSecretRef",
        ),
        ("bad-port", "spec.rabbitmq.port", "above the maximum 65535"),
        (
            "bad-origin",
            "spec.webSocket.allowedOrigins[1]",
            "scheme://host[:port]",
        ),
        ("typo", "spec.websocket", "did you mean webSocket?"),
        (
            "privileged",
            "spec.podTemplate.spec.containers[0].securityContext.privileged",
            "remove it",
        ),
        ("service-user-no-creds", "spec", "credentialsSecretRef"),
        ("port-clash", "spec", "spec.stomp.port must differ"),
        (
            "amq-name",
            "spec.topology.exchanges[0].name",
            "reserved by RabbitMQ",
        ),
    ];
    assert_eq!(results.len(), expect.len(), "{results:#?}");
    for (name, path, text) in expect {
        let (_, findings) = results
            .iter()
            .find(|(w, _)| w.ends_with(&format!(", {name})")))
            .unwrap_or_else(|| panic!("{name} not flagged"));
        assert!(
            findings
                .iter()
                .any(|f| f.path == path && f.message.contains(text)),
            "{name}: wanted {path}: ...{text}..., got {findings:?}"
        );
    }
}

#[test]
fn exchange_properties_are_immutable_on_update() {
    let old = docs(&fixture("immutable-old.yaml"));
    let new = docs(&fixture("immutable-new.yaml"));
    let results = lint_docs(&new, &old);
    let findings = &results.first().expect("flagged").1;
    let paths: Vec<&str> = findings.iter().map(|f| f.path.as_str()).collect();
    assert!(
        paths.contains(&"spec.topology.exchanges[0].type"),
        "{findings:?}"
    );
    assert!(
        paths.contains(&"spec.topology.exchanges[0].durable"),
        "{findings:?}"
    );
    assert!(findings.iter().all(|f| f.message.contains("immutable")));
    // Without the old version the same manifest is a valid create.
    assert!(lint_docs(&new, &[]).is_empty());
    // Adding a new exchange next to an unchanged one is fine.
    let grown = docs(&fixture("immutable-old.yaml").replace(
        "exchanges: [{name: rabbitmq, type: topic, durable: true}]",
        "exchanges: [{name: rabbitmq, type: topic, durable: true}, {name: other, type: fanout}]",
    ));
    assert!(lint_docs(&grown, &old).is_empty());
}

#[test]
fn defaults_apply_and_minimal_is_valid() {
    let v: serde_json::Value = serde_yaml::from_str(&fixture("minimal.yaml")).expect("yaml");
    assert!(validate_value(&v, None).is_empty());
    let gw: stompgate::crd::StompGateway = serde_json::from_value(v).expect("typed");
    assert_eq!(gw.spec.web_socket.port, 15674);
    assert!(gw.spec.topology.exchanges.is_empty());
    assert_eq!(gw.spec.rabbitmq.vhost, "/");
    assert_eq!(
        gw.spec
            .rabbitmq
            .credentials_secret_ref
            .expect("creds")
            .username_key,
        "username"
    );
}

#[test]
fn wrong_types_and_duplicates_are_reported() {
    let y = r#"
apiVersion: stompgate.io/v1alpha1
kind: StompGateway
metadata: {name: Bad_Name}
spec:
  rabbitmq: {host: rmq, port: "5672"}
  topology:
    exchanges: [{name: a, type: topic}, {name: a, type: fanout}]
    onConflict: Ignore
"#;
    let v: serde_json::Value = serde_yaml::from_str(y).expect("yaml");
    let f = validate_value(&v, None);
    let has = |p: &str, t: &str| f.iter().any(|x| x.path == p && x.message.contains(t));
    assert!(has("metadata.name", "DNS-1035"), "{f:?}");
    assert!(
        has("spec.rabbitmq.port", "must be integer, got string"),
        "{f:?}"
    );
    assert!(has("spec.topology.exchanges[1]", "duplicate"), "{f:?}");
    assert!(has("spec.topology.onConflict", "not one of"), "{f:?}");
}

/// Finding 9: lint shows in one pass everything the API server refuses: schema problems and
/// CEL rules together, as the server runs them (the CEL rules are skipped only when a value
/// has the wrong type). Checked against the API emulator, which runs the same schema and rules
/// the way kube-apiserver does.
#[tokio::test]
async fn lint_reports_schema_and_cel_problems_in_one_pass_like_the_server() {
    let yaml = r#"apiVersion: stompgate.io/v1alpha1
kind: StompGateway
metadata: {name: Chat_1}
spec:
  rabbitmq: {host: "amqp://rabbitmq.messaging.svc", port: 70000}
  webSocket: {path: ws}
"#;
    let emu = kube_emulator::Emulator::start().await.expect("emulator");
    support::operator::cluster::install_crd(&emu).await;
    // (field, message) pairs from lint and from the server, fields sorted.
    let both = |yaml: &str| {
        let d = docs(yaml);
        let mut lint: Vec<(String, String)> = lint_docs(&d, &[])
            .into_iter()
            .flat_map(|(_, f)| f.into_iter().map(|f| (f.path, f.message)))
            .collect();
        let (code, body) = emu.call(
            "POST",
            "/apis/stompgate.io/v1alpha1/namespaces/default/stompgateways",
            Some(&d[0].value),
        );
        assert_eq!(code, 422, "{body}");
        let mut server: Vec<(String, String)> = body["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("field"), s("message"))
            })
            .collect();
        lint.sort();
        server.sort();
        (lint, server)
    };
    let fields = |v: &[(String, String)]| v.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>();
    let (lint, server) = both(yaml);
    assert_eq!(lint.len(), 5, "{lint:#?}");
    assert_eq!(
        fields(&lint),
        fields(&server),
        "lint {lint:#?}\nserver {server:#?}"
    );
    // The CEL messages are the same rules' messages.
    for (field, message) in &lint {
        if message.starts_with("spec.") {
            assert!(
                server
                    .iter()
                    .any(|(f, m)| f == field && m.ends_with(message.as_str())),
                "{field}: {message} not in {server:#?}"
            );
        }
    }
    // A value of the wrong type stops the rules, on both sides, and both say so.
    let (lint, server) = both(
        r#"apiVersion: stompgate.io/v1alpha1
kind: StompGateway
metadata: {name: chat}
spec:
  rabbitmq: {host: "amqp://rabbitmq.messaging.svc", port: "x"}
"#,
    );
    assert!(
        lint.iter()
            .any(|(_, m)| m == stompgate::operator::validate::NOT_CHECKED),
        "{lint:#?}"
    );
    assert!(
        server
            .iter()
            .any(|(_, m)| m.contains(stompgate::operator::validate::NOT_CHECKED)),
        "{server:#?}"
    );
    assert!(
        !lint.iter().any(|(f, _)| f == "spec.rabbitmq.host"),
        "no CEL finding: {lint:#?}"
    );
}

/// The rules of spec.ingress, spec.route, spec.tls, spec.auth.jwt and spec.networkPolicy, each
/// reported with its field and the fix.
#[test]
fn exposure_tls_and_jwt_rules_name_the_field_and_the_fix() {
    let base = r#"
apiVersion: stompgate.io/v1alpha1
kind: StompGateway
metadata: {name: NAME, namespace: ns1}
spec:
  rabbitmq: {host: rabbitmq, credentialsSecretRef: {name: c}}
"#;
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "jwt-no-settings",
            "auth: {mode: JWT}",
            "spec",
            "needs spec.auth.jwt",
        ),
        (
            "jwt-settings-unused",
            "auth: {mode: Passthrough, jwt: {hs256SecretRef: {name: h}}}",
            "spec",
            "used only with spec.auth.mode JWT",
        ),
        (
            "jwt-no-keys",
            "auth: {mode: JWT, jwt: {issuer: https://idp}}",
            "spec.auth.jwt",
            "jwksSecretRef (RS256 public keys) or hs256SecretRef",
        ),
        (
            "ingress-wildcard",
            "ingress: {host: '*.example.org'}",
            "spec.ingress.host",
            "without wildcard",
        ),
        (
            "ingress-path",
            "ingress: {host: push.example.org, path: /push}",
            "spec",
            "must be under spec.ingress.path",
        ),
        (
            "ingress-class",
            "ingress: {host: push.example.org, className: Nginx_1}",
            "spec.ingress.className",
            "name of an IngressClass",
        ),
        (
            "route-no-parents",
            "route: {parentRefs: []}",
            "spec.route.parentRefs",
            "at least 1 required",
        ),
        (
            "route-hostname",
            "route: {parentRefs: [{name: gw}], hostnames: ['https://push.example.org']}",
            "spec.route.hostnames[0]",
            "lowercase DNS names",
        ),
        (
            "tls-no-secret",
            "tls: {issuerRef: {name: le}}",
            "spec.tls.secretName",
            "required; add it",
        ),
        (
            "peer-ipblock-and-selector",
            "networkPolicy: {from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}",
            "spec.networkPolicy.from[0]",
            "ipBlock cannot be combined",
        ),
        (
            "peer-empty",
            "networkPolicy: {broker: [{}]}",
            "spec.networkPolicy.broker[0]",
            "need podSelector, namespaceSelector or ipBlock",
        ),
        (
            "autoscaling-min-above-max",
            "autoscaling: {minReplicas: 5, maxReplicas: 2}",
            "spec.autoscaling",
            "minReplicas must not exceed spec.autoscaling.maxReplicas",
        ),
        (
            "autoscaling-and-replicas",
            "replicas: 3\n  autoscaling: {maxReplicas: 4}",
            "spec",
            "spec.replicas and spec.autoscaling exclude each other",
        ),
        (
            "autoscaling-no-max",
            "autoscaling: {minReplicas: 2}",
            "spec.autoscaling.maxReplicas",
            "required",
        ),
        (
            "autoscaling-zero-connections",
            "autoscaling: {maxReplicas: 4, targetConnectionsPerPod: 0}",
            "spec.autoscaling.targetConnectionsPerPod",
            "minimum",
        ),
    ];
    for (name, extra, path, text) in cases {
        let yaml = format!("{}  {extra}\n", base.replace("NAME", name));
        let results = lint_docs(&docs(&yaml), &[]);
        let findings = &results
            .first()
            .unwrap_or_else(|| panic!("{name} not flagged"))
            .1;
        assert!(
            findings
                .iter()
                .any(|f| f.path == *path && f.message.contains(text)),
            "{name}: wanted {path}: ...{text}..., got {findings:?}"
        );
    }
}

#[test]
fn a_cluster_ref_excludes_host_and_secrets_and_stands_for_the_credentials() {
    let doc = |rabbitmq: &str| {
        format!(
            "apiVersion: stompgate.io/v1alpha1\nkind: StompGateway\nmetadata: {{name: g, namespace: ns1}}\nspec:\n  auth: {{mode: ServiceUser}}\n  rabbitmq: {rabbitmq}\n"
        )
    };
    let results = lint_docs(
        &docs(&doc(
            "{clusterRef: {name: r}, host: rabbitmq, credentialsSecretRef: {name: c}}",
        )),
        &[],
    );
    let findings = &results.first().expect("flagged").1;
    assert!(
        findings.iter().any(|f| f.path == "spec.rabbitmq"
            && f.message
                .contains("clusterRef takes the address, credentials and TLS")),
        "{findings:?}"
    );
    // ServiceUser needs no credentialsSecretRef with a clusterRef: the default user serves.
    let results = lint_docs(&docs(&doc("{clusterRef: {name: r}}")), &[]);
    assert!(results.is_empty(), "{results:?}");
}
