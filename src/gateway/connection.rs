//! Runs one STOMP session over one transport: the only place where the sans-IO session,
//! the codec, the broker and a socket meet. One task per connection, driven by
//! [`driver::Driver`]; [`deliveries`] holds what RabbitMQ pushes, [`ops`] the broker requests.

mod deliveries;
mod driver;
mod ops;
#[cfg(test)]
mod tests;

use driver::Driver;

mod context;
mod outbound;

#[cfg(test)]
pub(crate) use context::unreachable_broker_settings;
pub(crate) use context::{ConnectionContext, ConnectionSettings};
pub(crate) use outbound::{CloseCode, Outbound, TransportViolation, encode_frame};

use bytes::Bytes;
use futures::{Sink, Stream};

/// Drives a session until it closes. `inbound` yields raw bytes from the client (any
/// chunking); `outbound` receives encoded frames.
pub(crate) async fn run<I, O>(
    ctx: ConnectionContext,
    transport: &'static str,
    inbound: I,
    outbound: O,
) where
    I: Stream<Item = std::io::Result<Bytes>> + Unpin,
    O: Sink<Outbound> + Unpin,
{
    run_with_bearer(ctx, transport, inbound, outbound, None).await
}

/// [`run`], with a token the transport received (JWT auth mode).
pub(crate) async fn run_with_bearer<I, O>(
    ctx: ConnectionContext,
    transport: &'static str,
    inbound: I,
    outbound: O,
    bearer: Option<String>,
) where
    I: Stream<Item = std::io::Result<Bytes>> + Unpin,
    O: Sink<Outbound> + Unpin,
{
    let mut driver = Driver::new(ctx, transport, inbound, outbound, bearer);
    driver.run().await;
}
