//! The chart's Grafana dashboard (charts/blend-scaler/files/dashboard.json): every query
//! parses and names only metrics the scaler exports or kube-state-metrics exports.
//!
//! The scaler's names come from a running server's `/metrics` after KEDA-style calls against
//! the Service Bus double and a real Prometheus; each query then runs on a real Prometheus
//! that holds exactly those series and the kube-state-metrics series named below, and must
//! return data. `promtool check rules` parses the same queries as recording rules.

#[path = "support/keda.rs"]
mod keda;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use blend_scaler::server::ServerConfig;
use blend_scaler_testkit::servicebus::{Counts, ServiceBusDouble};
use prometheus::Prometheus;
use serde_json::Value;

/// The kube-state-metrics series the dashboard may use (kube-state-metrics
/// docs/horizontalpodautoscaler-metrics.md and docs/deployment-metrics.md, all STABLE),
/// with labels as it exports them for KEDA's HPA `keda-hpa-<ScaledObject>`.
const KUBE_STATE_METRICS: &[(&str, &[(&str, &str)])] = &[
    (
        "kube_horizontalpodautoscaler_status_current_replicas",
        &[
            ("namespace", "production"),
            ("horizontalpodautoscaler", "keda-hpa-orders"),
        ],
    ),
    (
        "kube_horizontalpodautoscaler_spec_max_replicas",
        &[
            ("namespace", "production"),
            ("horizontalpodautoscaler", "keda-hpa-orders"),
        ],
    ),
    (
        "kube_deployment_status_replicas_available",
        &[
            ("namespace", "blend-scaler"),
            ("deployment", "blend-scaler"),
        ],
    ),
    (
        "kube_deployment_spec_replicas",
        &[
            ("namespace", "blend-scaler"),
            ("deployment", "blend-scaler"),
        ],
    ),
];

fn dashboard() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/blend-scaler/files/dashboard.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel query (rows' panels too), with the panel's title.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("a target without expr");
                out.push((title.clone(), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Grafana's variables with the ScaledObject the test polls selected (a concrete value, so a
/// misspelt label matches nothing, where `.*` would match its absence).
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$namespace", "production")
        .replace("$scaledobject", "orders")
}

/// Names of metrics (`blend_scaler_*`, `kube_*`) a query uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = expr[i..].starts_with("blend_scaler_") || expr[i..].starts_with("kube_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |n| i + n);
            out.insert(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// One exposition line: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// The `name{labels} value` lines of an exposition.
fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value.parse().expect("a number");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let labels = inner
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("key=\"value\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        out.push((name, labels, value));
    }
    out
}

async fn scaler_exposition() -> String {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue_counts(
        "orders",
        Counts {
            active: 37,
            dead_letter: 4,
            scheduled: 1,
            transfer: 0,
            transfer_dead_letter: 0,
        },
    );
    let upstream = Prometheus::builder()
        .gauge("http_rps", &[], 250.0)
        .start()
        .await;
    let mut config = ServerConfig::loopback();
    config.engine.refresh = keda::refresh_every(Duration::from_millis(250));
    let (running, mut client) = keda::start_with_default_sources(config).await;
    let obj = keda::object(
        "production",
        "orders",
        keda::metadata([
            ("endpoint", double.endpoint()),
            ("connectionFromEnv", double.connection_string()),
            ("queueName", "orders".to_string()),
            ("messageCount", "10".to_string()),
            ("serverAddress", upstream.url()),
            ("query", "sum(http_rps)".to_string()),
            ("threshold", "100".to_string()),
            ("maxReplicas", "10".to_string()),
        ]),
    );
    keda::poll(&mut client, &obj, keda::METRIC).await.unwrap();
    let url = format!("http://{}/metrics", running.http_addr.unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    running.shutdown().await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_parses_and_names_only_exported_metrics() {
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    assert!(queries.len() >= 10, "{queries:?}");
    let exposition = scaler_exposition().await;
    let exported: Vec<_> = samples(&exposition);
    let scaler_names: BTreeSet<String> = exported.iter().map(|(n, _, _)| n.clone()).collect();
    let ksm_names: BTreeSet<String> = KUBE_STATE_METRICS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();

    // By name: each metric a query (or a variable) names is exported by one of the two.
    let mut variable_queries: Vec<String> = Vec::new();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            variable_queries.push(q.to_string());
        }
    }
    for (title, expr) in queries
        .iter()
        .map(|(t, e)| (t.as_str(), e.as_str()))
        .chain(variable_queries.iter().map(|q| ("variable", q.as_str())))
    {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: names no metric: {expr}");
        for n in names {
            assert!(
                scaler_names.contains(&n) || ksm_names.contains(&n),
                "{title}: {n} is exported neither by the scaler nor by kube-state-metrics\n{exposition}"
            );
        }
    }

    // Parsed by promtool, as recording rules.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&substitute(expr)).unwrap()
        ));
    }
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let check = Command::new(prometheus::binary("promtool"))
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "{}{}\n{rules}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Run: a real Prometheus holding only the scaler's series and kube-state-metrics' gives
    // every query data (a misspelt metric or label would give none).
    let mut builder = Prometheus::builder();
    for (name, labels, value) in &exported {
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        builder = if name.ends_with("_total") || name.ends_with("_bucket") {
            builder.counter(name, &labels, value.max(1.0))
        } else {
            builder.gauge(name, &labels, *value)
        };
    }
    for (name, labels) in KUBE_STATE_METRICS {
        builder = builder.gauge(name, labels, 3.0);
    }
    let server = builder.start().await;
    let client = reqwest::Client::new();
    for (title, expr) in &queries {
        let body: Value = client
            .get(format!("{}/api/v1/query", server.url()))
            .query(&[("query", substitute(expr))])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "{title}: {expr}: {body}");
        let result = body["data"]["result"].as_array().expect("a vector");
        assert!(!result.is_empty(), "{title}: no data for {expr}");
    }
}
