//! The client and credentials against the Service Bus double: counts, paging, the not-found
//! quirk, SAS and workload identity, and every kind of failure the double can inject.

#[path = "support/keda.rs"]
mod keda;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use blend_scaler::cache::Upstream;
use blend_scaler::metadata::{
    Aggregation, ConnectionAuth, ConnectionString, Entity, ServiceBusAuth,
};
use blend_scaler::metrics::Metrics;
use blend_scaler::secret::Secret;
use blend_scaler::servicebus::auth::{Credential, SharedKeySigner, sas_token};
use blend_scaler::servicebus::client::{Client, ClientOptions, Connection};
use blend_scaler::servicebus::{NamespaceKey, ServiceBusUpstream, Watched};
use blend_scaler::signal::SignalError;
use blend_scaler_testkit::servicebus::{
    ApiVersion, Counts, CountsPrefix, DoubleOptions, Fault, RetryAfter, ServiceBusDouble,
    verify_sas,
};

fn connect(double: &ServiceBusDouble, key: &str) -> Connection {
    let cs = ConnectionString::parse(&double.connection_string_with_key(key)).unwrap();
    let ConnectionAuth::Key { name, key } = cs.auth else {
        panic!("a key connection string")
    };
    Connection::new(
        &cs.endpoint.unwrap(),
        Credential::SharedKey(SharedKeySigner::new(name.to_string(), key)),
    )
    .unwrap()
}

fn client(metrics: &Metrics) -> Client {
    Client::new(metrics.clone(), ClientOptions::loopback())
}

#[tokio::test]
async fn the_doubles_responses_parse_to_the_counts_it_was_set_to() {
    let double = ServiceBusDouble::start().await.unwrap();
    let conn = connect(&double, &double.options().key.clone());
    let c = client(&Metrics::new());
    let counts = Counts {
        active: 7,
        dead_letter: 2,
        scheduled: 1,
        transfer: 0,
        transfer_dead_letter: 0,
    };
    double.set_queue_counts("orders", counts);
    double.set_subscription_counts("events", "audit", Counts::active(11));
    for version in [ApiVersion::V2017_04, ApiVersion::V2021_05] {
        for prefix in [
            CountsPrefix::AsService,
            CountsPrefix::D2p1,
            CountsPrefix::D3p1,
        ] {
            let case = format!("{version:?} {prefix:?}");
            double.set_api_version(Some(version));
            double.set_counts_prefix(prefix);
            let q = c.queue(&conn, "orders").await.unwrap();
            assert_eq!(q.active().unwrap(), 7, "{case}");
            assert_eq!(q.counts.dead_letter, Some(2), "{case}");
            assert_eq!(q.message_count, Some(10), "{case}");
            let s = c.subscription(&conn, "events", "audit").await.unwrap();
            assert_eq!(s.active().unwrap(), 11, "{case}");
            let page = c.queues_page(&conn, 0).await.unwrap();
            assert_eq!(page.len(), 1, "{case}");
            assert_eq!(
                (page[0].name.as_str(), page[0].active().unwrap()),
                ("orders", 7)
            );
            let subs = c.subscriptions_page(&conn, "events", 0).await.unwrap();
            assert_eq!(subs[0].active().unwrap(), 11, "{case}");
            let topics = c.topics_page(&conn, 0).await.unwrap();
            assert_eq!(topics[0].name, "events", "{case}");
            assert_eq!(topics[0].subscription_count, Some(1), "{case}");
        }
    }
    // Counts can change at any time and the next read sees them.
    double.set_queue("orders", 0);
    assert_eq!(c.queue(&conn, "ORDERS").await.unwrap().active().unwrap(), 0);
}

