//! Client libraries following the cluster through its moves.

use super::*;

/// Checks a client writer's list in the cluster (read through `asked`).
async fn cluster_list_check(asked: SocketAddr, key: &str, acked: u64) -> Result<ListCheck, String> {
    let entries = list_at(asked, key).await.map_err(|e| e.to_string())?;
    Ok(check_list(&entries, acked))
}

/// Runs every client writer (`make clients`) through `act`, from its start to `settle` after it
/// returned, and checks each one's list through `asked`.
async fn through(
    seed: &clients::Target,
    writers: &[clients::ClientWriter],
    run_id: u64,
    settle: Duration,
    asked: SocketAddr,
    act: impl AsyncFnOnce(),
) -> Vec<clients::ClientReport> {
    let clients_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients");
    let running = clients::start(seed, &clients_dir, run_id, writers, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = valkey_dr_controller::clock::now_ms();
    act().await;
    let took_effect = valkey_dr_controller::clock::now_ms();
    tokio::time::sleep(settle).await;
    clients::stop(running, started, took_effect, async |key: &str, acked| {
        cluster_list_check(asked, key, acked).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_clients_follow_a_switchover_and_a_region_failover() {
    let mut lab = Formed::new("clients").await;
    let seed = clients::Target::cluster_seed(lab.addrs[0]);
    // Every library's cluster client (`make clients`), default and recommended settings.
    let libraries: Vec<Library> = Library::ALL
        .into_iter()
        .filter(|l| l.has_cluster_client())
        .collect();
    let writers = clients::matrix(&libraries);
    let report = |reports: &[clients::ClientReport]| {
        reports
            .iter()
            .map(|r| {
                format!(
                    "{} ({}): {} acked, {} lost, longest gap {} ms, error {:?}, first error {:?}",
                    r.client,
                    r.settings,
                    r.acknowledged_writes,
                    r.lost,
                    r.longest_gap_ms,
                    r.error,
                    r.first_error
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // A planned switchover: every library follows it and loses nothing.
    let switched = through(
        &seed,
        &writers,
        1,
        // Long enough that a library stalled a second or more by a loaded machine (seen: 3.4 s
        // under four tests at once) still shows writes well after the switchover.
        Duration::from_secs(4),
        lab.addrs[6],
        async || {
            succeed(&mut cluster(&lab.path, &["switchover", "us-east-2"]));
        },
    )
    .await;
    eprintln!("switchover:\n{}", report(&switched));
    for r in &switched {
        assert!(r.error.is_none(), "{}", report(&switched));
        assert_eq!(r.lost, 0, "{}", report(&switched));
        assert!(
            r.last_write_after_ms > 1000,
            "it writes after the switchover: {}",
            report(&switched)
        );
    }

    // us-east-2, now holding every primary, is lost; the primaries come back east. Every
    // library writes again (what the lost primaries had not sent east may be lost: shown).
    let failed_over = through(
        &seed,
        &writers,
        2,
        Duration::from_secs(8),
        lab.addrs[0],
        async || {
            for node in &mut lab.nodes[6..9] {
                node.kill();
            }
            succeed(&mut cluster(
                &lab.path,
                &["failover", "us-east-1", "--confirm-down"],
            ));
        },
    )
    .await;
    eprintln!("region failover:\n{}", report(&failed_over));
    for r in &failed_over {
        assert!(r.error.is_none(), "{}", report(&failed_over));
        assert!(
            r.first_write_after_ms.is_some() && r.last_write_after_ms > 5000,
            "it writes again after the failover: {}",
            report(&failed_over)
        );
    }
}
