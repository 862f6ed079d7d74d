//! The gateway Deployment and its pod template: the container (config, Secrets as env and
//! volumes, probes, preStop drain), the restricted security profile, and `spec.podTemplate`
//! merged in.

use std::collections::BTreeMap;

use k8s_openapi::DeepMerge;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretKeySelector as K8sSecretKeySelector, SecretProjection, SecretVolumeSource,
    SecurityContext, SleepAction, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::config_map_name;
use super::{
    BuildError, BuildInputs, CA_DIR, CONFIG_DIR, CONFIG_FILE, CONFIG_HASH_ANNOTATION, HS256_FILE,
    JWKS_FILE, JWT_DIR, LISTENER_TLS_DIR, labels, meta, selector_labels, sha256_hex,
};
use crate::crd::{AuthMode, StompGateway, StompGatewaySpec};

/// Name of the gateway container (podTemplate overrides merge into it by this name).
pub const CONTAINER: &str = "gateway";

/// Seconds the pod keeps serving after Kubernetes starts terminating it (preStop `sleep`),
/// so that Services and ingresses stop routing new clients to it before it stops accepting.
/// The kubelet's built-in sleep action needs no shell or binary in the (distroless) image.
pub const PRESTOP_SLEEP_SECONDS: i64 = 5;

/// terminationGracePeriodSeconds = preStop sleep + the gateway's drain timeout + this margin
/// (process exit after the drain), so the kubelet never SIGKILLs a draining gateway.
pub const TERMINATION_MARGIN_SECONDS: i64 = 5;

/// The image the pods run.
pub fn effective_image(spec: &StompGatewaySpec, inputs: &BuildInputs) -> String {
    match spec.image.as_deref() {
        Some(i) if !i.is_empty() => i.to_string(),
        _ => inputs.default_image.clone(),
    }
}

pub(super) fn build_deployment(
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
    // Listener certificate and JWT keys: whole-Secret volumes (no subPath), so the kubelet
    // swaps rotated files in place and the gateway reloads them without a restart.
    if let Some(t) = &spec.tls {
        mounts.push(VolumeMount {
            name: "listener-tls".into(),
            mount_path: LISTENER_TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(secret_volume(
            "listener-tls",
            &t.secret_name,
            &[("tls.crt", "tls.crt"), ("tls.key", "tls.key")],
        ));
    }
    if let (AuthMode::Jwt, Some(jwt)) = (spec.auth.mode, &spec.auth.jwt) {
        let mut sources = Vec::new();
        if let Some(r) = &jwt.jwks_secret_ref {
            sources.push((r.name.as_str(), r.key.as_str(), JWKS_FILE));
        }
        if let Some(r) = &jwt.hs256_secret_ref {
            sources.push((r.name.as_str(), r.key.as_str(), HS256_FILE));
        }
        mounts.push(VolumeMount {
            name: "jwt-keys".into(),
            mount_path: JWT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "jwt-keys".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(
                    sources
                        .into_iter()
                        .map(|(secret, key, path)| VolumeProjection {
                            secret: Some(SecretProjection {
                                name: secret.into(),
                                items: Some(vec![KeyToPath {
                                    key: key.into(),
                                    path: path.into(),
                                    ..KeyToPath::default()
                                }]),
                                optional: Some(false),
                            }),
                            ..VolumeProjection::default()
                        })
                        .collect(),
                ),
                ..ProjectedVolumeSource::default()
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
        liveness_probe: Some(probe("/healthz", 10, 3, spec.tls.is_some())),
        readiness_probe: Some(probe("/readyz", 5, 2, spec.tls.is_some())),
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

fn secret_volume(name: &str, secret: &str, items: &[(&str, &str)]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(
                items
                    .iter()
                    .map(|(key, path)| KeyToPath {
                        key: (*key).into(),
                        path: (*path).into(),
                        ..KeyToPath::default()
                    })
                    .collect(),
            ),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
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

fn probe(path: &str, period: i32, failures: i32, tls: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("ws".into()),
            // With listener TLS the health endpoints are https too (the kubelet does not
            // verify the certificate).
            scheme: tls.then(|| "HTTPS".into()),
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
