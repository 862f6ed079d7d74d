use super::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// helpers

fn authed(version: Version) -> Decoder {
    let mut dec = Decoder::new(Limits::default());
    dec.set_version(version);
    dec.set_authenticated(true);
    dec
}

/// Decodes everything currently decodable.
fn drain(dec: &mut Decoder) -> Result<Vec<Decoded>, CodecError> {
    let mut items = Vec::new();
    while let Some(item) = dec.decode()? {
        items.push(item);
    }
    Ok(items)
}

fn decode_with(mut dec: Decoder, input: &[u8]) -> Result<Vec<Decoded>, CodecError> {
    dec.feed(input);
    drain(&mut dec)
}

fn decode_v(version: Version, input: &[u8]) -> Result<Vec<Decoded>, CodecError> {
    decode_with(authed(version), input)
}

fn frames(items: Vec<Decoded>) -> Vec<Frame> {
    items
        .into_iter()
        .filter_map(|item| match item {
            Decoded::Frame(frame) => Some(frame),
            Decoded::Heartbeat => None,
        })
        .collect()
}

/// Decodes exactly one frame (heart-beats ignored).
fn one_frame(version: Version, input: &[u8]) -> Frame {
    let mut found = frames(decode_v(version, input).expect("decodes"));
    assert_eq!(found.len(), 1, "expected one frame in {input:?}");
    found.remove(0)
}

fn decode_err(version: Version, input: &[u8]) -> CodecError {
    decode_v(version, input).expect_err("must fail")
}

/// Feeds `input` in pieces cut at `cuts`, decoding after each piece.
fn decode_split(
    mut dec: Decoder,
    input: &[u8],
    cuts: &[usize],
) -> Result<Vec<Decoded>, CodecError> {
    let mut items = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(start, input.len());
        dec.feed(&input[start..cut]);
        start = cut;
        items.extend(drain(&mut dec)?);
    }
    Ok(items)
}

fn hdrs(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().copied().collect()
}

fn encoded(frame: &Frame, version: Version) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(frame, version, &mut out);
    assert_eq!(
        out.len(),
        encoded_len(frame, version),
        "encoded_len is exact"
    );
    out.to_vec()
}

const ALL_VERSIONS: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

// ---------------------------------------------------------------------------------------
// basic syntax

#[test]
fn decodes_a_simple_frame() {
    let frame = one_frame(
        Version::V1_2,
        b"SEND\ndestination:/queue/a\nreceipt:1\n\nhello\0",
    );
    assert_eq!(frame.command, Command::Send);
    assert_eq!(
        frame.headers,
        hdrs(&[("destination", "/queue/a"), ("receipt", "1")])
    );
    assert_eq!(&frame.body[..], b"hello");
}

#[test]
fn frame_without_headers_or_body() {
    let frame = one_frame(Version::V1_2, b"DISCONNECT\n\n\0");
    assert_eq!(frame, Frame::new(Command::Disconnect));
}

#[test]
fn needs_more_bytes_returns_none() {
    let mut dec = authed(Version::V1_2);
    assert_eq!(dec.decode(), Ok(None));
    dec.feed(b"SEND\ndestination:/q\n\nbody");
    assert_eq!(dec.decode(), Ok(None));
    assert!(!dec.is_idle());
    dec.feed(b"\0");
    assert!(matches!(dec.decode(), Ok(Some(Decoded::Frame(_)))));
    assert_eq!(dec.decode(), Ok(None));
    assert!(dec.is_idle());
}

#[test]
fn several_frames_in_one_feed() {
    let input =
        b"SEND\ndestination:/a\n\none\0SEND\ndestination:/b\n\ntwo\0BEGIN\ntransaction:t\n\n\0";
    let found = frames(decode_v(Version::V1_2, input).unwrap());
    assert_eq!(found.len(), 3);
    assert_eq!(found[0].get("destination"), Some("/a"));
    assert_eq!(&found[0].body[..], b"one");
    assert_eq!(found[1].get("destination"), Some("/b"));
    assert_eq!(&found[1].body[..], b"two");
    assert_eq!(found[2].command, Command::Begin);
}

#[test]
fn body_without_content_length_ends_at_first_nul() {
    let found = frames(decode_v(Version::V1_2, b"SEND\n\nab\0cd\n\n\0").unwrap());
    // "cd" starts the next frame: an unknown command with an empty body.
    assert_eq!(&found[0].body[..], b"ab");
    assert_eq!(found[1].command, Command::Unknown("cd".into()));
}

#[test]
fn crlf_is_accepted_everywhere() {
    let input = b"\r\nSEND\r\ndestination:/queue/a\r\nx:y\r\n\r\nbody\0\r\n";
    let items = decode_v(Version::V1_2, input).unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0], Decoded::Heartbeat);
    assert_eq!(items[2], Decoded::Heartbeat);
    let Decoded::Frame(frame) = &items[1] else {
        panic!("{items:?}")
    };
    assert_eq!(frame.command, Command::Send);
    assert_eq!(
        frame.headers,
        hdrs(&[("destination", "/queue/a"), ("x", "y")])
    );
    assert_eq!(&frame.body[..], b"body");
}

#[test]
fn bare_cr_inside_a_line_is_data() {
    let frame = one_frame(Version::V1_2, b"SEND\nx:a\rb\r\n\n\0");
    assert_eq!(frame.get("x"), Some("a\rb"));
    // Only one CR before LF belongs to the EOL.
    let frame = one_frame(Version::V1_2, b"SEND\nx:a\r\r\n\n\0");
    assert_eq!(frame.get("x"), Some("a\r"));
}

