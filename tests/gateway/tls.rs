//! TLS: https/wss and STOMP over TLS on the gateway's listeners (certificates made at test
//! time by rcgen), certificate reload, startup errors, and amqps:// to a private RabbitMQ
//! node with an AMQPS listener that requires a client certificate
//! (scripts/start-rabbit-tls-node.sh).

use crate::support::{Amqp, Client, body, start_gateway, unique};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stompgate::gateway::config::parse_gateway_args;
use stompgate::gateway::server;
use stompgate::stomp::{Command, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA and the certificates it signed, written as PEM files in a fresh directory.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
}

impl Pki {
    /// A CA, a server certificate for localhost/127.0.0.1 and a client certificate.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(unique(&format!("stompgate-tls-{name}")));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("stompgate test CA {name}"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .expect("params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).expect("leaf");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_pem, client_key) = leaf("stompgate", ExtendedKeyUsagePurpose::ClientAuth);
        let ca_pem = ca_cert.pem();
        for (file, text) in [
            ("ca.pem", &ca_pem),
            ("server.pem", &server_pem),
            ("server.key", &server_key),
            ("client.pem", &client_pem),
            ("client.key", &client_key),
        ] {
            std::fs::write(dir.join(file), text).expect("write");
        }
        Pki { dir, ca_pem }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A client configuration trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    pub fn tls_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert-file".into(),
            self.path("server.pem"),
            "--tls-key-file".into(),
            self.path("server.key"),
        ]
    }
}

async fn tls_gateway(pki: &Pki, extra: &[&str]) -> server::Gateway {
    let flags = pki.tls_flags();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    start_gateway(&args).await
}

fn wss_url(gw: &server::Gateway) -> String {
    format!("wss://localhost:{}/ws", gw.http_addr.port())
}

