//! A tiny kubelet for the end-to-end test: it runs the pods that the emulator's Deployment
//! controller creates for the Deployments the operator manages, as local processes, and reports
//! their readiness. The Deployment's status (replicas, updated, ready, available, conditions)
//! and rollouts are the emulator's Deployment controller's, which counts only the pods this
//! kubelet reports ready.
//!
//! For each pod it materialises what the container would see: ConfigMap and Secret volumes are
//! written to a directory and paths under their mount points in `command`/`args`, `env` values
//! and ConfigMap files (the gateway config file names the certificate's path) are rewritten
//! to it; `env` values and `secretKeyRef`/`configMapKeyRef` are resolved from the emulator;
//! the container ports get free local ports (`--listen`/`--stomp-listen` added to the
//! arguments, which win over the config file). The readiness probe's HTTP GET is run against
//! the local port (over TLS without verifying the certificate for `scheme: HTTPS`, as the
//! kubelet does), and the result is reported through the pod's `status` subresource
//! (`Ready` condition).
//!
//! Not emulated: images (the container runs the `stompgate` binary under test), security
//! contexts, resources, liveness probes, restarts (an exited process is reported not ready),
//! other volume types than configMap, secret and projected secrets (a pod using one never
//! starts and the reason is logged).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use kube_emulator::Emulator;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the test can see of a pod.
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub struct PodInfo {
    /// `namespace/deployment`.
    pub owner: String,
    /// Pod name.
    pub name: String,
    /// Local port of the container port named `ws`.
    pub ws_port: u16,
    /// Readiness.
    pub ready: bool,
    /// Template hash.
    pub hash: String,
}

struct Pod {
    info: PodInfo,
    child: tokio::process::Child,
    /// (port, path, https)
    probe_port: Option<(u16, String, bool)>,
}

/// The running kubelet.
pub struct Kubelet {
    pods: Arc<Mutex<Vec<PodInfo>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    /// Starts polling the emulator every 150 ms for pods matching `selector`; they run
    /// `binary` in `work`.
    pub fn start(emu: Arc<Emulator>, binary: PathBuf, work: PathBuf, selector: &str) -> Kubelet {
        let pods = Arc::new(Mutex::new(Vec::new()));
        let shared = pods.clone();
        let selector = selector.to_string();
        let task = tokio::spawn(async move {
            let mut state = State {
                emu,
                binary,
                work,
                pods: BTreeMap::new(),
                failed: BTreeMap::new(),
                selector,
            };
            loop {
                state.sync().await;
                *shared.lock().expect("lock") =
                    state.pods.values().map(|p| p.info.clone()).collect();
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        });
        Kubelet { pods, task }
    }

    /// The pods now.
    pub fn pods(&self) -> Vec<PodInfo> {
        self.pods.lock().expect("lock").clone()
    }
}

struct State {
    emu: Arc<Emulator>,
    binary: PathBuf,
    work: PathBuf,
    /// Running pods by `namespace/name`.
    pods: BTreeMap<String, Pod>,
    /// Pods that cannot start, with the reason (logged once).
    failed: BTreeMap<String, String>,
    selector: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Accepts any server certificate (the kubelet's HTTPS probes do not verify) and remembers
/// the one it saw.
#[derive(Debug)]
struct AnyCert(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to 127.0.0.1:`port` that accepts any certificate.
pub async fn tls_connect(
    port: u16,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider.clone()))
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let tcp = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .ok()?
    .ok()
}

/// The DER certificate the TLS listener on `port` presents.
pub async fn served_certificate(port: u16) -> Option<Vec<u8>> {
    let s = tls_connect(port).await?;
    let (_, conn) = s.get_ref();
    Some(conn.peer_certificates()?.first()?.to_vec())
}

async fn https_ok(port: u16, path: &str) -> bool {
    match tls_connect(port).await {
        Some(s) => probe(s, path).await,
        None => false,
    }
}

async fn http_ok(port: u16, path: &str) -> bool {
    let Ok(Ok(s)) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    probe(s, path).await
}

async fn probe<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    path: &str,
) -> bool {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        Ok(Ok(n)) => {
            let head = String::from_utf8_lossy(&buf[..n]);
            head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2")
        }
        _ => false,
    }
}

impl State {
    fn get(&self, path: &str) -> Option<Value> {
        self.emu.get(path)
    }

