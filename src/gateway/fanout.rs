//! Pod-local fan-out of transient subscriptions.
//!
//! Web-STOMP gives every browser its own queue and binding, so the broker does the fan-out
//! and pays for it per subscriber. Here, transient subscriptions (`/exchange/...` and
//! `/topic/...` with `ack:auto`, not durable, no queue or consumer arguments) with the same
//! (vhost, exchange, binding key) share ONE exclusive auto-delete queue per gateway process.
//! A hub task consumes it, encodes each delivery once per distinct subscription id, and hands
//! the same `Bytes` to every listening session through a broadcast ring (one per subscription
//! id): memory is shared by all listeners and bounded by the slowest one's lag; a listener
//! that falls [`FanoutConfig::listener_capacity`] messages behind is closed as a slow
//! consumer rather than buffered without bound.
//!
//! Access control stays exact: before a session joins a hub, the broker authorises that
//! session's own credentials for the same subscription, by running the very declare / bind /
//! consume a non-shared subscription would run, on the session's own channel, and then
//! removing that probe queue. A success is remembered per (credentials, vhost, exchange,
//! key) for [`FanoutConfig::authorization_ttl`], so a burst of subscribers with the same
//! login costs one probe, while a permission revoked in RabbitMQ takes effect for new
//! subscriptions within the TTL.
//!
//! What a client observes is unchanged: the same MESSAGE headers in the same order; only
//! `message-id` carries the hub's id instead of the session's (`T_<id>@@session-<hub>@@<n>`,
//! the same shape; auto-ack message ids are never acknowledged).

use crate::gateway::broker::{PoolKey, SessionChannel, to_failure};
use crate::gateway::destination::{AckMode, Binding, QueueDeclare, SubscribePlan};
use crate::gateway::properties;
use crate::gateway::session::BrokerFailure;
use crate::stomp::codec;
use crate::stomp::{Command, Frame, Version};
use crate::telemetry::GatewayMetrics;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Tunables of the fan-out.
#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// How long a successful authorisation probe is trusted.
    pub authorization_ttl: Duration,
    /// How far (in messages) a listening session may fall behind before it counts as a slow
    /// consumer. Unread messages are held once per shared queue, not per session.
    pub listener_capacity: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            authorization_ttl: Duration::from_secs(60),
            listener_capacity: 1024,
        }
    }
}

/// What one shared queue serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HubKey {
    pub vhost: String,
    pub exchange: String,
    pub routing_key: String,
}

/// What a listening session receives.
#[derive(Debug, Clone)]
pub enum SharedEvent {
    /// A complete, encoded MESSAGE frame for this session's subscription id.
    Frame(Bytes),
    /// The shared queue's channel failed; the session reports it and closes.
    Failed(BrokerFailure),
}

/// The process-wide registry of hubs; cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<FanoutInner>,
}

type HubSlot = Arc<tokio::sync::Mutex<Option<Arc<Hub>>>>;

struct FanoutInner {
    config: FanoutConfig,
    hubs: Mutex<HashMap<HubKey, HubSlot>>,
    authorized: Mutex<HashMap<(PoolKey, HubKey), Instant>>,
    metrics: GatewayMetrics,
    /// Cancelled when the gateway drains; every hub's `stop` is a child of it.
    draining: CancellationToken,
}

/// A session's place in a hub. Dropping it leaves the hub (the last one out deletes the
/// shared queue).
pub struct Membership {
    hub: Arc<Hub>,
    consumer_tag: String,
    receiver: Option<broadcast::Receiver<SharedEvent>>,
}

impl Membership {
    /// The stream of events; can be taken once. A `Lagged` error means the session fell
    /// too far behind (slow consumer).
    pub fn take_receiver(&mut self) -> Option<broadcast::Receiver<SharedEvent>> {
        self.receiver.take()
    }

    pub fn hub_key(&self) -> &HubKey {
        &self.hub.key
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.consumer_tag);
    }
}

