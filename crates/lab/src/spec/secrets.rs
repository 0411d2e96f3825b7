//! The lab's secrets and certificates, and how its clients connect with them.

use std::path::PathBuf;

use super::{APP_USER, LabSpec};

impl LabSpec {
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls").join("ca.pem")
    }

    pub fn node_cert(&self, region: usize, index: usize) -> PathBuf {
        self.dir
            .join("tls")
            .join(format!("{}.pem", self.node_ip(region, index)))
    }

    pub fn node_key(&self, region: usize, index: usize) -> PathBuf {
        self.dir
            .join("tls")
            .join(format!("{}.key", self.node_ip(region, index)))
    }

    pub fn password_file(&self) -> PathBuf {
        self.dir.join("secrets").join("valkey-password")
    }

    /// The password of the applications' user ([`APP_USER`]).
    pub fn app_password_file(&self) -> PathBuf {
        self.dir.join("secrets").join("valkey-app-password")
    }

    /// A sequence writer through the global name, with the lab's TLS and the applications' user
    /// (it cannot write the control keys: `valkey_dr_valkey::acl`).
    pub fn writer(&self, prefix: &str) -> Result<crate::writer::WriterConfig, String> {
        Ok(crate::writer::WriterConfig {
            dns: self.dns,
            name: format!("{}.{}.", self.global_name, self.zone),
            port: self.port,
            prefix: prefix.to_string(),
            list: false,
            via: Default::default(),
            security: self.app_security()?,
            netns: None,
        })
    }

    /// How the lab's applications connect: as [`APP_USER`], with its password.
    pub fn app_security(&self) -> Result<valkey_dr_valkey::Security, String> {
        let password = std::fs::read_to_string(self.app_password_file())
            .map_err(|e| format!("cannot read {}: {e}", self.app_password_file().display()))?;
        let mut security = self.security()?;
        security.auth = Some(valkey_dr_valkey::Credentials {
            username: Some(APP_USER.to_string()),
            password: valkey_dr_valkey::Secret::new(password.trim()),
        });
        Ok(security)
    }

    /// How clients of this lab connect: its CA and its password (read from the lab directory).
    pub fn security(&self) -> Result<valkey_dr_valkey::Security, String> {
        let password = std::fs::read_to_string(self.password_file())
            .map_err(|e| format!("cannot read {}: {e}", self.password_file().display()))?;
        let tls = if self.tls {
            let ca_pem = std::fs::read(self.ca_file())
                .map_err(|e| format!("cannot read {}: {e}", self.ca_file().display()))?;
            Some(valkey_dr_valkey::TlsMaterial {
                ca_pem,
                client: None,
            })
        } else {
            None
        };
        Ok(valkey_dr_valkey::Security {
            tls,
            auth: Some(valkey_dr_valkey::Credentials {
                username: None,
                password: valkey_dr_valkey::Secret::new(password.trim()),
            }),
        })
    }
}
