//! A tiny in-memory Kubernetes API behind kube's mock service (`tower-test`), in the spirit of
//! controller-rs's `ApiServerVerifier`: every request is recorded so a test can assert the
//! exact call sequence (and that a steady-state reconcile makes no write), and objects are kept
//! so several reconciles can run against the same state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Call {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Content type (tells SSA from merge patch).
    pub content_type: String,
    /// Parsed JSON body, if any.
    pub body: Option<Value>,
}

impl Call {
    /// `METHOD path` for compact assertions.
    pub fn short(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
    /// Whether this call changes state.
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    rv: u64,
    // Paths whose next request fails with this status code (one shot).
    fail_next: BTreeMap<String, u16>,
}

/// The fake API server handle.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl FakeApi {
    /// A client wired to a new fake API server.
    pub fn start() -> (Client, FakeApi) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let resp = server.handle(req).await;
                send.send_response(resp);
            }
        });
        (Client::new(svc, "default"), api)
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let (code, out) = {
            let mut st = self.state.lock().expect("lock");
            st.calls.push(Call {
                method: method.clone(),
                path: path.clone(),
                content_type: content_type.clone(),
                body: body.clone(),
            });
            if let Some(code) = st.fail_next.remove(&format!("{method} {path}")) {
                (
                    code,
                    status(
                        code,
                        if code == 409 {
                            "Conflict"
                        } else {
                            "InternalError"
                        },
                        "injected failure",
                    ),
                )
            } else {
                Self::serve(&mut st, &method, &path, body)
            }
        };
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&out).unwrap_or_default()))
            .expect("response")
    }

    fn bump(st: &mut State, obj: &mut Value) {
        st.rv += 1;
        let rv = st.rv.to_string();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), rv.into());
            m.entry("uid")
                .or_insert_with(|| uuid::Uuid::new_v4().to_string().into());
            m.entry("generation").or_insert(1.into());
            m.entry("creationTimestamp")
                .or_insert("2026-01-01T00:00:00Z".into());
        }
    }

    fn serve(st: &mut State, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (key, sub) = match path.strip_suffix("/status") {
            Some(k) => (k.to_string(), true),
            None => (path.to_string(), false),
        };
        // Events are created with POST on the collection.
        if method == "POST" {
            let mut obj = body.unwrap_or_default();
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("x")
                .to_string();
            Self::bump(st, &mut obj);
            st.objects.insert(format!("{path}/{name}"), obj.clone());
            return (201, obj);
        }
        match method {
            "GET" => match st.objects.get(&key) {
                Some(o) => (200, o.clone()),
                None => {
                    // A collection list (used when the operator checks the CRD).
                    let items: Vec<Value> = st
                        .objects
                        .iter()
                        .filter(|(k, _)| k.rsplit_once('/').is_some_and(|(p, _)| p == key))
                        .map(|(_, v)| v.clone())
                        .collect();
                    if path.ends_with('s') && !items.is_empty() {
                        (
                            200,
                            json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                        )
                    } else {
                        (404, status(404, "NotFound", &format!("{key} not found")))
                    }
                }
            },
            "DELETE" => match st.objects.remove(&key) {
                Some(_) => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
                ),
                None => (404, status(404, "NotFound", "not found")),
            },
            "PATCH" | "PUT" => {
                let patch = body.unwrap_or_default();
                match st.objects.get(&key).cloned() {
                    None if sub => (404, status(404, "NotFound", "not found")),
                    None => {
                        let mut obj = patch;
                        Self::bump(st, &mut obj);
                        st.objects.insert(key, obj.clone());
                        (201, obj)
                    }
                    Some(mut obj) => {
                        if let Some(want) = patch
                            .pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                        {
                            let have = obj
                                .pointer("/metadata/resourceVersion")
                                .and_then(Value::as_str);
                            if have != Some(want) {
                                return (
                                    409,
                                    status(409, "Conflict", "the object has been modified"),
                                );
                            }
                        }
                        if method == "PUT" && !sub {
                            // Replace: the body is the whole object (status is kept).
                            let status = obj.get("status").cloned();
                            obj = patch;
                            if let Some(s) = status {
                                obj["status"] = s;
                            }
                        } else if sub {
                            if let Some(s) = patch.get("status") {
                                obj["status"] = s.clone();
                            }
                        } else {
                            let old_spec = obj.get("spec").cloned();
                            let status = obj.get("status").cloned();
                            merge(&mut obj, &patch);
                            if let Some(s) = status {
                                obj["status"] = s;
                            }
                            if obj.get("spec").cloned() != old_spec {
                                let g = obj
                                    .pointer("/metadata/generation")
                                    .and_then(Value::as_i64)
                                    .unwrap_or(1);
                                obj["metadata"]["generation"] = (g + 1).into();
                            }
                        }
                        // Finalizers removed from a deleting object: it is gone.
                        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
                        let no_finalizers = obj
                            .pointer("/metadata/finalizers")
                            .and_then(Value::as_array)
                            .is_none_or(|f| f.is_empty());
                        Self::bump(st, &mut obj);
                        if deleting && no_finalizers {
                            st.objects.remove(&key);
                        } else {
                            st.objects.insert(key, obj.clone());
                        }
                        (200, obj)
                    }
                }
            }
            _ => (405, status(405, "MethodNotAllowed", method)),
        }
    }

    /// Stores an object at its API path.
    pub fn put(&self, path: &str, mut obj: Value) {
        let mut st = self.state.lock().expect("lock");
        Self::bump(&mut st, &mut obj);
        st.objects.insert(path.to_string(), obj);
    }

    /// The object at a path.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().expect("lock").objects.get(path).cloned()
    }

    /// Paths of stored objects under a prefix.
    pub fn paths(&self, prefix: &str) -> Vec<String> {
        self.state
            .lock()
            .expect("lock")
            .objects
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Removes an object (as if deleted by someone else).
    pub fn remove(&self, path: &str) {
        self.state.lock().expect("lock").objects.remove(path);
    }

    /// Changes an object in place (e.g. the Deployment controller updating status).
    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state.lock().expect("lock");
        let mut obj = st.objects.get(path).cloned().unwrap_or_default();
        f(&mut obj);
        Self::bump(&mut st, &mut obj);
        st.objects.insert(path.to_string(), obj);
    }

    /// Makes the next `method` request to `path` fail with `code` (e.g. a 409 conflict).
    pub fn fail_next(&self, method: &str, path: &str, code: u16) {
        self.state
            .lock()
            .expect("lock")
            .fail_next
            .insert(format!("{method} {path}"), code);
    }

    /// Takes the recorded calls.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().expect("lock").calls)
    }
}
