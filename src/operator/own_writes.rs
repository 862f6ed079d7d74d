//! The operator's own writes to its children, so that the watch events they cause trigger no
//! reconcile: the next attempt after a failure must wait for the backoff, not for the echo of
//! what the failed attempt wrote.
//!
//! A watch event and the response to the write that caused it race (the API server sends both
//! at about the same time), so an event for an object with a write in flight waits until that
//! write has answered before it is judged by its resourceVersion.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::Resource;

/// (kind, namespace, name).
type Key = (&'static str, String, String);

/// How long an event waits for an in-flight write to answer before it is let through.
const SETTLE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    in_flight: HashMap<Key, usize>,
    written: HashMap<Key, String>,
}

/// The resourceVersions of the operator's latest writes, per object.
#[derive(Default)]
pub struct OwnWrites {
    state: Mutex<State>,
    settled: tokio::sync::Notify,
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> Option<Key> {
    // Every kind the operator writes has a static name.
    let std::borrow::Cow::Borrowed(kind) = K::kind(&()) else {
        return None;
    };
    let m = obj.meta();
    Some((
        kind,
        m.namespace.clone().unwrap_or_default(),
        m.name.clone()?,
    ))
}

/// A write in flight; dropping it (answered or failed) lets waiting events be judged.
pub struct Writing<'a> {
    own: &'a OwnWrites,
    key: Option<Key>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if let (Some(k), Ok(mut st)) = (self.key.take(), self.own.state.lock())
            && let Some(n) = st.in_flight.get_mut(&k)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.in_flight.remove(&k);
            }
        }
        self.own.settled.notify_waiters();
    }
}

impl OwnWrites {
    /// Marks a write of `obj` as in flight until the returned guard drops.
    pub fn begin<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Writing<'_> {
        let key = key(obj);
        if let (Some(k), Ok(mut st)) = (&key, self.state.lock()) {
            *st.in_flight.entry(k.clone()).or_insert(0) += 1;
        }
        Writing { own: self, key }
    }

    /// Remembers what a write returned (before its [`Writing`] guard drops).
    pub fn record<K: Resource<DynamicType = ()>>(&self, written: &K) {
        let rv = written.meta().resource_version.clone();
        if let (Some(k), Some(rv), Ok(mut st)) = (key(written), rv, self.state.lock()) {
            st.written.insert(k, rv);
        }
    }

    /// Whether this watched version of an object is the operator's own write (forgotten once
    /// seen). Waits while a write of the object is in flight.
    pub async fn caused<K: Resource<DynamicType = ()>>(&self, seen: &K) -> bool {
        let (Some(k), Some(rv)) = (key(seen), seen.meta().resource_version.clone()) else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so a write finishing in between is not missed.
            settled.as_mut().enable();
            {
                let Ok(mut st) = self.state.lock() else {
                    return false;
                };
                if !st.in_flight.contains_key(&k) {
                    if st.written.get(&k) == Some(&rv) {
                        st.written.remove(&k);
                        return true;
                    }
                    return false;
                }
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::sync::Arc;

    fn cm(rv: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c", "namespace": "n", "resourceVersion": rv}
        }))
        .expect("configmap")
    }

    #[tokio::test]
    async fn an_event_racing_the_write_waits_for_its_answer() {
        let own = Arc::new(OwnWrites::default());
        // Someone else's change, no write of ours: let through.
        assert!(!own.caused(&cm("5")).await);
        let writing = own.begin(&cm(""));
        // The echo arrives before the write's answer.
        let judge = tokio::spawn({
            let own = own.clone();
            async move { own.caused(&cm("6")).await }
        });
        tokio::task::yield_now().await;
        assert!(!judge.is_finished(), "waits while the write is in flight");
        own.record(&cm("6"));
        drop(writing);
        assert!(judge.await.expect("judged"), "our own write");
        // Seen once: a later event of the same version (a relist) passes.
        assert!(!own.caused(&cm("6")).await);
        // A failed write records nothing.
        drop(own.begin(&cm("")));
        assert!(!own.caused(&cm("7")).await);
    }
}
