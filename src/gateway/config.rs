//! Gateway settings: command-line flags, `STOMPGATE_*` environment variables and an
//! optional YAML file (the ConfigMap the operator renders), in that order of precedence.

use clap::builder::TypedValueParser as _;
use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

use crate::gateway::auth::{AuthError, JwtSettings, KeyFiles};
use crate::gateway::broker::{BrokerConfig, BrokerError};
use crate::gateway::rabbit::plan::PlanConfig;
use crate::gateway::rabbit::session::SessionConfig;
use crate::stomp::version::HeartBeat;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not a YAML mapping of flag names to values: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error(
        "config file {path}: unknown key '{key}' (keys are the gateway's flag names, e.g. max-frame-bytes)"
    )]
    UnknownKey { path: String, key: String },
    #[error("config file {path}: key '{key}' must be a scalar or a list of scalars")]
    BadValue { path: String, key: String },
    #[error("config file {path}: key '{key}': invalid value '{value}': {reason}")]
    BadScalar {
        path: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// STOMP login/passcode are RabbitMQ credentials (as with Web-STOMP).
    Passthrough,
    /// Every session uses the gateway's own credentials (--amqp-url or --amqp-username).
    ServiceUser,
    /// CONNECT carries a JWT (passcode, or login when passcode is empty, or an
    /// `Authorization: Bearer` header on the WebSocket upgrade); sessions use the gateway's
    /// credentials and may only use the destinations the token grants.
    Jwt,
}

