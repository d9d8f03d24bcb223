//! Who owns `v1beta1.external.metrics.k8s.io` (docs/metrics-adapter.md, "The KEDA conflict"). There is one such
//! APIService per cluster and KEDA's metrics server usually holds it; the adapter serves the
//! group only while the APIService is absent or points at its own Service, and never
//! creates, patches or deletes one. Checked with a GET at start and every interval after.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use parking_lot::RwLock;
use tokio::task::JoinHandle;

use super::ApiError;

pub(crate) const NAME: &str = "v1beta1.external.metrics.k8s.io";
/// How often the owner is checked again after the first check.
pub(crate) const RECHECK: Duration = Duration::from_secs(30);

/// A Service, `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceName {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ServiceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("`{s}` is not NAMESPACE/NAME")),
        }
    }
}

/// What the last check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// No check has succeeded yet (the reason is the last failure).
    Unknown(String),
    Absent,
    Ours,
    /// Another Service (or kube-apiserver itself, for a local APIService) owns it.
    Other(String),
}

impl Ownership {
    /// `found` is the APIService if it exists; `ours` the Service this adapter runs behind.
    pub(crate) fn of(found: Option<&APIService>, ours: Option<&ServiceName>) -> Self {
        let Some(found) = found else {
            return Self::Absent;
        };
        let service = found.spec.as_ref().and_then(|s| s.service.as_ref());
        let Some(service) = service else {
            return Self::Other(
                "kube-apiserver itself (a local APIService with no service)".into(),
            );
        };
        let owner = ServiceName {
            namespace: service.namespace.clone().unwrap_or_default(),
            name: service.name.clone().unwrap_or_default(),
        };
        if ours == Some(&owner) {
            Self::Ours
        } else {
            Self::Other(format!("Service {owner}"))
        }
    }
}

/// The current ownership, consulted by every route of the group.
pub struct Guard {
    ours: Option<ServiceName>,
    state: RwLock<Ownership>,
}

impl Guard {
    /// Not serving until the first check.
    pub(crate) fn new(ours: Option<ServiceName>) -> Arc<Self> {
        Arc::new(Self {
            ours,
            state: RwLock::new(Ownership::Unknown("not checked yet".into())),
        })
    }

    /// A guard fixed at `state` (no API server to ask, as in tests of other parts).
    pub fn fixed(state: Ownership) -> Arc<Self> {
        Arc::new(Self {
            ours: None,
            state: RwLock::new(state),
        })
    }

    pub fn state(&self) -> Ownership {
        self.state.read().clone()
    }

    /// `Ok` while the group may be served.
    pub(crate) fn allows(&self) -> Result<(), ApiError> {
        match &*self.state.read() {
            Ownership::Absent | Ownership::Ours => Ok(()),
            Ownership::Unknown(reason) => Err(ApiError::OwnerUnknown {
                reason: reason.clone(),
            }),
            Ownership::Other(owner) => Err(ApiError::NotOwner {
                owner: owner.clone(),
                ours: self.ours_text(),
            }),
        }
    }

    fn ours_text(&self) -> String {
        self.ours.as_ref().map_or_else(
            || "none given (--external-metrics-service)".into(),
            ToString::to_string,
        )
    }

