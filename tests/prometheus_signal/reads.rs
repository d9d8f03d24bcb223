//! What a query reads: values, rates, empty and several series, bad PromQL, the request's
//! parameters, and one request per refresh for a query many ScaledObjects share.

use super::*;

#[tokio::test]
async fn a_known_value_gives_ceil_value_over_threshold_replicas_and_the_right_activation() {
    let server = Prometheus::builder()
        .gauge("http_rps", &[], 123.4)
        .start()
        .await;
    let source = prometheus::source(fast_refresh(), Metrics::new(), &HostRules::loopback());

    for (activation, active) in [("100", true), ("123.4", false), ("200", false)] {
        let plan = plan(
            &server.url(),
            &[
                ("query", "http_rps"),
                ("threshold", "10"),
                ("activationThreshold", activation),
            ],
        );
        let obs = source.observe(prom(&plan)).await;
        assert_eq!(obs.value, Some(123.4));
        assert!(obs.error.is_none(), "{:?}", obs.error);
        let decision = decide(Inputs {
            plan: &plan,
            now: chrono::Utc::now(),
            servicebus: None,
            prometheus: Some(&obs),
        });
        assert_eq!(replicas_for(123.4, 10.0), 13);
        assert_eq!(decision.replicas(), Ok(13));
        assert_eq!(
            decision.active(),
            Ok(active),
            "activationThreshold {activation}"
        );
    }
}

#[tokio::test]
async fn a_request_rate_over_backfilled_counters_is_read_exactly() {
    let server = Prometheus::builder()
        .counter("http_requests_total", &[("pod", "a")], 5.0)
        .counter("http_requests_total", &[("pod", "b")], 7.5)
        .start()
        .await;
    let upstream = upstream_on_loopback(Metrics::new());
    let plan = plan(
        &server.url(),
        &[
            ("query", "sum(rate(http_requests_total[1m]))"),
            ("threshold", "5"),
        ],
    );
    let value = read(&upstream, &plan).await.expect("a rate");
    assert!((value - 12.5).abs() < 1e-9, "rate {value}");
    assert_eq!(replicas_for(value, 5.0), 3);
}

#[tokio::test]
async fn an_empty_result_or_nan_follows_ignore_null_values() {
    let server = Prometheus::builder()
        .gauge("http_rps", &[], 123.4)
        .start()
        .await;
    let upstream = upstream_on_loopback(Metrics::new());
    let empty = "no_such_metric";
    let nan = "(http_rps - http_rps) / (http_rps - http_rps)";
    let inf = "http_rps / (http_rps - http_rps)";
    for query in [empty, nan, inf] {
        let ignoring = plan(&server.url(), &[("query", query)]);
        assert_eq!(read(&upstream, &ignoring).await, Ok(0.0), "{query}");
        let strict = plan(
            &server.url(),
            &[("query", query), ("ignoreNullValues", "false")],
        );
        assert_eq!(
            read(&upstream, &strict).await,
            Err(SignalError::NullResult),
            "{query}"
        );
    }
}

#[tokio::test]
async fn several_series_follow_series_aggregation_or_are_an_error() {
    let server = Prometheus::builder()
        .gauge("queue_depth", &[("pod", "a")], 10.0)
        .gauge("queue_depth", &[("pod", "b")], 20.0)
        .gauge("queue_depth", &[("pod", "c")], 60.0)
        .start()
        .await;
    let upstream = upstream_on_loopback(Metrics::new());
    let base = [("query", "queue_depth")];
    let refused = read(&upstream, &plan(&server.url(), &base)).await;
    assert_eq!(refused, Err(SignalError::MultipleSeries(3)));
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("seriesAggregation")
    );
    for (aggregation, want) in [("sum", 90.0), ("max", 60.0), ("avg", 30.0)] {
        let p = plan(
            &server.url(),
            &[("query", "queue_depth"), ("seriesAggregation", aggregation)],
        );
        assert_eq!(read(&upstream, &p).await, Ok(want), "{aggregation}");
    }
}

#[tokio::test]
async fn invalid_promql_is_an_invalid_query_error_without_prometheus_own_words() {
    let server = Prometheus::builder()
        .gauge("http_rps", &[], 1.0)
        .start()
        .await;
    let metrics = Metrics::new();
    let upstream = upstream_on_loopback(metrics.clone());
    let p = plan(&server.url(), &[("query", "sum(rate(http_rps[5m])")]);
    match read(&upstream, &p).await {
        Err(SignalError::InvalidQuery(detail)) => {
            assert!(detail.contains("bad_data"), "{detail}");
            assert!(!detail.contains("parse error"), "{detail}");
        }
        other => panic!("expected InvalidQuery, got {other:?}"),
    }
    // A range vector is answered by Prometheus but is no scaling value either.
    let p = plan(&server.url(), &[("query", "http_rps[1m]")]);
    assert!(matches!(
        read(&upstream, &p).await,
        Err(SignalError::InvalidQuery(_))
    ));
    assert!(
        metrics.encode().contains(
            r#"blend_scaler_upstream_requests_total{upstream="prometheus",outcome="bad_query"} 1"#
        ),
        "{}",
        metrics.encode()
    );
}

