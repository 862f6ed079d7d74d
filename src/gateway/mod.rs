//! The data plane: STOMP clients over WebSocket/SockJS/TCP bridged to RabbitMQ.

pub mod auth;
pub mod broker;
pub mod config;
pub mod connection;
pub mod destination;
pub mod fanout;
pub mod properties;
pub mod reload;
pub mod server;
pub mod server_info;
pub mod session;
pub mod tls;
pub mod transport;
