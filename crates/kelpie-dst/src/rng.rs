//! Seeded, forkable randomness.
//!
//! Every random choice of a simulation (scheduling, latencies, faults, the
//! code under test's own draws) comes from a [`DeterministicRng`] derived from
//! the one simulation seed. Each component gets its own *fork*, a stream
//! whose seed is a fixed function of the parent seed and a label, so adding
//! draws in one component does not shift the streams of the others.

use std::sync::Mutex;

use kelpie_core::RngSource;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::hash::Fnv1a64;

/// A ChaCha8 stream with a known seed. Shareable (`Send + Sync`) so it can be
/// handed to code under test as a [`kelpie_core::RngSource`].
pub struct DeterministicRng {
    seed: u64,
    stream: Mutex<ChaCha8Rng>,
}

impl std::fmt::Debug for DeterministicRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeterministicRng").field("seed", &self.seed).finish_non_exhaustive()
    }
}

impl DeterministicRng {
    pub fn new(seed: u64) -> Self {
        DeterministicRng { seed, stream: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) }
    }

    /// The seed this stream started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// An independent stream for the component named `label`. Forking does
    /// not draw from `self`, and the same label always gives the same stream.
    pub fn fork(&self, label: &str) -> DeterministicRng {
        self.fork_indexed(label, 0)
    }

    /// Like [`fork`](Self::fork), for the `index`-th of several alike components.
    pub fn fork_indexed(&self, label: &str, index: u64) -> DeterministicRng {
        assert!(!label.is_empty(), "a fork needs a label");
        let mut hasher = Fnv1a64::new();
        hasher.write_u64(self.seed);
        hasher.write_str(label);
        hasher.write_u64(index);
        let child = DeterministicRng::new(hasher.finish());
        debug_assert_ne!(child.seed, self.seed);
        child
    }

    /// Uniform in `[0, bound)`, as an index.
    pub fn index_below(&self, bound: usize) -> usize {
        assert!(bound > 0, "index_below(0) has no valid result");
        let index = self.gen_range(0, bound as u64) as usize;
        debug_assert!(index < bound);
        index
    }

    /// Uniform in `[low, high]` (inclusive); `low` when the range is one value.
    pub fn between_inclusive(&self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "between_inclusive({low}, {high})");
        if low == high {
            return low;
        }
        match high.checked_add(1) {
            Some(end) => self.gen_range(low, end),
            None => self.gen_range(low, high),
        }
    }

    /// A uniformly random signed value in `[-magnitude, magnitude]`.
    pub fn signed_within(&self, magnitude: u64) -> i64 {
        let magnitude = magnitude.min(i64::MAX as u64);
        let draw = self.between_inclusive(0, magnitude * 2);
        let value = draw as i64 - magnitude as i64;
        debug_assert!(value.unsigned_abs() <= magnitude);
        value
    }
}

impl RngSource for DeterministicRng {
    fn next_u64(&self) -> u64 {
        // Simulations are single threaded; poison only means an earlier panic,
        // and the generator state is still a valid stream.
        let mut stream = self.stream.lock().unwrap_or_else(|poison| poison.into_inner());
        stream.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(rng: &DeterministicRng) -> Vec<u64> {
        (0..16).map(|_| rng.next_u64()).collect()
    }

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        assert_eq!(draws(&DeterministicRng::new(9)), draws(&DeterministicRng::new(9)));
        assert_ne!(draws(&DeterministicRng::new(9)), draws(&DeterministicRng::new(10)));
    }

    #[test]
    fn forks_are_stable_independent_and_do_not_consume_the_parent() {
        let parent = DeterministicRng::new(5);
        let net_a = parent.fork("network");
        let net_b = parent.fork("network");
        let disk = parent.fork("storage");
        assert_eq!(net_a.seed(), net_b.seed());
        assert_ne!(net_a.seed(), disk.seed());
        assert_ne!(parent.fork_indexed("node", 0).seed(), parent.fork_indexed("node", 1).seed());
        assert_eq!(draws(&parent), draws(&DeterministicRng::new(5)), "forking drew from the parent");
    }

    #[test]
    fn ranges_hold_their_bounds() {
        let rng = DeterministicRng::new(77);
        for _ in 0..2_000 {
            assert!(rng.index_below(3) < 3);
            assert!((4..=6).contains(&rng.between_inclusive(4, 6)));
            assert!(rng.signed_within(5).abs() <= 5);
        }
        assert_eq!(rng.between_inclusive(8, 8), 8);
        assert!(rng.between_inclusive(u64::MAX - 1, u64::MAX) >= u64::MAX - 1);
        let negatives = (0..1_000).filter(|_| rng.signed_within(10) < 0).count();
        assert!((350..650).contains(&negatives), "{negatives}");
    }
}
