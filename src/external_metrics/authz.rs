//! Who is asking and whether they may (docs/metrics-adapter.md, "Who may read"): the identity the front proxy
//! forwards in `X-Remote-*` headers (read only on a verified connection; the caller checks
//! that), and a `SubjectAccessReview` per metric read, cached briefly, behind the small
//! [`Authorizer`] trait so tests can put a local policy in its place.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;

pub(crate) const GROUP: &str = "external.metrics.k8s.io";
pub(crate) const VERSION: &str = "v1beta1";
/// Added to every authenticated user, as `k8s.io/apiserver` does (`AuthenticatedGroupAdder`).
pub(crate) const AUTHENTICATED: &str = "system:authenticated";
/// Always allowed without a review, as `k8s.io/apiserver`'s delegating authorizer does.
pub(crate) const MASTERS: &str = "system:masters";

const USER_HEADER: &str = "x-remote-user";
const GROUP_HEADER: &str = "x-remote-group";
const EXTRA_PREFIX: &str = "x-remote-extra-";

/// The user the front proxy vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub user: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The identity in `headers`, `None` without a non-empty user. Groups are every value of
    /// every `X-Remote-Group` line, in order, plus `system:authenticated`; extras are
    /// `X-Remote-Extra-<key>` with the key lower-cased and then %-unescaped (a key that does
    /// not unescape to UTF-8 is kept as sent), as `k8s.io/apiserver`'s request-header
    /// authenticator reads them. Only call this for a verified front-proxy connection.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let values = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let user = values(USER_HEADER).into_iter().find(|u| !u.is_empty())?;
        let mut groups = values(GROUP_HEADER);
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in headers.keys() {
            // HeaderName is already lower case.
            let Some(key) = name.as_str().strip_prefix(EXTRA_PREFIX) else {
                continue;
            };
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8()
                .map_or_else(|_| key.to_string(), |k| k.into_owned());
            extra.entry(key).or_default().extend(values(name.as_str()));
        }
        Some(Self {
            user,
            groups,
            extra,
        })
    }
}

/// One metric read to authorise: `list` on resource `metric` of `external.metrics.k8s.io`
/// in `namespace`, the verb kube-apiserver derives for the HPA's GET (docs/metrics-adapter.md, "Who may read").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MetricRead {
    pub user: UserInfo,
    pub namespace: String,
    pub metric: String,
}

/// The review could not be made or read; the reason is for the log, never for the caller.
#[derive(Debug, thiserror::Error)]
#[error("SubjectAccessReview failed: {0}")]
pub struct AuthzError(pub String);

/// Decides whether a read is allowed.
pub trait Authorizer: Send + Sync + 'static {
    fn allowed<'a>(&'a self, read: &'a MetricRead) -> BoxFuture<'a, Result<bool, AuthzError>>;
}