/// `stompgate gateway` flags. Every flag also reads `STOMPGATE_<FLAG>`.
#[derive(Args, Clone, Debug)]
pub struct GatewayArgs {
    /// WebSocket, SockJS and health endpoints.
    #[arg(long, env = "STOMPGATE_LISTEN", default_value = "0.0.0.0:15674")]
    pub listen: SocketAddr,
    /// Path of the STOMP-over-WebSocket endpoint (also served with a trailing slash).
    #[arg(long, env = "STOMPGATE_WS_PATH", default_value = "/ws")]
    pub ws_path: String,
    /// Path prefix of the SockJS endpoint.
    #[arg(long, env = "STOMPGATE_SOCKJS_PATH", default_value = "/stomp")]
    pub sockjs_path: String,
    /// Serve SockJS at --sockjs-path.
    #[arg(long, env = "STOMPGATE_SOCKJS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub sockjs_enabled: bool,
    /// Plain STOMP over TCP listener (off unless given), e.g. 0.0.0.0:61613.
    #[arg(long, env = "STOMPGATE_STOMP_LISTEN")]
    pub stomp_listen: Option<SocketAddr>,
    /// PEM certificate chain: --listen serves https/wss and --stomp-listen STOMP over TLS.
    #[arg(long, env = "STOMPGATE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "STOMPGATE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Seconds between checks of the TLS files for a rotated certificate (0: never reload).
    #[arg(long, env = "STOMPGATE_TLS_RELOAD_SECS", default_value_t = 30)]
    pub tls_reload_secs: u64,
    /// Separate listener for /metrics, /healthz and /readyz (default: served on --listen).
    #[arg(long, env = "STOMPGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// RabbitMQ address; credentials in it serve service-user mode and default logins.
    #[arg(
        long,
        env = "STOMPGATE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// PEM CA bundle trusted for amqps:// in addition to the system roots.
    #[arg(long, env = "STOMPGATE_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
    /// Same as --amqp-ca-file (the variable the operator sets from spec.rabbitmq.tls).
    #[arg(long, env = "STOMPGATE_AMQP_TLS_CA_FILE", hide = true)]
    pub amqp_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for amqps:// mutual TLS (with --amqp-client-key-file).
    #[arg(long, env = "STOMPGATE_AMQP_CLIENT_CERT_FILE")]
    pub amqp_client_cert_file: Option<PathBuf>,
    /// PEM private key of --amqp-client-cert-file.
    #[arg(long, env = "STOMPGATE_AMQP_CLIENT_KEY_FILE")]
    pub amqp_client_key_file: Option<PathBuf>,
    /// Overrides the user in --amqp-url.
    #[arg(long, env = "STOMPGATE_AMQP_USERNAME")]
    pub amqp_username: Option<String>,
    /// Overrides the password in --amqp-url.
    #[arg(long, env = "STOMPGATE_AMQP_PASSWORD", hide_env_values = true)]
    pub amqp_password: Option<String>,
    /// How STOMP sessions authenticate to RabbitMQ.
    #[arg(
        long,
        alias = "auth",
        env = "STOMPGATE_AUTH_MODE",
        value_enum,
        default_value = "passthrough"
    )]
    pub auth_mode: AuthMode,
    /// File holding the HS256 secret of JWT auth mode (trailing newline ignored).
    #[arg(long, env = "STOMPGATE_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// JWKS (JSON Web Key Set) file with the RS256 public keys of JWT auth mode.
    #[arg(long, env = "STOMPGATE_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// Required `iss` of JWTs (unchecked when unset).
    #[arg(long, env = "STOMPGATE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of JWTs (unchecked when unset).
    #[arg(long, env = "STOMPGATE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Seconds between checks of the JWT key files for rotated keys (0: never reload).
    #[arg(long, env = "STOMPGATE_JWT_RELOAD_SECS", default_value_t = 60)]
    pub jwt_reload_secs: u64,
    /// JWT claim holding `{"subscribe": [patterns], "send": [patterns]}`.
    #[arg(
        long,
        env = "STOMPGATE_JWT_DESTINATIONS_CLAIM",
        default_value = "stomp_destinations"
    )]
    pub jwt_destinations_claim: String,
    /// Login used when CONNECT has none (RabbitMQ's stomp.default_user). Off by default:
    /// anonymous clients are refused.
    #[arg(long, env = "STOMPGATE_DEFAULT_LOGIN")]
    pub default_login: Option<String>,
    /// Passcode for --default-login.
    #[arg(long, env = "STOMPGATE_DEFAULT_PASSCODE", hide_env_values = true)]
    pub default_passcode: Option<String>,
    /// Smallest interval (ms) at which the server sends heart-beats (0: as the client asks).
    #[arg(long, env = "STOMPGATE_HEARTBEAT_SERVER_MS", default_value_t = 0)]
    pub heartbeat_server_ms: u64,
    /// Smallest interval (ms) the server accepts between client heart-beats (0: as asked).
    #[arg(long, env = "STOMPGATE_HEARTBEAT_CLIENT_MS", default_value_t = 0)]
    pub heartbeat_client_ms: u64,
    /// Most concurrent client connections (all transports); more get HTTP 503 / an ERROR.
    #[arg(long, env = "STOMPGATE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Largest STOMP frame accepted after CONNECT (before CONNECT: 64 KiB).
    #[arg(long, env = "STOMPGATE_MAX_FRAME_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_frame_bytes: usize,
    /// Most subscriptions per session.
    #[arg(long, env = "STOMPGATE_MAX_SUBSCRIPTIONS", default_value_t = 1024)]
    pub max_subscriptions: usize,
    /// Most AMQP channels (sessions that use RabbitMQ, and shared fan-out queues) on one pooled
    /// connection: more sessions with the same credentials spread over more connections, so
    /// one lost connection ends at most this many sessions.
    #[arg(long, env = "STOMPGATE_AMQP_MAX_CHANNELS_PER_CONNECTION", default_value_t = crate::gateway::broker::DEFAULT_MAX_CHANNELS_PER_CONNECTION, value_parser = clap::value_parser!(u64).range(1..=65535).map(|n| n as usize))]
    pub amqp_max_channels_per_connection: usize,
    /// Share one RabbitMQ queue per (vhost, exchange, binding key) among the transient
    /// subscriptions of this process (see README: fan-out).
    #[arg(long, env = "STOMPGATE_FANOUT", default_value_t = true, action = clap::ArgAction::Set)]
    pub fanout: bool,
    /// Messages queued per session on a shared subscription before the session is closed as a
    /// slow consumer.
    #[arg(long, env = "STOMPGATE_MAX_QUEUED_MESSAGES", default_value_t = 4096)]
    pub max_queued_messages: usize,
    /// Seconds a write to a client may block before the client counts as a slow consumer
    /// and is disconnected.
    #[arg(long, env = "STOMPGATE_WRITE_TIMEOUT_SECS", default_value_t = 30)]
    pub write_timeout_secs: u64,
    /// Allowed Origin headers for browser connections (comma-separated; empty = any).
    #[arg(long, env = "STOMPGATE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Seconds a client has to send CONNECT.
    #[arg(long, env = "STOMPGATE_LOGIN_TIMEOUT_SECS", default_value_t = 10)]
    pub login_timeout_secs: u64,
    /// Seconds an HTTP connection may go without a request head: a new connection that
    /// sends nothing, or an idle keep-alive connection between requests, is closed after it.
    #[arg(long, env = "STOMPGATE_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_secs: u64,
    /// Seconds to wait for sessions to finish after SIGTERM.
    #[arg(long, env = "STOMPGATE_DRAIN_TIMEOUT_SECS", default_value_t = 25)]
    pub drain_timeout_secs: u64,
    /// Answer a SEND with `receipt` that no queue receives with ERROR `Message not routed`
    /// (and close the connection) instead of RabbitMQ's RECEIPT.
    #[arg(long, env = "STOMPGATE_ERROR_ON_UNROUTABLE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub error_on_unroutable: bool,
    /// Omit the CONNECTED `server` header.
    #[arg(long, env = "STOMPGATE_HIDE_SERVER_INFO", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub hide_server_info: bool,
    /// Log as JSON lines.
    #[arg(long, env = "STOMPGATE_LOG_JSON", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub log_json: bool,
    /// YAML file of flag values (keys = flag names, e.g. `max-frame-bytes: 1048576`).
    #[arg(long, env = "STOMPGATE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl GatewayArgs {
    /// The CA bundle for amqps://, from either spelling of the flag.
    pub fn amqp_ca(&self) -> Option<&std::path::Path> {
        self.amqp_ca_file
            .as_deref()
            .or(self.amqp_tls_ca_file.as_deref())
    }

    /// Checks values clap cannot.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (name, path) in [
            ("ws-path", &self.ws_path),
            ("sockjs-path", &self.sockjs_path),
        ] {
            if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "--{name} must start with '/', not end with '/', and not be '/' (got '{path}')"
                )));
            }
        }
        if self.ws_path == self.sockjs_path {
            return Err(ConfigError::Invalid(
                "--ws-path and --sockjs-path must differ".to_string(),
            ));
        }
        if self.max_queued_messages == 0 {
            return Err(ConfigError::Invalid(
                "--max-queued-messages must be at least 1".to_string(),
            ));
        }
        if !(1..=65535).contains(&self.amqp_max_channels_per_connection) {
            return Err(ConfigError::Invalid(
                "--amqp-max-channels-per-connection must be from 1 to 65535".to_string(),
            ));
        }
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "--max-frame-bytes must be at least 1024".to_string(),
            ));
        }
        if self.default_login.is_some() != self.default_passcode.is_some() {
            return Err(ConfigError::Invalid(
                "--default-login and --default-passcode go together".to_string(),
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "--tls-cert-file and --tls-key-file go together".to_string(),
            ));
        }
        if self.amqp_client_cert_file.is_some() != self.amqp_client_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "--amqp-client-cert-file and --amqp-client-key-file go together".to_string(),
            ));
        }
        let jwt_keys = self.jwt_hs256_secret_file.is_some() || self.jwt_jwks_file.is_some();
        if self.auth_mode == AuthMode::Jwt && !jwt_keys {
            return Err(ConfigError::Invalid(
                "--auth-mode jwt needs --jwt-hs256-secret-file and/or --jwt-jwks-file".to_string(),
            ));
        }
        if self.auth_mode != AuthMode::Jwt && jwt_keys {
            return Err(ConfigError::Invalid(
                "--jwt-hs256-secret-file and --jwt-jwks-file need --auth-mode jwt".to_string(),
            ));
        }
        for origin in &self.allowed_origins {
            if !(origin == "*" || origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "--allowed-origins entry '{origin}' must be '*' or start with http:// or https://"
                )));
            }
        }
        Ok(())
    }
}

