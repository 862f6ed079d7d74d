//! `stompgate bench operator`: the control plane under load. N StompGateways (each owning one
//! topic exchange, `deletionPolicy: Delete`) are applied to an API server - the project's
//! emulator by default, any cluster with `--kubeconfig` - with the real RabbitMQ behind them and
//! `stompgate operator` running as a child process, and the run reports what a platform team
//! would ask: time to converge, reconciles and errors, operator memory (peak, steady, after a
//! restart), API writes and broker operations while idle, edit latency, delete time and what
//! was left behind.

use crate::crd::StompGateway;
use anyhow::{Context, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Field manager of the bench's own writes.
const MANAGER: &str = "stompgate-bench";

#[derive(Parser, Debug, Clone)]
pub struct OperatorBenchArgs {
    /// StompGateways to create.
    #[arg(long, default_value_t = 1000)]
    pub objects: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 10)]
    pub namespaces: usize,
    /// An API server to use instead of starting the emulator.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The emulator binary (default: `kube-emulator` next to this binary; `cargo build
    /// --workspace` builds it).
    #[arg(long)]
    pub kube_emulator: Option<PathBuf>,
    /// The RabbitMQ every StompGateway points at (host, port and credentials are used).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// The operator binary (default: this binary).
    #[arg(long)]
    pub operator_bin: Option<PathBuf>,
    /// Extra flags for `stompgate operator`.
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    pub operator_args: Vec<String>,
    /// Length of the idle window in which writes and broker operations are counted.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Spec edits whose latency (edit -> Deployment changed) is measured.
    #[arg(long, default_value_t = 50)]
    pub edits: usize,
    /// Longest wait for each phase.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Prefix of every namespace and exchange (unique per run by default).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// What a run measured.
#[derive(Debug, Default, Serialize)]
pub struct OperatorReport {
    pub objects: usize,
    pub namespaces: usize,
    pub api_server: String,
    /// From the first create to every object current (observedGeneration) and TopologyReady.
    pub converge_secs: f64,
    pub create_secs: f64,
    /// Operator counters after convergence.
    pub reconciles_ok: f64,
    pub reconciles_error: f64,
    /// Mean reconcile duration during convergence.
    pub reconcile_mean_ms: f64,
    pub errors_by_reason: BTreeMap<String, f64>,
    pub rss_empty_mb: f64,
    pub rss_peak_mb: f64,
    /// Median of the samples taken in the idle window.
    pub rss_steady_mb: f64,
    pub threads_peak: u64,
    /// Idle window: objects the operator changed (resourceVersion moved), events it emitted,
    /// broker operations it made, reconciles it ran.
    pub idle_secs: u64,
    pub idle_object_writes: usize,
    pub idle_events: usize,
    pub idle_broker_ops: f64,
    pub idle_reconciles: f64,
    /// Restart with every object in place.
    pub restart_recheck_secs: f64,
    pub restart_rss_peak_mb: f64,
    pub restart_object_writes: usize,
    pub edit_p50_ms: f64,
    pub edit_p99_ms: f64,
    /// Objects whose own (created) exchange the status records as not owned: it would be left
    /// behind on deletion.
    pub created_but_not_owned: usize,
    pub delete_secs: f64,
    pub leaked_exchanges: Vec<String>,
    pub leftover_objects: usize,
}

impl OperatorReport {
    pub fn human(&self) -> String {
        format!(
            "operator bench: {} StompGateways in {} namespaces on {}\n\
             converge: {:.1} s (created in {:.1} s); reconciles {} ok + {} errors {:?}, mean {:.0} ms\n\
             RSS: empty {:.1} MB, peak {:.1} MB, steady {:.1} MB; threads peak {}\n\
             idle {} s: {} object writes, {} events, {} broker operations, {} reconciles\n\
             restart: all re-checked in {:.1} s, RSS peak {:.1} MB, {} object writes\n\
             edit -> Deployment: p50 {:.0} ms, p99 {:.0} ms\n\
             created but recorded as not owned: {}\n\
             delete: {:.1} s; leaked exchanges {:?}; leftover objects {}\n",
            self.objects,
            self.namespaces,
            self.api_server,
            self.converge_secs,
            self.create_secs,
            self.reconciles_ok,
            self.reconciles_error,
            self.errors_by_reason,
            self.reconcile_mean_ms,
            self.rss_empty_mb,
            self.rss_peak_mb,
            self.rss_steady_mb,
            self.threads_peak,
            self.idle_secs,
            self.idle_object_writes,
            self.idle_events,
            self.idle_broker_ops,
            self.idle_reconciles,
            self.restart_recheck_secs,
            self.restart_rss_peak_mb,
            self.restart_object_writes,
            self.edit_p50_ms,
            self.edit_p99_ms,
            self.created_but_not_owned,
            self.delete_secs,
            self.leaked_exchanges,
            self.leftover_objects,
        )
    }
}

