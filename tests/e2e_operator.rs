//! End to end: the real `stompgate operator` binary and the real `kubectl` against the
//! in-memory API server (tests/kube-emulator), the real RabbitMQ, a tiny kubelet that runs
//! the operator's pod template as local `stompgate gateway` processes, and headless Chromium
//! showing the seed page's message through that gateway.
//!
//! Needs what `scripts/test.sh` installs (RabbitMQ on 127.0.0.1:5672 with guest/guest, node
//! and Chromium for the browser runner) plus `kubectl`; without kubectl it is skipped with a
//! loud message. The same scenario against a real cluster: docs/api-emulator.md.

#[path = "e2e/kubelet.rs"]
mod kubelet;
#[path = "e2e/proxy.rs"]
mod proxy;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_emulator::{AuditEntry, Emulator};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use support::operator::cluster::{cond, cond_is, observed_current};
use support::rabbit::exchange_exists;
use support::{repo_root, wait_for};

/// The broker of examples/stompgateway-local.yaml.
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const GW: &str = "/apis/stompgate.io/v1alpha1/namespaces/default/stompgateways";
const MANAGED: &str = "app.kubernetes.io/managed-by%3Dstompgateway-operator";

fn have_kubectl() -> bool {
    let ok = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "\n################################################################################\n\
             ## SKIPPED e2e_operator: `kubectl` is not installed. CI installs it           ##\n\
             ## (scripts/ensure-test-deps.sh); install it to run this end-to-end test.      ##\n\
             ################################################################################\n"
        );
    }
    ok
}

struct E2e {
    dir: PathBuf,
    kubeconfig: PathBuf,
    emu: Arc<Emulator>,
    operator: Option<tokio::process::Child>,
    op_log: PathBuf,
    start: Instant,
}

impl Drop for E2e {
    fn drop(&mut self) {
        if let Some(op) = self.operator.as_mut() {
            let _ = op.start_kill();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.op_log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "---- operator log (last 80 lines) ----\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            for name in ["chat", "flaky"] {
                if let Some(gw) = self.emu.get(&format!("{GW}/{name}")) {
                    eprintln!("---- stompgateway {name} ----\n{:#}", gw["status"]);
                }
            }
            let audit = self.emu.audit();
            eprintln!("---- last API requests ----");
            for a in audit
                .iter()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                eprintln!(
                    "{} {} {}?{} -> {} ({})",
                    a.time, a.method, a.path, a.query, a.code, a.user_agent
                );
            }
            eprintln!("(work dir kept: {})", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl E2e {
    fn step(&self, what: &str) {
        eprintln!("[e2e {:>6.1}s] {what}", self.start.elapsed().as_secs_f64());
    }

    fn kubectl_cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("kubectl");
        c.args(args)
            .current_dir(repo_root())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("kube-cache"))
            .kill_on_drop(true);
        c
    }

    async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(90), self.kubectl_cmd(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in 90 s"))
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    fn operator_cmd(&self, identity: &str) -> tokio::process::Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.op_log)
            .expect("operator log");
        use std::io::Write;
        let mut l = log.try_clone().expect("log");
        let _ = writeln!(l, "===== operator {identity} =====");
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_stompgate"));
        c.args([
            "operator",
            "--metrics-listen",
            "127.0.0.1:0",
            "--leader-elect",
            "true",
            "--lease-duration-secs",
            "3",
            "--broker-probe-secs",
            "1",
            "--finalizer-timeout-secs",
            "60",
            "--gateway-image",
            "stompgate/stompgate:e2e",
        ])
        .env("KUBECONFIG", &self.kubeconfig)
        .env("POD_NAMESPACE", "default")
        .env("POD_NAME", identity)
        .env("RUST_LOG", "info,kube=warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true);
        c
    }

    fn start_operator(&mut self, identity: &str) {
        self.operator = Some(
            self.operator_cmd(identity)
                .spawn()
                .expect("operator starts"),
        );
    }

    async fn kill_operator(&mut self) {
        if let Some(mut op) = self.operator.take() {
            let _ = op.start_kill();
            let _ = op.wait().await;
        }
    }

    fn gw(&self, name: &str) -> Option<Value> {
        self.emu.get(&format!("{GW}/{name}"))
    }

