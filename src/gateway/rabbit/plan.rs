//! SUBSCRIBE, UNSUBSCRIBE and SEND as data: what each does in AMQP, in RabbitMQ's order
//! (`rabbit_stomp_processor:{do_subscribe/4, do_send/4, ensure_reply_queue/2,
//! maybe_delete_durable_sub/3, subscribe_arguments/1}`). The session turns plans into methods.
//!
//! Deviations from RabbitMQ 3.10.8 (each one marked `Deviation:` where it is implemented):
//! * Where RabbitMQ crashes with `Processing error` (bad `ack`, bad integers, an `id` starting with
//!   `/temp-queue/` on SUBSCRIBE, `durable:True` without `id`), we answer a descriptive error.
//! * Transient (non-durable, no `x-queue-name`) exchange/topic subscription queues are exclusive,
//!   as later releases made them (rabbitmq-server #6955, #13016); 3.10.8 declared them
//!   non-exclusive.
//! * Quorum/stream queues are forced durable and non-exclusive, as later releases do.
//! * Extra consumer argument `x-priority` (RabbitMQ's STOMP plugin has none).

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use super::destination::{
    self, DEFAULT_TOPIC_EXCHANGE, Destination, DestinationError, MAX_AMQP_NAME, Route,
    TEMP_QUEUE_ID_PREFIX,
};
use super::error::ErrorFrame;
use super::headers::{self, HeaderError};
use super::ids;
use super::queue::{QueueDeclare, QueueFlags};
use super::queue_name::{self, TermEncoding};
use crate::stomp::{Headers, Version};

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
    pub(crate) fn no_ack(self) -> bool {
        self == AckMode::Auto
    }

    /// Whether ACK/NACK are cumulative (`multiple = true`), as for `client`.
    pub(crate) fn multiple(self) -> bool {
        self == AckMode::Client
    }

    /// Whether MESSAGE frames carry an `ack` header (STOMP 1.2, client modes).
    pub(crate) fn message_has_ack_header(self, version: Version) -> bool {
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
    pub(crate) fn is_transient(&self) -> bool {
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
        ids::subscription_header(&self.consumer_tag)
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

/// SUBSCRIBE/SEND planning errors.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error(transparent)]
    Properties(#[from] HeaderError),
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

fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "True"))
}

/// `has_durable_header/1`: `durable` or `persistent` is `true`/`True`.
pub(crate) fn has_durable_header(headers: &Headers) -> bool {
    is_true(headers.get("durable")) || is_true(headers.get("persistent"))
}

/// RabbitMQ's `validate_frame/3` for SUBSCRIBE and UNSUBSCRIBE: a durable subscription needs an
/// `id`. Runs before the destination is looked at. RabbitMQ checks only the exact value `true`
/// and crashes later on `True`; we reject both.
pub(crate) fn require_id_for_durable(headers: &Headers) -> Result<(), PlanError> {
    if has_durable_header(headers) && !headers.contains("id") {
        Err(PlanError::MissingId)
    } else {
        Ok(())
    }
}

/// Consumer tag and description of a SUBSCRIBE/UNSUBSCRIBE (`consumer_tag/1`): `T_<id>` with
/// an `id`, else `Q_<raw destination>`.
pub fn consumer_tag(command: &str, headers: &Headers) -> Result<(String, String), PlanError> {
    match headers.get("id") {
        Some(id) if id.starts_with(TEMP_QUEUE_ID_PREFIX) => Err(PlanError::InvalidId {
            command: command.to_string(),
        }),
        Some(id) => Ok(ids::tag_for_id(id)),
        None => match headers.get("destination") {
            Some(d) => Ok(ids::tag_for_destination(d)),
            None => Err(PlanError::MissingIdOrDestination),
        },
    }
}

/// Full SUBSCRIBE pipeline in RabbitMQ's order: durable `id` check, destination, then
// [`subscribe_plan_with`].
pub fn plan_subscribe(headers: &Headers, config: &PlanConfig) -> Result<SubscribePlan, PlanError> {
    require_id_for_durable(headers)?;
    let dest = destination::destination_header("SUBSCRIBE", headers)?;
    subscribe_plan_with(&dest, headers.get("id"), headers, config)
}

