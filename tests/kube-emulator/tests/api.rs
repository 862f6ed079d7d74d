//! API semantics of the emulator through kube-rs over HTTP: watches (resourceVersion,
//! bookmarks, 410 Gone, selector transitions), paging, optimistic concurrency, generation,
//! subresources, patches, server-side apply, finalizers and garbage collection.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube_emulator::{Emulator, Options};
use serde_json::{Value, json};

fn cm(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).unwrap()
}

async fn next_event<K>(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> WatchEvent<K> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("a watch event within 10 s")
        .expect("stream open")
        .expect("event decodes")
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                        "replicas": {"type": "integer"},
                        "color": {"type": "string", "enum": ["red", "blue"]},
                        "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "v": {"type": "string"}}}},
                    }, "x-kubernetes-validations": [{"rule": "!has(self.color) || self.color != 'blue' || self.size > 2", "message": "blue widgets need size > 2"}]},
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}, "replicas": {"type": "integer"}}},
                }}}}]}
    })
}

async fn widgets(emu: &Emulator) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(emu.client());
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd()).unwrap(),
    )
    .await
    .expect("CRD created");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(emu.client(), "default", &ar)
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})).unwrap()
}

#[tokio::test]
async fn watch_from_a_resource_version_replays_later_events_then_streams() {
    let emu = Emulator::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(emu.client(), "default");
    api.create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    api.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let mut w = api
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut w).await {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        e => panic!("want ADDED b, got {e:?}"),
    }
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "w"}})),
    )
    .await
    .unwrap();
    match next_event(&mut w).await {
        WatchEvent::Modified(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some("a"));
            assert_eq!(o.data.unwrap()["k"], "w");
        }
        e => panic!("want MODIFIED a, got {e:?}"),
    }
    api.delete("a", &DeleteParams::default()).await.unwrap();
    match next_event(&mut w).await {
        WatchEvent::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("a")),
        e => panic!("want DELETED a, got {e:?}"),
    }
}

#[tokio::test]
async fn watch_sends_bookmarks_and_410_gone_for_a_compacted_version() {
    let emu = Emulator::start_with(Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    })
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(emu.client(), "default");
    let old_rv = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = api
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut w).await {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, old_rv),
        e => panic!("want BOOKMARK, got {e:?}"),
    }
    api.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    emu.compact();
    let mut w = api
        .watch(&WatchParams::default().disable_bookmarks(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut w).await {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        e => panic!("want ERROR 410, got {e:?}"),
    }
    // A list continuation from before the compaction is gone too.
    let err = api
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(&base64_token(&old_rv)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 410));
}

fn base64_token(rv: &str) -> String {
    use base64::Engine;
    let raw = format!("{{\"rv\":{rv},\"ns\":\"default\",\"name\":\"a\"}}");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[tokio::test]
async fn label_selector_watch_reports_objects_entering_and_leaving() {
    let emu = Emulator::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(emu.client(), "default");
    let mut w = api
        .watch(
            &WatchParams::default().disable_bookmarks().labels("team=a"),
            "0",
        )
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("x", json!({"team": "b"})))
        .await
        .unwrap();
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Added(_)));
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "c"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Deleted(_)));
}

#[tokio::test]
async fn paging_is_a_consistent_snapshot() {
    let emu = Emulator::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(emu.client(), "default");
    for n in ["a", "b", "c", "d"] {
        api.create(&PostParams::default(), &cm(n, json!({})))
            .await
            .unwrap();
    }
    let p1 = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(p1.items.len(), 2);
    assert_eq!(p1.metadata.remaining_item_count, Some(2));
    // Changes after the first page do not show in the next pages.
    api.delete("c", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &cm("e", json!({})))
        .await
        .unwrap();
    let tok = p1.metadata.continue_.clone().unwrap();
    let p2 = api
        .list(&ListParams::default().limit(2).continue_token(&tok))
        .await
        .unwrap();
    let names: Vec<_> = p2
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["c", "d"]);
    assert_eq!(p2.metadata.continue_, None);
    assert_eq!(p2.metadata.resource_version, p1.metadata.resource_version);
}

