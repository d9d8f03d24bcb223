//! When one group is read: a pure schedule, events in and the next action out.
//!
//! The refresh task ([`super::task::refresh_loop`]) only sleeps, reads and reports back here, so every
//! rule about timing (reads following KEDA's calls, the fast interval while a stream is open,
//! spacing wakes, Retry-After, backoff) is decided by plain functions of the instants given to
//! them and is tested without a clock. All instant arithmetic saturates: a huge
//! `--refresh-interval` or Retry-After means "much later", never a panic.
//!
//! Reads follow demand (README, `--refresh-interval`): an item is re-read once per the interval KEDA asks for it at
//! ([`Demand::period`], never shorter than `--refresh-interval`), and only while KEDA still asks.
//! So however the objects share items, an item costs its upstream at most one read per KEDA
//! call, where the built-in trigger costs one read per call; a group that lists its items
//! ([`super::Upstream::LISTS`]) reads all of them together at the shortest of their periods.

use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;

use super::RefreshConfig;
use crate::signal::Moment;

/// How long a wake waits for more never-seen items before reading.
pub(crate) const COALESCE: Duration = Duration::from_millis(5);

/// The furthest ahead anything is scheduled: beyond it, "later" is as good as "never".
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How many of KEDA's latest gaps between calls an item's period is measured over: KEDA asks
/// each object on two clocks (its poll and the HPA's reads), so three gaps hold a whole cycle
/// of both at the defaults (30 s and 15 s), and one more covers a call that merged with another.
const RECENT_GAPS: usize = 4;

/// KEDA's default `pollingInterval`: the period an item's value may be as old as, plus a
/// refresh, before it lapses, until KEDA's calls have shown their own pace (one gap).
const KEDA_POLLING_INTERVAL: Duration = Duration::from_secs(30);

