//! Compiles `proto/` into Rust (tonic-prost) and writes the file descriptor sets
//! that the reflection service serves, so grpcurl needs no proto files: ours,
//! and Envoy's ext_authz service (whose Rust types come from `envoy-types`).

use std::{env, error::Error, path::PathBuf, process::Command};

/// Messages that carry a token secret. Their `Debug` is written by hand in
/// `src/proto.rs` so that no log line, at any level, can print a secret.
const SECRET_BEARING: &[&str] = &[
    ".tokenauth.v1.IssueTokenResponse",
    ".tokenauth.v1.RotateTokenResponse",
    ".tokenauth.v1.CheckRequest",
    ".tokenauth.v1.ReportLeakedSecretsRequest",
    ".tokenauth.v1.LookupSecretRequest",
];

fn main() -> Result<(), Box<dyn Error>> {
    let protos = [
        "proto/tokenauth/v1/types.proto",
        "proto/tokenauth/v1/tokens.proto",
        "proto/tokenauth/v1/check.proto",
        "proto/tokenauth/v1/audit.proto",
        "proto/tokenauth/v1/admin.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }

    // A vendored protoc keeps `cargo build` self-contained on a fresh machine.
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.skip_debug(SECRET_BEARING);

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let includes = [
        PathBuf::from("proto"),
        PathBuf::from("proto/third_party"),
        protoc_bin_vendored::include_path()?,
    ];

    // The benchmark's floor service, compiled apart so that it stays out of
    // the descriptor set that reflection serves.
    let bench = "proto/tokenauth/bench/v1/bench.proto";
    println!("cargo:rerun-if-changed={bench}");
    let mut bench_config = prost_build::Config::new();
    bench_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        bench_config,
        &[PathBuf::from(bench)],
        &includes,
    )?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tokenauth_descriptor.bin"))
        .compile_with_config(config, &protos.map(PathBuf::from), &includes)?;
    envoy_descriptor_set(&out_dir)
}

/// `envoy-types` ships generated Rust but no descriptor set, so reflection
/// would not know `envoy.service.auth.v3.Authorization`. Its own proto
/// sources, copied into `proto/third_party` by `scripts/vendor-envoy-protos`,
/// are compiled here into a descriptor set only (no code).
fn envoy_descriptor_set(out_dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto/third_party");
    let status = Command::new(protoc_bin_vendored::protoc_bin_path()?)
        .arg("--include_imports")
        .arg(format!(
            "--descriptor_set_out={}",
            out_dir.join("envoy_ext_authz_descriptor.bin").display()
        ))
        .arg("-I")
        .arg("proto/third_party")
        .arg("-I")
        .arg(protoc_bin_vendored::include_path()?)
        .arg("envoy/service/auth/v3/external_auth.proto")
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on proto/third_party: {status}").into());
    }
    Ok(())
}
