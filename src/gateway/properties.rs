//! STOMP headers <-> AMQP 0-9-1 properties, headers table and queue arguments, as RabbitMQ's
//! STOMP plugin maps them (3.10.8 `rabbit_stomp_util:{message_properties/1, message_headers/1,
//! headers_post_process/1, build_arguments/1, build_params/2}`).
//!
//! Deviations from RabbitMQ 3.10.8, all documented at the item:
//! * Malformed integers/booleans and over-long short strings are `Invalid header` errors
//!   (RabbitMQ crashes with `Processing error`, or silently ignores `exclusive:yes`).
//! * MESSAGE keeps typed AMQP header values RabbitMQ drops (see [`message_headers`]).
//! * Queue arguments RabbitMQ added after 3.10.8 (`x-max-age`, `x-stream-*`) and a few it never
//!   mapped (`x-queue-mode`, `x-overflow`, ...) are declared with their AMQP types.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::destination::{
    AckMode, ErrorFrame, QueueDeclare, REPLY_QUEUE_PREFIX, REPLY_TO_KNOWN_PREFIXES,
    message_destination, message_id, subscription_header,
};
use crate::stomp::{Headers, Version};

/// Errors turning STOMP headers into AMQP values; all are `Invalid header` ERROR frames.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PropertiesError {
    /// A header the command may not carry (`message-id` on SEND).
    #[error("'{header}' is not allowed on '{command}'")]
    NotAllowed {
        header: &'static str,
        command: &'static str,
    },
    #[error("'{header}' must be an integer, not '{value}'")]
    InvalidInteger { header: String, value: String },
    #[error("'{header}' must be an integer from {min} to {max}, not '{value}'")]
    IntegerOutOfRange {
        header: String,
        value: String,
        min: i128,
        max: i128,
    },
    #[error("'{header}' must be true, True, false or False, not '{value}'")]
    InvalidBoolean { header: String, value: String },
    /// An AMQP short string (property value or header-table key) over 255 bytes.
    #[error("'{header}' is {len} bytes long; AMQP allows at most 255")]
    TooLong { header: String, len: usize },
}

impl ErrorFrame for PropertiesError {
    fn summary(&self) -> &'static str {
        "Invalid header"
    }

    fn detail(&self) -> String {
        // RabbitMQ's own text for NotAllowed ends in ".\n"; ours follow its "\n" convention.
        match self {
            PropertiesError::NotAllowed { .. } => format!("{self}.\n"),
            _ => format!("{self}\n"),
        }
    }
}

impl PropertiesError {
    pub fn summary(&self) -> &'static str {
        ErrorFrame::summary(self)
    }
    pub fn detail(&self) -> String {
        ErrorFrame::detail(self)
    }
}

/// Headers RabbitMQ maps to AMQP properties (or uses for routing) and therefore keeps out of
/// the AMQP headers table (`user_header/1`).
pub const MAPPED_HEADERS: [&str; 13] = [
    "content-type",
    "content-encoding",
    "persistent",
    "priority",
    "correlation-id",
    "reply-to",
    "expiration",
    "amqp-message-id",
    "timestamp",
    "type",
    "user-id",
    "app-id",
    "destination",
];

/// STOMP booleans as RabbitMQ reads them: `true`, `True`, `false`, `False`.
pub fn parse_bool(header: &str, value: &str) -> Result<bool, PropertiesError> {
    match value {
        "true" | "True" => Ok(true),
        "false" | "False" => Ok(false),
        _ => Err(PropertiesError::InvalidBoolean {
            header: header.to_string(),
            value: value.to_string(),
        }),
    }
}

/// Bounds of the integer types headers are parsed into.
pub trait Bounded: TryFrom<i128> {
    const MIN: i128;
    const MAX: i128;
}

macro_rules! bounded {
    ($($t:ty),*) => {$(impl Bounded for $t {
        const MIN: i128 = <$t>::MIN as i128;
        const MAX: i128 = <$t>::MAX as i128;
    })*};
}
bounded!(u8, u16, i32, i64, u64);

/// RabbitMQ's `integer_header`: `list_to_integer(string:strip(V))`, i.e. spaces trimmed, an
/// optional sign, decimal digits; then range-checked for the AMQP field.
pub fn parse_integer<T: Bounded>(header: &str, value: &str) -> Result<T, PropertiesError> {
    parse_erlang_integer(header, value, value.trim_matches(' '))
}

/// Parses `digits` (`[+-]?[0-9]+`, nothing trimmed) into `T`; errors quote `value`.
pub fn parse_erlang_integer<T: Bounded>(
    header: &str,
    value: &str,
    digits: &str,
) -> Result<T, PropertiesError> {
    let unsigned = digits
        .strip_prefix('-')
        .or_else(|| digits.strip_prefix('+'))
        .unwrap_or(digits);
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PropertiesError::InvalidInteger {
            header: header.to_string(),
            value: value.to_string(),
        });
    }
    let out_of_range = || PropertiesError::IntegerOutOfRange {
        header: header.to_string(),
        value: value.to_string(),
        min: T::MIN,
        max: T::MAX,
    };
    let n: i128 = digits
        .strip_prefix('+')
        .unwrap_or(digits)
        .parse()
        .map_err(|_| out_of_range())?;
    if !(T::MIN..=T::MAX).contains(&n) {
        return Err(out_of_range());
    }
    T::try_from(n).map_err(|_| out_of_range())
}

