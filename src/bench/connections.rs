//! `bench connections`: C idle sessions (WebSocket + CONNECT + one SUBSCRIBE), opened
//! `--connect-concurrency` at a time, held for `--hold` seconds, then closed. Reports
//! sessions/s and, with `--pid`, the server's resident memory before and after, per session.
//!
//! `--client` picks who opens the sessions: `native` is this crate's lean client (SUBSCRIBE
//! with a receipt, sessions/s is first connect to last RECEIPT); the other profiles run the
//! real client libraries the way real pages and scripts use them (`tests/browser/
//! idle-sessions.mjs`, `tests/python/idle_sessions.py`; sessions/s is first connect to last
//! CONNECTED + SUBSCRIBE sent), so the memory figure holds for what browsers do, not only for
//! our own client.

use super::client::{ClientError, StompWs};
use super::stats::{Summary, new_histogram, round3};
use super::{CommonArgs, ErrorCounts, progress};
use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Who opens the sessions.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientProfile {
    /// This crate's client: subprotocols offered, heart-beats 0,0, SUBSCRIBE id 0 with receipt.
    Native,
    /// @stomp/stompjs 7 defaults from Node over the `ws` package: subprotocols offered,
    /// heart-beats 10000,10000, no receipt.
    Stompjs7,
    /// The Web-STOMP tutorial: stomp.js 2.3.3 over `new WebSocket(url)` (no subprotocol),
    /// heart-beats off.
    Stompjs2,
    /// Python `websockets` (no subprotocol, heart-beats 0,0, subscription id per session).
    Python,
    /// stomp.js 2.3.3 over sockjs-client 1.6.1, websocket transport.
    SockjsWebsocket,
    /// stomp.js 2.3.3 over sockjs-client 1.6.1, xhr-streaming transport.
    SockjsXhrStreaming,
}

impl ClientProfile {
    pub fn name(self) -> &'static str {
        match self {
            ClientProfile::Native => "native",
            ClientProfile::Stompjs7 => "stompjs7",
            ClientProfile::Stompjs2 => "stompjs2",
            ClientProfile::Python => "python",
            ClientProfile::SockjsWebsocket => "sockjs-websocket",
            ClientProfile::SockjsXhrStreaming => "sockjs-xhr-streaming",
        }
    }

    fn is_sockjs(self) -> bool {
        matches!(
            self,
            ClientProfile::SockjsWebsocket | ClientProfile::SockjsXhrStreaming
        )
    }
}

#[derive(Parser, Debug, Clone)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Sessions to open.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// What every session subscribes to.
    #[arg(long, default_value = "/exchange/amq.topic/bench.idle")]
    pub destination: String,
    /// Seconds to hold the sessions open once all are up.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Seconds to wait after the last session is up before reading the server's RSS.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Server process whose RSS (VmRSS) is reported before and after.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Add the RSS of every descendant of --pid.
    #[arg(long)]
    pub pid_tree: bool,
    /// Client implementation and profile that opens the sessions.
    #[arg(long, value_enum, default_value = "native")]
    pub client: ClientProfile,
    /// Directory holding browser/idle-sessions.mjs and python/idle_sessions.py.
    #[arg(long, env = "STOMPGATE_BENCH_DRIVERS", default_value = "tests")]
    pub drivers: PathBuf,
    /// Node.js for the JavaScript profiles.
    #[arg(long, default_value = "node")]
    pub node: PathBuf,
    /// Python for the `python` profile.
    #[arg(long, env = "STOMPGATE_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// SockJS endpoint for the sockjs profiles (default: --url with ws:// -> http:// and
    /// its last path segment replaced by `stomp`).
    #[arg(long)]
    pub sockjs_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ConnectionsReport {
    pub scenario: &'static str,
    pub client: ClientProfile,
    pub url: String,
    pub destination: String,
    pub requested: usize,
    pub sessions: usize,
    pub failed: u64,
    pub errors: ErrorCounts,
    /// First connect to the last session up (native: its RECEIPT; the other profiles:
    /// CONNECTED received and SUBSCRIBE sent).
    pub connect_s: f64,
    pub sessions_per_s: f64,
    pub connect_ms: Summary,
    pub hold_s: f64,
    /// Sessions that ended by themselves during the hold.
    pub dropped: u64,
    pub drop_errors: ErrorCounts,
    pub pid: Option<u32>,
    pub pid_tree: bool,
    pub rss_before_kb: Option<u64>,
    pub rss_after_kb: Option<u64>,
    pub rss_per_session_kb: Option<f64>,
    pub rss_after_close_kb: Option<u64>,
    /// The --pid process's CPU time over the hold (after the settle), in % of one core.
    pub idle_cpu_percent: Option<f64>,
    /// This client's own RSS with every session open (its per-connection overhead).
    pub client_rss_kb: Option<u64>,
    pub nofile_limit: u64,
}

