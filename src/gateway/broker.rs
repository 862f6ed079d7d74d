//! RabbitMQ side of the gateway: pooled lapin connections, one channel per STOMP session,
//! and the AMQP operations behind each session request. Never sees a STOMP frame.

use crate::amqp::{self, IdReservation, SharedConnection};
use crate::gateway::destination::{QueueDeclare, SubscribePlan, TempQueuePlan};
use crate::gateway::session::{BrokerFailure, ConnectFailure, PublishRequest};
use crate::telemetry::GatewayMetrics;
use lapin::auth::AuthProvider;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::uri::{AMQPUri, AMQPUserInfo, SASLMechanism};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Consumer, ErrorKind};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),
    #[error("no AMQP handshake from RabbitMQ within 5 s")]
    NoHandshake,
}

/// How the gateway reaches RabbitMQ.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Host, port, TLS and query options; its credentials serve the service-user mode and
    /// readiness probes, its vhost is only a default.
    pub uri: AMQPUri,
    /// Connections with no session for this long are closed.
    pub idle_connection_ttl: Duration,
    /// Upper bound on open channels (sessions and shared fan-out queues) per pooled
    /// connection: how many sessions one lost connection can take down with it. More
    /// sessions with the same credentials spread over more connections.
    pub max_channels_per_connection: usize,
    /// Connection attempt timeout.
    pub connect_timeout: Duration,
    /// Trust settings for `amqps://` (None: lapin's defaults, the system roots).
    pub tls: Option<crate::gateway::tls::AmqpTls>,
}

impl BrokerConfig {
    pub fn from_url(url: &str) -> Result<Self, BrokerError> {
        let mut uri = AMQPUri::from_str(url).map_err(BrokerError::InvalidUrl)?;
        // Notice a silently dead broker (no reset: host down, partition) within about two
        // intervals rather than RabbitMQ's default 60 s; `?heartbeat=N` in the URL overrides.
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_AMQP_HEARTBEAT_SECS);
        }
        // lapin gives each connection read and write buffers of 32 frames, filled in at
        // connect: at RabbitMQ's default frame_max (128 KiB) that is 8 MiB resident per
        // pooled connection, 4 KB per session of a full one; `?frame_max=N` overrides.
        if uri.query.frame_max.is_none() {
            uri.query.frame_max = Some(DEFAULT_AMQP_FRAME_MAX);
        }
        Ok(BrokerConfig {
            uri,
            idle_connection_ttl: Duration::from_secs(30),
            max_channels_per_connection: DEFAULT_MAX_CHANNELS_PER_CONNECTION,
            connect_timeout: Duration::from_secs(10),
            tls: None,
        })
    }

    fn is_tls(&self) -> bool {
        self.uri.scheme == lapin::uri::AMQPScheme::AMQPS
    }

    /// The credentials in the URL (service-user mode).
    pub fn url_credentials(&self) -> (String, String) {
        let info = &self.uri.authority.userinfo;
        (info.username.clone(), info.password.clone())
    }
}

/// SASL PLAIN that gives lapin the password once, for the handshake, and zeroes its copy:
/// pooled connections outlive the sessions that opened them, and nothing needs the
/// password after the login.
struct OneShotPlain {
    username: String,
    password: Mutex<Option<zeroize::Zeroizing<String>>>,
}

impl OneShotPlain {
    fn new(username: &str, password: &str) -> Self {
        OneShotPlain {
            username: username.to_string(),
            password: Mutex::new(Some(zeroize::Zeroizing::new(password.to_string()))),
        }
    }
}

impl AuthProvider for OneShotPlain {
    fn mechanism(&self) -> ShortString {
        SASLMechanism::Plain.name().into()
    }

    fn auth_starter(&self) -> Result<LongString, String> {
        let password = self
            .password
            .lock()
            .ok()
            .and_then(|mut p| p.take())
            .ok_or_else(|| "credentials were already used for this connection".to_string())?;
        Ok(format!("\0{}\0{}", self.username, password.as_str()).into())
    }
}

/// Pool key: connections are shared only by sessions with the same user, vhost and
/// password (a salted hash, so the key reveals nothing). Also identifies "the same
/// credentials" for the fan-out's authorisation cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    user: String,
    vhost: String,
    password_hash: [u8; 32],
}

struct PooledConnection {
    /// The lapin connection; it never reuses a channel id (see `crate::amqp`).
    shared: SharedConnection,
    /// Live channels (sessions, shared queues) on this connection.
    channels: AtomicUsize,
    channel_limit: usize,
    idle_since: Mutex<Option<Instant>>,
    /// Cancelled when the connection is lost; every session on it is told at once.
    lost: CancellationToken,
    /// Set before the gateway closes the connection itself (idle, retired, shutdown): what
    /// lapin reports afterwards is not a lost connection.
    closing: Arc<AtomicBool>,
    /// Set once the connection's retirement (all channel ids used) was counted.
    retirement_counted: AtomicBool,
}

