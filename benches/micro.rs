//! Criterion micro-benchmarks of the scaler's own work per call and per refresh.
//!
//! `cargo bench --bench micro` (criterion's report: time per iteration, with its spread).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use blend_scaler::blend::{self, Inputs};
use blend_scaler::engine::{Engine, EngineConfig, ObjectRef, SignalCaches};
use blend_scaler::metadata::{self, Credentials, Origin};
use blend_scaler::metrics::Metrics;
use blend_scaler::signal::Observation;
use chrono::{TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};

fn metadata_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The README's ScaledObject: all three signals, with KEDA's own keys.
fn three_signals() -> HashMap<String, String> {
    metadata_of(&[
        (
            "scalerAddress",
            "blend-scaler.blend-scaler.svc.cluster.local:9090",
        ),
        ("namespace", "cloudnative-bus"),
        ("queueName", "order-processing"),
        ("messageCount", "10"),
        ("activationMessageCount", "1"),
        (
            "connectionFromEnv",
            "Endpoint=sb://cloudnative-bus.servicebus.windows.net/;\
             SharedAccessKeyName=RootManageSharedAccessKey;\
             SharedAccessKey=c2VjcmV0LWtleS1mb3ItYmVuY2htYXJrcy1vbmx5LTAwMDA=",
        ),
        ("serverAddress", "http://prometheus-server.monitoring:9090"),
        (
            "query",
            "sum(rate(http_requests_total{app=\"order-processor\"}[2m]))",
        ),
        ("threshold", "200"),
        ("activationThreshold", "50"),
        ("timezone", "America/New_York"),
        ("start", "0 8 * * 1-5"),
        ("end", "0 20 * * 1-5"),
        ("desiredReplicas", "5"),
    ])
}

fn cron_only() -> HashMap<String, String> {
    metadata_of(&[
        (
            "scalerAddress",
            "blend-scaler.blend-scaler.svc.cluster.local:9090",
        ),
        ("timezone", "Europe/Berlin"),
        (
            "windows",
            "0 8 * * 1-5 -> 0 20 * * 1-5 = 3; 0 11 * * 1-5 -> 0 14 * * 1-5 = 6",
        ),
    ])
}

fn metadata_parsing(c: &mut Criterion) {
    let creds = Credentials::default();
    let mut g = c.benchmark_group("metadata_parse");
    for (name, m) in [
        ("three_signals", three_signals()),
        ("cron_windows", cron_only()),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| metadata::parse(black_box(&m), Origin::Keda, &creds).unwrap())
        });
    }
    g.finish();
}

fn blend_decision(c: &mut Criterion) {
    let creds = Credentials::default();
    let plan = metadata::parse(&three_signals(), Origin::Keda, &creds).unwrap();
    // Wednesday 2026-06-03 15:00 UTC: inside New York business hours.
    let now = Utc.with_ymd_and_hms(2026, 6, 3, 15, 0, 0).unwrap();
    let sb = Observation {
        age: Some(Duration::from_secs(2)),
        ..Observation::fresh(137.0)
    };
    let prom = Observation {
        age: Some(Duration::from_secs(3)),
        ..Observation::fresh(912.5)
    };
    let mut g = c.benchmark_group("blend_decide");
    g.bench_function("three_signals", |b| {
        b.iter(|| {
            blend::decide(Inputs {
                plan: black_box(&plan),
                now: black_box(now),
                servicebus: Some(&sb),
                prometheus: Some(&prom),
            })
        })
    });
    let cron = metadata::parse(&cron_only(), Origin::Keda, &creds).unwrap();
    g.bench_function("cron_windows", |b| {
        b.iter(|| {
            blend::decide(Inputs {
                plan: black_box(&cron),
                now: black_box(now),
                servicebus: None,
                prometheus: None,
            })
        })
    });
    g.finish();

    // One whole cached decision as a gRPC call makes it: look-up, decision, metrics.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async {
        Engine::new(
            EngineConfig::default(),
            SignalCaches::default(),
            Metrics::new(),
        )
        .unwrap()
    });
    let m = cron_only();
    let obj = ObjectRef {
        namespace: "production",
        name: "order-processor",
        metadata: &m,
    };
    c.bench_function("engine_cached_decision/cron_windows", |b| {
        b.iter(|| rt.block_on(engine.answer(black_box(obj))).unwrap())
    });
}

/// A 100-entry queue list page as the management-API double renders it (fetched from the
/// double once, over loopback, with a SAS token), parsed by the scaler's ATOM parser.
fn list_page() -> String {
    use blend_scaler::secret::Secret;
    use blend_scaler::servicebus::auth::sas_token;
    use blend_scaler_testkit::servicebus::ServiceBusDouble;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let double = ServiceBusDouble::start().await.unwrap();
        for i in 0..100 {
            double.set_queue(&format!("orders-{i:03}"), (i * 7) as u64);
        }
        let options = double.options().clone();
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let token = sas_token(
            &double.endpoint(),
            &options.key_name,
            &Secret::new(options.key.clone()),
            expiry,
        );
        let url = format!(
            "{}/$Resources/Queues?api-version={}&$skip=0&$top=100",
            double.endpoint(),
            blend_scaler::servicebus::client::API_VERSION
        );
        reqwest::Client::new()
            .get(url)
            .header("Authorization", token.expose())
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

fn servicebus_page(c: &mut Criterion) {
    use blend_scaler::servicebus::atom;
    let body = list_page();
    let entries = atom::page_from(&body, "bench").unwrap();
    assert_eq!(entries.len(), 100, "a full page");
    let mut g = c.benchmark_group("servicebus_list_page");
    g.throughput(criterion::Throughput::Elements(100));
    g.bench_function("parse_100_queues", |b| {
        b.iter(|| atom::page_from(black_box(&body), "bench").unwrap())
    });
    // The baseline: quick-xml reading the same page's events and nothing else, the floor
    // for any parser built on it.
    g.bench_function("quick_xml_events_only", |b| {
        b.iter(|| {
            let mut reader = quick_xml::Reader::from_str(black_box(&body));
            let mut events = 0usize;
            loop {
                match reader.read_event().unwrap() {
                    quick_xml::events::Event::Eof => break events,
                    _ => events += 1,
                }
            }
        })
    });
    g.finish();
    eprintln!("(the page is {} bytes)", body.len());
}

criterion_group!(benches, metadata_parsing, blend_decision, servicebus_page);
criterion_main!(benches);
