//! The session state machine without any IO: frames and fake broker results in, actions out.

use super::*;
use lapin::BasicProperties;

use crate::stomp::Headers;

fn now() -> Instant {
    Instant::now()
}

fn session() -> Session {
    Session::new(SessionConfig::default(), "session-test".into(), now())
}

fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
    let mut f = Frame::new(command);
    for (k, v) in headers {
        f.headers.push(*k, *v);
    }
    f
}

fn drain(s: &mut Session) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn sent(actions: &[Action]) -> Vec<&Frame> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(f) => Some(f),
            _ => None,
        })
        .collect()
}

/// A session that completed CONNECT (1.2 unless `accept` says otherwise).
fn connected(accept: &str) -> Session {
    connected_with(SessionConfig::default(), accept)
}

fn connected_with(config: SessionConfig, accept: &str) -> Session {
    let mut s = Session::new(config, "session-test".into(), now());
    s.handle_frame(frame(
        Command::Connect,
        &[
            ("accept-version", accept),
            ("login", "guest"),
            ("passcode", "guest"),
        ],
    ));
    let actions = drain(&mut s);
    assert!(matches!(
        actions.as_slice(),
        [Action::Broker(BrokerRequest::Connect { .. })]
    ));
    s.handle_broker_reply(BrokerReply::Connected {
        server_product: Some("RabbitMQ/3.10.8".into()),
    });
    let actions = drain(&mut s);
    assert_eq!(sent(&actions)[0].command, Command::Connected);
    s
}

#[test]
fn connect_passes_credentials_and_vhost_then_answers_connected() {
    let mut s = session();
    s.handle_frame(frame(
        Command::Stomp,
        &[
            ("accept-version", "1.1,1.2"),
            ("host", "prod"),
            ("login", "alice"),
            ("passcode", "pw"),
            ("heart-beat", "2000,5000"),
        ],
    ));
    assert!(!s.wants_input(), "busy until the broker answers");
    match drain(&mut s).as_slice() {
        [
            Action::Broker(BrokerRequest::Connect {
                login,
                passcode,
                vhost,
            }),
        ] => {
            assert_eq!(
                (login.as_str(), passcode.as_str(), vhost.as_str()),
                ("alice", "pw", "prod")
            );
        }
        other => panic!("{other:?}"),
    }
    s.handle_broker_reply(BrokerReply::Connected {
        server_product: Some("RabbitMQ/3.10.8".into()),
    });
    let actions = drain(&mut s);
    let connected = sent(&actions)[0];
    assert_eq!(connected.get("version"), Some("1.2"));
    assert_eq!(connected.get("heart-beat"), Some("5000,2000"));
    assert_eq!(connected.get("session"), Some("session-test"));
    assert!(
        connected
            .get("server")
            .unwrap()
            .starts_with("RabbitMQ/3.10.8 stompgate/")
    );
    assert!(s.wants_input());
    assert_eq!(s.heartbeat(), HeartBeat::new(5000, 2000));
}

#[test]
fn failed_login_reports_rabbitmq_texts_and_closes() {
    for (failure, body) in [
        (
            ConnectFailure::AccessRefused,
            "Access refused for user 'guest'\n",
        ),
        (
            ConnectFailure::VhostDenied,
            "Virtual host '/' access denied",
        ),
    ] {
        let mut s = session();
        s.handle_frame(frame(
            Command::Connect,
            &[("login", "guest"), ("passcode", "x")],
        ));
        drain(&mut s);
        s.handle_broker_reply(BrokerReply::ConnectFailed(failure));
        let actions = drain(&mut s);
        let error = sent(&actions)[0];
        assert_eq!(error.get("message"), Some("Bad CONNECT"));
        assert_eq!(&error.body[..], body.as_bytes());
        assert!(matches!(
            actions.last(),
            Some(Action::Close(CloseReason::LoginFailed))
        ));
        assert!(s.is_closed());
    }
}

