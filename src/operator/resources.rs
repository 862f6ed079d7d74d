//! Pure builders: a `StompGateway` in, the Kubernetes objects the operator applies out.
//! Shared by the controller and `stompgate render`, so what a reviewer sees is what is applied.

use std::collections::BTreeMap;

use k8s_openapi::DeepMerge;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector as K8sSecretKeySelector, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{AuthMode, StompGateway, StompGatewaySpec};

/// Where the rendered gateway config file is mounted.
pub const CONFIG_DIR: &str = "/etc/stompgate";
/// The config file inside [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "gateway.yaml";
/// Where the broker CA bundle is mounted.
pub const CA_DIR: &str = "/etc/stompgate/tls";
/// Pod-template annotation whose change rolls the pods (config or Secret data changed).
pub const CONFIG_HASH_ANNOTATION: &str = "stompgate.io/config-hash";
/// Annotation on every child with the hash of what we applied; equal hash means no write.
pub const APPLIED_HASH_ANNOTATION: &str = "stompgate.io/applied-hash";
/// Name of the gateway container (podTemplate overrides merge into it by this name).
pub const CONTAINER: &str = "gateway";
/// Field manager of every server-side apply.
/// Seconds the pod keeps serving after Kubernetes starts terminating it (preStop `sleep`),
/// so that Services and ingresses stop routing new clients to it before it stops accepting.
/// The kubelet's built-in sleep action needs no shell or binary in the (distroless) image.
pub const PRESTOP_SLEEP_SECONDS: i64 = 5;

/// terminationGracePeriodSeconds = preStop sleep + the gateway's drain timeout + this margin
/// (process exit after the drain), so the kubelet never SIGKILLs a draining gateway.
pub const TERMINATION_MARGIN_SECONDS: i64 = 5;

pub const FIELD_MANAGER: &str = "stompgateway-operator";

/// Builder failures: the StompGateway lacks what a child needs.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The object has no name or namespace.
    #[error("StompGateway has no {0}")]
    MissingMeta(&'static str),
    /// The generated config could not be serialized.
    #[error("could not serialize the gateway config: {0}")]
    Config(#[from] serde_yaml::Error),
}

/// Inputs from outside the object: operator flags and referenced Secret data.
#[derive(Clone, Debug, Default)]
pub struct BuildInputs {
    /// Image used when `spec.image` is empty (`--gateway-image`).
    pub default_image: String,
    /// Hash of the referenced Secrets' data (credentials, URI, CA); part of the pod annotation so
    /// a rotation rolls the pods.
    pub secret_hash: String,
}

/// Everything applied for one StompGateway, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The gateway config file.
    pub config_map: ConfigMap,
    /// Client endpoint.
    pub service: Service,
    /// The gateway pods.
    pub deployment: Deployment,
    /// Disruption budget, unless disabled.
    pub pdb: Option<PodDisruptionBudget>,
}

/// Labels on every child; the first two also select the pods.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/component".into(), "gateway".into());
    l.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    l
}

/// The pod selector (also `status.selector`).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "stompgate".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

/// `status.selector` in label-selector string form.
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Name of the ConfigMap.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-config")
}

/// The image the pods run.
pub fn effective_image(spec: &StompGatewaySpec, inputs: &BuildInputs) -> String {
    match spec.image.as_deref() {
        Some(i) if !i.is_empty() => i.to_string(),
        _ => inputs.default_image.clone(),
    }
}

