//! The driver on a fake socket: a scripted inbound stream and a channel (or a sink that never
//! accepts) as the outbound side; the broker is unreachable, so these cover everything up to
//! and around CONNECT without RabbitMQ.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{Sink, SinkExt, Stream, StreamExt};

use super::*;
use crate::stomp::Command;
use crate::stomp::codec::{Decoded, Decoder, Limits};
use crate::telemetry::{ReasonLabels, TransportLabels};

/// What the driver wrote, decoded.
#[derive(Debug, PartialEq)]
enum Wrote {
    Frame(Command, Option<String>),
    Heartbeat,
    Close(CloseCode),
}

fn settings() -> ConnectionSettings {
    unreachable_broker_settings()
}

/// Runs a session over `inbound` to its end; what it wrote.
async fn drive<I>(ctx: ConnectionContext, inbound: I) -> Vec<Wrote>
where
    I: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    let (tx, rx) = mpsc::unbounded::<Outbound>();
    let outbound = tx.sink_map_err(|_| ());
    run(ctx, "test", inbound, outbound).await;
    let items: Vec<Outbound> = rx.collect().await;
    let mut decoder = Decoder::new(Limits::default());
    let mut out = Vec::new();
    for item in items {
        match item {
            Outbound::Frame(bytes) => {
                decoder.feed(&bytes);
                match decoder.decode() {
                    Ok(Some(Decoded::Frame(frame))) => out.push(Wrote::Frame(
                        frame.command.clone(),
                        frame.get("message").map(str::to_string),
                    )),
                    other => panic!("not one frame: {other:?}"),
                }
            }
            Outbound::Heartbeat => out.push(Wrote::Heartbeat),
            Outbound::Close(code, _) => out.push(Wrote::Close(code)),
        }
    }
    out
}

fn bytes(frame: &str) -> std::io::Result<Bytes> {
    Ok(Bytes::copy_from_slice(frame.as_bytes()))
}

fn closes(ctx: &ConnectionContext, reason: &str) -> u64 {
    ctx.metrics
        .closes
        .get_or_create(&ReasonLabels {
            reason: reason.to_string(),
        })
        .get()
}

fn open_connections(ctx: &ConnectionContext) -> i64 {
    ctx.metrics
        .connections
        .get_or_create(&TransportLabels {
            transport: "test".to_string(),
        })
        .get()
}

#[tokio::test]
async fn a_client_that_goes_away_before_connect_is_counted_as_gone() {
    let ctx = Arc::new(settings());
    let wrote = drive(ctx.clone(), futures::stream::empty()).await;
    assert_eq!(wrote, []);
    assert_eq!(closes(&ctx, "client_gone"), 1);
    assert_eq!(open_connections(&ctx), 0);
}

#[tokio::test]
async fn undecodable_input_gets_an_error_and_a_protocol_error_close() {
    let ctx = Arc::new(settings());
    // A header line without a colon.
    let inbound = futures::stream::iter([bytes("CONNECT\nno-colon\n\n\0")]);
    let wrote = drive(ctx.clone(), inbound).await;
    assert!(
        matches!(
            wrote.as_slice(),
            [
                Wrote::Frame(Command::Error, Some(_)),
                Wrote::Close(CloseCode::ProtocolError)
            ]
        ),
        "{wrote:?}"
    );
    assert_eq!(closes(&ctx, "protocol_error"), 1);
    assert_eq!(open_connections(&ctx), 0);
}

#[tokio::test]
async fn frames_split_across_reads_are_reassembled() {
    let ctx = Arc::new(settings());
    // The same bad frame in three pieces gets the same answer as in one.
    let inbound = futures::stream::iter([bytes("CONN"), bytes("ECT\nno-co"), bytes("lon\n\n\0")]);
    let wrote = drive(ctx, inbound).await;
    assert!(
        matches!(
            wrote.as_slice(),
            [
                Wrote::Frame(Command::Error, Some(_)),
                Wrote::Close(CloseCode::ProtocolError)
            ]
        ),
        "{wrote:?}"
    );
}

#[tokio::test]
async fn a_transport_violation_closes_with_the_transports_code() {
    let ctx = Arc::new(settings());
    let violation: std::io::Error = TransportViolation {
        close: CloseCode::MessageTooBig,
        close_text: "message too big",
        summary: "Frame too large",
        detail: "WebSocket message over the size limit".to_string(),
    }
    .into();
    let inbound = futures::stream::iter([Err(violation)]);
    let wrote = drive(ctx.clone(), inbound).await;
    assert_eq!(
        wrote,
        [
            Wrote::Frame(Command::Error, Some("Frame too large".to_string())),
            Wrote::Close(CloseCode::MessageTooBig),
        ]
    );
    assert_eq!(closes(&ctx, "protocol_error"), 1);
}

#[tokio::test]
async fn a_draining_gateway_tells_an_idle_client_to_reconnect() {
    let ctx = Arc::new(settings());
    ctx.shutdown.cancel();
    // The client never sends anything and never goes away.
    let wrote = drive(ctx.clone(), futures::stream::pending()).await;
    assert_eq!(
        wrote,
        [
            Wrote::Frame(Command::Error, Some("Server shutting down".to_string())),
            Wrote::Close(CloseCode::GoingAway),
        ]
    );
    assert_eq!(closes(&ctx, "shutdown"), 1);
}

/// A client that stopped reading: every write stays pending.
struct Blocked;

