//! When one group is read: a pure schedule, events in and the next action out.
//!
//! The refresh task ([`super::task::refresh_loop`]) only sleeps, reads and reports back here, so every
//! rule about timing (the interval, the fast interval while a stream is open, spacing wakes,
//! Retry-After, backoff) is decided by plain functions of the instants given to them and is
//! tested without a clock. All instant arithmetic saturates: a huge `--refresh-interval` or
//! Retry-After means "much later", never a panic.

use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;

use super::RefreshConfig;

/// The furthest ahead anything is scheduled: beyond it, "later" is as good as "never".
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + d`, or as far ahead as instants go when that overflows.
pub(crate) fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(FAR))
        .or_else(|| at.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(at)
}

/// What the group holds when the task decides what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Items someone asked about within the idle time.
    pub watched: usize,
    /// Of those, items never read yet.
    pub new: usize,
    /// Open `StreamIsActive` streams on the group.
    pub streaming: bool,
}

/// What the task does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Read every watched item (`full`) or only the never-read ones.
    Read { full: bool },
    /// Nothing to read now: wait again.
    Wait,
    /// Nobody asks any more: drop the group and end the task.
    Drop,
}

/// How a read went, as far as the schedule cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The upstream asked for a pause (429/503 `Retry-After`).
    pub retry_after: Option<Duration>,
    /// At least one item got a value.
    pub any_ok: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    interval: Duration,
    fast_interval: Duration,
    max_backoff: Duration,
    failures: u32,
    /// Never read before this (Retry-After, backoff).
    not_before: Instant,
    /// The next full read.
    next_due: Instant,
    /// When the latest full read finished.
    last_read: Option<Instant>,
    /// When the latest read of any kind started.
    last_started: Option<Instant>,
}

impl Schedule {
    /// A new group's schedule. Its first read comes from the wake of whoever created it.
    pub fn new(config: &RefreshConfig, now: Instant) -> Self {
        Self {
            interval: config.interval,
            fast_interval: config.fast_interval,
            max_backoff: config.max_backoff,
            failures: 0,
            not_before: now,
            next_due: after(now, config.interval),
            last_read: None,
            last_started: None,
        }
    }

    /// When to read if nothing wakes the group: when due, never before Retry-After or backoff.
    pub fn sleep_until(&self) -> Instant {
        self.next_due.max(self.not_before)
    }

    /// When a wake at `now` may read. KEDA asks about many ScaledObjects at once after a
    /// restart: a moment's pause (`coalesce`) lets one read cover the whole burst of
    /// never-seen items. KEDA's polls also come spread over its polling interval, each
    /// bringing one never-seen item: within the wake spacing (the shorter of the two
    /// intervals) of the last read's start they wait for the next wake read together, so a
    /// namespace is read once a second at most, not once per new ScaledObject (SPEC 5), and a
    /// first answer still comes within about a second plus the read (SPEC 4).
    pub fn wake_read_at(&self, now: Instant, coalesce: Duration) -> Instant {
        let spacing = self.interval.min(self.fast_interval);
        let spaced = self
            .last_started
            .map_or(self.not_before, |t| after(t, spacing));
        self.not_before.max(after(now, coalesce)).max(spaced)
    }

    /// What to do at `now`, after a wake (`woken`) or the sleep until due.
    ///
    /// A wake before the refresh is due reads only the never-seen items (after the group's
    /// first read, which is all of them): the others keep their schedule, and a Prometheus
    /// server is not asked every query again for each new one. A wake whose new items the
    /// last read already covered (they arrived while it was in flight) needs no read at all;
    /// a new stream only brings the next full read forward.
    pub fn next_action(&mut self, now: Instant, woken: bool, pending: Pending) -> Action {
        let full = !woken || now >= self.next_due || self.last_read.is_none();
        if !full && pending.new == 0 {
            if pending.streaming {
                let fast = self.last_read.map_or(now, |t| after(t, self.fast_interval));
                self.next_due = self.next_due.min(fast);
            }
            return Action::Wait;
        }
        if pending.watched == 0 && !pending.streaming {
            return Action::Drop;
        }
        if pending.watched == 0 {
            self.next_due = after(now, self.fast_interval);
            return Action::Wait;
        }
        self.last_started = Some(now);
        Action::Read { full }
    }

    /// A read that [`Schedule::next_action`] asked for finished at `finished`.
    pub fn read_done(&mut self, finished: Instant, full: bool, outcome: Outcome, streaming: bool) {
        if full {
            self.last_read = Some(finished);
            let interval = if streaming {
                self.interval.min(self.fast_interval)
            } else {
                self.interval
            };
            self.next_due = after(finished, interval);
        }
        if let Some(pause) = outcome.retry_after {
            self.not_before = after(finished, pause);
            self.failures = self.failures.saturating_add(1);
        } else if outcome.any_ok {
            self.failures = 0;
            self.not_before = finished;
        } else if full {
            // (A wake's read of new items failing alone, a misspelt queue say, says nothing
            // about the upstream: it does not hold the others' refresh back.)
            self.failures = self.failures.saturating_add(1);
            self.not_before = after(finished, self.backoff(rand::rng().random_range(0.0..=1.0)));
        }
    }

    /// Exponential backoff with full jitter (`jitter` in 0..=1) above the normal interval:
    /// 1, 2, 4… intervals, capped at the longest backoff (or the interval, if that is longer).
    pub fn backoff(&self, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.saturating_sub(1).min(16));
        let ceiling = self.interval.saturating_mul(factor).min(self.max_backoff);
        let extra = ceiling.saturating_sub(self.interval);
        self.interval
            .saturating_add(extra.mul_f64(jitter.clamp(0.0, 1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COALESCE: Duration = Duration::from_millis(5);

    fn config() -> RefreshConfig {
        RefreshConfig {
            interval: Duration::from_secs(5),
            ..RefreshConfig::default()
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn pending(watched: usize, new: usize) -> Pending {
        Pending {
            watched,
            new,
            streaming: false,
        }
    }

    const OK: Outcome = Outcome {
        retry_after: None,
        any_ok: true,
    };
    const FAILED: Outcome = Outcome {
        retry_after: None,
        any_ok: false,
    };

    #[test]
    fn the_first_wake_reads_everything_and_the_next_full_read_is_an_interval_later() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&config(), t0);
        let at = s.wake_read_at(t0, COALESCE);
        assert_eq!(at, t0 + COALESCE);
        assert_eq!(
            s.next_action(at, true, pending(3, 3)),
            Action::Read { full: true }
        );
        s.read_done(at + secs(0.1), true, OK, false);
        assert_eq!(s.sleep_until(), at + secs(5.1));
        let due = s.sleep_until();
        assert_eq!(
            s.next_action(due, false, pending(3, 0)),
            Action::Read { full: true }
        );
    }

    #[test]
    fn a_wake_between_refreshes_reads_only_new_items_at_most_once_per_fast_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&config(), t0);
        s.next_action(t0, true, pending(1, 1));
        s.read_done(t0, true, OK, false);
        // A new item 200 ms after the first read waits for the fast interval's spacing.
        let at = s.wake_read_at(t0 + secs(0.2), COALESCE);
        assert_eq!(at, t0 + secs(1.0));
        assert_eq!(
            s.next_action(at, true, pending(2, 1)),
            Action::Read { full: false }
        );
        s.read_done(at, false, OK, false);
        // The partial read leaves the full refresh where it was.
        assert_eq!(s.sleep_until(), t0 + secs(5.0));
        // A wake whose items were all read in the meantime reads nothing.
        assert_eq!(
            s.next_action(t0 + secs(2.0), true, pending(2, 0)),
            Action::Wait
        );
    }

    #[test]
    fn a_stream_brings_the_next_full_read_to_the_fast_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&config(), t0);
        s.next_action(t0, true, pending(1, 1));
        s.read_done(t0, true, OK, false);
        let streaming = Pending {
            streaming: true,
            ..pending(1, 0)
        };
        assert_eq!(s.next_action(t0 + secs(0.3), true, streaming), Action::Wait);
        assert_eq!(s.sleep_until(), t0 + secs(1.0));
        s.next_action(t0 + secs(1.0), false, streaming);
        s.read_done(t0 + secs(1.1), true, OK, true);
        assert_eq!(s.sleep_until(), t0 + secs(2.1));
        // Once it ends, the normal interval again.
        s.next_action(t0 + secs(2.1), false, pending(1, 0));
        s.read_done(t0 + secs(2.1), true, OK, false);
        assert_eq!(s.sleep_until(), t0 + secs(7.1));
    }

    #[test]
    fn a_group_nobody_watches_is_dropped_unless_a_stream_holds_it() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&config(), t0);
        s.next_action(t0, true, pending(1, 1));
        s.read_done(t0, true, OK, false);
        let only_stream = Pending {
            streaming: true,
            ..pending(0, 0)
        };
        assert_eq!(
            s.next_action(t0 + secs(5.0), false, only_stream),
            Action::Wait
        );
        assert_eq!(s.sleep_until(), t0 + secs(6.0));
        assert_eq!(
            s.next_action(t0 + secs(6.0), false, pending(0, 0)),
            Action::Drop
        );
    }

    #[test]
    fn retry_after_holds_back_every_read_including_wakes() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&config(), t0);
        s.next_action(t0, true, pending(1, 1));
        let throttled = Outcome {
            retry_after: Some(secs(30.0)),
            any_ok: false,
        };
        s.read_done(t0, true, throttled, false);
        assert_eq!(s.sleep_until(), t0 + secs(30.0));
        assert_eq!(s.wake_read_at(t0 + secs(1.0), COALESCE), t0 + secs(30.0));
    }

    #[test]
    fn full_reads_failing_back_off_but_a_new_item_failing_alone_does_not() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&config(), t0);
        s.next_action(t0, true, pending(1, 1));
        s.read_done(t0, true, OK, false);
        s.next_action(t0 + secs(2.0), true, pending(2, 1));
        s.read_done(t0 + secs(2.0), false, FAILED, false);
        assert_eq!(s.sleep_until(), t0 + secs(5.0), "a typo holds nothing back");
        s.next_action(t0 + secs(5.0), false, pending(2, 0));
        s.read_done(t0 + secs(5.0), true, FAILED, false);
        // First failure: not before one interval (jitter adds nothing yet).
        assert_eq!(s.sleep_until(), t0 + secs(10.0));
        s.next_action(t0 + secs(10.0), false, pending(2, 0));
        s.read_done(t0 + secs(10.0), true, FAILED, false);
        assert!(s.sleep_until() >= t0 + secs(15.0) && s.sleep_until() <= t0 + secs(20.0));
        s.next_action(s.sleep_until(), false, pending(2, 0));
        let t = s.sleep_until();
        s.read_done(t, true, OK, false);
        assert_eq!(
            s.sleep_until(),
            t + secs(5.0),
            "a good read resets the backoff"
        );
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        let mut s = Schedule::new(&config(), Instant::now());
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
        let mut s = Schedule::new(&huge, t0);
        assert!(s.sleep_until() > t0 + secs(1e9));
        let at = s.wake_read_at(t0, Duration::MAX);
        assert!(at > t0);
        assert_eq!(
            s.next_action(t0, true, pending(1, 1)),
            Action::Read { full: true }
        );
        s.read_done(t0, true, FAILED, true);
        for _ in 0..40 {
            s.read_done(t0, true, FAILED, false);
        }
        assert!(s.sleep_until() > t0 + secs(1e9));
        s.read_done(
            t0,
            true,
            Outcome {
                retry_after: Some(Duration::MAX),
                any_ok: false,
            },
            false,
        );
        assert!(s.sleep_until() > t0 + secs(1e9));
        assert_eq!(s.backoff(1.0), Duration::MAX);
        assert!(after(t0, Duration::MAX) > t0);
    }
}
