//! `valkey-dr aws …` (cargo feature `aws`): deploy, inspect, promote and destroy the AWS shape, and
//! run the Lambda's reconcile from an operator's machine — all with the standard AWS configuration
//! (profiles, region, `AWS_ENDPOINT_URL…`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use valkey_dr_aws::AwsConfig;
use valkey_dr_aws::deploy::{self, Waits, sdk::RealCloud};
use valkey_dr_aws::handler::{Outcome, handle_with_sdk};
use valkey_dr_dns::DnsProvider;

#[derive(Subcommand)]
pub enum AwsCommand {
    /// Create or update both regions in order (idempotent): the Lambda's code, the primary and
    /// secondary stacks, each updated with the other's outputs, and DNS over the VPC peering.
    Deploy {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The stacks, the global datastore's members and endpoints, and where the name points.
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make the member in REGION the primary (FailoverGlobalReplicationGroup), then move the name.
    Promote {
        region: String,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Delete everything deploy created, in reverse order, and verify nothing is left.
    Destroy {
        #[arg(long, short)]
        config: PathBuf,
        /// Required: destroy deletes both regions' caches and their data.
        #[arg(long)]
        yes: bool,
    },
    /// Reconcile the name with the global datastore's primary, as the scheduled Lambda does.
    Reconcile {
        #[arg(long, short)]
        config: PathBuf,
        /// Run one pass and exit (the only mode; the Lambda's schedule provides the repetition).
        #[arg(long)]
        once: bool,
    },
    /// Feed a saved Lambda event (SNS, EventBridge, `{"action":"reconcile"}`) to the handler
    /// exactly as the Lambda runtime would.
    HandleEvent {
        file: PathBuf,
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn say(line: &str) {
    outln!("{line}");
}

fn waits(config: &AwsConfig) -> Waits {
    config.deploy.as_ref().map(Waits::of).unwrap_or(Waits {
        poll: Duration::from_secs(10),
        limit: Duration::from_secs(3 * 3600),
        drain: Duration::from_secs(60),
    })
}

/// The config with the datastore and zone ids filled in from the primary stack when missing.
async fn resolved(config: &AwsConfig, cloud: &RealCloud) -> Result<AwsConfig> {
    let targets = deploy::targets(config, &cloud.cloud()).await?;
    Ok(AwsConfig {
        global_replication_group_id: Some(targets.global_replication_group_id),
        hosted_zone_id: Some(targets.hosted_zone_id),
        ..config.clone()
    })
}

/// One reconcile now, asking ElastiCache in `region` (the promoted one) when given.
async fn reconcile_now(config: &AwsConfig, region: Option<&str>) -> Result<Outcome> {
    let outcome = handle_with_sdk(
        &serde_json::json!({ "action": "reconcile" }),
        config,
        region,
    )
    .await;
    if let Some(error) = &outcome.error {
        bail!("reconcile failed: {error}");
    }
    Ok(outcome)
}

fn report(outcome: &Outcome) {
    outln!(
        "name → {} ({}), epoch {}, {} change(s) applied",
        outcome.primary_endpoint.as_deref().unwrap_or("?"),
        outcome.primary_region.as_deref().unwrap_or("?"),
        outcome.epoch.map(|e| e.to_string()).unwrap_or("?".into()),
        outcome.applied
    );
}

pub async fn dispatch(command: AwsCommand) -> Result<()> {
    match command {
        AwsCommand::Deploy { config } => {
            let config = AwsConfig::load(&config)?;
            let Some(plan) = &config.deploy else {
                bail!("aws config has no [deploy] table: see deploy/aws/aws.toml");
            };
            let zip = std::fs::read(&plan.lambda_zip).with_context(|| {
                format!(
                    "cannot read the Lambda zip {} (deploy.lambda_zip): build it with `make lambda`",
                    plan.lambda_zip.display()
                )
            })?;
            let cloud = RealCloud::load(config.home_region()).await?;
            let deployed =
                deploy::deploy(&config, &cloud.cloud(), &zip, waits(&config), &say).await?;
            outln!(
                "deployed: global datastore {}, hosted zone {}, peering {}; {} step(s) changed something",
                deployed.targets.global_replication_group_id,
                deployed.targets.hosted_zone_id,
                deployed.peering_connection_id,
                deployed.changed
            );
            let config = resolved(&config, &cloud).await?;
            report(&reconcile_now(&config, None).await?);
            Ok(())
        }
        AwsCommand::Status { config } => {
            let config = AwsConfig::load(&config)?;
            let cloud = RealCloud::load(config.home_region()).await?;
            let status = deploy::status(&config, &cloud.cloud()).await?;
            for (name, region, state) in &status.stacks {
                outln!("stack {name:<28} {region:<14} {state}");
            }
            let Some(targets) = &status.targets else {
                outln!("no global datastore yet (run `valkey-dr aws deploy`)");
                return Ok(());
            };
            outln!("\nglobal datastore {}", targets.global_replication_group_id);
            outln!(
                "{:<14} {:<28} {:<10} {:<12} ENDPOINT",
                "REGION",
                "GROUP",
                "ROLE",
                "STATUS"
            );
            for (m, endpoint) in &status.members {
                outln!(
                    "{:<14} {:<28} {:<10} {:<12} {}",
                    m.region,
                    m.replication_group_id,
                    m.role,
                    m.status,
                    endpoint.as_deref().unwrap_or("-")
                );
            }
            let dns = cloud.route53(&targets.hosted_zone_id, Duration::from_secs(0));
            let names = config.names();
            outln!("\nhosted zone {}", targets.hosted_zone_id);
            for record in dns
                .records(&[names.global.clone(), names.ownership.clone()])
                .await?
            {
                outln!(
                    "{:<40} {:<6} {}",
                    record.name,
                    record.rtype,
                    record.values.join(" ")
                );
            }
            Ok(())
        }
        AwsCommand::Promote { region, config } => {
            let config = AwsConfig::load(&config)?;
            let cloud = RealCloud::load(config.home_region()).await?;
            let config = resolved(&config, &cloud).await?;
            deploy::promote(&config, &cloud.cloud(), &region, waits(&config), &say).await?;
            // From the promoted region: the old primary's region may be the one that failed.
            report(&reconcile_now(&config, Some(&region)).await?);
            Ok(())
        }
        AwsCommand::Destroy { config, yes } => {
            if !yes {
                bail!("destroy deletes both regions' caches and their data; add --yes to proceed");
            }
            let config = AwsConfig::load(&config)?;
            let cloud = RealCloud::load(config.home_region()).await?;
            deploy::destroy(&config, &cloud.cloud(), waits(&config), &say).await?;
            outln!("destroyed: no replication group and no helper instance left");
            Ok(())
        }
        AwsCommand::Reconcile { config, once } => {
            if !once {
                bail!("add --once: on AWS the EventBridge schedule repeats the reconcile");
            }
            handle(config, serde_json::json!({ "action": "reconcile" })).await
        }
        AwsCommand::HandleEvent { file, config } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let event = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            handle(config, event).await
        }
    }
}

async fn handle(config: PathBuf, event: serde_json::Value) -> Result<()> {
    let mut config = AwsConfig::load(&config)?;
    if config.targets().is_err() && config.deploy.is_some() {
        config = resolved(&config, &RealCloud::load(config.home_region()).await?).await?;
    }
    let outcome = handle_with_sdk(&event, &config, None).await;
    outln!("{}", serde_json::to_string_pretty(&outcome)?);
    if let Some(error) = outcome.error {
        bail!("reconcile failed: {error}");
    }
    Ok(())
}
