//! The edge's cost per request: every step a request passes (request id, client address, path
//! normalization, preflight check, IP rules, API key, two rate limits, authorization, header
//! rules, forwarded identity, response headers) with the full policy of the load bench's
//! scenario f, against the same steps with no policy at all, in one run.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{Method, Request, Response};
use protogate::bench::{edge_config, EDGE_HEADERS};
use protogate::config::Config;
use protogate::descriptors::RegistryBuilder;
use protogate::routing::RouteMatch;
use protogate::snapshot::Snapshot;
use protogate::upstream::request_metadata;

fn snapshot(config_toml: &str) -> Snapshot {
    let mut builder = RegistryBuilder::new();
    builder
        .add_protos(&["protos/bench/v1/bench.proto".into()], &["protos".into()])
        .expect("bench proto compiles");
    let registry = builder.build().expect("registry");
    let mut config = Config::from_toml(config_toml, Path::new(".")).expect("config");
    config.set_upstream("http://127.0.0.1:9").expect("upstream");
    Snapshot::build(Arc::new(config), registry, None).expect("snapshot")
}

fn request() -> Request<Body> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/v1/echo")
        .header("content-type", "application/json");
    for (name, value) in EDGE_HEADERS {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).expect("request")
}

fn edge(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _entered = runtime.enter();
    let remote: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let mut group = c.benchmark_group("edge_per_request");
    for (label, toml) in [("none", String::new()), ("full", edge_config())] {
        let snapshot = snapshot(&toml);
        let route = match snapshot.routes.find(&Method::POST, "/v1/echo") {
            RouteMatch::Found(found) => found.value.clone(),
            _ => panic!("no bench route"),
        };
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_batched(
                request,
                |mut request| {
                    let edge = &snapshot.edge;
                    let (mut pass, entered) = edge.enter(&mut request, Some(remote));
                    entered.expect("normal path");
                    assert!(edge
                        .preflight(&snapshot.routes, &request, &mut pass)
                        .is_none());
                    let (mut parts, _) = request.into_parts();
                    edge.admit(&mut pass, &route, &mut parts.headers, None, None)
                        .expect("admitted");
                    let mut metadata = request_metadata(&parts.headers, None, Some(remote), &[]);
                    edge.forward(&pass, &mut metadata);
                    let mut response = Response::new(Body::empty());
                    edge.leave(&pass, &mut response);
                    (metadata, response)
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, edge);
criterion_main!(benches);
