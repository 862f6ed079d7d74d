//! Status: conditions (kstatus and Argo CD compatible), observedGeneration, and the rule that
//! a condition's lastTransitionTime changes only when its status flips.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{StompGatewayStatus, TopologyStatus};

/// Condition types.
pub mod types {
    /// Summary: everything below is fine for the current generation.
    pub const READY: &str = "Ready";
    /// The current generation is not applied yet, or a rollout is in progress.
    pub const RECONCILING: &str = "Reconciling";
    /// A non-retryable problem needs a spec (or broker) change.
    pub const STALLED: &str = "Stalled";
    /// The operator can log in to the broker.
    pub const BROKER_CONNECTED: &str = "BrokerConnected";
    /// Exchanges and bindings are declared.
    pub const TOPOLOGY_READY: &str = "TopologyReady";
    /// The Deployment is available with at least one ready pod.
    pub const GATEWAY_AVAILABLE: &str = "GatewayAvailable";
    /// spec.paused is set.
    pub const PAUSED: &str = "Paused";
    /// spec.ingress: the Ingress is applied and its class exists.
    pub const INGRESS_READY: &str = "IngressReady";
    /// spec.route: the HTTPRoute is applied (the kind is served).
    pub const ROUTE_READY: &str = "RouteReady";
    /// spec.tls.issuerRef: the cert-manager Certificate is applied (the kind is served).
    pub const CERTIFICATE_READY: &str = "CertificateReady";
    /// spec.networkPolicy: the NetworkPolicy is applied.
    pub const NETWORK_POLICY_READY: &str = "NetworkPolicyReady";
}

/// The closed set of condition reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// All good.
    Reconciled,
    /// Applying the current generation.
    Progressing,
    /// Gateway pods are rolling out.
    RolloutInProgress,
    /// The gateway Deployment stopped progressing (its `Progressing` condition is False).
    ProgressDeadlineExceeded,
    /// The spec breaks a rule.
    InvalidSpec,
    /// A referenced Secret does not exist.
    SecretNotFound,
    /// A referenced Secret lacks a key.
    SecretKeyMissing,
    /// The broker cannot be reached.
    BrokerUnreachable,
    /// The broker refused the credentials.
    AuthFailed,
    /// The broker refused an operation.
    BrokerRefused,
    /// An exchange exists with other properties.
    ExchangeConflict,
    /// A binding could not be applied yet.
    BindingPending,
    /// Connected to the broker.
    Connected,
    /// Topology declared.
    Declared,
    /// Deployment available.
    Available,
    /// Deployment not available.
    Unavailable,
    /// Zero replicas requested.
    ScaledToZero,
    /// Applying a child object failed.
    ApplyFailed,
    /// spec.paused.
    Paused,
    /// Not paused.
    NotPaused,
    /// Nothing known yet.
    Unknown,
    /// A Secret has the wrong type (e.g. not kubernetes.io/tls).
    SecretWrongType,
    /// A Secret's data cannot be used (not PEM, no usable JWT key).
    SecretInvalid,
    /// The cluster does not serve a kind the spec asks for (HTTPRoute, Certificate).
    KindNotServed,
    /// spec.ingress.className names no IngressClass.
    IngressClassNotFound,
    /// The child object is applied.
    Applied,
    /// spec.rabbitmq.clusterRef names no RabbitmqCluster.
    RabbitmqClusterNotFound,
    /// The RabbitmqCluster has not published its default user or is not available.
    RabbitmqClusterNotReady,
}