/// The gateway's settings, resolved once from flags, `STOMPGATE_*` environment variables and
/// the `--config` file (in that order of precedence), then validated. Only
/// [`GatewayConfig::from_matches`] (and [`parse_gateway_args`]) make one, so every value the
/// server starts from has been checked exactly once.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    args: GatewayArgs,
}

impl std::ops::Deref for GatewayConfig {
    type Target = GatewayArgs;

    fn deref(&self) -> &GatewayArgs {
        &self.args
    }
}

impl GatewayConfig {
    /// `args` as clap parsed them from `matches` (the `gateway` subcommand's), with the
    /// `--config` file filling every flag given neither on the command line nor in the
    /// environment.
    pub fn from_matches(
        mut args: GatewayArgs,
        matches: &clap::ArgMatches,
    ) -> Result<Self, ConfigError> {
        if let Some(path) = args.config.clone() {
            let path = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let explicit = |id: &str| {
                matches!(
                    matches.value_source(id),
                    Some(
                        clap::parser::ValueSource::CommandLine
                            | clap::parser::ValueSource::EnvVariable
                    )
                )
            };
            apply_file(&mut args, &text, &path, explicit)?;
        }
        args.validate()?;
        Ok(GatewayConfig { args })
    }
}

impl GatewayConfig {
    /// Where and how the gateway reaches RabbitMQ (TLS material is loaded by the server).
    pub(crate) fn broker_config(&self) -> Result<BrokerConfig, BrokerError> {
        let mut broker = BrokerConfig::from_url(&self.amqp_url)?;
        broker.max_channels_per_connection = self.amqp_max_channels_per_connection;
        if let Some(user) = &self.amqp_username {
            broker.uri.authority.userinfo.username = user.clone();
        }
        if let Some(pass) = &self.amqp_password {
            broker.uri.authority.userinfo.password = pass.clone();
        }
        Ok(broker)
    }

