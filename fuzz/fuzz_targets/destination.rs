//! Destination grammar, SEND/SUBSCRIBE planning and the header <-> AMQP property mapping.
//!
//! Checks: no panic on any destination or header set; a parsed destination prints in a form
//! that parses back to itself; MESSAGE destinations parse back to the route they came from;
//! message ids round-trip; every error renders.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use stompgate::gateway::rabbit::destination::{self, Destination};
use stompgate::gateway::rabbit::error::ErrorFrame;
use stompgate::gateway::rabbit::plan::{self, PlanConfig};
use stompgate::gateway::rabbit::queue::{self, QueueFlags};
use stompgate::gateway::rabbit::queue_name::{self, TermEncoding};
use stompgate::gateway::rabbit::ids;
use stompgate::stomp::{Headers, Version};

/// Header names the planners look at, so the fuzzer reaches them without guessing spellings.
const NAMES: &[&str] = &[
    "destination",
    "id",
    "ack",
    "durable",
    "persistent",
    "auto-delete",
    "exclusive",
    "x-queue-name",
    "x-queue-type",
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-priority",
    "x-single-active-consumer",
    "x-dead-letter-exchange",
    "x-stream-offset",
    "prefetch-count",
    "reply-to",
    "message-id",
    "content-type",
    "priority",
    "timestamp",
    "expiration",
    "amqp-message-id",
    "correlation-id",
    "receipt",
    "content-length",
    "requeue",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    destination: String,
    headers: Vec<(Name, String)>,
    exchange: String,
    routing_key: String,
    consumer_tag: String,
    session_id: String,
    delivery_tag: u64,
    version: u8,
    binaries: bool,
}

fn headers(input: &Input) -> Headers {
    let mut h = Headers::new();
    for (name, value) in &input.headers {
        match name {
            Name::Known(i) => {
                let name = NAMES[usize::from(*i) % NAMES.len()];
                // The destination under test is the one the planners see.
                let value = if name == "destination" {
                    input.destination.as_str()
                } else {
                    value.as_str()
                };
                h.push(name, value);
            }
            Name::Other(name) => h.push(name.as_str(), value.as_str()),
        }
    }
    h
}

fn check_parse(s: &str) {
    match destination::parse(s) {
        Ok(dest) => {
            let printed = dest.to_string();
            assert_eq!(
                destination::parse(&printed).as_ref(),
                Ok(&dest),
                "{s:?} printed as {printed:?}"
            );
            match (&dest, dest.publish_route()) {
                (Destination::TempQueue(_), Err(e)) => {
                    let _ = e.detail();
                }
                (Destination::TempQueue(_), Ok(r)) => panic!("temp queue routed: {r:?}"),
                (_, Err(e)) => panic!("{dest:?} has no route: {e}"),
                (_, Ok(_)) => {}
            }
            let _ = destination::reply_to_temp_queue(s);
        }
        Err(e) => {
            let _ = (e.summary(), e.detail(), e.to_string());
        }
    }
}

fuzz_target!(|input: Input| {
    check_parse(&input.destination);

    let config = PlanConfig {
        term_encoding: if input.binaries {
            TermEncoding::Binaries
        } else {
            TermEncoding::Strings
        },
        ..PlanConfig::default()
    };
    let h = headers(&input);
    match plan::plan_send(&h, &config) {
        Ok(plan) => assert!(
            plan.declare.is_none() || plan.route.exchange.is_empty(),
            "only /queue/ SENDs declare"
        ),
        Err(e) => {
            let _ = (e.summary(), e.detail());
        }
    }
    match plan::plan_subscribe(&h, &config) {
        Ok(plan) => {
            assert!(!plan.consumer_tag.is_empty());
            let _ = plan.subscription_header();
        }
        Err(e) => {
            let _ = (e.summary(), e.detail());
        }
    }
    if let Ok(dest) = destination::parse(&input.destination) {
        let _ = plan::durable_unsubscribe_queue(&dest, &h, &config);
    }
    let _ = plan::consumer_tag("UNSUBSCRIBE", &h);
    for flags in [QueueFlags::QUEUE, QueueFlags::SUBSCRIPTION] {
        if let Err(e) = queue::queue_properties(&h, flags) {
            let _ = (e.summary(), e.detail());
        }
    }
    let _ = plan::consumer_arguments(&h);
    let version = [Version::V1_0, Version::V1_1, Version::V1_2][usize::from(input.version % 3)];
    if let Err(e) = ids::ack_id("ACK", version, &h) {
        let _ = (e.summary(), e.detail());
    }

    // A MESSAGE destination names where the message was published (AMQP short strings).
    let (x, rk) = (input.exchange.as_str(), input.routing_key.as_str());
    if x.len() <= 255 && rk.len() <= 255 && !rk.is_empty() {
        let printed = destination::message_destination(x, rk);
        let dest = destination::parse(&printed).unwrap_or_else(|e| panic!("{printed:?}: {e}"));
        let route = dest.publish_route().expect("a MESSAGE destination routes");
        assert_eq!(
            (route.exchange.as_str(), route.routing_key.as_str()),
            (x, rk)
        );
    }

    // Message ids: the consumer tag and session id never contain the separator in practice.
    let (tag, session) = (input.consumer_tag.as_str(), input.session_id.as_str());
    let id = ids::message_id(tag, session, input.delivery_tag);
    let parsed = ids::parse_message_id(&id);
    if !tag.contains('@') && !session.contains('@') {
        let parsed = parsed.expect("own message id parses");
        assert_eq!(
            (
                parsed.consumer_tag.as_str(),
                parsed.session_id.as_str(),
                parsed.delivery_tag
            ),
            (tag, session, input.delivery_tag)
        );
    }
    let _ = ids::parse_message_id(&input.destination);
    let a = queue_name::subscription_queue_name_with(rk, tag, config.term_encoding);
    assert_eq!(
        a,
        queue_name::subscription_queue_name_with(rk, tag, config.term_encoding)
    );
    assert!(a.len() <= 255, "queue names are AMQP short strings");
});
