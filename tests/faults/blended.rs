//! What the blended answer does when one signal fails, and that a held answer belongs to its
//! own plan, trigger and ScaledObject.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_signal_holds_the_blended_answer_then_drops_out_for_the_healthy_one() {
    let prom = Prometheus::builder().start().await;
    let s = scaler(Duration::from_secs(1)).await;
    let (double, _) = good_queue().await;
    // The traffic falls from 45 to 5 at `falls_at`, in one fixed query (a changed query would
    // be a new plan, which starts without a held answer).
    let falls_at = chrono::Utc::now().timestamp() + 2;
    let query = format!("vector(5 + 40 * (time() < bool {falls_at}))");
    // Service Bus 12 / 5 = 3, Prometheus 45 / 10 = 5: max 5.
    let blended = object(
        "blended",
        &[
            ("endpoint", double.endpoint()),
            ("connectionFromEnv", double.connection_string()),
            ("queueName", "orders".into()),
            ("messageCount", "5".into()),
            ("serverAddress", prom.url()),
            ("query", query),
            ("threshold", "10".into()),
        ],
    );
    first_good_answer(&s, &blended, 5).await;

    // Service Bus fails (its value is kept, stale) and the traffic falls to 5 / 10 = 1:
    // fresh, the blend would be 3, but while a value is stale the answer may not fall below
    // the last one (the safety rule, README "Answers to KEDA").
    double.inject(Fault::Truncated, None);
    let fault_at = Instant::now();
    // Wait until a read has failed, so the Service Bus value is the kept one.
    let failed = r#"blend_scaler_upstream_requests_total{upstream="servicebus",outcome="error"}"#;
    while !s.running.engine.metrics().encode().contains(failed) {
        // KEDA keeps asking: reads follow its calls.
        poll(&s, &blended).await;
        assert!(
            fault_at.elapsed() < Duration::from_secs(2),
            "no failed read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past staleAfter the backlog drops out and the healthy Prometheus decides alone (README, "Answers to KEDA").
    let seen = poll_until(
        &s,
        &blended,
        STALE + Duration::from_secs(4),
        "drop-out",
        |a| a.value() == Some(1),
    )
    .await;
    for a in &seen {
        assert!(
            matches!(a.value(), Some(5) | Some(1)),
            "held at 5 while stale, then 1; never 3, never UNAVAILABLE: {a:?}"
        );
        if a.at < fault_at + STALE - Duration::from_secs(1) {
            assert_eq!(a.value(), Some(5), "held within staleAfter: {a:?}");
        }
    }

    // Service Bus recovers: with every signal fresh, the blend is the backlog's 3.
    double.clear_faults();
    poll_until(&s, &blended, Duration::from_secs(4), "fresh", |a| {
        a.value() == Some(3)
    })
    .await;
    finish(s).await;
}

/// The partial outage of README's "Answers to KEDA": one signal failing is not a full outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_prometheus_beside_a_healthy_backlog_holds_then_drops_out_never_unavailable() {
    let prom = Prometheus::builder().start().await;
    let proxy = Proxy::start(&prom.url(), None).await;
    let s = scaler(Duration::from_secs(1)).await;
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 12);
    let mut obj = queue_object("blended", &double, "orders");
    obj.scaler_metadata.extend(keda::metadata([
        ("serverAddress", proxy.url()),
        ("query", "vector(95)".into()),
        ("threshold", "10".into()),
    ]));
    // Prometheus decides: ceil(95 / 10) = 10 over the backlog's ceil(12 / 5) = 3.
    first_good_answer(&s, &obj, 10).await;

    proxy.fail_with(Some((500, None)));
    let fault_at = Instant::now();
    let seen = poll_until(&s, &obj, STALE + Duration::from_secs(3), "drop-out", |a| {
        a.value() == Some(3)
    })
    .await;
    assert!(
        seen.iter().all(|a| matches!(a.value(), Some(10) | Some(3))),
        "held at 10, then the backlog's 3; never UNAVAILABLE, never 0: {seen:#?}"
    );
    assert!(
        seen.iter()
            .filter(|a| a.at < fault_at + STALE - Duration::from_millis(500))
            .all(|a| a.value() == Some(10)),
        "the failing signal's last value is a floor within staleAfter: {seen:#?}"
    );

    // With the backlog failing too, no configured signal has a value: UNAVAILABLE.
    double.inject(
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        None,
    );
    poll_until(
        &s,
        &obj,
        STALE + Duration::from_secs(3),
        "a full outage",
        |a| a.unavailable(),
    )
    .await;
    finish(s).await;
}

