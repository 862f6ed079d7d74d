//! The object store and the API semantics over it: resourceVersions, history for watches and
//! consistent paging, create/update/patch/delete with the API server's rules.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::fields::{self, Entry};
use crate::patch;
use crate::registry::{self, Builtin, Registry, ResourceDef};
use crate::schema;
use crate::selector::{FieldSelector, LabelSelector};
use crate::util::{self, ApiError, ApiResult, Cause, meta_mut, meta_str};

/// (group, plural) where objects are stored.
pub type StorageKey = (String, String);
/// (namespace, name); namespace is "" for cluster-scoped objects.
pub type ObjKey = (String, String);

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

/// One committed change (the watch history).
#[derive(Debug)]
pub struct Change {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Resource.
    pub storage: StorageKey,
    /// Object.
    pub key: ObjKey,
    /// Kind of change.
    pub kind: ChangeKind,
    /// The object after (for deletions: its last state, with the deletion's resourceVersion).
    pub obj: Arc<Value>,
    /// The object before (None for additions).
    pub prev: Option<Arc<Value>>,
}

/// One served request, for assertions on who wrote what.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    /// RFC 3339 time.
    pub time: String,
    /// HTTP method (or `IN-PROCESS <method>` for calls through the handle).
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// User-Agent header.
    pub user_agent: String,
    /// Status code.
    pub code: u16,
    /// resourceVersion after the request (changes when the request wrote).
    pub rv_after: u64,
    /// Whether the request changed stored state.
    pub wrote: bool,
}

/// Field validation mode (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop them with a warning (the default).
    Warn,
    /// Refuse the request.
    Strict,
}

/// A request's context.
#[derive(Clone, Debug)]
pub struct Req {
    /// From a client over HTTP (subject to the opt-in authorization checks).
    pub remote: bool,
    /// The resource.
    pub res: Arc<ResourceDef>,
    /// The version in the URL.
    pub version: String,
    /// Namespace in the URL.
    pub namespace: Option<String>,
    /// Field manager.
    pub manager: String,
    /// dryRun=All.
    pub dry_run: bool,
    /// fieldValidation.
    pub validation: FieldValidation,
    /// Warnings to send back (`Warning` headers).
    pub warnings: Vec<String>,
}

/// List options.
#[derive(Clone, Debug, Default)]
pub struct ListOpts {
    /// labelSelector.
    pub labels: LabelSelector,
    /// fieldSelector.
    pub fields: FieldSelector,
    /// limit (0 = all).
    pub limit: usize,
    /// continue token.
    pub continue_token: Option<String>,
    /// resourceVersion.
    pub resource_version: Option<String>,
    /// resourceVersionMatch.
    pub rv_match: Option<String>,
}

/// The emulator's state.
pub struct State {
    /// Last resourceVersion handed out.
    pub rv: u64,
    /// Objects per resource.
    pub objects: HashMap<StorageKey, BTreeMap<ObjKey, Value>>,
    /// Recent changes (oldest first).
    pub history: VecDeque<Arc<Change>>,
    /// How many changes are kept.
    pub history_limit: usize,
    /// Changes with rv <= this are forgotten ("compacted").
    pub compacted: u64,
    /// What is served.
    pub registry: Registry,
    /// uid -> object.
    pub uids: HashMap<String, (StorageKey, ObjKey)>,
    /// Served requests.
    pub audit: Vec<AuditEntry>,
    /// Change feed for watches.
    pub tx: broadcast::Sender<Arc<Change>>,
    /// Service IP allocator.
    pub next_ip: u32,
    /// NodePort allocator.
    pub next_node_port: u32,
    /// Set when the garbage collector should run.
    pub gc_notify: Arc<tokio::sync::Notify>,
    /// Address the server listens on (for discovery's serverAddressByClientCIDRs).
    pub server_address: String,
    /// The pod-template-hash each Deployment (by uid) last rolled out.
    pub deployment_hashes: HashMap<String, String>,
    /// Deployments (by uid) whose last sync changed nothing, with the time it asked to be
    /// woken at, if any: skipped until they or their Pods change or that time comes.
    pub deployment_settled: HashMap<String, Option<std::time::Instant>>,
    /// Deployments (by uid) changed, or whose Pods changed, since the controller's last pass.
    pub deployment_dirty: std::collections::HashSet<String>,
    /// When time alone may next change a Deployment's status (None: only changes will).
    pub deployment_wakeup: Option<std::time::Instant>,
    /// Controllers switched off (kube-controller-manager's `--controllers=-name`).
    pub controllers_off: std::collections::BTreeSet<String>,
    /// RBAC rules of remote clients when OwnerReferencesPermissionEnforcement is on.
    pub owner_reference_rules: Option<Vec<Value>>,
    /// The objects being deleted (with a deletionTimestamp): where the garbage collector's
    /// work starts, kept with every commit so that it never scans the whole store.
    pub deleting: std::collections::BTreeSet<(StorageKey, ObjKey)>,
    /// Owner uid -> the objects whose ownerReferences name it (an empty uid for a reference
    /// without one), kept with every commit.
    pub dependents: HashMap<String, std::collections::BTreeSet<(StorageKey, ObjKey)>>,
}

/// The owner uids an object's ownerReferences name.
pub fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| r.get("uid").and_then(Value::as_str).unwrap_or(""))
}

fn sk(res: &ResourceDef) -> StorageKey {
    res.storage.clone()
}

impl State {
    /// An empty cluster with namespaces default, kube-system, kube-public, kube-node-lease.
    pub fn new(history_limit: usize) -> State {
        let (tx, _) = broadcast::channel(8192);
        let mut st = State {
            rv: 0,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit,
            compacted: 0,
            registry: Registry::build(&[]),
            uids: HashMap::new(),
            audit: Vec::new(),
            tx,
            next_ip: 1,
            next_node_port: 30000,
            gc_notify: Arc::new(tokio::sync::Notify::new()),
            server_address: String::new(),
            deployment_hashes: HashMap::new(),
            deployment_settled: HashMap::new(),
            deployment_dirty: Default::default(),
            deployment_wakeup: None,
            controllers_off: Default::default(),
            owner_reference_rules: None,
            deleting: Default::default(),
            dependents: HashMap::new(),
        };
        let ns_res = st
            .registry
            .find("", "v1", "namespaces")
            .expect("namespaces");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let mut req = st.internal_req(ns_res.clone(), None);
            st.create(
                &mut req,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .expect("namespace");
        }
        st
    }

    /// Whether a controller runs (all do unless switched off).
    pub fn controller_enabled(&self, name: &str) -> bool {
        !self.controllers_off.contains(name)
    }

    /// Switches a controller on or off; switching on runs it at once.
    pub fn set_controller(&mut self, name: &str, enabled: bool) {
        if enabled {
            self.controllers_off.remove(name);
            self.gc_notify.notify_one();
        } else {
            self.controllers_off.insert(name.to_string());
        }
    }

    /// A request context for the emulator's own controllers.
    pub fn internal_req(&self, res: Arc<ResourceDef>, ns: Option<String>) -> Req {
        let version = res.storage_version.clone();
        Req {
            remote: false,
            res,
            version,
            namespace: ns,
            manager: "kube-emulator".into(),
            dry_run: false,
            validation: FieldValidation::Ignore,
            warnings: Vec::new(),
        }
    }

    // ---------------------------------------------------------------- storage primitives

    fn stored(&self, res: &ResourceDef, key: &ObjKey) -> Option<&Value> {
        self.objects.get(&sk(res)).and_then(|m| m.get(key))
    }

