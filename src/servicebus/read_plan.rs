//! What one refresh of a namespace reads: the watched names compiled, the buckets (all
//! queues, one topic's subscriptions, all topics), how each is fetched, and the gate that stops
//! the remaining requests once the namespace throttles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use regex::Regex;

use super::atom::Description;
use crate::metadata::ServiceBusPlan;
use crate::signal::SignalError;

/// A name as the refresh uses it: exact (case-insensitive, as Service Bus names are) or a
/// pattern (case-sensitive, as KEDA's).
#[derive(Clone, Debug)]
pub(super) enum Name {
    Exact(String),
    Pattern(Regex),
}

impl Name {
    pub(super) fn new(text: &str, use_regex: bool) -> Result<Self, SignalError> {
        if !use_regex {
            return Ok(Name::Exact(text.to_string()));
        }
        ServiceBusPlan::name_pattern(text)
            .map(Name::Pattern)
            .map_err(|e| {
                SignalError::InvalidEntity(format!("`{text}` is not a valid pattern: {e}"))
            })
    }

    /// A pattern without regex syntax names exactly one entity: no list of its kind needed.
    pub(super) fn plain(text: &str, use_regex: bool) -> bool {
        !use_regex || regex::escape(text) == text
    }

    pub(super) fn matches(&self, name: &str) -> bool {
        match self {
            Name::Exact(n) => n.eq_ignore_ascii_case(name),
            Name::Pattern(p) => p.is_match(name),
        }
    }
}

/// What a refresh reads: all queues, one topic's subscriptions, or all topics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Bucket {
    Queues,
    Topics,
    /// By lower-cased topic name.
    Topic(String),
}

/// How a bucket is read: one GET of a named entity, or its paged list.
#[derive(Clone, Debug)]
pub(super) enum Fetch {
    Get(String),
    /// With the names (lower-cased) that, once all seen, end the paging early; `None` when a
    /// pattern needs every page.
    List(Option<BTreeSet<String>>),
}

/// What the refresh wants from one bucket.
#[derive(Default)]
pub(super) struct Wants {
    /// The display name of the container (the topic), for requests.
    pub(super) name: String,
    pub(super) exact: BTreeSet<String>,
    original: BTreeMap<String, String>,
    pub(super) patterns: bool,
}

impl Wants {
    pub(super) fn add(&mut self, name: &Name) {
        match name {
            Name::Exact(n) => {
                let lower = n.to_lowercase();
                self.original
                    .entry(lower.clone())
                    .or_insert_with(|| n.clone());
                self.exact.insert(lower);
            }
            Name::Pattern(_) => self.patterns = true,
        }
    }

    pub(super) fn fetch(&self) -> Fetch {
        if !self.patterns && self.exact.len() == 1 {
            let only = self.exact.iter().next().cloned().unwrap_or_default();
            Fetch::Get(self.original.get(&only).cloned().unwrap_or(only))
        } else if self.patterns {
            Fetch::List(None)
        } else {
            Fetch::List(Some(self.exact.clone()))
        }
    }
}

/// Stops a refresh's remaining requests once the namespace throttles, and keeps the longest
/// `Retry-After` seen.
#[derive(Default)]
pub(super) struct Gate {
    pub(super) throttled: parking_lot::Mutex<Option<SignalError>>,
}

impl Gate {
    pub(super) fn check(&self) -> Result<(), SignalError> {
        match &*self.throttled.lock() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    pub(super) fn observe<T>(&self, r: Result<T, SignalError>) -> Result<T, SignalError> {
        if let Err(e @ SignalError::Throttled { .. }) = &r {
            let mut t = self.throttled.lock();
            let longer = match &*t {
                Some(old) => e.retry_after() > old.retry_after(),
                None => true,
            };
            if longer {
                *t = Some(e.clone());
            }
        }
        r
    }

    pub(super) fn retry_after(&self) -> Option<Duration> {
        self.throttled
            .lock()
            .as_ref()
            .and_then(SignalError::retry_after)
    }
}

/// One watched item, compiled.
pub(super) enum Compiled {
    Queue(Name),
    Subscription { topic: Name, subscription: Name },
}

pub(super) type Fetched = HashMap<Bucket, Result<Vec<Description>, SignalError>>;
