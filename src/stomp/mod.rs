//! Sans-IO STOMP 1.0/1.1/1.2: frame types, escaping, incremental codec. No sockets here.

pub mod codec;
pub mod frame;
pub mod version;

pub use codec::{CodecError, Decoded, Decoder, Limits, encode, encoded_len};
pub use frame::{Command, Frame, Headers, Version};
pub use version::{HeartBeat, HeartBeatError, VersionMismatch, negotiate_version};
