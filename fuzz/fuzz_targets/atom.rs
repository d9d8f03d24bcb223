//! The Service Bus management API (ATOM) parser on arbitrary bodies: never panics, and
//! whatever it accepts as an entity has counts that do not panic either.
#![no_main]

use blend_scaler::servicebus::atom;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let _ = atom::parse(body);
    if let Ok(d) = atom::entity_from(body, "queue `fuzz`") {
        let _ = d.active();
    }
    if let Ok(page) = atom::page_from(body, "the queue list") {
        for d in page {
            let _ = d.active();
        }
    }
    for status in [401, 403, 404, 429, 500, 503] {
        let e = atom::error_from(status, body, "queue `fuzz`");
        let _ = e.to_string();
    }
});
