//! The engine battery ([`valkey_dr_controller::testing::battery`]) against real Valkey servers and
//! against the fake engine the controller's other tests use: both must behave alike wherever the
//! controller relies on it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use valkey_dr_controller::testing::{BatteryNodes, FakeEngine, FakeNode, battery};
use valkey_dr_core::Endpoint;
use valkey_dr_valkey::{Security, Timeouts, ValkeyEngine};

/// The controller's engine as the tests use it (no TLS, no AUTH).
fn engine() -> ValkeyEngine {
    ValkeyEngine::new(
        Timeouts {
            connect: Duration::from_millis(500),
            command: Duration::from_millis(500),
        },
        Security::default(),
    )
}

fn mark(epoch: u64, writer: &Endpoint) -> valkey_dr_core::observation::EpochMark {
    valkey_dr_core::observation::EpochMark {
        epoch,
        writer: writer.to_string(),
    }
}

#[tokio::test]
async fn the_fake_engine_passes_the_battery() {
    let engine = FakeEngine::default();
    let nodes = BatteryNodes {
        a: Endpoint::new("127.0.9.1", 6379),
        b: Endpoint::new("127.0.9.2", 6379),
        gone: Endpoint::new("127.0.9.3", 6379),
        silent: Endpoint::new("127.0.9.4", 6379),
    };
    engine.insert(nodes.a.clone(), FakeNode::primary("a-history", 0));
    engine.insert(nodes.b.clone(), FakeNode::primary("b-history", 0));
    engine.insert(
        nodes.silent.clone(),
        FakeNode {
            silent: true,
            ..FakeNode::primary("silent-history", 0)
        },
    );
    battery(&engine, &nodes).await;
}

/// A `valkey-server` on a free loopback port with a config file of its own (so that
/// `CONFIG REWRITE` works), no persistence; killed when dropped.
struct Server {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Server {
    fn start(name: &str) -> Server {
        Server::start_with(name, "")
    }

