//! The session state machine driven by an arbitrary sequence of client frames, broker replies,
//! deliveries, confirms and timer ticks, the way `gateway::connection` drives it.
//!
//! Checks: no panic; nothing is emitted after `Close`, and `Close` comes once; at most one
//! broker request is outstanding and no frame is read while one is; only ERROR frames go out
//! before CONNECTED; heart-beats only when negotiated; every frame sent survives encode ->
//! decode; every name handed to the broker fits an AMQP short string (lapin panics otherwise).
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldTable, LongString, ShortString};
use libfuzzer_sys::fuzz_target;
use stompgate::gateway::rabbit::plan::PlanConfig;
use stompgate::gateway::rabbit::session::{
    Action, BrokerFailure, BrokerReply, BrokerRequest, ChannelOp, ConfirmOutcome, ConnectFailure,
    Delivery, Session, SessionConfig,
};
use stompgate::stomp::version::HeartBeat;
use stompgate::stomp::{Command, Decoded, Decoder, Frame, Limits, Version, encode};

const COMMANDS: &[&str] = &[
    "CONNECT",
    "STOMP",
    "SEND",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "ACK",
    "NACK",
    "BEGIN",
    "COMMIT",
    "ABORT",
    "DISCONNECT",
    "MESSAGE",
    "BOGUS",
];

const NAMES: &[&str] = &[
    "accept-version",
    "heart-beat",
    "login",
    "passcode",
    "host",
    "destination",
    "id",
    "ack",
    "receipt",
    "transaction",
    "message-id",
    "subscription",
    "durable",
    "persistent",
    "auto-delete",
    "exclusive",
    "x-queue-name",
    "x-queue-type",
    "reply-to",
    "requeue",
    "prefetch-count",
    "content-type",
    "priority",
    "content-length",
];

const VALUES: &[&str] = &[
    "1.0",
    "1.1",
    "1.2",
    "1.0,1.1,1.2",
    "guest",
    "/",
    "true",
    "false",
    "auto",
    "client",
    "client-individual",
    "0,0",
    "1000,1000",
    "100,0",
    "0,100",
    "/queue/fuzz",
    "/topic/fuzz",
    "/exchange/amq.topic/fuzz",
    "/amq/queue/fuzz",
    "/reply-queue/fuzz",
    "/temp-queue/r",
    "/temp-queue/s",
    "sub-0",
    "sub-1",
    "r-1",
    "quorum",
    "5",
];

#[derive(Arbitrary, Debug)]
enum Value {
    Known(u8),
    /// `tx-0`, `tx-1`, `tx-2`.
    Tx(u8),
    /// The ack id of a MESSAGE sent earlier.
    AckId(u8),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Any(String),
}

