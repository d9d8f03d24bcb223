//! The hostile upstreams, served by this process on loopback, and the metadata that points at them.

use std::collections::HashMap;

use crate::md;

/// A hostile "Prometheus": `/big…/api/v1/query` answers 15 MiB of series (the audit's
/// `evil.py`, here streamed without a length), `/many…` 9,000 series (about 800 KiB, under every cap, so it is decoded),
/// anything else one series.
pub async fn hostile_prometheus() -> String {
    let series = r#"{"metric":{},"value":[0,"1"]}"#;
    let body = |n: usize| {
        axum::body::Bytes::from(format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            vec![series; n].join(",")
        ))
    };
    let (big, many, one) = (body((15 << 20) / (series.len() + 1)), body(9_000), body(1));
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let body = if uri.path().starts_with("/big") {
            // Streamed in 64 KiB chunks with no Content-Length, the harder case: the scaler
            // cannot refuse it from the headers and reads until its cap.
            chunked(&big, 64 << 10)
        } else if uri.path().starts_with("/many") {
            axum::body::Body::from(many.clone())
        } else {
            axum::body::Body::from(one.clone())
        };
        async move { ([("content-type", "application/json")], body) }
    });
    serve(app).await
}

/// `bytes` as a body streamed in chunks of `size` with no `Content-Length`.
fn chunked(bytes: &axum::body::Bytes, size: usize) -> axum::body::Body {
    let chunks: Vec<_> = (0..bytes.len())
        .step_by(size)
        .map(|i| Ok::<_, std::io::Error>(bytes.slice(i..(i + size).min(bytes.len()))))
        .collect();
    axum::body::Body::from_stream(futures::stream::iter(chunks))
}

/// Serves `app` on a loopback port of its own; its URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// `n` hostile "Service Bus" namespace hosts: every GET is HTTP 200 with a feed of 1,000
/// queue entries, about 800 KiB (under the 2 MiB cap and the entry limit, so it is parsed
/// whole every refresh), sent chunked as Service Bus sends its answers.
pub async fn hostile_servicebus(n: usize) -> Vec<String> {
    let entry = |i: usize| {
        format!(
            r#"<entry><title type="text">queue-{i:04}</title><content type="application/xml"><QueueDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"><MessageCount>1</MessageCount><CountDetails xmlns:d2p1="http://schemas.microsoft.com/netservices/2011/06/servicebus"><d2p1:ActiveMessageCount>1</d2p1:ActiveMessageCount></CountDetails><!-- {pad} --></QueueDescription></content></entry>"#,
            pad = "x".repeat(380)
        )
    };
    let feed = axum::body::Bytes::from(format!(
        r#"<feed xmlns="http://www.w3.org/2005/Atom"><title type="text">Queues</title>{}</feed>"#,
        (0..1_000).map(entry).collect::<String>()
    ));
    let app = axum::Router::new().fallback(move || {
        let body = chunked(&feed, 16 << 10);
        async move { ([("content-type", "application/atom+xml; type=feed")], body) }
    });
    let mut hosts = Vec::new();
    for _ in 0..n {
        hosts.push(serve(app.clone()).await);
    }
    hosts
}

/// A queue on a hostile Service Bus namespace host.
pub fn servicebus(endpoint: &str, queue: String) -> HashMap<String, String> {
    md(&[
        ("endpoint", endpoint.to_string()),
        (
            "connectionFromEnv",
            format!("Endpoint={endpoint}/;SharedAccessKeyName=k;SharedAccessKey=a2V5"),
        ),
        ("queueName", queue),
        ("messageCount", "5".into()),
    ])
}

pub fn prom(address: String, query: String) -> HashMap<String, String> {
    md(&[
        ("serverAddress", address),
        ("query", query),
        ("threshold", "1".into()),
        ("seriesAggregation", "sum".into()),
        ("timeout", "60s".into()),
    ])
}
