//! MQTT client settings shared by the ingest worker (embedded or external broker)
//! and the benchmarks: URL parsing, TLS, packet size limits.

use rollcall_shared::limits::MAX_ENVELOPE_BYTES;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why broker settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    /// The URL is not `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[error(transparent)]
    Url(#[from] rollcall_shared::BrokerUrlError),
    /// The CA file could not be used.
    #[error("CA file {path}: {why}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
}

pub use rollcall_shared::BrokerUrl;

/// Client options for `url`, with packet limits raised to fit a full report.
pub fn client_options(
    client_id: &str,
    url: &BrokerUrl,
    username: &str,
    password: &str,
    ca_file: Option<&Path>,
) -> Result<MqttOptions, MqttSetupError> {
    let mut opts = MqttOptions::new(client_id, url.host.clone(), url.port);
    opts.set_keep_alive(Duration::from_secs(30));
    // Incoming: room for oversize messages, so ingest can quarantine them as `too_large`.
    opts.set_max_packet_size(
        crate::broker::BROKER_MAX_PAYLOAD + 4096,
        MAX_ENVELOPE_BYTES + 4096,
    );
    opts.set_clean_session(true);
    opts.set_inflight(1000);
    opts.set_request_channel_capacity(10_000);
    if !username.is_empty() {
        opts.set_credentials(username, password);
    }
    if url.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(ca_file)?),
        )));
    }
    Ok(opts)
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, MqttSetupError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let path = ca_file.ok_or_else(|| MqttSetupError::Ca {
        path: "<none>".into(),
        why: "mqtts:// needs broker.ca_file".into(),
    })?;
    let ca = |why: String| MqttSetupError::Ca {
        path: path.display().to_string(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca(e.to_string()))? {
        roots
            .add(cert.map_err(|e| ca(e.to_string()))?)
            .map_err(|e| ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca("holds no certificate".into()));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ca(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtts_without_a_ca_file_is_a_clear_error() {
        let url: BrokerUrl = "mqtts://x".parse().unwrap();
        let e = client_options("c", &url, "", "", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca_file"), "{e}");
    }
}
