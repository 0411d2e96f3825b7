//! The real service clients behind deploy, status and promote, against a moto server on loopback:
//! EC2 VPC peering and its DNS options, S3 artifact upload, CloudFormation stacks, ElastiCache
//! replication groups (global datastore calls through scripts/moto_server.py's stand-in), and SNS
//! delivering an ElastiCache notification to the handler.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use valkey_dr_aws::AwsConfig;
use valkey_dr_aws::deploy::cloud::{Artifacts, Datastore, Network, PeeringSide, Stacks};
use valkey_dr_aws::deploy::sdk::{Ec2Network, S3Artifacts, SdkDatastore, SdkStacks};
use valkey_dr_aws::handler::{Backends, handle};
use valkey_dr_aws::route53::Route53;
use valkey_dr_aws::signed::{Service, SignedClient, xml::Element};
use valkey_dr_dns::DnsProvider;

async fn query(
    client: &SignedClient,
    service: Service,
    region: &str,
    action: &str,
    params: &[(&str, &str)],
) -> Element {
    let text = client
        .query(service, region, action, params)
        .await
        .unwrap_or_else(|e| panic!("{action}: {e}"));
    Element::parse(&text)
}

fn text(answer: &Element, name: &str) -> String {
    answer.descendants(name)[0].text.trim().to_string()
}

#[tokio::test]
async fn ec2_peering_accept_and_dns_options() {
    let moto = common::moto().await;
    let client = SignedClient::new(&common::sdk(&moto, "us-east-1")).unwrap();
    let vpc = |region: &'static str, cidr: &'static str| {
        let client = client.clone();
        async move {
            let answer = query(
                &client,
                Service::Ec2,
                region,
                "CreateVpc",
                &[("CidrBlock", cidr)],
            )
            .await;
            text(&answer, "vpcId")
        }
    };
    let primary_vpc = vpc("us-east-1", "10.1.0.0/16").await;
    let secondary_vpc = vpc("us-east-2", "10.2.0.0/16").await;
    let answer = query(
        &client,
        Service::Ec2,
        "us-east-1",
        "CreateVpcPeeringConnection",
        &[
            ("VpcId", &primary_vpc),
            ("PeerVpcId", &secondary_vpc),
            ("PeerRegion", "us-east-2"),
        ],
    )
    .await;
    let id = text(&answer, "vpcPeeringConnectionId");

    let network = Ec2Network::new(client.clone());
    let peering = network.peering("us-east-1", &id).await.unwrap().unwrap();
    assert_eq!(peering.status, "pending-acceptance");
    assert_eq!(
        (
            peering.requester_region.as_str(),
            peering.accepter_region.as_str()
        ),
        ("us-east-1", "us-east-2")
    );
    assert!(!peering.requester_dns && !peering.accepter_dns);

    network.accept_peering("us-east-2", &id).await.unwrap();
    network
        .allow_remote_dns("us-east-1", &id, PeeringSide::Requester)
        .await
        .unwrap();
    network
        .allow_remote_dns("us-east-2", &id, PeeringSide::Accepter)
        .await
        .unwrap();
    let peering = network.peering("us-east-1", &id).await.unwrap().unwrap();
    assert_eq!(peering.status, "active");
    assert!(peering.requester_dns && peering.accepter_dns, "{peering:?}");

    assert_eq!(
        network
            .peering("us-east-1", "pcx-0000000000000000f")
            .await
            .unwrap(),
        None
    );
    // An EC2 error carries AWS's code and never the secret key.
    let error = client
        .query(
            Service::Ec2,
            "us-east-1",
            "CreateVpc",
            &[("CidrBlock", "not-a-cidr")],
        )
        .await
        .unwrap_err();
    assert!(error.code().is_some(), "{error}");
    assert!(!format!("{error} {error:?}").contains(common::SECRET_KEY));
}

