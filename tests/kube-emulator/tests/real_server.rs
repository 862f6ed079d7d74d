//! Behaviour of the real kube-apiserver that once hid operator bugs (issue 17), each learned by
//! the emulator with a test of its own.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube_emulator::Emulator;
use serde_json::{Value, json};

/// A CRD whose status holds a map-list keyed by `name` with required fields, like
/// `StompGateway.status.topology.exchanges`.
fn gadget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object",
                      "x-kubernetes-validations": [{"rule": "!has(self.size) || self.size % 2 == 0",
                                                    "message": "size must be even"}],
                      "properties": {
                        "size": {"type": "integer", "maximum": 100},
                        "parts": {"type": "array", "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["name"],
                            "items": {"type": "object", "required": ["name"],
                                "properties": {"name": {"type": "string"}, "v": {"type": "string"}}}}}},
                    "status": {"type": "object", "properties": {
                        "observedGeneration": {"type": "integer"},
                        "parts": {"type": "array", "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["name"],
                            "items": {"type": "object", "required": ["name", "state", "owned"],
                                "properties": {"name": {"type": "string"}, "state": {"type": "string"},
                                               "owned": {"type": "boolean"}}}}}}}}}}]}
    })
}

async fn gadgets(emu: &Emulator) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(emu.client());
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(gadget_crd()).expect("crd"),
    )
    .await
    .expect("CRD created");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Gadget"),
        "gadgets",
    );
    Api::namespaced_with(emu.client(), "default", &ar)
}

fn gadget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": name}, "spec": spec}),
    )
    .expect("gadget")
}

fn status_apply(status: Value) -> Patch<Value> {
    Patch::Apply(json!({"apiVersion": "example.com/v1", "kind": "Gadget", "status": status}))
}

/// A gadget `g` and the patch parameters of one field manager: (apply forced, update).
async fn gadget_and_manager(api: &Api<DynamicObject>, op: &str) -> (PatchParams, PatchParams) {
    api.create(&PostParams::default(), &gadget("g", json!({})))
        .await
        .expect("created");
    let update = PatchParams {
        field_manager: Some(op.into()),
        ..PatchParams::default()
    };
    (PatchParams::apply(op).force(), update)
}

/// Status item `b` of gadget `g` owned twice: written ahead by a merge patch (an Update) and
/// then by the apply (the operator's write-ahead ledger of old). Returns the object.
async fn two_owners_of_b(
    api: &Api<DynamicObject>,
    apply: &PatchParams,
    update: &PatchParams,
) -> DynamicObject {
    api.patch_status(
        "g",
        apply,
        &status_apply(json!({"parts": [{"name": "a", "state": "Declared", "owned": true}]})),
    )
    .await
    .expect("apply a");
    // Write-ahead with a merge patch: b is recorded as Pending by an Update.
    api.patch_status(
        "g",
        update,
        &Patch::Merge(json!({"status": {"parts": [
            {"name": "a", "state": "Declared", "owned": true},
            {"name": "b", "state": "Pending", "owned": true}]}})),
    )
    .await
    .expect("update adds b");
    // The apply takes over b's state (forced: its value changes); name and owned keep their
    // value, so the Update entry still owns them too.
    api.patch_status(
        "g",
        apply,
        &status_apply(json!({"parts": [
                {"name": "a", "state": "Declared", "owned": true},
                {"name": "b", "state": "Declared", "owned": true}]})),
    )
    .await
    .expect("apply both")
}

/// The apply of gadget `g`'s status without item `b`.
async fn drop_b(api: &Api<DynamicObject>, apply: &PatchParams) -> kube::Result<DynamicObject> {
    api.patch_status(
        "g",
        apply,
        &status_apply(json!({"parts": [{"name": "a", "state": "Declared", "owned": true}]})),
    )
    .await
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message.clone()),
        other => panic!("not an API error: {other}"),
    }
}