    /// Commits a change: new resourceVersion, history, watchers, garbage collector.
    fn commit(
        &mut self,
        storage: StorageKey,
        key: ObjKey,
        kind: ChangeKind,
        mut obj: Value,
    ) -> Value {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let map = self.objects.entry(storage.clone()).or_default();
        let prev = match kind {
            ChangeKind::Deleted => map.remove(&key),
            _ => map.insert(key.clone(), obj.clone()),
        };
        self.index(
            &storage,
            &key,
            prev.as_ref(),
            (kind != ChangeKind::Deleted).then_some(&obj),
        );
        self.mark_deployments(&storage, kind, prev.as_ref(), &obj);
        if let Some(uid) = meta_str(&obj, "uid") {
            if kind == ChangeKind::Deleted {
                self.uids.remove(uid);
            } else {
                self.uids
                    .insert(uid.to_string(), (storage.clone(), key.clone()));
            }
        }
        let change = Arc::new(Change {
            rv: self.rv,
            storage: storage.clone(),
            key,
            kind,
            obj: Arc::new(obj.clone()),
            prev: prev.map(Arc::new),
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = self.tx.send(change);
        if storage.0 == "apiextensions.k8s.io" {
            self.rebuild_registry();
        }
        self.gc_notify.notify_one();
        obj
    }

    /// Keeps [`State::deleting`] and [`State::dependents`] up to date with one change.
    fn index(
        &mut self,
        storage: &StorageKey,
        key: &ObjKey,
        old: Option<&Value>,
        new: Option<&Value>,
    ) {
        let deleting = |v: Option<&Value>| {
            v.is_some_and(|v| v.pointer("/metadata/deletionTimestamp").is_some())
        };
        let entry = || (storage.clone(), key.clone());
        match (deleting(old), deleting(new)) {
            (false, true) => {
                self.deleting.insert(entry());
            }
            (true, false) => {
                self.deleting.remove(&entry());
            }
            _ => {}
        }
        let old_owners: Vec<&str> = old.into_iter().flat_map(owner_uids).collect();
        let new_owners: Vec<&str> = new.into_iter().flat_map(owner_uids).collect();
        for uid in &old_owners {
            if !new_owners.contains(uid)
                && let Some(set) = self.dependents.get_mut(*uid)
            {
                set.remove(&entry());
                if set.is_empty() {
                    self.dependents.remove(*uid);
                }
            }
        }
        for uid in &new_owners {
            if !old_owners.contains(uid) {
                self.dependents
                    .entry(uid.to_string())
                    .or_default()
                    .insert(entry());
            }
        }
    }

    /// Marks the Deployments a change concerns for the Deployment controller: a Deployment
    /// itself, or the controllers of a Pod before and after. A deleted Deployment is forgotten.
    fn mark_deployments(
        &mut self,
        storage: &StorageKey,
        kind: ChangeKind,
        old: Option<&Value>,
        new: &Value,
    ) {
        match (storage.0.as_str(), storage.1.as_str()) {
            ("apps", "deployments") => {
                let uid = meta_str(new, "uid").unwrap_or("").to_string();
                if kind == ChangeKind::Deleted {
                    self.deployment_hashes.remove(&uid);
                    self.deployment_settled.remove(&uid);
                    self.deployment_dirty.remove(&uid);
                } else {
                    self.deployment_dirty.insert(uid);
                }
            }
            ("", "pods") => {
                for pod in old.into_iter().chain([new]) {
                    let controller = pod
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
                        .and_then(|r| r["uid"].as_str());
                    if let Some(uid) = controller {
                        self.deployment_dirty.insert(uid.to_string());
                    }
                }
            }
            _ => {}
        }
    }

    /// Forgets all history so far, like an etcd compaction: older resourceVersions answer 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    fn rebuild_registry(&mut self) {
        let crds: Vec<Value> = self
            .objects
            .get(&(
                "apiextensions.k8s.io".to_string(),
                "customresourcedefinitions".to_string(),
            ))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        self.registry = Registry::build(&crds);
    }

    /// Objects of a resource as of `rv` (must be >= `compacted`).
    pub fn snapshot(&self, storage: &StorageKey, rv: u64) -> ApiResult<BTreeMap<ObjKey, Value>> {
        Ok(self
            .snapshot_refs(storage, rv, None, None)?
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// The objects of a resource as of `rv` (must be >= `compacted`), in key order, borrowed:
    /// only those in namespace `ns` when given, only those after `after` when given. A list
    /// of the present copies nothing and reads only the namespace asked for; an older `rv`
    /// undoes the changes made since from the history.
    fn snapshot_refs<'a>(
        &'a self,
        storage: &StorageKey,
        rv: u64,
        ns: Option<&str>,
        after: Option<&ObjKey>,
    ) -> ApiResult<Vec<(&'a ObjKey, &'a Value)>> {
        if rv < self.rv && rv < self.compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                self.compacted + 1
            )));
        }
        let in_range = |k: &ObjKey| ns.is_none_or(|ns| k.0 == ns) && after.is_none_or(|a| k > a);
        let start: Bound<ObjKey> = match (ns, after) {
            (_, Some(a)) if ns.is_none_or(|ns| a.0.as_str() >= ns) => Bound::Excluded(a.clone()),
            (Some(ns), _) => Bound::Included((ns.to_string(), String::new())),
            (None, _) => Bound::Unbounded,
        };
        let current = self
            .objects
            .get(storage)
            .into_iter()
            .flat_map(|m| m.range((start.clone(), Bound::Unbounded)))
            .take_while(|(k, _)| ns.is_none_or(|ns| k.0 == ns));
        if rv >= self.rv {
            return Ok(current.collect());
        }
        // The state at `rv` of what changed since: the oldest change after it decides.
        let mut then: BTreeMap<&ObjKey, Option<&Value>> = BTreeMap::new();
        for c in self.history.iter().rev() {
            if c.rv <= rv {
                break;
            }
            if &c.storage != storage || !in_range(&c.key) {
                continue;
            }
            let before = match (&c.kind, &c.prev) {
                (ChangeKind::Added, _) => None,
                (_, Some(p)) => Some(&**p),
                (_, None) => continue,
            };
            then.insert(&c.key, before);
        }
        let mut out: BTreeMap<&ObjKey, &Value> =
            current.filter(|(k, _)| !then.contains_key(k)).collect();
        out.extend(then.into_iter().filter_map(|(k, v)| Some((k, v?))));
        Ok(out.into_iter().collect())
    }

    // ---------------------------------------------------------------- views

    /// An object as seen through a resource version (apiVersion, Event conversion).
    pub fn view(res: &ResourceDef, version: &str, obj: &Value) -> Value {
        let mut o = if res.builtin == Some(Builtin::EventV1) {
            event_to_v1(obj)
        } else {
            obj.clone()
        };
        if let Some(m) = o.as_object_mut() {
            m.insert("apiVersion".into(), json!(res.api_version(version)));
            m.insert("kind".into(), json!(res.kind));
        }
        o
    }

    fn to_storage(res: &ResourceDef, obj: Value) -> Value {
        let mut o = if res.builtin == Some(Builtin::EventV1) {
            event_from_v1(&obj)
        } else {
            obj
        };
        if let Some(m) = o.as_object_mut() {
            let (group, _) = &res.storage;
            let av = if group.is_empty() {
                "v1".to_string()
            } else {
                format!("{group}/{}", res.storage_version)
            };
            m.insert("apiVersion".into(), json!(av));
            if res.builtin != Some(Builtin::EventV1) {
                m.insert("kind".into(), json!(res.kind));
            } else {
                m.insert("kind".into(), json!("Event"));
            }
        }
        o
    }

    fn key_of(req: &Req, name: &str) -> ObjKey {
        (
            if req.res.namespaced {
                req.namespace.clone().unwrap_or_default()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    // ---------------------------------------------------------------- reads

    /// GET one object.
    pub fn get(&self, req: &Req, name: &str) -> ApiResult<Value> {
        let key = Self::key_of(req, name);
        self.stored(&req.res, &key)
            .map(|o| Self::view(&req.res, &req.version, o))
            .ok_or_else(|| ApiError::not_found(&req.res.group, &req.res.plural, name))
    }

    /// The resourceVersion a list or watch starts from.
    pub fn list_rv(&self, rv: Option<&str>, rv_match: Option<&str>) -> ApiResult<u64> {
        let Some(rv) = rv.filter(|s| !s.is_empty() && *s != "0") else {
            if rv_match == Some("Exact") {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\" or unset",
                ));
            }
            return Ok(self.rv);
        };
        let n: u64 = rv.parse().map_err(|_| {
            ApiError::bad_request(format!("Invalid value: {rv:?}: invalid resource version"))
        })?;
        if n > self.rv {
            let mut e = ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {n}, current: {}", self.rv),
            );
            e.details = Some(
                json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
            );
            return Err(e);
        }
        match rv_match {
            Some("Exact") => Ok(n),
            Some("NotOlderThan") | None => Ok(self.rv),
            Some(other) => Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            ))),
        }
    }

    /// LIST with selectors, paging (consistent snapshots through continue tokens).
    pub fn list(&self, req: &Req, opts: &ListOpts) -> ApiResult<Value> {
        let (rv, after) = match &opts.continue_token {
            Some(tok) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(tok)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                let rv = raw.get("rv").and_then(Value::as_u64).unwrap_or(0);
                let ns = raw
                    .get("ns")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let name = raw
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if rv < self.compacted {
                    return Err(ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some((ns, name)))
            }
            None => (
                self.list_rv(opts.resource_version.as_deref(), opts.rv_match.as_deref())?,
                None,
            ),
        };
        let ns = req.namespace.as_deref().filter(|_| req.res.namespaced);
        let snap = self.snapshot_refs(&sk(&req.res), rv, ns, after.as_ref())?;
        // Selectors read labels and metadata, the same in every view, except for events.k8s.io
        // Events, whose fields are named differently from the stored core Events.
        let needs_view = req.res.builtin == Some(Builtin::EventV1);
        let selected = |obj: &Value| {
            if needs_view {
                let v = Self::view(&req.res, &req.version, obj);
                opts.labels.matches(&v) && opts.fields.matches(&v)
            } else {
                opts.labels.matches(obj) && opts.fields.matches(obj)
            }
        };
        let selectors = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut items = Vec::new();
        let mut remaining = 0usize;
        let mut last: Option<ObjKey> = None;
        for (key, obj) in snap {
            if selectors && !selected(obj) {
                continue;
            }
            if opts.limit > 0 && items.len() >= opts.limit {
                remaining += 1;
                if selectors {
                    // Without selectors the count is reported; with them, one is enough.
                    break;
                }
                continue;
            }
            last = Some(key.clone());
            items.push(Self::view(&req.res, &req.version, obj));
        }
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if remaining > 0
            && let Some((ns, name)) = last
        {
            let tok = json!({"rv": rv, "ns": ns, "name": name});
            meta["continue"] =
                json!(base64::engine::general_purpose::STANDARD.encode(tok.to_string().as_bytes()));
            if opts.labels.is_empty() && opts.fields.is_empty() {
                meta["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(json!({
            "kind": format!("{}List", req.res.kind),
            "apiVersion": req.res.api_version(&req.version),
            "metadata": meta,
            "items": items,
        }))
    }

    // ---------------------------------------------------------------- writes

    fn check_type(req: &Req, body: &Value) -> ApiResult<()> {
        let want = req.res.api_version(&req.version);
        if let Some(av) = body.get("apiVersion").and_then(Value::as_str)
            && av != want
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want})"
            )));
        }
        if let Some(k) = body.get("kind").and_then(Value::as_str)
            && k != req.res.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                req.res.kind
            )));
        }
        Ok(())
    }

    fn check_namespace(&self, req: &Req, obj: &mut Value) -> ApiResult<()> {
        if !req.res.namespaced {
            meta_mut(obj).remove("namespace");
            return Ok(());
        }
        let Some(ns) = req.namespace.clone() else {
            return Err(ApiError::bad_request(
                "the namespace of the object must be given in the URL (namespaces/<ns>/...)",
            ));
        };
        if let Some(b) = meta_str(obj, "namespace")
            && b != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta_mut(obj).insert("namespace".into(), json!(ns));
        Ok(())
    }

    /// The NamespaceLifecycle admission plugin: nothing is created in a namespace that does
    /// not exist (404) or is being deleted (403 with cause `NamespaceTerminating`); updates
    /// of what is already there are still allowed.
    fn namespace_open(&self, req: &Req, name: &str) -> ApiResult<()> {
        let Some(ns) = req.namespace.as_deref().filter(|_| req.res.namespaced) else {
            return Ok(());
        };
        let key = (String::new(), ns.to_string());
        match self
            .objects
            .get(&(String::new(), "namespaces".to_string()))
            .and_then(|m| m.get(&key))
        {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                let mut e = ApiError::forbidden(format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    util::qualified(&req.res.group, &req.res.plural),
                ));
                e.details = Some(json!({
                    "name": name, "group": req.res.group, "kind": req.res.plural,
                    "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace",
                                "message": format!("namespace {ns} is being terminated")}],
                }));
                Err(e)
            }
            Some(_) => Ok(()),
        }
    }

    fn list_fn(
        res: &Arc<ResourceDef>,
        version: &str,
    ) -> impl Fn(&[String]) -> registry::ListType + use<> {
        let res = res.clone();
        let version = version.to_string();
        move |p: &[String]| registry::list_type(&res, &version, p)
    }

    /// POST: create.
    pub fn create(&mut self, req: &mut Req, body: Value) -> ApiResult<Value> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        Self::check_type(req, &body)?;
        let mut obj = Self::to_storage(&req.res, body);
        self.check_namespace(req, &mut obj)?;
        // Admission sees the name as sent (empty with generateName).
        self.namespace_open(req, meta_str(&obj, "name").unwrap_or(""))?;
        {
            let m = meta_mut(&mut obj);
            if let Some(rv) = m.get("resourceVersion").and_then(Value::as_str)
                && !rv.is_empty()
            {
                return Err(ApiError::bad_request(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
            for f in [
                "uid",
                "resourceVersion",
                "selfLink",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "generation",
                "creationTimestamp",
            ] {
                m.remove(f);
            }
            let name = m
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if name.is_empty() {
                match m.get("generateName").and_then(Value::as_str) {
                    Some(g) if !g.is_empty() => {
                        let n = format!("{g}{}", util::random_suffix());
                        m.insert("name".into(), json!(n));
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            &req.res.kind,
                            &req.res.group,
                            "",
                            vec![Cause::new(
                                "FieldValueRequired",
                                "metadata.name",
                                "metadata.name: Required value: name or generateName is required",
                            )],
                        ));
                    }
                }
            }
        }
        if req.res.version(&req.version).is_some_and(|v| v.status)
            && req.res.builtin != Some(Builtin::Namespace)
            && req.res.builtin != Some(Builtin::Crd)
        {
            obj.as_object_mut().expect("object").remove("status");
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let key = Self::key_of(req, &name);
        self.prepare(req, None, &mut obj)?;
        self.owner_reference_admission(req, None, &obj)?;
        self.validate(req, None, &mut obj, "")?;
        if self.stored(&req.res, &key).is_some() {
            return Err(ApiError::already_exists(
                &req.res.group,
                &req.res.plural,
                &name,
            ));
        }
        {
            let m = meta_mut(&mut obj);
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(util::now_time()));
            if req.res.has_generation {
                m.insert("generation".into(), json!(1));
            }
        }
        let lists = Self::list_fn(&req.res, &req.version);
        let status_sep = req.res.version(&req.version).is_some_and(|v| v.status);
        let mut entries = Vec::new();
        let new_set = fields::field_set(&obj, &lists, !status_sep, false);
        fields::record_update(
            &mut entries,
            &Default::default(),
            &new_set,
            &json!({}),
            &obj,
            &req.manager,
            &req.res.api_version(&req.version),
            "",
        );
        fields::write_entries(&mut obj, &entries);
        if req.dry_run {
            return Ok(Self::view(&req.res, &req.version, &obj));
        }
        let stored = self.commit(sk(&req.res), key, ChangeKind::Added, obj);
        Ok(Self::view(&req.res, &req.version, &stored))
    }

    /// PUT: replace (main resource or `status`).
    pub fn update(
        &mut self,
        req: &mut Req,
        name: &str,
        sub: &str,
        body: Value,
    ) -> ApiResult<(u16, Value)> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        Self::check_type(req, &body)?;
        let key = Self::key_of(req, name);
        let old = self
            .stored(&req.res, &key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&req.res.group, &req.res.plural, name))?;
        if meta_str(&body, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        if let Some(rv) = meta_str(&body, "resourceVersion").filter(|s| !s.is_empty())
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &req.res.group,
                &req.res.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut new = Self::to_storage(&req.res, body);
        self.check_namespace(req, &mut new)?;
        self.finish_write(req, &old, new, sub, None)
    }

    /// PATCH (merge, JSON, strategic, apply) of the main resource or `status`.
    pub fn patch(
        &mut self,
        req: &mut Req,
        name: &str,
        sub: &str,
        content_type: &str,
        body: &[u8],
        force: bool,
    ) -> ApiResult<(u16, Value)> {
        let key = Self::key_of(req, name);
        let old = self.stored(&req.res, &key).cloned();
        let kind = content_type.split(';').next().unwrap_or("").trim();
        if kind == "application/apply-patch+yaml" || kind == "application/apply-patch+cbor" {
            if kind.ends_with("cbor") {
                return Err(ApiError::unsupported_media(
                    "the emulator does not speak CBOR; send application/apply-patch+yaml",
                ));
            }
            return self.apply(req, name, sub, old, body, force);
        }
        if force {
            return Err(ApiError::bad_request(
                "force: Invalid value: true: may not be specified for non-apply patch",
            ));
        }
        let old = old.ok_or_else(|| ApiError::not_found(&req.res.group, &req.res.plural, name))?;
        let patch: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
        let old_view = Self::view(&req.res, &req.version, &old);
        let mut new = match kind {
            "application/merge-patch+json" => {
                let mut n = old_view.clone();
                patch::merge_patch(&mut n, &patch);
                n
            }
            "application/json-patch+json" => {
                let mut n = old_view.clone();
                patch::json_patch(&mut n, &patch)?;
                n
            }
            "application/strategic-merge-patch+json" => {
                if req.res.builtin.is_none() {
                    return Err(ApiError::unsupported_media(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (strategic merge patch is not supported for custom resources)",
                    ));
                }
                let res = req.res.clone();
                let keys = move |p: &[String]| registry::strategic_key(&res, p);
                patch::strategic_merge(&old_view, &patch, &keys, &mut Vec::new())?
            }
            other => {
                return Err(ApiError::unsupported_media(format!(
                    "the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
                )));
            }
        };
        // A patch carrying metadata.resourceVersion is conditional on it.
        let want_rv = match kind {
            "application/json-patch+json" => meta_str(&new, "resourceVersion")
                .filter(|rv| Some(*rv) != meta_str(&old, "resourceVersion"))
                .map(str::to_string),
            _ => patch
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        if let Some(rv) = want_rv
            && Some(rv.as_str()) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &req.res.group,
                &req.res.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        Self::check_type(req, &new)?;
        if meta_str(&new, "name") != Some(name) {
            return Err(ApiError::bad_request(
                "the patch may not change metadata.name",
            ));
        }
        new = Self::to_storage(&req.res, new);
        self.finish_write(req, &old, new, sub, None)
    }

    fn apply(
        &mut self,
        req: &mut Req,
        name: &str,
        sub: &str,
        old: Option<Value>,
        body: &[u8],
        force: bool,
    ) -> ApiResult<(u16, Value)> {
        if req.manager.is_empty() || req.manager == "-" {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the apply patch is not UTF-8"))?;
        let applied: Value = serde_yaml::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        if !applied.is_object() {
            return Err(ApiError::bad_request("the apply patch must be an object"));
        }
        if applied.get("apiVersion").is_none() || applied.get("kind").is_none() {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an apply patch",
            ));
        }
        Self::check_type(req, &applied)?;
        if meta_str(&applied, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        if let Some(rv) = meta_str(&applied, "resourceVersion").filter(|s| !s.is_empty())
            && old.as_ref().and_then(|o| meta_str(o, "resourceVersion")) != Some(rv)
        {
            return Err(ApiError::conflict(
                &req.res.group,
                &req.res.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        Self::typed_patch_check(req, name, &applied)?;
        let mut applied = applied;
        {
            let m = meta_mut(&mut applied);
            m.insert("name".into(), json!(name));
            for f in [
                "resourceVersion",
                "managedFields",
                "uid",
                "creationTimestamp",
            ] {
                m.remove(f);
            }
        }
        let status_sep = req.res.version(&req.version).is_some_and(|v| v.status);
        if sub == "status" {
            // Only the status stanza is applied through /status.
            let a = applied.as_object_mut().expect("object");
            a.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
        } else if status_sep {
            applied.as_object_mut().expect("object").remove("status");
        }
        let lists = Self::list_fn(&req.res, &req.version);
        let api_version = req.res.api_version(&req.version);
        match old {
            None => {
                if sub == "status" {
                    return Err(ApiError::not_found(&req.res.group, &req.res.plural, name));
                }
                let (obj, entries) = fields::apply(
                    None,
                    &applied,
                    &req.manager,
                    &api_version,
                    "",
                    force,
                    &lists,
                    status_sep,
                )
                .map_err(|c| self.conflict_error(req, name, c))?;
                // Create with the apply entry as the only owner.
                let mut obj = obj;
                fields::write_entries(&mut obj, &entries);
                let view = self.create_applied(req, obj, entries)?;
                Ok((201, view))
            }
            Some(old) => {
                let live = Self::view(&req.res, &req.version, &old);
                let (merged, entries) = fields::apply(
                    Some(&live),
                    &applied,
                    &req.manager,
                    &api_version,
                    sub,
                    force,
                    &lists,
                    status_sep,
                )
                .map_err(|c| self.conflict_error(req, name, c))?;
                let new = Self::to_storage(&req.res, merged);
                self.finish_write(req, &old, new, sub, Some(entries))
            }
        }
    }

    /// The `OwnerReferencesPermissionEnforcement` admission plugin, when turned on
    /// ([`crate::Emulator::enforce_owner_references`]): changing an object's ownerReferences
    /// needs `delete` on the object; a new or newly blocking `blockOwnerDeletion` reference
    /// needs `update` on the owner's `finalizers`.
    fn owner_reference_admission(
        &self,
        req: &Req,
        old: Option<&Value>,
        new: &Value,
    ) -> ApiResult<()> {
        let Some(rules) = self.owner_reference_rules.as_ref().filter(|_| req.remote) else {
            return Ok(());
        };
        let refs = |v: Option<&Value>| -> Vec<Value> {
            v.and_then(|v| v.pointer("/metadata/ownerReferences"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let (before, after) = (refs(old), refs(Some(new)));
        let changing = match old {
            None => !after.is_empty(),
            Some(_) => before != after,
        };
        if !changing {
            return Ok(());
        }
        let name = meta_str(new, "name").unwrap_or("").to_string();
        let forbidden = |why: &str| {
            ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: {why}: , <nil>",
                util::qualified(&req.res.group, &req.res.plural)
            ))
        };
        if !allowed(rules, "delete", &req.res.group, &req.res.plural, &name) {
            return Err(forbidden(
                "cannot set an ownerRef on a resource you can't delete",
            ));
        }
        let blocking =
            |r: &Value| r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true);
        for r in after.iter().filter(|r| blocking(r)) {
            let was_blocking = before
                .iter()
                .any(|b| b.get("uid") == r.get("uid") && blocking(b));
            if was_blocking {
                continue;
            }
            let api_version = r.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
            let owner = r.get("name").and_then(Value::as_str).unwrap_or("");
            let resource = self
                .registry
                .find_kind(group, kind)
                .filter(|d| d.version(version).is_some())
                .map(|d| d.plural.clone());
            let ok = resource.is_some_and(|plural| {
                allowed(
                    rules,
                    "update",
                    group,
                    &format!("{plural}/finalizers"),
                    owner,
                )
            });
            if !ok {
                return Err(forbidden(
                    "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on",
                ));
            }
        }
        Ok(())
    }

    /// Server-side apply first converts the patch to its typed form; a field the schema does
    /// not declare, a value of the wrong type or a keyed-list item given twice fails there, as
    /// a plain error: HTTP 500 `failed to create typed patch object (...)`, not the 422 a POST
    /// of the same object gets.
    fn typed_patch_check(req: &Req, name: &str, applied: &Value) -> ApiResult<()> {
        let mut errors = Vec::new();
        if let Some(schema) = req
            .res
            .version(&req.version)
            .and_then(|v| v.schema.as_ref())
            .filter(|_| req.res.builtin.is_none())
        {
            let mut top = applied.clone();
            if let Some(m) = top.as_object_mut() {
                for k in ["apiVersion", "kind", "metadata"] {
                    m.remove(k);
                }
            }
            schema::typed_errors(schema, &top, "", &mut errors);
        }
        let lists = Self::list_fn(&req.res, &req.version);
        errors.extend(fields::duplicate_entries(applied, &lists));
        if errors.is_empty() {
            return Ok(());
        }
        let detail = if errors.len() == 1 {
            errors.remove(0)
        } else {
            format!("errors:\n  {}", errors.join("\n  "))
        };
        let group_version = if req.res.group.is_empty() {
            format!("/{}", req.version)
        } else {
            format!("{}/{}", req.res.group, req.version)
        };
        Err(ApiError::new(
            500,
            "",
            format!(
                "failed to create typed patch object ({}/{name}; {group_version}, Kind={}): {detail}",
                req.namespace.as_deref().unwrap_or(""),
                req.res.kind
            ),
        ))
    }

    fn create_applied(
        &mut self,
        req: &mut Req,
        obj: Value,
        entries: Vec<Entry>,
    ) -> ApiResult<Value> {
        // Reuse create's checks, then put back the apply ownership.
        let mut r = req.clone();
        r.dry_run = true;
        let created = self.create(&mut r, obj)?;
        req.warnings = r.warnings;
        let mut obj = Self::to_storage(&req.res, created);
        fields::write_entries(&mut obj, &entries);
        if req.dry_run {
            return Ok(Self::view(&req.res, &req.version, &obj));
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let key = Self::key_of(req, &name);
        let stored = self.commit(sk(&req.res), key, ChangeKind::Added, obj);
        Ok(Self::view(&req.res, &req.version, &stored))
    }

    fn conflict_error(&self, req: &Req, name: &str, c: Vec<fields::Conflict>) -> ApiError {
        let msgs: Vec<String> = c
            .iter()
            .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
            .collect();
        let mut e = ApiError::new(
            409,
            "Conflict",
            if c.len() == 1 {
                format!("Apply failed with 1 conflict: {}", msgs[0])
            } else {
                format!(
                    "Apply failed with {} conflicts: {}",
                    c.len(),
                    msgs.join("\n")
                )
            },
        );
        e.details = Some(json!({
            "name": name, "group": req.res.group, "kind": req.res.plural,
            "causes": c.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field})).collect::<Vec<_>>(),
        }));
        e
    }

    /// The common end of update, patch and apply.
    fn finish_write(
        &mut self,
        req: &mut Req,
        old: &Value,
        mut new: Value,
        sub: &str,
        entries: Option<Vec<Entry>>,
    ) -> ApiResult<(u16, Value)> {
        let status_sep = req.res.version(&req.version).is_some_and(|v| v.status);
        if sub == "status" {
            // Only status changes through /status (and metadata is the server's).
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
        } else if status_sep {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
        }
        // managedFields sent with an update or patch of the main resource replace the server's
        // record (an empty list keeps it): how clients repair ownership (client-go csaupgrade).
        let sent_owners = new
            .pointer("/metadata/managedFields")
            .filter(|m| m.as_array().is_some_and(|a| !a.is_empty()))
            .filter(|m| Some(*m) != old.pointer("/metadata/managedFields"))
            .filter(|_| sub.is_empty() && entries.is_none())
            .map(|m| json!({"metadata": {"managedFields": m}}));
        // Server-owned metadata.
        {
            let om = old.get("metadata").cloned().unwrap_or_default();
            let m = meta_mut(&mut new);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
                "managedFields",
            ] {
                match om.get(f) {
                    Some(v) => {
                        m.insert(f.into(), v.clone());
                    }
                    None => {
                        m.remove(f);
                    }
                }
            }
            m.remove("resourceVersion");
            m.remove("selfLink");
            if let Some(rv) = om.get("resourceVersion") {
                m.insert("resourceVersion".into(), rv.clone());
            }
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let before = util::finalizers(old);
            let added: Vec<String> = util::finalizers(&new)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &req.res.kind,
                    &req.res.group,
                    meta_str(old, "name").unwrap_or(""),
                    vec![Cause::new(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        format!(
                            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                        ),
                    )],
                ));
            }
        }
        self.prepare(req, Some(old), &mut new)?;
        self.owner_reference_admission(req, Some(old), &new)?;
        self.validate(req, Some(old), &mut new, sub)?;
        if req.res.has_generation && util::spec_part(old) != util::spec_part(&new) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        let api_version = req.res.api_version(&req.version);
        let entries = match entries {
            Some(e) => e,
            None => {
                let lists = Self::list_fn(&req.res, &req.version);
                let (inc, only) = if sub == "status" {
                    (false, true)
                } else {
                    (!status_sep, false)
                };
                let ov = Self::view(&req.res, &req.version, old);
                let nv = Self::view(&req.res, &req.version, &new);
                let old_set = fields::field_set(&ov, &lists, inc, only);
                let new_set = fields::field_set(&nv, &lists, inc, only);
                let mut entries = fields::read_entries(sent_owners.as_ref().unwrap_or(old));
                fields::record_update(
                    &mut entries,
                    &old_set,
                    &new_set,
                    &ov,
                    &nv,
                    &req.manager,
                    &api_version,
                    sub,
                );
                entries
            }
        };
        fields::write_entries(&mut new, &entries);
        let name = meta_str(old, "name").unwrap_or_default().to_string();
        if new == *old {
            // A no-op: nothing stored, no resourceVersion, no watch event.
            return Ok((200, Self::view(&req.res, &req.version, old)));
        }
        if req.dry_run {
            return Ok((200, Self::view(&req.res, &req.version, &new)));
        }
        let key = Self::key_of(req, &name);
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        if deleting && util::finalizers(&new).is_empty() && !Self::blocked_by_spec_finalizers(&new)
        {
            let stored = self.commit(sk(&req.res), key, ChangeKind::Deleted, new);
            return Ok((200, Self::view(&req.res, &req.version, &stored)));
        }
        let stored = self.commit(sk(&req.res), key, ChangeKind::Modified, new);
        Ok((200, Self::view(&req.res, &req.version, &stored)))
    }

    fn blocked_by_spec_finalizers(obj: &Value) -> bool {
        obj.get("kind").and_then(Value::as_str) == Some("Namespace")
            && obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
    }

    /// DELETE one object.
    pub fn delete(&mut self, req: &mut Req, name: &str, opts: &Value) -> ApiResult<(u16, Value)> {
        let key = Self::key_of(req, name);
        let old = self
            .stored(&req.res, &key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&req.res.group, &req.res.plural, name))?;
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
            && Some(uid) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &req.res.group,
                &req.res.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &req.res.group,
                &req.res.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion").unwrap_or("")
                ),
            ));
        }
        let policy = match opts.get("propagationPolicy").and_then(Value::as_str) {
            Some(p @ ("Orphan" | "Background" | "Foreground")) => p.to_string(),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                )));
            }
            None if opts.get("orphanDependents").and_then(Value::as_bool) == Some(true) => {
                "Orphan".into()
            }
            None => "Background".into(),
        };
        let mut obj = old.clone();
        let mut fins = util::finalizers(&obj);
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        if !deleting {
            match policy.as_str() {
                "Foreground" if !fins.iter().any(|f| f == "foregroundDeletion") => {
                    fins.push("foregroundDeletion".into())
                }
                "Orphan" if !fins.iter().any(|f| f == "orphan") => fins.push("orphan".into()),
                _ => {}
            }
        }
        if req.res.builtin == Some(Builtin::Namespace) && !deleting {
            obj["status"]["phase"] = json!("Terminating");
        }
        if !fins.is_empty() || Self::blocked_by_spec_finalizers(&obj) {
            if deleting && fins == util::finalizers(&old) {
                return Ok((202, Self::view(&req.res, &req.version, &old)));
            }
            util::set_finalizers(&mut obj, &fins);
            if !deleting {
                let m = meta_mut(&mut obj);
                m.insert("deletionTimestamp".into(), json!(util::now_time()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                if req.res.has_generation {
                    let g = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
                    m.insert("generation".into(), json!(g + 1));
                }
            }
            if req.dry_run {
                return Ok((202, Self::view(&req.res, &req.version, &obj)));
            }
            let stored = self.commit(sk(&req.res), key, ChangeKind::Modified, obj);
            return Ok((202, Self::view(&req.res, &req.version, &stored)));
        }
        let details = json!({"name": name, "group": req.res.group, "kind": req.res.plural, "uid": meta_str(&old, "uid")});
        if !req.dry_run {
            self.commit(sk(&req.res), key, ChangeKind::Deleted, obj);
        }
        Ok((200, util::success_status(details)))
    }

    // ---------------------------------------------------------------- kind rules

    /// Defaults and server-set fields of the built-ins.
    fn prepare(&mut self, req: &Req, old: Option<&Value>, obj: &mut Value) -> ApiResult<()> {
        let name = meta_str(obj, "name").unwrap_or("").to_string();
        match req.res.builtin {
            Some(Builtin::Namespace) => {
                if old.is_none() {
                    if obj.pointer("/spec/finalizers").is_none() {
                        obj["spec"] = json!({"finalizers": ["kubernetes"]});
                    }
                    obj["status"] = json!({"phase": "Active"});
                }
                let m = meta_mut(obj);
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                labels["kubernetes.io/metadata.name"] = json!(name);
            }
            Some(Builtin::Secret) => {
                if let Some(sd) = obj
                    .as_object_mut()
                    .and_then(|o| o.remove("stringData"))
                    .and_then(|v| v.as_object().cloned())
                {
                    let data = obj
                        .as_object_mut()
                        .expect("object")
                        .entry("data")
                        .or_insert_with(|| json!({}));
                    for (k, v) in sd {
                        let s = v.as_str().unwrap_or_default();
                        data[k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
                    }
                }
                if obj.get("type").is_none() {
                    obj["type"] = json!("Opaque");
                }
            }
            Some(Builtin::Service) => self.prepare_service(old, obj)?,
            Some(Builtin::Deployment) => default_deployment(obj),
            // Not scheduled anywhere: Pending until a kubelet reports it running.
            Some(Builtin::Pod) if old.is_none() => {
                obj["status"] = json!({"phase": "Pending"});
            }
            Some(Builtin::Crd) => {
                if old.is_none() {
                    let mut f = util::finalizers(obj);
                    if !f.iter().any(|x| x == CRD_FINALIZER) {
                        f.push(CRD_FINALIZER.into());
                    }
                    util::set_finalizers(obj, &f);
                }
                let names = obj.pointer("/spec/names").cloned().unwrap_or_default();
                let storage: Vec<Value> = obj
                    .pointer("/spec/versions")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                            .filter_map(|v| v.get("name").cloned())
                            .collect()
                    })
                    .unwrap_or_default();
                let now = util::now_time();
                let keep_time = |t: &str| -> String {
                    old.and_then(|o| o.pointer("/status/conditions"))
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find(|c| c["type"] == t))
                        .and_then(|c| c.get("lastTransitionTime"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| now.clone())
                };
                let terminating = obj.pointer("/metadata/deletionTimestamp").is_some();
                let mut conds = vec![
                    json!({"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": keep_time("NamesAccepted")}),
                    json!({"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": keep_time("Established")}),
                ];
                if terminating {
                    conds.push(json!({"type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress", "message": "CustomResource deletion is in progress", "lastTransitionTime": keep_time("Terminating")}));
                }
                let mut stored_versions: Vec<Value> = old
                    .and_then(|o| o.pointer("/status/storedVersions"))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for s in storage {
                    if !stored_versions.contains(&s) {
                        stored_versions.push(s);
                    }
                }
                obj["status"] = json!({"acceptedNames": names, "conditions": conds, "storedVersions": stored_versions});
            }
            _ => {}
        }
        Ok(())
    }

    fn prepare_service(&mut self, old: Option<&Value>, obj: &mut Value) -> ApiResult<()> {
        if !obj.get("spec").is_some_and(Value::is_object) {
            obj["spec"] = json!({});
        }
        let spec = obj["spec"].as_object_mut().expect("spec");
        let ty = spec
            .entry("type")
            .or_insert_with(|| json!("ClusterIP"))
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        spec.entry("sessionAffinity").or_insert(json!("None"));
        spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
        spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
        spec.entry("internalTrafficPolicy")
            .or_insert(json!("Cluster"));
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .map(str::to_string);
        match (spec.get("clusterIP").and_then(Value::as_str), &old_ip) {
            (None | Some(""), Some(ip)) => {
                spec.insert("clusterIP".into(), json!(ip));
            }
            (Some(new), Some(ip)) if new != ip => {
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    meta_str(old.expect("old"), "name").unwrap_or(""),
                    vec![Cause::new(
                        "FieldValueInvalid",
                        "spec.clusterIPs[0]",
                        format!(
                            "spec.clusterIPs[0]: Invalid value: []string{{\"{new}\"}}: may not change once set"
                        ),
                    )],
                ));
            }
            (None | Some(""), None) => {
                let ip = format!("10.96.{}.{}", self.next_ip / 250, self.next_ip % 250 + 1);
                self.next_ip += 1;
                spec.insert("clusterIP".into(), json!(ip));
            }
            _ => {}
        }
        let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
        spec.insert("clusterIPs".into(), json!([ip]));
        let old_ports = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                let Some(pm) = p.as_object_mut() else {
                    continue;
                };
                pm.entry("protocol").or_insert(json!("TCP"));
                if let Some(port) = pm.get("port").cloned() {
                    pm.entry("targetPort").or_insert(port);
                }
                if (ty == "NodePort" || ty == "LoadBalancer") && !pm.contains_key("nodePort") {
                    let prev = old_ports
                        .iter()
                        .find(|o| o.get("port") == pm.get("port"))
                        .and_then(|o| o.get("nodePort"))
                        .cloned();
                    let np = prev.unwrap_or_else(|| {
                        self.next_node_port += 1;
                        json!(self.next_node_port)
                    });
                    pm.insert("nodePort".into(), np);
                }
            }
        }
        if obj.get("status").is_none() {
            obj["status"] = json!({"loadBalancer": {}});
        }
        Ok(())
    }

    /// Validation: the CRD schema (custom resources) or the built-in rules we know.
    fn validate(
        &mut self,
        req: &mut Req,
        old: Option<&Value>,
        obj: &mut Value,
        sub: &str,
    ) -> ApiResult<()> {
        let name = meta_str(obj, "name").unwrap_or("").to_string();
        let mut causes = Vec::new();
        let name_ok = match req.res.builtin {
            Some(Builtin::Namespace) => util::is_dns_label(&name),
            Some(Builtin::Service) => util::is_dns1035_label(&name),
            Some(Builtin::Event) | Some(Builtin::EventV1) => !name.is_empty(),
            _ => util::is_dns_subdomain(&name),
        };
        if !name_ok {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "metadata.name",
                format!("metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", if matches!(req.res.builtin, Some(Builtin::Namespace) | Some(Builtin::Service)) { "label" } else { "subdomain" }),
            ));
        }
        validate_labels(obj, &mut causes);
        match req.res.builtin {
            None => {
                let res = req.res.clone();
                let vdef = res.version(&req.version);
                if let Some(schema) = vdef.and_then(|v| v.schema.as_ref()) {
                    let mut unknown = Vec::new();
                    let mut top = obj.clone();
                    if let Some(m) = top.as_object_mut() {
                        m.remove("metadata");
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    schema::prune(schema, &mut top, "", &mut unknown);
                    if !unknown.is_empty() {
                        match req.validation {
                            FieldValidation::Strict => {
                                return Err(ApiError::bad_request(format!(
                                    "{}.{} \"{name}\" is invalid: strict decoding error: {}",
                                    req.res.kind,
                                    req.res.group,
                                    unknown
                                        .iter()
                                        .map(|u| format!("unknown field \"{u}\""))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )));
                            }
                            FieldValidation::Warn => req
                                .warnings
                                .extend(unknown.iter().map(|u| format!("unknown field \"{u}\""))),
                            FieldValidation::Ignore => {}
                        }
                    }
                    schema::apply_defaults(schema, &mut top);
                    schema::validate(schema, &top, "", &mut causes);
                    // Only the part the request may change is judged by CEL transition rules.
                    let old_top = old.map(|o| {
                        let mut t = o.clone();
                        if let Some(m) = t.as_object_mut() {
                            m.remove("metadata");
                        }
                        t
                    });
                    // The CEL rules run alongside the other errors, unless a value has the
                    // wrong type or is outside its enum (`hasBlockingErr` in the API server).
                    let blocked = causes.iter().any(|c| {
                        matches!(c.reason, "FieldValueTypeInvalid" | "FieldValueNotSupported")
                            || c.message.contains("in body must be of type")
                    });
                    if blocked {
                        causes.push(Cause::new(
                            "FieldValueInvalid",
                            "<nil>",
                            "<nil>: Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
                        ));
                    } else {
                        let mut with_meta = top.clone();
                        with_meta["metadata"] = obj.get("metadata").cloned().unwrap_or_default();
                        causes.extend(match vdef.and_then(|v| v.cel.as_deref()) {
                            Some(cel) => {
                                schema::validate_cel_compiled(cel, &with_meta, old_top.as_ref())
                            }
                            None => schema::validate_cel(schema, &with_meta, old_top.as_ref()),
                        });
                    }
                    let meta = obj.get("metadata").cloned();
                    let (av, kind) = (obj.get("apiVersion").cloned(), obj.get("kind").cloned());
                    *obj = top;
                    if let Some(m) = obj.as_object_mut() {
                        if let Some(av) = av {
                            m.insert("apiVersion".into(), av);
                        }
                        if let Some(k) = kind {
                            m.insert("kind".into(), k);
                        }
                        if let Some(meta) = meta {
                            m.insert("metadata".into(), meta);
                        }
                    }
                }
                let _ = sub;
            }
            Some(Builtin::Deployment) => validate_deployment(old, obj, &mut causes),
            Some(Builtin::Service) => {
                let headless =
                    obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
                if !headless
                    && obj
                        .pointer("/spec/ports")
                        .and_then(Value::as_array)
                        .is_none_or(|p| p.is_empty())
                {
                    causes.push(Cause::new(
                        "FieldValueRequired",
                        "spec.ports",
                        "spec.ports: Required value",
                    ));
                }
            }
            Some(Builtin::Secret) => {
                if let Some(data) = obj.get("data").and_then(Value::as_object) {
                    for (k, v) in data {
                        let ok = v.as_str().is_some_and(|s| {
                            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                        });
                        if !ok {
                            return Err(ApiError::bad_request(format!(
                                "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{k:?}]"
                            )));
                        }
                    }
                }
                // As ValidateSecret: a kubernetes.io/tls Secret must carry both keys.
                if obj.get("type").and_then(Value::as_str) == Some("kubernetes.io/tls") {
                    for key in ["tls.crt", "tls.key"] {
                        if obj.pointer("/data").and_then(|d| d.get(key)).is_none() {
                            causes.push(Cause::new(
                                "FieldValueRequired",
                                format!("data[{key}]"),
                                format!("data[{key}]: Required value"),
                            ));
                        }
                    }
                }
                if let Some(o) = old
                    && o.get("type") != obj.get("type")
                {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        "type",
                        format!("type: Invalid value: {}: field is immutable", obj["type"]),
                    ));
                }
                immutable_data(old, obj, &mut causes);
            }
            Some(Builtin::ConfigMap) => immutable_data(old, obj, &mut causes),
            Some(Builtin::Crd) => validate_crd(self, old, obj, &mut causes),
            Some(Builtin::Ingress) => validate_ingress(obj, &mut causes),
            _ => {}
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(
                &req.res.kind,
                &req.res.group,
                &name,
                causes,
            ))
        }
    }

    // ---------------------------------------------------------------- scale

    /// The Scale view of an object.
    pub fn scale_of(req: &Req, obj: &Value) -> ApiResult<Value> {
        let scale = req
            .res
            .version(&req.version)
            .and_then(|v| v.scale.clone())
            .ok_or_else(|| {
                ApiError::not_served(
                    "the server could not find the requested resource (no scale subresource)",
                )
            })?;
        let get = |p: &str| crate::jsonpath::eval(p, obj).and_then(|v| v.into_iter().next());
        let selector = match &scale.label_selector {
            Some(p) => get(p).and_then(|v| v.as_str().map(str::to_string)),
            None => obj
                .pointer("/spec/selector/matchLabels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                }),
        };
        let mut status =
            json!({"replicas": get(&scale.status_replicas).and_then(|v| v.as_i64()).unwrap_or(0)});
        if let Some(s) = selector {
            status["selector"] = json!(s);
        }
        let mut spec = json!({});
        if let Some(r) = get(&scale.spec_replicas) {
            spec["replicas"] = r;
        }
        let m = obj.get("metadata").cloned().unwrap_or_default();
        Ok(json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"), "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp")},
            "spec": spec, "status": status,
        }))
    }

    /// Writes `spec.replicas` through the scale subresource.
    pub fn set_scale(
        &mut self,
        req: &mut Req,
        name: &str,
        scale: &Value,
    ) -> ApiResult<(u16, Value)> {
        let key = Self::key_of(req, name);
        let old = self
            .stored(&req.res, &key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&req.res.group, &req.res.plural, name))?;
        if let Some(rv) = meta_str(scale, "resourceVersion").filter(|s| !s.is_empty())
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &req.res.group,
                &req.res.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                ApiError::invalid(
                    "Scale",
                    "autoscaling",
                    name,
                    vec![Cause::new(
                        "FieldValueRequired",
                        "spec.replicas",
                        "spec.replicas: Required value",
                    )],
                )
            })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                vec![Cause::new(
                    "FieldValueInvalid",
                    "spec.replicas",
                    format!(
                        "spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
                    ),
                )],
            ));
        }
        let sd = req
            .res
            .version(&req.version)
            .and_then(|v| v.scale.clone())
            .expect("scale");
        let mut new = Self::view(&req.res, &req.version, &old);
        let path: Vec<&str> = sd
            .spec_replicas
            .trim_start_matches('.')
            .split('.')
            .collect();
        let mut cur = &mut new;
        for p in &path[..path.len() - 1] {
            if !cur.get(*p).is_some_and(Value::is_object) {
                cur[*p] = json!({});
            }
            cur = cur.get_mut(*p).expect("object");
        }
        cur[path[path.len() - 1]] = json!(replicas);
        let new = Self::to_storage(&req.res, new);
        let (code, obj) = self.finish_write(req, &old, new, "", None)?;
        Ok((code, Self::scale_of(req, &obj)?))
    }
}