#[test]
fn eols_between_frames_are_heartbeats() {
    let input = b"\n\r\n\nSEND\n\nx\0\n\nACK\nid:1\n\n\0";
    let items = decode_v(Version::V1_2, input).unwrap();
    let kinds: Vec<&str> = items
        .iter()
        .map(|item| match item {
            Decoded::Heartbeat => "hb",
            Decoded::Frame(_) => "frame",
        })
        .collect();
    assert_eq!(kinds, ["hb", "hb", "hb", "frame", "hb", "hb", "frame"]);
}

#[test]
fn lone_heartbeat_is_reported_immediately() {
    let mut dec = authed(Version::V1_2);
    dec.feed(b"\n");
    assert_eq!(dec.decode(), Ok(Some(Decoded::Heartbeat)));
    assert_eq!(dec.decode(), Ok(None));
    // A CR alone waits for its LF.
    dec.feed(b"\r");
    assert_eq!(dec.decode(), Ok(None));
    dec.feed(b"\n");
    assert_eq!(dec.decode(), Ok(Some(Decoded::Heartbeat)));
}

#[test]
fn nuls_between_frames_are_skipped() {
    let input = b"\0\0SEND\n\na\0\0\0\0SEND\n\nb\0\0";
    let items = decode_v(Version::V1_2, input).unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| matches!(i, Decoded::Frame(_))));
    let mut dec = authed(Version::V1_2);
    dec.feed(&[0; 10_000]);
    assert_eq!(dec.decode(), Ok(None));
    assert_eq!(dec.buffered_len(), 0, "NUL noise is not buffered");
}

#[test]
fn cr_not_followed_by_lf_between_frames_starts_a_command() {
    let found = frames(decode_v(Version::V1_2, b"\rX\n\n\0").unwrap());
    assert_eq!(found[0].command, Command::Unknown("\rX".into()));
}

#[test]
fn unknown_command_keeps_frame_sync() {
    let input = b"WRONGCOMMAND\nfoo:bar\n\nbody\0SEND\ndestination:/q\n\n\0";
    let found = frames(decode_v(Version::V1_2, input).unwrap());
    assert_eq!(found[0].command, Command::Unknown("WRONGCOMMAND".into()));
    assert_eq!(found[0].get("foo"), Some("bar"));
    assert_eq!(&found[0].body[..], b"body");
    assert_eq!(found[1].command, Command::Send);
}

#[test]
fn all_known_commands_parse() {
    for word in [
        "CONNECT",
        "STOMP",
        "CONNECTED",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
        "MESSAGE",
        "RECEIPT",
        "ERROR",
    ] {
        let frame = one_frame(Version::V1_2, format!("{word}\n\n\0").as_bytes());
        assert_eq!(frame.command.as_str(), word);
        assert!(!matches!(frame.command, Command::Unknown(_)), "{word}");
    }
}

// ---------------------------------------------------------------------------------------
// split / incremental

fn mixed_stream() -> Vec<u8> {
    let mut input = Vec::new();
    input.extend_from_slice(b"\0\n\r\n");
    input.extend_from_slice(b"SEND\r\ndestination:/queue/a\\cb\r\nx:1\r\nx:2\r\n\r\nhello\0\n");
    input.extend_from_slice(b"SEND\ndestination:/q\ncontent-length:5\n\na\0b\0c\0\0\0");
    input.extend_from_slice(b"SUBSCRIBE\nid:0\ndestination:/topic/x\nack:client\n\n\0");
    input.extend_from_slice(b"\n\n");
    input.extend_from_slice(b"FOO\nbar:baz\n\n\0\r\n");
    input
}

#[test]
fn split_at_every_byte_boundary_gives_the_same_items() {
    let input = mixed_stream();
    let whole = decode_v(Version::V1_2, &input).unwrap();
    assert_eq!(frames(whole.clone()).len(), 4);
    for cut in 0..=input.len() {
        let split = decode_split(authed(Version::V1_2), &input, &[cut]).unwrap();
        assert_eq!(split, whole, "cut at {cut}");
    }
    for a in (0..input.len()).step_by(7) {
        for b in (a..input.len()).step_by(5) {
            let split = decode_split(authed(Version::V1_2), &input, &[a, b]).unwrap();
            assert_eq!(split, whole, "cuts at {a},{b}");
        }
    }
}

#[test]
fn byte_at_a_time_gives_the_same_items() {
    let input = mixed_stream();
    let whole = decode_v(Version::V1_2, &input).unwrap();
    let cuts: Vec<usize> = (0..input.len()).collect();
    assert_eq!(
        decode_split(authed(Version::V1_2), &input, &cuts).unwrap(),
        whole
    );
}

#[test]
fn large_body_one_byte_at_a_time_is_linear() {
    const BODY: usize = 4 * 1024 * 1024 - 100;
    for with_length in [true, false] {
        let mut dec = authed(Version::V1_2);
        let head = if with_length {
            format!("SEND\ndestination:/q\ncontent-length:{BODY}\n\n")
        } else {
            "SEND\ndestination:/q\n\n".to_string()
        };
        dec.feed(head.as_bytes());
        assert_eq!(dec.decode(), Ok(None));
        let started = std::time::Instant::now();
        for _ in 0..BODY {
            dec.feed(b"x");
            assert_eq!(dec.decode(), Ok(None));
        }
        dec.feed(b"\0");
        let Ok(Some(Decoded::Frame(frame))) = dec.decode() else {
            panic!("frame expected")
        };
        assert_eq!(frame.body.len(), BODY);
        // Quadratic rescanning would take hours; linear takes well under a minute even
        // unoptimised.
        assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
    }
}

