//! The one shape of the service's background loops (reclaiming deleted
//! agents' storage, processing documents, reclaiming deleted archives): a
//! pass, and when a pass found nothing (or failed, which is logged and
//! retried), a wait for a wake-up or an idle poll before the next; started
//! at most once, stopped by aborting the task.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{AbortHandle, Abortable};
use futures::FutureExt;
use kelpie_core::Env;
use tokio::sync::Notify;

use crate::error::ServiceResult;

/// What a loop is: its task name, what its failures are logged as, how
/// long it idles between passes that found nothing, and what wakes it early.
pub(crate) struct WorkerSpec {
    pub name: &'static str,
    pub failure: &'static str,
    pub idle_poll_ms: u64,
    pub wake: Option<Arc<Notify>>,
}

#[derive(Default)]
pub(crate) struct Worker {
    running: Mutex<Option<AbortHandle>>,
}

impl Worker {
    /// Starts the loop over `pass` (which answers how much it found),
    /// unless it runs already.
    pub(crate) fn start<F, Fut>(&self, env: &Env, spec: WorkerSpec, pass: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ServiceResult<usize>> + Send + 'static,
    {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() {
            return;
        }
        let clock = env.clock.clone();
        let (handle, registration) = AbortHandle::new_pair();
        let task = async move {
            loop {
                let found = match pass().await {
                    Ok(count) => count,
                    Err(err) => {
                        tracing::warn!(%err, "{}; retrying", spec.failure);
                        0
                    }
                };
                if found == 0 {
                    let idle = clock.sleep(Duration::from_millis(spec.idle_poll_ms));
                    match &spec.wake {
                        Some(wake) => drop(futures::future::select(Box::pin(wake.notified()), idle).await),
                        None => idle.await,
                    }
                }
            }
        };
        env.spawner.spawn(spec.name, Box::pin(Abortable::new(task, registration).map(drop)));
        *running = Some(handle);
    }

    /// Stops the loop (a pass in progress is dropped at its next await).
    pub(crate) fn stop(&self) {
        if let Some(handle) = self.running.lock().unwrap_or_else(|p| p.into_inner()).take() {
            handle.abort();
        }
    }
}
