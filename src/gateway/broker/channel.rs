//! A session's channel: the AMQP operations behind each session request.

use super::*;

impl SessionChannel {
    /// Watches the AMQP connection this channel has its place on (None: no place yet).
    pub(crate) fn link(&self) -> Option<BrokerLink> {
        self.place.as_ref().map(|place| BrokerLink {
            pooled: place.pooled.clone(),
        })
    }

    /// The link of the place this session took since it was last asked: once, after the
    /// operation that first needed a channel.
    pub(crate) fn take_new_link(&mut self) -> Option<BrokerLink> {
        if self.link_reported {
            return None;
        }
        let link = self.link()?;
        self.link_reported = true;
        Some(link)
    }

    /// The credentials this channel was opened with.
    pub(crate) fn credentials(&self) -> &PoolKey {
        &self.key
    }

    /// The vhost of this channel.
    pub(crate) fn vhost(&self) -> &str {
        &self.key.vhost
    }

    /// Another channel for the same credentials (same user, same permissions), e.g. for a
    /// shared fan-out queue that outlives this session, on one of the key's pooled
    /// connections (a new one when all are full).
    pub(crate) async fn sibling(&self) -> Result<SessionChannel, BrokerFailure> {
        let place = self.broker.place(&self.key, &self.slot).await?;
        let mut sibling = SessionChannel {
            place: Some(place),
            key: self.key.clone(),
            slot: self.slot.clone(),
            session: false,
            link_reported: true,
            consumers: Vec::new(),
            confirms_enabled: false,
            confirmed_routes: HashMap::new(),
            confirmed_route_count: 0,
            broker: self.broker.clone(),
        };
        sibling.channel().await?;
        Ok(sibling)
    }

    /// The session's channel, opened now (with a place, if it has none) on first use.
    pub(crate) async fn channel(&mut self) -> Result<&Channel, BrokerFailure> {
        if self.place.is_none() {
            self.place = Some(self.broker.place(&self.key, &self.slot).await?);
        }
        let Some(place) = self.place.as_mut() else {
            return Err(internal_failure("no place"));
        };
        if place.channel.is_none() {
            if !place.pooled.usable() {
                return Err(BrokerFailure::connection_lost(
                    "The AMQP connection is closed.\n",
                ));
            }
            let Some(reservation) = place.reservation.take() else {
                return Err(internal_failure("the session's channel was already used"));
            };
            let channel = self
                .broker
                .open_reserved(&place.pooled, reservation)
                .await?;
            place.channel = Some(channel);
        }
        place
            .channel
            .as_ref()
            .ok_or_else(|| internal_failure("no channel"))
    }

    /// Lets go of the handle of a consumer RabbitMQ cancelled (no longer active, so dropping
    /// it sends nothing): a session resubscribing after each such cancel would otherwise keep
    /// one per cancel until it ends.
    pub(crate) fn forget_consumer(&mut self, consumer_tag: &str) {
        self.consumers.retain(|c| c.tag().as_str() != consumer_tag);
    }

    /// Closes the channel (DISCONNECT), if it was ever opened; then lets go of its consumers
    /// (see `SessionChannel::consumers`).
    pub(crate) async fn close(&mut self) {
        if let Some(channel) = self.place.as_mut().and_then(|p| p.channel.take()) {
            self.broker.inner.metrics.broker_channels.dec();
            amqp::close_channel(&channel, "DISCONNECT").await;
        }
        self.consumers.clear();
    }

