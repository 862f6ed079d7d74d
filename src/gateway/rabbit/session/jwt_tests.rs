//! JWT auth mode in the session: token sources, service credentials, destination grants,
//! expiry. Tokens are signed here with an HS256 secret.

use super::*;
use crate::gateway::auth::{JwtSettings, JwtVerifier};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

const SECRET: &[u8] = b"session-test-secret";

fn token(exp_in: i64) -> String {
    let exp = jsonwebtoken::get_current_timestamp() as i64 + exp_in;
    let claims = json!({
        "sub": "user-1",
        "exp": exp,
        "stomp_destinations": {
            "subscribe": ["/topic/user.1.*"],
            "send": ["/queue/orders"]
        }
    });
    encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn config() -> SessionConfig {
    let verifier = JwtVerifier::new(JwtSettings {
        hs256_secret: Some(SECRET.to_vec()),
        destinations_claim: "stomp_destinations".into(),
        ..JwtSettings::default()
    })
    .unwrap();
    SessionConfig {
        forced_credentials: Some(("svc".into(), "svc-pw".into())),
        default_vhost: "apps".into(),
        jwt: Some(Arc::new(verifier)),
        ..SessionConfig::default()
    }
}

fn drain(s: &mut Session) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn connect(s: &mut Session, headers: &[(&str, &str)]) -> Vec<Action> {
    let mut f = Frame::new(Command::Connect).header("accept-version", "1.2");
    for (k, v) in headers {
        f.headers.push(*k, *v);
    }
    s.handle_frame(f);
    drain(s)
}

fn connected(start: Instant) -> Session {
    let mut s = Session::new(config(), "s".into(), start);
    let t = token(100);
    let actions = connect(&mut s, &[("passcode", &t)]);
    assert!(matches!(
        actions.as_slice(),
        [Action::Broker(BrokerRequest::Connect { .. })]
    ));
    s.handle_broker_reply(BrokerReply::Connected {
        server_product: None,
    });
    drain(&mut s);
    s
}

fn error_of(actions: &[Action]) -> (&Frame, &CloseReason) {
    match actions {
        [Action::Send(f), Action::Close(reason)] if f.command == Command::Error => (f, reason),
        other => panic!("expected ERROR then close, got {other:?}"),
    }
}

#[test]
fn token_connects_as_the_service_user_in_its_vhost() {
    let mut s = Session::new(config(), "s".into(), Instant::now());
    let t = token(300);
    let actions = connect(
        &mut s,
        &[("host", "elsewhere"), ("login", ""), ("passcode", &t)],
    );
    match actions.as_slice() {
        [
            Action::Broker(BrokerRequest::Connect {
                login,
                passcode,
                vhost,
            }),
        ] => {
            assert_eq!(login, "svc");
            assert_eq!(passcode.as_str(), "svc-pw");
            assert_eq!(vhost, "apps");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn token_may_come_from_login_or_the_transport() {
    let mut s = Session::new(config(), "s".into(), Instant::now());
    let t = token(300);
    let actions = connect(&mut s, &[("login", &t)]);
    assert!(matches!(
        actions.as_slice(),
        [Action::Broker(BrokerRequest::Connect { .. })]
    ));
    let mut s = Session::new(config(), "s".into(), Instant::now());
    s.set_bearer_token(token(300));
    let actions = connect(&mut s, &[("passcode", "ignored")]);
    assert!(matches!(
        actions.as_slice(),
        [Action::Broker(BrokerRequest::Connect { .. })]
    ));
}

#[test]
fn a_bad_token_is_bad_connect_and_is_not_echoed() {
    let mut s = Session::new(config(), "s".into(), Instant::now());
    let expired = token(-600);
    let actions = connect(&mut s, &[("passcode", &expired)]);
    let (error, reason) = error_of(&actions);
    assert_eq!(error.get("message"), Some("Bad CONNECT"));
    assert_eq!(&error.body[..], b"Access refused: token expired\n");
    assert_eq!(reason, &CloseReason::LoginFailed);
    let mut s = Session::new(config(), "s".into(), Instant::now());
    let actions = connect(&mut s, &[]);
    let (error, _) = error_of(&actions);
    assert!(String::from_utf8_lossy(&error.body).contains("no token"));
}

#[test]
fn subscribe_and_send_are_limited_to_the_grant() {
    let mut s = connected(Instant::now());
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", "/topic/user.1.news"),
    );
    assert!(matches!(
        drain(&mut s).as_slice(),
        [Action::Broker(BrokerRequest::Channel(
            ChannelOp::Subscribe(_)
        ))]
    ));
    s.handle_broker_reply(BrokerReply::Done);
    s.handle_frame(
        Frame::new(Command::Send)
            .header("destination", "/queue/orders")
            .with_body("x"),
    );
    assert!(matches!(
        drain(&mut s).as_slice(),
        [Action::Broker(BrokerRequest::Channel(ChannelOp::Publish(
            _
        )))]
    ));
    s.handle_broker_reply(BrokerReply::Done);
    s.handle_frame(
        Frame::new(Command::Send)
            .header("destination", "/topic/user.1.news")
            .header("receipt", "r"),
    );
    let actions = drain(&mut s);
    let (error, reason) = error_of(&actions);
    assert_eq!(error.get("message"), Some("access_refused"));
    assert_eq!(error.get("receipt-id"), Some("r"));
    assert_eq!(
        &error.body[..],
        b"ACCESS_REFUSED - send access to destination '/topic/user.1.news' refused for token subject 'user-1'\n"
    );
    assert_eq!(reason, &CloseReason::AccessRefused);
    assert!(s.is_closed());
}

#[test]
fn subscribe_outside_the_grant_never_reaches_the_broker() {
    let mut s = connected(Instant::now());
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", "/topic/user.2.news"),
    );
    let actions = drain(&mut s);
    let (error, reason) = error_of(&actions);
    assert_eq!(error.get("message"), Some("access_refused"));
    assert_eq!(reason, &CloseReason::AccessRefused);
}

#[test]
fn the_session_ends_when_the_token_expires() {
    let start = Instant::now();
    let mut s = connected(start);
    let deadline = s.next_timeout().expect("a deadline");
    assert!(deadline <= start + Duration::from_secs(100));
    assert!(deadline > start + Duration::from_secs(90));
    s.handle_timeout(start + Duration::from_secs(50));
    assert!(drain(&mut s).is_empty());
    s.handle_timeout(deadline);
    let actions = drain(&mut s);
    let (error, reason) = error_of(&actions);
    assert_eq!(error.get("message"), Some("Token expired"));
    assert_eq!(reason, &CloseReason::AccessRefused);
}

#[test]
fn x_queue_name_is_refused_with_a_token_even_on_a_granted_destination() {
    let mut s = connected(Instant::now());
    s.handle_frame(
        Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", "/topic/user.1.news")
            .header("x-queue-name", "orders"),
    );
    let actions = drain(&mut s);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Broker(_))),
        "{actions:?}"
    );
    let error = actions
        .iter()
        .find_map(|a| match a {
            Action::Send(f) if f.command == Command::Error => Some(f),
            _ => None,
        })
        .expect("an ERROR frame");
    assert_eq!(error.get("message"), Some("access_refused"));
    assert!(matches!(
        actions.last(),
        Some(Action::Close(CloseReason::AccessRefused))
    ));
}