fn short(header: &str, value: &str) -> Result<ShortString, PropertiesError> {
    ShortString::try_new(value).map_err(|_| PropertiesError::TooLong {
        header: header.to_string(),
        len: value.len(),
    })
}

/// Rejects headers forbidden on SEND (`HEADERS_NOT_ON_SEND`: `message-id`), RabbitMQ's first
/// SEND check: `Invalid header`, body `'message-id' is not allowed on 'SEND'.\n`.
pub fn check_send_headers(headers: &Headers) -> Result<(), PropertiesError> {
    if headers.contains("message-id") {
        return Err(PropertiesError::NotAllowed {
            header: "message-id",
            command: "SEND",
        });
    }
    Ok(())
}

/// SEND headers → AMQP properties (`message_properties/1`).
///
/// `content-type`, `content-encoding`, `correlation-id`, `reply-to`, `expiration`, `type`,
/// `user-id`, `app-id` are copied; `amqp-message-id` becomes `message-id`; `persistent: true`
/// → delivery mode 2; `priority` (0..=255) and `timestamp` (seconds) are integers. Every other
/// header except `destination` goes into the headers table as longstr, in frame order, first
/// occurrence winning — RabbitMQ strips no STOMP control header: `receipt`, `transaction`,
/// `content-length`, `durable`, `x-*` queue arguments etc. all reach AMQP consumers. The table
/// is always present, possibly empty, as with RabbitMQ.
///
/// `reply-to` is copied verbatim; RabbitMQ adds `/reply-queue/` on delivery (see
/// [`message_headers`]) and the session swaps a `/temp-queue/` for its queue name.
/// Deviation: a `reply-to` that is no valid destination crashes RabbitMQ; we pass it through.
pub fn publish_properties(headers: &Headers) -> Result<BasicProperties, PropertiesError> {
    check_send_headers(headers)?;
    let mut props = BasicProperties::default();
    let str_prop = |name: &str| headers.get(name).map(|v| short(name, v)).transpose();
    if let Some(v) = str_prop("content-type")? {
        props = props.with_content_type(v);
    }
    if let Some(v) = str_prop("content-encoding")? {
        props = props.with_content_encoding(v);
    }
    let mut table = FieldTable::default();
    for (name, value) in headers.iter() {
        if MAPPED_HEADERS.contains(&name) || table.contains_key(name) {
            continue;
        }
        table.insert(
            short(name, name)?,
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    props = props.with_headers(table);
    if let Some(v) = headers.get("persistent")
        && parse_bool("persistent", v)?
    {
        props = props.with_delivery_mode(2);
    }
    if let Some(v) = headers.get("priority") {
        props = props.with_priority(parse_integer::<u8>("priority", v)?);
    }
    if let Some(v) = str_prop("correlation-id")? {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = str_prop("reply-to")? {
        props = props.with_reply_to(v);
    }
    if let Some(v) = str_prop("expiration")? {
        props = props.with_expiration(v);
    }
    if let Some(v) = headers.get("amqp-message-id") {
        props = props.with_message_id(short("amqp-message-id", v)?);
    }
    if let Some(v) = headers.get("timestamp") {
        props = props.with_timestamp(parse_integer::<u64>("timestamp", v)?);
    }
    if let Some(v) = str_prop("type")? {
        props = props.with_type(v);
    }
    if let Some(v) = str_prop("user-id")? {
        props = props.with_user_id(v);
    }
    if let Some(v) = str_prop("app-id")? {
        props = props.with_app_id(v);
    }
    Ok(props)
}

/// RabbitMQ's `headers_post_process/1`: a `reply-to` not starting with `/exchange`, `/topic`,
/// `/queue`, `/amq/queue` or `/reply-queue/` gets `/reply-queue/` prepended.
pub fn reply_to_header(value: &str) -> String {
    if REPLY_TO_KNOWN_PREFIXES.iter().any(|p| value.starts_with(p)) {
        value.to_string()
    } else {
        format!("{REPLY_QUEUE_PREFIX}{value}")
    }
}

/// One AMQP header-table value as a STOMP header value, or `None` to skip it.
///
/// RabbitMQ copies only longstr, signedint and long and silently drops the rest
/// (`adhoc_convert_headers/2`). Improvement: every scalar is kept — booleans as `true`/`false`,
/// all integer widths in decimal, float/double with Rust's shortest round-trip formatting
/// (`1.5`, `NaN`, `inf`), decimals as `<value>/10^scale` in plain notation (`1.25`), timestamps
/// as integer seconds, short strings as text. Arrays, nested tables, byte arrays and void are
/// skipped (no faithful one-line rendering). Non-UTF-8 longstr bytes are replaced (U+FFFD).
pub fn header_value(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::DecimalValue(d) => {
            let digits = d.value.to_string();
            let scale = usize::from(d.scale);
            if scale == 0 {
                digits
            } else if digits.len() > scale {
                let (int, frac) = digits.split_at(digits.len() - scale);
                format!("{int}.{frac}")
            } else {
                format!("0.{}{digits}", "0".repeat(scale - digits.len()))
            }
        }
        AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::ByteArray(_)
        | AMQPValue::Void => return None,
    })
}

/// AMQP properties → MESSAGE headers, appended after the `subscription`, `destination`,
/// `message-id`, `redelivered` (and `ack`) headers the caller wrote (see
/// [`message_frame_headers`]).
///
/// Order is RabbitMQ's (`message_headers/1` folds the properties into a reversed list and
/// prepends the table): headers-table entries first, then `app-id`, `user-id`, `type`,
/// `timestamp`, `amqp-message-id`, `expiration`, `reply-to`, `correlation-id`, `priority`,
/// `persistent`, `content-encoding`, `content-type`. Table entries come in key order (lapin
/// keeps tables sorted; RabbitMQ keeps wire order). `persistent` is `true` for delivery mode 2
/// and the bare number otherwise (RabbitMQ says `persistent:1` for mode 1). `reply-to`
/// (property or table entry) goes through [`reply_to_header`]. A table `content-length` is
/// dropped, as RabbitMQ's serializer does; the encoder writes the real one. Values are not
/// escaped here: the frame encoder escapes. Deviation: what STOMP cannot carry is skipped, an
/// empty table key (`:value` is no header line) and any key or value holding NUL (STOMP has no
/// escape for it; RabbitMQ sends it raw, ending the frame early for clients that split on NUL).
pub fn message_headers(delivery_props: &BasicProperties, out: &mut Headers) {
    if let Some(table) = delivery_props.headers() {
        for (name, value) in table {
            let name = name.as_str();
            if name.is_empty() || name == "content-length" || !stomp_safe(name) {
                continue;
            }
            if let Some(v) = header_value(value).filter(|v| stomp_safe(v)) {
                if name == "reply-to" {
                    out.push(name, reply_to_header(&v));
                } else {
                    out.push(name, v);
                }
            }
        }
    }
    let p = delivery_props;
    let push_str = |out: &mut Headers, name: &str, v: &Option<ShortString>| {
        if let Some(v) = v.as_ref().filter(|v| stomp_safe(v.as_str())) {
            out.push(name, v.as_str());
        }
    };
    push_str(out, "app-id", p.app_id());
    push_str(out, "user-id", p.user_id());
    push_str(out, "type", p.kind());
    if let Some(t) = p.timestamp() {
        out.push("timestamp", t.to_string());
    }
    push_str(out, "amqp-message-id", p.message_id());
    push_str(out, "expiration", p.expiration());
    if let Some(r) = p.reply_to().as_ref().filter(|r| stomp_safe(r.as_str())) {
        out.push("reply-to", reply_to_header(r.as_str()));
    }
    push_str(out, "correlation-id", p.correlation_id());
    if let Some(n) = p.priority() {
        out.push("priority", n.to_string());
    }
    match p.delivery_mode() {
        Some(2) => out.push("persistent", "true"),
        Some(n) => out.push("persistent", n.to_string()),
        None => {}
    }
    push_str(out, "content-encoding", p.content_encoding());
    push_str(out, "content-type", p.content_type());
}

/// False for text STOMP cannot put in a header (found by the `session` fuzz target).
fn stomp_safe(s: &str) -> bool {
    !s.contains('\0')
}

/// The `basic.deliver` fields a MESSAGE needs.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    pub consumer_tag: &'a str,
    pub delivery_tag: u64,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub redelivered: bool,
}

