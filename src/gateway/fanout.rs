//! Pod-local fan-out of transient subscriptions.
//!
//! Web-STOMP gives every browser its own queue and binding, so the broker does the fan-out
//! and pays for it per subscriber. Here, transient subscriptions (`/exchange/...` and
//! `/topic/...` with `ack:auto`, not durable, no queue or consumer arguments) with the same
//! (vhost, exchange, binding key) share ONE exclusive auto-delete queue per gateway process.
//! A hub task consumes it, encodes each delivery once per distinct subscription id, and hands
//! the same `Bytes` to every listening session through ONE broadcast ring per hub (each event
//! holds the delivery's frames, one per subscription id, and a session reads the one at its
//! id's slot): memory is shared by all listeners and bounded by the slowest one's lag; a
//! listener that falls [`FanoutConfig::listener_capacity`] messages behind is closed as a
//! slow consumer rather than buffered without bound. The ring is allocated in full when the
//! hub starts (~90 bytes a slot), so it must not be per subscription id: clients that name
//! every subscription differently would pay it per session.
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

use crate::gateway::broker::{BrokerLink, PoolKey, SessionChannel, to_failure};
use crate::gateway::rabbit::message;
use crate::gateway::rabbit::plan::{AckMode, Binding, SubscribePlan};
use crate::gateway::rabbit::queue::QueueDeclare;
use crate::gateway::rabbit::session::BrokerFailure;
use crate::stomp::codec;
use crate::stomp::{Command, Frame, Version};
use crate::telemetry::GatewayMetrics;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
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

/// Whose access to which shared queue a probe checked.
type AuthorizationKey = (PoolKey, HubKey);

struct FanoutInner {
    config: FanoutConfig,
    hubs: Mutex<HashMap<HubKey, HubSlot>>,
    authorized: Mutex<HashMap<AuthorizationKey, Instant>>,
    /// One probe at a time per key: a burst of joins (a page reloaded by thousands of
    /// browsers) waits for the first probe instead of each opening a channel to probe.
    probing: Mutex<HashMap<AuthorizationKey, Arc<tokio::sync::Mutex<()>>>>,
    metrics: GatewayMetrics,
    /// Cancelled when the gateway drains; every hub's `stop` is a child of it.
    draining: CancellationToken,
}

/// What the hub puts in its ring.
#[derive(Debug, Clone)]
enum HubEvent {
    /// One delivery, encoded once per subscription id, each at its group's slot (an empty
    /// `Bytes` at free slots).
    Delivery(Arc<[Bytes]>),
    Failed(BrokerFailure),
    /// The hub stopped (drain, last listener gone, failure): each stream ends here, after
    /// what was distributed before. The ring itself lives as long as its listeners hold the
    /// hub, so its closing cannot say so.
    Ended,
}

/// A session's place in a hub. The hub is left (the last one out deletes the shared queue)
/// once both the membership and its event stream are dropped, so a slot is never handed to
/// another subscription id while a stream may still read it.
pub struct Membership {
    // Held for its Drop: leaving the hub.
    _member: Arc<Member>,
    events: Option<SharedEvents>,
}

struct Member {
    hub: Arc<Hub>,
    consumer_tag: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.hub.leave(&self.consumer_tag);
    }
}

impl Membership {
    /// The stream of events; can be taken once. A `Lagged` error means the session fell
    /// too far behind (slow consumer).
    pub(crate) fn take_events(&mut self) -> Option<SharedEvents> {
        self.events.take()
    }
}

/// The events of one subscription: the hub's ring, read at the subscription id's slot.
pub struct SharedEvents {
    slot: usize,
    ring: BroadcastStream<HubEvent>,
    ended: bool,
    _member: Arc<Member>,
}

impl Stream for SharedEvents {
    type Item = Result<SharedEvent, BroadcastStreamRecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let slot = self.slot;
        let item = match self.ring.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        Poll::Ready(match item {
            None | Some(Ok(HubEvent::Ended)) => {
                self.ended = true;
                None
            }
            // The slot exists in every event sent since this stream subscribed.
            Some(Ok(HubEvent::Delivery(frames))) => Some(Ok(SharedEvent::Frame(
                frames.get(slot).cloned().unwrap_or_default(),
            ))),
            Some(Ok(HubEvent::Failed(failure))) => Some(Ok(SharedEvent::Failed(failure))),
            Some(Err(lagged)) => Some(Err(lagged)),
        })
    }
}

/// Listeners of one subscription id: they all get the same encoded bytes.
struct Group {
    /// Index of this id's frame in every [`HubEvent::Delivery`].
    slot: usize,
    members: usize,
}

