//! The StompGateway API reference (`docs/api-reference.md`), generated from the CRD schema so
//! that it cannot drift from what the API server enforces. Regenerate it with
//! `cargo run -q --example api-reference > docs/api-reference.md`; `tests/docs.rs` fails when the
//! checked-in file differs.
//!
//! It reads only the CustomResourceDefinition (as JSON), so a new field, default, enum value or
//! CEL rule in `src/crd/` shows up here without touching this file.

use kube::CustomResourceExt;
use serde_json::Value;

use super::StompGateway;

/// The command that regenerates the reference; named in the file and in the test's message.
pub const REGENERATE: &str = "cargo run -q --example api-reference > docs/api-reference.md";

/// Why the reference could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("the CRD does not serialize to JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the CRD has no `{0}` field")]
    Missing(&'static str),
}

/// The reference for the StompGateway CRD this build serves (`stompgate crd`).
pub fn markdown() -> Result<String, ReferenceError> {
    markdown_for(&serde_json::to_value(StompGateway::crd())?)
}

/// The reference for any CRD: a header, the printer columns, then one table per version with
/// every field of `spec` and `status`, and the CEL rules with their messages. `crd` is a
/// CustomResourceDefinition as JSON.
pub fn markdown_for(crd: &Value) -> Result<String, ReferenceError> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let kind = str_of(&names["kind"]).ok_or(ReferenceError::Missing("spec.names.kind"))?;
    let group = str_of(&spec["group"]).ok_or(ReferenceError::Missing("spec.group"))?;
    let versions = spec["versions"]
        .as_array()
        .ok_or(ReferenceError::Missing("spec.versions"))?;

    let mut out = String::new();
    out.push_str(&format!("# {kind} API reference\n\n"));
    out.push_str(&format!(
        "<!-- Generated from the CRD schema (src/crd/) by `{REGENERATE}`.\n     \
         Do not edit: tests/docs.rs fails when this file is out of date. -->\n\n"
    ));
    let short = list_of(&names["shortNames"]);
    let categories = list_of(&names["categories"]);
    out.push_str(&format!(
        "Group `{group}`, kind `{kind}`, plural `{}`{}{}, {}.",
        str_of(&names["plural"]).unwrap_or_default(),
        if short.is_empty() {
            String::new()
        } else {
            format!(", short names {}", code_list(&short))
        },
        if categories.is_empty() {
            String::new()
        } else {
            format!(", categories {}", code_list(&categories))
        },
        str_of(&spec["scope"])
            .unwrap_or("Namespaced")
            .to_lowercase(),
    ));
    out.push_str(
        " What the fields do in practice, the conditions and the kstatus contract: \
         [operator.md](operator.md).\n",
    );

    for version in versions {
        let name = str_of(&version["name"]).unwrap_or_default();
        out.push_str(&format!("\n## `{group}/{name}`\n\n"));
        let flags: Vec<String> = [("served", "served"), ("storage", "stored")]
            .iter()
            .filter(|(k, _)| version[*k] == Value::Bool(true))
            .map(|(_, v)| (*v).to_string())
            .collect();
        if !flags.is_empty() {
            out.push_str(&format!("{}.", capitalize(&flags.join(" and "))));
        }
        subresources(&version["subresources"], &mut out);
        out.push('\n');
        printer_columns(&version["additionalPrinterColumns"], &mut out);

        let schema = &version["schema"]["openAPIV3Schema"];
        if let Some(d) = str_of(&schema["description"]) {
            out.push_str(&format!("\n{}\n", one_line(d)));
        }
        let mut rules = Vec::new();
        for top in ["spec", "status"] {
            let node = &schema["properties"][top];
            if node.is_null() {
                continue;
            }
            let required = required_of(schema).contains(&top.to_string());
            out.push_str(&format!("\n### `{top}`\n\n"));
            out.push_str("| Field | Type | Default | Validation | Description |\n");
            out.push_str("| --- | --- | --- | --- | --- |\n");
            field_rows(node, top, required, &mut out, &mut rules);
        }
        if !rules.is_empty() {
            out.push_str(
                "\n### Validation rules\n\n\
                 CEL rules (`x-kubernetes-validations`) the API server and `stompgate lint` run; \
                 a rule with `oldSelf` applies to updates only.\n\n\
                 | Field | Rule | Message |\n| --- | --- | --- |\n",
            );
            for (path, rule, message) in rules {
                out.push_str(&format!(
                    "| `{}` | `{}` | {} |\n",
                    cell(&path),
                    cell(&rule),
                    cell(&message)
                ));
            }
        }
    }
    Ok(out)
}