/// The finalizer that deletes a CRD's objects before the CRD goes.
pub const CRD_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn validate_labels(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            let key_ok = {
                let (prefix, name) = match k.rsplit_once('/') {
                    Some((p, n)) => (Some(p), n),
                    None => (None, k.as_str()),
                };
                prefix.is_none_or(util::is_dns_subdomain)
                    && !name.is_empty()
                    && name.len() <= 63
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && name.ends_with(|c: char| c.is_ascii_alphanumeric())
            };
            let s = v.as_str().unwrap_or("");
            let val_ok = v.is_string()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && (s.is_empty()
                    || (s.starts_with(|c: char| c.is_ascii_alphanumeric())
                        && s.ends_with(|c: char| c.is_ascii_alphanumeric())));
            if !key_ok {
                causes.push(Cause::new("FieldValueInvalid", "metadata.labels", format!("metadata.labels: Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'")));
            }
            if !val_ok {
                causes.push(Cause::new("FieldValueInvalid", "metadata.labels", format!("metadata.labels: Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
            }
        }
    }
}

fn immutable_data(old: Option<&Value>, obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(o) = old
        && o.get("immutable").and_then(Value::as_bool) == Some(true)
    {
        for f in ["data", "binaryData", "immutable"] {
            if o.get(f) != obj.get(f) {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    f,
                    format!("{f}: Forbidden: field is immutable when `immutable` is set"),
                ));
            }
        }
    }
}

