//! Events: best-effort Kubernetes events on the StompGateway, and which Ready=False reasons are
//! ordinary progress (no Warning).

use kube::Resource;
use kube::runtime::events::{Event, EventType};

use super::Context;
use crate::crd::StompGateway;

// Ready=False reasons that are normal progress, not worth a Warning event.
pub(super) const QUIET_REASONS: [&str; 5] = [
    "Progressing",
    "RolloutInProgress",
    "Unavailable",
    "ScaledToZero",
    "Unknown",
];

pub(super) async fn publish(
    ctx: &Context,
    gw: &StompGateway,
    type_: EventType,
    reason: &str,
    note: String,
) {
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
