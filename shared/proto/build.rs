//! Compiles proto/tps/v1 with protox (pure Rust, no system protoc) and writes the
//! file descriptor set that the servers register for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!(): a build script compiled
    // in one checkout may be run for another that shares the target dir
    // (CI's fixed CARGO_TARGET_DIR), and must read that checkout's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "tps/v1/signal.proto",
        "tps/v1/events.proto",
        "tps/v1/gateway.proto",
        "tps/v1/worker.proto",
        "tps/v1/aggregator.proto",
    ];
    let mut compiler = protox::Compiler::new([&root])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(files)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("tps_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // Every client and server decodes through crate::codec: a request that
    // does not decode is INVALID_ARGUMENT, not tonic-prost's INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::codec::TpsCodec")
        .compile_fds(compiler.file_descriptor_set())?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
