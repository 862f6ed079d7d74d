//! The reconcile pipeline: read -> validate -> build -> apply -> topology -> status.
//!
//! Steady state is quiet: children are applied only when their applied-hash annotation
//! differs, status is written only when it changed, and events are sent only on condition
//! transitions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::TryStreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::utils::Predicate;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::listener;
use super::managed_fields;
use super::metrics::Metrics;
use super::own_writes::OwnWrites;
use super::resources::{self, APPLIED_HASH_ANNOTATION, BuildInputs, FIELD_MANAGER};
use super::status::{self, Cond, Observation, Problem, Reason};
use super::topology::{self, BrokerPool, BrokerTarget, TopologyError};
use super::validate;
use crate::crd::{DeletionPolicy, StompGateway, StompGatewayStatus};

/// Finalizer present only while `deletionPolicy: Delete` asks for broker cleanup.
pub const FINALIZER: &str = "stompgate.io/topology-cleanup";
// Ready=False reasons that are normal progress, not worth a Warning event.
const QUIET_REASONS: [&str; 5] = [
    "Progressing",
    "RolloutInProgress",
    "Unavailable",
    "ScaledToZero",
    "Unknown",
];

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

/// Shared reconcile state.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Broker connections.
    pub brokers: Arc<BrokerPool>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The operator's own writes to children (their watch events trigger nothing).
    pub own_writes: Arc<OwnWrites>,
    // Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<StompGateway>, u32>>,
    // Last broker target read from the Secrets of objects with a cleanup finalizer: a namespace
    // deletion removes the Secret before the finalizer runs, and cleanup still needs it.
    targets: Mutex<HashMap<ObjectRef<StompGateway>, BrokerTarget>>,
    // The resourceVersion of each StompGateway as the operator last wrote (or freshly read) it:
    // a cached copy with another version may predate that write (see `Context::fresh`).
    known_versions: Mutex<HashMap<ObjectRef<StompGateway>, String>>,
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        settings: Settings,
        brokers: Arc<BrokerPool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            settings,
            brokers,
            metrics,
            own_writes: Arc::default(),
            failures: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            known_versions: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers the version of a StompGateway the operator just wrote or read from the API
    /// server.
    fn note_version(&self, gw: &StompGateway) {
        if let (Some(rv), Ok(mut m)) = (gw.resource_version(), self.known_versions.lock()) {
            m.insert(ObjectRef::from_obj(gw), rv);
        }
    }

    fn forget_version(&self, r: &ObjectRef<StompGateway>) {
        if let Ok(mut m) = self.known_versions.lock() {
            m.remove(r);
        }
    }

    /// The object to reconcile: the cached copy, unless the operator knows of a version the
    /// cache does not show yet, in which case a fresh read. The controller's cache can lag
    /// behind the operator's own status writes (a child's event can start the next reconcile
    /// before the status event arrives); acting on such a copy would decide ownership from a
    /// ledger that misses exchanges the operator created, and record them as not owned (then
    /// leak them on deletion), or write back a stale status. None: the object is gone.
    async fn fresh(&self, gw: Arc<StompGateway>) -> Result<Option<Arc<StompGateway>>, Error> {
        let oref = ObjectRef::from_obj(&*gw);
        let known = self
            .known_versions
            .lock()
            .ok()
            .and_then(|m| m.get(&oref).cloned());
        match known {
            Some(rv) if gw.resource_version().as_ref() != Some(&rv) => {}
            _ => return Ok(Some(gw)),
        }
        let (Some(ns), Some(name)) = (gw.namespace(), gw.metadata.name.as_deref()) else {
            return Ok(Some(gw));
        };
        let api: Api<StompGateway> = Api::namespaced(self.client.clone(), &ns);
        match api.get_opt(name).await? {
            Some(current) => {
                self.note_version(&current);
                Ok(Some(Arc::new(current)))
            }
            None => {
                self.forget_version(&oref);
                Ok(None)
            }
        }
    }

    fn remember_target(&self, r: &ObjectRef<StompGateway>, t: Option<&BrokerTarget>) {
        if let Ok(mut m) = self.targets.lock() {
            match t {
                Some(t) => {
                    m.insert(r.clone(), t.clone());
                }
                None => {
                    m.remove(r);
                }
            }
        }
    }

    fn remembered_target(&self, r: &ObjectRef<StompGateway>) -> Option<BrokerTarget> {
        self.targets.lock().ok().and_then(|m| m.get(r).cloned())
    }

    /// Time left before broker cleanup of a deleted object gives up (None: not being deleted).
    fn cleanup_time_left(&self, gw: &StompGateway) -> Option<Duration> {
        let t = gw.metadata.deletion_timestamp.as_ref()?;
        let since = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
        let since = Duration::try_from(since).unwrap_or(Duration::ZERO);
        Some(self.settings.finalizer_timeout.saturating_sub(since))
    }

    fn reset_failures(&self, r: &ObjectRef<StompGateway>) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(r);
        }
    }

    fn bump_failures(&self, r: &ObjectRef<StompGateway>) -> u32 {
        match self.failures.lock() {
            Ok(mut m) => {
                let n = m.entry(r.clone()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        }
    }

    fn recorder(&self) -> Recorder {
        Recorder::new(
            self.client.clone(),
            Reporter {
                controller: self.settings.reporter.clone(),
                instance: self.settings.instance.clone(),
            },
        )
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

/// Delay before retry number `attempt` (1-based): 1 s doubling to 5 min, with jitter in
/// [50 %, 100 %] so many failing objects do not retry in lockstep.
pub fn backoff_delay(attempt: u32) -> Duration {
    let base = 2f64
        .powi(attempt.saturating_sub(1).min(16) as i32)
        .min(300.0);
    let jitter = 0.5 + rand::random::<f64>() * 0.5;
    Duration::from_secs_f64((base * jitter).max(0.5))
}

/// The controller's error policy: per-object exponential backoff with jitter.
pub fn error_policy(gw: Arc<StompGateway>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(err.reason());
    let n = ctx.bump_failures(&ObjectRef::from_obj(&*gw));
    match err {
        // An ordinary state, reported in status: the destination does not exist yet.
        Error::Retry {
            reason: Reason::BindingPending,
            ..
        } => {
            tracing::info!(name = %gw.name_any(), namespace = ?gw.namespace(), attempt = n, %err, "binding pending, will retry");
        }
        _ => {
            tracing::warn!(name = %gw.name_any(), namespace = ?gw.namespace(), attempt = n, error = %err, "reconcile failed");
        }
    }
    let mut delay = backoff_delay(n);
    // A deletion must end at its deadline, not at the first backoff step after it.
    if let Some(left) = ctx.cleanup_time_left(&gw)
        && !left.is_zero()
    {
        delay = delay.min(left + Duration::from_millis(100));
    }
    Action::requeue(delay)
}

/// Reconciles one StompGateway (the `Controller` entry point).
pub async fn reconcile(gw: Arc<StompGateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let gw = match ctx.fresh(gw).await {
        Ok(Some(gw)) => gw,
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => {
            ctx.metrics.reconciled("error", start.elapsed());
            return Err(e);
        }
    };
    let res = match reconcile_inner(&gw, &ctx).await {
        Err(Error::Kube(e)) if going_away(&e) => {
            tracing::debug!(name = %gw.name_any(), namespace = ?gw.namespace(), error = %e,
                "the StompGateway or its namespace is going away");
            Ok(Action::await_change())
        }
        other => other,
    };
    let result = if res.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciled(result, start.elapsed());
    if res.is_ok() {
        ctx.reset_failures(&ObjectRef::from_obj(&*gw));
    }
    res
}

fn resync(gw: &StompGateway) -> Duration {
    Duration::from_secs(u64::try_from(gw.spec.topology.resync_interval_seconds).unwrap_or(300))
}

async fn reconcile_inner(gw: &StompGateway, ctx: &Context) -> Result<Action, Error> {
    let ns = gw
        .namespace()
        .ok_or(resources::BuildError::MissingMeta("namespace"))?;
    let name = gw
        .metadata
        .name
        .clone()
        .ok_or(resources::BuildError::MissingMeta("name"))?;
    let api: Api<StompGateway> = Api::namespaced(ctx.client.clone(), &ns);
    if gw.metadata.deletion_timestamp.is_some() {
        return cleanup(gw, ctx, &api).await;
    }
    // Status ownership left by older versions (a merge-patched ledger) goes to the operator's
    // apply first, or the ledger's dropped items would wedge every status write.
    let repaired;
    let gw = match managed_fields::fold_status_updates(&gw.metadata, FIELD_MANAGER) {
        Some(_) => {
            // The cache keeps only the operator's own entries (`trim_for_cache`): fold them
            // on the object as stored, or the patch would drop every other manager's.
            let stored = api.get(&name).await?;
            ctx.note_version(&stored);
            repaired = match managed_fields::fold_status_updates(&stored.metadata, FIELD_MANAGER) {
                Some(entries) => {
                    let patch = json!({"metadata": {"managedFields": entries,
                                                    "resourceVersion": stored.resource_version()}});
                    let pp = PatchParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..PatchParams::default()
                    };
                    let patched = api.patch(&name, &pp, &Patch::Merge(&patch)).await?;
                    ctx.note_version(&patched);
                    tracing::info!(%ns, %name, "status ownership of an older operator version moved to its apply");
                    patched
                }
                None => stored,
            };
            &repaired
        }
        None => gw,
    };
    ensure_finalizer(
        gw,
        ctx,
        &api,
        gw.spec.topology.deletion_policy == DeletionPolicy::Delete,
    )
    .await?;

    let mut obs = Observation {
        generation: gw.metadata.generation.unwrap_or(0),
        paused: gw.spec.paused,
        desired_replicas: gw.spec.replicas,
        selector: resources::selector_string(&name),
        endpoints: Some(resources::endpoints(gw)),
        image: Some(resources::effective_image(
            &gw.spec,
            &BuildInputs {
                default_image: ctx.settings.default_image.clone(),
                secret_hash: String::new(),
                ..BuildInputs::default()
            },
        )),
        ..Observation::default()
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);

    // validate
    let value = serde_json::to_value(gw).unwrap_or_default();
    let findings = validate::validate_value(&value, None);
    if !findings.is_empty() {
        let msg = findings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        obs.stalled = Some(Problem::new(Reason::InvalidSpec, msg));
        obs.deployment = deployments.get_opt(&name).await?;
        write_status(gw, ctx, &api, &obs).await?;
        // Non-retryable: wait for a spec change (or the slow resync), no retry storm.
        return Ok(Action::requeue(resync(gw)));
    }

    // spec.rabbitmq.clusterRef: the RabbitmqCluster's address and default user, as an
    // ordinary spec.rabbitmq for everything below.
    let resolved;
    let gw = match &gw.spec.rabbitmq.cluster_ref {
        None => gw,
        Some(r) => match resolve_cluster_ref(gw, ctx, &ns, r).await? {
            Ok(spec) => {
                let mut g = gw.clone();
                g.spec.rabbitmq = spec;
                resolved = g;
                &resolved
            }
            Err(p) => {
                obs.blocked = Some(p);
                obs.deployment = deployments.get_opt(&name).await?;
                write_status(gw, ctx, &api, &obs).await?;
                // Looked at again at the unhurried poll period: the cluster appears or becomes
                // ready on its own time, and a retry storm would not hasten it.
                return Ok(Action::requeue(ctx.settings.exposure_poll));
            }
        },
    };

    // read referenced Secrets
    let secrets = match read_secrets(gw, ctx, &ns).await? {
        Ok(s) => s,
        Err(p) => {
            obs.blocked = Some(p.clone());
            obs.deployment = deployments.get_opt(&name).await?;
            write_status(gw, ctx, &api, &obs).await?;
            return Err(Error::Retry {
                reason: p.reason,
                message: p.message,
            });
        }
    };

    ctx.remember_target(
        &ObjectRef::from_obj(gw),
        (gw.spec.topology.deletion_policy == DeletionPolicy::Delete).then_some(&secrets.target),
    );

    // build and apply
    let children_inputs = BuildInputs {
        default_image: ctx.settings.default_image.clone(),
        secret_hash: secrets.hash.clone(),
        broker_port: secrets.broker_port,
    };
    let children = resources::build(gw, &children_inputs)?;
    if !gw.spec.paused {
        // The Certificate first: cert-manager writes the TLS Secret checked next.
        let gate = NamespaceGate::new(&ctx.client, &ns);
        match apply_certificate(ctx, &ns, gw, &children, &gate).await {
            Ok(c) => obs.exposure.extend(c),
            Err(e) if going_away(&e) => return Err(e.into()),
            Err(e) => return apply_failed(gw, ctx, &api, &deployments, &name, obs, e).await,
        }
        // A pod given a listener Secret it cannot use would not start (or refuse every
        // client): the pods keep what they run until the Secret is right.
        if let Some(p) = check_listener_secrets(gw, ctx, &ns).await? {
            // The other exposure children were not looked at: their verdicts stay.
            keep_exposure(gw, &mut obs, None);
            obs.blocked = Some(p.clone());
            obs.deployment = deployments.get_opt(&name).await?;
            write_status(gw, ctx, &api, &obs).await?;
            return Err(Error::Retry {
                reason: p.reason,
                message: p.message,
            });
        }
    }
    if !gw.spec.paused {
        match apply_children(ctx, &ns, &children).await {
            Ok(Some(d)) => obs.deployment = Some(d),
            Ok(None) => {
                tracing::debug!(%ns, %name, "namespace being deleted: its children are not re-created");
                return Ok(Action::await_change());
            }
            Err(e) if going_away(&e) => return Err(e.into()),
            Err(e) => return apply_failed(gw, ctx, &api, &deployments, &name, obs, e).await,
        }
        let gate = NamespaceGate::new(&ctx.client, &ns);
        match apply_exposure(ctx, &ns, gw, &children, &gate).await {
            Ok(c) => obs.exposure.extend(c),
            Err(e) if going_away(&e) => return Err(e.into()),
            Err(e) => return apply_failed(gw, ctx, &api, &deployments, &name, obs, e).await,
        }
        match apply_autoscaler(ctx, &ns, gw, &children, &gate).await {
            Ok(a) => obs.autoscaling = Some(a),
            Err(e) if going_away(&e) => return Err(e.into()),
            Err(e) => return apply_failed(gw, ctx, &api, &deployments, &name, obs, e).await,
        }
    } else {
        obs.deployment = deployments.get_opt(&name).await?;
        // Paused: the last verdicts stay as they were.
        keep_exposure(gw, &mut obs, Some(Reason::Paused));
    }

    // broker and topology
    let mut retry: Option<Problem> = None;
    match ctx.brokers.get(&secrets.target).await {
        Err(e) => {
            let p = broker_problem(&e);
            ctx.metrics.broker_op("connect", topology::result::ERROR);
            obs.broker = Some(Err(p.clone()));
            obs.topology = Some(Err(p.clone()));
            retry = Some(p);
        }
        Ok(broker) => {
            obs.broker = Some(Ok(()));
            if !gw.spec.paused {
                let applied = match record_intent(gw, ctx, &api, &broker).await? {
                    Ok(intent) => {
                        broker
                            .apply_checked(
                                &gw.spec.topology,
                                intent.ledger.as_ref(),
                                &intent.checked,
                            )
                            .await
                    }
                    Err(e) => Err(e),
                };
                match applied {
                    Ok(outcome) => {
                        for (op, result) in &outcome.ops {
                            ctx.metrics.broker_op(op, result);
                        }
                        for _ in &outcome.conflicts {
                            ctx.metrics.conflict();
                        }
                        if !outcome.recreated.is_empty() {
                            publish(
                                ctx,
                                gw,
                                EventType::Warning,
                                "Recreated",
                                format!(
                                    "exchange(s) {} were missing in RabbitMQ and were declared again",
                                    outcome.recreated.join(", ")
                                ),
                            )
                            .await;
                        }
                        if !outcome.conflicts.is_empty() {
                            let p = Problem::new(
                                Reason::ExchangeConflict,
                                outcome.conflicts.join("; "),
                            );
                            obs.stalled = Some(p.clone());
                            obs.topology = Some(Err(p));
                        } else if !outcome.pending.is_empty() {
                            let p =
                                Problem::new(Reason::BindingPending, outcome.pending.join("; "));
                            obs.topology = Some(Err(p.clone()));
                            retry = Some(p);
                        } else {
                            obs.topology = Some(Ok(()));
                        }
                        obs.ledger = Some(outcome.status);
                    }
                    Err(e) => {
                        count_failed_op(ctx, &e);
                        let p = broker_problem(&e);
                        if matches!(e, TopologyError::Lost { .. }) {
                            ctx.brokers.mark_down(&secrets.target).await;
                            obs.broker = Some(Err(p.clone()));
                        }
                        obs.topology = Some(Err(p.clone()));
                        retry = Some(p);
                    }
                }
            } else if let Some(prev) =
                status::condition(gw.status.as_ref(), status::types::TOPOLOGY_READY)
            {
                // Paused: keep the last topology verdict rather than inventing one.
                obs.topology = Some(if prev.status == "True" {
                    Ok(())
                } else {
                    Err(Problem::new(Reason::Paused, prev.message.clone()))
                });
            }
        }
    }
    write_status(gw, ctx, &api, &obs).await?;
    match retry {
        Some(p) => Err(Error::Retry {
            reason: p.reason,
            message: p.message,
        }),
        None if obs.exposure.iter().any(|c| c.status != "True") => {
            Ok(Action::requeue(ctx.settings.exposure_poll.min(resync(gw))))
        }
        None => Ok(Action::requeue(resync(gw))),
    }
}

/// Reports a failed child apply (`ApplyFailed`, retried with backoff).
async fn apply_failed(
    gw: &StompGateway,
    ctx: &Context,
    api: &Api<StompGateway>,
    deployments: &Api<Deployment>,
    name: &str,
    mut obs: Observation,
    e: kube::Error,
) -> Result<Action, Error> {
    let p = Problem::new(
        Reason::ApplyFailed,
        format!(
            "applying the gateway objects failed: {}",
            status::api_error_message(&e)
        ),
    );
    obs.blocked = Some(p);
    obs.deployment = deployments.get_opt(name).await.ok().flatten();
    write_status(gw, ctx, api, &obs).await?;
    Err(e.into())
}

/// Whether the API server serves `ar` (discovery of its group version; a group that is not
/// installed answers 404).
async fn served(client: &Client, ar: &ApiResource) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(&ar.api_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == ar.plural)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

fn not_served(type_: &'static str, ar: &ApiResource, field: &str, what: &str) -> Cond {
    // No poll period in the message: it must not change between reconciles (no write).
    Cond::new(
        type_,
        false,
        Reason::KindNotServed,
        format!(
            "{field} asks for a {} ({}), which this cluster does not serve; install {what} and the operator creates it within a minute",
            ar.kind, ar.api_version
        ),
    )
}

/// Applies (or removes) a child of a kind that may not be served. None: the kind is not
/// served, nothing was done.
async fn apply_dynamic(
    ctx: &Context,
    ns: &str,
    ar: &ApiResource,
    want: Option<&DynamicObject>,
    owner: &str,
    had: bool,
    gate: &NamespaceGate<'_>,
) -> Result<Option<()>, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, ar);
    match want {
        Some(obj) => {
            if !served(&ctx.client, ar).await? {
                return Ok(None);
            }
            let name = obj.metadata.name.clone().unwrap_or_default();
            let hash = obj.annotations().get(APPLIED_HASH_ANNOTATION);
            match api.get_opt(&name).await? {
                Some(live)
                    if live.annotations().get(APPLIED_HASH_ANNOTATION) == hash
                        && matches!(
                            (serde_json::to_value(obj), serde_json::to_value(&live)),
                            (Ok(w), Ok(h)) if is_subset(&w, &h)
                        ) =>
                {
                    return Ok(Some(()));
                }
                Some(_) => {}
                None if gate.closed().await => return Ok(Some(())),
                None => {}
            }
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await?;
            Ok(Some(()))
        }
        // Never configured (no condition from an earlier pass): nothing to look for.
        None if !had => Ok(Some(())),
        None => {
            // Removed from the spec: delete ours. A kind that is not served has no objects
            // (the read answers 404, which get_opt turns into None).
            if let Some(live) = api.get_opt(owner).await?
                && is_ours(live.labels())
            {
                api.delete(owner, &DeleteParams::default()).await?;
            }
            Ok(Some(()))
        }
    }
}

