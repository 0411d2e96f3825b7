//! Discovering the shards and placing them in their regions.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_shards_of_a_stretched_cluster_are_discovered_and_placed_in_their_regions() {
    // Nodes 0–2 lead the shards; 3–5 follow them in us-east-1, 6–8 in us-east-2.
    let mut lab = Formed::new("discovery").await;

    // The engine reads the same shards from a primary and from a replica.
    let engine = ValkeyEngine::new(
        Timeouts {
            connect: Duration::from_millis(500),
            command: Duration::from_millis(500),
        },
        Security::default(),
    );
    let endpoint = |a: SocketAddr| Endpoint::new(&a.ip().to_string(), a.port());
    for asked in [lab.addrs[0], lab.addrs[7]] {
        // A node reports another's replica as loading until a ping from it brought a
        // replication offset: seen right after forming, beside other tests.
        let deadline = Instant::now() + Duration::from_secs(10);
        let shards = loop {
            let shards = engine.cluster_shards(&endpoint(asked)).await.unwrap();
            let all_online = shards
                .iter()
                .flat_map(|s| &s.nodes)
                .all(|n| n.health == NodeHealth::Online);
            if all_online || Instant::now() > deadline {
                break shards;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(shards.len(), 3, "{shards:#?}");
        assert_eq!(shards.iter().map(|s| s.slot_count()).sum::<u32>(), SLOTS);
        for (i, primary) in lab.addrs[..3].iter().enumerate() {
            let shard = shards
                .iter()
                .find(|s| {
                    s.primary()
                        .is_some_and(|p| p.endpoint == endpoint(*primary))
                })
                .unwrap_or_else(|| panic!("a shard led by node {i}: {shards:#?}"));
            let mut replicas: Vec<Endpoint> = shard
                .nodes
                .iter()
                .filter(|n| n.role == ShardRole::Replica)
                .map(|n| n.endpoint.clone())
                .collect();
            replicas.sort_by_key(|e| e.port);
            let mut expected = vec![endpoint(lab.addrs[3 + i]), endpoint(lab.addrs[6 + i])];
            expected.sort_by_key(|e| e.port);
            assert_eq!(replicas, expected);
            assert!(
                shard.nodes.iter().all(|n| n.health == NodeHealth::Online),
                "{shard:#?}"
            );
        }
    }

    // The controller's engine reports a cluster node as one it cannot manage, and says what to
    // use instead.
    let settings = valkey_dr_core::Engine::sync_settings(&engine, &endpoint(lab.addrs[0]))
        .await
        .unwrap();
    assert!(
        settings
            .weaknesses()
            .iter()
            .any(|w| w.contains("valkey-dr cluster switchover")),
        "{:?}",
        settings.weaknesses()
    );

    // Placed in the configured regions: every shard whole, its primary in the writer region.
    let healthy = status(&lab.path);
    let shards = healthy["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "{healthy:#}");
    for shard in shards {
        assert_eq!(shard["primary"]["region"], "us-east-1", "{healthy:#}");
        assert_eq!(shard["findings"], serde_json::json!([]), "{healthy:#}");
        let regions: Vec<&str> = shard["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["region"].as_str().unwrap())
            .collect();
        assert!(
            regions.contains(&"us-east-1") && regions.contains(&"us-east-2"),
            "{healthy:#}"
        );
    }
    assert_eq!(healthy["uncovered_slots"], serde_json::json!([]));

    // A replica in us-east-2 the cluster may promote by itself is shown, and `cluster
    // switchover` to where the primaries are sets it back.
    valkey_dr_lab::cluster::command(
        lab.addrs[7],
        &["CONFIG", "SET", "cluster-replica-no-failover", "no"],
    )
    .await
    .unwrap();
    let unguarded = status(&lab.path)["shards"][1]["findings"].to_string();
    assert!(
        unguarded.contains("may_fail_over_across_regions")
            && unguarded.contains(&lab.addrs[7].to_string()),
        "{unguarded}"
    );
    // So is a node the cluster may move to another shard (replica migration).
    valkey_dr_lab::cluster::command(
        lab.addrs[4],
        &["CONFIG", "SET", "cluster-allow-replica-migration", "yes"],
    )
    .await
    .unwrap();
    let migrating = status(&lab.path).to_string();
    assert!(
        migrating.contains("may_move_to_another_shard")
            && migrating.contains(&lab.addrs[4].to_string()),
        "{migrating}"
    );
    valkey_dr_lab::cluster::command(
        lab.addrs[4],
        &["CONFIG", "SET", "cluster-allow-replica-migration", "no"],
    )
    .await
    .unwrap();
    let out = succeed(&mut cluster(&lab.path, &["switchover", "us-east-1"]));
    let said = String::from_utf8_lossy(&out);
    assert!(
        said.contains("already in us-east-1")
            && said.contains(&format!("automatic failover refused on {}", lab.addrs[7])),
        "{said}"
    );
    assert!(!automatic_failover(lab.addrs[7]).await);
    assert_eq!(
        status(&lab.path)["shards"][1]["findings"],
        serde_json::json!([])
    );

    // A replica outside the writer region dies: status says at once that it does not answer,
    // and that it failed once the cluster marks it so.
    let gone = lab.addrs[6].to_string();
    drop(lab.nodes.remove(6));
    let unanswered = status(&lab.path)["shards"][0]["findings"].to_string();
    assert!(
        unanswered.contains(&gone) && unanswered.contains("unanswered"),
        "{unanswered}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let now = status(&lab.path);
        if now["shards"][0]["findings"]
            .to_string()
            .contains("\"failed\"")
        {
            break now;
        }
        assert!(Instant::now() < deadline, "never marked failed: {now:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let findings = failed["shards"][0]["findings"].to_string();
    assert!(
        findings.contains(&gone) && findings.contains("failed"),
        "{failed:#}"
    );

    let out = succeed(&mut cluster(&lab.path, &["status"]));
    let table = String::from_utf8_lossy(&out);
    assert!(
        table.contains("3 shard(s)") && table.contains("(us-east-2)"),
        "{table}"
    );
}
