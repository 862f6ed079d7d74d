//! The controllers the API server itself relies on for deletion: ownerReference garbage
//! collection (background, foreground, orphan), namespace termination and CRD cleanup.

use std::collections::{HashMap, HashSet};
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

fn all_objects(st: &State) -> Vec<Obj> {
    let mut out = Vec::new();
    for (storage, map) in &st.objects {
        let Some(res) = st.registry.by_storage(storage) else {
            continue;
        };
        for (key, value) in map {
            out.push(Obj {
                res: res.clone(),
                key: key.clone(),
                value: value.clone(),
            });
        }
    }
    out
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

/// Whether a pass could act: every rule starts from an object being deleted or an owner
/// reference to an object that is not there. Checked without copying anything, because the
/// controllers run after every write (thousands of objects make a full pass expensive).
fn anything_to_do(st: &State) -> bool {
    let values = || st.objects.values().flat_map(|m| m.values());
    let mut uids = HashSet::new();
    for v in values() {
        if deleting(v) {
            return true;
        }
        if let Some(uid) = meta_str(v, "uid") {
            uids.insert(uid);
        }
    }
    values().any(|v| {
        v.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| {
                refs.iter()
                    .any(|r| !uids.contains(r.get("uid").and_then(Value::as_str).unwrap_or("")))
            })
    })
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

/// One pass; returns whether it changed anything (the caller repeats until quiet).
pub fn pass(st: &mut State) -> bool {
    if !anything_to_do(st) {
        return false;
    }
    let objs = all_objects(st);
    let collect_garbage = st.controller_enabled(GARBAGE_COLLECTOR);
    let by_uid: HashMap<&str, &Obj> = objs
        .iter()
        .filter_map(|o| Some((meta_str(&o.value, "uid")?, o)))
        .collect();
    let lookup = |uid: &str| -> Option<&Obj> { by_uid.get(uid).copied() };
    // Dependents of owners that are gone or deleting.
    for o in objs.iter().filter(|_| collect_garbage) {
        let refs = owner_refs(&o.value);
        if refs.is_empty() {
            continue;
        }
        let mut dangling = Vec::new();
        let mut orphaning = Vec::new();
        let mut foreground = false;
        for r in &refs {
            let uid = r.get("uid").and_then(Value::as_str).unwrap_or("");
            match lookup(uid) {
                None => dangling.push(uid.to_string()),
                Some(owner) if deleting(&owner.value) => {
                    let f = util::finalizers(&owner.value);
                    if f.iter().any(|x| x == "orphan") {
                        orphaning.push(uid.to_string());
                    } else if f.iter().any(|x| x == "foregroundDeletion") {
                        foreground = true;
                    }
                }
                Some(_) => {}
            }
        }
        if !orphaning.is_empty() {
            let keep: Vec<Value> = refs
                .iter()
                .filter(|r| {
                    !orphaning.contains(
                        &r.get("uid")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    )
                })
                .cloned()
                .collect();
            let mut req = req_for(st, o);
            let patch = json!({"metadata": {"ownerReferences": if keep.is_empty() { Value::Null } else { json!(keep) }}});
            let name = o.key.1.clone();
            let _ = st.patch(
                &mut req,
                &name,
                "",
                "application/merge-patch+json",
                patch.to_string().as_bytes(),
                false,
            );
            return true;
        }
        if deleting(&o.value) {
            continue;
        }
        let all_gone = dangling.len() == refs.len();
        if foreground || all_gone {
            // A dependent of a foreground deletion is deleted in the foreground too.
            delete(
                st,
                o,
                if foreground {
                    "Foreground"
                } else {
                    "Background"
                },
            );
            return true;
        }
        if !dangling.is_empty() {
            let keep: Vec<Value> = refs
                .iter()
                .filter(|r| {
                    !dangling.contains(
                        &r.get("uid")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    )
                })
                .cloned()
                .collect();
            let mut req = req_for(st, o);
            let patch = json!({"metadata": {"ownerReferences": keep}});
            let name = o.key.1.clone();
            let _ = st.patch(
                &mut req,
                &name,
                "",
                "application/merge-patch+json",
                patch.to_string().as_bytes(),
                false,
            );
            return true;
        }
    }
    // Owners waiting on their dependents.
    for o in objs
        .iter()
        .filter(|o| collect_garbage && deleting(&o.value))
    {
        let uid = meta_str(&o.value, "uid").unwrap_or("").to_string();
        let fins = util::finalizers(&o.value);
        let dependents: Vec<&Obj> = objs
            .iter()
            .filter(|d| {
                owner_refs(&d.value)
                    .iter()
                    .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid.as_str()))
            })
            .collect();
        if fins.iter().any(|f| f == "orphan") && dependents.is_empty() {
            remove_finalizer(st, o, "orphan");
            return true;
        }
        if fins.iter().any(|f| f == "foregroundDeletion") {
            let blocking = dependents.iter().any(|d| {
                owner_refs(&d.value).iter().any(|r| {
                    r.get("uid").and_then(Value::as_str) == Some(uid.as_str())
                        && r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
                })
            });
            if !blocking {
                remove_finalizer(st, o, "foregroundDeletion");
                return true;
            }
        }
    }
    // Namespaces being terminated: delete the content, then the namespace.
    let terminate_namespaces = st.controller_enabled(NAMESPACE);
    for o in objs.iter().filter(|o| {
        terminate_namespaces
            && o.res.kind == "Namespace"
            && o.res.group.is_empty()
            && deleting(&o.value)
    }) {
        let ns = o.key.1.clone();
        let content: Vec<&Obj> = objs
            .iter()
            .filter(|c| c.res.namespaced && c.key.0 == ns)
            .collect();
        let mut acted = false;
        for c in &content {
            if !deleting(&c.value) {
                delete(st, c, "Background");
                acted = true;
            }
        }
        if acted {
            return true;
        }
        if content.is_empty() {
            // What the namespace controller does through `finalize`.
            let mut req = req_for(st, o);
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
    for o in objs.iter().filter(|o| {
        o.res.kind == "CustomResourceDefinition"
            && deleting(&o.value)
            && util::finalizers(&o.value)
                .iter()
                .any(|f| f == CRD_FINALIZER)
    }) {
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
        let instances: Vec<&Obj> = objs.iter().filter(|c| c.res.storage == storage).collect();
        let mut acted = false;
        for c in &instances {
            if !deleting(&c.value) {
                delete(st, c, "Background");
                acted = true;
            }
        }
        if acted {
            return true;
        }
        if instances.is_empty() {
            remove_finalizer(st, o, CRD_FINALIZER);
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