    /// Requests the operator made since `from` (not kubectl, not the in-process kubelet).
    fn operator_requests(&self, from: usize) -> Vec<AuditEntry> {
        self.emu
            .audit()
            .into_iter()
            .skip(from)
            .filter(|a| !a.method.starts_with("IN-PROCESS") && !a.user_agent.starts_with("kubectl"))
            .collect()
    }
}

struct Broker {
    conn: Connection,
}

impl Broker {
    async fn connect() -> Broker {
        Broker {
            conn: Connection::connect(AMQP_URL, ConnectionProperties::default())
                .await
                .expect("RabbitMQ on 127.0.0.1:5672 (scripts/ensure-test-deps.sh starts it)"),
        }
    }

    async fn wait_exchange(&self, name: &str, exists: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while exchange_exists(&self.conn, name).await != exists {
            assert!(
                Instant::now() < deadline,
                "exchange {name} should {}exist",
                if exists { "" } else { "not " }
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether a message published to `rabbitmq`/`zjj` reaches exchange `dest` (through a
    /// temporary queue bound to it).
    async fn routes_zjj_to(&self, dest: &str) -> bool {
        let ch = self.conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("temp queue");
        ch.queue_bind(
            q.name().clone(),
            dest.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind temp queue");
        for _ in 0..30 {
            ch.basic_publish(
                "rabbitmq".into(),
                "zjj".into(),
                BasicPublishOptions::default(),
                b"probe",
                BasicProperties::default(),
            )
            .await
            .expect("publish");
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Some(_)) = ch
                .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
                .await
            {
                let _ = ch.close(200, "ok".into()).await;
                return true;
            }
        }
        let _ = ch.close(200, "ok".into()).await;
        false
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_end_to_end_with_kubectl_rabbitmq_and_a_browser() {
    if !have_kubectl() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("stompgate-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("work dir");
    let emu = Arc::new(Emulator::start().await.expect("emulator"));
    let kubeconfig = dir.join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut t = E2e {
        op_log: dir.join("operator.log"),
        dir: dir.clone(),
        kubeconfig,
        emu: emu.clone(),
        operator: None,
        start: Instant::now(),
    };
    let unique = format!("{:08x}", rand::random::<u32>());
    let owned_exchange = format!("e2e-{unique}");
    let flaky_exchange = format!("e2e-flaky-{unique}");

    // The broker side: `rabbitmq` exists before (shared with the other tests, so this
    // StompGateway finds it and must never delete it); queue `audit` receives the binding.
    let broker = Broker::connect().await;
    {
        let ch = broker.conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            "rabbitmq".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange rabbitmq (topic, durable)");
        let _ = ch
            .queue_delete("audit".into(), QueueDeleteOptions::default())
            .await;
        ch.queue_declare(
            "audit".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue audit");
    }

    // 1. The operator without its CRD fails clearly.
    t.step("operator before the CRD exists");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        t.operator_cmd("op-0").spawn().expect("spawn").wait(),
    )
    .await
    .expect("the operator exits when the CRD is missing")
    .expect("wait");
    assert!(!out.success());
    let log = std::fs::read_to_string(&t.op_log).unwrap_or_default();
    assert!(
        log.contains("the StompGateway CRD is not installed"),
        "{log}"
    );

    // 2. kubectl apply -f crds/, the operator, kubectl apply -f the example.
    t.step("kubectl apply -f crds/");
    let out = t.kubectl_ok(&["apply", "-f", "crds/"]).await;
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/stompgateways.stompgate.io created"
        ),
        "{out}"
    );
    t.start_operator("op-1");
    t.step("kubectl apply -f examples/stompgateway-local.yaml");
    let out = t
        .kubectl_ok(&["apply", "-f", "examples/stompgateway-local.yaml"])
        .await;
    assert!(
        out.contains("secret/rmq-creds created")
            && out.contains("stompgateway.stompgate.io/chat created"),
        "{out}"
    );

    // 3. Children with owner references, the exchange, status, printer columns.
    t.step("children, owner references, status");
    let uid = t.gw("chat").expect("chat")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    for path in [
        "/api/v1/namespaces/default/configmaps/chat-config",
        "/api/v1/namespaces/default/services/chat",
        "/apis/apps/v1/namespaces/default/deployments/chat",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/chat",
    ] {
        let obj = wait_for(path, 30, || emu.get(path)).await;
        let refs = obj["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(refs.len(), 1, "{path}: {refs:?}");
        assert_eq!(refs[0]["kind"], "StompGateway");
        assert_eq!(refs[0]["name"], "chat");
        assert_eq!(refs[0]["uid"], uid.as_str());
        assert_eq!(refs[0]["controller"], true);
    }
    let gw = wait_for(
        "chat status for generation 1 with the broker and topology ready",
        30,
        || {
            t.gw("chat").filter(|g| {
                observed_current(g)
                    && cond_is(g, "BrokerConnected", "True")
                    && cond_is(g, "TopologyReady", "True")
            })
        },
    )
    .await;
    // No pods yet: not available, not ready, rolling out.
    assert_eq!(cond(&gw, "GatewayAvailable").unwrap().0, "False");
    let ready = cond(&gw, "Ready").unwrap();
    assert_eq!(ready.0, "False");
    assert!(cond_is(&gw, "Reconciling", "True"), "{:#}", gw["status"]);
    assert!(exchange_exists(&broker.conn, "rabbitmq").await);
    let ex = &gw["status"]["topology"]["exchanges"][0];
    assert_eq!(
        (ex["name"].as_str(), ex["owned"].as_bool()),
        (Some("rabbitmq"), Some(false)),
        "found, not created"
    );
    let out = t.kubectl_ok(&["get", "stompgw"]).await;
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "REPLICAS", "ENDPOINT", "EXTERNAL", "AGE"],
        "{out}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // No Ingress or route: the EXTERNAL cell is empty.
    assert_eq!(
        &row[..4],
        ["chat", "False", "0", "ws://chat.default.svc:15674/ws"],
        "{out}"
    );
    assert_eq!(row.len(), 5, "{out}");

    // 4. The kubelet runs the pod template; the operator reports GatewayAvailable and Ready.
    t.step("kubelet runs the gateway pod");
    let kubelet = kubelet::Kubelet::start(
        emu.clone(),
        PathBuf::from(env!("CARGO_BIN_EXE_stompgate")),
        dir.join("pods"),
        MANAGED,
    );
    let gw = wait_for("chat Ready=True", 60, || {
        t.gw("chat")
            .filter(|g| cond_is(g, "Ready", "True") && cond_is(g, "GatewayAvailable", "True"))
    })
    .await;
    assert_eq!(cond(&gw, "GatewayAvailable").unwrap().1, "Available");
    assert_eq!(gw["status"]["readyReplicas"], 1);
    t.kubectl_ok(&[
        "wait",
        "stompgw/chat",
        "--for=condition=Ready",
        "--timeout=30s",
    ])
    .await;
    let out = t
        .kubectl_ok(&["get", "stompgw", "chat", "--no-headers"])
        .await;
    let row: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&row[..3], ["chat", "True", "1"], "{out}");
    // The events.k8s.io event, read back as a core v1 Event by kubectl.
    let out = t
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=chat",
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .await;
    assert!(
        out.split_whitespace().any(|r| r == "Ready"),
        "events: {out}"
    );

    // 5. A real browser: the seed page through the gateway process.
    t.step("headless Chromium shows the message published to rabbitmq/zjj");
    let port = kubelet
        .pods()
        .iter()
        .find(|p| p.ready)
        .expect("a ready pod")
        .ws_port;
    let out = tokio::process::Command::new("node")
        .args([
            "tests/browser/run.mjs",
            "seed",
            "--ws-override",
            &format!("ws://127.0.0.1:{port}/ws"),
            "--amqp-url",
            AMQP_URL,
        ])
        .current_dir(repo_root())
        .output()
        .await
        .expect("node runs (scripts/ensure-test-deps.sh installs the browser test deps)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("runner JSON");
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["transport"], "websocket", "{result}");

    // 6a. Fault: the Secret is deleted -> a clear condition; back when it returns.
    t.step("Secret deleted");
    t.kubectl_ok(&["delete", "secret", "rmq-creds"]).await;
    let gw = wait_for("Ready=False SecretNotFound", 30, || {
        t.gw("chat")
            .filter(|g| cond(g, "Ready").is_some_and(|c| c.1 == "SecretNotFound"))
    })
    .await;
    let msg = cond(&gw, "Ready").unwrap().2;
    assert!(
        msg.contains("Secret default/rmq-creds") && msg.contains("not found"),
        "{msg}"
    );
    t.kubectl_ok(&["apply", "-f", "examples/stompgateway-local.yaml"])
        .await;
    wait_for("Ready=True after the Secret returns", 30, || {
        t.gw("chat").filter(|g| cond_is(g, "Ready", "True"))
    })
    .await;

    // 6b. Fault: the broker stops during a reconcile (a proxy in front of RabbitMQ).
    t.step("broker stopped during reconcile");
    let proxy = proxy::Proxy::start("127.0.0.1:5672".parse().expect("addr")).await;
    let flaky = write(
        &dir,
        "flaky.yaml",
        &format!(
            "apiVersion: stompgate.io/v1alpha1\nkind: StompGateway\nmetadata:\n  name: flaky\nspec:\n  rabbitmq:\n    host: 127.0.0.1\n    port: {}\n    credentialsSecretRef: {{name: rmq-creds}}\n  replicas: 0\n  topology:\n    exchanges: [{{name: {flaky_exchange}, type: topic}}]\n    deletionPolicy: Delete\n",
            proxy.port()
        ),
    );
    t.kubectl_ok(&["apply", "-f", &flaky]).await;
    wait_for("flaky BrokerConnected=True", 30, || {
        t.gw("flaky")
            .filter(|g| observed_current(g) && cond_is(g, "BrokerConnected", "True"))
    })
    .await;
    broker.wait_exchange(&flaky_exchange, true).await;
    proxy.stop();
    t.kubectl_ok(&[
        "patch",
        "stompgw",
        "flaky",
        "--type=merge",
        "-p",
        r#"{"spec":{"topology":{"resyncIntervalSeconds":20}}}"#,
    ])
    .await;
    let gw = wait_for("flaky BrokerConnected=False", 30, || {
        t.gw("flaky")
            .filter(|g| observed_current(g) && cond_is(g, "BrokerConnected", "False"))
    })
    .await;
    assert_eq!(cond(&gw, "BrokerConnected").unwrap().1, "BrokerUnreachable");
    assert_eq!(cond(&gw, "Ready").unwrap().0, "False");
    proxy.resume().await;
    wait_for(
        "flaky BrokerConnected=True after the broker returns",
        30,
        || {
            t.gw("flaky")
                .filter(|g| cond_is(g, "BrokerConnected", "True"))
        },
    )
    .await;
    t.kubectl_ok(&["delete", "-f", &flaky, "--timeout=60s"])
        .await;
    broker.wait_exchange(&flaky_exchange, false).await;

    // 6c/7. kubectl patch (replicas, a new exchange and binding) while the operator is killed
    // and restarted mid-way: it converges, and nothing is written twice.
    t.step("operator killed; kubectl patch; restarted and killed mid-way; restarted");
    let deploy_path = "/apis/apps/v1/namespaces/default/deployments/chat";
    let deploy_gen = emu.get(deploy_path).expect("deployment")["metadata"]["generation"]
        .as_i64()
        .unwrap();
    t.kill_operator().await;
    let mark = emu.audit().len();
    let patch = format!(
        r#"{{"spec":{{"replicas":2,"topology":{{"exchanges":[{{"name":"rabbitmq","type":"topic"}},{{"name":"{owned_exchange}","type":"topic"}}],"bindings":[{{"source":"rabbitmq","destination":"audit","destinationType":"queue","routingKey":"zjj"}},{{"source":"rabbitmq","destination":"{owned_exchange}","destinationType":"exchange","routingKey":"zjj"}}]}}}}}}"#
    );
    t.kubectl_ok(&["patch", "stompgw", "chat", "--type=merge", "-p", &patch])
        .await;
    t.start_operator("op-2");
    wait_for("op-2 applies the Deployment", 60, || {
        t.operator_requests(mark)
            .iter()
            .any(|a| a.method == "PATCH" && a.path == deploy_path && a.code == 200)
            .then_some(())
    })
    .await;
    t.kill_operator().await;
    t.start_operator("op-3");
    let gw = wait_for(
        "chat converged: 2/2 ready for the new generation",
        90,
        || {
            t.gw("chat").filter(|g| {
                observed_current(g)
                    && cond_is(g, "Ready", "True")
                    && cond_is(g, "TopologyReady", "True")
                    && g["status"]["readyReplicas"] == 2
            })
        },
    )
    .await;
    let owned: Vec<&Value> = gw["status"]["topology"]["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["owned"] == true)
        .collect();
    assert_eq!(owned.len(), 1, "{:#}", gw["status"]["topology"]);
    assert_eq!(owned[0]["name"], owned_exchange.as_str());
    assert!(exchange_exists(&broker.conn, &owned_exchange).await);
    assert!(
        broker.routes_zjj_to(&owned_exchange).await,
        "binding rabbitmq -> {owned_exchange} (zjj)"
    );
    assert_eq!(kubelet.pods().iter().filter(|p| p.ready).count(), 2);
    let d = emu.get(deploy_path).expect("deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["metadata"]["generation"].as_i64(),
        Some(deploy_gen + 1),
        "one Deployment change"
    );
    let writes = |path: &str| {
        t.operator_requests(mark)
            .iter()
            .filter(|a| a.method != "GET" && a.path == path)
            .count()
    };
    assert_eq!(
        writes(deploy_path),
        1,
        "the Deployment is applied once across the restarts"
    );
    for unchanged in [
        "/api/v1/namespaces/default/configmaps/chat-config",
        "/api/v1/namespaces/default/services/chat",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/chat",
    ] {
        assert_eq!(writes(unchanged), 0, "{unchanged} is not rewritten");
    }
    // Quiet steady state: a reconcile caused by a metadata-only change writes nothing.
    let mark2 = emu.audit().len();
    t.kubectl_ok(&["label", "stompgw", "chat", "e2e=idle"])
        .await;
    wait_for("a reconcile after the label", 30, || {
        t.operator_requests(mark2)
            .iter()
            .any(|a| {
                a.method == "GET"
                    && a.path == "/apis/policy/v1/namespaces/default/poddisruptionbudgets/chat"
            })
            .then_some(())
    })
    .await;
    let settle = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let noisy: Vec<String> = t
        .operator_requests(mark2)
        .iter()
        .filter(|a| a.method != "GET" && !a.path.contains("/leases/"))
        .map(|a| format!("{} {}", a.method, a.path))
        .collect();
    assert!(noisy.is_empty(), "an idle reconcile wrote: {noisy:?}");

    // 8. kubectl delete: finalizer cleans owned topology, children are garbage-collected.
    t.step("kubectl delete stompgw chat");
    t.kubectl_ok(&["delete", "stompgw", "chat", "--timeout=60s"])
        .await;
    assert!(t.gw("chat").is_none());
    for path in [
        "/api/v1/namespaces/default/configmaps/chat-config",
        "/api/v1/namespaces/default/services/chat",
        deploy_path,
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/chat",
    ] {
        wait_for(&format!("{path} garbage-collected"), 30, || {
            emu.get(path).is_none().then_some(())
        })
        .await;
    }
    wait_for("pods stopped", 30, || {
        kubelet.pods().is_empty().then_some(())
    })
    .await;
    broker.wait_exchange(&owned_exchange, false).await;
    assert!(
        exchange_exists(&broker.conn, "rabbitmq").await,
        "found, not created: kept"
    );
    {
        // The owned binding rabbitmq -> audit is gone too.
        let ch = broker.conn.create_channel().await.expect("channel");
        ch.queue_purge("audit".into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
        ch.basic_publish(
            "rabbitmq".into(),
            "zjj".into(),
            BasicPublishOptions::default(),
            b"after",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
        let q = ch
            .queue_declare(
                "audit".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("audit");
        assert_eq!(q.message_count(), 0, "binding rabbitmq -> audit removed");
        let _ = ch
            .queue_delete("audit".into(), QueueDeleteOptions::default())
            .await;
    }
    let out = t
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=CleanedUp",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .await;
    assert!(out.contains(&owned_exchange), "CleanedUp event: {out}");
    t.kill_operator().await;
    t.step(&format!("done in {:.1}s", t.start.elapsed().as_secs_f64()));
}

/// TLS end to end: `kubectl create secret tls` and `kubectl apply` of a StompGateway with
/// `spec.tls`; the kubelet's gateway process serves wss/https with exactly that certificate
/// (its fingerprint checked on the wire); Chromium, trusting only that certificate's public
/// key, shows the seed page's message over wss. Then `spec.auth` JWT: the HS256 key from a
/// Secret rolls the pods, a token signed with it logs in over wss, one signed otherwise does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listener_tls_and_jwt_from_the_stompgateway_to_a_browser_over_wss() {
    use base64::Engine;
    use rcgen::PublicKeyData;
    use sha2::Digest;
    if !have_kubectl() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("stompgate-e2e-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("work dir");
    let emu = Arc::new(Emulator::start().await.expect("emulator"));
    let kubeconfig = dir.join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut t = E2e {
        op_log: dir.join("operator.log"),
        dir: dir.clone(),
        kubeconfig,
        emu: emu.clone(),
        operator: None,
        start: Instant::now(),
    };
    // The page subscribes to /exchange/rabbitmq/zjj: the exchange must exist (as the other
    // e2e test declares it).
    let broker = Broker::connect().await;
    broker
        .conn
        .create_channel()
        .await
        .expect("channel")
        .exchange_declare(
            "rabbitmq".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange rabbitmq");

    t.step("a certificate, kubectl create secret tls");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["secure.default.svc".into(), "localhost".into()])
            .expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.self_signed(&key).expect("cert");
    let crt_file = write(&dir, "tls.crt", &cert.pem());
    let key_file = write(&dir, "tls.key", &key.serialize_pem());
    let spki = base64::engine::general_purpose::STANDARD
        .encode(sha2::Sha256::digest(key.subject_public_key_info()));
    t.kubectl_ok(&["apply", "-f", "crds/"]).await;
    t.start_operator("op-tls");
    // kubectl builds the kubernetes.io/tls Secret (client-side: its typed create speaks
    // protobuf, which the emulator does not), then applies it.
    let secret = t
        .kubectl_ok(&[
            "create",
            "secret",
            "tls",
            "secure-tls",
            "--cert",
            &crt_file,
            "--key",
            &key_file,
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .await;
    let secret_file = write(&dir, "secure-tls.yaml", &secret);
    t.kubectl_ok(&["apply", "-f", &secret_file]).await;
    // Labelled: the operator sees a rotation at once.
    t.kubectl_ok(&["label", "secret", "secure-tls", "stompgate.io/watch=true"])
        .await;
    let manifest = write(
        &dir,
        "secure.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: rmq-creds\n  labels: {stompgate.io/watch: \"true\"}\nstringData:\n  username: guest\n  password: guest\n---\napiVersion: stompgate.io/v1alpha1\nkind: StompGateway\nmetadata:\n  name: secure\nspec:\n  rabbitmq:\n    host: 127.0.0.1\n    credentialsSecretRef: {name: rmq-creds}\n  replicas: 1\n  tls:\n    secretName: secure-tls\n",
    );
    t.step("kubectl apply of a StompGateway with spec.tls");
    t.kubectl_ok(&["apply", "-f", &manifest]).await;

    t.step("the kubelet runs the pod; its HTTPS readiness probe passes");
    let kubelet = kubelet::Kubelet::start(
        emu.clone(),
        PathBuf::from(env!("CARGO_BIN_EXE_stompgate")),
        dir.join("pods"),
        MANAGED,
    );
    let gw = wait_for("secure Ready=True", 60, || {
        t.gw("secure").filter(|g| cond_is(g, "Ready", "True"))
    })
    .await;
    assert_eq!(
        gw["status"]["endpoints"]["webSocket"],
        "wss://secure.default.svc:15674/ws"
    );
    let out = t
        .kubectl_ok(&["get", "stompgw", "secure", "--no-headers"])
        .await;
    assert!(out.contains("wss://secure.default.svc:15674/ws"), "{out}");
    let port = kubelet
        .pods()
        .iter()
        .find(|p| p.ready)
        .expect("a ready pod")
        .ws_port;

    t.step("the listener presents exactly the Secret's certificate");
    let served = kubelet::served_certificate(port)
        .await
        .expect("a TLS handshake with the gateway");
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&served)),
        hex::encode(sha2::Sha256::digest(cert.der())),
        "the gateway serves another certificate"
    );

    t.step("headless Chromium, trusting only that key, gets the message over wss");
    let out = tokio::process::Command::new("node")
        .args([
            "tests/browser/run.mjs",
            "seed",
            "--ws-override",
            &format!("wss://127.0.0.1:{port}/ws"),
            "--trust-spki",
            &spki,
            "--amqp-url",
            AMQP_URL,
        ])
        .current_dir(repo_root())
        .output()
        .await
        .expect("node runs (scripts/ensure-test-deps.sh installs the browser test deps)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("runner JSON");
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["transport"], "websocket", "{result}");

    t.step("a browser that does not trust the certificate gets nothing");
    let out = tokio::process::Command::new("node")
        .args([
            "tests/browser/run.mjs",
            "seed",
            "--ws-override",
            &format!("wss://127.0.0.1:{port}/ws"),
            "--timeout-ms",
            "3000",
            "--amqp-url",
            AMQP_URL,
        ])
        .current_dir(repo_root())
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "an untrusted certificate was accepted: {stdout}"
    );
    // Refused for the certificate, not for anything else: the page's WebSocket never opened.
    let result: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("runner JSON");
    assert!(
        result["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ERR_CERT_AUTHORITY_INVALID")),
        "{result}"
    );

    t.step("spec.auth JWT: the key from a Secret, the pods roll, a token logs in over wss");
    let hs256 = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    let keys = write(
        &dir,
        "idp-keys.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: idp-keys\n  labels: {{stompgate.io/watch: \"true\"}}\nstringData:\n  secret: {hs256}\n"
        ),
    );
    t.kubectl_ok(&["apply", "-f", &keys]).await;
    let first_hash = kubelet
        .pods()
        .iter()
        .find(|p| p.ready)
        .map(|p| p.hash.clone())
        .expect("a ready pod");
    t.kubectl_ok(&[
        "patch",
        "stompgw",
        "secure",
        "--type=merge",
        "-p",
        r#"{"spec":{"auth":{"mode":"JWT","jwt":{"hs256SecretRef":{"name":"idp-keys"},"audience":"push"}}}}"#,
    ])
    .await;
    let port = wait_for("a ready JWT pod", 60, || {
        let pods = kubelet.pods();
        pods.iter()
            .find(|p| p.ready && p.hash != first_hash)
            .map(|p| p.ws_port)
    })
    .await;
    let token = |secret: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"exp": now + 300, "aud": "push", "sub": "u1",
                "stomp_destinations": {"subscribe": ["/exchange/rabbitmq/zjj"], "send": []}}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("token")
    };
    assert!(
        stomp_connect_over_wss(port, &token(&hs256))
            .await
            .starts_with("CONNECTED"),
        "a token signed with the Secret's key is accepted"
    );
    let refused = stomp_connect_over_wss(port, &token("another key")).await;
    assert!(refused.starts_with("ERROR"), "{refused}");
    t.kill_operator().await;
}

/// CONNECT over wss (any certificate) with `passcode` = `token`; the first frame back.
async fn stomp_connect_over_wss(port: u16, token: &str) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let tls = kubelet::tls_connect(port)
        .await
        .expect("TLS to the gateway");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://127.0.0.1:{port}/ws"), tls)
        .await
        .expect("WebSocket upgrade over TLS");
    ws.send(Message::text(format!(
        "CONNECT\naccept-version:1.2\nhost:/\nlogin:jwt\npasscode:{token}\n\n\0"
    )))
    .await
    .expect("send CONNECT");
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s")
            .expect("stream open")
            .expect("frame");
        match msg {
            Message::Text(t) if t.trim().is_empty() => continue,
            Message::Text(t) => return t.to_string(),
            Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
            other => return format!("{other:?}"),
        }
    }
}
