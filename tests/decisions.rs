//! `/decisions`, `explain --from` and the Service Bus count series, end to end: the real
//! server with `serve`'s sources, the Service Bus double and a real Prometheus, called the
//! way KEDA calls it, then read over HTTP the way an operator would.

#[path = "support/keda.rs"]
mod keda;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::process::Command;
use std::time::Duration;

use blend_scaler::cache::RefreshConfig;
use blend_scaler::decisions::{Decisions, DecisionsOptions, SignalState};
use blend_scaler::server::{Running, ServerConfig};
use blend_scaler_testkit::servicebus::{Counts, ServiceBusDouble};
use prometheus::Prometheus;
use serde_json::Value;

const POD: &str = "blend-scaler-7d9f-abcde";
const QUERY: &str = "sum(http_rps)";

async fn scaler(interval: Duration, show_queries: bool) -> (Running, keda::Client) {
    let mut config = ServerConfig::loopback();
    config.engine.refresh = keda::refresh_every(interval);
    config.decisions = DecisionsOptions {
        show_queries,
        pod: POD.to_string(),
    };
    keda::start_with_default_sources(config).await
}

fn orders(
    double: &ServiceBusDouble,
    prometheus: &Prometheus,
) -> blend_scaler::proto::ScaledObjectRef {
    keda::object(
        "production",
        "orders",
        keda::metadata([
            ("endpoint", double.endpoint()),
            ("connectionFromEnv", double.connection_string()),
            ("queueName", "orders".to_string()),
            ("messageCount", "10".to_string()),
            ("serverAddress", prometheus.url()),
            ("query", QUERY.to_string()),
            ("threshold", "100".to_string()),
            ("minReplicas", "1".to_string()),
            ("maxReplicas", "20".to_string()),
            ("staleAfter", "3s".to_string()),
        ]),
    )
}