impl Reason {
    /// The reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reconciled => "Reconciled",
            Self::Progressing => "Progressing",
            Self::RolloutInProgress => "RolloutInProgress",
            Self::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            Self::InvalidSpec => "InvalidSpec",
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretKeyMissing => "SecretKeyMissing",
            Self::BrokerUnreachable => "BrokerUnreachable",
            Self::AuthFailed => "AuthFailed",
            Self::BrokerRefused => "BrokerRefused",
            Self::ExchangeConflict => "ExchangeConflict",
            Self::BindingPending => "BindingPending",
            Self::Connected => "Connected",
            Self::Declared => "Declared",
            Self::Available => "Available",
            Self::Unavailable => "Unavailable",
            Self::ScaledToZero => "ScaledToZero",
            Self::ApplyFailed => "ApplyFailed",
            Self::Paused => "Paused",
            Self::NotPaused => "NotPaused",
            Self::Unknown => "Unknown",
            Self::SecretWrongType => "SecretWrongType",
            Self::SecretInvalid => "SecretInvalid",
            Self::KindNotServed => "KindNotServed",
            Self::IngressClassNotFound => "IngressClassNotFound",
            Self::Applied => "Applied",
            Self::RabbitmqClusterNotFound => "RabbitmqClusterNotFound",
            Self::RabbitmqClusterNotReady => "RabbitmqClusterNotReady",
        }
    }
}

/// A condition value before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// Type.
    pub type_: &'static str,
    /// "True", "False" or "Unknown".
    pub status: &'static str,
    /// Reason.
    pub reason: Reason,
    /// Message.
    pub message: String,
}

impl Cond {
    /// A condition.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: if status { "True" } else { "False" },
            reason,
            message: message.into(),
        }
    }
    /// An Unknown condition.
    pub fn unknown(type_: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: "Unknown",
            reason: Reason::Unknown,
            message: message.into(),
        }
    }
}

/// A problem with its reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Reason.
    pub reason: Reason,
    /// Human message naming the field or object and the fix.
    pub message: String,
}

impl Problem {
    /// A problem.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A Kubernetes API failure as a person reads it in a condition or an event: the HTTP status
/// and the server's own message (`HTTP 403 Forbidden: services "gw" is forbidden: ...`),
/// never the client's debug dump of the response.
pub fn api_error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let phrase = axum::http::StatusCode::from_u16(s.code)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or(s.reason.as_str());
            match (phrase.is_empty(), s.message.is_empty()) {
                (_, true) => format!("HTTP {} {phrase}", s.code),
                (true, false) => format!("HTTP {}: {}", s.code, s.message),
                (false, false) => format!("HTTP {} {phrase}: {}", s.code, s.message),
            }
        }
        other => other.to_string(),
    }
}

/// What the reconcile observed; [`build`] turns it into a status.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// metadata.generation.
    pub generation: i64,
    /// Non-retryable problem (bad spec, conflict).
    pub stalled: Option<Problem>,
    /// Retryable problem before or while applying (Secret missing, apply failed).
    pub blocked: Option<Problem>,
    /// Broker login: None = not tried.
    pub broker: Option<Result<(), Problem>>,
    /// Topology: None = not tried.
    pub topology: Option<Result<(), Problem>>,
    /// The ledger to record (kept from before when topology was not tried).
    pub ledger: Option<TopologyStatus>,
    /// The Deployment as last read (None = not there).
    pub deployment: Option<Deployment>,
    /// spec.paused.
    pub paused: bool,
    /// Replicas requested (None = autoscaled).
    pub desired_replicas: Option<i32>,
    /// Effective gateway image.
    pub image: Option<String>,
    /// Endpoints.
    pub endpoints: Option<crate::crd::Endpoints>,
    /// Pod selector.
    pub selector: String,
    /// IngressReady, RouteReady, CertificateReady: one per configured exposure child.
    pub exposure: Vec<Cond>,
    /// status.autoscaling: None = not looked at (the last value stays), Some(None) = no
    /// autoscaling, Some(Some(_)) = the HPA's view.
    pub autoscaling: Option<Option<crate::crd::AutoscalingStatus>>,
}

/// How far the gateway Deployment's rollout is, by kstatus's rules for Deployments
/// (sigs.k8s.io/cli-utils `pkg/kstatus/status`), which Flux and `kubectl wait`-style tools apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Fully rolled out and available (kstatus Current).
    Complete,
    /// Still rolling out (kstatus InProgress): what it waits for.
    InProgress(String),
    /// Progress stopped: `Progressing=False`, `ProgressDeadlineExceeded` (kstatus Failed).
    Failed(String),
}

