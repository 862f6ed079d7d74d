//! The PodDisruptionBudget: how many gateway pods a voluntary disruption (a node drain) may
//! take at once, when `spec.podDisruptionBudget.enabled`.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildError, meta, selector_labels};
use crate::crd::StompGateway;

pub(super) fn build_pdb(
    gw: &StompGateway,
    name: &str,
) -> Result<Option<PodDisruptionBudget>, BuildError> {
    let budget = &gw.spec.pod_disruption_budget;
    if !budget.enabled {
        return Ok(None);
    }
    Ok(Some(PodDisruptionBudget {
        metadata: meta(gw, name.to_string())?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(budget.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }))
}
