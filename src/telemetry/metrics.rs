//! Prometheus metrics for the data plane: requests and latency by route template, upstream latency
//! by gRPC method and code, open streams, and requests the edge refused, in OpenMetrics text.
//!
//! Label values come from bounded sets only (route templates, method names from the descriptors,
//! known HTTP methods, status codes, gRPC code names), so no client can grow a series count by
//! varying what it sends. Template and method names are the routes' own `Arc<str>`s, made when the
//! snapshot is built, so recording a request clones reference counts and takes no lock of ours.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::error::{code_name, GatewayError};
use crate::stream::StreamStats;

/// The media type [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram bounds in seconds: a gateway hop on loopback takes tens of microseconds, a slow
/// backend seconds; roughly 2.5x apart so each decade has three buckets.
const BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The route label of a request that matched no route.
const NO_ROUTE: &str = "-";

/// The code label of an upstream call dropped before it finished (the gateway's deadline passed
/// or the client went away).
const DROPPED: &str = "CANCELLED";

/// How a request reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Plain HTTP: unary calls in any format and HTTP response or request streams.
    Http,
    /// A WebSocket upgrade (counted once, with the upgrade's status).
    Websocket,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Websocket => "websocket",
        }
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Why the edge refused a request before it reached a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Missing or bad credentials (401).
    Unauthenticated,
    /// Authenticated but not allowed (403).
    Forbidden,
    /// Over a rate limit (429).
    RateLimited,
    /// The client address is denied.
    IpDenied,
    /// A CORS request from an origin the route does not allow.
    CorsDenied,
    /// Request headers over the limit (431).
    HeadersTooLarge,
    /// Request body over the limit (413).
    BodyTooLarge,
    /// The connection limit was reached.
    TooManyConnections,
}

impl Rejection {
    /// Every reason, so each series exists (at 0) from the first scrape.
    const ALL: [Rejection; 8] = [
        Rejection::Unauthenticated,
        Rejection::Forbidden,
        Rejection::RateLimited,
        Rejection::IpDenied,
        Rejection::CorsDenied,
        Rejection::HeadersTooLarge,
        Rejection::BodyTooLarge,
        Rejection::TooManyConnections,
    ];

    /// The label value, snake_case.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unauthenticated => "unauthenticated",
            Rejection::Forbidden => "forbidden",
            Rejection::RateLimited => "rate_limited",
            Rejection::IpDenied => "ip_denied",
            Rejection::CorsDenied => "cors_denied",
            Rejection::HeadersTooLarge => "headers_too_large",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::TooManyConnections => "too_many_connections",
        }
    }
}

impl EncodeLabelValue for Rejection {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    method: &'static str,
    status: u16,
    protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LatencyLabels {
    route: Arc<str>,
    protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    grpc_method: Arc<str>,
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectionLabels {
    reason: Rejection,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The gateway's metrics; one per listener, shared by every snapshot. Cloning shares them.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histograms<LatencyLabels>,
    upstream: Histograms<UpstreamLabels>,
    rejections: Family<RejectionLabels, Counter>,
    no_route: Arc<str>,
    /// Nanoseconds the request workers have spent spinning, added by each spin as it ends.
    spun: Arc<AtomicU64>,
}

impl Metrics {
    /// Metrics whose stream gauges read `streams` at each scrape.
    pub fn new(streams: Arc<StreamStats>) -> Metrics {
        let mut registry = Registry::with_prefix("protogate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, by route template, HTTP method, status and protocol",
            requests.clone(),
        );
        let latency = Histograms::<LatencyLabels>::new_with_constructor(histogram as fn() -> _);
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its response headers, by route template",
            Unit::Seconds,
            latency.clone(),
        );
        let upstream = Histograms::<UpstreamLabels>::new_with_constructor(histogram as fn() -> _);
        registry.register_with_unit(
            "upstream_duration",
            "Time from sending a call to the backend's answer (response headers for streams)",
            Unit::Seconds,
            upstream.clone(),
        );
        let rejections = Family::<RejectionLabels, Counter>::default();
        for reason in Rejection::ALL {
            // Created now so every reason is a series at 0 before the first refusal.
            drop(rejections.get_or_create(&RejectionLabels { reason }));
        }
        registry.register(
            "rejections",
            "Requests the edge refused before any backend saw them, by reason",
            rejections.clone(),
        );
        registry.register_collector(Box::new(StreamGauges(streams)));
        let spun = Arc::new(AtomicU64::new(0));
        registry.register_collector(Box::new(SpinTime(spun.clone())));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                latency,
                upstream,
                rejections,
                no_route: Arc::from(NO_ROUTE),
                spun,
            }),
        }
    }

    /// The counter the request workers add their spinning time to, in nanoseconds.
    pub fn idle_spin(&self) -> Arc<AtomicU64> {
        self.inner.spun.clone()
    }

    /// Counts one request and its latency; `route` is the matched template, None for no match.
    pub fn request(
        &self,
        route: Option<&Arc<str>>,
        method: &Method,
        status: StatusCode,
        protocol: Protocol,
        elapsed: Duration,
    ) {
        let inner = &*self.inner;
        let route = match route {
            Some(template) => template.clone(),
            None => inner.no_route.clone(),
        };
        let latency = LatencyLabels {
            route: route.clone(),
            protocol,
        };
        inner
            .requests
            .get_or_create(&RequestLabels {
                route,
                method: method_label(method),
                status: status.as_u16(),
                protocol,
            })
            .inc();
        inner
            .latency
            .get_or_create(&latency)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a request the edge refused.
    pub fn reject(&self, reason: Rejection) {
        self.inner
            .rejections
            .get_or_create(&RejectionLabels { reason })
            .inc();
    }

    /// A timer for calls to `grpc_method` (its full name, e.g. `shop.v1.Catalog.GetProduct`).
    pub fn upstream(&self, grpc_method: &Arc<str>) -> UpstreamTimer {
        UpstreamTimer {
            family: self.inner.upstream.clone(),
            method: grpc_method.clone(),
        }
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }
}