/// All MESSAGE headers but `content-length`, in RabbitMQ's order (`headers/5`):
/// `subscription` (for `T_` tags), `destination`, `message-id`, `redelivered`, `ack` (STOMP 1.2
/// with client acks; same value as `message-id`), then [`message_headers`].
pub fn message_frame_headers(
    session_id: &str,
    delivery: &Delivery<'_>,
    ack: AckMode,
    version: Version,
    props: &BasicProperties,
) -> Headers {
    let mut out = Headers::with_capacity(8);
    if let Some(id) = subscription_header(delivery.consumer_tag) {
        out.push("subscription", id);
    }
    out.push(
        "destination",
        message_destination(delivery.exchange, delivery.routing_key),
    );
    let id = message_id(delivery.consumer_tag, session_id, delivery.delivery_tag);
    out.push("message-id", id.clone());
    out.push("redelivered", delivery.redelivered.to_string());
    if ack.message_has_ack_header(version) {
        out.push("ack", id);
    }
    message_headers(props, &mut out);
    out
}

/// Defaults of the queue flags for one kind of destination (RabbitMQ's `default_params/1`).
/// `None` means "derive from `durable`": a durable queue is non-exclusive and not auto-delete,
/// a non-durable one exclusive and auto-delete (`queue_declare_method/3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFlags {
    pub durable: bool,
    pub exclusive: Option<bool>,
    pub auto_delete: Option<bool>,
}

