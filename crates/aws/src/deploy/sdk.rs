//! The real services behind [`super::cloud`]: CloudFormation and ElastiCache through their SDK
//! crates, EC2 and S3 through [`crate::signed`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_cloudformation::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_cloudformation::types::{Capability, Parameter, Tag};

use super::cloud::{
    Artifacts, Change, CloudError, Datastore, Group, Member, Network, Peering, PeeringSide,
    RecordSet, Stack, StackEvent, Stacks, Zones,
};
use crate::discovery::{self, DiscoveryError};
use crate::signed::{Service, SignedClient, SignedError, xml::Element};

pub struct SdkStacks {
    sdk: aws_config::SdkConfig,
}

impl SdkStacks {
    pub fn new(sdk: &aws_config::SdkConfig) -> SdkStacks {
        SdkStacks { sdk: sdk.clone() }
    }

    fn client(&self, region: &str) -> aws_sdk_cloudformation::Client {
        let config = aws_sdk_cloudformation::config::Builder::from(&self.sdk)
            .region(aws_sdk_cloudformation::config::Region::new(
                region.to_string(),
            ))
            .build();
        aws_sdk_cloudformation::Client::from_conf(config)
    }
}

/// An SDK error of any service as a [`CloudError`], with AWS's error code.
fn sdk_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    service: &'static str,
    error: aws_sdk_cloudformation::error::SdkError<E, R>,
) -> CloudError {
    CloudError::api(
        service,
        error.code(),
        DisplayErrorContext(&error).to_string(),
    )
}

fn cfn_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    error: aws_sdk_cloudformation::error::SdkError<E, R>,
) -> CloudError {
    sdk_error("CloudFormation", error)
}

/// CloudFormation answers "does not exist" with a generic ValidationError.
fn missing_stack(code: Option<&str>, message: Option<&str>) -> bool {
    code == Some("ValidationError") && message.is_some_and(|m| m.contains("does not exist"))
}

#[async_trait]
impl Stacks for SdkStacks {
    async fn describe(&self, region: &str, name: &str) -> Result<Option<Stack>, CloudError> {
        let out = match self
            .client(region)
            .describe_stacks()
            .stack_name(name)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if missing_stack(e.code(), e.message()) => return Ok(None),
            Err(e) => return Err(cfn_error(e)),
        };
        let Some(stack) = out.stacks().first() else {
            return Ok(None);
        };
        let status = stack
            .stack_status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if status == "DELETE_COMPLETE" {
            return Ok(None);
        }
        Ok(Some(Stack {
            status,
            reason: stack.stack_status_reason().map(str::to_string),
            parameters: stack
                .parameters()
                .iter()
                .filter_map(|p| {
                    Some((
                        p.parameter_key()?.to_string(),
                        p.parameter_value().unwrap_or_default().to_string(),
                    ))
                })
                .collect(),
            outputs: stack
                .outputs()
                .iter()
                .filter_map(|o| {
                    Some((
                        o.output_key()?.to_string(),
                        o.output_value().unwrap_or_default().to_string(),
                    ))
                })
                .collect(),
        }))
    }

    async fn submit(
        &self,
        region: &str,
        name: &str,
        template: &str,
        parameters: &BTreeMap<String, String>,
        exists: bool,
    ) -> Result<bool, CloudError> {
        let parameters: Vec<Parameter> = parameters
            .iter()
            .map(|(k, v)| {
                Parameter::builder()
                    .parameter_key(k)
                    .parameter_value(v)
                    .build()
            })
            .collect();
        let client = self.client(region);
        if exists {
            match client
                .update_stack()
                .stack_name(name)
                .template_body(template)
                .set_parameters(Some(parameters))
                .capabilities(Capability::CapabilityIam)
                .send()
                .await
            {
                Ok(_) => Ok(true),
                Err(e)
                    if e.code() == Some("ValidationError")
                        && e.message().is_some_and(|m| m.contains("No updates")) =>
                {
                    Ok(false)
                }
                Err(e) => Err(cfn_error(e)),
            }
        } else {
            client
                .create_stack()
                .stack_name(name)
                .template_body(template)
                .set_parameters(Some(parameters))
                .capabilities(Capability::CapabilityIam)
                .tags(Tag::builder().key("valkey-dr:stack").value(name).build())
                .send()
                .await
                .map_err(cfn_error)?;
            Ok(true)
        }
    }

    /// The stack's events back to the start of its latest operation (CloudFormation pages them,
    /// newest first, 100 at a time; a stack's whole history can be thousands).
    async fn events(&self, region: &str, name: &str) -> Result<Vec<StackEvent>, CloudError> {
        const MAX_PAGES: usize = 20;
        let client = self.client(region);
        let mut events = Vec::new();
        let mut next = None;
        for _ in 0..MAX_PAGES {
            let out = client
                .describe_stack_events()
                .stack_name(name)
                .set_next_token(next)
                .send()
                .await
                .map_err(cfn_error)?;
            let mut reached_start = false;
            for e in out.stack_events() {
                let event = StackEvent {
                    id: e.event_id().unwrap_or_default().to_string(),
                    timestamp: e.timestamp().map(|t| t.to_string()).unwrap_or_default(),
                    logical_id: e.logical_resource_id().unwrap_or_default().to_string(),
                    resource_type: e.resource_type().unwrap_or_default().to_string(),
                    status: e
                        .resource_status()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    reason: e.resource_status_reason().map(str::to_string),
                };
                reached_start |= event.logical_id == name
                    && event.status.ends_with("_IN_PROGRESS")
                    && event.reason.as_deref() == Some("User Initiated");
                events.push(event);
            }
            next = out.next_token().map(str::to_string);
            if reached_start || next.is_none() {
                break;
            }
        }
        Ok(events)
    }

    async fn delete(&self, region: &str, name: &str) -> Result<(), CloudError> {
        self.client(region)
            .delete_stack()
            .stack_name(name)
            .send()
            .await
            .map_err(cfn_error)?;
        Ok(())
    }
}