#[derive(Arbitrary, Debug)]
struct FuzzFrame {
    command: u8,
    headers: Vec<(Name, Value)>,
    body: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Reply {
    /// The reply the request asked for, as a healthy broker gives it.
    Expected,
    ConnectFailed(u8),
    Failed,
    /// Possibly not the reply the request expects (a driver bug; must still be safe).
    Done,
    Connected,
    TempQueueCreated,
}

#[derive(Arbitrary, Debug)]
enum Amqp {
    Long(String),
    Bytes(Vec<u8>),
    Bool(bool),
    Int(i32),
    Double(f64),
    Decimal(u8, u32),
    Timestamp(u64),
    Table,
}

#[derive(Arbitrary, Debug)]
struct FuzzDelivery {
    consumer: u8,
    delivery_tag: u64,
    exchange: String,
    routing_key: String,
    redelivered: bool,
    headers: Vec<(String, Amqp)>,
    reply_to: Option<String>,
    content_type: Option<String>,
    delivery_mode: Option<u8>,
    body: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Frame(FuzzFrame),
    Reply(Reply),
    Confirm {
        pick: u8,
        outcome: u8,
    },
    Deliver(Box<FuzzDelivery>),
    Cancelled(u8),
    Shared(u8),
    BrokerFailure,
    SlowConsumer,
    Shutdown,
    CodecError,
    /// Advance the clock this many milliseconds (times 64) and fire the timers.
    Tick(u16),
    Received,
    Sent,
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: u8,
    ops: Vec<Op>,
}

#[derive(Debug, PartialEq)]
enum Pending {
    Connect,
    TempQueue,
    Other,
}

/// What the harness, acting as the connection driver, has seen.
struct Driver {
    session: Session,
    now: Instant,
    pending: Option<Pending>,
    closed: bool,
    connected: bool,
    consumer_tags: Vec<String>,
    confirm_ids: Vec<u64>,
    ack_ids: Vec<String>,
    temp_queues: u32,
}

/// Lapin panics on a short string over 255 bytes.
fn short(what: &str, s: &str) {
    assert!(
        s.len() <= 255,
        "{what} of {} bytes handed to the broker",
        s.len()
    );
}

fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Driver {
    fn drain(&mut self) {
        while let Some(action) = self.session.poll_action() {
            assert!(!self.closed, "{action:?} after Close");
            match action {
                Action::Close(_) => self.closed = true,
                Action::Send(frame) => self.sent(frame),
                Action::SendEncoded(_) => assert!(self.connected),
                Action::SendHeartbeat => {
                    assert!(self.connected && self.session.heartbeat().send_ms > 0)
                }
                Action::Broker(request) => self.request(request),
            }
        }
        assert_eq!(self.session.is_closed(), self.closed);
        if self.closed {
            assert!(!self.session.wants_input());
            assert_eq!(self.session.next_timeout(), None);
        }
        if self.session.wants_input() {
            assert!(
                self.pending.is_none(),
                "reads frames while the broker works"
            );
        }
    }

    fn sent(&mut self, frame: Frame) {
        match frame.command {
            Command::Connected => {
                assert!(!self.connected, "second CONNECTED");
                self.connected = true;
            }
            Command::Error => {}
            _ => assert!(self.connected, "{} before CONNECTED", frame.command),
        }
        if frame.command == Command::Message {
            let header = if self.session.version() == Version::V1_2 {
                "ack"
            } else {
                "message-id"
            };
            if let Some(id) = frame.get(header) {
                self.ack_ids.push(id.to_string());
            }
        }
        round_trip(&frame);
    }

    fn request(&mut self, request: BrokerRequest) {
        assert!(self.pending.is_none(), "second broker request in flight");
        let pending = match &request {
            BrokerRequest::Connect { vhost, .. } => {
                assert!(!self.connected);
                short("vhost", vhost);
                Pending::Connect
            }
            BrokerRequest::Flush => Pending::Other,
            BrokerRequest::Channel(op) => {
                assert!(self.connected);
                match op {
                    ChannelOp::Subscribe(plan) => {
                        short("queue", &plan.queue);
                        short("consumer tag", &plan.consumer_tag);
                        if let Some(d) = &plan.declare {
                            short("queue", &d.queue);
                        }
                        if let Some(b) = &plan.binding {
                            short("exchange", &b.exchange);
                            short("routing key", &b.routing_key);
                        }
                        self.consumer_tags.push(plan.consumer_tag.clone());
                        Pending::Other
                    }
                    ChannelOp::Unsubscribe {
                        consumer_tag,
                        delete_queue,
                    } => {
                        short("consumer tag", consumer_tag);
                        if let Some(q) = delete_queue {
                            short("queue", q);
                        }
                        Pending::Other
                    }
                    ChannelOp::Publish(p) => {
                        short("exchange", &p.route.exchange);
                        short("routing key", &p.route.routing_key);
                        if let Some(d) = &p.declare_queue {
                            short("queue", &d.queue);
                        }
                        if let Some(id) = p.confirm_id {
                            self.confirm_ids.push(id);
                        }
                        Pending::Other
                    }
                    ChannelOp::CreateTempQueue(plan) => {
                        short("consumer tag", &plan.consumer_tag);
                        self.consumer_tags.push(plan.consumer_tag.clone());
                        Pending::TempQueue
                    }
                    ChannelOp::Ack { .. } | ChannelOp::Nack { .. } => Pending::Other,
                }
            }
        };
        self.pending = Some(pending);
    }

    fn frame(&self, f: &FuzzFrame) -> Frame {
        let command = COMMANDS[usize::from(f.command) % COMMANDS.len()];
        let mut frame = Frame::new(Command::from_bytes(command.as_bytes()));
        for (name, value) in &f.headers {
            let name = match name {
                Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()].to_string(),
                Name::Any(s) => s.clone(),
            };
            let value = match value {
                Value::Known(i) => VALUES[usize::from(*i) % VALUES.len()].to_string(),
                Value::Tx(i) => format!("tx-{}", i % 3),
                Value::AckId(i) => pick(&self.ack_ids, *i).unwrap_or_default(),
                Value::Any(s) => s.clone(),
            };
            // Only what the decoder can produce: no NUL, no empty name.
            if name.is_empty() || name.contains('\0') || value.contains('\0') {
                continue;
            }
            frame.headers.push(name, value);
        }
        frame.with_body(f.body.clone())
    }