impl QueueFlags {
    /// `/queue/<q>`: durable, non-exclusive, not auto-delete (`durable:false` makes it
    /// exclusive and auto-delete, as in RabbitMQ).
    pub const QUEUE: QueueFlags = QueueFlags {
        durable: true,
        exclusive: None,
        auto_delete: None,
    };

    /// Generated exchange/topic subscription queues: auto-delete; exclusive unless durable.
    /// Deviation: RabbitMQ 3.10.8 made transient ones non-exclusive (later releases made
    /// exchange, then topic, subscriptions exclusive); durable ones are non-exclusive in both.
    pub const SUBSCRIPTION: QueueFlags = QueueFlags {
        durable: false,
        exclusive: None,
        auto_delete: Some(true),
    };

    /// Exchange/topic subscriptions naming their queue with `x-queue-name`: RabbitMQ 3.10.8's
    /// defaults (non-exclusive, auto-delete), so several connections can share the queue.
    pub const NAMED_SUBSCRIPTION: QueueFlags = QueueFlags {
        durable: false,
        exclusive: Some(false),
        auto_delete: Some(true),
    };
}

/// Resolved `queue.declare` flags and arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueProperties {
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive: bool,
    pub arguments: FieldTable,
}

impl QueueProperties {
    /// The declare for queue `name`; `per_session` marks `/queue/` declares (nowait, once per
    /// session), which RabbitMQ casts.
    pub fn into_declare(self, name: String, per_session: bool) -> QueueDeclare {
        QueueDeclare {
            queue: name,
            passive: false,
            durable: self.durable,
            exclusive: self.exclusive,
            auto_delete: self.auto_delete,
            arguments: self.arguments,
            nowait: per_session,
            once_per_session: per_session,
        }
    }
}

#[derive(Clone, Copy)]
enum ArgType {
    Str,
    Long,
    Bool,
}

/// Queue-argument headers and their AMQP types. RabbitMQ declares integers as `long` (signed
/// 64-bit, `l`); brokers compare argument values by type class, so AMQP clients re-declaring
/// with 32-bit ints stay equivalent. String values are trimmed of spaces as RabbitMQ does.
const QUEUE_ARGUMENTS: [(&str, ArgType); 18] = [
    // RabbitMQ 3.10.8
    ("x-dead-letter-exchange", ArgType::Str),
    ("x-dead-letter-routing-key", ArgType::Str),
    ("x-expires", ArgType::Long),
    ("x-max-length", ArgType::Long),
    ("x-max-length-bytes", ArgType::Long),
    ("x-max-priority", ArgType::Long),
    ("x-message-ttl", ArgType::Long),
    ("x-queue-type", ArgType::Str),
    // Later RabbitMQ releases (3.11-3.13)
    ("x-max-age", ArgType::Str),
    ("x-stream-max-segment-size-bytes", ArgType::Long),
    ("x-stream-filter-size-bytes", ArgType::Long),
    // Extensions: never mapped by RabbitMQ's STOMP plugin
    ("x-queue-mode", ArgType::Str),
    ("x-overflow", ArgType::Str),
    ("x-single-active-consumer", ArgType::Bool),
    ("x-delivery-limit", ArgType::Long),
    ("x-queue-leader-locator", ArgType::Str),
    ("x-dead-letter-strategy", ArgType::Str),
    ("x-initial-cluster-size", ArgType::Long),
];

/// Names of the headers [`queue_properties`] turns into queue arguments.
pub fn queue_argument_names() -> impl Iterator<Item = &'static str> {
    QUEUE_ARGUMENTS.iter().map(|(name, _)| *name)
}

