//! Every DNS backend passes the same battery.

use valkey_dr_dns::conformance::battery;
use valkey_dr_dns::embedded::Zone;

#[tokio::test]
async fn embedded_zone_passes_the_battery() {
    battery(&Zone::new("z.test"), "z.test.").await;
}

mod etcd {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::time::Duration;

    use valkey_dr_coord::cluster::EtcdCluster;
    use valkey_dr_coord::{Coordinator, LeaderCell};
    use valkey_dr_core::{Change, RecordSet, RecordType};
    use valkey_dr_dns::etcd::EtcdRecords;
    use valkey_dr_dns::{DnsError, DnsProvider};

    use super::*;

    /// Records in a real etcd (a one-member cluster the test starts), as two controllers see
    /// them: the leader writes, the other serves its copy.
    #[tokio::test(flavor = "multi_thread")]
    async fn records_in_etcd_pass_the_battery_and_only_the_leader_changes_them() {
        let dir = std::env::temp_dir().join(format!("valkey-dr-dns-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ip = Ipv4Addr::new(127, 252, (std::process::id() % 250) as u8, 1);
        let cluster = EtcdCluster::start(&dir, ip, 1).await.expect("etcd starts");
        // A long lease: the battery must not outlive the leader's right to act.
        let connect = |site: &'static str| {
            let endpoints = cluster.endpoints();
            async move {
                Coordinator::connect(
                    &endpoints,
                    "/valkey-dr/dns-test",
                    site,
                    Duration::from_secs(30),
                )
                .await
                .unwrap()
            }
        };
        let leader_coord = connect("a").await;
        let claim = leader_coord.try_lead().await.unwrap().unwrap();
        let leader_cell = Arc::new(LeaderCell::default());
        leader_cell.set(Some(claim.fence()));
        let leader_zone = Arc::new(Zone::awaiting_copy("z.test", Duration::from_secs(30)));
        let leader = EtcdRecords::new(leader_coord, leader_cell, leader_zone.clone());
        battery(&leader, "z.test.").await;

        // Another controller's copy follows etcd; it cannot write while it does not lead.
        let follower_zone = Arc::new(Zone::awaiting_copy("z.test", Duration::from_secs(30)));
        let follower = EtcdRecords::new(
            connect("b").await,
            Arc::new(LeaderCell::default()),
            follower_zone.clone(),
        );
        assert!(!follower_zone.is_loaded());
        follower.sync().await.unwrap();
        assert!(follower_zone.is_loaded());
        assert_eq!(follower_zone.snapshot(), leader_zone.snapshot());
        let new = RecordSet::new("x.z.test.", RecordType::A, 5, ["10.0.0.9".to_string()]);
        let refused = follower.apply(&[Change::Create { new }]).await;
        assert!(matches!(refused, Err(DnsError::Fenced(_))), "{refused:?}");
        assert_eq!(
            follower.records(&["x.z.test.".into()]).await.unwrap(),
            vec![]
        );
        drop(cluster);
    }
}
