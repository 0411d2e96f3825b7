//! redis-rs `ConnectionManager` writer for `valkey-dr drill --clients` (protocol:
//! clients/README.md).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ErrorKind, IntoConnectionInfo, ServerErrorKind};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn is_readonly(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// Default: `ConnectionManager::new`. Recommended: bounded connect and response timeouts, a short
/// reconnect backoff — and a new manager on READONLY or a timeout, because the manager reconnects
/// only when the connection drops, and a demoted primary or a hung node keeps it open.
async fn manager(client: &Client, recommended: bool) -> redis::RedisResult<ConnectionManager> {
    if !recommended {
        return ConnectionManager::new(client.clone()).await;
    }
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(500))
        .set_number_of_retries(20);
    ConnectionManager::new_with_config(client.clone(), config).await
}

enum Connection {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Default: the cluster client's own settings. Recommended: bounded connect and response
/// timeouts (a hung node).
async fn cluster_connection(
    client: &Client,
    recommended: bool,
) -> redis::RedisResult<redis::cluster_async::ClusterConnection> {
    let mut builder =
        redis::cluster::ClusterClientBuilder::new(vec![client.get_connection_info().clone()]);
    if recommended {
        builder = builder
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1));
    }
    builder.build()?.get_async_connection().await
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let recommended = env("VALKEY_DR_SETTINGS") == "recommended";
    let user = env("VALKEY_DR_USER");
    let password = env("VALKEY_DR_PASSWORD");
    let address = redis::ConnectionAddr::Tcp(
        env("VALKEY_DR_HOST"),
        env("VALKEY_DR_PORT").parse().unwrap_or(6379),
    );
    let mut redis_settings = redis::RedisConnectionInfo::default();
    if !user.is_empty() {
        redis_settings = redis_settings.set_username(user);
    }
    if !password.is_empty() {
        redis_settings = redis_settings.set_password(password);
    }
    let key = env("VALKEY_DR_KEY");
    let seconds: f64 = env("VALKEY_DR_SECONDS").parse().unwrap_or(5.0);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");

    let client = match address
        .into_connection_info()
        .map(|info| info.set_redis_settings(redis_settings))
        .and_then(Client::open)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid connection settings: {e}");
            std::process::exit(2);
        }
    };
    let (mut seq, mut acked, mut readonly, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut gaps: Vec<[u64; 2]> = Vec::new();
    let mut first_error: Option<String> = None;
    let mut last_ack = now_ms();
    // Cluster mode: the address is a seed; the cluster client reads the slots from it and
    // follows MOVED.
    let cluster = env("VALKEY_DR_CLUSTER") == "1";
    let mut conn: Option<Connection> = None;
    while Instant::now() < deadline {
        let step = async {
            if conn.is_none() {
                conn = Some(if cluster {
                    Connection::Cluster(cluster_connection(&client, recommended).await?)
                } else {
                    Connection::Single(manager(&client, recommended).await?)
                });
            }
            let push = redis::cmd("RPUSH").arg(&key).arg(seq).clone();
            match conn.as_mut().expect("set above") {
                Connection::Single(c) => push.query_async::<i64>(c).await,
                Connection::Cluster(c) => push.query_async::<i64>(c).await,
            }
        };
        let result = tokio::select! {
            r = step => r,
            _ = term.recv() => break,
        };
        match result {
            Ok(_) => {
                let at = now_ms();
                if at - last_ack > 20 {
                    gaps.push([last_ack, at]);
                }
                last_ack = at;
                seq += 1;
                acked += 1;
                if acked == 1 {
                    println!("ready");
                }
            }
            Err(e) => {
                if is_readonly(&e) {
                    readonly += 1;
                } else {
                    other += 1;
                }
                if recommended && (is_readonly(&e) || e.is_timeout()) {
                    conn = None;
                }
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let summary = serde_json::json!({
        "acked": acked,
        "readonly_errors": readonly,
        "other_errors": other,
        "gaps": gaps,
        "last_ack_ms": last_ack,
        "stopped_ms": now_ms(),
        "first_error": first_error,
    });
    println!("{summary}");
}
