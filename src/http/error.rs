//! One error type for every route: a status and a CouchDB-shaped body
//! `{"error": "...", "reason": "..."}`. Internal failures answer an opaque 500 and log the
//! cause chain; nothing secret is ever put in a reason.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("document update conflict")]
    Conflict,
    #[error("{0}")]
    ConflictWith(String),
    /// A peer instance failed or refused; the reason names the peer, never a secret.
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("request body too large")]
    TooLarge,
    /// 413 with its reason (a quota used up).
    #[error("{0}")]
    QuotaExceeded(String),
    /// 413 for a configured limit, with CouchDB's error name for it (`document_too_large`,
    /// `max_bulk_docs_count_exceeded`, `max_bulk_get_count_exceeded`) and its reason.
    #[error("{reason}")]
    Limit { error: &'static str, reason: String },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 408: the client stopped sending a body it had started.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("too many requests, try again later")]
    TooManyRequests,
    /// 429 with a `Retry-After` of this many seconds.
    #[error("too many attempts, try again in {0} s")]
    RetryAfter(u64),
    #[error("the storage backend is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// 503 with a `Retry-After` of 1 s: what is asked for is being set up here (nothing failed,
    /// nothing is logged); the reason says what.
    #[error("{0}")]
    NotReadyYet(String),
    /// 503 without `Retry-After`: the instance's data was written by a newer hearth, which this
    /// one neither reads nor writes; the reason says so.
    #[error("{0}")]
    NewerData(String),
    /// 507: the disk is full. Nothing was written; reads keep working.
    #[error("the server's disk is full: nothing was written, and writes are refused until space is freed (reads still work)")]
    InsufficientStorage,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::BadRequest(reason.into())
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict | ApiError::ConflictWith(_) => "conflict",
            ApiError::BadGateway(_) => "bad_gateway",
            ApiError::PreconditionFailed(_) => "precondition_failed",
            ApiError::TooLarge | ApiError::QuotaExceeded(_) => "too_large",
            ApiError::Limit { error, .. } => error,
            ApiError::UnsupportedMediaType(_) => "bad_content_type",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::TooManyRequests | ApiError::RetryAfter(_) => "too_many_requests",
            ApiError::Unavailable(_) | ApiError::NotReadyYet(_) | ApiError::NewerData(_) => "service_unavailable",
            ApiError::InsufficientStorage => "insufficient_storage",
            ApiError::Internal(_) => "internal_server_error",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("missing".into()),
            StoreError::Deleted => ApiError::NotFound("deleted".into()),
            StoreError::Conflict => ApiError::Conflict,
            StoreError::Unavailable(e) => ApiError::Unavailable(e),
            StoreError::Full(e) => {
                tracing::warn!(error = %e, "write refused: the disk is full");
                ApiError::InsufficientStorage
            }
            e @ (StoreError::Corrupt(_) | StoreError::Internal(_)) => ApiError::Internal(e.into()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        if let ApiError::Internal(e) | ApiError::Unavailable(e) = self {
            if crate::store::is_disk_full(e.as_ref()) {
                return StatusCode::INSUFFICIENT_STORAGE;
            }
        }
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict | ApiError::ConflictWith(_) => StatusCode::CONFLICT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::TooLarge | ApiError::QuotaExceeded(_) | ApiError::Limit { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests | ApiError::RetryAfter(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::NotReadyYet(_) | ApiError::NewerData(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        // A full disk met outside a store (the registry, a file) is still a full disk.
        if let ApiError::Internal(e) | ApiError::Unavailable(e) = self {
            if crate::store::is_disk_full(e.as_ref()) {
                tracing::warn!(error = ?e, "write refused: the disk is full");
                return ApiError::InsufficientStorage.error_response();
            }
        }
        match self {
            ApiError::Internal(e) | ApiError::Unavailable(e) => {
                tracing::error!(error = ?e, "request failed");
            }
            _ => {}
        }
        let reason = match self {
            ApiError::Conflict => "Document update conflict.".to_owned(),
            other => other.to_string(),
        };
        let mut resp = HttpResponse::build(self.status_code());
        match self {
            ApiError::TooManyRequests => {
                resp.insert_header(("Retry-After", "60"));
            }
            ApiError::RetryAfter(secs) => {
                resp.insert_header(("Retry-After", secs.to_string()));
            }
            ApiError::NotReadyYet(_) => {
                resp.insert_header(("Retry-After", "1"));
            }
            _ => {}
        }
        resp.json(json!({ "error": self.kind(), "reason": reason }))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Gives a JSON body to a 4xx answer that actix made without one (a method the route does not
/// take: 405; a query or body an extractor of actix's refused), so that every error a client
/// gets is `{"error", "reason"}`. Answers to `HEAD` stay empty; other headers (`Allow`) stay.
pub fn json_when_empty<B: actix_web::body::MessageBody + 'static>(
    res: actix_web::dev::ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    use actix_web::body::BodySize;
    use actix_web::middleware::ErrorHandlerResponse;
    let empty = matches!(res.response().body().size(), BodySize::Sized(0) | BodySize::None);
    if !empty || res.request().method() == actix_web::http::Method::HEAD {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let reason = status.canonical_reason().unwrap_or("the request was refused");
    let error = reason.to_ascii_lowercase().replace([' ', '-'], "_");
    let (req, old) = res.into_parts();
    let mut new = HttpResponse::build(status).json(json!({ "error": error, "reason": reason }));
    for (name, value) in old.headers() {
        if name != actix_web::http::header::CONTENT_TYPE && name != actix_web::http::header::CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(actix_web::dev::ServiceResponse::new(req, new).map_into_right_body()))
}
