//! One policy's limits applied to one request: which buckets it counts against, and the verdict.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{
    denial_error, stricter, BucketKey, BucketValue, Decision, LimitKeyKind, LimitRule, Plans,
    Quota, RateStore,
};
use crate::error::GatewayError;

/// What the limits need to know about a request, filled in by authentication and routing.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The name of the API key that authenticated the request.
    pub api_key: Option<&'a str>,
    /// The subject of the JWT that authenticated the request.
    pub subject: Option<&'a str>,
    /// The caller's plan; `None` (or a plan not configured) means the `default` plan.
    pub plan: Option<&'a str>,
    /// The client address, as resolved through the trusted proxies.
    pub ip: IpAddr,
    /// The matched route's template (never the raw path, which a client can vary at will).
    pub route: &'a str,
}

impl<'a> Requester<'a> {
    /// The value a limit of `kind` counts this request as; `None` if it does not apply.
    fn value(&self, kind: LimitKeyKind) -> Option<BucketValue<'a>> {
        match kind {
            LimitKeyKind::Caller => Some(
                self.api_key
                    .map(BucketValue::ApiKey)
                    .or(self.subject.map(BucketValue::Subject))
                    .unwrap_or(BucketValue::Ip(self.ip)),
            ),
            LimitKeyKind::ApiKey => self.api_key.map(BucketValue::ApiKey),
            LimitKeyKind::Subject => self.subject.map(BucketValue::Subject),
            LimitKeyKind::Ip => Some(BucketValue::Ip(self.ip)),
            LimitKeyKind::Route => Some(BucketValue::Route(self.route)),
            LimitKeyKind::Global => Some(BucketValue::Global),
        }
    }
}

/// A quota with the store scope its buckets live under, spelled once when the policy is built.
#[derive(Debug, Clone)]
struct Scoped {
    scope: Box<str>,
    quota: Quota,
}

#[derive(Debug, Clone)]
enum Quotas {
    Fixed(Scoped),
    /// By plan name; callers on an unknown plan or none use `default` (empty: not limited).
    Plan {
        plans: HashMap<String, Vec<Scoped>>,
        default: Vec<Scoped>,
    },
}

#[derive(Debug, Clone)]
struct Compiled {
    key: LimitKeyKind,
    quotas: Quotas,
}

/// The outcome for a request: the decision to report in headers and, on a denial, the 429.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Every limit had a token; the decision is the one with the fewest left.
    Allow(Decision),
    /// A limit is exhausted; the error names it.
    Deny(Decision, GatewayError),
}

impl Verdict {
    /// The decision the `RateLimit-*` headers report.
    pub fn decision(&self) -> &Decision {
        match self {
            Verdict::Allow(d) | Verdict::Deny(d, _) => d,
        }
    }
}

/// One policy's limits (a route's, a service's or the global one), ready to apply: the store
/// scopes are fixed here, so checking a request formats nothing.
#[derive(Debug, Clone)]
pub struct RateLimits {
    rules: Vec<Compiled>,
}

fn scoped(prefix: &str, quota: Quota) -> Scoped {
    Scoped {
        // The quota is part of the scope, so a shared store starts a changed limit afresh.
        scope: format!(
            "{prefix}|{}/{}ns/{}",
            quota.requests,
            quota.per.as_nanos(),
            quota.burst
        )
        .into(),
        quota,
    }
}

