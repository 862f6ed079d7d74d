//! Runs one STOMP session over one transport: the only place where the sans-IO session,
//! the codec, the broker and a socket meet. One task per connection.

use crate::gateway::broker::{self, Broker, BrokerLink, SessionChannel};
use crate::gateway::fanout::{Fanout, Membership, SharedEvent, SharedEvents};
use crate::gateway::server_info::ServerInfo;
use crate::gateway::session::{
    Action, BrokerFailure, BrokerReply, BrokerRequest, ChannelOp, CloseReason, ConfirmOutcome,
    Delivery, Session, SessionConfig,
};
use crate::stomp::codec::{self, Decoded, Decoder, Limits};
use crate::stomp::{Command, Frame, Version};
use crate::telemetry::{GatewayMetrics, ReasonLabels, SessionLabels, TransportLabels};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;

/// What the driver writes to a transport.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// One encoded STOMP frame (NUL and trailing LF included).
    Frame(Bytes),
    /// A heart-beat EOL.
    Heartbeat,
    /// Close the transport with this code and reason.
    Close(CloseCode, &'static str),
}

/// Close codes; WebSocket-like transports send them, TCP just closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal closure (DISCONNECT, or an ERROR already explained why).
    Normal = 1000,
    /// 1001: going away (gateway shutdown; reconnect).
    GoingAway = 1001,
    /// 1002: protocol error (undecodable STOMP).
    ProtocolError = 1002,
    /// 1007: invalid frame payload (RabbitMQ's framing-error code).
    InvalidPayload = 1007,
    /// 1009: a WebSocket message or frame over the size limit.
    MessageTooBig = 1009,
    /// 1011: the broker failed.
    InternalError = 1011,
    /// 1013: try again later (the AMQP connection to RabbitMQ was lost; reconnect with backoff).
    TryAgainLater = 1013,
    /// 4000: heart-beat timeout.
    HeartbeatTimeout = 4000,
    /// 4001: login timeout.
    LoginTimeout = 4001,
    /// 4002: slow consumer (the client did not read its deliveries).
    SlowConsumer = 4002,
}

impl CloseCode {
    pub fn for_reason(reason: &CloseReason) -> (CloseCode, &'static str) {
        match reason {
            CloseReason::Disconnect => (CloseCode::Normal, "DISCONNECT"),
            CloseReason::ProtocolError => (CloseCode::ProtocolError, "STOMP protocol error"),
            CloseReason::BrokerError => (CloseCode::InternalError, "broker error"),
            CloseReason::BrokerLost => (CloseCode::TryAgainLater, "broker connection lost"),
            CloseReason::LoginFailed => (CloseCode::Normal, "login failed"),
            CloseReason::HeartbeatTimeout => (CloseCode::HeartbeatTimeout, "heart-beat timeout"),
            CloseReason::LoginTimeout => (CloseCode::LoginTimeout, "login timeout"),
            CloseReason::Shutdown => (CloseCode::GoingAway, "gateway shutting down"),
            CloseReason::SlowConsumer => (CloseCode::SlowConsumer, "slow consumer"),
            CloseReason::AccessRefused => (CloseCode::Normal, "access refused"),
            CloseReason::PublishFailed => (CloseCode::Normal, "message not accepted"),
        }
    }

    fn label(reason: &CloseReason) -> &'static str {
        match reason {
            CloseReason::Disconnect => "disconnect",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::BrokerError => "broker_error",
            CloseReason::BrokerLost => "broker_lost",
            CloseReason::LoginFailed => "login_failed",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::LoginTimeout => "login_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::AccessRefused => "access_refused",
            CloseReason::PublishFailed => "publish_failed",
        }
    }
}

/// A violation of the transport's own protocol (e.g. an unmasked or oversized WebSocket
/// frame). A transport yields it as the inbound `io::Error`'s inner error; the driver then
/// answers like a STOMP framing error (ERROR frame) but closes with the transport's code.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct TransportViolation {
    pub close: CloseCode,
    pub close_text: &'static str,
    /// `message` of the ERROR frame.
    pub summary: &'static str,
    /// ERROR body.
    pub detail: String,
}

