//! lapin errors and confirms as the session reports them.

use lapin::{Confirmation, ErrorKind};

use crate::gateway::rabbit::session::{BrokerFailure, ConnectFailure};

/// Maps a confirm to what the session reports.
pub(crate) fn confirm_outcome(
    confirmation: Confirmation,
) -> crate::gateway::rabbit::session::ConfirmOutcome {
    use crate::gateway::rabbit::session::ConfirmOutcome;
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => ConfirmOutcome::Ack,
        Confirmation::Ack(Some(returned)) => ConfirmOutcome::Unroutable {
            reply_text: returned.reply_text.to_string(),
        },
        Confirmation::Nack(_) => ConfirmOutcome::Nack,
    }
}

/// RabbitMQ's error atom for an AMQP reply code.
pub(super) fn error_name(code: u16) -> &'static str {
    match code {
        311 => "content_too_large",
        312 => "no_route",
        313 => "no_consumers",
        320 => "connection_forced",
        402 => "invalid_path",
        403 => "access_refused",
        404 => "not_found",
        405 => "resource_locked",
        406 => "precondition_failed",
        501 => "frame_error",
        502 => "syntax_error",
        503 => "command_invalid",
        504 => "channel_error",
        505 => "unexpected_frame",
        506 => "resource_error",
        530 => "not_allowed",
        540 => "not_implemented",
        541 => "internal_error",
        _ => "amqp_error",
    }
}

pub(super) fn internal_failure(text: &str) -> BrokerFailure {
    BrokerFailure {
        name: "Internal error".to_string(),
        text: format!("{text}\n"),
    }
}

/// Converts a lapin error on a channel operation into the session's failure report.
pub(crate) fn to_failure(error: lapin::Error) -> BrokerFailure {
    match error.kind() {
        // 320 connection_forced: the broker is shutting down or an operator closed the
        // connection; either way the connection is gone and a reconnect is the remedy.
        ErrorKind::ProtocolError(amqp) if amqp.get_id() == 320 => {
            BrokerFailure::connection_lost(format!("{}\n", amqp.get_message()))
        }
        ErrorKind::ProtocolError(amqp) => BrokerFailure {
            name: error_name(amqp.get_id()).to_string(),
            text: amqp.get_message().to_string(),
        },
        _ => BrokerFailure::connection_lost(format!("{}\n", describe_error(&error))),
    }
}

pub(super) fn classify_connect_error(error: &lapin::Error) -> ConnectFailure {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.get_id() {
            403 => ConnectFailure::AccessRefused,
            530 | 402 => ConnectFailure::VhostDenied,
            _ => ConnectFailure::Unavailable(amqp.get_message().to_string()),
        },
        _ => ConnectFailure::Unavailable(describe_error(error)),
    }
}

/// Error text safe for clients and logs: never contains credentials (lapin errors carry
/// no URI).
pub(crate) fn describe_error(error: &lapin::Error) -> String {
    error.to_string()
}

/// A session that logged in earlier could not get a connection for its first channel: the
/// credentials no longer work (changed or revoked since), or RabbitMQ is out of reach.
pub(super) fn placement_failure(failure: ConnectFailure) -> BrokerFailure {
    match failure {
        ConnectFailure::AccessRefused => BrokerFailure {
            name: "access_refused".to_string(),
            text: "RabbitMQ refused the session's credentials when it needed a channel.\n"
                .to_string(),
        },
        ConnectFailure::VhostDenied => BrokerFailure {
            name: "access_refused".to_string(),
            text:
                "RabbitMQ refused access to the session's virtual host when it needed a channel.\n"
                    .to_string(),
        },
        ConnectFailure::ConnectionLimit => BrokerFailure {
            name: "not_allowed".to_string(),
            text: "RabbitMQ's connection limit was reached when the session needed a channel.\n"
                .to_string(),
        },
        ConnectFailure::Unavailable(reason) => {
            BrokerFailure::connection_lost(format!("RabbitMQ is unreachable: {reason}\n"))
        }
    }
}
