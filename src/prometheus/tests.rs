use super::answer::{api_error, http_error, interpret};
use super::connect::build_client;
use super::wire::{Data, Envelope};
use super::*;
use crate::metadata::{Credentials, Origin, parse};
use reqwest::StatusCode;

fn plan(extra: &[(&str, &str)]) -> PrometheusPlan {
    let mut md: HashMap<String, String> = [
        ("serverAddress", "http://prometheus.monitoring:9090"),
        ("query", "sum(rate(http_requests_total[2m]))"),
        ("threshold", "10"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        md.insert(k.to_string(), v.to_string());
    }
    parse(&md, Origin::Keda, &Credentials::default())
        .expect("valid metadata")
        .prometheus
        .expect("a prometheus plan")
}

fn data(json: &str) -> Data {
    serde_json::from_str::<Data>(json).expect("a query result")
}

fn vector(values: &[&str]) -> Data {
    let series: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!(r#"{{"metric":{{"pod":"p{i}"}},"value":[1700000000.1,"{v}"]}}"#))
        .collect();
    data(&format!(
        r#"{{"resultType":"vector","result":[{}]}}"#,
        series.join(",")
    ))
}

fn query(ignore_null_values: bool, series_aggregation: Option<Aggregation>) -> Query {
    Query {
        query: "q".into(),
        parameters: vec![],
        ignore_null_values,
        series_aggregation,
    }
}

#[test]
fn plans_that_differ_only_in_threshold_share_one_read() {
    let a = key(&plan(&[("threshold", "10"), ("activationThreshold", "2")]));
    let b = key(&plan(&[("threshold", "250")]));
    assert_eq!(a, b);
}

#[test]
fn header_and_parameter_order_do_not_split_a_group() {
    let a = key(&plan(&[
        ("customHeaders", "X-Scope-OrgID=t1,X-Other=2"),
        ("queryParameters", "dedup=true,partial_response=false"),
    ]));
    let b = key(&plan(&[
        ("customHeaders", "X-Other=2,X-Scope-OrgID=t1"),
        ("queryParameters", "partial_response=false,dedup=true"),
    ]));
    assert_eq!(a, b);
}

#[test]
fn server_identity_includes_auth_headers_namespace_and_timeout() {
    let base = key(&plan(&[])).0;
    for extra in [
        &[("authModes", "bearer"), ("bearerTokenFromEnv", "t")][..],
        &[("customHeaders", "X-Scope-OrgID=a")],
        &[("prometheusNamespace", "team-a")],
        &[("timeout", "500")],
    ] {
        assert_ne!(key(&plan(extra)).0, base, "{extra:?}");
    }
    assert_eq!(base.timeout(), DEFAULT_TIMEOUT);
}

#[test]
fn plans_with_equal_servers_share_one_key_and_other_credentials_never_do() {
    let tenant = |token: &str| {
        plan(&[
            ("authModes", "bearer"),
            ("bearerTokenFromEnv", token),
            ("query", "up"),
        ])
    };
    let (a, a_too, b) = (tenant("token-a"), tenant("token-a"), tenant("token-b"));
    // Equal auth: one copy in both plans and in both keys.
    assert!(Arc::ptr_eq(&a.auth, &a_too.auth));
    assert!(Arc::ptr_eq(&key(&a).0, &key(&a_too).0));
    // Another tenant's token against the same address and query: its own key, which carries
    // its own token and not the other's.
    let (server_a, server_b) = (key(&a).0, key(&b).0);
    assert!(!Arc::ptr_eq(&a.auth, &b.auth));
    assert!(!Arc::ptr_eq(&server_a, &server_b));
    assert_ne!(server_a, server_b);
    assert_eq!(key(&a).1, key(&b).1, "the question asked is the same");
    assert_eq!(server_a.secrets(), ["token-a"]);
    assert_eq!(server_b.secrets(), ["token-b"]);
    // And a plan without auth shares neither.
    let open = key(&plan(&[("query", "up")])).0;
    assert!(open.secrets().is_empty());
    assert!(!Arc::ptr_eq(&open, &server_a) && !Arc::ptr_eq(&open, &server_b));
}

#[test]
fn query_identity_includes_null_handling_and_aggregation() {
    let base = key(&plan(&[])).1;
    for extra in [
        &[("ignoreNullValues", "false")][..],
        &[("seriesAggregation", "sum")],
        &[("queryParameters", "dedup=true")],
    ] {
        assert_ne!(key(&plan(extra)).1, base, "{extra:?}");
    }
}

#[test]
fn debug_output_of_a_server_shows_no_secret() {
    let p = plan(&[
        ("serverAddress", "http://admin:url-pass@prom:9090"),
        ("authModes", "basic,custom"),
        ("usernameFromEnv", "user-secret"),
        ("passwordFromEnv", "pass-secret"),
        ("customAuthHeader", "X-Api-Key"),
        ("customAuthValueFromEnv", "key-secret"),
        ("customHeaders", "X-Scope-OrgID=header-secret"),
    ]);
    let (server, query) = key(&p);
    let text = format!("{server:?} {query:?} {}", server.label());
    for secret in [
        "url-pass",
        "admin",
        "user-secret",
        "pass-secret",
        "key-secret",
        "header-secret",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("X-Scope-OrgID") && text.contains("prom:9090"));
}

#[test]
fn scrubbing_removes_every_credential_from_server_text() {
    let p = plan(&[
        ("authModes", "bearer"),
        ("bearerTokenFromEnv", "tok-abc"),
        ("customHeaders", "X-Scope-OrgID=tenant-secret"),
    ]);
    let (server, _) = key(&p);
    let scrubbed = server.scrub("denied: Bearer tok-abc for tenant-secret");
    assert_eq!(scrubbed, "denied: Bearer <redacted> for <redacted>");
    let long = "x".repeat(1000);
    assert!(server.scrub(&long).chars().count() <= MAX_DETAIL_CHARS + 1);
}

#[test]
fn one_series_gives_its_value() {
    assert_eq!(interpret(vector(&["123.4"]), &query(true, None)), Ok(123.4));
    assert_eq!(interpret(vector(&["-2"]), &query(true, None)), Ok(-2.0));
}

#[test]
fn a_scalar_counts_as_one_series() {
    let d = data(r#"{"resultType":"scalar","result":[1700000000,"42"]}"#);
    assert_eq!(interpret(d, &query(false, None)), Ok(42.0));
}

#[test]
fn an_empty_result_is_zero_or_an_error_by_ignore_null_values() {
    assert_eq!(interpret(vector(&[]), &query(true, None)), Ok(0.0));
    assert_eq!(
        interpret(vector(&[]), &query(false, Some(Aggregation::Sum))),
        Err(SignalError::NullResult)
    );
}

#[test]
fn nan_and_infinity_are_zero_or_an_error_by_ignore_null_values() {
    for v in ["NaN", "+Inf", "-Inf"] {
        assert_eq!(interpret(vector(&[v]), &query(true, None)), Ok(0.0), "{v}");
        assert_eq!(
            interpret(vector(&[v]), &query(false, None)),
            Err(SignalError::NullResult),
            "{v}"
        );
    }
    // With aggregation a NaN series counts as 0, as a lone NaN does.
    assert_eq!(
        interpret(vector(&["10", "NaN"]), &query(true, Some(Aggregation::Avg))),
        Ok(5.0)
    );
}

#[test]
fn several_series_need_an_aggregation() {
    let d = || vector(&["10", "20", "60"]);
    assert_eq!(
        interpret(d(), &query(true, None)),
        Err(SignalError::MultipleSeries(3))
    );
    assert_eq!(
        interpret(d(), &query(true, Some(Aggregation::Sum))),
        Ok(90.0)
    );
    assert_eq!(
        interpret(d(), &query(true, Some(Aggregation::Max))),
        Ok(60.0)
    );
    assert_eq!(
        interpret(d(), &query(true, Some(Aggregation::Avg))),
        Ok(30.0)
    );
}

#[test]
fn a_range_vector_is_a_query_problem() {
    let d = data(r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1700000000,"1"]]}]}"#);
    assert!(matches!(
        interpret(d, &query(true, None)),
        Err(SignalError::InvalidQuery(_))
    ));
}

