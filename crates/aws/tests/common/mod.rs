//! Shared test fixtures: a moto server on loopback (Route 53 for real) and ElastiCache mocks
//! (moto does not implement global datastores, so those answers are AWS's documented shapes).

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_elasticache::operation::describe_global_replication_groups::DescribeGlobalReplicationGroupsOutput;
use aws_sdk_elasticache::operation::describe_replication_groups::DescribeReplicationGroupsOutput;
use aws_sdk_elasticache::types::{
    Endpoint, GlobalReplicationGroup, GlobalReplicationGroupMember, NodeGroup, ReplicationGroup,
};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the pinned moto server (`make test` installs it in target/venv) on a free loopback port,
/// through scripts/moto_server.py, which adds a stand-in for the global datastore calls moto lacks.
pub async fn moto() -> Moto {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join("target/venv/bin/python3");
    assert!(
        python.exists(),
        "moto not installed in {}: run `make test` (it installs moto[server])",
        python.display()
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let moto = Moto {
        child: Command::new(python)
            .arg(root.join("scripts/moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts"),
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return moto;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("moto_server did not start");
}

impl Moto {
    /// Plays a regional outage: every request signed for `region` answers 503 (`down`), or
    /// normally again (`up`). The stand-in in scripts/moto_server.py serves this.
    pub fn set_region(&self, region: &str, state: &str) {
        use std::io::{Read, Write};
        let address = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "POST /_valkey_dr/regions/{region}/{state} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

/// A global datastore on moto's stand-in: `primary` = (region, group) created as a standalone
/// group and made the datastore's PRIMARY, `secondary` joining it (passing nothing it inherits).
pub async fn global_datastore(moto: &Moto, primary: (&str, &str), secondary: (&str, &str)) {
    let client = |region: &str| valkey_dr_aws::discovery::client_in(&sdk(moto, region), region);
    client(primary.0)
        .create_replication_group()
        .replication_group_id(primary.1)
        .replication_group_description("valkey-dr test")
        .engine("valkey")
        .cache_node_type("cache.r7g.large")
        .num_cache_clusters(2)
        .send()
        .await
        .expect("primary group");
    client(primary.0)
        .create_global_replication_group()
        .global_replication_group_id_suffix("valkey-dr")
        .primary_replication_group_id(primary.1)
        .send()
        .await
        .expect("global datastore");
    client(secondary.0)
        .create_replication_group()
        .replication_group_id(secondary.1)
        .replication_group_description("valkey-dr test")
        .global_replication_group_id("ldgnf-valkey-dr")
        .num_cache_clusters(2)
        .send()
        .await
        .expect("secondary group");
}

/// The secret access key the tests sign with: no error or log may contain it.
pub const SECRET_KEY: &str = "moto-secret-never-shown";

/// An SDK configuration that sends every service to moto, with test credentials.
pub fn sdk(moto: &Moto, region: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .endpoint_url(&moto.url)
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new("test", SECRET_KEY, None, None, "tests"),
            ),
        )
        .build()
}

pub fn route53(moto: &Moto) -> aws_sdk_route53::Client {
    let config = aws_sdk_route53::Config::builder()
        .behavior_version(aws_sdk_route53::config::BehaviorVersion::latest())
        .region(aws_sdk_route53::config::Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .credentials_provider(aws_sdk_route53::config::Credentials::new(
            "test", SECRET_KEY, None, None, "tests",
        ))
        .build();
    aws_sdk_route53::Client::from_conf(config)
}

/// Creates a hosted zone on moto; returns its id.
pub async fn hosted_zone(client: &aws_sdk_route53::Client, name: &str) -> String {
    let out = client
        .create_hosted_zone()
        .name(name)
        .caller_reference(format!("tests-{name}-{}", std::process::id()))
        .send()
        .await
        .expect("moto creates the zone");
    out.hosted_zone().unwrap().id().to_string()
}

/// ElastiCache answering like AWS for a global datastore whose PRIMARY member is `primary_region`.
pub fn elasticache(primary_region: &'static str) -> (aws_sdk_elasticache::Client, Vec<Rule>) {
    elasticache_with(primary_region, "abc123")
}

/// The same, with the endpoint's cluster tag (`master.<group>.<tag>.cache.amazonaws.com`).
pub fn elasticache_with(
    primary_region: &'static str,
    tag: &'static str,
) -> (aws_sdk_elasticache::Client, Vec<Rule>) {
    let global = mock!(aws_sdk_elasticache::Client::describe_global_replication_groups)
        .then_output(move || {
            let member = |region: &str, role: &str| {
                GlobalReplicationGroupMember::builder()
                    .replication_group_id(format!("valkey-dr-{region}"))
                    .replication_group_region(region)
                    .role(role)
                    .status("associated")
                    .build()
            };
            let secondary = if primary_region == "us-east-1" {
                "us-east-2"
            } else {
                "us-east-1"
            };
            DescribeGlobalReplicationGroupsOutput::builder()
                .global_replication_groups(
                    GlobalReplicationGroup::builder()
                        .global_replication_group_id("ldgnf-valkey-dr")
                        .members(member(primary_region, "PRIMARY"))
                        .members(member(secondary, "SECONDARY"))
                        .build(),
                )
                .build()
        });
    let regional = mock!(aws_sdk_elasticache::Client::describe_replication_groups).then_output(move || {
        DescribeReplicationGroupsOutput::builder()
            .replication_groups(
                ReplicationGroup::builder()
                    .replication_group_id(format!("valkey-dr-{primary_region}"))
                    .node_groups(
                        NodeGroup::builder()
                            .primary_endpoint(
                                Endpoint::builder()
                                    .address(format!("master.valkey-dr-{primary_region}.{tag}.cache.amazonaws.com"))
                                    .port(6379)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .build()
    });
    let client = mock_client!(
        aws_sdk_elasticache,
        RuleMode::MatchAny,
        [&global, &regional]
    );
    (client, vec![global, regional])
}
