//! The controller in-process against the in-memory API server (tests/kube-emulator) and the
//! real RabbitMQ: the harness of the operator tests that need a real API's behaviour (watches,
//! server-side apply and managedFields, garbage collection, the Deployment controller).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use kube_emulator::Emulator;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Connection};
use serde_json::{Value, json};
use stompgate::crd::StompGateway;
use stompgate::operator::controller::{self, Context, Settings};
use stompgate::operator::metrics::Metrics;
use stompgate::operator::topology::BrokerPool;

use super::super::wait_for;

/// The CRD collection.
pub const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

/// API path of a StompGateway.
pub fn gw_path(ns: &str, name: &str) -> String {
    format!("/apis/stompgate.io/v1alpha1/namespaces/{ns}/stompgateways/{name}")
}

/// API path of the gateway Deployment.
pub fn deployment_path(ns: &str, name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}")
}

/// Installs the StompGateway CRD and waits until it is served.
pub async fn install_crd(emu: &Emulator) {
    let crd =
        serde_json::to_value(<StompGateway as kube::CustomResourceExt>::crd()).expect("crd json");
    let (code, body) = emu.call("POST", CRDS, Some(&crd));
    assert_eq!(code, 201, "create CRD: {body}");
    wait_for("the CRD is served", 10, || {
        (emu.call("GET", "/apis/stompgate.io/v1alpha1/stompgateways", None)
            .0
            == 200)
            .then_some(())
    })
    .await;
}

/// The emulator and a running controller.
pub struct Op {
    /// The API server.
    pub emu: Arc<Emulator>,
    /// The controller's context (metrics, settings).
    pub ctx: Arc<Context>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The controller task.
    pub task: Option<tokio::task::JoinHandle<Result<(), kube::Error>>>,
    started: Instant,
}

impl Op {
    /// An emulator with the CRD and the controller running with `finalizer_timeout`.
    pub async fn start(finalizer_timeout: Duration) -> Op {
        let emu = Arc::new(Emulator::start().await.expect("emulator"));
        Self::start_on(emu, finalizer_timeout).await
    }

    /// [`Op::start`] on a given emulator.
    pub async fn start_on(emu: Arc<Emulator>, finalizer_timeout: Duration) -> Op {
        Self::start_with(emu, finalizer_timeout, |_| {}).await
    }

