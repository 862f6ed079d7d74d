//! The Deployment controller, with the ReplicaSet controller folded in: Deployments get Pods
//! and a status that moves as kube-controller-manager moves it (pkg/controller/deployment,
//! `sync.go`, `rolling.go`, `progress.go`).
//!
//! - A Deployment's pods are created at once (labelled `pod-template-hash`, owned by the
//!   Deployment: no ReplicaSet objects), so `observedGeneration`, `replicas` and
//!   `updatedReplicas` move together in one status write, and `readyReplicas` and
//!   `availableReplicas` count only pods whose `Ready` condition is True (set by a kubelet: the
//!   e2e test's, or a test's own; nobody else, so without one no pod is ever ready).
//! - A changed template rolls out with `maxSurge`/`maxUnavailable` (RollingUpdate) or old pods
//!   first (Recreate); `minReadySeconds` delays availability.
//! - `Available` is True once `availableReplicas >= replicas - maxUnavailable`; `Progressing` is
//!   True `NewReplicaSetCreated`/`ReplicaSetUpdated` while the rollout progresses,
//!   `NewReplicaSetAvailable` once complete, and False `ProgressDeadlineExceeded` when
//!   `progressDeadlineSeconds` pass without progress (a short value is honoured, to the second).
//!   As in the real controller, a scale-up of a completed rollout is not tracked by
//!   `Progressing` and never times out.
//!
//! Not emulated: ReplicaSets and revision history, `spec.paused` (a paused Deployment is
//! reconciled like any other), pod deletion grace periods.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::registry::ResourceDef;
use crate::store::State;
use crate::util::{self, meta_str};

/// The field manager of the controller's writes.
pub const MANAGER: &str = "kube-controller-manager";
/// The label that ties a pod to its pod template.
pub const HASH_LABEL: &str = "pod-template-hash";
/// Name to switch the controller off with [`State::set_controller`].
pub const CONTROLLER: &str = "deployment-controller";

const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
const RS_UPDATED: &str = "ReplicaSetUpdated";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";

/// The pod-template-hash of a template: FNV-1a over its JSON, in the controller's
/// vowel-free alphabet.
pub fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in template.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut n = h;
    while out.len() < 10 {
        out.push(ALPHABET[(n % ALPHABET.len() as u32) as usize] as char);
        n /= ALPHABET.len() as u32;
        if n == 0 {
            break;
        }
    }
    out
}

fn int(v: Option<&Value>, default: i64) -> i64 {
    v.and_then(Value::as_i64).unwrap_or(default)
}

/// An int-or-percent of `total` (`25%`), rounded up or down as the controller does.
fn scaled(v: Option<&Value>, default: &str, total: i64, round_up: bool) -> i64 {
    let v = v.cloned().unwrap_or_else(|| json!(default));
    if let Some(n) = v.as_i64() {
        return n;
    }
    let pct: f64 = v
        .as_str()
        .and_then(|s| s.strip_suffix('%'))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let x = pct * total as f64 / 100.0;
    if round_up {
        x.ceil() as i64
    } else {
        x.floor() as i64
    }
}

/// maxSurge and maxUnavailable (never both 0), as `deploymentutil.ResolveFenceposts`.
fn fenceposts(d: &Value, desired: i64) -> (i64, i64) {
    if d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate") {
        return (0, desired);
    }
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let surge = scaled(ru.and_then(|r| r.get("maxSurge")), "25%", desired, true);
    let unavailable = scaled(
        ru.and_then(|r| r.get("maxUnavailable")),
        "25%",
        desired,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn ready_since(pod: &Value) -> Option<String> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .map(|c| {
            c.get("lastTransitionTime")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
}

fn is_ready(pod: &Value) -> bool {
    ready_since(pod).is_some()
}

fn is_available(pod: &Value, min_ready_secs: i64) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_secs <= 0 => true,
        Some(t) => util::age_secs(&t).is_some_and(|age| age >= min_ready_secs),
    }
}

