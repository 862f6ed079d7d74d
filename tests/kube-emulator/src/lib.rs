//! kube-emulator: an in-memory Kubernetes API server for tests.
//!
//! It speaks HTTP like kube-apiserver, so the real `kubectl` and kube-rs clients talk to it
//! through an ordinary kubeconfig. It keeps objects in memory and implements the parts of the
//! API that controllers and `kubectl` rely on: discovery (legacy and aggregated), CRDs with
//! structural schemas (pruning, defaults, validation, CEL rules, status and scale
//! subresources, printer columns), get/list/watch with resourceVersion semantics, bookmarks
//! and 410 Gone, optimistic concurrency, merge/JSON/strategic merge patches, server-side apply
//! with managed fields and conflicts, finalizers and ownerReference garbage collection, and a
//! Deployment controller whose Pods are ready only when a kubelet (a test) says so.
//! Anything else answers 404 or 405 with a message saying what is not implemented.
//!
//! See `docs/api-emulator.md` for what is covered and what is not.

pub mod deployment;
pub mod fields;
pub mod gc;
pub mod http;
pub mod jsonpath;
pub mod patch;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod store;
pub mod table;
pub mod util;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

pub use store::AuditEntry;

/// How often the controllers look again when nothing changed and no deadline is pending.
const CONTROLLER_IDLE: Duration = Duration::from_secs(5);
/// The shortest pause between two timed passes.
const CONTROLLER_MIN_WAIT: Duration = Duration::from_millis(100);

/// Emulator settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// How many changes are kept for watches and paging; older resourceVersions get 410.
    pub history_limit: usize,
    /// Period of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history_limit: 100_000,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// A running emulator; stops when dropped.
pub struct Emulator {
    addr: SocketAddr,
    app: http::App,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Emulator {
    /// Starts with default options on 127.0.0.1, any port.
    pub async fn start() -> std::io::Result<Emulator> {
        Self::start_with(Options::default()).await
    }

    /// Starts with the given options.
    pub async fn start_with(opts: Options) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let mut state = store::State::new(opts.history_limit);
        state.server_address = addr.to_string();
        let notify = state.gc_notify.clone();
        let app = http::App {
            state: Arc::new(Mutex::new(state)),
            bookmark_interval: opts.bookmark_interval,
        };
        let controllers_state = app.state.clone();
        let controllers = tokio::spawn(async move {
            loop {
                // Every change wakes the controllers; so does the time when time alone may
                // change a Deployment's status (a progress deadline, minReadySeconds).
                let wakeup = controllers_state
                    .lock()
                    .expect("state lock")
                    .deployment_wakeup;
                let wait = wakeup
                    .map(|t| t.saturating_duration_since(std::time::Instant::now()))
                    .unwrap_or(CONTROLLER_IDLE)
                    .clamp(CONTROLLER_MIN_WAIT, CONTROLLER_IDLE);
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                let mut st = controllers_state.lock().expect("state lock");
                gc::run(&mut st);
                deployment::run(&mut st);
            }
        });
        let handler_app = app.clone();
        let router = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let app = handler_app.clone();
            async move { http::handle(app, req).await }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Emulator {
            addr,
            app,
            tasks: vec![controllers, server],
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at the emulator (context `kube-emulator`, namespace `default`).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-emulator\n  cluster:\n    server: {}\ncontexts:\n- name: kube-emulator\n  context:\n    cluster: kube-emulator\n    user: kube-emulator\n    namespace: default\ncurrent-context: kube-emulator\nusers:\n- name: kube-emulator\n  user:\n    token: kube-emulator-accepts-any-token\n",
            self.url()
        )
    }

    /// Writes [`Self::kubeconfig`] to a file.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// A kube-rs client for the emulator.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    /// Calls the API in-process (same code as HTTP; no watches). `path` may carry a query.
    /// PATCH bodies are JSON merge patches unless `content_type` says otherwise.
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> (u16, Value) {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let inc = http::Incoming {
            method: method.parse().expect("method"),
            path: p.to_string(),
            query: form_urlencoded::parse(q.as_bytes())
                .map(|(a, b)| (a.into_owned(), b.into_owned()))
                .collect(),
            raw_query: q.to_string(),
            accept: "application/json".into(),
            content_type: content_type.to_string(),
            user_agent: "kube-emulator-handle".into(),
            body: Bytes::copy_from_slice(body.unwrap_or_default()),
            remote: false,
        };
        let r = http::serve_in_process(&self.app, &inc);
        (r.code, r.body)
    }

    /// [`Self::call_with`] with a JSON body (merge patch for PATCH).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let ct = if method.eq_ignore_ascii_case("PATCH") {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let bytes = body.map(|b| serde_json::to_vec(b).expect("json"));
        self.call_with(method, path, ct, bytes.as_deref())
    }

    /// GET an object by API path (None on 404).
    pub fn get(&self, path: &str) -> Option<Value> {
        match self.call("GET", path, None) {
            (200, v) => Some(v),
            _ => None,
        }
    }

    /// Forgets the change history (like an etcd compaction): watches and list continuations
    /// from older resourceVersions answer 410 Gone.
    pub fn compact(&self) {
        self.app.state.lock().expect("state lock").compact();
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.app.state.lock().expect("state lock").rv
    }

    /// Switches one of the emulator's controllers off or on, like kube-controller-manager's
    /// `--controllers`: `namespace-controller`, `deployment-controller`,
    /// `garbage-collector-controller`. A test can hold a state the real controllers pass
    /// through quickly (a namespace terminating while its content is still there).
    pub fn set_controller(&self, name: &str, enabled: bool) {
        self.app
            .state
            .lock()
            .expect("state lock")
            .set_controller(name, enabled);
    }

    /// Reports a pod running and ready (or not ready), as its kubelet would: `status.phase` and
    /// the `Ready` condition through the `status` subresource. Only ready pods count in a
    /// Deployment's `readyReplicas`/`availableReplicas`. Returns the HTTP code.
    pub fn set_pod_ready(&self, namespace: &str, pod: &str, ready: bool) -> u16 {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/status?fieldManager=kubelet");
        let Some(current) = self.get(&format!("/api/v1/namespaces/{namespace}/pods/{pod}")) else {
            return 404;
        };
        let want = if ready { "True" } else { "False" };
        let conditions = current
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == want)
        {
            return 200;
        }
        let now = util::now_time();
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "Ready" && c["type"] != "ContainersReady")
            .collect();
        for ty in ["ContainersReady", "Ready"] {
            conditions.push(
                serde_json::json!({"type": ty, "status": want, "lastProbeTime": null,
                                               "lastTransitionTime": now}),
            );
        }
        let patch = serde_json::json!({"status": {"phase": "Running", "conditions": conditions}});
        self.call("PATCH", &path, Some(&patch)).0
    }

    /// Turns on the `OwnerReferencesPermissionEnforcement` admission plugin (on in OpenShift)
    /// for clients over HTTP, who are granted `rules` (the RBAC `rules` of a Role or
    /// ClusterRole, as JSON): a write that sets or changes `metadata.ownerReferences` needs
    /// `delete` on the object, and one that makes an ownerReference `blockOwnerDeletion`
    /// needs `update` on the owner's `finalizers` subresource; otherwise 403. In-process
    /// calls act as the cluster administrator.
    pub fn enforce_owner_references(&self, rules: Value) {
        self.app
            .state
            .lock()
            .expect("state lock")
            .owner_reference_rules = rules.as_array().cloned();
    }

    /// Every request served so far.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.app.state.lock().expect("state lock").audit.clone()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
