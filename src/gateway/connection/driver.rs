//! The connection driver: one STOMP session over one transport, as a struct whose loop
//! performs the session's actions, feeds it client bytes, broker results and deliveries,
//! and waits for the next [`Event`].

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::time::Sleep;

use super::context::ConnectionContext;
use super::deliveries::{ConsumerItem, Deliveries, SharedItem};
use super::ops::{self, Confirms, OpResult, SharedChannel};
use super::outbound::{CloseCode, Outbound, TransportViolation};
use crate::gateway::broker::{self, BrokerLink};
use crate::gateway::rabbit::ids;
use crate::gateway::rabbit::session::{
    Action, BrokerFailure, BrokerReply, BrokerRequest, ChannelOp, CloseReason, ConfirmOutcome,
    Session,
};
use crate::stomp::codec::{self, Decoded, Decoder};
use crate::stomp::{Command, Frame, HeartBeat};
use crate::telemetry::{ReasonLabels, SessionLabels, TransportLabels};

/// The session's broker side: its channel, the operation in flight, publisher confirms.
#[derive(Default)]
struct BrokerSide {
    channel: Option<SharedChannel>,
    /// The session's AMQP connection, watched outside the channel lock.
    link: Option<BrokerLink>,
    link_lost: Option<BoxFuture<'static, ()>>,
    op: Option<BoxFuture<'static, OpResult>>,
    confirms: Confirms,
    /// Set while a DISCONNECT or drain waits for outstanding confirms.
    flush_deadline: Option<tokio::time::Instant>,
}

/// The session's one timer, re-armed in place for whichever deadline comes first (drain,
/// flush, login, heart-beat, token expiry): registering a fresh timer per deadline on every
/// loop turn, and cancelling it when input came first, cost a timer-wheel insert and removal
/// per event. Moved when the deadline moves (a heart-beat received or sent): a timer left at
/// an earlier deadline would wake the session for nothing. Boxed and created on first use: a
/// session with no deadline carries no timer.
#[derive(Default)]
struct SessionTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl SessionTimer {
    /// The timer, set to fire at `deadline`.
    fn arm(&mut self, deadline: tokio::time::Instant) -> Pin<&mut Sleep> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut()
    }
}

/// A session's deadlines (heart-beats, login and token timeouts) are rounded up to this grid
/// when its heart-beats are a second or more apart, so that the sessions due in the same tick
/// wake together: a heart-beat costs a worker's wake-up (a context switch) when it is due
/// alone, and 10,000 sessions with 10 s heart-beats are 1,000 of them a second. Sessions with
/// faster heart-beats keep their exact deadlines.
pub(super) const DEADLINE_GRID: Duration = Duration::from_millis(100);

/// Whether a session with these heart-beats has its deadlines rounded to [`DEADLINE_GRID`].
pub(super) fn coarse(heartbeat: HeartBeat) -> bool {
    [heartbeat.send_ms, heartbeat.expect_ms]
        .into_iter()
        .all(|ms| ms == 0 || ms >= 1000)
}

