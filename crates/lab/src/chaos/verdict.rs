//! The verdict on one run, from what the clients and the monitor saw (pure).

use super::{ChaosReport, Fault, LEASE_TTL_MS, Scenario};

pub(super) fn verdict(r: &ChaosReport, scenario: &Scenario) -> String {
    let mut problems = Vec::new();
    if let Some(error) = &r.error {
        problems.push(format!("not judged: {error}"));
    }
    let lost = r.lost_outside + r.lost_inside;
    // At most one write per client per kill of the writer: the replication window, not a fault of
    // the controller's (see `Fault::writer_kills`).
    let in_flight = scenario.fault.writer_kills();
    let within_window = r.lost_outside <= in_flight && r.lost_inside <= in_flight;
    // An isolated region's writer acknowledges writes until it is fenced; those are lost by
    // design of asynchronous replication. In the highly available shape its region's controller
    // pauses it within the lease TTL. With one controller (which cannot reach into the cut) its
    // own self-fence stops it, and the controller promotes only once that surely holds: what
    // matters is that no second writer took writes meanwhile. Only the inside writer reaches it:
    // the outside one may lose at most the write whose replication was in flight at the cut.
    let fenced_in_time = matches!(scenario.fault, Fault::IsolateWriterRegion { .. })
        && r.two_writable_masters_ms == 0
        && r.lost_outside <= 1
        && (!scenario.ha || r.fenced_after_ms.is_some_and(|ms| ms <= LEASE_TTL_MS));
    if lost > 0 && !within_window && !fenced_in_time {
        problems.push(format!("{lost} acknowledged lost"));
    }
    if !r.final_one_writer {
        problems.push("not one writer".into());
    }
    // One controller cannot fence a region it is cut off from, and promotes only once the
    // writer's self-fence holds; the highly available shape must never show two writers.
    if scenario.ha && r.two_writable_masters_ms > 0 {
        problems.push(format!(
            "two masters accepted writes for {} ms",
            r.two_writable_masters_ms
        ));
    }
    // A site in full contact with etcd and the regions has no reason to pause its writer; an
    // etcd election (its raft leader cut off) may cost every site a short pause.
    if r.fenced_untouched > 0 {
        problems.push(format!(
            "a site no cut touched paused its writer over 1 s {} time(s) (longest {} ms)",
            r.fenced_untouched, r.longest_untouched_pause_ms
        ));
    }
    // A site cut off from etcd answers its copy only while etcd vouched for it within the lease
    // TTL; after that, SERVFAIL sends resolvers to a site that knows (review M2). One sample and
    // a watch's hop of slack.
    if scenario.ha && r.longest_sites_disagree_ms > LEASE_TTL_MS + 1000 {
        problems.push(format!(
            "sites' DNS servers answered different writers for {} ms",
            r.longest_sites_disagree_ms
        ));
    }
    if r.data_loss_suspected > 0 {
        problems.push(format!("{} data loss(es) suspected", r.data_loss_suspected));
    }
    // A kill moves the name to a live writer within seconds (issue: a block that keeps a dead
    // writer published is an outage).
    if matches!(scenario.fault, Fault::IsolateThenKillNewWriter { .. })
        && r.longest_name_off_writer_ms > 3000
    {
        problems.push(format!(
            "the name led to no writer for {} ms",
            r.longest_name_off_writer_ms
        ));
    }
    // A writer that refuses every write for its own disk is an outage until the writer moves:
    // writes must come back within seconds, not at the heal.
    if matches!(scenario.fault, Fault::WriterDiskFails) && r.max_write_gap_ms > 5000 {
        problems.push(format!(
            "writes refused for {} ms: the writer that refuses them stayed the writer",
            r.max_write_gap_ms
        ));
    }
    if !r.final_name_on_writer {
        problems.push("name not on the writer".into());
    }
    if !r.final_healthy {
        problems.push("not healthy".into());
    }
    if scenario.max_failovers.is_some_and(|max| r.failovers > max) {
        problems.push(format!("{} failover(s)", r.failovers));
    }
    if r.name_changes > r.failovers.max(1) {
        problems.push(format!(
            "the name changed {} times for {} failover(s)",
            r.name_changes, r.failovers
        ));
    }
    match (problems.is_empty(), lost) {
        (true, 0) if r.lost_excused > 0 => format!(
            "ok ({} acknowledged by the isolated writer before its fence)",
            r.lost_excused
        ),
        (true, 0) => "ok".into(),
        (true, lost) if fenced_in_time && scenario.ha => format!(
            "ok ({lost} acknowledged before the region fenced itself, {} ms in)",
            r.fenced_after_ms.unwrap_or_default()
        ),
        (true, lost) if fenced_in_time => format!(
            "ok ({lost} acknowledged by the isolated writer before its self-fence; never two writers)"
        ),
        (true, lost) => format!("ok ({lost} in flight at the kill)"),
        _ => problems.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(fault: Fault, ha: bool) -> Scenario {
        Scenario {
            name: "case".into(),
            fault,
            duration_ms: 10_000,
            max_failovers: None,
            ha,
        }
    }

    fn converged() -> ChaosReport {
        ChaosReport {
            final_one_writer: true,
            final_name_on_writer: true,
            final_healthy: true,
            failovers: 1,
            name_changes: 1,
            ..ChaosReport::default()
        }
    }

    #[test]
    fn table() {
        let kill = Fault::KillWriter {
            restart_after_ms: 0,
        };
        let isolate_then_kill = Fault::IsolateThenKillNewWriter {
            restart_after_ms: 6000,
            as_master: false,
        };
        let cut = Fault::RegionControllerDownAndCut {
            cut_first: false,
            gap_ms: 2000,
            for_ms: 8000,
            restart_inside: false,
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, ChaosReport, Scenario, &str)> = vec![
            ("nothing lost", converged(), scenario(kill.clone(), false), "ok"),
            ("the write in flight at a kill",
             ChaosReport { lost_outside: 1, ..converged() }, scenario(kill.clone(), false),
             "ok (1 in flight at the kill)"),
            ("more than the kill's window",
             ChaosReport { lost_inside: 2, ..converged() }, scenario(kill.clone(), false),
             "2 acknowledged lost"),
            ("losses only in the excused isolation phase",
             ChaosReport { lost_excused: 900, ..converged() }, scenario(isolate_then_kill.clone(), true),
             "ok (900 acknowledged by the isolated writer before its fence)"),
            ("a dead writer kept published too long",
             ChaosReport { longest_name_off_writer_ms: 6080, ..converged() },
             scenario(isolate_then_kill, true),
             "the name led to no writer for 6080 ms"),
            ("two writers in the highly available shape",
             ChaosReport { two_writable_masters_ms: 5166, ..converged() }, scenario(cut.clone(), true),
             "two masters accepted writes for 5166 ms"),
            ("a suspected loss is a failure",
             ChaosReport { data_loss_suspected: 1, ..converged() }, scenario(cut, true),
             "1 data loss(es) suspected"),
            ("not converged",
             ChaosReport { final_one_writer: false, ..converged() }, scenario(kill.clone(), false),
             "not one writer"),
            ("a stall must fail nothing over",
             converged(),
             Scenario { max_failovers: Some(0), ..scenario(Fault::ControllerStall { for_ms: 3000 }, false) },
             "1 failover(s)"),
            ("a writer refusing writes for its disk, moved within seconds",
             ChaosReport { max_write_gap_ms: 2004, ..converged() }, scenario(Fault::WriterDiskFails, false), "ok"),
            ("a writer refusing writes for its disk, kept until the heal",
             ChaosReport { max_write_gap_ms: 9000, failovers: 0, name_changes: 0, ..converged() },
             scenario(Fault::WriterDiskFails, false),
             "writes refused for 9000 ms: the writer that refuses them stayed the writer"),
            ("an isolated region fenced in time: the inside writer's losses are its price",
             ChaosReport { lost_inside: 5000, fenced_after_ms: Some(640), ..converged() },
             scenario(Fault::IsolateWriterRegion { for_ms: 8000 }, true),
             "ok (5000 acknowledged before the region fenced itself, 640 ms in)"),
            ("one controller: the isolated writer's self-fence held, never two writers",
             ChaosReport { lost_inside: 9000, ..converged() },
             scenario(Fault::IsolateWriterRegion { for_ms: 8000 }, false),
             "ok (9000 acknowledged by the isolated writer before its self-fence; never two writers)"),
            ("one controller: a promotion while the isolated writer still took writes",
             ChaosReport { lost_inside: 9000, two_writable_masters_ms: 800, ..converged() },
             scenario(Fault::IsolateWriterRegion { for_ms: 8000 }, false),
             "9000 acknowledged lost"),
            ("one controller: the outside writer's losses are never excused",
             ChaosReport { lost_inside: 9000, lost_outside: 40, ..converged() },
             scenario(Fault::IsolateWriterRegion { for_ms: 8000 }, false),
             "9040 acknowledged lost"),
            ("… but not the outside writer's (it never reached the isolated writer)",
             ChaosReport { lost_inside: 5000, lost_outside: 300, fenced_after_ms: Some(640), ..converged() },
             scenario(Fault::IsolateWriterRegion { for_ms: 8000 }, true),
             "5300 acknowledged lost"),
            ("a double flip",
             ChaosReport { name_changes: 2, ..converged() }, scenario(kill, false),
             "the name changed 2 times for 1 failover(s)"),
        ];
        for (case, report, scenario, expected) in cases {
            assert_eq!(verdict(&report, &scenario), expected, "{case}");
        }
    }
}
