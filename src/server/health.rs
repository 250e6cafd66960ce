//! `/healthz` and `/readyz`: liveness and readiness answered on the public listener before
//! routing, so orchestrators and load balancers can probe the gateway itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::future::join_all;
use http::{header, HeaderValue, Method, Request, Response};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::config::{BackendName, ServerConfig};
use crate::error::{ErrorKind, GatewayError};
use crate::gateway;
use crate::snapshot::{Snapshot, SnapshotStore};

/// How long one backend address may take to accept a TCP connection before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a readiness verdict is reused: a storm of probes costs the backends one round of
/// connects a second at most.
const VERDICT_TTL: Duration = Duration::from_secs(1);

/// The health endpoints of one listener and the cached readiness verdict behind `/readyz`.
#[derive(Debug)]
pub(crate) struct Health {
    health_path: Option<String>,
    ready_path: Option<String>,
    /// The last verdict and when it was reached; held across a probe so that concurrent
    /// `/readyz` requests wait for one round instead of each starting their own.
    last: Mutex<Option<(Instant, Verdict)>>,
}

/// Whether the gateway can serve traffic, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ready,
    NotReady(String),
}

impl Health {
    /// The endpoints `config` names.
    pub(crate) fn new(config: &ServerConfig) -> Health {
        Health {
            health_path: config.health_path.clone(),
            ready_path: config.ready_path.clone(),
            last: Mutex::new(None),
        }
    }

    /// The answer when `request` is for a health endpoint; None sends it on to routing.
    pub(crate) async fn answer<B>(
        &self,
        store: &SnapshotStore,
        request: &Request<B>,
    ) -> Option<Response<Body>> {
        let path = request.uri().path();
        let live = self.health_path.as_deref() == Some(path);
        let ready = self.ready_path.as_deref() == Some(path);
        if !live && !ready {
            return None;
        }
        let snapshot = store.load();
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let err = GatewayError::new(
                ErrorKind::MethodNotAllowed(vec![Method::GET, Method::HEAD]),
                "Method Not Allowed",
            );
            return Some(gateway::error_response(&snapshot, &err));
        }
        if live {
            return Some(ok());
        }
        Some(match self.verdict(&snapshot).await {
            Verdict::Ready => ok(),
            Verdict::NotReady(why) => {
                let err = GatewayError::new(ErrorKind::Unavailable, format!("not ready: {why}"));
                let mut response = gateway::error_response(&snapshot, &err);
                no_store(&mut response);
                response
            }
        })
    }

    /// The cached verdict while it is fresh, else a new round of probes.
    async fn verdict(&self, snapshot: &Snapshot) -> Verdict {
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = last.as_ref() {
            if at.elapsed() < VERDICT_TTL {
                return verdict.clone();
            }
        }
        let verdict = probe(snapshot).await;
        *last = Some((Instant::now(), verdict.clone()));
        verdict
    }
}

fn ok() -> Response<Body> {
    let mut response = Response::new(Body::from(r#"{"status":"ok"}"#));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    no_store(&mut response);
    response
}

/// A cached health answer would hide the moment the gateway goes down.
fn no_store(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Ready when descriptors gave at least one route and every backend a route uses has an address
/// accepting TCP connections. All addresses are probed at once, each bounded by
/// [`PROBE_TIMEOUT`]. Routes without a backend are left out: they answer 503 by design until one
/// is configured, which is not a reason to take the whole gateway out of rotation.
async fn probe(snapshot: &Snapshot) -> Verdict {
    let mut used: BTreeMap<BackendName, Vec<http::Uri>> = BTreeMap::new();
    let mut routes = 0usize;
    for (_, _, route) in snapshot.routes.iter() {
        routes += 1;
        if let Some(backend) = &route.backend {
            used.entry(backend.name.clone())
                .or_insert_with(|| backend.definition.addresses.clone());
        }
    }
    if routes == 0 {
        return Verdict::NotReady("no routes are loaded (no descriptors)".to_owned());
    }
    let checks = used.into_iter().map(|(name, addresses)| async move {
        let attempts = join_all(addresses.iter().map(connects)).await;
        if attempts.iter().any(Result::is_ok) {
            return None;
        }
        let reasons: Vec<String> = addresses
            .iter()
            .zip(attempts)
            .filter_map(|(uri, attempt)| attempt.err().map(|e| format!("{uri}: {e}")))
            .collect();
        Some(format!(
            "backend {:?} is unreachable ({})",
            name.as_str(),
            reasons.join(", ")
        ))
    });
    let down: Vec<String> = join_all(checks).await.into_iter().flatten().collect();
    if down.is_empty() {
        Verdict::Ready
    } else {
        Verdict::NotReady(down.join("; "))
    }
}

/// Whether the address of `uri` accepts a TCP connection within [`PROBE_TIMEOUT`].
async fn connects(uri: &http::Uri) -> Result<(), String> {
    let host = uri
        .host()
        .ok_or_else(|| "no host".to_owned())?
        // An IPv6 literal keeps its brackets in a URI, not in a socket address.
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[tokio::test]
    async fn a_listening_address_connects_and_a_closed_one_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        assert_eq!(connects(&open).await, Ok(()));
        drop(listener);
        assert!(connects(&open).await.is_err());
    }

    #[tokio::test]
    async fn ipv6_literals_lose_their_brackets() {
        let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
            return; // No IPv6 loopback on this machine: nothing to check.
        };
        let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        assert_eq!(connects(&uri).await, Ok(()));
    }
}