/// Listeners of one subscription id: they all get the same encoded bytes.
struct Group {
    sender: broadcast::Sender<SharedEvent>,
    members: usize,
}

#[derive(Default)]
struct Listeners {
    by_tag: HashMap<String, Group>,
    count: usize,
    /// Set when the last listener left or the queue failed: joiners must build a new hub.
    closed: bool,
}

struct Hub {
    key: HubKey,
    /// Session id used in message ids of this hub's deliveries.
    session_id: String,
    listeners: Mutex<Listeners>,
    stop: CancellationToken,
    sequence: AtomicU64,
    metrics: GatewayMetrics,
}

impl Fanout {
    pub fn new(config: FanoutConfig, metrics: GatewayMetrics) -> Self {
        Fanout {
            inner: Arc::new(FanoutInner {
                config,
                hubs: Mutex::new(HashMap::new()),
                authorized: Mutex::new(HashMap::new()),
                metrics,
                draining: CancellationToken::new(),
            }),
        }
    }

    /// The gateway drains: every shared queue stops at once (also one a join is creating
    /// now), so RabbitMQ stops pushing to this gateway (closing the hub's channel cancels its
    /// consumer and deletes the exclusive queue); listeners get what was distributed before,
    /// then the end of their streams.
    pub fn drain(&self) {
        self.inner.draining.cancel();
    }

    /// Whether this subscription can share a queue (see the module docs).
    pub fn shareable(plan: &SubscribePlan) -> bool {
        plan.is_transient() && plan.prefetch_count.is_none()
    }

