//! The test RabbitMQ seen from outside the code under test: connections, and the passive
//! checks and cleanups every suite that touches the broker needs.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use super::amqp_url;

/// (host, port) of the test broker, from [`amqp_url`].
pub fn broker_host_port() -> (String, u16) {
    let url = amqp_url();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let hostport = rest.split('/').next().unwrap_or("127.0.0.1:5672");
    let (h, p) = hostport.rsplit_once(':').unwrap_or((hostport, "5672"));
    (h.to_string(), p.parse().unwrap_or(5672))
}

/// host:port of the test broker as a socket address (its URL must name an IP).
pub fn broker_addr() -> std::net::SocketAddr {
    let (host, port) = broker_host_port();
    format!("{host}:{port}")
        .parse()
        .expect("the test AMQP URL has an IP:port")
}

/// A connection to the test RabbitMQ.
pub async fn rabbit() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (scripts/ensure-test-deps.sh starts it)")
}

/// Passive declare: false when RabbitMQ answers NOT_FOUND; any other failure panics, so a
/// broken connection never reads as "the exchange is gone".
pub async fn exchange_exists(c: &Connection, name: &str) -> bool {
    let ch = c.create_channel().await.expect("channel");
    let r = ch
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match r {
        Ok(()) => {
            let _ = ch.close(200, "ok".into()).await;
            true
        }
        Err(e) => {
            assert!(
                e.to_string().contains("NOT_FOUND"),
                "passive declare of {name}: {e}"
            );
            false
        }
    }
}

/// Deletes an exchange (cleanup).
pub async fn delete_exchange(c: &Connection, name: &str) {
    let ch = c.create_channel().await.expect("channel");
    let _ = ch
        .exchange_delete(name.into(), ExchangeDeleteOptions::default())
        .await;
}

/// Declares a (non-durable) queue.
pub async fn declare_queue(c: &Connection, q: &str) {
    let ch = c.create_channel().await.expect("channel");
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue");
}

/// Deletes a queue (cleanup).
pub async fn delete_queue(c: &Connection, q: &str) {
    let ch = c.create_channel().await.expect("channel");
    let _ = ch
        .queue_delete(q.into(), QueueDeleteOptions::default())
        .await;
}
