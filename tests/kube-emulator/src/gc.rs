//! The controllers the API server itself relies on for deletion: ownerReference garbage
//! collection (background, foreground, orphan), namespace termination and CRD cleanup.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::registry::ResourceDef;
use crate::store::{CRD_FINALIZER, ObjKey, State, StorageKey};
use crate::util::{self, meta_str};

const GC: &str = "generic-garbage-collector";

struct Obj {
    res: Arc<ResourceDef>,
    key: ObjKey,
    value: Value,
}

/// A stored object, copied (only for the objects a pass acts on).
fn obj_at(st: &State, storage: &StorageKey, key: &ObjKey) -> Option<Obj> {
    Some(Obj {
        res: st.registry.by_storage(storage)?,
        key: key.clone(),
        value: st.objects.get(storage)?.get(key)?.clone(),
    })
}

/// A stored object of a served resource by uid.
fn by_uid<'a>(st: &'a State, uid: &str) -> Option<&'a Value> {
    let (storage, key) = st.uids.get(uid)?;
    st.registry.by_storage(storage)?;
    st.objects.get(storage)?.get(key)
}

fn req_for(st: &State, o: &Obj) -> crate::store::Req {
    let mut r = st.internal_req(
        o.res.clone(),
        (!o.key.0.is_empty()).then(|| o.key.0.clone()),
    );
    r.manager = GC.into();
    r
}

fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp").is_some()
}

fn has_finalizer(v: &Value, name: &str) -> bool {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some(name)))
}