#[tokio::test]
async fn query_parameters_namespace_and_custom_headers_reach_the_server() {
    let server = Prometheus::builder()
        .steps("deployed_version", &[], &[(-3600, 1.0), (-600, 2.0)])
        .start()
        .await;
    let proxy = Proxy::start(&server.url(), None).await;
    let upstream = upstream_on_loopback(Metrics::new());
    let twenty_minutes_ago = (server.now() - 1200).to_string();

    // Prometheus honours `time`: the value from before the step proves the parameter arrived.
    let now_plan = plan(&proxy.url(), &[("query", "deployed_version")]);
    assert_eq!(read(&upstream, &now_plan).await, Ok(2.0));
    let params = format!("time={twenty_minutes_ago},dedup=true");
    let past_plan = plan(
        &proxy.url(),
        &[
            ("query", "deployed_version"),
            ("queryParameters", &params),
            ("prometheusNamespace", "team-a"),
            ("customHeaders", "X-Scope-OrgID=tenant-a,X-Extra=1"),
        ],
    );
    assert_eq!(read(&upstream, &past_plan).await, Ok(1.0));

    let seen = proxy.requests();
    let last = seen.last().expect("the proxy saw the query");
    assert_eq!(last.path, "/api/v1/query");
    assert_eq!(last.param("query"), Some("deployed_version"));
    assert_eq!(last.param("time"), Some(twenty_minutes_ago.as_str()));
    assert_eq!(last.param("dedup"), Some("true"));
    assert_eq!(last.param("namespace"), Some("team-a"));
    assert_eq!(
        last.headers.get("x-scope-orgid").map(String::as_str),
        Some("tenant-a")
    );
    assert_eq!(last.headers.get("x-extra").map(String::as_str), Some("1"));
    assert_eq!(seen[0].param("namespace"), None);
}

#[tokio::test]
async fn identical_queries_from_twenty_scaledobjects_cost_one_request_per_refresh() {
    let server = Prometheus::builder()
        .gauge("http_rps", &[], 90.0)
        .start()
        .await;
    let proxy = Proxy::start(&server.url(), None).await;
    let interval = Duration::from_millis(500);
    let source = prometheus::source(
        RefreshConfig {
            interval,
            fast_interval: interval,
            ..fast_refresh()
        },
        Metrics::new(),
        &HostRules::loopback(),
    );
    // Twenty ScaledObjects: same server and query, each with its own threshold.
    let plans: Vec<Plan> = (1..=20)
        .map(|i| {
            plan(
                &proxy.url(),
                &[("query", "http_rps"), ("threshold", &i.to_string())],
            )
        })
        .collect();

    let first = futures::future::join_all(plans.iter().map(|p| source.observe(prom(p)))).await;
    assert!(first.iter().all(|o| o.value == Some(90.0)));
    assert_eq!(
        proxy.query_count(),
        1,
        "twenty first reads share one request"
    );

    // The scaler's own count of its refreshes: the group's generation, bumped once per read.
    let (mut refreshed, _fast) = source.watch(prom(&plans[0]));

    // KEDA polls each of them every 100 ms for 2 s: 400 calls, all from the cache.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        for p in &plans {
            assert_eq!(source.observe(prom(p)).await.value, Some(90.0));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Requests are compared with the refreshes the scaler made, not with the time that passed,
    // so a loaded machine (fewer refreshes in the 2 s) cannot fail it. Just after a refresh the
    // next one is an interval away; one still in flight shows as one request more, and is
    // looked at again after it ends.
    let (mut refreshes, mut matched) = (0, false);
    for _ in 0..5 {
        refreshed.changed().await.unwrap();
        refreshes = *refreshed.borrow_and_update() as usize;
        let requests = proxy.query_count();
        if requests == refreshes {
            matched = true;
            break;
        }
        assert_eq!(
            requests,
            refreshes + 1,
            "{requests} requests for {refreshes} refreshes of twenty identical queries"
        );
    }
    assert!(matched, "no quiet moment after five refreshes");
    assert!(refreshes >= 2, "the group was refreshed: {refreshes}");
    // Prometheus' own counter agrees with the proxy once the refreshes have ended.
    drop(_fast);
    drop(source);
    tokio::time::sleep(interval * 2).await;
    assert_eq!(server.query_requests().await as usize, proxy.query_count());
}
