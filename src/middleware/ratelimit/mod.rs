//! Token-bucket rate limits keyed by caller, API key, subject, client IP, route or nothing, with
//! per-plan quotas, the `RateLimit-*` headers and a store trait a cluster can share.
//!
//! [`config`] parses the settings, [`RateLimits`] applies one policy's rules to a request,
//! [`RateStore`] keeps the buckets ([`LocalStore`] in memory), and the functions here turn a
//! [`Decision`] into headers or a 429. See docs/rate-limits.md.

pub mod config;
mod local;
mod policy;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::{ErrorKind, GatewayError};

pub use config::{
    LimitKeyKind, LimitRule, Plans, Quota, StoreSettings, DEFAULT_PLAN, DEFAULT_SWEEP_INTERVAL,
};
pub use local::{LocalStore, DEFAULT_MAX_KEYS};
pub use policy::{RateLimits, Requester, Verdict};

/// What a limit counts one request as: the bucket's identity within its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BucketValue<'a> {
    /// An API key, by its configured name.
    ApiKey(&'a str),
    /// A JWT subject.
    Subject(&'a str),
    /// A client address.
    Ip(IpAddr),
    /// A route template.
    Route(&'a str),
    /// The one bucket of a global limit.
    Global,
}

impl fmt::Display for BucketValue<'_> {
    /// The store's key text; the prefixes keep an API key named like an address apart from it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketValue::ApiKey(name) => write!(f, "key:{name}"),
            BucketValue::Subject(sub) => write!(f, "sub:{sub}"),
            BucketValue::Ip(ip) => write!(f, "ip:{ip}"),
            BucketValue::Route(route) => write!(f, "route:{route}"),
            BucketValue::Global => f.write_str("global"),
        }
    }
}

impl BucketValue<'_> {
    /// How a denial names whose requests were counted.
    fn describe(&self) -> String {
        match self {
            BucketValue::ApiKey(name) => format!("API key {name:?}"),
            BucketValue::Subject(sub) => format!("subject {sub:?}"),
            BucketValue::Ip(ip) => format!("client {ip}"),
            BucketValue::Route(route) => format!("route {route:?}"),
            BucketValue::Global => "all callers".to_owned(),
        }
    }
}

/// One bucket: the limit it belongs to and the value counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketKey<'a> {
    /// A stable name for the limit (policy, rule, plan and quota); buckets of different scopes
    /// never share tokens.
    pub scope: &'a str,
    /// Whose requests the bucket counts.
    pub value: BucketValue<'a>,
}

/// Where buckets live: in this process ([`LocalStore`]) or, later, a store shared by a cluster.
pub trait RateStore: Send + Sync + fmt::Debug {
    /// Takes one token from `bucket` (created full on first use) under `quota`, or says how long
    /// until one is available. Never fails: a store that cannot answer decides for itself
    /// whether to allow.
    fn check(&self, bucket: &BucketKey<'_>, quota: &Quota) -> Decision;
}

/// The outcome of one request against one bucket, with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// The bucket's capacity (the quota's burst).
    pub limit: u32,
    /// Tokens left after this request.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
    /// On a denial, time until one token is back.
    pub retry_after: Option<Duration>,
}

/// Of several decisions for one request, the one to report: any denial (the longest wait first),
/// otherwise the one with the fewest tokens left (the longest reset on a tie).
pub fn most_restrictive(decisions: impl IntoIterator<Item = Decision>) -> Option<Decision> {
    decisions.into_iter().reduce(stricter)
}