/// Times upstream calls of one gRPC method; cheap to clone (two reference counts).
#[derive(Debug, Clone)]
pub struct UpstreamTimer {
    family: Histograms<UpstreamLabels>,
    method: Arc<str>,
}

impl UpstreamTimer {
    /// Starts timing one call; the returned guard records it when finished or dropped.
    pub fn start(&self) -> UpstreamCall<'_> {
        UpstreamCall {
            timer: self,
            started: Instant::now(),
            done: false,
        }
    }

    fn observe(&self, code: &'static str, elapsed: Duration) {
        self.family
            .get_or_create(&UpstreamLabels {
                grpc_method: self.method.clone(),
                code,
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// One upstream call being timed. Dropped unfinished, it is recorded as `CANCELLED`: the gateway
/// gave up on it (deadline or client gone), so the backend never answered this call.
#[derive(Debug)]
pub struct UpstreamCall<'a> {
    timer: &'a UpstreamTimer,
    started: Instant,
    done: bool,
}

impl UpstreamCall<'_> {
    /// Records the call with the outcome's gRPC code (`OK`, or the error's code; a backend that
    /// could not be reached is `UNAVAILABLE`).
    pub fn finish<T>(mut self, outcome: &Result<T, GatewayError>) {
        let code = match outcome {
            Ok(_) => "OK",
            Err(err) => code_name(err.code()),
        };
        self.done = true;
        self.timer.observe(code, self.started.elapsed());
    }
}

impl Drop for UpstreamCall<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.timer.observe(DROPPED, self.started.elapsed());
        }
    }
}

/// The method label: the standard methods by name, anything else as `OTHER`, so made-up methods
/// cannot add series.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
}

/// The stream counters, read when scraped rather than kept twice.
#[derive(Debug)]
struct StreamGauges(Arc<StreamStats>);

