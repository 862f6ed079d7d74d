//! RabbitMQ topology: declares the spec's exchanges and bindings with lapin, keeps the ownership
//! ledger (`status.topology`), and removes only what it created.
//!
//! Every operation runs on its own short-lived channel: a 404 or 406 closes the channel it
//! happened on, and one failure must not hide the next object's result. Channels come from a
//! [`SharedConnection`] and are closed with [`close_channel`] (see `crate::amqp`): a channel
//! id is never reused (so one object's broker error can never be reported on another's), and
//! the connection is replaced when its ids run out.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions,
    QueueBindOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Mutex, mpsc};

use crate::amqp::{OpenError, SharedConnection, close_channel};

use crate::crd::{
    BindingSpec, BindingStatus, DeletionPolicy, DestinationType, ExchangeSpec, ExchangeStatus,
    OnConflict, TopologySpec, TopologyStatus,
};

/// Time allowed for one connect or one broker operation.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Ledger states.
pub mod state {
    /// Declared (or verified equivalent) by us.
    pub const DECLARED: &str = "Declared";
    /// Existing exchange used as it is (onConflict: Adopt).
    pub const ADOPTED: &str = "Adopted";
    /// Exists with other properties.
    pub const CONFLICT: &str = "Conflict";
    /// Could not be applied yet (e.g. the destination queue does not exist).
    pub const PENDING: &str = "Pending";
}

/// Broker failures, credential-free.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TopologyError {
    /// TCP/TLS/AMQP handshake failed or timed out.
    #[error("cannot connect to {broker}: {message}")]
    Unreachable {
        /// Broker URL without credentials.
        broker: String,
        /// Cause.
        message: String,
    },
    /// The broker refused the credentials.
    #[error("{broker} refused the credentials: {message}")]
    AuthFailed {
        /// Broker URL without credentials.
        broker: String,
        /// The broker's reply.
        message: String,
    },
    /// The broker refused an operation (e.g. ACCESS_REFUSED on a vhost).
    #[error("{op} failed: {message}")]
    Refused {
        /// What we tried.
        op: String,
        /// The broker's reply text.
        message: String,
    },
    /// The connection broke in the middle of the work.
    #[error("connection lost during {op}: {message}")]
    Lost {
        /// What we tried.
        op: String,
        /// Cause.
        message: String,
    },
}

/// A broker URL with its credentials; `Display` never shows the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BrokerTarget {
    /// Full URI given to lapin.
    uri: String,
    /// The same without user info, for messages.
    display: String,
    /// PEM CA bundle that signs the broker certificate (amqps with a private CA).
    ca_pem: Option<String>,
}

impl std::fmt::Debug for BrokerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BrokerTarget({})", self.display)
    }
}

impl std::fmt::Display for BrokerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl BrokerTarget {
    /// From a credential-free `amqp(s)://host:port/vhost` URL plus optional credentials, which
    /// override any in the URL.
    pub fn new(url: &str, username: Option<&str>, password: Option<&str>) -> Self {
        let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
        let rest = match rest.rsplit_once('@') {
            Some((userinfo, hostpart)) if !hostpart.contains('@') && username.is_none() => {
                let display = format!("{scheme}://{hostpart}");
                return Self {
                    uri: format!("{scheme}://{userinfo}@{hostpart}"),
                    display,
                    ca_pem: None,
                };
            }
            Some((_, hostpart)) => hostpart,
            None => rest,
        };
        let display = format!("{scheme}://{rest}");
        let uri = match username {
            Some(u) => format!(
                "{scheme}://{}:{}@{rest}",
                pct(u),
                pct(password.unwrap_or_default())
            ),
            None => display.clone(),
        };
        Self {
            uri,
            display,
            ca_pem: None,
        }
    }

    /// Trust this PEM CA bundle for amqps.
    pub fn with_ca(mut self, pem: String) -> Self {
        self.ca_pem = Some(pem);
        self
    }

    /// A key for pooling (never printed): the URI plus the CA, so a new CA reconnects.
    fn key(&self) -> String {
        match &self.ca_pem {
            Some(ca) => format!(
                "{}#{}",
                self.uri,
                crate::operator::resources::object_hash(ca)
            ),
            None => self.uri.clone(),
        }
    }
}

