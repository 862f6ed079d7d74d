//! HTTP: routing, content negotiation, discovery, OpenAPI path documents, watches.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::registry::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{AuditEntry, Change, ChangeKind, FieldValidation, ListOpts, Req, State};
use crate::table;
use crate::util::{self, ApiError, ApiResult};

/// The kube-apiserver version the emulator reports.
pub const SERVER_MINOR: &str = "33";

/// Shared server state.
#[derive(Clone)]
pub struct App {
    /// The store.
    pub state: Arc<Mutex<State>>,
    /// Period of watch bookmarks.
    pub bookmark_interval: Duration,
}

/// A parsed request.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Query pairs.
    pub query: Vec<(String, String)>,
    /// Raw query.
    pub raw_query: String,
    /// Accept.
    pub accept: String,
    /// Content-Type.
    pub content_type: String,
    /// User-Agent.
    pub user_agent: String,
    /// Body.
    pub body: Bytes,
    /// A client over HTTP (subject to the opt-in authorization checks); in-process calls
    /// act as the cluster administrator.
    pub remote: bool,
}

impl Incoming {
    fn q(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, b)| b.as_str())
    }
}

/// A non-streaming answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub code: u16,
    /// JSON body.
    pub body: Value,
    /// Content-Type.
    pub content_type: String,
    /// Warning headers.
    pub warnings: Vec<String>,
}

impl Reply {
    fn json(code: u16, body: Value) -> Reply {
        Reply {
            code,
            body,
            content_type: "application/json".into(),
            warnings: Vec::new(),
        }
    }
    fn err(e: &ApiError) -> Reply {
        Reply::json(e.code, e.to_status())
    }
}

enum Route {
    Version,
    Health,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    OpenApiV3Root,
    OpenApiV3(String, String),
    Resource(ResourceRoute),
}

#[derive(Clone)]
struct ResourceRoute {
    res: Arc<ResourceDef>,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch_prefix: bool,
}

fn not_found_path() -> ApiError {
    ApiError::not_served("the server could not find the requested resource")
}

fn route(st: &State, path: &str) -> ApiResult<Route> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["healthz" | "livez" | "readyz", ..] => return Ok(Route::Health),
        ["api"] => return Ok(Route::Api),
        ["apis"] => return Ok(Route::Apis),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["api", v] => return Ok(Route::GroupVersion(String::new(), v.to_string())),
        ["apis", g, v] => return Ok(Route::GroupVersion(g.to_string(), v.to_string())),
        ["openapi", "v3"] => return Ok(Route::OpenApiV3Root),
        ["openapi", "v3", "api", v] => {
            return Ok(Route::OpenApiV3(String::new(), v.to_string()));
        }
        ["openapi", "v3", "apis", g, v] => {
            return Ok(Route::OpenApiV3(g.to_string(), v.to_string()));
        }
        ["openapi", "v2"] => {
            return Err(ApiError::not_served(
                "the emulator does not publish OpenAPI v2; it publishes OpenAPI v3 path documents (no schemas) at /openapi/v3",
            ));
        }
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest.to_vec()),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest.to_vec()),
        _ => return Err(not_found_path()),
    };
    let (watch_prefix, rest) = match rest.split_first() {
        Some((&"watch", r)) => (true, r.to_vec()),
        _ => (false, rest),
    };
    let find = |plural: &str| st.registry.find(&group, &version, plural);
    let (res, namespace, name, sub, extra) = if rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && find(rest[2]).is_some_and(|r| r.namespaced)
    {
        (
            find(rest[2]).expect("found"),
            Some(rest[1].to_string()),
            rest.get(3).map(|s| s.to_string()),
            rest.get(4).map(|s| s.to_string()),
            rest.len() > 5,
        )
    } else {
        let Some(plural) = rest.first() else {
            return Err(not_found_path());
        };
        let res = find(plural).ok_or_else(not_found_path)?;
        (
            res,
            None,
            rest.get(1).map(|s| s.to_string()),
            rest.get(2).map(|s| s.to_string()),
            rest.len() > 3,
        )
    };
    if extra {
        return Err(not_found_path());
    }
    if res.namespaced && namespace.is_none() && name.is_some() {
        return Err(not_found_path());
    }
    Ok(Route::Resource(ResourceRoute {
        res,
        version,
        namespace,
        name,
        sub,
        watch_prefix,
    }))
}

