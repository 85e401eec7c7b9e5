//! A carrier that misbehaves below HTTP: it answers with a 500, never, or by closing the
//! connection, and counts the connections it holds open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    ServerError,
    Hang,
    Close,
}

/// A "carrier" that speaks just enough HTTP to misbehave: it answers requests about calls with
/// a 500, or never, or by closing the connection, in turn (its numbers API works, so that a
/// number can be linked). Its base URL, the connections it holds open now, and the requests
/// about calls it has had.
pub async fn broken_carrier() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let open = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (open2, served2) = (open.clone(), served.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let open = open2.clone();
            open.fetch_add(1, Ordering::SeqCst);
            let served = served2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned();
                if head.contains("/IncomingPhoneNumbers") {
                    let body = if head.starts_with("GET") {
                        r#"{"incoming_phone_numbers": [{"sid": "PN00000000000000000000000000000001"}]}"#
                    } else {
                        "{}"
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    drop(stream);
                    open.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                let behaviour = [Misbehaviour::ServerError, Misbehaviour::Hang, Misbehaviour::Close]
                    [served.fetch_add(1, Ordering::SeqCst) % 3];
                match behaviour {
                    Misbehaviour::Close => {}
                    Misbehaviour::ServerError => {
                        let body = r#"{"code": 20500, "message": "Internal Server Error", "status": 500}"#;
                        let head = format!(
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
                    }
                    // Reads whatever comes and never answers, until the client goes away.
                    Misbehaviour::Hang => while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {},
                }
                drop(stream);
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (base, open, served)
}