/// The real server keys `managedFields` by (manager, operation): a merge patch (Update) and an
/// apply (Apply) under the same manager name are two owners. An item the Update added keeps the
/// fields the Update owns when the Apply drops it, and what is left fails validation — the
/// status wedge of issue 17, finding 1.
#[tokio::test]
async fn update_and_apply_of_one_manager_own_fields_separately() {
    let emu = Emulator::start().await.expect("emulator");
    let api = gadgets(&emu).await;
    let op = "gadget-operator";
    let (apply, update) = gadget_and_manager(&api, op).await;
    let both = two_owners_of_b(&api, &apply, &update).await;
    let entries: Vec<(String, String)> = both
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (op.to_string(), "Apply".to_string()),
            (op.to_string(), "Update".to_string())
        ],
        "one entry per (manager, operation)"
    );
    let update_entry = both
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| {
            m.operation.as_deref() == Some("Update") && m.subresource.as_deref() == Some("status")
        })
        .and_then(|m| m.fields_v1.as_ref())
        .map(|f| f.0.clone())
        .expect("the Update entry");
    let b = &update_entry["f:status"]["f:parts"]["k:{\"name\":\"b\"}"];
    assert!(
        b.get("f:name").is_some() && b.get("f:owned").is_some(),
        "{update_entry}"
    );
    assert!(
        b.get("f:state").is_none(),
        "the apply took state: {update_entry}"
    );
    // Dropping b from the apply removes only what the apply alone owned: state. The item is
    // left with name and owned, and the server refuses the result.
    let err = drop_b(&api, &apply)
        .await
        .expect_err("b lost its required state");
    let (code, message) = api_error(err);
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("status.parts[1].state: Required value"),
        "{message}"
    );
    // A status written by apply alone never gets there.
    api.create(&PostParams::default(), &gadget("h", json!({})))
        .await
        .expect("created");
    for parts in [
        json!([{"name": "a", "state": "Declared", "owned": true},
               {"name": "b", "state": "Pending", "owned": true}]),
        json!([{"name": "a", "state": "Declared", "owned": true},
               {"name": "b", "state": "Declared", "owned": true}]),
        json!([{"name": "a", "state": "Declared", "owned": true}]),
    ] {
        api.patch_status("h", &apply, &status_apply(json!({"parts": parts})))
            .await
            .expect("apply only");
    }
    let h = api.get("h").await.expect("h");
    assert_eq!(
        h.data["status"]["parts"],
        json!([{"name": "a", "state": "Declared", "owned": true}])
    );
}

/// Server-side apply converts the patch to its typed form before anything else; an unknown
/// field, a value of the wrong type or a keyed-list item given twice fails there with HTTP 500
/// `failed to create typed patch object (...)` (kubernetes/kubernetes#122480, #139253), while a
/// POST of the same object answers 422.
#[tokio::test]
async fn typed_apply_errors_answer_500_where_a_post_answers_422() {
    let emu = Emulator::start().await.expect("emulator");
    let api = gadgets(&emu).await;
    let apply = PatchParams::apply("tester");
    for (spec, detail) in [
        (
            json!({"colour": "red"}),
            ".spec.colour: field not declared in schema",
        ),
        (
            json!({"size": "big"}),
            ".spec.size: expected numeric (int or float), got string",
        ),
        (
            json!({"parts": [{"name": "a"}, {"name": "a", "v": "2"}]}),
            ".spec.parts: duplicate entries for key [name=\"a\"]",
        ),
    ] {
        let err = api
            .patch("g", &apply, &Patch::Apply(gadget("g", spec.clone())))
            .await
            .expect_err("typed conversion fails");
        let (code, message) = api_error(err);
        assert_eq!(code, 500, "{spec}: {message}");
        assert_eq!(
            message,
            format!(
                "failed to create typed patch object (default/g; example.com/v1, Kind=Gadget): {detail}"
            ),
            "{spec}"
        );
    }
    // Several problems are listed together.
    let err = api
        .patch(
            "g",
            &apply,
            &Patch::Apply(gadget("g", json!({"size": true, "colour": "red"}))),
        )
        .await
        .expect_err("two problems");
    let (code, message) = api_error(err);
    assert_eq!(code, 500);
    assert!(
        message.contains("errors:\n  .spec.colour: field not declared in schema\n  .spec.size: expected numeric (int or float), got bool"),
        "{message}"
    );
    // Nothing was created by the failed applies.
    assert!(api.get_opt("g").await.expect("get").is_none());
    // The same objects POSTed: validation answers 422 (the unknown field is pruned with a
    // warning, the default fieldValidation).
    for spec in [
        json!({"size": "big"}),
        json!({"parts": [{"name": "a"}, {"name": "a", "v": "2"}]}),
    ] {
        let err = api
            .create(&PostParams::default(), &gadget("p", spec.clone()))
            .await
            .expect_err("invalid");
        assert_eq!(api_error(err).0, 422, "{spec}");
    }
    // Built-in kinds: a container listed twice in an applied Deployment.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::default_namespaced(emu.client());
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}},
                 "template": {"metadata": {"labels": {"app": "d"}},
                              "spec": {"containers": [{"name": "c", "image": "i"},
                                                      {"name": "c", "image": "j"}]}}}});
    let err = deployments
        .patch("d", &apply, &Patch::Apply(d))
        .await
        .expect_err("duplicate container");
    let (code, message) = api_error(err);
    assert_eq!(code, 500, "{message}");
    assert!(
        message.ends_with(".spec.template.spec.containers: duplicate entries for key [name=\"c\"]"),
        "{message}"
    );
}