#[derive(Default)]
struct Listeners {
    by_tag: HashMap<String, Group>,
    /// Slots of groups that left, for reuse; `slots` is one past the highest in use.
    free_slots: Vec<usize>,
    slots: usize,
    count: usize,
    /// Set when the last listener left or the queue failed: joiners must build a new hub.
    closed: bool,
}

struct Hub {
    key: HubKey,
    /// Session id used in message ids of this hub's deliveries.
    session_id: String,
    /// Held under `listeners`' lock when sending and subscribing, so a new listener's slot
    /// is in every event it receives.
    listeners: Mutex<Listeners>,
    ring: broadcast::Sender<HubEvent>,
    stop: CancellationToken,
    sequence: AtomicU64,
    metrics: GatewayMetrics,
}

impl Fanout {
    pub(crate) fn new(config: FanoutConfig, metrics: GatewayMetrics) -> Self {
        Fanout {
            inner: Arc::new(FanoutInner {
                config,
                hubs: Mutex::new(HashMap::new()),
                authorized: Mutex::new(HashMap::new()),
                probing: Mutex::new(HashMap::new()),
                metrics,
                draining: CancellationToken::new(),
            }),
        }
    }

    /// The gateway drains: every shared queue stops at once (also one a join is creating
    /// now), so RabbitMQ stops pushing to this gateway (closing the hub's channel cancels its
    /// consumer and deletes the exclusive queue); listeners get what was distributed before,
    /// then the end of their streams.
    pub(crate) fn drain(&self) {
        self.inner.draining.cancel();
    }

    /// Whether this subscription can share a queue (see the module docs).
    pub(crate) fn shareable(plan: &SubscribePlan) -> bool {
        plan.is_transient() && plan.prefetch_count.is_none()
    }

    /// Joins (creating if needed) the hub for this subscription, after the broker authorised
    /// the session's own credentials for it.
    pub(crate) async fn join(
        &self,
        channel: &SessionChannel,
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
        let mut guard = hub.listeners.lock().ok()?;
        let listeners = &mut *guard;
        if listeners.closed {
            return None;
        }
        let group = listeners
            .by_tag
            .entry(consumer_tag.to_string())
            .or_insert_with(|| {
                let slot = listeners.free_slots.pop().unwrap_or_else(|| {
                    listeners.slots += 1;
                    listeners.slots - 1
                });
                Group { slot, members: 0 }
            });
        group.members += 1;
        let slot = group.slot;
        let ring = BroadcastStream::new(hub.ring.subscribe());
        listeners.count += 1;
        self.inner.metrics.fanout_listeners.inc();
        let member = Arc::new(Member {
            hub: hub.clone(),
            consumer_tag: consumer_tag.to_string(),
        });
        Some(Membership {
            _member: member.clone(),
            events: Some(SharedEvents {
                slot,
                ring,
                ended: false,
                _member: member,
            }),
        })
    }

