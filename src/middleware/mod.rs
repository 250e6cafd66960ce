//! The edge: everything a request passes before a backend sees it, in one fixed order.
//!
//! On the way in: request id → client address (through trusted proxies) → path normalization →
//! CORS preflight → routing (the gateway's) → IP rules → authentication → rate limits →
//! authorization → request header rules. On the way out, every response, errors included, gets
//! the route's response header rules, CORS headers, `RateLimit-*` headers and the request id.
//! A request refused here never reaches a backend. See docs/auth.md and docs/traffic.md.

pub mod auth;
pub mod client_ip;
pub mod cors;
pub mod header_rules;
pub mod normalize;
pub mod policy;
pub mod ratelimit;
pub mod request_id;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tonic::metadata::MetadataMap;

use crate::error::{ErrorKind, GatewayError};
use crate::snapshot::Route;
use crate::telemetry::metrics::Rejection;
use auth::{AuthSettings, Authenticator, Principal, RawAuth};
use client_ip::TrustedProxies;
use policy::{Access, Policies, Policy, RawPolicy};
use ratelimit::config::{parse_plans, parse_store, RawPlan, RawStore, StoreSettings};
use ratelimit::{LocalStore, Plans, RateStore, Requester, Verdict};

const REQUEST_ID: HeaderName = request_id::X_REQUEST_ID;

/// The edge sections of the config file as written: `[auth]`, `[plans]`, `[policies]`,
/// `trusted_proxies`, `forwarded_header` and `[rate_limit_store]` (fields of the top-level raw
/// config).
#[derive(Debug, Default)]
pub(crate) struct RawEdge<'a> {
    pub auth: Option<&'a RawAuth>,
    pub plans: Option<&'a BTreeMap<String, RawPlan>>,
    pub policies: Option<&'a BTreeMap<String, RawPolicy>>,
    pub trusted_proxies: &'a [String],
    pub forwarded_header: Option<&'a str>,
    pub rate_limit_store: Option<&'a RawStore>,
}

/// The checked edge settings.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Keys, tokens and what is forwarded.
    pub auth: AuthSettings,
    /// Rate-limit plans by name.
    pub plans: Plans,
    /// Policies by selector.
    pub policies: Policies,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// How the in-process rate-limit store is bounded and swept.
    pub rate_limit_store: StoreSettings,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings::from_raw(RawEdge::default(), Path::new("."), &mut Vec::new())
    }
}

impl EdgeSettings {
    /// Checks the edge sections; every problem is pushed with its key.
    pub(crate) fn from_raw(raw: RawEdge<'_>, base: &Path, problems: &mut Vec<String>) -> Self {
        let no_auth = RawAuth::default();
        let no_policies = BTreeMap::new();
        let no_plans = BTreeMap::new();
        let raw_auth = raw.auth.unwrap_or(&no_auth);
        let auth = AuthSettings::from_raw(raw_auth, base, problems);
        let plans = parse_plans(raw.plans.unwrap_or(&no_plans), problems);
        for (i, key) in raw_auth.api_keys.iter().enumerate() {
            if let Some(plan) = &key.plan {
                if !plans.contains(plan) {
                    problems.push(format!("auth.api_keys[{i}].plan: no plan named {plan:?}"));
                }
            }
        }
        let policies = Policies::from_raw(raw.policies.unwrap_or(&no_policies), &plans, problems);
        let trusted_proxies =
            TrustedProxies::parse(raw.trusted_proxies, raw.forwarded_header, problems);
        let rate_limit_store = raw
            .rate_limit_store
            .map(|store| parse_store(store, problems))
            .unwrap_or_default();
        EdgeSettings {
            auth,
            plans,
            policies,
            trusted_proxies,
            rate_limit_store,
        }
    }
}

