//! `spec.autoscaling`: the HorizontalPodAutoscaler applied (or removed with the field), and its
//! view copied into `status.autoscaling`.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::ResourceExt;

use super::Context;
use super::apply::{NamespaceGate, apply_one, delete_ours, ns_api};
use crate::crd::StompGateway;
use crate::operator::resources;

/// `spec.autoscaling`: the HorizontalPodAutoscaler applied (and its view for the status), or
/// removed with the field.
pub(super) async fn apply_autoscaler(
    ctx: &Context,
    ns: &str,
    gw: &StompGateway,
    c: &resources::Children,
    gate: &NamespaceGate<'_>,
) -> Result<Option<crate::crd::AutoscalingStatus>, kube::Error> {
    let api = ns_api::<HorizontalPodAutoscaler>(ctx, ns);
    let name = gw.name_any();
    match &c.hpa {
        Some(h) => Ok(apply_one(&api, h, gate, &ctx.own_writes)
            .await?
            .map(|live| autoscaling_status(&name, &live))),
        None => {
            if gw.status.as_ref().is_some_and(|s| s.autoscaling.is_some()) {
                delete_ours(&api, &name).await?;
            }
            Ok(None)
        }
    }
}

/// The HPA's view: replica counts and the connections metric it last read.
pub fn autoscaling_status(
    name: &str,
    hpa: &HorizontalPodAutoscaler,
) -> crate::crd::AutoscalingStatus {
    let st = hpa.status.clone().unwrap_or_default();
    let connections = st.current_metrics.iter().flatten().find_map(|m| {
        m.pods
            .as_ref()
            .filter(|p| p.metric.name == resources::CONNECTIONS_METRIC)
            .and_then(|p| p.current.average_value.as_ref())
            .map(|q| q.0.clone())
    });
    crate::crd::AutoscalingStatus {
        name: name.to_string(),
        current_replicas: st.current_replicas.unwrap_or(0),
        desired_replicas: st.desired_replicas,
        current_connections_per_pod: connections,
    }
}
