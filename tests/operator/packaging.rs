//! Least privilege and Pod Security (issue 7, item 5) over what is shipped:
//! - every Role/ClusterRole: no `*` in apiGroups/resources/verbs, no escalate/bind/impersonate,
//!   no nonResourceURLs, Secrets read-only (get/list/watch);
//! - every pod template (operator Deployment; gateway Deployment built by
//!   `operator::resources::build` for every example): Pod Security Standard `restricted`, plus a
//!   read-only root filesystem.
//!
//! Inputs: `deploy/` (the chart's default render, kept in sync by scripts/check-packaging.sh),
//! the examples, and, when `STOMPGATE_RENDERED_DIR` is set, every `*.yaml` in it:
//! scripts/check-packaging.sh points it at the Helm renders of all its value sets.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};
use stompgate::crd::StompGateway;
use stompgate::operator::resources::{self, BuildInputs};

use crate::support::repo_root;

/// Every YAML document of a file, as (where, document).
fn docs(path: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .filter_map(|(i, de)| {
            let v = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{} document {}: {e}", path.display(), i + 1));
            (!v.is_null()).then(|| {
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                let kind = v["kind"].as_str().unwrap_or("?");
                (format!("{} {kind}/{name}", path.display()), v)
            })
        })
        .collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Least-privilege problems of one Role/ClusterRole (empty: fine).
pub fn rbac_problems(role: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if role.get("aggregationRule").is_some() {
        out.push("aggregationRule: permissions defined elsewhere".into());
    }
    for (i, rule) in role["rules"].as_array().into_iter().flatten().enumerate() {
        let groups = strs(&rule["apiGroups"]);
        let resources = strs(&rule["resources"]);
        let verbs = strs(&rule["verbs"]);
        for (field, list) in [
            ("apiGroups", &groups),
            ("resources", &resources),
            ("verbs", &verbs),
        ] {
            if list.iter().any(|x| x.contains('*')) {
                out.push(format!("rule {i}: wildcard in {field}: {list:?}"));
            }
        }
        if rule.get("nonResourceURLs").is_some() {
            out.push(format!("rule {i}: nonResourceURLs"));
        }
        for v in ["escalate", "bind", "impersonate"] {
            if verbs.iter().any(|x| x == v) {
                out.push(format!("rule {i}: verb {v}"));
            }
        }
        let core = groups.iter().any(|g| g.is_empty() || g == "*");
        let secrets = resources
            .iter()
            .any(|r| r == "secrets" || r.starts_with("secrets/") || r == "*");
        if core && secrets {
            let write: Vec<&String> = verbs
                .iter()
                .filter(|v| !["get", "list", "watch"].contains(&v.as_str()))
                .collect();
            if !write.is_empty() {
                out.push(format!(
                    "rule {i}: Secrets must be read-only, found {write:?}"
                ));
            }
        }
    }
    out
}

/// Pod Security Standard `restricted` (v1.33) problems of a pod spec, plus a writable root
/// filesystem (empty: fine).
pub fn restricted_problems(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let psc = &pod["securityContext"];
    for f in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[f] == true {
            out.push(format!("{f}: true"));
        }
    }
    const VOLUMES: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for v in pod["volumes"].as_array().into_iter().flatten() {
        for k in v.as_object().into_iter().flatten().map(|(k, _)| k) {
            if k != "name" && !VOLUMES.contains(&k.as_str()) {
                out.push(format!("volume {}: type {k} is not allowed", v["name"]));
            }
        }
    }
    let seccomp_ok = |sc: &Value| {
        matches!(
            sc.pointer("/seccompProfile/type").and_then(Value::as_str),
            Some("RuntimeDefault" | "Localhost")
        )
    };
    if psc.pointer("/seccompProfile/type").is_some() && !seccomp_ok(psc) {
        out.push("pod seccompProfile must be RuntimeDefault or Localhost".into());
    }
    if psc["runAsNonRoot"] == false {
        out.push("pod runAsNonRoot: false".into());
    }
    if psc["runAsUser"] == 0 {
        out.push("pod runAsUser: 0".into());
    }
    const SAFE_SYSCTLS: [&str; 9] = [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
    ];
    for s in psc["sysctls"].as_array().into_iter().flatten() {
        let n = s["name"].as_str().unwrap_or_default();
        if !SAFE_SYSCTLS.contains(&n) && n != "net.ipv4.tcp_keepalive_probes" {
            out.push(format!("sysctl {n} is not in the safe set"));
        }
    }
    if let Some(t) = psc.pointer("/appArmorProfile/type").and_then(Value::as_str)
        && !matches!(t, "RuntimeDefault" | "Localhost")
    {
        out.push(format!("pod appArmorProfile {t}"));
    }
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect();
    if containers.is_empty() {
        out.push("no containers".into());
    }
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        let mut bad = |m: String| out.push(format!("container {name}: {m}"));
        if sc["privileged"] == true {
            bad("privileged: true".into());
        }
        if sc["allowPrivilegeEscalation"] != false {
            bad("allowPrivilegeEscalation must be false".into());
        }
        let drop = strs(
            &sc.pointer("/capabilities/drop")
                .cloned()
                .unwrap_or(Value::Null),
        );
        if !drop.iter().any(|d| d == "ALL") {
            bad(format!(
                "capabilities.drop must include ALL, found {drop:?}"
            ));
        }
        let add = strs(
            &sc.pointer("/capabilities/add")
                .cloned()
                .unwrap_or(Value::Null),
        );
        if add.iter().any(|a| a != "NET_BIND_SERVICE") {
            bad(format!("capabilities.add {add:?}"));
        }
        let non_root = sc["runAsNonRoot"] == true
            || (psc["runAsNonRoot"] == true && sc["runAsNonRoot"] != false);
        if !non_root {
            bad("runAsNonRoot must be true (pod or container)".into());
        }
        if sc["runAsUser"] == 0 {
            bad("runAsUser: 0".into());
        }
        let seccomp = if sc.pointer("/seccompProfile/type").is_some() {
            seccomp_ok(sc)
        } else {
            seccomp_ok(psc)
        };
        if !seccomp {
            bad("seccompProfile must be RuntimeDefault or Localhost (pod or container)".into());
        }
        if sc.get("procMount").is_some_and(|p| p != "Default") {
            bad("procMount must be Default".into());
        }
        if let Some(t) = sc.pointer("/seLinuxOptions/type").and_then(Value::as_str)
            && ![
                "",
                "container_t",
                "container_init_t",
                "container_kvm_t",
                "container_engine_t",
            ]
            .contains(&t)
        {
            bad(format!("seLinuxOptions.type {t}"));
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p["hostPort"].as_i64().unwrap_or(0) != 0 {
                bad(format!("hostPort {}", p["hostPort"]));
            }
        }
        if sc["readOnlyRootFilesystem"] != true {
            bad("readOnlyRootFilesystem should be true".into());
        }
    }
    out
}