impl RateLimits {
    /// The limits `rules` of the policy named `policy` (a stable name such as the route pattern),
    /// with plan-based rules resolved against `plans`.
    pub fn new(policy: &str, rules: &[LimitRule], plans: &Plans) -> RateLimits {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let prefix = format!("{policy}#{i}:{}", rule.key.as_str());
                let quotas = match rule.quota {
                    Some(quota) => Quotas::Fixed(scoped(&prefix, quota)),
                    None => {
                        let of_plan = |name: &str, quotas: &[Quota]| -> Vec<Scoped> {
                            quotas
                                .iter()
                                .map(|q| scoped(&format!("{prefix}@{name}"), *q))
                                .collect()
                        };
                        let plans_map: HashMap<String, Vec<Scoped>> = plans
                            .iter()
                            .map(|(name, quotas)| (name.to_owned(), of_plan(name, quotas)))
                            .collect();
                        let default = plans_map
                            .get(super::DEFAULT_PLAN)
                            .cloned()
                            .unwrap_or_default();
                        Quotas::Plan {
                            plans: plans_map,
                            default,
                        }
                    }
                };
                Compiled {
                    key: rule.key,
                    quotas,
                }
            })
            .collect();
        RateLimits { rules }
    }

    /// Whether the policy has no limits at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Takes a token from every bucket the request counts against; `None` when no limit applies
    /// (no headers then). Every limit is charged even after one refuses, as Envoy does, so the
    /// headers report the true state of each.
    pub fn check(&self, store: &dyn RateStore, who: &Requester<'_>) -> Option<Verdict> {
        let mut reported: Option<Decision> = None;
        let mut denied: Option<(Decision, Quota, BucketValue<'_>)> = None;
        for rule in &self.rules {
            let Some(value) = who.value(rule.key) else {
                continue;
            };
            let quotas: &[Scoped] = match &rule.quotas {
                Quotas::Fixed(one) => std::slice::from_ref(one),
                Quotas::Plan { plans, default } => {
                    who.plan.and_then(|name| plans.get(name)).unwrap_or(default)
                }
            };
            for scoped in quotas {
                let bucket = BucketKey {
                    scope: &scoped.scope,
                    value,
                };
                let decision = store.check(&bucket, &scoped.quota);
                if !decision.allowed
                    && denied.as_ref().is_none_or(|(d, _, _)| {
                        decision.retry_after.unwrap_or_default() > d.retry_after.unwrap_or_default()
                    })
                {
                    denied = Some((decision, scoped.quota, value));
                }
                reported = Some(match reported {
                    Some(r) => stricter(r, decision),
                    None => decision,
                });
            }
        }
        let decision = reported?;
        Some(match denied {
            Some((d, quota, value)) => Verdict::Deny(decision, denial_error(&quota, &value, &d)),
            None => Verdict::Allow(decision),
        })
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::super::LocalStore;
    use super::*;

    fn quota(requests: u32, per_secs: u64) -> Quota {
        Quota::new(requests, Duration::from_secs(per_secs)).expect("quota")
    }

    fn rule(key: LimitKeyKind, quota: Option<Quota>) -> LimitRule {
        LimitRule { key, quota }
    }

    fn requester(api_key: Option<&'static str>, plan: Option<&'static str>) -> Requester<'static> {
        Requester {
            api_key,
            subject: None,
            plan,
            ip: "192.0.2.7".parse().expect("ip"),
            route: "/v1/items/{id}",
        }
    }

    fn store() -> (LocalStore<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (LocalStore::with_clock(1_000, clock.clone()), clock)
    }

    fn allowed(v: &Option<Verdict>) -> bool {
        matches!(v, Some(Verdict::Allow(_)))
    }

    #[test]
    fn several_limits_apply_and_the_tightest_is_reported() {
        let (store, clock) = store();
        // 5 a second per caller, but only 3 a minute on the whole route.
        let limits = RateLimits::new(
            "/v1/items/{id}",
            &[
                rule(LimitKeyKind::Caller, Some(quota(5, 1))),
                rule(LimitKeyKind::Route, Some(quota(3, 60))),
            ],
            &Plans::default(),
        );
        let demo = requester(Some("demo"), None);
        let first = limits.check(&store, &demo).expect("limited");
        assert_eq!(first.decision().limit, 3, "the route limit has fewer left");
        assert_eq!(first.decision().remaining, 2);
        assert!(allowed(&limits.check(&store, &demo)));
        // Another caller shares the route bucket but has its own caller bucket.
        assert!(allowed(
            &limits.check(&store, &requester(Some("other"), None))
        ));
        let Some(Verdict::Deny(decision, err)) = limits.check(&store, &demo) else {
            panic!("the route limit is spent");
        };
        assert_eq!(decision.remaining, 0);
        assert_eq!(decision.retry_after, Some(Duration::from_secs(20)));
        assert_eq!(
            err.message(),
            "rate limit exceeded: 3 requests per 1m for route \"/v1/items/{id}\"; retry in 20s"
        );
        clock.advance(Duration::from_secs(20));
        assert!(allowed(&limits.check(&store, &demo)));
    }

    #[test]
    fn plan_rules_use_the_callers_plan_or_default() {
        let (store, _clock) = store();
        let plans = Plans::new([
            ("free".to_owned(), vec![quota(2, 60), quota(10, 86_400)]),
            ("pro".to_owned(), vec![quota(100, 60)]),
            ("default".to_owned(), vec![quota(1, 60)]),
        ]);
        let limits = RateLimits::new("p", &[rule(LimitKeyKind::Caller, None)], &plans);

        let free = requester(Some("f"), Some("free"));
        let d = limits.check(&store, &free).expect("limited");
        assert_eq!((d.decision().limit, d.decision().remaining), (2, 1));
        assert!(allowed(&limits.check(&store, &free)));
        let Some(Verdict::Deny(_, err)) = limits.check(&store, &free) else {
            panic!("free allows 2 a minute");
        };
        assert!(err
            .message()
            .contains("2 requests per 1m for API key \"f\""));

        let pro = requester(Some("p"), Some("pro"));
        assert_eq!(
            limits.check(&store, &pro).map(|v| v.decision().remaining),
            Some(99)
        );

        // No plan, or one not configured: the default plan, keyed by IP when anonymous.
        for who in [requester(None, None), requester(Some("g"), Some("gold"))] {
            assert!(allowed(&limits.check(&store, &who)));
            assert!(matches!(
                limits.check(&store, &who),
                Some(Verdict::Deny(..))
            ));
        }
    }

    #[test]
    fn plan_rules_without_a_default_plan_do_not_limit_planless_callers() {
        let (store, _clock) = store();
        let plans = Plans::new([("free".to_owned(), vec![quota(1, 60)])]);
        let limits = RateLimits::new("p", &[rule(LimitKeyKind::Caller, None)], &plans);
        for _ in 0..5 {
            assert!(limits.check(&store, &requester(Some("x"), None)).is_none());
        }
    }

    #[test]
    fn each_key_kind_counts_what_it_names() {
        let (store, _clock) = store();
        let one = Some(quota(1, 60));
        let check = |kind: LimitKeyKind, a: Requester<'static>, b: Requester<'static>| {
            let limits = RateLimits::new(kind.as_str(), &[rule(kind, one)], &Plans::default());
            let first = limits.check(&store, &a).map(|v| v.decision().allowed);
            let second = limits.check(&store, &b).map(|v| v.decision().allowed);
            (first, second)
        };
        let base = requester(Some("k1"), None);
        let other_key = requester(Some("k2"), None);
        let other_ip = Requester {
            ip: "198.51.100.1".parse().expect("ip"),
            ..base
        };
        let other_route = Requester {
            route: "/v1/other",
            ..base
        };
        let with_sub = |s: &'static str| Requester {
            api_key: None,
            subject: Some(s),
            ..base
        };
        let anonymous = requester(None, None);

        // Same key twice: the second is refused; a different value gets its own bucket.
        assert_eq!(
            check(LimitKeyKind::ApiKey, base, base),
            (Some(true), Some(false))
        );
        assert_eq!(check(LimitKeyKind::Ip, other_key, base).1, Some(false));
        assert_eq!(check(LimitKeyKind::Route, other_ip, base).1, Some(false));
        assert_eq!(
            check(LimitKeyKind::Global, other_route, other_ip).1,
            Some(false)
        );
        assert_eq!(
            check(LimitKeyKind::Subject, with_sub("a"), with_sub("b")),
            (Some(true), Some(true))
        );
        // An API key limit does not count requests without one; a subject limit likewise.
        assert_eq!(
            check(LimitKeyKind::ApiKey, anonymous, anonymous),
            (None, None)
        );
        // Callers are counted by credential, anonymous ones by address.
        assert_eq!(
            check(LimitKeyKind::Caller, base, other_key),
            (Some(true), Some(true))
        );
        assert_eq!(
            check(LimitKeyKind::Caller, anonymous, anonymous).1,
            Some(false)
        );
        assert_eq!(
            check(LimitKeyKind::Caller, with_sub("s"), with_sub("s")).1,
            Some(false)
        );
    }

    #[test]
    fn no_rules_means_no_verdict() {
        let (store, _clock) = store();
        let limits = RateLimits::new("p", &[], &Plans::default());
        assert!(limits.is_empty());
        assert!(limits.check(&store, &requester(None, None)).is_none());
    }
}