fn is_ours(labels: &BTreeMap<String, String>) -> bool {
    labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(FIELD_MANAGER)
}

/// `spec.tls.issuerRef`: the cert-manager Certificate (CertificateReady when asked for).
async fn apply_certificate(
    ctx: &Context,
    ns: &str,
    gw: &StompGateway,
    c: &resources::Children,
    gate: &NamespaceGate<'_>,
) -> Result<Vec<Cond>, kube::Error> {
    let name = gw.name_any();
    let ar = resources::certificate_resource();
    let had = had(gw, status::types::CERTIFICATE_READY);
    let done = apply_dynamic(ctx, ns, &ar, c.certificate.as_ref(), &name, had, gate).await?;
    let Some(cert) = &c.certificate else {
        return Ok(Vec::new());
    };
    Ok(vec![match done {
        Some(()) => Cond::new(
            status::types::CERTIFICATE_READY,
            true,
            Reason::Applied,
            format!(
                "Certificate {name} applied; cert-manager writes Secret {}",
                cert.data["spec"]["secretName"].as_str().unwrap_or_default()
            ),
        ),
        None => not_served(
            status::types::CERTIFICATE_READY,
            &ar,
            "spec.tls.issuerRef",
            "cert-manager",
        ),
    }])
}

/// `spec.ingress`, `spec.route`, `spec.networkPolicy`: applied when set, removed when not.
async fn apply_exposure(
    ctx: &Context,
    ns: &str,
    gw: &StompGateway,
    c: &resources::Children,
    gate: &NamespaceGate<'_>,
) -> Result<Vec<Cond>, kube::Error> {
    let name = gw.name_any();
    let mut conds = Vec::new();
    let ingresses = ns_api::<Ingress>(ctx, ns);
    match &c.ingress {
        Some(i) => {
            apply_one(&ingresses, i, gate, &ctx.own_writes).await?;
            conds.push(ingress_class_state(ctx, gw).await?);
        }
        None if had(gw, status::types::INGRESS_READY) => delete_ours(&ingresses, &name).await?,
        None => {}
    }
    let ar = resources::http_route_resource();
    let had_route = had(gw, status::types::ROUTE_READY);
    let done = apply_dynamic(ctx, ns, &ar, c.route.as_ref(), &name, had_route, gate).await?;
    if c.route.is_some() {
        conds.push(match done {
            Some(()) => Cond::new(
                status::types::ROUTE_READY,
                true,
                Reason::Applied,
                format!("HTTPRoute {name} applied"),
            ),
            None => not_served(
                status::types::ROUTE_READY,
                &ar,
                "spec.route",
                "the Gateway API CRDs (standard channel) and a Gateway implementation",
            ),
        });
    }
    let policies = ns_api::<NetworkPolicy>(ctx, ns);
    match &c.network_policy {
        Some(p) => {
            apply_one(&policies, p, gate, &ctx.own_writes).await?;
            conds.push(Cond::new(
                status::types::NETWORK_POLICY_READY,
                true,
                Reason::Applied,
                format!("NetworkPolicy {name} applied"),
            ));
        }
        None if had(gw, status::types::NETWORK_POLICY_READY) => {
            delete_ours(&policies, &name).await?
        }
        None => {}
    }
    Ok(conds)
}

