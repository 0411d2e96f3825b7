//! Real authoritative servers for the RFC 2136 tests — BIND 9 (`named`), Knot DNS (`knotd`) and
//! PowerDNS Authoritative (`pdns_server`, SQLite backend) — each started on a free loopback port
//! with an empty zone `z.test.` that one TSIG key may update. Debian's packages; `make test`
//! installs them. Each server is stopped and its directory removed on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ZONE: &str = "z.test.";
pub const KEY_NAME: &str = "valkey-dr-key";
/// base64 of 32 bytes: what `tsig-keygen -a hmac-sha256` prints.
pub const SECRET: &str = "1bVhRkEGH7SNhwGYz3vH8Z8lzjS8Tn5hEmWYuM6CFw8=";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bind,
    Knot,
    PowerDns,
}

pub struct AuthServer {
    pub kind: Kind,
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    // Free for TCP and UDP at once, as the servers need both.
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The names the controller writes for a zone with `regions`, and only those: what docs/dns-providers.md's
/// update-policy grants, as (name, types).
pub fn names(regions: &[&str]) -> Vec<(String, &'static str)> {
    let mut names = vec![
        ("demo.z.test.".to_string(), "CNAME"),
        ("_valkey-dr.demo.z.test.".to_string(), "TXT"),
    ];
    for region in regions {
        names.push((format!("primary.{region}.z.test."), "A AAAA"));
        names.push((format!("reader.{region}.z.test."), "A AAAA"));
    }
    names
}

const ZONE_FILE: &str = "$TTL 60\n\
@ IN SOA ns.z.test. hostmaster.z.test. 1 3600 600 86400 60\n\
@ IN NS ns.z.test.\n\
ns IN A 127.0.0.1\n";

impl AuthServer {
    /// A server whose key may write the names of one region, `r1`.
    pub fn start(kind: Kind) -> AuthServer {
        Self::start_for(kind, &["r1"])
    }

