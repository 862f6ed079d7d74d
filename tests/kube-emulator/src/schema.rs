//! Structural-schema handling for custom resources, in the API server's order: prune unknown
//! fields (and nulls of non-nullable fields), apply defaults, validate the OpenAPI v3 subset,
//! then run the CEL rules (`x-kubernetes-validations`, through kube's `cel` feature).

use serde_json::{Map, Value};

use crate::util::Cause;

/// The schema node at a field path (names only; arrays are stepped through implicitly).
pub fn node_at<'a>(schema: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = schema;
    for name in path {
        while node.get("type").and_then(Value::as_str) == Some("array") {
            node = node.get("items")?;
        }
        node = match node.get("properties").and_then(|p| p.get(name)) {
            Some(n) => n,
            None => node.get("additionalProperties").filter(|a| a.is_object())?,
        };
    }
    Some(node)
}

fn preserves(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn nullable(schema: &Value) -> bool {
    schema.get("nullable").and_then(Value::as_bool) == Some(true)
}

/// Removes unknown fields (recording their paths) and nulls of non-nullable fields.
pub fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let additional_any = schema.get("additionalProperties") == Some(&Value::Bool(true));
            let keep_unknown = preserves(schema)
                || additional_any
                || schema.get("x-kubernetes-int-or-string").is_some();
            let embedded = schema
                .get("x-kubernetes-embedded-resource")
                .and_then(Value::as_bool)
                == Some(true);
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child_path = join(path, &k);
                let child_schema = props.and_then(|p| p.get(&k)).or(additional);
                match child_schema {
                    Some(cs) => {
                        if m.get(&k).is_some_and(Value::is_null) && !nullable(cs) {
                            m.remove(&k);
                            continue;
                        }
                        if let Some(c) = m.get_mut(&k) {
                            prune(cs, c, &child_path, unknown);
                        }
                    }
                    None => {
                        if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                            continue;
                        }
                        if !keep_unknown {
                            unknown.push(child_path);
                            m.remove(&k);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(is, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Applies `default`s (a default is itself defaulted, as in the API server).
pub fn apply_defaults(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, ps) in props {
                    if let Some(d) = ps.get("default") {
                        let missing = match m.get(k) {
                            None => true,
                            Some(Value::Null) => !nullable(ps),
                            _ => false,
                        };
                        if missing {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, c) in m.iter_mut() {
                if let Some(cs) = props.and_then(|p| p.get(k)).or(additional) {
                    apply_defaults(cs, c);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for item in items {
                    apply_defaults(is, item);
                }
            }
        }
        _ => {}
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

/// What structured-merge-diff finds when it converts an apply patch to its typed form (before
/// any merge, defaulting or validation): fields the schema does not declare and values of the
/// wrong type, as `.spec.x: field not declared in schema` or `.spec.n: expected numeric (int or
/// float), got string`. Fields under `x-kubernetes-preserve-unknown-fields` or
/// `additionalProperties` are free.
pub fn typed_errors(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    if v.is_null() || schema.get("x-kubernetes-int-or-string").is_some() {
        if !(v.is_null() || v.is_string() || v.is_i64() || v.is_u64()) {
            out.push(format!(
                "{path}: expected numeric (int or float) or string, got {}",
                smd_type(v)
            ));
        }
        return;
    }
    let expected = match schema.get("type").and_then(Value::as_str) {
        Some("integer" | "number") if !v.is_number() => Some("numeric (int or float)"),
        Some("string") if !v.is_string() => Some("string"),
        Some("boolean") if !v.is_boolean() => Some("boolean"),
        Some("array") if !v.is_array() => Some("list"),
        Some("object") if !v.is_object() => Some("map"),
        _ => None,
    };
    if let Some(e) = expected {
        out.push(format!("{path}: expected {e}, got {}", smd_type(v)));
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let free = preserves(schema)
                || schema.get("additionalProperties") == Some(&Value::Bool(true))
                || (props.is_none() && additional.is_none());
            let embedded = schema
                .get("x-kubernetes-embedded-resource")
                .and_then(Value::as_bool)
                == Some(true);
            for (k, c) in m {
                let child = format!("{path}.{k}");
                match props.and_then(|p| p.get(k)).or(additional) {
                    Some(cs) => typed_errors(cs, c, &child, out),
                    None if free => {}
                    None if embedded
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    None => out.push(format!("{child}: field not declared in schema")),
                }
            }
        }
        Value::Array(items) => {
            let keys: Vec<&str> = match schema.get("x-kubernetes-list-type").and_then(Value::as_str)
            {
                Some("map") => schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            if let Some(is) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    // Items of a keyed list are named by their key, as structured-merge-diff does.
                    let elem = if keys.is_empty() {
                        format!("[{i}]")
                    } else {
                        let parts: Vec<String> = keys
                            .iter()
                            .filter_map(|k| item.get(*k).map(|x| format!("{k}={x}")))
                            .collect();
                        format!("[{}]", parts.join(","))
                    };
                    typed_errors(is, item, &format!("{path}{elem}"), out);
                }
            }
        }
        _ => {}
    }
}

/// How structured-merge-diff names the type of an unstructured value.
fn smd_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int64",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

/// Validates against the OpenAPI v3 subset structural schemas allow.
pub fn validate(schema: &Value, v: &Value, path: &str, out: &mut Vec<Cause>) {
    if v.is_null() {
        if !nullable(schema) {
            out.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!(
                    "{path}: Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    schema
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("object")
                ),
            ));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            out.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!(
                    "{path}: Invalid value: {}: {path} in body must be of type integer,string: {:?}",
                    short(v),
                    type_name(v)
                ),
            ));
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let actual = type_name(v);
    let type_ok = match ty {
        "" => true,
        "number" => v.is_number(),
        t => t == actual,
    };
    if !type_ok {
        out.push(Cause::new(
            "FieldValueTypeInvalid",
            path,
            format!(
                "{path}: Invalid value: {:?}: {path} in body must be of type {ty}: {:?}",
                actual, actual
            ),
        ));
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        let allowed: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        out.push(Cause::new(
            "FieldValueNotSupported",
            path,
            format!(
                "{path}: Unsupported value: {}: supported values: {}",
                v,
                allowed.join(", ")
            ),
        ));
    }
    if let Some(n) = v.as_f64() {
        let format = schema.get("format").and_then(Value::as_str).unwrap_or("");
        if format == "int32" && (n < i32::MIN as f64 || n > i32::MAX as f64) {
            out.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!("{path}: Invalid value: {v}: {path} in body must be of type int32"),
            ));
        }
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            let excl = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
            if n < min || (excl && n == min) {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "{path}: Invalid value: {v}: {path} in body should be greater than {}{}",
                        if excl { "" } else { "or equal to " },
                        num(min)
                    ),
                ));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            let excl = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
            if n > max || (excl && n == max) {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "{path}: Invalid value: {v}: {path} in body should be less than {}{}",
                        if excl { "" } else { "or equal to " },
                        num(max)
                    ),
                ));
            }
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            out.push(Cause::new(
                "FieldValueTooLong",
                path,
                format!("{path}: Too long: may not be more than {max} bytes"),
            ));
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            out.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!(
                    "{path}: Invalid value: {s:?}: {path} in body should be at least {min} chars long"
                ),
            ));
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            match pattern_matches(p, s) {
                Ok(false) => out.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!("{path}: Invalid value: {s:?}: {path} in body should match '{p}'"),
                )),
                Ok(true) => {}
                Err(e) => out.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!("{path}: Invalid value: {p:?}: the emulator cannot compile this pattern: {e}"),
                )),
            }
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time")
            && s.parse::<k8s_openapi::jiff::Timestamp>().is_err()
        {
            out.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!(
                    "{path}: Invalid value: {s:?}: {path} in body must be of type date-time: {s:?}"
                ),
            ));
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            out.push(Cause::new(
                "FieldValueTooMany",
                path,
                format!(
                    "{path}: Too many: {}: must have at most {max} items",
                    items.len()
                ),
            ));
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            out.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!(
                    "{path}: Invalid value: {}: {path} in body should have at least {min} items",
                    items.len()
                ),
            ));
        }
        if let Some(is) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(is, item, &format!("{path}[{i}]"), out);
            }
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        out.push(Cause::new(
                            "FieldValueDuplicate",
                            format!("{path}[{i}]"),
                            format!("{path}[{i}]: Duplicate value: {item}"),
                        ));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let key_of = |item: &Value| -> Vec<Value> {
                    keys.iter()
                        .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                        .collect()
                };
                for (i, item) in items.iter().enumerate() {
                    let k = key_of(item);
                    if items[..i].iter().any(|o| key_of(o) == k) {
                        let shown: Map<String, Value> = keys
                            .iter()
                            .zip(k.iter())
                            .map(|(a, b)| (a.to_string(), b.clone()))
                            .collect();
                        out.push(Cause::new(
                            "FieldValueDuplicate",
                            format!("{path}[{i}]"),
                            format!("{path}[{i}]: Duplicate value: {}", Value::Object(shown)),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(m) = v.as_object() {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !m.contains_key(r) {
                let p = join(path, r);
                out.push(Cause::new(
                    "FieldValueRequired",
                    p.clone(),
                    format!("{p}: Required value"),
                ));
            }
        }
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && m.len() as u64 > max
        {
            out.push(Cause::new(
                "FieldValueTooMany",
                path,
                format!(
                    "{path}: Too many: {}: must have at most {max} items",
                    m.len()
                ),
            ));
        }
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties").filter(|a| a.is_object());
        for (k, c) in m {
            if let Some(cs) = props.and_then(|p| p.get(k)).or(additional) {
                validate(cs, c, &join(path, k), out);
            }
        }
    }
    // Value validations in junctors (structural schemas allow them without types).
    for (key, need) in [("allOf", usize::MAX), ("anyOf", 1), ("oneOf", 0)] {
        if let Some(list) = schema.get(key).and_then(Value::as_array) {
            let passing = list
                .iter()
                .filter(|s| {
                    let mut e = Vec::new();
                    validate(s, v, path, &mut e);
                    e.is_empty()
                })
                .count();
            let ok = match need {
                usize::MAX => passing == list.len(),
                1 => passing >= 1,
                _ => passing == 1,
            };
            if !ok {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "{path}: Invalid value: {}: {path} in body must validate {key}",
                        short(v)
                    ),
                ));
            }
        }
    }
    if let Some(not) = schema.get("not") {
        let mut e = Vec::new();
        validate(not, v, path, &mut e);
        if e.is_empty() {
            out.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!(
                    "{path}: Invalid value: {}: {path} in body must not validate the schema (not)",
                    short(v)
                ),
            ));
        }
    }
}

