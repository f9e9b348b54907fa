//! Compiles the `.proto` files in the workspace's `proto/` directory with the vendored protoc, so
//! that building needs nothing beyond cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Read at run time (not with env!): a build-script binary may be reused for another checkout.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("../../proto");
    let files = [
        "raft.proto",
        "storage.proto",
        "shardctrler.proto",
        "shardkv.proto",
        "etcd.proto",
        "admin.proto",
        "backup.proto",
    ]
    .map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .bytes(".")
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