async fn decisions(running: &Running, path: &str) -> Decisions {
    let (status, body) = keda::http_get(running, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn queue_counts(active: u64, dead_letter: u64) -> Counts {
    Counts {
        active,
        dead_letter,
        scheduled: 2,
        transfer: 1,
        transfer_dead_letter: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_show_what_keda_was_answered_per_signal_and_which_one_decided() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue_counts("orders", queue_counts(37, 5));
    let mut prometheus = Prometheus::builder()
        .gauge("http_rps", &[], 450.0)
        .start()
        .await;
    let (running, mut client) = scaler(Duration::from_millis(250), false).await;
    let obj = orders(&double, &prometheus);

    let (replicas, _, active) = keda::poll(&mut client, &obj, keda::METRIC).await.unwrap();
    assert_eq!((replicas, active), (5, true), "450/100 beats 37/10");

    let all = decisions(&running, "/decisions").await;
    assert_eq!(all.pod, POD);
    assert_eq!(all.decisions.len(), 1);
    let d = &all.decisions[0];
    assert_eq!(
        (d.scaledobject_namespace.as_str(), d.scaledobject.as_str()),
        ("production", "orders")
    );
    assert_eq!(d.metric_name, "blended-replicas");
    assert_eq!(d.replicas, Some(5));
    assert_eq!(d.active, Some(true));
    assert_eq!(d.decided_by.as_deref(), Some("prometheus"));
    assert_eq!(d.policy, "max");
    assert_eq!((d.clamp.min, d.clamp.max), (Some(1), Some(20)));
    assert_eq!(d.stale_after_seconds, 3.0);
    let at = d.answered_at.expect("answered");
    assert!((chrono::Utc::now() - at).num_seconds() < 30, "{at}");
    let signal = |d: &blend_scaler::decisions::DecisionView, name: &str| {
        d.signals
            .iter()
            .find(|s| s.signal == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", d.signals))
            .clone()
    };
    let sb = signal(d, "servicebus");
    assert_eq!(
        (sb.state, sb.value, sb.replicas, sb.active),
        (SignalState::Fresh, Some(37.0), Some(4), Some(true))
    );
    assert!(sb.age_seconds.is_some_and(|a| a < 5.0), "{sb:?}");
    let prom = signal(d, "prometheus");
    assert_eq!(
        (prom.state, prom.value, prom.replicas),
        (SignalState::Fresh, Some(450.0), Some(5))
    );
    // The entity's other counts, from the read that gave the active count.
    let counts = d
        .servicebus
        .as_ref()
        .and_then(|s| s.counts)
        .expect("counts");
    assert_eq!(
        (
            counts.active,
            counts.dead_letter,
            counts.scheduled,
            counts.transfer,
            counts.transfer_dead_letter
        ),
        (Some(37), Some(5), Some(2), Some(1), Some(0))
    );
    assert_eq!(d.servicebus.as_ref().unwrap().entity, "queue `orders`");

    // No query text by default, and never a credential or an address.
    let (_, body) = keda::http_get(&running, "/decisions").await;
    assert_eq!(d.prometheus_query, None);
    for secret_or_address in [
        "http_rps",
        "SharedAccessKey",
        double.connection_string().as_str(),
        double.endpoint().as_str(),
        prometheus.url().as_str(),
    ] {
        assert!(
            !body.contains(secret_or_address),
            "{secret_or_address} in {body}"
        );
    }

    // One ScaledObject by name; an unknown one says which pod did not know it.
    let one = decisions(&running, "/decisions/production/orders").await;
    assert_eq!(one.decisions, all.decisions);
    let (status, body) = keda::http_get(&running, "/decisions/production/billing").await;
    assert_eq!(status, 404, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["pod"], POD);

    // `explain --from` prints the same table `explain` prints for the same upstreams.
    let addr = running.http_addr.unwrap();
    let remote = explain(&["--from", &format!("http://{addr}"), "production/orders"]);
    assert!(remote.status.success(), "{remote:?}");
    let remote = String::from_utf8(remote.stdout).unwrap();
    assert!(remote.contains(&format!("on pod {POD}")), "{remote}");
    assert!(remote.contains("clamp: min 1, max 20"), "{remote}");
    let metadata: Vec<String> = obj
        .scaler_metadata
        .iter()
        .map(|(k, v)| format!("--metadata={k}={v}"))
        .collect();
    let mut args: Vec<&str> = metadata.iter().map(String::as_str).collect();
    args.push("--allow-loopback-upstreams");
    let local = explain(&args);
    assert!(local.status.success(), "{local:?}");
    let local = String::from_utf8(local.stdout).unwrap();
    let table = |text: &str| -> Vec<String> {
        // Rows without the age column, which differs by when each was read.
        text.lines()
            .skip_while(|l| !l.trim_start().starts_with("signal "))
            .map(|l| {
                let mut cols: Vec<&str> = l.split_whitespace().collect();
                if cols.len() == 5 && !l.contains("result:") {
                    cols.pop();
                }
                cols.join(" ")
            })
            .collect()
    };
    assert_eq!(
        table(&remote),
        table(&local),
        "remote:\n{remote}\nlocal:\n{local}"
    );
    assert!(
        remote.contains("result: 5 replicas, decided by prometheus; active: yes"),
        "{remote}"
    );
    assert!(
        remote.contains("dead-lettered 5, scheduled 2, transfer 1"),
        "{remote}"
    );
    let missing = explain(&["--from", &format!("http://{addr}"), "production/billing"]);
    assert!(!missing.status.success());
    let err = String::from_utf8(missing.stderr).unwrap();
    assert!(
        err.contains("tracks no ScaledObject production/billing"),
        "{err}"
    );

    // The dead-letter queue grows: the next refresh's read carries the new count.
    double.set_queue_counts("orders", queue_counts(37, 9));
    let want = r#"blend_scaler_servicebus_dead_letter_messages{scaledobject_namespace="production",scaledobject="orders"} 9"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        keda::poll(&mut client, &obj, keda::METRIC).await.unwrap();
        let (_, text) = keda::http_get(&running, "/metrics").await;
        if text.contains(want) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let d = decisions(&running, "/decisions/production/orders").await;
    let counts = d.decisions[0].servicebus.as_ref().and_then(|s| s.counts);
    assert_eq!(counts.and_then(|c| c.dead_letter), Some(9));

    // Prometheus goes away: its value is held, then past staleAfter it is missing with the
    // reason, and the answer comes from Service Bus alone.
    prometheus.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen_held = false;
    loop {
        let polled = keda::poll(&mut client, &obj, keda::METRIC).await;
        let d = decisions(&running, "/decisions/production/orders").await;
        let prom = signal(&d.decisions[0], "prometheus");
        match prom.state {
            SignalState::Held => {
                seen_held = true;
                assert!(prom.reason.is_some(), "{prom:?}");
                // The kept value still counts: the answer stays at 5.
                assert_eq!(polled.unwrap().0, 5);
                assert_eq!(d.decisions[0].decided_by.as_deref(), Some("prometheus"));
            }
            // Service Bus not fresh either (a refresh of it can time out on a loaded machine):
            // a kept value holds the answer up, as it should. Only a fresh read shows Service
            // Bus deciding alone.
            SignalState::Missing
                if signal(&d.decisions[0], "servicebus").state != SignalState::Fresh => {}
            SignalState::Missing => {
                let reason = prom.reason.clone().unwrap_or_default();
                assert!(
                    reason.contains("prometheus signal has no usable value"),
                    "{reason}"
                );
                assert_eq!(d.decisions[0].replicas, Some(4), "Service Bus alone: 37/10");
                assert_eq!(d.decisions[0].decided_by.as_deref(), Some("servicebus"));
                assert_eq!(polled.unwrap().0, 4);
                break;
            }
            SignalState::Fresh => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never missing: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen_held,
        "a failing upstream's value is held before it goes stale"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_text_is_shown_only_when_the_operator_enables_it() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 1);
    let prometheus = Prometheus::builder()
        .gauge("http_rps", &[], 1.0)
        .start()
        .await;
    let (running, mut client) = scaler(Duration::from_secs(5), true).await;
    let obj = orders(&double, &prometheus);
    keda::poll(&mut client, &obj, keda::METRIC).await.unwrap();
    let d = decisions(&running, "/decisions/production/orders").await;
    assert_eq!(d.decisions[0].prometheus_query.as_deref(), Some(QUERY));
    let (_, body) = keda::http_get(&running, "/decisions").await;
    assert!(!body.contains(&double.connection_string()), "{body}");

    // A ScaledObject whose only signal cannot be read: KEDA got UNAVAILABLE, and /decisions
    // says so instead of a replica count.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let broken = keda::object(
        "production",
        "reports",
        keda::metadata([
            ("serverAddress", dead),
            ("query", "sum(reports_pending)".to_string()),
            ("threshold", "10".to_string()),
        ]),
    );
    let status = keda::poll(&mut client, &broken, keda::METRIC)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let d = decisions(&running, "/decisions/production/reports").await;
    let d = &d.decisions[0];
    assert_eq!((d.replicas, d.active), (None, None), "{d:?}");
    let error = d.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("prometheus signal has no usable value"),
        "{error}"
    );
    assert_eq!(d.signals[0].state, SignalState::Missing);
    let out = explain(&[
        "--from",
        &format!("http://{}", running.http_addr.unwrap()),
        "production/reports",
    ]);
    assert!(
        !out.status.success(),
        "a missing signal fails explain --from as it fails explain"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("prometheus  error: prometheus signal has no usable value"),
        "{text}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_series_come_from_the_read_that_gives_the_active_count() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue_counts("orders", queue_counts(12, 3));
    double.set_subscription_counts(
        "events",
        "audit",
        Counts {
            active: 4,
            dead_letter: 7,
            scheduled: 0,
            transfer: 0,
            transfer_dead_letter: 2,
        },
    );
    // No background refresh during the test: every read is one a poll caused. A wake reads
    // new items at most once per fast interval: short, so a call that missed the first
    // read's 5 ms coalescing pause (a loaded machine) gets its own read at the next wake
    // rather than an hour later, after its first-read timeout.
    let mut config = ServerConfig::loopback();
    config.engine.refresh = RefreshConfig {
        fast_interval: Duration::from_millis(100),
        ..keda::refresh_every(Duration::from_secs(3600))
    };
    let (running, mut client) = keda::start_with_default_sources(config).await;
    let queue = keda::object(
        "production",
        "orders",
        keda::metadata([
            ("endpoint", double.endpoint()),
            ("connectionFromEnv", double.connection_string()),
            ("queueName", "orders".to_string()),
        ]),
    );
    let subscription = keda::object(
        "production",
        "audit",
        keda::metadata([
            ("endpoint", double.endpoint()),
            ("connectionFromEnv", double.connection_string()),
            ("topicName", "events".to_string()),
            ("subscriptionName", "audit".to_string()),
        ]),
    );
    // Both at once, as KEDA polls after a restart: whether one read covers both or the
    // second call waits for the next wake, each entity costs one GET (the namespace is
    // listed only when one read covers two queues, or two subscriptions of a topic).
    let mut other = client.clone();
    let (q, s) = tokio::join!(
        keda::poll(&mut client, &queue, keda::METRIC),
        keda::poll(&mut other, &subscription, keda::METRIC)
    );
    assert_eq!(
        q.unwrap().0,
        3,
        "12 messages, 5 per replica (KEDA's default)"
    );
    assert_eq!(s.unwrap().0, 1);
    // One GET per entity gave the value and every other count.
    assert_eq!(double.requests(), 2, "{:?}", double.request_log());
    let (_, text) = keda::http_get(&running, "/metrics").await;
    for line in [
        r#"blend_scaler_servicebus_dead_letter_messages{scaledobject_namespace="production",scaledobject="orders"} 3"#,
        r#"blend_scaler_servicebus_scheduled_messages{scaledobject_namespace="production",scaledobject="orders"} 2"#,
        r#"blend_scaler_servicebus_transfer_messages{scaledobject_namespace="production",scaledobject="orders"} 1"#,
        r#"blend_scaler_servicebus_transfer_dead_letter_messages{scaledobject_namespace="production",scaledobject="orders"} 0"#,
        r#"blend_scaler_servicebus_active_messages{scaledobject_namespace="production",scaledobject="orders"} 12"#,
        r#"blend_scaler_servicebus_dead_letter_messages{scaledobject_namespace="production",scaledobject="audit"} 7"#,
        r#"blend_scaler_servicebus_transfer_dead_letter_messages{scaledobject_namespace="production",scaledobject="audit"} 2"#,
        r#"blend_scaler_max_replicas"#,
    ] {
        if line == "blend_scaler_max_replicas" {
            // No maxReplicas in these triggers: no series rather than a made-up bound.
            assert!(!text.contains("blend_scaler_max_replicas{"), "{text}");
            continue;
        }
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // Scraping and reading /decisions cost the namespace nothing.
    for _ in 0..5 {
        keda::http_get(&running, "/metrics").await;
        keda::http_get(&running, "/decisions").await;
    }
    assert_eq!(double.requests(), 2, "{:?}", double.request_log());
    running.shutdown().await.unwrap();
}

fn explain(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_blend-scaler"))
        .arg("explain")
        .args(args)
        .env_remove("BLEND_SCALER_ALLOW_LOOPBACK_UPSTREAMS")
        .output()
        .expect("running blend-scaler explain")
}
