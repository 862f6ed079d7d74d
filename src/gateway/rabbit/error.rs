//! What becomes a STOMP ERROR frame, in RabbitMQ's shape.

use bytes::Bytes;

use crate::stomp::{Command, Frame};

/// The `version` header RabbitMQ puts on every ERROR frame.
const SUPPORTED_VERSIONS: &str = "1.0,1.1,1.2";

/// Anything that becomes a STOMP ERROR frame: `message` header and body.
pub trait ErrorFrame {
    /// The ERROR frame `message` header, e.g. `Invalid destination`.
    fn summary(&self) -> &'static str;
    /// The ERROR frame body, byte-identical to RabbitMQ's (trailing `\n` where it has one).
    fn detail(&self) -> String;
}

/// ERROR frame in RabbitMQ's shape; `receipt-id` added when the failed frame asked for a
/// receipt (RabbitMQ never says; the STOMP spec asks for it).
pub(crate) fn error_frame(message: &str, detail: &str, receipt: Option<&str>) -> Frame {
    let mut frame = Frame::new(Command::Error)
        .header("message", message)
        .header("content-type", "text/plain")
        .header("version", SUPPORTED_VERSIONS);
    if let Some(r) = receipt {
        frame.headers.push("receipt-id", r);
    }
    frame.with_body(Bytes::copy_from_slice(detail.as_bytes()))
}