fn amqp_error(e: &lapin::Error) -> Option<&lapin::protocol::AMQPError> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => Some(a),
        _ => None,
    }
}

fn is_soft(e: &lapin::Error, kind: AMQPSoftError) -> bool {
    amqp_error(e).is_some_and(|a| a.kind() == &AMQPErrorKind::Soft(kind))
}

/// The broker's reply text (e.g. `PRECONDITION_FAILED - inequivalent arg ...`), or the error.
pub fn reply_text(e: &lapin::Error) -> String {
    match amqp_error(e) {
        Some(a) => a.get_message().to_string(),
        None => e.to_string(),
    }
}

fn op_error(op: &str, e: &lapin::Error) -> TopologyError {
    match amqp_error(e) {
        Some(_) => TopologyError::Refused {
            op: op.to_string(),
            message: reply_text(e),
        },
        None => TopologyError::Lost {
            op: op.to_string(),
            message: e.to_string(),
        },
    }
}

/// A connection to a broker, replaced by a fresh one when its channel ids run out.
pub struct Broker {
    conn: std::sync::Mutex<Arc<SharedConnection>>,
    /// Held while a replacement connection is being opened (one at a time).
    replacing: Mutex<()>,
    target: BrokerTarget,
}

impl Broker {
    /// Connects with a timeout; ACCESS_REFUSED becomes [`TopologyError::AuthFailed`].
    pub async fn connect(target: &BrokerTarget) -> Result<Self, TopologyError> {
        Ok(Self {
            conn: std::sync::Mutex::new(Arc::new(open_connection(target).await?)),
            replacing: Mutex::new(()),
            target: target.clone(),
        })
    }

    fn current(&self) -> Arc<SharedConnection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The frame_max negotiated with the broker.
    pub fn frame_max(&self) -> u32 {
        self.current().connection().configuration().frame_max()
    }

    /// Whether the connection is still usable.
    pub fn is_connected(&self) -> bool {
        self.current().connection().status().connected()
    }

    /// The broker URL without credentials.
    pub fn target(&self) -> &BrokerTarget {
        &self.target
    }

    async fn channel(&self, op: &str) -> Result<Channel, TopologyError> {
        loop {
            let conn = self.current();
            match tokio::time::timeout(OP_TIMEOUT, conn.open()).await {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(OpenError::Retired)) => self.replace(&conn).await?,
                Ok(Err(OpenError::Lapin(e))) => return Err(op_error(op, &e)),
                Err(_) => {
                    return Err(TopologyError::Lost {
                        op: op.to_string(),
                        message: "timed out opening a channel".into(),
                    });
                }
            }
        }
    }

    /// Opens a new connection in place of `used` (unless another task already did); `used`
    /// is closed once the operations still running on it have had their time.
    async fn replace(&self, used: &Arc<SharedConnection>) -> Result<(), TopologyError> {
        let _one_at_a_time = self.replacing.lock().await;
        if !Arc::ptr_eq(&self.current(), used) {
            return Ok(());
        }
        let fresh = Arc::new(open_connection(&self.target).await?);
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        tracing::debug!(broker = %self.target, "AMQP connection used all its channel ids; replaced");
        let old = used.clone();
        tokio::spawn(async move {
            tokio::time::sleep(OP_TIMEOUT * 2).await;
            let _ = old
                .connection()
                .close(200, "channel ids used up".into())
                .await;
        });
        Ok(())
    }

    /// Runs one operation on a fresh channel; the inner result is the broker's answer.
    async fn on_channel<F, Fut>(
        &self,
        op: &str,
        f: F,
    ) -> Result<Result<(), lapin::Error>, TopologyError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<(), lapin::Error>>,
    {
        let ch = self.channel(op).await?;
        let closer = ch.clone();
        let res = match tokio::time::timeout(OP_TIMEOUT, f(ch)).await {
            Ok(r) => r,
            Err(_) => {
                // Still closed behind the barrier, whenever the broker answers.
                tokio::spawn(async move { close_channel(&closer, "timed out").await });
                return Err(TopologyError::Lost {
                    op: op.to_string(),
                    message: "timed out".into(),
                });
            }
        };
        // A channel error closed the channel already; close_channel sends nothing then.
        close_channel(&closer, "ok").await;
        if let Err(e) = &res
            && amqp_error(e).is_none()
        {
            return Err(op_error(op, e));
        }
        Ok(res)
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = self.current().connection().close(200, "bye".into()).await;
    }
}

