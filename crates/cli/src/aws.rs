//! `valkey-dr aws …` (cargo feature `aws`): the Lambda's reconcile, run from an operator's machine
//! with the standard AWS configuration (profiles, region, `AWS_ENDPOINT_URL…`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use valkey_dr_aws::AwsConfig;
use valkey_dr_aws::handler::handle_with_sdk;

#[derive(Subcommand)]
pub enum AwsCommand {
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

pub async fn dispatch(command: AwsCommand) -> Result<()> {
    let (config, event) = match command {
        AwsCommand::Reconcile { config, once } => {
            if !once {
                bail!("add --once: on AWS the EventBridge schedule repeats the reconcile");
            }
            (config, serde_json::json!({ "action": "reconcile" }))
        }
        AwsCommand::HandleEvent { file, config } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let event = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            (config, event)
        }
    };
    let config = AwsConfig::load(&config)?;
    let outcome = handle_with_sdk(&event, &config).await;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    if let Some(error) = outcome.error {
        bail!("reconcile failed: {error}");
    }
    Ok(())
}