/// What the client accepts for object responses.
#[derive(Clone, Debug, PartialEq)]
enum Want {
    Json,
    Table,
    Partial,
}

fn negotiate(accept: &str) -> ApiResult<Want> {
    if accept.trim().is_empty() {
        return Ok(Want::Json);
    }
    for part in accept.split(',') {
        let mut it = part.split(';').map(str::trim);
        let media = it.next().unwrap_or("");
        let params: Vec<(&str, &str)> = it.filter_map(|p| p.split_once('=')).collect();
        let p = |k: &str| params.iter().find(|(a, _)| *a == k).map(|(_, b)| *b);
        match media {
            "application/json" | "*/*" | "application/*" => match p("as") {
                None => return Ok(Want::Json),
                Some("Table") if p("g") == Some("meta.k8s.io") && p("v") == Some("v1") => {
                    return Ok(Want::Table);
                }
                Some("PartialObjectMetadata" | "PartialObjectMetadataList")
                    if p("g") == Some("meta.k8s.io") && p("v") == Some("v1") =>
                {
                    return Ok(Want::Partial);
                }
                _ => continue,
            },
            _ => continue,
        }
    }
    Err(ApiError::not_acceptable(format!(
        "only the following media types are accepted: application/json (optionally as=Table or as=PartialObjectMetadata[List] of meta.k8s.io/v1); got {accept:?}"
    )))
}

fn aggregated_version(accept: &str) -> Option<&'static str> {
    for part in accept.split(',') {
        if part.contains("as=APIGroupDiscoveryList") && part.contains("g=apidiscovery.k8s.io") {
            if part.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if part.contains("v=v2") {
                return Some("v2");
            }
        }
    }
    None
}

fn version_doc() -> Value {
    json!({
        "major": "1", "minor": SERVER_MINOR, "gitVersion": format!("v1.{SERVER_MINOR}.0"),
        "gitCommit": "kube-emulator", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64",
        "emulationMajor": "1", "emulationMinor": SERVER_MINOR,
    })
}

fn openapi_root(st: &State) -> Value {
    let mut paths = serde_json::Map::new();
    for g in st.registry.groups() {
        for v in st.registry.group_versions(&g) {
            let p = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", st.rv)}),
            );
        }
    }
    json!({"paths": paths})
}

fn openapi_gv(st: &State, group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}, "uniqueItems": true},
        {"name": "force", "in": "query", "schema": {"type": "boolean"}, "uniqueItems": true},
    ]);
    let mut found = false;
    for r in st
        .registry
        .resources
        .iter()
        .filter(|r| r.group == group && r.version(version).is_some())
    {
        found = true;
        let base = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let coll = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let gvk = json!({"group": group, "version": version, "kind": r.kind});
        let op = |action: &str| json!({"operationId": format!("{action}{}", r.kind), "parameters": params, "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}}});
        paths.insert(
            coll.clone(),
            json!({"get": op("list"), "post": op("post"), "delete": op("deletecollection")}),
        );
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
    }
    found.then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes (kube-emulator: paths only, no schemas)", "version": format!("v1.{SERVER_MINOR}.0")},
            "paths": paths,
            "components": {"schemas": {}},
        })
    })
}

fn parse_int(v: Option<&str>, name: &str) -> ApiResult<Option<u64>> {
    match v {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{name}: Invalid value: {s:?}"))),
    }
}

fn manager_for(inc: &Incoming) -> String {
    match inc.q("fieldManager") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => inc
            .user_agent
            .split('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string(),
    }
}

