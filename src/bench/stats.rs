//! Measurement helpers with no IO: latency histograms, message bodies carrying a sequence
//! number and a send timestamp, per-subscriber loss/duplicate/order accounting, and the
//! publisher's pacing schedule.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest value a latency histogram holds (µs): one hour. Larger values saturate.
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Wall-clock nanoseconds since the Unix epoch (send timestamps; publisher and subscribers
/// run on the same host, so the same clock).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Latencies recorded by many tasks: a few mutex-protected shards (one histogram per task
/// would cost ~200 KB each at 10,000 subscribers), fed in batches by [`LocalLatencies`] and
/// merged at the end.
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    pub fn new(shards: usize) -> Self {
        Latencies {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    /// A per-task buffer that flushes into shard `index % shards`.
    pub fn local(&self, index: usize) -> LocalLatencies {
        LocalLatencies {
            shard: index % self.shards.len(),
            buf: Vec::with_capacity(LocalLatencies::BATCH),
        }
    }

    fn record_batch(&self, shard: usize, values: &[u64]) {
        let mut h = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        for &v in values {
            h.saturating_record(v.max(1));
        }
    }

    /// All shards merged into one histogram.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.add(&*h).expect("same bounds");
        }
        all
    }
}

/// A task's small buffer of latencies (µs); no allocation after creation.
pub struct LocalLatencies {
    shard: usize,
    buf: Vec<u64>,
}

impl LocalLatencies {
    const BATCH: usize = 64;

    pub fn record(&mut self, sink: &Latencies, micros: u64) {
        self.buf.push(micros);
        if self.buf.len() == Self::BATCH {
            self.flush(sink);
        }
    }

    pub fn flush(&mut self, sink: &Latencies) {
        if !self.buf.is_empty() {
            sink.record_batch(self.shard, &self.buf);
            self.buf.clear();
        }
    }
}

/// Percentiles of a histogram, in the unit chosen by [`Summary::from_micros`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Summarises a µs histogram, dividing every value by `divisor` (1 for µs, 1000 for ms).
    pub fn from_micros(h: &Histogram<u64>, divisor: f64) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let q = |q: f64| round3(h.value_at_quantile(q) as f64 / divisor);
        Summary {
            count: h.len(),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: round3(h.max() as f64 / divisor),
            mean: round3(h.mean() / divisor),
        }
    }
}

/// Rounds to 3 decimals (keeps the JSON readable).
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Bytes at the start of every benchmark body: `sg`, run id (8 hex), sequence number
/// (16 hex), send time in ns since the epoch (16 hex). ASCII, so the body is valid UTF-8
/// and survives WebSocket text frames (RabbitMQ Web-STOMP sends text frames).
pub const BODY_HEADER_LEN: usize = 2 + 8 + 16 + 16;

/// What a benchmark body carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub run: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// A body of `size` bytes (at least [`BODY_HEADER_LEN`]), padded with `.`; write stamps
/// into it with [`write_stamp`].
pub fn new_body(size: usize) -> Vec<u8> {
    let mut body = vec![b'.'; size.max(BODY_HEADER_LEN)];
    body[..2].copy_from_slice(b"sg");
    body
}

/// Writes the stamp into the first [`BODY_HEADER_LEN`] bytes of `body`, in place.
pub fn write_stamp(body: &mut [u8], stamp: Stamp) {
    body[..2].copy_from_slice(b"sg");
    write_hex(&mut body[2..10], stamp.run as u64);
    write_hex(&mut body[10..26], stamp.seq);
    write_hex(&mut body[26..42], stamp.sent_ns);
}

