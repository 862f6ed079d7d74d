//! The broker side of a connection: one request of the session at a time, run as a future
//! the driver polls, and publisher confirms.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use super::context::ConnectionContext;
use crate::gateway::broker::{BrokerLink, SessionChannel};
use crate::gateway::fanout::{Fanout, Membership};
use crate::gateway::rabbit::session::{BrokerFailure, BrokerRequest, ChannelOp, ConnectFailure};

/// The session's channel, shared with the operation in flight and the drain's cancels.
pub(super) type SharedChannel = Arc<tokio::sync::Mutex<SessionChannel>>;

/// A publisher confirm to wait for, with the session's confirm id (None: no receipt wanted).
pub(super) type ConfirmFuture =
    BoxFuture<'static, (Option<u64>, lapin::Result<lapin::Confirmation>)>;

/// Publisher confirms outstanding. The set is created on the first publish and released when
/// it empties: even an empty `FuturesUnordered` holds an allocation, and most sessions (browsers
/// that only subscribe) never publish.
#[derive(Default)]
pub(super) struct Confirms(Option<FuturesUnordered<ConfirmFuture>>);

impl Confirms {
    pub(super) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(FuturesUnordered::is_empty)
    }

    pub(super) fn push(&mut self, confirm: ConfirmFuture) {
        self.0
            .get_or_insert_with(FuturesUnordered::new)
            .push(confirm);
    }

    /// Frees the set once nothing is outstanding.
    pub(super) fn release_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(FuturesUnordered::is_empty) {
            self.0 = None;
        }
    }
}

impl futures::Stream for Confirms {
    type Item = (Option<u64>, lapin::Result<lapin::Confirmation>);

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match &mut self.0 {
            Some(set) => set.poll_next_unpin(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// Result of one broker operation, carried back into the loop.
pub(super) enum OpResult {
    /// The session's broker side (no place on a connection yet), and RabbitMQ's product for
    /// the `server` header.
    Connected(Result<(Box<SessionChannel>, Option<String>), ConnectFailure>),
    Subscribed(String, Result<lapin::Consumer, BrokerFailure>),
    Joined(String, Result<Membership, BrokerFailure>),
    TempQueue(String, Result<(String, lapin::Consumer), BrokerFailure>),
    Published(
        Option<u64>,
        Result<crate::gateway::broker::Confirm, BrokerFailure>,
    ),
    Done(Result<(), BrokerFailure>),
    /// The operation took the session's place on a pooled connection: watch that link.
    Placed(BrokerLink, Box<OpResult>),
}

/// Starts the future for one session request. Returns None for Flush (handled in the loop).
pub(super) fn start_request(
    request: BrokerRequest,
    ctx: &ConnectionContext,
    channel: Option<SharedChannel>,
    confirms: &Confirms,
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
                    // `passcode` is zeroed when this future completes (the pool keeps a copy
                    // while the key has sessions, see `Broker::open_session`).
                    let opened = broker.open_session(&login, passcode.as_str(), &vhost).await;
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
                    // Joining takes the session no place: the probe and the shared queue
                    // have channels of their own.
                    let channel = channel.lock().await;
                    let result = fanout.join(&channel, &plan).await;
                    OpResult::Joined(plan.consumer_tag, result)
                }
                .boxed(),
            )
        }
        BrokerRequest::Channel(op) => Some(channel_op(channel, op).boxed()),
    }
}

/// Last step of DISCONNECT: close the channel before the RECEIPT, so that once the client
/// has its RECEIPT no consumer of its session takes (and auto-acks) another message.
pub(super) fn close_channel(channel: Option<SharedChannel>) -> BoxFuture<'static, OpResult> {
    async move {
        if let Some(channel) = channel {
            channel.lock().await.close().await;
        }
        OpResult::Done(Ok(()))
    }
    .boxed()
}

pub(super) fn no_channel() -> BrokerFailure {
    BrokerFailure::connection_lost("The session has no broker channel.\n")
}

/// The operation's result, with the session's link to its AMQP connection when this
/// operation was the first to need a channel (the session took its place then).
fn with_new_link(channel: &mut SessionChannel, result: OpResult) -> OpResult {
    match channel.take_new_link() {
        Some(link) => OpResult::Placed(link, Box::new(result)),
        None => result,
    }
}

/// Runs one operation on the session's channel.
async fn channel_op(channel: Option<SharedChannel>, op: ChannelOp) -> OpResult {
    let Some(channel) = channel else {
        return OpResult::Done(Err(no_channel()));
    };
    let mut channel = channel.lock().await;
    let result = run_channel_op(&mut channel, op).await;
    with_new_link(&mut channel, result)
}

async fn run_channel_op(channel: &mut SessionChannel, op: ChannelOp) -> OpResult {
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
