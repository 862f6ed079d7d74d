//! `bench fanout`: N WebSocket subscribers on one destination and one AMQP publisher.
//!
//! Every subscriber CONNECTs (heart-beat 0,0) and SUBSCRIBEs with a receipt; publishing
//! starts once every subscriber has its RECEIPT (or failed). The publisher (lapin, publisher
//! confirms) sends `--size`-byte bodies stamped with a sequence number and the send time,
//! paced (`--rate R`, each message due at start + i/R) or as fast as allowed (`--rate max`:
//! at most `--window` unconfirmed messages, and never more than `--max-lag` messages ahead
//! of the slowest live subscriber, so broker queues stay bounded). Subscribers record
//! latency (receive time - send time) for messages sent inside the measurement window
//! (after `--warmup`, for `--duration`), count deliveries received inside it, and track
//! every sequence number for loss, duplicates and reordering after a drain period.

use super::client::{ClientError, StompWs, Target};
use super::connections::cpu_seconds;
use super::stats::{
    Delivery, Latencies, Pacer, SeqOutcome, SeqTracker, Stamp, Summary, new_body, new_histogram,
    now_ns, read_stamp, round3, write_stamp,
};
use super::{CommonArgs, ErrorCounts, progress};
use crate::stomp::Command;
use clap::Parser;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, PublisherConfirm};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The publisher's broker (the one behind --url).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// Number of WebSocket subscribers.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// What every subscriber subscribes to.
    #[arg(long, default_value = "/exchange/amq.topic/bench.fanout")]
    pub destination: String,
    /// Exchange to publish to (default: derived from --destination).
    #[arg(long)]
    pub exchange: Option<String>,
    /// Routing key to publish with (default: derived from --destination).
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Body size in bytes (at least 42: the stamp).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages per second, or `max`.
    #[arg(long, default_value = "max")]
    pub rate: Rate,
    /// Measurement window (seconds), after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Publishing before the measurement window (seconds).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Longest wait for outstanding deliveries after the last publish (seconds).
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Unconfirmed publishes in flight at most.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Messages the publisher may be ahead of the slowest live subscriber (default:
    /// 10,000 deliveries in flight, i.e. 10000/N, between 10 and 1000).
    #[arg(long)]
    pub max_lag: Option<u64>,
    /// Processes whose CPU time over the measurement window is reported, as NAME=PID
    /// (repeatable; e.g. --cpu-pid broker=4242 --cpu-pid gateway=4343).
    #[arg(long, value_parser = parse_named_pid)]
    pub cpu_pid: Vec<(String, u32)>,
}

impl FanoutArgs {
    /// `--max-lag`, or its default for `--subscribers`.
    pub fn effective_max_lag(&self) -> u64 {
        self.max_lag
            .unwrap_or_else(|| (10_000 / self.subscribers.max(1) as u64).clamp(10, 1000))
    }
}

fn parse_named_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PID, got {s:?}"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("PID must be a number in {s:?}"))?;
    Ok((name.to_string(), pid))
}

/// `--rate`: a number of messages per second, or `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    Max,
    PerSecond(f64),
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate::PerSecond(r)),
            _ => Err(format!(
                "rate must be a positive number or `max`, got {s:?}"
            )),
        }
    }
}

/// The exchange and routing key a publisher uses to reach subscribers of a destination
/// (Web-STOMP's destination grammar).
pub fn route_of(destination: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = destination.splitn(4, '/').collect();
    match parts.as_slice() {
        ["", "exchange", exchange] => Some((exchange.to_string(), String::new())),
        ["", "exchange", exchange, key] => Some((exchange.to_string(), key.to_string())),
        ["", "topic", key] => Some(("amq.topic".into(), key.to_string())),
        ["", "topic", a, b] => Some(("amq.topic".into(), format!("{a}/{b}"))),
        ["", "queue", queue] => Some((String::new(), queue.to_string())),
        ["", "amq", "queue", queue] => Some((String::new(), queue.to_string())),
        _ => None,
    }
}

