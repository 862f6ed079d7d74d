//! Operator metrics (OpenMetrics via prometheus-client). Labels are low-cardinality: results,
//! reason discriminants and operation names, never error text. The only object names are on the
//! `stompgw_gateway_*` series, one set per StompGateway (as kube-state-metrics does for its
//! objects), so an alert can say which gateway is not Ready.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::crd::StompGateway;
use crate::operator::status::types;

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
    gateways: GatewayCollector,
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
        let gateways = GatewayCollector::default();
        registry.register_collector(Box::new(gateways.clone()));
        Self {
            registry,
            reconciles,
            errors,
            duration,
            broker_ops,
            conflicts,
            leader,
            gateways,
        }
    }

    /// Export the `stompgw_gateway_*` series from the controller's cache of StompGateways: read
    /// at each scrape, so a deleted object's series go with it.
    pub fn observe_gateways(&self, store: Store<DeserializeGuard<StompGateway>>) {
        if let Ok(mut slot) = self.gateways.store.write() {
            *slot = Some(store);
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

    /// A broker operation and what RabbitMQ answered (`topology::result`).
    pub fn broker_op(&self, op: &str, result: &str) {
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
        self.encode_chunks().concat()
    }

    /// OpenMetrics text in pieces of about [`CHUNK`] bytes, each written once: at a thousand
    /// StompGateways a scrape is ~2 MB, which one growing `String` would hold up to twice
    /// over (and copy at every doubling).
    pub fn encode_chunks(&self) -> Vec<String> {
        let mut out = Chunks::default();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            return Vec::new();
        }
        out.finish()
    }
}

/// Size of the pieces [`Metrics::encode_chunks`] writes.
pub const CHUNK: usize = 64 * 1024;

/// A `fmt::Write` sink that fills pieces of [`CHUNK`] bytes instead of growing one buffer.
#[derive(Default)]
struct Chunks {
    done: Vec<String>,
    current: String,
}

impl Chunks {
    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

impl std::fmt::Write for Chunks {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.current.len() + s.len() > self.current.capacity() {
            let next = String::with_capacity(CHUNK.max(s.len()));
            let full = std::mem::replace(&mut self.current, next);
            if !full.is_empty() {
                self.done.push(full);
            }
        }
        self.current.push_str(s);
        Ok(())
    }
}

const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

/// Per-StompGateway series, computed from the status the operator wrote (as the API serves it).
#[derive(Clone, Default)]
struct GatewayCollector {
    store: Arc<RwLock<Option<Store<DeserializeGuard<StompGateway>>>>>,
}

impl std::fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayCollector")
    }
}