    /// The session settings (no JWT verifier: the server adds the one it keeps reloading).
    pub(crate) fn session_config(&self, broker: &BrokerConfig) -> SessionConfig {
        let (url_user, url_pass) = broker.url_credentials();
        let service_user = (
            self.amqp_username.clone().unwrap_or(url_user),
            self.amqp_password.clone().unwrap_or(url_pass),
        );
        SessionConfig {
            heartbeat_min: HeartBeat {
                send_ms: self.heartbeat_server_ms,
                expect_ms: self.heartbeat_client_ms,
            },
            server_header: (!self.hide_server_info)
                .then(|| format!("stompgate/{}", env!("CARGO_PKG_VERSION"))),
            default_credentials: self
                .default_login
                .clone()
                .zip(self.default_passcode.clone()),
            forced_credentials: matches!(self.auth_mode, AuthMode::ServiceUser | AuthMode::Jwt)
                .then_some(service_user),
            // JWT sessions live in the service user's vhost; the others name theirs in CONNECT.
            default_vhost: if self.auth_mode == AuthMode::Jwt {
                broker.uri.vhost.clone()
            } else {
                "/".to_string()
            },
            login_timeout: Duration::from_secs(self.login_timeout_secs),
            max_subscriptions: self.max_subscriptions,
            plan: PlanConfig::default(),
            jwt: None,
            error_on_unroutable: self.error_on_unroutable,
        }
    }

