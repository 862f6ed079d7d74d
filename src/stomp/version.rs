//! STOMP version negotiation and heart-beat arithmetic (CONNECT / CONNECTED).

use std::fmt;

use super::frame::Version;

/// No common version between the client's `accept-version` and 1.0/1.1/1.2.
/// `Display` is RabbitMQ's ERROR body, `summary()` its `message` header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Supported versions are 1.0,1.1,1.2\n")]
pub struct VersionMismatch {
    /// The `accept-version` value the client sent.
    pub offered: String,
}

impl VersionMismatch {
    pub fn summary(&self) -> &'static str {
        "Version mismatch"
    }
}

/// Picks the version for a CONNECT/STOMP frame's `accept-version` header: absent means
/// 1.0; otherwise the highest of 1.0/1.1/1.2 in the comma-separated list. Entries are
/// trimmed (RabbitMQ compares them untrimmed, so `1.1, 1.2` gets 1.1 there and 1.2 here);
/// unknown entries are ignored.
pub fn negotiate_version(accept_version: Option<&str>) -> Result<Version, VersionMismatch> {
    let Some(list) = accept_version else {
        return Ok(Version::V1_0);
    };
    list.split(',')
        .filter_map(Version::parse)
        .max()
        .ok_or_else(|| VersionMismatch {
            offered: list.to_string(),
        })
}

/// Longest heart-beat interval accepted in a `heart-beat` header: one day.
pub const MAX_HEART_BEAT_MS: u64 = 24 * 60 * 60 * 1000;

/// A `heart-beat` header: `send_ms` is how often the sender of the header can send
/// heart-beats, `expect_ms` how often it wants to receive them (0 = never).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeartBeat {
    pub send_ms: u64,
    pub expect_ms: u64,
}

/// A malformed `heart-beat` header value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartBeatError {
    #[error(
        "Invalid heart-beat header {0:?}: expected two comma-separated non-negative integers (milliseconds), e.g. 10000,10000"
    )]
    Malformed(String),
    #[error(
        "Invalid heart-beat header {header:?}: {value} ms exceeds the maximum of {MAX_HEART_BEAT_MS} ms (one day)"
    )]
    TooLarge { header: String, value: String },
}

impl HeartBeat {
    /// No heart-beats either way (`0,0`, also the meaning of an absent header).
    pub const OFF: HeartBeat = HeartBeat {
        send_ms: 0,
        expect_ms: 0,
    };

    pub fn new(send_ms: u64, expect_ms: u64) -> Self {
        HeartBeat { send_ms, expect_ms }
    }

    /// Parses `cx,cy`; whitespace around either number is tolerated.
    pub fn parse(header: &str) -> Result<HeartBeat, HeartBeatError> {
        let malformed = || HeartBeatError::Malformed(header.to_string());
        let (cx, cy) = header.split_once(',').ok_or_else(malformed)?;
        let number = |part: &str| -> Result<u64, HeartBeatError> {
            let digits = part.trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            match digits.parse::<u64>() {
                Ok(ms) if ms <= MAX_HEART_BEAT_MS => Ok(ms),
                _ => Err(HeartBeatError::TooLarge {
                    header: header.to_string(),
                    value: digits.to_string(),
                }),
            }
        };
        Ok(HeartBeat {
            send_ms: number(cx)?,
            expect_ms: number(cy)?,
        })
    }

    /// What the server does, given the client's header and the server's own minimums
    /// (`server_min.send_ms`: the server sends no more often than this; `expect_ms`: it
    /// checks the client no more often than this). The result is also the server's
    /// `heart-beat` header in CONNECTED (`send_ms,expect_ms`).
    pub fn negotiate(client: HeartBeat, server_min: HeartBeat) -> HeartBeat {
        HeartBeat {
            send_ms: if client.expect_ms == 0 {
                0
            } else {
                client.expect_ms.max(server_min.send_ms)
            },
            expect_ms: if client.send_ms == 0 {
                0
            } else {
                client.send_ms.max(server_min.expect_ms)
            },
        }
    }
}

