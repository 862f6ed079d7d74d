//! stompgate: a STOMP-over-WebSocket gateway to RabbitMQ and its Kubernetes operator.

pub mod amqp;
pub mod bench;
pub mod crd;
pub mod demo;
pub mod gateway;
pub mod operator;
pub mod runtime;
pub mod sockjs;
pub mod stomp;
pub mod telemetry;
