//! The operations endpoint of the long-running binaries (worker, collector), on `--http-port`:
//!
//! - `/healthz`: 200 while the process is alive and not stuck: a unit of work (a partition, a
//!   result) held longer than `--stuck-after-secs` means it hangs, and the orchestrator should
//!   restart it (its unacknowledged message goes to another);
//! - `/readyz`: 200 once it is connected and consuming, 503 before and while it drains;
//! - `/metrics`: [`crate::metrics`] in Prometheus' text format.
//!
//! A few lines of HTTP/1.1 over a tokio listener: probes and scrapers send one small GET and
//! read one response, and a server library would be most of the binary's dependencies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::metrics::metrics;

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where and how the endpoint runs. Part of the worker's and collector's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// Port serving /healthz, /readyz and /metrics on every interface (not served when unset).
    #[arg(long = "http-port", env = "HTTP_PORT")]
    pub port: Option<u16>,
    /// A unit of work held longer than this many seconds makes /healthz fail (the process is
    /// hung and should be restarted).
    #[arg(
        long = "stuck-after-secs",
        env = "STUCK_AFTER_SECS",
        default_value_t = 900
    )]
    pub stuck_after_secs: u64,
}

/// What the probes report, set by the process's main loop.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    /// The units of work in hand (a worker prepares one partition while the model runs
    /// another): each one's serial number and when it began, in Unix milliseconds.
    busy: Mutex<BTreeMap<u64, u64>>,
    next_unit: AtomicU64,
}

static HEALTH: Health = Health::new();

/// This process's health.
pub fn health() -> &'static Health {
    &HEALTH
}

impl Health {
    /// Ready for work (connected, consuming), or not (starting, draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    const fn new() -> Self {
        Self {
            ready: AtomicBool::new(false),
            busy: Mutex::new(BTreeMap::new()),
            next_unit: AtomicU64::new(0),
        }
    }

    /// A unit of work begins; it ends when the guard is dropped, whatever its outcome.
    pub fn busy(&self) -> Busy<'_> {
        self.busy_since(now_ms())
    }

    fn busy_since(&self, since_ms: u64) -> Busy<'_> {
        let unit = self.next_unit.fetch_add(1, Ordering::Relaxed);
        self.units().insert(unit, since_ms);
        Busy(self, unit)
    }

    fn units(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        // The map stays consistent whatever panicked while holding it.
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err` with the reason when the oldest unit of work in hand has taken longer than
    /// `stuck_after`.
    fn alive(&self, stuck_after: Duration) -> Result<(), String> {
        let Some(since) = self.units().values().min().copied() else {
            return Ok(());
        };
        let held = Duration::from_millis(now_ms().saturating_sub(since));
        if held > stuck_after {
            Err(format!(
                "stuck: the work in hand began {}s ago (limit {}s)",
                held.as_secs(),
                stuck_after.as_secs()
            ))
        } else {
            Ok(())
        }
    }
}

/// A unit of work in hand (see [`Health::busy`]).
#[derive(Debug)]
pub struct Busy<'a>(&'a Health, u64);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.units().remove(&self.1);
    }
}

/// Starts serving, when a port is configured; returns the address bound.
pub async fn serve(args: &OpsArgs) -> std::io::Result<Option<SocketAddr>> {
    let Some(port) = args.port else {
        return Ok(None);
    };
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    let address = listener.local_addr()?;
    let stuck_after = Duration::from_secs(args.stuck_after_secs);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                // A client that sends nothing is dropped, not waited for.
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), answer(stream, stuck_after)).await;
            });
        }
    });
    tracing::info!(%address, "serving /healthz, /readyz and /metrics");
    Ok(Some(address))
}

async fn answer(mut stream: tokio::net::TcpStream, stuck_after: Duration) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = respond(method, path, stuck_after);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

fn respond(
    method: &str,
    path: &str,
    stuck_after: Duration,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    }
    let health = health();
    match path.split('?').next().unwrap_or("") {
        "/healthz" => match health.alive(stuck_after) {
            Ok(()) => ("200 OK", TEXT, "ok\n".into()),
            Err(reason) => ("503 Service Unavailable", TEXT, format!("{reason}\n")),
        },
        "/readyz" if health.ready.load(Ordering::Relaxed) => ("200 OK", TEXT, "ready\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            TEXT,
            "not ready: starting, or draining\n".into(),
        ),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics().render(),
        ),
        _ => (
            "404 Not Found",
            TEXT,
            "try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_held_too_long_fails_liveness() {
        let health = Health::new();
        assert!(health.alive(Duration::from_secs(1)).is_ok());
        let stuck = health.busy_since(now_ms() - 5_000);
        // Newer work beside it (the next partition prepared) does not hide it.
        let newer = health.busy();
        let reason = health.alive(Duration::from_secs(1)).unwrap_err();
        assert!(
            reason.starts_with("stuck: the work in hand began 5s ago"),
            "{reason}"
        );
        drop(stuck);
        assert!(health.alive(Duration::from_secs(1)).is_ok());
        drop(newer);
        assert!(health.units().is_empty());
    }

    #[test]
    fn routes() {
        let limit = Duration::from_secs(60);
        assert_eq!(respond("GET", "/healthz", limit).0, "200 OK");
        assert_eq!(respond("GET", "/nope", limit).0, "404 Not Found");
        assert_eq!(
            respond("POST", "/healthz", limit).0,
            "405 Method Not Allowed"
        );
        let (status, content_type, body) = respond("GET", "/metrics", limit);
        assert_eq!(status, "200 OK");
        assert!(content_type.contains("version=0.0.4"));
        assert!(body.contains("# TYPE fleet_images_scored_total counter"));
    }
}
