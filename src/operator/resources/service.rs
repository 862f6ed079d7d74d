//! The gateway Service: the WebSocket port, and the plain STOMP port when enabled.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildError, meta, selector_labels};
use crate::crd::StompGateway;

pub(super) fn build_service(gw: &StompGateway, name: &str) -> Result<Service, BuildError> {
    let spec = &gw.spec;
    let mut metadata = meta(gw, name.to_string())?;
    if !spec.service.annotations.is_empty() {
        metadata.annotations = Some(spec.service.annotations.clone());
    }
    let mut ports = vec![ServicePort {
        name: Some("ws".into()),
        port: spec.web_socket.port,
        target_port: Some(IntOrString::String("ws".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }];
    if spec.stomp.enabled {
        ports.push(ServicePort {
            name: Some("stomp".into()),
            port: spec.stomp.port,
            target_port: Some(IntOrString::String("stomp".into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        });
    }
    Ok(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.service.type_.as_str().into()),
            selector: Some(selector_labels(name)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}
