//! Runs one STOMP session over one transport: the only place where the sans-IO session,
//! the codec, the broker and a socket meet. One task per connection.

use crate::gateway::broker::{self, Broker, SessionChannel};
use crate::gateway::session::{
    Action, BrokerFailure, BrokerReply, BrokerRequest, CloseReason, Delivery, Session,
    SessionConfig,
};
use crate::stomp::codec::{self, Decoded, Decoder, Limits};
use crate::stomp::{Command, Frame, Version};
use crate::telemetry::{GatewayMetrics, ReasonLabels, SessionLabels, TransportLabels};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamMap;
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
    /// 1011: the broker failed.
    InternalError = 1011,
    /// 4000: heart-beat timeout.
    HeartbeatTimeout = 4000,
    /// 4001: login timeout.
    LoginTimeout = 4001,
}

impl CloseCode {
    pub fn for_reason(reason: &CloseReason) -> (CloseCode, &'static str) {
        match reason {
            CloseReason::Disconnect => (CloseCode::Normal, "DISCONNECT"),
            CloseReason::ProtocolError => (CloseCode::ProtocolError, "STOMP protocol error"),
            CloseReason::BrokerError => (CloseCode::InternalError, "broker error"),
            CloseReason::LoginFailed => (CloseCode::Normal, "login failed"),
            CloseReason::HeartbeatTimeout => (CloseCode::HeartbeatTimeout, "heart-beat timeout"),
            CloseReason::LoginTimeout => (CloseCode::LoginTimeout, "login timeout"),
            CloseReason::Shutdown => (CloseCode::GoingAway, "gateway shutting down"),
        }
    }