/// `spec.autoscaling`: the HorizontalPodAutoscaler applied (and its view for the status), or
/// removed with the field.
async fn apply_autoscaler(
    ctx: &Context,
    ns: &str,
    gw: &StompGateway,
    c: &resources::Children,
    gate: &NamespaceGate<'_>,
) -> Result<Option<crate::crd::AutoscalingStatus>, kube::Error> {
    let api = ns_api::<HorizontalPodAutoscaler>(ctx, ns);
    let name = gw.name_any();
    match &c.hpa {
        Some(h) => Ok(apply_one(&api, h, gate, &ctx.own_writes)
            .await?
            .map(|live| autoscaling_status(&name, &live))),
        None => {
            if gw.status.as_ref().is_some_and(|s| s.autoscaling.is_some()) {
                delete_ours(&api, &name).await?;
            }
            Ok(None)
        }
    }
}

/// The HPA's view: replica counts and the connections metric it last read.
pub fn autoscaling_status(
    name: &str,
    hpa: &HorizontalPodAutoscaler,
) -> crate::crd::AutoscalingStatus {
    let st = hpa.status.clone().unwrap_or_default();
    let connections = st.current_metrics.iter().flatten().find_map(|m| {
        m.pods
            .as_ref()
            .filter(|p| p.metric.name == resources::CONNECTIONS_METRIC)
            .and_then(|p| p.current.average_value.as_ref())
            .map(|q| q.0.clone())
    });
    crate::crd::AutoscalingStatus {
        name: name.to_string(),
        current_replicas: st.current_replicas.unwrap_or(0),
        desired_replicas: st.desired_replicas,
        current_connections_per_pod: connections,
    }
}

