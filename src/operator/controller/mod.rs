//! The reconcile pipeline: read -> validate -> build -> apply -> topology -> status.
//!
//! Steady state is quiet: children are applied only when their applied-hash annotation
//! differs, status is written only when it changed, and events are sent only on condition
//! transitions.
//!
//! One file per step: `context` (state every reconcile shares), `reconcile` (the pipeline
//! driver and the error policy), `inputs` (read: referenced Secrets and RabbitmqCluster),
//! `apply` (server-side apply of the children), `exposure` (Certificate, Ingress, HTTPRoute,
//! NetworkPolicy), `autoscaling` (the HorizontalPodAutoscaler), `broker` (topology and its
//! ownership ledger), `status_write` and `events` (what is reported), `cleanup` (finalizer and
//! deletion), `guarded` (objects that do not deserialize). This file: the settings, the error
//! type and the `Controller` wiring (watches, run loop).

mod apply;
mod autoscaling;
mod broker;
mod cleanup;
mod context;
mod events;
mod exposure;
mod guarded;
mod inputs;
mod reconcile;
mod status_write;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::TryStreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::utils::Predicate;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::own_writes::OwnWrites;
use super::resources::{self, FIELD_MANAGER};
use super::status::{self, Reason};

pub use apply::{HANDOVER_MANAGER, is_subset};
pub use autoscaling::autoscaling_status;
pub use context::Context;
pub use guarded::{Guarded, error_policy_guarded, reconcile_guarded};
pub use inputs::uri_port;
pub use reconcile::{backoff_delay, error_policy, going_away, reconcile};
pub use status_write::status_for;

/// Finalizer present only while `deletionPolicy: Delete` asks for broker cleanup.
pub const FINALIZER: &str = "stompgate.io/topology-cleanup";

/// Label a Secret with this key so its rotation is seen at once (others: at the next resync).
pub const WATCH_SECRET_LABEL: &str = "stompgate.io/watch";

/// How soon an object looks again while a kind it needs is not served or its IngressClass is
/// missing: a fixed, unhurried period (one discovery or IngressClass read, no write), so it
/// starts working soon after the CRD or class appears without a retry storm before.
pub const EXPOSURE_POLL: Duration = Duration::from_secs(30);

/// Operator settings the reconciler needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image when spec.image is empty.
    pub default_image: String,
    /// Give up broker cleanup this long after deletion was requested.
    pub finalizer_timeout: Duration,
    /// Name reported on events.
    pub reporter: String,
    /// Pod name reported on events.
    pub instance: Option<String>,
    /// Reconciles at most this many StompGateways at a time.
    pub max_concurrent_reconciles: u16,
    /// How soon an object looks again while a kind it needs is not served or its IngressClass
    /// is missing ([`EXPOSURE_POLL`]).
    pub exposure_poll: Duration,
}

/// Default of `--max-concurrent-reconciles`.
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 16;

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_image: super::DEFAULT_GATEWAY_IMAGE.into(),
            finalizer_timeout: Duration::from_secs(300),
            reporter: "stompgate-operator".into(),
            instance: None,
            max_concurrent_reconciles: DEFAULT_MAX_CONCURRENT_RECONCILES,
            exposure_poll: EXPOSURE_POLL,
        }
    }
}

/// Reconcile failures; each maps to a low-cardinality reason for metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed.
    #[error("kubernetes API: {}", status::api_error_message(.0))]
    Kube(#[from] kube::Error),
    /// A retryable condition (Secret missing, broker down, binding pending); already in status.
    #[error("{}: {message}", reason.as_str())]
    Retry {
        /// The condition reason.
        reason: Reason,
        /// Message.
        message: String,
    },
    /// The object lacks name or namespace.
    #[error(transparent)]
    Build(#[from] resources::BuildError),
}

impl Error {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubeApi",
            Self::Retry { reason, .. } => reason.as_str(),
            Self::Build(_) => "Build",
        }
    }
}

/// What the controller's cache keeps of an object's managedFields: only the operator's own
/// `Update` entries, which a reconcile folds into its `Apply` entry (see `managed_fields`).
/// Every other entry is never read, and at a thousand StompGateways they are a large share
/// of the cache.
fn trim_for_cache(g: &mut Guarded) {
    if let Ok(gw) = &mut g.0
        && let Some(entries) = &mut gw.metadata.managed_fields
    {
        entries.retain(|e| {
            e.manager.as_deref() == Some(FIELD_MANAGER) && e.operation.as_deref() == Some("Update")
        });
        if entries.is_empty() {
            gw.metadata.managed_fields = None;
        }
    }
}

