//! The simulated cache against the server's: the same KEDA calls, replayed on a paused
//! clock against a real [`Refresher`], give the same reads.

use std::collections::HashMap;
use std::path::Path;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;
use crate::cache::{GroupRead, Refresher, Upstream};
use crate::simulate::model::{self, Blend, Phase};
use crate::simulate::scenario::{Overrides, Scenario};
use crate::simulate::trace::Trace;

/// One item; records the instant of every read.
#[derive(Default)]
struct Recorder {
    reads: Mutex<Vec<Instant>>,
}

impl Upstream for Recorder {
    type Group = ();
    type Item = ();

    async fn read(&self, _group: &(), items: &[()]) -> GroupRead<()> {
        self.reads.lock().push(Instant::now());
        GroupRead {
            values: items.iter().map(|&i| (i, Ok(1.0))).collect(),
            retry_after: None,
            seen_in_passing: HashMap::new(),
            counts: HashMap::new(),
        }
    }
}

/// `hours` of a shipped day from `from_hour`, its trigger as `trigger`, `pollingInterval` 30
/// and the HPA at 15 s: the simulated queue's log.
fn simulated(name: &str, trigger: &str, from_hour: usize, hours: usize) -> Log {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
    let day =
        Trace::parse(&std::fs::read_to_string(dir.join(format!("{name}.csv"))).unwrap()).unwrap();
    let span = from_hour * 3600..(from_hour + hours) * 3600;
    let trace = Trace {
        messages: day.messages[span.clone()].to_vec(),
        requests: day.requests[span].to_vec(),
        ..day
    };
    let yaml = std::fs::read_to_string(dir.join(format!("{name}.yaml")))
        .unwrap()
        .replace("type: external-push\n", "type: external\n")
        .replace("type: external\n", &format!("type: {trigger}\n"));
    let overrides = Overrides {
        polling_interval: Some(30),
        ..Overrides::default()
    };
    let s = Scenario::from_yaml(&yaml, &overrides).unwrap();
    assert_eq!(s.settings.hpa.sync_period, 15);
    let mut blend = Blend::new(&s.plan, &s.settings.blend);
    let phase = Phase::draw(1, 1)[0];
    model::run(&trace, &s.settings, phase, &mut blend);
    blend.servicebus_log().clone()
}

/// The server's cache, on a paused clock, called at `calls` (and streamed from the start when
/// `stream`): when it read the item, until `end`.
async fn served(calls: &[Duration], stream: bool, end: Duration) -> Vec<Duration> {
    let refresher = Refresher::new(Recorder::default(), RefreshConfig::default());
    let start = Instant::now();
    let _guard = stream.then(|| refresher.watch(&()).unwrap());
    if stream {
        // The stream's first look, as the simulated stream's.
        refresher.peek(&(), &()).await;
    }
    for &at in calls {
        tokio::time::sleep_until(start + at).await;
        refresher.observe(&(), &()).await;
    }
    tokio::time::sleep_until(start + end).await;
    let reads = refresher.upstream().reads.lock();
    reads.iter().map(|&r| r - start).collect()
}

/// Both read logs, the same reads to the millisecond (the paused clock's timer resolution).
fn assert_same_reads(simulated: &[Duration], served: &[Duration]) {
    assert_eq!(simulated.len(), served.len(), "{simulated:?}\n{served:?}");
    for (s, r) in simulated.iter().zip(served) {
        assert!(s.abs_diff(*r) <= Duration::from_millis(1), "{s:?} {r:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_hour_of_polls_and_hpa_syncs_reads_the_queue_when_the_server_would() {
    // The diurnal day's afternoon with the batch import: the HPA syncs throughout.
    let log = simulated("diurnal", "external", 12, 1);
    let end = Duration::from_secs(3600);
    assert_same_reads(&log.reads, &served(&log.calls, false, end).await);
    // Once per 15 s (the HPA's sync, the longest gap between KEDA's calls) once KEDA's first
    // calls have shown the gap, where a read every refresh interval made 720.
    assert!(
        (239..=242).contains(&log.reads.len()),
        "{}",
        log.reads.len()
    );
    let settled = log.reads.iter().filter(|&&r| r >= Duration::from_secs(60));
    let settled: Vec<_> = settled.collect();
    assert!(
        settled
            .windows(2)
            .all(|w| *w[1] - *w[0] == Duration::from_secs(15)),
        "{:?}",
        log.reads
    );
}

#[tokio::test(start_paused = true)]
async fn a_deployment_at_zero_and_waking_reads_the_queue_when_the_server_would() {
    // The quiet day: at zero only KEDA's polls ask, every 30 s; a burst wakes the deployment
    // and the HPA's reads join them; a call after the gap lengthens finds the value lapsed.
    let log = simulated("quiet", "external", 0, 6);
    let end = Duration::from_secs(6 * 3600);
    assert_same_reads(&log.reads, &served(&log.calls, false, end).await);
    let gaps: std::collections::BTreeSet<Duration> =
        log.reads.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.contains(&Duration::from_secs(30)), "{gaps:?}");
    assert!(log.reads.len() < 6 * 3600 / 15, "{}", log.reads.len());
}

#[tokio::test(start_paused = true)]
async fn an_external_push_trigger_still_reads_the_queue_every_second() {
    let log = simulated("spiky", "external-push", 10, 1);
    let end = Duration::from_secs(3600);
    assert_same_reads(&log.reads, &served(&log.calls, true, end).await);
    assert_eq!(log.reads.len(), 3600);
    assert!(
        log.reads
            .windows(2)
            .all(|w| w[1] - w[0] == Duration::from_secs(1))
    );
}