/// Carries the exposure conditions of the last pass over to one that did not look at those
/// children (paused: with reason Paused), so that what exists is still known (and removed
/// when its field goes).
fn keep_exposure(gw: &StompGateway, obs: &mut Observation, reason: Option<Reason>) {
    for t in [
        status::types::CERTIFICATE_READY,
        status::types::INGRESS_READY,
        status::types::ROUTE_READY,
        status::types::NETWORK_POLICY_READY,
    ] {
        if obs.exposure.iter().any(|c| c.type_ == t) {
            continue;
        }
        if let Some(prev) = status::condition(gw.status.as_ref(), t) {
            let reason = reason.unwrap_or(match prev.reason.as_str() {
                "Applied" => Reason::Applied,
                "KindNotServed" => Reason::KindNotServed,
                "IngressClassNotFound" => Reason::IngressClassNotFound,
                _ => Reason::Unknown,
            });
            obs.exposure.push(Cond::new(
                t,
                prev.status == "True",
                reason,
                prev.message.clone(),
            ));
        }
    }
}

/// Whether an earlier pass reported the child of `type_` (so one may exist to remove). The
/// children carry owner references too: whatever this misses goes with the StompGateway.
fn had(gw: &StompGateway, type_: &str) -> bool {
    status::condition(gw.status.as_ref(), type_).is_some()
}

async fn delete_ours<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if let Some(live) = api.get_opt(name).await?
        && is_ours(live.labels())
    {
        api.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}

/// IngressReady: the class named by `spec.ingress.className` exists (no class: the cluster's
/// default is used, nothing to check; not allowed to read IngressClasses: not checked).
async fn ingress_class_state(ctx: &Context, gw: &StompGateway) -> Result<Cond, kube::Error> {
    let name = gw.name_any();
    let class = gw.spec.ingress.as_ref().and_then(|i| i.class_name.clone());
    let applied = Cond::new(
        status::types::INGRESS_READY,
        true,
        Reason::Applied,
        format!("Ingress {name} applied"),
    );
    let Some(class) = class else {
        return Ok(applied);
    };
    let api: Api<IngressClass> = Api::all(ctx.client.clone());
    match api.get_opt(&class).await {
        Ok(Some(_)) => Ok(applied),
        Ok(None) => Ok(Cond::new(
            status::types::INGRESS_READY,
            false,
            Reason::IngressClassNotFound,
            format!(
                "Ingress {name} applied, but IngressClass {class:?} (spec.ingress.className) does not exist, so no ingress controller serves it; install the controller or fix the class name"
            ),
        )),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(applied),
        Err(e) => Err(e),
    }
}