fn subresources(sub: &Value, out: &mut String) {
    let Some(map) = sub.as_object() else { return };
    let mut parts = Vec::new();
    if map.contains_key("status") {
        parts.push("`status`".to_string());
    }
    if let Some(scale) = map.get("scale") {
        let mut paths = Vec::new();
        for (key, what) in [
            ("specReplicasPath", "spec replicas"),
            ("statusReplicasPath", "status replicas"),
            ("labelSelectorPath", "selector"),
        ] {
            if let Some(p) = str_of(&scale[key]) {
                paths.push(format!("{what} `{p}`"));
            }
        }
        parts.push(format!("`scale` ({})", paths.join(", ")));
    }
    if !parts.is_empty() {
        out.push_str(&format!(" Subresources: {}.", parts.join(", ")));
    }
}

fn printer_columns(columns: &Value, out: &mut String) {
    let Some(columns) = columns.as_array().filter(|c| !c.is_empty()) else {
        return;
    };
    out.push_str("\n`kubectl get` columns:\n\n| Column | Type | JSONPath |\n| --- | --- | --- |\n");
    for c in columns {
        out.push_str(&format!(
            "| {} | {} | `{}` |\n",
            cell(str_of(&c["name"]).unwrap_or_default()),
            cell(str_of(&c["type"]).unwrap_or_default()),
            cell(str_of(&c["jsonPath"]).unwrap_or_default()),
        ));
    }
}

/// One row for `node` at `path`, then its fields (depth first, in schema order).
fn field_rows(
    node: &Value,
    path: &str,
    required: bool,
    out: &mut String,
    rules: &mut Vec<(String, String, String)>,
) {
    let mut checks = Vec::new();
    if required {
        checks.push("required".to_string());
    }
    checks.extend(constraints(node));
    for r in node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let rule = str_of(&r["rule"]).unwrap_or_default();
        if rule == "self == oldSelf" {
            checks.push("immutable".to_string());
        }
        let message = str_of(&r["message"])
            .or_else(|| str_of(&r["messageExpression"]))
            .unwrap_or_default();
        rules.push((path.to_string(), rule.to_string(), message.to_string()));
    }
    out.push_str(&format!(
        "| `{}` | {} | {} | {} | {} |\n",
        cell(path),
        cell(&type_of(node)),
        default_of(node),
        cell(&checks.join("; ")),
        cell(&one_line(str_of(&node["description"]).unwrap_or_default())),
    ));

    let required = required_of(node);
    if let Some(props) = node["properties"].as_object() {
        for (name, child) in props {
            field_rows(
                child,
                &format!("{path}.{name}"),
                required.contains(name),
                out,
                rules,
            );
        }
    }
    let items = &node["items"];
    if items.is_object() && (items.get("properties").is_some() || has_rules(items)) {
        field_rows(items, &format!("{path}[]"), false, out, rules);
    }
    let values = &node["additionalProperties"];
    if values.is_object() && (values.get("properties").is_some() || has_rules(values)) {
        field_rows(values, &format!("{path}.*"), false, out, rules);
    }
}

fn has_rules(node: &Value) -> bool {
    node["x-kubernetes-validations"]
        .as_array()
        .is_some_and(|r| !r.is_empty())
}

/// `string`, `integer (int32)`, `map (keyed by name) of object`, `set of string`...
fn type_of(node: &Value) -> String {
    if node["x-kubernetes-int-or-string"] == Value::Bool(true) {
        return "integer or string".to_string();
    }
    let ty = str_of(&node["type"]).unwrap_or("any");
    let base = match str_of(&node["format"]) {
        Some(f) => format!("{ty} ({f})"),
        None => ty.to_string(),
    };
    match ty {
        "array" => {
            let of = type_of(&node["items"]);
            match str_of(&node["x-kubernetes-list-type"]) {
                Some("map") => format!(
                    "list of {of}, keyed by {}",
                    list_of(&node["x-kubernetes-list-map-keys"]).join(", ")
                ),
                Some("set") => format!("set of {of}"),
                _ => format!("list of {of}"),
            }
        }
        "object" if node["additionalProperties"].is_object() => {
            format!("map of {}", type_of(&node["additionalProperties"]))
        }
        "object" if node["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) => {
            "object (any fields)".to_string()
        }
        "object" if node["x-kubernetes-embedded-resource"] == Value::Bool(true) => {
            "object (an embedded resource)".to_string()
        }
        _ => base,
    }
}

