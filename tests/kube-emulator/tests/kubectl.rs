//! The real `kubectl` against the emulator: discovery, apply (client- and server-side),
//! get with printer columns, patch, scale, wait, watch, delete. Skipped (loudly) when kubectl
//! is not installed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kube_emulator::Emulator;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

struct Kubectl {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

fn have_kubectl() -> bool {
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "\n!!!!!!!!!! SKIPPED: `kubectl` is not installed; install it to run the kubectl tests !!!!!!!!!!\n"
        );
    }
    found
}

impl Kubectl {
    fn new(emu: &Emulator) -> Kubectl {
        let dir =
            std::env::temp_dir().join(format!("kube-emulator-kubectl-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        emu.write_kubeconfig(&kubeconfig).unwrap();
        Kubectl { dir, kubeconfig }
    }

    fn cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("kubectl");
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("cache"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .kill_on_drop(true);
        c
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(60), self.cmd(args).output())
            .await
            .expect("kubectl finishes within 60 s")
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    async fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(!ok, "kubectl {args:?} should fail:\n{out}\n{err}");
        err
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd], categories: [all]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, default: 1, maximum: 10}
              replicas: {type: integer}
          status:
            type: object
            properties:
              replicas: {type: integer}
              conditions:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [type]
                items:
                  type: object
                  properties:
                    type: {type: string}
                    status: {type: string}
"#;

const WIDGET: &str =
    "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  size: 3\n";

#[tokio::test]
async fn kubectl_applies_gets_patches_scales_and_deletes_a_custom_resource() {
    if !have_kubectl() {
        return;
    }
    let emu = Emulator::start().await.unwrap();
    let k = Kubectl::new(&emu);
    let out = k.ok(&["version", "-o", "json"]).await;
    assert!(out.contains("\"minor\": \"33\""), "{out}");
    let crd = k.file("crd.yaml", CRD);
    assert!(k.ok(&["apply", "-f", &crd]).await.contains("created"));
    let out = k.ok(&["api-resources", "--api-group=example.com"]).await;
    assert!(
        out.contains("widgets") && out.contains("wd") && out.contains("Widget"),
        "{out}"
    );
    let w = k.file("w.yaml", WIDGET);
    assert!(
        k.ok(&["apply", "-f", &w])
            .await
            .contains("widget.example.com/w created")
    );
    let out = k.ok(&["get", "wd"]).await;
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "READY", "AGE"], "{out}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["w", "3"], "{out}");
    // Status through the subresource, then the printer column shows it.
    k.ok(&[
        "patch",
        "wd",
        "w",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ])
    .await;
    let out = k.ok(&["get", "widget", "w", "--no-headers"]).await;
    assert!(out.split_whitespace().nth(2) == Some("True"), "{out}");
    // Strategic merge (kubectl's default) is refused for custom resources, like kube-apiserver.
    let err = k
        .fails(&["patch", "wd", "w", "-p", r#"{"spec":{"size":4}}"#])
        .await;
    assert!(
        err.contains("strategic merge patch is not supported"),
        "{err}"
    );
    k.ok(&[
        "patch",
        "wd",
        "w",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":4}}"#,
    ])
    .await;
    assert_eq!(
        k.ok(&[
            "get",
            "wd",
            "w",
            "-o",
            "jsonpath={.spec.size} {.metadata.generation}"
        ])
        .await,
        "4 2"
    );
    // Validation: schema errors and unknown fields (kubectl asks for strict validation).
    let bad = k.file(
        "bad.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  size: 11\n",
    );
    let err = k.fails(&["apply", "-f", &bad]).await;
    assert!(
        err.contains("spec.size in body should be less than or equal to 10"),
        "{err}"
    );
    let unknown = k.file(
        "u.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  colour: red\n",
    );
    let err = k.fails(&["apply", "-f", &unknown]).await;
    assert!(err.contains("unknown field \"spec.colour\""), "{err}");
    k.ok(&["scale", "wd", "w", "--replicas=3"]).await;
    assert_eq!(
        k.ok(&["get", "wd", "w", "-o", "jsonpath={.spec.replicas}"])
            .await,
        "3"
    );
    // `all` category, -o yaml round trip, delete with --wait.
    assert!(k.ok(&["get", "all"]).await.contains("widget.example.com/w"));
    let yaml = k.ok(&["get", "wd", "w", "-o", "yaml"]).await;
    assert!(
        yaml.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{yaml}"
    );
    assert!(k.ok(&["delete", "-f", &w]).await.contains("deleted"));
    let (_, out, err) = k.run(&["get", "wd"]).await;
    assert!(err.contains("No resources found"), "{out}{err}");
}

#[tokio::test]
async fn kubectl_server_side_apply_reports_conflicts() {
    if !have_kubectl() {
        return;
    }
    let emu = Emulator::start().await.unwrap();
    let k = Kubectl::new(&emu);
    let a = k.file(
        "a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: a\n",
    );
    let b = k.file(
        "b.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: b\n",
    );
    assert!(
        k.ok(&["apply", "--server-side", "-f", &a])
            .await
            .contains("serverside-applied")
    );
    let err = k
        .fails(&["apply", "--server-side", "--field-manager=other", "-f", &b])
        .await;
    assert!(err.contains("conflict with \"kubectl\""), "{err}");
    assert!(err.contains(".data.k"), "{err}");
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        &b,
    ])
    .await;
    assert_eq!(
        k.ok(&["get", "cm", "c", "-o", "jsonpath={.data.k}"]).await,
        "b"
    );
    let mf = k
        .ok(&[
            "get",
            "cm",
            "c",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
            "--show-managed-fields",
        ])
        .await;
    assert!(mf.contains("other"), "{mf}");
}

