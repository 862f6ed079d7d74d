//! STOMP SEND headers -> AMQP 0-9-1 properties and headers table, and the header value syntax
//! RabbitMQ reads (`rabbit_stomp_util:message_properties/1`, `integer_header`, `boolean_header`).
//!
//! Deviation: malformed integers/booleans and over-long short strings are `Invalid header`
//! errors (RabbitMQ crashes with `Processing error`, or silently ignores `exclusive:yes`).

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::error::ErrorFrame;
use crate::stomp::Headers;

/// Errors turning STOMP headers into AMQP values; all are `Invalid header` ERROR frames.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
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

impl ErrorFrame for HeaderError {
    fn summary(&self) -> &'static str {
        "Invalid header"
    }

    fn detail(&self) -> String {
        // RabbitMQ's own text for NotAllowed ends in ".\n"; ours follow its "\n" convention.
        match self {
            HeaderError::NotAllowed { .. } => format!("{self}.\n"),
            _ => format!("{self}\n"),
        }
    }
}

/// Headers RabbitMQ maps to AMQP properties (or uses for routing) and therefore keeps out of
/// the AMQP headers table (`user_header/1`).
const MAPPED_HEADERS: [&str; 13] = [
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
pub(crate) fn parse_bool(header: &str, value: &str) -> Result<bool, HeaderError> {
    match value {
        "true" | "True" => Ok(true),
        "false" | "False" => Ok(false),
        _ => Err(HeaderError::InvalidBoolean {
            header: header.to_string(),
            value: value.to_string(),
        }),
    }
}

/// Bounds of the integer types headers are parsed into.
pub(crate) trait Bounded: TryFrom<i128> {
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
pub(crate) fn parse_integer<T: Bounded>(header: &str, value: &str) -> Result<T, HeaderError> {
    parse_erlang_integer(header, value, value.trim_matches(' '))
}

/// Parses `digits` (`[+-]?[0-9]+`, nothing trimmed) into `T`; errors quote `value`.
pub(crate) fn parse_erlang_integer<T: Bounded>(
    header: &str,
    value: &str,
    digits: &str,
) -> Result<T, HeaderError> {
    let unsigned = digits
        .strip_prefix('-')
        .or_else(|| digits.strip_prefix('+'))
        .unwrap_or(digits);
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::InvalidInteger {
            header: header.to_string(),
            value: value.to_string(),
        });
    }
    let out_of_range = || HeaderError::IntegerOutOfRange {
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

fn short(header: &str, value: &str) -> Result<ShortString, HeaderError> {
    ShortString::try_new(value).map_err(|_| HeaderError::TooLong {
        header: header.to_string(),
        len: value.len(),
    })
}

/// Rejects headers forbidden on SEND (`HEADERS_NOT_ON_SEND`: `message-id`), RabbitMQ's first
/// SEND check: `Invalid header`, body `'message-id' is not allowed on 'SEND'.\n`.
pub(crate) fn check_send_headers(headers: &Headers) -> Result<(), HeaderError> {
    if headers.contains("message-id") {
        return Err(HeaderError::NotAllowed {
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
/// [`message_headers`](super::message::message_headers)) and the session swaps a `/temp-queue/` for its queue name.
/// Deviation: a `reply-to` that is no valid destination crashes RabbitMQ; we pass it through.
pub(crate) fn publish_properties(headers: &Headers) -> Result<BasicProperties, HeaderError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::rabbit::hs;
    use crate::gateway::rabbit::message::header_value;

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
        assert!(matches!(e, HeaderError::TooLong { len: 256, .. }));
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
}