    /// The JWT key files (`--jwt-hs256-secret-file`, `--jwt-jwks-file`).
    pub(crate) fn jwt_key_files(&self) -> KeyFiles {
        KeyFiles {
            hs256_secret: self.jwt_hs256_secret_file.clone(),
            jwks: self.jwt_jwks_file.clone(),
        }
    }

    /// The JWT settings of `--auth-mode jwt`, keys loaded from their files.
    pub(crate) fn jwt_settings(&self) -> Result<Option<JwtSettings>, AuthError> {
        if self.auth_mode != AuthMode::Jwt {
            return Ok(None);
        }
        let (hs256_secret, rsa_keys) = self.jwt_key_files().load()?;
        Ok(Some(JwtSettings {
            hs256_secret,
            rsa_keys,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            destinations_claim: self.jwt_destinations_claim.clone(),
        }))
    }
}

/// Standalone parser of the `gateway` flags (tests, the demo).
#[derive(Parser, Debug)]
#[command(name = "stompgate gateway", no_binary_name = true)]
struct GatewayCli {
    #[command(flatten)]
    args: GatewayArgs,
}

/// Parses gateway flags from `argv` (without the program and subcommand names) into a
/// [`GatewayConfig`].
pub fn parse_gateway_args(argv: &[String]) -> Result<GatewayConfig, ConfigError> {
    let matches = GatewayCli::command().try_get_matches_from(argv)?;
    let cli = GatewayCli::from_arg_matches(&matches)?;
    GatewayConfig::from_matches(cli.args, &matches)
}

/// Sets the fields named by the YAML mapping `text` (keys are flag names), except those
/// `explicit` says the command line or the environment already set.
fn apply_file(
    args: &mut GatewayArgs,
    text: &str,
    path: &str,
    explicit: impl Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let map: std::collections::BTreeMap<String, serde_yaml::Value> = if text.trim().is_empty() {
        Default::default()
    } else {
        serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_string(),
            source,
        })?
    };
    let command = GatewayCli::command();
    for (key, value) in map {
        let id = key.replace('-', "_");
        let known = id != "config" && command.get_arguments().any(|a| a.get_id() == id.as_str());
        if !known {
            return Err(ConfigError::UnknownKey {
                path: path.to_string(),
                key,
            });
        }
        if explicit(&id) {
            continue;
        }
        let file_value = FileValue {
            path,
            key: &key,
            value: &value,
        };
        macro_rules! fields {
            (plain: $($p:ident),*; optional: $($o:ident),*; lists: $($l:ident),*;) => {
                match id.as_str() {
                    $(stringify!($p) => args.$p = file_value.parse()?,)*
                    $(stringify!($o) => args.$o = Some(file_value.parse()?),)*
                    $(stringify!($l) => args.$l = file_value.list()?,)*
                    // A flag missing from the lists below (see the test
                    // `every_flag_can_be_set_in_the_config_file`).
                    _ => {
                        return Err(ConfigError::UnknownKey {
                            path: path.to_string(),
                            key,
                        })
                    }
                }
            };
        }
        fields! {
            plain: listen, ws_path, sockjs_path, sockjs_enabled, tls_reload_secs, amqp_url,
                auth_mode, jwt_reload_secs, jwt_destinations_claim, heartbeat_server_ms,
                heartbeat_client_ms, max_connections, max_frame_bytes, max_subscriptions,
                amqp_max_channels_per_connection, fanout, max_queued_messages,
                write_timeout_secs, login_timeout_secs, http_header_timeout_secs, drain_timeout_secs,
                error_on_unroutable, hide_server_info, log_json;
            optional: stomp_listen, tls_cert_file, tls_key_file, metrics_listen, amqp_ca_file,
                amqp_tls_ca_file, amqp_client_cert_file, amqp_client_key_file, amqp_username,
                amqp_password, jwt_hs256_secret_file, jwt_jwks_file, jwt_issuer, jwt_audience,
                default_login, default_passcode;
            lists: allowed_origins;
        }
    }
    Ok(())
}

