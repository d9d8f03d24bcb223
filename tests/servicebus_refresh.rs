//! The Service Bus signal through the cache, against the double: reads shared per
//! namespace within docs/servicebus.md's bound, Retry-After honoured, not-found reported, patterns.
//!
//! These use real time with a short refresh interval: paused time would jump the clock
//! while a request is on the loopback socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use blend_scaler::cache::{RefreshConfig, SignalCache};
use blend_scaler::metadata::{self, Credentials, Origin, ServiceBusPlan};
use blend_scaler::metrics::Metrics;
use blend_scaler::servicebus::{self, ServiceBusUpstream};
use blend_scaler::signal::SignalError;
use blend_scaler_testkit::servicebus::{Fault, RetryAfter, ServiceBusDouble};
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_millis(250);

fn config() -> RefreshConfig {
    RefreshConfig {
        interval: INTERVAL,
        fast_interval: INTERVAL,
        first_read_timeout: Duration::from_secs(2),
        idle_ttl: Duration::from_secs(60),
        max_backoff: Duration::from_secs(1),
        ..RefreshConfig::default()
    }
}

fn source(metrics: &Metrics) -> Arc<dyn SignalCache<ServiceBusPlan>> {
    servicebus::source_from(
        ServiceBusUpstream::new(
            metrics.clone(),
            &blend_scaler::binding::HostRules::loopback(),
        ),
        config(),
    )
}

