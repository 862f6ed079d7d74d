//! Per-connection STOMP state machine. Frames and broker results in, actions out; no IO.
//!
//! The driver (see `gateway::connection`) feeds client frames with [`Session::handle_frame`],
//! executes each [`Action::Broker`] request and feeds the result back with
//! [`Session::handle_broker_reply`]. At most one broker request is in flight: while the
//! session is busy the driver stops reading client frames, which keeps STOMP's in-order
//! semantics (a SUBSCRIBE is established before the next SEND is published) and gives
//! natural backpressure. Deliveries, publisher confirms and timers may arrive at any time.

use crate::gateway::auth::{Grant, JwtVerifier};
use crate::gateway::destination::{
    self, AckMode, Destination, PlanConfig, QueueDeclare, Route, SendPlan, SubscribePlan,
    TempQueuePlan,
};
use crate::gateway::properties;
use crate::stomp::version::{self, HeartBeat};
use crate::stomp::{Command, Frame, Version};
use bytes::Bytes;
use lapin::BasicProperties;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most concurrent transactions per session (RabbitMQ: 16).
pub const MAX_TRANSACTIONS: usize = 16;
/// Most frames buffered in one transaction (RabbitMQ: 1024).
pub const MAX_TRANSACTION_ACTIONS: usize = 1024;
/// The `version` header RabbitMQ puts on every ERROR frame.
const SUPPORTED_VERSIONS: &str = "1.0,1.1,1.2";

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Connecting,
    Connected,
    Closed,
}

#[derive(Debug)]
struct Subscription {
    ack: AckMode,
    /// Queue to delete when a durable topic subscription is ended with `durable:true`
    /// (taken from the subscription, never from the UNSUBSCRIBE frame).
    durable_queue: Option<String>,
}

#[derive(Debug)]
struct PendingAck {
    consumer_tag: String,
    delivery_tag: u64,
    multiple: bool,
}

/// What the in-flight broker request was for, so its reply can be finished.
#[derive(Debug)]
enum InFlight {
    Connect {
        version: Version,
        heartbeat: HeartBeat,
    },
    Subscribe {
        consumer_tag: String,
        subscription: Subscription,
        receipt: Option<String>,
    },
    Unsubscribe {
        receipt: Option<String>,
    },
    Publish {
        declared_queue: Option<String>,
    },
    TempQueue {
        temp_id: String,
        consumer_tag: String,
        /// The SEND waiting for its reply queue.
        send: Box<PendingSend>,
    },
    Settle {
        receipt: Option<String>,
    },
    Flush {
        receipt: Option<String>,
    },
}

/// A planned SEND whose publish is pending.
#[derive(Debug)]
struct PendingSend {
    plan: SendPlan,
    body: Bytes,
    receipt: Option<String>,
}

/// The per-connection STOMP session.
pub struct Session {
    /// Shared by every session of the gateway.
    config: Arc<SessionConfig>,
    phase: Phase,
    version: Version,
    session_id: String,
    login: String,
    vhost: String,
    heartbeat: HeartBeat,
    last_received: Instant,
    last_sent: Instant,
    started: Instant,
    subscriptions: HashMap<String, Subscription>,
    unacked: VecDeque<PendingAck>,
    transactions: HashMap<String, Vec<Frame>>,
    declared_queues: HashSet<String>,
    /// temp-queue id -> server-named queue.
    reply_queues: HashMap<String, String>,
    /// Outstanding receipts of published SENDs, by confirm id.
    pending_receipts: HashMap<u64, String>,
    next_confirm_id: u64,
    in_flight: Option<InFlight>,
    /// JWT mode: a token from the transport (WebSocket `Authorization: Bearer`), used by
    /// CONNECT and then dropped.
    bearer: Option<String>,
    /// JWT mode: what the token allows, and when it expires.
    grant: Option<Grant>,
    token_deadline: Option<Instant>,
    /// Work waiting to be processed (COMMIT replays, a SEND waiting for its reply queue).
    work: VecDeque<Work>,
    actions: VecDeque<Action>,
    /// The gateway is draining: the session's consumers are being cancelled.
    draining: bool,
}

impl Session {
    pub fn new(config: impl Into<Arc<SessionConfig>>, session_id: String, now: Instant) -> Self {
        Session {
            config: config.into(),
            phase: Phase::AwaitingConnect,
            version: Version::V1_0,
            session_id,
            login: String::new(),
            vhost: String::new(),
            heartbeat: HeartBeat {
                send_ms: 0,
                expect_ms: 0,
            },
            last_received: now,
            last_sent: now,
            started: now,
            subscriptions: HashMap::new(),
            unacked: VecDeque::new(),
            transactions: HashMap::new(),
            declared_queues: HashSet::new(),
            reply_queues: HashMap::new(),
            pending_receipts: HashMap::new(),
            next_confirm_id: 1,
            in_flight: None,
            bearer: None,
            grant: None,
            token_deadline: None,
            work: VecDeque::new(),
            actions: VecDeque::new(),
            draining: false,
        }
    }