/// The listener Secrets (`spec.tls`, `spec.auth.jwt`) as the gateway will read them; the
/// first problem found.
async fn check_listener_secrets(
    gw: &StompGateway,
    ctx: &Context,
    ns: &str,
) -> Result<Option<Problem>, Error> {
    if let Some(t) = &gw.spec.tls {
        let field = "spec.tls.secretName";
        let s = match get_secret(ctx, ns, &t.secret_name, field).await? {
            Ok(s) => s,
            Err(mut p) => {
                if t.issuer_ref.is_some() {
                    p.message = format!(
                        "Secret {ns}/{} (spec.tls.secretName) does not exist yet: cert-manager writes it once Certificate {} is issued",
                        t.secret_name,
                        gw.name_any()
                    );
                }
                return Ok(Some(p));
            }
        };
        if let Err(e) = listener::check_tls_secret(&t.secret_name, s.type_.as_deref(), &data_of(&s))
        {
            return Ok(Some(listener_problem(&e)));
        }
    }
    if let (crate::crd::AuthMode::Jwt, Some(jwt)) = (gw.spec.auth.mode, &gw.spec.auth.jwt) {
        let mut secrets = BTreeMap::new();
        let refs = [
            jwt.jwks_secret_ref
                .as_ref()
                .map(|r| (r.name.as_str(), "spec.auth.jwt.jwksSecretRef")),
            jwt.hs256_secret_ref
                .as_ref()
                .map(|r| (r.name.as_str(), "spec.auth.jwt.hs256SecretRef")),
        ];
        for (secret, field) in refs.into_iter().flatten() {
            match get_secret(ctx, ns, secret, field).await? {
                Ok(s) => {
                    secrets.insert(secret.to_string(), data_of(&s));
                }
                Err(p) => return Ok(Some(p)),
            }
        }
        if let Err(e) = listener::check_jwt(jwt, &secrets) {
            return Ok(Some(listener_problem(&e)));
        }
    }
    Ok(None)
}

fn listener_problem(e: &listener::SecretProblem) -> Problem {
    let reason = match e {
        listener::SecretProblem::WrongType { .. } => Reason::SecretWrongType,
        listener::SecretProblem::MissingKey { .. } => Reason::SecretKeyMissing,
        listener::SecretProblem::Unusable { .. } => Reason::SecretInvalid,
    };
    Problem::new(reason, e.to_string())
}

/// Records in the status, before declaring them, the exchanges this reconcile is about to
/// create (write-ahead ownership), and returns the ledger to apply against.
async fn record_intent(
    gw: &StompGateway,
    ctx: &Context,
    api: &Api<StompGateway>,
    broker: &topology::Broker,
) -> Result<Result<Intent, TopologyError>, Error> {
    let prev = gw.status.as_ref().and_then(|s| s.topology.clone());
    let unrecorded = topology::unrecorded_exchanges(&gw.spec.topology, prev.as_ref());
    if unrecorded.is_empty() {
        return Ok(Ok(Intent {
            ledger: prev,
            checked: topology::Checked::new(),
        }));
    }
    let (checked, ops) = match broker.check(&unrecorded).await {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    for (op, result) in ops {
        ctx.metrics.broker_op(op, result);
    }
    let missing: Vec<String> = checked
        .iter()
        .filter(|(_, exists)| !**exists)
        .map(|(name, _)| name.clone())
        .collect();
    if missing.is_empty() {
        return Ok(Ok(Intent {
            ledger: prev,
            checked,
        }));
    }
    let ledger = topology::with_intent(prev.as_ref(), &missing);
    // The whole status as last written, with the intent: what the apply stops sending, the
    // server removes.
    let mut status = gw.status.clone().unwrap_or_default();
    status.topology = Some(ledger.clone());
    let written = apply_status(api, &gw.name_any(), &status).await?;
    ctx.note_version(&written);
    Ok(Ok(Intent {
        ledger: Some(ledger),
        checked,
    }))
}

/// The ledger to apply against, and what the passive checks of this pass found.
struct Intent {
    ledger: Option<crate::crd::TopologyStatus>,
    checked: topology::Checked,
}

/// Every status write: server-side apply of the whole status by [`FIELD_MANAGER`]. One
/// mechanism only: the API server records owners per manager *and* operation, and fields a
/// merge patch (an Update) once wrote outlive the apply that drops them, leaving list items
/// that fail validation and wedge every later status write.
async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({
        "apiVersion": crate::crd::StompGateway::api_version(&()),
        "kind": "StompGateway",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
}

/// Counts the operation a topology error interrupted (`result="error"`).
fn count_failed_op(ctx: &Context, e: &TopologyError) {
    if let TopologyError::Refused { op, .. } | TopologyError::Lost { op, .. } = e {
        ctx.metrics.broker_op(op, topology::result::ERROR);
    }
}

fn broker_problem(e: &TopologyError) -> Problem {
    let reason = match e {
        TopologyError::Unreachable { .. } | TopologyError::Lost { .. } => Reason::BrokerUnreachable,
        TopologyError::AuthFailed { .. } => Reason::AuthFailed,
        TopologyError::Refused { .. } => Reason::BrokerRefused,
    };
    Problem::new(reason, e.to_string())
}

/// `spec.rabbitmq.clusterRef` as a plain `spec.rabbitmq` (host, default-user Secret, TLS), or
/// why the cluster cannot be used yet (`BrokerConnected=False` with that reason).
async fn resolve_cluster_ref(
    gw: &StompGateway,
    ctx: &Context,
    ns: &str,
    r: &crate::crd::ClusterRef,
) -> Result<Result<crate::crd::RabbitmqSpec, Problem>, Error> {
    use super::cluster_ref::{self, ClusterRefError};
    let problem = |e: ClusterRefError| {
        let reason = match &e {
            ClusterRefError::OtherNamespace { .. } => Reason::InvalidSpec,
            ClusterRefError::NotReady { .. } => Reason::RabbitmqClusterNotReady,
            ClusterRefError::MissingKey { .. } => Reason::SecretKeyMissing,
            ClusterRefError::BadPort { .. } => Reason::SecretInvalid,
        };
        Problem::new(reason, e.to_string())
    };
    if let Some(other) = r.namespace.as_deref().filter(|o| *o != ns) {
        return Ok(Err(problem(ClusterRefError::OtherNamespace {
            found: other.into(),
            own: ns.into(),
        })));
    }
    let ar = cluster_ref::rabbitmq_cluster_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let Some(cluster) = api.get_opt(&r.name).await? else {
        // A kind that is not served answers 404 too: tell the two apart for the message.
        let msg = if served(&ctx.client, &ar).await? {
            format!(
                "RabbitmqCluster {ns}/{} (spec.rabbitmq.clusterRef) not found; create it or fix the name (the operator looks again every 30 s)",
                r.name
            )
        } else {
            format!(
                "spec.rabbitmq.clusterRef names a RabbitmqCluster ({}), which this cluster does not serve; install the RabbitMQ Cluster Operator, or use spec.rabbitmq.host",
                ar.api_version
            )
        };
        return Ok(Err(Problem::new(Reason::RabbitmqClusterNotFound, msg)));
    };
    let value = serde_json::to_value(&cluster).unwrap_or_default();
    let secret = match cluster_ref::binding_secret(&value, ns) {
        Ok(s) => s,
        Err(e) => return Ok(Err(problem(e))),
    };
    let field = format!("status.binding of RabbitmqCluster {}", r.name);
    let s = match get_secret(ctx, ns, &secret, &field).await? {
        Ok(s) => s,
        Err(p) => return Ok(Err(p)),
    };
    Ok(
        cluster_ref::effective_rabbitmq(&value, &gw.spec.rabbitmq.vhost, &secret, &data_of(&s))
            .map_err(problem),
    )
}

/// What the referenced Secrets yield.
struct SecretInputs {
    target: BrokerTarget,
    hash: String,
    broker_port: Option<i32>,
}

/// The port of an `amqp(s)://` URI (the scheme's default when it names none).
pub fn uri_port(url: &str) -> Option<i32> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    // An IPv6 literal's colons are inside the brackets.
    let after_host = host_port.rsplit(']').next().unwrap_or_default();
    match after_host.rsplit_once(':') {
        Some((_, p)) => p.parse().ok(),
        None => match scheme {
            "amqps" => Some(5671),
            "amqp" => Some(5672),
            _ => None,
        },
    }
}

async fn get_secret(
    ctx: &Context,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<Result<Secret, Problem>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    Ok(match api.get_opt(name).await? {
        Some(s) => Ok(s),
        None => Err(Problem::new(
            Reason::SecretNotFound,
            format!(
                "Secret {ns}/{name} (referenced by {field}) not found; create it or fix the reference"
            ),
        )),
    })
}

fn secret_key(s: &Secret, key: &str, field: &str) -> Result<String, Problem> {
    let name = s.name_any();
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim_end_matches(['\n', '\r']).to_string())
        .ok_or_else(|| {
            Problem::new(
                Reason::SecretKeyMissing,
                format!("Secret {name} has no key {key:?} (referenced by {field}); add the key or fix the reference"),
            )
        })
}

