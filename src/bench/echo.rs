//! `bench echo`: one client SUBSCRIBEs to a queue and SENDs `--count` messages to it one at
//! a time, each waiting for its own MESSAGE: the round trip through the broker.

use super::client::StompWs;
use super::stats::{
    Stamp, Summary, new_body, new_histogram, now_ns, read_stamp, round3, write_stamp,
};
use super::{CommonArgs, progress};
use crate::stomp::{Command, Frame};
use bytes::Bytes;
use clap::Parser;
use serde::Serialize;
use std::time::Instant;

#[derive(Parser, Debug, Clone)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Queue (or any destination) the client both subscribes and sends to.
    #[arg(long, default_value = "/queue/bench.echo")]
    pub destination: String,
    /// Measured round trips.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Round trips before the measured ones.
    #[arg(long, default_value_t = 50)]
    pub warmup: u64,
    /// Body size in bytes (at least 42: the stamp).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
}

#[derive(Debug, Serialize)]
pub struct EchoReport {
    pub scenario: &'static str,
    pub url: String,
    pub destination: String,
    pub size: usize,
    pub round_trips: u64,
    pub elapsed_s: f64,
    pub round_trips_per_s: f64,
    pub latency_us: Summary,
    /// MESSAGE frames that were not the awaited one (stale messages in the queue).
    pub foreign: u64,
    pub connect_ms: f64,
    pub nofile_limit: u64,
}

impl EchoReport {
    pub fn human(&self) -> String {
        let l = &self.latency_us;
        format!(
            "echo {url} {dest}, {size} B\n\
             round trips   {n} in {el:.3} s = {rps:.0}/s (connect {cms} ms)\n\
             latency us    p50 {p50}  p90 {p90}  p99 {p99}  max {max}\n\
             foreign       {foreign}\n",
            url = self.url,
            dest = self.destination,
            size = self.size,
            n = self.round_trips,
            el = self.elapsed_s,
            rps = self.round_trips_per_s,
            cms = self.connect_ms,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            max = l.max,
            foreign = self.foreign,
        )
    }
}

pub async fn run(args: &EchoArgs, nofile: u64) -> anyhow::Result<EchoReport> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    anyhow::ensure!(
        args.size >= super::stats::BODY_HEADER_LEN,
        "--size must be at least {} bytes",
        super::stats::BODY_HEADER_LEN
    );
    let target = args.common.target().await?;
    let run: u32 = rand::random();
    let connect_start = Instant::now();
    let mut client = StompWs::connect(&target, 0)
        .await
        .map_err(|e| anyhow::anyhow!("connect to {}: {e}", args.common.url))?;
    client
        .subscribe("0", &args.destination, target.timeout)
        .await
        .map_err(|e| anyhow::anyhow!("subscribe to {}: {e}", args.destination))?;
    let connect_ms = round3(connect_start.elapsed().as_secs_f64() * 1000.0);
    progress(format!(
        "echo: {} + {} round trips of {} B via {}",
        args.warmup, args.count, args.size, args.destination
    ));

    let mut body = new_body(args.size);
    let mut hist = new_histogram();
    let mut foreign = 0u64;
    let mut measured_start = Instant::now();
    for seq in 0..args.warmup + args.count {
        if seq == args.warmup {
            measured_start = Instant::now();
        }
        write_stamp(
            &mut body,
            Stamp {
                run,
                seq,
                sent_ns: now_ns(),
            },
        );
        let frame = Frame::new(Command::Send)
            .header("destination", args.destination.as_str())
            .with_body(Bytes::copy_from_slice(&body));
        let sent = Instant::now();
        client
            .send(&frame)
            .await
            .map_err(|e| anyhow::anyhow!("send #{seq}: {e}"))?;
        loop {
            let reply = client
                .expect_frame(target.timeout, "echo round trip")
                .await
                .map_err(|e| anyhow::anyhow!("waiting for #{seq}: {e}"))?;
            match reply.command {
                Command::Message => match read_stamp(&reply.body) {
                    Some(s) if s.run == run && s.seq == seq => break,
                    _ => foreign += 1,
                },
                Command::Error => anyhow::bail!(
                    "server sent ERROR: {}",
                    reply.get("message").unwrap_or("(no message)")
                ),
                _ => {}
            }
        }
        if seq >= args.warmup {
            hist.saturating_record((sent.elapsed().as_micros() as u64).max(1));
        }
    }
    let elapsed = measured_start.elapsed().as_secs_f64();
    client.close().await;
    Ok(EchoReport {
        scenario: "echo",
        url: args.common.url.clone(),
        destination: args.destination.clone(),
        size: args.size,
        round_trips: args.count,
        elapsed_s: round3(elapsed),
        round_trips_per_s: round3(args.count as f64 / elapsed.max(1e-9)),
        latency_us: Summary::from_micros(&hist, 1.0),
        foreign,
        connect_ms,
        nofile_limit: nofile,
    })
}