// ---------------------------------------------------------------------------------------
// content-length

#[test]
fn content_length_body_may_contain_nul() {
    let frame = one_frame(
        Version::V1_2,
        b"SEND\ndestination:/q\ncontent-length:5\n\na\0b\0c\0",
    );
    assert_eq!(&frame.body[..], b"a\0b\0c");
    assert_eq!(frame.get("content-length"), Some("5"));
}

#[test]
fn content_length_zero() {
    let frame = one_frame(Version::V1_2, b"SEND\ncontent-length:0\n\n\0");
    assert!(frame.body.is_empty());
}

#[test]
fn content_length_bigger_than_data_waits_for_the_rest() {
    let mut dec = authed(Version::V1_2);
    dec.feed(b"SEND\ncontent-length:11\n\n01234");
    assert_eq!(dec.decode(), Ok(None));
    dec.feed(b"\0\0\0");
    assert_eq!(dec.decode(), Ok(None));
    dec.feed(b"78");
    assert_eq!(dec.decode(), Ok(None));
    dec.feed(b"9\0SEND\n\n\0");
    let Ok(Some(Decoded::Frame(frame))) = dec.decode() else {
        panic!()
    };
    assert_eq!(&frame.body[..], b"01234\x00\x00\x00789");
    assert!(matches!(dec.decode(), Ok(Some(Decoded::Frame(_)))));
}

#[test]
fn content_length_whitespace_is_tolerated() {
    let frame = one_frame(Version::V1_2, b"SEND\ncontent-length: 3 \n\nabc\0");
    assert_eq!(&frame.body[..], b"abc");
}

#[test]
fn first_content_length_wins() {
    let frame = one_frame(
        Version::V1_2,
        b"SEND\ncontent-length:2\ncontent-length:5\n\nab\0",
    );
    assert_eq!(&frame.body[..], b"ab");
}

#[test]
fn missing_nul_after_content_length_body() {
    assert_eq!(
        decode_err(Version::V1_2, b"SEND\ncontent-length:2\n\nabc\0"),
        CodecError::MissingNulAfterBody
    );
}

#[test]
fn invalid_content_length_values() {
    for bad in ["abc", "-1", "1.5", "", " ", "+3", "0x10", "3 4"] {
        let input = format!("SEND\ncontent-length:{bad}\n\n\0");
        assert_eq!(
            decode_err(Version::V1_2, input.as_bytes()),
            CodecError::InvalidContentLength(bad.to_string()),
            "{bad:?}"
        );
    }
}

#[test]
fn content_length_over_the_limit_fails_before_the_body() {
    let mut dec = authed(Version::V1_2);
    dec.feed(format!("SEND\ncontent-length:{}\n\n", 4 * 1024 * 1024).as_bytes());
    assert_eq!(
        dec.decode(),
        Err(CodecError::FrameTooLarge {
            limit: 4 * 1024 * 1024
        })
    );
    // Overflowing numbers are just too large.
    assert_eq!(
        decode_err(
            Version::V1_2,
            b"SEND\ncontent-length:99999999999999999999999999\n\n"
        ),
        CodecError::FrameTooLarge {
            limit: 4 * 1024 * 1024
        }
    );
}

// ---------------------------------------------------------------------------------------
// escaping

#[test]
fn escapes_in_1_2() {
    let frame = one_frame(Version::V1_2, b"SEND\na\\cb\\\\:x\\ny\\cz\\rw\\\\\n\n\0");
    assert_eq!(frame.headers, hdrs(&[("a:b\\", "x\ny:z\rw\\")]));
}

#[test]
fn escapes_in_1_1() {
    let frame = one_frame(Version::V1_1, b"SEND\na\\cb:x\\ny\\cz\\\\\n\n\0");
    assert_eq!(frame.headers, hdrs(&[("a:b", "x\ny:z\\")]));
    // \r is a 1.2 addition.
    assert_eq!(
        decode_err(Version::V1_1, b"SEND\nx:a\\rb\n\n\0"),
        CodecError::InvalidEscape("\\r".into())
    );
}

#[test]
fn escapes_in_1_0_follow_rabbitmq() {
    // RabbitMQ's parser decodes \c \n \r \\ whatever the version.
    let frame = one_frame(Version::V1_0, b"SEND\nx:a\\cb\\nc\\rd\\\\e\n\n\0");
    assert_eq!(frame.get("x"), Some("a:b\nc\rd\\e"));
    assert_eq!(
        decode_err(Version::V1_0, b"SEND\nx:C:\\temp\n\n\0"),
        CodecError::InvalidEscape("\\t".into())
    );
}

#[test]
fn invalid_escapes_are_errors() {
    for version in [Version::V1_1, Version::V1_2] {
        assert_eq!(
            decode_err(version, b"SEND\nx:a\\tb\n\n\0"),
            CodecError::InvalidEscape("\\t".into())
        );
        assert_eq!(
            decode_err(version, b"SEND\nx:ab\\\n\n\0"),
            CodecError::InvalidEscape("\\".into())
        );
        assert_eq!(
            decode_err(version, b"SEND\nx\\y:ab\n\n\0"),
            CodecError::InvalidEscape("\\y".into())
        );
        assert_eq!(
            decode_err(version, "SEND\nx:\\é\n\n\0".as_bytes()),
            CodecError::InvalidEscape("\\é".into())
        );
    }
}