impl From<TransportViolation> for std::io::Error {
    fn from(v: TransportViolation) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, v)
    }
}

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

/// A delivery (or the end marker) from one of the session's own consumers.
type ConsumerItem = (String, Option<lapin::Result<lapin::message::Delivery>>);

/// An event of a shared (fan-out) subscription.
type SharedItem = (
    String,
    Option<Result<SharedEvent, BroadcastStreamRecvError>>,
);

/// What arrived for the session while a write to its client was blocked.
enum Pending {
    // Boxed: a lapin delivery is large, and this queue is usually empty.
    Own(Box<ConsumerItem>),
    Shared(SharedItem),
}

/// Deliveries taken from the session's consumers while a write was blocked.
struct Backlog {
    items: VecDeque<Pending>,
    limit: usize,
}

/// Cancels the session's own consumers when the gateway drains, so that RabbitMQ stops
/// pushing to a gateway about to close (it pushes auto-ack deliveries without limit); what
/// it pushed before a cancel still reaches the client, since the consumer's stream ends
/// only after it.
struct ConsumerCancel {
    shutdown: CancellationToken,
    /// The session's channel, once logged in.
    channel: Option<Arc<tokio::sync::Mutex<SessionChannel>>>,
    /// Consumers already asked to stop.
    cancelled: HashSet<String>,
}

impl ConsumerCancel {
    /// True when every consumer has been asked to stop (or the gateway is not draining).
    fn covers(&self, consumers: &StreamMap<String, DeliveryStream>) -> bool {
        !self.shutdown.is_cancelled() || consumers.keys().all(|t| self.cancelled.contains(t))
    }

    /// Sends `basic.cancel` for every consumer not asked yet, from a task: the channel may
    /// be busy with an operation, and the session goes on forwarding meanwhile.
    fn cancel_all(&mut self, consumers: &StreamMap<String, DeliveryStream>) {
        let tags: Vec<String> = consumers
            .keys()
            .filter(|t| self.cancelled.insert((*t).clone()))
            .cloned()
            .collect();
        let Some(channel) = self.channel.clone() else {
            return;
        };
        if tags.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let mut channel = channel.lock().await;
            for tag in tags {
                // On failure the channel or connection is gone, which ends the stream too.
                let _ = channel.unsubscribe(&tag, None).await;
            }
        });
    }
}

/// Runs one write (feed or flush) bounded by `timeout`, meanwhile moving deliveries into
/// `backlog`: lapin buffers deliveries without limit and an auto-ack consumer has no
/// prefetch limit, so a client that stops reading would otherwise make the gateway hold
/// everything RabbitMQ pushes until the timeout. False when the session must end (`stuck`
/// tells whether because the client stopped reading: timeout, or more than
/// `backlog.limit` deliveries waiting).
async fn drive<F, E>(
    write: F,
    timeout: Duration,
    stuck: &mut bool,
    consumers: &mut StreamMap<String, DeliveryStream>,
    shared: &mut StreamMap<String, SharedStream>,
    backlog: &mut Backlog,
    cancel: &mut ConsumerCancel,
) -> bool
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(write);
    // Most writes complete at once (the socket has room): no clock read, no timer.
    if let Some(result) = (&mut write).now_or_never() {
        return result.is_ok();
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let shutdown = cancel.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            result = &mut write => return result.is_ok(),
            _ = tokio::time::sleep_until(deadline) => {
                *stuck = true;
                return false;
            }
            // A drain does not wait for a slow client to stop RabbitMQ pushing more.
            _ = shutdown.cancelled(), if !cancel.covers(consumers) => {
                cancel.cancel_all(consumers);
            }
            Some(item) = consumers.next(), if !consumers.is_empty() => {
                backlog.items.push_back(Pending::Own(Box::new(item)));
            }
            Some((tag, item)) = shared.next(), if !shared.is_empty() => {
                if matches!(item, Some(Err(BroadcastStreamRecvError::Lagged(_)))) {
                    // Fell behind: read no more of it. The session is closed as a slow
                    // consumer (with an ERROR) once this write completes, or as stuck if
                    // it never does; the shared queue's ring bounds the memory meanwhile.
                    shared.remove(&tag);
                }
                backlog.items.push_back(Pending::Shared((tag, item)));
            }
        }
        if backlog.items.len() > backlog.limit {
            *stuck = true;
            return false;
        }
    }
}

