//! The in-process bucket store: governor keyed limiters, idle buckets swept, total keys capped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::RateLimiter;

use super::{BucketKey, Decision, Quota, RateStore};

/// Default cap on buckets held at once, over all limits.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// The key of the bucket shared by new values once the cap is reached; real keys all carry a
/// `kind:` prefix or are `global`, so none can equal it.
const OVERFLOW_KEY: &str = "*overflow";

thread_local! {
    /// Reused to spell a bucket's key, so checking an existing bucket allocates nothing.
    static KEY_TEXT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// At the cap, a request sweeps only if no sweep ran for this long, so a flood of new keys does
/// not make every request walk every bucket.
const CAP_SWEEP_GAP: Duration = Duration::from_secs(1);

/// A key buffer that grew past this (a very long caller name) is released after use.
const KEY_TEXT_KEEP: usize = 1024;

/// The buckets of one limit, shared between governor (which updates them) and the store (which
/// looks keys up and counts them).
#[derive(Debug)]
struct Buckets(Arc<DashMapStateStore<String>>);

impl StateStore for Buckets {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        StateStore::measure_and_replace(&*self.0, key, f)
    }
}

impl ShrinkableKeyedStateStore<String> for Buckets {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.0, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One limit's keyed limiter and the quota it was made for.
#[derive(Debug)]
struct Limit<C: Clock> {
    quota: Quota,
    buckets: Arc<DashMapStateStore<String>>,
    overflow: String,
    limiter: RateLimiter<String, Buckets, C, StateInformationMiddleware>,
}

impl<C: Clock> Limit<C> {
    fn new(quota: Quota, clock: C) -> Self {
        let buckets = Arc::new(DashMapStateStore::default());
        let limiter = RateLimiter::<_, _, _, NoOpMiddleware<C::Instant>>::new(
            quota.governor(),
            Buckets(Arc::clone(&buckets)),
            clock,
        )
        .with_middleware::<StateInformationMiddleware>();
        Limit {
            quota,
            buckets,
            overflow: OVERFLOW_KEY.to_owned(),
            limiter,
        }
    }

    fn check(&self, key: &String) -> Decision {
        let burst = self.quota.burst.get();
        let refill = self.quota.refill_interval();
        match self.limiter.check_key(key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit: burst,
                    remaining,
                    // Full again once the spent tokens are back; exact to within one refill.
                    reset: refill.saturating_mul(burst.saturating_sub(remaining)),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision {
                    allowed: false,
                    limit: burst,
                    remaining: 0,
                    // One token back after `wait`, the other burst - 1 one refill apart.
                    reset: wait.saturating_add(refill.saturating_mul(burst - 1)),
                    retry_after: Some(wait),
                }
            }
        }
    }
}

/// Buckets in this process's memory: one governor keyed limiter per limit scope, made on first
/// use. Idle buckets are dropped by [`LocalStore::sweep`]; past `max_keys` buckets, new values of a
/// limit share one overflow bucket instead of growing memory.
pub struct LocalStore<C: Clock = DefaultClock> {
    clock: C,
    max_keys: usize,
    limits: RwLock<HashMap<Box<str>, Arc<Limit<C>>>>,
    /// Buckets held, counted on insert and recounted by each sweep (may run a little high).
    keys: AtomicUsize,
    /// Held while sweeping, so a request that meets the cap sweeps only if nobody else is; holds
    /// when the last sweep ran.
    sweeping: Mutex<Option<C::Instant>>,
}

impl<C: Clock> fmt::Debug for LocalStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("max_keys", &self.max_keys)
            .field("keys", &self.keys.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    /// A store on the monotonic clock holding at most `max_keys` buckets (at least 1).
    pub fn new(max_keys: usize) -> Self {
        Self::with_clock(max_keys, DefaultClock::default())
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_KEYS)
    }
}

