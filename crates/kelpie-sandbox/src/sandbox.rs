//! [`Sandbox`]: one sandbox's lifecycle (see [`crate::lifecycle`]) over any
//! backend, under one lock.
//!
//! The lock guards the state and the instance together and is held only to
//! check and take a transition, never across an await: a long transition
//! (create, stop, destroy) marks its intermediate state first, so a second
//! caller is refused at once rather than doing the same work twice. Each
//! long transition keeps a guard that, if its future is dropped at an await
//! point, puts the state back (a cancelled create) or finishes it (a
//! cancelled stop or destroy); the instance's own drop removes what it made.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, ExecOutput, ExecRequest, Instance, SandboxSpec};
use crate::error::SandboxError;
use crate::lifecycle::{begin, complete, SandboxState, Transition};

struct Inner {
    state: SandboxState,
    instance: Option<Arc<dyn Instance>>,
}

pub struct Sandbox {
    id: String,
    spec: SandboxSpec,
    backend: Arc<dyn Backend>,
    inner: Arc<Mutex<Inner>>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Ends a long transition when its future is dropped before it finished.
struct TransitionGuard {
    inner: Arc<Mutex<Inner>>,
    transition: Transition,
    armed: bool,
}

impl Drop for TransitionGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut inner = lock(&self.inner);
        if let Some(next) = complete(inner.state, self.transition, false) {
            inner.state = next;
        }
    }
}