fn default_deployment(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        return;
    }
    let spec = obj["spec"].as_object_mut().expect("spec");
    spec.entry("replicas").or_insert(json!(1));
    spec.entry("revisionHistoryLimit").or_insert(json!(10));
    spec.entry("progressDeadlineSeconds").or_insert(json!(600));
    let strategy = spec
        .entry("strategy")
        .or_insert_with(|| json!({"type": "RollingUpdate"}));
    if strategy.get("type").is_none() {
        strategy["type"] = json!("RollingUpdate");
    }
    if strategy["type"] == "RollingUpdate" {
        if !strategy.get("rollingUpdate").is_some_and(Value::is_object) {
            strategy["rollingUpdate"] = json!({});
        }
        let ru = strategy["rollingUpdate"].as_object_mut().expect("ru");
        ru.entry("maxUnavailable").or_insert(json!("25%"));
        ru.entry("maxSurge").or_insert(json!("25%"));
    }
    let Some(pod) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("spec"))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    pod.entry("restartPolicy").or_insert(json!("Always"));
    pod.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    pod.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    pod.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    pod.entry("securityContext").or_insert(json!({}));
    if let Some(vols) = pod.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols {
            for src in ["configMap", "secret"] {
                if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
                    s.entry("defaultMode").or_insert(json!(420));
                }
            }
        }
    }
    for list in ["containers", "initContainers"] {
        if let Some(cs) = pod.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                let Some(c) = c.as_object_mut() else { continue };
                c.entry("terminationMessagePath")
                    .or_insert(json!("/dev/termination-log"));
                c.entry("terminationMessagePolicy").or_insert(json!("File"));
                let image = c
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let latest = !image.rsplit('/').next().unwrap_or("").contains(':')
                    || image.ends_with(":latest");
                c.entry("imagePullPolicy").or_insert(json!(if latest {
                    "Always"
                } else {
                    "IfNotPresent"
                }));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if let Some(p) = p.as_object_mut() {
                            p.entry("protocol").or_insert(json!("TCP"));
                        }
                    }
                }
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
                        p.entry("timeoutSeconds").or_insert(json!(1));
                        p.entry("periodSeconds").or_insert(json!(10));
                        p.entry("successThreshold").or_insert(json!(1));
                        p.entry("failureThreshold").or_insert(json!(3));
                        if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                            h.entry("scheme").or_insert(json!("HTTP"));
                        }
                    }
                }
            }
        }
    }
}

