//! Graceful shutdown: SIGTERM (scale-in, `docker stop`) and Ctrl-C become one signal that
//! long-running loops check between units of work, so work in flight is finished, not lost.

use tokio::sync::watch;

/// A cloneable handle that reports when shutdown was asked for.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Triggers shutdown by hand (tests, embedded runs).
#[derive(Debug, Clone)]
pub struct Trigger {
    tx: std::sync::Arc<watch::Sender<bool>>,
}

impl Trigger {
    /// Asks every holder of the [`Shutdown`] to stop.
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// A shutdown signal fired only through the returned trigger.
    pub fn manual() -> (Shutdown, Trigger) {
        let (tx, rx) = watch::channel(false);
        (
            Shutdown { rx },
            Trigger {
                tx: std::sync::Arc::new(tx),
            },
        )
    }

    /// A shutdown signal fired by SIGTERM or SIGINT (and by the returned trigger).
    pub fn on_signals() -> (Shutdown, Trigger) {
        let (shutdown, trigger) = Self::manual();
        let on_signal = trigger.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: finishing work in flight");
            on_signal.fire();
        });
        (shutdown, trigger)
    }

    /// Whether shutdown was asked for.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is requested.
    pub async fn requested(&mut self) {
        let _ = self.rx.wait_for(|&fired| fired).await;
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