/// Reads a stamp from a body, None if it is not a benchmark body.
pub fn read_stamp(body: &[u8]) -> Option<Stamp> {
    if body.len() < BODY_HEADER_LEN || &body[..2] != b"sg" {
        return None;
    }
    Some(Stamp {
        run: read_hex(&body[2..10])? as u32,
        seq: read_hex(&body[10..26])?,
        sent_ns: read_hex(&body[26..42])?,
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

fn read_hex(digits: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &d in digits {
        let n = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | n as u64;
    }
    Some(v)
}

/// Sequence numbers beyond this are treated as foreign (keeps a corrupt body from
/// allocating a huge bitmap).
pub const MAX_SEQ: u64 = 1 << 32;

/// What one subscriber saw of the sequence 0, 1, 2, ...: a bitmap of received numbers.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    bits: Vec<u64>,
    /// Distinct sequence numbers received.
    pub unique: u64,
    pub duplicates: u64,
    /// Received after a higher number (first receipt only).
    pub out_of_order: u64,
    /// Highest number seen + 1 (0: nothing yet).
    pub next: u64,
}

/// What [`SeqTracker::record`] made of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqOutcome {
    InOrder,
    OutOfOrder,
    Duplicate,
    Foreign,
}

impl SeqTracker {
    pub fn record(&mut self, seq: u64) -> SeqOutcome {
        if seq >= MAX_SEQ {
            return SeqOutcome::Foreign;
        }
        let word = (seq / 64) as usize;
        if word >= self.bits.len() {
            let len = (word + 1).max(self.bits.len() * 2).max(16);
            self.bits.resize(len, 0);
        }
        let mask = 1u64 << (seq % 64);
        if self.bits[word] & mask != 0 {
            self.duplicates += 1;
            return SeqOutcome::Duplicate;
        }
        self.bits[word] |= mask;
        self.unique += 1;
        if seq + 1 < self.next {
            self.out_of_order += 1;
            SeqOutcome::OutOfOrder
        } else {
            self.next = seq + 1;
            SeqOutcome::InOrder
        }
    }

    /// Distinct numbers received below `published`.
    pub fn unique_below(&self, published: u64) -> u64 {
        let full = (published / 64) as usize;
        let mut n: u64 = self
            .bits
            .iter()
            .take(full)
            .map(|w| w.count_ones() as u64)
            .sum();
        let rest = published % 64;
        if rest > 0
            && let Some(w) = self.bits.get(full)
        {
            n += (w & ((1u64 << rest) - 1)).count_ones() as u64;
        }
        n
    }

    /// Messages 0..published never received.
    pub fn lost(&self, published: u64) -> u64 {
        published - self.unique_below(published)
    }
}

/// Loss/duplicate/order totals over all subscribers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl Delivery {
    /// Adds one subscriber that should have received every one of `published` messages.
    pub fn add(&mut self, tracker: &SeqTracker, published: u64) {
        self.expected += published;
        self.received += tracker.unique_below(published) + tracker.duplicates;
        self.lost += tracker.lost(published);
        self.duplicated += tracker.duplicates;
        self.out_of_order += tracker.out_of_order;
    }
}

/// Publishing schedule at a fixed rate: message `i` is due at `start + i / rate`, computed
/// from the start each time so that delays never accumulate (no sleep drift).
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    rate: f64,
}

impl Pacer {
    pub fn new(rate: f64) -> Self {
        assert!(rate > 0.0, "rate must be positive");
        Pacer { rate }
    }

