//! From the entities a refresh fetched to each watched item's value, and what the lists saw
//! in passing.

use std::collections::{BTreeMap, HashMap};

use super::Watched;
use super::atom::Description;
use super::read_plan::{Bucket, Compiled, Fetched, Name, Wants};
use crate::metadata::{Aggregation, Entity};
use crate::signal::{EntityCounts, SignalError};

/// The entities a list read returned that no item names exactly, as the items that would:
/// after a restart KEDA asks about one ScaledObject after another, and each one whose entity
/// is on a page already read is answered from it instead of costing the namespace a read.
pub(super) fn seen_in_passing(
    fetched: &Fetched,
    queues: &Wants,
    topics: &BTreeMap<String, Wants>,
) -> HashMap<Watched, f64> {
    let exact = |entity: Entity| Watched {
        entity,
        use_regex: false,
        operation: Aggregation::Sum,
    };
    let unwatched = |bucket: &Bucket, wants: &Wants| {
        let list = match fetched.get(bucket) {
            Some(Ok(list)) => list.as_slice(),
            _ => &[],
        };
        list.iter()
            .filter(|d| !wants.exact.contains(&d.name.to_lowercase()))
            .filter_map(|d| Some((d.name.clone(), d.active().ok()? as f64)))
            .collect::<Vec<_>>()
    };
    let mut seen = HashMap::new();
    for (name, v) in unwatched(&Bucket::Queues, queues) {
        seen.insert(exact(Entity::Queue(name.into())), v);
    }
    for (lower, w) in topics {
        for (name, v) in unwatched(&Bucket::Topic(lower.clone()), w) {
            let entity = Entity::Subscription {
                topic: w.name.as_str().into(),
                subscription: name.into(),
            };
            seen.insert(exact(entity), v);
        }
    }
    seen
}

fn not_found(what: String) -> SignalError {
    SignalError::NotFound(what)
}

/// The entries of `bucket`, or why there are none.
fn entries<'a>(fetched: &'a Fetched, bucket: &Bucket) -> Result<&'a [Description], SignalError> {
    match fetched.get(bucket) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(e.clone()),
        None => Err(SignalError::Unreported("the namespace was not read")),
    }
}

/// The item's value, and the other counts of the entities it came from (summed over a
/// `useRegex` match).
pub(super) fn value(
    item: &Watched,
    compiled: &Compiled,
    fetched: &Fetched,
    host: &str,
) -> Result<(f64, EntityCounts), SignalError> {
    let found: Vec<&Description> = match compiled {
        Compiled::Queue(name) => entries(fetched, &Bucket::Queues)?
            .iter()
            .filter(|d| name.matches(&d.name))
            .collect(),
        Compiled::Subscription {
            topic,
            subscription,
        } => {
            let topics: Vec<String> = match topic {
                Name::Exact(t) => vec![t.to_lowercase()],
                Name::Pattern(p) => entries(fetched, &Bucket::Topics)?
                    .iter()
                    .filter(|d| p.is_match(&d.name))
                    .map(|d| d.name.to_lowercase())
                    .collect(),
            };
            let mut found = Vec::new();
            for t in &topics {
                let list = entries(fetched, &Bucket::Topic(t.clone()))?;
                found.extend(list.iter().filter(|d| subscription.matches(&d.name)));
            }
            found
        }
    };
    let v = combine(item, &found, || describe(item, host))?;
    let counts = if item.use_regex {
        let each: Vec<EntityCounts> = found.iter().map(|d| entity_counts(&d.counts)).collect();
        EntityCounts::sum(&each)
    } else {
        entity_counts(&found[0].counts)
    };
    Ok((v, counts))
}

fn entity_counts(c: &super::atom::CountDetails) -> EntityCounts {
    EntityCounts {
        active: c.active,
        dead_letter: c.dead_letter,
        scheduled: c.scheduled,
        transfer: c.transfer,
        transfer_dead_letter: c.transfer_dead_letter,
    }
}

/// How a not-found message names what was watched.
fn describe(item: &Watched, host: &str) -> String {
    match (&item.entity, item.use_regex) {
        (Entity::Queue(q), false) => format!("queue `{q}` in namespace `{host}`"),
        (Entity::Queue(q), true) => format!("a queue matching `{q}` in namespace `{host}`"),
        (
            Entity::Subscription {
                topic,
                subscription,
            },
            false,
        ) => format!("subscription `{subscription}` of topic `{topic}` in namespace `{host}`"),
        (
            Entity::Subscription {
                topic,
                subscription,
            },
            true,
        ) => format!(
            "a subscription matching `{subscription}` of a topic matching `{topic}` in \
             namespace `{host}`"
        ),
    }
}

/// The item's value from the entities that matched it: the one exact entity's active
/// count, or the operation over every match. Nothing matched is "not found", never 0.
pub(super) fn combine(
    item: &Watched,
    found: &[&Description],
    what: impl FnOnce() -> String,
) -> Result<f64, SignalError> {
    if found.is_empty() {
        return Err(not_found(what()));
    }
    let mut counts = Vec::with_capacity(found.len());
    for d in found {
        counts.push(d.active()? as f64);
    }
    if !item.use_regex {
        // Names are unique per container; with case-insensitive matching take the first.
        return Ok(counts[0]);
    }
    item.operation
        .apply(&counts)
        .ok_or_else(|| not_found(what()))
}
