//! The `StompGateway` API (`stompgate.io/v1alpha1`): spec and status types, the schema the API
//! server validates (defaults, list markers, CEL rules) and the CRD printer.
//!
//! Everything here is data: the controller never writes `spec`, it reports effective values in
//! `status`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::{JsonSchema, json_schema};
use serde::{Deserialize, Serialize};

pub mod reference;

/// API group of every stompgate resource.
pub const GROUP: &str = "stompgate.io";
/// Served and stored version.
pub const VERSION: &str = "v1alpha1";

/// A STOMP-over-WebSocket gateway in front of a RabbitMQ broker, plus the exchanges and bindings
/// it needs.
// The printcolumn attributes repeat `type_`, which that lint mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stompgate.io",
    version = "v1alpha1",
    kind = "StompGateway",
    plural = "stompgateways",
    namespaced,
    shortname = "stompgw",
    category = "messaging",
    status = "StompGatewayStatus",
    derive = "PartialEq",
    doc = "StompGateway runs stompgate gateway pods in front of a RabbitMQ broker and declares the exchanges and bindings they use.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoints.webSocket"
    ),
    printcolumn(
        name = "External",
        type_ = "string",
        json_path = ".status.endpoints.external.webSocket"
    ),
    printcolumn(
        name = "Conns/Pod",
        type_ = "string",
        description = "Average open client connections per gateway pod, as the HorizontalPodAutoscaler last read them (spec.autoscaling.targetConnectionsPerPod)",
        json_path = ".status.autoscaling.currentConnectionsPerPod",
        priority = 1
    ),
    printcolumn(
        name = "HPA-Current",
        type_ = "integer",
        description = "Gateway pods the HorizontalPodAutoscaler sees (spec.autoscaling)",
        json_path = ".status.autoscaling.currentReplicas",
        priority = 1
    ),
    printcolumn(
        name = "HPA-Desired",
        type_ = "integer",
        description = "Gateway pods the HorizontalPodAutoscaler wants (spec.autoscaling)",
        json_path = ".status.autoscaling.desiredReplicas",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.auth.mode != 'ServiceUser' || has(self.rabbitmq.credentialsSecretRef) || has(self.rabbitmq.uriSecretRef) || has(self.rabbitmq.clusterRef)")
        .message("spec.auth.mode ServiceUser needs broker credentials: set spec.rabbitmq.credentialsSecretRef (or put them in spec.rabbitmq.uriSecretRef)"),
    validation = Rule::new("!self.stomp.enabled || self.stomp.port != self.webSocket.port")
        .message("spec.stomp.port must differ from spec.webSocket.port; pick another port for plain STOMP"),
    validation = Rule::new("self.auth.mode != 'JWT' || has(self.auth.jwt)")
        .message("spec.auth.mode JWT needs spec.auth.jwt (jwksSecretRef or hs256SecretRef, issuer, audience)"),
    validation = Rule::new("!has(self.auth.jwt) || self.auth.mode == 'JWT'")
        .message("spec.auth.jwt is used only with spec.auth.mode JWT; set the mode or remove spec.auth.jwt"),
    validation = Rule::new("self.auth.mode != 'JWT' || has(self.rabbitmq.credentialsSecretRef) || has(self.rabbitmq.uriSecretRef) || has(self.rabbitmq.clusterRef)")
        .message("spec.auth.mode JWT needs the service user's broker credentials: set spec.rabbitmq.credentialsSecretRef (or put them in spec.rabbitmq.uriSecretRef)"),
    validation = Rule::new("!has(self.ingress) || (self.webSocket.path.startsWith(self.ingress.path) && (!self.webSocket.sockJs.enabled || self.webSocket.sockJs.path.startsWith(self.ingress.path)))")
        .message("spec.webSocket.path and spec.webSocket.sockJs.path must be under spec.ingress.path (the Ingress routes them as they are, without rewriting)"),
    validation = Rule::new("!has(self.route) || (self.webSocket.path.startsWith(self.route.path) && (!self.webSocket.sockJs.enabled || self.webSocket.sockJs.path.startsWith(self.route.path)))")
        .message("spec.webSocket.path and spec.webSocket.sockJs.path must be under spec.route.path (the HTTPRoute routes them as they are, without rewriting)"),
    validation = Rule::new("!has(self.autoscaling) || !has(self.replicas)")
        .message("spec.replicas and spec.autoscaling exclude each other: the HorizontalPodAutoscaler sets the replica count; remove spec.replicas")
)]
pub struct StompGatewaySpec {
    /// Where the gateways and the operator connect.
    pub rabbitmq: RabbitmqSpec,
    /// Number of gateway pods. Omit it when an autoscaler drives the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Gateway image; empty means the operator's --gateway-image. The effective image is in
    /// status.gatewayImage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,
    /// How STOMP clients authenticate to RabbitMQ.
    #[serde(default)]
    pub auth: AuthSpec,
    /// WebSocket and SockJS listener.
    #[serde(default)]
    pub web_socket: WebSocketSpec,
    /// Plain STOMP over TCP listener.
    #[serde(default)]
    pub stomp: StompSpec,
    /// Heartbeats the gateway offers to STOMP clients.
    #[serde(default)]
    pub heartbeat: HeartbeatSpec,
    /// Per-pod limits.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Seconds a pod keeps serving open sessions after SIGTERM.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_timeout_seconds: i32,
    /// The Service in front of the gateway pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// The PodDisruptionBudget of the gateway pods.
    #[serde(default)]
    pub pod_disruption_budget: PdbSpec,
    /// Merged (strategic merge: containers by name) into the generated pod template, e.g.
    /// resources, nodeSelector, tolerations. It cannot replace the generated template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_template_schema")]
    pub pod_template: Option<PodTemplateSpec>,
    /// Exchanges and bindings declared in RabbitMQ.
    #[serde(default)]
    pub topology: TopologySpec,
    /// Stops changing anything (children and broker); status is still refreshed.
    #[serde(default)]
    pub paused: bool,
    /// A networking.k8s.io/v1 Ingress for the WebSocket and SockJS paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// A Gateway API (gateway.networking.k8s.io/v1) HTTPRoute for the WebSocket and SockJS
    /// paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteSpec>,
    /// TLS on the gateway's own listeners (wss, https, STOMP over TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsSpec>,
    /// A NetworkPolicy for the gateway pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// An autoscaling/v2 HorizontalPodAutoscaler for the gateway pods; it, not the operator,
    /// then sets the replica count (spec.replicas must be unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// The gateway's HorizontalPodAutoscaler.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas"))]
pub struct AutoscalingSpec {
    /// Fewest gateway pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most gateway pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilization (percent of the CPU request) to keep; 80 when neither target is
    /// set. The gateway container needs a CPU request (spec.podTemplate) for it to work.
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// Average open client connections per pod to keep: a Pods metric named
    /// stompgate_connections (the gateway's gauge, summed over its transport label), which a
    /// Prometheus adapter or KEDA must serve through the custom metrics API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub target_connections_per_pod: Option<i32>,
}

fn default_min_replicas() -> i32 {
    1
}

/// The Ingress in front of the gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// IngressClass name (e.g. nginx); empty: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("spec.ingress.className must be the name of an IngressClass (lowercase DNS name), e.g. nginx"))]
    pub class_name: Option<String>,
    /// Public host name, e.g. push.example.org.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("spec.ingress.host must be a lowercase DNS name without wildcard, scheme or port, e.g. push.example.org"))]
    pub host: String,
    /// Path prefix the gateway's endpoints live under on that host.
    #[serde(default = "default_root_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("spec.ingress.path must start with '/', e.g. /"))]
    pub path: String,
    /// Annotations of the Ingress; they override the WebSocket-friendly defaults.
    #[serde(default)]
    #[schemars(schema_with = "string_map_schema")]
    pub annotations: BTreeMap<String, String>,
    /// TLS at the ingress controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SecretNameRef>,
}

