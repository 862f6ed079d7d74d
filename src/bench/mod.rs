//! `stompgate bench`: a load tool for any `ws://` STOMP endpoint (stompgate or RabbitMQ's
//! Web-STOMP), so both are measured by the same client side by side.
//!
//! * `fanout`: N WebSocket subscribers, one AMQP publisher; deliveries/s, latency, loss.
//! * `connections`: C idle sessions (CONNECT + SUBSCRIBE); sessions/s and server RSS.
//! * `echo`: one client, request/response through a queue; round trips/s and latency.
//! * `operator`: N StompGateways against an API server with `stompgate operator` running.
//!
//! Results go to stdout: a human summary, or one JSON object with `--json`. Progress goes
//! to stderr.

pub mod client;
pub mod connections;
pub mod echo;
pub mod fanout;
pub mod operator;
pub mod stats;

use clap::{Args, Subcommand};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// `stompgate bench <scenario>`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// N subscribers on one destination, one AMQP publisher: throughput, latency, loss.
    Fanout(Box<fanout::FanoutArgs>),
    /// C idle sessions (CONNECT + one SUBSCRIBE): sessions/s, server memory per session.
    Connections(Box<connections::ConnectionsArgs>),
    /// One client: SEND to a queue it subscribes to, one message at a time: round trips.
    Echo(Box<echo::EchoArgs>),
    /// N StompGateways on an API server with the operator running: convergence, memory, idle
    /// writes, edit latency, deletion and leaks.
    Operator(Box<operator::OperatorBenchArgs>),
}

/// Flags every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// STOMP-over-WebSocket endpoint (stompgate or RabbitMQ Web-STOMP).
    #[arg(long, default_value = "ws://127.0.0.1:15674/ws")]
    pub url: String,
    #[arg(long, default_value = "guest")]
    pub login: String,
    #[arg(long, default_value = "guest")]
    pub passcode: String,
    /// STOMP `host` header (the RabbitMQ vhost).
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Local addresses to connect from, round robin (e.g. 127.0.0.1,127.0.0.2): each
    /// gives ~28,000 ephemeral ports towards one server address.
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// WebSocket read buffer per connection (bytes).
    #[arg(long, default_value_t = 8192)]
    pub read_buffer: usize,
    /// Timeout for each connect step and each awaited reply (seconds).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

impl CommonArgs {
    pub async fn target(&self) -> anyhow::Result<client::Target> {
        client::Target::resolve(
            &self.url,
            self.source_ips.clone(),
            self.read_buffer,
            &self.login,
            &self.passcode,
            &self.vhost,
            Duration::from_secs_f64(self.timeout),
        )
        .await
    }
}

/// Runs one scenario and prints its result.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Fanout(a) => {
            let nofile = raise_nofile_limit(a.subscribers as u64 + 256);
            let report = fanout::run(&a, nofile).await?;
            emit(a.common.json, &report, || report.human())
        }
        Scenario::Connections(a) => {
            let nofile = raise_nofile_limit(a.count as u64 + 256);
            let report = connections::run(&a, nofile).await?;
            emit(a.common.json, &report, || report.human())
        }
        Scenario::Echo(a) => {
            let nofile = raise_nofile_limit(256);
            let report = echo::run(&a, nofile).await?;
            emit(a.common.json, &report, || report.human())
        }
        Scenario::Operator(a) => {
            raise_nofile_limit(4096);
            let report = operator::run(&a).await?;
            emit(a.json, &report, || report.human())
        }
    }
}

fn emit<T: Serialize>(
    json: bool,
    report: &T,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", human());
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit, and both above `needed` when the
/// hard limit is lower and the process may raise it (root). Returns the soft limit.
pub fn raise_nofile_limit(needed: u64) -> u64 {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    if soft < needed {
        let want = needed.max(hard);
        if rlimit::Resource::NOFILE.set(want, want).is_ok() {
            return want;
        }
        eprintln!(
            "warning: RLIMIT_NOFILE is {soft} (hard {hard}), below the {needed} descriptors this run needs"
        );
    }
    rlimit::Resource::NOFILE
        .get()
        .map(|(s, _)| s)
        .unwrap_or(soft)
}

/// Counts of client errors by kind, with one example message each.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ErrorCounts(pub BTreeMap<String, ErrorKindCount>);

#[derive(Clone, Debug, Default, Serialize)]
pub struct ErrorKindCount {
    pub count: u64,
    pub example: String,
}

impl ErrorCounts {
    pub fn add(&mut self, e: &client::ClientError) {
        let entry = self.0.entry(e.kind()).or_default();
        if entry.count == 0 {
            entry.example = e.to_string();
        }
        entry.count += 1;
    }

    /// Adds `count` errors of a kind reported by an external client driver.
    pub fn add_kind(&mut self, kind: &str, count: u64, example: &str) {
        let entry = self.0.entry(kind.to_string()).or_default();
        if entry.count == 0 {
            entry.example = example.to_string();
        }
        entry.count += count;
    }

    pub fn total(&self) -> u64 {
        self.0.values().map(|e| e.count).sum()
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        for (kind, e) in &self.0 {
            s.push_str(&format!("  {:>7} x {kind} (e.g. {})\n", e.count, e.example));
        }
        s
    }
}

/// Prints a progress line on stderr.
pub(crate) fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}
