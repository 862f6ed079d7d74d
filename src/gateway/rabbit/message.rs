//! AMQP 0-9-1 deliveries -> MESSAGE frame headers (`rabbit_stomp_util:{headers/5,
//! message_headers/1, headers_post_process/1}`).
//!
//! Improvement: MESSAGE keeps typed AMQP header values RabbitMQ drops (see [`message_headers`]).

use lapin::BasicProperties;
use lapin::types::{AMQPValue, ShortString};

use super::destination::{REPLY_QUEUE_PREFIX, REPLY_TO_KNOWN_PREFIXES, message_destination};
use super::ids::{message_id, subscription_header};
use super::plan::AckMode;
use crate::stomp::{Headers, Version};

/// RabbitMQ's `headers_post_process/1`: a `reply-to` not starting with `/exchange`, `/topic`,
/// `/queue`, `/amq/queue` or `/reply-queue/` gets `/reply-queue/` prepended.
pub(crate) fn reply_to_header(value: &str) -> String {
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
pub(crate) fn header_value(value: &AMQPValue) -> Option<String> {
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
pub(crate) fn message_headers(delivery_props: &BasicProperties, out: &mut Headers) {
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
pub(crate) struct Envelope<'a> {
    pub consumer_tag: &'a str,
    pub delivery_tag: u64,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub redelivered: bool,
}

/// All MESSAGE headers but `content-length`, in RabbitMQ's order (`headers/5`):
/// `subscription` (for `T_` tags), `destination`, `message-id`, `redelivered`, `ack` (STOMP 1.2
/// with client acks; same value as `message-id`), then [`message_headers`].
pub(crate) fn message_frame_headers(
    session_id: &str,
    delivery: &Envelope<'_>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::rabbit::headers::publish_properties;
    use crate::gateway::rabbit::hs;
    use lapin::types::{ByteArray, DecimalValue, FieldArray};
    use lapin::types::{FieldTable, LongString};
    use proptest::prelude::*;

    fn pairs(h: &Headers) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
        let d = Envelope {
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
        let d = Envelope {
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
}
