//! The Kubernetes External Metrics API (`external.metrics.k8s.io/v1beta1`, docs/metrics-adapter.md):
//! the same decision the gRPC scaler gives, for plain HPAs, configured by `BlendedMetric`s.

pub mod adapter;
pub mod apiservice;
pub mod authz;
pub mod cluster;
pub mod documents;
pub mod front_proxy;
pub mod quantity;
pub mod selector;
pub mod server;

use serde_json::Value;

use crate::engine::EngineError;
use crate::metadata::MetadataErrors;

/// The label an HPA's selector names its `BlendedMetric` by.
pub(crate) const NAME_LABEL: &str = "blend-scaler.io/name";

/// Errors of the External Metrics API; [`ApiError::status`] is the one place they become
/// HTTP codes and `metav1.Status` reasons (docs/metrics-adapter.md, "What the API answers").
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadSelector(#[from] selector::SelectorError),
    #[error("labelSelector must name one BlendedMetric with `{NAME_LABEL}=<name>` (got `{0}`)")]
    MissingReference(String),
    #[error("the server could not find the metric {metric} for {metric}.external.metrics.k8s.io")]
    NotFound { metric: String },
    #[error("BlendedMetric {namespace}/{name} has invalid metadata: {errors}")]
    InvalidMetadata {
        namespace: String,
        name: String,
        errors: MetadataErrors,
    },
    #[error("Unauthorized")]
    Unauthorized,
    #[error(
        "{metric}.external.metrics.k8s.io is forbidden: User \"{user}\" cannot list resource \"{metric}\" in API group \"external.metrics.k8s.io\" in the namespace \"{namespace}\""
    )]
    Forbidden {
        user: String,
        metric: String,
        namespace: String,
    },
    #[error("BlendedMetric {namespace}/{name}: {source}")]
    Engine {
        namespace: String,
        name: String,
        source: EngineError,
    },
    #[error(
        "the BlendedMetrics are not listed from the Kubernetes API yet, so whether {metric} exists is not known; try again"
    )]
    NotListed { metric: String },
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// The SubjectAccessReview could not be made; the cause is logged, not answered.
    #[error(
        "Internal error occurred: the authorization check (SubjectAccessReview) could not be made"
    )]
    AuthorizationFailed,
    #[error(
        "APIService {} belongs to {owner}, not to this adapter (Service {ours}); not serving external.metrics.k8s.io. This adapter never changes that APIService: beside KEDA, use the gRPC scaler",
        apiservice::NAME
    )]
    NotOwner { owner: String, ours: String },
    #[error(
        "the owner of APIService {} is not known yet ({reason}); not serving external.metrics.k8s.io until it is",
        apiservice::NAME
    )]
    OwnerUnknown { reason: String },
}

impl ApiError {
    /// The HTTP code and the `metav1.Status` document.
    pub fn status(&self) -> (u16, Value) {
        let (code, reason) = match self {
            ApiError::BadSelector(_) | ApiError::MissingReference(_) => (400, "BadRequest"),
            ApiError::NotFound { .. } | ApiError::InvalidMetadata { .. } => (404, "NotFound"),
            ApiError::Unauthorized => (401, "Unauthorized"),
            ApiError::Forbidden { .. } => (403, "Forbidden"),
            ApiError::Engine { source, .. } => match source {
                EngineError::Metadata(_) | EngineError::InvalidQuery(_) => (404, "NotFound"),
                EngineError::NotAllowed { .. }
                | EngineError::Refused(_)
                | EngineError::AddressRefused { .. }
                | EngineError::UpstreamRefused { .. } => (403, "Forbidden"),
                // The HPA holds its replica count on any error; 503 says it may pass.
                EngineError::Unavailable { .. } => (503, "ServiceUnavailable"),
                EngineError::NotEnabled(_) => (404, "NotFound"),
                EngineError::Exhausted(_) => (429, "TooManyRequests"),
            },
            ApiError::Internal(_) | ApiError::AuthorizationFailed => (500, "InternalError"),
            ApiError::NotOwner { .. }
            | ApiError::OwnerUnknown { .. }
            | ApiError::NotListed { .. } => (503, "ServiceUnavailable"),
        };
        (code, documents::status(code, reason, &self.to_string()))
    }
}
