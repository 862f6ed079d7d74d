//! How the gateway is reached from outside and who may reach it: `spec.ingress`, `spec.route`
//! (Gateway API), `spec.tls` (the listeners' certificate, optionally from cert-manager) and
//! `spec.networkPolicy`.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::json_schema;
use serde::{Deserialize, Serialize};

use super::{default_true, string_map_schema};

/// The Ingress in front of the gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// IngressClass name (e.g. nginx); empty: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("spec.ingress.className must be the name of an IngressClass (lowercase DNS name), e.g. nginx"))]
    pub class_name: Option<String>,
    /// Public host name, e.g. push.example.org.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("spec.ingress.host must be a lowercase DNS name without wildcard, scheme or port, e.g. push.example.org"))]
    pub host: String,
    /// Path prefix the gateway's endpoints live under on that host.
    #[serde(default = "default_root_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("spec.ingress.path must start with '/', e.g. /"))]
    pub path: String,
    /// Annotations of the Ingress; they override the WebSocket-friendly defaults.
    #[serde(default)]
    #[schemars(schema_with = "string_map_schema")]
    pub annotations: BTreeMap<String, String>,
    /// TLS at the ingress controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SecretNameRef>,
}

fn default_root_path() -> String {
    "/".into()
}

/// A Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretNameRef {
    /// Secret name (type kubernetes.io/tls).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// The Gateway API HTTPRoute in front of the gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// The Gateways (listeners) the route attaches to.
    #[schemars(schema_with = "parent_refs_schema")]
    pub parent_refs: Vec<ParentRef>,
    /// Host names the route serves (the first one without wildcard is the external endpoint).
    #[serde(default)]
    #[schemars(schema_with = "hostnames_schema")]
    pub hostnames: Vec<String>,
    /// Path prefix the gateway's endpoints live under.
    #[serde(default = "default_root_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("spec.route.path must start with '/', e.g. /"))]
    pub path: String,
}

/// A Gateway API parentRef.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Gateway name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Gateway namespace (default: the StompGateway's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Listener name on that Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

fn parent_refs_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = generator.subschema_for::<ParentRef>();
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 32,
        "x-kubernetes-list-type": "atomic",
        "items": item,
    })
}

fn hostnames_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "array",
        "maxItems": 16,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": 253,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
                "message": "spec.route.hostnames entries must be lowercase DNS names, optionally starting with *. (e.g. push.example.org)"
            }]
        }
    })
}

/// TLS on the gateway listeners.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTlsSpec {
    /// A kubernetes.io/tls Secret (keys tls.crt, tls.key), mounted into the gateway pods; a
    /// rotation is picked up without a restart.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// A cert-manager issuer: the operator then creates a cert-manager Certificate that
    /// writes secretName, for the ingress/route host names (else the in-cluster names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// A cert-manager issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct IssuerRef {
    /// Issuer name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Issuer or ClusterIssuer (or an external issuer's kind).
    #[serde(default = "default_issuer_kind")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// The gateway pods' NetworkPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicy (false removes it).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may connect to the gateway ports (e.g. the ingress controller's namespace, and
    /// Prometheus); empty: anyone, on those ports only.
    #[serde(default)]
    #[schemars(schema_with = "peers_schema")]
    pub from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
    /// Where the broker is (narrows egress on the broker port); empty: any address.
    #[serde(default)]
    #[schemars(schema_with = "peers_schema")]
    pub broker: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
}

fn peers_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // NetworkPolicyPeer by hand: k8s-openapi's generated schema has lists without a list type.
    let selector = serde_json::json!({
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {
                "type": "array",
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"type": "array", "x-kubernetes-list-type": "atomic", "items": {"type": "string"}}
                    }
                }
            }
        }
    });
    json_schema!({
        "type": "array",
        "maxItems": 32,
        "x-kubernetes-list-type": "atomic",
        "items": {
            "type": "object",
            "description": "A NetworkPolicyPeer: podSelector and/or namespaceSelector, or ipBlock.",
            "properties": {
                "podSelector": selector,
                "namespaceSelector": selector,
                "ipBlock": {
                    "type": "object",
                    "required": ["cidr"],
                    "properties": {
                        "cidr": {"type": "string"},
                        "except": {"type": "array", "x-kubernetes-list-type": "atomic", "items": {"type": "string"}}
                    }
                }
            },
            "x-kubernetes-validations": [{
                "rule": "!has(self.ipBlock) || (!has(self.podSelector) && !has(self.namespaceSelector))",
                "message": "spec.networkPolicy peers: ipBlock cannot be combined with podSelector or namespaceSelector"
            }, {
                "rule": "has(self.ipBlock) || has(self.podSelector) || has(self.namespaceSelector)",
                "message": "spec.networkPolicy peers need podSelector, namespaceSelector or ipBlock"
            }]
        }
    })
}
