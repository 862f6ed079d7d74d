//! Incremental STOMP 1.0/1.1/1.2 frame decoder and encoder (sans-IO).
//!
//! The [`Decoder`] is fed raw bytes as they arrive (any split, several frames at once) and
//! hands out complete [`Decoded`] items. It keeps its parse position between calls, so a
//! frame arriving one byte at a time costs linear time, and it enforces [`Limits`] on the
//! partial frame: an oversized frame is rejected as soon as it is known to be too large,
//! never buffered to the end. After an error the decoder is poisoned: the connection is
//! expected to send an ERROR frame (see [`CodecError::summary`]) and close.
//!
//! Syntax accepted (STOMP 1.2 grammar plus RabbitMQ's tolerances, `rabbit_stomp_frame.erl`):
//! * EOL is LF or CR LF everywhere. A CR not followed by LF inside a line is kept as data
//!   (older RabbitMQ behaviour; RabbitMQ main rejects it).
//! * Between frames, NULs are skipped silently and every EOL is one [`Decoded::Heartbeat`].
//!   An empty command therefore cannot occur: a blank line is a heart-beat.
//! * Header lines split on the first raw `:`; later raw colons belong to the value
//!   (RabbitMQ accepts them in every version). An empty header name is an error.
//! * Repeated headers are all kept in order; [`Headers::get`] returns the first, which is
//!   the one STOMP says wins. (RabbitMQ drops the later ones; keeping them costs nothing
//!   and lets the session see them.)
//! * `content-length` (first occurrence) fixes the body length on every command (the STOMP
//!   spec; RabbitMQ main only honours it on SEND and ignores a non-numeric value, we reject
//!   a non-numeric one); the body may then contain NULs and must be followed by a NUL.
//!   Without it the body ends at the first NUL.
//! * Header names and values must be UTF-8 after unescaping; NUL is not allowed before
//!   the body.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::frame::{Command, Frame, Headers, Version};

/// Size limits enforced by the [`Decoder`]. Every limit produces a typed [`CodecError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame (command line through the terminating NUL) once CONNECT succeeded
    /// (RabbitMQ `stomp.max_frame_size`, 4 MiB).
    pub max_frame_bytes: usize,
    /// Largest frame before CONNECT succeeded (RabbitMQ 4.2.6
    /// `max_frame_size_unauthenticated`, 64 KiB). The smaller of the two applies.
    pub max_unauthenticated_frame_bytes: usize,
    /// Most header lines in one frame, repeated names included (RabbitMQ `max_headers`).
    pub max_headers: usize,
    /// Longest header line in bytes as sent (escaped, without EOL) (RabbitMQ
    /// `max_header_length`, 100 KiB).
    pub max_header_line_bytes: usize,
    /// Longest command line in bytes (RabbitMQ allows 32; UNSUBSCRIBE is 11).
    pub max_command_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 4 * 1024 * 1024,
            max_unauthenticated_frame_bytes: 64 * 1024,
            max_headers: 100,
            max_header_line_bytes: 100 * 1024,
            max_command_bytes: 64,
        }
    }
}

/// A framing error. Fatal for the connection: the decoder keeps returning it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("Frame exceeds the limit of {limit} bytes")]
    FrameTooLarge { limit: usize },
    #[error("Frame has more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("Header line exceeds the limit of {limit} bytes")]
    HeaderLineTooLong { limit: usize },
    #[error("Command exceeds the limit of {limit} bytes")]
    CommandTooLong { limit: usize },
    /// A header line without `:` or with an empty name; holds (the start of) the line.
    #[error("Invalid header line {0:?}: expected name:value")]
    InvalidHeaderLine(String),
    #[error("Header is not valid UTF-8")]
    InvalidUtf8,
    /// An escape sequence the negotiated version does not define, e.g. `\t`.
    #[error("Invalid escape sequence {0:?} in header")]
    InvalidEscape(String),
    /// A `content-length` that is not a non-negative decimal integer.
    #[error("Invalid content-length {0:?}")]
    InvalidContentLength(String),
    #[error("Missing NUL after the body of the length given by content-length")]
    MissingNulAfterBody,
    #[error("NUL octet in the command or headers")]
    NulInHeader,
}

