//! `queue.declare` flags and arguments from STOMP headers (`rabbit_stomp_util:
//! {build_params/2, build_arguments/1}`, `rabbit_routing_util:queue_declare_method/3`).
//!
//! Deviation: queue arguments RabbitMQ added after 3.10.8 (`x-max-age`, `x-stream-*`) and a few
//! it never mapped (`x-queue-mode`, `x-overflow`, ...) are declared with their AMQP types.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::headers::{HeaderError, parse_bool, parse_integer};
use crate::stomp::Headers;

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
    pub(crate) fn into_declare(self, name: String, per_session: bool) -> QueueDeclare {
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

/// Queue-property headers → `queue.declare` flags and arguments (`build_params/2`,
/// `build_arguments/1`, `queue_declare_method/3`).
///
/// `durable` (alias `persistent`, the first of the two in the frame wins), `auto-delete` and
/// `exclusive` override `defaults`; booleans are `true/True/false/False` only. The arguments
/// are listed in `QUEUE_ARGUMENTS`; `x-queue-name` names the queue and is not one.
/// `x-queue-type: quorum|stream` forces durable and non-exclusive (RabbitMQ >= 3.13).
pub fn queue_properties(
    headers: &Headers,
    defaults: QueueFlags,
) -> Result<QueueProperties, HeaderError> {
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
    use crate::gateway::rabbit::error::ErrorFrame;
    use crate::gateway::rabbit::hs;

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