/// `send_ms,expect_ms`, the header value.
impl fmt::Display for HeartBeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.send_ms, self.expect_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_accept_version_is_1_0() {
        assert_eq!(negotiate_version(None), Ok(Version::V1_0));
    }

    #[test]
    fn highest_common_version_wins() {
        assert_eq!(negotiate_version(Some("1.0,1.1,1.2")), Ok(Version::V1_2));
        assert_eq!(negotiate_version(Some("1.2,1.0")), Ok(Version::V1_2));
        assert_eq!(negotiate_version(Some("1.1")), Ok(Version::V1_1));
        assert_eq!(negotiate_version(Some("1.0")), Ok(Version::V1_0));
        assert_eq!(negotiate_version(Some("1.1,2.0")), Ok(Version::V1_1));
        assert_eq!(negotiate_version(Some(" 1.1 , 1.2 ")), Ok(Version::V1_2));
    }

    #[test]
    fn no_common_version_is_a_mismatch_with_rabbitmq_text() {
        for offered in ["2.0", "", "1.3,3", "1,2"] {
            let err = negotiate_version(Some(offered)).unwrap_err();
            assert_eq!(err.offered, offered);
            assert_eq!(err.to_string(), "Supported versions are 1.0,1.1,1.2\n");
            assert_eq!(err.summary(), "Version mismatch");
        }
    }

    #[test]
    fn heart_beat_parses_with_whitespace() {
        assert_eq!(HeartBeat::parse("0,0"), Ok(HeartBeat::OFF));
        assert_eq!(
            HeartBeat::parse("10000,20000"),
            Ok(HeartBeat::new(10000, 20000))
        );
        assert_eq!(
            HeartBeat::parse(" 10000 ,\t20000 "),
            Ok(HeartBeat::new(10000, 20000))
        );
        assert_eq!(
            HeartBeat::parse(&format!("{MAX_HEART_BEAT_MS},0")),
            Ok(HeartBeat::new(MAX_HEART_BEAT_MS, 0))
        );
    }

    #[test]
    fn heart_beat_rejects_malformed_values() {
        for bad in [
            "", "10000", "10000;0", "a,0", "0,b", "-1,0", "0,-5", "+1,0", "1.5,0", ",", "0,", ",0",
            "1,2,3", "1 0,0",
        ] {
            match HeartBeat::parse(bad) {
                Err(err @ HeartBeatError::Malformed(_)) => {
                    assert!(err.to_string().contains("comma-separated"), "{err}")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn heart_beat_rejects_absurd_intervals() {
        for bad in [
            format!("{},0", MAX_HEART_BEAT_MS + 1),
            "0,99999999999999999999999".to_string(),
        ] {
            match HeartBeat::parse(&bad) {
                Err(err @ HeartBeatError::TooLarge { .. }) => {
                    assert!(err.to_string().contains("one day"), "{err}")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn heart_beat_negotiation_from_the_server_side() {
        let server = HeartBeat::new(10_000, 10_000);
        // Client can send every 4 s, wants one every 6 s.
        assert_eq!(
            HeartBeat::negotiate(HeartBeat::new(4_000, 6_000), server),
            HeartBeat::new(10_000, 10_000)
        );
        assert_eq!(
            HeartBeat::negotiate(HeartBeat::new(20_000, 30_000), server),
            HeartBeat::new(30_000, 20_000)
        );
        // Zeros switch each direction off regardless of the server minimum.
        assert_eq!(
            HeartBeat::negotiate(HeartBeat::new(0, 30_000), server),
            HeartBeat::new(30_000, 0)
        );
        assert_eq!(
            HeartBeat::negotiate(HeartBeat::new(5_000, 0), server),
            HeartBeat::new(0, 10_000)
        );
        assert_eq!(HeartBeat::negotiate(HeartBeat::OFF, server), HeartBeat::OFF);
        // A server without minimums echoes the client (RabbitMQ).
        assert_eq!(
            HeartBeat::negotiate(HeartBeat::new(4_000, 6_000), HeartBeat::OFF),
            HeartBeat::new(6_000, 4_000)
        );
    }

    #[test]
    fn heart_beat_displays_as_header_value() {
        assert_eq!(HeartBeat::new(10_000, 0).to_string(), "10000,0");
    }
}
