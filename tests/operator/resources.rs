//! Builders: YAML fixtures in, Kubernetes objects out.

use crate::support;

use k8s_openapi::api::core::v1::Container;
use stompgate::operator::resources::{
    self, BuildInputs, CONFIG_HASH_ANNOTATION, build, encode_vhost, gateway_config,
};
use support::operator::{fixture, gateway};

fn inputs() -> BuildInputs {
    BuildInputs {
        default_image: "img:1".into(),
        secret_hash: "s1".into(),
    }
}

fn container(d: &k8s_openapi::api::apps::v1::Deployment) -> &Container {
    let spec = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    spec.containers
        .iter()
        .find(|c| c.name == "gateway")
        .expect("gateway container")
}

fn pod_annotation(d: &k8s_openapi::api::apps::v1::Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
        .cloned()
        .expect("config hash")
}

#[test]
fn minimal_gateway_builds_all_children_with_owner_refs_and_labels() {
    let gw = gateway(&fixture("minimal.yaml"));
    let c = build(&gw, &inputs()).expect("build");
    for meta in [
        &c.config_map.metadata,
        &c.service.metadata,
        &c.deployment.metadata,
    ] {
        assert_eq!(meta.namespace.as_deref(), Some("ns1"));
        let owners = meta.owner_references.as_ref().expect("owner refs");
        assert_eq!(owners[0].kind, "StompGateway");
        assert_eq!(owners[0].controller, Some(true));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/instance"], "gw");
        assert!(
            meta.annotations
                .as_ref()
                .expect("ann")
                .contains_key(resources::APPLIED_HASH_ANNOTATION)
        );
    }
    assert_eq!(c.config_map.metadata.name.as_deref(), Some("gw-config"));
    assert!(c.pdb.is_some());
    let dspec = c.deployment.spec.as_ref().expect("spec");
    assert_eq!(
        dspec.replicas, None,
        "replicas left to an autoscaler when unset"
    );
    assert_eq!(container(&c.deployment).image.as_deref(), Some("img:1"));
}

#[test]
fn config_file_carries_every_gateway_flag() {
    let gw = gateway(&fixture("minimal.yaml"));
    let cfg = gateway_config(&gw.spec).expect("cfg");
    let v: serde_yaml::Value = serde_yaml::from_str(&cfg).expect("yaml");
    assert_eq!(v["listen"], "0.0.0.0:15674");
    assert_eq!(v["ws-path"], "/ws");
    assert_eq!(v["sockjs-path"], "/stomp");
    assert_eq!(v["sockjs-enabled"], true);
    assert_eq!(v["amqp-url"], "amqp://rabbitmq.messaging.svc:5672/%2f");
    assert_eq!(v["auth-mode"], "passthrough");
    assert_eq!(v["heartbeat-server-ms"], 10000);
    assert_eq!(v["max-frame-bytes"], 4194304);
    assert_eq!(v["drain-timeout-secs"], 30);
    assert!(
        v.get("stomp-listen").is_none(),
        "plain STOMP is off unless enabled"
    );
    assert!(!cfg.contains("guest"), "no credentials in the ConfigMap");
}