fn signed_error(service: &'static str, error: SignedError) -> CloudError {
    CloudError::api(service, error.code(), error.to_string())
}

/// EC2 through the signed Query API.
pub struct Ec2Network {
    client: SignedClient,
}

impl Ec2Network {
    pub fn new(client: SignedClient) -> Ec2Network {
        Ec2Network { client }
    }

    async fn call(
        &self,
        region: &str,
        action: &str,
        params: &[(impl AsRef<str>, impl AsRef<str>)],
    ) -> Result<Element, SignedError> {
        let text = self
            .client
            .query(Service::Ec2, region, action, params)
            .await?;
        Ok(Element::parse(&text))
    }
}

#[async_trait]
impl Network for Ec2Network {
    async fn peering(&self, region: &str, id: &str) -> Result<Option<Peering>, CloudError> {
        let answer = match self
            .call(
                region,
                "DescribeVpcPeeringConnections",
                &[("VpcPeeringConnectionId.1", id)],
            )
            .await
        {
            Ok(answer) => answer,
            Err(e) if e.code() == Some("InvalidVpcPeeringConnectionID.NotFound") => {
                return Ok(None);
            }
            Err(e) => return Err(signed_error("EC2", e)),
        };
        let Some(item) = answer
            .descendants("vpcPeeringConnectionSet")
            .first()
            .and_then(|set| set.children.first())
        else {
            return Ok(None);
        };
        let flag = |side: &str| {
            item.text_at(&[side, "peeringOptions", "allowDnsResolutionFromRemoteVpc"])
                .as_deref()
                == Some("true")
        };
        Ok(Some(Peering {
            id: id.to_string(),
            status: item.text_at(&["status", "code"]).unwrap_or_default(),
            requester_region: item
                .text_at(&["requesterVpcInfo", "region"])
                .unwrap_or_default(),
            accepter_region: item
                .text_at(&["accepterVpcInfo", "region"])
                .unwrap_or_default(),
            requester_dns: flag("requesterVpcInfo"),
            accepter_dns: flag("accepterVpcInfo"),
        }))
    }

    async fn accept_peering(&self, region: &str, id: &str) -> Result<(), CloudError> {
        self.call(
            region,
            "AcceptVpcPeeringConnection",
            &[("VpcPeeringConnectionId", id)],
        )
        .await
        .map_err(|e| signed_error("EC2", e))?;
        Ok(())
    }

    async fn allow_remote_dns(
        &self,
        region: &str,
        id: &str,
        side: PeeringSide,
    ) -> Result<(), CloudError> {
        let option = match side {
            PeeringSide::Requester => "RequesterPeeringConnectionOptions",
            PeeringSide::Accepter => "AccepterPeeringConnectionOptions",
        };
        let key = format!("{option}.AllowDnsResolutionFromRemoteVpc");
        self.call(
            region,
            "ModifyVpcPeeringConnectionOptions",
            &[("VpcPeeringConnectionId", id), (&key, "true")],
        )
        .await
        .map_err(|e| signed_error("EC2", e))?;
        Ok(())
    }