impl<C: Clock + Clone + Send + Sync + 'static> LocalStore<C> {
    /// A store reading time from `clock` (tests pass governor's `FakeRelativeClock`).
    pub fn with_clock(max_keys: usize, clock: C) -> Self {
        LocalStore {
            clock,
            max_keys: max_keys.max(1),
            limits: RwLock::new(HashMap::new()),
            keys: AtomicUsize::new(0),
            sweeping: Mutex::new(None),
        }
    }

    /// Buckets held now, over all limits (overflow buckets included).
    pub fn len(&self) -> usize {
        self.read_limits().values().map(|l| l.buckets.len()).sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every bucket that has been full again for one refill interval (so a bucket left idle
    /// for its quota's period plus one interval is gone), and the limiters left without
    /// buckets; returns the buckets still held.
    pub fn sweep(&self) -> usize {
        let mut last = self.sweeping.lock().unwrap_or_else(PoisonError::into_inner);
        self.sweep_locked(&mut last)
    }

    fn sweep_locked(&self, last: &mut Option<C::Instant>) -> usize {
        *last = Some(self.clock.now());
        let limits: Vec<Arc<Limit<C>>> = self.read_limits().values().cloned().collect();
        let mut held = 0;
        for limit in &limits {
            limit.limiter.retain_recent();
            limit.limiter.shrink_to_fit();
            held += limit.buckets.len();
        }
        drop(limits);
        // An empty limiter is rebuilt on next use. One a request holds (cloned under the read
        // lock, which this write lock excludes) stays, or the request's token would be lost.
        self.write_limits()
            .retain(|_, limit| !limit.buckets.is_empty() || Arc::strong_count(limit) > 1);
        self.keys.store(held, Ordering::Relaxed);
        held
    }

    /// Sweeps every `every` on the current tokio runtime until the store is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let store: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                // Sweeping a million keys takes milliseconds; keep it off the async workers.
                let swept = tokio::task::spawn_blocking(move || store.sweep()).await;
                if let Ok(held) = swept {
                    tracing::debug!(held, "rate-limit buckets swept");
                }
            }
        })
    }

    fn read_limits(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, Arc<Limit<C>>>> {
        self.limits.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_limits(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, Arc<Limit<C>>>> {
        self.limits.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limiter for `scope` under `quota`; a changed quota (a reload) starts the scope afresh.
    fn limit(&self, scope: &str, quota: &Quota) -> Arc<Limit<C>> {
        if let Some(limit) = self.read_limits().get(scope) {
            if limit.quota == *quota {
                return Arc::clone(limit);
            }
        }
        let mut limits = self.write_limits();
        match limits.get(scope) {
            Some(limit) if limit.quota == *quota => Arc::clone(limit),
            _ => {
                let limit = Arc::new(Limit::new(*quota, self.clock.clone()));
                if let Some(old) = limits.insert(scope.into(), Arc::clone(&limit)) {
                    self.keys.fetch_sub(
                        old.buckets.len().min(self.keys.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                }
                limit
            }
        }
    }

    /// Whether a new bucket may be made; at the cap, one sweep is tried first.
    fn room_for_one(&self) -> bool {
        if self.keys.load(Ordering::Relaxed) < self.max_keys {
            return true;
        }
        // Only one request sweeps; the others meeting the cap meanwhile go to overflow.
        let Ok(mut last) = self.sweeping.try_lock() else {
            return false;
        };
        let now = self.clock.now();
        if let Some(at) = *last {
            if Duration::from(now.duration_since(at)) < CAP_SWEEP_GAP {
                return false;
            }
        }
        self.sweep_locked(&mut last) < self.max_keys
    }

    fn check_text(&self, limit: &Limit<C>, key: &String) -> Decision {
        if limit.buckets.contains_key(key.as_str()) {
            return limit.check(key);
        }
        if self.room_for_one() {
            self.keys.fetch_add(1, Ordering::Relaxed);
            limit.check(key)
        } else {
            // Over the cap: every new value of this limit shares one bucket, so memory stays
            // bounded and a flood of fresh keys is limited as one caller.
            limit.check(&limit.overflow)
        }
    }
}

impl<C: Clock + Clone + Send + Sync + 'static> RateStore for LocalStore<C> {
    fn check(&self, bucket: &BucketKey<'_>, quota: &Quota) -> Decision {
        let limit = self.limit(bucket.scope, quota);
        let reused = KEY_TEXT.with(|cell| {
            let mut text = cell.try_borrow_mut().ok()?;
            text.clear();
            write!(text, "{}", bucket.value).ok()?;
            let decision = self.check_text(&limit, &text);
            if text.capacity() > KEY_TEXT_KEEP {
                *text = String::new();
            }
            Some(decision)
        });
        // Only if the buffer is unusable (never expected): spell the key afresh.
        reused.unwrap_or_else(|| self.check_text(&limit, &bucket.value.to_string()))
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use std::net::{IpAddr, Ipv4Addr};

    use governor::clock::FakeRelativeClock;

    use super::super::BucketValue;
    use super::*;

    fn store(max_keys: usize) -> (LocalStore<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (LocalStore::with_clock(max_keys, clock.clone()), clock)
    }

    fn quota(requests: u32, per_ms: u64, burst: u32) -> Quota {
        Quota::new(requests, Duration::from_millis(per_ms))
            .and_then(|q| q.with_burst(burst))
            .expect("quota")
    }

    fn key(scope: &str, name: &'static str) -> BucketKey<'static> {
        let scope: &'static str = Box::leak(scope.to_owned().into_boxed_str());
        BucketKey {
            scope,
            value: BucketValue::ApiKey(name),
        }
    }

    fn ip_key(n: u32) -> BucketKey<'static> {
        BucketKey {
            scope: "ips",
            value: BucketValue::Ip(IpAddr::V4(Ipv4Addr::from(n))),
        }
    }

    #[test]
    fn burst_is_spent_then_tokens_refill_one_interval_apart() {
        let (store, clock) = store(100);
        // 10 per second (one token each 100ms), bucket of 3.
        let q = quota(10, 1_000, 3);
        let k = key("s", "demo");
        let remaining: Vec<u32> = (0..3).map(|_| store.check(&k, &q).remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let denied = store.check(&k, &q);
        assert!(!denied.allowed);
        assert_eq!(denied.limit, 3);
        assert_eq!(denied.retry_after, Some(Duration::from_millis(100)));
        assert_eq!(denied.reset, Duration::from_millis(300));

        clock.advance(Duration::from_millis(50));
        let early = store.check(&k, &q);
        assert_eq!(early.retry_after, Some(Duration::from_millis(50)));

        clock.advance(Duration::from_millis(50));
        let back = store.check(&k, &q);
        assert!(back.allowed, "one token is back after one interval");
        assert_eq!(back.remaining, 0);
        assert!(!store.check(&k, &q).allowed, "and only one");

        clock.advance(Duration::from_secs(1));
        let full = store.check(&k, &q);
        assert_eq!((full.allowed, full.remaining), (true, 2));
        assert_eq!(full.reset, Duration::from_millis(100));
    }

    #[test]
    fn values_and_scopes_have_their_own_buckets() {
        let (store, _clock) = store(100);
        let q = quota(1, 1_000, 1);
        assert!(store.check(&key("a", "x"), &q).allowed);
        assert!(!store.check(&key("a", "x"), &q).allowed);
        assert!(store.check(&key("a", "y"), &q).allowed, "another value");
        assert!(store.check(&key("b", "x"), &q).allowed, "another scope");
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn a_changed_quota_starts_the_scope_afresh() {
        let (store, _clock) = store(100);
        let k = key("s", "x");
        assert!(store.check(&k, &quota(1, 1_000, 1)).allowed);
        assert!(!store.check(&k, &quota(1, 1_000, 1)).allowed);
        let bigger = quota(5, 1_000, 5);
        assert_eq!(store.check(&k, &bigger).remaining, 4);
    }

    #[test]
    fn idle_buckets_are_swept_away() {
        let (store, clock) = store(usize::MAX);
        let q = quota(10, 1_000, 10);
        let n = 200_000;
        for i in 0..n {
            assert!(store.check(&ip_key(i), &q).allowed);
        }
        assert_eq!(store.len(), n as usize);
        assert_eq!(
            store.sweep(),
            n as usize,
            "still spent: nothing is idle yet"
        );

        clock.advance(Duration::from_secs(1));
        assert_eq!(store.sweep(), 0);
        assert!(store.is_empty());
        assert!(store.read_limits().is_empty(), "the empty limiter went too");
    }

    #[test]
    fn past_the_cap_new_values_share_one_overflow_bucket() {
        let (store, clock) = store(1_000);
        let q = quota(1, 60_000, 1);
        for i in 0..1_000 {
            assert!(store.check(&ip_key(i), &q).allowed);
        }
        assert_eq!(store.len(), 1_000);
        // New values now share one bucket: the first passes, the rest are refused together.
        assert!(store.check(&ip_key(5_000), &q).allowed);
        for i in 5_001..50_000 {
            assert!(!store.check(&ip_key(i), &q).allowed);
        }
        assert_eq!(store.len(), 1_001, "the cap plus the overflow bucket");
        // Known values keep their own buckets.
        assert!(!store.check(&ip_key(3), &q).allowed);

        // Once the buckets are full again (governor keeps them one refill interval longer) the
        // sweep at the cap frees room for new values again.
        clock.advance(Duration::from_secs(120));
        assert!(store.check(&ip_key(60_000), &q).allowed);
        assert!(!store.check(&ip_key(60_000), &q).allowed, "its own bucket");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn the_sweeper_task_stops_with_the_store() {
        // Paused time: the sleeps below advance tokio's clock, not the wall clock.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let clock = FakeRelativeClock::default();
            let store = Arc::new(LocalStore::with_clock(100, clock.clone()));
            let q = quota(1, 1_000, 1);
            store.check(&key("s", "x"), &q);
            let task = store.spawn_sweeper(Duration::from_millis(5));
            clock.advance(Duration::from_secs(2));
            for _ in 0..200 {
                if store.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(store.is_empty(), "the sweeper dropped the idle bucket");
            drop(store);
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("sweeper ends once the store is gone")
                .expect("sweeper task");
        });
    }
}
