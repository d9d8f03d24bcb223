//! Credentials: bearer tokens, basic auth and client certificates reach the server and no
//! log or error, and redirects never carry them to another host.

use super::*;

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
    let upstream = upstream_on_loopback(metrics.clone());

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
    let source = prometheus::source(fast_refresh(), metrics.clone(), &HostRules::loopback());
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
    let upstream = upstream_on_loopback(Metrics::new());
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
    let upstream = upstream_on_loopback(Metrics::new());
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
    let upstream = upstream_on_loopback(Metrics::new());
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