/// Hands one shared-subscription event to the session.
fn on_shared_item(
    session: &mut Session,
    shared: &mut StreamMap<String, SharedStream>,
    memberships: &mut HashMap<String, Membership>,
    (tag, item): SharedItem,
) {
    match item {
        Some(Ok(SharedEvent::Frame(bytes))) => session.handle_shared_frame(&tag, bytes),
        Some(Ok(SharedEvent::Failed(failure))) => session.handle_broker_failure(failure),
        Some(Err(BroadcastStreamRecvError::Lagged(_))) => {
            shared.remove(&tag);
            memberships.remove(&tag);
            session.handle_slow_consumer();
        }
        None => {
            shared.remove(&tag);
            memberships.remove(&tag);
            session.handle_consumer_cancelled(&tag);
        }
    }
}

/// Hands one consumer item to the session; true when it reported the loss of the
/// session's AMQP connection (a consumer ends with its connection).
fn on_consumer_item(
    session: &mut Session,
    consumers: &mut StreamMap<String, DeliveryStream>,
    link: Option<&BrokerLink>,
    (tag, item): ConsumerItem,
) -> bool {
    match item {
        Some(Ok(delivery)) => session.handle_delivery(Delivery {
            consumer_tag: tag,
            delivery_tag: delivery.delivery_tag,
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
            properties: delivery.properties,
            body: Bytes::from(delivery.data),
        }),
        Some(Err(e)) => session.handle_broker_failure(broker::to_failure(e)),
        None if link.is_some_and(BrokerLink::is_lost) => {
            // Report the loss once.
            consumers.remove(&tag);
            session.handle_broker_failure(BrokerFailure::connection_lost(
                "The AMQP connection to RabbitMQ was lost; reconnect and resubscribe.\n",
            ));
            return true;
        }
        None => {
            consumers.remove(&tag);
            session.handle_consumer_cancelled(&tag);
        }
    }
    false
}

type DeliveryStream = BoxStream<'static, Option<lapin::Result<lapin::message::Delivery>>>;
type SharedStream = BoxStream<'static, Option<Result<SharedEvent, BroadcastStreamRecvError>>>;

/// Result of one broker operation, carried back into the loop.
enum OpResult {
    /// The session's channel, and RabbitMQ's product for the `server` header.
    Connected(
        Result<(Box<SessionChannel>, Option<String>), crate::gateway::session::ConnectFailure>,
    ),
    Subscribed(String, Result<lapin::Consumer, BrokerFailure>),
    Joined(String, Result<Membership, BrokerFailure>),
    TempQueue(String, Result<(String, lapin::Consumer), BrokerFailure>),
    Published(Option<u64>, Result<broker::Confirm, BrokerFailure>),
    Done(Result<(), BrokerFailure>),
}

