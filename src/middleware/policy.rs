//! Policies: what a route asks of its callers, set per package, service or method and resolved
//! once per method when a snapshot is built.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::middleware::client_ip::{IpRules, RawIpRules};
use crate::middleware::cors::{Cors, RawCors};
use crate::middleware::header_rules::{HeaderRules, RawHeaderRules};
use crate::middleware::ratelimit::config::{parse_limits, RawLimit};
use crate::middleware::ratelimit::{Plans, RateLimits};

/// `[policies."selector"]` as written; every key optional so a narrower selector overrides only
/// what it names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub auth: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub claims: Option<BTreeMap<String, String>>,
    pub rate_limits: Option<Vec<RawLimit>>,
    pub cors: Option<RawCors>,
    pub request_headers: Option<RawHeaderRules>,
    pub response_headers: Option<RawHeaderRules>,
    pub ip: Option<RawIpRules>,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; a credential, if sent, is still checked and identifies the caller.
    Public,
    /// Any caller with a valid API key or token.
    Authenticated,
    /// Callers with a valid API key.
    ApiKey,
    /// Callers with a valid JWT.
    Jwt,
}

impl Access {
    fn from_name(name: &str) -> Option<Access> {
        Some(match name {
            "public" => Access::Public,
            "authenticated" => Access::Authenticated,
            "api_key" => Access::ApiKey,
            "jwt" => Access::Jwt,
            _ => return None,
        })
    }
}

/// The resolved policy of a method.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Who may call.
    pub access: Access,
    /// Scopes the caller must hold, all of them.
    pub scopes: Vec<String>,
    /// Claim values the caller's token must carry.
    pub claims: Vec<(String, String)>,
    /// Rate limits, each checked; scoped to the selector that set them, so callers of
    /// everything under it share the buckets.
    pub rate_limits: Arc<RateLimits>,
    /// CORS, when browsers of other origins may call.
    pub cors: Option<Arc<Cors>>,
    /// Rules applied to the request's headers before it is sent on.
    pub request_headers: Option<Arc<HeaderRules>>,
    /// Rules applied to the response's headers.
    pub response_headers: Option<Arc<HeaderRules>>,
    /// Client addresses allowed or denied.
    pub ip: Option<Arc<IpRules>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            access: Access::Public,
            scopes: Vec::new(),
            claims: Vec::new(),
            rate_limits: Arc::new(RateLimits::new("*", &[], &Plans::default())),
            cors: None,
            request_headers: None,
            response_headers: None,
            ip: None,
        }
    }
}

impl Policy {
    /// Whether the policy checks anything at all, so a route without one skips the edge work.
    pub fn is_open(&self) -> bool {
        self.access == Access::Public
            && self.scopes.is_empty()
            && self.claims.is_empty()
            && self.rate_limits.is_empty()
            && self.ip.is_none()
    }
}

/// Every policy, most specific selector first, and the one for methods none covers.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    rules: Vec<(String, Arc<Policy>)>,
    default: Arc<Policy>,
}

impl Policies {
    /// Resolves `[policies]`: `"*"` is the default, then packages before what is under them, each
    /// starting from the closest selector above it.
    pub(crate) fn from_raw(
        raw: &BTreeMap<String, RawPolicy>,
        plans: &Plans,
        problems: &mut Vec<String>,
    ) -> Policies {
        let mut default = Policy::default();
        if let Some(star) = raw.get("*") {
            default = resolve(&default, "*", star, plans, problems);
        }
        let default = Arc::new(default);
        let mut rules: Vec<(String, Arc<Policy>)> = Vec::new();
        // BTreeMap order puts a package before every name under it.
        for (selector, policy) in raw.iter().filter(|(s, _)| *s != "*") {
            if selector.is_empty() || selector.starts_with('.') || selector.ends_with('.') {
                problems.push(format!(
                    "policies.{selector:?}: a selector is \"*\", a package, a service or a method full name"
                ));
                continue;
            }
            let parent = rules
                .iter()
                .filter(|(s, _)| selector_covers(s, selector))
                .max_by_key(|(s, _)| s.len())
                .map_or_else(|| default.clone(), |(_, p)| p.clone());
            let resolved = resolve(&parent, selector, policy, plans, problems);
            rules.push((selector.clone(), Arc::new(resolved)));
        }
        rules.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Policies { rules, default }
    }

    /// The policy of a method, by its full name (`package.Service.Method`).
    pub fn for_method(&self, full_name: &str) -> &Arc<Policy> {
        self.rules
            .iter()
            .find(|(s, _)| selector_covers(s, full_name))
            .map_or(&self.default, |(_, p)| p)
    }

    /// The policy of requests that match no route.
    pub fn default_policy(&self) -> &Arc<Policy> {
        &self.default
    }
}

fn resolve(
    parent: &Policy,
    selector: &str,
    raw: &RawPolicy,
    plans: &Plans,
    problems: &mut Vec<String>,
) -> Policy {
    let key = format!("policies.{selector:?}");
    let mut policy = parent.clone();
    if let Some(name) = &raw.auth {
        match Access::from_name(name) {
            Some(access) => policy.access = access,
            None => problems.push(format!(
                "{key}.auth: {name:?} is not one of \"public\", \"authenticated\", \"api_key\", \"jwt\""
            )),
        }
    }
    if let Some(scopes) = &raw.scopes {
        policy.scopes = scopes.clone();
    }
    if let Some(claims) = &raw.claims {
        policy.claims = claims.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    if let Some(limits) = &raw.rate_limits {
        let rules = parse_limits(limits, &format!("{key}.rate_limits"), problems);
        policy.rate_limits = Arc::new(RateLimits::new(selector, &rules, plans));
    }
    if let Some(cors) = &raw.cors {
        policy.cors = Some(Arc::new(Cors::parse(
            cors,
            &format!("{key}.cors"),
            problems,
        )));
    }
    if let Some(rules) = &raw.request_headers {
        let rules = HeaderRules::parse(rules, &format!("{key}.request_headers"), problems);
        policy.request_headers = (!rules.is_empty()).then(|| Arc::new(rules));
    }
    if let Some(rules) = &raw.response_headers {
        let rules = HeaderRules::parse(rules, &format!("{key}.response_headers"), problems);
        policy.response_headers = (!rules.is_empty()).then(|| Arc::new(rules));
    }
    if let Some(ip) = &raw.ip {
        let rules = IpRules::parse(ip, &format!("{key}.ip"), problems);
        policy.ip = (!rules.is_empty()).then(|| Arc::new(rules));
    }
    if (!policy.scopes.is_empty() || !policy.claims.is_empty()) && policy.access == Access::Public {
        problems.push(format!(
            "{key}: scopes and claims need a caller; set auth = \"authenticated\" or \"jwt\""
        ));
    }
    policy
}

/// Whether a selector (`*`, a package, a service or a method full name) covers `name`, by exact
/// name or as a dotted prefix.
pub fn selector_covers(selector: &str, name: &str) -> bool {
    selector == "*"
        || name == selector
        || (name.starts_with(selector) && name.as_bytes().get(selector.len()) == Some(&b'.'))
}