/// One value of the config file, read the way its flag reads text.
struct FileValue<'a> {
    path: &'a str,
    key: &'a str,
    value: &'a serde_yaml::Value,
}

impl FileValue<'_> {
    fn parse<T: std::str::FromStr>(&self) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let text = scalar(self.value).ok_or_else(|| self.not_scalar())?;
        text.parse().map_err(|e: T::Err| ConfigError::BadScalar {
            path: self.path.to_string(),
            key: self.key.to_string(),
            value: text.clone(),
            reason: e.to_string(),
        })
    }

    /// A list of scalars, or one scalar holding comma-separated values (as the flag takes).
    fn list(&self) -> Result<Vec<String>, ConfigError> {
        let items: Vec<String> = match self.value {
            serde_yaml::Value::Sequence(items) => items
                .iter()
                .map(scalar)
                .collect::<Option<_>>()
                .ok_or_else(|| self.not_scalar())?,
            other => vec![scalar(other).ok_or_else(|| self.not_scalar())?],
        };
        Ok(items
            .iter()
            .flat_map(|item| item.split(','))
            .map(str::to_string)
            .collect())
    }

    fn not_scalar(&self) -> ConfigError {
        ConfigError::BadValue {
            path: self.path.to_string(),
            key: self.key.to_string(),
        }
    }
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        <AuthMode as ValueEnum>::from_str(s, false)
    }
}

