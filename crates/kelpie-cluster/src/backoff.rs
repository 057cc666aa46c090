//! Reconnect backoff, sans-IO: after each failed connection attempt to a
//! peer the next attempt waits twice as long, from
//! [`RECONNECT_BACKOFF_MS_MIN`] up to [`RECONNECT_BACKOFF_MS_MAX`], with
//! jitter (drawn by the caller from the environment's RNG) so that nodes
//! that lost a peer together do not reconnect in lockstep.

/// Wait after the first failure.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 50;
/// Longest wait between attempts.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 5_000;

const _: () = assert!(RECONNECT_BACKOFF_MS_MIN > 0 && RECONNECT_BACKOFF_MS_MIN <= RECONNECT_BACKOFF_MS_MAX);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    /// Monotonic time before which no attempt is made.
    retry_at_ms: u64,
}

impl Backoff {
    /// How long to wait at `now_ms` before attempting (0: go ahead).
    pub fn wait_ms(&self, now_ms: u64) -> u64 {
        self.retry_at_ms.saturating_sub(now_ms)
    }

    /// Records a failed attempt at `now_ms`. `jitter` in `[0, 1)` scales the
    /// wait between half and all of the doubled delay.
    pub fn failed(&mut self, now_ms: u64, jitter: f64) -> u64 {
        assert!((0.0..1.0).contains(&jitter), "jitter {jitter} outside [0, 1)");
        let doubled = RECONNECT_BACKOFF_MS_MIN.saturating_mul(1u64 << self.failures.min(20));
        let full_ms = doubled.min(RECONNECT_BACKOFF_MS_MAX);
        let wait_ms = full_ms / 2 + ((full_ms / 2) as f64 * jitter) as u64;
        self.failures = self.failures.saturating_add(1);
        self.retry_at_ms = now_ms + wait_ms;
        assert!((RECONNECT_BACKOFF_MS_MIN / 2..=RECONNECT_BACKOFF_MS_MAX).contains(&wait_ms));
        wait_ms
    }

    /// A connection succeeded: the next failure starts from the minimum again.
    pub fn connected(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_maximum_and_reset_on_success() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.wait_ms(0), 0, "first attempt is immediate");
        let waits: Vec<u64> = (0..10).map(|_| backoff.failed(1_000, 0.999_999)).collect();
        assert_eq!(&waits[..4], &[49, 99, 199, 399]);
        assert_eq!(*waits.last().unwrap(), RECONNECT_BACKOFF_MS_MAX - 1);
        assert_eq!(backoff.wait_ms(1_000 + 100), RECONNECT_BACKOFF_MS_MAX - 101);
        backoff.connected();
        assert_eq!(backoff.wait_ms(1_000), 0);
        assert_eq!(backoff.failed(0, 0.0), RECONNECT_BACKOFF_MS_MIN / 2, "no jitter: half the delay");
    }
}