fn data_of(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

async fn read_secrets(
    gw: &StompGateway,
    ctx: &Context,
    ns: &str,
) -> Result<Result<SecretInputs, Problem>, Error> {
    let r = &gw.spec.rabbitmq;
    let mut hashed: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
    let mut url = resources::amqp_url(&gw.spec).unwrap_or_default();
    if let Some(u) = &r.uri_secret_ref {
        let field = "spec.rabbitmq.uriSecretRef";
        let s = match get_secret(ctx, ns, &u.name, field).await? {
            Ok(s) => s,
            Err(p) => return Ok(Err(p)),
        };
        url = match secret_key(&s, &u.key, field) {
            Ok(v) => v,
            Err(p) => return Ok(Err(p)),
        };
        hashed.push((u.name.clone(), data_of(&s)));
    }
    let mut creds = None;
    let mut ca_pem = None;
    if let Some(c) = &r.credentials_secret_ref {
        let field = "spec.rabbitmq.credentialsSecretRef";
        let s = match get_secret(ctx, ns, &c.name, field).await? {
            Ok(s) => s,
            Err(p) => return Ok(Err(p)),
        };
        let user = secret_key(&s, &c.username_key, field);
        let pass = secret_key(&s, &c.password_key, field);
        match (user, pass) {
            (Ok(u), Ok(p)) => creds = Some((u, p)),
            (Err(p), _) | (_, Err(p)) => return Ok(Err(p)),
        }
        hashed.push((c.name.clone(), data_of(&s)));
    }
    if let Some(ca) = r.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        let field = "spec.rabbitmq.tls.caSecretRef";
        let s = match get_secret(ctx, ns, &ca.name, field).await? {
            Ok(s) => s,
            Err(p) => return Ok(Err(p)),
        };
        match secret_key(&s, &ca.key, field) {
            Ok(pem) => ca_pem = Some(pem),
            Err(p) => return Ok(Err(p)),
        }
        hashed.push((ca.name.clone(), data_of(&s)));
    }
    let hash = resources::secret_data_hash(hashed.iter().map(|(n, d)| (n.as_str(), d)));
    let mut target = match &creds {
        Some((u, p)) => BrokerTarget::new(&url, Some(u), Some(p)),
        None => BrokerTarget::new(&url, None, None),
    };
    if let Some(pem) = ca_pem {
        target = target.with_ca(pem);
    }
    let broker_port = uri_port(&url);
    Ok(Ok(SecretInputs {
        target,
        hash,
        broker_port,
    }))
}

/// Whether every field of `want` is in `have` with the same value (extra fields in `have`, such
/// as server defaults, are ignored; lists must match item by item).
pub fn is_subset(want: &serde_json::Value, have: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| is_subset(v, hv))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b))
        }
        _ => want == have,
    }
}

/// Whether the namespace is being deleted, asked at most once per reconcile and only when a
/// child would have to be created: the API server refuses creates there (403), and the
/// children the namespace controller removed must not be put back.
struct NamespaceGate<'a> {
    client: &'a Client,
    namespace: &'a str,
    closed: tokio::sync::OnceCell<bool>,
}

impl<'a> NamespaceGate<'a> {
    fn new(client: &'a Client, namespace: &'a str) -> Self {
        Self {
            client,
            namespace,
            closed: tokio::sync::OnceCell::new(),
        }
    }

    async fn closed(&self) -> bool {
        *self
            .closed
            .get_or_init(|| async {
                let api: Api<Namespace> = Api::all(self.client.clone());
                match api.get_opt(self.namespace).await {
                    Ok(Some(ns)) => ns.metadata.deletion_timestamp.is_some(),
                    Ok(None) => true,
                    // Not allowed to read it: the create itself will tell.
                    Err(_) => false,
                }
            })
            .await
    }
}