/// Percent-encodes a vhost for an AMQP URI (`/` becomes `%2f`).
pub fn encode_vhost(vhost: &str) -> String {
    let mut out = String::new();
    for b in vhost.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// The credential-free broker URL from `host`/`port`/`vhost`; `None` when the URI comes from a
/// Secret.
pub fn amqp_url(spec: &StompGatewaySpec) -> Option<String> {
    let r = &spec.rabbitmq;
    let host = r.host.as_deref()?;
    let tls = r.tls.as_ref().is_some_and(|t| t.enabled);
    let scheme = if tls { "amqps" } else { "amqp" };
    Some(format!(
        "{scheme}://{host}:{}/{}",
        r.port,
        encode_vhost(&r.vhost)
    ))
}

/// The gateway config file (keys are the gateway's flag names).
pub fn gateway_config(spec: &StompGatewaySpec) -> Result<String, serde_yaml::Error> {
    let mut m = BTreeMap::<&str, serde_yaml::Value>::new();
    let ws = &spec.web_socket;
    m.insert("listen", format!("0.0.0.0:{}", ws.port).into());
    m.insert("ws-path", ws.path.clone().into());
    m.insert("sockjs-enabled", ws.sock_js.enabled.into());
    m.insert("sockjs-path", ws.sock_js.path.clone().into());
    if spec.stomp.enabled {
        m.insert(
            "stomp-listen",
            format!("0.0.0.0:{}", spec.stomp.port).into(),
        );
    }
    if let Some(url) = amqp_url(spec) {
        m.insert("amqp-url", url.into());
    }
    let mode = match spec.auth.mode {
        AuthMode::Passthrough => "passthrough",
        AuthMode::ServiceUser => "service-user",
    };
    m.insert("auth-mode", mode.into());
    m.insert(
        "heartbeat-server-ms",
        i64::from(spec.heartbeat.server_ms).into(),
    );
    m.insert(
        "heartbeat-client-ms",
        i64::from(spec.heartbeat.client_ms).into(),
    );
    m.insert(
        "max-connections",
        i64::from(spec.limits.max_connections).into(),
    );
    m.insert(
        "max-frame-bytes",
        i64::from(spec.limits.max_frame_bytes).into(),
    );
    // Omitted when empty: an empty value would be one empty origin, not "any".
    if !ws.allowed_origins.is_empty() {
        m.insert("allowed-origins", ws.allowed_origins.clone().into());
    }
    m.insert(
        "drain-timeout-secs",
        i64::from(spec.drain_timeout_seconds).into(),
    );
    serde_yaml::to_string(&m)
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Hash of an object as we are about to apply it; stored in [`APPLIED_HASH_ANNOTATION`].
pub fn object_hash<T: serde::Serialize>(obj: &T) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    sha256_hex(&[&bytes])
}

/// Hash of Secret data, stable in key order; used for rotation roll-outs.
pub fn secret_data_hash<'a>(
    secrets: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, Vec<u8>>)>,
) -> String {
    let mut h = Sha256::new();
    for (name, data) in secrets {
        h.update(name.as_bytes());
        for (k, v) in data {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
    }
    hex::encode(h.finalize())
}

fn meta(gw: &StompGateway, name: String) -> Result<ObjectMeta, BuildError> {
    let ns = gw.namespace().ok_or(BuildError::MissingMeta("namespace"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(ns),
        labels: Some(labels(&gw.name_any())),
        owner_references: owner_ref(gw).map(|o| vec![o]),
        ..ObjectMeta::default()
    })
}

// No uid (e.g. `render` of a file that was never applied): no owner reference can be made.
fn owner_ref(gw: &StompGateway) -> Option<OwnerReference> {
    gw.controller_owner_ref(&())
}

fn with_applied_hash<T: Resource + serde::Serialize>(mut obj: T) -> T {
    let hash = object_hash(&obj);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
    obj
}

/// Builds every child. Pure: same inputs, same objects.
pub fn build(gw: &StompGateway, inputs: &BuildInputs) -> Result<Children, BuildError> {
    let name = gw
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMeta("name"))?;
    let config = gateway_config(&gw.spec)?;
    let config_map = with_applied_hash(ConfigMap {
        metadata: meta(gw, config_map_name(&name))?,
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), config.clone())])),
        ..ConfigMap::default()
    });
    let service = with_applied_hash(build_service(gw, &name)?);
    let deployment = with_applied_hash(build_deployment(gw, &name, &config, inputs)?);
    let pdb = if gw.spec.pod_disruption_budget.enabled {
        Some(with_applied_hash(PodDisruptionBudget {
            metadata: meta(gw, name.clone())?,
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(
                    gw.spec.pod_disruption_budget.max_unavailable,
                )),
                selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(&name)),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }))
    } else {
        None
    };
    Ok(Children {
        config_map,
        service,
        deployment,
        pdb,
    })
}