/// The API server the run talks to; the emulator child dies with it.
struct ApiServer {
    kubeconfig: PathBuf,
    _emulator: Option<Child>,
    _dir: Option<tempdir::Dir>,
    description: String,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("no directory for {me:?}"))?;
    // Test binaries live in target/<profile>/deps; the others one level up.
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} not found next to {me:?}: build it (cargo build --workspace) or pass its path")
}

async fn api_server(args: &OperatorBenchArgs) -> anyhow::Result<ApiServer> {
    if let Some(path) = &args.kubeconfig {
        return Ok(ApiServer {
            kubeconfig: path.clone(),
            _emulator: None,
            _dir: None,
            description: format!("the cluster of {}", path.display()),
        });
    }
    let bin = match &args.kube_emulator {
        Some(p) => p.clone(),
        None => sibling_binary("kube-emulator")?,
    };
    let dir = std::env::temp_dir().join(format!("stompgate-bench-operator-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    let listen = format!("127.0.0.1:{}", free_port()?);
    let child = Command::new(&bin)
        .args(["--listen", &listen, "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.is_file() {
        if Instant::now() > deadline {
            bail!("the emulator wrote no kubeconfig within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(ApiServer {
        kubeconfig,
        _emulator: Some(child),
        _dir: Some(tempdir::Dir(dir)),
        description: format!("the API emulator ({listen})"),
    })
}

async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(Client::try_from(config)?)
}

/// `stompgate operator` as a child process, and a sampler of its memory and threads.
struct Operator {
    child: Child,
    metrics_url: String,
    peak_rss_kb: Arc<AtomicU64>,
    peak_threads: Arc<AtomicU64>,
    samples: Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
}

impl Operator {
    async fn start(args: &OperatorBenchArgs, kubeconfig: &Path) -> anyhow::Result<Operator> {
        let bin = match &args.operator_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        let port = free_port()?;
        let child = Command::new(&bin)
            .arg("operator")
            .args([
                "--metrics-listen",
                &format!("127.0.0.1:{port}"),
                "--lease-namespace",
                "default",
            ])
            .args(&args.operator_args)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} operator", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("operator exited at once"))?;
        let op = Operator {
            child,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            peak_rss_kb: Arc::default(),
            peak_threads: Arc::default(),
            samples: Arc::default(),
        };
        let (peak, threads, samples) = (
            op.peak_rss_kb.clone(),
            op.peak_threads.clone(),
            op.samples.clone(),
        );
        tokio::spawn(async move {
            let path = format!("/proc/{pid}/status");
            while let Ok(text) = tokio::fs::read_to_string(&path).await {
                let field = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let rss = field("VmRSS:");
                peak.fetch_max(rss, Ordering::Relaxed);
                threads.fetch_max(field("Threads:"), Ordering::Relaxed);
                if let Ok(mut s) = samples.lock() {
                    s.push((Instant::now(), rss));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics(&op.metrics_url).await.is_err() {
            if Instant::now() > deadline {
                bail!("the operator's /metrics did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(op)
    }

    fn rss_mb(&self) -> f64 {
        self.samples
            .lock()
            .ok()
            .and_then(|s| s.last().map(|(_, kb)| *kb as f64 / 1024.0))
            .unwrap_or(0.0)
    }

    fn median_rss_mb_since(&self, since: Instant) -> f64 {
        let mut kb: Vec<u64> = self
            .samples
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(t, _)| *t >= since)
                    .map(|(_, k)| *k)
                    .collect()
            })
            .unwrap_or_default();
        kb.sort_unstable();
        kb.get(kb.len() / 2)
            .map(|k| *k as f64 / 1024.0)
            .unwrap_or(0.0)
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM: the operator releases its lease.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// The operator's metrics as `name{labels}` -> value.
async fn metrics(url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("bad url"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let (_, body) = body
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP body"))?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

fn sum(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .fold(0.0, |total, (_, v)| total + v)
}

fn labelled(m: &BTreeMap<String, f64>, name: &str, label: &str) -> BTreeMap<String, f64> {
    let key = format!("{name}{{{label}=\"");
    m.iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(&key)?;
            Some((rest.split('"').next()?.to_string(), *v))
        })
        .collect()
}

fn gateway_object(
    ns: &str,
    name: &str,
    exchange: &str,
    host: &str,
    port: u16,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "stompgate.io/v1alpha1",
        "kind": "StompGateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "rabbitmq": {"host": host, "port": port, "vhost": "/",
                         "credentialsSecretRef": {"name": "rmq-creds"}},
            "replicas": 1,
            "topology": {
                "exchanges": [{"name": exchange, "type": "topic", "durable": true}],
                "deletionPolicy": "Delete"
            }
        }
    })
}

fn current_and_ready(gw: &StompGateway) -> bool {
    let Some(status) = &gw.status else {
        return false;
    };
    status.observed_generation == gw.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "TopologyReady" && c.status == "True")
}

/// A version of every object the operator writes: the StompGateway's resourceVersion (only
/// the operator writes its status and finalizers), the Deployment's generation (its status
/// belongs to the Deployment controller), the Service's and ConfigMap's resourceVersion.
async fn versions(client: &Client, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let lp = ListParams::default();
    let ours = |ns: Option<String>| ns.is_some_and(|n| n.starts_with(prefix));
    let gws: Api<StompGateway> = Api::all(client.clone());
    for o in gws.list(&lp).await?.items {
        if ours(o.namespace()) {
            let key = format!("gw/{}/{}", o.namespace().unwrap_or_default(), o.name_any());
            out.insert(key, o.resource_version().unwrap_or_default());
        }
    }
    let deployments: Api<Deployment> = Api::all(client.clone());
    for o in deployments.list(&lp).await?.items {
        if ours(o.namespace()) {
            let key = format!(
                "deploy/{}/{}",
                o.namespace().unwrap_or_default(),
                o.name_any()
            );
            out.insert(key, o.metadata.generation.unwrap_or(0).to_string());
        }
    }
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::all(client.clone());
    for o in services.list(&lp).await?.items {
        if ours(o.namespace()) {
            let key = format!("svc/{}/{}", o.namespace().unwrap_or_default(), o.name_any());
            out.insert(key, o.resource_version().unwrap_or_default());
        }
    }
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::all(client.clone());
    for o in config_maps.list(&lp).await?.items {
        if ours(o.namespace()) {
            let key = format!("cm/{}/{}", o.namespace().unwrap_or_default(), o.name_any());
            out.insert(key, o.resource_version().unwrap_or_default());
        }
    }
    Ok(out)
}

fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> usize {
    after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .count()
}

async fn event_count(client: &Client, prefix: &str) -> anyhow::Result<usize> {
    let events: Api<Event> = Api::all(client.clone());
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|e| e.namespace().is_some_and(|n| n.starts_with(prefix)))
        .count())
}

/// Polls every 250 ms until `check` holds, at most `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    wait_every(what, limit, Duration::from_millis(250), check).await
}

