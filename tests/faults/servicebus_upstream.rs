//! Service Bus faults: refused credentials, missing entities, throttling with `Retry-After`,
//! refused connections, timeouts and bodies cut off or garbled.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_unavailable_for_a_new_object_and_holds_a_known_value_until_stale_after() {
    let s = scaler(Duration::from_secs(1)).await;
    let (double, obj) = good_queue().await;

    // A wrong key on a never-seen ScaledObject: refused by the double's SAS check.
    let wrong = object(
        "wrong-key",
        &[
            ("endpoint", double.endpoint()),
            (
                "connectionFromEnv",
                double.connection_string_with_key("bm90LXRoZS1yaWdodC1rZXk="),
            ),
            ("queueName", "orders".into()),
        ],
    );
    first_answer_is_unavailable(&s, &wrong, "HTTP 401").await;

    first_good_answer(&s, &obj, 3).await;
    double.inject(
        Fault::Status {
            status: 401,
            retry_after: None,
        },
        None,
    );
    let fault_at = Instant::now();
    held_then_unavailable(&s, &obj, fault_at, 3, "HTTP 401").await;

    // The key works again (rotated back): the next reads recover.
    double.clear_faults();
    double.set_queue("orders", 20);
    poll_until(&s, &obj, Duration::from_secs(4), "recovery", |a| {
        a.value() == Some(4)
    })
    .await;
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_is_unavailable_for_a_new_object_and_holds_a_known_value_until_stale_after() {
    let s = scaler(Duration::from_secs(1)).await;
    let (double, obj) = good_queue().await;
    first_good_answer(&s, &obj, 3).await;

    double.inject(
        Fault::Status {
            status: 403,
            retry_after: None,
        },
        None,
    );
    let fault_at = Instant::now();
    let fresh = queue_object("new-consumer", &double, "billing");
    tokio::join!(
        first_answer_is_unavailable(&s, &fresh, "HTTP 403"),
        held_then_unavailable(&s, &obj, fault_at, 3, "HTTP 403"),
    );
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_entity_reported_as_an_empty_feed_is_not_found_never_zero() {
    let s = scaler(Duration::from_secs(1)).await;
    let (double, obj) = good_queue().await;

    // Service Bus answers a GET of a missing queue with HTTP 200 and an empty feed.
    let ghost_double = ServiceBusDouble::start().await.unwrap();
    let ghost = queue_object("ghost", &ghost_double, "ghost");
    first_answer_is_unavailable(&s, &ghost, "queue `ghost`").await;
    let a = poll(&s, &ghost).await;
    assert!(
        a.metrics.unwrap_err().message().contains("was not found"),
        "named as not found"
    );
    assert_eq!(ghost_double.requests_to("/ghost"), ghost_double.requests());

    first_good_answer(&s, &obj, 3).await;
    double.remove_queue("orders");
    let fault_at = Instant::now();
    held_then_unavailable(&s, &obj, fault_at, 3, "was not found").await;

    double.set_queue("orders", 1);
    // Recreated with one message: the answer may now drop, from fresh reads.
    poll_until(&s, &obj, Duration::from_secs(4), "recovery", |a| {
        a.value() == Some(1)
    })
    .await;
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_in_seconds_holds_the_value_and_keeps_the_namespace_quiet() {
    const RETRY: Duration = Duration::from_secs(2);
    let s = scaler(Duration::from_secs(1)).await;
    let (double, obj) = good_queue().await;
    let arrivals = Arrivals::watch(double.clone());
    first_good_answer(&s, &obj, 3).await;

    // One throttled response; meanwhile the backlog grows.
    double.inject(
        Fault::Status {
            status: 429,
            retry_after: Some(RetryAfter::Seconds(2)),
        },
        Some(1),
    );
    double.set_queue("orders", 20);
    let injected = Instant::now();
    let seen = poll_until(&s, &obj, Duration::from_secs(5), "the new value", |a| {
        a.value() == Some(4)
    })
    .await;
    let throttled_at = arrivals.first(429, injected);
    let throttled = arrivals.since(throttled_at);
    assert!(throttled.len() >= 2, "a throttled read and a later one");
    assert!(
        throttled[1] - throttled_at >= RETRY - JITTER,
        "the next read waited Retry-After: {:?}",
        gaps(&throttled)
    );
    for a in &seen {
        assert!(
            matches!(a.value(), Some(3 | 4)),
            "held, never 0 or UNAVAILABLE: {a:?}"
        );
        if a.at < throttled_at + RETRY - JITTER {
            assert_eq!(
                a.value(),
                Some(3),
                "the old value until a read is allowed: {a:?}"
            );
        }
    }

    // Throttled for good: every read waits Retry-After, and the value goes stale.
    double.inject(
        Fault::Status {
            status: 429,
            retry_after: Some(RetryAfter::Seconds(2)),
        },
        None,
    );
    let fault_at = Instant::now();
    held_then_unavailable(&s, &obj, fault_at, 4, "HTTP 429").await;
    let reads = arrivals.since(fault_at);
    let spaced = gaps(&reads);
    assert!(
        spaced.iter().all(|g| *g >= RETRY - JITTER),
        "no read sooner than Retry-After: {spaced:?}"
    );
    assert!(
        reads.len() <= 1 + (fault_at.elapsed().as_millis() / RETRY.as_millis()) as usize + 1,
        "{} reads in {:?}",
        reads.len(),
        fault_at.elapsed()
    );
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_as_a_date_is_honoured_and_never_read_as_zero() {
    let s = scaler(Duration::from_secs(1)).await;
    let (double, obj) = good_queue().await;
    let arrivals = Arrivals::watch(double.clone());
    first_good_answer(&s, &obj, 3).await;

    // An HTTP date 3 s ahead (whole seconds: at least 2 s of quiet after rounding).
    double.inject(
        Fault::Status {
            status: 503,
            retry_after: Some(RetryAfter::DateIn(Duration::from_secs(3))),
        },
        None,
    );
    let fault_at = Instant::now();
    // A never-seen object on the throttled namespace: no value yet, and it does not make the
    // scaler call the namespace sooner.
    let fresh = queue_object("new-consumer", &double, "billing");
    tokio::join!(
        first_answer_is_unavailable(&s, &fresh, ""),
        held_then_unavailable(&s, &obj, fault_at, 3, "HTTP 503"),
    );
    let reads = arrivals.since(fault_at);
    let spaced = gaps(&reads);
    assert!(!reads.is_empty(), "the namespace was read");
    assert!(
        spaced.iter().all(|g| *g >= Duration::from_secs(2) - JITTER),
        "no read sooner than the Retry-After date: {spaced:?}"
    );
    double.clear_faults();
    poll_until(&s, &obj, Duration::from_secs(5), "recovery", |a| {
        a.value() == Some(3)
    })
    .await;
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_unavailable_at_once_and_holds_a_known_value_until_stale_after() {
    let s = scaler(Duration::from_secs(1)).await;

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nowhere = object(
        "nowhere",
        &[
            ("endpoint", format!("http://127.0.0.1:{port}")),
            (
                "connectionFromEnv",
                format!(
                    "Endpoint=http://127.0.0.1:{port}/;SharedAccessKeyName=k;SharedAccessKey=a2V5"
                ),
            ),
            ("queueName", "orders".into()),
        ],
    );
    let started = Instant::now();
    first_answer_is_unavailable(&s, &nowhere, "could not connect").await;
    assert!(started.elapsed() < Duration::from_secs(2), "refused fast");

    // The namespace behind a forwarder that can vanish: listener and open connections.
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 12);
    let forwarder = Forwarder::start(double.addr()).await;
    let endpoint = format!("http://{}", forwarder.addr);
    let obj = object(
        "consumer",
        &[
            ("endpoint", endpoint.clone()),
            (
                "connectionFromEnv",
                format!(
                    "Endpoint={endpoint}/;SharedAccessKeyName={};SharedAccessKey={}",
                    double.options().key_name,
                    double.options().key
                ),
            ),
            ("queueName", "orders".into()),
            ("messageCount", "5".into()),
        ],
    );
    first_good_answer(&s, &obj, 3).await;
    forwarder.vanish();
    let fault_at = Instant::now();
    held_then_unavailable(&s, &obj, fault_at, 3, "could not connect").await;
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_holds_a_known_value_until_stale_after_and_recovers() {
    let s = scaler(Duration::from_millis(800)).await;
    let (double, obj) = good_queue().await;
    first_good_answer(&s, &obj, 3).await;

    double.set_latency(Duration::from_millis(1_500));
    let fault_at = Instant::now();
    let fresh = queue_object("new-consumer", &double, "orders-2");
    // (`poll` bounds each answer, however long the timeout and backoff delay the first read)
    tokio::join!(
        first_answer_is_unavailable(&s, &fresh, ""),
        held_then_unavailable(&s, &obj, fault_at, 3, "timed out after 800ms"),
    );

    double.set_latency(Duration::ZERO);
    poll_until(&s, &obj, Duration::from_secs(4), "recovery", |a| {
        a.value() == Some(3)
    })
    .await;
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_two_seconds_never_makes_keda_wait_past_the_bound() {
    // Requests are allowed 10 s (the default): the scaler's own 2 s bound must cut in.
    let s = scaler(Duration::from_secs(10)).await;
    let double = Arc::new(ServiceBusDouble::start().await.unwrap());
    double.set_queue("orders", 12);
    double.set_latency(Duration::from_millis(2_600));
    let obj = queue_object("consumer", &double, "orders");

    // Never seen: the first read cannot finish within 2 s, so KEDA gets UNAVAILABLE at 2 s.
    let a = poll(&s, &obj).await;
    let status = a.metrics.as_ref().expect_err("no value yet");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("first read has not finished"),
        "{}",
        status.message()
    );
    let took = a.at.elapsed();
    assert!(
        took >= Duration::from_millis(1_900),
        "it waited for the read: {took:?}"
    );

    // The slow read completes in the background; the value arrives from the cache.
    poll_until(&s, &obj, Duration::from_secs(4), "the slow value", |a| {
        a.value() == Some(3)
    })
    .await;

    // Still slow (but within staleAfter): every answer comes from the cache, fast.
    double.set_latency(Duration::from_millis(1_500));
    double.set_queue("orders", 20);
    let until = Instant::now() + Duration::from_secs(3);
    let mut slowest = Duration::ZERO;
    let mut values = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let a = poll(&s, &obj).await;
        slowest = slowest.max(started.elapsed());
        values.push(a.value());
        tokio::time::sleep(POLL).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "cached answers: slowest poll {slowest:?}"
    );
    assert!(
        values.iter().all(|v| matches!(v, Some(3 | 4))),
        "{values:?}"
    );
    assert_eq!(
        values.last(),
        Some(&Some(4)),
        "slow reads still land: {values:?}"
    );
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_holds_a_known_value_until_stale_after_then_is_unavailable() {
    let s = scaler(Duration::from_secs(1)).await;
    let (double, obj) = good_queue().await;
    first_good_answer(&s, &obj, 3).await;

    double.inject(Fault::Truncated, None);
    let fault_at = Instant::now();
    held_then_unavailable(&s, &obj, fault_at, 3, "malformed response").await;

    double.clear_faults();
    poll_until(&s, &obj, Duration::from_secs(4), "recovery", |a| {
        a.value() == Some(3)
    })
    .await;
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_body_is_unavailable_for_a_new_object_and_never_read_as_zero() {
    let s = scaler(Duration::from_secs(1)).await;
    let (double, obj) = good_queue().await;
    let garbage = Arc::new(ServiceBusDouble::start().await.unwrap());
    garbage.set_queue("orders", 12);
    garbage.inject(Fault::Garbage, None);
    let fresh = queue_object("new-consumer", &garbage, "orders");
    first_answer_is_unavailable(&s, &fresh, "malformed response").await;

    first_good_answer(&s, &obj, 3).await;
    double.inject(Fault::Garbage, None);
    let fault_at = Instant::now();
    held_then_unavailable(&s, &obj, fault_at, 3, "malformed response").await;
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_quiets_the_whole_namespace_whatever_the_credential() {
    const RETRY: Duration = Duration::from_secs(2);
    let s = scaler(Duration::from_secs(1)).await;
    let (double, orders) = good_queue().await;
    double.set_queue("billing", 4);
    // A second ScaledObject reads the same namespace with its own, entity-scoped SAS token
    // (a Listen rule on one queue, as is common): another credential, so another cache group.
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = blend_scaler::servicebus::auth::sas_token(
        &format!("{}/billing", double.endpoint()),
        &double.options().key_name,
        &blend_scaler::secret::Secret::new(double.options().key.clone()),
        expiry,
    );
    let billing = object(
        "billing-consumer",
        &[
            ("endpoint", double.endpoint()),
            (
                "connectionFromEnv",
                format!(
                    "Endpoint={}/;SharedAccessSignature={}",
                    double.endpoint(),
                    token.expose()
                ),
            ),
            ("queueName", "billing".into()),
            ("messageCount", "5".into()),
        ],
    );
    let arrivals = Arrivals::watch(double.clone());
    first_good_answer(&s, &orders, 3).await;
    first_good_answer(&s, &billing, 1).await;

    // The namespace throttles one read: once it said 2 s, no credential reads it sooner.
    double.inject(
        Fault::Status {
            status: 429,
            retry_after: Some(RetryAfter::Seconds(2)),
        },
        Some(1),
    );
    let injected = Instant::now();
    double.set_queue("orders", 20);
    double.set_queue("billing", 9);
    let (a, b) = tokio::join!(
        poll_until(&s, &orders, Duration::from_secs(5), "orders", |a| a.value()
            == Some(4)),
        poll_until(&s, &billing, Duration::from_secs(5), "billing", |a| a
            .value()
            == Some(2)),
    );
    let throttled_at = arrivals.first(429, injected);
    let reads = arrivals.since(throttled_at);
    // Reads already on their way when the 429 came (sent together) are let through.
    let too_soon: Vec<Duration> = reads[1..]
        .iter()
        .map(|t| *t - throttled_at)
        .filter(|d| *d > Duration::from_millis(100) && *d < RETRY - JITTER)
        .collect();
    assert!(
        too_soon.is_empty(),
        "reads of the throttled namespace {too_soon:?} after the 429: {:?}",
        double.request_log()
    );
    for a in a.iter().chain(&b) {
        assert!(a.metrics.is_ok(), "held through the throttling: {a:?}");
    }
    finish(s).await;
}