    fn label(reason: &CloseReason) -> &'static str {
        match reason {
            CloseReason::Disconnect => "disconnect",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::BrokerError => "broker_error",
            CloseReason::LoginFailed => "login_failed",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::LoginTimeout => "login_timeout",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Everything a connection needs from the server.
#[derive(Clone)]
pub struct ConnectionContext {
    pub session: SessionConfig,
    pub limits: Limits,
    pub broker: Broker,
    pub metrics: GatewayMetrics,
    pub shutdown: CancellationToken,
    /// Longest wait for outstanding publisher confirms on DISCONNECT or shutdown.
    pub flush_timeout: Duration,
}

type DeliveryStream = BoxStream<'static, Option<lapin::Result<lapin::message::Delivery>>>;

/// Result of one broker operation, carried back into the loop.
enum OpResult {
    Connected(Result<SessionChannel, crate::gateway::session::ConnectFailure>),
    Subscribed(String, Result<lapin::Consumer, BrokerFailure>),
    TempQueue(String, Result<(String, lapin::Consumer), BrokerFailure>),
    Published(Option<u64>, Result<lapin::PublisherConfirm, BrokerFailure>),
    Done(Result<(), BrokerFailure>),
}

/// Drives a session until it closes. `inbound` yields raw bytes from the client (any
/// chunking); `outbound` receives encoded frames.
pub async fn run<I, O>(
    ctx: ConnectionContext,
    transport: &'static str,
    mut inbound: I,
    mut outbound: O,
) where
    I: Stream<Item = std::io::Result<Bytes>> + Unpin,
    O: Sink<Outbound> + Unpin,
{
    let metrics = ctx.metrics.clone();
    let transport_labels = TransportLabels {
        transport: transport.to_string(),
    };
    metrics.connections.get_or_create(&transport_labels).inc();
    let session_id = format!("session-{}", random_token());
    let mut session = Session::new(ctx.session.clone(), session_id, Instant::now());
    let mut decoder = Decoder::new(ctx.limits.clone());
    let mut encode_buf = BytesMut::with_capacity(256);
    let mut channel: Option<Arc<tokio::sync::Mutex<SessionChannel>>> = None;
    let mut op: Option<BoxFuture<'static, OpResult>> = None;
    let mut consumers: StreamMap<String, DeliveryStream> = StreamMap::new();
    let mut confirms: FuturesUnordered<
        BoxFuture<'static, (Option<u64>, lapin::Result<lapin::Confirmation>)>,
    > = FuturesUnordered::new();
    let mut flush_deadline: Option<tokio::time::Instant> = None;
    let mut session_labels: Option<SessionLabels> = None;
    let mut subscriptions_counted = 0usize;
    let mut input_open = true;
    let mut close_reason: Option<CloseReason> = None;

    'outer: loop {
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
                    if outbound.feed(Outbound::Frame(bytes)).await.is_err() {
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
                Action::SendHeartbeat => {
                    if outbound.feed(Outbound::Heartbeat).await.is_err() {
                        break 'outer;
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
                        // Flush with nothing outstanding completes at once.
                        session.handle_broker_reply(BrokerReply::Done);
                    }
                }
                Action::Close(reason) => {
                    close_reason = Some(reason);
                    break 'outer;
                }
            }
        }
        if outbound.flush().await.is_err() {
            break;
        }
        let subs = session.subscription_count();
        if subs != subscriptions_counted {
            metrics
                .subscriptions
                .inc_by(subs as i64 - subscriptions_counted as i64);
            subscriptions_counted = subs;
        }

        // 2. Feed buffered client frames while the session accepts them.
        let mut fed = false;
        while session.wants_input() {
            match decoder.decode() {
                Ok(Some(Decoded::Frame(frame))) => {
                    metrics.frame_in(frame.command.as_str());
                    session.handle_frame(frame);
                    fed = true;
                    break;
                }
                Ok(Some(Decoded::Heartbeat)) => {}
                Ok(None) => break,
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
        if !input_open && session.wants_input() && op.is_none() {
            // Client went away and nothing is pending.
            break;
        }

        // 3. Wait for the next event.
        let timeout = session
            .next_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let wants_input = session.wants_input() && input_open;
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled(), if !session.is_closed() && close_reason.is_none() => {
                session.handle_shutdown();
            }
            result = async { op.as_mut().expect("guarded").await }, if op.is_some() => {
                op = None;
                let reply = match result {
                    OpResult::Connected(Ok(ch)) => {
                        channel = Some(Arc::new(tokio::sync::Mutex::new(ch)));
                        BrokerReply::Connected { server_product: ctx.broker.server_product() }
                    }
                    OpResult::Connected(Err(failure)) => BrokerReply::ConnectFailed(failure),
                    OpResult::Subscribed(tag, Ok(consumer)) => {
                        consumers.insert(tag, delivery_stream(consumer));
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
                            session.handle_confirm(id, broker::confirm_outcome(confirmation));
                        }
                    }
                    Err(e) => session.handle_broker_failure(broker::to_failure(e)),
                }
                if flush_deadline.is_some() && confirms.is_empty() {
                    flush_deadline = None;
                    session.handle_broker_reply(BrokerReply::Done);
                }
            }
            _ = async { tokio::time::sleep_until(flush_deadline.expect("guarded")).await }, if flush_deadline.is_some() => {
                tracing::warn!("publisher confirms still outstanding at flush timeout");
                flush_deadline = None;
                session.handle_broker_reply(BrokerReply::Done);
            }
            Some((tag, item)) = consumers.next(), if !consumers.is_empty() => {
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
                    None => {
                        consumers.remove(&tag);
                        session.handle_consumer_cancelled(&tag);
                    }
                }
            }
            data = inbound.next(), if wants_input => {
                match data {
                    Some(Ok(bytes)) => {
                        session.note_received(Instant::now());
                        decoder.feed(&bytes);
                    }
                    Some(Err(_)) | None => {
                        input_open = false;
                        if session.wants_input() {
                            break;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(timeout) => {
                session.handle_timeout(Instant::now());
            }
        }
    }

    // Session over: say why, release everything.
    if let Some(reason) = &close_reason {
        metrics
            .closes
            .get_or_create(&ReasonLabels {
                reason: CloseCode::label(reason).to_string(),
            })
            .inc();
        let (code, text) = CloseCode::for_reason(reason);
        let _ = outbound.send(Outbound::Close(code, text)).await;
    } else {
        metrics
            .closes
            .get_or_create(&ReasonLabels {
                reason: "client_gone".to_string(),
            })
            .inc();
        let _ = outbound.close().await;
    }
    if let Some(labels) = session_labels {
        metrics.sessions.get_or_create(&labels).dec();
    }
    metrics.subscriptions.dec_by(subscriptions_counted as i64);
    metrics.connections.get_or_create(&transport_labels).dec();
    drop(consumers);
    drop(channel);
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
    let no_channel = || BrokerFailure {
        name: "Connection to RabbitMQ lost".to_string(),
        text: "The session has no broker channel.\n".to_string(),
    };
    Some(match request {
        BrokerRequest::Connect {
            login,
            passcode,
            vhost,
        } => {
            let broker = ctx.broker.clone();
            async move { OpResult::Connected(broker.open_channel(&login, &passcode, &vhost).await) }
                .boxed()
        }
        BrokerRequest::Flush => {
            if !confirms.is_empty() {
                *flush_deadline = Some(tokio::time::Instant::now() + ctx.flush_timeout);
            }
            return None;
        }
        request => {
            let Some(channel) = channel else {
                let failure = no_channel();
                return Some(async move { OpResult::Done(Err(failure)) }.boxed());
            };
            match request {
                BrokerRequest::Subscribe(plan) => async move {
                    let result = channel.lock().await.subscribe(&plan).await;
                    OpResult::Subscribed(plan.consumer_tag, result)
                }
                .boxed(),
                BrokerRequest::Unsubscribe {
                    consumer_tag,
                    delete_queue,
                } => async move {
                    OpResult::Done(
                        channel
                            .lock()
                            .await
                            .unsubscribe(&consumer_tag, delete_queue.as_deref())
                            .await,
                    )
                }
                .boxed(),
                BrokerRequest::Publish(publish) => async move {
                    let result = channel.lock().await.publish(&publish).await;
                    OpResult::Published(publish.confirm_id, result)
                }
                .boxed(),
                BrokerRequest::CreateTempQueue(plan) => async move {
                    let result = channel.lock().await.create_temp_queue(&plan).await;
                    OpResult::TempQueue(plan.consumer_tag, result)
                }
                .boxed(),
                BrokerRequest::Ack {
                    delivery_tag,
                    multiple,
                } => async move {
                    OpResult::Done(channel.lock().await.ack(delivery_tag, multiple).await)
                }
                .boxed(),
                BrokerRequest::Nack {
                    delivery_tag,
                    multiple,
                    requeue,
                } => async move {
                    OpResult::Done(
                        channel
                            .lock()
                            .await
                            .nack(delivery_tag, multiple, requeue)
                            .await,
                    )
                }
                .boxed(),
                BrokerRequest::Connect { .. } | BrokerRequest::Flush => {
                    unreachable!("handled above")
                }
            }
        }
    })
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
