//! The live registry: time to validate a set of 1,000 services and swap it in (decode, merge and
//! check against what is loaded, build the pool, routes and plans, diff, publish), from a binary
//! set and from .proto text, in memory and with the state folder's fsyncs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use protogate::admin::{LiveRegistry, StateDir};
use protogate::bench::{synthetic_proto, synthetic_set};
use protogate::config::Config;
use protogate::descriptors::{bundled_set, compile_sources, RegistryBuilder};
use protogate::snapshot::SnapshotInputs;
use protogate::uploads::{SetName, UploadedSet, Uploads};

const SERVICES: usize = 1_000;

fn live(state: Option<StateDir>) -> LiveRegistry {
    let mut config = Config::default();
    config.set_upstream("http://127.0.0.1:9").expect("upstream");
    let inputs = SnapshotInputs {
        config: Arc::new(config),
        startup: RegistryBuilder::new(),
        uploads: Uploads::new(),
    };
    LiveRegistry::start(inputs, state, None).expect("first snapshot")
}

fn swap(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let set = synthetic_set(SERVICES).expect("synthetic set");
    let text = synthetic_proto("bulk.v1", SERVICES);
    let name = SetName::parse("bulk").expect("name");
    println!(
        "{SERVICES}-service set: {} bytes of .proto text, {} bytes compiled",
        text.len(),
        set.len()
    );

    let state_path =
        std::env::temp_dir().join(format!("protogate-bench-state-{}", std::process::id()));
    let mut group = c.benchmark_group("registry_swap");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for (label, state) in [
        ("in_memory", None),
        (
            "state_folder",
            Some(StateDir::open(&state_path).expect("state folder")),
        ),
    ] {
        let _entered = runtime.enter();
        let live = live(state);
        group.bench_function(BenchmarkId::new("binary_set", label), |b| {
            b.iter(|| {
                let upload = UploadedSet::new(name.clone(), set.clone(), None, SystemTime::now())
                    .expect("set");
                runtime.block_on(live.put(upload)).expect("accepted")
            })
        });
    }
    let _entered = runtime.enter();
    let live = live(None);
    group.bench_function(BenchmarkId::new("proto_text", "in_memory"), |b| {
        b.iter(|| {
            let compiled = compile_sources(
                &[("bulk/v1/bulk.proto".to_owned(), text.clone())],
                bundled_set(),
            )
            .expect("compiles");
            let upload = UploadedSet::new(name.clone(), compiled.into(), None, SystemTime::now())
                .expect("set");
            runtime.block_on(live.put(upload)).expect("accepted")
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&state_path);
}

criterion_group!(benches, swap);
criterion_main!(benches);