/// Drives a session until it closes. `inbound` yields raw bytes from the client (any
/// chunking); `outbound` receives encoded frames.
pub async fn run<I, O>(ctx: ConnectionContext, transport: &'static str, inbound: I, outbound: O)
where
    I: Stream<Item = std::io::Result<Bytes>> + Unpin,
    O: Sink<Outbound> + Unpin,
{
    run_with_bearer(ctx, transport, inbound, outbound, None).await
}

/// [`run`], with a token the transport received (JWT auth mode).
pub async fn run_with_bearer<I, O>(
    ctx: ConnectionContext,
    transport: &'static str,
    mut inbound: I,
    mut outbound: O,
    bearer: Option<String>,
) where
    I: Stream<Item = std::io::Result<Bytes>> + Unpin,
    O: Sink<Outbound> + Unpin,
{
    let metrics = &ctx.metrics;
    let transport_labels = TransportLabels {
        transport: transport.to_string(),
    };
    metrics.connections.get_or_create(&transport_labels).inc();
    let session_id = format!("session-{}", random_token());
    let mut session = Session::new(ctx.session.clone(), session_id, Instant::now());
    if let Some(token) = bearer {
        session.set_bearer_token(token);
    }
    let mut decoder = Decoder::new(ctx.limits.clone());
    let mut encode_buf = BytesMut::new();
    let mut channel: Option<Arc<tokio::sync::Mutex<SessionChannel>>> = None;
    // The session's AMQP connection, watched outside the channel lock.
    let mut link: Option<BrokerLink> = None;
    let mut link_lost: Option<BoxFuture<'static, ()>> = None;
    // Set on shutdown: no new input; consumers cancelled, what they delivered before is
    // forwarded; ends when that and in-flight work are done, or at this deadline.
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut cancel = ConsumerCancel {
        shutdown: ctx.shutdown.clone(),
        channel: None,
        cancelled: HashSet::new(),
    };
    let mut op: Option<BoxFuture<'static, OpResult>> = None;
    let mut consumers: StreamMap<String, DeliveryStream> = StreamMap::new();
    let mut backlog = Backlog {
        items: VecDeque::new(),
        limit: ctx.max_queued_messages,
    };
    // Subscriptions served by the shared fan-out: their event streams and memberships.
    let mut shared: StreamMap<String, SharedStream> = StreamMap::new();
    let mut memberships: HashMap<String, Membership> = HashMap::new();
    let mut confirms: FuturesUnordered<
        BoxFuture<'static, (Option<u64>, lapin::Result<lapin::Confirmation>)>,
    > = FuturesUnordered::new();
    let mut flush_deadline: Option<tokio::time::Instant> = None;
    let mut session_labels: Option<SessionLabels> = None;
    let mut subscriptions_counted = 0usize;
    let mut input_open = true;
    let mut close_reason: Option<CloseReason> = None;
    // Set when the client stopped reading and a write timed out.
    let mut stuck = false;
    // Close code of a transport violation, replacing the session's.
    let mut close_override: Option<(CloseCode, &'static str)> = None;

    // Created once: a fresh `cancelled()` per loop turn would register and unregister a
    // waiter on the token for every delivery.
    let shutdown = ctx.shutdown.clone();
    let mut shutdown_signal = std::pin::pin!(shutdown.cancelled());

    'outer: loop {
        // 0. The gateway drains: stop RabbitMQ pushing to this session (also a consumer
        // that a SUBSCRIBE in flight just added), deliver what it pushed before.
        if drain_deadline.is_none()
            && shutdown.is_cancelled()
            && !session.is_closed()
            && close_reason.is_none()
        {
            drain_deadline = Some(tokio::time::Instant::now() + ctx.flush_timeout);
            session.begin_drain();
            // Leave the shared queues (they stop too, see `Fanout::drain`): each stream ends
            // after the frames already distributed to it.
            memberships.clear();
        }
        if drain_deadline.is_some() {
            cancel.cancel_all(&consumers);
        }

        // 1. Perform everything the session asked for.
        while let Some(action) = session.poll_action() {
            match action {
                Action::Send(frame) => {
                    if frame.command == Command::Error
                        && let Some(message) = frame.get("message")
                    {
                        metrics.error_sent(message);
                    }
                    metrics.frame_out(frame.command.as_str());
                    codec::encode(&frame, session.version(), &mut encode_buf);
                    let bytes = encode_buf.split().freeze();
                    if !drive(
                        outbound.feed(Outbound::Frame(bytes)),
                        ctx.write_timeout,
                        &mut stuck,
                        &mut consumers,
                        &mut shared,
                        &mut backlog,
                        &mut cancel,
                    )
                    .await
                    {
                        break 'outer;
                    }
                    session.note_sent(Instant::now());
                    if frame.command == Command::Connected {
                        let labels = SessionLabels {
                            version: session.version().as_str().to_string(),
                            transport: transport.to_string(),
                        };
                        metrics.sessions.get_or_create(&labels).inc();
                        session_labels = Some(labels);
                        decoder.set_version(session.version());
                        decoder.set_authenticated(true);
                    }
                }
                Action::SendEncoded(bytes) => {
                    metrics.frame_out("MESSAGE");
                    if !drive(
                        outbound.feed(Outbound::Frame(bytes)),
                        ctx.write_timeout,
                        &mut stuck,
                        &mut consumers,
                        &mut shared,
                        &mut backlog,
                        &mut cancel,
                    )
                    .await
                    {
                        break 'outer;
                    }
                    session.note_sent(Instant::now());
                }
                Action::SendHeartbeat => {
                    if !drive(
                        outbound.feed(Outbound::Heartbeat),
                        ctx.write_timeout,
                        &mut stuck,
                        &mut consumers,
                        &mut shared,
                        &mut backlog,
                        &mut cancel,
                    )
                    .await
                    {
                        break 'outer;
                    }
                }
                Action::Broker(BrokerRequest::Channel(ChannelOp::Unsubscribe {
                    consumer_tag,
                    ..
                })) if memberships.contains_key(&consumer_tag) => {
                    // Leaving a shared queue needs no broker round trip.
                    shared.remove(&consumer_tag);
                    memberships.remove(&consumer_tag);
                    session.handle_broker_reply(BrokerReply::Done);
                }
                Action::Broker(BrokerRequest::Flush) if !memberships.is_empty() => {
                    shared.clear();
                    memberships.clear();
                    op = start_request(
                        BrokerRequest::Flush,
                        &ctx,
                        channel.clone(),
                        &confirms,
                        &mut flush_deadline,
                    );
                    if op.is_none() && flush_deadline.is_none() {
                        op = Some(close_channel(channel.clone()));
                    }
                }
                Action::Broker(request) => {
                    op = start_request(
                        request,
                        &ctx,
                        channel.clone(),
                        &confirms,
                        &mut flush_deadline,
                    );
                    if op.is_none() && flush_deadline.is_none() {
                        // Flush with nothing outstanding: go straight to closing the channel.
                        op = Some(close_channel(channel.clone()));
                    }
                }
                Action::Close(reason) => {
                    close_reason = Some(reason);
                    break 'outer;
                }
            }
        }
        if !drive(
            outbound.flush(),
            ctx.write_timeout,
            &mut stuck,
            &mut consumers,
            &mut shared,
            &mut backlog,
            &mut cancel,
        )
        .await
        {
            break;
        }
        let subs = session.subscription_count();
        if subs != subscriptions_counted {
            metrics
                .subscriptions
                .inc_by(subs as i64 - subscriptions_counted as i64);
            subscriptions_counted = subs;
        }

        // Draining: once nothing is in flight (publishes confirmed, so their RECEIPTs are
        // out) and every consumer has ended with what it delivered before its cancel, tell
        // the client to reconnect and close.
        if drain_deadline.is_some()
            && !session.is_closed()
            && op.is_none()
            && confirms.is_empty()
            && consumers.is_empty()
            && shared.is_empty()
            && backlog.items.is_empty()
        {
            session.handle_shutdown();
            continue;
        }

        // 2. Feed buffered client frames while the session accepts them.
        let mut fed = false;
        while session.wants_input() && drain_deadline.is_none() {
            match decoder.decode() {
                Ok(Some(Decoded::Frame(frame))) => {
                    metrics.frame_in(frame.command.as_str());
                    session.handle_frame(frame);
                    fed = true;
                    break;
                }
                Ok(Some(Decoded::Heartbeat)) => {}
                Ok(None) => {
                    decoder.shrink_if_idle();
                    break;
                }
                Err(e) => {
                    session.handle_codec_error(e.summary(), &e.to_string());
                    fed = true;
                    break;
                }
            }
        }
        if fed {
            continue;
        }
        // Deliveries that arrived while a write was blocked go first, in order.
        match backlog.items.pop_front() {
            Some(Pending::Own(item)) => {
                if on_consumer_item(&mut session, &mut consumers, link.as_ref(), *item) {
                    link_lost = None;
                }
                continue;
            }
            Some(Pending::Shared(item)) => {
                on_shared_item(&mut session, &mut shared, &mut memberships, item);
                continue;
            }
            None => {}
        }
        if !input_open && session.wants_input() && op.is_none() {
            // Client went away and nothing is pending.
            break;
        }

        // 3. Wait for the next event.
        let timeout = session.next_timeout().map(tokio::time::Instant::from_std);
        let wants_input = session.wants_input() && input_open && drain_deadline.is_none();
        let live = !session.is_closed() && close_reason.is_none();
        tokio::select! {
            biased;
            // Wakes the loop; its top starts the drain.
            _ = &mut shutdown_signal, if live && drain_deadline.is_none() => {}
            _ = async { tokio::time::sleep_until(drain_deadline.expect("guarded")).await }, if live && drain_deadline.is_some() => {
                tracing::warn!("in-flight work still outstanding at the drain deadline");
                session.handle_shutdown();
            }
            _ = async { link_lost.as_mut().expect("guarded").await }, if live && link_lost.is_some() => {
                link_lost = None;
                session.handle_broker_failure(BrokerFailure::connection_lost(
                    "The AMQP connection to RabbitMQ was lost; reconnect and resubscribe.\n",
                ));
            }
            result = async { op.as_mut().expect("guarded").await }, if op.is_some() => {
                op = None;
                let reply = match result {
                    OpResult::Connected(Ok((ch, server_product))) => {
                        let watch = ch.link();
                        link_lost = Some(watch.lost().boxed());
                        link = Some(watch);
                        channel = Some(Arc::new(tokio::sync::Mutex::new(*ch)));
                        cancel.channel = channel.clone();
                        BrokerReply::Connected { server_product }
                    }
                    OpResult::Connected(Err(failure)) => BrokerReply::ConnectFailed(failure),
                    OpResult::Subscribed(tag, Ok(consumer)) => {
                        consumers.insert(tag, delivery_stream(consumer));
                        BrokerReply::Done
                    }
                    OpResult::Joined(tag, Ok(mut membership)) => {
                        // Joined while draining: leave at once (the last one out stops a
                        // hub the drain did not see).
                        if drain_deadline.is_none() {
                            if let Some(events) = membership.take_events() {
                                shared.insert(tag.clone(), shared_stream(events));
                            }
                            memberships.insert(tag, membership);
                        }
                        BrokerReply::Done
                    }
                    OpResult::TempQueue(tag, Ok((queue, consumer))) => {
                        consumers.insert(tag, delivery_stream(consumer));
                        BrokerReply::TempQueueCreated { queue }
                    }
                    OpResult::Published(confirm_id, Ok(confirm)) => {
                        confirms.push(async move { (confirm_id, confirm.await) }.boxed());
                        BrokerReply::Done
                    }
                    OpResult::Done(Ok(())) => BrokerReply::Done,
                    OpResult::Subscribed(_, Err(f))
                    | OpResult::Joined(_, Err(f))
                    | OpResult::TempQueue(_, Err(f))
                    | OpResult::Published(_, Err(f))
                    | OpResult::Done(Err(f)) => BrokerReply::Failed(f),
                };
                session.handle_broker_reply(reply);
            }
            Some((confirm_id, result)) = confirms.next(), if !confirms.is_empty() => {
                match result {
                    Ok(confirmation) => {
                        if let Some(id) = confirm_id {
                            let outcome = broker::confirm_outcome(confirmation);
                            if matches!(outcome, ConfirmOutcome::Unroutable { .. }) {
                                metrics.unroutable_messages.inc();
                            }
                            session.handle_confirm(id, outcome);
                        }
                    }
                    Err(e) => session.handle_broker_failure(broker::to_failure(e)),
                }
                if flush_deadline.is_some() && confirms.is_empty() {
                    flush_deadline = None;
                    op = Some(close_channel(channel.clone()));
                }
            }
            _ = async { tokio::time::sleep_until(flush_deadline.expect("guarded")).await }, if flush_deadline.is_some() => {
                tracing::warn!("publisher confirms still outstanding at flush timeout");
                flush_deadline = None;
                op = Some(close_channel(channel.clone()));
            }
            Some(item) = consumers.next(), if !consumers.is_empty() => {
                if on_consumer_item(&mut session, &mut consumers, link.as_ref(), item) {
                    link_lost = None;
                }
            }
            Some(item) = shared.next(), if !shared.is_empty() => {
                on_shared_item(&mut session, &mut shared, &mut memberships, item);
            }
            data = inbound.next(), if wants_input => {
                match data {
                    Some(Ok(bytes)) => {
                        session.note_received(Instant::now());
                        decoder.feed(&bytes);
                    }
                    Some(Err(e)) => {
                        if let Some(v) = e
                            .get_ref()
                            .and_then(|inner| inner.downcast_ref::<TransportViolation>())
                        {
                            close_override = Some((v.close, v.close_text));
                            session.handle_codec_error(v.summary, &v.detail);
                        }
                        input_open = false;
                        if session.wants_input() {
                            break;
                        }
                    }
                    None => {
                        input_open = false;
                        if session.wants_input() {
                            break;
                        }
                    }
                }
            }
            // Lazy: no timer at all while the session has no deadline.
            _ = async { tokio::time::sleep_until(timeout.expect("guarded")).await }, if timeout.is_some() => {
                let now = Instant::now();
                if drain_deadline.is_some() {
                    // Draining stops reading input: the client's silence is ours, not a
                    // heart-beat timeout (the drain deadline bounds the wait instead).
                    session.note_received(now);
                }
                session.handle_timeout(now);
            }
            // Nothing left that could ever wake this session.
            else => break,
        }
    }

    // Session over: say why, release everything.
    if stuck {
        // The socket accepts nothing more: no ERROR can reach the client; just drop it.
        tracing::info!("closing a connection whose client stopped reading");
        metrics.slow_consumers.inc();
        metrics
            .closes
            .get_or_create(&ReasonLabels {
                reason: "slow_consumer".to_string(),
            })
            .inc();
    } else if let Some(reason) = &close_reason {
        if *reason == CloseReason::SlowConsumer {
            // Counted here, once, whether or not its ERROR could still be written.
            metrics.slow_consumers.inc();
        }
        metrics
            .closes
            .get_or_create(&ReasonLabels {
                reason: CloseCode::label(reason).to_string(),
            })
            .inc();
        let (code, text) = close_override.unwrap_or_else(|| CloseCode::for_reason(reason));
        let _ = tokio::time::timeout(
            ctx.write_timeout,
            outbound.send(Outbound::Close(code, text)),
        )
        .await;
    } else {
        metrics
            .closes
            .get_or_create(&ReasonLabels {
                reason: "client_gone".to_string(),
            })
            .inc();
        let _ = tokio::time::timeout(ctx.write_timeout, outbound.close()).await;
    }
    if let Some(labels) = session_labels {
        metrics.sessions.get_or_create(&labels).dec();
    }
    metrics.subscriptions.dec_by(subscriptions_counted as i64);
    metrics.connections.get_or_create(&transport_labels).dec();
    drop(shared);
    drop(memberships);
    drop(consumers);
    drop(channel);
}

fn shared_stream(events: SharedEvents) -> SharedStream {
    // A trailing None marks the end (the hub stopped).
    events
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .boxed()
}

fn delivery_stream(consumer: lapin::Consumer) -> DeliveryStream {
    // A trailing None marks the consumer's end (server cancel or channel close).
    consumer
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .boxed()
}

/// Starts the future for one session request. Returns None for Flush (handled in the loop).
fn start_request(
    request: BrokerRequest,
    ctx: &ConnectionContext,
    channel: Option<Arc<tokio::sync::Mutex<SessionChannel>>>,
    confirms: &FuturesUnordered<
        BoxFuture<'static, (Option<u64>, lapin::Result<lapin::Confirmation>)>,
    >,
    flush_deadline: &mut Option<tokio::time::Instant>,
) -> Option<BoxFuture<'static, OpResult>> {
    match request {
        BrokerRequest::Connect {
            login,
            passcode,
            vhost,
        } => {
            let broker = ctx.broker.clone();
            let server_info = ctx.server_info.clone();
            // Half the login timeout: a CONNECTED that waited longer would come too late.
            let product_wait = ctx
                .session
                .server_header
                .as_ref()
                .map(|_| ctx.session.login_timeout / 2);
            Some(
                async move {
                    // `passcode` is zeroed when this future completes.
                    let opened = broker.open_channel(&login, passcode.as_str(), &vhost).await;
                    drop(passcode);
                    let result = match opened {
                        Ok(channel) => {
                            // The same `server` header from the first CONNECTED on.
                            let product = match product_wait {
                                Some(wait) => server_info.product(wait).await,
                                None => None,
                            };
                            Ok((Box::new(channel), product))
                        }
                        Err(failure) => Err(failure),
                    };
                    OpResult::Connected(result)
                }
                .boxed(),
            )
        }
        BrokerRequest::Flush => {
            if !confirms.is_empty() {
                *flush_deadline = Some(tokio::time::Instant::now() + ctx.flush_timeout);
            }
            None
        }
        BrokerRequest::Channel(ChannelOp::Subscribe(plan))
            if ctx.fanout.is_some() && Fanout::shareable(&plan) =>
        {
            let fanout = ctx.fanout.clone()?;
            Some(
                async move {
                    let Some(channel) = channel else {
                        return OpResult::Joined(plan.consumer_tag, Err(no_channel()));
                    };
                    let mut channel = channel.lock().await;
                    match fanout.join(&mut channel, &plan).await {
                        Ok(Some(membership)) => OpResult::Joined(plan.consumer_tag, Ok(membership)),
                        // No room for a shared queue's channel: an unshared subscription.
                        Ok(None) => {
                            let result = channel.subscribe(&plan).await;
                            OpResult::Subscribed(plan.consumer_tag, result)
                        }
                        Err(failure) => OpResult::Joined(plan.consumer_tag, Err(failure)),
                    }
                }
                .boxed(),
            )
        }
        BrokerRequest::Channel(op) => Some(channel_op(channel, op).boxed()),
    }
}

