//! `spec.topology`: the exchanges and bindings the operator keeps declared in RabbitMQ, and
//! what happens to them on conflict and on deletion.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::KubeSchema;
use schemars::{JsonSchema, json_schema};
use serde::{Deserialize, Serialize};

use super::default_true;

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

pub(super) fn arguments_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": {"x-kubernetes-int-or-string": true},
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
