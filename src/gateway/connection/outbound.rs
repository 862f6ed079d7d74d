//! What the driver hands a transport, and how a transport reports its own protocol errors.

use bytes::{Bytes, BytesMut};

use crate::gateway::rabbit::session::CloseReason;
use crate::stomp::codec;
use crate::stomp::{Frame, Version};

/// What the driver writes to a transport.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// One encoded STOMP frame (NUL and trailing LF included).
    Frame(Bytes),
    /// A heart-beat EOL.
    Heartbeat,
    /// Close the transport with this code and reason.
    Close(CloseCode, &'static str),
}

/// Close codes; WebSocket-like transports send them, TCP just closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal closure (DISCONNECT, or an ERROR already explained why).
    Normal = 1000,
    /// 1001: going away (gateway shutdown; reconnect).
    GoingAway = 1001,
    /// 1002: protocol error (undecodable STOMP).
    ProtocolError = 1002,
    /// 1007: invalid frame payload (RabbitMQ's framing-error code).
    InvalidPayload = 1007,
    /// 1009: a WebSocket message or frame over the size limit.
    MessageTooBig = 1009,
    /// 1011: the broker failed.
    InternalError = 1011,
    /// 1013: try again later (the AMQP connection to RabbitMQ was lost; reconnect with backoff).
    TryAgainLater = 1013,
    /// 4000: heart-beat timeout.
    HeartbeatTimeout = 4000,
    /// 4001: login timeout.
    LoginTimeout = 4001,
    /// 4002: slow consumer (the client did not read its deliveries).
    SlowConsumer = 4002,
}

impl CloseCode {
    pub(crate) fn for_reason(reason: &CloseReason) -> (CloseCode, &'static str) {
        match reason {
            CloseReason::Disconnect => (CloseCode::Normal, "DISCONNECT"),
            CloseReason::ProtocolError => (CloseCode::ProtocolError, "STOMP protocol error"),
            CloseReason::BrokerError => (CloseCode::InternalError, "broker error"),
            CloseReason::BrokerLost => (CloseCode::TryAgainLater, "broker connection lost"),
            CloseReason::LoginFailed => (CloseCode::Normal, "login failed"),
            CloseReason::HeartbeatTimeout => (CloseCode::HeartbeatTimeout, "heart-beat timeout"),
            CloseReason::LoginTimeout => (CloseCode::LoginTimeout, "login timeout"),
            CloseReason::Shutdown => (CloseCode::GoingAway, "gateway shutting down"),
            CloseReason::SlowConsumer => (CloseCode::SlowConsumer, "slow consumer"),
            CloseReason::AccessRefused => (CloseCode::Normal, "access refused"),
            CloseReason::PublishFailed => (CloseCode::Normal, "message not accepted"),
        }
    }

    pub(crate) fn label(reason: &CloseReason) -> &'static str {
        match reason {
            CloseReason::Disconnect => "disconnect",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::BrokerError => "broker_error",
            CloseReason::BrokerLost => "broker_lost",
            CloseReason::LoginFailed => "login_failed",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::LoginTimeout => "login_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::AccessRefused => "access_refused",
            CloseReason::PublishFailed => "publish_failed",
        }
    }
}

/// A violation of the transport's own protocol (e.g. an unmasked or oversized WebSocket
/// frame). A transport yields it as the inbound `io::Error`'s inner error; the driver then
/// answers like a STOMP framing error (ERROR frame) but closes with the transport's code.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct TransportViolation {
    pub close: CloseCode,
    pub close_text: &'static str,
    /// `message` of the ERROR frame.
    pub summary: &'static str,
    /// ERROR body.
    pub detail: String,
}

impl From<TransportViolation> for std::io::Error {
    fn from(v: TransportViolation) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, v)
    }
}

/// Encodes a frame the way the driver does (used by transports that answer before a
/// session exists, e.g. connection limits).
pub(crate) fn encode_frame(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    codec::encode(frame, Version::V1_2, &mut buf);
    buf.freeze()
}