    pub fn start_for(kind: Kind, regions: &[&str]) -> AuthServer {
        let names = names(regions);
        let grants: String = names
            .iter()
            .map(|(name, types)| format!("grant {KEY_NAME} name {name} {types}; "))
            .collect();
        let knot_names = names
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("valkey-dr-{kind:?}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self::configure(kind, &dir, port, &grants, &knot_names);
        let server = AuthServer {
            kind,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: Self::spawn(kind, &dir),
            dir,
        };
        server.wait_ready();
        server
    }

    /// Writes the server's configuration and empty zone into `dir`.
    fn configure(kind: Kind, dir: &std::path::Path, port: u16, grants: &str, knot_names: &str) {
        let d = dir.display();
        match kind {
            Kind::Bind => {
                std::fs::write(dir.join("z.test.zone"), ZONE_FILE).unwrap();
                std::fs::write(
                    dir.join("named.conf"),
                    format!(
                        "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; \
                         listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; \
                         recursion no; dnssec-validation no; notify no; }};\n\
                         controls {{ }};\n\
                         key \"{KEY_NAME}\" {{ algorithm hmac-sha256; secret \"{SECRET}\"; }};\n\
                         zone \"z.test\" {{ type primary; file \"{d}/z.test.zone\"; \
                         update-policy {{ {grants}}}; }};\n"
                    ),
                )
                .unwrap();
            }
            Kind::Knot => {
                std::fs::write(dir.join("z.test.zone"), ZONE_FILE).unwrap();
                std::fs::write(
                    dir.join("knot.conf"),
                    format!(
                        "server:\n  rundir: \"{d}\"\n  listen: 127.0.0.1@{port}\n\
                         database:\n  storage: \"{d}\"\n\
                         log:\n  - target: stderr\n    any: warning\n\
                         key:\n  - id: {KEY_NAME}\n    algorithm: hmac-sha256\n    secret: {SECRET}\n\
                         acl:\n  - id: update\n    key: {KEY_NAME}\n    action: update\n\
                         \x20   update-type: [A, AAAA, CNAME, TXT]\n    update-owner: name\n\
                         \x20   update-owner-match: equal\n    update-owner-name: [{knot_names}]\n\
                         zone:\n  - domain: z.test\n    storage: \"{d}\"\n    file: z.test.zone\n    acl: update\n"
                    ),
                )
                .unwrap();
            }
            Kind::PowerDns => {
                let db = dir.join("pdns.sqlite3");
                let schema = std::fs::read_to_string(
                    "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql",
                )
                .expect("pdns-backend-sqlite3 is installed");
                let secret = SECRET;
                let setup = format!(
                    "{schema}\n\
                     INSERT INTO domains (name, type) VALUES ('z.test', 'NATIVE');\n\
                     INSERT INTO records (domain_id, name, type, content, ttl) VALUES \
                     (1, 'z.test', 'SOA', 'ns.z.test hostmaster.z.test 1 3600 600 86400 60', 60), \
                     (1, 'z.test', 'NS', 'ns.z.test', 60), (1, 'ns.z.test', 'A', '127.0.0.1', 60);\n\
                     INSERT INTO tsigkeys (name, algorithm, secret) VALUES ('{KEY_NAME}', 'hmac-sha256', '{secret}');\n\
                     INSERT INTO domainmetadata (domain_id, kind, content) VALUES \
                     (1, 'TSIG-ALLOW-DNSUPDATE', '{KEY_NAME}'), (1, 'ALLOW-DNSUPDATE-FROM', '127.0.0.0/8');\n"
                );
                let status = Command::new("sqlite3")
                    .arg(&db)
                    .stdin(Stdio::piped())
                    .spawn()
                    .and_then(|mut child| {
                        use std::io::Write;
                        child.stdin.take().unwrap().write_all(setup.as_bytes())?;
                        child.wait()
                    })
                    .expect("sqlite3 runs");
                assert!(status.success(), "the PowerDNS database is set up");
                // Updates are off by default; caches off so that a read follows an update.
                std::fs::write(
                    dir.join("pdns.conf"),
                    format!(
                        "launch=gsqlite3\ngsqlite3-database={}\nlocal-address=127.0.0.1\n\
                         local-port={port}\nsocket-dir={d}\ndnsupdate=yes\n\
                         allow-dnsupdate-from=127.0.0.0/8\ncache-ttl=0\nquery-cache-ttl=0\n\
                         negquery-cache-ttl=0\nzone-cache-refresh-interval=0\nguardian=no\n\
                         daemon=no\ndisable-syslog=yes\nloglevel=3\nwebserver=no\napi=no\n",
                        db.display()
                    ),
                )
                .unwrap();
            }
        }
    }

    /// Starts the server on the configuration in `dir`.
    fn spawn(kind: Kind, dir: &std::path::Path) -> Child {
        let mut command = match kind {
            Kind::Bind => {
                let mut c = Command::new("named");
                c.args(["-g", "-n", "1", "-c"]).arg(dir.join("named.conf"));
                c
            }
            Kind::Knot => {
                let mut c = Command::new("knotd");
                c.arg("-c").arg(dir.join("knot.conf"));
                c
            }
            Kind::PowerDns => {
                let mut c = Command::new("pdns_server");
                c.arg(format!("--config-dir={}", dir.display()));
                c
            }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{kind:?} starts ({e}); `make test` installs it"))
    }

    /// SIGKILLs the server (its zone data stays in its directory).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same address and data.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.kind, &self.dir);
        self.wait_ready();
    }

    /// Until the server answers the zone's SOA over TCP.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = Command::new("dig")
                .args(["+tcp", "+short", "+time=1", "+tries=1", "-p"])
                .arg(self.addr.port().to_string())
                .arg(format!("@{}", self.addr.ip()))
                .args([ZONE, "SOA"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("hostmaster") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{:?} did not serve {ZONE} within 20 s: {}",
            self.kind,
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    /// `dig +short` against this server.
    pub fn dig(&self, name: &str, rtype: &str) -> String {
        let out = Command::new("dig")
            .args(["+tcp", "+short", "-p"])
            .arg(self.addr.port().to_string())
            .arg(format!("@{}", self.addr.ip()))
            .args([name, rtype])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}
