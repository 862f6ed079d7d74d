//! `spec.ingress`: a networking.k8s.io/v1 Ingress for the WebSocket and SockJS paths, with the
//! annotations ingress-nginx needs for long-lived sessions.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec as K8sIngressSpec, IngressTLS, ServiceBackendPort,
};

use super::{BuildError, meta, routed_paths};
use crate::crd::{StompGateway, StompGatewaySpec};

/// Ingress annotations that keep WebSocket and SockJS sessions working behind ingress-nginx
/// (other controllers ignore them): long-lived connections instead of the 60 s read/send
/// timeouts, no response buffering (SockJS xhr-streaming and eventsource), request bodies up
/// to the largest frame (SockJS xhr_send), and HTTPS to the pods when they serve TLS.
/// `spec.ingress.annotations` override them.
pub fn default_ingress_annotations(spec: &StompGatewaySpec) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/proxy-read-timeout".to_string(),
            "3600".to_string(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-send-timeout".to_string(),
            "3600".to_string(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-buffering".to_string(),
            "off".to_string(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-body-size".to_string(),
            spec.limits.max_frame_bytes.to_string(),
        ),
    ]);
    if spec.tls.is_some() {
        a.insert(
            "nginx.ingress.kubernetes.io/backend-protocol".into(),
            "HTTPS".into(),
        );
    }
    a
}

pub(super) fn build_ingress(
    gw: &StompGateway,
    name: &str,
    spec: &crate::crd::IngressSpec,
) -> Result<Ingress, BuildError> {
    let mut metadata = meta(gw, name.to_string())?;
    let mut annotations = default_ingress_annotations(&gw.spec);
    annotations.extend(spec.annotations.clone());
    metadata.annotations = Some(annotations);
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: name.to_string(),
            port: Some(ServiceBackendPort {
                name: Some("ws".into()),
                ..ServiceBackendPort::default()
            }),
        }),
        ..IngressBackend::default()
    };
    let paths = routed_paths(&gw.spec)
        .into_iter()
        .map(|p| HTTPIngressPath {
            path: Some(p),
            path_type: "Prefix".into(),
            backend: backend.clone(),
        })
        .collect();
    Ok(Ingress {
        metadata,
        spec: Some(K8sIngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls.as_ref().map(|t| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(t.secret_name.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue { paths }),
            }]),
            ..K8sIngressSpec::default()
        }),
        ..Ingress::default()
    })
}