fn default_root_path() -> String {
    "/".into()
}

/// A Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretNameRef {
    /// Secret name (type kubernetes.io/tls).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// The Gateway API HTTPRoute in front of the gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// The Gateways (listeners) the route attaches to.
    #[schemars(schema_with = "parent_refs_schema")]
    pub parent_refs: Vec<ParentRef>,
    /// Host names the route serves (the first one without wildcard is the external endpoint).
    #[serde(default)]
    #[schemars(schema_with = "hostnames_schema")]
    pub hostnames: Vec<String>,
    /// Path prefix the gateway's endpoints live under.
    #[serde(default = "default_root_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("spec.route.path must start with '/', e.g. /"))]
    pub path: String,
}

/// A Gateway API parentRef.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Gateway name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Gateway namespace (default: the StompGateway's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Listener name on that Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

fn parent_refs_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = generator.subschema_for::<ParentRef>();
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 32,
        "x-kubernetes-list-type": "atomic",
        "items": item,
    })
}

fn hostnames_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "array",
        "maxItems": 16,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": 253,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
                "message": "spec.route.hostnames entries must be lowercase DNS names, optionally starting with *. (e.g. push.example.org)"
            }]
        }
    })
}

/// TLS on the gateway listeners.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTlsSpec {
    /// A kubernetes.io/tls Secret (keys tls.crt, tls.key), mounted into the gateway pods; a
    /// rotation is picked up without a restart.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// A cert-manager issuer: the operator then creates a cert-manager Certificate that
    /// writes secretName, for the ingress/route host names (else the in-cluster names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// A cert-manager issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct IssuerRef {
    /// Issuer name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Issuer or ClusterIssuer (or an external issuer's kind).
    #[serde(default = "default_issuer_kind")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// JWT authentication of STOMP clients.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jwksSecretRef) || has(self.hs256SecretRef)")
    .message("spec.auth.jwt needs jwksSecretRef (RS256 public keys) or hs256SecretRef (shared secret)"))]