/// Owner uids whose dependents may need the collector: owners that are gone, and owners
/// being deleted in the foreground or with orphaning. Read from the indexes the store keeps
/// (objects being deleted, dependents by owner), because the controllers run after every
/// write and thousands of objects must not make each write pay for a scan of all of them.
fn owners_to_look_at(st: &State) -> Vec<String> {
    let mut out: Vec<String> = st
        .dependents
        .keys()
        .filter(|uid| !st.uids.contains_key(*uid))
        .cloned()
        .collect();
    for (storage, key) in &st.deleting {
        let Some(v) = st.objects.get(storage).and_then(|m| m.get(key)) else {
            continue;
        };
        if (has_finalizer(v, "orphan") || has_finalizer(v, "foregroundDeletion"))
            && let Some(uid) = meta_str(v, "uid")
            && st.dependents.contains_key(uid)
        {
            out.push(uid.to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether a pass could act: every rule starts from an object being deleted or an owner
/// reference to an object that is not there.
fn anything_to_do(st: &State) -> bool {
    !st.deleting.is_empty() || st.dependents.keys().any(|uid| !st.uids.contains_key(uid))
}

fn owner_refs(v: &Value) -> Vec<Value> {
    v.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn remove_finalizer(st: &mut State, o: &Obj, fin: &str) {
    let mut f = util::finalizers(&o.value);
    f.retain(|x| x != fin);
    let mut req = req_for(st, o);
    let patch = json!({"metadata": {"finalizers": f}});
    let name = o.key.1.clone();
    let _ = st.patch(
        &mut req,
        &name,
        "",
        "application/merge-patch+json",
        patch.to_string().as_bytes(),
        false,
    );
}

fn delete(st: &mut State, o: &Obj, policy: &str) {
    let mut req = req_for(st, o);
    let name = o.key.1.clone();
    let _ = st.delete(&mut req, &name, &json!({"propagationPolicy": policy}));
}

/// Name to switch ownerReference garbage collection off with [`State::set_controller`].
pub const GARBAGE_COLLECTOR: &str = "garbage-collector-controller";
/// Name to switch namespace termination off with [`State::set_controller`].
pub const NAMESPACE: &str = "namespace-controller";

/// What the collector does to one dependent.
enum Action {
    /// Patch its ownerReferences to these (None: remove them).
    SetRefs(Option<Vec<Value>>),
    /// Delete it with this propagation policy.
    Delete(&'static str),
}

/// The collector's rule for one dependent, given its owners' state.
fn dependent_action(st: &State, v: &Value) -> Option<Action> {
    let refs = owner_refs(v);
    if refs.is_empty() {
        return None;
    }
    let mut dangling = Vec::new();
    let mut orphaning = Vec::new();
    let mut foreground = false;
    for r in &refs {
        let uid = r.get("uid").and_then(Value::as_str).unwrap_or("");
        match by_uid(st, uid) {
            None => dangling.push(uid.to_string()),
            Some(owner) if deleting(owner) => {
                if has_finalizer(owner, "orphan") {
                    orphaning.push(uid.to_string());
                } else if has_finalizer(owner, "foregroundDeletion") {
                    foreground = true;
                }
            }
            Some(_) => {}
        }
    }
    let without = |gone: &[String]| -> Vec<Value> {
        refs.iter()
            .filter(|r| {
                let uid = r.get("uid").and_then(Value::as_str).unwrap_or("");
                !gone.iter().any(|g| g == uid)
            })
            .cloned()
            .collect()
    };
    if !orphaning.is_empty() {
        let keep = without(&orphaning);
        return Some(Action::SetRefs((!keep.is_empty()).then_some(keep)));
    }
    if deleting(v) {
        return None;
    }
    if foreground || dangling.len() == refs.len() {
        // A dependent of a foreground deletion is deleted in the foreground too.
        return Some(Action::Delete(if foreground {
            "Foreground"
        } else {
            "Background"
        }));
    }
    if !dangling.is_empty() {
        return Some(Action::SetRefs(Some(without(&dangling))));
    }
    None
}

/// One pass; returns whether it changed anything (the caller repeats until quiet).
pub fn pass(st: &mut State) -> bool {
    if !anything_to_do(st) {
        return false;
    }
    let collect_garbage = st.controller_enabled(GARBAGE_COLLECTOR);
    if collect_garbage {
        // Dependents of owners that are gone or deleting.
        let mut candidates: Vec<(StorageKey, ObjKey)> = owners_to_look_at(st)
            .iter()
            .filter_map(|uid| st.dependents.get(uid))
            .flatten()
            .cloned()
            .collect();
        candidates.sort();
        candidates.dedup();
        for (storage, key) in &candidates {
            let Some(v) = st.objects.get(storage).and_then(|m| m.get(key)) else {
                continue;
            };
            if st.registry.by_storage(storage).is_none() {
                continue;
            }
            let Some(action) = dependent_action(st, v) else {
                continue;
            };
            let Some(o) = obj_at(st, storage, key) else {
                continue;
            };
            match action {
                Action::SetRefs(keep) => {
                    let mut req = req_for(st, &o);
                    let patch = json!({"metadata": {"ownerReferences": keep}});
                    let _ = st.patch(
                        &mut req,
                        &o.key.1,
                        "",
                        "application/merge-patch+json",
                        patch.to_string().as_bytes(),
                        false,
                    );
                }
                Action::Delete(policy) => delete(st, &o, policy),
            }
            return true;
        }
        // Owners waiting on their dependents.
        let waiting = st.deleting.iter().find_map(|(storage, key)| {
            let v = st.objects.get(storage)?.get(key)?;
            let (orphan, foreground) = (
                has_finalizer(v, "orphan"),
                has_finalizer(v, "foregroundDeletion"),
            );
            if !orphan && !foreground {
                return None;
            }
            st.registry.by_storage(storage)?;
            let uid = meta_str(v, "uid").unwrap_or("");
            let dependents: Vec<&Value> = st
                .dependents
                .get(uid)
                .into_iter()
                .flatten()
                .filter(|(s, _)| st.registry.by_storage(s).is_some())
                .filter_map(|(s, k)| st.objects.get(s)?.get(k))
                .collect();
            let fin = if orphan && dependents.is_empty() {
                "orphan"
            } else if foreground
                && !dependents.iter().any(|d| {
                    owner_refs(d).iter().any(|r| {
                        r.get("uid").and_then(Value::as_str) == Some(uid)
                            && r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
                    })
                })
            {
                "foregroundDeletion"
            } else {
                return None;
            };
            Some((storage.clone(), key.clone(), fin))
        });
        if let Some((storage, key, fin)) = waiting
            && let Some(o) = obj_at(st, &storage, &key)
        {
            remove_finalizer(st, &o, fin);
            return true;
        }
    }
    // Namespaces being terminated: delete the content, then the namespace.
    let terminate_namespaces = st.controller_enabled(NAMESPACE);
    let namespaces: Vec<String> = st
        .deleting
        .iter()
        .filter(|(s, _)| terminate_namespaces && s.0.is_empty() && s.1 == "namespaces")
        .map(|(_, k)| k.1.clone())
        .collect();
    for ns in namespaces {
        let Some(o) = obj_at(
            st,
            &(String::new(), "namespaces".into()),
            &(String::new(), ns.clone()),
        ) else {
            continue;
        };
        if o.res.kind != "Namespace" || !o.res.group.is_empty() {
            continue;
        }
        let mut content: Vec<(StorageKey, ObjKey, bool)> = Vec::new();
        for (storage, map) in &st.objects {
            if !st
                .registry
                .by_storage(storage)
                .is_some_and(|r| r.namespaced)
            {
                continue;
            }
            let from = (ns.clone(), String::new());
            for (key, v) in map.range(from..).take_while(|(k, _)| k.0 == ns) {
                content.push((storage.clone(), key.clone(), deleting(v)));
            }
        }
        let mut acted = false;
        for (storage, key, being_deleted) in &content {
            if !being_deleted && let Some(c) = obj_at(st, storage, key) {
                delete(st, &c, "Background");
                acted = true;
            }
        }
        if acted {
            return true;
        }
        if content.is_empty() {
            // What the namespace controller does through `finalize`.
            let mut req = req_for(st, &o);
            let patch = json!({"spec": {"finalizers": []}});
            let _ = st.patch(
                &mut req,
                &ns,
                "",
                "application/merge-patch+json",
                patch.to_string().as_bytes(),
                false,
            );
            return true;
        }
    }
    // CRDs being deleted: delete their objects, then release the CRD.
    let crds: Vec<(StorageKey, ObjKey)> = st
        .deleting
        .iter()
        .filter(|(s, _)| s.0 == "apiextensions.k8s.io" && s.1 == "customresourcedefinitions")
        .cloned()
        .collect();
    for (crd_storage, crd_key) in crds {
        let Some(o) = obj_at(st, &crd_storage, &crd_key) else {
            continue;
        };
        if o.res.kind != "CustomResourceDefinition" || !has_finalizer(&o.value, CRD_FINALIZER) {
            continue;
        }
        let group = o
            .value
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or("");
        let plural = o
            .value
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or("");
        let storage: StorageKey = (group.to_string(), plural.to_string());
        let instances: Vec<(ObjKey, bool)> = if st.registry.by_storage(&storage).is_some() {
            st.objects
                .get(&storage)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), deleting(v)))
                .collect()
        } else {
            Vec::new()
        };
        let mut acted = false;
        for (key, being_deleted) in &instances {
            if !being_deleted && let Some(c) = obj_at(st, &storage, key) {
                delete(st, &c, "Background");
                acted = true;
            }
        }
        if acted {
            return true;
        }
        if instances.is_empty() {
            remove_finalizer(st, &o, CRD_FINALIZER);
            return true;
        }
    }
    false
}

/// Runs passes until nothing changes (bounded, so a bug cannot spin forever).
pub fn run(st: &mut State) {
    for _ in 0..10_000 {
        if !pass(st) {
            return;
        }
    }
    tracing::warn!("garbage collector did not settle after 10000 steps");
}
