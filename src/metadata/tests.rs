use super::*;

fn keda(pairs: &[(&str, &str)]) -> Result<Plan, MetadataErrors> {
    parse(&from_pairs(pairs), Origin::Keda, &Credentials::default())
}

fn keys(errs: &MetadataErrors) -> Vec<&str> {
    errs.0.iter().map(|e| e.key.as_str()).collect()
}

const CS: &str = "Endpoint=sb://orders.servicebus.windows.net/;SharedAccessKeyName=scaler;SharedAccessKey=c2VjcmV0PT0=";

#[test]
fn a_cron_trigger_parses_with_defaults() {
    let plan = keda(&[
        ("scalerAddress", "blend-scaler:9090"),
        ("start", "0 8 * * 1-5"),
        ("end", "0 20 * * 1-5"),
        ("desiredReplicas", "5"),
        ("timezone", "America/New_York"),
    ])
    .unwrap();
    assert_eq!(&*plan.metric_name, DEFAULT_METRIC_NAME);
    assert_eq!(plan.policy, Policy::Max);
    assert_eq!(plan.stale_after, Duration::from_secs(60));
    let cron = plan.cron.unwrap();
    assert_eq!(cron.timezone, chrono_tz::America::New_York);
    assert_eq!(cron.windows[0].replicas, 5);
}