    /// Offset of message `i` from the start.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64)
    }

    /// How many messages are due by `elapsed` (message 0 is due at once).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_shards_merge_and_percentiles() {
        let lat = Latencies::new(4);
        let mut a = lat.local(0);
        let mut b = lat.local(5);
        for v in 1..=500u64 {
            a.record(&lat, v);
        }
        for v in 501..=1000u64 {
            b.record(&lat, v);
        }
        a.flush(&lat);
        b.flush(&lat);
        let h = lat.merged();
        assert_eq!(h.len(), 1000);
        let s = Summary::from_micros(&h, 1.0);
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p90 - 900.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.max - 1000.0).abs() <= 1.0, "{s:?}");
        assert!((s.mean - 500.5).abs() <= 1.0, "{s:?}");
        let ms = Summary::from_micros(&h, 1000.0);
        assert!((ms.p99 - 0.99).abs() <= 0.002, "{ms:?}");
    }

    #[test]
    fn unflushed_values_are_not_lost_after_flush_and_zero_is_clamped() {
        let lat = Latencies::new(1);
        let mut l = lat.local(0);
        l.record(&lat, 0);
        assert_eq!(lat.merged().len(), 0);
        l.flush(&lat);
        let h = lat.merged();
        assert_eq!(h.len(), 1);
        assert_eq!(h.max(), 1);
        assert_eq!(
            Summary::from_micros(&new_histogram(), 1.0),
            Summary::default()
        );
    }

    #[test]
    fn body_stamp_round_trip_in_place() {
        let mut body = new_body(100);
        assert_eq!(body.len(), 100);
        let stamp = Stamp {
            run: 0xdead_beef,
            seq: 123_456_789,
            sent_ns: now_ns(),
        };
        write_stamp(&mut body, stamp);
        assert_eq!(read_stamp(&body), Some(stamp));
        assert!(std::str::from_utf8(&body).is_ok());
        assert!(body[BODY_HEADER_LEN..].iter().all(|&b| b == b'.'));
        let max = Stamp {
            run: u32::MAX,
            seq: u64::MAX,
            sent_ns: u64::MAX,
        };
        write_stamp(&mut body, max);
        assert_eq!(read_stamp(&body), Some(max));
        assert_eq!(new_body(3).len(), BODY_HEADER_LEN);
    }

    #[test]
    fn foreign_bodies_are_rejected() {
        assert_eq!(read_stamp(b"hello"), None);
        assert_eq!(read_stamp(&[b'x'; 64]), None);
        let mut body = new_body(64);
        write_stamp(
            &mut body,
            Stamp {
                run: 1,
                seq: 2,
                sent_ns: 3,
            },
        );
        body[12] = b'G';
        assert_eq!(read_stamp(&body), None);
    }

    #[test]
    fn seq_tracker_counts_loss_duplicates_and_reordering() {
        let mut t = SeqTracker::default();
        for seq in [0, 1, 2, 4, 5, 3, 5, 0, 700] {
            t.record(seq);
        }
        assert_eq!(t.unique, 7);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.next, 701);
        // 0..6 all seen; 6..10 lost; 700 is beyond what was published.
        assert_eq!(t.unique_below(6), 6);
        assert_eq!(t.lost(10), 4);
        assert_eq!(t.lost(701), 701 - 7);
        assert_eq!(t.record(MAX_SEQ), SeqOutcome::Foreign);
        assert_eq!(t.record(699), SeqOutcome::OutOfOrder);
        assert_eq!(t.record(699), SeqOutcome::Duplicate);
        assert_eq!(t.record(701), SeqOutcome::InOrder);

        let mut total = Delivery::default();
        let mut perfect = SeqTracker::default();
        (0..130).for_each(|s| {
            perfect.record(s);
        });
        total.add(&perfect, 130);
        let mut partial = SeqTracker::default();
        (0..130).filter(|s| s % 2 == 0).for_each(|s| {
            partial.record(s);
        });
        partial.record(64);
        total.add(&partial, 130);
        total.add(&SeqTracker::default(), 130);
        assert_eq!(
            total,
            Delivery {
                expected: 390,
                received: 130 + 65 + 1,
                lost: 65 + 130,
                duplicated: 1,
                out_of_order: 0,
            }
        );
    }

    #[test]
    fn pacer_schedule_has_no_drift() {
        let p = Pacer::new(3.0);
        assert_eq!(p.due(0), Duration::ZERO);
        assert_eq!(p.due(3), Duration::from_secs(1));
        assert_eq!(p.due(1), Duration::from_nanos(333_333_333));
        let p = Pacer::new(2000.0);
        assert_eq!(p.due(2000 * 3600), Duration::from_secs(3600));
        assert_eq!(p.due(1), Duration::from_micros(500));
        assert_eq!(p.due_by(Duration::ZERO), 1);
        assert_eq!(p.due_by(Duration::from_micros(499)), 1);
        assert_eq!(p.due_by(Duration::from_micros(500)), 2);
        assert_eq!(p.due_by(Duration::from_secs(10)), 20_001);
        // due_by and due agree: message i is due exactly when due_by first exceeds i.
        for i in [1u64, 7, 1999, 123_457] {
            assert_eq!(p.due_by(p.due(i)), i + 1);
        }
    }
}
