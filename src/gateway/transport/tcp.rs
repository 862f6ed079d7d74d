//! Plain STOMP over TCP (RabbitMQ's STOMP plugin port 61613).

use crate::gateway::admission::Refusal;
use crate::gateway::connection::{self, ConnectionContext, Outbound, encode_frame};
use crate::gateway::rabbit::error::error_frame;
use crate::gateway::state::AppState;
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::{BytesCodec, Encoder, FramedRead, FramedWrite};

/// Bytes read per syscall; small, because most STOMP frames are.
const READ_CHUNK: usize = 4096;

/// Writes outbound frames into the socket's write buffer; a close only flushes, the
/// driver then closes the sink (which shuts the socket down).
struct OutboundEncoder;

impl Encoder<Outbound> for OutboundEncoder {
    type Error = std::io::Error;

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), Self::Error> {
        match item {
            Outbound::Frame(bytes) => dst.extend_from_slice(&bytes),
            Outbound::Heartbeat => dst.extend_from_slice(b"\n"),
            Outbound::Close(..) => {}
        }
        Ok(())
    }
}

/// The `--stomp-listen` accept loop (STOMP over TLS when `tls` is given), until shutdown.
pub(crate) async fn accept(
    listener: TcpListener,
    state: AppState,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let shutdown = state.ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = state.admission.admit(None);
        if let Some(acceptor) = &tls {
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let ctx = state.ctx.clone();
            // The handshake runs in the connection's task, bounded, so a client that
            // never finishes it cannot stall the accept loop.
            state.tracker.spawn(async move {
                let plaintext = encode_frame(&error_frame(
                    "Connection refused",
                    "This port speaks STOMP over TLS (stomp+ssl).\n",
                    None,
                ));
                let Some(stream) = crate::gateway::tls::accept(&acceptor, stream, &plaintext).await
                else {
                    return;
                };
                match admitted {
                    Ok(slot) => {
                        serve_tls(stream, ctx).await;
                        drop(slot);
                    }
                    Err(refusal) => refuse(stream, refusal).await,
                }
            });
            continue;
        }
        match admitted {
            Ok(slot) => {
                let ctx = state.ctx.clone();
                state.tracker.spawn(async move {
                    serve(stream, ctx).await;
                    drop(slot);
                });
            }
            Err(refusal) => {
                tokio::spawn(refuse(stream, refusal));
            }
        }
    }
}

async fn serve(stream: tokio::net::TcpStream, ctx: ConnectionContext) {
    let _ = stream.set_nodelay(true);
    // Owned halves: no lock between reader and writer.
    let (read, write) = stream.into_split();
    serve_halves(read, write, ctx).await;
}

/// STOMP over TLS (`stomp+ssl`).
async fn serve_tls<S>(stream: S, ctx: ConnectionContext)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read, write) = tokio::io::split(stream);
    serve_halves(read, write, ctx).await;
}

async fn serve_halves<R, W>(read: R, write: W, ctx: ConnectionContext)
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let inbound = FramedRead::with_capacity(read, BytesCodec::new(), READ_CHUNK)
        .map(|chunk| chunk.map(BytesMut::freeze));
    let mut outbound = FramedWrite::new(write, OutboundEncoder);
    let mut inbound = Box::pin(inbound);
    let write_timeout = ctx.write_timeout;
    connection::run(ctx, "tcp", &mut inbound, &mut outbound).await;
    // Bounded: a client that stopped reading (zero window) must not hold the connection,
    // its slot and the drain forever while unsent frames wait to be flushed.
    let _ = tokio::time::timeout(write_timeout, outbound.close()).await;
    // Read until the client closes too (or briefly): unread input at close makes the
    // kernel send a reset, which can destroy the final ERROR before the client reads it.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(_)) = inbound.next().await {}
    })
    .await;
}

/// Answers a connection refused before a session starts with an ERROR frame, and closes it.
async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, refusal: Refusal) {
    let detail = match refusal {
        Refusal::Full => "Too many connections to this gateway; try again later.\n",
        Refusal::Draining => "This gateway is shutting down; try again later.\n",
        Refusal::Origin => "Origin not allowed.\n",
    };
    let error = encode_frame(&error_frame("Connection refused", detail, None));
    let _ = stream.write_all(&error).await;
    let _ = stream.shutdown().await;
}
