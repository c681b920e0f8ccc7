//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) through the same entry
//! points the fuzz targets use, on stable, so that every input the fuzzer
//! found interesting, and every crash it found and we fixed, stays a test.

use std::{collections::BTreeSet, path::PathBuf};

use tokenauth::testing::fuzzing::REQUEST_MESSAGES;

/// Runs every input of a corpus; returns how many there were.
fn replay(target: &str, mut run: impl FnMut(&[u8])) -> usize {
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
    assert!(replay("token", tokenauth::testing::fuzzing::token) > 0);
}

#[test]
fn route_corpus() {
    assert!(replay("route", tokenauth::testing::fuzzing::route) > 0);
}

/// Every request message has inputs in the corpus that pass all of its
/// conversions, so that its invariants (which hold only for what is
/// accepted) are replayed, not only its refusals.
#[test]
fn request_corpus() {
    let mut accepted = BTreeSet::new();
    assert!(
        replay("request", |data| {
            accepted.extend(tokenauth::testing::fuzzing::request(data));
        }) > 0
    );
    let missing: Vec<&str> = REQUEST_MESSAGES
        .iter()
        .filter(|m| !accepted.contains(*m))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "no corpus input is accepted as {missing:?}"
    );
}
