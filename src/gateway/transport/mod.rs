//! Transports: bytes between a socket and the connection driver, nothing else.

pub mod sockjs;
pub mod tcp;
pub mod websocket;
