//! Waiting for a condition the cluster or a node reaches by itself: one loop for every such wait.

use std::time::{Duration, Instant};

/// Runs `check` every `every` until it yields a value, or `within` passed (`None`). `check` runs
/// at least once, and once more at the deadline.
pub async fn until<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(reached) = check().await {
            return Some(reached);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        tokio::time::sleep(every.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_returns_the_first_value_or_none_once_the_time_is_up() {
        let mut calls = 0;
        let third = until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            async || {
                calls += 1;
                (calls == 3).then_some(calls)
            },
        )
        .await;
        assert_eq!(third, Some(3));

        let mut calls = 0;
        let never: Option<()> = until(
            Duration::from_millis(20),
            Duration::from_secs(60),
            async || {
                calls += 1;
                None
            },
        )
        .await;
        assert_eq!(never, None);
        // Once at once, once more at the deadline (the wait never runs past it).
        assert_eq!(calls, 2);
    }
}
