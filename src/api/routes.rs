//! The routes of the Vocode API (`/v1`), recorded as they are added.
//!
//! Axum cannot list what a router routes, so each resource module builds its routes with [`V1`],
//! which keeps the table. A route needs its operation in `openapi.yaml`: the validated extractors
//! find the operation of the matched route, and without one they could only answer 500. The
//! builder refuses such a route when the server starts, and a test holds the table against the
//! document's operations in both directions.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{self, MethodRouter};
use axum::Router;

use super::spec::spec;
use super::{agents, calls, documents, numbers, usage};
use crate::AppState;

/// Every operation of the Vocode API this server routes.
pub fn v1() -> V1 {
    V1::default()
        .merge(documents::router())
        .merge(agents::router())
        .merge(numbers::router())
        .merge(usage::router())
        .merge(calls::router())
}

/// The method and path of every route of [`v1`].
pub fn routed() -> Vec<(Method, String)> {
    v1().routes
}

/// A router of `/v1` operations that records what it routes.
#[derive(Default)]
pub struct V1 {
    router: Router<AppState>,
    routes: Vec<(Method, String)>,
}

impl V1 {
    pub fn get<H, T>(self, path: &str, handler: H) -> V1
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.route(Method::GET, path, routing::get(handler))
    }

    pub fn post<H, T>(self, path: &str, handler: H) -> V1
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.route(Method::POST, path, routing::post(handler))
    }

    pub fn merge(mut self, other: V1) -> V1 {
        self.router = self.router.merge(other.router);
        self.routes.extend(other.routes);
        self
    }

    /// # Panics
    ///
    /// When `path` is outside `/v1` or `openapi.yaml` has no operation for it: a mistake in the
    /// code, caught when the server starts rather than as a 500 at the first request.
    fn route(mut self, method: Method, path: &str, method_router: MethodRouter<AppState>) -> V1 {
        assert!(path.starts_with("/v1/"), "{method} {path}: the Vocode API's routes are under /v1/");
        assert!(
            spec().operation(&method, path).is_some(),
            "{method} {path} is routed but openapi.yaml has no operation for it: document it there first"
        );
        self.router = self.router.route(path, method_router);
        self.routes.push((method, path.to_owned()));
        self
    }
}

impl From<V1> for Router<AppState> {
    fn from(v1: V1) -> Router<AppState> {
        v1.router
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_routed_operation_is_documented_and_every_documented_one_routed() {
        let routed = routed();
        let routed_set: BTreeSet<(String, String)> =
            routed.iter().map(|(method, path)| (method.to_string(), path.clone())).collect();
        assert_eq!(routed_set.len(), routed.len(), "a route is added twice");
        let documented: BTreeSet<(String, String)> = spec()
            .operations()
            .map(|((method, path), _)| (method.to_string(), path.clone()))
            .filter(|(_, path)| path.starts_with("/v1/"))
            .collect();
        // The Vocode API as this server documents it: 42 operations under /v1.
        assert_eq!(documented.len(), 42, "openapi.yaml's /v1 operations");
        assert_eq!(routed_set, documented, "routed (left) and documented (right) /v1 operations differ");
    }

    #[test]
    #[should_panic(expected = "GET /v1/nothing/here is routed but openapi.yaml has no operation for it")]
    fn a_route_without_an_operation_is_refused() {
        let _ = V1::default().get("/v1/nothing/here", || async {});
    }

    #[test]
    #[should_panic(expected = "the Vocode API's routes are under /v1/")]
    fn a_route_outside_v1_is_refused() {
        let _ = V1::default().get("/health", || async {});
    }
}
