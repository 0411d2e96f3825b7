//! TLS to etcd: the CA of the members' certificates and this client's own certificate.

use etcd_client::ConnectOptions;

use crate::CoordError;

/// How a client proves itself to etcd and checks etcd's members: the CA that signed the
/// members' certificates, and a client certificate when they require one.
#[derive(Clone)]
pub struct EtcdTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    // The key stays out of every log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdTls {
    /// Reads the CA and, if given, the client certificate and key (PEM files).
    pub fn load(
        ca_file: &std::path::Path,
        client: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<EtcdTls, CoordError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| CoordError::Tls(format!("cannot read {}: {e}", path.display())))
        };
        Ok(EtcdTls {
            ca_pem: read(ca_file)?,
            identity: match client {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
        })
    }

    /// Connect options with this TLS set up (plain ones without).
    pub fn options(tls: Option<&EtcdTls>) -> ConnectOptions {
        let options = ConnectOptions::new();
        let Some(tls) = tls else { return options };
        let mut config = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(etcd_client::Identity::from_pem(cert, key));
        }
        options.with_tls(config)
    }
}
