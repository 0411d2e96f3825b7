use super::*;

const VALID: &str = r#"
primary_region = "us-east-1"
[[regions]]
name = "us-east-1"
nodes = [{ host = "127.0.1.1" }, { host = "127.0.1.2" }]
[[regions]]
name = "us-east-2"
nodes = [{ host = "127.0.2.1", replication_address = { us-east-1 = "127.0.1.121:6379" } }]
[dns]
zone = "valkey-dr.live"
global_name = "demo"
"#;

#[test]
fn the_valid_example_parses_with_defaults() {
    let config = Config::parse(VALID).unwrap();
    assert_eq!(config.dns.ttl, 5);
    assert_eq!(config.controller.reconcile_interval_ms, 1000);
    assert_eq!(config.global_name_fqdn(), "demo.valkey-dr.live.");
    assert_eq!(
        Config::parse(&config.to_toml()).unwrap(),
        config,
        "round-trips"
    );
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../../../valkey-dr.toml");
    Config::parse(text).unwrap();
}

#[test]
fn each_error_names_its_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "duplicate region",
            r#"name = "us-east-1""#,
            "regions[1].name",
        ),
        (
            "two nodes on one address",
            r#"host = "127.0.2.1""#,
            "regions[1].nodes[1].host",
        ),
        (
            "unknown primary region",
            r#"primary_region = "eu-west-1""#,
            "primary_region",
        ),
        (
            "empty primary region",
            r#"primary_region = """#,
            "primary_region",
        ),
        ("invalid zone", r#"zone = "bad..zone""#, "dns.zone"),
        (
            "invalid global name",
            r#"global_name = "de mo""#,
            "dns.global_name",
        ),
        (
            "global name outside zone",
            r#"global_name = "demo.example.org.""#,
            "dns.global_name",
        ),
        ("ttl 0", "ttl = 0", "dns.ttl"),
        (
            "invalid region name",
            r#"name = "us_east_2""#,
            "regions[1].name",
        ),
        ("port 0", "port = 0", "regions[1].nodes[0].port"),
        (
            "replication address of an unknown region",
            r#"replication_address = { eu = "127.0.0.1:1" }"#,
            "regions[1].nodes[0].replication_address.eu",
        ),
        (
            "bad listen address",
            r#"listen = "localhost""#,
            "dns.provider.listen",
        ),
        (
            "zero interval",
            "reconcile_interval_ms = 0",
            "controller.reconcile_interval_ms",
        ),
    ];
    for (what, replacement, field) in cases {
        let text = mutate(replacement);
        match Config::parse(&text) {
            Err(e) => {
                assert_eq!(e.field(), Some(*field), "{what}: {e}");
                assert!(e.to_string().contains("fix:"), "{what}: {e}");
            }
            Ok(_) => panic!("{what}: accepted\n{text}"),
        }
    }
}

/// The example config (`base`, or a variant of it) as the witness of three sites named `sites`,
/// with `extra` lines of `[coordination]`.
fn three_sites(base: &str, sites: &str, extra: &str) -> String {
    format!(
        "{base}\n[coordination]\netcd = [\"http://127.0.0.1:2379\"]\nsite = \"witness\"\nsites = {sites}\n{extra}"
    )
}

const SITES: &str = r#"["us-east-1", "us-east-2", "witness"]"#;