/// AMQP frame_max the operator asks for: its frames are declares and deletes.
pub const OPERATOR_FRAME_MAX: u32 = 8 * 1024;

/// Connects with a timeout; ACCESS_REFUSED becomes [`TopologyError::AuthFailed`].
async fn open_connection(target: &BrokerTarget) -> Result<SharedConnection, TopologyError> {
    let props = ConnectionProperties::default().with_connection_name("stompgate-operator".into());
    let broker = target.display.clone();
    let mut uri = lapin::uri::AMQPUri::from_str(&target.uri).map_err(|message| {
        TopologyError::Unreachable {
            broker: broker.clone(),
            message,
        }
    })?;
    // lapin sizes each connection's read and write buffers at 32 frames: at RabbitMQ's
    // default frame_max (128 KiB) 8 MiB per connection, for declares of a few hundred bytes.
    // `?frame_max=N` in the URL overrides.
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(OPERATOR_FRAME_MAX);
    }
    let connect = async {
        let tls = match &target.ca_pem {
            None => lapin::tcp::OwnedTLSConfig::default(),
            Some(pem) => lapin::tcp::OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem.clone()),
            },
        };
        let rt = lapin::runtime::default_runtime()?;
        Connection::connect_uri_with_config(uri, props, tls, rt).await
    };
    match tokio::time::timeout(OP_TIMEOUT, connect).await {
        Err(_) => Err(TopologyError::Unreachable {
            broker,
            message: format!("no answer within {}s", OP_TIMEOUT.as_secs()),
        }),
        Ok(Err(e)) => {
            let text = reply_text(&e);
            let auth = is_soft(&e, AMQPSoftError::ACCESSREFUSED)
                || text.contains("ACCESS_REFUSED")
                || text.contains("ACCESS-REFUSED");
            if auth {
                Err(TopologyError::AuthFailed {
                    broker,
                    message: text,
                })
            } else {
                Err(TopologyError::Unreachable {
                    broker,
                    message: text,
                })
            }
        }
        Ok(Ok(conn)) => Ok(SharedConnection::new(conn)),
    }
}

fn kind(t: &str) -> ExchangeKind {
    match t {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

/// AMQP arguments from the spec's int-or-string map.
pub fn field_table(args: &BTreeMap<String, IntOrString>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let v = match v {
            IntOrString::Int(i) => AMQPValue::LongLongInt(i64::from(*i)),
            IntOrString::String(s) => {
                AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
            }
        };
        t.insert(ShortString::from(k.as_str()), v);
    }
    t
}

/// `result` label values of broker operations: what RabbitMQ answered.
pub mod result {
    /// Done as asked.
    pub const OK: &str = "ok";
    /// The object does not exist (an answer, not a failure: a check that found nothing).
    pub const NOT_FOUND: &str = "not_found";
    /// The exchange exists with other properties.
    pub const CONFLICT: &str = "conflict";
    /// Refused for another reason (ACCESS_REFUSED, ...), or the connection failed: the
    /// operation did not happen.
    pub const ERROR: &str = "error";
}

/// A broker operation and what came of it, for metrics: (op, [`result`]).
pub type Op = (&'static str, &'static str);

/// Whether each exchange exists, as found by this pass's passive checks.
pub type Checked = BTreeMap<String, bool>;

/// The result of one topology pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The new ledger.
    pub status: TopologyStatus,
    /// Broker reply texts of exchanges that exist with other properties.
    pub conflicts: Vec<String>,
    /// Exchanges we had declared that were gone and are declared again (drift repaired).
    pub recreated: Vec<String>,
    /// Bindings that could not be applied yet, with the broker's reply.
    pub pending: Vec<String>,
    /// Operations done, for metrics.
    pub ops: Vec<Op>,
}

/// What [`Broker::cleanup`] removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Removed {
    /// Names of the bindings and exchanges removed.
    pub names: Vec<String>,
    /// Operations done, for metrics.
    pub ops: Vec<Op>,
}