impl CodecError {
    /// Short text for the `message` header of the ERROR frame, in RabbitMQ's style; the
    /// `Display` text is the detail for the ERROR body.
    pub fn summary(&self) -> &'static str {
        match self {
            CodecError::FrameTooLarge { .. } => "Frame too large",
            CodecError::TooManyHeaders { .. } => "Too many headers",
            CodecError::HeaderLineTooLong { .. } => "Header too long",
            CodecError::CommandTooLong { .. }
            | CodecError::InvalidHeaderLine(_)
            | CodecError::InvalidUtf8
            | CodecError::InvalidEscape(_)
            | CodecError::InvalidContentLength(_)
            | CodecError::MissingNulAfterBody
            | CodecError::NulInHeader => "Invalid frame",
        }
    }
}

/// One item produced by the [`Decoder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    /// One EOL (LF or CR LF) between frames.
    Heartbeat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames: skipping NULs, reporting EOLs as heart-beats.
    Noise,
    /// Reading the command line.
    Command,
    /// Reading header lines up to the blank line.
    Headers,
    /// Reading the body: `Some(n)` from content-length, `None` up to the first NUL.
    Body(Option<usize>),
}

/// Header escaping rules applied while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escapes {
    /// CONNECT, STOMP, CONNECTED: values are taken literally (STOMP 1.1/1.2 spec).
    Raw,
    /// STOMP 1.1: `\c \n \\`.
    V1_1,
    /// STOMP 1.2: `\c \n \r \\`; also used for 1.0 (see [`escapes_for`]).
    V1_2,
}

fn escapes_for(command: &Command, version: Version) -> Escapes {
    if !command.escapes_headers() {
        return Escapes::Raw;
    }
    match version {
        // The STOMP 1.0 spec defines no escapes. RabbitMQ's parser is version-agnostic and
        // always decodes `\c \n \r \\` (rejecting any other `\x`), and always escapes
        // outgoing headers, so a 1.0 client talking to RabbitMQ sees escaped values and
        // must send escaped ones. We follow RabbitMQ so such clients keep working.
        Version::V1_0 | Version::V1_2 => Escapes::V1_2,
        Version::V1_1 => Escapes::V1_1,
    }
}

