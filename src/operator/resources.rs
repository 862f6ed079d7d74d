//! Pure builders: a `StompGateway` in, the Kubernetes objects the operator applies out.
//! Shared by the controller and `stompgate render`, so what a reviewer sees is what is applied.

use std::collections::BTreeMap;

use k8s_openapi::DeepMerge;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretKeySelector as K8sSecretKeySelector, SecretProjection, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec as K8sIngressSpec, IngressTLS, NetworkPolicy,
    NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPort,
    NetworkPolicySpec as K8sNetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{AuthMode, StompGateway, StompGatewaySpec};

/// Where the rendered gateway config file is mounted.
pub const CONFIG_DIR: &str = "/etc/stompgate";
/// The config file inside [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "gateway.yaml";
/// Where the broker CA bundle is mounted.
pub const CA_DIR: &str = "/etc/stompgate/tls";
/// Where the listener certificate (`spec.tls.secretName`) is mounted.
pub const LISTENER_TLS_DIR: &str = "/etc/stompgate/listener-tls";
/// Where the JWT keys (`spec.auth.jwt`) are mounted.
pub const JWT_DIR: &str = "/etc/stompgate/jwt";
/// File name of the JWKS in [`JWT_DIR`].
pub const JWKS_FILE: &str = "jwks.json";
/// File name of the HS256 secret in [`JWT_DIR`].
pub const HS256_FILE: &str = "hs256.secret";
/// Pod-template annotation whose change rolls the pods (config or Secret data changed).
pub const CONFIG_HASH_ANNOTATION: &str = "stompgate.io/config-hash";
/// Annotation on every child with the hash of what we applied; equal hash means no write.
pub const APPLIED_HASH_ANNOTATION: &str = "stompgate.io/applied-hash";
/// Name of the gateway container (podTemplate overrides merge into it by this name).
pub const CONTAINER: &str = "gateway";
/// Field manager of every server-side apply.
/// Seconds the pod keeps serving after Kubernetes starts terminating it (preStop `sleep`),
/// so that Services and ingresses stop routing new clients to it before it stops accepting.
/// The kubelet's built-in sleep action needs no shell or binary in the (distroless) image.
pub const PRESTOP_SLEEP_SECONDS: i64 = 5;

/// terminationGracePeriodSeconds = preStop sleep + the gateway's drain timeout + this margin
/// (process exit after the drain), so the kubelet never SIGKILLs a draining gateway.
pub const TERMINATION_MARGIN_SECONDS: i64 = 5;

pub const FIELD_MANAGER: &str = "stompgateway-operator";

/// Builder failures: the StompGateway lacks what a child needs.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The object has no name or namespace.
    #[error("StompGateway has no {0}")]
    MissingMeta(&'static str),
    /// The generated config could not be serialized.
    #[error("could not serialize the gateway config: {0}")]
    Config(#[from] serde_yaml::Error),
}

/// Inputs from outside the object: operator flags and referenced Secret data.
#[derive(Clone, Debug, Default)]
pub struct BuildInputs {
    /// Image used when `spec.image` is empty (`--gateway-image`).
    pub default_image: String,
    /// Hash of the referenced Secrets' data (credentials, URI, CA); part of the pod annotation so
    /// a rotation rolls the pods. (The listener certificate and JWT keys are not in it: the
    /// gateway reloads those without a restart.)
    pub secret_hash: String,
    /// The broker's port when the URI comes from a Secret (the NetworkPolicy's egress);
    /// unknown: both AMQP ports.
    pub broker_port: Option<i32>,
}

/// Everything applied for one StompGateway, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The gateway config file.
    pub config_map: ConfigMap,
    /// Client endpoint.
    pub service: Service,
    /// The gateway pods.
    pub deployment: Deployment,
    /// Disruption budget, unless disabled.
    pub pdb: Option<PodDisruptionBudget>,
    /// `spec.autoscaling`.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// `spec.ingress`.
    pub ingress: Option<Ingress>,
    /// `spec.networkPolicy` (when enabled).
    pub network_policy: Option<NetworkPolicy>,
    /// `spec.route`: a gateway.networking.k8s.io/v1 HTTPRoute.
    pub route: Option<DynamicObject>,
    /// `spec.tls.issuerRef`: a cert-manager.io/v1 Certificate.
    pub certificate: Option<DynamicObject>,
}

