//! Pure builders: a `StompGateway` in, the Kubernetes objects the operator applies out.
//! Shared by the controller and `stompgate render`, so what a reviewer sees is what is applied.
//!
//! One file per kind: `deployment` (the Deployment and its pod template), `service`,
//! `config` (the ConfigMap and the gateway config file it carries), `pdb`, `ingress`,
//! `httproute`, `certificate`, `network_policy`, `hpa`; `endpoints` is the URLs in
//! `status.endpoints`. This file: what every child shares (labels, owner reference, applied
//! hash, mount paths), [`build`], which assembles the children, and [`to_values`].

mod certificate;
mod config;
mod deployment;
mod endpoints;
mod hpa;
mod httproute;
mod ingress;
mod network_policy;
mod pdb;
mod service;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use certificate::build_certificate;
use deployment::build_deployment;
use httproute::build_route;
use ingress::build_ingress;
use network_policy::build_network_policy;
use pdb::build_pdb;
use service::build_service;

use crate::crd::{StompGateway, StompGatewaySpec};

pub use certificate::{certificate_dns_names, certificate_resource};
use config::build_config_map;
pub use config::{amqp_url, config_map_name, encode_vhost, gateway_config};
pub use deployment::{
    CONTAINER, PRESTOP_SLEEP_SECONDS, TERMINATION_MARGIN_SECONDS, effective_image,
    restricted_container_security,
};
pub use endpoints::{endpoints, external_endpoints};
pub use hpa::{CONNECTIONS_METRIC, DEFAULT_CPU_TARGET, build_hpa};
pub use httproute::http_route_resource;
pub use ingress::default_ingress_annotations;
pub use network_policy::broker_ports;

/// Where the rendered gateway config file is mounted.
pub const CONFIG_DIR: &str = "/etc/stompgate";

/// The config file inside [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "gateway.yaml";

/// Where the broker CA bundle is mounted.
pub const CA_DIR: &str = "/etc/stompgate/tls";

/// Where the listener certificate (`spec.tls.secretName`) is mounted.
pub const LISTENER_TLS_DIR: &str = "/etc/stompgate/listener-tls";

/// Where the JWT keys (`spec.auth.jwt`) are mounted.
pub const JWT_DIR: &str = "/etc/stompgate/jwt";

/// File name of the JWKS in [`JWT_DIR`].
pub const JWKS_FILE: &str = "jwks.json";

/// File name of the HS256 secret in [`JWT_DIR`].
pub const HS256_FILE: &str = "hs256.secret";

/// Pod-template annotation whose change rolls the pods (config or Secret data changed).
pub const CONFIG_HASH_ANNOTATION: &str = "stompgate.io/config-hash";

/// Annotation on every child with the hash of what we applied; equal hash means no write.
pub const APPLIED_HASH_ANNOTATION: &str = "stompgate.io/applied-hash";

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "stompgateway-operator";

/// Builder failures: the StompGateway lacks what a child needs.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The object has no name or namespace.
    #[error("StompGateway has no {0}")]
    MissingMeta(&'static str),
    /// The generated config could not be serialized.
    #[error("could not serialize the gateway config: {0}")]
    Config(#[from] serde_yaml::Error),
}

/// Inputs from outside the object: operator flags and referenced Secret data.
#[derive(Clone, Debug, Default)]
pub struct BuildInputs {
    /// Image used when `spec.image` is empty (`--gateway-image`).
    pub default_image: String,
    /// Hash of the referenced Secrets' data (credentials, URI, CA); part of the pod annotation so
    /// a rotation rolls the pods. (The listener certificate and JWT keys are not in it: the
    /// gateway reloads those without a restart.)
    pub secret_hash: String,
    /// The broker's port when the URI comes from a Secret (the NetworkPolicy's egress);
    /// unknown: both AMQP ports.
    pub broker_port: Option<i32>,
}

/// Everything applied for one StompGateway, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The gateway config file.
    pub config_map: ConfigMap,
    /// Client endpoint.
    pub service: Service,
    /// The gateway pods.
    pub deployment: Deployment,
    /// Disruption budget, unless disabled.
    pub pdb: Option<PodDisruptionBudget>,
    /// `spec.autoscaling`.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// `spec.ingress`.
    pub ingress: Option<Ingress>,
    /// `spec.networkPolicy` (when enabled).
    pub network_policy: Option<NetworkPolicy>,
    /// `spec.route`: a gateway.networking.k8s.io/v1 HTTPRoute.
    pub route: Option<DynamicObject>,
    /// `spec.tls.issuerRef`: a cert-manager.io/v1 Certificate.
    pub certificate: Option<DynamicObject>,
}

/// Labels on every child; the first two also select the pods.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/component".into(), "gateway".into());
    l.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    l
}

/// The pod selector (also `status.selector`).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "stompgate".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

