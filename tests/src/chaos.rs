//! A TCP proxy in front of the AWS emulator that loses connections on purpose: some are
//! closed before a byte is forwarded (the request never arrives), others are cut when the
//! answer comes back (the request was applied, its response is lost). Both are what a
//! client of a real AWS endpoint sees on a bad network day.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Fractions, in parts per million, so they can change while the proxy runs.
#[derive(Debug, Default)]
struct Plan {
    refuse_ppm: AtomicU64,
    cut_ppm: AtomicU64,
    /// Cut the answer to the next request containing this text (once).
    cut_next: Mutex<Option<Vec<u8>>>,
}

/// What the proxy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ChaosCounts {
    pub connections: u64,
    /// Closed before forwarding anything.
    pub refused: u64,
    /// Cut as the upstream's answer arrived.
    pub cut: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    cut: AtomicU64,
}

/// A running proxy; it lives as long as its runtime.
#[derive(Debug, Clone)]
pub struct ChaosProxy {
    pub addr: SocketAddr,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
}

impl ChaosProxy {
    /// Forwards connections on `listener` to `upstream`, losing none until [`Self::set`].
    pub fn spawn(listener: TcpListener, upstream: SocketAddr) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let proxy = Self { addr, plan: Arc::default(), counters: Arc::default() };
        let running = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let proxy = running.clone();
                tokio::spawn(async move { proxy.relay(client, upstream).await });
            }
        });
        Ok(proxy)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the share of new connections closed at once and the share of answers cut.
    pub fn set(&self, refuse: f64, cut: f64) {
        let ppm = |f: f64| (f.clamp(0.0, 1.0) * 1_000_000.0) as u64;
        self.plan.refuse_ppm.store(ppm(refuse), Ordering::Relaxed);
        self.plan.cut_ppm.store(ppm(cut), Ordering::Relaxed);
    }

    /// Cuts the answer to the next request that contains `marker` (for example the AWS
    /// operation header `DynamoDB_20120810.UpdateItem`): the request is applied upstream,
    /// its answer never arrives.
    pub fn cut_next_answer_to(&self, marker: &str) {
        if let Ok(mut next) = self.plan.cut_next.lock() {
            *next = Some(marker.as_bytes().to_vec());
        }
    }

    pub fn counts(&self) -> ChaosCounts {
        ChaosCounts {
            connections: self.counters.connections.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            cut: self.counters.cut.load(Ordering::Relaxed),
        }
    }

    async fn relay(&self, client: TcpStream, upstream: SocketAddr) {
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        if draw(self.plan.refuse_ppm.load(Ordering::Relaxed)) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            // Closed unread: the client's request never reaches the emulator.
            drop(client);
            return;
        }
        let Ok(server) = TcpStream::connect(upstream).await else { return };
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let marked = Arc::new(AtomicBool::new(false));
        let plan = self.plan.clone();
        let mark = marked.clone();
        let upload = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if let Ok(mut next) = plan.cut_next.lock()
                    && next.as_ref().is_some_and(|m| contains(&buf[..n], m))
                {
                    *next = None;
                    mark.store(true, Ordering::SeqCst);
                }
                if server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = server_write.shutdown().await;
        });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if marked.swap(false, Ordering::SeqCst)
                || draw(self.plan.cut_ppm.load(Ordering::Relaxed))
            {
                self.counters.cut.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        upload.abort();
        // Dropping both halves closes the client and upstream connections.
    }
}

fn draw(ppm: u64) -> bool {
    if ppm == 0 {
        return false;
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).is_ok() && u64::from_le_bytes(bytes) % 1_000_000 < ppm
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
