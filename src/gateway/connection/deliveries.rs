//! What RabbitMQ pushes to a session (its own consumers and its shared fan-out
//! subscriptions), and the writes to the client that must not stop that flow: a write that
//! blocks moves deliveries into a bounded backlog instead of letting lapin buffer them
//! without limit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;

use super::ops::SharedChannel;
use crate::gateway::broker::{self, BrokerLink};
use crate::gateway::fanout::{Membership, SharedEvent, SharedEvents};
use crate::gateway::rabbit::session::{BrokerFailure, Delivery, Session};

/// A delivery (or the end marker) from one of the session's own consumers.
pub(super) type ConsumerItem = (String, Option<lapin::Result<lapin::message::Delivery>>);

/// An event of a shared (fan-out) subscription.
pub(super) type SharedItem = (
    String,
    Option<Result<SharedEvent, BroadcastStreamRecvError>>,
);

type DeliveryStream = BoxStream<'static, Option<lapin::Result<lapin::message::Delivery>>>;
type SharedStream = BoxStream<'static, Option<Result<SharedEvent, BroadcastStreamRecvError>>>;

/// A message for the client, not a marker (consumer end, error).
fn is_delivery(item: &ConsumerItem) -> bool {
    matches!(item.1, Some(Ok(_)))
}

/// Everything that pushes to the session, and the writes that must not stall it.
pub(super) struct Deliveries {
    /// The session's own consumers, by consumer tag.
    pub(super) consumers: StreamMap<String, DeliveryStream>,
    /// Subscriptions served by the shared fan-out: their event streams and memberships.
    pub(super) shared: StreamMap<String, SharedStream>,
    pub(super) memberships: HashMap<String, Membership>,
    /// Deliveries taken from the session's own consumers while a write was blocked, in
    /// order. Boxed: a lapin delivery is large, and this queue is usually empty.
    pub(super) backlog: VecDeque<Box<ConsumerItem>>,
    backlog_limit: usize,
    write_timeout: Duration,
    /// Set when the client stopped reading: a write timed out, or the backlog overflowed.
    pub(super) stuck: bool,
    pub(super) cancel: ConsumerCancel,
}

impl Deliveries {
    pub(super) fn new(
        shutdown: CancellationToken,
        backlog_limit: usize,
        write_timeout: Duration,
    ) -> Self {
        Deliveries {
            consumers: StreamMap::new(),
            shared: StreamMap::new(),
            memberships: HashMap::new(),
            backlog: VecDeque::new(),
            backlog_limit,
            write_timeout,
            stuck: false,
            cancel: ConsumerCancel {
                shutdown,
                channel: None,
                cancelled: HashSet::new(),
            },
        }
    }

    /// Nothing can push to the session any more, and nothing waits in the backlog.
    pub(super) fn is_empty(&self) -> bool {
        self.consumers.is_empty() && self.shared.is_empty() && self.backlog.is_empty()
    }

    pub(super) fn add_consumer(&mut self, tag: String, consumer: lapin::Consumer) {
        // A trailing None marks the consumer's end (server cancel or channel close).
        let stream = consumer
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .boxed();
        if self.consumers.is_empty() {
            // Room for one: most sessions have a single subscription (the default is four).
            self.consumers = StreamMap::with_capacity(1);
        }
        self.consumers.insert(tag, stream);
    }

    pub(super) fn add_shared(&mut self, tag: String, events: SharedEvents) {
        // A trailing None marks the end (the hub stopped).
        let stream = events
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .boxed();
        if self.shared.is_empty() {
            // Room for one: most sessions have a single subscription (the default is four).
            self.shared = StreamMap::with_capacity(1);
        }
        self.shared.insert(tag, stream);
    }

    /// Leaves one shared subscription (no broker round trip needed).
    pub(super) fn leave_shared(&mut self, tag: &str) {
        self.shared.remove(tag);
        self.memberships.remove(tag);
    }

    /// Leaves every shared subscription: each stream ends after the frames already
    /// distributed to it.
    pub(super) fn leave_all_shared(&mut self) {
        self.shared.clear();
        self.memberships.clear();
    }

    /// Asks RabbitMQ to stop pushing to every consumer not asked yet (draining).
    pub(super) fn cancel_consumers(&mut self) {
        self.cancel.cancel_all(&self.consumers);
    }

