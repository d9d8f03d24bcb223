//! One copy of each value that thousands of plans repeat: endpoints, servers, credential
//! names and keys, queries, metric names, cron expressions; a Prometheus server with its auth.
//!
//! Ten thousand ScaledObjects name a handful of Service Bus namespaces and Prometheus servers
//! and the same few credentials; parsed apart, every plan held its own copies, and every
//! cache key, entry and table built from a plan cloned them again (BENCHMARKS.md, "Memory").
//! [`intern`] hands out one shared `Arc<str>` per distinct text, and an [`Interner`] one
//! `Arc<T>` per distinct value, so equal values from different plans are one allocation, and
//! so is every clone a key or an entry takes of them. Sharing is by equality of the whole
//! value: a value with one tenant's credentials is never the copy of one with another's.
//!
//! Hand-written: the table is a set of `Arc`s under a lock, a few dozen lines, and handing
//! out std's `Arc` keeps the plan types plain (`&str` through `Deref`, map lookups by `&str`
//! through `Borrow`, equality and hashing by value). A value no plan holds any more is let go
//! when the table has doubled since it was last swept, so it never holds more than twice the
//! values in use.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

/// The table is swept no sooner than at this many values.
const MIN_SWEEP: usize = 1024;

/// One shared `Arc` per distinct value of `T`, for values thousands of plans and cache keys
/// repeat (texts; a Prometheus server with its auth; a Service Bus namespace with its
/// credentials). Equal values share one allocation; unequal ones never do, so a value that
/// carries a tenant's credentials is only ever shared with plans that carry the same ones.
pub(crate) struct Interner<T: ?Sized + 'static> {
    table: LazyLock<Mutex<Table<T>>>,
}

struct Table<T: ?Sized> {
    values: HashSet<Arc<T>>,
    /// Sweep when the table reaches this many values.
    sweep_at: usize,
}

impl<T: ?Sized> Table<T> {
    fn empty() -> Mutex<Self> {
        Mutex::new(Self {
            values: HashSet::new(),
            sweep_at: MIN_SWEEP,
        })
    }
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    pub(crate) const fn new() -> Self {
        Self {
            table: LazyLock::new(Table::empty),
        }
    }

    /// The shared copy of `value`, made by `make` when there is none.
    pub(crate) fn get_or_make(&self, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        let mut table = self.table.lock();
        if let Some(shared) = table.values.get(value) {
            return shared.clone();
        }
        if table.values.len() >= table.sweep_at {
            // Under the lock nobody can take a new reference from the table, so a count of
            // one is the table's own.
            table.values.retain(|v| Arc::strong_count(v) > 1);
            table.sweep_at = (table.values.len() * 2).max(MIN_SWEEP);
        }
        let shared = make();
        table.values.insert(shared.clone());
        shared
    }

    #[cfg(test)]
    fn count(&self, pick: impl Fn(&T) -> bool) -> usize {
        self.table.lock().values.iter().filter(|v| pick(v)).count()
    }
}

impl<T: Eq + Hash> Interner<T> {
    /// The shared copy of `value`. (Made into an `Arc` first, which is dropped when an equal
    /// one is shared already: values are shared when a plan is tracked, not per call.)
    pub(crate) fn share(&self, value: T) -> Arc<T> {
        let fresh = Arc::new(value);
        self.get_or_make(&fresh, || fresh.clone())
    }
}

static TEXTS: Interner<str> = Interner::new();

/// The shared copy of `text`: the same allocation for equal texts while any holder lives.
pub fn intern(text: &str) -> Arc<str> {
    TEXTS.get_or_make(text, || Arc::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_share_one_allocation_and_different_ones_do_not() {
        let a = intern("https://orders.servicebus.windows.net");
        let b = intern(&String::from("https://orders.servicebus.windows.net"));
        let c = intern("https://billing.servicebus.windows.net");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(&*b, "https://orders.servicebus.windows.net");
    }

    #[test]
    fn texts_nobody_holds_are_swept_as_the_table_grows() {
        // Other tests intern concurrently: count only this test's own texts.
        let kept = intern("intern-test-kept");
        for i in 0..4 * MIN_SWEEP {
            drop(intern(&format!("intern-test-dropped-{i}")));
        }
        let left = TEXTS.count(|t| t.starts_with("intern-test-dropped-"));
        assert!(left < 2 * MIN_SWEEP, "{left} unheld texts kept");
        assert!(Arc::ptr_eq(&kept, &intern("intern-test-kept")));
    }
}