#[tokio::test]
async fn paging_within_a_namespace_and_with_selectors_is_a_consistent_snapshot() {
    let emu = Emulator::start().await.unwrap();
    let nss: Api<Namespace> = Api::all(emu.client());
    for ns in ["n1", "n2", "n3"] {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let in_ns = |ns: &str| -> Api<ConfigMap> { Api::namespaced(emu.client(), ns) };
    for ns in ["n1", "n2", "n3"] {
        for (n, team) in [("a", "x"), ("b", "y"), ("c", "x"), ("d", "x")] {
            in_ns(ns)
                .create(&PostParams::default(), &cm(n, json!({"team": team})))
                .await
                .unwrap();
        }
    }
    let names = |l: &kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .iter()
            .map(|c| {
                format!(
                    "{}/{}",
                    c.metadata.namespace.clone().unwrap(),
                    c.metadata.name.clone().unwrap()
                )
            })
            .collect()
    };
    // One namespace, paged, while the others and this one change.
    let n2 = in_ns("n2");
    let p1 = n2.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(names(&p1), ["n2/a", "n2/b", "n2/c"]);
    assert_eq!(p1.metadata.remaining_item_count, Some(1));
    n2.delete("d", &DeleteParams::default()).await.unwrap();
    n2.create(&PostParams::default(), &cm("e", json!({"team": "x"})))
        .await
        .unwrap();
    in_ns("n3")
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    let tok = p1.metadata.continue_.clone().unwrap();
    let p2 = n2
        .list(&ListParams::default().limit(3).continue_token(&tok))
        .await
        .unwrap();
    assert_eq!(names(&p2), ["n2/d"], "as of the first page");
    assert_eq!(p2.metadata.continue_, None);
    // With a selector: a continue token while more match, no count.
    let x = ListParams::default().labels("team=x").limit(2);
    let s1 = n2.list(&x).await.unwrap();
    assert_eq!(names(&s1), ["n2/a", "n2/c"]);
    assert_eq!(s1.metadata.remaining_item_count, None);
    let tok = s1.metadata.continue_.clone().expect("more match");
    let s2 = n2.list(&x.clone().continue_token(&tok)).await.unwrap();
    assert_eq!(names(&s2), ["n2/e"]);
    assert_eq!(s2.metadata.continue_, None);
    // Every namespace, paged across namespace boundaries, at a past resourceVersion.
    let all: Api<ConfigMap> = Api::all(emu.client());
    let mut seen = Vec::new();
    let mut page = all.list(&ListParams::default().limit(4)).await.unwrap();
    in_ns("n1")
        .delete("b", &DeleteParams::default())
        .await
        .unwrap();
    in_ns("n3")
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    loop {
        seen.extend(names(&page));
        let Some(tok) = page.metadata.continue_.clone() else {
            break;
        };
        page = all
            .list(&ListParams::default().limit(4).continue_token(&tok))
            .await
            .unwrap();
    }
    let ours: Vec<&String> = seen.iter().filter(|n| n.starts_with('n')).collect();
    assert_eq!(
        ours,
        [
            "n1/a", "n1/b", "n1/c", "n1/d", "n2/a", "n2/b", "n2/c", "n2/e", "n3/b", "n3/c", "n3/d"
        ]
    );
}

#[tokio::test]
async fn owner_references_are_followed_through_adoption_and_dangling_owners() {
    let emu = Emulator::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(emu.client(), "default");
    let owner = |c: &ConfigMap| json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": c.metadata.name, "uid": c.metadata.uid}]);
    let a = cms
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let b = cms
        .create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let mut child = cm("child", json!({}));
    child.metadata.owner_references = Some(serde_json::from_value(owner(&a)).unwrap());
    cms.create(&PostParams::default(), &child).await.unwrap();
    // Adopted by b: deleting a leaves it.
    cms.patch(
        "child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"ownerReferences": owner(&b)}})),
    )
    .await
    .unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    // A marker created after a's deletion and collected with its (gone) owner: once it is
    // gone, the collector has seen a's deletion.
    let mut marker = cm("marker", json!({}));
    marker.metadata.owner_references = Some(serde_json::from_value(owner(&a)).unwrap());
    cms.create(&PostParams::default(), &marker).await.unwrap();
    wait_gone(&cms, "marker").await;
    assert!(cms.get_opt("child").await.unwrap().is_some(), "b owns it");
    // Two owners, one gone: the reference to it is dropped, the object stays.
    let c = cms
        .create(&PostParams::default(), &cm("c", json!({})))
        .await
        .unwrap();
    let mut refs = owner(&b);
    refs.as_array_mut()
        .unwrap()
        .extend(owner(&c).as_array().unwrap().clone());
    cms.patch(
        "child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"ownerReferences": refs}})),
    )
    .await
    .unwrap();
    cms.delete("c", &DeleteParams::default()).await.unwrap();
    let mut left = Vec::new();
    for _ in 0..100 {
        left = cms
            .get("child")
            .await
            .unwrap()
            .metadata
            .owner_references
            .unwrap_or_default();
        if left.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].uid, b.metadata.uid.clone().unwrap());
    // The last owner goes: so does the child.
    cms.delete("b", &DeleteParams::default()).await.unwrap();
    wait_gone(&cms, "child").await;
}

