//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply: field sets,
//! conflicts, merging an applied configuration and removing fields a manager stopped applying.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::registry::ListType;

/// One path element in FieldsV1 notation: `f:name`, `k:{"name":"x"}`, `v:"x"`, `i:0`.
pub type Path = Vec<String>;
/// A set of owned paths (a path that prefixes another is owned itself: FieldsV1 `"."`).
pub type FieldSet = BTreeSet<Path>;
/// List semantics of a field-name path.
pub type ListFn<'a> = &'a dyn Fn(&[String]) -> ListType;

fn key_elem(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        // A missing key field is a defaulted one (e.g. protocol); key on what is there.
        if let Some(v) = item.get(k) {
            m.insert(k.clone(), v.clone());
        }
    }
    if m.is_empty() {
        return None;
    }
    Some(format!("k:{}", Value::Object(m)))
}

/// The paths of the leaf fields of `v` (excluding identity metadata).
pub fn field_set(v: &Value, lists: ListFn, include_status: bool, only_status: bool) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(m) = v.as_object() else {
        return out;
    };
    for (k, c) in m {
        match k.as_str() {
            "apiVersion" | "kind" => continue,
            "status" if !include_status && !only_status => continue,
            "metadata" => {
                if only_status {
                    continue;
                }
                if let Some(mm) = c.as_object() {
                    for mk in ["labels", "annotations", "ownerReferences", "finalizers"] {
                        if let Some(mc) = mm.get(mk) {
                            let mut path = vec!["f:metadata".to_string(), format!("f:{mk}")];
                            let mut names = vec!["metadata".to_string(), mk.to_string()];
                            walk(mc, lists, &mut path, &mut names, &mut out);
                        }
                    }
                }
                continue;
            }
            _ => {}
        }
        if only_status && k != "status" {
            continue;
        }
        let mut path = vec![format!("f:{k}")];
        let mut names = vec![k.clone()];
        walk(c, lists, &mut path, &mut names, &mut out);
    }
    out
}

