//! Apply: server-side apply of the children (ConfigMap, Service, Deployment,
//! PodDisruptionBudget), and what every child's apply shares: no write when the live object
//! already has what we set, no create in a namespace being deleted, the replica count handed
//! over to an autoscaler, kinds the cluster may not serve, and removal of ours only.

use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Context;
use crate::operator::managed_fields;
use crate::operator::own_writes::OwnWrites;
use crate::operator::resources::{self, APPLIED_HASH_ANNOTATION, FIELD_MANAGER};

/// Applies the children; None when their namespace is being deleted (nothing created).
pub(super) async fn apply_children(
    ctx: &Context,
    ns: &str,
    c: &resources::Children,
) -> Result<Option<Deployment>, kube::Error> {
    let gate = NamespaceGate::new(&ctx.client, ns);
    if apply_one(
        &ns_api::<ConfigMap>(ctx, ns),
        &c.config_map,
        &gate,
        &ctx.own_writes,
    )
    .await?
    .is_none()
        || apply_one(
            &ns_api::<Service>(ctx, ns),
            &c.service,
            &gate,
            &ctx.own_writes,
        )
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let Some(d) = apply_one(
        &ns_api::<Deployment>(ctx, ns),
        &c.deployment,
        &gate,
        &ctx.own_writes,
    )
    .await?
    else {
        return Ok(None);
    };
    let pdbs = ns_api::<PodDisruptionBudget>(ctx, ns);
    match &c.pdb {
        Some(p) => {
            if apply_one(&pdbs, p, &gate, &ctx.own_writes).await?.is_none() {
                return Ok(None);
            }
        }
        None => {
            // Disabled: remove ours if it exists (only when it carries our label).
            let name = c.deployment.metadata.name.clone().unwrap_or_default();
            if let Some(live) = pdbs.get_opt(&name).await?
                && live
                    .labels()
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str)
                    == Some(FIELD_MANAGER)
            {
                pdbs.delete(&name, &DeleteParams::default()).await?;
            }
        }
    }
    Ok(Some(d))
}

/// Server-side applies `obj` unless the live object already has it: same applied-hash and
/// every field we set still in place (so a hand edit of a child is put back). None: the child
/// is missing and its namespace is being deleted, so nothing was created.
pub(super) async fn apply_one<K>(
    api: &Api<K>,
    obj: &K,
    gate: &NamespaceGate<'_>,
    own: &OwnWrites,
) -> Result<Option<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let want = obj.annotations().get(APPLIED_HASH_ANNOTATION);
    match api.get_opt(&name).await? {
        Some(live)
            if live.annotations().get(APPLIED_HASH_ANNOTATION) == want
                && matches!(
                    (serde_json::to_value(obj), serde_json::to_value(&live)),
                    (Ok(w), Ok(h)) if is_subset(&w, &h)
                ) =>
        {
            return Ok(Some(live));
        }
        Some(live) => hand_over_replicas(api, obj, &live).await?,
        None if gate.closed().await => return Ok(None),
        None => {}
    }
    let writing = own.begin(obj);
    let written = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
    own.record(&written);
    drop(writing);
    Ok(Some(written))
}

/// Field manager that keeps a Deployment's replica count when the operator stops setting it.
pub const HANDOVER_MANAGER: &str = "stompgateway-operator-handover";