impl PooledConnection {
    fn usable(&self) -> bool {
        !self.lost.is_cancelled() && self.shared.connection().status().connected()
    }

    /// Closes the connection on the gateway's own initiative.
    async fn close(&self, reason: &str) {
        self.closing.store(true, Ordering::Release);
        if self.usable() {
            let _ = self.shared.connection().close(200, reason.into()).await;
        }
    }

    /// Retired (every channel id used) and no channel left: ready to be closed.
    fn finished(&self) -> bool {
        self.shared.is_retired() && self.channels.load(Ordering::Acquire) == 0
    }

    /// Places one more channel here (promising it a channel id), unless the connection is
    /// full, retired or lost.
    fn admit(&self, metrics: &GatewayMetrics) -> Option<IdReservation> {
        if !self.usable() || self.channels.load(Ordering::Acquire) >= self.channel_limit {
            return None;
        }
        let Some(reservation) = self.shared.reserve() else {
            self.count_retirement(metrics);
            return None;
        };
        self.channels.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut idle) = self.idle_since.lock() {
            *idle = None;
        }
        Some(reservation)
    }

    /// Counts (once) that this connection used all its channel ids.
    fn count_retirement(&self, metrics: &GatewayMetrics) {
        if self.shared.is_retired() && !self.retirement_counted.swap(true, Ordering::AcqRel) {
            metrics.broker_connections_retired.inc();
        }
    }

    /// Undoes one `admit`.
    fn release(&self) {
        let left = self
            .channels
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        if left == 0
            && let Ok(mut idle) = self.idle_since.lock()
        {
            *idle = Some(Instant::now());
        }
    }
}

/// A session's view of its pooled connection: whether (and when) it was lost. Held outside
/// the session's channel lock, so the driver can wait on it while an operation runs.
#[derive(Clone)]
pub struct BrokerLink {
    pooled: Arc<PooledConnection>,
}

impl BrokerLink {
    /// Resolves when the AMQP connection is lost.
    pub fn lost(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.pooled.lost.clone().cancelled_owned()
    }

    /// True once the AMQP connection is gone (an ended consumer then means the loss, not a
    /// server-side cancel).
    pub fn is_lost(&self) -> bool {
        !self.pooled.usable()
    }
}

/// What the readiness monitor knows about RabbitMQ.
#[derive(Default)]
struct Health {
    /// The last probe reached RabbitMQ.
    up: AtomicBool,
    /// At least one probe finished (until then /readyz probes by itself).
    probed: AtomicBool,
    /// Woken when a pooled connection is lost: probe now rather than at the next tick.
    recheck: Notify,
    /// Why the last probe failed, for /readyz (never holds credentials: lapin's and our
    /// connect errors do not include the URI).
    down_reason: std::sync::Mutex<String>,
    /// Set while pooled connections fail to open channels (why, and since when): RabbitMQ
    /// answers, but sessions cannot work. Cleared by the next channel that opens.
    channel_trouble: std::sync::Mutex<Option<(String, Instant)>>,
}

/// Exponential backoff with jitter for reconnect attempts: the delay doubles from `base`
/// up to `cap`, and each wait is drawn from [delay/2, delay] so that many gateways losing
/// the same broker do not retry in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        let delay = self.base.saturating_mul(factor).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let jitter: f64 = rand::random::<f64>() * 0.5;
        delay.mul_f64(1.0 - jitter)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

type PoolSlot = Arc<tokio::sync::Mutex<Vec<Arc<PooledConnection>>>>;

struct Inner {
    config: BrokerConfig,
    salt: [u8; 16],
    /// One async lock per credential key: a burst of sessions with the same credentials opens
    /// one connection, while other keys (and a slow broker for one of them) do not wait.
    pool: Mutex<HashMap<PoolKey, PoolSlot>>,
    metrics: GatewayMetrics,
    health: Health,
}

/// Shared handle to the broker side; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// A session's place on a pooled connection, and its channel, opened on first use: a
/// session that only joins shared fan-out queues may never need one. Dropping it closes the
/// channel (without crossing a close from RabbitMQ: `crate::amqp::close_channel`) and
/// releases the place.
pub struct SessionChannel {
    channel: Option<Channel>,
    /// The channel id promised to this session until it opens its channel.
    reservation: Option<IdReservation>,
    key: PoolKey,
    pooled: Arc<PooledConnection>,
    /// The other connections for the same credentials (for shared-queue channels).
    slot: PoolSlot,
    confirms_enabled: bool,
    /// (exchange, routing key) pairs this channel has published to with the broker's
    /// confirm; see [`SessionChannel::publish`].
    confirmed_routes: HashSet<(String, String)>,
    broker: Broker,
}

