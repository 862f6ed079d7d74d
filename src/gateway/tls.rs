//! TLS for the gateway: the listeners' server certificate (reloaded when its files change,
//! as cert-manager rotates Secrets) and the trust settings for `amqps://` connections.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: String },
    #[error("{what} {path} is not valid PEM: {message}")]
    BadPem {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("{what} {path} holds no PEM private key")]
    NoKey { what: &'static str, path: String },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("unusable TLS certificate or key ({cert}, {key}): {source}")]
    Rustls {
        cert: String,
        key: String,
        source: rustls::Error,
    },
    #[error("no certificate in {path} is a usable CA: {message}")]
    BadCa { path: String, message: String },
    #[error("'{0}' is not a valid TLS server name")]
    ServerName(String),
    #[error("TLS client configuration: {0}")]
    Client(rustls::Error),
}

/// The one crypto backend of the process: both rustls backends may be linked (lapin and
/// kube pull different ones), and rustls refuses to guess.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Parses every certificate of a PEM file.
pub(crate) fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what,
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub(crate) fn load_key(
    what: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            what,
            path: path.display().to_string(),
        },
        other => TlsError::BadPem {
            what,
            path: path.display().to_string(),
            message: other.to_string(),
        },
    })
}

/// Loads a certificate chain and its key, checking that they belong together.
pub(crate) fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs("certificate file", cert)?;
    let private = load_key("key file", key)?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| match source {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        },
        source => TlsError::Rustls {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            source,
        },
    })
}

/// Serves the current certificate; the reloader swaps it.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|c| c.clone())
    }
}

/// The listeners' TLS settings: one certificate, two protocol profiles.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<CurrentCert>,
    /// HTTP/1.1 (WebSocket, SockJS, health) announced with ALPN.
    pub http: TlsAcceptor,
    /// STOMP over TLS (no ALPN).
    pub stomp: TlsAcceptor,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ServerTls {
    /// Loads and checks the certificate and key; fails with a message naming the file.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certified = load_certified_key(cert, key)?;
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(certified))));
        let config = |alpn: Vec<Vec<u8>>| -> Result<TlsAcceptor, TlsError> {
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|source| TlsError::Rustls {
                    cert: cert.display().to_string(),
                    key: key.display().to_string(),
                    source,
                })?
                .with_no_client_auth()
                .with_cert_resolver(current.clone());
            config.alpn_protocols = alpn;
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(ServerTls {
            http: config(vec![b"http/1.1".to_vec()])?,
            stomp: config(Vec::new())?,
            current: current.clone(),
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
        })
    }

    /// Re-reads the files; keeps the old certificate when the new pair is unusable.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let certified = load_certified_key(&self.cert_path, &self.key_path)?;
        if let Ok(mut current) = self.current.0.write() {
            *current = Arc::new(certified);
        }
        Ok(())
    }

    /// Reloads the certificate whenever its files change (see [`crate::gateway::reload`]).
    pub(crate) fn spawn_reloader(&self, interval: Duration, stop: CancellationToken) {
        let tls = self.clone();
        crate::gateway::reload::spawn_watch(
            "TLS certificate",
            vec![self.cert_path.clone(), self.key_path.clone()],
            interval,
            stop,
            move || tls.reload(),
        );
    }
}

/// Longest a client may take to finish the TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// First byte of a TLS handshake record (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plaintext HTTP client gets from a TLS port.
pub(crate) fn plaintext_http_answer() -> Vec<u8> {
    let body = "This port speaks TLS: use https:// or wss://.\n";
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The server side of a handshake, bounded by [`HANDSHAKE_TIMEOUT`]. A client that speaks
/// plaintext cannot read a TLS alert, so it gets `plaintext_answer` instead, then the close.
pub(crate) async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    plaintext_answer: &[u8],
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await.ok()? == 0 {
            return None;
        }
        if first[0] == TLS_HANDSHAKE_RECORD {
            return acceptor.accept(stream).await.ok();
        }
        let mut stream = stream;
        let _ = stream.write_all(plaintext_answer).await;
        let _ = stream.shutdown().await;
        // Read what the client sent, so that closing does not reset the connection and
        // discard the answer.
        let mut sink = [0u8; 4096];
        let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        None
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}

/// An `axum::serve` listener that hands out TLS streams. Handshakes run in their own tasks,
/// so a slow or hostile client cannot hold up the accept loop.
pub struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub(crate) fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        stop: CancellationToken,
    ) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, accepted) = tokio::sync::mpsc::channel(64);
        let plaintext: Arc<[u8]> = plaintext_http_answer().into();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = listener.accept() => next,
                };
                let (stream, peer) = match next {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let answer = plaintext.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match accept(&acceptor, stream, &answer).await {
                        Some(tls) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        None => tracing::debug!(%peer, "TLS handshake failed"),
                    }
                });
            }
        });
        TlsListener { accepted, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(pair) => pair,
            // The accept loop stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Trust settings for `amqps://`: the extra CA bundle (added to the system roots, as lapin
/// does) and an optional client certificate for mutual TLS. Kept as PEM for lapin, and as a
/// rustls client config for the gateway's own probes (readiness, server version).
#[derive(Clone)]
pub struct AmqpTls {
    pub lapin: lapin::tcp::OwnedTLSConfig,
    pub probe: TlsConnector,
}

impl std::fmt::Debug for AmqpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTls")
            .field("ca", &self.lapin.cert_chain.is_some())
            .field("client_cert", &self.lapin.identity.is_some())
            .finish()
    }
}

impl AmqpTls {
    pub(crate) fn load(
        ca: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        // A machine without system roots can still trust the given CA.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        let mut cert_chain = None;
        if let Some(path) = ca {
            let certs = load_certs("CA file", path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::BadCa {
                    path: path.display().to_string(),
                    message: "not an X.509 CA certificate".to_string(),
                });
            }
            let pem = read("CA file", path)?;
            cert_chain = Some(String::from_utf8_lossy(&pem).into_owned());
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Client)?
            .with_root_certificates(roots);
        let (config, identity) = match client {
            None => (builder.with_no_client_auth(), None),
            Some((cert, key)) => {
                let certified = load_certified_key(cert, key)?;
                let chain = certified.cert.clone();
                let private = load_key("key file", key)?;
                let config = builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|source| TlsError::Rustls {
                        cert: cert.display().to_string(),
                        key: key.display().to_string(),
                        source,
                    })?;
                let identity = lapin::tcp::OwnedIdentity::PKCS8 {
                    pem: read("certificate file", cert)?,
                    key: read("key file", key)?,
                };
                (config, Some(identity))
            }
        };
        Ok(AmqpTls {
            lapin: lapin::tcp::OwnedTLSConfig {
                identity,
                cert_chain,
            },
            probe: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Connects and completes a TLS handshake with the broker, checking its name.
    pub(crate) async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| TlsError::ServerName(host.to_string()).to_string())?;
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        self.probe
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("stompgate-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn missing_file_is_named() {
        let err = ServerTls::load(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .starts_with("cannot read certificate file /nonexistent/c.pem"),
            "{err}"
        );
    }

    #[test]
    fn file_without_pem_is_refused() {
        let d = dir("nopem");
        let cert = d.join("c.pem");
        let key = d.join("k.pem");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        std::fs::write(&key, "not a key\n").unwrap();
        let err = ServerTls::load(&cert, &key).err().unwrap();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }
}
