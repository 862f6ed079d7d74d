//! Topology: the RabbitMQ side of a reconcile. Write-ahead ownership of the exchanges it is
//! about to create, and how broker failures become conditions and metrics.

use kube::ResourceExt;
use kube::api::Api;

use super::status_write::apply_status;
use super::{Context, Error};
use crate::crd::StompGateway;
use crate::operator::status::{Problem, Reason};
use crate::operator::topology::{self, TopologyError};

/// Records in the status, before declaring them, the exchanges this reconcile is about to
/// create (write-ahead ownership), and returns the ledger to apply against.
pub(super) async fn record_intent(
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
pub(super) struct Intent {
    pub(super) ledger: Option<crate::crd::TopologyStatus>,
    pub(super) checked: topology::Checked,
}

/// Counts the operation a topology error interrupted (`result="error"`).
pub(super) fn count_failed_op(ctx: &Context, e: &TopologyError) {
    if let TopologyError::Refused { op, .. } | TopologyError::Lost { op, .. } = e {
        ctx.metrics.broker_op(op, topology::result::ERROR);
    }
}

pub(super) fn broker_problem(e: &TopologyError) -> Problem {
    let reason = match e {
        TopologyError::Unreachable { .. } | TopologyError::Lost { .. } => Reason::BrokerUnreachable,
        TopologyError::AuthFailed { .. } => Reason::AuthFailed,
        TopologyError::Refused { .. } => Reason::BrokerRefused,
    };
    Problem::new(reason, e.to_string())
}
