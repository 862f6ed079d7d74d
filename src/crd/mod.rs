//! The `StompGateway` API (`stompgate.io/v1alpha1`): spec and status types, the schema the API
//! server validates (defaults, list markers, CEL rules) and the CRD printer.
//!
//! Everything here is data: the controller never writes `spec`, it reports effective values in
//! `status`.
//!
//! One file per part of the spec: `rabbitmq` (the broker connection), `auth` (how clients log
//! in), `listeners` (WebSocket, SockJS, plain STOMP, heartbeats, limits), `exposure` (Ingress,
//! HTTPRoute, listener TLS, NetworkPolicy), `workload` (Service, PodDisruptionBudget,
//! autoscaling), `topology` (exchanges and bindings) and `status`; `reference` renders the API
//! reference. This file: the StompGateway resource, its spec root and the CRD printer. Every type
//! is re-exported here, so its path is `crate::crd::Type`.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::json_schema;
use serde::{Deserialize, Serialize};

mod auth;
mod exposure;
mod listeners;
mod rabbitmq;
pub mod reference;
mod status;
mod topology;
mod workload;

pub use auth::{AuthMode, AuthSpec, Hs256SecretRef, JwksSecretRef, JwtSpec};
pub use exposure::{
    IngressSpec, IssuerRef, ListenerTlsSpec, NetworkPolicySpec, ParentRef, RouteSpec, SecretNameRef,
};
pub use listeners::{
    HeartbeatSpec, LimitsSpec, ORIGIN_PATTERN, SockJsSpec, StompSpec, WebSocketSpec,
};
pub use rabbitmq::{ClusterRef, CredentialsSecretRef, RabbitmqSpec, SecretKeySelector, TlsSpec};
pub use status::{
    AutoscalingStatus, BindingStatus, Endpoints, ExchangeStatus, ExternalEndpoints,
    StompGatewayStatus, TopologyStatus,
};
pub use topology::{
    BindingSpec, DeletionPolicy, DestinationType, ExchangeSpec, OnConflict, TopologySpec,
};
pub use workload::{AutoscalingSpec, PdbSpec, ServiceSpec, ServiceType};

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

fn default_drain_timeout() -> i32 {
    30
}

// A full PodTemplateSpec schema would add ~400 KB to the CRD; keep it a typed raw object.
fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn default_true() -> bool {
    true
}

fn string_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string"},
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