impl Collector for StreamGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let stats = &*self.0;
        let gauges = [
            (
                "websocket_streams_open",
                "WebSocket connections open now",
                stats.sockets.load(Ordering::Relaxed),
            ),
            (
                "streams_open",
                "Streams open now: HTTP response streams and WebSocket calls",
                stats.active.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let messages = [
            ("from_backend", stats.from_backend.load(Ordering::Relaxed)),
            ("to_client", stats.to_client.load(Ordering::Relaxed)),
            ("to_backend", stats.to_backend.load(Ordering::Relaxed)),
        ];
        let mut family = encoder.encode_descriptor(
            "stream_messages",
            "Stream messages relayed, by direction",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (direction, count) in messages {
            let labels = [("direction", direction)];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The workers' spinning time, read when scraped: what `server.idle_spin` costs in CPU.
#[derive(Debug)]
struct SpinTime(Arc<AtomicU64>);

impl Collector for SpinTime {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let seconds = self.0.load(Ordering::Relaxed) as f64 / 1e9;
        let counter = ConstCounter::new(seconds);
        counter.encode(encoder.encode_descriptor(
            "idle_spin",
            "Time the request workers spent polling for work instead of sleeping (server.idle_spin)",
            Some(&Unit::Seconds),
            counter.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    fn metrics() -> (Metrics, Arc<StreamStats>) {
        let stats = Arc::new(StreamStats::default());
        (Metrics::new(stats.clone()), stats)
    }

    fn text(metrics: &Metrics) -> String {
        metrics.encode().expect("encodes")
    }

    /// The value of the sample line that starts with `series` (name and labels), if any.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn idle_spin_time_is_a_counter_in_seconds() {
        let (m, _) = metrics();
        let series = "protogate_idle_spin_seconds_total";
        assert_eq!(sample(&text(&m), series), Some(0.0));
        m.idle_spin().fetch_add(1_500_000_000, Ordering::Relaxed);
        assert_eq!(sample(&text(&m), series), Some(1.5));
        assert!(text(&m).contains("# TYPE protogate_idle_spin_seconds counter"));
    }

    #[test]
    fn requests_are_counted_by_template_method_status_and_protocol() {
        let (m, _) = metrics();
        let get = Method::GET;
        let ms = Duration::from_millis(3);
        for _ in 0..3 {
            m.request(
                Some(&Arc::from("/v1/x/{id}")),
                &get,
                StatusCode::OK,
                Protocol::Http,
                ms,
            );
        }
        m.request(None, &get, StatusCode::NOT_FOUND, Protocol::Http, ms);
        let made_up = Method::from_bytes(b"BREW").expect("method");
        m.request(None, &made_up, StatusCode::NOT_FOUND, Protocol::Http, ms);
        let out = text(&m);
        let ok = r#"protogate_requests_total{route="/v1/x/{id}",method="GET",status="200",protocol="http"}"#;
        assert_eq!(sample(&out, ok), Some(3.0), "{out}");
        let missed =
            r#"protogate_requests_total{route="-",method="GET",status="404",protocol="http"}"#;
        assert_eq!(sample(&out, missed), Some(1.0), "{out}");
        let other =
            r#"protogate_requests_total{route="-",method="OTHER",status="404",protocol="http"}"#;
        assert_eq!(sample(&out, other), Some(1.0), "{out}");
        assert!(!out.contains("BREW"), "{out}");
        let count =
            r#"protogate_request_duration_seconds_count{route="/v1/x/{id}",protocol="http"}"#;
        assert_eq!(sample(&out, count), Some(3.0), "{out}");
        // 3 ms falls in the 5 ms bucket and not in the 2.5 ms one.
        let le = |b: &str| {
            format!(
                r#"protogate_request_duration_seconds_bucket{{le="{b}",route="/v1/x/{{id}}",protocol="http"}}"#
            )
        };
        assert_eq!(sample(&out, &le("0.0025")), Some(0.0), "{out}");
        assert_eq!(sample(&out, &le("0.005")), Some(3.0), "{out}");
        assert!(out.contains("# UNIT protogate_request_duration_seconds seconds"));
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn every_rejection_reason_is_exposed_from_the_start() {
        let (m, _) = metrics();
        m.reject(Rejection::BodyTooLarge);
        m.reject(Rejection::BodyTooLarge);
        let out = text(&m);
        for reason in Rejection::ALL {
            let want = if reason == Rejection::BodyTooLarge {
                2.0
            } else {
                0.0
            };
            let series = format!(
                r#"protogate_rejections_total{{reason="{}"}}"#,
                reason.as_str()
            );
            assert_eq!(sample(&out, &series), Some(want), "{out}");
        }
    }

    #[test]
    fn upstream_calls_are_timed_by_method_and_code() {
        let (m, _) = metrics();
        let timer = m.upstream(&Arc::from("test.v1.Echo.GetMessage"));
        timer.start().finish(&Ok::<(), GatewayError>(()));
        let down = GatewayError::new(crate::error::ErrorKind::Unavailable, "refused");
        timer.start().finish(&Err::<(), _>(down));
        // Given up on: dropped without an answer.
        drop(timer.start());
        let out = text(&m);
        for code in ["OK", "UNAVAILABLE", "CANCELLED"] {
            let series = format!(
                r#"protogate_upstream_duration_seconds_count{{grpc_method="test.v1.Echo.GetMessage",code="{code}"}}"#
            );
            assert_eq!(sample(&out, &series), Some(1.0), "{code}: {out}");
        }
    }

    #[test]
    fn stream_gauges_read_the_counters_when_scraped() {
        let (m, stats) = metrics();
        assert_eq!(
            sample(&text(&m), "protogate_websocket_streams_open"),
            Some(0.0)
        );
        stats.sockets.fetch_add(2, Ordering::Relaxed);
        stats.active.fetch_add(3, Ordering::Relaxed);
        stats.to_client.fetch_add(7, Ordering::Relaxed);
        let out = text(&m);
        assert_eq!(
            sample(&out, "protogate_websocket_streams_open"),
            Some(2.0),
            "{out}"
        );
        assert_eq!(sample(&out, "protogate_streams_open"), Some(3.0), "{out}");
        let to_client = r#"protogate_stream_messages_total{direction="to_client"}"#;
        assert_eq!(sample(&out, to_client), Some(7.0), "{out}");
    }
}
