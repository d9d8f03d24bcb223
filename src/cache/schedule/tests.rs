use super::*;

fn config() -> RefreshConfig {
    RefreshConfig {
        interval: Duration::from_secs(5),
        ..RefreshConfig::default()
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

const OK: Outcome = Outcome {
    retry_after: None,
    any_ok: true,
};
const FAILED: Outcome = Outcome {
    retry_after: None,
    any_ok: false,
};

/// One item as the task keeps it, for driving a schedule by hand.
#[derive(Clone, Default)]
struct Item {
    demand: Demand,
    read: Option<Instant>,
    waiting: bool,
}

impl Item {
    fn new() -> Self {
        Self {
            waiting: true,
            ..Self::default()
        }
    }

    /// A KEDA call at `at`: marks the item waiting if its value lapsed, like the cache.
    fn call(&mut self, at: Instant) {
        if self
            .read
            .is_some_and(|r| self.demand.lapsed(r, at, secs(5.0)))
        {
            self.waiting = true;
        }
        self.demand.called(at, secs(5.0));
    }
}

fn views(items: &[Item]) -> Vec<ItemView<'_>> {
    items
        .iter()
        .map(|i| ItemView {
            demand: &i.demand,
            read: i.read,
            waiting: i.waiting,
        })
        .collect()
}

/// Decides at `now`; a read finishes at once and is recorded. Which items it read.
fn step(s: &mut Schedule, now: Instant, woken: bool, items: &mut [Item]) -> Option<Vec<usize>> {
    match s.next_action(now, woken, &views(items), false) {
        Action::Read { which, scheduled } => {
            for &i in &which {
                items[i].read = Some(now);
                items[i].waiting = false;
            }
            s.read_done(now, scheduled, OK);
            Some(which)
        }
        Action::Wait | Action::Drop => None,
    }
}

#[test]
fn an_items_period_is_the_longest_recent_gap_between_keda_calls_and_at_least_the_interval() {
    let t0 = Instant::now();
    let mut d = Demand::default();
    assert_eq!(d.period(secs(5.0)), secs(5.0), "no gap known yet");
    // A poll (IsActive then GetMetrics) at 0, HPA reads at 10 and 25, the next poll at 30.
    for at in [0.0, 0.002, 10.0, 25.0, 30.0, 30.001] {
        d.called(t0 + secs(at), secs(5.0));
    }
    assert_eq!(d.period(secs(5.0)), secs(15.0));
    // Many objects sharing the item: calls every 10 ms count once per interval.
    let mut shared = Demand::default();
    for i in 0..3_000 {
        shared.called(t0 + secs(i as f64 * 0.01), secs(5.0));
    }
    assert_eq!(shared.period(secs(5.0)), secs(5.0));
}

#[test]
fn an_item_is_due_a_period_after_its_read_only_while_keda_still_asks() {
    let t0 = Instant::now();
    let mut d = Demand::default();
    assert_eq!(d.due(t0, secs(5.0)), None, "KEDA never asked");
    d.called(t0, secs(5.0));
    d.called(t0 + secs(15.0), secs(5.0));
    assert_eq!(d.due(t0 + secs(14.0), secs(5.0)), Some(t0 + secs(29.0)));
    // No call since the read: nothing due, whatever the time.
    assert_eq!(d.due(t0 + secs(15.0), secs(5.0)), None);
}

#[test]
fn an_item_read_on_its_own_is_due_a_refresh_before_the_next_call_expected_and_no_later_than_a_period_and_a_refresh()
 {
    let t0 = Instant::now();
    let mut d = Demand::default();
    d.called(t0, secs(5.0));
    d.called(t0 + secs(30.0), secs(5.0));
    // The next call is expected at 60 s: read at 55 s.
    assert_eq!(
        d.due_ahead(t0 + secs(29.0), secs(5.0)),
        Some(t0 + secs(55.0))
    );
    // A read long before: not left older than a period and a refresh.
    assert_eq!(
        d.due_ahead(t0 + secs(1.0), secs(5.0)),
        Some(t0 + secs(36.0))
    );
    // No call since the read: nothing due.
    assert_eq!(d.due_ahead(t0 + secs(31.0), secs(5.0)), None);
}

#[test]
fn polled_alone_an_item_soon_answers_each_poll_from_a_value_at_most_a_refresh_old() {
    // At zero replicas only KEDA's poll asks (every 30 s): the built-in trigger reads at
    // each poll, so blend-scaler's answer must not be a whole poll behind it.
    let t0 = Instant::now();
    let mut s = Schedule::new(&config(), true, t0);
    let mut items = vec![Item::new()];
    let mut ages = Vec::new();
    let mut reads = 0;
    let mut now = t0;
    for k in 0..20 {
        let call = t0 + secs(3.0 + 30.0 * k as f64);
        while s.sleep_until() < call {
            now = s.sleep_until().max(now);
            if step(&mut s, now, false, &mut items).is_some() {
                reads += 1;
            }
        }
        let before = items[0].read;
        items[0].call(call);
        // A call that finds its value lapsed waits for a read made at once.
        let waited = items[0].waiting;
        if step(&mut s, call, waited, &mut items).is_some() {
            reads += 1;
        }
        if let (Some(r), false) = (before, waited) {
            ages.push((call - r).as_secs_f64());
        } else if before.is_some() {
            ages.push(0.0);
        }
        now = call;
    }
    assert!(reads <= 20, "{reads} reads for 20 polls");
    // The second poll is answered from the first read (KEDA's default polling interval
    // stands for the period not known yet); from then on each read moves a refresh later
    // until it comes a refresh before the poll.
    assert_eq!(ages[..6], [30.0, 25.0, 20.0, 15.0, 10.0, 5.0], "{ages:?}");
    assert!(ages[6..].iter().all(|&a| a == 5.0), "{ages:?}");
}

#[test]
fn a_new_items_second_call_a_keda_poll_after_its_first_is_answered_from_the_cache() {
    let t0 = Instant::now();
    let mut d = Demand::default();
    d.called(t0, secs(5.0));
    // Read just after the first call; no gap known yet. The second call a 30 s poll (or a
    // 15 s HPA read) later is within KEDA's default polling interval plus a refresh...
    let read = t0 + secs(0.01);
    assert!(!d.lapsed(read, t0 + secs(15.0), secs(5.0)));
    assert!(!d.lapsed(read, t0 + secs(30.0), secs(5.0)));
    // ...and a call after KEDA stopped asking for longer than that waits for a read.
    assert!(d.lapsed(read, t0 + secs(35.1), secs(5.0)));
    // A refresh interval longer than KEDA's default poll is the floor still.
    assert!(!d.lapsed(read, t0 + secs(100.0), secs(60.0)));
}

#[test]
fn a_call_finding_its_value_older_than_the_period_and_a_refresh_is_lapsed() {
    let t0 = Instant::now();
    let mut d = Demand::default();
    d.called(t0, secs(5.0));
    d.called(t0 + secs(15.0), secs(5.0));
    assert!(!d.lapsed(t0 + secs(15.0), t0 + secs(35.0), secs(5.0)));
    assert!(d.lapsed(t0 + secs(15.0), t0 + secs(35.1), secs(5.0)));
}

#[test]
fn a_group_with_no_keda_calls_is_not_refreshed() {
    let t0 = Instant::now();
    for lists in [false, true] {
        let mut s = Schedule::new(&config(), lists, t0);
        // Only looked at (a stream that ended, `/decisions`): read once, as a new item.
        let mut items = vec![Item::new(), Item::new()];
        let at = s.wake_read_at(t0, COALESCE);
        assert_eq!(step(&mut s, at, true, &mut items), Some(vec![0, 1]));
        let mut now = at;
        for _ in 0..1_000 {
            now = s.sleep_until();
            assert_eq!(step(&mut s, now, false, &mut items), None, "{lists}");
        }
        assert!(now >= t0 + secs(600.0), "it kept looking: {:?}", now - t0);
    }
}

#[test]
fn reads_stop_when_keda_stops_asking_and_never_outnumber_its_calls() {
    let t0 = Instant::now();
    let mut s = Schedule::new(&config(), false, t0);
    let mut items = vec![Item::new()];
    items[0].call(t0);
    step(&mut s, t0, true, &mut items);
    let mut reads = Vec::new();
    let mut now = t0;
    while now < t0 + secs(300.0) {
        now = s.sleep_until();
        // KEDA asks every 15 s for the first minute, then stops.
        for k in 1..=4 {
            let call = t0 + secs(15.0 * k as f64);
            if items[0].demand.counted < Some(call) && call <= now {
                items[0].call(call);
            }
        }
        if step(&mut s, now, false, &mut items).is_some() {
            reads.push((now - t0).as_secs_f64());
        }
    }
    // Five calls, five reads: the first, then one for each later call. They move from just
    // after a call (at most a period and a refresh after the read before: 20 s) to a
    // refresh before the next call expected (40, 55), the last for a call that never came.
    assert_eq!(reads, [20.0, 40.0, 55.0, 70.0], "{reads:?}");
}

#[test]
fn items_read_one_by_one_are_read_when_each_is_due_and_listed_ones_all_together() {
    let t0 = Instant::now() + secs(100.0);
    for lists in [false, true] {
        let mut s = Schedule::new(&config(), lists, t0);
        let mut items = vec![Item::new(), Item::new()];
        // Item 0 is asked every 15 s, item 1 every 30 s.
        items[0].call(t0 - secs(15.0));
        items[1].call(t0 - secs(30.0));
        for item in &mut items {
            item.call(t0);
        }
        step(&mut s, t0, true, &mut items);
        // Both asked since. Listed, they are read together when item 0's period is over, at
        // 15 s. On their own, item 0 (a steady pace) is read a refresh before its next call
        // (at 30 s), but no later than a period and a refresh after its read: at 20 s; item
        // 1, asked at an uneven pace (30 s, then 10 s), a period after its read: at 30 s.
        items[1].call(t0 + secs(10.0));
        items[0].call(t0 + secs(15.0));
        let got = step(&mut s, t0 + secs(15.0), false, &mut items);
        if lists {
            assert_eq!(got, Some(vec![0, 1]));
        } else {
            assert_eq!(got, None);
            assert_eq!(s.sleep_until(), t0 + secs(20.0));
            assert_eq!(
                step(&mut s, t0 + secs(20.0), false, &mut items),
                Some(vec![0])
            );
            assert_eq!(step(&mut s, t0 + secs(29.0), false, &mut items), None);
            assert_eq!(
                step(&mut s, t0 + secs(30.0), false, &mut items),
                Some(vec![1])
            );
        }
    }
}

#[test]
fn a_wake_reads_only_waiting_items_at_most_once_per_fast_interval() {
    let t0 = Instant::now();
    let mut s = Schedule::new(&config(), false, t0);
    let mut items = vec![Item::new()];
    items[0].call(t0);
    let at = s.wake_read_at(t0, COALESCE);
    assert_eq!(at, t0 + COALESCE);
    assert_eq!(step(&mut s, at, true, &mut items), Some(vec![0]));
    // A new item 200 ms after the first read waits for the fast interval's spacing.
    items.push(Item::new());
    items[1].call(t0 + secs(0.2));
    let at = s.wake_read_at(t0 + secs(0.2), COALESCE);
    assert_eq!(at, t0 + COALESCE + secs(1.0));
    assert_eq!(
        s.next_action(at, true, &views(&items), false),
        Action::Read {
            which: vec![1],
            scheduled: false
        }
    );
    // A wake with nothing waiting and nothing due reads nothing.
    items[1].waiting = false;
    assert_eq!(s.next_action(at, true, &views(&items), false), Action::Wait);
}

#[test]
fn a_stream_reads_everything_at_the_fast_interval_until_it_ends() {
    let t0 = Instant::now();
    let mut s = Schedule::new(&config(), false, t0);
    // Never asked by KEDA: only the stream keeps it read.
    let mut items = vec![Item::new()];
    step(&mut s, t0, true, &mut items);
    // A stream opening reads the whole group at once, then every fast interval.
    assert!(matches!(
        s.next_action(t0 + secs(0.1), true, &views(&items), true),
        Action::Read {
            scheduled: true,
            ..
        }
    ));
    s.read_done(t0 + secs(0.1), true, OK);
    assert_eq!(
        s.next_action(t0 + secs(0.3), true, &views(&items), true),
        Action::Wait
    );
    assert_eq!(s.sleep_until(), t0 + secs(1.1));
    assert_eq!(
        s.next_action(t0 + secs(1.1), false, &views(&items), true),
        Action::Read {
            which: vec![0],
            scheduled: true
        }
    );
    s.read_done(t0 + secs(1.1), true, OK);
    items[0].read = Some(t0 + secs(1.1));
    assert_eq!(
        s.next_action(t0 + secs(1.5), false, &views(&items), true),
        Action::Wait
    );
    assert_eq!(s.sleep_until(), t0 + secs(2.1));
    // Once it ends, nothing: KEDA never asked.
    assert_eq!(
        s.next_action(t0 + secs(2.1), false, &views(&items), false),
        Action::Wait
    );
}

#[test]
fn a_group_nobody_watches_is_dropped_unless_a_stream_holds_it() {
    let t0 = Instant::now();
    let mut s = Schedule::new(&config(), false, t0);
    assert_eq!(
        s.next_action(t0 + secs(5.0), false, &[], true),
        Action::Wait
    );
    assert_eq!(s.sleep_until(), t0 + secs(6.0));
    assert_eq!(
        s.next_action(t0 + secs(6.0), false, &[], false),
        Action::Drop
    );
}

#[test]
fn retry_after_holds_back_every_read_including_wakes() {
    let t0 = Instant::now();
    let mut s = Schedule::new(&config(), false, t0);
    let throttled = Outcome {
        retry_after: Some(secs(30.0)),
        any_ok: false,
    };
    s.read_done(t0, true, throttled);
    assert_eq!(s.sleep_until(), t0 + secs(30.0));
    assert_eq!(s.wake_read_at(t0 + secs(1.0), COALESCE), t0 + secs(30.0));
    let items = [Item::new()];
    assert_eq!(
        s.next_action(t0 + secs(29.0), true, &views(&items), false),
        Action::Wait
    );
}

#[test]
fn scheduled_reads_failing_back_off_but_a_new_item_failing_alone_does_not() {
    let t0 = Instant::now();
    let mut s = Schedule::new(&config(), false, t0);
    s.read_done(t0 + secs(2.0), false, FAILED);
    assert_eq!(s.sleep_until(), t0 + secs(2.0), "a typo holds nothing back");
    s.read_done(t0 + secs(5.0), true, FAILED);
    // First failure: not before one interval (jitter adds nothing yet).
    assert_eq!(s.sleep_until(), t0 + secs(10.0));
    s.read_done(t0 + secs(10.0), true, FAILED);
    assert!(s.sleep_until() >= t0 + secs(15.0) && s.sleep_until() <= t0 + secs(20.0));
    let t = s.sleep_until();
    s.read_done(t, true, OK);
    assert_eq!(s.sleep_until(), t, "a good read resets the backoff");
}

#[test]
fn backoff_grows_and_stays_capped() {
    let mut s = Schedule::new(&config(), false, Instant::now());
    for failures in 1..40 {
        s.failures = failures;
        for jitter in [0.0, 0.5, 1.0] {
            let b = s.backoff(jitter);
            assert!(b >= s.interval && b <= s.max_backoff, "{failures}: {b:?}");
        }
    }
    s.failures = 3;
    assert_eq!(s.backoff(1.0), secs(20.0));
}

#[test]
fn huge_intervals_retry_after_and_backoff_mean_much_later_not_a_panic() {
    let t0 = Instant::now();
    let huge = RefreshConfig {
        interval: Duration::MAX,
        fast_interval: Duration::MAX,
        max_backoff: Duration::MAX,
        ..RefreshConfig::default()
    };
    let mut s = Schedule::new(&huge, false, t0);
    assert!(s.sleep_until() > t0 + secs(1e9));
    let at = s.wake_read_at(t0, Duration::MAX);
    assert!(at > t0);
    let mut items = vec![Item::new()];
    items[0].demand.called(t0, Duration::MAX);
    items[0].demand.called(t0 + secs(1e9), Duration::ZERO);
    assert!(items[0].demand.due(t0, Duration::MAX).is_some());
    assert!(!items[0].demand.lapsed(t0, t0 + secs(1e9), Duration::MAX));
    assert!(matches!(
        s.next_action(t0, true, &views(&items), false),
        Action::Read { .. }
    ));
    for _ in 0..40 {
        s.read_done(t0, true, FAILED);
    }
    assert!(s.sleep_until() > t0 + secs(1e9));
    s.read_done(
        t0,
        true,
        Outcome {
            retry_after: Some(Duration::MAX),
            any_ok: false,
        },
    );
    assert!(s.sleep_until() > t0 + secs(1e9));
    assert_eq!(s.backoff(1.0), Duration::MAX);
    assert!(after(t0, Duration::MAX) > t0);
    items[0].read = Some(t0);
    assert_eq!(
        s.next_action(t0, false, &views(&items), false),
        Action::Wait
    );
}

/// KEDA's pattern for `n` objects each on its own item (phases spread, seeded), for
/// `minutes`: a poll every 30 s and an HPA read every 15 s. Returns each read (seconds
/// in, items read) and the oldest value any call was answered with, against its bound.
fn keda(n: usize, lists: bool, minutes: f64) -> (Vec<(f64, usize)>, f64) {
    let t0 = Instant::now();
    let mut s = Schedule::new(&config(), lists, t0);
    let mut items: Vec<Item> = (0..n).map(|_| Item::new()).collect();
    let mut seed = 0x5eed_u64;
    let mut uniform = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 1_000_000) as f64 / 1_000_000.0
    };
    let phases: Vec<(f64, f64)> = (0..n)
        .map(|_| (uniform() * 30.0, uniform() * 15.0))
        .collect();
    let mut calls: Vec<(f64, usize)> = Vec::new();
    for (i, &(poll, hpa)) in phases.iter().enumerate() {
        let mut t = poll;
        while t < minutes * 60.0 {
            calls.push((t, i));
            t += 30.0;
        }
        let mut t = hpa;
        while t < minutes * 60.0 {
            calls.push((t, i));
            t += 15.0;
        }
    }
    calls.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut reads = Vec::new();
    let mut worst = f64::MIN;
    let mut next_call = 0;
    let mut woken = false;
    let end = t0 + secs(minutes * 60.0);
    loop {
        // The next event: a call, or the task's own look.
        let look = s.sleep_until();
        let call = calls.get(next_call).map(|&(t, _)| t0 + secs(t));
        let now = match call {
            Some(c) if c <= look || woken && c <= s.wake_read_at(c, COALESCE) => {
                let i = calls[next_call].1;
                next_call += 1;
                let item = &mut items[i];
                item.call(c);
                if item.waiting {
                    woken = true;
                } else if let Some(r) = item.read {
                    // Answered from the cache: how far past its bound the value is.
                    let age = (c - r).as_secs_f64();
                    let bound = item.demand.period(secs(5.0)).as_secs_f64() + 5.0;
                    worst = worst.max(age - bound);
                }
                continue;
            }
            _ if woken => s.wake_read_at(look.min(end), COALESCE).max(look.min(end)),
            _ => look,
        };
        if now >= end {
            return (reads, worst);
        }
        if let Some(which) = step(&mut s, now, woken, &mut items) {
            reads.push(((now - t0).as_secs_f64(), which.len()));
        }
        woken = false;
    }
}

