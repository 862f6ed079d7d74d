//! Whether a new connection may start a session: allowed origin, not draining, a free
//! connection slot. Asked once per connection by every transport (WebSocket, SockJS, TCP);
//! each refusal is counted in `rejected_connections` under its reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::telemetry::{GatewayMetrics, ReasonLabels};

/// Why a connection was refused before its session started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The browser's `Origin` is not in `--allowed-origins`.
    Origin,
    /// The gateway is shutting down.
    Draining,
    /// `--max-connections` sessions are open.
    Full,
}

impl Refusal {
    /// The `reason` label of `rejected_connections`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Draining => "draining",
            Refusal::Full => "max_connections",
        }
    }

    /// One line for the client (HTTP body, close reason or ERROR body).
    pub(crate) fn text(self) -> &'static str {
        match self {
            Refusal::Origin => "origin not allowed",
            Refusal::Draining => "gateway is shutting down",
            Refusal::Full => "too many connections to this gateway",
        }
    }
}

/// The admission policy shared by every listener.
pub struct Admission {
    allowed_origins: Vec<String>,
    draining: AtomicBool,
    open: AtomicUsize,
    max: usize,
    metrics: GatewayMetrics,
}

/// A connection slot; released when dropped (at the end of the connection's task).
pub struct Slot(Arc<Admission>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Admission {
    pub(crate) fn new(
        allowed_origins: Vec<String>,
        max: usize,
        metrics: GatewayMetrics,
    ) -> Arc<Self> {
        Arc::new(Admission {
            allowed_origins,
            draining: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            max,
            metrics,
        })
    }

    /// Admits a connection whose request carried `origin` (`None`: no `Origin` header, or a
    /// transport without one), or says why not and counts the refusal.
    pub(crate) fn admit(self: &Arc<Self>, origin: Option<&str>) -> Result<Slot, Refusal> {
        let result = self.check(origin);
        if let Err(refusal) = result {
            self.metrics
                .rejected_connections
                .get_or_create(&ReasonLabels {
                    reason: refusal.label().to_string(),
                })
                .inc();
        }
        result
    }

    fn check(self: &Arc<Self>, origin: Option<&str>) -> Result<Slot, Refusal> {
        if !origin_allowed(&self.allowed_origins, origin) {
            return Err(Refusal::Origin);
        }
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let previous = self.open.fetch_add(1, Ordering::AcqRel);
        if previous >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        Ok(Slot(self.clone()))
    }

    /// From now on every connection is refused with [`Refusal::Draining`].
    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Connections holding a slot.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Browsers always send Origin; non-browser clients may not, and are not subject to
/// cross-site WebSocket hijacking, so a missing Origin is allowed.
fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    if allowed.is_empty() || allowed.iter().any(|a| a == "*") {
        return true;
    }
    match origin {
        None => true,
        Some(origin) => allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(metrics: &GatewayMetrics, reason: &str) -> u64 {
        metrics
            .rejected_connections
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .get()
    }

    #[test]
    fn slots_are_counted_and_released() {
        let metrics = GatewayMetrics::default();
        let admission = Admission::new(Vec::new(), 2, metrics.clone());
        let a = admission.admit(None).expect("first");
        let b = admission.admit(None).expect("second");
        assert_eq!(admission.open(), 2);
        assert_eq!(admission.admit(None).unwrap_err(), Refusal::Full);
        assert_eq!(rejected(&metrics, "max_connections"), 1);
        drop(a);
        assert_eq!(admission.open(), 1);
        let _c = admission.admit(None).expect("a slot came free");
        drop(b);
        assert_eq!(admission.open(), 1);
    }

    #[test]
    fn draining_refuses_everyone() {
        let metrics = GatewayMetrics::default();
        let admission = Admission::new(Vec::new(), 10, metrics.clone());
        admission.begin_drain();
        assert!(admission.is_draining());
        assert_eq!(admission.admit(None).unwrap_err(), Refusal::Draining);
        assert_eq!(rejected(&metrics, "draining"), 1);
        assert_eq!(admission.open(), 0);
    }

    #[test]
    fn origins_are_checked_before_anything_else() {
        let metrics = GatewayMetrics::default();
        let allowed = vec!["https://good.example/".to_string()];
        let admission = Admission::new(allowed, 0, metrics.clone());
        assert_eq!(
            admission.admit(Some("https://evil.example")).unwrap_err(),
            Refusal::Origin
        );
        assert_eq!(rejected(&metrics, "origin"), 1);
        // Allowed origins (case-insensitive, trailing slash ignored) and no Origin at all
        // get as far as the (zero) connection limit.
        for origin in [Some("HTTPS://GOOD.EXAMPLE"), None] {
            assert_eq!(admission.admit(origin).unwrap_err(), Refusal::Full);
        }
    }

    #[test]
    fn a_wildcard_or_an_empty_list_allows_every_origin() {
        assert!(origin_allowed(&[], Some("https://any.example")));
        assert!(origin_allowed(
            &["*".to_string()],
            Some("https://any.example")
        ));
        assert!(!origin_allowed(
            &["https://a.example".to_string()],
            Some("https://b.example")
        ));
    }
}
