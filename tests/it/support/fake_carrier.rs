//! What the fake carriers share: how they serve, the failures a test can ask of them, and the
//! recording they hand out.

use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

/// Serves `router` on a random port of 127.0.0.1: its base URL.
pub(super) async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// What a fake answers instead of success, once.
#[derive(Debug, Clone)]
pub enum Failure {
    /// HTTP 500.
    ServerError,
    /// No answer for this long.
    Hang(Duration),
    /// Success, after this long (the carrier acts on the request at once; its answer is late).
    Late(Duration),
    /// The carrier's refusal: status, code and message.
    Reject(u16, i64, &'static str),
}

/// The bytes of every recording the fakes hand out.
pub const RECORDING_BYTES: &[u8] = b"ID3\x04fake mp3 recording bytes";
