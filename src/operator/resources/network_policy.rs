//! `spec.networkPolicy`: ingress to the gateway ports from the given peers, egress to the
//! broker port and DNS.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPort,
    NetworkPolicySpec as K8sNetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildError, BuildInputs, meta, selector_labels};
use crate::crd::{StompGateway, StompGatewaySpec};

/// The broker ports the gateway pods connect to.
pub fn broker_ports(spec: &StompGatewaySpec, inputs: &BuildInputs) -> Vec<i32> {
    if spec.rabbitmq.host.is_some() {
        return vec![spec.rabbitmq.port];
    }
    match inputs.broker_port {
        Some(p) => vec![p],
        None => vec![5671, 5672],
    }
}

fn tcp_port(port: i32, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some(protocol.into()),
        ..NetworkPolicyPort::default()
    }
}

pub(super) fn build_network_policy(
    gw: &StompGateway,
    name: &str,
    np: &crate::crd::NetworkPolicySpec,
    inputs: &BuildInputs,
) -> Result<NetworkPolicy, BuildError> {
    let spec = &gw.spec;
    let mut ports = vec![tcp_port(spec.web_socket.port, "TCP")];
    if spec.stomp.enabled {
        ports.push(tcp_port(spec.stomp.port, "TCP"));
    }
    // An empty peer list in a rule means "from/to anywhere": omit it rather than send [].
    let peers = |p: &Vec<_>| (!p.is_empty()).then(|| p.clone());
    Ok(NetworkPolicy {
        metadata: meta(gw, name.to_string())?,
        spec: Some(K8sNetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: peers(&np.from),
                ports: Some(ports),
            }]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    to: peers(&np.broker),
                    ports: Some(
                        broker_ports(spec, inputs)
                            .into_iter()
                            .map(|p| tcp_port(p, "TCP"))
                            .collect(),
                    ),
                },
                // DNS anywhere: cluster DNS, or a node-local cache outside any namespace.
                NetworkPolicyEgressRule {
                    to: None,
                    ports: Some(vec![tcp_port(53, "UDP"), tcp_port(53, "TCP")]),
                },
            ]),
        }),
    })
}
