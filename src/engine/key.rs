//! How a KEDA call finds its tracked object, on every call: a key that borrows the request's
//! strings, and a fingerprint of the metadata that tells whether the plan must be parsed again.
//! Both are hashed with foldhash (the hash hashbrown uses), seeded per process: SipHash over a
//! sorted copy of the metadata and three freshly allocated key strings were the largest cost
//! only the scaler paid per call (BENCHMARKS.md, "gRPC throughput under h2load").

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

/// Namespace, name and metric name: a ScaledObject with two `external` triggers has two plans
/// and two answers, which must not share a held answer. The object's labels share these texts.
pub(super) type ObjectKey = (Arc<str>, Arc<str>, Arc<str>);

/// An [`ObjectKey`] over a call's own strings, so a lookup allocates nothing; the map hashes
/// its objects' keys in this form too (`Tracked::key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct KeyRef<'a>(pub &'a str, pub &'a str, pub &'a str);

impl KeyRef<'_> {
    /// Thousands of objects share a namespace and a metric name: one copy of each.
    pub(super) fn to_owned(self) -> ObjectKey {
        (
            crate::intern::intern(self.0),
            self.1.into(),
            crate::intern::intern(self.2),
        )
    }
}

/// The hash of the tracked objects' map and of the fingerprint.
pub(super) type KeyHasher = foldhash::quality::RandomState;

/// What a call needs from its metadata before it knows whether the plan must be parsed again,
/// found in one pass over the map (each of the three was a pass, or a SipHash lookup, of its
/// own).
pub(super) struct Read<'a> {
    /// A hash of the metadata that does not depend on the map's order: the sum of each pair's
    /// own hash, so equal maps give equal fingerprints without a sorted copy. A changed, added
    /// or removed pair changes one term of the sum; the seed is the process's own, so a caller
    /// cannot work out a colliding change in advance (and a collision would only keep its own
    /// old plan).
    pub(super) fingerprint: u64,
    /// The longest key's length, for the size check (`metadata::oversized`).
    pub(super) longest_key: usize,
    /// The `metricName` value, if there is one.
    pub(super) metric_name: Option<&'a str>,
}

pub(super) fn read<'a>(hasher: &KeyHasher, metadata: &'a HashMap<String, String>) -> Read<'a> {
    let mut read = Read {
        fingerprint: 0,
        longest_key: 0,
        metric_name: None,
    };
    for (k, v) in metadata {
        let mut h = hasher.build_hasher();
        k.hash(&mut h);
        v.hash(&mut h);
        read.fingerprint = read.fingerprint.wrapping_add(h.finish());
        read.longest_key = read.longest_key.max(k.len());
        if k == crate::metadata::keys::METRIC_NAME {
            read.metric_name = Some(v);
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn fingerprint(hasher: &KeyHasher, metadata: &HashMap<String, String>) -> u64 {
        read(hasher, metadata).fingerprint
    }

    fn map(pairs: &[(String, String)]) -> HashMap<String, String> {
        pairs.iter().cloned().collect()
    }

    proptest! {
        #[test]
        fn the_fingerprint_is_the_same_for_the_same_pairs_in_any_order(
            pairs in proptest::collection::hash_map("[a-zA-Z]{1,12}", ".{0,40}", 0..20),
            seed in any::<u64>(),
        ) {
            let hasher = KeyHasher::default();
            let pairs: Vec<_> = pairs.into_iter().collect();
            let mut shuffled = pairs.clone();
            // A rotation and a reversal by the seed: another insertion order, and a map with
            // another capacity, so another iteration order.
            if !shuffled.is_empty() {
                let n = shuffled.len();
                shuffled.rotate_left((seed as usize) % n);
            }
            if seed % 2 == 0 {
                shuffled.reverse();
            }
            let mut other = HashMap::with_capacity(pairs.len() * 4 + 7);
            other.extend(shuffled);
            prop_assert_eq!(fingerprint(&hasher, &map(&pairs)), fingerprint(&hasher, &other));
        }

        #[test]
        fn the_fingerprint_changes_when_a_value_a_key_or_a_pair_changes(
            pairs in proptest::collection::hash_map("[a-z]{1,12}", "[a-z0-9 ]{0,40}", 1..20),
            pick in any::<prop::sample::Index>(),
            extra in "[A-Z]{1,8}",
        ) {
            let hasher = KeyHasher::default();
            let before = fingerprint(&hasher, &pairs);
            let entries: Vec<(String, String)> = pairs.clone().into_iter().collect();
            let (key, value) = pick.get(&entries).clone();

            let mut changed_value = pairs.clone();
            changed_value.insert(key.clone(), format!("{value}{extra}"));
            prop_assert_ne!(before, fingerprint(&hasher, &changed_value));

            let mut renamed = pairs.clone();
            let v = renamed.remove(&key).unwrap();
            renamed.insert(format!("{key}{extra}"), v);
            prop_assert_ne!(before, fingerprint(&hasher, &renamed));

            let mut removed = pairs.clone();
            removed.remove(&key);
            prop_assert_ne!(before, fingerprint(&hasher, &removed));

            let mut added = pairs.clone();
            added.insert(extra.clone(), value);
            prop_assert_ne!(before, fingerprint(&hasher, &added));
        }
    }

    #[test]
    fn the_pass_finds_the_metric_name_and_the_longest_key() {
        let hasher = KeyHasher::default();
        let m = map(&[
            ("metricName".into(), "queue-depth".into()),
            ("a-longer-key".into(), "x".into()),
        ]);
        let seen = read(&hasher, &m);
        assert_eq!(seen.metric_name, Some("queue-depth"));
        assert_eq!(seen.longest_key, "a-longer-key".len());
        let other = map(&[("metricname".into(), "other".into())]);
        assert_eq!(
            read(&hasher, &other).metric_name,
            None,
            "keys are case-sensitive"
        );
    }

    #[test]
    fn a_value_moved_to_another_key_changes_the_fingerprint() {
        // Each pair is hashed as a whole, so swapping two values is a change.
        let hasher = KeyHasher::default();
        let a = map(&[("a".into(), "1".into()), ("b".into(), "2".into())]);
        let b = map(&[("a".into(), "2".into()), ("b".into(), "1".into())]);
        assert_ne!(fingerprint(&hasher, &a), fingerprint(&hasher, &b));
        // A key's end is not a value's start: `ab=c` is not `a=bc`.
        let c = map(&[("ab".into(), "c".into())]);
        let d = map(&[("a".into(), "bc".into())]);
        assert_ne!(fingerprint(&hasher, &c), fingerprint(&hasher, &d));
    }
}
