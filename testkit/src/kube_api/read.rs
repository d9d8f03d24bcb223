//! The read side: list and watch of a kind, in all namespaces or one, with the equality
//! forms of `labelSelector` and `fieldSelector`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::Kind;
use super::http::{Target, bad_request, reply, status};
use super::store::{Event, Shared};

/// `labelSelector` and `fieldSelector`, in the equality forms (`k=v`, `k==v`, `k!=v`, `k`,
/// `!k`); the set forms are refused rather than misread.
struct Filter {
    labels: Vec<(String, Option<String>, bool)>,
    fields: Vec<(String, String, bool)>,
}

fn parse_terms(text: &str) -> Result<Vec<(String, Option<String>, bool)>, String> {
    let mut out = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
            return Err(format!("unable to parse requirement: {term}"));
        }
        if let Some((k, v)) = term.split_once("!=") {
            out.push((k.trim().into(), Some(v.trim().into()), false));
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            out.push((k.trim().into(), Some(v.trim().into()), true));
        } else if let Some(k) = term.strip_prefix('!') {
            out.push((k.trim().into(), None, false));
        } else {
            out.push((term.into(), None, true));
        }
    }
    Ok(out)
}

impl Filter {
    fn from_query(q: &BTreeMap<String, String>) -> Result<Self, String> {
        let labels = parse_terms(q.get("labelSelector").map_or("", String::as_str))?;
        let mut fields = Vec::new();
        for (k, v, eq) in parse_terms(q.get("fieldSelector").map_or("", String::as_str))? {
            if !matches!(k.as_str(), "metadata.name" | "metadata.namespace") {
                return Err(format!(
                    "\"{k}\" is not a known field selector: only \"metadata.name\", \
                     \"metadata.namespace\""
                ));
            }
            fields.push((k, v.unwrap_or_default(), eq));
        }
        Ok(Self { labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let labels_ok = self.labels.iter().all(|(k, v, eq)| {
            let have = labels.get(k).and_then(Value::as_str);
            match (v, eq) {
                (Some(v), true) => have == Some(v.as_str()),
                (Some(v), false) => have != Some(v.as_str()),
                (None, true) => have.is_some(),
                (None, false) => have.is_none(),
            }
        });
        let fields_ok = self.fields.iter().all(|(k, v, eq)| {
            let key = k.trim_start_matches("metadata.");
            let have = obj["metadata"]
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("");
            (have == v) == *eq
        });
        labels_ok && fields_ok
    }
}

fn in_scope(t: &Target, kind: Kind, obj: &Value) -> bool {
    kind == t.kind
        && t.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
}

pub(super) fn list(shared: &Shared, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let filter = match Filter::from_query(q) {
        Ok(f) => f,
        Err(e) => return bad_request(&e),
    };
    let store = shared.store.lock();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((kind, _, _), o)| in_scope(t, *kind, o) && filter.matches(o))
        .map(|(_, o)| {
            let mut o = o.clone();
            if t.kind.builtin() {
                let m = o.as_object_mut().expect("an object");
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    reply(
        200,
        &json!({
            "kind": format!("{}List", t.kind.kind()),
            "apiVersion": t.kind.api_version(),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        }),
    )
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// `?watch=true`: from `resourceVersion` (exclusive), or the current objects as `ADDED`
/// first when it is absent or `0`; until `timeoutSeconds`, ending with a `BOOKMARK` when the
/// client allows them.
pub(super) fn watch(shared: &Arc<Shared>, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let filter = match Filter::from_query(q) {
        Ok(f) => f,
        Err(e) => return bad_request(&e),
    };
    let from = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return bad_request(&format!("invalid resource version \"{v}\""));
            }
        },
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let receiver = shared.events.subscribe();
    let store = shared.store.lock();
    let mut first: Vec<Bytes> = Vec::new();
    let mut last = store.rv;
    match from {
        Some(rv) if rv < store.compacted => {
            let s = status(
                410,
                "Expired",
                &format!("too old resource version: {rv} ({})", store.compacted),
                None,
            );
            first.push(event_line("ERROR", &s));
            let body = Body::from_stream(futures::stream::iter(
                first.into_iter().map(Ok::<_, std::io::Error>),
            ));
            return watch_response(body);
        }
        Some(rv) => {
            for e in store.events.iter().filter(|e| e.rv > rv) {
                if in_scope(t, e.kind, &e.object) && filter.matches(&e.object) {
                    first.push(event_line(e.type_, &e.object));
                }
            }
        }
        None => {
            for ((kind, _, _), o) in &store.objects {
                if in_scope(t, *kind, o) && filter.matches(o) {
                    first.push(event_line("ADDED", o));
                }
            }
        }
    }
    if from.is_some_and(|rv| rv > last) {
        last = from.unwrap_or(last);
    }
    drop(store);
    let kind = t.kind;
    let scope = Target {
        kind,
        namespace: t.namespace.clone(),
        name: None,
        status: false,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let guard = WatchGuard::new(shared.clone());
    struct Live {
        receiver: broadcast::Receiver<Event>,
        last: u64,
        scope: Target,
        filter: Filter,
        deadline: tokio::time::Instant,
        bookmarks: bool,
        done: bool,
        _guard: WatchGuard,
    }
    let live = Live {
        receiver,
        last,
        scope,
        filter,
        deadline,
        bookmarks,
        done: false,
        _guard: guard,
    };
    let rest = futures::stream::unfold(live, move |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            match tokio::time::timeout_at(s.deadline, s.receiver.recv()).await {
                Ok(Ok(e)) => {
                    if e.rv <= s.last {
                        continue;
                    }
                    s.last = e.rv;
                    if in_scope(&s.scope, e.kind, &e.object) && s.filter.matches(&e.object) {
                        let line = event_line(e.type_, &e.object);
                        return Some((Ok::<_, std::io::Error>(line), s));
                    }
                }
                // A watcher that falls this far behind is dropped, as the API server does.
                Ok(Err(_)) => return None,
                Err(_) => {
                    s.done = true;
                    if s.bookmarks {
                        let kind = s.scope.kind;
                        let marker = json!({
                            "kind": kind.kind(), "apiVersion": kind.api_version(),
                            "metadata": {"resourceVersion": s.last.to_string()},
                        });
                        return Some((Ok(event_line("BOOKMARK", &marker)), s));
                    }
                    return None;
                }
            }
        }
    });
    let head = futures::stream::iter(first.into_iter().map(Ok::<_, std::io::Error>));
    watch_response(Body::from_stream(futures::StreamExt::chain(head, rest)))
}

fn watch_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

struct WatchGuard(Arc<Shared>);

impl WatchGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared
            .open_watches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0
            .open_watches
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
