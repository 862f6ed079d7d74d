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
        broker_port: None,
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
    for gw in [
        gateway(&fixture("minimal.yaml")),
        gateway(&full),
        public_example(),
    ] {
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

fn public_example() -> stompgate::crd::StompGateway {
    let mut gw = gateway(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/stompgateway-public.yaml"
        ))
        .expect("example"),
    );
    gw.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
    gw
}

fn value<T: serde::Serialize>(t: &T) -> serde_json::Value {
    serde_json::to_value(t).expect("json")
}

#[test]
fn the_ingress_routes_both_paths_with_websocket_friendly_overridable_annotations() {
    let mut gw = public_example();
    let ing = value(
        build(&gw, &inputs())
            .expect("build")
            .ingress
            .as_ref()
            .expect("ingress"),
    );
    assert_eq!(ing["metadata"]["name"], "push");
    assert_eq!(
        ing["metadata"]["ownerReferences"][0]["kind"],
        "StompGateway"
    );
    assert_eq!(ing["spec"]["ingressClassName"], "nginx");
    assert_eq!(
        ing["spec"]["tls"],
        serde_json::json!([{"hosts": ["push.example.org"], "secretName": "push-tls"}])
    );
    let rule = &ing["spec"]["rules"][0];
    assert_eq!(rule["host"], "push.example.org");
    let paths: Vec<_> = rule["http"]["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .map(|p| {
            assert_eq!(p["pathType"], "Prefix");
            assert_eq!(p["backend"]["service"]["name"], "push");
            assert_eq!(p["backend"]["service"]["port"]["name"], "ws");
            p["path"].as_str().expect("path").to_string()
        })
        .collect();
    assert_eq!(paths, ["/ws", "/stomp"]);
    let a = &ing["metadata"]["annotations"];
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600");
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-send-timeout"], "3600");
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-body-size"], "4194304");
    // The pods serve TLS, so the ingress controller must speak HTTPS to them.
    assert_eq!(a["nginx.ingress.kubernetes.io/backend-protocol"], "HTTPS");
    // The user's annotations win; SockJS off leaves only the WebSocket path.
    let i = gw.spec.ingress.as_mut().expect("ingress");
    i.annotations.insert(
        "nginx.ingress.kubernetes.io/proxy-read-timeout".into(),
        "600".into(),
    );
    i.annotations.insert("extra".into(), "x".into());
    gw.spec.web_socket.sock_js.enabled = false;
    gw.spec.tls = None;
    let ing = value(
        build(&gw, &inputs())
            .expect("build")
            .ingress
            .as_ref()
            .expect("ingress"),
    );
    let a = &ing["metadata"]["annotations"];
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "600");
    assert_eq!(a["extra"], "x");
    assert!(
        a.get("nginx.ingress.kubernetes.io/backend-protocol")
            .is_none()
    );
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn the_http_route_attaches_to_its_parents_for_both_paths() {
    let gw = public_example();
    let r = value(
        build(&gw, &inputs())
            .expect("build")
            .route
            .as_ref()
            .expect("route"),
    );
    assert_eq!(r["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(r["kind"], "HTTPRoute");
    assert_eq!(r["metadata"]["name"], "push");
    assert_eq!(r["metadata"]["ownerReferences"][0]["name"], "push");
    assert_eq!(
        r["spec"]["parentRefs"],
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                            "name": "public", "namespace": "gateways", "sectionName": "https"}])
    );
    assert_eq!(
        r["spec"]["hostnames"],
        serde_json::json!(["push.example.org"])
    );
    assert_eq!(
        r["spec"]["rules"][0]["matches"],
        serde_json::json!([{"path": {"type": "PathPrefix", "value": "/ws"}},
                           {"path": {"type": "PathPrefix", "value": "/stomp"}}])
    );
    assert_eq!(
        r["spec"]["rules"][0]["backendRefs"],
        serde_json::json!([{"group": "", "kind": "Service", "name": "push", "port": 15674, "weight": 1}])
    );
}