struct Pods {
    new: Vec<Value>,
    old: Vec<Value>,
}

/// The live Pods controlled by the Deployments in `owners`, by owner uid: read through the
/// store's index of dependents by owner, not by a scan of every Pod.
fn pods_by_owner(st: &State, owners: &HashSet<String>) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    let key = (String::new(), "pods".to_string());
    let Some(pods) = st.objects.get(&key) else {
        return out;
    };
    for uid in owners {
        for (storage, pod_key) in st.dependents.get(uid).into_iter().flatten() {
            if *storage != key {
                continue;
            }
            let Some(p) = pods.get(pod_key) else { continue };
            if p.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            let controller = p
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
                .and_then(|r| r["uid"].as_str());
            if controller == Some(uid.as_str()) {
                out.entry(uid.clone()).or_default().push(p.clone());
            }
        }
    }
    out
}

fn split(pods: Vec<Value>, hash: &str) -> Pods {
    let (new, old) = pods.into_iter().partition(|p| {
        p.pointer(&format!("/metadata/labels/{HASH_LABEL}"))
            .and_then(Value::as_str)
            == Some(hash)
    });
    Pods { new, old }
}

fn pod_res(st: &State) -> Option<Arc<ResourceDef>> {
    st.registry.find("", "v1", "pods")
}

fn create_pod(st: &mut State, d: &Value, ns: &str, hash: &str) {
    let Some(res) = pod_res(st) else { return };
    let name = meta_str(d, "name").unwrap_or_default();
    let template = d.pointer("/spec/template").cloned().unwrap_or_default();
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    labels[HASH_LABEL] = json!(hash);
    let mut meta = json!({
        "generateName": format!("{name}-{hash}-"),
        "namespace": ns,
        "labels": labels,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                             "uid": meta_str(d, "uid"), "controller": true,
                             "blockOwnerDeletion": true}],
    });
    if let Some(a) = template.pointer("/metadata/annotations") {
        meta["annotations"] = a.clone();
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                     "spec": template.get("spec").cloned().unwrap_or_default()});
    let mut req = st.internal_req(res, Some(ns.to_string()));
    req.manager = MANAGER.into();
    if let Err(e) = st.create(&mut req, pod) {
        tracing::debug!(error = %e, "deployment controller: pod not created");
    }
}

/// Deletes `n` of `pods`, the least useful first (not ready, then the newest), as the
/// ReplicaSet controller ranks them.
fn delete_pods(st: &mut State, ns: &str, pods: &[Value], n: usize) {
    let Some(res) = pod_res(st) else { return };
    let mut ranked: Vec<&Value> = pods.iter().collect();
    ranked.sort_by_key(|p| {
        (
            is_ready(p),
            std::cmp::Reverse(meta_str(p, "creationTimestamp").unwrap_or("").to_string()),
        )
    });
    for p in ranked.into_iter().take(n) {
        let mut req = st.internal_req(res.clone(), Some(ns.to_string()));
        req.manager = MANAGER.into();
        let name = meta_str(p, "name").unwrap_or_default().to_string();
        let _ = st.delete(&mut req, &name, &json!({}));
    }
}

