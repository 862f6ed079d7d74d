//! `spec.tls.issuerRef`: a cert-manager.io/v1 Certificate that writes the listener Secret, as a
//! dynamic object (the kind may not be served).

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::{BuildError, dynamic};
use crate::crd::StompGateway;

/// The cert-manager Certificate kind.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
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

pub(super) fn build_certificate(
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
