//! The `prometheus` signal against a real Prometheus server (the Debian `prometheus` package),
//! with exact backfilled series. Needs `apt-get install -y prometheus`; fails without it.

#[path = "support/prometheus.rs"]
mod prometheus_support;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blend_scaler::blend::{Inputs, decide, replicas_for};
use blend_scaler::cache::{RefreshConfig, Refresher, Upstream};
use blend_scaler::metadata::{Credentials, Origin, Plan, PrometheusPlan, parse};
use blend_scaler::metrics::Metrics;
use blend_scaler::prometheus::{self, PrometheusUpstream, key};
use blend_scaler::signal::{Observation, SignalError, SignalKind};
use prometheus_support::{BASIC_PASSWORD, BASIC_USER, Prometheus, Proxy, tls_fixture};

/// A whole trigger's plan, parsed as KEDA would hand the metadata over.
fn plan(server: &str, extra: &[(&str, &str)]) -> Plan {
    let mut md: HashMap<String, String> = HashMap::new();
    md.insert("serverAddress".into(), server.into());
    md.insert("threshold".into(), "10".into());
    for (k, v) in extra {
        md.insert(k.to_string(), v.to_string());
    }
    parse(&md, Origin::Keda, &Credentials::default()).expect("valid metadata")
}

fn prom(plan: &Plan) -> &PrometheusPlan {
    plan.prometheus.as_ref().expect("a Prometheus plan")
}

/// One uncached read, as a refresh does it.
async fn read(upstream: &PrometheusUpstream, plan: &Plan) -> Result<f64, SignalError> {
    let (server, query) = key(prom(plan));
    upstream.query(&server, &query).await
}

fn fast_refresh() -> RefreshConfig {
    RefreshConfig {
        interval: Duration::from_millis(300),
        fast_interval: Duration::from_millis(300),
        first_read_timeout: Duration::from_secs(2),
        idle_ttl: Duration::from_secs(60),
        max_backoff: Duration::from_millis(600),
        ..RefreshConfig::default()
    }
}