/// Polls every `period` until `check` holds, at most `limit`.
async fn wait_every<F, Fut>(
    what: &str,
    limit: Duration,
    period: Duration,
    mut check: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(period).await;
    }
}

async fn all_ready(api: &Api<StompGateway>, prefix: &str, n: usize) -> anyhow::Result<bool> {
    let list = api.list(&ListParams::default()).await?;
    let ready = list
        .items
        .iter()
        .filter(|g| g.namespace().is_some_and(|ns| ns.starts_with(prefix)))
        .filter(|g| current_and_ready(g))
        .count();
    Ok(ready == n)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the whole scenario.
pub async fn run(args: &OperatorBenchArgs) -> anyhow::Result<OperatorReport> {
    let limit = Duration::from_secs(args.timeout_secs);
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("sgb{:04x}", rand::random::<u16>()));
    let uri: lapin::uri::AMQPUri = args
        .amqp_url
        .parse()
        .map_err(|e| anyhow!("--amqp-url: {e}"))?;
    let server = api_server(args).await?;
    let client = client_for(&server.kubeconfig).await?;
    let mut report = OperatorReport {
        objects: args.objects,
        namespaces: args.namespaces.max(1),
        api_server: server.description.clone(),
        idle_secs: args.idle_secs,
        ..OperatorReport::default()
    };

    super::progress("installing the CRD");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = StompGateway::crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    let gws_all: Api<StompGateway> = Api::all(client.clone());
    wait_for("the CRD to be served", limit, || async {
        Ok(gws_all.list(&ListParams::default().limit(1)).await.is_ok())
    })
    .await?;

    let namespaces: Vec<String> = (0..report.namespaces)
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        let obj = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        ns_api.create(&PostParams::default(), &obj).await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "rmq-creds", "labels": {"stompgate.io/watch": "true"}},
            "stringData": {"username": uri.authority.userinfo.username,
                           "password": uri.authority.userinfo.password}
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
    }

    super::progress("starting the operator");
    let operator = Operator::start(args, &server.kubeconfig).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.rss_empty_mb = operator.rss_mb();

    super::progress(format!("creating {} StompGateways", args.objects));
    let started = Instant::now();
    let names: Vec<(String, String)> = (0..args.objects)
        .map(|i| {
            (
                namespaces[i % namespaces.len()].clone(),
                format!("gw{:04}", i / namespaces.len()),
            )
        })
        .collect();
    let host = uri.authority.host.clone();
    let port = uri.authority.port;
    futures::stream::iter(names.iter().cloned())
        .map(|(ns, name)| {
            let client = client.clone();
            let (host, prefix) = (host.clone(), prefix.clone());
            async move {
                let api: Api<StompGateway> = Api::namespaced(client, &ns);
                let exchange = format!("{prefix}-{ns}-{name}");
                let obj = gateway_object(&ns, &name, &exchange, &host, port);
                api.patch(&name, &PatchParams::apply(MANAGER), &Patch::Apply(&obj))
                    .await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    report.create_secs = started.elapsed().as_secs_f64();
    super::progress("waiting for every object to converge");
    wait_for("convergence", limit, || {
        all_ready(&gws_all, &prefix, args.objects)
    })
    .await?;
    report.converge_secs = started.elapsed().as_secs_f64();
    let m = metrics(&operator.metrics_url).await?;
    report.created_but_not_owned = gws_all
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|g| g.namespace().is_some_and(|n| n.starts_with(&prefix)))
        .filter(|g| {
            !g.status
                .as_ref()
                .and_then(|s| s.topology.as_ref())
                .is_some_and(|t| t.exchanges.iter().all(|e| e.owned))
        })
        .count();
    report.reconciles_ok = sum(&m, "stompgw_reconcile_total{result=\"ok\"");
    report.reconciles_error = sum(&m, "stompgw_reconcile_total{result=\"error\"");
    let count = sum(&m, "stompgw_reconcile_duration_seconds_count");
    if count > 0.0 {
        report.reconcile_mean_ms =
            sum(&m, "stompgw_reconcile_duration_seconds_sum") / count * 1000.0;
    }
    report.errors_by_reason = labelled(&m, "stompgw_reconcile_errors_total", "reason");

    super::progress(format!("idle for {} s", args.idle_secs));
    // Let the writes of convergence settle before the window opens.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = versions(&client, &prefix).await?;
    let events_before = event_count(&client, &prefix).await?;
    let m_before = metrics(&operator.metrics_url).await?;
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let after = versions(&client, &prefix).await?;
    let m_after = metrics(&operator.metrics_url).await?;
    report.idle_object_writes = changed(&before, &after);
    report.idle_events = event_count(&client, &prefix)
        .await?
        .saturating_sub(events_before);
    report.idle_broker_ops =
        sum(&m_after, "stompgw_broker_ops_total") - sum(&m_before, "stompgw_broker_ops_total");
    report.idle_reconciles =
        sum(&m_after, "stompgw_reconcile_total") - sum(&m_before, "stompgw_reconcile_total");
    report.rss_steady_mb = operator.median_rss_mb_since(idle_start);
    report.rss_peak_mb = operator.peak_rss_kb.load(Ordering::Relaxed) as f64 / 1024.0;
    report.threads_peak = operator.peak_threads.load(Ordering::Relaxed);

    super::progress(format!("{} spec edits", args.edits));
    let mut latencies = Vec::new();
    for (i, (ns, name)) in names.iter().take(args.edits).enumerate() {
        let api: Api<StompGateway> = Api::namespaced(client.clone(), ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let replicas = 2 + (i as i32 % 3);
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        let t = Instant::now();
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        // A GET of one Deployment every 5 ms: the latency is measured to ~5 ms, not to the
        // 250 ms of the other waits.
        let poll = Duration::from_millis(5);
        wait_every("the Deployment to follow an edit", limit, poll, || async {
            Ok(deployments
                .get_opt(name)
                .await?
                .and_then(|d| d.spec?.replicas)
                == Some(replicas))
        })
        .await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    report.edit_p50_ms = percentile(&latencies, 0.5);
    report.edit_p99_ms = percentile(&latencies, 0.99);
    wait_for("convergence after the edits", limit, || {
        all_ready(&gws_all, &prefix, args.objects)
    })
    .await?;

    super::progress("restarting the operator");
    operator.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = versions(&client, &prefix).await?;
    let restarted = Operator::start(args, &server.kubeconfig).await?;
    let t = Instant::now();
    let n = args.objects as f64;
    wait_for(
        "every object re-checked after the restart",
        limit,
        || async {
            let m = metrics(&restarted.metrics_url).await?;
            Ok(sum(&m, "stompgw_reconcile_total") >= n)
        },
    )
    .await?;
    report.restart_recheck_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    report.restart_object_writes = changed(&before, &versions(&client, &prefix).await?);
    report.restart_rss_peak_mb = restarted.peak_rss_kb.load(Ordering::Relaxed) as f64 / 1024.0;

    super::progress("deleting every StompGateway");
    let t = Instant::now();
    for ns in &namespaces {
        let api: Api<StompGateway> = Api::namespaced(client.clone(), ns);
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
    }
    wait_for("every StompGateway gone", limit, || async {
        let left = gws_all.list(&ListParams::default()).await?;
        Ok(!left
            .items
            .iter()
            .any(|g| g.namespace().is_some_and(|n| n.starts_with(&prefix))))
    })
    .await?;
    report.delete_secs = t.elapsed().as_secs_f64();
    report.leftover_objects = 0;
    report.leaked_exchanges = leaked_exchanges(&args.amqp_url, &names, &prefix).await?;
    restarted.stop().await;
    for ns in &namespaces {
        let _ = ns_api.delete(ns, &DeleteParams::default()).await;
    }
    Ok(report)
}

/// The run's exchanges that still exist in RabbitMQ (passive declares).
async fn leaked_exchanges(
    url: &str,
    names: &[(String, String)],
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let connect = || async {
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
        anyhow::Ok(crate::amqp::SharedConnection::new(conn))
    };
    let mut conn = connect().await?;
    let mut leaked = Vec::new();
    for (ns, name) in names {
        let exchange = format!("{prefix}-{ns}-{name}");
        let channel = loop {
            match conn.open().await {
                Ok(c) => break c,
                Err(crate::amqp::OpenError::Retired) => {
                    let _ = conn
                        .connection()
                        .close(200, "channel ids used up".into())
                        .await;
                    conn = connect().await?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let exists = channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .is_ok();
        crate::amqp::close_channel(&channel, "bench").await;
        if exists {
            leaked.push(exchange);
        }
    }
    let _ = conn.connection().close(200, "bench done".into()).await;
    Ok(leaked)
}
