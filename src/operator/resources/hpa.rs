//! `spec.autoscaling`: an autoscaling/v2 HorizontalPodAutoscaler on CPU and/or the gateway's
//! open-connections metric.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{BuildError, meta};
use crate::crd::StompGateway;

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
