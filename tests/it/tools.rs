//! The external programs the tests run for real: Envoy, grpcurl,
//! kubernetes-validate and hadolint, installed by `scripts/tools` (which
//! `scripts/test` calls) into a pinned venv under `target/`. An environment
//! variable (`TOKENAUTH_ENVOY`, `TOKENAUTH_GRPCURL`, ...) points a test at
//! another copy. A missing program fails the test that needs it, with the
//! command that installs it: a skipped test would look like a passed one.

use std::path::PathBuf;

/// The path of `program` (`envoy`, `grpcurl`, `kubernetes-validate`,
/// `hadolint`): its `TOKENAUTH_<PROGRAM>` variable, else the tools venv.
pub fn tool(program: &str) -> PathBuf {
    let var = format!(
        "TOKENAUTH_{}",
        program.to_ascii_uppercase().replace('-', "_")
    );
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let venv = std::env::var_os("TOKENAUTH_TOOLS_VENV").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools-venv"),
        PathBuf::from,
    );
    let path = venv.join("bin").join(program);
    assert!(
        path.exists(),
        "{program} is not installed at {} (and {var} is not set): run the tests with \
         scripts/test, or install the tools with scripts/tools",
        path.display()
    );
    path
}

#[test]
fn every_pinned_tool_is_installed_and_answers() {
    for (program, flag, expect) in [
        ("envoy", "--version", "1.40.0"),
        ("grpcurl", "-version", "1.8.6"),
        ("hadolint", "--version", "2.15"),
        ("kubernetes-validate", "--version", "1.37.0"),
    ] {
        let out = std::process::Command::new(tool(program))
            .arg(flag)
            .output()
            .unwrap_or_else(|e| panic!("{program} {flag}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(expect), "{program} {flag} printed {text:?}");
    }
}