fn deployment(replicas: i64, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "progressDeadlineSeconds": 2,
                 "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": image}]}}}})
}

/// (status, reason) of a Deployment condition.
fn deploy_cond(d: &Value, ty: &str) -> Option<(String, String)> {
    d.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
}

fn counts(d: &Value) -> [i64; 4] {
    [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
    ]
    .map(|k| d["status"][k].as_i64().unwrap_or(0))
}

fn pods(emu: &Emulator) -> Vec<Value> {
    let (_, list) = emu.call(
        "GET",
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
        None,
    );
    list["items"].as_array().cloned().unwrap_or_default()
}

/// A kubelet whose pods all pass their readiness probe.
fn ready_all(emu: &Emulator) {
    for p in pods(emu) {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(emu.set_pod_ready("default", name, true), 200);
    }
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Deployments get pods and a status the way the real Deployment controller moves it: one
/// write with observedGeneration and updatedReplicas, ready/available only from ready pods,
/// Progressing False ProgressDeadlineExceeded after progressDeadlineSeconds, rolling updates
/// within maxSurge/maxUnavailable, and a scale-up of a finished rollout never timing out.
#[tokio::test]
async fn deployments_move_their_status_as_the_deployment_controller_does() {
    let emu = Emulator::start().await.expect("emulator");
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let (code, body) = emu.call(
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        Some(&deployment(2, "web:1")),
    );
    assert_eq!(code, 201, "{body}");
    // Created: all pods at once, none ready (no kubelet has reported them).
    let d = until("the controller observed generation 1", || {
        emu.get(path)
            .filter(|d| d["status"]["observedGeneration"] == 1)
    })
    .await;
    assert_eq!(counts(&d), [2, 2, 0, 0], "{:#}", d["status"]);
    assert_eq!(
        deploy_cond(&d, "Available"),
        Some(("False".into(), "MinimumReplicasUnavailable".into()))
    );
    let ps = pods(&emu);
    assert_eq!(ps.len(), 2);
    for p in &ps {
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Deployment");
        assert!(p["metadata"]["labels"]["pod-template-hash"].is_string());
    }
    // No pod ever ready: the deadline passes and Progressing turns False.
    let d = until("ProgressDeadlineExceeded", || {
        emu.get(path).filter(|d| {
            deploy_cond(d, "Progressing").is_some_and(|c| c.1 == "ProgressDeadlineExceeded")
        })
    })
    .await;
    assert_eq!(
        deploy_cond(&d, "Progressing").map(|c| c.0),
        Some("False".into())
    );
    assert_eq!(counts(&d), [2, 2, 0, 0]);
    // A long deadline from here (no new rollout: still timed out), so a slow machine cannot
    // time the next steps out.
    let (code, _) = emu.call(
        "PATCH",
        path,
        Some(&json!({"spec": {"progressDeadlineSeconds": 600}})),
    );
    assert_eq!(code, 200);
    let d = until("the new deadline observed", || {
        emu.get(path)
            .filter(|d| d["status"]["observedGeneration"] == 2)
    })
    .await;
    assert_eq!(
        deploy_cond(&d, "Progressing").map(|c| c.1),
        Some("ProgressDeadlineExceeded".into())
    );

    // A kubelet reports one pod ready, then the other: progress again, then complete.
    let first = ps[0]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(emu.set_pod_ready("default", &first, true), 200);
    let d = until("one pod ready", || {
        emu.get(path).filter(|d| counts(d)[2] == 1)
    })
    .await;
    assert_eq!(counts(&d), [2, 2, 1, 1]);
    assert_eq!(
        deploy_cond(&d, "Progressing"),
        Some(("True".into(), "ReplicaSetUpdated".into()))
    );
    assert_eq!(
        deploy_cond(&d, "Available").map(|c| c.0),
        Some("False".into())
    );
    ready_all(&emu);
    let d = until("complete", || {
        emu.get(path).filter(|d| {
            deploy_cond(d, "Progressing").is_some_and(|c| c.1 == "NewReplicaSetAvailable")
        })
    })
    .await;
    assert_eq!(counts(&d), [2, 2, 2, 2]);
    assert_eq!(
        deploy_cond(&d, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );

    // A new image rolls: one surge pod (maxSurge 25% of 2, rounded up), no old pod removed
    // before a new one is available (maxUnavailable 25% of 2, rounded down).
    let (code, body) = emu.call(
        "PATCH",
        path,
        // A long deadline while the rollout is looked at, so a slow machine cannot time it out.
        Some(&json!({"spec": {"progressDeadlineSeconds": 600,
                              "template": {"spec": {"containers": [{"name": "web", "image": "web:2"}]}}}})),
    );
    assert_eq!(code, 200, "{body}");
    let d = until("the rollout started", || {
        emu.get(path)
            .filter(|d| d["status"]["observedGeneration"] == 3)
    })
    .await;
    assert_eq!(counts(&d), [3, 1, 2, 2], "{:#}", d["status"]);
    assert_eq!(
        deploy_cond(&d, "Available").map(|c| c.0),
        Some("True".into())
    );
    assert_eq!(
        deploy_cond(&d, "Progressing").map(|c| c.0),
        Some("True".into()),
        "a new rollout is progressing again"
    );
    let images = |ps: &[Value]| -> Vec<String> {
        ps.iter()
            .map(|p| {
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        images(&pods(&emu)).iter().filter(|i| *i == "web:2").count(),
        1
    );
    // The kubelet keeps making pods ready: the rollout completes with only new pods.
    let d = until("the rollout completed", || {
        ready_all(&emu);
        emu.get(path).filter(|d| {
            counts(d) == [2, 2, 2, 2]
                && deploy_cond(d, "Progressing").is_some_and(|c| c.1 == "NewReplicaSetAvailable")
        })
    })
    .await;
    assert_eq!(images(&pods(&emu)), ["web:2", "web:2"]);
    assert_eq!(d["status"]["observedGeneration"], 3);

    // Scale up a finished rollout: pods at once, not ready; Progressing is not re-estimated
    // (the real controller never times out a scale-up), Available turns False.
    let (code, _) = emu.call(
        "PATCH",
        path,
        Some(&json!({"spec": {"replicas": 4, "progressDeadlineSeconds": 2}})),
    );
    assert_eq!(code, 200);
    let d = until("scaled", || {
        emu.get(path)
            .filter(|d| d["status"]["observedGeneration"] == 4)
    })
    .await;
    assert_eq!(counts(&d), [4, 4, 2, 2]);
    assert_eq!(
        deploy_cond(&d, "Available"),
        Some(("False".into(), "MinimumReplicasUnavailable".into())),
        "4 - 25% rounded down = 3 must be available"
    );
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let d = emu.get(path).expect("deployment");
    assert_eq!(
        deploy_cond(&d, "Progressing"),
        Some(("True".into(), "NewReplicaSetAvailable".into())),
        "past the deadline, still not timed out"
    );

    // Deleting the Deployment takes its pods with it (owner references).
    let (code, _) = emu.call("DELETE", path, None);
    assert_eq!(code, 200);
    until("the pods are gone", || pods(&emu).is_empty().then_some(())).await;
}

/// While a namespace is being deleted, the NamespaceLifecycle admission plugin refuses every
/// create in it (a POST, or a server-side apply that would create) with 403 and the cause
/// `NamespaceTerminating`, and still allows updates of what is there.
#[tokio::test]
async fn creates_in_a_terminating_namespace_answer_403() {
    let emu = Emulator::start().await.expect("emulator");
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "going"}});
    assert_eq!(emu.call("POST", "/api/v1/namespaces", Some(&ns)).0, 201);
    let cms = "/api/v1/namespaces/going/configmaps";
    let cm = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}});
    assert_eq!(emu.call("POST", cms, Some(&cm("kept"))).0, 201);
    // Hold the namespace in Terminating with its content, as the real namespace controller
    // does for a moment (it deletes the content kind by kind).
    emu.set_controller("namespace-controller", false);
    let (code, _) = emu.call("DELETE", "/api/v1/namespaces/going", None);
    assert_eq!(code, 202, "accepted: the namespace finalizer holds it");
    let n = emu.get("/api/v1/namespaces/going").expect("still there");
    assert_eq!(n["status"]["phase"], "Terminating");

    let (code, body) = emu.call("POST", cms, Some(&cm("new")));
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(
        body["message"],
        "configmaps \"new\" is forbidden: unable to create new content in namespace going because it is being terminated"
    );
    assert_eq!(
        body["details"]["causes"][0]["reason"],
        "NamespaceTerminating"
    );
    // kube-rs sees the same through server-side apply.
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(emu.client(), "going");
    let err = api
        .patch(
            "applied",
            &PatchParams::apply("tester"),
            &Patch::Apply(cm("applied")),
        )
        .await
        .expect_err("no create");
    let status = match err {
        kube::Error::Api(s) => s,
        other => panic!("{other}"),
    };
    assert_eq!(status.code, 403);
    assert_eq!(
        status
            .details
            .and_then(|d| d.causes.first().map(|c| c.reason.clone())),
        Some("NamespaceTerminating".into())
    );
    // An update of an existing object is allowed.
    let (code, body) = emu.call(
        "PATCH",
        &format!("{cms}/kept"),
        Some(&json!({"data": {"a": "2"}})),
    );
    assert_eq!(code, 200, "{body}");
    // The namespace controller back on: the content goes, then the namespace.
    emu.set_controller("namespace-controller", true);
    until("the namespace is gone", || {
        emu.get("/api/v1/namespaces/going").is_none().then_some(())
    })
    .await;
}

