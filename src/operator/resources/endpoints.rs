//! `status.endpoints`: the in-cluster URLs of the gateway, and the external ones through the
//! Ingress or HTTPRoute.

use kube::ResourceExt;

use crate::crd::{StompGateway, StompGatewaySpec};

/// In-cluster URLs for `status.endpoints`.
pub fn endpoints(gw: &StompGateway) -> crate::crd::Endpoints {
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    let host = format!("{name}.{ns}.svc");
    let ws = &gw.spec.web_socket;
    let (wss, https) = if gw.spec.tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    crate::crd::Endpoints {
        web_socket: format!("{wss}://{host}:{}{}", ws.port, ws.path),
        sock_js: ws
            .sock_js
            .enabled
            .then(|| format!("{https}://{host}:{}{}", ws.port, ws.sock_js.path)),
        stomp: gw
            .spec
            .stomp
            .enabled
            .then(|| format!("{host}:{}", gw.spec.stomp.port)),
        external: external_endpoints(&gw.spec),
    }
}

/// URLs through the Ingress (wss/https when it has TLS) or else the HTTPRoute's first host
/// name without wildcard (wss/https: Gateway listeners for public hosts are HTTPS).
pub fn external_endpoints(spec: &StompGatewaySpec) -> Option<crate::crd::ExternalEndpoints> {
    let (host, tls) = match (&spec.ingress, &spec.route) {
        (Some(i), _) => (i.host.clone(), i.tls.is_some()),
        (None, Some(r)) => (
            r.hostnames.iter().find(|h| !h.starts_with('*'))?.clone(),
            true,
        ),
        (None, None) => return None,
    };
    let (wss, https) = if tls {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let ws = &spec.web_socket;
    Some(crate::crd::ExternalEndpoints {
        web_socket: format!("{wss}://{host}{}", ws.path),
        sock_js: ws
            .sock_js
            .enabled
            .then(|| format!("{https}://{host}{}", ws.sock_js.path)),
    })
}