#[test]
fn listener_tls_mounts_the_secret_sets_the_flags_and_probes_https() {
    let gw = public_example();
    let c = build(&gw, &inputs()).expect("build");
    let d = value(&c.deployment);
    let pod = &d["spec"]["template"]["spec"];
    let vol = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "listener-tls")
        .expect("listener-tls volume");
    assert_eq!(vol["secret"]["secretName"], "push-tls");
    let gw_container = &pod["containers"][0];
    assert!(
        gw_container["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["name"] == "listener-tls"
                && m["mountPath"] == resources::LISTENER_TLS_DIR
                && m.get("subPath").is_none()),
        "{gw_container}"
    );
    assert_eq!(gw_container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(gw_container["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
    let cfg = gateway_config(&gw.spec).expect("cfg");
    assert!(
        cfg.contains("tls-cert-file: /etc/stompgate/listener-tls/tls.crt"),
        "{cfg}"
    );
    assert!(
        cfg.contains("tls-key-file: /etc/stompgate/listener-tls/tls.key"),
        "{cfg}"
    );
    // Rotation is the gateway's reload, not a rollout: the Secret is not in the pod hash.
    let ep = resources::endpoints(&gw);
    assert_eq!(ep.web_socket, "wss://push.web.svc:15674/ws");
    assert_eq!(
        ep.sock_js.as_deref(),
        Some("https://push.web.svc:15674/stomp")
    );
    let ext = ep.external.expect("external");
    assert_eq!(ext.web_socket, "wss://push.example.org/ws");
    assert_eq!(
        ext.sock_js.as_deref(),
        Some("https://push.example.org/stomp")
    );
}

#[test]
fn a_certificate_is_built_for_the_public_hosts_or_the_service_names() {
    let mut gw = public_example();
    let cert = value(
        build(&gw, &inputs())
            .expect("build")
            .certificate
            .as_ref()
            .expect("cert"),
    );
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["kind"], "Certificate");
    assert_eq!(cert["spec"]["secretName"], "push-tls");
    assert_eq!(
        cert["spec"]["dnsNames"],
        serde_json::json!(["push.example.org"])
    );
    assert_eq!(
        cert["spec"]["issuerRef"],
        serde_json::json!({"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert_eq!(
        cert["spec"]["secretTemplate"]["labels"]["stompgate.io/watch"],
        "true"
    );
    gw.spec.ingress = None;
    gw.spec.route = None;
    let cert = value(
        build(&gw, &inputs())
            .expect("build")
            .certificate
            .as_ref()
            .expect("cert"),
    );
    assert_eq!(
        cert["spec"]["dnsNames"],
        serde_json::json!(["push.web.svc", "push.web.svc.cluster.local"])
    );
    assert!(resources::endpoints(&gw).external.is_none());
    gw.spec.tls.as_mut().expect("tls").issuer_ref = None;
    assert!(build(&gw, &inputs()).expect("build").certificate.is_none());
}

#[test]
fn jwt_mode_mounts_the_keys_and_configures_the_gateway() {
    let gw = public_example();
    let cfg = gateway_config(&gw.spec).expect("cfg");
    for line in [
        "auth-mode: jwt",
        "jwt-jwks-file: /etc/stompgate/jwt/jwks.json",
        "jwt-issuer: https://idp.example.org",
        "jwt-audience: push",
        "jwt-destinations-claim: stomp_destinations",
    ] {
        assert!(cfg.contains(line), "{line} missing from {cfg}");
    }
    assert!(!cfg.contains("jwt-hs256-secret-file"), "{cfg}");
    let d = value(&build(&gw, &inputs()).expect("build").deployment);
    let vol = d["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "jwt-keys")
        .cloned()
        .expect("jwt volume");
    assert_eq!(
        vol["projected"]["sources"],
        serde_json::json!([{"secret": {"name": "idp-keys", "optional": false,
                                       "items": [{"key": "jwks.json", "path": "jwks.json"}]}}])
    );
}

#[test]
fn the_network_policy_admits_the_peers_to_the_gateway_ports_and_lets_out_broker_and_dns() {
    let mut gw = public_example();
    let np = value(
        build(&gw, &inputs())
            .expect("build")
            .network_policy
            .as_ref()
            .expect("np"),
    );
    let spec = &np["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "push"
    );
    assert_eq!(
        spec["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert_eq!(spec["ingress"][0]["from"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        spec["ingress"][0]["ports"],
        serde_json::json!([{"port": 15674, "protocol": "TCP"}])
    );
    assert_eq!(
        spec["egress"][0]["ports"],
        serde_json::json!([{"port": 5672, "protocol": "TCP"}])
    );
    assert_eq!(
        spec["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "messaging"
    );
    assert_eq!(
        spec["egress"][1],
        serde_json::json!({"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]})
    );
    // No peers: the rules name ports only (any source, any broker address), never `[]`.
    let p = gw.spec.network_policy.as_mut().expect("np");
    p.from.clear();
    p.broker.clear();
    gw.spec.stomp.enabled = true;
    let np = value(
        build(&gw, &inputs())
            .expect("build")
            .network_policy
            .as_ref()
            .expect("np"),
    );
    assert!(np["spec"]["ingress"][0].get("from").is_none(), "{np}");
    assert!(np["spec"]["egress"][0].get("to").is_none(), "{np}");
    assert_eq!(
        np["spec"]["ingress"][0]["ports"].as_array().map(Vec::len),
        Some(2)
    );
    // A URI from a Secret: the port the operator read, else both AMQP ports.
    gw.spec.rabbitmq.host = None;
    gw.spec.rabbitmq.uri_secret_ref = Some(stompgate::crd::SecretKeySelector {
        name: "u".into(),
        key: "uri".into(),
    });
    assert_eq!(resources::broker_ports(&gw.spec, &inputs()), [5671, 5672]);
    let with_port = BuildInputs {
        broker_port: Some(5671),
        ..inputs()
    };
    assert_eq!(resources::broker_ports(&gw.spec, &with_port), [5671]);
    gw.spec.network_policy.as_mut().expect("np").enabled = false;
    assert!(
        build(&gw, &inputs())
            .expect("build")
            .network_policy
            .is_none()
    );
}

#[test]
fn without_the_new_fields_nothing_new_is_built() {
    let gw = gateway(&fixture("minimal.yaml"));
    let c = build(&gw, &inputs()).expect("build");
    assert!(c.ingress.is_none() && c.route.is_none());
    assert!(c.certificate.is_none() && c.network_policy.is_none());
    assert!(c.hpa.is_none());
    let ep = resources::endpoints(&gw);
    assert!(ep.web_socket.starts_with("ws://") && ep.external.is_none());
}

#[test]
fn the_broker_port_is_read_from_a_uri() {
    use stompgate::operator::controller::uri_port;
    assert_eq!(uri_port("amqps://u:p@rmq.svc/vh"), Some(5671));
    assert_eq!(uri_port("amqp://rmq.svc"), Some(5672));
    assert_eq!(uri_port("amqp://u:p@rmq.svc:5673/%2f"), Some(5673));
    assert_eq!(uri_port("amqp://u:p:x@[::1]:5674/"), Some(5674));
    assert_eq!(uri_port("amqp://[::1]/"), Some(5672));
    assert_eq!(uri_port("nonsense"), None);
}

#[test]
fn render_shows_every_exposure_object_of_the_public_example() {
    use stompgate::operator::cli::{Doc, render_docs};
    let value: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/stompgateway-public.yaml"
        ))
        .expect("example"),
    )
    .expect("yaml");
    let out = render_docs(
        &[Doc {
            path: "x".into(),
            index: 1,
            value,
        }],
        "default",
        "img:2",
    )
    .expect("render");
    let kinds: Vec<String> = out
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            let v: serde_json::Value = serde_yaml::from_str(d).expect("doc");
            v["kind"].as_str().expect("kind").to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "Certificate",
            "Ingress",
            "HTTPRoute",
            "NetworkPolicy"
        ]
    );
}

/// `render | kubectl apply -f -`: kubectl reads YAML 1.1, where a plain `off` is a boolean.
#[test]
fn render_quotes_strings_a_yaml_1_1_reader_would_take_for_booleans() {
    use stompgate::operator::cli::quote_yaml11_booleans;
    let doc =
        "a:\n  b: off\n  c: offline\n  d: 'on'\n  e:\n  - yes\n  - no way\n  f: \"n\"\nx: 1\n";
    assert_eq!(
        quote_yaml11_booleans(doc),
        "a:\n  b: 'off'\n  c: offline\n  d: 'on'\n  e:\n  - 'yes'\n  - no way\n  f: \"n\"\nx: 1\n"
    );
    // Every word serde_yaml leaves plain comes back as the same string.
    for w in ["y", "yes", "on", "off", "No", "OFF"] {
        let v = serde_json::json!({"k": w, "l": [w]});
        let quoted = quote_yaml11_booleans(&serde_yaml::to_string(&v).expect("yaml"));
        let back: serde_json::Value = serde_yaml::from_str(&quoted).expect("parse");
        assert_eq!(back, v, "{quoted}");
        assert!(
            quoted.contains(&format!("'{w}'")) || quoted.contains(&format!("\"{w}\"")),
            "{quoted}"
        );
    }
}

fn autoscaled(a: serde_json::Value) -> stompgate::crd::StompGateway {
    let mut gw = gateway(&fixture("minimal.yaml"));
    gw.spec.replicas = None;
    gw.spec.autoscaling = Some(serde_json::from_value(a).expect("autoscaling"));
    gw
}

#[test]
fn autoscaling_builds_an_hpa_on_the_deployment_and_leaves_replicas_out() {
    let gw = autoscaled(serde_json::json!({"minReplicas": 2, "maxReplicas": 10,
        "targetCPUUtilizationPercentage": 60, "targetConnectionsPerPod": 2000}));
    let c = build(&gw, &inputs()).expect("build");
    assert_eq!(c.deployment.spec.as_ref().and_then(|s| s.replicas), None);
    let hpa = c.hpa.as_ref().expect("hpa");
    assert_eq!(hpa.metadata.name.as_deref(), Some("gw"));
    assert_eq!(
        hpa.metadata.owner_references.as_ref().expect("owner")[0].kind,
        "StompGateway"
    );
    assert!(
        hpa.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(resources::APPLIED_HASH_ANNOTATION))
    );
    assert_eq!(
        value(&hpa.spec),
        serde_json::json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gw"},
            "minReplicas": 2, "maxReplicas": 10,
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 60}}},
                {"type": "Pods", "pods": {"metric": {"name": "stompgate_connections"},
                    "target": {"type": "AverageValue", "averageValue": "2000"}}}
            ]
        })
    );
    // render lists it after the Deployment's companions.
    let kinds: Vec<String> = resources::to_values(&c)
        .expect("values")
        .iter()
        .map(|v| v["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        kinds.contains(&"HorizontalPodAutoscaler".to_string()),
        "{kinds:?}"
    );
}