pub struct JwtSpec {
    /// Secret key with a JWKS (RS256 public keys, by kid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<JwksSecretRef>,
    /// Secret key with an HS256 shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret_ref: Option<Hs256SecretRef>,
    /// Required `iss` (unchecked when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: Option<String>,
    /// Required `aud` (unchecked when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
    /// Claim with `{"subscribe": [patterns], "send": [patterns]}`.
    #[serde(default = "default_destinations_claim")]
    #[schemars(length(min = 1, max = 253))]
    pub destinations_claim: String,
}

fn default_destinations_claim() -> String {
    "stomp_destinations".into()
}

/// The Secret key holding a JWKS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JwksSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_jwks_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_jwks_key() -> String {
    "jwks.json".into()
}

/// The Secret key holding an HS256 secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Hs256SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_hs256_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_hs256_key() -> String {
    "secret".into()
}

/// The gateway pods' NetworkPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicy (false removes it).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may connect to the gateway ports (e.g. the ingress controller's namespace, and
    /// Prometheus); empty: anyone, on those ports only.
    #[serde(default)]
    #[schemars(schema_with = "peers_schema")]
    pub from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
    /// Where the broker is (narrows egress on the broker port); empty: any address.
    #[serde(default)]
    #[schemars(schema_with = "peers_schema")]
    pub broker: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
}

fn peers_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // NetworkPolicyPeer by hand: k8s-openapi's generated schema has lists without a list type.
    let selector = serde_json::json!({
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {
                "type": "array",
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"type": "array", "x-kubernetes-list-type": "atomic", "items": {"type": "string"}}
                    }
                }
            }
        }
    });
    json_schema!({
        "type": "array",
        "maxItems": 32,
        "x-kubernetes-list-type": "atomic",
        "items": {
            "type": "object",
            "description": "A NetworkPolicyPeer: podSelector and/or namespaceSelector, or ipBlock.",
            "properties": {
                "podSelector": selector,
                "namespaceSelector": selector,
                "ipBlock": {
                    "type": "object",
                    "required": ["cidr"],
                    "properties": {
                        "cidr": {"type": "string"},
                        "except": {"type": "array", "x-kubernetes-list-type": "atomic", "items": {"type": "string"}}
                    }
                }
            },
            "x-kubernetes-validations": [{
                "rule": "!has(self.ipBlock) || (!has(self.podSelector) && !has(self.namespaceSelector))",
                "message": "spec.networkPolicy peers: ipBlock cannot be combined with podSelector or namespaceSelector"
            }, {
                "rule": "has(self.ipBlock) || has(self.podSelector) || has(self.namespaceSelector)",
                "message": "spec.networkPolicy peers need podSelector, namespaceSelector or ipBlock"
            }]
        }
    })
}