#[tokio::test]
async fn stale_resource_version_is_a_409_conflict() {
    let emu = Emulator::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(emu.client(), "default");
    let v1 = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let mut v2 = v1.clone();
    v2.data = Some([("k".to_string(), "2".to_string())].into());
    api.replace("a", &PostParams::default(), &v2).await.unwrap();
    let mut stale = v1.clone();
    stale.data = Some([("k".to_string(), "3".to_string())].into());
    let err = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("the object has been modified"),
                "{}",
                s.message
            );
        }
        e => panic!("{e}"),
    }
    // A merge patch carrying the old resourceVersion is conditional too.
    let err = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": v1.metadata.resource_version}, "data": {"k": "4"}})),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    // An unchanged update writes nothing.
    let now = api.get("a").await.unwrap();
    let same = api
        .replace("a", &PostParams::default(), &now)
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        now.metadata.resource_version
    );
}

#[tokio::test]
async fn custom_resources_defaults_validation_generation_status_and_scale() {
    let emu = Emulator::start().await.unwrap();
    let api = widgets(&emu).await;
    let w = api
        .create(
            &PostParams::default(),
            &widget("w", json!({"color": "red"})),
        )
        .await
        .unwrap();
    assert_eq!(w.data["spec"]["size"], 1, "default applied");
    assert_eq!(w.metadata.generation, Some(1));
    // OpenAPI validation and CEL rules answer 422 with the field.
    for (spec, needle) in [
        (
            json!({"size": 11}),
            "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
        ),
        (
            json!({"color": "green"}),
            "spec.color: Unsupported value: \"green\"",
        ),
        (json!({"color": "blue"}), "blue widgets need size > 2"),
        (
            json!({"items": [{"name": "a"}, {"name": "a"}]}),
            "spec.items[1]: Duplicate value",
        ),
    ] {
        let err = api
            .create(&PostParams::default(), &widget("bad", spec.clone()))
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{spec}");
                assert!(s.message.contains(needle), "{spec}: {}", s.message);
            }
            e => panic!("{e}"),
        }
    }
    // Status through /status does not bump generation; spec through the main resource does.
    let st = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}, "spec": {"size": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(st.data["status"]["ready"], true);
    assert_eq!(st.data["spec"]["size"], 1, "spec ignored on /status");
    assert_eq!(st.metadata.generation, Some(1));
    let sp = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 3}, "status": {"ready": false}})),
        )
        .await
        .unwrap();
    assert_eq!(sp.metadata.generation, Some(2));
    assert_eq!(
        sp.data["status"]["ready"], true,
        "status ignored on the main resource"
    );
    // Labels alone do not bump generation.
    let lb = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(lb.metadata.generation, Some(2));
    // Scale subresource.
    let scaled = api
        .patch_scale(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(4));
    assert_eq!(api.get("w").await.unwrap().data["spec"]["replicas"], 4);
    // Strategic merge patch is refused for custom resources, as by kube-apiserver.
    let err = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"size": 2}})),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 415));
}

#[tokio::test]
async fn server_side_apply_tracks_owners_and_reports_conflicts() {
    let emu = Emulator::start().await.unwrap();
    let api = widgets(&emu).await;
    let mine = widget("w", json!({"size": 2, "items": [{"name": "a", "v": "1"}]}));
    api.patch("w", &PatchParams::apply("alice"), &Patch::Apply(&mine))
        .await
        .unwrap();
    let bob = widget("w", json!({"size": 5, "items": [{"name": "b", "v": "2"}]}));
    let err = api
        .patch("w", &PatchParams::apply("bob"), &Patch::Apply(&bob))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("conflict with \"alice\": .spec.size"),
                "{}",
                s.message
            );
        }
        e => panic!("{e}"),
    }
    let forced = api
        .patch("w", &PatchParams::apply("bob").force(), &Patch::Apply(&bob))
        .await
        .unwrap();
    // Map lists merge by key: both items are there.
    assert_eq!(forced.data["spec"]["items"].as_array().unwrap().len(), 2);
    assert_eq!(forced.data["spec"]["size"], 5);
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .map(|m| m.manager.clone().unwrap())
        .collect();
    assert_eq!(managers, ["alice", "bob"]);
    // alice stops applying her item: it is removed (nobody else owns it); size stays bob's.
    let alice2 = widget("w", json!({}));
    let after = api
        .patch("w", &PatchParams::apply("alice"), &Patch::Apply(&alice2))
        .await
        .unwrap();
    assert_eq!(
        after.data["spec"]["items"],
        json!([{"name": "b", "v": "2"}])
    );
    assert_eq!(after.data["spec"]["size"], 5);
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owner_references_cascade() {
    let emu = Emulator::start().await.unwrap();
    let api = widgets(&emu).await;
    let mut w = widget("owner", json!({}));
    w.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let owner = api.create(&PostParams::default(), &w).await.unwrap();
    let uid = owner.metadata.uid.clone().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(emu.client(), "default");
    let mut child = cm("child", json!({}));
    child.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget", "name": "owner", "uid": uid, "controller": true, "blockOwnerDeletion": true,
    })).unwrap()]);
    cms.create(&PostParams::default(), &child).await.unwrap();
    // Delete: held by the finalizer, deletionTimestamp set, generation bumped.
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    let held = api.get("owner").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.metadata.generation, Some(2));
    // No new finalizers while deleting.
    let err = api
        .patch(
            "owner",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "x/y"]}})),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 422));
    assert!(
        cms.get_opt("child").await.unwrap().is_some(),
        "child waits for the owner"
    );
    api.patch(
        "owner",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("owner").await.unwrap().is_none());
    wait_gone(&cms, "child").await;
}

