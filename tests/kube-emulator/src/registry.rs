//! What the emulator serves: the built-in kinds it knows, plus every established
//! CustomResourceDefinition, and the discovery documents describing them.

use std::sync::Arc;

use serde_json::{Value, json};

/// Kinds with behaviour of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// v1 Namespace.
    Namespace,
    /// v1 Secret.
    Secret,
    /// v1 ConfigMap.
    ConfigMap,
    /// v1 Service.
    Service,
    /// v1 Event.
    Event,
    /// events.k8s.io/v1 Event (a view of the v1 Events).
    EventV1,
    /// apps/v1 Deployment.
    Deployment,
    /// v1 Pod (created by the Deployment controller, made ready by a kubelet).
    Pod,
    /// policy/v1 PodDisruptionBudget.
    Pdb,
    /// coordination.k8s.io/v1 Lease.
    Lease,
    /// apiextensions.k8s.io/v1 CustomResourceDefinition.
    Crd,
    /// networking.k8s.io/v1 Ingress (stored and validated; no controller).
    Ingress,
    /// networking.k8s.io/v1 IngressClass (cluster-scoped).
    IngressClass,
    /// networking.k8s.io/v1 NetworkPolicy (stored and validated; nothing enforces it).
    NetworkPolicy,
    /// autoscaling/v2 HorizontalPodAutoscaler (stored; no controller: a test plays the HPA).
    Hpa,
}

/// The scale subresource's paths.
#[derive(Clone, Debug)]
pub struct ScaleDef {
    /// `.spec.replicas`.
    pub spec_replicas: String,
    /// `.status.replicas`.
    pub status_replicas: String,
    /// `.status.selector` (optional).
    pub label_selector: Option<String>,
}

/// One printer column.
#[derive(Clone, Debug)]
pub struct Column {
    /// Header.
    pub name: String,
    /// `string`, `integer`, `date`, ...
    pub type_: String,
    /// JSONPath (custom resources) or a built-in extractor name.
    pub json_path: String,
    /// Shown only with `-o wide` when > 0.
    pub priority: i64,
    /// Description.
    pub description: String,
}

/// One served version.
#[derive(Clone, Debug)]
pub struct VersionDef {
    /// `v1`, `v1alpha1`.
    pub name: String,
    /// openAPIV3Schema (custom resources).
    pub schema: Option<Value>,
    /// Its CEL rules, compiled once when the CRD is read (not on every write).
    pub cel: Option<Arc<kube::core::cel::CompiledSchema>>,
    /// status subresource.
    pub status: bool,
    /// scale subresource.
    pub scale: Option<ScaleDef>,
    /// additionalPrinterColumns (custom resources).
    pub columns: Vec<Column>,
    /// selectableFields (custom resources).
    pub selectable_fields: Vec<String>,
    /// deprecationWarning.
    pub warning: Option<String>,
}

/// One resource (all its versions).
#[derive(Clone, Debug)]
pub struct ResourceDef {
    /// API group ("" = core).
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Plural (the URL segment).
    pub plural: String,
    /// Singular.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories (`all`, ...).
    pub categories: Vec<String>,
    /// Served versions, preferred first.
    pub versions: Vec<VersionDef>,
    /// The version objects are stored in.
    pub storage_version: String,
    /// Whether `metadata.generation` is maintained.
    pub has_generation: bool,
    /// Built-in behaviour (None: a custom resource).
    pub builtin: Option<Builtin>,
    /// Name of the CRD defining it.
    pub crd: Option<String>,
    /// Where objects are stored (events.k8s.io Events live with v1 Events).
    pub storage: (String, String),
}

