//! Loads the TLS material and the password named by the config. Errors name the field and the
//! file or variable, never the secret.

use std::path::Path;

use valkey_dr_core::Config;
use valkey_dr_core::config::Rfc2136Config;
use valkey_dr_dns::rfc2136::TsigKey;
use valkey_dr_valkey::{Credentials, Secret, Security, TlsMaterial};

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("config field `{field}`: cannot read {path}: {reason}")]
    File {
        field: &'static str,
        path: String,
        reason: String,
    },
    #[error("config field `{field}`: environment variable {var} is not set (or not UTF-8)")]
    Env { field: &'static str, var: String },
    #[error("config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("config field `{0}`: the secret is empty")]
    Empty(&'static str),
}

/// The first line of a secret file (a token, an HMAC key): never empty, never shown.
pub(crate) fn read_secret(field: &'static str, path: &Path) -> Result<String, SecurityError> {
    let bytes = read(field, path)?;
    let secret = String::from_utf8_lossy(&bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    if secret.is_empty() {
        return Err(SecurityError::Empty(field));
    }
    Ok(secret)
}

/// A secret from the file's first line or from the variable, whichever the config names
/// (validation ensured one); never empty. Returns the field it came from.
fn file_or_env(
    file: (&'static str, Option<&Path>),
    env: (&'static str, Option<&str>),
) -> Result<(&'static str, String), SecurityError> {
    let (field, secret) = match (file, env) {
        ((field, Some(path)), _) => {
            let bytes = read(field, path)?;
            let first = String::from_utf8_lossy(&bytes)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            (field, first)
        }
        (_, (field, Some(var))) => (
            field,
            std::env::var(var).map_err(|_| SecurityError::Env {
                field,
                var: var.to_string(),
            })?,
        ),
        ((field, None), (_, None)) => return Err(SecurityError::Empty(field)),
    };
    if secret.is_empty() {
        return Err(SecurityError::Empty(field));
    }
    Ok((field, secret))
}

pub(crate) fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|e| SecurityError::File {
        field,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The RFC 2136 provider's TSIG key, its secret read from the file or variable the config names.
pub fn tsig_key(c: &Rfc2136Config) -> Result<TsigKey, SecurityError> {
    let (field, secret) = file_or_env(
        (
            "dns.provider.tsig_secret_file",
            c.tsig_secret_file.as_deref(),
        ),
        ("dns.provider.tsig_secret_env", c.tsig_secret_env.as_deref()),
    )?;
    TsigKey::from_base64(&c.tsig_key_name, c.tsig_algorithm, &secret)
        .map_err(|reason| SecurityError::Invalid { field, reason })
}

pub fn load(config: &Config) -> Result<Security, SecurityError> {
    let tls = match &config.tls {
        None => None,
        Some(tls) => {
            let client = match (&tls.client_cert_file, &tls.client_key_file) {
                (Some(cert), Some(key)) => {
                    let key = read("tls.client_key_file", key)?;
                    Some((
                        read("tls.client_cert_file", cert)?,
                        Secret::new(String::from_utf8_lossy(&key).into_owned()),
                    ))
                }
                _ => None,
            };
            Some(TlsMaterial {
                ca_pem: read("tls.ca_file", &tls.ca_file)?,
                client,
            })
        }
    };
    let auth = match &config.auth {
        None => None,
        Some(auth) => {
            let (_, password) = file_or_env(
                ("auth.password_file", auth.password_file.as_deref()),
                ("auth.password_env", auth.password_env.as_deref()),
            )?;
            Some(Credentials {
                username: auth.username.clone(),
                password: Secret::new(password),
            })
        }
    };
    Ok(Security { tls, auth })
}
