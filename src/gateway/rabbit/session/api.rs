//! What goes into a [`Session`](super::Session) and what comes out of it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lapin::BasicProperties;

use crate::gateway::auth::JwtVerifier;
use crate::gateway::rabbit::destination::Route;
use crate::gateway::rabbit::plan::{PlanConfig, SubscribePlan, TempQueuePlan};
use crate::gateway::rabbit::queue::QueueDeclare;
use crate::stomp::Frame;
use crate::stomp::version::HeartBeat;

/// Most concurrent transactions per session (RabbitMQ: 16).
pub const MAX_TRANSACTIONS: usize = 16;
/// Most frames buffered in one transaction (RabbitMQ: 1024).
pub const MAX_TRANSACTION_ACTIONS: usize = 1024;

/// Settings that do not change during a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Smallest heart-beat intervals the server sends/accepts (0 = follow the client).
    pub heartbeat_min: HeartBeat,
    /// Value of the CONNECTED `server` header; `None` hides it.
    pub server_header: Option<String>,
    /// Credentials used when CONNECT carries no `login` (RabbitMQ's `default_user`).
    pub default_credentials: Option<(String, String)>,
    /// Credentials used for everyone, ignoring CONNECT's (service-user auth mode).
    pub forced_credentials: Option<(String, String)>,
    /// vhost used when CONNECT carries no `host` header.
    pub default_vhost: String,
    /// A session that has not logged in within this time is closed.
    pub login_timeout: Duration,
    /// Most subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Destination rules (the exchange behind `/topic/`, durable queue naming).
    pub plan: PlanConfig,
    /// JWT auth mode: CONNECT must carry a token this accepts; sessions then use
    /// `forced_credentials` and the token's destinations.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// A receipted SEND that no queue received gets ERROR `Message not routed` and the
    /// session closes; otherwise it gets its RECEIPT, as with RabbitMQ (the message is
    /// dropped either way).
    pub error_on_unroutable: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            heartbeat_min: HeartBeat {
                send_ms: 0,
                expect_ms: 0,
            },
            server_header: Some(format!("stompgate/{}", env!("CARGO_PKG_VERSION"))),
            default_credentials: None,
            forced_credentials: None,
            default_vhost: "/".to_string(),
            login_timeout: Duration::from_secs(10),
            max_subscriptions: 1024,
            plan: PlanConfig::default(),
            jwt: None,
            error_on_unroutable: false,
        }
    }
}

/// Why a session ends; the transport maps it to a close code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    Disconnect,
    /// Fatal protocol error (already reported with an ERROR frame).
    ProtocolError,
    /// The broker closed our channel (already reported with an ERROR frame).
    BrokerError,
    /// The AMQP connection to RabbitMQ was lost (already reported with an ERROR frame that
    /// carries `reconnect:true`).
    BrokerLost,
    /// Login failed (already reported with an ERROR frame).
    LoginFailed,
    /// No frame or heart-beat from the client within the negotiated interval.
    HeartbeatTimeout,
    /// No CONNECT within the login timeout.
    LoginTimeout,
    /// The gateway is shutting down (already reported with an ERROR frame).
    Shutdown,
    /// The client did not read its deliveries fast enough (already reported).
    SlowConsumer,
    /// JWT mode: a destination outside the token's grant, or the token expired (already
    /// reported with an ERROR frame).
    AccessRefused,
    /// RabbitMQ refused a receipted SEND (nack), or did not route it with
    /// `error_on_unroutable` (already reported with an ERROR frame).
    PublishFailed,
}

/// A request the driver executes against the broker, then answers with a [`BrokerReply`].
#[derive(Debug)]
pub enum BrokerRequest {
    /// Open (or reuse) an AMQP connection for these credentials and a channel for this session.
    Connect {
        login: String,
        passcode: Passcode,
        vhost: String,
    },
    /// An operation on the session's channel.
    Channel(ChannelOp),
    /// Wait until every outstanding publish is confirmed (DISCONNECT: nothing is lost).
    Flush,
}