/// What a SUBSCRIBE to `dest` does (`do_subscribe/4` + `ensure_endpoint(source, ...)`).
///
/// Queues per kind:
/// * `/exchange/`, `/topic/`: queue `x-queue-name`, else for durable subscriptions
///   [`subscription_queue_name_with`](queue_name::subscription_queue_name_with) of (pattern or routing key, id), else
///   `stomp-subscription-<random>`; declared with [`QueueFlags::SUBSCRIPTION`] (or
///   [`QueueFlags::NAMED_SUBSCRIPTION`] with `x-queue-name`) and the headers; bound to the
///   exchange with the pattern (`""` without one) or to the topic exchange with the key.
/// * `/queue/<q>`: declare `<q>` ([`QueueFlags::QUEUE`]) once per session, no binding.
/// * `/amq/queue/<q>`, `/reply-queue/<q>`: consume `<q>`, nothing declared.
/// * `/temp-queue/`: `Invalid destination` (`'...' is not a valid destination for 'SUBSCRIBE'`).
fn subscribe_plan_with(
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
        Some(v) => Some(headers::parse_integer::<u16>("prefetch-count", v)?),
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
            let props = super::queue::queue_properties(headers, flags)?;
            let name = match (x_queue_name, subscription_id) {
                (Some(name), _) => name.to_string(),
                (None, Some(id)) if durable_subscription => {
                    queue_name::subscription_queue_name_with(
                        dest.subscription_key(),
                        id,
                        config.term_encoding,
                    )
                }
                _ => queue_name::random_subscription_queue_name(),
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
            let props = super::queue::queue_properties(headers, QueueFlags::QUEUE)?;
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
            ids::tag_for_id(id)
        }
        None => {
            let raw = headers
                .get("destination")
                .map_or_else(|| dest.to_string(), str::to_string);
            ids::tag_for_destination(&raw)
        }
    };

    // Both become AMQP short strings (basic.consume, queue.declare).
    let too_long = |header: &str, len: usize| {
        PlanError::Properties(HeaderError::TooLong {
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
pub fn consumer_arguments(headers: &Headers) -> Result<FieldTable, HeaderError> {
    let mut args = FieldTable::default();
    if let Some(v) = headers.get("x-stream-offset") {
        let value = match v {
            "first" | "last" | "next" => Some(AMQPValue::LongString(LongString::from(v))),
            _ => {
                if let Some(n) = v.strip_prefix("offset=") {
                    Some(AMQPValue::LongLongInt(headers::parse_erlang_integer(
                        "x-stream-offset",
                        v,
                        n,
                    )?))
                } else if let Some(t) = v.strip_prefix("timestamp=") {
                    Some(AMQPValue::Timestamp(headers::parse_erlang_integer(
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
        let b = headers::parse_bool("x-stream-match-unfiltered", v)?;
        args.insert(
            ShortString::from("x-stream-match-unfiltered"),
            AMQPValue::Boolean(b),
        );
    }
    if let Some(v) = headers.get("x-priority") {
        let p = headers::parse_integer::<i32>("x-priority", v)?;
        args.insert(ShortString::from("x-priority"), AMQPValue::LongInt(p));
    }
    Ok(args)
}

/// Full SEND pipeline in RabbitMQ's order: forbidden `message-id`, destination, queue declare
/// (for `/queue/`), then AMQP properties.
pub fn plan_send(headers: &Headers, config: &PlanConfig) -> Result<SendPlan, PlanError> {
    headers::check_send_headers(headers)?;
    let dest = destination::destination_header("SEND", headers)?;
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
            super::queue::queue_properties(headers, QueueFlags::QUEUE)?
                .into_declare(q.clone(), true),
        ),
        _ => None,
    };
    let properties = headers::publish_properties(headers)?;
    let reply_to_temp_queue = headers
        .get("reply-to")
        .and_then(destination::reply_to_temp_queue);
    if let Some(id) = &reply_to_temp_queue {
        // The reply queue's consumer tag is an AMQP short string.
        let len = temp_queue_plan(id).consumer_tag.len();
        if len > MAX_AMQP_NAME {
            return Err(HeaderError::TooLong {
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

/// See [`TempQueuePlan`].
pub(crate) fn temp_queue_plan(id: &str) -> TempQueuePlan {
    TempQueuePlan {
        consumer_tag: ids::temp_queue_tag(id),
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
                .map(|id| queue_name::subscription_queue_name_with(rk, id, config.term_encoding))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::rabbit::destination::{parse, reply_to_temp_queue};
    use crate::gateway::rabbit::hs;
    use crate::gateway::rabbit::ids::subscription_header;

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
    fn only_queue_destinations_declare_on_send() {
        let declares = |d: &str| {
            plan_send(&hs(&[("destination", d)]), &PlanConfig::default())
                .unwrap()
                .declare
                .is_some()
        };
        assert!(declares("/queue/q"));
        for d in ["/amq/queue/q", "/topic/t", "/exchange/x", "/reply-queue/r"] {
            assert!(!declares(d), "{d}");
        }
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
}
