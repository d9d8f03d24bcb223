//! The map's idle expiry and capacity accounting, through the engine, on tokio's paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use tokio::time::advance;

use super::weight;
use crate::blend::Decision;
use crate::capacity::Capacity;
use crate::engine::key::KeyRef;
use crate::engine::{Engine, EngineConfig, EngineError, ObjectRef, SignalCaches, Tracked};
use crate::metrics::Metrics;

const IDLE: Duration = Duration::from_secs(60);

fn engine(capacity: Capacity) -> Engine {
    // Inside the window of [`metadata`] (a Wednesday at 10:00 UTC), whatever the time the
    // tests run at: the answers' replica counts would otherwise follow the wall clock.
    let inside = Utc.with_ymd_and_hms(2026, 6, 3, 10, 0, 0).unwrap();
    let config = EngineConfig {
        object_idle_ttl: IDLE,
        capacity,
        clock: Arc::new(move || inside),
        ..EngineConfig::default()
    };
    Engine::new(config, SignalCaches::default(), Metrics::new()).unwrap()
}

/// Business hours only: no upstream to read.
fn metadata(replicas: &str) -> HashMap<String, String> {
    [
        ("timezone", "UTC"),
        ("start", "0 8 * * 1-5"),
        ("end", "0 20 * * 1-5"),
        ("desiredReplicas", replicas),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn object<'a>(namespace: &'a str, name: &'a str, md: &'a HashMap<String, String>) -> ObjectRef<'a> {
    ObjectRef {
        namespace,
        name,
        metadata: md,
    }
}

async fn track(engine: &Engine, obj: ObjectRef<'_>) -> Arc<Tracked> {
    engine.track(obj).await.expect("tracked")
}

/// A KEDA call: the object tracked and answered (the answer is what gives it series).
async fn answer(engine: &Engine, obj: ObjectRef<'_>) -> (Arc<Tracked>, Decision) {
    engine.answer(obj).await.expect("answered")
}

/// What the usage holds, without a sweep: objects, bytes, objects in `namespace`.
fn usage(engine: &Engine, namespace: &str) -> (usize, usize, usize) {
    let usage = engine.objects.usage.lock();
    let in_namespace = usage.per_namespace.get(namespace).copied().unwrap_or(0);
    (usage.objects, usage.bytes, in_namespace)
}

fn gauge(engine: &Engine) -> String {
    let text = engine.metrics().encode();
    text.lines()
        .find(|l| l.starts_with("blend_scaler_tracked_scaledobjects "))
        .unwrap_or_else(|| panic!("no gauge in {text}"))
        .to_string()
}

fn has_series(engine: &Engine, name: &str) -> bool {
    let text = engine.metrics().encode();
    text.contains(&format!("scaledobject=\"{name}\""))
}