    /// [`Op::start_on`] with settings changed by `tune`.
    pub async fn start_with(
        emu: Arc<Emulator>,
        finalizer_timeout: Duration,
        tune: impl FnOnce(&mut Settings),
    ) -> Op {
        install_crd(&emu).await;
        let (brokers, reconnected) = BrokerPool::new();
        // The operator's --broker-probe-secs 1: a broker that returns is noticed within ~1 s.
        std::mem::forget(brokers.spawn_monitor(Duration::from_secs(1)));
        let mut settings = Settings {
            default_image: "stompgate/stompgate:test".into(),
            finalizer_timeout,
            ..Settings::default()
        };
        tune(&mut settings);
        // The operator's own client (its User-Agent), pointed at the emulator.
        let client = stompgate::operator::client(kube::Config::new(
            emu.url().parse().expect("emulator URL"),
        ))
        .expect("client");
        let ctx = Arc::new(Context::new(
            client,
            settings,
            brokers,
            Arc::new(Metrics::new()),
        ));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(
            ctx.clone(),
            None,
            reconnected,
            async move {
                let _ = rx.await;
            },
        ));
        Op {
            emu,
            ctx,
            stop: Some(tx),
            task: Some(task),
            started: Instant::now(),
        }
    }

    /// Prints a step with the time since the start.
    pub fn step(&self, what: &str) {
        eprintln!(
            "[operator {:>6.2}s] {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// POST, asserting 201.
    pub fn create(&self, path: &str, obj: Value) {
        let (code, body) = self.emu.call("POST", path, Some(&obj));
        assert_eq!(code, 201, "POST {path}: {body}");
    }

    /// DELETE: 200 when gone at once, 202 when finalizers hold it.
    pub fn delete(&self, path: &str) {
        let (code, body) = self.emu.call("DELETE", path, None);
        assert!(code == 200 || code == 202, "DELETE {path}: {code} {body}");
    }

    /// Deletes namespace `ns` and waits (up to 30 s) until the API server no longer has it;
    /// returns how long that took from the DELETE.
    pub async fn delete_namespace(&self, ns: &str) -> Duration {
        let path = format!("/api/v1/namespaces/{ns}");
        let t0 = Instant::now();
        self.delete(&path);
        wait_for("the namespace is gone", 30, || {
            self.emu.get(&path).is_none().then_some(())
        })
        .await;
        t0.elapsed()
    }

    /// JSON merge patch, asserting 200.
    pub fn merge_patch(&self, path: &str, patch: Value) -> Value {
        let (code, body) = self.emu.call("PATCH", path, Some(&patch));
        assert_eq!(code, 200, "PATCH {path}: {body}");
        body
    }

    /// A namespace.
    pub fn namespace(&self, ns: &str) {
        self.create(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }

    /// A Secret labelled for the operator's watch.
    pub fn secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(b(v))))
            .collect();
        self.create(
            &format!("/api/v1/namespaces/{ns}/secrets"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name, "namespace": ns,
                                // Watched: a change reaches the operator at once.
                                "labels": {"stompgate.io/watch": "true"}},
                   "data": data}),
        );
    }

    /// `rmq-creds` with guest/guest.
    pub fn guest_secret(&self, ns: &str) {
        self.secret(
            ns,
            "rmq-creds",
            &[("username", "guest"), ("password", "guest")],
        );
    }

    /// A StompGateway `name` with one replica, the broker on 127.0.0.1:`port`.
    pub fn gateway(&self, ns: &str, name: &str, port: u16, topology: Value) {
        self.gateway_with(ns, name, port, topology, json!({}));
    }

    /// [`Op::gateway`] with more spec fields merged in.
    pub fn gateway_with(&self, ns: &str, name: &str, port: u16, topology: Value, extra: Value) {
        let mut spec = json!({"rabbitmq": {"host": "127.0.0.1", "port": port,
                                           "credentialsSecretRef": {"name": "rmq-creds"}},
                              "replicas": 1, "topology": topology});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        self.create(
            &format!("/apis/stompgate.io/v1alpha1/namespaces/{ns}/stompgateways"),
            json!({"apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
                   "metadata": {"name": name, "namespace": ns}, "spec": spec}),
        );
    }

    /// The StompGateway as stored.
    pub fn gw(&self, ns: &str, name: &str) -> Option<Value> {
        self.emu.get(&gw_path(ns, name))
    }

    /// The pods of the gateway Deployment `name` (the emulator's Deployment controller makes
    /// them).
    pub fn pods(&self, ns: &str, name: &str) -> Vec<Value> {
        let (_, list) = self.emu.call(
            "GET",
            &format!(
                "/api/v1/namespaces/{ns}/pods?labelSelector=app.kubernetes.io%2Finstance%3D{name}"
            ),
            None,
        );
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Plays the kubelet: every pod of the gateway Deployment `name` is running and ready.
    pub fn pods_ready(&self, ns: &str, name: &str) {
        for p in self.pods(ns, name) {
            let pod = p["metadata"]["name"].as_str().unwrap_or_default();
            self.emu.set_pod_ready(ns, pod, true);
        }
    }

    /// Plays the kubelet until the gateway Deployment is fully rolled out and available.
    pub async fn deployment_available(&self, ns: &str, name: &str) {
        let path = deployment_path(ns, name);
        wait_for(
            "the gateway Deployment rolled out and available",
            30,
            || {
                self.pods_ready(ns, name);
                self.emu.get(&path).filter(|d| {
                    let n = |k: &str| d["status"][k].as_i64().unwrap_or(0);
                    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
                    d["status"]["observedGeneration"] == d["metadata"]["generation"]
                        && n("replicas") == want
                        && n("updatedReplicas") == want
                        && n("availableReplicas") == want
                })
            },
        )
        .await;
    }

    /// Events recorded for `name` in `ns` as (type, reason, note).
    pub fn events(&self, ns: &str, name: &str) -> Vec<(String, String, String)> {
        let (_, list) = self.emu.call(
            "GET",
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            None,
        );
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|e| e["regarding"]["name"] == name)
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("type"), s("reason"), s("note"))
            })
            .collect()
    }

    /// Reconciles so far, counted by the operator's reads of `ns`'s Secret `rmq-creds`.
    pub fn secret_reads(&self, ns: &str) -> usize {
        let path = format!("/api/v1/namespaces/{ns}/secrets/rmq-creds");
        self.emu
            .audit()
            .iter()
            .filter(|a| a.method == "GET" && a.path == path)
            .count()
    }

    /// Status writes of `ns/name` so far.
    pub fn status_writes(&self, ns: &str, name: &str) -> usize {
        let path = format!("{}/status", gw_path(ns, name));
        self.emu
            .audit()
            .iter()
            .filter(|a| a.method == "PATCH" && a.path == path)
            .count()
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if std::thread::panicking() {
            let audit = self.emu.audit();
            eprintln!("---- last API requests (the test's own reads left out) ----");
            let requests: Vec<_> = audit
                .iter()
                .filter(|a| a.method != "IN-PROCESS GET")
                .collect();
            for a in requests.iter().rev().take(40).rev() {
                eprintln!("{} {}?{} -> {}", a.method, a.path, a.query, a.code);
            }
        }
    }
}

/// A condition as (status, reason, message).
pub fn cond(gw: &Value, ty: &str) -> Option<(String, String, String)> {
    gw.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

/// Whether condition `ty` has `status`.
pub fn cond_is(gw: &Value, ty: &str, status: &str) -> bool {
    cond(gw, ty).is_some_and(|c| c.0 == status)
}

/// Whether the status describes the current generation.
pub fn observed_current(gw: &Value) -> bool {
    gw.pointer("/status/observedGeneration") == gw.pointer("/metadata/generation")
}

/// Whether a message published to `exchange` with `rk` reaches queue `q` (purged first).
pub async fn routes(c: &Connection, exchange: &str, rk: &str, q: &str) -> bool {
    let ch = c.create_channel().await.expect("channel");
    ch.basic_publish(
        exchange.into(),
        rk.into(),
        BasicPublishOptions::default(),
        b"probe",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("publish confirm");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get");
    let _ = ch.close(200, "ok".into()).await;
    got.is_some()
}
