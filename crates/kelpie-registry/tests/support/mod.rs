//! Test helpers shared by this crate's integration tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kelpie_core::env::BoxFuture;
use kelpie_core::Clock;

/// A clock that moves only when the test says so; sleeping returns at once.
#[derive(Default)]
pub struct ManualClock {
    wall_ms: AtomicU64,
}

impl ManualClock {
    pub fn advance(&self, ms: u64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic_ns(&self) -> u64 {
        self.wall_ms.load(Ordering::SeqCst) * 1_000_000
    }
    fn wall_ms(&self) -> u64 {
        self.wall_ms.load(Ordering::SeqCst)
    }
    fn sleep(&self, _duration: Duration) -> BoxFuture<()> {
        Box::pin(async {})
    }
}