/// Server-side applies `obj` unless the live object already has it: same applied-hash and
/// every field we set still in place (so a hand edit of a child is put back). None: the child
/// is missing and its namespace is being deleted, so nothing was created.
async fn apply_one<K>(
    api: &Api<K>,
    obj: &K,
    gate: &NamespaceGate<'_>,
    own: &OwnWrites,
) -> Result<Option<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let want = obj.annotations().get(APPLIED_HASH_ANNOTATION);
    match api.get_opt(&name).await? {
        Some(live)
            if live.annotations().get(APPLIED_HASH_ANNOTATION) == want
                && matches!(
                    (serde_json::to_value(obj), serde_json::to_value(&live)),
                    (Ok(w), Ok(h)) if is_subset(&w, &h)
                ) =>
        {
            return Ok(Some(live));
        }
        Some(live) => hand_over_replicas(api, obj, &live).await?,
        None if gate.closed().await => return Ok(None),
        None => {}
    }
    let writing = own.begin(obj);
    let written = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
    own.record(&written);
    drop(writing);
    Ok(Some(written))
}

/// Field manager that keeps a Deployment's replica count when the operator stops setting it.
pub const HANDOVER_MANAGER: &str = "stompgateway-operator-handover";

/// Before an apply that no longer sets `spec.replicas` (autoscaling switched on) while the
/// operator's earlier apply owns it: the API server would remove the field (the Deployment
/// falls back to 1 pod) instead of leaving it to the autoscaler. A second manager first
/// applies the live count, so the field stays, owned by it until the HPA changes it (as the
/// Kubernetes docs' "transferring ownership" does).
async fn hand_over_replicas<K>(api: &Api<K>, want: &K, live: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let (Ok(w), Ok(l)) = (serde_json::to_value(want), serde_json::to_value(live)) else {
        return Ok(());
    };
    let Some(replicas) = l.pointer("/spec/replicas") else {
        return Ok(());
    };
    if w.pointer("/spec/replicas").is_some()
        || w.pointer("/spec").is_none()
        || !managed_fields::applies_field(live.meta(), FIELD_MANAGER, &["spec", "replicas"])
    {
        return Ok(());
    }
    let name = live.meta().name.clone().unwrap_or_default();
    let patch = json!({
        "apiVersion": w["apiVersion"], "kind": w["kind"],
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    api.patch(
        &name,
        &PatchParams::apply(HANDOVER_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    tracing::info!(%name, %replicas, "the replica count is left to the autoscaler");
    Ok(())
}

fn ns_api<K>(ctx: &Context, ns: &str) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(ctx.client.clone(), ns)
}

/// Applies the children; None when their namespace is being deleted (nothing created).
async fn apply_children(
    ctx: &Context,
    ns: &str,
    c: &resources::Children,
) -> Result<Option<Deployment>, kube::Error> {
    let gate = NamespaceGate::new(&ctx.client, ns);
    if apply_one(
        &ns_api::<ConfigMap>(ctx, ns),
        &c.config_map,
        &gate,
        &ctx.own_writes,
    )
    .await?
    .is_none()
        || apply_one(
            &ns_api::<Service>(ctx, ns),
            &c.service,
            &gate,
            &ctx.own_writes,
        )
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let Some(d) = apply_one(
        &ns_api::<Deployment>(ctx, ns),
        &c.deployment,
        &gate,
        &ctx.own_writes,
    )
    .await?
    else {
        return Ok(None);
    };
    let pdbs = ns_api::<PodDisruptionBudget>(ctx, ns);
    match &c.pdb {
        Some(p) => {
            if apply_one(&pdbs, p, &gate, &ctx.own_writes).await?.is_none() {
                return Ok(None);
            }
        }
        None => {
            // Disabled: remove ours if it exists (only when it carries our label).
            let name = c.deployment.metadata.name.clone().unwrap_or_default();
            if let Some(live) = pdbs.get_opt(&name).await?
                && live
                    .labels()
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str)
                    == Some(FIELD_MANAGER)
            {
                pdbs.delete(&name, &DeleteParams::default()).await?;
            }
        }
    }
    Ok(Some(d))
}

/// An answer that means the StompGateway or its namespace is going away (404: gone; 403 with
/// cause `NamespaceTerminating`: the namespace is being deleted). Nothing to retry or report:
/// the deletion brings its own reconcile.
pub fn going_away(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code == 404
                || (s.code == 403
                    && s.details.as_ref().is_some_and(|d| {
                        d.causes.iter().any(|c| c.reason == "NamespaceTerminating")
                    }))
        }
        _ => false,
    }
}

async fn write_status(
    gw: &StompGateway,
    ctx: &Context,
    api: &Api<StompGateway>,
    obs: &Observation,
) -> Result<(), Error> {
    let prev = gw.status.as_ref();
    let new = status::build(prev, obs);
    if prev == Some(&new) {
        return Ok(());
    }
    let written = apply_status(api, &gw.name_any(), &new).await?;
    ctx.note_version(&written);
    // One event per Ready transition: Normal when it becomes True, Warning when it turns
    // False for a problem (not for an ordinary rollout).
    for c in status::transitions(prev, &new) {
        if c.type_ != status::types::READY {
            continue;
        }
        if c.status == "True" {
            publish(ctx, gw, EventType::Normal, "Ready", c.message.clone()).await;
        } else if !QUIET_REASONS.contains(&c.reason.as_str()) {
            publish(ctx, gw, EventType::Warning, &c.reason, c.message.clone()).await;
        }
    }
    Ok(())
}

async fn publish(ctx: &Context, gw: &StompGateway, type_: EventType, reason: &str, note: String) {
    let mut note = note;
    note.truncate(1000);
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // An event is best effort; failing to record one must not fail the reconcile.
    if let Err(e) = ctx.recorder().publish(&ev, &gw.object_ref(&())).await {
        tracing::debug!(error = %e, "event not recorded");
    }
}

async fn ensure_finalizer(
    gw: &StompGateway,
    ctx: &Context,
    api: &Api<StompGateway>,
    want: bool,
) -> Result<(), Error> {
    let has = gw.finalizers().iter().any(|f| f == FINALIZER);
    if has == want {
        return Ok(());
    }
    let mut list: Vec<String> = gw
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if want {
        list.push(FINALIZER.into());
    }
    set_finalizers(gw, ctx, api, list).await
}

async fn set_finalizers(
    gw: &StompGateway,
    ctx: &Context,
    api: &Api<StompGateway>,
    list: Vec<String>,
) -> Result<(), Error> {
    // resourceVersion makes the merge patch conditional, so a concurrent change is not lost.
    let patch = json!({
        "metadata": {"finalizers": list, "resourceVersion": gw.resource_version()}
    });
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let written = api
        .patch(&gw.name_any(), &pp, &Patch::Merge(&patch))
        .await?;
    if written.meta().deletion_timestamp.is_some() && written.finalizers().is_empty() {
        // The API server deletes it now.
        ctx.forget_version(&ObjectRef::from_obj(gw));
    } else {
        ctx.note_version(&written);
    }
    Ok(())
}