fn make_req(inc: &Incoming, rr: &ResourceRoute) -> ApiResult<Req> {
    let validation = match inc.q("fieldValidation") {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Ignore") => FieldValidation::Ignore,
        Some("Strict") => FieldValidation::Strict,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {o:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            )));
        }
    };
    let dry_run = match inc.q("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {o:?}: supported values: \"All\""
            )));
        }
    };
    Ok(Req {
        remote: inc.remote,
        res: rr.res.clone(),
        version: rr.version.clone(),
        namespace: rr.namespace.clone(),
        manager: manager_for(inc),
        dry_run,
        validation,
        warnings: rr
            .res
            .version(&rr.version)
            .and_then(|v| v.warning.clone())
            .into_iter()
            .collect(),
    })
}

fn list_opts(inc: &Incoming, rr: &ResourceRoute) -> ApiResult<ListOpts> {
    Ok(ListOpts {
        labels: LabelSelector::parse(inc.q("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(
            inc.q("fieldSelector").unwrap_or(""),
            &rr.res.field_labels(&rr.version),
            &rr.res.kind,
        )?,
        limit: parse_int(inc.q("limit"), "limit")?.unwrap_or(0) as usize,
        continue_token: inc
            .q("continue")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        resource_version: inc.q("resourceVersion").map(str::to_string),
        rv_match: inc
            .q("resourceVersionMatch")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    })
}

fn parse_body(inc: &Incoming) -> ApiResult<Value> {
    let ct = inc.content_type.split(';').next().unwrap_or("").trim();
    match ct {
        "" | "application/json" | "*/*" => serde_json::from_slice(&inc.body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}"))),
        "application/yaml" => serde_yaml::from_slice(&inc.body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}"))),
        "application/vnd.kubernetes.protobuf" => Err(ApiError::unsupported_media(
            "the body of the request was in an unknown format (application/vnd.kubernetes.protobuf) - the emulator accepts application/json and application/yaml only. (kubectl's `create <generator>` commands send protobuf: use `kubectl create ... --dry-run=client -o yaml | kubectl apply -f -` instead.)",
        )),
        other => Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format ({other}) - the emulator accepts application/json and application/yaml"
        ))),
    }
}

fn shape_object(rr: &ResourceRoute, want: &Want, v: Value, include: &str) -> Value {
    match want {
        Want::Json => v,
        Want::Partial => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": v.get("metadata").cloned().unwrap_or_default()})
        }
        Want::Table => {
            let rv = v.pointer("/metadata/resourceVersion").cloned();
            table::table(
                &rr.res,
                &rr.version,
                &[v],
                json!({"resourceVersion": rv}),
                include,
            )
        }
    }
}

fn content_type_for(want: &Want) -> String {
    match want {
        Want::Json => "application/json".into(),
        Want::Table => "application/json;as=Table;v=v1;g=meta.k8s.io".into(),
        Want::Partial => "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io".into(),
    }
}

/// Serves one non-watch request against the state (also used in-process).
pub fn serve(st: &mut State, inc: &Incoming) -> Reply {
    match serve_inner(st, inc) {
        Ok(r) => r,
        Err(e) => Reply::err(&e),
    }
}

fn serve_inner(st: &mut State, inc: &Incoming) -> ApiResult<Reply> {
    let r = route(st, &inc.path)?;
    let get_only = |m: &Method| -> ApiResult<()> {
        if *m == Method::GET {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({m} {})",
                inc.path
            )))
        }
    };
    match r {
        Route::Version => {
            get_only(&inc.method)?;
            Ok(Reply::json(200, version_doc()))
        }
        Route::Health => {
            get_only(&inc.method)?;
            Ok(Reply {
                code: 200,
                body: json!("ok"),
                content_type: "text/plain".into(),
                warnings: Vec::new(),
            })
        }
        Route::Api => {
            get_only(&inc.method)?;
            if let Some(v) = aggregated_version(&inc.accept) {
                return Ok(Reply {
                    code: 200,
                    body: st.registry.aggregated(true, v),
                    content_type: format!(
                        "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
                    ),
                    warnings: Vec::new(),
                });
            }
            Ok(Reply::json(
                200,
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": st.server_address}]}),
            ))
        }
        Route::Apis => {
            get_only(&inc.method)?;
            if let Some(v) = aggregated_version(&inc.accept) {
                return Ok(Reply {
                    code: 200,
                    body: st.registry.aggregated(false, v),
                    content_type: format!(
                        "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
                    ),
                    warnings: Vec::new(),
                });
            }
            Ok(Reply::json(200, st.registry.api_group_list()))
        }
        Route::Group(g) => {
            get_only(&inc.method)?;
            st.registry
                .api_group(&g)
                .map(|v| Reply::json(200, v))
                .ok_or_else(not_found_path)
        }
        Route::GroupVersion(g, v) => {
            get_only(&inc.method)?;
            st.registry
                .resource_list(&g, &v)
                .map(|v| Reply::json(200, v))
                .ok_or_else(not_found_path)
        }
        Route::OpenApiV3Root => {
            get_only(&inc.method)?;
            Ok(Reply::json(200, openapi_root(st)))
        }
        Route::OpenApiV3(g, v) => {
            get_only(&inc.method)?;
            openapi_gv(st, &g, &v)
                .map(|d| Reply::json(200, d))
                .ok_or_else(not_found_path)
        }
        Route::Resource(rr) => serve_resource(st, inc, &rr),
    }
}

