//! The cache as the engine sees it: by plan, whatever the upstream's keys are.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

use super::{Refresher, Upstream};
use crate::signal::{EntityCounts, Observation};

/// One signal's cache as the engine sees it: by plan, whatever the upstream's keys are.
pub trait SignalSource<P>: Send + Sync + 'static {
    /// The current observation for `plan` (see [`Refresher::observe`]).
    fn observe<'a>(&'a self, plan: &'a P)
    -> Pin<Box<dyn Future<Output = Observation> + Send + 'a>>;
    /// Change notifications for `plan`'s group, and a guard that keeps it at the fast interval.
    fn watch(&self, plan: &P) -> (watch::Receiver<u64>, Box<dyn Send + Sync>);
    /// The message counts the latest read returned beside `plan`'s value, for sources whose
    /// reads carry them (Service Bus); shown and exported, never decided on.
    fn counts(&self, _plan: &P) -> Option<EntityCounts> {
        None
    }
}

/// Adapts a [`Refresher`] to a plan type through a function from plan to (group, item).
pub struct Keyed<U: Upstream, P> {
    refresher: Refresher<U>,
    key: fn(&P) -> (U::Group, U::Item),
}

impl<U: Upstream, P> Keyed<U, P> {
    pub fn new(refresher: Refresher<U>, key: fn(&P) -> (U::Group, U::Item)) -> Self {
        Self { refresher, key }
    }

    pub fn refresher(&self) -> &Refresher<U> {
        &self.refresher
    }
}

impl<U: Upstream, P: Send + Sync + 'static> SignalSource<P> for Keyed<U, P> {
    fn observe<'a>(
        &'a self,
        plan: &'a P,
    ) -> Pin<Box<dyn Future<Output = Observation> + Send + 'a>> {
        Box::pin(async move {
            let (group, item) = (self.key)(plan);
            self.refresher.observe(&group, &item).await
        })
    }

    fn watch(&self, plan: &P) -> (watch::Receiver<u64>, Box<dyn Send + Sync>) {
        let (group, _) = (self.key)(plan);
        match self.refresher.watch(&group) {
            Some((rx, guard)) => (rx, Box::new(guard)),
            // Past the group cap: a receiver that never changes (its sender is gone); the
            // stream's own reads report the refusal.
            None => (watch::channel(0).1, Box::new(())),
        }
    }
}