impl ConnectionsReport {
    pub fn human(&self) -> String {
        let kb = |v: Option<u64>| v.map(|v| format!("{v} KB")).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "connections {url} {dest} ({profile} client)\n\
             sessions      {ok}/{req} in {cs:.2} s = {sps:.0} sessions/s (per session p50 {c50} ms, p99 {c99} ms, max {cmax} ms), {failed} failed\n\
             held          {hold} s, {dropped} dropped\n\
             server RSS    before {before}, after {after}, per session {per}, after close {closed}{tree}\n\
             server CPU    {cpu} of one core while idle\n\
             client RSS    {client_rss}\n",
            url = self.url,
            dest = self.destination,
            profile = self.client.name(),
            ok = self.sessions,
            req = self.requested,
            cs = self.connect_s,
            sps = self.sessions_per_s,
            c50 = self.connect_ms.p50,
            c99 = self.connect_ms.p99,
            cmax = self.connect_ms.max,
            failed = self.failed,
            hold = self.hold_s,
            dropped = self.dropped,
            before = kb(self.rss_before_kb),
            after = kb(self.rss_after_kb),
            per = self
                .rss_per_session_kb
                .map(|v| format!("{v:.1} KB"))
                .unwrap_or_else(|| "-".into()),
            closed = kb(self.rss_after_close_kb),
            cpu = self
                .idle_cpu_percent
                .map(|v| format!("{v:.2} %"))
                .unwrap_or_else(|| "-".into()),
            tree = if self.pid_tree { " (process tree)" } else { "" },
            client_rss = kb(self.client_rss_kb),
        );
        if self.failed > 0 {
            s.push_str("connect errors:\n");
            s.push_str(&self.errors.human());
        }
        if self.dropped > 0 {
            s.push_str("dropped sessions:\n");
            s.push_str(&self.drop_errors.human());
        }
        s
    }
}

/// How a native session ended (its connect time or error went to the opener already).
enum Outcome {
    Failed,
    Held { drop: Option<ClientError> },
}

/// Sessions that are up, whoever opened them.
struct Opened {
    sessions: usize,
    errors: ErrorCounts,
    connect_s: f64,
    connect_hist: Histogram<u64>,
    holder: Holder,
}

/// What closes the sessions at the end of the hold.
enum Holder {
    Native {
        stop: CancellationToken,
        handles: Vec<tokio::task::JoinHandle<Outcome>>,
    },
    External(Box<ExternalDriver>),
}

impl Holder {
    /// Closes every session; returns how many ended by themselves before, and why.
    async fn close(self) -> anyhow::Result<(u64, ErrorCounts)> {
        let mut drop_errors = ErrorCounts::default();
        let mut dropped = 0;
        match self {
            Holder::Native { stop, handles } => {
                stop.cancel();
                for h in handles {
                    if let Outcome::Held { drop: Some(e) } = h.await? {
                        drop_errors.add(&e);
                        dropped += 1;
                    }
                }
            }
            Holder::External(driver) => {
                let closed = (*driver).close().await?;
                for (kind, count) in closed.drop_errors {
                    drop_errors.add_kind(&kind, count, &kind);
                }
                dropped = closed.dropped;
            }
        }
        Ok((dropped, drop_errors))
    }
}

