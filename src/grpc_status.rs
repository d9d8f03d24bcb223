//! The one place where errors become gRPC status codes.

use tonic::{Code, Status};

use crate::engine::EngineError;

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::Metadata(_) | EngineError::InvalidQuery(_) => Code::InvalidArgument,
            EngineError::NotAllowed { .. }
            | EngineError::Refused(_)
            | EngineError::AddressRefused { .. }
            | EngineError::UpstreamRefused { .. } => Code::PermissionDenied,
            // KEDA's `fallback` engages on this.
            EngineError::Unavailable { .. } => Code::Unavailable,
            EngineError::NotEnabled(_) => Code::Unimplemented,
            EngineError::Exhausted(_) => Code::ResourceExhausted,
        };
        Status::new(code, e.to_string())
    }
}

/// The metric label for a status code.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
