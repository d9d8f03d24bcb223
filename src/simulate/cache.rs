//! blend-scaler's cache on the simulator's clock: one upstream item (the queue, the query)
//! kept in the server's own [`ItemState`] and read when the server's own [`Schedule`] says,
//! driven the way the refresh task (`cache::task::refresh_loop`) and a caller
//! (`cache::Refresher::observe`) drive them. So the simulated side reads exactly when the
//! server would for the same KEDA calls: once per the interval KEDA asks at, every second
//! while a stream is open, at once for a call that finds its value lapsed (the caller waits
//! for that read, as in the server). Reads are instant and never fail; time is counted from
//! the start of the trace.

use std::time::Duration;

use crate::cache::RefreshConfig;
use crate::cache::group::ItemState;
use crate::cache::schedule::{Action, COALESCE, Outcome, Schedule, after};
use crate::signal::{Moment, Observation};

/// A read as the model's upstreams give it: a value, at once.
const READ_OK: Outcome = Outcome {
    retry_after: None,
    any_ok: true,
};

/// The group of one upstream item, with its one item (none once dropped idle).
#[derive(Clone, Debug)]
struct Group {
    schedule: Schedule<Duration>,
    item: Option<ItemState<Duration>>,
}

/// When KEDA asked for the item and when it was read (kept for the tests only).
#[cfg(test)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    /// Every KEDA call (`GetMetrics`, `IsActive`) that looked at the item.
    pub calls: Vec<Duration>,
    /// Every read of the upstream.
    pub reads: Vec<Duration>,
}

/// One item in blend-scaler's cache: its group's schedule, the task's pending wake, and
/// whether a `StreamIsActive` stream holds the group at the fast interval.
#[derive(Clone, Debug)]
pub struct Cached {
    config: RefreshConfig,
    /// `None` before the first look, and after the task dropped the group (nobody asked for
    /// `idle_ttl`).
    group: Option<Group>,
    streaming: bool,
    /// When the task, woken by a caller, looks next. (A second wake meanwhile, `Notify`'s
    /// one permit, only adds a look after it that finds nothing more to read: the read for a
    /// waiting item is already coming, and what comes due is read at its time anyway.)
    wake: Option<Duration>,
    /// The plan decides on the value's rate (`drainTime`): looks keep the reads for it, as
    /// the server's do ([`crate::signal::GoodReads::keep_history`]).
    rate: bool,
    #[cfg(test)]
    log: Log,
}

impl Cached {
    /// An empty cache with `--refresh-interval` `interval` and the server's other defaults,
    /// for a plan that decides on the value's `rate` or not.
    pub fn new(interval: Duration, rate: bool) -> Self {
        Self {
            config: RefreshConfig {
                interval,
                ..RefreshConfig::default()
            },
            group: None,
            streaming: false,
            wake: None,
            rate,
            #[cfg(test)]
            log: Log::default(),
        }
    }

    #[cfg(test)]
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// A `StreamIsActive` stream opens at `at` and stays open: the group is read at the fast
    /// interval from now on, asked for or not.
    pub fn open_stream(&mut self, at: Duration) {
        self.streaming = true;
        group_at(&mut self.group, &self.config, at);
        self.notify(at);
    }

    /// A look at the item at `at` (`keda`: a KEDA call, which counts as demand; otherwise a
    /// stream's), with `value` what a read made now would get. As [`Refresher::observe`]:
    /// answered from the cache unless the item was never read or its value lapsed; then the
    /// task is woken and the caller waits for its read, at most `first_read_timeout`.
    ///
    /// [`Refresher::observe`]: crate::cache::Refresher::observe
    pub fn look(&mut self, at: Duration, keda: bool, value: f64) -> Observation {
        let interval = self.config.interval;
        let item = group_at(&mut self.group, &self.config, at)
            .item
            .get_or_insert_with(ItemState::default);
        item.last_asked = Some(at);
        if self.rate {
            item.reads.keep_history();
        }
        let wake = keda && item.keda_call(at, interval);
        let answered = item.answerable().then(|| item.observation(at));
        #[cfg(test)]
        if keda {
            self.log.calls.push(at);
        }
        if wake {
            self.notify(at);
        }
        if let Some(observation) = answered {
            return observation;
        }
        self.notify(at);
        let deadline = after(at, self.config.first_read_timeout);
        let now = self.advance(deadline, value, true).unwrap_or(deadline);
        self.group
            .as_ref()
            .and_then(|g| g.item.as_ref())
            .map(|item| item.observation(now))
            .unwrap_or_default()
    }

    /// Runs the refresh task until just before `until`, reading `value`; with `stop`, only
    /// until a read makes the item answerable. The instant of the latest read, if any.
    pub fn advance(&mut self, until: Duration, value: f64, stop: bool) -> Option<Duration> {
        let mut latest = None;
        loop {
            let Some(group) = self.group.as_mut() else {
                return latest;
            };
            let (at, woken) = match self.wake {
                Some(w) => (w, true),
                None => (group.schedule.sleep_until(), false),
            };
            if at >= until {
                return latest;
            }
            self.wake = None;
            let ttl = self.config.idle_ttl;
            if group
                .item
                .as_ref()
                .is_some_and(|i| i.last_asked.is_none_or(|t| at.since(t) >= ttl))
            {
                group.item = None;
            }
            let views: Vec<_> = group.item.iter().map(ItemState::view).collect();
            match group
                .schedule
                .next_action(at, woken, &views, self.streaming)
            {
                Action::Wait => {}
                Action::Drop => {
                    self.group = None;
                    return latest;
                }
                Action::Read { which, scheduled } => {
                    if let (false, Some(item)) = (which.is_empty(), group.item.as_mut()) {
                        item.read(at, Ok(value));
                    }
                    group.schedule.read_done(at, scheduled, READ_OK);
                    #[cfg(test)]
                    self.log.reads.push(at);
                    latest = Some(at);
                }
            }
            let answerable = group.item.as_ref().is_some_and(ItemState::answerable);
            if stop && latest.is_some() && answerable {
                return latest;
            }
        }
    }

    /// Wakes the task at `at`: it reads what is waiting after a moment's pause, spaced from
    /// its last read.
    fn notify(&mut self, at: Duration) {
        if let (None, Some(g)) = (self.wake, &self.group) {
            self.wake = Some(g.schedule.wake_read_at(at, COALESCE));
        }
    }
}

/// The group, created at `at` if there is none (its task starts sleeping).
fn group_at<'g>(
    group: &'g mut Option<Group>,
    config: &RefreshConfig,
    at: Duration,
) -> &'g mut Group {
    group.get_or_insert_with(|| Group {
        // One item per group: whether the upstream lists its items changes nothing.
        schedule: Schedule::new(config, false, at),
        item: None,
    })
}

#[cfg(test)]
mod tests;