#[test]
fn unknown_keys_are_refused_with_a_suggestion() {
    let errs = keda(&[
        ("start", "0 8 * * *"),
        ("end", "0 9 * * *"),
        ("desiredReplicas", "1"),
        ("queuName", "x"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["queuName"]);
    assert!(
        errs.to_string().contains("did you mean `queueName`"),
        "{errs}"
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let errs = keda(&[
        ("queueName", "orders"),
        ("namespace", "orders"),
        ("messageCount", "zero"),
        ("serverAddress", "not a url"),
        ("query", "up"),
        ("threshold", "-1"),
        ("timezone", "Mars/Olympus"),
        ("start", "0 8 * * *"),
        ("end", "0 8 * * *"),
        ("desiredReplicas", "2"),
    ])
    .unwrap_err();
    assert_eq!(
        keys(&errs),
        [
            "end",
            "messageCount",
            "serverAddress",
            "threshold",
            "timezone"
        ]
    );
}

#[test]
fn reserved_keda_keys_are_ignored() {
    let plan = keda(&[
        ("scalerAddress", "x:1"),
        ("enableTLS", "true"),
        ("unsafeSsl", "false"),
        ("queueName", "q"),
        ("namespace", "ns"),
    ])
    .unwrap();
    let sb = plan.servicebus.unwrap();
    assert_eq!(&*sb.endpoint, "https://ns.servicebus.windows.net");
    assert_eq!(*sb.auth, ServiceBusAuth::WorkloadIdentity);
    assert_eq!(sb.message_count, 5.0);
}

#[test]
fn no_signal_at_all_is_an_error() {
    let errs = keda(&[("metricName", "x")]).unwrap_err();
    assert!(
        errs.to_string().contains("no signal is configured"),
        "{errs}"
    );
}

#[test]
fn size_limits_are_enforced() {
    let mut m = from_pairs(&[("queueName", "q"), ("namespace", "ns")]);
    for i in 0..70 {
        m.insert(format!("k{i}"), "v".into());
    }
    let errs = parse(&m, Origin::Keda, &Credentials::default()).unwrap_err();
    assert_eq!(keys(&errs), ["metadata"], "one error, no per-key work");
    let big = "x".repeat(MAX_VALUE_BYTES + 1);
    let errs = keda(&[("queueName", &big), ("namespace", "ns")]).unwrap_err();
    assert!(
        errs.to_string().contains("longer than 8192 bytes"),
        "{errs}"
    );
}

/// docs/security.md "No tenant can stall another": a 256 KiB unknown key cost 9.8 s of edit distance, and 10,000
/// keys gave a million-character error.
#[test]
fn oversized_keys_get_one_immediate_error_and_no_suggestion_work() {
    let mut m = from_pairs(&[("start", "0 8 * * *"), ("end", "0 9 * * *")]);
    m.insert("x".repeat(256 << 10), "v".into());
    m.insert("y".repeat(MAX_KEY_BYTES + 1), "v".into());
    let started = std::time::Instant::now();
    let errs = parse(&m, Origin::Keda, &Credentials::default()).unwrap_err();
    assert_eq!(keys(&errs), ["metadata"]);
    assert!(
        errs.to_string().contains("2 key(s) longer than 256 bytes"),
        "{errs}"
    );
    assert!(errs.to_string().len() < 200, "{errs}");
    // Linear work only (a debug build took 9.8 s on this key before).
    assert!(started.elapsed() < std::time::Duration::from_millis(200));

    // Under the key limit but long: refused as unknown, without a suggestion.
    let near = format!("queueName{}", "z".repeat(100));
    let errs = keda(&[("start", "0 8 * * *"), (&near, "v")]).unwrap_err();
    assert!(!errs.to_string().contains("did you mean"), "{errs}");
}

#[test]
fn an_error_message_lists_at_most_ten_problems_and_counts_the_rest() {
    let mut m = from_pairs(&[("start", "0 8 * * *"), ("end", "0 9 * * *")]);
    for i in 0..40 {
        m.insert(format!("unknown{i:02}"), "v".into());
    }
    let errs = parse(&m, Origin::Keda, &Credentials::default()).unwrap_err();
    // All of them for `check`, which prints every error.
    assert!(errs.0.len() >= 40);
    let text = errs.to_string();
    assert_eq!(text.matches("metadata key `").count(), MAX_LISTED_ERRORS);
    assert!(
        text.ends_with(&format!("and {} more", errs.0.len() - 10)),
        "{text}"
    );
}

#[test]
fn a_cron_window_that_never_comes_is_refused_naming_its_key() {
    let errs = keda(&[
        ("start", "0 0 31 2 *"),
        ("end", "0 1 * * *"),
        ("desiredReplicas", "1"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["start"]);
    let errs = keda(&[(
        "windows",
        "0 8 * * * -> 0 9 * * * = 1; 0 0 30 2 * -> 0 1 * * * = 2",
    )])
    .unwrap_err();
    assert_eq!(keys(&errs), ["windows"]);
    assert!(errs.to_string().contains("window 2:"), "{errs}");
}

#[test]
fn a_connection_string_gives_endpoint_and_key_and_never_shows_the_key() {
    let plan = keda(&[("queueName", "q"), ("connectionFromEnv", CS)]).unwrap();
    let sb = plan.servicebus.as_ref().unwrap();
    assert_eq!(&*sb.endpoint, "https://orders.servicebus.windows.net");
    let ServiceBusAuth::ConnectionString(cs) = &*sb.auth else {
        panic!("expected a connection string")
    };
    assert!(
        matches!(&cs.auth, ConnectionAuth::Key { name, key } if &**name == "scaler" && key.expose() == "c2VjcmV0PT0=")
    );
    for shown in [format!("{plan}"), format!("{plan:?}")] {
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
    }
}

#[test]
fn an_explicit_endpoint_wins_over_the_connection_string() {
    let plan = keda(&[
        ("queueName", "q"),
        ("connectionFromEnv", CS),
        ("endpoint", "http://127.0.0.1:8080/"),
    ])
    .unwrap();
    assert_eq!(&*plan.servicebus.unwrap().endpoint, "http://127.0.0.1:8080");
}

#[test]
fn a_broken_connection_string_is_named_but_not_echoed() {
    let errs = keda(&[
        ("queueName", "q"),
        ("connectionFromEnv", "SharedAccessKey=topsecret"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["connectionFromEnv"]);
    assert!(!errs.to_string().contains("topsecret"));
}

#[test]
fn in_a_file_connection_from_env_is_a_variable_name() {
    let plan = parse(
        &from_pairs(&[
            ("queueName", "q"),
            ("namespace", "bus"),
            ("connectionFromEnv", "SERVICEBUS_CONNECTION"),
        ]),
        Origin::File,
        &Credentials::default(),
    )
    .unwrap();
    assert!(plan.to_string().contains("SERVICEBUS_CONNECTION"));
}

#[test]
fn a_named_credential_is_read_from_the_scaler_environment() {
    let creds = Credentials::from_vars([(
        format!("{SERVICEBUS_CREDENTIAL_PREFIX}ORDERS_BUS"),
        CS.to_string(),
    )]);
    let plan = parse(
        &from_pairs(&[("queueName", "q"), ("credential", "orders-bus")]),
        Origin::Keda,
        &creds,
    )
    .unwrap();
    assert_eq!(
        &*plan.servicebus.unwrap().endpoint,
        "https://orders.servicebus.windows.net"
    );
    let errs = keda(&[("queueName", "q"), ("credential", "missing")]).unwrap_err();
    assert!(
        errs.to_string().contains("BLEND_SCALER_CREDENTIAL_MISSING"),
        "{errs}"
    );
}

#[test]
fn clouds_pick_their_suffix_and_private_needs_one() {
    let plan = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("cloud", "AzureChinaCloud"),
    ])
    .unwrap();
    assert_eq!(
        &*plan.servicebus.unwrap().endpoint,
        "https://ns.servicebus.chinacloudapi.cn"
    );
    let errs = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("cloud", "Private"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["endpointSuffix"]);
    let plan = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("cloud", "Private"),
        ("endpointSuffix", "sb.local"),
    ])
    .unwrap();
    assert_eq!(&*plan.servicebus.unwrap().endpoint, "https://ns.sb.local");
}

#[test]
fn entity_names_cannot_choose_the_request_path() {
    for (key, name) in [
        ("queueName", "latest/meta-data/iam"),
        ("queueName", ".."),
        ("queueName", "a..b"),
        ("queueName", "q?x=1"),
        ("queueName", "q#f"),
        ("queueName", "q%2F"),
    ] {
        let errs = keda(&[(key, name), ("namespace", "ns")]).unwrap_err();
        assert_eq!(keys(&errs), [key], "{name}");
    }
    let errs = keda(&[
        ("topicName", "t/../x"),
        ("subscriptionName", "s?"),
        ("namespace", "ns"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["subscriptionName", "topicName"]);
    assert!(keda(&[("queueName", "orders.v2_x-1"), ("namespace", "ns")]).is_ok());
    // A regex is matched against listed names, never put in a path.
    assert!(
        keda(&[
            ("queueName", "q.*"),
            ("useRegex", "true"),
            ("namespace", "ns")
        ])
        .is_ok()
    );
}

#[test]
fn a_topic_needs_a_subscription() {
    let errs = keda(&[("topicName", "t"), ("namespace", "ns")]).unwrap_err();
    assert_eq!(keys(&errs), ["subscriptionName"]);
    let plan = keda(&[
        ("topicName", "t"),
        ("subscriptionName", "s"),
        ("namespace", "ns"),
    ])
    .unwrap();
    assert_eq!(
        plan.servicebus.unwrap().entity,
        Entity::Subscription {
            topic: "t".into(),
            subscription: "s".into()
        }
    );
}

#[test]
fn regex_names_must_compile_and_operation_needs_regex() {
    let errs = keda(&[
        ("queueName", "orders-("),
        ("namespace", "ns"),
        ("useRegex", "true"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["queueName"]);
    let errs = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("operation", "max"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["operation"]);
    let plan = keda(&[
        ("queueName", "orders-.*"),
        ("namespace", "ns"),
        ("useRegex", "true"),
        ("operation", "max"),
    ])
    .unwrap();
    assert_eq!(plan.servicebus.unwrap().operation, Aggregation::Max);
    assert!(
        ServiceBusPlan::name_pattern("orders-.*")
            .unwrap()
            .is_match("orders-eu")
    );
    assert!(
        !ServiceBusPlan::name_pattern("orders")
            .unwrap()
            .is_match("orders-eu")
    );
}

#[test]
fn keys_of_an_unconfigured_signal_are_refused() {
    let errs = keda(&[
        ("start", "0 8 * * *"),
        ("end", "0 9 * * *"),
        ("desiredReplicas", "1"),
        ("messageCount", "3"),
        ("threshold", "2"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["messageCount", "threshold"]);
}

#[test]
fn prometheus_keys_parse_with_kedas_defaults() {
    let plan = keda(&[
        ("serverAddress", "http://prometheus:9090"),
        ("query", "sum(rate(http_requests_total[2m]))"),
        ("threshold", "200"),
        ("queryParameters", "dedup=true, partial_response=false"),
        ("customHeaders", "X-Scope-OrgID=tenant-a"),
        ("timeout", "1500"),
    ])
    .unwrap();
    let p = plan.prometheus.unwrap();
    assert_eq!(p.threshold, 200.0);
    assert_eq!(p.activation_threshold, 0.0);
    assert!(p.ignore_null_values);
    assert_eq!(p.timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(p.query_parameters().len(), 2);
    assert_eq!(p.custom_headers()[0].1.expose(), "tenant-a");
}

#[test]
fn a_bare_duration_too_large_for_its_unit_is_refused_naming_the_key() {
    // 5000000000 ms would wrap to 705032704 ms as a u32.
    let errs = keda(&[
        ("serverAddress", "http://prometheus:9090"),
        ("query", "up"),
        ("threshold", "1"),
        ("timeout", "5000000000"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["timeout"]);
    assert!(errs.to_string().contains("too large"), "{errs}");
}

#[test]
fn prometheus_auth_modes_need_their_keys() {
    let base = [
        ("serverAddress", "http://p:9090"),
        ("query", "up"),
        ("threshold", "1"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        keda(&v)
    };
    let errs = with(&[("authModes", "bearer,basic")]).unwrap_err();
    assert_eq!(
        keys(&errs),
        ["bearerTokenFromEnv", "passwordFromEnv", "usernameFromEnv"]
    );
    let plan = with(&[("authModes", "bearer"), ("bearerTokenFromEnv", "tok-123")]).unwrap();
    assert_eq!(
        plan.prometheus
            .as_ref()
            .unwrap()
            .auth
            .bearer
            .as_ref()
            .unwrap()
            .expose(),
        "tok-123"
    );
    assert!(!plan.to_string().contains("tok-123"));
    let errs = with(&[("bearerTokenFromEnv", "tok")]).unwrap_err();
    assert_eq!(keys(&errs), ["bearerTokenFromEnv"]);
    let errs = with(&[("authModes", "kerberos")]).unwrap_err();
    assert_eq!(keys(&errs), ["authModes"]);
}

#[test]
fn a_prometheus_credential_supplies_basic_auth() {
    let creds = Credentials::from_vars([(
        format!("{PROMETHEUS_CREDENTIAL_PREFIX}MON"),
        "basic:scaler:pa55".to_string(),
    )]);
    let plan = parse(
        &from_pairs(&[
            ("serverAddress", "http://p:9090"),
            ("query", "up"),
            ("threshold", "1"),
            ("prometheusCredential", "mon"),
        ]),
        Origin::Keda,
        &creds,
    )
    .unwrap();
    let (user, pass) = plan.prometheus.unwrap().auth.basic.clone().unwrap();
    assert_eq!((user.expose(), pass.expose()), ("scaler", "pa55"));
}

#[test]
fn drain_time_needs_its_keys_and_service_bus() {
    let errs = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("policy", "drainTime"),
    ])
    .unwrap_err();
    assert_eq!(
        keys(&errs),
        ["messagesPerSecondPerReplica", "targetDrainSeconds"]
    );
    let plan = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("policy", "drainTime"),
        ("targetDrainSeconds", "120"),
        ("messagesPerSecondPerReplica", "2.5"),
    ])
    .unwrap();
    assert_eq!(
        plan.policy,
        Policy::DrainTime {
            target_drain_seconds: 120.0,
            messages_per_second_per_replica: 2.5
        }
    );
    let errs = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("targetDrainSeconds", "5"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["targetDrainSeconds"]);
    let errs = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("policy", "fastest"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["policy"]);
}

#[test]
fn min_above_max_is_refused() {
    let errs = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("minReplicas", "5"),
        ("maxReplicas", "2"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["minReplicas"]);
}

#[test]
fn windows_and_start_cannot_be_mixed() {
    let errs = keda(&[
        ("windows", "0 8 * * * -> 0 9 * * * = 1"),
        ("start", "0 8 * * *"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["start"]);
    let plan = keda(&[(
        "windows",
        "0 8 * * * -> 0 9 * * * = 1; 0 9 * * * -> 0 10 * * * = 4",
    )])
    .unwrap();
    assert_eq!(plan.cron.unwrap().windows.len(), 2);
}

#[test]
fn durations_accept_units_and_bare_seconds() {
    let plan = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("staleAfter", "2m"),
    ])
    .unwrap();
    assert_eq!(plan.stale_after, Duration::from_secs(120));
    let plan = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("staleAfter", "90"),
    ])
    .unwrap();
    assert_eq!(plan.stale_after, Duration::from_secs(90));
    let errs = keda(&[
        ("queueName", "q"),
        ("namespace", "ns"),
        ("staleAfter", "soon"),
    ])
    .unwrap_err();
    assert_eq!(keys(&errs), ["staleAfter"]);
}