async fn wait_gone(api: &Api<ConfigMap>, name: &str) {
    for _ in 0..100 {
        if api.get_opt(name).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} was not garbage-collected");
}

#[tokio::test]
async fn foreground_and_orphan_deletion() {
    let emu = Emulator::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(emu.client(), "default");
    let mk = |name: &str, owner: &ConfigMap| {
        let mut c = cm(name, json!({}));
        c.metadata.owner_references = Some(vec![serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid, "blockOwnerDeletion": true,
        })).unwrap()]);
        c
    };
    let p = cms
        .create(&PostParams::default(), &cm("p", json!({})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &mk("c1", &p))
        .await
        .unwrap();
    cms.delete("p", &DeleteParams::foreground()).await.unwrap();
    wait_gone(&cms, "c1").await;
    wait_gone(&cms, "p").await;
    let q = cms
        .create(&PostParams::default(), &cm("q", json!({})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &mk("c2", &q))
        .await
        .unwrap();
    cms.delete("q", &DeleteParams::orphan()).await.unwrap();
    wait_gone(&cms, "q").await;
    let c2 = cms.get("c2").await.unwrap();
    assert_eq!(c2.metadata.owner_references, None, "orphaned");
}

#[tokio::test]
async fn namespace_deletion_removes_its_content() {
    let emu = Emulator::start().await.unwrap();
    let nss: Api<Namespace> = Api::all(emu.client());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "tmp"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(emu.client(), "tmp");
    cms.create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    nss.delete("tmp", &DeleteParams::default()).await.unwrap();
    for _ in 0..100 {
        if nss.get_opt("tmp").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(nss.get_opt("tmp").await.unwrap().is_none());
    assert_eq!(
        emu.call("GET", "/api/v1/namespaces/tmp/configmaps/a", None)
            .0,
        404
    );
    let err = cms
        .create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));
}

#[tokio::test]
async fn built_ins_defaults_strategic_merge_and_secrets() {
    let emu = Emulator::start().await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(emu.client(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "a", "image": "nginx:1", "ports": [{"containerPort": 80}]}, {"name": "b", "image": "busybox:1"}]}}}
    })).unwrap();
    let d = deps.create(&PostParams::default(), &d).await.unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.template.spec.as_ref().unwrap().containers[0]
            .ports
            .as_ref()
            .unwrap()[0]
            .protocol
            .as_deref(),
        Some("TCP")
    );
    let p = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "busybox:2"}]}}}})),
        )
        .await
        .unwrap();
    let cs = p.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(cs.len(), 2, "merged by name, not replaced");
    assert_eq!(cs[1].image.as_deref(), Some("busybox:2"));
    assert_eq!(p.metadata.generation, Some(2));
    // The selector is immutable; the selector must match the template.
    let err = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "x"}}}})),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 422));
    let secrets: Api<Secret> = Api::namespaced(emu.client(), "default");
    let s = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "s"}, "stringData": {"u": "guest"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(s.data.unwrap()["u"].0, b"guest");
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
}

#[tokio::test]
async fn watchers_see_crd_objects_through_a_kube_runtime_watcher() {
    let emu = Emulator::start().await.unwrap();
    let api = widgets(&emu).await;
    let stream = kube::runtime::watcher(
        api.clone(),
        kube::runtime::watcher::Config::default().page_size(1),
    );
    let mut stream = kube::runtime::WatchStreamExt::applied_objects(stream).boxed();
    api.create(&PostParams::default(), &widget("w1", json!({})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &widget("w2", json!({})))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let o = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("event")
            .unwrap()
            .unwrap();
        seen.push(o.metadata.name.unwrap());
    }
    seen.sort();
    assert_eq!(seen, ["w1", "w2"]);
}