/// A write that names no field manager is recorded under the User-Agent's product name, or
/// `unknown` when the client sends none (kube-rs sends none unless told).
#[tokio::test]
async fn a_write_without_field_manager_is_owned_by_its_user_agent() {
    let emu = Emulator::start().await.expect("emulator");
    let managers = |name: &str| -> Vec<String> {
        let cm = emu
            .get(&format!("/api/v1/namespaces/default/configmaps/{name}"))
            .expect("configmap");
        cm["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["manager"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let cm = |name: &str| -> k8s_openapi::api::core::v1::ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"a": "1"}})).expect("cm")
    };
    let anonymous: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::default_namespaced(emu.client());
    anonymous
        .create(&PostParams::default(), &cm("anonymous"))
        .await
        .expect("created");
    assert_eq!(managers("anonymous"), ["unknown"]);
    let mut config = kube::Config::new(emu.url().parse().expect("url"));
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static("my-operator/1.2.3 (linux/amd64)"),
    ));
    let named: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::default_namespaced(kube::Client::try_from(config).expect("client"));
    named
        .create(&PostParams::default(), &cm("named"))
        .await
        .expect("created");
    assert_eq!(managers("named"), ["my-operator"]);
}

/// The CEL rules run even when other validation failed (a value out of range, a bad name), so
/// one answer lists every problem; only a value of the wrong type (or outside its enum) keeps
/// them from running, and the answer says so.
#[tokio::test]
async fn cel_rules_run_alongside_schema_errors_unless_a_type_is_wrong() {
    let emu = Emulator::start().await.expect("emulator");
    let api = gadgets(&emu).await;
    let err = api
        .create(
            &PostParams::default(),
            &gadget("Bad_Name", json!({"size": 101})),
        )
        .await
        .expect_err("invalid");
    let (code, message) = api_error(err);
    assert_eq!(code, 422);
    for want in [
        "metadata.name: Invalid value: \"Bad_Name\"",
        "spec.size: Invalid value: 101: spec.size in body should be less than or equal to 100",
        "size must be even",
    ] {
        assert!(message.contains(want), "{want} in {message}");
    }
    let err = api
        .create(&PostParams::default(), &gadget("g", json!({"size": "7"})))
        .await
        .expect_err("invalid");
    let (code, message) = api_error(err);
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.size in body must be of type integer"),
        "{message}"
    );
    assert!(
        message.contains("some validation rules were not checked because the object was invalid"),
        "{message}"
    );
    assert!(!message.contains("size must be even"), "{message}");
}

