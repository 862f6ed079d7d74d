//! The state every reconcile shares: client, settings, broker pool and metrics, and what the
//! operator remembers per object (failures for the backoff, the broker target for cleanup, the
//! versions it wrote).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use super::{Error, Settings};
use crate::crd::StompGateway;
use crate::operator::metrics::Metrics;
use crate::operator::own_writes::OwnWrites;
use crate::operator::topology::{BrokerPool, BrokerTarget};

/// Shared reconcile state.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Broker connections.
    pub brokers: Arc<BrokerPool>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The operator's own writes to children (their watch events trigger nothing).
    pub own_writes: Arc<OwnWrites>,
    // Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<StompGateway>, u32>>,
    // Last broker target read from the Secrets of objects with a cleanup finalizer: a namespace
    // deletion removes the Secret before the finalizer runs, and cleanup still needs it.
    targets: Mutex<HashMap<ObjectRef<StompGateway>, BrokerTarget>>,
    // The resourceVersion of each StompGateway as the operator last wrote (or freshly read) it:
    // a cached copy with another version may predate that write (see `Context::fresh`).
    known_versions: Mutex<HashMap<ObjectRef<StompGateway>, String>>,
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        settings: Settings,
        brokers: Arc<BrokerPool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            settings,
            brokers,
            metrics,
            own_writes: Arc::default(),
            failures: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            known_versions: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers the version of a StompGateway the operator just wrote or read from the API
    /// server.
    pub(super) fn note_version(&self, gw: &StompGateway) {
        if let (Some(rv), Ok(mut m)) = (gw.resource_version(), self.known_versions.lock()) {
            m.insert(ObjectRef::from_obj(gw), rv);
        }
    }

    pub(super) fn forget_version(&self, r: &ObjectRef<StompGateway>) {
        if let Ok(mut m) = self.known_versions.lock() {
            m.remove(r);
        }
    }

    /// The object to reconcile: the cached copy, unless the operator knows of a version the
    /// cache does not show yet, in which case a fresh read. The controller's cache can lag
    /// behind the operator's own status writes (a child's event can start the next reconcile
    /// before the status event arrives); acting on such a copy would decide ownership from a
    /// ledger that misses exchanges the operator created, and record them as not owned (then
    /// leak them on deletion), or write back a stale status. None: the object is gone.
    pub(super) async fn fresh(
        &self,
        gw: Arc<StompGateway>,
    ) -> Result<Option<Arc<StompGateway>>, Error> {
        let oref = ObjectRef::from_obj(&*gw);
        let known = self
            .known_versions
            .lock()
            .ok()
            .and_then(|m| m.get(&oref).cloned());
        match known {
            Some(rv) if gw.resource_version().as_ref() != Some(&rv) => {}
            _ => return Ok(Some(gw)),
        }
        let (Some(ns), Some(name)) = (gw.namespace(), gw.metadata.name.as_deref()) else {
            return Ok(Some(gw));
        };
        let api: Api<StompGateway> = Api::namespaced(self.client.clone(), &ns);
        match api.get_opt(name).await? {
            Some(current) => {
                self.note_version(&current);
                Ok(Some(Arc::new(current)))
            }
            None => {
                self.forget_version(&oref);
                Ok(None)
            }
        }
    }

    pub(super) fn remember_target(&self, r: &ObjectRef<StompGateway>, t: Option<&BrokerTarget>) {
        if let Ok(mut m) = self.targets.lock() {
            match t {
                Some(t) => {
                    m.insert(r.clone(), t.clone());
                }
                None => {
                    m.remove(r);
                }
            }
        }
    }

    pub(super) fn remembered_target(&self, r: &ObjectRef<StompGateway>) -> Option<BrokerTarget> {
        self.targets.lock().ok().and_then(|m| m.get(r).cloned())
    }

    /// Time left before broker cleanup of a deleted object gives up (None: not being deleted).
    pub(super) fn cleanup_time_left(&self, gw: &StompGateway) -> Option<Duration> {
        let t = gw.metadata.deletion_timestamp.as_ref()?;
        let since = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
        let since = Duration::try_from(since).unwrap_or(Duration::ZERO);
        Some(self.settings.finalizer_timeout.saturating_sub(since))
    }

    pub(super) fn reset_failures(&self, r: &ObjectRef<StompGateway>) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(r);
        }
    }

    pub(super) fn bump_failures(&self, r: &ObjectRef<StompGateway>) -> u32 {
        match self.failures.lock() {
            Ok(mut m) => {
                let n = m.entry(r.clone()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        }
    }

    pub(super) fn recorder(&self) -> Recorder {
        Recorder::new(
            self.client.clone(),
            Reporter {
                controller: self.settings.reporter.clone(),
                instance: self.settings.instance.clone(),
            },
        )
    }
}