pub async fn run(args: &ConnectionsArgs, nofile: u64) -> anyhow::Result<ConnectionsReport> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    let rss = |pid: Option<u32>| pid.and_then(|p| rss_kb(p, args.pid_tree));
    let rss_before = rss(args.pid);
    let url = if args.client.is_sockjs() {
        match &args.sockjs_url {
            Some(u) => u.clone(),
            None => sockjs_url_of(&args.common.url)?,
        }
    } else {
        args.common.url.clone()
    };
    progress(format!(
        "opening {} sessions to {url} with the {} client ({} at a time)",
        args.count,
        args.client.name(),
        args.connect_concurrency
    ));
    let opened = match args.client {
        ClientProfile::Native => open_native(args).await?,
        _ => open_external(args, &url).await?,
    };
    let sessions = opened.sessions;
    progress(format!(
        "{sessions}/{} sessions up in {:.2} s; holding {} s",
        args.count, opened.connect_s, args.hold
    ));
    let settle = Duration::from_secs_f64(args.settle.min(args.hold.max(0.0)));
    tokio::time::sleep(settle).await;
    let rss_after = rss(args.pid);
    let client_rss = rss_kb(std::process::id(), false);
    // The server's CPU while the sessions idle (heart-beats, timers): the rest of the hold.
    let cpu_start = args.pid.and_then(cpu_seconds).map(|c| (c, Instant::now()));
    tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0)) - settle).await;
    let idle_cpu_percent = match (cpu_start, args.pid.and_then(cpu_seconds)) {
        (Some((before, at)), Some(after)) if at.elapsed() >= Duration::from_secs(1) => Some(
            round3((after - before) * 100.0 / at.elapsed().as_secs_f64()),
        ),
        _ => None,
    };

    progress("closing sessions");
    let (dropped, drop_errors) = opened.holder.close().await?;
    let rss_after_close = if args.pid.is_some() {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        rss(args.pid)
    } else {
        None
    };
    let per_session = match (rss_before, rss_after) {
        (Some(b), Some(a)) if sessions > 0 => Some(round3((a as f64 - b as f64) / sessions as f64)),
        _ => None,
    };
    let connect_s = opened.connect_s;
    Ok(ConnectionsReport {
        scenario: "connections",
        client: args.client,
        url,
        destination: args.destination.clone(),
        requested: args.count,
        sessions,
        failed: opened.errors.total(),
        errors: opened.errors,
        connect_s: round3(connect_s),
        sessions_per_s: round3(sessions as f64 / connect_s.max(1e-9)),
        connect_ms: Summary::from_micros(&opened.connect_hist, 1000.0),
        hold_s: args.hold,
        dropped,
        drop_errors,
        pid: args.pid,
        pid_tree: args.pid_tree,
        rss_before_kb: rss_before,
        rss_after_kb: rss_after,
        rss_per_session_kb: per_session,
        rss_after_close_kb: rss_after_close,
        idle_cpu_percent,
        client_rss_kb: client_rss,
        nofile_limit: nofile,
    })
}

