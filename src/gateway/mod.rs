//! The gateway data plane: STOMP sessions bridged to RabbitMQ.

pub mod destination;
pub mod properties;