    async fn live_instances(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<String>, CloudError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut params: Vec<(String, String)> =
            vec![("Filter.1.Name".into(), "instance-id".into())];
        for (i, id) in ids.iter().enumerate() {
            params.push((format!("Filter.1.Value.{}", i + 1), id.clone()));
        }
        params.push(("Filter.2.Name".into(), "instance-state-name".into()));
        for (i, state) in ["pending", "running", "shutting-down", "stopping", "stopped"]
            .iter()
            .enumerate()
        {
            params.push((format!("Filter.2.Value.{}", i + 1), state.to_string()));
        }
        let answer = self
            .call(region, "DescribeInstances", &params)
            .await
            .map_err(|e| signed_error("EC2", e))?;
        Ok(answer
            .descendants("instancesSet")
            .iter()
            .flat_map(|set| set.children.iter())
            .filter_map(|item| item.text_at(&["instanceId"]))
            .collect())
    }
}

/// The Lambda zip's upload through a signed S3 PUT.
pub struct S3Artifacts {
    client: SignedClient,
}

impl S3Artifacts {
    pub fn new(client: SignedClient) -> S3Artifacts {
        S3Artifacts { client }
    }

    fn url(&self, region: &str, bucket: &str, key: &str) -> String {
        let suffix = crate::signed::dns_suffix(region);
        if let Some(endpoint) = self.client.endpoint_override(Service::S3) {
            // Path style for custom endpoints (moto, MinIO, VPC endpoints with a path).
            format!("{endpoint}/{bucket}/{key}")
        } else if bucket.contains('.') {
            // A dotted name as a host would not match S3's wildcard certificate.
            format!("https://s3.{region}.{suffix}/{bucket}/{key}")
        } else {
            format!("https://{bucket}.s3.{region}.{suffix}/{key}")
        }
    }
}

#[async_trait]
impl Artifacts for S3Artifacts {
    async fn ensure(
        &self,
        region: &str,
        bucket: &str,
        key: &str,
        body: &[u8],
    ) -> Result<bool, CloudError> {
        let url = self.url(region, bucket, key);
        match self
            .client
            .send(Service::S3, region, "HEAD", &url, &[], Vec::new())
            .await
        {
            Ok(_) => return Ok(false),
            // Without s3:ListBucket, S3 answers a missing object with 403, not 404: upload, and
            // let the PUT's own answer tell whether we may write.
            Err(SignedError::Api {
                status: 404 | 403, ..
            }) => {}
            Err(e) => return Err(signed_error("S3", e)),
        }
        self.client
            .send(
                Service::S3,
                region,
                "PUT",
                &url,
                &[("content-type", "application/zip".into())],
                body.to_vec(),
            )
            .await
            .map_err(|e| signed_error("S3", e))?;
        Ok(true)
    }
}

pub struct SdkDatastore {
    sdk: aws_config::SdkConfig,
}

impl SdkDatastore {
    pub fn new(sdk: &aws_config::SdkConfig) -> SdkDatastore {
        SdkDatastore { sdk: sdk.clone() }
    }
    fn client(&self, region: &str) -> aws_sdk_elasticache::Client {
        discovery::client_in(&self.sdk, region)
    }
}

fn discovery_error(error: DiscoveryError) -> CloudError {
    let code = match &error {
        DiscoveryError::Api { code, .. } => code.clone(),
        _ => None,
    };
    CloudError::api("ElastiCache", code.as_deref(), error.to_string())
}

fn elasticache_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    error: aws_sdk_elasticache::error::SdkError<E, R>,
) -> CloudError {
    sdk_error("ElastiCache", error)
}

#[async_trait]
impl Datastore for SdkDatastore {
    async fn members(&self, region: &str, global_id: &str) -> Result<Vec<Member>, CloudError> {
        Ok(discovery::members(&self.client(region), global_id)
            .await
            .map_err(discovery_error)?
            .map(|(members, _)| members)
            .unwrap_or_default())
    }

    async fn settled(&self, region: &str, global_id: &str) -> Result<bool, CloudError> {
        Ok(discovery::members(&self.client(region), global_id)
            .await
            .map_err(discovery_error)?
            .is_some_and(|(_, settled)| settled))
    }

