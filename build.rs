//! Compiles the bundled protos with protox (no protoc): Rust code for the demo services, the
//! google.api/google.rpc messages the gateway uses and the gRPC reflection client, and the
//! descriptor set of the bundled google/* files that every runtime pool starts from.

use std::path::PathBuf;

const BUNDLED: &[&str] = &[
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/api/httpbody.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
    "google/rpc/status.proto",
    // Well-known types come from protox's own copies; listing them puts them in the set.
    "google/protobuf/any.proto",
    "google/protobuf/descriptor.proto",
    "google/protobuf/duration.proto",
    "google/protobuf/empty.proto",
    "google/protobuf/field_mask.proto",
    "google/protobuf/struct.proto",
    "google/protobuf/timestamp.proto",
    "google/protobuf/wrappers.proto",
];

const DEMO: &[&str] = &[
    "shop/v1/catalog.proto",
    "shop/v1/orders.proto",
    "shop/v1/users.proto",
    "bench/v1/bench.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut bundled = protox::Compiler::new(["protos"])?;
    bundled.include_imports(true).include_source_info(false);
    bundled.open_files(BUNDLED)?;
    std::fs::write(
        out.join("bundled.binpb"),
        bundled.encode_file_descriptor_set(),
    )?;

    // The load bench hands this set to a gateway process it starts.
    let mut bench = protox::Compiler::new(["protos"])?;
    bench.include_imports(true).include_source_info(false);
    bench.open_files(["bench/v1/bench.proto"])?;
    std::fs::write(out.join("bench.binpb"), bench.encode_file_descriptor_set())?;

    let mut code = protox::Compiler::new(["protos"])?;
    code.include_imports(true);
    code.open_files(DEMO)?;
    code.open_files([
        "google/api/http.proto",
        "google/api/httpbody.proto",
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
    ])?;
    // Well-known types map to prost-types, so no code is generated for google.protobuf.
    tonic_prost_build::configure()
        // The benchmarks compare dynamic transcoding against generated code with serde.
        .message_attribute(
            ".bench.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"camelCase\", default)]",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(code.file_descriptor_set())?;

    // The admin API pulls descriptors from backends through gRPC server reflection: a client for
    // v1 and for v1alpha, which older servers offer.
    let mut reflection = protox::Compiler::new(["protos"])?;
    reflection.open_files([
        "grpc/reflection/v1/reflection.proto",
        "grpc/reflection/v1alpha/reflection.proto",
    ])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(reflection.file_descriptor_set())?;
    Ok(())
}
