//! The cache against a table upstream, on a paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::task::{TaskHealth, supervise};
use super::*;
use crate::metrics::Metrics;
use crate::signal::{EntityCounts, SignalError};

/// Counts reads and serves values from a table; fails items it has no value for.
#[derive(Default)]
struct Table {
    values: Mutex<HashMap<&'static str, f64>>,
    reads: AtomicU32,
    retry_after: Mutex<Option<Duration>>,
    delay: Mutex<Duration>,
    /// Reads see the whole table, as a list does, and report the rest in passing.
    list: Mutex<bool>,
    /// The items of every read, sorted.
    batches: Mutex<Vec<Vec<&'static str>>>,
    /// Reads panic (a bug in an upstream client, an absurd token lifetime).
    panic: Mutex<bool>,
    /// Where the groups' refresh reports panics.
    metrics: Metrics,
    /// Other counts reads return beside an item's value, while it has one.
    counts: Mutex<HashMap<&'static str, EntityCounts>>,
}

impl Upstream for Table {
    type Group = &'static str;
    type Item = &'static str;

    fn supervision(&self) -> Option<(&Metrics, &'static str)> {
        Some((&self.metrics, "table"))
    }

    async fn read(&self, _group: &&'static str, items: &[&'static str]) -> GroupRead<&'static str> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let mut batch = items.to_vec();
        batch.sort();
        self.batches.lock().push(batch);
        let delay = *self.delay.lock();
        tokio::time::sleep(delay).await;
        if *self.panic.lock() {
            panic!("the upstream client hit a bug");
        }
        if let Some(pause) = *self.retry_after.lock() {
            return GroupRead::all_failed(
                items,
                SignalError::Throttled {
                    status: 429,
                    retry_after: Some(pause),
                },
            );
        }
        let values = self.values.lock();
        GroupRead {
            values: items
                .iter()
                .map(|i| {
                    let v = values
                        .get(i)
                        .copied()
                        .ok_or_else(|| SignalError::NotFound(i.to_string()));
                    (*i, v)
                })
                .collect(),
            retry_after: None,
            seen_in_passing: if *self.list.lock() {
                values
                    .iter()
                    .filter(|(k, _)| !items.contains(k))
                    .map(|(k, v)| (*k, *v))
                    .collect()
            } else {
                HashMap::new()
            },
            counts: self
                .counts
                .lock()
                .iter()
                .filter(|(k, _)| items.contains(k) && values.contains_key(*k))
                .map(|(k, c)| (*k, *c))
                .collect(),
        }
    }
}

fn config() -> RefreshConfig {
    RefreshConfig {
        interval: Duration::from_secs(5),
        idle_ttl: Duration::from_secs(60),
        ..RefreshConfig::default()
    }
}