#[test]
fn connect_stomp_and_connected_are_never_unescaped() {
    for version in ALL_VERSIONS {
        for command in ["CONNECT", "STOMP", "CONNECTED"] {
            let input = format!("{command}\nlogin:a\\b\npasscode:p\\c:q\\t\n\n\0");
            let frame = one_frame(version, input.as_bytes());
            assert_eq!(frame.get("login"), Some("a\\b"));
            assert_eq!(frame.get("passcode"), Some("p\\c:q\\t"));
        }
    }
}

#[test]
fn raw_colons_in_values_are_kept() {
    for version in ALL_VERSIONS {
        let frame = one_frame(version, b"SEND\ndestination:/queue/a:b::c\nx::\n\n\0");
        assert_eq!(frame.get("destination"), Some("/queue/a:b::c"));
        assert_eq!(frame.get("x"), Some(":"));
    }
}

#[test]
fn version_switch_applies_to_pipelined_frames() {
    let mut dec = Decoder::new(Limits::default());
    dec.feed(b"CONNECT\naccept-version:1.2\n\n\0SEND\nx:a\\rb\n\n\0");
    let Ok(Some(Decoded::Frame(connect))) = dec.decode() else {
        panic!()
    };
    assert_eq!(connect.command, Command::Connect);
    dec.set_version(Version::V1_2);
    dec.set_authenticated(true);
    let Ok(Some(Decoded::Frame(send))) = dec.decode() else {
        panic!()
    };
    assert_eq!(send.get("x"), Some("a\rb"));
}

// ---------------------------------------------------------------------------------------
// headers

#[test]
fn repeated_headers_are_kept_and_first_wins() {
    let frame = one_frame(Version::V1_2, b"SEND\nfoo:1\nbar:x\nfoo:2\nfoo:3\n\n\0");
    assert_eq!(frame.get("foo"), Some("1"));
    assert_eq!(
        frame.headers,
        hdrs(&[("foo", "1"), ("bar", "x"), ("foo", "2"), ("foo", "3")])
    );
}

#[test]
fn empty_values_are_allowed() {
    let frame = one_frame(Version::V1_2, b"SEND\nx:\n\n\0");
    assert_eq!(frame.get("x"), Some(""));
}

#[test]
fn values_are_left_trimmed_in_1_0_only() {
    let input = b"SEND\ndestination:  /queue/a \nx:\t y\nz:\\n  w\n\n\0";
    let frame = one_frame(Version::V1_0, input);
    // Spaces only, like Erlang's string:strip(V, left); after unescaping.
    assert_eq!(frame.get("destination"), Some("/queue/a "));
    assert_eq!(frame.get("x"), Some("\t y"));
    assert_eq!(frame.get("z"), Some("\n  w"));
    for version in [Version::V1_1, Version::V1_2] {
        let frame = one_frame(version, input);
        assert_eq!(frame.get("destination"), Some("  /queue/a "));
    }
    // CONNECT is left to the session (it only knows the version after negotiating).
    let mut connect = one_frame(Version::V1_0, b"CONNECT\nlogin: guest\n\n\0");
    assert_eq!(connect.get("login"), Some(" guest"));
    connect.headers.trim_start_values();
    assert_eq!(connect.get("login"), Some("guest"));
}

#[test]
fn header_line_without_colon_is_invalid() {
    assert_eq!(
        decode_err(Version::V1_2, b"SEND\ndestination\n\n\0"),
        CodecError::InvalidHeaderLine("destination".into())
    );
    assert_eq!(
        decode_err(Version::V1_2, b"SEND\n:value\n\n\0"),
        CodecError::InvalidHeaderLine(":value".into())
    );
}

#[test]
fn invalid_utf8_in_headers() {
    assert_eq!(
        decode_err(Version::V1_2, b"SEND\nx:\xff\xfe\n\n\0"),
        CodecError::InvalidUtf8
    );
    assert_eq!(
        decode_err(Version::V1_2, b"SEND\n\xc3:v\n\n\0"),
        CodecError::InvalidUtf8
    );
    // Valid multi-byte UTF-8 is fine, and the body may be anything.
    let frame = one_frame(Version::V1_2, "SEND\nnäme:välue€😀\n\n\u{ff}\0".as_bytes());
    assert_eq!(frame.get("näme"), Some("välue€😀"));
}

#[test]
fn nul_in_headers_or_command() {
    assert_eq!(
        decode_err(Version::V1_2, b"SEND\nx:a\0b\n\n\0"),
        CodecError::NulInHeader
    );
    assert_eq!(
        decode_err(Version::V1_2, b"SEND\nx:a\n\0\n\n\0"),
        CodecError::NulInHeader
    );
    assert_eq!(
        decode_err(Version::V1_2, b"SE\0ND\n\n\0"),
        CodecError::NulInHeader
    );
    // A frame cut short by a NUL (no blank line) is an error too.
    assert_eq!(
        decode_err(Version::V1_2, b"DISCONNECT\0\n"),
        CodecError::NulInHeader
    );
}

// ---------------------------------------------------------------------------------------
// limits

fn small_limits() -> Limits {
    Limits {
        max_frame_bytes: 1000,
        max_unauthenticated_frame_bytes: 200,
        max_headers: 3,
        max_header_line_bytes: 20,
        max_command_bytes: 12,
    }
}

fn small(authenticated: bool) -> Decoder {
    let mut dec = Decoder::new(small_limits());
    dec.set_authenticated(authenticated);
    dec
}

