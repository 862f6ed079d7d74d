//! STOMP frame types shared by the codec, the session state machine and the transports.

use bytes::Bytes;
use std::fmt;

/// A STOMP command. Client commands, server commands, and anything else a peer sent
/// (kept so the session can answer `Bad command` without losing frame sync).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Connected,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Message,
    Receipt,
    Error,
    /// A command word this implementation does not know.
    Unknown(String),
}

impl Command {
    /// Parses a command line (without EOL). Unknown words become [`Command::Unknown`].
    pub fn from_bytes(word: &[u8]) -> Command {
        match word {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"CONNECTED" => Command::Connected,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            other => Command::Unknown(String::from_utf8_lossy(other).into_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
            Command::Unknown(word) => word,
        }
    }

    /// CONNECT, STOMP and CONNECTED frames never escape header values (STOMP 1.1/1.2 spec).
    pub fn escapes_headers(&self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ordered header list. Lookups return the first occurrence, as the STOMP spec and
/// RabbitMQ require for repeated headers; order is kept for byte-compatible output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Self {
        Headers(Vec::with_capacity(n))
    }

    /// First value of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// Appends a header (a later duplicate never shadows an earlier one).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replaces every occurrence of `name` by one entry at the first position, or appends.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        if let Some(pos) = self.0.iter().position(|(k, _)| k == name) {
            self.0[pos].1 = value;
            let mut index = 0;
            self.0.retain(|(k, _)| {
                let keep = index <= pos || k != name;
                index += 1;
                keep
            });
        } else {
            self.0.push((name.to_string(), value));
        }
    }

    /// Removes every occurrence of `name`, returning the first value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let first = self
            .0
            .iter()
            .position(|(k, _)| k == name)
            .map(|pos| self.0[pos].1.clone());
        self.0.retain(|(k, _)| k != name);
        first
    }

    /// Overwrites every value of `name` with zeros in place (for secrets such as
    /// `passcode`, once they have been copied where they are needed).
    pub fn zeroize_values(&mut self, name: &str) {
        use zeroize::Zeroize;
        for (k, v) in &mut self.0 {
            if k == name {
                v.zeroize();
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<(String, String)> {
        self.0
    }

    /// Strips leading spaces (only `' '`, as Erlang's `string:strip(V, left)`) from every
    /// value: RabbitMQ's `trim_headers/1`, applied to every frame of a STOMP 1.0 session
    /// including its CONNECT. The decoder does this itself for non-CONNECT frames once the
    /// version is 1.0; the session calls it on a CONNECT/STOMP frame that negotiated 1.0.
    pub fn trim_start_values(&mut self) {
        for (_, v) in &mut self.0 {
            let trimmed = v.len() - v.trim_start_matches(' ').len();
            if trimmed > 0 {
                v.drain(..trimmed);
            }
        }
    }
}

impl From<Vec<(String, String)>> for Headers {
    fn from(v: Vec<(String, String)>) -> Self {
        Headers(v)
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Headers {
    fn from_iter<T: IntoIterator<Item = (&'a str, &'a str)>>(iter: T) -> Self {
        Headers(
            iter.into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

/// One STOMP frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Headers,
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Builder-style header append.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(name, value);
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// STOMP protocol version negotiated on CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroize_values_blanks_only_the_named_header() {
        let mut h = Headers::new();
        h.push("login", "guest");
        h.push("passcode", "s3cret");
        h.push("passcode", "again");
        h.zeroize_values("passcode");
        assert_eq!(
            h.into_vec(),
            vec![
                ("login".to_string(), "guest".to_string()),
                ("passcode".to_string(), String::new()),
                ("passcode".to_string(), String::new()),
            ]
        );
    }
}