/// The edge of one snapshot: settings made live (token verifier, rate-limit buckets), both kept
/// across reloads that do not change them.
#[derive(Debug)]
pub struct Edge {
    auth: Authenticator,
    policies: Policies,
    store: Arc<LocalStore>,
    trusted: TrustedProxies,
}

/// One request's way through the edge, carried from the request to its response.
#[derive(Debug)]
pub struct Pass {
    /// The request id, the client's or a new one.
    pub request_id: HeaderValue,
    /// The client's address, through trusted proxies.
    pub client_ip: IpAddr,
    /// The peer of the connection.
    pub remote: Option<SocketAddr>,
    /// The client's `Origin`, for CORS.
    origin: Option<HeaderValue>,
    /// The policy of the matched route, once routed.
    policy: Option<Arc<Policy>>,
    /// The authenticated caller.
    pub principal: Option<Principal>,
    /// What the rate-limit headers report.
    rate: Option<ratelimit::Decision>,
    /// Why the edge refused the request, for the metrics.
    pub rejection: Option<Rejection>,
}

impl Edge {
    /// The live edge for `settings`; the verifier and the buckets of `previous` are kept when
    /// they still apply. Must run inside a tokio runtime.
    pub fn new(settings: &EdgeSettings, previous: Option<&Edge>) -> Edge {
        let store = match previous {
            Some(p) => p.store.clone(),
            None => {
                let store = Arc::new(LocalStore::new(settings.rate_limit_store.max_keys));
                // The task ends by itself once the last snapshot holding the store is gone. A
                // snapshot built outside a runtime (`protogate check`) serves nothing: no sweeper.
                if tokio::runtime::Handle::try_current().is_ok() {
                    store.spawn_sweeper(settings.rate_limit_store.sweep_interval);
                }
                store
            }
        };
        Edge {
            auth: Authenticator::new(settings.auth.clone(), previous.map(|p| &p.auth)),
            policies: settings.policies.clone(),
            store,
            trusted: settings.trusted_proxies.clone(),
        }
    }

    /// The policies routes resolve theirs from.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The authenticator (for the WebSocket handshake's credential).
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// First steps, before routing: the request id (set on the request, so it reaches the
    /// backend), the client address, and the path made canonical so that no spelling of it can
    /// reach a route while dodging that route's policy.
    pub fn enter(
        &self,
        request: &mut Request<Body>,
        remote: Option<SocketAddr>,
    ) -> (Pass, Result<(), GatewayError>) {
        let request_id = request_id::request_id(request.headers());
        request.headers_mut().insert(REQUEST_ID, request_id.clone());
        let peer = remote.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let client_ip = self.trusted.client_ip(peer, request.headers());
        let pass = Pass {
            request_id,
            client_ip,
            remote,
            origin: request.headers().get(header::ORIGIN).cloned(),
            policy: None,
            principal: None,
            rate: None,
            rejection: None,
        };
        let normalized = normalize_uri(request);
        (pass, normalized)
    }

    /// Answers a CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
    /// from the policy of the route the real request would take; None when this is not one, or
    /// the route has no CORS policy (the request then goes on as an ordinary OPTIONS).
    pub fn preflight(
        &self,
        routes: &crate::routing::RouteTable<Arc<Route>>,
        request: &Request<Body>,
        pass: &mut Pass,
    ) -> Option<Result<Response<Body>, GatewayError>> {
        let headers = request.headers();
        if request.method() != Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
            return None;
        }
        let wanted = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let wanted = Method::from_bytes(wanted.as_bytes()).ok()?;
        let path = request.uri().path();
        let route = match routes.find(&wanted, path) {
            crate::routing::RouteMatch::Found(found) => found.value.clone(),
            _ => return None,
        };
        let cors = route.policy.cors.clone()?;
        pass.policy = Some(route.policy.clone());
        // A method no route uses makes the table list the methods the path serves.
        let methods = match routes.find(&probe_method(), path) {
            crate::routing::RouteMatch::MethodNotAllowed { allow } => allow,
            _ => vec![wanted],
        };
        Some(match cors.preflight(headers, &methods) {
            Ok(allow) => {
                let mut response = Response::new(Body::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                response.headers_mut().extend(allow);
                Ok(response)
            }
            Err(denied) => {
                pass.rejection = Some(Rejection::CorsDenied);
                Err(GatewayError::new(
                    ErrorKind::Status(tonic::Code::PermissionDenied),
                    format!("CORS preflight refused: {denied}"),
                ))
            }
        })
    }