fn stricter(a: Decision, b: Decision) -> Decision {
    let rank = |d: &Decision| {
        (
            !d.allowed,
            d.retry_after.unwrap_or_default(),
            std::cmp::Reverse(d.remaining),
            d.reset,
        )
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Sets `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds, rounded up) and, on
/// a denial, `Retry-After` (seconds, at least 1), replacing any the backend sent; an allowed
/// request leaves a backend's own `Retry-After` alone.
pub fn write_headers(decision: &Decision, headers: &mut HeaderMap) {
    const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    headers.insert(LIMIT, HeaderValue::from(decision.limit));
    headers.insert(REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(RESET, HeaderValue::from(ceil_secs(decision.reset)));
    if !decision.allowed {
        let wait = ceil_secs(decision.retry_after.unwrap_or_default()).max(1);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(wait));
    }
}

/// The 429 for a request `decision` refused under `quota`, counted as `value`.
pub fn denial_error(quota: &Quota, value: &BucketValue<'_>, decision: &Decision) -> GatewayError {
    let wait = ceil_secs(decision.retry_after.unwrap_or_default()).max(1);
    GatewayError::new(
        ErrorKind::RateLimited,
        format!(
            "rate limit exceeded: {quota} for {}; retry in {wait}s",
            value.describe()
        ),
    )
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    fn decision(allowed: bool, remaining: u32, reset_ms: u64, retry_ms: Option<u64>) -> Decision {
        Decision {
            allowed,
            limit: 10,
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: retry_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn a_denial_wins_then_the_fewest_remaining() {
        let roomy = decision(true, 8, 200, None);
        let tight = decision(true, 1, 900, None);
        let denied = decision(false, 0, 5_000, Some(100));
        let denied_longer = decision(false, 0, 5_000, Some(3_000));
        assert_eq!(most_restrictive([roomy, tight]), Some(tight));
        assert_eq!(most_restrictive([tight, roomy]), Some(tight));
        assert_eq!(most_restrictive([roomy, denied, tight]), Some(denied));
        assert_eq!(
            most_restrictive([denied, denied_longer, tight]),
            Some(denied_longer)
        );
        assert_eq!(most_restrictive([]), None);
    }

    #[test]
    fn headers_round_up_and_retry_after_only_on_denial() {
        let mut headers = HeaderMap::new();
        write_headers(&decision(true, 7, 1_200, None), &mut headers);
        assert_eq!(headers["ratelimit-limit"], "10");
        assert_eq!(headers["ratelimit-remaining"], "7");
        assert_eq!(headers["ratelimit-reset"], "2");
        assert!(!headers.contains_key(http::header::RETRY_AFTER));

        // A backend's own Retry-After (on its 503, say) survives an allowed request.
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("99"));
        write_headers(&decision(true, 6, 1_200, None), &mut headers);
        assert_eq!(headers["retry-after"], "99");

        write_headers(&decision(false, 0, 0, Some(20)), &mut headers);
        assert_eq!(headers["ratelimit-remaining"], "0");
        assert_eq!(headers["ratelimit-reset"], "0");
        assert_eq!(
            headers["retry-after"], "1",
            "never 0: a client would retry at once"
        );

        write_headers(&decision(false, 0, 61_000, Some(12_000)), &mut headers);
        assert_eq!(headers["retry-after"], "12");
        assert_eq!(headers["ratelimit-reset"], "61");
    }

    #[test]
    fn denial_is_a_429_naming_quota_caller_and_wait() {
        let quota = Quota::new(100, Duration::from_secs(60)).expect("quota");
        let err = denial_error(
            &quota,
            &BucketValue::ApiKey("demo"),
            &decision(false, 0, 60_000, Some(11_200)),
        );
        assert_eq!(
            err.message(),
            "rate limit exceeded: 100 requests per 1m for API key \"demo\"; retry in 12s"
        );
        let status = err.http_status(&crate::error::StatusTable::default());
        assert_eq!(status, http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert_eq!(err.source(), crate::error::ErrorSource::Client);
    }

    #[test]
    fn bucket_values_of_different_kinds_never_share_text() {
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let texts = [
            BucketValue::ApiKey("10.0.0.1").to_string(),
            BucketValue::Subject("10.0.0.1").to_string(),
            BucketValue::Ip(ip).to_string(),
            BucketValue::Route("10.0.0.1").to_string(),
            BucketValue::Global.to_string(),
        ];
        let distinct: std::collections::HashSet<_> = texts.iter().collect();
        assert_eq!(distinct.len(), texts.len());
    }
}