fn deployment_condition<'a>(
    d: &'a Deployment,
    type_: &str,
) -> Option<&'a k8s_openapi::api::apps::v1::DeploymentCondition> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// The rollout state of the gateway Deployment (None: it does not exist yet). The Deployment
/// controller sets `observedGeneration` and `updatedReplicas` as soon as it has created the
/// pods, long before they are ready: only ready and available counts equal to the desired one
/// mean done.
pub fn rollout(d: Option<&Deployment>) -> Rollout {
    let Some(d) = d else {
        return Rollout::InProgress("the gateway Deployment does not exist yet".into());
    };
    let name = d.metadata.name.as_deref().unwrap_or("?");
    let spec = d.spec.as_ref();
    let st = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let observed = st.observed_generation.unwrap_or(0);
    if observed < generation {
        return Rollout::InProgress(format!(
            "Deployment {name}: the Deployment controller has not observed its latest spec yet"
        ));
    }
    if let Some(p) = deployment_condition(d, "Progressing")
        && p.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        let deadline = spec
            .and_then(|s| s.progress_deadline_seconds)
            .map(|s| format!(" of {s}s"))
            .unwrap_or_default();
        let detail = p.message.as_deref().unwrap_or("no progress");
        return Rollout::Failed(format!(
            "Deployment {name} exceeded its progress deadline{deadline}: {detail} ({}/{} pods ready); fix the pods (image, probes, resources) or the spec",
            st.ready_replicas.unwrap_or(0),
            spec.and_then(|s| s.replicas).unwrap_or(1),
        ));
    }
    let want = spec.and_then(|s| s.replicas).unwrap_or(1);
    let replicas = st.replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let waiting = if want > replicas {
        Some(format!("{replicas}/{want} pods created"))
    } else if want > updated {
        Some(format!("{updated}/{want} pods updated"))
    } else if replicas > want {
        Some(format!("{} old pods terminating", replicas - want))
    } else if updated > available {
        Some(format!("{available}/{updated} updated pods available"))
    } else if want > ready {
        Some(format!("{ready}/{want} pods ready"))
    } else if spec.and_then(|s| s.progress_deadline_seconds).is_some()
        && !deployment_condition(d, "Progressing").is_some_and(|c| {
            c.status == "True" && c.reason.as_deref() == Some("NewReplicaSetAvailable")
        })
    {
        Some("the new ReplicaSet is not available yet".to_string())
    } else if deployment_condition(d, "Available").is_none_or(|c| c.status != "True") {
        Some("not Available yet".to_string())
    } else {
        None
    };
    match waiting {
        Some(w) => Rollout::InProgress(format!("Deployment {name}: {w}")),
        None => Rollout::Complete,
    }
}

/// Gateway availability from the Deployment: (GatewayAvailable, replicas, ready).
fn gateway_state(obs: &Observation) -> (Cond, i32, i32) {
    let Some(d) = &obs.deployment else {
        return (
            Cond::new(
                types::GATEWAY_AVAILABLE,
                false,
                Reason::Unavailable,
                "the gateway Deployment does not exist yet",
            ),
            0,
            0,
        );
    };
    let st = d.status.clone().unwrap_or_default();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let replicas = st.replicas.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let available_cond = deployment_condition(d, "Available").is_some_and(|c| c.status == "True");
    let cond = if want == 0 {
        Cond::new(
            types::GATEWAY_AVAILABLE,
            false,
            Reason::ScaledToZero,
            "replicas is 0",
        )
    } else if available_cond && ready >= 1 {
        Cond::new(
            types::GATEWAY_AVAILABLE,
            true,
            Reason::Available,
            format!("{ready}/{want} gateway pods ready"),
        )
    } else {
        Cond::new(
            types::GATEWAY_AVAILABLE,
            false,
            Reason::Unavailable,
            format!("{ready}/{want} gateway pods ready"),
        )
    };
    (cond, replicas, ready)
}