#[tokio::test]
async fn unimplemented_things_say_so() {
    let emu = Emulator::start().await.unwrap();
    let (code, body) = emu.call("GET", "/api/v1/persistentvolumeclaims", None);
    assert_eq!(code, 404);
    assert!(body["message"].as_str().unwrap().contains("could not find"));
    let (code, _) = emu.call("GET", "/api/v1/namespaces/default/configmaps/x/log", None);
    assert_eq!(code, 404);
    let (code, body) = emu.call(
        "POST",
        "/api/v1/namespaces/default/configmaps/x",
        Some(&json!({})),
    );
    assert_eq!(code, 405, "{body}");
    let (code, body) = emu.call("GET", "/openapi/v2", None);
    assert_eq!(code, 404);
    assert!(body["message"].as_str().unwrap().contains("OpenAPI v2"));
    let (code, body) = emu.call(
        "GET",
        "/api/v1/namespaces/default/configmaps?fieldSelector=data.k%3Dv",
        None,
    );
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("field label not supported")
    );
}

#[tokio::test]
async fn streaming_lists_send_initial_events_then_the_end_bookmark() {
    let emu = Emulator::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(emu.client(), "default");
    api.create(&PostParams::default(), &cm("before", json!({})))
        .await
        .unwrap();
    let stream = kube::runtime::watcher(
        api.clone(),
        kube::runtime::watcher::Config::default().streaming_lists(),
    );
    let mut stream = stream.boxed();
    let mut initial = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("event")
            .unwrap()
            .unwrap();
        match ev {
            kube::runtime::watcher::Event::Init => {}
            kube::runtime::watcher::Event::InitApply(o) => initial.push(o.metadata.name.unwrap()),
            kube::runtime::watcher::Event::InitDone => break,
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(initial, ["before"]);
    api.create(&PostParams::default(), &cm("after", json!({})))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .expect("event")
        .unwrap()
        .unwrap();
    assert!(
        matches!(&ev, kube::runtime::watcher::Event::Apply(o) if o.metadata.name.as_deref() == Some("after")),
        "{ev:?}"
    );
}

/// As the real API server: a `kubernetes.io/tls` Secret needs `tls.crt` and `tls.key`
/// (ValidateSecret), Ingress paths need a valid pathType and a backend port (ValidateIngress),
/// and networking.k8s.io serves Ingress, IngressClass (cluster-scoped) and NetworkPolicy.
#[tokio::test]
async fn tls_secrets_ingresses_and_network_policies_are_validated_and_served() {
    let emu = Emulator::start().await.expect("emulator");
    let (code, body) = emu.call(
        "POST",
        "/api/v1/namespaces/default/secrets",
        Some(
            &json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                     "metadata": {"name": "t"}, "data": {"tls.crt": "YQ=="}}),
        ),
    );
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("data[tls.key]: Required value")),
        "{body}"
    );
    let (code, body) = emu.call(
        "POST",
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
        Some(
            &json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                     "metadata": {"name": "i"},
                     "spec": {"rules": [{"host": "a.example.org", "http": {"paths": [
                         {"path": "ws", "pathType": "Prefix",
                          "backend": {"service": {"name": "s", "port": {"name": "ws"}}}},
                         {"path": "/x", "backend": {"service": {"name": "s", "port": {}}}}]}}]}}),
        ),
    );
    assert_eq!(code, 422, "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    for want in [
        "spec.rules[0].http.paths[0].path: Invalid value: \"ws\": must be an absolute path",
        "spec.rules[0].http.paths[1].pathType: Required value",
        "spec.rules[0].http.paths[1].backend.service.port: Required value",
    ] {
        assert!(msg.contains(want), "{want} not in {msg}");
    }
    let (code, body) = emu.call(
        "POST",
        "/apis/networking.k8s.io/v1/ingressclasses",
        Some(&json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                     "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}})),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = emu.call(
        "POST",
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
        Some(
            &json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "n"}, "spec": {"podSelector": {}}}),
        ),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["metadata"]["generation"], 1);
    let (code, list) = emu.call("GET", "/apis/networking.k8s.io/v1", None);
    assert_eq!(code, 200);
    let names: Vec<&str> = list["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for want in [
        "ingresses",
        "ingresses/status",
        "ingressclasses",
        "networkpolicies",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
}
