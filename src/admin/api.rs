//! The admin API's HTTP side: routes, bearer-token check, request parsing and responses. Every
//! error is a google.rpc.Status JSON body, as on the data plane.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::routing::{get, post, put};
use axum::Router;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use serde::Serialize;

use super::diff;
use super::error::AdminError;
use super::live::{self, LiveError, Outcome};
use super::state_dir::format_time;
use super::Admin;
use crate::config::BackendName;
use crate::descriptors::compile_sources;
use crate::uploads::{SetBinding, SetName, UploadedSet};

/// After a body passes the bound, up to this much more is read and dropped, so the client gets
/// the 413 instead of a connection reset.
const DRAIN_LIMIT: usize = 64 << 20;

/// The admin router; every route, and the 404 for unknown paths, requires the token.
pub(super) fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/admin/v1/descriptors", get(list))
        .route(
            "/admin/v1/descriptors/{name}",
            put(upload).get(download).delete(remove),
        )
        .route("/admin/v1/routes", get(routes))
        .route("/admin/v1/reflect", post(reflect))
        .route("/admin/v1/reload", post(reload))
        .route("/metrics", get(metrics))
        .fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost last: every request is logged, refused ones included.
        .layer(middleware::from_fn_with_state(admin.clone(), authenticate))
        .layer(middleware::from_fn(access_log))
        .with_state(admin)
}

/// One line per admin request, as the data plane logs its own (never the token).
async fn access_log(request: Request, next: Next) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::info!(
        target: "protogate::admin::access",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
    );
    response
}

type Reply = Result<Response<Body>, AdminError>;

async fn authenticate(
    State(admin): State<Arc<Admin>>,
    request: Request,
    next: Next,
) -> Response<Body> {
    if let Some(token) = &admin.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        match presented {
            None => return AdminError::unauthorized(false).into_response(),
            Some(given) if !same_secret(given.as_bytes(), token.expose().as_bytes()) => {
                return AdminError::unauthorized(true).into_response()
            }
            Some(_) => {}
        }
    }
    next.run(request).await
}

/// The credentials of an `Authorization: Bearer X` header (the scheme is case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Compares secrets in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn unknown_path(uri: Uri) -> Response<Body> {
    AdminError::not_found(format!("no admin endpoint at {}", uri.path())).into_response()
}

async fn method_not_allowed() -> Response<Body> {
    AdminError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        tonic::Code::Unimplemented,
        "method not allowed on this admin endpoint",
    )
    .into_response()
}

fn finish(reply: Reply) -> Response<Body> {
    reply.unwrap_or_else(AdminError::into_response)
}

/// A set as listed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SetInfo {
    name: String,
    sha256: String,
    size: usize,
    services: Vec<String>,
    files: Vec<String>,
    uploaded_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
}