/// Pod specs of workload objects in `docs`.
fn pod_specs(docs: &[(String, Value)]) -> Vec<(String, Value)> {
    docs.iter()
        .filter_map(|(w, d)| {
            let spec = match d["kind"].as_str()? {
                "Pod" => d.get("spec")?,
                "CronJob" => d.pointer("/spec/jobTemplate/spec/template/spec")?,
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                    d.pointer("/spec/template/spec")?
                }
                _ => return None,
            };
            Some((w.clone(), spec.clone()))
        })
        .collect()
}

fn roles(docs: &[(String, Value)]) -> Vec<(String, Value)> {
    docs.iter()
        .filter(|(_, d)| matches!(d["kind"].as_str(), Some("Role" | "ClusterRole")))
        .cloned()
        .collect()
}

/// deploy/ plus the Helm renders given by scripts/check-packaging.sh.
fn shipped_manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for f in ["deploy/namespace.yaml", "deploy/operator.yaml"] {
        out.extend(docs(&repo_root().join(f)));
    }
    if let Ok(dir) = std::env::var("STOMPGATE_RENDERED_DIR") {
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("STOMPGATE_RENDERED_DIR") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.extend(docs(&p));
                n += 1;
            }
        }
        assert!(n > 0, "no *.yaml in STOMPGATE_RENDERED_DIR={dir}");
    }
    out
}

/// The gateway objects the operator would apply for every example StompGateway.
fn gateway_manifests() -> Vec<(String, Value)> {
    let inputs = BuildInputs {
        default_image: "stompgate/stompgate:test".into(),
        secret_hash: "h".into(),
        broker_port: None,
    };
    let mut out = Vec::new();
    for f in [
        "examples/stompgateway.yaml",
        "examples/stompgateway-full.yaml",
        "examples/stompgateway-local.yaml",
    ] {
        for (w, d) in docs(&repo_root().join(f)) {
            if d["kind"] != "StompGateway" {
                continue;
            }
            let mut gw: StompGateway = serde_json::from_value(d).expect("a StompGateway");
            gw.metadata
                .namespace
                .get_or_insert_with(|| "default".into());
            let children = resources::build(&gw, &inputs).expect("build");
            for v in resources::to_values(&children).expect("values") {
                out.push((format!("{w} -> {}", v["kind"].as_str().unwrap_or("?")), v));
            }
        }
    }
    out
}

