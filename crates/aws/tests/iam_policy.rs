//! `deploy/aws/iam-policy.json` holds exactly what `valkey-dr aws deploy | status | promote |
//! destroy` need: the calls our code makes, found in its source, and the permissions CloudFormation's
//! handlers need for every resource type in the template, read from the resource schemas that the
//! pinned cfn-lint ships (the same schemas CloudFormation publishes; `make test` installs it).
//!
//! After a change to the calls or the template, write the file again with
//! `VALKEY_DR_WRITE_IAM_POLICY=1 cargo test -p valkey-dr-aws --test iam_policy`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The crate's source without its unit tests.
fn source(relative: &str) -> String {
    let text = std::fs::read_to_string(root().join("crates/aws/src").join(relative)).unwrap();
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Which service a `.send()` in a file goes to: by the type whose `impl` it sits in, or for the
/// whole file (`*`).
const SDK_CALLERS: [(&str, &str, &str); 5] = [
    ("deploy/sdk.rs", "SdkStacks", "cloudformation"),
    ("deploy/sdk.rs", "SdkDatastore", "elasticache"),
    ("deploy/sdk.rs", "Route53Zones", "route53"),
    ("route53.rs", "*", "route53"),
    ("discovery.rs", "*", "elasticache"),
];

/// What the commands need beside the calls found in the source, and why.
const BESIDE_THE_CALLS: [(&str, &str); 4] = [
    // Without it S3 answers a HEAD of a missing object with 403, not 404.
    ("s3:ListBucket", "a missing artifact reads as missing"),
    // ElastiCache's and the Instance Connect Endpoint's roles, created on first use in an account.
    (
        "iam:CreateServiceLinkedRole",
        "first use of ElastiCache in an account",
    ),
    // Our stacks carry a tag; CloudFormation checks the caller may tag.
    (
        "cloudformation:TagResource",
        "the stacks' valkey-dr:stack tag",
    ),
    // CloudFormation resolves the helper's AMI parameter with the caller's rights.
    ("ssm:GetParameters", "the HelperImageId parameter"),
];

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The SDK operation each `.send()` finishes: the first argument-less call of its chain (the
/// operation; setters take arguments).
fn sdk_calls(text: &str) -> Vec<(usize, String)> {
    let operation = regex_lite::Regex::new(r"\.\s*([a-z][a-z0-9_]*)\(\)").unwrap();
    let mut found = Vec::new();
    for (at, _) in text.match_indices(".send()") {
        let start = text[..at].rfind([';', '{']).map_or(0, |s| s + 1);
        let chain = &text[start..at];
        let first = operation
            .captures_iter(chain)
            .map(|c| c[1].to_string())
            .find(|name| name != "clone");
        found.push((
            at,
            first.unwrap_or_else(|| panic!("no operation before .send(): {chain}")),
        ));
    }
    found
}

/// The type of the `impl` block `at` sits in.
fn enclosing_impl(text: &str, at: usize) -> String {
    let line = text[..at]
        .rfind("\nimpl")
        .map(|s| &text[s + 1..])
        .and_then(|rest| rest.lines().next())
        .unwrap_or("");
    line.trim_end_matches(['{', ' '])
        .rsplit(' ')
        .next()
        .unwrap_or("")
        .to_string()
}

/// Every action the commands' code calls, with where it was found.
fn calls_in_the_code() -> BTreeMap<String, String> {
    let mut actions = BTreeMap::new();
    let files: BTreeSet<&str> = SDK_CALLERS.iter().map(|(f, _, _)| *f).collect();
    for file in files {
        let text = source(file);
        for (at, operation) in sdk_calls(&text) {
            let within = enclosing_impl(&text, at);
            let service = SDK_CALLERS
                .iter()
                .find(|(f, t, _)| *f == file && (*t == "*" || *t == within))
                .map(|(_, _, s)| *s)
                .unwrap_or_else(|| {
                    panic!("{file}: a call in `impl … {within}` has no service in SDK_CALLERS")
                });
            actions.insert(
                format!("{service}:{}", pascal(&operation)),
                file.to_string(),
            );
        }
    }
    // The signed client: EC2's Query actions and S3's object requests.
    let sdk = source("deploy/sdk.rs");
    let ec2 = regex_lite::Regex::new(r#"\.call\(\s*region,\s*"([A-Za-z]+)""#).unwrap();
    for c in ec2.captures_iter(&sdk) {
        actions.insert(format!("ec2:{}", &c[1]), "deploy/sdk.rs".into());
    }
    let s3 = regex_lite::Regex::new(r#"Service::S3,\s*region,\s*"([A-Z]+)""#).unwrap();
    for c in s3.captures_iter(&sdk) {
        let action = match &c[1] {
            "HEAD" | "GET" => "s3:GetObject",
            "PUT" => "s3:PutObject",
            other => panic!("S3 request {other}: name its action here"),
        };
        actions.insert(action.into(), "deploy/sdk.rs".into());
    }
    for (action, why) in BESIDE_THE_CALLS {
        actions.insert(action.into(), why.into());
    }
    actions
}

/// The handlers' permissions (create, read, update, delete) of every resource type the template
/// declares, from the schemas cfn-lint ships.
fn handler_permissions() -> BTreeSet<String> {
    let python = root().join("target/venv/bin/python3");
    let output = Command::new(&python)
        .args([
            "-c",
            "import cfnlint, os; print(os.path.join(os.path.dirname(cfnlint.__file__), 'data', 'schemas'))",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (make test installs cfn-lint there)",
                python.display()
            )
        });
    let schemas = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    let read = |path: PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}", path.display());
        }))
        .unwrap()
    };
    let index = read(schemas.join("providers/us-east-1.json"));
    let template: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(valkey_dr_aws::deploy::TEMPLATE).unwrap();
    let types: BTreeSet<String> = template["Resources"]
        .as_mapping()
        .unwrap()
        .values()
        .map(|r| r["Type"].as_str().unwrap().to_string())
        .collect();
    let mut permissions = BTreeSet::new();
    for kind in types {
        let file = index[&kind]
            .as_str()
            .unwrap_or_else(|| panic!("cfn-lint has no schema for {kind}"));
        let schema = read(schemas.join(format!("resources/{file}.json")));
        for handler in ["create", "read", "update", "delete"] {
            for p in schema["handlers"][handler]["permissions"]
                .as_array()
                .into_iter()
                .flatten()
            {
                permissions.insert(p.as_str().unwrap().to_string());
            }
        }
    }
    permissions
}

