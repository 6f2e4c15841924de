//! Compiles `proto/**/*.proto` with protox (a pure-Rust protobuf compiler, so
//! no system `protoc` is needed) and generates prost messages plus tonic
//! clients and servers. The encoded descriptor set is written next to the code
//! for gRPC server reflection.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "common/v1/money.proto",
    "user/v1/user.proto",
    "order/v1/order.proto",
    "payment/v1/payment.proto",
    "experiment/v1/experiment.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;
    let descriptors = compiler.file_descriptor_set();

    // Encoded by protox itself, which keeps custom options such as
    // `google.api.http` (prost's own types would drop them): the REST
    // gateway reads its routes from them, and reflection shows them.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("mercato_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
