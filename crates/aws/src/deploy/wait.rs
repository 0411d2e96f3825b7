//! Polling until AWS reports a state, with patience for transient errors.

use super::*;

/// Consecutive failed polls tolerated while waiting: a deploy that waits half an hour must not die
/// of one throttled or dropped request (the SDK's own retries are over within seconds).
#[derive(Default)]
pub(super) struct Patience {
    failures: u32,
}

impl Patience {
    const LIMIT: u32 = 5;

    pub(super) async fn failed(
        &mut self,
        error: CloudError,
        waits: Waits,
        say: Progress<'_>,
        what: &str,
    ) -> Result<(), DeployError> {
        self.failures += 1;
        if self.failures >= Self::LIMIT {
            return Err(error.into());
        }
        // Twice the poll interval after the first failure, doubling.
        let delay =
            valkey_dr_core::Backoff::after(waits.poll * 2, Duration::from_secs(60), self.failures);
        say(&format!(
            "  checking {what} failed ({error}); retry {}/{} in {delay:?}",
            self.failures,
            Self::LIMIT - 1
        ));
        tokio::time::sleep(delay).await;
        Ok(())
    }

    pub(super) fn succeeded(&mut self) {
        self.failures = 0;
    }
}

pub(super) async fn wait_until<F, Fut>(
    waits: Waits,
    say: Progress<'_>,
    what: &str,
    mut done: F,
) -> Result<(), DeployError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, CloudError>>,
{
    let started = Instant::now();
    let mut patience = Patience::default();
    loop {
        match done().await {
            Ok(true) => return Ok(()),
            Ok(false) => patience.succeeded(),
            Err(e) => {
                patience.failed(e, waits, say, what).await?;
                continue;
            }
        }
        if started.elapsed() > waits.limit {
            return Err(DeployError::Timeout {
                what: what.into(),
                waited: waits.limit,
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}