#[tokio::test]
async fn lists_page_by_skip_and_top() {
    let double = ServiceBusDouble::start().await.unwrap();
    let conn = connect(&double, &double.options().key.clone());
    let c = client(&Metrics::new());
    for i in 0..250 {
        double.set_queue(&format!("q{i:03}"), i);
    }
    let mut names = Vec::new();
    for (skip, len) in [(0, 100), (100, 100), (200, 50), (250, 0)] {
        let page = c.queues_page(&conn, skip).await.unwrap();
        assert_eq!(page.len(), len, "skip {skip}");
        names.extend(page.into_iter().map(|d| d.name));
    }
    names.dedup();
    assert_eq!(names.len(), 250);
    assert_eq!(double.requests_to("/$Resources/Queues"), 4);
    assert!(
        double.request_log()[1].contains("$skip=100&$top=100"),
        "{:?}",
        double.request_log()
    );
}

#[tokio::test]
async fn a_missing_entity_is_the_empty_feed_and_reads_as_not_found() {
    let double = ServiceBusDouble::start().await.unwrap();
    let conn = connect(&double, &double.options().key.clone());
    let c = client(&Metrics::new());
    double.set_subscription("events", "audit", 1);
    let e = c.queue(&conn, "ghost").await.unwrap_err();
    assert!(matches!(e, SignalError::NotFound(_)), "{e:?}");
    assert!(e.to_string().contains("queue `ghost`"), "{e}");
    let e = c.subscription(&conn, "events", "nope").await.unwrap_err();
    assert!(e.to_string().contains("subscription `nope`"), "{e}");
    let e = c
        .subscriptions_page(&conn, "no-topic", 0)
        .await
        .unwrap_err();
    assert!(matches!(e, SignalError::NotFound(_)), "{e:?}");
    // A queue path naming a topic is not read as a queue.
    let e = c.queue(&conn, "events").await.unwrap_err();
    assert!(e.to_string().contains("is a topic, not a queue"), "{e}");
    assert_eq!(double.requests_to("/ghost"), 1);
}

