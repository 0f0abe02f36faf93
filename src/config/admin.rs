//! `[admin]`: the management listener (REST API and web console), its tokens and audit log.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[admin]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the management listener (`/api/v1`, the console); empty disables it. Loopback
    /// by default: put it behind a TLS proxy (or the admin TLS of issue 13) before opening it up.
    pub listen: String,
    /// Hashes of the API tokens (`rotator token create`); mode 0600, re-read when it changes.
    pub tokens_file: PathBuf,
    /// Every write through the API, one JSON object per line (appended, mode 0600).
    pub audit_log: PathBuf,
    /// PEM certificate chain: the listener speaks HTTPS (HTTP/2 and HTTP/1.1) with it; empty =
    /// plain HTTP. Reloaded like `[server] tls_cert` (watched, and on SIGHUP).
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            tokens_file: "data/admin-tokens.toml".into(),
            audit_log: "data/audit.log".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

impl AdminConfig {
    /// The listener address, `None` when disabled, or the reason it is not an address.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            format!(
                "{:?} is not an address like 127.0.0.1:8081 (empty disables it)",
                self.listen
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_defaults_to_loopback_and_empty_disables() {
        let mut c = AdminConfig::default();
        assert_eq!(
            c.listen_addr().unwrap(),
            Some("127.0.0.1:8081".parse().unwrap())
        );
        c.listen = String::new();
        assert_eq!(c.listen_addr().unwrap(), None);
        c.listen = "nowhere".into();
        assert!(c.listen_addr().unwrap_err().contains("127.0.0.1:8081"));
    }
}