    /// The checks after routing, in order: IP rules, authentication, rate limits, authorization;
    /// then the request header rules. `handshake` is a WebSocket's subprotocol or cookie token.
    pub fn admit(
        &self,
        pass: &mut Pass,
        route: &Route,
        headers: &mut HeaderMap,
        query: Option<&str>,
        handshake: Option<&str>,
    ) -> Result<(), GatewayError> {
        let policy = route.policy.clone();
        pass.policy = Some(policy.clone());
        if let Some(ip) = &policy.ip {
            if !ip.permits(pass.client_ip) {
                pass.rejection = Some(Rejection::IpDenied);
                return Err(GatewayError::new(
                    ErrorKind::Status(tonic::Code::PermissionDenied),
                    "requests from this address are not allowed",
                ));
            }
        }
        // A public route looks at credentials only to tell callers apart for its rate limits,
        // and serves a caller whose credential does not check out as anonymous.
        pass.principal = if policy.access != Access::Public {
            self.auth
                .authenticate(headers, query, handshake, policy.access)
                .inspect_err(|_| pass.rejection = Some(Rejection::Unauthenticated))?
        } else if !policy.rate_limits.is_empty() {
            self.auth
                .authenticate(headers, query, handshake, policy.access)
                .ok()
                .flatten()
        } else {
            None
        };
        self.limit(pass, &route.template)?;
        self.auth
            .authorize(&policy, pass.principal.as_ref(), route.method.full_name())
            .inspect_err(|e| {
                pass.rejection = Some(if e.code() == tonic::Code::Unauthenticated {
                    Rejection::Unauthenticated
                } else {
                    Rejection::Forbidden
                });
            })?;
        if let Some(rules) = &policy.request_headers {
            rules.apply(headers);
        }
        Ok(())
    }

    /// Charges the request to every limit of its policy.
    fn limit(&self, pass: &mut Pass, route: &str) -> Result<(), GatewayError> {
        let Some(policy) = &pass.policy else {
            return Ok(());
        };
        if policy.rate_limits.is_empty() {
            return Ok(());
        }
        let who = requester(pass.principal.as_ref(), pass.client_ip, route);
        match policy.rate_limits.check(&*self.store, &who) {
            None => Ok(()),
            Some(Verdict::Allow(decision)) => {
                pass.rate = Some(decision);
                Ok(())
            }
            Some(Verdict::Deny(decision, err)) => {
                pass.rate = Some(decision);
                pass.rejection = Some(Rejection::RateLimited);
                Err(err)
            }
        }
    }

    /// A gate that charges each message of a WebSocket stream to the same limits as the
    /// upgrade, so a socket cannot carry more calls' worth of messages than its caller may make.
    pub fn message_gate(&self, pass: &Pass, route: &Route) -> Option<MessageGate> {
        let policy = pass.policy.clone()?;
        if policy.rate_limits.is_empty() {
            return None;
        }
        Some(MessageGate {
            store: self.store.clone(),
            policy,
            principal: pass.principal.clone(),
            ip: pass.client_ip,
            route: route.template.clone(),
        })
    }