#[tokio::test]
async fn sas_tokens_verify_and_a_wrong_key_is_refused_without_being_shown() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 3);
    let c = client(&Metrics::new());

    let good = connect(&double, &double.options().key.clone());
    assert_eq!(c.queue(&good, "orders").await.unwrap().active().unwrap(), 3);
    assert_eq!(c.queues_page(&good, 0).await.unwrap().len(), 1);

    let wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5";
    let bad = connect(&double, wrong_key);
    let e = c.queue(&bad, "orders").await.unwrap_err();
    assert!(
        matches!(e, SignalError::Unauthorized { status: 401, .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("authorization failed"), "{text}");
    assert!(!text.contains(wrong_key), "{text}");
    assert!(!format!("{e:?}").contains(wrong_key));
    assert!(!format!("{bad:?}").contains(wrong_key), "{bad:?}");

    // The `SharedAccessSignature=` connection string form is sent as is.
    let resource = format!("{}/", double.endpoint());
    let key = Secret::new(double.options().key.clone());
    let expiry = |d: i64| (chrono::Utc::now().timestamp() + d) as u64;
    let ready = sas_token(&resource, &double.options().key_name, &key, expiry(600));
    let cs = format!(
        "Endpoint={}/;SharedAccessSignature={}",
        double.endpoint(),
        ready.expose()
    );
    let ConnectionAuth::Signature(sig) = ConnectionString::parse(&cs).unwrap().auth else {
        panic!("a signature connection string")
    };
    let conn = Connection::new(&double.endpoint(), Credential::Signature(sig)).unwrap();
    assert_eq!(c.queue(&conn, "orders").await.unwrap().active().unwrap(), 3);
    let expired = sas_token(&resource, &double.options().key_name, &key, expiry(-5));
    let conn = Connection::new(&double.endpoint(), Credential::Signature(expired)).unwrap();
    let e = c.queue(&conn, "orders").await.unwrap_err();
    assert!(
        matches!(e, SignalError::Unauthorized { status: 401, .. }),
        "{e:?}"
    );
    // Service Bus's own detail ("ExpiredToken: ...") goes to the log, not into the error.
    assert!(!e.to_string().contains("ExpiredToken"), "{e}");
}

fn namespace(double: &ServiceBusDouble, auth: ServiceBusAuth) -> Arc<NamespaceKey> {
    Arc::new(NamespaceKey {
        endpoint: double.endpoint().into(),
        auth,
    })
}

fn queue(name: &str) -> Watched {
    Watched {
        entity: Entity::Queue(name.into()),
        use_regex: false,
        operation: Aggregation::Sum,
    }
}

#[tokio::test]
async fn workload_identity_exchanges_once_and_reads_with_the_bearer_token() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 5);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, &double.options().federated_token).unwrap();
    let metrics = Metrics::new();
    let upstream = ServiceBusUpstream::with_options(
        metrics.clone(),
        ClientOptions::loopback(),
        Ok(keda::workload_identity(&double, file.clone())),
    );
    let ns = namespace(&double, ServiceBusAuth::WorkloadIdentity);
    for _ in 0..3 {
        let read = upstream.read(&ns, &[queue("orders")]).await;
        assert_eq!(read.values[&queue("orders")], Ok(5.0));
    }
    assert_eq!(double.token_requests(), 1, "the token is reused");
    assert!(
        metrics.encode().contains(
            r#"blend_scaler_upstream_requests_total{upstream="azure_ad",outcome="ok"} 1"#
        )
    );

    // A federated token the directory does not trust: refused, and not shown.
    let forged = "eyJmb3JnZWQiOnRydWV9.c2lnbmVk";
    std::fs::write(&file, forged).unwrap();
    let fresh = ServiceBusUpstream::with_options(
        Metrics::new(),
        ClientOptions::loopback(),
        Ok(keda::workload_identity(&double, file.clone())),
    );
    let read = fresh.read(&ns, &[queue("orders")]).await;
    let e = read.values[&queue("orders")].clone().unwrap_err();
    assert!(matches!(e, SignalError::Unauthorized { .. }), "{e:?}");
    assert!(e.to_string().contains("authorization failed"), "{e}");
    // Azure AD's reason goes to the scaler's log; the caller gets a fixed cause.
    assert!(!e.to_string().contains("AADSTS"), "{e}");
    assert!(!e.to_string().contains(forged), "{e}");

    // Not configured at all: says which variables are missing.
    let none = ServiceBusUpstream::with_options(
        Metrics::new(),
        ClientOptions::loopback(),
        Err(
            "Azure workload identity is not configured on the scaler: AZURE_CLIENT_ID not set"
                .into(),
        ),
    );
    let e = none.read(&ns, &[queue("orders")]).await.values[&queue("orders")]
        .clone()
        .unwrap_err();
    assert!(e.to_string().contains("AZURE_CLIENT_ID"), "{e}");
}

#[tokio::test]
async fn a_token_endpoint_claiming_an_absurd_lifetime_does_not_break_reads() {
    let double = ServiceBusDouble::start_with(DoubleOptions {
        token_lifetime: Duration::from_secs(u64::MAX),
        ..DoubleOptions::default()
    })
    .await
    .unwrap();
    double.set_queue("orders", 5);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, &double.options().federated_token).unwrap();
    let upstream = ServiceBusUpstream::with_options(
        Metrics::new(),
        ClientOptions::loopback(),
        Ok(keda::workload_identity(&double, file)),
    );
    let ns = namespace(&double, ServiceBusAuth::WorkloadIdentity);
    for _ in 0..2 {
        let read = upstream.read(&ns, &[queue("orders")]).await;
        assert_eq!(read.values[&queue("orders")], Ok(5.0));
    }
    assert_eq!(
        double.token_requests(),
        1,
        "the token is kept, renewed later"
    );
}