fn validate_deployment(old: Option<&Value>, obj: &Value, causes: &mut Vec<Cause>) {
    let sel = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object);
    match sel {
        None => causes.push(Cause::new(
            "FieldValueRequired",
            "spec.selector",
            "spec.selector: Required value",
        )),
        Some(sel) => {
            let labels = obj
                .pointer("/spec/template/metadata/labels")
                .and_then(Value::as_object);
            let ok = labels.is_some_and(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v)));
            if !ok {
                causes.push(Cause::new("FieldValueInvalid", "spec.template.metadata.labels", format!("spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`", labels.map(|l| Value::Object(l.clone())).unwrap_or_default())));
            }
        }
    }
    if let Some(o) = old
        && o.pointer("/spec/selector") != obj.pointer("/spec/selector")
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.selector",
            format!(
                "spec.selector: Invalid value: {}: field is immutable",
                obj.pointer("/spec/selector").cloned().unwrap_or_default()
            ),
        ));
    }
    let containers = obj
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::new(
            "FieldValueRequired",
            "spec.template.spec.containers",
            "spec.template.spec.containers: Required value",
        )),
        Some(cs) => {
            for (i, c) in cs.iter().enumerate() {
                for f in ["name", "image"] {
                    if c.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                        let p = format!("spec.template.spec.containers[{i}].{f}");
                        causes.push(Cause::new(
                            "FieldValueRequired",
                            p.clone(),
                            format!("{p}: Required value"),
                        ));
                    }
                }
            }
        }
    }
    if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64)
        && r < 0
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.replicas",
            format!("spec.replicas: Invalid value: {r}: must be greater than or equal to 0"),
        ));
    }
}

