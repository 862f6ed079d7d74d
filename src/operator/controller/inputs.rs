//! Read: what a StompGateway references, as inputs for the build. `spec.rabbitmq.clusterRef`
//! resolved to a plain `spec.rabbitmq`, the broker Secrets (target, data hash, port), and the
//! listener Secrets (`spec.tls`, `spec.auth.jwt`) checked as the gateway will read them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};

use super::apply::served;
use super::{Context, Error};
use crate::crd::StompGateway;
use crate::operator::listener;
use crate::operator::resources;
use crate::operator::status::{Problem, Reason};
use crate::operator::topology::BrokerTarget;

/// `spec.rabbitmq.clusterRef` as a plain `spec.rabbitmq` (host, default-user Secret, TLS), or
/// why the cluster cannot be used yet (`BrokerConnected=False` with that reason).
pub(super) async fn resolve_cluster_ref(
    gw: &StompGateway,
    ctx: &Context,
    ns: &str,
    r: &crate::crd::ClusterRef,
) -> Result<Result<crate::crd::RabbitmqSpec, Problem>, Error> {
    use crate::operator::cluster_ref::{self, ClusterRefError};
    let problem = |e: ClusterRefError| {
        let reason = match &e {
            ClusterRefError::OtherNamespace { .. } => Reason::InvalidSpec,
            ClusterRefError::NotReady { .. } => Reason::RabbitmqClusterNotReady,
            ClusterRefError::MissingKey { .. } => Reason::SecretKeyMissing,
            ClusterRefError::BadPort { .. } => Reason::SecretInvalid,
        };
        Problem::new(reason, e.to_string())
    };
    if let Some(other) = r.namespace.as_deref().filter(|o| *o != ns) {
        return Ok(Err(problem(ClusterRefError::OtherNamespace {
            found: other.into(),
            own: ns.into(),
        })));
    }
    let ar = cluster_ref::rabbitmq_cluster_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let Some(cluster) = api.get_opt(&r.name).await? else {
        // A kind that is not served answers 404 too: tell the two apart for the message.
        let msg = if served(&ctx.client, &ar).await? {
            format!(
                "RabbitmqCluster {ns}/{} (spec.rabbitmq.clusterRef) not found; create it or fix the name (the operator looks again every 30 s)",
                r.name
            )
        } else {
            format!(
                "spec.rabbitmq.clusterRef names a RabbitmqCluster ({}), which this cluster does not serve; install the RabbitMQ Cluster Operator, or use spec.rabbitmq.host",
                ar.api_version
            )
        };
        return Ok(Err(Problem::new(Reason::RabbitmqClusterNotFound, msg)));
    };
    let value = serde_json::to_value(&cluster).unwrap_or_default();
    let secret = match cluster_ref::binding_secret(&value, ns) {
        Ok(s) => s,
        Err(e) => return Ok(Err(problem(e))),
    };
    let field = format!("status.binding of RabbitmqCluster {}", r.name);
    let s = match get_secret(ctx, ns, &secret, &field).await? {
        Ok(s) => s,
        Err(p) => return Ok(Err(p)),
    };
    Ok(
        cluster_ref::effective_rabbitmq(&value, &gw.spec.rabbitmq.vhost, &secret, &data_of(&s))
            .map_err(problem),
    )
}

/// What the referenced Secrets yield.
pub(super) struct SecretInputs {
    pub(super) target: BrokerTarget,
    pub(super) hash: String,
    pub(super) broker_port: Option<i32>,
}

/// The port of an `amqp(s)://` URI (the scheme's default when it names none).
pub fn uri_port(url: &str) -> Option<i32> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    // An IPv6 literal's colons are inside the brackets.
    let after_host = host_port.rsplit(']').next().unwrap_or_default();
    match after_host.rsplit_once(':') {
        Some((_, p)) => p.parse().ok(),
        None => match scheme {
            "amqps" => Some(5671),
            "amqp" => Some(5672),
            _ => None,
        },
    }
}

async fn get_secret(
    ctx: &Context,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<Result<Secret, Problem>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    Ok(match api.get_opt(name).await? {
        Some(s) => Ok(s),
        None => Err(Problem::new(
            Reason::SecretNotFound,
            format!(
                "Secret {ns}/{name} (referenced by {field}) not found; create it or fix the reference"
            ),
        )),
    })
}

fn secret_key(s: &Secret, key: &str, field: &str) -> Result<String, Problem> {
    let name = s.name_any();
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim_end_matches(['\n', '\r']).to_string())
        .ok_or_else(|| {
            Problem::new(
                Reason::SecretKeyMissing,
                format!("Secret {name} has no key {key:?} (referenced by {field}); add the key or fix the reference"),
            )
        })
}

