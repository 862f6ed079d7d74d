//! Sans-IO STOMP 1.0/1.1/1.2: frame types, escaping, incremental codec. No sockets here.

pub mod frame;

pub use frame::{Command, Frame, Headers, Version};
