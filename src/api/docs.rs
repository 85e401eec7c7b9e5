//! `GET /docs`: interactive API docs (Swagger UI) over `/openapi.json`, with every asset served by
//! the server itself, so that an operator on an offline network can read and try the API.

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;

use crate::AppState;

const PAGE: &str = include_str!("../../assets/docs.html");
const BUNDLE: &str = include_str!("../../assets/vendor/swagger-ui/swagger-ui-bundle.js");
const CSS: &str = include_str!("../../assets/vendor/swagger-ui/swagger-ui.css");
const FAVICON: &[u8] = include_bytes!("../../assets/vendor/swagger-ui/favicon-32x32.png");
const CACHE: &str = "public, max-age=86400";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/docs", get(|| async { Html(PAGE) }))
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/javascript"), (header::CACHE_CONTROL, CACHE)], BUNDLE).into_response()
            }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/css"), (header::CACHE_CONTROL, CACHE)], CSS).into_response()
            }),
        )
        .route(
            "/docs/favicon.png",
            get(|| async {
                ([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, CACHE)], FAVICON).into_response()
            }),
        )
}
