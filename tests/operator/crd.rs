//! The CRD is one an API server accepts: structural schema, valid list markers and defaults,
//! CEL rules that compile, and `crds/` in sync with `stompgate crd`.

use kube::CustomResourceExt;
use serde_json::Value;
use stompgate::crd::{StompGateway, crd_yaml};

fn schema() -> Value {
    let crd = StompGateway::crd();
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("openAPIV3Schema");
    serde_json::to_value(schema).expect("schema json")
}

/// Walks the schema the way the API server's structural-schema check does and collects every
/// violation with its path.
fn check(node: &Value, path: &str, in_atomic_list: bool, errs: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        errs.push(format!("{path}: schema node is not an object"));
        return;
    };
    for banned in [
        "$ref",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "definitions",
        "$defs",
        "$schema",
    ] {
        if obj.contains_key(banned) {
            errs.push(format!(
                "{path}: `{banned}` is not allowed in a structural schema"
            ));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let ty = obj.get("type").and_then(Value::as_str);
    if ty.is_none() && !int_or_string {
        errs.push(format!("{path}: missing type"));
    }
    if let Some(t) = ty
        && !["object", "array", "string", "integer", "number", "boolean"].contains(&t)
    {
        errs.push(format!("{path}: bad type {t}"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        errs.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    if let Some(ap) = obj.get("additionalProperties") {
        if ap.is_boolean() {
            errs.push(format!("{path}: additionalProperties must be a schema"));
        } else {
            check(ap, &format!("{path}.*"), in_atomic_list, errs);
        }
    }
    if let Some(d) = obj.get("default") {
        check_default(d, node, path, errs);
    }
    if let Some(e) = obj.get("enum").and_then(Value::as_array) {
        for v in e {
            if !matches_type(v, ty) {
                errs.push(format!("{path}: enum value {v} does not match type"));
            }
        }
    }
    // Transition rules (oldSelf) only work where the API server can correlate old and new.
    if let Some(rules) = obj
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            let rule = r.get("rule").and_then(Value::as_str).unwrap_or_default();
            if rule.is_empty() {
                errs.push(format!("{path}: empty rule"));
            }
            if rule.contains("oldSelf") && in_atomic_list {
                errs.push(format!(
                    "{path}: transition rule under a non-map list: {rule}"
                ));
            }
            if r.get("message")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errs.push(format!("{path}: rule without a message: {rule}"));
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        if ty != Some("object") {
            errs.push(format!("{path}: properties on a non-object"));
        }
        for (k, v) in props {
            check(v, &format!("{path}.{k}"), in_atomic_list, errs);
        }
    }
    if ty == Some("array") {
        let list_type = obj.get("x-kubernetes-list-type").and_then(Value::as_str);
        let Some(items) = obj.get("items") else {
            errs.push(format!("{path}: array without items"));
            return;
        };
        match list_type {
            Some("map") => {
                let keys = obj
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if keys.is_empty() {
                    errs.push(format!("{path}: list-type map without list-map-keys"));
                }
                let required: Vec<&str> = items
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for k in keys.iter().filter_map(Value::as_str) {
                    let prop = &items["properties"][k];
                    if prop.is_null() {
                        errs.push(format!("{path}: map key {k} is not a property"));
                    } else if !required.contains(&k) && prop.get("default").is_none() {
                        errs.push(format!("{path}: map key {k} must be required or defaulted"));
                    } else if !["string", "integer", "boolean"]
                        .contains(&prop["type"].as_str().unwrap_or_default())
                    {
                        errs.push(format!("{path}: map key {k} must be scalar"));
                    }
                }
                check(items, &format!("{path}[]"), in_atomic_list, errs);
            }
            Some("set") => {
                if !["string", "integer", "boolean"]
                    .contains(&items["type"].as_str().unwrap_or_default())
                {
                    errs.push(format!("{path}: set list of non-scalars"));
                }
                check(items, &format!("{path}[]"), true, errs);
            }
            Some("atomic") => check(items, &format!("{path}[]"), true, errs),
            other => errs.push(format!(
                "{path}: missing/bad x-kubernetes-list-type {other:?}"
            )),
        }
    }
    if preserve && ty != Some("object") {
        errs.push(format!("{path}: preserve-unknown-fields on a non-object"));
    }
}

fn matches_type(v: &Value, ty: Option<&str>) -> bool {
    match ty {
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        _ => true,
    }
}

/// A default must be valid against its own schema (the API server rejects the CRD otherwise)
/// and may not contain fields the schema would prune.
fn check_default(d: &Value, node: &Value, path: &str, errs: &mut Vec<String>) {
    let ty = node.get("type").and_then(Value::as_str);
    if !matches_type(d, ty) {
        errs.push(format!("{path}: default {d} does not match type {ty:?}"));
        return;
    }
    if let Some(e) = node.get("enum").and_then(Value::as_array)
        && !e.contains(d)
    {
        errs.push(format!("{path}: default {d} not in enum"));
    }
    if let (Some(n), Some(min)) = (d.as_f64(), node.get("minimum").and_then(Value::as_f64))
        && n < min
    {
        errs.push(format!("{path}: default below minimum"));
    }
    if let (Some(n), Some(max)) = (d.as_f64(), node.get("maximum").and_then(Value::as_f64))
        && n > max
    {
        errs.push(format!("{path}: default above maximum"));
    }
    if let Some(map) = d.as_object()
        && let Some(props) = node.get("properties").and_then(Value::as_object)
    {
        for (k, v) in map {
            match props.get(k) {
                Some(p) => check_default(v, p, &format!("{path}.{k}"), errs),
                None => errs.push(format!("{path}: default has unknown field {k}")),
            }
        }
    }
}

#[test]
fn crd_does_not_panic_and_names_are_right() {
    let crd = StompGateway::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("stompgateways.stompgate.io")
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["stompgw".to_string()])
    );
    assert_eq!(
        crd.spec.names.categories,
        Some(vec!["messaging".to_string()])
    );
    let v = &crd.spec.versions[0];
    let sub = v.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().expect("scale");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    let cols: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        [
            "Ready",
            "Replicas",
            "Endpoint",
            "External",
            "Conns/Pod",
            "HPA-Current",
            "HPA-Desired",
            "Age"
        ]
    );
    // The autoscaling columns are for `-o wide` only.
    for c in v.additional_printer_columns.iter().flatten() {
        let wide = c.name.starts_with("HPA-") || c.name == "Conns/Pod";
        assert_eq!(c.priority, wide.then_some(1), "{}", c.name);
        if wide {
            assert!(
                c.json_path.starts_with(".status.autoscaling."),
                "{}",
                c.json_path
            );
        }
    }
}

