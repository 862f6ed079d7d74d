//! The incremental STOMP decoder fed arbitrary bytes split at arbitrary points.
//!
//! Input: 8 configuration bytes (small limits, versions, when CONNECT "succeeds", chunking),
//! then the byte stream. Checks: no panic; the same items whether fed at once or in chunks;
//! limits hold on every frame; every decoded frame survives encode -> decode unchanged.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stompgate::stomp::{Decoded, Decoder, Frame, Limits, Version, encode, encoded_len};

const VERSIONS: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

struct Config {
    limits: Limits,
    version: Version,
    authenticated: bool,
    /// After this many frames the session would have handled CONNECT (0 = never).
    switch_after: usize,
    version_after: Version,
    authenticated_after: bool,
    chunk_seed: u8,
}

impl Config {
    fn parse(cfg: &[u8; 8]) -> Config {
        Config {
            limits: Limits {
                max_frame_bytes: 16 + usize::from(cfg[0]) * 16,
                max_unauthenticated_frame_bytes: 16 + usize::from(cfg[1]) * 16,
                max_headers: usize::from(cfg[2] % 32),
                max_header_line_bytes: 8 + usize::from(cfg[3]) * 4,
                max_command_bytes: 4 + usize::from(cfg[4] % 32),
            },
            version: VERSIONS[usize::from(cfg[5] & 3) % 3],
            version_after: VERSIONS[usize::from((cfg[5] >> 2) & 3) % 3],
            authenticated: cfg[5] & 0x10 != 0,
            authenticated_after: cfg[5] & 0x20 == 0,
            switch_after: usize::from(cfg[6] % 4),
            chunk_seed: cfg[7],
        }
    }

    fn decoder(&self) -> Decoder {
        let mut d = Decoder::new(self.limits.clone());
        d.set_version(self.version);
        d.set_authenticated(self.authenticated);
        d
    }
}

/// Items decoded, each frame with the version it was decoded under, and whether it ended in error.
struct Run {
    items: Vec<(Decoded, Version)>,
    failed: bool,
}

/// Pulls every available item, applying the post-CONNECT switch as the session does.
fn drain(cfg: &Config, d: &mut Decoder, run: &mut Run, frames: &mut usize) {
    loop {
        let version = d.version();
        match d.decode() {
            Ok(Some(item)) => {
                if let Decoded::Frame(f) = &item {
                    check_limits(d, f);
                    *frames += 1;
                    if *frames == cfg.switch_after {
                        d.set_version(cfg.version_after);
                        d.set_authenticated(cfg.authenticated_after);
                    }
                }
                run.items.push((item, version));
            }
            Ok(None) => return,
            Err(_) => {
                run.failed = true;
                // A poisoned decoder must stay poisoned.
                assert!(d.decode().is_err());
                return;
            }
        }
    }
}

fn check_limits(d: &Decoder, f: &Frame) {
    let limits = d.limits();
    assert!(f.headers.len() <= limits.max_headers, "too many headers");
    // The frame limit in force may have just changed; the larger bound is safe.
    let limit = limits
        .max_frame_bytes
        .max(limits.max_unauthenticated_frame_bytes);
    assert!(f.body.len() < limit, "body over the frame limit");
    assert!(
        f.headers.iter().all(|(name, _)| !name.is_empty()),
        "empty header name"
    );
}

fn run_whole(cfg: &Config, data: &[u8]) -> Run {
    let mut d = cfg.decoder();
    let mut run = Run {
        items: Vec::new(),
        failed: false,
    };
    let mut frames = 0;
    d.feed(data);
    drain(cfg, &mut d, &mut run, &mut frames);
    run
}

fn run_chunked(cfg: &Config, data: &[u8]) -> Run {
    let mut d = cfg.decoder();
    let mut run = Run {
        items: Vec::new(),
        failed: false,
    };
    let mut frames = 0;
    let mut rng = u32::from(cfg.chunk_seed) | 0x100;
    let mut rest = data;
    while !rest.is_empty() && !run.failed {
        // xorshift: chunk sizes 1..=32, sometimes one byte at a time.
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let n = (1 + (rng % 32) as usize).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        d.feed(chunk);
        rest = tail;
        drain(cfg, &mut d, &mut run, &mut frames);
        d.shrink_if_idle();
    }
    run
}

/// Content-length is rewritten by the encoder: compare frames without it.
fn normalized(f: &Frame) -> Frame {
    let mut f = f.clone();
    while f.headers.remove("content-length").is_some() {}
    f
}

fn round_trip(frame: &Frame, version: Version) {
    let command = frame.command.as_str();
    // A CR ending a line is part of its EOL: such commands and unescaped (CONNECT) values
    // cannot be written back; the encoder documents that callers must not produce them.
    if command.contains('\r')
        || (!frame.command.escapes_headers()
            && frame.headers.iter().any(|(_, v)| v.ends_with('\r')))
    {
        return;
    }
    let mut out = BytesMut::new();
    encode(frame, version, &mut out);
    assert_eq!(
        out.len(),
        encoded_len(frame, version),
        "encoded_len disagrees"
    );
    // The encoder always uses the 1.2 escapes (as RabbitMQ does), 1.1 clients included.
    let read_as = if version == Version::V1_0 {
        Version::V1_0
    } else {
        Version::V1_2
    };
    let mut d = Decoder::new(Limits {
        max_frame_bytes: usize::MAX,
        max_unauthenticated_frame_bytes: usize::MAX,
        max_headers: usize::MAX,
        max_header_line_bytes: usize::MAX,
        max_command_bytes: usize::MAX,
    });
    d.set_version(read_as);
    d.set_authenticated(true);
    d.feed(&out);
    match d.decode() {
        Ok(Some(Decoded::Frame(back))) => {
            assert_eq!(
                normalized(&back),
                normalized(frame),
                "round trip changed the frame"
            );
            if !frame.body.is_empty() {
                let len = frame.body.len().to_string();
                assert_eq!(back.get("content-length"), Some(len.as_str()));
            }
        }
        other => panic!("re-encoded frame did not decode: {other:?}\n{out:?}"),
    }
    assert_eq!(d.decode(), Ok(Some(Decoded::Heartbeat)), "trailing EOL");
    assert_eq!(d.decode(), Ok(None));
    assert!(d.is_idle());
}

fuzz_target!(|input: &[u8]| {
    let Some((cfg, data)) = input.split_first_chunk::<8>() else {
        return;
    };
    let cfg = Config::parse(cfg);
    let whole = run_whole(&cfg, data);
    let chunked = run_chunked(&cfg, data);
    assert_eq!(
        whole.items.len(),
        chunked.items.len(),
        "chunking changed the number of items"
    );
    for ((a, va), (b, vb)) in whole.items.iter().zip(&chunked.items) {
        assert_eq!(a, b, "chunking changed an item");
        assert_eq!(va, vb);
    }
    assert_eq!(whole.failed, chunked.failed, "chunking changed the outcome");
    for (item, version) in &whole.items {
        if let Decoded::Frame(f) = item {
            round_trip(f, *version);
        }
    }
});
