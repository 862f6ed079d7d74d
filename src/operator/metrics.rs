//! Operator metrics (OpenMetrics via prometheus-client). Labels are low-cardinality: results,
//! reason discriminants and operation names, never object names or error text.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: String,
    result: String,
}

/// All operator metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<ReasonLabel, Counter>,
    duration: Histogram,
    broker_ops: Family<OpLabels, Counter>,
    conflicts: Counter,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stompgw");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register("reconcile", "Reconciles by result", reconciles.clone());
        let errors = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile errors by reason",
            errors.clone(),
        );
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        let broker_ops = Family::<OpLabels, Counter>::default();
        registry.register(
            "broker_ops",
            "RabbitMQ operations by op and result",
            broker_ops.clone(),
        );
        let conflicts = Counter::default();
        registry.register(
            "broker_conflicts",
            "Exchanges found with other properties",
            conflicts.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            broker_ops,
            conflicts,
            leader,
        }
    }

    /// One reconcile finished.
    pub fn reconciled(&self, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// A reconcile error by reason.
    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// A broker operation.
    pub fn broker_op(&self, op: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.broker_ops
            .get_or_create(&OpLabels {
                op: op.into(),
                result: result.into(),
            })
            .inc();
    }

    /// An exchange conflict.
    pub fn conflict(&self) {
        self.conflicts.inc();
    }

    /// Leadership changed.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}