/// The Gateway API HTTPRoute kind.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// The cert-manager Certificate kind.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// Labels on every child; the first two also select the pods.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/component".into(), "gateway".into());
    l.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    l
}

/// The pod selector (also `status.selector`).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "stompgate".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

/// `status.selector` in label-selector string form.
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Name of the ConfigMap.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-config")
}

/// The image the pods run.
pub fn effective_image(spec: &StompGatewaySpec, inputs: &BuildInputs) -> String {
    match spec.image.as_deref() {
        Some(i) if !i.is_empty() => i.to_string(),
        _ => inputs.default_image.clone(),
    }
}

/// Percent-encodes a vhost for an AMQP URI (`/` becomes `%2f`).
pub fn encode_vhost(vhost: &str) -> String {
    let mut out = String::new();
    for b in vhost.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// The credential-free broker URL from `host`/`port`/`vhost`; `None` when the URI comes from a
/// Secret.
pub fn amqp_url(spec: &StompGatewaySpec) -> Option<String> {
    let r = &spec.rabbitmq;
    let host = r.host.as_deref()?;
    let tls = r.tls.as_ref().is_some_and(|t| t.enabled);
    let scheme = if tls { "amqps" } else { "amqp" };
    Some(format!(
        "{scheme}://{host}:{}/{}",
        r.port,
        encode_vhost(&r.vhost)
    ))
}

/// The gateway config file (keys are the gateway's flag names).
pub fn gateway_config(spec: &StompGatewaySpec) -> Result<String, serde_yaml::Error> {
    let mut m = BTreeMap::<&str, serde_yaml::Value>::new();
    let ws = &spec.web_socket;
    m.insert("listen", format!("0.0.0.0:{}", ws.port).into());
    m.insert("ws-path", ws.path.clone().into());
    m.insert("sockjs-enabled", ws.sock_js.enabled.into());
    m.insert("sockjs-path", ws.sock_js.path.clone().into());
    if spec.stomp.enabled {
        m.insert(
            "stomp-listen",
            format!("0.0.0.0:{}", spec.stomp.port).into(),
        );
    }
    if let Some(url) = amqp_url(spec) {
        m.insert("amqp-url", url.into());
    }
    let mode = match spec.auth.mode {
        AuthMode::Passthrough => "passthrough",
        AuthMode::ServiceUser => "service-user",
        AuthMode::Jwt => "jwt",
    };
    m.insert("auth-mode", mode.into());
    if let (AuthMode::Jwt, Some(jwt)) = (spec.auth.mode, &spec.auth.jwt) {
        if jwt.jwks_secret_ref.is_some() {
            m.insert("jwt-jwks-file", format!("{JWT_DIR}/{JWKS_FILE}").into());
        }
        if jwt.hs256_secret_ref.is_some() {
            m.insert(
                "jwt-hs256-secret-file",
                format!("{JWT_DIR}/{HS256_FILE}").into(),
            );
        }
        if let Some(i) = &jwt.issuer {
            m.insert("jwt-issuer", i.clone().into());
        }
        if let Some(a) = &jwt.audience {
            m.insert("jwt-audience", a.clone().into());
        }
        m.insert(
            "jwt-destinations-claim",
            jwt.destinations_claim.clone().into(),
        );
    }
    if spec.tls.is_some() {
        m.insert(
            "tls-cert-file",
            format!("{LISTENER_TLS_DIR}/tls.crt").into(),
        );
        m.insert("tls-key-file", format!("{LISTENER_TLS_DIR}/tls.key").into());
    }
    m.insert(
        "heartbeat-server-ms",
        i64::from(spec.heartbeat.server_ms).into(),
    );
    m.insert(
        "heartbeat-client-ms",
        i64::from(spec.heartbeat.client_ms).into(),
    );
    m.insert(
        "max-connections",
        i64::from(spec.limits.max_connections).into(),
    );
    m.insert(
        "max-frame-bytes",
        i64::from(spec.limits.max_frame_bytes).into(),
    );
    // Omitted when empty: an empty value would be one empty origin, not "any".
    if !ws.allowed_origins.is_empty() {
        m.insert("allowed-origins", ws.allowed_origins.clone().into());
    }
    m.insert(
        "drain-timeout-secs",
        i64::from(spec.drain_timeout_seconds).into(),
    );
    serde_yaml::to_string(&m)
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Hash of an object as we are about to apply it; stored in [`APPLIED_HASH_ANNOTATION`].
pub fn object_hash<T: serde::Serialize>(obj: &T) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    sha256_hex(&[&bytes])
}

/// Hash of Secret data, stable in key order; used for rotation roll-outs.
pub fn secret_data_hash<'a>(
    secrets: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, Vec<u8>>)>,
) -> String {
    let mut h = Sha256::new();
    for (name, data) in secrets {
        h.update(name.as_bytes());
        for (k, v) in data {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
    }
    hex::encode(h.finalize())
}

fn meta(gw: &StompGateway, name: String) -> Result<ObjectMeta, BuildError> {
    let ns = gw.namespace().ok_or(BuildError::MissingMeta("namespace"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(ns),
        labels: Some(labels(&gw.name_any())),
        owner_references: owner_ref(gw).map(|o| vec![o]),
        ..ObjectMeta::default()
    })
}

// No uid (e.g. `render` of a file that was never applied): no owner reference can be made.
fn owner_ref(gw: &StompGateway) -> Option<OwnerReference> {
    gw.controller_owner_ref(&())
}

fn with_applied_hash<T: Resource + serde::Serialize>(mut obj: T) -> T {
    let hash = object_hash(&obj);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
    obj
}

/// Builds every child. Pure: same inputs, same objects.
pub fn build(gw: &StompGateway, inputs: &BuildInputs) -> Result<Children, BuildError> {
    let name = gw
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMeta("name"))?;
    let config = gateway_config(&gw.spec)?;
    let config_map = with_applied_hash(ConfigMap {
        metadata: meta(gw, config_map_name(&name))?,
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), config.clone())])),
        ..ConfigMap::default()
    });
    let service = with_applied_hash(build_service(gw, &name)?);
    let deployment = with_applied_hash(build_deployment(gw, &name, &config, inputs)?);
    let pdb = if gw.spec.pod_disruption_budget.enabled {
        Some(with_applied_hash(PodDisruptionBudget {
            metadata: meta(gw, name.clone())?,
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(
                    gw.spec.pod_disruption_budget.max_unavailable,
                )),
                selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(&name)),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }))
    } else {
        None
    };
    let ingress = gw
        .spec
        .ingress
        .as_ref()
        .map(|i| build_ingress(gw, &name, i).map(with_applied_hash))
        .transpose()?;
    let network_policy = match &gw.spec.network_policy {
        Some(np) if np.enabled => Some(with_applied_hash(build_network_policy(
            gw, &name, np, inputs,
        )?)),
        _ => None,
    };
    let route = gw
        .spec
        .route
        .as_ref()
        .map(|r| build_route(gw, &name, r).map(with_applied_hash))
        .transpose()?;
    let certificate = match &gw.spec.tls {
        Some(t) => t
            .issuer_ref
            .as_ref()
            .map(|i| build_certificate(gw, &name, &t.secret_name, i).map(with_applied_hash))
            .transpose()?,
        None => None,
    };
    let hpa = gw
        .spec
        .autoscaling
        .as_ref()
        .map(|a| build_hpa(gw, &name, a).map(with_applied_hash))
        .transpose()?;
    Ok(Children {
        config_map,
        service,
        deployment,
        pdb,
        hpa,
        ingress,
        network_policy,
        route,
        certificate,
    })
}

