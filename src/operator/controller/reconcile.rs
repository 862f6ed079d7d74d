//! The pipeline driver: read -> validate -> build -> apply -> topology -> status for one
//! StompGateway, and the error policy (per-object backoff) for its failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::apply::{NamespaceGate, apply_children};
use super::autoscaling::apply_autoscaler;
use super::broker::{broker_problem, count_failed_op, record_intent};
use super::cleanup::{cleanup, ensure_finalizer};
use super::events::publish;
use super::exposure::{apply_certificate, apply_exposure, keep_exposure};
use super::inputs::{check_listener_secrets, read_secrets, resolve_cluster_ref};
use super::status_write::write_status;
use super::{Context, Error};
use crate::crd::{DeletionPolicy, StompGateway};
use crate::operator::managed_fields;
use crate::operator::resources::{self, BuildInputs, FIELD_MANAGER};
use crate::operator::status::{self, Observation, Problem, Reason};
use crate::operator::topology::{self, TopologyError};
use crate::operator::validate;

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
        Err(p) => return blocked_until_retry(gw, ctx, &api, &deployments, &name, obs, p).await,
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
            return blocked_until_retry(gw, ctx, &api, &deployments, &name, obs, p).await;
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

/// Writes the status with what blocks the gateway. The Deployment is read for the status too;
/// a failed read leaves it out (the reconcile fails and is retried either way).
async fn report_blocked(
    gw: &StompGateway,
    ctx: &Context,
    api: &Api<StompGateway>,
    deployments: &Api<Deployment>,
    name: &str,
    mut obs: Observation,
    p: Problem,
) -> Result<(), Error> {
    obs.blocked = Some(p);
    obs.deployment = deployments.get_opt(name).await.ok().flatten();
    write_status(gw, ctx, api, &obs).await
}

/// Reports in the status what blocks the gateway (a referenced Secret missing or unusable),
/// then fails the reconcile so that it is retried with backoff.
async fn blocked_until_retry(
    gw: &StompGateway,
    ctx: &Context,
    api: &Api<StompGateway>,
    deployments: &Api<Deployment>,
    name: &str,
    obs: Observation,
    p: Problem,
) -> Result<Action, Error> {
    report_blocked(gw, ctx, api, deployments, name, obs, p.clone()).await?;
    Err(Error::Retry {
        reason: p.reason,
        message: p.message,
    })
}

/// Reports a failed child apply (`ApplyFailed`, retried with backoff).
async fn apply_failed(
    gw: &StompGateway,
    ctx: &Context,
    api: &Api<StompGateway>,
    deployments: &Api<Deployment>,
    name: &str,
    obs: Observation,
    e: kube::Error,
) -> Result<Action, Error> {
    let p = Problem::new(
        Reason::ApplyFailed,
        format!(
            "applying the gateway objects failed: {}",
            status::api_error_message(&e)
        ),
    );
    report_blocked(gw, ctx, api, deployments, name, obs, p).await?;
    Err(e.into())
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
