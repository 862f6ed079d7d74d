//! Logging setup and the Prometheus metrics shared by the gateway's modules.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

/// Targets whose trace output carries raw protocol payloads (STOMP CONNECT frames with
/// their passcode; lapin's I/O loop prints Connection.StartOk, whose SASL PLAIN response
/// holds user and password): capped at `debug` whatever RUST_LOG says, so that no log
/// level writes credentials.
pub const PAYLOAD_LOGGING_TARGETS: [&str; 3] =
    ["tungstenite", "tokio_tungstenite", "lapin::io_loop"];

/// The log filter: RUST_LOG (or `default`), minus payload tracing.
pub fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    log_filter_from(std::env::var("RUST_LOG").ok().as_deref(), default)
}

/// [`log_filter`] for a given RUST_LOG value.
pub fn log_filter_from(spec: Option<&str>, default: &str) -> tracing_subscriber::EnvFilter {
    let asked = spec;
    // Directives naming those targets (or their modules) are dropped, so the caps below are
    // the most specific ones for them.
    let spec = spec.map(|s| {
        s.split(',')
            .filter(|directive| {
                let target = directive
                    .split(['=', '['])
                    .next()
                    .unwrap_or_default()
                    .trim();
                !PAYLOAD_LOGGING_TARGETS
                    .iter()
                    .any(|t| target == *t || target.starts_with(&format!("{t}::")))
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    // The caps follow what was asked, the payload crates' own directives included.
    let (spec, mut filter) = match spec
        .as_deref()
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(s).ok())
    {
        Some(filter) => (asked.unwrap_or(default), filter),
        None => (default, tracing_subscriber::EnvFilter::new(default)),
    };
    for target in PAYLOAD_LOGGING_TARGETS {
        // Capped at debug, never raised: a `target=debug` directive alone would turn on
        // these crates' debug lines (two per closed WebSocket) at the default `info`.
        let Some(level) = level_for(spec, target) else {
            continue;
        };
        let capped = level.min(tracing::level_filters::LevelFilter::DEBUG);
        if let Ok(directive) = format!("{target}={capped}").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// The level `spec` (RUST_LOG syntax) gives `target`: its most specific directive naming
/// `target` or a parent module, else its bare level, raised by any directive naming one of
/// its modules; None when nothing enables it.
fn level_for(spec: &str, target: &str) -> Option<tracing::level_filters::LevelFilter> {
    use tracing::level_filters::LevelFilter;
    let mut best: Option<(usize, LevelFilter)> = None;
    let mut inner: Option<LevelFilter> = None;
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (name, level) = match directive.split_once('=') {
            Some((name, level)) => match level.trim().parse::<LevelFilter>() {
                Ok(level) => (name.trim(), level),
                Err(_) => continue,
            },
            None => match directive.parse::<LevelFilter>() {
                Ok(level) => ("", level),
                // A bare target enables everything for it.
                Err(_) => (directive, LevelFilter::TRACE),
            },
        };
        let name = name.split('[').next().unwrap_or_default();
        let applies = name.is_empty() || target == name || target.starts_with(&format!("{name}::"));
        if applies && best.is_none_or(|(length, _)| name.len() >= length) {
            best = Some((name.len(), level));
        }
        if name.starts_with(&format!("{target}::")) {
            inner = inner.max(Some(level));
        }
    }
    best.map(|(_, level)| level).max(inner)
}

/// Drops lapin's `ERROR Channel closed` lines. lapin logs every channel the broker closes at
/// error level, though the operation waiting on that channel gets the same error and its
/// caller handles it: for the operator, a passive declare answering NOT_FOUND or a bind to a
/// queue that does not exist yet are ordinary states, reported in status and logged by the
/// operator at its own level. (Only channels: a closed connection is still logged.)
pub struct RedundantChannelCloses;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RedundantChannelCloses {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let meta = event.metadata();
        if meta.target() != "lapin::channel" || *meta.level() != tracing::Level::ERROR {
            return true;
        }
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" && format!("{value:?}") == "Channel closed" {
                    self.0 = true;
                }
            }
        }
        let mut m = Message(false);
        event.record(&mut m);
        !m.0
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub version: String,
    pub transport: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub message: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: String,
}

/// Gateway metrics. Labels are low-cardinality by construction: commands outside the
/// STOMP set are counted as `UNKNOWN`, error messages come from a fixed catalogue.
#[derive(Clone, Default)]
pub struct GatewayMetrics {
    pub connections: Family<TransportLabels, Gauge>,
    /// `--max-connections`: what `connections` is compared with to alert before the limit.
    pub max_connections: Gauge,
    pub sessions: Family<SessionLabels, Gauge>,
    pub subscriptions: Gauge,
    pub frames_in: Family<CommandLabels, Counter>,
    pub frames_out: Family<CommandLabels, Counter>,
    pub errors: Family<MessageLabels, Counter>,
    pub closes: Family<ReasonLabels, Counter>,
    pub rejected_connections: Family<ReasonLabels, Counter>,
    pub broker_connections: Gauge,
    pub broker_channels: Gauge,
    pub broker_connect_failures: Counter,
    pub broker_connection_errors: Counter,
    /// Channels RabbitMQ closed with an error (404, 406, 403 ...): each ended one session.
    pub broker_channel_errors: Counter,
    /// Pooled connections retired after using every channel id once (ids are never reused).
    pub broker_connections_retired: Counter,
    /// 1 while pooled connections fail to open channels (what /readyz then reports).
    pub broker_channel_open_failing: Gauge,
    /// 1 while the readiness monitor reaches RabbitMQ, 0 while it is down.
    pub broker_up: Gauge,
    /// Times the readiness monitor reached RabbitMQ again after losing it.
    pub broker_reconnects: Counter,
    pub fanout_queues: Gauge,
    pub fanout_listeners: Gauge,
    pub slow_consumers: Counter,
    /// Receipted SENDs that RabbitMQ returned as unroutable (no queue bound to the key).
    pub unroutable_messages: Counter,
    /// `frames_out{command="MESSAGE"}` and `frames_in{command="SEND"}`, resolved once: the
    /// per-frame label lookup (a String allocation and a hash) showed in fan-out profiles.
    hot_counters: Arc<std::sync::OnceLock<[Counter; 2]>>,
}

impl GatewayMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("stompgate");
        r.register(
            "connections",
            "Open client connections by transport",
            self.connections.clone(),
        );
        r.register(
            "max_connections",
            "Configured connection limit of this gateway (--max-connections)",
            self.max_connections.clone(),
        );
        r.register(
            "sessions",
            "Logged-in STOMP sessions by protocol version and transport",
            self.sessions.clone(),
        );
        r.register(
            "subscriptions",
            "Active STOMP subscriptions",
            self.subscriptions.clone(),
        );
        r.register(
            "frames_received",
            "STOMP frames received from clients by command",
            self.frames_in.clone(),
        );
        r.register(
            "frames_sent",
            "STOMP frames sent to clients by command",
            self.frames_out.clone(),
        );
        r.register(
            "errors",
            "ERROR frames sent to clients by message",
            self.errors.clone(),
        );
        r.register(
            "session_closes",
            "Sessions closed by reason",
            self.closes.clone(),
        );
        r.register(
            "rejected_connections",
            "Connections refused before a session started, by reason",
            self.rejected_connections.clone(),
        );
        r.register(
            "broker_connections",
            "Open AMQP connections to RabbitMQ",
            self.broker_connections.clone(),
        );
        r.register(
            "broker_channels",
            "Open AMQP channels (sessions that used the broker, and shared fan-out queues)",
            self.broker_channels.clone(),
        );
        r.register(
            "broker_connect_failures",
            "Failed AMQP connection attempts",
            self.broker_connect_failures.clone(),
        );
        r.register(
            "broker_connection_errors",
            "AMQP connections lost after being established (every session on one ends)",
            self.broker_connection_errors.clone(),
        );
        r.register(
            "broker_channel_errors",
            "AMQP channels closed by RabbitMQ with an error (each ends one session)",
            self.broker_channel_errors.clone(),
        );
        r.register(
            "broker_connections_retired",
            "Pooled AMQP connections retired after using every channel id once",
            self.broker_connections_retired.clone(),
        );
        r.register(
            "broker_channel_open_failing",
            "1 while pooled AMQP connections fail to open channels (/readyz fails), else 0",
            self.broker_channel_open_failing.clone(),
        );
        r.register(
            "broker_up",
            "1 while RabbitMQ is reachable (what /readyz reports), 0 while it is down",
            self.broker_up.clone(),
        );
        r.register(
            "broker_reconnects",
            "Times RabbitMQ was reached again after an outage",
            self.broker_reconnects.clone(),
        );
        r.register(
            "fanout_queues",
            "Shared fan-out queues (one per vhost, exchange and binding key)",
            self.fanout_queues.clone(),
        );
        r.register(
            "fanout_listeners",
            "Subscriptions served from shared fan-out queues",
            self.fanout_listeners.clone(),
        );
        r.register(
            "slow_consumers",
            "Sessions closed because they could not keep up with their deliveries",
            self.slow_consumers.clone(),
        );
        r.register(
            "unroutable_messages",
            "SENDs with a receipt that RabbitMQ routed to no queue (dropped, as RabbitMQ does)",
            self.unroutable_messages.clone(),
        );
    }

    fn hot(&self) -> &[Counter; 2] {
        self.hot_counters.get_or_init(|| {
            let label = |command: &str| CommandLabels {
                command: command.to_string(),
            };
            [
                self.frames_out.get_or_create(&label("MESSAGE")).clone(),
                self.frames_in.get_or_create(&label("SEND")).clone(),
            ]
        })
    }

    pub fn frame_in(&self, command: &str) {
        if command == "SEND" {
            self.hot()[1].inc();
            return;
        }
        self.frames_in
            .get_or_create(&CommandLabels {
                command: command_label(command).to_string(),
            })
            .inc();
    }

    pub fn frame_out(&self, command: &str) {
        if command == "MESSAGE" {
            self.hot()[0].inc();
            return;
        }
        self.frames_out
            .get_or_create(&CommandLabels {
                command: command_label(command).to_string(),
            })
            .inc();
    }

    pub fn error_sent(&self, message: &str) {
        self.errors
            .get_or_create(&MessageLabels {
                message: message.to_string(),
            })
            .inc();
    }
}