fn default_drain_timeout() -> i32 {
    30
}

/// Broker connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.clusterRef) || has(self.host) != has(self.uriSecretRef)")
        .message("spec.rabbitmq needs exactly one of host or uriSecretRef (or clusterRef alone); remove one of them"),
    validation = Rule::new("!has(self.clusterRef) || (!has(self.host) && !has(self.uriSecretRef) && !has(self.credentialsSecretRef) && !has(self.tls))")
        .message("spec.rabbitmq.clusterRef takes the address, credentials and TLS from the RabbitmqCluster: remove host, uriSecretRef, credentialsSecretRef and tls")
)]
pub struct RabbitmqSpec {
    /// A RabbitmqCluster of the RabbitMQ Cluster Operator (rabbitmq.com/v1beta1) instead of
    /// host and Secrets: address, default user and TLS come from its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<ClusterRef>,
    /// Broker host name, e.g. rabbitmq.messaging.svc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$')")
        .message("spec.rabbitmq.host must be a DNS name or IPv4 address without scheme or port, e.g. rabbitmq.messaging.svc"))]
    pub host: Option<String>,
    /// A Secret key holding an amqp(s):// URI (credentials may be in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_secret_ref: Option<SecretKeySelector>,
    /// Broker AMQP port.
    #[serde(default = "default_amqp_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535")
        .message("spec.rabbitmq.port must be a TCP port from 1 to 65535, e.g. 5672"))]
    pub port: i32,
    /// Virtual host.
    #[serde(default = "default_vhost")]
    #[schemars(length(min = 1, max = 255))]
    pub vhost: String,
    /// Secret with the broker user (keys `username`, `password` unless renamed). The operator
    /// uses it for topology; gateways use it in ServiceUser mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// TLS to the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// A RabbitmqCluster by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClusterRef {
    /// RabbitmqCluster name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; only the StompGateway's own is supported (the gateway pods read the
    /// cluster's default-user Secret, which Kubernetes gives only to pods of its namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

fn default_amqp_port() -> i32 {
    5672
}
fn default_vhost() -> String {
    "/".into()
}

/// One key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeySelector {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret with a broker user name and password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the user name.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key holding the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

/// TLS settings for the broker connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Connect with amqps.
    #[serde(default)]
    pub enabled: bool,
    /// A Secret key with the CA bundle that signs the broker certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeySelector>,
}

/// Client authentication.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct AuthSpec {
    /// Passthrough: STOMP login/passcode are RabbitMQ credentials. ServiceUser: the gateway
    /// connects with credentialsSecretRef for everyone. JWT: clients present a token (checked
    /// with auth.jwt's keys) and the gateway connects as the service user.
    #[serde(default)]
    pub mode: AuthMode,
    /// JWT settings (mode JWT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
}

/// How STOMP clients authenticate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// STOMP CONNECT login/passcode are passed to RabbitMQ.
    #[default]
    Passthrough,
    /// The gateway uses its configured credentials for everyone.
    ServiceUser,
    /// Clients log in with a JWT; the gateway uses the service user's credentials.
    #[serde(rename = "JWT")]
    Jwt,
}