    /// A server whose config file ends with `extra` (later lines win).
    fn start_with(name: &str, extra: &str) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("valkey-dr-battery-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("server dir");
        let config = dir.join("valkey.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {}\n{extra}",
                dir.display()
            ),
        )
        .expect("config file");
        let child = Command::new("valkey-server")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("valkey-server is installed (make test installs it)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Server { child, dir, port }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_valkey_passes_the_battery() {
    let (a, b) = (Server::start("a"), Server::start("b"));
    let gone = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // Bound and listening but never accepting: the kernel completes the handshake, nothing
    // answers (a stalled process, or a cut that still lets the connection open).
    let silent = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let engine = engine();
    let nodes = BatteryNodes {
        a: a.endpoint(),
        b: b.endpoint(),
        gone: Endpoint::new("127.0.0.1", gone),
        silent: Endpoint::new(
            "127.0.0.1",
            silent.local_addr().expect("its address").port(),
        ),
    };
    battery(&engine, &nodes).await;
    // Valkey's defaults, as the controller reads them: the ping period weakens a safety rule.
    let settings = valkey_dr_core::Engine::sync_settings(&engine, &nodes.a)
        .await
        .expect("CONFIG GET");
    assert_eq!(settings.ping_replica_period_s, 10);
    assert_eq!(settings.diskless_delay_s, 5);
    assert!(settings.weaknesses()[0].contains("repl-ping-replica-period"));
}

/// `valkey-cli` against a test server (its own short-lived connection).
fn cli(server: &Server, args: &[&str]) -> String {
    let out = Command::new("valkey-cli")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(args)
        .output()
        .expect("valkey-cli is installed (make test installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A node at `maxclients` (a reconnect storm after a name change or a client kill): an error
/// reply on the controller's connection must not cost it that connection, or the next pause or
/// demotion cannot reach the node. Before, every error dropped the cached connection, and the
/// reconnect was refused ("max number of clients reached").
#[tokio::test(flavor = "multi_thread")]
async fn an_error_reply_keeps_the_control_connection_of_a_node_at_maxclients() {
    let server = Server::start("full");
    let gone = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // A replica (of nobody reachable): writes get -READONLY, an error reply.
    assert_eq!(
        cli(&server, &["REPLICAOF", "127.0.0.1", &gone.to_string()]),
        "OK"
    );
    let engine = engine();
    let node = server.endpoint();
    valkey_dr_core::Engine::ping(&engine, &node)
        .await
        .expect("the controller's connection");
    // Every slot taken: only the controller's connection is left once the CLI's closes.
    assert_eq!(cli(&server, &["CONFIG", "SET", "maxclients", "1"]), "OK");
    let mark = mark(1, &node);
    let refused = valkey_dr_core::Engine::write_heartbeat(&engine, &node, 1, &mark).await;
    let error = refused.expect_err("a replica refuses writes");
    assert_eq!(
        error.kind,
        valkey_dr_core::observation::FailureKind::Unusable
    );
    assert!(error.reason.contains("read only"), "{error}");
    assert_eq!(error.reply, Some(valkey_dr_core::ErrorReply::ReadOnly));
    // The same connection still works: a pause reaches the node.
    valkey_dr_core::Engine::ping(&engine, &node)
        .await
        .expect("the connection survived the error reply");
    valkey_dr_core::Engine::pause_writes(&engine, &node, Duration::from_millis(100))
        .await
        .expect("a pause reaches a node at maxclients");
}

/// A writer that refuses every write for a reason of its own answers with an error reply the
/// controller knows by name: `-MISCONF` when its last snapshot failed (a disk that cannot be
/// written: here a directory in procfs, where even root cannot create the file) and `-OOM` over
/// `maxmemory`.
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_that_cannot_snapshot_or_is_full_refuses_writes_by_name() {
    let server = Server::start_with("no-disk", "dir /proc/sys\nsave \"3600 1\"\n");
    let engine = engine();
    let node = server.endpoint();
    let mark = mark(1, &node);
    let heartbeat = || valkey_dr_core::Engine::write_heartbeat(&engine, &node, 1, &mark);
    heartbeat().await.expect("a healthy master takes writes");
    cli(&server, &["BGSAVE"]);
    let started = std::time::Instant::now();
    while !cli(&server, &["INFO", "persistence"]).contains("rdb_last_bgsave_status:err") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the snapshot did not fail"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let error = heartbeat()
        .await
        .expect_err("writes refused after a failed snapshot");
    assert_eq!(
        error.reply,
        Some(valkey_dr_core::ErrorReply::Misconf),
        "{error}"
    );
    assert!(error.reply.is_some_and(|r| r.refuses_writes()));
    // The connection stays, and the node is still a master that answers: only writes fail.
    let info = valkey_dr_core::Engine::replication(&engine, &node)
        .await
        .expect("it answers");
    assert!(info.is_primary());

    assert_eq!(
        cli(
            &server,
            &["CONFIG", "SET", "stop-writes-on-bgsave-error", "no"]
        ),
        "OK"
    );
    heartbeat().await.expect("writes taken again");
    assert_eq!(cli(&server, &["CONFIG", "SET", "maxmemory", "1"]), "OK");
    let error = heartbeat().await.expect_err("over maxmemory");
    assert_eq!(
        error.reply,
        Some(valkey_dr_core::ErrorReply::OutOfMemory),
        "{error}"
    );
}

/// The application user valkey-dr recommends (`valkey_dr_valkey::acl`), on a real server: it
/// writes and reads ordinary keys and reads the control keys, but cannot write an epoch mark or
/// steer the node (CONFIG, REPLICAOF, CLIENT PAUSE, FAILOVER); the controller's own user can.
#[tokio::test(flavor = "multi_thread")]
async fn the_application_user_cannot_write_the_control_keys_or_steer_the_node() {
    let line = valkey_dr_valkey::acl::application_user_line("app", "app-secret");
    let server = Server::start_with("acl", &format!("{line}\n"));
    let app = |args: &[&str]| {
        let mut all = vec!["--no-auth-warning", "--user", "app", "--pass", "app-secret"];
        all.extend_from_slice(args);
        cli(&server, &all)
    };
    assert_eq!(app(&["SET", "user:42", "x"]), "OK");
    assert_eq!(app(&["SET", "__valkey-dr", "x"]), "OK");
    assert_eq!(app(&["MSET", "a", "1", "_b", "2"]), "OK");
    assert_eq!(app(&["GET", "user:42"]), "x");
    // The controller (the default user here) writes the mark; the application reads it only.
    let engine = engine();
    let node = server.endpoint();
    let mark = mark(3, &node);
    valkey_dr_core::Engine::write_heartbeat(&engine, &node, 1, &mark)
        .await
        .expect("the controller writes its marks");
    assert_eq!(app(&["GET", "__valkey-dr:epoch"]), mark.render());
    for refused in [
        &["SET", "__valkey-dr:epoch", "999 127.0.0.1:1"][..],
        &["MSET", "a", "1", "__valkey-dr:heartbeat", "0"],
        &["DEL", "__valkey-dr:epoch"],
        &["CONFIG", "SET", "min-replicas-to-write", "0"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["CLIENT", "PAUSE", "1000", "WRITE"],
        &["FAILOVER"],
        &["FLUSHALL"],
    ] {
        let reply = app(refused);
        assert!(reply.starts_with("NOPERM"), "{refused:?}: {reply}");
    }
    assert_eq!(app(&["GET", "__valkey-dr:epoch"]), mark.render());
}

/// A deposed leader whose clock stood still (a paused VM: its lease window still open by its own
/// clock) resumes and acts on a node after a later leader took over. The later leader claimed
/// the node (`Engine::claim`) while it was frozen: its connection there is closed, so its next
/// command fails without reaching the node, and it cannot open another — the node names a later
/// leader. Before, the command landed: the node was paused by a controller that led no more.
#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leader_whose_clock_stood_still_cannot_act_on_a_claimed_node() {
    use std::sync::Arc;
    use std::time::Instant;
    use valkey_dr_controller::ha::LeaderOnly;
    use valkey_dr_coord::{Fence, LeaderCell};
    use valkey_dr_core::Engine;

    let server = Server::start("claim");
    let node = server.endpoint();
    let leader = |token| {
        let cell = Arc::new(LeaderCell::default());
        cell.set(Some(Fence {
            token,
            // A clock that stood still: the window never ends by it.
            act_until: Instant::now() + Duration::from_secs(60),
            acts_from: Instant::now(),
        }));
        LeaderOnly {
            inner: Arc::new(engine()),
            leader: cell,
        }
    };
    let earlier = leader(5);
    earlier
        .set_write_quorum(&node, valkey_dr_core::self_fence::WriteQuorum::OFF)
        .await
        .expect("the earlier leader acts while it leads");

    let later = leader(9);
    later
        .claim(&node, 9)
        .await
        .expect("the later leader claims the node");

    let refused = earlier.pause_writes(&node, Duration::from_secs(30)).await;
    assert!(refused.is_err(), "its connection was closed: {refused:?}");
    let again = earlier
        .pause_writes(&node, Duration::from_secs(30))
        .await
        .expect_err("a new connection is refused too");
    assert!(again.reason.contains("later leader (token 9)"), "{again}");
    assert_eq!(
        again.kind,
        valkey_dr_core::observation::FailureKind::Refused
    );
    // Nothing of it reached the node: a client's write goes through at once.
    let written = cli(&server, &["SET", "after", "1"]);
    assert_eq!(written, "OK");
    assert!(!cli(&server, &["CLIENT", "LIST"]).contains("valkey-dr-leader-5"));

    // The later leader acts; observing stays open to everyone.
    later
        .pause_writes(&node, Duration::from_millis(50))
        .await
        .expect("the later leader acts");
    assert!(earlier.ping(&node).await.is_ok());
}

/// Why the token fences connections and not commands (the residual of review N6, a leader frozen
/// with every clock of its VM): Valkey runs neither `REPLICAOF` nor `CLIENT PAUSE` inside a
/// script, so no script can check a fencing token on the node before either lands.
#[tokio::test(flavor = "multi_thread")]
async fn valkey_refuses_the_actions_a_token_check_would_wrap_inside_a_script() {
    let server = Server::start("noscript");
    for action in [
        "redis.call('REPLICAOF', 'NO', 'ONE')",
        "redis.call('CLIENT', 'PAUSE', '10', 'WRITE')",
    ] {
        let refused = cli(&server, &["EVAL", &format!("return {action}"), "0"]);
        assert!(
            refused.contains("not allowed from script"),
            "{action}: {refused}"
        );
    }
}