/// A password on its way to the broker: zeroed when dropped, redacted in `Debug`, so it
/// lives no longer than the login and never reaches a log line.
pub struct Passcode(zeroize::Zeroizing<String>);

impl Passcode {
    pub fn new(passcode: impl Into<String>) -> Self {
        Passcode(zeroize::Zeroizing::new(passcode.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Passcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passcode(<redacted>)")
    }
}

/// Operations on the session's AMQP channel.
#[derive(Debug)]
pub enum ChannelOp {
    /// Declare/bind as planned and start consuming (the plan holds the consumer tag).
    Subscribe(Box<SubscribePlan>),
    /// Cancel a consumer; delete its queue when it was a durable subscription being ended.
    Unsubscribe {
        consumer_tag: String,
        delete_queue: Option<String>,
    },
    /// Publish one message. `confirm_id` identifies the later [`ConfirmOutcome`].
    Publish(Box<PublishRequest>),
    /// Declare an exclusive server-named reply queue and consume it (no-ack).
    CreateTempQueue(TempQueuePlan),
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    Nack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

#[derive(Debug)]
pub struct PublishRequest {
    pub route: Route,
    pub properties: BasicProperties,
    pub body: Bytes,
    /// Ask the broker to return unroutable messages (only when a receipt is wanted).
    pub mandatory: bool,
    /// Set when the client asked for a receipt: the session wants a [`ConfirmOutcome`].
    pub confirm_id: Option<u64>,
    /// Declare this queue first (first SEND to `/queue/<q>` in the session).
    pub declare_queue: Option<QueueDeclare>,
}

/// An AMQP error as RabbitMQ reports it: `name` is the error atom (`not_found`,
/// `access_refused`, ...), `text` the broker's reply text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerFailure {
    pub name: String,
    pub text: String,
}

/// ERROR `message` when the AMQP connection itself is gone (broker stopped, crashed, or
/// closed the connection): the client should reconnect (with backoff) and resubscribe.
pub const BROKER_LOST: &str = "Connection to RabbitMQ lost";

impl BrokerFailure {
    /// The AMQP connection is gone; `text` says how.
    pub fn connection_lost(text: impl Into<String>) -> Self {
        BrokerFailure {
            name: BROKER_LOST.to_string(),
            text: text.into(),
        }
    }

    /// True when the connection (not just the channel) failed: transient, worth a reconnect.
    /// The session's AMQP connection was lost (seen by its channel, a consumer or a shared
    /// queue): the one text every path reports.
    pub fn link_lost() -> Self {
        Self::connection_lost(
            "The AMQP connection to RabbitMQ was lost; reconnect and resubscribe.\n",
        )
    }

    pub fn is_connection_lost(&self) -> bool {
        self.name == BROKER_LOST
    }
}

/// Why opening the session's broker connection failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    AccessRefused,
    VhostDenied,
    ConnectionLimit,
    Unavailable(String),
}

#[derive(Debug)]
pub enum BrokerReply {
    Connected {
        server_product: Option<String>,
    },
    ConnectFailed(ConnectFailure),
    Done,
    TempQueueCreated {
        queue: String,
    },
    /// The request failed and the channel is gone: fatal for the session.
    Failed(BrokerFailure),
}

/// What became of a publish the client wanted a receipt for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    Ack,
    /// Returned as unroutable (mandatory publish).
    Unroutable {
        reply_text: String,
    },
    Nack,
}

/// A message from one of the session's consumers, stripped of lapin handles.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub consumer_tag: String,
    pub delivery_tag: u64,
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub properties: BasicProperties,
    pub body: Bytes,
}

/// Output of the state machine, in order.
#[derive(Debug)]
pub enum Action {
    Send(Frame),
    /// An already encoded MESSAGE (shared fan-out: encoded once for many sessions).
    SendEncoded(Bytes),
    Broker(BrokerRequest),
    /// Write a heart-beat EOL.
    SendHeartbeat,
    /// Flush what was sent, then close the transport.
    Close(CloseReason),
}