    async fn failover(
        &self,
        region: &str,
        global_id: &str,
        to_region: &str,
        to_group: &str,
    ) -> Result<(), CloudError> {
        self.client(region)
            .failover_global_replication_group()
            .global_replication_group_id(global_id)
            .primary_region(to_region)
            .primary_replication_group_id(to_group)
            .send()
            .await
            .map_err(elasticache_error)?;
        Ok(())
    }

    async fn disassociate(
        &self,
        region: &str,
        global_id: &str,
        group: &str,
        group_region: &str,
    ) -> Result<(), CloudError> {
        self.client(region)
            .disassociate_global_replication_group()
            .global_replication_group_id(global_id)
            .replication_group_id(group)
            .replication_group_region(group_region)
            .send()
            .await
            .map_err(elasticache_error)?;
        Ok(())
    }

    async fn group(&self, region: &str, group: &str) -> Result<Option<Group>, CloudError> {
        Ok(discovery::group(&self.client(region), group)
            .await
            .map_err(discovery_error)?
            .map(|(status, endpoint)| Group { status, endpoint }))
    }
}

/// The hosted zone through the Route 53 provider (its compare-and-swap batches) and GetHostedZone.
pub struct Route53Zones {
    sdk: aws_config::SdkConfig,
}

impl Route53Zones {
    fn provider(&self, zone_id: &str) -> crate::route53::Route53 {
        crate::route53::Route53::new(
            aws_sdk_route53::Client::new(&self.sdk),
            zone_id,
            std::time::Duration::ZERO,
        )
    }
}

fn dns_error(error: valkey_dr_dns::DnsError) -> CloudError {
    CloudError::api("Route 53", None, error.to_string())
}

#[async_trait]
impl Zones for Route53Zones {
    async fn records(&self, zone_id: &str, names: &[String]) -> Result<Vec<RecordSet>, CloudError> {
        use valkey_dr_dns::DnsProvider;
        self.provider(zone_id)
            .records(names)
            .await
            .map_err(dns_error)
    }

    async fn apply(&self, zone_id: &str, changes: &[Change]) -> Result<(), CloudError> {
        use valkey_dr_dns::DnsProvider;
        self.provider(zone_id)
            .apply(changes)
            .await
            .map_err(dns_error)
    }

    async fn exists(&self, zone_id: &str) -> Result<bool, CloudError> {
        match aws_sdk_route53::Client::new(&self.sdk)
            .get_hosted_zone()
            .id(zone_id.trim_start_matches("/hostedzone/"))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("NoSuchHostedZone") => Ok(false),
            Err(e) => Err(sdk_error("Route 53", e)),
        }
    }
}

/// The real AWS behind [`super::cloud::Cloud`], from the standard SDK configuration.
pub struct RealCloud {
    pub sdk: aws_config::SdkConfig,
    stacks: SdkStacks,
    network: Ec2Network,
    artifacts: S3Artifacts,
    datastore: SdkDatastore,
    zones: Route53Zones,
}

impl RealCloud {
    /// From the standard chain, with `fallback_region` where it names none ([`crate::sdk_config`]).
    pub async fn load(fallback_region: Option<&str>) -> Result<RealCloud, SignedError> {
        RealCloud::from_sdk(crate::sdk_config::load(None, fallback_region).await)
    }

    pub fn from_sdk(sdk: aws_config::SdkConfig) -> Result<RealCloud, SignedError> {
        let signed = SignedClient::new(&sdk)?;
        Ok(RealCloud {
            stacks: SdkStacks::new(&sdk),
            network: Ec2Network::new(signed.clone()),
            artifacts: S3Artifacts::new(signed),
            datastore: SdkDatastore::new(&sdk),
            zones: Route53Zones { sdk: sdk.clone() },
            sdk,
        })
    }

    pub fn cloud(&self) -> super::cloud::Cloud<'_> {
        super::cloud::Cloud {
            stacks: &self.stacks,
            network: &self.network,
            artifacts: &self.artifacts,
            datastore: &self.datastore,
            zones: &self.zones,
        }
    }

    /// The Route 53 provider for the hosted zone.
    pub fn route53(
        &self,
        hosted_zone_id: &str,
        insync_timeout: std::time::Duration,
    ) -> crate::route53::Route53 {
        crate::route53::Route53::new(
            aws_sdk_route53::Client::new(&self.sdk),
            hosted_zone_id,
            insync_timeout,
        )
    }
}
