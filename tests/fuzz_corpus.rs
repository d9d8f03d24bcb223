//! The `atom` fuzz target's corpus (`fuzz/corpus/atom/`, found by libFuzzer, see
//! docs/robustness.md) replayed through the management-API parser in the normal test build:
//! every body either parses or is an error, and none panics.

use std::path::Path;

use blend_scaler::servicebus::atom;
use blend_scaler::signal::SignalError;

#[test]
fn every_body_in_the_atom_fuzz_corpus_parses_or_is_refused_without_a_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/atom");
    let mut bodies = 0;
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus is checked in") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let Ok(body) = std::str::from_utf8(&bytes) else {
            continue;
        };
        bodies += 1;
        match atom::parse(body) {
            Ok(_) => parsed += 1,
            Err(e) => assert!(matches!(e, SignalError::Malformed(_)), "{e:?}"),
        }
        if let Ok(d) = atom::entity_from(body, "queue `fuzz`") {
            let _ = d.active();
        }
        for status in [401, 429, 503] {
            assert!(
                !atom::error_from(status, body, "queue `fuzz`")
                    .to_string()
                    .is_empty()
            );
        }
    }
    assert!(bodies >= 16, "the recorded responses at least: {bodies}");
    assert!(parsed >= 10, "the recorded responses parse: {parsed}");
}
