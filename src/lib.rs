//! stompgate: a STOMP-over-WebSocket gateway to RabbitMQ and its Kubernetes operator.

pub mod bench;
pub mod demo;
pub mod gateway;
pub mod stomp;
pub mod telemetry;