/// Polls `observe` until `done` holds, at most `within`.
async fn observe_until(
    refresher: &Refresher<PrometheusUpstream>,
    plan: &Plan,
    within: Duration,
    done: impl Fn(&Observation) -> bool,
) -> Observation {
    let (server, query) = key(prom(plan));
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let obs = refresher.observe(&server, &query).await;
        if done(&obs) || tokio::time::Instant::now() > deadline {
            return obs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything any test in this binary logged (all targets, all levels), for leak checks.
/// One global subscriber rather than a per-test one: tracing caches per call site whether
/// anyone listens, and a call site first hit on another test's thread would stay silent to a
/// thread-scoped subscriber.
fn captured_logs() -> String {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buffer = BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = SharedBuffer(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        buffer
    });
    String::from_utf8_lossy(&buffer.lock()).into_owned()
}

#[derive(Clone)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_known_value_gives_ceil_value_over_threshold_replicas_and_the_right_activation() {
    let server = Prometheus::builder()
        .gauge("http_rps", &[], 123.4)
        .start()
        .await;
    let source = prometheus::source(
        fast_refresh(),
        Metrics::new(),
        &blend_scaler::binding::HostRules::loopback(),
    );

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
    let upstream = PrometheusUpstream::new(
        Metrics::new(),
        &blend_scaler::binding::HostRules::loopback(),
    );
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
    let upstream = PrometheusUpstream::new(
        Metrics::new(),
        &blend_scaler::binding::HostRules::loopback(),
    );
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
    let upstream = PrometheusUpstream::new(
        Metrics::new(),
        &blend_scaler::binding::HostRules::loopback(),
    );
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
    let upstream = PrometheusUpstream::new(
        metrics.clone(),
        &blend_scaler::binding::HostRules::loopback(),
    );
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
    let upstream = PrometheusUpstream::new(
        Metrics::new(),
        &blend_scaler::binding::HostRules::loopback(),
    );
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
async fn with_prometheus_stopped_reads_fail_and_the_cache_keeps_the_last_good_value_with_its_age() {
    let mut server = Prometheus::builder()
        .gauge("http_rps", &[], 42.0)
        .start()
        .await;
    let metrics = Metrics::new();
    let refresher = Refresher::new(
        PrometheusUpstream::new(
            metrics.clone(),
            &blend_scaler::binding::HostRules::loopback(),
        ),
        fast_refresh(),
    );
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
    let upstream = PrometheusUpstream::new(
        metrics.clone(),
        &blend_scaler::binding::HostRules::loopback(),
    );
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
    let upstream = PrometheusUpstream::new(
        Metrics::new(),
        &blend_scaler::binding::HostRules::loopback(),
    );
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

#[tokio::test]
async fn a_bearer_token_reaches_the_server_and_appears_in_no_error_or_log() {
    const TOKEN: &str = "tok-s3cret-bearer-value";
    const WRONG: &str = "tok-wr0ng-bearer-value";
    let server = Prometheus::builder()
        .gauge("http_rps", &[], 55.0)
        .start()
        .await;
    let proxy = Proxy::start(&server.url(), Some(&format!("Bearer {TOKEN}"))).await;
    captured_logs();
    let metrics = Metrics::new();
    let upstream = PrometheusUpstream::new(
        metrics.clone(),
        &blend_scaler::binding::HostRules::loopback(),
    );

    let good = plan(
        &proxy.url(),
        &[
            ("query", "http_rps"),
            ("authModes", "bearer"),
            ("bearerTokenFromEnv", TOKEN),
        ],
    );
    assert_eq!(read(&upstream, &good).await, Ok(55.0));
    assert_eq!(
        proxy.requests()[0]
            .headers
            .get("authorization")
            .map(String::as_str),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    let bad = plan(
        &proxy.url(),
        &[
            ("query", "http_rps"),
            ("authModes", "bearer"),
            ("bearerTokenFromEnv", WRONG),
        ],
    );
    // Through the cache too, so the refresh path's logging is covered.
    let source = prometheus::source(
        fast_refresh(),
        metrics.clone(),
        &blend_scaler::binding::HostRules::loopback(),
    );
    let obs = source.observe(prom(&bad)).await;
    let error = obs.error.expect("a refused token is an error");
    assert_eq!(obs.value, None, "never a 0 for a refused request");
    assert!(matches!(
        *error,
        SignalError::Unauthorized { status: 401, .. }
    ));
    let direct = read(&upstream, &bad).await.unwrap_err();

    let (server_key, _) = key(prom(&bad));
    let everything = format!(
        "{error} {error:?} {direct} {direct:?} {server_key:?} {}\n{}",
        metrics.encode(),
        captured_logs()
    );
    assert!(
        captured_logs().contains("prometheus query gave no value"),
        "the capture sees the signal's logs:\n{}",
        captured_logs()
    );
    for secret in [TOKEN, WRONG] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked:\n{everything}"
        );
    }
}

#[tokio::test]
async fn basic_auth_is_checked_by_prometheus_itself_and_the_password_never_leaks() {
    let server = Prometheus::builder()
        .gauge("http_rps", &[], 31.0)
        .with_basic_auth()
        .start()
        .await;
    captured_logs();
    let upstream = PrometheusUpstream::new(
        Metrics::new(),
        &blend_scaler::binding::HostRules::loopback(),
    );
    let with = |user: &str, password: &str| {
        plan(
            &server.url(),
            &[
                ("query", "http_rps"),
                ("authModes", "basic"),
                ("usernameFromEnv", user),
                ("passwordFromEnv", password),
            ],
        )
    };

    assert_eq!(
        read(&upstream, &with(BASIC_USER, BASIC_PASSWORD)).await,
        Ok(31.0)
    );

    const WRONG: &str = "wr0ng-basic-password";
    let refused = read(&upstream, &with(BASIC_USER, WRONG)).await;
    let Err(error @ SignalError::Unauthorized { status: 401, .. }) = &refused else {
        panic!("expected 401, got {refused:?}")
    };
    let anonymous = read(&upstream, &plan(&server.url(), &[("query", "http_rps")])).await;
    assert!(matches!(
        anonymous,
        Err(SignalError::Unauthorized { status: 401, .. })
    ));

    let text = format!("{error} {error:?} {}", captured_logs());
    for secret in [BASIC_PASSWORD, WRONG] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
}

#[tokio::test]
async fn a_client_certificate_satisfies_a_prometheus_that_requires_one() {
    let server = Prometheus::builder()
        .gauge("http_rps", &[], 64.0)
        .with_tls()
        .start()
        .await;
    let upstream = PrometheusUpstream::new(
        Metrics::new(),
        &blend_scaler::binding::HostRules::loopback(),
    );
    let (cert, key_pem, ca) = (
        tls_fixture("client.crt"),
        tls_fixture("client.key"),
        tls_fixture("ca.crt"),
    );
    let with_cert = plan(
        &server.url(),
        &[
            ("query", "http_rps"),
            ("authModes", "tls"),
            ("certFromEnv", &cert),
            ("keyFromEnv", &key_pem),
            ("caFromEnv", &ca),
        ],
    );
    assert_eq!(read(&upstream, &with_cert).await, Ok(64.0));

    // Without the certificate (and without the test CA) the handshake fails: an error, not 0.
    let without = plan(&server.url(), &[("query", "http_rps")]);
    let refused = read(&upstream, &without).await;
    assert!(
        matches!(refused, Err(SignalError::Connect(_))),
        "{refused:?}"
    );
    let text = format!("{refused:?}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
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
        &blend_scaler::binding::HostRules::loopback(),
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

#[tokio::test]
async fn redirects_are_followed_within_the_server_only_so_headers_never_reach_another_host() {
    use axum::extract::RawQuery;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    // One listener, two origins: `127.0.0.1:port` and `localhost:port`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/api/v1/query",
            get({
                let hits = hits.clone();
                move |headers: HeaderMap| async move {
                    hits.lock().push(headers);
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"3"]}]}}"#,
                    )
                }
            }),
        )
        .route(
            "/moved/api/v1/query",
            get(|RawQuery(q): RawQuery| async move {
                let to = format!("/api/v1/query?{}", q.unwrap_or_default());
                (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
            }),
        )
        .route(
            "/elsewhere/api/v1/query",
            get(move |RawQuery(q): RawQuery| async move {
                let to = format!("http://localhost:{port}/api/v1/query?{}", q.unwrap_or_default());
                (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
            }),
        );
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    let upstream = PrometheusUpstream::new(
        Metrics::new(),
        &blend_scaler::binding::HostRules::loopback(),
    );
    let headers = ("customHeaders", "X-Api-Key=redirect-secret");

    let moved = plan(
        &format!("http://127.0.0.1:{port}/moved"),
        &[("query", "up"), headers],
    );
    assert_eq!(read(&upstream, &moved).await, Ok(3.0));
    assert_eq!(hits.lock().len(), 1, "a same-origin redirect is followed");

    let elsewhere = plan(
        &format!("http://127.0.0.1:{port}/elsewhere"),
        &[("query", "up"), headers],
    );
    let refused = read(&upstream, &elsewhere).await;
    assert!(
        matches!(refused, Err(SignalError::Http { status: 307, .. })),
        "{refused:?}"
    );
    assert_eq!(
        hits.lock().len(),
        1,
        "the other origin never saw the request"
    );
    task.abort();
}