/// Maps a Secret event to the StompGateways (from the controller's cache) that reference it.
fn gateways_for_secret(
    store: &kube::runtime::reflector::Store<Guarded>,
    secret: &Secret,
) -> Vec<ObjectRef<Guarded>> {
    let ns = secret.namespace();
    let name = secret.name_any();
    store
        .state()
        .into_iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .filter(|gw| gw.namespace() == ns)
        .filter(|gw| {
            let r = &gw.spec.rabbitmq;
            r.credentials_secret_ref
                .as_ref()
                .is_some_and(|c| c.name == name)
                || r.uri_secret_ref.as_ref().is_some_and(|u| u.name == name)
                || r.tls
                    .as_ref()
                    .and_then(|t| t.ca_secret_ref.as_ref())
                    .is_some_and(|c| c.name == name)
                || gw.spec.tls.as_ref().is_some_and(|t| t.secret_name == name)
                || gw.spec.auth.jwt.as_ref().is_some_and(|j| {
                    j.jwks_secret_ref.as_ref().is_some_and(|r| r.name == name)
                        || j.hs256_secret_ref.as_ref().is_some_and(|r| r.name == name)
                })
        })
        .filter_map(|gw| {
            Some(
                ObjectRef::new(gw.metadata.name.as_deref()?)
                    .within(gw.metadata.namespace.as_deref()?),
            )
        })
        .collect()
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    reconnected: tokio::sync::mpsc::UnboundedReceiver<()>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), kube::Error> {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let gws: Api<Guarded> = api(&client, &namespace);
    // Fail early with a clear message when the CRD is not installed.
    gws.list(&ListParams::default().limit(1)).await?;
    let owned = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"))
        .page_size(50);
    // Changes the operator made itself trigger nothing, or the status write that reports a
    // failure would start the next attempt at once, whatever the backoff. On StompGateways it
    // writes only status and finalizers: a new generation (spec, or deletion), labels or
    // annotations are someone else's.
    let (reader, writer) = reflector::store();
    let gateways = reflector(
        writer,
        watcher(gws, watcher::Config::default().any_semantic().page_size(50))
            .modify(trim_for_cache),
    )
    .applied_objects()
    .predicate_filter(
        predicates::generation
            .combine(predicates::labels)
            .combine(predicates::annotations),
        Default::default(),
    );
    // Bounded: a burst (a restart, a thousand objects applied at once) must not open a
    // thousand API requests and broker channels at once (memory, and a struggling API server
    // answering 504s), and the work queue keeps its order.
    let controller = Controller::for_stream(gateways, reader).with_config(
        kube::runtime::controller::Config::default()
            .concurrency(ctx.settings.max_concurrent_reconciles.max(1)),
    );
    let store = controller.store();
    ctx.metrics.observe_gateways(store.clone());
    let reconnect_stream = tokio_stream::wrappers::UnboundedReceiverStream::new(reconnected);
    // Metadata is all the owner lookup needs.
    fn children<K>(
        api: Api<PartialObjectMeta<K>>,
        cfg: watcher::Config,
        own: Arc<OwnWrites>,
    ) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        // On children, the operator's own writes are told by their resourceVersion.
        watcher(api, cfg)
            .touched_objects()
            .and_then(move |o| {
                let own = own.clone();
                async move { Ok((own.caused(&o).await, o)) }
            })
            .try_filter_map(|(mine, o)| futures::future::ready(Ok((!mine).then_some(o))))
    }
    let own = &ctx.own_writes;
    controller
        .owns_stream(children(
            api::<PartialObjectMeta<Deployment>>(&client, &namespace),
            owned.clone(),
            own.clone(),
        ))
        .owns_stream(children(
            api::<PartialObjectMeta<Service>>(&client, &namespace),
            owned.clone(),
            own.clone(),
        ))
        .owns_stream(children(
            api::<PartialObjectMeta<ConfigMap>>(&client, &namespace),
            owned.clone(),
            own.clone(),
        ))
        .owns_stream(children(
            api::<PartialObjectMeta<PodDisruptionBudget>>(&client, &namespace),
            owned.clone(),
            own.clone(),
        ))
        .owns_stream(children(
            api::<PartialObjectMeta<Ingress>>(&client, &namespace),
            owned.clone(),
            own.clone(),
        ))
        .owns_stream(children(
            api::<PartialObjectMeta<NetworkPolicy>>(&client, &namespace),
            owned.clone(),
            own.clone(),
        ))
        // Its status changes too: status.autoscaling follows them.
        .owns_stream(children(
            api::<PartialObjectMeta<HorizontalPodAutoscaler>>(&client, &namespace),
            owned,
            own.clone(),
        ))
        .watches(
            api::<Secret>(&client, &namespace),
            watcher::Config::default().labels(WATCH_SECRET_LABEL),
            move |s| gateways_for_secret(&store, &s),
        )
        .reconcile_all_on(reconnect_stream)
        .graceful_shutdown_on(shutdown)
        .run(reconcile_guarded, error_policy_guarded, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(name = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    Ok(())
}
