//! `spec.rabbitmq.clusterRef`: a RabbitmqCluster of the RabbitMQ Cluster Operator
//! (`rabbitmq.com/v1beta1`) in place of a host and Secrets, read as the Messaging Topology
//! Operator reads it: the default user's credentials from the Secret `status.binding` names
//! (keys `username`, `password`, and the `host` and `port` the Cluster Operator writes there),
//! else the Service of `status.defaultUser.serviceReference`; TLS when the cluster's
//! `spec.tls.secretName` is set (its `caSecretName` is the CA). The result is an ordinary
//! `spec.rabbitmq` (host, credentialsSecretRef, tls), so every builder works unchanged.

use std::collections::BTreeMap;

use kube::api::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::crd::{CredentialsSecretRef, RabbitmqSpec, SecretKeySelector, TlsSpec};

/// The RabbitmqCluster kind.
pub fn rabbitmq_cluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rabbitmq.com", "v1beta1", "RabbitmqCluster"),
        "rabbitmqclusters",
    )
}

/// Why a referenced RabbitmqCluster cannot be used (yet).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterRefError {
    /// clusterRef.namespace is another namespace.
    #[error(
        "spec.rabbitmq.clusterRef.namespace {found:?} is not the StompGateway's namespace {own:?}: the gateway pods read the cluster's default-user Secret, which Kubernetes only gives to pods in its namespace; run the StompGateway in {found:?} or use spec.rabbitmq.host with a Secret here"
    )]
    OtherNamespace {
        /// clusterRef.namespace.
        found: String,
        /// The StompGateway's namespace.
        own: String,
    },
    /// The cluster has not published its default user yet, or is not available.
    #[error(
        "RabbitmqCluster {namespace}/{name} (spec.rabbitmq.clusterRef) is not ready: {why}; the operator looks again every 30 s"
    )]
    NotReady {
        /// Cluster namespace.
        namespace: String,
        /// Cluster name.
        name: String,
        /// What is missing.
        why: String,
    },
    /// A key of the default-user Secret is absent or empty.
    #[error(
        "Secret {secret} (status.binding of RabbitmqCluster {cluster}) has no (or an empty) key {key:?}; the RabbitMQ Cluster Operator writes username, password and host there"
    )]
    MissingKey {
        /// The Secret.
        secret: String,
        /// The cluster.
        cluster: String,
        /// The key.
        key: &'static str,
    },
    /// The `port` key is not a port number.
    #[error(
        "Secret {secret} (status.binding of RabbitmqCluster {cluster}) has port {found:?}, not a TCP port number"
    )]
    BadPort {
        /// The Secret.
        secret: String,
        /// The cluster.
        cluster: String,
        /// The value found.
        found: String,
    },
}

