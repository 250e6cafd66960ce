//! JSON → protobuf and protobuf → JSON through dynamic messages and directly (`WirePlan`, no
//! dynamic message), against prost's generated code with serde for the same messages as the floor; XML → protobuf and protobuf → XML next to JSON
//! for the same messages; also the whole per-request transcoding path (route match, bind, encode,
//! decode, render, and the backend call's metadata) without the network. Allocations per operation are counted and printed before
//! the timings.

use std::alloc::System;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use protogate::bench::small;
use protogate::config::Config;
use protogate::descriptors::RegistryBuilder;
use protogate::proto::bench::v1::{Item, Large, Small};
use protogate::routing::RouteMatch;
use protogate::snapshot::Snapshot;
use protogate::transcode::{
    decode_message, encode_message, xml, Bound, JsonOptions, ResponseFormat, WirePlan,
};
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
        let plan = WirePlan::new(desc).expect("the bench types have a direct plan");
        let direct = || {
            let mut wire = Vec::with_capacity(json.len());
            plan.json_to_wire(json, &opts, &mut wire)
                .expect("direct decodes");
            let mut out = Vec::with_capacity(json.len());
            plan.wire_to_json(&wire, &opts, &mut out)
                .expect("direct renders");
            out
        };
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&direct()).expect("json"),
            serde_json::from_slice::<serde_json::Value>(&dynamic()).expect("json"),
            "direct and dynamic agree on {name}"
        );
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
            "allocations per op, {name}: dynamic {:.1}, direct {:.1}, prost+serde {:.1} ({} JSON bytes, {} protobuf bytes)",
            allocations_per_op(|| {
                std::hint::black_box(dynamic());
            }),
            allocations_per_op(|| {
                std::hint::black_box(direct());
            }),
            allocations_per_op(|| {
                std::hint::black_box(generated());
            }),
            json.len(),
            pb.len(),
        );
        group.bench_function(BenchmarkId::new("dynamic", name), |b| b.iter(dynamic));
        group.bench_function(BenchmarkId::new("direct", name), |b| b.iter(direct));
        group.bench_function(BenchmarkId::new("prost_serde", name), |b| b.iter(generated));

        group.bench_function(BenchmarkId::new("dynamic_json_to_pb", name), |b| {
            b.iter(|| {
                decode_message(desc.clone(), json, &opts, "")
                    .expect("decodes")
                    .encode_to_vec()
            })
        });
        group.bench_function(BenchmarkId::new("direct_json_to_pb", name), |b| {
            b.iter(|| {
                let mut wire = Vec::with_capacity(json.len());
                plan.json_to_wire(json, &opts, &mut wire)
                    .expect("direct decodes");
                wire
            })
        });
        group.bench_function(BenchmarkId::new("direct_pb_to_json", name), |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(json.len());
                plan.wire_to_json(&pb, &opts, &mut out)
                    .expect("direct renders");
                out
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

/// XML next to JSON, both directions, for the same messages in one group, so the ratios come from
/// one run: `{json,xml}_to_pb` reads the body and encodes the request, `pb_to_{json,xml}` decodes
/// the response and renders it.
fn xml_vs_json(c: &mut Criterion) {
    let (small_desc, large_desc, _) = descriptors();
    let opts = JsonOptions::default();
    let mut group = c.benchmark_group("xml_vs_json");
    for (name, desc, pb) in [
        ("small", small_desc, small().encode_to_vec()),
        ("large", large_desc, large().encode_to_vec()),
    ] {
        let msg = DynamicMessage::decode(desc.clone(), pb.as_slice()).expect("pb");
        let mut json = Vec::new();
        encode_message(&msg, &opts, &mut json).expect("json");
        let mut xml_body = Vec::new();
        xml::encode_message(&msg, &opts, &mut xml_body);
        let back = xml::decode_message(desc.clone(), &xml_body, &opts).expect("xml reads back");
        assert_eq!(
            back.encode_to_vec().len(),
            pb.len(),
            "XML round trip of {name}"
        );

        let json_to_pb = || {
            decode_message(desc.clone(), &json, &opts, "")
                .expect("json")
                .encode_to_vec()
        };
        let xml_to_pb = || {
            xml::decode_message(desc.clone(), &xml_body, &opts)
                .expect("xml")
                .encode_to_vec()
        };
        let pb_to_json = || {
            let msg = DynamicMessage::decode(desc.clone(), pb.as_slice()).expect("pb");
            let mut out = Vec::with_capacity(json.len());
            encode_message(&msg, &opts, &mut out).expect("json");
            out
        };
        let pb_to_xml = || {
            let msg = DynamicMessage::decode(desc.clone(), pb.as_slice()).expect("pb");
            let mut out = Vec::with_capacity(xml_body.len());
            xml::encode_message(&msg, &opts, &mut out);
            out
        };
        println!(
            "allocations per op, {name}: json_to_pb {:.1}, xml_to_pb {:.1}, pb_to_json {:.1}, pb_to_xml {:.1} ({} JSON bytes, {} XML bytes)",
            allocations_per_op(|| {
                std::hint::black_box(json_to_pb());
            }),
            allocations_per_op(|| {
                std::hint::black_box(xml_to_pb());
            }),
            allocations_per_op(|| {
                std::hint::black_box(pb_to_json());
            }),
            allocations_per_op(|| {
                std::hint::black_box(pb_to_xml());
            }),
            json.len(),
            xml_body.len(),
        );
        group.bench_function(BenchmarkId::new("json_to_pb", name), |b| b.iter(json_to_pb));
        group.bench_function(BenchmarkId::new("xml_to_pb", name), |b| b.iter(xml_to_pb));
        group.bench_function(BenchmarkId::new("pb_to_json", name), |b| b.iter(pb_to_json));
        group.bench_function(BenchmarkId::new("pb_to_xml", name), |b| b.iter(pb_to_xml));
    }
    group.finish();
}

/// The gateway's own work for one small POST and one GET with path and query variables (and the
/// same POST in XML both ways): snapshot route match, binding, request encoding, response
/// decoding and rendering.
fn request_path(c: &mut Criterion) {
    let (_, _, registry) = descriptors();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _entered = runtime.enter();
    let mut config = Config::default();
    config.set_upstream("http://127.0.0.1:9").expect("upstream");
    let snapshot = Snapshot::build(Arc::new(config), registry, None).expect("snapshot");
    let post_body = Bytes::from(serde_json::to_vec(&small()).expect("json"));
    let xml_body = Bytes::from_static(
        b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Small><name>widget</name><count>42</count>\
          <total>123456789</total><active>true</active><score>98.5</score></Small>",
    );
    let reply = Bytes::from(small().encode_to_vec());
    let json = (Some("application/json"), ResponseFormat::Json);
    let cases = [
        ("", http::Method::POST, "/v1/echo", None, post_body, json),
        (
            "",
            http::Method::GET,
            "/v1/echo/widget",
            Some("count=42&total=123456789&active=true&score=98.5"),
            Bytes::new(),
            json,
        ),
        (
            "xml",
            http::Method::POST,
            "/v1/echo",
            None,
            xml_body,
            (Some("application/xml"), ResponseFormat::ApplicationXml),
        ),
    ];
    let mut group = c.benchmark_group("request_path");
    for (label, method, path, query, body, (content_type, format)) in &cases {
        let run = || {
            let RouteMatch::Found(found) = snapshot.routes.find(method, path) else {
                panic!("no route for {path}");
            };
            let vars: Vec<String> = found.bindings.into_iter().map(|b| b.value).collect();
            let route = found.value;
            let wire = match route
                .request
                .build(&vars, *query, *content_type, body)
                .expect("binds")
            {
                Bound::Message(msg) => msg.encode_to_vec(),
                Bound::Encoded(bytes) => bytes.to_vec(),
            };
            std::hint::black_box(wire);
            route
                .response
                .render_as(reply.clone(), *format)
                .expect("renders")
        };
        let id = format!("{}{path}", if label.is_empty() { "" } else { "xml " });
        println!(
            "allocations per request, {method} {id}: {:.1}",
            allocations_per_op(|| {
                std::hint::black_box(run());
            })
        );
        group.bench_function(BenchmarkId::new(method.as_str(), id), |b| b.iter(run));
    }
    // The backend call's metadata from a typical client's headers, as grpc-gateway maps them.
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("content-type", "application/json"),
        ("content-length", "88"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    let remote = Some(std::net::SocketAddr::from(([10, 1, 2, 3], 50_000)));
    let metadata = || protogate::upstream::request_metadata(&headers, None, remote, &[]);
    println!(
        "allocations per request, metadata: {:.1}",
        allocations_per_op(|| {
            std::hint::black_box(metadata());
        })
    );
    group.bench_function("metadata", |b| b.iter(metadata));
    group.finish();
}

criterion_group!(benches, json_roundtrip, xml_vs_json, request_path);
criterion_main!(benches);
