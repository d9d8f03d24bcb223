//! What the tracked ScaledObjects take of the scaler's capacity (`crate::capacity`): counts
//! per namespace and metadata bytes, kept with every insert and eviction, and the room one new
//! object reserves while it is parsed. The answer path never touches this.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::{Engine, EngineError};

/// Tracked objects by count, per namespace and by metadata size.
#[derive(Debug, Default)]
pub(super) struct Usage {
    pub(super) objects: usize,
    bytes: usize,
    per_namespace: HashMap<String, usize>,
}

impl Usage {
    pub(super) fn release(&mut self, namespace: &str, bytes: usize, object: bool) {
        self.bytes = self.bytes.saturating_sub(bytes);
        if !object {
            return;
        }
        self.objects = self.objects.saturating_sub(1);
        if let Some(n) = self.per_namespace.get_mut(namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_namespace.remove(namespace);
            }
        }
    }
}

/// Room taken for one object being parsed; given back unless the object is kept.
pub(super) struct Reservation<'a> {
    usage: &'a Mutex<Usage>,
    namespace: &'a str,
    bytes: usize,
    object: bool,
    kept: bool,
}

impl Reservation<'_> {
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.usage
                .lock()
                .release(self.namespace, self.bytes, self.object);
        }
    }
}

impl Engine {
    /// Takes room for a new object in `namespace` (`replacing` the weight of its previous
    /// plan, if it had one), or says which cap it is past. Idle objects are let go first.
    pub(super) fn reserve<'a>(
        &'a self,
        namespace: &'a str,
        bytes: usize,
        replacing: Option<usize>,
    ) -> Result<Reservation<'a>, EngineError> {
        let cap = &self.config.capacity;
        let object = replacing.is_none();
        for attempt in 0..2 {
            {
                let mut usage = self.usage.lock();
                let in_namespace = usage.per_namespace.get(namespace).copied().unwrap_or(0);
                let bytes_after = usage.bytes + bytes - replacing.unwrap_or(0).min(usage.bytes);
                let refusal = if object && usage.objects >= cap.max_objects {
                    Some(format!(
                        "the scaler tracks {} ScaledObjects, its limit (--max-scaledobjects)",
                        cap.max_objects
                    ))
                } else if object && in_namespace >= cap.max_objects_per_namespace {
                    Some(format!(
                        "namespace `{namespace}` has {} tracked ScaledObjects, the limit per \
                         namespace (--max-scaledobjects-per-namespace)",
                        cap.max_objects_per_namespace
                    ))
                } else if bytes_after > cap.max_metadata_bytes {
                    Some(format!(
                        "the tracked ScaledObjects' metadata would take more than {} bytes, \
                         the limit (--max-metadata-bytes)",
                        cap.max_metadata_bytes
                    ))
                } else {
                    None
                };
                match refusal {
                    None => {
                        usage.bytes += bytes;
                        if object {
                            usage.objects += 1;
                            *usage
                                .per_namespace
                                .entry(namespace.to_string())
                                .or_insert(0) += 1;
                        }
                        return Ok(Reservation {
                            usage: &self.usage,
                            namespace,
                            bytes,
                            object,
                            kept: false,
                        });
                    }
                    Some(why) if attempt == 1 => return Err(EngineError::Exhausted(why)),
                    Some(_) => {}
                }
            }
            // Objects past their idle time still count until moka's housekeeping runs; it
            // calls the eviction listener, which takes the lock, so not under it.
            self.objects.run_pending_tasks();
        }
        unreachable!("the second attempt returns")
    }
}

/// What an object's metadata counts against `Capacity::max_metadata_bytes`.
pub(super) fn weight(metadata: &HashMap<String, String>) -> usize {
    metadata.iter().map(|(k, v)| k.len() + v.len()).sum()
}