/// Creates and deletes pods toward the spec; true when it did.
fn scale(st: &mut State, d: &Value, ns: &str, hash: &str, pods: &Pods, desired: i64) -> bool {
    let new = pods.new.len() as i64;
    let old = pods.old.len() as i64;
    let min_ready = int(d.pointer("/spec/minReadySeconds"), 0);
    if d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate") && old > 0 {
        delete_pods(st, ns, &pods.old, pods.old.len());
        return true;
    }
    if old == 0 {
        if new < desired {
            for _ in new..desired {
                create_pod(st, d, ns, hash);
            }
            return true;
        }
        if new > desired {
            delete_pods(st, ns, &pods.new, (new - desired) as usize);
            return true;
        }
        return false;
    }
    // A rolling update: surge new pods, then remove old ones while enough stay available.
    let (surge, max_unavailable) = fenceposts(d, desired);
    let total = new + old;
    let max_total = desired + surge;
    if new < desired && total < max_total {
        for _ in 0..(max_total - total).min(desired - new) {
            create_pod(st, d, ns, hash);
        }
        return true;
    }
    let min_available = desired - max_unavailable;
    let new_unavailable = pods
        .new
        .iter()
        .filter(|p| !is_available(p, min_ready))
        .count() as i64;
    let max_scaled_down = total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return false;
    }
    // Unhealthy old pods go first, then available ones while enough stay available.
    let unhealthy: Vec<Value> = pods
        .old
        .iter()
        .filter(|p| !is_available(p, min_ready))
        .cloned()
        .collect();
    if !unhealthy.is_empty() {
        let n = (unhealthy.len() as i64).min(max_scaled_down) as usize;
        delete_pods(st, ns, &unhealthy, n);
        return true;
    }
    let available = pods
        .new
        .iter()
        .chain(&pods.old)
        .filter(|p| is_available(p, min_ready))
        .count() as i64;
    if available <= min_available {
        return false;
    }
    let n = (available - min_available).min(old).min(max_scaled_down) as usize;
    delete_pods(st, ns, &pods.old, n);
    n > 0
}

fn condition<'a>(status: &'a Value, ty: &str) -> Option<&'a Value> {
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

/// `SetDeploymentCondition`: unchanged status and reason keep the condition as it is; the same
/// status keeps lastTransitionTime; the condition moves to the end of the list.
fn set_condition(status: &mut Value, ty: &str, value: &str, reason: &str, message: &str) {
    let now = util::now_time();
    let current = condition(status, ty).cloned();
    if let Some(c) = &current
        && c["status"] == value
        && c["reason"] == reason
    {
        return;
    }
    let transition = match &current {
        Some(c) if c["status"] == value => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    remove_condition(status, ty);
    let list = status
        .as_object_mut()
        .map(|m| m.entry("conditions").or_insert_with(|| json!([])));
    if let Some(Value::Array(a)) = list {
        a.push(json!({"type": ty, "status": value, "lastUpdateTime": now,
                      "lastTransitionTime": transition, "reason": reason, "message": message}));
    }
}

fn remove_condition(status: &mut Value, ty: &str) {
    if let Some(a) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        a.retain(|c| c["type"] != ty);
    }
}

