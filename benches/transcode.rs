//! JSON → protobuf and protobuf → JSON through dynamic messages, against prost's generated code
//! with serde for the same messages as the floor; also the whole per-request transcoding path
//! (route match, bind, encode, decode, render) without the network. Allocations per operation are
//! counted and printed before the timings.

use std::alloc::System;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use protogate::config::Config;
use protogate::descriptors::RegistryBuilder;
use protogate::proto::bench::v1::{Item, Large, Small};
use protogate::routing::RouteMatch;
use protogate::snapshot::Snapshot;
use protogate::transcode::{decode_message, encode_message, JsonOptions};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn allocations_per_op(mut op: impl FnMut()) -> f64 {
    op();
    const N: usize = 200;
    let region = Region::new(GLOBAL);
    for _ in 0..N {
        op();
    }
    let stats = region.change();
    (stats.allocations + stats.reallocations) as f64 / N as f64
}

fn small() -> Small {
    Small {
        name: "widget".into(),
        count: 42,
        total: 123_456_789,
        active: true,
        score: 98.5,
    }
}

/// About 10 KB encoded: 40 items with tags and details, labels, parts and counters.
fn large() -> Large {
    let items = (0..40)
        .map(|i| Item {
            sku: format!("SKU-{i:05}"),
            title: format!("A product title number {i} for the benchmark"),
            quantity: i,
            price_cents: 1999 + i64::from(i),
            tags: vec!["red".into(), "large".into(), format!("t{i}")],
            detail: Some(small()),
        })
        .collect();
    Large {
        id: "order-1".into(),
        owner: "user-1".into(),
        items,
        labels: (0..20)
            .map(|i| (format!("k{i}"), format!("value {i}")))
            .collect(),
        parts: (0..10).map(|i| (format!("p{i}"), small())).collect(),
        counters: (0..50).collect(),
        summary: Some(small()),
    }
}

fn descriptors() -> (
    MessageDescriptor,
    MessageDescriptor,
    protogate::descriptors::Registry,
) {
    let mut builder = RegistryBuilder::new();
    builder
        .add_protos(&["protos/bench/v1/bench.proto".into()], &["protos".into()])
        .expect("bench proto compiles");
    let registry = builder.build().expect("registry");
    let pool = registry.pool();
    let small = pool.get_message_by_name("bench.v1.Small").expect("Small");
    let large = pool.get_message_by_name("bench.v1.Large").expect("Large");
    (small, large, registry)
}

fn json_roundtrip(c: &mut Criterion) {
    let (small_desc, large_desc, _) = descriptors();
    let opts = JsonOptions::default();
    let cases = [
        (
            "small",
            small_desc,
            serde_json::to_vec(&small()).expect("json"),
        ),
        (
            "large",
            large_desc,
            serde_json::to_vec(&large()).expect("json"),
        ),
    ];
    let mut group = c.benchmark_group("json_to_pb_to_json");
    for (name, desc, json) in &cases {
        let pb = decode_message(desc.clone(), json, &opts, "")
            .expect("decodes")
            .encode_to_vec();
        group.throughput(Throughput::Bytes(json.len() as u64));

        let dynamic = || {
            let msg = decode_message(desc.clone(), json, &opts, "").expect("decodes");
            let wire = msg.encode_to_vec();
            let back = DynamicMessage::decode(desc.clone(), wire.as_slice()).expect("pb");
            let mut out = Vec::with_capacity(json.len());
            encode_message(&back, &opts, &mut out).expect("json");
            out
        };
        let generated = || -> Vec<u8> {
            if *name == "small" {
                let msg: Small = serde_json::from_slice(json).expect("decodes");
                let back = Small::decode(msg.encode_to_vec().as_slice()).expect("pb");
                serde_json::to_vec(&back).expect("json")
            } else {
                let msg: Large = serde_json::from_slice(json).expect("decodes");
                let back = Large::decode(msg.encode_to_vec().as_slice()).expect("pb");
                serde_json::to_vec(&back).expect("json")
            }
        };
        println!(
            "allocations per op, {name}: dynamic {:.1}, prost+serde {:.1} ({} JSON bytes, {} protobuf bytes)",
            allocations_per_op(|| {
                std::hint::black_box(dynamic());
            }),
            allocations_per_op(|| {
                std::hint::black_box(generated());
            }),
            json.len(),
            pb.len(),
        );
        group.bench_function(BenchmarkId::new("dynamic", name), |b| b.iter(dynamic));
        group.bench_function(BenchmarkId::new("prost_serde", name), |b| b.iter(generated));

        group.bench_function(BenchmarkId::new("dynamic_json_to_pb", name), |b| {
            b.iter(|| {
                decode_message(desc.clone(), json, &opts, "")
                    .expect("decodes")
                    .encode_to_vec()
            })
        });
        group.bench_function(BenchmarkId::new("dynamic_pb_to_json", name), |b| {
            b.iter(|| {
                let msg = DynamicMessage::decode(desc.clone(), pb.as_slice()).expect("pb");
                let mut out = Vec::with_capacity(json.len());
                encode_message(&msg, &opts, &mut out).expect("json");
                out
            })
        });
    }
    group.finish();
}

/// The gateway's own work for one small POST and one GET with path and query variables:
/// snapshot route match, binding, request encoding, response decoding and rendering.
fn request_path(c: &mut Criterion) {
    let (_, _, registry) = descriptors();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _entered = runtime.enter();
    let mut config = Config::default();
    config.set_upstream("http://127.0.0.1:9").expect("upstream");
    let snapshot = Snapshot::build(Arc::new(config), registry, None).expect("snapshot");
    let post_body = Bytes::from(serde_json::to_vec(&small()).expect("json"));
    let reply = Bytes::from(small().encode_to_vec());
    let cases = [
        (http::Method::POST, "/v1/echo", None, post_body),
        (
            http::Method::GET,
            "/v1/echo/widget",
            Some("count=42&total=123456789&active=true&score=98.5"),
            Bytes::new(),
        ),
    ];
    let mut group = c.benchmark_group("request_path");
    for (method, path, query, body) in &cases {
        let run = || {
            let RouteMatch::Found(found) = snapshot.routes.find(method, path) else {
                panic!("no route for {path}");
            };
            let vars: Vec<String> = found.bindings.into_iter().map(|b| b.value).collect();
            let route = found.value;
            let msg = route
                .request
                .build(&vars, *query, Some("application/json"), body)
                .expect("binds");
            let wire = msg.encode_to_vec();
            std::hint::black_box(wire);
            route.response.render(reply.clone()).expect("renders")
        };
        println!(
            "allocations per request, {method} {path}: {:.1}",
            allocations_per_op(|| {
                std::hint::black_box(run());
            })
        );
        group.bench_function(BenchmarkId::new(method.as_str(), path), |b| b.iter(run));
    }
    group.finish();
}

criterion_group!(benches, json_roundtrip, request_path);
criterion_main!(benches);