    /// One GET. A failed check keeps the last answer that was found, so a blip of the API
    /// server does not take the group away; before any answer, the group stays refused.
    pub(crate) async fn check(&self, api: &kube::Api<APIService>) -> Ownership {
        let found = match api.get_opt(NAME).await {
            Ok(found) => Ownership::of(found.as_ref(), self.ours.as_ref()),
            Err(error) => {
                let mut state = self.state.write();
                if let Ownership::Unknown(_) = *state {
                    // RBAC without `get` on apiservices lands here, and the group stays off.
                    tracing::error!(
                        apiservice = NAME,
                        %error,
                        "could not read the APIService; not serving external.metrics.k8s.io until it is read"
                    );
                    *state = Ownership::Unknown(format!("reading APIService {NAME} failed"));
                } else {
                    tracing::warn!(
                        apiservice = NAME,
                        %error,
                        "could not read the APIService; keeping the last answer"
                    );
                }
                return state.clone();
            }
        };
        let previous = std::mem::replace(&mut *self.state.write(), found.clone());
        if previous != found {
            match &found {
                Ownership::Other(owner) => tracing::error!(
                    apiservice = NAME,
                    owner = %owner,
                    ours = %self.ours_text(),
                    "another server owns the External Metrics API; not serving external.metrics.k8s.io (this adapter never changes that APIService)"
                ),
                Ownership::Ours => {
                    tracing::info!(apiservice = NAME, "APIService points at this adapter")
                }
                Ownership::Absent => tracing::info!(
                    apiservice = NAME,
                    "no APIService registered; serving direct clients"
                ),
                Ownership::Unknown(_) => {}
            }
        }
        found
    }

    /// Checks now and every `interval` until the task is aborted.
    pub(crate) fn watch(
        self: &Arc<Self>,
        client: kube::Client,
        interval: Duration,
    ) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let api: kube::Api<APIService> = kube::Api::all(client);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.check(&api).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
        APIServiceSpec, ServiceReference,
    };

    fn apiservice(service: Option<(&str, &str)>) -> APIService {
        APIService {
            spec: Some(APIServiceSpec {
                service: service.map(|(ns, name)| ServiceReference {
                    namespace: Some(ns.into()),
                    name: Some(name.into()),
                    port: Some(443),
                }),
                ..APIServiceSpec::default()
            }),
            ..APIService::default()
        }
    }

    #[test]
    fn ownership_compares_the_service_namespace_and_name() {
        let ours: ServiceName = "blend-scaler/blend-scaler-adapter".parse().unwrap();
        assert_eq!(Ownership::of(None, Some(&ours)), Ownership::Absent);
        assert_eq!(
            Ownership::of(
                Some(&apiservice(Some(("blend-scaler", "blend-scaler-adapter")))),
                Some(&ours)
            ),
            Ownership::Ours
        );
        assert_eq!(
            Ownership::of(
                Some(&apiservice(Some((
                    "keda",
                    "keda-operator-metrics-apiserver"
                )))),
                Some(&ours)
            ),
            Ownership::Other("Service keda/keda-operator-metrics-apiserver".into())
        );
        assert_eq!(
            Ownership::of(
                Some(&apiservice(Some(("other-ns", "blend-scaler-adapter")))),
                Some(&ours)
            ),
            Ownership::Other("Service other-ns/blend-scaler-adapter".into())
        );
        assert!(matches!(
            Ownership::of(Some(&apiservice(None)), Some(&ours)),
            Ownership::Other(o) if o.contains("local APIService")
        ));
        assert!(matches!(
            Ownership::of(
                Some(&apiservice(Some(("blend-scaler", "blend-scaler-adapter")))),
                None
            ),
            Ownership::Other(_)
        ));
    }

    #[test]
    fn a_service_name_is_namespace_slash_name() {
        assert!("a/b".parse::<ServiceName>().is_ok());
        for bad in ["", "a", "/b", "a/", "a/b/c"] {
            let e = bad.parse::<ServiceName>().unwrap_err();
            assert!(e.contains("NAMESPACE/NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn only_absent_or_ours_serves_and_the_refusal_names_the_owner() {
        assert!(Guard::fixed(Ownership::Absent).allows().is_ok());
        assert!(Guard::fixed(Ownership::Ours).allows().is_ok());
        let e = Guard::fixed(Ownership::Other(
            "Service keda/keda-operator-metrics-apiserver".into(),
        ))
        .allows()
        .unwrap_err();
        let (code, body) = e.status();
        assert_eq!(code, 503);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("keda/keda-operator-metrics-apiserver"),
            "{body}"
        );
        let (code, _) = Guard::new(None).allows().unwrap_err().status();
        assert_eq!(code, 503);
    }
}
