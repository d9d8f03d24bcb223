//! What the double holds: its entities, the faults and latency it was told to answer with,
//! and what it counts and logs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use parking_lot::Mutex;

use super::{ApiVersion, Counts, CountsPrefix, DoubleOptions, Fault, Served};

#[derive(Clone, Debug)]
pub(super) struct Entity {
    pub(super) name: String,
    pub(super) counts: Counts,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Topic {
    pub(super) name: String,
    pub(super) counts: Counts,
    pub(super) subscriptions: BTreeMap<String, Entity>,
}

#[derive(Default)]
pub(super) struct Entities {
    pub(super) queues: BTreeMap<String, Entity>,
    pub(super) topics: BTreeMap<String, Topic>,
}

pub(super) struct ActiveFault {
    pub(super) fault: Fault,
    /// `None`: until cleared.
    pub(super) remaining: Option<usize>,
}

pub(super) struct Shared {
    pub(super) options: DoubleOptions,
    pub(super) addr: SocketAddr,
    pub(super) entities: Mutex<Entities>,
    pub(super) version: Mutex<Option<ApiVersion>>,
    pub(super) prefix: Mutex<CountsPrefix>,
    pub(super) fault: Mutex<Option<ActiveFault>>,
    pub(super) latency: Mutex<Duration>,
    pub(super) counts: Mutex<HashMap<String, u64>>,
    pub(super) log: Mutex<Vec<String>>,
    pub(super) served: Mutex<Vec<Served>>,
    pub(super) total: AtomicU64,
    pub(super) bearer: Mutex<HashSet<String>>,
    pub(super) token_requests: AtomicU64,
    pub(super) issued: AtomicU64,
}