    /// The URI without the credential query parameters (`api_key`, `access_token`), or None
    /// when it has none: they must not bind into a message that happens to have such a field.
    pub fn without_credentials(&self, uri: &http::Uri) -> Option<http::Uri> {
        let query = uri.query()?;
        let settings = self.auth.settings();
        let is_credential = |pair: &&str| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            settings.credential_params().any(|name| name == key)
        };
        if !query.split('&').any(|pair| is_credential(&pair)) {
            return None;
        }
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty() && !is_credential(pair))
            .collect();
        let path_and_query = if kept.is_empty() {
            uri.path().to_owned()
        } else {
            format!("{}?{}", uri.path(), kept.join("&"))
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = path_and_query.parse().ok();
        http::Uri::from_parts(parts).ok()
    }

    /// Completes the backend's metadata: the caller's forwarded facts (anything the client
    /// sent under those keys removed first) and the request id.
    pub fn forward(&self, pass: &Pass, md: &mut MetadataMap) {
        self.auth.forward(pass.principal.as_ref(), md);
        // The id's header value is shared, not copied (MetadataMap has no mutable view).
        let mut headers = std::mem::take(md).into_headers();
        headers.insert(REQUEST_ID, pass.request_id.clone());
        *md = MetadataMap::from_headers(headers);
    }

    /// Last step, on every response: response header rules, CORS, rate-limit headers, the
    /// request id, and the challenge of a 401.
    pub fn leave(&self, pass: &Pass, response: &mut Response<Body>) {
        let status = response.status();
        let headers = response.headers_mut();
        if let Some(policy) = &pass.policy {
            if let Some(rules) = &policy.response_headers {
                rules.apply(headers);
            }
            if let Some(cors) = &policy.cors {
                cors.apply(pass.origin.as_ref(), headers);
            }
        }
        if let Some(decision) = &pass.rate {
            ratelimit::write_headers(decision, headers);
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, self.auth.challenge());
        }
        headers.insert(REQUEST_ID, pass.request_id.clone());
    }
}

/// Charges WebSocket messages to the limits of the socket's route.
#[derive(Debug)]
pub struct MessageGate {
    store: Arc<LocalStore>,
    policy: Arc<Policy>,
    principal: Option<Principal>,
    ip: IpAddr,
    route: Arc<str>,
}

impl MessageGate {
    /// Takes a token for one client message, or the error that ends the stream.
    pub fn check(&self) -> Result<(), GatewayError> {
        let who = requester(self.principal.as_ref(), self.ip, &self.route);
        match self
            .policy
            .rate_limits
            .check(&*self.store as &dyn RateStore, &who)
        {
            Some(Verdict::Deny(_, err)) => Err(err),
            _ => Ok(()),
        }
    }
}

/// What the rate limits count a request by.
fn requester<'a>(principal: Option<&'a Principal>, ip: IpAddr, route: &'a str) -> Requester<'a> {
    Requester {
        api_key: principal.and_then(Principal::api_key),
        subject: principal.and_then(Principal::subject),
        plan: principal.and_then(|p| p.plan.as_deref()),
        ip,
        route,
    }
}

/// Rewrites the request's method and path to their canonical forms; a path that has none is a
/// 400.
fn normalize_uri(request: &mut Request<Body>) -> Result<(), GatewayError> {
    if let Cow::Owned(method) = normalize::normalize_method(request.method()) {
        *request.method_mut() = method;
    }
    let path = request.uri().path();
    let normalized = normalize::normalize_path(path)
        .map_err(|e| GatewayError::invalid(format!("bad request path: {e}")))?;
    let Cow::Owned(path) = normalized else {
        return Ok(());
    };
    let with_query = match request.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(
        with_query
            .parse()
            .map_err(|_| GatewayError::invalid("bad request path"))?,
    );
    *request.uri_mut() =
        http::Uri::from_parts(parts).map_err(|_| GatewayError::invalid("bad request path"))?;
    Ok(())
}

/// A method token no route is ever declared with.
fn probe_method() -> Method {
    Method::from_bytes(b"PROTOGATE-PROBE").unwrap_or(Method::CONNECT)
}
