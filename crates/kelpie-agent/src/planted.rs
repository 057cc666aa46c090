//! Defects the server DST plants, one at a time, to show that its checks
//! catch each one (FoundationDB calls the idea BUGGIFY). A service carries
//! none unless a test plants one before using it; `kelpie serve` never
//! does. Each is a one-line branch at the place the defect would live.

use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// Agent creation draws a random id even when given an idempotency
    /// key, so a retried create makes a second agent.
    CreateIgnoresIdempotencyKey,
    /// Agent creation answers before the agent's commit, which runs on in
    /// the background, so an acknowledged agent may not exist (yet, or
    /// ever: the commit may fail or the process crash).
    CreateAnswersBeforeCommit,
    /// A turn forgets its idempotency key, so a retried turn runs again.
    TurnIgnoresIdempotencyKey,
    /// A synchronous turn that a shutdown stops records its end but never
    /// answers its caller.
    StoppedTurnNeverAnswers,
    /// An agent does not end the runs a gone process left open.
    SkipStaleRunRecovery,
    /// Shutdown leaves the agent actors serving.
    ShutdownLeavesAgentsServing,
    /// A folder's search ranks every passage it holds a code for without
    /// checking that its file is completed with the attempt that wrote it,
    /// so a file still being embedded, or an interrupted attempt's output,
    /// is searched.
    SearchSkipsFileStatus,
}

/// The bug planted in one service, if any; shared by its parts.
#[derive(Debug, Clone, Default)]
pub struct Planted(Arc<OnceLock<PlantedBug>>);

impl Planted {
    /// Plants `bug`; a service takes at most one, before it is used.
    pub fn plant(&self, bug: PlantedBug) {
        let planted = self.0.set(bug);
        assert!(planted.is_ok(), "one planted bug per service");
    }

    pub fn has(&self, bug: PlantedBug) -> bool {
        self.0.get() == Some(&bug)
    }
}
