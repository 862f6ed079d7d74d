//! Offline validation of StompGateway objects: the CRD's OpenAPI schema, its CEL rules (through
//! kube's `cel` feature, the same rules the API server runs) and the operator's own semantic
//! checks. Used by `stompgate lint` and by the controller's validate step.

use std::fmt;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{PodSpec, SecurityContext};
use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde_json::Value;

use crate::crd::{GROUP, StompGateway, VERSION};

/// One problem, with the field it concerns and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// JSON path of the field, e.g. `spec.topology.exchanges[0].type`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

fn finding(path: &str, message: impl Into<String>) -> Finding {
    Finding {
        path: path.to_string(),
        message: message.into(),
    }
}

struct Compiled {
    schema: Value,
    cel: CompiledSchema,
}

fn compiled() -> &'static Compiled {
    static C: OnceLock<Compiled> = OnceLock::new();
    C.get_or_init(|| {
        let crd = StompGateway::crd();
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        let cel = compile_schema(&schema);
        Compiled { schema, cel }
    })
}

/// Validates one object (as JSON) the way the API server would on create (`old` = None) or
/// update, plus the operator's semantic checks. Empty means valid.
pub fn validate_value(obj: &Value, old: Option<&Value>) -> Vec<Finding> {
    let mut out = Vec::new();
    let want_api = format!("{GROUP}/{VERSION}");
    if obj.get("apiVersion").and_then(Value::as_str) != Some(want_api.as_str()) {
        out.push(finding("apiVersion", format!("must be {want_api}")));
    }
    if obj.get("kind").and_then(Value::as_str) != Some("StompGateway") {
        out.push(finding("kind", "must be StompGateway"));
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        out.push(finding(
            "metadata.name",
            "required; give the StompGateway a name",
        ));
    } else if !is_dns_label(name) {
        out.push(finding(
            "metadata.name",
            format!("{name:?} must be a DNS-1035 label (lowercase letters, digits, '-', at most 63, starting with a letter) because it names the Service"),
        ));
    }
    let c = compiled();
    // Only the spec is checked against the schema; metadata is the API server's own.
    let mut blocking = false;
    if let (Some(spec), Some(spec_schema)) = (obj.get("spec"), c.schema.pointer("/properties/spec"))
    {
        check_schema(spec_schema, spec, "spec", &mut out, &mut blocking);
    } else {
        out.push(finding("spec", "required"));
        blocking = true;
    }
    // As the API server does: the CEL rules run too, unless a value has the wrong type or is
    // outside its enum (the rules could not be evaluated on it), so one pass shows everything
    // the server would refuse.
    if blocking {
        out.push(finding("", NOT_CHECKED));
        return out;
    }
    if let Err(errs) = Validator::new().validate_compiled(&c.cel, obj, old) {
        for e in errs.iter() {
            let path = e.field_path.trim_start_matches('.').to_string();
            out.push(finding(&path, e.message.clone()));
        }
    }
    match serde_json::from_value::<StompGateway>(obj.clone()) {
        Ok(gw) => out.extend(semantic(&gw)),
        Err(e) => out.push(finding("spec", format!("cannot be read: {e}"))),
    }
    out
}

/// The API server's message when a type error keeps it from running the CEL rules.
pub const NOT_CHECKED: &str = "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Checks beyond the schema: privilege guards on `podTemplate` (the operator refuses to run a
/// gateway pod outside the restricted profile) and duplicates.
pub fn semantic(gw: &StompGateway) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in gw.spec.topology.exchanges.iter().enumerate() {
        if !seen.insert(e.name.as_str()) {
            out.push(finding(
                &format!("spec.topology.exchanges[{i}].name"),
                format!("duplicate exchange {:?}; list each exchange once", e.name),
            ));
        }
    }
    if let Some(spec) = gw.spec.pod_template.as_ref().and_then(|t| t.spec.as_ref()) {
        pod_spec_guards(spec, &mut out);
    }
    out
}

fn pod_spec_guards(spec: &PodSpec, out: &mut Vec<Finding>) {
    let base = "spec.podTemplate.spec";
    for (field, v) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if v == Some(true) {
            out.push(finding(
                &format!("{base}.{field}"),
                "is not allowed for gateway pods; remove it",
            ));
        }
    }
    if let Some(sc) = &spec.security_context {
        if sc.run_as_user == Some(0) {
            out.push(finding(
                &format!("{base}.securityContext.runAsUser"),
                "0 (root) is not allowed; remove it or use a non-zero uid",
            ));
        }
        if sc.run_as_non_root == Some(false) {
            out.push(finding(
                &format!("{base}.securityContext.runAsNonRoot"),
                "false is not allowed; remove it",
            ));
        }
    }
    let all = spec.containers.iter().map(|c| ("containers", c)).chain(
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| ("initContainers", c)),
    );
    for (i, (list, c)) in all.enumerate() {
        let path = format!(
            "{base}.{list}[{}].securityContext",
            if list == "containers" {
                i
            } else {
                i - spec.containers.len()
            }
        );
        if let Some(sc) = &c.security_context {
            container_guards(sc, &path, out);
        }
    }
}