/// The part of ValidateIngress that generated Ingresses can get wrong: every path needs a
/// valid pathType, an absolute path for Exact and Prefix, and a backend service port.
fn validate_ingress(obj: &Value, causes: &mut Vec<Cause>) {
    let rules = obj.pointer("/spec/rules").and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let paths = rule.pointer("/http/paths").and_then(Value::as_array);
        for (j, p) in paths.into_iter().flatten().enumerate() {
            let base = format!("spec.rules[{i}].http.paths[{j}]");
            let kind = p.get("pathType").and_then(Value::as_str);
            match kind {
                None => causes.push(Cause::new(
                    "FieldValueRequired",
                    format!("{base}.pathType"),
                    format!("{base}.pathType: Required value: pathType must be specified"),
                )),
                Some("Exact") | Some("Prefix") | Some("ImplementationSpecific") => {}
                Some(other) => causes.push(Cause::new(
                    "FieldValueNotSupported",
                    format!("{base}.pathType"),
                    format!("{base}.pathType: Unsupported value: {other:?}: supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\""),
                )),
            }
            let path = p.get("path").and_then(Value::as_str).unwrap_or_default();
            if matches!(kind, Some("Exact") | Some("Prefix")) && !path.starts_with('/') {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    format!("{base}.path"),
                    format!("{base}.path: Invalid value: {path:?}: must be an absolute path"),
                ));
            }
            let svc = p.pointer("/backend/service");
            let port = svc.and_then(|s| s.get("port"));
            if svc.is_some()
                && port.is_none_or(|p| p.get("name").is_none() && p.get("number").is_none())
            {
                causes.push(Cause::new(
                    "FieldValueRequired",
                    format!("{base}.backend.service.port"),
                    format!("{base}.backend.service.port: Required value: port name or number is required"),
                ));
            }
        }
    }
}