/// The conditions for an observation, in a fixed order.
pub fn conditions(obs: &Observation) -> Vec<Cond> {
    let (gateway, _, _) = gateway_state(obs);
    let rollout = rollout(obs.deployment.as_ref());
    let broker = match &obs.broker {
        Some(Ok(())) => Cond::new(
            types::BROKER_CONNECTED,
            true,
            Reason::Connected,
            "logged in to the broker",
        ),
        Some(Err(p)) => Cond::new(types::BROKER_CONNECTED, false, p.reason, p.message.clone()),
        None => match &obs.blocked {
            Some(p) => Cond::new(types::BROKER_CONNECTED, false, p.reason, p.message.clone()),
            None => Cond::unknown(types::BROKER_CONNECTED, "not tried yet"),
        },
    };
    let topology = match &obs.topology {
        Some(Ok(())) => Cond::new(
            types::TOPOLOGY_READY,
            true,
            Reason::Declared,
            "exchanges and bindings are declared",
        ),
        Some(Err(p)) => Cond::new(types::TOPOLOGY_READY, false, p.reason, p.message.clone()),
        None => Cond::unknown(types::TOPOLOGY_READY, "not applied yet"),
    };
    // Retryable problems, in pipeline order: before the broker, the broker, the topology.
    let retryable = obs
        .blocked
        .as_ref()
        .or(obs.broker.as_ref().and_then(|b| b.as_ref().err()))
        .or(obs.topology.as_ref().and_then(|t| t.as_ref().err()));
    // kstatus reads Reconciling=True as InProgress and Stalled=True as Failed; never both. A
    // spec problem stalls; a retryable problem (the operator is retrying) wins over a stopped
    // rollout, which it may well be the cause of (gateway pods are not ready without a broker);
    // a rollout past its progress deadline needs a spec or pod change: stalled.
    // An exposure child that cannot work (kind not served, no such IngressClass) needs
    // someone else's change: stalled, unless something more pressing is reported.
    let exposure_problem = obs
        .exposure
        .iter()
        .find(|c| c.status != "True")
        .map(|c| Problem::new(c.reason, format!("{}: {}", c.type_, c.message)));
    let (reconciling, stalled) = match (&obs.stalled, retryable, &rollout) {
        (Some(p), _, _) => (None, Some(p.clone())),
        (None, Some(p), _) => (Some(p.clone()), None),
        (None, None, _) if obs.paused => (None, None),
        (None, None, _) if exposure_problem.is_some() => (None, exposure_problem),
        (None, None, Rollout::Failed(m)) => (
            None,
            Some(Problem::new(Reason::ProgressDeadlineExceeded, m.clone())),
        ),
        (None, None, Rollout::InProgress(m)) => (
            Some(Problem::new(
                Reason::RolloutInProgress,
                format!("gateway pods are rolling out: {m}"),
            )),
            None,
        ),
        _ => (None, None),
    };
    let stalled = match &stalled {
        Some(p) => Cond::new(types::STALLED, true, p.reason, p.message.clone()),
        None => Cond::new(
            types::STALLED,
            false,
            Reason::Reconciled,
            "no blocking problem",
        ),
    };
    let reconciling = match &reconciling {
        Some(p) => Cond::new(types::RECONCILING, true, p.reason, p.message.clone()),
        None => Cond::new(
            types::RECONCILING,
            false,
            Reason::Reconciled,
            "the current generation is applied and rolled out",
        ),
    };
    let gateway = match (&rollout, gateway.status) {
        // Pods may still serve (the old ones): availability stays as it is, with the reason.
        (Rollout::Failed(m), "False") => Cond::new(
            types::GATEWAY_AVAILABLE,
            false,
            Reason::ProgressDeadlineExceeded,
            m.clone(),
        ),
        _ => gateway,
    };
    let mut all = vec![&broker, &topology, &gateway];
    all.extend(obs.exposure.iter());
    let failing = if stalled.status == "True" {
        Some((stalled.reason, stalled.message.clone()))
    } else if reconciling.status == "True" {
        Some((reconciling.reason, reconciling.message.clone()))
    } else {
        all.iter()
            .find(|c| c.status != "True")
            .map(|c| (c.reason, format!("{}: {}", c.type_, c.message)))
    };
    let ready = match failing {
        Some((r, m)) => Cond::new(types::READY, false, r, m),
        None => Cond::new(
            types::READY,
            true,
            Reason::Reconciled,
            "the gateway is available and the topology is declared",
        ),
    };
    let mut out = vec![ready, reconciling, stalled, broker, topology, gateway];
    out.extend(obs.exposure.iter().cloned());
    if obs.paused {
        out.push(Cond::new(
            types::PAUSED,
            true,
            Reason::Paused,
            "spec.paused is true: nothing is changed",
        ));
    }
    out
}