#[test]
fn default_limits() {
    let limits = Limits::default();
    assert_eq!(limits.max_frame_bytes, 4 * 1024 * 1024);
    assert_eq!(limits.max_unauthenticated_frame_bytes, 64 * 1024);
    assert_eq!(limits.max_headers, 100);
    assert_eq!(limits.max_header_line_bytes, 100 * 1024);
    assert_eq!(limits.max_command_bytes, 64);
}

#[test]
fn command_too_long_fires_before_the_eol() {
    let mut dec = small(true);
    dec.feed(b"UNSUBSCRIBE1");
    assert_eq!(dec.decode(), Ok(None), "12 bytes are allowed");
    dec.feed(b"\r");
    assert_eq!(dec.decode(), Ok(None), "a trailing CR may be the EOL");
    dec.feed(b"X");
    assert_eq!(dec.decode(), Err(CodecError::CommandTooLong { limit: 12 }));
    assert!(decode_with(small(true), b"UNSUBSCRIBE1\r\n\n\0").is_ok());
    assert_eq!(
        decode_with(small(true), b"UNSUBSCRIBE12\n\n\0"),
        Err(CodecError::CommandTooLong { limit: 12 })
    );
}

#[test]
fn header_line_too_long_fires_before_the_eol() {
    let mut dec = small(true);
    dec.feed(b"SEND\nx:234567890123456789");
    assert_eq!(dec.decode(), Ok(None), "20 bytes are allowed");
    dec.feed(b"0");
    assert_eq!(
        dec.decode(),
        Err(CodecError::HeaderLineTooLong { limit: 20 })
    );
    assert!(decode_with(small(true), b"SEND\nx:234567890123456789\r\n\n\0").is_ok());
    assert_eq!(
        decode_with(small(true), b"SEND\nx:2345678901234567890\n\n\0"),
        Err(CodecError::HeaderLineTooLong { limit: 20 })
    );
}

#[test]
fn too_many_headers_fires_before_the_frame_ends() {
    assert!(decode_with(small(true), b"SEND\na:1\na:2\na:3\n\n\0").is_ok());
    let mut dec = small(true);
    dec.feed(b"SEND\na:1\na:2\na:3\na:4\n");
    assert_eq!(dec.decode(), Err(CodecError::TooManyHeaders { limit: 3 }));
}

#[test]
fn frame_too_large_fires_while_the_body_is_arriving() {
    let mut dec = small(true);
    dec.feed(b"SEND\n\n");
    let mut sent = 6;
    let err = loop {
        dec.feed(&[b'x'; 10]);
        sent += 10;
        match dec.decode() {
            Ok(None) => assert!(sent <= 1000),
            Err(err) => break err,
            Ok(Some(item)) => panic!("{item:?}"),
        }
    };
    assert_eq!(err, CodecError::FrameTooLarge { limit: 1000 });
    assert!(sent <= 1010, "rejected as soon as it exceeded the limit");
    assert!(dec.buffered_len() == 0, "buffer released");
}

#[test]
fn frame_exactly_at_the_limit_is_accepted() {
    // "SEND\n\n" (6) + body + NUL (1) = 1000
    let mut input = b"SEND\n\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 993));
    input.push(0);
    assert_eq!(input.len(), 1000);
    assert!(decode_with(small(true), &input).is_ok());
    let mut input = b"SEND\n\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 994));
    input.push(0);
    assert_eq!(
        decode_with(small(true), &input),
        Err(CodecError::FrameTooLarge { limit: 1000 })
    );
    // Same with content-length: "SEND\ncontent-length:nnn\n\n" is 25 bytes.
    let ok = format!("SEND\ncontent-length:974\n\n{}\0", "y".repeat(974));
    assert_eq!(ok.len(), 1000);
    assert!(decode_with(small(true), ok.as_bytes()).is_ok());
    let mut dec = small(true);
    dec.feed(b"SEND\ncontent-length:975\n\n");
    assert_eq!(dec.decode(), Err(CodecError::FrameTooLarge { limit: 1000 }));
}

#[test]
fn frame_too_large_counts_headers() {
    let mut dec = Decoder::new(Limits {
        max_headers: 1000,
        ..small_limits()
    });
    dec.set_authenticated(true);
    dec.feed(b"SEND\n");
    let mut sent = 5;
    let err = loop {
        dec.feed(b"h:123456789\n");
        sent += 12;
        match dec.decode() {
            Ok(None) => {}
            Err(err) => break err,
            Ok(Some(item)) => panic!("{item:?}"),
        }
    };
    assert_eq!(err, CodecError::FrameTooLarge { limit: 1000 });
    assert!(sent <= 1012);
}

#[test]
fn frame_too_large_fires_on_partial_header_line() {
    let mut dec = Decoder::new(Limits {
        max_header_line_bytes: 10_000,
        ..small_limits()
    });
    dec.set_authenticated(true);
    dec.feed(b"SEND\nx:");
    dec.feed(&[b'v'; 993]);
    assert_eq!(dec.decode(), Ok(None));
    dec.feed(b"v");
    assert_eq!(dec.decode(), Err(CodecError::FrameTooLarge { limit: 1000 }));
}

#[test]
fn unauthenticated_limit_applies_before_connect() {
    let body = "z".repeat(300);
    let input = format!("SEND\n\n{body}\0");
    assert_eq!(
        decode_with(small(false), input.as_bytes()),
        Err(CodecError::FrameTooLarge { limit: 200 })
    );
    assert!(decode_with(small(true), input.as_bytes()).is_ok());
    let mut dec = small(false);
    assert_eq!(dec.frame_limit(), 200);
    dec.set_authenticated(true);
    assert_eq!(dec.frame_limit(), 1000);
    assert!(dec.is_authenticated());
}

