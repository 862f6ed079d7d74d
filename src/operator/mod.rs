//! The Kubernetes operator: `stompgate operator` reconciles StompGateway resources; `render`
//! and `lint` are its offline tools.
//!
//! It is a plain kube-rs client: `KUBECONFIG` or the in-cluster service account.

pub mod cli;
pub mod cluster_ref;
pub mod controller;
pub mod leader;
pub mod listener;
pub mod managed_fields;
pub mod metrics;
pub mod own_writes;
pub mod resources;
pub mod status;
pub mod topology;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

/// Gateway image when neither `spec.image` nor `--gateway-image` is set.
pub const DEFAULT_GATEWAY_IMAGE: &str = concat!("stompgate/stompgate:", env!("CARGO_PKG_VERSION"));

/// `stompgate operator` flags (each also read from `STOMPGATE_...`).
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Image for gateway pods when spec.image is empty.
    #[arg(long, env = "STOMPGATE_GATEWAY_IMAGE", default_value = DEFAULT_GATEWAY_IMAGE)]
    pub gateway_image: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "STOMPGATE_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "STOMPGATE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Elect a leader on a Lease so only one replica reconciles.
    #[arg(long, env = "STOMPGATE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Lease name.
    #[arg(
        long,
        env = "STOMPGATE_LEASE_NAME",
        default_value = "stompgate-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity on the Lease and on events.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease validity in seconds.
    #[arg(long, env = "STOMPGATE_LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// Seconds after a deletion request when broker cleanup gives up.
    #[arg(long, env = "STOMPGATE_FINALIZER_TIMEOUT_SECS", default_value_t = 300)]
    pub finalizer_timeout_secs: u64,
    /// StompGateways reconciled at the same time (bounds API requests, broker channels and
    /// memory during bursts such as a restart).
    #[arg(long, env = "STOMPGATE_MAX_CONCURRENT_RECONCILES", default_value_t = controller::DEFAULT_MAX_CONCURRENT_RECONCILES, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Seconds between probes of brokers that are down.
    #[arg(long, env = "STOMPGATE_BROKER_PROBE_SECS", default_value_t = 10)]
    pub broker_probe_secs: u64,
}

/// Operator runtime failures.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No kubeconfig / in-cluster config, or the API is unreachable.
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// The admin port cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The StompGateway CRD is not installed.
    #[error(
        "the StompGateway CRD is not installed ({0}); install it with `stompgate crd | kubectl apply --server-side -f -`"
    )]
    CrdMissing(kube::Error),
    /// Another replica took the lease.
    #[error("lost the leader lease; exiting so a fresh start can compete again")]
    LostLease,
}

#[derive(Clone)]
struct Admin {
    metrics: Arc<metrics::Metrics>,
    ready: Arc<AtomicBool>,
}

async fn metrics_handler(State(a): State<Admin>) -> axum::response::Response {
    crate::runtime::openmetrics_chunks(a.metrics.encode_chunks())
}

async fn readyz(State(a): State<Admin>) -> StatusCode {
    if a.ready.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The admin router: /metrics, /healthz and /livez (alive), /readyz (running: leader or
/// standby).
pub fn admin_router(metrics: Arc<metrics::Metrics>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Admin { metrics, ready })
}

/// The operator's User-Agent, `stompgateway-operator/<version>`: the API server names a
/// write's field manager after it when the write names none (kube-rs's event recorder).
pub fn user_agent() -> String {
    format!("{}/{}", resources::FIELD_MANAGER, env!("CARGO_PKG_VERSION"))
}

/// The operator's Kubernetes client for `config`: every request carries [`user_agent`].
pub fn client(mut config: kube::Config) -> Result<Client, kube::Error> {
    if let Ok(ua) = axum::http::HeaderValue::from_str(&user_agent()) {
        config.headers.push((axum::http::header::USER_AGENT, ua));
    }
    Client::try_from(config)
}

/// `stompgate operator`.
pub async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    crate::runtime::init_operator_logging();
    // Both rustls backends are linked (lapin and kube pull different ones): pick one, or the
    // first TLS handshake panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let client = client(config)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|source| OperatorError::Listen {
            addr: args.metrics_listen,
            source,
        })?;
    let router = admin_router(metrics.clone(), ready.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("stompgate-operator-{}", uuid::Uuid::new_v4()));
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace);
    let lease = leader::LeaseSettings {
        name: args.lease_name.clone(),
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_duration_secs.max(2)),
        renew: Duration::from_secs((args.lease_duration_secs / 3).max(1)),
    };
    let shutdown = crate::runtime::shutdown_signal();
    tokio::pin!(shutdown);
    // Ready means "the API answers": a standby waiting for the lease is ready too.
    let wait_for_lease = async {
        loop {
            match leader::try_acquire(&lease_api, &lease).await {
                Ok(true) => break,
                Ok(false) => ready.store(true, Ordering::Relaxed),
                Err(e) => {
                    ready.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "leader election");
                }
            }
            tokio::time::sleep(lease.renew).await;
        }
    };
    if args.leader_elect {
        tokio::select! {
            _ = wait_for_lease => {},
            _ = &mut shutdown => return Ok(()),
        }
        tracing::info!(%identity, "acquired the leader lease");
    }
    ready.store(true, Ordering::Relaxed);
    metrics.set_leader(true);

    let (brokers, reconnected) = topology::BrokerPool::new();
    let _monitor = brokers.spawn_monitor(Duration::from_secs(args.broker_probe_secs.max(1)));
    let settings = controller::Settings {
        default_image: args.gateway_image.clone(),
        finalizer_timeout: Duration::from_secs(args.finalizer_timeout_secs),
        reporter: "stompgate-operator".into(),
        instance: Some(identity),
        max_concurrent_reconciles: args.max_concurrent_reconciles,
        ..controller::Settings::default()
    };
    let ctx = Arc::new(controller::Context::new(
        client,
        settings,
        brokers,
        metrics.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut ctrl = tokio::spawn(controller::run(
        ctx,
        args.watch_namespace.clone(),
        reconnected,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let hold = async {
        if args.leader_elect {
            leader::hold(&lease_api, &lease).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    enum End {
        Signal,
        LostLease,
        Controller(Result<Result<(), kube::Error>, tokio::task::JoinError>),
    }
    let end = tokio::select! {
        _ = &mut shutdown => End::Signal,
        _ = hold => End::LostLease,
        r = &mut ctrl => End::Controller(r),
    };
    // Graceful: let in-flight reconciles finish, then hand the lease over.
    let _ = stop_tx.send(());
    let lost = matches!(end, End::LostLease);
    let finished = match end {
        End::Controller(r) => r,
        _ => match tokio::time::timeout(Duration::from_secs(10), ctrl).await {
            Ok(r) => r,
            Err(_) => Ok(Ok(())),
        },
    };
    metrics.set_leader(false);
    if args.leader_elect
        && !lost
        && let Err(e) = leader::release(&lease_api, &lease).await
    {
        tracing::warn!(error = %e, "could not release the lease");
    }
    if lost {
        return Err(OperatorError::LostLease);
    }
    match finished {
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
            Err(OperatorError::CrdMissing(kube::Error::Api(s)))
        }
        Ok(Err(e)) => Err(e.into()),
        _ => Ok(()),
    }
}
