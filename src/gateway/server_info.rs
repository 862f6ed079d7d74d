//! The CONNECTED `server` header: RabbitMQ's `product/version` followed by ours
//! (`RabbitMQ/3.10.8 stompgate/0.1.0`), the same for every session of the process.
//!
//! lapin does not expose the `connection.start` server properties, so one shared probe
//! reads them (a bare AMQP handshake, no login). The first CONNECTED waits for that probe
//! rather than going out without the product: a client or monitor that parses `server`
//! must not see two values from one gateway.

use crate::gateway::broker::{self, BrokerConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::OnceCell;

/// RabbitMQ's product as learned once per process; cheap to share.
pub struct ServerInfo {
    config: BrokerConfig,
    /// `Some(product)`, or `None` when the broker answered without one (then never asked
    /// again). Left empty while no probe has succeeded: the next CONNECT probes again.
    learned: OnceCell<Option<String>>,
    warned: AtomicBool,
}

impl ServerInfo {
    pub(crate) fn new(config: BrokerConfig) -> Arc<Self> {
        Arc::new(ServerInfo {
            config,
            learned: OnceCell::new(),
            warned: AtomicBool::new(false),
        })
    }

    /// Starts the probe in the background so that the first CONNECT rarely waits.
    pub(crate) fn learn_in_background(self: &Arc<Self>) {
        let info = self.clone();
        tokio::spawn(async move {
            if let Err(e) = info.learn().await {
                info.warn_once(&e.to_string());
            }
        });
    }

    /// One probe at a time; a success (with or without a product) is kept for good.
    async fn learn(&self) -> Result<&Option<String>, broker::BrokerError> {
        self.learned
            .get_or_try_init(|| broker::product::read_server_product(&self.config))
            .await
    }

    /// RabbitMQ's `product/version`, waiting at most `wait` for the one shared probe
    /// (concurrent callers wait for the same attempt). `None` when the broker names no
    /// product, or (logged once) when it did not answer in time: that CONNECTED then
    /// carries only `stompgate/<version>`, and the next CONNECT asks again.
    pub(crate) async fn product(&self, wait: Duration) -> Option<String> {
        match tokio::time::timeout(wait, self.learn()).await {
            Ok(Ok(product)) => product.clone(),
            Ok(Err(e)) => {
                self.warn_once(&e.to_string());
                None
            }
            Err(_) => {
                self.warn_once("no AMQP handshake from RabbitMQ within the wait");
                None
            }
        }
    }

    fn warn_once(&self, reason: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason,
                "RabbitMQ's product/version is unknown: CONNECTED's server header carries only stompgate/<version> until it is learned"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broker_that_never_answers_costs_one_bounded_wait_and_no_product() {
        // A listener that accepts and never speaks AMQP.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = BrokerConfig::from_url(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .expect("url");
        let info = ServerInfo::new(config);
        let started = tokio::time::Instant::now();
        assert_eq!(info.product(Duration::from_millis(50)).await, None);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "bounded by the wait"
        );
        assert!(
            info.learned.get().is_none(),
            "not cached: the next CONNECT asks again"
        );
    }
}
