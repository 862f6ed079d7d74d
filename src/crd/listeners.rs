//! The gateway's listeners and per-pod behaviour: `spec.webSocket` (with SockJS), `spec.stomp`,
//! `spec.heartbeat` and `spec.limits`.

use kube::KubeSchema;
use schemars::json_schema;
use serde::{Deserialize, Serialize};

use super::default_true;

/// WebSocket and SockJS listener settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketSpec {
    /// Listen port (also serves /healthz, /readyz, /metrics).
    #[serde(default = "default_ws_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535")
        .message("spec.webSocket.port must be a TCP port from 1 to 65535, e.g. 15674"))]
    pub port: i32,
    /// Raw WebSocket path.
    #[serde(default = "default_ws_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("spec.webSocket.path must start with '/', e.g. /ws"))]
    pub path: String,
    /// Origins allowed to open a WebSocket; empty allows any. Each is `scheme://host[:port]`
    /// or `*`.
    #[serde(default)]
    #[schemars(schema_with = "origins_schema")]
    pub allowed_origins: Vec<String>,
    /// SockJS endpoint.
    #[serde(default)]
    pub sock_js: SockJsSpec,
}

impl Default for WebSocketSpec {
    fn default() -> Self {
        Self {
            port: default_ws_port(),
            path: default_ws_path(),
            allowed_origins: Vec::new(),
            sock_js: SockJsSpec::default(),
        }
    }
}

fn default_ws_port() -> i32 {
    15674
}

fn default_ws_path() -> String {
    "/ws".into()
}

/// The regex that the schema and the linter apply to allowed origins.
pub const ORIGIN_PATTERN: &str =
    r"^(\*|https?://(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?)$";

fn origins_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "set",
        "maxItems": 64,
        "items": {
            "type": "string",
            "maxLength": 253,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{}')", ORIGIN_PATTERN.replace('\\', "\\\\")),
                "message": "spec.webSocket.allowedOrigins entries must be scheme://host[:port] without path or trailing slash (e.g. https://app.example.com), or *"
            }]
        }
    })
}

/// SockJS settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SockJsSpec {
    /// Serve SockJS.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// SockJS path prefix.
    #[serde(default = "default_sockjs_path")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("spec.webSocket.sockJs.path must start with '/', e.g. /stomp"))]
    pub path: String,
}

impl Default for SockJsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            path: default_sockjs_path(),
        }
    }
}

fn default_sockjs_path() -> String {
    "/stomp".into()
}

/// Plain STOMP over TCP.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StompSpec {
    /// Open the TCP listener.
    #[serde(default)]
    pub enabled: bool,
    /// TCP port.
    #[serde(default = "default_stomp_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535")
        .message("spec.stomp.port must be a TCP port from 1 to 65535, e.g. 61613"))]
    pub port: i32,
}

impl Default for StompSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            port: default_stomp_port(),
        }
    }
}

fn default_stomp_port() -> i32 {
    61613
}

/// STOMP heart-beat offer, in milliseconds (0 disables that direction).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSpec {
    /// How often the gateway sends.
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 0, max = 3_600_000))]
    pub server_ms: i32,
    /// How often the gateway expects the client to send.
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 0, max = 3_600_000))]
    pub client_ms: i32,
}

impl Default for HeartbeatSpec {
    fn default() -> Self {
        Self {
            server_ms: default_heartbeat(),
            client_ms: default_heartbeat(),
        }
    }
}

fn default_heartbeat() -> i32 {
    10_000
}

/// Per-pod limits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Concurrent client connections per pod.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: i32,
    /// Largest STOMP frame accepted, in bytes.
    #[serde(default = "default_max_frame_bytes")]
    #[schemars(range(min = 1024, max = 134_217_728))]
    pub max_frame_bytes: i32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_frame_bytes: default_max_frame_bytes(),
        }
    }
}

fn default_max_connections() -> i32 {
    10_000
}

fn default_max_frame_bytes() -> i32 {
    4_194_304
}