#[tokio::test]
async fn kubectl_wait_watch_and_finalizers() {
    if !have_kubectl() {
        return;
    }
    let emu = Emulator::start().await.unwrap();
    let k = Kubectl::new(&emu);
    k.ok(&["apply", "-f", &k.file("crd.yaml", CRD)]).await;
    let w = k.file("w.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n  finalizers: [example.com/hold]\nspec: {}\n");
    k.ok(&["apply", "-f", &w]).await;
    // kubectl get -w: a watch with server-side printing.
    let mut watch = k
        .cmd(&["get", "cm", "--watch", "--no-headers", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    tokio::time::sleep(Duration::from_millis(300)).await;
    emu.call(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "watched"}})),
    );
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("kubectl get -w prints the new object")
        .unwrap()
        .unwrap();
    assert_eq!(line, "configmap/watched");
    let _ = watch.kill().await;
    // kubectl wait on a condition set later.
    let waiter = {
        let mut c = k.cmd(&["wait", "wd/w", "--for=condition=Ready", "--timeout=20s"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, body) = emu.call(
        "PATCH",
        "/apis/example.com/v1/namespaces/default/widgets/w/status",
        Some(&json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
    );
    assert_eq!(code, 200, "{body}");
    let out = waiter.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("condition met"));
    // Delete waits on the finalizer; without --wait it returns and the object is terminating.
    k.ok(&["delete", "wd", "w", "--wait=false"]).await;
    let ts = k
        .ok(&[
            "get",
            "wd",
            "w",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .await;
    assert!(!ts.is_empty());
    let deleter = {
        let mut c = k.cmd(&["delete", "wd", "w", "--timeout=20s"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    k.ok(&[
        "patch",
        "wd",
        "w",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    let out = deleter.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = k.fails(&["get", "wd", "w"]).await;
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}

#[tokio::test]
async fn kubectl_built_ins_and_namespaces() {
    if !have_kubectl() {
        return;
    }
    let emu = Emulator::start().await.unwrap();
    let k = Kubectl::new(&emu);
    // `kubectl create <generator>` sends protobuf, which the emulator does not speak: it says so.
    let err = k.fails(&["create", "namespace", "apps"]).await;
    assert!(err.contains("application/vnd.kubernetes.protobuf"), "{err}");
    assert!(
        err.contains("--dry-run=client -o yaml | kubectl apply -f -"),
        "{err}"
    );
    let objects = k.file(
        "objects.yaml",
        r#"apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: apps, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: nginx, image: "nginx:1.27", ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: apps}
data: {a: b}
---
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: apps}
stringData: {u: guest}
"#,
    );
    k.ok(&["apply", "-f", &objects]).await;
    k.ok(&["-n", "apps", "expose", "deployment", "web", "--port=80"])
        .await;
    let out = k.ok(&["-n", "apps", "get", "deploy,svc,cm,secret"]).await;
    for want in [
        "deployment.apps/web",
        "0/2",
        "service/web",
        "ClusterIP",
        "80/TCP",
        "configmap/cfg",
        "secret/s",
        "Opaque",
    ] {
        assert!(out.contains(want), "{want} in:\n{out}");
    }
    assert_eq!(
        k.ok(&[
            "-n",
            "apps",
            "get",
            "secret",
            "s",
            "-o",
            "jsonpath={.data.u}"
        ])
        .await,
        "Z3Vlc3Q="
    );
    // Strategic merge patch on a built-in merges containers by name.
    k.ok(&[
        "-n",
        "apps",
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.28"}]}}}}"#,
    ])
    .await;
    assert_eq!(
        k.ok(&[
            "-n",
            "apps",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image} {.metadata.generation}"
        ])
        .await,
        "nginx:1.28 2"
    );
    // The Deployment controller made pods; they are ready once a kubelet says so, and
    // `kubectl rollout status` follows the Deployment's status.
    let out = k.ok(&["-n", "apps", "get", "pods", "-l", "app=web"]).await;
    assert!(out.contains("Pending"), "{out}");
    // A kubelet whose pods all pass their probes, while the rollout (the image patched above)
    // goes on.
    let kubelet = || {
        let (_, list) = emu.call("GET", "/api/v1/namespaces/apps/pods", None);
        for p in list["items"].as_array().into_iter().flatten() {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            emu.set_pod_ready("apps", name, true);
        }
    };
    let rollout = k.ok(&[
        "-n",
        "apps",
        "rollout",
        "status",
        "deployment/web",
        "--timeout=50s",
    ]);
    tokio::pin!(rollout);
    let out = loop {
        tokio::select! {
            out = &mut rollout => break out,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => kubelet(),
        }
    };
    assert!(out.contains("successfully rolled out"), "{out}");
    k.ok(&["-n", "apps", "label", "cm", "cfg", "tier=x"]).await;
    assert!(
        k.ok(&["-n", "apps", "get", "cm", "-l", "tier=x", "-o", "name"])
            .await
            .contains("configmap/cfg")
    );
    assert!(
        k.ok(&[
            "-n",
            "apps",
            "get",
            "cm",
            "--field-selector",
            "metadata.name=cfg",
            "-o",
            "name"
        ])
        .await
        .contains("configmap/cfg")
    );
    k.ok(&["delete", "namespace", "apps", "--timeout=30s"])
        .await;
    let err = k.fails(&["get", "namespace", "apps"]).await;
    assert!(err.contains("not found"), "{err}");
    // What the emulator does not serve, it says.
    let err = k.fails(&["get", "replicasets"]).await;
    assert!(
        err.contains("the server doesn't have a resource type \"replicasets\""),
        "{err}"
    );
}