/// Last step of DISCONNECT: close the channel before the RECEIPT, so that once the client
/// has its RECEIPT no consumer of its session takes (and auto-acks) another message.
fn close_channel(
    channel: Option<Arc<tokio::sync::Mutex<SessionChannel>>>,
) -> BoxFuture<'static, OpResult> {
    async move {
        if let Some(channel) = channel {
            channel.lock().await.close().await;
        }
        OpResult::Done(Ok(()))
    }
    .boxed()
}

fn no_channel() -> BrokerFailure {
    BrokerFailure::connection_lost("The session has no broker channel.\n")
}

/// Runs one operation on the session's channel.
async fn channel_op(
    channel: Option<Arc<tokio::sync::Mutex<SessionChannel>>>,
    op: ChannelOp,
) -> OpResult {
    let Some(channel) = channel else {
        return OpResult::Done(Err(no_channel()));
    };
    let mut channel = channel.lock().await;
    match op {
        ChannelOp::Subscribe(plan) => {
            let result = channel.subscribe(&plan).await;
            OpResult::Subscribed(plan.consumer_tag, result)
        }
        ChannelOp::Unsubscribe {
            consumer_tag,
            delete_queue,
        } => OpResult::Done(
            channel
                .unsubscribe(&consumer_tag, delete_queue.as_deref())
                .await,
        ),
        ChannelOp::Publish(publish) => {
            let result = channel.publish(&publish).await;
            OpResult::Published(publish.confirm_id, result)
        }
        ChannelOp::CreateTempQueue(plan) => {
            let result = channel.create_temp_queue(&plan).await;
            OpResult::TempQueue(plan.consumer_tag, result)
        }
        ChannelOp::Ack {
            delivery_tag,
            multiple,
        } => OpResult::Done(channel.ack(delivery_tag, multiple).await),
        ChannelOp::Nack {
            delivery_tag,
            multiple,
            requeue,
        } => OpResult::Done(channel.nack(delivery_tag, multiple, requeue).await),
    }
}

/// A random URL-safe token for session ids.
pub fn random_token() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Encodes a frame the way the driver does (used by transports that answer before a
/// session exists, e.g. connection limits).
pub fn encode_frame(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    codec::encode(frame, Version::V1_2, &mut buf);
    buf.freeze()
}
