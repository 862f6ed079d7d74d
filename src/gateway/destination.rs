//! STOMP destination grammar and its AMQP 0-9-1 meaning, as RabbitMQ's STOMP plugin defines them.
//!
//! Source of truth: the RabbitMQ 3.10.8 plugin (`rabbit_routing_util:parse_endpoint/1`,
//! `rabbit_stomp_processor:with_destination/4`, `do_subscribe/4`, `do_send/4`,
//! `rabbit_stomp_util:{consumer_tag/1, subscription_queue_name/3, format_destination/2,
//! create_message_id/3, parse_message_id/1}`); the error texts below were produced by those very
//! functions. Everything here is pure: the session turns the plans into AMQP methods.
//!
//! Deviations from RabbitMQ 3.10.8 (each one marked `Deviation:` where it is implemented):
//! * `%XX` unescaping: RabbitMQ only turns `%2F` back into `/`, while `format_destination` also
//!   escapes `%`, bytes < 32 and bytes > 127. We additionally decode `%25` and `%XX` for those
//!   bytes (uppercase hex, as RabbitMQ emits), so a MESSAGE `destination` can be used to reply.
//!   Only names containing such a literal sequence (e.g. `a%25b`) resolve differently.
//! * Where RabbitMQ crashes with `Processing error` (bad `ack`, bad integers, an `id` starting with
//!   `/temp-queue/` on SUBSCRIBE, `durable:True` without `id`), we answer a descriptive error.
//! * Transient (non-durable, no `x-queue-name`) exchange/topic subscription queues are exclusive,
//!   as later releases made them (rabbitmq-server #6955, #13016); 3.10.8 declared them
//!   non-exclusive.
//! * Quorum/stream queues are forced durable and non-exclusive, as later releases do.
//! * Extra consumer argument `x-priority` (RabbitMQ's STOMP plugin has none).

use std::fmt;

use base64::Engine;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use md5::{Digest, Md5};

use super::properties::{self, PropertiesError, QueueFlags};
use crate::stomp::{Headers, Version};

/// Exchange `/topic/` destinations publish to and bind on (`stomp.default_topic_exchange`).
pub const DEFAULT_TOPIC_EXCHANGE: &str = "amq.topic";

/// The list in RabbitMQ's `Unknown destination` body (`all_dest_prefixes/0`, whose reply-queue
/// prefix really has the trailing slash).
pub const VALID_DESTINATION_TYPES: &str =
    "/temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/";

/// `reply-to` values starting with one of these are kept on MESSAGE; others get
/// [`REPLY_QUEUE_PREFIX`] prepended (`rabbit_routing_util:dest_prefixes/0`).
pub const REPLY_TO_KNOWN_PREFIXES: [&str; 5] = [
    "/exchange",
    "/topic",
    "/queue",
    "/amq/queue",
    "/reply-queue/",
];

/// Prefix RabbitMQ prepends to a bare `reply-to` on MESSAGE.
pub const REPLY_QUEUE_PREFIX: &str = "/reply-queue/";

/// Subscription ids may not start with this (it names temp-queue reply consumers).
pub const TEMP_QUEUE_ID_PREFIX: &str = "/temp-queue/";

/// Prefix of consumer tags for subscriptions with an `id` header.
pub const INTERNAL_TAG_PREFIX: &str = "T_";
/// Prefix of consumer tags for subscriptions without `id` (keyed by the raw destination).
pub const QUEUE_TAG_PREFIX: &str = "Q_";
/// Separator of the parts of a message id.
pub const MESSAGE_ID_SEPARATOR: &str = "@@";
/// Prefix of subscription queue names RabbitMQ generates.
pub const SUBSCRIPTION_QUEUE_PREFIX: &str = "stomp-subscription";

/// Anything that becomes a STOMP ERROR frame: `message` header and body.
pub trait ErrorFrame {
    /// The ERROR frame `message` header, e.g. `Invalid destination`.
    fn summary(&self) -> &'static str;
    /// The ERROR frame body, byte-identical to RabbitMQ's (trailing `\n` where it has one).
    fn detail(&self) -> String;
}

/// A parsed STOMP destination. Names are unescaped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// `/exchange/<x>[/<pattern>]`; `/exchange/x/` has pattern `Some("")`.
    Exchange {
        exchange: String,
        pattern: Option<String>,
    },
    /// `/queue/<q>` or a bare `<q>`.
    Queue(String),
    /// `/amq/queue/<q>`: an existing queue, never declared.
    AmqQueue(String),
    /// `/topic/<routing key>`.
    Topic(String),
    /// `/temp-queue/<id>`: only valid in `reply-to`.
    TempQueue(String),
    /// `/reply-queue/<q>`: the rest of the string, `/` included.
    ReplyQueue(String),
}

/// Where a SEND publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub exchange: String,
    pub routing_key: String,
}

/// Destination errors, reported as soft ERROR frames by RabbitMQ.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// No `destination` header.
    #[error("{command} must include a 'destination' header")]
    Missing { command: String },
    /// A destination with no known prefix.
    #[error("'{destination}' is not a valid destination")]
    Unknown { destination: String },
    /// A known prefix with a bad name part; `kind` is RabbitMQ's atom (`queue`, `topic`,
    /// `exchange`, `amqqueue`, `temp_queue`, `reply_queue`), `content` the raw rest.
    #[error("'{content}' is not a valid {kind} destination")]
    Invalid { kind: &'static str, content: String },
    /// An empty destination header.
    #[error("Destination cannot be blank")]
    Blank,
    /// A valid destination that this command cannot use (`/temp-queue/` on SEND or SUBSCRIBE).
    #[error("'{destination}' is not a valid destination for '{command}'")]
    NotAllowed {
        destination: String,
        command: String,
    },
}

impl ErrorFrame for DestinationError {
    fn summary(&self) -> &'static str {
        match self {
            DestinationError::Missing { .. } => "Missing destination",
            DestinationError::Unknown { .. } => "Unknown destination",
            _ => "Invalid destination",
        }
    }

    fn detail(&self) -> String {
        match self {
            DestinationError::Missing { command } => {
                format!("{} must include a 'destination' header\n", erl_p(command))
            }
            DestinationError::Unknown { destination } => format!(
                "'{destination}' is not a valid destination.\n\
                 Valid destination types are: {VALID_DESTINATION_TYPES}.\n"
            ),
            DestinationError::Invalid { kind, content } => {
                format!("'{content}' is not a valid {kind} destination\n")
            }
            DestinationError::Blank => "Destination cannot be blank".to_string(),
            DestinationError::NotAllowed {
                destination,
                command,
            } => format!("'{destination}' is not a valid destination for '{command}'\n"),
        }
    }
}

impl DestinationError {
    pub fn summary(&self) -> &'static str {
        ErrorFrame::summary(self)
    }
    pub fn detail(&self) -> String {
        ErrorFrame::detail(self)
    }
}

/// Parses a destination header value (`rabbit_routing_util:parse_endpoint/1`).
///
/// Splitting is on every `/`, so only `/reply-queue/` names may contain a raw `/`; other names
/// must spell it `%2F`. A bare name without `/` is a queue. The empty string is
/// [`DestinationError::Blank`] (RabbitMQ parses it as `{queue, ""}` and rejects it on use).
/// A name or routing key over [`MAX_AMQP_NAME`] bytes (unescaped) is invalid.
pub fn parse(s: &str) -> Result<Destination, DestinationError> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [""] => Err(DestinationError::Blank),
        [name] => Ok(Destination::Queue(amqp_name(
            unescape(name),
            "queue",
            &parts,
        )?)),
        ["", "exchange", rest @ ..] => parse_exchange(rest),
        ["", "queue", rest @ ..] => parse_simple(Kind::Queue, rest),
        ["", "topic", rest @ ..] => parse_simple(Kind::Topic, rest),
        ["", "temp-queue", rest @ ..] => parse_simple(Kind::TempQueue, rest),
        ["", "amq", "queue", rest @ ..] => parse_simple(Kind::AmqQueue, rest),
        ["", "reply-queue", _, ..] => {
            // Reply queue names may contain slashes: take the whole rest.
            parse_simple(Kind::ReplyQueue, &[&s["/reply-queue/".len()..]])
        }
        _ => Err(DestinationError::Unknown {
            destination: s.to_string(),
        }),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Queue,
    Topic,
    TempQueue,
    AmqQueue,
    ReplyQueue,
}

impl Kind {
    fn atom(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Topic => "topic",
            Kind::TempQueue => "temp_queue",
            Kind::AmqQueue => "amqqueue",
            Kind::ReplyQueue => "reply_queue",
        }
    }
}

fn to_url(parts: &[&str]) -> String {
    if parts.is_empty() {
        String::new()
    } else {
        format!("/{}", parts.join("/"))
    }
}

fn parse_exchange(rest: &[&str]) -> Result<Destination, DestinationError> {
    match rest {
        // One cannot name the default exchange this way.
        ["", ..] => Err(invalid("exchange", rest)),
        [name] => Ok(Destination::Exchange {
            exchange: amqp_name(unescape(name), "exchange", rest)?,
            pattern: None,
        }),
        [name, pattern] => Ok(Destination::Exchange {
            exchange: amqp_name(unescape(name), "exchange", rest)?,
            pattern: Some(amqp_name(unescape(pattern), "exchange", rest)?),
        }),
        _ => Err(invalid("exchange", rest)),
    }
}