/// Queue-property headers → `queue.declare` flags and arguments (`build_params/2`,
/// `build_arguments/1`, `queue_declare_method/3`).
///
/// `durable` (alias `persistent`, the first of the two in the frame wins), `auto-delete` and
/// `exclusive` override `defaults`; booleans are `true/True/false/False` only. The arguments
/// are listed in [`queue_argument_names`]; `x-queue-name` names the queue and is not one.
/// `x-queue-type: quorum|stream` forces durable and non-exclusive (RabbitMQ >= 3.13).
pub fn queue_properties(
    headers: &Headers,
    defaults: QueueFlags,
) -> Result<QueueProperties, PropertiesError> {
    let mut durable = None;
    let mut exclusive = None;
    let mut auto_delete = None;
    let mut arguments = FieldTable::default();
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in headers.iter() {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        match name {
            "durable" | "persistent" => {
                let b = parse_bool(name, value)?;
                durable.get_or_insert(b);
            }
            "exclusive" => exclusive = Some(parse_bool(name, value)?),
            "auto-delete" => auto_delete = Some(parse_bool(name, value)?),
            _ => {
                let Some((_, ty)) = QUEUE_ARGUMENTS.iter().find(|(n, _)| *n == name) else {
                    continue;
                };
                let v = match ty {
                    ArgType::Str => {
                        AMQPValue::LongString(LongString::from(value.trim_matches(' ')))
                    }
                    ArgType::Long => AMQPValue::LongLongInt(parse_integer::<i64>(name, value)?),
                    ArgType::Bool => AMQPValue::Boolean(parse_bool(name, value)?),
                };
                arguments.insert(ShortString::from(name), v);
            }
        }
    }
    let durable_flag = durable.unwrap_or(defaults.durable);
    let mut props = QueueProperties {
        durable: durable_flag,
        exclusive: exclusive.or(defaults.exclusive).unwrap_or(!durable_flag),
        auto_delete: auto_delete
            .or(defaults.auto_delete)
            .unwrap_or(!durable_flag),
        arguments,
    };
    if let Some(AMQPValue::LongString(t)) = props.arguments.inner().get("x-queue-type")
        && matches!(t.as_bytes(), b"quorum" | b"stream")
    {
        props.durable = true;
        props.exclusive = false;
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, DecimalValue, FieldArray};
    use proptest::prelude::*;

    fn hs(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().copied().collect()
    }

    fn pairs(h: &Headers) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn table_str(p: &BasicProperties, k: &str) -> Option<String> {
        p.headers().as_ref()?.inner().get(k).and_then(header_value)
    }

    #[test]
    fn send_headers_map_to_properties() {
        let h = hs(&[
            ("destination", "/queue/q"),
            ("content-type", "text/plain"),
            ("content-encoding", "gzip"),
            ("persistent", "true"),
            ("priority", " 4 "),
            ("correlation-id", "cid"),
            ("reply-to", "foo"),
            ("expiration", "1000"),
            ("amqp-message-id", "mid"),
            ("timestamp", "12345"),
            ("type", "ty"),
            ("user-id", "uid"),
            ("app-id", "aid"),
        ]);
        let p = publish_properties(&h).unwrap();
        let s = |o: &Option<ShortString>| o.as_ref().map(|v| v.as_str().to_string());
        assert_eq!(s(p.content_type()).as_deref(), Some("text/plain"));
        assert_eq!(s(p.content_encoding()).as_deref(), Some("gzip"));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(*p.priority(), Some(4));
        assert_eq!(s(p.correlation_id()).as_deref(), Some("cid"));
        assert_eq!(
            s(p.reply_to()).as_deref(),
            Some("foo"),
            "verbatim on publish"
        );
        assert_eq!(s(p.expiration()).as_deref(), Some("1000"));
        assert_eq!(s(p.message_id()).as_deref(), Some("mid"));
        assert_eq!(*p.timestamp(), Some(12345));
        assert_eq!(s(p.kind()).as_deref(), Some("ty"));
        assert_eq!(s(p.user_id()).as_deref(), Some("uid"));
        assert_eq!(s(p.app_id()).as_deref(), Some("aid"));
        assert!(
            p.headers().as_ref().unwrap().inner().is_empty(),
            "mapped headers stay out"
        );
    }

    #[test]
    fn other_send_headers_go_to_the_table_as_longstr() {
        // As RabbitMQ 3.10.8 message_properties/1: receipt, content-length and x-* included.
        let h = hs(&[
            ("destination", "/queue/q"),
            ("persistent", "true"),
            ("receipt", "r1"),
            ("content-length", "3"),
            ("x-message-ttl", "100"),
            ("custom", "c"),
            ("custom", "shadowed"),
        ]);
        let p = publish_properties(&h).unwrap();
        let t = p.headers().as_ref().unwrap();
        let keys: Vec<&str> = t.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            ["content-length", "custom", "receipt", "x-message-ttl"]
        );
        assert_eq!(
            t.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongString(LongString::from("100")))
        );
        assert_eq!(
            table_str(&p, "custom").as_deref(),
            Some("c"),
            "first occurrence wins"
        );
    }

    #[test]
    fn message_id_is_not_allowed_on_send() {
        let e = publish_properties(&hs(&[("message-id", "x")])).unwrap_err();
        assert_eq!(e.summary(), "Invalid header");
        assert_eq!(e.detail(), "'message-id' is not allowed on 'SEND'.\n");
    }

    #[test]
    fn bad_integers_and_booleans_are_clear_errors() {
        let e = publish_properties(&hs(&[("priority", "high")])).unwrap_err();
        assert_eq!(e.detail(), "'priority' must be an integer, not 'high'\n");
        let e = publish_properties(&hs(&[("priority", "300")])).unwrap_err();
        assert_eq!(
            e.detail(),
            "'priority' must be an integer from 0 to 255, not '300'\n"
        );
        let e = publish_properties(&hs(&[("timestamp", "-1")])).unwrap_err();
        assert_eq!(e.summary(), "Invalid header");
        let e = publish_properties(&hs(&[("persistent", "yes")])).unwrap_err();
        assert_eq!(
            e.detail(),
            "'persistent' must be true, True, false or False, not 'yes'\n"
        );
        let p = publish_properties(&hs(&[("persistent", "False")])).unwrap();
        assert_eq!(*p.delivery_mode(), None);
        let long = "x".repeat(256);
        let e = publish_properties(&hs(&[("correlation-id", &long)])).unwrap_err();
        assert_eq!(
            e.detail(),
            "'correlation-id' is 256 bytes long; AMQP allows at most 255\n"
        );
        let e = publish_properties(&hs(&[(&long, "v")])).unwrap_err();
        assert!(matches!(e, PropertiesError::TooLong { len: 256, .. }));
    }

    #[test]
    fn booleans_accept_only_four_spellings() {
        for (v, b) in [
            ("true", true),
            ("True", true),
            ("false", false),
            ("False", false),
        ] {
            assert_eq!(parse_bool("durable", v), Ok(b));
        }
        for v in ["TRUE", "yes", "1", "", " true"] {
            assert!(parse_bool("durable", v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn integers_follow_erlang_list_to_integer() {
        assert_eq!(parse_integer::<i64>("h", "+5"), Ok(5));
        assert_eq!(parse_integer::<i64>("h", "  -7 "), Ok(-7));
        assert!(
            parse_integer::<i64>("h", "\t5").is_err(),
            "only spaces are stripped"
        );
        assert!(parse_integer::<i64>("h", "").is_err());
        assert!(parse_integer::<i64>("h", "1_000").is_err());
        assert!(parse_integer::<u8>("h", "-1").is_err());
        assert!(parse_integer::<i64>("h", "99999999999999999999999999999999999999999").is_err());
    }

    fn rabbit_delivery_props() -> BasicProperties {
        let mut t = FieldTable::default();
        t.insert("h1".into(), AMQPValue::LongString("v1".into()));
        t.insert("i".into(), AMQPValue::LongInt(5));
        t.insert("l".into(), AMQPValue::LongLongInt(6));
        t.insert("h2".into(), AMQPValue::LongString("v2".into()));
        BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("gzip".into())
            .with_headers(t)
            .with_delivery_mode(1)
            .with_priority(3)
            .with_correlation_id("cid".into())
            .with_reply_to("rq".into())
            .with_expiration("1000".into())
            .with_message_id("mid".into())
            .with_timestamp(12345)
            .with_type("ty".into())
            .with_user_id("uid".into())
            .with_app_id("aid".into())
    }

    #[test]
    fn message_headers_in_rabbitmq_order() {
        // RabbitMQ 3.10.8 headers/5 for the same properties (its table order was h1, i, l, h2;
        // lapin's table is sorted).
        let mut out = Headers::new();
        message_headers(&rabbit_delivery_props(), &mut out);
        let expected = [
            ("h1", "v1"),
            ("h2", "v2"),
            ("i", "5"),
            ("l", "6"),
            ("app-id", "aid"),
            ("user-id", "uid"),
            ("type", "ty"),
            ("timestamp", "12345"),
            ("amqp-message-id", "mid"),
            ("expiration", "1000"),
            ("reply-to", "/reply-queue/rq"),
            ("correlation-id", "cid"),
            ("priority", "3"),
            ("persistent", "1"),
            ("content-encoding", "gzip"),
            ("content-type", "text/plain"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs(&out), expected);
    }

    #[test]
    fn full_message_frame_headers() {
        let d = Delivery {
            consumer_tag: "T_sub-0",
            delivery_tag: 7,
            exchange: "",
            routing_key: "q",
            redelivered: true,
        };
        let props = BasicProperties::default().with_delivery_mode(2);
        let h = message_frame_headers("session-abc", &d, AckMode::Client, Version::V1_2, &props);
        let expected = [
            ("subscription", "sub-0"),
            ("destination", "/queue/q"),
            ("message-id", "T_sub-0@@session-abc@@7"),
            ("redelivered", "true"),
            ("ack", "T_sub-0@@session-abc@@7"),
            ("persistent", "true"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs(&h), expected);
        let d = Delivery {
            consumer_tag: "Q_/topic/t",
            exchange: "amq.topic",
            routing_key: "t",
            redelivered: false,
            ..d
        };
        let h = message_frame_headers(
            "s",
            &d,
            AckMode::Client,
            Version::V1_1,
            &BasicProperties::default(),
        );
        let keys: Vec<&str> = h.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["destination", "message-id", "redelivered"]);
        assert_eq!(h.get("destination"), Some("/topic/t"));
    }

    #[test]
    fn fuzz_regression_headers_stomp_cannot_carry_are_skipped() {
        // session fuzz target: an empty table key became the header line ":", which no STOMP
        // parser accepts; a NUL in a value ended the frame early.
        let mut t = FieldTable::default();
        t.insert("".into(), AMQPValue::LongString("v".into()));
        t.insert("nul".into(), AMQPValue::LongString("a\0b".into()));
        t.insert("k\0".into(), AMQPValue::LongString("v".into()));
        t.insert("ok".into(), AMQPValue::LongString("v".into()));
        let props = BasicProperties::default()
            .with_headers(t)
            .with_correlation_id("c\0".into())
            .with_reply_to("r\0".into())
            .with_content_type("text/plain".into());
        let mut out = Headers::new();
        message_headers(&props, &mut out);
        let expected = vec![
            ("ok".to_string(), "v".to_string()),
            ("content-type".to_string(), "text/plain".to_string()),
        ];
        assert_eq!(pairs(&out), expected);
    }

    #[test]
    fn reply_to_is_prefixed_on_delivery() {
        let cases = [
            ("foo", "/reply-queue/foo"),
            ("/queue/x", "/queue/x"),
            ("/queuex", "/queuex"),
            ("/reply-queue/a", "/reply-queue/a"),
            ("/temp-queue/t", "/reply-queue//temp-queue/t"),
            ("/reply-queue", "/reply-queue//reply-queue"),
            ("/amq/queue/q", "/amq/queue/q"),
            ("/exchange/e/k", "/exchange/e/k"),
            ("/topic/t", "/topic/t"),
        ];
        for (v, expected) in cases {
            assert_eq!(reply_to_header(v), expected);
        }
    }

    #[test]
    fn improvement_typed_header_values_are_kept() {
        // RabbitMQ drops all of these but longstr/signedint/long.
        let mut t = FieldTable::default();
        t.insert("flag".into(), AMQPValue::Boolean(true));
        t.insert("off".into(), AMQPValue::Boolean(false));
        t.insert("f".into(), AMQPValue::Float(1.5));
        t.insert("d".into(), AMQPValue::Double(-0.25));
        t.insert(
            "dec".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
        );
        t.insert(
            "dec0".into(),
            AMQPValue::DecimalValue(DecimalValue { scale: 3, value: 5 }),
        );
        t.insert("ts".into(), AMQPValue::Timestamp(1_700_000_000));
        t.insert("b".into(), AMQPValue::ShortShortInt(-2));
        t.insert("ub".into(), AMQPValue::ShortShortUInt(200));
        t.insert("s".into(), AMQPValue::ShortInt(-300));
        t.insert("us".into(), AMQPValue::ShortUInt(60000));
        t.insert("ul".into(), AMQPValue::LongUInt(4_000_000_000));
        t.insert("ss".into(), AMQPValue::ShortString("short".into()));
        t.insert("arr".into(), AMQPValue::FieldArray(FieldArray::default()));
        t.insert("tbl".into(), AMQPValue::FieldTable(FieldTable::default()));
        t.insert(
            "bytes".into(),
            AMQPValue::ByteArray(ByteArray::from(vec![1u8])),
        );
        t.insert("void".into(), AMQPValue::Void);
        t.insert("content-length".into(), AMQPValue::LongString("99".into()));
        t.insert(
            "bin".into(),
            AMQPValue::LongString(LongString::from(vec![0xffu8, b'a'])),
        );
        let mut out = Headers::new();
        message_headers(&BasicProperties::default().with_headers(t), &mut out);
        let got: Vec<(String, String)> = pairs(&out);
        let expected = [
            ("b", "-2"),
            ("bin", "\u{fffd}a"),
            ("d", "-0.25"),
            ("dec", "123.45"),
            ("dec0", "0.005"),
            ("f", "1.5"),
            ("flag", "true"),
            ("off", "false"),
            ("s", "-300"),
            ("ss", "short"),
            ("ts", "1700000000"),
            ("ub", "200"),
            ("ul", "4000000000"),
            ("us", "60000"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, expected);
    }

    proptest! {
        #[test]
        fn headers_round_trip_through_amqp(
            // No NUL: STOMP headers cannot carry it (the decoder rejects it).
            custom in proptest::collection::btree_map("x-[a-z]{1,8}", "[^\\x00]{0,20}", 0..5),
            ct in "[a-z/]{1,20}",
            cid in "[^\\x00]{0,20}",
            prio in 0u8..=255,
            ts in any::<u64>(),
        ) {
            let mut h = hs(&[("destination", "/queue/q"), ("content-type", &ct), ("correlation-id", &cid)]);
            h.push("priority", prio.to_string());
            h.push("timestamp", ts.to_string());
            h.push("persistent", "true");
            for (k, v) in &custom {
                h.push(k.clone(), v.clone());
            }
            let props = publish_properties(&h).unwrap();
            let mut out = Headers::new();
            message_headers(&props, &mut out);
            for (k, v) in h.iter().filter(|(k, _)| *k != "destination") {
                prop_assert_eq!(out.get(k), Some(v), "{}", k);
            }
            prop_assert_eq!(out.len(), h.len() - 1);
        }
    }

    fn args(h: &Headers) -> QueueProperties {
        queue_properties(h, QueueFlags::QUEUE).unwrap()
    }

    #[test]
    fn queue_flag_defaults_per_kind() {
        let none = Headers::new();
        let f = |flags| {
            let p = queue_properties(&none, flags).unwrap();
            (p.durable, p.exclusive, p.auto_delete)
        };
        assert_eq!(f(QueueFlags::QUEUE), (true, false, false));
        assert_eq!(f(QueueFlags::SUBSCRIPTION), (false, true, true));
        assert_eq!(f(QueueFlags::NAMED_SUBSCRIPTION), (false, false, true));
        let durable = hs(&[("durable", "true")]);
        let p = queue_properties(&durable, QueueFlags::SUBSCRIPTION).unwrap();
        assert_eq!((p.durable, p.exclusive, p.auto_delete), (true, false, true));
    }

    #[test]
    fn queue_flag_headers_override() {
        let p = args(&hs(&[("durable", "false")]));
        assert_eq!((p.durable, p.exclusive, p.auto_delete), (false, true, true));
        let p = args(&hs(&[
            ("durable", "false"),
            ("exclusive", "false"),
            ("auto-delete", "False"),
        ]));
        assert_eq!(
            (p.durable, p.exclusive, p.auto_delete),
            (false, false, false)
        );
        let p = args(&hs(&[("persistent", "false")]));
        assert!(!p.durable, "persistent is an alias of durable");
        let p = args(&hs(&[("persistent", "false"), ("durable", "true")]));
        assert!(!p.durable, "the first of the aliases wins");
        let e = queue_properties(&hs(&[("exclusive", "yes")]), QueueFlags::QUEUE).unwrap_err();
        assert_eq!(e.summary(), "Invalid header");
        assert_eq!(
            e.detail(),
            "'exclusive' must be true, True, false or False, not 'yes'\n"
        );
    }

    #[test]
    fn queue_arguments_have_amqp_types() {
        let h = hs(&[
            ("x-dead-letter-exchange", " dlx "),
            ("x-dead-letter-routing-key", "dlk"),
            ("x-expires", "60000"),
            ("x-message-ttl", " 100 "),
            ("x-max-length", "10"),
            ("x-max-length-bytes", "1048576"),
            ("x-max-priority", "9"),
            ("x-queue-type", "classic"),
            ("x-max-age", "7D"),
            ("x-stream-max-segment-size-bytes", "500000"),
            ("x-stream-filter-size-bytes", "32"),
            ("x-queue-mode", "lazy"),
            ("x-overflow", "reject-publish"),
            ("x-single-active-consumer", "true"),
            ("x-delivery-limit", "5"),
            ("x-queue-name", "not-an-argument"),
            ("x-unknown", "ignored"),
        ]);
        let t = args(&h).arguments;
        let get = |k: &str| t.inner().get(k).cloned();
        let s = |v: &str| Some(AMQPValue::LongString(LongString::from(v)));
        let l = |v: i64| Some(AMQPValue::LongLongInt(v));
        assert_eq!(get("x-dead-letter-exchange"), s("dlx"));
        assert_eq!(get("x-dead-letter-routing-key"), s("dlk"));
        assert_eq!(get("x-expires"), l(60000));
        assert_eq!(get("x-message-ttl"), l(100));
        assert_eq!(get("x-max-length"), l(10));
        assert_eq!(get("x-max-length-bytes"), l(1_048_576));
        assert_eq!(get("x-max-priority"), l(9));
        assert_eq!(get("x-queue-type"), s("classic"));
        assert_eq!(get("x-max-age"), s("7D"));
        assert_eq!(get("x-stream-max-segment-size-bytes"), l(500_000));
        assert_eq!(get("x-stream-filter-size-bytes"), l(32));
        assert_eq!(get("x-queue-mode"), s("lazy"));
        assert_eq!(get("x-overflow"), s("reject-publish"));
        assert_eq!(
            get("x-single-active-consumer"),
            Some(AMQPValue::Boolean(true))
        );
        assert_eq!(get("x-delivery-limit"), l(5));
        assert_eq!(get("x-queue-name"), None);
        assert_eq!(get("x-unknown"), None);
        assert_eq!(t.inner().len(), 15);
        let e = queue_properties(&hs(&[("x-message-ttl", "1h")]), QueueFlags::QUEUE).unwrap_err();
        assert_eq!(e.detail(), "'x-message-ttl' must be an integer, not '1h'\n");
    }

    #[test]
    fn quorum_and_stream_queues_are_durable_and_shared() {
        for ty in ["quorum", "stream"] {
            let h = hs(&[("x-queue-type", ty)]);
            let p = queue_properties(&h, QueueFlags::SUBSCRIPTION).unwrap();
            assert!(p.durable && !p.exclusive, "{ty}");
        }
    }
}