#[tokio::test(start_paused = true)]
async fn an_idle_object_is_forgotten_with_its_room_its_gauge_and_its_series() {
    let engine = engine(Capacity::default());
    let md = metadata("3");
    let obj = object("shop", "orders", &md);
    answer(&engine, obj).await;
    assert_eq!(usage(&engine, "shop"), (1, weight(&md), 1));
    assert_eq!(gauge(&engine), "blend_scaler_tracked_scaledobjects 1");
    assert!(
        has_series(&engine, "orders"),
        "an answered object has series"
    );

    advance(IDLE).await;
    assert_eq!(engine.tracked_count(), 0);
    assert_eq!(usage(&engine, "shop"), (0, 0, 0), "its room is given back");
    assert!(
        engine.objects.usage.lock().per_namespace.is_empty(),
        "no namespace is left counted"
    );
    assert_eq!(gauge(&engine), "blend_scaler_tracked_scaledobjects 0");
    assert!(!has_series(&engine, "orders"), "its series went with it");
    assert!(engine.tracked().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_object_asked_within_its_idle_time_is_kept_and_not_parsed_again() {
    let engine = engine(Capacity::default());
    let md = metadata("3");
    let obj = object("shop", "orders", &md);
    let first = track(&engine, obj).await;
    for _ in 0..3 {
        advance(IDLE - Duration::from_secs(1)).await;
        let again = track(&engine, obj).await;
        assert!(Arc::ptr_eq(&first, &again), "the same tracked object");
        assert_eq!(engine.tracked_count(), 1);
    }
    // Nearly three idle times since it was first tracked; now one since it was last asked.
    advance(IDLE - Duration::from_millis(1)).await;
    assert_eq!(engine.tracked_count(), 1);
    advance(Duration::from_millis(1)).await;
    assert_eq!(engine.tracked_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn listing_an_object_does_not_count_as_asking_about_it() {
    let engine = engine(Capacity::default());
    let md = metadata("3");
    answer(&engine, object("shop", "orders", &md)).await;
    advance(IDLE / 2).await;
    assert_eq!(engine.tracked().len(), 1, "listed while not idle");
    assert!(has_series(&engine, "orders"));
    advance(IDLE / 2).await;
    assert!(engine.tracked().is_empty(), "an idle object is not listed");
    assert!(!has_series(&engine, "orders"));
    assert_eq!(engine.tracked_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_object_asked_about_after_its_idle_time_is_tracked_anew_and_counted_once() {
    let engine = engine(Capacity::default());
    let md = metadata("3");
    let obj = object("shop", "orders", &md);
    let (first, _) = answer(&engine, obj).await;
    assert!(first.last().is_some());

    // No sweep between: the lookup alone finds it idle.
    advance(IDLE).await;
    let again = track(&engine, obj).await;
    assert!(!Arc::ptr_eq(&first, &again), "a new object");
    assert!(
        again.last().is_none(),
        "with no answer of the forgotten one"
    );
    assert_eq!(usage(&engine, "shop"), (1, weight(&md), 1));
    assert_eq!(engine.tracked_count(), 1);
    assert_eq!(gauge(&engine), "blend_scaler_tracked_scaledobjects 1");
}

#[tokio::test(start_paused = true)]
async fn a_replaced_plan_is_not_counted_twice_and_keeps_its_figures() {
    // Room for one object: a new plan of it must not need a second.
    let engine = engine(Capacity {
        max_objects: 1,
        ..Capacity::default()
    });
    let (three, four) = (metadata("3"), metadata("4"));
    let (old, _) = answer(&engine, object("shop", "orders", &three)).await;
    let (new, decision) = answer(&engine, object("shop", "orders", &four)).await;
    assert!(!Arc::ptr_eq(&old, &new), "parsed again for new metadata");
    assert_eq!(decision.replicas(), Ok(4));
    assert_eq!(usage(&engine, "shop"), (1, weight(&four), 1));
    assert_eq!(gauge(&engine), "blend_scaler_tracked_scaledobjects 1");
    assert_eq!(engine.tracked().len(), 1);

    // Back and forth: each plan's bytes replace the other's.
    let longer = metadata("12");
    track(&engine, object("shop", "orders", &longer)).await;
    assert!(
        has_series(&engine, "orders"),
        "the new plan keeps the series"
    );
    assert_eq!(usage(&engine, "shop"), (1, weight(&longer), 1));

    advance(IDLE).await;
    assert_eq!(engine.tracked_count(), 0);
    assert_eq!(usage(&engine, "shop"), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_new_object_past_the_cap_is_refused_until_an_idle_one_is_forgotten() {
    let engine = engine(Capacity {
        max_objects: 2,
        max_objects_per_namespace: 1,
        ..Capacity::default()
    });
    let md = metadata("3");
    track(&engine, object("shop", "orders", &md)).await;
    track(&engine, object("bank", "ledger", &md)).await;
    for (ns, name) in [("shop", "other"), ("docs", "pages")] {
        let refused = engine.track(object(ns, name, &md)).await;
        assert!(
            matches!(refused, Err(EngineError::Exhausted(_))),
            "{ns}/{name} past a cap"
        );
    }
    assert_eq!(usage(&engine, "shop").0, 2, "a refusal keeps no room");

    advance(IDLE - Duration::from_secs(1)).await;
    // A lookup sweeps now, before the two are idle, so no call's sweep is due when they are.
    assert!(engine.objects.get(KeyRef("docs", "none", "none")).is_none());
    advance(Duration::from_secs(1)).await;
    // No scrape either: the refusal's own sweep makes the room.
    track(&engine, object("shop", "other", &md)).await;
    track(&engine, object("docs", "pages", &md)).await;
    assert_eq!(usage(&engine, "shop"), (2, 2 * weight(&md), 1));
    assert_eq!(
        usage(&engine, "bank").2,
        0,
        "the idle namespace's count went"
    );
}

#[tokio::test(start_paused = true)]
async fn calls_sweep_idle_objects_without_a_scrape() {
    let engine = engine(Capacity::default());
    let md = metadata("3");
    track(&engine, object("shop", "deleted", &md)).await;
    let kept = object("shop", "kept", &md);
    track(&engine, kept).await;
    // `kept` is asked about every quarter of the idle time; `deleted` never again.
    for _ in 0..5 {
        advance(IDLE / 4).await;
        track(&engine, kept).await;
    }
    assert_eq!(usage(&engine, "shop"), (1, weight(&md), 1));
    assert_eq!(gauge(&engine), "blend_scaler_tracked_scaledobjects 1");
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_calls_for_one_object_share_it_and_count_it_once() {
    let engine = engine(Capacity::default());
    let md = metadata("3");
    let obj = object("shop", "orders", &md);
    let (a, b, c) = tokio::join!(
        track(&engine, obj),
        track(&engine, obj),
        track(&engine, obj)
    );
    assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&b, &c));
    assert_eq!(usage(&engine, "shop"), (1, weight(&md), 1));
}

#[tokio::test(start_paused = true)]
async fn the_key_parts_keep_their_borders_and_the_metric_name_is_part_of_it() {
    let engine = engine(Capacity::default());
    let md = metadata("3");
    let mut named = metadata("3");
    named.insert("metricName".into(), "second-trigger".into());
    let a = track(&engine, object("team-01", "orders", &md)).await;
    let b = track(&engine, object("team-0", "1orders", &md)).await;
    let c = track(&engine, object("team-01", "orders", &named)).await;
    assert!(!Arc::ptr_eq(&a, &b) && !Arc::ptr_eq(&a, &c));
    assert_eq!(engine.tracked_count(), 3);
    // Many objects: every one is found again by its borrowed key, across the shards' growth.
    let names: Vec<String> = (0..500).map(|i| format!("object-{i}")).collect();
    let tracked: Vec<_> =
        futures::future::join_all(names.iter().map(|n| engine.track(object("bulk", n, &md)))).await;
    for (name, first) in names.iter().zip(tracked) {
        let again = track(&engine, object("bulk", name, &md)).await;
        assert!(Arc::ptr_eq(&first.unwrap(), &again), "{name}");
    }
    assert_eq!(engine.tracked_count(), 503);
}