fn parse_simple(kind: Kind, rest: &[&str]) -> Result<Destination, DestinationError> {
    match rest {
        [name] if !name.is_empty() => {
            let name = amqp_name(unescape(name), kind.atom(), rest)?;
            Ok(match kind {
                Kind::Queue => Destination::Queue(name),
                Kind::Topic => Destination::Topic(name),
                Kind::TempQueue => Destination::TempQueue(name),
                Kind::AmqQueue => Destination::AmqQueue(name),
                Kind::ReplyQueue => Destination::ReplyQueue(name),
            })
        }
        _ => Err(invalid(kind.atom(), rest)),
    }
}

/// Longest AMQP short string: names and routing keys longer than this cannot reach the broker
/// (lapin panics building the frame; found by the `session` fuzz target).
pub const MAX_AMQP_NAME: usize = 255;

/// `name` if it fits an AMQP short string, else an invalid destination.
fn amqp_name(name: String, kind: &'static str, rest: &[&str]) -> Result<String, DestinationError> {
    if name.len() > MAX_AMQP_NAME {
        return Err(invalid(kind, rest));
    }
    Ok(name)
}

fn invalid(kind: &'static str, rest: &[&str]) -> DestinationError {
    DestinationError::Invalid {
        kind,
        content: to_url(rest),
    }
}

/// Unescapes a name part. RabbitMQ decodes only `%2F`.
///
/// Deviation: we also decode `%25` and `%XX` (uppercase hex) for bytes < 32 or > 127, i.e.
/// exactly what [`message_destination`] escapes, so escaping round-trips. If the decoded bytes
/// are not UTF-8, only `%2F` is decoded (RabbitMQ's behaviour).
pub fn unescape(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (upper_hex(bytes[i + 1]), upper_hex(bytes[i + 2]))
        {
            let v = hi << 4 | lo;
            if v == b'/' || v == b'%' || !(32..=127).contains(&v) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.replace("%2F", "/"))
}

fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RabbitMQ's `escape/1` for MESSAGE destinations: `/`, `%`, bytes < 32 and bytes > 127 become
/// `%XX` (uppercase hex, per UTF-8 byte). DEL (127) is kept.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b == b'/' || b == b'%' || !(32..=127).contains(&b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Rebuilds a MESSAGE `destination` from the delivery (`format_destination/2`): default
/// exchange → `/queue/<rk>`, `amq.topic` → `/topic/<rk>`, else `/exchange/<x>[/<rk>]`.
///
/// RabbitMQ hard-codes `amq.topic` here even when `default_topic_exchange` is changed.
pub fn message_destination(exchange: &str, routing_key: &str) -> String {
    match (exchange, routing_key) {
        ("", rk) => format!("/queue/{}", escape(rk)),
        ("amq.topic", rk) => format!("/topic/{}", escape(rk)),
        (x, "") => format!("/exchange/{}", escape(x)),
        (x, rk) => format!("/exchange/{}/{}", escape(x), escape(rk)),
    }
}

impl fmt::Display for Destination {
    /// Canonical form: `parse(&d.to_string()) == Ok(d)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Exchange {
                exchange,
                pattern: None,
            } => write!(f, "/exchange/{}", escape(exchange)),
            Destination::Exchange {
                exchange,
                pattern: Some(p),
            } => write!(f, "/exchange/{}/{}", escape(exchange), escape(p)),
            Destination::Queue(q) => write!(f, "/queue/{}", escape(q)),
            Destination::AmqQueue(q) => write!(f, "/amq/queue/{}", escape(q)),
            Destination::Topic(t) => write!(f, "/topic/{}", escape(t)),
            Destination::TempQueue(t) => write!(f, "/temp-queue/{}", escape(t)),
            // Slashes stay (the whole rest is the name); `%` is escaped because parsing
            // unescapes (found by the destination fuzz target).
            Destination::ReplyQueue(q) => write!(f, "/reply-queue/{}", q.replace('%', "%25")),
        }
    }
}

impl Destination {
    /// Exchange and routing key a SEND publishes to, with `amq.topic` for `/topic/`.
    pub fn publish_route(&self) -> Result<Route, DestinationError> {
        self.publish_route_with(DEFAULT_TOPIC_EXCHANGE)
    }

    /// [`Destination::publish_route`] with a configured default topic exchange.
    /// `/temp-queue/` is refused as RabbitMQ does (`Invalid destination`).
    pub fn publish_route_with(
        &self,
        default_topic_exchange: &str,
    ) -> Result<Route, DestinationError> {
        match self.routing(default_topic_exchange) {
            Some((exchange, routing_key)) => Ok(Route {
                exchange,
                routing_key,
            }),
            None => Err(DestinationError::NotAllowed {
                destination: self.to_string(),
                command: "SEND".to_string(),
            }),
        }
    }

    /// RabbitMQ's `parse_routing/2`: (exchange, routing key) for everything but temp queues.
    fn routing(&self, default_topic_exchange: &str) -> Option<(String, String)> {
        match self {
            Destination::Exchange { exchange, pattern } => {
                Some((exchange.clone(), pattern.clone().unwrap_or_default()))
            }
            Destination::Topic(rk) => Some((default_topic_exchange.to_string(), rk.clone())),
            Destination::Queue(q) | Destination::AmqQueue(q) | Destination::ReplyQueue(q) => {
                Some((String::new(), q.clone()))
            }
            Destination::TempQueue(_) => None,
        }
    }

    /// Whether a SEND must first declare the queue (`/queue/` only, once per session).
    pub fn send_declares_queue(&self) -> bool {
        matches!(self, Destination::Queue(_))
    }

    /// The name part hashed into durable subscription queue names (`parse_routing/1`'s key:
    /// the pattern or `""` for exchanges, the routing key for topics).
    fn subscription_key(&self) -> &str {
        match self {
            Destination::Exchange { pattern, .. } => pattern.as_deref().unwrap_or(""),
            Destination::Topic(rk) => rk,
            Destination::Queue(q)
            | Destination::AmqQueue(q)
            | Destination::ReplyQueue(q)
            | Destination::TempQueue(q) => q,
        }
    }
}

/// Configuration of the plans (RabbitMQ `stomp.*` settings that matter here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    /// `stomp.default_topic_exchange`.
    pub default_topic_exchange: String,
    /// How durable subscription names are hashed; see [`TermEncoding`].
    pub term_encoding: TermEncoding,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            default_topic_exchange: DEFAULT_TOPIC_EXCHANGE.to_string(),
            term_encoding: TermEncoding::Strings,
        }
    }
}

/// A `queue.declare` to issue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueDeclare {
    /// Queue name; `""` asks the broker to name it (use the name from `declare-ok`).
    pub queue: String,
    /// Always `false` in RabbitMQ's plans; kept so callers can add passive checks.
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// RabbitMQ casts `/queue/` declares with `nowait` (errors then arrive as channel close).
    pub nowait: bool,
    /// `/queue/` declares happen once per session and queue name, shared by SEND and SUBSCRIBE
    /// (RabbitMQ's `route_state`); the session keeps the set.
    pub once_per_session: bool,
}

/// A `queue.bind` to issue after the declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub exchange: String,
    pub routing_key: String,
}

/// SUBSCRIBE `ack` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

impl AckMode {
    /// Parses the `ack` header (absent = `auto`).
    pub fn parse(value: Option<&str>) -> Result<AckMode, PlanError> {
        match value {
            None | Some("auto") => Ok(AckMode::Auto),
            Some("client") => Ok(AckMode::Client),
            Some("client-individual") => Ok(AckMode::ClientIndividual),
            Some(other) => Err(PlanError::InvalidAck {
                value: other.to_string(),
            }),
        }
    }

    /// `basic.consume` `no_ack`.
    pub fn no_ack(self) -> bool {
        self == AckMode::Auto
    }

    /// Whether ACK/NACK are cumulative (`multiple = true`), as for `client`.
    pub fn multiple(self) -> bool {
        self == AckMode::Client
    }

    /// Whether MESSAGE frames carry an `ack` header (STOMP 1.2, client modes).
    pub fn message_has_ack_header(self, version: Version) -> bool {
        self != AckMode::Auto && version == Version::V1_2
    }
}

/// Everything a SUBSCRIBE does, as data.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscribePlan {
    /// `T_<id>` or `Q_<raw destination>` (also the AMQP consumer tag).
    pub consumer_tag: String,
    /// RabbitMQ's description for UNSUBSCRIBE errors: `id='x'` or `destination='d'`.
    pub description: String,
    /// Queue to consume from (for a declare, the name declared; `""` = server-named).
    pub queue: String,
    /// Declare first, if any (`/amq/queue/` and `/reply-queue/` never declare).
    pub declare: Option<QueueDeclare>,
    /// Bind the queue after consuming (exchange and topic subscriptions).
    pub binding: Option<Binding>,
    /// Whether to check the exchange exists with a passive `exchange.declare` first. Always
    /// `false`, as in RabbitMQ: SUBSCRIBE to a missing exchange fails at `queue.bind` with
    /// `NOT_FOUND - no exchange 'x' in vhost '/'` (fatal `not_found` ERROR + close).
    pub check_exchange: bool,
    /// Delete the declared queue if consume or bind fails (server-named exchange/topic queues).
    pub delete_queue_on_failure: bool,
    pub ack: AckMode,
    /// `prefetch-count`: a channel `basic.qos` before consuming, only when present.
    pub prefetch_count: Option<u16>,
    /// `basic.consume` arguments (`x-stream-offset`, `x-stream-filter`, ...).
    pub consumer_arguments: FieldTable,
    /// A durable subscription (`durable`/`persistent` true): deterministic queue name.
    pub durable_subscription: bool,
    /// Queue name came from `x-queue-name`.
    pub named_by_client: bool,
}