    async fn sync(&mut self) {
        let (code, list) = self.emu.call(
            "GET",
            &format!("/api/v1/pods?labelSelector={}", self.selector),
            None,
        );
        if code != 200 {
            return;
        }
        let mut seen = Vec::new();
        for pod in list["items"].as_array().cloned().unwrap_or_default() {
            if pod.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            let ns = pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            let key = format!("{ns}/{name}");
            seen.push(key.clone());
            if !self.pods.contains_key(&key) && !self.failed.contains_key(&key) {
                match self.start_pod(&ns, &pod) {
                    Ok(p) => {
                        self.pods.insert(key.clone(), p);
                    }
                    Err(e) => {
                        eprintln!("e2e kubelet: cannot start pod {key}: {e}");
                        self.failed.insert(key.clone(), e);
                    }
                }
            }
        }
        // Pods the Deployment controller (or the garbage collector) removed stop.
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(mut p) = self.pods.remove(&k) {
                let _ = p.child.start_kill();
            }
        }
        self.failed.retain(|k, _| seen.contains(k));
        // Readiness, as the probes say, reported on each pod.
        for (key, p) in self.pods.iter_mut() {
            let exited = match p.child.try_wait() {
                Ok(Some(status)) => {
                    if p.info.ready || p.probe_port.is_some() {
                        eprintln!("e2e kubelet: pod {} exited: {status}", p.info.name);
                    }
                    p.probe_port = None;
                    true
                }
                _ => false,
            };
            let ready = !exited
                && match &p.probe_port {
                    Some((port, path, false)) => http_ok(*port, path).await,
                    Some((port, path, true)) => https_ok(*port, path).await,
                    None => true,
                };
            p.info.ready = ready;
            let ns = key.split('/').next().unwrap_or_default();
            let code = self.emu.set_pod_ready(ns, &p.info.name, ready);
            if code != 200 && code != 404 {
                eprintln!("e2e kubelet: status of pod {key}: {code}");
            }
        }
    }

    /// Writes the Secret's keys (all, or `items` as key -> path) into `dir`.
    fn write_secret(&self, ns: &str, sname: &str, items: &Value, dir: &Path) -> Result<(), String> {
        let obj = self
            .get(&format!("/api/v1/namespaces/{ns}/secrets/{sname}"))
            .ok_or(format!(
                "Secret {sname} not found (CreateContainerConfigError)"
            ))?;
        let data = obj["data"].as_object().cloned().unwrap_or_default();
        let items: Vec<(String, String)> = match items.as_array() {
            Some(items) => items
                .iter()
                .map(|i| {
                    (
                        i["key"].as_str().unwrap_or("").into(),
                        i["path"].as_str().unwrap_or("").into(),
                    )
                })
                .collect(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, path) in items {
            let raw = data.get(&key).and_then(Value::as_str).ok_or(format!(
                "Secret {sname} has no key {key} (the volume cannot be mounted)"
            ))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(raw)
                .map_err(|e| e.to_string())?;
            write(&dir.join(path), &bytes)?;
        }
        Ok(())
    }

    fn start_pod(&mut self, ns: &str, pod: &Value) -> Result<Pod, String> {
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        let deploy = pod
            .pointer("/metadata/ownerReferences/0/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let h = pod
            .pointer("/metadata/labels/pod-template-hash")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let template = pod;
        let dir = self.work.join(&pod_name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let spec = template.get("spec").cloned().unwrap_or_default();
        let container = spec
            .pointer("/containers/0")
            .cloned()
            .ok_or("no container")?;
        // Where each mount lands here, known before the files are written: ConfigMap files
        // that name paths under a mount point get them rewritten too.
        let mut mount_map: Vec<(String, PathBuf)> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap_or("").to_string(),
                    dir.join("volumes").join(m["name"].as_str().unwrap_or("")),
                )
            })
            .collect();
        mount_map.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let rewrite_text = |text: &str| -> String {
            let mut out = text.to_string();
            for (mp, local) in &mount_map {
                out = out.replace(&format!("{mp}/"), &format!("{}/", local.display()));
            }
            out
        };
        // Volumes -> directories.
        let mut volume_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
        for v in spec["volumes"].as_array().cloned().unwrap_or_default() {
            let vname = v["name"].as_str().unwrap_or("").to_string();
            let vdir = dir.join("volumes").join(&vname);
            std::fs::create_dir_all(&vdir).map_err(|e| e.to_string())?;
            if let Some(cm) = v.get("configMap") {
                let cname = cm["name"].as_str().unwrap_or("");
                let obj = self
                    .get(&format!("/api/v1/namespaces/{ns}/configmaps/{cname}"))
                    .ok_or(format!(
                        "ConfigMap {cname} not found (CreateContainerConfigError)"
                    ))?;
                for (k, val) in obj["data"].as_object().cloned().unwrap_or_default() {
                    let text = rewrite_text(val.as_str().unwrap_or(""));
                    write(&vdir.join(k), text.as_bytes())?;
                }
            } else if let Some(sec) = v.get("secret") {
                let sname = sec["secretName"].as_str().unwrap_or("");
                self.write_secret(ns, sname, &sec["items"], &vdir)?;
            } else if let Some(sources) = v.pointer("/projected/sources").and_then(Value::as_array)
            {
                for src in sources {
                    let Some(sec) = src.get("secret") else {
                        return Err(format!(
                            "volume {vname}: only secret sources of projected volumes are emulated"
                        ));
                    };
                    let sname = sec["name"].as_str().unwrap_or("");
                    self.write_secret(ns, sname, &sec["items"], &vdir)?;
                }
            } else {
                return Err(format!(
                    "volume {vname}: only configMap, secret and projected secret volumes are emulated"
                ));
            }
            volume_dirs.insert(vname, vdir);
        }
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in container["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let vname = m["name"].as_str().unwrap_or("");
            let local = volume_dirs
                .get(vname)
                .ok_or(format!("mount of unknown volume {vname}"))?;
            mounts.push((
                m["mountPath"].as_str().unwrap_or("").to_string(),
                local.clone(),
            ));
        }
        // Longest mount path first, so /etc/stompgate/tls wins over /etc/stompgate.
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let rewrite = |a: &str| -> String {
            for (mp, local) in &mounts {
                if let Some(rest) = a.strip_prefix(mp.as_str())
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    return format!("{}{rest}", local.display());
                }
            }
            a.to_string()
        };
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(&rewrite).collect())
                .unwrap_or_default()
        };
        // The image's entrypoint is the binary under test.
        let command = strs(&container["command"]);
        let mut args = strs(&container["args"]);
        let mut env: Vec<(String, String)> = Vec::new();
        for e in container["env"].as_array().cloned().unwrap_or_default() {
            let name = e["name"].as_str().unwrap_or("").to_string();
            if let Some(v) = e["value"].as_str() {
                env.push((name, rewrite(v)));
            } else if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                let (sname, key) = (
                    r["name"].as_str().unwrap_or(""),
                    r["key"].as_str().unwrap_or(""),
                );
                let optional = r["optional"].as_bool() == Some(true);
                let val = self
                    .get(&format!("/api/v1/namespaces/{ns}/secrets/{sname}"))
                    .and_then(|s| s["data"][key].as_str().map(str::to_string))
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
                match val {
                    Some(v) => env.push((name, String::from_utf8_lossy(&v).into_owned())),
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "env {name}: secret {sname} key {key} not found (CreateContainerConfigError)"
                        ));
                    }
                }
            } else if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
                let (cname, key) = (
                    r["name"].as_str().unwrap_or(""),
                    r["key"].as_str().unwrap_or(""),
                );
                let val = self
                    .get(&format!("/api/v1/namespaces/{ns}/configmaps/{cname}"))
                    .and_then(|c| c["data"][key].as_str().map(str::to_string));
                match val {
                    Some(v) => env.push((name, v)),
                    None if r["optional"].as_bool() == Some(true) => {}
                    None => {
                        return Err(format!("env {name}: configmap {cname} key {key} not found"));
                    }
                }
            } else {
                return Err(format!(
                    "env {name}: only value, secretKeyRef and configMapKeyRef are emulated"
                ));
            }
        }
        // Container ports -> local ports.
        let mut ports: BTreeMap<String, u16> = BTreeMap::new();
        for p in container["ports"].as_array().cloned().unwrap_or_default() {
            let pname = p["name"].as_str().unwrap_or("").to_string();
            let local = free_port();
            match pname.as_str() {
                "ws" => args.extend(["--listen".to_string(), format!("127.0.0.1:{local}")]),
                "stomp" => {
                    args.extend(["--stomp-listen".to_string(), format!("127.0.0.1:{local}")])
                }
                other => {
                    return Err(format!(
                        "container port {other:?}: the e2e kubelet maps ws and stomp only"
                    ));
                }
            }
            ports.insert(pname, local);
        }
        let probe_port = container.pointer("/readinessProbe/httpGet").map(|g| {
            let port = match &g["port"] {
                Value::String(n) => ports.get(n).copied().unwrap_or(0),
                Value::Number(n) => {
                    let want = n.as_u64().unwrap_or(0);
                    container["ports"]
                        .as_array()
                        .and_then(|a| a.iter().find(|p| p["containerPort"].as_u64() == Some(want)))
                        .and_then(|p| p["name"].as_str())
                        .and_then(|n| ports.get(n).copied())
                        .unwrap_or(0)
                }
                _ => 0,
            };
            (
                port,
                g["path"].as_str().unwrap_or("/").to_string(),
                g["scheme"].as_str() == Some("HTTPS"),
            )
        });
        let (program, argv) = if command.is_empty() {
            (self.binary.display().to_string(), args)
        } else {
            let mut c = command;
            let program = c.remove(0);
            c.extend(args);
            (program, c)
        };
        let log = std::fs::File::create(dir.join("container.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(program)
            .args(&argv)
            .envs(env)
            .env("RUST_LOG", "info")
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        eprintln!("e2e kubelet: started pod {pod_name}: {argv:?}");
        Ok(Pod {
            info: PodInfo {
                owner: format!("{ns}/{deploy}"),
                name: pod_name,
                ws_port: ports.get("ws").copied().unwrap_or(0),
                ready: false,
                hash: h,
            },
            child,
            probe_port,
        })
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}
