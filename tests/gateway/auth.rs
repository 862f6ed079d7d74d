//! JWT auth mode against the real RabbitMQ: tokens in CONNECT or the WebSocket upgrade,
//! the service user towards the broker, destinations limited to the token's grant.

use crate::support::{Amqp, Client, body, start_gateway, unique};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use stompgate::gateway::server;
use stompgate::stomp::{Command, Frame};

const SECRET: &str = "integration-test-secret-0123456789";
const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "stompgate";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt")
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims(exp_in: i64, subscribe: &[&str], send: &[&str]) -> Value {
    json!({
        "sub": "user-123",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + exp_in,
        "stomp_destinations": {"subscribe": subscribe, "send": send},
    })
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(fixtures().join("rs256-test-key.pem")).expect("key fixture");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-rs256".to_string());
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(&pem).expect("RSA key"),
    )
    .expect("sign")
}

async fn jwt_gateway() -> server::Gateway {
    let dir = std::env::temp_dir().join(unique("stompgate-jwt"));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("hs256.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let jwks = fixtures().join("jwks.json");
    start_gateway(&[
        "--auth",
        "jwt",
        "--jwt-hs256-secret-file",
        secret.to_str().unwrap(),
        "--jwt-jwks-file",
        jwks.to_str().unwrap(),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ])
    .await
}

async fn connect_with_token(gw: &server::Gateway, token: &str) -> (Client, Frame) {
    let mut c = Client::ws(gw).await;
    let reply = c
        .connect_with(&[
            ("accept-version", "1.2"),
            ("login", ""),
            ("passcode", token),
        ])
        .await;
    (c, reply)
}

#[tokio::test]
async fn hs256_token_subscribes_where_granted_and_is_refused_elsewhere() {
    let gw = jwt_gateway().await;
    let amqp = Amqp::connect().await;
    let key = unique("jwt.user");
    let granted = format!("/exchange/amq.topic/{key}.*");
    let token = hs256(&claims(300, &[&granted], &[]), SECRET);
    let (mut c, reply) = connect_with_token(&gw, &token).await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
    c.subscribe("0", &format!("/exchange/amq.topic/{key}.alerts"), &[])
        .await;
    amqp.publish(
        "amq.topic",
        &format!("{key}.alerts"),
        b"for you",
        Default::default(),
    )
    .await;
    let message = c.recv().await;
    assert_eq!(body(&message), "for you");

    // Outside the grant: a wider binding on the same prefix, and another destination.
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", format!("/exchange/amq.topic/{key}.#"))
            .header("receipt", "r1"),
    )
    .await;
    let reply = c.recv_receipt().await;
    assert_eq!(reply.command, Command::Error);
    assert_eq!(reply.get("message"), Some("access_refused"));
    assert_eq!(reply.get("receipt-id"), Some("r1"));
    assert_eq!(
        body(&reply),
        format!(
            "ACCESS_REFUSED - subscribe access to destination '/exchange/amq.topic/{key}.#' refused for token subject 'user-123'\n"
        )
    );
    assert_eq!(c.close_code().await, Some(1000));
}

#[tokio::test]
async fn token_in_login_and_send_outside_the_grant_is_refused() {
    let gw = jwt_gateway().await;
    let queue = unique("jwt-orders");
    let token = hs256(&claims(300, &[], &[&format!("/queue/{queue}")]), SECRET);
    let mut c = Client::ws(&gw).await;
    let reply = c
        .connect_with(&[("accept-version", "1.2"), ("login", &token)])
        .await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
    c.send_confirmed(&format!("/queue/{queue}"), "order", &[])
        .await;
    c.send(
        Frame::new(Command::Send)
            .header("destination", "/topic/elsewhere")
            .with_body("nope"),
    )
    .await;
    let reply = c.recv().await;
    assert_eq!(reply.get("message"), Some("access_refused"));
    assert!(
        body(&reply).starts_with("ACCESS_REFUSED - send access to destination '/topic/elsewhere'"),
        "{}",
        body(&reply)
    );
    c.wait_closed().await;
    let amqp = Amqp::connect().await;
    assert_eq!(amqp.queue_depth(&queue).await, Some(1));
    amqp.delete_queue(&queue).await;
}