async fn start_error(extra: &[&str]) -> String {
    let mut argv: Vec<String> = vec!["--listen".into(), "127.0.0.1:0".into()];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = parse_gateway_args(&argv).expect("args");
    match server::start(args, axum::Router::new()).await {
        Ok(_) => panic!("the gateway started with {extra:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn wss_session_subscribes_and_receives() {
    let pki = Pki::new("wss");
    let gw = tls_gateway(&pki, &[]).await;
    let amqp = Amqp::connect().await;
    let key = unique("tls.wss");
    let mut c = Client::ws_tls(&wss_url(&gw), pki.client_config(), None)
        .await
        .expect("wss connects");
    assert_eq!(c.connect("1.2").await.command, Command::Connected);
    c.subscribe("0", &format!("/topic/{key}"), &[]).await;
    amqp.publish("amq.topic", &key, b"over tls", Default::default())
        .await;
    let message = c.recv().await;
    assert_eq!(message.command, Command::Message);
    assert_eq!(body(&message), "over tls");
    c.disconnect().await;
}

#[tokio::test]
async fn plain_ws_to_a_tls_listener_fails_cleanly() {
    let pki = Pki::new("plain");
    let gw = tls_gateway(&pki, &[]).await;
    let url = format!("ws://{}/ws", gw.http_addr);
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("a plain client gets an answer, not a hang");
    match attempt {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let text = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert_eq!(text, "This port speaks TLS: use https:// or wss://.\n");
        }
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    // The listener still serves TLS clients afterwards.
    let mut c = Client::ws_tls(&wss_url(&gw), pki.client_config(), None)
        .await
        .expect("wss connects");
    assert_eq!(c.connect("1.2").await.command, Command::Connected);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_the_handshake() {
    let pki = Pki::new("served");
    let other = Pki::new("other");
    let gw = tls_gateway(&pki, &[]).await;
    let err = Client::ws_tls(&wss_url(&gw), other.client_config(), None)
        .await
        .err()
        .expect("handshake must fail");
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("certificate"),
        "{err}"
    );
    let err = Client::tcp_tls(&gw, other.client_config())
        .await
        .err()
        .expect("STOMP TLS handshake must fail");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn stomp_over_tls_on_the_tcp_listener() {
    let pki = Pki::new("stomps");
    let gw = tls_gateway(&pki, &[]).await;
    let amqp = Amqp::connect().await;
    let queue = unique("tls-stomp");
    let mut c = Client::tcp_tls(&gw, pki.client_config())
        .await
        .expect("TLS handshake");
    assert_eq!(c.connect("1.2").await.command, Command::Connected);
    c.subscribe("0", &format!("/queue/{queue}"), &[]).await;
    c.send_confirmed(&format!("/queue/{queue}"), "stomp+ssl", &[])
        .await;
    let message = c.recv().await;
    assert_eq!(body(&message), "stomp+ssl");
    c.disconnect().await;
    // A plain STOMP client is told, in plain STOMP, then closed.
    let mut plain = Client::tcp(&gw).await;
    plain
        .send(
            Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("login", "guest")
                .header("passcode", "guest"),
        )
        .await;
    let reply = plain.recv().await;
    assert_eq!(reply.command, Command::Error);
    assert_eq!(
        body(&reply),
        "This port speaks STOMP over TLS (stomp+ssl).\n"
    );
    plain.wait_closed().await;
    amqp.delete_queue(&queue).await;
}

#[tokio::test]
async fn sockjs_and_health_are_served_over_https() {
    let pki = Pki::new("https");
    let gw = tls_gateway(&pki, &[]).await;
    let tcp = tokio::net::TcpStream::connect(gw.http_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.client_config())
        .connect(name, tcp)
        .await
        .expect("https handshake");
    tls.write_all(b"GET /stomp/info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.ok();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"websocket\":true"), "{response}");
}

#[tokio::test]
async fn missing_certificate_file_is_a_startup_error() {
    let pki = Pki::new("missing");
    let key = pki.path("server.key");
    let err = start_error(&[
        "--tls-cert-file",
        "/nonexistent/tls.crt",
        "--tls-key-file",
        &key,
    ])
    .await;
    assert!(
        err.starts_with("cannot read certificate file /nonexistent/tls.crt:"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_pem_is_a_startup_error() {
    let pki = Pki::new("badpem");
    let cert = pki.path("server.pem");
    let garbage = pki.path("garbage.key");
    std::fs::write(&garbage, "this is no key\n").unwrap();
    let err = start_error(&["--tls-cert-file", &cert, "--tls-key-file", &garbage]).await;
    assert_eq!(err, format!("key file {garbage} holds no PEM private key"));
    let err = start_error(&["--tls-cert-file", &garbage, "--tls-key-file", &cert]).await;
    assert_eq!(
        err,
        format!("certificate file {garbage} holds no PEM certificate")
    );
}

#[tokio::test]
async fn mismatched_key_is_a_startup_error() {
    let pki = Pki::new("mismatch");
    let cert = pki.path("server.pem");
    let wrong_key = pki.path("client.key");
    let err = start_error(&["--tls-cert-file", &cert, "--tls-key-file", &wrong_key]).await;
    assert_eq!(
        err,
        format!("the private key in {wrong_key} does not match the certificate in {cert}")
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_served_after_reload() {
    let old = Pki::new("old");
    let new = Pki::new("new");
    let served = Pki::new("served-files");
    for f in ["server.pem", "server.key"] {
        std::fs::copy(old.dir.join(f), served.dir.join(f)).unwrap();
    }
    let gw = tls_gateway(&served, &["--tls-reload-secs", "1"]).await;
    assert!(Client::tcp_tls(&gw, new.client_config()).await.is_err());
    // As cert-manager does: new files in place; a broken half-rotation is not applied.
    std::fs::write(served.dir.join("server.pem"), "half written").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(Client::tcp_tls(&gw, old.client_config()).await.is_ok());
    for f in ["server.pem", "server.key"] {
        std::fs::copy(new.dir.join(f), served.dir.join(f)).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if Client::tcp_tls(&gw, new.client_config()).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(Client::tcp_tls(&gw, old.client_config()).await.is_err());
}

/// The private AMQPS node; stopped (and its files removed) when dropped, panics included.
struct TlsNode {
    dir: PathBuf,
}

impl TlsNode {
    fn start(pki: &Pki) -> TlsNode {
        let dir = PathBuf::from("/tmp/stompgate-tls-node");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["ca.pem", "server.pem", "server.key"] {
            std::fs::copy(pki.dir.join(f), dir.join(f)).unwrap();
        }
        let out = std::process::Command::new(script())
            .arg(&dir)
            .output()
            .expect("run scripts/start-rabbit-tls-node.sh");
        assert!(
            out.status.success(),
            "AMQPS node did not start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        TlsNode { dir }
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/start-rabbit-tls-node.sh")
}

async fn readyz(gw: &server::Gateway) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(gw.http_addr).await.unwrap();
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.ok();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// One test for the whole node: it takes seconds to start, and nextest runs each test in
/// its own process.
#[tokio::test]
async fn amqps_with_ca_file_and_client_certificate_delivers_end_to_end() {
    let pki = Pki::new("broker");
    let _node = TlsNode::start(&pki);
    let url = "amqps://guest:guest@127.0.0.1:27372/%2f";
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let gw = start_gateway(&[
        "--amqp-url",
        url,
        "--amqp-ca-file",
        &ca,
        "--amqp-client-cert-file",
        &cert,
        "--amqp-client-key-file",
        &key,
    ])
    .await;
    let (status, text) = readyz(&gw).await;
    assert_eq!(status, 200, "{text}");
    let queue = unique("amqps");
    let mut c = Client::logged_in_ws(&gw).await;
    c.subscribe("0", &format!("/queue/{queue}"), &[]).await;
    c.send_confirmed(&format!("/queue/{queue}"), "via amqps", &[])
        .await;
    let message = c.recv().await;
    assert_eq!(body(&message), "via amqps");
    c.disconnect().await;

    // A CA that did not sign the broker's certificate: not ready, and a clear ERROR.
    let other = Pki::new("wrong-ca");
    let wrong_ca = other.path("ca.pem");
    let gw = start_gateway(&[
        "--amqp-url",
        url,
        "--amqp-ca-file",
        &wrong_ca,
        "--amqp-client-cert-file",
        &cert,
        "--amqp-client-key-file",
        &key,
    ])
    .await;
    let (status, text) = readyz(&gw).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    let mut c = Client::ws(&gw).await;
    let reply = tokio::time::timeout(Duration::from_secs(15), c.connect("1.2"))
        .await
        .expect("an answer, not a hang");
    assert_eq!(reply.get("message"), Some("Bad CONNECT"), "{reply:?}");
    assert!(
        body(&reply).starts_with("RabbitMQ is unreachable:"),
        "{}",
        body(&reply)
    );

    // The broker requires a client certificate: without one the handshake is refused.
    let gw = start_gateway(&["--amqp-url", url, "--amqp-ca-file", &ca]).await;
    let mut c = Client::ws(&gw).await;
    let reply = tokio::time::timeout(Duration::from_secs(15), c.connect("1.2"))
        .await
        .expect("an answer, not a hang");
    assert_eq!(reply.get("message"), Some("Bad CONNECT"), "{reply:?}");
}
