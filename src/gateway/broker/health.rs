//! Readiness: the monitor that keeps `/readyz` and `broker_up` in line with RabbitMQ, and the
//! end-of-drain close of every pooled connection.

use super::product::probe_server_product;
use super::*;

/// Probe interval while RabbitMQ is up but the monitor holds no connection of its own.
pub(super) const HEALTH_TICK: Duration = Duration::from_secs(5);
/// First and longest wait between probes while RabbitMQ is down.
pub(crate) const RECONNECT_BACKOFF_BASE: Duration = Duration::from_millis(250);
pub(crate) const RECONNECT_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Outcome of one readiness probe.
pub(super) enum Probe {
    /// Logged in: the monitor keeps this connection and learns of a loss at once.
    Connected(Connection, CancellationToken),
    /// RabbitMQ answered but refused the gateway's credentials (e.g. passthrough mode
    /// without a service user): reachable, re-checked by a handshake probe every tick.
    Answered,
    Down(String),
}

impl Broker {
    /// The readiness monitor: keeps /readyz (and `broker_up`) in line with RabbitMQ,
    /// re-probing with exponential backoff and jitter while it is down. Runs until `stop`.
    pub(crate) async fn monitor(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(RECONNECT_BACKOFF_BASE, RECONNECT_BACKOFF_CAP);
        let mut was_up = false;
        let mut down_since: Option<Instant> = None;
        // Log in until the credentials are refused once; then only handshake.
        let mut login = true;
        loop {
            let probe = tokio::select! {
                _ = stop.cancelled() => return,
                probe = self.probe(login) => probe,
            };
            match probe {
                Probe::Connected(conn, lost) => {
                    self.mark_up(&mut was_up, &mut down_since);
                    backoff.reset();
                    let conn = SharedConnection::new(conn);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => {
                                let _ = conn.connection().close(200, "gateway shutting down".into()).await;
                                return;
                            }
                            _ = lost.cancelled() => break,
                            _ = tokio::time::sleep(HEALTH_TICK) => {}
                        }
                        // Sessions cannot open channels: see whether a channel opens here.
                        if self.has_channel_trouble() {
                            self.check_channels(&conn).await;
                        }
                        if conn.is_retired() {
                            let _ = conn
                                .connection()
                                .close(200, "channel ids used up".into())
                                .await;
                            break;
                        }
                    }
                    // Never spin on a connection that is lost as soon as it opens.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Probe::Answered => {
                    login = false;
                    self.mark_up(&mut was_up, &mut down_since);
                    backoff.reset();
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.inner.health.recheck.notified() => {}
                        _ = tokio::time::sleep(HEALTH_TICK) => {}
                    }
                }
                Probe::Down(reason) => {
                    if was_up || !self.inner.health.probed.load(Ordering::Acquire) {
                        tracing::warn!(%reason, "RabbitMQ unreachable; retrying with backoff");
                        down_since = Some(Instant::now());
                    }
                    was_up = false;
                    if let Ok(mut r) = self.inner.health.down_reason.lock() {
                        *r = reason;
                    }
                    self.inner.health.up.store(false, Ordering::Release);
                    self.inner.health.probed.store(true, Ordering::Release);
                    self.inner.metrics.broker_up.set(0);
                    let wait = backoff.next_delay();
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    pub(super) fn mark_up(&self, was_up: &mut bool, down_since: &mut Option<Instant>) {
        if !*was_up {
            if let Some(since) = down_since.take() {
                self.inner.metrics.broker_reconnects.inc();
                tracing::info!(
                    down_ms = since.elapsed().as_millis() as u64,
                    "RabbitMQ reachable again"
                );
            }
            *was_up = true;
        }
        self.inner.health.up.store(true, Ordering::Release);
        self.inner.health.probed.store(true, Ordering::Release);
        self.inner.metrics.broker_up.set(1);
    }

    pub(super) async fn probe(&self, login: bool) -> Probe {
        let config = &self.inner.config;
        if !login {
            return match probe_server_product(config).await {
                Some(_) => Probe::Answered,
                None => Probe::Down("no AMQP handshake from RabbitMQ".to_string()),
            };
        }
        let props =
            ConnectionProperties::default().with_connection_name("stompgate readiness".into());
        let attempt = self.open_connection(config.uri.clone(), props);
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Err(_) => Probe::Down("timed out connecting to RabbitMQ".to_string()),
            Ok(Ok(conn)) => {
                let lost = CancellationToken::new();
                let events = conn.events_listener();
                let token = lost.clone();
                tokio::spawn(async move {
                    use futures::StreamExt;
                    futures::pin_mut!(events);
                    while let Some(event) = events.next().await {
                        if let lapin::Event::Error(e) = event
                            && !amqp::is_channel_error(&e)
                        {
                            break;
                        }
                    }
                    token.cancel();
                });
                Probe::Connected(conn, lost)
            }
            Ok(Err(e)) => match classify_connect_error(&e) {
                ConnectFailure::Unavailable(reason) => Probe::Down(reason),
                // A refused login is an answer: the broker is up. Later checks use the
                // bare handshake so as not to fill the broker's log with failed logins.
                _ => Probe::Answered,
            },
        }
    }

    /// Opens an AMQP connection with the configured TLS settings (`amqps://`).
    pub(super) async fn open_connection(
        &self,
        uri: lapin::uri::AMQPUri,
        props: ConnectionProperties,
    ) -> lapin::Result<Connection> {
        let tls = self
            .inner
            .config
            .tls
            .as_ref()
            .map(|t| t.lapin.clone())
            .unwrap_or_default();
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connect_uri_with_config(uri, props, tls, runtime).await
    }

    /// Why the last readiness probe failed (empty while RabbitMQ is up).
    pub(crate) fn down_reason(&self) -> String {
        self.inner
            .health
            .down_reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// True when the last readiness probe reached RabbitMQ.
    pub(crate) fn is_up(&self) -> bool {
        self.inner.health.up.load(Ordering::Acquire)
    }

    /// True once the readiness monitor has probed at least once.
    pub(crate) fn probed(&self) -> bool {
        self.inner.health.probed.load(Ordering::Acquire)
    }

    pub(super) fn known_down(&self) -> bool {
        self.probed() && !self.is_up()
    }

    /// Closes every pooled connection (end of drain), so RabbitMQ requeues what the
    /// sessions left unacknowledged now, not when the process exits.
    pub(crate) async fn close_all(&self) {
        let slots: Vec<PoolSlot> = match self.inner.pool.lock() {
            Ok(pool) => pool.values().cloned().collect(),
            Err(_) => return,
        };
        self.inner.closed.store(true, Ordering::Release);
        for slot in slots {
            let entries: Vec<Arc<PooledConnection>> = slot.entries.lock().await.drain(..).collect();
            for c in entries {
                c.close("gateway shutting down").await;
                self.inner.metrics.broker_connections.dec();
            }
        }
    }
}