async fn assert_refused(token: &str, reason: &str) {
    let gw = jwt_gateway().await;
    let (mut c, reply) = connect_with_token(&gw, token).await;
    assert_eq!(reply.command, Command::Error, "{reply:?}");
    assert_eq!(reply.get("message"), Some("Bad CONNECT"));
    assert_eq!(body(&reply), format!("Access refused: {reason}\n"));
    c.wait_closed().await;
}

#[tokio::test]
async fn expired_token_is_bad_connect_and_closes() {
    let token = hs256(&claims(-600, &["/topic/a"], &[]), SECRET);
    assert_refused(&token, "token expired").await;
}

#[tokio::test]
async fn wrong_signature_is_refused() {
    let token = hs256(
        &claims(300, &["/topic/a"], &[]),
        "some-other-secret-entirely",
    );
    assert_refused(&token, "token signature is invalid").await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(300, &["/topic/a"], &[]))
    );
    assert_refused(&token, "token algorithm 'none' is not accepted").await;
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let mut c = claims(300, &["/topic/a"], &[]);
    c["aud"] = json!("someone-else");
    assert_refused(&hs256(&c, SECRET), "token audience is not accepted").await;
}

#[tokio::test]
async fn rs256_token_from_jwks_in_the_authorization_header() {
    let gw = jwt_gateway().await;
    let amqp = Amqp::connect().await;
    let key = unique("jwt-rs");
    let token = rs256(&claims(300, &[&format!("/topic/{key}")], &[]));
    let mut c = Client::ws_bearer(&gw, &token).await;
    let reply = c.connect_with(&[("accept-version", "1.2")]).await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
    c.subscribe("0", &format!("/topic/{key}"), &[]).await;
    amqp.publish("amq.topic", &key, b"rs256", Default::default())
        .await;
    assert_eq!(body(&c.recv().await), "rs256");
    c.disconnect().await;

    // Alg confusion: an HMAC signature made with the HS256 secret, labelled RS256, is
    // checked against the RSA keys only, and fails.
    let forged = {
        use base64::Engine;
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let signing_input = format!(
            "{}.{}",
            b64(&json!({"alg": "RS256", "kid": "test-rs256"})),
            b64(&claims(300, &["/topic/a"], &[]))
        );
        let signature = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .expect("sign");
        format!("{signing_input}.{signature}")
    };
    let (_c, reply) = connect_with_token(&gw, &forged).await;
    assert_eq!(reply.get("message"), Some("Bad CONNECT"));
    assert_eq!(body(&reply), "Access refused: token signature is invalid\n");
}

#[tokio::test]
async fn a_rotated_jwks_is_used_after_reload() {
    let dir = std::env::temp_dir().join(unique("stompgate-jwks"));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    let original = std::fs::read_to_string(fixtures().join("jwks.json")).unwrap();
    std::fs::write(&jwks, &original).unwrap();
    let gw = start_gateway(&[
        "--auth-mode",
        "jwt",
        "--jwt-jwks-file",
        jwks.to_str().unwrap(),
        "--jwt-reload-secs",
        "1",
    ])
    .await;
    let old_kid = rs256(&claims(300, &["/topic/a"], &[]));
    let (_c, reply) = connect_with_token(&gw, &old_kid).await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");

    // A broken file is not applied; the keys in force stay.
    std::fs::write(&jwks, "{ not json").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_c, reply) = connect_with_token(&gw, &old_kid).await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");

    // The IdP rotates: the same key now published under another kid.
    std::fs::write(&jwks, original.replace("test-rs256", "rotated")).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_c, reply) = connect_with_token(&gw, &old_kid).await;
        if reply.command == Command::Error {
            assert_eq!(
                body(&reply),
                "Access refused: token signing key 'test-rs256' is unknown\n"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotated JWKS not used within 10s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let pem = std::fs::read(fixtures().join("rs256-test-key.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rotated".to_string());
    let new_kid = encode(
        &header,
        &claims(300, &["/topic/a"], &[]),
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    let (_c, reply) = connect_with_token(&gw, &new_kid).await;
    assert_eq!(reply.command, Command::Connected, "{reply:?}");
}