/// The status the controller writes for these pods (`calculateStatus` and
/// `syncRolloutStatus`).
fn status_for(d: &Value, pods: &Pods, desired: i64, new_rollout: Option<&str>) -> Value {
    let name = meta_str(d, "name").unwrap_or_default();
    let min_ready = int(d.pointer("/spec/minReadySeconds"), 0);
    let deadline = d
        .pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64);
    let mut old_status = d.get("status").cloned().unwrap_or_else(|| json!({}));
    if let (Some(rs), Some(_)) = (new_rollout, deadline) {
        set_condition(
            &mut old_status,
            "Progressing",
            "True",
            NEW_RS_CREATED,
            &format!("Created new replica set \"{rs}\""),
        );
    }
    let all: Vec<&Value> = pods.new.iter().chain(&pods.old).collect();
    let replicas = all.len() as i64;
    let updated = pods.new.len() as i64;
    let ready = all.iter().filter(|p| is_ready(p)).count() as i64;
    let available = all.iter().filter(|p| is_available(p, min_ready)).count() as i64;
    let mut status = json!({
        "observedGeneration": d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
    });
    // Counters the real server omits when zero.
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, v| k == "observedGeneration" || v != &json!(0));
    }
    if let Some(c) = old_status.get("conditions") {
        status["conditions"] = c.clone();
    }
    let (_, max_unavailable) = fenceposts(d, desired);
    if available >= desired - max_unavailable {
        set_condition(
            &mut status,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        );
    } else {
        set_condition(
            &mut status,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        );
    }
    let Some(deadline) = deadline else {
        remove_condition(&mut status, "Progressing");
        return status;
    };
    let rs = format!("{name}-{}", template_hash(&d["spec"]["template"]));
    let current = condition(&old_status, "Progressing").cloned();
    let reason = |c: &Option<Value>| {
        c.as_ref()
            .and_then(|c| c["reason"].as_str())
            .unwrap_or("")
            .to_string()
    };
    let complete_before = replicas == updated && reason(&current) == NEW_RS_AVAILABLE;
    if complete_before {
        return status;
    }
    let n = |s: &Value, k: &str| int(s.get(k), 0);
    let generation = int(d.pointer("/metadata/generation"), 1);
    let complete = updated == desired
        && replicas == desired
        && available == desired
        && n(&status, "observedGeneration") >= generation;
    let progressed = updated > n(&old_status, "updatedReplicas")
        || (replicas - updated) < (n(&old_status, "replicas") - n(&old_status, "updatedReplicas"))
        || ready > n(&old_status, "readyReplicas")
        || available > n(&old_status, "availableReplicas");
    if complete {
        set_condition(
            &mut status,
            "Progressing",
            "True",
            NEW_RS_AVAILABLE,
            &format!("ReplicaSet \"{rs}\" has successfully progressed."),
        );
    } else if progressed {
        // Progress always refreshes lastUpdateTime: the deadline counts from the last progress.
        let transition = match &current {
            Some(c) if c["status"] == "True" => c["lastTransitionTime"].clone(),
            _ => json!(util::now_time()),
        };
        remove_condition(&mut status, "Progressing");
        if let Some(a) = status.get_mut("conditions").and_then(Value::as_array_mut) {
            a.push(json!({"type": "Progressing", "status": "True",
                          "lastUpdateTime": util::now_time(), "lastTransitionTime": transition,
                          "reason": RS_UPDATED,
                          "message": format!("ReplicaSet \"{rs}\" is progressing.")}));
        }
    } else if let Some(c) = &current {
        let since = c["lastUpdateTime"].as_str().and_then(util::age_secs);
        let timed_out = reason(&current) == TIMED_OUT
            || (reason(&current) != NEW_RS_AVAILABLE && since.is_some_and(|s| s > deadline));
        if timed_out {
            set_condition(
                &mut status,
                "Progressing",
                "False",
                TIMED_OUT,
                &format!("ReplicaSet \"{rs}\" has timed out progressing."),
            );
        }
    }
    status
}

/// In how many seconds time alone may change this status: a progress deadline running, or a
/// ready pod becoming available after `minReadySeconds`.
fn next_change_in(d: &Value, status: &Value, pods: &Pods) -> Option<i64> {
    let mut soonest: Option<i64> = None;
    let mut at = |secs: i64| soonest = Some(soonest.map_or(secs, |s| s.min(secs)).max(0));
    if let (Some(deadline), Some(p)) = (
        d.pointer("/spec/progressDeadlineSeconds")
            .and_then(Value::as_i64),
        condition(status, "Progressing"),
    ) && p["status"] == "True"
        && p["reason"] != NEW_RS_AVAILABLE
        && let Some(age) = p["lastUpdateTime"].as_str().and_then(util::age_secs)
    {
        // Timestamps have whole seconds: one more to be past the deadline.
        at(deadline + 1 - age);
    }
    let min_ready = int(d.pointer("/spec/minReadySeconds"), 0);
    if min_ready > 0 {
        for p in pods.new.iter().chain(&pods.old) {
            if let Some(age) = ready_since(p).as_deref().and_then(util::age_secs)
                && age < min_ready
            {
                at(min_ready - age);
            }
        }
    }
    soonest
}

