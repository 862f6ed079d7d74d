//! Per-connection STOMP state machine. Frames and broker results in, actions out; no IO.
//!
//! The driver (see `gateway::connection`) feeds client frames with [`Session::handle_frame`],
//! executes each [`Action::Broker`] request and feeds the result back with
//! [`Session::handle_broker_reply`]. At most one broker request is in flight: while the
//! session is busy the driver stops reading client frames, which keeps STOMP's in-order
//! semantics (a SUBSCRIBE is established before the next SEND is published) and gives
//! natural backpressure. Deliveries, publisher confirms and timers may arrive at any time.

use crate::gateway::auth::{Grant, JwtVerifier};
use crate::gateway::rabbit::destination::{self, Destination};
use crate::gateway::rabbit::error::{ErrorFrame, error_frame};
use crate::gateway::rabbit::ids;
use crate::gateway::rabbit::message;
use crate::gateway::rabbit::plan::{self, AckMode, SendPlan};
use crate::stomp::version::{self, HeartBeat};
use crate::stomp::{Command, Frame, Version};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod api;
mod commands;
mod connect;

pub use api::{
    Action, BROKER_LOST, BrokerFailure, BrokerReply, BrokerRequest, ChannelOp, CloseReason,
    ConfirmOutcome, ConnectFailure, Delivery, MAX_TRANSACTION_ACTIONS, MAX_TRANSACTIONS, Passcode,
    PublishRequest, SessionConfig,
};

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
    /// Client-ack deliveries, transactions, queues and receipts: created on first use.
    rare: Option<Box<Rare>>,
    next_confirm_id: u64,
    in_flight: Option<InFlight>,
    /// JWT mode: a token from the transport (WebSocket `Authorization: Bearer`), used by
    /// CONNECT and then dropped.
    bearer: Option<String>,
    /// JWT mode: what the token allows, and when it expires.
    grant: Option<Box<Grant>>,
    token_deadline: Option<Instant>,
    /// Work waiting to be processed (COMMIT replays, a SEND waiting for its reply queue).
    work: VecDeque<Work>,
    actions: VecDeque<Action>,
    /// The gateway is draining: the session's consumers are being cancelled.
    draining: bool,
}

/// Session state that most sessions (a browser subscribed with auto-ack) never use, boxed
/// on first use: inline, its empty tables would cost every idle session ~200 bytes.
#[derive(Default)]
struct Rare {
    unacked: VecDeque<PendingAck>,
    transactions: HashMap<String, Vec<Frame>>,
    declared_queues: HashSet<String>,
    /// temp-queue id -> server-named queue.
    reply_queues: HashMap<String, String>,
    /// Outstanding receipts of published SENDs, by confirm id.
    pending_receipts: HashMap<u64, String>,
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
            rare: None,
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

    /// Whether [`Session::poll_action`] has something.
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// The next output, if any. Drain after every `handle_*` call.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The rarely used part of the state, created on first use.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// Whether `queue` was declared by this session already.
    fn declared(&self, queue: &str) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|rare| rare.declared_queues.contains(queue))
    }

    /// Frees the action and work queues once they are empty. Each keeps its first
    /// allocation otherwise (four actions, ~0.4 KB), which an idle session, most of a
    /// gateway's, would carry for its lifetime; the driver calls this before it waits.
    pub fn release_idle_buffers(&mut self) {
        if self.actions.is_empty() && self.actions.capacity() > 0 {
            self.actions = VecDeque::new();
        }
        if self.work.is_empty() && self.work.capacity() > 0 {
            self.work = VecDeque::new();
        }
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
                    self.rare().declared_queues.insert(queue);
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
                self.rare().reply_queues.insert(temp_id, queue.clone());
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
        let Some(receipt) = self
            .rare
            .as_mut()
            .and_then(|rare| rare.pending_receipts.remove(&confirm_id))
        else {
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
        let id = ids::subscription_header(consumer_tag)
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
        let headers = message::message_frame_headers(
            &self.session_id,
            &message::Envelope {
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
            self.rare().unacked.push_back(PendingAck {
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

#[cfg(test)]
mod jwt_tests;
#[cfg(test)]
mod tests;