/// Ingress annotations that keep WebSocket and SockJS sessions working behind ingress-nginx
/// (other controllers ignore them): long-lived connections instead of the 60 s read/send
/// timeouts, no response buffering (SockJS xhr-streaming and eventsource), request bodies up
/// to the largest frame (SockJS xhr_send), and HTTPS to the pods when they serve TLS.
/// `spec.ingress.annotations` override them.
pub fn default_ingress_annotations(spec: &StompGatewaySpec) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/proxy-read-timeout".to_string(),
            "3600".to_string(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-send-timeout".to_string(),
            "3600".to_string(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-buffering".to_string(),
            "off".to_string(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-body-size".to_string(),
            spec.limits.max_frame_bytes.to_string(),
        ),
    ]);
    if spec.tls.is_some() {
        a.insert(
            "nginx.ingress.kubernetes.io/backend-protocol".into(),
            "HTTPS".into(),
        );
    }
    a
}

/// The paths an Ingress or HTTPRoute sends to the gateway: the WebSocket path and, when
/// enabled, the SockJS path (both prefixes: `/ws/` and `/stomp/...` are served too).
pub fn routed_paths(spec: &StompGatewaySpec) -> Vec<String> {
    let ws = &spec.web_socket;
    let mut paths = vec![ws.path.clone()];
    if ws.sock_js.enabled && ws.sock_js.path != ws.path {
        paths.push(ws.sock_js.path.clone());
    }
    paths
}

