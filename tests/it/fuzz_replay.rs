//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) through the same entry
//! points the fuzz targets use, on stable, so that every input the fuzzer
//! found interesting, and every crash it found and we fixed, stays a test.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        count += 1;
    }
    count
}

#[test]
fn token_corpus() {
    assert!(replay("token", tokenauth::fuzzing::token) > 0);
}

#[test]
fn route_corpus() {
    assert!(replay("route", tokenauth::fuzzing::route) > 0);
}

#[test]
fn request_corpus() {
    assert!(replay("request", tokenauth::fuzzing::request) > 0);
}
