//! Compiles the schema in `tern/` with protox (pure Rust), so a fresh
//! machine needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=tern");
    let fds = protox::compile(["tern/v1/tern.proto"], ["."])?;
    let mut config = prost_build::Config::new();
    // BTreeMap keeps map fields in key order, so encodings are deterministic
    // and their blake3 digests are stable across processes and platforms.
    config.btree_map(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
