//! `spec.auth`: how STOMP clients authenticate (passthrough, one service user, or JWT and the
//! Secrets with its keys).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Client authentication.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct AuthSpec {
    /// Passthrough: STOMP login/passcode are RabbitMQ credentials. ServiceUser: the gateway
    /// connects with credentialsSecretRef for everyone. JWT: clients present a token (checked
    /// with auth.jwt's keys) and the gateway connects as the service user.
    #[serde(default)]
    pub mode: AuthMode,
    /// JWT settings (mode JWT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
}

/// How STOMP clients authenticate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// STOMP CONNECT login/passcode are passed to RabbitMQ.
    #[default]
    Passthrough,
    /// The gateway uses its configured credentials for everyone.
    ServiceUser,
    /// Clients log in with a JWT; the gateway uses the service user's credentials.
    #[serde(rename = "JWT")]
    Jwt,
}

/// JWT authentication of STOMP clients.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jwksSecretRef) || has(self.hs256SecretRef)")
    .message("spec.auth.jwt needs jwksSecretRef (RS256 public keys) or hs256SecretRef (shared secret)"))]
pub struct JwtSpec {
    /// Secret key with a JWKS (RS256 public keys, by kid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<JwksSecretRef>,
    /// Secret key with an HS256 shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret_ref: Option<Hs256SecretRef>,
    /// Required `iss` (unchecked when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: Option<String>,
    /// Required `aud` (unchecked when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
    /// Claim with `{"subscribe": [patterns], "send": [patterns]}`.
    #[serde(default = "default_destinations_claim")]
    #[schemars(length(min = 1, max = 253))]
    pub destinations_claim: String,
}

fn default_destinations_claim() -> String {
    "stomp_destinations".into()
}

/// The Secret key holding a JWKS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JwksSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_jwks_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_jwks_key() -> String {
    "jwks.json".into()
}

/// The Secret key holding an HS256 secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Hs256SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_hs256_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_hs256_key() -> String {
    "secret".into()
}