impl Sandbox {
    /// A stopped sandbox named `id`; nothing exists until [`Self::create`].
    pub fn new(id: impl Into<String>, spec: SandboxSpec, backend: Arc<dyn Backend>) -> Self {
        let inner = Inner { state: SandboxState::Stopped, instance: None };
        Sandbox { id: id.into(), spec, backend, inner: Arc::new(Mutex::new(inner)) }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn state(&self) -> SandboxState {
        lock(&self.inner).state
    }

    fn take(&self, transition: Transition) -> Result<TransitionGuard, SandboxError> {
        let mut inner = lock(&self.inner);
        inner.state = begin(inner.state, transition)?;
        Ok(TransitionGuard { inner: Arc::clone(&self.inner), transition, armed: true })
    }

    /// Stopped → Creating → Running.
    pub async fn create(&self) -> Result<(), SandboxError> {
        let mut guard = self.take(Transition::Create)?;
        let created = self.backend.create(&self.id, &self.spec).await;
        guard.armed = false;
        let mut inner = lock(&self.inner);
        let instance = match created {
            Ok(instance) => instance,
            Err(err) => {
                if let Some(next) = complete(inner.state, Transition::Create, false) {
                    inner.state = next;
                }
                return Err(err);
            }
        };
        match complete(inner.state, Transition::Create, true) {
            Some(next) => {
                assert_eq!(next, SandboxState::Running);
                inner.state = next;
                inner.instance = Some(instance);
                Ok(())
            }
            // Destroyed while it was being created: the instance is dropped
            // here, which removes it.
            None => Err(SandboxError::Interrupted("destroyed")),
        }
    }

    /// Runs `request`; only while Running. Pausing or stopping the sandbox
    /// meanwhile freezes or ends the program.
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecOutput, SandboxError> {
        request.limits.check()?;
        let instance = {
            let inner = lock(&self.inner);
            begin(inner.state, Transition::Exec)?;
            Arc::clone(inner.instance.as_ref().expect("a running sandbox has an instance"))
        };
        instance.exec(request).await
    }

    /// Running → Paused.
    pub fn pause(&self) -> Result<(), SandboxError> {
        self.instant(Transition::Pause)
    }

    /// Paused → Running.
    pub fn resume(&self) -> Result<(), SandboxError> {
        self.instant(Transition::Resume)
    }

    fn instant(&self, transition: Transition) -> Result<(), SandboxError> {
        let mut inner = lock(&self.inner);
        let next = begin(inner.state, transition)?;
        let instance = inner.instance.as_ref().expect("a running or paused sandbox has an instance");
        match transition {
            Transition::Pause => instance.pause()?,
            Transition::Resume => instance.resume()?,
            other => unreachable!("{other} is not instant"),
        }
        inner.state = next;
        Ok(())
    }

    /// Running or Paused → Stopping → Stopped: everything in it ends and is
    /// removed; it can be created again.
    pub async fn stop(&self) -> Result<(), SandboxError> {
        self.tear_down(Transition::Stop).await
    }

    /// Any → Destroying → Destroyed, for good.
    pub async fn destroy(&self) -> Result<(), SandboxError> {
        self.tear_down(Transition::Destroy).await
    }

    async fn tear_down(&self, transition: Transition) -> Result<(), SandboxError> {
        // A cancelled tear-down still ends: the guard completes the
        // transition and the dropped instance removes what it made.
        let mut guard = self.take(transition)?;
        let instance = lock(&self.inner).instance.take();
        let outcome = match instance {
            Some(instance) => {
                // Paused processes cannot die until they are thawed.
                let _ = instance.resume();
                instance.destroy().await
            }
            None => Ok(()),
        };
        guard.armed = false;
        let mut inner = lock(&self.inner);
        if let Some(next) = complete(inner.state, transition, outcome.is_ok()) {
            inner.state = next;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kelpie_core::env::BoxFuture;

    use super::*;
    use crate::backend::{BackendKind, InstanceFuture};

    /// A backend whose create waits (at an await point) until released,
    /// counting the instances alive.
    struct SlowBackend {
        live: Arc<AtomicUsize>,
        release: Arc<tokio::sync::Notify>,
    }

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Instance for Counted {
        fn exec(&self, _: ExecRequest) -> InstanceFuture<'_, Result<ExecOutput, SandboxError>> {
            Box::pin(async { Err(SandboxError::InvalidRequest("nothing runs here".into())) })
        }
        fn pause(&self) -> Result<(), SandboxError> {
            Ok(())
        }
        fn resume(&self) -> Result<(), SandboxError> {
            Ok(())
        }
        fn destroy(&self) -> InstanceFuture<'_, Result<(), SandboxError>> {
            Box::pin(async { Ok(()) })
        }
    }

    impl Backend for SlowBackend {
        fn kind(&self) -> BackendKind {
            BackendKind::Simulated
        }
        fn check_available(&self) -> Result<(), SandboxError> {
            Ok(())
        }
        fn writable_owner(&self) -> Option<(u32, u32)> {
            None
        }
        fn shutdown(&self) {}
        fn create(&self, _: &str, _: &SandboxSpec) -> BoxFuture<Result<Arc<dyn Instance>, SandboxError>> {
            let (live, release) = (Arc::clone(&self.live), Arc::clone(&self.release));
            Box::pin(async move {
                // Half built when the caller may give up.
                live.fetch_add(1, Ordering::SeqCst);
                let half = Counted(live);
                release.notified().await;
                Ok(Arc::new(half) as Arc<dyn Instance>)
            })
        }
    }

    fn slow() -> (Sandbox, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
        let (live, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(tokio::sync::Notify::new()));
        let backend = SlowBackend { live: Arc::clone(&live), release: Arc::clone(&release) };
        (Sandbox::new("slow", SandboxSpec::default(), Arc::new(backend)), live, release)
    }

    #[tokio::test]
    async fn a_cancelled_create_leaves_nothing_and_the_sandbox_stopped() {
        let (sandbox, live, release) = slow();
        {
            let create = sandbox.create();
            tokio::pin!(create);
            assert!(poll_once(create.as_mut()).await.is_none());
            assert_eq!(sandbox.state(), SandboxState::Creating);
            assert_eq!(live.load(Ordering::SeqCst), 1, "half built");
        }
        assert_eq!(sandbox.state(), SandboxState::Stopped);
        assert_eq!(live.load(Ordering::SeqCst), 0, "what the create made is gone");
        release.notify_one();
        sandbox.create().await.unwrap();
        assert_eq!((sandbox.state(), live.load(Ordering::SeqCst)), (SandboxState::Running, 1));
        sandbox.destroy().await.unwrap();
        assert_eq!((sandbox.state(), live.load(Ordering::SeqCst)), (SandboxState::Destroyed, 0));
    }

    #[tokio::test]
    async fn a_destroy_during_a_create_wins_and_the_created_instance_is_dropped() {
        let (sandbox, live, release) = slow();
        let sandbox = Arc::new(sandbox);
        let creating = {
            let sandbox = Arc::clone(&sandbox);
            tokio::spawn(async move { sandbox.create().await })
        };
        while sandbox.state() != SandboxState::Creating {
            tokio::task::yield_now().await;
        }
        sandbox.destroy().await.unwrap();
        assert_eq!(sandbox.state(), SandboxState::Destroyed);
        release.notify_one();
        assert_eq!(creating.await.unwrap(), Err(SandboxError::Interrupted("destroyed")));
        assert_eq!((sandbox.state(), live.load(Ordering::SeqCst)), (SandboxState::Destroyed, 0));
    }

    /// Polls `future` once: its output if it finished.
    async fn poll_once<F: std::future::Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}
