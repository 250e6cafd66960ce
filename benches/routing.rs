//! Route matching cost with 10, 1,000 and 10,000 routes: a trie walk should not grow with the
//! number of routes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use protogate::routing::{MatchOptions, PathTemplate, RouteMatch, RouteTableBuilder};

/// A table of `n` routes shaped like real APIs: literals, variables, verbs and a `**`.
fn table(n: usize) -> protogate::routing::RouteTable<usize> {
    let mut builder = RouteTableBuilder::new(MatchOptions::default());
    let shapes = [
        "/v1/svc{i}/items/{id}",
        "/v1/svc{i}/items/{id}:cancel",
        "/v1/svc{i}/{name=shelves/*/books/*}",
        "/v1/svc{i}/files/{path=**}",
    ];
    let mut i = 0;
    while builder.len() < n {
        let shape = shapes[i % shapes.len()];
        let template = shape.replace("{i}", &(i / shapes.len()).to_string());
        let parsed = PathTemplate::parse(&template).expect("bench template");
        let method = if i % 3 == 0 {
            Method::POST
        } else {
            Method::GET
        };
        let _ = builder.insert(method, &parsed, i);
        i += 1;
    }
    builder.build()
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let table = table(n);
        // A path in the middle of the table, so hashing and the walk are exercised, not a prefix.
        let k = (n / 4 / 2).max(1) - 1;
        let paths = [
            format!("/v1/svc{k}/items/42"),
            format!("/v1/svc{k}/items/42:cancel"),
            format!("/v1/svc{k}/shelves/s1/books/b2"),
        ];
        for p in &paths {
            assert!(
                matches!(
                    table.find(&Method::GET, p),
                    RouteMatch::Found(_) | RouteMatch::MethodNotAllowed { .. }
                ),
                "{p}"
            );
        }
        group.bench_with_input(BenchmarkId::new("routes", n), &paths, |b, paths| {
            b.iter(|| {
                for p in paths {
                    std::hint::black_box(table.find(&Method::GET, std::hint::black_box(p)));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