fn build_ingress(
    gw: &StompGateway,
    name: &str,
    spec: &crate::crd::IngressSpec,
) -> Result<Ingress, BuildError> {
    let mut metadata = meta(gw, name.to_string())?;
    let mut annotations = default_ingress_annotations(&gw.spec);
    annotations.extend(spec.annotations.clone());
    metadata.annotations = Some(annotations);
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: name.to_string(),
            port: Some(ServiceBackendPort {
                name: Some("ws".into()),
                ..ServiceBackendPort::default()
            }),
        }),
        ..IngressBackend::default()
    };
    let paths = routed_paths(&gw.spec)
        .into_iter()
        .map(|p| HTTPIngressPath {
            path: Some(p),
            path_type: "Prefix".into(),
            backend: backend.clone(),
        })
        .collect();
    Ok(Ingress {
        metadata,
        spec: Some(K8sIngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls.as_ref().map(|t| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(t.secret_name.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue { paths }),
            }]),
            ..K8sIngressSpec::default()
        }),
        ..Ingress::default()
    })
}

/// The broker ports the gateway pods connect to.
pub fn broker_ports(spec: &StompGatewaySpec, inputs: &BuildInputs) -> Vec<i32> {
    if spec.rabbitmq.host.is_some() {
        return vec![spec.rabbitmq.port];
    }
    match inputs.broker_port {
        Some(p) => vec![p],
        None => vec![5671, 5672],
    }
}

fn tcp_port(port: i32, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some(protocol.into()),
        ..NetworkPolicyPort::default()
    }
}

fn build_network_policy(
    gw: &StompGateway,
    name: &str,
    np: &crate::crd::NetworkPolicySpec,
    inputs: &BuildInputs,
) -> Result<NetworkPolicy, BuildError> {
    let spec = &gw.spec;
    let mut ports = vec![tcp_port(spec.web_socket.port, "TCP")];
    if spec.stomp.enabled {
        ports.push(tcp_port(spec.stomp.port, "TCP"));
    }
    // An empty peer list in a rule means "from/to anywhere": omit it rather than send [].
    let peers = |p: &Vec<_>| (!p.is_empty()).then(|| p.clone());
    Ok(NetworkPolicy {
        metadata: meta(gw, name.to_string())?,
        spec: Some(K8sNetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: peers(&np.from),
                ports: Some(ports),
            }]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    to: peers(&np.broker),
                    ports: Some(
                        broker_ports(spec, inputs)
                            .into_iter()
                            .map(|p| tcp_port(p, "TCP"))
                            .collect(),
                    ),
                },
                // DNS anywhere: cluster DNS, or a node-local cache outside any namespace.
                NetworkPolicyEgressRule {
                    to: None,
                    ports: Some(vec![tcp_port(53, "UDP"), tcp_port(53, "TCP")]),
                },
            ]),
        }),
    })
}

fn dynamic(
    gw: &StompGateway,
    name: &str,
    ar: &ApiResource,
    spec: serde_json::Value,
) -> Result<DynamicObject, BuildError> {
    let mut obj = DynamicObject::new(name, ar).data(serde_json::json!({ "spec": spec }));
    obj.metadata = meta(gw, name.to_string())?;
    Ok(obj)
}

