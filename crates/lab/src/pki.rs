//! The lab's own certificate authority and secrets: a CA, one certificate per node valid for every
//! address the node is reached at (its own, its region-link ends, the controller's link), and a
//! random AUTH password. Keys and the password are written with mode 0600.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::spec::LabSpec;

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// A random password: 32 hex characters from the kernel's generator.
pub fn random_password() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn generate(spec: &LabSpec) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    std::fs::create_dir_all(spec.dir.join("secrets")).map_err(|e| fail("creating secrets/", &e))?;
    std::fs::set_permissions(
        spec.dir.join("secrets"),
        std::fs::Permissions::from_mode(0o700),
    )
    .map_err(|e| fail("securing secrets/", &e))?;
    // The controller's password, and the applications' user's.
    for file in [spec.password_file(), spec.app_password_file()] {
        let password = random_password().map_err(|e| fail("password", &e))?;
        write_private(&file, password.as_bytes())
            .map_err(|e| fail(&format!("writing {}", file.display()), &e))?;
    }
    if !spec.tls {
        return Ok(());
    }
    std::fs::create_dir_all(spec.dir.join("tls")).map_err(|e| fail("creating tls/", &e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", &e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "valkey-dr lab CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", &e))?;
    let ca =
        CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| fail("CA certificate", &e))?;
    std::fs::write(spec.ca_file(), ca.pem()).map_err(|e| fail("writing the CA", &e))?;
    // etcd: each member's certificate serves its clients and reaches its peers; the controllers
    // share one client certificate.
    let etcd_certs = spec.sites.iter().map(|site| {
        let ips = spec
            .etcd_member_ips(site)
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        (format!("etcd-{site}"), ips)
    });
    let client = std::iter::once(("etcd-client".to_string(), Vec::new()));
    for (name, sans) in etcd_certs.chain(client) {
        let tls = spec.dir.join("tls");
        let (cert, key) = issue(&ca, &name, sans).map_err(|e| fail(&name, &e))?;
        std::fs::write(tls.join(format!("{name}.pem")), cert)
            .map_err(|e| fail("writing a certificate", &e))?;
        write_private(&tls.join(format!("{name}.key")), key.as_bytes())
            .map_err(|e| fail("writing a key", &e))?;
    }
    for (r, i) in spec.nodes() {
        let mut names = vec![
            spec.node_ip(r, i).to_string(),
            spec.controller_link_addr(r, i).ip().to_string(),
        ];
        names.extend(
            (0..spec.regions.len())
                .filter(|f| *f != r)
                .map(|f| spec.link_addr(f, r, i).ip().to_string()),
        );
        let (cert, key) = issue(&ca, &spec.node_ip(r, i).to_string(), names)
            .map_err(|e| fail("node certificate", &e))?;
        std::fs::write(spec.node_cert(r, i), cert)
            .map_err(|e| fail("writing a certificate", &e))?;
        write_private(&spec.node_key(r, i), key.as_bytes())
            .map_err(|e| fail("writing a key", &e))?;
    }
    Ok(())
}

/// A certificate for `names` (addresses) with common name `common_name`, signed by the lab's CA:
/// its PEM and its key's. No extended key usage: it may serve and be presented as a client.
fn issue(
    ca: &CertifiedIssuer<'_, KeyPair>,
    common_name: &str,
    names: Vec<String>,
) -> Result<(String, String), rcgen::Error> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}