// Whole seconds: the API server stores metav1.Time at that precision, so what we write reads
// back equal and an unchanged status compares equal.
fn now() -> Time {
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    Time(
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
    )
}

/// Merges new condition values into the previous list: lastTransitionTime is kept unless the
/// status flipped. Paused stays (False) once it has appeared.
pub fn merge_conditions(prev: &[Condition], new: Vec<Cond>, generation: i64) -> Vec<Condition> {
    let mut new = new;
    if !new.iter().any(|c| c.type_ == types::PAUSED)
        && prev.iter().any(|c| c.type_ == types::PAUSED)
    {
        new.push(Cond::new(
            types::PAUSED,
            false,
            Reason::NotPaused,
            "spec.paused is false",
        ));
    }
    new.into_iter()
        .map(|c| {
            let old = prev.iter().find(|p| p.type_ == c.type_);
            let time = match old {
                Some(o) if o.status == c.status => o.last_transition_time.clone(),
                _ => now(),
            };
            Condition {
                type_: c.type_.to_string(),
                status: c.status.to_string(),
                reason: c.reason.as_str().to_string(),
                message: c.message,
                observed_generation: Some(generation),
                last_transition_time: time,
            }
        })
        .collect()
}

/// The full status for an observation; equal to `prev` when nothing changed.
pub fn build(prev: Option<&StompGatewayStatus>, obs: &Observation) -> StompGatewayStatus {
    let empty = Vec::new();
    let prev_conds = prev.map(|p| &p.conditions).unwrap_or(&empty);
    let (_, replicas, ready) = gateway_state(obs);
    StompGatewayStatus {
        observed_generation: Some(obs.generation),
        conditions: merge_conditions(prev_conds, conditions(obs), obs.generation),
        replicas,
        ready_replicas: ready,
        selector: obs.selector.clone(),
        gateway_image: obs.image.clone(),
        endpoints: obs.endpoints.clone(),
        topology: obs
            .ledger
            .clone()
            .or_else(|| prev.and_then(|p| p.topology.clone())),
        autoscaling: match &obs.autoscaling {
            Some(a) => a.clone(),
            None => prev.and_then(|p| p.autoscaling.clone()),
        },
    }
}

/// Conditions whose status flipped (for events): (type, new status, reason, message).
pub fn transitions(prev: Option<&StompGatewayStatus>, new: &StompGatewayStatus) -> Vec<Condition> {
    new.conditions
        .iter()
        .filter(|c| {
            let old = prev.and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_));
            match old {
                Some(o) => o.status != c.status || (c.status != "True" && o.reason != c.reason),
                None => c.status != "Unknown",
            }
        })
        .cloned()
        .collect()
}

