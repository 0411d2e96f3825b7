//! The Lambda (custom runtime `provided.al2023`): every invocation — SNS, schedule, direct — runs
//! the handler. Structured JSON logs. A failed reconcile fails the invocation (the Errors metric
//! and the template's alarm see it); an event that is not for us returns success, so that nothing
//! retries it.

use std::time::Duration;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use valkey_dr_aws::handler::{Backends, handle, respond};
use valkey_dr_aws::route53::Route53;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .without_time()
        .init();
    let config = valkey_dr_aws::AwsConfig::from_env()?;
    let targets = config.targets()?;
    let sdk = valkey_dr_aws::sdk_config::load(None, None).await;
    let dns = Route53::new(
        aws_sdk_route53::Client::new(&sdk),
        &targets.hosted_zone_id,
        Duration::from_secs(config.insync_timeout_secs),
    );
    let backends = Backends::from_sdk(&sdk, &dns);
    let (config, backends) = (&config, &backends);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let outcome = handle(&event.payload, config, backends).await;
        tracing::info!(outcome = %serde_json::to_string(&outcome).unwrap_or_default(), "handled");
        respond(&outcome).map_err(Error::from)
    }))
    .await
}