#[test]
fn full_example_maps_tls_stomp_service_user_uri_secret_and_overrides() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/stompgateway-full.yaml"
    ))
    .expect("example");
    let mut gw = gateway(&docs);
    gw.metadata.uid = Some("u1".into());
    let c = build(&gw, &inputs()).expect("build");
    let cfg: serde_yaml::Value =
        serde_yaml::from_str(&c.config_map.data.as_ref().expect("data")["gateway.yaml"])
            .expect("yaml");
    assert_eq!(cfg["stomp-listen"], "0.0.0.0:61613");
    assert_eq!(cfg["auth-mode"], "service-user");
    assert!(
        cfg.get("amqp-tls-ca-file").is_none(),
        "the CA path is an env var"
    );
    assert_eq!(
        cfg["allowed-origins"],
        serde_yaml::to_value(["https://app.example.com", "https://*.example.org:8443"]).expect("v")
    );
    assert!(
        cfg.get("amqp-url").is_none(),
        "URL comes from the Secret via env"
    );
    let ctr = container(&c.deployment);
    let env: Vec<&str> = ctr.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(
        env,
        [
            "STOMPGATE_AMQP_URL",
            "STOMPGATE_AMQP_USERNAME",
            "STOMPGATE_AMQP_PASSWORD",
            "STOMPGATE_AMQP_TLS_CA_FILE"
        ]
    );
    let ca = ctr
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "STOMPGATE_AMQP_TLS_CA_FILE")
        .expect("ca");
    assert_eq!(ca.value.as_deref(), Some("/etc/stompgate/tls/ca.crt"));
    for e in ctr
        .env
        .iter()
        .flatten()
        .filter(|e| e.name != "STOMPGATE_AMQP_TLS_CA_FILE")
    {
        assert!(
            e.value.is_none()
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .is_some()
        );
    }
    // podTemplate merged, not replaced: our probes and security stay, their resources win.
    assert!(ctr.liveness_probe.is_some() && ctr.readiness_probe.is_some());
    let res = ctr.resources.as_ref().expect("resources");
    assert_eq!(res.limits.as_ref().expect("limits")["memory"].0, "512Mi");
    let sc = ctr.security_context.as_ref().expect("sc");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let pod = c
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    assert_eq!(
        pod.containers.len(),
        1,
        "override merged into the gateway container by name"
    );
    assert_eq!(
        pod.node_selector.as_ref().expect("ns")["kubernetes.io/os"],
        "linux"
    );
    let tmeta = c
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .expect("meta");
    let ann = tmeta.annotations.as_ref().expect("ann");
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert!(ann.contains_key(CONFIG_HASH_ANNOTATION));
    assert_eq!(
        tmeta.labels.as_ref().expect("l")["app.kubernetes.io/instance"],
        "trading"
    );
    let vols: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(vols, ["config", "broker-ca"]);
    // preStop sleep 5 + drainTimeoutSeconds 60 + 5 s to exit.
    assert_eq!(pod.termination_grace_period_seconds, Some(70));
    let pre_stop = pod.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map(|s| s.seconds);
    assert_eq!(pre_stop, Some(5), "preStop sleeps so endpoints go first");
    let svc = c.service.spec.as_ref().expect("svc");
    assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
    let ports: Vec<i32> = svc.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [15674, 61613]);
    assert_eq!(
        c.service.metadata.annotations.as_ref().expect("a")["service.beta.kubernetes.io/aws-load-balancer-type"],
        "nlb"
    );
    assert_eq!(ctr.image.as_deref(), Some("stompgate/stompgate:0.1.0"));
}

#[test]
fn restricted_security_context_by_default() {
    let gw = gateway(&fixture("minimal.yaml"));
    let c = build(&gw, &inputs()).expect("build");
    let pod = c
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    let psc = pod.security_context.as_ref().expect("pod sc");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let sc = container(&c.deployment)
        .security_context
        .as_ref()
        .expect("sc");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
    let ctr = container(&c.deployment);
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&ctr.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&ctr.readiness_probe).as_deref(), Some("/readyz"));
}

#[test]
fn secret_rotation_and_config_change_roll_the_pods_and_builds_are_pure() {
    let gw = gateway(&fixture("minimal.yaml"));
    let a = build(&gw, &inputs()).expect("a");
    let b = build(&gw, &inputs()).expect("b");
    assert_eq!(a, b, "same input, same output");
    let rotated = build(
        &gw,
        &BuildInputs {
            secret_hash: "s2".into(),
            ..inputs()
        },
    )
    .expect("rotated");
    assert_ne!(
        pod_annotation(&a.deployment),
        pod_annotation(&rotated.deployment)
    );
    assert_eq!(
        a.config_map, rotated.config_map,
        "the ConfigMap holds no secret data"
    );
    let mut changed = gw.clone();
    changed.spec.limits.max_frame_bytes = 65536;
    let c = build(&changed, &inputs()).expect("changed");
    assert_ne!(pod_annotation(&a.deployment), pod_annotation(&c.deployment));
}