fn build_route(
    gw: &StompGateway,
    name: &str,
    r: &crate::crd::RouteSpec,
) -> Result<DynamicObject, BuildError> {
    let parents: Vec<serde_json::Value> = r
        .parent_refs
        .iter()
        .map(|p| {
            let mut v = serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": p.name});
            if let Some(ns) = &p.namespace {
                v["namespace"] = ns.clone().into();
            }
            if let Some(s) = &p.section_name {
                v["sectionName"] = s.clone().into();
            }
            v
        })
        .collect();
    let matches: Vec<serde_json::Value> = routed_paths(&gw.spec)
        .into_iter()
        .map(|p| serde_json::json!({"path": {"type": "PathPrefix", "value": p}}))
        .collect();
    let mut spec = serde_json::json!({
        "parentRefs": parents,
        "rules": [{
            "matches": matches,
            "backendRefs": [{"group": "", "kind": "Service", "name": name,
                             "port": gw.spec.web_socket.port, "weight": 1}],
        }],
    });
    if !r.hostnames.is_empty() {
        spec["hostnames"] = r.hostnames.clone().into();
    }
    dynamic(gw, name, &http_route_resource(), spec)
}

/// The host names a Certificate is issued for: the ingress host and route host names, or the
/// Service's in-cluster names when there is neither.
pub fn certificate_dns_names(gw: &StompGateway) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if let Some(i) = &gw.spec.ingress {
        names.push(i.host.clone());
    }
    if let Some(r) = &gw.spec.route {
        names.extend(r.hostnames.iter().cloned());
    }
    if names.is_empty() {
        let name = gw.name_any();
        let ns = gw.namespace().unwrap_or_default();
        names = vec![
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}.svc.cluster.local"),
        ];
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn build_certificate(
    gw: &StompGateway,
    name: &str,
    secret_name: &str,
    issuer: &crate::crd::IssuerRef,
) -> Result<DynamicObject, BuildError> {
    let watch_label = crate::operator::controller::WATCH_SECRET_LABEL;
    let spec = serde_json::json!({
        "secretName": secret_name,
        "dnsNames": certificate_dns_names(gw),
        "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        // The label makes the operator see the Secret as soon as cert-manager writes it.
        "secretTemplate": {"labels": {watch_label: "true"}},
    });
    dynamic(gw, name, &certificate_resource(), spec)
}

