//! Isolated execution of untrusted code (tool code, the code interpreter,
//! package installs): one lifecycle over interchangeable backends.
//!
//! - [`lifecycle`]: the states and transitions every sandbox follows, as a
//!   pure state machine; [`Sandbox`] holds one under one lock over a backend.
//! - [`backend`]: the [`Backend`]/[`Instance`] contract and what goes in and
//!   out of an execution ([`ExecRequest`], [`ExecOutput`]).
//! - Backends: [`process`] (bubblewrap namespaces and cgroups, the default),
//!   [`gvisor`] (gVisor's `runsc`), [`unsandboxed`] (no isolation, only when
//!   chosen). They share the root a program sees ([`rootfs`]), the cgroups
//!   ([`cgroup`]) and the host-process plumbing ([`host_exec`]). With the
//!   `sim` feature, `sim` is a simulated backend over kelpie-dst.
//! - [`served`]: calls served by a long-lived program in a sandbox (a
//!   fork server), each with its own pipes and limits; [`control`] holds
//!   its connection types, which the execution contract names.
//! - [`limits`]: every limit of an execution, with its unit.
//!
//! The threat model, per backend: `docs/sandbox.md`. Never depends on the
//! agent or the server.

pub mod backend;
pub mod cgroup;
pub mod control;
pub mod error;
pub mod gvisor;
pub mod host_exec;
pub mod lifecycle;
pub mod limits;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod served;
#[cfg(feature = "sim")]
pub mod sim;
pub mod unsandboxed;

pub use backend::{
    Backend, BackendKind, Captured, DeferredInput, ExecOutput, ExecRequest, Input, Instance, KillReason,
    Mount, SandboxSpec, SessionPipes,
};
pub use error::SandboxError;
pub use lifecycle::{SandboxState, Transition};
pub use limits::ExecLimits;
pub use sandbox::Sandbox;
