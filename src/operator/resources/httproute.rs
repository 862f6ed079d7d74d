//! `spec.route`: a Gateway API (gateway.networking.k8s.io/v1) HTTPRoute for the WebSocket and
//! SockJS paths, as a dynamic object (the kind may not be served).

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::{BuildError, dynamic, routed_paths};
use crate::crd::StompGateway;

/// The Gateway API HTTPRoute kind.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

pub(super) fn build_route(
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