/// `at + d`, or as far ahead as instants go when that overflows.
pub(crate) fn after<T: Moment>(at: T, d: Duration) -> T {
    at.plus(d.min(FAR))
        .or_else(|| at.plus(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(at)
}

/// When KEDA asks for one item (`GetMetrics`, `IsActive` of any object watching it); a
/// stream's looks and `/decisions` are not KEDA asking. `T` is the clock: the server's, or
/// the simulator's (which replays this rule, `simulate::cache`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Demand<T = Instant> {
    /// The latest call that counted: calls closer than the refresh interval to it are the same
    /// ask (a poll's `IsActive` and `GetMetrics`, or many objects sharing the item).
    counted: Option<T>,
    /// The gaps between the latest counted calls (zero: none yet), oldest overwritten first.
    gaps: [Duration; RECENT_GAPS],
    next_gap: usize,
}

// By hand: no calls needs no default instant.
impl<T> Default for Demand<T> {
    fn default() -> Self {
        Self {
            counted: None,
            gaps: [Duration::ZERO; RECENT_GAPS],
            next_gap: 0,
        }
    }
}

impl<T: Moment> Demand<T> {
    /// KEDA asked for the item at `at`; `merge` is the refresh interval.
    pub fn called(&mut self, at: T, merge: Duration) {
        match self.counted {
            Some(c) if at.since(c) < merge => {}
            Some(c) => {
                self.gaps[self.next_gap] = at.since(c);
                self.next_gap = (self.next_gap + 1) % RECENT_GAPS;
                self.counted = Some(at);
            }
            None => self.counted = Some(at),
        }
    }

    /// How often KEDA asks for the item: the longest of its recent gaps, so that reads never
    /// outnumber calls, and never shorter than the refresh interval (`floor`).
    pub fn period(&self, floor: Duration) -> Duration {
        self.gaps
            .iter()
            .copied()
            .max()
            .unwrap_or_default()
            .max(floor)
    }

    /// When the item is read next after a read that finished at `read`: a period later, if
    /// KEDA asked for it since; `None` until it does (or if it never did). So an item is
    /// never read more often than KEDA asks for it, however the reads fall.
    pub fn due(&self, read: T, floor: Duration) -> Option<T> {
        let last = self.counted?;
        (last > read).then(|| after(read, self.period(floor)))
    }

    /// Whether KEDA asks at a steady pace: its recent gaps (at least one known) within a
    /// refresh interval (`floor`) of each other. So it is when one clock asks (KEDA's poll
    /// alone at zero replicas, or with `useCachedMetrics`), and not when the poll and the
    /// HPA's reads interleave, whose next call is not a period after the latest.
    fn steady(&self, floor: Duration) -> bool {
        let known = self.gaps.iter().filter(|g| !g.is_zero());
        match (known.clone().min(), known.max()) {
            (Some(shortest), Some(longest)) => longest.saturating_sub(*shortest) <= floor,
            _ => false,
        }
    }

    /// As [`Demand::due`], for an item read on its own while KEDA asks at a steady pace:
    /// timed for KEDA's next call, one refresh interval (`floor`) before it is expected (the
    /// latest call plus a period), so that call is answered from a value about a refresh
    /// interval old rather than from one read just after the call before, a period old. (The
    /// built-in trigger reads at the call itself: at zero replicas only KEDA's poll asks, and
    /// a read just after each poll would leave every poll a period behind the queue.) Still
    /// only after a call since the read, and never later than a period and a refresh after
    /// it, the age an answer may have: a read that follows its call moves a refresh later
    /// each period until it comes a refresh before the next.
    pub fn due_ahead(&self, read: T, floor: Duration) -> Option<T> {
        if !self.steady(floor) {
            return self.due(read, floor);
        }
        let last = self.counted?;
        (last > read).then(|| {
            let period = self.period(floor);
            let ahead = after(last, period.saturating_sub(floor));
            ahead
                .min(after(read, period.saturating_add(floor)))
                .max(after(read, floor))
        })
    }

    /// Whether a call at `now` finds the value read at `read` older than KEDA's period plus
    /// one refresh (KEDA had stopped asking, so nothing was read): then the caller waits for a
    /// read, as a never-seen item's first caller does, rather than be answered from it.
    /// Before a gap is known the period is KEDA's default polling interval, not the refresh
    /// interval: the second call of a new item comes a poll (or an HPA read) after the first,
    /// and is answered from the first read at once, as every call but a new item's first is
    /// (the README's "Answers to KEDA"), from a value no older than the period plus a refresh.
    /// Ask before [`Demand::called`] records the call, whose gap would lengthen the period,
    /// and only of an item not due already (no call since its read).
    pub fn lapsed(&self, read: T, now: T, floor: Duration) -> bool {
        let period = if self.gaps.iter().all(|g| g.is_zero()) {
            self.period(floor).max(KEDA_POLLING_INTERVAL)
        } else {
            self.period(floor)
        };
        now.since(read) > period.saturating_add(floor)
    }
}

/// One item as the schedule sees it when the task decides.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ItemView<'a, T = Instant> {
    pub demand: &'a Demand<T>,
    /// When its latest read (good or not) finished; `None` before its first.
    pub read: Option<T>,
    /// A caller waits for its read: never read yet, or its value lapsed.
    pub waiting: bool,
}

/// What the task does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Read these items (indices into the views). `scheduled`: the group's own refresh (what
    /// KEDA asks for, or everything while a stream is open), not a wake's read of waiting
    /// items alone.
    Read { which: Vec<usize>, scheduled: bool },
    /// Nothing to read now: wait until [`Schedule::sleep_until`] or a wake.
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
pub(crate) struct Schedule<T = Instant> {
    interval: Duration,
    fast_interval: Duration,
    max_backoff: Duration,
    /// One read lists the whole group ([`super::Upstream::LISTS`]).
    lists: bool,
    failures: u32,
    /// Never read before this (Retry-After, backoff).
    not_before: T,
    /// When to look again if nothing wakes the group.
    next_check: T,
    /// When the latest scheduled read finished (a stream's fast interval counts from it).
    last_scheduled: Option<T>,
    /// When the latest read of any kind started.
    last_started: Option<T>,
}

impl<T: Moment> Schedule<T> {
    /// A new group's schedule. Its first read comes from the wake of whoever created it.
    pub fn new(config: &RefreshConfig, lists: bool, now: T) -> Self {
        Self {
            interval: config.interval,
            fast_interval: config.fast_interval,
            max_backoff: config.max_backoff,
            lists,
            failures: 0,
            not_before: now,
            next_check: after(now, config.interval),
            last_scheduled: None,
            last_started: None,
        }
    }

    /// When to look again if nothing wakes the group: the next item due, never before
    /// Retry-After or backoff.
    pub fn sleep_until(&self) -> T {
        self.next_check.max(self.not_before)
    }