impl Outcome {
    /// Everything is declared.
    pub fn ready(&self) -> bool {
        self.conflicts.is_empty() && self.pending.is_empty()
    }
}

fn same_binding(s: &BindingSpec, st: &BindingStatus) -> bool {
    s.source == st.source
        && s.destination == st.destination
        && s.destination_type == st.destination_type
        && s.routing_key == st.routing_key
        && s.arguments == st.arguments
}

impl Broker {
    async fn declare_exchange(
        &self,
        e: &ExchangeSpec,
        passive: bool,
    ) -> Result<Result<(), lapin::Error>, TopologyError> {
        let name = e.name.clone();
        let k = kind(&e.type_);
        let opts = ExchangeDeclareOptions {
            passive,
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: e.internal,
            nowait: false,
        };
        let args = field_table(&e.arguments);
        self.on_channel("exchange.declare", |ch| async move {
            ch.exchange_declare(name.as_str().into(), k, opts, args)
                .await
        })
        .await
    }

    async fn bind(&self, b: &BindingSpec) -> Result<Result<(), lapin::Error>, TopologyError> {
        let (src, dst, rk) = (
            b.source.clone(),
            b.destination.clone(),
            b.routing_key.clone(),
        );
        let args = field_table(&b.arguments);
        let dt = b.destination_type;
        self.on_channel("bind", |ch| async move {
            match dt {
                DestinationType::Queue => {
                    ch.queue_bind(
                        dst.as_str().into(),
                        src.as_str().into(),
                        rk.as_str().into(),
                        QueueBindOptions::default(),
                        args,
                    )
                    .await
                }
                DestinationType::Exchange => {
                    ch.exchange_bind(
                        dst.as_str().into(),
                        src.as_str().into(),
                        rk.as_str().into(),
                        ExchangeBindOptions::default(),
                        args,
                    )
                    .await
                }
            }
        })
        .await
    }

    async fn unbind(&self, b: &BindingStatus) -> Result<Result<(), lapin::Error>, TopologyError> {
        let (src, dst, rk) = (
            b.source.clone(),
            b.destination.clone(),
            b.routing_key.clone(),
        );
        // Unbind must carry the same arguments as the bind to match it.
        let args = field_table(&b.arguments);
        let dt = b.destination_type;
        self.on_channel("unbind", |ch| async move {
            match dt {
                DestinationType::Queue => {
                    ch.queue_unbind(
                        dst.as_str().into(),
                        src.as_str().into(),
                        rk.as_str().into(),
                        args,
                    )
                    .await
                }
                DestinationType::Exchange => {
                    ch.exchange_unbind(
                        dst.as_str().into(),
                        src.as_str().into(),
                        rk.as_str().into(),
                        ExchangeUnbindOptions::default(),
                        args,
                    )
                    .await
                }
            }
        })
        .await
    }

    async fn delete_exchange(&self, name: &str) -> Result<Result<(), lapin::Error>, TopologyError> {
        let name = name.to_string();
        self.on_channel("exchange.delete", |ch| async move {
            ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await
        })
        .await
    }

    /// Brings RabbitMQ to the spec: declares exchanges (or adopts/flags conflicts), binds the
    /// desired bindings, then unbinds owned bindings that left the spec, and (with
    /// `deletionPolicy: Delete`) deletes owned exchanges that left it.
    pub async fn apply(
        &self,
        spec: &TopologySpec,
        prev: Option<&TopologyStatus>,
    ) -> Result<Outcome, TopologyError> {
        self.apply_checked(spec, prev, &Checked::new()).await
    }

