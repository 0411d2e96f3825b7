use super::*;

#[test]
fn reference_lab_matches_the_design_addresses() {
    let spec = LabSpec::reference("/tmp/lab".into());
    assert_eq!(spec.node_addr(0, 0).to_string(), "127.0.1.1:6379");
    assert_eq!(spec.node_addr(1, 1).to_string(), "127.0.2.2:6379");
    assert_eq!(spec.link_addr(1, 0, 0).to_string(), "127.0.2.111:6379");
    assert_eq!(
        spec.links().len(),
        17,
        "4 region-link ends + 4 controller links + 6 between the sites and the etcd members + 3 in front of the members' raft ports"
    );
    // The highly available shape: a controller and an etcd member per site; each site
    // reaches its own member directly and the others through the link.
    assert_eq!(spec.sites, ["us-east-1", "us-east-2", "witness"]);
    assert_eq!(
        spec.etcd_endpoints("us-east-1"),
        [
            "https://127.0.1.50:2379",
            "https://127.0.1.62:2379",
            "https://127.0.1.60:2379"
        ]
    );
    assert_eq!(spec.site_dns("witness"), spec.dns);
    assert_eq!(spec.site_dns("us-east-2").to_string(), "127.0.2.53:5353");
    let east = spec.site_config("us-east-1");
    east.validate().expect("site config is valid");
    // etcd with the lab's TLS: the controllers present a client certificate.
    let etcd_tls = east
        .coordination
        .as_ref()
        .and_then(|c| c.tls.clone())
        .expect("etcd TLS");
    assert!(etcd_tls.client_cert_file.is_some());
    assert_eq!(
        spec.etcd_member_ips("us-east-1").len(),
        5,
        "its own address, the one it reaches its peers from, the link end in front of its raft \
         port, the two link ends its clients come through"
    );
    // Raft's messages to a member cross the link like every message between sites.
    assert_eq!(
        spec.etcd_members()[0].reached_at.to_string(),
        "127.0.1.70:2380"
    );
    let nodes: Vec<_> = east.regions.iter().flat_map(|r| &r.nodes).collect();
    assert_eq!(
        nodes[0].controller_address.as_deref(),
        Some("127.0.1.1:6379")
    );
    assert_eq!(
        nodes[2].controller_address.as_deref(),
        Some("127.0.1.121:6379")
    );
    assert_eq!(
        spec.controller_link_addr(0, 0).to_string(),
        "127.0.0.111:6379"
    );
    let config = spec.controller_config();
    config.validate().expect("lab config is valid");
    assert!(
        spec.valkey_conf(1, 0, "pw", "apw")
            .contains("replicaof 127.0.2.111 6379")
    );
    assert!(
        spec.valkey_conf(1, 1, "pw", "apw")
            .contains("replicaof 127.0.2.1 6379")
    );
    assert!(
        spec.valkey_conf(0, 0, "pw", "apw")
            .contains("replicaof 127.0.1.2 6379"),
        "not even the writer starts as a master"
    );
    let tls = spec.valkey_conf(0, 0, "pw", "apw");
    assert!(tls.contains("port 0\ntls-port 6379") && tls.contains("tls-replication yes"));
    assert!(tls.contains("requirepass pw\nmasterauth pw"));
    let plain = LabSpec {
        tls: false,
        ..spec.clone()
    }
    .valkey_conf(0, 0, "pw", "apw");
    assert!(plain.contains("port 6379") && !plain.contains("tls-"));
}