/// WebSocket and SockJS listener settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketSpec {
    /// Listen port (also serves /healthz, /readyz, /metrics).
    #[serde(default = "default_ws_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535")
        .message("spec.webSocket.port must be a TCP port from 1 to 65535, e.g. 15674"))]
    pub port: i32,
    /// Raw WebSocket path.
    #[serde(default = "default_ws_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("spec.webSocket.path must start with '/', e.g. /ws"))]
    pub path: String,
    /// Origins allowed to open a WebSocket; empty allows any. Each is `scheme://host[:port]`
    /// or `*`.
    #[serde(default)]
    #[schemars(schema_with = "origins_schema")]
    pub allowed_origins: Vec<String>,
    /// SockJS endpoint.
    #[serde(default)]
    pub sock_js: SockJsSpec,
}

impl Default for WebSocketSpec {
    fn default() -> Self {
        Self {
            port: default_ws_port(),
            path: default_ws_path(),
            allowed_origins: Vec::new(),
            sock_js: SockJsSpec::default(),
        }
    }
}

fn default_ws_port() -> i32 {
    15674
}
fn default_ws_path() -> String {
    "/ws".into()
}

/// The regex that the schema and the linter apply to allowed origins.
pub const ORIGIN_PATTERN: &str =
    r"^(\*|https?://(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?)$";

fn origins_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "set",
        "maxItems": 64,
        "items": {
            "type": "string",
            "maxLength": 253,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{}')", ORIGIN_PATTERN.replace('\\', "\\\\")),
                "message": "spec.webSocket.allowedOrigins entries must be scheme://host[:port] without path or trailing slash (e.g. https://app.example.com), or *"
            }]
        }
    })
}

/// SockJS settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SockJsSpec {
    /// Serve SockJS.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// SockJS path prefix.
    #[serde(default = "default_sockjs_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("spec.webSocket.sockJs.path must start with '/', e.g. /stomp"))]
    pub path: String,
}

impl Default for SockJsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            path: default_sockjs_path(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_sockjs_path() -> String {
    "/stomp".into()
}

/// Plain STOMP over TCP.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StompSpec {
    /// Open the TCP listener.
    #[serde(default)]
    pub enabled: bool,
    /// TCP port.
    #[serde(default = "default_stomp_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535")
        .message("spec.stomp.port must be a TCP port from 1 to 65535, e.g. 61613"))]
    pub port: i32,
}

impl Default for StompSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            port: default_stomp_port(),
        }
    }
}

fn default_stomp_port() -> i32 {
    61613
}

/// STOMP heart-beat offer, in milliseconds (0 disables that direction).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSpec {
    /// How often the gateway sends.
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 0, max = 3_600_000))]
    pub server_ms: i32,
    /// How often the gateway expects the client to send.
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 0, max = 3_600_000))]
    pub client_ms: i32,
}

impl Default for HeartbeatSpec {
    fn default() -> Self {
        Self {
            server_ms: default_heartbeat(),
            client_ms: default_heartbeat(),
        }
    }
}

fn default_heartbeat() -> i32 {
    10_000
}

/// Per-pod limits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Concurrent client connections per pod.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: i32,
    /// Largest STOMP frame accepted, in bytes.
    #[serde(default = "default_max_frame_bytes")]
    #[schemars(range(min = 1024, max = 134_217_728))]
    pub max_frame_bytes: i32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_frame_bytes: default_max_frame_bytes(),
        }
    }
}

fn default_max_connections() -> i32 {
    10_000
}
fn default_max_frame_bytes() -> i32 {
    4_194_304
}

/// The gateway Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Extra Service annotations (e.g. for a cloud load balancer).
    #[serde(default)]
    #[schemars(schema_with = "string_map_schema")]
    pub annotations: BTreeMap<String, String>,
}

/// Kubernetes Service type.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// Cluster-internal virtual IP.
    #[default]
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// A cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The gateway PodDisruptionBudget.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    /// Create a PodDisruptionBudget.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods that may be down at once during voluntary disruptions.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_unavailable: i32,
}

impl Default for PdbSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: default_max_unavailable(),
        }
    }
}

fn default_max_unavailable() -> i32 {
    1
}