#[test]
fn schema_is_structural() {
    let s = schema();
    let mut errs = Vec::new();
    // The root must be an object with only apiVersion/kind/metadata/spec/status.
    check(&s, "", false, &mut errs);
    let root_props: Vec<&String> = s["properties"].as_object().expect("props").keys().collect();
    for k in &root_props {
        assert!(
            ["apiVersion", "kind", "metadata", "spec", "status"].contains(&k.as_str()),
            "unexpected root property {k}"
        );
    }
    assert!(
        errs.is_empty(),
        "non-structural schema:\n{}",
        errs.join("\n")
    );
}

#[test]
fn cel_rules_compile_and_stay_within_cost() {
    let s = schema();
    let compiled = kube::core::cel::compile_schema(&s);
    fn walk(c: &kube::core::cel::CompiledSchema, path: &str, errs: &mut Vec<String>) {
        for e in c.compilation_errors() {
            errs.push(format!("{path}: {e}"));
        }
        for (k, v) in &c.properties {
            walk(v, &format!("{path}.{k}"), errs);
        }
        if let Some(i) = &c.items {
            walk(i, &format!("{path}[]"), errs);
        }
        if let Some(a) = &c.additional_properties {
            walk(a, &format!("{path}.*"), errs);
        }
    }
    let mut errs = Vec::new();
    walk(&compiled, "", &mut errs);
    assert!(
        errs.is_empty(),
        "CEL rules that do not compile:\n{}",
        errs.join("\n")
    );
    let n = serde_json::to_string(&s)
        .expect("json")
        .matches("\"rule\"")
        .count();
    assert!(n >= 10, "expected the CEL invariants, found {n} rules");
}

#[test]
fn crd_is_small() {
    let y = crd_yaml().expect("yaml");
    assert!(y.len() < 100_000, "CRD is {} bytes", y.len());
}

#[test]
fn crds_dir_matches_stompgate_crd_output() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/stompgate.io_stompgateways.yaml"
    );
    let want = crd_yaml().expect("yaml");
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "{path} is stale: regenerate it with `cargo run -q -- crd > crds/stompgate.io_stompgateways.yaml`"
    );
    for copy in [
        "/charts/stompgate/crds/stompgate.io_stompgateways.yaml",
        "/deploy/crds/stompgate.io_stompgateways.yaml",
    ] {
        let p = format!("{}{copy}", env!("CARGO_MANIFEST_DIR"));
        let have = std::fs::read_to_string(&p).unwrap_or_default();
        assert!(
            have == want,
            "{p} is stale: run scripts/check-packaging.sh --update"
        );
    }
}

#[test]
fn the_structural_check_catches_what_an_api_server_rejects() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "list": {"type": "array", "items": {"type": "string"}},
            "mapList": {"type": "array", "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["k"],
                        "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
            "both": {"type": "object", "properties": {"a": {"type": "string"}},
                     "additionalProperties": {"type": "string"}},
            "anyof": {"type": "string", "anyOf": [{"type": "string"}]},
            "baddefault": {"type": "integer", "default": "x"},
            "setOld": {"type": "array", "x-kubernetes-list-type": "set",
                       "items": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "m"}]}}
        }
    });
    let mut errs = Vec::new();
    check(&bad, "", false, &mut errs);
    let joined = errs.join("\n");
    for want in [
        ".untyped: missing type",
        ".list: missing/bad x-kubernetes-list-type",
        ".mapList: map key k must be required or defaulted",
        ".both: properties and additionalProperties together",
        ".anyof: `anyOf` is not allowed",
        ".baddefault: default \"x\" does not match type",
        ".setOld[]: transition rule under a non-map list",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
}