/// What a fanout run measured.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub url: String,
    pub destination: String,
    pub exchange: String,
    pub routing_key: String,
    pub size: usize,
    /// Target rate (msg/s); null for `max`.
    pub rate: Option<f64>,
    pub subscribers_requested: usize,
    pub subscribers: usize,
    pub connect_failed: u64,
    pub connect_errors: ErrorCounts,
    /// First connect to last RECEIPT.
    pub connect_s: f64,
    pub sessions_per_s: f64,
    /// Per connection: TCP + WebSocket + CONNECT + SUBSCRIBE/RECEIPT.
    pub connect_ms: Summary,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub published: u64,
    pub published_in_window: u64,
    pub publish_rate: f64,
    pub confirms_nacked: u64,
    /// Times the publisher waited for the slowest subscriber (`--max-lag`).
    pub publisher_stalls: u64,
    pub deliveries_in_window: u64,
    /// Deliveries received inside the measurement window, all subscribers, per second.
    pub deliveries_per_s: f64,
    #[serde(flatten)]
    pub delivery: Delivery,
    /// MESSAGE frames that were not this run's (other publishers, old messages).
    pub foreign: u64,
    /// Subscribers whose connection ended before the run did.
    pub subscribers_dropped: u64,
    pub drop_errors: ErrorCounts,
    /// Publish to receipt, for messages sent inside the window.
    pub latency_ms: Summary,
    pub drain_s: f64,
    /// CPU used over the measurement window by this client and each --cpu-pid.
    pub cpu: BTreeMap<String, CpuUse>,
    pub window: usize,
    pub max_lag: u64,
    pub nofile_limit: u64,
}

#[derive(Debug, Serialize)]
pub struct CpuUse {
    pub pid: u32,
    pub cpu_s: f64,
    /// Average cores busy.
    pub cores: f64,
    /// CPU time per delivery inside the window.
    pub us_per_delivery: Option<f64>,
}

impl FanoutReport {
    pub fn human(&self) -> String {
        let rate = self
            .rate
            .map(|r| format!("{r} msg/s"))
            .unwrap_or_else(|| "max".into());
        let l = &self.latency_ms;
        let c = &self.connect_ms;
        let mut s = format!(
            "fanout {url} {dest} (publish {ex}/{rk})\n\
             subscribers   {subs}/{req} connected in {cs:.2} s ({sps:.0}/s; per connection p50 {c50} ms, p99 {c99} ms, max {cmax} ms)\n\
             publisher     {size} B at {rate}: {pubd} published ({ppw} in the {dur} s window, {prate:.0} msg/s), {nack} nacked, {stalls} stalls\n\
             deliveries    {dps:.0}/s ({diw} in window)\n\
             latency ms    p50 {p50}  p90 {p90}  p99 {p99}  max {max}  ({n} samples)\n\
             delivery      expected {exp}, received {rec}, lost {lost}, duplicated {dup}, out-of-order {ooo}, foreign {foreign}, dropped subscribers {dropped}\n",
            url = self.url,
            dest = self.destination,
            ex = self.exchange,
            rk = self.routing_key,
            subs = self.subscribers,
            req = self.subscribers_requested,
            cs = self.connect_s,
            sps = self.sessions_per_s,
            c50 = c.p50,
            c99 = c.p99,
            cmax = c.max,
            size = self.size,
            pubd = self.published,
            ppw = self.published_in_window,
            dur = self.duration_s,
            prate = self.publish_rate,
            nack = self.confirms_nacked,
            stalls = self.publisher_stalls,
            dps = self.deliveries_per_s,
            diw = self.deliveries_in_window,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            max = l.max,
            n = l.count,
            exp = self.delivery.expected,
            rec = self.delivery.received,
            lost = self.delivery.lost,
            dup = self.delivery.duplicated,
            ooo = self.delivery.out_of_order,
            foreign = self.foreign,
            dropped = self.subscribers_dropped,
        );
        if !self.cpu.is_empty() {
            s.push_str("cpu (window) ");
            for (name, c) in &self.cpu {
                s.push_str(&format!(
                    "  {name} {:.2} cores, {} us/delivery;",
                    c.cores,
                    c.us_per_delivery
                        .map(|v| format!("{v:.1}"))
                        .unwrap_or_else(|| "-".into())
                ));
            }
            s.push('\n');
        }
        if self.connect_failed > 0 {
            s.push_str("connect errors:\n");
            s.push_str(&self.connect_errors.human());
        }
        if self.subscribers_dropped > 0 {
            s.push_str("subscriber errors:\n");
            s.push_str(&self.drop_errors.human());
        }
        s.push_str(
            "hint: broker queues during a run: rabbitmqctl [-n NODE] list_queues name | grep -c .\n",
        );
        s
    }
}