    /// Declares, binds and consumes as planned (declare, qos, bind, consume); a generated
    /// subscription queue is deleted again when a later step fails.
    pub(crate) async fn subscribe(
        &mut self,
        plan: &SubscribePlan,
    ) -> Result<Consumer, BrokerFailure> {
        let ch = self.channel().await?;
        let queue = match &plan.declare {
            Some(declare) => declare_queue(ch, declare).await?,
            None => plan.queue.clone(),
        };
        let result = async {
            if let Some(prefetch) = plan.prefetch_count {
                ch.basic_qos(prefetch, BasicQosOptions::default())
                    .await
                    .map_err(to_failure)?;
            }
            if let Some(binding) = &plan.binding {
                ch.queue_bind(
                    queue.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(to_failure)?;
            }
            ch.basic_consume(
                queue.as_str().into(),
                plan.consumer_tag.as_str().into(),
                BasicConsumeOptions {
                    no_ack: plan.ack.no_ack(),
                    ..BasicConsumeOptions::default()
                },
                plan.consumer_arguments.clone(),
            )
            .await
            .map_err(to_failure)
        }
        .await;
        if result.is_err() && plan.delete_queue_on_failure && ch.status().connected() {
            let _ = ch
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        if let Ok(consumer) = &result {
            self.consumers.push(consumer.clone());
        }
        result
    }

    pub(crate) async fn unsubscribe(
        &mut self,
        consumer_tag: &str,
        delete_queue: Option<&str>,
    ) -> Result<(), BrokerFailure> {
        let ch = self.channel().await?;
        ch.basic_cancel(consumer_tag.into(), BasicCancelOptions::default())
            .await
            .map_err(to_failure)?;
        if let Some(queue) = delete_queue {
            ch.queue_delete(queue.into(), QueueDeleteOptions::default())
                .await
                .map_err(to_failure)?;
        }
        // Cancelled: its handles can go (one kept after a failed delete is harmless).
        self.consumers.retain(|c| c.tag().as_str() != consumer_tag);
        Ok(())
    }

    /// Declares the server-named reply queue of a `/temp-queue/` and consumes it.
    pub(crate) async fn create_temp_queue(
        &mut self,
        plan: &TempQueuePlan,
    ) -> Result<(String, Consumer), BrokerFailure> {
        let ch = self.channel().await?;
        let name = declare_queue(ch, &plan.declare).await?;
        let consumer = ch
            .basic_consume(
                name.as_str().into(),
                plan.consumer_tag.as_str().into(),
                BasicConsumeOptions {
                    no_ack: plan.no_ack,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(to_failure)?;
        self.consumers.push(consumer.clone());
        Ok((name, consumer))
    }

    /// Publishes; returns the confirm future (confirm mode is enabled on first publish so
    /// that broker nacks and channel errors are observed even without receipts).
    ///
    /// The first publish to each exchange and routing key (other than the default exchange,
    /// which takes any) is confirmed before this returns. RabbitMQ refuses a publish to a
    /// missing exchange, or one the user may not write to, by closing the channel
    /// asynchronously; lapin answers that close with close-ok ahead of a publish of the same
    /// channel still queued (publishes wait in a lower-priority queue), and RabbitMQ takes
    /// that late publish on a channel it has forgotten as a connection error
    /// (`CHANNEL_ERROR - expected 'channel.open'`) that would end every session on the
    /// pooled connection. Once a route has been confirmed, later publishes on it need no wait.
    pub(crate) async fn publish(
        &mut self,
        request: &PublishRequest,
    ) -> Result<Confirm, BrokerFailure> {
        let confirms_enabled = self.confirms_enabled;
        let ch = self.channel().await?;
        if !confirms_enabled {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(to_failure)?;
        }
        if let Some(declare) = &request.declare_queue {
            declare_queue(ch, declare).await?;
        }
        let confirm = ch
            .basic_publish(
                request.route.exchange.as_str().into(),
                request.route.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: request.mandatory,
                    ..BasicPublishOptions::default()
                },
                &request.body,
                request.properties.clone(),
            )
            .await
            .map_err(to_failure)?;
        self.confirms_enabled = true;
        let (exchange, key) = (&request.route.exchange, &request.route.routing_key);
        // Looked up by reference: this runs for every SEND.
        let confirmed = self
            .confirmed_routes
            .get(exchange.as_str())
            .is_some_and(|keys| keys.contains(key.as_str()));
        if exchange.is_empty() || confirmed {
            return Ok(futures::FutureExt::boxed(confirm));
        }
        let confirmation = confirm.await;
        if confirmation.is_ok() {
            // Bounded: a client that publishes to ever new keys pays a round trip each time.
            if self.confirmed_route_count >= MAX_CONFIRMED_ROUTES {
                self.confirmed_routes.clear();
                self.confirmed_route_count = 0;
            }
            self.confirmed_routes
                .entry(exchange.clone())
                .or_default()
                .insert(key.clone());
            self.confirmed_route_count += 1;
        }
        Ok(futures::FutureExt::boxed(futures::future::ready(
            confirmation,
        )))
    }

    pub(crate) async fn ack(
        &mut self,
        delivery_tag: u64,
        multiple: bool,
    ) -> Result<(), BrokerFailure> {
        self.channel()
            .await?
            .basic_ack(delivery_tag, BasicAckOptions { multiple })
            .await
            .map_err(to_failure)
    }

    pub(crate) async fn nack(
        &mut self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), BrokerFailure> {
        self.channel()
            .await?
            .basic_nack(delivery_tag, BasicNackOptions { multiple, requeue })
            .await
            .map_err(to_failure)
    }
}

pub(super) async fn declare_queue(
    ch: &Channel,
    declare: &QueueDeclare,
) -> Result<String, BrokerFailure> {
    let queue = ch
        .queue_declare(
            ShortString::from(declare.queue.as_str()),
            // Always wait for declare-ok so errors are reported against this frame.
            QueueDeclareOptions {
                passive: declare.passive,
                durable: declare.durable,
                exclusive: declare.exclusive,
                auto_delete: declare.auto_delete,
                nowait: false,
            },
            declare.arguments.clone(),
        )
        .await
        .map_err(to_failure)?;
    Ok(queue.name().to_string())
}
