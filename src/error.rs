//! The one error type of the HTTP edge, rendered in FastAPI's shapes so that the official SDKs
//! raise the errors their users already catch: `{"detail": [{loc, msg, type}]}` for validation
//! failures (422) and `{"detail": "..."}` for everything else.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// One step of a validation error's location: a field name or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Loc {
    Field(String),
    Index(usize),
}

impl From<&str> for Loc {
    fn from(s: &str) -> Self {
        Loc::Field(s.to_owned())
    }
}

impl From<usize> for Loc {
    fn from(i: usize) -> Self {
        Loc::Index(i)
    }
}

/// One entry of a 422 `detail` list, as pydantic reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Issue {
    pub loc: Vec<Loc>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Issue {
    pub fn new(loc: Vec<Loc>, kind: &str, msg: impl Into<String>) -> Self {
        Issue { loc, msg: msg.into(), kind: kind.to_owned() }
    }

    /// An issue about a field of the request body, e.g. `Issue::body(&["agent", "voice"], ..)`.
    pub fn body(path: &[&str], kind: &str, msg: impl Into<String>) -> Self {
        let mut loc = vec![Loc::from("body")];
        loc.extend(path.iter().map(|p| Loc::from(*p)));
        Issue::new(loc, kind, msg)
    }

    pub fn query(name: &str, kind: &str, msg: impl Into<String>) -> Self {
        Issue::new(vec!["query".into(), name.into()], kind, msg)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<Issue>),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(issue: Issue) -> Self {
        ApiError::Validation(vec![issue])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if let Some(reason) = crate::store::unavailable_reason(&err) {
            tracing::warn!(error = %err, "{reason}");
            ApiError::Unavailable(format!("{reason}; try again shortly"))
        } else {
            ApiError::Internal(err.into())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Validation(issues) => json!({ "detail": issues }),
            ApiError::Internal(err) => {
                // Logged once, here, where it is handled; the client gets no internals.
                tracing::error!(error = ?err, "internal error");
                json!({ "detail": "Internal Server Error" })
            }
            other => json!({ "detail": other.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::Unauthorized(_) = self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::Unavailable(_) = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
