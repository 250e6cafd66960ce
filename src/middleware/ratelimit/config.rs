//! Rate-limit settings: the raw TOML shapes and the typed quotas, rules and plans made from them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

/// One limit of a policy as written in TOML: `{ key = "ip", requests = 10, per = "1s" }` or
/// `{ key = "caller", plan = true }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    key: String,
    requests: Option<u32>,
    per: Option<String>,
    burst: Option<u32>,
    plan: Option<bool>,
}

/// One quota as written in TOML: `{ requests = 100, per = "1m", burst = 20 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuota {
    requests: u32,
    per: String,
    burst: Option<u32>,
}

/// A plan (`[plans.NAME]`): the quotas every caller on it gets, each enforced separately.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlan {
    limits: Vec<RawQuota>,
}

/// The `[rate_limit_store]` table: bounds of the in-process bucket store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    max_keys: Option<usize>,
    sweep_interval: Option<String>,
}

/// How the in-process store is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// Buckets held at most, over all limits; past it new values share an overflow bucket.
    pub max_keys: usize,
    /// How often idle buckets are dropped.
    pub sweep_interval: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            max_keys: super::DEFAULT_MAX_KEYS,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }
}

/// Default time between sweeps of idle buckets.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// A token bucket: `burst` tokens at most, refilled at `requests` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Tokens added back over `per`.
    pub requests: NonZeroU32,
    /// The window `requests` refer to; never shorter than `requests` nanoseconds.
    pub per: Duration,
    /// The bucket's capacity: how many requests may arrive at once (defaults to `requests`).
    pub burst: NonZeroU32,
}

impl Quota {
    /// A quota of `requests` per `per` with the bucket as large as `requests`; `None` if either is
    /// zero or the refill interval would be under a nanosecond.
    pub fn new(requests: u32, per: Duration) -> Option<Quota> {
        let requests = NonZeroU32::new(requests)?;
        if per.as_nanos() < u128::from(requests.get()) {
            return None;
        }
        Some(Quota {
            requests,
            per,
            burst: requests,
        })
    }

    /// The same quota with a bucket of `burst` tokens; `None` if `burst` is zero.
    pub fn with_burst(self, burst: u32) -> Option<Quota> {
        Some(Quota {
            burst: NonZeroU32::new(burst)?,
            ..self
        })
    }

    /// Time for one token to come back.
    pub fn refill_interval(&self) -> Duration {
        self.per / self.requests.get()
    }

    /// The same bucket as governor describes it.
    pub(crate) fn governor(&self) -> governor::Quota {
        // `new` guarantees a refill interval of at least 1ns, so `with_period` cannot refuse it;
        // the fallback only keeps this total.
        governor::Quota::with_period(self.refill_interval())
            .unwrap_or_else(|| governor::Quota::per_second(self.requests))
            .allow_burst(self.burst)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests per {}",
            self.requests,
            humantime::format_duration(self.per)
        )?;
        if self.burst != self.requests {
            write!(f, " (burst {})", self.burst)?;
        }
        Ok(())
    }
}

/// What a limit counts requests by: each distinct value gets its own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKeyKind {
    /// The authenticated caller (API key name, else JWT subject); anonymous requests by client IP.
    Caller,
    /// The API key's name; requests without an API key are not counted by this limit.
    ApiKey,
    /// The JWT subject; requests without a verified token are not counted by this limit.
    Subject,
    /// The client IP (as resolved through the trusted proxies).
    Ip,
    /// The route template: all callers of a route share one bucket.
    Route,
    /// One bucket for every request the policy covers.
    Global,
}

impl LimitKeyKind {
    /// The kind named `name` as written in the config.
    pub fn parse(name: &str) -> Option<LimitKeyKind> {
        Some(match name {
            "caller" => LimitKeyKind::Caller,
            "api_key" => LimitKeyKind::ApiKey,
            "subject" => LimitKeyKind::Subject,
            "ip" => LimitKeyKind::Ip,
            "route" => LimitKeyKind::Route,
            "global" => LimitKeyKind::Global,
            _ => return None,
        })
    }

    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKeyKind::Caller => "caller",
            LimitKeyKind::ApiKey => "api_key",
            LimitKeyKind::Subject => "subject",
            LimitKeyKind::Ip => "ip",
            LimitKeyKind::Route => "route",
            LimitKeyKind::Global => "global",
        }
    }
}

/// One limit of a policy: what it counts by and its quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRule {
    /// What requests are counted by.
    pub key: LimitKeyKind,
    /// The quota; `None` means the quotas of the caller's plan.
    pub quota: Option<Quota>,
}

/// The name of the plan used for callers without one (or with one that is not configured).
pub const DEFAULT_PLAN: &str = "default";

/// Named plans (rate-limit tiers), each a list of quotas enforced together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plans {
    plans: HashMap<String, Vec<Quota>>,
}