#[test]
fn default_unauthenticated_limit_is_64k() {
    let mut dec = Decoder::new(Limits::default());
    dec.feed(b"CONNECT\n\n");
    dec.feed(&vec![b'a'; 64 * 1024]);
    assert_eq!(
        dec.decode(),
        Err(CodecError::FrameTooLarge { limit: 64 * 1024 })
    );
    let mut dec = Decoder::new(Limits::default());
    dec.feed(format!("CONNECT\ncontent-length:{}\n\n", 64 * 1024).as_bytes());
    assert_eq!(
        dec.decode(),
        Err(CodecError::FrameTooLarge { limit: 64 * 1024 })
    );
}

#[test]
fn unauthenticated_limit_never_exceeds_the_frame_limit() {
    let dec = Decoder::new(Limits {
        max_frame_bytes: 100,
        max_unauthenticated_frame_bytes: 1000,
        ..Limits::default()
    });
    assert_eq!(dec.frame_limit(), 100);
}

// ---------------------------------------------------------------------------------------
// errors

#[test]
fn decoder_is_poisoned_after_an_error() {
    let mut dec = authed(Version::V1_2);
    dec.feed(b"SEND\nno-colon\n\nSEND\n\n\0");
    let err = dec.decode().unwrap_err();
    assert_eq!(err, CodecError::InvalidHeaderLine("no-colon".into()));
    assert_eq!(dec.decode(), Err(err.clone()));
    dec.feed(b"SEND\n\n\0");
    assert_eq!(dec.decode(), Err(err));
    assert_eq!(dec.buffered_len(), 0);
}

#[test]
fn error_summaries_and_details() {
    let cases = [
        (CodecError::FrameTooLarge { limit: 10 }, "Frame too large"),
        (CodecError::TooManyHeaders { limit: 10 }, "Too many headers"),
        (
            CodecError::HeaderLineTooLong { limit: 10 },
            "Header too long",
        ),
        (CodecError::CommandTooLong { limit: 10 }, "Invalid frame"),
        (CodecError::InvalidHeaderLine("x".into()), "Invalid frame"),
        (CodecError::InvalidUtf8, "Invalid frame"),
        (CodecError::InvalidEscape("\\t".into()), "Invalid frame"),
        (
            CodecError::InvalidContentLength("x".into()),
            "Invalid frame",
        ),
        (CodecError::MissingNulAfterBody, "Invalid frame"),
        (CodecError::NulInHeader, "Invalid frame"),
    ];
    for (err, summary) in cases {
        assert_eq!(err.summary(), summary);
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(
        CodecError::FrameTooLarge { limit: 4096 }.to_string(),
        "Frame exceeds the limit of 4096 bytes"
    );
    assert_eq!(
        CodecError::InvalidEscape("\\t".into()).to_string(),
        "Invalid escape sequence \"\\\\t\" in header"
    );
}

#[test]
fn long_invalid_header_line_is_excerpted() {
    let line = "é".repeat(100);
    let input = format!("SEND\n{line}\n\n\0");
    let CodecError::InvalidHeaderLine(shown) = decode_err(Version::V1_2, input.as_bytes()) else {
        panic!()
    };
    assert!(shown.len() <= 67 && shown.ends_with("..."), "{shown}");
}

// ---------------------------------------------------------------------------------------
// encoder

#[test]
fn encodes_message_like_rabbitmq() {
    let frame = Frame::new(Command::Message)
        .header("subscription", "sub-0")
        .header("destination", "/exchange/rabbitmq/zjj")
        .header("message-id", "T_sub-0@@session-x@@1")
        .header("redelivered", "false")
        .header("content-type", "text/plain")
        .with_body(&b"hello"[..]);
    assert_eq!(
        encoded(&frame, Version::V1_2),
        b"MESSAGE\nsubscription:sub-0\ndestination:/exchange/rabbitmq/zjj\n\
          message-id:T_sub-0@@session-x@@1\nredelivered:false\ncontent-type:text/plain\n\
          content-length:5\n\nhello\0\n"
    );
}

#[test]
fn encodes_error_frame_like_rabbitmq() {
    let frame = Frame::new(Command::Error)
        .header("message", "Bad command")
        .header("content-type", "text/plain")
        .header("version", "1.0,1.1,1.2")
        .with_body(&b"Could not interpret command \"WRONGCOMMAND\"\n"[..]);
    assert_eq!(
        encoded(&frame, Version::V1_0),
        b"ERROR\nmessage:Bad command\ncontent-type:text/plain\nversion:1.0,1.1,1.2\n\
          content-length:43\n\nCould not interpret command \"WRONGCOMMAND\"\n\0\n"
    );
}

#[test]
fn encodes_connected_without_escaping() {
    let frame = Frame::new(Command::Connected)
        .header("server", "RabbitMQ/3.10.8 stompgate/0.1.0")
        .header("session", "session-a:b")
        .header("heart-beat", "0,0")
        .header("version", "1.0");
    assert_eq!(
        encoded(&frame, Version::V1_0),
        b"CONNECTED\nserver:RabbitMQ/3.10.8 stompgate/0.1.0\nsession:session-a:b\n\
          heart-beat:0,0\nversion:1.0\n\n\0\n"
    );
}

#[test]
fn escapes_headers_for_every_version() {
    let frame = Frame::new(Command::Message).header("a:b\\c", "x\ny\rz:\\");
    for version in ALL_VERSIONS {
        assert_eq!(
            encoded(&frame, version),
            b"MESSAGE\na\\cb\\\\c:x\\ny\\rz\\c\\\\\n\n\0\n"
        );
    }
}

#[test]
fn empty_body_gets_no_content_length() {
    assert_eq!(
        encoded(
            &Frame::new(Command::Receipt).header("receipt-id", "7"),
            Version::V1_2
        ),
        b"RECEIPT\nreceipt-id:7\n\n\0\n"
    );
}

#[test]
fn existing_content_length_is_rewritten_with_the_real_length() {
    let frame = Frame::new(Command::Message)
        .header("content-length", "99")
        .header("x", "1")
        .header("content-length", "7")
        .with_body(&b"abc"[..]);
    assert_eq!(
        encoded(&frame, Version::V1_2),
        b"MESSAGE\ncontent-length:3\nx:1\n\nabc\0\n"
    );
    let frame = Frame::new(Command::Message).header("content-length", "5");
    assert_eq!(
        encoded(&frame, Version::V1_2),
        b"MESSAGE\ncontent-length:0\n\n\0\n"
    );
}

#[test]
fn encode_appends_to_out() {
    let mut out = BytesMut::from(&b"prefix"[..]);
    encode(&Frame::new(Command::Receipt), Version::V1_2, &mut out);
    assert_eq!(&out[..], b"prefixRECEIPT\n\n\0\n");
}

#[test]
fn decimal_helpers() {
    for n in [0usize, 1, 9, 10, 99, 100, 12345, usize::MAX] {
        let mut out = BytesMut::new();
        put_decimal(&mut out, n);
        assert_eq!(out, n.to_string().as_bytes());
        assert_eq!(decimal_len(n), n.to_string().len());
    }
}

#[test]
fn binary_body_round_trips() {
    let body: Vec<u8> = (0..=255u8).cycle().take(2000).collect();
    let frame = Frame::new(Command::Send)
        .header("destination", "/queue/bin")
        .with_body(body.clone());
    let decoded = one_frame(Version::V1_2, &encoded(&frame, Version::V1_2));
    assert_eq!(&decoded.body[..], &body[..]);
    assert_eq!(decoded.get("content-length"), Some("2000"));
}

// ---------------------------------------------------------------------------------------
// property tests

/// Header text that exercises escaping: specials, spaces, multi-byte characters.
fn header_text(min: usize) -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => prop::char::range('a', 'z'),
        1 => Just(':'),
        1 => Just('\\'),
        1 => Just('\n'),
        1 => Just('\r'),
        1 => Just(' '),
        1 => any::<char>().prop_filter("no NUL", |c| *c != '\0'),
    ];
    prop::collection::vec(ch, min..12).prop_map(String::from_iter)
}

