//! STOMP destination grammar and where a destination routes (`rabbit_routing_util:
//! {parse_endpoint/1, parse_routing/2, dest_prefixes/0}`, `rabbit_stomp_util:
//! format_destination/2`, `rabbit_stomp_processor:with_destination/4`).
//!
//! Deviation: `%XX` unescaping. RabbitMQ only turns `%2F` back into `/`, while
//! `format_destination` also escapes `%`, bytes < 32 and bytes > 127. We additionally decode
//! `%25` and `%XX` for those bytes (uppercase hex, as RabbitMQ emits), so a MESSAGE `destination`
//! can be used to reply. Only names containing such a literal sequence (e.g. `a%25b`) resolve
//! differently.

use std::fmt;

use super::erlang::erl_p;
use super::error::ErrorFrame;
use crate::stomp::Headers;

/// The list in RabbitMQ's `Unknown destination` body (`all_dest_prefixes/0`, whose reply-queue
/// prefix really has the trailing slash).
const VALID_DESTINATION_TYPES: &str =
    "/temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/";

/// Exchange `/topic/` destinations publish to and bind on (`stomp.default_topic_exchange`).
pub(crate) const DEFAULT_TOPIC_EXCHANGE: &str = "amq.topic";

/// `reply-to` values starting with one of these are kept on MESSAGE; others get
/// [`REPLY_QUEUE_PREFIX`] prepended (`rabbit_routing_util:dest_prefixes/0`).
pub(crate) const REPLY_TO_KNOWN_PREFIXES: [&str; 5] = [
    "/exchange",
    "/topic",
    "/queue",
    "/amq/queue",
    "/reply-queue/",
];

/// Prefix RabbitMQ prepends to a bare `reply-to` on MESSAGE.
pub(crate) const REPLY_QUEUE_PREFIX: &str = "/reply-queue/";

/// Subscription ids may not start with this (it names temp-queue reply consumers).
pub(crate) const TEMP_QUEUE_ID_PREFIX: &str = "/temp-queue/";

/// Longest AMQP short string: names and routing keys longer than this cannot reach the broker
/// (lapin panics building the frame; found by the `session` fuzz target).
pub(crate) const MAX_AMQP_NAME: usize = 255;

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

/// Reads and parses the `destination` header (RabbitMQ's `with_destination/4`).
pub(crate) fn destination_header(
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
fn unescape(s: &str) -> String {
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
fn escape(s: &str) -> String {
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
    pub(crate) fn publish_route_with(
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
    pub(crate) fn routing(&self, default_topic_exchange: &str) -> Option<(String, String)> {
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

    /// The name part hashed into durable subscription queue names (`parse_routing/1`'s key:
    /// the pattern or `""` for exchanges, the routing key for topics).
    pub(crate) fn subscription_key(&self) -> &str {
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

/// The temp-queue id of a `reply-to` value naming `/temp-queue/<id>` (`ensure_reply_to/2`).
pub fn reply_to_temp_queue(reply_to: &str) -> Option<String> {
    match parse(reply_to) {
        Ok(Destination::TempQueue(id)) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
}