/// RabbitMQ objects the operator keeps declared.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopologySpec {
    /// Exchanges, keyed by name.
    #[serde(default)]
    #[schemars(schema_with = "exchanges_schema")]
    pub exchanges: Vec<ExchangeSpec>,
    /// Bindings, keyed by source, destinationType, destination and routingKey.
    #[serde(default)]
    #[schemars(schema_with = "bindings_schema")]
    pub bindings: Vec<BindingSpec>,
    /// What to do when an exchange exists with other properties.
    #[serde(default)]
    pub on_conflict: OnConflict,
    /// What happens in RabbitMQ when the StompGateway is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Seconds between re-assertions of the topology (drift repair).
    #[serde(default = "default_resync")]
    #[schemars(range(min = 10, max = 86_400))]
    pub resync_interval_seconds: i32,
}

impl Default for TopologySpec {
    fn default() -> Self {
        Self {
            exchanges: Vec::new(),
            bindings: Vec::new(),
            on_conflict: OnConflict::default(),
            deletion_policy: DeletionPolicy::default(),
            resync_interval_seconds: default_resync(),
        }
    }
}

fn default_resync() -> i32 {
    300
}

/// Conflict policy for existing exchanges.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Stall with reason ExchangeConflict.
    #[default]
    Fail,
    /// Use the existing exchange as it is; never delete it.
    Adopt,
}

/// Broker-side deletion policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Leave everything in RabbitMQ.
    #[default]
    Retain,
    /// Delete what this StompGateway created (never adopted objects).
    Delete,
}

/// An exchange.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeSpec {
    /// Exchange name.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = Rule::new("!self.startsWith('amq.')")
        .message("spec.topology.exchanges[].name: names starting with 'amq.' are reserved by RabbitMQ; choose another name"))]
    pub name: String,
    /// direct, fanout, topic, headers, or a plugin type starting with x-.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(
        validation = Rule::new("self in ['direct', 'fanout', 'topic', 'headers'] || self.startsWith('x-')")
            .message("spec.topology.exchanges[].type must be direct, fanout, topic, headers, or a plugin type starting with x-"),
        validation = Rule::new("self == oldSelf")
            .message("spec.topology.exchanges[].type is immutable; add an exchange under a new name instead")
    )]
    pub type_: String,
    /// Survives a broker restart.
    #[serde(default = "default_true")]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("spec.topology.exchanges[].durable is immutable; add an exchange under a new name instead"))]
    pub durable: bool,
    /// Deleted by RabbitMQ when its last binding goes.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("spec.topology.exchanges[].autoDelete is immutable; add an exchange under a new name instead"))]
    pub auto_delete: bool,
    /// Only other exchanges may publish to it.
    #[serde(default)]
    pub internal: bool,
    /// Exchange arguments (e.g. alternate-exchange).
    #[serde(default)]
    #[schemars(schema_with = "arguments_schema")]
    pub arguments: BTreeMap<String, IntOrString>,
}

/// What a binding routes to.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DestinationType {
    /// A queue.
    #[default]
    Queue,
    /// Another exchange.
    Exchange,
}

impl DestinationType {
    /// The spelling used in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Exchange => "exchange",
        }
    }
}

/// A binding from an exchange to a queue or an exchange.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BindingSpec {
    /// Source exchange.
    #[schemars(length(min = 1, max = 255))]
    pub source: String,
    /// Destination queue or exchange (it must exist, or be declared here).
    #[schemars(length(min = 1, max = 255))]
    pub destination: String,
    /// queue or exchange.
    #[serde(default)]
    pub destination_type: DestinationType,
    /// Routing key (pattern for topic exchanges).
    #[serde(default)]
    #[schemars(length(max = 255))]
    pub routing_key: String,
    /// Binding arguments (headers exchanges).
    #[serde(default)]
    #[schemars(schema_with = "arguments_schema")]
    pub arguments: BTreeMap<String, IntOrString>,
}

fn arguments_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": {"x-kubernetes-int-or-string": true},
    })
}

fn string_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string"},
    })
}

fn exchanges_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = generator.subschema_for::<ExchangeSpec>();
    json_schema!({
        "type": "array",
        "maxItems": 128,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": item,
    })
}