/// A held answer cannot be poisoned by another plan for the same object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_answer_obeys_the_current_plan_and_is_never_inherited_from_another() {
    let prom = Prometheus::builder().start().await;
    let proxy = Proxy::start(&prom.url(), None).await;
    let s = scaler(Duration::from_secs(1)).await;
    let web = |extra: &[(&str, &str)]| {
        let mut obj = prometheus_object("web", &proxy.url(), "vector(45)");
        obj.scaler_metadata
            .extend(keda::metadata(extra.iter().copied()));
        obj
    };
    let own = web(&[("maxReplicas", "10")]);
    first_good_answer(&s, &own, 5).await;

    // A direct caller names the same object with a plan of its own and a huge answer.
    let spoof = prometheus_object("web", &proxy.url(), "vector(42949672950)");
    assert_eq!(poll(&s, &spoof).await.value(), Some(i64::from(u32::MAX)));

    // The object's upstream fails: its own plan's stale value decides, not the spoofed answer.
    proxy.fail_with(Some((500, None)));
    tokio::time::sleep(INTERVAL * 2).await;
    let a = poll(&s, &own).await;
    assert_eq!(a.value(), Some(5), "{a:?}");

    // Lowering maxReplicas while the upstream is failing lowers the held answer too.
    let lowered = web(&[("maxReplicas", "2")]);
    let a = poll(&s, &lowered).await;
    assert_eq!(a.value(), Some(2), "{a:?}");
    finish(s).await;
}

/// Two `external` triggers of one ScaledObject keep their own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_triggers_on_one_scaled_object_do_not_share_a_held_answer() {
    let prom = Prometheus::builder().start().await;
    let proxy = Proxy::start(&prom.url(), None).await;
    let s = scaler(Duration::from_secs(1)).await;
    let trigger = |metric: &str, query: &str| {
        let mut obj = prometheus_object("shop", &proxy.url(), query);
        obj.scaler_metadata
            .insert("metricName".into(), metric.into());
        obj
    };
    let first = trigger("orders", "vector(45)");
    let second = trigger("payments", "vector(5)");
    first_good_answer(&s, &first, 5).await;
    first_good_answer(&s, &second, 1).await;

    proxy.fail_with(Some((500, None)));
    for _ in 0..4 {
        tokio::time::sleep(INTERVAL).await;
        assert_eq!(poll(&s, &first).await.value(), Some(5));
        assert_eq!(poll(&s, &second).await.value(), Some(1));
    }
    finish(s).await;
}

/// ScaledObjectRef names are Kubernetes names, since they become labels and log fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_kubernetes_names_are_refused_naming_the_field() {
    let s = scaler(Duration::from_secs(1)).await;
    let md = keda::metadata([
        keda::SCALER_ADDRESS,
        ("start", "0 8 * * *"),
        ("end", "0 20 * * *"),
        ("desiredReplicas", "2"),
    ]);
    for (namespace, name, field) in [
        ("faults", "web\u{0}x", "name"),
        ("faults", "Web", "name"),
        ("faults", "web\r\nx", "name"),
        ("faults", "we\u{202e}b", "name"),
        ("faults", "a/b", "name"),
        ("faults", "-web", "name"),
        ("fa.ults", "web", "namespace"),
        ("", "web", "namespace"),
        (&"n".repeat(64), "web", "namespace"),
    ] {
        let obj = keda::object(namespace, name, md.clone());
        let err = keda::metric_value(&mut s.client.clone(), &obj, keda::METRIC)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{namespace:?}/{name:?}");
        assert!(
            err.message().contains(&format!("ScaledObjectRef.{field}")),
            "{namespace:?}/{name:?}: {}",
            err.message()
        );
    }
    let ok = keda::object("faults", "web.v2-1", md);
    assert!(poll(&s, &ok).await.metrics.is_ok());
    finish(s).await;
}