    /// [`Broker::apply`], reusing what passive checks of this pass already found. An exchange
    /// the ledger holds as declared (or adopted) that still exists costs one passive check and
    /// nothing else: its properties cannot have changed (they are immutable in the spec), so
    /// a resync only looks for drift. Missing exchanges are declared; new ones are declared
    /// actively to verify that an existing one is equivalent.
    pub async fn apply_checked(
        &self,
        spec: &TopologySpec,
        prev: Option<&TopologyStatus>,
        checked: &Checked,
    ) -> Result<Outcome, TopologyError> {
        let empty = TopologyStatus::default();
        let prev = prev.unwrap_or(&empty);
        let mut out = Outcome::default();
        for e in &spec.exchanges {
            let before = prev.exchanges.iter().find(|p| p.name == e.name);
            let was_owned = before.is_some_and(|p| p.owned);
            let exists = match checked.get(&e.name) {
                Some(exists) => *exists,
                None => self.exists(e, &mut out.ops).await?,
            };
            let settled = before
                .filter(|p| p.state == state::DECLARED || p.state == state::ADOPTED)
                .cloned();
            let entry = match (exists, settled) {
                (true, Some(entry)) => entry,
                (true, None) if spec.on_conflict == OnConflict::Adopt && !was_owned => {
                    ExchangeStatus {
                        name: e.name.clone(),
                        state: state::ADOPTED.into(),
                        owned: false,
                    }
                }
                // Exists, not known yet: an active declare verifies it is equivalent.
                (true, None) => match self.declare_exchange(e, false).await? {
                    Ok(()) => {
                        out.ops.push(("exchange.declare", result::OK));
                        ExchangeStatus {
                            name: e.name.clone(),
                            state: state::DECLARED.into(),
                            owned: was_owned,
                        }
                    }
                    Err(err) if is_soft(&err, AMQPSoftError::PRECONDITIONFAILED) => {
                        out.ops.push(("exchange.declare", result::CONFLICT));
                        out.conflicts.push(reply_text(&err));
                        ExchangeStatus {
                            name: e.name.clone(),
                            state: state::CONFLICT.into(),
                            owned: false,
                        }
                    }
                    Err(err) => return Err(op_error("exchange.declare", &err)),
                },
                (false, _) => match self.declare_exchange(e, false).await? {
                    Ok(()) => {
                        out.ops.push(("exchange.declare", result::OK));
                        // A write-ahead entry (Pending) was never declared: not a drift.
                        if before.is_some_and(|p| {
                            p.state != state::PENDING && (p.owned || p.state == state::ADOPTED)
                        }) {
                            out.recreated.push(e.name.clone());
                        }
                        ExchangeStatus {
                            name: e.name.clone(),
                            state: state::DECLARED.into(),
                            owned: true,
                        }
                    }
                    Err(err) => return Err(op_error("exchange.declare", &err)),
                },
            };
            out.status.exchanges.push(entry);
        }
        let conflicted: Vec<&str> = out
            .status
            .exchanges
            .iter()
            .filter(|e| e.state == state::CONFLICT)
            .map(|e| e.name.as_str())
            .collect();
        let mut new_bindings = Vec::new();
        for b in &spec.bindings {
            let mut st = BindingStatus {
                source: b.source.clone(),
                destination: b.destination.clone(),
                destination_type: b.destination_type,
                routing_key: b.routing_key.clone(),
                arguments: b.arguments.clone(),
                state: state::PENDING.into(),
                owned: true,
            };
            if conflicted.contains(&b.source.as_str())
                || conflicted.contains(&b.destination.as_str())
            {
                new_bindings.push(st);
                continue;
            }
            match self.bind(b).await? {
                Ok(()) => {
                    out.ops.push(("bind", result::OK));
                    st.state = state::DECLARED.into();
                }
                Err(err) => {
                    let answer = if is_soft(&err, AMQPSoftError::NOTFOUND) {
                        result::NOT_FOUND
                    } else {
                        result::ERROR
                    };
                    out.ops.push(("bind", answer));
                    out.pending.push(reply_text(&err));
                }
            }
            new_bindings.push(st);
        }
        // Bind new before unbinding old, so a changed binding never drops messages.
        for old in &prev.bindings {
            if !old.owned || spec.bindings.iter().any(|b| same_binding(b, old)) {
                continue;
            }
            match self.unbind(old).await? {
                Ok(()) => out.ops.push(("unbind", result::OK)),
                Err(err) if is_soft(&err, AMQPSoftError::NOTFOUND) => {
                    out.ops.push(("unbind", result::NOT_FOUND))
                }
                Err(err) => return Err(op_error("unbind", &err)),
            }
        }
        for old in &prev.exchanges {
            if spec.exchanges.iter().any(|e| e.name == old.name) {
                continue;
            }
            if old.owned && spec.deletion_policy == DeletionPolicy::Delete {
                match self.delete_exchange(&old.name).await? {
                    Ok(()) => out.ops.push(("exchange.delete", result::OK)),
                    Err(err) if is_soft(&err, AMQPSoftError::NOTFOUND) => {
                        out.ops.push(("exchange.delete", result::NOT_FOUND))
                    }
                    Err(err) => return Err(op_error("exchange.delete", &err)),
                }
            }
        }
        out.status.bindings = new_bindings;
        Ok(out)
    }

