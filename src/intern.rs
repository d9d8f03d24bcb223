//! One copy of each text that thousands of plans repeat: endpoints, servers, credential
//! names and keys, queries, metric names, cron expressions.
//!
//! Ten thousand ScaledObjects name a handful of Service Bus namespaces and Prometheus servers
//! and the same few credentials; parsed apart, every plan held its own copies, and every
//! cache key, entry and table built from a plan cloned them again (BENCHMARKS.md, "Memory").
//! [`intern`] hands out one shared `Arc<str>` per distinct text, so equal texts from different
//! plans are one allocation, and so is every clone a key or an entry takes of them.
//!
//! Hand-written: the table is a set of `Arc<str>` under a lock, a dozen lines, and handing out
//! std's `Arc<str>` keeps the plan types plain (`&str` through `Deref`, map lookups by `&str`
//! through `Borrow`). A text no plan holds any more is let go when the table has doubled
//! since it was last swept, so it never holds more than twice the texts in use.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

/// The table is swept no sooner than at this many texts.
const MIN_SWEEP: usize = 1024;

struct Table {
    texts: HashSet<Arc<str>>,
    /// Sweep when the table reaches this many texts.
    sweep_at: usize,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| {
    Mutex::new(Table {
        texts: HashSet::new(),
        sweep_at: MIN_SWEEP,
    })
});

/// The shared copy of `text`: the same allocation for equal texts while any holder lives.
pub fn intern(text: &str) -> Arc<str> {
    let mut table = TABLE.lock();
    if let Some(shared) = table.texts.get(text) {
        return shared.clone();
    }
    if table.texts.len() >= table.sweep_at {
        // Under the lock nobody can take a new reference from the table, so a count of one
        // is the table's own.
        table.texts.retain(|t| Arc::strong_count(t) > 1);
        table.sweep_at = (table.texts.len() * 2).max(MIN_SWEEP);
    }
    let shared: Arc<str> = Arc::from(text);
    table.texts.insert(shared.clone());
    shared
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
        let left = TABLE
            .lock()
            .texts
            .iter()
            .filter(|t| t.starts_with("intern-test-dropped-"))
            .count();
        assert!(left < 2 * MIN_SWEEP, "{left} unheld texts kept");
        assert!(Arc::ptr_eq(&kept, &intern("intern-test-kept")));
    }
}
