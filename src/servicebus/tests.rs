use std::time::Duration;

use super::client::ClientOptions;
use super::read_plan::{Fetch, Name, Wants};
use super::values::combine;
use super::*;
use crate::metadata::ConnectionString;
use crate::signal::SignalError;

fn plan(endpoint: &str, entity: Entity, use_regex: bool, op: Aggregation) -> ServiceBusPlan {
    ServiceBusPlan {
        endpoint: endpoint.into(),
        entity,
        use_regex,
        operation: op,
        message_count: 5.0,
        activation_message_count: 0.0,
        auth: ServiceBusAuth::ConnectionString(
            ConnectionString::parse("SharedAccessKeyName=a;SharedAccessKey=b").unwrap(),
        )
        .shared(),
    }
}

#[test]
fn plans_on_one_namespace_share_a_group_and_equal_entities_share_an_item() {
    let a = key(&plan(
        "https://NS.servicebus.windows.net/",
        Entity::Queue("orders".into()),
        false,
        Aggregation::Max,
    ));
    let b = key(&plan(
        "https://ns.servicebus.windows.net",
        Entity::Queue("orders".into()),
        false,
        Aggregation::Sum,
    ));
    assert_eq!(a, b);
    let c = key(&plan(
        "https://ns.servicebus.windows.net",
        Entity::Queue("orders".into()),
        true,
        Aggregation::Max,
    ));
    assert_eq!(a.0, c.0);
    assert_ne!(a.1, c.1);
}

#[test]
fn one_namespace_with_one_credential_is_one_shared_key_and_another_credential_its_own() {
    let with_key = |key: &str| {
        let mut p = plan(
            "https://ns.servicebus.windows.net",
            Entity::Queue("orders".into()),
            false,
            Aggregation::Sum,
        );
        p.auth = ServiceBusAuth::ConnectionString(
            ConnectionString::parse(&format!("SharedAccessKeyName=a;SharedAccessKey={key}"))
                .unwrap(),
        )
        .shared();
        p
    };
    let (a, a_too, b) = (
        key(&with_key("tenant-a")).0,
        key(&with_key("tenant-a")).0,
        key(&with_key("tenant-b")).0,
    );
    assert!(Arc::ptr_eq(&a, &a_too));
    assert!(!Arc::ptr_eq(&a, &b));
    // So are the plans' credentials: one copy per distinct connection string.
    assert!(Arc::ptr_eq(
        &with_key("tenant-a").auth,
        &with_key("tenant-a").auth
    ));
    assert!(!Arc::ptr_eq(
        &with_key("tenant-a").auth,
        &with_key("tenant-b").auth
    ));
    assert_ne!(a, b);
    let secret = |k: &NamespaceKey| match &k.auth {
        ServiceBusAuth::ConnectionString(cs) => match &cs.auth {
            crate::metadata::ConnectionAuth::Key { key, .. } => key.expose().to_string(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (secret(&a), secret(&b)),
        ("tenant-a".into(), "tenant-b".into())
    );
}

#[test]
fn one_exact_name_is_a_get_and_more_or_a_pattern_is_a_list() {
    let mut w = Wants::default();
    w.add(&Name::Exact("Orders".into()));
    assert!(matches!(w.fetch(), Fetch::Get(n) if n == "Orders"));
    w.add(&Name::Exact("orders".into()));
    assert!(matches!(w.fetch(), Fetch::Get(_)), "same name, other case");
    w.add(&Name::Exact("billing".into()));
    assert!(matches!(w.fetch(), Fetch::List(Some(s)) if s.len() == 2));
    w.add(&Name::new("b.*", true).unwrap());
    assert!(matches!(w.fetch(), Fetch::List(None)));
}

#[tokio::test(start_paused = true)]
async fn a_throttled_group_waits_its_whole_retry_after_and_others_on_the_host_at_most_30_s() {
    let up = ServiceBusUpstream::with_options(
        Metrics::new(),
        ClientOptions::loopback(),
        Err("none".into()),
    );
    let (told, other) = (1, 2);
    assert!(up.quiet_for("ns:443", told).is_none());
    up.hold_quiet("ns:443".into(), told, Duration::from_secs(120), 429);
    // A shorter Retry-After later does not cut the longer one short.
    up.hold_quiet("ns:443".into(), told, Duration::from_secs(2), 503);
    tokio::time::advance(Duration::from_secs(4)).await;
    let left = |group| match up.quiet_for("ns:443", group) {
        Some(SignalError::Throttled {
            status: 429,
            retry_after: Some(left),
        }) => Some(left),
        None => None,
        other => panic!("{other:?}"),
    };
    assert_eq!(left(told), Some(Duration::from_secs(116)));
    assert_eq!(
        left(other),
        Some(Duration::from_secs(26)),
        "30 s from the 429"
    );
    assert!(up.quiet_for("other:443", told).is_none(), "per host");
    tokio::time::advance(Duration::from_secs(26)).await;
    assert_eq!(
        left(other),
        None,
        "another credential reads again after 30 s"
    );
    assert_eq!(left(told), Some(Duration::from_secs(90)));
    // The other group's own throttling is its own, in full.
    up.hold_quiet("ns:443".into(), other, Duration::from_secs(60), 429);
    assert_eq!(left(other), Some(Duration::from_secs(60)));
    tokio::time::advance(Duration::from_secs(90)).await;
    assert!(up.quiet_for("ns:443", told).is_none());
    assert!(up.quiet.lock().is_empty(), "expired entries are dropped");
    assert_eq!(CROSS_CREDENTIAL_HOLD, Duration::from_secs(30));
}

#[test]
fn nothing_matching_is_not_found_never_zero() {
    let item = Watched {
        entity: Entity::Queue("x.*".into()),
        use_regex: true,
        operation: Aggregation::Avg,
    };
    let r = combine(&item, &[], || "a queue matching `x.*`".into());
    assert!(matches!(r, Err(SignalError::NotFound(_))));
}
