//! Listeners, limits, drain, health and metrics wiring for `stompgate gateway`.

use crate::gateway::admission::Admission;
use crate::gateway::auth::{JwtVerifier, KeyFiles};
use crate::gateway::broker::Broker;
use crate::gateway::config::GatewayConfig;
use crate::gateway::connection::{ConnectionContext, ConnectionSettings};
use crate::gateway::fanout::{Fanout, FanoutConfig};
use crate::gateway::rabbit::session::SessionConfig;
use crate::gateway::server_info::ServerInfo;
pub use crate::gateway::state::AppState;
use crate::gateway::tls::{AmqpTls, ServerTls, TlsListener};
use crate::gateway::transport::{self, tcp, websocket};
use crate::sockjs::{self, SockJsConfig};
use crate::stomp::codec::Limits;
use crate::telemetry::{GatewayMetrics, SharedRegistry};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] crate::gateway::broker::BrokerError),
    #[error(transparent)]
    Config(#[from] crate::gateway::config::ConfigError),
    #[error(transparent)]
    SockJs(#[from] sockjs::SockJsError),
    #[error(transparent)]
    Tls(#[from] crate::gateway::tls::TlsError),
    #[error(transparent)]
    Auth(#[from] crate::gateway::auth::AuthError),
}

/// A running gateway (what `stompgate gateway` and the tests start).
pub struct Gateway {
    pub http_addr: SocketAddr,
    pub stomp_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Starts draining: listeners stop accepting, RabbitMQ stops pushing to this gateway
    /// (shared queues stop, sessions cancel their consumers), sessions deliver what was
    /// pushed before, then are told to reconnect and closed.
    pub fn shutdown(&self) {
        self.state.admission.begin_drain();
        if let Some(fanout) = &self.state.ctx.fanout {
            fanout.drain();
        }
        self.shutdown.cancel();
    }

    /// Waits until every listener and connection has finished (after [`Gateway::shutdown`]),
    /// at most the drain timeout.
    pub async fn wait(self) {
        self.state.tracker.close();
        let drained = tokio::time::timeout(self.drain_timeout, self.state.tracker.wait()).await;
        if drained.is_err() {
            tracing::warn!(
                open = self.state.admission.open(),
                "drain timeout: closing remaining connections"
            );
        }
        for server in self.servers {
            server.abort();
        }
        // Unacknowledged client-ack messages go back to their queues now (redelivered to the
        // reconnected clients with redelivered:true), not when the process exits.
        self.state.ctx.broker.close_all().await;
    }

    pub fn metrics_text(&self) -> String {
        self.state.registry.encode()
    }
}

/// Re-reads the JWT key files when they change (an IdP rotating its JWKS); a file that
/// does not load keeps the keys in force.
fn spawn_jwt_reloader(
    verifier: Arc<JwtVerifier>,
    files: KeyFiles,
    interval: Duration,
    stop: CancellationToken,
) {
    let paths = files.paths();
    crate::gateway::reload::spawn_watch("JWT keys", paths, interval, stop, move || {
        files
            .load()
            .and_then(|(secret, rsa)| verifier.replace_keys(secret.as_deref(), rsa))
    });
}

/// Binds every listener and starts serving. `extra` routes are merged into the HTTP
/// router (the demo page).
pub async fn start(args: GatewayConfig, extra: Router<AppState>) -> Result<Gateway, ServerError> {
    let mut broker_config = args.broker_config()?;
    // Pick the process's rustls backend before anything opens a TLS connection.
    let _ = crate::gateway::tls::provider();
    // Startup errors (unreadable files, bad PEM, a key that does not match) stop here.
    let amqps = broker_config.uri.scheme == lapin::uri::AMQPScheme::AMQPS;
    if amqps {
        let client = args
            .amqp_client_cert_file
            .as_deref()
            .zip(args.amqp_client_key_file.as_deref());
        broker_config.tls = Some(AmqpTls::load(args.amqp_ca(), client)?);
    } else if args.amqp_ca_file.is_some() || args.amqp_client_cert_file.is_some() {
        tracing::warn!("--amqp-ca-file and --amqp-client-cert-file apply to amqps:// URLs only");
    }
    let server_tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(ServerTls::load(cert, key)?),
        _ => None,
    };
    let jwt = match args.jwt_settings()? {
        Some(settings) => Some(Arc::new(JwtVerifier::new(settings)?)),
        None => None,
    };
    let jwt_reload = jwt.clone();
    let metrics = GatewayMetrics::default();
    let registry = SharedRegistry::default();
    if let Ok(mut r) = registry.0.lock() {
        metrics.register(&mut r);
    }
    metrics
        .max_connections
        .set(i64::try_from(args.max_connections).unwrap_or(i64::MAX));
    let broker = Broker::new(broker_config.clone(), metrics.clone());
    // Learn RabbitMQ's product/version for CONNECTED's `server` header now, so that the
    // first CONNECT rarely has to wait for it.
    let server_info = ServerInfo::new(broker_config.clone());
    if !args.hide_server_info {
        server_info.learn_in_background();
    }
    let shutdown = CancellationToken::new();
    let ctx: ConnectionContext = Arc::new(ConnectionSettings {
        session: Arc::new(SessionConfig {
            jwt,
            ..args.session_config(&broker_config)
        }),
        limits: Limits {
            max_frame_bytes: args.max_frame_bytes,
            ..Limits::default()
        },
        broker: broker.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        // Also bounds a session's drain; leaves the process time to close before the
        // drain timeout (and Kubernetes' grace period) runs out.
        flush_timeout: Duration::from_secs(10).min(Duration::from_secs(
            args.drain_timeout_secs.saturating_sub(1).max(1),
        )),
        write_timeout: Duration::from_secs(args.write_timeout_secs.max(1)),
        max_queued_messages: args.max_queued_messages,
        server_info: server_info.clone(),
        fanout: args.fanout.then(|| {
            Fanout::new(
                FanoutConfig {
                    listener_capacity: args.max_queued_messages,
                    ..FanoutConfig::default()
                },
                metrics.clone(),
            )
        }),
    });
    let state = AppState {
        ctx,
        admission: Admission::new(
            args.allowed_origins.clone(),
            args.max_connections,
            metrics.clone(),
        ),
        tracker: TaskTracker::new(),
        registry,
    };

    // Reap idle pooled connections until the gateway stops.
    {
        let broker = broker.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => broker.reap_idle().await,
                }
            }
        });
    }

    // Readiness: follows RabbitMQ, re-probing with backoff while it is down.
    tokio::spawn(broker.clone().monitor(shutdown.clone()));

    let mut router = Router::new()
        .route(&args.ws_path, get(websocket::upgrade))
        .route(&format!("{}/", args.ws_path), get(websocket::upgrade));
    if args.sockjs_enabled {
        let config = SockJsConfig {
            prefix: args.sockjs_path.clone(),
            max_sessions: args.max_connections,
            max_incoming_message_bytes: args.max_frame_bytes,
            allowed_origins: args.allowed_origins.clone(),
            sockjs_client_url: crate::sockjs::CLIENT_PATH.to_string(),
            ..SockJsConfig::default()
        };
        router = router.merge(transport::sockjs::router(&state, config)?);
    }
    let health = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler));
    if args.metrics_listen.is_none() {
        router = router.merge(health.clone());
    }
    let router = router.merge(extra).with_state(state.clone());

    let mut servers = Vec::new();
    let header_timeout = Duration::from_secs(args.http_header_timeout_secs.max(1));
    let listener = bind(args.listen).await?;
    let http_addr = local_addr(&listener, args.listen)?;
    match &server_tls {
        Some(tls) => {
            let listener = TlsListener::new(listener, tls.http.clone(), shutdown.clone());
            servers.push(spawn_http(
                listener,
                router,
                header_timeout,
                shutdown.clone(),
            ));
            if args.tls_reload_secs > 0 {
                tls.spawn_reloader(Duration::from_secs(args.tls_reload_secs), shutdown.clone());
            }
        }
        None => servers.push(spawn_http(
            listener,
            router,
            header_timeout,
            shutdown.clone(),
        )),
    }

    let metrics_addr = match args.metrics_listen {
        Some(addr) => {
            let listener = bind(addr).await?;
            let bound = local_addr(&listener, addr)?;
            servers.push(spawn_http(
                listener,
                health.with_state(state.clone()),
                header_timeout,
                shutdown.clone(),
            ));
            Some(bound)
        }
        None => None,
    };

    let stomp_addr = match args.stomp_listen {
        Some(addr) => {
            let listener = bind(addr).await?;
            let bound = local_addr(&listener, addr)?;
            servers.push(tokio::spawn(tcp::accept(
                listener,
                state.clone(),
                server_tls.as_ref().map(|t| t.stomp.clone()),
            )));
            Some(bound)
        }
        None => None,
    };

    if let Some(verifier) = &jwt_reload
        && args.jwt_reload_secs > 0
    {
        spawn_jwt_reloader(
            verifier.clone(),
            args.jwt_key_files(),
            Duration::from_secs(args.jwt_reload_secs),
            shutdown.clone(),
        );
    }
    let tls = server_tls.is_some();
    tracing::info!(%http_addr, ws_path = %args.ws_path, ?stomp_addr, ?metrics_addr, tls, "gateway listening");
    Ok(Gateway {
        http_addr,
        stomp_addr,
        metrics_addr,
        state,
        shutdown,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        servers,
    })
}