/// `deadline`, rounded up to [`DEADLINE_GRID`].
pub(super) fn on_grid(deadline: tokio::time::Instant) -> tokio::time::Instant {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let grid = DEADLINE_GRID.as_nanos();
    let since = deadline.saturating_duration_since(epoch).as_nanos();
    let rounded = since.div_ceil(grid) * grid;
    epoch + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

/// What woke the driver.
enum Event {
    /// The gateway started draining (handled at the top of the loop).
    Shutdown,
    DrainDeadline,
    LinkLost,
    Op(OpResult),
    Confirm(Option<u64>, lapin::Result<lapin::Confirmation>),
    FlushDeadline,
    Consumer(ConsumerItem),
    Shared(SharedItem),
    Input(Option<std::io::Result<Bytes>>),
    Timeout,
    /// Nothing left that could ever wake the session.
    Idle,
}

/// Whether the loop goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

pub(super) struct Driver<I, O> {
    ctx: ConnectionContext,
    transport: &'static str,
    inbound: I,
    outbound: O,
    session: Session,
    decoder: Decoder,
    encode_buf: BytesMut,
    broker: BrokerSide,
    deliveries: Deliveries,
    /// Set on shutdown: no new input; consumers cancelled, what they delivered before is
    /// forwarded; ends when that and in-flight work are done, or at this deadline.
    drain_deadline: Option<tokio::time::Instant>,
    input_open: bool,
    close_reason: Option<CloseReason>,
    /// Close code of a transport violation, replacing the session's.
    close_override: Option<(CloseCode, &'static str)>,
    session_labels: Option<SessionLabels>,
    subscriptions_counted: usize,
    timer: SessionTimer,
}

impl<I, O> Driver<I, O>
where
    I: Stream<Item = std::io::Result<Bytes>> + Unpin,
    O: Sink<Outbound> + Unpin,
{
    pub(super) fn new(
        ctx: ConnectionContext,
        transport: &'static str,
        inbound: I,
        outbound: O,
        bearer: Option<String>,
    ) -> Self {
        let mut session = Session::new(ctx.session.clone(), ids::new_session_id(), Instant::now());
        if let Some(token) = bearer {
            session.set_bearer_token(token);
        }
        Driver {
            decoder: Decoder::new(ctx.limits.clone()),
            deliveries: Deliveries::new(
                ctx.shutdown.clone(),
                ctx.max_queued_messages,
                ctx.write_timeout,
            ),
            ctx,
            transport,
            inbound,
            outbound,
            session,
            encode_buf: BytesMut::new(),
            broker: BrokerSide::default(),
            drain_deadline: None,
            input_open: true,
            close_reason: None,
            close_override: None,
            session_labels: None,
            subscriptions_counted: 0,
            timer: SessionTimer::default(),
        }
    }

    /// Drives the session until it closes, then says why and releases everything. By
    /// reference: a driver moved into this future would be stored twice in every session's
    /// task (the caller's copy is not reused by the compiler).
    pub(super) async fn run(&mut self) {
        let transport_labels = TransportLabels {
            transport: self.transport.to_string(),
        };
        let metrics = self.ctx.metrics.clone();
        metrics.connections.get_or_create(&transport_labels).inc();
        // Created once: a fresh `cancelled()` per loop turn would register and unregister a
        // waiter on the token for every delivery.
        let shutdown = self.ctx.shutdown.clone();
        let mut shutdown_signal = std::pin::pin!(shutdown.cancelled());
        while self.turn(&mut shutdown_signal).await == Flow::Continue {}
        self.finish(&transport_labels).await;
        // Release in this order: the streams of the session's consumers before the channel
        // they consume on.
        let deliveries = &mut self.deliveries;
        drop(std::mem::take(&mut deliveries.shared));
        drop(std::mem::take(&mut deliveries.memberships));
        drop(std::mem::take(&mut deliveries.consumers));
        drop(self.broker.channel.take());
    }

    /// One turn of the loop: perform, feed, or wait for and handle one event.
    async fn turn(
        &mut self,
        shutdown_signal: &mut std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> Flow {
        self.maybe_begin_drain();
        // 1. Perform everything the session asked for. Boxed, and only when there is
        // something to do: its writes' futures are the largest part of the loop, which
        // every idle session's task would otherwise carry.
        if self.session.has_actions() && Box::pin(self.perform_actions()).await == Flow::Stop {
            return Flow::Stop;
        }
        self.count_subscriptions();
        // Draining: once nothing is in flight (publishes confirmed, so their RECEIPTs are
        // out) and every consumer has ended with what it delivered before its cancel, tell
        // the client to reconnect and close.
        if self.drain_deadline.is_some()
            && !self.session.is_closed()
            && self.broker.op.is_none()
            && self.broker.confirms.is_empty()
            && self.deliveries.is_empty()
        {
            self.session.handle_shutdown();
            return Flow::Continue;
        }
        // 2. Feed buffered client frames while the session accepts them.
        if self.feed_buffered_input() {
            return Flow::Continue;
        }
        // Deliveries that arrived while a write was blocked go first, in order.
        if let Some(item) = self.deliveries.backlog.pop_front() {
            self.on_consumer_item(*item);
            return Flow::Continue;
        }
        if !self.input_open && self.session.wants_input() && self.broker.op.is_none() {
            // Client went away and nothing is pending.
            return Flow::Stop;
        }
        // 3. Wait for the next event, holding no more than an idle session needs.
        self.session.release_idle_buffers();
        if self.encode_buf.capacity() != 0 {
            // Written frames share its allocation; a fresh one when the next frame comes.
            self.encode_buf = BytesMut::new();
        }
        let event = self.next_event(shutdown_signal).await;
        self.handle(event)
    }

    /// The gateway drains: stop RabbitMQ pushing to this session (also a consumer that a
    /// SUBSCRIBE in flight just added), deliver what it pushed before.
    fn maybe_begin_drain(&mut self) {
        if self.drain_deadline.is_none()
            && self.ctx.shutdown.is_cancelled()
            && !self.session.is_closed()
            && self.close_reason.is_none()
        {
            self.drain_deadline = Some(tokio::time::Instant::now() + self.ctx.flush_timeout);
            self.session.begin_drain();
            // Leave the shared queues (they stop too, see `Fanout::drain`): each stream ends
            // after the frames already distributed to it.
            self.deliveries.memberships.clear();
        }
        if self.drain_deadline.is_some() {
            self.deliveries.cancel_consumers();
        }
    }

    /// Performs the session's actions, then flushes the transport.
    async fn perform_actions(&mut self) -> Flow {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(frame) => {
                    if self.send_frame(frame).await == Flow::Stop {
                        return Flow::Stop;
                    }
                }
                Action::SendEncoded(bytes) => {
                    self.ctx.metrics.frame_out("MESSAGE");
                    if !self.write(Outbound::Frame(bytes)).await {
                        return Flow::Stop;
                    }
                    self.session.note_sent(Instant::now());
                }
                Action::SendHeartbeat => {
                    if !self.write(Outbound::Heartbeat).await {
                        return Flow::Stop;
                    }
                }
                Action::Broker(BrokerRequest::Channel(ChannelOp::Unsubscribe {
                    consumer_tag,
                    ..
                })) if self.deliveries.memberships.contains_key(&consumer_tag) => {
                    // Leaving a shared queue needs no broker round trip.
                    self.deliveries.leave_shared(&consumer_tag);
                    self.session.handle_broker_reply(BrokerReply::Done);
                }
                Action::Broker(request) => {
                    if matches!(request, BrokerRequest::Flush)
                        && !self.deliveries.memberships.is_empty()
                    {
                        self.deliveries.leave_all_shared();
                    }
                    self.start(request);
                }
                Action::Close(reason) => {
                    self.close_reason = Some(reason);
                    return Flow::Stop;
                }
            }
        }
        let flushed = self.deliveries.write(self.outbound.flush()).await;
        if flushed { Flow::Continue } else { Flow::Stop }
    }

    async fn send_frame(&mut self, frame: Frame) -> Flow {
        let metrics = &self.ctx.metrics;
        if frame.command == Command::Error
            && let Some(message) = frame.get("message")
        {
            metrics.error_sent(message);
        }
        metrics.frame_out(frame.command.as_str());
        codec::encode(&frame, self.session.version(), &mut self.encode_buf);
        let bytes = self.encode_buf.split().freeze();
        if !self.write(Outbound::Frame(bytes)).await {
            return Flow::Stop;
        }
        self.session.note_sent(Instant::now());
        if frame.command == Command::Connected {
            let labels = SessionLabels {
                version: self.session.version().as_str().to_string(),
                transport: self.transport.to_string(),
            };
            self.ctx.metrics.sessions.get_or_create(&labels).inc();
            self.session_labels = Some(labels);
            self.decoder.set_version(self.session.version());
            self.decoder.set_authenticated(true);
        }
        Flow::Continue
    }

    /// Feeds one item to the transport, bounded by the write timeout.
    async fn write(&mut self, item: Outbound) -> bool {
        self.deliveries.write(self.outbound.feed(item)).await
    }

    /// Starts a session request; a flush with nothing outstanding goes straight to closing
    /// the channel.
    fn start(&mut self, request: BrokerRequest) {
        let broker = &mut self.broker;
        broker.op = ops::start_request(
            request,
            &self.ctx,
            broker.channel.clone(),
            &broker.confirms,
            &mut broker.flush_deadline,
        );
        if broker.op.is_none() && broker.flush_deadline.is_none() {
            broker.op = Some(ops::close_channel(broker.channel.clone()));
        }
    }

    fn count_subscriptions(&mut self) {
        let subs = self.session.subscription_count();
        if subs != self.subscriptions_counted {
            self.ctx
                .metrics
                .subscriptions
                .inc_by(subs as i64 - self.subscriptions_counted as i64);
            self.subscriptions_counted = subs;
        }
    }

    /// Hands the session at most one buffered client frame (or codec error); true if it did.
    fn feed_buffered_input(&mut self) -> bool {
        while self.session.wants_input() && self.drain_deadline.is_none() {
            match self.decoder.decode() {
                Ok(Some(Decoded::Frame(frame))) => {
                    self.ctx.metrics.frame_in(frame.command.as_str());
                    self.session.handle_frame(frame);
                    return true;
                }
                Ok(Some(Decoded::Heartbeat)) => {}
                Ok(None) => {
                    self.decoder.shrink_if_idle();
                    return false;
                }
                Err(e) => {
                    self.session.handle_codec_error(e.summary(), &e.to_string());
                    return true;
                }
            }
        }
        false
    }

    fn on_consumer_item(&mut self, item: ConsumerItem) {
        let link = self.broker.link.as_ref();
        if self
            .deliveries
            .on_consumer_item(&mut self.session, link, item)
        {
            // Reported once: the link's own watch stays quiet.
            self.broker.link_lost = None;
        }
    }

    /// Waits for whatever comes first, in this order of priority.
    async fn next_event(
        &mut self,
        shutdown_signal: &mut std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> Event {
        let draining = self.drain_deadline;
        let wants_input = self.session.wants_input() && self.input_open && draining.is_none();
        let live = !self.session.is_closed() && self.close_reason.is_none();
        let deadline = self.next_deadline(live);
        let BrokerSide {
            link_lost,
            op,
            confirms,
            ..
        } = &mut self.broker;
        let Deliveries {
            consumers, shared, ..
        } = &mut self.deliveries;
        let inbound = &mut self.inbound;
        // Lazy: no timer at all while nothing has a deadline.
        let timer = deadline.map(|d| self.timer.arm(d));
        tokio::select! {
            biased;
            _ = shutdown_signal.as_mut(), if live && draining.is_none() => Event::Shutdown,
            _ = async { link_lost.as_mut().expect("guarded").await }, if live && link_lost.is_some() => Event::LinkLost,
            result = async { op.as_mut().expect("guarded").await }, if op.is_some() => Event::Op(result),
            Some((confirm_id, result)) = confirms.next(), if !confirms.is_empty() => Event::Confirm(confirm_id, result),
            Some(item) = consumers.next(), if !consumers.is_empty() => Event::Consumer(item),
            Some(item) = shared.next(), if !shared.is_empty() => Event::Shared(item),
            data = inbound.next(), if wants_input => Event::Input(data),
            _ = async { timer.expect("guarded").await }, if deadline.is_some() => self.due(live),
            else => Event::Idle,
        }
    }

    /// The earliest of the drain, flush and session deadlines.
    fn next_deadline(&self, live: bool) -> Option<tokio::time::Instant> {
        let session = self
            .session
            .next_timeout()
            .map(tokio::time::Instant::from_std)
            .map(|d| {
                if coarse(self.session.heartbeat()) {
                    on_grid(d)
                } else {
                    d
                }
            });
        let drain = self.drain_deadline.filter(|_| live);
        [drain, self.broker.flush_deadline, session]
            .into_iter()
            .flatten()
            .min()
    }

    /// Which deadline the timer fired for, in the order of priority the deadlines had as
    /// separate timers; `Timeout` for the session's own (it checks which of them is due).
    fn due(&self, live: bool) -> Event {
        let now = tokio::time::Instant::now();
        if live && self.drain_deadline.is_some_and(|d| d <= now) {
            Event::DrainDeadline
        } else if self.broker.flush_deadline.is_some_and(|d| d <= now) {
            Event::FlushDeadline
        } else {
            Event::Timeout
        }
    }

    fn handle(&mut self, event: Event) -> Flow {
        match event {
            // The top of the loop starts the drain.
            Event::Shutdown => {}
            Event::DrainDeadline => {
                tracing::warn!("in-flight work still outstanding at the drain deadline");
                self.session.handle_shutdown();
            }
            Event::LinkLost => {
                self.broker.link_lost = None;
                self.session
                    .handle_broker_failure(BrokerFailure::link_lost());
            }
            Event::Op(result) => {
                self.broker.op = None;
                let reply = self.on_op_result(result);
                self.session.handle_broker_reply(reply);
            }
            Event::Confirm(confirm_id, result) => {
                match result {
                    Ok(confirmation) => {
                        if let Some(id) = confirm_id {
                            let outcome = broker::confirm_outcome(confirmation);
                            if matches!(outcome, ConfirmOutcome::Unroutable { .. }) {
                                self.ctx.metrics.unroutable_messages.inc();
                            }
                            self.session.handle_confirm(id, outcome);
                        }
                    }
                    Err(e) => self.session.handle_broker_failure(broker::to_failure(e)),
                }
                let broker = &mut self.broker;
                broker.confirms.release_if_empty();
                if broker.flush_deadline.is_some() && broker.confirms.is_empty() {
                    broker.flush_deadline = None;
                    broker.op = Some(ops::close_channel(broker.channel.clone()));
                }
            }
            Event::FlushDeadline => {
                tracing::warn!("publisher confirms still outstanding at flush timeout");
                let broker = &mut self.broker;
                broker.flush_deadline = None;
                broker.op = Some(ops::close_channel(broker.channel.clone()));
            }
            Event::Consumer(item) => self.on_consumer_item(item),
            Event::Shared(item) => self.deliveries.on_shared_item(&mut self.session, item),
            Event::Input(data) => return self.on_input(data),
            Event::Timeout => {
                let now = Instant::now();
                if self.drain_deadline.is_some() {
                    // Draining stops reading input: the client's silence is ours, not a
                    // heart-beat timeout (the drain deadline bounds the wait instead).
                    self.session.note_received(now);
                }
                self.session.handle_timeout(now);
            }
            Event::Idle => return Flow::Stop,
        }
        Flow::Continue
    }

    /// The broker's answer to the session's request, keeping what the driver needs.
    fn on_op_result(&mut self, result: OpResult) -> BrokerReply {
        match result {
            OpResult::Placed(link, result) => {
                self.broker.link_lost = Some(link.lost().boxed());
                self.broker.link = Some(link);
                self.on_op_result(*result)
            }
            OpResult::Connected(Ok((ch, server_product))) => {
                let channel = Some(Arc::new(tokio::sync::Mutex::new(*ch)));
                self.deliveries.cancel.channel = channel.clone();
                self.broker.channel = channel;
                BrokerReply::Connected { server_product }
            }
            OpResult::Connected(Err(failure)) => BrokerReply::ConnectFailed(failure),
            OpResult::Subscribed(tag, Ok(consumer)) => {
                self.deliveries.add_consumer(tag, consumer);
                BrokerReply::Done
            }
            OpResult::Joined(tag, Ok(mut membership)) => {
                // Joined while draining: leave at once (the last one out stops a hub the
                // drain did not see).
                if self.drain_deadline.is_none() {
                    if let Some(events) = membership.take_events() {
                        self.deliveries.add_shared(tag.clone(), events);
                    }
                    self.deliveries.memberships.insert(tag, membership);
                }
                BrokerReply::Done
            }
            OpResult::TempQueue(tag, Ok((queue, consumer))) => {
                self.deliveries.add_consumer(tag, consumer);
                BrokerReply::TempQueueCreated { queue }
            }
            OpResult::Published(confirm_id, Ok(confirm)) => {
                self.broker
                    .confirms
                    .push(async move { (confirm_id, confirm.await) }.boxed());
                BrokerReply::Done
            }
            OpResult::Done(Ok(())) => BrokerReply::Done,
            OpResult::Subscribed(_, Err(f))
            | OpResult::Joined(_, Err(f))
            | OpResult::TempQueue(_, Err(f))
            | OpResult::Published(_, Err(f))
            | OpResult::Done(Err(f)) => BrokerReply::Failed(f),
        }
    }

    fn on_input(&mut self, data: Option<std::io::Result<Bytes>>) -> Flow {
        match data {
            Some(Ok(bytes)) => {
                self.session.note_received(Instant::now());
                self.decoder.feed(&bytes);
                return Flow::Continue;
            }
            Some(Err(e)) => {
                if let Some(v) = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<TransportViolation>())
                {
                    self.close_override = Some((v.close, v.close_text));
                    self.session.handle_codec_error(v.summary, &v.detail);
                }
            }
            None => {}
        }
        self.input_open = false;
        if self.session.wants_input() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// Session over: say why. By reference: an async fn that takes `self` by value would
    /// carry a second copy of the driver in every session's future.
    async fn finish(&mut self, transport_labels: &TransportLabels) {
        let metrics = &self.ctx.metrics;
        let outbound = &mut self.outbound;
        let close = |reason: &str| {
            metrics
                .closes
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .inc();
        };
        if self.deliveries.stuck {
            // The socket accepts nothing more: no ERROR can reach the client; just drop it.
            tracing::info!("closing a connection whose client stopped reading");
            metrics.slow_consumers.inc();
            close("slow_consumer");
        } else if let Some(reason) = &self.close_reason {
            if *reason == CloseReason::SlowConsumer {
                // Counted here, once, whether or not its ERROR could still be written.
                metrics.slow_consumers.inc();
            }
            close(CloseCode::label(reason));
            let (code, text) = self
                .close_override
                .unwrap_or_else(|| CloseCode::for_reason(reason));
            let _ = tokio::time::timeout(
                self.ctx.write_timeout,
                outbound.send(Outbound::Close(code, text)),
            )
            .await;
        } else {
            close("client_gone");
            let _ = tokio::time::timeout(self.ctx.write_timeout, outbound.close()).await;
        }
        if let Some(labels) = &self.session_labels {
            metrics.sessions.get_or_create(labels).dec();
        }
        metrics
            .subscriptions
            .dec_by(self.subscriptions_counted as i64);
        metrics.connections.get_or_create(transport_labels).dec();
    }
}
