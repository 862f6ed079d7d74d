//! Queue names RabbitMQ derives for subscriptions: md5 of the Erlang external term format of
//! `{Name, Id}` for durable ones, of a random guid otherwise (`rabbit_stomp_util:
//! subscription_queue_name/3`, `rabbit_guid:string/2`).

use base64::Engine;
use md5::{Digest, Md5};

/// Prefix of subscription queue names RabbitMQ generates.
pub(crate) const SUBSCRIPTION_QUEUE_PREFIX: &str = "stomp-subscription";

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
pub(crate) fn random_subscription_queue_name() -> String {
    let random = uuid::Uuid::new_v4();
    guid_string(&Md5::digest(random.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription_queue_name(name: &str, subscription_id: &str) -> String {
        subscription_queue_name_with(name, subscription_id, TermEncoding::Strings)
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
}
