//! Serving hostile callers (sprites): few connections at once, request heads that must
//! arrive quickly. Used by the gateway's per-sprite listeners and the per-sprite inside API.

use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;

/// Serves `app` on `listener` with at most `max` connections (more wait in the kernel's
/// backlog, so a caller cannot spend the server's file descriptors) and `head_timeout` for a
/// request head, until the task is aborted.
pub async fn serve<L: Listener>(mut listener: L, app: Router, max: usize, head_timeout: Duration) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (io, _) = listener.accept().await;
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(head_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
        });
    }
}