impl Plans {
    /// Plans from `(name, quotas)` pairs.
    pub fn new(plans: impl IntoIterator<Item = (String, Vec<Quota>)>) -> Plans {
        Plans {
            plans: plans.into_iter().collect(),
        }
    }

    /// Whether a plan of this name is configured (for checking the plans API keys name).
    pub fn contains(&self, name: &str) -> bool {
        self.plans.contains_key(name)
    }

    /// The quotas of `plan`, falling back to the `default` plan; empty when neither exists.
    pub fn quotas(&self, plan: Option<&str>) -> &[Quota] {
        plan.and_then(|name| self.plans.get(name))
            .or_else(|| self.plans.get(DEFAULT_PLAN))
            .map_or(&[], Vec::as_slice)
    }

    /// Every plan with its quotas, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Quota])> {
        self.plans
            .iter()
            .map(|(name, quotas)| (name.as_str(), quotas.as_slice()))
    }
}

fn duration(text: &str, at: &str, problems: &mut Vec<String>) -> Option<Duration> {
    match humantime::parse_duration(text) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(format!("{at}.per: {e}"));
            None
        }
    }
}

fn quota(
    requests: u32,
    per: &str,
    burst: Option<u32>,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<Quota> {
    let per = duration(per, at, problems)?;
    let Some(quota) = Quota::new(requests, per) else {
        problems.push(format!(
            "{at}: requests must be at least 1 and per long enough for each ({requests} per {})",
            humantime::format_duration(per)
        ));
        return None;
    };
    match burst {
        None => Some(quota),
        Some(b) => {
            let with = quota.with_burst(b);
            if with.is_none() {
                problems.push(format!("{at}.burst: must be at least 1"));
            }
            with
        }
    }
}

/// Typed quota from `raw`; problems are pushed as `at: reason`.
pub(crate) fn parse_quota(raw: &RawQuota, at: &str, problems: &mut Vec<String>) -> Option<Quota> {
    quota(raw.requests, &raw.per, raw.burst, at, problems)
}

/// Typed limits of one policy (`at` is its config path, e.g. `routes[2].rate_limits`); a bad
/// entry is left out and its problem pushed as `at[i]...: reason`.
pub(crate) fn parse_limits(
    raw: &[RawLimit],
    at: &str,
    problems: &mut Vec<String>,
) -> Vec<LimitRule> {
    let mut rules = Vec::with_capacity(raw.len());
    for (i, limit) in raw.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let Some(key) = LimitKeyKind::parse(&limit.key) else {
            problems.push(format!(
                "{at}.key: {:?} is not one of caller, api_key, subject, ip, route, global",
                limit.key
            ));
            continue;
        };
        let quota = if limit.plan == Some(true) {
            if limit.requests.is_some() || limit.per.is_some() || limit.burst.is_some() {
                problems.push(format!(
                    "{at}: plan = true takes the caller's plan; requests, per and burst do not apply"
                ));
                continue;
            }
            None
        } else {
            let (Some(requests), Some(per)) = (limit.requests, &limit.per) else {
                problems.push(format!(
                    "{at}: requests and per are required unless plan = true"
                ));
                continue;
            };
            match quota(requests, per, limit.burst, &at, problems) {
                Some(q) => Some(q),
                None => continue,
            }
        };
        rules.push(LimitRule { key, quota });
    }
    rules
}

/// Typed plans from `[plans.NAME]` tables; problems are pushed as `plans.NAME.limits[i]: reason`.
pub(crate) fn parse_plans(raw: &BTreeMap<String, RawPlan>, problems: &mut Vec<String>) -> Plans {
    let mut plans = HashMap::with_capacity(raw.len());
    for (name, plan) in raw {
        let at = format!("plans.{name}.limits");
        if plan.limits.is_empty() {
            problems.push(format!("{at}: a plan needs at least one limit"));
            continue;
        }
        let quotas: Vec<Quota> = plan
            .limits
            .iter()
            .enumerate()
            .filter_map(|(i, q)| parse_quota(q, &format!("{at}[{i}]"), problems))
            .collect();
        plans.insert(name.clone(), quotas);
    }
    Plans { plans }
}