fn validate_crd(st: &State, old: Option<&Value>, obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or_default();
    let group = spec.get("group").and_then(Value::as_str).unwrap_or("");
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = meta_str(obj, "name").unwrap_or("");
    if group.is_empty() || !group.contains('.') {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.group",
            format!(
                "spec.group: Invalid value: {group:?}: should be a domain with at least one dot"
            ),
        ));
    }
    if name != format!("{plural}.{group}") {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!(
                "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
            ),
        ));
    }
    if spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.names.kind",
            "spec.names.kind: Required value",
        ));
    }
    match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced" | "Cluster") => {}
        other => causes.push(Cause::new("FieldValueNotSupported", "spec.scope", format!("spec.scope: Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""))),
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.versions",
            "spec.versions: Required value",
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if storage != 1 {
        causes.push(Cause::new("FieldValueInvalid", "spec.versions", format!("spec.versions: Invalid value: {}: must have exactly one version marked as storage version", storage)));
    }
    for (i, v) in versions.iter().enumerate() {
        let s = v.pointer("/schema/openAPIV3Schema");
        match s {
            None => causes.push(Cause::new("FieldValueRequired", format!("spec.versions[{i}].schema.openAPIV3Schema"), format!("spec.versions[{i}].schema.openAPIV3Schema: Required value: schemas are required"))),
            Some(s) => {
                if s.get("type").and_then(Value::as_str) != Some("object") {
                    causes.push(Cause::new("FieldValueRequired", format!("spec.versions[{i}].schema.openAPIV3Schema.type"), format!("spec.versions[{i}].schema.openAPIV3Schema.type: Required value: must not be empty at the root")));
                }
                for c in v.get("additionalPrinterColumns").and_then(Value::as_array).into_iter().flatten() {
                    let p = c.get("jsonPath").and_then(Value::as_str).unwrap_or("");
                    if !crate::jsonpath::is_supported(p) {
                        causes.push(Cause::new("FieldValueInvalid", format!("spec.versions[{i}].additionalPrinterColumns"), format!("spec.versions[{i}].additionalPrinterColumns[].jsonPath: Invalid value: {p:?}: the emulator supports .a.b, [n], [*] and [?(@.x==\"y\")] paths only")));
                    }
                }
            }
        }
    }
    if let Some(o) = old {
        if o.pointer("/spec/scope") != obj.pointer("/spec/scope") {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "spec.scope",
                "spec.scope: Invalid value: field is immutable",
            ));
        }
        if o.pointer("/spec/group") != obj.pointer("/spec/group") {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "spec.group",
                "spec.group: Invalid value: field is immutable",
            ));
        }
    } else if st
        .registry
        .resources
        .iter()
        .any(|r| r.group == group && r.plural == plural)
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.names.plural",
            format!(
                "spec.names.plural: Invalid value: {plural:?}: {plural}.{group} is already served"
            ),
        ));
    }
}

