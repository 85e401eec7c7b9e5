//! Who is calling: `Authorization: Bearer <key>` with an API key of this server, or a JWT
//! signed by the operator's identity provider when `JWT_SECRET` / `JWT_PUBLIC_KEY_PEM` is set.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::crypto::hash_api_key;
use crate::error::ApiError;
use crate::store::users;
use crate::AppState;

/// The authenticated user of a request. Every query a handler makes is scoped to it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub user_id: Uuid,
}

/// Checks JWT bearers; API keys are checked against the database.
pub struct Authenticator {
    jwt: Vec<(DecodingKey, Validation)>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

impl Authenticator {
    pub fn new(jwt_secret: Option<&str>, jwt_public_key_pem: Option<&str>) -> anyhow::Result<Self> {
        let mut jwt = Vec::new();
        if let Some(secret) = jwt_secret.filter(|s| !s.is_empty()) {
            jwt.push((DecodingKey::from_secret(secret.as_bytes()), validation(Algorithm::HS256)));
        }
        if let Some(pem) = jwt_public_key_pem.filter(|s| !s.is_empty()) {
            let pem = if pem.trim_start().starts_with("-----BEGIN") {
                pem.as_bytes().to_vec()
            } else {
                std::fs::read(pem).map_err(|err| {
                    anyhow::anyhow!("JWT_PUBLIC_KEY_PEM is neither a PEM key nor a readable file ({pem}): {err}")
                })?
            };
            let key = DecodingKey::from_rsa_pem(&pem)
                .map_err(|err| anyhow::anyhow!("JWT_PUBLIC_KEY_PEM is not an RSA public key: {err}"))?;
            jwt.push((key, validation(Algorithm::RS256)));
        }
        Ok(Authenticator { jwt })
    }

    /// The user a JWT names, if it verifies with one of the configured keys.
    fn verify_jwt(&self, token: &str) -> Option<Result<Uuid, ApiError>> {
        if self.jwt.is_empty() || token.split('.').count() != 3 {
            return None;
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Some(Err(ApiError::Unauthorized("The bearer token is not a well-formed JWT".into())));
        };
        let Some((key, validation)) = self.jwt.iter().find(|(_, v)| v.algorithms.contains(&header.alg)) else {
            return Some(Err(ApiError::Unauthorized(format!("Tokens signed with {:?} are not accepted", header.alg))));
        };
        Some(match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) => Uuid::parse_str(&data.claims.sub)
                .map_err(|_| ApiError::Unauthorized("The token's sub claim must be a user id (a UUID)".into())),
            Err(err) => Err(ApiError::Unauthorized(
                match err.into_kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "The token has expired",
                    _ => "The token's signature or claims are invalid",
                }
                .into(),
            )),
        })
    }
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_required_spec_claims(&["exp", "sub"]);
    v.leeway = 30;
    v
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::Unauthorized("Not authenticated: send Authorization: Bearer <your API key>".into()));
        };
        let value = value.to_str().unwrap_or_default().trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::Unauthorized(
                    "Invalid authentication credentials: the Authorization header must be 'Bearer <your API key>'"
                        .into(),
                ))
            }
        };
        if token.is_empty() {
            return Err(ApiError::Unauthorized("Invalid authentication credentials: the bearer token is empty".into()));
        }
        if let Some(verified) = state.auth.verify_jwt(token) {
            let user_id = verified?;
            ensure_jwt_user(state, user_id).await?;
            return Ok(Caller { user_id });
        }
        let mut handle = state.store.read().await?;
        match users::user_of_key(handle.conn(), &hash_api_key(token)).await? {
            Some(user_id) => Ok(Caller { user_id }),
            None => Err(ApiError::Unauthorized("Invalid or revoked API key".into())),
        }
    }
}

/// A JWT's user may not exist yet: the identity provider vouches for it, so it is created.
async fn ensure_jwt_user(state: &AppState, user_id: Uuid) -> Result<(), ApiError> {
    let mut handle = state.store.read().await?;
    if users::by_id(handle.conn(), user_id).await?.is_some() {
        return Ok(());
    }
    drop(handle);
    let mut tx = state.store.begin().await?;
    users::create_if_absent(tx.conn(), user_id, &format!("jwt:{user_id}")).await?;
    tx.commit().await?;
    Ok(())
}
