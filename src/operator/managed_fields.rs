//! Status ownership left by operator versions that wrote the write-ahead ledger with a merge
//! patch: the API server recorded that as an `Update` entry of the operator on `status`, a
//! second owner beside its `Apply` entry, and the items it owns outlive the apply that drops
//! them (the status then fails validation for good). The operator folds such an entry into its
//! `Apply` entry once, through `metadata.managedFields` (as client-go's `csaupgrade` does).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use serde_json::{Value, json};

fn is(e: &ManagedFieldsEntry, manager: &str, operation: &str) -> bool {
    e.manager.as_deref() == Some(manager)
        && e.operation.as_deref() == Some(operation)
        && e.subresource.as_deref() == Some("status")
}

/// Union of two FieldsV1 trees.
fn union(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in b {
            union(a.entry(k.clone()).or_insert_with(|| json!({})), v);
        }
    }
}

/// The managedFields with `manager`'s `Update` entries on `status` folded into its `Apply`
/// entry there; None when there is none to fold.
pub fn fold_status_updates(meta: &ObjectMeta, manager: &str) -> Option<Vec<ManagedFieldsEntry>> {
    let entries = meta.managed_fields.as_ref()?;
    let updates: Vec<&ManagedFieldsEntry> = entries
        .iter()
        .filter(|e| is(e, manager, "Update"))
        .collect();
    if updates.is_empty() {
        return None;
    }
    let mut owned = json!({});
    for u in &updates {
        if let Some(f) = &u.fields_v1 {
            union(&mut owned, &f.0);
        }
    }
    let mut out: Vec<ManagedFieldsEntry> = entries
        .iter()
        .filter(|e| !is(e, manager, "Update"))
        .cloned()
        .collect();
    match out.iter_mut().find(|e| is(e, manager, "Apply")) {
        Some(apply) => {
            let mut fields = apply
                .fields_v1
                .as_ref()
                .map(|f| f.0.clone())
                .unwrap_or_else(|| json!({}));
            union(&mut fields, &owned);
            apply.fields_v1 = Some(FieldsV1(fields));
        }
        None => {
            let mut apply = updates[0].clone();
            apply.operation = Some("Apply".into());
            apply.fields_v1 = Some(FieldsV1(owned));
            out.push(apply);
        }
    }
    Some(out)
}

/// Whether `manager` owns the field at `path` (e.g. `["spec", "replicas"]`) of the main
/// resource through an `Apply` entry: if its next apply leaves the field out, the API server
/// removes it unless another manager owns it too.
pub fn applies_field(meta: &ObjectMeta, manager: &str, path: &[&str]) -> bool {
    meta.managed_fields.iter().flatten().any(|e| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some("Apply")
            && e.subresource.as_deref().unwrap_or_default().is_empty()
            && e.fields_v1.as_ref().is_some_and(|f| {
                path.iter()
                    .try_fold(&f.0, |v, k| v.get(format!("f:{k}")))
                    .is_some()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(entries: Value) -> ObjectMeta {
        serde_json::from_value(json!({"managedFields": entries})).expect("meta")
    }

    #[test]
    fn an_update_on_status_is_folded_into_the_apply_entry() {
        let m = meta(json!([
            {"manager": "op", "operation": "Update", "subresource": "status", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:status": {"f:topology": {"f:exchanges": {"k:{\"name\":\"b\"}": {".": {}, "f:name": {}}}}}}},
            {"manager": "op", "operation": "Apply", "subresource": "status", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:status": {"f:observedGeneration": {}}}},
            {"manager": "op", "operation": "Update", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:finalizers": {}}}},
            {"manager": "kubectl", "operation": "Update", "subresource": "status", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:status": {"f:x": {}}}},
        ]));
        let out = fold_status_updates(&m, "op").expect("folded");
        let v = serde_json::to_value(&out).expect("json");
        assert_eq!(v.as_array().map(Vec::len), Some(3), "{v:#}");
        let apply = v
            .as_array()
            .and_then(|a| a.iter().find(|e| e["operation"] == "Apply"))
            .expect("apply");
        assert_eq!(
            apply["fieldsV1"],
            json!({"f:status": {"f:observedGeneration": {},
                   "f:topology": {"f:exchanges": {"k:{\"name\":\"b\"}": {".": {}, "f:name": {}}}}}})
        );
        // The main resource's Update (finalizers) and other managers stay as they are.
        assert!(v.to_string().contains("f:finalizers") && v.to_string().contains("kubectl"));
        // Nothing to fold: nothing to do.
        assert!(fold_status_updates(&meta(json!(out)), "op").is_none());
    }

    #[test]
    fn without_an_apply_entry_the_update_becomes_one() {
        let m = meta(json!([
            {"manager": "op", "operation": "Update", "subresource": "status", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:status": {"f:topology": {}}}},
        ]));
        let out = fold_status_updates(&m, "op").expect("folded");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].operation.as_deref(), Some("Apply"));
    }

    #[test]
    fn applies_field_reads_the_apply_entry_of_the_main_resource() {
        let meta: ObjectMeta = serde_json::from_value(json!({"managedFields": [
            {"manager": "op", "operation": "Apply", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}},
            {"manager": "hpa", "operation": "Update", "subresource": "scale", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "st", "operation": "Apply", "subresource": "status", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        ]}))
        .expect("meta");
        assert!(applies_field(&meta, "op", &["spec", "replicas"]));
        assert!(!applies_field(&meta, "op", &["spec", "paused"]));
        assert!(!applies_field(&meta, "hpa", &["spec", "replicas"]));
        assert!(!applies_field(&meta, "st", &["spec", "replicas"]));
        assert!(!applies_field(&ObjectMeta::default(), "op", &["spec"]));
    }
}