impl ResourceDef {
    /// A served version.
    pub fn version(&self, v: &str) -> Option<&VersionDef> {
        self.versions.iter().find(|x| x.name == v)
    }
    /// `group/version` or `version`.
    pub fn api_version(&self, v: &str) -> String {
        if self.group.is_empty() {
            v.to_string()
        } else {
            format!("{}/{v}", self.group)
        }
    }
    /// Field labels usable in field selectors.
    pub fn field_labels(&self, version: &str) -> Vec<String> {
        let mut f = vec![
            "metadata.name".to_string(),
            "metadata.namespace".to_string(),
        ];
        match self.builtin {
            Some(Builtin::Secret) => f.push("type".into()),
            Some(Builtin::Namespace) => f.push("status.phase".into()),
            Some(Builtin::Event) => f.extend(
                [
                    "involvedObject.kind",
                    "involvedObject.namespace",
                    "involvedObject.name",
                    "involvedObject.uid",
                    "involvedObject.apiVersion",
                    "involvedObject.resourceVersion",
                    "involvedObject.fieldPath",
                    "reason",
                    "reportingComponent",
                    "source",
                    "type",
                ]
                .map(String::from),
            ),
            Some(Builtin::EventV1) => f.extend(
                [
                    "regarding.kind",
                    "regarding.namespace",
                    "regarding.name",
                    "regarding.uid",
                    "regarding.apiVersion",
                    "reason",
                    "reportingController",
                    "type",
                ]
                .map(String::from),
            ),
            _ => {}
        }
        if let Some(v) = self.version(version) {
            f.extend(
                v.selectable_fields
                    .iter()
                    .map(|s| s.trim_start_matches('.').to_string()),
            );
        }
        f
    }
    /// Verbs for discovery.
    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    b: Builtin,
) -> ResourceDef {
    let (status, scale, generation, categories): (bool, Option<ScaleDef>, bool, &[&str]) = match b {
        Builtin::Deployment => (
            true,
            Some(ScaleDef {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: None,
            }),
            true,
            &["all"],
        ),
        Builtin::Service => (true, None, false, &["all"]),
        Builtin::Pod => (true, None, false, &["all"]),
        Builtin::Pdb => (true, None, true, &[]),
        Builtin::Namespace => (true, None, false, &[]),
        Builtin::Crd => (true, None, true, &["api-extensions"]),
        Builtin::Ingress => (true, None, true, &[]),
        Builtin::IngressClass | Builtin::NetworkPolicy => (false, None, true, &[]),
        Builtin::Hpa => (true, None, true, &["all"]),
        _ => (false, None, false, &[]),
    };
    ResourceDef {
        group: group.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        versions: vec![VersionDef {
            name: version.into(),
            schema: None,
            cel: None,
            status,
            scale,
            columns: Vec::new(),
            selectable_fields: Vec::new(),
            warning: None,
        }],
        storage_version: version.into(),
        has_generation: generation,
        builtin: Some(b),
        crd: None,
        storage: if b == Builtin::EventV1 {
            (String::new(), "events".into())
        } else {
            (group.into(), plural.into())
        },
    }
}

/// The built-in kinds.
pub fn builtins() -> Vec<ResourceDef> {
    use Builtin::*;
    vec![
        builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            false,
            &["ns"],
            Namespace,
        ),
        builtin("", "v1", "Secret", "secrets", true, &[], Secret),
        builtin(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            true,
            &["cm"],
            ConfigMap,
        ),
        builtin("", "v1", "Service", "services", true, &["svc"], Service),
        builtin("", "v1", "Event", "events", true, &["ev"], Event),
        builtin("", "v1", "Pod", "pods", true, &["po"], Pod),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            &["deploy"],
            Deployment,
        ),
        builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            &["pdb"],
            Pdb,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            &[],
            Lease,
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            &["ev"],
            EventV1,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            Crd,
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "Ingress",
            "ingresses",
            true,
            &["ing"],
            Ingress,
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "IngressClass",
            "ingressclasses",
            false,
            &[],
            IngressClass,
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &["netpol"],
            NetworkPolicy,
        ),
        builtin(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
            &["hpa"],
            Hpa,
        ),
    ]
}

