//! Which integration test modules run on which store. `scripts/test` runs
//! every module on sled, then once more with every server on PostgreSQL
//! (`TEST_STORE=postgres`) except the modules listed here, which it reads
//! from this file (one `"module", // why` per line): the list is the one
//! place that says what the second pass leaves out, and the test below
//! keeps it naming modules that exist.

/// Modules about sled or a child process's own store, or using no store;
/// the second pass skips them.
pub const SLED_ONLY: &[&str] = &[
    "backup",            // sled's backup files
    "persistence",       // restarts on a sled data directory
    "crash",             // SIGKILL of a child on its own sled directory
    "shutdown",          // a child process's own store
    "logs",              // a child process's output
    "traces",            // a child process's output
    "tls",               // a child process's listener
    "deploy",            // deploy/ files, no store
    "disk_faults",       // a full or read-only sled directory
    "corruption",        // a damaged sled directory
    "fuzz_replay",       // the fuzz corpus, no store
    "reflection",        // the gRPC reflection service, no store
    "replicas",          // already on PostgreSQL in the first pass
    "store_conformance", // already on PostgreSQL in the first pass
    "tools",             // the pinned external tools
    "envoy",             // the real Envoy and the shipped config
    "docs",              // the documentation's walkthroughs (child processes)
    "cli",               // the command line on sled directories
    "manifests",         // deploy/ manifests, no store
    "openapi",           // docs/openapi.json from the protos, no store
];

#[test]
fn every_sled_only_module_exists_and_scripts_test_reads_this_list() {
    let main =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/main.rs")).unwrap();
    for module in SLED_ONLY {
        assert!(
            main.lines().any(|l| l.trim() == format!("mod {module};")),
            "backends::SLED_ONLY names {module}, which tests/it/main.rs does not declare"
        );
    }
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test")).unwrap();
    assert!(
        script.contains("tests/it/backends.rs") && !script.contains("--skip backup::"),
        "scripts/test must take its PostgreSQL skip list from tests/it/backends.rs"
    );
    let on_postgres: Vec<&str> = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';'))
        .filter(|m| !SLED_ONLY.contains(m))
        .collect();
    println!("modules run on both stores: {}", on_postgres.join(", "));
    println!("modules run on sled only: {}", SLED_ONLY.join(", "));
}