/// Before an apply that no longer sets `spec.replicas` (autoscaling switched on) while the
/// operator's earlier apply owns it: the API server would remove the field (the Deployment
/// falls back to 1 pod) instead of leaving it to the autoscaler. A second manager first
/// applies the live count, so the field stays, owned by it until the HPA changes it (as the
/// Kubernetes docs' "transferring ownership" does).
async fn hand_over_replicas<K>(api: &Api<K>, want: &K, live: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let (Ok(w), Ok(l)) = (serde_json::to_value(want), serde_json::to_value(live)) else {
        return Ok(());
    };
    let Some(replicas) = l.pointer("/spec/replicas") else {
        return Ok(());
    };
    if w.pointer("/spec/replicas").is_some()
        || w.pointer("/spec").is_none()
        || !managed_fields::applies_field(live.meta(), FIELD_MANAGER, &["spec", "replicas"])
    {
        return Ok(());
    }
    let name = live.meta().name.clone().unwrap_or_default();
    let patch = json!({
        "apiVersion": w["apiVersion"], "kind": w["kind"],
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    api.patch(
        &name,
        &PatchParams::apply(HANDOVER_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    tracing::info!(%name, %replicas, "the replica count is left to the autoscaler");
    Ok(())
}

/// Whether the namespace is being deleted, asked at most once per reconcile and only when a
/// child would have to be created: the API server refuses creates there (403), and the
/// children the namespace controller removed must not be put back.
pub(super) struct NamespaceGate<'a> {
    client: &'a Client,
    namespace: &'a str,
    closed: tokio::sync::OnceCell<bool>,
}

impl<'a> NamespaceGate<'a> {
    pub(super) fn new(client: &'a Client, namespace: &'a str) -> Self {
        Self {
            client,
            namespace,
            closed: tokio::sync::OnceCell::new(),
        }
    }

    pub(super) async fn closed(&self) -> bool {
        *self
            .closed
            .get_or_init(|| async {
                let api: Api<Namespace> = Api::all(self.client.clone());
                match api.get_opt(self.namespace).await {
                    Ok(Some(ns)) => ns.metadata.deletion_timestamp.is_some(),
                    Ok(None) => true,
                    // Not allowed to read it: the create itself will tell.
                    Err(_) => false,
                }
            })
            .await
    }
}

pub(super) fn ns_api<K>(ctx: &Context, ns: &str) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(ctx.client.clone(), ns)
}

/// Whether every field of `want` is in `have` with the same value (extra fields in `have`, such
/// as server defaults, are ignored; lists must match item by item).
pub fn is_subset(want: &serde_json::Value, have: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| is_subset(v, hv))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b))
        }
        _ => want == have,
    }
}

/// Whether the API server serves `ar` (discovery of its group version; a group that is not
/// installed answers 404).
pub(super) async fn served(client: &Client, ar: &ApiResource) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(&ar.api_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == ar.plural)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Applies (or removes) a child of a kind that may not be served. None: the kind is not
/// served, nothing was done.
pub(super) async fn apply_dynamic(
    ctx: &Context,
    ns: &str,
    ar: &ApiResource,
    want: Option<&DynamicObject>,
    owner: &str,
    had: bool,
    gate: &NamespaceGate<'_>,
) -> Result<Option<()>, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, ar);
    match want {
        Some(obj) => {
            if !served(&ctx.client, ar).await? {
                return Ok(None);
            }
            let name = obj.metadata.name.clone().unwrap_or_default();
            let hash = obj.annotations().get(APPLIED_HASH_ANNOTATION);
            match api.get_opt(&name).await? {
                Some(live)
                    if live.annotations().get(APPLIED_HASH_ANNOTATION) == hash
                        && matches!(
                            (serde_json::to_value(obj), serde_json::to_value(&live)),
                            (Ok(w), Ok(h)) if is_subset(&w, &h)
                        ) =>
                {
                    return Ok(Some(()));
                }
                Some(_) => {}
                None if gate.closed().await => return Ok(Some(())),
                None => {}
            }
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await?;
            Ok(Some(()))
        }
        // Never configured (no condition from an earlier pass): nothing to look for.
        None if !had => Ok(Some(())),
        None => {
            // Removed from the spec: delete ours. A kind that is not served has no objects
            // (the read answers 404, which get_opt turns into None).
            if let Some(live) = api.get_opt(owner).await?
                && is_ours(live.labels())
            {
                api.delete(owner, &DeleteParams::default()).await?;
            }
            Ok(Some(()))
        }
    }
}

fn is_ours(labels: &BTreeMap<String, String>) -> bool {
    labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(FIELD_MANAGER)
}

pub(super) async fn delete_ours<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if let Some(live) = api.get_opt(name).await?
        && is_ours(live.labels())
    {
        api.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}
