//! `metadata::parse` on arbitrary key/value maps, biased toward the keys it knows.
//!
//! Besides "never panics", two properties: a parse is deterministic, and a secret value
//! (a `*FromEnv` credential, a connection string's key, a `customHeaders` value) never
//! shows in the errors or in the plan as `check` prints it (docs/security.md).
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use blend_scaler::metadata::{self, Credentials, Origin};
use libfuzzer_sys::fuzz_target;

/// A few values that reach deep paths quickly; the fuzzer mutates from there.
const VALUES: &[&str] = &[
    "orders",
    "5",
    "0",
    "-1",
    "1e309",
    "NaN",
    "true",
    "false",
    "max",
    "sum",
    "avg",
    "drainTime",
    "Private",
    "AzureChinaCloud",
    "http://127.0.0.1:9090",
    "https://[::1]:1/x",
    "sum(rate(x[1m]))",
    "bearer",
    "basic",
    "tls",
    "custom",
    "bearer,basic",
    "Europe/Berlin",
    "0 8 * * 1-5",
    "0 20 * * 1-5",
    "0 8 * * * -> 0 9 * * * = 3; 0 9 * * * -> 0 10 * * * = 1",
    "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey=",
    "a=b,c=d",
    "30s",
    "1h",
    "x.*",
];

#[derive(Arbitrary, Debug)]
enum Key {
    Known(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Known(u8),
    /// A known value with arbitrary text after it.
    Extended(u8, String),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    pairs: Vec<(Key, Value)>,
    from_file: bool,
}

fn key(k: &Key) -> String {
    match k {
        Key::Known(i) => {
            // The parser's own list, so a key added there is fuzzed here too.
            let n = metadata::known_keys().count();
            let key = metadata::known_keys().nth(*i as usize % n);
            key.expect("n > 0").to_string()
        }
        Key::Raw(s) => s.clone(),
    }
}

fn value(v: &Value) -> String {
    match v {
        Value::Known(i) => VALUES[*i as usize % VALUES.len()].to_string(),
        Value::Extended(i, s) => format!("{}{s}", VALUES[*i as usize % VALUES.len()]),
        Value::Raw(s) => s.clone(),
    }
}

/// The secret parts of the metadata that are distinctive enough to look for, each with
/// everything else (keys, other values, the non-secret parts of the same value) they must
/// not be part of.
fn secrets(m: &HashMap<String, String>) -> Vec<String> {
    let mut secret = Vec::new();
    let mut public: Vec<String> = Vec::new();
    for (k, v) in m {
        public.push(k.clone());
        match k.as_str() {
            k if metadata::keys::SECRET.contains(&k) => secret.push(v.clone()),
            metadata::keys::CONNECTION_FROM_ENV => {
                for part in v.split(';') {
                    match part.split_once('=') {
                        Some((name, val))
                            if matches!(
                                name.trim().to_ascii_lowercase().as_str(),
                                "sharedaccesskey" | "sharedaccesssignature"
                            ) =>
                        {
                            secret.push(val.to_string());
                            public.push(name.to_string());
                        }
                        _ => public.push(part.to_string()),
                    }
                }
            }
            "customHeaders" => {
                for part in v.split(',') {
                    match part.split_once('=') {
                        Some((name, val)) => {
                            secret.push(val.to_string());
                            public.push(name.to_string());
                        }
                        None => public.push(part.to_string()),
                    }
                }
            }
            _ => public.push(v.clone()),
        }
    }
    // Token-like only: long, letters and digits, no spaces or punctuation that formatted
    // text could assemble by chance.
    secret
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| {
            s.len() >= 12
                && s.chars().any(|c| c.is_ascii_digit())
                && s.chars().any(|c| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '=' | '_' | '-'))
                && !public.iter().any(|p| p.contains(s.as_str()))
        })
        .collect()
}

fuzz_target!(|input: Input| {
    let m: HashMap<String, String> = input
        .pairs
        .iter()
        .map(|(k, v)| (key(k), value(v)))
        .collect();
    let source = if input.from_file {
        Origin::File
    } else {
        Origin::Keda
    };
    let credentials = Credentials::default();
    let first = metadata::parse(&m, source, &credentials);
    let text = match &first {
        Ok(plan) => format!("{plan}\n{plan:?}"),
        Err(errors) => format!("{errors}\n{errors:?}"),
    };
    let again = metadata::parse(&m, source, &credentials);
    let text_again = match &again {
        Ok(plan) => format!("{plan}\n{plan:?}"),
        Err(errors) => format!("{errors}\n{errors:?}"),
    };
    assert_eq!(text, text_again, "parse is deterministic");
    for s in secrets(&m) {
        assert!(!text.contains(s.trim()), "secret {s:?} shows in:\n{text}");
    }
});