#[test]
fn a_listed_group_of_a_thousand_objects_is_read_once_per_keda_period_after_the_first_minute() {
    let (reads, worst) = keda(1_000, true, 10.0);
    let steady: Vec<_> = reads.iter().filter(|(t, _)| *t >= 60.0).collect();
    // KEDA asks each object every 15 s at most apart (the HPA's reads): one read of
    // the whole list per 15 s, ceil(1000 / 100) = 10 pages, where the built-in trigger
    // makes 1,500 reads.
    assert!(
        steady.len() <= 9 * 4 + 1,
        "{} reads: {steady:?}",
        steady.len()
    );
    assert!(steady.iter().all(|(_, n)| *n == 1_000), "{steady:?}");
    assert!(worst <= 0.0, "a value {worst} s past its bound");
}

#[test]
fn items_read_one_by_one_cost_fewer_reads_than_keda_calls_and_stay_within_their_age_bound() {
    for n in [1, 10, 100] {
        let (reads, worst) = keda(n, false, 10.0);
        let total: usize = reads.iter().map(|(_, k)| k).sum();
        // The built-in trigger: a read per poll and per HPA read, 3 per 30 s per object.
        let builtin = n * 60;
        assert!(
            total <= builtin * 3 / 4,
            "{n}: {total} reads against {builtin}"
        );
        assert!(worst <= 0.0, "{n}: a value {worst} s past its bound");
    }
}