fn num(f: f64) -> String {
    if f.fract() == 0.0 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

/// Runs the CEL rules of `schema` on the object (`old` for transition rules).
pub fn validate_cel(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    validate_cel_compiled(&kube::core::cel::compile_schema(schema), obj, old)
}

thread_local! {
    /// A validator has every Kubernetes CEL function registered: made once per thread, not
    /// once per request.
    static VALIDATOR: kube::core::cel::Validator = kube::core::cel::Validator::new();
    /// Compiled `pattern`s.
    static PATTERNS: std::cell::RefCell<std::collections::HashMap<String, Result<regex::Regex, String>>> =
        Default::default();
}

/// A schema's `pattern`, compiled once.
fn pattern_matches(pattern: &str, s: &str) -> Result<bool, String> {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let re = cache
            .entry(pattern.to_string())
            .or_insert_with(|| regex::Regex::new(pattern).map_err(|e| e.to_string()));
        re.as_ref().map(|re| re.is_match(s)).map_err(Clone::clone)
    })
}

/// [`validate_cel`] with the rules compiled beforehand ([`kube::core::cel::compile_schema`]).
pub fn validate_cel_compiled(
    compiled: &kube::core::cel::CompiledSchema,
    obj: &Value,
    old: Option<&Value>,
) -> Vec<Cause> {
    match VALIDATOR.with(|v| v.validate_compiled(compiled, obj, old)) {
        Ok(()) => Vec::new(),
        Err(errs) => errs
            .iter()
            .map(|e| {
                let field = e.field_path.trim_start_matches('.').to_string();
                let mut cur = Some(obj);
                for part in field.split('.') {
                    let (name, idx) = match part.split_once('[') {
                        Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                        None => (part, None),
                    };
                    cur = cur.and_then(|c| c.get(name));
                    if let Some(i) = idx {
                        cur = cur.and_then(|c| c.get(i));
                    }
                }
                let ty = cur.map(type_name).unwrap_or("object");
                let reason = match e.reason.as_deref() {
                    Some("FieldValueForbidden") => "FieldValueForbidden",
                    Some("FieldValueRequired") => "FieldValueRequired",
                    Some("FieldValueDuplicate") => "FieldValueDuplicate",
                    _ => "FieldValueInvalid",
                };
                Cause::new(
                    reason,
                    field.clone(),
                    format!("{field}: Invalid value: \"{ty}\": {}", e.message),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
            "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
            "auth": {"type": "object", "default": {}, "properties": {"user": {"type": "string", "default": "guest"}}},
            "list": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"], "items": {"type": "object", "properties": {"name": {"type": "string"}, "v": {"type": "integer", "default": 5}}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }, "x-kubernetes-validations": [{"rule": "self.replicas != 7", "message": "seven is unlucky"}]}}})
    }

    #[test]
    fn prunes_defaults_and_validates() {
        let s = schema();
        let mut o = json!({"spec": {"replicas": null, "bogus": 1, "list": [{"name": "a"}], "free": {"x": 1}}});
        let mut unknown = Vec::new();
        prune(&s, &mut o, "", &mut unknown);
        assert_eq!(unknown, vec!["spec.bogus"]);
        apply_defaults(&s, &mut o);
        assert_eq!(
            o,
            json!({"spec": {"replicas": 1, "mode": "A", "auth": {"user": "guest"}, "list": [{"name": "a", "v": 5}], "free": {"x": 1}}})
        );
        let mut errs = Vec::new();
        validate(
            &s,
            &json!({"spec": {"replicas": 11, "mode": "C", "list": [{"name": "a"}, {"name": "a"}]}}),
            "",
            &mut errs,
        );
        let msgs: Vec<&str> = errs.iter().map(|c| c.message.as_str()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        for want in [
            "less than or equal to 10",
            "Unsupported value: \"C\"",
            "Duplicate value",
        ] {
            assert!(msgs.iter().any(|m| m.contains(want)), "{want}: {msgs:?}");
        }
        let cel = validate_cel(&s, &json!({"spec": {"replicas": 7}}), None);
        assert_eq!(cel.len(), 1);
        assert!(cel[0].message.contains("seven is unlucky"), "{:?}", cel[0]);
    }
}