    /// Removes what the ledger says we created: owned bindings, then owned exchanges. Adopted
    /// and found objects are never touched.
    pub async fn cleanup(&self, ledger: &TopologyStatus) -> Result<Removed, TopologyError> {
        let mut removed = Removed::default();
        for b in ledger
            .bindings
            .iter()
            .filter(|b| b.owned && b.state == state::DECLARED)
        {
            match self.unbind(b).await? {
                Ok(()) => {
                    removed.ops.push(("unbind", result::OK));
                    removed.names.push(format!(
                        "binding {} -> {} ({})",
                        b.source, b.destination, b.routing_key
                    ));
                }
                Err(err) if is_soft(&err, AMQPSoftError::NOTFOUND) => {
                    removed.ops.push(("unbind", result::NOT_FOUND));
                }
                Err(err) => return Err(op_error("unbind", &err)),
            }
        }
        for e in ledger.exchanges.iter().filter(|e| e.owned) {
            match self.delete_exchange(&e.name).await? {
                Ok(()) => {
                    removed.ops.push(("exchange.delete", result::OK));
                    removed.names.push(format!("exchange {}", e.name));
                }
                Err(err) if is_soft(&err, AMQPSoftError::NOTFOUND) => {
                    removed.ops.push(("exchange.delete", result::NOT_FOUND));
                }
                Err(err) => return Err(op_error("exchange.delete", &err)),
            }
        }
        Ok(removed)
    }

    /// Whether an exchange exists (a passive declare), counted in `ops`.
    async fn exists(&self, e: &ExchangeSpec, ops: &mut Vec<Op>) -> Result<bool, TopologyError> {
        match self.declare_exchange(e, true).await? {
            Ok(()) => {
                ops.push(("exchange.check", result::OK));
                Ok(true)
            }
            Err(err) if is_soft(&err, AMQPSoftError::NOTFOUND) => {
                ops.push(("exchange.check", result::NOT_FOUND));
                Ok(false)
            }
            Err(err) => Err(op_error("exchange.check", &err)),
        }
    }

    /// Passive checks of these exchanges: whether each exists, and the operations done.
    pub async fn check(
        &self,
        exchanges: &[&ExchangeSpec],
    ) -> Result<(Checked, Vec<Op>), TopologyError> {
        let mut checked = Checked::new();
        let mut ops = Vec::new();
        for e in exchanges {
            checked.insert(e.name.clone(), self.exists(e, &mut ops).await?);
        }
        Ok((checked, ops))
    }
}

/// Exchanges of the spec the ledger has no entry for: the ones a reconcile may create.
pub fn unrecorded_exchanges<'a>(
    spec: &'a TopologySpec,
    ledger: Option<&TopologyStatus>,
) -> Vec<&'a ExchangeSpec> {
    spec.exchanges
        .iter()
        .filter(|e| ledger.is_none_or(|l| !l.exchanges.iter().any(|x| x.name == e.name)))
        .collect()
}

/// The ledger with `missing` recorded as owned and `Pending`. It is written to the status
/// before those exchanges are declared, so an operator killed between declaring an exchange
/// and recording it cannot forget that it created it (and leak it under `deletionPolicy:
/// Delete`).
pub fn with_intent(ledger: Option<&TopologyStatus>, missing: &[String]) -> TopologyStatus {
    let mut l = ledger.cloned().unwrap_or_default();
    for m in missing {
        if !l.exchanges.iter().any(|x| &x.name == m) {
            l.exchanges.push(ExchangeStatus {
                name: m.clone(),
                state: state::PENDING.into(),
                owned: true,
            });
        }
    }
    l
}

/// Whether a ledger holds anything `deletionPolicy: Delete` would remove.
pub fn has_owned(ledger: Option<&TopologyStatus>) -> bool {
    ledger
        .is_some_and(|l| l.exchanges.iter().any(|e| e.owned) || l.bindings.iter().any(|b| b.owned))
}