fn container_guards(sc: &SecurityContext, path: &str, out: &mut Vec<Finding>) {
    let bad = [
        (
            "privileged",
            sc.privileged == Some(true),
            "true is not allowed; remove it",
        ),
        (
            "allowPrivilegeEscalation",
            sc.allow_privilege_escalation == Some(true),
            "true is not allowed; remove it",
        ),
        (
            "readOnlyRootFilesystem",
            sc.read_only_root_filesystem == Some(false),
            "false is not allowed; mount an emptyDir where a writable path is needed",
        ),
        (
            "runAsNonRoot",
            sc.run_as_non_root == Some(false),
            "false is not allowed; remove it",
        ),
        (
            "runAsUser",
            sc.run_as_user == Some(0),
            "0 (root) is not allowed; use a non-zero uid",
        ),
        (
            "capabilities.add",
            sc.capabilities
                .as_ref()
                .and_then(|c| c.add.as_ref())
                .is_some_and(|a| !a.is_empty()),
            "adding capabilities is not allowed; remove it",
        ),
    ];
    for (field, is_bad, msg) in bad {
        if is_bad {
            out.push(finding(&format!("{path}.{field}"), msg));
        }
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

/// OpenAPI v3 validation of the subset the CRD uses, with field-naming messages. `blocking`
/// is set by the errors that keep the API server from running the CEL rules: a value of the
/// wrong type, or outside its enum.
fn check_schema(
    schema: &Value,
    v: &Value,
    path: &str,
    out: &mut Vec<Finding>,
    blocking: &mut bool,
) {
    if v.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            out.push(finding(
                path,
                "must not be null; remove the key to use the default",
            ));
        }
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            *blocking = true;
            out.push(finding(
                path,
                format!("must be an integer or a string, got {}", type_name(v)),
            ));
        }
        return;
    }
    let ty = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let actual = type_name(v);
    let ok = match ty {
        "number" => v.is_number(),
        "" => true,
        t => t == actual,
    };
    if !ok {
        *blocking = true;
        out.push(finding(path, format!("must be {ty}, got {actual}")));
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        let allowed: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        *blocking = true;
        out.push(finding(
            path,
            format!("{v} is not one of {}", allowed.join(", ")),
        ));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            out.push(finding(path, format!("{v} is below the minimum {min}")));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            out.push(finding(path, format!("{v} is above the maximum {max}")));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            out.push(finding(path, format!("must be at least {min} characters")));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            out.push(finding(path, format!("must be at most {max} characters")));
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            out.push(finding(
                path,
                format!("has {} items, at least {min} required", items.len()),
            ));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            out.push(finding(
                path,
                format!("has {} items, at most {max} allowed", items.len()),
            ));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check_schema(item_schema, item, &format!("{path}[{i}]"), out, blocking);
            }
            check_list_keys(schema, item_schema, items, path, out);
        }
    }
    if let Some(map) = v.as_object() {
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && map.len() as u64 > max
        {
            out.push(finding(
                path,
                format!("has {} entries, at most {max} allowed", map.len()),
            ));
        }
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = r.as_str()
                && !map.contains_key(r)
            {
                out.push(finding(&format!("{path}.{r}"), "required; add it"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve =
            schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        for (k, val) in map {
            let child = format!("{path}.{k}");
            if let Some(s) = props.and_then(|p| p.get(k)) {
                check_schema(s, val, &child, out, blocking);
            } else if let Some(s) = additional {
                check_schema(s, val, &child, out, blocking);
            } else if !preserve {
                let known: Vec<&String> = props.map(|p| p.keys().collect()).unwrap_or_default();
                let hint = known
                    .iter()
                    .find(|p| p.eq_ignore_ascii_case(k))
                    .map(|p| format!("did you mean {p}?"))
                    .unwrap_or_else(|| {
                        format!(
                            "known fields: {}",
                            known
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    });
                out.push(finding(
                    &child,
                    format!("unknown field (the API server would drop it); {hint}"),
                ));
            }
        }
    }
}

fn check_list_keys(
    schema: &Value,
    item_schema: &Value,
    items: &[Value],
    path: &str,
    out: &mut Vec<Finding>,
) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    out.push(finding(
                        &format!("{path}[{i}]"),
                        format!("duplicate entry {item}; list it once"),
                    ));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key_of = |item: &Value| -> Vec<Value> {
                keys.iter()
                    .map(|k| {
                        item.get(*k)
                            .cloned()
                            .or_else(|| {
                                item_schema
                                    .pointer(&format!("/properties/{k}/default"))
                                    .cloned()
                            })
                            .unwrap_or(Value::Null)
                    })
                    .collect()
            };
            for (i, item) in items.iter().enumerate() {
                let key = key_of(item);
                if items[..i].iter().any(|o| key_of(o) == key) {
                    out.push(finding(
                        &format!("{path}[{i}]"),
                        format!(
                            "duplicate entry for key ({}); list it once",
                            keys.join(", ")
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
}