impl SubscribePlan {
    /// A transient subscription that could share a pod-local queue: exchange/topic binding,
    /// `ack:auto`, non-durable generated queue, no queue or consumer `x-*` arguments.
    pub fn is_transient(&self) -> bool {
        self.binding.is_some()
            && self.ack == AckMode::Auto
            && !self.durable_subscription
            && !self.named_by_client
            && self.consumer_arguments.inner().is_empty()
            && self
                .declare
                .as_ref()
                .is_some_and(|d| !d.durable && d.arguments.inner().is_empty())
    }

    /// The MESSAGE `subscription` header for this subscription (only with an `id`).
    pub fn subscription_header(&self) -> Option<&str> {
        subscription_header(&self.consumer_tag)
    }
}

/// Everything a SEND does before publishing the body, as data.
#[derive(Clone, Debug, PartialEq)]
pub struct SendPlan {
    pub route: Route,
    /// `/queue/<q>`: declare once per session ([`QueueDeclare::once_per_session`]).
    pub declare: Option<QueueDeclare>,
    pub properties: lapin::BasicProperties,
    /// `reply-to: /temp-queue/<id>`: the session must ensure the reply queue
    /// ([`temp_queue_plan`]) and replace `reply-to` with its name.
    pub reply_to_temp_queue: Option<String>,
}

/// SUBSCRIBE/SEND planning errors.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error(transparent)]
    Properties(#[from] PropertiesError),
    /// `durable:true` (or `persistent:true`) without `id`.
    #[error("Header 'id' is required for durable subscriptions")]
    MissingId,
    /// An `id` starting with `/temp-queue/`. RabbitMQ: UNSUBSCRIBE answers this error, SUBSCRIBE
    /// crashes (`Processing error`); we answer the UNSUBSCRIBE wording for both.
    #[error("{command} 'id' may not start with /temp-queue/")]
    InvalidId { command: String },
    /// UNSUBSCRIBE with neither `id` nor `destination`.
    #[error("UNSUBSCRIBE must include a 'destination' or 'id' header")]
    MissingIdOrDestination,
    /// An `ack` header other than auto/client/client-individual (RabbitMQ crashes).
    #[error("invalid ack mode '{value}'")]
    InvalidAck { value: String },
}

impl ErrorFrame for PlanError {
    fn summary(&self) -> &'static str {
        match self {
            PlanError::Destination(e) => e.summary(),
            PlanError::Properties(e) => e.summary(),
            PlanError::MissingId => "Missing Header",
            PlanError::InvalidId { .. } => "Invalid id",
            PlanError::MissingIdOrDestination => "Missing destination or id",
            PlanError::InvalidAck { .. } => "Invalid header",
        }
    }

    fn detail(&self) -> String {
        match self {
            PlanError::Destination(e) => e.detail(),
            PlanError::Properties(e) => e.detail(),
            PlanError::MissingId => "Header 'id' is required for durable subscriptions".into(),
            PlanError::InvalidId { command } => {
                format!("{command} 'id' may not start with {TEMP_QUEUE_ID_PREFIX}\n")
            }
            PlanError::MissingIdOrDestination => {
                "UNSUBSCRIBE must include a 'destination' or 'id' header".into()
            }
            PlanError::InvalidAck { value } => {
                format!("'ack' must be 'auto', 'client' or 'client-individual', not '{value}'\n")
            }
        }
    }
}

impl PlanError {
    pub fn summary(&self) -> &'static str {
        ErrorFrame::summary(self)
    }
    pub fn detail(&self) -> String {
        ErrorFrame::detail(self)
    }
}

fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "True"))
}

/// `has_durable_header/1`: `durable` or `persistent` is `true`/`True`.
pub fn has_durable_header(headers: &Headers) -> bool {
    is_true(headers.get("durable")) || is_true(headers.get("persistent"))
}

/// RabbitMQ's `validate_frame/3` for SUBSCRIBE and UNSUBSCRIBE: a durable subscription needs an
/// `id`. Runs before the destination is looked at. RabbitMQ checks only the exact value `true`
/// and crashes later on `True`; we reject both.
pub fn require_id_for_durable(headers: &Headers) -> Result<(), PlanError> {
    if has_durable_header(headers) && !headers.contains("id") {
        Err(PlanError::MissingId)
    } else {
        Ok(())
    }
}

/// Reads and parses the `destination` header (RabbitMQ's `with_destination/4`).
pub fn destination_header(
    command: &str,
    headers: &Headers,
) -> Result<Destination, DestinationError> {
    match headers.get("destination") {
        Some(d) => parse(d),
        None => Err(DestinationError::Missing {
            command: command.to_string(),
        }),
    }
}

/// Consumer tag and description of a SUBSCRIBE/UNSUBSCRIBE (`consumer_tag/1`): `T_<id>` with
/// an `id`, else `Q_<raw destination>`.
pub fn consumer_tag(command: &str, headers: &Headers) -> Result<(String, String), PlanError> {
    match headers.get("id") {
        Some(id) if id.starts_with(TEMP_QUEUE_ID_PREFIX) => Err(PlanError::InvalidId {
            command: command.to_string(),
        }),
        Some(id) => Ok((format!("{INTERNAL_TAG_PREFIX}{id}"), format!("id='{id}'"))),
        None => match headers.get("destination") {
            Some(d) => Ok((
                format!("{QUEUE_TAG_PREFIX}{d}"),
                format!("destination='{d}'"),
            )),
            None => Err(PlanError::MissingIdOrDestination),
        },
    }
}

/// The MESSAGE `subscription` header for a consumer tag (`T_<id>` → `<id>`; `Q_` tags have none).
pub fn subscription_header(consumer_tag: &str) -> Option<&str> {
    consumer_tag.strip_prefix(INTERNAL_TAG_PREFIX)
}

/// Full SUBSCRIBE pipeline in RabbitMQ's order: durable `id` check, destination, then
/// [`subscribe_plan_with`].
pub fn plan_subscribe(headers: &Headers, config: &PlanConfig) -> Result<SubscribePlan, PlanError> {
    require_id_for_durable(headers)?;
    let dest = destination_header("SUBSCRIBE", headers)?;
    subscribe_plan_with(&dest, headers.get("id"), headers, config)
}

/// What a SUBSCRIBE to `dest` does, with the default configuration.
pub fn subscribe_plan(
    dest: &Destination,
    subscription_id: Option<&str>,
    headers: &Headers,
) -> Result<SubscribePlan, PlanError> {
    subscribe_plan_with(dest, subscription_id, headers, &PlanConfig::default())
}