/// `stompgate gateway`: serve until SIGTERM/SIGINT, then drain.
pub async fn run(args: GatewayConfig, extra: Router<AppState>) -> Result<(), ServerError> {
    let gateway = start(args, extra).await?;
    crate::runtime::shutdown_signal().await;
    tracing::info!("shutting down: draining sessions");
    gateway.shutdown();
    gateway.wait().await;
    tracing::info!("stopped");
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    listen(addr).map_err(|source| ServerError::Bind { addr, source })
}

/// Listen backlog asked of the kernel, which caps it at `net.core.somaxconn` (4096 by default
/// since Linux 5.4), as Go's net package does. tokio's `TcpListener::bind` asks for 128: a
/// reconnect storm (a pod restart, thousands of browsers at once) overflowed it, and every
/// dropped SYN cost its client a retransmit 1 s later (`TcpExtListenOverflows`).
const LISTEN_BACKLOG: u32 = 65_535;

/// A listening socket with the kernel's largest accept queue (and `SO_REUSEADDR`, as std sets
/// it, so a restarted gateway can bind while old connections are in TIME_WAIT).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })
}

fn spawn_http<L>(
    listener: L,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(crate::gateway::serve::serve(
        listener,
        router,
        header_timeout,
        shutdown,
    ))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.admission.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let broker = &state.ctx.broker;
    // Before the monitor's first probe, answer from a direct check.
    let status = if broker.probed() {
        if broker.is_up() {
            Ok(())
        } else {
            Err(broker.down_reason())
        }
    } else {
        broker.check_reachable().await
    };
    if let Err(reason) = status {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("RabbitMQ unreachable: {reason}\n"),
        )
            .into_response();
    }
    // RabbitMQ answers, but sessions cannot get channels: not ready either.
    if let Some(reason) = broker.channel_trouble() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot open AMQP channels: {reason}\n"),
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    crate::runtime::openmetrics(state.registry.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connections the gateway has not accepted yet waits in the accept queue.
    /// With tokio's default backlog (128) the kernel dropped the SYNs past the 129th, and those
    /// clients retried only a second later (then 3 s, 7 s...): this test then waits for its
    /// timeout and fails.
    #[tokio::test]
    async fn a_connection_burst_waits_in_the_accept_queue_instead_of_being_dropped() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let burst = somaxconn.min(512);
        assert!(
            burst > 129,
            "net.core.somaxconn is {somaxconn}: no listener here can queue a burst past 128"
        );
        let listener = listen("127.0.0.1:0".parse().expect("address")).expect("listen");
        let addr = listener.local_addr().expect("bound address");
        // Nothing accepts while the burst connects.
        let connects =
            futures::future::join_all((0..burst).map(|_| tokio::net::TcpStream::connect(addr)));
        let clients = tokio::time::timeout(Duration::from_secs(30), connects)
            .await
            .expect("a connection of the burst was dropped, not queued");
        assert!(clients.iter().all(Result::is_ok), "every connect succeeds");
        let mut accepted = 0;
        while accepted < burst {
            listener.accept().await.expect("accept");
            accepted += 1;
        }
        assert_eq!(accepted, burst);
    }
}