/// The `SubjectAccessReview` for `read`, exactly as the delegating authorizer of
/// `k8s.io/apiserver` sends it.
pub(crate) fn review(read: &MetricRead) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(read.user.user.clone()),
            groups: Some(read.user.groups.clone()),
            extra: (!read.user.extra.is_empty()).then(|| read.user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(read.namespace.clone()),
                verb: Some("list".into()),
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                resource: Some(read.metric.clone()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

/// Asks kube-apiserver (`POST authorization.k8s.io/v1 subjectaccessreviews`; RBAC:
/// `system:auth-delegator`).
pub(crate) struct SubjectAccessReviews {
    api: kube::Api<SubjectAccessReview>,
}

impl SubjectAccessReviews {
    pub(crate) fn new(client: kube::Client) -> Self {
        Self {
            api: kube::Api::all(client),
        }
    }
}

impl Authorizer for SubjectAccessReviews {
    fn allowed<'a>(&'a self, read: &'a MetricRead) -> BoxFuture<'a, Result<bool, AuthzError>> {
        Box::pin(async move {
            let answer = self
                .api
                .create(&PostParams::default(), &review(read))
                .await
                .map_err(|e| AuthzError(e.to_string()))?;
            // "Denied" and "no opinion" both refuse: this is the only authorizer.
            Ok(answer.status.is_some_and(|s| s.allowed))
        })
    }
}

/// How long decisions are kept (see docs/metrics-adapter.md for why these).
#[derive(Clone, Copy, Debug)]
pub struct CacheTtl {
    pub(crate) allowed: Duration,
    pub(crate) denied: Duration,
    pub(crate) capacity: u64,
}

impl Default for CacheTtl {
    fn default() -> Self {
        Self {
            allowed: Duration::from_secs(10),
            denied: Duration::from_secs(3),
            capacity: 10_000,
        }
    }
}

struct DecisionExpiry(CacheTtl);

impl moka::Expiry<MetricRead, bool> for DecisionExpiry {
    fn expire_after_create(&self, _: &MetricRead, allowed: &bool, _: Instant) -> Option<Duration> {
        Some(if *allowed {
            self.0.allowed
        } else {
            self.0.denied
        })
    }
}

/// `system:masters` allowed outright, other decisions cached per full attribute set
/// (user, groups, extra, namespace, metric); failures are not cached.
pub(crate) struct Delegated<A> {
    inner: A,
    decisions: moka::sync::Cache<MetricRead, bool>,
}

impl<A: Authorizer> Delegated<A> {
    pub(crate) fn new(inner: A, ttl: CacheTtl) -> Self {
        Self {
            inner,
            decisions: moka::sync::Cache::builder()
                .max_capacity(ttl.capacity)
                .expire_after(DecisionExpiry(ttl))
                .build(),
        }
    }
}

impl<A: Authorizer> Authorizer for Delegated<A> {
    fn allowed<'a>(&'a self, read: &'a MetricRead) -> BoxFuture<'a, Result<bool, AuthzError>> {
        Box::pin(async move {
            if read.user.groups.iter().any(|g| g == MASTERS) {
                return Ok(true);
            }
            if let Some(hit) = self.decisions.get(read) {
                return Ok(hit);
            }
            let decision = self.inner.allowed(read).await?;
            self.decisions.insert(read.clone(), decision);
            Ok(decision)
        })
    }
}

impl<A: Authorizer + ?Sized> Authorizer for Arc<A> {
    fn allowed<'a>(&'a self, read: &'a MetricRead) -> BoxFuture<'a, Result<bool, AuthzError>> {
        (**self).allowed(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use parking_lot::Mutex;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn identity_takes_every_group_and_unescapes_lower_cased_extra_keys() {
        let u = UserInfo::from_headers(&headers(&[
            ("X-Remote-User", "alice"),
            ("X-Remote-Group", "devs"),
            ("X-Remote-Group", "ops"),
            ("X-Remote-Extra-Scopes", "view"),
            ("X-Remote-Extra-Scopes", "edit"),
            ("X-Remote-Extra-Example.com%2Freason", "audit"),
            ("X-Remote-Extra-Bad%ZZ", "kept"),
        ]))
        .unwrap();
        assert_eq!(u.user, "alice");
        assert_eq!(u.groups, ["devs", "ops", AUTHENTICATED]);
        assert_eq!(u.extra["scopes"], ["view", "edit"]);
        assert_eq!(u.extra["example.com/reason"], ["audit"]);
        assert_eq!(u.extra["bad%zz"], ["kept"]);
    }

    #[test]
    fn no_user_or_an_empty_user_is_no_identity() {
        assert_eq!(
            UserInfo::from_headers(&headers(&[("X-Remote-Group", "g")])),
            None
        );
        assert_eq!(
            UserInfo::from_headers(&headers(&[("X-Remote-User", "")])),
            None
        );
        let u = UserInfo::from_headers(&headers(&[
            ("X-Remote-User", "bob"),
            ("X-Remote-Group", AUTHENTICATED),
        ]))
        .unwrap();
        assert_eq!(u.groups, [AUTHENTICATED], "not added twice");
    }

    fn read(user: &str, groups: &[&str], namespace: &str) -> MetricRead {
        MetricRead {
            user: UserInfo {
                user: user.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                extra: BTreeMap::from([("scopes".into(), vec!["view".into()])]),
            },
            namespace: namespace.into(),
            metric: "blended-replicas".into(),
        }
    }

    #[test]
    fn the_review_asks_list_on_the_metric_resource_in_the_namespace() {
        let v = serde_json::to_value(review(&read("alice", &["devs"], "production"))).unwrap();
        assert_eq!(v["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(v["kind"], "SubjectAccessReview");
        assert_eq!(
            v["spec"],
            serde_json::json!({
                "user": "alice",
                "groups": ["devs"],
                "extra": {"scopes": ["view"]},
                "resourceAttributes": {
                    "namespace": "production",
                    "verb": "list",
                    "group": "external.metrics.k8s.io",
                    "version": "v1beta1",
                    "resource": "blended-replicas"
                }
            })
        );
    }

    /// Answers from a set of allowed users and counts the questions.
    struct Policy {
        allow: &'static [&'static str],
        asked: Mutex<Vec<MetricRead>>,
        fail: bool,
    }

    impl Authorizer for Policy {
        fn allowed<'a>(&'a self, r: &'a MetricRead) -> BoxFuture<'a, Result<bool, AuthzError>> {
            self.asked.lock().push(r.clone());
            let answer = if self.fail {
                Err(AuthzError("connection refused".into()))
            } else {
                Ok(self.allow.contains(&r.user.user.as_str()))
            };
            Box::pin(async move { answer })
        }
    }

    fn policy(allow: &'static [&'static str], fail: bool) -> Arc<Policy> {
        Arc::new(Policy {
            allow,
            asked: Mutex::new(Vec::new()),
            fail,
        })
    }

    #[tokio::test]
    async fn decisions_are_cached_per_full_attribute_set_and_failures_are_not() {
        let p = policy(&["alice"], false);
        let d = Delegated::new(p.clone(), CacheTtl::default());
        assert!(d.allowed(&read("alice", &[], "production")).await.unwrap());
        assert!(d.allowed(&read("alice", &[], "production")).await.unwrap());
        assert_eq!(p.asked.lock().len(), 1, "the second read is a cache hit");
        assert!(
            !d.allowed(&read("mallory", &[], "production"))
                .await
                .unwrap()
        );
        assert!(
            !d.allowed(&read("mallory", &[], "production"))
                .await
                .unwrap()
        );
        assert!(d.allowed(&read("alice", &[], "staging")).await.unwrap());
        assert!(
            d.allowed(&read("alice", &["devs"], "staging"))
                .await
                .unwrap()
        );
        assert_eq!(p.asked.lock().len(), 4);

        let failing = policy(&["alice"], true);
        let d = Delegated::new(failing.clone(), CacheTtl::default());
        for _ in 0..2 {
            assert!(d.allowed(&read("alice", &[], "production")).await.is_err());
        }
        assert_eq!(failing.asked.lock().len(), 2);
    }

    #[tokio::test]
    async fn a_denial_is_asked_again_once_its_shorter_ttl_has_passed() {
        let p = policy(&[], false);
        let ttl = CacheTtl {
            allowed: Duration::from_secs(3600),
            denied: Duration::from_millis(50),
            capacity: 100,
        };
        let d = Delegated::new(p.clone(), ttl);
        assert!(
            !d.allowed(&read("mallory", &[], "production"))
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !d.allowed(&read("mallory", &[], "production"))
                .await
                .unwrap()
        );
        assert_eq!(p.asked.lock().len(), 2);
    }

    #[tokio::test]
    async fn system_masters_is_allowed_without_a_review() {
        let p = policy(&[], false);
        let d = Delegated::new(p.clone(), CacheTtl::default());
        assert!(
            d.allowed(&read("system:kube-aggregator", &[MASTERS], "production"))
                .await
                .unwrap()
        );
        assert!(p.asked.lock().is_empty());
    }
}