impl Sink<Outbound> for Blocked {
    type Error = ();

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Pending
    }

    fn start_send(self: Pin<&mut Self>, _: Outbound) -> Result<(), ()> {
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Pending
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Pending
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_as_a_slow_consumer() {
    let ctx = Arc::new(ConnectionSettings {
        write_timeout: Duration::from_millis(20),
        ..settings()
    });
    // An ERROR is due, and it can never be written.
    let inbound = futures::stream::iter([bytes("CONNECT\nno-colon\n\n\0")]);
    run(ctx.clone(), "test", inbound, Blocked).await;
    assert_eq!(closes(&ctx, "slow_consumer"), 1);
    assert_eq!(ctx.metrics.slow_consumers.get(), 1);
    assert_eq!(open_connections(&ctx), 0);
}

#[tokio::test]
async fn connect_to_an_unreachable_broker_answers_an_error_and_closes() {
    let ctx = Arc::new(settings());
    let connect = "CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0";
    // The client stays until the gateway closes.
    let inbound = futures::stream::iter([bytes(connect)]).chain(futures::stream::pending());
    let wrote = drive(ctx.clone(), inbound).await;
    assert!(
        matches!(
            wrote.as_slice(),
            [Wrote::Frame(Command::Error, Some(_)), Wrote::Close(_)]
        ),
        "{wrote:?}"
    );
    assert_eq!(open_connections(&ctx), 0);
}

/// Every idle session's task carries this future, so its size is most of a session's memory
/// (docs/benchmarks.md). A coarse guard with room for compiler changes: copies of the driver
/// (by-value `async fn self`) and inline write futures once made it 6.3 KB in a debug build.
#[test]
fn a_sessions_future_stays_small() {
    type Out = futures::sink::SinkMapErr<mpsc::UnboundedSender<Outbound>, fn(mpsc::SendError)>;
    let (tx, _rx) = mpsc::unbounded::<Outbound>();
    let outbound: Out = tx.sink_map_err(drop as fn(mpsc::SendError));
    let inbound = futures::stream::pending::<std::io::Result<Bytes>>();
    let session = run(Arc::new(settings()), "test", inbound, outbound);
    let bytes = std::mem::size_of_val(&session);
    // Measured 1,824 bytes in a debug build (rustc 1.95); release builds are smaller.
    let bound = 2_600;
    assert!(
        bytes <= bound,
        "a session's future is {bytes} bytes (bound {bound})"
    );
}

/// A session blocked on a write leaves its shared subscription's deliveries in the queue's
/// ring, even when it could keep pace with them: past the ring it finds the lag (and its
/// client gets the slow-consumer ERROR) once the write completes. Moving them into the
/// session's backlog instead overflowed the backlog and dropped the session without it.
#[tokio::test]
async fn a_blocked_write_leaves_shared_deliveries_in_their_ring() {
    use super::deliveries::Deliveries;
    use crate::gateway::fanout::{HandFedHub, SharedEvent};
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

    let ring = 4;
    let hub = HandFedHub::new(ring);
    let mut membership = hub.join("T_s").expect("an open hub");
    let events = membership.take_events().expect("events, once");
    let mut deliveries = Deliveries::new(
        tokio_util::sync::CancellationToken::new(),
        ring,
        Duration::from_secs(3600),
    );
    deliveries.add_shared("T_s".to_string(), events);
    let (unblock, blocked) = futures::channel::oneshot::channel::<()>();
    // One delivery at a time, the session polled after each: it could keep pace.
    let feed = async {
        for n in 0..3 * ring {
            hub.send(Bytes::from(format!("frame {n}")));
            tokio::task::yield_now().await;
        }
        let _ = unblock.send(());
    };
    let (written, ()) = tokio::join!(deliveries.write(blocked), feed);
    assert!(written, "the write completed");
    assert!(!deliveries.stuck);
    assert!(deliveries.backlog.is_empty());
    let (tag, item) = deliveries.shared.next().await.expect("the subscription");
    assert_eq!(tag, "T_s");
    assert!(
        matches!(item, Some(Err(BroadcastStreamRecvError::Lagged(_)))),
        "lagged, got a frame: {}",
        matches!(item, Some(Ok(SharedEvent::Frame(_))))
    );
    drop(membership);
}

/// Sessions with heart-beats a second or more apart are due on a common grid (one wake-up for
/// the sessions due in a tick); faster heart-beats keep exact deadlines.
#[test]
fn slow_heart_beats_fall_due_on_a_shared_grid() {
    use super::driver::{DEADLINE_GRID, coarse, on_grid};
    use crate::stomp::HeartBeat;

    let beats = |send_ms, expect_ms| HeartBeat { send_ms, expect_ms };
    assert!(coarse(beats(0, 0)));
    assert!(coarse(beats(10_000, 10_000)));
    assert!(coarse(beats(1_000, 0)));
    assert!(!coarse(beats(1, 1)));
    assert!(!coarse(beats(10_000, 500)));

    let start = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut due = Vec::new();
    for offset_ms in [0, 1, 37, 99, 100, 101, 250] {
        let deadline = start + Duration::from_millis(offset_ms);
        let rounded = on_grid(deadline);
        assert!(rounded >= deadline, "never earlier");
        assert!(rounded - deadline < DEADLINE_GRID, "less than a tick later");
        assert_eq!(on_grid(rounded), rounded, "a grid point stays");
        due.push(rounded);
    }
    // Seven deadlines over 250 ms fall due at no more than four ticks.
    due.dedup();
    assert!(due.len() <= 4, "{due:?}");
}
