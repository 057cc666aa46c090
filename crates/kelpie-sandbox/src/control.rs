//! The connection types of a sandboxed program that serves calls (a fork
//! server): the channel an execution hands its first control connection
//! on, and the connection itself. The protocol spoken over it is
//! `served`'s; these types sit apart so that the execution contract
//! (`backend`) can name the channel without depending on the protocol.

use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;

use crate::cgroup::Cgroup;

/// The caller's end of an execution's control channel (`ExecRequest::control`): the
/// first connection to the control socket, handed over once.
#[derive(Debug, Clone)]
pub struct ControlChannel(Arc<Mutex<Option<tokio::sync::oneshot::Sender<Control>>>>);

impl PartialEq for ControlChannel {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ControlChannel {}

impl ControlChannel {
    /// The channel to put in a request, and where its connection arrives.
    pub fn new() -> (ControlChannel, tokio::sync::oneshot::Receiver<Control>) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (ControlChannel(Arc::new(Mutex::new(Some(sender)))), receiver)
    }

    /// Hands `control` to the caller, the first time only.
    pub(crate) fn deliver(&self, control: Control) {
        let sender = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(sender) = sender {
            let _ = sender.send(control);
        }
    }
}

/// A connection to a program serving calls in a sandbox.
pub struct Control {
    pub(crate) stream: UnixStream,
    /// The execution's cgroup, whose OOM kills tell a call that hit the
    /// memory limit; `None` without cgroups.
    pub(crate) cgroup: Option<Arc<Cgroup>>,
}

impl Control {
    pub(crate) fn new(stream: UnixStream, cgroup: Option<Arc<Cgroup>>) -> Self {
        Control { stream, cgroup }
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}