#[test]
fn pdb_disabled_and_replicas_set() {
    let mut gw = gateway(&fixture("minimal.yaml"));
    gw.spec.pod_disruption_budget.enabled = false;
    gw.spec.replicas = Some(3);
    let c = build(&gw, &inputs()).expect("build");
    assert!(c.pdb.is_none());
    assert_eq!(c.deployment.spec.as_ref().and_then(|s| s.replicas), Some(3));
}

#[test]
fn render_without_uid_has_no_owner_refs_and_uses_namespace_flag() {
    use stompgate::operator::cli::{Doc, render_docs};
    let v: serde_json::Value = serde_yaml::from_str(&fixture("immutable-old.yaml")).expect("yaml");
    let mut v2 = v.clone();
    v2["metadata"]
        .as_object_mut()
        .expect("m")
        .remove("namespace");
    let out = render_docs(
        &[Doc {
            path: "x".into(),
            index: 1,
            value: v2,
        }],
        "team-a",
        "img:2",
    )
    .expect("render");
    assert_eq!(
        out.matches("\n---\n").count() + 1,
        4,
        "ConfigMap, Service, Deployment, PDB"
    );
    assert!(out.contains("namespace: team-a"));
    assert!(!out.contains("ownerReferences"));
    assert!(out.contains("image: img:2"));
}

#[test]
fn vhost_encoding_and_endpoints() {
    assert_eq!(encode_vhost("/"), "%2f");
    assert_eq!(encode_vhost("prod/eu"), "prod%2feu");
    let gw = gateway(&fixture("minimal.yaml"));
    let e = resources::endpoints(&gw);
    assert_eq!(e.web_socket, "ws://gw.ns1.svc:15674/ws");
    assert_eq!(e.sock_js.as_deref(), Some("http://gw.ns1.svc:15674/stomp"));
    assert_eq!(e.stomp, None);
    assert_eq!(
        resources::selector_string("gw"),
        "app.kubernetes.io/instance=gw,app.kubernetes.io/name=stompgate"
    );
}

/// The ConfigMap is read by the real gateway's config parser: every key is a gateway flag and
/// every value parses.
#[test]
fn the_gateway_accepts_the_rendered_config_file() {
    use stompgate::gateway::config::parse_gateway_args;
    let full = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/stompgateway-full.yaml"
    ))
    .expect("example");
    for gw in [gateway(&fixture("minimal.yaml")), gateway(&full)] {
        let cfg = gateway_config(&gw.spec).expect("cfg");
        let dir = std::env::temp_dir().join(format!("stompgate-opcfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("gateway.yaml");
        std::fs::write(&file, &cfg).expect("write");
        let argv = vec!["--config".to_string(), file.display().to_string()];
        let args =
            parse_gateway_args(&argv).unwrap_or_else(|e| panic!("gateway refused {cfg}: {e}"));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            args.max_frame_bytes as i64,
            i64::from(gw.spec.limits.max_frame_bytes)
        );
        assert_eq!(
            args.max_connections as i64,
            i64::from(gw.spec.limits.max_connections)
        );
        assert_eq!(
            args.heartbeat_server_ms as i64,
            i64::from(gw.spec.heartbeat.server_ms)
        );
        assert_eq!(
            args.drain_timeout_secs as i64,
            i64::from(gw.spec.drain_timeout_seconds)
        );
        assert_eq!(args.ws_path, gw.spec.web_socket.path);
        assert_eq!(args.sockjs_enabled, gw.spec.web_socket.sock_js.enabled);
        assert_eq!(args.allowed_origins, gw.spec.web_socket.allowed_origins);
        assert_eq!(args.stomp_listen.is_some(), gw.spec.stomp.enabled);
        assert_eq!(args.listen.port() as i32, gw.spec.web_socket.port);
    }
}