#[test]
fn forced_credentials_replace_the_clients() {
    let config = SessionConfig {
        forced_credentials: Some(("svc".into(), "secret".into())),
        ..SessionConfig::default()
    };
    let mut s = Session::new(config, "s".into(), now());
    s.handle_frame(frame(
        Command::Connect,
        &[("login", "mallory"), ("passcode", "x")],
    ));
    match drain(&mut s).as_slice() {
        [Action::Broker(BrokerRequest::Connect { login, .. })] => assert_eq!(login, "svc"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_dot_zero_connect_values_are_left_trimmed() {
    let mut s = session();
    s.handle_frame(frame(
        Command::Connect,
        &[("login", "  guest"), ("passcode", " guest")],
    ));
    match drain(&mut s).as_slice() {
        [
            Action::Broker(BrokerRequest::Connect {
                login, passcode, ..
            }),
        ] => {
            assert_eq!((login.as_str(), passcode.as_str()), ("guest", "guest"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_heart_beat_is_reported() {
    let mut s = session();
    s.handle_frame(frame(
        Command::Connect,
        &[
            ("login", "g"),
            ("passcode", "g"),
            ("heart-beat", "soon,later"),
        ],
    ));
    let actions = drain(&mut s);
    assert_eq!(sent(&actions)[0].get("message"), Some("Invalid heart-beat"));
    assert!(s.is_closed());
}

#[test]
fn frames_before_connect_are_refused_but_the_session_stays_open() {
    let mut s = session();
    s.handle_frame(frame(Command::Subscribe, &[("destination", "/queue/a")]));
    let actions = drain(&mut s);
    assert_eq!(sent(&actions)[0].get("message"), Some("Illegal command"));
    assert!(!s.is_closed());
}

#[test]
fn subscribe_waits_for_the_broker_before_its_receipt() {
    let mut s = connected("1.2");
    s.handle_frame(frame(
        Command::Subscribe,
        &[
            ("id", "7"),
            ("destination", "/exchange/rabbitmq/zjj"),
            ("receipt", "r"),
        ],
    ));
    let plan = match drain(&mut s).pop() {
        Some(Action::Broker(BrokerRequest::Channel(ChannelOp::Subscribe(plan)))) => plan,
        other => panic!("{other:?}"),
    };
    assert_eq!(plan.consumer_tag, "T_7");
    assert_eq!(plan.binding.as_ref().unwrap().routing_key, "zjj");
    assert!(!s.wants_input());
    s.handle_broker_reply(BrokerReply::Done);
    let actions = drain(&mut s);
    assert_eq!(sent(&actions)[0].command, Command::Receipt);
    assert_eq!(s.subscription_count(), 1);
}

#[test]
fn deliveries_become_messages_with_rabbitmq_headers() {
    let mut s = connected("1.2");
    s.handle_frame(frame(
        Command::Subscribe,
        &[("id", "a"), ("destination", "/queue/q"), ("ack", "client")],
    ));
    drain(&mut s);
    s.handle_broker_reply(BrokerReply::Done);
    drain(&mut s);
    s.handle_delivery(Delivery {
        consumer_tag: "T_a".into(),
        delivery_tag: 3,
        exchange: String::new(),
        routing_key: "q".into(),
        redelivered: true,
        properties: BasicProperties::default().with_content_type("text/plain".into()),
        body: Bytes::from_static(b"hi"),
    });
    let actions = drain(&mut s);
    let message = sent(&actions)[0];
    let names: Vec<&str> = message.headers.iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "subscription",
            "destination",
            "message-id",
            "redelivered",
            "ack",
            "content-type"
        ]
    );
    assert_eq!(message.get("message-id"), Some("T_a@@session-test@@3"));
    assert_eq!(message.get("ack"), Some("T_a@@session-test@@3"));
    assert_eq!(message.get("destination"), Some("/queue/q"));
    assert_eq!(message.get("redelivered"), Some("true"));
}

#[test]
fn cumulative_ack_settles_older_deliveries_and_rejects_unknown_tags() {
    let mut s = connected("1.2");
    s.handle_frame(frame(
        Command::Subscribe,
        &[("id", "a"), ("destination", "/queue/q"), ("ack", "client")],
    ));
    drain(&mut s);
    s.handle_broker_reply(BrokerReply::Done);
    drain(&mut s);
    for tag in 1..=3 {
        s.handle_delivery(Delivery {
            consumer_tag: "T_a".into(),
            delivery_tag: tag,
            exchange: String::new(),
            routing_key: "q".into(),
            redelivered: false,
            properties: BasicProperties::default(),
            body: Bytes::new(),
        });
    }
    drain(&mut s);
    s.handle_frame(frame(Command::Ack, &[("id", "T_a@@session-test@@2")]));
    match drain(&mut s).as_slice() {
        [
            Action::Broker(BrokerRequest::Channel(ChannelOp::Ack {
                delivery_tag: 2,
                multiple: true,
            })),
        ] => {}
        other => panic!("{other:?}"),
    }
    s.handle_broker_reply(BrokerReply::Done);
    // Tag 1 went with the cumulative ack.
    s.handle_frame(frame(Command::Ack, &[("id", "T_a@@session-test@@1")]));
    let actions = drain(&mut s);
    assert_eq!(sent(&actions)[0].get("message"), Some("Message not found"));
    // Another session's id is refused.
    s.handle_frame(frame(Command::Nack, &[("id", "T_a@@session-other@@3")]));
    let actions = drain(&mut s);
    assert_eq!(sent(&actions)[0].get("message"), Some("Invalid header"));
    // NACK with requeue:false.
    s.handle_frame(frame(
        Command::Nack,
        &[("id", "T_a@@session-test@@3"), ("requeue", "false")],
    ));
    match drain(&mut s).as_slice() {
        [
            Action::Broker(BrokerRequest::Channel(ChannelOp::Nack {
                delivery_tag: 3,
                requeue: false,
                ..
            })),
        ] => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn transactions_buffer_until_commit_and_receipt_follows_the_replay() {
    let mut s = connected("1.2");
    s.handle_frame(frame(Command::Begin, &[("transaction", "t")]));
    drain(&mut s);
    for body in ["a", "b"] {
        s.handle_frame(
            frame(
                Command::Send,
                &[("destination", "/queue/q"), ("transaction", "t")],
            )
            .with_body(body),
        );
        assert!(drain(&mut s).is_empty(), "buffered, nothing happens");
    }
    s.handle_frame(frame(
        Command::Commit,
        &[("transaction", "t"), ("receipt", "c")],
    ));
    let mut published = Vec::new();
    loop {
        let actions = drain(&mut s);
        let mut progressed = false;
        for action in actions {
            match action {
                Action::Broker(BrokerRequest::Channel(ChannelOp::Publish(p))) => {
                    published.push(p.body.clone());
                    progressed = true;
                }
                Action::Send(f) => {
                    assert_eq!(f.get("receipt-id"), Some("c"));
                    assert_eq!(published.len(), 2, "receipt after both publishes");
                    assert_eq!(published, [Bytes::from("a"), Bytes::from("b")]);
                    return;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(progressed, "stalled");
        s.handle_broker_reply(BrokerReply::Done);
    }
}

#[test]
fn transaction_limits_and_unknown_transactions() {
    let mut s = connected("1.2");
    for i in 0..MAX_TRANSACTIONS {
        s.handle_frame(frame(Command::Begin, &[("transaction", &i.to_string())]));
    }
    drain(&mut s);
    s.handle_frame(frame(Command::Begin, &[("transaction", "one-too-many")]));
    let actions = drain(&mut s);
    assert_eq!(
        sent(&actions)[0].get("message"),
        Some("Transaction limit exceeded")
    );
    s.handle_frame(frame(Command::Abort, &[("transaction", "nope")]));
    let actions = drain(&mut s);
    assert_eq!(sent(&actions)[0].get("message"), Some("Bad transaction"));
    s.handle_frame(frame(Command::Commit, &[]));
    let actions = drain(&mut s);
    assert_eq!(
        sent(&actions)[0].get("message"),
        Some("Missing transaction")
    );
}

/// A SEND with `receipt:r1` to /topic/chat.general, published; returns its confirm id.
fn receipted_send(s: &mut Session) -> u64 {
    s.handle_frame(
        frame(
            Command::Send,
            &[("destination", "/topic/chat.general"), ("receipt", "r1")],
        )
        .with_body("x"),
    );
    let request = match drain(s).pop() {
        Some(Action::Broker(BrokerRequest::Channel(ChannelOp::Publish(p)))) => p,
        other => panic!("{other:?}"),
    };
    assert!(request.mandatory, "unroutable messages are counted");
    let confirm_id = request.confirm_id.expect("a confirm is awaited");
    s.handle_broker_reply(BrokerReply::Done);
    assert!(drain(s).is_empty(), "no receipt before the confirm");
    confirm_id
}

fn unroutable() -> ConfirmOutcome {
    ConfirmOutcome::Unroutable {
        reply_text: "NO_ROUTE".into(),
    }
}

#[test]
fn an_unroutable_send_gets_its_receipt_as_with_rabbitmq() {
    // @stomp/stompjs's own suite: "Should confirm send using receipt" to a topic nobody
    // subscribes to. RabbitMQ confirms (and drops) the message.
    let mut s = connected("1.2");
    let confirm_id = receipted_send(&mut s);
    s.handle_confirm(confirm_id, unroutable());
    let actions = drain(&mut s);
    assert_eq!(actions.len(), 1, "{actions:?}");
    let receipt = sent(&actions)[0];
    assert_eq!(receipt.command, Command::Receipt);
    assert_eq!(receipt.get("receipt-id"), Some("r1"));
    assert!(!s.is_closed());
}

#[test]
fn error_on_unroutable_answers_error_with_receipt_id_then_closes() {
    let config = SessionConfig {
        error_on_unroutable: true,
        ..SessionConfig::default()
    };
    let mut s = connected_with(config, "1.2");
    let confirm_id = receipted_send(&mut s);
    s.handle_confirm(confirm_id, unroutable());
    let actions = drain(&mut s);
    let error = sent(&actions)[0];
    assert_eq!(error.command, Command::Error);
    assert_eq!(error.get("receipt-id"), Some("r1"));
    assert_eq!(error.get("message"), Some("Message not routed"));
    assert!(
        matches!(
            actions.last(),
            Some(Action::Close(CloseReason::PublishFailed))
        ),
        "STOMP: the connection closes after an ERROR: {actions:?}"
    );
    assert!(s.is_closed());
}

#[test]
fn a_nacked_send_answers_error_with_receipt_id_then_closes() {
    let mut s = connected("1.2");
    let confirm_id = receipted_send(&mut s);
    s.handle_confirm(confirm_id, ConfirmOutcome::Nack);
    let actions = drain(&mut s);
    let error = sent(&actions)[0];
    assert_eq!(error.get("message"), Some("Message rejected"));
    assert_eq!(error.get("receipt-id"), Some("r1"));
    assert!(matches!(
        actions.last(),
        Some(Action::Close(CloseReason::PublishFailed))
    ));
}

#[test]
fn send_without_receipt_is_not_mandatory_and_queue_declares_once() {
    let mut s = connected("1.2");
    for _ in 0..2 {
        s.handle_frame(frame(Command::Send, &[("destination", "/queue/jobs")]));
        let request = match drain(&mut s).pop() {
            Some(Action::Broker(BrokerRequest::Channel(ChannelOp::Publish(p)))) => p,
            other => panic!("{other:?}"),
        };
        assert!(!request.mandatory);
        assert!(request.confirm_id.is_none());
        let first = s.rare.as_ref().is_none_or(|r| r.declared_queues.is_empty());
        assert_eq!(request.declare_queue.is_some(), first);
        s.handle_broker_reply(BrokerReply::Done);
    }
}

#[test]
fn temp_queue_reply_to_creates_the_queue_once_and_rewrites_reply_to() {
    let mut s = connected("1.2");
    let send = || {
        frame(
            Command::Send,
            &[("destination", "/queue/rpc"), ("reply-to", "/temp-queue/r")],
        )
    };
    s.handle_frame(send());
    match drain(&mut s).pop() {
        Some(Action::Broker(BrokerRequest::Channel(ChannelOp::CreateTempQueue(plan)))) => {
            assert_eq!(plan.consumer_tag, "T_/temp-queue/r")
        }
        other => panic!("{other:?}"),
    }
    s.handle_broker_reply(BrokerReply::TempQueueCreated {
        queue: "amq.gen-1".into(),
    });
    let request = match drain(&mut s).pop() {
        Some(Action::Broker(BrokerRequest::Channel(ChannelOp::Publish(p)))) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        request.properties.reply_to().as_ref().map(|r| r.as_str()),
        Some("amq.gen-1")
    );
    s.handle_broker_reply(BrokerReply::Done);
    s.handle_frame(send());
    assert!(matches!(
        drain(&mut s).pop(),
        Some(Action::Broker(BrokerRequest::Channel(ChannelOp::Publish(
            _
        ))))
    ));
}

#[test]
fn broker_failure_is_reported_then_closes() {
    let mut s = connected("1.2");
    s.handle_frame(frame(
        Command::Subscribe,
        &[("id", "1"), ("destination", "/amq/queue/missing")],
    ));
    drain(&mut s);
    s.handle_broker_reply(BrokerReply::Failed(BrokerFailure {
        name: "not_found".into(),
        text: "NOT_FOUND - no queue 'missing' in vhost '/'".into(),
    }));
    let actions = drain(&mut s);
    let error = sent(&actions)[0];
    assert_eq!(error.get("message"), Some("not_found"));
    assert!(matches!(
        actions.last(),
        Some(Action::Close(CloseReason::BrokerError))
    ));
}

#[test]
fn lost_broker_connection_asks_the_client_to_reconnect() {
    let mut s = connected("1.2");
    s.handle_broker_failure(BrokerFailure::connection_lost("The broker went away.\n"));
    let actions = drain(&mut s);
    let error = sent(&actions)[0];
    assert_eq!(error.get("message"), Some(BROKER_LOST));
    assert_eq!(error.get("reconnect"), Some("true"));
    assert!(matches!(
        actions.last(),
        Some(Action::Close(CloseReason::BrokerLost))
    ));
}

#[test]
fn channel_errors_carry_no_reconnect_hint() {
    let mut s = connected("1.2");
    s.handle_broker_failure(BrokerFailure {
        name: "precondition_failed".into(),
        text: "PRECONDITION_FAILED - unknown delivery tag 7".into(),
    });
    let actions = drain(&mut s);
    assert_eq!(sent(&actions)[0].get("reconnect"), None);
    assert!(matches!(
        actions.last(),
        Some(Action::Close(CloseReason::BrokerError))
    ));
}

#[test]
fn unreachable_broker_at_connect_is_worth_a_retry() {
    let mut s = session();
    s.handle_frame(frame(
        Command::Connect,
        &[("login", "guest"), ("passcode", "guest")],
    ));
    drain(&mut s);
    s.handle_broker_reply(BrokerReply::ConnectFailed(ConnectFailure::Unavailable(
        "connection refused".into(),
    )));
    let actions = drain(&mut s);
    let error = sent(&actions)[0];
    assert_eq!(error.get("message"), Some("Bad CONNECT"));
    assert_eq!(error.get("reconnect"), Some("true"));
    assert!(s.is_closed());
}

#[test]
fn duplicate_subscription_closes_the_session() {
    let mut s = connected("1.2");
    let sub = || {
        frame(
            Command::Subscribe,
            &[("id", "1"), ("destination", "/topic/a")],
        )
    };
    s.handle_frame(sub());
    drain(&mut s);
    s.handle_broker_reply(BrokerReply::Done);
    s.handle_frame(sub());
    let actions = drain(&mut s);
    assert_eq!(
        sent(&actions)[0].get("message"),
        Some("Duplicated subscription identifier")
    );
    assert!(s.is_closed());
}

#[test]
fn disconnect_flushes_then_receipts_then_closes() {
    let mut s = connected("1.2");
    s.handle_frame(frame(Command::Disconnect, &[("receipt", "bye")]));
    assert!(matches!(
        drain(&mut s).as_slice(),
        [Action::Broker(BrokerRequest::Flush)]
    ));
    s.handle_broker_reply(BrokerReply::Done);
    let actions = drain(&mut s);
    assert_eq!(sent(&actions)[0].get("receipt-id"), Some("bye"));
    assert!(matches!(
        actions.last(),
        Some(Action::Close(CloseReason::Disconnect))
    ));
}

#[test]
fn heartbeats_are_sent_when_idle_and_a_silent_client_times_out() {
    let start = now();
    let mut s = Session::new(SessionConfig::default(), "s".into(), start);
    s.handle_frame(frame(
        Command::Connect,
        &[
            ("accept-version", "1.2"),
            ("login", "g"),
            ("passcode", "g"),
            ("heart-beat", "1000,1000"),
        ],
    ));
    drain(&mut s);
    s.handle_broker_reply(BrokerReply::Connected {
        server_product: None,
    });
    drain(&mut s);
    s.note_sent(start);
    s.note_received(start);
    let t1 = start + Duration::from_millis(1000);
    assert_eq!(s.next_timeout(), Some(t1));
    s.handle_timeout(t1);
    assert!(matches!(drain(&mut s).as_slice(), [Action::SendHeartbeat]));
    // Nothing from the client for the interval plus grace: closed.
    s.handle_timeout(start + receive_grace(1000));
    assert!(matches!(
        drain(&mut s).as_slice(),
        [Action::Close(CloseReason::HeartbeatTimeout)]
    ));
}

#[test]
fn login_timeout_closes_a_session_that_never_connects() {
    let start = now();
    let mut s = Session::new(SessionConfig::default(), "s".into(), start);
    assert_eq!(s.next_timeout(), Some(start + Duration::from_secs(10)));
    s.handle_timeout(start + Duration::from_secs(10));
    let actions = drain(&mut s);
    let frames = sent(&actions);
    assert_eq!(frames.len(), 1, "{actions:?}");
    assert_eq!(frames[0].get("message"), Some("Login timeout"));
    assert_eq!(
        String::from_utf8_lossy(&frames[0].body),
        "No CONNECT frame within 10 s of opening the connection.\n"
    );
    assert!(matches!(
        actions.last(),
        Some(Action::Close(CloseReason::LoginTimeout))
    ));
}

#[test]
fn login_timeout_while_the_broker_login_is_pending_says_so() {
    let start = now();
    let mut s = Session::new(SessionConfig::default(), "s".into(), start);
    s.handle_frame(frame(
        Command::Connect,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
        ],
    ));
    drain(&mut s);
    s.handle_timeout(start + Duration::from_secs(10));
    let actions = drain(&mut s);
    let frames = sent(&actions);
    assert_eq!(
        String::from_utf8_lossy(&frames[0].body),
        "RabbitMQ did not accept the login within 10 s.\n"
    );
    assert!(matches!(
        actions.last(),
        Some(Action::Close(CloseReason::LoginTimeout))
    ));
}

#[test]
fn shutdown_sends_a_reconnect_hint() {
    let mut s = connected("1.2");
    s.handle_shutdown();
    let actions = drain(&mut s);
    let error = sent(&actions)[0];
    assert_eq!(error.get("message"), Some("Server shutting down"));
    assert_eq!(error.get("reconnect"), Some("true"));
    assert!(matches!(
        actions.last(),
        Some(Action::Close(CloseReason::Shutdown))
    ));
}

#[test]
fn server_cancelled_subscription_is_reported() {
    let mut s = connected("1.2");
    s.handle_frame(frame(
        Command::Subscribe,
        &[("id", "x"), ("destination", "/queue/q")],
    ));
    drain(&mut s);
    s.handle_broker_reply(BrokerReply::Done);
    s.handle_consumer_cancelled("T_x");
    let actions = drain(&mut s);
    let error = sent(&actions)[0];
    assert_eq!(error.get("message"), Some("Server cancelled subscription"));
    assert_eq!(error.get("subscription"), Some("x"));
    assert_eq!(s.subscription_count(), 0);
    let _ = Headers::new();
}

#[test]
fn consumers_ending_during_disconnect_are_silent() {
    let mut s = connected("1.2");
    s.handle_frame(frame(
        Command::Subscribe,
        &[("id", "x"), ("destination", "/queue/q")],
    ));
    drain(&mut s);
    s.handle_broker_reply(BrokerReply::Done);
    drain(&mut s);
    s.handle_frame(frame(Command::Disconnect, &[("receipt", "bye")]));
    drain(&mut s);
    // The driver closes the channel before answering the flush: its consumers end.
    s.handle_consumer_cancelled("T_x");
    s.handle_delivery(Delivery {
        consumer_tag: "T_x".into(),
        delivery_tag: 1,
        exchange: String::new(),
        routing_key: "q".into(),
        redelivered: false,
        properties: BasicProperties::default(),
        body: Bytes::new(),
    });
    assert!(drain(&mut s).is_empty());
    s.handle_broker_reply(BrokerReply::Done);
    let actions = drain(&mut s);
    assert_eq!(sent(&actions).len(), 1, "only the RECEIPT");
}

#[test]
fn a_draining_session_delivers_auto_ack_messages_and_its_consumers_end_quietly() {
    let mut s = connected("1.2");
    for (id, ack) in [("auto", "auto"), ("manual", "client")] {
        s.handle_frame(frame(
            Command::Subscribe,
            &[("id", id), ("destination", "/queue/q"), ("ack", ack)],
        ));
        drain(&mut s);
        s.handle_broker_reply(BrokerReply::Done);
        drain(&mut s);
    }
    s.begin_drain();
    let delivery = |tag: &str, n: u64| Delivery {
        consumer_tag: tag.into(),
        delivery_tag: n,
        exchange: String::new(),
        routing_key: "q".into(),
        redelivered: false,
        properties: BasicProperties::default(),
        body: Bytes::from_static(b"x"),
    };
    // Pushed before the cancel: an auto-ack delivery is gone from the queue, so the client
    // gets it; a client-ack one is requeued when the channel closes (no ACK is read now).
    s.handle_delivery(delivery("T_auto", 1));
    s.handle_delivery(delivery("T_manual", 2));
    let actions = drain(&mut s);
    let frames = sent(&actions);
    assert_eq!(frames.len(), 1, "{actions:?}");
    assert_eq!(frames[0].get("subscription"), Some("auto"));
    // The cancelled consumers end: no "Server cancelled subscription".
    s.handle_consumer_cancelled("T_auto");
    s.handle_consumer_cancelled("T_manual");
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.subscription_count(), 0);
    s.handle_shutdown();
    let actions = drain(&mut s);
    assert_eq!(
        sent(&actions)[0].get("message"),
        Some("Server shutting down")
    );
}

#[test]
fn the_passcode_is_redacted_in_debug_output() {
    let mut s = session();
    s.handle_frame(frame(
        Command::Connect,
        &[("login", "alice"), ("passcode", "Hunter2-Very-Secret")],
    ));
    let actions = drain(&mut s);
    let text = format!("{actions:?}");
    assert!(text.contains("alice"), "{text}");
    assert!(text.contains("Passcode(<redacted>)"), "{text}");
    assert!(!text.contains("Hunter2"), "{text}");
}

// ---- regressions found by the `session` fuzz target (fuzz/fuzz_targets/session.rs) ----

#[test]
fn fuzz_regression_nothing_follows_close_when_a_consumer_ends() {
    let mut s = connected("1.2");
    s.handle_frame(frame(
        Command::Subscribe,
        &[("id", "x"), ("destination", "/queue/q")],
    ));
    drain(&mut s);
    s.handle_broker_reply(BrokerReply::Done);
    drain(&mut s);
    s.handle_slow_consumer();
    assert!(matches!(
        drain(&mut s).last(),
        Some(Action::Close(CloseReason::SlowConsumer))
    ));
    s.handle_consumer_cancelled("T_x");
    assert!(drain(&mut s).is_empty(), "no ERROR after Close");
}

#[test]
fn fuzz_regression_vhost_too_long_for_amqp_is_refused_before_the_broker() {
    let long = "v".repeat(256);
    let mut s = session();
    s.handle_frame(frame(
        Command::Connect,
        &[("login", "guest"), ("passcode", "guest"), ("host", &long)],
    ));
    let actions = drain(&mut s);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Broker(_))),
        "lapin panics on a vhost over 255 bytes"
    );
    let error = sent(&actions)[0];
    assert_eq!(error.get("message"), Some("Bad CONNECT"));
    assert_eq!(
        error.body,
        format!("Virtual host '{long}' access denied").as_bytes()
    );
    assert!(matches!(
        actions.last(),
        Some(Action::Close(CloseReason::LoginFailed))
    ));
    // 255 bytes is still a name the broker may know.
    let mut s = session();
    s.handle_frame(frame(
        Command::Connect,
        &[("login", "guest"), ("host", &long[..255])],
    ));
    assert!(matches!(
        drain(&mut s).as_slice(),
        [Action::Broker(BrokerRequest::Connect { .. })]
    ));
}

#[test]
fn fuzz_regression_names_too_long_for_amqp_are_errors_not_broker_requests() {
    type Case<'a> = (Command, Vec<(&'a str, String)>, &'a str);
    let long = "q".repeat(256);
    let cases: Vec<Case> = vec![
        (
            Command::Send,
            vec![("destination", format!("/queue/{long}"))],
            "Invalid destination",
        ),
        (
            Command::Send,
            vec![("destination", format!("/exchange/x/{long}"))],
            "Invalid destination",
        ),
        (
            Command::Send,
            vec![
                ("destination", "/queue/a".into()),
                ("reply-to", format!("/temp-queue/{}", &long[..250])),
            ],
            "Invalid header",
        ),
        (
            Command::Subscribe,
            vec![("destination", format!("/topic/{long}"))],
            "Invalid destination",
        ),
        (
            Command::Subscribe,
            vec![("destination", "/queue/a".into()), ("id", long.clone())],
            "Invalid header",
        ),
        (
            Command::Subscribe,
            // The Q_<destination> consumer tag is longer than the queue name.
            vec![("destination", format!("/queue/{}", &long[..250]))],
            "Invalid header",
        ),
        (
            Command::Subscribe,
            vec![
                ("destination", "/topic/t".into()),
                ("x-queue-name", long.clone()),
            ],
            "Invalid header",
        ),
    ];
    for (command, headers, message) in cases {
        let mut s = connected("1.2");
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s.handle_frame(frame(command.clone(), &headers));
        let actions = drain(&mut s);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Broker(_))),
            "{command} {headers:?} reached the broker"
        );
        assert_eq!(
            sent(&actions)[0].get("message"),
            Some(message),
            "{command} {headers:?}"
        );
        assert!(!s.is_closed());
    }
}

#[test]
fn an_idle_session_holds_no_queue_buffers() {
    let mut s = connected("1.2");
    assert!(s.actions.capacity() > 0, "CONNECT queued actions");
    s.release_idle_buffers();
    assert_eq!((s.actions.capacity(), s.work.capacity()), (0, 0));
    // Released only when empty: a queued action stays.
    s.handle_frame(frame(Command::Send, &[("destination", "/queue/q")]));
    s.release_idle_buffers();
    assert!(s.poll_action().is_some());
}