    /// Runs the subscription's own declare/bind/consume with the session's credentials (then
    /// removes the probe queue), unless these credentials passed recently.
    async fn authorize(
        &self,
        channel: &SessionChannel,
        plan: &SubscribePlan,
        key: &HubKey,
    ) -> Result<(), BrokerFailure> {
        let cache_key = (channel.credentials().clone(), key.clone());
        let ttl = self.inner.config.authorization_ttl;
        let fresh = || {
            self.inner
                .authorized
                .lock()
                .ok()
                .and_then(|m| m.get(&cache_key).copied())
                .is_some_and(|at| at.elapsed() < ttl)
        };
        if fresh() {
            return Ok(());
        }
        let turn = match self.inner.probing.lock() {
            Ok(mut probing) => {
                // Forget the keys nobody is probing now.
                probing.retain(|_, lock| Arc::strong_count(lock) > 1);
                Some(probing.entry(cache_key.clone()).or_default().clone())
            }
            Err(_) => None,
        };
        let _turn = match &turn {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        // The probe this one waited for succeeded: nothing left to check. (After a refusal,
        // each waiter probes itself and gets the broker's error on its own channel.)
        if fresh() {
            return Ok(());
        }
        let mut probe = plan.clone();
        probe.consumer_tag = format!(
            "stompgate-authz-{}",
            crate::gateway::rabbit::ids::random_token()
        );
        // On a channel of its own, closed after the probe: on the session's channel it would
        // give a browser that only shares queues a place on a pooled connection for its whole
        // life. A failure is the broker's own error, and ends the session exactly as the
        // non-shared subscription would have.
        let mut probe_channel = channel.sibling().await?;
        let consumer = probe_channel.subscribe(&probe).await?;
        let probe_queue = probe.declare.as_ref().map(|d| d.queue.as_str());
        probe_channel
            .unsubscribe(&probe.consumer_tag, probe_queue)
            .await?;
        drop(consumer);
        drop(probe_channel);
        if let Ok(mut map) = self.inner.authorized.lock() {
            map.retain(|_, at| at.elapsed() < ttl);
            map.insert(cache_key, Instant::now());
        }
        Ok(())
    }

    /// Declares the shared queue on a channel of the session's credentials and starts the hub
    /// task consuming it.
    async fn start_hub(
        &self,
        channel: &SessionChannel,
        plan: &SubscribePlan,
        key: HubKey,
    ) -> Result<Arc<Hub>, BrokerFailure> {
        let hub_channel = channel.sibling().await?;
        let queue = crate::gateway::rabbit::queue_name::random_subscription_queue_name();
        let shared_plan = SubscribePlan {
            consumer_tag: format!(
                "stompgate-fanout-{}",
                crate::gateway::rabbit::ids::random_token()
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
            session_id: crate::gateway::rabbit::ids::new_session_id(),
            listeners: Mutex::new(Listeners::default()),
            ring: broadcast::channel(self.inner.config.listener_capacity.max(1)).0,
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
        // Placed by `sibling`: a hub's channel always has its connection.
        let link = channel.link();
        let lost = BrokerFailure::link_lost;
        // Created once, not per delivery: each would register a waiter on its token.
        let mut stopped = std::pin::pin!(self.stop.cancelled());
        let mut link_lost = std::pin::pin!(async {
            match &link {
                Some(link) => link.lost().await,
                None => std::future::pending().await,
            }
        });
        let failure = loop {
            tokio::select! {
                _ = &mut stopped => break None,
                // Listeners learn of a lost connection at once, and as such (reconnect).
                _ = &mut link_lost => break Some(lost()),
                item = consumer.next() => match item {
                    Some(Ok(delivery)) => self.distribute(delivery),
                    Some(Err(_)) | None if link.as_ref().is_some_and(BrokerLink::is_lost) => break Some(lost()),
                    Some(Err(e)) => break Some(to_failure(e)),
                    None => break Some(BrokerFailure {
                        name: "Server cancelled subscription".to_string(),
                        text: "The shared subscription queue was deleted.\n".to_string(),
                    }),
                }
            }
        };
        // Listeners stay registered until their memberships drop, so counts stay exact.
        if let Ok(mut l) = self.listeners.lock() {
            l.closed = true;
        }
        if let Some(failure) = failure {
            tracing::warn!(exchange = %self.key.exchange, key = %self.key.routing_key, reason = %failure.text.trim_end(), "shared subscription queue failed");
            let _ = self.ring.send(HubEvent::Failed(failure));
        }
        let _ = self.ring.send(HubEvent::Ended);
        // Dropping the channel closes it (the consumer's handle goes after that, see
        // `SessionChannel`), which cancels the consumer and deletes the exclusive auto-delete
        // queue.
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
        let mut frames = vec![Bytes::new(); listeners.slots];
        for (tag, group) in listeners.by_tag.iter() {
            frames[group.slot] = self.encode(
                tag,
                sequence,
                delivery.exchange.as_str(),
                delivery.routing_key.as_str(),
                delivery.redelivered,
                &delivery.properties,
                body.clone(),
            );
        }
        // Never blocks: a listener that lags too far learns it on its next receive.
        let _ = self.ring.send(HubEvent::Delivery(frames.into()));
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
        let headers = message::message_frame_headers(
            &self.session_id,
            &message::Envelope {
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
            let slot = group.slot;
            listeners.by_tag.remove(consumer_tag);
            listeners.free_slots.push(slot);
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

/// A hub with no queue behind it, whose ring has room for `capacity` events.
#[cfg(test)]
fn detached_hub(capacity: usize) -> Arc<Hub> {
    Arc::new(Hub {
        key: HubKey {
            vhost: "/".into(),
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
        },
        session_id: "session-hub".into(),
        listeners: Mutex::new(Listeners::default()),
        ring: broadcast::channel(capacity).0,
        stop: CancellationToken::new(),
        sequence: AtomicU64::new(0),
        metrics: GatewayMetrics::default(),
    })
}

/// For tests of what reads a hub's ring: a hub without RabbitMQ, fed by hand.
#[cfg(test)]
pub(crate) struct HandFedHub {
    fanout: Fanout,
    hub: Arc<Hub>,
}

#[cfg(test)]
impl HandFedHub {
    pub(crate) fn new(capacity: usize) -> Self {
        HandFedHub {
            fanout: Fanout::new(FanoutConfig::default(), GatewayMetrics::default()),
            hub: detached_hub(capacity),
        }
    }

    /// A listener for one subscription id (slot 0 for the first).
    pub(crate) fn join(&self, consumer_tag: &str) -> Option<Membership> {
        self.fanout.register(&self.hub, consumer_tag)
    }

    /// Puts one delivery in the ring, the same bytes for every slot in use.
    pub(crate) fn send(&self, frame: Bytes) {
        let slots = self.hub.listeners.lock().map(|l| l.slots).unwrap_or(1);
        let frames: Arc<[Bytes]> = vec![frame; slots.max(1)].into();
        let _ = self.hub.ring.send(HubEvent::Delivery(frames));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::rabbit::plan::{PlanConfig, plan_subscribe};
    use crate::stomp::Headers;
    use crate::stomp::codec::{Decoded, Decoder, Limits};

    fn plan(pairs: &[(&str, &str)]) -> SubscribePlan {
        let headers: Headers = pairs.iter().copied().collect();
        plan_subscribe(&headers, &PlanConfig::default()).expect("a valid SUBSCRIBE")
    }

    fn hub() -> Arc<Hub> {
        detached_hub(4)
    }

    #[test]
    fn only_transient_auto_ack_subscriptions_share_a_queue() {
        let topic = [("destination", "/topic/a.b"), ("id", "s")];
        assert!(Fanout::shareable(&plan(&topic)));
        assert!(Fanout::shareable(&plan(&[
            ("destination", "/exchange/x/k"),
            ("id", "s")
        ])));
        for extra in [
            ("ack", "client"),
            ("prefetch-count", "10"),
            ("durable", "true"),
            ("x-queue-name", "mine"),
            ("x-max-length", "10"),
        ] {
            let mut pairs = topic.to_vec();
            pairs.push(extra);
            assert!(!Fanout::shareable(&plan(&pairs)), "{extra:?}");
        }
        // Queues are not fanned out: each SUBSCRIBE competes for the messages.
        assert!(!Fanout::shareable(&plan(&[
            ("destination", "/queue/q"),
            ("id", "s")
        ])));
    }

    #[test]
    fn subscription_ids_share_slots_and_free_them_when_the_last_one_leaves() {
        let fanout = Fanout::new(FanoutConfig::default(), GatewayMetrics::default());
        let hub = hub();
        let a1 = fanout.register(&hub, "T_a").expect("open hub");
        let a2 = fanout.register(&hub, "T_a").expect("open hub");
        let b = fanout.register(&hub, "T_b").expect("open hub");
        let slot = |m: &Membership| m.events.as_ref().expect("events").slot;
        assert_eq!((slot(&a1), slot(&a2), slot(&b)), (0, 0, 1));
        drop(a1);
        drop(a2);
        // `T_a`'s slot is reused by the next new id.
        let c = fanout.register(&hub, "T_c").expect("open hub");
        assert_eq!(slot(&c), 0);
        drop(b);
        assert!(!hub.stop.is_cancelled());
        drop(c);
        // The last one out stops the hub; nobody can join it any more.
        assert!(hub.stop.is_cancelled());
        assert!(fanout.register(&hub, "T_d").is_none());
    }

    #[test]
    fn a_hub_encodes_a_message_per_subscription_id() {
        let hub = hub();
        let props = lapin::BasicProperties::default().with_content_type("text/plain".into());
        let bytes = hub.encode(
            "T_sub-1",
            7,
            "amq.topic",
            "a.b",
            false,
            &props,
            Bytes::from_static(b"hi"),
        );
        let mut decoder = Decoder::new(Limits::default());
        decoder.feed(&bytes);
        let Ok(Some(Decoded::Frame(frame))) = decoder.decode() else {
            panic!("one MESSAGE frame");
        };
        assert_eq!(frame.command, Command::Message);
        assert_eq!(frame.get("subscription"), Some("sub-1"));
        assert_eq!(frame.get("destination"), Some("/topic/a.b"));
        assert_eq!(frame.get("message-id"), Some("T_sub-1@@session-hub@@7"));
        assert_eq!(frame.get("ack"), None);
        assert_eq!(frame.get("content-type"), Some("text/plain"));
        assert_eq!(&frame.body[..], b"hi");
    }
}