fn scalar(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_match_web_stomp() {
        let args = parse_gateway_args(&[]).unwrap();
        assert_eq!(args.listen.port(), 15674);
        assert_eq!(args.ws_path, "/ws");
        assert_eq!(args.sockjs_path, "/stomp");
        assert_eq!(args.max_frame_bytes, 4 * 1024 * 1024);
        assert!(args.stomp_listen.is_none());
    }

    #[test]
    fn config_file_fills_defaults_but_flags_win() {
        let dir = std::env::temp_dir().join(format!("stompgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gw.yaml");
        std::fs::write(
            &file,
            "max-frame-bytes: 65536\nws-path: /stomp-ws\nallowed-origins: [https://a.example, https://b.example]\n",
        )
        .unwrap();
        let args = parse_gateway_args(&argv(&[
            "--config",
            file.to_str().unwrap(),
            "--ws-path",
            "/ws2",
        ]))
        .unwrap();
        assert_eq!(args.max_frame_bytes, 65536);
        assert_eq!(args.ws_path, "/ws2");
        assert_eq!(
            args.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn config_file_unknown_key_is_named() {
        let dir = std::env::temp_dir().join(format!("stompgate-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gw.yaml");
        std::fs::write(&file, "max-frame-byte: 1\n").unwrap();
        let err = parse_gateway_args(&argv(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(
            err.to_string().contains("unknown key 'max-frame-byte'"),
            "{err}"
        );
    }

    #[test]
    fn tls_and_jwt_flags_are_checked_together() {
        let err = parse_gateway_args(&argv(&["--tls-cert-file", "/c.pem"])).unwrap_err();
        assert!(err.to_string().contains("--tls-key-file"), "{err}");
        let err = parse_gateway_args(&argv(&["--amqp-client-key-file", "/k.pem"])).unwrap_err();
        assert!(err.to_string().contains("--amqp-client-cert-file"), "{err}");
        let err = parse_gateway_args(&argv(&["--auth", "jwt"])).unwrap_err();
        assert!(err.to_string().contains("--jwt-hs256-secret-file"), "{err}");
        let err = parse_gateway_args(&argv(&["--jwt-jwks-file", "/j.json"])).unwrap_err();
        assert!(err.to_string().contains("need --auth-mode jwt"), "{err}");
        let args = parse_gateway_args(&argv(&["--auth-mode", "jwt", "--jwt-jwks-file", "/j.json"]))
            .unwrap();
        assert_eq!(args.auth_mode, AuthMode::Jwt);
        assert_eq!(args.jwt_destinations_claim, "stomp_destinations");
    }

    #[test]
    fn the_operators_ca_variable_name_is_accepted() {
        // The operator sets STOMPGATE_AMQP_TLS_CA_FILE (flag --amqp-tls-ca-file).
        let args = parse_gateway_args(&argv(&["--amqp-tls-ca-file", "/ca.crt"])).unwrap();
        assert_eq!(args.amqp_ca(), Some(std::path::Path::new("/ca.crt")));
        let args = parse_gateway_args(&argv(&[
            "--amqp-tls-ca-file",
            "/ca.crt",
            "--amqp-ca-file",
            "/mine.crt",
        ]))
        .unwrap();
        assert_eq!(args.amqp_ca(), Some(std::path::Path::new("/mine.crt")));
    }

    #[test]
    fn invalid_values_are_rejected_with_the_flag_name() {
        let err = parse_gateway_args(&argv(&["--ws-path", "ws"])).unwrap_err();
        assert!(err.to_string().contains("--ws-path"), "{err}");
        let err = parse_gateway_args(&argv(&["--allowed-origins", "example.com"])).unwrap_err();
        assert!(err.to_string().contains("--allowed-origins"), "{err}");
        let err = parse_gateway_args(&argv(&["--max-frame-bytes", "nope"])).unwrap_err();
        assert!(err.to_string().contains("max-frame-bytes"), "{err}");
    }

    #[test]
    fn every_flag_can_be_set_in_the_config_file() {
        for arg in GatewayCli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "config" || id == "help" {
                continue;
            }
            let key = id.replace('_', "-");
            let mut args = GatewayCli::try_parse_from(Vec::<String>::new())
                .unwrap()
                .args;
            // Not every value fits every flag; only "unknown key" would mean a missing field.
            let result = apply_file(&mut args, &format!("{key}: x\n"), "f.yaml", |_| false);
            assert!(
                !matches!(result, Err(ConfigError::UnknownKey { .. })),
                "{key} cannot be set in the config file"
            );
        }
    }

    #[test]
    fn config_file_values_are_checked_like_flags() {
        let mut args = GatewayCli::try_parse_from(Vec::<String>::new())
            .unwrap()
            .args;
        let err =
            apply_file(&mut args, "max-frame-bytes: lots\n", "f.yaml", |_| false).unwrap_err();
        assert!(err.to_string().contains("'max-frame-bytes'"), "{err}");
        let err = apply_file(&mut args, "auth-mode: sometimes\n", "f.yaml", |_| false).unwrap_err();
        assert!(err.to_string().contains("'auth-mode'"), "{err}");
        let err = apply_file(&mut args, "listen: {a: 1}\n", "f.yaml", |_| false).unwrap_err();
        assert!(err.to_string().contains("must be a scalar"), "{err}");
        apply_file(
            &mut args,
            "auth-mode: service-user\nfanout: false\nstomp-listen: 127.0.0.1:61613\nallowed-origins: https://a.example,https://b.example\n",
            "f.yaml",
            |_| false,
        )
        .unwrap();
        assert_eq!(args.auth_mode, AuthMode::ServiceUser);
        assert!(!args.fanout);
        assert_eq!(args.stomp_listen, Some("127.0.0.1:61613".parse().unwrap()));
        assert_eq!(
            args.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        let mut args = GatewayCli::try_parse_from(Vec::<String>::new())
            .unwrap()
            .args;
        apply_file(
            &mut args,
            "amqp-max-channels-per-connection: 0\n",
            "f.yaml",
            |_| false,
        )
        .unwrap();
        let err = args.validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("--amqp-max-channels-per-connection"),
            "{err}"
        );
    }
}
