//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), which
//! `kubectl get` uses: printer columns of custom resources and a few columns per built-in.

use serde_json::{Value, json};

use crate::registry::{Builtin, ResourceDef};
use crate::util::{age_secs, human_duration};

fn col(name: &str, ty: &str, format: &str, priority: i64, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn age(v: &Value) -> Value {
    v.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(age_secs)
        .map(|s| json!(human_duration(s)))
        .unwrap_or(json!("<unknown>"))
}

fn s(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => String::new(),
        Some(x) => x.to_string(),
    }
}

fn count(v: &Value, p: &str) -> usize {
    match v.pointer(p) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

/// Column definitions and a row builder for a resource.
pub fn columns(res: &ResourceDef, version: &str) -> Vec<Value> {
    let name = col(
        "Name",
        "string",
        "name",
        0,
        "Name must be unique within a namespace.",
    );
    let age_col = col(
        "Age",
        "string",
        "",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match res.builtin {
        None => {
            let mut out = vec![name];
            if let Some(v) = res.version(version) {
                for c in &v.columns {
                    out.push(col(&c.name, &c.type_, "", c.priority, &c.description));
                }
            }
            out
        }
        Some(Builtin::Namespace) => vec![
            name,
            col("Status", "string", "", 0, "The status of the namespace"),
            age_col,
        ],
        Some(Builtin::Secret) => vec![
            name,
            col("Type", "string", "", 0, "The type of the secret"),
            col(
                "Data",
                "integer",
                "",
                0,
                "The number of entries in the data",
            ),
            age_col,
        ],
        Some(Builtin::ConfigMap) => vec![
            name,
            col("Data", "integer", "", 0, "Number of entries in data"),
            age_col,
        ],
        Some(Builtin::Service) => vec![
            name,
            col("Type", "string", "", 0, "The type of service."),
            col("Cluster-IP", "string", "", 0, "The IP of the service."),
            col("External-IP", "string", "", 0, "External IPs."),
            col("Port(s)", "string", "", 0, "The ports of the service."),
            age_col,
            col("Selector", "string", "", 1, "The selector."),
        ],
        Some(Builtin::Deployment) => vec![
            name,
            col(
                "Ready",
                "string",
                "",
                0,
                "Number of the pod with ready state",
            ),
            col(
                "Up-to-date",
                "string",
                "",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                "",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age_col,
            col(
                "Containers",
                "string",
                "",
                1,
                "Names of each container in the template.",
            ),
            col(
                "Images",
                "string",
                "",
                1,
                "Images referenced by each container in the template.",
            ),
            col("Selector", "string", "", 1, "Label selector for pods."),
        ],
        Some(Builtin::Pod) => vec![
            name,
            col(
                "Ready",
                "string",
                "",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                "",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                "",
                0,
                "The number of times the containers in this pod have been restarted.",
            ),
            age_col,
        ],
        Some(Builtin::Pdb) => vec![
            name,
            col(
                "Min Available",
                "string",
                "",
                0,
                "The minimum number or percentage of available pods this budget requires.",
            ),
            col(
                "Max Unavailable",
                "string",
                "",
                0,
                "The maximum number or percentage of unavailable pods this budget requires.",
            ),
            col(
                "Allowed Disruptions",
                "integer",
                "",
                0,
                "Calculated number of pods that can be disrupted at this time.",
            ),
            age_col,
        ],
        Some(Builtin::Lease) => vec![
            name,
            col("Holder", "string", "", 0, "The holder of the lease."),
            age_col,
        ],
        Some(Builtin::Event) | Some(Builtin::EventV1) => vec![
            col(
                "Last Seen",
                "string",
                "",
                0,
                "Time since the event was last observed.",
            ),
            col("Type", "string", "", 0, "Normal or Warning."),
            col("Reason", "string", "", 0, "Reason."),
            col("Object", "string", "", 0, "The object this event is about."),
            col("Message", "string", "", 0, "Message."),
        ],
        Some(Builtin::Crd) => vec![
            name,
            col("Created At", "date", "", 0, "When the CRD was created."),
        ],
        Some(Builtin::Ingress) => vec![
            name,
            col(
                "Class",
                "string",
                "",
                0,
                "The name of the IngressClass resource.",
            ),
            col(
                "Hosts",
                "string",
                "",
                0,
                "Hosts that incoming requests are matched against.",
            ),
            col(
                "Address",
                "string",
                "",
                0,
                "Address is a list of IP addresses.",
            ),
            col(
                "Ports",
                "string",
                "",
                0,
                "Ports of TLS configurations that open.",
            ),
            age_col,
        ],
        Some(Builtin::IngressClass) => vec![
            name,
            col(
                "Controller",
                "string",
                "",
                0,
                "Controller that is responsible for handling this class.",
            ),
            col(
                "Parameters",
                "string",
                "",
                0,
                "A reference to a resource with additional parameters.",
            ),
            age_col,
        ],
        Some(Builtin::NetworkPolicy) => vec![
            name,
            col(
                "Pod-Selector",
                "string",
                "",
                0,
                "Selects the pods to which this NetworkPolicy object applies.",
            ),
            age_col,
        ],
        // kubectl's columns, less the metric targets (only read by people).
        Some(Builtin::Hpa) => vec![
            name,
            col(
                "Reference",
                "string",
                "",
                0,
                "The scale target (kind/name).",
            ),
            col("MinPods", "string", "", 0, "Lower limit of replicas."),
            col("MaxPods", "string", "", 0, "Upper limit of replicas."),
            col("Replicas", "string", "", 0, "Current replicas."),
            age_col,
        ],
    }
}

/// One row's cells.
pub fn cells(res: &ResourceDef, version: &str, v: &Value) -> Vec<Value> {
    let name = json!(s(v, "/metadata/name"));
    match res.builtin {
        None => {
            let mut out = vec![name];
            if let Some(vd) = res.version(version) {
                for c in &vd.columns {
                    let found = crate::jsonpath::eval(&c.json_path, v).unwrap_or_default();
                    let cell = match found.as_slice() {
                        [] => Value::Null,
                        [one] => {
                            if c.type_ == "date" {
                                one.as_str()
                                    .and_then(age_secs)
                                    .map(|s| json!(human_duration(s)))
                                    .unwrap_or(one.clone())
                            } else {
                                one.clone()
                            }
                        }
                        many => json!(
                            many.iter()
                                .map(|x| match x {
                                    Value::String(s) => s.clone(),
                                    o => o.to_string(),
                                })
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    };
                    out.push(cell);
                }
            }
            out
        }
        Some(Builtin::Namespace) => vec![name, json!(s(v, "/status/phase")), age(v)],
        Some(Builtin::Secret) => vec![name, json!(s(v, "/type")), json!(count(v, "/data")), age(v)],
        Some(Builtin::ConfigMap) => vec![
            name,
            json!(count(v, "/data") + count(v, "/binaryData")),
            age(v),
        ],
        Some(Builtin::Service) => {
            let ports: Vec<String> = v
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            let np = p
                                .get("nodePort")
                                .map(|n| format!(":{n}"))
                                .unwrap_or_default();
                            format!("{}{np}/{}", p["port"], s(p, "/protocol"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let ext = if s(v, "/spec/type") == "LoadBalancer" {
                "<pending>"
            } else {
                "<none>"
            };
            let sel = v
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(s(v, "/spec/type")),
                json!(s(v, "/spec/clusterIP")),
                json!(ext),
                json!(ports.join(",")),
                age(v),
                json!(sel),
            ]
        }
        Some(Builtin::Deployment) => {
            let n = |p: &str| v.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            let containers: Vec<&Value> = v
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let names: Vec<String> = containers.iter().map(|c| s(c, "/name")).collect();
            let images: Vec<String> = containers.iter().map(|c| s(c, "/image")).collect();
            let sel = v
                .pointer("/spec/selector/matchLabels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n("/status/readyReplicas"),
                    n("/spec/replicas")
                )),
                json!(n("/status/updatedReplicas")),
                json!(n("/status/availableReplicas")),
                age(v),
                json!(names.join(",")),
                json!(images.join(",")),
                json!(sel),
            ]
        }
        Some(Builtin::Pod) => {
            let containers = count(v, "/spec/containers");
            let ready = v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
            vec![
                name,
                json!(format!(
                    "{}/{containers}",
                    if ready { containers } else { 0 }
                )),
                json!(s(v, "/status/phase")),
                json!("0"),
                age(v),
            ]
        }
        Some(Builtin::Pdb) => {
            let or_na = |p: &str| {
                let x = s(v, p);
                if x.is_empty() { "N/A".to_string() } else { x }
            };
            vec![
                name,
                json!(or_na("/spec/minAvailable")),
                json!(or_na("/spec/maxUnavailable")),
                json!(
                    v.pointer("/status/disruptionsAllowed")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                ),
                age(v),
            ]
        }
        Some(Builtin::Lease) => vec![name, json!(s(v, "/spec/holderIdentity")), age(v)],
        Some(Builtin::Event) | Some(Builtin::EventV1) => {
            let core = res.builtin == Some(Builtin::Event);
            let seen = [
                "/series/lastObservedTime",
                if core {
                    "/lastTimestamp"
                } else {
                    "/deprecatedLastTimestamp"
                },
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .map(|p| s(v, p))
            .find(|x| !x.is_empty())
            .and_then(|t| age_secs(&t))
            .map(human_duration)
            .unwrap_or_default();
            let obj = if core {
                "/involvedObject"
            } else {
                "/regarding"
            };
            vec![
                json!(seen),
                json!(s(v, "/type")),
                json!(s(v, "/reason")),
                json!(format!(
                    "{}/{}",
                    s(v, &format!("{obj}/kind")).to_lowercase(),
                    s(v, &format!("{obj}/name"))
                )),
                json!(s(v, if core { "/message" } else { "/note" })),
            ]
        }
        Some(Builtin::Crd) => vec![name, json!(s(v, "/metadata/creationTimestamp"))],
        Some(Builtin::Ingress) => {
            let hosts: Vec<String> = v
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("host").and_then(Value::as_str).map(str::to_string))
                .collect();
            let hosts = if hosts.is_empty() {
                "*".to_string()
            } else {
                hosts.join(",")
            };
            let ports = if count(v, "/spec/tls") > 0 {
                "80, 443"
            } else {
                "80"
            };
            vec![
                name,
                json!(s(v, "/spec/ingressClassName")),
                json!(hosts),
                json!(""),
                json!(ports),
                age(v),
            ]
        }
        Some(Builtin::IngressClass) => {
            vec![name, json!(s(v, "/spec/controller")), json!(""), age(v)]
        }
        Some(Builtin::NetworkPolicy) => {
            let sel = v
                .pointer("/spec/podSelector/matchLabels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|x| !x.is_empty())
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(sel), age(v)]
        }
        Some(Builtin::Hpa) => {
            let target = format!(
                "{}/{}",
                s(v, "/spec/scaleTargetRef/kind"),
                s(v, "/spec/scaleTargetRef/name")
            );
            let num = |p: &str| {
                v.pointer(p)
                    .and_then(Value::as_i64)
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "<unset>".into())
            };
            vec![
                name,
                json!(target),
                json!(num("/spec/minReplicas")),
                json!(num("/spec/maxReplicas")),
                json!(num("/status/currentReplicas")),
                age(v),
            ]
        }
    }
}

/// A Table of objects; `include` is `None`, `Metadata` (default) or `Object`.
pub fn table(
    res: &ResourceDef,
    version: &str,
    items: &[Value],
    list_meta: Value,
    include: &str,
) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|v| {
            let mut row = json!({"cells": cells(res, version, v)});
            match include {
                "None" => {}
                "Object" => row["object"] = v.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                        "metadata": v.get("metadata").cloned().unwrap_or_default(),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
        "columnDefinitions": columns(res, version), "rows": rows,
    })
}