fn is_watch(inc: &Incoming, rr: &ResourceRoute) -> bool {
    rr.watch_prefix || matches!(inc.q("watch"), Some("true" | "1"))
}

fn serve_resource(st: &mut State, inc: &Incoming, rr: &ResourceRoute) -> ApiResult<Reply> {
    let mut req = make_req(inc, rr)?;
    let want = if inc.method == Method::GET {
        negotiate(&inc.accept)?
    } else {
        Want::Json
    };
    let include = inc.q("includeObject").unwrap_or("Metadata").to_string();
    let sub = rr.sub.as_deref();
    let vdef = rr.res.version(&rr.version).cloned().expect("version");
    match sub {
        None => {}
        Some("status") if vdef.status => {}
        Some("scale") if vdef.scale.is_some() => {}
        Some(other) => {
            return Err(ApiError::not_served(format!(
                "the server could not find the requested resource ({} has no subresource {other:?} in the emulator)",
                rr.res.plural
            )));
        }
    }
    if rr.watch_prefix && rr.name.is_some() {
        return Err(ApiError::not_served(
            "watching a single object through /watch/.../<name> is not served by the emulator; use ?watch=true&fieldSelector=metadata.name=<name>",
        ));
    }
    let force = matches!(inc.q("force"), Some("true" | "1"));
    let out = match (&inc.method, rr.name.as_deref(), sub) {
        (&Method::GET, None, None) => {
            if is_watch(inc, rr) {
                return Err(ApiError::bad_request(
                    "watch requests are streamed by the HTTP server",
                ));
            }
            let opts = list_opts(inc, rr)?;
            let list = st.list(&req, &opts)?;
            let body = match want {
                Want::Json => list,
                Want::Table => {
                    let items = list["items"].as_array().cloned().unwrap_or_default();
                    table::table(
                        &rr.res,
                        &rr.version,
                        &items,
                        list["metadata"].clone(),
                        &include,
                    )
                }
                Want::Partial => {
                    let items: Vec<Value> = list["items"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|i| json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": i["metadata"]}))
                        .collect();
                    json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list["metadata"], "items": items})
                }
            };
            (200, body)
        }
        (&Method::GET, Some(name), None | Some("status")) => {
            (200, shape_object(rr, &want, st.get(&req, name)?, &include))
        }
        (&Method::GET, Some(name), Some("scale")) => {
            let obj = st.get(&req, name)?;
            (200, State::scale_of(&req, &obj)?)
        }
        (&Method::POST, None, None) => {
            let body = parse_body(inc)?;
            (201, st.create(&mut req, body)?)
        }
        (&Method::PUT, Some(name), Some("scale")) => {
            let body = parse_body(inc)?;
            st.set_scale(&mut req, name, &body)?
        }
        (&Method::PUT, Some(name), s) => {
            let body = parse_body(inc)?;
            st.update(&mut req, name, s.unwrap_or(""), body)?
        }
        (&Method::PATCH, Some(name), Some("scale")) => {
            let obj = st.get(&req, name)?;
            let mut scale = State::scale_of(&req, &obj)?;
            let ct = inc.content_type.split(';').next().unwrap_or("").trim();
            let patch: Value = serde_json::from_slice(&inc.body)
                .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
            match ct {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    crate::patch::merge_patch(&mut scale, &patch)
                }
                "application/json-patch+json" => crate::patch::json_patch(&mut scale, &patch)?,
                other => {
                    return Err(ApiError::unsupported_media(format!(
                        "the emulator patches the scale subresource with merge or JSON patches only, not {other}"
                    )));
                }
            }
            st.set_scale(&mut req, name, &scale)?
        }
        (&Method::PATCH, Some(name), s) => st.patch(
            &mut req,
            name,
            s.unwrap_or(""),
            &inc.content_type,
            &inc.body,
            force,
        )?,
        (&Method::DELETE, Some(name), None) => {
            let mut opts: Value = if inc.body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&inc.body).map_err(|e| {
                    ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
                })?
            };
            if let Some(p) = inc.q("propagationPolicy") {
                opts["propagationPolicy"] = json!(p);
            }
            if let Some(o) = inc.q("orphanDependents") {
                opts["orphanDependents"] = json!(o == "true");
            }
            if let Some(d) = inc.q("dryRun").filter(|d| !d.is_empty()) {
                opts["dryRun"] = json!([d]);
            }
            if opts
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                req.dry_run = true;
            }
            st.delete(&mut req, name, &opts)?
        }
        (&Method::DELETE, None, None) => {
            let opts = list_opts(inc, rr)?;
            let list = st.list(&req, &opts)?;
            let mut deleted = Vec::new();
            for item in list["items"].as_array().cloned().unwrap_or_default() {
                let name = item["metadata"]["name"].as_str().unwrap_or("").to_string();
                let ns = item["metadata"]["namespace"].as_str().map(str::to_string);
                let mut r = req.clone();
                if rr.res.namespaced {
                    r.namespace = ns;
                }
                if let Ok((_, _)) = st.delete(&mut r, &name, &json!({"propagationPolicy": inc.q("propagationPolicy").unwrap_or("Background")})) {
                    deleted.push(item);
                }
            }
            (
                200,
                json!({"kind": format!("{}List", rr.res.kind), "apiVersion": rr.res.api_version(&rr.version), "metadata": {"resourceVersion": st.rv.to_string()}, "items": deleted}),
            )
        }
        (m, _, _) => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({m} {})",
                inc.path
            )));
        }
    };
    Ok(Reply {
        code: out.0,
        body: out.1,
        content_type: content_type_for(&want),
        warnings: req.warnings,
    })
}