fn build_service(gw: &StompGateway, name: &str) -> Result<Service, BuildError> {
    let spec = &gw.spec;
    let mut metadata = meta(gw, name.to_string())?;
    if !spec.service.annotations.is_empty() {
        metadata.annotations = Some(spec.service.annotations.clone());
    }
    let mut ports = vec![ServicePort {
        name: Some("ws".into()),
        port: spec.web_socket.port,
        target_port: Some(IntOrString::String("ws".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }];
    if spec.stomp.enabled {
        ports.push(ServicePort {
            name: Some("stomp".into()),
            port: spec.stomp.port,
            target_port: Some(IntOrString::String("stomp".into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        });
    }
    Ok(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.service.type_.as_str().into()),
            selector: Some(selector_labels(name)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(K8sSecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("ws".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The restricted-profile container securityContext.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn build_pod_template(
    gw: &StompGateway,
    name: &str,
    config: &str,
    inputs: &BuildInputs,
) -> PodTemplateSpec {
    let spec = &gw.spec;
    let r = &spec.rabbitmq;
    let mut env = Vec::new();
    if let Some(u) = &r.uri_secret_ref {
        env.push(secret_env("STOMPGATE_AMQP_URL", &u.name, &u.key));
    }
    if let Some(c) = &r.credentials_secret_ref {
        env.push(secret_env(
            "STOMPGATE_AMQP_USERNAME",
            &c.name,
            &c.username_key,
        ));
        env.push(secret_env(
            "STOMPGATE_AMQP_PASSWORD",
            &c.name,
            &c.password_key,
        ));
    }
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(name),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if let Some(ca) = r.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        // An env var, not a config key: a gateway without the flag ignores it instead of
        // refusing the config file.
        env.push(EnvVar {
            name: "STOMPGATE_AMQP_TLS_CA_FILE".into(),
            value: Some(format!("{CA_DIR}/ca.crt")),
            ..EnvVar::default()
        });
        mounts.push(VolumeMount {
            name: "broker-ca".into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "broker-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: "ca.crt".into(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let mut ports = vec![ContainerPort {
        name: Some("ws".into()),
        container_port: spec.web_socket.port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }];
    if spec.stomp.enabled {
        ports.push(ContainerPort {
            name: Some("stomp".into()),
            container_port: spec.stomp.port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        });
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(effective_image(spec, inputs)),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec![
            "gateway".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: (!env.is_empty()).then_some(env),
        ports: Some(ports),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRESTOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("256Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let config_hash = sha256_hex(&[config.as_bytes(), inputs.secret_hash.as_bytes()]);
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(name)),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_string(),
                config_hash,
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(
                PRESTOP_SLEEP_SECONDS
                    + i64::from(spec.drain_timeout_seconds)
                    + TERMINATION_MARGIN_SECONDS,
            ),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    };
    if let Some(user) = spec.pod_template.clone() {
        // Strategic merge (containers/volumes by name), so an override adds to the template.
        template.merge_from(user);
        // The selector labels must survive any override, or the Deployment is invalid.
        let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .extend(labels(name));
    }
    template
}

fn build_deployment(
    gw: &StompGateway,
    name: &str,
    config: &str,
    inputs: &BuildInputs,
) -> Result<Deployment, BuildError> {
    Ok(Deployment {
        metadata: meta(gw, name.to_string())?,
        spec: Some(DeploymentSpec {
            // Omitted when unset so an autoscaler, not this field manager, owns replicas.
            replicas: gw.spec.replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            },
            revision_history_limit: Some(5),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: build_pod_template(gw, name, config, inputs),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// In-cluster URLs for `status.endpoints`.
pub fn endpoints(gw: &StompGateway) -> crate::crd::Endpoints {
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    let host = format!("{name}.{ns}.svc");
    let ws = &gw.spec.web_socket;
    crate::crd::Endpoints {
        web_socket: format!("ws://{host}:{}{}", ws.port, ws.path),
        sock_js: ws
            .sock_js
            .enabled
            .then(|| format!("http://{host}:{}{}", ws.port, ws.sock_js.path)),
        stomp: gw
            .spec
            .stomp
            .enabled
            .then(|| format!("{host}:{}", gw.spec.stomp.port)),
    }
}

/// The children as a list of JSON objects (apply order), for `render` and tests.
pub fn to_values(children: &Children) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    let mut out = vec![
        serde_json::to_value(&children.config_map)?,
        serde_json::to_value(&children.service)?,
        serde_json::to_value(&children.deployment)?,
    ];
    if let Some(p) = &children.pdb {
        out.push(serde_json::to_value(p)?);
    }
    Ok(out)
}