/// Incremental, resumable STOMP frame decoder. See the module documentation.
///
/// The session must call [`Decoder::set_version`] / [`Decoder::set_authenticated`] after
/// handling CONNECT and before asking for the next item; since decoding is pull-based,
/// frames pipelined behind the CONNECT are then decoded with the negotiated rules.
pub struct Decoder {
    limits: Limits,
    version: Version,
    authenticated: bool,
    buf: BytesMut,
    state: State,
    /// Bytes at the front of `buf` already searched, without success, for the delimiter
    /// the current state waits for (LF or NUL): the search resumes there.
    scan: usize,
    /// Bytes of the current frame already consumed from `buf`.
    frame_len: usize,
    command: Command,
    headers: Headers,
    error: Option<CodecError>,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("version", &self.version)
            .field("authenticated", &self.authenticated)
            .field("state", &self.state)
            .field("buffered", &self.buf.len())
            .field("error", &self.error)
            .finish()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    /// A decoder for a new connection: version 1.0 rules, not authenticated.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            version: Version::V1_0,
            authenticated: false,
            buf: BytesMut::new(),
            state: State::Noise,
            scan: 0,
            frame_len: 0,
            command: Command::Disconnect,
            headers: Headers::new(),
            error: None,
        }
    }

    /// Appends received bytes. Ignored once the decoder is poisoned.
    pub fn feed(&mut self, data: &[u8]) {
        if self.error.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Releases the read buffer when nothing is pending, so an idle connection does not keep
    /// the capacity its largest frame needed.
    pub fn shrink_if_idle(&mut self) {
        if self.is_idle() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Selects the header rules of the negotiated version for the following frames.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Switches between the pre-CONNECT frame limit and `max_frame_bytes`.
    pub fn set_authenticated(&mut self, authenticated: bool) {
        self.authenticated = authenticated;
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes received but not yet returned as items.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// True between frames with nothing buffered (e.g. to tell a clean close from a
    /// truncated frame).
    pub fn is_idle(&self) -> bool {
        self.state == State::Noise && self.buf.is_empty()
    }

    /// The frame-size limit in force now.
    pub fn frame_limit(&self) -> usize {
        if self.authenticated {
            self.limits.max_frame_bytes
        } else {
            self.limits
                .max_unauthenticated_frame_bytes
                .min(self.limits.max_frame_bytes)
        }
    }

    /// Returns the next complete item, `Ok(None)` if more bytes are needed, or the error
    /// that poisoned the decoder.
    pub fn decode(&mut self) -> Result<Option<Decoded>, CodecError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        match self.step() {
            Ok(item) => Ok(item),
            Err(err) => {
                self.error = Some(err.clone());
                self.buf = BytesMut::new();
                self.headers = Headers::new();
                Err(err)
            }
        }
    }

    fn step(&mut self) -> Result<Option<Decoded>, CodecError> {
        loop {
            match self.state {
                State::Noise => {
                    let nuls = self.buf.iter().take_while(|&&b| b == 0).count();
                    self.buf.advance(nuls);
                    match self.buf.first() {
                        None => return Ok(None),
                        Some(b'\n') => {
                            self.buf.advance(1);
                            return Ok(Some(Decoded::Heartbeat));
                        }
                        Some(b'\r') => match self.buf.get(1) {
                            None => return Ok(None),
                            Some(b'\n') => {
                                self.buf.advance(2);
                                return Ok(Some(Decoded::Heartbeat));
                            }
                            Some(_) => self.start_frame(),
                        },
                        Some(_) => self.start_frame(),
                    }
                }
                State::Command => {
                    let limit = self.limits.max_command_bytes;
                    let Some(end) = self.find_from_scan(b'\n') else {
                        if line_len(&self.buf) > limit {
                            return Err(CodecError::CommandTooLong { limit });
                        }
                        self.check_partial_frame()?;
                        return Ok(None);
                    };
                    let line = strip_cr(&self.buf[..end]);
                    if line.len() > limit {
                        return Err(CodecError::CommandTooLong { limit });
                    }
                    if line.contains(&0) {
                        return Err(CodecError::NulInHeader);
                    }
                    self.command = Command::from_bytes(line);
                    self.consume(end + 1)?;
                    self.state = State::Headers;
                }
                State::Headers => {
                    let limit = self.limits.max_header_line_bytes;
                    let Some(end) = self.find_from_scan(b'\n') else {
                        if line_len(&self.buf) > limit {
                            return Err(CodecError::HeaderLineTooLong { limit });
                        }
                        self.check_partial_frame()?;
                        return Ok(None);
                    };
                    let line = strip_cr(&self.buf[..end]);
                    if line.is_empty() {
                        self.consume(end + 1)?;
                        self.start_body()?;
                        continue;
                    }
                    if line.len() > limit {
                        return Err(CodecError::HeaderLineTooLong { limit });
                    }
                    if self.headers.len() >= self.limits.max_headers {
                        return Err(CodecError::TooManyHeaders {
                            limit: self.limits.max_headers,
                        });
                    }
                    let escapes = escapes_for(&self.command, self.version);
                    let trim = self.version == Version::V1_0 && escapes != Escapes::Raw;
                    let (name, value) = parse_header_line(line, escapes, trim)?;
                    self.headers.push(name, value);
                    self.consume(end + 1)?;
                }
                State::Body(Some(len)) => {
                    if self.buf.len() <= len {
                        return Ok(None);
                    }
                    if self.buf[len] != 0 {
                        return Err(CodecError::MissingNulAfterBody);
                    }
                    // Size was checked against the limit when the headers ended.
                    let body = self.buf.split_to(len).freeze();
                    self.buf.advance(1);
                    return Ok(Some(self.finish_frame(body)));
                }
                State::Body(None) => {
                    let limit = self.frame_limit();
                    let Some(end) = self.find_from_scan(0) else {
                        // The frame needs at least the buffered bytes plus its NUL.
                        if self.frame_len + self.buf.len() + 1 > limit {
                            return Err(CodecError::FrameTooLarge { limit });
                        }
                        return Ok(None);
                    };
                    if self.frame_len + end + 1 > limit {
                        return Err(CodecError::FrameTooLarge { limit });
                    }
                    let body = self.buf.split_to(end).freeze();
                    self.buf.advance(1);
                    return Ok(Some(self.finish_frame(body)));
                }
            }
        }
    }

    fn start_frame(&mut self) {
        self.state = State::Command;
        self.scan = 0;
        self.frame_len = 0;
        self.headers = Headers::new();
    }

    fn start_body(&mut self) -> Result<(), CodecError> {
        self.scan = 0;
        let length = match self.headers.get("content-length") {
            None => None,
            Some(raw) => {
                let limit = self.frame_limit();
                let n = parse_content_length(raw, limit)?;
                // Body plus NUL must fit in what is left of the frame limit.
                if n >= limit.saturating_sub(self.frame_len) {
                    return Err(CodecError::FrameTooLarge { limit });
                }
                Some(n)
            }
        };
        self.state = State::Body(length);
        Ok(())
    }

    fn finish_frame(&mut self, body: Bytes) -> Decoded {
        self.state = State::Noise;
        self.scan = 0;
        self.frame_len = 0;
        let command = std::mem::replace(&mut self.command, Command::Disconnect);
        let headers = std::mem::take(&mut self.headers);
        Decoded::Frame(Frame {
            command,
            headers,
            body,
        })
    }

    /// Position of `byte` in `buf`, searching only bytes not searched before.
    fn find_from_scan(&mut self, byte: u8) -> Option<usize> {
        match self.buf[self.scan..].iter().position(|&b| b == byte) {
            Some(pos) => {
                let end = self.scan + pos;
                self.scan = 0;
                Some(end)
            }
            None => {
                self.scan = self.buf.len();
                None
            }
        }
    }

    /// Drops `n` bytes of the current frame from the buffer.
    fn consume(&mut self, n: usize) -> Result<(), CodecError> {
        self.buf.advance(n);
        self.frame_len += n;
        self.scan = 0;
        let limit = self.frame_limit();
        if self.frame_len > limit {
            return Err(CodecError::FrameTooLarge { limit });
        }
        Ok(())
    }

    /// Everything buffered belongs to the current, unfinished frame.
    fn check_partial_frame(&self) -> Result<(), CodecError> {
        let limit = self.frame_limit();
        if self.frame_len + self.buf.len() > limit {
            return Err(CodecError::FrameTooLarge { limit });
        }
        Ok(())
    }
}

/// Length of an unfinished line, not counting a trailing CR that may start its EOL.
fn line_len(partial: &[u8]) -> usize {
    strip_cr(partial).len()
}

fn strip_cr(line: &[u8]) -> &[u8] {
    match line.split_last() {
        Some((b'\r', rest)) => rest,
        _ => line,
    }
}

fn parse_header_line(
    line: &[u8],
    escapes: Escapes,
    trim: bool,
) -> Result<(String, String), CodecError> {
    if line.contains(&0) {
        return Err(CodecError::NulInHeader);
    }
    let line = std::str::from_utf8(line).map_err(|_| CodecError::InvalidUtf8)?;
    let (raw_name, raw_value) = match line.split_once(':') {
        Some((name, value)) if !name.is_empty() => (name, value),
        _ => return Err(CodecError::InvalidHeaderLine(excerpt(line))),
    };
    let name = unescape(raw_name, escapes)?;
    let mut value = unescape(raw_value, escapes)?;
    if trim {
        // RabbitMQ `trim_headers/1` for 1.0: `string:strip(V, left)` strips spaces only,
        // after unescaping.
        let n = value.len() - value.trim_start_matches(' ').len();
        if n > 0 {
            value.drain(..n);
        }
    }
    Ok((name, value))
}

fn excerpt(line: &str) -> String {
    const MAX: usize = 64;
    if line.len() <= MAX {
        return line.to_string();
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

fn unescape(raw: &str, escapes: Escapes) -> Result<String, CodecError> {
    if escapes == Escapes::Raw || !raw.contains('\\') {
        return Ok(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let mut after = rest[pos + 1..].chars();
        let ch = match after.next() {
            Some('\\') => '\\',
            Some('n') => '\n',
            Some('c') => ':',
            Some('r') if escapes == Escapes::V1_2 => '\r',
            Some(other) => return Err(CodecError::InvalidEscape(format!("\\{other}"))),
            None => return Err(CodecError::InvalidEscape("\\".to_string())),
        };
        out.push(ch);
        rest = after.as_str();
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_content_length(raw: &str, limit: usize) -> Result<usize, CodecError> {
    // RabbitMQ trims whitespace around the number.
    let digits = raw.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodecError::InvalidContentLength(excerpt(raw)));
    }
    // All digits: the only possible failure is overflow, which is "too large".
    digits
        .parse::<usize>()
        .map_err(|_| CodecError::FrameTooLarge { limit })
}

/// Encodes `frame` into `out`:
/// `COMMAND\n`, `name:value\n` per header in order, a blank line, the body, `\0\n`.
///
/// * Header names and values are escaped (`\\ \n \c \r`) for every version, as RabbitMQ
///   does even for 1.0, except on CONNECT/STOMP/CONNECTED, which are never escaped (the
///   caller must not put CR/LF in those).
/// * `content-length` always tells the truth: the first `content-length` header is written
///   with the body's actual length (later duplicates are dropped), and if there is none one
///   is appended as the last header when the body is non-empty.
/// * The trailing LF after the NUL is what RabbitMQ sends (rabbitmq-stomp#39).
///
/// `version` is accepted for symmetry with the decoder; all versions encode the same.
pub fn encode(frame: &Frame, version: Version, out: &mut BytesMut) {
    out.reserve(encoded_len(frame, version));
    let escape = frame.command.escapes_headers();
    let body_len = frame.body.len();
    out.put_slice(frame.command.as_str().as_bytes());
    out.put_u8(b'\n');
    let mut wrote_length = false;
    for (name, value) in frame.headers.iter() {
        if name == "content-length" {
            if !wrote_length {
                wrote_length = true;
                out.put_slice(b"content-length:");
                put_decimal(out, body_len);
                out.put_u8(b'\n');
            }
            continue;
        }
        put_header_part(out, name.as_bytes(), escape);
        out.put_u8(b':');
        put_header_part(out, value.as_bytes(), escape);
        out.put_u8(b'\n');
    }
    if !wrote_length && body_len > 0 {
        out.put_slice(b"content-length:");
        put_decimal(out, body_len);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.put_slice(&frame.body);
    out.put_slice(b"\0\n");
}

/// Exact number of bytes [`encode`] writes for `frame`.
pub fn encoded_len(frame: &Frame, version: Version) -> usize {
    let _ = version;
    let escape = frame.command.escapes_headers();
    let body_len = frame.body.len();
    let length_header = "content-length:".len() + decimal_len(body_len) + 1;
    let mut len = frame.command.as_str().len() + 1;
    let mut wrote_length = false;
    for (name, value) in frame.headers.iter() {
        if name == "content-length" {
            if !wrote_length {
                wrote_length = true;
                len += length_header;
            }
            continue;
        }
        len += escaped_len(name.as_bytes(), escape) + 1 + escaped_len(value.as_bytes(), escape) + 1;
    }
    if !wrote_length && body_len > 0 {
        len += length_header;
    }
    len + 1 + body_len + 2
}

fn escape_of(byte: u8) -> Option<&'static [u8]> {
    match byte {
        b'\\' => Some(b"\\\\"),
        b'\n' => Some(b"\\n"),
        b'\r' => Some(b"\\r"),
        b':' => Some(b"\\c"),
        _ => None,
    }
}

fn put_header_part(out: &mut BytesMut, part: &[u8], escape: bool) {
    if !escape {
        out.put_slice(part);
        return;
    }
    let mut start = 0;
    for (i, &b) in part.iter().enumerate() {
        if let Some(esc) = escape_of(b) {
            out.put_slice(&part[start..i]);
            out.put_slice(esc);
            start = i + 1;
        }
    }
    out.put_slice(&part[start..]);
}

fn escaped_len(part: &[u8], escape: bool) -> usize {
    if !escape {
        return part.len();
    }
    part.len()
        + part
            .iter()
            .filter(|&&b| matches!(b, b'\\' | b'\n' | b'\r' | b':'))
            .count()
}

fn put_decimal(out: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

fn decimal_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests;