struct PoolEntry {
    broker: Option<Arc<Broker>>,
    // Set when a connect failed or a pooled connection was found dead.
    down: bool,
    // The last failed connect and when it ended: tasks that waited for it share its answer.
    failed: Option<(Instant, TopologyError)>,
}

/// Long-lived connections, one per broker and user. When a broker that was down (or whose
/// connection died) is reachable again, every StompGateway is re-reconciled so drift that
/// happened meanwhile (e.g. a broker reset) is repaired at once.
pub struct BrokerPool {
    entries: Mutex<HashMap<String, (BrokerTarget, PoolEntry)>>,
    // One connect at a time per broker and user: a burst of reconciles (a restart, a thousand
    // objects applied at once) shares one connection instead of opening one each.
    connecting: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    reconnected: mpsc::UnboundedSender<()>,
}

impl BrokerPool {
    /// A pool and the stream of "a broker came back" signals.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                entries: Mutex::new(HashMap::new()),
                connecting: Mutex::new(HashMap::new()),
                reconnected: tx,
            }),
            rx,
        )
    }

    /// A live connection to `target`, connecting if needed.
    pub async fn get(&self, target: &BrokerTarget) -> Result<Arc<Broker>, TopologyError> {
        let key = target.key();
        if let Some(b) = self.live(&key).await {
            return Ok(b);
        }
        let gate = self
            .connecting
            .lock()
            .await
            .entry(key.clone())
            .or_default()
            .clone();
        let waited_since = Instant::now();
        let _one_at_a_time = gate.lock().await;
        // Another task may have connected, or failed to, while this one waited.
        if let Some(b) = self.live(&key).await {
            return Ok(b);
        }
        if let Some((_, entry)) = self.entries.lock().await.get(&key)
            && let Some((at, e)) = &entry.failed
            && *at >= waited_since
        {
            return Err(e.clone());
        }
        let res = Broker::connect(target).await;
        let mut map = self.entries.lock().await;
        let (_, entry) = map.entry(key).or_insert_with(|| {
            (
                target.clone(),
                PoolEntry {
                    broker: None,
                    down: false,
                    failed: None,
                },
            )
        });
        match res {
            Ok(b) => {
                let b = Arc::new(b);
                if entry.down {
                    let _ = self.reconnected.send(());
                }
                entry.broker = Some(b.clone());
                entry.down = false;
                entry.failed = None;
                Ok(b)
            }
            Err(e) => {
                // Auth failures are not "down": retrying them is the controller's backoff.
                if matches!(e, TopologyError::Unreachable { .. }) {
                    entry.down = true;
                }
                entry.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// The pooled connection under `key` if it is still connected; a dead one is forgotten
    /// (and the broker marked down).
    async fn live(&self, key: &str) -> Option<Arc<Broker>> {
        let mut map = self.entries.lock().await;
        let (_, e) = map.get_mut(key)?;
        match &e.broker {
            Some(b) if b.is_connected() => Some(b.clone()),
            Some(_) => {
                e.broker = None;
                e.down = true;
                None
            }
            None => None,
        }
    }

    /// Forgets a connection that just failed mid-operation, so the next `get` reconnects and
    /// counts as a reconnect.
    pub async fn mark_down(&self, target: &BrokerTarget) {
        if let Some((_, e)) = self.entries.lock().await.get_mut(&target.key()) {
            e.broker = None;
            e.down = true;
        }
    }

    /// Probes brokers that are down (or whose connection died) every `every`; a success
    /// signals a reconnect.
    pub fn spawn_monitor(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let targets: Vec<BrokerTarget> = {
                    let map = pool.entries.lock().await;
                    map.values()
                        .filter(|(_, e)| {
                            e.down || e.broker.as_ref().is_some_and(|b| !b.is_connected())
                        })
                        .map(|(t, _)| t.clone())
                        .collect()
                };
                for t in targets {
                    if let Some((_, e)) = pool.entries.lock().await.get_mut(&t.key()) {
                        e.down = true;
                    }
                    let _ = pool.get(&t).await;
                }
            }
        })
    }
}
