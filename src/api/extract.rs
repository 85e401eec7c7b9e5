//! Extractors that turn a request's query string and JSON body into typed values, checked
//! against the operation the OpenAPI document declares for the matched route.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::{header, request::Parts, Method};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::spec::{spec, Operation};
use crate::error::{ApiError, Issue, Loc};

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

fn operation(method: &Method, matched: Option<&MatchedPath>) -> Result<&'static Operation, ApiError> {
    let path = matched.map(MatchedPath::as_str).unwrap_or_default();
    spec()
        .operation(method, path)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no operation in openapi.yaml for {method} {path}")))
}

/// Query parameters, validated against the operation's `parameters`.
pub struct ValidQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ValidQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let op = operation(&parts.method, parts.extensions.get::<MatchedPath>())?;
        let query = parts.uri.query().unwrap_or_default();
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let mut values = Map::new();
        let mut issues = Vec::new();
        for param in op.params.iter().filter(|p| p.location == "query") {
            // As in FastAPI, a repeated scalar parameter takes its last value.
            let raw = pairs.iter().rev().find(|(k, _)| *k == param.name);
            let loc = vec![Loc::from("query"), Loc::Field(param.name.clone())];
            match raw {
                Some((_, raw)) if raw.contains('\0') => issues.push(nul_issue(loc)),
                Some((_, raw)) => {
                    let mut value = Value::String(raw.clone());
                    match spec().validate(&param.schema, &mut value, loc) {
                        Ok(()) => {
                            values.insert(param.name.clone(), value);
                        }
                        Err(found) => issues.extend(found),
                    }
                }
                None if param.required => {
                    issues.push(Issue::new(loc, "missing", "Field required"));
                }
                None => {
                    if let Some(default) = param.schema.get("default") {
                        values.insert(param.name.clone(), default.clone());
                    }
                }
            }
        }
        if !issues.is_empty() {
            return Err(ApiError::Validation(issues));
        }
        serde_json::from_value(Value::Object(values)).map(ValidQuery).map_err(|err| {
            ApiError::Internal(anyhow::anyhow!("validated query of {} does not deserialize: {err}", op.id))
        })
    }
}

/// A JSON body, validated against the operation's `requestBody` schema.
pub struct ValidJson<T>(pub T);

impl<T, S> FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let op = operation(req.method(), req.extensions().get::<MatchedPath>())?;
        let Some(body_spec) = &op.body else {
            return Err(ApiError::Internal(anyhow::anyhow!("{} takes no request body in openapi.yaml", op.id)));
        };
        let content_type =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
        let bytes = read_body(req).await?;

        let mut value = if bytes.iter().all(u8::is_ascii_whitespace) {
            if body_spec.required {
                return Err(ApiError::invalid(Issue::new(vec!["body".into()], "missing", "Field required")));
            }
            body_spec.schema.get("default").cloned().unwrap_or(Value::Null)
        } else {
            if let Some(ct) = &content_type {
                let essence = ct.split(';').next().unwrap_or_default().trim();
                if essence != "application/json" && !essence.ends_with("+json") {
                    return Err(ApiError::invalid(Issue::new(
                        vec!["body".into()],
                        "model_attributes_type",
                        format!("The body must be JSON sent as Content-Type: application/json (got {essence})"),
                    )));
                }
            }
            serde_json::from_slice(&bytes).map_err(|err| {
                ApiError::invalid(Issue::new(
                    vec!["body".into(), Loc::Index(byte_offset(&bytes, &err))],
                    "json_invalid",
                    format!("JSON decode error: {err}"),
                ))
            })?
        };
        if let Some(at) = find_nul(&value, &mut vec!["body".into()]) {
            return Err(ApiError::invalid(nul_issue(at)));
        }
        spec().validate(&body_spec.schema, &mut value, vec!["body".into()]).map_err(ApiError::Validation)?;
        serde_json::from_value(value).map(ValidJson).map_err(|err| {
            ApiError::Internal(anyhow::anyhow!("validated body of {} does not deserialize: {err}", op.id))
        })
    }
}

async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT) {
        return Err(ApiError::PayloadTooLarge(BODY_LIMIT));
    }
    axum::body::to_bytes(req.into_body(), BODY_LIMIT).await.map_err(|err| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut too_large = false;
        while let Some(e) = source {
            too_large |= e.is::<http_body_util::LengthLimitError>();
            source = e.source();
        }
        if too_large {
            ApiError::PayloadTooLarge(BODY_LIMIT)
        } else {
            ApiError::BadRequest(format!("could not read the request body: {err}"))
        }
    })
}

/// Where in the body a JSON syntax error is, as FastAPI reports it.
fn byte_offset(bytes: &[u8], err: &serde_json::Error) -> usize {
    let mut line = 1;
    let mut offset = 0;
    for (i, b) in bytes.iter().enumerate() {
        if line == err.line() {
            offset = i;
            break;
        }
        if *b == b'\n' {
            line += 1;
        }
    }
    offset + err.column().saturating_sub(1)
}

/// Where the first NUL character is, in a string or a key: text columns of both databases cannot
/// hold one, so such input is refused up front rather than failing in storage.
fn find_nul(value: &Value, loc: &mut Vec<Loc>) -> Option<Vec<Loc>> {
    match value {
        Value::String(s) if s.contains('\0') => Some(loc.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            loc.push(Loc::Index(i));
            let found = find_nul(v, loc);
            loc.pop();
            found
        }),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            loc.push(Loc::Field(k.clone()));
            let found = if k.contains('\0') { Some(loc.clone()) } else { find_nul(v, loc) };
            loc.pop();
            found
        }),
        _ => None,
    }
}

fn nul_issue(loc: Vec<Loc>) -> Issue {
    Issue::new(loc, "string_nul", "Input should not contain the NUL character (\\u0000)")
}
