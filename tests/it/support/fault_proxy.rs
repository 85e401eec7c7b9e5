//! A TCP proxy that can be cut: for a dependency (the database) that goes away under load and
//! comes back.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A TCP proxy in front of `upstream` (Postgres, say) that can be cut: every connection through
/// it dropped and its port closed (as when Postgres restarts), then opened again on the same port.
pub struct FaultProxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl FaultProxy {
    pub async fn start(upstream: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, mut state) = watch::channel(true);
        tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut connections = JoinSet::new();
            loop {
                match &listener {
                    Some(open) => tokio::select! {
                        accepted = open.accept() => {
                            if let Ok((mut inbound, _)) = accepted {
                                let upstream = upstream.clone();
                                connections.spawn(async move {
                                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                    }
                                });
                            }
                        }
                        changed = state.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            if !*state.borrow() {
                                listener = None;
                                connections.abort_all();
                            }
                        }
                        Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    },
                    None => {
                        if state.changed().await.is_err() {
                            break;
                        }
                        if *state.borrow() {
                            listener = Some(TcpListener::bind(addr).await.unwrap());
                        }
                    }
                }
            }
        });
        FaultProxy { addr, up }
    }

    /// Every connection through it dropped, its port closed.
    pub fn cut(&self) {
        self.up.send(true).ok();
        self.up.send_replace(false);
    }

    /// Open again, on the same port.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}