#[test]
fn autoscaling_targets_cpu_80_when_none_is_named_and_connections_alone_when_only_they_are() {
    let c = build(
        &autoscaled(serde_json::json!({"maxReplicas": 3})),
        &inputs(),
    )
    .expect("build");
    let spec = value(&c.hpa.expect("hpa").spec);
    assert_eq!(spec["minReplicas"], 1);
    assert_eq!(
        spec["metrics"],
        serde_json::json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 80}}}])
    );
    let c = build(
        &autoscaled(serde_json::json!({"maxReplicas": 3, "targetConnectionsPerPod": 700})),
        &inputs(),
    )
    .expect("build");
    let spec = value(&c.hpa.expect("hpa").spec);
    assert_eq!(spec["metrics"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        spec["metrics"][0]["pods"]["metric"]["name"],
        resources::CONNECTIONS_METRIC
    );
}

#[test]
fn the_status_copies_the_hpa_view() {
    let hpa: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gw"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "gw"}, "maxReplicas": 4},
            "status": {"currentReplicas": 2, "desiredReplicas": 3, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 40}}},
                {"type": "Pods", "pods": {"metric": {"name": "stompgate_connections"},
                                          "current": {"averageValue": "1500m"}}}]}
        }))
        .expect("hpa");
    let st = stompgate::operator::controller::autoscaling_status("gw", &hpa);
    assert_eq!(
        value(&st),
        serde_json::json!({"name": "gw", "currentReplicas": 2, "desiredReplicas": 3,
                           "currentConnectionsPerPod": "1500m"})
    );
    // Before the HPA's first pass: zeros, no figure.
    let fresh: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "gw"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "gw"}, "maxReplicas": 4}}))
        .expect("hpa");
    let st = stompgate::operator::controller::autoscaling_status("gw", &fresh);
    assert_eq!((st.current_replicas, st.desired_replicas), (0, 0));
    assert!(st.current_connections_per_pod.is_none());
}

#[test]
fn render_fills_a_cluster_ref_with_the_cluster_operators_names() {
    use stompgate::operator::cli::{Doc, render_docs};
    let v = serde_json::json!({"apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
        "metadata": {"name": "gw", "namespace": "apps"},
        "spec": {"rabbitmq": {"clusterRef": {"name": "rabbit"}, "vhost": "chat"},
                 "auth": {"mode": "ServiceUser"}}});
    let out = render_docs(
        &[Doc {
            path: "x".into(),
            index: 1,
            value: v,
        }],
        "default",
        "img:1",
    )
    .expect("render");
    assert!(
        out.contains("amqp-url: amqp://rabbit.apps.svc:5672/chat"),
        "{out}"
    );
    assert!(out.contains("name: rabbit-default-user"), "{out}");
}