fn command_label(command: &str) -> &str {
    match command {
        "CONNECT" | "STOMP" | "CONNECTED" | "SEND" | "SUBSCRIBE" | "UNSUBSCRIBE" | "ACK"
        | "NACK" | "BEGIN" | "COMMIT" | "ABORT" | "DISCONNECT" | "MESSAGE" | "RECEIPT"
        | "ERROR" => command,
        _ => "UNKNOWN",
    }
}

/// A registry shared between the HTTP handler and the modules that register into it.
#[derive(Clone, Default)]
pub struct SharedRegistry(pub Arc<Mutex<Registry>>);

impl SharedRegistry {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.0.lock() {
            // Encoding into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn cached_frame_counters_are_the_exported_ones() {
        let metrics = GatewayMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let clone = metrics.clone();
        metrics.frame_out("MESSAGE");
        clone.frame_out("MESSAGE");
        metrics.frame_out("RECEIPT");
        clone.frame_in("SEND");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        assert!(
            out.contains("stompgate_frames_sent_total{command=\"MESSAGE\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("stompgate_frames_sent_total{command=\"RECEIPT\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("stompgate_frames_received_total{command=\"SEND\"} 1"),
            "{out}"
        );
    }

    fn enabled(spec: &str, target_is_tungstenite: bool) -> bool {
        let subscriber = tracing_subscriber::registry().with(log_filter_from(Some(spec), "info"));
        tracing::subscriber::with_default(subscriber, || {
            if target_is_tungstenite {
                tracing::enabled!(target: "tungstenite::protocol", tracing::Level::TRACE)
            } else {
                tracing::enabled!(target: "stompgate::gateway", tracing::Level::TRACE)
            }
        })
    }

    #[test]
    fn lapin_channel_closes_are_dropped_and_other_errors_kept() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if let Ok(mut v) = self.0.lock() {
                    v.extend_from_slice(b);
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(RedundantChannelCloses)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "lapin::channel", channel = 3, error = "NOT_FOUND - no queue 'q'", "Channel closed");
            tracing::error!(target: "lapin::channel", channel = 0, "Connection closed");
            tracing::error!(target: "stompgate::operator", "Channel closed");
            tracing::info!(target: "lapin::channel", "Channel closed");
        });
        let out = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        assert!(!out.contains("NOT_FOUND"), "{out}");
        assert!(out.contains("Connection closed"), "{out}");
        assert_eq!(out.matches("Channel closed").count(), 2, "{out}");
    }

    fn enabled_at(spec: &str, target_is_tungstenite: bool, level: tracing::Level) -> bool {
        let subscriber = tracing_subscriber::registry().with(log_filter_from(Some(spec), "info"));
        tracing::subscriber::with_default(subscriber, || {
            // `enabled!` needs a constant level.
            match (target_is_tungstenite, level) {
                (true, tracing::Level::DEBUG) => {
                    tracing::enabled!(target: "tungstenite::protocol", tracing::Level::DEBUG)
                }
                (true, _) => {
                    tracing::enabled!(target: "tungstenite::protocol", tracing::Level::INFO)
                }
                (false, _) => tracing::enabled!(target: "stompgate::gateway", tracing::Level::INFO),
            }
        })
    }

    #[test]
    fn payload_crates_are_capped_at_debug_but_never_raised_above_the_filter() {
        // The default filter: no debug lines from tungstenite (two per closed WebSocket).
        assert!(!enabled_at("info", true, tracing::Level::DEBUG));
        assert!(enabled_at("info", true, tracing::Level::INFO));
        assert!(!enabled_at("warn", true, tracing::Level::INFO));
        assert!(!enabled_at(
            "info,tungstenite=warn",
            true,
            tracing::Level::INFO
        ));
        // Asked for, debug is allowed.
        for spec in [
            "debug",
            "trace",
            "info,tungstenite=debug",
            "info,tungstenite",
        ] {
            assert!(enabled_at(spec, true, tracing::Level::DEBUG), "{spec}");
        }
        assert!(enabled_at("info", false, tracing::Level::INFO));
    }

    #[test]
    fn payload_tracing_stays_off_at_any_level() {
        for spec in [
            "trace",
            "trace,tungstenite=trace",
            "tungstenite::protocol=trace",
        ] {
            assert!(!enabled(spec, true), "{spec}");
        }
        assert!(enabled("trace", false));
    }
}