fn data_of(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

pub(super) async fn read_secrets(
    gw: &StompGateway,
    ctx: &Context,
    ns: &str,
) -> Result<Result<SecretInputs, Problem>, Error> {
    let r = &gw.spec.rabbitmq;
    let mut hashed: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
    let mut url = resources::amqp_url(&gw.spec).unwrap_or_default();
    if let Some(u) = &r.uri_secret_ref {
        let field = "spec.rabbitmq.uriSecretRef";
        let s = match get_secret(ctx, ns, &u.name, field).await? {
            Ok(s) => s,
            Err(p) => return Ok(Err(p)),
        };
        url = match secret_key(&s, &u.key, field) {
            Ok(v) => v,
            Err(p) => return Ok(Err(p)),
        };
        hashed.push((u.name.clone(), data_of(&s)));
    }
    let mut creds = None;
    let mut ca_pem = None;
    if let Some(c) = &r.credentials_secret_ref {
        let field = "spec.rabbitmq.credentialsSecretRef";
        let s = match get_secret(ctx, ns, &c.name, field).await? {
            Ok(s) => s,
            Err(p) => return Ok(Err(p)),
        };
        let user = secret_key(&s, &c.username_key, field);
        let pass = secret_key(&s, &c.password_key, field);
        match (user, pass) {
            (Ok(u), Ok(p)) => creds = Some((u, p)),
            (Err(p), _) | (_, Err(p)) => return Ok(Err(p)),
        }
        hashed.push((c.name.clone(), data_of(&s)));
    }
    if let Some(ca) = r.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        let field = "spec.rabbitmq.tls.caSecretRef";
        let s = match get_secret(ctx, ns, &ca.name, field).await? {
            Ok(s) => s,
            Err(p) => return Ok(Err(p)),
        };
        match secret_key(&s, &ca.key, field) {
            Ok(pem) => ca_pem = Some(pem),
            Err(p) => return Ok(Err(p)),
        }
        hashed.push((ca.name.clone(), data_of(&s)));
    }
    let hash = resources::secret_data_hash(hashed.iter().map(|(n, d)| (n.as_str(), d)));
    let mut target = match &creds {
        Some((u, p)) => BrokerTarget::new(&url, Some(u), Some(p)),
        None => BrokerTarget::new(&url, None, None),
    };
    if let Some(pem) = ca_pem {
        target = target.with_ca(pem);
    }
    let broker_port = uri_port(&url);
    Ok(Ok(SecretInputs {
        target,
        hash,
        broker_port,
    }))
}

/// The listener Secrets (`spec.tls`, `spec.auth.jwt`) as the gateway will read them; the
/// first problem found.
pub(super) async fn check_listener_secrets(
    gw: &StompGateway,
    ctx: &Context,
    ns: &str,
) -> Result<Option<Problem>, Error> {
    if let Some(t) = &gw.spec.tls {
        let field = "spec.tls.secretName";
        let s = match get_secret(ctx, ns, &t.secret_name, field).await? {
            Ok(s) => s,
            Err(mut p) => {
                if t.issuer_ref.is_some() {
                    p.message = format!(
                        "Secret {ns}/{} (spec.tls.secretName) does not exist yet: cert-manager writes it once Certificate {} is issued",
                        t.secret_name,
                        gw.name_any()
                    );
                }
                return Ok(Some(p));
            }
        };
        if let Err(e) = listener::check_tls_secret(&t.secret_name, s.type_.as_deref(), &data_of(&s))
        {
            return Ok(Some(listener_problem(&e)));
        }
    }
    if let (crate::crd::AuthMode::Jwt, Some(jwt)) = (gw.spec.auth.mode, &gw.spec.auth.jwt) {
        let mut secrets = BTreeMap::new();
        let refs = [
            jwt.jwks_secret_ref
                .as_ref()
                .map(|r| (r.name.as_str(), "spec.auth.jwt.jwksSecretRef")),
            jwt.hs256_secret_ref
                .as_ref()
                .map(|r| (r.name.as_str(), "spec.auth.jwt.hs256SecretRef")),
        ];
        for (secret, field) in refs.into_iter().flatten() {
            match get_secret(ctx, ns, secret, field).await? {
                Ok(s) => {
                    secrets.insert(secret.to_string(), data_of(&s));
                }
                Err(p) => return Ok(Some(p)),
            }
        }
        if let Err(e) = listener::check_jwt(jwt, &secrets) {
            return Ok(Some(listener_problem(&e)));
        }
    }
    Ok(None)
}

fn listener_problem(e: &listener::SecretProblem) -> Problem {
    let reason = match e {
        listener::SecretProblem::WrongType { .. } => Reason::SecretWrongType,
        listener::SecretProblem::MissingKey { .. } => Reason::SecretKeyMissing,
        listener::SecretProblem::Unusable { .. } => Reason::SecretInvalid,
    };
    Problem::new(reason, e.to_string())
}
