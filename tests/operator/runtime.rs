//! Operator runtime: leader election on a Lease (against the mock API) and the admin endpoints.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use stompgate::operator::leader::{LeaseSettings, release, try_acquire};
use stompgate::operator::metrics::Metrics;
use support::operator::apiserver::FakeApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/stompgate-operator";

fn settings(id: &str) -> LeaseSettings {
    LeaseSettings {
        name: "stompgate-operator".into(),
        identity: id.into(),
        duration: Duration::from_secs(15),
        renew: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn one_leader_takeover_after_expiry_and_release() {
    let (client, fake) = FakeApi::start();
    let api: Api<Lease> = Api::namespaced(client, "ops");
    let (a, b) = (settings("pod-a"), settings("pod-b"));
    assert!(
        try_acquire(&api, &a).await.expect("a"),
        "first candidate creates the lease"
    );
    assert!(
        !try_acquire(&api, &b).await.expect("b"),
        "a valid lease is not stolen"
    );
    assert!(
        try_acquire(&api, &a).await.expect("renew"),
        "the holder renews"
    );
    assert_eq!(
        fake.get(LEASE).expect("lease")["spec"]["holderIdentity"],
        "pod-a"
    );
    // a stops renewing: after leaseDuration the standby takes over.
    fake.edit(LEASE, |l| {
        l["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z")
    });
    assert!(try_acquire(&api, &b).await.expect("takeover"));
    let l = fake.get(LEASE).expect("lease");
    assert_eq!(l["spec"]["holderIdentity"], "pod-b");
    assert_eq!(l["spec"]["leaseTransitions"], 1);
    assert!(
        !try_acquire(&api, &a).await.expect("a again"),
        "the old leader stays out"
    );
    // b shuts down gracefully and hands over at once.
    release(&api, &b).await.expect("release");
    assert!(fake.get(LEASE).expect("lease")["spec"]["holderIdentity"].is_null());
    assert!(try_acquire(&api, &a).await.expect("a after release"));
}

#[tokio::test]
async fn a_concurrent_write_loses_instead_of_double_leading() {
    let (client, fake) = FakeApi::start();
    let api: Api<Lease> = Api::namespaced(client, "ops");
    assert!(try_acquire(&api, &settings("pod-a")).await.expect("a"));
    fake.edit(LEASE, |l| {
        l["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z")
    });
    // Another candidate wrote between our read and our replace: the API answers 409.
    fake.fail_next("PUT", LEASE, 409);
    assert!(
        !try_acquire(&api, &settings("pod-b"))
            .await
            .expect("conflict is no error")
    );
    assert_eq!(
        fake.get(LEASE).expect("lease")["spec"]["holderIdentity"],
        "pod-a"
    );
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

/// Serves the operator's admin router on an ephemeral local port.
async fn serve_admin(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

#[tokio::test]
async fn admin_endpoints_serve_metrics_health_and_readiness() {
    let metrics = Arc::new(Metrics::new());
    metrics.reconciled("ok", Duration::from_millis(20));
    metrics.error("SecretNotFound");
    metrics.broker_op("exchange.declare", "ok");
    let ready = Arc::new(AtomicBool::new(false));
    let addr = serve_admin(stompgate::operator::admin_router(metrics, ready.clone())).await;
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/readyz").await.0, 503);
    ready.store(true, Ordering::Relaxed);
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for m in [
        "stompgw_reconcile_total{result=\"ok\"} 1",
        "stompgw_reconcile_errors_total{reason=\"SecretNotFound\"} 1",
        "stompgw_reconcile_duration_seconds_bucket",
        "stompgw_broker_ops_total{op=\"exchange.declare\",result=\"ok\"} 1",
        "stompgw_broker_conflicts_total 0",
    ] {
        assert!(body.contains(m), "missing {m} in\n{body}");
    }
}

/// A scrape of many StompGateways is sent in pieces (`Metrics::encode_chunks`): the answer
/// must still be whole, with its exact length, to an HTTP/1.1 and an HTTP/1.0 client.
#[tokio::test]
async fn a_scrape_sent_in_pieces_arrives_whole_with_its_length() {
    use kube::core::DeserializeGuard;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;
    use stompgate::crd::StompGateway;
    let metrics = Arc::new(Metrics::new());
    let mut writer = Writer::<DeserializeGuard<StompGateway>>::default();
    metrics.observe_gateways(writer.as_reader());
    for i in 0..300 {
        let obj: DeserializeGuard<StompGateway> = serde_json::from_value(json!({
            "apiVersion": "stompgate.io/v1alpha1", "kind": "StompGateway",
            "metadata": {"name": format!("gw{i:04}"), "namespace": "apps"},
            "spec": {"rabbitmq": {"host": "rmq"}, "replicas": 1}}))
        .expect("a guarded object always deserializes");
        writer.apply_watcher_event(&Event::Apply(obj));
    }
    let want = metrics.encode();
    assert!(
        metrics.encode_chunks().len() > 2,
        "the fixture must span several pieces"
    );
    let addr = serve_admin(stompgate::operator::admin_router(
        metrics,
        Arc::new(AtomicBool::new(true)),
    ))
    .await;
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET /metrics {version}\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no content-length ({version}):\n{head}"));
        assert_eq!(length, want.len().to_string(), "{version}");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{head}"
        );
        assert_eq!(body, want, "{version}");
    }
}

#[tokio::test]
async fn the_controller_stops_with_a_clear_error_when_the_crd_is_missing() {
    use stompgate::operator::controller::{Context, Settings, run};
    use stompgate::operator::topology::BrokerPool;
    let (client, _fake) = FakeApi::start();
    let (pool, rx) = BrokerPool::new();
    let ctx = Arc::new(Context::new(
        client,
        Settings::default(),
        pool,
        Arc::new(Metrics::new()),
    ));
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        run(ctx, None, rx, std::future::pending()),
    )
    .await;
    let err = res
        .expect("returns at once")
        .expect_err("no CRD, no controller");
    assert!(err.to_string().contains("not found"), "{err}");
}
