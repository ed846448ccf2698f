//! Building rumqttc options from our settings: broker URL, TLS, credentials, keep-alive,
//! packet size limits and the Last Will.

use super::UplinkError;
use crate::config::Secret;
use rollcall_shared::limits::MAX_ENVELOPE_BYTES;
use rumqttc::{LastWill, MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Room for the topic name and MQTT headers on top of the largest envelope, so an
/// incoming publish carrying a maximal envelope is not refused for its topic.
const PACKET_HEADROOM: usize = 1024;

pub use rollcall_shared::BrokerUrl;

/// How to reach and log in to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// The broker.
    pub broker: BrokerUrl,
    /// CA certificates (PEM) to trust for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password (redacted in `Debug`).
    pub password: Option<Secret>,
    /// MQTT keep-alive (at least one second).
    pub keep_alive: Duration,
}

impl MqttSettings {
    /// Anonymous plain-TCP settings for `broker` with a 30 s keep-alive.
    pub fn new(broker: BrokerUrl) -> Self {
        Self {
            broker,
            ca_file: None,
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
        }
    }
}

/// Builds rumqttc options: client id, transport (TLS with the configured CA for
/// `mqtts://`), credentials, keep-alive, clean session, packet limits raised to
/// [`MAX_ENVELOPE_BYTES`] (incoming gets a little headroom for the topic), and the Last Will.
pub fn mqtt_options(
    settings: &MqttSettings,
    client_id: &str,
    will: Option<LastWill>,
) -> Result<MqttOptions, UplinkError> {
    let b = &settings.broker;
    let mut opts = MqttOptions::new(client_id, b.host.clone(), b.port);
    opts.set_keep_alive(settings.keep_alive.max(Duration::from_secs(1)));
    opts.set_clean_session(true);
    opts.set_max_packet_size(MAX_ENVELOPE_BYTES + PACKET_HEADROOM, MAX_ENVELOPE_BYTES);
    if settings.username.is_some() || settings.password.is_some() {
        opts.set_credentials(
            settings.username.clone().unwrap_or_default(),
            settings
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        );
    }
    if b.tls {
        let ca = settings
            .ca_file
            .as_deref()
            .ok_or_else(|| UplinkError::Tls {
                path: PathBuf::new(),
                message: "mqtts:// needs mqtt.ca_file".into(),
            })?;
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(ca)?),
        )));
    }
    if let Some(w) = will {
        opts.set_last_will(w);
    }
    Ok(opts)
}

/// A rustls client configuration (ring provider) trusting exactly the CAs in `ca_file`.
pub fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, UplinkError> {
    let tls_err = |message: String| UplinkError::Tls {
        path: ca_file.to_owned(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| tls_err(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| tls_err(e.to_string()))?;
        roots.add(cert).map_err(|e| tls_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(tls_err("no certificates found".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_err(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_carry_limits_credentials_and_will() {
        let mut s = MqttSettings::new(BrokerUrl::plain("127.0.0.1", 1883));
        s.username = Some("u".into());
        s.password = Some(Secret::new("p"));
        s.keep_alive = Duration::from_secs(15);
        let will = LastWill::new("t", b"bye".to_vec(), rumqttc::QoS::AtLeastOnce, true);
        let o = mqtt_options(&s, "dev-1", Some(will.clone())).unwrap();
        assert_eq!(o.client_id(), "dev-1");
        assert_eq!(o.keep_alive(), Duration::from_secs(15));
        assert!(o.clean_session());
        assert!(o.max_packet_size() >= MAX_ENVELOPE_BYTES);
        assert_eq!(o.last_will(), Some(will));
        let login = o.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("u", "p")
        );
    }

    #[test]
    fn tls_needs_a_ca_file_with_certificates() {
        let mut s = MqttSettings::new("mqtts://localhost".parse().unwrap());
        assert!(matches!(
            mqtt_options(&s, "d", None),
            Err(UplinkError::Tls { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        s.ca_file = Some(empty);
        let e = mqtt_options(&s, "d", None).unwrap_err().to_string();
        assert!(e.contains("no certificates"), "{e}");
        s.ca_file = Some(dir.path().join("missing.pem"));
        assert!(mqtt_options(&s, "d", None).is_err());
    }

    /// Loads a real CA made by `openssl` (skipped when it is not installed).
    #[test]
    fn tls_loads_a_real_ca_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = dir.path().join("ca.key");
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
            ])
            .args(["-subj", "/CN=rollcall-test-ca", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&ca)
            .output();
        match made {
            Ok(out) if out.status.success() => {}
            _ => {
                eprintln!("SKIPPED: openssl is not available to make a test CA");
                return;
            }
        }
        let mut s = MqttSettings::new("mqtts://localhost:8883".parse().unwrap());
        s.ca_file = Some(ca);
        let o = mqtt_options(&s, "d", None).unwrap();
        assert!(matches!(o.transport(), Transport::Tls(_)));
    }
}
