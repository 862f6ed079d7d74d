//! Objects that may not deserialize: one malformed StompGateway must not stop the watch of all
//! the others. It gets `Stalled=True` (reason InvalidSpec), the rest of its status kept.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use serde_json::json;

use super::reconcile::{error_policy, reconcile};
use super::status_write::apply_status;
use super::{Context, Error};
use crate::crd::StompGateway;
use crate::operator::status::{self, Reason};

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
