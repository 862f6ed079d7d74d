//! Plain STOMP over TCP (RabbitMQ's STOMP plugin port 61613).

use crate::gateway::connection::{self, ConnectionContext, Outbound};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
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

pub async fn serve(stream: tokio::net::TcpStream, ctx: ConnectionContext) {
    let _ = stream.set_nodelay(true);
    // Owned halves: no lock between reader and writer.
    let (read, write) = stream.into_split();
    serve_halves(read, write, ctx).await;
}

/// STOMP over TLS (`stomp+ssl`).
pub async fn serve_tls<S>(stream: S, ctx: ConnectionContext)
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

/// Answers a connection refused before a session starts (limit reached) and closes it.
pub async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, error: Bytes) {
    let _ = stream.write_all(&error).await;
    let _ = stream.shutdown().await;
}
