//! The configuration the documents show is configuration the code takes:
//! every ```toml block of README.md and docs/ loads through the real
//! config code and validates, route rules compiled, except a block that
//! elides a value on purpose (named in `ELIDED`).

use tokenauth::config::Config;

use super::{DOCUMENTS, markdown::blocks, path};

/// Values shown cut short (a hash), which no configuration can hold as is.
const ELIDED: &[&str] = &["sha256 = \"69a2689f...\""];

#[test]
fn every_configuration_block_loads_and_validates() {
    let (mut loaded, mut elided) = (0, 0);
    for document in DOCUMENTS {
        for block in blocks(&path(document)) {
            if block.lang != "toml" {
                continue;
            }
            if ELIDED.iter().any(|e| block.text.contains(e)) {
                elided += 1;
                continue;
            }
            let place = block.place();
            let config = Config::from_toml(&block.text).unwrap_or_else(|e| panic!("{place}: {e}"));
            let policy = config.policy().unwrap_or_else(|e| panic!("{place}: {e}"));
            config
                .ext_authz
                .compile(&policy.catalogue)
                .unwrap_or_else(|e| panic!("{place}: {e}"));
            loaded += 1;
        }
    }
    // The whole file, the route rules and the TLS section; the credential entry.
    assert!(loaded >= 3, "{loaded} blocks loaded");
    assert_eq!(elided, 1);
}