impl GatewayCollector {
    fn snapshot(&self) -> Vec<Arc<DeserializeGuard<StompGateway>>> {
        match self.store.read() {
            Ok(slot) => slot.as_ref().map(Store::state).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

/// Namespace and name of a cached StompGateway.
fn names(object: &DeserializeGuard<StompGateway>) -> (&str, &str) {
    let meta = match &object.0 {
        Ok(gw) => &gw.metadata,
        Err(invalid) => &invalid.metadata,
    };
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// (condition type, its current status) of a cached StompGateway, one entry per type.
fn conditions(object: &DeserializeGuard<StompGateway>) -> Vec<(&str, &str)> {
    let mut found: Vec<(&str, &str)> = Vec::new();
    match &object.0 {
        Ok(gw) => {
            for c in gw.status.iter().flat_map(|s| &s.conditions) {
                // One series per type: the last one listed wins.
                found.retain(|(t, _)| *t != c.type_);
                found.push((&c.type_, &c.status));
            }
        }
        // An object the operator cannot read gets Ready=False, Stalled=True (InvalidSpec).
        Err(_) => found.extend([(types::READY, "False"), (types::STALLED, "True")]),
    }
    // No Ready condition (never reconciled) is Ready=Unknown: it alerts like False.
    if !found.iter().any(|(t, _)| *t == types::READY) {
        found.push((types::READY, "Unknown"));
    }
    found
}

/// (desired, ready) replicas of a cached StompGateway; None when the operator cannot read it.
fn replicas(object: &DeserializeGuard<StompGateway>) -> Option<(i64, i64)> {
    let gw = object.0.as_ref().ok()?;
    let (replicas, ready) = gw
        .status
        .as_ref()
        .map_or((0, 0), |s| (s.replicas, s.ready_replicas));
    Some((
        i64::from(gw.spec.replicas.unwrap_or(replicas)),
        i64::from(ready),
    ))
}

impl Collector for GatewayCollector {
    /// Writes each series straight from the cached objects, with borrowed labels: no map of
    /// label sets built per scrape (at a thousand StompGateways, ~20,000 series of four owned
    /// strings each).
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let objects = self.snapshot();
        // Like the registry: a family without series is not written at all.
        if !objects.is_empty() {
            let mut family = encoder.encode_descriptor(
                "gateway_condition",
                "StompGateway status conditions: 1 for the condition's current status.",
                None,
                MetricType::Gauge,
            )?;
            for object in &objects {
                let (namespace, name) = names(object);
                for (condition, current) in conditions(object) {
                    for status in CONDITION_STATUSES {
                        let labels = [
                            ("namespace", namespace),
                            ("stompgateway", name),
                            ("condition", condition),
                            ("status", status),
                        ];
                        family
                            .encode_family(&labels)?
                            .encode_gauge(&i64::from(current == status))?;
                    }
                }
            }
        }
        type Pick = fn((i64, i64)) -> i64;
        let families: [(&str, &str, Pick); 2] = [
            (
                "gateway_desired_replicas",
                "Gateway pods a StompGateway asks for (spec.replicas, else status.replicas).",
                |(desired, _)| desired,
            ),
            (
                "gateway_ready_replicas",
                "Ready gateway pods of a StompGateway (status.readyReplicas).",
                |(_, ready)| ready,
            ),
        ];
        // Unreadable objects have no replicas to report.
        if objects.iter().any(|o| o.0.is_ok()) {
            for (metric, help, pick) in families {
                let mut family =
                    encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
                for object in &objects {
                    if let Some(r) = replicas(object) {
                        let (namespace, name) = names(object);
                        let labels = [("namespace", namespace), ("stompgateway", name)];
                        family.encode_family(&labels)?.encode_gauge(&pick(r))?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn guarded(obj: serde_json::Value) -> DeserializeGuard<StompGateway> {
        serde_json::from_value(obj).expect("a guarded object always deserializes")
    }

    fn gateway(name: &str, replicas: i32, status: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
               "metadata": {"name": name, "namespace": "apps"},
               "spec": {"rabbitmq": {"host": "rmq"}, "replicas": replicas},
               "status": status})
    }

    fn sample(text: &str, series: &str) -> Option<i64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn gateway_series_follow_the_cached_objects() {
        let metrics = Metrics::new();
        assert!(
            !metrics.encode().contains("stompgw_gateway_condition{"),
            "no series before the controller runs"
        );
        let mut writer = Writer::<DeserializeGuard<StompGateway>>::default();
        metrics.observe_gateways(writer.as_reader());
        let ready = guarded(gateway(
            "chat",
            3,
            json!({"replicas": 3, "readyReplicas": 2, "conditions": [
                {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Stalled", "status": "False", "reason": "Reconciled", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        ));
        let fresh = guarded(gateway("fresh", 1, json!({})));
        let mut broken = gateway("broken", 1, json!({}));
        broken["spec"]["replicas"] = json!("two");
        let broken = guarded(broken);
        assert!(broken.0.is_err(), "the fixture must be unreadable");
        for obj in [&ready, &fresh, &broken] {
            writer.apply_watcher_event(&Event::Apply(obj.clone()));
        }
        let text = metrics.encode();
        let cond = |name: &str, condition: &str, status: &str| {
            sample(
                &text,
                &format!(
                    "stompgw_gateway_condition{{namespace=\"apps\",stompgateway=\"{name}\",condition=\"{condition}\",status=\"{status}\"}}"
                ),
            )
        };
        assert_eq!(cond("chat", "Ready", "True"), Some(1), "{text}");
        assert_eq!(cond("chat", "Ready", "False"), Some(0));
        assert_eq!(cond("chat", "Stalled", "False"), Some(1));
        assert_eq!(cond("fresh", "Ready", "Unknown"), Some(1), "no status yet");
        assert_eq!(cond("fresh", "Ready", "True"), Some(0));
        assert_eq!(cond("broken", "Ready", "False"), Some(1), "unreadable spec");
        assert_eq!(cond("broken", "Stalled", "True"), Some(1));
        let replicas = |metric: &str, name: &str| {
            sample(
                &text,
                &format!("stompgw_{metric}{{namespace=\"apps\",stompgateway=\"{name}\"}}"),
            )
        };
        assert_eq!(replicas("gateway_desired_replicas", "chat"), Some(3));
        assert_eq!(replicas("gateway_ready_replicas", "chat"), Some(2));
        assert_eq!(replicas("gateway_ready_replicas", "fresh"), Some(0));
        assert_eq!(replicas("gateway_desired_replicas", "broken"), None);

        writer.apply_watcher_event(&Event::Delete(ready));
        let text = metrics.encode();
        assert!(
            !text.contains("stompgateway=\"chat\""),
            "a deleted StompGateway leaves no series: {text}"
        );
        assert!(text.contains("stompgateway=\"fresh\""));
    }

    #[test]
    fn a_large_scrape_is_written_in_bounded_pieces_with_one_series_per_condition() {
        let metrics = Metrics::new();
        let mut writer = Writer::<DeserializeGuard<StompGateway>>::default();
        metrics.observe_gateways(writer.as_reader());
        let condition = |type_: &str, status: &str| {
            json!({"type": type_, "status": status, "reason": "Reconciled", "message": "",
                   "lastTransitionTime": "2026-01-01T00:00:00Z"})
        };
        let n = 400;
        for i in 0..n {
            // Ready listed twice: the last entry is the one exported.
            let status = json!({"replicas": 1, "readyReplicas": 1, "conditions": [
                condition("Ready", "False"), condition("Stalled", "False"),
                condition("TopologyReady", "True"), condition("Ready", "True")]});
            let obj = guarded(gateway(&format!("gw{i:04}"), 1, status));
            writer.apply_watcher_event(&Event::Apply(obj));
        }
        let chunks = metrics.encode_chunks();
        let total: usize = chunks.iter().map(String::len).sum();
        assert!(
            total > 4 * CHUNK,
            "the fixture must span several pieces: {total} bytes"
        );
        for c in &chunks {
            assert!(
                c.capacity() <= CHUNK,
                "a piece of {} bytes (capacity {}): the scrape grew one buffer",
                c.len(),
                c.capacity()
            );
        }
        let text = chunks.concat();
        assert!(text.ends_with("# EOF\n"), "one complete exposition");
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("stompgw_gateway_condition{"))
            .collect();
        assert_eq!(
            series.len(),
            n * 3 * 3,
            "3 condition types x 3 statuses per object"
        );
        let unique: std::collections::BTreeSet<&str> = series
            .iter()
            .map(|l| l.rsplit_once(' ').map_or(*l, |(k, _)| k))
            .collect();
        assert_eq!(unique.len(), series.len(), "a series written twice");
        let ready = "stompgw_gateway_condition{namespace=\"apps\",stompgateway=\"gw0007\",condition=\"Ready\",status=";
        assert_eq!(sample(&text, &format!("{ready}\"True\"}}")), Some(1));
        assert_eq!(sample(&text, &format!("{ready}\"False\"}}")), Some(0));
        assert_eq!(
            text.matches("# TYPE stompgw_gateway_condition ").count(),
            1,
            "one descriptor per family"
        );
    }
}