    /// A token the transport received before CONNECT (JWT mode; ignored otherwise).
    pub fn set_bearer_token(&mut self, token: String) {
        self.bearer = Some(token);
    }

    /// The next output, if any. Drain after every `handle_*` call.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// True when the driver may feed the next client frame.
    pub fn wants_input(&self) -> bool {
        self.phase != Phase::Closed && self.in_flight.is_none() && self.work.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// Negotiated version (1.0 until CONNECTED).
    pub fn version(&self) -> Version {
        self.version
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Negotiated heart-beats (what the server sends, what it expects).
    pub fn heartbeat(&self) -> HeartBeat {
        self.heartbeat
    }

    /// True between DISCONNECT and its RECEIPT.
    fn disconnecting(&self) -> bool {
        matches!(self.in_flight, Some(InFlight::Flush { .. }))
    }

    /// The transport received bytes (a frame or a heart-beat).
    pub fn note_received(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// The transport wrote bytes to the client.
    pub fn note_sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingConnect | Phase::Connecting => {
                Some(self.started + self.config.login_timeout)
            }
            Phase::Connected => {
                let send = (self.heartbeat.send_ms > 0)
                    .then(|| self.last_sent + Duration::from_millis(self.heartbeat.send_ms));
                let expect = (self.heartbeat.expect_ms > 0)
                    .then(|| self.last_received + receive_grace(self.heartbeat.expect_ms));
                [send, expect, self.token_deadline]
                    .into_iter()
                    .flatten()
                    .min()
            }
            Phase::Closed => None,
        }
    }

    /// Fires login and heart-beat timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingConnect | Phase::Connecting => {
                if now >= self.started + self.config.login_timeout {
                    // Say why: a client trickling its CONNECT (slowloris) or a slow
                    // broker login would otherwise see an unexplained close.
                    let secs = self.config.login_timeout.as_secs();
                    let detail = if self.phase == Phase::AwaitingConnect {
                        format!("No CONNECT frame within {secs} s of opening the connection.\n")
                    } else {
                        format!("RabbitMQ did not accept the login within {secs} s.\n")
                    };
                    self.send_error("Login timeout", &detail, None);
                    self.close(CloseReason::LoginTimeout);
                }
            }
            Phase::Connected => {
                if self.token_deadline.is_some_and(|d| now >= d) {
                    self.send_error(
                        "Token expired",
                        "The access token expired; reconnect with a new one.\n",
                        None,
                    );
                    self.close(CloseReason::AccessRefused);
                    return;
                }
                if self.heartbeat.expect_ms > 0
                    && now >= self.last_received + receive_grace(self.heartbeat.expect_ms)
                {
                    self.close(CloseReason::HeartbeatTimeout);
                    return;
                }
                if self.heartbeat.send_ms > 0
                    && now >= self.last_sent + Duration::from_millis(self.heartbeat.send_ms)
                {
                    self.last_sent = now;
                    self.actions.push_back(Action::SendHeartbeat);
                }
            }
            Phase::Closed => {}
        }
    }

    /// A complete frame from the client. Call only when [`Session::wants_input`] is true.
    pub fn handle_frame(&mut self, frame: Frame) {
        if self.phase == Phase::Closed {
            return;
        }
        self.work.push_back(Work::Frame(frame));
        self.run();
    }

    /// Reports an undecodable byte stream: ERROR then close, as RabbitMQ does.
    pub fn handle_codec_error(&mut self, summary: &str, detail: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        self.send_error(summary, &format!("{detail}\n"), None);
        self.close(CloseReason::ProtocolError);
    }

    /// The gateway starts draining and is cancelling this session's consumers: deliveries
    /// that RabbitMQ pushed before the cancel still reach the client (auto-ack ones would be
    /// lost otherwise); client-ack ones do not, since no ACK will be read any more: they are
    /// requeued when the channel closes. Their consumers' ends are no news to the client.
    pub fn begin_drain(&mut self) {
        self.draining = true;
    }

    /// The gateway is draining: tell the client to reconnect elsewhere, then close.
    pub fn handle_shutdown(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        let frame = error_frame(
            "Server shutting down",
            "The gateway is shutting down; reconnect to continue.\n",
            None,
        )
        .header("reconnect", "true");
        self.actions.push_back(Action::Send(frame));
        self.close(CloseReason::Shutdown);
    }

    /// Result of the in-flight broker request.
    pub fn handle_broker_reply(&mut self, reply: BrokerReply) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        if self.phase == Phase::Closed {
            return;
        }
        if let BrokerReply::Failed(failure) = reply {
            self.broker_died(&failure);
            return;
        }
        match (in_flight, reply) {
            (
                InFlight::Connect { version, heartbeat },
                BrokerReply::Connected { server_product },
            ) => self.finish_connect(version, heartbeat, server_product),
            (InFlight::Connect { .. }, BrokerReply::ConnectFailed(failure)) => {
                let transient = matches!(failure, ConnectFailure::Unavailable(_));
                let detail = match failure {
                    ConnectFailure::AccessRefused => {
                        format!("Access refused for user '{}'\n", self.login)
                    }
                    ConnectFailure::VhostDenied => String::new(),
                    ConnectFailure::ConnectionLimit => {
                        "Connection refused: node connection limit reached".to_string()
                    }
                    ConnectFailure::Unavailable(reason) => {
                        format!("RabbitMQ is unreachable: {reason}\n")
                    }
                };
                let detail = if detail.is_empty() {
                    format!("Virtual host '{}' access denied", self.vhost_for_error())
                } else {
                    detail
                };
                let mut frame = error_frame("Bad CONNECT", &detail, None);
                if transient {
                    // RabbitMQ is down, not the credentials wrong: worth retrying.
                    frame.headers.push("reconnect", "true");
                }
                self.actions.push_back(Action::Send(frame));
                self.close(CloseReason::LoginFailed);
            }
            (
                InFlight::Subscribe {
                    consumer_tag,
                    subscription,
                    receipt,
                },
                BrokerReply::Done,
            ) => {
                self.subscriptions.insert(consumer_tag, subscription);
                self.receipt(receipt);
            }
            (InFlight::Unsubscribe { receipt }, BrokerReply::Done)
            | (InFlight::Settle { receipt }, BrokerReply::Done) => self.receipt(receipt),
            (InFlight::Publish { declared_queue }, BrokerReply::Done) => {
                if let Some(queue) = declared_queue {
                    self.declared_queues.insert(queue);
                }
            }
            (
                InFlight::TempQueue {
                    temp_id,
                    consumer_tag,
                    send,
                },
                BrokerReply::TempQueueCreated { queue },
            ) => {
                self.subscriptions.insert(
                    consumer_tag,
                    Subscription {
                        ack: AckMode::Auto,
                        durable_queue: None,
                    },
                );
                self.reply_queues.insert(temp_id, queue.clone());
                let PendingSend {
                    mut plan,
                    body,
                    receipt,
                } = *send;
                plan.properties = plan.properties.with_reply_to(queue.as_str().into());
                self.publish(plan, body, receipt);
            }
            (InFlight::Flush { receipt }, BrokerReply::Done) => {
                self.receipt(receipt);
                self.close(CloseReason::Disconnect);
                return;
            }
            (other, reply) => {
                // A reply that does not match the request is a gateway bug; fail loudly but safely.
                tracing::error!(?other, ?reply, "broker reply does not match the request");
                self.send_error("Internal error", "Unexpected broker reply\n", None);
                self.close(CloseReason::ProtocolError);
                return;
            }
        }
        self.run();
    }

    /// A publisher confirm (or return) for a SEND that asked for a receipt.
    pub fn handle_confirm(&mut self, confirm_id: u64, outcome: ConfirmOutcome) {
        let Some(receipt) = self.pending_receipts.remove(&confirm_id) else {
            return;
        };
        if self.phase == Phase::Closed {
            return;
        }
        match outcome {
            ConfirmOutcome::Ack => self.receipt(Some(receipt)),
            // RabbitMQ confirms an unroutable message and drops it: the SEND is done.
            ConfirmOutcome::Unroutable { .. } if !self.config.error_on_unroutable => {
                self.receipt(Some(receipt))
            }
            // An ERROR ends the connection (STOMP): the client cannot miss it.
            ConfirmOutcome::Unroutable { reply_text } => {
                self.send_error(
                    "Message not routed",
                    &format!("The message was not routed to any queue ({reply_text}).\n"),
                    Some(&receipt),
                );
                self.close(CloseReason::PublishFailed);
            }
            // RabbitMQ itself never answers such a SEND; silence would leave the client
            // waiting for its RECEIPT forever.
            ConfirmOutcome::Nack => {
                self.send_error(
                    "Message rejected",
                    "The broker rejected the message (basic.nack).\n",
                    Some(&receipt),
                );
                self.close(CloseReason::PublishFailed);
            }
        }
    }

    /// The broker closed the session's channel or connection outside any request.
    pub fn handle_broker_failure(&mut self, failure: BrokerFailure) {
        if self.phase == Phase::Closed {
            return;
        }
        self.broker_died(&failure);
    }

    /// The broker cancelled a consumer (its queue was deleted).
    pub fn handle_consumer_cancelled(&mut self, consumer_tag: &str) {
        // DISCONNECT closes the channel itself, and a drain cancels the consumers: their
        // ending is no news. Nothing may follow Close (found by the session fuzz target).
        if self.disconnecting() || self.phase == Phase::Closed {
            return;
        }
        if self.draining {
            self.subscriptions.remove(consumer_tag);
            return;
        }
        if self.subscriptions.remove(consumer_tag).is_none() {
            return;
        }
        let id = destination::subscription_header(consumer_tag)
            .unwrap_or(consumer_tag)
            .to_string();
        let frame = error_frame(
            "Server cancelled subscription",
            &format!(
                "The server has canceled a subscription.\nNo more messages will be delivered for \"{id}\".\n"
            ),
            None,
        )
        .header("subscription", id);
        self.actions.push_back(Action::Send(frame));
    }

    /// A MESSAGE encoded by the shared fan-out for this subscription.
    pub fn handle_shared_frame(&mut self, consumer_tag: &str, frame: Bytes) {
        if self.phase != Phase::Connected
            || self.disconnecting()
            || !self.subscriptions.contains_key(consumer_tag)
        {
            return;
        }
        self.actions.push_back(Action::SendEncoded(frame));
    }

    /// The client fell too far behind its deliveries: tell it why, then close.
    pub fn handle_slow_consumer(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        self.send_error(
            "Slow consumer",
            "The client did not read its messages fast enough; the gateway stopped queueing them.\n",
            None,
        );
        self.close(CloseReason::SlowConsumer);
    }

    /// Turns a delivery into a MESSAGE frame for the client.
    pub fn handle_delivery(&mut self, delivery: Delivery) {
        if self.phase != Phase::Connected || self.disconnecting() {
            return;
        }
        let Some(subscription) = self.subscriptions.get(&delivery.consumer_tag) else {
            // A delivery racing an UNSUBSCRIBE; the consumer is already cancelled.
            return;
        };
        let ack = subscription.ack;
        if self.draining && ack != AckMode::Auto {
            // Requeued when the channel closes: the next connection gets it.
            return;
        }
        let headers = properties::message_frame_headers(
            &self.session_id,
            &properties::Delivery {
                consumer_tag: &delivery.consumer_tag,
                delivery_tag: delivery.delivery_tag,
                exchange: &delivery.exchange,
                routing_key: &delivery.routing_key,
                redelivered: delivery.redelivered,
            },
            ack,
            self.version,
            &delivery.properties,
        );
        if ack != AckMode::Auto {
            self.unacked.push_back(PendingAck {
                consumer_tag: delivery.consumer_tag,
                delivery_tag: delivery.delivery_tag,
                multiple: ack.multiple(),
            });
        }
        self.actions.push_back(Action::Send(Frame {
            command: Command::Message,
            headers,
            body: delivery.body,
        }));
    }

    // ---- processing ----

    fn run(&mut self) {
        while self.in_flight.is_none() && self.phase != Phase::Closed {
            match self.work.pop_front() {
                Some(Work::Frame(frame)) => self.process(frame),
                Some(Work::Receipt(id)) => self.receipt(Some(id)),
                None => break,
            }
        }
    }

    fn process(&mut self, frame: Frame) {
        match (&self.phase, &frame.command) {
            (Phase::AwaitingConnect, Command::Connect | Command::Stomp) => self.on_connect(frame),
            (Phase::AwaitingConnect | Phase::Connecting, _) => {
                self.send_error(
                    "Illegal command",
                    "You must log in using CONNECT first",
                    None,
                );
            }
            (Phase::Connected, Command::Connect | Command::Stomp) => {
                // RabbitMQ treats a second CONNECT as an unknown frame in this state.
                self.send_error(
                    "Bad command",
                    &format!("Could not interpret command \"{}\"\n", frame.command),
                    receipt_of(&frame),
                );
            }
            (Phase::Connected, _) => self.on_connected_frame(frame),
            (Phase::Closed, _) => {}
        }
    }

    fn on_connect(&mut self, mut frame: Frame) {
        self.login_with(&mut frame);
        // Whatever the outcome, the frame's passcode is not needed any more.
        frame.headers.zeroize_values("passcode");
    }

    fn login_with(&mut self, frame: &mut Frame) {
        let version = match version::negotiate_version(frame.get("accept-version")) {
            Ok(v) => v,
            Err(_) => {
                self.send_error(
                    "Version mismatch",
                    "Supported versions are 1.0,1.1,1.2\n",
                    None,
                );
                self.close(CloseReason::LoginFailed);
                return;
            }
        };
        // RabbitMQ left-trims 1.0 header values; the codec cannot for CONNECT (version unknown).
        if version == Version::V1_0 {
            frame.headers.trim_start_values();
        }
        let client_heartbeat = match frame.get("heart-beat") {
            None => HeartBeat {
                send_ms: 0,
                expect_ms: 0,
            },
            Some(value) => match HeartBeat::parse(value) {
                Ok(hb) => hb,
                Err(e) => {
                    self.send_error("Invalid heart-beat", &format!("{e}\n"), None);
                    self.close(CloseReason::LoginFailed);
                    return;
                }
            },
        };
        let heartbeat = HeartBeat::negotiate(client_heartbeat, self.config.heartbeat_min);
        if let Some(jwt) = self.config.jwt.clone() {
            self.connect_with_token(&jwt, frame, version, heartbeat);
            return;
        }
        let (login, passcode) = if let Some((l, p)) = &self.config.forced_credentials {
            (l.clone(), Passcode::new(p.as_str()))
        } else {
            match (frame.get("login"), &self.config.default_credentials) {
                (Some(login), _) => (
                    login.to_string(),
                    Passcode::new(frame.get("passcode").unwrap_or_default()),
                ),
                (None, Some((l, p))) => (l.clone(), Passcode::new(p.as_str())),
                (None, None) => {
                    self.send_error("Bad CONNECT", "Access refused for user ''\n", None);
                    self.close(CloseReason::LoginFailed);
                    return;
                }
            }
        };
        let vhost = frame
            .get("host")
            .map(str::to_string)
            .unwrap_or_else(|| self.config.default_vhost.clone());
        self.login = login.clone();
        self.vhost = vhost.clone();
        if vhost.len() > destination::MAX_AMQP_NAME {
            // No vhost has such a name, and lapin panics on it (found by the session fuzz target).
            let detail = format!("Virtual host '{}' access denied", self.vhost_for_error());
            self.send_error("Bad CONNECT", &detail, None);
            self.close(CloseReason::LoginFailed);
            return;
        }
        self.phase = Phase::Connecting;
        self.in_flight = Some(InFlight::Connect { version, heartbeat });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Connect {
                login,
                passcode,
                vhost,
            }));
    }

    /// JWT mode: the token comes from the transport, else `passcode`, else `login`; the
    /// broker sees only the gateway's credentials, in its own vhost (`host` is ignored).
    fn connect_with_token(
        &mut self,
        jwt: &JwtVerifier,
        frame: &Frame,
        version: Version,
        heartbeat: HeartBeat,
    ) {
        let token = self.bearer.take().or_else(|| {
            [frame.get("passcode"), frame.get("login")]
                .into_iter()
                .flatten()
                .find(|t| !t.is_empty())
                .map(str::to_string)
        });
        let grant = match jwt.verify(token.as_deref().unwrap_or_default()) {
            Ok(grant) => grant,
            Err(e) => {
                self.send_error("Bad CONNECT", &format!("Access refused: {e}\n"), None);
                self.close(CloseReason::LoginFailed);
                return;
            }
        };
        let Some((login, passcode)) = self.config.forced_credentials.clone() else {
            self.send_error("Bad CONNECT", "JWT auth mode has no service user\n", None);
            self.close(CloseReason::LoginFailed);
            return;
        };
        // The frame's arrival time: the session keeps no clock of its own.
        self.token_deadline = grant
            .expires_in
            .and_then(|d| self.last_received.checked_add(d));
        self.grant = Some(grant);
        let vhost = self.config.default_vhost.clone();
        self.login = login.clone();
        self.vhost = vhost.clone();
        self.phase = Phase::Connecting;
        self.in_flight = Some(InFlight::Connect { version, heartbeat });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Connect {
                login,
                passcode: Passcode::new(passcode),
                vhost,
            }));
    }

    /// JWT mode: refuses (ERROR, then close) a destination the token does not grant.
    fn refused(&mut self, frame: &Frame, operation: &str) -> bool {
        let Some(grant) = &self.grant else {
            return false;
        };
        let Some(destination) = frame.get("destination") else {
            return false;
        };
        // `x-queue-name` names a queue outside the destination the token grants (and the
        // service user may reach any queue): not allowed with a token.
        if let Some(queue) = frame.get("x-queue-name") {
            let detail = format!(
                "ACCESS_REFUSED - the x-queue-name header ('{queue}') is not allowed with token authentication\n"
            );
            self.send_error("access_refused", &detail, receipt_of(frame));
            self.close(CloseReason::AccessRefused);
            return true;
        }
        let allowed = match operation {
            "subscribe" => grant.may_subscribe(destination),
            _ => grant.may_send(destination),
        };
        if allowed {
            return false;
        }
        let detail = format!(
            "ACCESS_REFUSED - {operation} access to destination '{destination}' refused for token subject '{}'\n",
            grant.subject
        );
        self.send_error("access_refused", &detail, receipt_of(frame));
        self.close(CloseReason::AccessRefused);
        true
    }

    fn vhost_for_error(&self) -> &str {
        &self.vhost
    }

    fn finish_connect(
        &mut self,
        version: Version,
        heartbeat: HeartBeat,
        server_product: Option<String>,
    ) {
        self.phase = Phase::Connected;
        self.version = version;
        self.heartbeat = heartbeat;
        let mut frame = Frame::new(Command::Connected);
        if let Some(server) = &self.config.server_header {
            let value = match server_product {
                Some(product) => format!("{product} {server}"),
                None => server.clone(),
            };
            frame.headers.push("server", value);
        }
        frame.headers.push("session", self.session_id.as_str());
        frame.headers.push(
            "heart-beat",
            format!("{},{}", heartbeat.send_ms, heartbeat.expect_ms),
        );
        frame.headers.push("version", version.as_str());
        self.actions.push_back(Action::Send(frame));
    }

    fn on_connected_frame(&mut self, frame: Frame) {
        // Transactional SEND/ACK/NACK are buffered until COMMIT.
        if matches!(frame.command, Command::Send | Command::Ack | Command::Nack)
            && let Some(tx) = frame.get("transaction")
        {
            let tx = tx.to_string();
            let receipt = receipt_of(&frame).map(str::to_string);
            match self.transactions.get_mut(&tx) {
                None => self.send_error(
                    "Bad transaction",
                    &format!("Invalid transaction identifier: \"{tx}\"\n"),
                    receipt.as_deref(),
                ),
                Some(frames) if frames.len() >= MAX_TRANSACTION_ACTIONS => self.send_error(
                    "Transaction too large",
                    &format!("Too many actions in transaction (limit {MAX_TRANSACTION_ACTIONS})"),
                    receipt.as_deref(),
                ),
                Some(frames) => {
                    let mut frame = frame;
                    frame.headers.remove("transaction");
                    if frame.command == Command::Send {
                        // Its RECEIPT follows the broker's confirm after COMMIT.
                        frames.push(frame);
                    } else {
                        // ACK/NACK are receipted when buffered, as RabbitMQ does.
                        frame.headers.remove("receipt");
                        frames.push(frame);
                        self.receipt(receipt);
                    }
                }
            }
            return;
        }
        match frame.command {
            Command::Send => self.on_send(frame),
            Command::Subscribe => self.on_subscribe(frame),
            Command::Unsubscribe => self.on_unsubscribe(frame),
            Command::Ack | Command::Nack => self.on_settle(frame),
            Command::Begin | Command::Commit | Command::Abort => self.on_transaction(frame),
            Command::Disconnect => {
                let receipt = receipt_of(&frame).map(str::to_string);
                self.in_flight = Some(InFlight::Flush { receipt });
                self.actions.push_back(Action::Broker(BrokerRequest::Flush));
            }
            _ => self.send_error(
                "Bad command",
                &format!("Could not interpret command \"{}\"\n", frame.command),
                receipt_of(&frame),
            ),
        }
    }

    fn on_send(&mut self, frame: Frame) {
        if self.refused(&frame, "send") {
            return;
        }
        let receipt = receipt_of(&frame).map(str::to_string);
        let plan = match destination::plan_send(&frame.headers, &self.config.plan) {
            Ok(plan) => plan,
            Err(e) => {
                self.send_error(e.summary(), &e.detail(), receipt.as_deref());
                return;
            }
        };
        let body = frame.body;
        // A reply-to of /temp-queue/<id> needs its reply queue first.
        if let Some(temp_id) = plan.reply_to_temp_queue.clone() {
            match self.reply_queues.get(&temp_id) {
                Some(queue) => {
                    let mut plan = plan;
                    plan.properties = plan.properties.with_reply_to(queue.as_str().into());
                    self.publish(plan, body, receipt);
                }
                None => {
                    let temp_plan = destination::temp_queue_plan(&temp_id);
                    self.in_flight = Some(InFlight::TempQueue {
                        temp_id,
                        consumer_tag: temp_plan.consumer_tag.clone(),
                        send: Box::new(PendingSend {
                            plan,
                            body,
                            receipt,
                        }),
                    });
                    self.actions
                        .push_back(Action::Broker(BrokerRequest::Channel(
                            ChannelOp::CreateTempQueue(temp_plan),
                        )));
                }
            }
            return;
        }
        self.publish(plan, body, receipt);
    }

    fn publish(&mut self, plan: SendPlan, body: Bytes, receipt: Option<String>) {
        // `/queue/` declares happen once per session (RabbitMQ's route_state).
        let declare_queue = plan
            .declare
            .filter(|d| !(d.once_per_session && self.declared_queues.contains(&d.queue)));
        let confirm_id = receipt.map(|r| {
            let id = self.next_confirm_id;
            self.next_confirm_id += 1;
            self.pending_receipts.insert(id, r);
            id
        });
        self.in_flight = Some(InFlight::Publish {
            declared_queue: declare_queue
                .as_ref()
                .filter(|d| d.once_per_session)
                .map(|d| d.queue.clone()),
        });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Channel(ChannelOp::Publish(
                Box::new(PublishRequest {
                    route: plan.route,
                    properties: plan.properties,
                    body,
                    mandatory: confirm_id.is_some(),
                    confirm_id,
                    declare_queue,
                }),
            ))));
    }

    fn on_subscribe(&mut self, frame: Frame) {
        if self.refused(&frame, "subscribe") {
            return;
        }
        let receipt = receipt_of(&frame).map(str::to_string);
        let mut plan = match destination::plan_subscribe(&frame.headers, &self.config.plan) {
            Ok(plan) => plan,
            Err(e) => {
                self.send_error(e.summary(), &e.detail(), receipt.as_deref());
                return;
            }
        };
        if self.subscriptions.contains_key(&plan.consumer_tag) {
            self.send_error(
                "Duplicated subscription identifier",
                &format!(
                    "A subscription identified by '{}' already exists.",
                    plan.consumer_tag
                ),
                receipt.as_deref(),
            );
            self.close(CloseReason::ProtocolError);
            return;
        }
        if self.subscriptions.len() >= self.config.max_subscriptions {
            self.send_error(
                "Too many subscriptions",
                &format!(
                    "This session already has {} subscriptions (limit {}).\n",
                    self.subscriptions.len(),
                    self.config.max_subscriptions
                ),
                receipt.as_deref(),
            );
            return;
        }
        if plan
            .declare
            .as_ref()
            .is_some_and(|d| d.once_per_session && self.declared_queues.contains(&d.queue))
        {
            plan.declare = None;
        }
        let is_topic = matches!(
            frame.get("destination").map(destination::parse),
            Some(Ok(Destination::Topic(_)))
        );
        let subscription = Subscription {
            ack: plan.ack,
            durable_queue: (is_topic && plan.durable_subscription).then(|| plan.queue.clone()),
        };
        self.in_flight = Some(InFlight::Subscribe {
            consumer_tag: plan.consumer_tag.clone(),
            subscription,
            receipt,
        });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Channel(
                ChannelOp::Subscribe(Box::new(plan)),
            )));
    }

    fn on_unsubscribe(&mut self, frame: Frame) {
        let receipt = receipt_of(&frame).map(str::to_string);
        if let Err(e) = destination::require_id_for_durable(&frame.headers) {
            self.send_error(e.summary(), &e.detail(), receipt.as_deref());
            return;
        }
        let (consumer_tag, description) =
            match destination::consumer_tag("UNSUBSCRIBE", &frame.headers) {
                Ok(tag) => tag,
                Err(e) => {
                    self.send_error(e.summary(), &e.detail(), receipt.as_deref());
                    return;
                }
            };
        let Some(subscription) = self.subscriptions.remove(&consumer_tag) else {
            self.send_error(
                "No subscription found",
                &format!(
                    "UNSUBSCRIBE must refer to an existing subscription.\nSubscription to \"{description}\" not found.\n"
                ),
                receipt.as_deref(),
            );
            return;
        };
        let delete_queue = if destination::has_durable_header(&frame.headers) {
            subscription.durable_queue
        } else {
            None
        };
        self.in_flight = Some(InFlight::Unsubscribe { receipt });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Channel(
                ChannelOp::Unsubscribe {
                    consumer_tag,
                    delete_queue,
                },
            )));
    }

    fn on_settle(&mut self, frame: Frame) {
        let receipt = receipt_of(&frame).map(str::to_string);
        let ack_id = match destination::ack_id(frame.command.as_str(), self.version, &frame.headers)
        {
            // An id issued to another session is as invalid as a malformed one.
            Ok(id) if id.session_id == self.session_id => id,
            Ok(_) => {
                let header = destination::ack_header_name(self.version);
                self.send_error(
                    "Invalid header",
                    &format!(
                        "'{}' must include a valid \"{header}\" header\n",
                        frame.command
                    ),
                    receipt.as_deref(),
                );
                return;
            }
            Err(e) => {
                self.send_error(e.summary(), &e.detail(), receipt.as_deref());
                return;
            }
        };
        let delivery_tag = ack_id.delivery_tag;
        let position = self
            .unacked
            .iter()
            .position(|p| p.delivery_tag == delivery_tag && p.consumer_tag == ack_id.consumer_tag);
        let Some(position) = position else {
            self.send_error(
                "Message not found",
                &format!("unknown delivery tag {delivery_tag}\n"),
                receipt.as_deref(),
            );
            return;
        };
        let multiple = self.unacked[position].multiple;
        if multiple {
            // Cumulative: settles every older delivery of the session, as basic.ack(multiple) does.
            self.unacked.drain(..=position);
        } else {
            self.unacked.remove(position);
        }
        let request = if frame.command == Command::Ack {
            ChannelOp::Ack {
                delivery_tag,
                multiple,
            }
        } else {
            let requeue = !matches!(frame.get("requeue"), Some("false" | "False"));
            ChannelOp::Nack {
                delivery_tag,
                multiple,
                requeue,
            }
        };
        self.in_flight = Some(InFlight::Settle { receipt });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Channel(request)));
    }

    fn on_transaction(&mut self, frame: Frame) {
        let receipt = receipt_of(&frame).map(str::to_string);
        let name = frame.command.as_str().to_string();
        let Some(tx) = frame.get("transaction").map(str::to_string) else {
            self.send_error(
                "Missing transaction",
                &format!("'{name}' must include a 'transaction' header\n"),
                receipt.as_deref(),
            );
            return;
        };
        match frame.command {
            Command::Begin => {
                if self.transactions.len() >= MAX_TRANSACTIONS {
                    self.send_error(
                        "Transaction limit exceeded",
                        &format!("Too many concurrent transactions (limit {MAX_TRANSACTIONS})"),
                        receipt.as_deref(),
                    );
                    return;
                }
                self.transactions.insert(tx, Vec::new());
                self.receipt(receipt);
            }
            Command::Commit => match self.transactions.remove(&tx) {
                Some(frames) => {
                    // Replay in order ahead of anything else; the receipt follows the replay.
                    let mut replay: VecDeque<Work> = frames.into_iter().map(Work::Frame).collect();
                    if let Some(r) = receipt {
                        replay.push_back(Work::Receipt(r));
                    }
                    while let Some(work) = replay.pop_back() {
                        self.work.push_front(work);
                    }
                }
                None => self.bad_transaction(&tx, receipt),
            },
            _ => match self.transactions.remove(&tx) {
                Some(_) => self.receipt(receipt),
                None => self.bad_transaction(&tx, receipt),
            },
        }
    }

    fn bad_transaction(&mut self, tx: &str, receipt: Option<String>) {
        self.send_error(
            "Bad transaction",
            &format!("Invalid transaction identifier: \"{tx}\"\n"),
            receipt.as_deref(),
        );
    }

    // ---- output helpers ----

    fn receipt(&mut self, receipt: Option<String>) {
        if let Some(id) = receipt {
            self.actions.push_back(Action::Send(
                Frame::new(Command::Receipt).header("receipt-id", id),
            ));
        }
    }

    fn send_error(&mut self, message: &str, detail: &str, receipt: Option<&str>) {
        self.actions
            .push_back(Action::Send(error_frame(message, detail, receipt)));
    }

    fn broker_died(&mut self, failure: &BrokerFailure) {
        if failure.is_connection_lost() {
            let frame = error_frame(&failure.name, &failure.text, None).header("reconnect", "true");
            self.actions.push_back(Action::Send(frame));
            self.close(CloseReason::BrokerLost);
        } else {
            self.send_error(&failure.name, &failure.text, None);
            self.close(CloseReason::BrokerError);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.work.clear();
        self.actions.push_back(Action::Close(reason));
    }
}

/// Queued work: a frame to process, or a COMMIT's receipt due after its replay.
#[derive(Debug)]
enum Work {
    Frame(Frame),
    Receipt(String),
}

/// A client that stops sending gets this much slack beyond the negotiated interval
/// before we give up on it (network jitter; the STOMP spec asks for some tolerance).
fn receive_grace(expect_ms: u64) -> Duration {
    Duration::from_millis(expect_ms + expect_ms / 2 + 1000)
}

fn receipt_of(frame: &Frame) -> Option<&str> {
    frame.get("receipt")
}

/// ERROR frame in RabbitMQ's shape; `receipt-id` added when the failed frame asked for a
/// receipt (RabbitMQ never says; the STOMP spec asks for it).
pub fn error_frame(message: &str, detail: &str, receipt: Option<&str>) -> Frame {
    let mut frame = Frame::new(Command::Error)
        .header("message", message)
        .header("content-type", "text/plain")
        .header("version", SUPPORTED_VERSIONS);
    if let Some(r) = receipt {
        frame.headers.push("receipt-id", r);
    }
    frame.with_body(Bytes::copy_from_slice(detail.as_bytes()))
}

#[cfg(test)]
mod jwt_tests;
#[cfg(test)]
mod tests;