    fn reply(&mut self, reply: &Reply) {
        let pending = self.pending.take();
        let reply = match reply {
            Reply::Expected => match pending {
                Some(Pending::Connect) => BrokerReply::Connected {
                    server_product: Some("RabbitMQ/4.1.0".into()),
                },
                Some(Pending::TempQueue) => {
                    self.temp_queues += 1;
                    BrokerReply::TempQueueCreated {
                        queue: format!("amq.gen-{}", self.temp_queues),
                    }
                }
                _ => BrokerReply::Done,
            },
            Reply::ConnectFailed(n) => BrokerReply::ConnectFailed(match n % 4 {
                0 => ConnectFailure::AccessRefused,
                1 => ConnectFailure::VhostDenied,
                2 => ConnectFailure::ConnectionLimit,
                _ => ConnectFailure::Unavailable("connection refused".into()),
            }),
            Reply::Failed => BrokerReply::Failed(failure()),
            Reply::Done => BrokerReply::Done,
            Reply::Connected => BrokerReply::Connected {
                server_product: None,
            },
            Reply::TempQueueCreated => BrokerReply::TempQueueCreated {
                queue: "amq.gen-x".into(),
            },
        };
        self.session.handle_broker_reply(reply);
    }

    fn deliver(&mut self, d: &FuzzDelivery) {
        let mut table = FieldTable::default();
        for (name, value) in &d.headers {
            let value = match value {
                Amqp::Long(s) => AMQPValue::LongString(LongString::from(s.as_str())),
                Amqp::Bytes(b) => AMQPValue::LongString(LongString::from(b.clone())),
                Amqp::Bool(b) => AMQPValue::Boolean(*b),
                Amqp::Int(n) => AMQPValue::LongInt(*n),
                Amqp::Double(f) => AMQPValue::Double(*f),
                Amqp::Decimal(scale, value) => AMQPValue::DecimalValue(DecimalValue {
                    scale: *scale,
                    value: *value,
                }),
                Amqp::Timestamp(t) => AMQPValue::Timestamp(*t),
                Amqp::Table => AMQPValue::FieldTable(FieldTable::default()),
            };
            table.insert(ShortString::from(truncated(name.clone(), 255)), value);
        }
        let mut props = BasicProperties::default().with_headers(table);
        if let Some(r) = &d.reply_to {
            props = props.with_reply_to(ShortString::from(truncated(r.clone(), 255)));
        }
        if let Some(c) = &d.content_type {
            props = props.with_content_type(ShortString::from(truncated(c.clone(), 255)));
        }
        if let Some(m) = d.delivery_mode {
            props = props.with_delivery_mode(m);
        }
        let consumer_tag = pick(&self.consumer_tags, d.consumer).unwrap_or_else(|| "T_x".into());
        self.session.handle_delivery(Delivery {
            consumer_tag,
            delivery_tag: d.delivery_tag,
            exchange: truncated(d.exchange.clone(), 255),
            routing_key: truncated(d.routing_key.clone(), 255),
            redelivered: d.redelivered,
            properties: props,
            body: Bytes::from(d.body.clone()),
        });
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Frame(f) => {
                // The driver reads no frame while the session is busy or closed.
                if !self.session.wants_input() {
                    return;
                }
                let frame = self.frame(f);
                self.session.note_received(self.now);
                self.session.handle_frame(frame);
            }
            Op::Reply(r) => self.reply(r),
            Op::Confirm { pick: i, outcome } => {
                let id = pick(&self.confirm_ids, *i).unwrap_or(u64::from(*i));
                let outcome = match outcome % 3 {
                    0 => ConfirmOutcome::Ack,
                    1 => ConfirmOutcome::Nack,
                    _ => ConfirmOutcome::Unroutable {
                        reply_text: "NO_ROUTE".into(),
                    },
                };
                self.session.handle_confirm(id, outcome);
            }
            Op::Deliver(d) => self.deliver(d),
            Op::Cancelled(i) => {
                let tag = pick(&self.consumer_tags, *i).unwrap_or_default();
                self.session.handle_consumer_cancelled(&tag);
            }
            Op::Shared(i) => {
                let tag = pick(&self.consumer_tags, *i).unwrap_or_default();
                self.session
                    .handle_shared_frame(&tag, Bytes::from_static(b"MESSAGE\n\n\0\n"));
            }
            Op::BrokerFailure => self.session.handle_broker_failure(failure()),
            Op::SlowConsumer => self.session.handle_slow_consumer(),
            Op::Shutdown => self.session.handle_shutdown(),
            Op::CodecError => self
                .session
                .handle_codec_error("Invalid frame", "Header is not valid UTF-8"),
            Op::Tick(ms) => {
                self.now += Duration::from_millis(u64::from(*ms) * 64);
                self.session.handle_timeout(self.now);
            }
            Op::Received => self.session.note_received(self.now),
            Op::Sent => self.session.note_sent(self.now),
        }
        self.drain();
    }
}