/// What a SUBSCRIBE to `dest` does (`do_subscribe/4` + `ensure_endpoint(source, ...)`).
///
/// Queues per kind:
/// * `/exchange/`, `/topic/`: queue `x-queue-name`, else for durable subscriptions
///   [`subscription_queue_name`] of (pattern or routing key, id), else
///   `stomp-subscription-<random>`; declared with [`QueueFlags::SUBSCRIPTION`] (or
///   [`QueueFlags::NAMED_SUBSCRIPTION`] with `x-queue-name`) and the headers; bound to the
///   exchange with the pattern (`""` without one) or to the topic exchange with the key.
/// * `/queue/<q>`: declare `<q>` ([`QueueFlags::QUEUE`]) once per session, no binding.
/// * `/amq/queue/<q>`, `/reply-queue/<q>`: consume `<q>`, nothing declared.
/// * `/temp-queue/`: `Invalid destination` (`'...' is not a valid destination for 'SUBSCRIBE'`).
pub fn subscribe_plan_with(
    dest: &Destination,
    subscription_id: Option<&str>,
    headers: &Headers,
    config: &PlanConfig,
) -> Result<SubscribePlan, PlanError> {
    let durable_subscription = has_durable_header(headers);
    if durable_subscription && subscription_id.is_none() {
        return Err(PlanError::MissingId);
    }
    let prefetch_count = match headers.get("prefetch-count") {
        Some(v) => Some(properties::parse_integer::<u16>("prefetch-count", v)?),
        None => None,
    };
    let ack = AckMode::parse(headers.get("ack"))?;

    let x_queue_name = headers.get("x-queue-name");
    let (queue, declare, binding) = match dest {
        Destination::Exchange { .. } | Destination::Topic(_) => {
            let flags = if x_queue_name.is_some() {
                QueueFlags::NAMED_SUBSCRIPTION
            } else {
                QueueFlags::SUBSCRIPTION
            };
            let props = properties::queue_properties(headers, flags)?;
            let name = match (x_queue_name, subscription_id) {
                (Some(name), _) => name.to_string(),
                (None, Some(id)) if durable_subscription => {
                    subscription_queue_name_with(dest.subscription_key(), id, config.term_encoding)
                }
                _ => random_subscription_queue_name(),
            };
            let (exchange, routing_key) = dest
                .routing(&config.default_topic_exchange)
                .expect("exchange and topic destinations route");
            (
                name.clone(),
                Some(props.into_declare(name, false)),
                Some(Binding {
                    exchange,
                    routing_key,
                }),
            )
        }
        Destination::Queue(q) => {
            let props = properties::queue_properties(headers, QueueFlags::QUEUE)?;
            (q.clone(), Some(props.into_declare(q.clone(), true)), None)
        }
        Destination::AmqQueue(q) | Destination::ReplyQueue(q) => (q.clone(), None, None),
        Destination::TempQueue(_) => {
            return Err(DestinationError::NotAllowed {
                destination: headers
                    .get("destination")
                    .map_or_else(|| dest.to_string(), str::to_string),
                command: "SUBSCRIBE".to_string(),
            }
            .into());
        }
    };

    let (consumer_tag, description) = match subscription_id {
        Some(id) => {
            if id.starts_with(TEMP_QUEUE_ID_PREFIX) {
                return Err(PlanError::InvalidId {
                    command: "SUBSCRIBE".to_string(),
                });
            }
            (format!("{INTERNAL_TAG_PREFIX}{id}"), format!("id='{id}'"))
        }
        None => {
            let raw = headers
                .get("destination")
                .map_or_else(|| dest.to_string(), str::to_string);
            (
                format!("{QUEUE_TAG_PREFIX}{raw}"),
                format!("destination='{raw}'"),
            )
        }
    };

    // Both become AMQP short strings (basic.consume, queue.declare).
    let too_long = |header: &str, len: usize| {
        PlanError::Properties(PropertiesError::TooLong {
            header: header.to_string(),
            len,
        })
    };
    if queue.len() > MAX_AMQP_NAME {
        return Err(too_long("x-queue-name", queue.len()));
    }
    if consumer_tag.len() > MAX_AMQP_NAME {
        let header = if subscription_id.is_some() {
            "id"
        } else {
            "destination"
        };
        return Err(too_long(header, consumer_tag.len()));
    }

    Ok(SubscribePlan {
        consumer_tag,
        description,
        delete_queue_on_failure: binding.is_some(),
        queue,
        declare,
        binding,
        check_exchange: false,
        ack,
        prefetch_count,
        consumer_arguments: consumer_arguments(headers)?,
        durable_subscription,
        named_by_client: x_queue_name.is_some()
            && matches!(dest, Destination::Exchange { .. } | Destination::Topic(_)),
    })
}

/// `basic.consume` arguments from SUBSCRIBE headers (`subscribe_arguments/1`):
/// * `x-stream-offset`: `first`/`last`/`next` (longstr), `offset=<n>` (long),
///   `timestamp=<s>` (timestamp); other values are ignored, as RabbitMQ does, but a bad number
///   after `offset=`/`timestamp=` is an error (RabbitMQ crashes).
/// * `x-stream-filter`: array of longstr, split on `,`.
/// * `x-stream-match-unfiltered`: bool.
/// * `x-priority` (extension): signed 32-bit int.
pub fn consumer_arguments(headers: &Headers) -> Result<FieldTable, PropertiesError> {
    let mut args = FieldTable::default();
    if let Some(v) = headers.get("x-stream-offset") {
        let value = match v {
            "first" | "last" | "next" => Some(AMQPValue::LongString(LongString::from(v))),
            _ => {
                if let Some(n) = v.strip_prefix("offset=") {
                    Some(AMQPValue::LongLongInt(properties::parse_erlang_integer(
                        "x-stream-offset",
                        v,
                        n,
                    )?))
                } else if let Some(t) = v.strip_prefix("timestamp=") {
                    Some(AMQPValue::Timestamp(properties::parse_erlang_integer(
                        "x-stream-offset",
                        v,
                        t,
                    )?))
                } else {
                    None
                }
            }
        };
        if let Some(value) = value {
            args.insert(ShortString::from("x-stream-offset"), value);
        }
    }
    if let Some(v) = headers.get("x-stream-filter") {
        let values: Vec<AMQPValue> = v
            .split(',')
            .map(|f| AMQPValue::LongString(LongString::from(f)))
            .collect();
        args.insert(
            ShortString::from("x-stream-filter"),
            AMQPValue::FieldArray(FieldArray::from(values)),
        );
    }
    if let Some(v) = headers.get("x-stream-match-unfiltered") {
        let b = properties::parse_bool("x-stream-match-unfiltered", v)?;
        args.insert(
            ShortString::from("x-stream-match-unfiltered"),
            AMQPValue::Boolean(b),
        );
    }
    if let Some(v) = headers.get("x-priority") {
        let p = properties::parse_integer::<i32>("x-priority", v)?;
        args.insert(ShortString::from("x-priority"), AMQPValue::LongInt(p));
    }
    Ok(args)
}

/// Full SEND pipeline in RabbitMQ's order: forbidden `message-id`, destination, queue declare
/// (for `/queue/`), then AMQP properties.
pub fn plan_send(headers: &Headers, config: &PlanConfig) -> Result<SendPlan, PlanError> {
    properties::check_send_headers(headers)?;
    let dest = destination_header("SEND", headers)?;
    let route = match dest.publish_route_with(&config.default_topic_exchange) {
        Ok(route) => route,
        Err(DestinationError::NotAllowed { command, .. }) => {
            return Err(DestinationError::NotAllowed {
                destination: headers.get("destination").unwrap_or_default().to_string(),
                command,
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    let declare = match &dest {
        Destination::Queue(q) => Some(
            properties::queue_properties(headers, QueueFlags::QUEUE)?.into_declare(q.clone(), true),
        ),
        _ => None,
    };
    let properties = properties::publish_properties(headers)?;
    let reply_to_temp_queue = headers.get("reply-to").and_then(reply_to_temp_queue);
    if let Some(id) = &reply_to_temp_queue {
        // The reply queue's consumer tag is an AMQP short string.
        let len = temp_queue_plan(id).consumer_tag.len();
        if len > MAX_AMQP_NAME {
            return Err(PropertiesError::TooLong {
                header: "reply-to".to_string(),
                len,
            }
            .into());
        }
    }
    Ok(SendPlan {
        route,
        declare,
        properties,
        reply_to_temp_queue,
    })
}

/// The temp-queue id of a `reply-to` value naming `/temp-queue/<id>` (`ensure_reply_to/2`).
pub fn reply_to_temp_queue(reply_to: &str) -> Option<String> {
    match parse(reply_to) {
        Ok(Destination::TempQueue(id)) => Some(id),
        _ => None,
    }
}

/// What a SEND with `reply-to: /temp-queue/<id>` sets up the first time in a session
/// (`ensure_reply_queue/2`): a server-named exclusive auto-delete queue consumed with no-ack
/// under consumer tag `T_/temp-queue/<id>` (so MESSAGE `subscription` is `/temp-queue/<id>`).
/// The published `reply-to` becomes the queue name; the subscription cannot be cancelled.
#[derive(Clone, Debug, PartialEq)]
pub struct TempQueuePlan {
    pub consumer_tag: String,
    pub declare: QueueDeclare,
    pub no_ack: bool,
}

/// See [`TempQueuePlan`].
pub fn temp_queue_plan(id: &str) -> TempQueuePlan {
    TempQueuePlan {
        consumer_tag: format!("{INTERNAL_TAG_PREFIX}{TEMP_QUEUE_ID_PREFIX}{id}"),
        declare: QueueDeclare {
            queue: String::new(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: true,
            arguments: FieldTable::default(),
            nowait: false,
            once_per_session: false,
        },
        no_ack: true,
    }
}

/// The queue an UNSUBSCRIBE deletes (`maybe_delete_durable_sub/3`): only for `/topic/`
/// subscriptions when the UNSUBSCRIBE frame itself carries `durable`/`persistent` true; the name
/// comes from the UNSUBSCRIBE's `x-queue-name` or `id`.
pub fn durable_unsubscribe_queue(
    dest: &Destination,
    headers: &Headers,
    config: &PlanConfig,
) -> Option<String> {
    match dest {
        Destination::Topic(rk) if has_durable_header(headers) => {
            if let Some(name) = headers.get("x-queue-name") {
                return Some(name.to_string());
            }
            headers
                .get("id")
                .map(|id| subscription_queue_name_with(rk, id, config.term_encoding))
        }
        _ => None,
    }
}

/// How `term_to_binary({Name, Id})` encodes the two strings before hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermEncoding {
    /// Erlang strings (byte lists): RabbitMQ 3.x (verified against 3.10.8's own output).
    Strings,
    /// Erlang binaries: releases whose STOMP frames hold binaries (RabbitMQ's main branch).
    Binaries,
}

/// Durable subscription queue name RabbitMQ 3.x derives for (routing key or pattern, id):
/// `stomp-subscription-` + base64url(md5(term_to_binary({Name, Id}, [{minor_version,1}]))).
pub fn subscription_queue_name(name: &str, subscription_id: &str) -> String {
    subscription_queue_name_with(name, subscription_id, TermEncoding::Strings)
}

/// [`subscription_queue_name`] with an explicit term encoding.
pub fn subscription_queue_name_with(
    name: &str,
    subscription_id: &str,
    encoding: TermEncoding,
) -> String {
    let mut term = vec![131u8, 104, 2]; // VERSION_MAGIC, SMALL_TUPLE_EXT, arity 2
    for part in [name, subscription_id] {
        match encoding {
            TermEncoding::Strings => erlang_string(&mut term, part.as_bytes()),
            TermEncoding::Binaries => {
                term.push(109); // BINARY_EXT
                term.extend_from_slice(&(part.len() as u32).to_be_bytes());
                term.extend_from_slice(part.as_bytes());
            }
        }
    }
    guid_string(&Md5::digest(&term))
}

/// External term format of a byte list: NIL_EXT, STRING_EXT (<= 65535 elements) or LIST_EXT of
/// SMALL_INTEGER_EXT.
fn erlang_string(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        out.push(106);
    } else if bytes.len() <= 0xFFFF {
        out.push(107);
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    } else {
        out.push(108);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        for &b in bytes {
            out.extend_from_slice(&[97, b]);
        }
        out.push(106);
    }
}

/// `rabbit_guid:string(G, "stomp-subscription")`: prefix, `-`, unpadded base64url.
fn guid_string(guid: &[u8]) -> String {
    format!(
        "{SUBSCRIPTION_QUEUE_PREFIX}-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(guid)
    )
}

/// A fresh non-durable subscription queue name (RabbitMQ hashes a random guid the same way).
pub fn random_subscription_queue_name() -> String {
    let random = uuid::Uuid::new_v4();
    guid_string(&Md5::digest(random.as_bytes()))
}

/// A fresh session id as RabbitMQ makes them (`rabbit_guid:string(gen_secure(), "session")`):
/// `session-` + 22 base64url characters.
pub fn new_session_id() -> String {
    format!(
        "session-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
    )
}

/// A message id as RabbitMQ builds it: `<consumer tag>@@<session id>@@<delivery tag>`, e.g.
/// `T_sub-0@@session-Ab12@@7` (the session id already carries its `session-` prefix).
pub fn message_id(sub_tag: &str, session_id: &str, delivery_tag: u64) -> String {
    format!("{sub_tag}{MESSAGE_ID_SEPARATOR}{session_id}{MESSAGE_ID_SEPARATOR}{delivery_tag}")
}

/// An ACK/NACK id taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckId {
    pub consumer_tag: String,
    pub session_id: String,
    pub delivery_tag: u64,
}

/// Splits a message id on `@@` into exactly three parts (`parse_message_id/1`). A non-numeric
/// delivery tag is `None` too (RabbitMQ crashes on it).
pub fn parse_message_id(id: &str) -> Option<AckId> {
    let parts: Vec<&str> = id.split(MESSAGE_ID_SEPARATOR).collect();
    let [tag, session, delivery] = parts.as_slice() else {
        return None;
    };
    let digits = delivery.strip_prefix('+').unwrap_or(delivery);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(AckId {
        consumer_tag: tag.to_string(),
        session_id: session.to_string(),
        delivery_tag: digits.parse().ok()?,
    })
}

/// Header carrying the id in ACK/NACK: `id` in 1.2, `message-id` before.
pub fn ack_header_name(version: Version) -> &'static str {
    match version {
        Version::V1_2 => "id",
        _ => "message-id",
    }
}

/// ACK/NACK errors (RabbitMQ's `ack_action/4`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("{command} must include the {header} header")]
    Missing {
        command: String,
        header: &'static str,
    },
    #[error("{command} must include a valid {header} header")]
    Invalid {
        command: String,
        header: &'static str,
    },
    /// The session found no subscription for the tag.
    #[error("Message with id {id} has no subscription")]
    SubscriptionNotFound { id: String },
}

