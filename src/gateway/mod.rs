//! The data plane: STOMP clients over WebSocket/SockJS/TCP bridged to RabbitMQ.

pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod broker;
pub mod config;
pub(crate) mod connection;
pub(crate) mod fanout;
pub mod rabbit;
pub(crate) mod reload;
pub(crate) mod serve;
pub mod server;
pub(crate) mod server_info;
pub mod state;
pub(crate) mod tls;
pub(crate) mod transport;
