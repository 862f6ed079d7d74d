//! stompgate: a STOMP-over-WebSocket gateway to RabbitMQ and its Kubernetes operator.

pub mod gateway;
pub mod stomp;