fn condition_true(cluster: &Value, type_: &str) -> bool {
    cluster["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == "True")
}

/// The name of the cluster's default-user Secret, once the cluster can be used: the Cluster
/// Operator has written `status.binding` and reports `ClusterAvailable=True`.
pub fn binding_secret(cluster: &Value, own_namespace: &str) -> Result<String, ClusterRefError> {
    let name = cluster["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = cluster["metadata"]["namespace"]
        .as_str()
        .unwrap_or(own_namespace);
    if namespace != own_namespace {
        return Err(ClusterRefError::OtherNamespace {
            found: namespace.into(),
            own: own_namespace.into(),
        });
    }
    let not_ready = |why: &str| ClusterRefError::NotReady {
        namespace: namespace.into(),
        name: name.into(),
        why: why.into(),
    };
    if !condition_true(cluster, "ClusterAvailable") {
        return Err(not_ready(
            "its ClusterAvailable condition is not True (no RabbitMQ node serves yet)",
        ));
    }
    match cluster["status"]["binding"]["name"].as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(not_ready(
            "it has no status.binding (the default-user Secret is not published yet)",
        )),
    }
}

/// The `spec.rabbitmq` the cluster stands for: host and port from the default-user Secret
/// (else the Service `status.defaultUser.serviceReference` names), the Secret as credentials,
/// amqps on 5671 when the cluster has TLS (its CA Secret trusted when it names one).
pub fn effective_rabbitmq(
    cluster: &Value,
    vhost: &str,
    secret: &str,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<RabbitmqSpec, ClusterRefError> {
    let cluster_name = format!(
        "{}/{}",
        cluster["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default(),
        cluster["metadata"]["name"].as_str().unwrap_or_default()
    );
    let get = |key: &'static str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(v).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let missing = |key: &'static str| ClusterRefError::MissingKey {
        secret: secret.into(),
        cluster: cluster_name.clone(),
        key,
    };
    for key in ["username", "password"] {
        get(key).ok_or_else(|| missing(key))?;
    }
    let service = cluster["status"]["defaultUser"]["serviceReference"].clone();
    let host = match get("host") {
        Some(h) => h,
        None => match (service["name"].as_str(), service["namespace"].as_str()) {
            (Some(n), Some(ns)) => format!("{n}.{ns}.svc"),
            _ => return Err(missing("host")),
        },
    };
    let tls_secret = cluster["spec"]["tls"]["secretName"]
        .as_str()
        .filter(|s| !s.is_empty());
    let port = if tls_secret.is_some() {
        5671
    } else {
        match get("port") {
            None => 5672,
            Some(p) => p
                .parse::<i32>()
                .ok()
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| ClusterRefError::BadPort {
                    secret: secret.into(),
                    cluster: cluster_name.clone(),
                    found: p,
                })?,
        }
    };
    let tls = tls_secret.map(|_| TlsSpec {
        enabled: true,
        ca_secret_ref: cluster["spec"]["tls"]["caSecretName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(|name| SecretKeySelector {
                name: name.into(),
                key: "ca.crt".into(),
            }),
    });
    Ok(RabbitmqSpec {
        cluster_ref: None,
        host: Some(host),
        uri_secret_ref: None,
        port,
        vhost: vhost.into(),
        credentials_secret_ref: Some(CredentialsSecretRef {
            name: secret.into(),
            username_key: "username".into(),
            password_key: "password".into(),
        }),
        tls,
    })
}

/// What a RabbitmqCluster `name` in `namespace` stands for by the Cluster Operator's naming
/// conventions (Service `name`, Secret `name-default-user`, no TLS): `stompgate render` has no
/// cluster status to read.
pub fn conventional_rabbitmq(name: &str, namespace: &str, vhost: &str) -> RabbitmqSpec {
    RabbitmqSpec {
        cluster_ref: None,
        host: Some(format!("{name}.{namespace}.svc")),
        uri_secret_ref: None,
        port: 5672,
        vhost: vhost.into(),
        credentials_secret_ref: Some(CredentialsSecretRef {
            name: format!("{name}-default-user"),
            username_key: "username".into(),
            password_key: "password".into(),
        }),
        tls: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(status: Value, spec: Value) -> Value {
        json!({"metadata": {"name": "rmq", "namespace": "ns1"}, "spec": spec, "status": status})
    }

    fn ready() -> Value {
        json!({"conditions": [{"type": "ClusterAvailable", "status": "True"}],
               "binding": {"name": "rmq-default-user"},
               "defaultUser": {"serviceReference": {"name": "rmq", "namespace": "ns1"}}})
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_ready_cluster_names_its_binding_secret() {
        let c = cluster(ready(), json!({}));
        assert_eq!(binding_secret(&c, "ns1"), Ok("rmq-default-user".into()));
        let err = binding_secret(&c, "other").unwrap_err();
        assert!(
            matches!(err, ClusterRefError::OtherNamespace { .. }),
            "{err}"
        );
        let c = cluster(json!({"binding": {"name": "x"}}), json!({}));
        let err = binding_secret(&c, "ns1").unwrap_err();
        assert!(err.to_string().contains("ClusterAvailable"), "{err}");
        let c = cluster(
            json!({"conditions": [{"type": "ClusterAvailable", "status": "True"}]}),
            json!({}),
        );
        let err = binding_secret(&c, "ns1").unwrap_err();
        assert!(err.to_string().contains("no status.binding"), "{err}");
    }

    #[test]
    fn host_port_and_credentials_come_from_the_binding_secret() {
        let c = cluster(ready(), json!({}));
        let d = data(&[
            ("username", "guest"),
            ("password", "guest"),
            ("host", "127.0.0.1"),
            ("port", "5673"),
        ]);
        let r = effective_rabbitmq(&c, "/", "rmq-default-user", &d).expect("spec");
        assert_eq!(r.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(r.port, 5673);
        assert_eq!(
            r.credentials_secret_ref.as_ref().map(|c| c.name.as_str()),
            Some("rmq-default-user")
        );
        assert!(r.tls.is_none());
        // No host key: the Service of status.defaultUser.
        let d = data(&[("username", "u"), ("password", "p")]);
        let r = effective_rabbitmq(&c, "v", "s", &d).expect("spec");
        assert_eq!(
            (r.host.as_deref(), r.port, r.vhost.as_str()),
            (Some("rmq.ns1.svc"), 5672, "v")
        );
    }

    #[test]
    fn tls_clusters_are_reached_with_amqps_and_their_ca() {
        let c = cluster(
            ready(),
            json!({"tls": {"secretName": "rmq-tls", "caSecretName": "rmq-ca"}}),
        );
        let d = data(&[("username", "u"), ("password", "p"), ("port", "5672")]);
        let r = effective_rabbitmq(&c, "/", "s", &d).expect("spec");
        assert_eq!(r.port, 5671);
        let tls = r.tls.expect("tls");
        assert!(tls.enabled);
        assert_eq!(
            tls.ca_secret_ref,
            Some(SecretKeySelector {
                name: "rmq-ca".into(),
                key: "ca.crt".into()
            })
        );
    }

    #[test]
    fn missing_keys_and_bad_ports_are_named() {
        let c = cluster(ready(), json!({}));
        let err = effective_rabbitmq(&c, "/", "s", &data(&[("username", "u")])).unwrap_err();
        assert_eq!(
            err,
            ClusterRefError::MissingKey {
                secret: "s".into(),
                cluster: "ns1/rmq".into(),
                key: "password"
            }
        );
        let err = effective_rabbitmq(
            &c,
            "/",
            "s",
            &data(&[("username", "u"), ("password", " "), ("host", "h")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"password\""), "{err}");
        let err = effective_rabbitmq(
            &c,
            "/",
            "s",
            &data(&[("username", "u"), ("password", "p"), ("port", "amqp")]),
        )
        .unwrap_err();
        assert!(matches!(err, ClusterRefError::BadPort { .. }), "{err}");
        let bare = cluster(json!({"binding": {"name": "s"}}), json!({}));
        let err = effective_rabbitmq(
            &bare,
            "/",
            "s",
            &data(&[("username", "u"), ("password", "p")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"host\""), "{err}");
    }
}