#[tokio::test]
async fn throttling_failures_and_broken_bodies_become_the_right_errors() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("orders", 1);
    let metrics = Metrics::new();
    let conn = connect(&double, &double.options().key.clone());
    let c = client(&metrics);

    let status = |status, retry_after| Fault::Status {
        status,
        retry_after,
    };
    double.inject(status(429, Some(RetryAfter::Seconds(7))), Some(1));
    let e = c.queue(&conn, "orders").await.unwrap_err();
    assert_eq!(
        e,
        SignalError::Throttled {
            status: 429,
            retry_after: Some(Duration::from_secs(7))
        }
    );
    double.inject(
        status(503, Some(RetryAfter::DateIn(Duration::from_secs(30)))),
        Some(1),
    );
    let e = c.queues_page(&conn, 0).await.unwrap_err();
    let wait = e.retry_after().expect("an HTTP-date Retry-After");
    assert!(
        wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    assert!(matches!(e, SignalError::Throttled { status: 503, .. }));

    for (fault, check) in [
        (
            status(403, None),
            (|e: &SignalError| matches!(e, SignalError::Unauthorized { status: 403, .. }))
                as fn(&SignalError) -> bool,
        ),
        (status(500, None), |e| {
            matches!(e, SignalError::Http { status: 500, .. })
        }),
        (status(404, None), |e| matches!(e, SignalError::NotFound(_))),
        (Fault::Truncated, |e| matches!(e, SignalError::Malformed(_))),
        (Fault::Garbage, |e| matches!(e, SignalError::Malformed(_))),
    ] {
        double.inject(fault, Some(1));
        let e = c.queue(&conn, "orders").await.unwrap_err();
        assert!(check(&e), "{fault:?}: {e:?}");
        // The fault was used up: the next read is fine.
        assert_eq!(c.queue(&conn, "orders").await.unwrap().active().unwrap(), 1);
    }

    double.set_latency(Duration::from_millis(400));
    let quick = Client::new(
        metrics.clone(),
        ClientOptions {
            timeout: Duration::from_millis(100),
            ..ClientOptions::loopback()
        },
    );
    let e = quick.queue(&conn, "orders").await.unwrap_err();
    assert_eq!(e, SignalError::Timeout(Duration::from_millis(100)));
    assert!(e.to_string().contains("timed out"));

    let text = metrics.encode();
    for outcome in [
        "ok",
        "throttled",
        "unauthorized",
        "error",
        "not_found",
        "timeout",
    ] {
        let needle = format!(
            r#"blend_scaler_upstream_requests_total{{upstream="servicebus",outcome="{outcome}"}}"#
        );
        assert!(text.contains(&needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error_naming_the_host() {
    // Bind and drop to get a port nothing listens on.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let conn = Connection::new(
        &format!("http://127.0.0.1:{port}"),
        Credential::SharedKey(SharedKeySigner::new("root", Secret::new("k"))),
    )
    .unwrap();
    let e = client(&Metrics::new())
        .queue(&conn, "orders")
        .await
        .unwrap_err();
    assert!(matches!(e, SignalError::Connect(_)), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[test]
fn the_double_verifies_signatures_independently_of_the_signer() {
    let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let exp = 2_000_000_000 + 600;
    let token = sas_token("http://127.0.0.1:9/", "root", &Secret::new("k3y"), exp);
    let t = token.expose().trim_start_matches("SharedAccessSignature ");
    assert_eq!(
        verify_sas(t, "root", "k3y", "127.0.0.1:9/orders", now),
        Ok(())
    );
    // Wrong key, wrong key name, expired, another host: all refused.
    assert!(verify_sas(t, "root", "other", "127.0.0.1:9/orders", now).is_err());
    assert!(verify_sas(t, "reader", "k3y", "127.0.0.1:9/orders", now).is_err());
    let later = now + Duration::from_secs(601);
    assert!(
        verify_sas(t, "root", "k3y", "127.0.0.1:9/orders", later)
            .unwrap_err()
            .contains("Expired")
    );
    assert!(verify_sas(t, "root", "k3y", "127.0.0.2:9/orders", now).is_err());
    // A token for one queue does not open another.
    let q = sas_token(
        "http://127.0.0.1:9/orders",
        "root",
        &Secret::new("k3y"),
        exp,
    );
    let q = q.expose().trim_start_matches("SharedAccessSignature ");
    assert_eq!(
        verify_sas(q, "root", "k3y", "127.0.0.1:9/orders", now),
        Ok(())
    );
    assert!(verify_sas(q, "root", "k3y", "127.0.0.1:9/ordersx", now).is_err());
    assert!(verify_sas(q, "root", "k3y", "127.0.0.1:9/billing", now).is_err());
}