fn constraints(node: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(values) = node["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", scalar(v))).collect();
        out.push(format!("one of {}", values.join(", ")));
    }
    for (low, high, what) in [
        ("minimum", "maximum", ""),
        ("minLength", "maxLength", "length "),
        ("minItems", "maxItems", "items "),
        ("minProperties", "maxProperties", "entries "),
    ] {
        match (number(&node[low]), number(&node[high])) {
            (Some(a), Some(b)) => out.push(format!("{what}{a}-{b}")),
            (Some(a), None) => out.push(format!("{what}>= {a}")),
            (None, Some(b)) => out.push(format!("{what}<= {b}")),
            (None, None) => {}
        }
    }
    if let Some(p) = str_of(&node["pattern"]) {
        out.push(format!("pattern `{p}`"));
    }
    out
}

fn default_of(node: &Value) -> String {
    match &node["default"] {
        Value::Null => String::new(),
        // An object's default is its fields' defaults, listed on their own rows.
        Value::Object(m) if !m.is_empty() && node.get("properties").is_some() => {
            "fields' defaults".to_string()
        }
        v => format!("`{}`", cell(&scalar(v))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if s.is_empty() => "\"\"".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(_) => number(v).unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

/// Integral numbers without the `.0` the schema's floats carry.
fn number(v: &Value) -> Option<String> {
    if let Some(i) = v.as_i64() {
        return Some(i.to_string());
    }
    let f = v.as_f64()?;
    if f.fract() == 0.0 && f.abs() < 1e15 {
        Some(format!("{}", f as i64))
    } else {
        Some(f.to_string())
    }
}

fn required_of(node: &Value) -> Vec<String> {
    list_of(&node["required"])
}

fn list_of(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn code_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn str_of(v: &Value) -> Option<&str> {
    v.as_str()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Text safe inside a Markdown table cell: one line, pipes escaped (also inside code spans,
/// as GitHub's tables require).
fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(schema: Value) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.example.org"},
            "spec": {
                "group": "example.org",
                "names": {"kind": "Thing", "plural": "things", "shortNames": ["th"]},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": schema}}]
            }
        })
    }

    #[test]
    fn every_field_type_default_constraint_and_rule_is_listed() {
        let md = markdown_for(&crd(json!({
            "type": "object",
            "required": ["spec"],
            "properties": {"spec": {
                "type": "object",
                "required": ["mode"],
                "properties": {
                    "mode": {"type": "string", "enum": ["A", "B"], "description": "The\n mode."},
                    "port": {"type": "integer", "format": "int32", "minimum": 1.0,
                             "maximum": 65535.0, "default": 80},
                    "keys": {"type": "array", "x-kubernetes-list-type": "map",
                             "x-kubernetes-list-map-keys": ["name"],
                             "items": {"type": "object", "properties": {
                                 "name": {"type": "string", "x-kubernetes-validations": [
                                     {"rule": "self == oldSelf", "message": "name is immutable"}]}}}},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "expr": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "self == 'a' || self == 'b'", "message": "a or b"}]}
                }
            }}
        })))
        .expect("markdown");
        for want in [
            "# Thing API reference",
            "short names `th`",
            "| `spec` | object |  | required |",
            "| `spec.mode` | string |  | required; one of `A`, `B` | The mode. |",
            "| `spec.port` | integer (int32) | `80` | 1-65535 |",
            "| `spec.keys` | list of object, keyed by name |",
            "| `spec.keys[].name` | string |  | immutable |",
            "| `spec.labels` | map of string |",
            "| `spec.expr` | `self == 'a' \\|\\| self == 'b'` | a or b |",
        ] {
            assert!(md.contains(want), "missing {want:?} in:\n{md}");
        }
    }

    #[test]
    fn what_is_not_a_crd_is_an_error_naming_the_missing_field() {
        for (v, want) in [
            (json!({}), "spec.names.kind"),
            (json!({"spec": {"names": {"kind": "Thing"}}}), "spec.group"),
            (
                json!({"spec": {"names": {"kind": "Thing"}, "group": "g", "versions": {}}}),
                "spec.versions",
            ),
        ] {
            let err = markdown_for(&v).expect_err("not a CRD");
            assert_eq!(err.to_string(), format!("the CRD has no `{want}` field"));
        }
    }

    #[test]
    fn the_stompgateway_reference_covers_spec_status_and_rules() {
        let md = markdown().expect("markdown");
        for want in [
            "# StompGateway API reference",
            "### `spec`",
            "### `status`",
            "### Validation rules",
            "| `spec.rabbitmq.host` |",
            REGENERATE,
        ] {
            assert!(md.contains(want), "missing {want:?}");
        }
    }
}