fn walk(v: &Value, lists: ListFn, path: &mut Path, names: &mut Vec<String>, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                path.push(format!("f:{k}"));
                names.push(k.clone());
                walk(c, lists, path, names, out);
                names.pop();
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match lists(names) {
            ListType::Atomic => {
                out.insert(path.clone());
            }
            ListType::Set => {
                for it in items {
                    path.push(format!("v:{it}"));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListType::Map(keys) => {
                for it in items {
                    let Some(k) = key_elem(it, &keys) else {
                        continue;
                    };
                    path.push(k);
                    out.insert(path.clone());
                    if let Some(m) = it.as_object() {
                        for (fk, fc) in m {
                            path.push(format!("f:{fk}"));
                            names.push(fk.clone());
                            walk(fc, lists, path, names, out);
                            names.pop();
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

fn matches_key(item: &Value, elem: &str) -> bool {
    let Some(k) = elem.strip_prefix("k:") else {
        return false;
    };
    let Ok(Value::Object(want)) = serde_json::from_str::<Value>(k) else {
        return false;
    };
    want.iter().all(|(f, v)| item.get(f) == Some(v))
}

/// Keyed-list and set items that appear twice in an applied object, as structured-merge-diff
/// reports them: `.spec.items: duplicate entries for key [name="a"]`.
pub fn duplicate_entries(v: &Value, lists: ListFn) -> Vec<String> {
    fn rec(v: &Value, lists: ListFn, names: &mut Vec<String>, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    names.push(k.clone());
                    rec(c, lists, names, &format!("{path}.{k}"), out);
                    names.pop();
                }
            }
            Value::Array(items) => {
                let kind = lists(names);
                let mut seen: Vec<String> = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    let (elem, shown) = match &kind {
                        ListType::Map(keys) => {
                            let parts: Vec<String> = keys
                                .iter()
                                .filter_map(|k| it.get(k).map(|x| format!("{k}={x}")))
                                .collect();
                            (format!("[{}]", parts.join(",")), "key")
                        }
                        ListType::Set => (it.to_string(), "value"),
                        ListType::Atomic => (format!("[{i}]"), ""),
                    };
                    if !shown.is_empty() {
                        if seen.contains(&elem) {
                            let e = format!("{path}: duplicate entries for {shown} {elem}");
                            if !out.contains(&e) {
                                out.push(e);
                            }
                            continue;
                        }
                        seen.push(elem.clone());
                    }
                    let child = match &kind {
                        ListType::Set => format!("{path}[={elem}]"),
                        _ => format!("{path}{elem}"),
                    };
                    rec(it, lists, names, &child, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    rec(v, lists, &mut Vec::new(), "", &mut out);
    out
}

/// The value at a path.
pub fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for e in path {
        cur = if let Some(f) = e.strip_prefix("f:") {
            cur.get(f)?
        } else if e.starts_with("k:") {
            cur.as_array()?.iter().find(|i| matches_key(i, e))?
        } else if let Some(val) = e.strip_prefix("v:") {
            let want: Value = serde_json::from_str(val).ok()?;
            cur.as_array()?.iter().find(|i| **i == want)?
        } else if let Some(i) = e.strip_prefix("i:") {
            cur.get(i.parse::<usize>().ok()?)?
        } else {
            return None;
        };
    }
    Some(cur)
}

/// Removes the value at a path (no-op when absent).
pub fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for e in parent {
        let next = if let Some(f) = e.strip_prefix("f:") {
            cur.get_mut(f)
        } else if e.starts_with("k:") {
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| matches_key(i, e)))
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if last.starts_with("k:") {
        if let Some(a) = cur.as_array_mut() {
            a.retain(|i| !matches_key(i, last));
        }
    } else if let Some(val) = last.strip_prefix("v:")
        && let Ok(want) = serde_json::from_str::<Value>(val)
        && let Some(a) = cur.as_array_mut()
    {
        a.retain(|i| *i != want);
    }
}

/// FieldsV1 JSON of a set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = json!({});
    for p in set {
        let mut node = &mut root;
        for e in p {
            node = node
                .as_object_mut()
                .expect("object")
                .entry(e.clone())
                .or_insert_with(|| json!({}));
        }
    }
    // A node that is owned itself and has children gets ".".
    for p in set {
        let mut node = &mut root;
        for e in p {
            node = node.get_mut(e).expect("inserted");
        }
        if let Some(m) = node.as_object_mut()
            && !m.is_empty()
            && !m.contains_key(".")
        {
            m.insert(".".into(), json!({}));
        }
    }
    root
}

/// The set described by FieldsV1 JSON.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn rec(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else {
            return;
        };
        if (m.is_empty() || m.contains_key(".")) && !path.is_empty() {
            out.insert(path.clone());
        }
        for (k, c) in m {
            if k == "." {
                continue;
            }
            path.push(k.clone());
            rec(c, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// Field-name path of a FieldsV1 path (for list semantics).
pub fn names_of(path: &[String]) -> Vec<String> {
    path.iter()
        .filter_map(|e| e.strip_prefix("f:").map(str::to_string))
        .collect()
}

/// Merges an applied configuration into the live object (server-side apply semantics).
pub fn apply_merge(live: &Value, applied: &Value, lists: ListFn, names: &mut Vec<String>) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            let mut out = l.clone();
            for (k, av) in a {
                names.push(k.clone());
                let merged = match l.get(k) {
                    Some(lv) => apply_merge(lv, av, lists, names),
                    None => av.clone(),
                };
                names.pop();
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) => match lists(names) {
            ListType::Atomic => applied.clone(),
            ListType::Set => {
                let mut out = l.clone();
                for x in a {
                    if !out.contains(x) {
                        out.push(x.clone());
                    }
                }
                Value::Array(out)
            }
            ListType::Map(keys) => {
                let mut out = l.clone();
                for ai in a {
                    let k = key_elem(ai, &keys);
                    match k
                        .as_ref()
                        .and_then(|k| out.iter().position(|li| matches_key(li, k)))
                    {
                        Some(pos) => out[pos] = apply_merge(&out[pos], ai, lists, names),
                        None => out.push(ai.clone()),
                    }
                }
                Value::Array(out)
            }
        },
        _ => applied.clone(),
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// apiVersion of the request.
    pub api_version: String,
    /// When the set last changed.
    pub time: String,
    /// Owned fields.
    pub set: FieldSet,
    /// `status` or empty.
    pub subresource: String,
}

/// Reads `metadata.managedFields`.
pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e
                        .get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    operation: e
                        .get("operation")
                        .and_then(Value::as_str)
                        .unwrap_or("Update")
                        .into(),
                    api_version: e
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    time: e.get("time").and_then(Value::as_str).unwrap_or("").into(),
                    set: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                    subresource: e
                        .get("subresource")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `metadata.managedFields` (entries with empty sets are dropped).
pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.set),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    let m = crate::util::meta_mut(obj);
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

/// A field two managers disagree on.
#[derive(Clone, Debug)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// The path in `.spec.replicas` notation.
    pub field: String,
}

/// `.spec.containers[name="gateway"].image` notation for messages.
pub fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = m.iter().map(|(a, b)| format!("{a}={b}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else {
            s.push_str(&format!("[{e}]"));
        }
    }
    s
}

/// Records an update (create, update, patch): the manager takes the fields whose value it
/// changed, others lose them, removed fields leave every set.
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    entries: &mut Vec<Entry>,
    old_set: &FieldSet,
    new_set: &FieldSet,
    old: &Value,
    new: &Value,
    manager: &str,
    api_version: &str,
    subresource: &str,
) {
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| !old_set.contains(*p) || get(old, p) != get(new, p))
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(new_set).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        return;
    }
    for e in entries.iter_mut() {
        let before = e.set.len();
        e.set.retain(|p| !removed.contains(p));
        if e.manager != manager || e.operation != "Update" || e.subresource != subresource {
            e.set.retain(|p| !changed.contains(p));
        }
        if e.set.len() != before {
            e.time = crate::util::now_time();
        }
    }
    if changed.is_empty() {
        entries.retain(|e| !e.set.is_empty());
        return;
    }
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource)
    {
        Some(e) => {
            e.set.extend(changed);
            e.time = crate::util::now_time();
            e.api_version = api_version.to_string();
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: api_version.to_string(),
            time: crate::util::now_time(),
            set: changed,
            subresource: subresource.to_string(),
        }),
    }
    entries.retain(|e| !e.set.is_empty());
}

