//! How clients connect with TLS through the name (docs/aws.md, "Connecting clients with TLS"): a real TLS
//! `valkey-server` whose certificate names only its endpoint — as ElastiCache's do — behind our DNS
//! server's CNAME, reached by deploy/aws/connect-tls.py (Python's ssl module: chain and host name
//! verified, as client libraries do).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use valkey_dr_core::{Change, RecordSet, RecordType};
use valkey_dr_dns::embedded::{DnsServer, Zone};

const ENDPOINT: &str = "master.vdr-east.abc123.use2.cache.test";

fn run(command: &mut Command) {
    let out = command.output().expect("runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for [`ENDPOINT`] only (openssl, as an operator would).
fn certificates(dir: &Path) {
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let script = format!(
        "set -e
        openssl req -x509 {key} -keyout ca.key -out ca.pem -days 2 -subj '/CN=valkey-dr test CA'
        openssl req {key} -keyout server.key -out server.csr -subj /CN=writer
        echo 'subjectAltName=DNS:{ENDPOINT}' > san
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\
            -out server.pem -days 2 -extfile san"
    );
    run(Command::new("bash").current_dir(dir).args(["-c", &script]));
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connect(dir: &Path, dns: &str, port: u16, verify_as: Option<&str>) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/aws/connect-tls.py");
    let mut command = Command::new("python3");
    command.arg(script).args([
        "demo.valkey-dr.internal",
        "--port",
        &port.to_string(),
        "--cacert",
        dir.join("ca.pem").to_str().unwrap(),
        "--dns",
        dns,
        "--connect-to",
        "127.0.0.1",
    ]);
    if let Some(name) = verify_as {
        command.args(["--verify-as", name]);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_clients_verify_the_writers_own_name() {
    let dir: PathBuf = std::env::temp_dir().join(format!("valkey-dr-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _valkey = Server(
        Command::new("valkey-server")
            .current_dir(&dir)
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("valkey-server"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The name, as the reconcile publishes it: a CNAME to the writer's endpoint.
    let zone = Arc::new(Zone::new("valkey-dr.internal"));
    zone.apply_changes(&[Change::Create {
        new: RecordSet::new(
            "demo.valkey-dr.internal",
            RecordType::Cname,
            10,
            [format!("{ENDPOINT}.")],
        ),
    }])
    .unwrap();
    let dns = DnsServer::start(zone, "127.0.0.1:0".parse().unwrap(), 5)
        .await
        .unwrap();
    let dns = dns.local_addr().to_string();

    let (ok, output) = connect(&dir, &dns, port, None);
    assert!(ok, "{output}");
    assert_eq!(output.trim(), format!("PONG from {ENDPOINT}"));

    // Verifying against the name the application was given fails, as with ElastiCache.
    let (ok, output) = connect(&dir, &dns, port, Some("demo.valkey-dr.internal"));
    assert!(!ok, "{output}");
    assert!(output.contains("Hostname mismatch"), "{output}");
    let _ = std::fs::remove_dir_all(&dir);
}