fn audit(st: &mut State, inc: &Incoming, code: u16, rv_before: u64, method_prefix: &str) {
    st.audit.push(AuditEntry {
        time: util::now_micro(),
        method: format!("{method_prefix}{}", inc.method),
        path: inc.path.clone(),
        query: inc.raw_query.clone(),
        user_agent: inc.user_agent.clone(),
        code,
        rv_after: st.rv,
        wrote: st.rv != rv_before,
    });
}

/// Serves a request in-process (same code path as HTTP, no watch).
pub fn serve_in_process(app: &App, inc: &Incoming) -> Reply {
    let mut st = app.state.lock().expect("state lock");
    let before = st.rv;
    let r = serve(&mut st, inc);
    audit(&mut st, inc, r.code, before, "IN-PROCESS ");
    r
}

fn to_response(r: Reply) -> Response<Body> {
    let bytes = match &r.body {
        Value::String(s) if r.content_type == "text/plain" => s.clone().into_bytes(),
        b => serde_json::to_vec(b).unwrap_or_default(),
    };
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(r.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", r.content_type.as_str())
        .header("x-kube-emulator", "1");
    for w in &r.warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {:?}", w)) {
            resp = resp.header("warning", v);
        }
    }
    resp.body(Body::from(bytes)).expect("response")
}