/// `status.selector` in label-selector string form.
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Hash of an object as we are about to apply it; stored in [`APPLIED_HASH_ANNOTATION`].
pub fn object_hash<T: serde::Serialize>(obj: &T) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    sha256_hex(&[&bytes])
}

/// Hash of Secret data, stable in key order; used for rotation roll-outs.
pub fn secret_data_hash<'a>(
    secrets: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, Vec<u8>>)>,
) -> String {
    let mut h = Sha256::new();
    for (name, data) in secrets {
        h.update(name.as_bytes());
        for (k, v) in data {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
    }
    hex::encode(h.finalize())
}

fn meta(gw: &StompGateway, name: String) -> Result<ObjectMeta, BuildError> {
    let ns = gw.namespace().ok_or(BuildError::MissingMeta("namespace"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(ns),
        labels: Some(labels(&gw.name_any())),
        owner_references: owner_ref(gw).map(|o| vec![o]),
        ..ObjectMeta::default()
    })
}

// No uid (e.g. `render` of a file that was never applied): no owner reference can be made.
fn owner_ref(gw: &StompGateway) -> Option<OwnerReference> {
    gw.controller_owner_ref(&())
}

fn with_applied_hash<T: Resource + serde::Serialize>(mut obj: T) -> T {
    let hash = object_hash(&obj);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
    obj
}

/// Builds every child. Pure: same inputs, same objects.
pub fn build(gw: &StompGateway, inputs: &BuildInputs) -> Result<Children, BuildError> {
    let name = gw
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMeta("name"))?;
    let config = gateway_config(&gw.spec)?;
    let config_map = with_applied_hash(build_config_map(gw, &name, &config)?);
    let service = with_applied_hash(build_service(gw, &name)?);
    let deployment = with_applied_hash(build_deployment(gw, &name, &config, inputs)?);
    let pdb = build_pdb(gw, &name)?.map(with_applied_hash);
    let ingress = gw
        .spec
        .ingress
        .as_ref()
        .map(|i| build_ingress(gw, &name, i).map(with_applied_hash))
        .transpose()?;
    let network_policy = match &gw.spec.network_policy {
        Some(np) if np.enabled => Some(with_applied_hash(build_network_policy(
            gw, &name, np, inputs,
        )?)),
        _ => None,
    };
    let route = gw
        .spec
        .route
        .as_ref()
        .map(|r| build_route(gw, &name, r).map(with_applied_hash))
        .transpose()?;
    let certificate = match &gw.spec.tls {
        Some(t) => t
            .issuer_ref
            .as_ref()
            .map(|i| build_certificate(gw, &name, &t.secret_name, i).map(with_applied_hash))
            .transpose()?,
        None => None,
    };
    let hpa = gw
        .spec
        .autoscaling
        .as_ref()
        .map(|a| build_hpa(gw, &name, a).map(with_applied_hash))
        .transpose()?;
    Ok(Children {
        config_map,
        service,
        deployment,
        pdb,
        hpa,
        ingress,
        network_policy,
        route,
        certificate,
    })
}

/// The paths an Ingress or HTTPRoute sends to the gateway: the WebSocket path and, when
/// enabled, the SockJS path (both prefixes: `/ws/` and `/stomp/...` are served too).
pub fn routed_paths(spec: &StompGatewaySpec) -> Vec<String> {
    let ws = &spec.web_socket;
    let mut paths = vec![ws.path.clone()];
    if ws.sock_js.enabled && ws.sock_js.path != ws.path {
        paths.push(ws.sock_js.path.clone());
    }
    paths
}

fn dynamic(
    gw: &StompGateway,
    name: &str,
    ar: &ApiResource,
    spec: serde_json::Value,
) -> Result<DynamicObject, BuildError> {
    let mut obj = DynamicObject::new(name, ar).data(serde_json::json!({ "spec": spec }));
    obj.metadata = meta(gw, name.to_string())?;
    Ok(obj)
}

/// The children as a list of JSON objects (apply order), for `render` and tests.
pub fn to_values(children: &Children) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    let mut out = vec![
        serde_json::to_value(&children.config_map)?,
        serde_json::to_value(&children.service)?,
        serde_json::to_value(&children.deployment)?,
    ];
    if let Some(p) = &children.pdb {
        out.push(serde_json::to_value(p)?);
    }
    if let Some(h) = &children.hpa {
        out.push(serde_json::to_value(h)?);
    }
    if let Some(c) = &children.certificate {
        out.push(serde_json::to_value(c)?);
    }
    if let Some(i) = &children.ingress {
        out.push(serde_json::to_value(i)?);
    }
    if let Some(r) = &children.route {
        out.push(serde_json::to_value(r)?);
    }
    if let Some(n) = &children.network_policy {
        out.push(serde_json::to_value(n)?);
    }
    Ok(out)
}
