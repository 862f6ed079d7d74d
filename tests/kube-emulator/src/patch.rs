//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

use serde_json::{Map, Value};

use crate::util::{ApiError, ApiResult};

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &p).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the JSON patch could not be applied: {e}"),
        )
    })
}

/// The strategic-merge key lookup: `Some(None)` merges scalars, `Some(Some(k))` merges
/// objects by `k`, `None` replaces the list.
pub type KeyFn<'a> = &'a dyn Fn(&[String]) -> Option<Option<String>>;

const DIRECTIVE: &str = "$patch";
const RETAIN: &str = "$retainKeys";
const ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Strategic merge patch of `orig` with `patch` (objects merged, lists per `keys`).
pub fn strategic_merge(
    orig: &Value,
    patch: &Value,
    keys: KeyFn,
    path: &mut Vec<String>,
) -> ApiResult<Value> {
    let Some(p) = patch.as_object() else {
        return Ok(patch.clone());
    };
    match p.get(DIRECTIVE).and_then(Value::as_str) {
        Some("replace") => {
            let mut rest = p.clone();
            rest.remove(DIRECTIVE);
            return strategic_merge(&Value::Object(Map::new()), &Value::Object(rest), keys, path);
        }
        Some("delete") => return Ok(Value::Null),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch type: {other} in map: the emulator supports $patch replace and delete"
            )));
        }
        None => {}
    }
    let mut out = match orig {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in p {
        if k == RETAIN || k == DIRECTIVE {
            continue;
        }
        if let Some(field) = k.strip_prefix(ORDER) {
            orders.push((field.to_string(), v.as_array().cloned().unwrap_or_default()));
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE) {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(a)) = out.get_mut(field) {
                a.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(ApiError::bad_request(format!(
                "unsupported strategic merge directive {k}"
            )));
        }
        path.push(k.clone());
        let merged = match v {
            Value::Null => None,
            Value::Object(_) => {
                let base = out.get(k).cloned().unwrap_or(Value::Null);
                let m = strategic_merge(&base, v, keys, path)?;
                (!m.is_null()).then_some(m)
            }
            Value::Array(items) => {
                let base = out.get(k).and_then(Value::as_array).cloned();
                Some(merge_list(base, items, keys, path)?)
            }
            other => Some(other.clone()),
        };
        path.pop();
        match merged {
            Some(m) => {
                out.insert(k.clone(), m);
            }
            None => {
                out.remove(k);
            }
        }
    }
    if let Some(retain) = p.get(RETAIN).and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        path.push(field.clone());
        let key = keys(path);
        path.pop();
        if let Some(Value::Array(a)) = out.get_mut(&field) {
            let ident = |x: &Value| -> Value {
                match &key {
                    Some(Some(k)) => x.get(k).cloned().unwrap_or(Value::Null),
                    _ => x.clone(),
                }
            };
            let mut sorted = Vec::with_capacity(a.len());
            for o in &order {
                let id = ident(o);
                if let Some(pos) = a.iter().position(|x| ident(x) == id) {
                    sorted.push(a.remove(pos));
                }
            }
            sorted.append(a);
            *a = sorted;
        }
    }
    Ok(Value::Object(out))
}

fn merge_list(
    base: Option<Vec<Value>>,
    items: &[Value],
    keys: KeyFn,
    path: &mut Vec<String>,
) -> ApiResult<Value> {
    let clean = |x: &Value, path: &mut Vec<String>| -> ApiResult<Value> {
        if x.is_object() {
            strategic_merge(&Value::Object(Map::new()), x, keys, path)
        } else {
            Ok(x.clone())
        }
    };
    let replace_all = items
        .iter()
        .any(|i| i.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"));
    match keys(path) {
        Some(Some(key)) if !replace_all => {
            let mut out = base.unwrap_or_default();
            for it in items {
                let id = it.get(&key).cloned();
                let pos = id
                    .as_ref()
                    .and_then(|id| out.iter().position(|o| o.get(&key) == Some(id)));
                if it.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                    if let Some(pos) = pos {
                        out.remove(pos);
                    }
                    continue;
                }
                match pos {
                    Some(pos) => out[pos] = strategic_merge(&out[pos], it, keys, path)?,
                    None => out.push(clean(it, path)?),
                }
            }
            Ok(Value::Array(out))
        }
        Some(None) if !replace_all => {
            let mut out = base.unwrap_or_default();
            for it in items {
                if !out.contains(it) {
                    out.push(it.clone());
                }
            }
            Ok(Value::Array(out))
        }
        _ => {
            let mut out = Vec::new();
            for it in items {
                if it.get(DIRECTIVE).is_some() {
                    continue;
                }
                out.push(clean(it, path)?);
            }
            Ok(Value::Array(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(p: &[String]) -> Option<Option<String>> {
        match p.last().map(String::as_str) {
            Some("containers") => Some(Some("name".into())),
            Some("finalizers") => Some(None),
            _ => None,
        }
    }

    #[test]
    fn strategic() {
        let orig = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}], "args": [1, 2]}, "metadata": {"finalizers": ["x"]}});
        let patch = json!({"$setElementOrder/x": [], "spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "a", "image": "3"}, {"name": "c", "image": "4"}], "args": [3]}, "metadata": {"finalizers": ["y"]}});
        let out = strategic_merge(&orig, &patch, &keys, &mut Vec::new()).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "b", "image": "2"}, {"name": "a", "image": "3"}, {"name": "c", "image": "4"}], "args": [3]}, "metadata": {"finalizers": ["x", "y"]}})
        );
        let del = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}, "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}});
        let out = strategic_merge(&out, &del, &keys, &mut Vec::new()).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "2"}, {"name": "c", "image": "4"}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
    }

    #[test]
    fn merge_and_json_patch() {
        let mut v = json!({"a": {"b": 1, "c": 2}});
        merge_patch(&mut v, &json!({"a": {"b": null, "d": 3}}));
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}}));
        json_patch(
            &mut v,
            &json!([{"op": "replace", "path": "/a/c", "value": 5}]),
        )
        .unwrap();
        assert_eq!(v["a"]["c"], 5);
        assert!(json_patch(&mut v, &json!([{"op": "test", "path": "/a/c", "value": 6}])).is_err());
    }
}