/// A plan as KEDA's metadata makes it, pointed at the double.
fn plan(double: &ServiceBusDouble, keys: &[(&str, &str)]) -> ServiceBusPlan {
    let mut m: HashMap<String, String> = HashMap::from([
        ("endpoint".to_string(), double.endpoint()),
        ("connectionFromEnv".to_string(), double.connection_string()),
    ]);
    m.extend(keys.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    metadata::parse(&m, Origin::Keda, &Credentials::default())
        .unwrap()
        .servicebus
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_scaledobjects_over_five_entities_share_one_read_per_list_per_refresh() {
    let double = ServiceBusDouble::start().await.unwrap();
    for (q, n) in [("orders", 12), ("billing", 3), ("shipping", 0)] {
        double.set_queue(q, n);
    }
    double.set_subscription("events", "audit", 7);
    double.set_subscription("events", "email", 40);
    // Entities nobody watches, so the lists carry more than what is watched.
    for i in 0..20 {
        double.set_queue(&format!("other-{i}"), 1_000);
        double.set_subscription("events", &format!("other-{i}"), 1_000);
    }
    let entities: [(&[(&str, &str)], f64); 5] = [
        (&[("queueName", "orders")], 12.0),
        (&[("queueName", "billing")], 3.0),
        (&[("queueName", "shipping")], 0.0),
        (
            &[("topicName", "events"), ("subscriptionName", "audit")],
            7.0,
        ),
        (
            &[("topicName", "events"), ("subscriptionName", "email")],
            40.0,
        ),
    ];
    let plans: Vec<(ServiceBusPlan, f64)> = (0..50)
        .map(|i| {
            let (keys, value) = entities[i % 5];
            (plan(&double, keys), value)
        })
        .collect();
    let metrics = Metrics::new();
    let sb = source(&metrics);

    // Fifty never-seen ScaledObjects at once: their first reads are shared.
    let first = futures::future::join_all(plans.iter().map(|(p, _)| sb.observe(p))).await;
    for (obs, (_, want)) in first.iter().zip(&plans) {
        assert_eq!(obs.value, Some(*want), "{obs:?}");
        assert!(obs.error.is_none(), "{obs:?}");
    }
    // Fifty callers, one refresh: a queue list and the topic's subscription list.
    assert!(
        double.requests() <= 2,
        "first reads: {:?}",
        double.request_log()
    );

    // KEDA polling all fifty far more often than the refresh interval.
    double.reset_counts();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_300) {
        for (p, _) in &plans {
            sb.observe(p).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let queue_lists = double.requests_to("/$Resources/Queues");
    let sub_lists = double.requests_to("/events/Subscriptions");
    let log = double.request_log();
    // Each refresh is exactly one page of queues and one of the topic's subscriptions
    // (docs/servicebus.md, "Requests": ceil(5 / 100) + 1 topic = 2), never per-entity reads. (A refresh in flight
    // when the counts were reset may show as half a refresh.)
    assert_eq!(double.requests(), queue_lists + sub_lists, "{log:?}");
    assert!(queue_lists.abs_diff(sub_lists) <= 1, "{log:?}");
    let refreshes_allowed = (elapsed.as_millis() / INTERVAL.as_millis()) as u64 + 1;
    assert!(
        queue_lists >= 2 && queue_lists.max(sub_lists) <= refreshes_allowed,
        "{queue_lists} refreshes in {elapsed:?}: {log:?}"
    );

    // New counts show up within a refresh or two.
    double.set_queue("orders", 100);
    double.set_subscription("events", "email", 0);
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(sb.observe(&plans[0].0).await.value, Some(100.0));
    assert_eq!(sb.observe(&plans[4].0).await.value, Some(0.0));
    let text = metrics.encode();
    assert!(
        text.contains(r#"upstream_requests_total{upstream="servicebus",outcome="ok"}"#),
        "{text}"
    );
}

// One thread: the group's refresh task cannot run between two calls joined below, so both
// are registered before its first read starts. On two workers a test thread preempted for
// longer than the 5 ms coalescing pause (a loaded machine) let that read start with one
// item, a GET instead of a list.
#[tokio::test(flavor = "current_thread")]
async fn scaledobjects_asked_about_after_a_list_read_are_answered_from_its_pages() {
    let double = ServiceBusDouble::start().await.unwrap();
    for (q, n) in [("orders", 12), ("billing", 3), ("shipping", 5)] {
        double.set_queue(q, n);
    }
    double.set_subscription("events", "audit", 7);
    double.set_subscription("events", "email", 40);
    double.set_subscription("events", "archive", 2);
    // A long interval, so no background refresh runs during the test: every read counted
    // below is one a first call caused.
    let sb = servicebus::source_from(
        ServiceBusUpstream::new(
            Metrics::new(),
            &blend_scaler::binding::HostRules::loopback(),
        ),
        RefreshConfig {
            interval: Duration::from_secs(30),
            fast_interval: Duration::from_millis(100),
            ..config()
        },
    );
    let observe = |keys: &[(&str, &str)]| {
        let p = plan(&double, keys);
        let sb = sb.clone();
        async move { sb.observe(&p).await.value }
    };
    let (orders, billing) = tokio::join!(
        observe(&[("queueName", "orders")]),
        observe(&[("queueName", "billing")])
    );
    assert_eq!((orders, billing), (Some(12.0), Some(3.0)));
    assert_eq!(double.requests_to("/$Resources/Queues"), 1);
    // On the page that read returned: no read of its own.
    assert_eq!(observe(&[("queueName", "shipping")]).await, Some(5.0));
    assert_eq!(double.requests(), 1, "{:?}", double.request_log());

    let (audit, email) = tokio::join!(
        observe(&[("topicName", "events"), ("subscriptionName", "audit")]),
        observe(&[("topicName", "events"), ("subscriptionName", "email")])
    );
    assert_eq!((audit, email), (Some(7.0), Some(40.0)));
    let archive = observe(&[("topicName", "events"), ("subscriptionName", "archive")]).await;
    assert_eq!(archive, Some(2.0));
    // One more read for the two new subscriptions (their topic's list; the queues keep
    // their own schedule), none for the third.
    assert_eq!(double.requests_to("/events/Subscriptions"), 1);
    assert_eq!(double.requests(), 2, "{:?}", double.request_log());
    // An entity no page held still gets a read of its own, and is reported missing, never 0.
    let missing = observe(&[("queueName", "nowhere")]).await;
    assert_eq!(missing, None);
    assert_eq!(double.requests_to("/nowhere"), 1);
    assert_eq!(double.requests(), 3, "{:?}", double.request_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_entity_is_one_get_per_refresh() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 5);
    let sb = source(&Metrics::new());
    let p = plan(&double, &[("queueName", "orders")]);
    assert_eq!(sb.observe(&p).await.value, Some(5.0));
    // KEDA asks once per interval: each ask is a GET a period after the last.
    for _ in 0..3 {
        tokio::time::sleep(INTERVAL).await;
        sb.observe(&p).await;
    }
    tokio::time::sleep(INTERVAL).await;
    assert!(double.requests() >= 2);
    assert_eq!(double.requests_to("/orders"), double.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_holds_the_namespace_back() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 5);
    let sb = source(&Metrics::new());
    let p = plan(&double, &[("queueName", "orders")]);
    assert_eq!(sb.observe(&p).await.value, Some(5.0));

    double.inject(
        Fault::Status {
            status: 429,
            retry_after: Some(RetryAfter::Seconds(1)),
        },
        None,
    );
    let before = double.requests();
    let deadline = Instant::now() + Duration::from_secs(2);
    while double.requests() == before {
        assert!(Instant::now() < deadline, "no refresh came");
        sb.observe(&p).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let throttled_at = Instant::now();
    let throttled = double.requests();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let obs = sb.observe(&p).await;
    assert_eq!(obs.value, Some(5.0), "the last good value is kept");
    assert!(
        matches!(
            obs.error.as_deref(),
            Some(SignalError::Throttled {
                status: 429,
                retry_after: Some(_)
            })
        ),
        "{obs:?}"
    );
    // At a 250 ms interval two more reads would have come by now; Retry-After says 1 s.
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(double.requests(), throttled, "read during Retry-After");
    double.clear_faults();
    while double.requests() == throttled {
        sb.observe(&p).await;
        assert!(
            throttled_at.elapsed() < Duration::from_secs(3),
            "reads did not resume after Retry-After"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        throttled_at.elapsed() >= Duration::from_millis(900),
        "resumed after {:?}",
        throttled_at.elapsed()
    );
    // The resumed read clears the error once it lands.
    while sb.observe(&p).await.error.is_some() {
        assert!(
            throttled_at.elapsed() < Duration::from_secs(4),
            "still failing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_entity_is_reported_not_found_while_its_neighbours_read() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 4);
    double.set_subscription("events", "audit", 2);
    let sb = source(&Metrics::new());
    let orders = plan(&double, &[("queueName", "orders")]);
    let ghost = plan(&double, &[("queueName", "ghost")]);
    let audit = plan(
        &double,
        &[("topicName", "events"), ("subscriptionName", "audit")],
    );
    let lost = plan(
        &double,
        &[("topicName", "events"), ("subscriptionName", "lost")],
    );
    let no_topic = plan(&double, &[("topicName", "nope"), ("subscriptionName", "a")]);
    let all = [&orders, &ghost, &audit, &lost, &no_topic];
    let obs = futures::future::join_all(all.iter().map(|p| sb.observe(p))).await;
    assert_eq!(obs[0].value, Some(4.0));
    assert_eq!(obs[2].value, Some(2.0));
    let host = double.addr().to_string();
    for (o, what) in [
        (&obs[1], "queue `ghost`".to_string()),
        (&obs[3], "subscription `lost` of topic `events`".to_string()),
        (&obs[4], "subscription `a` of topic `nope`".to_string()),
    ] {
        assert_eq!(o.value, None, "not found is never 0");
        let e = o.error.as_deref().expect("an error");
        assert!(matches!(e, SignalError::NotFound(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("{what} in namespace `{host}` was not found")
        );
    }
    // A queue that disappears keeps its last value but says it is gone, from the first read
    // after it went: KEDA asking again makes that read due (a call before it is answered
    // from the cache, the value not yet older than KEDA's period and a refresh).
    double.remove_queue("orders");
    let deadline = Instant::now() + Duration::from_secs(5);
    let o = loop {
        let o = sb.observe(&orders).await;
        if o.error.is_some() || Instant::now() > deadline {
            break o;
        }
        tokio::time::sleep(INTERVAL).await;
    };
    assert_eq!(o.value, Some(4.0));
    assert!(
        matches!(o.error.as_deref(), Some(SignalError::NotFound(_))),
        "{o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_combine_matching_entities_as_keda_does() {
    let double = ServiceBusDouble::start().await.unwrap();
    for (q, n) in [
        ("orders-1", 4),
        ("orders-2", 10),
        ("orders-eu", 6),
        ("billing", 100),
    ] {
        double.set_queue(q, n);
    }
    double.set_subscription("events", "audit-a", 3);
    double.set_subscription("events", "audit-b", 5);
    double.set_subscription("evictions", "audit-a", 1);
    double.set_subscription("other", "audit-a", 1_000);
    let sb = source(&Metrics::new());
    let regex = |keys: &[(&str, &str)]| {
        let mut k = keys.to_vec();
        k.push(("useRegex", "true"));
        plan(&double, &k)
    };
    let cases = [
        (
            regex(&[("queueName", "orders-[0-9]+"), ("operation", "max")]),
            Some(10.0),
        ),
        (
            regex(&[("queueName", "orders-[0-9]+"), ("operation", "sum")]),
            Some(14.0),
        ),
        (
            regex(&[("queueName", "orders-.*"), ("operation", "avg")]),
            Some(20.0 / 3.0),
        ),
        (
            regex(&[("topicName", "events"), ("subscriptionName", "audit-.*")]),
            Some(8.0),
        ),
        (
            regex(&[("topicName", "ev.*"), ("subscriptionName", "audit-a")]),
            Some(4.0),
        ),
        (regex(&[("queueName", "nothing-.*")]), None),
    ];
    let obs = futures::future::join_all(cases.iter().map(|(p, _)| sb.observe(p))).await;
    for (o, (p, want)) in obs.iter().zip(&cases) {
        assert_eq!(o.value, *want, "{:?}: {o:?}", p.entity);
    }
    let e = obs[5].error.as_deref().unwrap();
    assert!(matches!(e, SignalError::NotFound(_)), "{e:?}");
    assert!(e.to_string().contains("matching `nothing-.*`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_reads_only_the_pages_needed() {
    let double = ServiceBusDouble::start().await.unwrap();
    for i in 0..250 {
        double.set_queue(&format!("q{i:03}"), i);
    }
    let sb = source(&Metrics::new());
    let early = [
        plan(&double, &[("queueName", "q000")]),
        plan(&double, &[("queueName", "q001")]),
    ];
    let obs = futures::future::join_all(early.iter().map(|p| sb.observe(p))).await;
    assert_eq!((obs[0].value, obs[1].value), (Some(0.0), Some(1.0)));
    // Both named queues are on the first page: the list stops there, never reading pages
    // two and three. (The cache may read twice while the two first callers register.)
    let log = double.request_log();
    assert!((1..=2).contains(&log.len()), "{log:?}");
    assert!(
        log.iter()
            .all(|r| !r.contains("$skip=100") && !r.contains("$skip=200")),
        "{log:?}"
    );

    // A pattern needs every page: ceil(250 / 100) = 3 requests per refresh.
    let double2 = ServiceBusDouble::start().await.unwrap();
    for i in 0..250 {
        double2.set_queue(&format!("q{i:03}"), 1);
    }
    let p = plan(
        &double2,
        &[
            ("queueName", "q.*"),
            ("useRegex", "true"),
            ("operation", "sum"),
        ],
    );
    assert_eq!(sb.observe(&p).await.value, Some(250.0));
    let log = double2.request_log();
    assert_eq!(log.len(), 3, "{log:?}");
    for (i, skip) in ["$skip=0&", "$skip=100&", "$skip=200&"].iter().enumerate() {
        assert!(log[i].contains(skip), "{log:?}");
    }
}
