//! Exposure: the optional children that make the gateway reachable, `spec.tls.issuerRef` (a
//! cert-manager Certificate), `spec.ingress`, `spec.route` (a Gateway API HTTPRoute) and
//! `spec.networkPolicy`, with their conditions. A kind the cluster does not serve, or a missing
//! IngressClass, is reported in a condition rather than failed.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use kube::ResourceExt;
use kube::api::{Api, ApiResource};

use super::Context;
use super::apply::{NamespaceGate, apply_dynamic, apply_one, delete_ours, ns_api};
use crate::crd::StompGateway;
use crate::operator::resources;
use crate::operator::status::{self, Cond, Observation, Reason};

/// `spec.tls.issuerRef`: the cert-manager Certificate (CertificateReady when asked for).
pub(super) async fn apply_certificate(
    ctx: &Context,
    ns: &str,
    gw: &StompGateway,
    c: &resources::Children,
    gate: &NamespaceGate<'_>,
) -> Result<Vec<Cond>, kube::Error> {
    let name = gw.name_any();
    let ar = resources::certificate_resource();
    let had = had(gw, status::types::CERTIFICATE_READY);
    let done = apply_dynamic(ctx, ns, &ar, c.certificate.as_ref(), &name, had, gate).await?;
    let Some(cert) = &c.certificate else {
        return Ok(Vec::new());
    };
    Ok(vec![match done {
        Some(()) => Cond::new(
            status::types::CERTIFICATE_READY,
            true,
            Reason::Applied,
            format!(
                "Certificate {name} applied; cert-manager writes Secret {}",
                cert.data["spec"]["secretName"].as_str().unwrap_or_default()
            ),
        ),
        None => not_served(
            status::types::CERTIFICATE_READY,
            &ar,
            "spec.tls.issuerRef",
            "cert-manager",
        ),
    }])
}

/// `spec.ingress`, `spec.route`, `spec.networkPolicy`: applied when set, removed when not.
pub(super) async fn apply_exposure(
    ctx: &Context,
    ns: &str,
    gw: &StompGateway,
    c: &resources::Children,
    gate: &NamespaceGate<'_>,
) -> Result<Vec<Cond>, kube::Error> {
    let name = gw.name_any();
    let mut conds = Vec::new();
    let ingresses = ns_api::<Ingress>(ctx, ns);
    match &c.ingress {
        Some(i) => {
            apply_one(&ingresses, i, gate, &ctx.own_writes).await?;
            conds.push(ingress_class_state(ctx, gw).await?);
        }
        None if had(gw, status::types::INGRESS_READY) => delete_ours(&ingresses, &name).await?,
        None => {}
    }
    let ar = resources::http_route_resource();
    let had_route = had(gw, status::types::ROUTE_READY);
    let done = apply_dynamic(ctx, ns, &ar, c.route.as_ref(), &name, had_route, gate).await?;
    if c.route.is_some() {
        conds.push(match done {
            Some(()) => Cond::new(
                status::types::ROUTE_READY,
                true,
                Reason::Applied,
                format!("HTTPRoute {name} applied"),
            ),
            None => not_served(
                status::types::ROUTE_READY,
                &ar,
                "spec.route",
                "the Gateway API CRDs (standard channel) and a Gateway implementation",
            ),
        });
    }
    let policies = ns_api::<NetworkPolicy>(ctx, ns);
    match &c.network_policy {
        Some(p) => {
            apply_one(&policies, p, gate, &ctx.own_writes).await?;
            conds.push(Cond::new(
                status::types::NETWORK_POLICY_READY,
                true,
                Reason::Applied,
                format!("NetworkPolicy {name} applied"),
            ));
        }
        None if had(gw, status::types::NETWORK_POLICY_READY) => {
            delete_ours(&policies, &name).await?
        }
        None => {}
    }
    Ok(conds)
}

fn not_served(type_: &'static str, ar: &ApiResource, field: &str, what: &str) -> Cond {
    // No poll period in the message: it must not change between reconciles (no write).
    Cond::new(
        type_,
        false,
        Reason::KindNotServed,
        format!(
            "{field} asks for a {} ({}), which this cluster does not serve; install {what} and the operator creates it within a minute",
            ar.kind, ar.api_version
        ),
    )
}

/// IngressReady: the class named by `spec.ingress.className` exists (no class: the cluster's
/// default is used, nothing to check; not allowed to read IngressClasses: not checked).
async fn ingress_class_state(ctx: &Context, gw: &StompGateway) -> Result<Cond, kube::Error> {
    let name = gw.name_any();
    let class = gw.spec.ingress.as_ref().and_then(|i| i.class_name.clone());
    let applied = Cond::new(
        status::types::INGRESS_READY,
        true,
        Reason::Applied,
        format!("Ingress {name} applied"),
    );
    let Some(class) = class else {
        return Ok(applied);
    };
    let api: Api<IngressClass> = Api::all(ctx.client.clone());
    match api.get_opt(&class).await {
        Ok(Some(_)) => Ok(applied),
        Ok(None) => Ok(Cond::new(
            status::types::INGRESS_READY,
            false,
            Reason::IngressClassNotFound,
            format!(
                "Ingress {name} applied, but IngressClass {class:?} (spec.ingress.className) does not exist, so no ingress controller serves it; install the controller or fix the class name"
            ),
        )),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(applied),
        Err(e) => Err(e),
    }
}

/// Carries the exposure conditions of the last pass over to one that did not look at those
/// children (paused: with reason Paused), so that what exists is still known (and removed
/// when its field goes).
pub(super) fn keep_exposure(gw: &StompGateway, obs: &mut Observation, reason: Option<Reason>) {
    for t in [
        status::types::CERTIFICATE_READY,
        status::types::INGRESS_READY,
        status::types::ROUTE_READY,
        status::types::NETWORK_POLICY_READY,
    ] {
        if obs.exposure.iter().any(|c| c.type_ == t) {
            continue;
        }
        if let Some(prev) = status::condition(gw.status.as_ref(), t) {
            let reason = reason.unwrap_or(match prev.reason.as_str() {
                "Applied" => Reason::Applied,
                "KindNotServed" => Reason::KindNotServed,
                "IngressClassNotFound" => Reason::IngressClassNotFound,
                _ => Reason::Unknown,
            });
            obs.exposure.push(Cond::new(
                t,
                prev.status == "True",
                reason,
                prev.message.clone(),
            ));
        }
    }
}

/// Whether an earlier pass reported the child of `type_` (so one may exist to remove). The
/// children carry owner references too: whatever this misses goes with the StompGateway.
fn had(gw: &StompGateway, type_: &str) -> bool {
    status::condition(gw.status.as_ref(), type_).is_some()
}
