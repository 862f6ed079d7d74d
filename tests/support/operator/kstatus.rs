//! kstatus, written out: how sigs.k8s.io/cli-utils `pkg/kstatus/status` (what Flux's
//! `wait: true`, `kubectl wait`-like tooling and kpt read) computes the status of an object.
//! Generic rules first (`checkGenericProperties`): deletion, then `observedGeneration`, then a
//! `Reconciling=True` (InProgress) or `Stalled=True` (Failed) condition, in list order. A
//! custom resource without those is Current; a Deployment falls to `deploymentConditions`.

use serde_json::Value;

/// A kstatus result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KStatus {
    /// Still being reconciled or rolled out, with kstatus's message.
    InProgress(String),
    /// Reconciliation failed (Stalled, or a Deployment past its progress deadline).
    Failed(String),
    /// Done.
    Current,
    /// Being deleted.
    Terminating,
}

impl KStatus {
    /// The status name kstatus prints.
    pub fn name(&self) -> &'static str {
        match self {
            KStatus::InProgress(_) => "InProgress",
            KStatus::Failed(_) => "Failed",
            KStatus::Current => "Current",
            KStatus::Terminating => "Terminating",
        }
    }
}

fn int(obj: &Value, pointer: &str, default: i64) -> i64 {
    obj.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or(default)
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `status.Compute`.
pub fn compute(obj: &Value) -> KStatus {
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| t.as_str().is_some_and(|s| !s.is_empty()))
    {
        return KStatus::Terminating;
    }
    // checkGeneration: only when status.observedGeneration is there.
    if let (Some(generation), Some(observed)) = (
        obj.pointer("/metadata/generation").and_then(Value::as_i64),
        obj.pointer("/status/observedGeneration")
            .and_then(Value::as_i64),
    ) && observed != generation
    {
        let kind = obj["kind"].as_str().unwrap_or("");
        return KStatus::InProgress(format!(
            "{kind} generation is {generation}, but latest observed generation is {observed}"
        ));
    }
    for c in conditions(obj) {
        if c["type"] == "Reconciling" && c["status"] == "True" {
            return KStatus::InProgress(c["message"].as_str().unwrap_or("").to_string());
        }
        if c["type"] == "Stalled" && c["status"] == "True" {
            return KStatus::Failed(c["message"].as_str().unwrap_or("").to_string());
        }
    }
    if obj["apiVersion"] == "apps/v1" && obj["kind"] == "Deployment" {
        return deployment(obj);
    }
    KStatus::Current
}

/// `deploymentConditions`.
fn deployment(obj: &Value) -> KStatus {
    let mut progressing = obj.pointer("/spec/progressDeadlineSeconds").is_none();
    let mut available = false;
    for c in conditions(obj) {
        if c["type"] == "Progressing" {
            if c["reason"] == "ProgressDeadlineExceeded" {
                return KStatus::Failed("Progress deadline exceeded".into());
            }
            if c["status"] == "True" && c["reason"] == "NewReplicaSetAvailable" {
                progressing = true;
            }
        }
        if c["type"] == "Available" && c["status"] == "True" {
            available = true;
        }
    }
    let spec = int(obj, "/spec/replicas", 1);
    let replicas = int(obj, "/status/replicas", 0);
    let updated = int(obj, "/status/updatedReplicas", 0);
    let ready = int(obj, "/status/readyReplicas", 0);
    let avail = int(obj, "/status/availableReplicas", 0);
    if spec > replicas {
        return KStatus::InProgress(format!("Replicas: {replicas}/{spec}"));
    }
    if spec > updated {
        return KStatus::InProgress(format!("Updated: {updated}/{spec}"));
    }
    if replicas > spec {
        return KStatus::InProgress(format!("Pending termination: {}", replicas - spec));
    }
    if updated > avail {
        return KStatus::InProgress(format!("Available: {avail}/{updated}"));
    }
    if spec > ready {
        return KStatus::InProgress(format!("Ready: {ready}/{spec}"));
    }
    if !progressing {
        return KStatus::InProgress("ReplicaSet not Available".into());
    }
    if !available {
        return KStatus::InProgress("Deployment not Available".into());
    }
    KStatus::Current
}