/// The strings of a JSON array (none when it is not one).
pub fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The resource a CRD defines (only served versions).
pub fn from_crd(crd: &Value) -> Option<ResourceDef> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let plural = names.get("plural")?.as_str()?.to_string();
    let kind = names.get("kind")?.as_str()?.to_string();
    let mut storage_version = String::new();
    let mut versions: Vec<VersionDef> = Vec::new();
    for v in spec.get("versions")?.as_array()? {
        let name = v.get("name")?.as_str()?.to_string();
        if v.get("storage").and_then(Value::as_bool) == Some(true) {
            storage_version = name.clone();
        }
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let sub = v.get("subresources");
        let scale = sub.and_then(|s| s.get("scale")).map(|s| ScaleDef {
            spec_replicas: s
                .get("specReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or(".spec.replicas")
                .into(),
            status_replicas: s
                .get("statusReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or(".status.replicas")
                .into(),
            label_selector: s
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| Column {
                        name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .into(),
                        json_path: c
                            .get("jsonPath")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        description: c
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                    })
                    .collect()
            })
            .unwrap_or_else(|| {
                vec![Column {
                    name: "Age".into(),
                    type_: "date".into(),
                    json_path: ".metadata.creationTimestamp".into(),
                    priority: 0,
                    description: String::new(),
                }]
            });
        versions.push(VersionDef {
            name,
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            cel: v
                .pointer("/schema/openAPIV3Schema")
                .map(|s| Arc::new(kube::core::cel::compile_schema(s))),
            status: sub.and_then(|s| s.get("status")).is_some(),
            scale,
            columns,
            selectable_fields: v
                .get("selectableFields")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.get("jsonPath").and_then(Value::as_str))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            warning: v
                .get("deprecationWarning")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| {
                    (v.get("deprecated").and_then(Value::as_bool) == Some(true))
                        .then(|| format!("{group}/{} {kind} is deprecated", v["name"]))
                }),
        });
    }
    // Kubernetes orders versions by priority (GA > beta > alpha, then number); we keep the
    // CRD's order with the storage version first, which is what kubectl prefers in practice.
    versions.sort_by_key(|v| version_priority(&v.name));
    if versions.is_empty() {
        return None;
    }
    Some(ResourceDef {
        storage: (group.clone(), plural.clone()),
        group,
        singular: names
            .get("singular")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase()),
        kind,
        plural,
        namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
        short_names: strs(names.get("shortNames")),
        categories: strs(names.get("categories")),
        versions,
        storage_version,
        has_generation: true,
        builtin: None,
        crd: crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Kubernetes version priority: v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > other.
pub fn version_priority(v: &str) -> (u8, i64, i64, String) {
    let re = regex::Regex::new(r"^v(\d+)(?:(alpha|beta)(\d+))?$").expect("regex");
    match re.captures(v) {
        Some(c) => {
            let major: i64 = c[1].parse().unwrap_or(0);
            let (stage, minor) = match c.get(2).map(|m| m.as_str()) {
                None => (0, 0),
                Some("beta") => (1, c[3].parse().unwrap_or(0)),
                _ => (2, c[3].parse().unwrap_or(0)),
            };
            (stage, -major, -minor, String::new())
        }
        None => (3, 0, 0, v.to_string()),
    }
}

/// The resources currently served.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// All resources.
    pub resources: Vec<Arc<ResourceDef>>,
}

impl Registry {
    /// Built-ins plus the given CRDs (established ones).
    pub fn build(crds: &[Value]) -> Registry {
        let mut resources: Vec<Arc<ResourceDef>> = builtins().into_iter().map(Arc::new).collect();
        for c in crds {
            if let Some(r) = from_crd(c) {
                resources.push(Arc::new(r));
            }
        }
        Registry { resources }
    }

    /// Finds a resource by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.plural == plural && r.version(version).is_some())
            .cloned()
    }

    /// Finds a resource by group and kind.
    pub fn find_kind(&self, group: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.kind == kind)
            .cloned()
    }

    /// Finds a resource by its storage identity.
    pub fn by_storage(&self, storage: &(String, String)) -> Option<Arc<ResourceDef>> {
        self.resources
            .iter()
            .find(|r| &r.storage == storage && r.builtin != Some(Builtin::EventV1))
            .cloned()
    }

    /// The group names in discovery order (core first).
    pub fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.resources {
            if !out.contains(&r.group) {
                out.push(r.group.clone());
            }
        }
        out
    }

    /// The versions of a group, preferred first.
    pub fn group_versions(&self, group: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.resources.iter().filter(|r| r.group == group) {
            for v in &r.versions {
                if !out.contains(&v.name) {
                    out.push(v.name.clone());
                }
            }
        }
        out.sort_by_key(|v| version_priority(v));
        out
    }

    /// `APIResourceList` for `group/version`.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = Vec::new();
        for r in self
            .resources
            .iter()
            .filter(|r| r.group == group && r.version(version).is_some())
        {
            let v = r.version(version).expect("version");
            let mut main = json!({
                "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind, "verbs": r.verbs(),
            });
            if !r.short_names.is_empty() {
                main["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                main["categories"] = json!(r.categories);
            }
            resources.push(main);
            if v.status {
                resources.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
            }
            if v.scale.is_some() {
                resources.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
            }
        }
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    }

    /// `APIGroup` for one group.
    pub fn api_group(&self, group: &str) -> Option<Value> {
        let versions = self.group_versions(group);
        let first = versions.first()?;
        Some(json!({
            "kind": "APIGroup", "apiVersion": "v1", "name": group,
            "versions": versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect::<Vec<_>>(),
            "preferredVersion": {"groupVersion": format!("{group}/{first}"), "version": first},
        }))
    }

    /// `APIGroupList` (named groups only).
    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .filter(|g| !g.is_empty())
            .filter_map(|g| {
                let mut v = self.api_group(g)?;
                let m = v.as_object_mut()?;
                m.remove("kind");
                m.remove("apiVersion");
                Some(v)
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// Aggregated discovery (`apidiscovery.k8s.io/v2` or `v2beta1`): `core` selects `/api`.
    pub fn aggregated(&self, core: bool, api_version: &str) -> Value {
        let mut items = Vec::new();
        for g in self.groups() {
            if g.is_empty() != core {
                continue;
            }
            let versions: Vec<Value> = self
                .group_versions(&g)
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = self
                        .resources
                        .iter()
                        .filter(|r| r.group == g)
                        .filter_map(|r| {
                            let vd = r.version(v)?;
                            let mut subs = Vec::new();
                            if vd.status {
                                subs.push(json!({"subresource": "status", "responseKind": {"group": g, "version": v, "kind": r.kind}, "verbs": ["get", "patch", "update"]}));
                            }
                            if vd.scale.is_some() {
                                subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
                            }
                            let mut res = json!({
                                "resource": r.plural,
                                "responseKind": {"group": g, "version": v, "kind": r.kind},
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular,
                                "verbs": r.verbs(),
                            });
                            if !r.short_names.is_empty() {
                                res["shortNames"] = json!(r.short_names);
                            }
                            if !r.categories.is_empty() {
                                res["categories"] = json!(r.categories);
                            }
                            if !subs.is_empty() {
                                res["subresources"] = json!(subs);
                            }
                            Some(res)
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            items.push(
                json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions}),
            );
        }
        json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{api_version}"), "metadata": {}, "items": items})
    }
}

/// How a list field merges (server-side apply and strategic merge patch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// A set of scalars.
    Set,
    /// A list of objects keyed by these fields.
    Map(Vec<String>),
}

