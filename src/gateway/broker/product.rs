//! RabbitMQ's `product/version`, read from `connection.start` for the CONNECTED `server`
//! header (lapin does not expose the server properties).

use super::*;

/// Reads RabbitMQ's `product/version` from the `connection.start` server properties
/// (lapin does not expose them), for the CONNECTED `server` header. Best effort.
pub(crate) async fn probe_server_product(config: &BrokerConfig) -> Option<String> {
    read_server_product(config).await.ok().flatten()
}

/// Like [`probe_server_product`], telling a broker that answered without a product or
/// version (`Ok(None)`) from one that did not answer within 5 s (`Err`).
pub(crate) async fn read_server_product(
    config: &BrokerConfig,
) -> Result<Option<String>, BrokerError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = &config.uri.authority;
    let addr = format!("{}:{}", authority.host, authority.port);
    let attempt = async {
        let mut stream: Box<dyn Io> = match (&config.tls, config.is_tls()) {
            (Some(tls), true) => Box::new(tls.connect(&authority.host, authority.port).await.ok()?),
            _ => Box::new(tokio::net::TcpStream::connect(addr).await.ok()?),
        };
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await.ok()?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        if header[0] != 1 || size > 64 * 1024 {
            return Some(None);
        }
        let mut payload = vec![0u8; size];
        stream.read_exact(&mut payload).await.ok()?;
        Some(parse_start_product(&payload))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .ok_or(BrokerError::NoHandshake)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Extracts `product/version` from a connection.start method payload.
pub(super) fn parse_start_product(payload: &[u8]) -> Option<String> {
    // class 10, method 10, version-major, version-minor, then the properties table.
    if payload.len() < 10 || payload[0..4] != [0, 10, 0, 10] {
        return None;
    }
    let table_len = u32::from_be_bytes(payload[6..10].try_into().ok()?) as usize;
    let table = payload.get(10..10 + table_len)?;
    let mut product = None;
    let mut version = None;
    let mut i = 0;
    while i < table.len() {
        let key_len = *table.get(i)? as usize;
        let key = std::str::from_utf8(table.get(i + 1..i + 1 + key_len)?).ok()?;
        i += 1 + key_len;
        let kind = *table.get(i)?;
        i += 1;
        let value_len = match kind {
            b't' | b'b' | b'B' => 1,
            b's' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'A' | b'F' | b'x' => {
                let len = u32::from_be_bytes(table.get(i..i + 4)?.try_into().ok()?) as usize;
                if kind == b'S' {
                    let text = std::str::from_utf8(table.get(i + 4..i + 4 + len)?).ok()?;
                    match key {
                        "product" => product = Some(text.to_string()),
                        "version" => version = Some(text.to_string()),
                        _ => {}
                    }
                }
                4 + len
            }
            _ => return None,
        };
        i += value_len;
    }
    Some(format!("{}/{}", product?, version?))
}
