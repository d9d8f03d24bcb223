fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build free of a system package.
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/externalscaler.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/externalscaler.proto");
    // Packed relative relocations (DT_RELR, glibc 2.36 and binutils 2.38 on): the loader
    // reads a bitmap instead of a 24-byte entry for each of the binary's ~50,000 pointers,
    // which made 1.3 MB of every process resident (BENCHMARKS.md, "Memory").
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    Ok(())
}
