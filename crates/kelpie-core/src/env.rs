//! The deterministic boundary.
//!
//! Protocol code never reads the clock, draws randomness or spawns tasks on
//! its own: it receives an [`Env`] and goes through its traits. Production
//! wires them to tokio and the operating system ([`Env::production`]); the
//! simulator in `kelpie-dst` wires them to a virtual clock, a seeded RNG and
//! its own single-threaded executor, so one seed replays one execution.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A boxed, sendable future, the currency of the object-safe traits below.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Time as the code under test sees it.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since an arbitrary, fixed origin; never goes backwards.
    fn monotonic_ns(&self) -> u64;

    /// Milliseconds since the Unix epoch. May jump (NTP, operator, simulation):
    /// never use it to measure durations.
    fn wall_ms(&self) -> u64;

    /// Completes once `duration` of this clock's time has passed.
    fn sleep(&self, duration: Duration) -> BoxFuture<()>;

    fn monotonic_ms(&self) -> u64 {
        self.monotonic_ns() / 1_000_000
    }
}

/// Randomness as the code under test sees it.
pub trait RngSource: Send + Sync + 'static {
    fn next_u64(&self) -> u64;

    /// Uniform in `[low, high)`. Panics if the range is empty (a caller bug).
    fn gen_range(&self, low: u64, high: u64) -> u64 {
        assert!(low < high, "empty range {low}..{high}");
        let span = high - low;
        // Rejection sampling keeps the draw unbiased.
        let zone = u64::MAX - (u64::MAX % span);
        loop {
            let draw = self.next_u64();
            if draw < zone {
                return low + draw % span;
            }
        }
    }

    /// True with probability `p` (clamped to `[0, 1]`).
    fn gen_bool(&self, p: f64) -> bool {
        let p = p.clamp(0.0, 1.0);
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Task creation as the code under test sees it.
pub trait TaskSpawner: Send + Sync + 'static {
    /// Runs `task` concurrently with the caller. `name` appears in traces.
    fn spawn(&self, name: &'static str, task: BoxFuture<()>);
}

/// The environment handed to protocol code.
#[derive(Clone)]
pub struct Env {
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn RngSource>,
    pub spawner: Arc<dyn TaskSpawner>,
}

impl Env {
    /// Real time, OS-seeded randomness and tokio tasks. Must be called inside a
    /// tokio runtime for `spawn` and `sleep` to work.
    pub fn production() -> Self {
        Env {
            clock: Arc::new(TokioClock::new()),
            rng: Arc::new(ChaChaRngSource::from_os_entropy()),
            spawner: Arc::new(TokioSpawner),
        }
    }
}

/// The production clock: `std::time` for reading, tokio's timer for sleeping.
pub struct TokioClock {
    origin: std::time::Instant,
}

impl TokioClock {
    // The production side of the boundary is the one place allowed to read real time.
    #[allow(clippy::disallowed_methods)]
    pub fn new() -> Self {
        TokioClock { origin: std::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    #[allow(clippy::disallowed_methods)]
    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    #[allow(clippy::disallowed_methods)]
    fn wall_ms(&self) -> u64 {
        let since_epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
        u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
    }

    #[allow(clippy::disallowed_methods)]
    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A ChaCha8 stream behind a mutex: seeded explicitly, or once from the OS.
pub struct ChaChaRngSource {
    rng: Mutex<ChaCha8Rng>,
}

impl ChaChaRngSource {
    pub fn from_seed(seed: u64) -> Self {
        ChaChaRngSource { rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) }
    }

    // The production side of the boundary is the one place seeded by the OS.
    #[allow(clippy::disallowed_methods)]
    pub fn from_os_entropy() -> Self {
        ChaChaRngSource { rng: Mutex::new(ChaCha8Rng::from_os_rng()) }
    }
}

impl RngSource for ChaChaRngSource {
    fn next_u64(&self) -> u64 {
        // A poisoned lock only means another thread panicked mid-draw; the
        // generator state is still a valid stream.
        let mut rng = self.rng.lock().unwrap_or_else(|poison| poison.into_inner());
        rng.next_u64()
    }
}

/// The production spawner: tokio tasks on the current runtime.
pub struct TokioSpawner;

impl TaskSpawner for TokioSpawner {
    #[allow(clippy::disallowed_methods)]
    fn spawn(&self, _name: &'static str, task: BoxFuture<()>) {
        tokio::spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_rng_replays_the_same_stream() {
        let a = ChaChaRngSource::from_seed(42);
        let b = ChaChaRngSource::from_seed(42);
        let c = ChaChaRngSource::from_seed(43);
        let draws_a: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let draws_b: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let draws_c: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(draws_a, draws_b);
        assert_ne!(draws_a, draws_c);
    }

    #[test]
    fn gen_range_stays_in_bounds_and_covers_it() {
        let rng = ChaChaRngSource::from_seed(7);
        let mut seen = [0u32; 5];
        for _ in 0..1_000 {
            let v = rng.gen_range(10, 15);
            assert!((10..15).contains(&v));
            seen[(v - 10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
    }

    #[test]
    fn gen_bool_respects_extremes() {
        let rng = ChaChaRngSource::from_seed(1);
        assert!((0..1_000).all(|_| !rng.gen_bool(0.0)));
        assert!((0..1_000).all(|_| rng.gen_bool(1.0)));
        let hits = (0..10_000).filter(|_| rng.gen_bool(0.25)).count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
    }

    #[tokio::test]
    async fn tokio_clock_sleep_advances_monotonic_time() {
        let clock = TokioClock::new();
        let before = clock.monotonic_ns();
        clock.sleep(Duration::from_millis(20)).await;
        // A sleep lasts at least its duration, so this bound cannot flake.
        assert!(clock.monotonic_ns() - before >= 20_000_000);
        assert!(clock.wall_ms() > 1_700_000_000_000, "wall clock is Unix-epoch milliseconds");
    }

    #[tokio::test]
    async fn tokio_spawner_runs_the_task() {
        let env = Env::production();
        let (tx, rx) = tokio::sync::oneshot::channel();
        env.spawner.spawn(
            "test",
            Box::pin(async move {
                tx.send(41 + 1).unwrap();
            }),
        );
        assert_eq!(rx.await.unwrap(), 42);
    }
}
