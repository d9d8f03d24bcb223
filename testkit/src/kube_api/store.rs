//! The double's state: the objects by kind, namespace and name, the resource version and the
//! event history watches replay, and every request, status write and review recorded.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{Decision, Kind, Recorded, StatusWrite};

pub(super) type Policy = Arc<dyn Fn(&Value) -> Decision + Send + Sync>;

#[derive(Clone, Debug)]
pub(super) struct Event {
    pub(super) rv: u64,
    pub(super) kind: Kind,
    pub(super) type_: &'static str,
    pub(super) object: Value,
}

pub(super) struct Store {
    pub(super) rv: u64,
    pub(super) uid: u64,
    pub(super) objects: BTreeMap<(Kind, String, String), Value>,
    pub(super) events: Vec<Event>,
    /// Watches from a resource version below this get `410 Expired`.
    pub(super) compacted: u64,
    pub(super) status_writes: Vec<StatusWrite>,
    pub(super) reviews: Vec<Value>,
    pub(super) requests: Vec<Recorded>,
}

pub(super) struct Shared {
    pub(super) store: Mutex<Store>,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) policy: Mutex<Policy>,
    pub(super) open_watches: std::sync::atomic::AtomicUsize,
}

pub(super) fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(super) fn meta_str(obj: &Value, key: &str) -> Option<String> {
    obj.get("metadata")?.get(key)?.as_str().map(String::from)
}

pub(super) fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    let obj = obj.as_object_mut().expect("an object");
    obj.entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("metadata is an object")
}

pub(super) fn without_rv(obj: &Value) -> Value {
    let mut obj = obj.clone();
    meta_mut(&mut obj).remove("resourceVersion");
    obj
}

/// Stores `object` at a new resource version and tells the watches.
pub(super) fn commit(
    shared: &Shared,
    store: &mut Store,
    kind: Kind,
    key: (Kind, String, String),
    mut object: Value,
    type_: &'static str,
) -> Value {
    store.rv += 1;
    let rv = store.rv;
    let obj = object.as_object_mut().expect("an object");
    obj.insert("apiVersion".into(), json!(kind.api_version()));
    obj.insert("kind".into(), json!(kind.kind()));
    meta_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
    store.objects.insert(key, object.clone());
    let event = Event {
        rv,
        kind,
        type_,
        object: object.clone(),
    };
    store.events.push(event.clone());
    let _ = shared.events.send(event);
    object
}