/// The opt-in `OwnerReferencesPermissionEnforcement` admission plugin: setting or changing
/// ownerReferences needs `delete` on the object, and a `blockOwnerDeletion` reference needs
/// `update` on the owner's `finalizers`; in-process calls (the administrator) are exempt.
#[tokio::test]
async fn owner_reference_permission_enforcement_is_opt_in() {
    let emu = Emulator::start().await.expect("emulator");
    let api = gadgets(&emu).await;
    let owner = api
        .create(&PostParams::default(), &gadget("owner", json!({})))
        .await
        .expect("owner");
    let owner_ref = |block: bool| {
        json!([{"apiVersion": "example.com/v1", "kind": "Gadget", "name": "owner",
                "uid": owner.metadata.uid.clone().unwrap_or_default(),
                "controller": true, "blockOwnerDeletion": block}])
    };
    let cm = |name: &str, refs: Value| -> k8s_openapi::api::core::v1::ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": refs}}))
            .expect("cm")
    };
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(emu.client());
    // Off by default.
    cms.create(&PostParams::default(), &cm("free", owner_ref(true)))
        .await
        .expect("no enforcement");
    let writer = json!([{"apiGroups": [""], "resources": ["configmaps"],
                         "verbs": ["get", "create", "patch", "update"]}]);
    emu.enforce_owner_references(writer.clone());
    let err = cms
        .create(&PostParams::default(), &cm("a", owner_ref(false)))
        .await
        .expect_err("no delete permission");
    let (code, message) = api_error(err);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "configmaps \"a\" is forbidden: cannot set an ownerRef on a resource you can't delete: , <nil>"
    );
    // Taking over an existing object is a change of its ownerReferences too.
    emu.call(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orphan"}})),
    );
    let err = cms
        .patch(
            "orphan",
            &PatchParams::apply("tester"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "orphan", "ownerReferences": owner_ref(false)}})),
        )
        .await
        .expect_err("adoption needs delete");
    assert_eq!(api_error(err).0, 403);
    // With delete: allowed, unless the reference blocks the owner's deletion without
    // permission to update the owner's finalizers.
    let mut rules = writer.as_array().cloned().unwrap_or_default();
    rules[0]["verbs"] = json!(["get", "create", "patch", "update", "delete"]);
    emu.enforce_owner_references(json!(rules.clone()));
    cms.create(&PostParams::default(), &cm("b", owner_ref(false)))
        .await
        .expect("delete granted");
    let err = cms
        .create(&PostParams::default(), &cm("c", owner_ref(true)))
        .await
        .expect_err("blockOwnerDeletion");
    let (code, message) = api_error(err);
    assert_eq!(code, 403);
    assert!(
        message.contains("cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on"),
        "{message}"
    );
    rules.push(
        json!({"apiGroups": ["example.com"], "resources": ["gadgets/finalizers"],
                      "verbs": ["update"]}),
    );
    emu.enforce_owner_references(json!(rules));
    cms.create(&PostParams::default(), &cm("c", owner_ref(true)))
        .await
        .expect("finalizers granted");
    // A change that leaves the ownerReferences alone needs nothing more.
    emu.enforce_owner_references(writer);
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .expect("owner references unchanged");
    // The administrator (in-process) is not checked.
    let (code, body) = emu.call(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "admin", "ownerReferences": owner_ref(true)}})),
    );
    assert_eq!(code, 201, "{body}");
}

