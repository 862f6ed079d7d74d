//! Status: every write is one server-side apply of the whole status, made only when it
//! changed; a Ready transition becomes one event.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::events::{QUIET_REASONS, publish};
use super::{Context, Error};
use crate::crd::{StompGateway, StompGatewayStatus};
use crate::operator::resources::FIELD_MANAGER;
use crate::operator::status::{self, Observation};

pub(super) async fn write_status(
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

/// Every status write: server-side apply of the whole status by [`FIELD_MANAGER`]. One
/// mechanism only: the API server records owners per manager *and* operation, and fields a
/// merge patch (an Update) once wrote outlive the apply that drops them, leaving list items
/// that fail validation and wedge every later status write.
pub(super) async fn apply_status<K>(
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

/// The status a reconcile would write; exposed for tests and `render`-style tooling.
pub fn status_for(prev: Option<&StompGatewayStatus>, obs: &Observation) -> StompGatewayStatus {
    status::build(prev, obs)
}