#[test]
fn the_api_envelope_decodes_success_and_bad_data() {
    let ok: Envelope =
        serde_json::from_str(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#)
            .unwrap();
    assert!(matches!(ok, Envelope::Success { .. }));
    let bad: Envelope =
        serde_json::from_str(r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#)
            .unwrap();
    let Envelope::Error(e) = bad else {
        panic!("expected an error envelope")
    };
    let server = key(&plan(&[])).0;
    let err = api_error(StatusCode::BAD_REQUEST, &e, None, &server);
    assert_eq!(err.outcome(), "bad_query");
    // Prometheus's own words go to the log; the error carries a fixed cause.
    assert_eq!(
        err,
        SignalError::InvalidQuery(
            "Prometheus at prometheus.monitoring:9090 refused it as bad_data (its message is in \
             the scaler's log)"
                .into()
        )
    );
}

#[test]
fn http_failures_map_to_distinct_errors() {
    let server = key(&plan(&[])).0;
    let e = |code: u16, retry: Option<Duration>| {
        http_error(StatusCode::from_u16(code).unwrap(), "nope", retry, &server)
    };
    assert!(matches!(
        e(401, None),
        SignalError::Unauthorized { status: 401, .. }
    ));
    assert!(matches!(
        e(403, None),
        SignalError::Unauthorized { status: 403, .. }
    ));
    assert_eq!(
        e(429, Some(Duration::from_secs(7))).retry_after(),
        Some(Duration::from_secs(7))
    );
    // Counted as the Service Bus client counts them.
    assert_eq!(e(429, None).outcome(), "throttled");
    assert_eq!(e(401, None).outcome(), "unauthorized");
    assert!(matches!(
        e(503, None),
        SignalError::Http { status: 503, .. }
    ));
    assert!(matches!(
        e(503, Some(Duration::from_secs(1))),
        SignalError::Throttled { status: 503, .. }
    ));
    assert!(matches!(
        e(502, None),
        SignalError::Http { status: 502, .. }
    ));
    assert!(
        e(502, None)
            .to_string()
            .contains("prometheus.monitoring:9090")
    );
}

#[test]
fn bad_tls_material_is_a_setup_error_that_names_no_secret() {
    let p = plan(&[
        ("authModes", "tls"),
        ("certFromEnv", "not-a-pem-cert-secret"),
        ("keyFromEnv", "not-a-pem-key-secret"),
    ]);
    let Err(e) = build_client(&key(&p).0, &crate::binding::HostRules::default()) else {
        panic!("garbage PEM must not build a client")
    };
    let text = e.to_string();
    assert!(text.contains("certFromEnv"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}
