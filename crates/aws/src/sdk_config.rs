//! The SDK configuration every command and the Lambda start from: the standard chain
//! (environment, profiles, `AWS_ENDPOINT_URL…`), a region even where that chain has none, and
//! deadlines on every call.

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// One attempt of a call: a regional endpoint that accepts connections and stalls must not hang
/// `promote` (the SDK sets only a connect timeout).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole call, its retries included (Route 53's throttling backoff fits in it).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The SDK configuration for asking AWS in `region` when given; otherwise in the standard chain's
/// region, and without one in `fallback` (aws.toml's primary region): Route 53 is global, but its
/// client still needs a region to find its endpoint, and an operator's machine may name none.
pub async fn load(region: Option<&str>, fallback: Option<&str>) -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    let loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
    let region = region.map(|r| Region::new(r.to_string()));
    let fallback = fallback.map(|r| Region::new(r.to_string()));
    match (region, fallback) {
        (Some(region), _) => loader.region(region).load().await,
        (None, Some(fallback)) => {
            let chain = RegionProviderChain::default_provider().or_else(fallback);
            loader.region(chain).load().await
        }
        (None, None) => loader.load().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review B5: without AWS_REGION or a profile's region, the Route 53 client and the final
    /// reconcile had no region at all, and nothing bounded a call to an endpoint that stalls.
    #[tokio::test]
    async fn a_region_always_and_a_deadline_on_every_call() {
        let chosen = load(Some("eu-west-1"), Some("us-east-2")).await;
        assert_eq!(chosen.region().map(|r| r.as_ref()), Some("eu-west-1"));
        let timeouts = chosen.timeout_config().unwrap();
        assert_eq!(timeouts.operation_timeout(), Some(OPERATION_TIMEOUT));
        assert_eq!(timeouts.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
        // The standard chain's region wins over the fallback where the machine names one.
        let named = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|r| !r.is_empty()));
        if named.is_none() && std::env::var("AWS_PROFILE").is_err() {
            let fallen_back = load(None, Some("us-east-2")).await;
            assert_eq!(fallen_back.region().map(|r| r.as_ref()), Some("us-east-2"));
        }
    }
}
