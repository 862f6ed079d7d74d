//! The shipped alerts and dashboard (charts/stompgate/files/, rendered into
//! deploy/observability/ and kept equal to the chart by scripts/check-packaging.sh):
//!
//! - every alert passes its `promtool test rules` unit tests (tests/observability/), and every
//!   alert has a case there where it fires;
//! - every metric an alert, a panel or a dashboard variable reads is in a live scrape of a real
//!   gateway (against the real RabbitMQ) or of the operator's admin endpoint while its controller
//!   reconciles StompGateways on the API emulator, with the exact sample name (`_total`,
//!   `_bucket`/`_sum`/`_count`);
//! - docs/observability.md explains every alert and every panel.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::{Value, json};
use stompgate::crd::StompGateway;
use stompgate::operator::controller::{self, Context, Settings};
use stompgate::operator::metrics::Metrics;
use stompgate::operator::topology::BrokerPool;
use stompgate::stomp::Command as StompCommand;
use support::{Amqp, Client, amqp_url, http_get, start_gateway, unique};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    let p = repo_file(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The rule groups as the chart renders them (the PrometheusRule's spec).
fn rendered_rules() -> serde_yaml::Value {
    let rule: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/observability/prometheusrule.yaml"))
            .expect("the rendered PrometheusRule is YAML");
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    rule["spec"].clone()
}

fn rules() -> Vec<serde_yaml::Value> {
    rendered_rules()["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn alert_names() -> BTreeSet<String> {
    rules()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read("charts/stompgate/files/stompgate-dashboard.json"))
        .expect("the dashboard is JSON")
}

/// Every panel (rows included) with its nested panels flattened.
fn panels(dashboard: &Value) -> Vec<Value> {
    fn walk(list: &Value, out: &mut Vec<Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p.clone());
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn promtool() -> Command {
    let probe = Command::new("promtool").arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "promtool is not installed: run scripts/ensure-promtool.sh (Debian package 'prometheus')"
    );
    Command::new("promtool")
}

fn run(mut cmd: Command) {
    let out = cmd.output().expect("promtool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_alert_passes_its_promtool_unit_tests() {
    let dir = std::env::temp_dir().join(unique("stompgate-rules"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rules = serde_yaml::to_string(&rendered_rules()).expect("rules serialise");
    std::fs::write(dir.join("rules.yaml"), rules).expect("write rules");
    let tests = read("tests/observability/rules.test.yaml");
    std::fs::write(dir.join("rules.test.yaml"), &tests).expect("write tests");

    let mut check = promtool();
    check.arg("check").arg("rules").arg(dir.join("rules.yaml"));
    run(check);
    let mut test = promtool();
    test.arg("test")
        .arg("rules")
        .arg(dir.join("rules.test.yaml"));
    run(test);
    let _ = std::fs::remove_dir_all(&dir);

    // A rule without a case where it fires is untested, whatever promtool says.
    let tests: serde_yaml::Value = serde_yaml::from_str(&tests).expect("tests are YAML");
    let firing: BTreeSet<String> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| {
            t["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()))
        .filter_map(|c| c["alertname"].as_str().map(str::to_string))
        .collect();
    let untested: Vec<_> = alert_names().difference(&firing).cloned().collect();
    assert!(
        untested.is_empty(),
        "alerts without a firing case: {untested:?}"
    );
}

/// Metric names a PromQL expression selects; an error when it does not parse.
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>, Vec<String>);
    impl ExprVisitor for Names {
        type Error = ();
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
            let vs = match e {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &ms.vs,
                _ => return Ok(true),
            };
            match &vs.name {
                Some(n) => self.0.insert(n.clone()),
                None => {
                    self.1.push(vs.to_string());
                    false
                }
            };
            Ok(true)
        }
    }
    // Grafana's interval variables are not PromQL; any duration stands in for them.
    let promql = ["$__rate_interval", "$__interval", "$__range"]
        .iter()
        .fold(expr.to_string(), |s, v| s.replace(v, "5m"));
    let ast = parser::parse(&promql).map_err(|e| format!("{expr}: {e}"))?;
    let mut names = Names(BTreeSet::new(), Vec::new());
    let _ = walk_expr(&mut names, &ast);
    if !names.1.is_empty() {
        return Err(format!(
            "{expr}: selectors without a metric name: {:?}",
            names.1
        ));
    }
    Ok(names.0)
}

/// Every metric name the rules and the dashboard read, with where it is read.
fn referenced_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let mut exprs: Vec<(String, String)> = rules()
        .iter()
        .map(|r| {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            (
                format!("rule {name}"),
                r["expr"].as_str().expect("expr").to_string(),
            )
        })
        .collect();
    let d = dashboard();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push((
                format!("panel {:?}", p["title"].as_str().unwrap_or("?")),
                t["expr"]
                    .as_str()
                    .expect("a target has an expr")
                    .to_string(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(<selector>, <label>): the selector is PromQL.
            let selector = q
                .strip_prefix("label_values(")
                .and_then(|s| s.rsplit_once(','))
                .map(|(sel, _)| sel.to_string())
                .unwrap_or_else(|| panic!("variable {:?}: unexpected query {q}", v["name"]));
            exprs.push((
                format!("variable {:?}", v["name"].as_str().unwrap_or("?")),
                selector,
            ));
        }
    }
    // The HPA of spec.autoscaling asks the custom metrics API for the gateway's gauge by name.
    exprs.push((
        "the HPA Pods metric of spec.autoscaling.targetConnectionsPerPod".into(),
        stompgate::operator::resources::CONNECTIONS_METRIC.into(),
    ));
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut bad = Vec::new();
    for (place, expr) in exprs {
        match metric_names(&expr) {
            Ok(names) => {
                for n in names {
                    out.entry(n).or_default().insert(place.clone());
                }
            }
            Err(e) => bad.push(format!("{place}: {e}")),
        }
    }
    assert!(
        bad.is_empty(),
        "PromQL that does not parse:\n{}",
        bad.join("\n")
    );
    out
}

/// Sample names (the part before labels) in a Prometheus/OpenMetrics text scrape.
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect()
}

async fn scrape(url: &str) -> String {
    let (status, body) = http_get(url)
        .await
        .unwrap_or_else(|| panic!("GET {url} failed"));
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

/// The referenced `prefix` metrics not in `scrape`.
fn missing(wanted: &BTreeMap<String, BTreeSet<String>>, prefix: &str, scrape: &str) -> Vec<String> {
    let have = sample_names(scrape);
    wanted
        .iter()
        .filter(|(name, _)| name.starts_with(prefix) && !have.contains(*name))
        .map(|(name, places)| format!("{name} (read by {places:?})"))
        .collect()
}

/// Scrapes until every referenced `prefix` metric is there (counters and families appear at
/// their first event, which may land just after the client saw its effect); generous bound.
async fn wait_for_metrics(
    url: &str,
    wanted: &BTreeMap<String, BTreeSet<String>>,
    prefix: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = scrape(url).await;
        let gone = missing(wanted, prefix, &body);
        if gone.is_empty() {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "not exported by {url}:\n{}\n--- scrape ---\n{body}",
            gone.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A gateway serving real clients: sessions on every path the panels and alerts count.
async fn gateway_scrape(wanted: &BTreeMap<String, BTreeSet<String>>) -> String {
    let gw = start_gateway(&["--max-connections", "2"]).await;
    // A shared (fan-out) subscription and a confirmed SEND it receives.
    let destination = format!("/exchange/amq.topic/{}", unique("obs"));
    let mut a = Client::logged_in_ws(&gw).await;
    a.subscribe("s1", &destination, &[]).await;
    a.send_confirmed(&destination, "hello", &[]).await;
    let message = a.recv().await;
    assert_eq!(message.command, StompCommand::Message, "{message:?}");
    // The second connection reaches the limit: a third is refused.
    let mut b = Client::logged_in_ws(&gw).await;
    let refused = Client::try_ws_url(&format!("ws://{}/ws", gw.http_addr)).await;
    assert!(
        refused.is_none(),
        "a third connection passes --max-connections 2"
    );
    // A frame the gateway cannot parse: ERROR, then the session closes.
    b.send_raw(format!("{}\n\n\0", "X".repeat(100)).as_bytes())
        .await;
    let error = b.recv().await;
    assert_eq!(error.command, StompCommand::Error, "{error:?}");
    b.wait_closed().await;

    let body = wait_for_metrics(
        &format!("http://{}/metrics", gw.http_addr),
        wanted,
        "stompgate_",
    )
    .await;
    assert!(
        body.lines().any(|l| l == "stompgate_max_connections 2"),
        "stompgate_max_connections reports --max-connections:\n{body}"
    );
    a.disconnect().await;
    gw.shutdown();
    body
}

fn emulator_call(emu: &kube_emulator::Emulator, method: &str, path: &str, body: Value) {
    let (code, reply) = emu.call(method, path, Some(&body));
    assert!(
        (200..300).contains(&code),
        "{method} {path}: {code} {reply}"
    );
}

/// The operator's admin endpoint while its controller reconciles two StompGateways on the API
/// emulator against the real RabbitMQ: one declares an exchange, one lacks its Secret.
async fn operator_scrape(wanted: &BTreeMap<String, BTreeSet<String>>) -> String {
    let emu = kube_emulator::Emulator::start().await.expect("emulator");
    let crd = serde_json::to_value(<StompGateway as kube::CustomResourceExt>::crd()).expect("crd");
    emulator_call(
        &emu,
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        crd,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while emu
        .call("GET", "/apis/stompgate.io/v1alpha1/stompgateways", None)
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "the CRD is not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ns = "observability";
    emulator_call(
        &emu,
        "POST",
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    );
    let url = url_parts(&amqp_url());
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    emulator_call(
        &emu,
        "POST",
        &format!("/api/v1/namespaces/{ns}/secrets"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rmq-creds"},
               "data": {"username": b64(&url.user), "password": b64(&url.password)}}),
    );
    let exchange = unique("obs-x");
    for (name, secret) in [("good", "rmq-creds"), ("no-secret", "missing")] {
        emulator_call(
            &emu,
            "POST",
            &format!("/apis/stompgate.io/v1alpha1/namespaces/{ns}/stompgateways"),
            json!({"apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
                   "metadata": {"name": name},
                   "spec": {"rabbitmq": {"host": url.host, "port": url.port,
                                         "credentialsSecretRef": {"name": secret}},
                            "replicas": 1,
                            "topology": {"exchanges": [{"name": exchange, "type": "topic"}]}}}),
        );
    }

    let metrics = Arc::new(Metrics::new());
    metrics.set_leader(true);
    let (brokers, reconnected) = BrokerPool::new();
    let ctx = Arc::new(Context::new(
        emu.client(),
        Settings::default(),
        brokers,
        metrics.clone(),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(ctx, None, reconnected, async move {
        let _ = stopped.await;
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("admin port");
    let admin = listener.local_addr().expect("admin address");
    let router = stompgate::operator::admin_router(metrics, Arc::new(AtomicBool::new(true)));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let body = wait_for_metrics(&format!("http://{admin}/metrics"), wanted, "stompgw_").await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    server.abort();
    Amqp::connect().await.delete_exchange(&exchange).await;
    body
}

struct AmqpUrl {
    host: String,
    port: u16,
    user: String,
    password: String,
}

/// host, port and credentials of the test broker's URL (amqp://user:pass@host:port/vhost).
fn url_parts(url: &str) -> AmqpUrl {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (creds, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
    let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
    let hostport = rest.split('/').next().unwrap_or("127.0.0.1:5672");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5672"));
    AmqpUrl {
        host: host.to_string(),
        port: port.parse().expect("the test AMQP URL has a numeric port"),
        user: user.to_string(),
        password: password.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_alerts_and_dashboard_is_in_a_live_scrape() {
    let wanted = referenced_metrics();
    let foreign: Vec<_> = wanted
        .keys()
        .filter(|n| !n.starts_with("stompgate_") && !n.starts_with("stompgw_"))
        .collect();
    assert!(
        foreign.is_empty(),
        "metrics that neither the gateway nor the operator exports: {foreign:?}"
    );
    let gateway = gateway_scrape(&wanted).await;
    let operator = operator_scrape(&wanted).await;
    // Each name comes from its own component's scrape.
    assert!(missing(&wanted, "stompgate_", &gateway).is_empty());
    assert!(missing(&wanted, "stompgw_", &operator).is_empty());
    eprintln!(
        "{} metric names read by {} alerts and the dashboard, all in a live scrape",
        wanted.len(),
        alert_names().len()
    );
}

#[test]
fn every_panel_has_a_description_and_the_docs_cover_alerts_and_panels() {
    let docs = read("docs/observability.md");
    let mut gaps = Vec::new();
    for alert in alert_names() {
        if !docs.contains(&format!("`{alert}`")) {
            gaps.push(format!("alert {alert} is not in docs/observability.md"));
        }
    }
    for p in panels(&dashboard()) {
        let title = p["title"].as_str().unwrap_or_default();
        if p["type"] == "row" {
            continue;
        }
        if p["description"].as_str().is_none_or(str::is_empty) {
            gaps.push(format!("panel {title:?} has no description"));
        }
        if !docs.contains(&format!("**{title}**")) {
            gaps.push(format!("panel {title:?} is not in docs/observability.md"));
        }
    }
    assert!(gaps.is_empty(), "{}", gaps.join("\n"));
    let readme = read("README.md");
    assert!(
        readme.contains("docs/observability.md"),
        "README.md links docs/observability.md"
    );
}

#[test]
fn dashboard_panels_fit_the_grid_and_use_the_datasource_variable() {
    let mut problems = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(i64, i64), String> = BTreeMap::new();
    for p in panels(&dashboard()) {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        if !ids.insert(p["id"].as_i64().unwrap_or(-1)) {
            problems.insert(format!("{title}: duplicate or missing id"));
        }
        let g = |k: &str| p["gridPos"][k].as_i64().unwrap_or(-1);
        let (x, y, w, h) = (g("x"), g("y"), g("w"), g("h"));
        if x < 0 || y < 0 || w < 1 || h < 1 || x + w > 24 {
            problems.insert(format!(
                "{title}: gridPos {:?} outside the 24-column grid",
                p["gridPos"]
            ));
        }
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.clone()) {
                    problems.insert(format!("{title} overlaps {other}"));
                }
            }
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["datasource"]["uid"] != "${datasource}" {
                problems.insert(format!(
                    "{title}: a target does not use the datasource variable"
                ));
            }
        }
    }
    let problems: Vec<_> = problems.into_iter().collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
