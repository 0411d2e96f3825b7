//! valkey-dr on AWS: the same reconcile as self-hosted — observe the truth, compute the records,
//! compare-and-swap them under our ownership TXT — with ElastiCache as the truth and Route 53 as
//! the DNS backend.
//!
//! - [`discovery`]: the global datastore's PRIMARY member and its primary endpoint.
//! - [`route53`]: a [`valkey_dr_dns::DnsProvider`] over Route 53 change batches.
//! - [`handler`]: the event handler: any notification wakes a reconcile, none is trusted.
//! - [`deploy`]: `valkey-dr aws deploy | status | promote | destroy` over CloudFormation, EC2, S3
//!   and ElastiCache ([`signed`] is the small SigV4 client for the EC2 and S3 calls;
//!   [`sdk_config`] the region and deadlines every SDK client starts from).
//!
//! This crate is the only one that compiles the AWS SDK; the self-hosted build never does.

pub mod config;
pub mod deploy;
pub mod discovery;
pub mod handler;
pub mod route53;
pub mod sdk_config;
pub mod signed;

pub use config::AwsConfig;
