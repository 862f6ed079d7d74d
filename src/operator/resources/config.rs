//! The ConfigMap and the gateway config file it carries (keys are the gateway's flag names),
//! and the broker URL in it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{BuildError, CONFIG_FILE, HS256_FILE, JWKS_FILE, JWT_DIR, LISTENER_TLS_DIR, meta};
use crate::crd::{AuthMode, StompGateway, StompGatewaySpec};

/// The ConfigMap holding `config`, the gateway config file.
pub(super) fn build_config_map(
    gw: &StompGateway,
    name: &str,
    config: &str,
) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: meta(gw, config_map_name(name))?,
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_string(),
            config.to_string(),
        )])),
        ..ConfigMap::default()
    })
}

/// Name of the ConfigMap.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-config")
}

/// Percent-encodes a vhost for an AMQP URI (`/` becomes `%2f`).
pub fn encode_vhost(vhost: &str) -> String {
    let mut out = String::new();
    for b in vhost.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// The credential-free broker URL from `host`/`port`/`vhost`; `None` when the URI comes from a
/// Secret.
pub fn amqp_url(spec: &StompGatewaySpec) -> Option<String> {
    let r = &spec.rabbitmq;
    let host = r.host.as_deref()?;
    let tls = r.tls.as_ref().is_some_and(|t| t.enabled);
    let scheme = if tls { "amqps" } else { "amqp" };
    Some(format!(
        "{scheme}://{host}:{}/{}",
        r.port,
        encode_vhost(&r.vhost)
    ))
}

/// The gateway config file (keys are the gateway's flag names).
pub fn gateway_config(spec: &StompGatewaySpec) -> Result<String, serde_yaml::Error> {
    let mut m = BTreeMap::<&str, serde_yaml::Value>::new();
    let ws = &spec.web_socket;
    m.insert("listen", format!("0.0.0.0:{}", ws.port).into());
    m.insert("ws-path", ws.path.clone().into());
    m.insert("sockjs-enabled", ws.sock_js.enabled.into());
    m.insert("sockjs-path", ws.sock_js.path.clone().into());
    if spec.stomp.enabled {
        m.insert(
            "stomp-listen",
            format!("0.0.0.0:{}", spec.stomp.port).into(),
        );
    }
    if let Some(url) = amqp_url(spec) {
        m.insert("amqp-url", url.into());
    }
    let mode = match spec.auth.mode {
        AuthMode::Passthrough => "passthrough",
        AuthMode::ServiceUser => "service-user",
        AuthMode::Jwt => "jwt",
    };
    m.insert("auth-mode", mode.into());
    if let (AuthMode::Jwt, Some(jwt)) = (spec.auth.mode, &spec.auth.jwt) {
        if jwt.jwks_secret_ref.is_some() {
            m.insert("jwt-jwks-file", format!("{JWT_DIR}/{JWKS_FILE}").into());
        }
        if jwt.hs256_secret_ref.is_some() {
            m.insert(
                "jwt-hs256-secret-file",
                format!("{JWT_DIR}/{HS256_FILE}").into(),
            );
        }
        if let Some(i) = &jwt.issuer {
            m.insert("jwt-issuer", i.clone().into());
        }
        if let Some(a) = &jwt.audience {
            m.insert("jwt-audience", a.clone().into());
        }
        m.insert(
            "jwt-destinations-claim",
            jwt.destinations_claim.clone().into(),
        );
    }
    if spec.tls.is_some() {
        m.insert(
            "tls-cert-file",
            format!("{LISTENER_TLS_DIR}/tls.crt").into(),
        );
        m.insert("tls-key-file", format!("{LISTENER_TLS_DIR}/tls.key").into());
    }
    m.insert(
        "heartbeat-server-ms",
        i64::from(spec.heartbeat.server_ms).into(),
    );
    m.insert(
        "heartbeat-client-ms",
        i64::from(spec.heartbeat.client_ms).into(),
    );
    m.insert(
        "max-connections",
        i64::from(spec.limits.max_connections).into(),
    );
    m.insert(
        "max-frame-bytes",
        i64::from(spec.limits.max_frame_bytes).into(),
    );
    // Omitted when empty: an empty value would be one empty origin, not "any".
    if !ws.allowed_origins.is_empty() {
        m.insert("allowed-origins", ws.allowed_origins.clone().into());
    }
    m.insert(
        "drain-timeout-secs",
        i64::from(spec.drain_timeout_seconds).into(),
    );
    serde_yaml::to_string(&m)
}