impl SetInfo {
    fn of(set: &UploadedSet) -> SetInfo {
        let (backend, upstream) = match &set.binding {
            Some(SetBinding::Backend(name)) => (Some(name.to_string()), None),
            Some(SetBinding::Upstream(uri)) => (None, Some(uri.to_string())),
            None => (None, None),
        };
        SetInfo {
            name: set.name.to_string(),
            sha256: set.sha256.clone(),
            size: set.bytes.len(),
            services: set.services.clone(),
            files: set.files.clone(),
            uploaded_at: format_time(set.uploaded_at),
            backend,
            upstream,
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec(value)
        .map_err(|e| AdminError::internal(format!("rendering the answer: {e}")))?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

async fn list(State(admin): State<Arc<Admin>>) -> Response<Body> {
    let uploads = admin.live.uploads();
    let sets: Vec<SetInfo> = uploads.iter().map(|set| SetInfo::of(set)).collect();
    #[derive(Serialize)]
    struct Listing {
        sets: Vec<SetInfo>,
    }
    finish(json(StatusCode::OK, &Listing { sets }))
}

async fn download(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Response<Body> {
    finish((|| {
        let name = set_name(&name)?;
        let uploads = admin.live.uploads();
        let set = uploads.get(&name).ok_or_else(|| {
            AdminError::not_found(format!("no descriptor set is called {:?}", name.as_str()))
        })?;
        let mut response = Response::new(Body::from(set.bytes.clone()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", set.sha256)) {
            headers.insert(header::ETAG, etag);
        }
        Ok(response)
    })())
}

async fn routes(State(admin): State<Arc<Admin>>) -> Response<Body> {
    let snapshot = admin.live.store().load();
    #[derive(Serialize)]
    struct Routes {
        routes: Vec<diff::RouteInfo>,
        warnings: Vec<String>,
    }
    finish(json(
        StatusCode::OK,
        &Routes {
            routes: diff::routes(&snapshot),
            warnings: snapshot.warnings.clone(),
        },
    ))
}

/// The data plane's metrics for a Prometheus scrape.
async fn metrics(State(admin): State<Arc<Admin>>) -> Response<Body> {
    finish((|| {
        let text = admin
            .live
            .store()
            .metrics()
            .encode()
            .map_err(|e| AdminError::internal(format!("encoding the metrics: {e}")))?;
        let mut response = Response::new(Body::from(text));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::telemetry::metrics::CONTENT_TYPE),
        );
        Ok(response)
    })())
}

/// The answer to a change of one set.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SetChanged {
    set: SetInfo,
    replaced: bool,
    #[serde(flatten)]
    outcome: Outcome,
}

async fn upload(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    finish(upload_set(&admin, &name, &uri, &headers, body).await)
}

async fn upload_set(
    admin: &Admin,
    name: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Reply {
    let name = set_name(name)?;
    let query = Query::parse(uri.query())?;
    query.only(&["backend", "upstream", "file"])?;
    let binding = match (query.get("backend"), query.get("upstream")) {
        (Some(_), Some(_)) => {
            return Err(AdminError::bad_request(
                "give backend= or upstream=, not both",
            ))
        }
        (Some(backend), None) => Some(SetBinding::Backend(BackendName::new(backend))),
        (None, Some(url)) => Some(SetBinding::Upstream(upstream_url(url)?)),
        (None, None) => None,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match media.as_str() {
        "application/x-protobuf"
        | "application/octet-stream"
        | "application/vnd.google.protobuf" => Format::Binary,
        "text/plain" | "text/x-protobuf" => Format::Text,
        "multipart/form-data" => {
            Format::Multipart(multer::parse_boundary(content_type).map_err(|e| {
                AdminError::bad_request(format!("multipart/form-data without a boundary: {e}"))
            })?)
        }
        _ => return Err(AdminError::unsupported_media(content_type)),
    };
    let body = read_bounded(body, headers, admin.max_upload_bytes).await?;
    let bytes = match format {
        Format::Binary => body,
        Format::Text => {
            let file = match query.get("file") {
                Some(file) => proto_file_name(file)?,
                None => format!("{name}.proto"),
            };
            let text = String::from_utf8(body.to_vec())
                .map_err(|_| AdminError::bad_request(format!("{file}: the text is not UTF-8")))?;
            compile(admin, &name, vec![(file, text)]).await?
        }
        Format::Multipart(boundary) => {
            let sources = multipart_sources(body, boundary).await?;
            compile(admin, &name, sources).await?
        }
    };
    let set = live::uploaded(name, bytes, binding).map_err(AdminError::from)?;
    let (outcome, replaced) = admin.live.put(set.clone()).await?;
    set_changed(&set, replaced, outcome)
}

enum Format {
    Binary,
    Text,
    Multipart(String),
}

/// Compiles uploaded .proto sources against the files already loaded, leaving out those of the
/// set being replaced so its new version is compiled on its own terms.
async fn compile(
    admin: &Admin,
    name: &SetName,
    sources: Vec<(String, String)>,
) -> Result<Bytes, AdminError> {
    let snapshot = admin.live.store().load();
    let replaced: Vec<String> = snapshot
        .uploads
        .get(name)
        .map(|set| set.files.clone())
        .unwrap_or_default();
    let known = prost_types::FileDescriptorSet {
        file: snapshot
            .registry
            .pool()
            .file_descriptor_protos()
            .filter(|file| !replaced.iter().any(|r| r == file.name()))
            .cloned()
            .collect(),
    };
    drop(snapshot);
    let compiled = tokio::task::spawn_blocking(move || compile_sources(&sources, known))
        .await
        .map_err(|e| AdminError::internal(format!("compiling stopped: {e}")))?;
    compiled
        .map(Bytes::from)
        .map_err(|e| AdminError::bad_request(e.to_string()))
}

/// The .proto files of a multipart form: each part's file name (else its field name) is the
/// file's name for imports, its content the source.
async fn multipart_sources(
    body: Bytes,
    boundary: String,
) -> Result<Vec<(String, String)>, AdminError> {
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut sources: Vec<(String, String)> = Vec::new();
    let bad = |e: multer::Error| AdminError::bad_request(format!("multipart form: {e}"));
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field
            .file_name()
            .or_else(|| field.name())
            .map(str::to_owned)
            .ok_or_else(|| AdminError::bad_request("a multipart part has no file name"))?;
        let name = proto_file_name(&name)?;
        let text = field.text().await.map_err(bad)?;
        if sources.iter().any(|(n, _)| *n == name) {
            return Err(AdminError::bad_request(format!(
                "{name} appears twice in the form"
            )));
        }
        sources.push((name, text));
    }
    if sources.is_empty() {
        return Err(AdminError::bad_request("the multipart form holds no file"));
    }
    Ok(sources)
}

/// A .proto file name as imports use it: relative, `/`-separated, no `.` or `..` parts.
fn proto_file_name(name: &str) -> Result<String, AdminError> {
    let fine = name.ends_with(".proto")
        && !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if fine {
        Ok(name.to_owned())
    } else {
        Err(AdminError::bad_request(format!(
            "{name:?} is not a relative .proto file name like pkg/v1/api.proto"
        )))
    }
}

fn upstream_url(text: &str) -> Result<http::Uri, AdminError> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| AdminError::bad_request(format!("upstream {text:?} is not a URL")))?;
    match uri.scheme_str() {
        Some("http") if uri.authority().is_some() => Ok(uri),
        _ => Err(AdminError::bad_request(format!(
            "upstream {text:?}: only http:// addresses with a host are supported"
        ))),
    }
}

fn set_name(name: &str) -> Result<SetName, AdminError> {
    SetName::parse(name).map_err(|e| AdminError::bad_request(e.to_string()))
}

/// Reads a body of at most `limit` bytes. A larger one is answered 413 after reading (and
/// dropping) a bounded amount more, so the client is not reset while still sending.
async fn read_bounded(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, AdminError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    let mut read = BytesMut::new();
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let mut dropped = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| AdminError::bad_request(format!("could not read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if over || read.len() + data.len() > limit {
            over = true;
            dropped += data.len();
            if dropped > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        read.extend_from_slice(&data);
    }
    if over {
        return Err(AdminError::too_large(limit));
    }
    Ok(read.freeze())
}

async fn remove(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Response<Body> {
    let reply = async {
        let name = set_name(&name)?;
        let outcome = admin.live.delete(&name).await?;
        #[derive(Serialize)]
        struct Deleted {
            deleted: String,
            #[serde(flatten)]
            outcome: Outcome,
        }
        json(
            StatusCode::OK,
            &Deleted {
                deleted: name.to_string(),
                outcome,
            },
        )
    };
    finish(reply.await)
}

async fn reflect(State(admin): State<Arc<Admin>>, uri: Uri) -> Response<Body> {
    let reply = async {
        let query = Query::parse(uri.query())?;
        query.only(&["backend", "name"])?;
        let backend = query
            .get("backend")
            .ok_or_else(|| AdminError::bad_request("backend= names the backend to ask"))?;
        let name = match query.get("name") {
            Some(name) => set_name(name)?,
            None => SetName::parse(&format!("reflected.{backend}")).map_err(|_| {
                AdminError::bad_request(format!(
                    "backend {backend:?} makes no valid set name; give one with name="
                ))
            })?,
        };
        let (set, outcome, replaced) = admin.live.reflect(&BackendName::new(backend), name).await?;
        set_changed(&set, replaced, outcome)
    };
    finish(reply.await)
}

async fn reload(State(admin): State<Arc<Admin>>) -> Response<Body> {
    let reply = async {
        let reloaded = admin.live.reload().await?;
        json(StatusCode::OK, &reloaded)
    };
    finish(reply.await)
}

impl From<LiveError> for AdminError {
    fn from(err: LiveError) -> AdminError {
        match err {
            LiveError::Invalid(m) => AdminError::bad_request(m),
            LiveError::Conflict(m) => AdminError::conflict(m),
            LiveError::NotFound(m) => AdminError::not_found(m),
            LiveError::Backend(m) => AdminError::bad_gateway(m),
            LiveError::Storage(m) => AdminError::internal(m),
        }
    }
}

/// Query parameters, percent-decoded (`+` is a space).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, AdminError> {
        let mut pairs = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| AdminError::bad_request(format!("query {part:?} is not UTF-8")))
            };
            pairs.push((decode(key)?, decode(value)?));
        }
        Ok(Query(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Refuses parameters other than `known`, so a typo is not silently ignored.
    fn only(&self, known: &[&str]) -> Result<(), AdminError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((key, _)) => Err(AdminError::bad_request(format!(
                "unknown query parameter {key:?} (known: {})",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

/// The answer to a set put in place: 201 when new, 200 when it replaced one, with the changes.
fn set_changed(set: &UploadedSet, replaced: bool, outcome: Outcome) -> Reply {
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    json(
        status,
        &SetChanged {
            set: SetInfo::of(set),
            replaced,
            outcome,
        },
    )
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn proto_file_names() {
        for good in ["a.proto", "pkg/v1/api.proto"] {
            assert!(proto_file_name(good).is_ok(), "{good}");
        }
        for bad in [
            "/etc/a.proto",
            "../a.proto",
            "a/./b.proto",
            "a.txt",
            "a\\b.proto",
            "a//b.proto",
        ] {
            assert!(proto_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_parameters() {
        let q = Query::parse(Some("backend=a%20b&upstream=http%3A%2F%2Fx+y")).unwrap();
        assert_eq!(q.get("backend"), Some("a b"));
        assert_eq!(q.get("upstream"), Some("http://x y"));
        assert!(q.only(&["backend", "upstream"]).is_ok());
        assert!(q.only(&["backend"]).is_err());
    }
}