/// (kind, name) of a Role/ClusterRole.
fn role_key(r: &Value) -> (String, String) {
    let s = |p: &str| {
        r.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("/kind"), s("/metadata/name"))
}

/// Roles granted to a ServiceAccount (the operator's), as (kind, name); the others are the
/// chart's roles for users, aggregated into admin/edit/view.
fn bound_to_service_accounts(docs: &[(String, Value)]) -> Vec<(String, String)> {
    docs.iter()
        .filter(|(_, d)| {
            matches!(
                d["kind"].as_str(),
                Some("RoleBinding" | "ClusterRoleBinding")
            )
        })
        .filter(|(_, d)| {
            d["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["kind"] == "ServiceAccount")
        })
        .map(|(_, d)| {
            let s = |p: &str| {
                d.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            (s("/roleRef/kind"), s("/roleRef/name"))
        })
        .collect()
}

#[test]
fn roles_have_no_wildcards_and_secrets_are_read_only() {
    let all = shipped_manifests();
    let roles = roles(&all);
    assert!(
        roles.iter().any(|(_, r)| {
            r["rules"].as_array().into_iter().flatten().any(|rule| {
                strs(&rule["resources"]).iter().any(|x| x == "secrets")
                    && strs(&rule["verbs"]) == ["get", "list", "watch"]
            })
        }),
        "the operator role reads Secrets (get, list, watch): {roles:#?}"
    );
    let mut problems = Vec::new();
    for (w, r) in &roles {
        for p in rbac_problems(r) {
            problems.push(format!("{w}: {p}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The operator's own roles grant exactly what the code calls, nothing more.
    let allowed: &[(&str, &str, &[&str])] = &[
        (
            "stompgate.io",
            "stompgateways",
            &["get", "list", "watch", "patch"],
        ),
        ("stompgate.io", "stompgateways/status", &["get", "patch"]),
        // Owner references with blockOwnerDeletion need update on the owner's finalizers.
        ("stompgate.io", "stompgateways/finalizers", &["update"]),
        // Server-side apply creates what does not exist yet: create + patch. delete is never
        // called on these, but OwnerReferencesPermissionEnforcement (an admission plugin, on
        // in OpenShift) lets only who may delete an object set its ownerReferences.
        (
            "apps",
            "deployments",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "",
            "services",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "",
            "configmaps",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        // A disabled PodDisruptionBudget is removed.
        (
            "policy",
            "poddisruptionbudgets",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        // spec.ingress and spec.networkPolicy: applied, watched, removed with their field.
        (
            "networking.k8s.io",
            "ingresses",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "networking.k8s.io",
            "networkpolicies",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        // spec.autoscaling: applied, watched, removed with its field.
        (
            "autoscaling",
            "horizontalpodautoscalers",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        // spec.rabbitmq.clusterRef: the cluster's status (not watched).
        ("rabbitmq.com", "rabbitmqclusters", &["get"]),
        // Does spec.ingress.className exist?
        ("networking.k8s.io", "ingressclasses", &["get"]),
        // spec.route and spec.tls.issuerRef: not watched (the kinds may not be served).
        (
            "gateway.networking.k8s.io",
            "httproutes",
            &["get", "create", "patch", "delete"],
        ),
        (
            "cert-manager.io",
            "certificates",
            &["get", "create", "patch", "delete"],
        ),
        ("", "secrets", &["get", "list", "watch"]),
        // Before re-creating a missing child: is the namespace being deleted?
        ("", "namespaces", &["get"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        (
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"],
        ),
    ];
    let bound = bound_to_service_accounts(&all);
    let mut operator_roles = 0;
    for (w, r) in &roles {
        if !bound.contains(&role_key(r)) {
            continue;
        }
        operator_roles += 1;
        for rule in r["rules"].as_array().into_iter().flatten() {
            for g in strs(&rule["apiGroups"]) {
                for res in strs(&rule["resources"]) {
                    for v in strs(&rule["verbs"]) {
                        assert!(
                            allowed.iter().any(|(ag, ar, av)| *ag == g
                                && *ar == res
                                && av.contains(&v.as_str())),
                            "{w}: {v} on {g}/{res} is more than the operator needs"
                        );
                    }
                }
            }
        }
    }
    assert!(
        operator_roles >= 2,
        "the operator role and the leader-election role"
    );
    // The operator never deletes or edits what users own: delete is granted only on the
    // children it owns (it calls it on the PDB it created; the rest is for the ownerReference
    // admission check), never deletecollection; its only write on StompGateways is the
    // finalizer and status.
    for (w, r) in &roles {
        if !bound.contains(&role_key(r)) {
            continue; // user-facing roles aggregated into admin/edit/view
        }
        for rule in r["rules"].as_array().into_iter().flatten() {
            let resources = strs(&rule["resources"]);
            let verbs = strs(&rule["verbs"]);
            if verbs
                .iter()
                .any(|v| v == "delete" || v == "deletecollection")
            {
                assert!(
                    resources.iter().all(|r| [
                        "poddisruptionbudgets",
                        "deployments",
                        "services",
                        "configmaps",
                        "ingresses",
                        "networkpolicies",
                        "horizontalpodautoscalers",
                        "httproutes",
                        "certificates"
                    ]
                    .contains(&r.as_str())),
                    "{w}: {rule}"
                );
                assert!(
                    !verbs.iter().any(|v| v == "deletecollection"),
                    "{w}: {rule}"
                );
            }
            if resources.iter().any(|x| x == "stompgateways") {
                assert!(!verbs.iter().any(|v| v == "create"), "{w}: {rule}");
            }
        }
    }
}

#[test]
fn operator_and_gateway_pods_are_restricted() {
    let mut pods = pod_specs(&shipped_manifests());
    let operator = pods.len();
    assert!(
        operator >= 1,
        "the operator Deployment is in deploy/operator.yaml"
    );
    let gateways = pod_specs(&gateway_manifests());
    assert!(gateways.len() >= 3, "a gateway Deployment per example");
    pods.extend(gateways);
    let mut problems = Vec::new();
    for (w, pod) in &pods {
        for p in restricted_problems(pod) {
            problems.push(format!("{w}: {p}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    eprintln!("{} pod templates checked ({operator} operator)", pods.len());
}

#[test]
fn the_gateway_pod_needs_no_kubernetes_token() {
    for (w, pod) in pod_specs(&gateway_manifests()) {
        assert_eq!(pod["automountServiceAccountToken"], false, "{w}");
    }
}

/// The checkers themselves: each rule catches what it is for.
#[test]
fn the_checkers_flag_violations() {
    let role = json!({"kind": "ClusterRole", "rules": [
        {"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["*"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "update"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["escalate"]},
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}
    ]});
    let p = rbac_problems(&role);
    assert_eq!(p.len(), 6, "{p:#?}");
    assert!(
        p.iter().any(|x| x.contains("Secrets must be read-only")),
        "{p:#?}"
    );
    let ok = json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]});
    assert!(rbac_problems(&ok).is_empty());

    let good = json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "c", "configMap": {"name": "x"}}],
        "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}]
    });
    assert_eq!(restricted_problems(&good), Vec::<String>::new());
    let cases: Vec<(&str, Value)> = vec![
        ("hostNetwork", json!({"hostNetwork": true})),
        (
            "hostPath",
            json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
        ),
        (
            "pod runAsNonRoot",
            json!({"securityContext": {"runAsNonRoot": false}}),
        ),
        (
            "seccomp",
            json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "Unconfined"}}}),
        ),
        (
            "privileged",
            json!({"containers": [{"name": "a", "securityContext": {"privileged": true, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}]}),
        ),
        (
            "allowPrivilegeEscalation",
            json!({"containers": [{"name": "a", "securityContext": {"readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}]}),
        ),
        (
            "drop must include ALL",
            json!({"containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true}}]}),
        ),
        (
            "capabilities.add",
            json!({"containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}]}),
        ),
        (
            "hostPort",
            json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}], "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}]}),
        ),
        (
            "readOnlyRootFilesystem",
            json!({"initContainers": [{"name": "i", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}),
        ),
    ];
    for (what, patch) in cases {
        let mut pod = good.clone();
        merge(&mut pod, &patch);
        let p = restricted_problems(&pod);
        assert!(
            p.iter().any(|x| x.contains(what)),
            "{what} not flagged: {p:?} for {pod}"
        );
    }
    let mut root_pod = good.clone();
    root_pod["securityContext"] = json!({"seccompProfile": {"type": "RuntimeDefault"}});
    assert!(
        restricted_problems(&root_pod)
            .iter()
            .any(|x| x.contains("runAsNonRoot"))
    );
}

fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}
