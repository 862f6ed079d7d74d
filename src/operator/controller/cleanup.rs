//! Deletion: the `stompgate.io/topology-cleanup` finalizer, present while `deletionPolicy:
//! Delete` asks for broker cleanup, and the cleanup that removes owned broker objects before
//! the StompGateway goes.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::broker::{broker_problem, count_failed_op};
use super::events::publish;
use super::inputs::read_secrets;
use super::{Context, Error, FINALIZER};
use crate::crd::{DeletionPolicy, StompGateway};
use crate::operator::resources::FIELD_MANAGER;
use crate::operator::status::{Problem, Reason};
use crate::operator::topology;

pub(super) async fn ensure_finalizer(
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
pub(super) async fn cleanup(
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

/// The least time a broker cleanup gets, even past the finalizer deadline.
const LAST_CLEANUP_ATTEMPT: Duration = Duration::from_secs(2);
