//! A group's refresh task: the supervisor that restarts it after a panic, the thin loop that
//! drives its [`Schedule`], and how a read's values are stored.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;

use super::group::Group;
use super::schedule::{Action, COALESCE, ItemView, Outcome, Schedule};
use super::{GroupRead, LookupHash, RefreshConfig, Upstream};
use crate::metrics::Metrics;
use crate::signal::{EntityCounts, SignalError};

/// Whether a group's refresh is down: from a panic (of its task, or of a read, which is
/// reported as an error for every item) until a read completes without one. A group whose
/// reads panic every time stays down (crash-looping). Reported on `/metrics` and `/readyz`
/// (docs/robustness.md, "A refresh that panics").
pub(super) struct TaskHealth {
    down: AtomicBool,
    report: Option<(Metrics, &'static str)>,
}

impl TaskHealth {
    pub(super) fn new(report: Option<(&Metrics, &'static str)>) -> Self {
        Self {
            down: AtomicBool::new(false),
            report: report.map(|(m, label)| (m.clone(), label)),
        }
    }

    /// `task`: the whole task panicked and is restarted; otherwise one read did.
    pub(super) fn panicked(&self, task: bool) {
        if let Some((metrics, label)) = &self.report {
            metrics.refresh_panicked(label, task);
        }
        self.set_down(true);
    }

    pub(super) fn read_done(&self) {
        self.set_down(false);
    }

    fn set_down(&self, down: bool) {
        if self.down.swap(down, Ordering::SeqCst) != down
            && let Some((metrics, label)) = &self.report
        {
            metrics.refresh_group_down(label, down);
        }
    }
}

impl Drop for TaskHealth {
    /// A dropped group has no task to be down.
    fn drop(&mut self) {
        self.set_down(false);
    }
}

/// Runs a group's refresh task and starts it again if it panics, so a group never stays
/// registered without a task refreshing it (every ScaledObject on it would answer
/// `UNAVAILABLE` for good). A task that ends normally (its group dropped) is not restarted.
pub(super) async fn supervise<F, Fut>(
    what: impl Debug,
    pause: Duration,
    health: Arc<TaskHealth>,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(start()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(group = ?what, "a refresh task panicked; restarting it");
                health.panicked(true);
                tokio::time::sleep(pause).await;
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        }
    }
}

/// One read, with a panic inside the upstream turned into an error for every item: the
/// task carries on and the values say why they are missing.
async fn read_guarded<U: Upstream>(
    upstream: &U,
    group: &U::Group,
    items: &[U::Item],
    health: &TaskHealth,
) -> GroupRead<U::Item> {
    match AssertUnwindSafe(upstream.read(group, items))
        .catch_unwind()
        .await
    {
        Ok(read) => {
            health.read_done();
            read
        }
        Err(_) => {
            tracing::error!(group = ?group, "an upstream read panicked");
            health.panicked(false);
            GroupRead::all_failed(
                items,
                SignalError::Unreported("the upstream read failed unexpectedly"),
            )
        }
    }
}

/// The thin driver of a group's [`Schedule`]: sleeps until it says, reads what it says,
/// reports how the read went.
pub(super) async fn refresh_loop<U: Upstream>(
    group: Weak<Group<U>>,
    upstream: Arc<U>,
    config: RefreshConfig,
    groups: moka::sync::Cache<U::Group, Arc<Group<U>>, LookupHash>,
    health: Arc<TaskHealth>,
) {
    let mut schedule = Schedule::new(&config, U::LISTS, Instant::now());
    loop {
        let Some(g) = group.upgrade() else { return };
        let woken = tokio::select! {
            _ = tokio::time::sleep_until(schedule.sleep_until()) => false,
            _ = g.wake.notified() => {
                tokio::time::sleep_until(schedule.wake_read_at(Instant::now(), COALESCE)).await;
                true
            }
        };

        let now = Instant::now();
        let streaming = || g.fast_watchers.load(Ordering::SeqCst) > 0;
        let (action, items) = {
            let mut items = g.items.lock();
            items.retain(|_, slot| {
                slot.last_asked
                    .is_some_and(|t| now.saturating_duration_since(t) < config.idle_ttl)
            });
            let (keys, views): (Vec<&U::Item>, Vec<ItemView<'_>>) =
                items.iter().map(|(item, slot)| (item, slot.view())).unzip();
            let action = schedule.next_action(now, woken, &views, streaming());
            let read: Vec<U::Item> = match &action {
                Action::Read { which, .. } => which.iter().map(|&i| keys[i].clone()).collect(),
                Action::Wait | Action::Drop => Vec::new(),
            };
            (action, read)
        };
        let full = match action {
            Action::Read { scheduled, .. } => scheduled,
            Action::Wait => continue,
            Action::Drop => {
                g.retired.store(true, Ordering::SeqCst);
                groups.invalidate(&g.key);
                return;
            }
        };
        let read = read_guarded(&*upstream, &g.key, &items, &health).await;
        let finished = Instant::now();
        let any_ok = store(&g, &items, read.values, read.counts, full, finished);
        {
            // Throttled, or a full read failing throughout: the upstream refuses us now, and
            // nothing read earlier stands in for a read of a new item.
            let refused = read.retry_after.is_some() || (full && !any_ok);
            let mut seen = g.seen_in_passing.lock();
            // A full read replaces what earlier ones saw, so an item answered from it is as
            // fresh as the group's own; a wake's read adds to it.
            if refused || full {
                seen.clear();
            }
            if !refused {
                seen.extend(
                    read.seen_in_passing
                        .into_iter()
                        .map(|(item, v)| (item, (v, finished))),
                );
            }
        }
        g.generation.send_modify(|n| *n += 1);
        let outcome = Outcome {
            retry_after: read.retry_after,
            any_ok,
        };
        schedule.read_done(finished, full, outcome);
    }
}

/// Stores one read's values in the group's slots; whether any item got a value.
fn store<U: Upstream>(
    g: &Group<U>,
    items: &[U::Item],
    mut values: HashMap<U::Item, Result<f64, SignalError>>,
    mut counts: HashMap<U::Item, EntityCounts>,
    full: bool,
    finished: Instant,
) -> bool {
    let mut any_ok = false;
    let mut slots = g.items.lock();
    let mut throttled = None;
    for item in items {
        let Some(slot) = slots.get_mut(item) else {
            continue;
        };
        let value = values.remove(item).unwrap_or(Err(SignalError::Unreported(
            "the upstream did not report this item",
        )));
        let value = value.map_err(Arc::new);
        match &value {
            Ok(_) => any_ok = true,
            Err(e) if e.retry_after().is_some() => throttled = Some(e.clone()),
            Err(_) => {}
        }
        slot.read(finished, value);
        if let Some(c) = counts.remove(item) {
            slot.counts = Some(c);
        }
    }
    // A wake's read throttled holds the whole group back: the items it did not read say why
    // their values are ageing.
    if let (false, Some(e)) = (full, throttled) {
        for slot in slots
            .values_mut()
            .filter(|s| s.attempted && s.error.is_none())
        {
            slot.error = Some(e.clone());
        }
    }
    any_ok
}