/// managedFields sent with an update or patch of the main resource replace the server's record
/// (an empty list keeps it), which is how a client repairs ownership: here the Update entry
/// that wedges the status is folded into the Apply entry, and dropping the item works again.
#[tokio::test]
async fn client_sent_managed_fields_replace_the_record() {
    let emu = Emulator::start().await.expect("emulator");
    let api = gadgets(&emu).await;
    let op = "gadget-operator";
    let (apply, update) = gadget_and_manager(&api, op).await;
    let g = two_owners_of_b(&api, &apply, &update).await;
    // An empty list changes nothing.
    let same = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"managedFields": []}})),
        )
        .await
        .expect("patch");
    assert_eq!(same.metadata.managed_fields, g.metadata.managed_fields);
    // Fold the status Update entry into the status Apply entry.
    let mut entries: Vec<Value> = g
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| serde_json::to_value(m).expect("entry"))
        .collect();
    let is = |e: &Value, operation: &str| {
        e["manager"] == op && e["operation"] == operation && e["subresource"] == "status"
    };
    let legacy = entries
        .iter()
        .find(|e| is(e, "Update"))
        .cloned()
        .expect("the Update entry");
    entries.retain(|e| !is(e, "Update"));
    for e in entries.iter_mut().filter(|e| is(e, "Apply")) {
        let mut fields = e["fieldsV1"].clone();
        merge(&mut fields, &legacy["fieldsV1"]);
        e["fieldsV1"] = fields;
    }
    let repaired = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"managedFields": entries}})),
        )
        .await
        .expect("repair");
    let operations: Vec<String> = repaired
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.operation.clone())
        .collect();
    assert_eq!(operations, ["Apply"]);
    let g = drop_b(&api, &apply).await.expect("dropping b works again");
    assert_eq!(
        g.data["status"]["parts"],
        json!([{"name": "a", "state": "Declared", "owned": true}])
    );
}

/// Union of two FieldsV1 trees.
fn merge(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in b {
            merge(a.entry(k.clone()).or_insert_with(|| json!({})), v);
        }
    }
}

/// A ready pod counts as available only after `minReadySeconds`; the controller looks again
/// when that time has passed, with nothing else changing.
#[tokio::test]
async fn min_ready_seconds_delay_availability() {
    let emu = Emulator::start().await.expect("emulator");
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let mut d = deployment(1, "web:1");
    d["spec"]["minReadySeconds"] = json!(5);
    let (code, body) = emu.call(
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        Some(&d),
    );
    assert_eq!(code, 201, "{body}");
    until("a pod", || pods(&emu).first().cloned()).await;
    ready_all(&emu);
    let d = until("ready", || emu.get(path).filter(|d| counts(d)[2] == 1)).await;
    assert_eq!(counts(&d), [1, 1, 1, 0], "ready, not yet available");
    until("available", || emu.get(path).filter(|d| counts(d)[3] == 1)).await;
}
