//! Leader election on a `coordination.k8s.io/v1` Lease: one replica reconciles, the others
//! wait. The holder renews every `renew`; a standby takes over when `renewTime + duration`
//! passed. Writes carry the Lease's resourceVersion, so two candidates cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

use super::resources::FIELD_MANAGER;

/// Lease writes name the operator as their field manager.
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

/// Lease timing and identity.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew: Duration,
}

/// Leader-election failures.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API failed.
    #[error("lease API: {0}")]
    Kube(#[from] kube::Error),
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Tries once to take or renew the lease. `Ok(true)`: we hold it now.
pub async fn try_acquire(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, LeaderError> {
    let now = Timestamp::now();
    let secs = i32::try_from(s.duration.as_secs()).unwrap_or(15);
    match api.get_opt(&s.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(s.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&post_params(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let valid_for =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(secs)));
            let expired = spec
                .renew_time
                .as_ref()
                .is_none_or(|t| t.0.checked_add(valid_for).is_ok_and(|end| end < now));
            let mine = holder == s.identity;
            if !(mine || holder.is_empty() || expired) {
                return Ok(false);
            }
            if !mine {
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.holder_identity = Some(s.identity.clone());
            spec.lease_duration_seconds = Some(secs);
            spec.renew_time = Some(MicroTime(now));
            match api.replace(&s.name, &post_params(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Renews until a renewal fails for longer than the lease duration; then returns (leadership
/// lost: the caller must stop reconciling).
pub async fn hold(api: &Api<Lease>, s: &LeaseSettings) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(s.renew).await;
        match try_acquire(api, s).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                if last_ok.elapsed() > s.duration {
                    return;
                }
            }
        }
    }
}

/// Gives the lease up so a standby takes over at once (on shutdown).
pub async fn release(api: &Api<Lease>, s: &LeaseSettings) -> Result<(), LeaderError> {
    if let Some(mut lease) = api.get_opt(&s.name).await? {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() == Some(s.identity.as_str()) {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            api.replace(&s.name, &post_params(), &lease).await?;
        }
    }
    Ok(())
}
