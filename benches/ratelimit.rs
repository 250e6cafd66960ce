//! The cost of one rate-limit check: an existing bucket, a new bucket, a new value past the key
//! cap, a two-rule policy, and plain governor with String keys alongside as the reference.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota};
use protogate::middleware::ratelimit::{
    BucketKey, BucketValue, LimitKeyKind, LimitRule, LocalStore, Plans, Quota, RateLimits,
    RateStore, Requester,
};

/// Generous enough that every check in the bench is allowed: the cost of a pass is measured.
fn quota() -> Quota {
    Quota::new(1_000_000_000, Duration::from_secs(1)).expect("bench quota")
}

fn ip(n: u32) -> BucketKey<'static> {
    BucketKey {
        scope: "bench#0:ip",
        value: BucketValue::Ip(IpAddr::V4(Ipv4Addr::from(n))),
    }
}

fn checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_check");
    let q = quota();

    let store = LocalStore::default();
    let known = ip(7);
    store.check(&known, &q);
    group.bench_function("existing_key", |b| {
        b.iter(|| std::hint::black_box(store.check(std::hint::black_box(&known), &q)))
    });

    // The same bucket through governor directly, with the String key already built.
    let plain = DefaultKeyedRateLimiter::<String>::keyed(
        GovernorQuota::per_second(q.requests).allow_burst(q.burst),
    );
    let text = known.value.to_string();
    group.bench_function("governor_existing_key", |b| {
        b.iter(|| std::hint::black_box(plain.check_key(std::hint::black_box(&text))))
    });

    // New keys: a fresh store every 100,000 keys, its set-up and drop outside the timing, so
    // memory stays small however many iterations criterion asks for.
    group.bench_function("new_key", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(100_000);
                let store = LocalStore::default();
                let start = Instant::now();
                for i in 0..n as u32 {
                    std::hint::black_box(store.check(&ip(i), &q));
                }
                spent += start.elapsed();
                drop(store);
                left -= n;
            }
            spent
        })
    });

    // Past the cap: the lookup misses, the sweep is skipped (one ran within the last second),
    // and the shared overflow bucket answers.
    let capped = LocalStore::new(1_000);
    for i in 0..1_000 {
        capped.check(&ip(i), &q);
    }
    let mut next = 1_000_u32;
    group.bench_function("new_key_past_cap", |b| {
        b.iter(|| {
            next = next.wrapping_add(1).max(1_000);
            std::hint::black_box(capped.check(&ip(next), &q))
        })
    });

    // A policy of two rules (per caller and per IP) for a known caller: what a request pays.
    let limits = RateLimits::new(
        "/v1/items/{id}",
        &[
            LimitRule {
                key: LimitKeyKind::Caller,
                quota: Some(q),
            },
            LimitRule {
                key: LimitKeyKind::Ip,
                quota: Some(q),
            },
        ],
        &Plans::default(),
    );
    let who = Requester {
        api_key: Some("demo"),
        subject: None,
        plan: None,
        ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        route: "/v1/items/{id}",
    };
    let policy_store = LocalStore::default();
    group.bench_function("policy_two_rules", |b| {
        b.iter(|| std::hint::black_box(limits.check(&policy_store, std::hint::black_box(&who))))
    });
    group.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