fn table(pairs: &[(&'static str, f64)]) -> Arc<Table> {
    let t = Table::default();
    t.values.lock().extend(pairs.iter().copied());
    Arc::new(t)
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_callers_share_one_read() {
    let t = table(&[("orders", 12.0), ("billing", 3.0)]);
    let r = Arc::new(Refresher::from_arc(t.clone(), config()));
    let mut joins = Vec::new();
    for i in 0..50 {
        let r = r.clone();
        let item = if i % 2 == 0 { "orders" } else { "billing" };
        joins.push(tokio::spawn(async move { r.observe(&"ns", &item).await }));
    }
    for (i, j) in joins.into_iter().enumerate() {
        let obs = j.await.unwrap();
        assert_eq!(obs.value, Some(if i % 2 == 0 { 12.0 } else { 3.0 }));
    }
    assert_eq!(
        t.reads.load(Ordering::SeqCst),
        1,
        "one read for the whole burst"
    );
}

#[tokio::test(start_paused = true)]
async fn the_counts_a_read_returns_come_with_the_value_and_stay_through_a_failed_read() {
    let t = table(&[("orders", 12.0), ("billing", 3.0)]);
    let counts = EntityCounts {
        active: Some(12),
        dead_letter: Some(2),
        ..EntityCounts::default()
    };
    t.counts.lock().insert("orders", counts);
    let r = Refresher::from_arc(t.clone(), config());
    let orders = r.observe(&"ns", &"orders").await;
    assert_eq!((orders.value, orders.counts), (Some(12.0), Some(counts)));
    assert_eq!(r.observe(&"ns", &"billing").await.counts, None);
    // The next read fails for `orders`: its value and counts are the last good ones.
    t.values.lock().remove("orders");
    let before = t.reads.load(Ordering::SeqCst);
    while t.reads.load(Ordering::SeqCst) == before {
        // KEDA keeps asking every 5 s, which keeps the item read.
        tokio::time::sleep(Duration::from_secs(5)).await;
        r.observe(&"ns", &"orders").await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let failed = r.peek(&"ns", &"orders").await;
    assert!(failed.error.is_some(), "{failed:?}");
    assert_eq!((failed.value, failed.counts), (Some(12.0), Some(counts)));
}

#[tokio::test(start_paused = true)]
async fn an_item_is_read_again_once_per_keda_call_at_most_and_never_on_a_look() {
    let t = table(&[("orders", 1.0)]);
    let r = Refresher::from_arc(t.clone(), config());
    assert_eq!(r.observe(&"ns", &"orders").await.value, Some(1.0));
    let after_first = t.reads.load(Ordering::SeqCst);
    t.values.lock().insert("orders", 9.0);
    for _ in 0..100 {
        // KEDA calls far more often than the refresh interval: all from the cache, and
        // calls closer than the interval count as one.
        r.observe(&"ns", &"orders").await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Looks (a stream's, `/decisions`) are not KEDA asking.
    assert_eq!(r.peek(&"ns", &"orders").await.value, Some(1.0));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        t.reads.load(Ordering::SeqCst),
        after_first,
        "nobody asked since"
    );
    // KEDA asks again, 9 s after its first call, within its period and a refresh: answered
    // from the cache at once. The item is read a refresh before KEDA's next call is
    // expected (9 s on, at 18 s): at 13 s, not now.
    let asked = Instant::now();
    let obs = r.observe(&"ns", &"orders").await;
    assert_eq!(asked.elapsed(), Duration::ZERO);
    assert_eq!(obs.value, Some(1.0));
    assert!(obs.age.unwrap() >= Duration::from_secs(9));
    tokio::time::sleep(Duration::from_millis(3_900)).await;
    assert_eq!(t.reads.load(Ordering::SeqCst), after_first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.reads.load(Ordering::SeqCst), after_first + 1);
    assert_eq!(r.observe(&"ns", &"orders").await.value, Some(9.0));
}

#[tokio::test(start_paused = true)]
async fn never_seen_items_arriving_one_by_one_share_a_read_per_second() {
    // KEDA's polls after a scaler restart: thirty never-seen items, one every 100 ms.
    let names: Vec<&'static str> = (0..30)
        .map(|i| &*Box::leak(format!("queue-{i}").into_boxed_str()))
        .collect();
    let pairs: Vec<(&'static str, f64)> = names.iter().map(|n| (*n, 1.0)).collect();
    let t = table(&pairs);
    let r = Arc::new(Refresher::from_arc(t.clone(), config()));
    let mut callers = Vec::new();
    for name in names {
        let r = r.clone();
        callers.push(tokio::spawn(async move {
            let asked = Instant::now();
            let obs = r.observe(&"ns", &name).await;
            (obs, asked.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in callers {
        let (obs, waited) = c.await.unwrap();
        assert_eq!(obs.value, Some(1.0));
        assert!(waited <= Duration::from_millis(1_010), "waited {waited:?}");
    }
    // Three seconds of arrivals: the first read, then one a second (not thirty).
    assert_eq!(t.reads.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_new_item_is_read_alone_and_the_others_keep_their_schedule() {
    let t = table(&[("orders", 1.0), ("billing", 2.0)]);
    let r = Refresher::from_arc(t.clone(), config());
    r.observe(&"ns", &"orders").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.observe(&"ns", &"billing").await.value, Some(2.0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.observe(&"ns", &"orders").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        *t.batches.lock(),
        [vec!["orders"], vec!["billing"], vec!["orders"]],
        "the first read, the wake for billing, orders asked for again 5 s after its read"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_item_failing_alone_does_not_hold_the_others_back() {
    let t = table(&[("orders", 1.0)]);
    let r = Refresher::from_arc(t.clone(), config());
    r.observe(&"ns", &"orders").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let typo = r.observe(&"ns", &"ordres").await;
    assert!(matches!(
        typo.error.as_deref(),
        Some(SignalError::NotFound(_))
    ));
    t.values.lock().insert("orders", 6.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.observe(&"ns", &"orders").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Refreshed on time, 5 s after the first read, not backed off after the typo's.
    assert_eq!(t.reads.load(Ordering::SeqCst), 3);
    assert_eq!(r.observe(&"ns", &"orders").await.value, Some(6.0));
}

#[tokio::test(start_paused = true)]
async fn items_a_list_saw_in_passing_are_answered_without_a_read_of_their_own() {
    let t = table(&[("orders", 12.0), ("billing", 3.0), ("audit", 0.0)]);
    *t.list.lock() = true;
    let r = Refresher::from_arc(t.clone(), config());
    assert_eq!(r.observe(&"ns", &"orders").await.value, Some(12.0));
    assert_eq!(t.reads.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let billing = r.observe(&"ns", &"billing").await;
    assert_eq!(billing.value, Some(3.0));
    assert_eq!(
        billing.age,
        Some(Duration::from_secs(2)),
        "as old as the read"
    );
    assert_eq!(r.observe(&"ns", &"audit").await.value, Some(0.0));
    assert_eq!(t.reads.load(Ordering::SeqCst), 1, "no read for either");
    // Both are the group's own items from now on.
    t.values.lock().insert("billing", 8.0);
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    assert_eq!(r.observe(&"ns", &"billing").await.value, Some(8.0));
    assert_eq!(t.reads.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn what_a_failed_read_saw_in_passing_is_not_kept() {
    let t = table(&[("orders", 12.0), ("billing", 3.0)]);
    *t.list.lock() = true;
    let r = Refresher::from_arc(t.clone(), config());
    r.observe(&"ns", &"orders").await;
    // An item the list does not hold wakes the group; that read is throttled.
    *t.retry_after.lock() = Some(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(r.observe(&"ns", &"ghost").await.value, None);
    assert_eq!(t.reads.load(Ordering::SeqCst), 2);
    // The first read's page is younger than the interval, but the latest read saw
    // nothing: billing waits for a read of its own, which Retry-After holds back past
    // the first-read bound.
    assert_eq!(r.observe(&"ns", &"billing").await.value, None);
    assert_eq!(t.reads.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_read_is_cut_off_at_the_bound() {
    let t = table(&[("orders", 1.0)]);
    *t.delay.lock() = Duration::from_secs(10);
    let r = Refresher::from_arc(t.clone(), config());
    let started = Instant::now();
    let obs = r.observe(&"ns", &"orders").await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(obs.value, None);
}

#[tokio::test(start_paused = true)]
async fn a_failure_keeps_the_last_good_value_and_reports_the_error() {
    let t = table(&[("orders", 4.0)]);
    let r = Refresher::from_arc(t.clone(), config());
    r.observe(&"ns", &"orders").await;
    t.values.lock().clear();
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    r.observe(&"ns", &"orders").await;
    // (read 100 ms on: a refresh before the next call, expected a 5.1 s period later)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let obs = r.observe(&"ns", &"orders").await;
    assert_eq!(obs.value, Some(4.0));
    assert!(obs.age.unwrap() >= Duration::from_secs(5));
    assert!(matches!(
        obs.error.as_deref(),
        Some(SignalError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_even_when_new_items_arrive() {
    let t = table(&[("orders", 4.0), ("billing", 1.0)]);
    *t.retry_after.lock() = Some(Duration::from_secs(30));
    let r = Refresher::from_arc(t.clone(), config());
    r.observe(&"ns", &"orders").await;
    assert_eq!(t.reads.load(Ordering::SeqCst), 1);
    // A new item wakes the group, but the namespace asked for 30 s of quiet.
    // (this first read of billing waits its 2 s bound)
    r.observe(&"ns", &"billing").await;
    tokio::time::sleep(Duration::from_secs(27)).await;
    assert_eq!(t.reads.load(Ordering::SeqCst), 1);
    *t.retry_after.lock() = None;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.reads.load(Ordering::SeqCst), 2);
    assert_eq!(r.observe(&"ns", &"billing").await.value, Some(1.0));
}

#[tokio::test(start_paused = true)]
async fn a_stream_speeds_its_group_up_until_it_ends() {
    let t = table(&[("orders", 0.0)]);
    let r = Refresher::from_arc(t.clone(), config());
    r.observe(&"ns", &"orders").await;
    let (mut changes, guard) = r.watch(&"ns").unwrap();
    let before = t.reads.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let fast = t.reads.load(Ordering::SeqCst) - before;
    assert!(fast >= 4, "reads while streaming: {fast}");
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    drop(guard);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = t.reads.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert!(t.reads.load(Ordering::SeqCst) - before <= 2);
}

#[tokio::test(start_paused = true)]
async fn items_nobody_asks_about_are_dropped_with_their_group() {
    let t = table(&[("orders", 1.0)]);
    let r = Refresher::from_arc(t.clone(), config());
    r.observe(&"ns", &"orders").await;
    assert_eq!(r.group_count(), 1);
    tokio::time::sleep(Duration::from_secs(70)).await;
    assert_eq!(r.group_count(), 0);
    let reads = t.reads.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(t.reads.load(Ordering::SeqCst), reads, "the task ended");
}

#[tokio::test(start_paused = true)]
async fn an_entry_whose_group_was_dropped_is_answered_by_a_new_group_with_a_read_of_its_own() {
    let t = table(&[("orders", 1.0)]);
    let keyed = Keyed::new(
        Refresher::from_arc(t.clone(), config()),
        |p: &(&'static str, &'static str)| *p,
    );
    let orders = keyed.entry(&("ns", "orders"), false);
    assert_eq!(orders.observe().await.value, Some(1.0));
    // Idle past the items' idle time: the group's task drops it and ends.
    tokio::time::sleep(Duration::from_secs(70)).await;
    let reads = t.reads.load(Ordering::SeqCst);
    t.values.lock().insert("orders", 2.0);
    // The entry held the old group: it finds a new one, which reads the item afresh.
    assert_eq!(orders.observe().await.value, Some(2.0));
    assert_eq!(t.reads.load(Ordering::SeqCst), reads + 1);
    // And the new group is refreshed as any: KEDA's next call past the period reads again,
    // a refresh before the call after it is expected (6 s on): 1 s later.
    t.values.lock().insert("orders", 3.0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    orders.observe().await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(orders.observe().await.value, Some(3.0));
}

#[tokio::test(start_paused = true)]
async fn entries_on_one_group_share_its_reads_however_often_they_are_asked() {
    let t = table(&[("orders", 1.0), ("billing", 2.0)]);
    let keyed = Keyed::new(
        Refresher::from_arc(t.clone(), config()),
        |p: &(&'static str, &'static str)| *p,
    );
    let (orders, billing) = (
        keyed.entry(&("ns", "orders"), false),
        keyed.entry(&("ns", "billing"), false),
    );
    let (a, b) = tokio::join!(orders.observe(), billing.observe());
    assert_eq!((a.value, b.value), (Some(1.0), Some(2.0)));
    assert_eq!(t.reads.load(Ordering::SeqCst), 1, "one first read for both");
    // KEDA asks both every second for a minute: one group, read once per period at most.
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        orders.observe().await;
        billing.observe().await;
    }
    let reads = t.reads.load(Ordering::SeqCst);
    assert!(
        (11..=13).contains(&reads),
        "{reads} reads in a minute at a 5 s period"
    );
}

#[tokio::test(start_paused = true)]
async fn an_item_keeps_the_reads_for_a_rate_once_a_plan_that_decides_on_it_looks() {
    let t = table(&[("orders", 0.0)]);
    let keyed = Keyed::new(
        Refresher::from_arc(t.clone(), config()),
        |p: &(&'static str, &'static str)| *p,
    );
    let plain = keyed.entry(&("ns", "orders"), false);
    // A backlog growing 10 a second, asked by KEDA every second for half a minute.
    let grow = || *t.values.lock().get_mut("orders").unwrap() += 10.0;
    let mut last = plain.observe().await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        grow();
        last = plain.observe().await;
    }
    assert!(last.value.is_some_and(|v| v > 0.0), "{last:?}");
    assert_eq!(last.rate, None, "no plan decides on the rate");
    // A drainTime plan's entry on the same item: the rate shows from the reads after it
    // looked, for both entries.
    let drain = keyed.entry(&("ns", "orders"), true);
    assert_eq!(drain.observe().await.rate, None);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        grow();
        drain.observe().await;
    }
    let (d, p) = (drain.observe().await, plain.observe().await);
    assert_eq!(d.rate, p.rate);
    let rate = d.rate.expect("a rate from the reads since");
    assert!((rate - 10.0).abs() < 1.0, "{rate}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_read_reports_an_error_and_the_group_keeps_being_refreshed() {
    let t = table(&[("orders", 4.0)]);
    *t.panic.lock() = true;
    let r = Refresher::from_arc(t.clone(), config());
    let obs = r.observe(&"ns", &"orders").await;
    assert_eq!(obs.value, None);
    assert!(
        matches!(obs.error.as_deref(), Some(SignalError::Unreported(_))),
        "{obs:?}"
    );
    // The bug goes away (a token endpoint answers sensibly again): the next refresh,
    // backed off like any failure, reads the value.
    *t.panic.lock() = false;
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    r.observe(&"ns", &"orders").await;
    // (read 100 ms on: a refresh before the next call, expected a 5.1 s period later)
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.observe(&"ns", &"orders").await.value, Some(4.0));
    assert_eq!(t.reads.load(Ordering::SeqCst), 2);
    assert_eq!(r.group_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_task_that_panics_is_started_again_and_one_that_ends_is_not() {
    let starts = Arc::new(AtomicU32::new(0));
    let counted = starts.clone();
    let metrics = Metrics::new();
    let health = Arc::new(TaskHealth::new(Some((&metrics, "table"))));
    supervise("ns", Duration::from_secs(5), health, move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                panic!("a bug in the task");
            }
        }
    })
    .await;
    assert_eq!(starts.load(Ordering::SeqCst), 3);
    let text = metrics.encode();
    assert!(
        text.contains(r#"blend_scaler_refresh_task_restarts_total{upstream="table"} 2"#),
        "{text}"
    );
    // The task ended (its group dropped): nothing is down any more.
    assert_eq!(metrics.refresh_groups_down(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_read_is_counted_and_holds_the_group_down_until_a_read_completes() {
    let t = table(&[("orders", 4.0)]);
    *t.panic.lock() = true;
    let r = Refresher::from_arc(t.clone(), config());
    assert_eq!(r.observe(&"ns", &"orders").await.value, None);
    let metrics = &t.metrics;
    assert_eq!(metrics.refresh_groups_down(), 1);
    let text = metrics.encode();
    for needle in [
        r#"blend_scaler_refresh_read_panics_total{upstream="table"} 1"#,
        r#"blend_scaler_refresh_groups_down{upstream="table"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Crash-looping: every refresh panics, the group stays down.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    r.observe(&"ns", &"orders").await;
    // (read 100 ms on: a refresh before the next call, expected a 5.1 s period later)
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.reads.load(Ordering::SeqCst), 2);
    assert_eq!(metrics.refresh_groups_down(), 1);
    // Fixed: the next read completes and the group is up again.
    *t.panic.lock() = false;
    // (the next refresh is backed off like any failure's, at most `max_backoff`)
    let mut waited = 0;
    while r.observe(&"ns", &"orders").await.value.is_none() {
        assert_eq!(metrics.refresh_groups_down(), 1);
        assert!(waited < 130, "no read after the fix");
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
    }
    assert_eq!(metrics.refresh_groups_down(), 0);
    assert!(
        metrics
            .encode()
            .contains(r#"blend_scaler_refresh_groups_down{upstream="table"} 0"#)
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_with_no_keda_calls_is_not_refreshed() {
    let t = table(&[("orders", 1.0)]);
    let r = Refresher::from_arc(t.clone(), config());
    // Looked at only (a stream that ended, `/decisions`): one first read, then none, for as
    // long as the looks keep it cached.
    assert_eq!(r.peek(&"ns", &"orders").await.value, Some(1.0));
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        r.peek(&"ns", &"orders").await;
    }
    assert_eq!(t.reads.load(Ordering::SeqCst), 1);
    assert_eq!(r.group_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_keda_call_after_a_lapse_waits_for_a_read_rather_than_take_an_old_value() {
    let t = table(&[("orders", 1.0)]);
    let r = Refresher::from_arc(t.clone(), config());
    // KEDA asks every 15 s for a minute: the value it gets is never older than that
    // period plus a refresh.
    for _ in 0..4 {
        let obs = r.observe(&"ns", &"orders").await;
        assert!(obs.age.unwrap() <= Duration::from_secs(20), "{obs:?}");
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    // Then it stops (a paused ScaledObject), and nothing is read...
    let reads = t.reads.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert_eq!(t.reads.load(Ordering::SeqCst), reads);
    // ...until it asks again: that call waits for a read, as a first one does.
    t.values.lock().insert("orders", 7.0);
    let asked = Instant::now();
    let obs = r.observe(&"ns", &"orders").await;
    assert_eq!(obs.value, Some(7.0));
    assert!(obs.age.unwrap() < Duration::from_secs(1), "{obs:?}");
    assert!(asked.elapsed() <= Duration::from_secs(2));
    assert_eq!(t.reads.load(Ordering::SeqCst), reads + 1);
}

/// The table read as a list: one read costs the same whatever items it covers.
struct Listing(Arc<Table>);

impl Upstream for Listing {
    type Group = &'static str;
    type Item = &'static str;
    const LISTS: bool = true;

    async fn read(&self, group: &&'static str, items: &[&'static str]) -> GroupRead<&'static str> {
        self.0.read(group, items).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_listed_group_whose_objects_came_one_by_one_is_read_once_per_keda_poll() {
    const QUEUES: [&str; 10] = ["q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q9"];
    let t = table(&QUEUES.map(|q| (q, 1.0)));
    let r = Refresher::new(Listing(t.clone()), config());
    // KEDA polls each object every 30 s, the HPA answered from KEDA's own cache
    // (useCachedMetrics); the objects' phases are 3 s apart, so each came to the cache alone.
    let start = Instant::now();
    let mut calls: Vec<(Duration, &str)> = (0..20u32)
        .flat_map(|k| {
            QUEUES
                .iter()
                .enumerate()
                .map(move |(i, q)| (Duration::from_secs(30 * u64::from(k) + 3 * i as u64), *q))
        })
        .collect();
    calls.sort();
    let mut after_first_minute = None;
    for (at, q) in calls {
        if at >= Duration::from_secs(60) && after_first_minute.is_none() {
            after_first_minute = Some(t.reads.load(Ordering::SeqCst));
        }
        tokio::time::sleep_until(start + at).await;
        assert_eq!(r.observe(&"ns", &q).await.value, Some(1.0));
    }
    let later = t.reads.load(Ordering::SeqCst) - after_first_minute.unwrap();
    // Nine minutes of polls: one list per poll, and one more for the cycle in progress.
    assert!(
        later <= 18 + 1,
        "{later} lists in nine minutes of 30 s polls"
    );
}