/// One Deployment with its pods: scale, then write the status if it changed. Returns whether
/// it wrote, and in how many seconds time alone may change the status.
fn sync(
    st: &mut State,
    res: &Arc<ResourceDef>,
    d: &Value,
    pods: Vec<Value>,
) -> (bool, Option<i64>) {
    let ns = meta_str(d, "namespace").unwrap_or_default().to_string();
    let name = meta_str(d, "name").unwrap_or_default().to_string();
    let uid = meta_str(d, "uid").unwrap_or_default().to_string();
    let desired = int(d.pointer("/spec/replicas"), 1);
    let hash = template_hash(&d["spec"]["template"]);
    let pods = split(pods, &hash);
    // A template seen for the first time starts a rollout (the real controller creates a
    // ReplicaSet then).
    let new_rollout = st.deployment_hashes.get(&uid) != Some(&hash);
    if new_rollout {
        st.deployment_hashes.insert(uid.clone(), hash.clone());
    }
    let scaled = scale(st, d, &ns, &hash, &pods, desired);
    let pods = if scaled {
        let only = HashSet::from([uid.clone()]);
        split(
            pods_by_owner(st, &only).remove(&uid).unwrap_or_default(),
            &hash,
        )
    } else {
        pods
    };
    let rs = format!("{name}-{hash}");
    let status = status_for(d, &pods, desired, new_rollout.then_some(rs.as_str()));
    let next = next_change_in(d, &status, &pods);
    if d.get("status") == Some(&status) {
        return (scaled, next);
    }
    let mut body = d.clone();
    body["status"] = status;
    let mut req = st.internal_req(res.clone(), Some(ns));
    req.manager = MANAGER.into();
    let wrote = st.update(&mut req, &name, "status", body).is_ok();
    (scaled || wrote, next)
}

/// One pass over every Deployment; true when anything was written.
pub fn pass(st: &mut State) -> bool {
    if !st.controller_enabled(CONTROLLER) {
        return false;
    }
    let Some(res) = st.registry.find("apps", "v1", "deployments") else {
        return false;
    };
    let key = ("apps".to_string(), "deployments".to_string());
    // Only the Deployments that changed, or whose Pods did (the store marks them on every
    // commit), or whose wake-up time came, are synced: this runs after every write, and
    // thousands of settled Deployments must not make every write slow.
    let now = std::time::Instant::now();
    let mut due: Vec<Value> = Vec::new();
    for d in st.objects.get(&key).into_iter().flat_map(|m| m.values()) {
        let uid = meta_str(d, "uid").unwrap_or("");
        let settled = !st.deployment_dirty.contains(uid)
            && st
                .deployment_settled
                .get(uid)
                .is_some_and(|wake| wake.is_none_or(|t| now < t));
        if !settled {
            due.push(d.clone());
        }
    }
    // Writes from here on (the syncs' own) mark their Deployments for the next pass.
    st.deployment_dirty.clear();
    let due_uids: HashSet<String> = due
        .iter()
        .filter_map(|d| meta_str(d, "uid").map(str::to_string))
        .collect();
    let mut pods = pods_by_owner(st, &due_uids);
    let mut wrote = false;
    let mut soonest: Option<i64> = None;
    for d in due {
        // A Deployment being deleted is left to the garbage collector.
        if d.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let uid = meta_str(&d, "uid").unwrap_or("").to_string();
        let own = pods.remove(&uid).unwrap_or_default();
        let (w, next) = sync(st, &res, &d, own);
        wrote |= w;
        if w {
            st.deployment_settled.remove(&uid);
        } else {
            let wake = next.map(|secs| {
                std::time::Instant::now() + std::time::Duration::from_secs(secs.max(0) as u64)
            });
            st.deployment_settled.insert(uid, wake);
        }
        if let Some(n) = next {
            soonest = Some(soonest.map_or(n, |s| s.min(n)));
        }
    }
    let due_wake = soonest
        .map(|secs| std::time::Instant::now() + std::time::Duration::from_secs(secs.max(0) as u64));
    // Settled Deployments that wait for a time count too.
    st.deployment_wakeup = st
        .deployment_settled
        .values()
        .filter_map(|wake| *wake)
        .chain(due_wake)
        .min();
    wrote
}

/// Runs passes until nothing changes (bounded).
pub fn run(st: &mut State) {
    for _ in 0..100 {
        if !pass(st) {
            return;
        }
    }
    tracing::warn!("deployment controller did not settle after 100 passes");
}