    /// The shorter of the two intervals: wakes are spaced by it, and reads due within it of
    /// each other are made together.
    fn spacing(&self) -> Duration {
        self.interval.min(self.fast_interval)
    }

    /// When a wake at `now` may read. KEDA asks about many ScaledObjects at once after a
    /// restart: a moment's pause (`coalesce`) lets one read cover the whole burst of
    /// never-seen items. KEDA's polls also come spread over its polling interval, each
    /// bringing one never-seen item: within the wake spacing (the shorter of the two
    /// intervals) of the last read's start they wait for the next wake read together, so a
    /// namespace is read once a second at most, not once per new ScaledObject (docs/servicebus.md, "Requests"), and a
    /// first answer still comes within about a second plus the read (README, "Answers to KEDA").
    pub fn wake_read_at(&self, now: T, coalesce: Duration) -> T {
        let spaced = self
            .last_started
            .map_or(self.not_before, |t| after(t, self.spacing()));
        self.not_before.max(after(now, coalesce)).max(spaced)
    }

    /// What to do at `now`, after a wake (`woken`) or the sleep.
    ///
    /// Items come due while KEDA asks for them, a refresh interval before their next call is
    /// expected ([`Demand::due_ahead`]), or, in a listed group of several, a period after
    /// their last read ([`Demand::due`]); what is due within the spacing is read together. A group that lists
    /// its items reads every item KEDA still asks for whenever one is due, which keeps them
    /// on one cycle. While a stream is open everything is read at the fast interval, asked
    /// for or not. Waiting items (never read, lapsed) go with any read; a wake reads them
    /// alone, so a Prometheus server is not asked every query again for each new one.
    pub fn next_action(
        &mut self,
        now: T,
        woken: bool,
        items: &[ItemView<'_, T>],
        streaming: bool,
    ) -> Action {
        let spacing = self.spacing();
        if items.is_empty() {
            if !streaming {
                return Action::Drop;
            }
            self.next_check = after(now, self.fast_interval);
            return Action::Wait;
        }
        // One read serves every item of a listed group, at one moment: it cannot come just
        // before each item's own next call, so a listed group of several keeps one cycle.
        let ahead = !self.lists || items.len() == 1;
        let dues: Vec<Option<T>> = items
            .iter()
            .map(|v| {
                v.read.and_then(|r| match ahead {
                    true => v.demand.due_ahead(r, self.interval),
                    false => v.demand.due(r, self.interval),
                })
            })
            .collect();
        let soon = after(now, spacing);
        let stream_due = if streaming {
            let at = self
                .last_scheduled
                .map_or(now, |t| after(t, self.fast_interval));
            Some(at)
        } else {
            None
        };
        let any_due =
            stream_due.is_some_and(|t| t <= now) || dues.iter().flatten().any(|&d| d <= now);
        let which: Vec<usize> = (0..items.len())
            .filter(|&i| {
                items[i].waiting
                    || (any_due
                        && (stream_due.is_some()
                            // A list costs the same pages for one item as for all:
                            // reading every item keeps the group on one cycle, where items
                            // that came at different moments would each keep a list of
                            // their own going.
                            || self.lists
                            || dues[i].is_some_and(|d| d <= soon)))
            })
            .collect();
        if now < self.not_before || which.is_empty() || (!any_due && !woken) {
            let next = dues
                .iter()
                .flatten()
                .copied()
                .chain(stream_due)
                .min()
                // A call may revive an item KEDA had stopped asking for: look again anyway.
                .map_or(after(now, self.interval), |d| {
                    d.min(after(now, self.interval))
                });
            self.next_check = next.max(now);
            return Action::Wait;
        }
        self.last_started = Some(now);
        Action::Read {
            which,
            scheduled: any_due,
        }
    }

    /// A read that [`Schedule::next_action`] asked for finished at `finished`.
    pub fn read_done(&mut self, finished: T, scheduled: bool, outcome: Outcome) {
        if scheduled {
            self.last_scheduled = Some(finished);
        }
        // Look again at once: what the read did not cover says when.
        self.next_check = finished;
        if let Some(pause) = outcome.retry_after {
            self.not_before = after(finished, pause);
            self.failures = self.failures.saturating_add(1);
        } else if outcome.any_ok {
            self.failures = 0;
            self.not_before = finished;
        } else if scheduled {
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
mod tests;
