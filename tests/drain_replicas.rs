//! A `drainTime` answer (docs/drain-time.md) is a function of the queue's readings and the
//! time, so two scaler replicas that read the same queue answer alike whichever KEDA calls,
//! and how often KEDA called before does not move it.
//!
//! The engines' own caches each read one scripted queue on a paused clock, so both refresh at
//! the same virtual instants unless a test starts one later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use blend_scaler::cache::{GroupRead, Keyed, RefreshConfig, Refresher, Upstream};
use blend_scaler::engine::{Engine, EngineConfig, ObjectRef, SignalCaches};
use blend_scaler::metadata::ServiceBusPlan;
use blend_scaler::metrics::Metrics;
use tokio::time::Instant;

/// One queue whose active count is `script(seconds since start)`.
struct Scripted {
    start: Instant,
    script: fn(f64) -> f64,
}

impl Upstream for Scripted {
    type Group = ();
    type Item = ();

    async fn read(&self, _: &(), items: &[()]) -> GroupRead<()> {
        // Whole seconds: replicas whose reads are a moment apart read the same value.
        let value = (self.script)(self.start.elapsed().as_secs() as f64);
        GroupRead {
            values: items.iter().map(|i| (*i, Ok(value))).collect(),
            retry_after: None,
            seen_in_passing: HashMap::new(),
            counts: HashMap::new(),
        }
    }
}

/// Quiet, a ramp growing 20 a second, a batch of 400 every 15 s drained in 8 s, then quiet.
/// (The drop from the ramp's 3600 to a batch is a cliff no queue makes; `smooth` has none.)
fn day(s: f64) -> f64 {
    match s {
        s if s < 120.0 => 0.0,
        s if s < 300.0 => 20.0 * (s - 120.0),
        s if s < 600.0 => (400.0 - 50.0 * (s % 15.0)).max(0.0),
        _ => 0.0,
    }
}

/// A scaler replica: its own engine and cache, reading the shared queue.
fn replica(queue: &Arc<Scripted>) -> Engine {
    let refresher = Refresher::from_arc(queue.clone(), RefreshConfig::default());
    let key: fn(&ServiceBusPlan) -> ((), ()) = |_| ((), ());
    let caches = SignalCaches {
        servicebus: Some(Arc::new(Keyed::new(refresher, key))),
        prometheus: None,
    };
    Engine::new(EngineConfig::default(), caches, Metrics::new()).unwrap()
}

fn metadata() -> HashMap<String, String> {
    [
        ("queueName", "labels"),
        (
            "connectionFromEnv",
            "Endpoint=sb://shop-bus.servicebus.windows.net/;SharedAccessKeyName=scaler;\
             SharedAccessKey=not-a-real-key",
        ),
        ("policy", "drainTime"),
        ("targetDrainSeconds", "60"),
        ("messagesPerSecondPerReplica", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn object(md: &HashMap<String, String>) -> ObjectRef<'_> {
    ObjectRef {
        namespace: "warehouse",
        name: "label-printer",
        metadata: md,
    }
}

async fn answer(engine: &Engine, md: &HashMap<String, String>) -> u32 {
    engine.replicas(object(md)).await.unwrap().1
}

/// Parses the plan on every engine first: a parse runs on a blocking thread, and the paused
/// clock would jump to a started cache's next read meanwhile.
async fn track(engines: &[&Engine], md: &HashMap<String, String>) {
    for e in engines {
        e.track(object(md)).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn two_replicas_on_one_queue_give_the_same_answers_however_keda_alternates() {
    let queue = Arc::new(Scripted {
        start: Instant::now(),
        script: day,
    });
    let md = metadata();
    let (a, b, seldom) = (replica(&queue), replica(&queue), replica(&queue));
    track(&[&a, &b, &seldom], &md).await;
    // Their caches start together, as two pods' would within a read of each other.
    tokio::join!(answer(&a, &md), answer(&b, &md), answer(&seldom, &md));
    let mut answers = Vec::new();
    for step in 0..360u32 {
        // KEDA's calls go to one replica or the other, `b` more often than `a`, and
        // `seldom` only every 5 s: calls closer than the refresh interval are one ask, so
        // their number does not move the reads. (Reads follow demand, README `--refresh-interval`: a replica
        // asked at a longer period reads at that period, and answers from its own readings;
        // docs/drain-time.md says what replicas reading at other instants may differ by.)
        let (first, second) = if step % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let x = answer(first, &md).await;
        if step % 3 == 0 {
            answer(&b, &md).await;
        }
        let y = answer(second, &md).await;
        assert_eq!(x, y, "at {} s", f64::from(step) * 2.5);
        if step % 2 == 0 {
            assert_eq!(
                answer(&seldom, &md).await,
                x,
                "at {} s",
                f64::from(step) * 2.5
            );
        }
        answers.push(x);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    // The script moved the answers: quiet is 0, the ramp climbs, the batches ask for pods, and
    // the quiet end comes back to 0 (nothing is held over an empty queue).
    let at = |s: usize| answers[s * 2 / 5];
    assert_eq!(at(60), 0);
    assert!(at(290) >= 15, "{answers:?}");
    let batches = &answers[(400 * 2 / 5)..(590 * 2 / 5)];
    // 400 every 15 s is about 27 a second, 6 pods' work; it is there 8 s in 15, 400 / 60 / 5
    // = 2 at most for the drain. Read as the change between two reads (80 a second), it
    // would be 16 and more.
    assert!(
        batches.iter().all(|&n| n <= 3) && batches.contains(&2),
        "a batch every 15 s is not read as 80 a second: {batches:?}"
    );
    assert_eq!(at(899), 0, "{answers:?}");
}

/// A backlog that builds at 20 a second for three minutes, drains at 30 a second, and
/// stays empty.
fn smooth(s: f64) -> f64 {
    let peak = 20.0 * 180.0;
    match s {
        s if s < 60.0 => 0.0,
        s if s < 240.0 => 20.0 * (s - 60.0),
        s => (peak - 30.0 * (s - 240.0)).max(0.0),
    }
}

/// Replicas whose reads fall at other instants see other values: on a smooth queue that is
/// within a replica. (On a batch queue one may read a batch the other read drained, and their
/// answers differ by that batch's `B / (T r)`.)
#[tokio::test(start_paused = true)]
async fn a_replica_that_reads_at_other_instants_answers_within_one_replica_on_a_smooth_queue() {
    let queue = Arc::new(Scripted {
        start: Instant::now(),
        script: smooth,
    });
    let md = metadata();
    let (early, late) = (replica(&queue), replica(&queue));
    track(&[&early, &late], &md).await;
    answer(&early, &md).await;
    // The second replica's refreshes fall 2 s after the first's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    answer(&late, &md).await;
    let (mut apart, mut highest) = (Vec::new(), 0);
    for step in 0..360 {
        let (x, y) = (answer(&early, &md).await, answer(&late, &md).await);
        highest = highest.max(x);
        if x.abs_diff(y) > 1 {
            apart.push((step, x, y));
        }
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    assert!(
        apart.is_empty(),
        "(step, early, late) more than one apart: {apart:?}"
    );
    // 3600 waiting and growing 20 a second: (20 + 60) / 5 = 16.
    assert!(highest >= 15, "{highest}");
}
