//! `status`: conditions, replicas and selector (the scale subresource), endpoints, the
//! ownership ledger of broker objects, and the autoscaler's view.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::{JsonSchema, json_schema};
use serde::{Deserialize, Serialize};

use super::DestinationType;
use super::topology::arguments_schema;

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