impl ErrorFrame for AckError {
    fn summary(&self) -> &'static str {
        match self {
            AckError::Missing { .. } => "Missing header",
            AckError::Invalid { .. } => "Invalid header",
            AckError::SubscriptionNotFound { .. } => "Subscription not found",
        }
    }

    fn detail(&self) -> String {
        match self {
            AckError::Missing { command, header } => {
                format!(
                    "{} must include the {} header\n",
                    erl_p(command),
                    erl_p(header)
                )
            }
            AckError::Invalid { command, header } => format!(
                "{} must include a valid {} header\n",
                erl_p(command),
                erl_p(header)
            ),
            AckError::SubscriptionNotFound { id } => {
                format!("Message with id {} has no subscription", erl_p(id))
            }
        }
    }
}

impl AckError {
    pub fn summary(&self) -> &'static str {
        ErrorFrame::summary(self)
    }
    pub fn detail(&self) -> String {
        ErrorFrame::detail(self)
    }
}

/// Reads and parses the id of an ACK/NACK frame (`command` is `ACK` or `NACK`).
pub fn ack_id(command: &str, version: Version, headers: &Headers) -> Result<AckId, AckError> {
    let header = ack_header_name(version);
    let value = headers.get(header).ok_or_else(|| AckError::Missing {
        command: command.to_string(),
        header,
    })?;
    parse_message_id(value).ok_or_else(|| AckError::Invalid {
        command: command.to_string(),
        header,
    })
}