fn pick<T: Clone>(items: &[T], i: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[usize::from(i) % items.len()].clone())
}

fn failure() -> BrokerFailure {
    BrokerFailure {
        name: "not_found".into(),
        text: "NOT_FOUND - no queue 'fuzz' in vhost '/'".into(),
    }
}

/// What the session sends must reach the client as sent.
fn round_trip(frame: &Frame) {
    let mut out = BytesMut::new();
    encode(frame, Version::V1_2, &mut out);
    let mut d = Decoder::new(Limits {
        max_frame_bytes: usize::MAX,
        max_unauthenticated_frame_bytes: usize::MAX,
        max_headers: usize::MAX,
        max_header_line_bytes: usize::MAX,
        max_command_bytes: usize::MAX,
    });
    d.set_version(Version::V1_2);
    d.feed(&out);
    let strip = |f: &Frame| {
        let mut f = f.clone();
        while f.headers.remove("content-length").is_some() {}
        f
    };
    match d.decode() {
        Ok(Some(Decoded::Frame(back))) => assert_eq!(strip(&back), strip(frame)),
        other => panic!(
            "{} frame does not decode: {other:?}\n{out:?}",
            frame.command
        ),
    }
}

fuzz_target!(|input: Input| {
    let c = input.config;
    let config = SessionConfig {
        heartbeat_min: if c & 1 == 0 {
            HeartBeat::OFF
        } else {
            HeartBeat::new(500, 500)
        },
        default_credentials: (c & 2 != 0).then(|| ("guest".into(), "guest".into())),
        forced_credentials: (c & 4 != 0).then(|| ("svc".into(), "pw".into())),
        max_subscriptions: usize::from(c >> 4) + 1,
        plan: PlanConfig::default(),
        ..SessionConfig::default()
    };
    let now = Instant::now();
    let mut driver = Driver {
        session: Session::new(config, "session-fuzz".into(), now),
        now,
        pending: None,
        closed: false,
        connected: false,
        consumer_tags: Vec::new(),
        confirm_ids: Vec::new(),
        ack_ids: Vec::new(),
        temp_queues: 0,
    };
    for op in input.ops.iter().take(256) {
        driver.step(op);
    }
});