/// State shared by the publisher, the subscribers and the coordinator.
struct Shared {
    run: u32,
    target: Target,
    destination: String,
    /// Per subscriber: highest sequence number received + 1; u64::MAX once it is gone
    /// (or never subscribed), so the publisher stops waiting for it.
    progress: Vec<AtomicU64>,
    window_start_ns: AtomicU64,
    window_end_ns: AtomicU64,
    latencies: Latencies,
    subscribed: AtomicUsize,
    failed: AtomicUsize,
    stop: CancellationToken,
}

impl Shared {
    /// Lowest progress over live subscribers (u64::MAX when none is live).
    fn min_progress(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .min()
            .unwrap_or(u64::MAX)
    }
}

#[derive(Default)]
struct SubResult {
    connect_time: Option<Duration>,
    connect_error: Option<ClientError>,
    drop_error: Option<ClientError>,
    tracker: SeqTracker,
    in_window: u64,
    foreign: u64,
}

/// Runs the scenario. `nofile` is the descriptor limit in force (reported).
pub async fn run(args: &FanoutArgs, nofile: u64) -> anyhow::Result<FanoutReport> {
    anyhow::ensure!(args.subscribers > 0, "--subscribers must be at least 1");
    anyhow::ensure!(
        args.size >= super::stats::BODY_HEADER_LEN,
        "--size must be at least {} bytes",
        super::stats::BODY_HEADER_LEN
    );
    let (exchange, routing_key) = match (&args.exchange, &args.routing_key) {
        (Some(e), Some(k)) => (e.clone(), k.clone()),
        (e, k) => {
            let (de, dk) = route_of(&args.destination).ok_or_else(|| {
                anyhow::anyhow!(
                    "cannot derive exchange/routing key from {}; give --exchange and --routing-key",
                    args.destination
                )
            })?;
            (e.clone().unwrap_or(de), k.clone().unwrap_or(dk))
        }
    };
    let target = args.common.target().await?;
    let n = args.subscribers;
    let shared = Arc::new(Shared {
        run: rand::random(),
        target,
        destination: args.destination.clone(),
        progress: (0..n).map(|_| AtomicU64::new(0)).collect(),
        window_start_ns: AtomicU64::new(0),
        window_end_ns: AtomicU64::new(0),
        latencies: Latencies::new(16),
        subscribed: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        stop: CancellationToken::new(),
    });

    // Connect and subscribe everyone.
    progress(format!(
        "connecting {n} subscribers to {} ({} at a time)",
        args.common.url, args.connect_concurrency
    ));
    let semaphore = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let connect_start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| tokio::spawn(subscriber(i, shared.clone(), semaphore.clone())))
        .collect();
    let mut last_report = Instant::now();
    loop {
        let ok = shared.subscribed.load(Ordering::Acquire);
        let failed = shared.failed.load(Ordering::Acquire);
        if ok + failed >= n {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            progress(format!("  {ok}/{n} subscribed, {failed} failed"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    let subscribed = shared.subscribed.load(Ordering::Acquire);
    progress(format!(
        "subscribed {subscribed}/{n} in {connect_s:.2} s ({} failed)",
        shared.failed.load(Ordering::Acquire)
    ));

    let mut publisher = PubResult::default();
    let mut drain_s = 0.0;
    let mut sampler = None;
    let outcome = if subscribed == 0 {
        Err(anyhow::anyhow!("no subscriber could subscribe"))
    } else {
        progress(format!(
            "publishing to {exchange}/{routing_key} for {} + {} s",
            args.warmup, args.duration
        ));
        let mut pids = vec![("client".to_string(), std::process::id())];
        pids.extend(args.cpu_pid.iter().cloned());
        let (warmup, duration) = (args.warmup, args.duration);
        sampler = Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
            let before: Vec<_> = pids.iter().map(|(_, p)| cpu_seconds(*p)).collect();
            tokio::time::sleep(Duration::from_secs_f64(duration)).await;
            pids.into_iter()
                .zip(before)
                .filter_map(|((name, pid), b)| Some((name, pid, cpu_seconds(pid)? - b?)))
                .collect::<Vec<_>>()
        }));
        match publish(args, &shared, &exchange, &routing_key).await {
            Ok(p) => {
                publisher = p;
                // Drain: wait until every live subscriber saw the last message.
                let drain_start = Instant::now();
                let deadline = drain_start + Duration::from_secs_f64(args.drain);
                while shared.min_progress() < publisher.published && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                drain_s = drain_start.elapsed().as_secs_f64();
                // A little longer, so late duplicates are counted too.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    shared.stop.cancel();

    let mut connect_hist = new_histogram();
    let mut connect_errors = ErrorCounts::default();
    let mut drop_errors = ErrorCounts::default();
    let mut delivery = Delivery::default();
    let (mut in_window, mut foreign, mut dropped) = (0u64, 0u64, 0u64);
    for h in handles {
        let r = h.await?;
        if let Some(e) = &r.connect_error {
            connect_errors.add(e);
            continue;
        }
        if let Some(t) = r.connect_time {
            connect_hist.saturating_record((t.as_micros() as u64).max(1));
        }
        if let Some(e) = &r.drop_error {
            drop_errors.add(e);
            dropped += 1;
        }
        delivery.add(&r.tracker, publisher.published);
        in_window += r.in_window;
        foreign += r.foreign;
    }
    outcome?;

    let duration = args.duration.max(1e-9);
    let mut cpu = BTreeMap::new();
    if let Some(sampler) = sampler {
        for (name, pid, cpu_s) in sampler.await? {
            cpu.insert(
                name,
                CpuUse {
                    pid,
                    cpu_s: round3(cpu_s),
                    cores: round3(cpu_s / duration),
                    us_per_delivery: (in_window > 0)
                        .then(|| round3(cpu_s * 1e6 / in_window as f64)),
                },
            );
        }
    }
    Ok(FanoutReport {
        scenario: "fanout",
        url: args.common.url.clone(),
        destination: args.destination.clone(),
        exchange,
        routing_key,
        size: args.size,
        rate: match args.rate {
            Rate::Max => None,
            Rate::PerSecond(r) => Some(r),
        },
        subscribers_requested: n,
        subscribers: subscribed,
        connect_failed: connect_errors.total(),
        connect_errors,
        connect_s: round3(connect_s),
        sessions_per_s: round3(subscribed as f64 / connect_s.max(1e-9)),
        connect_ms: Summary::from_micros(&connect_hist, 1000.0),
        warmup_s: args.warmup,
        duration_s: args.duration,
        published: publisher.published,
        published_in_window: publisher.in_window,
        publish_rate: round3(publisher.in_window as f64 / duration),
        confirms_nacked: publisher.nacked,
        publisher_stalls: publisher.stalls,
        deliveries_in_window: in_window,
        deliveries_per_s: round3(in_window as f64 / duration),
        delivery,
        foreign,
        subscribers_dropped: dropped,
        drop_errors,
        latency_ms: Summary::from_micros(&shared.latencies.merged(), 1000.0),
        drain_s: round3(drain_s),
        cpu,
        window: args.window,
        max_lag: args.effective_max_lag(),
        nofile_limit: nofile,
    })
}

async fn subscriber(i: usize, shared: Arc<Shared>, semaphore: Arc<Semaphore>) -> SubResult {
    let mut result = SubResult::default();
    let permit = semaphore.acquire_owned().await.expect("semaphore open");
    let started = Instant::now();
    let timeout = shared.target.timeout;
    let connected = async {
        let mut c = StompWs::connect(&shared.target, i).await?;
        c.subscribe("0", &shared.destination, timeout).await?;
        Ok::<_, ClientError>(c)
    }
    .await;
    drop(permit);
    let mut client = match connected {
        Ok(c) => c,
        Err(e) => {
            result.connect_error = Some(e);
            shared.progress[i].store(u64::MAX, Ordering::Relaxed);
            shared.failed.fetch_add(1, Ordering::AcqRel);
            return result;
        }
    };
    result.connect_time = Some(started.elapsed());
    shared.subscribed.fetch_add(1, Ordering::AcqRel);

    let mut local = shared.latencies.local(i);
    let progress = &shared.progress[i];
    loop {
        let frame = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            f = client.next_frame() => f,
        };
        match frame {
            Ok(Some(f)) if f.command == Command::Message => {
                let now = now_ns();
                match read_stamp(&f.body) {
                    Some(Stamp { run, seq, sent_ns }) if run == shared.run => {
                        let outcome = result.tracker.record(seq);
                        if outcome == SeqOutcome::Foreign {
                            result.foreign += 1;
                            continue;
                        }
                        progress.store(result.tracker.next, Ordering::Relaxed);
                        let start = shared.window_start_ns.load(Ordering::Relaxed);
                        let end = shared.window_end_ns.load(Ordering::Relaxed);
                        if now >= start && now < end {
                            result.in_window += 1;
                        }
                        if outcome != SeqOutcome::Duplicate && sent_ns >= start && sent_ns < end {
                            local.record(&shared.latencies, now.saturating_sub(sent_ns) / 1000);
                        }
                    }
                    _ => result.foreign += 1,
                }
            }
            Ok(Some(f)) if f.command == Command::Error => {
                result.drop_error = Some(ClientError::StompError(
                    f.get("message").unwrap_or("(no message)").to_string(),
                ));
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                result.drop_error = Some(ClientError::Closed);
                break;
            }
            Err(e) => {
                result.drop_error = Some(e);
                break;
            }
        }
    }
    local.flush(&shared.latencies);
    if result.drop_error.is_some() {
        progress.store(u64::MAX, Ordering::Relaxed);
    } else {
        client.close().await;
    }
    result
}

#[derive(Default)]
struct PubResult {
    published: u64,
    in_window: u64,
    nacked: u64,
    stalls: u64,
}

async fn publish(
    args: &FanoutArgs,
    shared: &Shared,
    exchange: &str,
    routing_key: &str,
) -> anyhow::Result<PubResult> {
    let connection = Connection::connect(
        &args.amqp_url,
        ConnectionProperties::default().with_connection_name("stompgate-bench publisher".into()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("AMQP connect to the publisher's broker: {e}"))?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut body = new_body(args.size);
    let window = args.window.max(1);
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(window);
    let exchange = ShortString::from(exchange);
    let routing_key = ShortString::from(routing_key);
    let mut result = PubResult::default();
    let total = Duration::from_secs_f64(args.warmup + args.duration);
    let pacer = match args.rate {
        Rate::Max => None,
        Rate::PerSecond(r) => Some(Pacer::new(r)),
    };

    let start = Instant::now();
    let start_ns = now_ns();
    let window_start = start_ns + (args.warmup * 1e9) as u64;
    let window_end = window_start + (args.duration * 1e9) as u64;
    shared.window_end_ns.store(window_end, Ordering::Relaxed);
    shared
        .window_start_ns
        .store(window_start, Ordering::Relaxed);
    let max_lag = args.effective_max_lag();
    let mut lag_floor = 0u64;
    let mut seq = 0u64;
    'publishing: loop {
        if let Some(p) = pacer {
            let due = p.due(seq);
            if due >= total {
                break;
            }
            tokio::time::sleep_until((start + due).into()).await;
        } else if start.elapsed() >= total {
            break;
        }
        // Stay at most --max-lag messages ahead of the slowest live subscriber.
        if seq >= lag_floor.saturating_add(max_lag) {
            lag_floor = shared.min_progress();
            let mut stalled = false;
            while seq >= lag_floor.saturating_add(max_lag) {
                if start.elapsed() >= total {
                    break 'publishing;
                }
                stalled = true;
                tokio::time::sleep(Duration::from_micros(200)).await;
                lag_floor = shared.min_progress();
            }
            result.stalls += stalled as u64;
        }
        while in_flight.len() >= window {
            let oldest = in_flight.pop_front().expect("non-empty");
            result.nacked += nacked(oldest.confirmed().await?);
        }
        let sent_ns = now_ns();
        write_stamp(
            &mut body,
            Stamp {
                run: shared.run,
                seq,
                sent_ns,
            },
        );
        // lapin queues the frames on the first poll and resolves the future once its IO
        // loop wrote them; awaiting that for every message would cost a thread handoff per
        // publish, so the send is polled once here and finished later, in order.
        let (channel, exchange, routing_key, payload) = (
            channel.clone(),
            exchange.clone(),
            routing_key.clone(),
            body.clone(),
        );
        let mut send: SendFuture = Box::pin(async move {
            channel
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default(),
                )
                .await
        });
        in_flight.push_back(match futures::poll!(send.as_mut()) {
            Poll::Ready(confirm) => InFlight::Confirming(confirm?),
            Poll::Pending => InFlight::Sending(send),
        });
        seq += 1;
        if sent_ns >= window_start && sent_ns < window_end {
            result.in_window += 1;
        }
    }
    for publish in in_flight {
        result.nacked += nacked(publish.confirmed().await?);
    }
    result.published = seq;
    let _ = channel.close(200, "bench done".into()).await;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(result)
}

type SendFuture = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// A publish not yet confirmed: its frames may still be waiting for lapin's IO loop.
enum InFlight {
    Sending(SendFuture),
    Confirming(PublisherConfirm),
}

impl InFlight {
    async fn confirmed(self) -> lapin::Result<Confirmation> {
        match self {
            InFlight::Sending(send) => send.await?.await,
            InFlight::Confirming(confirm) => confirm.await,
        }
    }
}

fn nacked(c: Confirmation) -> u64 {
    matches!(c, Confirmation::Nack(_)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_from_destinations() {
        let r = |d: &str| route_of(d).map(|(e, k)| format!("{e}|{k}"));
        assert_eq!(
            r("/exchange/amq.topic/bench.fanout").as_deref(),
            Some("amq.topic|bench.fanout")
        );
        assert_eq!(r("/exchange/x").as_deref(), Some("x|"));
        assert_eq!(r("/exchange/x/a/b").as_deref(), Some("x|a/b"));
        assert_eq!(r("/topic/t.1").as_deref(), Some("amq.topic|t.1"));
        assert_eq!(r("/queue/q").as_deref(), Some("|q"));
        assert_eq!(r("/amq/queue/q").as_deref(), Some("|q"));
        assert_eq!(r("/temp-queue/x"), None);
        assert_eq!(r("nonsense"), None);
    }

    #[test]
    fn rate_parses() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("MAX".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("300".parse::<Rate>(), Ok(Rate::PerSecond(300.0)));
        assert_eq!("2.5".parse::<Rate>(), Ok(Rate::PerSecond(2.5)));
        assert!("0".parse::<Rate>().is_err());
        assert!("-1".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }

    #[test]
    fn args_parse_with_defaults() {
        let a = FanoutArgs::try_parse_from([
            "fanout",
            "--subscribers",
            "5",
            "--rate",
            "30",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--source-ips",
            "127.0.0.1,127.0.0.2",
        ])
        .unwrap();
        assert_eq!(a.subscribers, 5);
        assert_eq!(a.rate, Rate::PerSecond(30.0));
        assert_eq!(a.common.source_ips.len(), 2);
        assert_eq!(a.destination, "/exchange/amq.topic/bench.fanout");
        assert_eq!(a.size, 100);
    }
}