fn build_service(gw: &StompGateway, name: &str) -> Result<Service, BuildError> {
    let spec = &gw.spec;
    let mut metadata = meta(gw, name.to_string())?;
    if !spec.service.annotations.is_empty() {
        metadata.annotations = Some(spec.service.annotations.clone());
    }
    let mut ports = vec![ServicePort {
        name: Some("ws".into()),
        port: spec.web_socket.port,
        target_port: Some(IntOrString::String("ws".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }];
    if spec.stomp.enabled {
        ports.push(ServicePort {
            name: Some("stomp".into()),
            port: spec.stomp.port,
            target_port: Some(IntOrString::String("stomp".into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        });
    }
    Ok(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.service.type_.as_str().into()),
            selector: Some(selector_labels(name)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn secret_volume(name: &str, secret: &str, items: &[(&str, &str)]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(
                items
                    .iter()
                    .map(|(key, path)| KeyToPath {
                        key: (*key).into(),
                        path: (*path).into(),
                        ..KeyToPath::default()
                    })
                    .collect(),
            ),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(K8sSecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn probe(path: &str, period: i32, failures: i32, tls: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("ws".into()),
            // With listener TLS the health endpoints are https too (the kubelet does not
            // verify the certificate).
            scheme: tls.then(|| "HTTPS".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The restricted-profile container securityContext.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn build_pod_template(
    gw: &StompGateway,
    name: &str,
    config: &str,
    inputs: &BuildInputs,
) -> PodTemplateSpec {
    let spec = &gw.spec;
    let r = &spec.rabbitmq;
    let mut env = Vec::new();
    if let Some(u) = &r.uri_secret_ref {
        env.push(secret_env("STOMPGATE_AMQP_URL", &u.name, &u.key));
    }
    if let Some(c) = &r.credentials_secret_ref {
        env.push(secret_env(
            "STOMPGATE_AMQP_USERNAME",
            &c.name,
            &c.username_key,
        ));
        env.push(secret_env(
            "STOMPGATE_AMQP_PASSWORD",
            &c.name,
            &c.password_key,
        ));
    }
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(name),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if let Some(ca) = r.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        // An env var, not a config key: a gateway without the flag ignores it instead of
        // refusing the config file.
        env.push(EnvVar {
            name: "STOMPGATE_AMQP_TLS_CA_FILE".into(),
            value: Some(format!("{CA_DIR}/ca.crt")),
            ..EnvVar::default()
        });
        mounts.push(VolumeMount {
            name: "broker-ca".into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "broker-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: "ca.crt".into(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    // Listener certificate and JWT keys: whole-Secret volumes (no subPath), so the kubelet
    // swaps rotated files in place and the gateway reloads them without a restart.
    if let Some(t) = &spec.tls {
        mounts.push(VolumeMount {
            name: "listener-tls".into(),
            mount_path: LISTENER_TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(secret_volume(
            "listener-tls",
            &t.secret_name,
            &[("tls.crt", "tls.crt"), ("tls.key", "tls.key")],
        ));
    }
    if let (AuthMode::Jwt, Some(jwt)) = (spec.auth.mode, &spec.auth.jwt) {
        let mut sources = Vec::new();
        if let Some(r) = &jwt.jwks_secret_ref {
            sources.push((r.name.as_str(), r.key.as_str(), JWKS_FILE));
        }
        if let Some(r) = &jwt.hs256_secret_ref {
            sources.push((r.name.as_str(), r.key.as_str(), HS256_FILE));
        }
        mounts.push(VolumeMount {
            name: "jwt-keys".into(),
            mount_path: JWT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "jwt-keys".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(
                    sources
                        .into_iter()
                        .map(|(secret, key, path)| VolumeProjection {
                            secret: Some(SecretProjection {
                                name: secret.into(),
                                items: Some(vec![KeyToPath {
                                    key: key.into(),
                                    path: path.into(),
                                    ..KeyToPath::default()
                                }]),
                                optional: Some(false),
                            }),
                            ..VolumeProjection::default()
                        })
                        .collect(),
                ),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let mut ports = vec![ContainerPort {
        name: Some("ws".into()),
        container_port: spec.web_socket.port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }];
    if spec.stomp.enabled {
        ports.push(ContainerPort {
            name: Some("stomp".into()),
            container_port: spec.stomp.port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        });
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(effective_image(spec, inputs)),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec![
            "gateway".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: (!env.is_empty()).then_some(env),
        ports: Some(ports),
        liveness_probe: Some(probe("/healthz", 10, 3, spec.tls.is_some())),
        readiness_probe: Some(probe("/readyz", 5, 2, spec.tls.is_some())),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRESTOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("256Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let config_hash = sha256_hex(&[config.as_bytes(), inputs.secret_hash.as_bytes()]);
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(name)),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_string(),
                config_hash,
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(
                PRESTOP_SLEEP_SECONDS
                    + i64::from(spec.drain_timeout_seconds)
                    + TERMINATION_MARGIN_SECONDS,
            ),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    };
    if let Some(user) = spec.pod_template.clone() {
        // Strategic merge (containers/volumes by name), so an override adds to the template.
        template.merge_from(user);
        // The selector labels must survive any override, or the Deployment is invalid.
        let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .extend(labels(name));
    }
    template
}

/// The metric name of the gateway's open-connections gauge, as `/metrics` exports it; the
/// HPA's Pods metric for `spec.autoscaling.targetConnectionsPerPod` asks the custom metrics
/// API for it by this name.
pub const CONNECTIONS_METRIC: &str = "stompgate_connections";
/// CPU target when `spec.autoscaling` names none (the HPA's own default).
pub const DEFAULT_CPU_TARGET: i32 = 80;

/// The HorizontalPodAutoscaler of `spec.autoscaling`. It scales the gateway Deployment
/// directly: the StompGateway's scale subresource maps to `spec.replicas`, which autoscaling
/// excludes (an HPA reading 0 there would disable itself), and the operator leaves the
/// Deployment's replicas to whoever scales it.
pub fn build_hpa(
    gw: &StompGateway,
    name: &str,
    a: &crate::crd::AutoscalingSpec,
) -> Result<HorizontalPodAutoscaler, BuildError> {
    let mut metrics = Vec::new();
    let cpu = match (
        a.target_cpu_utilization_percentage,
        a.target_connections_per_pod,
    ) {
        (Some(c), _) => Some(c),
        (None, None) => Some(DEFAULT_CPU_TARGET),
        (None, Some(_)) => None,
    };
    if let Some(c) = cpu {
        metrics.push(MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(c),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    if let Some(n) = a.target_connections_per_pod {
        metrics.push(MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: CONNECTIONS_METRIC.into(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(n.to_string())),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    Ok(HorizontalPodAutoscaler {
        metadata: meta(gw, name.to_string())?,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.to_string(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            behavior: None,
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

fn build_deployment(
    gw: &StompGateway,
    name: &str,
    config: &str,
    inputs: &BuildInputs,
) -> Result<Deployment, BuildError> {
    Ok(Deployment {
        metadata: meta(gw, name.to_string())?,
        spec: Some(DeploymentSpec {
            // Omitted when unset so an autoscaler, not this field manager, owns replicas.
            replicas: gw.spec.replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            },
            revision_history_limit: Some(5),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: build_pod_template(gw, name, config, inputs),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// In-cluster URLs for `status.endpoints`.
pub fn endpoints(gw: &StompGateway) -> crate::crd::Endpoints {
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    let host = format!("{name}.{ns}.svc");
    let ws = &gw.spec.web_socket;
    let (wss, https) = if gw.spec.tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    crate::crd::Endpoints {
        web_socket: format!("{wss}://{host}:{}{}", ws.port, ws.path),
        sock_js: ws
            .sock_js
            .enabled
            .then(|| format!("{https}://{host}:{}{}", ws.port, ws.sock_js.path)),
        stomp: gw
            .spec
            .stomp
            .enabled
            .then(|| format!("{host}:{}", gw.spec.stomp.port)),
        external: external_endpoints(&gw.spec),
    }
}

/// URLs through the Ingress (wss/https when it has TLS) or else the HTTPRoute's first host
/// name without wildcard (wss/https: Gateway listeners for public hosts are HTTPS).
pub fn external_endpoints(spec: &StompGatewaySpec) -> Option<crate::crd::ExternalEndpoints> {
    let (host, tls) = match (&spec.ingress, &spec.route) {
        (Some(i), _) => (i.host.clone(), i.tls.is_some()),
        (None, Some(r)) => (
            r.hostnames.iter().find(|h| !h.starts_with('*'))?.clone(),
            true,
        ),
        (None, None) => return None,
    };
    let (wss, https) = if tls {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let ws = &spec.web_socket;
    Some(crate::crd::ExternalEndpoints {
        web_socket: format!("{wss}://{host}{}", ws.path),
        sock_js: ws
            .sock_js
            .enabled
            .then(|| format!("{https}://{host}{}", ws.sock_js.path)),
    })
}

/// The children as a list of JSON objects (apply order), for `render` and tests.
pub fn to_values(children: &Children) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    let mut out = vec![
        serde_json::to_value(&children.config_map)?,
        serde_json::to_value(&children.service)?,
        serde_json::to_value(&children.deployment)?,
    ];
    if let Some(p) = &children.pdb {
        out.push(serde_json::to_value(p)?);
    }
    if let Some(h) = &children.hpa {
        out.push(serde_json::to_value(h)?);
    }
    if let Some(c) = &children.certificate {
        out.push(serde_json::to_value(c)?);
    }
    if let Some(i) = &children.ingress {
        out.push(serde_json::to_value(i)?);
    }
    if let Some(r) = &children.route {
        out.push(serde_json::to_value(r)?);
    }
    if let Some(n) = &children.network_policy {
        out.push(serde_json::to_value(n)?);
    }
    Ok(out)
}