    /// Number of live shared queues.
    pub fn hub_count(&self) -> usize {
        self.inner.hubs.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// Joins (creating if needed) the hub for this subscription, after the broker authorised
    /// the session's own credentials for it.
    pub async fn join(
        &self,
        channel: &mut SessionChannel,
        plan: &SubscribePlan,
    ) -> Result<Membership, BrokerFailure> {
        let Some(Binding {
            exchange,
            routing_key,
        }) = plan.binding.clone()
        else {
            return Err(internal("a shared subscription needs a binding"));
        };
        let key = HubKey {
            vhost: channel.vhost().to_string(),
            exchange,
            routing_key,
        };
        self.authorize(channel, plan, &key).await?;
        let slot = {
            let mut hubs = self
                .inner
                .hubs
                .lock()
                .map_err(|_| internal("fan-out registry poisoned"))?;
            hubs.entry(key.clone()).or_default().clone()
        };
        let mut current = slot.lock().await;
        // A hub that closed (last listener left, or its queue failed) is replaced.
        for _ in 0..2 {
            let hub = match current.as_ref() {
                Some(hub) => hub.clone(),
                None => {
                    let hub = self.start_hub(channel, plan, key.clone()).await?;
                    *current = Some(hub.clone());
                    hub
                }
            };
            if let Some(membership) = self.register(&hub, &plan.consumer_tag) {
                return Ok(membership);
            }
            *current = None;
        }
        Err(internal("the shared queue closed while joining"))
    }

    fn register(&self, hub: &Arc<Hub>, consumer_tag: &str) -> Option<Membership> {
        let mut listeners = hub.listeners.lock().ok()?;
        if listeners.closed {
            return None;
        }
        let capacity = self.inner.config.listener_capacity;
        let group = listeners
            .by_tag
            .entry(consumer_tag.to_string())
            .or_insert_with(|| Group {
                sender: broadcast::channel(capacity).0,
                members: 0,
            });
        group.members += 1;
        let receiver = group.sender.subscribe();
        listeners.count += 1;
        self.inner.metrics.fanout_listeners.inc();
        Some(Membership {
            hub: hub.clone(),
            consumer_tag: consumer_tag.to_string(),
            receiver: Some(receiver),
        })
    }

    /// Runs the subscription's own declare/bind/consume on the session's channel (then
    /// removes the probe queue), unless these credentials passed recently.
    async fn authorize(
        &self,
        channel: &mut SessionChannel,
        plan: &SubscribePlan,
        key: &HubKey,
    ) -> Result<(), BrokerFailure> {
        let cache_key = (channel.credentials().clone(), key.clone());
        let ttl = self.inner.config.authorization_ttl;
        let fresh = self
            .inner
            .authorized
            .lock()
            .ok()
            .and_then(|m| m.get(&cache_key).copied())
            .is_some_and(|at| at.elapsed() < ttl);
        if fresh {
            return Ok(());
        }
        let mut probe = plan.clone();
        probe.consumer_tag = format!(
            "stompgate-authz-{}",
            crate::gateway::connection::random_token()
        );
        // A failure here closes the session's channel with the broker's own error, exactly
        // as the non-shared subscription would have.
        let consumer = channel.subscribe(&probe).await?;
        let ch = channel.channel().await?;
        ch.basic_cancel(
            probe.consumer_tag.as_str().into(),
            BasicCancelOptions::default(),
        )
        .await
        .map_err(to_failure)?;
        drop(consumer);
        if let Some(declare) = &probe.declare {
            ch.queue_delete(declare.queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(to_failure)?;
        }
        if let Ok(mut map) = self.inner.authorized.lock() {
            map.retain(|_, at| at.elapsed() < ttl);
            map.insert(cache_key, Instant::now());
        }
        Ok(())
    }

    /// Declares the shared queue on a channel of the session's own connection and starts the
    /// hub task consuming it.
    async fn start_hub(
        &self,
        channel: &SessionChannel,
        plan: &SubscribePlan,
        key: HubKey,
    ) -> Result<Arc<Hub>, BrokerFailure> {
        let hub_channel = channel.sibling().await?;
        let queue = crate::gateway::destination::random_subscription_queue_name();
        let shared_plan = SubscribePlan {
            consumer_tag: format!(
                "stompgate-fanout-{}",
                crate::gateway::connection::random_token()
            ),
            queue: queue.clone(),
            declare: Some(QueueDeclare {
                queue,
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: true,
                arguments: FieldTable::default(),
                nowait: false,
                once_per_session: false,
            }),
            ack: AckMode::Auto,
            prefetch_count: None,
            consumer_arguments: FieldTable::default(),
            ..plan.clone()
        };
        let mut hub_channel = hub_channel;
        let consumer = hub_channel.subscribe(&shared_plan).await?;
        let hub = Arc::new(Hub {
            key,
            session_id: format!("session-{}", crate::gateway::connection::random_token()),
            listeners: Mutex::new(Listeners::default()),
            stop: self.inner.draining.child_token(),
            sequence: AtomicU64::new(0),
            metrics: self.inner.metrics.clone(),
        });
        self.inner.metrics.fanout_queues.inc();
        let registry = self.clone();
        let task_hub = hub.clone();
        tokio::spawn(async move {
            task_hub.run(hub_channel, consumer).await;
            registry.forget(&task_hub);
        });
        Ok(hub)
    }

    /// Removes a finished hub from the registry (unless a newer one took its place).
    fn forget(&self, hub: &Arc<Hub>) {
        self.inner.metrics.fanout_queues.dec();
        let slot = match self.inner.hubs.lock() {
            Ok(hubs) => hubs.get(&hub.key).cloned(),
            Err(_) => None,
        };
        let Some(slot) = slot else {
            return;
        };
        // If a join holds the slot it will see the closed hub and replace it.
        if let Ok(mut current) = slot.try_lock() {
            if current.as_ref().is_some_and(|h| Arc::ptr_eq(h, hub)) {
                *current = None;
            }
            if current.is_none()
                && let Ok(mut hubs) = self.inner.hubs.lock()
                && Arc::strong_count(&slot) <= 2
            {
                hubs.remove(&hub.key);
            }
        }
    }
}

impl Hub {
    async fn run(&self, channel: SessionChannel, mut consumer: lapin::Consumer) {
        let link = channel.link();
        let lost = || {
            BrokerFailure::connection_lost(
                "The AMQP connection to RabbitMQ was lost; reconnect and resubscribe.\n",
            )
        };
        // Created once, not per delivery: each would register a waiter on its token.
        let mut stopped = std::pin::pin!(self.stop.cancelled());
        let mut link_lost = std::pin::pin!(link.lost());
        let failure = loop {
            tokio::select! {
                _ = &mut stopped => break None,
                // Listeners learn of a lost connection at once, and as such (reconnect).
                _ = &mut link_lost => break Some(lost()),
                item = consumer.next() => match item {
                    Some(Ok(delivery)) => self.distribute(delivery),
                    Some(Err(_)) | None if link.is_lost() => break Some(lost()),
                    Some(Err(e)) => break Some(to_failure(e)),
                    None => break Some(BrokerFailure {
                        name: "Server cancelled subscription".to_string(),
                        text: "The shared subscription queue was deleted.\n".to_string(),
                    }),
                }
            }
        };
        // Listeners stay registered until their memberships drop, so counts stay exact.
        let senders: Vec<broadcast::Sender<SharedEvent>> = match self.listeners.lock() {
            Ok(mut l) => {
                l.closed = true;
                l.by_tag.values().map(|g| g.sender.clone()).collect()
            }
            Err(_) => Vec::new(),
        };
        if let Some(failure) = failure {
            tracing::warn!(exchange = %self.key.exchange, key = %self.key.routing_key, reason = %failure.text.trim_end(), "shared subscription queue failed");
            for sender in &senders {
                let _ = sender.send(SharedEvent::Failed(failure.clone()));
            }
        }
        // Without senders the listeners' streams end after what they already have.
        drop(senders);
        // Dropping the consumer and channel deletes the exclusive auto-delete queue.
        drop(consumer);
        drop(channel);
    }

    /// Encodes the delivery once per subscription id and hands it to every listener.
    fn distribute(&self, delivery: lapin::message::Delivery) {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(listeners) = self.listeners.lock() else {
            return;
        };
        let body = Bytes::from(delivery.data);
        for (tag, group) in listeners.by_tag.iter() {
            let frame = self.encode(
                tag,
                sequence,
                delivery.exchange.as_str(),
                delivery.routing_key.as_str(),
                delivery.redelivered,
                &delivery.properties,
                body.clone(),
            );
            // Never blocks: a listener that lags too far learns it on its next receive.
            let _ = group.sender.send(SharedEvent::Frame(frame));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn encode(
        &self,
        consumer_tag: &str,
        sequence: u64,
        exchange: &str,
        routing_key: &str,
        redelivered: bool,
        props: &lapin::BasicProperties,
        body: Bytes,
    ) -> Bytes {
        let headers = properties::message_frame_headers(
            &self.session_id,
            &properties::Delivery {
                consumer_tag,
                delivery_tag: sequence,
                exchange,
                routing_key,
                redelivered,
            },
            AckMode::Auto,
            Version::V1_2,
            props,
        );
        let frame = Frame {
            command: Command::Message,
            headers,
            body,
        };
        let mut out = BytesMut::with_capacity(codec::encoded_len(&frame, Version::V1_2));
        codec::encode(&frame, Version::V1_2, &mut out);
        out.freeze()
    }

    fn leave(&self, consumer_tag: &str) {
        let Ok(mut listeners) = self.listeners.lock() else {
            return;
        };
        let Some(group) = listeners.by_tag.get_mut(consumer_tag) else {
            return;
        };
        group.members = group.members.saturating_sub(1);
        if group.members == 0 {
            listeners.by_tag.remove(consumer_tag);
        }
        listeners.count = listeners.count.saturating_sub(1);
        self.metrics.fanout_listeners.dec();
        if listeners.count == 0 {
            listeners.closed = true;
            self.stop.cancel();
        }
    }
}

fn internal(text: &str) -> BrokerFailure {
    BrokerFailure {
        name: "Internal error".to_string(),
        text: format!("{text}\n"),
    }
}
