//! `spec.rabbitmq`: where the gateways and the operator connect, a host and Secrets or a
//! RabbitmqCluster of the RabbitMQ Cluster Operator.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Broker connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.clusterRef) || has(self.host) != has(self.uriSecretRef)")
        .message("spec.rabbitmq needs exactly one of host or uriSecretRef (or clusterRef alone); remove one of them"),
    validation = Rule::new("!has(self.clusterRef) || (!has(self.host) && !has(self.uriSecretRef) && !has(self.credentialsSecretRef) && !has(self.tls))")
        .message("spec.rabbitmq.clusterRef takes the address, credentials and TLS from the RabbitmqCluster: remove host, uriSecretRef, credentialsSecretRef and tls")
)]
pub struct RabbitmqSpec {
    /// A RabbitmqCluster of the RabbitMQ Cluster Operator (rabbitmq.com/v1beta1) instead of
    /// host and Secrets: address, default user and TLS come from its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<ClusterRef>,
    /// Broker host name, e.g. rabbitmq.messaging.svc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$')")
        .message("spec.rabbitmq.host must be a DNS name or IPv4 address without scheme or port, e.g. rabbitmq.messaging.svc"))]
    pub host: Option<String>,
    /// A Secret key holding an amqp(s):// URI (credentials may be in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_secret_ref: Option<SecretKeySelector>,
    /// Broker AMQP port.
    #[serde(default = "default_amqp_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535")
        .message("spec.rabbitmq.port must be a TCP port from 1 to 65535, e.g. 5672"))]
    pub port: i32,
    /// Virtual host.
    #[serde(default = "default_vhost")]
    #[schemars(length(min = 1, max = 255))]
    pub vhost: String,
    /// Secret with the broker user (keys `username`, `password` unless renamed). The operator
    /// uses it for topology; gateways use it in ServiceUser mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// TLS to the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// A RabbitmqCluster by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClusterRef {
    /// RabbitmqCluster name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; only the StompGateway's own is supported (the gateway pods read the
    /// cluster's default-user Secret, which Kubernetes gives only to pods of its namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

fn default_amqp_port() -> i32 {
    5672
}

fn default_vhost() -> String {
    "/".into()
}

/// One key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeySelector {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret with a broker user name and password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the user name.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key holding the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// TLS settings for the broker connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Connect with amqps.
    #[serde(default)]
    pub enabled: bool,
    /// A Secret key with the CA bundle that signs the broker certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeySelector>,
}
