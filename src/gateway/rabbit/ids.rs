//! The ids RabbitMQ's STOMP plugin mints and reads back: session ids, consumer tags, message
//! ids and ACK/NACK ids (`rabbit_stomp_util:{consumer_tag/1, create_message_id/3,
//! parse_message_id/1}`, `rabbit_stomp_processor:ack_action/4`). Minted here and nowhere else.

use base64::Engine;

use super::destination::TEMP_QUEUE_ID_PREFIX;
use super::erlang::erl_p;
use super::error::ErrorFrame;
use crate::stomp::{Headers, Version};

/// Prefix of consumer tags for subscriptions with an `id` header.
pub(crate) const INTERNAL_TAG_PREFIX: &str = "T_";

/// Prefix of consumer tags for subscriptions without `id` (keyed by the raw destination).
pub(crate) const QUEUE_TAG_PREFIX: &str = "Q_";

/// Separator of the parts of a message id.
pub(crate) const MESSAGE_ID_SEPARATOR: &str = "@@";

/// A fresh session id as RabbitMQ makes them (`rabbit_guid:string(gen_secure(), "session")`):
/// `session-` + 22 base64url characters.
pub(crate) fn new_session_id() -> String {
    format!("session-{}", random_token())
}

/// 128 random bits as 22 base64url characters (session ids, fan-out hub names).
pub(crate) fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Consumer tag and RabbitMQ's description of a subscription with an `id` (`consumer_tag/1`).
pub(crate) fn tag_for_id(id: &str) -> (String, String) {
    (format!("{INTERNAL_TAG_PREFIX}{id}"), format!("id='{id}'"))
}

/// Consumer tag and description of a subscription without `id`, keyed by the raw destination.
pub(crate) fn tag_for_destination(raw: &str) -> (String, String) {
    (
        format!("{QUEUE_TAG_PREFIX}{raw}"),
        format!("destination='{raw}'"),
    )
}

/// Consumer tag of the reply queue behind `reply-to: /temp-queue/<id>`: its MESSAGE
/// `subscription` header is `/temp-queue/<id>`.
pub(crate) fn temp_queue_tag(id: &str) -> String {
    format!("{INTERNAL_TAG_PREFIX}{TEMP_QUEUE_ID_PREFIX}{id}")
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

/// The MESSAGE `subscription` header for a consumer tag (`T_<id>` → `<id>`; `Q_` tags have none).
pub(crate) fn subscription_header(consumer_tag: &str) -> Option<&str> {
    consumer_tag.strip_prefix(INTERNAL_TAG_PREFIX)
}

/// Header carrying the id in ACK/NACK: `id` in 1.2, `message-id` before.
pub(crate) fn ack_header_name(version: Version) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::rabbit::hs;
    use proptest::prelude::*;

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

    proptest! {
        #[test]
        fn message_id_round_trips(id in "[^@]{0,10}", sess in "[^@]{1,10}", tag in any::<u64>()) {
            let consumer_tag = format!("T_{id}");
            let parsed = parse_message_id(&message_id(&consumer_tag, &sess, tag)).unwrap();
            prop_assert_eq!(parsed, AckId { consumer_tag, session_id: sess, delivery_tag: tag });
        }
    }
}
