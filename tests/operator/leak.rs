//! Credentials never leak (issue 7, item 5): the real `stompgate operator` binary runs at
//! `RUST_LOG=trace` against the in-memory API server (tests/kube-emulator) and the real RabbitMQ,
//! with a RabbitMQ user whose password is distinctive, given both as Secret keys and inside an
//! `amqp://user:password@...` URI Secret. It connects, declares, fails to log in with a second
//! distinctive (wrong) password, fails to reach a closed port, and cleans up on deletion. Then
//! the password (raw, percent-encoded and base64) must appear nowhere in the operator's log, the
//! Events, any non-Secret object (status included) or the /metrics output.

use crate::proxy;
use crate::support;

use std::process::Stdio;

use base64::Engine;
use kube_emulator::Emulator;
use serde_json::{Value, json};

use support::operator::cluster::cond;
use support::{rabbitmqctl, wait_for};

const NS: &str = "leak";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct User(String);

impl Drop for User {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

fn list(emu: &Emulator, path: &str) -> Vec<Value> {
    let (code, v) = emu.call("GET", path, None);
    assert_eq!(code, 200, "GET {path}: {v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_never_appear_in_logs_events_objects_or_metrics() {
    let dir = std::env::temp_dir().join(format!("stompgate-leak-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let user = User(format!("opfaults-leak-{}", &tag[..12]));
    // Characters that URIs and logs treat specially, so every encoding is exercised.
    let password = format!("Pw{tag}:s3cr@t/%?#");
    let wrong = format!("Wrong{}", uuid::Uuid::new_v4().simple());
    rabbitmqctl(&["add_user", &user.0, &password]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user.0, ".*", ".*", ".*"]);

    let emu = Emulator::start().await.expect("emulator");
    support::operator::cluster::install_crd(&emu).await;
    let post = |path: &str, obj: Value| {
        let (code, body) = emu.call("POST", path, Some(&obj));
        assert_eq!(code, 201, "POST {path}: {body}");
    };
    post(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    );
    let secrets = format!("/api/v1/namespaces/{NS}/secrets");
    let secret = |name: &str, data: Value| {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": name, "namespace": NS, "labels": {"stompgate.io/watch": "true"}},
               "data": data})
    };
    post(
        &secrets,
        secret(
            "good",
            json!({"username": b64(&user.0), "password": b64(&password)}),
        ),
    );
    post(
        &secrets,
        secret(
            "bad",
            json!({"username": b64(&user.0), "password": b64(&wrong)}),
        ),
    );
    let uri = format!(
        "amqp://{}:{}@127.0.0.1:5672/%2f",
        pct(&user.0),
        pct(&password)
    );
    post(&secrets, secret("uri", json!({"uri": b64(&uri)})));
    // Control: the search below would find the password where it legitimately is.
    let stored = emu
        .get(&format!("{secrets}/good"))
        .expect("secret")
        .to_string();
    assert!(stored.contains(&b64(&password)));

    let closed = proxy::Proxy::start("127.0.0.1:5672".parse().expect("addr")).await;
    closed.stop();
    let ex = |n: &str| format!("opfaults-leak-{n}-{tag}");
    let gws = format!("/apis/stompgate.io/v1alpha1/namespaces/{NS}/stompgateways");
    let gateway = |name: &str, rabbitmq: Value| {
        json!({"apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
               "metadata": {"name": name, "namespace": NS},
               "spec": {"rabbitmq": rabbitmq, "replicas": 1, "auth": {"mode": "ServiceUser"},
                        "topology": {"exchanges": [{"name": ex(name), "type": "topic"}],
                                     "deletionPolicy": "Delete"}}})
    };
    post(
        &gws,
        gateway(
            "creds",
            json!({"host": "127.0.0.1", "port": 5672, "credentialsSecretRef": {"name": "good"}}),
        ),
    );
    post(
        &gws,
        gateway(
            "uri",
            json!({"uriSecretRef": {"name": "uri", "key": "uri"}}),
        ),
    );
    post(
        &gws,
        gateway(
            "wrong",
            json!({"host": "127.0.0.1", "port": 5672, "credentialsSecretRef": {"name": "bad"}}),
        ),
    );
    post(
        &gws,
        gateway(
            "down",
            json!({"host": "127.0.0.1", "port": closed.port(), "credentialsSecretRef": {"name": "good"}}),
        ),
    );

    let kubeconfig = dir.join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let log_path = dir.join("operator.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut op = tokio::process::Command::new(env!("CARGO_BIN_EXE_stompgate"))
        .args([
            "operator",
            "--leader-elect",
            "false",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--broker-probe-secs",
            "1",
            "--finalizer-timeout-secs",
            "20",
            "--gateway-image",
            "stompgate/stompgate:leak",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "default")
        .env("POD_NAME", "op-leak")
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("operator starts");

    let gw = |name: &str| emu.get(&format!("{gws}/{name}"));
    for (name, want) in [
        ("creds", ("True", "Connected")),
        ("uri", ("True", "Connected")),
        ("wrong", ("False", "AuthFailed")),
        ("down", ("False", "BrokerUnreachable")),
    ] {
        wait_for(&format!("{name}: BrokerConnected {want:?}"), 60, || {
            gw(name).filter(|g| {
                cond(g, "BrokerConnected").is_some_and(|c| c.0 == want.0 && c.1 == want.1)
            })
        })
        .await;
    }
    for name in ["creds", "uri"] {
        wait_for(&format!("{name}: TopologyReady"), 30, || {
            gw(name).filter(|g| cond(g, "TopologyReady").is_some_and(|c| c.0 == "True"))
        })
        .await;
    }
    // The objects as they are now (status with the failure messages, children), and again
    // after the deletions.
    let snapshot = |texts: &mut Vec<(String, String)>| {
        for path in [
            "/api/v1/events".to_string(),
            "/apis/events.k8s.io/v1/events".to_string(),
            format!("/api/v1/namespaces/{NS}/configmaps"),
            format!("/api/v1/namespaces/{NS}/services"),
            format!("/apis/apps/v1/namespaces/{NS}/deployments"),
            format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets"),
            format!("/apis/stompgate.io/v1alpha1/namespaces/{NS}/stompgateways"),
            "/apis/coordination.k8s.io/v1/leases".to_string(),
        ] {
            for item in list(&emu, &path) {
                texts.push((
                    format!(
                        "{path}/{}",
                        item["metadata"]["name"].as_str().unwrap_or("?")
                    ),
                    item.to_string(),
                ));
            }
        }
    };
    let mut texts: Vec<(String, String)> = Vec::new();
    snapshot(&mut texts);
    let gateways = texts
        .iter()
        .filter(|(w, _)| w.contains("/stompgateways/"))
        .count();
    let configmaps = texts
        .iter()
        .filter(|(w, _)| w.contains("/configmaps/"))
        .count();
    assert_eq!(
        (gateways, configmaps),
        (4, 4),
        "every object is in the first snapshot"
    );
    // Cleanup on deletion connects with the same credentials.
    for name in ["creds", "uri", "wrong", "down"] {
        let code = emu.call("DELETE", &format!("{gws}/{name}"), None).0;
        assert!(code == 200 || code == 202, "DELETE {name}: {code}");
    }
    for name in ["creds", "uri"] {
        wait_for(&format!("{name} deleted"), 30, || {
            gw(name).is_none().then_some(())
        })
        .await;
    }

    // What may carry text: the operator's log, its metrics, every Event, every other object.
    let metrics = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port))
            .await
            .expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    assert!(
        metrics.contains("stompgw_reconcile_errors_total{reason=\"AuthFailed\"}"),
        "{metrics}"
    );
    let _ = op.start_kill();
    let _ = op.wait().await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.lines().filter(|l| l.contains("TRACE")).count() > 100,
        "the log was captured at trace level"
    );
    snapshot(&mut texts);
    texts.push(("operator log".into(), log.clone()));
    texts.push(("/metrics".into(), metrics));
    let events: Vec<&String> = texts
        .iter()
        .filter(|(w, _)| w.contains("/events/"))
        .map(|(_, t)| t)
        .collect();
    for reason in ["AuthFailed", "BrokerUnreachable", "CleanedUp"] {
        assert!(
            events
                .iter()
                .any(|e| e.contains(&format!("\"reason\":\"{reason}\""))),
            "a {reason} event was recorded"
        );
    }
    // The AMQP handshake (where the password is sent) was traced.
    assert!(log.contains("lapin"), "lapin's trace output was captured");
    let mut forms = Vec::new();
    for p in [&password, &wrong] {
        // Raw, in a URI, in a Secret's data, and as `Debug` of bytes (lapin's frame traces).
        let bytes: Vec<String> = p.bytes().map(|b| b.to_string()).collect();
        forms.extend([p.clone(), pct(p), b64(p), bytes.join(", ")]);
    }
    forms.push(b64(&uri));
    forms.push(uri.clone());
    let mut leaks = Vec::new();
    for (what, text) in &texts {
        for f in &forms {
            if let Some(i) = text.find(f.as_str()) {
                let line_start = text[..i].rfind('\n').map(|x| x + 1).unwrap_or(0);
                let line_end = text[i..].find('\n').map(|x| i + x).unwrap_or(text.len());
                let line: String = text[line_start..line_end].chars().take(400).collect();
                leaks.push(format!("{what}: {line}"));
            }
        }
    }
    if leaks.is_empty() && std::env::var_os("STOMPGATE_TEST_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(
        leaks.is_empty(),
        "credentials leaked ({} places; log kept in {}):\n{}",
        leaks.len(),
        dir.display(),
        leaks.join("\n")
    );
    eprintln!(
        "checked {} texts ({} bytes of trace log), no credential found",
        texts.len(),
        log.len()
    );
}