/// The axum handler.
pub async fn handle(app: App, req: axum::extract::Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, 32 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            return to_response(Reply::err(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("request body: {e}"),
            )));
        }
    };
    let header = |h: &HeaderMap, k: &str| {
        h.get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let inc = Incoming {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: form_urlencoded::parse(raw_query.as_bytes())
            .map(|(a, b)| (a.into_owned(), b.into_owned()))
            .collect(),
        raw_query,
        accept: header(&parts.headers, "accept"),
        content_type: header(&parts.headers, "content-type"),
        user_agent: header(&parts.headers, "user-agent"),
        body,
        remote: true,
    };
    // Watches stream; everything else is answered under the lock at once.
    let watch = {
        let st = app.state.lock().expect("state lock");
        match route(&st, &inc.path) {
            Ok(Route::Resource(rr))
                if inc.method == Method::GET
                    && rr.name.is_none()
                    && rr.sub.is_none()
                    && is_watch(&inc, &rr) =>
            {
                Some(rr)
            }
            _ => None,
        }
    };
    match watch {
        Some(rr) => watch_response(app, inc, rr).await,
        None => {
            let reply = {
                let mut st = app.state.lock().expect("state lock");
                let before = st.rv;
                let r = serve(&mut st, &inc);
                audit(&mut st, &inc, r.code, before, "");
                r
            };
            to_response(reply)
        }
    }
}

// ---------------------------------------------------------------- watch

struct WatchFilter {
    rr: ResourceRoute,
    opts: ListOpts,
    want: Want,
    include: String,
}

impl WatchFilter {
    fn matches(&self, v: &Value) -> bool {
        self.opts.labels.matches(v) && self.opts.fields.matches(v)
    }

    fn event(&self, c: &Change) -> Option<Value> {
        if c.storage != self.rr.res.storage {
            return None;
        }
        if self.rr.res.namespaced
            && let Some(ns) = &self.rr.namespace
            && &c.key.0 != ns
        {
            return None;
        }
        let view = |o: &Value| State::view(&self.rr.res, &self.rr.version, o);
        let new = view(&c.obj);
        let old_match = c.prev.as_ref().is_some_and(|p| self.matches(&view(p)));
        let new_match = self.matches(&new);
        let ty = match (c.kind, old_match, new_match) {
            (ChangeKind::Added, _, true) => "ADDED",
            (ChangeKind::Modified, true, true) => "MODIFIED",
            (ChangeKind::Modified, false, true) => "ADDED",
            (ChangeKind::Modified, true, false) => "DELETED",
            (ChangeKind::Deleted, _, true) | (ChangeKind::Deleted, true, _) => "DELETED",
            _ => return None,
        };
        Some(self.wrap(ty, new))
    }

    fn wrap(&self, ty: &str, obj: Value) -> Value {
        json!({"type": ty, "object": shape_object(&self.rr, &self.want, obj, &self.include)})
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"kind": self.rr.res.kind, "apiVersion": self.rr.res.api_version(&self.rr.version), "metadata": meta}})
    }
}

fn error_event(e: &ApiError) -> Value {
    json!({"type": "ERROR", "object": e.to_status()})
}

