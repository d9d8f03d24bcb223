//! A Prometheus that stops, never answers or answers with an error status.

use super::*;

#[tokio::test]
async fn with_prometheus_stopped_reads_fail_and_the_cache_keeps_the_last_good_value_with_its_age() {
    let mut server = Prometheus::builder()
        .gauge("http_rps", &[], 42.0)
        .start()
        .await;
    let metrics = Metrics::new();
    let refresher = Refresher::new(upstream_on_loopback(metrics.clone()), fast_refresh());
    let plan = plan(
        &server.url(),
        &[("query", "http_rps"), ("staleAfter", "1s")],
    );
    let first = observe_until(&refresher, &plan, Duration::from_secs(2), |o| {
        o.value.is_some()
    })
    .await;
    assert_eq!(first.value, Some(42.0));

    server.stop();
    // The read itself is an error naming the server, never a 0.
    let direct = read(refresher.upstream(), &plan).await;
    match &direct {
        Err(SignalError::Connect(detail)) => {
            assert!(detail.contains(&server.addr().to_string()), "{detail}")
        }
        other => panic!("expected a connection error, got {other:?}"),
    }

    let kept = observe_until(&refresher, &plan, Duration::from_secs(5), |o| {
        o.error.is_some()
    })
    .await;
    assert_eq!(kept.value, Some(42.0), "the last good value is kept");
    assert!(matches!(
        kept.error.as_deref(),
        Some(SignalError::Connect(_))
    ));
    assert!(kept.age.expect("an age") >= Duration::from_millis(300));

    // Once older than staleAfter, the decision has no value for it (the engine's UNAVAILABLE).
    let stale = observe_until(&refresher, &plan, Duration::from_secs(5), |o| {
        o.age.is_some_and(|a| a > Duration::from_secs(1))
    })
    .await;
    let decision = decide(Inputs {
        plan: &plan,
        now: chrono::Utc::now(),
        servicebus: None,
        prometheus: Some(&stale),
    });
    let missing = decision.replicas().expect_err("a stale signal is missing");
    assert_eq!(missing.kind, SignalKind::Prometheus);
    assert!(missing.error.is_some());
    assert!(
        metrics
            .encode()
            .contains(r#"upstream="prometheus",outcome="error""#)
    );

    // And it recovers on its own when the server is back.
    server.restart().await;
    let recovered = observe_until(&refresher, &plan, Duration::from_secs(5), |o| {
        o.error.is_none() && o.age.is_some_and(|a| a < Duration::from_secs(1))
    })
    .await;
    assert!(recovered.error.is_none(), "{:?}", recovered.error);
    assert_eq!(recovered.value, Some(42.0));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_an_error() {
    // Accepts connections and says nothing, like a hung Prometheus.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let metrics = Metrics::new();
    let upstream = upstream_on_loopback(metrics.clone());
    let p = plan(
        &format!("http://{addr}"),
        &[("query", "up"), ("timeout", "300")],
    );
    let started = tokio::time::Instant::now();
    assert_eq!(
        read(&upstream, &p).await,
        Err(SignalError::Timeout(Duration::from_millis(300)))
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        metrics
            .encode()
            .contains(r#"upstream="prometheus",outcome="timeout"} 1"#)
    );
    holder.abort();
}

#[tokio::test]
async fn non_2xx_answers_are_errors_and_throttling_pauses_the_server() {
    let server = Prometheus::builder()
        .gauge("http_rps", &[], 7.0)
        .start()
        .await;
    let proxy = Proxy::start(&server.url(), None).await;
    let upstream = upstream_on_loopback(Metrics::new());
    let p = plan(&proxy.url(), &[("query", "http_rps")]);
    assert_eq!(read(&upstream, &p).await, Ok(7.0));

    proxy.fail_with(Some((500, None)));
    assert!(matches!(
        read(&upstream, &p).await,
        Err(SignalError::Http { status: 500, .. })
    ));
    proxy.fail_with(Some((502, None)));
    assert!(matches!(
        read(&upstream, &p).await,
        Err(SignalError::Http { status: 502, .. })
    ));

    proxy.fail_with(Some((429, Some(2))));
    let (server_key, query) = key(prom(&p));
    let group = upstream
        .read(&server_key, std::slice::from_ref(&query))
        .await;
    assert_eq!(group.retry_after, Some(Duration::from_secs(2)));
    assert!(matches!(
        group.values.get(&query),
        Some(Err(SignalError::Throttled { status: 429, .. }))
    ));

    proxy.fail_with(None);
    assert_eq!(read(&upstream, &p).await, Ok(7.0));
}
