//! RabbitMQ's STOMP semantics, sans IO: what each frame means in AMQP 0-9-1, and what each
//! delivery looks like as a MESSAGE. One concept a file; the session drives them.
//!
//! Source of truth: the RabbitMQ 3.10.8 STOMP plugin (`rabbit_routing_util`,
//! `rabbit_stomp_processor`, `rabbit_stomp_util`); error texts are byte-identical to the ones
//! those functions produce. Every deviation is marked `Deviation:` (or `Improvement:`) where it is
//! implemented.
//!
//! Dependencies point one way (no cycles): `erlang` and `error` at the bottom; `destination`,
//! `headers`, `queue_name` on them; `queue` and `ids` next; `plan` on those; `message` on
//! `plan`; the `session` on everything.

pub mod destination;
pub mod erlang;
pub mod error;
pub mod headers;
pub mod ids;
pub mod message;
pub mod plan;
pub mod queue;
pub mod queue_name;
pub mod session;

/// Headers from name/value pairs (tests).
#[cfg(test)]
fn hs(pairs: &[(&str, &str)]) -> crate::stomp::Headers {
    pairs.iter().copied().collect()
}