impl Drop for SessionChannel {
    fn drop(&mut self) {
        let pooled = self.pooled.clone();
        let Some(channel) = self.channel.take() else {
            pooled.release();
            return;
        };
        self.broker.inner.metrics.broker_channels.dec();
        if !channel.status().connected() {
            pooled.release();
            return;
        }
        // The place is released once the close is done: a retired connection is closed only
        // when no channel on it is still closing.
        tokio::spawn(async move {
            amqp::close_channel(&channel, "session closed").await;
            pooled.release();
        });
    }
}

impl Broker {
    pub fn new(config: BrokerConfig, metrics: GatewayMetrics) -> Self {
        let salt: [u8; 16] = rand::random();
        Broker {
            inner: Arc::new(Inner {
                config,
                salt,
                pool: Mutex::new(HashMap::new()),
                metrics,
                health: Health::default(),
            }),
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Opens a channel for a session on a pooled connection for these credentials.
    pub async fn open_channel(
        &self,
        login: &str,
        passcode: &str,
        vhost: &str,
    ) -> Result<SessionChannel, ConnectFailure> {
        let key = PoolKey {
            user: login.to_string(),
            vhost: vhost.to_string(),
            password_hash: self.password_hash(passcode),
        };
        let slot = match self.inner.pool.lock() {
            Ok(mut pool) => pool.entry(key.clone()).or_default().clone(),
            Err(_) => {
                return Err(ConnectFailure::Unavailable(
                    "internal error: connection pool poisoned".to_string(),
                ));
            }
        };
        let mut entries = slot.lock().await;
        self.prune(&mut entries);
        let placed = entries
            .iter()
            .find_map(|c| c.admit(&self.inner.metrics).map(|r| (c.clone(), r)));
        let (pooled, reservation) = match placed {
            Some(placed) => placed,
            None => {
                let lost = CancellationToken::new();
                let closing = Arc::new(AtomicBool::new(false));
                let conn = self
                    .connect(login, passcode, vhost, lost.clone(), closing.clone())
                    .await?;
                let pooled = Arc::new(PooledConnection {
                    shared: SharedConnection::new(conn),
                    channels: AtomicUsize::new(0),
                    channel_limit: self.inner.config.max_channels_per_connection.max(1),
                    idle_since: Mutex::new(None),
                    lost,
                    closing,
                    retirement_counted: AtomicBool::new(false),
                });
                entries.push(pooled.clone());
                let reservation = pooled.admit(&self.inner.metrics).ok_or_else(|| {
                    ConnectFailure::Unavailable(
                        "RabbitMQ allows no channel on a new connection".to_string(),
                    )
                })?;
                (pooled, reservation)
            }
        };
        drop(entries);
        Ok(SessionChannel {
            channel: None,
            reservation: Some(reservation),
            key,
            pooled,
            slot,
            confirms_enabled: false,
            confirmed_routes: HashSet::new(),
            broker: self.clone(),
        })
    }

    /// Drops lost connections from a pool slot, and closes retired ones whose last channel
    /// has gone.
    fn prune(&self, entries: &mut Vec<Arc<PooledConnection>>) {
        entries.retain(|c| {
            if !c.usable() {
                self.inner.metrics.broker_connections.dec();
                return false;
            }
            if c.finished() {
                c.count_retirement(&self.inner.metrics);
                self.inner.metrics.broker_connections.dec();
                let c = c.clone();
                tokio::spawn(async move { c.close("channel ids used up").await });
                return false;
            }
            true
        });
    }

    async fn connect(
        &self,
        login: &str,
        passcode: &str,
        vhost: &str,
        lost: CancellationToken,
        closing: Arc<AtomicBool>,
    ) -> Result<Connection, ConnectFailure> {
        let mut uri = self.inner.config.uri.clone();
        let mut props = ConnectionProperties::default()
            .with_connection_name(format!("stompgate {login}@{vhost}").into());
        let plain = matches!(uri.query.auth_mechanism, None | Some(SASLMechanism::Plain));
        uri.authority.userinfo = AMQPUserInfo {
            username: login.to_string(),
            // lapin keeps the URI and its default auth provider for the connection's
            // life; with PLAIN the password goes through a one-shot provider instead.
            password: if plain {
                String::new()
            } else {
                passcode.to_string()
            },
        };
        if plain {
            props = props.with_auth_provider(OneShotPlain::new(login, passcode));
        }
        uri.vhost = vhost.to_string();
        let attempt = self.open_connection(uri, props);
        // While RabbitMQ is known to be down, new sessions learn it quickly instead of
        // waiting out the full timeout (the attempt is still made: the monitor may lag).
        let timeout = if self.known_down() {
            self.inner.config.connect_timeout.min(DOWN_CONNECT_TIMEOUT)
        } else {
            self.inner.config.connect_timeout
        };
        let result = tokio::time::timeout(timeout, attempt).await;
        match result {
            Err(_) => {
                self.inner.metrics.broker_connect_failures.inc();
                Err(ConnectFailure::Unavailable(
                    "timed out connecting to RabbitMQ".to_string(),
                ))
            }
            Ok(Err(e)) => {
                self.inner.metrics.broker_connect_failures.inc();
                Err(classify_connect_error(&e))
            }
            Ok(Ok(conn)) => {
                self.inner.metrics.broker_connections.inc();
                let metrics = self.inner.metrics.clone();
                let events = conn.events_listener();
                let broker = self.clone();
                tokio::spawn(async move {
                    watch_connection(events, metrics, lost, closing).await;
                    // Probe now: /readyz should not wait for the next tick to turn 503.
                    broker.inner.health.recheck.notify_one();
                });
                Ok(conn)
            }
        }
    }

    /// Opens the channel a place on `pooled` was promised, keeping readiness and metrics in
    /// line with the outcome.
    async fn open_reserved(
        &self,
        pooled: &PooledConnection,
        reservation: IdReservation,
    ) -> Result<Channel, BrokerFailure> {
        match pooled.shared.open_reserved(reservation).await {
            Ok(channel) => {
                self.inner.metrics.broker_channels.inc();
                self.set_channel_trouble(None);
                Ok(channel)
            }
            Err(e) => {
                // RabbitMQ refusing the channel (a channel limit), or lapin's own table being
                // full, means the pool cannot serve sessions while RabbitMQ itself looks
                // fine. A lost connection is the readiness monitor's news.
                let refused = matches!(
                    e.kind(),
                    ErrorKind::ProtocolError(_)
                        | ErrorKind::ChannelsLimitReached
                        | ErrorKind::InvalidChannelState(..)
                        | ErrorKind::InvalidChannel(_)
                );
                let failure = to_failure(e);
                if refused {
                    self.set_channel_trouble(Some(failure.text.trim_end().to_string()));
                }
                Err(failure)
            }
        }
    }

    fn set_channel_trouble(&self, reason: Option<String>) {
        let Ok(mut trouble) = self.inner.health.channel_trouble.lock() else {
            return;
        };
        match reason {
            None if trouble.is_some() => {
                *trouble = None;
                self.inner.metrics.broker_channel_open_failing.set(0);
                tracing::info!("AMQP channels open again");
            }
            None => {}
            Some(reason) => {
                if trouble.is_none() {
                    tracing::warn!(%reason, "cannot open AMQP channels on a pooled connection");
                }
                *trouble = Some((reason, Instant::now()));
                self.inner.metrics.broker_channel_open_failing.set(1);
            }
        }
    }

    fn has_channel_trouble(&self) -> bool {
        self.inner
            .health
            .channel_trouble
            .lock()
            .is_ok_and(|t| t.is_some())
    }

    /// Opens and closes a channel on the monitor's own connection: a success ends a channel
    /// trouble at once, a failure keeps it (and /readyz failing).
    async fn check_channels(&self, conn: &SharedConnection) {
        let attempt = tokio::time::timeout(self.inner.config.connect_timeout, conn.open()).await;
        match attempt {
            Ok(Ok(channel)) => {
                amqp::close_channel(&channel, "readiness check").await;
                self.set_channel_trouble(None);
            }
            Ok(Err(amqp::OpenError::Retired)) => {}
            Ok(Err(amqp::OpenError::Lapin(e))) => {
                self.set_channel_trouble(Some(to_failure(e).text.trim_end().to_string()));
            }
            Err(_) => self.set_channel_trouble(Some("timed out opening a channel".to_string())),
        }
    }

    /// Why channels cannot be opened, while that lasts (for /readyz). A failure that no
    /// session has retried for [`CHANNEL_TROUBLE_HOLD`] is let go, so a pod taken out of
    /// service by it is tried again (the readiness monitor re-checks sooner when it can log
    /// in).
    pub fn channel_trouble(&self) -> Option<String> {
        let trouble = self.inner.health.channel_trouble.lock().ok()?;
        let (reason, since) = trouble.as_ref()?;
        (since.elapsed() < CHANNEL_TROUBLE_HOLD).then(|| reason.clone())
    }

    fn password_hash(&self, password: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.inner.salt);
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }

    /// Closes pooled connections that have had no session for the idle TTL, and forgets
    /// credential keys with no connection (e.g. after failed logins).
    pub async fn reap_idle(&self) {
        let ttl = self.inner.config.idle_connection_ttl;
        let slots: Vec<(PoolKey, PoolSlot)> = match self.inner.pool.lock() {
            Ok(pool) => pool.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => return,
        };
        let mut to_close = Vec::new();
        let mut empty = Vec::new();
        for (key, slot) in slots {
            // A slot being used right now is not idle.
            let Ok(mut entries) = slot.try_lock() else {
                continue;
            };
            entries.retain(|c| {
                let idle_for = c
                    .idle_since
                    .lock()
                    .ok()
                    .and_then(|i| *i)
                    .map(|since| since.elapsed());
                let expired =
                    c.channels.load(Ordering::Acquire) == 0 && idle_for.is_some_and(|d| d >= ttl);
                if expired || !c.usable() || c.finished() {
                    c.count_retirement(&self.inner.metrics);
                    to_close.push(c.clone());
                    false
                } else {
                    true
                }
            });
            if entries.is_empty() {
                empty.push((key, slot.clone()));
            }
        }
        if let Ok(mut pool) = self.inner.pool.lock() {
            for (key, slot) in empty {
                // Only forget the key if nobody picked the slot up meanwhile.
                if Arc::strong_count(&slot) <= 2
                    && slot.try_lock().map(|e| e.is_empty()).unwrap_or(false)
                {
                    pool.remove(&key);
                }
            }
        }
        for c in to_close {
            c.close("idle").await;
            self.inner.metrics.broker_connections.dec();
        }
    }

    /// Number of pooled connections (all credentials).
    pub fn pooled_connections(&self) -> usize {
        let slots: Vec<PoolSlot> = match self.inner.pool.lock() {
            Ok(pool) => pool.values().cloned().collect(),
            Err(_) => return 0,
        };
        slots
            .iter()
            .map(|s| s.try_lock().map(|e| e.len()).unwrap_or(0))
            .sum()
    }

    /// Readiness: RabbitMQ accepts TCP connections and, for `amqps://`, completes a TLS
    /// handshake we trust (so a wrong CA shows as not ready, with the reason).
    pub async fn check_reachable(&self) -> Result<(), String> {
        let config = &self.inner.config;
        let authority = &config.uri.authority;
        let attempt = async {
            match (&config.tls, config.is_tls()) {
                (Some(tls), true) => tls.connect(&authority.host, authority.port).await.map(drop),
                _ => tokio::net::TcpStream::connect((authority.host.as_str(), authority.port))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(result) => result,
            Err(_) => Err("no answer within 2s".to_string()),
        }
    }
}

/// Cancels `lost` when the connection fails (or its event stream ends: the connection is
/// gone either way).
async fn watch_connection(
    events: impl futures::Stream<Item = lapin::Event> + Send + 'static,
    metrics: GatewayMetrics,
    lost: CancellationToken,
    closing: Arc<AtomicBool>,
) {
    use futures::StreamExt;
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let lapin::Event::Error(e) = event else {
            continue;
        };
        // A channel error closed one channel (its session reports it), not the connection.
        if amqp::is_channel_error(&e) {
            metrics.broker_channel_errors.inc();
            continue;
        }
        if !closing.load(Ordering::Acquire) {
            tracing::warn!(error = %describe_error(&e), "AMQP connection lost");
            metrics.broker_connection_errors.inc();
        }
        break;
    }
    lost.cancel();
}

/// AMQP heart-beat interval asked for when the URL sets none.
pub const DEFAULT_AMQP_HEARTBEAT_SECS: u16 = 20;
/// Default of `--amqp-max-channels-per-connection`.
pub const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 128;
/// How long a failure to open channels keeps /readyz failing with no retry.
pub const CHANNEL_TROUBLE_HOLD: Duration = Duration::from_secs(10);
/// Routes a session remembers as confirmed (see [`SessionChannel::publish`]).
const MAX_CONFIRMED_ROUTES: usize = 256;
/// A publish's confirm, pending or already in.
pub type Confirm = futures::future::BoxFuture<'static, lapin::Result<Confirmation>>;
/// AMQP frame_max the gateway asks for (bodies larger than this travel as several frames).
pub const DEFAULT_AMQP_FRAME_MAX: u32 = 16 * 1024;
/// Connect timeout while the monitor reports RabbitMQ down.
const DOWN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Probe interval while RabbitMQ is up but the monitor holds no connection of its own.
const HEALTH_TICK: Duration = Duration::from_secs(5);
/// First and longest wait between probes while RabbitMQ is down.
pub const RECONNECT_BACKOFF_BASE: Duration = Duration::from_millis(250);
pub const RECONNECT_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Outcome of one readiness probe.
enum Probe {
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
    pub async fn monitor(self, stop: CancellationToken) {
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

    fn mark_up(&self, was_up: &mut bool, down_since: &mut Option<Instant>) {
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

    async fn probe(&self, login: bool) -> Probe {
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
    async fn open_connection(
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
    pub fn down_reason(&self) -> String {
        self.inner
            .health
            .down_reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// True when the last readiness probe reached RabbitMQ.
    pub fn is_up(&self) -> bool {
        self.inner.health.up.load(Ordering::Acquire)
    }

    /// True once the readiness monitor has probed at least once.
    pub fn probed(&self) -> bool {
        self.inner.health.probed.load(Ordering::Acquire)
    }

    fn known_down(&self) -> bool {
        self.probed() && !self.is_up()
    }

    /// Closes every pooled connection (end of drain), so RabbitMQ requeues what the
    /// sessions left unacknowledged now, not when the process exits.
    pub async fn close_all(&self) {
        let slots: Vec<PoolSlot> = match self.inner.pool.lock() {
            Ok(pool) => pool.values().cloned().collect(),
            Err(_) => return,
        };
        for slot in slots {
            let entries: Vec<Arc<PooledConnection>> = slot.lock().await.drain(..).collect();
            for c in entries {
                c.close("gateway shutting down").await;
                self.inner.metrics.broker_connections.dec();
            }
        }
    }
}

impl SessionChannel {
    /// Watches this session's AMQP connection.
    pub fn link(&self) -> BrokerLink {
        BrokerLink {
            pooled: self.pooled.clone(),
        }
    }

    /// The credentials this channel was opened with.
    pub fn credentials(&self) -> &PoolKey {
        &self.key
    }

    /// The vhost of this channel.
    pub fn vhost(&self) -> &str {
        &self.key.vhost
    }

    /// Another channel for the same credentials (same user, same permissions), e.g. for a
    /// shared fan-out queue that outlives this session: on this session's connection, or on
    /// another pooled connection of the same credentials. None when none of them has room (all
    /// full, or retired after using every channel id): the caller then does without sharing.
    pub async fn sibling(&self) -> Result<Option<SessionChannel>, BrokerFailure> {
        let metrics = &self.broker.inner.metrics;
        let placed = match self.pooled.admit(metrics) {
            Some(reservation) => Some((self.pooled.clone(), reservation)),
            None => self
                .slot
                .lock()
                .await
                .iter()
                .find_map(|c| c.admit(metrics).map(|r| (c.clone(), r))),
        };
        let Some((pooled, reservation)) = placed else {
            return Ok(None);
        };
        let mut sibling = SessionChannel {
            channel: None,
            reservation: Some(reservation),
            key: self.key.clone(),
            pooled,
            slot: self.slot.clone(),
            confirms_enabled: false,
            confirmed_routes: HashSet::new(),
            broker: self.broker.clone(),
        };
        sibling.channel().await?;
        Ok(Some(sibling))
    }

    /// The session's channel, opened now if this is its first use.
    pub async fn channel(&mut self) -> Result<&Channel, BrokerFailure> {
        if self.channel.is_none() {
            if !self.pooled.usable() {
                return Err(BrokerFailure::connection_lost(
                    "The AMQP connection is closed.\n",
                ));
            }
            let Some(reservation) = self.reservation.take() else {
                return Err(internal_failure("the session's channel was already used"));
            };
            let channel = self.broker.open_reserved(&self.pooled, reservation).await?;
            self.channel = Some(channel);
        }
        self.channel
            .as_ref()
            .ok_or_else(|| internal_failure("no channel"))
    }

    /// Closes the channel (DISCONNECT), if it was ever opened.
    pub async fn close(&mut self) {
        if let Some(channel) = self.channel.take() {
            self.broker.inner.metrics.broker_channels.dec();
            amqp::close_channel(&channel, "DISCONNECT").await;
        }
    }

    /// Declares, binds and consumes as planned (declare, qos, bind, consume); a generated
    /// subscription queue is deleted again when a later step fails.
    pub async fn subscribe(&mut self, plan: &SubscribePlan) -> Result<Consumer, BrokerFailure> {
        let ch = self.channel().await?;
        let queue = match &plan.declare {
            Some(declare) => declare_queue(ch, declare).await?,
            None => plan.queue.clone(),
        };
        let result = async {
            if let Some(prefetch) = plan.prefetch_count {
                ch.basic_qos(prefetch, BasicQosOptions::default())
                    .await
                    .map_err(to_failure)?;
            }
            if let Some(binding) = &plan.binding {
                ch.queue_bind(
                    queue.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(to_failure)?;
            }
            ch.basic_consume(
                queue.as_str().into(),
                plan.consumer_tag.as_str().into(),
                BasicConsumeOptions {
                    no_ack: plan.ack.no_ack(),
                    ..BasicConsumeOptions::default()
                },
                plan.consumer_arguments.clone(),
            )
            .await
            .map_err(to_failure)
        }
        .await;
        if result.is_err() && plan.delete_queue_on_failure && ch.status().connected() {
            let _ = ch
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        result
    }

    pub async fn unsubscribe(
        &mut self,
        consumer_tag: &str,
        delete_queue: Option<&str>,
    ) -> Result<(), BrokerFailure> {
        let ch = self.channel().await?;
        ch.basic_cancel(consumer_tag.into(), BasicCancelOptions::default())
            .await
            .map_err(to_failure)?;
        if let Some(queue) = delete_queue {
            ch.queue_delete(queue.into(), QueueDeleteOptions::default())
                .await
                .map_err(to_failure)?;
        }
        Ok(())
    }

    /// Declares the server-named reply queue of a `/temp-queue/` and consumes it.
    pub async fn create_temp_queue(
        &mut self,
        plan: &TempQueuePlan,
    ) -> Result<(String, Consumer), BrokerFailure> {
        let ch = self.channel().await?;
        let name = declare_queue(ch, &plan.declare).await?;
        let consumer = ch
            .basic_consume(
                name.as_str().into(),
                plan.consumer_tag.as_str().into(),
                BasicConsumeOptions {
                    no_ack: plan.no_ack,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(to_failure)?;
        Ok((name, consumer))
    }

    /// Publishes; returns the confirm future (confirm mode is enabled on first publish so
    /// that broker nacks and channel errors are observed even without receipts).
    ///
    /// The first publish to each exchange and routing key (other than the default exchange,
    /// which takes any) is confirmed before this returns. RabbitMQ refuses a publish to a
    /// missing exchange, or one the user may not write to, by closing the channel
    /// asynchronously; lapin answers that close with close-ok ahead of a publish of the same
    /// channel still queued (publishes wait in a lower-priority queue), and RabbitMQ takes
    /// that late publish on a channel it has forgotten as a connection error
    /// (`CHANNEL_ERROR - expected 'channel.open'`) that would end every session on the
    /// pooled connection. Once a route has been confirmed, later publishes on it need no wait.
    pub async fn publish(&mut self, request: &PublishRequest) -> Result<Confirm, BrokerFailure> {
        let confirms_enabled = self.confirms_enabled;
        let ch = self.channel().await?;
        if !confirms_enabled {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(to_failure)?;
        }
        if let Some(declare) = &request.declare_queue {
            declare_queue(ch, declare).await?;
        }
        let confirm = ch
            .basic_publish(
                request.route.exchange.as_str().into(),
                request.route.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: request.mandatory,
                    ..BasicPublishOptions::default()
                },
                &request.body,
                request.properties.clone(),
            )
            .await
            .map_err(to_failure)?;
        self.confirms_enabled = true;
        let route = (
            request.route.exchange.clone(),
            request.route.routing_key.clone(),
        );
        if route.0.is_empty() || self.confirmed_routes.contains(&route) {
            return Ok(futures::FutureExt::boxed(confirm));
        }
        let confirmation = confirm.await;
        if confirmation.is_ok() {
            // Bounded: a client that publishes to ever new keys pays a round trip each time.
            if self.confirmed_routes.len() >= MAX_CONFIRMED_ROUTES {
                self.confirmed_routes.clear();
            }
            self.confirmed_routes.insert(route);
        }
        Ok(futures::FutureExt::boxed(futures::future::ready(
            confirmation,
        )))
    }

    pub async fn ack(&mut self, delivery_tag: u64, multiple: bool) -> Result<(), BrokerFailure> {
        self.channel()
            .await?
            .basic_ack(delivery_tag, BasicAckOptions { multiple })
            .await
            .map_err(to_failure)
    }

    pub async fn nack(
        &mut self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), BrokerFailure> {
        self.channel()
            .await?
            .basic_nack(delivery_tag, BasicNackOptions { multiple, requeue })
            .await
            .map_err(to_failure)
    }
}

async fn declare_queue(ch: &Channel, declare: &QueueDeclare) -> Result<String, BrokerFailure> {
    let queue = ch
        .queue_declare(
            ShortString::from(declare.queue.as_str()),
            // Always wait for declare-ok so errors are reported against this frame.
            QueueDeclareOptions {
                passive: declare.passive,
                durable: declare.durable,
                exclusive: declare.exclusive,
                auto_delete: declare.auto_delete,
                nowait: false,
            },
            declare.arguments.clone(),
        )
        .await
        .map_err(to_failure)?;
    Ok(queue.name().to_string())
}

/// Maps a confirm to what the session reports.
pub fn confirm_outcome(confirmation: Confirmation) -> crate::gateway::session::ConfirmOutcome {
    use crate::gateway::session::ConfirmOutcome;
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => ConfirmOutcome::Ack,
        Confirmation::Ack(Some(returned)) => ConfirmOutcome::Unroutable {
            reply_text: returned.reply_text.to_string(),
        },
        Confirmation::Nack(_) => ConfirmOutcome::Nack,
    }
}

/// RabbitMQ's error atom for an AMQP reply code.
fn error_name(code: u16) -> &'static str {
    match code {
        311 => "content_too_large",
        312 => "no_route",
        313 => "no_consumers",
        320 => "connection_forced",
        402 => "invalid_path",
        403 => "access_refused",
        404 => "not_found",
        405 => "resource_locked",
        406 => "precondition_failed",
        501 => "frame_error",
        502 => "syntax_error",
        503 => "command_invalid",
        504 => "channel_error",
        505 => "unexpected_frame",
        506 => "resource_error",
        530 => "not_allowed",
        540 => "not_implemented",
        541 => "internal_error",
        _ => "amqp_error",
    }
}

fn internal_failure(text: &str) -> BrokerFailure {
    BrokerFailure {
        name: "Internal error".to_string(),
        text: format!("{text}\n"),
    }
}

/// Converts a lapin error on a channel operation into the session's failure report.
pub fn to_failure(error: lapin::Error) -> BrokerFailure {
    match error.kind() {
        // 320 connection_forced: the broker is shutting down or an operator closed the
        // connection; either way the connection is gone and a reconnect is the remedy.
        ErrorKind::ProtocolError(amqp) if amqp.get_id() == 320 => {
            BrokerFailure::connection_lost(format!("{}\n", amqp.get_message()))
        }
        ErrorKind::ProtocolError(amqp) => BrokerFailure {
            name: error_name(amqp.get_id()).to_string(),
            text: amqp.get_message().to_string(),
        },
        _ => BrokerFailure::connection_lost(format!("{}\n", describe_error(&error))),
    }
}

fn classify_connect_error(error: &lapin::Error) -> ConnectFailure {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.get_id() {
            403 => ConnectFailure::AccessRefused,
            530 | 402 => ConnectFailure::VhostDenied,
            _ => ConnectFailure::Unavailable(amqp.get_message().to_string()),
        },
        _ => ConnectFailure::Unavailable(describe_error(error)),
    }
}

/// Error text safe for clients and logs: never contains credentials (lapin errors carry
/// no URI).
pub fn describe_error(error: &lapin::Error) -> String {
    error.to_string()
}

/// Reads RabbitMQ's `product/version` from the `connection.start` server properties
/// (lapin does not expose them), for the CONNECTED `server` header. Best effort.
pub async fn probe_server_product(config: &BrokerConfig) -> Option<String> {
    read_server_product(config).await.ok().flatten()
}

/// Like [`probe_server_product`], telling a broker that answered without a product or
/// version (`Ok(None)`) from one that did not answer within 5 s (`Err`).
pub async fn read_server_product(config: &BrokerConfig) -> Result<Option<String>, BrokerError> {
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
fn parse_start_product(payload: &[u8]) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_plain_gives_the_password_once() {
        let provider = OneShotPlain::new("alice", "pw");
        assert_eq!(provider.mechanism().as_str(), "PLAIN");
        let token = provider.auth_starter().expect("first use");
        assert_eq!(token.as_bytes(), b"\0alice\0pw");
        assert!(provider.auth_starter().is_err(), "the password is gone");
    }

    #[test]
    fn parses_product_and_version_from_connection_start() {
        let mut table = Vec::new();
        for (k, v) in [("product", "RabbitMQ"), ("version", "3.10.8")] {
            table.push(k.len() as u8);
            table.extend_from_slice(k.as_bytes());
            table.push(b'S');
            table.extend_from_slice(&(v.len() as u32).to_be_bytes());
            table.extend_from_slice(v.as_bytes());
        }
        table.push(4);
        table.extend_from_slice(b"flag");
        table.push(b't');
        table.push(1);
        let mut payload = vec![0, 10, 0, 10, 0, 9];
        payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
        payload.extend_from_slice(&table);
        assert_eq!(
            parse_start_product(&payload).as_deref(),
            Some("RabbitMQ/3.10.8")
        );
        assert_eq!(parse_start_product(&payload[..12]), None);
        assert_eq!(parse_start_product(b"garbage"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let mut backoff = Backoff::new(base, cap);
        let mut ceiling = base;
        for _ in 0..12 {
            let d = backoff.next_delay();
            // Jitter draws each wait from [delay/2, delay].
            assert!(d <= ceiling && d >= ceiling / 2, "{d:?} vs {ceiling:?}");
            ceiling = (ceiling * 2).min(cap);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= base);
    }

    #[test]
    fn connection_forced_counts_as_a_lost_connection() {
        use lapin::protocol::AMQPError;
        let amqp = |id: u16, text: &str| {
            let error = AMQPError::from_id(id, text.into()).expect("known reply code");
            lapin::Error::from(ErrorKind::ProtocolError(error))
        };
        let forced = amqp(
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
        );
        assert!(to_failure(forced).is_connection_lost());
        let not_found = to_failure(amqp(404, "NOT_FOUND - no queue 'q'"));
        assert_eq!(not_found.name, "not_found");
        assert!(!not_found.is_connection_lost());
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(to_failure(io).is_connection_lost());
    }

    #[test]
    fn error_names_match_rabbitmq_atoms() {
        assert_eq!(error_name(404), "not_found");
        assert_eq!(error_name(403), "access_refused");
        assert_eq!(error_name(406), "precondition_failed");
        assert_eq!(error_name(405), "resource_locked");
    }
}
