//! The Kubernetes objects around the gateway pods: `spec.service`, `spec.podDisruptionBudget`
//! and `spec.autoscaling` (a HorizontalPodAutoscaler).

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{default_true, string_map_schema};

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
