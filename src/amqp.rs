//! AMQP channels on a shared connection, with a lifecycle we own rather than leave to lapin.
//!
//! Both planes share one lapin connection among many independent users of channels (gateway
//! sessions with the same credentials; the operator's reconciles), and lapin 4.12 (the newest
//! release) has two faults that let one user's channel error reach the others:
//!
//! * **A reused channel id replays the old channel's error.** When RabbitMQ closes a channel
//!   (404, 406, 403 ...), lapin answers close-ok and keeps that error as the id's "poison" for
//!   the life of the connection (cleared only by connection recovery). Ids are handed out 1, 2,
//!   ... `channel_max` and then wrap, so once `channel_max` channels have been opened a new
//!   channel can get a poisoned id: its `channel.open` fails with the earlier channel's error
//!   text (another session's, or another user's, exchange name), and the half-made channel
//!   stays in lapin's table until the table is full ("the maximum number of channels for this
//!   connection has been reached", for every later session).
//!   [`SharedConnection`] never lets the ids wrap: it opens at most `channel_max` channels in
//!   its life. After that it is retired (no new channels) and its owner opens a fresh
//!   connection and closes the old one when its last channel has gone.
//! * **A close that crosses RabbitMQ's own close ends the connection.** If we send
//!   `channel.close` while RabbitMQ's `channel.close` of the same channel (its asynchronous
//!   answer to an earlier publish or ack) is on the wire, lapin either receives a close-ok for a
//!   channel it has already removed, or sends a frame on an id RabbitMQ has already forgotten
//!   (`CHANNEL_ERROR - expected 'channel.open'`). Both are connection errors: every other
//!   channel of the connection dies with it. [`close_channel`] first makes a synchronous round
//!   trip on the channel (`channel.flow active=true`, which RabbitMQ answers at once and which
//!   changes nothing): RabbitMQ handles a channel's methods in order, so once the reply is back
//!   no close caused by an earlier method can still be coming, and if the channel was closed
//!   meanwhile the round trip fails and nothing more is sent on it.

use lapin::options::ChannelFlowOptions;
use lapin::{Channel, Connection};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why no channel could be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Every channel id of this connection has been used once: open another connection.
    #[error("the AMQP connection has used all of its channel ids")]
    Retired,
    /// lapin or RabbitMQ refused (connection closed, broker limits).
    #[error(transparent)]
    Lapin(#[from] lapin::Error),
}

/// A lapin connection whose channel ids are never reused (see the module docs).
pub struct SharedConnection {
    connection: Connection,
    budget: Arc<IdBudget>,
}

/// How many channels a connection may still open.
#[derive(Debug)]
struct IdBudget {
    /// Channel ids promised so far: opened, or reserved for a later open.
    taken: AtomicU32,
    /// The connection's negotiated `channel_max`: ids 1..=limit, each used once.
    limit: u32,
}

impl IdBudget {
    fn take(&self) -> bool {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }
}

/// A promise of one channel id, made before the channel is needed (a gateway session gets one
/// when it is placed on a connection and opens its channel on first use). Dropping an unused
/// reservation gives the id back: ids are counted, not assigned, so this never reuses one.
#[derive(Debug)]
pub struct IdReservation {
    budget: Option<Arc<IdBudget>>,
}

impl Drop for IdReservation {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.taken.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl SharedConnection {
    /// Wraps a connection; its budget is the negotiated `channel_max` (lapin's id sequence
    /// runs 1..=channel_max before it wraps; 0 means no limit, i.e. 65535 ids).
    pub fn new(connection: Connection) -> Self {
        let channel_max = match connection.configuration().channel_max() {
            0 => u16::MAX,
            n => n,
        };
        SharedConnection {
            connection,
            budget: Arc::new(IdBudget {
                taken: AtomicU32::new(0),
                limit: u32::from(channel_max),
            }),
        }
    }

    /// The lapin connection (status, events, close).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Promises one channel id, or None once every id has been promised.
    pub fn reserve(&self) -> Option<IdReservation> {
        self.budget.take().then(|| IdReservation {
            budget: Some(self.budget.clone()),
        })
    }

    /// True once every channel id is promised: no new channel will be opened here.
    pub fn is_retired(&self) -> bool {
        self.budget.taken.load(Ordering::Acquire) >= self.budget.limit
    }

    /// Channel ids still free.
    pub fn ids_left(&self) -> u32 {
        self.budget
            .limit
            .saturating_sub(self.budget.taken.load(Ordering::Acquire))
    }

    /// Opens the channel a reservation promised.
    pub async fn open_reserved(&self, mut reservation: IdReservation) -> lapin::Result<Channel> {
        // The id is used now (even if the open fails: lapin has handed it out).
        reservation.budget = None;
        self.connection.create_channel().await
    }

    /// Opens a channel, or says the connection is retired.
    pub async fn open(&self) -> Result<Channel, OpenError> {
        let reservation = self.reserve().ok_or(OpenError::Retired)?;
        Ok(self.open_reserved(reservation).await?)
    }
}

/// How [`close_channel`] found the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelEnd {
    /// It was open; we closed it.
    ClosedByUs,
    /// RabbitMQ had closed it (a channel error), or the connection is gone: nothing was sent.
    AlreadyClosed,
}

/// Closes a channel without ever crossing a close from RabbitMQ (see the module docs).
pub async fn close_channel(channel: &Channel, reply_text: &str) -> ChannelEnd {
    if !channel.status().connected() {
        return ChannelEnd::AlreadyClosed;
    }
    // The barrier: answered after everything sent before it on this channel.
    if channel
        .channel_flow(ChannelFlowOptions { active: true })
        .await
        .is_err()
    {
        return ChannelEnd::AlreadyClosed;
    }
    match channel.close(200, reply_text.into()).await {
        Ok(()) => ChannelEnd::ClosedByUs,
        Err(_) => ChannelEnd::AlreadyClosed,
    }
}

/// lapin reports channel-level (soft) errors on the connection's event stream too: they
/// closed one channel, not the connection.
pub fn is_channel_error(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_never_overdrawn_and_unused_reservations_come_back() {
        let budget = Arc::new(IdBudget {
            taken: AtomicU32::new(0),
            limit: 2,
        });
        let reserve = |b: &Arc<IdBudget>| {
            b.take().then(|| IdReservation {
                budget: Some(b.clone()),
            })
        };
        let first = reserve(&budget).expect("first id");
        let second = reserve(&budget).expect("second id");
        assert!(reserve(&budget).is_none(), "only two ids");
        drop(first);
        let third = reserve(&budget).expect("an unused reservation gives its id back");
        // A used reservation (what `open_reserved` does) keeps its id.
        let mut used = third;
        used.budget = None;
        drop(used);
        drop(second);
        assert_eq!(budget.taken.load(Ordering::Acquire), 1);
    }

    #[test]
    fn channel_errors_are_soft_errors_only() {
        use lapin::protocol::AMQPError;
        let amqp = |id: u16| {
            let error = AMQPError::from_id(id, "text".into()).expect("known reply code");
            lapin::Error::from(lapin::ErrorKind::ProtocolError(error))
        };
        assert!(is_channel_error(&amqp(404)));
        assert!(is_channel_error(&amqp(406)));
        assert!(!is_channel_error(&amqp(320)));
        assert!(!is_channel_error(&amqp(504)));
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!is_channel_error(&io));
    }
}