/// Erlang's `io_lib:format("~p", [String])` for a byte string: quoted with escapes when
/// printable (latin-1 rules, so UTF-8 with no byte in 128..160 stays as is), else a list of
/// integers.
pub(crate) fn erl_p(s: &str) -> String {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return "[]".to_string();
    }
    let printable = bytes.iter().all(|&b| {
        (32..=126).contains(&b) || b >= 160 || matches!(b, b'\n' | b'\r' | b'\t' | 8 | 11 | 12 | 27)
    });
    if !printable {
        let items: Vec<String> = bytes.iter().map(u8::to_string).collect();
        return format!("[{}]", items.join(","));
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            '\u{1b}' => out.push_str("\\e"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hs(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().copied().collect()
    }

    fn err(s: &str) -> (&'static str, String) {
        let e = parse(s).unwrap_err();
        (e.summary(), e.detail())
    }

    fn q(s: &str) -> Destination {
        Destination::Queue(s.to_string())
    }

    const VALID: &str = "Valid destination types are: /temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/.\n";

    #[test]
    fn parses_every_kind() {
        assert_eq!(parse("/queue/q"), Ok(q("q")));
        assert_eq!(parse("/amq/queue/q"), Ok(Destination::AmqQueue("q".into())));
        assert_eq!(parse("/topic/a.b"), Ok(Destination::Topic("a.b".into())));
        assert_eq!(
            parse("/temp-queue/t1"),
            Ok(Destination::TempQueue("t1".into()))
        );
        assert_eq!(
            parse("/exchange/x"),
            Ok(Destination::Exchange {
                exchange: "x".into(),
                pattern: None
            })
        );
        assert_eq!(
            parse("/exchange/x/y"),
            Ok(Destination::Exchange {
                exchange: "x".into(),
                pattern: Some("y".into())
            })
        );
        assert_eq!(
            parse("/exchange/x/"),
            Ok(Destination::Exchange {
                exchange: "x".into(),
                pattern: Some(String::new())
            })
        );
    }

    #[test]
    fn bare_names_are_queues() {
        assert_eq!(parse("foo"), Ok(q("foo")));
        assert_eq!(parse("queue"), Ok(q("queue")));
        assert_eq!(parse("a%2Fb"), Ok(q("a/b")));
        // Lowercase escapes are not decoded (RabbitMQ neither).
        assert_eq!(parse("a%2fb"), Ok(q("a%2fb")));
        assert_eq!(
            err("foo/bar"),
            (
                "Unknown destination",
                format!("'foo/bar' is not a valid destination.\n{VALID}")
            )
        );
    }

    #[test]
    fn reply_queue_names_may_contain_slashes() {
        assert_eq!(
            parse("/reply-queue/a/b"),
            Ok(Destination::ReplyQueue("a/b".into()))
        );
        assert_eq!(
            parse("/reply-queue//x"),
            Ok(Destination::ReplyQueue("/x".into()))
        );
        assert_eq!(
            parse("/reply-queue/a%2Fb"),
            Ok(Destination::ReplyQueue("a/b".into()))
        );
    }

    #[test]
    fn slash_escapes_decode_in_name_parts() {
        assert_eq!(parse("/queue/a%2Fb"), Ok(q("a/b")));
        assert_eq!(parse("/topic/x%2Fy"), Ok(Destination::Topic("x/y".into())));
        assert_eq!(
            parse("/exchange/e%2F1/k%2F2"),
            Ok(Destination::Exchange {
                exchange: "e/1".into(),
                pattern: Some("k/2".into())
            })
        );
    }

    #[test]
    fn deviation_decodes_what_format_destination_escapes() {
        assert_eq!(parse("/queue/caf%C3%A9"), Ok(q("caf\u{e9}")));
        assert_eq!(parse("/queue/a%25b"), Ok(q("a%b")));
        assert_eq!(parse("/queue/a%0Ab"), Ok(q("a\nb")));
        // Printable ASCII escapes stay literal, as in RabbitMQ.
        assert_eq!(parse("/queue/%41"), Ok(q("%41")));
        // Undecodable UTF-8 falls back to RabbitMQ's %2F-only decoding.
        assert_eq!(parse("/queue/%FF%2F"), Ok(q("%FF/")));
        // Raw UTF-8 is kept.
        assert_eq!(parse("/queue/caf\u{e9}"), Ok(q("caf\u{e9}")));
    }

    #[test]
    fn unknown_destinations() {
        for d in [
            "/",
            "/foo",
            "/queuex/a",
            "//queue/a",
            "/amq/foo",
            "/reply-queue",
        ] {
            assert_eq!(
                err(d),
                (
                    "Unknown destination",
                    format!("'{d}' is not a valid destination.\n{VALID}")
                )
            );
        }
    }

    #[test]
    fn invalid_destinations_match_rabbitmq_bodies() {
        let cases = [
            ("/queue", "'' is not a valid queue destination\n"),
            ("/queue/", "'/' is not a valid queue destination\n"),
            ("/queue/a/b", "'/a/b' is not a valid queue destination\n"),
            ("/queue//", "'//' is not a valid queue destination\n"),
            ("/topic", "'' is not a valid topic destination\n"),
            ("/topic/", "'/' is not a valid topic destination\n"),
            ("/topic/a/b", "'/a/b' is not a valid topic destination\n"),
            ("/exchange", "'' is not a valid exchange destination\n"),
            ("/exchange/", "'/' is not a valid exchange destination\n"),
            (
                "/exchange//foo",
                "'//foo' is not a valid exchange destination\n",
            ),
            (
                "/exchange/x/y/z",
                "'/x/y/z' is not a valid exchange destination\n",
            ),
            (
                "/exchange/x//",
                "'/x//' is not a valid exchange destination\n",
            ),
            ("/amq/queue", "'' is not a valid amqqueue destination\n"),
            ("/amq/queue/", "'/' is not a valid amqqueue destination\n"),
            ("/temp-queue", "'' is not a valid temp_queue destination\n"),
            (
                "/temp-queue/",
                "'/' is not a valid temp_queue destination\n",
            ),
            (
                "/temp-queue/a/b",
                "'/a/b' is not a valid temp_queue destination\n",
            ),
            (
                "/reply-queue/",
                "'/' is not a valid reply_queue destination\n",
            ),
        ];
        for (d, body) in cases {
            assert_eq!(err(d), ("Invalid destination", body.to_string()), "{d}");
        }
    }

    #[test]
    fn blank_and_missing_destination() {
        assert_eq!(
            err(""),
            ("Invalid destination", "Destination cannot be blank".into())
        );
        let e = destination_header("SEND", &Headers::new()).unwrap_err();
        assert_eq!(e.summary(), "Missing destination");
        assert_eq!(e.detail(), "\"SEND\" must include a 'destination' header\n");
    }

    #[test]
    fn publish_routes() {
        let route = |d: &str| {
            let r = parse(d).unwrap().publish_route().unwrap();
            (r.exchange, r.routing_key)
        };
        assert_eq!(route("/queue/q"), ("".into(), "q".into()));
        assert_eq!(route("bare"), ("".into(), "bare".into()));
        assert_eq!(route("/amq/queue/q"), ("".into(), "q".into()));
        assert_eq!(route("/reply-queue/a/b"), ("".into(), "a/b".into()));
        assert_eq!(route("/topic/k"), ("amq.topic".into(), "k".into()));
        assert_eq!(route("/exchange/x"), ("x".into(), "".into()));
        assert_eq!(route("/exchange/x/k"), ("x".into(), "k".into()));
        let custom = parse("/topic/k")
            .unwrap()
            .publish_route_with("my.topic")
            .unwrap();
        assert_eq!(custom.exchange, "my.topic");
        // /exchange/amq.topic keeps amq.topic even with another default topic exchange.
        let explicit = parse("/exchange/amq.topic/k")
            .unwrap()
            .publish_route_with("my.topic");
        assert_eq!(explicit.unwrap().exchange, "amq.topic");
    }

    #[test]
    fn temp_queue_is_not_a_send_destination() {
        let e = parse("/temp-queue/t").unwrap().publish_route().unwrap_err();
        assert_eq!(e.summary(), "Invalid destination");
        assert_eq!(
            e.detail(),
            "'/temp-queue/t' is not a valid destination for 'SEND'\n"
        );
    }

    #[test]
    fn only_queue_destinations_declare_on_send() {
        assert!(parse("/queue/q").unwrap().send_declares_queue());
        for d in ["/amq/queue/q", "/topic/t", "/exchange/x", "/reply-queue/r"] {
            assert!(!parse(d).unwrap().send_declares_queue(), "{d}");
        }
    }

    #[test]
    fn message_destination_rebuilds_and_escapes() {
        assert_eq!(
            message_destination("", "a/b%c\n\u{e9}\u{7f}"),
            "/queue/a%2Fb%25c%0A%C3%A9\u{7f}"
        );
        assert_eq!(message_destination("amq.topic", "k"), "/topic/k");
        assert_eq!(
            message_destination("rabbitmq", "zjj"),
            "/exchange/rabbitmq/zjj"
        );
        assert_eq!(message_destination("x", ""), "/exchange/x");
        assert_eq!(message_destination("a/b", "c/d"), "/exchange/a%2Fb/c%2Fd");
    }

    proptest! {
        #[test]
        fn message_destination_round_trips(x in "(?s).{0,12}", rk in "(?s).{0,12}") {
            prop_assume!(!rk.is_empty() || (!x.is_empty() && x != "amq.topic"));
            let d = parse(&message_destination(&x, &rk)).unwrap();
            let route = d.publish_route().unwrap();
            prop_assert_eq!(route.exchange, x);
            prop_assert_eq!(route.routing_key, rk);
        }

        #[test]
        fn display_round_trips(name in "(?s).{1,12}", kind in 0..5u8) {
            let d = match kind {
                0 => Destination::Queue(name),
                1 => Destination::AmqQueue(name),
                2 => Destination::Topic(name),
                3 => Destination::TempQueue(name),
                _ => Destination::Exchange { exchange: name.clone(), pattern: Some(name) },
            };
            prop_assert_eq!(parse(&d.to_string()), Ok(d));
        }

        #[test]
        fn message_id_round_trips(id in "[^@]{0,10}", sess in "[^@]{1,10}", tag in any::<u64>()) {
            let consumer_tag = format!("T_{id}");
            let parsed = parse_message_id(&message_id(&consumer_tag, &sess, tag)).unwrap();
            prop_assert_eq!(parsed, AckId { consumer_tag, session_id: sess, delivery_tag: tag });
        }
    }

    #[test]
    fn fuzz_regression_reply_queue_display_round_trips() {
        // destination fuzz target: `%25` was unescaped by parse but not escaped by Display.
        let d = parse("/reply-queue/amq.gen-2/x%2525\0\u{1}.**").unwrap();
        assert_eq!(
            d,
            Destination::ReplyQueue("amq.gen-2/x%25\0\u{1}.**".into())
        );
        assert_eq!(parse(&d.to_string()), Ok(d));
        let d = Destination::ReplyQueue("a/b%2F".into());
        assert_eq!(d.to_string(), "/reply-queue/a/b%252F");
        assert_eq!(parse(&d.to_string()), Ok(d));
    }

    #[test]
    fn fuzz_regression_names_over_255_bytes_are_invalid() {
        // lapin panics on AMQP short strings over 255 bytes (session fuzz target invariant).
        let ok = "n".repeat(255);
        let long = "n".repeat(256);
        assert_eq!(parse(&format!("/queue/{ok}")), Ok(q(&ok)));
        // Escapes count once unescaped.
        let escaped = format!("/queue/{}%2F", &ok[..254]);
        assert!(parse(&escaped).is_ok());
        for s in [
            long.clone(),
            format!("/queue/{long}"),
            format!("/amq/queue/{long}"),
            format!("/topic/{long}"),
            format!("/temp-queue/{long}"),
            format!("/reply-queue/{long}"),
            format!("/exchange/{long}"),
            format!("/exchange/x/{long}"),
        ] {
            assert_eq!(err(&s).0, "Invalid destination", "{s}");
        }
    }

    #[test]
    fn durable_subscription_names_match_rabbitmq_3_10() {
        // Values computed by RabbitMQ 3.10.8's rabbit_stomp_util:subscription_queue_name/3.
        let cases = [
            ("a.b", "sub-0", "stomp-subscription-fonwbhD4N36Q7MxhHwAzYg"),
            ("", "x", "stomp-subscription-h-fwebydKM-y5XzgjiGmqA"),
            ("rk", "", "stomp-subscription-g08O_-voFC-msfsYpU_vcA"),
            (
                "caf\u{e9}",
                "id-1",
                "stomp-subscription-xzyEr5M5_d5Pdhweu1Jeng",
            ),
            ("foo/bar", "0", "stomp-subscription-NP6U1dXf7dkSKxCHclTp2A"),
        ];
        for (name, id, expected) in cases {
            assert_eq!(subscription_queue_name(name, id), expected, "{name} {id}");
        }
        // Over 65535 bytes Erlang switches from STRING_EXT to LIST_EXT.
        let long = "a".repeat(70000);
        assert_eq!(
            subscription_queue_name("x", &long),
            "stomp-subscription-ZZH4CumgXESztNKWCGRXrw"
        );
    }

    #[test]
    fn durable_subscription_names_with_binary_terms() {
        // term_to_binary({<<"a.b">>, <<"sub-0">>}, [{minor_version, 1}]) as hashed on main.
        assert_eq!(
            subscription_queue_name_with("a.b", "sub-0", TermEncoding::Binaries),
            "stomp-subscription-YtV-JFSAP8mN4a3W8Rt5Sw"
        );
        assert_eq!(
            subscription_queue_name_with("", "x", TermEncoding::Binaries),
            "stomp-subscription-ltHoOwiEH_6FdclaEx2twA"
        );
    }

    #[test]
    fn random_subscription_names_look_like_rabbitmq_ones() {
        let a = random_subscription_queue_name();
        let b = random_subscription_queue_name();
        assert_ne!(a, b);
        assert!(a.starts_with("stomp-subscription-"));
        assert_eq!(a.len(), "stomp-subscription-".len() + 22);
    }

    fn plan(dest: &str, extra: &[(&str, &str)]) -> Result<SubscribePlan, PlanError> {
        let mut h = hs(&[("destination", dest)]);
        for (k, v) in extra {
            h.push(*k, *v);
        }
        plan_subscribe(&h, &PlanConfig::default())
    }

    fn declare(p: &SubscribePlan) -> &QueueDeclare {
        p.declare.as_ref().unwrap()
    }

    #[test]
    fn subscribe_exchange_declares_exclusive_autodelete_and_binds() {
        let p = plan("/exchange/rabbitmq/zjj", &[("id", "sub-0")]).unwrap();
        let d = declare(&p);
        assert!(p.queue.starts_with("stomp-subscription-"));
        assert_eq!(d.queue, p.queue);
        assert!(!d.durable && d.exclusive && d.auto_delete && !d.passive && !d.nowait);
        assert_eq!(
            p.binding,
            Some(Binding {
                exchange: "rabbitmq".into(),
                routing_key: "zjj".into()
            })
        );
        assert!(!p.check_exchange, "a missing exchange fails at queue.bind");
        assert!(p.delete_queue_on_failure);
        assert_eq!(p.consumer_tag, "T_sub-0");
        assert_eq!(p.description, "id='sub-0'");
        assert_eq!(p.subscription_header(), Some("sub-0"));
        let p = plan("/exchange/x", &[]).unwrap();
        assert_eq!(p.binding.unwrap().routing_key, "");
        assert_eq!(p.consumer_tag, "Q_/exchange/x");
        assert_eq!(p.description, "destination='/exchange/x'");
    }

    #[test]
    fn subscribe_topic_binds_to_default_topic_exchange() {
        let p = plan("/topic/a.b", &[]).unwrap();
        let d = declare(&p);
        assert!(!d.durable && d.exclusive && d.auto_delete);
        assert_eq!(p.binding.as_ref().unwrap().exchange, "amq.topic");
        assert_eq!(p.binding.as_ref().unwrap().routing_key, "a.b");
        let cfg = PlanConfig {
            default_topic_exchange: "t.x".into(),
            ..PlanConfig::default()
        };
        let h = hs(&[("destination", "/topic/k")]);
        let p = plan_subscribe(&h, &cfg).unwrap();
        assert_eq!(p.binding.unwrap().exchange, "t.x");
    }

    #[test]
    fn durable_topic_subscription_is_deterministic() {
        let p = plan("/topic/a.b", &[("durable", "true"), ("id", "sub-0")]).unwrap();
        assert_eq!(p.queue, "stomp-subscription-fonwbhD4N36Q7MxhHwAzYg");
        let d = declare(&p);
        // RabbitMQ: durable, non-exclusive, but auto-delete unless `auto-delete:false`.
        assert!(d.durable && !d.exclusive && d.auto_delete);
        assert!(p.durable_subscription);
        let p = plan(
            "/topic/a.b",
            &[
                ("persistent", "true"),
                ("auto-delete", "false"),
                ("id", "sub-0"),
            ],
        )
        .unwrap();
        assert_eq!(p.queue, "stomp-subscription-fonwbhD4N36Q7MxhHwAzYg");
        assert!(!declare(&p).auto_delete);
        // Durable exchange subscriptions hash the pattern ("" without one).
        let p = plan("/exchange/e", &[("durable", "true"), ("id", "x")]).unwrap();
        assert_eq!(p.queue, "stomp-subscription-h-fwebydKM-y5XzgjiGmqA");
    }

    #[test]
    fn durable_subscription_requires_id() {
        for (k, v) in [
            ("durable", "true"),
            ("persistent", "true"),
            ("durable", "True"),
        ] {
            let e = plan("/topic/t", &[(k, v)]).unwrap_err();
            assert_eq!(e.summary(), "Missing Header");
            assert_eq!(
                e.detail(),
                "Header 'id' is required for durable subscriptions"
            );
        }
        // Checked before the destination, as RabbitMQ's validate_frame does.
        let h = hs(&[("destination", "/bad"), ("durable", "true")]);
        assert_eq!(
            plan_subscribe(&h, &PlanConfig::default()),
            Err(PlanError::MissingId)
        );
        assert!(require_id_for_durable(&hs(&[("durable", "false")])).is_ok());
    }

    #[test]
    fn x_queue_name_overrides_generated_names() {
        let p = plan("/topic/t", &[("x-queue-name", "mine")]).unwrap();
        assert_eq!(p.queue, "mine");
        let d = declare(&p);
        assert!(
            !d.exclusive && d.auto_delete,
            "shareable, as in RabbitMQ 3.10.8"
        );
        assert!(!d.arguments.contains_key("x-queue-name"));
        assert!(!p.is_transient());
        let p = plan(
            "/topic/t",
            &[("x-queue-name", "m"), ("durable", "true"), ("id", "1")],
        );
        assert_eq!(p.unwrap().queue, "m");
        // Not used for /queue/ destinations.
        assert_eq!(
            plan("/queue/q", &[("x-queue-name", "other")])
                .unwrap()
                .queue,
            "q"
        );
    }

    #[test]
    fn subscribe_queue_declares_durable_once_per_session() {
        let p = plan("/queue/q", &[]).unwrap();
        let d = declare(&p);
        assert_eq!(d.queue, "q");
        assert!(d.durable && !d.exclusive && !d.auto_delete && d.nowait && d.once_per_session);
        assert_eq!(p.binding, None);
        assert!(!p.delete_queue_on_failure);
        let p = plan("/queue/q", &[("durable", "false")]).unwrap();
        let d = declare(&p);
        assert!(!d.durable && d.exclusive && d.auto_delete);
        let p = plan(
            "/queue/q",
            &[("x-message-ttl", "100"), ("x-queue-type", "quorum")],
        )
        .unwrap();
        assert_eq!(declare(&p).arguments.inner().len(), 2);
    }

    #[test]
    fn subscribe_amq_queue_and_reply_queue_never_declare() {
        let p = plan("/amq/queue/q", &[("x-message-ttl", "100")]).unwrap();
        assert_eq!(
            (p.queue.as_str(), p.declare.is_none(), p.binding.is_none()),
            ("q", true, true)
        );
        let p = plan("/reply-queue/a/b", &[]).unwrap();
        assert_eq!((p.queue.as_str(), p.declare.is_none()), ("a/b", true));
    }

    #[test]
    fn subscribe_temp_queue_is_invalid() {
        let e = plan("/temp-queue/t", &[]).unwrap_err();
        assert_eq!(e.summary(), "Invalid destination");
        assert_eq!(
            e.detail(),
            "'/temp-queue/t' is not a valid destination for 'SUBSCRIBE'\n"
        );
    }

    #[test]
    fn subscription_ids_may_not_name_temp_queues() {
        let e = plan("/queue/q", &[("id", "/temp-queue/x")]).unwrap_err();
        assert_eq!(e.summary(), "Invalid id");
        assert_eq!(
            e.detail(),
            "SUBSCRIBE 'id' may not start with /temp-queue/\n"
        );
        let e = consumer_tag("UNSUBSCRIBE", &hs(&[("id", "/temp-queue/x")])).unwrap_err();
        assert_eq!(
            e.detail(),
            "UNSUBSCRIBE 'id' may not start with /temp-queue/\n"
        );
        let e = consumer_tag("UNSUBSCRIBE", &Headers::new()).unwrap_err();
        assert_eq!(e.summary(), "Missing destination or id");
        assert_eq!(
            e.detail(),
            "UNSUBSCRIBE must include a 'destination' or 'id' header"
        );
        let ok = consumer_tag("UNSUBSCRIBE", &hs(&[("destination", "/queue/a")])).unwrap();
        assert_eq!(
            ok,
            (
                "Q_/queue/a".to_string(),
                "destination='/queue/a'".to_string()
            )
        );
    }

    #[test]
    fn ack_modes() {
        assert_eq!(plan("/queue/q", &[]).unwrap().ack, AckMode::Auto);
        let p = plan("/queue/q", &[("ack", "client")]).unwrap();
        assert!(p.ack == AckMode::Client && p.ack.multiple() && !p.ack.no_ack());
        let p = plan("/queue/q", &[("ack", "client-individual")]).unwrap();
        assert!(!p.ack.multiple() && !p.ack.no_ack());
        assert!(AckMode::Auto.no_ack());
        assert!(AckMode::Client.message_has_ack_header(Version::V1_2));
        assert!(!AckMode::Client.message_has_ack_header(Version::V1_1));
        assert!(!AckMode::Auto.message_has_ack_header(Version::V1_2));
        let e = plan("/queue/q", &[("ack", "Client")]).unwrap_err();
        assert_eq!(e.summary(), "Invalid header");
        assert_eq!(
            e.detail(),
            "'ack' must be 'auto', 'client' or 'client-individual', not 'Client'\n"
        );
    }

    #[test]
    fn prefetch_count() {
        assert_eq!(plan("/queue/q", &[]).unwrap().prefetch_count, None);
        assert_eq!(
            plan("/queue/q", &[("prefetch-count", " 10 ")])
                .unwrap()
                .prefetch_count,
            Some(10)
        );
        let e = plan("/queue/q", &[("prefetch-count", "ten")]).unwrap_err();
        assert_eq!(
            e.detail(),
            "'prefetch-count' must be an integer, not 'ten'\n"
        );
        let e = plan("/queue/q", &[("prefetch-count", "70000")]).unwrap_err();
        assert_eq!(
            e.detail(),
            "'prefetch-count' must be an integer from 0 to 65535, not '70000'\n"
        );
    }

    #[test]
    fn consumer_arguments_for_streams() {
        let args = |v: &str| consumer_arguments(&hs(&[("x-stream-offset", v)]));
        let get = |t: FieldTable| t.inner().get("x-stream-offset").cloned();
        assert_eq!(
            get(args("first").unwrap()),
            Some(AMQPValue::LongString(LongString::from("first")))
        );
        assert_eq!(
            get(args("offset=5").unwrap()),
            Some(AMQPValue::LongLongInt(5))
        );
        assert_eq!(
            get(args("timestamp=1700").unwrap()),
            Some(AMQPValue::Timestamp(1700))
        );
        assert_eq!(get(args("1D").unwrap()), None, "ignored, as RabbitMQ does");
        assert!(args("offset=x").is_err());
        let t = consumer_arguments(&hs(&[
            ("x-stream-filter", "apple,banana"),
            ("x-stream-match-unfiltered", "true"),
            ("x-priority", "-3"),
        ]))
        .unwrap();
        assert_eq!(
            t.inner().get("x-stream-filter"),
            Some(&AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongString(LongString::from("apple")),
                AMQPValue::LongString(LongString::from("banana")),
            ])))
        );
        assert_eq!(
            t.inner().get("x-stream-match-unfiltered"),
            Some(&AMQPValue::Boolean(true))
        );
        assert_eq!(t.inner().get("x-priority"), Some(&AMQPValue::LongInt(-3)));
        let p = plan(
            "/amq/queue/s",
            &[("x-stream-offset", "first"), ("ack", "client")],
        )
        .unwrap();
        assert_eq!(p.consumer_arguments.inner().len(), 1);
    }

    #[test]
    fn transient_subscriptions() {
        assert!(plan("/topic/t", &[]).unwrap().is_transient());
        assert!(
            plan("/exchange/x/k", &[("id", "1")])
                .unwrap()
                .is_transient()
        );
        assert!(
            !plan("/topic/t", &[("ack", "client")])
                .unwrap()
                .is_transient()
        );
        assert!(
            !plan("/topic/t", &[("x-message-ttl", "5")])
                .unwrap()
                .is_transient()
        );
        assert!(
            !plan("/topic/t", &[("durable", "true"), ("id", "1")])
                .unwrap()
                .is_transient()
        );
        assert!(
            !plan("/topic/t", &[("x-priority", "1")])
                .unwrap()
                .is_transient()
        );
        assert!(!plan("/queue/q", &[]).unwrap().is_transient());
    }

    #[test]
    fn send_plans() {
        let cfg = PlanConfig::default();
        let h = hs(&[("destination", "/queue/q"), ("x-max-length", "10")]);
        let p = plan_send(&h, &cfg).unwrap();
        assert_eq!(
            p.route,
            Route {
                exchange: "".into(),
                routing_key: "q".into()
            }
        );
        let d = p.declare.unwrap();
        assert!(d.durable && d.once_per_session && d.nowait);
        assert_eq!(
            d.arguments.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(10))
        );
        let p = plan_send(&hs(&[("destination", "/amq/queue/q")]), &cfg).unwrap();
        assert!(p.declare.is_none());
        let p = plan_send(
            &hs(&[("destination", "/topic/t"), ("reply-to", "/temp-queue/r1")]),
            &cfg,
        )
        .unwrap();
        assert_eq!(p.route.exchange, "amq.topic");
        assert_eq!(p.reply_to_temp_queue.as_deref(), Some("r1"));
        // message-id is checked before the destination.
        let e = plan_send(&hs(&[("destination", "/bad"), ("message-id", "x")]), &cfg).unwrap_err();
        assert_eq!(
            (e.summary(), e.detail().as_str()),
            ("Invalid header", "'message-id' is not allowed on 'SEND'.\n")
        );
        // The error quotes the raw header.
        let e = plan_send(&hs(&[("destination", "/temp-queue/a%2Fb")]), &cfg).unwrap_err();
        assert_eq!(
            e.detail(),
            "'/temp-queue/a%2Fb' is not a valid destination for 'SEND'\n"
        );
        let e = plan_send(&Headers::new(), &cfg).unwrap_err();
        assert_eq!(e.summary(), "Missing destination");
    }

    #[test]
    fn reply_to_temp_queues() {
        assert_eq!(reply_to_temp_queue("/temp-queue/x").as_deref(), Some("x"));
        assert_eq!(reply_to_temp_queue("/queue/x"), None);
        assert_eq!(reply_to_temp_queue("not/valid"), None);
        let t = temp_queue_plan("x");
        assert_eq!(t.consumer_tag, "T_/temp-queue/x");
        assert_eq!(subscription_header(&t.consumer_tag), Some("/temp-queue/x"));
        assert!(
            t.no_ack && t.declare.exclusive && t.declare.auto_delete && t.declare.queue.is_empty()
        );
    }

    #[test]
    fn unsubscribe_deletes_durable_topic_queues_only() {
        let cfg = PlanConfig::default();
        let topic = parse("/topic/a.b").unwrap();
        let h = hs(&[("id", "sub-0"), ("durable", "true")]);
        assert_eq!(
            durable_unsubscribe_queue(&topic, &h, &cfg).as_deref(),
            Some("stomp-subscription-fonwbhD4N36Q7MxhHwAzYg")
        );
        assert_eq!(
            durable_unsubscribe_queue(&topic, &hs(&[("id", "sub-0")]), &cfg),
            None
        );
        let h = hs(&[("id", "1"), ("durable", "true"), ("x-queue-name", "mine")]);
        assert_eq!(
            durable_unsubscribe_queue(&topic, &h, &cfg).as_deref(),
            Some("mine")
        );
        let ex = parse("/exchange/e").unwrap();
        assert_eq!(
            durable_unsubscribe_queue(&ex, &hs(&[("id", "1"), ("durable", "true")]), &cfg),
            None
        );
    }

    #[test]
    fn message_ids() {
        let sid = new_session_id();
        assert!(sid.starts_with("session-") && sid.len() == 30, "{sid}");
        assert_eq!(
            message_id("T_sub-0", "session-abc", 7),
            "T_sub-0@@session-abc@@7"
        );
        assert_eq!(
            message_id("Q_/queue/a", "session-abc", 1),
            "Q_/queue/a@@session-abc@@1"
        );
        // Left-to-right split, as RabbitMQ's split/2.
        assert_eq!(
            parse_message_id("T_a@@@b@@1"),
            Some(AckId {
                consumer_tag: "T_a".into(),
                session_id: "@b".into(),
                delivery_tag: 1
            })
        );
        assert_eq!(parse_message_id("T_a@@b@@c@@1"), None);
        assert_eq!(parse_message_id("T_a@@b@@x"), None);
        assert_eq!(parse_message_id(""), None);
    }

    #[test]
    fn ack_id_errors_match_rabbitmq() {
        let e = ack_id("ACK", Version::V1_2, &hs(&[("message-id", "x")])).unwrap_err();
        assert_eq!(
            (e.summary(), e.detail()),
            (
                "Missing header",
                "\"ACK\" must include the \"id\" header\n".into()
            )
        );
        let e = ack_id("NACK", Version::V1_1, &Headers::new()).unwrap_err();
        assert_eq!(
            e.detail(),
            "\"NACK\" must include the \"message-id\" header\n"
        );
        let e = ack_id("ACK", Version::V1_2, &hs(&[("id", "junk")])).unwrap_err();
        assert_eq!(
            (e.summary(), e.detail()),
            (
                "Invalid header",
                "\"ACK\" must include a valid \"id\" header\n".into()
            )
        );
        let ok = ack_id("ACK", Version::V1_0, &hs(&[("message-id", "T_1@@s@@5")])).unwrap();
        assert_eq!((ok.consumer_tag.as_str(), ok.delivery_tag), ("T_1", 5));
        let e = AckError::SubscriptionNotFound {
            id: "T_1@@session-x@@5".into(),
        };
        assert_eq!(e.summary(), "Subscription not found");
        assert_eq!(
            e.detail(),
            "Message with id \"T_1@@session-x@@5\" has no subscription"
        );
    }

    #[test]
    fn erlang_p_formatting() {
        assert_eq!(erl_p("T_a b\"c\\d\te"), "\"T_a b\\\"c\\\\d\\te\"");
        assert_eq!(erl_p("\u{20ac}"), "[226,130,172]");
        assert_eq!(erl_p(""), "[]");
    }
}