/// Deletion: with `deletionPolicy: Delete`, remove owned broker objects, then the finalizer.
/// Gives up (Warning `CleanupSkipped`) when the Secret is gone or the timeout passed, so a
/// namespace deletion never wedges.
async fn cleanup(
    gw: &StompGateway,
    ctx: &Context,
    api: &Api<StompGateway>,
) -> Result<Action, Error> {
    let oref = ObjectRef::from_obj(gw);
    if !gw.finalizers().iter().any(|f| f == FINALIZER) {
        ctx.remember_target(&oref, None);
        return Ok(Action::await_change());
    }
    let ledger = gw.status.as_ref().and_then(|s| s.topology.as_ref());
    let wants =
        gw.spec.topology.deletion_policy == DeletionPolicy::Delete && topology::has_owned(ledger);
    let remaining: Vec<String> = gw
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if !wants {
        set_finalizers(gw, ctx, api, remaining).await?;
        ctx.remember_target(&oref, None);
        return Ok(Action::await_change());
    }
    let ns = gw.namespace().unwrap_or_default();
    let time_left = ctx.cleanup_time_left(gw).unwrap_or(Duration::ZERO);
    let deadline_passed = time_left.is_zero();
    let attempt = async {
        let target = match read_secrets(gw, ctx, &ns).await {
            Ok(Ok(s)) => s.target,
            // A namespace deletion removes the Secret first: use what the last reconcile read.
            Ok(Err(p)) => match ctx.remembered_target(&oref) {
                Some(t)
                    if matches!(p.reason, Reason::SecretNotFound | Reason::SecretKeyMissing) =>
                {
                    t
                }
                _ => return Err(p),
            },
            Err(e) => return Err(Problem::new(Reason::ApplyFailed, e.to_string())),
        };
        let broker = ctx
            .brokers
            .get(&target)
            .await
            .map_err(|e| broker_problem(&e))?;
        let ledger = ledger.cloned().unwrap_or_default();
        match broker.cleanup(&ledger).await {
            Ok(removed) => {
                for (op, result) in &removed.ops {
                    ctx.metrics.broker_op(op, result);
                }
                Ok(removed.names)
            }
            Err(e) => {
                count_failed_op(ctx, &e);
                Err(broker_problem(&e))
            }
        }
    };
    // One attempt may not outlive the deadline either (a broker that never answers), but an
    // object first reached after its deadline (a long queue behind a slow API server) still
    // gets one real attempt: a token one would leave its exchanges behind for nothing.
    let attempt: Result<Vec<String>, Problem> =
        match tokio::time::timeout(time_left.max(LAST_CLEANUP_ATTEMPT), attempt).await {
            Ok(r) => r,
            Err(_) => Err(Problem::new(
                Reason::BrokerUnreachable,
                format!(
                    "broker cleanup did not finish within {}s",
                    ctx.settings.finalizer_timeout.as_secs()
                ),
            )),
        };
    let gave_up_in_time = attempt.is_err() && ctx.cleanup_time_left(gw) == Some(Duration::ZERO);
    match attempt {
        Ok(removed) => {
            if !removed.is_empty() {
                publish(
                    ctx,
                    gw,
                    EventType::Normal,
                    "CleanedUp",
                    format!("removed {}", removed.join(", ")),
                )
                .await;
            }
            set_finalizers(gw, ctx, api, remaining).await?;
            ctx.remember_target(&oref, None);
            Ok(Action::await_change())
        }
        // Without the Secret (and no remembered target) nothing can ever succeed; give up now
        // rather than wedge.
        Err(p)
            if deadline_passed
                || gave_up_in_time
                || matches!(p.reason, Reason::SecretNotFound | Reason::SecretKeyMissing) =>
        {
            publish(
                ctx,
                gw,
                EventType::Warning,
                "CleanupSkipped",
                format!("broker objects were left in RabbitMQ: {}", p.message),
            )
            .await;
            set_finalizers(gw, ctx, api, remaining).await?;
            ctx.remember_target(&oref, None);
            Ok(Action::await_change())
        }
        Err(p) => Err(Error::Retry {
            reason: p.reason,
            message: p.message,
        }),
    }
}

/// A watched object that may not deserialize: one malformed StompGateway must not stop the
/// watch of all the others.
pub type Guarded = DeserializeGuard<StompGateway>;

/// Controller entry point over [`Guarded`] objects: readable ones are reconciled, an unreadable
/// one gets `Stalled=True` (reason InvalidSpec) and waits for a change.
pub async fn reconcile_guarded(obj: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    match &obj.0 {
        Ok(gw) => reconcile(Arc::new(gw.clone()), ctx).await,
        Err(invalid) => {
            report_unreadable(invalid, &ctx).await?;
            Ok(Action::await_change())
        }
    }
}

/// Error policy over [`Guarded`] objects.
pub fn error_policy_guarded(obj: Arc<Guarded>, err: &Error, ctx: Arc<Context>) -> Action {
    match &obj.0 {
        Ok(gw) => error_policy(Arc::new(gw.clone()), err, ctx),
        Err(_) => Action::requeue(Duration::from_secs(300)),
    }
}

async fn report_unreadable(invalid: &InvalidObject, ctx: &Context) -> Result<(), Error> {
    let (Some(ns), Some(name)) = (
        invalid.metadata.namespace.as_deref(),
        invalid.metadata.name.as_deref(),
    ) else {
        return Ok(());
    };
    let generation = invalid.metadata.generation.unwrap_or(0);
    let message = format!(
        "the StompGateway cannot be read by this operator version: {}",
        invalid.error
    );
    // The rest of the status (the ledger above all) is applied again as it is: what the apply
    // leaves out, the server removes.
    let raw: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &ApiResource::erase::<StompGateway>(&()),
    );
    let mut current = raw
        .get_opt(name)
        .await?
        .and_then(|o| o.data.get("status").cloned())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| json!({}));
    let prev: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> =
        serde_json::from_value(current["conditions"].clone()).unwrap_or_default();
    let mut conds = status::merge_conditions(
        &prev,
        vec![
            status::Cond::new(
                status::types::READY,
                false,
                Reason::InvalidSpec,
                message.clone(),
            ),
            status::Cond::new(
                status::types::RECONCILING,
                false,
                Reason::InvalidSpec,
                "the StompGateway cannot be read",
            ),
            status::Cond::new(status::types::STALLED, true, Reason::InvalidSpec, message),
        ],
        generation,
    );
    conds.extend(
        prev.into_iter()
            .filter(|p| !conds.iter().any(|c| c.type_ == p.type_))
            .collect::<Vec<_>>(),
    );
    current["observedGeneration"] = json!(generation);
    current["conditions"] = json!(conds);
    // Guarded: the answer is the same unreadable object, which must not fail the call.
    let api: Api<Guarded> = Api::namespaced(ctx.client.clone(), ns);
    apply_status(&api, name, &current).await?;
    Ok(())
}

/// The least time a broker cleanup gets, even past the finalizer deadline.
const LAST_CLEANUP_ATTEMPT: Duration = Duration::from_secs(2);

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

/// The status a reconcile would write; exposed for tests and `render`-style tooling.
pub fn status_for(prev: Option<&StompGatewayStatus>, obs: &Observation) -> StompGatewayStatus {
    status::build(prev, obs)
}