fn bindings_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = generator.subschema_for::<BindingSpec>();
    json_schema!({
        "type": "array",
        "maxItems": 256,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["source", "destinationType", "destination", "routingKey"],
        "items": item,
    })
}

// A full PodTemplateSpec schema would add ~400 KB to the CRD; keep it a typed raw object.
fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Observed state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StompGatewayStatus {
    /// The generation this status describes (set on every write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled, BrokerConnected, TopologyReady, GatewayAvailable, Paused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Gateway pods (scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Ready gateway pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the gateway pods (scale subresource).
    #[serde(default)]
    pub selector: String,
    /// The image the gateway pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_image: Option<String>,
    /// In-cluster URLs of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// What exists in RabbitMQ, and whether this StompGateway created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyStatus>,
    /// What the HorizontalPodAutoscaler of spec.autoscaling last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
}

/// The HorizontalPodAutoscaler's view, copied from its status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Name of the HorizontalPodAutoscaler.
    pub name: String,
    /// Gateway pods it last saw.
    #[serde(default)]
    pub current_replicas: i32,
    /// Gateway pods it last asked for.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Average open connections per pod it last read (a Kubernetes quantity; absent without
    /// targetConnectionsPerPod or before the metric is served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_connections_per_pod: Option<String>,
}

/// In-cluster URLs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// ws:// URL of the raw WebSocket endpoint.
    pub web_socket: String,
    /// http:// URL of the SockJS endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sock_js: Option<String>,
    /// host:port of the plain STOMP listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stomp: Option<String>,
    /// URLs through the Ingress or HTTPRoute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalEndpoints>,
}

/// URLs from outside the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalEndpoints {
    /// wss:// (or ws://) URL of the raw WebSocket endpoint.
    pub web_socket: String,
    /// https:// (or http://) URL of the SockJS endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sock_js: Option<String>,
}

/// The ownership ledger of broker objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TopologyStatus {
    /// Exchanges.
    #[serde(default)]
    #[schemars(schema_with = "exchange_status_schema")]
    pub exchanges: Vec<ExchangeStatus>,
    /// Bindings as last applied.
    #[serde(default)]
    #[schemars(schema_with = "binding_status_schema")]
    pub bindings: Vec<BindingStatus>,
}

/// One exchange.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ExchangeStatus {
    /// Name.
    pub name: String,
    /// Declared, Adopted, Conflict, Recreated or Pending.
    pub state: String,
    /// True when this StompGateway created it (only those are ever deleted).
    pub owned: bool,
}

/// One binding, as applied (the old one is unbound with these exact arguments).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingStatus {
    /// Source exchange.
    pub source: String,
    /// Destination.
    pub destination: String,
    /// queue or exchange.
    pub destination_type: DestinationType,
    /// Routing key.
    #[serde(default)]
    pub routing_key: String,
    /// Arguments.
    #[serde(default)]
    #[schemars(schema_with = "arguments_schema")]
    pub arguments: BTreeMap<String, IntOrString>,
    /// Declared or Pending.
    pub state: String,
    /// True when this StompGateway created it.
    pub owned: bool,
}

fn exchange_status_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = generator.subschema_for::<ExchangeStatus>();
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": item,
    })
}

fn binding_status_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = generator.subschema_for::<BindingStatus>();
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "atomic",
        "items": item,
    })
}

fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "properties": {
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "message": {"type": "string", "maxLength": 32768},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "reason": {"type": "string", "maxLength": 1024},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "type": {"type": "string", "maxLength": 316}
            },
            "required": ["lastTransitionTime", "message", "reason", "status", "type"]
        }
    })
}

/// The CustomResourceDefinition as YAML: the output of `stompgate crd` and the content of
/// `crds/stompgate.io_stompgateways.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&StompGateway::crd())
}

/// `stompgate crd`.
pub fn print_crd() -> Result<(), serde_yaml::Error> {
    print!("{}", crd_yaml()?);
    Ok(())
}
