//! Everything a connection needs from the server.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::gateway::broker::Broker;
use crate::gateway::fanout::Fanout;
use crate::gateway::rabbit::session::SessionConfig;
use crate::gateway::server_info::ServerInfo;
use crate::stomp::codec::Limits;
use crate::telemetry::GatewayMetrics;

/// Everything a connection needs from the server, shared (one pointer per connection).
pub type ConnectionContext = Arc<ConnectionSettings>;

/// See [`ConnectionContext`].
pub struct ConnectionSettings {
    pub session: Arc<SessionConfig>,
    pub limits: Limits,
    pub broker: Broker,
    pub metrics: GatewayMetrics,
    pub shutdown: CancellationToken,
    /// Longest wait for outstanding publisher confirms on DISCONNECT or shutdown (drain).
    pub flush_timeout: Duration,
    /// Shared queues for transient subscriptions (None: every subscription has its own).
    pub fanout: Option<Fanout>,
    /// A write that cannot complete for this long means the client stopped reading.
    pub write_timeout: Duration,
    /// Deliveries a session may have waiting behind a blocked write before it is closed
    /// as a slow consumer (`--max-queued-messages`, as for shared queues).
    pub max_queued_messages: usize,
    /// RabbitMQ's product for CONNECTED's `server` header.
    pub server_info: Arc<ServerInfo>,
}

/// A context whose broker is never reachable (port 1): what unit tests of the driver and
/// the transports need, without RabbitMQ.
#[cfg(test)]
pub(crate) fn unreachable_broker_settings() -> ConnectionSettings {
    let config =
        crate::gateway::broker::BrokerConfig::from_url("amqp://guest:guest@127.0.0.1:1/%2f")
            .expect("a valid URL");
    let metrics = GatewayMetrics::default();
    ConnectionSettings {
        session: Arc::new(SessionConfig::default()),
        limits: Limits::default(),
        broker: Broker::new(config.clone(), metrics.clone()),
        metrics,
        shutdown: CancellationToken::new(),
        flush_timeout: Duration::from_secs(1),
        fanout: None,
        write_timeout: Duration::from_secs(5),
        max_queued_messages: 16,
        server_info: ServerInfo::new(config),
    }
}