/// Server-side apply of `applied` by `manager` onto `live` (None: create). Returns the new
/// object and the new entries, or the conflicts when not forced.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
    subresource: &str,
    force: bool,
    lists: ListFn,
    status_separate: bool,
) -> Result<(Value, Vec<Entry>), Vec<Conflict>> {
    let only_status = subresource == "status";
    let include_status = !status_separate;
    let applied_set = field_set(applied, lists, include_status, only_status);
    let Some(live) = live else {
        let entries = vec![Entry {
            manager: manager.into(),
            operation: "Apply".into(),
            api_version: api_version.into(),
            time: crate::util::now_time(),
            set: applied_set,
            subresource: subresource.into(),
        }];
        return Ok((applied.clone(), entries));
    };
    let mut entries = read_entries(live);
    let mut conflicts = Vec::new();
    let mut taken: Vec<(usize, Path)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if (e.manager == manager && e.operation == "Apply") || e.subresource != subresource {
            continue;
        }
        for p in applied_set.intersection(&e.set) {
            let (Some(lv), Some(av)) = (get(live, p), get(applied, p)) else {
                continue;
            };
            // A list item itself is not a value conflict; its fields are compared.
            if p.last().is_some_and(|x| x.starts_with("k:")) {
                continue;
            }
            if lv != av {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    field: display_path(p),
                });
                taken.push((i, p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for (i, p) in taken {
        entries[i].set.remove(&p);
        entries[i].time = crate::util::now_time();
    }
    let mut names = Vec::new();
    let mut merged = apply_merge(live, &strip_nulls(applied), lists, &mut names);
    let prev: FieldSet = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource == subresource)
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let others: FieldSet = entries
        .iter()
        .filter(|e| {
            !(e.manager == manager && e.operation == "Apply" && e.subresource == subresource)
        })
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    // Fields this manager applied before and no longer does, owned by nobody else: removed.
    let mut gone: Vec<&Path> = prev
        .difference(&applied_set)
        .filter(|p| !others.contains(*p))
        .filter(|p| !others.iter().any(|o| o.starts_with(p)))
        .collect();
    // As structured-merge-diff's prune (EnsureNamedFieldsAreMembers): an object field whose
    // fields were all applied by this manager and none is any more goes too, instead of being
    // left as `{}` (which fails validation when the object has required fields).
    let parents: Vec<Path> = gone
        .iter()
        .flat_map(|p| (2..p.len()).map(move |n| p[..n].to_vec()))
        .filter(|q| q.last().is_some_and(|x| x.starts_with("f:")))
        .filter(|q| !applied_set.iter().any(|a| a.starts_with(q)))
        .filter(|q| !others.iter().any(|o| o.starts_with(q)))
        .collect();
    gone.extend(parents.iter());
    // Shallowest first; a removed list item or object takes its fields with it.
    gone.sort_by_key(|p| p.len());
    let mut removed: Vec<&Path> = Vec::new();
    for p in gone {
        if removed.iter().any(|r| p.starts_with(r)) {
            continue;
        }
        remove(&mut merged, p);
        removed.push(p);
    }
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource == subresource)
    {
        Some(e) => {
            if e.set != applied_set {
                e.time = crate::util::now_time();
            }
            e.set = applied_set;
            e.api_version = api_version.into();
        }
        None => entries.push(Entry {
            manager: manager.into(),
            operation: "Apply".into(),
            api_version: api_version.into(),
            time: crate::util::now_time(),
            set: applied_set,
            subresource: subresource.into(),
        }),
    }
    entries.retain(|e| !e.set.is_empty());
    Ok((merged, entries))
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), strip_nulls(x)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(p: &[String]) -> ListType {
        match p.last().map(String::as_str) {
            Some("containers") => ListType::Map(vec!["name".into()]),
            Some("finalizers") => ListType::Set,
            _ => ListType::Atomic,
        }
    }

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({"metadata": {"labels": {"a": "1"}, "finalizers": ["x"]}, "spec": {"replicas": 1, "containers": [{"name": "c", "image": "i"}], "args": [1]}});
        let set = field_set(&v, &lists, false, false);
        let f = to_fields_v1(&set);
        assert_eq!(
            f,
            json!({"f:metadata": {"f:labels": {"f:a": {}}, "f:finalizers": {"v:\"x\"": {}}}, "f:spec": {"f:replicas": {}, "f:args": {}, "f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:name": {}, "f:image": {}}}}})
        );
        assert_eq!(from_fields_v1(&f), set);
    }

    #[test]
    fn apply_conflicts_force_and_removal() {
        let a1 =
            json!({"spec": {"replicas": 2, "containers": [{"name": "c", "image": "1"}], "x": 1}});
        let (obj, entries) = apply(None, &a1, "op", "v1", "", false, &lists, true).unwrap();
        let mut obj = obj;
        write_entries(&mut obj, &entries);
        // Another applier changing replicas conflicts unless forced.
        let other = json!({"spec": {"replicas": 3}});
        let c = apply(Some(&obj), &other, "kubectl", "v1", "", false, &lists, true).unwrap_err();
        assert_eq!(c[0].field, ".spec.replicas");
        assert_eq!(c[0].manager, "op");
        let (mut obj2, e2) =
            apply(Some(&obj), &other, "kubectl", "v1", "", true, &lists, true).unwrap();
        write_entries(&mut obj2, &e2);
        assert_eq!(obj2["spec"]["replicas"], 3);
        // op stops applying x and replicas: x is removed, replicas (now kubectl's) stays.
        let a2 = json!({"spec": {"containers": [{"name": "c", "image": "1"}]}});
        let (obj3, _) = apply(Some(&obj2), &a2, "op", "v1", "", false, &lists, true).unwrap();
        assert_eq!(obj3["spec"].get("x"), None);
        assert_eq!(obj3["spec"]["replicas"], 3);
    }

    #[test]
    fn an_object_whose_applied_fields_all_go_goes_with_them() {
        let a1 = json!({"spec": {"endpoints": {"ws": "a", "external": {"ws": "b", "sockJs": "c"}},
                                 "keep": {"x": 1, "y": 2}}});
        let (mut obj, entries) = apply(None, &a1, "op", "v1", "", false, &lists, true).unwrap();
        write_entries(&mut obj, &entries);
        // Another manager owns keep.y: keep stays, with y.
        let (mut obj, entries) = apply(
            Some(&obj),
            &json!({"spec": {"keep": {"y": 2}}}),
            "other",
            "v1",
            "",
            false,
            &lists,
            true,
        )
        .unwrap();
        write_entries(&mut obj, &entries);
        let a2 = json!({"spec": {"endpoints": {"ws": "a"}}});
        let (obj, _) = apply(Some(&obj), &a2, "op", "v1", "", false, &lists, true).unwrap();
        assert_eq!(obj["spec"]["endpoints"], json!({"ws": "a"}));
        assert_eq!(obj["spec"]["keep"], json!({"y": 2}));
    }
}
