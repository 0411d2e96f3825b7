//! Doubling delays between retries: every retry loop of the project (a failed pass, etcd at
//! start, the HTTP listener, webhooks, AWS calls and polls) waits by this one rule.

use std::time::Duration;

/// Delays that start at `first` and double after each failure, up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            failures: 0,
        }
    }

    /// Counts one more failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Backoff::after(self.first, self.max, self.failures)
    }

    /// Failures counted since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay after `failures` in a row: `first`, then twice as long each time, at most `max`.
    pub fn after(first: Duration, max: Duration, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        first.saturating_mul(1 << doublings).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let delays: Vec<u128> = (0..7).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.failures(), 7);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(200));
    }

    #[test]
    fn never_overflows() {
        let s = Duration::from_secs(1);
        assert_eq!(Backoff::after(s, Duration::MAX, u32::MAX), s * (1 << 20));
        assert_eq!(
            Backoff::after(Duration::MAX, Duration::from_secs(30), 40),
            Duration::from_secs(30)
        );
        assert_eq!(Backoff::after(s, Duration::from_secs(30), 0), s);
    }
}