#[test]
fn every_region_needs_a_site_of_its_name() {
    let base = include_str!("../../../../valkey-dr.toml");
    let with = |sites: &str| three_sites(base, sites, "");
    Config::parse(&with(SITES)).unwrap();
    let error = Config::parse(&with(r#"["use1", "us-east-2", "witness"]"#)).unwrap_err();
    assert_eq!(error.field(), Some("coordination.sites"), "{error}");
    assert!(error.to_string().contains("us-east-1"), "{error}");
}

#[test]
fn rfc2136_settings_are_checked() {
    let base = include_str!("../../../../valkey-dr.toml");
    let embedded = "[dns.provider]\nkind = \"embedded\"\nlisten = \"127.0.0.1:5353\"\n";
    assert!(base.contains(embedded));
    let with = |provider: &str| base.replace(embedded, provider);
    let good = "[dns.provider]\nkind = \"rfc2136\"\nservers = [\"192.0.2.53:53\"]\ntsig_key_name = \"valkey-dr\"\ntsig_secret_file = \"/etc/valkey-dr/tsig\"\n";
    let config = Config::parse(&with(good)).unwrap();
    let DnsProviderConfig::Rfc2136(c) = &config.dns.provider else {
        panic!("rfc2136 expected");
    };
    assert_eq!(c.tsig_algorithm, TsigAlgorithm::HmacSha256, "the default");
    let cases = [
        (
            "servers = [\"192.0.2.53:53\"]",
            "servers = []",
            "dns.provider.servers",
        ),
        (
            "servers = [\"192.0.2.53:53\"]",
            "servers = [\"ns1.example.com:53\"]",
            "dns.provider.servers",
        ),
        (
            "tsig_secret_file = \"/etc/valkey-dr/tsig\"",
            "tsig_secret = \"c2VjcmV0\"",
            "dns.provider.tsig_secret",
        ),
        (
            "tsig_secret_file = \"/etc/valkey-dr/tsig\"",
            "tsig_secret_file = \"/etc/valkey-dr/tsig\"\ntsig_secret_env = \"TSIG\"",
            "dns.provider.tsig_secret_file",
        ),
        (
            "tsig_key_name = \"valkey-dr\"",
            "tsig_key_name = \"bad key\"",
            "dns.provider.tsig_key_name",
        ),
    ];
    for (from, to, field) in cases {
        let error = Config::parse(&with(&good.replace(from, to))).unwrap_err();
        assert_eq!(error.field(), Some(field), "{to}: {error}");
        // A literal secret is refused without being repeated.
        assert!(!error.to_string().contains("c2VjcmV0"), "{error}");
    }
    // The documented example section is valid as it stands.
    Config::parse(&with(include_str!(
        "../../../../deploy/rfc2136/provider.toml"
    )))
    .unwrap();
    let unknown_algorithm = Config::parse(&with(&format!("{good}tsig_algorithm = \"hmac-md5\"\n")));
    assert!(unknown_algorithm.is_err(), "only hmac-sha256/384/512");
}

#[test]
fn the_http_endpoint_and_webhooks_are_checked() {
    let base = include_str!("../../../../valkey-dr.toml");
    let cases = [
        (
            "[http]\nlisten = \"0.0.0.0:9187\"\n",
            "http.listen",
            "without a token and TLS",
        ),
        (
            "[http]\nlisten = \"localhost\"\n",
            "http.listen",
            "is not ip:port",
        ),
        (
            "[http]\ntls_cert_file = \"c.pem\"\n",
            "http.tls_cert_file",
            "without a key",
        ),
        (
            "[[webhooks]]\nurl = \"ftp://x\"\nsecret_file = \"s\"\n",
            "webhooks[0].url",
            "not an http(s) URL",
        ),
    ];
    let without_http = base.replace("[http]\nlisten = \"127.0.0.1:9187\"\n", "");
    assert_ne!(without_http, base);
    for (section, field, problem) in cases {
        let error = Config::parse(&format!("{without_http}\n{section}")).unwrap_err();
        assert_eq!(error.field(), Some(field), "{error}");
        assert!(error.to_string().contains(problem), "{error}");
    }
    // An event no webhook can receive is refused by name, with the ones that exist.
    let unknown = Config::parse(&format!(
            "{without_http}\n[[webhooks]]\nurl = \"https://x\"\nsecret_file = \"s\"\nevents = [\"failover.begun\"]\n"
        ))
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("failover.begun") && unknown.contains("switchover.completed"),
        "{unknown}"
    );
    // Anywhere but loopback with a token and TLS is fine.
    let exposed = format!(
        "{without_http}\n[http]\nlisten = \"0.0.0.0:9187\"\ntoken_file = \"t\"\ntls_cert_file = \"c\"\ntls_key_file = \"k\"\n"
    );
    Config::parse(&exposed).unwrap();
}

#[test]
fn too_few_regions_and_unknown_fields_are_rejected() {
    let one_region = r#"
primary_region = "a"
[[regions]]
name = "a"
nodes = [{ host = "127.0.0.1" }]
[dns]
zone = "z.test"
global_name = "demo"
"#;
    assert_eq!(
        Config::parse(one_region).unwrap_err().field(),
        Some("regions")
    );
    let unknown = VALID.replace("global_name = \"demo\"", "global_name = \"demo\"\ntll = 5");
    let error = Config::parse(&unknown).unwrap_err().to_string();
    assert!(error.contains("unknown field `tll`"), "{error}");
    let no_primary = VALID.replace("primary_region = \"us-east-1\"", "");
    let error = Config::parse(&no_primary).unwrap_err().to_string();
    assert!(error.contains("missing field `primary_region`"), "{error}");
}

/// Applies one change to the valid config: a replacement line for the field of the same name
/// (the second region's or its nodes' where the name repeats).
fn mutate(replacement: &str) -> String {
    let key = replacement.split('=').next().unwrap().trim();
    match key {
            "name" => VALID.replacen("name = \"us-east-2\"", replacement, 1),
            "host" => VALID.replace(
                r#"nodes = [{ host = "127.0.2.1", replication_address = { us-east-1 = "127.0.1.121:6379" } }]"#,
                &format!(r#"nodes = [{{ host = "127.0.2.1" }}, {{ {replacement} }}]"#),
            ),
            "port" | "replication_address" => VALID.replace(
                r#"nodes = [{ host = "127.0.2.1", replication_address = { us-east-1 = "127.0.1.121:6379" } }]"#,
                &format!(r#"nodes = [{{ host = "127.0.2.1", {replacement} }}]"#),
            ),
            "primary_region" => VALID.replace("primary_region = \"us-east-1\"", replacement),
            "zone" | "global_name" => {
                let line = VALID.lines().find(|l| l.starts_with(key)).unwrap();
                VALID.replace(line, replacement)
            }
            "ttl" => format!("{VALID}{replacement}\n"),
            "listen" => format!("{VALID}[dns.provider]\nkind = \"embedded\"\n{replacement}\n"),
            "reconcile_interval_ms" => format!("{VALID}[controller]\n{replacement}\n"),
            other => panic!("no mutation for {other}"),
        }
}

#[test]
fn node_timeouts_fit_in_the_leaders_margin() {
    let base = include_str!("../../../../valkey-dr.toml");
    // 500 + 500 ms fits a third of the 3 s default TTL exactly.
    Config::parse(&three_sites(base, SITES, "")).unwrap();
    let slow = base.replace("command_timeout_ms = 500", "command_timeout_ms = 1500");
    assert_ne!(slow, base, "the example config sets command_timeout_ms");
    let error = Config::parse(&three_sites(&slow, SITES, "")).unwrap_err();
    assert_eq!(
        error.field(),
        Some("controller.command_timeout_ms"),
        "{error}"
    );
    assert!(error.to_string().contains("lease_ttl_ms"), "{error}");
    // One controller has no lease: the same timeouts are fine there.
    Config::parse(&slow).unwrap();
    // A longer TTL makes room for them.
    Config::parse(&three_sites(&slow, SITES, "lease_ttl_ms = 6000\n")).unwrap();
}

#[test]
fn the_early_fence_fits_between_two_renewals_and_the_lease() {
    let base = include_str!("../../../../valkey-dr.toml");
    let with = |extra: &str| three_sites(base, SITES, extra);
    let config = Config::parse(&with("")).unwrap();
    assert_eq!(config.coordination.unwrap().fence_after_ms(), 600);
    let longer = Config::parse(&with("lease_ttl_ms = 6000\n")).unwrap();
    assert_eq!(longer.coordination.unwrap().fence_after_ms(), 1200);
    for (value, ok) in [(499, false), (500, true), (2000, true), (2001, false)] {
        let parsed = Config::parse(&with(&format!("fence_after_ms = {value}\n")));
        match (parsed, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                assert_eq!(e.field(), Some("coordination.fence_after_ms"), "{e}");
                assert!(e.to_string().contains("fix:"), "{e}");
            }
            (other, _) => panic!("{value}: {other:?}"),
        }
    }
}

#[test]
fn etcd_over_tls_needs_https_urls_and_a_whole_client_identity() {
    let base = include_str!("../../../../valkey-dr.toml");
    let tls = "[coordination.tls]\nca_file = \"/etc/valkey-dr/etcd-ca.pem\"\nclient_cert_file = \"/etc/valkey-dr/etcd.pem\"\nclient_key_file = \"/etc/valkey-dr/etcd.key\"\n";
    let https =
        three_sites(base, SITES, tls).replace("http://127.0.0.1:2379", "https://127.0.0.1:2379");
    let config = Config::parse(&https).unwrap();
    assert!(config.coordination.unwrap().tls.is_some());
    // (config, field named, words of the fix)
    let cases = [
        (
            three_sites(base, SITES, tls),
            "coordination.etcd[0]",
            "use https://",
        ),
        (
            three_sites(base, SITES, "").replace("http://", "https://"),
            "coordination.etcd[0]",
            "set [coordination.tls]",
        ),
        (
            https.replace("client_key_file = \"/etc/valkey-dr/etcd.key\"\n", ""),
            "coordination.tls.client_cert_file",
            "set both",
        ),
    ];
    for (text, field, fix) in cases {
        let error = Config::parse(&text).unwrap_err();
        assert_eq!(error.field(), Some(field), "{error}");
        assert!(error.to_string().contains(fix), "{error}");
    }
}

#[test]
fn cluster_mode_is_read_and_runs_with_one_controller_or_one_per_site() {
    let base = include_str!("../../../../valkey-dr.toml");
    assert_eq!(Config::parse(base).unwrap().mode, Mode::Replication);
    // The example serves HTTP, which the cluster's controller does not yet.
    let without_http = &base[..base.find("\n[http]").unwrap_or(base.len())];
    let cluster = format!("mode = \"cluster\"\n{without_http}\n");
    let config = Config::parse(&cluster).unwrap();
    assert_eq!(config.mode, Mode::Cluster);
    assert!(config.to_toml().contains("mode = \"cluster\""));
    // One controller per site on etcd, as a replication group's.
    let ha = Config::parse(&three_sites(&cluster, SITES, "")).unwrap();
    assert_eq!(ha.mode, Mode::Cluster);
    assert!(ha.coordination.is_some());
    let two_ports = cluster.replacen("port = 6379", "port = 6380", 1);
    assert_ne!(two_ports, cluster, "the example config names a port");
    let error = Config::parse(&two_ports).unwrap_err();
    assert!(
        error.field().is_some_and(|f| f.ends_with(".port")),
        "{error}"
    );
    let with_http = format!("{cluster}\n[http]\nlisten = \"127.0.0.1:9180\"\n");
    let error = Config::parse(&with_http).unwrap_err();
    assert_eq!(error.field(), Some("http"), "{error}");
    let error = Config::parse(&format!("mode = \"sharded\"\n{base}")).unwrap_err();
    assert!(error.to_string().contains("cluster"), "{error}");
}