fn escaping_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Send),
        Just(Command::Subscribe),
        Just(Command::Ack),
        Just(Command::Message),
        Just(Command::Error),
        Just(Command::Receipt),
        "[A-Z_]{1,20}".prop_map(|w| Command::from_bytes(w.as_bytes())),
    ]
    .prop_filter("escaping commands", |c| c.escapes_headers())
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(prop_oneof![Just(0u8), Just(b'\n'), Just(b'\r')], 0..8),
    ]
}

fn escaping_frame(
    name: impl Strategy<Value = String>,
    value: impl Strategy<Value = String>,
) -> impl Strategy<Value = Frame> {
    let header = (name, value).prop_filter("content-length is the encoder's", |(n, _)| {
        n != "content-length"
    });
    (
        escaping_command(),
        prop::collection::vec(header, 0..6),
        body(),
    )
        .prop_map(|(command, headers, body)| Frame {
            command,
            headers: Headers::from(headers),
            body: Bytes::from(body),
        })
}

/// What decoding the encoding of `frame` must give: the same frame, plus the
/// `content-length` the encoder adds for a non-empty body.
fn with_length(frame: &Frame) -> Frame {
    let mut expected = frame.clone();
    if !expected.body.is_empty() {
        expected
            .headers
            .push("content-length", expected.body.len().to_string());
    }
    expected
}

fn round_trip(frame: &Frame, version: Version) -> Frame {
    one_frame(version, &encoded(frame, version))
}

fn connect_frame() -> impl Strategy<Value = Frame> {
    // Never escaped: names without ':', values without EOL characters.
    let name = "[a-z-]{1,10}".prop_filter("encoder's", |n| n != "content-length");
    let value = "[ -~é€]{0,12}".prop_filter("no trailing CR", |v| !v.ends_with('\r'));
    (
        prop_oneof![
            Just(Command::Connect),
            Just(Command::Stomp),
            Just(Command::Connected)
        ],
        prop::collection::vec((name, value), 0..6),
    )
        .prop_map(|(command, headers)| Frame {
            command,
            headers: Headers::from(headers),
            body: Bytes::new(),
        })
}

fn noise() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![
        &b""[..],
        &b""[..],
        &b"\0"[..],
        &b"\n"[..],
        &b"\r\n"[..],
        &b"\0\0\n\r\n"[..],
    ])
}