/// Opens the sessions with this crate's client, in this process.
async fn open_native(args: &ConnectionsArgs) -> anyhow::Result<Opened> {
    let target = Arc::new(args.common.target().await?);
    let semaphore = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let stop = CancellationToken::new();
    let done = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let (connect_tx, mut connect_rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let handles: Vec<_> = (0..args.count)
        .map(|i| {
            let (target, semaphore, stop, done, ok, connect_tx) = (
                target.clone(),
                semaphore.clone(),
                stop.clone(),
                done.clone(),
                ok.clone(),
                connect_tx.clone(),
            );
            let destination = args.destination.clone();
            tokio::spawn(async move {
                let permit = semaphore.acquire_owned().await.expect("semaphore open");
                let started = Instant::now();
                let connected = async {
                    let mut c = StompWs::connect(&target, i).await?;
                    c.subscribe("0", &destination, target.timeout).await?;
                    Ok::<_, ClientError>(c)
                }
                .await;
                drop(permit);
                let connect_time = started.elapsed();
                let mut client = match connected {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = connect_tx.send(Err(e));
                        done.fetch_add(1, Ordering::AcqRel);
                        return Outcome::Failed;
                    }
                };
                let _ = connect_tx.send(Ok(connect_time));
                ok.fetch_add(1, Ordering::AcqRel);
                done.fetch_add(1, Ordering::AcqRel);
                // Idle: read (nothing is expected) until told to stop.
                let drop = loop {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break None,
                        f = client.next_frame() => match f {
                            Ok(Some(_)) => continue,
                            Ok(None) => break Some(ClientError::Closed),
                            Err(e) => break Some(e),
                        },
                    }
                };
                if drop.is_none() {
                    client.close().await;
                }
                Outcome::Held { drop }
            })
        })
        .collect();
    drop(connect_tx);

    let mut last_report = Instant::now();
    while done.load(Ordering::Acquire) < args.count {
        if last_report.elapsed() >= Duration::from_secs(2) {
            progress(format!(
                "  {}/{} up, {} failed",
                ok.load(Ordering::Acquire),
                args.count,
                done.load(Ordering::Acquire) - ok.load(Ordering::Acquire)
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_s = start.elapsed().as_secs_f64();
    let mut hist = new_histogram();
    let mut errors = ErrorCounts::default();
    while let Ok(result) = connect_rx.try_recv() {
        match result {
            Ok(t) => hist.saturating_record((t.as_micros() as u64).max(1)),
            Err(e) => errors.add(&e),
        }
    }
    Ok(Opened {
        sessions: ok.load(Ordering::Acquire),
        errors,
        connect_s,
        connect_hist: hist,
        holder: Holder::Native { stop, handles },
    })
}

/// First line of an external driver: every session is up or failed.
#[derive(Debug, Deserialize)]
struct DriverUp {
    sessions: usize,
    connect_s: f64,
    connect_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

/// Last line of an external driver: the sessions were closed.
#[derive(Debug, Deserialize)]
struct DriverClosed {
    dropped: u64,
    drop_errors: BTreeMap<String, u64>,
}

/// A driver process holding sessions open until its standard input closes.
struct ExternalDriver {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ExternalDriver {
    async fn next_event<T: serde::de::DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .context("the client driver did not report in time")??
            .context("the client driver exited early (see its stderr above)")?;
        serde_json::from_str(&line).with_context(|| format!("client driver printed {line:?}"))
    }

    async fn close(mut self) -> anyhow::Result<DriverClosed> {
        drop(self.child.stdin.take());
        let closed = self.next_event(Duration::from_secs(60)).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        closed
    }
}

/// Runs the client driver of the profile, which opens and holds the sessions.
async fn open_external(args: &ConnectionsArgs, url: &str) -> anyhow::Result<Opened> {
    let (program, script) = match args.client {
        ClientProfile::Python => (&args.python, args.drivers.join("python/idle_sessions.py")),
        _ => (&args.node, args.drivers.join("browser/idle-sessions.mjs")),
    };
    anyhow::ensure!(
        script.exists(),
        "{} not found (run from the repository root, or set --drivers)",
        script.display()
    );
    let mut command = tokio::process::Command::new(program);
    command.arg(&script);
    if args.client != ClientProfile::Python {
        command.arg(args.client.name());
    }
    command
        .arg("--url")
        .arg(url)
        .arg("--count")
        .arg(args.count.to_string())
        .arg("--concurrency")
        .arg(args.connect_concurrency.to_string())
        .arg("--destination")
        .arg(&args.destination)
        .arg("--login")
        .arg(&args.common.login)
        .arg("--passcode")
        .arg(&args.common.passcode)
        .arg("--vhost")
        .arg(&args.common.vhost)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if args.client == ClientProfile::Python {
        command
            .arg("--timeout")
            .arg(args.common.timeout.to_string());
    } else {
        command
            .arg("--timeout-ms")
            .arg(((args.common.timeout * 1000.0) as u64).to_string());
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let stdout = child.stdout.take().context("driver stdout")?;
    let mut driver = ExternalDriver {
        child,
        lines: BufReader::new(stdout).lines(),
    };
    // Every session gets its own connect timeout; the whole opening is bounded by that
    // many rounds of `--connect-concurrency` sessions.
    let rounds = args.count.div_ceil(args.connect_concurrency.max(1)) as f64;
    let limit = Duration::from_secs_f64(args.common.timeout * rounds + 60.0);
    let up: DriverUp = driver.next_event(limit).await?;
    let mut hist = new_histogram();
    for us in &up.connect_us {
        hist.saturating_record((*us).max(1));
    }
    let mut errors = ErrorCounts::default();
    for (kind, count) in &up.errors {
        errors.add_kind(kind, *count, kind);
    }
    Ok(Opened {
        sessions: up.sessions,
        errors,
        connect_s: up.connect_s,
        connect_hist: hist,
        holder: Holder::External(Box::new(driver)),
    })
}

/// `ws://host:port/ws` -> `http://host:port/stomp` (the gateway's default SockJS path).
pub fn sockjs_url_of(ws_url: &str) -> anyhow::Result<String> {
    let (scheme, rest) = ws_url
        .split_once("://")
        .with_context(|| format!("not a URL: {ws_url}"))?;
    let http = match scheme {
        "ws" => "http",
        "wss" => "https",
        other => anyhow::bail!("expected a ws:// or wss:// URL, got {other}://"),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(format!("{http}://{authority}/stomp"))
}

/// VmRSS of `pid` in KB, plus that of all its descendants when `tree`.
pub fn rss_kb(pid: u32, tree: bool) -> Option<u64> {
    let own = parse_vmrss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)?;
    if !tree {
        return Some(own);
    }
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            Some((p, parse_ppid(&stat)?))
        })
        .collect();
    let descendants = descendants_of(pid, &parents);
    Some(
        own + descendants
            .iter()
            .filter_map(|p| {
                parse_vmrss(&std::fs::read_to_string(format!("/proc/{p}/status")).ok()?)
            })
            .sum::<u64>(),
    )
}

/// `VmRSS:   1234 kB` from /proc/PID/status (None for kernel threads and zombies).
pub fn parse_vmrss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The parent PID from /proc/PID/stat (the field after the parenthesised name, which may
/// itself contain spaces and parentheses).
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of a process (all its threads) in clock ticks, from
/// /proc/PID/stat fields 14 and 15.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds a process has used so far (USER_HZ is 100 in the /proc ABI on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_cpu_ticks(&stat)? as f64 / 100.0)
}

/// Every process below `root` in a list of (pid, ppid).
pub fn descendants_of(root: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut found = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in parents {
            if parent == p && child != root && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsing() {
        let status = "Name:\tbeam.smp\nVmPeak:\t 999 kB\nVmRSS:\t  282012 kB\nThreads:\t40\n";
        assert_eq!(parse_vmrss(status), Some(282_012));
        assert_eq!(parse_vmrss("Name:\tkthreadd\n"), None);
        assert_eq!(
            parse_ppid("1234 (weird (name) x) S 77 1234 1234 0 -1"),
            Some(77)
        );
        assert_eq!(parse_ppid("1 (init) S 0 1 1"), Some(0));
        let stat =
            "9406 (beam.smp) S 9390 9389 9389 0 -1 4194560 115811 0 0 0 3931 1207 0 0 20 0 40";
        assert_eq!(parse_cpu_ticks(stat), Some(3931 + 1207));
        let tree = [(2, 1), (3, 2), (4, 3), (5, 1), (6, 99)];
        let mut d = descendants_of(2, &tree);
        d.sort();
        assert_eq!(d, vec![3, 4]);
        assert!(descendants_of(6, &tree).is_empty());
    }

    #[test]
    fn own_rss_is_readable() {
        let me = std::process::id();
        let own = rss_kb(me, false).expect("own VmRSS");
        assert!(own > 0);
        assert!(rss_kb(me, true).expect("tree") >= own);
        assert!(cpu_seconds(me).expect("own CPU time") >= 0.0);
    }
}