// ---------------------------------------------------------------- Event conversion

const EVENT_RENAMES: [(&str, &str); 8] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("series", "series"),
];

fn event_to_v1(core: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(m) = core.as_object() {
        for (k, v) in m {
            let nk = EVENT_RENAMES
                .iter()
                .find(|(c, _)| c == k)
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|| k.clone());
            out.insert(nk, v.clone());
        }
    }
    Value::Object(out)
}

fn event_from_v1(v1: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(m) = v1.as_object() {
        for (k, v) in m {
            let nk = EVENT_RENAMES
                .iter()
                .find(|(_, n)| n == k)
                .map(|(c, _)| c.to_string())
                .unwrap_or_else(|| k.clone());
            out.insert(nk, v.clone());
        }
    }
    Value::Object(out)
}

/// Whether RBAC `rules` allow `verb` on `resource` (`plural` or `plural/subresource`) of
/// `group`, object `name`.
fn allowed(rules: &[Value], verb: &str, group: &str, resource: &str, name: &str) -> bool {
    let strs = |r: &Value, k: &str| registry::strs(r.get(k));
    let (plural, sub) = resource.split_once('/').unwrap_or((resource, ""));
    rules.iter().any(|r| {
        let groups = strs(r, "apiGroups");
        let resources = strs(r, "resources");
        let verbs = strs(r, "verbs");
        let names = strs(r, "resourceNames");
        let resource_ok = resources.iter().any(|x| {
            x == "*"
                || x == resource
                || (!sub.is_empty() && (x == &format!("*/{sub}") || x == &format!("{plural}/*")))
        });
        groups.iter().any(|g| g == "*" || g == group)
            && resource_ok
            && verbs.iter().any(|v| v == "*" || v == verb)
            && (names.is_empty() || names.iter().any(|n| n == name))
    })
}