    /// Runs one write (feed or flush) bounded by the write timeout, meanwhile moving
    /// deliveries into the backlog: lapin buffers deliveries without limit and an auto-ack
    /// consumer has no prefetch limit, so a client that stops reading would otherwise make
    /// the gateway hold everything RabbitMQ pushes until the timeout. False when the session
    /// must end ([`Deliveries::stuck`] tells whether because the client stopped reading).
    pub(super) async fn write<F, E>(&mut self, write: F) -> bool
    where
        F: std::future::Future<Output = Result<(), E>>,
    {
        tokio::pin!(write);
        // Most writes complete at once (the socket has room): no clock read, no timer.
        if let Some(result) = (&mut write).now_or_never() {
            return result.is_ok();
        }
        // Boxed: its timer and select would otherwise be carried by every idle session's
        // task for a path that only a blocked client takes.
        Box::pin(self.wait_for_write(write)).await
    }

    /// The slow path of [`Deliveries::write`]: the transport is full.
    async fn wait_for_write<F, E>(&mut self, mut write: std::pin::Pin<&mut F>) -> bool
    where
        F: std::future::Future<Output = Result<(), E>>,
    {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let shutdown = self.cancel.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                result = &mut write => return result.is_ok(),
                _ = tokio::time::sleep_until(deadline) => {
                    self.stuck = true;
                    return false;
                }
                // A drain does not wait for a slow client to stop RabbitMQ pushing more.
                _ = shutdown.cancelled(), if !self.cancel.covers(&self.consumers) => {
                    self.cancel.cancel_all(&self.consumers);
                }
                // Shared subscriptions are not read here: their queue's ring bounds what waits
                // for this session, and a session that falls a ring behind finds the lag (and
                // gets its ERROR) when the write completes. Reading them into the backlog let
                // a session that kept pace with the ring overflow the backlog instead, and be
                // dropped without its ERROR.
                Some(item) = self.consumers.next(), if !self.consumers.is_empty() => {
                    self.backlog.push_back(Box::new(item));
                }
            }
            // Only deliveries count: an end marker that arrives after `backlog_limit`
            // deliveries must still reach the session.
            if self.backlog.len() > self.backlog_limit
                && self.backlog.iter().filter(|item| is_delivery(item)).count() > self.backlog_limit
            {
                self.stuck = true;
                return false;
            }
        }
    }

    /// Hands one shared-subscription event to the session.
    pub(super) fn on_shared_item(&mut self, session: &mut Session, (tag, item): SharedItem) {
        match item {
            Some(Ok(SharedEvent::Frame(bytes))) => session.handle_shared_frame(&tag, bytes),
            Some(Ok(SharedEvent::Failed(failure))) => session.handle_broker_failure(failure),
            Some(Err(BroadcastStreamRecvError::Lagged(_))) => {
                self.leave_shared(&tag);
                session.handle_slow_consumer();
            }
            None => {
                self.leave_shared(&tag);
                session.handle_consumer_cancelled(&tag);
            }
        }
    }

    /// Hands one consumer item to the session; true when it reported the loss of the
    /// session's AMQP connection (a consumer ends with its connection).
    pub(super) fn on_consumer_item(
        &mut self,
        session: &mut Session,
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
                self.consumers.remove(&tag);
                session.handle_broker_failure(BrokerFailure::link_lost());
                return true;
            }
            None => {
                self.consumers.remove(&tag);
                // RabbitMQ cancelled it: the channel's handle can go too. The lock is free
                // unless a drain's cancel holds it; then the handle goes with the channel.
                if let Some(channel) = &self.cancel.channel
                    && let Ok(mut channel) = channel.try_lock()
                {
                    channel.forget_consumer(&tag);
                }
                session.handle_consumer_cancelled(&tag);
            }
        }
        false
    }
}

/// Cancels the session's own consumers when the gateway drains, so that RabbitMQ stops
/// pushing to a gateway about to close (it pushes auto-ack deliveries without limit); what
/// it pushed before a cancel still reaches the client, since the consumer's stream ends
/// only after it.
pub(super) struct ConsumerCancel {
    shutdown: CancellationToken,
    /// The session's channel, once logged in.
    pub(super) channel: Option<SharedChannel>,
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