/// Typed store settings from `[rate_limit_store]`; problems are pushed as
/// `rate_limit_store.KEY: reason` and leave that key at its default.
pub(crate) fn parse_store(raw: &RawStore, problems: &mut Vec<String>) -> StoreSettings {
    let mut settings = StoreSettings::default();
    match raw.max_keys {
        Some(0) => problems.push("rate_limit_store.max_keys: must be at least 1".to_owned()),
        Some(n) => settings.max_keys = n,
        None => {}
    }
    if let Some(text) = &raw.sweep_interval {
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => settings.sweep_interval = d,
            Ok(_) => problems.push("rate_limit_store.sweep_interval: must be above 0".to_owned()),
            Err(e) => problems.push(format!("rate_limit_store.sweep_interval: {e}")),
        }
    }
    settings
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Doc {
        #[serde(default)]
        rate_limits: Vec<RawLimit>,
        #[serde(default)]
        plans: BTreeMap<String, RawPlan>,
        #[serde(default)]
        rate_limit_store: RawStore,
    }

    fn doc(text: &str) -> Doc {
        toml::from_str(text).expect("test TOML")
    }

    #[test]
    fn limits_parse_from_the_documented_toml() {
        let d = doc(r#"rate_limits = [
                { key = "ip", requests = 10, per = "1s", burst = 20 },
                { key = "caller", plan = true },
            ]"#);
        let mut problems = Vec::new();
        let rules = parse_limits(&d.rate_limits, "rate_limits", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let ten = Quota::new(10, Duration::from_secs(1))
            .and_then(|q| q.with_burst(20))
            .expect("quota");
        assert_eq!(
            rules,
            vec![
                LimitRule {
                    key: LimitKeyKind::Ip,
                    quota: Some(ten)
                },
                LimitRule {
                    key: LimitKeyKind::Caller,
                    quota: None
                },
            ]
        );
        assert_eq!(ten.refill_interval(), Duration::from_millis(100));
        assert_eq!(ten.to_string(), "10 requests per 1s (burst 20)");
    }

    #[test]
    fn bad_limits_are_all_reported_with_their_path() {
        let d = doc(r#"rate_limits = [
                { key = "cookie", requests = 1, per = "1s" },
                { key = "ip", requests = 0, per = "1s" },
                { key = "ip", requests = 1, per = "soon" },
                { key = "ip", per = "1s" },
                { key = "caller", plan = true, requests = 5 },
                { key = "ip", requests = 1, per = "1s", burst = 0 },
                { key = "ip", requests = 5, per = "3ns" },
                { key = "route", requests = 5, per = "1m" },
            ]"#);
        let mut problems = Vec::new();
        let rules = parse_limits(&d.rate_limits, "rate_limits", &mut problems);
        assert_eq!(rules.len(), 1, "only the last entry is valid");
        assert_eq!(rules[0].key, LimitKeyKind::Route);
        let want = [
            "rate_limits[0].key",
            "rate_limits[1]: requests must be",
            "rate_limits[2].per",
            "rate_limits[3]: requests and per are required",
            "rate_limits[4]: plan = true",
            "rate_limits[5].burst",
            "rate_limits[6]: requests must be",
        ];
        assert_eq!(problems.len(), want.len(), "{problems:?}");
        for (problem, prefix) in problems.iter().zip(want) {
            assert!(problem.starts_with(prefix), "{problem} !~ {prefix}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<Doc>(r#"rate_limits = [{ key = "ip", rate = 5 }]"#);
        assert!(err.is_err());
    }

    #[test]
    fn plans_hold_several_quotas_and_fall_back_to_default() {
        let d = doc(r#"
            [plans.free]
            limits = [{ requests = 100, per = "1m" }, { requests = 1000, per = "1day" }]
            [plans.default]
            limits = [{ requests = 10, per = "1m" }]
            [plans.empty]
            limits = []
        "#);
        let mut problems = Vec::new();
        let plans = parse_plans(&d.plans, &mut problems);
        assert_eq!(
            problems,
            vec!["plans.empty.limits: a plan needs at least one limit"]
        );
        assert_eq!(plans.quotas(Some("free")).len(), 2);
        assert_eq!(
            plans.quotas(Some("free"))[1].per,
            Duration::from_secs(86_400)
        );
        assert_eq!(plans.quotas(None)[0].requests.get(), 10);
        assert_eq!(plans.quotas(Some("gold"))[0].requests.get(), 10);
        assert!(plans.contains("free") && !plans.contains("gold"));
        assert!(Plans::default().quotas(Some("free")).is_empty());
    }

    #[test]
    fn store_settings_default_and_refuse_zero() {
        let mut problems = Vec::new();
        assert_eq!(
            parse_store(&doc("").rate_limit_store, &mut problems),
            StoreSettings::default()
        );
        let set = doc("[rate_limit_store]\nmax_keys = 5000\nsweep_interval = \"30s\"");
        let settings = parse_store(&set.rate_limit_store, &mut problems);
        assert_eq!(settings.max_keys, 5000);
        assert_eq!(settings.sweep_interval, Duration::from_secs(30));
        assert!(problems.is_empty(), "{problems:?}");
        let bad = doc("[rate_limit_store]\nmax_keys = 0\nsweep_interval = \"0s\"");
        assert_eq!(
            parse_store(&bad.rate_limit_store, &mut problems),
            StoreSettings::default()
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
