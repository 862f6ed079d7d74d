//! Transports: each owns its entry point (upgrade handler, accept loop, SockJS handler),
//! asks [`admission`](crate::gateway::admission) once per connection, and moves bytes between
//! its socket and the connection driver.

pub mod sockjs;
pub mod tcp;
pub mod websocket;
