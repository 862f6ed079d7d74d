//! `stompgate bench` against an in-process gateway and the real RabbitMQ: fanout with 5
//! subscribers and 50 echo round trips, nothing lost or duplicated.

mod support;

use clap::Parser;
use stompgate::bench::echo::{self, EchoArgs};
use stompgate::bench::fanout::{self, FanoutArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_echo_through_the_gateway() {
    let gateway = support::start_gateway(&[]).await;
    let url = format!("ws://{}/ws", gateway.http_addr);
    let amqp_url = support::amqp_url();

    let key = support::unique("bench.fanout");
    let destination = format!("/exchange/amq.topic/{key}");
    let args = FanoutArgs::try_parse_from([
        "fanout",
        "--url",
        &url,
        "--amqp-url",
        &amqp_url,
        "--subscribers",
        "5",
        "--destination",
        &destination,
        "--rate",
        "200",
        "--warmup",
        "0.5",
        "--duration",
        "1.5",
        "--size",
        "100",
    ])
    .expect("fanout args");
    let report = fanout::run(&args, 0).await.expect("fanout runs");
    assert_eq!(report.subscribers, 5, "{report:?}");
    assert_eq!(report.exchange, "amq.topic");
    assert_eq!(report.routing_key, key);
    // 2 s at 200 msg/s, paced from the start: 400 messages, 300 of them in the window.
    assert!((395..=401).contains(&report.published), "{report:?}");
    assert!(
        (290..=305).contains(&report.published_in_window),
        "{report:?}"
    );
    assert_eq!(report.delivery.expected, 5 * report.published);
    assert_eq!(
        report.delivery.received, report.delivery.expected,
        "{report:?}"
    );
    assert_eq!(report.delivery.lost, 0, "{report:?}");
    assert_eq!(report.delivery.duplicated, 0, "{report:?}");
    assert_eq!(report.delivery.out_of_order, 0, "{report:?}");
    assert_eq!(report.subscribers_dropped, 0, "{report:?}");
    assert_eq!(report.foreign, 0, "{report:?}");
    // ~1000 deliveries/s (5 x 200) over the window.
    assert!(
        (500.0..=1500.0).contains(&report.deliveries_per_s),
        "{report:?}"
    );
    let l = &report.latency_ms;
    assert_eq!(l.count, 5 * report.published_in_window, "{report:?}");
    assert!(l.p50 > 0.0 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
    assert!(l.p50 < 500.0, "{l:?}");

    let queue = support::unique("bench.echo");
    let args = EchoArgs::try_parse_from([
        "echo",
        "--url",
        &url,
        "--destination",
        &format!("/queue/{queue}"),
        "--count",
        "50",
        "--warmup",
        "5",
        "--size",
        "4096",
    ])
    .expect("echo args");
    let report = echo::run(&args, 0).await.expect("echo runs");
    assert_eq!(report.round_trips, 50);
    assert_eq!(report.foreign, 0);
    let l = &report.latency_us;
    assert_eq!(l.count, 50);
    assert!(l.p50 > 0.0 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
    assert!(l.p50 < 500_000.0, "{l:?}");
    assert!(report.round_trips_per_s > 2.0, "{report:?}");

    support::Amqp::connect().await.delete_queue(&queue).await;
    gateway.shutdown();
    gateway.wait().await;
}

/// `stompgate bench operator` at a small N (not timed): the API emulator in-process, the
/// operator binary as a child process, the real RabbitMQ. Whatever the machine's speed, the
/// run must show no false errors, no writes and no events while idle or after a restart,
/// every created exchange owned, and nothing left in RabbitMQ after deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_bench_finds_no_false_errors_idle_writes_or_leaks() {
    use stompgate::bench::operator::{self, OperatorBenchArgs};
    let emulator = kube_emulator::Emulator::start()
        .await
        .expect("API emulator");
    let dir = std::env::temp_dir().join(support::unique("bench-operator"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    emulator.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let args = OperatorBenchArgs::try_parse_from([
        "operator",
        "--objects",
        "100",
        "--namespaces",
        "4",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
        "--operator-bin",
        env!("CARGO_BIN_EXE_stompgate"),
        "--amqp-url",
        &support::amqp_url(),
        "--idle-secs",
        "10",
        "--edits",
        "5",
    ])
    .expect("bench args");
    let report = operator::run(&args).await.expect("bench operator runs");
    eprintln!("{}", report.human());
    assert_eq!(report.reconciles_error, 0.0, "{report:?}");
    assert!(report.errors_by_reason.is_empty(), "{report:?}");
    assert_eq!(report.created_but_not_owned, 0, "{report:?}");
    assert_eq!(report.idle_object_writes, 0, "{report:?}");
    assert_eq!(report.idle_events, 0, "{report:?}");
    assert_eq!(report.restart_object_writes, 0, "{report:?}");
    assert!(report.leaked_exchanges.is_empty(), "{report:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
