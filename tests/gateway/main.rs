//! Gateway integration tests against the real RabbitMQ (127.0.0.1:5672, guest/guest, or
//! STOMPGATE_TEST_AMQP_URL). Modules mirror src/gateway.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod bad_input;
mod broker;
mod destinations;
mod drain;
mod errors;
mod fanout;
mod secrets;
mod session;
mod tls;
mod transport;