#[tokio::test]
async fn ec2_live_instances_follow_termination() {
    let moto = common::moto().await;
    let client = SignedClient::new(&common::sdk(&moto, "us-east-2")).unwrap();
    let answer = query(
        &client,
        Service::Ec2,
        "us-east-2",
        "RunInstances",
        &[
            ("ImageId", "ami-12c6146b"),
            ("InstanceType", "t4g.micro"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
        ],
    )
    .await;
    let instance = text(&answer, "instanceId");
    let network = Ec2Network::new(client.clone());
    let ids = vec![instance.clone(), "i-0000000000000000f".to_string()];
    assert_eq!(
        network.live_instances("us-east-2", &ids).await.unwrap(),
        vec![instance.clone()]
    );
    // Another region does not see it.
    assert!(
        network
            .live_instances("us-east-1", &ids)
            .await
            .unwrap()
            .is_empty()
    );
    query(
        &client,
        Service::Ec2,
        "us-east-2",
        "TerminateInstances",
        &[("InstanceId.1", &instance)],
    )
    .await;
    assert!(
        network
            .live_instances("us-east-2", &ids)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn s3_artifact_is_uploaded_once() {
    let moto = common::moto().await;
    let client = SignedClient::new(&common::sdk(&moto, "us-east-1")).unwrap();
    let bucket_url = format!("{}/artifacts", client.endpoint(Service::S3, "us-east-1"));
    client
        .send(
            Service::S3,
            "us-east-1",
            "PUT",
            &bucket_url,
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    let artifacts = S3Artifacts::new(client.clone());
    let zip = b"PK\x03\x04 a lambda".to_vec();
    let key = valkey_dr_aws::deploy::artifact_key(&zip);
    assert!(
        artifacts
            .ensure("us-east-1", "artifacts", &key, &zip)
            .await
            .unwrap()
    );
    assert!(
        !artifacts
            .ensure("us-east-1", "artifacts", &key, &zip)
            .await
            .unwrap()
    );
    let stored = client
        .send(
            Service::S3,
            "us-east-1",
            "GET",
            &format!("{bucket_url}/{key}"),
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(stored, zip);
    // A missing bucket is an error with S3's code, not a silent success.
    let error = artifacts
        .ensure("us-east-1", "no-such-bucket", &key, &zip)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("NoSuchBucket"), "{error}");
}

#[tokio::test]
async fn cloudformation_stack_lifecycle() {
    let moto = common::moto().await;
    let stacks = SdkStacks::new(&common::sdk(&moto, "us-east-1"));
    let template = r#"{
      "Parameters": { "Name": { "Type": "String" } },
      "Resources": { "Topic": { "Type": "AWS::SNS::Topic", "Properties": { "TopicName": { "Ref": "Name" } } } },
      "Outputs": { "TopicArn": { "Value": { "Ref": "Topic" } } }
    }"#;
    let parameters = BTreeMap::from([("Name".to_string(), "valkey-dr-events".to_string())]);
    assert_eq!(stacks.describe("us-east-2", "vdr").await.unwrap(), None);
    assert!(
        stacks
            .submit("us-east-2", "vdr", template, &parameters, false)
            .await
            .unwrap()
    );
    let stack = stacks.describe("us-east-2", "vdr").await.unwrap().unwrap();
    assert!(stack.complete(), "{stack:?}");
    assert_eq!(stack.parameters, parameters);
    assert!(
        stack.outputs["TopicArn"].ends_with(":valkey-dr-events"),
        "{stack:?}"
    );
    let events = stacks.events("us-east-2", "vdr").await.unwrap();
    // Newest first, as CloudFormation lists them (moto records the stack's own events only).
    let statuses: Vec<&str> = events.iter().map(|e| e.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["CREATE_COMPLETE", "CREATE_IN_PROGRESS"],
        "{events:?}"
    );
    // Stacks are per region.
    assert_eq!(stacks.describe("us-east-1", "vdr").await.unwrap(), None);
    stacks.delete("us-east-2", "vdr").await.unwrap();
    assert_eq!(stacks.describe("us-east-2", "vdr").await.unwrap(), None);
}

/// Two replication groups in two regions joined in a global datastore (the stand-in's calls).
async fn global_datastore(moto: &common::Moto) -> (SdkDatastore, aws_config::SdkConfig) {
    common::global_datastore(
        moto,
        ("us-east-1", "vdr-primary"),
        ("us-east-2", "vdr-secondary"),
    )
    .await;
    let sdk = common::sdk(moto, "us-east-1");
    (SdkDatastore::new(&sdk), sdk)
}

/// Like AWS, a failover takes a while (the stand-in: one second without a PRIMARY); ElastiCache
/// notifies FailoverComplete after it.
async fn failover_complete(datastore: &SdkDatastore) {
    for _ in 0..40 {
        if datastore
            .settled("us-east-2", "ldgnf-valkey-dr")
            .await
            .unwrap()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the failover did not complete");
}

#[tokio::test]
async fn datastore_members_failover_endpoint_disassociate() {
    let moto = common::moto().await;
    let (datastore, _) = global_datastore(&moto).await;
    let roles = |asked_in: &'static str| {
        let datastore = &datastore;
        async move {
            datastore
                .members(asked_in, "ldgnf-valkey-dr")
                .await
                .unwrap()
                .into_iter()
                .map(|m| format!("{} {} {}", m.region, m.replication_group_id, m.role))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        roles("us-east-1").await,
        vec![
            "us-east-1 vdr-primary PRIMARY",
            "us-east-2 vdr-secondary SECONDARY"
        ]
    );
    assert!(
        datastore
            .settled("us-east-1", "ldgnf-valkey-dr")
            .await
            .unwrap()
    );
    let group = datastore
        .group("us-east-2", "vdr-secondary")
        .await
        .unwrap()
        .unwrap();
    let endpoint = group.endpoint.unwrap();
    assert!(endpoint.starts_with("master.vdr-secondary."), "{endpoint}");
    assert_eq!(group.status, "available");
    assert_eq!(
        datastore.group("us-east-2", "vdr-nothing").await.unwrap(),
        None
    );

    datastore
        .failover("us-east-1", "ldgnf-valkey-dr", "us-east-2", "vdr-secondary")
        .await
        .unwrap();
    failover_complete(&datastore).await;
    assert_eq!(
        roles("us-east-2").await,
        vec![
            "us-east-2 vdr-secondary PRIMARY",
            "us-east-1 vdr-primary SECONDARY"
        ]
    );
    datastore
        .disassociate("us-east-2", "ldgnf-valkey-dr", "vdr-primary", "us-east-1")
        .await
        .unwrap();
    assert_eq!(
        roles("us-east-2").await,
        vec!["us-east-2 vdr-secondary PRIMARY"]
    );
    assert!(
        datastore
            .members("us-east-1", "ldgnf-nothing")
            .await
            .unwrap()
            .is_empty()
    );
}

/// Accepts one HTTP POST on loopback and returns its body (an SNS HTTP subscriber).
async fn one_post(listener: tokio::net::TcpListener) -> String {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                return body[..length].to_string();
            }
        }
        if n == 0 {
            return String::new();
        }
    }
}

#[tokio::test]
async fn sns_delivers_a_failover_notification_and_the_handler_flips_dns() {
    let moto = common::moto().await;
    let (datastore, sdk) = global_datastore(&moto).await;
    let route53 = common::route53(&moto);
    let zone_id = common::hosted_zone(&route53, "valkey-dr.internal").await;
    let dns = Route53::new(route53, &zone_id, Duration::from_secs(5));
    let config = AwsConfig::parse(&format!(
        "global_replication_group_id = \"ldgnf-valkey-dr\"\nhosted_zone_id = \"{zone_id}\"\nzone = \"valkey-dr.internal\"\nglobal_name = \"demo\"\n"
    ))
    .unwrap();
    let sdk_for_regions = sdk.clone();
    let backends = Backends {
        elasticache: aws_sdk_elasticache::Client::new(&sdk),
        regional: Box::new(move |region: &str| {
            valkey_dr_aws::discovery::client_in(&sdk_for_regions, region)
        }),
        dns: &dns,
    };
    let cname = || async {
        dns.records(&["demo.valkey-dr.internal.".to_string()])
            .await
            .unwrap()
            .into_iter()
            .flat_map(|r| r.values)
            .collect::<Vec<_>>()
    };
    // The schedule's first pass publishes the primary's endpoint.
    let first = handle(
        &serde_json::json!({"action": "reconcile"}),
        &config,
        &backends,
    )
    .await;
    assert_eq!(first.error, None);
    assert_eq!(first.primary_region.as_deref(), Some("us-east-1"));
    let before = cname().await;
    assert!(before[0].starts_with("master.vdr-primary."), "{before:?}");

    // The secondary is promoted; ElastiCache's notification goes through an SNS topic to an
    // HTTP subscriber, which hands the delivery to the handler.
    datastore
        .failover("us-east-1", "ldgnf-valkey-dr", "us-east-2", "vdr-secondary")
        .await
        .unwrap();
    failover_complete(&datastore).await;
    let client = SignedClient::new(&sdk).unwrap();
    let topic = text(
        &query(
            &client,
            Service::Sns,
            "us-east-1",
            "CreateTopic",
            &[("Name", "valkey-dr-events")],
        )
        .await,
        "TopicArn",
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/sns", listener.local_addr().unwrap());
    let delivery = tokio::spawn(one_post(listener));
    query(
        &client,
        Service::Sns,
        "us-east-1",
        "Subscribe",
        &[
            ("TopicArn", &topic),
            ("Protocol", "http"),
            ("Endpoint", &endpoint),
        ],
    )
    .await;
    query(
        &client,
        Service::Sns,
        "us-east-1",
        "Publish",
        &[
            ("TopicArn", &topic),
            ("Message", "ElastiCache:FailoverComplete : vdr-secondary"),
        ],
    )
    .await;
    let body = tokio::time::timeout(Duration::from_secs(10), delivery)
        .await
        .expect("SNS delivered")
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["TopicArn"], topic.as_str());

    let outcome = handle(&event, &config, &backends).await;
    assert_eq!(outcome.error, None);
    assert!(outcome.reconciled);
    assert_eq!(outcome.primary_region.as_deref(), Some("us-east-2"));
    assert_eq!(outcome.epoch, Some(2));
    let after = cname().await;
    assert!(after[0].starts_with("master.vdr-secondary."), "{after:?}");

    // The same delivery again: DNS is already right, nothing changes.
    let again = handle(&event, &config, &backends).await;
    assert_eq!((again.applied, again.error), (0, None));
}

/// Cluster mode: the name leads to the primary group's configuration endpoint (cluster clients
/// start there and follow MOVED). The stand-in does not make a joining group inherit the
/// primary's shards (ElastiCache does); discovery reads only the primary's group.
#[tokio::test]
async fn a_cluster_mode_datastore_leads_to_its_configuration_endpoint() {
    use aws_sdk_elasticache::types::ClusterMode;
    let moto = common::moto().await;
    let client =
        |region: &str| valkey_dr_aws::discovery::client_in(&common::sdk(&moto, region), region);
    client("us-east-1")
        .create_replication_group()
        .replication_group_id("vdr-sharded")
        .replication_group_description("valkey-dr test")
        .engine("valkey")
        .cache_node_type("cache.r7g.large")
        .cache_parameter_group_name("default.valkey8.cluster.on")
        .cluster_mode(ClusterMode::Enabled)
        .num_node_groups(3)
        .replicas_per_node_group(1)
        .send()
        .await
        .expect("primary group");
    client("us-east-1")
        .create_global_replication_group()
        .global_replication_group_id_suffix("valkey-dr")
        .primary_replication_group_id("vdr-sharded")
        .send()
        .await
        .expect("global datastore");
    // A joining group passing the cluster mode is refused: it inherits it.
    let refused = client("us-east-2")
        .create_replication_group()
        .replication_group_id("vdr-sharded-west")
        .replication_group_description("valkey-dr test")
        .global_replication_group_id("ldgnf-valkey-dr")
        .cluster_mode(ClusterMode::Enabled)
        .send()
        .await;
    assert!(refused.is_err());
    client("us-east-2")
        .create_replication_group()
        .replication_group_id("vdr-sharded-west")
        .replication_group_description("valkey-dr test")
        .global_replication_group_id("ldgnf-valkey-dr")
        .replicas_per_node_group(1)
        .send()
        .await
        .expect("secondary group");
    let primary =
        valkey_dr_aws::discovery::primary(&client("us-east-1"), client, "ldgnf-valkey-dr")
            .await
            .unwrap();
    assert_eq!(primary.region, "us-east-1");
    assert!(
        primary.endpoint.starts_with("clustercfg.vdr-sharded."),
        "{}",
        primary.endpoint
    );
}
