//! RabbitMQ side of the gateway: pooled lapin connections, one channel per STOMP session,
//! and the AMQP operations behind each session request. Never sees a STOMP frame.

mod channel;
mod errors;
mod health;
pub(crate) mod product;

use errors::{classify_connect_error, internal_failure, placement_failure};
pub(crate) use errors::{confirm_outcome, describe_error, to_failure};

use crate::amqp::{self, IdReservation, SharedConnection};
use crate::gateway::rabbit::plan::{SubscribePlan, TempQueuePlan};
use crate::gateway::rabbit::queue::QueueDeclare;
use crate::gateway::rabbit::session::{BrokerFailure, ConnectFailure, PublishRequest};
use crate::telemetry::GatewayMetrics;
use lapin::auth::AuthProvider;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::uri::{AMQPUri, AMQPUserInfo, SASLMechanism};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ErrorKind};
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
    pub(crate) fn from_url(url: &str) -> Result<Self, BrokerError> {
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
    pub(crate) fn url_credentials(&self) -> (String, String) {
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
        // Retired the moment its last id is promised.
        self.count_retirement(metrics);
        self.channels.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut idle) = self.idle_since.lock() {
            *idle = None;
        }
        Some(reservation)
    }

    /// Places still free here below the channel limit. Channel ids left are not counted: a
    /// connection near its last id is used up and retired, as before, rather than left with
    /// a few ids when the next one is opened ahead of it.
    fn free_places(&self) -> usize {
        if !self.usable() {
            return 0;
        }
        self.channel_limit
            .saturating_sub(self.channels.load(Ordering::Acquire))
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
    pub(crate) fn lost(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.pooled.lost.clone().cancelled_owned()
    }

    /// True once the AMQP connection is gone (an ended consumer then means the loss, not a
    /// server-side cancel).
    pub(crate) fn is_lost(&self) -> bool {
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
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        let delay = self.base.saturating_mul(factor).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let jitter: f64 = rand::random::<f64>() * 0.5;
        delay.mul_f64(1.0 - jitter)
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The pooled connections of one credential key.
#[derive(Default)]
struct Slot {
    entries: tokio::sync::Mutex<Vec<Arc<PooledConnection>>>,
    /// Set while a connection is opened ahead of need (see [`Broker::place`]).
    opening_ahead: AtomicBool,
    /// The key's sessions, and its password while it has any.
    logins: Mutex<Logins>,
}

/// A session takes a place on a pooled connection only when it first needs a channel of its
/// own (most browsers only join shared fan-out queues and never do). Taking one may need a
/// new connection, so the key's password is kept, zeroed when its last session leaves.
#[derive(Default)]
struct Logins {
    sessions: usize,
    password: Option<zeroize::Zeroizing<String>>,
}

impl Slot {
    fn join(&self, password: &str) {
        if let Ok(mut logins) = self.logins.lock() {
            logins.sessions += 1;
            if logins.password.is_none() {
                logins.password = Some(zeroize::Zeroizing::new(password.to_string()));
            }
        }
    }

    fn leave(&self) {
        if let Ok(mut logins) = self.logins.lock() {
            logins.sessions = logins.sessions.saturating_sub(1);
            if logins.sessions == 0 {
                logins.password = None;
            }
        }
    }

    fn sessions(&self) -> usize {
        self.logins.lock().map(|l| l.sessions).unwrap_or(0)
    }

    fn password(&self) -> Option<zeroize::Zeroizing<String>> {
        self.logins.lock().ok().and_then(|l| l.password.clone())
    }
}

type PoolSlot = Arc<Slot>;

struct Inner {
    config: BrokerConfig,
    salt: [u8; 16],
    /// One async lock per credential key: a burst of sessions with the same credentials opens
    /// one connection, while other keys (and a slow broker for one of them) do not wait.
    pool: Mutex<HashMap<PoolKey, PoolSlot>>,
    metrics: GatewayMetrics,
    health: Health,
    /// Set by [`Broker::close_all`]: a connection opened ahead of need after that is closed
    /// at once instead of pooled.
    closed: AtomicBool,
}

/// Shared handle to the broker side; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// A session's broker side: its place on a pooled connection and its channel, both taken on
/// first use (a session that only joins shared fan-out queues never needs either). Dropping
/// it closes the channel (without crossing a close from RabbitMQ:
/// `crate::amqp::close_channel`), releases the place and leaves the credential key.
pub struct SessionChannel {
    place: Option<Place>,
    key: PoolKey,
    /// The connections for the same credentials.
    slot: PoolSlot,
    /// A session's (counted in its slot), not a shared queue's.
    session: bool,
    /// The place's link was handed out (see [`SessionChannel::take_new_link`]).
    link_reported: bool,
    /// A clone of each consumer handed out and not cancelled: lapin cancels a consumer whose
    /// last handle drops while it is active, from a task of its own that checks the channel
    /// before it sends; a close of ours in between puts that `basic.cancel` on the wire after
    /// the channel's close, and RabbitMQ ends the whole connection (`CHANNEL_ERROR - expected
    /// 'channel.open'`). Held until the channel is closed, they never fire.
    consumers: Vec<Consumer>,
    confirms_enabled: bool,
    /// Routing keys, by exchange, this channel has published to with the broker's confirm;
    /// see [`SessionChannel::publish`].
    confirmed_routes: HashMap<String, HashSet<String>>,
    /// Routes in `confirmed_routes`.
    confirmed_route_count: usize,
    broker: Broker,
}

/// A place on a pooled connection, and the channel opened there.
struct Place {
    pooled: Arc<PooledConnection>,
    /// The channel id promised to this place until its channel opens.
    reservation: Option<IdReservation>,
    channel: Option<Channel>,
}

impl Drop for SessionChannel {
    fn drop(&mut self) {
        if self.session {
            self.slot.leave();
        }
        let Some(mut place) = self.place.take() else {
            return;
        };
        let pooled = place.pooled.clone();
        let Some(channel) = place.channel.take() else {
            pooled.release();
            return;
        };
        self.broker.inner.metrics.broker_channels.dec();
        if !channel.status().connected() {
            pooled.release();
            return;
        }
        let consumers = std::mem::take(&mut self.consumers);
        // The place is released once the close is done: a retired connection is closed only
        // when no channel on it is still closing.
        tokio::spawn(async move {
            amqp::close_channel(&channel, "session closed").await;
            drop(consumers);
            pooled.release();
        });
    }
}

impl Broker {
    pub(crate) fn new(config: BrokerConfig, metrics: GatewayMetrics) -> Self {
        let salt: [u8; 16] = rand::random();
        Broker {
            inner: Arc::new(Inner {
                config,
                salt,
                pool: Mutex::new(HashMap::new()),
                metrics,
                health: Health::default(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Logs a session in: a live pooled connection of these credentials vouches for them,
    /// else a new one is opened (RabbitMQ checks them). The session takes a place on a
    /// connection only when it first needs a channel of its own ([`Broker::place`]).
    pub(crate) async fn open_session(
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
        let mut entries = slot.entries.lock().await;
        // Newest first: an older one is more likely lost or retired.
        if !entries.iter().rev().any(|c| c.usable()) {
            self.prune(&mut entries);
            let pooled = self.new_pooled(login, passcode, vhost).await?;
            entries.push(pooled);
        }
        // Joined while the connection is held, so the idle reaper sees the key in use.
        slot.join(passcode);
        drop(entries);
        Ok(SessionChannel {
            place: None,
            key,
            slot,
            session: true,
            link_reported: false,
            consumers: Vec::new(),
            confirms_enabled: false,
            confirmed_routes: HashMap::new(),
            confirmed_route_count: 0,
            broker: self.clone(),
        })
    }

    /// A place on one of the key's pooled connections: the newest with room, else a new
    /// connection opened with the key's password (kept while the key has sessions).
    async fn place(&self, key: &PoolKey, slot: &PoolSlot) -> Result<Place, BrokerFailure> {
        let mut entries = slot.entries.lock().await;
        // Newest first: older connections are the full ones. Each look at a connection takes
        // two locks (its lost token, lapin's status), and a pod of 50,000 sessions can have
        // hundreds of connections per key.
        let admit = |entries: &[Arc<PooledConnection>]| {
            entries
                .iter()
                .rev()
                .find_map(|c| c.admit(&self.inner.metrics).map(|r| (c.clone(), r)))
        };
        let placed = admit(&entries);
        let (pooled, reservation) = match placed {
            Some(placed) => placed,
            None => {
                // Lost and finished connections go before another is opened (the idle reaper
                // drops them too, on its tick).
                self.prune(&mut entries);
                let password = slot.password().ok_or_else(|| {
                    internal_failure("the credentials left with the key's last session")
                })?;
                let pooled = self
                    .new_pooled(&key.user, password.as_str(), &key.vhost)
                    .await
                    .map_err(placement_failure)?;
                entries.push(pooled.clone());
                let reservation = pooled.admit(&self.inner.metrics).ok_or_else(|| {
                    internal_failure("RabbitMQ allows no channel on a new connection")
                })?;
                (pooled, reservation)
            }
        };
        // The next connection is opened while the last free places are taken, not when a
        // session finds none: in a burst every session of the key would wait behind the
        // slot's lock for the AMQP handshake of each new connection.
        let threshold = open_ahead_threshold(self.inner.config.max_channels_per_connection);
        let mut free = 0;
        for c in entries.iter().rev() {
            free += c.free_places();
            if free > threshold {
                break;
            }
        }
        if free <= threshold && !slot.opening_ahead.swap(true, Ordering::AcqRel) {
            match slot.password() {
                Some(password) => self.open_ahead(slot.clone(), key, password),
                None => slot.opening_ahead.store(false, Ordering::Release),
            }
        }
        drop(entries);
        Ok(Place {
            pooled,
            reservation: Some(reservation),
            channel: None,
        })
    }

    /// A new pooled connection for these credentials, with no channel yet.
    async fn new_pooled(
        &self,
        login: &str,
        passcode: &str,
        vhost: &str,
    ) -> Result<Arc<PooledConnection>, ConnectFailure> {
        let lost = CancellationToken::new();
        let closing = Arc::new(AtomicBool::new(false));
        let conn = self
            .connect(login, passcode, vhost, lost.clone(), closing.clone())
            .await?;
        Ok(Arc::new(PooledConnection {
            shared: SharedConnection::new(conn),
            channels: AtomicUsize::new(0),
            channel_limit: self.inner.config.max_channels_per_connection.max(1),
            // Idle until its first channel: one opened for a login only is reaped after the
            // TTL once its key has no session.
            idle_since: Mutex::new(Some(Instant::now())),
            lost,
            closing,
            retirement_counted: AtomicBool::new(false),
        }))
    }

    /// Opens one more connection for a slot in the background (the key's password is held
    /// only for the handshake). Unused, it is closed after the idle TTL like any other.
    fn open_ahead(&self, slot: PoolSlot, key: &PoolKey, password: zeroize::Zeroizing<String>) {
        let broker = self.clone();
        let login = key.user.clone();
        let vhost = key.vhost.clone();
        tokio::spawn(async move {
            let opened = broker.new_pooled(&login, password.as_str(), &vhost).await;
            drop(password);
            match opened {
                Ok(pooled) => {
                    let mut entries = slot.entries.lock().await;
                    if broker.inner.closed.load(Ordering::Acquire) {
                        drop(entries);
                        pooled.close("gateway shutting down").await;
                        broker.inner.metrics.broker_connections.dec();
                    } else {
                        entries.push(pooled);
                    }
                }
                // The next session that finds no place opens one itself, and reports.
                Err(failure) => {
                    tracing::debug!(?failure, "could not open a pooled connection ahead of need");
                }
            }
            slot.opening_ahead.store(false, Ordering::Release);
        });
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
                    watch_connection(events, &broker, metrics, lost, closing).await;
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
                } else {
                    // The connection ended under the open: its watcher reads RabbitMQ's
                    // reason (and marks a channel refusal for /readyz) before it cancels
                    // `lost`; answer the session after that.
                    let _ = tokio::time::timeout(LOST_VERDICT_WAIT, pooled.lost.cancelled()).await;
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
    pub(crate) fn channel_trouble(&self) -> Option<String> {
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
    pub(crate) async fn reap_idle(&self) {
        let ttl = self.inner.config.idle_connection_ttl;
        let slots: Vec<(PoolKey, PoolSlot)> = match self.inner.pool.lock() {
            Ok(pool) => pool.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => return,
        };
        let mut to_close = Vec::new();
        let mut empty = Vec::new();
        for (key, slot) in slots {
            // A slot being used right now is not idle.
            let Ok(mut entries) = slot.entries.try_lock() else {
                continue;
            };
            // An idle connection that is the key's headroom (opened ahead, see `place`; or the
            // one its sessions logged in on) stays while the key has sessions: closing it
            // would only have the next session open it again.
            let in_use = slot.sessions() > 0
                || entries
                    .iter()
                    .any(|c| c.channels.load(Ordering::Acquire) > 0);
            let threshold = open_ahead_threshold(self.inner.config.max_channels_per_connection);
            let mut busy_free: usize = entries
                .iter()
                .filter(|c| c.channels.load(Ordering::Acquire) > 0)
                .map(|c| c.free_places())
                .sum();
            entries.retain(|c| {
                let idle_for = c
                    .idle_since
                    .lock()
                    .ok()
                    .and_then(|i| *i)
                    .map(|since| since.elapsed());
                let mut expired =
                    c.channels.load(Ordering::Acquire) == 0 && idle_for.is_some_and(|d| d >= ttl);
                if expired && in_use && busy_free <= threshold && c.free_places() > 0 {
                    busy_free += c.free_places();
                    expired = false;
                }
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
                    && slot
                        .entries
                        .try_lock()
                        .map(|e| e.is_empty())
                        .unwrap_or(false)
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

    /// Readiness: RabbitMQ accepts TCP connections and, for `amqps://`, completes a TLS
    /// handshake we trust (so a wrong CA shows as not ready, with the reason).
    pub(crate) async fn check_reachable(&self) -> Result<(), String> {
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

/// Whether a connection error is RabbitMQ refusing channels (`530 NOT_ALLOWED`).
fn refuses_channels(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp)
        if amqp.kind() == &lapin::protocol::AMQPErrorKind::Hard(lapin::protocol::AMQPHardError::NOTALLOWED))
}

/// Cancels `lost` when the connection fails (or its event stream ends: the connection is
/// gone either way).
async fn watch_connection(
    events: impl futures::Stream<Item = lapin::Event> + Send + 'static,
    broker: &Broker,
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
        // RabbitMQ refusing a channel open can close the whole connection (NOT_ALLOWED,
        // e.g. a per-user channel limit): readiness learns it before the sessions do (see
        // `open_reserved`), whichever of lapin's futures saw the error first.
        if refuses_channels(&e) {
            broker.set_channel_trouble(Some(describe_error(&e)));
        }
        break;
    }
    lost.cancel();
}

/// How long a failed channel open waits for its connection's watcher to report the loss.
const LOST_VERDICT_WAIT: Duration = Duration::from_secs(2);
/// Connect timeout while the monitor reports RabbitMQ down.
const DOWN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// AMQP heart-beat interval asked for when the URL sets none.
pub(crate) const DEFAULT_AMQP_HEARTBEAT_SECS: u16 = 20;
/// Free places (over all of a key's connections) at or below which the next connection is
/// opened ahead of need: a quarter of a connection's.
fn open_ahead_threshold(max_channels_per_connection: usize) -> usize {
    max_channels_per_connection / 4
}
/// Default of `--amqp-max-channels-per-connection`.
pub(crate) const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 128;
/// How long a failure to open channels keeps /readyz failing with no retry.
pub(crate) const CHANNEL_TROUBLE_HOLD: Duration = Duration::from_secs(10);
/// AMQP frame_max the gateway asks for (bodies larger than this travel as several frames).
pub(crate) const DEFAULT_AMQP_FRAME_MAX: u32 = 16 * 1024;
/// Routes a session remembers as confirmed (see [`SessionChannel::publish`]).
const MAX_CONFIRMED_ROUTES: usize = 256;
/// A publish's confirm, pending or already in.
pub(crate) type Confirm = futures::future::BoxFuture<'static, lapin::Result<lapin::Confirmation>>;
#[cfg(test)]
mod tests {
    use super::errors::error_name;
    use super::product::parse_start_product;
    use super::*;

    fn test_url() -> String {
        std::env::var("STOMPGATE_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
    }

    fn test_broker(max_channels_per_connection: usize) -> Broker {
        let mut config = BrokerConfig::from_url(&test_url()).expect("AMQP URL");
        config.max_channels_per_connection = max_channels_per_connection;
        config.idle_connection_ttl = Duration::ZERO;
        Broker::new(config, GatewayMetrics::default())
    }

    async fn guest_session(broker: &Broker) -> SessionChannel {
        broker
            .open_session("guest", "guest", "/")
            .await
            .expect("logged in")
    }

    /// With an idle TTL of zero, one reaper tick closes every connection of a key that has no
    /// session left.
    async fn assert_all_reaped(broker: &Broker, slot: &PoolSlot) {
        broker.reap_idle().await;
        assert!(
            slot.entries.lock().await.is_empty(),
            "connections of a key without sessions outlived the idle TTL"
        );
    }

    fn only_slot(broker: &Broker) -> PoolSlot {
        broker
            .inner
            .pool
            .lock()
            .expect("pool")
            .values()
            .next()
            .cloned()
            .expect("the key's slot")
    }

    /// Sessions log in on the key's connection without a place on it: 20 sessions with 8
    /// places a connection need one connection, not three. The key keeps its password while
    /// it has sessions (a first channel may need a new connection) and forgets it with the
    /// last one; its login connection stays while it has sessions and goes after the idle
    /// TTL once it has none. Needs RabbitMQ (`STOMPGATE_TEST_AMQP_URL`, default
    /// 127.0.0.1:5672 guest/guest).
    #[tokio::test]
    async fn sessions_take_no_place_until_they_need_a_channel() {
        let broker = test_broker(8);
        let mut sessions = Vec::new();
        for _ in 0..20 {
            sessions.push(guest_session(&broker).await);
        }
        let slot = only_slot(&broker);
        assert_eq!(slot.entries.lock().await.len(), 1, "one login connection");
        assert_eq!(slot.sessions(), 20);
        assert!(slot.password().is_some(), "kept while the key has sessions");
        assert!(sessions.iter().all(|s| s.place.is_none()), "no place taken");
        broker.reap_idle().await;
        assert_eq!(
            slot.entries.lock().await.len(),
            1,
            "the login connection of a key with sessions was closed"
        );
        drop(sessions);
        assert_eq!(slot.sessions(), 0);
        assert!(
            slot.password().is_none(),
            "the password outlived the key's sessions"
        );
        assert_all_reaped(&broker, &slot).await;
    }

    /// A connection opened ahead of need is its key's headroom: the idle reaper keeps it
    /// while the key has sessions (closing it would only have the next session open it again,
    /// a connection opened and closed every TTL) and closes it with the rest once the key has
    /// none. Needs RabbitMQ.
    #[tokio::test]
    async fn a_connection_opened_ahead_stays_while_its_key_has_sessions() {
        let broker = test_broker(8);
        let mut sessions = Vec::new();
        for _ in 0..6 {
            let mut session = guest_session(&broker).await;
            session.place = Some(
                broker
                    .place(&session.key, &session.slot)
                    .await
                    .expect("a place for the session"),
            );
            sessions.push(session);
        }
        let slot = only_slot(&broker);
        let started = Instant::now();
        while slot.entries.lock().await.len() < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no connection was opened ahead of need"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broker.reap_idle().await;
        assert_eq!(
            slot.entries.lock().await.len(),
            2,
            "the headroom was closed"
        );
        drop(sessions);
        assert_all_reaped(&broker, &slot).await;
    }

    /// lapin cancels a consumer whose last handle drops while it is active, from a task of its
    /// own that checks the channel before it sends: a close of ours in between put that
    /// `basic.cancel` on the wire after `channel.close`, and RabbitMQ ended the whole pooled
    /// connection (`CHANNEL_ERROR - expected 'channel.open'`, seen once under a loaded test
    /// run: a shared queue's hub dropped its consumer, then its channel). The session keeps a
    /// handle of each consumer until its channel is closed, so dropping the caller's handle
    /// sends nothing: the queue keeps its consumer until the channel closes, then RabbitMQ
    /// deletes it (auto-delete), and the connection is never torn down. Needs RabbitMQ.
    #[tokio::test]
    async fn a_dropped_consumer_is_not_cancelled_behind_its_channels_close() {
        use crate::gateway::rabbit::plan::AckMode;
        let broker = test_broker(8);
        let amqp = Connection::connect(&test_url(), ConnectionProperties::default())
            .await
            .expect("test connection");
        let probe = amqp.create_channel().await.expect("probe channel");
        let consumers_of = |queue: String| {
            let probe = probe.clone();
            async move {
                probe
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(|q| q.consumer_count())
            }
        };
        let queue = format!(
            "stompgate-test-held-{}",
            crate::gateway::rabbit::ids::random_token()
        );
        let plan = SubscribePlan {
            consumer_tag: "T_held".to_string(),
            description: "id='held'".to_string(),
            queue: queue.clone(),
            declare: Some(QueueDeclare {
                queue: queue.clone(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: true,
                arguments: FieldTable::default(),
                nowait: false,
                once_per_session: false,
            }),
            binding: None,
            check_exchange: false,
            delete_queue_on_failure: false,
            ack: AckMode::Auto,
            prefetch_count: None,
            consumer_arguments: FieldTable::default(),
            durable_subscription: false,
            named_by_client: false,
        };
        let mut session = guest_session(&broker).await;
        let consumer = session.subscribe(&plan).await.expect("consuming");
        drop(consumer);
        // lapin sends a cancel for a dropped handle within milliseconds; watched for a second
        // (a passive declare counts the queue's consumers).
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Gone (auto-deleted with its last consumer) counts as none.
            assert_eq!(
                consumers_of(queue.clone()).await.unwrap_or(0),
                1,
                "dropping the caller's handle cancelled the consumer"
            );
        }
        let pooled = session.place.as_ref().expect("placed").pooled.clone();
        drop(session);
        let started = Instant::now();
        // The channel's close cancels the consumer and RabbitMQ deletes the auto-delete queue
        // (a passive declare of a missing queue fails).
        while consumers_of(queue.clone()).await.is_ok() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the session's channel was never closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(pooled.usable(), "the pooled connection was torn down");
    }

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
