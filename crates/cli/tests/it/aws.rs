//! `valkey-dr aws …` as an operator runs it (built with the `aws` feature): against a moto server on
//! loopback through scripts/aws-moto-demo.sh, and on bad input.

use std::path::Path;
use std::process::Command;

use crate::harness::BIN;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A promotion seen through `handle-event` and one made by `aws promote` both move the name; the
/// same event again changes nothing. (moto for Route 53 and replication groups, the stand-in in
/// scripts/moto_server.py for the global datastore calls moto lacks.)
#[test]
fn handle_event_and_promote_move_the_name_on_moto() {
    let out = Command::new("bash")
        .arg(root().join("scripts/aws-moto-demo.sh"))
        .env("VALKEY_DR_BIN", BIN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let step = |n: u32| {
        stdout
            .split(&format!("{n}. "))
            .nth(1)
            .and_then(|s| s.split(&format!("\n{}. ", n + 1)).next())
            .unwrap_or_default()
            .to_string()
    };
    let first = step(1);
    assert!(first.contains("\"primary_region\": \"us-east-1\"") && first.contains("\"epoch\": 1"));
    assert!(first.contains("CNAME master.vdr-east-1."), "{first}");
    let failover = step(2);
    assert!(failover.contains("\"event\": \"ElastiCache:FailoverComplete\""));
    assert!(failover.contains("CNAME master.vdr-east-2."), "{failover}");
    assert!(failover.contains("epoch=2,primary=us-east-2"), "{failover}");
    let again = step(3);
    assert!(again.contains("\"applied\": 0"), "{again}");
    let promote = step(4);
    assert!(
        promote.contains("name → master.vdr-west-2.") && promote.contains("epoch 3"),
        "{promote}"
    );
    let status = step(5);
    assert!(
        status.contains("us-west-2      vdr-west-2                   PRIMARY"),
        "{status}"
    );
}

#[test]
fn bad_deploy_input_fails_before_contacting_aws() {
    let dir = std::env::temp_dir().join(format!("valkey-dr-aws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example = std::fs::read_to_string(root().join("deploy/aws/aws.toml")).unwrap();
    let overlapping = example.replace(
        "vpc_cidr = \"10.2.0.0/16\"\nsubnet_cidrs = [\"10.2.1.0/24\", \"10.2.2.0/24\"]",
        "vpc_cidr = \"10.1.0.0/20\"\nsubnet_cidrs = [\"10.1.1.0/24\", \"10.1.2.0/24\"]",
    );
    assert_ne!(overlapping, example);
    let missing_zip = example.replace(
        "target/lambda/valkey-dr-lambda.zip",
        "/nonexistent/lambda.zip",
    );
    let cases = [
        (
            overlapping,
            vec!["deploy"],
            "`deploy.secondary.vpc_cidr`: 10.1.0.0/20 overlaps the primary's 10.1.0.0/16",
        ),
        (missing_zip, vec!["deploy"], "build it with `make lambda`"),
        (example.clone(), vec!["destroy"], "add --yes"),
    ];
    // Any AWS call would arrive here; none may.
    let aws = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    aws.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", aws.local_addr().unwrap());
    for (text, command, expected) in cases {
        let path = dir.join("aws.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .arg("aws")
            .args(&command)
            .arg("--config")
            .arg(&path)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(
            aws.accept()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "{expected}: AWS was contacted"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