fn policy(commands: &BTreeSet<String>, handlers: &BTreeSet<String>) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ValkeyDrCommands",
                "Effect": "Allow",
                "Action": commands,
                "Resource": "*"
            },
            {
                "Sid": "CloudFormationResourceHandlers",
                "Effect": "Allow",
                "Action": handlers,
                "Resource": "*"
            }
        ]
    })
}

#[test]
fn the_iam_policy_names_exactly_the_calls_and_the_handlers_permissions() {
    let calls = calls_in_the_code();
    // The scan finds what a reading of the code finds (a guard on the scan itself).
    for expected in [
        "cloudformation:CreateStack",
        "cloudformation:DescribeStackEvents",
        "elasticache:FailoverGlobalReplicationGroup",
        "elasticache:DescribeGlobalReplicationGroups",
        "route53:ChangeResourceRecordSets",
        "route53:GetChange",
        "route53:GetHostedZone",
        "ec2:AcceptVpcPeeringConnection",
        "ec2:DescribeInstances",
        "s3:PutObject",
    ] {
        assert!(calls.contains_key(expected), "the scan missed {expected}");
    }
    let commands: BTreeSet<String> = calls.keys().cloned().collect();
    let handlers = handler_permissions();
    assert!(handlers.contains("lambda:CreateFunction") && handlers.contains("iam:PassRole"));
    let expected = policy(&commands, &handlers);
    let path = root().join("deploy/aws/iam-policy.json");
    let text = serde_json::to_string_pretty(&expected).unwrap() + "\n";
    if std::env::var_os("VALKEY_DR_WRITE_IAM_POLICY").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        committed == expected,
        "{} differs from the calls and the handlers' permissions; write it again with \
         VALKEY_DR_WRITE_IAM_POLICY=1 cargo test -p valkey-dr-aws --test iam_policy",
        path.display()
    );
}