/// A frame as raw bytes: either encoded, or NUL-terminated without content-length.
fn raw_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        escaping_frame(header_text(1), header_text(0))
            .prop_map(|frame| encoded(&frame, Version::V1_2)),
        connect_frame().prop_map(|frame| encoded(&frame, Version::V1_2)),
        (
            escaping_frame(header_text(1), header_text(0)),
            prop::collection::vec(1u8..=255, 0..40)
        )
            .prop_map(|(frame, body)| {
                let mut out = BytesMut::new();
                out.put_slice(frame.command.as_str().as_bytes());
                out.put_u8(b'\n');
                for (name, value) in frame.headers.iter() {
                    put_header_part(&mut out, name.as_bytes(), true);
                    out.put_u8(b':');
                    put_header_part(&mut out, value.as_bytes(), true);
                    out.put_u8(b'\n');
                }
                out.put_u8(b'\n');
                out.put_slice(&body);
                out.put_u8(0);
                out.to_vec()
            }),
    ]
}

fn stomp_fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            &b"SEND\n"[..],
            b"CONNECT\n",
            b"MESSAGE\r\n",
            b"destination:/queue/a\n",
            b"content-length:",
            b"content-length:3\n",
            b"content-length:-1\n",
            b"content-length:99999999999\n",
            b":",
            b"\\",
            b"\\c",
            b"\\r",
            b"\\t",
            b"\n",
            b"\r",
            b"\r\n",
            b"\0",
            b"\n\n",
            b"x",
            b"0",
            b"\xff",
            b"\xc3",
            "é".as_bytes(),
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 0..8),
    ]
}

fn tiny_limits() -> Limits {
    Limits {
        max_frame_bytes: 300,
        max_unauthenticated_frame_bytes: 120,
        max_headers: 4,
        max_header_line_bytes: 24,
        max_command_bytes: 10,
    }
}

/// Decodes until more bytes are needed or an error; checks the poisoning contract.
fn decode_garbage(limits: Limits, version: Version, input: &[u8], cuts: &[usize]) {
    let mut dec = Decoder::new(limits.clone());
    dec.set_version(version);
    let _ = decode_split(Decoder::new(limits), input, cuts);
    dec.feed(input);
    loop {
        match dec.decode() {
            Ok(Some(Decoded::Frame(frame))) => {
                assert!(frame.body.len() <= dec.limits().max_frame_bytes);
                assert!(frame.headers.len() <= dec.limits().max_headers);
            }
            Ok(Some(Decoded::Heartbeat)) => {}
            Ok(None) => break,
            Err(err) => {
                assert_eq!(dec.decode(), Err(err.clone()));
                assert!(!err.summary().is_empty());
                break;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prop_round_trip_1_2(frame in escaping_frame(header_text(1), header_text(0))) {
        prop_assert_eq!(round_trip(&frame, Version::V1_2), with_length(&frame));
    }

    #[test]
    fn prop_round_trip_1_1_without_cr(
        frame in escaping_frame(
            header_text(1).prop_filter("no CR", |s| !s.contains('\r')),
            header_text(0).prop_filter("no CR", |s| !s.contains('\r')),
        )
    ) {
        prop_assert_eq!(round_trip(&frame, Version::V1_1), with_length(&frame));
    }

    #[test]
    fn prop_round_trip_1_0_without_leading_spaces(
        frame in escaping_frame(
            header_text(1),
            header_text(0).prop_filter("1.0 trims", |s| !s.starts_with(' ')),
        )
    ) {
        prop_assert_eq!(round_trip(&frame, Version::V1_0), with_length(&frame));
    }

    #[test]
    fn prop_round_trip_connect_frames(frame in connect_frame()) {
        for version in ALL_VERSIONS {
            prop_assert_eq!(round_trip(&frame, version), frame.clone());
        }
    }

    #[test]
    fn prop_split_stream_decodes_like_whole(
        parts in prop::collection::vec((noise(), raw_frame()), 0..6),
        tail in noise(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut stream = Vec::new();
        for (noise, frame) in &parts {
            stream.extend_from_slice(noise);
            stream.extend_from_slice(frame);
        }
        stream.extend_from_slice(tail);
        let whole = decode_v(Version::V1_2, &stream).unwrap();
        prop_assert_eq!(frames(whole.clone()).len(), parts.len());
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        let split = decode_split(authed(Version::V1_2), &stream, &cuts).unwrap();
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn prop_garbage_never_panics(
        input in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(0usize..600, 0..6),
        version in prop::sample::select(ALL_VERSIONS.to_vec()),
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        decode_garbage(tiny_limits(), version, &input, &cuts);
        decode_garbage(Limits::default(), version, &input, &cuts);
    }

    #[test]
    fn prop_stomp_like_garbage_never_panics(
        pieces in prop::collection::vec(stomp_fragment(), 0..60),
        cuts in prop::collection::vec(0usize..600, 0..6),
        version in prop::sample::select(ALL_VERSIONS.to_vec()),
    ) {
        let input = pieces.concat();
        let mut cuts = cuts;
        cuts.sort_unstable();
        decode_garbage(tiny_limits(), version, &input, &cuts);
        decode_garbage(Limits::default(), version, &input, &cuts);
    }

    #[test]
    fn prop_split_errors_match_whole_errors(
        pieces in prop::collection::vec(stomp_fragment(), 0..40),
        cut in 0usize..400,
    ) {
        // Whether a stream is accepted must not depend on how it was cut.
        let input = pieces.concat();
        let whole = decode_with(Decoder::new(tiny_limits()), &input);
        let split = decode_split(Decoder::new(tiny_limits()), &input, &[cut]);
        // (The error variant may differ: a partial frame is checked only against the
        // limits it already provably exceeds.)
        match (&whole, &split) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "whole {:?} vs split {:?}", whole, split),
        }
    }
}