/// List semantics of a field path (field names only, no indices) for a resource: from the
/// CRD schema for custom resources, from a table of the built-in types' merge keys otherwise.
pub fn list_type(res: &ResourceDef, version: &str, path: &[String]) -> ListType {
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    match names.as_slice() {
        ["metadata", "ownerReferences"] => return ListType::Map(vec!["uid".into()]),
        ["metadata", "finalizers"] => return ListType::Set,
        _ => {}
    }
    if res.builtin.is_none() {
        let Some(schema) = res.version(version).and_then(|v| v.schema.as_ref()) else {
            return ListType::Atomic;
        };
        let Some(node) = crate::schema::node_at(schema, path) else {
            return ListType::Atomic;
        };
        return match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(strs(node.get("x-kubernetes-list-map-keys"))),
            _ => ListType::Atomic,
        };
    }
    let last = names.last().copied().unwrap_or("");
    let parent = if names.len() >= 2 {
        names[names.len() - 2]
    } else {
        ""
    };
    let in_pod_spec = parent == "spec" && names.len() >= 2;
    match last {
        "containers" | "initContainers" | "ephemeralContainers" if in_pod_spec => {
            ListType::Map(vec!["name".into()])
        }
        "volumes" | "imagePullSecrets" if in_pod_spec => ListType::Map(vec!["name".into()]),
        "ports"
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            ListType::Map(vec!["containerPort".into(), "protocol".into()])
        }
        "ports" if names == ["spec", "ports"] && res.builtin == Some(Builtin::Service) => {
            ListType::Map(vec!["port".into(), "protocol".into()])
        }
        "env" => ListType::Map(vec!["name".into()]),
        "volumeMounts" => ListType::Map(vec!["mountPath".into()]),
        "volumeDevices" => ListType::Map(vec!["devicePath".into()]),
        "conditions" if parent == "status" => ListType::Map(vec!["type".into()]),
        "versions" if res.builtin == Some(Builtin::Crd) => ListType::Map(vec!["name".into()]),
        _ => ListType::Atomic,
    }
}

/// The strategic-merge-patch key of a list (built-ins only): `Some(None)` merges a list of
/// scalars, `Some(Some(key))` merges objects by `key`, `None` replaces the list.
pub fn strategic_key(res: &ResourceDef, path: &[String]) -> Option<Option<String>> {
    match list_type(res, "v1", path) {
        ListType::Atomic => None,
        ListType::Set => Some(None),
        ListType::Map(keys) => {
            // Strategic merge keys differ from the SSA keys for ports.
            let key = if path.last().map(String::as_str) == Some("ports") {
                if keys.iter().any(|k| k == "containerPort") {
                    "containerPort".to_string()
                } else {
                    "port".to_string()
                }
            } else {
                keys.first().cloned().unwrap_or_default()
            };
            Some(Some(key))
        }
    }
}