async fn watch_response(app: App, inc: Incoming, rr: ResourceRoute) -> Response<Body> {
    let setup = (|| -> ApiResult<_> {
        let want = negotiate(&inc.accept)?;
        let opts = list_opts(&inc, &rr)?;
        let bookmarks = matches!(inc.q("allowWatchBookmarks"), Some("true" | "1"));
        let send_initial = match inc.q("sendInitialEvents") {
            Some("true" | "1") => {
                if !bookmarks || opts.rv_match.as_deref() != Some("NotOlderThan") {
                    return Err(ApiError::invalid(
                        "ListOptions",
                        "meta.k8s.io",
                        "",
                        vec![util::Cause::new(
                            "FieldValueForbidden",
                            "sendInitialEvents",
                            "sendInitialEvents: Forbidden: sendInitialEvents requires setting allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
                        )],
                    ));
                }
                Some(true)
            }
            Some("false" | "0") => Some(false),
            _ => None,
        };
        if opts.rv_match.is_some() && send_initial.is_none() {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        if opts.limit > 0 || opts.continue_token.is_some() {
            // The API server ignores limit on watches; continue makes no sense there.
            if opts.continue_token.is_some() {
                return Err(ApiError::bad_request(
                    "continue is not supported on watch requests",
                ));
            }
        }
        let timeout = parse_int(inc.q("timeoutSeconds"), "timeoutSeconds")?
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        Ok((want, opts, bookmarks, send_initial, timeout))
    })();
    let (want, opts, bookmarks, send_initial, timeout) = match setup {
        Ok(x) => x,
        Err(e) => {
            let mut st = app.state.lock().expect("state lock");
            let before = st.rv;
            audit(&mut st, &inc, e.code, before, "");
            return to_response(Reply::err(&e));
        }
    };
    let filter = WatchFilter {
        rr: rr.clone(),
        opts,
        want: want.clone(),
        include: inc.q("includeObject").unwrap_or("Metadata").to_string(),
    };
    let (tx, rx_lines) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let (initial, mut changes, start_rv, fatal) = {
        let mut st = app.state.lock().expect("state lock");
        let before = st.rv;
        audit(&mut st, &inc, 200, before, "");
        let rv_param = inc.q("resourceVersion").filter(|s| !s.is_empty());
        let mut initial = Vec::new();
        let mut fatal = None;
        let from_state = rv_param.is_none_or(|r| r == "0") || send_initial == Some(true);
        if from_state {
            let mut req = st.internal_req(rr.res.clone(), rr.namespace.clone());
            req.version = rr.version.clone();
            let all = ListOpts {
                labels: filter.opts.labels.clone(),
                fields: filter.opts.fields.clone(),
                ..ListOpts::default()
            };
            match st.list(&req, &all) {
                Ok(list) => {
                    for item in list["items"].as_array().cloned().unwrap_or_default() {
                        initial.push(filter.wrap("ADDED", item));
                    }
                }
                Err(e) => fatal = Some(e),
            }
            if send_initial == Some(true) {
                initial.push(filter.bookmark(st.rv, true));
            }
        } else if let Some(r) = rv_param {
            match r.parse::<u64>() {
                Err(_) => {
                    fatal = Some(ApiError::bad_request(format!(
                        "resourceVersion: Invalid value: {r:?}"
                    )))
                }
                Ok(n) if n < st.compacted => {
                    fatal = Some(ApiError::gone(format!(
                        "too old resource version: {n} ({})",
                        st.compacted + 1
                    )))
                }
                Ok(n) if n > st.rv => {
                    fatal = Some(ApiError::new(
                        504,
                        "Timeout",
                        format!("Too large resource version: {n}, current: {}", st.rv),
                    ))
                }
                Ok(n) => {
                    // The history is in resourceVersion order.
                    let from = st.history.partition_point(|c| c.rv <= n);
                    for c in st.history.range(from..) {
                        if let Some(ev) = filter.event(c) {
                            initial.push(ev);
                        }
                    }
                }
            }
        }
        (initial, st.tx.subscribe(), st.rv, fatal)
    };
    let interval = app.bookmark_interval;
    tokio::spawn(async move {
        let line = |v: &Value| {
            let mut b = serde_json::to_vec(v).unwrap_or_default();
            b.push(b'\n');
            Ok::<Bytes, std::io::Error>(Bytes::from(b))
        };
        if let Some(e) = fatal {
            let _ = tx.send(line(&error_event(&e))).await;
            return;
        }
        for ev in &initial {
            if tx.send(line(ev)).await.is_err() {
                return;
            }
        }
        let mut last_rv = start_rv;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(line(&filter.bookmark(last_rv, false))).await.is_err() {
                        return;
                    }
                }
                c = changes.recv() => match c {
                    Ok(c) => {
                        if c.rv <= last_rv {
                            continue;
                        }
                        last_rv = c.rv;
                        if let Some(ev) = filter.event(&c)
                            && tx.send(line(&ev)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let e = ApiError::gone(format!("the watch fell {n} events behind; restart it from a fresh list"));
                        let _ = tx.send(line(&error_event(&e))).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx_lines);
    Response::builder()
        .status(200)
        .header("content-type", content_type_for(&want))
        .header("x-kube-emulator", "1")
        .body(Body::from_stream(stream))
        .expect("response")
}