/// Finds a condition.
pub fn condition<'a>(status: Option<&'a StompGatewayStatus>, type_: &str) -> Option<&'a Condition> {
    status.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(spec: serde_json::Value, status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gw", "generation": 2},
            "spec": spec, "status": status,
        }))
        .expect("deployment")
    }

    fn available(progressing_reason: &str) -> serde_json::Value {
        serde_json::json!([
            {"type": "Available", "status": "True"},
            {"type": "Progressing", "status": "True", "reason": progressing_reason},
        ])
    }

    #[test]
    fn a_rollout_is_complete_only_when_every_pod_is_updated_ready_and_available() {
        let spec = serde_json::json!({"replicas": 2, "progressDeadlineSeconds": 600,
                                      "selector": {}, "template": {}});
        let done = serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                                      "readyReplicas": 2, "availableReplicas": 2,
                                      "conditions": available("NewReplicaSetAvailable")});
        assert_eq!(
            rollout(Some(&deployment(spec.clone(), done.clone()))),
            Rollout::Complete
        );
        let mut cases = Vec::new();
        for (field, value, waits_for) in [
            ("observedGeneration", 1, "has not observed its latest spec"),
            ("replicas", 1, "1/2 pods created"),
            ("updatedReplicas", 1, "1/2 pods updated"),
            ("replicas", 3, "1 old pods terminating"),
            ("availableReplicas", 0, "0/2 updated pods available"),
            ("readyReplicas", 0, "0/2 pods ready"),
        ] {
            let mut st = done.clone();
            st[field] = value.into();
            cases.push((st, waits_for));
        }
        let mut st = done.clone();
        st["conditions"] = available("ReplicaSetUpdated");
        cases.push((st, "the new ReplicaSet is not available yet"));
        for (st, waits_for) in cases {
            match rollout(Some(&deployment(spec.clone(), st.clone()))) {
                Rollout::InProgress(m) => assert!(m.contains(waits_for), "{st}: {m}"),
                other => panic!("{st}: {other:?}"),
            }
        }
        // Without a progress deadline there is no Progressing condition to wait for.
        let mut st = done.clone();
        st["conditions"] = serde_json::json!([{"type": "Available", "status": "True"}]);
        let no_deadline = serde_json::json!({"replicas": 2, "selector": {}, "template": {}});
        assert_eq!(
            rollout(Some(&deployment(no_deadline, st))),
            Rollout::Complete
        );
    }

    #[test]
    fn a_progress_deadline_exceeded_is_a_failed_rollout_naming_the_deployment() {
        let spec = serde_json::json!({"replicas": 2, "progressDeadlineSeconds": 30,
                                      "selector": {}, "template": {}});
        let st = serde_json::json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
            "readyReplicas": 2, "availableReplicas": 2,
            "conditions": [{"type": "Available", "status": "True"},
                           {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                            "message": "ReplicaSet \"gw-abc\" has timed out progressing."}]});
        match rollout(Some(&deployment(spec, st))) {
            Rollout::Failed(m) => assert!(
                m.starts_with("Deployment gw exceeded its progress deadline of 30s: ReplicaSet \"gw-abc\" has timed out progressing. (2/2 pods ready)"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        let obs = Observation {
            deployment: Some(deployment(
                serde_json::json!({"replicas": 2, "progressDeadlineSeconds": 30, "selector": {}, "template": {}}),
                serde_json::json!({"observedGeneration": 2, "conditions": [{"type": "Progressing",
                    "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
            )),
            broker: Some(Ok(())),
            topology: Some(Ok(())),
            ..Observation::default()
        };
        let conds = conditions(&obs);
        let get = |t: &str| conds.iter().find(|c| c.type_ == t).expect("condition");
        assert_eq!(get(types::STALLED).status, "True");
        assert_eq!(get(types::STALLED).reason, Reason::ProgressDeadlineExceeded);
        assert_eq!(get(types::RECONCILING).status, "False");
        assert_eq!(get(types::READY).reason, Reason::ProgressDeadlineExceeded);
        // A retryable problem is reported instead (Reconciling), never both.
        let obs = Observation {
            broker: Some(Err(Problem::new(Reason::BrokerUnreachable, "down"))),
            ..obs
        };
        let conds = conditions(&obs);
        let get = |t: &str| conds.iter().find(|c| c.type_ == t).expect("condition");
        assert_eq!(get(types::RECONCILING).status, "True");
        assert_eq!(get(types::STALLED).status, "False");
    }
}
