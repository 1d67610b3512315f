//! Exponential backoff with jitter for reconnecting to the control plane.

use std::hash::BuildHasher;
use std::time::Duration;

/// Delays between connection attempts: doubling from `initial` up to `max`, each drawn at
/// random from the upper half of the current step so a fleet of engines does not reconnect in
/// lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `initial` (at least 1 ms), never exceeds `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            step: initial,
        }
    }

    /// The next delay; each call doubles the step until `max`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random() % nanos.saturating_add(1))
    }

    /// Back to `initial`, after a connection that worked.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

/// A random number from the standard library's per-process random hash keys (no crate needed
/// for jitter; this is not for anything secret).
fn random() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let mut steps = Vec::new();
        for _ in 0..6 {
            steps.push(backoff.next_delay());
        }
        for (delay, step) in steps.iter().zip([100, 200, 400, 800, 800, 800]) {
            let step = Duration::from_millis(step);
            assert!(
                *delay >= step / 2 && *delay <= step,
                "{delay:?} within [{:?}, {step:?}]",
                step / 2
            );
        }
        let distinct: std::collections::HashSet<_> = (0..20)
            .map(|_| {
                backoff.reset();
                backoff.next_delay()
            })
            .collect();
        assert!(distinct.len() > 1, "jittered: {distinct:?}");
        assert!(distinct.iter().all(|d| *d <= Duration::from_millis(100)));
    }
}
