//! The gateway's errors, mapped once to gRPC codes (with google.rpc details)
//! and to HTTP statuses with a JSON body, so both transports say the same.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};
use tps_domain::validate::FieldViolation;
use tps_queue::QueueError;

/// The `domain` of every google.rpc.ErrorInfo the gateway sends.
pub const ERROR_DOMAIN: &str = "tps.v1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<FieldViolation>),
    #[error("signal {0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the {pool} queue is full; retry later")]
    QueueFull { pool: String },
    #[error("rate limited: this client sends more than the gateway's limit; retry in {}s", whole_seconds(*.retry_after))]
    RateLimited { retry_after: Duration },
    #[error("request body too large: the limit is {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("unsupported content type {0:?}: send application/json")]
    UnsupportedMediaType(String),
    #[error("no such route: {0}")]
    NoRoute(String),
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the queue is unavailable: nothing was accepted or changed; retry later")]
    QueueUnavailable,
    #[error("circuit open: the gateway is refusing work until the broker recovers; retry in {}s", whole_seconds(*.retry_after))]
    CircuitOpen { retry_after: Duration },
    #[error("not implemented yet: {0}")]
    Unimplemented(&'static str),
    #[error("internal error")]
    Internal,
}

/// Seconds for a Retry-After header: rounded up, at least 1.
pub fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

fn describe(v: &[FieldViolation]) -> String {
    v.iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Conflict(_) => Code::Aborted,
            Self::QueueFull { .. } | Self::RateLimited { .. } => Code::ResourceExhausted,
            Self::BodyTooLarge { .. } => Code::ResourceExhausted,
            Self::UnsupportedMediaType(_) => Code::InvalidArgument,
            Self::NoRoute(_) => Code::NotFound,
            Self::MethodNotAllowed { .. } => Code::Unimplemented,
            Self::QueueUnavailable | Self::CircuitOpen { .. } => Code::Unavailable,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Internal => Code::Internal,
        }
    }

    /// The machine-readable reason (ErrorInfo.reason, the `refused` metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "INVALID_ARGUMENT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::FailedPrecondition(_) => "FAILED_PRECONDITION",
            Self::Conflict(_) => "CONFLICT",
            Self::QueueFull { .. } => "QUEUE_FULL",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::BodyTooLarge { .. } => "BODY_TOO_LARGE",
            Self::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Self::NoRoute(_) => "NO_ROUTE",
            Self::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            Self::QueueUnavailable => "QUEUE_UNAVAILABLE",
            Self::CircuitOpen { .. } => "CIRCUIT_OPEN",
            Self::Unimplemented(_) => "UNIMPLEMENTED",
            Self::Internal => "INTERNAL",
        }
    }

    /// How long a client should wait before retrying, where retrying helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::QueueFull { .. } => Some(Duration::from_secs(1)),
            Self::QueueUnavailable => Some(Duration::from_secs(5)),
            Self::CircuitOpen { retry_after } | Self::RateLimited { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::BodyTooLarge { .. } => return StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => return StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed { .. } => return StatusCode::METHOD_NOT_ALLOWED,
            _ => {}
        }
        match self.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON error body of the HTTP facade: `{code, reason, message, details[]}`.
    pub fn body(&self) -> serde_json::Value {
        let details: Vec<_> = match self {
            Self::Invalid(v) => v
                .iter()
                .map(|f| serde_json::json!({"field": f.field, "description": f.description}))
                .collect(),
            _ => Vec::new(),
        };
        tps_runtime::http::error_body(
            code_name(self.code()),
            self.reason(),
            &self.to_string(),
            details,
        )
    }
}

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`, ...), as HTTP
/// error bodies carry it.
pub fn code_name(code: Code) -> &'static str {
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

impl From<tps_jidoka::BreakerError<QueueError>> for ApiError {
    fn from(e: tps_jidoka::BreakerError<QueueError>) -> Self {
        match e {
            tps_jidoka::BreakerError::Open(r) => Self::CircuitOpen {
                retry_after: r.retry_after,
            },
            tps_jidoka::BreakerError::Inner(e) => e.into(),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full(pool) => Self::QueueFull { pool },
            QueueError::Unavailable(reason) => {
                tracing::warn!(%reason, "queue unavailable");
                Self::QueueUnavailable
            }
            other => {
                tracing::error!(error = %other, "queue error");
                Self::Internal
            }
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let mut details = ErrorDetails::new();
        if let ApiError::Invalid(violations) = &e {
            for v in violations {
                details.add_bad_request_violation(&v.field, &v.description);
            }
        }
        let mut metadata = HashMap::new();
        if let ApiError::QueueFull { pool } = &e {
            metadata.insert("pool".to_owned(), pool.clone());
        }
        details.set_error_info(e.reason(), ERROR_DOMAIN, metadata);
        if let Some(after) = e.retry_after() {
            details.set_retry_info(Some(after));
        }
        tonic::Status::with_error_details(e.code(), e.to_string(), details)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.http_status(), Json(self.body())).into_response();
        if let Some(after) = self.retry_after()
            && let Ok(v) = whole_seconds(after).to_string().parse()
        {
            response.headers_mut().insert("retry-after", v);
        }
        response
    }
}
